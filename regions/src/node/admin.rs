//! Admin operations behind `CLUSTER MEET|ADDSLOTS|DELSLOTS|SETSLOT|REPLICATE|SET-CONFIG-EPOCH|
//! BUMPEPOCH|FORGET|RESET`, and the epoch bumps without consensus they use.

use std::collections::BTreeSet;

use super::{
    ClusterError, ClusterNode, Dest, Event, SetSlot, FORGET_BLACKLIST_MS, MAX_NODES,
    MEET_TIMEOUT_MS,
};
use crate::bus::{self, Body};
use crate::topology::{NodeFlags, NodeId, Role, Topology, SLOT_COUNT};

#[derive(Clone, Debug)]
pub(super) struct PendingMeet {
    pub(super) host: String,
    pub(super) bus_port: u16,
    pub(super) until_ms: u64,
    pub(super) last_sent_ms: u64,
}

impl ClusterNode {
    /// `CLUSTER MEET host port [bus_port]`: introduce ourselves to a node at an address.
    pub fn meet(&mut self, now_ms: u64, host: &str, bus_port: u16) -> Result<(), ClusterError> {
        if host.is_empty() || host.len() > bus::MAX_HOST_BYTES || bus_port == 0 {
            return Err(ClusterError::BadAddress);
        }
        if self.pending_meets.len() >= MAX_NODES {
            return Err(ClusterError::TooManyNodes);
        }
        self.pending_meets.push(PendingMeet {
            host: host.to_string(),
            bus_port,
            until_ms: now_ms.saturating_add(MEET_TIMEOUT_MS),
            last_sent_ms: 0,
        });
        let gossip = self.gossip_for(None);
        self.send(
            Dest::Addr {
                host: host.to_string(),
                bus_port,
            },
            Body::Meet { gossip },
        );
        if let Some(m) = self.pending_meets.last_mut() {
            m.last_sent_ms = now_ms;
        }
        Ok(())
    }

    /// `CLUSTER ADDSLOTS`: all or nothing.
    pub fn add_slots(&mut self, now_ms: u64, slots: &[u32]) -> Result<(), ClusterError> {
        let slots = checked_slots(slots)?;
        if !self.topo.myself().role.is_primary() {
            return Err(ClusterError::NotPrimary);
        }
        if let Some(&s) = slots.iter().find(|&&s| self.topo.owner(s).is_some()) {
            return Err(ClusterError::SlotBusy(s));
        }
        let me = self.myself_id();
        for s in slots {
            self.topo.importing.remove(&s);
            self.topo.slots.assign(s, Some(me));
        }
        self.broadcast_pong(now_ms);
        self.update_state(now_ms);
        Ok(())
    }

    /// `CLUSTER DELSLOTS`: all or nothing.
    pub fn del_slots(&mut self, now_ms: u64, slots: &[u32]) -> Result<(), ClusterError> {
        let slots = checked_slots(slots)?;
        if let Some(&s) = slots.iter().find(|&&s| self.topo.owner(s).is_none()) {
            return Err(ClusterError::SlotUnassigned(s));
        }
        for s in slots {
            self.topo.slots.assign(s, None);
            self.topo.migrating.remove(&s);
            self.topo.importing.remove(&s);
        }
        self.broadcast_pong(now_ms);
        self.update_state(now_ms);
        Ok(())
    }

