//! Set commands over the add-wins OR-set: an SADD concurrent with an SREM of the same
//! member keeps the member.

use super::*;
use meridian_crdt::OrSet;

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("sadd", -3, WRITE | DENYOOM | FAST | ELEMENT, 1, 1, 1, sadd),
        spec!("srem", -3, WRITE | FAST | ELEMENT, 1, 1, 1, srem),
        spec!("smembers", 2, READONLY, 1, 1, 1, smembers),
        spec!(
            "sismember",
            3,
            READONLY | FAST | ELEMENT,
            1,
            1,
            1,
            sismember
        ),
        spec!(
            "smismember",
            -3,
            READONLY | FAST | ELEMENT,
            1,
            1,
            1,
            smismember
        ),
        spec!("scard", 2, READONLY | FAST, 1, 1, 1, scard),
        spec!("spop", -2, WRITE | FAST, 1, 1, 1, spop),
        spec!("srandmember", -2, READONLY, 1, 1, 1, srandmember),
        spec!("sinter", -2, READONLY, 1, -1, 1, sinter),
        spec!("sunion", -2, READONLY, 1, -1, 1, sunion),
        spec!("sdiff", -2, READONLY, 1, -1, 1, sdiff),
        spec!(
            "sinterstore",
            -3,
            WRITE | DENYOOM | ALL_SHARDS,
            1,
            -1,
            1,
            sinterstore
        ),
        spec!(
            "sunionstore",
            -3,
            WRITE | DENYOOM | ALL_SHARDS,
            1,
            -1,
            1,
            sunionstore
        ),
        spec!(
            "sdiffstore",
            -3,
            WRITE | DENYOOM | ALL_SHARDS,
            1,
            -1,
            1,
            sdiffstore
        ),
        spec!("smove", 4, WRITE | FAST | ALL_SHARDS, 1, 2, 1, smove),
        spec!("sscan", -3, READONLY, 1, 1, 1, sscan),
        spec!("sintercard", -3, READONLY | NUMKEYS, 2, -1, 1, sintercard),
    ]
}

/// Run `f` on the set at `key`: Ok(None) if absent, Err(WRONGTYPE) for other types.
fn with_set<R>(ctx: &mut Ctx, key: &[u8], f: impl FnOnce(&OrSet) -> R) -> Result<Option<R>, Reply> {
    match ctx.read(key) {
        None => Ok(None),
        Some(e) => match e.as_set() {
            Some(s) => Ok(Some(f(s))),
            None => Err(wrongtype()),
        },
    }
}

fn sadd(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    // One probe: the kind is checked inside the write (nothing written on WRONGTYPE).
    let store = ctx.store;
    let added = ctx.write(a[1], |w| {
        w.expect(Kind::Set).map_err(crdt_err)?;
        let now = w.entry().heap_bytes();
        let all: usize = a[2..].iter().map(|m| element_bytes(m.len(), 0)).sum();
        if check_room(store, a[1], now, all).is_err() {
            // Near the bound: count only the members not there yet.
            let set = w.set_members();
            let new: usize = a[2..]
                .iter()
                .filter(|m| !set.is_some_and(|s| s.contains(m)))
                .map(|m| element_bytes(m.len(), 0))
                .sum();
            check_room(store, a[1], now, new)?;
        }
        Ok(a[2..].iter().filter(|m| w.sadd(m)).count())
    });
    match added {
        Ok(n) => Reply::Int(n as i64),
        Err(e) => e,
    }
}

fn srem(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match ctx.kind(a[1]) {
        None => return Reply::Int(0),
        Some(Kind::Set) => {}
        Some(_) => return wrongtype(),
    }
    let removed = ctx.write(a[1], |w| a[2..].iter().filter(|m| w.srem(m)).count());
    Reply::Int(removed as i64)
}

fn members_reply(ctx: &Ctx, members: Vec<Bytes>) -> Reply {
    let items = members.into_iter().map(Reply::Bulk).collect();
    if ctx.conn.resp3 {
        Reply::Set(items)
    } else {
        Reply::Array(items)
    }
}

fn smembers(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_set(ctx, a[1], |s| {
        s.members().map(Bytes::copy_from_slice).collect::<Vec<_>>()
    }) {
        Err(e) => e,
        Ok(m) => members_reply(ctx, m.unwrap_or_default()),
    }
}

fn sismember(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_set(ctx, a[1], |s| s.contains(a[2])) {
        Err(e) => e,
        Ok(v) => Reply::Int(i64::from(v.unwrap_or(false))),
    }
}

fn smismember(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_set(ctx, a[1], |s| {
        a[2..]
            .iter()
            .map(|m| Reply::Int(i64::from(s.contains(m))))
            .collect()
    }) {
        Err(e) => e,
        Ok(Some(v)) => Reply::Array(v),
        Ok(None) => Reply::Array(a[2..].iter().map(|_| Reply::Int(0)).collect()),
    }
}

