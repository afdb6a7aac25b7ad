//! Small helpers shared by the command families: number parsing and formatting with Redis'
//! rules, Redis' glob matcher (`stringmatchlen`), and the wall clock the shell reads.

use meridian_crdt::parse_i64;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn parse_int(b: &[u8]) -> Option<i64> {
    parse_i64(b)
}

/// Redis `string2ld`-like float parsing: no spaces, no NaN.
pub fn parse_float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return None;
    }
    let v: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse().ok()?,
    };
    (!v.is_nan()).then_some(v)
}

/// Format like Redis' INCRBYFLOAT (`%.17Lg` then trailing zeros trimmed): shortest
/// round-trip representation, no exponent for ordinary magnitudes.
pub fn format_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == v.trunc() && v.abs() < 1e17 {
        return format!("{}", v as i128);
    }
    let s = format!("{v}");
    if s.contains('e') {
        format!("{v:.17}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        s
    }
}

/// Glob-style match with Redis semantics: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
///
/// In time O(|pattern| × |string|) whatever the pattern: only the last `*` seen is ever
/// backtracked to (a later `*` can match anything an earlier one could), so a pattern like
/// `*a*a*a…b` against a long run of `a`s (Redis' CVE-2022-36021, exponential with naive
/// recursion) costs one pass per `*`, not one per way of splitting the string.
pub fn glob_match(pattern: &[u8], string: &[u8], nocase: bool) -> bool {
    let (mut p, mut s) = (0usize, 0usize);
    // (pattern index after the last `*`, string index that `*` has consumed up to)
    let mut star: Option<(usize, usize)> = None;
    while s < string.len() {
        if pattern.get(p) == Some(&b'*') {
            while pattern.get(p) == Some(&b'*') {
                p += 1;
            }
            if p == pattern.len() {
                return true;
            }
            star = Some((p, s));
            continue;
        }
        if let Some(next) = match_one(pattern, p, string[s], nocase) {
            p = next;
            s += 1;
            continue;
        }
        match star {
            // The last `*` takes one more byte; the rest of the pattern starts over after it.
            Some((after, taken)) => {
                p = after;
                s = taken + 1;
                star = Some((after, taken + 1));
            }
            None => return false,
        }
    }
    while pattern.get(p) == Some(&b'*') {
        p += 1;
    }
    p == pattern.len()
}

fn eq(a: u8, b: u8, nocase: bool) -> bool {
    if nocase {
        a.eq_ignore_ascii_case(&b)
    } else {
        a == b
    }
}

/// Whether the pattern element at `p` (not `*`) matches byte `c`: the index after the
/// element if it does. An unclosed `[` class runs to the end of the pattern.
fn match_one(pattern: &[u8], p: usize, c: u8, nocase: bool) -> Option<usize> {
    let rest = pattern.get(p..).filter(|r| !r.is_empty())?;
    match rest[0] {
        b'?' => Some(p + 1),
        b'[' => {
            let mut i = 1;
            let not = rest.get(1) == Some(&b'^');
            if not {
                i += 1;
            }
            let mut matched = false;
            let end = loop {
                match rest.get(i) {
                    None => break rest.len(),
                    Some(b'\\') if rest.len() > i + 1 => {
                        matched |= eq(rest[i + 1], c, nocase);
                        i += 2;
                    }
                    Some(b']') => break i + 1,
                    Some(&start) if rest.get(i + 1) == Some(&b'-') && rest.len() > i + 2 => {
                        let (mut lo, mut hi) = (start, rest[i + 2]);
                        if lo > hi {
                            std::mem::swap(&mut lo, &mut hi);
                        }
                        let (lo, hi, x) = if nocase {
                            (
                                lo.to_ascii_lowercase(),
                                hi.to_ascii_lowercase(),
                                c.to_ascii_lowercase(),
                            )
                        } else {
                            (lo, hi, c)
                        };
                        matched |= x >= lo && x <= hi;
                        i += 3;
                    }
                    Some(&x) => {
                        matched |= eq(x, c, nocase);
                        i += 1;
                    }
                }
            };
            (matched != not).then_some(p + end)
        }
        b'\\' if rest.len() >= 2 => eq(rest[1], c, nocase).then_some(p + 2),
        x => eq(x, c, nocase).then_some(p + 1),
    }
}

