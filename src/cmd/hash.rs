//! Hash commands over the OR-map: each field is an LWW register, or a counter after
//! HINCRBY; HDEL is an observed remove, so a concurrent HSET elsewhere keeps its field.

use super::*;
use crate::util::{format_float, parse_float};
use meridian_crdt::{OrMap, Str, StrValue};

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("hset", -4, WRITE | DENYOOM | FAST | ELEMENT, 1, 1, 1, hset),
        spec!("hscan", -3, READONLY, 1, 1, 1, hscan),
        spec!("hrandfield", -2, READONLY, 1, 1, 1, hrandfield),
        spec!(
            "hmset",
            -4,
            WRITE | DENYOOM | FAST | ELEMENT,
            1,
            1,
            1,
            hmset
        ),
        spec!(
            "hsetnx",
            4,
            WRITE | DENYOOM | FAST | ELEMENT,
            1,
            1,
            1,
            hsetnx
        ),
        spec!("hget", 3, READONLY | FAST | ELEMENT, 1, 1, 1, hget),
        spec!("hmget", -3, READONLY | FAST | ELEMENT, 1, 1, 1, hmget),
        spec!("hdel", -3, WRITE | FAST | ELEMENT, 1, 1, 1, hdel),
        spec!("hgetall", 2, READONLY, 1, 1, 1, hgetall),
        spec!("hkeys", 2, READONLY, 1, 1, 1, hkeys),
        spec!("hvals", 2, READONLY, 1, 1, 1, hvals),
        spec!("hlen", 2, READONLY | FAST, 1, 1, 1, hlen),
        spec!("hexists", 3, READONLY | FAST | ELEMENT, 1, 1, 1, hexists),
        spec!("hstrlen", 3, READONLY | FAST | ELEMENT, 1, 1, 1, hstrlen),
        spec!(
            "hincrby",
            4,
            WRITE | DENYOOM | FAST | ELEMENT,
            1,
            1,
            1,
            hincrby
        ),
        spec!(
            "hincrbyfloat",
            4,
            WRITE | DENYOOM | FAST | ELEMENT,
            1,
            1,
            1,
            hincrbyfloat
        ),
    ]
}

fn with_hash<R>(
    ctx: &mut Ctx,
    key: &[u8],
    f: impl FnOnce(&OrMap) -> R,
) -> Result<Option<R>, Reply> {
    match ctx.read(key) {
        None => Ok(None),
        Some(e) => match e.as_hash() {
            Some(h) => Ok(Some(f(h))),
            None => Err(wrongtype()),
        },
    }
}

fn set_fields(ctx: &mut Ctx, a: &[&[u8]], name: &str) -> Result<i64, Reply> {
    if !a.len().is_multiple_of(2) {
        return Err(arity(name));
    }
    // A field named twice (`HSET h f 1 f 2`) is set once, to its last value, as in Redis:
    // one write stamps every field with the same HLC, and a register must not be set twice
    // with one stamp.
    // Each field with its value, shared with the request for the delta to carry.
    let mut pairs: smallvec::SmallVec<[(&[u8], Bytes); 2]> = if a.len() == 4 {
        // One pair (the common case): nothing to deduplicate.
        smallvec::smallvec![(a[2], ctx.bytes(a[3]))]
    } else {
        let mut seen = std::collections::HashSet::with_capacity(a.len() / 2);
        a[2..]
            .chunks(2)
            .rev()
            .filter(|fv| seen.insert(fv[0]))
            .map(|fv| (fv[0], ctx.bytes(fv[1])))
            .collect()
    };
    pairs.reverse();
    // One probe: the kind is checked inside the write (nothing written on WRONGTYPE).
    let store = ctx.store;
    let added = ctx.write(a[1], |w| {
        w.expect(Kind::Hash).map_err(crdt_err)?;
        let grow: usize = pairs
            .iter()
            .map(|(f, v)| element_bytes(f.len(), v.len() + 16))
            .sum();
        let now = w.entry().heap_bytes();
        if check_room(store, a[1], now, grow).is_err() {
            // Near the bound: a field already there grows by its value's difference.
            let hash = w.entry().as_hash();
            let grow: usize = pairs
                .iter()
                .map(|(f, v)| match hash.and_then(|h| h.raw_get(f)) {
                    Some(old) => (v.len() + 16).saturating_sub(old.heap_bytes()),
                    None => element_bytes(f.len(), v.len() + 16),
                })
                .sum();
            check_room(store, a[1], now, grow)?;
        }
        let mut added = 0;
        for (field, value) in pairs {
            added += i64::from(!w.hash_set(field, value));
        }
        Ok(added)
    });
    added
}