fn scard(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_set(ctx, a[1], |s| s.len()) {
        Err(e) => e,
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
    }
}

/// The members SPOP/SRANDMEMBER pick from; for an absent key, the empty reply to give
/// (empty array with a count, nil without), or WRONGTYPE.
fn members_for_pick(ctx: &mut Ctx, key: &[u8], with_count: bool) -> Result<Vec<Bytes>, Reply> {
    match with_set(ctx, key, |s| {
        s.members().map(Bytes::copy_from_slice).collect::<Vec<_>>()
    })? {
        Some(m) => Ok(m),
        None if with_count => Err(Reply::Array(vec![])),
        None => Err(Reply::Null),
    }
}

fn spop(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    if a.len() > 3 {
        return syntax();
    }
    let count = match a.get(2) {
        None => None,
        Some(c) => match crate::util::parse_int(c) {
            Some(n) if n >= 0 => Some(n as usize),
            _ => return err("ERR value is out of range, must be positive"),
        },
    };
    let members = match members_for_pick(ctx, a[1], count.is_some()) {
        Ok(m) => m,
        Err(reply) => return reply,
    };
    let picked = pick_distinct(ctx, &members, count.unwrap_or(1));
    if !picked.is_empty() {
        ctx.write(a[1], |w| {
            for m in &picked {
                w.srem(m);
            }
        });
    }
    match count {
        None => bulk_opt(picked.into_iter().next()),
        Some(_) => members_reply(ctx, picked),
    }
}

fn random_reply_too_large() -> Reply {
    err("ERR value is out of range, the reply would be too large (SRANDMEMBER with a negative count answers at most 1048576 members and 256 MiB)")
}

fn srandmember(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    if a.len() > 3 {
        return syntax();
    }
    let count = match a.get(2) {
        None => None,
        // Redis' range for the count: -LONG_MAX..=LONG_MAX.
        Some(c) => match crate::util::parse_int(c) {
            Some(i64::MIN) => return count_out_of_range(),
            Some(n) => Some(n),
            None => return not_int(),
        },
    };
    if count.is_some_and(|n| n.unsigned_abs() > RANDOM_REPLY_MAX as u64 && n < 0) {
        return random_reply_too_large();
    }
    let members = match members_for_pick(ctx, a[1], count.is_some()) {
        Ok(m) => m,
        Err(reply) => return reply,
    };
    if let Some(n) = count.filter(|n| *n < 0) {
        // Members repeat: the reply's size is the count times their mean length.
        let total: usize = members.iter().map(|m| m.len() + 16).sum();
        let mean = total / members.len().max(1);
        if (n.unsigned_abs() as usize).saturating_mul(mean) > RANDOM_REPLY_MAX_BYTES {
            return random_reply_too_large();
        }
    }
    match count {
        None => bulk_opt(pick_distinct(ctx, &members, 1).into_iter().next()),
        Some(n) if n >= 0 => Reply::Array(
            pick_distinct(ctx, &members, n as usize)
                .into_iter()
                .map(Reply::Bulk)
                .collect(),
        ),
        Some(n) => {
            let want = n.unsigned_abs() as usize;
            let mut out = Vec::with_capacity(want);
            for _ in 0..want {
                let i = (ctx.conn.random() % members.len() as u64) as usize;
                out.push(Reply::Bulk(members[i].clone()));
            }
            Reply::Array(out)
        }
    }
}

enum Op {
    Inter,
    Union,
    Diff,
}

fn combine(ctx: &mut Ctx, a: &[&[u8]], op: Op) -> Reply {
    match combined(ctx, &a[1..], op) {
        Ok(result) => members_reply(ctx, result),
        Err(e) => e,
    }
}

/// The members of `op` over the sets at `keys` (missing keys are empty sets).
fn combined(ctx: &mut Ctx, keys: &[&[u8]], op: Op) -> Result<Vec<Bytes>, Reply> {
    let mut sets: Vec<Option<Vec<Bytes>>> = Vec::with_capacity(keys.len());
    for k in keys {
        match with_set(ctx, k, |s| {
            s.members().map(Bytes::copy_from_slice).collect::<Vec<_>>()
        }) {
            Err(e) => return Err(e),
            Ok(m) => sets.push(m),
        }
    }
    let as_set = |v: &Option<Vec<Bytes>>| -> std::collections::HashSet<Bytes> {
        v.iter().flatten().cloned().collect()
    };
    let result: Vec<Bytes> = match op {
        Op::Union => {
            let mut seen = std::collections::HashSet::new();
            sets.iter()
                .flatten()
                .flatten()
                .filter(|m| seen.insert((*m).clone()))
                .cloned()
                .collect()
        }
        Op::Inter => {
            if sets.iter().any(Option::is_none) {
                Vec::new()
            } else {
                let others: Vec<_> = sets[1..].iter().map(as_set).collect();
                sets[0]
                    .iter()
                    .flatten()
                    .filter(|m| others.iter().all(|o| o.contains(*m)))
                    .cloned()
                    .collect()
            }
        }
        Op::Diff => {
            let others: Vec<_> = sets[1..].iter().map(as_set).collect();
            sets[0]
                .iter()
                .flatten()
                .filter(|m| others.iter().all(|o| !o.contains(*m)))
                .cloned()
                .collect()
        }
    };
    Ok(result)
}

