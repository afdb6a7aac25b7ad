//! The concurrent shell around [`Keyspace`]: slots are spread over a fixed set of shards, each
//! behind its own lock, with a per-shard bounded delta log. The node's HLC lives here (one
//! atomic), as do the runtime memory settings and the counters `INFO` reports.

use crate::replica_stream::ReplFeed;
use bytes::Bytes;
use meridian_crdt::{
    key_slot, Applied, Delta, EvictionPolicy, Hlc, Keyspace, KeyspaceConfig, Prefetch, RegionId,
    Stamp,
};
use parking_lot::{Mutex, MutexGuard};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::AcqRel, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;

/// Number of shard locks. Power of two; slot → shard is `slot % SHARDS`.
pub const SHARDS: usize = 16;

/// What `MERIDIAN DELTAS` shows of one delta.
#[derive(Clone, Debug, Default)]
pub struct DeltaNote {
    pub key: Vec<u8>,
    pub slot: u16,
    pub stamp: Stamp,
    pub full: bool,
}

/// A note's key buffer is reused for the next key unless it grew past this.
const NOTE_KEY_KEEP_BYTES: usize = 256;

/// A ring of the newest deltas' notes.
#[derive(Default)]
struct Notes {
    ring: Vec<DeltaNote>,
    /// The oldest note once the ring is full.
    next: usize,
}

impl Notes {
    /// Keep what `MERIDIAN DELTAS` shows of `d`, over the oldest note when `max` are kept
    /// (then `true`). `max` is the shard's fixed `log_max` (the ring is never resized).
    fn keep(&mut self, d: &Delta, max: usize) -> bool {
        if max == 0 {
            return false;
        }
        let full = self.ring.len() >= max;
        let note = if full {
            let at = self.next;
            self.next = (at + 1) % self.ring.len();
            &mut self.ring[at]
        } else {
            self.ring.push(DeltaNote::default());
            let last = self.ring.len() - 1;
            &mut self.ring[last]
        };
        if note.key.capacity() > NOTE_KEY_KEEP_BYTES && d.key.len() <= NOTE_KEY_KEEP_BYTES {
            note.key = Vec::new();
        }
        note.key.clear();
        note.key.extend_from_slice(&d.key);
        note.slot = d.slot;
        note.stamp = d.stamp;
        note.full = d.full;
        full
    }
}

pub struct Shard {
    pub ks: Keyspace,
    /// Deltas of local writes, oldest first, bounded by `log_max` (multi-region: the
    /// replication task drains it).
    pub log: VecDeque<Delta>,
    /// Without peers nothing ships the log: only what `MERIDIAN DELTAS` shows of the newest
    /// `log_max` deltas is kept, in a ring, with the key copied. A kept `Delta` shares its
    /// key and value with the request's read buffer, so the connection could not reuse that
    /// buffer and would allocate a fresh one for every batch it reads (2–5 % of
    /// throughput under `redis-benchmark -P 16`, measured).
    notes: Notes,
    log_max: usize,
    /// Wake the replication task on new deltas (multi-region only).
    notify: bool,
    /// Keys some connection WATCHes → version bumped on every change.
    watched: HashMap<Bytes, (usize, u64)>,
    /// Keys clients block on (BLPOP and friends) → their waiters, first come first served:
    /// a change to the key wakes the first, which runs its command again (see
    /// [`Shard::block_on`]). Empty but for blocked clients: a write checks `is_empty` only.
    blocked: HashMap<Bytes, VecDeque<Arc<Waiter>>>,
    /// Keyspace hits and misses (counted under the shard lock: no shared atomics).
    pub hits: u64,
    pub misses: u64,
    /// Deltas local writes produced, and those the bounded log dropped unshipped (under the
    /// shard lock: a write touches no shared counter). Summed by [`Store::delta_counts`].
    produced: u64,
    dropped: u64,
    /// The node-wide in-region replication feed (inactive until a replica syncs).
    pub feed: Arc<ReplFeed>,
    /// This shard's index (its slots are those with `slot % SHARDS == index`).
    index: usize,
    /// Deltas the log dropped since the replication task last took them
    /// ([`Shard::take_lost`]). Peers never get those deltas: the replication task reports
    /// them to the link, which repairs their slots before GC may rely on them.
    lost: Lost,
}

/// Words of a shard's lost-slot bitmap: one bit per slot of the shard.
const LOST_WORDS: usize = meridian_crdt::SLOT_COUNT / SHARDS / 64;

