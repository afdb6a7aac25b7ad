//! List commands over the sequence CRDT (`meridian_crdt::list`): pushes take positions
//! before the head or after the tail, pops and removals are observed removes of element
//! identities, `LSET` is last-writer-wins on the element's value. Concurrent pops of one
//! element in two regions both answer it; the converged list has it once removed.
//!
//! The blocking commands (`BLPOP`, `BRPOP`, `BLMOVE`, `BRPOPLPUSH`, `BLMPOP`) run as their
//! non-blocking form; finding nothing, they return [`Outcome::Block`] and the connection
//! waits on the keys' waiter queues (`store::Shard::block_on`), woken by any change to one
//! of them (a local write, or state merged from a peer region or a primary), and runs the
//! command again. Inside a transaction they answer the timeout reply at once, as Redis.

use super::*;
use meridian_crdt::List;

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("lpush", -3, WRITE | DENYOOM | FAST, 1, 1, 1, |c, a| push(
            c, a, true, false
        )),
        spec!("rpush", -3, WRITE | DENYOOM | FAST, 1, 1, 1, |c, a| push(
            c, a, false, false
        )),
        spec!("lpushx", -3, WRITE | DENYOOM | FAST, 1, 1, 1, |c, a| push(
            c, a, true, true
        )),
        spec!("rpushx", -3, WRITE | DENYOOM | FAST, 1, 1, 1, |c, a| push(
            c, a, false, true
        )),
        spec!("lpop", -2, WRITE | FAST, 1, 1, 1, |c, a| pop(c, a, true)),
        spec!("rpop", -2, WRITE | FAST, 1, 1, 1, |c, a| pop(c, a, false)),
        spec!("llen", 2, READONLY | FAST, 1, 1, 1, llen),
        spec!("lindex", 3, READONLY, 1, 1, 1, lindex),
        spec!("lrange", 4, READONLY, 1, 1, 1, lrange),
        spec!("lset", 4, WRITE | DENYOOM, 1, 1, 1, lset),
        spec!("linsert", 5, WRITE | DENYOOM, 1, 1, 1, linsert),
        spec!("lrem", 4, WRITE, 1, 1, 1, lrem),
        spec!("ltrim", 4, WRITE, 1, 1, 1, ltrim),
        spec!("lpos", -3, READONLY, 1, 1, 1, lpos),
        spec!("lmove", 5, WRITE | DENYOOM, 1, 2, 1, lmove),
        spec!("rpoplpush", 3, WRITE | DENYOOM, 1, 2, 1, rpoplpush),
        spec!("lmpop", -4, WRITE | NUMKEYS, 2, -1, 1, lmpop),
        spec!("blpop", -3, WRITE, 1, -2, 1, |c, a| bpop(c, a, true)),
        spec!("brpop", -3, WRITE, 1, -2, 1, |c, a| bpop(c, a, false)),
        spec!("blmove", 6, WRITE | DENYOOM, 1, 2, 1, blmove),
        spec!("brpoplpush", 4, WRITE | DENYOOM, 1, 2, 1, brpoplpush),
        spec!("blmpop", -5, WRITE | NUMKEYS, 3, -1, 1, blmpop),
    ]
}

/// Every list command (ACL category `@list`).
pub const NAMES: [&str; 22] = [
    "lpush",
    "rpush",
    "lpushx",
    "rpushx",
    "lpop",
    "rpop",
    "llen",
    "lindex",
    "lrange",
    "lset",
    "linsert",
    "lrem",
    "ltrim",
    "lpos",
    "lmove",
    "rpoplpush",
    "lmpop",
    "blpop",
    "brpop",
    "blmove",
    "brpoplpush",
    "blmpop",
];

/// The commands that may block (ACL category `@blocking`): the blocking list commands and
/// the sorted sets' BZPOPMIN/BZPOPMAX.
pub const BLOCKING: [&str; 7] = [
    "blpop",
    "brpop",
    "blmove",
    "brpoplpush",
    "blmpop",
    "bzpopmin",
    "bzpopmax",
];

/// Run `f` on the list at `key`: Ok(None) if absent, Err(WRONGTYPE) for other types.
fn with_list<R>(ctx: &mut Ctx, key: &[u8], f: impl FnOnce(&List) -> R) -> Result<Option<R>, Reply> {
    match ctx.read(key) {
        None => Ok(None),
        Some(e) => match e.as_list() {
            Some(l) => Ok(Some(f(l))),
            None => Err(wrongtype()),
        },
    }
}

