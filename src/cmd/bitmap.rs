//! Bitmaps and string extras: SETBIT, GETBIT, BITCOUNT, BITPOS, BITOP, BITFIELD(_RO), LCS.
//!
//! A bitmap is a string: every command that changes one writes the whole new value as the
//! key's LWW register, as SETRANGE does (concurrent SETBITs of different bits in two
//! regions: the later write's whole string wins; the README's conflict table says so).
//! Bit 0 is the most significant bit of byte 0, as in Redis. The bit algorithms are pure
//! functions of byte slices, tested below against naive definitions.

use super::string::get_string;
use super::*;
use crate::util::parse_int;
use std::sync::atomic::Ordering::Relaxed;

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("setbit", 4, WRITE | DENYOOM, 1, 1, 1, setbit),
        spec!("getbit", 3, READONLY | FAST, 1, 1, 1, getbit),
        spec!("bitcount", -2, READONLY, 1, 1, 1, bitcount),
        spec!("bitpos", -3, READONLY, 1, 1, 1, bitpos),
        spec!("bitop", -4, WRITE | DENYOOM | ALL_SHARDS, 2, -1, 1, bitop),
        spec!("bitfield", -2, WRITE | DENYOOM, 1, 1, 1, bitfield),
        spec!("bitfield_ro", -2, READONLY | FAST, 1, 1, 1, bitfield_ro),
        spec!("lcs", -3, READONLY, 1, 2, 1, lcs),
    ]
}

fn max_len(ctx: &Ctx) -> u64 {
    ctx.store.runtime.proto_max_bulk_len.load(Relaxed) as u64
}

fn bad_offset() -> Reply {
    err("ERR bit offset is not an integer or out of range")
}

/// A bit offset: a non-negative integer whose byte is within `proto-max-bulk-len`.
/// `hash`: BITFIELD's `#N` form (N times the field width).
fn bit_offset(ctx: &Ctx, arg: &[u8], hash_width: Option<u64>) -> Result<u64, Reply> {
    let (digits, mul) = match (hash_width, arg.first()) {
        (Some(w), Some(b'#')) => (&arg[1..], w),
        _ => (arg, 1),
    };
    let n = parse_int(digits)
        .and_then(|n| u64::try_from(n).ok())
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(bad_offset)?;
    if n >> 3 >= max_len(ctx) {
        return Err(bad_offset());
    }
    Ok(n)
}

fn get_bit(v: &[u8], bit: u64) -> u8 {
    let Some(byte) = usize::try_from(bit >> 3).ok().and_then(|i| v.get(i)) else {
        return 0;
    };
    (byte >> (7 - (bit & 7))) & 1
}

fn set_bit(v: &mut Vec<u8>, bit: u64, on: bool) {
    let i = (bit >> 3) as usize;
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    let mask = 1u8 << (7 - (bit & 7));
    if on {
        v[i] |= mask;
    } else {
        v[i] &= !mask;
    }
}

fn setbit(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let bit = match bit_offset(ctx, a[2], None) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let on = match a[3] {
        b"1" => true,
        b"0" => false,
        _ => return err("ERR bit is not an integer or out of range"),
    };
    let cur = match get_string(ctx, a[1]) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let old = cur.as_deref().map_or(0, |v| get_bit(v, bit));
    let mut v = cur.map(|c| c.to_vec()).unwrap_or_default();
    set_bit(&mut v, bit, on);
    if let Err(e) = check_room(ctx.store, a[1], 0, v.len()) {
        return e;
    }
    ctx.write(a[1], |w| w.set_str(Bytes::from(v), true));
    Reply::Int(i64::from(old))
}

fn getbit(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let bit = match bit_offset(ctx, a[2], None) {
        Ok(b) => b,
        Err(e) => return e,
    };
    match get_string(ctx, a[1]) {
        Ok(v) => Reply::Int(i64::from(v.as_deref().map_or(0, |v| get_bit(v, bit)))),
        Err(e) => e,
    }
}

