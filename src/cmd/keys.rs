//! Keyspace commands: DEL/EXISTS/TYPE/RENAME, TTLs, SCAN/KEYS, DBSIZE, FLUSH*.
//! DEL is an observed remove (a concurrent write elsewhere survives); expiry is local and
//! never replicates as a DEL.

use super::*;
use crate::util::glob_match;
use meridian_crdt::{key_slot, Val, SLOT_COUNT};
use std::borrow::Cow;

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("del", -2, WRITE, 1, -1, 1, del),
        spec!("unlink", -2, WRITE | FAST, 1, -1, 1, del),
        spec!("exists", -2, READONLY | FAST, 1, -1, 1, exists),
        spec!("touch", -2, READONLY | FAST, 1, -1, 1, exists),
        spec!("type", 2, READONLY | FAST, 1, 1, 1, type_),
        spec!("rename", 3, WRITE | ALL_SHARDS, 1, 2, 1, rename),
        spec!("renamenx", 3, WRITE | ALL_SHARDS | FAST, 1, 2, 1, renamenx),
        spec!("copy", -3, WRITE | DENYOOM | ALL_SHARDS, 1, 2, 1, copy),
        spec!("object", -2, READONLY, 2, 2, 1, object),
        spec!("memory", -2, READONLY, 2, 2, 1, memory),
        spec!("expire", -3, WRITE | FAST, 1, 1, 1, expire),
        spec!("pexpire", -3, WRITE | FAST, 1, 1, 1, pexpire),
        spec!("expireat", -3, WRITE | FAST, 1, 1, 1, expireat),
        spec!("pexpireat", -3, WRITE | FAST, 1, 1, 1, pexpireat),
        spec!("ttl", 2, READONLY | FAST, 1, 1, 1, ttl),
        spec!("pttl", 2, READONLY | FAST, 1, 1, 1, pttl),
        spec!("expiretime", 2, READONLY | FAST, 1, 1, 1, expiretime),
        spec!("pexpiretime", 2, READONLY | FAST, 1, 1, 1, pexpiretime),
        spec!("persist", 2, WRITE | FAST, 1, 1, 1, persist),
        spec!("scan", -2, READONLY, 0, 0, 0, scan),
        spec!("keys", 2, READONLY, 0, 0, 0, keys),
        spec!("dbsize", 1, READONLY | FAST, 0, 0, 0, dbsize),
        spec!("randomkey", 1, READONLY, 0, 0, 0, randomkey),
        spec!("flushdb", -1, WRITE, 0, 0, 0, flushall),
        spec!("flushall", -1, WRITE, 0, 0, 0, flushall),
    ]
}

fn del(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let mut n = 0;
    for k in &a[1..] {
        if ctx.lookup(k).is_some() && ctx.write(k, |w| w.delete()) {
            n += 1;
        }
    }
    Reply::Int(n)
}

fn exists(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let mut n = 0;
    for k in &a[1..] {
        n += i64::from(ctx.lookup(k).is_some());
    }
    Reply::Int(n)
}

fn type_(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let name = ctx.kind(a[1]).map_or("none", Kind::name);
    Reply::Simple(Cow::Borrowed(name))
}

/// Copy the visible value of `from` into a fresh key `to` (rename = delete + create).
fn rename_generic(ctx: &mut Ctx, a: &[&[u8]], nx: bool) -> Reply {
    let (from, to) = (&a[1], &a[2]);
    let Some(entry) = ctx.lookup(from).map(Cow::into_owned) else {
        return err("ERR no such key");
    };
    if from == to {
        return if nx { Reply::Int(0) } else { ok() };
    }
    if nx && ctx.lookup(to).is_some() {
        return Reply::Int(0);
    }
    copy_entry(ctx, &entry, to);
    ctx.write(from, |w| w.delete());
    if nx {
        Reply::Int(1)
    } else {
        ok()
    }
}