/// The key holds a list (`Ok(true)`), nothing (`Ok(false)`) or another type (WRONGTYPE).
fn is_list(ctx: &mut Ctx, key: &[u8]) -> Result<bool, Reply> {
    match ctx.kind(key) {
        None => Ok(false),
        Some(Kind::List) => Ok(true),
        Some(_) => Err(wrongtype()),
    }
}

fn no_room() -> Reply {
    err("ERR no position left at that end of the list")
}

/// What pushing `values` adds at most to a list's bytes.
fn push_bytes(values: &[&[u8]]) -> usize {
    values.iter().map(|v| v.len() + 16).sum()
}

fn push(ctx: &mut Ctx, a: &[&[u8]], front: bool, only_existing: bool) -> Reply {
    let store = ctx.store;
    let key = a[1];
    let r = ctx.write(key, |w| {
        w.expect(Kind::List).map_err(crdt_err)?;
        if only_existing && w.list().is_none_or(List::is_empty) {
            return Ok(0);
        }
        check_room(store, key, w.entry().heap_bytes(), push_bytes(&a[2..]))?;
        w.list_push(front, &a[2..])
            .ok_or_else(no_room)
            .map(|n| n as i64)
    });
    match r {
        Ok(n) => Reply::Int(n),
        Err(e) => e,
    }
}

fn not_positive() -> Reply {
    err("ERR value is out of range, must be positive")
}

/// Pop up to `count` elements from `key` (a list, checked by the caller), in pop order.
fn pop_n(ctx: &mut Ctx, key: &[u8], front: bool, count: usize) -> Vec<Bytes> {
    if count == 0 {
        return Vec::new();
    }
    ctx.write(key, |w| w.list_pop(front, count))
}

fn pop(ctx: &mut Ctx, a: &[&[u8]], front: bool) -> Reply {
    if a.len() > 3 {
        return arity(if front { "lpop" } else { "rpop" });
    }
    let count = match a.get(2) {
        None => None,
        Some(c) => match crate::util::parse_int(c) {
            Some(n) if n >= 0 => Some(n as usize),
            _ => return not_positive(),
        },
    };
    match is_list(ctx, a[1]) {
        Err(e) => return e,
        Ok(false) => {
            return match count {
                Some(_) => Reply::NullArray,
                None => Reply::Null,
            }
        }
        Ok(true) => {}
    }
    let vals = pop_n(ctx, a[1], front, count.unwrap_or(1));
    match count {
        None => bulk_opt(vals.into_iter().next()),
        Some(_) => Reply::Array(vals.into_iter().map(Reply::Bulk).collect()),
    }
}

fn llen(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_list(ctx, a[1], List::len) {
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
        Err(e) => e,
    }
}

/// Redis' index rule: negative counts from the tail.
fn index_of(i: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let j = if i < 0 { len.checked_add(i)? } else { i };
    (0..len).contains(&j).then_some(j as usize)
}

/// Redis' range rule (`LRANGE`, `LTRIM`): the inclusive index range, `None` when empty.
fn range_of(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let n = i64::try_from(len).unwrap_or(i64::MAX);
    let mut s = if start < 0 {
        n.saturating_add(start)
    } else {
        start
    };
    let mut e = if stop < 0 {
        n.saturating_add(stop)
    } else {
        stop
    };
    if s < 0 {
        s = 0;
    }
    if s > e || s >= n {
        return None;
    }
    if e >= n {
        e = n - 1;
    }
    Some((s as usize, e as usize))
}

fn lindex(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(i) = crate::util::parse_int(a[2]) else {
        return not_int();
    };
    match with_list(ctx, a[1], |l| {
        index_of(i, l.len()).and_then(|i| l.get(i).map(Bytes::copy_from_slice))
    }) {
        Ok(v) => bulk_opt(v.flatten()),
        Err(e) => e,
    }
}

fn lrange(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (Some(s), Some(e)) = (crate::util::parse_int(a[2]), crate::util::parse_int(a[3])) else {
        return not_int();
    };
    match with_list(ctx, a[1], |l| match range_of(s, e, l.len()) {
        None => Vec::new(),
        Some((s, e)) => l
            .iter_from(s)
            .take(e - s + 1)
            .map(|v| Reply::Bulk(Bytes::copy_from_slice(v)))
            .collect(),
    }) {
        Ok(v) => Reply::Array(v.unwrap_or_default()),
        Err(e) => e,
    }
}