/// Deltas dropped from a shard's log: the lowest stamp among them, and their slots, one
/// bit per slot of the shard (`slot / SHARDS`).
#[derive(Default)]
struct Lost {
    below: Option<Hlc>,
    slots: [u64; LOST_WORDS],
}

impl Lost {
    #[cold]
    fn note(&mut self, d: &Delta) {
        self.below = Some(self.below.map_or(d.stamp.hlc, |b| b.min(d.stamp.hlc)));
        let bit = usize::from(d.slot) / SHARDS;
        self.slots[bit / 64] |= 1 << (bit % 64);
    }
}

/// A client blocked on keys (see [`Shard::block_on`]).
pub struct Waiter {
    /// The client's id (one blocking command per connection at a time).
    pub id: u64,
    pub notify: tokio::sync::Notify,
    /// `CLIENT UNBLOCK`: 0 not asked, [`UNBLOCK_TIMEOUT`] or [`UNBLOCK_ERROR`].
    pub unblock: std::sync::atomic::AtomicU8,
}

pub const UNBLOCK_TIMEOUT: u8 = 1;
pub const UNBLOCK_ERROR: u8 = 2;

fn wake_first(blocked: &HashMap<Bytes, VecDeque<Arc<Waiter>>>, key: &[u8]) {
    if let Some(w) = blocked.get(key).and_then(VecDeque::front) {
        w.notify.notify_one();
    }
}

/// Some shards' guards, with their indices (a command's locks).
pub type SomeGuards<'s> = smallvec::SmallVec<[(usize, MutexGuard<'s, Shard>); 2]>;

/// State from elsewhere, for [`Store::merge_remote`].
pub enum Remote<'a> {
    /// A peer region's delta: `Keyspace::apply_delta` (a partial delta for a key of a slot
    /// this node lost is refused until anti-entropy repaired the slot).
    Delta(&'a Delta),
    /// A whole key state (anti-entropy, a snapshot, MIGRATE), or a change this replica's
    /// primary applied: merged as it is.
    State(&'a [u8], &'a meridian_crdt::Entry),
}

impl Shard {
    /// Move the keyspace's fresh deltas into the bounded log (without peers: their notes)
    /// and the in-region feed, and bump watched keys.
    pub fn after_write(&mut self, stats: &Stats) {
        let watched = !self.watched.is_empty();
        let blocked = !self.blocked.is_empty();
        let mut logged = false;
        let feed = self.feed.is_active();
        for d in self.ks.drain_deltas() {
            self.produced += 1;
            if feed {
                // Offsets are assigned here, under this shard's lock.
                self.feed.push_delta(&d);
            }
            if watched {
                if let Some((_, v)) = self.watched.get_mut(&d.key) {
                    *v += 1;
                }
            }
            if blocked {
                wake_first(&self.blocked, &d.key);
            }
            if self.log_max == 0 {
                continue;
            }
            if !self.notify {
                if self.notes.keep(&d, self.log_max) {
                    self.dropped += 1;
                }
                continue;
            }
            if self.log.len() >= self.log_max {
                if let Some(lost) = self.log.pop_front() {
                    self.lost.note(&lost);
                }
                self.dropped += 1;
                stats.deltas_dropped.fetch_add(1, Relaxed);
            }
            self.log.push_back(d);
            logged = true;
        }
        if logged {
            // Wake the replication task only for the first delta since its last drain: a
            // burst of writes costs one wake-up (a syscall across threads), not one each.
            // Set under the shard lock, cleared by the drain before it locks the shards.
            if !stats.deltas_pending.swap(true, AcqRel) {
                if DEFER_WAKE.get() {
                    stats.wake_owed.store(true, Release);
                } else {
                    stats.delta_notify.notify_one();
                }
            }
        }
    }

    /// Move the log's deltas to `out` (the replication task's drain). A log that held a
    /// burst gives its memory back once the deltas come in smaller runs again: a drained
    /// `VecDeque` keeps its greatest capacity otherwise (up to `log_max` deltas per shard).
    pub fn drain_log_into(&mut self, out: &mut Vec<Delta>) {
        let n = self.log.len();
        out.extend(self.log.drain(..));
        const KEEP: usize = 1024;
        if self.log.capacity() > KEEP && n < self.log.capacity() / 4 {
            self.log.shrink_to((n * 2).max(KEEP));
        }
    }

