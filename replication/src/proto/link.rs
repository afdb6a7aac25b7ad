//! [`RegionLink`]: one region's replication endpoint towards its peer regions.
//!
//! Outgoing, per peer: a bounded log of local deltas numbered by sequence within the
//! sender's epoch (incarnation). `poll_transmit` cuts batches bounded by count and bytes,
//! within a window of unacknowledged deltas; if no ack progress arrives within
//! `resend_timeout_ms`, everything unacknowledged is sent again (go-back-N). When the log
//! would exceed its bound it is dropped, its sequences abandoned (`floor`), and the peer is
//! marked for anti-entropy: memory stays bounded and repair falls back to digests.
//!
//! Incoming, per origin: deltas are merged in sequence order; a few out-of-order ones are
//! buffered, the rest dropped (the sender resends); duplicates at or below the acknowledged
//! sequence are ignored. The ack names the highest contiguous sequence.
//!
//! Causal stability for GC: each region knows, per origin, an HLC below which it holds every
//! write of that origin (the stamp of the last contiguous delta; frozen after a gap until a
//! clean anti-entropy round with that origin). Regions gossip these vectors (`Frontier`);
//! the minimum over all regions is what `collect_garbage` hands to the keyspace.
//!
//! Driving it (the QUIC shell or the simulator):
//! ```text
//! on local writes:  for d in keyspace.drain_deltas() { link.enqueue(now, d) }
//! on frame:         link.handle_frame(now, from, frame, &mut keyspace)
//! on timer:         link.handle_timeout(now); link.poll_anti_entropy(now, &mut keyspace)
//! then:             while let Some((peer, frame)) = link.poll_transmit(now) { send }
//! periodically:     link.collect_garbage(&mut keyspace)
//! clock:            hlc_clock.observe(link.max_seen_hlc()); link.note_local_hlc(hlc_clock.last())
//! ```

use crate::codec::{Ack, Batch, Frame, Frontier};
use crate::proto::anti_entropy::{AntiEntropy, AntiEntropyStats};
use crate::store::ReplicaStore;
use bytes::Bytes;
use meridian_crdt::{Delta, Hlc, RegionId};
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub max_batch_deltas: usize,
    pub max_batch_bytes: usize,
    /// Unacknowledged deltas in flight per peer.
    pub window_deltas: usize,
    pub max_log_deltas: usize,
    pub max_log_bytes: usize,
    pub resend_timeout_ms: u64,
    /// Out-of-order deltas buffered per origin (beyond: dropped, the sender resends).
    pub reorder_buffer_deltas: u64,
    pub anti_entropy_interval_ms: u64,
    /// An unanswered anti-entropy round is abandoned and restarted after this long (also
    /// the pause before re-checking a round that found differences).
    pub anti_entropy_retry_ms: u64,
    pub anti_entropy_chunk_bytes: usize,
    /// Slots an anti-entropy step digests or compares (bounded work between the caller's
    /// other duties: shipping deltas, acks, merging batches).
    pub anti_entropy_step_slots: usize,
    /// A link that shipped or received deltas within this long is busy: periodic
    /// anti-entropy rounds with that peer wait (at most one more interval).
    pub anti_entropy_quiet_ms: u64,
    pub frontier_interval_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            // A window is what one round trip can carry. At 100 ms RTT, 32 Ki deltas in
            // flight allowed only ~200 k deltas/s in practice (acknowledgements add to the
            // round trip); 64 Ki allow ~260 k/s (4 Ki capped a 50 ms link at ~40 k/s). 128 Ki
            // reached ~300 k/s on short bursts but resent whole windows on long ones.
            max_batch_deltas: 2048,
            // Estimated bytes (`delta_bytes`); the real encoding stays well below
            // `MAX_FRAME_BYTES`.
            max_batch_bytes: 128 * 1024,
            window_deltas: 64 * 1024,
            // A burst of local writes outpaces a long link for a while: the log absorbs a few
            // seconds of it at 200 k deltas/s (100 k overflowed in half a second, and the
            // whole burst then went by anti-entropy).
            max_log_deltas: 500_000,
            max_log_bytes: 64 << 20,
            resend_timeout_ms: 1_000,
            reorder_buffer_deltas: 4 * 2048,
            anti_entropy_interval_ms: 30_000,
            anti_entropy_retry_ms: 5_000,
            anti_entropy_chunk_bytes: 64 * 1024,
            anti_entropy_step_slots: 1024,
            anti_entropy_quiet_ms: 1_000,
            frontier_interval_ms: 5_000,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub deltas_enqueued: u64,
    pub batches_sent: u64,
    pub deltas_sent: u64,
    pub deltas_resent: u64,
    pub deltas_applied: u64,
    pub deltas_duplicate: u64,
    pub deltas_out_of_order_dropped: u64,
    pub logs_dropped: u64,
    pub deltas_abandoned: u64,
    pub gc_runs: u64,
    pub gc_dropped: u64,
}

