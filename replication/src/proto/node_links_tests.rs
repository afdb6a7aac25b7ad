//! Regions as clusters with different slot maps, every node driving a [`NodeLinks`], frames
//! through the codec; a reshard in one region while writes are in flight.

use super::*;
use crate::codec::{decode, encode};
use bytes::Bytes;
use meridian_crdt::{key_slot, HlcClock, Keyspace, KeyspaceConfig};

const A: RegionId = RegionId(0);
const B: RegionId = RegionId(1);
const C: RegionId = RegionId(2);

/// One node: its keyspace (holding only the slots it serves), clock and links.
struct Node {
    region: RegionId,
    id: u64,
    ks: Keyspace,
    clock: HlcClock,
    links: NodeLinks,
    served: SlotSet,
}

/// The node's keyspace as the shell shows it to replication: nothing stored outside the
/// slots it serves.
struct Served<'a> {
    ks: &'a mut Keyspace,
    served: &'a SlotSet,
    refused: &'a mut u64,
}

impl LinkStore for Served<'_> {
    fn apply_delta(&mut self, delta: &Delta) -> Applied {
        if !self.served.contains(delta.slot) {
            *self.refused += 1;
            return Applied::Unchanged;
        }
        LinkStore::apply_delta(self.ks, delta)
    }
    fn merge_full(&mut self, key: &[u8], state: &Entry) -> Applied {
        if !self.served.contains(key_slot(key)) {
            *self.refused += 1;
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
        LinkStore::gc(self.ks, stable)
    }
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

/// Region `region`'s nodes, node `i` serving `[cuts[i], cuts[i+1])`, with A and B the
/// only regions.
fn region_nodes(region: RegionId, cuts: &[u16], epoch: u64) -> Vec<Node> {
    region_nodes_among(region, cuts, epoch, &[A, B])
}

/// As [`region_nodes`], among `regions` (every other one a peer).
fn region_nodes_among(
    region: RegionId,
    cuts: &[u16],
    epoch: u64,
    regions: &[RegionId],
) -> Vec<Node> {
    let peers: Vec<RegionId> = regions.iter().copied().filter(|&r| r != region).collect();
    (0..cuts.len() - 1)
        .map(|i| {
            let mut served = SlotSet::default();
            for s in cuts[i]..cuts[i + 1] {
                served.insert(s);
            }
            Node {
                region,
                id: i as u64,
                ks: Keyspace::new(KeyspaceConfig {
                    region,
                    retain_tombstones: true,
                    seed: 1,
                }),
                clock: HlcClock::new(region),
                links: NodeLinks::new(region, &peers, epoch + 1000 * i as u64, cfg()),
                served,
            }
        })
        .collect()
}

fn owner_in(nodes: &[Node], region: RegionId, slot: u16) -> Option<u64> {
    nodes
        .iter()
        .find(|n| n.region == region && n.served.contains(slot))
        .map(|n| n.id)
}

/// Every node learns the other region's current slot map.
fn publish_topology(nodes: &mut [Node]) {
    let maps: Vec<(RegionId, Vec<Option<u64>>)> = [A, B, C]
        .iter()
        .map(|&r| {
            (
                r,
                (0..SLOT_COUNT as u16)
                    .map(|s| owner_in(nodes, r, s))
                    .collect(),
            )
        })
        .collect();
    for n in nodes.iter_mut() {
        for (r, map) in &maps {
            if *r != n.region {
                n.links.set_owners(*r, |s| map[usize::from(s)]);
            }
        }
    }
}

fn wire(f: Frame) -> Frame {
    decode(&encode(&f).expect("encodes"))
        .expect("decodes")
        .expect("complete")
        .0
}

/// Drain, send and deliver until nothing moves (time advancing so timers fire). Frames to
/// a node that `drop_to` names are lost: then it runs 500 rounds (its backlog never
/// drains).
fn pump(now: &mut u64, nodes: &mut [Node], drop_to: Option<(RegionId, u64)>) -> u64 {
    let mut refused = 0;
    let limit = drop_to.map(|_| 500);
    let quiet = step(now, nodes, limit, &mut refused, &mut |_, to, _| {
        drop_to != Some((to.region, to.node))
    });
    if quiet || drop_to.is_some() {
        return refused;
    }
    let backlog: Vec<usize> = nodes.iter().map(|n| n.links.backlog()).collect();
    let busy: Vec<bool> = nodes
        .iter()
        .map(|n| n.links.has_anti_entropy_work())
        .collect();
    for n in nodes.iter() {
        for (p, sc) in n.links.peers() {
            let l = n.links.link(p).expect("link");
            eprintln!(
                "{:?}/{} -> {:?}: scope {sc} ae {:?} gaps {} stats {:?}",
                n.region,
                n.id,
                p,
                l.anti_entropy_stats(),
                l.local_gap_slots(),
                l.stats()
            );
        }
    }
    panic!("the links keep talking: backlog {backlog:?} ae work {busy:?}");
}

/// As [`pump`], with the regions `cut` apart (frames between them lost both ways): runs
/// 500 rounds (the logs across the cut never drain).
fn pump_cut(now: &mut u64, nodes: &mut [Node], cut: (RegionId, RegionId)) -> u64 {
    let mut refused = 0;
    step(now, nodes, Some(500), &mut refused, &mut |from, to, _| {
        (from.region, to.region) != cut && (to.region, from.region) != cut
    });
    refused
}

/// The loop of [`pump`], a frame delivered only if `deliver(from, to, frame)` says so:
/// until everything is quiet across a resend timeout and an anti-entropy retry, so no timer
/// is left to fire (at most 20 000 rounds; returns whether it went quiet), or exactly
/// `limit` rounds (returns `false`).
fn step(
    now: &mut u64,
    nodes: &mut [Node],
    limit: Option<usize>,
    refused: &mut u64,
    deliver: &mut dyn FnMut(PeerNode, PeerNode, &Frame) -> bool,
) -> bool {
    let mut quiet_since: Option<u64> = None;
    for _ in 0..limit.unwrap_or(20_000) {
        let mut moved = false;
        let mut out: Vec<(PeerNode, PeerNode, Frame)> = Vec::new();
        for n in nodes.iter_mut() {
            let deltas: Vec<Delta> = n.ks.drain_deltas().collect();
            for d in deltas {
                n.links.enqueue(*now, d);
            }
            // As the shell's drain: the clock takes the wall clock first, so an idle node's
            // own entry keeps up with the other nodes of its region (their stamps share
            // the region's entry).
            n.clock.observe(Hlc::from_parts(*now, 0));
            n.links.note_local_hlc(n.clock.last());
            n.links.handle_timeout(*now);
            let mut st = Served {
                ks: &mut n.ks,
                served: &n.served,
                refused: &mut *refused,
            };
            n.links.poll_anti_entropy(*now, &mut st);
            while let Some((to, f)) = n.links.poll_transmit(*now) {
                out.push((
                    PeerNode {
                        region: n.region,
                        node: n.id,
                    },
                    to,
                    wire(f),
                ));
            }
        }
        for (from, to, f) in out {
            // Periodic gossip (frontiers, acks) never stops: only data counts as moving.
            moved |= matches!(f, Frame::Batch(_)) || f.is_anti_entropy();
            if std::env::var("NL_TRACE").is_ok() {
                let name = format!("{f:?}");
                eprintln!(
                    "{}: {}/{} -> {}/{}: {}",
                    now,
                    from.region.0,
                    from.node,
                    to.region.0,
                    to.node,
                    &name[..name.len().min(220)]
                );
            }
            if !deliver(from, to, &f) {
                continue;
            }
            let Some(n) = nodes
                .iter_mut()
                .find(|n| n.region == to.region && n.id == to.node)
            else {
                continue;
            };
            let mut st = Served {
                ks: &mut n.ks,
                served: &n.served,
                refused: &mut *refused,
            };
            n.links.handle_frame(*now, from, f, &mut st);
            let seen = n.links.max_seen_hlc();
            n.clock.observe(seen);
        }
        let busy = nodes.iter().any(|n| n.links.has_anti_entropy_work());
        if !moved && !busy && nodes.iter().all(|n| n.links.backlog() == 0) {
            let since = *quiet_since.get_or_insert(*now);
            let span = cfg().resend_timeout_ms + cfg().anti_entropy_retry_ms;
            if limit.is_none() && *now >= since + span {
                return true;
            }
        } else {
            quiet_since = None;
        }
        // Time passes only when nothing is in progress (the shell steps anti-entropy again
        // at once while it has work), so timers fire without abandoning rounds in flight.
        if !moved && !busy {
            *now += 10;
        }
    }
    false
}

/// A write at the node of `region` serving `key`'s slot.
fn write(
    nodes: &mut [Node],
    now: u64,
    region: RegionId,
    key: &str,
    f: impl FnOnce(&mut meridian_crdt::EntryWriter),
) {
    let slot = key_slot(key.as_bytes());
    let n = nodes
        .iter_mut()
        .find(|n| n.region == region && n.served.contains(slot))
        .expect("an owner");
    let st = n.clock.now(now);
    n.ks.write(key.as_bytes(), st, now, f);
}

fn value(nodes: &[Node], region: RegionId, key: &str) -> Option<String> {
    let slot = key_slot(key.as_bytes());
    let n = nodes
        .iter()
        .find(|n| n.region == region && n.served.contains(slot))
        .expect("an owner");
    n.ks.peek(key.as_bytes(), 0).and_then(|e| {
        e.as_str()
            .and_then(|s| s.bytes())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    })
}

/// No node stores a key of a slot it does not serve; every key is equal at its owners.
fn check(nodes: &[Node], keys: &[String], counters: &[(String, i64)]) {
    for n in nodes {
        for s in 0..SLOT_COUNT as u16 {
            if !n.served.contains(s) {
                assert_eq!(
                    n.ks.slot_len(s),
                    0,
                    "{:?} node {} stores slot {s} it does not serve",
                    n.region,
                    n.id
                );
            }
        }
    }
    for k in keys {
        let (a, b) = (value(nodes, A, k), value(nodes, B, k));
        assert!(a.is_some(), "{k} missing in A");
        assert_eq!(a, b, "{k}");
    }
    for (k, want) in counters {
        for r in [A, B] {
            assert_eq!(
                value(nodes, r, k),
                Some(want.to_string()),
                "counter {k} in {r:?}"
            );
        }
    }
}

/// Region A has two primaries, region B three, with different slot maps. Writes of every
/// owner in both regions and counters incremented in both converge exactly, each key only
/// at the node serving its slot. Then B moves a slot range between two of its nodes (its
/// keys migrate) while deltas to the old owner are in flight and lost: the new owner's
/// links repair those slots by anti-entropy, and counters stay exact.
#[test]
fn clustered_regions_with_different_slot_maps_converge_through_a_reshard() {
    let mut nodes: Vec<Node> = region_nodes(A, &[0, 8192, 16384], 10);
    nodes.extend(region_nodes(B, &[0, 5000, 11000, 16384], 20_000));
    publish_topology(&mut nodes);
    let mut now = 1_000_000u64;
    let mut keys: Vec<String> = Vec::new();
    let mut counters: Vec<(String, i64)> = Vec::new();
    for i in 0..300 {
        let (r, k) = if i % 2 == 0 {
            (A, format!("a{i}"))
        } else {
            (B, format!("b{i}"))
        };
        write(&mut nodes, now, r, &k, |w| {
            w.set_str(Bytes::from(format!("v{i}")), false);
        });
        keys.push(k);
    }
    for j in 0..40 {
        let k = format!("ctr{j}");
        for r in [A, B] {
            write(&mut nodes, now, r, &k, |w| {
                w.incr_by(1).expect("a counter");
            });
        }
        counters.push((k, 2));
    }
    pump(&mut now, &mut nodes, None);
    check(&nodes, &keys, &counters);
    let links: usize = nodes.iter().map(|n| n.links.peers().count()).sum();
    assert!(
        links >= 2 * 4,
        "each pair with shared slots has a link: {links}"
    );

    // Writes in A to keys B's node 1 serves, then B moves 5000..6000 from node 1 to node
    // 2 while those deltas are lost on their way to node 1.
    let moving = |k: &str| (5000..6000).contains(&key_slot(k.as_bytes()));
    let mut in_flight = Vec::new();
    for i in 0..3000 {
        let k = format!("m{i}");
        if moving(&k) {
            write(&mut nodes, now, A, &k, |w| {
                w.set_str(Bytes::from(format!("x{i}")), false);
            });
            in_flight.push(k);
        }
    }
    for (k, _) in counters.iter().filter(|(k, _)| moving(k)) {
        write(&mut nodes, now, A, k, |w| {
            w.incr_by(1).expect("a counter");
        });
    }
    assert!(!in_flight.is_empty());
    // Ship A's deltas; node 1 of B never gets them.
    pump(&mut now, &mut nodes, Some((B, 1)));
    // The migration: node 1's keys of the range go to node 2 (merged), node 1 drops them.
    let b1 = nodes
        .iter()
        .position(|n| n.region == B && n.id == 1)
        .expect("b1");
    let b2 = nodes
        .iter()
        .position(|n| n.region == B && n.id == 2)
        .expect("b2");
    let mut moved: Vec<(Bytes, Entry)> = Vec::new();
    for s in 5000..6000u16 {
        LinkStore::for_each_entry(&nodes[b1].ks, s, &mut |k, e| {
            moved.push((Bytes::copy_from_slice(k), e.clone()))
        });
        nodes[b1].served.remove(s);
        nodes[b1].ks.drop_slot(s);
        nodes[b2].served.insert(s);
    }
    for (k, e) in &moved {
        nodes[b2].ks.merge_state(k, true, e);
    }
    publish_topology(&mut nodes);
    for (k, v) in counters.iter_mut().filter(|(k, _)| moving(k)) {
        write(&mut nodes, now, B, k, |w| {
            w.incr_by(1).expect("a counter");
        });
        *v += 2;
    }
    pump(&mut now, &mut nodes, None);
    keys.extend(in_flight);
    check(&nodes, &keys, &counters);
    let a_stats: u64 = nodes
        .iter()
        .filter(|n| n.region == A)
        .map(|n| n.links.stats().slots_rerouted)
        .sum();
    assert!(a_stats >= 1000, "A saw the range change hands: {a_stats}");
}

/// A delta with no known owner (the peer's topology not learned yet) is counted, and its
/// slot repaired once the map arrives.
#[test]
fn deltas_before_the_peer_topology_is_known_are_repaired_once_routed() {
    let mut nodes: Vec<Node> = region_nodes(A, &[0, 16384], 10);
    nodes.extend(region_nodes(B, &[0, 9000, 16384], 20_000));
    let mut now = 1_000_000u64;
    let keys: Vec<String> = (0..50).map(|i| format!("early{i}")).collect();
    for k in &keys {
        write(&mut nodes, now, A, k, |w| {
            w.set_str(Bytes::from_static(b"v"), false);
        });
    }
    pump(&mut now, &mut nodes, None);
    assert!(nodes[0].links.stats().unrouted >= 50);
    publish_topology(&mut nodes);
    pump(&mut now, &mut nodes, None);
    check(&nodes, &keys, &[]);
}

/// Deleted-state metadata is collected in node mode once every link's peer has seen it, and
/// what was deleted stays deleted everywhere (a later write in the other region of a key
/// deleted earlier shows only that write).
#[test]
fn tombstones_are_collected_across_node_links_and_deletes_stay() {
    let mut nodes: Vec<Node> = region_nodes(A, &[0, 8192, 16384], 10);
    nodes.extend(region_nodes(B, &[0, 5000, 11000, 16384], 20_000));
    publish_topology(&mut nodes);
    let mut now = 1_000_000u64;
    let keys: Vec<String> = (0..200).map(|i| format!("g{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let r = if i % 2 == 0 { A } else { B };
        write(&mut nodes, now, r, k, |w| {
            w.sadd(b"m");
        });
    }
    pump(&mut now, &mut nodes, None);
    // A new link's first batch opens a gap on the receiving side (a new incarnation may
    // follow one whose deltas were lost), closed by the next periodic anti-entropy round.
    now += cfg().anti_entropy_interval_ms + 1;
    pump(&mut now, &mut nodes, None);
    // Half deleted, from the region that did not write them.
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 4 < 2) {
        let r = if i % 2 == 0 { B } else { A };
        write(&mut nodes, now, r, k, |w| {
            w.srem(b"m");
        });
    }
    let tombstones =
        |nodes: &[Node]| -> usize { nodes.iter().map(|n| n.ks.stats().tombstones).sum() };
    pump(&mut now, &mut nodes, None);
    assert!(tombstones(&nodes) >= 100, "{}", tombstones(&nodes));
    let mut dropped = 0;
    for _ in 0..20 {
        now += 200;
        pump(&mut now, &mut nodes, None);
        for n in nodes.iter_mut() {
            let mut refused = 0;
            let mut st = Served {
                ks: &mut n.ks,
                served: &n.served,
                refused: &mut refused,
            };
            dropped += n.links.collect_garbage(&mut st);
        }
        if tombstones(&nodes) == 0 {
            break;
        }
    }
    if tombstones(&nodes) > 0 {
        for n in nodes.iter() {
            eprintln!(
                "{:?}/{} tombstones {}",
                n.region,
                n.id,
                n.ks.stats().tombstones
            );
            for (p, sc) in n.links.peers() {
                let l = n.links.link(p).expect("link");
                eprintln!(
                    "{:?}/{} -> {:?} scope {sc}: gaps {} stable {:?} seen {:?} ae {:?}",
                    n.region,
                    n.id,
                    p,
                    l.local_gap_slots(),
                    l.stable_frontier(),
                    l.seen_vector(),
                    l.anti_entropy_stats()
                );
            }
        }
    }
    assert!(dropped > 0);
    assert_eq!(tombstones(&nodes), 0, "every tombstone collected");
    // Re-add in the other region after collection: only that add shows; deleted keys
    // that nobody wrote again stay absent everywhere.
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 4 == 0) {
        let r = if i % 2 == 0 { A } else { B };
        write(&mut nodes, now, r, k, |w| {
            w.sadd(b"again");
        });
    }
    pump(&mut now, &mut nodes, None);
    for (i, k) in keys.iter().enumerate() {
        for r in [A, B] {
            let slot = key_slot(k.as_bytes());
            let n = nodes
                .iter()
                .find(|n| n.region == r && n.served.contains(slot))
                .expect("owner");
            let members: Vec<Vec<u8>> =
                n.ks.peek(k.as_bytes(), 0)
                    .and_then(|e| {
                        e.as_set()
                            .map(|s| s.members().map(<[u8]>::to_vec).collect())
                    })
                    .unwrap_or_default();
            let want: Vec<Vec<u8>> = match i % 4 {
                0 => vec![b"again".to_vec()],
                1 => vec![],
                _ => vec![b"m".to_vec()],
            };
            assert_eq!(members, want, "{k} in {r:?}");
        }
    }
}