    /// The deltas the log dropped since the last call: the lowest stamp among them and
    /// their slots (`None`: none dropped). The replication task calls it when it drains the
    /// log, under the same lock, so a drain never misses a loss older than what it ships.
    pub fn take_lost(&mut self) -> Option<(Hlc, Vec<u16>)> {
        let below = self.lost.below.take()?;
        let mut slots = Vec::new();
        for (w, word) in self.lost.slots.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                slots.push(((w * 64 + b) * SHARDS + self.index) as u16);
            }
        }
        Some((below, slots))
    }

    /// What `MERIDIAN DELTAS` shows of the deltas this shard keeps (log or notes).
    pub fn recent_deltas(&self) -> impl Iterator<Item = DeltaNote> + '_ {
        let logged = self.log.iter().map(|d| DeltaNote {
            key: d.key.to_vec(),
            slot: d.slot,
            stamp: d.stamp,
            full: d.full,
        });
        logged.chain(self.notes.ring.iter().cloned())
    }

    /// A remote change to `key` invalidates its watchers.
    pub fn touch_key(&mut self, key: &[u8]) {
        if let Some((_, v)) = self.watched.get_mut(key) {
            *v += 1;
        }
        if !self.blocked.is_empty() {
            wake_first(&self.blocked, key);
        }
    }

    /// Queue `waiter` on `key`: a change to the key wakes the first waiter in line (it runs
    /// its command again and, served or gone, leaves with [`Shard::unblock`], which wakes
    /// the next: what one push adds goes to the client that blocked first, as in Redis).
    /// Returns whether it is first in line.
    pub fn block_on(&mut self, key: &Bytes, waiter: &Arc<Waiter>) -> bool {
        let q = self.blocked.entry(key.clone()).or_default();
        q.push_back(waiter.clone());
        q.len() == 1
    }

    /// Take the waiter `id` off `key`'s line, and wake the next one (what the leaving one
    /// did not take, or left behind, is the next one's).
    pub fn unblock(&mut self, key: &[u8], id: u64) {
        if let Some(q) = self.blocked.get_mut(key) {
            q.retain(|w| w.id != id);
            if q.is_empty() {
                self.blocked.remove(key);
            } else {
                wake_first(&self.blocked, key);
            }
        }
    }

    pub fn watch(&mut self, key: &Bytes) -> u64 {
        let e = self.watched.entry(key.clone()).or_insert((0, 0));
        e.0 += 1;
        e.1
    }

    /// Keys with WATCH registrations (for tests).
    #[cfg(test)]
    pub(crate) fn watched_keys(&self) -> usize {
        self.watched.len()
    }

    pub fn watch_version(&self, key: &[u8]) -> u64 {
        self.watched.get(key).map_or(0, |e| e.1)
    }

    pub fn unwatch(&mut self, key: &[u8]) {
        if let Some(e) = self.watched.get_mut(key) {
            e.0 = e.0.saturating_sub(1);
            if e.0 == 0 {
                self.watched.remove(key);
            }
        }
    }

    /// A change not seen as a delta (FLUSHALL, expiry) invalidates every watcher here.
    pub fn touch_all_watched(&mut self) {
        for (_, v) in self.watched.values_mut() {
            *v += 1;
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub commands: AtomicU64,
    /// Clients waiting in a blocking command (INFO `blocked_clients`).
    pub blocked_clients: AtomicUsize,
    /// The waiters of blocked clients by client id (`CLIENT UNBLOCK`); touched only when a
    /// client blocks or leaves a blocking command.
    pub waiters: Mutex<HashMap<u64, Arc<Waiter>>>,
    pub connections_received: AtomicU64,
    pub connected_clients: AtomicUsize,
    pub rejected_connections: AtomicU64,
    /// Deltas dropped from a shard log while regions replicate (see [`Store::delta_counts`]
    /// for the totals).
    pub deltas_dropped: AtomicU64,
    pub ops_per_sec: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Clients on `tls-port` that failed the TLS handshake (plain text, no or a bad client
    /// certificate, a timeout).
    pub tls_handshake_failures: AtomicU64,
    /// Local `SET … VERSION n` refused at or below the key's invalidation floor.
    pub stale_fills_refused: AtomicU64,
    /// Deltas and anti-entropy entries from other regions refused for a slot this node
    /// does not serve ([`ServedSlots`]).
    pub refused_not_served: AtomicU64,
    /// Signalled when a shard log receives deltas while `deltas_pending` was clear (the
    /// replication task waits on it).
    pub delta_notify: tokio::sync::Notify,
    /// Some shard log got deltas since the replication task last started a drain.
    pub deltas_pending: AtomicBool,
    /// A wake-up of the replication task put off by [`Store::defer_replication_wake`].
    wake_owed: AtomicBool,
}

thread_local! {
    /// This thread runs client requests between [`Store::defer_replication_wake`] and
    /// [`Store::flush_replication_wake`].
    static DEFER_WAKE: Cell<bool> = const { Cell::new(false) };
}

/// Settings `CONFIG SET` may change at run time.
pub struct Runtime {
    pub maxmemory: AtomicU64,
    pub policy: Mutex<EvictionPolicy>,
    pub samples: AtomicUsize,
    pub maxclients: AtomicUsize,
    pub proto_max_bulk_len: AtomicUsize,
    /// The largest key state (key length + `Entry::heap_bytes`) a local write may leave:
    /// what one replication frame carries (`meridian_replication::LINK_MAX_ENTRY_BYTES` with
    /// peer regions, `REPLICA_MAX_ENTRY_BYTES` without). A larger write is refused.
    pub max_entry_bytes: usize,
}

#[cfg(test)]
impl Runtime {
    /// The unit tests' runtime: `maxmemory`, no eviction, 5 samples, 10 clients, 1 MiB
    /// bulks, the region link's entry bound.
    pub(crate) fn for_tests(maxmemory: u64) -> Runtime {
        Runtime {
            maxmemory: AtomicU64::new(maxmemory),
            policy: Mutex::new(meridian_crdt::EvictionPolicy::NoEviction),
            samples: AtomicUsize::new(5),
            maxclients: AtomicUsize::new(10),
            proto_max_bulk_len: AtomicUsize::new(1 << 20),
            max_entry_bytes: meridian_replication::LINK_MAX_ENTRY_BYTES,
        }
    }
}

pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    clock: AtomicU64,
    region: RegionId,
    pub stats: Stats,
    pub runtime: Runtime,
    used_memory: AtomicU64,
    used_memory_at_ms: AtomicU64,
    /// Per shard, the last read of its keyspace's unused slab bytes (a shard whose lock is
    /// taken when `used_memory` refreshes keeps its previous figure).
    slab_free: Box<[AtomicU64]>,
    next_evict_shard: AtomicUsize,
    feed: Arc<ReplFeed>,
    /// The slots this node may store (see [`ServedSlots`]).
    pub served: ServedSlots,
}

/// The slots this node serves, so may store: all of them outside a cluster; in a cluster
/// those its primary (itself, or the one it replicates) owns or it imports. The cluster
/// shell rewrites it after every change of the topology (`cluster::publish_served`);
/// what arrives from another region for any other slot is refused (`ShellStore`).
pub struct ServedSlots {
    bits: Box<[AtomicU64]>,
}

impl ServedSlots {
    const WORDS: usize = meridian_crdt::SLOT_COUNT / 64;

    pub fn all() -> ServedSlots {
        ServedSlots {
            bits: (0..Self::WORDS).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }

    #[inline]
    pub fn serves(&self, slot: u16) -> bool {
        let s = usize::from(slot);
        self.bits
            .get(s / 64)
            .is_some_and(|w| w.load(Relaxed) & (1 << (s % 64)) != 0)
    }

    /// Replace the set with the slots `serves` accepts; returns how many changed.
    pub fn publish(&self, serves: impl Fn(u16) -> bool) -> u32 {
        let mut changed = 0;
        for (i, w) in self.bits.iter().enumerate() {
            let mut word = 0u64;
            for b in 0..64 {
                if serves((i * 64 + b) as u16) {
                    word |= 1 << b;
                }
            }
            let old = w.swap(word, Relaxed);
            changed += (old ^ word).count_ones();
        }
        changed
    }

    pub fn count(&self) -> u32 {
        self.bits.iter().map(|w| w.load(Relaxed).count_ones()).sum()
    }
}

/// Requests (or replicated changes) a batch keeps decoded ahead of the one running, for
/// [`Store::prefetch_ahead`].
pub const PREFETCH_AHEAD: usize = 6;

/// What the prefetch stages need of one request: its first key's slot and bytes and the
/// member or field it names (`None`: nothing to prefetch for it).
pub type Hint<'k> = Option<(u16, &'k [u8], Option<&'k [u8]>)>;

pub fn shard_of(slot: u16) -> usize {
    usize::from(slot) % SHARDS
}

pub fn key_shard(key: &[u8]) -> usize {
    shard_of(key_slot(key))
}

impl Store {
    /// `replicated`: keyspaces keep tombstones (peers need them) and new deltas wake the
    /// replication task.
    pub fn new(
        region: RegionId,
        seed: u64,
        log_max: usize,
        runtime: Runtime,
        replicated: bool,
    ) -> Store {
        let feed = Arc::new(ReplFeed::new(crate::replica_stream::DEFAULT_BACKLOG_BYTES));
        let shards = (0..SHARDS)
            .map(|i| {
                let mut ks = Keyspace::new(KeyspaceConfig {
                    region,
                    retain_tombstones: replicated,
                    seed: seed.wrapping_add(i as u64),
                });
                if replicated {
                    // A start cannot tell itself from an empty restart: peers may hold state
                    // of an earlier life that this node lost, so partial deltas must not
                    // rebuild absent keys until the restart handshake shows a first start
                    // (`clear_start_losses`) or anti-entropy repaired the slot.
                    ks.mark_all_lossy(|slot| shard_of(slot) == i);
                }
                Mutex::new(Shard {
                    ks,
                    log: VecDeque::new(),
                    notes: Notes::default(),
                    log_max,
                    notify: replicated,
                    watched: HashMap::new(),
                    blocked: HashMap::new(),
                    hits: 0,
                    produced: 0,
                    dropped: 0,
                    misses: 0,
                    feed: feed.clone(),
                    index: i,
                    lost: Lost::default(),
                })
            })
            .collect();
        Store {
            shards,
            clock: AtomicU64::new(0),
            region,
            stats: Stats::default(),
            runtime,
            used_memory: AtomicU64::new(0),
            used_memory_at_ms: AtomicU64::new(0),
            slab_free: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            next_evict_shard: AtomicUsize::new(0),
            feed,
            served: ServedSlots::all(),
        }
    }

    /// The in-region replication feed (the same one every shard holds).
    pub fn feed(&self) -> &Arc<ReplFeed> {
        &self.feed
    }

    /// Undo the start's lossy marking (`Store::new`) in every slot no loss happened in since:
    /// the restart handshake found a first start, or a replica's full resync made it hold
    /// its primary's whole state.
    pub fn clear_start_losses(&self) {
        for s in &self.shards {
            s.lock().ks.clear_start_losses();
        }
    }

    /// Drop every key locally, without deltas (a replica's full resync starts from empty).
    pub fn drop_all_slots(&self) {
        for (i, s) in self.shards.iter().enumerate() {
            let mut s = s.lock();
            for slot in (i..meridian_crdt::SLOT_COUNT).step_by(SHARDS) {
                s.ks.drop_slot(slot as u16);
            }
            s.touch_all_watched();
        }
    }

    pub fn region(&self) -> RegionId {
        self.region
    }

    /// A fresh HLC stamp for a local write at physical time `now_ms`.
    pub fn stamp(&self, now_ms: u64) -> Stamp {
        let mut last = self.clock.load(Relaxed);
        loop {
            let next = Hlc(last).tick(now_ms);
            match self
                .clock
                .compare_exchange_weak(last, next.0, Relaxed, Relaxed)
            {
                Ok(_) => return Stamp::new(next, self.region),
                Err(actual) => last = actual,
            }
        }
    }

    /// The node clock's last issued (or observed) HLC.
    pub fn last_hlc(&self) -> Hlc {
        Hlc(self.clock.load(Relaxed))
    }

    /// Fold a remote HLC into the node clock.
    /// The one entry for state from elsewhere — a peer region (its deltas, anti-entropy),
    /// this node's primary (the replica stream), another node of the region (MIGRATE's
    /// target): merge it into `shard` (locked by the caller), and when that changed
    /// anything, bump the key's watchers and feed this node's own replicas (a no-op on a
    /// replica); then fold its stamp into the node's clock.
    pub fn merge_remote(&self, shard: &mut Shard, remote: Remote<'_>) -> Applied {
        let (applied, hlc) = match remote {
            Remote::Delta(d) => {
                let r = shard.ks.apply_delta(d);
                if r == Applied::Changed {
                    shard.touch_key(&d.key);
                    shard.feed.push_delta(d);
                }
                (r, d.stamp.hlc)
            }
            Remote::State(key, state) => {
                let r = shard.ks.merge_state(key, true, state);
                if r == Applied::Changed {
                    shard.touch_key(key);
                    shard.feed.push_state(key, state);
                }
                (r, state.max_hlc())
            }
        };
        self.observe(hlc);
        applied
    }

    pub fn observe(&self, hlc: Hlc) {
        self.clock.fetch_max(hlc.0, Relaxed);
    }

    pub fn shard(&self, idx: usize) -> MutexGuard<'_, Shard> {
        self.shards[idx].lock()
    }

    /// A lookup hint for a command further down a pipeline (see `Keyspace::prefetch`),
    /// through a guard `held` has, else only if the shard's lock is free right now (a hint
    /// never waits); `held` keeps that guard if it keeps several.
    fn prefetch<'s>(
        &'s self,
        held: &mut Held<'s>,
        stage: Prefetch,
        slot: u16,
        key: &[u8],
        element: Option<&[u8]>,
    ) {
        let i = shard_of(slot);
        if let Some(shard) = held.get(i) {
            shard.ks.prefetch(stage, slot, key, element);
        } else if let Some(shard) = self.shards[i].try_lock() {
            shard.ks.prefetch(stage, slot, key, element);
            if held.many {
                held.put(i, shard);
            }
        }
    }

    /// The guard of shard `i`: from `held`, else taken now if that needs no wait. `None`
    /// when another thread has it.
    pub fn try_take<'s>(&'s self, held: &mut Held<'s>, i: usize) -> Option<MutexGuard<'s, Shard>> {
        held.take(i).or_else(|| self.shards[i].try_lock())
    }

    /// While one request of a batch runs, prefetch for the next ones (`keys`, the next
    /// first: slot, key and the member or field it names, if any; `None` for one with no key
    /// to fetch): the slot table of the sixth, the node of the fourth, the value (or the
    /// member's or field's entry) of the second. Each stage reads what the one before fetched,
    /// two requests earlier: one request's worth of work was not always enough for a line
    /// to arrive.
    pub fn prefetch_ahead<'s, 'k>(
        &'s self,
        held: &mut Held<'s>,
        keys: impl Iterator<Item = Hint<'k>>,
    ) {
        for (distance, key) in (1..=PREFETCH_AHEAD).zip(keys) {
            let stage = match distance {
                2 => Prefetch::Value,
                4 => Prefetch::Node,
                6 => Prefetch::Table,
                _ => continue,
            };
            if let Some((slot, key, element)) = key {
                self.prefetch(held, stage, slot, key, element);
            }
        }
    }

    /// Before the first request of a batch runs (`keys`: that request, then the ones parsed
    /// ahead): the stages [`Store::prefetch_ahead`] would have run for the next ones, had the
    /// batch been under way. Without this ramp the first six requests of every batch went
    /// without some stage, and at `-P 16` that is six in sixteen. All their slot tables are
    /// requested at once, then the nodes of the first four (the one about to run included:
    /// its miss then overlaps the others), then the value of the second; with
    /// `prefetch_ahead` for the first request each of them gets every stage once.
    pub fn prefetch_ramp<'s, 'k>(
        &'s self,
        held: &mut Held<'s>,
        keys: impl Iterator<Item = Hint<'k>> + Clone,
    ) {
        for (stage, range) in [
            (Prefetch::Table, 0..PREFETCH_AHEAD),
            (Prefetch::Node, 0..4),
            (Prefetch::Value, 1..2),
        ] {
            let (skip, take) = (range.start, range.end - range.start);
            for (slot, key, element) in keys.clone().skip(skip).take(take).flatten() {
                self.prefetch(held, stage, slot, key, element);
            }
        }
    }

    /// Until [`Store::flush_replication_wake`] on this thread, a write's wake-up of the
    /// replication task is noted instead of done. A connection defers it while it runs a
    /// batch and flushes it once the replies are written (before it can wait on anything):
    /// the wake-up (a futex syscall, and a thread the scheduler may run on this core at
    /// once) then comes after the client has its reply, not in front of it.
    pub fn defer_replication_wake(&self) {
        DEFER_WAKE.set(true);
    }

    /// Stop deferring on this thread, and wake the replication task if a write owes it.
    pub fn flush_replication_wake(&self) {
        DEFER_WAKE.set(false);
        if self.stats.wake_owed.swap(false, AcqRel) {
            self.stats.delta_notify.notify_one();
        }
    }

    /// Start a drain of the delta logs: later deltas wake the replication task again.
    /// Call before locking the shards to drain them.
    pub fn arm_delta_wakeup(&self) {
        self.stats.deltas_pending.swap(false, AcqRel);
    }

    /// Lock every shard in index order (the global lock order).
    pub fn lock_all(&self) -> Vec<MutexGuard<'_, Shard>> {
        self.shards.iter().map(|s| s.lock()).collect()
    }

    /// Lock the given shards (deduplicated, ascending: deadlock-free).
    pub fn lock_some(&self, idxs: &mut [usize]) -> SomeGuards<'_> {
        idxs.sort_unstable();
        let mut out = SomeGuards::new();
        for (n, &i) in idxs.iter().enumerate() {
            if n == 0 || idxs[n - 1] != i {
                out.push((i, self.shards[i].lock()));
            }
        }
        out
    }

    /// (hits, misses) summed over shards.
    pub fn hits_misses(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(h, m), s| {
            let s = s.lock();
            (h + s.hits, m + s.misses)
        })
    }

    /// (deltas produced, deltas dropped from the logs) summed over shards.
    pub fn delta_counts(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(p, d), s| {
            let s = s.lock();
            (p + s.produced, d + s.dropped)
        })
    }

    pub fn reset_hits_misses(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock();
            s.hits = 0;
            s.misses = 0;
        }
    }

    pub fn key_count(&self) -> (usize, usize) {
        let mut keys = 0;
        let mut volatile = 0;
        for s in self.shards.iter() {
            let s = s.lock();
            keys += s.ks.len();
            volatile += s.ks.stats().volatile;
        }
        (keys, volatile)
    }

    pub fn sum_stats(&self) -> meridian_crdt::KeyspaceStats {
        let mut t = meridian_crdt::KeyspaceStats::default();
        for s in self.shards.iter() {
            let s = s.lock();
            let k = s.ks.stats();
            t.keys += k.keys;
            t.tombstones += k.tombstones;
            t.volatile += k.volatile;
            t.bytes += k.bytes;
            t.expired += k.expired;
            t.evicted += k.evicted;
            t.deltas_applied += k.deltas_applied;
            t.partial_deltas_dropped += k.partial_deltas_dropped;
            t.invalidation_tombstones += k.invalidation_tombstones;
            t.stale_fills_hidden += k.stale_fills_hidden;
        }
        t
    }

    /// Bytes the allocator reports in use, less the keyspaces' unused node-slab bytes (free
    /// for new keys, like an allocator's own free lists): what `maxmemory` is compared
    /// with. Refreshed at most once per millisecond. Never waits for a shard lock (the
    /// caller may hold one): a busy shard counts with its previous figure.
    pub fn used_memory(&self, now_ms: u64) -> u64 {
        if self.used_memory_at_ms.swap(now_ms, Relaxed) != now_ms {
            self.used_memory.store(self.used_memory_now(), Relaxed);
        }
        self.used_memory.load(Relaxed)
    }

    /// [`Store::used_memory`] read now (INFO, metrics).
    pub fn used_memory_now(&self) -> u64 {
        let mut free = 0;
        for (shard, cached) in self.shards.iter().zip(self.slab_free.iter()) {
            if let Some(s) = shard.try_lock() {
                cached.store(s.ks.slab_free_bytes() as u64, Relaxed);
            }
            free += cached.load(Relaxed);
        }
        crate::memory::allocated_bytes().saturating_sub(free)
    }

    /// Evict keys until memory is under `maxmemory`. Returns false if the limit is exceeded
    /// and nothing more can be evicted (the caller answers -OOM to writes).
    pub fn enforce_maxmemory(&self, now_ms: u64, rng: &mut impl FnMut() -> u64) -> bool {
        let max = self.runtime.maxmemory.load(Relaxed);
        if max == 0 {
            return true;
        }
        let used = self.used_memory(now_ms);
        if used <= max {
            return true;
        }
        let policy = *self.runtime.policy.lock();
        if policy == EvictionPolicy::NoEviction {
            return false;
        }
        let samples = self.runtime.samples.load(Relaxed).max(1);
        let mut to_free = (used - max) as usize;
        // A local cursor: concurrent evictors (clients, the background cycle) each visit
        // every shard before concluding nothing is evictable.
        let mut cursor = self.next_evict_shard.fetch_add(1, Relaxed);
        let mut fruitless = 0;
        while to_free > 0 && fruitless < SHARDS {
            let i = cursor % SHARDS;
            cursor = cursor.wrapping_add(1);
            let mut shard = self.shards[i].lock();
            match shard.ks.evict_one(policy, samples, now_ms, rng) {
                Some(freed) => {
                    fruitless = 0;
                    shard.touch_all_watched();
                    to_free = to_free.saturating_sub(freed.max(1));
                }
                None => fruitless += 1,
            }
        }
        // Force a fresh allocator reading on the next check.
        self.used_memory_at_ms.store(0, Relaxed);
        to_free == 0
    }

    /// Retention of invalidation floors (see `Keyspace::expire_invalidations`); `max_total`
    /// is spread evenly over the shards. Bounded work per call.
    pub fn expire_invalidations(&self, now_ms: u64, retention_ms: u64, max_total: usize) {
        let per_shard = (max_total / SHARDS).max(1);
        for s in self.shards.iter() {
            let mut s = s.lock();
            if s.ks.stats().invalidation_tombstones > 0 {
                s.ks.expire_invalidations(now_ms, retention_ms, per_shard, 10_000);
            }
        }
    }

    pub fn active_expire(&self, now_ms: u64, budget_per_shard: usize) -> usize {
        let mut n = 0;
        for s in self.shards.iter() {
            let mut s = s.lock();
            let reclaimed = s.ks.active_expire(now_ms, budget_per_shard);
            if reclaimed > 0 {
                s.touch_all_watched();
            }
            n += reclaimed;
        }
        n
    }
}

