//! SSCAN/HSCAN cursors over a set's members or a hash's fields.
//!
//! The element tables grow incrementally (see meridian_crdt's `elements`), so their bucket
//! order is no cursor. Instead elements are visited in the order of a fixed 63-bit hash of
//! their name, and the cursor is the next hash to visit (plus one; 0 starts and ends): an
//! element present for the whole scan is returned exactly once, whatever is added or
//! removed meanwhile, as Redis guarantees. Elements sharing a hash are returned in the same
//! call. Like Redis with its compact encodings, a small collection (at most
//! [`WHOLE_BELOW`] elements) is returned whole, with cursor 0. A call costs O(n) over the
//! collection plus the sort of one page.

use super::*;

/// Collections up to this size are returned in one call (Redis' listpack default, 128).
pub const WHOLE_BELOW: usize = 128;

/// `cursor [MATCH pattern] [COUNT count]` (the arguments after the key).
pub struct ScanArgs<'a> {
    pub cursor: u64,
    pub pattern: Option<&'a [u8]>,
    pub count: usize,
}

pub fn parse<'a>(a: &[&'a [u8]]) -> Result<ScanArgs<'a>, Reply> {
    let cursor = std::str::from_utf8(a[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| err("ERR invalid cursor"))?;
    let (mut pattern, mut count) = (None, 10usize);
    let mut i = 1;
    while i < a.len() {
        if i + 1 >= a.len() {
            return Err(syntax());
        }
        if a[i].eq_ignore_ascii_case(b"match") {
            pattern = Some(a[i + 1]);
        } else if a[i].eq_ignore_ascii_case(b"count") {
            match crate::util::parse_int(a[i + 1]) {
                Some(n) if n >= 1 => count = usize::try_from(n).unwrap_or(usize::MAX),
                Some(_) => return Err(syntax()),
                None => return Err(not_int()),
            }
        } else {
            return Err(syntax());
        }
        i += 2;
    }
    Ok(ScanArgs {
        cursor,
        pattern,
        count,
    })
}

fn position(name: &[u8]) -> u64 {
    // Fixed seeds: a cursor must mean the same element order on every call.
    let h = ahash::RandomState::with_seeds(0x6d65, 0x7269, 0x6469, 0x616e).hash_one(name);
    h >> 1
}

/// One page of `items` (name, payload) for `args`: the next cursor and the page, MATCH
/// applied to the names after the page is chosen (COUNT bounds work, as in Redis).
pub fn page<T>(items: Vec<(&[u8], T)>, args: &ScanArgs) -> (u64, Vec<(Bytes, T)>) {
    let keep = |name: &[u8]| {
        args.pattern
            .is_none_or(|p| crate::util::glob_match(p, name, false))
    };
    if items.len() <= WHOLE_BELOW {
        let out = items
            .into_iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, t)| (Bytes::copy_from_slice(n), t))
            .collect();
        return (0, out);
    }
    let from = args.cursor.saturating_sub(1);
    let mut rest: Vec<(u64, &[u8], T)> = items
        .into_iter()
        .map(|(n, t)| (position(n), n, t))
        .filter(|(h, _, _)| args.cursor == 0 || *h >= from)
        .collect();
    rest.sort_unstable_by_key(|(h, _, _)| *h);
    let mut take = args.count.min(rest.len());
    // Never split elements that share a position.
    while take > 0 && take < rest.len() && rest[take].0 == rest[take - 1].0 {
        take += 1;
    }
    let next = match rest.get(take) {
        Some((h, _, _)) => h + 1,
        None => 0,
    };
    rest.truncate(take);
    let out = rest
        .into_iter()
        .filter(|(_, n, _)| keep(n))
        .map(|(_, n, t)| (Bytes::copy_from_slice(n), t))
        .collect();
    (next, out)
}

/// `[cursor, [items…]]`.
pub fn reply(next: u64, items: Vec<Reply>) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(next.to_string())),
        Reply::Array(items),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element present throughout is returned exactly once, with elements added and
    /// removed between calls.
    #[test]
    fn a_scan_returns_each_stable_element_once() {
        let stable: Vec<Vec<u8>> = (0..1000).map(|i| format!("m{i}").into_bytes()).collect();
        let mut churn: Vec<Vec<u8>> = Vec::new();
        let mut seen = std::collections::HashMap::<Vec<u8>, usize>::new();
        let mut cursor = 0;
        for round in 0.. {
            let items: Vec<(&[u8], ())> = stable
                .iter()
                .chain(&churn)
                .map(|m| (m.as_slice(), ()))
                .collect();
            let args = ScanArgs {
                cursor,
                pattern: None,
                count: 37,
            };
            let (next, page) = page(items, &args);
            for (m, ()) in page {
                *seen.entry(m.to_vec()).or_default() += 1;
            }
            churn = (0..50)
                .map(|i| format!("c{round}-{i}").into_bytes())
                .collect();
            cursor = next;
            if cursor == 0 {
                break;
            }
            assert!(round < 1000, "the scan ends");
        }
        for m in &stable {
            assert_eq!(seen.get(m), Some(&1), "{}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn small_collections_come_whole_and_match_filters() {
        let items: Vec<(&[u8], u8)> = vec![(b"a1", 1), (b"b1", 2), (b"a2", 3)];
        let args = ScanArgs {
            cursor: 0,
            pattern: Some(b"a*"),
            count: 1,
        };
        let (next, page) = page(items, &args);
        assert_eq!(next, 0);
        assert_eq!(page.len(), 2);
    }
}
