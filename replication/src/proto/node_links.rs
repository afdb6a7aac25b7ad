//! The links of one node of a region that may be a cluster (ARCHITECTURE.md, "Clustered
//! regions"): one [`RegionLink`] per peer *node* whose served slots intersect ours, each
//! scoped to that intersection, with deltas routed by slot to the node of each peer region
//! that serves it now.
//!
//! Nothing moves with a slot. When a peer region's slot map changes (reshard, failover) the
//! slots that changed hands become a local gap of the new owner's link
//! ([`RegionLink::note_local_loss`]): anti-entropy of those slots with the new owner repairs
//! whatever the old owner had not been sent or acknowledged. A delta with no known owner
//! (topology not learned yet) is counted and its slot repaired the same way once routed.
//! Each link's anti-entropy sees only its scope ([`Scoped`]), so two nodes compare exactly
//! the slots they share, and a link never merges a key outside it.
//!
//! Repairs are passed on ([`NodeLinks::pass_on_repairs`]): when anti-entropy with one peer
//! region changes a slot here, the links to the other regions that share it run a round
//! too. A write can survive only in a third region: region C's primary ships a write to
//! region B, not yet to us, and fails over to a replica without it; C's promoted node gets
//! it back from B by anti-entropy, but no delta will ever carry it to us, and the round
//! between C's new node and us may have run before. Periodic rounds would find it too;
//! this makes the repair not wait for them.
//!
//! Tombstone GC composes the links' frontiers ([`NodeLinks::collect_garbage`]): the
//! minimum over every link, once every slot is routed in every peer region.
//!
//! ## GC with three regions or more: the node-wide aggregate
//!
//! A link has one peer region, so on its own it knows nothing of a third one: with regions
//! A, B and C, node `a` must learn from B's nodes what they hold of C before it collects a
//! tombstone with C's stamps in it (C's removal must have reached B's owner of the slot,
//! or B's copy of what it removed comes back by anti-entropy; and B's writes made before
//! it merged that removal must have reached `a`). Region mode gets this from the one
//! link's `Frontier` gossip, which carries every origin. Node mode does the same with
//! *third-party entries* ([`RegionLink::set_third_party`]):
//!
//! - **What a node holds of region C** ([`NodeLinks::aggregate`]): `Hlc::ZERO` while any
//!   slot has no routed owner in C or deltas to C went unrouted since the last routing (a
//!   node of C we do not route to has a link, if at all, whose empty scope refuses what it
//!   sends while the link acknowledges it, so its `seen` passes writes we do not hold);
//!   otherwise the minimum over this node's links to C's nodes of each link's stable entry
//!   for C: the contiguous prefix of that node's stream we merged, held to that node's own
//!   claim. The own claim matters: a node of C that gained slots (a reshard, a promotion)
//!   holds it down on its links until anti-entropy of those slots with us is done, since
//!   the stream we acknowledged does not carry what the slots' former owner wrote and we
//!   may not have got. Every link to C counts, whatever its scope: each covers part of our
//!   slots, and the minimum is at or below each part.
//! - It is computed when the shell reports a drain (`note_local_hlc` with a nonzero
//!   stamp) and handed to every link as the entries of the regions other than its peer's.
//!   Every merge it reflects happened before that drain, so every local write made before
//!   such a merge is enqueued on the link of its slot's owner, below the link's
//!   `Frontier::enqueued` at any later gossip (the rule the own entry follows through
//!   `merged_since_drain`).
//! - On link `a`–`b` the entry for C is then `min(a's aggregate, b's aggregate as
//!   gossiped)`, snapshotted with `b`'s `enqueued` claim like any other entry; the node's GC
//!   frontier stays the minimum over every link's usable frontier. The existing rules are
//!   untouched: `b`'s writes made before it merged what its aggregate says are in at `a`
//!   before a snapshot counts (the claim on link `a`–`b`); C's writes made before C's nodes
//!   merged a removal are covered by the claims on our own links to C's nodes, whose
//!   snapshots carry C's nodes' aggregates of A's and B's removals the same way.
//!
//! Why a minimum over all links is sound although scopes differ: collecting a tombstone
//! of slot `s` needs, for every region R and every origin X, R's owner of `s` to hold X's
//! writes up to the bound (and its writes made before it merged them to have reached us).
//! Every slot is routed before GC runs, so for each peer region R the node `r` that our
//! routing names for `s` has a link, and its frontier is in the minimum; `r`'s aggregate of
//! X is a minimum over *all* of `r`'s slots and links to X, so at or below what `r` holds
//! for `s`. Links to nodes that do not serve `s` (any scope, even empty) only lower the
//! minimum. Coarser than needed, never above: a slow node of C holds back GC of C's stamps
//! in every slot, not only its own (liveness, not safety). The aggregate only adds terms to
//! the minimum; nothing the two-region argument relies on is replaced. Where our routing
//! is stale (a slot moved in R and we have not learned it), R's new owner is in no minimum
//! of ours, with two regions as with three: both rest on the gap rules (R's new owner and
//! X's nodes hold their own entries down towards each other until the moved slots are
//! repaired). Open in both cases: a node that no longer serves a slot acknowledges (and
//! so counts in its `seen`) a delta of that slot it refused; the clustered simulator
//! collecting garbage during its faults (`--gc-during-faults --no-failovers`: partitions,
//! reshards with stale routing, late topology; 1000 seeds) has not shown it leading to a
//! wrong value.
//!
//! ## Replicas
//!
//! GC must count what a region's *replicas* hold too: a primary that merged a removal and
//! claimed it, then failed over to a replica the removal had not reached, would leave a
//! promoted node holding what the removal killed, and anti-entropy would ship it back to
//! peers that collected the tombstone. So every entry a link gossips is capped by what the
//! node's replicas acknowledged ([`NodeLinks::set_replica_cap`]): the shell takes
//! [`NodeLinks::claim_checkpoint`]s with its replica stream's offset and hands one over
//! once every replica that could be promoted (connected, or gone less than
//! `peer_gc_bound_ms`) acknowledged that offset. Local GC is not capped: peers keep the
//! tombstone until this region's capped claim passes it, so a promoted replica missing
//! the removal gets it back by anti-entropy. A node without replicas claims what it holds.
//!
//! Liveness: a stream's `seen` advances with batches merged while no gap is open, with
//! the peer's idle gossip once it reaches the peer's `enqueued`, and with clean
//! anti-entropy rounds; a stream whose last batch came while its gap was open waits for
//! the next clean round (the periodic one), and for one more if that round found the
//! peer's own entry still held by a gap the same round repaired.
//!
//! A peer expelled from GC by [`RegionLink`]'s own rule (silent past `peer_gc_bound_ms`) is
//! left out of its link's stable frontier, which keeps what we merged of it; the aggregate
//! reads each link's stable frontier, so it follows (an entry the rule dropped would read
//! as what we merged of that stream). A forgotten region ([`NodeLinks::forget_region`])
//! keeps, as its entry in the aggregate, what the node held of it when it forgot it (its
//! writes are refused from then on, so that stays true), as region mode keeps a forgotten
//! peer's frozen entry: GC of its stamps goes on. A link left out of the node's minimum in
//! [`NodeLinks::collect_garbage`] must be left out of [`NodeLinks::aggregate`] by the same
//! test.
//!
//! Sans-IO like [`RegionLink`]: the shell maps [`PeerNode`]s to transport peers, passes
//! time in, and lends the store per call.

