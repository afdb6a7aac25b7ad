//! The in-region replica stream simulator (`meridian-sim --replicas`): one region's shard —
//! a primary and its replicas, each a real `Keyspace` — driven through the production
//! stream ends ([`StreamSender`], [`StreamReceiver`], [`decide`], [`SnapshotWriter`],
//! [`Backlog`]) over byte pipes that deliver in order (TCP) but in random pieces and after
//! random delays.
//!
//! Faults, every one on by default ([`ReplicaFaults`]; a switch only turns one off, for
//! debugging): connections cut with bytes in flight (either end), a backlog small enough to
//! overflow (a replica falls out of it mid-stream, or reconnects past it), snapshots taken
//! slot by slot while writes continue (the overlap the protocol allows), keys and whole
//! slots leaving the primary (`Forget`, `ForgetSlot`: MIGRATE and slot moves), states
//! merged from other regions (`State`), and failovers (a replica promoted with what it
//! has; the old primary and the other replicas follow it).
//!
//! Checkers: `protocol` (no stream error but a cut connection's or a replica out of the
//! backlog), `liveness` (after heal, every replica reaches its primary's offset), `converge`
//! (then every replica holds exactly its primary's state, key by key). One `--bug` per
//! checker proves it fires (two for `converge`).

use meridian_crdt::digest::mix;
use meridian_crdt::{Hlc, Keyspace, KeyspaceConfig, RegionId, Stamp, SLOT_COUNT};
use meridian_replication::codec::KeyState;
use meridian_replication::replica_stream::{
    decide, encode_delta, encode_forget, encode_frame, encode_state, Backlog, ReceiverEvent,
    ReplicaFrame, Resync, SnapshotWriter, StreamError, StreamReceiver, StreamSender, SyncRequest,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, VecDeque};

/// Deliberate bugs, one per checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaBug {
    /// A replica keeps its data on a full resync (keys that left the primary linger).
    KeepDataOnFullResync,
    /// The primary skips recording every 50th change in its backlog (its offset too).
    LoseBacklogFrame,
    /// The primary announces a snapshot one offset further than it ends.
    WrongSnapshotEnd,
    /// A replica never reconnects after its connection is cut.
    NoReconnect,
}

