//! Sorted-set commands over [`ZSet`]: members add-wins, the score set by `ZADD` an LWW
//! register, `ZINCRBY` per-region contributions on top of it (see `meridian_crdt::zset`).
//! Ranges and ranks use the set's order index: `O(log n + m)`, never a sort per call.
//!
//! Scores are formatted as Redis 7.0 does (`%.17g`, `inf`/`-inf`): bulk strings in RESP2,
//! doubles in RESP3. Counts and ranges from a client are bounded by the set's size or by
//! [`RANDOM_REPLY_MAX`]: no allocation follows an untrusted number.

use super::*;
use meridian_crdt::{LexBound, ScoreBound, Val, ZSet};

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("zadd", -4, WRITE | DENYOOM | FAST, 1, 1, 1, zadd),
        spec!("zincrby", 4, WRITE | DENYOOM | FAST, 1, 1, 1, zincrby),
        spec!("zrem", -3, WRITE | FAST, 1, 1, 1, zrem),
        spec!("zcard", 2, READONLY | FAST, 1, 1, 1, zcard),
        spec!("zscore", 3, READONLY | FAST | ELEMENT, 1, 1, 1, zscore),
        spec!("zmscore", -3, READONLY | FAST | ELEMENT, 1, 1, 1, zmscore),
        spec!("zrank", 3, READONLY | FAST | ELEMENT, 1, 1, 1, zrank),
        spec!("zrevrank", 3, READONLY | FAST | ELEMENT, 1, 1, 1, zrevrank),
        spec!("zcount", 4, READONLY | FAST, 1, 1, 1, zcount),
        spec!("zlexcount", 4, READONLY | FAST, 1, 1, 1, zlexcount),
        spec!("zrange", -4, READONLY, 1, 1, 1, zrange),
        spec!("zrangestore", -5, WRITE | DENYOOM, 1, 2, 1, zrangestore),
        spec!("zrangebyscore", -4, READONLY, 1, 1, 1, zrangebyscore),
        spec!("zrevrangebyscore", -4, READONLY, 1, 1, 1, zrevrangebyscore),
        spec!("zrangebylex", -4, READONLY, 1, 1, 1, zrangebylex),
        spec!("zrevrangebylex", -4, READONLY, 1, 1, 1, zrevrangebylex),
        spec!("zrevrange", -4, READONLY, 1, 1, 1, zrevrange),
        spec!("zremrangebyscore", 4, WRITE, 1, 1, 1, zremrangebyscore),
        spec!("zremrangebyrank", 4, WRITE, 1, 1, 1, zremrangebyrank),
        spec!("zremrangebylex", 4, WRITE, 1, 1, 1, zremrangebylex),
        spec!("zpopmin", -2, WRITE | FAST, 1, 1, 1, zpopmin),
        spec!("zpopmax", -2, WRITE | FAST, 1, 1, 1, zpopmax),
        spec!("bzpopmin", -3, WRITE | FAST, 1, -2, 1, |c, a| bzpop(
            c, a, false
        )),
        spec!("bzpopmax", -3, WRITE | FAST, 1, -2, 1, |c, a| bzpop(
            c, a, true
        )),
        spec!("zrandmember", -2, READONLY, 1, 1, 1, zrandmember),
        spec!("zunion", -3, READONLY | NUMKEYS, 2, -1, 1, zunion),
        spec!("zinter", -3, READONLY | NUMKEYS, 2, -1, 1, zinter),
        spec!("zdiff", -3, READONLY | NUMKEYS, 2, -1, 1, zdiff),
        spec!(
            "zunionstore",
            -4,
            WRITE | DENYOOM | NUMKEYS | DEST_KEY | ALL_SHARDS,
            3,
            -1,
            1,
            zunionstore
        ),
        spec!(
            "zinterstore",
            -4,
            WRITE | DENYOOM | NUMKEYS | DEST_KEY | ALL_SHARDS,
            3,
            -1,
            1,
            zinterstore
        ),
        spec!(
            "zdiffstore",
            -4,
            WRITE | DENYOOM | NUMKEYS | DEST_KEY | ALL_SHARDS,
            3,
            -1,
            1,
            zdiffstore
        ),
        spec!("zintercard", -3, READONLY | NUMKEYS, 2, -1, 1, zintercard),
        spec!("zscan", -3, READONLY, 1, 1, 1, zscan),
    ]
}

// ---- scores: parsing and formatting as Redis does ----

