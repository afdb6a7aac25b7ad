//! This node's region as its peer regions see it (issue 20's discovery): what a node answers
//! to a `Frame::TopologyRequest` (`meridian_replication::proto::topology`).

use meridian_regions::topology::{ranges_of, NodeFlags, Topology};
use meridian_replication::proto::topology::{
    check_addr, RegionTopology, TopoNode, MAX_TOPOLOGY_NODES,
};

/// The topology of this node's region named `region`.
///
/// With a cluster (`cluster` = this node's view of it): every node with a replication
/// address (`NodeInfo::repl_addr`, from the `[replication]` table each node announces on
/// the bus), primaries with the slots they own, replicas with none; `version` is the
/// greatest config epoch known, so a view taken after a reshard or failover supersedes
/// older ones. Nodes still in handshake (not confirmed yet) are left out; so is a node
/// without a replication address, and the slots of such a primary are then served by
/// nobody as far as other regions are concerned (they cannot replicate with it anyway).
///
/// Without a cluster: this node alone, a primary with every slot, id 0, version 0, at
/// `single_addr` — the address peers reach it at (its `[replication] listen` address, unless
/// that is a wildcard such as `0.0.0.0`). Ignored with a cluster.
///
/// The result always passes [`RegionTopology::validate`] (nodes whose address would not are
/// skipped, as are nodes beyond [`MAX_TOPOLOGY_NODES`]), given a valid region name.
pub fn region_topology(
    region: &str,
    cluster: Option<&Topology>,
    single_addr: &str,
) -> RegionTopology {
    let Some(topo) = cluster else {
        return RegionTopology::single(region, 0, 0, single_addr.to_string());
    };
    let version = topo.nodes().map(|n| n.config_epoch).max().unwrap_or(0);
    let mut nodes: Vec<TopoNode> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    // `nodes()` is ordered by id: the answer is deterministic.
    for n in topo.nodes() {
        if n.flags.has(NodeFlags::HANDSHAKE) || nodes.len() >= MAX_TOPOLOGY_NODES {
            continue;
        }
        let Some(addr) = n.repl_addr().filter(|a| check_addr(a).is_ok()) else {
            continue;
        };
        if !seen.insert(addr.clone()) {
            continue; // two nodes announcing one address: a misconfiguration; first wins
        }
        let primary = n.role.is_primary();
        let slots = if primary {
            ranges_of(topo.slot_map().slots_of(n.id))
        } else {
            Vec::new()
        };
        nodes.push(TopoNode {
            id: n.id.0.as_u128(),
            repl_addr: addr,
            slots,
            primary,
        });
    }
    RegionTopology {
        region: region.to_string(),
        version,
        nodes,
    }
}

impl crate::cluster::Cluster {
    /// [`region_topology`] of this node's current view.
    pub fn region_topology(&self, region: &str) -> RegionTopology {
        let node = self.node.lock();
        region_topology(region, Some(node.topology()), "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_regions::{ClusterNode, Dest, NodeConfig, NodeId, NodeInfo};
    use meridian_replication::proto::topology::PeerTopologies;

    /// Delivers every queued message until the nodes are quiet, ticking now and then.
    fn settle(nodes: &mut [ClusterNode], now: &mut u64, rounds: usize) {
        for _ in 0..rounds {
            *now += 100;
            for (i, n) in nodes.iter_mut().enumerate() {
                n.tick(*now, i as u64 * 31 + *now);
            }
            loop {
                let mut moved = false;
                for i in 0..nodes.len() {
                    while let Some(out) = nodes[i].poll_outgoing() {
                        moved = true;
                        let j = (0..nodes.len()).find(|&j| {
                            let me = nodes[j].topology().myself();
                            match &out.to {
                                Dest::Node(id) => me.id == *id,
                                Dest::Addr { host, bus_port } => {
                                    me.host == *host && me.bus_port == *bus_port
                                }
                            }
                        });
                        if let Some(j) = j {
                            nodes[j].handle_message(*now, out.msg).unwrap();
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
        }
    }

    #[test]
    fn single_node_region() {
        let t = region_topology("c", None, "127.0.0.1:7302");
        assert_eq!(
            t,
            RegionTopology::single("c", 0, 0, "127.0.0.1:7302".into())
        );
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn cluster_region_lists_primaries_with_slots_and_replicas() {
        let config = NodeConfig {
            node_timeout_ms: 1_000,
            require_full_coverage: true,
        };
        // Three primaries and a replica; node 2 has no `[replication]` table.
        let mut nodes: Vec<ClusterNode> = (0..4u16)
            .map(|i| {
                let mut info = NodeInfo::new(
                    NodeId::from_u128(u128::from(i) + 1),
                    format!("10.0.0.{i}"),
                    7000,
                    17000,
                );
                info.repl_port = if i == 2 { 0 } else { 7102 };
                ClusterNode::new(config.clone(), info)
            })
            .collect();
        let mut now = 1;
        for i in 1..4 {
            nodes[0].meet(now, &format!("10.0.0.{i}"), 17000).unwrap();
        }
        let ranges = [(0u32, 5460u32), (5461, 10922), (10923, 16383)];
        for (i, (s, e)) in ranges.iter().enumerate() {
            let slots: Vec<u32> = (*s..=*e).collect();
            nodes[i].add_slots(now, &slots).unwrap();
        }
        settle(&mut nodes, &mut now, 20);
        let p0 = nodes[0].myself_id();
        nodes[3].replicate(now, p0).unwrap();
        settle(&mut nodes, &mut now, 30);

        let t = region_topology("a", Some(nodes[1].topology()), "ignored:1");
        assert_eq!(t.validate(), Ok(()));
        let max_epoch = nodes
            .iter()
            .map(|n| n.topology().myself().config_epoch)
            .max()
            .unwrap();
        assert_eq!(t.version, max_epoch);
        type Row<'a> = (u128, &'a str, bool, Vec<(u16, u16)>);
        let got: Vec<Row> = t
            .nodes
            .iter()
            .map(|n| (n.id, n.repl_addr.as_str(), n.primary, n.slots.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "10.0.0.0:7102", true, vec![(0, 5460)]),
                (2, "10.0.0.1:7102", true, vec![(5461, 10922)]),
                (4, "10.0.0.3:7102", false, vec![]),
            ]
        );
        // As a peer region follows it: node 3's slots have no replicating owner.
        let mut peers = PeerTopologies::new();
        assert!(peers.update(t));
        assert_eq!(peers.owner("a", 6000).map(|n| n.id), Some(2));
        assert!(peers.owner("a", 12000).is_none());
        // Every node of the region answers the same.
        assert_eq!(
            region_topology("a", Some(nodes[3].topology()), ""),
            region_topology("a", Some(nodes[0].topology()), "")
        );
    }
}
