//! Redis strings: an LWW register plus optional PN-counter contributions.
//!
//! A Redis string is both a byte value (`SET`, `APPEND`) and a counter (`INCR`). meridian keeps
//! both halves: the register holds the last written bytes, ordered by [`Stamp`] (HLC, region);
//! a counter contribution is `(hlc, net)` — only its region writes it, so its own HLC orders
//! it — plus the part of it a reset (`SET`/`DEL`) observed, `(obs_hlc, obs_net)`.
//! The visible integer is `base + Σ(net − obs_net)` where `base` is the register's integer value
//! (0 when absent): a `SET` or `DEL` resets exactly the increments it saw, and concurrent
//! increments elsewhere survive.
//!
//! A contribution is identified by `(region, incarnation)`. A region adds to a contribution
//! only while it holds that contribution's latest state, which only it can have (it is its
//! sole writer): [`Contrib::own`], a local flag, says this replica opened or extended it and
//! has held it since. Whenever a region no longer holds its own latest state for a key —
//! the key was evicted, expired and reclaimed, its tombstone collected, the process restarted
//! empty, the key moved in from another node, a replica was promoted — its next increment
//! opens a *new* incarnation (the write's HLC) instead of restarting the old one from zero:
//! the old incarnation's increments stay counted wherever they are held, and a reset's
//! observation of the old one does not subtract from the new one. Incarnations of one region
//! are summed like those of different regions.

use crate::hlc::{Hlc, RegionId, Stamp};
use crate::CrdtError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Last-writer-wins register. `value == None` means removed (at the observed `stamp`) or never
/// written (`Stamp::ZERO`). `version` is the source version a versioned fill
/// (`SET … VERSION n`) carried, `0` for plain writes; it travels with the value so an
/// invalidation floor hides a stale fill wherever it lands (see `Entry::floor`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Register {
    pub stamp: Stamp,
    pub value: Option<Bytes>,
    pub version: u64,
}

impl Register {
    /// Later stamp wins; for the same stamp, the removal wins (it observed that write).
    pub fn merge(&mut self, other: &Register) -> bool {
        let take = other.stamp > self.stamp
            || (other.stamp == self.stamp && self.value.is_some() && other.value.is_none());
        if take {
            *self = other.clone();
        }
        take
    }
}

/// One incarnation of a region's counter contribution and the part of it a reset has
/// observed.
#[derive(Copy, Clone, Debug, Serialize, Deserialize)]
pub struct Contrib {
    pub region: RegionId,
    /// The HLC of the write that opened this incarnation (see the module doc).
    pub inc: Hlc,
    pub hlc: Hlc,
    pub net: i64,
    pub obs_hlc: Hlc,
    pub obs_net: i64,
    /// Local, never shipped, not part of equality or digests: this replica opened or extended
    /// this contribution itself (it is of this replica's region) and has held it ever since,
    /// so it holds its latest state and may add to it. State that arrives by a merge never
    /// has it.
    #[serde(skip)]
    pub own: bool,
}

impl Contrib {
    /// Everything but the local [`Contrib::own`]: what equality and hashing see.
    fn shared(&self) -> (RegionId, Hlc, Hlc, i64, Hlc, i64) {
        (
            self.region,
            self.inc,
            self.hlc,
            self.net,
            self.obs_hlc,
            self.obs_net,
        )
    }
}

impl PartialEq for Contrib {
    fn eq(&self, o: &Contrib) -> bool {
        self.shared() == o.shared()
    }
}
impl Eq for Contrib {}

impl std::hash::Hash for Contrib {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.shared().hash(h)
    }
}

impl Contrib {
    /// The contribution's identity and sort key.
    pub fn id(&self) -> (RegionId, Hlc) {
        (self.region, self.inc)
    }

    /// Not fully observed by a reset.
    pub fn is_live(&self) -> bool {
        self.hlc > self.obs_hlc
    }

    fn unobserved(&self) -> i128 {
        i128::from(self.net) - i128::from(self.obs_net)
    }