/// `strtod` over the whole argument (`None` if anything is left over or it is empty of
/// digits): leading whitespace, a sign, decimal or hex (`0x1p3`), `inf`/`infinity`. `NaN`
/// is refused. Overflow gives ±inf and underflow 0, as `strtod` returns them.
fn strtod(b: &[u8]) -> Option<(f64, bool)> {
    let s = std::str::from_utf8(b).ok()?;
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let lower = body.to_ascii_lowercase();
    let v = if lower == "inf" || lower == "infinity" {
        return Some((
            if neg {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            },
            false,
        ));
    } else if let Some(hex) = lower.strip_prefix("0x") {
        parse_hex(hex)?
    } else {
        if lower.contains("inf") || lower.contains("nan") || body.starts_with(['+', '-']) {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    if v.is_nan() {
        return None;
    }
    // Out of range: beyond f64 (inf from digits) or a non-zero number rounded to 0.
    let mantissa = lower.split(['e', 'p']).next().unwrap_or("");
    let nonzero = mantissa
        .bytes()
        .any(|c| c.is_ascii_hexdigit() && c != b'0' && c != b'x');
    let range_err = v.is_infinite() || (v == 0.0 && nonzero);
    Some((if neg { -v } else { v }, range_err))
}

/// Hex float digits after `0x`: `h[.h][p[+-]d]`.
fn parse_hex(s: &str) -> Option<f64> {
    let (mant, exp) = match s.split_once('p') {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut v = 0f64;
    for c in int.chars() {
        v = v * 16.0 + f64::from(c.to_digit(16)?);
    }
    let mut scale = 1.0 / 16.0;
    for c in frac.chars() {
        v += f64::from(c.to_digit(16)?) * scale;
        scale /= 16.0;
    }
    Some(v * 2f64.powi(exp))
}

/// A score argument (`ZADD`, `ZINCRBY`, `WEIGHTS`): Redis' `getDoubleFromObject`, no
/// leading space, no out-of-range values, never NaN. `-0` is stored as 0.
pub fn parse_score(b: &[u8]) -> Option<f64> {
    if b.is_empty() || b[0].is_ascii_whitespace() {
        return None;
    }
    match strtod(b)? {
        (v, false) => Some(v + 0.0),
        (v, true) if v.is_infinite() && is_inf_word(b) => Some(v),
        _ => None,
    }
}

fn is_inf_word(b: &[u8]) -> bool {
    let s = b.strip_prefix(b"-").or_else(|| b.strip_prefix(b"+"));
    let s = s.unwrap_or(b);
    s.eq_ignore_ascii_case(b"inf") || s.eq_ignore_ascii_case(b"infinity")
}

fn bad_float() -> Reply {
    err("ERR value is not a valid float")
}

/// `printf("%.17g", d)`, as Redis 7.0 replies scores.
pub fn fmt_score(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d.is_nan() {
        return "nan".into();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // 17 significant digits, then %g's choice of layout and trailing-zero trim.
    let sci = format!("{:.16e}", d);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(26);
    if neg {
        out.push('-');
    }
    if (-4..17).contains(&exp) {
        if exp >= 0 {
            let point = exp as usize + 1;
            out.push_str(&digits[..point]);
            let frac = digits[point..].trim_end_matches('0');
            if !frac.is_empty() {
                out.push('.');
                out.push_str(frac);
            }
        } else {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(digits.trim_end_matches('0'));
        }
    } else {
        out.push_str(&digits[..1]);
        let frac = digits[1..].trim_end_matches('0');
        if !frac.is_empty() {
            out.push('.');
            out.push_str(frac);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.unsigned_abs()));
    }
    out
}

fn score_reply(ctx: &Ctx, d: f64) -> Reply {
    if ctx.conn.resp3 {
        Reply::Double(d)
    } else {
        Reply::Bulk(Bytes::from(fmt_score(d)))
    }
}

/// Members (with their scores): flat in RESP2, `[member, score]` pairs in RESP3.
fn items_reply(ctx: &Ctx, items: Vec<(Bytes, f64)>, withscores: bool) -> Reply {
    if !withscores {
        return Reply::Array(items.into_iter().map(|(m, _)| Reply::Bulk(m)).collect());
    }
    if ctx.conn.resp3 {
        Reply::Array(
            items
                .into_iter()
                .map(|(m, s)| Reply::Array(vec![Reply::Bulk(m), Reply::Double(s)]))
                .collect(),
        )
    } else {
        let mut out = Vec::with_capacity(items.len() * 2);
        for (m, s) in items {
            out.push(Reply::Bulk(m));
            out.push(Reply::Bulk(Bytes::from(fmt_score(s))));
        }
        Reply::Array(out)
    }
}

fn parse_score_bound(b: &[u8]) -> Option<ScoreBound> {
    // `zslParseRange`: `strtod` over the rest, whatever it accepts (out of range and the
    // empty string, 0, included), never NaN.
    let (excl, rest) = match b.strip_prefix(b"(") {
        Some(r) => (true, r),
        None => (false, b),
    };
    let v = if rest.is_empty() {
        0.0
    } else {
        strtod(rest)?.0
    };
    Some(if excl {
        ScoreBound::Excl(v)
    } else {
        ScoreBound::Incl(v)
    })
}

fn parse_lex_bound(b: &[u8]) -> Option<LexBound<'_>> {
    match b {
        b"-" => Some(LexBound::NegInf),
        b"+" => Some(LexBound::PosInf),
        _ => match b.first() {
            Some(b'[') => Some(LexBound::Incl(&b[1..])),
            Some(b'(') => Some(LexBound::Excl(&b[1..])),
            _ => None,
        },
    }
}

fn score_range_err() -> Reply {
    err("ERR min or max is not a float")
}

fn lex_range_err() -> Reply {
    err("ERR min or max not valid string range item")
}

/// Run `f` on the sorted set at `key`: Ok(None) if absent, Err(WRONGTYPE) for other types.
fn with_zset<R>(ctx: &mut Ctx, key: &[u8], f: impl FnOnce(&ZSet) -> R) -> Result<Option<R>, Reply> {
    match ctx.read(key) {
        None => Ok(None),
        Some(e) => match e.as_zset() {
            Some(z) => Ok(Some(f(z))),
            None => Err(wrongtype()),
        },
    }
}

fn owned_items<'a>(it: impl Iterator<Item = (&'a [u8], f64)>) -> Vec<(Bytes, f64)> {
    it.map(|(m, s)| (Bytes::copy_from_slice(m), s)).collect()
}

// ---- ZADD, ZINCRBY, ZREM ----