fn hset(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    flat(set_fields(ctx, a, "hset").map(Reply::Int))
}

fn hmset(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    flat(set_fields(ctx, a, "hmset").map(|_| ok()))
}

fn hsetnx(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_hash(ctx, a[1], |h| h.get(a[2]).is_some()) {
        Err(e) => e,
        Ok(Some(true)) => Reply::Int(0),
        Ok(_) => {
            let now = ctx.lookup(a[1]).map_or(0, |e| e.heap_bytes());
            if let Err(e) = check_room(
                ctx.store,
                a[1],
                now,
                element_bytes(a[2].len(), a[3].len() + 16),
            ) {
                return e;
            }
            let value = own(a[3]);
            ctx.write(a[1], |w| {
                w.hash_update(a[2], |s, stamp| s.set(stamp, value))
            });
            Reply::Int(1)
        }
    }
}

fn field_bytes(h: &OrMap, f: &[u8]) -> Option<Bytes> {
    h.get(f).and_then(Str::bytes)
}

fn hget(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    flat(with_hash(ctx, a[1], |h| field_bytes(h, a[2])).map(|v| bulk_opt(v.flatten())))
}

fn hmget(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_hash(ctx, a[1], |h| {
        a[2..].iter().map(|f| bulk_opt(field_bytes(h, f))).collect()
    }) {
        Err(e) => e,
        Ok(Some(v)) => Reply::Array(v),
        Ok(None) => Reply::Array(a[2..].iter().map(|_| Reply::Null).collect()),
    }
}

fn hdel(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match ctx.kind(a[1]) {
        None => return Reply::Int(0),
        Some(Kind::Hash) => {}
        Some(_) => return wrongtype(),
    }
    let n = ctx.write(a[1], |w| a[2..].iter().filter(|f| w.hdel(f)).count());
    Reply::Int(n as i64)
}

fn hgetall(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let resp3 = ctx.conn.resp3;
    let pairs = match with_hash(ctx, a[1], |h| {
        h.fields()
            .map(|(f, s)| (Bytes::copy_from_slice(f), s.bytes().unwrap_or_default()))
            .collect::<Vec<_>>()
    }) {
        Err(e) => return e,
        Ok(p) => p.unwrap_or_default(),
    };
    if resp3 {
        Reply::Map(
            pairs
                .into_iter()
                .map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v)))
                .collect(),
        )
    } else {
        Reply::Array(
            pairs
                .into_iter()
                .flat_map(|(f, v)| [Reply::Bulk(f), Reply::Bulk(v)])
                .collect(),
        )
    }
}

fn hkeys(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_hash(ctx, a[1], |h| {
        h.fields()
            .map(|(f, _)| Reply::Bulk(Bytes::copy_from_slice(f)))
            .collect()
    }) {
        Err(e) => e,
        Ok(v) => Reply::Array(v.unwrap_or_default()),
    }
}

fn hvals(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_hash(ctx, a[1], |h| {
        h.fields()
            .map(|(_, s)| Reply::Bulk(s.bytes().unwrap_or_default()))
            .collect()
    }) {
        Err(e) => e,
        Ok(v) => Reply::Array(v.unwrap_or_default()),
    }
}

fn hlen(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    flat(with_hash(ctx, a[1], |h| h.len()).map(|n| Reply::Int(n.unwrap_or(0) as i64)))
}

fn hexists(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    flat(
        with_hash(ctx, a[1], |h| h.get(a[2]).is_some())
            .map(|v| Reply::Int(i64::from(v.unwrap_or(false)))),
    )
}

fn hstrlen(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    flat(
        with_hash(ctx, a[1], |h| h.get(a[2]).map_or(0, Str::len))
            .map(|n| Reply::Int(n.unwrap_or(0) as i64)),
    )
}

fn hincrby(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(by) = crate::util::parse_int(a[3]) else {
        return not_int();
    };
    let current = match with_hash(ctx, a[1], |h| h.get(a[2]).map(Str::integer)) {
        Err(e) => return e,
        Ok(v) => v.flatten(),
    };
    let current = match current {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return err("ERR hash value is not an integer"),
    };
    if current.checked_add(by).is_none() {
        return err("ERR increment or decrement would overflow");
    }
    let now = ctx.lookup(a[1]).map_or(0, |e| e.heap_bytes());
    if let Err(e) = check_room(ctx.store, a[1], now, element_bytes(a[2].len(), 64)) {
        return e;
    }
    match ctx.write(a[1], |w| {
        w.hash_update(a[2], |s, stamp| s.incr_by(stamp, by))
    }) {
        Ok(n) => Reply::Int(n),
        Err(e) => crdt_err(e),
    }
}