    /// `CLUSTER SETSLOT slot MIGRATING|IMPORTING|STABLE|NODE`. `local_keys_in_slot` is how
    /// many keys this node still holds in the slot (NODE refuses to give away a non-empty
    /// slot, as Redis does).
    pub fn set_slot(
        &mut self,
        now_ms: u64,
        slot: u32,
        op: SetSlot,
        local_keys_in_slot: u64,
    ) -> Result<(), ClusterError> {
        let slot = checked_slots(&[slot])?[0];
        let me = self.myself_id();
        if !self.topo.myself().role.is_primary() {
            return Err(ClusterError::NotPrimary);
        }
        let known = |id: NodeId| {
            self.topo
                .node(id)
                .map(|n| n.role)
                .ok_or(ClusterError::UnknownNode(id))
        };
        match op {
            SetSlot::Migrating(target) => {
                if self.topo.owner(slot) != Some(me) {
                    return Err(ClusterError::NotOwner(slot));
                }
                if !known(target)?.is_primary() {
                    return Err(ClusterError::TargetNotPrimary);
                }
                self.topo.migrating.insert(slot, target);
            }
            SetSlot::Importing(source) => {
                if self.topo.owner(slot) == Some(me) {
                    return Err(ClusterError::AlreadyOwner(slot));
                }
                if !known(source)?.is_primary() {
                    return Err(ClusterError::TargetNotPrimary);
                }
                self.topo.importing.insert(slot, source);
            }
            SetSlot::Stable => {
                self.topo.migrating.remove(&slot);
                self.topo.importing.remove(&slot);
            }
            SetSlot::Node(node) => {
                if !known(node)?.is_primary() {
                    return Err(ClusterError::TargetNotPrimary);
                }
                if self.topo.owner(slot) == Some(me) && node != me && local_keys_in_slot > 0 {
                    return Err(ClusterError::SlotHasKeys(slot));
                }
                if node != me {
                    self.topo.migrating.remove(&slot);
                }
                if node == me && self.topo.importing.remove(&slot).is_some() {
                    // Finishing an import: take a fresh epoch without consensus so the new
                    // ownership beats the source's claim everywhere. (Once per slot: bumping
                    // only unless ours was already the greatest, as Redis does, lost a
                    // moved slot's owner in every view under load; see the #7 note.)
                    self.bump_epoch_without_consensus();
                }
                self.topo.slots.assign(slot, Some(node));
            }
        }
        self.broadcast_pong(now_ms);
        self.update_state(now_ms);
        Ok(())
    }

    /// `CLUSTER REPLICATE node-id`.
    pub fn replicate(&mut self, now_ms: u64, primary: NodeId) -> Result<(), ClusterError> {
        let me = self.myself_id();
        if primary == me {
            return Err(ClusterError::ReplicateSelf);
        }
        let role = self
            .topo
            .node(primary)
            .map(|n| n.role)
            .ok_or(ClusterError::UnknownNode(primary))?;
        if !role.is_primary() {
            return Err(ClusterError::TargetNotPrimary);
        }
        if self.topo.myself().role.is_primary() && self.topo.slots.count_of(me) > 0 {
            return Err(ClusterError::NotEmpty);
        }
        self.topo.migrating.clear();
        self.topo.importing.clear();
        self.set_my_role(Role::Replica { of: primary });
        self.broadcast_pong(now_ms);
        self.update_state(now_ms);
        Ok(())
    }

    /// `CLUSTER SET-CONFIG-EPOCH epoch`: the tool creating a cluster (`redis-cli --cluster
    /// create`) gives each fresh node a different config epoch before they meet, so no
    /// collision has to be resolved afterwards. Only while the node knows no other node and
    /// its config epoch is still 0, as in Redis.
    pub fn set_config_epoch(&mut self, epoch: i64) -> Result<(), ClusterError> {
        let Ok(e) = u64::try_from(epoch) else {
            return Err(ClusterError::BadEpoch(epoch));
        };
        if self.topo.nodes.len() > 1 {
            return Err(ClusterError::EpochWithPeers);
        }
        if self.topo.myself().config_epoch != 0 {
            return Err(ClusterError::EpochAlreadySet);
        }
        self.topo.myself_mut().config_epoch = e;
        self.topo.current_epoch = self.topo.current_epoch.max(e);
        Ok(())
    }

