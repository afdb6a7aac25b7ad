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
//! Asking before shipping means a stale side never ships its stale copies. Traffic beyond the
//! fixed digest vector grows with the number of differing keys. The salt changes every
//! round, so a digest or fingerprint collision only delays a repair by one round. An empty
//! region bootstraps by running a round: every slot of the peer differs. A slot the keyspace
//! marked lossy (eviction) is marked repaired once a round with every peer found it equal.

use crate::codec::{AeDigests, AeEntries, AeKeys, Frame, KeyState, SlotKeys};
use crate::store::ReplicaStore;
use bytes::Bytes;
use meridian_crdt::digest::{mix, mix_bytes};
use meridian_crdt::{Hlc, RegionId, SLOT_COUNT};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AntiEntropyStats {
    pub rounds_started: u64,
    pub rounds_completed: u64,
    /// Rounds that found no differing slot.
    pub rounds_clean: u64,
    pub slots_differing: u64,
    pub entries_shipped: u64,
    pub entries_received: u64,
}

struct PendingRound {
    round: u64,
    start_seq: u64,
    listed: BTreeSet<u16>,
}

/// Initiator side: our differing keys, shipped once every `want` was answered.
struct Deferred {
    round: u64,
    keys: Vec<Bytes>,
    received: HashSet<Bytes>,
    keys_done: bool,
    replies_pending: usize,
}