/// `ZADD`'s options.
#[derive(Default)]
struct AddOpts {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
    ch: bool,
    incr: bool,
}

/// What a `ZADD` writes (each member once, its last outcome), how many members it added
/// and updated, and for `INCR` the new score (`None`: nothing done, a nil reply).
struct AddPlan {
    writes: Vec<(Bytes, f64)>,
    /// Member → index in `writes`, once there are enough of them that a scan would make a
    /// long ZADD quadratic.
    index: Option<std::collections::HashMap<Bytes, usize>>,
    added: i64,
    updated: i64,
    incr_score: Option<f64>,
}

/// Pending writes looked up by scanning up to this many, by a map past it.
const PLAN_SCAN_MAX: usize = 16;

impl AddPlan {
    fn pending(&self, m: &[u8]) -> Option<usize> {
        match &self.index {
            Some(map) => map.get(m).copied(),
            None => self.writes.iter().position(|(w, _)| w == m),
        }
    }

    fn push(&mut self, m: &[u8], score: f64) {
        let m = Bytes::copy_from_slice(m);
        if let Some(map) = &mut self.index {
            map.insert(m.clone(), self.writes.len());
        }
        self.writes.push((m, score));
        if self.index.is_none() && self.writes.len() > PLAN_SCAN_MAX {
            let map = self
                .writes
                .iter()
                .enumerate()
                .map(|(i, (w, _))| (w.clone(), i))
                .collect();
            self.index = Some(map);
        }
    }
}

/// Resolve a `ZADD` against the set as it stands (`None`: no key), pair by pair, as Redis
/// applies them in order.
fn plan_zadd(
    z: Option<&ZSet>,
    o: &AddOpts,
    pairs: &[&[u8]],
    scores: &[f64],
) -> Result<AddPlan, Reply> {
    let mut plan = AddPlan {
        writes: Vec::new(),
        index: None,
        added: 0,
        updated: 0,
        incr_score: None,
    };
    for (p, &score) in pairs.chunks(2).zip(scores) {
        let m = p[1];
        let pending = plan.pending(m);
        let current = match pending {
            Some(k) => Some(plan.writes[k].1),
            None => z.and_then(|z| z.score(m)),
        };
        let new = match current {
            None if o.xx => continue,
            None => {
                plan.added += 1;
                score
            }
            Some(_) if o.nx => continue,
            Some(cur) => {
                let new = if o.incr { cur + score } else { score };
                if new.is_nan() {
                    return Err(err("ERR resulting score is not a number (NaN)"));
                }
                if (o.lt && new >= cur) || (o.gt && new <= cur) {
                    continue;
                }
                plan.incr_score = Some(new);
                if new == cur {
                    continue;
                }
                plan.updated += 1;
                new
            }
        };
        plan.incr_score = Some(new);
        match pending {
            Some(k) => plan.writes[k].1 = new,
            None => plan.push(m, new),
        }
    }
    Ok(plan)
}

fn zadd(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let mut o = AddOpts::default();
    let mut i = 2;
    while i < a.len() {
        let x = a[i];
        let flag = if x.eq_ignore_ascii_case(b"nx") {
            &mut o.nx
        } else if x.eq_ignore_ascii_case(b"xx") {
            &mut o.xx
        } else if x.eq_ignore_ascii_case(b"gt") {
            &mut o.gt
        } else if x.eq_ignore_ascii_case(b"lt") {
            &mut o.lt
        } else if x.eq_ignore_ascii_case(b"ch") {
            &mut o.ch
        } else if x.eq_ignore_ascii_case(b"incr") {
            &mut o.incr
        } else {
            break;
        };
        *flag = true;
        i += 1;
    }
    let pairs = &a[i..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return syntax();
    }
    if o.nx && o.xx {
        return err("ERR XX and NX options at the same time are not compatible");
    }
    if ((o.gt || o.lt) && o.nx) || (o.gt && o.lt) {
        return err("ERR GT, LT, and/or NX options at the same time are not compatible");
    }
    if o.incr && pairs.len() > 2 {
        return err("ERR INCR option supports a single increment-element pair");
    }
    let mut scores = Vec::with_capacity(pairs.len() / 2);
    for p in pairs.chunks(2) {
        match parse_score(p[0]) {
            Some(s) => scores.push(s),
            None => return bad_float(),
        }
    }
    let key = a[1];
    let store = ctx.store;
    // One probe: the plan is made and applied inside the write (nothing is written on
    // WRONGTYPE, on an error, or when no pair changes anything).
    let r = ctx.write(key, |w| -> Result<(AddPlan, Option<f64>), Reply> {
        w.expect(Kind::ZSet).map_err(crdt_err)?;
        let plan = plan_zadd(w.zset(), &o, pairs, &scores)?;
        if plan.writes.is_empty() {
            let s = plan.incr_score;
            return Ok((plan, s));
        }
        let now = w.entry().heap_bytes();
        let grow: usize = plan
            .writes
            .iter()
            .map(|(m, _)| element_bytes(m.len(), 32))
            .sum();
        check_room(store, key, now, grow)?;
        for (m, s) in &plan.writes {
            if o.incr {
                // An increment goes to this region's contribution (concurrent ones
                // elsewhere add up).
                w.zincr(m, scores[0]);
            } else {
                w.zadd(m, *s);
            }
        }
        let s = w.zset().and_then(|z| z.score(pairs[1]));
        Ok((plan, s))
    });
    match r {
        Err(e) => e,
        Ok((_, s)) if o.incr => s.map_or(Reply::Null, |s| score_reply(ctx, s)),
        Ok((plan, _)) => Reply::Int(if o.ch {
            plan.added + plan.updated
        } else {
            plan.added
        }),
    }
}