/// Wall-clock milliseconds since the Unix epoch: the shell reads time here and passes it
/// into the cores.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wall-clock microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Decrement a gauge, never below zero (a counter reset, or a release the matching
/// increment did not precede, must not wrap it to 18446744073709551615).
pub fn saturating_dec(gauge: &std::sync::atomic::AtomicUsize) {
    let _ = gauge.fetch_update(
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
        |v| Some(v.saturating_sub(1)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The former recursive matcher (exponential on `*a*a…b`): the reference the linear one
    /// is checked against on random small inputs.
    fn glob_reference(pattern: &[u8], string: &[u8], nocase: bool) -> bool {
        glob(pattern, string, nocase, 0)
    }

    fn glob(mut p: &[u8], mut s: &[u8], nocase: bool, depth: usize) -> bool {
        if depth > 1000 {
            return false; // pathological patterns: refuse rather than recurse unboundedly
        }
        while !p.is_empty() {
            match p[0] {
                b'*' => {
                    while p.len() > 1 && p[1] == b'*' {
                        p = &p[1..];
                    }
                    if p.len() == 1 {
                        return true;
                    }
                    for i in 0..=s.len() {
                        if glob(&p[1..], &s[i..], nocase, depth + 1) {
                            return true;
                        }
                    }
                    return false;
                }
                b'?' => {
                    if s.is_empty() {
                        return false;
                    }
                    s = &s[1..];
                    p = &p[1..];
                }
                b'[' => {
                    if s.is_empty() {
                        return false;
                    }
                    let mut i = 1;
                    let not = p.get(1) == Some(&b'^');
                    if not {
                        i += 1;
                    }
                    let mut matched = false;
                    loop {
                        match p.get(i) {
                            None => {
                                i -= 1;
                                break;
                            }
                            Some(b'\\') if p.len() > i + 1 => {
                                if eq(p[i + 1], s[0], nocase) {
                                    matched = true;
                                }
                                i += 2;
                            }
                            Some(b']') => break,
                            Some(&start) if p.get(i + 1) == Some(&b'-') && p.len() > i + 2 => {
                                let (mut lo, mut hi) = (start, p[i + 2]);
                                if lo > hi {
                                    std::mem::swap(&mut lo, &mut hi);
                                }
                                let c = s[0];
                                let (lo, hi, c) = if nocase {
                                    (
                                        lo.to_ascii_lowercase(),
                                        hi.to_ascii_lowercase(),
                                        c.to_ascii_lowercase(),
                                    )
                                } else {
                                    (lo, hi, c)
                                };
                                if c >= lo && c <= hi {
                                    matched = true;
                                }
                                i += 3;
                            }
                            Some(&c) => {
                                if eq(c, s[0], nocase) {
                                    matched = true;
                                }
                                i += 1;
                            }
                        }
                    }
                    if not {
                        matched = !matched;
                    }
                    if !matched {
                        return false;
                    }
                    s = &s[1..];
                    p = if i < p.len() {
                        &p[i + 1..]
                    } else {
                        &p[p.len()..]
                    };
                }
                b'\\' if p.len() >= 2 => {
                    if s.is_empty() || !eq(p[1], s[0], nocase) {
                        return false;
                    }
                    s = &s[1..];
                    p = &p[2..];
                }
                c => {
                    if s.is_empty() || !eq(c, s[0], nocase) {
                        return false;
                    }
                    s = &s[1..];
                    p = &p[1..];
                }
            }
        }
        s.is_empty()
    }

    /// Same answers as the recursive reference on random patterns and strings over a
    /// small alphabet (where every construct meets every other).
    #[test]
    fn glob_matches_the_reference() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let pat_bytes = b"ab*?[]^-\\";
        let str_bytes = b"ab-]*";
        for _ in 0..200_000 {
            let pl = rng.random_range(0..8);
            let sl = rng.random_range(0..8);
            let p: Vec<u8> = (0..pl)
                .map(|_| pat_bytes[rng.random_range(0..pat_bytes.len())])
                .collect();
            let t: Vec<u8> = (0..sl)
                .map(|_| str_bytes[rng.random_range(0..str_bytes.len())])
                .collect();
            let nocase = rng.random_range(0..4) == 0;
            assert_eq!(
                glob_match(&p, &t, nocase),
                glob_reference(&p, &t, nocase),
                "pattern {:?} string {:?}",
                String::from_utf8_lossy(&p),
                String::from_utf8_lossy(&t)
            );
        }
    }

    /// CVE-2022-36021's pattern: answered (correctly) at once, where recursion would take
    /// longer than the test suite's lifetime.
    #[test]
    fn glob_pathological_pattern_is_linear() {
        let pattern = b"*a"
            .repeat(40)
            .into_iter()
            .chain(*b"b")
            .collect::<Vec<u8>>();
        let string = vec![b'a'; 100_000];
        assert!(!glob_match(&pattern, &string, false));
        let mut yes = string.clone();
        yes.push(b'b');
        assert!(glob_match(&pattern, &yes, false));
    }

    #[test]
    fn glob_like_redis() {
        assert!(glob_match(b"*", b"anything", false));
        assert!(glob_match(b"h?llo", b"hello", false));
        assert!(glob_match(b"h*llo", b"heeeello", false));
        assert!(glob_match(b"h[ae]llo", b"hallo", false));
        assert!(!glob_match(b"h[^e]llo", b"hello", false));
        assert!(glob_match(b"h[a-b]llo", b"hbllo", false));
        assert!(glob_match(b"key:\\*", b"key:*", false));
        assert!(!glob_match(b"key:\\*", b"key:a", false));
        assert!(glob_match(b"MAXMEM*", b"maxmemory", true));
        assert!(!glob_match(b"[", b"", false));
        assert!(!glob_match(b"a[", b"ab", false));
    }

    #[test]
    fn floats_format_like_redis() {
        assert_eq!(format_float(10.5), "10.5");
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(5.0e3), "5000");
        assert_eq!(parse_float(b" 1"), None);
        assert_eq!(parse_float(b"nan"), None);
        assert_eq!(parse_float(b"1e3"), Some(1000.0));
    }
}