/// Make `to` a fresh key holding `entry`'s visible value and deadline (whatever `to` held
/// before is deleted first).
fn copy_entry(ctx: &mut Ctx, entry: &meridian_crdt::Entry, to: &[u8]) {
    let deadline = entry.deadline_ms();
    if ctx.lookup(to).is_some() {
        ctx.write(to, |w| w.delete());
    }
    ctx.write(to, |w| {
        match entry.visible() {
            Some(Val::Str(s)) => w.set_str(s.bytes().unwrap_or_default(), false),
            Some(Val::Set(s)) => {
                for m in s.members() {
                    w.sadd(m);
                }
            }
            Some(Val::Hash(h)) => {
                for (f, s) in h.fields() {
                    let v = s.bytes().unwrap_or_default();
                    w.hash_update(f, |fs, stamp| fs.set(stamp, v));
                }
            }
            Some(Val::List(l)) => {
                let vs: Vec<&[u8]> = l.values().collect();
                w.list_push(false, &vs);
            }
            Some(Val::ZSet(z)) => {
                for (m, s) in z.iter() {
                    w.zadd(m, s);
                }
            }
            None => {}
        }
        if deadline.is_some() {
            w.set_deadline(deadline);
        }
    });
}

/// `COPY source destination [DB 0] [REPLACE]`.
fn copy(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let mut replace = false;
    let mut i = 3;
    while i < a.len() {
        if a[i].eq_ignore_ascii_case(b"replace") {
            replace = true;
            i += 1;
        } else if a[i].eq_ignore_ascii_case(b"db") && i + 1 < a.len() {
            match crate::util::parse_int(a[i + 1]) {
                Some(0) => {}
                Some(_) => return err("ERR DB index is out of range"),
                None => return not_int(),
            }
            i += 2;
        } else {
            return syntax();
        }
    }
    let (from, to) = (a[1], a[2]);
    if from == to {
        return err("ERR source and destination objects are the same");
    }
    let Some(entry) = ctx.lookup(from).map(Cow::into_owned) else {
        return Reply::Int(0);
    };
    if !replace && ctx.lookup(to).is_some() {
        return Reply::Int(0);
    }
    copy_entry(ctx, &entry, to);
    Reply::Int(1)
}

fn rename(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    rename_generic(ctx, a, false)
}

fn renamenx(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    rename_generic(ctx, a, true)
}