fn zincrby(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(by) = parse_score(a[2]) else {
        return bad_float();
    };
    let (key, m) = (a[1], a[3]);
    let store = ctx.store;
    let r = ctx.write(key, |w| {
        w.expect(Kind::ZSet).map_err(crdt_err)?;
        let now = w.entry().heap_bytes();
        check_room(store, key, now, element_bytes(m.len(), 32))?;
        w.zincr(m, by)
            .ok_or_else(|| err("ERR resulting score is not a number (NaN)"))
    });
    match r {
        Err(e) => e,
        Ok(s) => score_reply(ctx, s),
    }
}

fn zrem(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match ctx.kind(a[1]) {
        None => return Reply::Int(0),
        Some(Kind::ZSet) => {}
        Some(_) => return wrongtype(),
    }
    // A member named twice is removed once: the second finds it gone.
    let removed = ctx.write(a[1], |w| a[2..].iter().filter(|m| w.zrem(m)).count());
    Reply::Int(removed as i64)
}

/// Remove `members` (distinct, present) from the sorted set at `key`.
fn remove_members(ctx: &mut Ctx, key: &[u8], members: &[Bytes]) {
    if members.is_empty() {
        return;
    }
    ctx.write(key, |w| {
        for m in members {
            w.zrem(m);
        }
    });
}

// ---- reads ----

fn zcard(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_zset(ctx, a[1], ZSet::len) {
        Err(e) => e,
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
    }
}

fn zscore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match with_zset(ctx, a[1], |z| z.score(a[2])) {
        Err(e) => e,
        Ok(Some(Some(s))) => score_reply(ctx, s),
        Ok(_) => Reply::Null,
    }
}

fn zmscore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let scores: Vec<Option<f64>> =
        match with_zset(ctx, a[1], |z| a[2..].iter().map(|m| z.score(m)).collect()) {
            Err(e) => return e,
            Ok(Some(v)) => v,
            Ok(None) => vec![None; a.len() - 2],
        };
    Reply::Array(
        scores
            .into_iter()
            .map(|s| s.map_or(Reply::Null, |s| score_reply(ctx, s)))
            .collect(),
    )
}

fn rank_of(ctx: &mut Ctx, a: &[&[u8]], rev: bool) -> Reply {
    match with_zset(ctx, a[1], |z| {
        z.rank(a[2]).map(|r| if rev { z.len() - 1 - r } else { r })
    }) {
        Err(e) => e,
        Ok(Some(Some(r))) => Reply::Int(r as i64),
        Ok(_) => Reply::Null,
    }
}

fn zrank(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    rank_of(ctx, a, false)
}

fn zrevrank(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    rank_of(ctx, a, true)
}

fn score_span(z: &ZSet, min: ScoreBound, max: ScoreBound) -> (usize, usize) {
    let lo = z.rank_from_score(min);
    let hi = z.rank_to_score(max);
    (lo, hi.max(lo))
}

fn lex_span(z: &ZSet, min: LexBound, max: LexBound) -> (usize, usize) {
    let lo = z.rank_from_lex(min);
    let hi = z.rank_to_lex(max);
    (lo, hi.max(lo))
}

fn zcount(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (Some(min), Some(max)) = (parse_score_bound(a[2]), parse_score_bound(a[3])) else {
        return score_range_err();
    };
    match with_zset(ctx, a[1], |z| {
        let (lo, hi) = score_span(z, min, max);
        hi - lo
    }) {
        Err(e) => e,
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
    }
}

fn zlexcount(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (Some(min), Some(max)) = (parse_lex_bound(a[2]), parse_lex_bound(a[3])) else {
        return lex_range_err();
    };
    match with_zset(ctx, a[1], |z| {
        let (lo, hi) = lex_span(z, min, max);
        hi - lo
    }) {
        Err(e) => e,
        Ok(n) => Reply::Int(n.unwrap_or(0) as i64),
    }
}

// ---- the ZRANGE family ----

#[derive(Copy, Clone, PartialEq)]
enum RangeBy {
    Rank,
    Score,
    Lex,
}

/// A parsed `ZRANGE`-like request.
struct RangeReq<'a> {
    by: RangeBy,
    rev: bool,
    min: &'a [u8],
    max: &'a [u8],
    /// `LIMIT offset count` (count < 0: no limit).
    limit: Option<(i64, i64)>,
    withscores: bool,
}