/// Cluster simulator seeds 276, 690 and 946 (`meridian-sim --clustered --anti-entropy-ms 0`):
/// B's topology reaches A's node late. Until then A refuses (and acknowledges) B's deltas,
/// and every round between the two is unclean. Once A learns the map, the round it runs
/// cannot repair the key yet: A's own delta of it is in flight (so A does not ship it), and
/// B leaves its copy to A (A offers a newer version). That round is unclean, so a re-check
/// follows; its answer is lost, as B's own re-check was. An unanswered round used to wait
/// for the next periodic round (never, with periodic rounds off; 30 s by default): A lacked
/// B's increment for good. It is started again after `anti_entropy_retry_ms`.
#[test]
fn an_unanswered_recheck_round_is_started_again() {
    let mut nodes: Vec<Node> = region_nodes(A, &[0, 16384], 10);
    nodes.extend(region_nodes(B, &[0, 16384], 20_000));
    let (a0, b0) = (0, 1);
    let from = |r: RegionId| PeerNode { region: r, node: 0 };
    let key = "k";
    let slot = key_slot(key.as_bytes());
    let mut now = 1_000_000u64;
    let mut refused = 0;
    // B knows A's map, A does not know B's yet: B's increment reaches A and is refused,
    // and B's rounds with A are unclean.
    nodes[b0].links.set_owners(A, |_| Some(0));
    write(&mut nodes, now, B, key, |w| {
        w.incr_by(5).expect("a counter");
    });
    step(
        &mut now,
        &mut nodes,
        Some(50),
        &mut refused,
        &mut |_, _, _| true,
    );
    assert!(nodes[a0].links.stats().refused >= 1, "A refused B's delta");
    assert_eq!(nodes[b0].links.backlog(), 0, "and acknowledged it");
    assert_eq!(value(&nodes, A, key), None);
    let ae = |n: &Node, r: RegionId| {
        n.links
            .link(PeerNode { region: r, node: 0 })
            .expect("a link")
            .anti_entropy_stats()
            .clone()
    };
    let b = ae(&nodes[b0], A);
    assert!(b.rounds_completed > b.rounds_clean, "{b:?}");
    // Every anti-entropy frame lost for a while: B's re-check rounds go unanswered.
    step(
        &mut now,
        &mut nodes,
        Some(50),
        &mut refused,
        &mut |_, _, f| !f.is_anti_entropy(),
    );
    // A learns B's map (the slot becomes a gap of its link to B, repaired by a round) and
    // increments the counter too, later than B did; its delta stays in flight through A's
    // first round.
    now += 1_000;
    nodes[a0].links.set_owners(B, |_| Some(0));
    write(&mut nodes, now, A, key, |w| {
        w.incr_by(1).expect("a counter");
    });
    let mut unclean = false;
    let mut lost = false;
    let quiet = step(
        &mut now,
        &mut nodes,
        None,
        &mut refused,
        &mut |f, _, frame| {
            match frame {
                Frame::Batch(_) if f == from(A) => unclean,
                Frame::AeKeys(k) if f == from(B) && k.slots.iter().any(|s| s.slot == slot) => {
                    if unclean && !lost {
                        // The re-check's answer.
                        lost = true;
                        return false;
                    }
                    unclean = true;
                    true
                }
                _ => true,
            }
        },
    );
    assert!(quiet && lost, "quiet {quiet} lost {lost}");
    assert_eq!(value(&nodes, A, key).as_deref(), Some("6"));
    assert_eq!(value(&nodes, B, key).as_deref(), Some("6"));
}

