//! Anti-entropy: find and repair divergence between two regions, slot by slot.
//!
//! A round, started by the initiator towards one peer:
//! 1. `AeDigests`: the initiator's salted 16-bit digest of every non-empty slot
//!    (a 2 KiB bitmap plus 2 bytes per non-empty slot).
//! 2. `AeKeys`: the responder lists only the slots whose digests differ, each with salted
//!    32-bit fingerprints of its live keys (key + key digest).
//! 3. The initiator asks (`want`) for the responder's fingerprints it lacks; the responder
//!    ships those keys' full state (tombstones included), the last frame marked `last`.
//! 4. The initiator merges them and pushes back its state for every key where it knew more;
//!    once all answers are in, it ships its own differing keys the responder did not send
//!    (keys the responder lacks). Any receiver of `AeEntries` merges and pushes back where it
//!    knew more, so both sides end with the join; join is idempotent, so echoes stop.
//!
//! Work is incremental: the initiator's digest vector (step 1) and the responder's comparison
//! (step 2) cover at most `step_slots` slots per [`AntiEntropy::poll_work`] call, so a
//! sharded store is touched one slot at a time and the caller can ship deltas, acks and
//! merge batches between steps. Periodic rounds wait while the link to the peer is busy
//! shipping deltas (every key in flight would show up as a difference and be shipped twice),
//! for at most one more interval.
//!
//! A key with a delta still in flight to the peer (the link's outgoing log) is neither
//! shipped nor pushed back: the delta brings it, and a round that overlaps a burst of
//! writes would otherwise ship every key of the burst twice. The round is then not clean,
//! and the re-check after `retry_ms` settles whatever the deltas did not (a delta carries
//! only what its write changed: a peer that never merged the key's earlier state, e.g. one
//! that refused it while its view of the slot map was stale, still lacks that after it).
//!
//! A round left unanswered (a frame of it lost, the peer gone) is started again after
//! `retry_ms`, whatever started it: a lost re-check would otherwise wait for the next
//! periodic round, and with periodic rounds rare or off a repair stalled for good.
//!
//! A key both sides hold in different versions shows up on both sides: the initiator's copy
//! is unmatched, and so is the responder's fingerprint. The initiator's `want` therefore
//! carries an `offer`: each of its unmatched keys in the wanted slots with a salted key id
//! and the millisecond of the greatest HLC in its state. The responder ships a wanted key
//! only if its copy is not older than the offered one (same millisecond or later, or not
//! offered); an older
//! copy is left to the initiator, which ships its own (or its delta in flight brings it).
//! Where the two were concurrent, the responder's merge of that copy pushes back what it
//! knew more, as for any entry. So a one-sided divergence costs one copy of each diverged
//! key, whichever side starts the round.
//!
//! Asking before shipping means a stale side never ships its stale copies. Traffic beyond the
//! fixed digest vector grows with the number of differing keys. The salt changes every
//! round, so a digest or fingerprint collision only delays a repair by one round. An empty
//! region bootstraps by running a round: every slot of the peer differs. A slot the keyspace
//! marked lossy (eviction) is marked repaired once a round with every peer found it equal,
//! counting only rounds that digested it after its latest loss (its loss mark).
//!
//! A received entry carrying an HLC further ahead of the local clock than the link's bound
//! (`limit`) is neither merged nor answered (a peer with a bad clock must not drag this
//! region's clock ahead): its slot keeps differing, so later rounds offer it again, and it
//! merges once local time has caught up with it.

use crate::codec::{
    AeDigests, AeEntries, AeKeys, Frame, KeyState, SlotKeys, SlotVersions, VERSION_BYTES,
};
use crate::store::LinkStore;
use bytes::Bytes;
use meridian_crdt::digest::{mix, mix_bytes};
use meridian_crdt::{Hlc, RegionId, SLOT_COUNT};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AntiEntropyStats {
    pub rounds_started: u64,
    pub rounds_completed: u64,
    /// Rounds that found no differing slot.
    pub rounds_clean: u64,
    pub slots_differing: u64,
    pub entries_shipped: u64,
    pub entries_received: u64,
    /// Received entries not merged: an HLC in them was too far ahead of the local clock.
    pub entries_clock_held: u64,
    /// Wanted keys not shipped: the asker offered a newer version (it ships its own).
    pub entries_left_to_peer: u64,
}

struct PendingRound {
    round: u64,
    start_seq: u64,
    listed: BTreeSet<u16>,
    /// Slots that were lossy when the round digested them, with their loss mark then.
    lossy: Vec<(u16, u64)>,
}

