//! String and counter commands. Strings are LWW registers; INCR-family commands add to this
//! region's PN-counter contribution (see meridian_crdt::strval); INCRBYFLOAT is a register
//! write (floats are not summed across regions: the last write wins).

use super::*;
use crate::util::{format_float, parse_float};
use meridian_crdt::StrValue;
use std::sync::atomic::Ordering::Relaxed;

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("get", 2, READONLY | FAST, 1, 1, 1, get),
        spec!("set", -3, WRITE | DENYOOM, 1, 1, 1, set),
        spec!("setnx", 3, WRITE | DENYOOM | FAST, 1, 1, 1, setnx),
        spec!("setex", 4, WRITE | DENYOOM, 1, 1, 1, setex),
        spec!("psetex", 4, WRITE | DENYOOM, 1, 1, 1, psetex),
        spec!("getset", 3, WRITE | DENYOOM | FAST, 1, 1, 1, getset),
        spec!("getdel", 2, WRITE | FAST, 1, 1, 1, getdel),
        spec!("getex", -2, WRITE | FAST, 1, 1, 1, getex),
        spec!("mget", -2, READONLY | FAST, 1, -1, 1, mget),
        spec!("mset", -3, WRITE | DENYOOM | ALL_SHARDS, 1, -1, 2, mset),
        spec!("msetnx", -3, WRITE | DENYOOM | ALL_SHARDS, 1, -1, 2, msetnx),
        spec!("append", 3, WRITE | DENYOOM | FAST, 1, 1, 1, append),
        spec!("strlen", 2, READONLY | FAST, 1, 1, 1, strlen),
        spec!("getrange", 4, READONLY, 1, 1, 1, getrange),
        spec!("substr", 4, READONLY, 1, 1, 1, getrange),
        spec!("setrange", 4, WRITE | DENYOOM, 1, 1, 1, setrange),
        spec!("incr", 2, WRITE | DENYOOM | FAST, 1, 1, 1, incr),
        spec!("decr", 2, WRITE | DENYOOM | FAST, 1, 1, 1, decr),
        spec!("incrby", 3, WRITE | DENYOOM | FAST, 1, 1, 1, incrby),
        spec!("decrby", 3, WRITE | DENYOOM | FAST, 1, 1, 1, decrby),
        spec!(
            "incrbyfloat",
            3,
            WRITE | DENYOOM | FAST,
            1,
            1,
            1,
            incrbyfloat
        ),
    ]
}

/// The visible string value of a key: Ok(None) when absent, Err(WRONGTYPE) for other types.
pub fn get_string(ctx: &mut Ctx, key: &[u8]) -> Result<Option<Bytes>, Reply> {
    match ctx.read_string(key) {
        None => Ok(None),
        Some(v) => v.map_err(|_| wrongtype()),
    }
}

fn get(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    flat(get_string(ctx, a[1]).map(bulk_opt))
}

/// TTL options shared by SET and GETEX.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TtlOpt {
    None,
    Keep,
    Persist,
    At(u64),
}

/// Parse `EX|PX|EXAT|PXAT <n>` into an absolute deadline; `cmd` names the command in errors.
pub fn parse_expire(opt: &[u8], val: &[u8], now_ms: u64, cmd: &'static str) -> Result<u64, Reply> {
    let n = crate::util::parse_int(val).ok_or_else(not_int)?;
    let invalid = || err_owned(format!("ERR invalid expire time in '{cmd}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let n = n as u64;
    let deadline = if opt.eq_ignore_ascii_case(b"ex") {
        n.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms))
    } else if opt.eq_ignore_ascii_case(b"px") {
        n.checked_add(now_ms)
    } else if opt.eq_ignore_ascii_case(b"exat") {
        n.checked_mul(1000)
    } else {
        Some(n)
    };
    match deadline {
        Some(d) if d < (1u64 << 47) => Ok(d),
        _ => Err(invalid()),
    }
}

