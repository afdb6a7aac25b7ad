//! The keyspace: key → [`Entry`](crate::Entry), indexed by hash slot, shared by the server
//! and the simulator.
//!
//! Keys live in one table per slot, so a slot can be counted, enumerated, digested and
//! dropped without touching the others (resharding and anti-entropy work slot by slot).
//! Local writes go through [`Keyspace::write`], which stamps them and queues the resulting
//! [`Delta`]; remote state comes in through [`Keyspace::apply_delta`]. Expiry and eviction
//! are local memory management: they never produce deltas. Time and randomness are inputs.
//!
//! One [`Keyspace`], several `impl` blocks, one job each:
//! - `slab`: the 64-byte `Node` per key and the slab of them, named by 32-bit handles.
//! - `tables`: per-slot tables of handles, their lifecycle, and the table operations.
//! - `read`: lookups (`peek`, `get`, `raw_entry`) and the pipeline's `prefetch` hints.
//! - `write`: local writes and the deltas they queue (`write_in`, `set_plain`, `incr_plain`).
//! - `merge`: remote state (`apply_delta`, `merge_state`, `raise_floor`), `take_key`, `drop_slot`.
//! - `loss`: local removal without a delta (`reclaim`) and the lossy-slot marks.
//! - `expiry`: active expiry and the retention of invalidation floors.
//! - `eviction`: [`EvictionPolicy`] and sampled eviction, `random_key`.
//! - `gc`: per-slot and per-key digests, GC by causal-stability frontier.
//! - `scan`: per-slot access and SCAN.
//!
//! This file keeps the struct, its construction and the bookkeeping every job shares: the
//! counters (`Keyspace::account`) and the LRU/LFU access record.

mod eviction;
mod expiry;
mod gc;
mod loss;
mod merge;
mod read;
mod scan;
mod slab;
mod tables;
mod write;

pub use eviction::EvictionPolicy;
pub(crate) use tables::prefetch;
pub use tables::Prefetch;

use crate::entry::{Access, Delta};
use crate::hlc::RegionId;
use crate::slot::SLOT_COUNT;
use bytes::Bytes;
use slab::{node_bytes, Node, Slab};
use std::collections::{BTreeMap, VecDeque};
use tables::{slot_table, Nodes, SlotTable};

/// Bytes of a node itself plus its share of the slot table (a bucket pointer and control
/// byte at about half load), for `used_memory`.
pub const NODE_BYTES: usize = 64 + 18;

#[derive(Clone, Debug)]
pub struct KeyspaceConfig {
    pub region: RegionId,
    /// Keep dead state (tombstones) until `gc` says every region has seen it. A single-region
    /// node has no one to tell and drops it at once.
    pub retain_tombstones: bool,
    /// Seed for table hashing and the LFU coin; fixed in the simulator, random in the server.
    pub seed: u64,
}

impl Default for KeyspaceConfig {
    fn default() -> Self {
        KeyspaceConfig {
            region: RegionId(0),
            retain_tombstones: false,
            seed: 0x6d65_7269,
        }
    }
}

/// Outcome of merging remote state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
    /// A partial delta for a key this region evicted or expired: dropped, the key stays a
    /// miss until anti-entropy (or a local write) restores it.
    DroppedPartial,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyspaceStats {
    pub keys: usize,
    pub tombstones: usize,
    pub volatile: usize,
    pub bytes: usize,
    pub expired: u64,
    pub evicted: u64,
    pub deltas_applied: u64,
    pub partial_deltas_dropped: u64,
    /// Keys holding an invalidation floor (counted per floor raise; an upper bound until the
    /// retention pass dedupes).
    pub invalidation_tombstones: usize,
    /// Remote (replicated or anti-entropy) fills that landed at or below a key's floor.
    pub stale_fills_hidden: u64,
}

/// What an entry is after a write or merge (for the counters [`Keyspace::account`] keeps).
struct After {
    is_alive: bool,
    is_volatile: bool,
    bytes: usize,
    keep: bool,
}

impl After {
    fn of(n: &Node, keep: bool) -> After {
        let is_alive = n.body.is_alive();
        After {
            is_alive,
            is_volatile: is_alive && n.body.deadline_ms().is_some(),
            bytes: if keep { node_bytes(n) } else { 0 },
            keep,
        }
    }
}

/// What an entry was before a write or merge (for the counters [`Keyspace::account`] keeps).
struct Prior {
    existed: bool,
    was_alive: bool,
    was_volatile: bool,
    bytes: usize,
}

pub struct Keyspace {
    cfg: KeyspaceConfig,
    slots: Vec<Option<Box<SlotTable>>>,
    nodes: Nodes,
    stats: KeyspaceStats,
    deltas: Vec<Delta>,
    expire_cursor: usize,
    coin: u64,
    /// The latest physical clock (ms) this keyspace was given (writes, expiry cycles): a
    /// floor raised by a remote merge starts its retention then.
    floor_clock_ms: u64,
    /// Invalidation floors in the order they were raised: `(raised_at_ms, key, floor)`,
    /// popped by [`Keyspace::expire_invalidations`] (retention and count bound).
    floors: VecDeque<(u64, Bytes, u64)>,
    /// One bit per slot: see [`Keyspace::slot_is_lossy`].
    lossy: Vec<u64>,
    /// Losses (eviction, expiry, dropped partial deltas) so far in this keyspace.
    losses: u64,
    /// Lossy slot → `losses` at its latest loss: see [`Keyspace::slot_loss_mark`]. Ordered,
    /// as every map in the cores is (a std `HashMap` is seeded by the OS);
    /// `clear_start_losses` walks it.
    loss_marks: BTreeMap<u16, u64>,
    /// `losses` right after [`Keyspace::mark_all_lossy`] (0: never marked).
    start_losses: u64,
}

