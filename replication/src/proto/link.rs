//! [`RegionLink`]: one region's replication endpoint towards its peer regions.
//!
//! Outgoing, per peer: a bounded log of local deltas numbered by sequence within the
//! sender's epoch (incarnation). `poll_transmit` cuts batches bounded by count and bytes,
//! within a window of unacknowledged deltas; if no ack progress arrives within
//! `resend_timeout_ms`, everything unacknowledged is sent again (go-back-N), but as TCP
//! after a retransmission timeout, one batch at a time until an ack moves: a peer that was
//! only slow (its ack of the whole window on its way) costs one batch, a cut link one batch
//! per interval rather than a window, and deltas written meanwhile stay unsent, so they can
//! still be coalesced (see `RegionLink::enqueue`). When the log
//! would exceed its bound it is dropped, its sequences abandoned (`floor`), and the peer is
//! marked for anti-entropy: memory stays bounded and repair falls back to digests.
//!
//! Incoming, per origin: deltas are merged in sequence order; a few out-of-order ones are
//! buffered, the rest dropped (the sender resends); duplicates at or below the acknowledged
//! sequence are ignored. The ack names the highest contiguous sequence.
//!
//! Incarnations: a link's `epoch` is an id of its incarnation, compared for equality only (a
//! wall-clock epoch made a region restarted after a backward clock step look stale, and its
//! batches were dropped). A batch from another incarnation than the one on record resets the
//! origin's incoming state, with a gap; a stale frame of an older incarnation arriving late
//! does the same (and the next current one again): harmless, each merge is a real write.
//!
//! Bounded clocks: a delta or anti-entropy entry carrying an HLC more than
//! `max_clock_offset_ms` ahead of the local clock (the `now_ms` passed in) is not merged,
//! so `max_seen_hlc` (which the shell folds into its clock) never runs ahead of local time
//! by more than the bound, and one peer with a bad clock cannot drag every region's clock
//! along. Such a delta is held, not refused: it is not acknowledged, so the sender resends it
//! (after `resend_timeout_ms`, with everything after it) until local time has caught up with
//! it; a held entry is offered again by later anti-entropy rounds. Both are counted
//! (`deltas_clock_held`, `entries_clock_held`, per peer `clock_held`).
//!
//! Restart handshake: at start a link sends `Hello { ask }` to every peer (again every
//! `resend_timeout_ms` until some `Hello` from it arrives); the answer carries the greatest
//! HLC the peer knows this region to have issued, and the peer's clock (at or above every
//! stamp its state holds, for a peer whose link is younger than our previous life), which
//! `max_seen_hlc` then includes (the clock capped at our bound): a region restarted empty
//! (or after a backward clock step) never reissues an HLC of its previous incarnation.
//!
//! Causal stability for GC: each region knows, per origin, an HLC below which it holds every
//! write of that origin (the stamp of the last contiguous delta; frozen after a gap until a
//! clean anti-entropy round with that origin). Regions gossip these vectors (`Frontier`);
//! the minimum over all regions is what `collect_garbage` hands to the keyspace.
//!
//! Local losses: a local delta lost before it reached the link (the shell's bounded
//! per-shard log overflowed) leaves peers with a contiguous run of sequences that hides a
//! hole, so their frontiers for this region pass writes they never got. The shell reports
//! it (`note_local_loss`: the lowest lost stamp and the slots); until anti-entropy has found
//! each of those slots equal with every peer, in a round started after that peer
//! acknowledged every delta enqueued before the loss (an older delta still in flight could
//! otherwise land after the comparison, on a peer that never got the lost one's effect),
//! this region's own entry in every frontier stays below the lowest lost stamp, so no region
//! collects metadata the lost deltas' effects may still need.
//!
//! Peers at run time, and the GC bound (ARCHITECTURE.md, "Regions joining and leaving"):
//! `add_peer` takes a region that joined (its log starts above sequence 1, so the joiner
//! takes what it gets as a gap until anti-entropy, requested both ways, brings everything;
//! GC waits for it from then on); `remove_peer` forgets one. A peer from which no frame
//! came for longer than `peer_gc_bound_ms` (link time, see `handle_timeout`) is *expelled*:
//! the stable frontier leaves it out (its frozen entry for its own writes stays), its log and
//! anti-entropy go. GC went on without it, so that incarnation's state may hold what GC
//! dropped: its frames are refused and counted, and it is told (`Frame::Refused`, also every
//! resend interval). Only a `Hello` of another incarnation born after the expulsion (a
//! region restarted empty) readmits it, as a joining region. A forgotten peer that speaks
//! again comes back expelled. A peer that refuses us gets nothing but our `Hello` every
//! interval (a restarted one answers), and GC still waits for it: this region must not
//! collect what the refuser may lack (it is to be restarted; or, readmitted later, it
//! would bring back what this region's collected removals had removed).
//!
//! Driving it (the QUIC shell or the simulator):
//! ```text
//! on local writes:  for d in keyspace.drain_deltas() { link.enqueue(now, d) }
//! on frame:         link.handle_frame(now, from, frame, &mut keyspace)
//! on timer:         link.handle_timeout(now); link.poll_anti_entropy(now, &mut keyspace)
//! then:             while let Some((peer, frame)) = link.poll_transmit(now) { send }
//! periodically:     link.collect_garbage(&mut keyspace)
//! clock:            hlc_clock.observe(link.max_seen_hlc()); link.note_local_hlc(hlc_clock.last())
//! lost local delta: link.note_local_loss(lowest_lost_stamp, slots)
//! ```
//!
//! # Regions joining and leaving; the GC bound
//!
//! GC of deleted-state metadata waits for every peer's gossiped frontier, so a peer that is
//! gone or down would hold it back forever. The rule is Cassandra's `gc_grace`:
//!
//! - **Bound.** `peer-gc-bound-ms` (default one hour, 0 = never): a peer from which no frame
//!   came for longer (measured in the link's own steps, at most twice the longer of the frontier
//!   and resend intervals per step, so a wall clock jumping ahead expels nobody) is *expelled
//!   from GC*: `RegionLink::stable_frontier` and `gc_frontier` leave it out (its frozen entry
//!   for its own writes stays in the gossip), its log is dropped, no anti-entropy with it. The
//!   exclusion lives in `RegionLink`, so node mode's minimum over links composes with it.
//! - **Refusal.** GC went on without it, so its state may hold what others' GC dropped: an
//!   expelled incarnation is never merged. Its frames are refused and counted
//!   (`frames_refused`), and it is told so (`Frame::Refused`, protocol version 4; sent on each of
//!   its frames and every resend interval, so both sides of a cut both ways learn it); the shell
//!   logs at ERROR and shows `link=expelled` (`refused` on the other side) in `INFO crdt`,
//!   `MERIDIAN REGION LIST` and `/metrics`. It is readmitted only by a `Hello` of another
//!   incarnation *born after the expulsion*, by more than `max-clock-offset-ms` since the two
//!   clocks may disagree by that much (`Hello::born_ms`; another id alone is not enough: a
//!   region may have restarted while cut off, under an id never heard here). A cache restarts
//!   empty, so the operator restarts the refused region; its new incarnation is readmitted like
//!   a joining region and bootstraps by anti-entropy. Discarded: whatever the expelled incarnation wrote
//!   that no peer had received, including removals only it had made or collected.
//! - **Leave.** `MERIDIAN REGION FORGET <name>` (`RegionLink::remove_peer`; node mode
//!   `NodeLinks::forget_region`) drops the link, log, gossip and transport peers at once and
//!   records the incarnation as expelled; frames from it later re-add it expelled. Each node
//!   holds its own links: the command is issued on every node of every remaining region.
//! - **Join.** A region not configured here that connects with a certificate from the
//!   deployment CA (`accept-new-regions`, default on) is accepted by the transport (its preamble
//!   names its region, checked against the certificate; the joiner dials, whatever the names,
//!   since the other side never knew its address: a node dials a configured peer whose name
//!   sorts lower if it was not dialed within 1.5 s, and a peer that knows it refuses that dial
//!   with a dial-order close code) and added by its `Hello` (which carries its region id; an id
//!   taken by another region, an id past `MAX_REGIONS` or a full mesh is refused with
//!   `Frame::Refused` and counted). `RegionLink::add_peer` starts the log to it above sequence 1
//!   (the joiner, even a first incarnation, takes it as a gap) and asks for anti-entropy both
//!   ways; GC waits for it from then on. Node mode learns the joiner's topology from the
//!   connection's address, as from a seed.
//! - **Limits.** The expelled records live in memory (a restarted node does not remember them)
//!   and are not gossiped: a region restarted on one side of a long cut may take state from a
//!   refused region on the other side. After a cut longer than the bound, restart the side that
//!   was cut off (all of its regions).
//! - **Simulator.** After the fault phase one region is cut off past the bound while writes and
//!   GC go on (half the time only its outgoing frames are cut, so it keeps hearing the others and
//!   sends them its stale state once healed; half the time it is also forgotten everywhere);
//!   healed, it is refused (each side refuses the other after a cut both ways); the operator
//!   restarts it empty once it was told; the oracle counts as lost only what no copy holds
//!   (removal records collected by the restarted region alone lose their protection,
//!   `KeyModel::region_restarted`). With the refusal disabled, zombie members and values come
//!   back and the checkers report it (8 of 30 seeds).

use crate::codec::{Ack, Batch, Frame, Frontier, Hello, RefuseReason, Refused};
use crate::proto::anti_entropy::{AntiEntropy, AntiEntropyStats};
use crate::store::LinkStore;
use bytes::Bytes;
use meridian_crdt::{Delta, Entry, Hlc, RegionId, SeededState};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

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
    /// Remote HLCs more than this far ahead of the local clock are not merged (held until
    /// local time catches up; see the module doc).
    pub max_clock_offset_ms: u64,
    /// Join a delta into the never-sent delta of its key in the log (see
    /// [`RegionLink::enqueue`]). On by default. (The violations the simulator once reported
    /// with it on were its own: it mirrored each outgoing log as the last `backlog` deltas
    /// enqueued, which a log holding joined entries is not, and so took deltas still logged
    /// for lost. It now reads the logs: `RegionLink::for_each_logged`.)
    pub coalesce: bool,
    /// A peer from which no frame came for longer than this (link time, see
    /// [`RegionLink::handle_timeout`]) is expelled from GC: the stable frontier is computed
    /// without it, and its incarnation is refused from then on (see the module doc). 0:
    /// never (GC waits for every peer forever).
    pub peer_gc_bound_ms: u64,
}

/// Default bound on how far a remote HLC may be ahead of the local clock. Healthy clocks
/// (NTP) agree within milliseconds, tens of them across continents; a VM resumed from a
/// pause or a host that booted before its clock was synchronized can be off by seconds.
/// A bound that small clocks can exceed would hold replication from a healthy region (stale
/// reads), so it is loose: 10 s. It still catches the faults that matter (clocks off by
/// minutes, hours, years) and limits how far ahead of real time any region's HLC, and so
/// the last-writer-wins order, can be pushed: by at most 10 s.
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 10_000;

/// Default GC bound (`LinkConfig::peer_gc_bound_ms`): one hour. Outages shorter than that
/// (a restart, a failover, a network cut) only hold deleted-state metadata back; a region
/// silent for longer is expelled from GC, and coming back it must restart empty.
pub const DEFAULT_PEER_GC_BOUND_MS: u64 = 3_600_000;

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
            max_clock_offset_ms: DEFAULT_MAX_CLOCK_OFFSET_MS,
            coalesce: true,
            peer_gc_bound_ms: DEFAULT_PEER_GC_BOUND_MS,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub deltas_enqueued: u64,
    pub batches_sent: u64,
    pub deltas_sent: u64,
    /// Deltas put in a batch again (a resend after a timeout; at most one batch per
    /// interval while no ack moves).
    pub deltas_resent: u64,
    pub deltas_applied: u64,
    pub deltas_duplicate: u64,
    pub deltas_out_of_order_dropped: u64,
    pub logs_dropped: u64,
    pub deltas_abandoned: u64,
    pub gc_runs: u64,
    pub gc_dropped: u64,
    /// Times a delta from a peer was held: its HLC was too far ahead of the local clock
    /// (each attempt counts; the sender resends it).
    pub deltas_clock_held: u64,
    /// Local losses reported by the shell (`note_local_loss`).
    pub local_losses: u64,
    /// Deltas joined into a never-sent delta of the same key (per peer log; see
    /// `RegionLink::enqueue`).
    pub deltas_coalesced: u64,
    /// Resent deltas whose content was joined into the later, never-sent delta of their
    /// key and sent as placeholders (see `Outbox::forward_superseded`).
    pub deltas_forwarded: u64,
    /// Peers expelled from GC for their silence (`peer_gc_bound_ms`).
    pub peers_expelled: u64,
    /// Frames from an expelled incarnation, refused (not merged).
    pub frames_refused: u64,
    /// `Refused` frames received from peers that refuse this incarnation.
    pub refusals_received: u64,
    /// Expelled peers readmitted by a new incarnation.
    pub peers_readmitted: u64,
    /// Peers added at run time (`add_peer`) and forgotten (`remove_peer`).
    pub peers_added: u64,
    pub peers_forgotten: u64,
}

/// Where a peer stands with this link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeerState {
    /// Replicating (whether connected or not).
    #[default]
    Active,
    /// Expelled from GC: silent past `peer_gc_bound_ms` (or forgotten and heard from
    /// again); its incarnation's frames are refused until a new incarnation says `Hello`.
    Expelled,
    /// The peer refuses this incarnation (it expelled us): nothing is sent to it, and GC
    /// does not wait for it. Restart this region empty.
    RefusedByPeer,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Active => "active",
            PeerState::Expelled => "expelled",
            PeerState::RefusedByPeer => "refused",
        }
    }
}

/// An expelled (or forgotten) peer: which incarnation is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expelled {
    /// The incarnation last heard of (`None`: none was, since this link started).
    pub epoch: Option<u64>,
    /// When (the caller's clock): only an incarnation born later is readmitted.
    pub at_ms: u64,
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
    /// Deltas and anti-entropy entries from the peer held because they were too far ahead
    /// of the local clock.
    pub clock_held: u64,
    pub state: PeerState,
    /// Link time since the last frame from the peer (see `peer_gc_bound_ms`).
    pub silent_ms: u64,
    /// The peer's incarnation as last heard (its `Hello` or batches).
    pub epoch: Option<u64>,
}

struct Outbox {
    peer: RegionId,
    /// `(seq, delta, bytes)`, contiguous sequences starting at `acked + 1` (or `floor`).
    log: VecDeque<(u64, Delta, usize)>,
    /// Placeholders in `log`: sequence → the later sequence that carries its content (see
    /// `Outbox::forward_superseded`).
    moved: BTreeMap<u64, u64>,
    /// Enqueue time of each log entry's delta, parallel to `log` (for `lag_ms`).
    log_ms: VecDeque<u64>,
    /// Keys with deltas in `log`: how many, and the sequence of the newest. Anti-entropy
    /// leaves these keys to the deltas; a later delta of the key merges into the newest one
    /// while that was never sent (see `RegionLink::enqueue`).
    /// Hashed with the process's seed (`SeededState`: fixed unless the shell set one), as
    /// every map keyed by client bytes in the cores: iteration order is a function of that
    /// seed and the history only.
    in_log: HashMap<Bytes, (u32, u64), SeededState>,
    last_ack_ms: u64,
    deltas_acked: u64,
    log_bytes: usize,
    next_seq: u64,
    acked: u64,
    /// Every sequence below this was acknowledged or abandoned.
    floor: u64,
    sent_upto: u64,
    /// The greatest sequence ever put in a batch (a resend rewinds `sent_upto`, not this):
    /// the peer may hold any delta at or below it, so those are never changed.
    max_sent: u64,
    last_progress_ms: u64,
    /// A resend timeout passed with no ack progress: one batch in flight until an ack moves.
    probing: bool,
    /// When the last batch from this peer arrived (0: never).
    last_batch_in_ms: u64,
    ack_due: bool,
    frontier_due: bool,
    /// Our `Hello` is unanswered: sent again at `next_hello_ms`.
    hello_pending: bool,
    next_hello_ms: u64,
    hello_due: bool,
    /// The peer asked: answer with our `Hello`.
    hello_answer_due: bool,
    /// The greatest HLC this peer's region is known to have issued (for its `Hello`).
    max_issued: Hlc,
    /// `max_issued` when the peer's `Hello { ask }` arrived: the answer. Frames the peer
    /// sent after its ask (its writes, frontier gossip) are of its current life; counting
    /// them would make a first start look like a restart (`RegionLink::restarted`).
    answer_max: Hlc,
    /// Deltas and entries from this peer held for being too far ahead (see `LinkStats`).
    clock_held: u64,
    /// Link time since the last frame from this peer (see `RegionLink::handle_timeout`).
    silent_ms: u64,
    /// The peer's incarnation as last heard (`Hello::epoch`, `Batch::epoch`).
    peer_epoch: Option<u64>,
    /// Expelled from GC: frames of that incarnation are refused.
    expelled: Option<Expelled>,
    /// The peer refused our incarnation: nothing is sent to it.
    refused_by_peer: bool,
    /// A frame of the expelled incarnation came: answer with `Refused` (at most once per
    /// `resend_timeout_ms`, from `next_refusal_ms`).
    refusal_due: bool,
    next_refusal_ms: u64,
}