/// Parse the options after `min max` as `zrangeGenericCommand` does. `by`/`rev` given
/// (`Some`) are fixed by the command name and cannot be named again.
fn parse_range<'a>(
    a: &[&'a [u8]],
    at: usize,
    by: Option<RangeBy>,
    rev: Option<bool>,
    store: bool,
) -> Result<RangeReq<'a>, Reply> {
    let (mut by_opt, mut rev_opt) = (by, rev);
    let mut withscores = false;
    let mut limit = None;
    let mut j = at + 2;
    while j < a.len() {
        let o = a[j];
        let left = a.len() - j - 1;
        if o.eq_ignore_ascii_case(b"withscores") && !store {
            withscores = true;
        } else if o.eq_ignore_ascii_case(b"limit") && left >= 2 {
            let off = int_arg(a[j + 1])?;
            let cnt = int_arg(a[j + 2])?;
            limit = Some((off, cnt));
            j += 2;
        } else if rev_opt.is_none() && o.eq_ignore_ascii_case(b"rev") {
            rev_opt = Some(true);
        } else if by_opt.is_none() && o.eq_ignore_ascii_case(b"bylex") {
            by_opt = Some(RangeBy::Lex);
        } else if by_opt.is_none() && o.eq_ignore_ascii_case(b"byscore") {
            by_opt = Some(RangeBy::Score);
        } else {
            return Err(syntax());
        }
        j += 1;
    }
    let by = by_opt.unwrap_or(RangeBy::Rank);
    let rev = rev_opt.unwrap_or(false);
    if limit.is_some() && by == RangeBy::Rank {
        return Err(err(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if withscores && by == RangeBy::Lex {
        return Err(err(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    let (mut min, mut max) = (a[at], a[at + 1]);
    if rev && by != RangeBy::Rank {
        std::mem::swap(&mut min, &mut max);
    }
    Ok(RangeReq {
        by,
        rev,
        min,
        max,
        limit,
        withscores,
    })
}

/// The bounds of a request, checked before the key is looked up.
enum Bounds<'a> {
    Rank(i64, i64),
    Score(ScoreBound, ScoreBound),
    Lex(LexBound<'a>, LexBound<'a>),
}

fn bounds<'a>(r: &RangeReq<'a>) -> Result<Bounds<'a>, Reply> {
    match r.by {
        RangeBy::Rank => Ok(Bounds::Rank(int_arg(r.min)?, int_arg(r.max)?)),
        RangeBy::Score => match (parse_score_bound(r.min), parse_score_bound(r.max)) {
            (Some(a), Some(b)) => Ok(Bounds::Score(a, b)),
            _ => Err(score_range_err()),
        },
        RangeBy::Lex => match (parse_lex_bound(r.min), parse_lex_bound(r.max)) {
            (Some(a), Some(b)) => Ok(Bounds::Lex(a, b)),
            _ => Err(lex_range_err()),
        },
    }
}

/// Redis' clamp of a rank range to `[start, end]` inclusive in a set of `len`.
fn rank_span(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if end < 0 { len + end } else { end };
    if s < 0 {
        s = 0;
    }
    if s > e || s >= len {
        return None;
    }
    if e >= len {
        e = len - 1;
    }
    Some((s as usize, e as usize))
}

/// The members (with scores) a request selects, in reply order.
fn select(z: &ZSet, r: &RangeReq, b: &Bounds) -> Vec<(Bytes, f64)> {
    let (lo, hi) = match *b {
        Bounds::Rank(s, e) => {
            return match rank_span(s, e, z.len()) {
                None => Vec::new(),
                Some((s, e)) => owned_items(z.iter_from(s, r.rev).take(e - s + 1)),
            };
        }
        Bounds::Score(min, max) => score_span(z, min, max),
        Bounds::Lex(min, max) => lex_span(z, min, max),
    };
    let n = hi - lo;
    let (offset, count) = r.limit.unwrap_or((0, -1));
    if offset < 0 {
        return Vec::new();
    }
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    if offset >= n {
        return Vec::new();
    }
    let take = match usize::try_from(count) {
        Ok(c) => c.min(n - offset),
        Err(_) => n - offset,
    };
    let start = if r.rev {
        z.len() - hi + offset
    } else {
        lo + offset
    };
    owned_items(z.iter_from(start, r.rev).take(take))
}

fn range_generic(ctx: &mut Ctx, a: &[&[u8]], by: Option<RangeBy>, rev: Option<bool>) -> Reply {
    let r = match parse_range(a, 2, by, rev, false) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let b = match bounds(&r) {
        Ok(b) => b,
        Err(e) => return e,
    };
    match with_zset(ctx, a[1], |z| select(z, &r, &b)) {
        Err(e) => e,
        Ok(items) => items_reply(ctx, items.unwrap_or_default(), r.withscores),
    }
}

fn zrange(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    range_generic(ctx, a, None, None)
}

fn zrevrange(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    range_generic(ctx, a, Some(RangeBy::Rank), Some(true))
}

fn zrangebyscore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    range_generic(ctx, a, Some(RangeBy::Score), Some(false))
}

fn zrevrangebyscore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    range_generic(ctx, a, Some(RangeBy::Score), Some(true))
}

fn zrangebylex(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    range_generic(ctx, a, Some(RangeBy::Lex), Some(false))
}

fn zrevrangebylex(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    range_generic(ctx, a, Some(RangeBy::Lex), Some(true))
}

/// Make `dst` a sorted set of exactly `items` (distinct members), deleting what it held;
/// an empty result deletes it.
fn store_items(ctx: &mut Ctx, dst: &[u8], items: &[(Bytes, f64)]) -> Result<(), Reply> {
    let grow: usize = items.iter().map(|(m, _)| element_bytes(m.len(), 32)).sum();
    check_room(ctx.store, dst, 0, grow)?;
    if ctx.lookup(dst).is_some() {
        ctx.write(dst, |w| w.delete());
    }
    if !items.is_empty() {
        ctx.write(dst, |w| {
            for (m, s) in items {
                w.zadd(m, *s);
            }
        });
    }
    Ok(())
}

fn zrangestore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let r = match parse_range(a, 3, None, None, true) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let b = match bounds(&r) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let items = match with_zset(ctx, a[2], |z| select(z, &r, &b)) {
        Err(e) => return e,
        Ok(items) => items.unwrap_or_default(),
    };
    match store_items(ctx, a[1], &items) {
        Ok(()) => Reply::Int(items.len() as i64),
        Err(e) => e,
    }
}

