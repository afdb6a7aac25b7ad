//! Region topology discovery (sans-IO): what a region tells its peers about its nodes, and a
//! follower of the peer regions' answers.
//!
//! A region is a cluster of primaries (each serving a set of hash slots) or a single node
//! serving all 16384. Inter-region replication runs over one link per pair of primaries
//! whose served slots intersect (ARCHITECTURE.md, "Clustered regions"). A node asks any
//! node of a peer region for its [`RegionTopology`] (`Frame::TopologyRequest` →
//! `Frame::Topology`, see [`crate::codec`]); [`PeerTopologies`] keeps the newest answer per
//! peer region, answers "who serves this slot there" ([`PeerTopologies::owner`]), computes
//! the node pairs this node should link with ([`PeerTopologies::pairs`]) and, with
//! [`diff_links`], which links to open, rescope and close when either side's slots change.
//!
//! Everything is plain data: no clock, no I/O. A topology that fails [`RegionTopology::validate`]
//! is a decode error on the wire and is never stored.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use meridian_crdt::SLOT_COUNT;
use meridian_regions::topology::{ranges_of, SlotBitmap};
use serde::{Deserialize, Serialize};

/// Most nodes one region may list (Redis Cluster's practical bound is 1000).
pub const MAX_TOPOLOGY_NODES: usize = 1024;
/// Longest region name accepted.
pub const MAX_REGION_NAME_BYTES: usize = 255;
/// Longest host name in a replication address (a DNS name's bound).
pub const MAX_HOST_BYTES: usize = 255;

const NO_OWNER: u16 = u16::MAX;
// Node indexes must fit below the sentinel.
const _: () = assert!(MAX_TOPOLOGY_NODES < NO_OWNER as usize);

/// One node of a region as its peers need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopoNode {
    /// The node's cluster id (`NodeId`'s uuid as a `u128`); 0 for a region that is a single
    /// node without a cluster.
    pub id: u128,
    /// Its inter-region replication endpoint, `host:port` (`[v6]:port` for an IPv6 literal).
    pub repl_addr: String,
    /// Slots it serves as a primary: inclusive `(start, end)` ranges, ascending and
    /// disjoint. Empty for a replica.
    pub slots: Vec<(u16, u16)>,
    pub primary: bool,
}

/// A region's nodes and who serves which slot, as one of its nodes sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionTopology {
    pub region: String,
    /// Orders answers: the greatest config epoch the answering node knows (a slot moves
    /// and a failover happens only with a new epoch). See [`PeerTopologies::update`].
    pub version: u64,
    pub nodes: Vec<TopoNode>,
}

impl RegionTopology {
    /// A region that is one node: a primary serving every slot.
    pub fn single(region: impl Into<String>, version: u64, id: u128, repl_addr: String) -> Self {
        RegionTopology {
            region: region.into(),
            version,
            nodes: vec![TopoNode {
                id,
                repl_addr,
                slots: vec![(0, (SLOT_COUNT - 1) as u16)],
                primary: true,
            }],
        }
    }

    /// What the decoder checks: a region name, at most [`MAX_TOPOLOGY_NODES`] nodes with
    /// unique ids and addresses, every address `host:port`, slot ranges within
    /// `0..16384`, ascending and disjoint, no slots on a replica, and no slot served by two
    /// primaries.
    pub fn validate(&self) -> Result<(), &'static str> {
        self.owner_table().map(drop)
    }

    /// Slot → index into `nodes` (`NO_OWNER` = nobody), validating on the way.
    fn owner_table(&self) -> Result<Box<[u16]>, &'static str> {
        if self.region.is_empty() || self.region.len() > MAX_REGION_NAME_BYTES {
            return Err("topology: bad region name");
        }
        if self.nodes.len() > MAX_TOPOLOGY_NODES {
            return Err("topology: too many nodes");
        }
        let mut owners = vec![NO_OWNER; SLOT_COUNT].into_boxed_slice();
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            check_addr(&n.repl_addr)?;
            if !ids.insert(n.id) || !addrs.insert(n.repl_addr.as_str()) {
                return Err("topology: duplicate node id or address");
            }
            check_ranges(&n.slots)?;
            if !n.primary && !n.slots.is_empty() {
                return Err("topology: a replica serves no slots");
            }
            let idx = u16::try_from(i).map_err(|_| "topology: too many nodes")?;
            for &(start, end) in &n.slots {
                for s in start..=end {
                    // In range: `check_ranges` bounded `end` below SLOT_COUNT.
                    let o = owners
                        .get_mut(usize::from(s))
                        .ok_or("topology: slot out of range")?;
                    if *o != NO_OWNER {
                        return Err("topology: a slot served by two primaries");
                    }
                    *o = idx;
                }
            }
        }
        Ok(owners)
    }
}