/// `EX|PX|EXAT|PXAT <n>` at `a[i]`: `None` if `a[i]` is not such an option (or lacks its
/// argument), else the parsed deadline or the error to answer.
fn expire_option(
    a: &[&[u8]],
    i: usize,
    now_ms: u64,
    cmd: &'static str,
) -> Option<Result<u64, Reply>> {
    let o = &a[i];
    let is_ttl = ["ex", "px", "exat", "pxat"]
        .iter()
        .any(|n| o.eq_ignore_ascii_case(n.as_bytes()));
    let value = a.get(i + 1).filter(|_| is_ttl)?;
    Some(parse_expire(o, value, now_ms, cmd))
}

fn set(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut ttl = TtlOpt::None;
    let mut version = None;
    let mut i = 3;
    while i < a.len() {
        let o = &a[i];
        if o.eq_ignore_ascii_case(b"version") && version.is_none() && i + 1 < a.len() {
            // meridian extension: the source version this value was loaded at.
            match crate::util::parse_int(a[i + 1]) {
                Some(v) if v > 0 => version = Some(v as u64),
                _ => return err("ERR VERSION must be a positive integer"),
            }
            i += 1;
        } else if o.eq_ignore_ascii_case(b"nx") && !xx {
            nx = true;
        } else if o.eq_ignore_ascii_case(b"xx") && !nx {
            xx = true;
        } else if o.eq_ignore_ascii_case(b"get") {
            get = true;
        } else if o.eq_ignore_ascii_case(b"keepttl") && ttl == TtlOpt::None {
            ttl = TtlOpt::Keep;
        } else if let Some(deadline) = (ttl == TtlOpt::None)
            .then(|| expire_option(a, i, ctx.now_ms, "set"))
            .flatten()
        {
            match deadline {
                Ok(d) => ttl = TtlOpt::At(d),
                Err(e) => return e,
            }
            i += 1;
        } else {
            return syntax();
        }
        i += 1;
    }
    set_generic(
        ctx,
        a[1],
        a[2],
        SetOpts {
            nx,
            xx,
            get,
            ttl,
            version,
        },
    )
}

/// Options of the `SET` family.
#[derive(Clone, Copy)]
struct SetOpts {
    nx: bool,
    xx: bool,
    get: bool,
    ttl: TtlOpt,
    /// `VERSION n`: a versioned fill, refused at or below the key's invalidation floor.
    version: Option<u64>,
}

fn set_generic(ctx: &mut Ctx, key: &[u8], value: &[u8], opts: SetOpts) -> Reply {
    let SetOpts {
        nx,
        xx,
        get,
        ttl,
        version,
    } = opts;
    if let Err(e) = check_room(ctx.store, key, 0, value.len()) {
        return e;
    }
    let old = if get {
        match get_string(ctx, key) {
            Ok(v) => Some(v),
            Err(e) => return e,
        }
    } else {
        None
    };
    let exists = (nx || xx) && ctx.lookup(key).is_some();
    if (nx && exists) || (xx && !exists) {
        return match old {
            Some(v) => bulk_opt(v),
            None => Reply::Null,
        };
    }
    if ttl == TtlOpt::None && version.is_none() {
        ctx.set_plain(key, value);
        return match old {
            Some(v) => bulk_opt(v),
            None => ok(),
        };
    }
    let value = ctx.bytes(value);
    let written = ctx.write(key, |w| {
        match version {
            Some(v) => w.set_str_versioned(value, v, ttl == TtlOpt::Keep)?,
            None => w.set_str_shared(value, ttl == TtlOpt::Keep),
        }
        if let TtlOpt::At(d) = ttl {
            w.set_deadline(Some(d));
        }
        Ok(())
    });
    if let Err(e) = written {
        ctx.store.stats.stale_fills_refused.fetch_add(1, Relaxed);
        return crdt_err(e);
    }
    match old {
        Some(v) => bulk_opt(v),
        None => ok(),
    }
}

fn setnx(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    if let Err(e) = check_room(ctx.store, a[1], 0, a[2].len()) {
        return e;
    }
    if ctx.lookup(a[1]).is_some() {
        return Reply::Int(0);
    }
    let value = ctx.bytes(a[2]);
    ctx.write(a[1], |w| w.set_str_shared(value, false));
    Reply::Int(1)
}