/// Redis' index normalisation over `total` units: negative counts from the end, clamped;
/// `None` when the range is empty.
fn clamp_range(start: i64, end: i64, total: i64) -> Option<(i64, i64)> {
    if start < 0 && end < 0 && start > end {
        return None;
    }
    let mut s = if start < 0 { total + start } else { start };
    let mut e = if end < 0 { total + end } else { end };
    s = s.max(0);
    e = e.max(0);
    e = e.min(total - 1);
    (s <= e && total > 0).then_some((s, e))
}

/// `BYTE` (default) or `BIT`.
fn unit(arg: Option<&&[u8]>) -> Result<bool, Reply> {
    match arg {
        None => Ok(false),
        Some(u) if u.eq_ignore_ascii_case(b"byte") => Ok(false),
        Some(u) if u.eq_ignore_ascii_case(b"bit") => Ok(true),
        Some(_) => Err(syntax()),
    }
}

/// Set bits of `v` within the bit range `[s, e]` (inclusive, within `v`).
fn count_bits(v: &[u8], s: u64, e: u64) -> u64 {
    let (sb, eb) = ((s >> 3) as usize, (e >> 3) as usize);
    let mut n: u64 = v[sb..=eb].iter().map(|b| u64::from(b.count_ones())).sum();
    // Bits of the first byte before s, and of the last after e.
    let before = 0xffu8.checked_shl(8 - (s & 7) as u32).unwrap_or(0);
    let after = 0xffu8.checked_shr((e & 7) as u32 + 1).unwrap_or(0);
    n -= u64::from((v[sb] & before).count_ones());
    n -= u64::from((v[eb] & after).count_ones());
    n
}

fn bitcount(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let range = match a.len() {
        2 => None,
        4 | 5 => {
            let (Some(s), Some(e)) = (parse_int(a[2]), parse_int(a[3])) else {
                return not_int();
            };
            match unit(a.get(4)) {
                Ok(bits) => Some((s, e, bits)),
                Err(r) => return r,
            }
        }
        _ => return syntax(),
    };
    let v = match get_string(ctx, a[1]) {
        Ok(Some(v)) => v,
        Ok(None) => return Reply::Int(0),
        Err(e) => return e,
    };
    let total_bits = v.len() as i64 * 8;
    let (s, e) = match range {
        None => (0, total_bits - 1),
        Some((s, e, bits)) => {
            let total = if bits { total_bits } else { v.len() as i64 };
            match clamp_range(s, e, total) {
                None => return Reply::Int(0),
                Some((s, e)) if bits => (s, e),
                Some((s, e)) => (s * 8, e * 8 + 7),
            }
        }
    };
    if v.is_empty() {
        return Reply::Int(0);
    }
    Reply::Int(count_bits(&v, s as u64, e as u64) as i64)
}

/// The first bit equal to `want` within the bit range `[s, e]` of `v`.
fn find_bit(v: &[u8], want: u8, s: u64, e: u64) -> Option<u64> {
    let mut bit = s;
    while bit <= e {
        // Whole bytes that cannot hold the bit are skipped at once.
        if bit & 7 == 0 && bit + 7 <= e {
            let b = v[(bit >> 3) as usize];
            let skip = if want == 1 { 0x00 } else { 0xff };
            if b == skip {
                bit += 8;
                continue;
            }
        }
        if get_bit(v, bit) == want {
            return Some(bit);
        }
        bit += 1;
    }
    None
}