/// Initiator side: our differing keys, shipped once every `want` was answered.
struct Deferred {
    round: u64,
    keys: Vec<Bytes>,
    received: BTreeSet<Bytes>,
    /// Salted ids of keys the peer left to its deltas in flight (not pushed back).
    left_to_deltas: BTreeSet<u32>,
    keys_done: bool,
    replies_pending: usize,
}

/// Initiator: a round whose digest vector is being computed.
struct Building {
    round: u64,
    next_slot: usize,
    present: Vec<u8>,
    digests: Vec<u8>,
    any: bool,
    /// Lossy slots with their loss mark when digested.
    lossy: Vec<(u16, u64)>,
    /// Indexes of the peers the round is for.
    to: Vec<usize>,
}

/// Responder: a peer's digest vector being compared with ours.
struct Responding {
    from: RegionId,
    msg: AeDigests,
    /// Our own write frontier when the comparison began (valid for every slot compared
    /// later: those writes stay in the store).
    own_seen: Hlc,
    next_slot: usize,
    /// Position of the next `u16` in `msg.digests`.
    next_digest: usize,
    slots: Vec<SlotKeys>,
    bytes: usize,
}

struct PeerAe {
    region: RegionId,
    /// The link to this peer is shipping deltas: periodic rounds wait (see `set_busy`).
    busy: bool,
    /// Next periodic round; `None` until the first timeout arms it.
    next_due_ms: Option<u64>,
    /// A round was requested (backpressure, restart, bootstrap).
    urgent: bool,
    /// `starts` when the request came: a round started later answers it.
    urgent_mark: u64,
    /// When the pending request was first seen by `poll_work` (a requested round waits
    /// for a busy link at most `retry_ms` from then).
    urgent_since_ms: Option<u64>,
    /// No new round before this (an unanswered round is retried after `retry_ms`).
    retry_at_ms: u64,
    pending: Option<PendingRound>,
    deferred: Option<Deferred>,
}

pub struct AntiEntropy {
    region: RegionId,
    peers: Vec<PeerAe>,
    interval_ms: u64,
    /// An unanswered round is abandoned and restarted after this long.
    retry_ms: u64,
    chunk_bytes: usize,
    /// Slots digested or compared per `poll_work` call, per side.
    step_slots: usize,
    building: Option<Building>,
    responding: VecDeque<Responding>,
    counter: u64,
    /// Rounds started so far (orders round starts against the link's gap marks).
    starts: u64,
    /// Clean rounds completed: `(peer, start_seq, peer's own write frontier)`.
    clean: Vec<(RegionId, u64, Hlc)>,
    /// Every round completed: `(peer, start_seq, slots found differing)`.
    completed: Vec<(RegionId, u64, BTreeSet<u16>)>,
    /// Lossy slots → (loss mark, peer indexes found equal since that loss; a bit set of
    /// any width, so no peer count can overflow it).
    lossy_synced: BTreeMap<u16, (u64, Vec<u64>)>,
    outbox: VecDeque<(RegionId, Frame)>,
    max_seen_hlc: Hlc,
    stats: AntiEntropyStats,
}

fn salt_of(round: u64) -> u64 {
    mix(0x616e_7469, round)
}

fn digest16(d: u64, salt: u64) -> u16 {
    let x = (mix(d, salt) >> 48) as u16;
    x.max(1)
}

fn fingerprint(key: &[u8], key_digest: u64, salt: u64) -> u32 {
    (mix(mix_bytes(salt, key), key_digest) >> 32) as u32
}

/// Salted 32-bit id of a key alone (its version is compared apart, see `AeEntries::offer`).
fn key_id(key: &[u8], salt: u64) -> u32 {
    (mix_bytes(mix(salt, 0x6b65_7969), key) >> 32) as u32
}

/// A key's version in an offer: the low 32 bits of the physical milliseconds of the
/// greatest HLC in its state.
fn version_of(h: Hlc) -> u32 {
    h.physical_ms() as u32
}

/// `a` is a later version than `b` (wrap-around: versions compared are close in time).
fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// `(key id, version)` pairs of a [`SlotVersions`] list.
fn versions_of(b: &Bytes) -> impl Iterator<Item = (u32, u32)> + '_ {
    b.chunks_exact(VERSION_BYTES).map(|c| {
        let word = |i: usize| u32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
        (word(0), word(4))
    })
}