fn expire_generic(
    ctx: &mut Ctx,
    a: &[&[u8]],
    unit_ms: u64,
    absolute: bool,
    cmd: &'static str,
) -> Reply {
    let Some(n) = crate::util::parse_int(a[2]) else {
        return not_int();
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &a[3..] {
        if o.eq_ignore_ascii_case(b"nx") {
            nx = true;
        } else if o.eq_ignore_ascii_case(b"xx") {
            xx = true;
        } else if o.eq_ignore_ascii_case(b"gt") {
            gt = true;
        } else if o.eq_ignore_ascii_case(b"lt") {
            lt = true;
        } else {
            return err_owned(format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(o)
            ));
        }
    }
    if nx && (xx || gt || lt) {
        return err("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return err("ERR GT and LT options at the same time are not compatible");
    }
    let invalid = || err_owned(format!("ERR invalid expire time in '{cmd}' command"));
    let Some(scaled) = n.checked_mul(unit_ms as i64) else {
        return invalid();
    };
    let deadline = if absolute {
        Some(scaled)
    } else {
        scaled.checked_add(ctx.now_ms as i64)
    };
    let Some(deadline) = deadline else {
        return invalid();
    };
    let current = match ctx.lookup(a[1]) {
        None => return Reply::Int(0),
        Some(e) => e.deadline_ms(),
    };
    if (nx && current.is_some()) || (xx && current.is_none()) {
        return Reply::Int(0);
    }
    if gt && current.is_none_or(|c| deadline <= c as i64) {
        return Reply::Int(0);
    }
    if lt && current.is_some_and(|c| deadline >= c as i64) {
        return Reply::Int(0);
    }
    if deadline <= ctx.now_ms as i64 {
        ctx.write(a[1], |w| w.delete());
    } else if deadline >= (1i64 << 47) {
        return invalid();
    } else {
        ctx.write(a[1], |w| w.set_deadline(Some(deadline as u64)));
    }
    Reply::Int(1)
}

fn expire(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    expire_generic(ctx, a, 1000, false, "expire")
}

fn pexpire(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    expire_generic(ctx, a, 1, false, "pexpire")
}

fn expireat(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    expire_generic(ctx, a, 1000, true, "expireat")
}

fn pexpireat(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    expire_generic(ctx, a, 1, true, "pexpireat")
}

/// -2 absent, -1 no TTL, else the deadline.
fn deadline_of(ctx: &mut Ctx, key: &[u8]) -> Result<u64, i64> {
    match ctx.lookup(key) {
        None => Err(-2),
        Some(e) => e.deadline_ms().ok_or(-1),
    }
}

fn ttl(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let now = ctx.now_ms;
    Reply::Int(
        deadline_of(ctx, a[1])
            .map_or_else(|c| c, |d| ((d.saturating_sub(now) + 500) / 1000) as i64),
    )
}

fn pttl(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let now = ctx.now_ms;
    Reply::Int(deadline_of(ctx, a[1]).map_or_else(|c| c, |d| d.saturating_sub(now) as i64))
}

fn expiretime(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    Reply::Int(deadline_of(ctx, a[1]).map_or_else(|c| c, |d| (d / 1000) as i64))
}

fn pexpiretime(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    Reply::Int(deadline_of(ctx, a[1]).map_or_else(|c| c, |d| d as i64))
}

fn persist(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match deadline_of(ctx, a[1]) {
        Ok(_) => {
            ctx.write(a[1], |w| w.set_deadline(None));
            Reply::Int(1)
        }
        Err(_) => Reply::Int(0),
    }
}

/// Keys of one slot that pass the filters.
fn collect_slot(
    ctx: &mut Ctx,
    slot: u16,
    pattern: Option<&[u8]>,
    kind: Option<&[u8]>,
    out: &mut Vec<Reply>,
) {
    let now = ctx.now_ms;
    let idx = crate::store::shard_of(slot);
    let mut visit = |shard: &mut crate::store::Shard| {
        for (k, e) in shard.ks.slot_keys(slot, now) {
            if pattern.is_some_and(|p| !glob_match(p, k, false)) {
                continue;
            }
            if kind.is_some_and(|t| {
                !e.kind()
                    .is_some_and(|k| t.eq_ignore_ascii_case(k.name().as_bytes()))
            }) {
                continue;
            }
            out.push(Reply::Bulk(Bytes::copy_from_slice(k)));
        }
    };
    match &mut ctx.locks {
        Locks::All(g) => visit(&mut g[idx]),
        _ => visit(&mut ctx.store.shard(idx)),
    }
}

fn scan(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(cursor) = std::str::from_utf8(a[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return err("ERR invalid cursor");
    };
    let (mut pattern, mut count, mut kind) = (None, 10usize, None);
    let mut i = 2;
    while i < a.len() {
        if i + 1 >= a.len() {
            return syntax();
        }
        let o = &a[i];
        if o.eq_ignore_ascii_case(b"match") {
            pattern = Some(a[i + 1]);
        } else if o.eq_ignore_ascii_case(b"count") {
            match crate::util::parse_int(a[i + 1]) {
                Some(n) if n >= 1 => count = n as usize,
                Some(_) => return syntax(),
                None => return not_int(),
            }
        } else if o.eq_ignore_ascii_case(b"type") {
            kind = Some(a[i + 1]);
        } else {
            return syntax();
        }
        i += 2;
    }
    let mut out = Vec::new();
    let mut slot = cursor.min(SLOT_COUNT as u64) as usize;
    let mut visited_slots = 0;
    while slot < SLOT_COUNT {
        collect_slot(ctx, slot as u16, pattern, kind, &mut out);
        slot += 1;
        visited_slots += 1;
        // COUNT bounds the work: keys found, or an equivalent number of (empty) slots.
        if out.len() >= count || visited_slots >= count.saturating_mul(10) {
            break;
        }
    }
    let next = if slot >= SLOT_COUNT { 0 } else { slot };
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(next.to_string())),
        Reply::Array(out),
    ])
}