/// `host:port` with a non-zero port; the host a name (letters, digits, `.`, `-`, `_`) or
/// a bracketed IPv6 literal.
pub fn check_addr(addr: &str) -> Result<(), &'static str> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or("topology: address without a port")?;
    if port.is_empty()
        || port.len() > 5
        || !port.bytes().all(|b| b.is_ascii_digit())
        || !matches!(port.parse::<u16>(), Ok(p) if p != 0)
    {
        return Err("topology: bad port");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner.strip_suffix(']').ok_or("topology: bad host")?;
        return v6
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| "topology: bad host");
    }
    if host.is_empty()
        || host.len() > MAX_HOST_BYTES
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("topology: bad host");
    }
    Ok(())
}

/// Inclusive ranges within the slot space, ascending and disjoint.
fn check_ranges(ranges: &[(u16, u16)]) -> Result<(), &'static str> {
    let mut next = 0u32; // the lowest slot the next range may start at
    for &(start, end) in ranges {
        if start > end || usize::from(end) >= SLOT_COUNT {
            return Err("topology: bad slot range");
        }
        if u32::from(start) < next {
            return Err("topology: slot ranges not ascending and disjoint");
        }
        next = u32::from(end) + 1;
    }
    Ok(())
}

/// A link this node keeps with one node of a peer region. A node that comes back at
/// another address is another link (the old one is closed, the new one opened).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkKey {
    pub region: String,
    pub node: u128,
    pub addr: String,
}

/// One peer node this node should replicate with, and the slots both serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPair {
    pub node: u128,
    pub addr: String,
    /// The intersection of this node's slots and the peer node's: inclusive ranges,
    /// ascending, never empty.
    pub ranges: Vec<(u16, u16)>,
}

/// Per peer region (by name), the pairs this node should link with, ordered by node id.
pub type Pairs = BTreeMap<String, Vec<PeerPair>>;

#[derive(Clone, Debug)]
struct Known {
    topo: RegionTopology,
    owners: Box<[u16]>,
}

/// The newest topology of each peer region (a pure follower: the shell feeds it the
/// `Frame::Topology` answers it gets, polled and on a refusal).
#[derive(Clone, Debug, Default)]
pub struct PeerTopologies {
    regions: BTreeMap<String, Known>,
}

impl PeerTopologies {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `t` unless an answer of a greater version is already known; returns whether
    /// what is stored changed. An equal version replaces the stored one (a change made
    /// without a new epoch, e.g. `CLUSTER ADDSLOTS` or a node restarted at another
    /// replication port, still arrives); an older one is a stale node's view (a seed that
    /// missed a failover) and is ignored. An invalid topology (one the codec would refuse)
    /// is never taken.
    pub fn update(&mut self, t: RegionTopology) -> bool {
        if let Some(k) = self.regions.get(&t.region) {
            if t.version < k.topo.version || t == k.topo {
                return false;
            }
        }
        let Ok(owners) = t.owner_table() else {
            return false;
        };
        self.regions
            .insert(t.region.clone(), Known { topo: t, owners });
        true
    }

    /// Forgets a peer region (removed from the deployment); returns whether it was known.
    pub fn remove(&mut self, region: &str) -> bool {
        self.regions.remove(region).is_some()
    }

    pub fn get(&self, region: &str) -> Option<&RegionTopology> {
        self.regions.get(region).map(|k| &k.topo)
    }

    /// The peer regions with a known topology, by name.
    pub fn regions(&self) -> impl Iterator<Item = &RegionTopology> {
        self.regions.values().map(|k| &k.topo)
    }

    /// The primary of `region` serving `slot`, if that region is known and the slot served.
    pub fn owner(&self, region: &str, slot: u16) -> Option<&TopoNode> {
        let k = self.regions.get(region)?;
        let i = *k.owners.get(usize::from(slot))?;
        k.topo.nodes.get(usize::from(i))
    }

    /// For every known peer region, the peer primaries whose slots intersect `mine` (the
    /// slots this node serves), each with that intersection. Every slot of `mine` a peer
    /// region serves is in exactly one pair of that region; a region none of whose slots
    /// intersect lists no pair (but is present, with an empty list).
    pub fn pairs(&self, mine: &SlotBitmap) -> Pairs {
        self.pairs_by(|slot| mine.get(slot))
    }

