//! The deterministic simulator: N regions, each a real `Keyspace` behind a real
//! `RegionLink`, connected by a faulty network, all driven by one seeded RNG and virtual
//! time. Phase 1 runs the workload under faults; phase 2 heals everything, lets the
//! protocol quiesce, collects garbage, and runs the checkers.

use crate::oracle::{render, FillModel, KeyModel, Rendered, SetModel, StrModel};
use bytes::Bytes;
use meridian_crdt::digest::{mix, mix_bytes};
use meridian_crdt::{
    key_slot, Applied, Delta, Entry, Hlc, HlcClock, Keyspace, KeyspaceConfig, RegionId, Val,
    SLOT_COUNT,
};
use meridian_replication::{decode, encode_into, Frame, LinkConfig, RegionLink, ReplicaStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// A deliberate bug, for showing that the checkers have teeth.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Receivers silently drop any incoming state carrying this region's counter
    /// contribution (a merge that loses one region's increments).
    DropCounterContributionsOf(RegionId),
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub bug: Option<Bug>,
    /// Virtual milliseconds of workload under faults.
    pub fault_ms: u64,
    /// Give up converging after this long (a liveness violation).
    pub max_heal_ms: u64,
    /// Collect garbage during the fault phase too (not only after heal).
    pub gc_during_faults: bool,
    /// Let a region write to a key it evicted before anti-entropy repaired the slot (the
    /// server must refuse this; see the report).
    pub writes_on_evicted: bool,
    /// Inject eviction faults.
    pub evictions: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            bug: None,
            fault_ms: 3_000,
            max_heal_ms: 60_000,
            gc_during_faults: false,
            writes_on_evicted: false,
            evictions: true,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub regions: usize,
    pub ops: u64,
    pub ops_refused: u64,
    pub frames: u64,
    pub frames_dropped: u64,
    pub delta_bytes: u64,
    pub anti_entropy_bytes: u64,
    pub crashes: u64,
    pub evictions: u64,
    pub partial_deltas_dropped: u64,
    pub logs_dropped: u64,
    pub gc_dropped: u64,
    pub converge_ms: u64,
    pub metadata_elements: usize,
    pub trace_hash: u64,
    pub violations: Vec<String>,
}

/// The store each simulated region runs: the production `Keyspace`, optionally wrapped by a
/// deliberate bug on the receive path.
pub struct SimStore {
    pub ks: Keyspace,
    bug: Option<Bug>,
}

impl SimStore {
    fn tainted(&self, e: &Entry) -> bool {
        let Some(Bug::DropCounterContributionsOf(r)) = self.bug else {
            return false;
        };
        e.components().iter().any(|c| match &c.val {
            Val::Str(s) => s.ctr.iter().any(|k| k.region == r),
            Val::Hash(h) => h.raw().any(|(_, s)| s.ctr.iter().any(|k| k.region == r)),
            Val::Set(_) => false,
        })
    }
}

impl ReplicaStore for SimStore {
    fn apply_delta(&mut self, delta: &Delta) -> Applied {
        if self.tainted(&delta.state) {
            return Applied::Unchanged;
        }
        self.ks.apply_delta(delta)
    }
    fn merge_full(&mut self, key: &[u8], state: &Entry) -> Applied {
        if self.tainted(state) {
            return Applied::Unchanged;
        }
        self.ks.merge_full(key, state)
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
    epoch: u64,
    up: bool,
    restart_at: u64,
    skew_ms: i64,
}

struct Msg {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

const BASE_MS: u64 = 1_700_000_000_000;
const TICK_MS: u64 = 10;
const TTL_MS: u64 = 3_600_000;

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
    now: u64,
    model: BTreeMap<Bytes, KeyModel>,
    keys: Vec<(Bytes, u8)>,
    /// The source of truth's current version for fill keys (invalidations bump it).
    source_version: u64,
    trace: u64,
    report: SimReport,
}

fn mk_keys() -> Vec<(Bytes, u8)> {
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push((Bytes::from(format!("ctr:{i}")), 0));
        keys.push((Bytes::from(format!("sess:{i}")), 1));
    }
    for i in 0..3 {
        keys.push((Bytes::from(format!("set:{i}")), 2));
        keys.push((Bytes::from(format!("hash:{i}")), 3));
        keys.push((Bytes::from(format!("fill:{i}")), 4));
    }
    keys
}

