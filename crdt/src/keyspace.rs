//! The keyspace: key → [`Entry`], indexed by hash slot, shared by the server and the simulator.
//!
//! Keys live in one table per slot, so a slot can be counted, enumerated, digested and
//! dropped without touching the others (resharding and anti-entropy work slot by slot).
//! Local writes go through [`Keyspace::write`], which stamps them and queues the resulting
//! [`Delta`]; remote state comes in through [`Keyspace::apply_delta`]. Expiry and eviction
//! are local memory management: they never produce deltas. Time and randomness are inputs.

use crate::entry::{Access, Delta, Entry, EntryWriter, Kind};
use crate::hlc::{Hlc, RegionId, Stamp};
use crate::packed::{Key, Stored};
use crate::slot::{key_slot, SLOT_COUNT};
use crate::CrdtError;
use bytes::Bytes;
use hashbrown::HashTable;
use std::borrow::Cow;
use std::collections::VecDeque;

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

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EvictionPolicy {
    NoEviction,
    AllKeysLru,
    AllKeysLfu,
    AllKeysRandom,
    VolatileLru,
    VolatileLfu,
    VolatileRandom,
    VolatileTtl,
}

impl EvictionPolicy {
    pub const ALL: [(EvictionPolicy, &'static str); 8] = [
        (EvictionPolicy::NoEviction, "noeviction"),
        (EvictionPolicy::AllKeysLru, "allkeys-lru"),
        (EvictionPolicy::AllKeysLfu, "allkeys-lfu"),
        (EvictionPolicy::AllKeysRandom, "allkeys-random"),
        (EvictionPolicy::VolatileLru, "volatile-lru"),
        (EvictionPolicy::VolatileLfu, "volatile-lfu"),
        (EvictionPolicy::VolatileRandom, "volatile-random"),
        (EvictionPolicy::VolatileTtl, "volatile-ttl"),
    ];

    pub fn parse(name: &str) -> Option<EvictionPolicy> {
        Self::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(p, _)| *p)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map_or("noeviction", |(_, n)| n)
    }

    fn volatile_only(self) -> bool {
        matches!(
            self,
            EvictionPolicy::VolatileLru
                | EvictionPolicy::VolatileLfu
                | EvictionPolicy::VolatileRandom
                | EvictionPolicy::VolatileTtl
        )
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

/// One key and its state, in one 64-byte allocation (see [`crate::packed`]).
struct Node {
    key: Key,
    access: Access,
    body: Stored,
}

const _: () = assert!(std::mem::size_of::<Node>() == 64);
const _: () = assert!(std::mem::size_of::<Option<Node>>() == 64);

impl Node {
    /// The node's entry opened for a write or merge; packed again when the guard drops.
    fn body_open(&mut self) -> Opened<'_> {
        let scratch = match &self.body {
            Stored::Full(_) => None,
            _ => Some(std::mem::replace(&mut self.body, Stored::PLACEHOLDER).unpack()),
        };
        Opened {
            body: &mut self.body,
            scratch,
        }
    }
}

/// A node's body as a full [`Entry`] for a write or merge: in place when boxed, unpacked on
/// the stack when packed (no box allocated for it). Dropping it packs the entry again if
/// it has a packed shape.
struct Opened<'a> {
    body: &'a mut Stored,
    scratch: Option<Entry>,
}

impl Opened<'_> {
    fn entry(&mut self) -> &mut Entry {
        match (&mut self.scratch, &mut *self.body) {
            (Some(e), _) => e,
            (None, Stored::Full(b)) => b,
            (None, _) => unreachable!("a packed body is opened into scratch"),
        }
    }
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        match self.scratch.take() {
            Some(e) => {
                #[cfg(debug_assertions)]
                let before = e.clone();
                *self.body = Stored::pack(e);
                #[cfg(debug_assertions)]
                assert_eq!(self.body.view().as_ref(), &before, "packing is lossless");
            }
            None => {
                #[cfg(debug_assertions)]
                let before = self.body.view().into_owned();
                self.body.settle();
                #[cfg(debug_assertions)]
                assert_eq!(self.body.view().as_ref(), &before, "packing is lossless");
            }
        }
    }
}

/// Bytes a node costs, for `used_memory`: the node, its key and body allocations, and its
/// share of the table (a bucket pointer plus control byte at about half load).
fn node_bytes(n: &Node) -> usize {
    NODE_BYTES + n.key.heap_bytes() + n.body.heap_bytes()
}

/// Nodes per slab chunk: a chunk reserves 256 KiB of address space, and only the pages its
/// nodes have been written to become resident.
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// Every node of a keyspace, named by a 32-bit handle. A slot table's bucket is then 4 bytes
/// instead of an 8-byte pointer (at a million keys most slot tables sit at half load, so the
/// bucket is a fifth of a counter's memory), and a node costs exactly its 64 bytes with no
/// allocator rounding. Freed handles are reused first; what they hold stays counted as free
/// ([`Slab::free_bytes`]), the way an allocator's free lists do.
#[derive(Default)]
struct Slab {
    chunks: Vec<Vec<Option<Node>>>,
    free: Vec<u32>,
    live: usize,
}