fn remrange(ctx: &mut Ctx, a: &[&[u8]], by: RangeBy) -> Reply {
    let req = RangeReq {
        by,
        rev: false,
        min: a[2],
        max: a[3],
        limit: None,
        withscores: false,
    };
    let b = match bounds(&req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let members = match with_zset(ctx, a[1], |z| select(z, &req, &b)) {
        Err(e) => return e,
        Ok(None) => return Reply::Int(0),
        Ok(Some(items)) => items.into_iter().map(|(m, _)| m).collect::<Vec<_>>(),
    };
    remove_members(ctx, a[1], &members);
    Reply::Int(members.len() as i64)
}

fn zremrangebyscore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    remrange(ctx, a, RangeBy::Score)
}

fn zremrangebyrank(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    remrange(ctx, a, RangeBy::Rank)
}

fn zremrangebylex(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    remrange(ctx, a, RangeBy::Lex)
}

// ---- pops and random members ----

fn pop(ctx: &mut Ctx, a: &[&[u8]], max: bool) -> Reply {
    if a.len() > 3 {
        return syntax();
    }
    let count = match a.get(2) {
        None => None,
        Some(c) => match crate::util::parse_int(c) {
            Some(n) if n >= 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => return err("ERR value is out of range, must be positive"),
        },
    };
    let items = match with_zset(ctx, a[1], |z| {
        owned_items(z.iter_from(0, max).take(count.unwrap_or(1)))
    }) {
        Err(e) => return e,
        Ok(items) => items.unwrap_or_default(),
    };
    let members: Vec<Bytes> = items.iter().map(|(m, _)| m.clone()).collect();
    remove_members(ctx, a[1], &members);
    if count.is_none() {
        // One pair, flat in either protocol.
        let mut out = Vec::with_capacity(2);
        for (m, s) in items {
            out.push(Reply::Bulk(m));
            out.push(score_reply(ctx, s));
        }
        return Reply::Array(out);
    }
    items_reply(ctx, items, true)
}

/// `BZPOPMIN|BZPOPMAX key [key …] timeout`: the first non-empty set's lowest (highest)
/// member as `[key, member, score]`; with none, the connection waits on the keys' waiter
/// queues (see `cmd::list`), woken by a local write or state merged from another region.
fn bzpop(ctx: &mut Ctx, a: &[&[u8]], max: bool) -> Outcome {
    let keys = &a[1..a.len() - 1];
    let timeout_ms = match super::list::timeout_ms(a[a.len() - 1]) {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    for &k in keys {
        let first = match with_zset(ctx, k, |z| owned_items(z.iter_from(0, max).take(1))) {
            Err(e) => return e.into(),
            Ok(items) => items.unwrap_or_default().into_iter().next(),
        };
        if let Some((m, s)) = first {
            remove_members(ctx, k, std::slice::from_ref(&m));
            let score = score_reply(ctx, s);
            return Reply::Array(vec![Reply::Bulk(ctx.bytes(k)), Reply::Bulk(m), score]).into();
        }
    }
    Outcome::Block {
        keys: keys.iter().map(|k| ctx.bytes(k)).collect(),
        timeout_ms,
        timeout_reply: Reply::NullArray,
    }
}

fn zpopmin(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    pop(ctx, a, false)
}

fn zpopmax(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    pop(ctx, a, true)
}

fn zrandmember(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let withscores = match a.len() {
        2 | 3 => false,
        4 if a[3].eq_ignore_ascii_case(b"withscores") => true,
        _ => return syntax(),
    };
    let count = match a.get(2) {
        None => None,
        Some(c) => match crate::util::parse_int(c) {
            Some(i64::MIN) => return count_out_of_range(),
            Some(n) => Some(n),
            None => return not_int(),
        },
    };
    if let Some(n) = count {
        if withscores && n < -(i64::MAX / 2) {
            return err("ERR value is out of range");
        }
        if n < 0 && n.unsigned_abs() > RANDOM_REPLY_MAX as u64 {
            return err("ERR value is out of range, the reply would be too large (ZRANDMEMBER with a negative count answers at most 1048576 members and 256 MiB)");
        }
    }
    // Random ranks through the order index: O(log n) a member, no copy of the set.
    let Some(len) = (match with_zset(ctx, a[1], ZSet::len) {
        Err(e) => return e,
        Ok(l) => l,
    }) else {
        return if count.is_some() {
            Reply::Array(vec![])
        } else {
            Reply::Null
        };
    };
    let ranks: Vec<usize> = match count {
        None => vec![(ctx.conn.random() % len.max(1) as u64) as usize],
        Some(n) if n >= 0 => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n >= len {
                // The whole set, highest first (as Redis answers from a small set).
                (0..len).rev().collect()
            } else if n.saturating_mul(2) >= len {
                let all: Vec<usize> = (0..len).collect();
                pick_distinct(ctx, &all, n)
            } else {
                let mut seen = std::collections::HashSet::with_capacity(n);
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    let r = (ctx.conn.random() % len as u64) as usize;
                    if seen.insert(r) {
                        out.push(r);
                    }
                }
                out
            }
        }
        Some(n) => (0..n.unsigned_abs() as usize)
            .map(|_| (ctx.conn.random() % len as u64) as usize)
            .collect(),
    };
    let picked = match with_zset(ctx, a[1], |z| {
        let mut total = 0usize;
        let mut out = Vec::with_capacity(ranks.len());
        for &r in &ranks {
            if let Some((m, s)) = z.iter_from(r, false).next() {
                total += m.len() + 40;
                if total > RANDOM_REPLY_MAX_BYTES {
                    return None;
                }
                out.push((Bytes::copy_from_slice(m), s));
            }
        }
        Some(out)
    }) {
        Err(e) => return e,
        Ok(Some(Some(p))) => p,
        Ok(Some(None)) => return err("ERR value is out of range, the reply would be too large (ZRANDMEMBER with a negative count answers at most 1048576 members and 256 MiB)"),
        Ok(None) => Vec::new(),
    };
    if count.is_none() {
        return bulk_opt(picked.into_iter().next().map(|(m, _)| m));
    }
    items_reply(ctx, picked, withscores)
}