use crate::codec::Frame;
use crate::proto::link::{Expelled, LinkConfig, RegionLink};
use crate::store::LinkStore;
use meridian_crdt::{Applied, Delta, Entry, Hlc, RegionId, SLOT_COUNT};
use std::collections::BTreeSet;

/// A node of a peer region, as the shell names it (e.g. an index into its transport peers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerNode {
    pub region: RegionId,
    pub node: u64,
}

/// A set of hash slots.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet {
    bits: Box<[u64]>,
}

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotSet({} slots)", self.len())
    }
}

impl Default for SlotSet {
    fn default() -> Self {
        SlotSet {
            bits: vec![0; SLOT_COUNT / 64].into_boxed_slice(),
        }
    }
}

impl SlotSet {
    pub fn contains(&self, slot: u16) -> bool {
        let s = usize::from(slot);
        self.bits
            .get(s / 64)
            .is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    pub fn insert(&mut self, slot: u16) {
        let s = usize::from(slot);
        if let Some(w) = self.bits.get_mut(s / 64) {
            *w |= 1 << (s % 64);
        }
    }

    pub fn remove(&mut self, slot: u16) {
        let s = usize::from(slot);
        if let Some(w) = self.bits.get_mut(s / 64) {
            *w &= !(1 << (s % 64));
        }
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }
}

/// Which peer regions' links found a lossy slot equal, at which loss mark: the slot is
/// repaired once every peer region's did at the same mark (each link only knows its own).
#[derive(Default)]
pub struct RepairTally {
    regions: usize,
    seen: std::collections::BTreeMap<u16, (u64, BTreeSet<RegionId>)>,
}

impl RepairTally {
    /// `region`'s link found `slot` equal at `mark`: whether every peer region's has now.
    fn note(&mut self, region: RegionId, slot: u16, mark: u64) -> bool {
        let e = self.seen.entry(slot).or_insert((mark, BTreeSet::new()));
        if e.0 != mark {
            *e = (mark, BTreeSet::new());
        }
        e.1.insert(region);
        let done = e.1.len() >= self.regions;
        if done {
            self.seen.remove(&slot);
        }
        done
    }
}

/// A store seen through one link's scope: slots outside it look empty to anti-entropy and
/// take no merge (counted in `refused`); a lossy slot is marked repaired only once the
/// links to every peer region found it equal (`tally`).
pub struct Scoped<'a, S: LinkStore + ?Sized> {
    pub inner: &'a mut S,
    pub scope: &'a SlotSet,
    pub refused: &'a mut u64,
    pub region: RegionId,
    pub tally: &'a mut RepairTally,
    /// Slots a whole-state merge (anti-entropy) changed.
    pub repaired: &'a mut BTreeSet<u16>,
}

