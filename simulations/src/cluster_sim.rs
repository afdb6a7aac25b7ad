//! The clustered-regions simulator (issue 20): regions that are clusters with different
//! numbers of primaries and different slot maps, every primary driving the production
//! [`NodeLinks`] over the real codec, one seeded RNG, virtual time.
//!
//! Per run: 2–3 regions, each with 1–4 primaries over a random slot map; a random workload
//! (`SET`, `DEL`, `EXPIRE` with a far deadline, `INCRBY`, `SADD`, `SREM`) at the node of
//! each key's region that serves its slot. Faults, every one on by default
//! ([`ClusterFaults`]; a switch only turns one off, for debugging):
//! - `network`: frames dropped, duplicated, delayed and so reordered;
//! - `partitions`: the links between two regions cut for a while, both ways;
//! - `reshards`: a slot range moves between two primaries of a region while writes and
//!   deltas are in flight (keys merged at the target, dropped at the source, the target's
//!   gained slots a local gap as the shell notes them); the other regions learn the new map
//!   each after its own random delay, so their routing is stale meanwhile;
//! - `failovers`: a primary dies and its replica takes over (new node id, fresh
//!   `NodeLinks` with a new epoch base) holding the primary's keyspace as of its last sync:
//!   the writes after it are lost with the old primary unless a peer region got them;
//! - `late-topology`: one region's topology reaches the others only seconds in (their
//!   deltas to it are unrouted until then, and its nodes' deltas to them are refused);
//! - `gc-during-faults`: nodes collect garbage on every step of the faults too, so the
//!   value checkers judge tombstones collected while links are cut, routing is stale and
//!   primaries fail over to lagging replicas.
//! - `region-churn`: one region joins at run time (absent at the start; every node of the
//!   others adds it, its primaries start empty and bootstrap by anti-entropy), and in half
//!   the three-region runs another region leaves (every node of the rest forgets it, as
//!   `MERIDIAN REGION FORGET`; its nodes stop): what only it held is lost, what it had
//!   shipped anywhere must reach every region left (forgetting asks every remaining link
//!   for a round).
//!
//! Each primary's replica acknowledges at random moments (it holds the primary's keyspace
//! as of then): a node's links claim only what its replica holds
//! ([`NodeLinks::set_replica_cap`], as the shell's `ReplicaCap` does with the replica
//! stream's acks), so a failover to a replica a removal had not reached finds every peer
//! still holding the removal's tombstone (the `uncapped-claims` bug shows what happens
//! otherwise: the promoted replica's copy of what the removal killed comes back).
//!
//! Periodic anti-entropy runs every 2 s, as in a deployment (`ClusterSimConfig::anti_entropy_ms`;
//! `--anti-entropy-ms 0` turns it off, so that every repair has to come from the rounds the
//! protocol requests itself — the gaps a topology change opens, re-checks of rounds that
//! found differences — and a missing one shows; sweeps run both ways).
//!
//! Then heal: every fault stops, every node learns every peer's current map, and the links
//! run until nothing moves; then a GC phase (every link runs an anti-entropy round every
//! second, as periodic ones would, every replica acknowledges, and the nodes collect
//! garbage, [`NodeLinks::collect_garbage`], until no tombstone is left, at most
//! `max_gc_ms`). Checkers:
//! - `placement` (every step and after heal): no node stores a key of a slot it does not
//!   serve;
//! - `local`: a write is live in its node's state right after it;
//! - `converge`: every key reads the same (value and deadline) at its owner in every region;
//! - `value` / `counter`: that value is the oracle's ([`KeyModel`], as in the single-node
//!   simulator), counters exact against the acknowledged increments;
//! - `liveness`: the links quiesce within `max_heal_ms`: no batch or repair on the wire,
//!   every delta acknowledged, every local gap repaired, across a resend timeout and (with
//!   periodic anti-entropy) a whole interval, so every link ran a round that found nothing
//!   to repair;
//! - `gc`: after the GC phase no node keeps a tombstone (with three regions this needs the
//!   node-wide aggregate in every link's frontier gossip); `value`/`counter`/`converge`
//!   are checked again after it (violations found then are marked `[after gc]`).
//!
//! Failover and the oracle: a failover is a loss like the single-node simulator's empty
//! restart. Just before it the simulator joins every copy of each key (keyspaces and link
//! logs of all live nodes, the dying one included — a reshard's source keeps unacknowledged
//! deltas of keys it moved away — and the states in frames on the wire); just after it, every
//! copy left (the promoted replica's snapshot included; the dead node's frames in flight are
//! dropped with it). [`KeyModel::forget_lost`] marks the atoms only the dead node held as
//! lost: an increment the old primary acknowledged but neither shipped to a peer region nor
//! had synced to its replica is not expected any more. Everything else — in particular an
//! increment the old primary had shipped and a peer region holds — must survive, and the
//! promoted replica must get it back by anti-entropy. A reshard is not a loss: the oracle
//! expects every atom through it. One case is left unjudged: when an atom survives a
//! failover only in a link log or a frame (a reshard's source still holds an unacknowledged
//! delta of a key it moved to the node that just failed), whether it lands depends on
//! whether its receiver already learned the move (then the former owner's delta is outside
//! its link's scope and refused, by design). Such a key is *in doubt*
//! (`ClusterReport::keys_in_doubt`, about 1 key in 700): still checked by `converge` and
//! `placement`, not by `value`/`counter`.
//!
//! Bugs ([`ClusterBug`]) prove each checker fires: `skip-reroute-gap` (a `NodeLinks` whose
//! `set_owners` does not make changed slots local gaps), `store-unserved` (a node that
//! stores deltas of slots it does not serve), `migration-loses-keys` (a reshard that drops
//! the moved keys instead of merging them at the target), `no-gc-aggregate` (links get no
//! third-party frontier entries: with three regions, tombstones stay) and `uncapped-claims`
//! (claims not capped by the replica: `value` fails after a failover).

use crate::oracle::{fmt_entry, fmt_stamp, incarnation_of, render, KeyModel, Rendered, View};
use bytes::Bytes;
use meridian_crdt::digest::mix;
use meridian_crdt::{
    key_slot, Applied, Delta, Entry, Hlc, HlcClock, Keyspace, KeyspaceConfig, Kind, RegionId,
    SLOT_COUNT,
};
use meridian_replication::proto::node_links::{NodeLinks, PeerNode, SlotSet};
use meridian_replication::{decode, Frame, FrameEncoder, LinkConfig, LinkStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::rc::Rc;

/// A deliberate bug, for showing that the checkers have teeth.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ClusterBug {
    /// `NodeLinks::set_owners` does not make the slots that changed hands local gaps.
    SkipRerouteGap,
    /// A node stores deltas and entries of slots it does not serve.
    StoreUnserved,
    /// A reshard drops the moved keys at the source without merging them at the target.
    MigrationLosesKeys,
    /// `NodeLinks` hands its links no third-party frontier entries (the node-wide
    /// aggregate): with three regions nothing with a third region's stamps is collected.
    NoGcAggregate,
    /// A node's links claim what it holds whatever its replica holds (no
    /// `NodeLinks::set_replica_cap`): a failover to a replica a removal had not reached
    /// brings back what it removed, once peers collected its tombstone.
    UncappedClaims,
}

