//! Hybrid logical clock, region ids and stamps.
//!
//! An [`Hlc`] packs physical milliseconds (upper 48 bits) and a logical counter (lower 16
//! bits) into one `u64`, so comparing two HLCs is one integer compare. The physical time is
//! always passed in by the caller: nothing here reads a clock, so the simulator can drive it.

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
    pub const LOGICAL_BITS: u32 = 16;

    pub fn from_parts(physical_ms: u64, logical: u16) -> Hlc {
        Hlc((physical_ms << Self::LOGICAL_BITS) | u64::from(logical))
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// The next local timestamp after `self` given the caller's physical clock reading.
    /// Always strictly greater than `self`, and never behind `physical_ms`.
    pub fn tick(self, physical_ms: u64) -> Hlc {
        let physical = Hlc::from_parts(physical_ms, 0);
        if physical > self {
            physical
        } else {
            // Logical overflow carries into the millisecond bits: still monotonic.
            Hlc(self.0 + 1)
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

    /// Fold in a remote HLC so that later local stamps are causally after it.
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
        }
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