    fn merge(&mut self, other: &Contrib) -> bool {
        let mut changed = false;
        if (other.hlc, other.net) > (self.hlc, self.net) {
            self.hlc = other.hlc;
            self.net = other.net;
            changed = true;
        }
        if (other.obs_hlc, other.obs_net) > (self.obs_hlc, self.obs_net) {
            self.obs_hlc = other.obs_hlc;
            self.obs_net = other.obs_net;
            changed = true;
        }
        changed
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Str {
    pub reg: Register,
    /// Sorted by `(region, incarnation)`, at most one each.
    pub ctr: Vec<Contrib>,
}

/// How a string reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrValue {
    Bytes(Bytes),
    Int(i64),
}

/// The incarnation a region's new counter contribution takes: the write's HLC, but above
/// every incarnation of that region seen here (`incs`; a restart whose clock is behind its
/// own past must not reuse one). Strings' and sorted-set scores' contributions alike.
pub(crate) fn new_incarnation(incs: impl Iterator<Item = Hlc>, at: Hlc) -> Hlc {
    match incs.max() {
        Some(n) if n >= at => Hlc(n.0.saturating_add(1)),
        _ => at,
    }
}

impl Str {
    pub fn is_alive(&self) -> bool {
        self.reg.value.is_some() || self.ctr.iter().any(Contrib::is_live)
    }

    fn unobserved_sum(&self) -> i128 {
        self.ctr.iter().map(Contrib::unobserved).sum()
    }

    fn has_live_counter(&self) -> bool {
        self.ctr.iter().any(Contrib::is_live)
    }

    /// The visible value. A non-numeric register hides concurrent increments (they are kept,
    /// so every region shows the same thing). A sum beyond i64 saturates (documented rule).
    pub fn value(&self) -> Option<StrValue> {
        if !self.has_live_counter() {
            return self.reg.value.clone().map(StrValue::Bytes);
        }
        let base = match &self.reg.value {
            None => 0,
            Some(b) => match parse_i64(b) {
                Some(n) => n,
                None => return Some(StrValue::Bytes(b.clone())),
            },
        };
        let sum = i128::from(base) + self.unobserved_sum();
        Some(StrValue::Int(
            sum.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
        ))
    }

    /// The visible value as bytes (integers formatted in decimal).
    pub fn bytes(&self) -> Option<Bytes> {
        match self.value()? {
            StrValue::Bytes(b) => Some(b),
            StrValue::Int(n) => Some(Bytes::from(n.to_string())),
        }
    }