// ---- GC with three regions: the node-wide aggregate ----

const ABC: [RegionId; 3] = [A, B, C];

/// Region A has two nodes (0..6000, 6000..16384), B two with other cuts (its node 0,
/// 0..10000, covers all of A's node 0 and only part of A's node 1), C one.
fn three_regions() -> Vec<Node> {
    let mut nodes = region_nodes_among(A, &[0, 6000, 16384], 10, &ABC);
    nodes.extend(region_nodes_among(B, &[0, 10000, 16384], 20_000, &ABC));
    nodes.extend(region_nodes_among(C, &[0, 16384], 40_000, &ABC));
    publish_topology(&mut nodes);
    nodes
}

/// Converge, then let periodic anti-entropy rounds run twice: the first closes the gaps new
/// links open (see `tombstones_are_collected_across_node_links_and_deletes_stay`) and the
/// reroute gaps of each side, the second brings each stream's `seen` up to its peer's own
/// claim, which that first round found still held by the peer's reroute gap (a stream
/// with no later batch does not advance otherwise).
fn settle(now: &mut u64, nodes: &mut [Node]) {
    pump(now, nodes, None);
    for _ in 0..2 {
        *now += cfg().anti_entropy_interval_ms + 1;
        pump(now, nodes, None);
    }
}

