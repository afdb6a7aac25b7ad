//! meridian-crdt: the values meridian stores and how replicas of them merge.
//!
//! Pure code: no I/O, no clock reads, no OS randomness. Time (physical milliseconds) and
//! random numbers are inputs, so the server and the simulator drive the same code.
//!
//! - [`hlc`]: hybrid logical clock, region ids, stamps (dots).
//! - [`dots`]: per-region dot entries, the lattice under every observed-remove structure.
//! - [`strval`]: strings = LWW register + PN-counter contributions with observed reset.
//! - [`collections`]: add-wins OR-set, OR-map of string fields.
//! - [`list`]: Redis lists as a sequence CRDT (dense positions, observed remove, LWW values).
//! - [`zset`]: sorted sets (add-wins members, LWW score, float counter contributions).
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
pub mod list;
mod packed;
pub mod slot;
pub mod strval;
pub mod zset;
mod zset_table;

pub use collections::{OrMap, OrSet};
pub use dots::{DotEntry, Dots};
pub use entry::{Comp, Delta, Entry, EntryWriter, Kind, Val, PERSIST};
pub use hlc::{Hlc, HlcClock, RegionId, Stamp};
pub use keyspace::{Applied, EvictionPolicy, Keyspace, KeyspaceConfig, KeyspaceStats, Prefetch};
pub use list::List;
pub use slot::{key_slot, SLOT_COUNT};
pub use strval::{parse_i64, Contrib, Register, Str, StrValue};
pub use zset::{FContrib, LexBound, ScoreBits, ScoreBound, ZSet, ZState};

/// Hasher for tables keyed by client-chosen bytes inside values (set members, hash fields)
/// and by keys outside the keyspace (the region link's per-key index): ahash keyed by one
/// seed per process, which the server sets from OS randomness ([`set_hash_seed`]) before it
/// builds any table, so a client cannot choose members that collide. Without a seed set
/// (the simulator, tests) the seed is fixed and iteration order is a function of the
/// operation history only (the simulator replays exactly).
#[derive(Clone, Copy, Debug, Default)]
pub struct SeededState;

static HASH_STATE: std::sync::OnceLock<ahash::RandomState> = std::sync::OnceLock::new();

/// The hasher state for a seed (`None`: the fixed one).
pub fn seeded_state(seed: Option<u64>) -> ahash::RandomState {
    match seed {
        None => ahash::RandomState::with_seeds(0x6d65, 0x7269, 0x6469, 0x616e),
        Some(s) => ahash::RandomState::with_seeds(
            s,
            s.rotate_left(21) ^ 0x6d65_7269,
            s.rotate_left(43) ^ 0x6469_616e,
            !s,
        ),
    }
}

/// Key [`SeededState`] with `seed` for the rest of the process. Only before the first hash
/// (the shell calls it first thing); returns false, and changes nothing, once a table was
/// hashed with the state already in use.
pub fn set_hash_seed(seed: u64) -> bool {
    HASH_STATE.set(seeded_state(Some(seed))).is_ok()
}

impl std::hash::BuildHasher for SeededState {
    type Hasher = ahash::AHasher;
    #[inline]
    fn build_hasher(&self) -> ahash::AHasher {
        HASH_STATE.get_or_init(|| seeded_state(None)).build_hasher()
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