    /// `CLUSTER BUMPEPOCH`: take a new config epoch without a vote unless ours is already
    /// the greatest the node knows (and not 0). Returns whether it bumped and the config
    /// epoch now (`BUMPED n` / `STILL n`).
    pub fn bump_epoch(&mut self, now_ms: u64) -> (bool, u64) {
        let bumped = self.bump_epoch_unless_greatest();
        if bumped {
            self.broadcast_pong(now_ms);
        }
        (bumped, self.topo.myself().config_epoch)
    }

    /// `CLUSTER FORGET node-id`: drop the node and ignore it in gossip for a minute.
    pub fn forget(&mut self, now_ms: u64, node: NodeId) -> Result<(), ClusterError> {
        if node == self.myself_id() {
            return Err(ClusterError::ForgetSelf);
        }
        if self.topo.myself().role.primary_id() == Some(node) {
            return Err(ClusterError::ForgetPrimary);
        }
        if !self.topo.nodes.contains_key(&node) {
            return Err(ClusterError::UnknownNode(node));
        }
        self.remove_node(node);
        if self.blacklist.len() < MAX_NODES {
            self.blacklist
                .insert(node, now_ms.saturating_add(FORGET_BLACKLIST_MS));
        }
        self.update_state(now_ms);
        Ok(())
    }

    /// `CLUSTER RESET [SOFT|HARD]`: forget every other node and every slot, become a
    /// primary; HARD also zeroes the epochs and takes `new_id` (the caller draws it).
    pub fn reset(&mut self, now_ms: u64, hard: Option<NodeId>) {
        let mut myself = self.topo.myself().clone();
        myself.role = Role::Primary;
        myself.flags = NodeFlags::default();
        let current_epoch = self.topo.current_epoch;
        if let Some(new_id) = hard {
            myself.id = new_id;
            myself.config_epoch = 0;
        }
        self.topo = Topology::new(myself);
        self.topo.current_epoch = if hard.is_some() { 0 } else { current_epoch };
        if hard.is_some() {
            self.last_vote_epoch = 0;
        }
        self.peers.clear();
        self.pending_meets.clear();
        self.election = None;
        self.manual = None;
        self.paused_for = None;
        self.released.clear();
        self.minority_at_ms = None;
        self.majority_since_ms = None;
        self.push_event(Event::RoleChanged(Role::Primary));
        self.update_state(now_ms);
    }

    /// Redis' `clusterBumpConfigEpochWithoutConsensus`: a new config epoch unless ours is
    /// already the greatest known (and not 0). Stricter than Redis: ours must also be the
    /// only one that great (a tie with another node's would not make our claims win).
    /// Returns whether it bumped.
    pub(super) fn bump_epoch_unless_greatest(&mut self) -> bool {
        let me = self.myself_id();
        let mine = self.topo.myself().config_epoch;
        let others = self
            .topo
            .nodes
            .values()
            .filter(|n| n.id != me)
            .map(|n| n.config_epoch)
            .max()
            .unwrap_or(0);
        if mine != 0 && mine > others && mine >= self.topo.current_epoch {
            return false;
        }
        self.bump_epoch_without_consensus();
        true
    }

    pub(super) fn bump_epoch_without_consensus(&mut self) {
        self.topo.current_epoch = self.topo.current_epoch.saturating_add(1);
        let epoch = self.topo.current_epoch;
        self.topo.myself_mut().config_epoch = epoch;
    }
}

/// Validates admin slot arguments: in range and no repeats.
pub(super) fn checked_slots(slots: &[u32]) -> Result<Vec<u16>, ClusterError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(slots.len());
    for &s in slots {
        let slot = u16::try_from(s)
            .ok()
            .filter(|&v| usize::from(v) < SLOT_COUNT)
            .ok_or(ClusterError::SlotOutOfRange)?;
        if !seen.insert(slot) {
            return Err(ClusterError::SlotRepeated(slot));
        }
        out.push(slot);
    }
    Ok(out)
}