fn tombstones(nodes: &[Node]) -> usize {
    nodes.iter().map(|n| n.ks.stats().tombstones).sum()
}

/// GC as the shell runs it, a round every 200 ms (with `cut` in force, if any): up to
/// `rounds`, or, without a cut, until no tombstone is left. Returns the entries dropped.
fn gc_rounds(
    now: &mut u64,
    nodes: &mut [Node],
    rounds: usize,
    cut: Option<(RegionId, RegionId)>,
) -> usize {
    let mut dropped = 0;
    for _ in 0..rounds {
        *now += 200;
        match cut {
            Some(c) => pump_cut(now, nodes, c),
            None => pump(now, nodes, None),
        };
        for n in nodes.iter_mut() {
            let mut refused = 0;
            let mut st = Served {
                ks: &mut n.ks,
                served: &n.served,
                refused: &mut refused,
            };
            dropped += n.links.collect_garbage(&mut st);
        }
        if cut.is_none() && tombstones(nodes) == 0 {
            break;
        }
    }
    dropped
}

/// The set members `key` reads at its owner in `region` (none: absent or a tombstone).
fn members(nodes: &[Node], region: RegionId, key: &str) -> Vec<Vec<u8>> {
    let slot = key_slot(key.as_bytes());
    let n = nodes
        .iter()
        .find(|n| n.region == region && n.served.contains(slot))
        .expect("an owner");
    n.ks.peek(key.as_bytes(), 0)
        .and_then(|e| {
            e.as_set()
                .map(|s| s.members().map(<[u8]>::to_vec).collect())
        })
        .unwrap_or_default()
}

