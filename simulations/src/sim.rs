//! The deterministic simulator: N regions, each a real `Keyspace` behind a real
//! `RegionLink`, connected by a faulty network, all driven by one seeded RNG and virtual
//! time. Phase 1 runs the workload under faults; phase 2 heals everything, lets the
//! protocol quiesce, collects garbage, and runs the checkers.
//!
//! Every fault is on by default ([`Faults`]); a switch only turns one off, for debugging:
//! partitions (symmetric, one-way, isolation), loss, duplication, reordering, crashes
//! (the keyspace survives), empty restarts (a region loses all its state and starts again
//! with a fresh keyspace, link and clock), eviction of live keys and writes to them before
//! anti-entropy repaired their slot, key expiry (short TTLs, the active cycle, lazy expiry
//! on reads and writes), garbage collection during faults, overflow of the bounded
//! per-region delta log (a starved replication loop), clock skew with far jumps ahead (and
//! back), type conflicts, invalidation floors; and, after the fault phase, one region cut
//! off for longer than the GC bound (`LinkConfig::peer_gc_bound_ms`; half the time one way
//! only: it still hears the others): the others expel it from GC and collect without it,
//! then refuse it when it comes back (or, half the time, an operator forgets it everywhere
//! first); the operator restarts it empty once it is told it is refused, and it is
//! readmitted and bootstraps. What it wrote that never left it is lost with its state (the
//! oracle forgets atoms no copy holds), nothing else.
//!
//! Checkers, during the fault phase (per region, as soon as its state changes):
//! - `local`: an acknowledged write is live in its region's state right after it, and an
//!   atom once live in a region's state (a register, an increment, a member) stays live
//!   there until a removal the oracle recorded (or a later write) replaces it — unless the
//!   region lost its copy of the key (eviction, expiry, empty restart) in between;
//! - `floor`: a region's invalidation floor for a key never goes down, whatever it evicts or
//!   expires (only an empty restart resets it);
//! - `partial`: a region that lost a key (eviction, expiry, empty restart) never rebuilds it
//!   from a partial delta before its slot was repaired;
//!
//! and after heal: `liveness` (convergence), `value` (the oracle, per region and at its
//! clock), `ttl` (the converged deadline is the oracle's, and the same everywhere), `gc`
//! (metadata bounded, tombstones collected), `repair` (no lossy slot left).

use crate::oracle::{
    entry_contains, fmt_entry, fmt_stamp, incarnation_of, render, zincarnation_of, KeyModel,
    Rendered, View,
};
use bytes::Bytes;
use meridian_crdt::digest::{mix, mix_bytes};
use meridian_crdt::{
    key_slot, Applied, CrdtError, Delta, Entry, EvictionPolicy, Hlc, HlcClock, Keyspace,
    KeyspaceConfig, Kind, RegionId, Stamp, Val, SLOT_COUNT,
};
use meridian_replication::{
    decode, Frame, FrameEncoder, LinkConfig, LinkStore, RegionLink, DEFAULT_MAX_CLOCK_OFFSET_MS,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A deliberate bug, for showing that the checkers have teeth.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Receivers silently drop any incoming state carrying this region's counter
    /// contribution (a merge that loses one region's increments).
    DropCounterContributionsOf(RegionId),
    /// A full delta replaces the receiver's state for the key instead of joining it.
    MergeReplacesLocalState,
    /// Eviction forgets the key's invalidation floor along with its value.
    EvictionDropsFloor,
    /// `SET` without `EX` keeps the key's TTL (the documented rule clears it).
    SetKeepsTtl,
    /// A region silently forgets a key it just wrote (no eviction, no expiry recorded).
    SilentLocalLoss,
    /// A partial delta for a key the region lost rebuilds it as if it were whole.
    PartialDeltaRebuildsLostKey,
    /// A merge drops an incoming component of another type than the visible one.
    DropConcurrentTypeChange,
    /// Local expiry replicates as a `DEL`.
    ExpiryReplicatesDelete,
}

impl Bug {
    pub const NAMES: [(&'static str, Bug); 8] = [
        ("drop-counter", Bug::DropCounterContributionsOf(RegionId(1))),
        ("merge-replaces", Bug::MergeReplacesLocalState),
        ("evict-drops-floor", Bug::EvictionDropsFloor),
        ("set-keeps-ttl", Bug::SetKeepsTtl),
        ("silent-local-loss", Bug::SilentLocalLoss),
        ("partial-rebuilds", Bug::PartialDeltaRebuildsLostKey),
        ("drop-type-change", Bug::DropConcurrentTypeChange),
        ("expiry-replicates", Bug::ExpiryReplicatesDelete),
    ];

    pub fn parse(name: &str) -> Option<Bug> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, b)| *b == self)
            .map_or("?", |(n, _)| n)
    }
}

/// The fault modes. All on by default; turning one off is for debugging only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Collect garbage during the fault phase too (not only after heal).
    pub gc_during_faults: bool,
    /// Evict live keys (whatever other regions hold of them).
    pub evictions: bool,
    /// Write to keys in slots a region lost keys of, before anti-entropy repaired them.
    pub writes_on_evicted: bool,
    /// Keys with TTLs that expire during the run; the active expiry cycle; lazy expiry.
    pub expiry: bool,
    /// A region loses all its state and restarts with a fresh keyspace, link and clock.
    pub empty_restarts: bool,
    /// The per-region delta log is bounded and its replication loop starves: deltas are
    /// dropped before they are shipped.
    pub log_overflow: bool,
    /// A region's clock jumps far ahead (seconds past the offset bound, or hours), then back.
    pub clock_jumps: bool,
    /// Keys written with different types concurrently.
    pub type_conflicts: bool,
    /// Cache-aside keys: versioned fills and invalidations (floors).
    pub invalidations: bool,
    /// After the fault phase, one region is cut off past the GC bound, expelled, refused
    /// when it comes back (or forgotten), restarted empty and readmitted.
    pub expulsions: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            gc_during_faults: true,
            evictions: true,
            writes_on_evicted: true,
            expiry: true,
            empty_restarts: true,
            log_overflow: true,
            clock_jumps: true,
            type_conflicts: true,
            invalidations: true,
            expulsions: true,
        }
    }
}

impl Faults {
    /// `--no-<name>` switches, in order.
    pub const NAMES: [&'static str; 10] = [
        "gc-during-faults",
        "evictions",
        "writes-on-evicted",
        "expiry",
        "empty-restarts",
        "log-overflow",
        "clock-jumps",
        "type-conflicts",
        "invalidations",
        "expulsions",
    ];

    /// The switch called `name` (see [`Faults::NAMES`]).
    pub fn switch(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "gc-during-faults" => &mut self.gc_during_faults,
            "evictions" => &mut self.evictions,
            "writes-on-evicted" => &mut self.writes_on_evicted,
            "expiry" => &mut self.expiry,
            "empty-restarts" => &mut self.empty_restarts,
            "log-overflow" => &mut self.log_overflow,
            "clock-jumps" => &mut self.clock_jumps,
            "type-conflicts" => &mut self.type_conflicts,
            "invalidations" => &mut self.invalidations,
            "expulsions" => &mut self.expulsions,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub bug: Option<Bug>,
    /// Virtual milliseconds of workload under faults.
    pub fault_ms: u64,
    /// Give up converging after this long (a liveness violation).
    pub max_heal_ms: u64,
    pub faults: Faults,
    /// After an empty restart, writes at the region are refused (the server holds them)
    /// until every peer answered its restart handshake, or this many virtual ms passed
    /// (0: never held), as the server's `restart-write-hold-ms`.
    pub restart_write_hold_ms: u64,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            bug: None,
            fault_ms: 3_000,
            max_heal_ms: 60_000,
            faults: Faults::default(),
            restart_write_hold_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub regions: usize,
    pub ops: u64,
    pub ops_refused: u64,
    /// Of `ops_refused`: writes at a region in its restart window (the server holds them).
    pub restart_writes_held: u64,
    /// Restart windows that ended by `restart_write_hold_ms` before the handshake completed.
    pub restart_holds_expired: u64,
    pub frames: u64,
    pub frames_dropped: u64,
    pub delta_bytes: u64,
    pub anti_entropy_bytes: u64,
    pub crashes: u64,
    pub empty_restarts: u64,
    pub evictions: u64,
    pub expired: u64,
    pub clock_jumps: u64,
    /// Peers expelled from GC (summed over regions), frames refused, regions forgotten,
    /// and empty restarts of refused regions by the operator.
    pub expulsions: u64,
    pub frames_refused: u64,
    pub forgets: u64,
    pub operator_restarts: u64,
    pub stalls: u64,
    /// Deltas the bounded per-region log dropped before they were shipped.
    pub local_deltas_dropped: u64,
    pub partial_deltas_dropped: u64,
    pub logs_dropped: u64,
    pub deltas_clock_held: u64,
    pub gc_dropped: u64,
    /// Acknowledged atoms (writes' effects) no copy anywhere held any more.
    pub atoms_lost: u64,
    pub converge_ms: u64,
    pub metadata_elements: usize,
    pub trace_hash: u64,
    pub violations: Vec<String>,
}

impl SimReport {
    /// The distinct kinds of violation (the word before the first ':' or ' ').
    pub fn violation_kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .violations
            .iter()
            .map(|v| {
                v.split([':', ' ', '('])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        k.sort();
        k.dedup();
        k
    }
}

/// The store each simulated region runs: the production `Keyspace`, optionally wrapped by a
/// deliberate bug on the receive path, and the `partial` checker.
pub struct SimStore {
    pub ks: Keyspace,
    bug: Option<Bug>,
    /// Slots of the workload this region lost a key of (eviction, expiry, empty restart),
    /// not repaired since: a partial delta must not rebuild an absent key there. `true`: the
    /// keyspace marked the slot lossy itself (eviction, expiry, and an empty restart's
    /// `mark_all_lossy`) and says when anti-entropy repaired it; `false`: repaired once the
    /// slot holds what every other region's holds.
    lost_slots: BTreeMap<u16, bool>,
    violations: Vec<String>,
    debug_key: Option<Bytes>,
    /// Deltas (origin stamp, key) this region's link handed to the store, ever (since its
    /// last crash): a delivered delta its state lacks was buffered or held if it is not here,
    /// and dropped for good if it is.
    offered: BTreeSet<(Stamp, Bytes)>,
}

impl SimStore {
    fn new(cfg: KeyspaceConfig, bug: Option<Bug>) -> SimStore {
        SimStore {
            ks: Keyspace::new(cfg),
            bug,
            lost_slots: BTreeMap::new(),
            violations: Vec::new(),
            debug_key: std::env::var("MERIDIAN_SIM_KEY").ok().map(Bytes::from),
            offered: BTreeSet::new(),
        }
    }