// ---- ZUNION, ZINTER, ZDIFF and their STORE forms, ZINTERCARD ----

#[derive(Copy, Clone, PartialEq)]
enum SetOp {
    Union,
    Inter,
    Diff,
}

#[derive(Copy, Clone)]
enum Aggregate {
    Sum,
    Min,
    Max,
}

/// The members and scores of a sorted set, or of a set (every score 1), at `key`.
fn scored_members(ctx: &mut Ctx, key: &[u8]) -> Result<Option<Vec<(Bytes, f64)>>, Reply> {
    match ctx.read(key) {
        None => Ok(None),
        Some(e) => match e.visible() {
            Some(Val::ZSet(z)) => Ok(Some(owned_items(z.iter()))),
            Some(Val::Set(s)) => Ok(Some(
                s.members()
                    .map(|m| (Bytes::copy_from_slice(m), 1.0))
                    .collect(),
            )),
            _ => Err(wrongtype()),
        },
    }
}

fn nan_to_zero(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x
    }
}

/// `[dst] numkeys key… [WEIGHTS w…] [AGGREGATE SUM|MIN|MAX] [WITHSCORES]`: the result in
/// order, and whether scores were asked for.
fn combine(
    ctx: &mut Ctx,
    a: &[&[u8]],
    op: SetOp,
    store: bool,
) -> Result<(Vec<(Bytes, f64)>, bool), Reply> {
    let at = if store { 2 } else { 1 };
    let n = int_arg(a[at])?;
    if n < 1 {
        let name = String::from_utf8_lossy(a[0]).to_ascii_lowercase();
        return Err(err_owned(format!(
            "ERR at least 1 input key is needed for '{name}' command"
        )));
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > a.len() - at - 1 {
        return Err(syntax());
    }
    let keys = &a[at + 1..at + 1 + n];
    let mut inputs = Vec::with_capacity(n);
    for k in keys {
        inputs.push(scored_members(ctx, k)?);
    }
    let mut weights = vec![1.0f64; n];
    let mut agg = Aggregate::Sum;
    let mut withscores = false;
    let mut j = at + 1 + n;
    while j < a.len() {
        let left = a.len() - j;
        let o = a[j];
        if op != SetOp::Diff && left > n && o.eq_ignore_ascii_case(b"weights") {
            for (w, arg) in weights.iter_mut().zip(&a[j + 1..j + 1 + n]) {
                *w = parse_score(arg).ok_or_else(|| err("ERR weight value is not a float"))?;
            }
            j += 1 + n;
        } else if op != SetOp::Diff && left >= 2 && o.eq_ignore_ascii_case(b"aggregate") {
            let v = a[j + 1];
            agg = if v.eq_ignore_ascii_case(b"sum") {
                Aggregate::Sum
            } else if v.eq_ignore_ascii_case(b"min") {
                Aggregate::Min
            } else if v.eq_ignore_ascii_case(b"max") {
                Aggregate::Max
            } else {
                return Err(syntax());
            };
            j += 2;
        } else if !store && o.eq_ignore_ascii_case(b"withscores") {
            withscores = true;
            j += 1;
        } else {
            return Err(syntax());
        }
    }
    let mut out = aggregate(&inputs, op, &weights, agg);
    out.sort_by(|x, y| {
        x.1.partial_cmp(&y.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| x.0.cmp(&y.0))
    });
    Ok((out, withscores))
}

/// The members of `op` over `inputs` (missing keys are `None`) with their aggregated,
/// weighted scores, unordered.
fn aggregate(
    inputs: &[Option<Vec<(Bytes, f64)>>],
    op: SetOp,
    weights: &[f64],
    agg: Aggregate,
) -> Vec<(Bytes, f64)> {
    let n = inputs.len();
    let fold = |acc: f64, x: f64| match agg {
        Aggregate::Sum => nan_to_zero(acc + x),
        Aggregate::Min => acc.min(x),
        Aggregate::Max => acc.max(x),
    };
    let weighted = |s: f64, w: f64| nan_to_zero(s * w);
    match op {
        SetOp::Union => {
            let mut acc: std::collections::HashMap<Bytes, f64> = std::collections::HashMap::new();
            for (input, &w) in inputs.iter().zip(weights) {
                for (m, s) in input.iter().flatten() {
                    let v = weighted(*s, w);
                    acc.entry(m.clone())
                        .and_modify(|x| *x = fold(*x, v))
                        .or_insert(v);
                }
            }
            acc.into_iter().collect()
        }
        SetOp::Inter => {
            if inputs.iter().any(Option::is_none) {
                Vec::new()
            } else {
                let maps: Vec<std::collections::HashMap<&Bytes, f64>> = inputs
                    .iter()
                    .map(|i| i.iter().flatten().map(|(m, s)| (m, *s)).collect())
                    .collect();
                let smallest = (0..n).min_by_key(|&i| maps[i].len()).unwrap_or(0);
                let mut res = Vec::new();
                'member: for m in maps[smallest].keys() {
                    let mut acc: Option<f64> = None;
                    for (i, map) in maps.iter().enumerate() {
                        let Some(&s) = map.get(*m) else {
                            continue 'member;
                        };
                        let v = weighted(s, weights[i]);
                        acc = Some(acc.map_or(v, |x| fold(x, v)));
                    }
                    res.push(((*m).clone(), acc.unwrap_or(0.0)));
                }
                res
            }
        }
        SetOp::Diff => {
            let others: Vec<std::collections::HashSet<&Bytes>> = inputs[1..]
                .iter()
                .map(|i| i.iter().flatten().map(|(m, _)| m).collect())
                .collect();
            inputs[0]
                .iter()
                .flatten()
                .filter(|(m, _)| others.iter().all(|o| !o.contains(m)))
                .cloned()
                .collect()
        }
    }
}