/// Keys each written in all three regions, then deleted: every tombstone carries stamps of
/// the two regions other than the one holding it. A link knows only its own two regions;
/// with the node-wide aggregate in each link's frontier gossip, every tombstone is
/// collected at every node (without it, none is), and deletes stay.
fn three_region_tombstones(aggregate: bool) -> (Vec<Node>, usize) {
    let mut nodes = three_regions();
    if !aggregate {
        for n in nodes.iter_mut() {
            n.links.inject_bug_no_gc_aggregate();
        }
    }
    let mut now = 1_000_000u64;
    let keys: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    for k in &keys {
        for (r, m) in ABC.iter().zip([&b"a"[..], b"b", b"c"]) {
            write(&mut nodes, now, *r, k, |w| {
                w.sadd(m);
            });
        }
    }
    settle(&mut now, &mut nodes);
    for k in &keys {
        for r in ABC {
            assert_eq!(members(&nodes, r, k).len(), 3, "{k} in {r:?}");
        }
    }
    for (i, k) in keys.iter().enumerate() {
        write(&mut nodes, now, ABC[i % 3], k, |w| {
            w.delete();
        });
    }
    pump(&mut now, &mut nodes, None);
    assert_eq!(tombstones(&nodes), 3 * keys.len(), "one per key and region");
    let dropped = gc_rounds(&mut now, &mut nodes, 30, None);
    (nodes, dropped)
}