impl Slab {
    fn insert(&mut self, node: Node) -> u32 {
        self.live += 1;
        if let Some(h) = self.free.pop() {
            *self.slot(h) = Some(node);
            return h;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let c = self.chunks.len() - 1;
        let chunk = &mut self.chunks[c];
        chunk.push(Some(node));
        ((c << CHUNK_BITS) | (chunk.len() - 1)) as u32
    }

    fn slot(&mut self, h: u32) -> &mut Option<Node> {
        let h = h as usize;
        &mut self.chunks[h >> CHUNK_BITS][h & (CHUNK - 1)]
    }

    fn get(&self, h: u32) -> &Node {
        let h = h as usize;
        match &self.chunks[h >> CHUNK_BITS][h & (CHUNK - 1)] {
            Some(n) => n,
            None => unreachable!("a table never holds a freed handle"),
        }
    }

    /// Where handle `h`'s node lives, without reading it (for a prefetch).
    fn addr(&self, h: u32) -> *const Option<Node> {
        let h = h as usize;
        &self.chunks[h >> CHUNK_BITS][h & (CHUNK - 1)]
    }

    fn get_mut(&mut self, h: u32) -> &mut Node {
        match self.slot(h) {
            Some(n) => n,
            None => unreachable!("a table never holds a freed handle"),
        }
    }

    fn remove(&mut self, h: u32) -> Node {
        let Some(n) = self.slot(h).take() else {
            unreachable!("a table never holds a freed handle")
        };
        self.free.push(h);
        self.live -= 1;
        n
    }

    /// Bytes the slab holds that no node uses: freed slots and the unwritten tail of the
    /// newest chunk (allocated, so the allocator counts them as used).
    fn free_bytes(&self) -> usize {
        (self.chunks.len() * CHUNK - self.live) * std::mem::size_of::<Option<Node>>()
    }
}

/// The nodes and the hasher shared by every slot table of a keyspace. Table operations
/// live here because a table holds only handles: finding a key reads its node.
struct Nodes {
    slab: Slab,
    hasher: ahash::RandomState,
}

/// A slot's keys: handles of its nodes.
#[derive(Default)]
struct Table {
    nodes: HashTable<u32>,
}

impl Table {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl Nodes {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn get<'a>(&'a self, t: &Table, key: &[u8]) -> Option<&'a Node> {
        self.get_hashed(t, self.hash(key), key)
    }

    fn get_hashed<'a>(&'a self, t: &Table, h: u64, key: &[u8]) -> Option<&'a Node> {
        let slab = &self.slab;
        let i = *t.nodes.find(h, |&i| slab.get(i).key[..] == *key)?;
        Some(slab.get(i))
    }

    fn get_mut_hashed(&mut self, t: &Table, h: u64, key: &[u8]) -> Option<&mut Node> {
        let slab = &self.slab;
        let i = *t.nodes.find(h, |&i| slab.get(i).key[..] == *key)?;
        Some(self.slab.get_mut(i))
    }

    /// The node of `key` (hash `h`), created empty if absent; `true` when it existed.
    fn get_or_create(&mut self, t: &mut Table, h: u64, key: &[u8]) -> (&mut Node, bool) {
        let (slab, hasher) = (&self.slab, &self.hasher);
        match t.nodes.entry(
            h,
            |&i| slab.get(i).key[..] == *key,
            |&i| hasher.hash_one(&slab.get(i).key[..]),
        ) {
            hashbrown::hash_table::Entry::Occupied(o) => {
                let i = *o.get();
                (self.slab.get_mut(i), true)
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                let i = self.slab.insert(Node {
                    key: Key::new(key),
                    access: Access::default(),
                    body: Stored::Empty,
                });
                v.insert(i);
                (self.slab.get_mut(i), false)
            }
        }
    }

    fn remove_hashed(&mut self, t: &mut Table, h: u64, key: &[u8]) -> Option<Node> {
        let slab = &self.slab;
        match t.nodes.find_entry(h, |&i| slab.get(i).key[..] == *key) {
            Ok(o) => {
                let i = o.remove().0;
                Some(self.slab.remove(i))
            }
            Err(_) => None,
        }
    }

    /// Take a key's node out (a write or merge puts it back with [`Nodes::insert`]).
    fn remove(&mut self, t: &mut Table, key: &[u8]) -> Option<Node> {
        self.remove_hashed(t, self.hash(key), key)
    }

    /// Insert a node whose key is absent.
    fn insert(&mut self, t: &mut Table, node: Node) {
        let h = self.hash(&node.key);
        let i = self.slab.insert(node);
        let (slab, hasher) = (&self.slab, &self.hasher);
        t.nodes
            .insert_unique(h, i, |&i| hasher.hash_one(&slab.get(i).key[..]));
    }

    fn iter<'a>(&'a self, t: &'a Table) -> impl Iterator<Item = &'a Node> {
        t.nodes.iter().map(|&i| self.slab.get(i))
    }

    /// Keep the nodes `f` says to keep; free the others.
    fn retain(&mut self, t: &mut Table, mut f: impl FnMut(&mut Node) -> bool) {
        let slab = &mut self.slab;
        t.nodes.retain(|&mut i| {
            let keep = f(slab.get_mut(i));
            if !keep {
                slab.remove(i);
            }
            keep
        });
    }

    /// Free every node of a table that is being dropped.
    fn free_table(&mut self, t: &Table) {
        for &i in t.nodes.iter() {
            self.slab.remove(i);
        }
    }
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

/// A stage of [`Keyspace::prefetch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    Table,
    Node,
    Value,
}

/// Ask the CPU to bring `p`'s cache line in (a hint: no effect on memory or state).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only moves a cache line towards the core; it never faults (even on
    // an invalid address) and reads or writes nothing the program can observe.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Where a slot's table pointer sits in `Keyspace::slots`: grouped by `slot % 16`, so the
/// slots a server shard holds (its shard is `slot % 16`) are 1024 neighbours (8 KiB that
/// stay in cache) instead of every 16th entry of 128 KiB (a cache miss on most lookups).
/// A bijection on `0..SLOT_COUNT`; out-of-range slots map out of range.
fn slot_index(slot: u16) -> usize {
    let s = usize::from(slot);
    if s >= SLOT_COUNT {
        return usize::MAX;
    }
    (s % SLOT_GROUPS) * (SLOT_COUNT / SLOT_GROUPS) + s / SLOT_GROUPS
}

/// Inverse of [`slot_index`].
#[cfg(test)]
fn slot_at(index: usize) -> u16 {
    let per = SLOT_COUNT / SLOT_GROUPS;
    ((index % per) * SLOT_GROUPS + index / per) as u16
}

const SLOT_GROUPS: usize = 16;

/// The node of `key` in `slot`, if it has one (live or not). Free-standing, so the rest of
/// the keyspace stays borrowable while the node is held.
fn node_mut<'a>(
    slots: &[Option<Box<SlotTable>>],
    nodes: &'a mut Nodes,
    slot: u16,
    key: &[u8],
) -> Option<&'a mut Node> {
    let h = nodes.hash(key);
    let t = slots[slot_index(slot)].as_deref()?;
    nodes.get_mut_hashed(&t.map, h, key)
}

/// A slot's table, created with its first key.
fn slot_table(slots: &mut [Option<Box<SlotTable>>], slot: u16) -> &mut SlotTable {
    slots[slot_index(slot)].get_or_insert_with(|| {
        Box::new(SlotTable {
            map: Table::default(),
            alive: 0,
            volatile: 0,
            digest: None,
        })
    })
}