impl ReplicaBug {
    pub const NAMES: [(&'static str, ReplicaBug); 4] = [
        ("keep-data-on-full-resync", ReplicaBug::KeepDataOnFullResync),
        ("lose-backlog-frame", ReplicaBug::LoseBacklogFrame),
        ("wrong-snapshot-end", ReplicaBug::WrongSnapshotEnd),
        ("no-reconnect", ReplicaBug::NoReconnect),
    ];

    pub fn parse(name: &str) -> Option<ReplicaBug> {
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

/// Fault modes, all on by default.
#[derive(Clone, Debug)]
pub struct ReplicaFaults {
    pub disconnects: bool,
    pub small_backlog: bool,
    pub failovers: bool,
    pub slot_moves: bool,
    pub slow_pipes: bool,
}

impl Default for ReplicaFaults {
    fn default() -> Self {
        ReplicaFaults {
            disconnects: true,
            small_backlog: true,
            failovers: true,
            slot_moves: true,
            slow_pipes: true,
        }
    }
}

impl ReplicaFaults {
    pub const NAMES: [&'static str; 5] = [
        "disconnects",
        "small-backlog",
        "failovers",
        "slot-moves",
        "slow-pipes",
    ];

    pub fn switch(&mut self, name: &str) -> Option<&mut bool> {
        match name {
            "disconnects" => Some(&mut self.disconnects),
            "small-backlog" => Some(&mut self.small_backlog),
            "failovers" => Some(&mut self.failovers),
            "slot-moves" => Some(&mut self.slot_moves),
            "slow-pipes" => Some(&mut self.slow_pipes),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub seed: u64,
    /// Virtual milliseconds of workload under faults.
    pub fault_ms: u64,
    /// Virtual milliseconds the heal may take before liveness fails.
    pub max_heal_ms: u64,
    pub faults: ReplicaFaults,
    pub bug: Option<ReplicaBug>,
}

impl ReplicaConfig {
    pub fn new(seed: u64) -> ReplicaConfig {
        ReplicaConfig {
            seed,
            fault_ms: 20_000,
            max_heal_ms: 30_000,
            faults: ReplicaFaults::default(),
            bug: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ReplicaReport {
    pub seed: u64,
    pub replicas: usize,
    pub writes: u64,
    pub full_syncs: u64,
    pub partial_syncs: u64,
    pub cuts: u64,
    pub out_of_backlog: u64,
    pub failovers: u64,
    pub forgets: u64,
    pub heal_ms: u64,
    pub violations: Vec<String>,
    pub trace_hash: u64,
}

impl ReplicaReport {
    /// The checker name of each violation (the word before the first ':').
    pub fn violation_kinds(&self) -> Vec<String> {
        self.violations
            .iter()
            .map(|v| v.split(':').next().unwrap_or("").to_string())
            .collect()
    }
}

struct Node {
    ks: Keyspace,
    replid: String,
    backlog: Backlog,
    /// The feed records only once a replica asked (as `ReplFeed`).
    recording: bool,
    /// `Some(primary)`: a replica of that node.
    follows: Option<usize>,
    /// The stream followed and the offset applied (replica side).
    position: Option<(String, u64)>,
    reconnect_at: u64,
}

/// One replica's connection: bytes in flight both ways, each piece with its arrival time.
struct Conn {
    replica: usize,
    primary: usize,
    rx: StreamReceiver,
    /// The primary's end, once it has read the request (and sent any snapshot).
    tx: Option<StreamSender>,
    /// A snapshot being cut: (writer, next slot, offset).
    snapshot: Option<(SnapshotWriter, u16, u64)>,
    request: Vec<u8>,
    to_primary: VecDeque<(u64, Vec<u8>)>,
    to_replica: VecDeque<(u64, Vec<u8>)>,
}

struct Sim {
    cfg: ReplicaConfig,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    conns: Vec<Conn>,
    primary: usize,
    now: u64,
    clock: u64,
    replid_seq: u64,
    report: ReplicaReport,
    trace: u64,
    /// Changes recorded (for `LoseBacklogFrame`).
    recorded: u64,
}

const KEYS: u64 = 40;
/// Slots the snapshot cursor covers per millisecond.
const SNAPSHOT_SLOTS_PER_MS: u16 = 2048;

fn key(kind: char, i: u64) -> Vec<u8> {
    format!("{kind}{i}").into_bytes()
}

fn dump(ks: &Keyspace) -> BTreeMap<Vec<u8>, u64> {
    let mut m = BTreeMap::new();
    for slot in 0..SLOT_COUNT as u16 {
        for (k, e) in ks.slot_entries(slot) {
            m.insert(k.to_vec(), e.digest());
        }
    }
    m
}

impl Sim {
    fn new(cfg: ReplicaConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5E << 56);
        let n = rng.random_range(2..=4usize);
        let backlog_bytes = if cfg.faults.small_backlog {
            rng.random_range(300..20_000)
        } else {
            1 << 30
        };
        let nodes = (0..n)
            .map(|i| Node {
                ks: Keyspace::new(KeyspaceConfig {
                    region: RegionId(1),
                    retain_tombstones: true,
                    seed: cfg.seed ^ i as u64,
                }),
                replid: format!("{:040x}", i + 1),
                backlog: Backlog::new(backlog_bytes, 0),
                recording: false,
                follows: (i > 0).then_some(0),
                position: None,
                reconnect_at: 0,
            })
            .collect();
        let report = ReplicaReport {
            seed: cfg.seed,
            replicas: n - 1,
            ..ReplicaReport::default()
        };
        Sim {
            replid_seq: n as u64,
            cfg,
            rng,
            nodes,
            conns: Vec::new(),
            primary: 0,
            now: 0,
            clock: 1_000,
            report,
            trace: 0,
            recorded: 0,
        }
    }

    fn note(&mut self, what: u64) {
        self.trace = mix(self.trace, what);
    }

    fn violation(&mut self, v: String) {
        if self.report.violations.len() < 20 {
            self.report.violations.push(v);
        }
    }

    // ---- the primary's feed ----

    fn record(&mut self, p: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        let node = &mut self.nodes[p];
        if !node.recording {
            return;
        }
        if self.cfg.bug == Some(ReplicaBug::LoseBacklogFrame) {
            self.recorded += 1;
            if self.recorded.is_multiple_of(50) {
                return;
            }
        }
        let mut b = Vec::new();
        encode(&mut b);
        node.backlog.push(&b);
    }

    fn workload(&mut self) {
        let p = self.primary;
        self.clock += 1;
        let stamp = Stamp::new(Hlc::from_parts(self.clock, 0), RegionId(1));
        let i = self.rng.random_range(0..KEYS);
        let op = self.rng.random_range(0..100u32);
        self.report.writes += 1;
        let now = self.now;
        let ks = &mut self.nodes[p].ks;
        match op {
            0..=29 => {
                let v = bytes::Bytes::from(format!("v{}", self.clock));
                ks.write(&key('s', i), stamp, now, |w| w.set_str(v, false));
            }
            30..=54 => {
                let by = self.rng.random_range(-5..=10);
                ks.write(&key('c', i), stamp, now, |w| {
                    let _ = w.incr_by(by);
                });
            }
            55..=74 => {
                let m = format!("m{}", self.rng.random_range(0..8u32));
                ks.write(&key('t', i), stamp, now, |w| w.sadd(m.as_bytes()));
            }
            75..=84 => {
                let m = format!("m{}", self.rng.random_range(0..8u32));
                ks.write(&key('t', i), stamp, now, |w| w.srem(m.as_bytes()));
            }
            _ => {
                let kind = ['s', 'c', 't'][self.rng.random_range(0..3usize)];
                ks.write(&key(kind, i), stamp, now, |w| w.delete());
            }
        }
        let deltas: Vec<_> = self.nodes[p].ks.drain_deltas().collect();
        for d in deltas {
            self.note(d.stamp.hlc.0);
            self.record(p, |b| {
                let _ = encode_delta(&d, b);
            });
        }
    }

    /// A state merged from another region (anti-entropy): streamed whole.
    fn foreign_state(&mut self) {
        let p = self.primary;
        self.clock += 1;
        let mut other = Keyspace::new(KeyspaceConfig {
            region: RegionId(2),
            retain_tombstones: true,
            ..KeyspaceConfig::default()
        });
        let k = key('c', self.rng.random_range(0..KEYS));
        let by = self.rng.random_range(1..5);
        let stamp = Stamp::new(Hlc::from_parts(self.clock, 0), RegionId(2));
        other.write(&k, stamp, self.now, |w| {
            let _ = w.incr_by(by);
        });
        let Some(state) = other.raw_entry(&k).map(|e| e.into_owned()) else {
            return;
        };
        self.nodes[p].ks.merge_state(&k, true, &state);
        if let Some(merged) = self.nodes[p].ks.raw_entry(&k).map(|e| e.into_owned()) {
            self.record(p, |b| {
                let _ = encode_state(&k, &merged, b);
            });
        }
    }

    /// A key (MIGRATE) or a whole slot (a slot move) leaves the primary.
    fn forget(&mut self) {
        let p = self.primary;
        self.report.forgets += 1;
        let kind = ['s', 'c', 't'][self.rng.random_range(0..3usize)];
        let k = key(kind, self.rng.random_range(0..KEYS));
        if self.rng.random_bool(0.5) {
            self.nodes[p].ks.take_key(&k);
            self.record(p, |b| {
                let _ = encode_forget(&k, b);
            });
        } else {
            let slot = meridian_crdt::key_slot(&k);
            self.nodes[p].ks.drop_slot(slot);
            self.record(p, |b| {
                let _ = encode_frame(&ReplicaFrame::ForgetSlot { slot }, b);
            });
        }
    }

    // ---- connections ----

    fn delay(&mut self) -> u64 {
        if self.cfg.faults.slow_pipes {
            self.rng.random_range(0..30)
        } else {
            0
        }
    }

    /// Queue `bytes` in pieces, each arriving no earlier than the previous (in order).
    fn send(&mut self, c: usize, to_replica: bool, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let mut at = self.now + self.delay();
        let queue_last = {
            let q = if to_replica {
                &self.conns[c].to_replica
            } else {
                &self.conns[c].to_primary
            };
            q.back().map_or(0, |(t, _)| *t)
        };
        at = at.max(queue_last);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = if self.cfg.faults.slow_pipes {
                self.rng.random_range(1..=rest.len().min(4096))
            } else {
                rest.len()
            };
            let piece = rest[..n].to_vec();
            rest = &rest[n..];
            let q = if to_replica {
                &mut self.conns[c].to_replica
            } else {
                &mut self.conns[c].to_primary
            };
            q.push_back((at, piece));
        }
    }

    fn connect(&mut self, r: usize) {
        let Some(p) = self.nodes[r].follows else {
            return;
        };
        let rx = StreamReceiver::new(self.now, self.nodes[r].position.clone(), 7000, 4);
        let req = rx.request();
        self.conns.push(Conn {
            replica: r,
            primary: p,
            rx,
            tx: None,
            snapshot: None,
            request: Vec::new(),
            to_primary: VecDeque::new(),
            to_replica: VecDeque::new(),
        });
        let c = self.conns.len() - 1;
        self.send(c, false, req);
        self.note(0xC0 ^ r as u64);
    }

    /// Close connection `c` (bytes in flight are lost); `why` is a stream error, if any.
    fn close(&mut self, c: usize, why: Option<StreamError>) {
        let conn = self.conns.swap_remove(c);
        self.report.cuts += 1;
        match why {
            None | Some(StreamError::Timeout) => {}
            Some(StreamError::OutOfBacklog(_)) => self.report.out_of_backlog += 1,
            Some(e) => {
                let v = format!(
                    "protocol: replica {} ↔ primary {}: {e}",
                    conn.replica, conn.primary
                );
                self.violation(v);
            }
        }
        let r = conn.replica;
        self.nodes[r].position = conn.rx.position();
        if self.cfg.bug == Some(ReplicaBug::NoReconnect) {
            self.nodes[r].reconnect_at = u64::MAX;
        } else {
            self.nodes[r].reconnect_at = self.now + self.rng.random_range(10..300);
        }
        self.note(0xDC ^ r as u64);
    }

    /// The primary reads the request: decide, answer, start a snapshot or the stream.
    fn primary_reads(&mut self, c: usize) -> Result<(), StreamError> {
        let p = self.conns[c].primary;
        while let Some((at, _)) = self.conns[c].to_primary.front() {
            if *at > self.now {
                break;
            }
            let Some((_, bytes)) = self.conns[c].to_primary.pop_front() else {
                break;
            };
            let now = self.now;
            let conn = &mut self.conns[c];
            match &mut conn.tx {
                Some(tx) => {
                    tx.handle_bytes(now, &bytes)?;
                }
                None if conn.snapshot.is_some() => {
                    return Err(StreamError::Protocol(
                        "bytes from a replica during its snapshot".into(),
                    ))
                }
                None => {
                    conn.request.extend_from_slice(&bytes);
                    let Some(req) = SyncRequest::decode(&conn.request) else {
                        continue;
                    };
                    let req = req.map_err(|e| StreamError::Protocol(e.into()))?;
                    let node = &mut self.nodes[p];
                    if node.follows.is_some() {
                        return Err(StreamError::Refused(
                            "a replica does not serve a stream".into(),
                        ));
                    }
                    let resync = decide(&req, &node.replid, node.recording, &node.backlog);
                    node.recording = true;
                    let line = resync.line();
                    match resync {
                        Resync::Partial { offset, .. } => {
                            self.report.partial_syncs += 1;
                            self.conns[c].tx = Some(StreamSender::new(now, offset));
                        }
                        Resync::Full { offset, .. } => {
                            self.report.full_syncs += 1;
                            self.conns[c].snapshot = Some((SnapshotWriter::new(), 0, offset));
                        }
                    }
                    self.send(c, true, line);
                }
            }
        }
        Ok(())
    }

    /// Cut the next slots of a snapshot in progress (writes go on between steps).
    fn snapshot_step(&mut self, c: usize) -> Result<(), StreamError> {
        let p = self.conns[c].primary;
        let Some((mut w, mut slot, offset)) = self.conns[c].snapshot.take() else {
            return Ok(());
        };
        let end = (u32::from(slot) + u32::from(SNAPSHOT_SLOTS_PER_MS)).min(SLOT_COUNT as u32);
        while u32::from(slot) < end {
            for (k, e) in self.nodes[p].ks.slot_entries(slot) {
                w.push(k, e.into_owned())?;
            }
            slot += 1;
        }
        let mut out = w.take_ready().unwrap_or_default();
        if usize::from(slot) >= SLOT_COUNT {
            let announced = offset;
            let end_at = if self.cfg.bug == Some(ReplicaBug::WrongSnapshotEnd) {
                offset + 1
            } else {
                offset
            };
            let (rest, _) = w.finish(end_at)?;
            out.extend(rest);
            self.send(c, true, out);
            self.conns[c].tx = Some(StreamSender::new(self.now, announced));
        } else {
            self.send(c, true, out);
            self.conns[c].snapshot = Some((w, slot, offset));
        }
        Ok(())
    }

    fn primary_writes(&mut self, c: usize) -> Result<(), StreamError> {
        let p = self.conns[c].primary;
        let now = self.now;
        let Some(tx) = self.conns[c].tx.as_mut() else {
            return Ok(());
        };
        let mut out = Vec::new();
        tx.poll_transmit(now, &self.nodes[p].backlog, &mut out)?;
        tx.handle_timeout(now)?;
        self.send(c, true, out);
        Ok(())
    }

    fn replica_reads(&mut self, c: usize) -> Result<(), StreamError> {
        let r = self.conns[c].replica;
        while let Some((at, _)) = self.conns[c].to_replica.front() {
            if *at > self.now {
                break;
            }
            let Some((_, bytes)) = self.conns[c].to_replica.pop_front() else {
                break;
            };
            self.conns[c].rx.handle_bytes(self.now, &bytes);
            while let Some(ev) = self.conns[c].rx.poll_event()? {
                self.apply(r, ev);
            }
            self.nodes[r].position = self.conns[c].rx.position();
        }
        let mut ack = Vec::new();
        self.conns[c].rx.poll_transmit(self.now, &mut ack)?;
        self.conns[c].rx.handle_timeout(self.now)?;
        self.send(c, false, ack);
        Ok(())
    }

    fn apply(&mut self, r: usize, ev: ReceiverEvent) {
        let ks = &mut self.nodes[r].ks;
        match ev {
            ReceiverEvent::FullResync { .. } => {
                if self.cfg.bug != Some(ReplicaBug::KeepDataOnFullResync) {
                    for slot in 0..SLOT_COUNT as u16 {
                        ks.drop_slot(slot);
                    }
                }
            }
            ReceiverEvent::Continue { .. } | ReceiverEvent::SnapshotDone { .. } => {}
            ReceiverEvent::Apply(frame) => match frame {
                ReplicaFrame::Entries(entries) => {
                    for KeyState { key, state } in &entries {
                        ks.merge_state(key, true, state);
                    }
                }
                ReplicaFrame::Delta(d) => {
                    ks.merge_state(&d.key, true, &d.state);
                }
                ReplicaFrame::State { key, state } => {
                    ks.merge_state(&key, true, &state);
                }
                ReplicaFrame::Forget { key } => {
                    ks.take_key(&key);
                }
                ReplicaFrame::ForgetSlot { slot } => {
                    ks.drop_slot(slot);
                }
                ReplicaFrame::SnapshotEnd { .. }
                | ReplicaFrame::Ping
                | ReplicaFrame::Ack { .. } => {}
            },
        }
    }

    /// Promote a replica with what it has; everyone else follows it.
    fn failover(&mut self) {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != self.primary)
            .collect();
        let new = candidates[self.rng.random_range(0..candidates.len())];
        self.report.failovers += 1;
        // Every connection ends (the old primary drops its replica links, the promoted
        // node stops following).
        while !self.conns.is_empty() {
            self.close(0, None);
        }
        self.primary = new;
        for i in 0..self.nodes.len() {
            self.replid_seq += 1;
            let node = &mut self.nodes[i];
            if i == new {
                node.follows = None;
                node.position = None;
            } else if node.follows != Some(new) {
                // Following a new primary: this node's own stream ends (new id, no backlog).
                node.follows = Some(new);
                node.recording = false;
                node.backlog.clear();
                node.replid = format!("{:040x}", self.replid_seq);
            }
            node.reconnect_at = self.now + 50;
        }
        self.note(0xFA ^ new as u64);
    }

    fn step(&mut self, faults: bool) {
        // Connect replicas whose backoff ran out.
        for r in 0..self.nodes.len() {
            let connected = self.conns.iter().any(|c| c.replica == r);
            if !connected
                && self.nodes[r].follows.is_some()
                && self.now >= self.nodes[r].reconnect_at
            {
                self.connect(r);
            }
        }
        let mut c = 0;
        while c < self.conns.len() {
            let result = self
                .primary_reads(c)
                .and_then(|_| self.snapshot_step(c))
                .and_then(|_| self.primary_writes(c))
                .and_then(|_| self.replica_reads(c));
            match result {
                Ok(()) => c += 1,
                Err(e) => self.close(c, Some(e)),
            }
        }
        if faults {
            if self.cfg.faults.disconnects
                && !self.conns.is_empty()
                && self.rng.random_ratio(1, 400)
            {
                let c = self.rng.random_range(0..self.conns.len());
                self.close(c, None);
            }
            if self.cfg.faults.failovers && self.rng.random_ratio(1, 4000) {
                self.failover();
            }
        }
    }

    fn quiescent(&self) -> bool {
        let p = &self.nodes[self.primary];
        let want = Some((p.replid.clone(), p.backlog.offset()));
        self.nodes
            .iter()
            .enumerate()
            .all(|(i, n)| i == self.primary || (n.position == want && p.recording))
            && self
                .conns
                .iter()
                .all(|c| c.to_replica.is_empty() && c.to_primary.is_empty() && c.snapshot.is_none())
    }

    fn run(mut self) -> ReplicaReport {
        while self.now < self.cfg.fault_ms {
            let writes = self.rng.random_range(0..4);
            for _ in 0..writes {
                self.workload();
            }
            if self.rng.random_ratio(1, 50) {
                self.foreign_state();
            }
            if self.cfg.faults.slot_moves && self.rng.random_ratio(1, 200) {
                self.forget();
            }
            self.step(true);
            self.now += 1;
        }
        // Heal: no faults, no writes; every replica catches up.
        let healed_from = self.now;
        while !self.quiescent() {
            if self.now - healed_from > self.cfg.max_heal_ms {
                let p = &self.nodes[self.primary];
                let v = format!(
                    "liveness: not caught up after {} ms: primary {} at {}; replicas {:?}",
                    self.cfg.max_heal_ms,
                    self.primary,
                    p.backlog.offset(),
                    self.nodes
                        .iter()
                        .map(|n| n.position.clone())
                        .collect::<Vec<_>>()
                );
                self.violation(v);
                break;
            }
            self.step(false);
            self.now += 1;
        }
        self.report.heal_ms = self.now - healed_from;
        if self.report.violations.is_empty() {
            let want = dump(&self.nodes[self.primary].ks);
            for i in 0..self.nodes.len() {
                if i == self.primary {
                    continue;
                }
                let got = dump(&self.nodes[i].ks);
                if got != want {
                    let diff: Vec<String> = want
                        .iter()
                        .filter(|(k, d)| got.get(*k) != Some(d))
                        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                        .chain(
                            got.keys()
                                .filter(|k| !want.contains_key(*k))
                                .map(|k| format!("extra {}", String::from_utf8_lossy(k))),
                        )
                        .take(5)
                        .collect();
                    self.violation(format!(
                        "converge: replica {i} differs from primary {}: {diff:?}",
                        self.primary
                    ));
                }
            }
        }
        let mut h = self.trace;
        for n in &self.nodes {
            for (k, d) in dump(&n.ks) {
                h = mix(mix(h, d), k.len() as u64);
            }
        }
        self.report.trace_hash = h;
        self.report
    }
}

/// Run one seed.
pub fn run(cfg: ReplicaConfig) -> ReplicaReport {
    Sim::new(cfg).run()
}