#[test]
fn three_regions_tombstones_of_every_regions_writes_are_collected() {
    let (mut nodes, dropped) = three_region_tombstones(true);
    if tombstones(&nodes) > 0 {
        dump(&nodes);
    }
    for n in &nodes {
        assert_eq!(
            n.ks.stats().tombstones,
            0,
            "{:?}/{} keeps tombstones; aggregate {:?}",
            n.region,
            n.id,
            n.links.aggregate()
        );
    }
    assert_eq!(dropped, 600);
    // Re-added in one region after collection: only that add shows; the others stay
    // deleted everywhere.
    let mut now = 10_000_000u64;
    for i in (0..200).filter(|i| i % 4 == 0) {
        write(&mut nodes, now, ABC[(i + 1) % 3], &format!("t{i}"), |w| {
            w.sadd(b"again");
        });
    }
    pump(&mut now, &mut nodes, None);
    for i in 0..200 {
        let k = format!("t{i}");
        let want: Vec<Vec<u8>> = if i % 4 == 0 {
            vec![b"again".to_vec()]
        } else {
            vec![]
        };
        for r in ABC {
            assert_eq!(members(&nodes, r, &k), want, "{k} in {r:?}");
        }
    }
}

/// The same run with links that get no third-party entries (the simulator's
/// `no-gc-aggregate` bug): a link's frontier has nothing for the third region, so nothing
/// with its stamps is ever collected.
#[test]
fn three_regions_without_the_aggregate_keep_every_tombstone() {
    let (nodes, dropped) = three_region_tombstones(false);
    assert_eq!(dropped, 0);
    assert_eq!(tombstones(&nodes), 600);
}