impl<S: LinkStore + ?Sized> LinkStore for Scoped<'_, S> {
    fn apply_delta(&mut self, delta: &Delta) -> Applied {
        if !self.scope.contains(delta.slot) {
            *self.refused += 1;
            return Applied::Unchanged;
        }
        self.inner.apply_delta(delta)
    }

    fn apply_deltas(&mut self, deltas: &[Delta]) {
        if deltas.iter().all(|d| self.scope.contains(d.slot)) {
            return self.inner.apply_deltas(deltas);
        }
        let kept: Vec<Delta> = deltas
            .iter()
            .filter(|d| self.scope.contains(d.slot))
            .cloned()
            .collect();
        *self.refused += (deltas.len() - kept.len()) as u64;
        self.inner.apply_deltas(&kept);
    }

    fn merge_full(&mut self, key: &[u8], state: &Entry) -> Applied {
        let slot = meridian_crdt::key_slot(key);
        if !self.scope.contains(slot) {
            *self.refused += 1;
            return Applied::Unchanged;
        }
        let applied = self.inner.merge_full(key, state);
        if applied == Applied::Changed {
            self.repaired.insert(slot);
        }
        applied
    }

    fn slot_digest(&mut self, slot: u16) -> u64 {
        if self.scope.contains(slot) {
            self.inner.slot_digest(slot)
        } else {
            0
        }
    }

    fn for_each_key_digest(&self, slot: u16, visit: &mut dyn FnMut(&[u8], u64)) {
        if self.scope.contains(slot) {
            self.inner.for_each_key_digest(slot, visit);
        }
    }

    fn for_each_entry(&self, slot: u16, visit: &mut dyn FnMut(&[u8], &Entry)) {
        if self.scope.contains(slot) {
            self.inner.for_each_entry(slot, visit);
        }
    }

    fn entry(&self, key: &[u8]) -> Option<Entry> {
        if self.scope.contains(meridian_crdt::key_slot(key)) {
            self.inner.entry(key)
        } else {
            None
        }
    }

    fn slot_is_lossy(&self, slot: u16) -> bool {
        self.inner.slot_is_lossy(slot)
    }

    fn slot_loss_mark(&self, slot: u16) -> Option<u64> {
        self.inner.slot_loss_mark(slot)
    }

    fn mark_slot_repaired(&mut self, slot: u16, mark: u64) {
        // Equal with this peer only: the slot's other peers are other regions' links,
        // which each mark on their own (a lossy slot needs every one of them).
        if self.scope.contains(slot) && self.tally.note(self.region, slot, mark) {
            self.inner.mark_slot_repaired(slot, mark);
        }
    }

    fn gc(&mut self, _stable: &dyn Fn(RegionId) -> Hlc) -> usize {
        // One link's frontier is not enough: GC is node-wide (`NodeLinks::collect_garbage`).
        0
    }
}