/// A delta's rough wire size, for batch and log bounds (exact sizes would cost an encode).
fn delta_bytes(d: &Delta) -> usize {
    d.key.len() + d.state.heap_bytes() + 24
}

/// One peer's outgoing state as the shell reports it (`INFO crdt`, metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// Deltas not yet acknowledged.
    pub backlog_deltas: usize,
    /// Age of the oldest unacknowledged delta (0 when the log is empty): replication lag.
    pub lag_ms: u64,
    /// When the peer last acknowledged progress (0: never).
    pub last_ack_ms: u64,
    /// Deltas the peer acknowledged, in total.
    pub deltas_acked: u64,
}

struct Outgoing {
    peer: RegionId,
    /// `(seq, delta, bytes)`, contiguous sequences starting at `acked + 1` (or `floor`).
    log: VecDeque<(u64, Delta, usize)>,
    /// Enqueue time of each log entry's delta, parallel to `log` (for `lag_ms`).
    log_ms: VecDeque<u64>,
    /// Keys with deltas in `log` and how many: anti-entropy leaves them to the deltas.
    in_log: HashMap<Bytes, u32>,
    last_ack_ms: u64,
    deltas_acked: u64,
    log_bytes: usize,
    next_seq: u64,
    acked: u64,
    /// Every sequence below this was acknowledged or abandoned.
    floor: u64,
    sent_upto: u64,
    last_progress_ms: u64,
    /// When the last batch from this peer arrived (0: never).
    last_batch_in_ms: u64,
    ack_due: bool,
    frontier_due: bool,
}

struct Incoming {
    epoch: u64,
    acked: u64,
    buffer: BTreeMap<u64, Delta>,
    /// Deltas were skipped (abandoned log, restart): `seen` must not advance until a clean
    /// anti-entropy round with this origin started after `gap_mark`.
    gap: bool,
    gap_mark: u64,
    seen: Hlc,
}

impl Incoming {
    fn unknown() -> Incoming {
        Incoming {
            epoch: 0,
            acked: 0,
            buffer: BTreeMap::new(),
            gap: false,
            gap_mark: 0,
            seen: Hlc::ZERO,
        }
    }
}

pub struct RegionLink {
    region: RegionId,
    epoch: u64,
    cfg: LinkConfig,
    out: Vec<Outgoing>,
    inc: BTreeMap<RegionId, Incoming>,
    /// Peers' last gossiped frontiers.
    frontiers: BTreeMap<RegionId, BTreeMap<RegionId, Hlc>>,
    own_seen: Hlc,
    next_frontier_ms: u64,
    max_seen_hlc: Hlc,
    ae: AntiEntropy,
    rr: usize,
    /// The last frame `poll_transmit` returned was anti-entropy: a batch goes next.
    last_was_ae: bool,
    stats: LinkStats,
}