fn hincrbyfloat(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(by) = parse_float(a[3]) else {
        return not_float();
    };
    // Redis rejects a non-finite increment itself before looking at the field.
    if !by.is_finite() {
        return err("ERR value is NaN or Infinity");
    }
    let current = match with_hash(ctx, a[1], |h| h.get(a[2]).and_then(Str::value)) {
        Err(e) => return e,
        Ok(v) => v.flatten(),
    };
    let current = match current {
        None => 0.0,
        Some(StrValue::Int(n)) => n as f64,
        Some(StrValue::Bytes(b)) => match parse_float(&b) {
            Some(f) => f,
            None => return err("ERR hash value is not a float"),
        },
    };
    let next = current + by;
    if !next.is_finite() {
        return err("ERR increment would produce NaN or Infinity");
    }
    let now = ctx.lookup(a[1]).map_or(0, |e| e.heap_bytes());
    if let Err(e) = check_room(ctx.store, a[1], now, element_bytes(a[2].len(), 64)) {
        return e;
    }
    let s = Bytes::from(format_float(next));
    let v = s.clone();
    ctx.write(a[1], |w| w.hash_update(a[2], |f, stamp| f.set(stamp, v)));
    bulk(s)
}

/// `HSCAN key cursor [MATCH pattern] [COUNT count]` (see `cursor` for the order).
fn hscan(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let args = match super::cursor::parse(&a[2..]) {
        Ok(args) => args,
        Err(e) => return e,
    };
    let page = with_hash(ctx, a[1], |h| {
        let items: Vec<(&[u8], Bytes)> = h
            .fields()
            .map(|(f, s)| (f, s.bytes().unwrap_or_default()))
            .collect();
        super::cursor::page(items, &args)
    });
    match page {
        Err(e) => e,
        Ok(None) => super::cursor::reply(0, Vec::new()),
        Ok(Some((next, items))) => super::cursor::reply(
            next,
            items
                .into_iter()
                .flat_map(|(f, v)| [Reply::Bulk(f), Reply::Bulk(v)])
                .collect(),
        ),
    }
}

/// `HRANDFIELD key [count [WITHVALUES]]`.
fn hrandfield(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let count = match a.get(2) {
        None => None,
        Some(c) => match crate::util::parse_int(c) {
            Some(i64::MIN) => return count_out_of_range(),
            Some(n) => Some(n),
            None => return not_int(),
        },
    };
    let with_values = match a.get(3) {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"withvalues") && a.len() == 4 => true,
        Some(_) => return syntax(),
    };
    if with_values && count.is_some_and(|n| n < -(i64::MAX / 2)) {
        return err("ERR value is out of range");
    }
    let pairs = match with_hash(ctx, a[1], |h| {
        h.fields()
            .map(|(f, s)| (Bytes::copy_from_slice(f), s.bytes().unwrap_or_default()))
            .collect::<Vec<_>>()
    }) {
        Err(e) => return e,
        Ok(None) if count.is_some() => return Reply::Array(Vec::new()),
        Ok(None) => return Reply::Null,
        Ok(Some(p)) => p,
    };
    let Some(n) = count else {
        let i = (ctx.conn.random() % pairs.len() as u64) as usize;
        return Reply::Bulk(pairs[i].0.clone());
    };
    let picked: Vec<(Bytes, Bytes)> = if n >= 0 {
        pick_distinct(ctx, &pairs, usize::try_from(n).unwrap_or(usize::MAX))
    } else {
        let want = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
        let widest = pairs
            .iter()
            .map(|(f, v)| f.len() + if with_values { v.len() } else { 0 })
            .max()
            .unwrap_or(0);
        if want > RANDOM_REPLY_MAX || want.saturating_mul(widest) > RANDOM_REPLY_MAX_BYTES {
            return err(
                "ERR value is out of range, the reply would be too large (HRANDFIELD with a negative count answers at most 1048576 fields and 256 MiB)",
            );
        }
        (0..want)
            .map(|_| pairs[(ctx.conn.random() % pairs.len() as u64) as usize].clone())
            .collect()
    };
    if !with_values {
        return Reply::Array(picked.into_iter().map(|(f, _)| Reply::Bulk(f)).collect());
    }
    if ctx.conn.resp3 {
        Reply::Array(
            picked
                .into_iter()
                .map(|(f, v)| Reply::Array(vec![Reply::Bulk(f), Reply::Bulk(v)]))
                .collect(),
        )
    } else {
        Reply::Array(
            picked
                .into_iter()
                .flat_map(|(f, v)| [Reply::Bulk(f), Reply::Bulk(v)])
                .collect(),
        )
    }
}
