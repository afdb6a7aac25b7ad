//! Failure detection (a silent node is PFAIL; PFAIL plus reports from a majority of the
//! slot-owning primaries is FAIL, broadcast) and the cluster state: slot coverage, the
//! minority write fence and the rejoin delay.

use super::{ClusterNode, Dest, Event};
use crate::bus::Body;
use crate::topology::{NodeFlags, NodeId, NodeInfo, SLOT_COUNT};

impl ClusterNode {
    pub(super) fn mark_fail_if_needed(&mut self, now_ms: u64, node: NodeId) {
        let Some(n) = self.topo.node(node) else {
            return;
        };
        if !n.flags.has(NodeFlags::PFAIL) || n.flags.has(NodeFlags::FAIL) {
            return;
        }
        let needed = self.topo.size() / 2 + 1;
        let validity_ms = self.config.fail_report_validity_ms();
        let mut failures = 0;
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.fail_reports
                .retain(|_, at| now_ms.saturating_sub(*at) <= validity_ms);
            failures = peer.fail_reports.len();
        }
        if self.topo.myself().role.is_primary() {
            failures += 1;
        }
        if failures >= needed {
            self.mark_fail(now_ms, node, true);
        }
    }

    pub(super) fn mark_fail(&mut self, now_ms: u64, node: NodeId, broadcast: bool) {
        let Some(n) = self.topo.nodes.get_mut(&node) else {
            return;
        };
        if n.flags.has(NodeFlags::FAIL) {
            return;
        }
        n.flags.clear(NodeFlags::PFAIL);
        n.flags.set(NodeFlags::FAIL);
        n.fail_time_ms = now_ms;
        self.push_event(Event::NodeFailed(node));
        if broadcast {
            let targets: Vec<NodeId> = self.other_nodes().collect();
            for t in targets {
                self.send(Dest::Node(t), Body::Fail { node });
            }
        }
    }

    /// Cluster state as of `now_ms`: slot coverage, and for a primary, reaching a majority.
    pub(super) fn state_ok_at(&self, now_ms: u64) -> bool {
        self.coverage_ok(now_ms) && self.reaches_majority(now_ms)
    }

    pub(super) fn coverage_ok(&self, now_ms: u64) -> bool {
        if !self.config.require_full_coverage {
            return true;
        }
        // Slots released moments ago (see `released`) are in transit, not uncovered.
        let in_transit = self
            .released
            .iter()
            .filter(|&(&s, &at)| {
                self.topo.owner(s).is_none()
                    && now_ms.saturating_sub(at) < self.config.node_timeout_ms
            })
            .count();
        self.topo.slots.assigned() + in_transit == SLOT_COUNT
            && self.topo.slots.owners().all(|(id, _)| {
                self.topo
                    .node(id)
                    .is_some_and(|n| !n.flags.has(NodeFlags::FAIL))
            })
    }

    /// A primary reaches a majority of the slot-owning primaries (itself included), judging
    /// reachability lazily from message times so the answer is exact at `now_ms`, not as of
    /// the last tick. Replicas do not need a majority.
    pub(super) fn reaches_majority(&self, now_ms: u64) -> bool {
        if !self.topo.myself().role.is_primary() || self.topo.size() == 0 {
            return true;
        }
        let me = self.myself_id();
        let timeout_ms = self.config.node_timeout_ms;
        let reachable =
            self.topo
                .slots
                .owners()
                .filter(|(id, _)| {
                    *id == me
                        || self.topo.node(*id).is_some_and(|n| {
                            !n.flags.failing() && !unreachable(n, now_ms, timeout_ms)
                        })
                })
                .count();
        reachable > self.topo.size() / 2
    }

    /// Whether this node has reached a majority for 2 × node-timeout without a break:
    /// every node pings each peer at least every node-timeout / 2, so by then it has
    /// heard every live primary's slot claims.
    pub(super) fn settled(&self, now_ms: u64) -> bool {
        self.majority_since_ms
            .is_some_and(|at| now_ms.saturating_sub(at) >= 2 * self.config.node_timeout_ms)
    }

    pub(super) fn in_rejoin_delay(&self, now_ms: u64) -> bool {
        self.minority_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < self.config.rejoin_delay_ms())
    }

    pub(super) fn update_state(&mut self, now_ms: u64) {
        if !self.reaches_majority(now_ms) {
            self.minority_at_ms = Some(now_ms);
            self.majority_since_ms = None;
        } else if self.majority_since_ms.is_none() {
            self.majority_since_ms = Some(now_ms);
        }
        let ok_now = self.state_ok_at(now_ms);
        let ok = ok_now && !(self.topo.myself().role.is_primary() && self.in_rejoin_delay(now_ms));
        if ok != self.topo.state_ok {
            self.topo.state_ok = ok;
            self.push_event(Event::StateChanged { ok });
        }
    }
}

/// No pong and no message of any kind for `timeout_ms`. Every peer is pinged each
/// `ping_interval_ms`, so silence means unreachable — also right after a long pause of this
/// node (no outstanding ping is needed to notice that everything it knows is old).
pub(super) fn unreachable(n: &NodeInfo, now_ms: u64, timeout_ms: u64) -> bool {
    now_ms.saturating_sub(n.pong_received_ms) > timeout_ms
        && now_ms.saturating_sub(n.data_received_ms) > timeout_ms
}