impl RegionLink {
    /// `epoch` must grow with every restart of this region's link (an incarnation number
    /// kept by the shell), so peers can tell a fresh log from a stale one.
    pub fn new(region: RegionId, peers: &[RegionId], epoch: u64, cfg: LinkConfig) -> RegionLink {
        assert!(epoch > 0, "epochs start at 1");
        assert!(!peers.contains(&region), "a region is not its own peer");
        let ae = AntiEntropy::new(
            region,
            peers,
            cfg.anti_entropy_interval_ms,
            cfg.anti_entropy_retry_ms,
            cfg.anti_entropy_chunk_bytes,
            cfg.anti_entropy_step_slots,
        );
        let mut link = RegionLink {
            region,
            epoch,
            out: peers
                .iter()
                .map(|&peer| Outgoing {
                    peer,
                    log: VecDeque::new(),
                    log_ms: VecDeque::new(),
                    in_log: HashMap::new(),
                    last_ack_ms: 0,
                    deltas_acked: 0,
                    log_bytes: 0,
                    next_seq: 1,
                    acked: 0,
                    floor: 1,
                    sent_upto: 0,
                    last_progress_ms: 0,
                    last_batch_in_ms: 0,
                    ack_due: false,
                    frontier_due: false,
                })
                .collect(),
            inc: BTreeMap::new(),
            frontiers: BTreeMap::new(),
            own_seen: Hlc::ZERO,
            next_frontier_ms: 0,
            max_seen_hlc: Hlc::ZERO,
            ae,
            rr: 0,
            last_was_ae: false,
            stats: LinkStats::default(),
            cfg,
        };
        if epoch > 1 {
            // A restarted region lost its unshipped log: repair both ways by digests.
            for &p in peers {
                link.ae.request(p);
            }
        }
        link
    }