fn setex_generic(ctx: &mut Ctx, a: &[&[u8]], unit: &'static [u8], cmd: &'static str) -> Reply {
    let d = match parse_expire(unit, a[2], ctx.now_ms, cmd) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let opts = SetOpts {
        nx: false,
        xx: false,
        get: false,
        ttl: TtlOpt::At(d),
        version: None,
    };
    set_generic(ctx, a[1], a[3], opts)
}

fn setex(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    setex_generic(ctx, a, b"ex", "setex")
}

fn psetex(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    setex_generic(ctx, a, b"px", "psetex")
}

fn getset(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let opts = SetOpts {
        nx: false,
        xx: false,
        get: true,
        ttl: TtlOpt::None,
        version: None,
    };
    set_generic(ctx, a[1], a[2], opts)
}

fn getdel(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match get_string(ctx, a[1]) {
        Err(e) => e,
        Ok(None) => Reply::Null,
        Ok(Some(v)) => {
            ctx.write(a[1], |w| w.delete());
            bulk(v)
        }
    }
}

fn getex(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let mut ttl = TtlOpt::None;
    let mut i = 2;
    while i < a.len() {
        let o = &a[i];
        if o.eq_ignore_ascii_case(b"persist") && ttl == TtlOpt::None {
            ttl = TtlOpt::Persist;
        } else if let Some(deadline) = (ttl == TtlOpt::None)
            .then(|| expire_option(a, i, ctx.now_ms, "getex"))
            .flatten()
        {
            match deadline {
                Ok(d) => ttl = TtlOpt::At(d),
                Err(e) => return e,
            }
            i += 1;
        } else {
            return syntax();
        }
        i += 1;
    }
    let v = match get_string(ctx, a[1]) {
        Err(e) => return e,
        Ok(None) => return Reply::Null,
        Ok(Some(v)) => v,
    };
    match ttl {
        TtlOpt::At(d) => ctx.write(a[1], |w| w.set_deadline(Some(d))),
        TtlOpt::Persist if ctx.lookup(a[1]).and_then(|e| e.deadline_ms()).is_some() => {
            ctx.write(a[1], |w| w.set_deadline(None));
        }
        _ => {}
    }
    bulk(v)
}

fn mget(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let mut out = Vec::with_capacity(a.len() - 1);
    for k in &a[1..] {
        let v = match ctx.read(k) {
            Some(e) => e.as_str().and_then(|s| s.bytes()),
            None => None,
        };
        out.push(bulk_opt(v));
    }
    Reply::Array(out)
}

fn mset(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    if a.len() % 2 != 1 {
        return arity("mset");
    }
    for kv in a[1..].chunks(2) {
        if let Err(e) = check_room(ctx.store, kv[0], 0, kv[1].len()) {
            return e;
        }
    }
    for kv in a[1..].chunks(2) {
        let value = ctx.bytes(kv[1]);
        ctx.write(kv[0], |w| w.set_str_shared(value, false));
    }
    ok()
}

fn msetnx(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    if a.len() % 2 != 1 {
        return arity("msetnx");
    }
    for kv in a[1..].chunks(2) {
        if let Err(e) = check_room(ctx.store, kv[0], 0, kv[1].len()) {
            return e;
        }
    }
    for kv in a[1..].chunks(2) {
        if ctx.lookup(kv[0]).is_some() {
            return Reply::Int(0);
        }
    }
    for kv in a[1..].chunks(2) {
        let value = ctx.bytes(kv[1]);
        ctx.write(kv[0], |w| w.set_str_shared(value, false));
    }
    Reply::Int(1)
}

fn max_len(ctx: &Ctx) -> usize {
    ctx.store.runtime.proto_max_bulk_len.load(Relaxed)
}

fn too_big() -> Reply {
    err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
}