    fn tainted(&self, e: &Entry) -> bool {
        match self.bug {
            Some(Bug::DropCounterContributionsOf(r)) => {
                e.components().iter().any(|c| match &c.val {
                    Val::Str(s) => s.ctr.iter().any(|k| k.region == r),
                    Val::Hash(h) => h.raw().any(|(_, s)| s.ctr.iter().any(|k| k.region == r)),
                    Val::Set(_) | Val::List(_) => false,
                    Val::ZSet(z) => z.raw().any(|(_, s)| s.ctr.iter().any(|k| k.region == r)),
                })
            }
            _ => false,
        }
    }

    /// [`Bug::DropConcurrentTypeChange`]: the incoming state has a component of another
    /// type than the key's visible one here.
    fn other_type(&self, key: &[u8], e: &Entry) -> bool {
        if self.bug != Some(Bug::DropConcurrentTypeChange) {
            return false;
        }
        let Some(kind) = self.ks.raw_entry(key).and_then(|m| m.kind()) else {
            return false;
        };
        e.components()
            .iter()
            .any(|c| c.val.kind() != kind && c.val.is_alive())
    }

    fn bare(&self, key: &[u8]) -> bool {
        self.ks
            .raw_entry(key)
            .is_none_or(|e| e.components().is_empty())
    }