fn sinter(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    combine(ctx, a, Op::Inter)
}

fn sunion(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    combine(ctx, a, Op::Union)
}

fn sdiff(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    combine(ctx, a, Op::Diff)
}

/// `S*STORE destination key…`: the destination becomes a set of exactly the result
/// (whatever it held before, of any type); an empty result deletes it.
fn store(ctx: &mut Ctx, a: &[&[u8]], op: Op) -> Reply {
    let result = match combined(ctx, &a[2..], op) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let dest = a[1];
    if ctx.lookup(dest).is_some() {
        ctx.write(dest, |w| w.delete());
    }
    if !result.is_empty() {
        ctx.write(dest, |w| {
            for m in &result {
                w.sadd(m);
            }
        });
    }
    Reply::Int(result.len() as i64)
}

fn sinterstore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    store(ctx, a, Op::Inter)
}

fn sunionstore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    store(ctx, a, Op::Union)
}

fn sdiffstore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    store(ctx, a, Op::Diff)
}

/// `SMOVE source destination member`: an SREM at the source and an SADD at the
/// destination (each its own CRDT write: a concurrent SADD of the member at the source
/// elsewhere keeps it there too).
fn smove(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (src, dst, m) = (a[1], a[2], a[3]);
    let present = match with_set(ctx, src, |s| s.contains(m)) {
        Err(e) => return e,
        Ok(p) => p.unwrap_or(false),
    };
    if let Err(e) = with_set(ctx, dst, |_| ()) {
        return e;
    }
    if !present {
        return Reply::Int(0);
    }
    if src == dst {
        return Reply::Int(1);
    }
    let now = ctx.lookup(dst).map_or(0, |e| e.heap_bytes());
    if let Err(e) = check_room(ctx.store, dst, now, element_bytes(m.len(), 0)) {
        return e;
    }
    ctx.write(src, |w| w.srem(m));
    let added = ctx.write(dst, |w| {
        w.expect(Kind::Set)?;
        Ok(w.sadd(m))
    });
    match added {
        Ok(_) => Reply::Int(1),
        Err(e) => crdt_err(e),
    }
}

/// `SSCAN key cursor [MATCH pattern] [COUNT count]` (see `cursor` for the order).
fn sscan(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let args = match super::cursor::parse(&a[2..]) {
        Ok(args) => args,
        Err(e) => return e,
    };
    let page = with_set(ctx, a[1], |s| {
        let items: Vec<(&[u8], ())> = s.members().map(|m| (m, ())).collect();
        super::cursor::page(items, &args)
    });
    match page {
        Err(e) => e,
        Ok(None) => super::cursor::reply(0, Vec::new()),
        Ok(Some((next, items))) => super::cursor::reply(
            next,
            items.into_iter().map(|(m, ())| Reply::Bulk(m)).collect(),
        ),
    }
}

/// `SINTERCARD numkeys key [key …] [LIMIT limit]`: the intersection's size, counting
/// stops at `limit` (0: no limit).
fn sintercard(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(n) = crate::util::parse_int(a[1])
        .filter(|&n| n > 0)
        .and_then(|n| usize::try_from(n).ok())
    else {
        return err("ERR numkeys should be greater than 0");
    };
    if n > a.len() - 2 {
        return err("ERR Number of keys can't be greater than number of args");
    }
    let mut limit = 0usize;
    let mut i = 2 + n;
    while i < a.len() {
        if a[i].eq_ignore_ascii_case(b"limit") && i + 1 < a.len() {
            match crate::util::parse_int(a[i + 1]) {
                Some(l) if l >= 0 => limit = usize::try_from(l).unwrap_or(usize::MAX),
                Some(_) => return err("ERR LIMIT can't be negative"),
                None => return not_int(),
            }
            i += 2;
        } else {
            return syntax();
        }
    }
    match combined(ctx, &a[2..2 + n], Op::Inter) {
        Err(e) => e,
        Ok(m) if limit > 0 => Reply::Int(m.len().min(limit) as i64),
        Ok(m) => Reply::Int(m.len() as i64),
    }
}