impl ClusterBug {
    pub const NAMES: [(&'static str, ClusterBug); 5] = [
        ("skip-reroute-gap", ClusterBug::SkipRerouteGap),
        ("store-unserved", ClusterBug::StoreUnserved),
        ("migration-loses-keys", ClusterBug::MigrationLosesKeys),
        ("no-gc-aggregate", ClusterBug::NoGcAggregate),
        ("uncapped-claims", ClusterBug::UncappedClaims),
    ];

    pub fn parse(name: &str) -> Option<ClusterBug> {
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

/// Fault modes, every one on by default (module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFaults {
    pub network: bool,
    pub partitions: bool,
    pub reshards: bool,
    pub failovers: bool,
    pub late_topology: bool,
    /// Nodes collect garbage on every step of the faults too, not only after heal.
    pub gc_during_faults: bool,
    /// A region joins at run time (it starts absent and bootstraps from its peers), and
    /// with three regions one of the others may leave (`MERIDIAN REGION FORGET` on every
    /// node of the rest; its nodes stop).
    pub region_churn: bool,
}

impl Default for ClusterFaults {
    fn default() -> Self {
        ClusterFaults {
            network: true,
            partitions: true,
            reshards: true,
            failovers: true,
            late_topology: true,
            gc_during_faults: true,
            region_churn: true,
        }
    }
}

impl ClusterFaults {
    pub const NAMES: [&'static str; 7] = [
        "network",
        "partitions",
        "reshards",
        "failovers",
        "late-topology",
        "gc-during-faults",
        "region-churn",
    ];

    pub fn switch(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "network" => &mut self.network,
            "partitions" => &mut self.partitions,
            "reshards" => &mut self.reshards,
            "failovers" => &mut self.failovers,
            "late-topology" => &mut self.late_topology,
            "gc-during-faults" => &mut self.gc_during_faults,
            "region-churn" => &mut self.region_churn,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct ClusterSimConfig {
    pub seed: u64,
    pub faults: ClusterFaults,
    pub bug: Option<ClusterBug>,
    /// Virtual duration of the workload under faults.
    pub fault_ms: u64,
    /// Virtual time the links get to quiesce after heal.
    pub max_heal_ms: u64,
    /// Periodic anti-entropy interval of every link (`LinkConfig::anti_entropy_interval_ms`);
    /// 0 turns periodic rounds off, so that every repair has to come from the rounds the
    /// protocol requests itself (topology gaps, restarts, re-checks) and a missing one shows.
    pub anti_entropy_ms: u64,
    /// Virtual time the GC phase may take to collect every tombstone.
    pub max_gc_ms: u64,
}

impl ClusterSimConfig {
    pub fn new(seed: u64) -> ClusterSimConfig {
        ClusterSimConfig {
            seed,
            faults: ClusterFaults::default(),
            bug: None,
            fault_ms: 4_000,
            max_heal_ms: 120_000,
            anti_entropy_ms: 2_000,
            max_gc_ms: 30_000,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ClusterReport {
    pub seed: u64,
    /// Primaries per region at the start.
    pub shape: Vec<usize>,
    pub ops: u64,
    pub ops_refused: u64,
    pub frames: u64,
    pub frames_dropped: u64,
    pub reshards: u64,
    pub slots_moved: u64,
    pub keys_migrated: u64,
    pub failovers: u64,
    /// Regions that joined / left at run time (`region-churn`).
    pub joins: u64,
    pub leaves: u64,
    /// Tombstones left after the GC phase that carry a stamp of a region that left (the
    /// known gap in `tombstones`).
    pub tombstones_of_left_regions: u64,
    pub atoms_lost: u64,
    pub refused_unserved: u64,
    pub refused_scope: u64,
    pub unrouted: u64,
    pub slots_rerouted: u64,
    pub heal_ms: u64,
    /// Deleted-state entries collected, and the GC phase's length.
    pub gc_dropped: u64,
    pub gc_ms: u64,
    /// Keys left out of the `value`/`counter` checks (module doc: failover and the oracle).
    pub keys_in_doubt: u64,
    pub violations: Vec<String>,
    pub trace_hash: u64,
}

impl ClusterReport {
    /// The distinct kinds (first word) of the violations.
    pub fn violation_kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .violations
            .iter()
            .map(|v| v.split([':', ' ']).next().unwrap_or("").to_string())
            .collect();
        k.sort();
        k.dedup();
        k
    }
}

const KEY_COUNT: usize = 45;
const MEMBERS: [&[u8]; 4] = [b"m0", b"m1", b"m2", b"m3"];
const TICK_MS: u64 = 5;
const START_MS: u64 = 1_000_000;
/// `EXPIRE` sets deadlines past any run's end: TTLs replicate, nothing expires.
const FAR_TTL_MS: u64 = 100_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Counter,
    Str,
    Set,
}

fn link_config(cfg: &ClusterSimConfig) -> LinkConfig {
    LinkConfig {
        anti_entropy_interval_ms: if cfg.anti_entropy_ms == 0 {
            // Off in practice (longer than any run).
            100_000_000
        } else {
            cfg.anti_entropy_ms
        },
        anti_entropy_retry_ms: 100,
        anti_entropy_quiet_ms: 10,
        frontier_interval_ms: 100,
        resend_timeout_ms: 200,
        ..LinkConfig::default()
    }
}

/// A node's keyspace as the shell shows it to replication: nothing stored outside the
/// slots it serves (unless the bug says so).
struct Served<'a> {
    ks: &'a mut Keyspace,
    served: &'a SlotSet,
    refused: &'a mut u64,
    bug: bool,
}

impl Served<'_> {
    fn serves(&mut self, slot: u16) -> bool {
        if self.served.contains(slot) || self.bug {
            return true;
        }
        *self.refused += 1;
        false
    }
}

impl LinkStore for Served<'_> {
    fn apply_delta(&mut self, delta: &Delta) -> Applied {
        if !self.serves(delta.slot) {
            return Applied::Unchanged;
        }
        LinkStore::apply_delta(self.ks, delta)
    }
    fn merge_full(&mut self, key: &[u8], state: &Entry) -> Applied {
        if !self.serves(key_slot(key)) {
            return Applied::Unchanged;
        }
        LinkStore::merge_full(self.ks, key, state)
    }
    fn slot_digest(&mut self, slot: u16) -> u64 {
        if self.served.contains(slot) {
            LinkStore::slot_digest(self.ks, slot)
        } else {
            0
        }
    }
    fn for_each_key_digest(&self, slot: u16, visit: &mut dyn FnMut(&[u8], u64)) {
        if self.served.contains(slot) {
            LinkStore::for_each_key_digest(self.ks, slot, visit)
        }
    }
    fn for_each_entry(&self, slot: u16, visit: &mut dyn FnMut(&[u8], &Entry)) {
        if self.served.contains(slot) {
            LinkStore::for_each_entry(self.ks, slot, visit)
        }
    }
    fn entry(&self, key: &[u8]) -> Option<Entry> {
        if self.served.contains(key_slot(key)) {
            LinkStore::entry(self.ks, key)
        } else {
            None
        }
    }
    fn slot_is_lossy(&self, slot: u16) -> bool {
        self.ks.slot_is_lossy(slot)
    }
    fn slot_loss_mark(&self, slot: u16) -> Option<u64> {
        self.ks.slot_loss_mark(slot)
    }
    fn mark_slot_repaired(&mut self, slot: u16, mark: u64) {
        LinkStore::mark_slot_repaired(self.ks, slot, mark)
    }
    fn gc(&mut self, stable: &dyn Fn(RegionId) -> Hlc) -> usize {
        self.ks.gc(&|r| stable(r))
    }
}

/// One primary.
struct Node {
    region: usize,
    id: u64,
    alive: bool,
    ks: Keyspace,
    clock: HlcClock,
    links: NodeLinks,
    served: SlotSet,
    /// Its replica: the keyspace as of the last sync (the replica stream lags).
    replica: Keyspace,
    /// Per region, the version of its map this node follows (0: none yet).
    known: Vec<u64>,
}

struct Region {
    id: RegionId,
    /// Slot → node id serving it.
    map: Rc<Vec<Option<u64>>>,
    version: u64,
    next_id: u64,
    /// Part of the deployment now (`region-churn`: a region joins late, one may leave).
    present: bool,
}

struct Msg {
    from: (usize, u64),
    to: (usize, u64),
    bytes: Vec<u8>,
}

/// A topology update on its way to a node.
struct TopoUpdate {
    at: u64,
    node: usize,
    region: usize,
    version: u64,
    map: Rc<Vec<Option<u64>>>,
}

struct Sim {
    cfg: ClusterSimConfig,
    rng: ChaCha8Rng,
    now: u64,
    regions: Vec<Region>,
    nodes: Vec<Node>,
    keys: Vec<(Bytes, Class)>,
    models: Vec<KeyModel>,
    wire: BTreeMap<(u64, u64), Msg>,
    wire_seq: u64,
    topo: Vec<TopoUpdate>,
    /// Region pairs cut until the given time.
    cut: BTreeMap<(usize, usize), u64>,
    loss_pct: u32,
    dup_pct: u32,
    max_delay_ms: u64,
    /// Where a region's first topology is held back (`late-topology`): region, until.
    late: Option<(usize, u64)>,
    refused_unserved: u64,
    report: ClusterReport,
    trace: u64,
    /// Keys whose value the oracle cannot settle (see `failover`).
    in_doubt: Vec<bool>,
    /// `MERIDIAN_SIM_KEY`: trace this key's history on stderr.
    debug_key: Option<Bytes>,
    /// Nodes collect garbage on every step (the `gc-during-faults` fault mode, the GC phase).
    gc_on: bool,
    /// `region-churn`: (region, when) it joins; (region, when) it leaves.
    join: Option<(usize, u64)>,
    leave: Option<(usize, u64)>,
}

fn ks_config(region: RegionId, seed: u64, id: u64) -> KeyspaceConfig {
    KeyspaceConfig {
        region,
        retain_tombstones: true,
        seed: seed ^ (u64::from(region.0) << 32) ^ id,
    }
}

fn frame_states(frame: &Frame) -> Vec<(&Bytes, &Entry)> {
    match frame {
        Frame::Batch(b) => b.deltas.iter().map(|d| (&d.key, &d.state)).collect(),
        Frame::AeEntries(e) => e.entries.iter().map(|k| (&k.key, &k.state)).collect(),
        _ => Vec::new(),
    }
}

fn decode_frame(bytes: &[u8]) -> Frame {
    decode(bytes)
        .expect("the codec decodes what it encoded")
        .expect("a whole frame")
        .0
}

impl Sim {
    fn new(cfg: ClusterSimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xC1u64 << 56);
        let n_regions = rng.random_range(2..=3usize);
        let mut regions = Vec::new();
        let mut shape = Vec::new();
        for r in 0..n_regions {
            let primaries = rng.random_range(1..=4usize);
            shape.push(primaries);
            // Random cut points: node i serves [cuts[i], cuts[i+1]).
            let mut cuts: Vec<u16> = (1..primaries)
                .map(|_| rng.random_range(1..SLOT_COUNT as u16))
                .collect();
            cuts.sort();
            cuts.dedup();
            let mut map = vec![None; SLOT_COUNT];
            let mut owner = 0u64;
            for (s, m) in map.iter_mut().enumerate() {
                while (owner as usize) < cuts.len() && s >= usize::from(cuts[owner as usize]) {
                    owner += 1;
                }
                *m = Some(owner);
            }
            regions.push(Region {
                id: RegionId(r as u16),
                map: Rc::new(map),
                version: 1,
                next_id: cuts.len() as u64 + 1,
                present: true,
            });
        }
        let classes = [Class::Counter, Class::Str, Class::Set];
        let keys: Vec<(Bytes, Class)> = (0..KEY_COUNT)
            .map(|i| {
                let c = classes[i % 3];
                let name = match c {
                    Class::Counter => format!("ctr:{i}"),
                    Class::Str => format!("str:{i}"),
                    Class::Set => format!("set:{i}"),
                };
                (Bytes::from(name), c)
            })
            .collect();
        let mut sim = Sim {
            rng,
            now: START_MS,
            nodes: Vec::new(),
            models: (0..keys.len()).map(|_| KeyModel::default()).collect(),
            keys,
            wire: BTreeMap::new(),
            wire_seq: 0,
            topo: Vec::new(),
            cut: BTreeMap::new(),
            loss_pct: 0,
            dup_pct: 0,
            max_delay_ms: 5,
            late: None,
            refused_unserved: 0,
            report: ClusterReport {
                seed: cfg.seed,
                shape,
                ..ClusterReport::default()
            },
            trace: cfg.seed,
            in_doubt: vec![false; KEY_COUNT],
            debug_key: std::env::var("MERIDIAN_SIM_KEY").ok().map(Bytes::from),
            gc_on: cfg.faults.gc_during_faults,
            join: None,
            leave: None,
            regions,
            cfg,
        };
        if sim.cfg.faults.network {
            sim.loss_pct = sim.rng.random_range(1..=10);
            sim.dup_pct = sim.rng.random_range(0..=5);
            sim.max_delay_ms = sim.rng.random_range(5..=120);
        }
        if sim.cfg.faults.late_topology {
            let r = sim.rng.random_range(0..n_regions);
            let until = START_MS + sim.rng.random_range(500..=sim.cfg.fault_ms.max(600));
            sim.late = Some((r, until));
            if let Some(k) = sim.debug_key.clone() {
                sim.debug(&k, || {
                    format!(
                        "region {r}'s topology reaches the others at {} ms",
                        until - START_MS
                    )
                });
            }
        }
        if sim.cfg.faults.region_churn {
            let fault_ms = sim.cfg.fault_ms.max(800);
            let j = sim.rng.random_range(0..n_regions);
            let at = START_MS + sim.rng.random_range(200..=fault_ms * 3 / 4);
            sim.join = Some((j, at));
            sim.regions[j].present = false;
            if n_regions >= 3 && sim.rng.random_range(0..2) == 0 {
                let l = (j + sim.rng.random_range(1..n_regions)) % n_regions;
                let at = START_MS + sim.rng.random_range(200..=fault_ms * 3 / 4);
                sim.leave = Some((l, at));
            }
        }
        for r in sim.present() {
            let ids: Vec<u64> = {
                let mut v: Vec<u64> = sim.regions[r].map.iter().flatten().copied().collect();
                v.sort();
                v.dedup();
                v
            };
            for id in ids {
                sim.add_node(r, id, None);
            }
        }
        for r in sim.present() {
            sim.publish(r);
        }
        sim
    }

    /// Indices of the regions part of the deployment now.
    fn present(&self) -> Vec<usize> {
        (0..self.regions.len())
            .filter(|&r| self.regions[r].present)
            .collect()
    }

    fn debug(&self, key: &[u8], what: impl FnOnce() -> String) {
        if self.debug_key.as_deref() == Some(key) {
            eprintln!("[{:>8} ms] {}", self.now - START_MS, what());
        }
    }

    /// With `MERIDIAN_SIM_KEY`: an anti-entropy frame that concerns its slot, described.
    fn debug_ae(&self, frame: &Frame) -> Option<String> {
        let key = self.debug_key.as_ref()?;
        let slot = key_slot(key);
        let listed =
            |slots: &[meridian_replication::codec::SlotKeys]| slots.iter().any(|s| s.slot == slot);
        match frame {
            Frame::AeKeys(k) if listed(&k.slots) => Some(format!(
                "AeKeys of round {:#x}: slot {slot} differs (last {})",
                k.round, k.last
            )),
            Frame::AeEntries(e) if listed(&e.want) || e.entries.iter().any(|k| k.key == key) => {
                Some(format!(
                    "AeEntries of round {:#x}: wants slot {slot} {}, carries the key {}",
                    e.round,
                    listed(&e.want),
                    e.entries.iter().any(|k| k.key == key)
                ))
            }
            _ => None,
        }
    }

    fn debug_delivery(&self, m: &Msg, what: &str, lost: &str) {
        if let Some(k) = self.debug_key.as_ref() {
            self.debug(k, || {
                format!(
                    "{}/{} -> {}/{}{lost}: {what}",
                    m.from.0, m.from.1, m.to.0, m.to.1
                )
            });
        }
    }

    fn trace(&mut self, x: u64) {
        self.trace = mix(self.trace, x);
    }

    fn node_index(&self, region: usize, id: u64) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.region == region && n.id == id && n.alive)
    }

    /// A new primary `id` of region `r` serving what the map gives it, with `state` (a
    /// promoted replica's keyspace) or empty.
    fn add_node(&mut self, r: usize, id: u64, state: Option<Keyspace>) -> usize {
        let region = self.regions[r].id;
        let peers: Vec<RegionId> = self
            .regions
            .iter()
            .filter(|g| g.present)
            .map(|g| g.id)
            .collect();
        let epoch_base = self.rng.random_range(2..u64::MAX / 2);
        let mut links = NodeLinks::new(region, &peers, epoch_base, link_config(&self.cfg));
        if self.cfg.bug == Some(ClusterBug::SkipRerouteGap) {
            links.inject_bug_skip_reroute_gap();
        }
        if self.cfg.bug == Some(ClusterBug::NoGcAggregate) {
            links.inject_bug_no_gc_aggregate();
        }
        let mut served = SlotSet::default();
        for (s, o) in self.regions[r].map.iter().enumerate() {
            if *o == Some(id) {
                served.insert(s as u16);
            }
        }
        let seed = self.cfg.seed;
        let ks = state.unwrap_or_else(|| Keyspace::new(ks_config(region, seed, id)));
        let mut clock = HlcClock::new(region);
        for (key, _) in &self.keys {
            if let Some(e) = ks.raw_entry(key) {
                clock.observe(e.max_hlc());
            }
        }
        self.nodes.push(Node {
            region: r,
            id,
            alive: true,
            ks,
            clock,
            links,
            served,
            replica: Keyspace::new(ks_config(region, seed, id ^ 0xFEED)),
            known: vec![0; self.regions.len()],
        });
        let i = self.nodes.len() - 1;
        self.sync_replica(i);
        // What every other region's map is now reaches the new node soon (it asks).
        for g in self.present() {
            if g != r {
                let at = self.now + self.rng.random_range(0..=50);
                self.schedule_topology(i, g, at);
            }
        }
        i
    }

    fn schedule_topology(&mut self, node: usize, region: usize, at: u64) {
        let at = match self.late {
            Some((late, until)) if late == region => at.max(until),
            _ => at,
        };
        self.topo.push(TopoUpdate {
            at,
            node,
            region,
            version: self.regions[region].version,
            map: self.regions[region].map.clone(),
        });
    }

    /// Region `r`'s map changed (or is first known): every node of the other regions learns
    /// it after its own delay.
    fn publish(&mut self, r: usize) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].alive && self.nodes[i].region != r {
                let delay = if self.cfg.faults.reshards || self.cfg.faults.failovers {
                    self.rng.random_range(0..=1_500)
                } else {
                    self.rng.random_range(0..=50)
                };
                self.schedule_topology(i, r, self.now + delay);
            }
        }
    }

    fn deliver_topology(&mut self, force: bool) {
        let now = self.now;
        let (due, rest): (Vec<TopoUpdate>, Vec<TopoUpdate>) = std::mem::take(&mut self.topo)
            .into_iter()
            .partition(|u| force || u.at <= now);
        self.topo = rest;
        for u in due {
            let n = &mut self.nodes[u.node];
            if !n.alive || n.known[u.region] >= u.version {
                continue;
            }
            n.known[u.region] = u.version;
            let map = u.map.clone();
            if let Some(k) = self.debug_key.clone() {
                let (r, id) = (n.region, n.id);
                self.debug(&k, || {
                    format!(
                        "node {r}/{id} learns region {}'s map v{}: slot {} at node {:?}",
                        u.region,
                        u.version,
                        key_slot(&k),
                        map[usize::from(key_slot(&k))]
                    )
                });
            }
            let n = &mut self.nodes[u.node];
            n.links
                .set_owners(self.regions[u.region].id, |s| map[usize::from(s)]);
            self.trace = mix(self.trace, (u.node as u64) << 32 ^ u.version);
        }
    }

    /// The replica of node `i` resyncs: it holds the primary's keyspace as of now.
    fn sync_replica(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let region = self.regions[n.region].id;
        let mut replica = Keyspace::new(ks_config(region, self.cfg.seed, n.id ^ 0xFEED));
        for (key, _) in &self.keys {
            if n.served.contains(key_slot(key)) {
                if let Some(e) = n.ks.raw_entry(key) {
                    replica.merge_state(key, true, &e);
                }
            }
        }
        replica.drain_deltas().for_each(drop);
        n.replica = replica;
        // The replica acknowledged everything up to now: the links may claim it
        // (`NodeLinks::set_replica_cap`; the shell does this when every replica's ack passes
        // the offset recorded with a checkpoint).
        if self.cfg.bug != Some(ClusterBug::UncappedClaims) {
            let cp = n.links.claim_checkpoint();
            n.links.set_replica_cap(Some(cp));
        }
    }

    // ---- workload ----

    fn op(&mut self) {
        let k = self.rng.random_range(0..self.keys.len());
        let (key, class) = self.keys[k].clone();
        let present = self.present();
        let r = present[self.rng.random_range(0..present.len())];
        let slot = key_slot(&key);
        let Some(i) = self.regions[r].map[usize::from(slot)].and_then(|id| self.node_index(r, id))
        else {
            self.report.ops_refused += 1;
            return;
        };
        let now = self.now;
        let choice = self.rng.random_range(0..100u32);
        let member = MEMBERS[self.rng.random_range(0..MEMBERS.len())];
        let by = self.rng.random_range(-3..=9i64);
        let value = Bytes::from(format!("v{}", self.rng.random_range(0..1000u32)));
        let node = &mut self.nodes[i];
        let seen = node.ks.raw_entry(&key).map(Cow::into_owned);
        let live = seen.as_ref().is_some_and(|e| e.is_alive());
        let stamp = node.clock.now(now);
        let ks = &mut node.ks;
        enum Done {
            Del,
            Set,
            Expire,
            Incr(Option<Hlc>),
            Sadd,
            Srem,
            Nothing,
        }
        let done = match class {
            Class::Counter => {
                let ok = ks.write(&key, stamp, now, |w| w.incr_by(by).is_ok());
                let after = ks.raw_entry(&key).map(Cow::into_owned);
                Done::Incr(
                    ok.then(|| incarnation_of(after.as_ref(), &None, stamp))
                        .flatten(),
                )
            }
            Class::Str if choice < 15 => {
                ks.write(&key, stamp, now, |w| w.delete());
                Done::Del
            }
            Class::Str if choice < 30 => {
                if !live {
                    Done::Nothing
                } else {
                    ks.write(&key, stamp, now, |w| w.set_deadline(Some(now + FAR_TTL_MS)));
                    Done::Expire
                }
            }
            Class::Str => {
                ks.write(&key, stamp, now, |w| w.set_str(value.clone(), false));
                Done::Set
            }
            Class::Set if choice < 10 => {
                ks.write(&key, stamp, now, |w| w.delete());
                Done::Del
            }
            Class::Set if choice < 40 => {
                ks.write(&key, stamp, now, |w| {
                    if w.expect(Kind::Set).is_ok() {
                        w.srem(member);
                    }
                });
                Done::Srem
            }
            Class::Set => {
                ks.write(&key, stamp, now, |w| {
                    if w.expect(Kind::Set).is_ok() {
                        w.sadd(member);
                    }
                });
                Done::Sadd
            }
        };
        let after = ks.raw_entry(&key).map(Cow::into_owned);
        let view = View::new(seen.as_ref());
        let model = &mut self.models[k];
        let marks = model.marks();
        match done {
            Done::Nothing => {
                self.report.ops += 1;
                return;
            }
            Done::Del => model.delete(&view),
            Done::Set => model.set_str(&view, stamp, value, 0, None),
            Done::Expire => model.set_deadline(&view, stamp, Some(now + FAR_TTL_MS)),
            Done::Incr(inc) => model.incr(&view, stamp, None, by, inc),
            Done::Sadd => model.sadd(&view, stamp, Bytes::from_static(member)),
            Done::Srem => model.srem(&view, member),
        }
        self.report.ops += 1;
        self.debug(&key, || {
            format!(
                "node {r}/{} op at {} by {by} choice {choice}: {}",
                self.nodes[i].id,
                fmt_stamp(stamp),
                fmt_entry(after.as_ref())
            )
        });
        let model = &mut self.models[k];
        if !model.check_own_write(r as u16, after.as_ref(), marks) {
            self.report.violations.push(format!(
                "local: node {r}/{} does not read its own write at {} to {:?} (state {})",
                self.nodes[i].id,
                fmt_stamp(stamp),
                key,
                fmt_entry(after.as_ref())
            ));
        }
        self.trace(stamp.hlc.0 ^ (k as u64) << 48);
        let node = &mut self.nodes[i];
        let deltas: Vec<Delta> = node.ks.drain_deltas().collect();
        for d in deltas {
            node.links.enqueue(now, d);
        }
        node.links.note_local_hlc(node.clock.last());
    }

    // ---- network ----

    fn is_cut(&self, a: usize, b: usize) -> bool {
        let pair = (a.min(b), a.max(b));
        self.cut.get(&pair).is_some_and(|&until| self.now < until)
    }

    fn send(&mut self, from: (usize, u64), to: PeerNode, frame: Frame, faults: bool) {
        self.report.frames += 1;
        let to_region = usize::from(to.region.0);
        if self.is_cut(from.0, to_region)
            || (faults && self.rng.random_range(0..100) < self.loss_pct)
        {
            self.report.frames_dropped += 1;
            if let Some(what) = self.debug_ae(&frame) {
                let m = Msg {
                    from,
                    to: (to_region, to.node),
                    bytes: Vec::new(),
                };
                self.debug_delivery(&m, &what, " LOST");
            }
            return;
        }
        let mut bytes = Vec::new();
        FrameEncoder::new(true)
            .encode_into(&frame, &mut bytes)
            .expect("frames stay under the limit");
        let copies = if faults && self.rng.random_range(0..100) < self.dup_pct {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if faults {
                1 + self.rng.random_range(0..=self.max_delay_ms)
            } else {
                1
            };
            self.wire_seq += 1;
            self.wire.insert(
                (self.now + delay, self.wire_seq),
                Msg {
                    from,
                    to: (to_region, to.node),
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.wire.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let m = entry.remove();
            if self.is_cut(m.from.0, m.to.0) {
                self.report.frames_dropped += 1;
                continue;
            }
            let Some(i) = self.node_index(m.to.0, m.to.1) else {
                continue;
            };
            let frame = decode_frame(&m.bytes);
            if let Some(what) = self.debug_ae(&frame) {
                self.debug_delivery(&m, &what, "");
            }
            self.trace(m.bytes.len() as u64 ^ (i as u64) << 40);
            let from = PeerNode {
                region: self.regions[m.from.0].id,
                node: m.from.1,
            };
            let bug = self.cfg.bug == Some(ClusterBug::StoreUnserved);
            let now = self.now;
            let dk = self.debug_key.clone();
            let before = dk
                .as_ref()
                .and_then(|k| self.nodes[i].ks.raw_entry(k).map(Cow::into_owned));
            let what = dk.as_ref().map(|_| format!("{frame:?}"));
            {
                let n = &mut self.nodes[i];
                let mut st = Served {
                    ks: &mut n.ks,
                    served: &n.served,
                    refused: &mut self.refused_unserved,
                    bug,
                };
                n.links.handle_frame(now, from, frame, &mut st);
                let seen = n.links.max_seen_hlc();
                n.clock.observe(seen);
            }
            if let Some(k) = dk {
                let after = self.nodes[i].ks.raw_entry(&k).map(Cow::into_owned);
                if after != before {
                    let what = what.unwrap_or_default();
                    self.debug(&k, || {
                        format!(
                            "node {}/{} merged from {}/{} ({}): {}",
                            m.to.0,
                            m.to.1,
                            m.from.0,
                            m.from.1,
                            &what[..what.len().min(300)],
                            fmt_entry(after.as_ref())
                        )
                    });
                }
            }
        }
    }

    /// Every live node: timers, anti-entropy steps, transmit.
    fn pump(&mut self, faults: bool) {
        let now = self.now;
        let bug = self.cfg.bug == Some(ClusterBug::StoreUnserved);
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let mut out = Vec::new();
            {
                let n = &mut self.nodes[i];
                if self.gc_on {
                    // As the shell's drain: the clock takes the wall clock first, so an idle
                    // node's own entry keeps up with its region's other nodes (their stamps
                    // share the region's entry; GC waits for the lowest). Only with GC on:
                    // without it, runs stay as they were.
                    n.clock.observe(Hlc::from_parts(now, 0));
                }
                n.links.note_local_hlc(n.clock.last());
                n.links.handle_timeout(now);
                for _ in 0..64 {
                    let mut st = Served {
                        ks: &mut n.ks,
                        served: &n.served,
                        refused: &mut self.refused_unserved,
                        bug,
                    };
                    n.links.poll_anti_entropy(now, &mut st);
                    while let Some(x) = n.links.poll_transmit(now) {
                        out.push(x);
                    }
                    if !n.links.has_anti_entropy_work() {
                        break;
                    }
                }
            }
            if self.gc_on {
                self.collect_garbage(i);
            }
            let from = (self.nodes[i].region, self.nodes[i].id);
            for (to, f) in out {
                self.send(from, to, f, faults);
            }
        }
    }

    /// Garbage collection at node `i`; the removal records it drops are stable (the oracle
    /// never counts them lost afterwards).
    fn collect_garbage(&mut self, i: usize) {
        let before: Vec<Option<Entry>> = self
            .keys
            .iter()
            .map(|(k, _)| self.nodes[i].ks.raw_entry(k).map(Cow::into_owned))
            .collect();
        let bug = self.cfg.bug == Some(ClusterBug::StoreUnserved);
        let n = &mut self.nodes[i];
        let mut st = Served {
            ks: &mut n.ks,
            served: &n.served,
            refused: &mut self.refused_unserved,
            bug,
        };
        let dropped = n.links.collect_garbage(&mut st);
        if dropped == 0 {
            return;
        }
        self.report.gc_dropped += dropped as u64;
        self.trace(0x6C ^ (dropped as u64) << 8 ^ (i as u64) << 40);
        for (k, b) in before.into_iter().enumerate() {
            let after = self.nodes[i]
                .ks
                .raw_entry(&self.keys[k].0)
                .map(Cow::into_owned);
            if b != after {
                self.debug(&self.keys[k].0, || {
                    format!(
                        "node {}/{} collected: {}",
                        self.nodes[i].region,
                        self.nodes[i].id,
                        fmt_entry(after.as_ref())
                    )
                });
                // Every region vouches (none is expelled from GC here).
                let by = self.present().iter().fold(0u16, |m, &r| m | 1 << r);
                self.models[k].note_collected(b.as_ref(), after.as_ref(), by);
            }
        }
    }

    /// Tombstones (dead entries, no invalidation floor) at live nodes.
    ///
    /// Known gap, left out: a tombstone carrying a stamp of a region that left. A node
    /// keeps, as what it holds of a forgotten region, what it held when it forgot it
    /// (`NodeLinks::forget_region`), and a node that held none of it then (it had not
    /// learned the region's topology, or was promoted or joined after the forget) holds GC
    /// of that region's stamps back for good. Such tombstones cost memory, not values
    /// (`value`/`counter`/`converge` are still checked after the GC phase); counted in
    /// `ClusterReport::tombstones_of_left_regions`.
    fn tombstones(&self) -> Vec<String> {
        self.tombstones_split().0
    }

    /// (tombstones, of which those left out for a region that left)
    fn tombstones_split(&self) -> (Vec<String>, usize) {
        let left: Vec<String> = (0..self.regions.len())
            .filter(|&r| !self.regions[r].present && self.report.leaves > 0)
            .filter(|&r| self.join.is_none_or(|(j, _)| j != r))
            .map(|r| format!("@r{r}"))
            .collect();
        let mut out = Vec::new();
        let mut of_left = 0;
        for n in self.nodes.iter().filter(|n| n.alive) {
            for (key, _) in &self.keys {
                if let Some(e) =
                    n.ks.raw_entry(key)
                        .filter(|e| !e.is_alive() && e.floor() == 0)
                {
                    let shown = fmt_entry(Some(&e));
                    if left.iter().any(|l| shown.contains(l.as_str())) {
                        of_left += 1;
                        continue;
                    }
                    out.push(format!("node {}/{} {:?} {shown}", n.region, n.id, key));
                }
            }
        }
        (out, of_left)
    }

    // ---- faults ----

    fn fault(&mut self) {
        let f = self.cfg.faults.clone();
        if let Some((r, at)) = self.join.filter(|&(_, at)| self.now >= at) {
            self.join = None;
            self.region_joins(r, at);
        }
        if let Some((r, _)) = self.leave.filter(|&(_, at)| self.now >= at) {
            self.leave = None;
            self.region_leaves(r);
        }
        let roll = self.rng.random_range(0..1000u32);
        let n = self.regions.len();
        if f.partitions && roll < 4 && n >= 2 {
            let a = self.rng.random_range(0..n);
            let b = (a + self.rng.random_range(1..n)) % n;
            let until = self.now + self.rng.random_range(50..=1_500);
            self.cut.insert((a.min(b), a.max(b)), until);
            self.trace(0xC07 ^ until);
        } else if f.reshards && (4..12).contains(&roll) {
            self.reshard();
        } else if f.failovers && (12..15).contains(&roll) {
            self.failover();
        }
        if self.rng.random_range(0..100) < 5 {
            let i = self.rng.random_range(0..self.nodes.len());
            if self.nodes[i].alive {
                self.sync_replica(i);
            }
        }
    }

    /// Region `r` joins: every node of the others adds it (as `accept-new-regions` does on
    /// its first `Hello`), its primaries start empty with links to every region present
    /// (not a first incarnation: anti-entropy both ways bootstraps them), and its map is
    /// published.
    fn region_joins(&mut self, r: usize, _at: u64) {
        let id = self.regions[r].id;
        for n in self.nodes.iter_mut().filter(|n| n.alive) {
            n.links.add_region(id);
        }
        self.regions[r].present = true;
        let ids: Vec<u64> = {
            let mut v: Vec<u64> = self.regions[r].map.iter().flatten().copied().collect();
            v.sort();
            v.dedup();
            v
        };
        for nid in ids {
            self.add_node(r, nid, None);
        }
        self.publish(r);
        self.report.joins += 1;
        self.trace(0x101 ^ (r as u64) << 8);
        if let Some(k) = self.debug_key.clone() {
            self.debug(&k, || format!("region {r} joins"));
        }
    }

    /// Region `r` leaves: its nodes stop, every other node forgets it. What only it held
    /// is lost (as with a failover: see `account_losses`); what it had shipped anywhere
    /// must reach every region left.
    fn region_leaves(&mut self, r: usize) {
        if self.present().len() < 3 || !self.regions[r].present {
            return;
        }
        let before = self.all_holdings();
        let id = self.regions[r].id;
        for n in self.nodes.iter_mut().filter(|n| n.region == r) {
            n.alive = false;
        }
        self.wire.retain(|_, m| m.from.0 != r && m.to.0 != r);
        self.regions[r].present = false;
        let now = self.now;
        for n in self.nodes.iter_mut().filter(|n| n.alive) {
            n.links.forget_region(id, now);
        }
        self.account_losses(&before, &format!("region {r} leaves"));
        self.report.leaves += 1;
        self.trace(0x1EA7E ^ (r as u64) << 8);
    }

    /// Every copy of each key (keyspaces, link logs and frames of live nodes).
    fn all_holdings(&self) -> Vec<Option<Entry>> {
        self.keys
            .iter()
            .map(|(k, _)| self.holdings(k, true))
            .collect()
    }

    /// After a loss (a failover, a region leaving): atoms only the lost copies held are
    /// not expected any more; atoms left only in logs and frames make the key in doubt.
    fn account_losses(&mut self, before: &[Option<Entry>], what: &str) {
        for (k, before) in before.iter().enumerate() {
            let after = self.holdings(&self.keys[k].0, true);
            let stored = self.holdings(&self.keys[k].0, false);
            // Atoms left only in logs and frames: whether they land depends on races the
            // design settles by refusing them (a former owner's delta is out of its link's
            // scope once the receiver learned the move), so the key's value is in doubt.
            let mut only_stored = self.models[k].clone();
            if only_stored.forget_lost(before.as_ref(), stored.as_ref())
                != self.models[k]
                    .clone()
                    .forget_lost(before.as_ref(), after.as_ref())
            {
                self.in_doubt[k] = true;
            }
            let n = self.models[k].forget_lost(before.as_ref(), after.as_ref());
            self.debug(&self.keys[k].0, || {
                format!(
                    "{what}: {n} atom(s) lost\n  before {}\n  after  {}",
                    fmt_entry(before.as_ref()),
                    fmt_entry(after.as_ref())
                )
            });
            self.report.atoms_lost += n as u64;
        }
    }

    /// Move a slot range between two primaries of one region.
    fn reshard(&mut self) {
        let present = self.present();
        let r = present[self.rng.random_range(0..present.len())];
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && self.nodes[i].region == r)
            .collect();
        if alive.len() < 2 {
            return;
        }
        let src = alive[self.rng.random_range(0..alive.len())];
        let dst = loop {
            let d = alive[self.rng.random_range(0..alive.len())];
            if d != src {
                break d;
            }
        };
        // Around a key the source serves, or anywhere in its slots.
        let src_keys: Vec<u16> = self
            .keys
            .iter()
            .map(|(k, _)| key_slot(k))
            .filter(|&s| self.nodes[src].served.contains(s))
            .collect();
        let centre = if !src_keys.is_empty() && self.rng.random_bool(0.8) {
            src_keys[self.rng.random_range(0..src_keys.len())]
        } else {
            match (0..SLOT_COUNT as u16).find(|&s| self.nodes[src].served.contains(s)) {
                Some(s) => s,
                None => return,
            }
        };
        let (below, above) = (
            self.rng.random_range(0..2_000u16),
            self.rng.random_range(0..2_000u16),
        );
        let mut lo = centre;
        while lo > 0 && centre - (lo - 1) <= below && self.nodes[src].served.contains(lo - 1) {
            lo -= 1;
        }
        let mut hi = centre;
        while usize::from(hi) + 1 < SLOT_COUNT
            && hi + 1 - centre <= above
            && self.nodes[src].served.contains(hi + 1)
        {
            hi += 1;
        }
        let mut moved: Vec<(Bytes, Entry)> = Vec::new();
        let mut slots = Vec::new();
        for s in lo..=hi {
            LinkStore::for_each_entry(&self.nodes[src].ks, s, &mut |k, e| {
                moved.push((Bytes::copy_from_slice(k), e.clone()))
            });
            let n = &mut self.nodes[src];
            n.served.remove(s);
            n.ks.drop_slot(s);
            n.replica.drop_slot(s);
            self.nodes[dst].served.insert(s);
            slots.push(s);
        }
        let src_clock = self.nodes[src].clock.last();
        let d = &mut self.nodes[dst];
        d.clock.observe(src_clock);
        if self.cfg.bug != Some(ClusterBug::MigrationLosesKeys) {
            for (k, e) in &moved {
                d.ks.merge_state(k, true, e);
            }
        }
        d.ks.drain_deltas().for_each(drop);
        // The shell makes gained slots a local gap of the new owner's links.
        d.links.note_local_loss(Hlc::ZERO, &slots);
        let new_id = d.id;
        let mut map = (*self.regions[r].map).clone();
        for &s in &slots {
            map[usize::from(s)] = Some(new_id);
        }
        self.regions[r].map = Rc::new(map);
        self.regions[r].version += 1;
        if let Some(k) = self.debug_key.clone() {
            if slots.contains(&key_slot(&k)) {
                let old = self.nodes[src].id;
                self.debug(&k, || {
                    format!("reshard in region {r}: slots {lo}..={hi} from node {old} to {new_id}")
                });
            }
        }
        self.report.reshards += 1;
        self.report.slots_moved += slots.len() as u64;
        self.report.keys_migrated += moved.len() as u64;
        self.trace(0x5EA ^ u64::from(lo) << 16 ^ u64::from(hi) << 32);
        self.publish(r);
    }

    /// The join of every copy of key `k`: keyspaces and link logs of live nodes, states on
    /// the wire.
    fn holdings(&self, key: &[u8], in_flight: bool) -> Option<Entry> {
        let mut acc: Option<Entry> = None;
        let mut join = |e: &Entry| match acc.as_mut() {
            None => acc = Some(e.clone()),
            Some(a) => {
                a.merge(e);
            }
        };
        for n in self.nodes.iter().filter(|n| n.alive) {
            if let Some(e) = n.ks.raw_entry(key) {
                join(&e);
            }
            if !in_flight {
                continue;
            }
            // A source's unacknowledged deltas of a key it since migrated away.
            for (p, _) in n.links.peers() {
                if let Some(l) = n.links.link(p) {
                    l.for_each_logged(&mut |d| {
                        if d.key == key {
                            join(&d.state);
                        }
                    });
                }
            }
        }
        for m in self.wire.values().filter(|_| in_flight) {
            let f = decode_frame(&m.bytes);
            for (k, s) in frame_states(&f) {
                if k == key {
                    join(s);
                }
            }
        }
        acc
    }

    /// A primary dies; its replica (the keyspace as of its last sync) takes over its slots
    /// under a new node id.
    fn failover(&mut self) {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .collect();
        let x = alive[self.rng.random_range(0..alive.len())];
        let before = self.all_holdings();
        let r = self.nodes[x].region;
        let old = self.nodes[x].id;
        self.nodes[x].alive = false;
        let (from, to) = ((r, old), (r, old));
        self.wire.retain(|_, m| m.from != from && m.to != to);
        let new_id = self.regions[r].next_id;
        self.regions[r].next_id += 1;
        let mut map = (*self.regions[r].map).clone();
        for o in map.iter_mut() {
            if *o == Some(old) {
                *o = Some(new_id);
            }
        }
        self.regions[r].map = Rc::new(map);
        self.regions[r].version += 1;
        let snapshot = std::mem::replace(
            &mut self.nodes[x].replica,
            Keyspace::new(ks_config(self.regions[r].id, 0, 0)),
        );
        let i = self.add_node(r, new_id, Some(snapshot));
        let slots: Vec<u16> = (0..SLOT_COUNT as u16)
            .filter(|&s| self.nodes[i].served.contains(s))
            .collect();
        self.nodes[i].links.note_local_loss(Hlc::ZERO, &slots);
        self.account_losses(&before, &format!("failover {r}/{old} -> {new_id}"));
        self.report.failovers += 1;
        self.trace(0xFA11 ^ old << 8 ^ new_id << 24);
        self.publish(r);
    }

    // ---- checkers ----

    fn owner_of(&self, r: usize, key: &[u8]) -> Option<usize> {
        self.regions[r].map[usize::from(key_slot(key))].and_then(|id| self.node_index(r, id))
    }

    fn check_placement(&mut self, phase: &str) {
        for n in self.nodes.iter().filter(|n| n.alive) {
            for (key, _) in &self.keys {
                if !n.served.contains(key_slot(key)) && n.ks.raw_entry(key).is_some() {
                    self.report.violations.push(format!(
                        "placement ({phase}): node {}/{} stores {:?} of slot {} it does not \
                         serve",
                        n.region,
                        n.id,
                        key,
                        key_slot(key)
                    ));
                }
            }
        }
    }

    fn check_values(&mut self) {
        let now = self.now;
        for k in 0..self.keys.len() {
            let (key, class) = self.keys[k].clone();
            let mut got: Vec<(usize, Rendered, Option<u64>)> = Vec::new();
            for r in self.present() {
                let Some(i) = self.owner_of(r, &key) else {
                    self.report
                        .violations
                        .push(format!("converge: no owner of {key:?} in region {r}"));
                    continue;
                };
                let e = self.nodes[i].ks.raw_entry(&key);
                let v = render(e.as_deref(), now);
                let d = e
                    .as_deref()
                    .filter(|e| e.is_alive())
                    .and_then(|e| e.deadline_ms());
                got.push((r, v, if matches!(class, Class::Str) { d } else { None }));
            }
            if got.windows(2).any(|w| w[0].1 != w[1].1 || w[0].2 != w[1].2) {
                self.report
                    .violations
                    .push(format!("converge: {key:?} differs across regions: {got:?}"));
            }
            self.debug(&key, || {
                let mut s = format!("model {}", self.models[k].describe());
                for n in self.nodes.iter().filter(|n| n.alive) {
                    s.push_str(&format!(
                        "\n  node {}/{}: {}",
                        n.region,
                        n.id,
                        fmt_entry(n.ks.raw_entry(&key).as_deref())
                    ));
                }
                s
            });
            let expected = self.models[k].expected(now);
            let deadline = self.models[k].deadline();
            let kind = if class == Class::Counter {
                "counter"
            } else {
                "value"
            };
            if self.in_doubt[k] {
                continue;
            }
            for (r, v, d) in &got {
                let ttl_bad = class == Class::Str && *v != Rendered::Absent && *d != deadline;
                if *v != expected || ttl_bad {
                    self.report.violations.push(format!(
                        "{kind}: {key:?} in region {r} reads {v:?} (deadline {d:?}), the oracle \
                         expects {expected:?} (deadline {deadline:?})"
                    ));
                }
            }
        }
    }

    /// Nothing left to move: no data on the wire, every local delta acknowledged by a live
    /// owner, every local gap repaired. Periodic anti-entropy keeps running: a round that
    /// finds nothing to repair (its digests, and an answer listing no slot) is quiet; one
    /// that lists a differing slot or ships an entry is not.
    fn quiet(&self) -> bool {
        if self.wire.values().any(|m| match decode_frame(&m.bytes) {
            Frame::Batch(_) | Frame::AeEntries(_) => true,
            Frame::AeKeys(k) => !k.slots.is_empty(),
            _ => false,
        }) {
            return false;
        }
        self.nodes.iter().filter(|n| n.alive).all(|n| {
            !n.links.has_anti_entropy_work()
                && self.live_backlog(n) == 0
                && self
                    .live_links(n)
                    .all(|p| n.links.link(p).is_some_and(|l| l.local_gap_slots() == 0))
        })
    }

    /// How long the links must stay quiet to count as quiesced: a resend timeout (nothing
    /// waits on a timer), and with periodic anti-entropy a whole interval and a retry more,
    /// so that every link ran a round over it and found nothing to repair.
    fn quiet_span_ms(&self) -> u64 {
        let ae = if self.cfg.anti_entropy_ms == 0 {
            0
        } else {
            self.cfg.anti_entropy_ms + link_config(&self.cfg).anti_entropy_retry_ms
        };
        400 + ae
    }

    /// The peers of `n`'s links that are alive and serve something.
    fn live_links<'a>(&'a self, n: &'a Node) -> impl Iterator<Item = PeerNode> + 'a {
        n.links.peers().filter_map(|(p, scope)| {
            (scope > 0 && self.node_index(usize::from(p.region.0), p.node).is_some()).then_some(p)
        })
    }

    /// Unacknowledged deltas on links to live nodes that serve something (a link to a dead
    /// or emptied node may keep its log: its slots are gaps of their new owners' links).
    fn live_backlog(&self, n: &Node) -> usize {
        self.live_links(n)
            .map(|p| n.links.link(p).map_or(0, |l| l.backlog(p.region)))
            .sum()
    }

    fn tick(&mut self, faults: bool) {
        self.deliver_topology(false);
        self.deliver();
        self.pump(faults);
        self.now += TICK_MS;
    }

    fn run(mut self) -> ClusterReport {
        let end = START_MS + self.cfg.fault_ms;
        while self.now < end {
            let ops = self.rng.random_range(0..4);
            for _ in 0..ops {
                self.op();
            }
            self.fault();
            self.tick(true);
            self.check_placement("faults");
            if self.report.violations.len() > 50 {
                break;
            }
        }
        // Heal: no more faults; every node learns every current map.
        self.cut.clear();
        self.late = None;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            for r in self.present() {
                if r != self.nodes[i].region {
                    self.schedule_topology(i, r, self.now);
                }
            }
        }
        self.deliver_topology(true);
        let heal_start = self.now;
        let mut quiet_ticks = 0;
        while self.now < heal_start + self.cfg.max_heal_ms {
            self.tick(false);
            if self.quiet() {
                quiet_ticks += 1;
                if quiet_ticks * TICK_MS > self.quiet_span_ms() {
                    break;
                }
            } else {
                quiet_ticks = 0;
            }
        }
        self.report.heal_ms = self.now - heal_start;
        if !self.quiet() {
            let detail: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.alive)
                .map(|n| {
                    let gaps: usize = self
                        .live_links(n)
                        .filter_map(|p| n.links.link(p).map(|l| l.local_gap_slots()))
                        .sum();
                    format!(
                        "{}/{}: backlog {} live {} gap slots {} ae {}",
                        n.region,
                        n.id,
                        n.links.backlog(),
                        self.live_backlog(n),
                        gaps,
                        n.links.has_anti_entropy_work()
                    )
                })
                .collect();
            self.report.violations.push(format!(
                "liveness: the links did not quiesce within {} ms: {detail:?}",
                self.cfg.max_heal_ms
            ));
        }
        self.check_placement("after heal");
        self.check_values();
        self.gc_phase();
        self.finish()
    }

    /// After heal: collect until no tombstone is left, then check the values again and that
    /// nothing is left. Every link runs an anti-entropy round every second meanwhile, as
    /// periodic ones would (this config defers them during the faults): a stream whose last
    /// batch came while its gap was open advances only with a clean round, and one that
    /// came while the peer still held its own entry down (a gap of its own that the same
    /// round repaired) only with the next.
    fn gc_phase(&mut self) {
        self.gc_on = true;
        let start = self.now;
        while self.now < start + self.cfg.max_gc_ms
            && (self.now < start + 1_000 || !self.tombstones().is_empty())
        {
            #[allow(clippy::manual_is_multiple_of)]
            let second = (self.now - start) % 1_000 == 0;
            if second {
                for n in self.nodes.iter_mut().filter(|n| n.alive) {
                    n.links.request_anti_entropy();
                }
                // Replicas keep acknowledging: what they hold is what GC may count.
                for i in 0..self.nodes.len() {
                    if self.nodes[i].alive {
                        self.sync_replica(i);
                    }
                }
            }
            self.tick(false);
        }
        self.report.gc_ms = self.now - start;
        self.report.tombstones_of_left_regions = self.tombstones_split().1 as u64;
        let before = self.report.violations.len();
        self.check_placement("after gc");
        self.check_values();
        for v in &mut self.report.violations[before..] {
            v.push_str(" [after gc]");
        }
        let left = self.tombstones();
        if !left.is_empty() && std::env::var("MERIDIAN_SIM_GC_DEBUG").is_ok() {
            for n in self.nodes.iter().filter(|n| n.alive) {
                eprintln!(
                    "node {}/{} aggregate {:?} served {}",
                    n.region,
                    n.id,
                    n.links.aggregate(),
                    n.served.len()
                );
                for (p, sc) in n.links.peers() {
                    let l = n.links.link(p).expect("link");
                    let alive = self.node_index(usize::from(p.region.0), p.node).is_some();
                    eprintln!(
                        "  -> {}/{} alive {alive} scope {sc}: backlog {} gaps {} idle {} stable {:?} seen {:?}",
                        p.region.0,
                        p.node,
                        l.backlog(p.region),
                        l.local_gap_slots(),
                        l.is_idle(),
                        l.stable_frontier(),
                        l.seen_vector()
                    );
                }
            }
        }
        if !left.is_empty() {
            self.report.violations.push(format!(
                "gc: {} tombstone(s) left {} ms after heal ({} regions): {:?}",
                left.len(),
                self.cfg.max_gc_ms,
                self.regions.len(),
                &left[..left.len().min(4)]
            ));
        }
    }

    fn finish(mut self) -> ClusterReport {
        for n in self.nodes.iter().filter(|n| n.alive) {
            let s = n.links.stats();
            self.report.refused_scope += s.refused;
            self.report.unrouted += s.unrouted;
            self.report.slots_rerouted += s.slots_rerouted;
        }
        self.report.refused_unserved = self.refused_unserved;
        self.report.keys_in_doubt = self.in_doubt.iter().filter(|&&d| d).count() as u64;
        for k in 0..self.keys.len() {
            for r in self.present() {
                if let Some(i) = self.owner_of(r, &self.keys[k].0) {
                    let d = self.nodes[i]
                        .ks
                        .raw_entry(&self.keys[k].0)
                        .map_or(0, |e| e.digest());
                    self.trace = mix(self.trace, d);
                }
            }
        }
        self.trace(self.report.violations.len() as u64);
        self.report.trace_hash = self.trace;
        self.report
    }
}

/// Run one seeded clustered-regions simulation.
pub fn run(cfg: ClusterSimConfig) -> ClusterReport {
    Sim::new(cfg).run()
}