fn fps_of(b: &Bytes) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Accumulates entries into `AeEntries` frames of bounded size.
struct EntryChunks<'a> {
    to: RegionId,
    round: u64,
    chunk_bytes: usize,
    cur: Vec<KeyState>,
    cur_bytes: usize,
    out: &'a mut VecDeque<(RegionId, Frame)>,
    shipped: u64,
    /// Ids of wanted keys left to deltas in flight (`AeEntries::left_to_deltas`), sent
    /// with the answer's last frame.
    left_to_deltas: Vec<u8>,
}

impl EntryChunks<'_> {
    fn push(&mut self, key: Bytes, state: meridian_crdt::Entry) {
        self.cur_bytes += key.len() + state.heap_bytes() + 32;
        self.cur.push(KeyState { key, state });
        self.shipped += 1;
        if self.cur_bytes >= self.chunk_bytes {
            self.flush(Vec::new(), false);
        }
    }

    fn flush(&mut self, want: Vec<SlotKeys>, last: bool) {
        if self.cur.is_empty() && want.is_empty() && !last {
            return;
        }
        self.out.push_back((
            self.to,
            Frame::AeEntries(AeEntries {
                round: self.round,
                entries: std::mem::take(&mut self.cur),
                want,
                last,
                offer: Vec::new(),
                left_to_deltas: if last {
                    Bytes::from(std::mem::take(&mut self.left_to_deltas))
                } else {
                    Bytes::new()
                },
            }),
        ));
        self.cur_bytes = 0;
    }
}

impl AntiEntropy {
    pub fn new(
        region: RegionId,
        peers: &[RegionId],
        interval_ms: u64,
        retry_ms: u64,
        chunk_bytes: usize,
        step_slots: usize,
    ) -> Self {
        AntiEntropy {
            region,
            peers: peers
                .iter()
                .map(|&r| PeerAe {
                    region: r,
                    busy: false,
                    urgent_mark: 0,
                    urgent_since_ms: None,
                    next_due_ms: None,
                    urgent: false,
                    retry_at_ms: 0,
                    pending: None,
                    deferred: None,
                })
                .collect(),
            interval_ms,
            retry_ms,
            chunk_bytes,
            step_slots: step_slots.max(1),
            building: None,
            responding: VecDeque::new(),
            counter: 0,
            starts: 0,
            clean: Vec::new(),
            completed: Vec::new(),
            lossy_synced: BTreeMap::new(),
            outbox: VecDeque::new(),
            max_seen_hlc: Hlc::ZERO,
            stats: AntiEntropyStats::default(),
        }
    }

    pub fn stats(&self) -> &AntiEntropyStats {
        &self.stats
    }

    pub fn max_seen_hlc(&self) -> Hlc {
        self.max_seen_hlc
    }

    fn peer_index(&self, r: RegionId) -> Option<usize> {
        self.peers.iter().position(|p| p.region == r)
    }

    /// Take `peer` on (a region that joined at run time, or one readmitted): no round with
    /// it is due until requested or one interval after the next timeout. A no-op if known.
    pub fn add_peer(&mut self, peer: RegionId) {
        if self.peer_index(peer).is_some() || peer == self.region {
            return;
        }
        self.peers.push(PeerAe {
            region: peer,
            busy: false,
            urgent_mark: 0,
            urgent_since_ms: None,
            next_due_ms: None,
            urgent: false,
            retry_at_ms: 0,
            pending: None,
            deferred: None,
        });
        // Lossy slots need this peer too now: earlier findings stand (it joined later).
        for (_, (_, bits)) in self.lossy_synced.iter_mut() {
            bits.resize(self.peers.len().div_ceil(64), 0);
        }
    }

    /// Drop `peer` (forgotten, expelled from GC, or refusing us): its rounds, its answers
    /// in progress and queued frames to it go. A lossy slot found equal with every
    /// remaining peer is not marked repaired here (the next round that finds it equal does).
    pub fn remove_peer(&mut self, peer: RegionId) {
        let Some(i) = self.peer_index(peer) else {
            return;
        };
        self.peers.remove(i);
        self.responding.retain(|r| r.from != peer);
        self.outbox.retain(|(to, _)| *to != peer);
        if let Some(b) = self.building.as_mut() {
            b.to.retain(|&j| j != i);
            for j in b.to.iter_mut() {
                if *j > i {
                    *j -= 1;
                }
            }
        }
        // Peer indexes above `i` move down one: shift their bits.
        let words = self.peers.len().div_ceil(64).max(1);
        for (_, (_, bits)) in self.lossy_synced.iter_mut() {
            let mut v = vec![0u64; words];
            for j in 0..=self.peers.len() {
                if j == i || bits.get(j / 64).is_none_or(|w| w & (1 << (j % 64)) == 0) {
                    continue;
                }
                let k = if j > i { j - 1 } else { j };
                v[k / 64] |= 1 << (k % 64);
            }
            *bits = v;
        }
    }