impl Outbox {
    fn new(peer: RegionId) -> Outbox {
        Outbox {
            peer,
            log: VecDeque::new(),
            moved: BTreeMap::new(),
            log_ms: VecDeque::new(),
            in_log: HashMap::default(),
            last_ack_ms: 0,
            deltas_acked: 0,
            log_bytes: 0,
            next_seq: 1,
            acked: 0,
            floor: 1,
            sent_upto: 0,
            max_sent: 0,
            last_progress_ms: 0,
            probing: false,
            last_batch_in_ms: 0,
            ack_due: false,
            frontier_due: false,
            hello_pending: true,
            next_hello_ms: 0,
            hello_due: false,
            hello_answer_due: false,
            max_issued: Hlc::ZERO,
            answer_max: Hlc::ZERO,
            clock_held: 0,
            silent_ms: 0,
            peer_epoch: None,
            expelled: None,
            refused_by_peer: false,
            refusal_due: false,
            next_refusal_ms: 0,
        }
    }

    /// Replicating: neither expelled nor refused by the peer.
    fn active(&self) -> bool {
        self.expelled.is_none() && !self.refused_by_peer
    }

    /// Drop the log and make sure the next batch's floor is above 1: whoever receives it
    /// (a peer added at run time, a new incarnation of an expelled one) takes it as a gap,
    /// repaired by anti-entropy, never as a complete log of a first incarnation.
    fn restart_log(&mut self) -> u64 {
        let n = self.abandon_log();
        if self.next_seq < 2 {
            self.next_seq = 2;
            self.abandon_log();
        }
        n
    }
    /// Drop the whole log (acknowledged or not): the peer is owed anti-entropy instead, and
    /// the next batch's floor tells it the gap. Returns how many deltas were abandoned.
    fn abandon_log(&mut self) -> u64 {
        let n = self.log.len() as u64;
        self.log.clear();
        self.moved.clear();
        self.in_log.clear();
        self.log_ms.clear();
        self.log_bytes = 0;
        self.floor = self.next_seq;
        self.acked = self.floor - 1;
        self.sent_upto = self.acked;
        self.max_sent = self.acked;
        self.shrink();
        n
    }

    /// Join `delta` into the log's newest delta of the same key if that one was never
    /// sent; `false` if there is no such delta or the log could outgrow `max_bytes` (the
    /// caller then appends, and drops the log if it is full).
    fn coalesce(&mut self, delta: &Delta, max_bytes: usize) -> bool {
        let Some(&(_, seq)) = self.in_log.get(&delta.key) else {
            return false;
        };
        // A join is at most both states: bound it by the new delta's whole size.
        if seq <= self.max_sent || self.log_bytes + delta_bytes(delta) > max_bytes {
            return false;
        }
        let Some(front) = self.log.front().map(|e| e.0) else {
            return false;
        };
        let Some((s, d, b)) = usize::try_from(seq.saturating_sub(front))
            .ok()
            .and_then(|i| self.log.get_mut(i))
        else {
            return false;
        };
        if *s != seq || d.key != delta.key {
            debug_assert!(false, "in_log names the key's newest entry");
            return false;
        }
        // A partial delta is not applied on top of a key the receiver lost (a lossy slot),
        // a full one is. Joined into a full one, a partial delta is applied where it would
        // have been anyway (after the full one); a full delta joined into a partial one
        // would be dropped with it, or carry the partial content where it would not have
        // been applied: that one takes its own sequence.
        if !d.full && delta.full {
            return false;
        }
        d.state.merge(&delta.state);
        let bytes = delta_bytes(d);
        self.log_bytes = self.log_bytes - *b + bytes;
        *b = bytes;
        if let Some((_, last, _)) = self.log.back_mut() {
            last.stamp = last.stamp.max(delta.stamp);
        }
        true
    }

    /// Before a resend of the log entries at indices `range` (each sent before, so never
    /// changed): an entry whose key has a later entry that was never sent is joined into
    /// that one and becomes a placeholder (no key, no state, its own stamp and sequence),
    /// so a key written again while the link was cut ships its latest state once instead
    /// of every superseded value sent into the cut. Moving content to a later sequence is
    /// safe for delivery (the later entry is unacknowledged, so it stays in the log until
    /// the peer has it; a peer that held the original merges it twice) but not for the
    /// peer's frontier, which follows the stamps of delivered sequences: the batch names
    /// each placeholder's later sequence (`Batch::moved`) and the receiver's frontier for
    /// us stays below the placeholder's stamp until it has merged that one. Returns how
    /// many entries became placeholders.
    fn forward_superseded(&mut self, range: std::ops::Range<usize>) -> u64 {
        let Some(front) = self.log.front().map(|e| e.0) else {
            return 0;
        };
        let mut n = 0;
        for i in range {
            let Some((seq, d, _)) = self.log.get(i) else {
                break;
            };
            let seq = *seq;
            if seq > self.max_sent || self.moved.contains_key(&seq) {
                continue;
            }
            let Some(&(_, to)) = self.in_log.get(&d.key) else {
                continue;
            };
            if to <= self.max_sent {
                continue;
            }
            let Some(j) = usize::try_from(to - front).ok() else {
                continue;
            };
            let Some((_, later, _)) = self.log.get(j) else {
                continue;
            };
            // As in `coalesce`: a full delta is not joined into a partial one.
            if later.key != d.key || (d.full && !later.full) {
                continue;
            }
            let (key, stamp) = (d.key.clone(), d.stamp);
            let placeholder = Delta {
                key: Bytes::new(),
                slot: 0,
                stamp,
                full: false,
                state: Entry::default(),
            };
            let pb = delta_bytes(&placeholder);
            let Some((_, old, ob)) = self.log.get_mut(i) else {
                break;
            };
            let old_state = std::mem::replace(old, placeholder).state;
            let old_bytes = std::mem::replace(ob, pb);
            let Some((_, later, lb)) = self.log.get_mut(j) else {
                break;
            };
            later.state.merge(&old_state);
            let nb = delta_bytes(later);
            self.log_bytes = (self.log_bytes + nb + pb).saturating_sub(*lb + old_bytes);
            *lb = nb;
            // The key keeps its later entry: at least one remains counted.
            if let Some(c) = self.in_log.get_mut(&key) {
                c.0 = c.0.saturating_sub(1).max(1);
            }
            self.moved.insert(seq, to);
            n += 1;
        }
        n
    }

    /// Give back the memory of a log that once held a backlog (a burst, a partition): a
    /// drained `VecDeque` or map keeps its greatest capacity otherwise.
    fn shrink(&mut self) {
        const FLOOR: usize = 4096;
        if self.log.capacity() > FLOOR && self.log.len() < self.log.capacity() / 4 {
            let keep = (self.log.len() * 2).max(FLOOR);
            self.log.shrink_to(keep);
            self.log_ms.shrink_to(keep);
        }
        if self.in_log.capacity() > FLOOR && self.in_log.len() < self.in_log.capacity() / 4 {
            self.in_log.shrink_to((self.in_log.len() * 2).max(FLOOR));
        }
    }
}

/// One report of `RegionLink::note_local_loss` still to be repaired.
struct LocalGap {
    /// The lowest stamp among the lost deltas: this region's own frontier stays below it.
    below: Hlc,
    /// Per peer (index of `out`), the last sequence enqueued once every local delta stamped
    /// below `below` was enqueued; `None` until then.
    need_seq: Option<Vec<u64>>,
    /// Per peer: `AntiEntropy::starts` when the peer had acknowledged `need_seq`; rounds
    /// started later count.
    after: Vec<Option<u64>>,
    /// Slots still to repair → bitmask of the peers a counting round found them equal with.
    slots: BTreeMap<u16, u64>,
}

/// Reports beyond this many pending ones are merged into the newest (bounded memory; a
/// merged report waits for the later of the two conditions).
const MAX_LOCAL_GAPS: usize = 8;

struct Incoming {
    epoch: u64,
    acked: u64,
    /// Out-of-order deltas by sequence, each with its `Batch::moved` target if a placeholder.
    buffer: BTreeMap<u64, (Delta, Option<u64>)>,
    /// Deltas were skipped (abandoned log, restart): `seen` must not advance until a clean
    /// anti-entropy round with this origin started after `gap_mark`.
    gap: bool,
    gap_mark: u64,
    seen: Hlc,
    /// Placeholders merged whose content is in a later sequence not merged yet: `seen`
    /// stays below the lowest of their stamps until `acked` reaches the greatest of those
    /// sequences (see `Batch::moved`).
    moved_cap: Option<(Hlc, u64)>,
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
            moved_cap: None,
        }
    }
}

pub struct RegionLink {
    region: RegionId,
    epoch: u64,
    cfg: LinkConfig,
    out: Vec<Outbox>,
    inc: BTreeMap<RegionId, Incoming>,
    /// Peers' last gossiped frontiers.
    frontiers: BTreeMap<RegionId, BTreeMap<RegionId, Hlc>>,
    /// Something was merged since the shell last reported a drain (`note_local_hlc`): the
    /// frontier is not gossiped until then (see `collect_garbage`).
    merged_since_drain: bool,
    /// Earlier GC runs' frontiers, each with the peers' own entries as gossiped then, oldest
    /// first (see `collect_garbage`).
    gc_snaps: VecDeque<GcSnap>,
    /// Per peer, its `Frontier::enqueued` as last gossiped.
    peer_enqueued: BTreeMap<RegionId, Hlc>,
    /// Entries for regions that are neither this region nor a peer of this link: what the
    /// caller holds of them elsewhere (`set_third_party`; node mode's node-wide aggregate).
    /// Gossiped and counted in `stable_frontier` like the others. Empty in region mode.
    third_party: BTreeMap<RegionId, Hlc>,
    /// What this node's in-region replicas hold (`set_replica_cap`): `None` when it has none.
    /// The gossiped frontier never claims more.
    replica_cap: Option<BTreeMap<RegionId, Hlc>>,
    /// The greatest stamp of a local delta enqueued so far.
    enqueued_max: Hlc,
    own_seen: Hlc,
    next_frontier_ms: u64,
    max_seen_hlc: Hlc,
    /// The greatest HLC peers reported this region to have issued (`Hello`).
    own_floor: Hlc,
    /// The greatest peer clock a `Hello` reported (capped at our bound when it arrived).
    peer_clock: Hlc,
    /// Local losses not yet repaired with every peer, oldest first.
    gaps: VecDeque<LocalGap>,
    ae: AntiEntropy,
    rr: usize,
    /// The last frame `poll_transmit` returned was anti-entropy: a batch goes next.
    last_was_ae: bool,
    /// The caller's clock at the last `handle_timeout` (silence is measured in its steps).
    last_tick_ms: Option<u64>,
    /// This link's start (its first `handle_timeout`, or `set_born`): `Hello::born_ms`.
    born_ms: u64,
    /// Forgotten peers (`remove_peer`): the incarnation refused if they come back, and what
    /// this region had merged of them (still gossiped: GC of their stamps needs it).
    forgotten: BTreeMap<RegionId, (Expelled, Hlc)>,
    stats: LinkStats,
}