struct Instance {
    peer: PeerNode,
    link: RegionLink,
    scope: SlotSet,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeLinksStats {
    /// Local deltas with no known owner in some peer region (their slots are repaired by
    /// anti-entropy once routed).
    pub unrouted: u64,
    /// Deltas and entries from a peer node for slots outside its link's scope.
    pub refused: u64,
    /// Slots that changed hands in a peer region's map (each a local gap of its new link).
    pub slots_rerouted: u64,
    /// Deleted-state entries garbage-collected.
    pub gc_dropped: u64,
    /// Anti-entropy rounds asked of a link because a round with another region repaired
    /// one of its slots here (`NodeLinks::pass_on_repairs`).
    pub repairs_passed_on: u64,
    pub links_opened: u64,
    pub links_closed: u64,
}

/// One node's links to the nodes of its peer regions (module doc).
pub struct NodeLinks {
    region: RegionId,
    cfg: LinkConfig,
    /// Incarnation ids of this node's links: `epoch_base`, `epoch_base + 1`, … (each link is
    /// a new incarnation to its peer; the shell picks a random base per process).
    next_epoch: u64,
    /// Per peer region, the node serving each slot (`None`: not known).
    owners: Vec<(RegionId, Vec<Option<u64>>)>,
    links: Vec<Instance>,
    /// Per peer region, slots whose deltas found no owner since the last routing.
    unrouted: Vec<(RegionId, BTreeSet<u16>)>,
    /// Peer regions with a slot of no known owner (kept by `set_owners`, so that the
    /// aggregate, computed at every drain, need not scan the maps).
    unowned: BTreeSet<RegionId>,
    rr: usize,
    tally: RepairTally,
    stats: NodeLinksStats,
    /// Bug injection for the cluster simulator's checker tests (never set otherwise).
    bug_skip_reroute_gap: bool,
    /// This node's start (its first `handle_timeout`): every link's `Hello::born_ms`.
    born_ms: u64,
    /// Peer regions forgotten (`forget_region`), and when: a link to one of their nodes
    /// (they came back) refuses incarnations started before.
    forgotten: std::collections::BTreeMap<RegionId, u64>,
    /// What this node held of each forgotten region when it forgot it (its aggregate then,
    /// frozen: the region's writes are refused from then on), handed out like a live
    /// region's so GC of its stamps goes on.
    forgotten_held: std::collections::BTreeMap<RegionId, Hlc>,
    /// Bug injection: no third-party entries (module doc, the node-wide aggregate).
    bug_no_gc_aggregate: bool,
    /// What this node's in-region replicas hold ([`Self::set_replica_cap`]); a link opened
    /// since gets its peer's entry, or nothing.
    replica_cap: Option<ClaimCheckpoint>,
}

/// What a node's links would claim, per peer node ([`NodeLinks::claim_checkpoint`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimCheckpoint(
    std::collections::BTreeMap<PeerNode, std::collections::BTreeMap<RegionId, Hlc>>,
);

impl NodeLinks {
    /// `peers`: the peer regions; `epoch_base`: this process's first link incarnation id
    /// (random, never 0 or 1: see [`RegionLink::new`]).
    pub fn new(region: RegionId, peers: &[RegionId], epoch_base: u64, cfg: LinkConfig) -> Self {
        NodeLinks {
            region,
            cfg,
            next_epoch: epoch_base.max(2),
            owners: peers
                .iter()
                .filter(|&&p| p != region)
                .map(|&p| (p, vec![None; SLOT_COUNT]))
                .collect(),
            links: Vec::new(),
            // Indexed like `owners` (this region is no peer).
            unrouted: peers
                .iter()
                .filter(|&&p| p != region)
                .map(|&p| (p, BTreeSet::new()))
                .collect(),
            unowned: peers.iter().copied().filter(|&p| p != region).collect(),
            rr: 0,
            tally: RepairTally {
                regions: peers.iter().filter(|&&p| p != region).count(),
                ..RepairTally::default()
            },
            stats: NodeLinksStats::default(),
            bug_skip_reroute_gap: false,
            born_ms: 0,
            forgotten: std::collections::BTreeMap::new(),
            forgotten_held: std::collections::BTreeMap::new(),
            bug_no_gc_aggregate: false,
            replica_cap: None,
        }
    }

    /// A region joined at run time: its slot owners are unknown until its topology is set
    /// ([`Self::set_owners`]); GC waits for it from now on. Returns `false` if known (or
    /// this region).
    pub fn add_region(&mut self, region: RegionId) -> bool {
        if region == self.region || self.owners.iter().any(|(r, _)| *r == region) {
            return false;
        }
        self.forgotten.remove(&region);
        self.forgotten_held.remove(&region);
        self.owners.push((region, vec![None; SLOT_COUNT]));
        self.unowned.insert(region);
        self.unrouted.push((region, BTreeSet::new()));
        self.tally.regions += 1;
        // Links to its nodes opened while it was forgotten keep refusing the incarnations
        // they expelled; links opened from now on take it as any peer.
        true
    }