/// B and C are cut apart. C adds a member to keys of every node's slots; A merges it and
/// removes it; B gets only A's removal. Every node of A holds C's write and the removal,
/// and its links to C vouch for both, but B's nodes do not hold C's write: their aggregate
/// of C, gossiped to A's nodes (each of which shares slots with both of B's nodes), holds
/// every tombstone of those keys back, at A as at C. A tombstone of A's own writes is
/// collected at A meanwhile (GC runs). Once B and C meet again, everything is collected
/// and C's member never comes back.
#[test]
fn a_tombstone_is_kept_while_a_node_lacks_the_third_regions_write() {
    let mut nodes = three_regions();
    let mut now = 1_000_000u64;
    for i in 0..30 {
        write(&mut nodes, now, ABC[i % 3], &format!("warm{i}"), |w| {
            w.set_str(Bytes::from_static(b"v"), false);
        });
    }
    settle(&mut now, &mut nodes);
    let keys: Vec<String> = (0..100).map(|i| format!("x{i}")).collect();
    let spread = |r: RegionId, nodes: &[Node]| -> BTreeSet<u64> {
        keys.iter()
            .map(|k| owner_in(nodes, r, key_slot(k.as_bytes())).expect("owner"))
            .collect()
    };
    assert_eq!(spread(A, &nodes).len(), 2, "keys on both nodes of A");
    assert_eq!(spread(B, &nodes).len(), 2, "keys on both nodes of B");
    for k in &keys {
        write(&mut nodes, now, C, k, |w| {
            w.sadd(b"c");
        });
    }
    pump_cut(&mut now, &mut nodes, (B, C));
    for k in &keys {
        assert_eq!(members(&nodes, A, k), vec![b"c".to_vec()], "{k} reached A");
        assert!(members(&nodes, B, k).is_empty(), "{k} did not reach B");
    }
    for k in &keys {
        write(&mut nodes, now, A, k, |w| {
            w.srem(b"c");
        });
    }
    let own: Vec<String> = (0..50).map(|i| format!("own{i}")).collect();
    for k in &own {
        write(&mut nodes, now, A, k, |w| {
            w.sadd(b"m");
        });
        write(&mut nodes, now, A, k, |w| {
            w.srem(b"m");
        });
    }
    pump_cut(&mut now, &mut nodes, (B, C));
    let kept = |nodes: &[Node], region: RegionId, keys: &[String]| -> usize {
        keys.iter()
            .filter(|k| {
                let slot = key_slot(k.as_bytes());
                nodes
                    .iter()
                    .filter(|n| n.region == region && n.served.contains(slot))
                    .any(|n| n.ks.raw_entry(k.as_bytes()).is_some())
            })
            .count()
    };
    assert_eq!(kept(&nodes, A, &keys), keys.len());
    assert_eq!(kept(&nodes, B, &keys), keys.len(), "B holds A's removal");
    assert_eq!(kept(&nodes, A, &own), own.len());
    let dropped = gc_rounds(&mut now, &mut nodes, 20, Some((B, C)));
    assert!(dropped >= own.len(), "GC runs meanwhile: {dropped}");
    assert_eq!(
        kept(&nodes, A, &own),
        0,
        "A's own tombstones collected at A"
    );
    for r in ABC {
        assert_eq!(
            kept(&nodes, r, &keys),
            keys.len(),
            "{r:?} collected a tombstone of C's write that B lacks"
        );
    }
    // B and C meet again: C's write reaches B (dead on arrival), and GC goes on.
    gc_rounds(&mut now, &mut nodes, 40, None);
    if tombstones(&nodes) > 0 {
        dump(&nodes);
    }
    assert_eq!(tombstones(&nodes), 0, "every tombstone collected");
    for k in &keys {
        for r in ABC {
            assert!(members(&nodes, r, k).is_empty(), "{k} in {r:?}");
        }
    }
}