impl RegionLink {
    /// `epoch` identifies this incarnation of the region's link: any nonzero id, different
    /// for every start (the shell draws a random one; peers only compare ids for equality).
    /// `1` declares the region's first incarnation ever: peers then take its log from
    /// sequence 1 as complete; any other id makes both sides repair by anti-entropy.
    pub fn new(region: RegionId, peers: &[RegionId], epoch: u64, cfg: LinkConfig) -> RegionLink {
        assert!(epoch != 0, "0 means no incarnation");
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
            out: peers.iter().map(|&peer| Outbox::new(peer)).collect(),
            inc: BTreeMap::new(),
            frontiers: BTreeMap::new(),
            merged_since_drain: false,
            gc_snaps: VecDeque::new(),
            peer_enqueued: BTreeMap::new(),
            third_party: BTreeMap::new(),
            replica_cap: None,
            enqueued_max: Hlc::ZERO,
            own_seen: Hlc::ZERO,
            next_frontier_ms: 0,
            max_seen_hlc: Hlc::ZERO,
            own_floor: Hlc::ZERO,
            peer_clock: Hlc::ZERO,
            gaps: VecDeque::new(),
            ae,
            rr: 0,
            last_was_ae: false,
            last_tick_ms: None,
            born_ms: 0,
            forgotten: BTreeMap::new(),
            stats: LinkStats::default(),
            cfg,
        };
        if epoch != 1 {
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

    /// `LinkConfig::peer_gc_bound_ms`: also how long a replica that left still holds the
    /// claims back (the shell's `ReplicaCap`).
    pub fn peer_gc_bound_ms(&self) -> u64 {
        self.cfg.peer_gc_bound_ms
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    pub fn anti_entropy_stats(&self) -> &AntiEntropyStats {
        self.ae.stats()
    }

    /// Greatest HLC received from peers (never more than `max_clock_offset_ms` ahead of the
    /// local clock when it was merged), and the greatest HLC peers reported this region to
    /// have issued: the shell folds it into its clock so that later local writes are
    /// causally after what it has seen, and above any stamp of a previous incarnation.
    pub fn max_seen_hlc(&self) -> Hlc {
        self.max_seen_hlc
            .max(self.ae.max_seen_hlc())
            .max(self.own_floor)
            .max(self.peer_clock)
    }

    /// The greatest HLC a peer may hand us at `now_ms` (see `max_clock_offset_ms`).
    fn clock_limit(&self, now_ms: u64) -> Hlc {
        Hlc::limit(now_ms, self.cfg.max_clock_offset_ms)
    }

    /// Every peer answered this link's `Hello` (the restart handshake is complete); peers
    /// expelled or refusing us do not count.
    pub fn handshake_done(&self) -> bool {
        self.out.iter().all(|o| !o.hello_pending || !o.active())
    }

    /// Some peer's `Hello` reported a stamp of this region (`own_floor` above zero): this
    /// start follows an earlier life whose state peers hold and this region may have lost
    /// (or, started after its peers, it was heard from in this life before a peer answered:
    /// a false positive costs only an anti-entropy round). Final once
    /// [`RegionLink::handshake_done`].
    pub fn restarted(&self) -> bool {
        self.own_floor > Hlc::ZERO
    }

    /// Slots of local losses not yet repaired with every peer (0: the own frontier is not
    /// held back).
    pub fn local_gap_slots(&self) -> usize {
        let mut slots: BTreeSet<u16> = BTreeSet::new();
        for g in &self.gaps {
            slots.extend(g.slots.keys());
        }
        slots.len()
    }

    /// Deltas in the outgoing log for `peer` (not yet acknowledged).
    pub fn backlog(&self, peer: RegionId) -> usize {
        self.out
            .iter()
            .find(|o| o.peer == peer)
            .map_or(0, |o| o.log.len())
    }

    /// Visit every delta the outgoing logs hold (unacknowledged; a coalesced one carries
    /// the join of several writes). For accounting, e.g. the simulator's oracle: with
    /// coalescing the logs are no suffix of the enqueued deltas, so `backlog` (entries)
    /// does not say which writes a log still holds.
    pub fn for_each_logged(&self, visit: &mut dyn FnMut(&Delta)) {
        for o in &self.out {
            for (_, d, _) in &o.log {
                visit(d);
            }
        }
    }

    /// The outgoing state towards `peer` at `now_ms`.
    pub fn peer_status(&self, now_ms: u64, peer: RegionId) -> Option<PeerStatus> {
        let o = self.out.iter().find(|o| o.peer == peer)?;
        Some(PeerStatus {
            backlog_deltas: o.log.len(),
            lag_ms: o.log_ms.front().map_or(0, |t| now_ms.saturating_sub(*t)),
            last_ack_ms: o.last_ack_ms,
            deltas_acked: o.deltas_acked,
            clock_held: o.clock_held,
            state: Self::state_of(o),
            silent_ms: o.silent_ms,
            epoch: o.peer_epoch,
        })
    }

    fn state_of(o: &Outbox) -> PeerState {
        if o.expelled.is_some() {
            PeerState::Expelled
        } else if o.refused_by_peer {
            PeerState::RefusedByPeer
        } else {
            PeerState::Active
        }
    }

    /// `peer`'s state here (`None`: not a peer).
    pub fn peer_state(&self, peer: RegionId) -> Option<PeerState> {
        self.out.iter().find(|o| o.peer == peer).map(Self::state_of)
    }

    /// The peers, in the order they were configured or added.
    pub fn peers(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.out.iter().map(|o| o.peer)
    }

    /// Forgotten peers and the incarnation each is refused with if it comes back.
    pub fn forgotten(&self) -> impl Iterator<Item = (RegionId, Expelled)> + '_ {
        self.forgotten.iter().map(|(r, (e, _))| (*r, *e))
    }

    /// Add `peer` at run time (a region that joined). Its outgoing log starts above
    /// sequence 1, so the peer takes what it gets from us as incomplete until anti-entropy
    /// (requested now, both ways) brings it everything: the joiner bootstraps, and we get
    /// whatever it wrote. GC waits for it from now on. A peer forgotten before comes back
    /// expelled: its incarnation then is refused, a new one is readmitted. Returns `false`
    /// if it is a peer already (or this region).
    pub fn add_peer(&mut self, peer: RegionId) -> bool {
        if peer == self.region || self.out.iter().any(|o| o.peer == peer) {
            return false;
        }
        let mut o = Outbox::new(peer);
        o.restart_log();
        // A peer now: its entry is its stream's, not a third party's.
        self.third_party.remove(&peer);
        if let Some((expelled, seen)) = self.forgotten.remove(&peer) {
            o.expelled = Some(expelled);
            o.peer_epoch = expelled.epoch;
            let inc = self.inc.entry(peer).or_insert_with(Incoming::unknown);
            inc.seen = inc.seen.max(seen);
        }
        let active = o.active();
        for g in self.gaps.iter_mut() {
            if let Some(need) = g.need_seq.as_mut() {
                need.push(o.next_seq - 1);
            }
            g.after.push(None);
        }
        self.out.push(o);
        if active {
            self.ae.add_peer(peer);
            self.ae.request(peer);
        }
        self.gc_snaps.clear();
        self.stats.peers_added += 1;
        if !self.gaps.is_empty() {
            self.gap_progress();
        }
        true
    }

    /// Forget `peer` (`MERIDIAN REGION FORGET`): its log, its incoming state and its
    /// gossip go, GC stops waiting for it, and its incarnation is recorded as expelled: if
    /// it comes back (`add_peer`) that one is refused, a new one is readmitted. What it had
    /// written and no other region holds is gone with it. Returns `false` if not a peer.
    pub fn remove_peer(&mut self, peer: RegionId) -> bool {
        let Some(i) = self.out.iter().position(|o| o.peer == peer) else {
            return false;
        };
        let o = self.out.remove(i);
        self.stats.deltas_abandoned += o.log.len() as u64;
        let expelled = o.expelled.unwrap_or(Expelled {
            epoch: o.peer_epoch,
            at_ms: self.last_tick_ms.unwrap_or(0),
        });
        let seen = self.inc.remove(&peer).map_or(Hlc::ZERO, |inc| inc.seen);
        self.forgotten.insert(peer, (expelled, seen));
        self.frontiers.remove(&peer);
        self.peer_enqueued.remove(&peer);
        self.gc_snaps.clear();
        self.ae.remove_peer(peer);
        for g in self.gaps.iter_mut() {
            if let Some(need) = g.need_seq.as_mut() {
                need.remove(i);
            }
            g.after.remove(i);
            for mask in g.slots.values_mut() {
                let low = *mask & ((1u64 << i) - 1);
                let high = mask.checked_shr(i as u32 + 1).unwrap_or(0) << i;
                *mask = low | high;
            }
        }
        self.rr = 0;
        self.stats.peers_forgotten += 1;
        // A gap waiting only for that peer is repaired now.
        let all = self.active_mask();
        for g in self.gaps.iter_mut() {
            g.slots.retain(|_, mask| *mask & all != all);
        }
        self.gaps.retain(|g| !g.slots.is_empty());
        true
    }

    /// When this region's state started (its process, `Hello::born_ms`), for a link opened
    /// later than that (`NodeLinks` opens one per peer node as slots are routed): a peer
    /// that expelled this region readmits only an incarnation started after. Default: the
    /// link's first `handle_timeout`.
    pub fn set_born(&mut self, ms: u64) {
        self.born_ms = ms;
    }

    /// Expel `peer` as of `record` (a region forgotten before this link existed: `NodeLinks`
    /// opens a link per peer node). Returns `false` if not a peer.
    pub fn expel_peer(&mut self, peer: RegionId, record: Expelled) -> bool {
        let Some(i) = self.out.iter().position(|o| o.peer == peer) else {
            return false;
        };
        if self.out[i].expelled.is_none() {
            self.out[i].expelled = Some(record);
            self.deactivate(i);
        }
        true
    }

    /// Bits (by index in `out`) of the peers a local gap must be repaired with.
    fn active_mask(&self) -> u64 {
        self.out
            .iter()
            .enumerate()
            .filter(|(_, o)| o.active())
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Stop replicating with `out[i]` (expelled, or it refuses us): its log goes, no
    /// anti-entropy with it, GC forgets its gossip and stops waiting for it.
    fn deactivate(&mut self, i: usize) {
        let o = &mut self.out[i];
        let peer = o.peer;
        let expelled = o.expelled.is_some();
        let n = o.restart_log();
        if n > 0 {
            self.stats.logs_dropped += 1;
            self.stats.deltas_abandoned += n;
        }
        o.ack_due = false;
        o.frontier_due = false;
        o.hello_due = false;
        o.hello_answer_due = false;
        self.ae.remove_peer(peer);
        if expelled {
            // GC goes on without it. A peer that refuses us is still waited for (its last
            // gossip stands): this region is to be restarted, and until then must not
            // collect what that peer may not have seen (readmitted later, it would bring
            // back what this region's removals removed).
            self.frontiers.remove(&peer);
            self.peer_enqueued.remove(&peer);
        }
        self.gc_snaps.clear();
        let all = self.active_mask();
        for g in self.gaps.iter_mut() {
            g.slots.retain(|_, mask| *mask & all != all);
        }
        self.gaps.retain(|g| !g.slots.is_empty());
    }

    /// Replicate with `out[i]` again (a new incarnation of an expelled peer, or a peer that
    /// refused us says `Hello`): both sides repair by anti-entropy, GC waits for it again.
    fn reactivate(&mut self, i: usize) {
        let o = &mut self.out[i];
        let peer = o.peer;
        o.expelled = None;
        o.refused_by_peer = false;
        o.refusal_due = false;
        o.silent_ms = 0;
        o.restart_log();
        self.ae.add_peer(peer);
        self.ae.request(peer);
        // Whatever it gossiped before is not what the new incarnation holds.
        self.frontiers.remove(&peer);
        self.peer_enqueued.remove(&peer);
        self.gc_snaps.clear();
        // A local gap must be repaired with it too, in a round started from now on.
        for g in self.gaps.iter_mut() {
            if let Some(need) = g.need_seq.as_mut() {
                need[i] = self.out[i].next_seq - 1;
            }
            g.after[i] = None;
            for mask in g.slots.values_mut() {
                *mask &= !(1 << i);
            }
        }
        if !self.gaps.is_empty() {
            self.gap_progress();
        }
    }

    /// Expel `out[i]` from GC: silent past the bound. Only an incarnation started after
    /// now is readmitted, even if none was heard before: one started earlier, never heard
    /// here, may have taken our state until the cut (it heard us), and hold what our GC
    /// drops from now on. (With a bound shorter than a peer's start-up and connection, a
    /// peer that starts with us may be refused: the bound is an outage length, an hour by
    /// default.)
    fn expel(&mut self, now_ms: u64, i: usize) {
        let o = &mut self.out[i];
        o.expelled = Some(Expelled {
            epoch: o.peer_epoch,
            at_ms: now_ms,
        });
        self.stats.peers_expelled += 1;
        self.deactivate(i);
    }

    /// A `Hello` from an expelled peer: is it a new incarnation, started (empty) after the
    /// expulsion? Another id is not enough: the region may have restarted while it was cut
    /// off, before we expelled it, under an id we never heard, and hold state from then.
    /// The start is the peer's clock, the expulsion ours: clocks may disagree by up to
    /// `max_clock_offset_ms`, so the start must be later by more than that.
    fn readmits(max_clock_offset_ms: u64, e: &Expelled, h: &Hello) -> bool {
        e.epoch != Some(h.epoch) && h.born_ms > e.at_ms.saturating_add(max_clock_offset_ms)
    }

    /// Nothing to send or resend: every log acknowledged, no anti-entropy output queued.
    pub fn is_idle(&self) -> bool {
        self.out
            .iter()
            .all(|o| o.log.is_empty() && !o.ack_due && !o.hello_due && !o.hello_answer_due)
            && !self.ae.has_pending_output()
    }

    /// The local clock's latest HLC: every local write at or below it is already in the
    /// local keyspace, and its delta was enqueued (or reported lost). Lets an idle (or
    /// restarted) region's frontier advance for GC.
    pub fn note_local_hlc(&mut self, hlc: Hlc) {
        if hlc > Hlc::ZERO {
            self.note_drained();
        }
        self.own_seen = self.own_seen.max(hlc);
        if !self.gaps.is_empty() {
            self.gap_progress();
        }
    }

    /// The shell drained its local logs: every local write made before the frames merged
    /// so far is enqueued (or reported lost). The frontier is gossiped only after this.
    pub fn note_drained(&mut self) {
        self.merged_since_drain = false;
    }

    /// Local deltas were lost before they were enqueued (a bounded log overflowed): the
    /// lowest stamp among them and the slots of their keys. Call before `note_local_hlc`
    /// passes `below` (the shell: in the drain that found the loss). Requests anti-entropy
    /// with every peer, and holds this region's own frontier below `below` until the slots
    /// are repaired (see the module doc).
    pub fn note_local_loss(&mut self, below: Hlc, slots: impl IntoIterator<Item = u16>) {
        let slots: BTreeMap<u16, u64> = slots
            .into_iter()
            .filter(|&s| usize::from(s) < meridian_crdt::SLOT_COUNT)
            .map(|s| (s, 0))
            .collect();
        if slots.is_empty() || !self.out.iter().any(Outbox::active) {
            return;
        }
        self.stats.local_losses += 1;
        if self.gaps.len() >= MAX_LOCAL_GAPS {
            // Merge into the newest: it waits for the later of the two conditions.
            let g = self.gaps.back_mut().expect("full");
            g.below = g.below.min(below);
            g.need_seq = None;
            g.after.fill(None);
            for m in g.slots.values_mut() {
                *m = 0;
            }
            g.slots.extend(slots);
        } else {
            self.gaps.push_back(LocalGap {
                below,
                need_seq: None,
                after: vec![None; self.out.len()],
                slots,
            });
        }
        for o in self.out.iter().filter(|o| o.active()) {
            self.ae.request(o.peer);
        }
        self.gap_progress();
    }

    /// Advance the pending local gaps' conditions: the sequences every peer must
    /// acknowledge once all deltas below the loss are enqueued, then the round count mark
    /// once it did.
    fn gap_progress(&mut self) {
        let starts = self.ae.starts();
        for g in self.gaps.iter_mut() {
            if g.need_seq.is_none() {
                // Local deltas are enqueued in HLC order and `own_seen` covers every one
                // enqueued: past `below`, every delta below it is in the logs.
                if self.own_seen < g.below {
                    continue;
                }
                g.need_seq = Some(self.out.iter().map(|o| o.next_seq - 1).collect());
            }
            let Some(need) = g.need_seq.as_ref() else {
                continue;
            };
            for (i, o) in self.out.iter().enumerate() {
                if o.active() && g.after[i].is_none() && o.acked >= need[i] {
                    g.after[i] = Some(starts);
                    // Only a round started from now on counts: run one.
                    self.ae.request(o.peer);
                }
            }
        }
    }

    /// Count completed anti-entropy rounds towards the pending local gaps.
    fn repair_gaps(&mut self) {
        let rounds = self.ae.take_completed_rounds();
        if self.gaps.is_empty() {
            return;
        }
        self.gap_progress();
        // Peers expelled or refusing us are not waited for.
        let all = self.active_mask();
        for (peer, start_seq, listed) in rounds {
            let Some(i) = self.out.iter().position(|o| o.peer == peer) else {
                continue;
            };
            for g in self.gaps.iter_mut() {
                let counts = matches!(g.after[i], Some(after) if start_seq > after);
                if !counts {
                    continue;
                }
                for (slot, mask) in g.slots.iter_mut() {
                    if !listed.contains(slot) {
                        *mask |= 1 << i;
                    }
                }
                g.slots.retain(|_, mask| *mask & all != all);
            }
        }
        self.gaps.retain(|g| !g.slots.is_empty());
    }

    /// This region's own entry in its frontier: `own_seen`, held below every unrepaired
    /// local loss.
    fn own_claim(&self) -> Hlc {
        match self.gaps.iter().map(|g| g.below).min() {
            Some(below) => self.own_seen.min(Hlc(below.0.saturating_sub(1))),
            None => self.own_seen,
        }
    }

    /// Frontier entries for regions this link has no stream with (node mode: each link
    /// has one peer region; `NodeLinks` hands every link what the node holds of the other
    /// peer regions). They go into `seen_vector`, so into the `Frontier` gossip, and
    /// `stable_frontier` takes the minimum with the peer's gossiped entry for the same
    /// region (absent: nothing seen), so GC waits, through this link's snapshots and its
    /// peer's `Frontier::enqueued` claims, for what the peer holds of them too. The caller
    /// must pass values it held when it last drained its local writes (as the own entry;
    /// see `note_drained`): the peer's writes made before what these entries say it merged
    /// are then covered by its claim. Entries for this region, a peer or a forgotten peer
    /// (which keeps its own frozen entry) are ignored; each call replaces the previous set.
    pub fn set_third_party(&mut self, entries: impl IntoIterator<Item = (RegionId, Hlc)>) {
        self.third_party.clear();
        for (r, h) in entries {
            let known = self.out.iter().any(|o| o.peer == r) || self.forgotten.contains_key(&r);
            if r != self.region && !known {
                self.third_party.insert(r, h);
            }
        }
    }

    pub fn request_anti_entropy(&mut self, peer: RegionId) {
        self.ae.request(peer);
    }

    /// Queue a local delta for every peer. A log that would exceed its bound is dropped and
    /// its peer marked for anti-entropy.
    ///
    /// Coalescing: when the log already holds a delta of the same key that was never sent
    /// (its sequence is above `max_sent`), the new delta is joined into it instead of taking
    /// a sequence of its own, so a key written many times while the link is slow or cut
    /// ships once, with its latest state. Joining delta states is what the receiver would do
    /// with the two in turn. The invariants the receiver relies on hold:
    /// - sequences stay contiguous (no new entry, none removed);
    /// - stamps stay in HLC order along the log and a delivered prefix covers every write
    ///   up to its last stamp (the peer's frontier for us): the joined entry keeps its own
    ///   stamp, and the log's last entry (never sent either, being after it) takes the new
    ///   delta's stamp, the greatest so far. A peer that has the log up to that entry has the
    ///   new write too (it is in an entry before it), so its frontier may pass the stamp,
    ///   and an idle region's last write still advances its peers' frontiers.
    /// - an entry the peer may hold (at or below `max_sent`, even after a go-back-N resend
    ///   rewound `sent_upto`) is never changed: its resend would be taken as a duplicate.
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
        self.enqueued_max = self.enqueued_max.max(delta.stamp.hlc);
        self.stats.deltas_enqueued += 1;
        let bytes = delta_bytes(&delta);
        for o in self.out.iter_mut().filter(|o| o.active()) {
            if self.cfg.coalesce && o.coalesce(&delta, self.cfg.max_log_bytes) {
                self.stats.deltas_coalesced += 1;
                continue;
            }
            let seq = o.next_seq;
            o.next_seq += 1;
            if o.log.len() + 1 > self.cfg.max_log_deltas
                || o.log_bytes + bytes > self.cfg.max_log_bytes
            {
                self.stats.logs_dropped += 1;
                self.stats.deltas_abandoned += o.abandon_log() + 1;
                self.ae.request(o.peer);
                continue;
            }
            o.log_bytes += bytes;
            let n = o.in_log.entry(delta.key.clone()).or_insert((0, seq));
            n.0 += 1;
            n.1 = seq;
            o.log.push_back((seq, delta.clone(), bytes));
            o.log_ms.push_back(now_ms);
        }
    }

    pub fn enqueue_all(&mut self, now_ms: u64, deltas: impl IntoIterator<Item = Delta>) {
        for d in deltas {
            self.enqueue(now_ms, d);
        }
    }

    pub fn handle_frame<S: LinkStore + ?Sized>(
        &mut self,
        now_ms: u64,
        from: RegionId,
        frame: Frame,
        store: &mut S,
    ) {
        if self.forgotten.contains_key(&from) && !self.out.iter().any(|o| o.peer == from) {
            // A forgotten region speaks again: back, expelled (its frames refused, it is told
            // so); a new incarnation's `Hello` readmits it below.
            self.add_peer(from);
        }
        if let Some(i) = self.out.iter().position(|o| o.peer == from) {
            let offset = self.cfg.max_clock_offset_ms;
            let o = &mut self.out[i];
            match &frame {
                // Refusals are not the peer speaking for itself: its silence goes on. It
                // names its incarnation (which our refusals then name).
                Frame::Refused(r) => {
                    if r.sender != 0 {
                        o.peer_epoch = Some(r.sender);
                    }
                }
                Frame::Hello(h) => {
                    o.silent_ms = 0;
                    o.peer_epoch = Some(h.epoch);
                }
                Frame::Batch(b) if b.origin == from => {
                    o.silent_ms = 0;
                    o.peer_epoch = Some(b.epoch);
                }
                _ => o.silent_ms = 0,
            }
            if let Some(e) = o.expelled {
                match &frame {
                    Frame::Hello(h) if Self::readmits(offset, &e, h) => {
                        // A new incarnation (restarted empty): a joining region.
                        self.stats.peers_readmitted += 1;
                        self.reactivate(i);
                    }
                    // Counted below (it expelled us too: a cut both ways).
                    Frame::Refused(_) => {}
                    _ => {
                        // That incarnation's state may hold what GC here dropped: nothing
                        // of it is merged; it is told so.
                        self.stats.frames_refused += 1;
                        o.refusal_due = true;
                        return;
                    }
                }
            } else if o.refused_by_peer && matches!(frame, Frame::Hello(_)) {
                // The peer speaks to us again: it restarted (its ask), or readmitted us (its
                // answer). A refuser only sends refusals.
                self.reactivate(i);
            }
        }
        if matches!(frame, Frame::Batch(_) | Frame::AeEntries(_)) {
            self.merged_since_drain = true;
        }
        match frame {
            Frame::Refused(r) => {
                let Some(i) = self.out.iter().position(|o| o.peer == from) else {
                    return;
                };
                if r.epoch != self.epoch && r.epoch != 0 {
                    return; // about an earlier incarnation of ours
                }
                self.stats.refusals_received += 1;
                if self.out[i].expelled.is_none() && !self.out[i].refused_by_peer {
                    self.out[i].refused_by_peer = true;
                    self.deactivate(i);
                    // Keep asking: a peer that restarted (or readmits us) answers.
                    self.out[i].hello_pending = true;
                }
            }
            Frame::Batch(b) => self.handle_batch(now_ms, from, b, store),
            // `decode` unpacks compressed frames.
            Frame::Packed(_) => {}
            Frame::Ack(a) => self.handle_ack(now_ms, from, a),
            Frame::Frontier(f) => {
                let limit = self.clock_limit(now_ms);
                if let Some(o) = self.out.iter_mut().find(|o| o.peer == from) {
                    let frontier: BTreeMap<RegionId, Hlc> = f.seen.into_iter().collect();
                    // Its own entry is a clock reading of the peer (for its `Hello`; within
                    // the bound, as every stamp we merge).
                    if let Some(&own) = frontier.get(&from).filter(|&&h| h <= limit) {
                        o.max_issued = o.max_issued.max(own);
                        // An idle stream still advances: the peer gossips only after a
                        // drain, so every write of its own at or below its own entry was
                        // enqueued (a lost one holds that entry back), the greatest at
                        // `enqueued`; once the contiguous prefix we merged reaches that,
                        // we hold all of them. (Without this a peer with nothing to send
                        // us would pin our frontier for its region: with several nodes per
                        // region, one node idle towards us stopped GC for the others.)
                        let inc = self.inc.entry(from).or_insert_with(Incoming::unknown);
                        if !inc.gap && f.enqueued <= inc.seen {
                            inc.seen = inc.seen.max(own);
                        }
                    }
                    self.frontiers.insert(from, frontier);
                    self.peer_enqueued.insert(from, f.enqueued);
                }
            }
            Frame::Hello(h) => {
                if let Some(o) = self.out.iter_mut().find(|o| o.peer == from) {
                    o.hello_pending = false;
                    if h.ask {
                        o.hello_answer_due = true;
                        o.answer_max = o.max_issued;
                    }
                    if h.ask && o.max_issued > Hlc::ZERO {
                        // The peer restarted (we heard from its previous life) and lost
                        // what it held, removals included. Our unacknowledged deltas may
                        // predate removals it had sent us: resent, they would rebuild what
                        // those removed at a region that no longer knows it. It gets our
                        // current state by anti-entropy instead, and GC forgets the
                        // frontiers its previous life gossiped.
                        self.stats.logs_dropped += 1;
                        self.stats.deltas_abandoned += o.abandon_log();
                        self.ae.request(o.peer);
                        self.gc_snaps.clear();
                    }
                    // Our own stamps as the peer holds them: never more than our previous
                    // incarnation issued (and within the peer's bound when it recorded
                    // them), so adopted without ours: after a backward clock step they are
                    // ahead of our clock, and stamping below them could reuse one.
                    self.own_floor = self.own_floor.max(h.your_max);
                    // The peer's clock covers every stamp it holds, ours included, even
                    // when its link is younger than our previous life.
                    let limit = self.clock_limit(now_ms);
                    self.peer_clock = self.peer_clock.max(h.clock.min(limit));
                }
            }
            Frame::AeDigests(d) => self.ae.handle_digests(from, d, self.own_claim()),
            Frame::AeKeys(k) => {
                let limit = self.clock_limit(now_ms);
                let o = self.out.iter_mut().find(|o| o.peer == from);
                let in_flight = |key: &[u8]| o.as_ref().is_some_and(|o| o.in_log.contains_key(key));
                self.ae.handle_keys(now_ms, from, &k, &in_flight, store);
                if let Some(o) = o.filter(|_| k.origin_seen <= limit) {
                    o.max_issued = o.max_issued.max(k.origin_seen);
                }
                self.close_gaps();
                self.repair_gaps();
            }
            Frame::AeEntries(e) => {
                let limit = self.clock_limit(now_ms);
                let o = self.out.iter_mut().find(|o| o.peer == from);
                let in_flight = |key: &[u8]| o.as_ref().is_some_and(|o| o.in_log.contains_key(key));
                let held = self.ae.handle_entries(from, &e, &in_flight, limit, store);
                if let Some(o) = o {
                    o.clock_held += held;
                }
            }
            // Discovery is the shell's (`proto::topology`), not the link's.
            Frame::TopologyRequest | Frame::Topology(_) => {}
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

    fn handle_batch<S: LinkStore + ?Sized>(
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
        let Some(oi) = self.out.iter().position(|o| o.peer == from) else {
            return;
        };
        self.out[oi].last_batch_in_ms = now_ms.max(1);
        let limit = self.clock_limit(now_ms);
        let mark = self.ae.starts();
        let inc = self.inc.entry(b.origin).or_insert_with(Incoming::unknown);
        if b.epoch != inc.epoch {
            // Another incarnation than the one on record: ids are not ordered (a restart
            // after a backward clock step must be taken), so any other one resets. Anything
            // but a first-ever log from sequence 1 may hide writes we never got.
            let fresh = inc.epoch == 0 && b.epoch == 1 && b.floor == 1;
            *inc = Incoming {
                epoch: b.epoch,
                acked: 0,
                buffer: BTreeMap::new(),
                gap: !fresh || inc.gap,
                gap_mark: mark,
                seen: inc.seen,
                moved_cap: None,
            };
        }
        if b.floor > inc.acked + 1 {
            inc.acked = b.floor - 1;
            inc.gap = true;
            inc.gap_mark = mark;
            // The gap freezes `seen` until a clean anti-entropy round, which also covers
            // whatever a placeholder's later sequence carried.
            inc.moved_cap = None;
            let keep = inc.buffer.split_off(&b.floor);
            inc.buffer = keep;
        }
        // The run of deltas that extends the contiguous prefix, in sequence order: the
        // store merges it in one call (the shell locks each shard once per batch). A delta
        // too far ahead of our clock ends the run unacknowledged: the sender resends it.
        let mut run: Vec<Delta> = Vec::with_capacity(b.deltas.len());
        let mut held = false;
        let mut max_seen = self.max_seen_hlc;
        let mut issued = Hlc::ZERO;
        let mut moved = b.moved.iter().peekable();
        for (i, d) in b.deltas.into_iter().enumerate() {
            let seq = b.first_seq + i as u64;
            let to = moved
                .next_if(|(mi, _)| *mi as usize == i)
                .map(|&(_, to)| to);
            if seq <= inc.acked {
                self.stats.deltas_duplicate += 1;
            } else if seq == inc.acked + 1 {
                let mut next = Some((d, to));
                while let Some((d, to)) = next {
                    let max = d.state.max_hlc().max(d.stamp.hlc);
                    if max > limit {
                        // Held (dropped here, not acknowledged); what follows it stays in
                        // the reorder buffer or comes again with the resend.
                        held = true;
                        break;
                    }
                    max_seen = max_seen.max(max);
                    issued = issued.max(d.stamp.hlc);
                    if let Some(to) = to {
                        // A placeholder: nothing to merge; `seen` waits for `to`.
                        let (cap, until) = inc.moved_cap.unwrap_or((d.stamp.hlc, to));
                        inc.moved_cap = Some((cap.min(d.stamp.hlc), until.max(to)));
                    } else {
                        run.push(d);
                    }
                    inc.acked += 1;
                    next = inc.buffer.remove(&(inc.acked + 1));
                }
            } else if seq - inc.acked <= self.cfg.reorder_buffer_deltas {
                inc.buffer.entry(seq).or_insert((d, to));
            } else {
                self.stats.deltas_out_of_order_dropped += 1;
            }
        }
        let o = &mut self.out[oi];
        if held {
            self.stats.deltas_clock_held += 1;
            o.clock_held += 1;
        }
        if !run.is_empty() {
            store.apply_deltas(&run);
            self.stats.deltas_applied += run.len() as u64;
        }
        if issued > Hlc::ZERO {
            self.max_seen_hlc = max_seen;
            // A run is in sequence order, which is the origin's HLC order.
            let mut upto = issued;
            if let Some((cap, until)) = inc.moved_cap {
                if inc.acked >= until {
                    inc.moved_cap = None;
                } else {
                    upto = upto.min(Hlc(cap.0.saturating_sub(1)));
                }
            }
            if !inc.gap {
                inc.seen = inc.seen.max(upto);
            }
            o.max_issued = o.max_issued.max(issued);
        }
        o.ack_due = true;
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
            let (s, d, bytes) = o.log.pop_front().expect("checked");
            if o.moved.remove(&s).is_some() {
                // A placeholder: its key was uncounted when it became one.
            } else if let Some(n) = o.in_log.get_mut(&d.key) {
                n.0 -= 1;
                if n.0 == 0 {
                    o.in_log.remove(&d.key);
                }
            }
            o.log_ms.pop_front();
            o.log_bytes -= bytes;
            o.deltas_acked += 1;
        }
        debug_assert_eq!(o.log.len(), o.log_ms.len());
        o.shrink();
        o.last_ack_ms = now_ms;
        o.acked = a.seq;
        o.sent_upto = o.sent_upto.max(a.seq);
        o.last_progress_ms = now_ms;
        o.probing = false;
        if !self.gaps.is_empty() {
            self.gap_progress();
        }
    }

    ///
    /// Peers' silence (`peer_gc_bound_ms`) is measured in this link's own steps: each call
    /// adds the time since the previous one, at most twice the longer of the frontier and
    /// resend intervals (the shells call it more often than that), so a wall clock that
    /// jumps ahead does not expel every peer at once (and a step back adds nothing).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let cap = self
            .cfg
            .frontier_interval_ms
            .max(self.cfg.resend_timeout_ms)
            .saturating_mul(2);
        let step = match self.last_tick_ms {
            Some(t) => now_ms.saturating_sub(t).min(cap),
            None => {
                if self.born_ms == 0 {
                    self.born_ms = now_ms;
                }
                0
            }
        };
        self.last_tick_ms = Some(now_ms);
        let bound = self.cfg.peer_gc_bound_ms;
        for i in 0..self.out.len() {
            let o = &mut self.out[i];
            if !o.active() {
                continue;
            }
            o.silent_ms = o.silent_ms.saturating_add(step);
            if bound > 0 && o.silent_ms > bound {
                self.expel(now_ms, i);
            }
        }
        // The caller's clock may step back (a wall clock corrected by NTP): no deadline then
        // waits longer than its own span, or resends, gossip and handshakes would stop for
        // as long as the step.
        self.next_frontier_ms = self
            .next_frontier_ms
            .min(now_ms.saturating_add(self.cfg.frontier_interval_ms));
        for o in self.out.iter_mut() {
            o.last_progress_ms = o.last_progress_ms.min(now_ms);
            o.next_hello_ms = o
                .next_hello_ms
                .min(now_ms.saturating_add(self.cfg.resend_timeout_ms));
            o.next_refusal_ms = o
                .next_refusal_ms
                .min(now_ms.saturating_add(self.cfg.resend_timeout_ms));
            if o.last_batch_in_ms > now_ms {
                o.last_batch_in_ms = now_ms.max(1);
            }
        }
        for o in self.out.iter_mut() {
            if o.sent_upto > o.acked
                && now_ms
                    >= o.last_progress_ms
                        .saturating_add(self.cfg.resend_timeout_ms)
            {
                o.sent_upto = o.acked;
                o.probing = true;
            }
        }
        if now_ms >= self.next_frontier_ms {
            self.next_frontier_ms = now_ms + self.cfg.frontier_interval_ms;
            for o in self.out.iter_mut().filter(|o| o.active()) {
                o.frontier_due = true;
            }
        }
        for o in self.out.iter_mut() {
            // An expelled peer is told so every interval, whether it speaks or not: both
            // sides of a long cut (each expelled the other) learn they are refused.
            if o.expelled.is_some() {
                o.refusal_due = true;
                continue;
            }
            if o.hello_pending && now_ms >= o.next_hello_ms {
                o.hello_due = true;
                o.next_hello_ms = now_ms.saturating_add(self.cfg.resend_timeout_ms);
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
        let hello = self
            .out
            .iter()
            .filter(|o| o.hello_pending && o.expelled.is_none())
            .map(|o| o.next_hello_ms)
            .min();
        let refusal = self
            .out
            .iter()
            .filter(|o| o.refusal_due)
            .map(|o| o.next_refusal_ms)
            .min();
        // The GC bound: the next expulsion, in link time from the last call (an upper
        // bound on the wall time to it).
        let bound = self.cfg.peer_gc_bound_ms;
        let expel = (bound > 0)
            .then(|| {
                let quietest = self
                    .out
                    .iter()
                    .filter(|o| o.active())
                    .map(|o| o.silent_ms)
                    .max()?;
                let last = self.last_tick_ms?;
                Some(last.saturating_add(bound.saturating_sub(quietest).saturating_add(1)))
            })
            .flatten();
        [
            resend,
            Some(self.next_frontier_ms),
            hello,
            refusal,
            expel,
            self.ae.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Start due anti-entropy rounds and do one bounded step of the work in progress
    /// (slot digests, comparisons). Call again while [`Self::has_anti_entropy_work`].
    pub fn poll_anti_entropy<S: LinkStore + ?Sized>(&mut self, now_ms: u64, store: &mut S) {
        let quiet = self.cfg.anti_entropy_quiet_ms;
        for o in self.out.iter().filter(|o| o.active()) {
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

    /// Next frame to send, round-robin over peers: handshakes and acks first, then frontier
    /// gossip, then
    /// anti-entropy frames and delta batches taking turns (a repair never holds up delta
    /// shipping by more than one frame, and the other way round).
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<(RegionId, Frame)> {
        let n = self.out.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            let o = &mut self.out[i];
            if o.refusal_due && now_ms >= o.next_refusal_ms {
                o.refusal_due = false;
                o.next_refusal_ms = now_ms.saturating_add(self.cfg.resend_timeout_ms);
                return Some((
                    o.peer,
                    Frame::Refused(Refused {
                        // 0: whichever incarnation it is (none was heard before).
                        epoch: o.peer_epoch.unwrap_or(0),
                        reason: RefuseReason::Expelled,
                        sender: self.epoch,
                    }),
                ));
            }
            if o.expelled.is_some() {
                continue;
            }
            if o.refused_by_peer && !o.hello_due {
                // Only our `Hello` asks go to a peer refusing us: a restarted one answers.
                continue;
            }
            if o.hello_due || o.hello_answer_due {
                let ask = o.hello_due;
                o.hello_due = false;
                let your_max = if std::mem::take(&mut o.hello_answer_due) {
                    o.answer_max
                } else {
                    o.max_issued
                };
                let clock = self.own_seen.max(self.max_seen_hlc);
                return Some((
                    o.peer,
                    Frame::Hello(Hello {
                        ask,
                        your_max,
                        clock,
                        region: self.region,
                        epoch: self.epoch,
                        born_ms: self.born_ms,
                    }),
                ));
            }
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
            // Our own entry must cover every local write made before what we merged (the
            // shell drains before it reports `note_local_hlc`): `collect_garbage` relies on it.
            if o.frontier_due && !self.merged_since_drain {
                o.frontier_due = false;
                return Some((
                    o.peer,
                    Frame::Frontier(Frontier {
                        seen: self.claimed_vector(),
                        enqueued: self.enqueued_max,
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
            if !o.active() {
                continue;
            }
            let in_flight = o.sent_upto - o.acked;
            let Some(&(front_seq, _, _)) = o.log.front() else {
                continue;
            };
            let window = if o.probing {
                self.cfg.max_batch_deltas.min(self.cfg.window_deltas)
            } else {
                self.cfg.window_deltas
            };
            if in_flight as usize >= window || o.sent_upto + 1 >= o.next_seq {
                continue;
            }
            let first_seq = o.sent_upto + 1;
            debug_assert!(first_seq >= front_seq);
            let start = (first_seq - front_seq) as usize;
            let room = (window - in_flight as usize).min(self.cfg.max_batch_deltas);
            if self.cfg.coalesce && first_seq <= o.max_sent {
                self.stats.deltas_forwarded += o.forward_superseded(start..start + room);
            }
            let mut deltas = Vec::new();
            let mut moved = Vec::new();
            let mut bytes = 0;
            for (s, d, b) in o.log.iter().skip(start).take(room) {
                if !deltas.is_empty() && bytes + b > self.cfg.max_batch_bytes {
                    break;
                }
                bytes += b;
                if let Some(&to) = o.moved.get(s) {
                    moved.push((deltas.len() as u32, to));
                }
                deltas.push(d.clone());
            }
            if deltas.is_empty() {
                continue;
            }
            if o.sent_upto == o.acked {
                o.last_progress_ms = now_ms;
            }
            o.sent_upto += deltas.len() as u64;
            self.stats.deltas_resent += o.max_sent.min(o.sent_upto).saturating_sub(first_seq - 1);
            o.max_sent = o.max_sent.max(o.sent_upto);
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
                    moved,
                }),
            ));
        }
        None
    }

    /// This region's view: per origin, an HLC below which it holds every write (its own
    /// entry held below unrepaired local losses; regions that are not peers of this link
    /// as the caller set them: `set_third_party`).
    /// Peers expelled, refusing us or forgotten keep their (frozen) entry: what we merged
    /// of them is what GC of their stamps waits on.
    pub fn seen_vector(&self) -> Vec<(RegionId, Hlc)> {
        let mut v = vec![(self.region, self.own_claim())];
        for o in &self.out {
            let seen = self.inc.get(&o.peer).map_or(Hlc::ZERO, |i| i.seen);
            v.push((o.peer, seen));
        }
        for (r, (_, seen)) in &self.forgotten {
            v.push((*r, *seen));
        }
        v.extend(self.third_party.iter().map(|(&r, &h)| (r, h)));
        v
    }

    /// What this link may tell its peer it holds: [`Self::seen_vector`], each entry capped
    /// by what this node's replicas hold ([`Self::set_replica_cap`]).
    fn claimed_vector(&self) -> Vec<(RegionId, Hlc)> {
        let mut v = self.seen_vector();
        if let Some(cap) = &self.replica_cap {
            for (r, h) in v.iter_mut() {
                *h = (*h).min(cap.get(r).copied().unwrap_or(Hlc::ZERO));
            }
        }
        v
    }

    /// A checkpoint of what this node holds, as the frontier gossip would claim it now
    /// (uncapped): the shell records it with its replica stream's offset and hands it to
    /// [`Self::set_replica_cap`] once every replica acknowledged that offset.
    pub fn claim_checkpoint(&self) -> BTreeMap<RegionId, Hlc> {
        self.seen_vector().into_iter().collect()
    }

    /// What this node's in-region replicas hold: a [`Self::claim_checkpoint`] taken when
    /// the replica stream's offset was at most what every replica has acknowledged since
    /// (`None`: the node has no replicas; regions missing from the map read as nothing).
    ///
    /// Why: GC of a removal's tombstone anywhere waits for every region to claim the removal
    /// (the gossiped frontier). A claim of the primary alone is not enough: if it fails over
    /// to a replica the removal had not reached yet, the promoted replica still holds what
    /// the removal killed and anti-entropy would ship it back to regions that collected the
    /// tombstone. So a node claims only what its replicas hold too. Local GC is not capped:
    /// this node's own tombstones only matter to state it receives, and every peer keeps its
    /// tombstones until this region's capped claim passes them, so a promoted replica
    /// missing the removal gets it back by anti-entropy.
    pub fn set_replica_cap(&mut self, cap: Option<BTreeMap<RegionId, Hlc>>) {
        self.replica_cap = cap;
    }

    /// Per origin, the HLC every region (this one and every peer's last gossip) has seen.
    /// Peers expelled from GC (silent past `peer_gc_bound_ms`) or forgotten are not waited
    /// for (a peer refusing us still is).
    pub fn stable_frontier(&self) -> BTreeMap<RegionId, Hlc> {
        let mut stable: BTreeMap<RegionId, Hlc> = self.seen_vector().into_iter().collect();
        for o in self.out.iter().filter(|o| o.expelled.is_none()) {
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
    ///
    /// Stable is not enough on its own: a write a peer made *before* it merged a removal can
    /// carry a live copy of what the removal killed (a string write ships its whole string,
    /// an `SADD` the member's dots), and if it lands after the tombstone was collected, the
    /// removed state comes back. So this collects with the frontier of an earlier run `j`
    /// only once every peer's deltas up to the greatest one it had enqueued when it gossiped
    /// the frontier of `j` — which covers every write it made before merging what that
    /// frontier says it merged (it gossips only after draining: `merged_since_drain`) — have
    /// reached this region.
    pub fn collect_garbage<S: LinkStore + ?Sized>(&mut self, store: &mut S) -> usize {
        let Some(stable) = self.gc_frontier() else {
            return 0;
        };
        if stable.values().all(|h| *h == Hlc::ZERO) {
            return 0;
        }
        let dropped = store.gc(&|r| stable.get(&r).copied().unwrap_or(Hlc::ZERO));
        self.note_gc(dropped);
        dropped
    }

    /// Count a GC run made with [`RegionLink::gc_frontier`] (by a caller that composes
    /// several links' frontiers: `NodeLinks`).
    pub fn note_gc(&mut self, dropped: usize) {
        self.stats.gc_runs += 1;
        self.stats.gc_dropped += dropped as u64;
    }

    /// The stable frontier [`RegionLink::collect_garbage`] may collect with now (`None`:
    /// none is usable yet): that of an earlier run, once every peer's deltas up to what it
    /// had enqueued when it gossiped it have reached this region. Regions this link does
    /// not know are absent (a caller reads them as `Hlc::ZERO`).
    pub fn gc_frontier(&mut self) -> Option<BTreeMap<RegionId, Hlc>> {
        let now = self.stable_frontier();
        // The greatest stamp each peer had enqueued when it gossiped: its deltas, not its
        // clock (an idle peer's claim stays put, so what we merged from it catches up).
        let claims: BTreeMap<RegionId, Hlc> = self
            .out
            .iter()
            .filter(|o| o.expelled.is_none())
            .map(|o| {
                let own = self.peer_enqueued.get(&o.peer);
                (o.peer, own.copied().unwrap_or(Hlc::ZERO))
            })
            .collect();
        if self
            .gc_snaps
            .back()
            .is_none_or(|s| s.frontier != now || s.claims != claims)
        {
            if self.gc_snaps.len() >= GC_SNAPS {
                // Keep the oldest (the next to become usable): thin out the newest.
                self.gc_snaps.pop_back();
            }
            self.gc_snaps.push_back(GcSnap {
                frontier: now.clone(),
                claims,
            });
        }
        // A peer's write reaches us only from that peer (anti-entropy from a third region
        // ships state that already merged the removal): what we merged from each peer is
        // what counts, not what everyone did (a cut between two peers must not stop us).
        let mine: BTreeMap<RegionId, Hlc> = self.seen_vector().into_iter().collect();
        let covered = |s: &GcSnap| {
            s.claims
                .iter()
                .all(|(r, h)| *h <= mine.get(r).copied().unwrap_or(Hlc::ZERO))
        };
        let j = self.gc_snaps.iter().rposition(covered)?;
        self.gc_snaps.drain(..j);
        Some(self.gc_snaps[0].frontier.clone())
    }
}

/// Bound on the frontiers `collect_garbage` keeps waiting to become usable.
const GC_SNAPS: usize = 64;

/// A GC run's stable frontier and the peers' own frontier entries it was computed from.
#[derive(Debug)]
struct GcSnap {
    frontier: BTreeMap<RegionId, Hlc>,
    claims: BTreeMap<RegionId, Hlc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use meridian_crdt::{key_slot, HlcClock, Keyspace, KeyspaceConfig, Stamp};

    /// One region: its keyspace, link and clock; `skew_ms` is added to the shared time to
    /// make its physical clock reading.
    struct Side {
        ks: Keyspace,
        link: RegionLink,
        clock: HlcClock,
        skew_ms: i64,
    }

    fn cfg() -> LinkConfig {
        LinkConfig {
            anti_entropy_interval_ms: 1_000_000,
            anti_entropy_retry_ms: 100,
            anti_entropy_quiet_ms: 10,
            frontier_interval_ms: 100,
            resend_timeout_ms: 200,
            ..LinkConfig::default()
        }
    }

    fn side(r: u16, epoch: u64) -> Side {
        Side {
            ks: Keyspace::new(KeyspaceConfig {
                region: RegionId(r),
                retain_tombstones: true,
                ..KeyspaceConfig::default()
            }),
            link: RegionLink::new(RegionId(r), &[RegionId(1 - r)], epoch, cfg()),
            clock: HlcClock::new(RegionId(r)),
            skew_ms: 0,
        }
    }

    fn pair() -> [Side; 2] {
        [side(0, 1), side(1, 1)]
    }

    impl Side {
        fn phys(&self, now: u64) -> u64 {
            now.saturating_add_signed(self.skew_ms)
        }

        /// A local write at `now` (on this side's clock); its deltas stay in the keyspace.
        fn write(
            &mut self,
            now: u64,
            key: &str,
            f: impl FnOnce(&mut meridian_crdt::EntryWriter),
        ) -> Stamp {
            let phys = self.phys(now);
            let st = self.clock.now(phys);
            self.ks.write(key.as_bytes(), st, phys, f);
            st
        }

        /// Enqueue the keyspace's deltas (what the shell's drain does).
        fn ship(&mut self, now: u64) {
            let phys = self.phys(now);
            let deltas: Vec<Delta> = self.ks.drain_deltas().collect();
            self.link.enqueue_all(phys, deltas);
            self.link.note_local_hlc(self.clock.last());
        }

        /// The keyspace's deltas are lost before the link (a full shard log): reported.
        fn lose(&mut self) {
            let lost: Vec<Delta> = self.ks.drain_deltas().collect();
            let below = lost.iter().map(|d| d.stamp.hlc).min().expect("a delta");
            self.link
                .note_local_loss(below, lost.iter().map(|d| d.slot));
            // The shell's next drain: its horizon passes the lost stamps.
            self.link.note_local_hlc(self.clock.last());
        }

        fn alive(&self, key: &str) -> bool {
            self.ks.peek(key.as_bytes(), 0).is_some()
        }
    }

    /// Through the codec, as on the wire.
    fn wire(f: Frame) -> Frame {
        decode(&encode(&f).expect("encodes"))
            .expect("decodes")
            .expect("complete")
            .0
    }

    fn deliver(now: u64, s: &mut [Side; 2], to: usize, f: Frame) {
        let from = s[1 - to].link.region();
        let t = &mut s[to];
        let phys = t.phys(now);
        t.link.handle_frame(phys, from, f, &mut t.ks);
        let seen = t.link.max_seen_hlc();
        t.clock.observe(seen);
    }

    /// Run both sides at `now` (timers, anti-entropy steps) and deliver every frame `pass`
    /// accepts until nothing moves; returns the others (recipient, frame), undelivered.
    fn pump(now: u64, s: &mut [Side; 2], pass: &dyn Fn(&Frame) -> bool) -> Vec<(usize, Frame)> {
        let mut held = Vec::new();
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..2 {
                let x = &mut s[i];
                let phys = x.phys(now);
                x.link.handle_timeout(phys);
                x.link.poll_anti_entropy(phys, &mut x.ks);
                // The shell drains its (here: empty, tests ship by hand) logs every round.
                x.link.note_drained();
                let mut out = Vec::new();
                while let Some((_, f)) = x.link.poll_transmit(phys) {
                    out.push(wire(f));
                }
                for f in out {
                    moved = true;
                    if pass(&f) {
                        deliver(now, s, 1 - i, f);
                    } else {
                        held.push((1 - i, f));
                    }
                }
            }
            if !moved && s.iter().all(|x| !x.link.has_anti_entropy_work()) {
                return held;
            }
        }
        panic!("the links keep talking");
    }

    fn all(_: &Frame) -> bool {
        true
    }

    fn not_ae(f: &Frame) -> bool {
        !f.is_anti_entropy()
    }

    fn set(w: &mut meridian_crdt::EntryWriter) {
        w.set_str(Bytes::from_static(b"v"), false);
    }

    // ---- the GC bound, forgetting and adding peers ----

    /// A GC bound, and clocks trusted to agree within 100 ms (a restarted incarnation is
    /// readmitted if it started more than that after the expulsion).
    fn bounded(bound_ms: u64) -> LinkConfig {
        LinkConfig {
            peer_gc_bound_ms: bound_ms,
            max_clock_offset_ms: 100,
            ..cfg()
        }
    }

    fn bounded_side(r: u16, peers: &[u16], epoch: u64, bound_ms: u64) -> Side {
        let mut x = side(r, epoch);
        let peers: Vec<RegionId> = peers.iter().map(|&p| RegionId(p)).collect();
        x.link = RegionLink::new(RegionId(r), &peers, epoch, bounded(bound_ms));
        x
    }

    fn none(_: &Frame) -> bool {
        false
    }

    /// Run both sides every 100 ms from `from` for `ms`, delivering what `pass` accepts;
    /// returns the time reached.
    fn run_for(from: u64, ms: u64, s: &mut [Side; 2], pass: &dyn Fn(&Frame) -> bool) -> u64 {
        let mut t = from;
        while t < from + ms {
            t += 100;
            pump(t, s, pass);
        }
        t
    }

    fn slots_equal(s: &mut [Side; 2]) -> bool {
        (0..meridian_crdt::SLOT_COUNT as u16)
            .all(|k| s[0].ks.slot_digest(k) == s[1].ks.slot_digest(k))
    }

    /// A peer silent past the bound is expelled: GC goes on without it (a tombstone it
    /// never saw is collected), and when it comes back, that incarnation is refused both
    /// ways (each side expelled the other) and told so: nothing of its state, which still
    /// holds the removed member, is merged. Restarted empty, it is readmitted and
    /// bootstraps by anti-entropy; the member stays removed.
    #[test]
    fn a_peer_silent_past_the_bound_is_expelled_refused_and_readmitted_when_restarted() {
        let mut s = [
            bounded_side(0, &[1], 1, 1_000),
            bounded_side(1, &[0], 1, 1_000),
        ];
        let mut now = 10_000;
        s[0].write(now, "s", |w| {
            w.sadd(&Bytes::from_static(b"m"));
        });
        s[0].ship(now);
        s[1].write(now, "b-early", set);
        s[1].ship(now);
        now = run_for(now, 300, &mut s, &all);
        assert!(s[1].alive("s") && s[0].alive("b-early"));
        assert_eq!(s[0].link.peer_state(RegionId(1)), Some(PeerState::Active));
        // Cut: both sides go silent for each other. Within the bound nothing changes.
        now = run_for(now, 900, &mut s, &none);
        assert_eq!(s[0].link.peer_state(RegionId(1)), Some(PeerState::Active));
        let rem = s[0].write(now, "s", |w| {
            w.srem(b"m");
        });
        s[0].ship(now);
        assert_eq!(s[0].link.collect_garbage(&mut s[0].ks), 0, "GC waits for B");
        now = run_for(now, 400, &mut s, &none);
        assert_eq!(s[0].link.peer_state(RegionId(1)), Some(PeerState::Expelled));
        assert_eq!(s[1].link.peer_state(RegionId(0)), Some(PeerState::Expelled));
        assert_eq!(s[0].link.stats().peers_expelled, 1);
        assert_eq!(s[0].link.backlog(RegionId(1)), 0, "its log was dropped");
        assert!(s[0].link.stable_frontier()[&RegionId(0)] >= rem.hlc);
        let mut dropped = 0;
        for _ in 0..3 {
            s[0].link.note_local_hlc(s[0].clock.last());
            dropped += s[0].link.collect_garbage(&mut s[0].ks);
        }
        assert!(dropped >= 1, "collected without the expelled peer");
        assert!(s[1].alive("s"), "B still holds the removed member");
        // Healed: B's incarnation is refused, and refuses A in turn.
        s[1].write(now, "b-write", set);
        s[1].ship(now);
        s[1].link.request_anti_entropy(RegionId(0));
        now = run_for(now, 1_000, &mut s, &all);
        assert!(
            !s[0].alive("s"),
            "nothing of the expelled incarnation merged"
        );
        assert!(!s[0].alive("b-write"));
        // Each side expelled the other: each tells the other, every interval.
        assert!(s[0].link.stats().refusals_received > 0);
        assert!(s[1].link.stats().refusals_received > 0);
        assert_eq!(s[0].link.peer_state(RegionId(1)), Some(PeerState::Expelled));
        // The refused region restarts empty: a new incarnation, readmitted.
        s[1] = bounded_side(1, &[0], 0xfeed, 1_000);
        now = run_for(now, 3_000, &mut s, &all);
        assert_eq!(s[0].link.peer_state(RegionId(1)), Some(PeerState::Active));
        assert_eq!(s[1].link.peer_state(RegionId(0)), Some(PeerState::Active));
        assert_eq!(s[0].link.stats().peers_readmitted, 1);
        assert!(s[1].link.restarted(), "told its earlier life's stamps");
        assert!(slots_equal(&mut s), "bootstrapped by anti-entropy");
        assert!(!s[0].alive("s") && !s[1].alive("s"), "the removal holds");
        // And it replicates as any peer.
        s[1].write(now, "new", set);
        s[1].ship(now);
        run_for(now, 300, &mut s, &all);
        assert!(s[0].alive("new"));
    }

    /// Any frame resets the silence; a frame from a peer that is not expelled never
    /// draws a refusal; a bound of 0 never expels.
    #[test]
    fn traffic_keeps_a_peer_and_a_zero_bound_never_expels() {
        for bound in [0, 1_000] {
            let mut s = [
                bounded_side(0, &[1], 1, bound),
                bounded_side(1, &[0], 1, bound),
            ];
            let now = run_for(10_000, 5_000, &mut s, &all);
            assert_eq!(s[0].link.peer_state(RegionId(1)), Some(PeerState::Active));
            let now = run_for(now, 3_000, &mut s, &none);
            let want = if bound == 0 {
                PeerState::Active
            } else {
                PeerState::Expelled
            };
            assert_eq!(
                s[0].link.peer_state(RegionId(1)),
                Some(want),
                "bound {bound}"
            );
            assert_eq!(s[0].link.stats().frames_refused, 0);
            let _ = now;
        }
    }

    /// A wall clock that jumps far ahead does not expel peers: silence grows by at most
    /// twice the longer interval per call.
    #[test]
    fn a_clock_jump_does_not_expel() {
        let mut s = [
            bounded_side(0, &[1], 1, 1_000),
            bounded_side(1, &[0], 1, 1_000),
        ];
        let now = run_for(10_000, 500, &mut s, &all);
        s[0].link.handle_timeout(now + 3_600_000);
        assert_eq!(s[0].link.peer_state(RegionId(1)), Some(PeerState::Active));
        assert!(s[0].link.peer_status(now, RegionId(1)).unwrap().silent_ms <= 400);
    }

    fn hello(region: u16, epoch: u64, born_ms: u64) -> Frame {
        Frame::Hello(Hello {
            ask: true,
            your_max: Hlc::ZERO,
            clock: Hlc::ZERO,
            region: RegionId(region),
            epoch,
            born_ms,
        })
    }

    /// A peer expelled before any incarnation of it was heard: only one born after the
    /// expulsion, by more than the clocks may disagree, is readmitted (a region cut off
    /// since before this link started may hold old state under an id we never saw).
    #[test]
    fn a_peer_never_heard_is_readmitted_only_by_an_incarnation_born_later() {
        let mut a = bounded_side(0, &[1], 1, 1_000);
        let mut t = 10_000;
        while t < 12_000 {
            t += 100;
            a.link.handle_timeout(t);
        }
        assert_eq!(a.link.peer_state(RegionId(1)), Some(PeerState::Expelled));
        a.link
            .handle_frame(t, RegionId(1), hello(1, 77, 9_000), &mut a.ks);
        assert_eq!(a.link.peer_state(RegionId(1)), Some(PeerState::Expelled));
        let refusal = std::iter::from_fn(|| a.link.poll_transmit(t)).find_map(|(_, f)| match f {
            Frame::Refused(r) => Some(r),
            _ => None,
        });
        assert_eq!(
            refusal,
            Some(Refused {
                epoch: 77,
                reason: RefuseReason::Expelled,
                sender: 1,
            })
        );
        // Expelled at 11 200; clocks may disagree by 100 ms.
        a.link
            .handle_frame(t, RegionId(1), hello(1, 78, 11_250), &mut a.ks);
        assert_eq!(a.link.peer_state(RegionId(1)), Some(PeerState::Expelled));
        a.link
            .handle_frame(t, RegionId(1), hello(1, 79, 11_350), &mut a.ks);
        assert_eq!(a.link.peer_state(RegionId(1)), Some(PeerState::Active));
    }

    /// Forgetting a peer: GC stops waiting for it at once, its entry stays in the gossip,
    /// and if it comes back (the shell adds it again on its `Hello`) its incarnation is
    /// refused; a new one is readmitted.
    #[test]
    fn a_forgotten_peer_no_longer_holds_gc_and_is_refused_if_it_returns() {
        let mut s = [bounded_side(0, &[1], 1, 0), bounded_side(1, &[0], 1, 0)];
        let mut now = 10_000;
        s[0].write(now, "s", |w| {
            w.sadd(&Bytes::from_static(b"m"));
        });
        s[0].ship(now);
        now = run_for(now, 300, &mut s, &all);
        let b_epoch = 1;
        s[0].write(now, "s", |w| {
            w.srem(b"m");
        });
        s[0].ship(now);
        assert_eq!(s[0].link.collect_garbage(&mut s[0].ks), 0);
        assert!(s[0].link.remove_peer(RegionId(1)));
        assert!(!s[0].link.remove_peer(RegionId(1)), "forgotten once");
        assert_eq!(s[0].link.peers().count(), 0);
        assert_eq!(
            s[0].link.forgotten().collect::<Vec<_>>(),
            vec![(
                RegionId(1),
                Expelled {
                    epoch: Some(b_epoch),
                    at_ms: now
                }
            )]
        );
        assert!(s[0]
            .link
            .seen_vector()
            .iter()
            .any(|(r, _)| *r == RegionId(1)));
        s[0].link.note_local_hlc(s[0].clock.last());
        assert!(s[0].link.collect_garbage(&mut s[0].ks) >= 1);
        // It comes back: added again, refused.
        assert!(s[0].link.add_peer(RegionId(1)));
        assert_eq!(s[0].link.peer_state(RegionId(1)), Some(PeerState::Expelled));
        now = run_for(now, 500, &mut s, &all);
        assert!(!s[0].alive("s"));
        assert_eq!(
            s[1].link.peer_state(RegionId(0)),
            Some(PeerState::RefusedByPeer)
        );
        // B's links to A are quiet but for its `Hello` asks, each answered by a refusal.
        let refusals = s[1].link.stats().refusals_received;
        now = run_for(now, 1_000, &mut s, &all);
        assert!(s[1].link.stats().refusals_received > refusals);
        s[1] = bounded_side(1, &[0], 0xabc, 0);
        run_for(now, 3_000, &mut s, &all);
        assert_eq!(s[0].link.peer_state(RegionId(1)), Some(PeerState::Active));
        assert!(slots_equal(&mut s));
    }

    /// A region added at run time (no restart of the existing one): its log to the joiner
    /// starts above sequence 1, so the joiner, a first incarnation, does not take it for
    /// complete; anti-entropy brings it everything written before it joined, GC waits for
    /// it from then on.
    #[test]
    fn a_peer_added_at_run_time_bootstraps_and_gc_waits_for_it() {
        let mut a = side(0, 1);
        a.link = RegionLink::new(RegionId(0), &[], 1, cfg());
        let mut now = 10_000;
        for i in 0..50 {
            a.write(now, &format!("k{i}"), set);
        }
        a.write(now, "gone", set);
        a.write(now + 1, "gone", |w| {
            w.delete();
        });
        a.ship(now + 1);
        // Alone, a region collects what it alone has seen.
        a.link.collect_garbage(&mut a.ks);
        now += 10;
        // A new region's process (the shell's incarnation ids are random: it asks every
        // peer for anti-entropy at start).
        let b = side(1, 0x5eed);
        let mut s = [a, b];
        assert!(s[0].link.add_peer(RegionId(1)));
        assert!(!s[0].link.add_peer(RegionId(1)));
        assert_eq!(s[0].link.stable_frontier()[&RegionId(0)], Hlc::ZERO);
        s[0].write(now, "after", set);
        s[0].write(now, "gone2", set);
        s[0].write(now + 1, "gone2", |w| {
            w.delete();
        });
        s[0].ship(now + 1);
        assert_eq!(
            s[0].link.collect_garbage(&mut s[0].ks),
            0,
            "GC waits for the joiner"
        );
        assert_eq!(s[0].ks.stats().tombstones, 1);
        now = run_for(now, 2_000, &mut s, &all);
        assert!(slots_equal(&mut s), "the joiner got everything");
        assert!(s[1].alive("k0") && s[1].alive("after") && !s[1].alive("gone"));
        assert!(!s[1].alive("gone2"));
        assert_eq!(s[0].link.stats().peers_added, 1);
        let mut dropped = 0;
        for _ in 0..20 {
            now += 100;
            pump(now, &mut s, &all);
            dropped +=
                s[0].link.collect_garbage(&mut s[0].ks) + s[1].link.collect_garbage(&mut s[1].ks);
        }
        assert!(
            dropped >= 1,
            "GC goes on once the joiner caught up: {:?} {:?} / {:?} {:?}",
            s[0].link.stable_frontier(),
            s[0].link.gc_frontier(),
            s[1].link.stable_frontier(),
            s[1].link.gc_frontier()
        );
    }

    // ---- bounded clocks ----

    /// A peer whose clock is a minute fast: its delta is held (neither merged, adopted nor
    /// acknowledged), the link keeps working, and once local time is within the bound the
    /// sender's resend applies it.
    #[test]
    fn a_delta_from_too_far_ahead_is_held_until_local_time_catches_up() {
        let mut s = pair();
        s[0].skew_ms = 60_000;
        let now = 100_000;
        let st = s[0].write(now, "k", set);
        s[0].ship(now);
        pump(now, &mut s, &all);
        assert!(!s[1].alive("k"), "not merged");
        assert!(s[1].link.max_seen_hlc() < st.hlc, "not adopted");
        assert!(s[1].clock.now(now).hlc < st.hlc);
        assert_eq!(s[1].link.stats().deltas_clock_held, 1);
        assert_eq!(s[0].link.backlog(RegionId(1)), 1, "not acknowledged");
        let from_a = s[1].link.peer_status(now, RegionId(0)).expect("peer");
        assert_eq!(from_a.clock_held, 1);
        // The link stays up: B's own writes still reach A.
        s[1].write(now, "b", set);
        s[1].ship(now);
        pump(now, &mut s, &all);
        assert!(s[0].alive("b"));
        // Resends while B's clock is still behind are held again.
        pump(now + 300, &mut s, &all);
        assert!(!s[1].alive("k"));
        assert!(s[1].link.stats().deltas_clock_held >= 2);
        // Local time within the bound of A's stamp: the next resend applies it.
        let caught_up = now + 60_000 - DEFAULT_MAX_CLOCK_OFFSET_MS;
        pump(caught_up, &mut s, &all);
        pump(caught_up + 300, &mut s, &all);
        assert!(s[1].alive("k"), "applied once local time caught up");
        assert_eq!(s[0].link.backlog(RegionId(1)), 0, "acknowledged");
        assert!(s[1].link.max_seen_hlc() >= st.hlc);
        assert!(s[1].clock.now(caught_up).hlc > st.hlc);
    }

    /// Anti-entropy entries too far ahead are not merged and not pushed back (no echo),
    /// and merge in a later round once local time has caught up.
    #[test]
    fn an_entry_from_too_far_ahead_is_held_until_a_later_round() {
        let mut s = pair();
        s[0].skew_ms = 60_000;
        let now = 100_000;
        let st = s[0].write(now, "k", set);
        // Lost before the link: only anti-entropy can carry it.
        s[0].ks.drain_deltas().for_each(drop);
        s[1].link.request_anti_entropy(RegionId(0));
        pump(now, &mut s, &all);
        pump(now + 200, &mut s, &all);
        assert!(!s[1].alive("k"));
        assert!(s[1].link.max_seen_hlc() < st.hlc);
        let held = s[1].link.anti_entropy_stats().entries_clock_held;
        assert!(held >= 1, "held: {held}");
        assert_eq!(
            s[1].link
                .peer_status(now, RegionId(0))
                .expect("peer")
                .clock_held,
            held
        );
        let caught_up = now + 60_000 - DEFAULT_MAX_CLOCK_OFFSET_MS;
        s[1].link.request_anti_entropy(RegionId(0));
        pump(caught_up, &mut s, &all);
        assert!(s[1].alive("k"), "merged by a later round");
        assert!(s[1].link.max_seen_hlc() >= st.hlc);
    }

    /// A clock stepped back by an hour (the caller's `now`): resends, anti-entropy retries
    /// and the handshake go on within their own timeouts, not an hour later.
    #[test]
    fn timers_survive_a_backward_clock_step() {
        let mut s = pair();
        let t0 = 3_600_000 + 10_000;
        // A round starts and its digests are lost; so is A's first batch.
        s[0].link.request_anti_entropy(RegionId(1));
        pump(t0, &mut s, &|_| false);
        s[0].write(t0, "k", set);
        s[0].ship(t0);
        let lost = pump(t0, &mut s, &|_| false);
        assert!(lost.iter().any(|(_, f)| matches!(f, Frame::Batch(_))));
        assert_eq!(s[0].link.anti_entropy_stats().rounds_started, 1);
        // A's clock steps back an hour; B's does not (B would hold A's hour-old stamps).
        s[0].skew_ms = -3_600_000;
        for t in [t0, t0 + 300, t0 + 600] {
            pump(t, &mut s, &all);
        }
        assert!(s[1].alive("k"), "resent within the timeout");
        assert_eq!(s[0].link.backlog(RegionId(1)), 0);
        assert!(s[0].link.handshake_done() && s[1].link.handshake_done());
        assert!(
            s[0].link.anti_entropy_stats().rounds_completed >= 1,
            "the lost round is retried"
        );
    }

    // ---- incarnations and the restart handshake ----

    /// Incarnation ids are not ordered: a restart whose id is smaller (a wall-clock epoch
    /// after a backward step) is taken, and so is every batch after a late frame of the old
    /// incarnation.
    #[test]
    fn a_restart_with_a_smaller_incarnation_id_is_taken() {
        let mut s = [side(0, 5_000), side(1, 1)];
        let now = 10_000;
        s[0].write(now, "x", set);
        s[0].ship(now);
        pump(now, &mut s, &all);
        assert!(s[1].alive("x"));
        // A batch of the old incarnation, still on the wire when it stops.
        s[0].write(now, "late", set);
        s[0].ship(now);
        let old = pump(now, &mut s, &|f| !matches!(f, Frame::Batch(_)));
        assert_eq!(old.len(), 1);
        // Restart: an empty keyspace, a smaller id, the clock stepped back.
        s[0] = side(0, 7);
        s[0].skew_ms = -5_000;
        s[0].write(now, "y", set);
        s[0].ship(now);
        pump(now, &mut s, &all);
        assert!(s[1].alive("y"), "the new incarnation's batch is merged");
        for (to, f) in old {
            deliver(now, &mut s, to, f);
        }
        assert!(
            s[1].alive("late"),
            "a late write of the old incarnation is still a write"
        );
        s[0].write(now + 1, "z", set);
        s[0].ship(now + 1);
        pump(now + 1, &mut s, &all);
        pump(now + 300, &mut s, &all);
        assert!(s[1].alive("z"), "the current incarnation is taken again");
        assert_eq!(s[0].link.backlog(RegionId(1)), 0);
    }

    /// A peer's write made before it merged a removal carries a live copy of what the
    /// removal killed (an INCR ships its whole string). While that write is on its way, the
    /// removal's tombstone is stable but must not be collected: the copy would bring the
    /// reset increments back.
    #[test]
    fn gc_waits_for_writes_a_peer_made_before_it_merged_the_removal() {
        let mut s = pair();
        let mut now = 100_000;
        s[0].write(now, "k", |w| {
            w.incr_by(5).expect("in range");
        });
        s[0].ship(now);
        pump(now, &mut s, &all);
        // B increments concurrently with A's DEL; B's delta is held on the wire.
        s[1].write(now + 1, "k", |w| {
            w.incr_by(1).expect("in range");
        });
        s[1].ship(now + 1);
        let del = s[0].write(now + 2, "k", |w| {
            w.delete();
        });
        s[0].ship(now + 2);
        let from_b = |f: &Frame| !matches!(f, Frame::Batch(b) if b.origin == RegionId(1) && !b.deltas.is_empty());
        let mut dropped = 0;
        for _ in 0..30 {
            now += 200;
            pump(now, &mut s, &from_b);
            dropped += s[0].link.collect_garbage(&mut s[0].ks);
        }
        assert!(
            s[0].link.stable_frontier()[&RegionId(0)] >= del.hlc,
            "the removal is stable: {:?} {del:?}",
            s[0].link.stable_frontier()
        );
        assert_eq!(dropped, 0, "B's increment is still on its way");
        assert_eq!(s[0].ks.stats().tombstones, 1);
        for _ in 0..10 {
            now += 1_000;
            pump(now, &mut s, &all);
            s[0].link.collect_garbage(&mut s[0].ks);
            s[1].link.collect_garbage(&mut s[1].ks);
        }
        for x in &s {
            let e = x.ks.raw_entry(b"k").expect("kept: B's increment survives");
            assert_eq!(e.as_str().and_then(|v| v.integer().ok()), Some(1));
        }
    }

    /// A region restarted empty with its clock a minute behind learns from the handshake
    /// the greatest stamp of its own that the peer holds, and stamps above it, although
    /// the offset bound holds back the anti-entropy entries that carry those stamps.
    #[test]
    fn a_region_restarted_empty_stamps_above_its_previous_incarnation() {
        let mut s = pair();
        let now = 100_000;
        let mut last = Stamp::ZERO;
        for i in 0..20 {
            last = s[0].write(now + i, &format!("k{i}"), set);
        }
        s[0].ship(now + 20);
        pump(now + 20, &mut s, &all);
        assert!(s[0].link.handshake_done() && s[1].link.handshake_done());
        assert!(
            !s[0].link.restarted() && !s[1].link.restarted(),
            "a first start"
        );
        assert!(s[1].alive("k19"));
        s[0] = side(0, 0xdead_beef);
        s[0].skew_ms = -60_000;
        assert!(!s[0].link.handshake_done());
        assert!(!s[0].link.restarted());
        assert_eq!(s[0].link.max_seen_hlc(), Hlc::ZERO);
        pump(now + 30, &mut s, &all);
        assert!(s[0].link.handshake_done());
        assert!(
            s[0].link.restarted(),
            "the peer held stamps of its previous life"
        );
        assert!(!s[1].link.restarted());
        assert!(s[0].link.max_seen_hlc() >= last.hlc, "raised by the answer");
        let next = s[0].write(now + 30, "new", set);
        assert!(
            next > last,
            "never below (or equal to) a stamp it issued before"
        );
        assert!(
            !s[0].alive("k0"),
            "the entries themselves wait for the clock"
        );
        assert!(s[0].link.anti_entropy_stats().entries_clock_held > 0);
        // The handshake is not repeated once answered.
        let hellos = pump(now + 1_000, &mut s, &|f| !matches!(f, Frame::Hello(_)));
        assert!(hellos.is_empty(), "{hellos:?}");
    }

    /// As above, but the peer's link is younger than the restarted region's previous life
    /// (the peer failed over, or its process restarted with its state): it knows no stamp
    /// of ours to answer with, so its clock (at or above every stamp it holds) raises ours.
    #[test]
    fn a_peer_with_a_new_link_still_raises_a_restarted_regions_clock() {
        let mut s = pair();
        let now = 100_000;
        let mut last = Stamp::ZERO;
        for i in 0..20 {
            last = s[0].write(now + i, &format!("k{i}"), set);
        }
        s[0].ship(now + 20);
        pump(now + 20, &mut s, &all);
        assert!(s[1].alive("k19"));
        // The peer's new link; its shell folds what it merged into its clock and drains.
        s[1].clock.observe(s[1].link.max_seen_hlc());
        s[1].link = RegionLink::new(RegionId(1), &[RegionId(0)], 7, cfg());
        s[1].ship(now + 25);
        // Restarted with its clock 5 s behind (within the offset bound: a peer clock
        // further ahead than that is capped at the bound).
        s[0] = side(0, 0xdead_beef);
        s[0].skew_ms = -5_000;
        // Only the handshake: the restart window ends with it, and writes begin.
        pump(now + 30, &mut s, &|f| matches!(f, Frame::Hello(_)));
        assert!(s[0].link.handshake_done());
        assert!(
            s[0].link.max_seen_hlc() >= last.hlc,
            "raised by the peer's clock"
        );
        let next = s[0].write(now + 30, "new", set);
        assert!(next > last, "never below a stamp it issued before");
    }

    // ---- local losses and GC ----

    /// `s` holds one member, added by A and shipped; A's removal of it is lost before the
    /// link (a full shard log), while a later write ships. B's frontier for A passes the
    /// removal, but A's own claim stays below it: no region may collect the tombstone
    /// until anti-entropy has repaired the slot with B. Without that, A collected it and
    /// the next round brought the member back from B.
    #[test]
    fn gc_waits_until_a_lost_local_delta_is_repaired() {
        let mut s = pair();
        let mut now = 10_000;
        s[0].write(now, "s", |w| {
            w.sadd(&Bytes::from_static(b"m"));
        });
        s[0].ship(now);
        pump(now, &mut s, &all);
        assert!(s[1].alive("s"));
        now += 10;
        let rem = s[0].write(now, "s", |w| {
            w.srem(b"m");
        });
        assert!(!s[0].alive("s"), "the set is empty: the key is a tombstone");
        s[0].lose();
        assert_eq!(s[0].link.local_gap_slots(), 1);
        now += 10;
        s[0].write(now, "other", set);
        s[0].ship(now);
        // Deltas, acks and frontiers flow; anti-entropy does not yet.
        for t in [now, now + 200, now + 400] {
            pump(t, &mut s, &not_ae);
        }
        let b_seen_a = s[1].link.seen_vector()[1].1;
        assert!(
            b_seen_a > rem.hlc,
            "B's contiguous prefix passed the lost removal"
        );
        assert!(s[0].link.stable_frontier()[&RegionId(0)] < rem.hlc);
        assert!(s[1].link.stable_frontier()[&RegionId(0)] < rem.hlc);
        assert_eq!(s[0].link.collect_garbage(&mut s[0].ks), 0, "tombstone kept");
        assert_eq!(s[0].ks.stats().tombstones, 1);
        // Anti-entropy repairs B, a later round finds the slot equal: GC may go on.
        for _ in 0..20 {
            now += 200;
            pump(now, &mut s, &all);
            if s[0].link.local_gap_slots() == 0 {
                break;
            }
        }
        assert_eq!(s[0].link.local_gap_slots(), 0, "repaired");
        assert!(!s[1].alive("s"), "B got the removal by anti-entropy");
        // GC runs as the shell runs it, every round: it collects once the frontier of an
        // earlier run is covered by what both sides have merged since.
        let mut dropped = 0;
        for _ in 0..40 {
            now += 200;
            pump(now, &mut s, &all);
            dropped +=
                s[0].link.collect_garbage(&mut s[0].ks) + s[1].link.collect_garbage(&mut s[1].ks);
            if dropped >= 1 {
                break;
            }
        }
        assert!(s[0].link.stable_frontier()[&RegionId(0)] >= rem.hlc);
        assert!(dropped >= 1, "collected once safe");
        s[0].link.request_anti_entropy(RegionId(1));
        now += 200;
        pump(now, &mut s, &all);
        assert!(!s[0].alive("s") && !s[1].alive("s"), "nothing comes back");
    }

    /// B's replica had not got A's removal: B's claim is capped by what its replica holds,
    /// so A keeps the tombstone (a failover of B to that replica would otherwise bring the
    /// removed member back); once the replica acknowledged a checkpoint past the removal, A
    /// collects it.
    #[test]
    fn gc_waits_for_what_the_peers_replicas_hold() {
        let mut s = pair();
        let mut now = 10_000;
        s[0].write(now, "s", |w| {
            w.sadd(&Bytes::from_static(b"m"));
        });
        s[0].ship(now);
        pump(now, &mut s, &all);
        // B's replica syncs now: it holds the add.
        let replica_cp = s[1].link.claim_checkpoint();
        s[1].link.set_replica_cap(Some(replica_cp));
        now += 10;
        let rem = s[0].write(now, "s", |w| {
            w.srem(b"m");
        });
        s[0].ship(now);
        let mut dropped = 0;
        for _ in 0..20 {
            now += 200;
            pump(now, &mut s, &all);
            dropped += s[0].link.collect_garbage(&mut s[0].ks);
        }
        assert!(!s[1].alive("s"), "B merged the removal");
        assert!(s[1].link.seen_vector()[1].1 >= rem.hlc);
        assert!(s[0].link.stable_frontier()[&RegionId(0)] < rem.hlc);
        assert_eq!(
            dropped, 0,
            "A keeps the tombstone while B's replica lacks the removal"
        );
        // The replica acknowledges what B holds now.
        let replica_cp = s[1].link.claim_checkpoint();
        s[1].link.set_replica_cap(Some(replica_cp));
        for _ in 0..40 {
            now += 200;
            pump(now, &mut s, &all);
            dropped += s[0].link.collect_garbage(&mut s[0].ks);
            if dropped >= 1 {
                break;
            }
        }
        assert!(dropped >= 1, "collected once B's replica holds the removal");
    }

    /// An anti-entropy round that compares the slot while an older delta of the key is
    /// still in flight does not count: B lacks both the add and the lost removal and looks
    /// equal, then the add lands. Only a round started after B acknowledged it repairs.
    #[test]
    fn a_round_before_older_deltas_are_acknowledged_does_not_repair_a_loss() {
        let mut s = pair();
        let mut now = 10_000;
        s[0].write(now, "s", |w| {
            w.sadd(&Bytes::from_static(b"m"));
        });
        s[0].ship(now);
        let add = pump(now, &mut s, &|f| !matches!(f, Frame::Batch(_)));
        assert_eq!(add.len(), 1, "the add is on the wire");
        now += 10;
        s[0].write(now, "s", |w| {
            w.srem(b"m");
        });
        s[0].lose();
        // Rounds while the add is in flight (resends held back too) find the slot equal.
        for _ in 0..5 {
            now += 200;
            let resent = pump(now, &mut s, &|f| !matches!(f, Frame::Batch(_)));
            assert!(resent.iter().all(|(_, f)| matches!(f, Frame::Batch(_))));
        }
        assert!(s[0].link.anti_entropy_stats().rounds_completed >= 1);
        assert_eq!(s[0].link.local_gap_slots(), 1, "those rounds do not count");
        for (to, f) in add {
            deliver(now, &mut s, to, f);
        }
        assert!(s[1].alive("s"), "the add landed after the comparison");
        for _ in 0..20 {
            now += 200;
            pump(now, &mut s, &all);
            if s[0].link.local_gap_slots() == 0 {
                break;
            }
        }
        assert_eq!(s[0].link.local_gap_slots(), 0);
        assert!(
            !s[1].alive("s"),
            "repaired before the loss stopped holding GC back"
        );
    }

    /// The gap report names the slots; a loss with no slot or without peers is no gap.
    #[test]
    fn a_loss_report_without_slots_holds_nothing() {
        let mut s = pair();
        s[0].link.note_local_loss(Hlc(5), std::iter::empty());
        assert_eq!(s[0].link.local_gap_slots(), 0);
        assert_eq!(s[0].link.stats().local_losses, 0);
        let key = "k";
        s[0].link
            .note_local_loss(Hlc(5), [key_slot(key.as_bytes()), u16::MAX]);
        assert_eq!(
            s[0].link.local_gap_slots(),
            1,
            "out-of-range slots are ignored"
        );
    }

    // ---- coalescing, repair cost ----

    fn set_to(v: &'static str) -> impl FnOnce(&mut meridian_crdt::EntryWriter) {
        move |w| w.set_str(Bytes::from_static(v.as_bytes()), false)
    }

    fn get(s: &Side, key: &str) -> Option<Vec<u8>> {
        let e = s.ks.peek(key.as_bytes(), 0)?;
        e.components().iter().find_map(|c| match &c.val {
            meridian_crdt::Val::Str(x) => x.reg.value.as_ref().map(|b| b.to_vec()),
            _ => None,
        })
    }

    /// Writes to one key before its delta was sent ship as one joined delta; once a delta
    /// was sent (even if a resend rewinds), later writes take a new sequence. The peer ends
    /// with the latest value and its frontier for us covers the last write.
    fn coalescing_pair() -> [Side; 2] {
        let mut s = pair();
        for x in s.iter_mut() {
            let r = x.link.region();
            let cfg = LinkConfig {
                coalesce: true,
                ..cfg()
            };
            x.link = RegionLink::new(r, &[RegionId(1 - r.0)], 1, cfg);
        }
        s
    }

    #[test]
    fn unsent_deltas_of_one_key_are_coalesced() {
        let mut s = coalescing_pair();
        let now = 1_000;
        s[0].write(now, "k", set_to("1"));
        s[0].write(now, "other", set_to("x"));
        s[0].write(now, "k", set_to("2"));
        let last = s[0].write(now, "k", set_to("3"));
        s[0].ship(now);
        assert_eq!(s[0].link.stats().deltas_enqueued, 4);
        assert_eq!(s[0].link.stats().deltas_coalesced, 2);
        assert_eq!(s[0].link.backlog(RegionId(1)), 2);
        // Sent, then lost on the wire: the next write to "k" does not touch that entry.
        let lost = pump(now, &mut s, &not_ae_nor_batch);
        assert!(lost.iter().any(|(_, f)| matches!(f, Frame::Batch(_))));
        let last2 = s[0].write(now + 1, "k", set_to("4"));
        s[0].ship(now + 1);
        assert_eq!(s[0].link.stats().deltas_coalesced, 2);
        assert_eq!(s[0].link.backlog(RegionId(1)), 3);
        assert!(last2.hlc > last.hlc);
        // The resend brings both; B holds the latest.
        pump(now + 300, &mut s, &all);
        assert_eq!(get(&s[1], "k").as_deref(), Some(&b"4"[..]));
        assert_eq!(get(&s[1], "other").as_deref(), Some(&b"x"[..]));
        assert_eq!(s[0].link.backlog(RegionId(1)), 0);
        let seen_a = s[1].link.seen_vector()[1];
        assert_eq!(seen_a.0, RegionId(0));
        assert!(
            seen_a.1 >= last2.hlc,
            "B's frontier for A covers A's last write"
        );
    }

    /// A cut link: after a resend timeout only one batch goes out per interval (not the
    /// window), so writes made meanwhile stay unsent and coalesce; once the cut heals the
    /// window reopens and the peer gets every key's latest value.
    #[test]
    fn a_link_without_acks_resends_one_batch_per_interval_and_keeps_coalescing() {
        let mut s = coalescing_pair();
        let batch = s[0].link.cfg.max_batch_deltas;
        let keys = 4 * batch;
        let mut now = 1_000;
        for i in 0..keys {
            s[0].write(now, &format!("k{i}"), set_to("1"));
        }
        s[0].ship(now);
        // The window goes out, into the cut.
        pump(now, &mut s, &not_ae_nor_batch);
        let sent = s[0].link.stats().deltas_sent;
        assert_eq!(sent, keys as u64);
        for round in 0..3 {
            now += 250;
            pump(now, &mut s, &not_ae_nor_batch);
            let resent = s[0].link.stats().deltas_resent;
            assert_eq!(resent, (round + 1) * batch as u64, "one batch per timeout");
        }
        // Keys written again during the cut: not yet sent, so joined into one entry each.
        for r in 0..3 {
            for i in 0..keys {
                s[0].write(now, &format!("k{i}"), set_to(["2", "3", "4"][r]));
            }
            s[0].ship(now);
        }
        assert_eq!(s[0].link.backlog(RegionId(1)), 2 * keys);
        assert_eq!(s[0].link.stats().deltas_coalesced, 2 * keys as u64);
        // Healed: everything arrives, each key at its latest value.
        now += 250;
        pump(now, &mut s, &all);
        assert_eq!(s[0].link.backlog(RegionId(1)), 0);
        for i in [0, keys / 2, keys - 1] {
            assert_eq!(get(&s[1], &format!("k{i}")).as_deref(), Some(&b"4"[..]));
        }
    }

    /// A key written again while the link was cut: on the resend, its entry sent into the
    /// cut is joined into the later, never-sent one and goes as a placeholder, so the key
    /// ships once; the peer's frontier for us stays below the placeholder's stamp until the
    /// entry carrying its content has arrived (otherwise it would claim a write it lacks).
    #[test]
    fn a_resent_superseded_delta_goes_as_a_placeholder_and_holds_the_frontier() {
        let mut s = pair();
        for x in s.iter_mut() {
            let r = x.link.region();
            let cfg = LinkConfig {
                coalesce: true,
                max_batch_deltas: 8,
                window_deltas: 16,
                ..cfg()
            };
            x.link = RegionLink::new(r, &[RegionId(1 - r.0)], 1, cfg);
        }
        let mut now = 1_000;
        let first = s[0].write(now, "k", set_to("1"));
        for i in 1..16 {
            s[0].write(now, &format!("a{i}"), set_to("1"));
        }
        s[0].ship(now);
        pump(now, &mut s, &not_ae_nor_batch);
        now += 250;
        pump(now, &mut s, &not_ae_nor_batch);
        assert_eq!(s[0].link.stats().deltas_forwarded, 0, "nothing later yet");
        // Written during the cut, never sent (one probe batch per interval).
        for i in 0..20 {
            s[0].write(now, &format!("b{i}"), set_to("1"));
        }
        let last = s[0].write(now, "k", set_to("2"));
        s[0].ship(now);
        // Healed, but only the first resent batch gets through for now.
        now += 250;
        let seen_batch = std::cell::RefCell::new(None);
        let first_only = |f: &Frame| match f {
            Frame::Batch(b) if b.first_seq == 1 => {
                *seen_batch.borrow_mut() = Some(b.moved.clone());
                true
            }
            Frame::Batch(_) => false,
            f => !f.is_anti_entropy(),
        };
        pump(now, &mut s, &first_only);
        assert_eq!(s[0].link.stats().deltas_forwarded, 1);
        let moved = seen_batch.borrow().clone().expect("the first batch went");
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].0, 0, "k's first entry is the placeholder");
        assert!(get(&s[1], "k").is_none(), "its content is in a later entry");
        assert_eq!(
            get(&s[1], "a7").as_deref(),
            Some(&b"1"[..]),
            "the rest of the batch merged"
        );
        let seen_a = s[1].link.seen_vector()[1].1;
        assert!(
            seen_a < first.hlc,
            "B's frontier for A must not pass a write it lacks"
        );
        now += 250;
        pump(now, &mut s, &all);
        assert_eq!(get(&s[1], "k").as_deref(), Some(&b"2"[..]));
        assert_eq!(s[0].link.backlog(RegionId(1)), 0);
        assert!(s[1].link.seen_vector()[1].1 >= last.hlc);
    }

    /// The last write joined into an earlier entry still advances the peer's frontier (the
    /// log's last entry carries its stamp), so an idle region does not hold GC back.
    #[test]
    fn a_coalesced_last_write_advances_the_peers_frontier() {
        let mut s = coalescing_pair();
        let now = 1_000;
        s[0].write(now, "k", set_to("1"));
        s[0].write(now, "j", set_to("1"));
        let last = s[0].write(now, "k", set_to("2"));
        s[0].ship(now);
        assert_eq!(s[0].link.stats().deltas_coalesced, 1);
        pump(now, &mut s, &all);
        assert_eq!(get(&s[1], "k").as_deref(), Some(&b"2"[..]));
        assert!(s[1].link.seen_vector()[1].1 >= last.hlc);
    }

    fn not_ae_nor_batch(f: &Frame) -> bool {
        !f.is_anti_entropy() && !matches!(f, Frame::Batch(_))
    }

    /// Like `pump`, counting the encoded anti-entropy bytes each side sent (the slot digest
    /// vector, a fixed cost per round, left out) and the bytes of the entries (key states)
    /// in them.
    fn pump_counting(now: u64, s: &mut [Side; 2]) -> ([usize; 2], [usize; 2]) {
        let mut ae = [0; 2];
        let mut entries = [0; 2];
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..2 {
                let x = &mut s[i];
                let phys = x.phys(now);
                x.link.handle_timeout(phys);
                x.link.poll_anti_entropy(phys, &mut x.ks);
                x.link.note_drained();
                let mut out = Vec::new();
                while let Some((_, f)) = x.link.poll_transmit(phys) {
                    if f.is_anti_entropy() && !matches!(f, Frame::AeDigests(_)) {
                        ae[i] += encode(&f).expect("encodes").len();
                    }
                    if let Frame::AeEntries(e) = &f {
                        entries[i] += e
                            .entries
                            .iter()
                            .map(|k| postcard::to_allocvec(k).expect("encodes").len())
                            .sum::<usize>();
                    }
                    out.push(wire(f));
                }
                for f in out {
                    moved = true;
                    deliver(now, s, 1 - i, f);
                }
            }
            if !moved && s.iter().all(|x| !x.link.has_anti_entropy_work()) {
                return (ae, entries);
            }
        }
        panic!("the links keep talking");
    }

    const VALUE: &str = "a value of some hundred bytes, as a cache holds them: \
                         0123456789012345678901234567890123456789012345678";

    /// Two regions agree on 2000 keys, then one rewrites 200 of them and those deltas are
    /// lost: a round, whichever side starts it, ships each diverged key once (the stale
    /// side ships no copy back), and the total is close to the diverged state's size.
    #[test]
    fn a_one_sided_divergence_ships_only_the_diverged_keys() {
        for initiator in [0usize, 1] {
            let mut s = pair();
            let mut now = 1_000;
            for i in 0..2_000 {
                s[0].write(now, &format!("key:{i}"), set_to(VALUE));
            }
            s[0].ship(now);
            pump(now, &mut s, &all);
            now += 10;
            for i in 0..200 {
                s[0].write(now, &format!("key:{i}"), set_to("a newer value, as long as that one is: 0123456789012345678901234567890123456789012345678901234567890"));
            }
            s[0].ks.drain_deltas().for_each(drop);
            let diverged: usize = (0..200)
                .map(|i| {
                    let key = format!("key:{i}");
                    let state = s[0].ks.raw_entry(key.as_bytes()).expect("present");
                    postcard::to_allocvec(&crate::codec::KeyState {
                        key: Bytes::from(key),
                        state: state.into_owned(),
                    })
                    .expect("encodes")
                    .len()
                })
                .sum();
            now += 10;
            let peer = s[1 - initiator].link.region();
            s[initiator].link.request_anti_entropy(peer);
            let (ae, entries) = pump_counting(now, &mut s);
            for k in 0..meridian_crdt::SLOT_COUNT as u16 {
                assert_eq!(s[0].ks.slot_digest(k), s[1].ks.slot_digest(k), "converged");
            }
            assert_eq!(
                entries[1], 0,
                "initiator {initiator}: the stale side shipped {entries:?}"
            );
            assert_eq!(
                entries[0], diverged,
                "initiator {initiator}: each diverged key once"
            );
            // Beyond the entries: the responder's fingerprints (4 bytes a key), the want (4)
            // and offer (8) and their slot headers; with one diverged key per slot, as here,
            // that is the worst case (about 25 bytes a key).
            let total = ae[0] + ae[1];
            assert!(
                total * 100 <= diverged * 125,
                "initiator {initiator}: {total} bytes beyond the digests for {diverged} diverged \
                 ({ae:?})"
            );
        }
    }

    /// The up-to-date side's deltas of the diverged keys are still in flight (a cut link's
    /// log) when the stale side starts a round: the up-to-date side leaves those keys to
    /// its deltas and says so, so the stale side does not push its old copies back (it
    /// used to ship every one of them: 30 MB of stale values in `bench/regions.py
    /// --repair`). Once the deltas flow, both sides converge.
    #[test]
    fn keys_left_to_deltas_in_flight_are_not_pushed_back_by_the_stale_side() {
        let mut s = pair();
        let mut now = 1_000;
        for i in 0..500 {
            s[0].write(now, &format!("key:{i}"), set_to(VALUE));
        }
        s[0].ship(now);
        pump(now, &mut s, &all);
        now += 10;
        for i in 0..200 {
            s[0].write(now, &format!("key:{i}"), set_to("newer"));
        }
        s[0].ship(now);
        let no_batches = |f: &Frame| !matches!(f, Frame::Batch(_));
        pump(now, &mut s, &no_batches);
        assert_eq!(get(&s[1], "key:7").as_deref(), Some(VALUE.as_bytes()));
        let shipped_before = s[1].link.anti_entropy_stats().entries_shipped;
        s[1].link.request_anti_entropy(RegionId(0));
        now += 10;
        pump(now, &mut s, &no_batches);
        assert_eq!(
            s[1].link.anti_entropy_stats().entries_shipped,
            shipped_before,
            "the stale side shipped its copies of keys whose deltas are in flight"
        );
        now += 1_000;
        pump(now, &mut s, &all);
        for i in [0, 7, 199] {
            assert_eq!(
                get(&s[1], &format!("key:{i}")).as_deref(),
                Some(&b"newer"[..])
            );
        }
    }

    /// Concurrent versions still travel both ways: increments of one counter made on each
    /// side while they were apart meet in the join on both.
    #[test]
    fn a_concurrent_divergence_is_repaired_both_ways() {
        for initiator in [0usize, 1] {
            let mut s = pair();
            let now = 1_000;
            s[0].write(now, "c", |w| w.incr_by(1).map(|_| ()).unwrap_or(()));
            s[0].ks.drain_deltas().for_each(drop);
            s[1].write(now + 5, "c", |w| w.incr_by(10).map(|_| ()).unwrap_or(()));
            s[1].ks.drain_deltas().for_each(drop);
            let peer = s[1 - initiator].link.region();
            s[initiator].link.request_anti_entropy(peer);
            pump(now + 10, &mut s, &all);
            for side in &s {
                let e = side.ks.peek(b"c", 0).expect("present");
                let v = e.components().iter().find_map(|c| match &c.val {
                    meridian_crdt::Val::Str(x) => x.integer().ok(),
                    _ => None,
                });
                assert_eq!(v, Some(11), "initiator {initiator}");
            }
        }
    }
}
