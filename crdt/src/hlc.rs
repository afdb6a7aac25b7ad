//! Hybrid logical clock, region ids and stamps.
//!
//! An [`Hlc`] packs physical milliseconds (upper 48 bits) and a logical counter (lower 16
//! bits) into one `u64`, so comparing two HLCs is one integer compare. The physical time is
//! always passed in by the caller: nothing here reads a clock, so the simulator can drive it.
//!
//! Arithmetic never wraps: physical times beyond [`Hlc::MAX_PHYSICAL_MS`] (the year 10889)
//! saturate, and so does [`Hlc::tick`] at [`Hlc::MAX`]. Remote stamps are only adopted when
//! they are at most a bounded offset ahead of the local physical clock
//! ([`HlcClock::observe_bounded`], [`Hlc::limit`]), so a peer with a bad clock cannot drag
//! a region's clock towards the end of time.

use serde::{Deserialize, Serialize};

/// A region's compact id (index into the deployment's region list). Breaks HLC ties.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct RegionId(pub u16);

/// Hybrid logical clock value: `physical_ms << 16 | logical`.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc(pub u64);

impl Hlc {
    pub const ZERO: Hlc = Hlc(0);
    /// The greatest HLC: every operation saturates here instead of wrapping.
    pub const MAX: Hlc = Hlc(u64::MAX);
    pub const LOGICAL_BITS: u32 = 16;
    /// The greatest physical time an HLC can carry (2^48 - 1 ms, in the year 10889).
    pub const MAX_PHYSICAL_MS: u64 = (1 << (64 - Self::LOGICAL_BITS)) - 1;

    /// `physical_ms` beyond [`Hlc::MAX_PHYSICAL_MS`] saturates (it would shift out of range).
    pub fn from_parts(physical_ms: u64, logical: u16) -> Hlc {
        Hlc((physical_ms.min(Self::MAX_PHYSICAL_MS) << Self::LOGICAL_BITS) | u64::from(logical))
    }

    /// The greatest HLC a remote may hand us when our physical clock reads `physical_ms` and
    /// clocks may differ by up to `max_offset_ms`: anything above it is further ahead than
    /// the bound allows (the remote's clock, or ours, is wrong) and is not adopted.
    pub fn limit(physical_ms: u64, max_offset_ms: u64) -> Hlc {
        Hlc::from_parts(physical_ms.saturating_add(max_offset_ms), u16::MAX)
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// The next local timestamp after `self` given the caller's physical clock reading.
    /// Strictly greater than `self` (below [`Hlc::MAX`], where it saturates: unreachable
    /// while clocks read before the year 10889 and remote stamps are bounded), and never
    /// behind `physical_ms`.
    pub fn tick(self, physical_ms: u64) -> Hlc {
        let physical = Hlc::from_parts(physical_ms, 0);
        if physical > self {
            physical
        } else {
            // Logical overflow carries into the millisecond bits: still monotonic.
            Hlc(self.0.saturating_add(1))
        }
    }
}

/// A write's identity and order: HLC first, region id as the tie-break.
/// Also serves as the write's dot: a region never issues the same HLC twice.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stamp {
    pub hlc: Hlc,
    pub region: RegionId,
}

impl Stamp {
    pub const ZERO: Stamp = Stamp {
        hlc: Hlc::ZERO,
        region: RegionId(0),
    };

    pub fn new(hlc: Hlc, region: RegionId) -> Stamp {
        Stamp { hlc, region }
    }
}

/// A region's clock: the last HLC it issued or observed.
#[derive(Clone, Debug)]
pub struct HlcClock {
    region: RegionId,
    last: Hlc,
}

impl HlcClock {
    pub fn new(region: RegionId) -> HlcClock {
        HlcClock {
            region,
            last: Hlc::ZERO,
        }
    }

    pub fn region(&self) -> RegionId {
        self.region
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Stamp a local event happening at `physical_ms` on this node's clock.
    pub fn now(&mut self, physical_ms: u64) -> Stamp {
        self.last = self.last.tick(physical_ms);
        Stamp::new(self.last, self.region)
    }

    /// Fold in a remote HLC so that later local stamps are causally after it. Unbounded:
    /// for stamps already checked (see [`HlcClock::observe_bounded`]) or trusted (this
    /// region's own, e.g. from its primary).
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
        }
    }

    /// [`HlcClock::observe`] if `remote` is at most `max_offset_ms` ahead of `physical_ms`
    /// (see [`Hlc::limit`]); returns false, adopting nothing, if it is further ahead.
    pub fn observe_bounded(&mut self, remote: Hlc, physical_ms: u64, max_offset_ms: u64) -> bool {
        if remote > Hlc::limit(physical_ms, max_offset_ms) {
            return false;
        }
        self.observe(remote);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_monotonic_even_when_physical_time_goes_back() {
        let mut c = HlcClock::new(RegionId(1));
        let a = c.now(1_000);
        let b = c.now(900);
        let d = c.now(900);
        assert!(a < b && b < d);
        assert_eq!(a.hlc.physical_ms(), 1_000);
        assert_eq!(d.hlc.logical(), 2);
    }

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(Hlc::MAX.tick(0), Hlc::MAX);
        assert_eq!(Hlc::MAX.tick(u64::MAX), Hlc::MAX);
        assert_eq!(Hlc(u64::MAX - 1).tick(5), Hlc::MAX);
        let far = Hlc::from_parts(u64::MAX, 7);
        assert_eq!(
            far.physical_ms(),
            Hlc::MAX_PHYSICAL_MS,
            "no bits shifted out"
        );
        assert_eq!(far.logical(), 7);
        assert_eq!(Hlc::limit(u64::MAX, u64::MAX), Hlc::MAX);
        let mut c = HlcClock::new(RegionId(1));
        c.observe(Hlc::MAX);
        assert_eq!(c.now(1_000).hlc, Hlc::MAX, "saturates, never wraps to zero");
    }

    #[test]
    fn a_remote_stamp_beyond_the_offset_bound_is_not_adopted() {
        let mut c = HlcClock::new(RegionId(1));
        let ahead = Hlc::from_parts(1_000 + 500, 3);
        assert!(
            c.observe_bounded(ahead, 1_000, 500),
            "at the bound: adopted"
        );
        assert_eq!(c.last(), ahead);
        let too_far = Hlc::from_parts(1_000 + 501, 0);
        assert!(!c.observe_bounded(too_far, 1_000, 500));
        assert_eq!(c.last(), ahead, "nothing adopted");
        assert!(
            c.observe_bounded(too_far, 1_001, 500),
            "once local time catches up"
        );
        assert!(c.now(1_001).hlc > too_far);
    }

    #[test]
    fn observed_remote_time_orders_later_local_writes_after_it() {
        let mut skewed = HlcClock::new(RegionId(1));
        let mut other = HlcClock::new(RegionId(2));
        let remote = other.now(50_000);
        skewed.observe(remote.hlc);
        let local = skewed.now(1_000);
        assert!(
            local > remote,
            "a write that causally follows another wins despite skew"
        );
    }
}
