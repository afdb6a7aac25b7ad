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
pub fn glob_match(pattern: &[u8], string: &[u8], nocase: bool) -> bool {
    glob(pattern, string, nocase, 0)
}

fn eq(a: u8, b: u8, nocase: bool) -> bool {
    if nocase {
        a.eq_ignore_ascii_case(&b)
    } else {
        a == b
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