const MEMBERS: [&[u8]; 4] = [b"m0", b"m1", b"m2", b"m3"];
const FIELDS: [&[u8]; 4] = [b"f0", b"f1", b"n0", b"n1"];

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
            // Not drawn from `rng` (older seeds keep their schedules): whole rounds in one
            // step, a few steps, or many small ones.
            anti_entropy_step_slots: [16_384, 4096, 1024][(cfg.seed % 3) as usize],
            anti_entropy_quiet_ms: 200,
            frontier_interval_ms: 200,
            max_clock_offset_ms: meridian_replication::DEFAULT_MAX_CLOCK_OFFSET_MS,
        };
        let ids: Vec<RegionId> = (0..n as u16).map(RegionId).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                let peers: Vec<_> = ids.iter().copied().filter(|&p| p != id).collect();
                Node {
                    id,
                    store: SimStore {
                        ks: Keyspace::new(KeyspaceConfig {
                            region: id,
                            retain_tombstones: true,
                            seed: cfg.seed ^ u64::from(id.0),
                        }),
                        bug: cfg.bug,
                    },
                    clock: HlcClock::new(id),
                    link: RegionLink::new(id, &peers, 1, link_cfg.clone()),
                    epoch: 1,
                    up: true,
                    restart_at: 0,
                    skew_ms: rng.random_range(-2_000..=2_000),
                }
            })
            .collect();
        let report = SimReport {
            seed: cfg.seed,
            regions: n,
            ..SimReport::default()
        };
        Sim {
            loss_pct: rng.random_range(0..=20),
            dup_pct: rng.random_range(0..=20),
            delay_ms: rng.random_range(1..=50),
            jitter_ms: rng.random_range(0..=100),
            rng,
            link_cfg,
            nodes,
            wire: BTreeMap::new(),
            wire_seq: 0,
            blocked: vec![vec![false; n]; n],
            now: 0,
            model: BTreeMap::new(),
            source_version: 1,
            keys: mk_keys(),
            trace: mix(0x0074_7261_6365, cfg.seed),
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

    // ---- workload ----

    fn op(&mut self, i: usize) {
        let (key, class) = self.keys[self.rng.random_range(0..self.keys.len())].clone();
        let kind = self.rng.random_range(0..10u32);
        let now = self.node_now(i);
        if !self.cfg.writes_on_evicted && self.nodes[i].store.ks.slot_is_lossy(key_slot(&key)) {
            // A key of this slot was evicted here and anti-entropy has not repaired the slot
            // yet. Writing would build on a state that may have forgotten this region's own
            // counter contribution (even a full delta from a peer can carry a stale copy),
            // and the new contribution would clobber the old one everywhere. The server must
            // refuse such writes (-TRYAGAIN) the same way.
            self.report.ops_refused += 1;
            return;
        }
        let by = self.rng.random_range(-5..=10i64);
        let member = Bytes::from_static(MEMBERS[self.rng.random_range(0..MEMBERS.len())]);
        let field = Bytes::from_static(FIELDS[self.rng.random_range(0..FIELDS.len())]);
        let value = Bytes::from(format!("v{}", self.rng.random_range(0..1000u32)));
        let num = Bytes::from(self.rng.random_range(-50..=50i64).to_string());
        let node = &mut self.nodes[i];
        let stamp = node.clock.now(now);
        let ks = &mut node.store.ks;
        let seen = ks.raw_entry(&key).map(|e| e.into_owned());
        let seen_str = seen.as_ref().and_then(|e| e.as_str()).cloned();
        let alive = seen.as_ref().is_some_and(|e| e.is_alive());
        let model = self
            .model
            .entry(key.clone())
            .or_insert_with(|| match class {
                0 | 1 => KeyModel::Str(StrModel::default()),
                2 => KeyModel::Set(SetModel::default()),
                3 => KeyModel::Hash(BTreeMap::new()),
                _ => KeyModel::Fill(FillModel::default()),
            });
        let op_code: u64;
        match (class, model) {
            (0, KeyModel::Str(m)) => match kind {
                0 => {
                    op_code = 1;
                    if ks.write(&key, stamp, now, |w| w.delete()) {
                        m.remove(seen_str.as_ref());
                    }
                }
                1 => {
                    op_code = 2;
                    ks.write(&key, stamp, now, |w| w.set_str(num.clone(), false));
                    m.set(stamp, num, seen_str.as_ref());
                }
                _ => {
                    op_code = 3;
                    if ks.write(&key, stamp, now, |w| w.incr_by(by)).is_ok() {
                        m.incr(stamp, by);
                    }
                }
            },
            (1, KeyModel::Str(m)) => {
                if kind < 3 {
                    op_code = 4;
                    if ks.write(&key, stamp, now, |w| w.delete()) {
                        m.remove(seen_str.as_ref());
                    }
                } else {
                    op_code = 5;
                    let deadline = now + TTL_MS;
                    ks.write(&key, stamp, now, |w| {
                        w.set_str(value.clone(), false);
                        w.set_deadline(Some(deadline));
                    });
                    m.set(stamp, value, seen_str.as_ref());
                }
            }
            (2, KeyModel::Set(m)) => {
                let dots_of = |e: &Option<Entry>, mem: &[u8]| -> Vec<(RegionId, Hlc)> {
                    e.as_ref()
                        .and_then(|e| e.as_set())
                        .and_then(|s| s.raw().find(|(k, _)| *k == mem).map(|(_, d)| d))
                        .map_or(Vec::new(), |d| {
                            d.entries().iter().map(|x| (x.region, x.hlc)).collect()
                        })
                };
                if kind == 0 {
                    op_code = 6;
                    if ks.write(&key, stamp, now, |w| w.delete()) {
                        for mem in MEMBERS {
                            let mem = Bytes::from_static(mem);
                            let d = dots_of(&seen, &mem);
                            m.remove_observed(&mem, d.into_iter());
                        }
                    }
                } else if kind < 4 {
                    op_code = 7;
                    if ks.write(&key, stamp, now, |w| w.srem(&member)) {
                        let d = dots_of(&seen, &member);
                        m.remove_observed(&member, d.into_iter());
                    }
                } else {
                    op_code = 8;
                    ks.write(&key, stamp, now, |w| w.sadd(&member));
                    m.add(stamp, &member);
                }
            }
            (3, KeyModel::Hash(fields)) => {
                let field_of = |e: &Option<Entry>, f: &[u8]| {
                    e.as_ref()
                        .and_then(|e| e.as_hash())
                        .and_then(|h| h.raw().find(|(k, _)| *k == f).map(|(_, s)| s.clone()))
                };
                if kind == 0 {
                    op_code = 9;
                    if ks.write(&key, stamp, now, |w| w.delete()) {
                        for f in FIELDS {
                            let fb = Bytes::from_static(f);
                            let s = field_of(&seen, f);
                            if s.as_ref().is_some_and(|s| s.is_alive()) {
                                fields.entry(fb).or_default().remove(s.as_ref());
                            }
                        }
                    }
                } else if kind < 3 {
                    op_code = 10;
                    if ks.write(&key, stamp, now, |w| w.hdel(&field)) {
                        let s = field_of(&seen, &field);
                        fields.entry(field).or_default().remove(s.as_ref());
                    }
                } else if field.starts_with(b"n") {
                    op_code = 11;
                    let ok = ks.write(&key, stamp, now, |w| {
                        w.hash_update(&field, |s, st| s.incr_by(st, by))
                    });
                    if ok.is_ok() {
                        fields.entry(field).or_default().incr(stamp, by);
                    }
                } else {
                    op_code = 12;
                    let s = field_of(&seen, &field);
                    ks.write(&key, stamp, now, |w| {
                        w.hash_update(&field, |s, st| s.set(st, value.clone()))
                    });
                    fields
                        .entry(field)
                        .or_default()
                        .set(stamp, value, s.as_ref());
                }
            }
            (4, KeyModel::Fill(m)) => {
                let raw_str = seen.as_ref().and_then(|e| {
                    e.components().iter().find_map(|c| match &c.val {
                        Val::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                });
                if kind < 6 {
                    // A cache-aside fill, read from a source replica up to 3 versions behind.
                    op_code = 13;
                    let sv = self.source_version;
                    let version = self.rng.random_range(sv.saturating_sub(3).max(1)..=sv);
                    let ok = ks
                        .write(&key, stamp, now, |w| {
                            w.set_str_versioned(value.clone(), version, false)
                        })
                        .is_ok();
                    if ok {
                        m.fill(stamp, version, value);
                    }
                } else {
                    // The source changed (versioned invalidation at its new version), or an
                    // unversioned invalidation; applied in this region, as its consumer would.
                    op_code = 14;
                    let version = (kind < 9).then(|| {
                        self.source_version += 1;
                        self.source_version
                    });
                    let newer = version.is_some_and(|v| {
                        seen_str
                            .as_ref()
                            .is_some_and(|s| s.reg.value.is_some() && s.reg.version > v)
                    });
                    ks.write(&key, stamp, now, |w| w.invalidate(version));
                    m.invalidate(version, raw_str.as_ref(), !newer);
                }
            }
            _ => unreachable!("key classes map to their models"),
        }
        let _ = alive;
        self.report.ops += 1;
        self.trace(op_code ^ (i as u64) << 8 ^ stamp.hlc.0 << 16);
    }

    // ---- network ----

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>, faults: bool) {
        self.report.frames += 1;
        if self.blocked[from][to] || (faults && self.rng.random_range(0..100) < self.loss_pct) {
            self.report.frames_dropped += 1;
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
            self.wire.insert(
                (at, self.wire_seq),
                Msg {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn pump(&mut self, faults: bool, gc: bool) {
        let mut buf = Vec::new();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let now = self.node_now(i);
            let node = &mut self.nodes[i];
            let deltas: Vec<Delta> = node.store.ks.drain_deltas().collect();
            node.link.enqueue_all(now, deltas);
            node.link.note_local_hlc(node.clock.last());
            node.link.handle_timeout(now);
            node.link.poll_anti_entropy(now, &mut node.store);
            if gc {
                self.report.gc_dropped += node.link.collect_garbage(&mut node.store) as u64;
            }
            let mut out = Vec::new();
            while let Some((peer, frame)) = self.nodes[i].link.poll_transmit(now) {
                buf.clear();
                let n = encode_into(&frame, &mut buf).expect("frames stay under the limit");
                if frame.is_anti_entropy() {
                    self.report.anti_entropy_bytes += n as u64;
                } else if matches!(frame, Frame::Batch(_)) {
                    self.report.delta_bytes += n as u64;
                }
                out.push((peer.0 as usize, buf.clone()));
            }
            for (to, bytes) in out {
                self.send(i, to, bytes, faults);
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.wire.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let msg = entry.remove();
            if !self.nodes[msg.to].up || self.blocked[msg.from][msg.to] {
                self.report.frames_dropped += 1;
                continue;
            }
            self.trace(mix_bytes(msg.from as u64 * 8 + msg.to as u64, &msg.bytes));
            let now = self.node_now(msg.to);
            let (frame, _) = decode(&msg.bytes)
                .expect("the simulator only sends valid frames")
                .expect("frames are whole");
            let from = self.nodes[msg.from].id;
            let node = &mut self.nodes[msg.to];
            node.link.handle_frame(now, from, frame, &mut node.store);
            node.clock.observe(node.link.max_seen_hlc());
        }
    }

    // ---- faults ----

    fn fault(&mut self) {
        let n = self.nodes.len();
        match self.rng.random_range(0..9u32) {
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
                    self.crash(a);
                }
            }
            6 => {
                let a = self.rng.random_range(0..n);
                let jump = self.rng.random_range(-1_000..=1_000i64);
                self.nodes[a].skew_ms = (self.nodes[a].skew_ms + jump).clamp(-3_000, 3_000);
                self.trace(6);
            }
            _ => {
                let a = self.rng.random_range(0..n);
                let k = self.keys[self.rng.random_range(0..self.keys.len())]
                    .0
                    .clone();
                // A cache may lose a key it alone holds; the exact-value checkers need the
                // data to survive somewhere, so only redundant copies are evicted: this
                // region's state for the key must already be contained in another's.
                // Like production eviction, only live keys are evicted (never tombstones).
                let redundant = self.nodes[a].store.ks.raw_entry(&k).is_some_and(|mine| {
                    mine.is_alive()
                        && self.nodes.iter().enumerate().any(|(j, other)| {
                            j != a
                                && other.store.ks.raw_entry(&k).is_some_and(|theirs| {
                                    let mut joined = theirs.into_owned();
                                    !joined.merge(&mine)
                                })
                        })
                });
                if self.cfg.evictions && redundant && self.nodes[a].store.ks.evict_key(&k) > 0 {
                    self.report.evictions += 1;
                }
                self.trace(7);
            }
        }
    }

    /// The region's process dies: its outgoing logs, receive state and not-yet-drained
    /// deltas are lost. Its keyspace survives (a replica takes over with the data).
    fn crash(&mut self, a: usize) {
        self.report.crashes += 1;
        let down_ms = self.rng.random_range(50..=1_000);
        let node = &mut self.nodes[a];
        node.up = false;
        node.restart_at = self.now + down_ms;
        node.store.ks.drain_deltas().for_each(drop);
        self.trace(5);
    }

    fn restart_due(&mut self, force: bool) {
        let ids: Vec<RegionId> = self.nodes.iter().map(|n| n.id).collect();
        for node in self.nodes.iter_mut() {
            if !node.up && (force || self.now >= node.restart_at) {
                node.up = true;
                node.epoch += 1;
                let peers: Vec<_> = ids.iter().copied().filter(|&p| p != node.id).collect();
                node.link = RegionLink::new(node.id, &peers, node.epoch, self.link_cfg.clone());
            }
        }
    }

    // ---- run ----

    fn run(mut self) -> SimReport {
        let op_pct = self.rng.random_range(10..=60u32);
        let fault_pct = self.rng.random_range(1..=8u32);
        while self.now < self.cfg.fault_ms {
            self.now += TICK_MS;
            self.restart_due(false);
            for i in 0..self.nodes.len() {
                if self.nodes[i].up && self.rng.random_range(0..100) < op_pct {
                    self.op(i);
                }
            }
            if self.rng.random_range(0..100) < fault_pct {
                self.fault();
            }
            self.pump(true, self.cfg.gc_during_faults);
            self.deliver();
        }
        // Phase 2: heal, quiesce, collect garbage.
        for row in self.blocked.iter_mut() {
            row.iter_mut().for_each(|x| *x = false);
        }
        self.restart_due(true);
        let heal_start = self.now;
        let mut converged_at = None;
        while self.now < heal_start + self.cfg.max_heal_ms {
            self.now += TICK_MS;
            self.pump(false, false);
            self.deliver();
            // Checking digests of every slot is the expensive part: every 200 ms is enough.
            // (`%` rather than `is_multiple_of`: the workspace MSRV is 1.80.)
            #[allow(clippy::manual_is_multiple_of)]
            let check = self.now % 200 == 0;
            if check && self.converged() {
                converged_at = Some(self.now);
                break;
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
            Some(t) => self.report.converge_ms = t - heal_start,
        }
        // Values must be right before garbage collection, and stay right after it.
        self.check_values("after heal");
        // Let frontiers and clean anti-entropy rounds circulate, then collect.
        for _ in 0..(3_000 / TICK_MS) {
            self.now += TICK_MS;
            self.pump(false, true);
            self.deliver();
        }
        self.check();
        if std::env::var_os("MERIDIAN_SIM_DEBUG").is_some() {
            for n in &self.nodes {
                eprintln!("r{} stable {:?}", n.id.0, n.link.stable_frontier());
                eprintln!(
                    "r{} seen {:?} epoch {}",
                    n.id.0,
                    n.link.seen_vector(),
                    n.epoch
                );
                for (k, _) in &self.keys {
                    if let Some(e) = n.store.ks.raw_entry(k) {
                        if !e.is_alive() {
                            eprintln!(
                                "  tomb {:?} {:?} lossy {}",
                                k,
                                e,
                                n.store.ks.slot_is_lossy(key_slot(k))
                            );
                        }
                    }
                }
            }
        }
        self.finish()
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
                "[r{} idle {} backlog {:?} ae {:?}] ",
                n.id.0,
                n.link.is_idle(),
                backlog,
                n.link.anti_entropy_stats()
            ));
        }
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
        let (first, rest) = self.nodes.split_first_mut().expect("at least two regions");
        (0..SLOT_COUNT as u16).all(|s| {
            let d = first.store.ks.slot_digest(s);
            rest.iter_mut().all(|n| n.store.ks.slot_digest(s) == d)
        })
    }

    fn check(&mut self) {
        self.check_values("after gc");
        self.check_metadata();
    }

    fn check_values(&mut self, phase: &str) {
        let keys: Vec<Bytes> = self.keys.iter().map(|(k, _)| k.clone()).collect();
        for key in &keys {
            let expected = self
                .model
                .get(key)
                .map_or(Rendered::Absent, KeyModel::expected);
            let mut deadlines = Vec::new();
            for node in &self.nodes {
                let e = node.store.ks.raw_entry(key);
                let got = render(e.as_deref());
                if got != expected {
                    self.report.violations.push(format!(
                        "value ({phase}): key {:?} at region {}: got {:?}, oracle expects {:?}",
                        key, node.id.0, got, expected
                    ));
                }
                deadlines.push(e.filter(|e| e.is_alive()).and_then(|e| e.deadline_ms()));
            }
            if deadlines.windows(2).any(|w| w[0] != w[1]) {
                self.report.violations.push(format!(
                    "ttl ({phase}): key {key:?} has different deadlines across regions: {deadlines:?}"
                ));
            }
        }
    }

    fn check_metadata(&mut self) {
        // Metadata bounded: after heal and GC every tombstone is gone, and what is left is
        // bounded by the hot key space, not by the number of operations.
        let n = self.nodes.len();
        let bound = self.keys.len() * (2 + 2 * n + MEMBERS.len() * (1 + n));
        for node in &self.nodes {
            let stats = node.store.ks.stats();
            let meta = node.store.ks.metadata_elements();
            self.report.metadata_elements = self.report.metadata_elements.max(meta);
            // Invalidation floors are bounded by their retention, not by causal GC.
            let floors = self
                .keys
                .iter()
                .filter(|(k, _)| {
                    node.store
                        .ks
                        .raw_entry(k)
                        .is_some_and(|e| !e.is_alive() && e.floor() != 0)
                })
                .count();
            if stats.tombstones > floors {
                self.report.violations.push(format!(
                    "gc: region {} keeps {} tombstone keys after heal",
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
            self.report.logs_dropped += self.nodes[i].link.stats().logs_dropped;
            for slot in 0..SLOT_COUNT as u16 {
                let d = self.nodes[i].store.ks.slot_digest(slot);
                if d != 0 {
                    self.trace(d ^ u64::from(slot));
                }
            }
        }
        self.trace(self.report.violations.len() as u64);
        self.report.trace_hash = self.trace;
        self.report
    }
}

/// Run one seeded simulation.
pub fn run(cfg: SimConfig) -> SimReport {
    Sim::new(cfg).run()
}
