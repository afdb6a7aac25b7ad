//! DUMP and RESTORE with meridian's own payload: the key's visible value (not its CRDT
//! history: a RESTORE is a new local write, stamped now, like any write), then a format
//! version and a CRC-64 (Redis' polynomial), as Redis' payload ends with its RDB version
//! and checksum. A payload from Redis itself, or a damaged one, is refused with Redis'
//! error; its contents are only decoded once the checksum holds.

use super::*;
use meridian_crdt::Val;
use serde::{Deserialize, Serialize};

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("dump", 2, READONLY, 1, 1, 1, dump),
        spec!("restore", -4, WRITE | DENYOOM, 1, 1, 1, restore),
    ]
}

/// Bumped on any change of [`Payload`]'s encoding.
const FORMAT_VERSION: u16 = 1;
/// After the version: tells our payloads from Redis' RDB ones (whose version is < 0x4d00).
const MAGIC: u8 = b'M';
const FOOTER_BYTES: usize = 2 + 1 + 8;
static CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_REDIS);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Payload {
    Str(Vec<u8>),
    Set(Vec<Vec<u8>>),
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    List(Vec<Vec<u8>>),
    /// Members with their scores' bits, in order.
    ZSet(Vec<(Vec<u8>, u64)>),
}

fn encode(p: &Payload) -> Option<Vec<u8>> {
    let mut out = postcard::to_stdvec(p).ok()?;
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(MAGIC);
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Some(out)
}

enum DecodeError {
    /// Wrong version, magic or checksum.
    Footer,
    /// A valid footer around a body that does not decode.
    Body,
}

fn decode(b: &[u8]) -> Result<Payload, DecodeError> {
    let body_len = b
        .len()
        .checked_sub(FOOTER_BYTES)
        .ok_or(DecodeError::Footer)?;
    let (signed, crc) = b.split_at(b.len() - 8);
    let mut want = [0u8; 8];
    want.copy_from_slice(crc);
    if CRC64.checksum(signed) != u64::from_le_bytes(want)
        || signed[body_len..body_len + 2] != FORMAT_VERSION.to_le_bytes()
        || signed[body_len + 2] != MAGIC
    {
        return Err(DecodeError::Footer);
    }
    match postcard::from_bytes::<Payload>(&signed[..body_len]) {
        Ok(p) => Ok(p),
        Err(_) => Err(DecodeError::Body),
    }
}

fn dump(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(entry) = ctx.lookup(a[1]).map(Cow::into_owned) else {
        return Reply::Null;
    };
    let payload = match entry.visible() {
        Some(Val::Str(s)) => Payload::Str(s.bytes().unwrap_or_default().to_vec()),
        Some(Val::Set(s)) => Payload::Set(s.members().map(<[u8]>::to_vec).collect()),
        Some(Val::Hash(h)) => Payload::Hash(
            h.fields()
                .map(|(f, v)| (f.to_vec(), v.bytes().unwrap_or_default().to_vec()))
                .collect(),
        ),
        Some(Val::List(l)) => Payload::List(l.values().map(<[u8]>::to_vec).collect()),
        Some(Val::ZSet(z)) => {
            Payload::ZSet(z.iter().map(|(m, s)| (m.to_vec(), s.to_bits())).collect())
        }
        None => return Reply::Null,
    };
    match encode(&payload) {
        Some(b) => bulk(Bytes::from(b)),
        None => err("ERR DUMP payload could not be encoded"),
    }
}