    pub fn region(&self) -> RegionId {
        self.region
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    pub fn anti_entropy_stats(&self) -> &AntiEntropyStats {
        self.ae.stats()
    }

    /// Greatest HLC received from peers: the shell folds it into its clock so that later
    /// local writes are causally after what it has seen.
    pub fn max_seen_hlc(&self) -> Hlc {
        self.max_seen_hlc.max(self.ae.max_seen_hlc())
    }

    /// Deltas in the outgoing log for `peer` (not yet acknowledged).
    pub fn backlog(&self, peer: RegionId) -> usize {
        self.out
            .iter()
            .find(|o| o.peer == peer)
            .map_or(0, |o| o.log.len())
    }

    /// The outgoing state towards `peer` at `now_ms`.
    pub fn peer_status(&self, now_ms: u64, peer: RegionId) -> Option<PeerStatus> {
        let o = self.out.iter().find(|o| o.peer == peer)?;
        Some(PeerStatus {
            backlog_deltas: o.log.len(),
            lag_ms: o.log_ms.front().map_or(0, |t| now_ms.saturating_sub(*t)),
            last_ack_ms: o.last_ack_ms,
            deltas_acked: o.deltas_acked,
        })
    }

    /// Nothing to send or resend: every log acknowledged, no anti-entropy output queued.
    pub fn is_idle(&self) -> bool {
        self.out.iter().all(|o| o.log.is_empty() && !o.ack_due) && !self.ae.has_pending_output()
    }

    /// The local clock's latest HLC: every local write at or below it is already in the
    /// local keyspace. Lets an idle (or restarted) region's frontier advance for GC.
    pub fn note_local_hlc(&mut self, hlc: Hlc) {
        self.own_seen = self.own_seen.max(hlc);
    }

    pub fn request_anti_entropy(&mut self, peer: RegionId) {
        self.ae.request(peer);
    }

    /// Queue a local delta for every peer. A log that would exceed its bound is dropped and
    /// its peer marked for anti-entropy.
    pub fn enqueue(&mut self, now_ms: u64, delta: Delta) {
        debug_assert_eq!(
            delta.stamp.region, self.region,
            "only local deltas are shipped"
        );
        debug_assert!(
            delta.stamp.hlc >= self.own_seen,
            "local deltas come in HLC order"
        );
        self.own_seen = self.own_seen.max(delta.stamp.hlc);
        self.stats.deltas_enqueued += 1;
        let bytes = delta_bytes(&delta);
        for o in self.out.iter_mut() {
            let seq = o.next_seq;
            o.next_seq += 1;
            if o.log.len() + 1 > self.cfg.max_log_deltas
                || o.log_bytes + bytes > self.cfg.max_log_bytes
            {
                self.stats.logs_dropped += 1;
                self.stats.deltas_abandoned += o.log.len() as u64 + 1;
                o.log.clear();
                o.in_log.clear();
                o.log_ms.clear();
                o.log_bytes = 0;
                o.floor = o.next_seq;
                o.acked = o.floor - 1;
                o.sent_upto = o.acked;
                self.ae.request(o.peer);
                continue;
            }
            o.log_bytes += bytes;
            *o.in_log.entry(delta.key.clone()).or_insert(0) += 1;
            o.log.push_back((seq, delta.clone(), bytes));
            o.log_ms.push_back(now_ms);
        }
    }

    pub fn enqueue_all(&mut self, now_ms: u64, deltas: impl IntoIterator<Item = Delta>) {
        for d in deltas {
            self.enqueue(now_ms, d);
        }
    }

    pub fn handle_frame<S: ReplicaStore + ?Sized>(
        &mut self,
        now_ms: u64,
        from: RegionId,
        frame: Frame,
        store: &mut S,
    ) {
        match frame {
            Frame::Batch(b) => self.handle_batch(now_ms, from, b, store),
            Frame::Ack(a) => self.handle_ack(now_ms, from, a),
            Frame::Frontier(f) => {
                if self.out.iter().any(|o| o.peer == from) {
                    self.frontiers.insert(from, f.seen.into_iter().collect());
                }
            }
            Frame::AeDigests(d) => self.ae.handle_digests(from, d, self.own_seen),
            Frame::AeKeys(k) => {
                let o = self.out.iter().find(|o| o.peer == from);
                let in_flight = |key: &[u8]| o.is_some_and(|o| o.in_log.contains_key(key));
                self.ae.handle_keys(now_ms, from, &k, &in_flight, store);
                self.close_gaps();
            }
            Frame::AeEntries(e) => {
                let o = self.out.iter().find(|o| o.peer == from);
                let in_flight = |key: &[u8]| o.is_some_and(|o| o.in_log.contains_key(key));
                self.ae.handle_entries(from, &e, &in_flight, store)
            }
        }
    }

    /// A clean anti-entropy round started after a gap proves we hold everything the peer
    /// had written up to its reported frontier: the gap is closed and `seen` catches up.
    fn close_gaps(&mut self) {
        for (origin, start_seq, origin_seen) in self.ae.take_clean_rounds() {
            let inc = self.inc.entry(origin).or_insert_with(Incoming::unknown);
            if inc.gap && start_seq > inc.gap_mark {
                inc.gap = false;
            }
            if !inc.gap {
                inc.seen = inc.seen.max(origin_seen);
            }
        }
    }

    fn handle_batch<S: ReplicaStore + ?Sized>(
        &mut self,
        now_ms: u64,
        from: RegionId,
        b: Batch,
        store: &mut S,
    ) {
        // No relaying: a peer only ships its own writes.
        if b.origin != from {
            return;
        }
        let Some(o) = self.out.iter_mut().find(|o| o.peer == from) else {
            return;
        };
        o.last_batch_in_ms = now_ms.max(1);
        let mark = self.ae.starts();
        let inc = self.inc.entry(b.origin).or_insert_with(Incoming::unknown);
        if b.epoch < inc.epoch {
            return; // a previous incarnation's batch
        }
        if b.epoch > inc.epoch {
            // First contact with this incarnation. Anything but a first-ever log from
            // sequence 1 may hide writes we never got.
            let fresh = inc.epoch == 0 && b.epoch == 1 && b.floor == 1;
            *inc = Incoming {
                epoch: b.epoch,
                acked: 0,
                buffer: BTreeMap::new(),
                gap: !fresh || inc.gap,
                gap_mark: mark,
                seen: inc.seen,
            };
        }
        if b.floor > inc.acked + 1 {
            inc.acked = b.floor - 1;
            inc.gap = true;
            inc.gap_mark = mark;
            let keep = inc.buffer.split_off(&b.floor);
            inc.buffer = keep;
        }
        // The run of deltas that extends the contiguous prefix, in sequence order: the
        // store merges it in one call (the shell locks each shard once per batch).
        let mut run: Vec<Delta> = Vec::with_capacity(b.deltas.len());
        for (i, d) in b.deltas.into_iter().enumerate() {
            let seq = b.first_seq + i as u64;
            if seq <= inc.acked {
                self.stats.deltas_duplicate += 1;
            } else if seq == inc.acked + 1 {
                run.push(d);
                inc.acked = seq;
                while let Some(d) = inc.buffer.remove(&(inc.acked + 1)) {
                    run.push(d);
                    inc.acked += 1;
                }
            } else if seq - inc.acked <= self.cfg.reorder_buffer_deltas {
                inc.buffer.entry(seq).or_insert(d);
            } else {
                self.stats.deltas_out_of_order_dropped += 1;
            }
        }
        if !run.is_empty() {
            store.apply_deltas(&run);
            self.stats.deltas_applied += run.len() as u64;
            for d in &run {
                self.max_seen_hlc = self.max_seen_hlc.max(d.state.max_hlc()).max(d.stamp.hlc);
                if !inc.gap {
                    inc.seen = inc.seen.max(d.stamp.hlc);
                }
            }
        }
        if let Some(o) = self.out.iter_mut().find(|o| o.peer == from) {
            o.ack_due = true;
        }
    }

    fn handle_ack(&mut self, now_ms: u64, from: RegionId, a: Ack) {
        if a.origin != self.region || a.epoch != self.epoch {
            return;
        }
        let Some(o) = self.out.iter_mut().find(|o| o.peer == from) else {
            return;
        };
        if a.seq <= o.acked || a.seq >= o.next_seq {
            return;
        }
        while o.log.front().is_some_and(|(s, _, _)| *s <= a.seq) {
            let (_, d, bytes) = o.log.pop_front().expect("checked");
            if let Some(n) = o.in_log.get_mut(&d.key) {
                *n -= 1;
                if *n == 0 {
                    o.in_log.remove(&d.key);
                }
            }
            o.log_ms.pop_front();
            o.log_bytes -= bytes;
            o.deltas_acked += 1;
        }
        debug_assert_eq!(o.log.len(), o.log_ms.len());
        o.last_ack_ms = now_ms;
        o.acked = a.seq;
        o.sent_upto = o.sent_upto.max(a.seq);
        o.last_progress_ms = now_ms;
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        for o in self.out.iter_mut() {
            if o.sent_upto > o.acked
                && now_ms
                    >= o.last_progress_ms
                        .saturating_add(self.cfg.resend_timeout_ms)
            {
                self.stats.deltas_resent += o.sent_upto - o.acked;
                o.sent_upto = o.acked;
            }
        }
        if now_ms >= self.next_frontier_ms {
            self.next_frontier_ms = now_ms + self.cfg.frontier_interval_ms;
            for o in self.out.iter_mut() {
                o.frontier_due = true;
            }
        }
        self.ae.handle_timeout(now_ms);
    }

    /// Earliest time `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let resend = self
            .out
            .iter()
            .filter(|o| o.sent_upto > o.acked)
            .map(|o| o.last_progress_ms + self.cfg.resend_timeout_ms)
            .min();
        [resend, Some(self.next_frontier_ms), self.ae.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Start due anti-entropy rounds and do one bounded step of the work in progress
    /// (slot digests, comparisons). Call again while [`Self::has_anti_entropy_work`].
    pub fn poll_anti_entropy<S: ReplicaStore + ?Sized>(&mut self, now_ms: u64, store: &mut S) {
        let quiet = self.cfg.anti_entropy_quiet_ms;
        for o in &self.out {
            let shipping = !o.log.is_empty();
            let receiving =
                o.last_batch_in_ms != 0 && now_ms < o.last_batch_in_ms.saturating_add(quiet);
            self.ae.set_busy(o.peer, shipping || receiving);
        }
        self.ae.poll_work(now_ms, store);
    }

    /// Anti-entropy work is in progress: `poll_anti_entropy` has more steps to do.
    pub fn has_anti_entropy_work(&self) -> bool {
        self.ae.has_work()
    }

    /// Next frame to send, round-robin over peers: acks first, then frontier gossip, then
    /// anti-entropy frames and delta batches taking turns (a repair never holds up delta
    /// shipping by more than one frame, and the other way round).
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<(RegionId, Frame)> {
        let n = self.out.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            let o = &mut self.out[i];
            if o.ack_due {
                o.ack_due = false;
                let Some(inc) = self.inc.get(&o.peer) else {
                    continue;
                };
                return Some((
                    o.peer,
                    Frame::Ack(Ack {
                        origin: o.peer,
                        epoch: inc.epoch,
                        seq: inc.acked,
                    }),
                ));
            }
            if o.frontier_due {
                o.frontier_due = false;
                return Some((
                    o.peer,
                    Frame::Frontier(Frontier {
                        seen: self.seen_vector(),
                    }),
                ));
            }
        }
        if !self.last_was_ae {
            if let Some(x) = self.ae.poll_transmit() {
                self.last_was_ae = true;
                return Some(x);
            }
        }
        if let Some(b) = self.next_batch(now_ms) {
            self.last_was_ae = false;
            return Some(b);
        }
        let x = self.ae.poll_transmit();
        self.last_was_ae = x.is_some();
        x
    }

    fn next_batch(&mut self, now_ms: u64) -> Option<(RegionId, Frame)> {
        let n = self.out.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            let o = &mut self.out[i];
            let in_flight = o.sent_upto - o.acked;
            let Some(&(front_seq, _, _)) = o.log.front() else {
                continue;
            };
            if in_flight as usize >= self.cfg.window_deltas || o.sent_upto + 1 >= o.next_seq {
                continue;
            }
            let first_seq = o.sent_upto + 1;
            debug_assert!(first_seq >= front_seq);
            let start = (first_seq - front_seq) as usize;
            let room = (self.cfg.window_deltas - in_flight as usize).min(self.cfg.max_batch_deltas);
            let mut deltas = Vec::new();
            let mut bytes = 0;
            for (_, d, b) in o.log.iter().skip(start).take(room) {
                if !deltas.is_empty() && bytes + b > self.cfg.max_batch_bytes {
                    break;
                }
                bytes += b;
                deltas.push(d.clone());
            }
            if deltas.is_empty() {
                continue;
            }
            if o.sent_upto == o.acked {
                o.last_progress_ms = now_ms;
            }
            o.sent_upto += deltas.len() as u64;
            self.stats.batches_sent += 1;
            self.stats.deltas_sent += deltas.len() as u64;
            self.rr = (i + 1) % n;
            return Some((
                o.peer,
                Frame::Batch(Batch {
                    origin: self.region,
                    epoch: self.epoch,
                    // Below the log's front everything was acknowledged or abandoned; a
                    // receiver that lost its state (restart) resumes from here.
                    floor: o.acked + 1,
                    first_seq,
                    deltas,
                }),
            ));
        }
        None
    }