    /// Forget a peer region (`MERIDIAN REGION FORGET`): its links go, GC stops waiting for
    /// it, and a node of it that speaks again gets a link that refuses every incarnation
    /// started before `now_ms` (see [`RegionLink::remove_peer`]).
    pub fn forget_region(&mut self, region: RegionId, now_ms: u64) -> bool {
        let Some(i) = self.owners.iter().position(|(r, _)| *r == region) else {
            return false;
        };
        let held = self
            .aggregate()
            .into_iter()
            .find(|(r, _)| *r == region)
            .map_or(Hlc::ZERO, |(_, h)| h);
        self.forgotten_held.insert(region, held);
        self.owners.remove(i);
        self.unowned.remove(&region);
        self.unrouted.retain(|(r, _)| *r != region);
        self.tally.regions = self.tally.regions.saturating_sub(1);
        let before = self.links.len();
        self.links.retain(|l| l.peer.region != region);
        self.stats.links_closed += (before - self.links.len()) as u64;
        self.rr = 0;
        self.forgotten.insert(region, now_ms);
        // Its writes may have reached some regions and not others: no delta will carry them
        // again, so compare with everyone left.
        for i in &mut self.links {
            i.link.request_anti_entropy(i.peer.region);
        }
        true
    }

    /// Bug injection, for the cluster simulator's checker tests only: [`Self::set_owners`]
    /// no longer makes slots that changed hands local gaps.
    #[doc(hidden)]
    pub fn inject_bug_skip_reroute_gap(&mut self) {
        self.bug_skip_reroute_gap = true;
    }

    /// Bug injection, for the cluster simulator's checker tests only: links get no
    /// third-party entries (the node-wide aggregate is never handed out), so with three
    /// regions or more what a third region wrote is never collected.
    #[doc(hidden)]
    pub fn inject_bug_no_gc_aggregate(&mut self) {
        self.bug_no_gc_aggregate = true;
    }

    pub fn stats(&self) -> &NodeLinksStats {
        &self.stats
    }