fn append(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let cur = match get_string(ctx, a[1]) {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => return e,
    };
    if cur.len() + a[2].len() > max_len(ctx) {
        return too_big();
    }
    if let Err(e) = check_room(ctx.store, a[1], 0, cur.len() + a[2].len()) {
        return e;
    }
    let mut v = Vec::with_capacity(cur.len() + a[2].len());
    v.extend_from_slice(&cur);
    v.extend_from_slice(a[2]);
    let n = v.len();
    ctx.write(a[1], |w| w.set_str(Bytes::from(v), true));
    Reply::Int(n as i64)
}

fn strlen(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match ctx.read(a[1]) {
        None => Reply::Int(0),
        Some(e) => match e.as_str() {
            Some(s) => Reply::Int(s.len() as i64),
            None => wrongtype(),
        },
    }
}

fn getrange(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (Some(start), Some(end)) = (crate::util::parse_int(a[2]), crate::util::parse_int(a[3]))
    else {
        return not_int();
    };
    let v = match get_string(ctx, a[1]) {
        Err(e) => return e,
        Ok(None) => return bulk(Bytes::new()),
        Ok(Some(v)) => v,
    };
    let len = v.len() as i64;
    if start < 0 && end < 0 && start > end {
        return bulk(Bytes::new());
    }
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if end < 0 { len + end } else { end };
    s = s.max(0);
    e = e.max(0);
    if e >= len {
        e = len - 1;
    }
    if s > e || len == 0 {
        return bulk(Bytes::new());
    }
    bulk(v.slice(s as usize..=e as usize))
}

fn setrange(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(offset) = crate::util::parse_int(a[2]) else {
        return not_int();
    };
    if offset < 0 {
        return err("ERR offset is out of range");
    }
    let offset = offset as usize;
    let cur = match get_string(ctx, a[1]) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let patch = &a[3];
    if patch.is_empty() {
        return Reply::Int(cur.map_or(0, |c| c.len()) as i64);
    }
    if offset.saturating_add(patch.len()) > max_len(ctx) {
        return too_big();
    }
    let len = cur
        .as_ref()
        .map_or(0, |c| c.len())
        .max(offset + patch.len());
    if let Err(e) = check_room(ctx.store, a[1], 0, len) {
        return e;
    }
    let mut v = cur.map(|c| c.to_vec()).unwrap_or_default();
    if v.len() < offset + patch.len() {
        v.resize(offset + patch.len(), 0);
    }
    v[offset..offset + patch.len()].copy_from_slice(patch);
    let n = v.len();
    ctx.write(a[1], |w| w.set_str(Bytes::from(v), true));
    Reply::Int(n as i64)
}

pub fn incr_generic(ctx: &mut Ctx, key: &[u8], by: i64) -> Reply {
    // One probe: `incr_by` refuses another type itself (WRONGTYPE, nothing written).
    match ctx.incr_plain(key, by) {
        Ok(n) => Reply::Int(n),
        Err(e) => crdt_err(e),
    }
}

fn incr(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    incr_generic(ctx, a[1], 1)
}

fn decr(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    incr_generic(ctx, a[1], -1)
}

fn incrby(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match crate::util::parse_int(a[2]) {
        Some(by) => incr_generic(ctx, a[1], by),
        None => not_int(),
    }
}

fn decrby(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(by) = crate::util::parse_int(a[2]) else {
        return not_int();
    };
    match by.checked_neg() {
        Some(by) => incr_generic(ctx, a[1], by),
        None => err("ERR decrement would overflow"),
    }
}

fn incrbyfloat(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(by) = parse_float(a[2]) else {
        return not_float();
    };
    let cur = match ctx.lookup(a[1]) {
        None => 0.0,
        Some(e) => match e.as_str().and_then(|s| s.value()) {
            None => return wrongtype(),
            Some(StrValue::Int(n)) => n as f64,
            Some(StrValue::Bytes(b)) => match parse_float(&b) {
                Some(f) => f,
                None => return not_float(),
            },
        },
    };
    let next = cur + by;
    if !next.is_finite() {
        return err("ERR increment would produce NaN or Infinity");
    }
    let s = Bytes::from(format_float(next));
    ctx.write(a[1], |w| w.set_str(s.clone(), true));
    bulk(s)
}