fn lset(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(i) = crate::util::parse_int(a[2]) else {
        return not_int();
    };
    let len = match with_list(ctx, a[1], List::len) {
        Err(e) => return e,
        Ok(None) => return err("ERR no such key"),
        Ok(Some(n)) => n,
    };
    let Some(i) = index_of(i, len) else {
        return err("ERR index out of range");
    };
    let store = ctx.store;
    let r = ctx.write(a[1], |w| {
        check_room(store, a[1], w.entry().heap_bytes(), a[3].len() + 16)?;
        Ok(w.list_set(i, a[3]))
    });
    match r {
        Ok(_) => ok(),
        Err(e) => e,
    }
}

fn linsert(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let before = if a[2].eq_ignore_ascii_case(b"before") {
        true
    } else if a[2].eq_ignore_ascii_case(b"after") {
        false
    } else {
        return syntax();
    };
    let at = match with_list(ctx, a[1], |l| l.values().position(|v| v == a[3])) {
        Err(e) => return e,
        Ok(None) => return Reply::Int(0),
        Ok(Some(None)) => return Reply::Int(-1),
        Ok(Some(Some(i))) => i,
    };
    let store = ctx.store;
    let r = ctx.write(a[1], |w| {
        check_room(store, a[1], w.entry().heap_bytes(), a[4].len() + 16)?;
        w.list_insert(at, before, a[4]).ok_or_else(no_room)
    });
    match r {
        Ok(n) => Reply::Int(n as i64),
        Err(e) => e,
    }
}

fn lrem(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(count) = crate::util::parse_int(a[2]) else {
        return not_int();
    };
    match is_list(ctx, a[1]) {
        Err(e) => return e,
        Ok(false) => return Reply::Int(0),
        Ok(true) => {}
    }
    let limit = if count == 0 {
        usize::MAX
    } else {
        usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX)
    };
    let n = ctx.write(a[1], |w| w.list_rem(a[3], limit, count < 0));
    Reply::Int(n as i64)
}

fn ltrim(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (Some(s), Some(e)) = (crate::util::parse_int(a[2]), crate::util::parse_int(a[3])) else {
        return not_int();
    };
    let len = match with_list(ctx, a[1], List::len) {
        Err(e) => return e,
        Ok(None) => return ok(),
        Ok(Some(n)) => n,
    };
    let (head, tail) = match range_of(s, e, len) {
        None => (len, 0),
        Some((s, e)) => (s, len - 1 - e),
    };
    if head + tail > 0 {
        ctx.write(a[1], |w| {
            // The tail first: removing the head would shift its indices.
            w.list_pop(false, tail);
            w.list_pop(true, head);
        });
    }
    ok()
}

fn lpos(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (mut rank, mut count, mut maxlen) = (1i64, None::<usize>, 0usize);
    let mut i = 3;
    while i < a.len() {
        let Some(v) = a.get(i + 1) else {
            return syntax();
        };
        let o = a[i];
        let Some(n) = crate::util::parse_int(v) else {
            return if o.eq_ignore_ascii_case(b"rank")
                || o.eq_ignore_ascii_case(b"count")
                || o.eq_ignore_ascii_case(b"maxlen")
            {
                not_int()
            } else {
                syntax()
            };
        };
        if o.eq_ignore_ascii_case(b"rank") {
            if n == 0 {
                return err("ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list");
            }
            if n == i64::MIN {
                return count_out_of_range();
            }
            rank = n;
        } else if o.eq_ignore_ascii_case(b"count") {
            if n < 0 {
                return err("ERR COUNT can't be negative");
            }
            count = Some(usize::try_from(n).unwrap_or(usize::MAX));
        } else if o.eq_ignore_ascii_case(b"maxlen") {
            if n < 0 {
                return err("ERR MAXLEN can't be negative");
            }
            maxlen = usize::try_from(n).unwrap_or(usize::MAX);
        } else {
            return syntax();
        }
        i += 2;
    }
    let want = match count {
        Some(0) => usize::MAX,
        Some(c) => c,
        None => 1,
    };
    let found = with_list(ctx, a[1], |l| {
        let len = l.len();
        let scan = if maxlen == 0 { len } else { maxlen.min(len) };
        let skip = usize::try_from(rank.unsigned_abs() - 1).unwrap_or(usize::MAX);
        let matches = |it: &mut dyn Iterator<Item = (usize, &[u8])>| -> Vec<i64> {
            it.take(scan)
                .filter(|(_, v)| *v == a[2])
                .skip(skip)
                .take(want)
                .map(|(i, _)| i as i64)
                .collect()
        };
        if rank > 0 {
            matches(&mut l.values().enumerate())
        } else {
            matches(&mut l.values_rev(0).enumerate().map(|(i, v)| (len - 1 - i, v)))
        }
    });
    match found {
        Err(e) => e,
        Ok(None) if count.is_some() => Reply::Array(vec![]),
        Ok(None) => Reply::Null,
        Ok(Some(v)) if count.is_some() => Reply::Array(v.into_iter().map(Reply::Int).collect()),
        Ok(Some(v)) => v.first().map_or(Reply::Null, |&i| Reply::Int(i)),
    }
}