struct PeerAe {
    region: RegionId,
    /// Next periodic round; `None` until the first timeout arms it.
    next_due_ms: Option<u64>,
    /// A round was requested (backpressure, restart, bootstrap, unfinished repair).
    urgent: bool,
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
    counter: u64,
    /// Rounds started so far (orders round starts against the link's gap marks).
    starts: u64,
    /// Clean rounds completed: `(peer, start_seq, peer's own write frontier)`.
    clean: Vec<(RegionId, u64, Hlc)>,
    /// Lossy slots → bitmask of peer indexes found equal since.
    lossy_synced: BTreeMap<u16, u64>,
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
    ) -> Self {
        assert!(peers.len() <= 64, "peer bitmask is 64 bits");
        AntiEntropy {
            region,
            peers: peers
                .iter()
                .map(|&r| PeerAe {
                    region: r,
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
            counter: 0,
            starts: 0,
            clean: Vec::new(),
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

    /// Run a round with `peer` as soon as possible (backpressure, restart, bootstrap).
    pub fn request(&mut self, peer: RegionId) {
        if let Some(i) = self.peer_index(peer) {
            self.peers[i].urgent = true;
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

    pub fn handle_timeout(&mut self, now_ms: u64) {
        for p in self.peers.iter_mut() {
            p.next_due_ms.get_or_insert(now_ms + self.interval_ms);
        }
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.peers.iter().filter_map(|p| p.next_due_ms).min()
    }

    fn is_due(&self, p: &PeerAe, now_ms: u64) -> bool {
        let wants = p.urgent || p.next_due_ms.is_some_and(|t| now_ms >= t);
        wants && now_ms >= p.retry_at_ms
    }

    /// Start the due rounds (needs the store to read digests).
    pub fn start_due<S: ReplicaStore + ?Sized>(&mut self, now_ms: u64, store: &mut S) {
        if !self.peers.iter().any(|p| self.is_due(p, now_ms)) {
            return;
        }
        let mut present = vec![0u8; SLOT_COUNT / 8];
        let mut digests = Vec::new();
        let mut any = false;
        self.counter += 1;
        let round = (u64::from(self.region.0) << 48) | (self.counter & ((1 << 48) - 1));
        let salt = salt_of(round);
        for slot in 0..SLOT_COUNT {
            let d = store.slot_digest(slot as u16);
            if d != 0 {
                any = true;
                present[slot / 8] |= 1 << (slot % 8);
                digests.extend_from_slice(&digest16(d, salt).to_le_bytes());
            }
        }
        let msg = AeDigests {
            round,
            present: if any {
                Bytes::from(present)
            } else {
                Bytes::new()
            },
            digests: Bytes::from(digests),
        };
        let due: Vec<bool> = self.peers.iter().map(|p| self.is_due(p, now_ms)).collect();
        for (p, _) in self.peers.iter_mut().zip(due).filter(|(_, d)| *d) {
            p.next_due_ms = Some(now_ms + self.interval_ms);
            p.retry_at_ms = now_ms + self.retry_ms;
            self.starts += 1;
            p.pending = Some(PendingRound {
                round,
                start_seq: self.starts,
                listed: BTreeSet::new(),
            });
            self.stats.rounds_started += 1;
            self.outbox
                .push_back((p.region, Frame::AeDigests(msg.clone())));
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(RegionId, Frame)> {
        self.outbox.pop_front()
    }

    pub fn has_pending_output(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Responder, step 2: list the differing slots with our key fingerprints.
    pub fn handle_digests<S: ReplicaStore + ?Sized>(
        &mut self,
        from: RegionId,
        msg: &AeDigests,
        own_seen: Hlc,
        store: &mut S,
    ) {
        if self.peer_index(from).is_none() {
            return;
        }
        let salt = salt_of(msg.round);
        let mut theirs = msg
            .digests
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        let mut slots = Vec::new();
        let mut bytes = 0;
        for slot in 0..SLOT_COUNT {
            let their = if !msg.present.is_empty() && msg.present[slot / 8] & (1 << (slot % 8)) != 0
            {
                theirs.next().unwrap_or(0)
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
            bytes += fps.len() + 8;
            slots.push(SlotKeys {
                slot: slot as u16,
                fps: Bytes::from(fps),
            });
            if bytes >= self.chunk_bytes {
                self.outbox.push_back((
                    from,
                    Frame::AeKeys(AeKeys {
                        round: msg.round,
                        last: false,
                        origin_seen: own_seen,
                        slots: std::mem::take(&mut slots),
                    }),
                ));
                bytes = 0;
            }
        }
        self.outbox.push_back((
            from,
            Frame::AeKeys(AeKeys {
                round: msg.round,
                last: true,
                origin_seen: own_seen,
                slots,
            }),
        ));
    }

    /// Initiator, step 3: ship our differing keys and ask for theirs.
    pub fn handle_keys<S: ReplicaStore + ?Sized>(
        &mut self,
        from: RegionId,
        msg: &AeKeys,
        store: &mut S,
    ) {
        let Some(pi) = self.peer_index(from) else {
            return;
        };
        match &self.peers[pi].pending {
            Some(p) if p.round == msg.round => {}
            _ => return, // stale or unknown round
        }
        let salt = salt_of(msg.round);
        let mut ship: Vec<Bytes> = Vec::new();
        let mut want_frames = Vec::new();
        let mut want = Vec::new();
        let mut want_bytes = 0;
        for sk in &msg.slots {
            let their: HashSet<u32> = fps_of(&sk.fps).collect();
            let mut mine: HashSet<u32> = HashSet::new();
            store.for_each_key_digest(sk.slot, &mut |k, kd| {
                let fp = fingerprint(k, kd, salt);
                mine.insert(fp);
                if !their.contains(&fp) {
                    ship.push(k.clone());
                }
            });
            let wanted: Vec<u8> = fps_of(&sk.fps)
                .filter(|fp| !mine.contains(fp))
                .flat_map(u32::to_le_bytes)
                .collect();
            if !wanted.is_empty() {
                want_bytes += wanted.len() + 8;
                want.push(SlotKeys {
                    slot: sk.slot,
                    fps: Bytes::from(wanted),
                });
                if want_bytes >= self.chunk_bytes {
                    want_frames.push(std::mem::take(&mut want));
                    want_bytes = 0;
                }
            }
        }
        if !want.is_empty() {
            want_frames.push(want);
        }
        let pi_region = self.peers[pi].region;
        let deferred = self.peers[pi].deferred.get_or_insert_with(|| Deferred {
            round: msg.round,
            keys: Vec::new(),
            received: HashSet::new(),
            keys_done: false,
            replies_pending: 0,
        });
        if deferred.round != msg.round {
            *deferred = Deferred {
                round: msg.round,
                keys: Vec::new(),
                received: HashSet::new(),
                keys_done: false,
                replies_pending: 0,
            };
        }
        deferred.keys.extend(ship);
        deferred.replies_pending += want_frames.len();
        deferred.keys_done |= msg.last;
        for w in want_frames {
            self.outbox.push_back((
                pi_region,
                Frame::AeEntries(AeEntries {
                    round: msg.round,
                    entries: Vec::new(),
                    want: w,
                    last: false,
                }),
            ));
        }
        self.ship_deferred_if_ready(pi, store);
        self.stats.slots_differing += msg.slots.len() as u64;
        let peer = &mut self.peers[pi];
        let pending = peer.pending.as_mut().expect("checked above");
        pending.listed.extend(msg.slots.iter().map(|s| s.slot));
        if msg.last {
            let pending = peer.pending.take().expect("checked above");
            self.stats.rounds_completed += 1;
            if pending.listed.is_empty() {
                self.clean.push((from, pending.start_seq, msg.origin_seen));
                self.stats.rounds_clean += 1;
                peer.urgent = false;
            } else {
                // Repairs are in flight: check again after `retry_ms` rather than a full
                // interval later.
                peer.urgent = true;
            }
            self.note_equal_slots(pi, &pending.listed, store);
        }
    }

    /// Once every `want` was answered, ship our differing keys the peer did not send us
    /// (the ones it sent were merged, with a push-back where we knew more).
    fn ship_deferred_if_ready<S: ReplicaStore + ?Sized>(&mut self, pi: usize, store: &mut S) {
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
        };
        for k in d.keys {
            if d.received.contains(&k) {
                continue;
            }
            if let Some(e) = store.entry(&k) {
                chunks.push(k, e.clone());
            }
        }
        chunks.flush(Vec::new(), false);
        self.stats.entries_shipped += chunks.shipped;
    }

    fn note_equal_slots<S: ReplicaStore + ?Sized>(
        &mut self,
        peer_index: usize,
        differing: &BTreeSet<u16>,
        store: &mut S,
    ) {
        let all: u64 = if self.peers.len() == 64 {
            u64::MAX
        } else {
            (1u64 << self.peers.len()) - 1
        };
        for slot in 0..SLOT_COUNT as u16 {
            if !store.slot_is_lossy(slot) {
                continue;
            }
            if differing.contains(&slot) {
                continue;
            }
            let mask = self.lossy_synced.entry(slot).or_insert(0);
            *mask |= 1 << peer_index;
            if *mask == all {
                store.mark_slot_repaired(slot);
                self.lossy_synced.remove(&slot);
            }
        }
    }

    /// Steps 3–4 on either side: merge, push back what we knew more, ship what was asked.
    pub fn handle_entries<S: ReplicaStore + ?Sized>(
        &mut self,
        from: RegionId,
        msg: &AeEntries,
        store: &mut S,
    ) {
        let Some(pi) = self.peer_index(from) else {
            return;
        };
        let mut chunks = EntryChunks {
            to: from,
            round: msg.round,
            chunk_bytes: self.chunk_bytes,
            cur: Vec::new(),
            cur_bytes: 0,
            out: &mut self.outbox,
            shipped: 0,
        };
        for ks in &msg.entries {
            self.max_seen_hlc = self.max_seen_hlc.max(ks.state.max_hlc());
            store.merge_full(&ks.key, &ks.state);
            self.stats.entries_received += 1;
            match store.entry(&ks.key) {
                Some(mine) if *mine != ks.state => chunks.push(ks.key.clone(), mine.clone()),
                _ => {}
            }
        }
        if !msg.want.is_empty() {
            let salt = salt_of(msg.round);
            let mut by_slot: HashMap<u16, HashSet<u32>> = HashMap::new();
            for sk in &msg.want {
                by_slot.entry(sk.slot).or_default().extend(fps_of(&sk.fps));
            }
            let mut slots: Vec<_> = by_slot.into_iter().collect();
            slots.sort_unstable_by_key(|(s, _)| *s);
            for (slot, wanted) in slots {
                let mut ship = Vec::new();
                store.for_each_key_digest(slot, &mut |k, kd| {
                    if wanted.contains(&fingerprint(k, kd, salt)) {
                        ship.push(k.clone());
                    }
                });
                for k in ship {
                    if let Some(e) = store.entry(&k) {
                        chunks.push(k, e.clone());
                    }
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
            if msg.last {
                d.replies_pending = d.replies_pending.saturating_sub(1);
            }
        }
        self.ship_deferred_if_ready(pi, store);
    }
}