struct SlotTable {
    map: Table,
    alive: usize,
    volatile: usize,
    /// Cached anti-entropy digest; `None` when the slot changed since.
    digest: Option<u64>,
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
    /// Lossy slot → `losses` at its latest loss: see [`Keyspace::slot_loss_mark`].
    loss_marks: std::collections::HashMap<u16, u64>,
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
            loss_marks: std::collections::HashMap::new(),
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

    fn table(&self, slot: u16) -> Option<&SlotTable> {
        self.slots.get(slot_index(slot))?.as_deref()
    }

    fn table_mut(&mut self, slot: u16) -> &mut SlotTable {
        slot_table(&mut self.slots, slot)
    }

    /// Bytes the keyspace's node slab holds unused (freed or not yet written): allocated,
    /// but available to new keys. `used_memory` leaves them out, as an allocator's own free
    /// lists are.
    pub fn slab_free_bytes(&self) -> usize {
        self.nodes.slab.free_bytes()
    }

    fn next_coin(&mut self) -> u64 {
        next_coin(&mut self.coin)
    }

    /// Lookup hints for a pipeline: a connection runs one command while it prefetches for
    /// the next ones, so their cache misses overlap instead of queueing. Each stage needs
    /// what the previous one (issued a command earlier) brought into cache: the slot's
    /// table, then the key's node (this stage reads the table's buckets), then the value.
    /// They never change state, and a wrong or absent key just fetches nothing useful.
    /// `element` (a member or field the command names after the key) is probed for in the
    /// key's set or hash at the value stage, its candidate buckets prefetched rather than
    /// compared: their misses (a 100 k-field hash) then overlap with the commands before it.
    pub fn prefetch(&self, stage: Prefetch, slot: u16, key: &[u8], element: Option<&[u8]>) {
        let Some(Some(t)) = self.slots.get(slot_index(slot)) else {
            return;
        };
        match stage {
            Prefetch::Table => prefetch(&**t),
            Prefetch::Node => {
                let slab = &self.nodes.slab;
                // An `eq` that prefetches each candidate and matches none: one probe.
                let _ = t.map.nodes.find(self.nodes.hash(key), |&i| {
                    prefetch(slab.addr(i));
                    false
                });
            }
            Prefetch::Value => {
                if let Some(n) = self.nodes.get(&t.map, key) {
                    match &n.body {
                        Stored::Str { value, .. } => prefetch(value.as_ptr()),
                        Stored::Full(b) => match element {
                            Some(e) => b.components().iter().for_each(|c| match &c.val {
                                crate::entry::Val::Set(s) => s.prefetch(e),
                                crate::entry::Val::Hash(h) => h.prefetch(e),
                                crate::entry::Val::Str(_) => {}
                            }),
                            None => prefetch(&**b),
                        },
                        _ => {}
                    }
                }
            }
        }
    }