/// `LEFT`/`RIGHT` (true: the head).
fn side(b: &[u8]) -> Option<bool> {
    if b.eq_ignore_ascii_case(b"left") {
        Some(true)
    } else if b.eq_ignore_ascii_case(b"right") {
        Some(false)
    } else {
        None
    }
}

/// LMOVE's work: `None` when `src` holds nothing (the caller's nil), else the element.
fn do_move(
    ctx: &mut Ctx,
    src: &[u8],
    dst: &[u8],
    from_left: bool,
    to_left: bool,
) -> Result<Option<Bytes>, Reply> {
    if !is_list(ctx, src)? {
        return Ok(None);
    }
    is_list(ctx, dst)?;
    let Some(v) = pop_n(ctx, src, from_left, 1).into_iter().next() else {
        return Ok(None);
    };
    let store = ctx.store;
    let pushed = ctx.write(dst, |w| {
        check_room(store, dst, w.entry().heap_bytes(), v.len() + 16)?;
        w.list_push(to_left, &[&v]).ok_or_else(no_room)
    });
    match pushed {
        Ok(_) => Ok(Some(v)),
        Err(e) => {
            // Nothing is lost: the element goes back where it came from.
            ctx.write(src, |w| w.list_push(from_left, &[&v]));
            Err(e)
        }
    }
}

fn lmove(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (Some(f), Some(t)) = (side(a[3]), side(a[4])) else {
        return syntax();
    };
    match do_move(ctx, a[1], a[2], f, t) {
        Ok(v) => bulk_opt(v),
        Err(e) => e,
    }
}

fn rpoplpush(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match do_move(ctx, a[1], a[2], false, true) {
        Ok(v) => bulk_opt(v),
        Err(e) => e,
    }
}

/// `[numkeys] key… LEFT|RIGHT [COUNT n]` from `a[at]` on: the keys, the side, the count.
fn mpop_args<'a>(a: &[&'a [u8]], at: usize) -> Result<(Vec<&'a [u8]>, bool, usize), Reply> {
    let numkeys_err = || err("ERR numkeys should be greater than 0");
    let n = match crate::util::parse_int(a[at]) {
        Some(n) if n > 0 => n as u64,
        _ => return Err(numkeys_err()),
    };
    let first = at + 1;
    let rest = (a.len() - first) as u64;
    if n >= rest {
        return Err(syntax());
    }
    let n = n as usize;
    let keys = a[first..first + n].to_vec();
    let Some(left) = side(a[first + n]) else {
        return Err(syntax());
    };
    let mut count = 1;
    let mut i = first + n + 1;
    let mut counted = false;
    while i < a.len() {
        if a[i].eq_ignore_ascii_case(b"count") && !counted && i + 1 < a.len() {
            match crate::util::parse_int(a[i + 1]) {
                Some(c) if c > 0 => count = usize::try_from(c).unwrap_or(usize::MAX),
                _ => return Err(err("ERR count should be greater than 0")),
            }
            counted = true;
            i += 2;
        } else {
            return Err(syntax());
        }
    }
    Ok((keys, left, count))
}

/// LMPOP's work: the first non-empty list's key and up to `count` of its elements.
fn mpop(ctx: &mut Ctx, keys: &[&[u8]], left: bool, count: usize) -> Result<Option<Reply>, Reply> {
    for &k in keys {
        if !is_list(ctx, k)? {
            continue;
        }
        let vals = pop_n(ctx, k, left, count);
        if !vals.is_empty() {
            return Ok(Some(Reply::Array(vec![
                Reply::Bulk(ctx.bytes(k)),
                Reply::Array(vals.into_iter().map(Reply::Bulk).collect()),
            ])));
        }
    }
    Ok(None)
}