    /// Length of the visible value without allocating for the common (no counter) case.
    pub fn len(&self) -> usize {
        match self.value() {
            None => 0,
            Some(StrValue::Bytes(b)) => b.len(),
            Some(StrValue::Int(n)) => n.to_string().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reset_counters(&mut self) {
        for c in self.ctr.iter_mut() {
            c.obs_hlc = c.hlc;
            c.obs_net = c.net;
        }
    }

    /// `SET`: the register takes the value and every observed increment is reset.
    pub fn set(&mut self, stamp: Stamp, value: Bytes) {
        self.set_versioned(stamp, value, 0);
    }

    /// `SET … VERSION n`: like [`Str::set`], remembering the source version of the value.
    pub fn set_versioned(&mut self, stamp: Stamp, value: Bytes, version: u64) {
        debug_assert!(stamp > self.reg.stamp);
        self.reg = Register {
            stamp,
            value: Some(value),
            version,
        };
        self.reset_counters();
    }

    /// `DEL`: observed remove of the register and of every increment seen.
    pub fn remove(&mut self) -> bool {
        let was = self.is_alive();
        self.reg.value = None;
        self.reg.version = 0;
        self.reset_counters();
        was
    }

    /// Current integer value for `INCR` family (absent = 0).
    pub fn integer(&self) -> Result<i64, CrdtError> {
        match self.value() {
            None => Ok(0),
            Some(StrValue::Int(n)) => Ok(n),
            Some(StrValue::Bytes(b)) => parse_i64(&b).ok_or(CrdtError::NotInteger),
        }
    }

    /// The exact integer value (absent = 0), before the display saturation of [`value`].
    ///
    /// [`value`]: Str::value
    fn exact_integer(&self) -> Result<i128, CrdtError> {
        let base = match &self.reg.value {
            None => 0,
            Some(b) => parse_i64(b).ok_or(CrdtError::NotInteger)?,
        };
        if !self.has_live_counter() {
            return Ok(i128::from(base));
        }
        Ok(i128::from(base) + self.unobserved_sum())
    }

    /// `INCRBY`: adds to this region's contribution and returns the new value. Refused
    /// (state unchanged) when the exact result or the region's cumulative contribution would
    /// leave i64 — so after concurrent increments saturated the sum, only increments that
    /// bring it back in range succeed, and a reply is always the value then read.
    pub fn incr_by(&mut self, stamp: Stamp, by: i64) -> Result<i64, CrdtError> {
        let current = self.exact_integer()?;
        let result = i64::try_from(current + i128::from(by)).map_err(|_| CrdtError::Overflow)?;
        // The incarnation this replica holds whole, if any (at most one per region: a new
        // one is opened only when none is held).
        match self
            .ctr
            .iter()
            .position(|c| c.own && c.region == stamp.region)
        {
            Some(i) => {
                let c = &mut self.ctr[i];
                debug_assert!(stamp.hlc > c.hlc);
                c.net = c.net.checked_add(by).ok_or(CrdtError::Overflow)?;
                c.hlc = stamp.hlc;
            }
            None => {
                let inc = new_incarnation(
                    self.ctr
                        .iter()
                        .filter(|c| c.region == stamp.region)
                        .map(|c| c.inc),
                    stamp.hlc,
                );
                let c = Contrib {
                    region: stamp.region,
                    inc,
                    hlc: stamp.hlc,
                    net: by,
                    obs_hlc: Hlc::ZERO,
                    obs_net: 0,
                    own: true,
                };
                let i = match self.ctr.binary_search_by_key(&c.id(), Contrib::id) {
                    Ok(i) | Err(i) => i,
                };
                // Most keys see one region: grow by exactly one (a plain push would reserve
                // room for four).
                self.ctr.reserve_exact(1);
                self.ctr.insert(i, c);
            }
        }
        Ok(result)
    }

    pub fn merge(&mut self, other: &Str) -> bool {
        let mut changed = self.reg.merge(&other.reg);
        for theirs in &other.ctr {
            match self.ctr.binary_search_by_key(&theirs.id(), Contrib::id) {
                Ok(i) => changed |= self.ctr[i].merge(theirs),
                Err(i) => {
                    self.ctr.reserve_exact(1);
                    // Merged in, not held since it was opened here: never extended.
                    self.ctr.insert(
                        i,
                        Contrib {
                            own: false,
                            ..*theirs
                        },
                    );
                    changed = true;
                }
            }
        }
        changed
    }

    pub fn max_hlc(&self) -> Hlc {
        let c = self
            .ctr
            .iter()
            .map(|c| c.hlc.max(c.obs_hlc))
            .max()
            .unwrap_or(Hlc::ZERO);
        c.max(self.reg.stamp.hlc)
    }

    pub fn heap_bytes(&self) -> usize {
        self.reg.value.as_ref().map_or(0, |v| v.len() + 16)
            + self.ctr.capacity() * std::mem::size_of::<Contrib>()
    }

    pub(crate) fn digest(&self, h: u64) -> u64 {
        let mut h = h;
        if let Some(v) = &self.reg.value {
            h = crate::digest::mix(h, self.reg.stamp.hlc.0);
            h = crate::digest::mix(h, u64::from(self.reg.stamp.region.0));
            h = crate::digest::mix_bytes(h, v);
            h = crate::digest::mix(h, self.reg.version);
        }
        for c in self.ctr.iter().filter(|c| c.is_live()) {
            h = crate::digest::mix(h, u64::from(c.region.0));
            h = crate::digest::mix(h, c.inc.0);
            h = crate::digest::mix(h, c.hlc.0);
            h = crate::digest::mix(h, c.obs_hlc.0);
            h = crate::digest::mix(h, c.net as u64);
            h = crate::digest::mix(h, c.obs_net as u64);
        }
        h
    }
}

/// Strict Redis integer parsing (`string2ll`): optional '-', no '+', no leading zeros, no
/// spaces, fits i64.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let (neg, digits) = match b[0] {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(digit)?
        } else {
            v.checked_add(digit)?
        };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(h: u64, r: u16) -> Stamp {
        Stamp::new(Hlc(h), RegionId(r))
    }

    #[test]
    fn parse_i64_is_strict_like_redis() {
        assert_eq!(parse_i64(b"123"), Some(123));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"0"), Some(0));
        for bad in [&b"01"[..], b"-0", b"+1", b" 1", b"1 ", b"", b"-", b"1.5"] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn set_resets_only_observed_increments() {
        let mut a = Str::default();
        a.incr_by(st(1, 1), 5).unwrap();
        let mut b = a.clone();
        a.incr_by(st(2, 1), 3).unwrap(); // unobserved by b
        b.set(st(3, 2), Bytes::from_static(b"100"));
        a.merge(&b);
        b.merge(&a);
        assert_eq!(a, b);
        assert_eq!(a.integer().unwrap(), 103);
    }

    #[test]
    fn overflow_is_refused_and_leaves_value_unchanged() {
        let mut a = Str::default();
        a.set(st(1, 1), Bytes::from(i64::MAX.to_string()));
        let before = a.clone();
        assert_eq!(a.incr_by(st(2, 1), 1), Err(CrdtError::Overflow));
        assert_eq!(a, before);
    }
}