    /// [`Self::pairs`] for any representation of this node's slots.
    pub fn pairs_by(&self, serves: impl Fn(u16) -> bool) -> Pairs {
        let mine: Vec<u16> = (0..SLOT_COUNT as u16).filter(|&s| serves(s)).collect();
        self.regions
            .iter()
            .map(|(name, k)| {
                let mut per_node: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
                for &slot in &mine {
                    if let Some(&i) = k.owners.get(usize::from(slot)) {
                        if i != NO_OWNER {
                            per_node.entry(i).or_default().push(slot);
                        }
                    }
                }
                let mut pairs: Vec<PeerPair> = per_node
                    .into_iter()
                    .filter_map(|(i, slots)| {
                        let n = k.topo.nodes.get(usize::from(i))?;
                        Some(PeerPair {
                            node: n.id,
                            addr: n.repl_addr.clone(),
                            ranges: ranges_of(slots.into_iter()),
                        })
                    })
                    .collect();
                pairs.sort_by(|a, b| (a.node, &a.addr).cmp(&(b.node, &b.addr)));
                (name.clone(), pairs)
            })
            .collect()
    }
}

/// A kept link whose scope changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rescope {
    pub link: LinkKey,
    /// The new scope.
    pub ranges: Vec<(u16, u16)>,
    /// Slots that joined the scope: in doubt on this link (anti-entropy them with the
    /// peer before this node's GC frontier passes them).
    pub gained: Vec<(u16, u16)>,
    /// Slots that left it (deltas of them no longer go this way).
    pub lost: Vec<(u16, u16)>,
}

/// What changes between two [`PeerTopologies::pairs`] results, ordered by [`LinkKey`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkDiff {
    /// New links with their scope (all of it in doubt, as for `Rescope::gained`).
    pub open: Vec<(LinkKey, Vec<(u16, u16)>)>,
    /// Links whose scope is now empty: close each once its log is acknowledged.
    pub close: Vec<LinkKey>,
    pub rescoped: Vec<Rescope>,
}

impl LinkDiff {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.close.is_empty() && self.rescoped.is_empty()
    }
}

/// Pairs flattened to link → scope.
pub fn links(pairs: &Pairs) -> BTreeMap<LinkKey, Vec<(u16, u16)>> {
    pairs
        .iter()
        .flat_map(|(region, ps)| {
            ps.iter().map(move |p| {
                (
                    LinkKey {
                        region: region.clone(),
                        node: p.node,
                        addr: p.addr.clone(),
                    },
                    p.ranges.clone(),
                )
            })
        })
        .collect()
}

/// Which links to open, rescope and close to go from `old` to `new` (two results of
/// [`PeerTopologies::pairs`]: before and after a change of this node's slots or of a peer
/// region's topology).
pub fn diff_links(old: &Pairs, new: &Pairs) -> LinkDiff {
    let (old, new) = (links(old), links(new));
    let mut d = LinkDiff::default();
    for (k, ranges) in &new {
        match old.get(k) {
            None => d.open.push((k.clone(), ranges.clone())),
            Some(before) if before != ranges => d.rescoped.push(Rescope {
                link: k.clone(),
                ranges: ranges.clone(),
                gained: ranges_minus(ranges, before),
                lost: ranges_minus(before, ranges),
            }),
            Some(_) => {}
        }
    }
    d.close = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    d
}