impl Keyspace {
    pub fn new(cfg: KeyspaceConfig) -> Keyspace {
        let seed = cfg.seed;
        Keyspace {
            nodes: Nodes {
                slab: Slab::default(),
                hasher: ahash::RandomState::with_seeds(
                    seed,
                    seed ^ 0x9e37,
                    seed.rotate_left(17),
                    7,
                ),
            },
            cfg,
            slots: (0..SLOT_COUNT).map(|_| None).collect(),
            stats: KeyspaceStats::default(),
            deltas: Vec::new(),
            expire_cursor: 0,
            coin: seed | 1,
            floors: VecDeque::new(),
            floor_clock_ms: 0,
            lossy: vec![0; SLOT_COUNT / 64],
            losses: 0,
            loss_marks: BTreeMap::new(),
            start_losses: 0,
        }
    }

    pub fn region(&self) -> RegionId {
        self.cfg.region
    }

    pub fn config(&self) -> &KeyspaceConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &KeyspaceStats {
        &self.stats
    }

    /// Live keys (including ones whose TTL passed but were not reclaimed yet, like Redis).
    pub fn len(&self) -> usize {
        self.stats.keys
    }

    pub fn is_empty(&self) -> bool {
        self.stats.keys == 0
    }

    fn next_coin(&mut self) -> u64 {
        next_coin(&mut self.coin)
    }

    /// Store an entry back after a merge and keep the counters (see [`Keyspace::account`]).
    /// `keep == false` drops it.
    fn put_back(&mut self, slot: u16, node: Node, prior: Prior, changed: bool, keep: bool) {
        let after = After::of(&node, keep);
        if keep {
            let table = slot_table(&mut self.slots, slot);
            self.nodes.insert(&mut table.map, node);
        }
        self.account(slot, prior, after, changed);
    }

    /// Keep the slot's and the keyspace's counters (live, volatile, tombstones, bytes,
    /// digest) in step with a write or merge whose entry is now in its table (or, when
    /// `!after.keep`, out of it).
    fn account(&mut self, slot: u16, prior: Prior, after: After, changed: bool) {
        let table = self.table_mut(slot);
        if changed {
            table.digest = None;
        }
        let (is_alive, is_volatile) = (after.is_alive, after.is_volatile);
        table.alive = table.alive + usize::from(is_alive) - usize::from(prior.was_alive);
        table.volatile =
            table.volatile + usize::from(is_volatile) - usize::from(prior.was_volatile);
        let s = &mut self.stats;
        s.keys = s.keys + usize::from(is_alive) - usize::from(prior.was_alive);
        let was_tomb = prior.existed && !prior.was_alive;
        let is_tomb = after.keep && !is_alive;
        s.tombstones = s.tombstones + usize::from(is_tomb) - usize::from(was_tomb);
        s.volatile = s.volatile + usize::from(is_volatile) - usize::from(prior.was_volatile);
        s.bytes = s.bytes + after.bytes - prior.bytes;
        if !after.keep {
            self.release_if_empty(slot);
        }
    }
}

/// xorshift64*: deterministic, seeded by the config (never the OS).
fn next_coin(coin: &mut u64) -> u64 {
    let mut x = *coin;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *coin = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

const LFU_INIT: u8 = 5;

const LFU_LOG_FACTOR: u64 = 10;

fn touch(a: &mut Access, now_ms: u64, coin: u64) {
    let mut c = if a.lru_ms == 0 && a.lfu == 0 {
        LFU_INIT
    } else {
        lfu_decayed(a, now_ms)
    };
    if c < u8::MAX {
        let base = u64::from(c.saturating_sub(LFU_INIT));
        // Logarithmic increment: probability 1 / (base * factor + 1).
        if coin.is_multiple_of(base * LFU_LOG_FACTOR + 1) {
            c += 1;
        }
    }
    a.lfu = c;
    a.lru_ms = now_ms as u32;
}

/// LFU counter after decaying one step per idle minute (Redis' lfu-decay-time 1).
fn lfu_decayed(a: &Access, now_ms: u64) -> u8 {
    let idle_min = lru_idle_ms(a, now_ms) / 60_000;
    a.lfu.saturating_sub(idle_min.min(255) as u8)
}

/// Milliseconds since the last access (wrapping clock).
/// An access stamped after `now_ms` (another thread read the clock later) is not idle.
fn lru_idle_ms(a: &Access, now_ms: u64) -> u32 {
    let idle = (now_ms as u32).wrapping_sub(a.lru_ms);
    if idle > u32::MAX / 2 {
        0
    } else {
        idle
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod loss_tests;