fn keys(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let now = ctx.now_ms;
    let pattern = a[1];
    let mut out = Vec::new();
    ctx.each_shard(|shard| {
        for slot in 0..SLOT_COUNT as u16 {
            if shard.ks.slot_len(slot) == 0 {
                continue;
            }
            for (k, _) in shard.ks.slot_keys(slot, now) {
                if glob_match(pattern, k, false) {
                    out.push(Reply::Bulk(Bytes::copy_from_slice(k)));
                }
            }
        }
    });
    Reply::Array(out)
}

fn dbsize(ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    let mut n = 0;
    ctx.each_shard(|s| n += s.ks.len());
    Reply::Int(n as i64)
}

fn randomkey(ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    let r = ctx.conn.random();
    let now = ctx.now_ms;
    let shards = crate::store::SHARDS;
    let start = (r % shards as u64) as usize;
    for i in 0..shards {
        let idx = (start + i) % shards;
        let found = match &mut ctx.locks {
            Locks::All(g) => g[idx].ks.random_key(r.rotate_left(13), now),
            _ => ctx.store.shard(idx).ks.random_key(r.rotate_left(13), now),
        };
        if found.is_some() {
            return bulk_opt(found);
        }
    }
    Reply::Null
}

fn flushall(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    if a.len() > 2
        || a.get(1)
            .is_some_and(|o| !o.eq_ignore_ascii_case(b"async") && !o.eq_ignore_ascii_case(b"sync"))
    {
        return syntax();
    }
    let store = ctx.store;
    let now = ctx.now_ms;
    ctx.each_shard(|shard| {
        shard.ks.delete_all(&mut || store.stamp(now), now);
        shard.after_write(&store.stats);
        shard.touch_all_watched();
    });
    ok()
}

/// Slot of a key, for CLUSTER KEYSLOT and friends.
pub fn slot_of(key: &[u8]) -> u16 {
    key_slot(key)
}

/// Redis keeps strings up to this length in one allocation with their header (`embstr`).
const EMBSTR_MAX: usize = 44;

/// The encoding Redis would report for this value, so code that inspects `OBJECT
/// ENCODING` works. meridian's own layout differs (and, unlike Redis, a collection that
/// shrinks reports the compact encoding again).
fn encoding_of(entry: &meridian_crdt::Entry, t: &super::encoding::Encoding) -> &'static str {
    match entry.visible() {
        Some(Val::Str(s)) => {
            let b = s.bytes().unwrap_or_default();
            if b.len() <= 20 && crate::util::parse_int(&b).is_some() {
                "int"
            } else if b.len() <= EMBSTR_MAX {
                "embstr"
            } else {
                "raw"
            }
        }
        Some(Val::Set(set)) => {
            let n = set.len();
            if n <= t.intset_entries() && set.members().all(|m| crate::util::parse_int(m).is_some())
            {
                "intset"
            } else if n <= t.set_entries() && set.members().all(|m| m.len() <= t.set_value()) {
                "listpack"
            } else {
                "hashtable"
            }
        }
        Some(Val::Hash(h)) => {
            let short = |b: &[u8]| b.len() <= t.hash_value();
            let small = h.len() <= t.hash_entries()
                && h.fields()
                    .all(|(f, v)| short(f) && v.bytes().is_none_or(|b| short(&b)));
            if small {
                "listpack"
            } else {
                "hashtable"
            }
        }
        Some(Val::List(l)) => {
            // Redis 7.2: one listpack while it fits `list-max-listpack-size` (a positive
            // size counts entries; -1…-5 are 4…64 kB), counted as a listpack would take it.
            let size = t.list_size();
            let fits = if size > 0 {
                l.len() <= size as usize
            } else {
                let limit = 4096usize << (size.unsigned_abs().clamp(1, 5) - 1);
                let mut bytes = 7usize;
                l.values().all(|v| {
                    bytes += v.len() + 2 + usize::from(v.len() > 63) + usize::from(v.len() > 4095);
                    bytes <= limit
                })
            };
            if fits {
                "listpack"
            } else {
                "quicklist"
            }
        }
        Some(Val::ZSet(z)) => {
            if z.len() <= t.zset_entries() && z.iter().all(|(m, _)| m.len() <= t.zset_value()) {
                "listpack"
            } else {
                "skiplist"
            }
        }
        None => "raw",
    }
}

