//! `SORT` and `SORT_RO` (Redis 7): the elements of a set (and of lists and sorted sets),
//! sorted numerically or with `ALPHA`, optionally `BY` an external key or hash field
//! (`weight_*`, `h_*->field`; `BY nosort` keeps the source's order), `LIMIT`, `GET`
//! patterns (`#` is the element) and `STORE` (SORT only) into a list.
//!
//! Patterns name other keys: the command holds every shard (`ALL_SHARDS`), so each lookup
//! is a plain read. In a region cluster a pattern that can map outside the sorted key's
//! slot is refused, as Redis Cluster refuses it.

use super::*;
use crate::frame::Reply;
use bytes::Bytes;
use meridian_crdt::Kind;
use std::cmp::Ordering;

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("sort", -2, WRITE | DENYOOM | ALL_SHARDS, 1, 1, 1, sort),
        spec!("sort_ro", -2, READONLY | ALL_SHARDS, 1, 1, 1, sort_ro),
    ]
}

fn sort(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    run(ctx, a, true)
}

fn sort_ro(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    run(ctx, a, false)
}

struct Options<'a> {
    desc: bool,
    alpha: bool,
    limit: Option<(i64, i64)>,
    by: Option<&'a [u8]>,
    dontsort: bool,
    get: Vec<&'a [u8]>,
    store: Option<&'a [u8]>,
}

fn syntax() -> Reply {
    err("ERR syntax error")
}

fn parse<'a>(a: &[&'a [u8]], allow_store: bool) -> Result<Options<'a>, Reply> {
    let mut o = Options {
        desc: false,
        alpha: false,
        limit: None,
        by: None,
        dontsort: false,
        get: Vec::new(),
        store: None,
    };
    let mut j = 2;
    while j < a.len() {
        let left = a.len() - j - 1;
        let opt = a[j];
        if opt.eq_ignore_ascii_case(b"asc") {
            o.desc = false;
        } else if opt.eq_ignore_ascii_case(b"desc") {
            o.desc = true;
        } else if opt.eq_ignore_ascii_case(b"alpha") {
            o.alpha = true;
        } else if opt.eq_ignore_ascii_case(b"limit") && left >= 2 {
            let (Some(off), Some(count)) = (
                meridian_crdt::parse_i64(a[j + 1]),
                meridian_crdt::parse_i64(a[j + 2]),
            ) else {
                return Err(err("ERR value is not an integer or out of range"));
            };
            o.limit = Some((off, count));
            j += 2;
        } else if opt.eq_ignore_ascii_case(b"store") && left >= 1 && allow_store {
            o.store = Some(a[j + 1]);
            j += 1;
        } else if opt.eq_ignore_ascii_case(b"by") && left >= 1 {
            let p = a[j + 1];
            // A pattern without '*' names one key for every element: nothing to sort by.
            if !p.contains(&b'*') {
                o.dontsort = true;
            }
            o.by = Some(p);
            j += 1;
        } else if opt.eq_ignore_ascii_case(b"get") && left >= 1 {
            o.get.push(a[j + 1]);
            j += 1;
        } else {
            return Err(syntax());
        }
        j += 1;
    }
    Ok(o)
}

/// In a region cluster, a pattern whose keys may hash outside `slot` (no hash tag of the
/// same slot before the `*`) is refused, as Redis Cluster refuses it.
fn pattern_in_slot(pattern: &[u8], slot: u16) -> bool {
    if pattern == b"#" {
        return true;
    }
    let Some(star) = pattern.iter().position(|&c| c == b'*') else {
        // No substitution: the lookup finds nothing, whatever the key.
        return true;
    };
    let Some(open) = pattern.iter().position(|&c| c == b'{') else {
        return false;
    };
    let Some(close) = pattern[open + 1..].iter().position(|&c| c == b'}') else {
        return false;
    };
    let close = open + 1 + close;
    // The tag must be non-empty and end before the '*' (the element cannot change it).
    close > open + 1 && close < star && meridian_crdt::key_slot(&pattern[..=close]) == slot
}

/// The value a pattern names for `element`: `#` is the element itself, `k_*` a string key,
/// `h_*->f` a hash field; anything missing or of another type reads as nothing.
fn lookup(ctx: &mut Ctx, pattern: &[u8], element: &Bytes) -> Option<Bytes> {
    if pattern == b"#" {
        return Some(element.clone());
    }
    let star = pattern.iter().position(|&c| c == b'*')?;
    let after = &pattern[star + 1..];
    let (post, field) = match after.windows(2).position(|w| w == b"->") {
        Some(i) if i + 2 < after.len() => (&after[..i], Some(&after[i + 2..])),
        _ => (after, None),
    };
    let mut key = Vec::with_capacity(star + element.len() + post.len());
    key.extend_from_slice(&pattern[..star]);
    key.extend_from_slice(element);
    key.extend_from_slice(post);
    let entry = ctx.read(&key)?;
    match field {
        Some(f) => entry.as_hash()?.get(f).and_then(meridian_crdt::Str::bytes),
        None => entry.as_str()?.bytes(),
    }
}

/// The elements of `key` in the source's own order (`None`: no such key).
fn elements(ctx: &mut Ctx, key: &[u8]) -> Result<Option<(Kind, Vec<Bytes>)>, Reply> {
    let Some(e) = ctx.read(key) else {
        return Ok(None);
    };
    match e.kind() {
        Some(Kind::Set) => match e.as_set() {
            Some(s) => Ok(Some((
                Kind::Set,
                s.members().map(Bytes::copy_from_slice).collect(),
            ))),
            None => Ok(None),
        },
        Some(Kind::List) => match e.as_list() {
            Some(l) => Ok(Some((
                Kind::List,
                l.values().map(Bytes::copy_from_slice).collect(),
            ))),
            None => Ok(None),
        },
        None => Ok(None),
        Some(_) => Err(wrongtype()),
    }
}