fn bitpos(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let want = match a[2] {
        b"1" => 1u8,
        b"0" => 0u8,
        _ => return err("ERR The bit argument must be 1 or 0."),
    };
    if a.len() > 6 {
        return syntax();
    }
    let start = match a.get(3).map(|x| parse_int(x)) {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => return not_int(),
    };
    let end = match a.get(4).map(|x| parse_int(x)) {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => return not_int(),
    };
    let bits = match unit(a.get(5)) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let v = match get_string(ctx, a[1]) {
        Ok(Some(v)) => v,
        // A missing key is an empty string: no 1 bit, its first 0 at bit 0.
        Ok(None) => return Reply::Int(if want == 1 { -1 } else { 0 }),
        Err(e) => return e,
    };
    let total = if bits {
        v.len() as i64 * 8
    } else {
        v.len() as i64
    };
    let Some((s, e)) = clamp_range(start.unwrap_or(0), end.unwrap_or(-1), total) else {
        return Reply::Int(-1);
    };
    let (s, e) = if bits { (s, e) } else { (s * 8, e * 8 + 7) };
    match find_bit(&v, want, s as u64, e as u64) {
        Some(b) => Reply::Int(b as i64),
        // Looking for a 0 with no end given: the string is taken as padded with zeros.
        None if want == 0 && end.is_none() => Reply::Int(e + 1),
        None => Reply::Int(-1),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BitOp {
    And,
    Or,
    Xor,
    Not,
}

/// The result of `op` over `srcs` (missing keys are empty strings), as long as the longest.
fn bit_op(op: BitOp, srcs: &[Bytes]) -> Vec<u8> {
    let len = srcs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![0u8; len];
    for (i, o) in out.iter_mut().enumerate() {
        let byte = |s: &Bytes| s.get(i).copied().unwrap_or(0);
        *o = match op {
            BitOp::Not => !byte(&srcs[0]),
            BitOp::And => srcs.iter().map(byte).fold(0xff, |x, y| x & y),
            BitOp::Or => srcs.iter().map(byte).fold(0, |x, y| x | y),
            BitOp::Xor => srcs.iter().map(byte).fold(0, |x, y| x ^ y),
        };
    }
    out
}

fn bitop(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let op = match a[1] {
        o if o.eq_ignore_ascii_case(b"and") => BitOp::And,
        o if o.eq_ignore_ascii_case(b"or") => BitOp::Or,
        o if o.eq_ignore_ascii_case(b"xor") => BitOp::Xor,
        o if o.eq_ignore_ascii_case(b"not") => BitOp::Not,
        _ => return syntax(),
    };
    if op == BitOp::Not && a.len() != 4 {
        return err("ERR BITOP NOT must be called with a single source key.");
    }
    let mut srcs = Vec::with_capacity(a.len() - 3);
    for k in &a[3..] {
        match get_string(ctx, k) {
            Ok(v) => srcs.push(v.unwrap_or_default()),
            Err(e) => return e,
        }
    }
    let out = bit_op(op, &srcs);
    let n = out.len();
    if n == 0 {
        if ctx.lookup(a[2]).is_some() {
            ctx.write(a[2], |w| w.delete());
        }
    } else {
        if let Err(e) = check_room(ctx.store, a[2], 0, n) {
            return e;
        }
        ctx.write(a[2], |w| w.set_str(Bytes::from(out), false));
    }
    Reply::Int(n as i64)
}

/// A BITFIELD field type: `i1`..`i64` or `u1`..`u63`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FieldType {
    signed: bool,
    bits: u32,
}

fn field_type(arg: &[u8]) -> Option<FieldType> {
    let (signed, digits) = match arg.split_first()? {
        (b'i' | b'I', d) => (true, d),
        (b'u' | b'U', d) => (false, d),
        _ => return None,
    };
    let bits = u32::try_from(parse_int(digits)?).ok()?;
    let max = if signed { 64 } else { 63 };
    (1..=max)
        .contains(&bits)
        .then_some(FieldType { signed, bits })
}

/// The `bits`-wide unsigned field at bit `off` of `v` (bits past the end read 0).
fn read_field(v: &[u8], off: u64, bits: u32) -> u64 {
    let mut x = 0u64;
    for i in 0..u64::from(bits) {
        x = (x << 1) | u64::from(get_bit(v, off + i));
    }
    x
}

fn write_field(v: &mut Vec<u8>, off: u64, bits: u32, x: u64) {
    for i in 0..u64::from(bits) {
        let b = (x >> (u64::from(bits) - 1 - i)) & 1;
        set_bit(v, off + i, b == 1);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Overflow {
    Wrap,
    Sat,
    Fail,
}

impl FieldType {
    /// The field's raw bits read as this type's value.
    fn value(self, raw: u64) -> i64 {
        if self.signed && self.bits < 64 && (raw >> (self.bits - 1)) & 1 == 1 {
            // Sign-extend.
            (raw | (u64::MAX << self.bits)) as i64
        } else {
            raw as i64
        }
    }

    fn range(self) -> (i128, i128) {
        if self.signed {
            (-(1i128 << (self.bits - 1)), (1i128 << (self.bits - 1)) - 1)
        } else {
            (0, (1i128 << self.bits) - 1)
        }
    }

    /// `x` made to fit under `ow`: `None` when it does not fit and `ow` is FAIL.
    fn fit(self, x: i128, ow: Overflow) -> Option<i64> {
        let (min, max) = self.range();
        if (min..=max).contains(&x) {
            return Some(x as i64);
        }
        match ow {
            Overflow::Fail => None,
            Overflow::Sat => Some(if x < min { min } else { max } as i64),
            Overflow::Wrap => {
                let m = 1i128 << self.bits;
                let mut w = x.rem_euclid(m);
                if self.signed && w > max {
                    w -= m;
                }
                Some(w as i64)
            }
        }
    }

    fn raw(self, x: i64) -> u64 {
        let mask = if self.bits == 64 {
            u64::MAX
        } else {
            (1u64 << self.bits) - 1
        };
        (x as u64) & mask
    }
}

enum FieldOp {
    Get(FieldType, u64),
    Set(FieldType, u64, i64, Overflow),
    Incr(FieldType, u64, i64, Overflow),
}

fn bad_type() -> Reply {
    err("ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.")
}

fn parse_field_ops(ctx: &Ctx, a: &[&[u8]], read_only: bool) -> Result<Vec<FieldOp>, Reply> {
    let mut ops = Vec::new();
    let mut ow = Overflow::Wrap;
    let mut i = 2;
    while i < a.len() {
        let sub = a[i];
        let need = |n: usize| {
            if i + n < a.len() {
                Ok(())
            } else {
                Err(syntax())
            }
        };
        if sub.eq_ignore_ascii_case(b"get") {
            need(2)?;
            let f = field_type(a[i + 1]).ok_or_else(bad_type)?;
            let off = bit_offset(ctx, a[i + 2], Some(u64::from(f.bits)))?;
            ops.push(FieldOp::Get(f, off));
            i += 3;
        } else if sub.eq_ignore_ascii_case(b"set") || sub.eq_ignore_ascii_case(b"incrby") {
            if read_only {
                return Err(err("ERR BITFIELD_RO only supports the GET subcommand"));
            }
            need(3)?;
            let f = field_type(a[i + 1]).ok_or_else(bad_type)?;
            let off = bit_offset(ctx, a[i + 2], Some(u64::from(f.bits)))?;
            let n = parse_int(a[i + 3]).ok_or_else(not_int)?;
            ops.push(if sub.eq_ignore_ascii_case(b"set") {
                FieldOp::Set(f, off, n, ow)
            } else {
                FieldOp::Incr(f, off, n, ow)
            });
            i += 4;
        } else if sub.eq_ignore_ascii_case(b"overflow") {
            if read_only {
                return Err(err("ERR BITFIELD_RO only supports the GET subcommand"));
            }
            need(1)?;
            ow = match a[i + 1] {
                o if o.eq_ignore_ascii_case(b"wrap") => Overflow::Wrap,
                o if o.eq_ignore_ascii_case(b"sat") => Overflow::Sat,
                o if o.eq_ignore_ascii_case(b"fail") => Overflow::Fail,
                _ => return Err(err("ERR Invalid OVERFLOW type specified")),
            };
            i += 2;
        } else {
            return Err(syntax());
        }
    }
    Ok(ops)
}

/// Runs `ops` on `v`; the replies, and whether `v` changed.
fn run_field_ops(v: &mut Vec<u8>, ops: &[FieldOp]) -> (Vec<Reply>, bool) {
    let mut out = Vec::with_capacity(ops.len());
    let mut changed = false;
    for op in ops {
        match *op {
            FieldOp::Get(f, off) => {
                out.push(Reply::Int(f.value(read_field(v, off, f.bits))));
            }
            FieldOp::Set(f, off, x, ow) => {
                let old = f.value(read_field(v, off, f.bits));
                match f.fit(i128::from(x), ow) {
                    Some(new) => {
                        write_field(v, off, f.bits, f.raw(new));
                        changed = true;
                        out.push(Reply::Int(old));
                    }
                    None => out.push(Reply::Null),
                }
            }
            FieldOp::Incr(f, off, by, ow) => {
                let old = f.value(read_field(v, off, f.bits));
                match f.fit(i128::from(old) + i128::from(by), ow) {
                    Some(new) => {
                        write_field(v, off, f.bits, f.raw(new));
                        changed = true;
                        out.push(Reply::Int(new));
                    }
                    None => out.push(Reply::Null),
                }
            }
        }
    }
    (out, changed)
}

fn bitfield_generic(ctx: &mut Ctx, a: &[&[u8]], read_only: bool) -> Reply {
    let ops = match parse_field_ops(ctx, a, read_only) {
        Ok(ops) => ops,
        Err(e) => return e,
    };
    let cur = match get_string(ctx, a[1]) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut v = cur.map(|c| c.to_vec()).unwrap_or_default();
    let (replies, changed) = run_field_ops(&mut v, &ops);
    if changed {
        if let Err(e) = check_room(ctx.store, a[1], 0, v.len()) {
            return e;
        }
        ctx.write(a[1], |w| w.set_str(Bytes::from(v), true));
    }
    Reply::Array(replies)
}

fn bitfield(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    bitfield_generic(ctx, a, false)
}

fn bitfield_ro(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    bitfield_generic(ctx, a, true)
}

/// One LCS match: `a[a0..=a1]` equals `b[b0..=b1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Match {
    a: (usize, usize),
    b: (usize, usize),
}

/// The longest common subsequence of `a` and `b`, and its matching ranges (from the end of
/// the strings backwards, as Redis lists them).
fn lcs_of(a: &[u8], b: &[u8]) -> (Vec<u8>, Vec<Match>) {
    let w = b.len() + 1;
    let mut dp = vec![0u32; (a.len() + 1) * w];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            dp[i * w + j] = if a[i - 1] == b[j - 1] {
                dp[(i - 1) * w + j - 1] + 1
            } else {
                dp[(i - 1) * w + j].max(dp[i * w + j - 1])
            };
        }
    }
    let len = dp[a.len() * w + b.len()] as usize;
    let mut out = vec![0u8; len];
    let mut matches = Vec::new();
    let (mut i, mut j, mut k) = (a.len(), b.len(), len);
    let mut cur: Option<Match> = None;
    while i > 0 && j > 0 {
        if a[i - 1] == b[j - 1] {
            k -= 1;
            out[k] = a[i - 1];
            cur = match cur {
                Some(m) if m.a.0 == i && m.b.0 == j => Some(Match {
                    a: (i - 1, m.a.1),
                    b: (j - 1, m.b.1),
                }),
                Some(m) => {
                    matches.push(m);
                    Some(Match {
                        a: (i - 1, i - 1),
                        b: (j - 1, j - 1),
                    })
                }
                None => Some(Match {
                    a: (i - 1, i - 1),
                    b: (j - 1, j - 1),
                }),
            };
            i -= 1;
            j -= 1;
        } else {
            if dp[(i - 1) * w + j] > dp[i * w + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            if let Some(m) = cur.take() {
                matches.push(m);
            }
        }
    }
    if let Some(m) = cur {
        matches.push(m);
    }
    (out, matches)
}

fn lcs(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (mut want_len, mut idx, mut with_len) = (false, false, false);
    let mut min_len: i64 = 0;
    let mut i = 3;
    while i < a.len() {
        let o = a[i];
        if o.eq_ignore_ascii_case(b"idx") {
            idx = true;
        } else if o.eq_ignore_ascii_case(b"len") {
            want_len = true;
        } else if o.eq_ignore_ascii_case(b"withmatchlen") {
            with_len = true;
        } else if o.eq_ignore_ascii_case(b"minmatchlen") && i + 1 < a.len() {
            let Some(n) = parse_int(a[i + 1]) else {
                return not_int();
            };
            min_len = n.max(0);
            i += 1;
        } else {
            return syntax();
        }
        i += 1;
    }
    if want_len && idx {
        return err("ERR If you want both the length and indexes, please just use IDX.");
    }
    let mut strs = [Bytes::new(), Bytes::new()];
    for (s, k) in strs.iter_mut().zip([a[1], a[2]]) {
        match get_string(ctx, k) {
            Ok(v) => *s = v.unwrap_or_default(),
            Err(_) => return err("ERR The specified keys must contain string values"),
        }
    }
    let [x, y] = &strs;
    // The table is (|a|+1) x (|b|+1) 32-bit cells: bounded like any value.
    let cells = (x.len() as u64 + 1).saturating_mul(y.len() as u64 + 1);
    if cells.saturating_mul(4) > max_len(ctx) {
        return err("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len");
    }
    let (common, matches) = lcs_of(x, y);
    if want_len {
        return Reply::Int(common.len() as i64);
    }
    if !idx {
        return bulk(Bytes::from(common));
    }
    let pair =
        |(s, e): (usize, usize)| Reply::Array(vec![Reply::Int(s as i64), Reply::Int(e as i64)]);
    let list = matches
        .iter()
        .filter(|m| (m.a.1 - m.a.0 + 1) as i64 >= min_len)
        .map(|m| {
            let mut r = vec![pair(m.a), pair(m.b)];
            if with_len {
                r.push(Reply::Int((m.a.1 - m.a.0 + 1) as i64));
            }
            Reply::Array(r)
        })
        .collect();
    let s = |t: &'static str| Reply::Bulk(Bytes::from_static(t.as_bytes()));
    Reply::Map(vec![
        (s("matches"), Reply::Array(list)),
        (s("len"), Reply::Int(common.len() as i64)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn naive_count(v: &[u8], s: u64, e: u64) -> u64 {
        (s..=e).map(|b| u64::from(get_bit(v, b))).sum()
    }

    #[test]
    fn bit_counts_and_searches_match_their_definitions() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.random_range(1..12);
            let v: Vec<u8> = (0..len)
                .map(|_| match rng.random_range(0..3) {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.random(),
                })
                .collect();
            let total = len as u64 * 8;
            let s = rng.random_range(0..total);
            let e = rng.random_range(s..total);
            assert_eq!(count_bits(&v, s, e), naive_count(&v, s, e), "{v:?} {s} {e}");
            for want in [0, 1] {
                let naive = (s..=e).find(|&b| get_bit(&v, b) == want);
                assert_eq!(find_bit(&v, want, s, e), naive, "{v:?} {want} {s} {e}");
            }
        }
    }

    #[test]
    fn ranges_follow_redis() {
        assert_eq!(clamp_range(0, -1, 4), Some((0, 3)));
        assert_eq!(clamp_range(-2, -1, 4), Some((2, 3)));
        assert_eq!(clamp_range(-1, -2, 4), None);
        assert_eq!(clamp_range(2, 100, 4), Some((2, 3)));
        assert_eq!(clamp_range(5, 10, 4), None);
        assert_eq!(clamp_range(-100, 0, 4), Some((0, 0)));
        assert_eq!(clamp_range(0, -1, 0), None);
    }

    #[test]
    fn fields_read_write_and_overflow_as_redis() {
        let u8f = FieldType {
            signed: false,
            bits: 8,
        };
        let i8f = FieldType {
            signed: true,
            bits: 8,
        };
        let mut v = Vec::new();
        write_field(&mut v, 4, 8, 0xab);
        assert_eq!(v, vec![0x0a, 0xb0]);
        assert_eq!(read_field(&v, 4, 8), 0xab);
        assert_eq!(i8f.value(0xff), -1);
        assert_eq!(u8f.value(0xff), 255);
        assert_eq!(u8f.fit(256, Overflow::Wrap), Some(0));
        assert_eq!(u8f.fit(300, Overflow::Sat), Some(255));
        assert_eq!(u8f.fit(-1, Overflow::Sat), Some(0));
        assert_eq!(u8f.fit(256, Overflow::Fail), None);
        assert_eq!(i8f.fit(128, Overflow::Wrap), Some(-128));
        assert_eq!(i8f.fit(-129, Overflow::Wrap), Some(127));
        assert_eq!(i8f.fit(1000, Overflow::Sat), Some(127));
        let i64f = FieldType {
            signed: true,
            bits: 64,
        };
        assert_eq!(
            i64f.fit(i128::from(i64::MAX) + 1, Overflow::Wrap),
            Some(i64::MIN)
        );
        assert_eq!(i64f.value(i64f.raw(-5)), -5);
        assert_eq!(field_type(b"u64"), None);
        assert_eq!(field_type(b"i0"), None);
        assert_eq!(
            field_type(b"i64"),
            Some(FieldType {
                signed: true,
                bits: 64
            })
        );
        // INCRBY u2 100 1 with WRAP: 0 1 2 3 0 ...
        let mut v = Vec::new();
        let u2 = FieldType {
            signed: false,
            bits: 2,
        };
        let ops = [FieldOp::Incr(u2, 100, 1, Overflow::Wrap)];
        let got: Vec<Reply> = (0..5).flat_map(|_| run_field_ops(&mut v, &ops).0).collect();
        assert_eq!(
            got,
            [1, 2, 3, 0, 1].map(Reply::Int).to_vec(),
            "Redis' documented example"
        );
    }

    #[test]
    fn lcs_matches_redis_documentation() {
        // From Redis' LCS documentation: ohmytext / mynewtext.
        let (s, m) = lcs_of(b"ohmytext", b"mynewtext");
        assert_eq!(s, b"mytext");
        assert_eq!(
            m,
            vec![
                Match {
                    a: (4, 7),
                    b: (5, 8)
                },
                Match {
                    a: (2, 3),
                    b: (0, 1)
                },
            ]
        );
        assert_eq!(lcs_of(b"", b"abc").0, b"");
    }

    #[test]
    fn bitop_pads_with_zeros() {
        let a = Bytes::from_static(&[0xf0, 0x0f]);
        let b = Bytes::from_static(&[0xff]);
        assert_eq!(
            bit_op(BitOp::And, &[a.clone(), b.clone()]),
            vec![0xf0, 0x00]
        );
        assert_eq!(bit_op(BitOp::Or, &[a.clone(), b.clone()]), vec![0xff, 0x0f]);
        assert_eq!(bit_op(BitOp::Xor, &[a.clone(), b]), vec![0x0f, 0x0f]);
        assert_eq!(bit_op(BitOp::Not, &[a]), vec![0x0f, 0xf0]);
    }
}