fn lmpop(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (keys, left, count) = match mpop_args(a, 1) {
        Ok(x) => x,
        Err(e) => return e,
    };
    match mpop(ctx, &keys, left, count) {
        Ok(r) => r.unwrap_or(Reply::NullArray),
        Err(e) => e,
    }
}

// ---- blocking ----

/// A blocking command's timeout in milliseconds (0: forever), Redis' rules and errors.
pub(crate) fn timeout_ms(b: &[u8]) -> Result<u64, Reply> {
    let Some(v) = crate::util::parse_float(b).filter(|v| v.is_finite()) else {
        return Err(err("ERR timeout is not a float or out of range"));
    };
    if v < 0.0 {
        return Err(err("ERR timeout is negative"));
    }
    let ms = (v * 1000.0).ceil();
    if ms >= i64::MAX as f64 {
        // Redis 7.0 overflows to a negative number here.
        return Err(err("ERR timeout is negative"));
    }
    Ok(ms as u64)
}

/// Nothing to take yet: wait on `keys` (or, inside a transaction, answer `timeout_reply`).
fn block(ctx: &Ctx, keys: &[&[u8]], timeout_ms: u64, timeout_reply: Reply) -> Outcome {
    Outcome::Block {
        keys: keys.iter().map(|k| ctx.bytes(k)).collect(),
        timeout_ms,
        timeout_reply,
    }
}

fn bpop(ctx: &mut Ctx, a: &[&[u8]], left: bool) -> Outcome {
    let keys = &a[1..a.len() - 1];
    let t = match timeout_ms(a[a.len() - 1]) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    for &k in keys {
        match is_list(ctx, k) {
            Err(e) => return e.into(),
            Ok(false) => continue,
            Ok(true) => {}
        }
        if let Some(v) = pop_n(ctx, k, left, 1).into_iter().next() {
            return Reply::Array(vec![Reply::Bulk(ctx.bytes(k)), Reply::Bulk(v)]).into();
        }
    }
    block(ctx, keys, t, Reply::NullArray)
}

fn blmove(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    let (Some(f), Some(t)) = (side(a[3]), side(a[4])) else {
        return syntax().into();
    };
    let ms = match timeout_ms(a[5]) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    match do_move(ctx, a[1], a[2], f, t) {
        Ok(Some(v)) => Reply::Bulk(v).into(),
        Ok(None) => block(ctx, &a[1..2], ms, Reply::Null),
        Err(e) => e.into(),
    }
}

fn brpoplpush(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    let ms = match timeout_ms(a[3]) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    match do_move(ctx, a[1], a[2], false, true) {
        Ok(Some(v)) => Reply::Bulk(v).into(),
        Ok(None) => block(ctx, &a[1..2], ms, Reply::Null),
        Err(e) => e.into(),
    }
}

fn blmpop(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    let ms = match timeout_ms(a[1]) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let (keys, left, count) = match mpop_args(a, 2) {
        Ok(x) => x,
        Err(e) => return e.into(),
    };
    match mpop(ctx, &keys, left, count) {
        Ok(Some(r)) => r.into(),
        Ok(None) => block(ctx, &keys, ms, Reply::NullArray),
        Err(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_redis() {
        assert_eq!(range_of(0, -1, 5), Some((0, 4)));
        assert_eq!(range_of(-100, 100, 5), Some((0, 4)));
        assert_eq!(range_of(3, 1, 5), None);
        assert_eq!(range_of(5, 10, 5), None);
        assert_eq!(range_of(i64::MIN, i64::MAX, 5), Some((0, 4)));
        assert_eq!(index_of(-1, 3), Some(2));
        assert_eq!(index_of(-4, 3), None);
        assert_eq!(index_of(i64::MIN, 3), None);
    }

    #[test]
    fn timeouts_follow_redis() {
        assert_eq!(timeout_ms(b"0"), Ok(0));
        assert_eq!(timeout_ms(b"0.5"), Ok(500));
        assert!(timeout_ms(b"-1").is_err());
        assert!(timeout_ms(b"abc").is_err());
        assert!(timeout_ms(b"1e100").is_err());
        assert!(timeout_ms(b"inf").is_err());
    }
}