    /// The peer nodes this node has a link to, with their scope sizes.
    pub fn peers(&self) -> impl Iterator<Item = (PeerNode, usize)> + '_ {
        self.links.iter().map(|i| (i.peer, i.scope.len()))
    }

    /// See [`RegionLink::peer_gc_bound_ms`].
    pub fn peer_gc_bound_ms(&self) -> u64 {
        self.cfg.peer_gc_bound_ms
    }

    pub fn link(&self, peer: PeerNode) -> Option<&RegionLink> {
        self.links.iter().find(|i| i.peer == peer).map(|i| &i.link)
    }

    fn index_or_open(&mut self, peer: PeerNode) -> usize {
        if let Some(i) = self.links.iter().position(|i| i.peer == peer) {
            return i;
        }
        let epoch = self.next_epoch;
        self.next_epoch = self.next_epoch.wrapping_add(1).max(2);
        let mut link = RegionLink::new(self.region, &[peer.region], epoch, self.cfg.clone());
        // A link opened later is no newer incarnation of this node's state.
        link.set_born(self.born_ms);
        if let Some(&at_ms) = self.forgotten.get(&peer.region) {
            link.expel_peer(peer.region, Expelled { epoch: None, at_ms });
        }
        if let Some(cp) = &self.replica_cap {
            link.set_replica_cap(Some(cp.0.get(&peer).cloned().unwrap_or_default()));
        }
        self.links.push(Instance {
            peer,
            link,
            scope: SlotSet::default(),
        });
        self.stats.links_opened += 1;
        self.links.len() - 1
    }

    /// A peer region's slot map as it is now: `owner_of(slot)` is the node serving it.
    /// Slots that changed hands become local gaps of their new owner's link (repaired by
    /// anti-entropy); links left with no slot and nothing in flight are closed.
    pub fn set_owners(&mut self, region: RegionId, owner_of: impl Fn(u16) -> Option<u64>) {
        let Some(ri) = self.owners.iter().position(|(r, _)| *r == region) else {
            return;
        };
        let mut moved: Vec<(u64, Vec<u16>)> = Vec::new();
        for slot in 0..SLOT_COUNT as u16 {
            let new = owner_of(slot);
            let old = self.owners[ri].1[usize::from(slot)];
            let unrouted = self.unrouted[ri].1.contains(&slot);
            if new == old && !unrouted {
                continue;
            }
            self.owners[ri].1[usize::from(slot)] = new;
            if let Some(o) = old.filter(|&o| Some(o) != new) {
                let peer = PeerNode { region, node: o };
                if let Some(inst) = self.links.iter_mut().find(|i| i.peer == peer) {
                    inst.scope.remove(slot);
                }
            }
            if let Some(n) = new {
                self.unrouted[ri].1.remove(&slot);
                match moved.iter_mut().find(|(m, _)| *m == n) {
                    Some((_, v)) => v.push(slot),
                    None => moved.push((n, vec![slot])),
                }
            }
        }
        if self.owners[ri].1.iter().all(Option::is_some) {
            self.unowned.remove(&region);
        } else {
            self.unowned.insert(region);
        }
        for (node, slots) in moved {
            let i = self.index_or_open(PeerNode { region, node });
            for &s in &slots {
                self.links[i].scope.insert(s);
            }
            self.stats.slots_rerouted += slots.len() as u64;
            // Whatever the previous owner (or nobody) was not sent of these slots is
            // repaired with the new one before this link's frontier passes it.
            if !self.bug_skip_reroute_gap {
                self.links[i].link.note_local_loss(Hlc::ZERO, slots);
            }
        }
        self.close_idle();
    }

    /// Close links with an empty scope: idle ones, and ones with unacknowledged deltas. A
    /// peer node that serves none of our slots refuses whatever we still deliver to it, and
    /// each slot it lost is a local gap of its new owner's link, so that log is repaired
    /// there; kept, a link to a failed node resent its log forever and its backlog never
    /// drained (found by the cluster simulator).
    fn close_idle(&mut self) {
        let before = self.links.len();
        self.links.retain(|i| {
            !(i.scope.is_empty() && (i.link.backlog(i.peer.region) > 0 || i.link.is_idle()))
        });
        self.stats.links_closed += (before - self.links.len()) as u64;
    }

    /// A local delta: to the node serving its slot in each peer region.
    pub fn enqueue(&mut self, now_ms: u64, delta: Delta) {
        let slot = usize::from(delta.slot);
        for ri in 0..self.owners.len() {
            let region = self.owners[ri].0;
            match self.owners[ri].1.get(slot).copied().flatten() {
                Some(node) => {
                    let peer = PeerNode { region, node };
                    let i = self.index_or_open(peer);
                    self.links[i].link.enqueue(now_ms, delta.clone());
                }
                None => {
                    self.stats.unrouted += 1;
                    self.unrouted[ri].1.insert(delta.slot);
                }
            }
        }
    }

    /// See [`RegionLink::note_local_hlc`] (every link). A nonzero `hlc` reports a drain:
    /// the node-wide aggregate is computed and each link gets it for the regions other than
    /// its peer's (module doc).
    pub fn note_local_hlc(&mut self, hlc: Hlc) {
        if hlc > Hlc::ZERO && !self.bug_no_gc_aggregate {
            let agg = self.aggregate();
            for i in &mut self.links {
                let peer = i.peer.region;
                i.link
                    .set_third_party(agg.iter().copied().filter(|(r, _)| *r != peer));
            }
        }
        for i in &mut self.links {
            i.link.note_local_hlc(hlc);
        }
    }

    /// Every link's [`RegionLink::claim_checkpoint`]: the shell records it with its replica
    /// stream's offset and hands it to [`Self::set_replica_cap`] once every replica has
    /// acknowledged that offset (module doc, "Replicas").
    pub fn claim_checkpoint(&self) -> ClaimCheckpoint {
        ClaimCheckpoint(
            self.links
                .iter()
                .map(|i| (i.peer, i.link.claim_checkpoint()))
                .collect(),
        )
    }

    /// What this node's replicas hold: a checkpoint every replica has acknowledged (`None`:
    /// no replicas, no cap). See [`RegionLink::set_replica_cap`]; a link opened after the
    /// checkpoint claims nothing until a later one.
    pub fn set_replica_cap(&mut self, cap: Option<ClaimCheckpoint>) {
        for i in &mut self.links {
            i.link.set_replica_cap(
                cap.as_ref()
                    .map(|cp| cp.0.get(&i.peer).cloned().unwrap_or_default()),
            );
        }
        self.replica_cap = cap;
    }

    /// What this node holds of each peer region, over all its slots (module doc): per
    /// region, `Hlc::ZERO` while a slot has no routed owner there or deltas went unrouted
    /// since the last routing, else the minimum over the links to that region's nodes of
    /// each link's stable entry for it (our prefix of that node's stream, held to its own
    /// claim). A forgotten region keeps what it was when forgotten.
    pub fn aggregate(&self) -> Vec<(RegionId, Hlc)> {
        self.owners
            .iter()
            .enumerate()
            .map(|(ri, (region, _))| {
                let routed = !self.unowned.contains(region)
                    && self.unrouted.get(ri).is_none_or(|(_, u)| u.is_empty());
                let held = self
                    .links
                    .iter()
                    .filter(|i| i.peer.region == *region)
                    .map(|i| {
                        // (Absent only if the link's own rule leaves the peer out: then what
                        // we merged of its stream.)
                        i.link
                            .stable_frontier()
                            .get(region)
                            .copied()
                            .unwrap_or_else(|| {
                                i.link
                                    .seen_vector()
                                    .into_iter()
                                    .find(|(r, _)| r == region)
                                    .map_or(Hlc::ZERO, |(_, h)| h)
                            })
                    })
                    .min();
                let h = match held {
                    Some(h) if routed => h,
                    _ => Hlc::ZERO,
                };
                (*region, h)
            })
            .chain(self.forgotten_held.iter().map(|(&r, &h)| (r, h)))
            .collect()
    }

    /// See [`RegionLink::note_local_loss`] (every link whose scope has one of the slots).
    pub fn note_local_loss(&mut self, below: Hlc, slots: &[u16]) {
        for i in &mut self.links {
            let mine: Vec<u16> = slots
                .iter()
                .copied()
                .filter(|&s| i.scope.contains(s))
                .collect();
            if !mine.is_empty() {
                i.link.note_local_loss(below, mine);
            }
        }
    }

    /// A frame from a peer node (a link is opened for a node we did not route to yet: its
    /// batches are acknowledged, and merged where our scope has their slots).
    pub fn handle_frame<S: LinkStore + ?Sized>(
        &mut self,
        now_ms: u64,
        from: PeerNode,
        frame: Frame,
        store: &mut S,
    ) {
        if !self.owners.iter().any(|(r, _)| *r == from.region)
            && !self.forgotten.contains_key(&from.region)
        {
            return;
        }
        let i = self.index_or_open(from);
        let inst = &mut self.links[i];
        let mut repaired = BTreeSet::new();
        let mut scoped = Scoped {
            inner: store,
            scope: &inst.scope,
            refused: &mut self.stats.refused,
            region: from.region,
            tally: &mut self.tally,
            repaired: &mut repaired,
        };
        inst.link
            .handle_frame(now_ms, from.region, frame, &mut scoped);
        self.pass_on_repairs(from.region, &repaired);
    }

    /// Anti-entropy with `from`'s region changed these slots here: what it brought may be
    /// news to the other peer regions too (a third region's write that only `from`'s region
    /// got before the node that made it failed over to a replica without it: no delta will
    /// ever carry it again). Each link of another region that shares one of the slots runs a
    /// round. It ends: a round asks for more only if it changes something.
    fn pass_on_repairs(&mut self, from: RegionId, repaired: &BTreeSet<u16>) {
        if repaired.is_empty() {
            return;
        }
        for i in &mut self.links {
            if i.peer.region != from && repaired.iter().any(|&s| i.scope.contains(s)) {
                i.link.request_anti_entropy(i.peer.region);
                self.stats.repairs_passed_on += 1;
            }
        }
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.born_ms == 0 {
            self.born_ms = now_ms.max(1);
            for i in &mut self.links {
                i.link.set_born(self.born_ms);
            }
        }
        for i in &mut self.links {
            i.link.handle_timeout(now_ms);
        }
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.links
            .iter()
            .filter_map(|i| i.link.poll_timeout())
            .min()
    }

    pub fn poll_anti_entropy<S: LinkStore + ?Sized>(&mut self, now_ms: u64, store: &mut S) {
        let mut passed = Vec::new();
        for inst in &mut self.links {
            let mut repaired = BTreeSet::new();
            let mut scoped = Scoped {
                inner: &mut *store,
                scope: &inst.scope,
                refused: &mut self.stats.refused,
                region: inst.peer.region,
                tally: &mut self.tally,
                repaired: &mut repaired,
            };
            inst.link.poll_anti_entropy(now_ms, &mut scoped);
            if !repaired.is_empty() {
                passed.push((inst.peer.region, repaired));
            }
        }
        for (from, repaired) in passed {
            self.pass_on_repairs(from, &repaired);
        }
    }

    pub fn has_anti_entropy_work(&self) -> bool {
        self.links.iter().any(|i| i.link.has_anti_entropy_work())
    }

    /// Next frame to send, round-robin over the links.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<(PeerNode, Frame)> {
        let n = self.links.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            if let Some((_, f)) = self.links[i].link.poll_transmit(now_ms) {
                self.rr = i + 1;
                return Some((self.links[i].peer, f));
            }
        }
        None
    }

    /// See [`RegionLink::max_seen_hlc`] (over every link).
    pub fn max_seen_hlc(&self) -> Hlc {
        self.links
            .iter()
            .map(|i| i.link.max_seen_hlc())
            .max()
            .unwrap_or(Hlc::ZERO)
    }

    /// Every link answered its restart handshake.
    pub fn handshake_done(&self) -> bool {
        self.links.iter().all(|i| i.link.handshake_done())
    }

    /// Drop deleted-state metadata that every link's peer has seen: the minimum, per origin
    /// region, of every link's usable GC frontier ([`RegionLink::gc_frontier`]), a region
    /// a link does not know counting as nothing seen. Each link vouches for its own pair
    /// of nodes (what the peer merged of our stream, what we merged of its stream, and its
    /// writes made before it merged a removal: `Frontier::enqueued`); a write of another
    /// node of a region reaches each peer over that node's own link, which the peer's GC
    /// waits for. With three regions or more, a link's entries for the regions other than
    /// its two are the node-wide aggregates of both ends (module doc), so what a third
    /// region wrote is collected once every node that serves its slots holds it. Returns
    /// the entries dropped.
    pub fn collect_garbage<S: LinkStore + ?Sized>(&mut self, store: &mut S) -> usize {
        // Every slot must have a link in every peer region: a slot with no known owner
        // keeps deltas nobody received.
        let routed = self
            .owners
            .iter()
            .all(|(_, o)| o.iter().all(Option::is_some))
            && self.unrouted.iter().all(|(_, u)| u.is_empty());
        if self.links.is_empty() || !routed {
            return 0;
        }
        let mut frontiers = Vec::with_capacity(self.links.len());
        for i in &mut self.links {
            match i.link.gc_frontier() {
                Some(f) => frontiers.push(f),
                None => return 0,
            }
        }
        let mut regions: BTreeSet<RegionId> = BTreeSet::new();
        for f in &frontiers {
            regions.extend(f.keys().copied());
        }
        let stable: std::collections::BTreeMap<RegionId, Hlc> = regions
            .into_iter()
            .map(|r| {
                let h = frontiers
                    .iter()
                    .map(|f| f.get(&r).copied().unwrap_or(Hlc::ZERO))
                    .min()
                    .unwrap_or(Hlc::ZERO);
                (r, h)
            })
            .collect();
        if stable.values().all(|h| *h == Hlc::ZERO) {
            return 0;
        }
        let dropped = store.gc(&|r| stable.get(&r).copied().unwrap_or(Hlc::ZERO));
        if let Some(i) = self.links.first_mut() {
            i.link.note_gc(dropped);
        }
        self.stats.gc_dropped += dropped as u64;
        dropped
    }

    /// Some link's handshake reported a stamp of this region (see
    /// [`RegionLink::restarted`]).
    pub fn restarted(&self) -> bool {
        self.links.iter().any(|i| i.link.restarted())
    }

    /// Ask every link for an anti-entropy round (a restarted node repairs what it lost).
    pub fn request_anti_entropy(&mut self) {
        for i in &mut self.links {
            i.link.request_anti_entropy(i.peer.region);
        }
    }

    /// Every link's counters summed: (link, anti-entropy). Links closed since are not
    /// counted any more.
    pub fn totals(
        &self,
    ) -> (
        crate::proto::link::LinkStats,
        crate::proto::anti_entropy::AntiEntropyStats,
    ) {
        let mut l = crate::proto::link::LinkStats::default();
        let mut a = crate::proto::anti_entropy::AntiEntropyStats::default();
        for i in &self.links {
            let s = i.link.stats();
            l.deltas_enqueued += s.deltas_enqueued;
            l.deltas_sent += s.deltas_sent;
            l.deltas_resent += s.deltas_resent;
            l.deltas_forwarded += s.deltas_forwarded;
            l.deltas_applied += s.deltas_applied;
            l.logs_dropped += s.logs_dropped;
            l.deltas_abandoned += s.deltas_abandoned;
            l.gc_runs += s.gc_runs;
            l.deltas_clock_held += s.deltas_clock_held;
            l.local_losses += s.local_losses;
            l.peers_expelled += s.peers_expelled;
            l.frames_refused += s.frames_refused;
            l.refusals_received += s.refusals_received;
            let e = i.link.anti_entropy_stats();
            a.rounds_completed += e.rounds_completed;
            a.rounds_clean += e.rounds_clean;
            a.entries_received += e.entries_received;
            a.entries_shipped += e.entries_shipped;
            a.entries_clock_held += e.entries_clock_held;
        }
        (l, a)
    }

    /// Local deltas not yet acknowledged by the nodes of `region`.
    pub fn backlog_of(&self, region: RegionId) -> usize {
        self.links
            .iter()
            .filter(|i| i.peer.region == region)
            .map(|i| i.link.backlog(region))
            .sum()
    }

    /// Local deltas not yet acknowledged, over every link.
    pub fn backlog(&self) -> usize {
        self.links
            .iter()
            .map(|i| i.link.backlog(i.peer.region))
            .sum()
    }
}

#[cfg(test)]
#[path = "node_links_tests.rs"]
mod tests;