/// Shard locks a client connection keeps from one command of a pipelined batch to the next
/// (never across an await: [`Held::release`] first). A command whose shards are all held,
/// or free at once, runs without taking and releasing a lock, and the prefetch hints for the
/// requests parsed ahead go through the same guards: a lock and an unlock are two locked
/// instructions, each waiting for every load before it, which stalls a pipeline whose
/// lookups were prefetched to overlap. A hot key (`SADD myset …` from many clients) also
/// stops bouncing its shard's cache lines between cores at every command.
///
/// With one client thread (`many`) a batch keeps every shard it touched; the other lockers
/// (the replication and Kafka threads) wait at most one batch. With several client threads
/// it keeps one, as they would otherwise queue on each other's batches. Taking a guard
/// while holding others is only ever a `try_lock`: a thread that must wait for a shard
/// releases everything first, so no thread waits while holding one (no deadlock).
pub struct Held<'s> {
    guards: [Option<MutexGuard<'s, Shard>>; SHARDS],
    /// Keep every guard taken, not just the last command's one.
    pub many: bool,
}

impl<'s> Held<'s> {
    pub fn new(many: bool) -> Held<'s> {
        Held {
            guards: Default::default(),
            many,
        }
    }

    /// Release every guard.
    pub fn release(&mut self) {
        self.guards = Default::default();
    }

    pub fn get(&self, i: usize) -> Option<&Shard> {
        self.guards[i].as_deref()
    }

    pub fn take(&mut self, i: usize) -> Option<MutexGuard<'s, Shard>> {
        self.guards[i].take()
    }

    /// Keep `guard` (of shard `i`); unless `many`, in place of any other.
    pub fn put(&mut self, i: usize, guard: MutexGuard<'s, Shard>) {
        if !self.many {
            self.release();
        }
        self.guards[i] = Some(guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(maxmemory: u64) -> Store {
        let runtime = Runtime::for_tests(maxmemory);
        Store::new(RegionId(1), 7, 16, runtime, false)
    }

    /// A delta dropped from a full log is reported once, with its slot and stamp: the
    /// oldest is dropped, so the lowest stamp is the first dropped one.
    #[test]
    fn a_delta_dropped_from_the_log_is_reported_with_its_slot() {
        let runtime = Runtime::for_tests(0);
        let store = Store::new(RegionId(1), 7, 2, runtime, true);
        // Three keys of one shard, distinct slots.
        let keys: Vec<String> = (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| key_shard(k.as_bytes()) == 3)
            .take(3)
            .collect();
        let mut stamps = Vec::new();
        let mut shard = store.shard(3);
        assert_eq!(shard.take_lost(), None);
        for (i, k) in keys.iter().enumerate() {
            let st = store.stamp(1_000 + i as u64);
            stamps.push(st);
            shard.ks.write(k.as_bytes(), st, 1_000, |w| {
                w.set_str(Bytes::from_static(b"v"), false)
            });
            shard.after_write(&store.stats);
        }
        assert_eq!(shard.log.len(), 2, "the bound holds");
        let (below, slots) = shard.take_lost().expect("one delta dropped");
        assert_eq!(below, stamps[0].hlc);
        assert_eq!(slots, vec![key_slot(keys[0].as_bytes())]);
        assert_eq!(shard.take_lost(), None, "reported once");
    }

    /// No limit means room for every write (a connection that read a limit just before
    /// `CONFIG SET maxmemory 0` must not answer -OOM).
    #[test]
    fn without_a_limit_there_is_always_room() {
        let mut rng = || 4u64;
        assert!(store(0).enforce_maxmemory(1, &mut rng));
        // A limit far below what the process already uses, with nothing to evict: no room.
        assert!(!store(1).enforce_maxmemory(1, &mut rng));
    }
}