    fn merge(&mut self, key: &[u8], full: bool, state: &Entry) -> Applied {
        if self.tainted(state) || self.other_type(key, state) {
            return Applied::Unchanged;
        }
        let bare = self.bare(key);
        let slot = key_slot(key);
        let r = match self.bug {
            Some(Bug::PartialDeltaRebuildsLostKey) if !full && bare => {
                self.ks.merge_state(key, true, state)
            }
            Some(Bug::MergeReplacesLocalState) if full => {
                self.ks.take_key(key);
                self.ks.merge_state(key, true, state)
            }
            _ => self.ks.merge_state(key, full, state),
        };
        if self.debug_key.as_deref() == Some(key) {
            eprintln!(
                "    r{} merges (full {full}) {} -> {r:?}: {}",
                self.ks.region().0,
                fmt_entry(Some(state)),
                fmt_entry(self.ks.raw_entry(key).as_deref())
            );
        }
        if !full && bare && r == Applied::Changed && self.lost_slots.contains_key(&slot) {
            self.violations.push(format!(
                "partial: region {} rebuilt key {:?} it had lost from a partial delta before \
                 its slot {slot} was repaired",
                self.ks.region().0,
                String::from_utf8_lossy(key)
            ));
        }
        r
    }
}

impl LinkStore for SimStore {
    fn apply_delta(&mut self, delta: &Delta) -> Applied {
        self.offered.insert((delta.stamp, delta.key.clone()));
        self.merge(&delta.key, delta.full, &delta.state)
    }
    fn merge_full(&mut self, key: &[u8], state: &Entry) -> Applied {
        self.merge(key, true, state)
    }
    fn slot_digest(&mut self, slot: u16) -> u64 {
        self.ks.slot_digest(slot)
    }
    fn for_each_key_digest(&self, slot: u16, visit: &mut dyn FnMut(&[u8], u64)) {
        self.ks.for_each_key_digest(slot, visit)
    }
    fn for_each_entry(&self, slot: u16, visit: &mut dyn FnMut(&[u8], &Entry)) {
        self.ks.for_each_entry(slot, visit)
    }
    fn entry(&self, key: &[u8]) -> Option<Entry> {
        self.ks.raw_entry(key).map(|e| e.into_owned())
    }
    fn slot_is_lossy(&self, slot: u16) -> bool {
        self.ks.slot_is_lossy(slot)
    }
    fn slot_loss_mark(&self, slot: u16) -> Option<u64> {
        self.ks.slot_loss_mark(slot)
    }
    fn mark_slot_repaired(&mut self, slot: u16, mark: u64) {
        self.ks.mark_slot_repaired_if(slot, mark);
    }
    fn gc(&mut self, stable: &dyn Fn(RegionId) -> Hlc) -> usize {
        self.ks.gc(&|r| stable(r))
    }
}

struct Node {
    id: RegionId,
    store: SimStore,
    clock: HlcClock,
    link: RegionLink,
    up: bool,
    restart_at: u64,
    /// The clock's offset from true time when no jump is in progress.
    base_skew_ms: i64,
    skew_ms: i64,
    /// A clock jump in progress ends (back to `base_skew_ms`) at this virtual time.
    jump_until: u64,
    /// The replication loop is starved until then: nothing drained, sent or received.
    stall_until: u64,
    /// Restarted empty, its restart handshake not yet complete: client writes are held
    /// (refused here) until then, or until `hold_until` (virtual ms; 0: not held) passes.
    restart_window: bool,
    hold_until: u64,
    /// Local deltas not yet drained by the replication loop (bounded: the oldest go).
    shard_log: VecDeque<Delta>,
    /// Lowest stamp and slots of deltas the log dropped since the last drain.
    lost: Option<(Hlc, BTreeSet<u16>)>,
    /// What the current link's outgoing logs hold, per key: the join of the states of its
    /// logged deltas, read from the link (`RegionLink::for_each_logged`) after every step
    /// that may change them. Not a count of enqueued deltas: with coalescing a log entry
    /// carries the join of several writes, so the logs are no suffix of what was enqueued.
    sent: BTreeMap<Bytes, Entry>,
    /// Deltas delivered to this region that its state did not take (yet): its link may hold
    /// them in its reorder buffer until the gap before them fills. Forgotten (a copy gone)
    /// after `BUFFERED_MS`.
    buffered: VecDeque<(u64, Delta)>,
    /// When this region's state started empty (its clock; `None`: it restarts empty now):
    /// a link started over a kept state (a crash a replica took over) is no newer
    /// incarnation of it (`RegionLink::set_born`), or an expelled region whose replica
    /// took over would be readmitted with state older than its peers' GC.
    state_born_ms: Option<u64>,
}

impl Node {
    fn drain_buffered(&mut self) -> Vec<Delta> {
        self.buffered.drain(..).map(|(_, d)| d).collect()
    }
}

struct Msg {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
    frame: Frame,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Class {
    Ctr,
    Sess,
    Set,
    Hash,
    Fill,
    Mix,
    List,
    ZSet,
}

struct KeySpec {
    key: Bytes,
    class: Class,
}

enum Op {
    Del,
    Get,
    Set {
        value: Bytes,
        ex: Option<u64>,
    },
    Incr {
        by: i64,
    },
    Sadd(Bytes),
    Srem(Bytes),
    Hset(Bytes, Bytes),
    Hincr(Bytes, i64),
    Hdel(Bytes),
    /// `ZADD member score`, `ZINCRBY member by`, `ZREM member`.
    Zadd(Bytes, f64),
    Zincr(Bytes, i64),
    Zrem(Bytes),
    Fill {
        version: u64,
        value: Bytes,
        ex: Option<u64>,
    },
    Invalidate(Option<u64>),
    Expire(u64),
    Persist,
    /// `LPUSH` (true) / `RPUSH` of one value.
    Push(bool, Bytes),
    /// `LPOP` (true) / `RPOP` of up to n elements.
    Pop(bool, usize),
}

/// What a write's closure reports back.
enum WriteOutcome {
    Done,
    Refused,
    Incr(Result<i64, CrdtError>),
}

const BASE_MS: u64 = 1_700_000_000_000;
const TICK_MS: u64 = 10;
const LONG_TTL_MS: u64 = 3_600_000;
const ACTIVE_EXPIRE_BUDGET: usize = 64;
/// How long a delivered delta not (yet) merged may wait in a reorder buffer.
const BUFFERED_MS: u64 = 2_000;

const MEMBERS: [&[u8]; 4] = [b"m0", b"m1", b"m2", b"m3"];
const FIELDS: [&[u8]; 4] = [b"f0", b"f1", b"n0", b"n1"];

fn mk_keys(f: &Faults) -> Vec<KeySpec> {
    let mut keys = Vec::new();
    let mut add = |name: String, class| {
        keys.push(KeySpec {
            key: Bytes::from(name),
            class,
        })
    };
    for i in 0..4 {
        add(format!("ctr:{i}"), Class::Ctr);
        add(format!("sess:{i}"), Class::Sess);
    }
    for i in 0..3 {
        add(format!("set:{i}"), Class::Set);
        add(format!("hash:{i}"), Class::Hash);
        add(format!("list:{i}"), Class::List);
        add(format!("zset:{i}"), Class::ZSet);
        if f.invalidations {
            add(format!("fill:{i}"), Class::Fill);
        }
        if f.type_conflicts {
            add(format!("mix:{i}"), Class::Mix);
        }
    }
    keys
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Batch(_) => "Batch",
        Frame::AeEntries(_) => "AeEntries",
        Frame::AeKeys(_) => "AeKeys",
        Frame::AeDigests(_) => "AeDigests",
        _ => "control",
    }
}

/// Every key a frame carries state for, with that state.
fn frame_states(frame: &Frame) -> Vec<(&Bytes, &Entry)> {
    match frame {
        Frame::Batch(b) => b.deltas.iter().map(|d| (&d.key, &d.state)).collect(),
        Frame::AeEntries(e) => e.entries.iter().map(|k| (&k.key, &k.state)).collect(),
        _ => Vec::new(),
    }
}

struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    link_cfg: LinkConfig,
    nodes: Vec<Node>,
    /// (deliver_at, sequence) → message
    wire: BTreeMap<(u64, u64), Msg>,
    wire_seq: u64,
    blocked: Vec<Vec<bool>>,
    loss_pct: u32,
    dup_pct: u32,
    delay_ms: u64,
    jitter_ms: u64,
    shard_log_max: usize,
    now: u64,
    keys: Vec<KeySpec>,
    index: BTreeMap<Bytes, usize>,
    models: Vec<KeyModel>,
    /// Per region: keys whose state changed since the last local check (bitmask).
    dirty: Vec<u64>,
    /// Per region: keys whose copy the region lost since the last local check.
    lost_copy: Vec<u64>,
    /// Per region and key: the greatest invalidation floor seen there.
    floors: Vec<Vec<u64>>,
    /// The source of truth's current version for fill keys (invalidations bump it).
    source_version: u64,
    /// `MERIDIAN_SIM_KEY`: print every event touching this key (debugging a replay).
    debug_key: Option<Bytes>,
    trace: u64,
    /// The expulsion phase's choices (its own stream: the fault phase draws as before).
    xrng: ChaCha8Rng,
    report: SimReport,
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let n = rng.random_range(2..=5usize);
        let link_cfg = LinkConfig {
            max_batch_deltas: rng.random_range(1..=16),
            max_batch_bytes: 16 * 1024,
            window_deltas: rng.random_range(4..=64),
            max_log_deltas: rng.random_range(16..=256),
            max_log_bytes: 1 << 20,
            resend_timeout_ms: rng.random_range(100..=400),
            reorder_buffer_deltas: 8,
            anti_entropy_interval_ms: 1_000,
            anti_entropy_retry_ms: 600,
            anti_entropy_chunk_bytes: 4 * 1024,
            anti_entropy_step_slots: [16_384, 4096, 1024][(cfg.seed % 3) as usize],
            anti_entropy_quiet_ms: 200,
            frontier_interval_ms: 200,
            max_clock_offset_ms: DEFAULT_MAX_CLOCK_OFFSET_MS,
            // As in production (on); `MERIDIAN_SIM_COALESCE=0` turns it off, any other
            // value on.
            coalesce: match std::env::var("MERIDIAN_SIM_COALESCE").as_deref() {
                Ok("0") => false,
                Ok(_) => true,
                Err(_) => LinkConfig::default().coalesce,
            },
            // Longer than any silence the fault phase makes (it may cut a pair for all of
            // it): only the expulsion phase's cut lasts past it.
            peer_gc_bound_ms: if cfg.faults.expulsions {
                cfg.fault_ms + 500
            } else {
                0
            },
        };
        let ids: Vec<RegionId> = (0..n as u16).map(RegionId).collect();
        let mut nodes = Vec::new();
        for &id in &ids {
            let peers: Vec<_> = ids.iter().copied().filter(|&p| p != id).collect();
            let skew = rng.random_range(-2_000..=2_000);
            nodes.push(Node {
                id,
                store: SimStore::new(keyspace_config(id, cfg.seed), cfg.bug),
                clock: HlcClock::new(id),
                // 1: every region's first incarnation ever (a fresh deployment).
                link: RegionLink::new(id, &peers, 1, link_cfg.clone()),
                up: true,
                restart_at: 0,
                base_skew_ms: skew,
                skew_ms: skew,
                jump_until: 0,
                stall_until: 0,
                // The first start of a fresh deployment: nothing to hold or mark lossy.
                restart_window: false,
                hold_until: 0,
                shard_log: VecDeque::new(),
                lost: None,
                sent: BTreeMap::new(),
                buffered: VecDeque::new(),
                state_born_ms: Some((BASE_MS).saturating_add_signed(skew)),
            });
        }
        let report = SimReport {
            seed: cfg.seed,
            regions: n,
            ..SimReport::default()
        };
        let keys = mk_keys(&cfg.faults);
        assert!(keys.len() <= 64, "key bitmasks are 64 bits");
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.key.clone(), i))
            .collect();
        let models = vec![KeyModel::default(); keys.len()];
        let floors = vec![vec![0; keys.len()]; n];
        Sim {
            loss_pct: rng.random_range(0..=20),
            dup_pct: rng.random_range(0..=20),
            delay_ms: rng.random_range(1..=50),
            jitter_ms: rng.random_range(0..=100),
            shard_log_max: if cfg.faults.log_overflow {
                rng.random_range(2..=16)
            } else {
                usize::MAX
            },
            rng,
            link_cfg,
            nodes,
            wire: BTreeMap::new(),
            wire_seq: 0,
            blocked: vec![vec![false; n]; n],
            now: 0,
            keys,
            index,
            models,
            dirty: vec![0; n],
            lost_copy: vec![0; n],
            floors,
            source_version: 1,
            debug_key: std::env::var("MERIDIAN_SIM_KEY").ok().map(Bytes::from),
            trace: mix(0x0074_7261_6365, cfg.seed),
            xrng: ChaCha8Rng::seed_from_u64(mix(0x0065_7870_656c, cfg.seed)),
            report,
            cfg,
        }
    }

    fn trace(&mut self, x: u64) {
        self.trace = mix(self.trace, x);
    }

    fn node_now(&self, i: usize) -> u64 {
        (BASE_MS + self.now).saturating_add_signed(self.nodes[i].skew_ms)
    }

    fn debug(&self, key: &[u8], what: impl FnOnce() -> String) {
        if self.debug_key.as_deref() == Some(key) {
            eprintln!("[{:>6} ms] {}", self.now, what());
        }
    }

    fn bit(i: usize) -> u16 {
        i as u16
    }

    fn key_index(&self, key: &[u8]) -> Option<usize> {
        self.index.get(key).copied()
    }

    // ---- loss accounting ----

    /// A copy of key `k` (`copy`) went away. If no remaining copy holds what it held, the
    /// oracle forgets the atoms only it held.
    fn copy_gone(&mut self, k: usize, copy: &Entry) {
        let key = self.keys[k].key.clone();
        self.debug(&key, || format!("copy gone {}", fmt_entry(Some(copy))));
        if self
            .nodes
            .iter()
            .any(|n| entry_contains(n.store.ks.raw_entry(&key).as_deref(), copy))
        {
            return;
        }
        let after = self.holdings(&key);
        if after
            .as_ref()
            .is_some_and(|a| entry_contains(Some(a), copy))
        {
            return;
        }
        let mut before = after.clone().unwrap_or_default();
        before.merge(copy);
        let n = self.models[k].forget_lost(Some(&before), after.as_ref());
        self.report.atoms_lost += n as u64;
        self.debug(&key, || {
            let mut src = String::new();
            for (i, n) in self.nodes.iter().enumerate() {
                src.push_str(&format!(
                    "\n  r{i}: up {} backlog {} sent-all {} log {} sent {} buffered {}",
                    n.up,
                    self.max_backlog(i),
                    n.sent.len(),
                    n.shard_log.iter().filter(|d| d.key == key).count(),
                    usize::from(n.sent.contains_key(&key)),
                    n.buffered.iter().filter(|(_, d)| d.key == key).count()
                ));
            }
            format!(
                "forget_lost: {n} atom(s); copy {}; held now {}; {src}; model {}",
                fmt_entry(Some(copy)),
                fmt_entry(after.as_ref()),
                self.models[k].describe()
            )
        });
    }

    /// Region `i` lost its copy of key `k` (`copy` is what it held).
    fn region_lost(&mut self, i: usize, k: usize, copy: Option<Entry>) {
        self.debug(&self.keys[k].key, || format!("r{i} lost its copy"));
        self.lost_copy[i] |= 1 << k;
        self.dirty[i] |= 1 << k;
        self.nodes[i]
            .store
            .lost_slots
            .insert(key_slot(&self.keys[k].key), true);
        if let Some(c) = copy {
            self.copy_gone(k, &c);
        }
    }

    /// The join of every copy of `key` the system holds: keyspaces (of crashed regions
    /// too), undrained local deltas, outgoing delta logs, frames on the wire.
    fn holdings(&self, key: &[u8]) -> Option<Entry> {
        let mut acc: Option<Entry> = None;
        let mut join = |e: &Entry| match acc.as_mut() {
            None => acc = Some(e.clone()),
            Some(a) => {
                a.merge(e);
            }
        };
        for n in &self.nodes {
            if let Some(e) = n.store.ks.raw_entry(key) {
                join(&e);
            }
            for d in &n.shard_log {
                if d.key == key {
                    join(&d.state);
                }
            }
            if let Some(e) = n.sent.get(key) {
                join(e);
            }
            for (_, d) in &n.buffered {
                if d.key == key {
                    join(&d.state);
                }
            }
        }
        for m in self.wire.values() {
            for (k, s) in frame_states(&m.frame) {
                if k == key {
                    join(s);
                }
            }
        }
        acc
    }

    /// Read node `i`'s outgoing logs again; what the logs held before (per key) and no
    /// longer hold is a copy gone.
    fn trim_sent(&mut self, i: usize) {
        if !self.nodes[i].up {
            // Crashed: its logs went with the process (`crash`); the link is replaced at
            // restart.
            return;
        }
        let mut now: BTreeMap<Bytes, Entry> = BTreeMap::new();
        self.nodes[i]
            .link
            .for_each_logged(&mut |d| match now.get_mut(&d.key) {
                Some(e) => {
                    e.merge(&d.state);
                }
                None => {
                    now.insert(d.key.clone(), d.state.clone());
                }
            });
        let before = std::mem::replace(&mut self.nodes[i].sent, now);
        for (key, copy) in before {
            if entry_contains(self.nodes[i].sent.get(&key), &copy) {
                continue;
            }
            if let Some(k) = self.key_index(&key) {
                self.copy_gone(k, &copy);
            }
        }
    }

    fn max_backlog(&self, i: usize) -> usize {
        let n = &self.nodes[i];
        self.nodes
            .iter()
            .filter(|p| p.id != n.id)
            .map(|p| n.link.backlog(p.id))
            .max()
            .unwrap_or(0)
    }

    // ---- workload ----

    fn ttl(&mut self) -> Option<u64> {
        if !self.cfg.faults.expiry {
            return None;
        }
        Some(match self.rng.random_range(0..10u32) {
            0..=3 => self.rng.random_range(100..=2_500),
            4..=6 => self.rng.random_range(2_500..=30_000),
            _ => LONG_TTL_MS,
        })
    }

    fn choose_op(&mut self, class: Class) -> Op {
        let kind = self.rng.random_range(0..10u32);
        let by = self.rng.random_range(-5..=10i64);
        let member = Bytes::from_static(MEMBERS[self.rng.random_range(0..MEMBERS.len())]);
        let field = Bytes::from_static(FIELDS[self.rng.random_range(0..FIELDS.len())]);
        let value = Bytes::from(format!("v{}", self.rng.random_range(0..1000u32)));
        let num = Bytes::from(self.rng.random_range(-50..=50i64).to_string());
        let expiry = self.cfg.faults.expiry;
        match class {
            Class::Ctr => match kind {
                0 => Op::Del,
                1 => {
                    let ex = if self.rng.random_bool(0.4) {
                        self.ttl()
                    } else {
                        None
                    };
                    Op::Set { value: num, ex }
                }
                2 if expiry => Op::Get,
                _ => Op::Incr { by },
            },
            Class::Sess => match kind {
                0 | 1 => Op::Del,
                2 if expiry => Op::Get,
                3 if expiry => Op::Expire(self.ttl().unwrap_or(LONG_TTL_MS)),
                4 if expiry => Op::Persist,
                _ => {
                    let ex = if self.rng.random_bool(0.7) {
                        self.ttl()
                    } else {
                        None
                    };
                    Op::Set { value, ex }
                }
            },
            Class::Set => match kind {
                0 => Op::Del,
                1..=3 => Op::Srem(member),
                _ => Op::Sadd(member),
            },
            Class::List => match kind {
                0 => Op::Del,
                1..=3 => Op::Pop(kind == 1, if kind == 3 { 2 } else { 1 }),
                4 | 5 => Op::Push(true, value),
                _ => Op::Push(false, value),
            },
            Class::Hash => match kind {
                0 => Op::Del,
                1 | 2 => Op::Hdel(field),
                _ if field.starts_with(b"n") => Op::Hincr(field, by),
                _ => Op::Hset(field, value),
            },
            Class::Fill => {
                if kind < 6 {
                    // A cache-aside fill, read from a source replica up to 3 versions behind.
                    let sv = self.source_version;
                    let version = self.rng.random_range(sv.saturating_sub(3).max(1)..=sv);
                    let ex = if self.rng.random_bool(0.3) {
                        self.ttl()
                    } else {
                        None
                    };
                    Op::Fill { version, value, ex }
                } else {
                    // The source changed (versioned invalidation at its new version), or an
                    // unversioned invalidation; applied in this region, as its consumer would.
                    Op::Invalidate((kind < 9).then(|| {
                        self.source_version += 1;
                        self.source_version
                    }))
                }
            }
            Class::ZSet => match kind {
                0 => Op::Del,
                1 | 2 => Op::Zrem(member),
                3..=5 => Op::Zincr(member, by),
                _ => Op::Zadd(member, f64::from(self.rng.random_range(-8..=40i32)) / 4.0),
            },
            Class::Mix => match kind {
                0 => Op::Del,
                1 | 2 => Op::Set {
                    value: if self.rng.random_bool(0.5) {
                        num
                    } else {
                        value
                    },
                    ex: None,
                },
                3..=5 => Op::Incr { by },
                6 | 7 => Op::Sadd(member),
                8 => Op::Hset(field, value),
                _ => Op::Push(self.rng.random_bool(0.5), value),
            },
        }
    }

    fn op(&mut self, i: usize) {
        let k = self.rng.random_range(0..self.keys.len());
        let class = self.keys[k].class;
        let op = self.choose_op(class);
        let key = self.keys[k].key.clone();
        let now = self.node_now(i);
        let writes = !matches!(op, Op::Get);
        if writes && self.nodes[i].restart_window && self.nodes[i].hold_until > 0 {
            if self.now <= self.nodes[i].hold_until {
                // The server holds the write until the restart handshake completes (its
                // clock may still be below stamps of the region's earlier life): the client
                // waits; here it is not issued.
                self.report.ops_refused += 1;
                self.report.restart_writes_held += 1;
                return;
            }
            // The hold expired first: writes go ahead, stamped from the local clock alone.
            self.nodes[i].hold_until = 0;
            self.report.restart_holds_expired += 1;
        }
        if writes
            && !self.cfg.faults.writes_on_evicted
            && self.nodes[i].store.ks.slot_is_lossy(key_slot(&key))
        {
            // The region lost a key of this slot and anti-entropy has not repaired it yet:
            // the server refuses the write (-TRYAGAIN) with this switch off.
            self.report.ops_refused += 1;
            return;
        }
        // Reads first (lazy expiry): GET, and the existence checks EXPIRE/PERSIST make.
        if matches!(op, Op::Get | Op::Expire(_) | Op::Persist) {
            let before = self.nodes[i].store.ks.raw_entry(&key).map(Cow::into_owned);
            let live = self.nodes[i]
                .store
                .ks
                .get(&key, now)
                .map(|e| e.into_owned());
            if before.as_ref().is_some_and(Entry::is_alive)
                && self.nodes[i]
                    .store
                    .ks
                    .raw_entry(&key)
                    .is_none_or(|e| !e.is_alive())
            {
                self.report.expired += 1;
                self.region_lost(i, k, before);
            }
            let go = match op {
                Op::Get => false,
                Op::Expire(_) => live.is_some(),
                _ => live.as_ref().and_then(Entry::deadline_ms).is_some(),
            };
            if !go {
                self.report.ops += 1;
                self.trace(0x60 ^ (i as u64) << 8 ^ k as u64);
                return;
            }
        }
        let bug = self.cfg.bug;
        let node = &mut self.nodes[i];
        let seen = node.store.ks.raw_entry(&key).map(Cow::into_owned);
        let expired = seen
            .as_ref()
            .is_some_and(|e| e.is_alive() && e.is_expired(now));
        let stamp = node.clock.now(now);
        let ks = &mut node.store.ks;
        debug_assert_eq!(ks.pending_deltas(), 0);
        let deadline = |ex: Option<u64>| ex.map(|t| now + t);
        let outcome = match &op {
            Op::Get => unreachable!("reads return above"),
            Op::Del => ks.write(&key, stamp, now, |w| {
                w.delete();
                WriteOutcome::Done
            }),
            Op::Set { value, ex } => ks.write(&key, stamp, now, |w| {
                let keep = ex.is_none() && bug == Some(Bug::SetKeepsTtl);
                w.set_str(value.clone(), keep);
                if let Some(d) = deadline(*ex) {
                    w.set_deadline(Some(d));
                }
                WriteOutcome::Done
            }),
            Op::Incr { by } => ks.write(&key, stamp, now, |w| WriteOutcome::Incr(w.incr_by(*by))),
            Op::Sadd(m) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::Set).is_err() {
                    return WriteOutcome::Refused;
                }
                w.sadd(m);
                WriteOutcome::Done
            }),
            Op::Srem(m) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::Set).is_err() {
                    return WriteOutcome::Refused;
                }
                w.srem(m);
                WriteOutcome::Done
            }),
            Op::Hset(f, v) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::Hash).is_err() {
                    return WriteOutcome::Refused;
                }
                w.hash_set(f, v.clone());
                WriteOutcome::Done
            }),
            Op::Hincr(f, by) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::Hash).is_err() {
                    return WriteOutcome::Refused;
                }
                WriteOutcome::Incr(w.hash_update(f, |s, st| s.incr_by(st, *by)))
            }),
            Op::Hdel(f) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::Hash).is_err() {
                    return WriteOutcome::Refused;
                }
                w.hdel(f);
                WriteOutcome::Done
            }),
            Op::Zadd(m, score) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::ZSet).is_err() {
                    return WriteOutcome::Refused;
                }
                w.zadd(m, *score);
                WriteOutcome::Done
            }),
            Op::Zincr(m, by) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::ZSet).is_err() {
                    return WriteOutcome::Refused;
                }
                w.zincr(m, *by as f64);
                WriteOutcome::Done
            }),
            Op::Zrem(m) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::ZSet).is_err() {
                    return WriteOutcome::Refused;
                }
                w.zrem(m);
                WriteOutcome::Done
            }),
            Op::Fill { version, value, ex } => ks.write(&key, stamp, now, |w| {
                if w.set_str_versioned(value.clone(), *version, false).is_err() {
                    return WriteOutcome::Refused;
                }
                if let Some(d) = deadline(*ex) {
                    w.set_deadline(Some(d));
                }
                WriteOutcome::Done
            }),
            Op::Invalidate(v) => ks.write(&key, stamp, now, |w| {
                w.invalidate(*v);
                WriteOutcome::Done
            }),
            Op::Expire(t) => ks.write(&key, stamp, now, |w| {
                w.set_deadline(Some(now + t));
                WriteOutcome::Done
            }),
            Op::Persist => ks.write(&key, stamp, now, |w| {
                w.set_deadline(None);
                WriteOutcome::Done
            }),
            Op::Push(front, v) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::List).is_err() || w.list_push(*front, &[v]).is_none() {
                    return WriteOutcome::Refused;
                }
                WriteOutcome::Done
            }),
            Op::Pop(front, n) => ks.write(&key, stamp, now, |w| {
                if w.expect(Kind::List).is_err() {
                    return WriteOutcome::Refused;
                }
                w.list_pop(*front, *n);
                WriteOutcome::Done
            }),
        };
        let changed = ks.pending_deltas() > 0;
        let after = ks.raw_entry(&key).map(Cow::into_owned);
        self.report.ops += 1;
        self.dirty[i] |= 1 << k;
        let op_code = match &op {
            Op::Del => 1,
            Op::Get => 2,
            Op::Set { .. } => 3,
            Op::Incr { .. } => 4,
            Op::Sadd(_) => 5,
            Op::Srem(_) => 6,
            Op::Hset(..) => 7,
            Op::Hincr(..) => 8,
            Op::Hdel(_) => 9,
            Op::Fill { .. } => 10,
            Op::Invalidate(_) => 11,
            Op::Expire(_) => 12,
            Op::Persist => 13,
            Op::Push(..) => 14,
            Op::Pop(..) => 15,
            Op::Zadd(..) => 14,
            Op::Zincr(..) => 15,
            Op::Zrem(_) => 16,
        };
        self.trace(op_code ^ (i as u64) << 8 ^ stamp.hlc.0 << 16);
        if expired && !changed {
            // Nothing written: the key was reclaimed as expired (a refused write on it).
            self.report.expired += 1;
            self.region_lost(i, k, seen);
            return;
        }
        if matches!(outcome, WriteOutcome::Refused) && !changed {
            self.report.ops_refused += 1;
            return;
        }
        let v0 = View::new(seen.as_ref());
        let marks = self.models[k].marks();
        let view = if expired {
            self.models[k].delete(&v0);
            v0.deleted()
        } else {
            v0
        };
        let model = &mut self.models[k];
        match (&op, &outcome) {
            (_, WriteOutcome::Refused) => {}
            (Op::Del, _) => model.delete(&view),
            (Op::Set { value, ex }, _) => {
                model.set_str(&view, stamp, value.clone(), 0, deadline(*ex))
            }
            (Op::Incr { by }, WriteOutcome::Incr(r)) => {
                if r != &Err(CrdtError::WrongType) {
                    let inc = r
                        .is_ok()
                        .then(|| incarnation_of(after.as_ref(), &None, stamp))
                        .flatten();
                    model.incr(&view, stamp, None, *by, inc);
                }
            }
            (Op::Sadd(m), _) => model.sadd(&view, stamp, m.clone()),
            (Op::Srem(m), _) => model.srem(&view, m),
            (Op::Hset(f, v), _) => model.hset(&view, stamp, f.clone(), v.clone()),
            (Op::Hincr(f, by), WriteOutcome::Incr(r)) => {
                let field = Some(f.clone());
                let inc = r
                    .is_ok()
                    .then(|| incarnation_of(after.as_ref(), &field, stamp))
                    .flatten();
                model.incr(&view, stamp, field, *by, inc);
            }
            (Op::Hdel(f), _) => model.hdel(&view, f.clone()),
            (Op::Zadd(m, score), _) => model.zadd(&view, stamp, m.clone(), *score),
            (Op::Zincr(m, by), _) => {
                let inc = zincarnation_of(after.as_ref(), m, stamp);
                model.zincr(&view, stamp, m.clone(), *by, inc);
            }
            (Op::Zrem(m), _) => model.zrem(&view, m),
            (Op::Fill { version, value, ex }, _) => {
                model.set_str(&view, stamp, value.clone(), *version, deadline(*ex))
            }
            (Op::Invalidate(v), _) => model.invalidate(&view, *v),
            (Op::Expire(t), _) => model.set_deadline(&view, stamp, Some(now + t)),
            (Op::Persist, _) => model.set_deadline(&view, stamp, None),
            (Op::Push(..), _) => {
                // The element(s) the push added: positions carrying its stamp.
                let added = after
                    .as_ref()
                    .and_then(Entry::as_list)
                    .map(|l| {
                        l.raw()
                            .filter(|e| meridian_crdt::list::created(&e.pos) == stamp)
                            .filter_map(|e| e.val.map(|(_, v)| (e.pos, v)))
                            .collect()
                    })
                    .unwrap_or_default();
                model.list_push(&view, stamp, added);
            }
            (Op::Pop(..), _) => {
                // What it popped: alive in the view, dead after.
                let alive_after = |pos: &[meridian_crdt::list::Level]| {
                    after
                        .as_ref()
                        .and_then(Entry::as_list)
                        .is_some_and(|l| l.raw().any(|e| e.pos.as_slice() == pos && e.is_alive()))
                };
                let popped: Vec<_> = seen
                    .as_ref()
                    .and_then(Entry::as_list)
                    .map(|l| {
                        l.raw()
                            .filter(|e| e.is_alive() && !alive_after(&e.pos))
                            .map(|e| e.pos)
                            .collect()
                    })
                    .unwrap_or_default();
                for p in popped {
                    model.list_kill(&view, &p);
                }
            }
            _ => unreachable!("outcomes match their operations"),
        }
        let ok = model.check_own_write(Self::bit(i), after.as_ref(), marks);
        self.debug(&key, || {
            format!(
                "r{i} op {op_code} {} expired {expired}\n    seen  {}\n    after {}",
                fmt_stamp(stamp),
                fmt_entry(seen.as_ref()),
                fmt_entry(after.as_ref())
            )
        });
        if !ok {
            self.report.violations.push(format!(
                "local: region {i} does not read its own write at {} to key {:?} right after \
                 it (state {})",
                fmt_stamp(stamp),
                self.keys[k].key,
                fmt_entry(after.as_ref())
            ));
            self.debug(&key, || format!("model {}", self.models[k].describe()));
        }
        // The write's delta goes to the bounded per-region log.
        let deltas: Vec<Delta> = self.nodes[i].store.ks.drain_deltas().collect();
        for d in deltas {
            self.log_delta(i, d);
        }
        if bug == Some(Bug::SilentLocalLoss) && i == 0 && self.rng.random_bool(0.2) {
            self.nodes[i].store.ks.evict_key(&key);
        }
    }

    /// Append a local delta to node `i`'s bounded log; a full log drops its oldest delta.
    fn log_delta(&mut self, i: usize, d: Delta) {
        let node = &mut self.nodes[i];
        node.shard_log.push_back(d);
        if node.shard_log.len() <= self.shard_log_max {
            return;
        }
        let old = node.shard_log.pop_front().expect("over the bound");
        let l = node.lost.get_or_insert((old.stamp.hlc, BTreeSet::new()));
        l.0 = l.0.min(old.stamp.hlc);
        l.1.insert(old.slot);
        self.report.local_deltas_dropped += 1;
        if let Some(k) = self.key_index(&old.key) {
            self.copy_gone(k, &old.state);
        }
    }

    // ---- network ----

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>, frame: Frame, faults: bool) {
        self.report.frames += 1;
        if self.blocked[from][to] || (faults && self.rng.random_range(0..100) < self.loss_pct) {
            self.report.frames_dropped += 1;
            self.frame_gone(&frame);
            return;
        }
        let copies = if faults && self.rng.random_range(0..100) < self.dup_pct {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.delay_ms + self.rng.random_range(0..=self.jitter_ms);
            self.wire_seq += 1;
            let frame = frame.clone();
            self.wire.insert(
                (at, self.wire_seq),
                Msg {
                    from,
                    to,
                    bytes: bytes.clone(),
                    frame,
                },
            );
        }
    }

    /// A frame left the system undelivered (or delivered and not taken): its states are
    /// copies gone.
    fn frame_gone(&mut self, frame: &Frame) {
        for (key, state) in frame_states(frame) {
            if let Some(k) = self.key_index(key) {
                self.copy_gone(k, state);
            }
        }
    }

    fn transmit(&mut self, i: usize, faults: bool) {
        if !self.nodes[i].up || self.now < self.nodes[i].stall_until {
            return;
        }
        let now = self.node_now(i);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        // As the server: large frames LZ4-compressed (`[replication] compression`).
        let mut enc = FrameEncoder::new(true);
        while let Some((peer, frame)) = self.nodes[i].link.poll_transmit(now) {
            buf.clear();
            let n = enc
                .encode_into(&frame, &mut buf)
                .expect("frames stay under the limit");
            if frame.is_anti_entropy() {
                self.report.anti_entropy_bytes += n as u64;
            } else if matches!(frame, Frame::Batch(_)) {
                self.report.delta_bytes += n as u64;
            }
            out.push((peer.0 as usize, buf.clone(), frame));
        }
        for (to, bytes, frame) in out {
            self.send(i, to, bytes, frame, faults);
        }
    }

    fn pump(&mut self, faults: bool, gc: bool) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up || self.now < self.nodes[i].stall_until {
                continue;
            }
            let now = self.node_now(i);
            // The replication loop drains the local log (in HLC order), reports what the
            // bound dropped, then tells the link how far its own writes are enqueued.
            let mut deltas: Vec<Delta> = self.nodes[i].shard_log.drain(..).collect();
            deltas.sort_by_key(|d| d.stamp.hlc);
            let node = &mut self.nodes[i];
            for d in deltas {
                node.sent.entry(d.key.clone()).or_default().merge(&d.state);
                node.link.enqueue(now, d);
            }
            // What the enqueue did not keep (a full log is dropped) is a copy gone.
            self.trim_sent(i);
            let node = &mut self.nodes[i];
            if let Some((below, slots)) = node.lost.take() {
                node.link.note_local_loss(below, slots);
            }
            // As the server: the clock takes the wall clock first (a write stamped later is
            // stamped above it).
            node.clock.observe(Hlc::from_parts(now, 0));
            node.link.note_local_hlc(node.clock.last());
            node.link.handle_timeout(now);
            node.link.poll_anti_entropy(now, &mut node.store);
            if gc {
                self.collect_garbage(i);
            }
            if self.cfg.faults.expiry {
                self.expire_cycle(i);
            }
            self.trim_sent(i);
            self.transmit(i, faults);
        }
    }

    /// Garbage collection at region `i`; the removal records it drops are stable (the
    /// oracle never counts them lost afterwards).
    fn collect_garbage(&mut self, i: usize) {
        let before: Vec<Option<Entry>> = self
            .keys
            .iter()
            .map(|s| {
                self.nodes[i]
                    .store
                    .ks
                    .raw_entry(&s.key)
                    .map(Cow::into_owned)
            })
            .collect();
        // The regions that vouch for what this run collects: this one and the peers its GC
        // waits for (not those expelled from GC, refusing it, or forgotten).
        let by = (0..self.nodes.len())
            .filter(|&j| {
                j == i
                    || self.nodes[i].link.peer_state(self.nodes[j].id)
                        == Some(meridian_replication::proto::link::PeerState::Active)
            })
            .fold(0u16, |m, j| m | 1 << Self::bit(j));
        let node = &mut self.nodes[i];
        self.report.gc_dropped += node.link.collect_garbage(&mut node.store) as u64;
        for (k, b) in before.into_iter().enumerate() {
            let after = self.nodes[i]
                .store
                .ks
                .raw_entry(&self.keys[k].key)
                .map(Cow::into_owned);
            if b != after {
                self.models[k].note_collected(b.as_ref(), after.as_ref(), by);
            }
        }
    }

    /// The active expiry cycle of region `i`.
    fn expire_cycle(&mut self, i: usize) {
        let now = self.node_now(i);
        let due: Vec<(usize, Entry)> = self
            .keys
            .iter()
            .enumerate()
            .filter_map(|(k, s)| {
                let e = self.nodes[i].store.ks.raw_entry(&s.key)?;
                (e.is_alive() && e.is_expired(now)).then(|| (k, e.into_owned()))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        if self.cfg.bug == Some(Bug::ExpiryReplicatesDelete) {
            for (k, _) in &due {
                let key = self.keys[*k].key.clone();
                let node = &mut self.nodes[i];
                let stamp = node.clock.now(now);
                // Written before the deadline passed, as a replicated DEL would be.
                node.store
                    .ks
                    .write(&key, stamp, now - 1_000_000, |w| w.delete());
                let deltas: Vec<Delta> = node.store.ks.drain_deltas().collect();
                for d in deltas {
                    self.log_delta(i, d);
                }
            }
        }
        self.nodes[i]
            .store
            .ks
            .active_expire(now, ACTIVE_EXPIRE_BUDGET);
        for (k, e) in due {
            let key = self.keys[k].key.clone();
            let gone = self.nodes[i]
                .store
                .ks
                .raw_entry(&key)
                .is_none_or(|e| !e.is_alive());
            if gone {
                self.report.expired += 1;
                self.region_lost(i, k, Some(e));
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.wire.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let msg = entry.remove();
            if self.now < self.nodes[msg.to].stall_until {
                // The receiving loop is starved: the frame waits in its socket.
                let at = self.nodes[msg.to].stall_until;
                self.wire_seq += 1;
                self.wire.insert((at, self.wire_seq), msg);
                continue;
            }
            if !self.nodes[msg.to].up || self.blocked[msg.from][msg.to] {
                self.report.frames_dropped += 1;
                self.frame_gone(&msg.frame);
                continue;
            }
            self.trace(mix_bytes(msg.from as u64 * 8 + msg.to as u64, &msg.bytes));
            let to = msg.to;
            let now = self.node_now(to);
            let frame = match decode(&msg.bytes) {
                Ok(Some((frame, _))) => frame,
                Ok(None) => unreachable!("frames are whole"),
                Err(e) => {
                    // A peer cannot read what a region encoded: the frame is lost.
                    let v = format!(
                        "codec: region {to} cannot decode a {} frame region {} sent: {e}",
                        frame_name(&msg.frame),
                        msg.from
                    );
                    if !self.report.violations.contains(&v) {
                        self.report.violations.push(v);
                    }
                    self.frame_gone(&msg.frame);
                    continue;
                }
            };
            let from = self.nodes[msg.from].id;
            self.settle_lost_slots_of(to);
            let regions = self.nodes.len() as u16;
            let node = &mut self.nodes[to];
            if matches!(frame, Frame::Hello(_)) && node.link.peer_state(from).is_none() {
                // As the shell: a region not among the peers (forgotten) that says `Hello`
                // is added (if forgotten, its old incarnation comes back refused).
                node.link.add_peer(from);
            }
            node.link.handle_frame(now, from, frame, &mut node.store);
            node.clock.observe(node.link.max_seen_hlc());
            if node.restart_window && node.link.handshake_done() {
                // As the server's `handshake_completed`: after the clock observed every
                // answer. No stamp of ours known to any peer: a first start, the start's
                // lossy marks go; else they stay until anti-entropy repairs each slot.
                node.restart_window = false;
                if node.link.restarted() {
                    for p in (0..regions).map(RegionId) {
                        if p != node.id {
                            node.link.request_anti_entropy(p);
                        }
                    }
                } else {
                    node.store.ks.clear_start_losses();
                }
            }
            let mut gone = Vec::new();
            let batch = matches!(msg.frame, Frame::Batch(_));
            for (key, state) in frame_states(&msg.frame) {
                self.debug(key, || {
                    format!(
                        "r{to} <- r{} {}: {}",
                        msg.from,
                        frame_name(&msg.frame),
                        fmt_entry(Some(state))
                    )
                });
                if let Some(k) = self.key_index(key) {
                    self.dirty[to] |= 1 << k;
                    if !entry_contains(self.nodes[to].store.ks.raw_entry(key).as_deref(), state) {
                        gone.push((k, state.clone()));
                    }
                }
            }
            if batch {
                // A delta the store never saw waits in the link's reorder buffer (or comes
                // again, held for its clock); one it saw and did not take is gone.
                if let Frame::Batch(b) = &msg.frame {
                    for d in &b.deltas {
                        let Some(k) = self.key_index(&d.key) else {
                            continue;
                        };
                        if !gone.iter().any(|(g, _)| *g == k) {
                            continue;
                        }
                        let seen = self.nodes[to]
                            .store
                            .offered
                            .contains(&(d.stamp, d.key.clone()));
                        if seen {
                            self.copy_gone(k, &d.state);
                        } else {
                            self.nodes[to].buffered.push_back((self.now, d.clone()));
                        }
                    }
                }
            } else {
                for (k, state) in gone {
                    self.copy_gone(k, &state);
                }
            }
            if matches!(msg.frame, Frame::Ack(_)) {
                self.trim_sent(to);
            }
            let v = std::mem::take(&mut self.nodes[to].store.violations);
            self.report.violations.extend(v);
        }
    }

    // ---- faults ----

    fn fault(&mut self) {
        let n = self.nodes.len();
        let f = self.cfg.faults.clone();
        match self.rng.random_range(0..14u32) {
            0 => {
                // Symmetric partition into two random sides.
                let side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                for a in 0..n {
                    for b in 0..n {
                        self.blocked[a][b] = side[a] != side[b];
                    }
                }
                self.trace(1);
            }
            1 => {
                let (a, b) = (self.rng.random_range(0..n), self.rng.random_range(0..n));
                if a != b {
                    self.blocked[a][b] = true; // one-way
                }
                self.trace(2);
            }
            2 => {
                let a = self.rng.random_range(0..n);
                for b in 0..n {
                    if a != b {
                        self.blocked[a][b] = true;
                        self.blocked[b][a] = true;
                    }
                }
                self.trace(3);
            }
            3 | 4 => {
                for row in self.blocked.iter_mut() {
                    row.iter_mut().for_each(|x| *x = false);
                }
                self.trace(4);
            }
            5 => {
                let a = self.rng.random_range(0..n);
                if self.nodes[a].up {
                    self.crash(a, false);
                }
            }
            6 => {
                if f.empty_restarts {
                    let a = self.rng.random_range(0..n);
                    if self.nodes[a].up {
                        self.crash(a, true);
                    }
                }
                self.trace(8);
            }
            7 => {
                let a = self.rng.random_range(0..n);
                let jump = self.rng.random_range(-1_000..=1_000i64);
                let node = &mut self.nodes[a];
                node.base_skew_ms = (node.base_skew_ms + jump).clamp(-3_000, 3_000);
                if node.jump_until == 0 {
                    node.skew_ms = node.base_skew_ms;
                }
                self.trace(6);
            }
            8 => {
                if f.clock_jumps {
                    self.clock_jump();
                }
                self.trace(9);
            }
            9 => {
                if f.log_overflow {
                    let a = self.rng.random_range(0..n);
                    let ms = self.rng.random_range(100..=1_500);
                    self.nodes[a].stall_until = self.nodes[a].stall_until.max(self.now + ms);
                    self.report.stalls += 1;
                }
                self.trace(10);
            }
            _ => {
                if f.evictions {
                    let a = self.rng.random_range(0..n);
                    if self.rng.random_bool(0.5) {
                        let k = self.rng.random_range(0..self.keys.len());
                        self.evict(a, Some(k));
                    } else {
                        self.evict(a, None);
                    }
                }
                self.trace(7);
            }
        }
    }

    /// A clock jump at a random region: ahead past the offset bound (seconds to minutes,
    /// sometimes hours) or behind, for a while; then back.
    fn clock_jump(&mut self) {
        let a = self.rng.random_range(0..self.nodes.len());
        let jump: i64 = match self.rng.random_range(0..10u32) {
            0..=4 => self.rng.random_range(15_000..=120_000),
            5..=7 => self.rng.random_range(3_600_000..=3 * 3_600_000),
            _ => -self.rng.random_range(15_000..=120_000),
        };
        let until = self.now + self.rng.random_range(100..=1_500);
        let node = &mut self.nodes[a];
        node.skew_ms = node.base_skew_ms + jump;
        node.jump_until = until;
        self.report.clock_jumps += 1;
    }

    fn end_jumps(&mut self, force: bool) {
        for node in self.nodes.iter_mut() {
            if node.jump_until != 0 && (force || self.now >= node.jump_until) {
                node.jump_until = 0;
                node.skew_ms = node.base_skew_ms;
            }
        }
    }

    /// Evict key `k` at region `a` if it is live there (`None`: let an eviction policy
    /// pick one, as the server's `maxmemory` enforcement would).
    fn evict(&mut self, a: usize, k: Option<usize>) {
        let before: Vec<Option<Entry>> = self
            .keys
            .iter()
            .map(|s| {
                self.nodes[a]
                    .store
                    .ks
                    .raw_entry(&s.key)
                    .map(Cow::into_owned)
            })
            .collect();
        let now = self.node_now(a);
        match k {
            Some(k) => {
                if !before[k].as_ref().is_some_and(Entry::is_alive) {
                    return;
                }
                let key = self.keys[k].key.clone();
                if self.cfg.bug == Some(Bug::EvictionDropsFloor) {
                    self.nodes[a].store.ks.take_key(&key);
                } else {
                    self.nodes[a].store.ks.evict_key(&key);
                }
            }
            None => {
                let (policy, _) = EvictionPolicy::ALL[self.rng.random_range(1..8usize)];
                let mut r = self.rng.random::<u64>();
                let mut next = move || {
                    r = mix(r, 0x65766963);
                    r
                };
                self.nodes[a].store.ks.evict_one(policy, 5, now, &mut next);
            }
        }
        for (k, b) in before.into_iter().enumerate() {
            let was = b.as_ref().is_some_and(Entry::is_alive);
            let is = self.nodes[a]
                .store
                .ks
                .raw_entry(&self.keys[k].key)
                .is_some_and(|e| e.is_alive());
            if was && !is {
                self.report.evictions += 1;
                self.region_lost(a, k, b);
            }
        }
    }

    /// The region's process dies. Its unshipped local deltas, outgoing logs and receive
    /// state are lost. `empty`: its keyspace too (no persistence, no replica): it restarts
    /// with a fresh keyspace and a clock read from its own wall clock. Otherwise a replica
    /// takes over with the data and the clock.
    fn crash(&mut self, a: usize, empty: bool) {
        if let Some(k) = self.debug_key.clone() {
            self.debug(&k, || format!("r{a} crashes (empty: {empty})"));
        }
        let down_ms = self.rng.random_range(50..=1_000);
        let node = &mut self.nodes[a];
        node.up = false;
        node.restart_at = self.now + down_ms;
        node.stall_until = 0;
        let mut dropped: Vec<Delta> = node.shard_log.drain(..).collect();
        dropped.extend(node.drain_buffered());
        let logged = std::mem::take(&mut node.sent);
        node.store.offered.clear();
        node.lost = None;
        let mut copies: BTreeMap<usize, Entry> = BTreeMap::new();
        for (key, state) in dropped
            .iter()
            .map(|d| (&d.key, &d.state))
            .chain(logged.iter())
        {
            if let Some(k) = self.key_index(key) {
                copies.entry(k).or_default().merge(state);
            }
        }
        if empty {
            self.report.empty_restarts += 1;
            for k in 0..self.keys.len() {
                if let Some(e) = self.nodes[a].store.ks.raw_entry(&self.keys[k].key) {
                    copies.entry(k).or_default().merge(&e);
                }
            }
            let id = self.nodes[a].id;
            let node = &mut self.nodes[a];
            node.store.ks = Keyspace::new(keyspace_config(id, self.cfg.seed));
            // As the server's `Store::new` with peers: a start cannot tell itself from an
            // empty restart, so every slot is lossy until the handshake or anti-entropy
            // settles it; writes wait for the handshake (`restart_write_hold_ms`).
            node.store.ks.mark_all_lossy(|_| true);
            node.restart_window = true;
            node.state_born_ms = None;
            node.clock = HlcClock::new(id);
            for k in 0..self.keys.len() {
                self.models[k].clear_region(Self::bit(a));
                self.floors[a][k] = 0;
                let slot = key_slot(&self.keys[k].key);
                self.nodes[a].store.lost_slots.insert(slot, true);
                self.lost_copy[a] |= 1 << k;
                self.dirty[a] |= 1 << k;
            }
            self.trace(11);
        } else {
            self.report.crashes += 1;
            self.trace(5);
        }
        for (k, c) in copies {
            self.copy_gone(k, &c);
        }
    }

    fn restart_due(&mut self, force: bool) {
        let ids: Vec<RegionId> = self.nodes.iter().map(|n| n.id).collect();
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.up || !(force || self.now >= node.restart_at) {
                continue;
            }
            // A new incarnation id, random as the server's (never 1, which declares a
            // region's first start ever).
            let epoch = self.rng.random::<u64>() | 1 << 63;
            let node = &mut self.nodes[i];
            node.up = true;
            node.hold_until = match self.cfg.restart_write_hold_ms {
                0 => 0,
                hold => self.now + hold,
            };
            let peers: Vec<_> = ids.iter().copied().filter(|&p| p != node.id).collect();
            let mut link = RegionLink::new(node.id, &peers, epoch, self.link_cfg.clone());
            match node.state_born_ms {
                Some(born) => link.set_born(born),
                None => {
                    node.state_born_ms =
                        Some((BASE_MS + self.now).saturating_add_signed(node.skew_ms))
                }
            }
            let old = std::mem::replace(&mut node.link, link);
            self.report.expulsions += old.stats().peers_expelled;
            self.report.frames_refused += old.stats().frames_refused;
        }
    }

    /// Forget buffered deltas the region merged since, or that waited too long (`force`:
    /// all of them — the links are idle, a delta not merged by now never will be).
    fn prune_buffered(&mut self, force: bool) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].buffered.is_empty() {
                continue;
            }
            let all = std::mem::take(&mut self.nodes[i].buffered);
            let mut gone = Vec::new();
            for (at, d) in all {
                let merged = entry_contains(
                    self.nodes[i].store.ks.raw_entry(&d.key).as_deref(),
                    &d.state,
                );
                if merged {
                    continue;
                }
                if force || self.now >= at + BUFFERED_MS {
                    gone.push(d);
                } else {
                    self.nodes[i].buffered.push_back((at, d));
                }
            }
            for d in gone {
                if let Some(k) = self.key_index(&d.key) {
                    self.copy_gone(k, &d.state);
                }
            }
        }
    }

    // ---- checks during the run ----

    fn check_local(&mut self) {
        for i in 0..self.nodes.len() {
            let dirty = std::mem::take(&mut self.dirty[i]);
            let lost = std::mem::take(&mut self.lost_copy[i]);
            if dirty == 0 {
                continue;
            }
            for k in 0..self.keys.len() {
                if dirty & (1 << k) == 0 {
                    continue;
                }
                let key = self.keys[k].key.clone();
                let e = self.nodes[i].store.ks.raw_entry(&key).map(Cow::into_owned);
                self.debug(&key, || format!("r{i} state {}", fmt_entry(e.as_ref())));
                if let Some(v) =
                    self.models[k].check_region(Self::bit(i), e.as_ref(), lost & (1 << k) != 0)
                {
                    self.report.violations.push(format!(
                        "local: region {i} key {:?} at {} ms: {}",
                        key, self.now, v.0
                    ));
                }
                let floor = e.as_ref().map_or(0, Entry::floor);
                if floor < self.floors[i][k] {
                    self.report.violations.push(format!(
                        "floor: region {i} key {:?} at {} ms: invalidation floor went down from \
                         {} to {floor}",
                        key, self.now, self.floors[i][k]
                    ));
                }
                self.floors[i][k] = self.floors[i][k].max(floor);
            }
        }
    }

    /// Slots a region lost keys of count as repaired once its keyspace no longer marks them
    /// lossy (anti-entropy found them equal with every peer after the loss) or, after an
    /// empty restart, once they hold what every other region's holds.
    fn settle_lost_slots(&mut self) {
        for i in 0..self.nodes.len() {
            self.settle_lost_slots_of(i);
        }
    }

    fn settle_lost_slots_of(&mut self, i: usize) {
        {
            if self.nodes[i].store.lost_slots.is_empty() {
                return;
            }
            let slots: Vec<(u16, bool)> = self.nodes[i]
                .store
                .lost_slots
                .iter()
                .map(|(s, k)| (*s, *k))
                .collect();
            for (s, ks_knows) in slots {
                if self.nodes[i].store.ks.slot_is_lossy(s) {
                    continue;
                }
                if ks_knows {
                    self.nodes[i].store.lost_slots.remove(&s);
                    continue;
                }
                let d = self.nodes[i].store.ks.slot_digest(s);
                let equal = (0..self.nodes.len())
                    .filter(|&j| j != i)
                    .all(|j| self.nodes[j].store.ks.slot_digest(s) == d);
                if equal {
                    self.nodes[i].store.lost_slots.remove(&s);
                }
            }
        }
    }

    // ---- run ----

    fn tick(&mut self, faults: bool, gc: bool) {
        self.pump(faults, gc);
        self.deliver();
        // Whatever handling frames produced goes out now: nothing stays in a link's queues
        // between ticks where loss accounting could not see it.
        for i in 0..self.nodes.len() {
            self.transmit(i, faults);
            self.trim_sent(i);
        }
        self.prune_buffered(false);
        self.check_local();
        #[allow(clippy::manual_is_multiple_of)]
        if self.now % 100 == 0 {
            self.settle_lost_slots();
        }
    }

    fn run(mut self) -> SimReport {
        let op_pct = self.rng.random_range(10..=60u32);
        let fault_pct = self.rng.random_range(2..=10u32);
        while self.now < self.cfg.fault_ms {
            self.now += TICK_MS;
            self.restart_due(false);
            self.end_jumps(false);
            for i in 0..self.nodes.len() {
                if self.nodes[i].up && self.rng.random_range(0..100) < op_pct {
                    self.op(i);
                }
            }
            if self.rng.random_range(0..100) < fault_pct {
                self.fault();
            }
            self.tick(true, self.cfg.faults.gc_during_faults);
        }
        if self.cfg.faults.expulsions {
            self.expulsion_phase(op_pct);
        }
        // Phase 2: heal, quiesce, collect garbage.
        for row in self.blocked.iter_mut() {
            row.iter_mut().for_each(|x| *x = false);
        }
        self.restart_due(true);
        self.end_jumps(true);
        for n in self.nodes.iter_mut() {
            n.stall_until = 0;
        }
        for i in 0..self.nodes.len() {
            for j in 0..self.nodes.len() {
                let state = self.nodes[i].link.peer_state(self.nodes[j].id);
                if i != j && state != Some(meridian_replication::proto::link::PeerState::Active) {
                    self.report.violations.push(format!(
                        "expel: region {i} has region {j} {state:?} at heal (not readmitted)"
                    ));
                }
            }
        }
        let heal_start = self.now;
        let mut converged_at = None;
        let mut waited_for_clocks = false;
        let mut deadline = heal_start + self.cfg.max_heal_ms;
        while self.now < deadline {
            self.now += TICK_MS;
            self.tick(false, false);
            // Checking digests of every slot is the expensive part: every 200 ms is enough.
            #[allow(clippy::manual_is_multiple_of)]
            let check = self.now % 200 == 0;
            if check && self.converged() {
                converged_at = Some(self.now);
                break;
            }
            if check && !waited_for_clocks && self.now >= heal_start + 5_000 {
                // A region whose clock ran far ahead stamped writes no peer merges until
                // its own clock catches up: wait that out (nothing else happens meanwhile).
                waited_for_clocks = true;
                deadline += self.wait_for_clocks();
            }
        }
        match converged_at {
            None => {
                let detail = self.divergence_detail();
                self.report.violations.push(format!(
                    "liveness: regions did not converge within {} ms after heal: {detail}",
                    self.cfg.max_heal_ms
                ))
            }
            Some(t) => {
                self.report.converge_ms =
                    t - heal_start - (deadline - heal_start - self.cfg.max_heal_ms)
            }
        }
        // Values must be right before garbage collection, and stay right after it.
        self.prune_buffered(true);
        self.check_values("after heal");
        // Let frontiers and clean anti-entropy rounds circulate, then collect; and let
        // anti-entropy repair the slots of keys that expired meanwhile. Keys expire at each
        // region's own clock, so rounds are not clean (and GC waits) until every region
        // passed a deadline: wait for a quiet system, at most 40 s.
        let gc_start = self.now;
        while self.now < gc_start + 3_000
            || (self.now < gc_start + 40_000 && (self.any_lossy_slot() || self.any_tombstone()))
        {
            self.now += TICK_MS;
            self.tick(false, true);
        }
        self.prune_buffered(true);
        self.check_values("after gc");
        self.check_metadata();
        self.finish()
    }

    /// Ops at the up regions, then one tick (faults on the wire: loss, duplicates, delays).
    fn busy_tick(&mut self, op_pct: u32) {
        self.now += TICK_MS;
        self.restart_due(false);
        for i in 0..self.nodes.len() {
            if self.nodes[i].up && self.rng.random_range(0..100) < op_pct {
                self.op(i);
            }
        }
        self.tick(true, self.cfg.faults.gc_during_faults);
    }

    /// The fault phase's faults healed, one region is cut off from every other for longer
    /// than the GC bound while writes (removals too) and GC go on everywhere: the others
    /// expel it and collect without it, and it expels them. Half the time an operator then
    /// forgets it at every other region. Healed, each side refuses the other's incarnation
    /// and tells it so; once the cut-off region has been told (its log), and a while later,
    /// the operator restarts it empty (the region refused by most peers, in general). Its
    /// new incarnation is readmitted (or added again) and bootstraps by anti-entropy.
    fn expulsion_phase(&mut self, op_pct: u32) {
        use meridian_replication::proto::link::PeerState;
        let n = self.nodes.len();
        for row in self.blocked.iter_mut() {
            row.iter_mut().for_each(|x| *x = false);
        }
        self.restart_due(true);
        self.end_jumps(true);
        for node in self.nodes.iter_mut() {
            node.stall_until = 0;
        }
        // Clocks that jumped ahead in the fault phase left HLCs ahead of every wall clock:
        // wait them out first. (A region readmitted after an expulsion stamps its writes
        // from its own clock; a removal stamped hours ahead that GC collected without it
        // would order after them by HLC and yet not be there to win: the fault phase's
        // clock jumps and this phase are tested apart.)
        self.wait_for_clocks_within(0);
        let r = self.xrng.random_range(0..n);
        let forget = self.xrng.random_bool(0.5);
        // One way (half the time): nothing from r gets out, but r hears the others, so it
        // does not expel them and, once healed, its (refused) frames reach them.
        let one_way = self.xrng.random_bool(0.5);
        let bound = self.link_cfg.peer_gc_bound_ms;
        let cut_until = self.now + bound + self.xrng.random_range(300..=1_500u64);
        self.trace(0xe7 ^ (r as u64) << 8 ^ u64::from(forget) << 16 ^ u64::from(one_way) << 17);
        for j in 0..n {
            if j != r {
                self.blocked[r][j] = true;
                self.blocked[j][r] = !one_way;
            }
        }
        let id_r = self.nodes[r].id;
        // `MERIDIAN_SIM_EXPEL`: print the phase's events (debugging a replay).
        let trace_phase = std::env::var_os("MERIDIAN_SIM_EXPEL").is_some();
        if trace_phase {
            eprintln!(
                "[{}] r{r} cut off until {cut_until} (forget {forget}, one way {one_way})",
                self.now
            );
        }
        while self.now < cut_until {
            self.busy_tick(op_pct);
        }
        if forget {
            // `MERIDIAN REGION FORGET`, on each remaining region.
            for j in (0..n).filter(|&j| j != r) {
                let st = self.nodes[j].link.peer_status(0, id_r);
                if self.nodes[j].link.remove_peer(id_r) {
                    self.report.forgets += 1;
                }
                if trace_phase {
                    eprintln!(
                        "[{}] r{j} forgets r{r}: was {st:?}, now {:?}",
                        self.now,
                        self.nodes[j].link.forgotten().collect::<Vec<_>>()
                    );
                }
            }
        }
        for row in self.blocked.iter_mut() {
            row.iter_mut().for_each(|x| *x = false);
        }
        // The operator: a region is told it is refused (`refusals_received` grows); a while
        // later it is restarted empty.
        let mut base: Vec<u64> = self
            .nodes
            .iter()
            .map(|x| x.link.stats().refusals_received)
            .collect();
        let mut told_at: Vec<Option<u64>> = vec![None; n];
        // The operator restarts a told region once its new incarnation's start (its clock)
        // will follow the expulsion (its peers' clocks) by more than the clocks are trusted
        // to disagree (`max_clock_offset_ms`): only such an incarnation is readmitted.
        let skews = self.nodes.iter().map(|x| x.base_skew_ms);
        let spread = (skews.clone().max().unwrap_or(0) - skews.min().unwrap_or(0)) as u64
            + self.link_cfg.max_clock_offset_ms;
        let deadline = self.now + 30_000;
        loop {
            self.busy_tick(op_pct);
            #[allow(clippy::manual_is_multiple_of)]
            if self.now % 100 != 0 {
                continue;
            }
            let all_active = (0..n).all(|i| {
                self.nodes[i].up
                    && (0..n).all(|j| {
                        i == j
                            || self.nodes[i].link.peer_state(self.nodes[j].id)
                                == Some(PeerState::Active)
                    })
            });
            if all_active {
                break;
            }
            if self.now >= deadline {
                let states: Vec<Vec<Option<PeerState>>> = (0..n)
                    .map(|i| {
                        (0..n)
                            .map(|j| self.nodes[i].link.peer_state(self.nodes[j].id))
                            .collect()
                    })
                    .collect();
                self.report.violations.push(format!(
                    "expel: region {r} cut off past the bound was not readmitted within 30 s                      (peer states {states:?}, told {told_at:?})"
                ));
                break;
            }
            // Refused by how many peers (expelled there, or forgotten).
            let refused_by = |s: &Sim, i: usize| {
                let id = s.nodes[i].id;
                (0..n)
                    .filter(|&j| j != i && s.nodes[j].up)
                    .filter(|&j| {
                        let l = &s.nodes[j].link;
                        l.peer_state(id) == Some(PeerState::Expelled)
                            || l.forgotten().any(|(f, _)| f == id)
                    })
                    .count()
            };
            for i in 0..n {
                let got = self.nodes[i].link.stats().refusals_received;
                if self.nodes[i].up && told_at[i].is_none() && got > base[i] {
                    if trace_phase {
                        let rb: Vec<usize> = (0..n).map(|x| refused_by(self, x)).collect();
                        eprintln!("[{}] r{i} told; refused_by {rb:?}", self.now);
                    }
                    told_at[i] = Some(self.now);
                }
            }
            // The most refused; of two refusing each other, the one that was cut off.
            let pick = (0..n)
                .filter(|&i| self.nodes[i].up && told_at[i].is_some())
                .map(|i| (refused_by(self, i), i))
                .filter(|(c, _)| *c > 0)
                .max_by_key(|&(c, i)| (c, i == r, std::cmp::Reverse(i)));
            if let Some((_, i)) = pick {
                if told_at[i].is_some_and(|t| self.now >= t + spread + 1_000) {
                    if trace_phase {
                        eprintln!(
                            "[{}] operator restarts r{i} (cut off: r{r}, forget {forget})",
                            self.now
                        );
                    }
                    self.crash(i, true);
                    // Removal records only it collected (cut off from the others' GC) are
                    // gone with its state.
                    for k in 0..self.keys.len() {
                        let key = self.keys[k].key.clone();
                        let held = self.holdings(&key);
                        let lost = self.models[k].region_restarted(Self::bit(i), held.as_ref());
                        self.report.atoms_lost += lost as u64;
                    }
                    self.report.operator_restarts += 1;
                    told_at[i] = None;
                    // Its next incarnation starts counting from zero.
                    base[i] = 0;
                }
            }
        }
    }

    fn any_tombstone(&self) -> bool {
        self.nodes.iter().any(|n| {
            self.keys.iter().any(|k| {
                n.store
                    .ks
                    .raw_entry(&k.key)
                    .is_some_and(|e| !e.is_alive() && e.floor() == 0)
            })
        })
    }

    fn any_lossy_slot(&self) -> bool {
        self.nodes.iter().any(|n| {
            self.keys
                .iter()
                .any(|k| n.store.ks.slot_is_lossy(key_slot(&k.key)))
        })
    }

    /// Advance time, quietly, until every region's wall clock has passed every HLC issued.
    /// Returns how long.
    fn wait_for_clocks(&mut self) -> u64 {
        self.wait_for_clocks_within(self.link_cfg.max_clock_offset_ms)
    }

    /// Like `wait_for_clocks`, until every wall clock is within `slack_ms` of every HLC.
    fn wait_for_clocks_within(&mut self, slack_ms: u64) -> u64 {
        let max_hlc = self
            .nodes
            .iter()
            .map(|n| n.clock.last().physical_ms())
            .max()
            .unwrap_or(0);
        let min_wall = (0..self.nodes.len())
            .map(|i| self.node_now(i))
            .min()
            .unwrap_or(0);
        if max_hlc > min_wall + slack_ms {
            let gap = max_hlc - min_wall + 1_000;
            let gap = gap.div_ceil(TICK_MS) * TICK_MS;
            // Frames in flight keep their relative order; they arrive after the wait.
            let wire = std::mem::take(&mut self.wire);
            for ((at, seq), m) in wire {
                self.wire.insert((at + gap, seq), m);
            }
            self.now += gap;
            self.trace(0xc10c);
            return gap;
        }
        0
    }

    fn divergence_detail(&mut self) -> String {
        let mut out = String::new();
        let ids: Vec<RegionId> = self.nodes.iter().map(|n| n.id).collect();
        for n in &self.nodes {
            let backlog: Vec<usize> = ids
                .iter()
                .filter(|&&p| p != n.id)
                .map(|&p| n.link.backlog(p))
                .collect();
            out.push_str(&format!(
                "[r{} up {} idle {} backlog {:?} hlc {} link {:?} ae {:?}] ",
                n.id.0,
                n.up,
                n.link.is_idle(),
                backlog,
                crate::oracle::fmt_hlc(n.clock.last()),
                n.link.stats(),
                n.link.anti_entropy_stats()
            ));
        }
        out.push_str(&format!("now {} ", self.now));
        let mut differing = Vec::new();
        for s in 0..SLOT_COUNT as u16 {
            let d0 = self.nodes[0].store.ks.slot_digest(s);
            if self
                .nodes
                .iter_mut()
                .any(|n| n.store.ks.slot_digest(s) != d0)
            {
                differing.push(s);
            }
        }
        out.push_str(&format!("differing slots {differing:?}"));
        out
    }

    fn converged(&mut self) -> bool {
        if !self.nodes.iter().all(|n| n.link.is_idle()) {
            return false;
        }
        // No state in flight either (a stale duplicate may still land).
        if self
            .wire
            .values()
            .any(|m| !frame_states(&m.frame).is_empty())
        {
            return false;
        }
        let (first, rest) = self.nodes.split_first_mut().expect("at least two regions");
        (0..SLOT_COUNT as u16).all(|s| {
            let d = first.store.ks.slot_digest(s);
            rest.iter_mut().all(|n| n.store.ks.slot_digest(s) == d)
        })
    }

    fn check_values(&mut self, phase: &str) {
        for k in 0..self.keys.len() {
            let key = self.keys[k].key.clone();
            self.debug(&key, || format!("model {}", self.models[k].describe()));
            let model = &self.models[k];
            let expected_deadline = model.deadline();
            let mut deadlines = Vec::new();
            for i in 0..self.nodes.len() {
                let now = self.node_now(i);
                let expected = model.expected(now);
                let e = self.nodes[i].store.ks.raw_entry(&key);
                let got = render(e.as_deref(), now);
                if got != expected {
                    self.report.violations.push(format!(
                        "value ({phase}): key {:?} at region {i}: got {:?}, oracle expects {:?}",
                        key, got, expected
                    ));
                }
                let alive = e.as_ref().filter(|e| e.is_alive() && !e.is_expired(now));
                let d = alive.and_then(|e| e.deadline_ms());
                if alive.is_some() && expected != Rendered::Absent && d != expected_deadline {
                    self.report.violations.push(format!(
                        "ttl ({phase}): key {key:?} at region {i} has deadline {d:?}, oracle \
                         expects {expected_deadline:?}"
                    ));
                }
                if alive.is_some() {
                    deadlines.push((i, d));
                }
            }
            if deadlines.windows(2).any(|w| w[0].1 != w[1].1) {
                self.report.violations.push(format!(
                    "ttl ({phase}): key {key:?} has different deadlines across regions: {deadlines:?}"
                ));
            }
        }
    }

    fn check_metadata(&mut self) {
        // Metadata bounded: after heal and GC every tombstone is gone, and what is left is
        // bounded by the hot key space, not by the number of operations. Counter
        // incarnations: at most one per loss of a region's state for a key.
        let n = self.nodes.len();
        let losses =
            (self.report.evictions + self.report.expired + self.report.empty_restarts) as usize;
        let bound =
            self.keys.len() * (2 + 2 * n + MEMBERS.len() * (1 + n) + FIELDS.len() * n) + 2 * losses;
        for node in &self.nodes {
            let stats = node.store.ks.stats();
            let meta = node.store.ks.metadata_elements();
            self.report.metadata_elements = self.report.metadata_elements.max(meta);
            // Invalidation floors are bounded by their retention, not by causal GC.
            let floors = self
                .keys
                .iter()
                .filter(|s| {
                    node.store
                        .ks
                        .raw_entry(&s.key)
                        .is_some_and(|e| !e.is_alive() && e.floor() != 0)
                })
                .count();
            if stats.tombstones > floors {
                let tombs: Vec<String> = self
                    .keys
                    .iter()
                    .filter_map(|s| {
                        let e = node.store.ks.raw_entry(&s.key)?;
                        (!e.is_alive() && e.floor() == 0).then(|| {
                            format!(
                                "{} {}",
                                String::from_utf8_lossy(&s.key),
                                crate::oracle::fmt_entry(Some(&e))
                            )
                        })
                    })
                    .collect();
                self.report.violations.push(format!(
                    "gc: region {} keeps {} tombstone keys after heal: {tombs:?}",
                    node.id.0,
                    stats.tombstones - floors
                ));
            }
            if meta > bound {
                self.report.violations.push(format!(
                    "gc: region {} keeps {meta} metadata elements (bound {bound})",
                    node.id.0
                ));
            }
            let lossy = (0..SLOT_COUNT as u16)
                .filter(|&s| node.store.ks.slot_is_lossy(s))
                .count();
            if lossy > 0 {
                self.report.violations.push(format!(
                    "repair: region {} still has {lossy} lossy slots after heal",
                    node.id.0
                ));
            }
        }
    }

    fn finish(mut self) -> SimReport {
        for i in 0..self.nodes.len() {
            let s = self.nodes[i].store.ks.stats().clone();
            self.report.partial_deltas_dropped += s.partial_deltas_dropped;
            let ls = self.nodes[i].link.stats().clone();
            self.report.logs_dropped += ls.logs_dropped;
            self.report.deltas_clock_held += ls.deltas_clock_held;
            for slot in 0..SLOT_COUNT as u16 {
                let d = self.nodes[i].store.ks.slot_digest(slot);
                if d != 0 {
                    self.trace(d ^ u64::from(slot));
                }
            }
        }
        for n in &self.nodes {
            self.report.expulsions += n.link.stats().peers_expelled;
            self.report.frames_refused += n.link.stats().frames_refused;
        }
        self.trace(self.report.violations.len() as u64);
        self.report.trace_hash = self.trace;
        self.report
    }
}

fn keyspace_config(id: RegionId, seed: u64) -> KeyspaceConfig {
    KeyspaceConfig {
        region: id,
        retain_tombstones: true,
        seed: seed ^ u64::from(id.0),
    }
}

/// Run one seeded simulation.
pub fn run(cfg: SimConfig) -> SimReport {
    Sim::new(cfg).run()
}
