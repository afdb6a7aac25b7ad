//! meridian-crdt: the values meridian stores and how replicas of them merge.
//!
//! Pure code: no I/O, no clock reads, no OS randomness. Time (physical milliseconds) and
//! random numbers are inputs, so the server and the simulator drive the same code.
//!
//! - [`hlc`]: hybrid logical clock, region ids, stamps (dots).
//! - [`dots`]: per-region dot entries, the lattice under every observed-remove structure.
//! - [`strval`]: strings = LWW register + PN-counter contributions with observed reset.
//! - [`collections`]: add-wins OR-set, OR-map of string fields.
//! - [`entry`]: the key envelope (typed components, TTL), [`Delta`], [`EntryWriter`].
//! - [`keyspace`]: key → entry per hash slot, deltas, expiry, eviction, digests, GC.
//! - [`slot`]: CRC16 hash slots with `{hash tags}`.

pub mod collections;
pub mod digest;
pub mod dots;
mod elements;
pub mod entry;
pub mod hlc;
pub mod keyspace;
mod packed;
pub mod slot;
pub mod strval;

pub use collections::{OrMap, OrSet};
pub use dots::{DotEntry, Dots};
pub use entry::{Comp, Delta, Entry, EntryWriter, Kind, Val, PERSIST};
pub use hlc::{Hlc, HlcClock, RegionId, Stamp};
pub use keyspace::{Applied, EvictionPolicy, Keyspace, KeyspaceConfig, KeyspaceStats, Prefetch};
pub use slot::{key_slot, SLOT_COUNT};
pub use strval::{parse_i64, Contrib, Register, Str, StrValue};

/// Hasher for maps nested inside values: fixed seeds, so iteration order is a function of
/// the operation history only (the simulator replays exactly).
pub type FixedState = FixedHasher;

#[derive(Clone, Copy, Debug, Default)]
pub struct FixedHasher;

impl std::hash::BuildHasher for FixedHasher {
    type Hasher = ahash::AHasher;
    fn build_hasher(&self) -> ahash::AHasher {
        ahash::RandomState::with_seeds(0x6d65, 0x7269, 0x6469, 0x616e).build_hasher()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrdtError {
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    /// A versioned fill at or below the key's invalidation floor.
    #[error("STALE the key was invalidated at version {floor}; a fill must carry a newer version")]
    Stale { floor: u64 },
}
