//! Elections (Redis `clusterHandleSlaveFailover`): a replica of a FAIL primary waits its
//! rank's delay, asks for votes at a new epoch, and takes the slots with a majority; a
//! slot-owning primary votes at most once per epoch.

use std::collections::BTreeSet;

use super::{
    ClusterNode, Dest, Event, ELECTION_DELAY_FIXED_MS, ELECTION_DELAY_PER_RANK_MS,
    ELECTION_DELAY_RANDOM_MS,
};
use crate::bus::{Body, Header};
use crate::topology::{NodeFlags, NodeId, Role};

#[derive(Clone, Debug)]
pub(super) struct Election {
    pub(super) start_at_ms: u64,
    pub(super) rank: u64,
    /// Set once the vote request went out.
    pub(super) epoch: Option<u64>,
    pub(super) votes: BTreeSet<NodeId>,
    pub(super) manual: bool,
}

impl ClusterNode {
    /// A vote for this node's election: it counts if it comes from a slot-owning primary
    /// and is for the epoch the election asked at (or later).
    pub(super) fn handle_auth_ack(&mut self, now_ms: u64, sender: NodeId, current_epoch: u64) {
        let counts = self.topo.node(sender).is_some_and(|n| n.role.is_primary())
            && self.topo.slots.count_of(sender) > 0;
        if let Some(e) = &mut self.election {
            if counts && e.epoch.is_some_and(|ep| current_epoch >= ep) {
                e.votes.insert(sender);
            }
        }
        self.check_election_won(now_ms);
    }

    /// Redis `clusterSendFailoverAuthIfNeeded`.
    pub(super) fn maybe_vote(&mut self, now_ms: u64, h: &Header, force_ack: bool) {
        let me = self.myself_id();
        if !self.topo.myself().role.is_primary() || self.topo.slots.count_of(me) == 0 {
            return;
        }
        if h.current_epoch < self.topo.current_epoch
            || self.last_vote_epoch == self.topo.current_epoch
        {
            return;
        }
        let Some(primary) = h.replica_of else {
            return;
        };
        let Some(p) = self.topo.node(primary) else {
            return;
        };
        if !p.flags.has(NodeFlags::FAIL) && !force_ack {
            return;
        }
        let recent = self
            .peers
            .get(&primary)
            .and_then(|peer| peer.voted_time_ms)
            .is_some_and(|at| now_ms.saturating_sub(at) < 2 * self.config.node_timeout_ms);
        if recent {
            return;
        }
        let stale = h.slots.iter().find_map(|s| {
            let owner = self.topo.owner(s)?;
            (self.topo.owner_epoch(s)? > h.config_epoch).then_some(owner)
        });
        if let Some(owner) = stale {
            // The requester has an old view of the slots (e.g. its primary bumped its epoch
            // just before dying): correct it so its next attempt can win.
            let body = Body::Update {
                node: owner,
                config_epoch: self.topo.node(owner).map_or(0, |n| n.config_epoch),
                slots: self.topo.slots.bitmap_of(owner),
            };
            self.send(Dest::Node(h.sender), body);
            return;
        }
        self.last_vote_epoch = self.topo.current_epoch;
        self.peers.entry(primary).or_default().voted_time_ms = Some(now_ms);
        self.send(Dest::Node(h.sender), Body::FailoverAuthAck);
    }

    /// Redis `clusterHandleSlaveFailover`.
    pub(super) fn tick_election(&mut self, now_ms: u64, rng_u64: u64) {
        let Role::Replica { of: primary } = self.topo.myself().role else {
            self.election = None;
            return;
        };
        let manual = self.manual.as_ref().is_some_and(|m| m.ready);
        let primary_failed = self
            .topo
            .node(primary)
            .is_some_and(|p| p.flags.has(NodeFlags::FAIL));
        let nofailover = self.topo.myself().flags.has(NodeFlags::NOFAILOVER);
        let eligible =
            self.topo.slots.count_of(primary) > 0 && (manual || (primary_failed && !nofailover));
        if !eligible {
            self.election = None;
            return;
        }
        let auth_timeout_ms = self.config.auth_timeout_ms();
        let restart = match &self.election {
            None => true,
            Some(e) => {
                (manual && !e.manual)
                    || now_ms.saturating_sub(e.start_at_ms) > self.config.auth_retry_ms()
            }
        };
        if restart {
            let rank = self.my_rank(primary);
            let start_at_ms = if manual {
                now_ms
            } else {
                now_ms.saturating_add(
                    ELECTION_DELAY_FIXED_MS
                        + rng_u64 % ELECTION_DELAY_RANDOM_MS
                        + rank * ELECTION_DELAY_PER_RANK_MS,
                )
            };
            self.election = Some(Election {
                start_at_ms,
                rank,
                epoch: None,
                votes: BTreeSet::new(),
                manual,
            });
            if !manual {
                return;
            }
        }
        let rank_now = self.my_rank(primary);
        let Some(e) = &mut self.election else {
            return;
        };
        if e.epoch.is_none() && !e.manual && rank_now > e.rank {
            e.start_at_ms += (rank_now - e.rank) * ELECTION_DELAY_PER_RANK_MS;
            e.rank = rank_now;
        }
        if now_ms < e.start_at_ms || now_ms.saturating_sub(e.start_at_ms) > auth_timeout_ms {
            return;
        }
        if e.epoch.is_none() {
            self.topo.current_epoch = self.topo.current_epoch.saturating_add(1);
            let epoch = self.topo.current_epoch;
            e.epoch = Some(epoch);
            let force_ack = e.manual;
            let targets: Vec<NodeId> = self.other_nodes().collect();
            for t in targets {
                self.send(Dest::Node(t), Body::FailoverAuthRequest { force_ack });
            }
        }
        self.check_election_won(now_ms);
    }

    /// Replicas of `primary` with a strictly better offset (ties: lower id first).
    pub(super) fn my_rank(&self, primary: NodeId) -> u64 {
        let me = self.topo.myself();
        self.topo
            .replicas_of(primary)
            .filter(|r| r.id != me.id && !r.flags.failing())
            .filter(|r| {
                (r.repl_offset, std::cmp::Reverse(r.id))
                    > (me.repl_offset, std::cmp::Reverse(me.id))
            })
            .count() as u64
    }

    pub(super) fn check_election_won(&mut self, now_ms: u64) {
        let needed = self.topo.size() / 2 + 1;
        let Some(e) = &self.election else {
            return;
        };
        let Some(epoch) = e.epoch else {
            return;
        };
        if e.votes.len() < needed {
            return;
        }
        let Role::Replica { of: primary } = self.topo.myself().role else {
            return;
        };
        self.election = None;
        self.manual = None;
        self.take_over_from(now_ms, primary, epoch);
    }

    /// Redis `clusterFailoverReplaceYourMaster`: become primary, claim the old primary's
    /// slots at `epoch`, and tell everyone.
    pub(super) fn take_over_from(&mut self, now_ms: u64, primary: NodeId, epoch: u64) {
        let me = self.myself_id();
        if self.topo.myself().config_epoch < epoch {
            self.topo.myself_mut().config_epoch = epoch;
        }
        if self.topo.current_epoch < epoch {
            self.topo.current_epoch = epoch;
        }
        self.set_my_role(Role::Primary);
        let slots: Vec<u16> = self.topo.slots.slots_of(primary).collect();
        for s in slots {
            self.topo.slots.assign(s, Some(me));
        }
        let config_epoch = self.topo.myself().config_epoch;
        self.push_event(Event::PromotedToPrimary { config_epoch });
        self.broadcast_pong(now_ms);
        self.update_state(now_ms);
    }
}