fn parse_score(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    let t = s.trim_start();
    if t.len() != s.len() || s.is_empty() {
        return None;
    }
    let v: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse().ok()?,
    };
    (!v.is_nan()).then_some(v)
}

fn run(ctx: &mut Ctx, a: &[&[u8]], allow_store: bool) -> Reply {
    let o = match parse(a, allow_store) {
        Ok(o) => o,
        Err(e) => return e,
    };
    if ctx.shared.cluster.is_some() {
        let slot = ctx.slot_of(a[1]);
        if let Some(by) = o.by {
            if !o.dontsort && !pattern_in_slot(by, slot) {
                return err("ERR BY option of SORT denied in Cluster mode when keys formed from the pattern may be in different slots.");
            }
        }
        if o.get.iter().any(|g| !pattern_in_slot(g, slot)) {
            return err("ERR GET option of SORT denied in Cluster mode when keys formed from the pattern may be in different slots.");
        }
        if let Some(dst) = o.store {
            if meridian_crdt::key_slot(dst) != slot {
                return err("CROSSSLOT Keys in request don't hash to the same slot");
            }
        }
    }
    let (kind, mut items) = match elements(ctx, a[1]) {
        Err(e) => return e,
        Ok(None) => (Kind::Set, Vec::new()),
        Ok(Some(x)) => x,
    };
    let mut dontsort = o.dontsort;
    let mut alpha = o.alpha;
    let mut by = o.by;
    // A set has no order of its own: when the result is stored, sort it (as Redis does, so
    // every replica stores the same list).
    if dontsort && kind == Kind::Set && o.store.is_some() {
        dontsort = false;
        alpha = true;
        by = None;
    }
    let n = items.len() as i64;
    let (mut start, mut end) = match o.limit {
        None => (0, n - 1),
        Some((off, count)) => {
            let start = off.max(0);
            let end = if count < 0 {
                n - 1
            } else {
                start.saturating_add(count) - 1
            };
            (start, end)
        }
    };
    if start >= n {
        start = n - 1;
        end = n - 2;
    }
    if end >= n {
        end = n - 1;
    }
    if !dontsort {
        // Sort keys: numeric scores or comparison strings, looked up once per element.
        let mut keyed: Vec<(Bytes, f64, Option<Bytes>)> = Vec::with_capacity(items.len());
        for el in items.drain(..) {
            let mut score = 0.0;
            let mut cmp = None;
            let source = match by {
                Some(p) => lookup(ctx, p, &el),
                None => Some(el.clone()),
            };
            if alpha {
                if by.is_some() {
                    cmp = source;
                }
            } else if let Some(v) = source {
                match parse_score(&v) {
                    Some(s) => score = s,
                    None => return err("ERR One or more scores can't be converted into double"),
                }
            }
            keyed.push((el, score, cmp));
        }
        let desc = o.desc;
        keyed.sort_by(|x, y| {
            let c = if !alpha {
                x.1.partial_cmp(&y.1)
                    .unwrap_or(Ordering::Equal)
                    .then_with(|| x.0.cmp(&y.0))
            } else if by.is_some() {
                match (&x.2, &y.2) {
                    (Some(p), Some(q)) => p.cmp(q),
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Less,
                    (Some(_), None) => Ordering::Greater,
                }
            } else {
                x.0.cmp(&y.0)
            };
            if desc {
                c.reverse()
            } else {
                c
            }
        });
        items = keyed.into_iter().map(|k| k.0).collect();
    } else if o.desc && kind != Kind::Set {
        items.reverse();
    }
    let picked: Vec<Bytes> = if start <= end && end >= 0 {
        items
            .into_iter()
            .skip(start as usize)
            .take((end - start + 1) as usize)
            .collect()
    } else {
        Vec::new()
    };
    let mut out: Vec<Option<Bytes>> = Vec::new();
    if o.get.is_empty() {
        out.extend(picked.into_iter().map(Some));
    } else {
        for el in &picked {
            for g in &o.get {
                out.push(lookup(ctx, g, el));
            }
        }
    }
    if let Some(dst) = o.store {
        return store_list(ctx, dst, out);
    }
    Reply::Array(
        out.into_iter()
            .map(|v| match v {
                Some(b) => Reply::Bulk(b),
                None => Reply::Null,
            })
            .collect(),
    )
}

/// `SORT … STORE dst`: the result replaces `dst` as a list (missing values as empty
/// strings), as a `DEL` of what `dst` held and a push of the result; an empty result
/// deletes `dst`. Answers the result's length.
fn store_list(ctx: &mut Ctx, dst: &[u8], values: Vec<Option<Bytes>>) -> Reply {
    let values: Vec<Bytes> = values.into_iter().map(Option::unwrap_or_default).collect();
    let size: usize = values.iter().map(|v| v.len() + 16).sum();
    if let Err(e) = check_room(ctx.store, dst, 0, size) {
        return e;
    }
    if ctx.lookup(dst).is_some() {
        ctx.write(dst, |w| w.delete());
    }
    if !values.is_empty() {
        let refs: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
        if ctx.write(dst, |w| w.list_push(false, &refs)).is_none() {
            return err("ERR no position left at that end of the list");
        }
    }
    Reply::Int(values.len() as i64)
}