fn combine_reply(ctx: &mut Ctx, a: &[&[u8]], op: SetOp) -> Reply {
    match combine(ctx, a, op, false) {
        Ok((items, withscores)) => items_reply(ctx, items, withscores),
        Err(e) => e,
    }
}

fn combine_store(ctx: &mut Ctx, a: &[&[u8]], op: SetOp) -> Reply {
    let items = match combine(ctx, a, op, true) {
        Ok((items, _)) => items,
        Err(e) => return e,
    };
    match store_items(ctx, a[1], &items) {
        Ok(()) => Reply::Int(items.len() as i64),
        Err(e) => e,
    }
}

fn zunion(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    combine_reply(ctx, a, SetOp::Union)
}

fn zinter(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    combine_reply(ctx, a, SetOp::Inter)
}

fn zdiff(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    combine_reply(ctx, a, SetOp::Diff)
}

fn zunionstore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    combine_store(ctx, a, SetOp::Union)
}

fn zinterstore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    combine_store(ctx, a, SetOp::Inter)
}

fn zdiffstore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    combine_store(ctx, a, SetOp::Diff)
}

/// `ZINTERCARD numkeys key [key …] [LIMIT limit]`: the intersection's size, counting stops
/// at `limit` (0: no limit).
fn zintercard(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let n = match int_arg(a[1]) {
        Ok(n) => n,
        Err(e) => return e,
    };
    if n < 1 {
        return err("ERR at least 1 input key is needed for 'zintercard' command");
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > a.len() - 2 {
        return syntax();
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
    let mut args: Vec<&[u8]> = Vec::with_capacity(n + 2);
    args.push(b"zintercard");
    args.extend_from_slice(&a[1..2 + n]);
    match combine(ctx, &args, SetOp::Inter, false) {
        Err(e) => e,
        Ok((m, _)) if limit > 0 => Reply::Int(m.len().min(limit) as i64),
        Ok((m, _)) => Reply::Int(m.len() as i64),
    }
}

/// `ZSCAN key cursor [MATCH pattern] [COUNT count]` (see `cursor` for the order); scores
/// are bulk strings in either protocol, as Redis sends them.
fn zscan(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let args = match super::cursor::parse(&a[2..]) {
        Ok(args) => args,
        Err(e) => return e,
    };
    let page = with_zset(ctx, a[1], |z| {
        let items: Vec<(&[u8], f64)> = z.iter().collect();
        super::cursor::page(items, &args)
    });
    match page {
        Err(e) => e,
        Ok(None) => super::cursor::reply(0, Vec::new()),
        Ok(Some((next, items))) => {
            let mut out = Vec::with_capacity(items.len() * 2);
            for (m, s) in items {
                out.push(Reply::Bulk(m));
                out.push(Reply::Bulk(Bytes::from(fmt_score(s))));
            }
            super::cursor::reply(next, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_format_like_printf_17g() {
        let cases = [
            (0.1, "0.10000000000000001"),
            (1.0, "1"),
            (2.5, "2.5"),
            (-3.0, "-3"),
            (1e17, "1e+17"),
            (1e16, "10000000000000000"),
            (123456789.125, "123456789.125"),
            (1e-5, "1.0000000000000001e-05"),
            (0.0001, "0.0001"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "4.9406564584124654e-324"),
        ];
        for (d, want) in cases {
            assert_eq!(fmt_score(d), want, "{d:e}");
        }
    }

    #[test]
    fn scores_parse_like_strtod() {
        assert_eq!(parse_score(b"1.5"), Some(1.5));
        assert_eq!(parse_score(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_score(b"+Infinity"), Some(f64::INFINITY));
        assert_eq!(parse_score(b"0x10"), Some(16.0));
        assert_eq!(parse_score(b".5"), Some(0.5));
        assert!(parse_score(b"-0").is_some_and(|z| z == 0.0 && z.is_sign_positive()));
        for bad in [
            &b"nan"[..],
            b"",
            b" 1",
            b"1 ",
            b"1e400",
            b"1e-400",
            b"abc",
            b"(1",
            b"1e",
            b"--1",
        ] {
            assert_eq!(parse_score(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_score_bound(b"("), Some(ScoreBound::Excl(0.0)));
        assert_eq!(
            parse_score_bound(b"(1e400"),
            Some(ScoreBound::Excl(f64::INFINITY))
        );
        assert_eq!(parse_score_bound(b" 2"), Some(ScoreBound::Incl(2.0)));
        assert_eq!(parse_score_bound(b"nan"), None);
        assert_eq!(parse_score_bound(b"x"), None);
    }
}