    /// This region's view: per origin, an HLC below which it holds every write.
    pub fn seen_vector(&self) -> Vec<(RegionId, Hlc)> {
        let mut v = vec![(self.region, self.own_seen)];
        for o in &self.out {
            let seen = self.inc.get(&o.peer).map_or(Hlc::ZERO, |i| i.seen);
            v.push((o.peer, seen));
        }
        v
    }

    /// Per origin, the HLC every region (this one and every peer's last gossip) has seen.
    pub fn stable_frontier(&self) -> BTreeMap<RegionId, Hlc> {
        let mut stable: BTreeMap<RegionId, Hlc> = self.seen_vector().into_iter().collect();
        for o in &self.out {
            let theirs = self.frontiers.get(&o.peer);
            for (origin, h) in stable.iter_mut() {
                let t = theirs
                    .and_then(|f| f.get(origin))
                    .copied()
                    .unwrap_or(Hlc::ZERO);
                *h = (*h).min(t);
            }
        }
        stable
    }

    /// Drop tombstone metadata that is causally stable. Returns entries dropped.
    pub fn collect_garbage<S: ReplicaStore + ?Sized>(&mut self, store: &mut S) -> usize {
        let stable = self.stable_frontier();
        if stable.values().all(|h| *h == Hlc::ZERO) {
            return 0;
        }
        let dropped = store.gc(&|r| stable.get(&r).copied().unwrap_or(Hlc::ZERO));
        self.stats.gc_runs += 1;
        self.stats.gc_dropped += dropped as u64;
        dropped
    }
}