/// Slots in `a` and not in `b`, as ranges.
pub fn ranges_minus(a: &[(u16, u16)], b: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut drop = SlotBitmap::default();
    for &(s, e) in b {
        for slot in s..=e {
            drop.set(slot, true);
        }
    }
    ranges_of(
        a.iter()
            .flat_map(|&(s, e)| s..=e)
            .filter(|&slot| !drop.get(slot)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode, CodecError, Frame};
    use proptest::prelude::*;

    const LAST: u16 = (SLOT_COUNT - 1) as u16;

    fn node(id: u128, port: u16, slots: Vec<(u16, u16)>) -> TopoNode {
        TopoNode {
            id,
            repl_addr: format!("10.0.0.{id}:{port}"),
            primary: true,
            slots,
        }
    }

    fn three(version: u64) -> RegionTopology {
        RegionTopology {
            region: "b".into(),
            version,
            nodes: vec![
                node(1, 7102, vec![(0, 5460)]),
                node(2, 7102, vec![(5461, 10922)]),
                node(3, 7102, vec![(10923, LAST)]),
                TopoNode {
                    primary: false,
                    ..node(4, 7102, vec![])
                },
            ],
        }
    }

    fn bitmap(ranges: &[(u16, u16)]) -> SlotBitmap {
        let mut b = SlotBitmap::default();
        for &(s, e) in ranges {
            for slot in s..=e {
                b.set(slot, true);
            }
        }
        b
    }

    #[test]
    fn single_node_region_is_one_primary_with_every_slot() {
        let t = RegionTopology::single("c", 0, 0, "127.0.0.1:7302".into());
        assert_eq!(t.validate(), Ok(()));
        let mut p = PeerTopologies::new();
        assert!(p.update(t));
        assert_eq!(p.owner("c", 0).map(|n| n.id), Some(0));
        assert_eq!(p.owner("c", LAST).map(|n| n.id), Some(0));
        let pairs = p.pairs(&bitmap(&[(0, LAST)]));
        assert_eq!(
            pairs["c"],
            vec![PeerPair {
                node: 0,
                addr: "127.0.0.1:7302".into(),
                ranges: vec![(0, LAST)]
            }]
        );
    }

    #[test]
    fn owner_and_pairs_of_a_cluster() {
        let mut p = PeerTopologies::new();
        assert!(p.update(three(5)));
        assert_eq!(p.owner("b", 5460).map(|n| n.id), Some(1));
        assert_eq!(p.owner("b", 5461).map(|n| n.id), Some(2));
        assert_eq!(p.owner("b", LAST).map(|n| n.id), Some(3));
        assert!(p.owner("x", 0).is_none());
        // I serve 5000..=11000: three pairs; the replica has none.
        let pairs = p.pairs(&bitmap(&[(5000, 11000)]));
        let got: Vec<(u128, Vec<(u16, u16)>)> = pairs["b"]
            .iter()
            .map(|q| (q.node, q.ranges.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, vec![(5000, 5460)]),
                (2, vec![(5461, 10922)]),
                (3, vec![(10923, 11000)])
            ]
        );
        // Nothing served here: the region is listed with no pair.
        assert_eq!(p.pairs(&SlotBitmap::default())["b"], vec![]);
    }

    #[test]
    fn update_keeps_the_newest() {
        let mut p = PeerTopologies::new();
        assert!(p.update(three(5)));
        assert!(!p.update(three(5)), "the same answer again changes nothing");
        let mut older = three(4);
        older.nodes.truncate(1);
        assert!(!p.update(older), "an older view is ignored");
        assert_eq!(p.get("b").map(|t| t.nodes.len()), Some(4));
        // Same epoch, another replication port (a restart): taken.
        let mut moved = three(5);
        moved.nodes[0].repl_addr = "10.0.0.1:7999".into();
        assert!(p.update(moved));
        assert_eq!(
            p.owner("b", 0).map(|n| n.repl_addr.as_str()),
            Some("10.0.0.1:7999")
        );
        // A failover: node 4 took node 1's slots at a new epoch.
        let mut failover = three(6);
        failover.nodes[0] = TopoNode {
            primary: false,
            ..node(1, 7102, vec![])
        };
        failover.nodes[3] = node(4, 7102, vec![(0, 5460)]);
        assert!(p.update(failover));
        assert_eq!(p.owner("b", 100).map(|n| n.id), Some(4));
        // Invalid: never stored.
        let mut bad = three(9);
        bad.nodes[1].slots = vec![(5000, 6000)];
        assert!(!p.update(bad));
        assert_eq!(p.get("b").map(|t| t.version), Some(6));
        assert!(p.remove("b"));
        assert!(p.owner("b", 100).is_none());
    }

    #[test]
    fn validation_refuses_malformed_topologies() {
        type Breaker = Box<dyn Fn(&mut RegionTopology)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("empty region", Box::new(|t| t.region.clear())),
            (
                "long region",
                Box::new(|t| t.region = "r".repeat(MAX_REGION_NAME_BYTES + 1)),
            ),
            (
                "too many nodes",
                Box::new(|t| {
                    t.nodes = (0..=MAX_TOPOLOGY_NODES as u128)
                        .map(|i| TopoNode {
                            primary: false,
                            ..node(i, 1 + i as u16, vec![])
                        })
                        .collect()
                }),
            ),
            (
                "slot out of range",
                Box::new(|t| t.nodes[2].slots = vec![(10923, 16384)]),
            ),
            (
                "reversed range",
                Box::new(|t| t.nodes[0].slots = vec![(10, 5)]),
            ),
            (
                "unordered ranges",
                Box::new(|t| t.nodes[0].slots = vec![(100, 200), (0, 10)]),
            ),
            (
                "overlapping ranges of one node",
                Box::new(|t| t.nodes[0].slots = vec![(0, 10), (10, 20)]),
            ),
            (
                "two primaries, one slot",
                Box::new(|t| t.nodes[1].slots = vec![(5460, 10922)]),
            ),
            (
                "replica with slots",
                Box::new(|t| t.nodes[3].slots = vec![(0, 0)]),
            ),
            ("duplicate id", Box::new(|t| t.nodes[3].id = 1)),
            (
                "duplicate address",
                Box::new(|t| t.nodes[3].repl_addr = t.nodes[0].repl_addr.clone()),
            ),
            (
                "no port",
                Box::new(|t| t.nodes[0].repl_addr = "10.0.0.1".into()),
            ),
            (
                "port 0",
                Box::new(|t| t.nodes[0].repl_addr = "10.0.0.1:0".into()),
            ),
            (
                "port too big",
                Box::new(|t| t.nodes[0].repl_addr = "10.0.0.1:65536".into()),
            ),
            (
                "signed port",
                Box::new(|t| t.nodes[0].repl_addr = "h:+7".into()),
            ),
            (
                "empty host",
                Box::new(|t| t.nodes[0].repl_addr = ":7102".into()),
            ),
            (
                "bare v6",
                Box::new(|t| t.nodes[0].repl_addr = "::1:7102".into()),
            ),
            (
                "bad v6",
                Box::new(|t| t.nodes[0].repl_addr = "[::g]:7102".into()),
            ),
            (
                "space in host",
                Box::new(|t| t.nodes[0].repl_addr = "a b:7102".into()),
            ),
        ];
        assert_eq!(three(1).validate(), Ok(()));
        for (name, break_it) in cases {
            let mut t = three(1);
            break_it(&mut t);
            assert!(t.validate().is_err(), "{name} accepted");
            // On the wire: a decode error, and the follower never stores it.
            let bytes = encode(&Frame::Topology(t.clone())).unwrap();
            assert!(
                matches!(decode(&bytes), Err(CodecError::Invalid(_))),
                "{name} decoded"
            );
            assert!(!PeerTopologies::new().update(t), "{name} stored");
        }
        for ok in ["[::1]:7102", "node-1.example_x.com:1", "10.0.0.1:65535"] {
            assert_eq!(check_addr(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn frames_round_trip() {
        for f in [
            Frame::TopologyRequest,
            Frame::Topology(three(7)),
            Frame::Topology(RegionTopology::single("c", 0, 0, "[::1]:7302".into())),
        ] {
            let bytes = encode(&f).unwrap();
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Ok(None));
            }
            assert_eq!(decode(&bytes), Ok(Some((f, bytes.len()))));
        }
    }

    /// Splitmix64: deterministic pseudo-random numbers for the property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A region of 1..=8 primaries (and a few replicas) with random runs of slots; some
    /// slots are served by nobody (a reshard in progress, a node without an address).
    fn random_region(rng: &mut Rng, region: &str, version: u64) -> RegionTopology {
        let primaries = 1 + rng.below(8) as usize;
        let mut slots: Vec<Vec<u16>> = vec![Vec::new(); primaries];
        let mut s = 0usize;
        while s < SLOT_COUNT {
            let span = if rng.below(4) == 0 { 8 } else { 3000 };
            let run = 1 + rng.below(span) as usize;
            let owner = rng.below(primaries as u64 + 1) as usize; // == primaries: nobody
            for slot in s..(s + run).min(SLOT_COUNT) {
                if let Some(v) = slots.get_mut(owner) {
                    v.push(slot as u16);
                }
            }
            s += run;
        }
        let mut nodes: Vec<TopoNode> = slots
            .into_iter()
            .enumerate()
            .map(|(i, v)| node(i as u128 + 1, 7000, ranges_of(v.into_iter())))
            .collect();
        for r in 0..rng.below(3) {
            nodes.push(TopoNode {
                primary: false,
                ..node(100 + u128::from(r), 7000, vec![])
            });
        }
        // Listed in any order.
        for i in (1..nodes.len()).rev() {
            nodes.swap(i, rng.below(i as u64 + 1) as usize);
        }
        RegionTopology {
            region: region.into(),
            version,
            nodes,
        }
    }

    fn random_slots(rng: &mut Rng) -> SlotBitmap {
        let mut b = SlotBitmap::default();
        let mut s = 0usize;
        while s < SLOT_COUNT {
            let run = 1 + rng.below(4000) as usize;
            let on = rng.below(2) == 0;
            for slot in s..(s + run).min(SLOT_COUNT) {
                b.set(slot as u16, on);
            }
            s += run;
        }
        b
    }

    /// Every slot I serve that a peer region serves maps to exactly one pair of that
    /// region, the owner's; pairs hold nothing else and are never empty.
    fn check_pairs(p: &PeerTopologies, mine: &SlotBitmap, pairs: &Pairs) {
        for t in p.regions() {
            let list = &pairs[&t.region];
            assert!(list.iter().all(|q| !q.ranges.is_empty()));
            let mut covered = SlotBitmap::default();
            for q in list {
                for &(s, e) in &q.ranges {
                    for slot in s..=e {
                        assert!(mine.get(slot), "slot {slot} not mine");
                        assert!(!covered.get(slot), "slot {slot} in two pairs");
                        covered.set(slot, true);
                        let owner = p.owner(&t.region, slot).expect("served there");
                        assert_eq!((owner.id, &owner.repl_addr), (q.node, &q.addr));
                    }
                }
            }
            for slot in mine.iter() {
                assert_eq!(
                    covered.get(slot),
                    p.owner(&t.region, slot).is_some(),
                    "slot {slot} of region {}",
                    t.region
                );
            }
        }
    }

    #[test]
    fn pairs_cover_each_served_slot_once_per_region() {
        for seed in 0..200 {
            let mut rng = Rng(seed);
            let mut p = PeerTopologies::new();
            for (i, region) in ["b", "c", "d"].into_iter().enumerate() {
                let t = random_region(&mut rng, region, i as u64);
                assert_eq!(t.validate(), Ok(()), "seed {seed}");
                assert!(p.update(t));
            }
            let mine = random_slots(&mut rng);
            check_pairs(&p, &mine, &p.pairs(&mine));
        }
    }

    /// Applying a diff to the old links gives the new ones; `gained`/`lost` are the scope's
    /// set differences.
    #[test]
    fn diff_turns_old_links_into_new() {
        for seed in 0..200 {
            let mut rng = Rng(1_000 + seed);
            let mut p = PeerTopologies::new();
            p.update(random_region(&mut rng, "b", 1));
            p.update(random_region(&mut rng, "c", 1));
            let mine = random_slots(&mut rng);
            let before = p.pairs(&mine);
            // Either side changes: my slots, a peer's map, or both.
            let mine2 = if rng.below(2) == 0 {
                random_slots(&mut rng)
            } else {
                mine.clone()
            };
            if rng.below(3) != 0 {
                p.update(random_region(&mut rng, "b", 2));
            }
            let after = p.pairs(&mine2);
            check_pairs(&p, &mine2, &after);
            let d = diff_links(&before, &after);
            let mut applied = links(&before);
            for k in &d.close {
                assert!(applied.remove(k).is_some());
            }
            for (k, r) in &d.open {
                assert!(applied.insert(k.clone(), r.clone()).is_none());
            }
            for r in &d.rescoped {
                let old = applied.insert(r.link.clone(), r.ranges.clone()).unwrap();
                assert_eq!(r.gained, ranges_minus(&r.ranges, &old));
                assert_eq!(r.lost, ranges_minus(&old, &r.ranges));
                assert!(!r.gained.is_empty() || !r.lost.is_empty());
            }
            assert_eq!(applied, links(&after), "seed {seed}");
            assert_eq!(diff_links(&after, &after), LinkDiff::default());
        }
    }

    #[test]
    fn ranges_minus_basics() {
        assert_eq!(
            ranges_minus(&[(0, 10)], &[(3, 4), (8, 20)]),
            vec![(0, 2), (5, 7)]
        );
        assert_eq!(ranges_minus(&[(0, LAST)], &[]), vec![(0, LAST)]);
        assert_eq!(ranges_minus(&[], &[(0, 1)]), vec![]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn corrupted_topology_frames_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = encode(&Frame::Topology(three(3))).unwrap();
            for (pos, val) in flips {
                let i = 4 + pos % (bytes.len() - 4);
                bytes[i] ^= val;
            }
            if let Ok(Some((Frame::Topology(t), _))) = decode(&bytes) {
                prop_assert!(t.validate().is_ok());
            }
        }
    }
}