/// Each node's aggregate and links, for a failing assertion.
fn dump(nodes: &[Node]) {
    for n in nodes {
        eprintln!(
            "{:?}/{} aggregate {:?} tombstones {}",
            n.region,
            n.id,
            n.links.aggregate(),
            n.ks.stats().tombstones
        );
        for (p, sc) in n.links.peers() {
            let l = n.links.link(p).expect("link");
            eprintln!(
                "   -> {:?}/{} scope {sc}: backlog {} gaps {} stable {:?} seen {:?}",
                p.region,
                p.node,
                l.backlog(p.region),
                l.local_gap_slots(),
                l.stable_frontier(),
                l.seen_vector(),
            );
        }
    }
}

/// Region C is forgotten (`MERIDIAN REGION FORGET`, on every node of A and B) and goes
/// away. Each node keeps what it held of C when it forgot it as C's entry in its
/// aggregate, so tombstones of keys C wrote to are still collected at A and B (without it
/// no link would know C any more, and C's stamps would never be collected).
#[test]
fn tombstones_with_a_forgotten_regions_stamps_are_still_collected() {
    let mut nodes = three_regions();
    let mut now = 1_000_000u64;
    let keys: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
    for k in &keys {
        for (r, m) in ABC.iter().zip([&b"a"[..], b"b", b"c"]) {
            write(&mut nodes, now, *r, k, |w| {
                w.sadd(m);
            });
        }
    }
    settle(&mut now, &mut nodes);
    for k in &keys {
        assert_eq!(members(&nodes, B, k).len(), 3, "{k}");
    }
    // A few rounds of gossip, so every node's aggregate of C covers C's writes.
    gc_rounds(&mut now, &mut nodes, 5, None);
    for n in nodes.iter_mut().filter(|n| n.region != C) {
        assert!(n.links.forget_region(C, now));
        let held = n.links.aggregate();
        assert!(
            held.iter().any(|&(r, h)| r == C && h > Hlc::ZERO),
            "{:?}/{} keeps what it held of C: {held:?}",
            n.region,
            n.id
        );
    }
    nodes.retain(|n| n.region != C);
    for (i, k) in keys.iter().enumerate() {
        write(&mut nodes, now, [A, B][i % 2], k, |w| {
            w.delete();
        });
    }
    pump(&mut now, &mut nodes, None);
    assert_eq!(tombstones(&nodes), 2 * keys.len(), "one per key at A and B");
    gc_rounds(&mut now, &mut nodes, 30, None);
    if tombstones(&nodes) > 0 {
        dump(&nodes);
    }
    assert_eq!(tombstones(&nodes), 0, "collected without C");
}