const OBJECT_HELP: [&str; 15] = [
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
    "HELP",
    "    Print this help.",
];

/// A HELP reply: one simple string per line.
pub(crate) fn help_lines(lines: &[&'static str]) -> Reply {
    help_reply(lines)
}

fn help_reply(lines: &[&'static str]) -> Reply {
    Reply::Array(
        lines
            .iter()
            .map(|l| Reply::Simple(Cow::Borrowed(*l)))
            .collect(),
    )
}

/// `OBJECT ENCODING|FREQ|IDLETIME|REFCOUNT key`, `OBJECT HELP`; reads do not count as an
/// access (as in Redis).
fn object(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let sub = a[1].to_ascii_lowercase();
    if sub == b"help" {
        return help_reply(&OBJECT_HELP);
    }
    let name = match sub.as_slice() {
        b"encoding" => "object|encoding",
        b"freq" => "object|freq",
        b"idletime" => "object|idletime",
        b"refcount" => "object|refcount",
        _ => {
            return err_owned(format!(
                "ERR unknown subcommand '{}'. Try OBJECT HELP.",
                String::from_utf8_lossy(a[1])
            ))
        }
    };
    if a.len() != 3 {
        return arity(name);
    }
    let key = a[2];
    let now = ctx.now_ms;
    let lfu_policy = ctx.store.runtime.policy.lock().name().contains("lfu");
    let shard = ctx.shard(key);
    let Some(entry) = shard.ks.peek(key, now).map(Cow::into_owned) else {
        return Reply::Null;
    };
    match sub.as_slice() {
        b"encoding" => Reply::Bulk(Bytes::from_static(
            encoding_of(&entry, &ctx.shared.encoding).as_bytes(),
        )),
        b"refcount" => {
            // Redis shares the integers 0..9999 (refcount INT_MAX).
            let shared = matches!(entry.visible(), Some(Val::Str(s))
                if s.bytes().and_then(|b| crate::util::parse_int(&b)).is_some_and(|n| (0..10_000).contains(&n)));
            Reply::Int(if shared { i64::from(i32::MAX) } else { 1 })
        }
        b"freq" if !lfu_policy => err("ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust."),
        b"idletime" if lfu_policy => err("ERR An LFU maxmemory policy is selected, idle time not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust."),
        _ => {
            let Some((idle_ms, lfu)) = shard.ks.access_of(key, now) else {
                return Reply::Null;
            };
            if sub == b"freq" {
                Reply::Int(i64::from(lfu))
            } else {
                Reply::Int((idle_ms / 1000) as i64)
            }
        }
    }
}

/// Bytes of a key's slab node and table slot besides its entry (measured: RSS growth per
/// 1 M small strings, `bench/compare.py`, minus the payload).
const NODE_OVERHEAD_BYTES: usize = 72;

/// `MEMORY USAGE key [SAMPLES count]` (the whole value is measured, SAMPLES is accepted),
/// `MEMORY HELP`.
fn memory(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let sub = a[1].to_ascii_lowercase();
    if sub == b"help" {
        return help_reply(&[
            "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "USAGE <key> [SAMPLES <count>]",
            "    Return memory in bytes used by <key> and its value. Nested values are",
            "    sampled up to <count> times (default: 5, 0 means sample all).",
            "HELP",
            "    Print this help.",
        ]);
    }
    if sub != b"usage" {
        return err_owned(format!(
            "ERR unknown subcommand '{}'. Try MEMORY HELP.",
            String::from_utf8_lossy(a[1])
        ));
    }
    if a.len() < 3 {
        return arity("memory|usage");
    }
    match a.len() {
        3 => {}
        5 if a[3].eq_ignore_ascii_case(b"samples") => {
            if crate::util::parse_int(a[4]).is_none_or(|n| n < 0) {
                return not_int();
            }
        }
        _ => return syntax(),
    }
    let key = a[2];
    let now = ctx.now_ms;
    match ctx.shard(key).ks.peek(key, now) {
        None => Reply::Null,
        Some(e) => Reply::Int((key.len() + e.heap_bytes() + NODE_OVERHEAD_BYTES) as i64),
    }
}