    /// Read-only lookup; an expired key reads as absent (it is reclaimed by `get` or expiry).
    pub fn peek(&self, key: &[u8], now_ms: u64) -> Option<Cow<'_, Entry>> {
        let n = self.nodes.get(&self.table(key_slot(key))?.map, key)?;
        (n.body.is_alive() && !n.body.is_expired(now_ms)).then(|| n.body.view())
    }

    /// Lookup for a command: reclaims the key if its TTL passed and records the access.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<Cow<'_, Entry>> {
        self.get_in(key_slot(key), key, now_ms)
    }

    /// [`Keyspace::get`] for a caller that already knows the key's slot.
    pub fn get_in(&mut self, slot: u16, key: &[u8], now_ms: u64) -> Option<Cow<'_, Entry>> {
        self.touch_live(slot, key, now_ms).map(|n| n.body.view())
    }

    /// `GET`: the visible string value of a live key (`Ok(None)`: a string with no visible
    /// value), `Err(WrongType)` for other kinds, `None` when absent; lookup, expiry and
    /// access tracking as [`Keyspace::get_in`]. A packed string is copied out directly,
    /// without rebuilding its entry.
    pub fn get_string_in(
        &mut self,
        slot: u16,
        key: &[u8],
        now_ms: u64,
    ) -> Option<Result<Option<Bytes>, CrdtError>> {
        self.touch_live(slot, key, now_ms)
            .map(|n| n.body.string_value())
    }

    /// The node of a live key, its access recorded; an expired key is reclaimed (`None`).
    fn touch_live(&mut self, slot: u16, key: &[u8], now_ms: u64) -> Option<&mut Node> {
        debug_assert_eq!(slot, key_slot(key));
        let h = self.nodes.hash(key);
        let (alive, expired) = match self
            .table(slot)
            .and_then(|t| self.nodes.get_hashed(&t.map, h, key))
        {
            None => return None,
            Some(n) => (n.body.is_alive(), n.body.is_expired(now_ms)),
        };
        if !alive {
            return None;
        }
        if expired {
            self.reclaim(slot, key, true);
            return None;
        }
        let coin = self.next_coin();
        let table = self.slots[slot_index(slot)].as_deref()?;
        let n = self.nodes.get_mut_hashed(&table.map, h, key)?;
        touch(&mut n.access, now_ms, coin);
        Some(n)
    }

    pub fn exists(&mut self, key: &[u8], now_ms: u64) -> bool {
        self.get(key, now_ms).is_some()
    }

    /// Apply a local write. The closure runs ops on an [`EntryWriter`]; if it changed
    /// anything, the delta is queued for `drain_deltas`.
    pub fn write<R>(
        &mut self,
        key: &[u8],
        stamp: Stamp,
        now_ms: u64,
        f: impl FnOnce(&mut EntryWriter) -> R,
    ) -> R {
        self.write_in(key_slot(key), Bytes::copy_from_slice(key), stamp, now_ms, f)
    }

    /// [`Keyspace::write`] for a caller that already knows the key's slot and holds the key
    /// as `Bytes`: the delta shares `key` (a request argument) rather than copying it. One
    /// table probe finds or creates the key's node, and the write happens in place.
    pub fn write_in<R>(
        &mut self,
        slot: u16,
        key: Bytes,
        stamp: Stamp,
        now_ms: u64,
        f: impl FnOnce(&mut EntryWriter) -> R,
    ) -> R {
        debug_assert_eq!(stamp.region, self.cfg.region);
        debug_assert_eq!(slot, key_slot(&key));
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let coin = self.next_coin();
        let retain = self.cfg.retain_tombstones;
        let lost_here = self.slot_is_lossy(slot);
        let h = self.nodes.hash(&key);
        let table = slot_table(&mut self.slots, slot);
        let (node, existed) = self.nodes.get_or_create(&mut table.map, h, &key);
        // A live key whose deadline passed is gone for this write. (A tombstone whose
        // leftover deadline passed is not an expired key: the write builds on it.)
        let was_alive = node.body.is_alive();
        let expired = was_alive && node.body.is_expired(now_ms);
        let was_volatile = was_alive && node.body.deadline_ms().is_some();
        let floor_before = node.body.floor();
        let before = if existed { node_bytes(node) } else { 0 };
        let mut opened = node.body_open();
        let entry = opened.entry();
        // No state at all here (a new node, or what eviction left of an invalidated key).
        let bare = entry.components().is_empty();
        let mut w = EntryWriter {
            entry: &mut *entry,
            delta: Entry::default(),
            stamp,
            changed: false,
            created_key: !was_alive || expired,
            whole: false,
        };
        if expired {
            // This write starts a new key. Rather than dropping the old one and starting from
            // nothing, remove what this region observed, as a DEL would, and ship that with
            // the write: the region's counter contributions stay cumulative (a fresh one
            // would replace its old contribution elsewhere and break the sum), and regions
            // that still hold the old incarnation and its passed deadline see the new key.
            // Writes this region did not observe survive (observed remove).
            w.delete();
            w.changed = false;
        }
        let r = f(&mut w);
        let (changed, mut delta_state, created_key, whole) =
            (w.changed, w.delta, w.created_key, w.whole);
        if expired && !changed {
            // Nothing written: plain local expiry, which never replicates. The invalidation
            // floor stays, as every reclaim keeps it (a refused stale fill is the usual
            // reason nothing was written).
            drop(opened);
            let table = slot_table(&mut self.slots, slot);
            let mut kept = 0;
            if floor_before != 0 {
                node.body = Stored::pack(Entry::with_floor(floor_before));
                kept = node_bytes(node);
            } else {
                self.nodes.remove_hashed(&mut table.map, h, &key);
            }
            table.alive -= 1;
            table.volatile -= usize::from(was_volatile);
            table.digest = None;
            self.set_lossy(slot);
            self.release_if_empty(slot);
            let s = &mut self.stats;
            s.expired += 1;
            s.keys -= 1;
            s.tombstones += usize::from(floor_before != 0);
            s.volatile -= usize::from(was_volatile);
            s.bytes = s.bytes + kept - before;
            return r;
        }
        let is_alive = entry.is_alive();
        // Full: the delta alone rebuilds the key's whole live state. True when the write
        // created the key, or when every live component is a string the delta carries whole
        // (a string write always ships its whole string). The TTL goes along.
        //
        // Not when the key had no state here while its slot is lossy: this region evicted or
        // lost keys there and cannot tell "absent" from "forgotten", so what it wrote is its
        // part only, never to be taken elsewhere for the whole key.
        // A `SET` without `KEEPTTL` is whole anyway: the register it writes wins over
        // everything older, and older TTL entries die with it (a cache refill after local
        // expiry reaches regions that reclaimed the key too).
        let full = whole
            || !(lost_here && bare)
                && (created_key
                    || entry
                        .components()
                        .iter()
                        .filter(|c| c.val.is_alive())
                        .all(|c| c.val.kind() == Kind::Str && delta_state.carries(Kind::Str)));
        if changed && full {
            delta_state.merge_metadata(entry);
        }
        if !retain {
            entry.forget_dead_in(&delta_state);
            if !is_alive && entry.floor() != 0 {
                // Single-region mode keeps nothing dead but the invalidation floor.
                *entry = Entry::with_floor(entry.floor());
            }
        }
        let floor = entry.floor();
        drop(opened);
        touch(&mut node.access, now_ms, coin);
        let keep = is_alive || (retain && existed) || (retain && changed) || floor != 0;
        let after = After::of(node, keep);
        if !keep {
            let table = slot_table(&mut self.slots, slot);
            self.nodes.remove_hashed(&mut table.map, h, &key);
        }
        if floor > floor_before {
            self.note_floor(now_ms, &key, floor);
        }
        if changed {
            self.deltas.push(Delta {
                key,
                slot,
                stamp,
                full,
                state: delta_state,
            });
        }
        let prior = Prior {
            existed,
            was_alive,
            was_volatile,
            bytes: before,
        };
        self.stats.expired += u64::from(expired);
        self.account(slot, prior, after, changed);
        r
    }

    /// `SET key value` with no option (the TTL cleared, no version): what
    /// `write_in(.., |w| w.set_str_shared(value, false))` does, without unpacking a packed
    /// string (its old value is never read). Anything else takes the general path.
    pub fn set_plain(&mut self, slot: u16, key: Bytes, stamp: Stamp, now_ms: u64, value: Bytes) {
        debug_assert_eq!(stamp.region, self.cfg.region);
        debug_assert_eq!(slot, key_slot(&key));
        let node = node_mut(&self.slots, &mut self.nodes, slot, &key);
        let Some(node) = node.filter(|n| matches!(n.body, Stored::Str { .. })) else {
            self.write_in(slot, key, stamp, now_ms, |w| w.set_str_shared(value, false));
            return;
        };
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let coin = next_coin(&mut self.coin);
        let before = node_bytes(node);
        let Some((created, old)) = node.body.overwrite_str(stamp, &value) else {
            unreachable!("a packed string, checked above")
        };
        touch(&mut node.access, now_ms, coin);
        let after = After::of(node, true);
        // A packed string is live, has no TTL, no other component and no metadata: the
        // delta is the whole new string, as the general path builds it.
        let state = crate::packed::string_entry(created, stamp, value);
        self.record_in_place(slot, key, stamp, before, after, state);
        drop(old);
    }

    /// The bookkeeping of a local write done in place on a live packed node with no TTL
    /// (`set_plain`, `incr_plain`): its full delta (`state`, the node's new entry) and the
    /// counters (it was `before` bytes).
    fn record_in_place(
        &mut self,
        slot: u16,
        key: Bytes,
        stamp: Stamp,
        before: usize,
        after: After,
        state: Entry,
    ) {
        self.deltas.push(Delta {
            key,
            slot,
            stamp,
            full: true,
            state,
        });
        let prior = Prior {
            existed: true,
            was_alive: true,
            was_volatile: false,
            bytes: before,
        };
        self.account(slot, prior, after, true);
    }

    /// `INCRBY key by` (the whole command): [`Keyspace::write_in`] of `incr_by(by)`, with
    /// an in-place path for a counter this region packed (the common counter): its value
    /// and write stamp change in the node, and the delta is the counter's packed entry, as
    /// the general path builds it. Anything else (another kind, another region's counter,
    /// an overflow) takes the general path.
    pub fn incr_plain(
        &mut self,
        slot: u16,
        key: Bytes,
        stamp: Stamp,
        now_ms: u64,
        by: i64,
    ) -> Result<i64, CrdtError> {
        debug_assert_eq!(stamp.region, self.cfg.region);
        debug_assert_eq!(slot, key_slot(&key));
        let node = node_mut(&self.slots, &mut self.nodes, slot, &key);
        let Some((node, (created, value))) =
            node.and_then(|n| n.body.incr_own(stamp, by).map(|r| (n, r)))
        else {
            return self.write_in(slot, key, stamp, now_ms, |w| w.incr_by(by));
        };
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let coin = next_coin(&mut self.coin);
        // A packed counter has no heap part: its size did not change.
        let bytes = node_bytes(node);
        touch(&mut node.access, now_ms, coin);
        let after = After::of(node, true);
        let state = crate::packed::counter_entry(created, stamp, value, true);
        self.record_in_place(slot, key, stamp, bytes, after, state);
        Ok(value)
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

    /// Take the deltas produced by local writes since the last call.
    pub fn drain_deltas(&mut self) -> std::vec::Drain<'_, Delta> {
        self.deltas.drain(..)
    }

    pub fn pending_deltas(&self) -> usize {
        self.deltas.len()
    }

    /// Raise `key`'s invalidation floor to `floor` without a write: no stamp, no dot, no
    /// delta, just the max-lattice merge of a floor-only state. A cluster replica applies
    /// this part of an invalidation from the stream so that, once promoted, it already
    /// hides and refuses fills at or below the floor. Returns whether the floor rose.
    pub fn raise_floor(&mut self, key: &[u8], floor: u64) -> bool {
        if floor == 0 {
            return false;
        }
        self.merge_state(key, true, &Entry::with_floor(floor)) == Applied::Changed
    }

    /// Merge remote state for one key (a delta or an anti-entropy transfer).
    pub fn apply_delta(&mut self, delta: &Delta) -> Applied {
        self.merge_state(&delta.key, delta.full, &delta.state)
    }

    /// Merge a remote entry state. `full` says it is the origin's whole state for the key.
    /// In place: one table probe finds or creates the key's node.
    pub fn merge_state(&mut self, key: &[u8], full: bool, state: &Entry) -> Applied {
        self.merge_state_with(key, full, state, true)
    }

    /// [`Keyspace::merge_state`]; `in_place` lets a plain string merge into a packed string
    /// of the same incarnation without opening the node (tests compare both ways).
    pub(crate) fn merge_state_with(
        &mut self,
        key: &[u8],
        full: bool,
        state: &Entry,
        in_place: bool,
    ) -> Applied {
        let slot = key_slot(key);
        let retain = self.cfg.retain_tombstones;
        let h = self.nodes.hash(key);
        // Absent here: no node, or one with no component (what eviction or expiry left of an
        // invalidated key: its floor).
        if !full
            && self.slot_is_lossy(slot)
            && self
                .table(slot)
                .and_then(|t| self.nodes.get_hashed(&t.map, h, key))
                .is_none_or(|n| n.body.is_bare())
        {
            self.stats.partial_deltas_dropped += 1;
            return Applied::DroppedPartial;
        }
        let table = slot_table(&mut self.slots, slot);
        let (node, existed) = self.nodes.get_or_create(&mut table.map, h, key);
        let before = if existed { node_bytes(node) } else { 0 };
        // The common replicated write, a plain string over the same plain string, in place:
        // live before and after, no TTL, no floor, nothing to collect.
        let plain = in_place
            .then(|| crate::packed::plain_string(state))
            .flatten()
            .and_then(|(created, at, value)| node.body.merge_plain_str(created, at, value));
        if let Some(changed) = plain {
            let after = After::of(node, true);
            let prior = Prior {
                existed,
                was_alive: true,
                was_volatile: false,
                bytes: before,
            };
            self.account(slot, prior, after, changed);
            self.stats.deltas_applied += 1;
            return if changed {
                Applied::Changed
            } else {
                Applied::Unchanged
            };
        }
        let was_alive = node.body.is_alive();
        let was_volatile = was_alive && node.body.deadline_ms().is_some();
        let floor_before = node.body.floor();
        let mut opened = node.body_open();
        let entry = opened.entry();
        let changed = entry.merge(state);
        if !retain {
            entry.gc(&|_| Hlc(u64::MAX), true);
            if !entry.is_alive() && entry.floor() != 0 {
                *entry = Entry::with_floor(entry.floor());
            }
        }
        let floor = entry.floor();
        let stale_fill_hidden = changed && state.has_stale_fill_for(floor);
        let is_alive = entry.is_alive();
        drop(opened);
        let keep = is_alive || retain || floor != 0;
        let after = After::of(node, keep);
        if !keep {
            let table = slot_table(&mut self.slots, slot);
            self.nodes.remove_hashed(&mut table.map, h, key);
        }
        if stale_fill_hidden {
            self.stats.stale_fills_hidden += 1;
        }
        if floor > floor_before {
            self.note_floor(self.floor_clock_ms, key, floor);
        }
        let prior = Prior {
            existed,
            was_alive,
            was_volatile,
            bytes: before,
        };
        self.account(slot, prior, after, changed);
        self.stats.deltas_applied += 1;
        if changed {
            Applied::Changed
        } else {
            Applied::Unchanged
        }
    }

    /// Local removal without a delta (expiry, eviction): other regions keep the key.
    fn reclaim(&mut self, slot: u16, key: &[u8], expired: bool) -> usize {
        let Some(table) = self.slots[slot_index(slot)].as_deref_mut() else {
            return 0;
        };
        let Some(mut node) = self.nodes.remove(&mut table.map, key) else {
            return 0;
        };
        let alive = node.body.is_alive();
        let volatile = alive && node.body.deadline_ms().is_some();
        table.alive -= usize::from(alive);
        table.volatile -= usize::from(volatile);
        table.digest = None;
        let mut bytes = node_bytes(&node);
        let floor = node.body.floor();
        let mut kept_tomb = false;
        if floor != 0 {
            // The value goes, the invalidation floor stays: a stale fill must not come back
            // because the key expired or was evicted.
            node.body = Stored::pack(Entry::with_floor(floor));
            bytes -= node_bytes(&node);
            self.nodes.insert(&mut table.map, node);
            kept_tomb = true;
        }
        let s = &mut self.stats;
        s.keys -= usize::from(alive);
        s.tombstones = s.tombstones - usize::from(!alive) + usize::from(kept_tomb);
        s.volatile -= usize::from(volatile);
        s.bytes -= bytes;
        if expired {
            s.expired += 1;
        } else {
            s.evicted += 1;
        }
        self.set_lossy(slot);
        self.release_if_empty(slot);
        bytes
    }

    /// Evict one key locally (simulator fault / eviction). Returns bytes freed.
    pub fn evict_key(&mut self, key: &[u8]) -> usize {
        self.reclaim(key_slot(key), key, false)
    }

    /// Hand a key over to another node of the region (MIGRATE): remove its whole state
    /// locally, without a delta (the region as a whole still holds it) and without marking
    /// the slot lossy (the key moved, it was not lost). Returns the state that left.
    pub fn take_key(&mut self, key: &[u8]) -> Option<Entry> {
        let slot = key_slot(key);
        let table = self.slots[slot_index(slot)].as_deref_mut()?;
        let node = self.nodes.remove(&mut table.map, key)?;
        let bytes = node_bytes(&node);
        let e = node.body.unpack();
        let alive = e.is_alive();
        let volatile = alive && e.deadline_ms().is_some();
        table.alive -= usize::from(alive);
        table.volatile -= usize::from(volatile);
        table.digest = None;
        let s = &mut self.stats;
        s.keys -= usize::from(alive);
        s.tombstones -= usize::from(!alive);
        s.volatile -= usize::from(volatile);
        s.bytes -= bytes;
        self.release_if_empty(slot);
        Some(e)
    }

    /// Active expiry: look at up to `budget` keys from a rotating cursor, reclaiming expired
    /// ones. Returns how many were reclaimed. Bounded work per call, like Redis' cycle.
    pub fn active_expire(&mut self, now_ms: u64, budget: usize) -> usize {
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let mut looked = 0;
        let mut reclaimed = 0;
        let mut expired_keys: Vec<Key> = Vec::new();
        let mut slots_seen = 0;
        while looked < budget && slots_seen < SLOT_COUNT && self.stats.volatile > 0 {
            let slot = self.expire_cursor as u16;
            self.expire_cursor = (self.expire_cursor + 1) % SLOT_COUNT;
            slots_seen += 1;
            let Some(table) = self.slots[slot_index(slot)].as_deref() else {
                continue;
            };
            if table.volatile == 0 {
                continue;
            }
            for n in self.nodes.iter(&table.map) {
                looked += 1;
                if n.body.is_alive() && n.body.is_expired(now_ms) {
                    expired_keys.push(n.key.clone());
                }
            }
            for k in expired_keys.drain(..) {
                self.reclaim(slot, &k, true);
                reclaimed += 1;
            }
        }
        reclaimed
    }

    /// Evict one key chosen by `policy` among `samples` random candidates. Returns the bytes
    /// freed, or `None` when nothing is evictable under the policy.
    pub fn evict_one(
        &mut self,
        policy: EvictionPolicy,
        samples: usize,
        now_ms: u64,
        rng: &mut impl FnMut() -> u64,
    ) -> Option<usize> {
        if policy == EvictionPolicy::NoEviction || self.stats.keys == 0 {
            return None;
        }
        if policy.volatile_only() && self.stats.volatile == 0 {
            return None;
        }
        let mut best: Option<(u64, u16, Key)> = None;
        for _ in 0..samples.max(1) {
            let Some((slot, n)) = self.sample(rng(), policy.volatile_only()) else {
                break;
            };
            let score = match policy {
                EvictionPolicy::AllKeysLru | EvictionPolicy::VolatileLru => {
                    u64::from(lru_idle_ms(&n.access, now_ms))
                }
                EvictionPolicy::AllKeysLfu | EvictionPolicy::VolatileLfu => {
                    u64::from(u8::MAX - lfu_decayed(&n.access, now_ms))
                }
                EvictionPolicy::VolatileTtl => u64::MAX - n.body.deadline_ms().unwrap_or(u64::MAX),
                _ => rng(),
            };
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, slot, n.key.clone()));
            }
        }
        let (_, slot, key) = best?;
        Some(self.reclaim(slot, &key, false))
    }

    fn sample(&self, r: u64, volatile_only: bool) -> Option<(u16, &Node)> {
        let start = (r % SLOT_COUNT as u64) as usize;
        for i in 0..SLOT_COUNT {
            let slot = (start + i) % SLOT_COUNT;
            let Some(t) = self.slots[slot_index(slot as u16)].as_deref() else {
                continue;
            };
            let n = if volatile_only { t.volatile } else { t.alive };
            if n == 0 {
                continue;
            }
            let pick = ((r >> 14) % n as u64) as usize;
            return self
                .nodes
                .iter(&t.map)
                .filter(|n| n.body.is_alive() && (!volatile_only || n.body.deadline_ms().is_some()))
                .nth(pick)
                .map(|n| (slot as u16, n));
        }
        None
    }

    /// A random live key (RANDOMKEY); `r` is the caller's random number.
    pub fn random_key(&self, r: u64, now_ms: u64) -> Option<Bytes> {
        for attempt in 0..16u64 {
            let (_, n) = self.sample(r.rotate_left(attempt as u32 * 7), false)?;
            if !n.body.is_expired(now_ms) {
                return Some(Bytes::copy_from_slice(&n.key));
            }
        }
        None
    }

    /// Observed remove of every key (`FLUSHALL`): yields a delta per key.
    pub fn delete_all(&mut self, stamp_for: &mut impl FnMut() -> Stamp, now_ms: u64) -> usize {
        let mut keys = Vec::new();
        for t in self.slots.iter().flatten() {
            keys.extend(
                self.nodes
                    .iter(&t.map)
                    .filter(|n| n.body.is_alive())
                    .map(|n| Bytes::copy_from_slice(&n.key)),
            );
        }
        let n = keys.len();
        for k in keys {
            let stamp = stamp_for();
            self.write(&k, stamp, now_ms, |w| w.delete());
        }
        n
    }

    // ---- per-slot access (resharding, anti-entropy, SCAN) ----

    pub fn slot_len(&self, slot: u16) -> usize {
        self.table(slot).map_or(0, |t| t.alive)
    }

    /// Live keys of a slot (expired-but-unreclaimed ones filtered by `now_ms`).
    pub fn slot_keys(
        &self,
        slot: u16,
        now_ms: u64,
    ) -> impl Iterator<Item = (&[u8], Cow<'_, Entry>)> {
        self.table(slot)
            .into_iter()
            .flat_map(|t| self.nodes.iter(&t.map))
            .filter(move |n| n.body.is_alive() && !n.body.is_expired(now_ms))
            .map(|n| (&n.key[..], n.body.view()))
    }

    /// Every entry of a slot, tombstones included (anti-entropy ships them too).
    pub fn slot_entries(&self, slot: u16) -> impl Iterator<Item = (&[u8], Cow<'_, Entry>)> {
        self.table(slot)
            .into_iter()
            .flat_map(|t| self.nodes.iter(&t.map))
            .map(|n| (&n.key[..], n.body.view()))
    }

    /// A key of this slot was evicted or expired locally since the last repair: partial
    /// deltas for absent keys must not rebuild it.
    pub fn slot_is_lossy(&self, slot: u16) -> bool {
        self.lossy[usize::from(slot) / 64] & (1 << (slot % 64)) != 0
    }

    /// Every slot `keep` selects is lossy: this keyspace may have lost keys there it cannot
    /// name (a region restarted empty: its peers hold state of its previous life), so partial
    /// deltas must not rebuild absent keys until anti-entropy has repaired the slot.
    pub fn mark_all_lossy(&mut self, keep: impl Fn(u16) -> bool) {
        for slot in (0..SLOT_COUNT as u16).filter(|&s| keep(s)) {
            self.set_lossy(slot);
        }
        self.start_losses = self.losses;
    }

    /// Undo [`Keyspace::mark_all_lossy`] in the slots no loss happened in since (the start
    /// turned out to be a first one: no peer held anything of this region).
    pub fn clear_start_losses(&mut self) {
        let upto = std::mem::take(&mut self.start_losses);
        let slots: Vec<u16> = self
            .loss_marks
            .iter()
            .filter(|&(_, &m)| m <= upto)
            .map(|(&s, _)| s)
            .collect();
        for slot in slots {
            self.mark_slot_repaired(slot);
        }
    }

    fn set_lossy(&mut self, slot: u16) {
        self.lossy[usize::from(slot) / 64] |= 1 << (slot % 64);
        self.losses += 1;
        self.loss_marks.insert(slot, self.losses);
    }

    /// `None` when the slot is not lossy; otherwise a mark that changes with every further
    /// loss in the slot. Anti-entropy notes it when it digests the slot and repairs the
    /// slot only if the mark is unchanged when the round completes (a key evicted after
    /// the digest was taken is not covered by that round's comparison).
    pub fn slot_loss_mark(&self, slot: u16) -> Option<u64> {
        if !self.slot_is_lossy(slot) {
            return None;
        }
        Some(self.loss_marks.get(&slot).copied().unwrap_or(0))
    }

    /// Anti-entropy repaired the slot: partial deltas may build on absent keys again.
    pub fn mark_slot_repaired(&mut self, slot: u16) {
        self.lossy[usize::from(slot) / 64] &= !(1 << (slot % 64));
        self.loss_marks.remove(&slot);
    }

    /// [`Keyspace::mark_slot_repaired`] if no loss happened in the slot since `mark` was
    /// read from [`Keyspace::slot_loss_mark`]. Returns whether the slot was repaired.
    pub fn mark_slot_repaired_if(&mut self, slot: u16, mark: u64) -> bool {
        if self.slot_loss_mark(slot) != Some(mark) {
            return false;
        }
        self.mark_slot_repaired(slot);
        true
    }

    /// Free a slot's table once it holds no key (tombstones included): a table's bucket
    /// array and header would otherwise outlive its keys, memory eviction cannot free.
    fn release_if_empty(&mut self, slot: u16) {
        let i = slot_index(slot);
        if self.slots[i].as_deref().is_some_and(|t| t.map.is_empty()) {
            self.slots[i] = None;
        }
    }

    /// Drop a whole slot locally (it moved to another node). Returns the keys dropped.
    pub fn drop_slot(&mut self, slot: u16) -> usize {
        let Some(t) = self.slots[slot_index(slot)].take() else {
            return 0;
        };
        let mut bytes = 0;
        let mut tombs = 0;
        for n in self.nodes.iter(&t.map) {
            bytes += node_bytes(n);
            tombs += usize::from(!n.body.is_alive());
        }
        self.nodes.free_table(&t.map);
        let s = &mut self.stats;
        s.keys -= t.alive;
        s.volatile -= t.volatile;
        s.tombstones -= tombs;
        s.bytes -= bytes;
        t.alive
    }

    /// Digest of a slot's observable state: equal on two regions iff (with overwhelming
    /// probability) they hold the same live state for the slot. Cached until the slot changes.
    pub fn slot_digest(&mut self, slot: u16) -> u64 {
        let Some(t) = self.slots[slot_index(slot)].as_deref_mut() else {
            return 0;
        };
        if let Some(d) = t.digest {
            return d;
        }
        let mut acc = 0u64;
        for n in self.nodes.iter(&t.map) {
            if n.body.is_alive() || n.body.floor() != 0 {
                acc = acc.wrapping_add(crate::digest::mix(
                    crate::digest::mix_bytes(0, &n.key),
                    n.body.view().digest(),
                ));
            }
        }
        t.digest = Some(acc);
        acc
    }

    /// Digest of one key's state (anti-entropy key-level comparison); 0 when absent.
    pub fn key_digest(&self, key: &[u8]) -> u64 {
        match self
            .table(key_slot(key))
            .and_then(|t| self.nodes.get(&t.map, key))
        {
            Some(n) if n.body.is_alive() || n.body.floor() != 0 => n.body.view().digest(),
            _ => 0,
        }
    }

    fn note_floor(&mut self, now_ms: u64, key: &[u8], floor: u64) {
        self.floors
            .push_back((now_ms, Bytes::copy_from_slice(key), floor));
        self.stats.invalidation_tombstones = self.floors.len();
    }

    /// Retention of invalidation floors: forget floors raised more than `retention_ms` ago,
    /// and the oldest beyond `max_floors`, at most `budget` per call. A key left with nothing
    /// else is dropped (kept as a CRDT tombstone when `retain_tombstones`). Returns how many
    /// floors were forgotten. After that, a fill at an old version is accepted again: the
    /// documented bound of the guarantee.
    pub fn expire_invalidations(
        &mut self,
        now_ms: u64,
        retention_ms: u64,
        max_floors: usize,
        budget: usize,
    ) -> usize {
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let mut forgotten = 0;
        for _ in 0..budget {
            let Some((at_ms, _, _)) = self.floors.front() else {
                break;
            };
            if at_ms.saturating_add(retention_ms) > now_ms && self.floors.len() <= max_floors {
                break;
            }
            let Some((_, key, floor)) = self.floors.pop_front() else {
                break;
            };
            let slot = key_slot(&key);
            let retain = self.cfg.retain_tombstones;
            let Some(table) = self.slots[slot_index(slot)].as_deref_mut() else {
                continue;
            };
            let Some(mut node) = self.nodes.remove(&mut table.map, &key[..]) else {
                continue;
            };
            if node.body.floor() != floor {
                // Raised again since: a later queue item owns it.
                self.nodes.insert(&mut table.map, node);
                continue;
            }
            let was_alive = node.body.is_alive();
            let prior = Prior {
                existed: true,
                was_alive,
                was_volatile: was_alive && node.body.deadline_ms().is_some(),
                bytes: node_bytes(&node),
            };
            let mut opened = node.body_open();
            let e = opened.entry();
            e.clear_floor();
            let is_alive = e.is_alive();
            let keep = is_alive || (retain && !e.components().is_empty());
            drop(opened);
            self.put_back(slot, node, prior, true, keep);
            forgotten += 1;
        }
        self.stats.invalidation_tombstones = self.floors.len();
        forgotten
    }

    /// Raw entry (tombstones included) for anti-entropy.
    pub fn raw_entry(&self, key: &[u8]) -> Option<Cow<'_, Entry>> {
        let t = self.table(key_slot(key))?;
        Some(self.nodes.get(&t.map, key)?.body.view())
    }

    /// Drop metadata every region has seen: dead members/fields/TTLs whose dots are at or
    /// below `stable(region)`, and whole tombstone keys — once the removals that killed them
    /// are stable too (see [`Entry::gc`] for what `stable` must mean).
    pub fn gc(&mut self, stable: &impl Fn(RegionId) -> Hlc) -> usize {
        if self.stats.tombstones == 0 && !self.cfg.retain_tombstones {
            return 0;
        }
        let mut dropped = 0;
        let mut bytes_delta: isize = 0;
        for slot in self.slots.iter_mut() {
            let Some(t) = slot.as_deref_mut() else {
                continue;
            };
            self.nodes.retain(&mut t.map, |n| {
                // A packed value has nothing dead in it: no tombstone, TTL or reset to collect.
                if matches!(n.body, Stored::Str { .. } | Stored::Ctr { .. }) {
                    return true;
                }
                let before = node_bytes(n) as isize;
                let mut opened = n.body_open();
                let e = opened.entry();
                if e.is_stable_tombstone(stable) {
                    dropped += 1;
                    bytes_delta -= before;
                    return false;
                }
                e.gc(stable, false);
                drop(opened);
                bytes_delta += node_bytes(n) as isize - before;
                true
            });
            if t.map.is_empty() {
                *slot = None;
            }
        }
        self.stats.tombstones -= dropped;
        self.stats.bytes = (self.stats.bytes as isize + bytes_delta).max(0) as usize;
        dropped
    }

    /// Total metadata elements (members, fields, TTL entries, tombstone keys): for checking
    /// that metadata stays bounded.
    pub fn metadata_elements(&self) -> usize {
        let mut n = 0;
        for t in self.slots.iter().flatten() {
            for node in self.nodes.iter(&t.map) {
                let e = node.body.view();
                n += 1 + e.expiry().entries().len();
                for c in e.components() {
                    n += match &c.val {
                        crate::entry::Val::Set(s) => s.element_count(),
                        crate::entry::Val::Hash(h) => h.element_count(),
                        crate::entry::Val::Str(s) => s.ctr.len(),
                    };
                }
            }
        }
        n
    }

    /// Iterate live keys in slot order starting at `cursor` (a slot number), visiting whole
    /// slots until at least `count` keys were visited. Returns the next cursor (0 = done).
    pub fn scan(
        &self,
        cursor: u64,
        count: usize,
        now_ms: u64,
        mut visit: impl FnMut(&[u8], &Entry),
    ) -> u64 {
        let mut slot = cursor as usize;
        let mut seen = 0;
        while slot < SLOT_COUNT {
            if let Some(t) = self.slots[slot_index(slot as u16)].as_deref() {
                for n in self.nodes.iter(&t.map) {
                    if n.body.is_alive() && !n.body.is_expired(now_ms) {
                        visit(&n.key, &n.body.view());
                        seen += 1;
                    }
                }
            }
            slot += 1;
            if seen >= count {
                break;
            }
        }
        if slot >= SLOT_COUNT {
            0
        } else {
            slot as u64
        }
    }
}

impl Entry {
    fn carries(&self, kind: Kind) -> bool {
        self.components().iter().any(|c| c.val.kind() == kind)
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
#[path = "keyspace_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "loss_tests.rs"]
mod loss_tests;