    /// Run a round with `peer` as soon as possible (backpressure, restart, bootstrap).
    pub fn request(&mut self, peer: RegionId) {
        if let Some(i) = self.peer_index(peer) {
            self.peers[i].urgent = true;
            self.peers[i].urgent_mark = self.starts;
        }
    }

    /// Number of rounds started so far; a round with a greater `start_seq` began later.
    pub fn starts(&self) -> u64 {
        self.starts
    }

    /// Clean rounds completed since the last call: `(peer, start_seq, peer's frontier)`.
    pub fn take_clean_rounds(&mut self) -> Vec<(RegionId, u64, Hlc)> {
        std::mem::take(&mut self.clean)
    }

    /// Every round completed since the last call: `(peer, start_seq, slots that differed)`.
    /// A slot not listed was found equal with the peer (digests taken after the round's
    /// start).
    pub fn take_completed_rounds(&mut self) -> Vec<(RegionId, u64, BTreeSet<u16>)> {
        std::mem::take(&mut self.completed)
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        for p in self.peers.iter_mut() {
            let due = p.next_due_ms.get_or_insert(now_ms + self.interval_ms);
            // After the clock stepped back, no timer waits longer than its own span.
            *due = (*due).min(now_ms.saturating_add(self.interval_ms));
            p.retry_at_ms = p.retry_at_ms.min(now_ms.saturating_add(self.retry_ms));
            if let Some(t) = p.urgent_since_ms.as_mut() {
                *t = (*t).min(now_ms);
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.peers.iter().filter_map(|p| p.next_due_ms).min()
    }

    /// The link to `peer` is (or no longer is) busy shipping deltas either way. A periodic
    /// round with a busy peer waits, for at most one more interval; a requested round
    /// (overflow, restart, bootstrap) for at most `retry_ms`.
    pub fn set_busy(&mut self, peer: RegionId, busy: bool) {
        if let Some(i) = self.peer_index(peer) {
            self.peers[i].busy = busy;
        }
    }

    fn is_due(&self, p: &PeerAe, now_ms: u64) -> bool {
        let periodic = p.next_due_ms.is_some_and(|t| {
            now_ms >= t && (!p.busy || now_ms >= t.saturating_add(self.interval_ms))
        });
        let requested = p.urgent
            && (!p.busy
                || p.urgent_since_ms
                    .is_some_and(|t| now_ms >= t.saturating_add(self.retry_ms)));
        // A round left unanswered (a frame of it lost) is started again after `retry_ms`,
        // waiting like a requested one while the link is busy: whatever made it due (the
        // re-check of a round that found differences, the periodic round) still holds.
        // Without this only a requested round was restarted; a lost re-check waited for
        // the next periodic round (30 s by default, never with periodic rounds off), and
        // what it was to repair stayed diverged (cluster simulator seeds 276, 690, 946).
        let unanswered = p.pending.is_some()
            && (!p.busy || now_ms >= p.retry_at_ms.saturating_add(self.retry_ms));
        (requested || periodic || unanswered) && now_ms >= p.retry_at_ms
    }

    /// Work is in progress (a digest vector being built or compared): call `poll_work`
    /// again soon.
    pub fn has_work(&self) -> bool {
        self.building.is_some() || !self.responding.is_empty()
    }

    /// Start due rounds and do one bounded step of each side's work in progress.
    pub fn poll_work<S: LinkStore + ?Sized>(&mut self, now_ms: u64, store: &mut S) {
        for p in self.peers.iter_mut() {
            if p.urgent && p.urgent_since_ms.is_none() {
                p.urgent_since_ms = Some(now_ms);
            }
        }
        if self.building.is_none() {
            self.start_due(now_ms);
        }
        self.step_building(now_ms, store);
        self.step_responding(store);
    }

    /// Begin a round with every due peer; its digests are computed by later steps.
    fn start_due(&mut self, now_ms: u64) {
        let due: Vec<usize> = (0..self.peers.len())
            .filter(|&i| self.is_due(&self.peers[i], now_ms))
            .collect();
        if due.is_empty() {
            return;
        }
        self.counter += 1;
        let round = (u64::from(self.region.0) << 48) | (self.counter & ((1 << 48) - 1));
        for &i in &due {
            let p = &mut self.peers[i];
            p.next_due_ms = Some(now_ms + self.interval_ms);
            p.retry_at_ms = now_ms + self.retry_ms;
            self.starts += 1;
            p.pending = Some(PendingRound {
                round,
                start_seq: self.starts,
                listed: BTreeSet::new(),
                lossy: Vec::new(),
            });
            self.stats.rounds_started += 1;
        }
        self.building = Some(Building {
            round,
            next_slot: 0,
            present: vec![0u8; SLOT_COUNT / 8],
            digests: Vec::new(),
            any: false,
            lossy: Vec::new(),
            to: due,
        });
    }

    /// Digest the next `step_slots` slots of the round being built; ship it when complete.
    fn step_building<S: LinkStore + ?Sized>(&mut self, now_ms: u64, store: &mut S) {
        let Some(b) = self.building.as_mut() else {
            return;
        };
        let salt = salt_of(b.round);
        let end = (b.next_slot + self.step_slots).min(SLOT_COUNT);
        for slot in b.next_slot..end {
            // The mark first: a loss between the two reads only makes the repair wait.
            if let Some(mark) = store.slot_loss_mark(slot as u16) {
                b.lossy.push((slot as u16, mark));
            }
            let d = store.slot_digest(slot as u16);
            if d != 0 {
                b.any = true;
                b.present[slot / 8] |= 1 << (slot % 8);
                b.digests
                    .extend_from_slice(&digest16(d, salt).to_le_bytes());
            }
        }
        b.next_slot = end;
        if end < SLOT_COUNT {
            return;
        }
        let Some(b) = self.building.take() else {
            return;
        };
        let msg = AeDigests {
            round: b.round,
            present: if b.any {
                Bytes::from(b.present)
            } else {
                Bytes::new()
            },
            digests: Bytes::from(b.digests),
        };
        for i in b.to {
            let p = &mut self.peers[i];
            if let Some(pending) = p.pending.as_mut().filter(|r| r.round == b.round) {
                pending.lossy.clone_from(&b.lossy);
                // The round's timers run from now: building it took several steps.
                p.next_due_ms = Some(now_ms + self.interval_ms);
                p.retry_at_ms = now_ms + self.retry_ms;
                self.outbox
                    .push_back((p.region, Frame::AeDigests(msg.clone())));
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(RegionId, Frame)> {
        self.outbox.pop_front()
    }

    pub fn has_pending_output(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Responder, step 2: list the differing slots with our key fingerprints (by later
    /// steps). A newer round from the same peer replaces one still being compared.
    pub fn handle_digests(&mut self, from: RegionId, msg: AeDigests, own_seen: Hlc) {
        if self.peer_index(from).is_none() {
            return;
        }
        self.responding.retain(|r| r.from != from);
        self.responding.push_back(Responding {
            from,
            msg,
            own_seen,
            next_slot: 0,
            next_digest: 0,
            slots: Vec::new(),
            bytes: 0,
        });
    }

    /// Compare the next `step_slots` slots of the oldest digest vector received (fewer if
    /// a chunk of fingerprints filled up); ship the chunk, and the last one when done.
    fn step_responding<S: LinkStore + ?Sized>(&mut self, store: &mut S) {
        let Some(r) = self.responding.front_mut() else {
            return;
        };
        let salt = salt_of(r.msg.round);
        let end = (r.next_slot + self.step_slots).min(SLOT_COUNT);
        while r.next_slot < end {
            let slot = r.next_slot;
            r.next_slot += 1;
            let has_theirs =
                !r.msg.present.is_empty() && r.msg.present[slot / 8] & (1 << (slot % 8)) != 0;
            let their = if has_theirs {
                let i = r.next_digest;
                r.next_digest += 1;
                match r.msg.digests.get(2 * i..2 * i + 2) {
                    Some(c) => u16::from_le_bytes([c[0], c[1]]),
                    None => 0,
                }
            } else {
                0
            };
            let d = store.slot_digest(slot as u16);
            let mine = if d == 0 { 0 } else { digest16(d, salt) };
            if mine == their {
                continue;
            }
            let mut fps = Vec::new();
            store.for_each_key_digest(slot as u16, &mut |k, kd| {
                fps.extend_from_slice(&fingerprint(k, kd, salt).to_le_bytes());
            });
            r.bytes += fps.len() + 8;
            r.slots.push(SlotKeys {
                slot: slot as u16,
                fps: Bytes::from(fps),
            });
            if r.bytes >= self.chunk_bytes {
                r.bytes = 0;
                let frame = Frame::AeKeys(AeKeys {
                    round: r.msg.round,
                    last: false,
                    origin_seen: r.own_seen,
                    slots: std::mem::take(&mut r.slots),
                });
                self.outbox.push_back((r.from, frame));
                // Bounded work per step: one chunk of fingerprints at most.
                return;
            }
        }
        if r.next_slot < SLOT_COUNT {
            return;
        }
        let Some(r) = self.responding.pop_front() else {
            return;
        };
        self.outbox.push_back((
            r.from,
            Frame::AeKeys(AeKeys {
                round: r.msg.round,
                last: true,
                origin_seen: r.own_seen,
                slots: r.slots,
            }),
        ));
    }

    /// Initiator, step 3: ship our differing keys and ask for theirs.
    pub fn handle_keys<S: LinkStore + ?Sized>(
        &mut self,
        now_ms: u64,
        from: RegionId,
        msg: &AeKeys,
        in_flight: &dyn Fn(&[u8]) -> bool,
        store: &mut S,
    ) {
        let Some(pi) = self.peer_index(from) else {
            return;
        };
        match &self.peers[pi].pending {
            Some(p) if p.round == msg.round => {}
            _ => return, // stale or unknown round
        }
        // The round is being answered (the responder compares a slot range per step): it
        // is abandoned only after `retry_ms` without an answer.
        self.peers[pi].retry_at_ms = now_ms + self.retry_ms;
        let salt = salt_of(msg.round);
        let mut ship: Vec<Bytes> = Vec::new();
        let mut want_frames = Vec::new();
        let mut want = Vec::new();
        let mut offer = Vec::new();
        let mut want_bytes = 0;
        for sk in &msg.slots {
            let their: BTreeSet<u32> = fps_of(&sk.fps).collect();
            let mut mine: BTreeSet<u32> = BTreeSet::new();
            // Our keys the peer's list does not match, and whether each is in flight.
            let mut unmatched: Vec<(Bytes, bool)> = Vec::new();
            store.for_each_key_digest(sk.slot, &mut |k, kd| {
                let fp = fingerprint(k, kd, salt);
                mine.insert(fp);
                if !their.contains(&fp) {
                    // Checked now, not when the keys are shipped: the peer compared this
                    // slot one one-way delay ago, so a delta it lacked then is still
                    // unacknowledged here now; by shipping time it may be acknowledged and
                    // look settled.
                    unmatched.push((Bytes::copy_from_slice(k), in_flight(k)));
                }
            });
            let wanted: Vec<u8> = fps_of(&sk.fps)
                .filter(|fp| !mine.contains(fp))
                .flat_map(u32::to_le_bytes)
                .collect();
            if !wanted.is_empty() && !unmatched.is_empty() {
                // Our versions of the keys we hold differently (a key in flight too: its
                // delta brings our version, so an older copy of the peer's is not needed).
                let mut versions = Vec::with_capacity(unmatched.len() * VERSION_BYTES);
                for (k, _) in &unmatched {
                    if let Some(e) = store.entry(k) {
                        versions.extend_from_slice(&key_id(k, salt).to_le_bytes());
                        versions.extend_from_slice(&version_of(e.max_hlc()).to_le_bytes());
                    }
                }
                want_bytes += versions.len() + 8;
                offer.push(SlotVersions {
                    slot: sk.slot,
                    keys: Bytes::from(versions),
                });
            }
            ship.extend(unmatched.into_iter().filter(|(_, f)| !f).map(|(k, _)| k));
            if !wanted.is_empty() {
                want_bytes += wanted.len() + 8;
                want.push(SlotKeys {
                    slot: sk.slot,
                    fps: Bytes::from(wanted),
                });
                if want_bytes >= self.chunk_bytes {
                    want_frames.push((std::mem::take(&mut want), std::mem::take(&mut offer)));
                    want_bytes = 0;
                }
            }
        }
        if !want.is_empty() {
            want_frames.push((want, offer));
        }
        let pi_region = self.peers[pi].region;
        let fresh = || Deferred {
            round: msg.round,
            keys: Vec::new(),
            received: BTreeSet::new(),
            left_to_deltas: BTreeSet::new(),
            keys_done: false,
            replies_pending: 0,
        };
        let deferred = self.peers[pi].deferred.get_or_insert_with(fresh);
        if deferred.round != msg.round {
            *deferred = fresh();
        }
        deferred.keys.extend(ship);
        deferred.replies_pending += want_frames.len();
        deferred.keys_done |= msg.last;
        for (w, offer) in want_frames {
            self.outbox.push_back((
                pi_region,
                Frame::AeEntries(AeEntries {
                    round: msg.round,
                    entries: Vec::new(),
                    want: w,
                    last: false,
                    offer,
                    left_to_deltas: Bytes::new(),
                }),
            ));
        }
        self.ship_deferred_if_ready(pi, in_flight, store);
        self.stats.slots_differing += msg.slots.len() as u64;
        let peer = &mut self.peers[pi];
        let pending = peer.pending.as_mut().expect("checked above");
        pending.listed.extend(msg.slots.iter().map(|s| s.slot));
        if msg.last {
            let pending = peer.pending.take().expect("checked above");
            self.stats.rounds_completed += 1;
            // A completed round started after the request answers it, clean or not: its
            // repairs are on their way. Re-checking them is not urgent (with the link busy
            // shipping deltas, every key in flight differs and an urgent round would
            // repeat every `retry_ms`, shipping those keys twice).
            if pending.start_seq > peer.urgent_mark {
                peer.urgent = false;
                peer.urgent_since_ms = None;
            }
            if pending.listed.is_empty() {
                self.clean.push((from, pending.start_seq, msg.origin_seen));
                self.stats.rounds_clean += 1;
            } else {
                // Repairs are in flight: check again after `retry_ms` rather than a full
                // interval later (like a periodic round: it waits while the link is busy).
                let again = peer.retry_at_ms;
                peer.next_due_ms = Some(peer.next_due_ms.map_or(again, |t| t.min(again)));
            }
            self.note_equal_slots(pi, &pending, store);
            self.completed
                .push((from, pending.start_seq, pending.listed));
        }
    }

    /// Once every `want` was answered, ship our differing keys the peer did not send us
    /// (the ones it sent were merged, with a push-back where we knew more).
    fn ship_deferred_if_ready<S: LinkStore + ?Sized>(
        &mut self,
        pi: usize,
        in_flight: &dyn Fn(&[u8]) -> bool,
        store: &mut S,
    ) {
        let ready = self.peers[pi]
            .deferred
            .as_ref()
            .is_some_and(|d| d.keys_done && d.replies_pending == 0);
        if !ready {
            return;
        }
        let d = self.peers[pi].deferred.take().expect("checked");
        let mut chunks = EntryChunks {
            to: self.peers[pi].region,
            round: d.round,
            chunk_bytes: self.chunk_bytes,
            cur: Vec::new(),
            cur_bytes: 0,
            out: &mut self.outbox,
            shipped: 0,
            left_to_deltas: Vec::new(),
        };
        let salt = salt_of(d.round);
        for k in d.keys {
            if d.received.contains(&k)
                || in_flight(&k)
                || d.left_to_deltas.contains(&key_id(&k, salt))
            {
                continue;
            }
            if let Some(e) = store.entry(&k) {
                chunks.push(k, e);
            }
        }
        chunks.flush(Vec::new(), false);
        self.stats.entries_shipped += chunks.shipped;
    }

    /// A completed round found the slots it did not list equal. A lossy slot counts as
    /// synced with this peer only if it was already lossy when the round digested it and
    /// lost nothing since (its loss mark is unchanged): a key evicted after the digest was
    /// taken was compared while still present, so the round says nothing about getting it
    /// back. Digests are taken a slot range per step, well before the round completes.
    fn note_equal_slots<S: LinkStore + ?Sized>(
        &mut self,
        peer_index: usize,
        round: &PendingRound,
        store: &mut S,
    ) {
        for &(slot, mark) in &round.lossy {
            if round.listed.contains(&slot) || store.slot_loss_mark(slot) != Some(mark) {
                continue;
            }
            // Peers found equal under an older loss mark do not count any more.
            let words = self.peers.len().div_ceil(64);
            let synced = self
                .lossy_synced
                .entry(slot)
                .or_insert_with(|| (mark, vec![0; words]));
            if synced.0 != mark {
                *synced = (mark, vec![0; words]);
            }
            synced.1[peer_index / 64] |= 1 << (peer_index % 64);
            let found: u32 = synced.1.iter().map(|w| w.count_ones()).sum();
            if found as usize == self.peers.len() {
                store.mark_slot_repaired(slot, mark);
                self.lossy_synced.remove(&slot);
            }
        }
    }

    /// Steps 3–4 on either side: merge, push back what we knew more, ship what was asked.
    /// An entry with an HLC above `limit` is neither merged nor pushed back (see the module
    /// doc); returns how many were held so.
    pub fn handle_entries<S: LinkStore + ?Sized>(
        &mut self,
        from: RegionId,
        msg: &AeEntries,
        in_flight: &dyn Fn(&[u8]) -> bool,
        limit: Hlc,
        store: &mut S,
    ) -> u64 {
        let Some(pi) = self.peer_index(from) else {
            return 0;
        };
        let mut held = 0;
        let mut chunks = EntryChunks {
            to: from,
            round: msg.round,
            chunk_bytes: self.chunk_bytes,
            cur: Vec::new(),
            cur_bytes: 0,
            out: &mut self.outbox,
            shipped: 0,
            left_to_deltas: Vec::new(),
        };
        for ks in &msg.entries {
            let max = ks.state.max_hlc();
            if max > limit {
                // Not merged, and not answered either: a push-back would be refused in turn
                // and echo back and forth. Later rounds offer it again.
                held += 1;
                continue;
            }
            self.max_seen_hlc = self.max_seen_hlc.max(max);
            store.merge_full(&ks.key, &ks.state);
            self.stats.entries_received += 1;
            if in_flight(&ks.key) {
                continue;
            }
            match store.entry(&ks.key) {
                Some(mine) if mine != ks.state => chunks.push(ks.key.clone(), mine),
                _ => {}
            }
        }
        let mut left = 0;
        if !msg.want.is_empty() {
            let salt = salt_of(msg.round);
            let mut by_slot: BTreeMap<u16, BTreeSet<u32>> = BTreeMap::new();
            for sk in &msg.want {
                by_slot.entry(sk.slot).or_default().extend(fps_of(&sk.fps));
            }
            // The asker's versions of its own differing keys, by slot and key id.
            let mut offered: BTreeMap<u16, BTreeMap<u32, u32>> = BTreeMap::new();
            for v in &msg.offer {
                let m = offered.entry(v.slot).or_default();
                for (id, version) in versions_of(&v.keys) {
                    // Two keys with one id: the older version decides (ship rather than not).
                    let e = m.entry(id).or_insert(version);
                    if newer(*e, version) {
                        *e = version;
                    }
                }
            }
            for (slot, wanted) in by_slot {
                let mut ship = Vec::new();
                let to_deltas = &mut chunks.left_to_deltas;
                store.for_each_key_digest(slot, &mut |k, kd| {
                    if wanted.contains(&fingerprint(k, kd, salt)) {
                        if in_flight(k) {
                            // Our delta brings it: the asker must not push its copy back.
                            to_deltas.extend_from_slice(&key_id(k, salt).to_le_bytes());
                        } else {
                            ship.push(Bytes::copy_from_slice(k));
                        }
                    }
                });
                let theirs = offered.get(&slot);
                for k in ship {
                    let Some(e) = store.entry(&k) else {
                        continue;
                    };
                    // The asker holds a newer version: it ships it, and our merge of it
                    // pushes back whatever ours had that it lacks. (A key-id collision only
                    // delays this key to the next round: the slot keeps differing.)
                    let mine = version_of(e.max_hlc());
                    let left_to_them = theirs
                        .and_then(|m| m.get(&key_id(&k, salt)))
                        .is_some_and(|&v| newer(v, mine));
                    if left_to_them {
                        left += 1;
                        continue;
                    }
                    chunks.push(k, e);
                }
            }
        }
        chunks.flush(Vec::new(), !msg.want.is_empty());
        self.stats.entries_shipped += chunks.shipped;
        if let Some(d) = self.peers[pi]
            .deferred
            .as_mut()
            .filter(|d| d.round == msg.round)
        {
            d.received
                .extend(msg.entries.iter().map(|ks| ks.key.clone()));
            d.left_to_deltas.extend(
                msg.left_to_deltas
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            if msg.last {
                d.replies_pending = d.replies_pending.saturating_sub(1);
            }
        }
        self.ship_deferred_if_ready(pi, in_flight, store);
        self.stats.entries_clock_held += held;
        self.stats.entries_left_to_peer += left;
        held
    }
}