/// `RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]` (IDLETIME and FREQ
/// are checked and accepted; access tracking starts afresh).
fn restore(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let (mut replace, mut abs) = (false, false);
    let (mut idle, mut freq) = (false, false);
    let mut i = 4;
    while i < a.len() {
        let o = a[i];
        if o.eq_ignore_ascii_case(b"replace") {
            replace = true;
        } else if o.eq_ignore_ascii_case(b"absttl") {
            abs = true;
        } else if o.eq_ignore_ascii_case(b"idletime") && i + 1 < a.len() && !freq {
            match crate::util::parse_int(a[i + 1]) {
                Some(n) if n >= 0 => idle = true,
                Some(_) => return err("ERR Invalid IDLETIME value, must be >= 0"),
                None => return not_int(),
            }
            i += 1;
        } else if o.eq_ignore_ascii_case(b"freq") && i + 1 < a.len() && !idle {
            match crate::util::parse_int(a[i + 1]) {
                Some(n) if (0..=255).contains(&n) => freq = true,
                Some(_) => return err("ERR Invalid FREQ value, must be >= 0 and <= 255"),
                None => return not_int(),
            }
            i += 1;
        } else {
            return syntax();
        }
        i += 1;
    }
    let Some(ttl) = crate::util::parse_int(a[2]) else {
        return not_int();
    };
    if ttl < 0 {
        return err("ERR Invalid TTL value, must be >= 0");
    }
    let key = a[1];
    let exists = ctx.lookup(key).is_some();
    if exists && !replace {
        return err("BUSYKEY Target key name already exists.");
    }
    let payload = match decode(a[3]) {
        Ok(p) => p,
        Err(DecodeError::Footer) => return err("ERR DUMP payload version or checksum are wrong"),
        Err(DecodeError::Body) => return err("ERR Bad data format"),
    };
    let now = ctx.now_ms;
    let deadline = match (ttl, abs) {
        (0, _) => None,
        (t, true) => Some(t as u64),
        (t, false) => Some(now.saturating_add(t as u64)),
    };
    let size = match &payload {
        Payload::Str(v) => v.len(),
        Payload::Set(ms) => ms.iter().map(|m| element_bytes(m.len(), 0)).sum(),
        Payload::Hash(fs) => fs
            .iter()
            .map(|(f, v)| element_bytes(f.len(), v.len() + 16))
            .sum(),
        Payload::List(vs) => vs.iter().map(|v| v.len() + 8).sum(),
        Payload::ZSet(ms) => {
            // A score that is not a number would be refused by ZADD: so here.
            if ms.iter().any(|(_, s)| f64::from_bits(*s).is_nan()) {
                return err("ERR Bad data format");
            }
            ms.iter().map(|(m, _)| element_bytes(m.len(), 8)).sum()
        }
    };
    if let Err(e) = check_room(ctx.store, key, 0, size) {
        return e;
    }
    if deadline.is_some_and(|d| d <= now) {
        // Already expired: as Redis, the key is deleted rather than created.
        if exists {
            ctx.write(key, |w| w.delete());
        }
        return ok();
    }
    if exists {
        ctx.write(key, |w| w.delete());
    }
    ctx.write(key, |w| {
        match &payload {
            Payload::Str(v) => w.set_str(Bytes::copy_from_slice(v), false),
            Payload::Set(ms) => {
                for m in ms {
                    w.sadd(m);
                }
            }
            Payload::Hash(fs) => {
                for (f, v) in fs {
                    let v = Bytes::copy_from_slice(v);
                    w.hash_update(f, |fs, stamp| fs.set(stamp, v));
                }
            }
            Payload::List(vs) => {
                let refs: Vec<&[u8]> = vs.iter().map(Vec::as_slice).collect();
                w.list_push(false, &refs);
            }
            Payload::ZSet(ms) => {
                for (m, s) in ms {
                    w.zadd(m, f64::from_bits(*s));
                }
            }
        }
        if deadline.is_some() {
            w.set_deadline(deadline);
        }
    });
    ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_damage_is_detected() {
        let p = Payload::Hash(vec![(b"f".to_vec(), b"v".to_vec())]);
        let b = encode(&p).expect("encodes");
        assert!(matches!(decode(&b), Ok(q) if q == p));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(decode(&d).is_err(), "byte {i} flipped");
        }
        assert!(decode(&b[..5]).is_err());
        assert!(decode(b"").is_err());
    }
}
