//! What every bus message carries: the sender's header (its view of itself, its slot claim,
//! resolved by config epoch; UPDATE for a stale claim; epoch collisions) and gossip about a
//! few nodes (failure reports, new nodes); building headers and gossip, sending.

use super::{ClusterNode, Dest, Event, Outgoing, MAX_OUTBOX_MESSAGES};
use crate::bus::{Body, BusMessage, GossipEntry, Header, MAX_GOSSIP_ENTRIES};
use crate::topology::{NodeFlags, NodeId, NodeInfo, Role, SlotBitmap};

impl ClusterNode {
    pub(super) fn process_header(&mut self, now_ms: u64, h: &Header, is_pong: bool) {
        let me = self.myself_id();
        let sender = h.sender;
        if h.current_epoch > self.topo.current_epoch {
            self.topo.current_epoch = h.current_epoch;
        }
        let timeout_ms = self.config.node_timeout_ms;
        let (was_primary, had_slots) = (
            self.topo.node(sender).is_some_and(|n| n.role.is_primary()),
            self.topo.slots.count_of(sender) > 0,
        );
        let Some(n) = self.topo.nodes.get_mut(&sender) else {
            return;
        };
        // A slot-owning primary only becomes a replica by losing its slots to a higher epoch
        // (REPLICATE needs an empty node), so a "replica" header carrying an older epoch is a
        // message from before its promotion that arrived late: do not let it demote.
        let stale_demotion =
            h.replica_of.is_some() && was_primary && had_slots && h.config_epoch < n.config_epoch;
        n.data_received_ms = now_ms;
        n.flags.clear(NodeFlags::HANDSHAKE);
        if n.host != h.host || n.port != h.port || n.bus_port != h.bus_port {
            n.host.clone_from(&h.host);
            n.port = h.port;
            n.bus_port = h.bus_port;
        }
        n.repl_port = h.repl_port;
        n.repl_offset = h.repl_offset;
        if h.flags.has(NodeFlags::NOFAILOVER) {
            n.flags.set(NodeFlags::NOFAILOVER);
        } else {
            n.flags.clear(NodeFlags::NOFAILOVER);
        }
        if is_pong {
            n.pong_received_ms = now_ms;
            n.ping_sent_ms = 0;
            n.flags.clear(NodeFlags::PFAIL);
            if n.flags.has(NodeFlags::FAIL) {
                // Redis' clearNodeFailureIfNeeded: a replica or slot-less primary is back at
                // once; a slot owner only if nobody failed it over for a long time.
                let long_ago = now_ms.saturating_sub(n.fail_time_ms) > 2 * timeout_ms;
                if !n.role.is_primary() || !had_slots || long_ago {
                    n.flags.clear(NodeFlags::FAIL);
                    n.fail_time_ms = 0;
                }
            }
        }
        match h.replica_of {
            Some(_) if stale_demotion => {}
            None => {
                n.role = Role::Primary;
                if h.config_epoch > n.config_epoch {
                    n.config_epoch = h.config_epoch;
                }
            }
            Some(p) => {
                n.role = Role::Replica { of: p };
                if was_primary && had_slots {
                    // A primary turned replica gives up its slots (Redis clusterDelNodeSlots).
                    let slots: Vec<u16> = self.topo.slots.slots_of(sender).collect();
                    for s in slots {
                        self.topo.slots.assign(s, None);
                    }
                }
            }
        }
        if self.manual.is_some()
            && self.topo.myself().role == (Role::Replica { of: sender })
            && h.mf_paused
        {
            if let Some(m) = &mut self.manual {
                m.primary_offset = Some(h.repl_offset);
            }
        }

        // Slot claims: the sender's (if primary) or its primary's.
        let claimer = h.replica_of.unwrap_or(sender);
        let dirty = !self.topo.slots.owns_exactly(claimer, &h.slots);
        if dirty && h.replica_of.is_none() {
            self.release_unclaimed(now_ms, sender, &h.slots);
            self.update_slots_from(sender, h.config_epoch, &h.slots);
        }
        if dirty {
            // A stale claim: tell the sender who owns the slot with a higher epoch.
            let contested = self.topo.slots.claimed_not_owned(claimer, &h.slots);
            let stale_owner = contested.into_iter().find_map(|s| {
                let owner = self.topo.owner(s)?;
                (owner != claimer && self.topo.owner_epoch(s)? > h.config_epoch).then_some(owner)
            });
            if let Some(owner) = stale_owner {
                let body = Body::Update {
                    node: owner,
                    config_epoch: self.topo.node(owner).map_or(0, |n| n.config_epoch),
                    slots: self.topo.slots.bitmap_of(owner),
                };
                self.send(Dest::Node(sender), body);
            }
        }

        // Epoch collision (Redis clusterHandleConfigEpochCollision): the lower id moves.
        // Not while this node's view may be stale (see `settled`): the move takes an epoch
        // above every one it has heard of, and a primary back from a crash or a partition
        // would outbid the failover that replaced it (whose claim it has not heard yet) and
        // win its old slots back, taking acknowledged writes with them.
        let myself = self.topo.myself();
        if h.replica_of.is_none()
            && myself.role.is_primary()
            && h.config_epoch == myself.config_epoch
            && me < sender
            && self.settled(now_ms)
        {
            self.topo.current_epoch = self.topo.current_epoch.saturating_add(1);
            let epoch = self.topo.current_epoch;
            self.topo.myself_mut().config_epoch = epoch;
        }
    }

    /// A primary is the authority on which slots it still serves: slots we think `sender`
    /// owns but its own claim omits (it gave them away, deleted them, or lost them) become
    /// unassigned here, so the next claim for them wins whatever its epoch. Without this, a
    /// view that missed the new owner's claim could keep the old owner forever once the old
    /// owner's config epoch grows past the new owner's (a later epoch-collision bump).
    pub(super) fn release_unclaimed(&mut self, now_ms: u64, sender: NodeId, claim: &SlotBitmap) {
        let gone = self.topo.slots.bitmap_of(sender).minus(claim);
        for s in gone {
            if self.topo.importing.contains_key(&s) {
                continue; // keep redirecting to the source until SETSLOT NODE here
            }
            self.topo.slots.assign(s, None);
            self.released.insert(s, now_ms);
        }
    }

    /// Redis `clusterUpdateSlotsConfigWith`: `sender` claims `slots` at `epoch`.
    pub(super) fn update_slots_from(&mut self, sender: NodeId, epoch: u64, slots: &SlotBitmap) {
        let me = self.myself_id();
        if sender == me {
            return;
        }
        let cur_primary = self.topo.myself().role.primary_id().unwrap_or(me);
        let mut took_from_cur = false;
        let mut lost = 0;
        for s in self.topo.slots.claimed_not_owned(sender, slots) {
            let owner = self.topo.owner(s);
            if owner == Some(sender) || self.topo.importing.contains_key(&s) {
                continue;
            }
            let beats = match owner {
                None => true,
                Some(_) => self.topo.owner_epoch(s).unwrap_or(0) < epoch,
            };
            if !beats {
                continue;
            }
            if owner == Some(cur_primary) {
                took_from_cur = true;
            }
            if owner == Some(me) {
                lost += 1;
                self.topo.migrating.remove(&s);
            }
            self.topo.slots.assign(s, Some(sender));
        }
        if lost > 0 {
            self.push_event(Event::SlotsLost { count: lost });
        }
        if took_from_cur && self.topo.slots.count_of(cur_primary) == 0 {
            // We (or our primary) lost every slot to `sender`: follow it.
            self.set_my_role(Role::Replica { of: sender });
        }
    }

    pub(super) fn process_update(
        &mut self,
        _now_ms: u64,
        node: NodeId,
        epoch: u64,
        slots: &SlotBitmap,
    ) {
        if node == self.myself_id() {
            return; // nobody knows our configuration better than we do
        }
        let Some(n) = self.topo.nodes.get_mut(&node) else {
            return;
        };
        if n.config_epoch >= epoch {
            return;
        }
        n.role = Role::Primary;
        n.config_epoch = epoch;
        self.update_slots_from(node, epoch, slots);
    }

    /// `confirmed`: the sender is out of handshake (only then do its failure reports count).
    pub(super) fn process_gossip(
        &mut self,
        now_ms: u64,
        sender: NodeId,
        gossip: &[GossipEntry],
        confirmed: bool,
    ) {
        let me = self.myself_id();
        let sender_is_primary =
            confirmed && self.topo.node(sender).is_some_and(|n| n.role.is_primary());
        for g in gossip {
            if g.id == me || g.id == sender || self.blacklist.contains_key(&g.id) {
                continue;
            }
            if self.topo.nodes.contains_key(&g.id) {
                if sender_is_primary {
                    let peer = self.peers.entry(g.id).or_default();
                    if g.flags.failing() {
                        peer.fail_reports.insert(sender, now_ms);
                        self.mark_fail_if_needed(now_ms, g.id);
                    } else {
                        peer.fail_reports.remove(&sender);
                    }
                }
            } else {
                // Learn of it and ping it; the handshake flag clears when it answers.
                if self
                    .add_node(now_ms, g.id, &g.host, g.port, g.bus_port, g.repl_port)
                    .is_ok()
                {
                    if let Some(n) = self.topo.nodes.get_mut(&g.id) {
                        n.flags.set(NodeFlags::HANDSHAKE);
                    }
                }
            }
        }
    }

    pub(super) fn header(&self) -> Header {
        let me = self.topo.myself();
        let (config_epoch, slots) = match me.role {
            Role::Primary => (me.config_epoch, self.topo.slots.bitmap_of(me.id)),
            Role::Replica { of } => (
                self.topo.node(of).map_or(0, |p| p.config_epoch),
                self.topo.slots.bitmap_of(of),
            ),
        };
        Header {
            sender: me.id,
            host: me.host.clone(),
            port: me.port,
            bus_port: me.bus_port,
            repl_port: me.repl_port,
            current_epoch: self.topo.current_epoch,
            config_epoch,
            replica_of: me.role.primary_id(),
            repl_offset: me.repl_offset,
            flags: NodeFlags(me.flags.0 & NodeFlags::NOFAILOVER),
            slots,
            mf_paused: self.paused_for.is_some(),
        }
    }

    /// Gossip: every node we see failing, plus a rotating few others (Redis: ~1/10 of the
    /// cluster, at least 3), never the receiver or nodes still in handshake.
    pub(super) fn gossip_for(&mut self, to: Option<NodeId>) -> Vec<GossipEntry> {
        let me = self.myself_id();
        let candidates: Vec<&NodeInfo> = self
            .topo
            .nodes()
            .filter(|n| n.id != me && Some(n.id) != to && !n.flags.has(NodeFlags::HANDSHAKE))
            .collect();
        let entry = |n: &NodeInfo| GossipEntry {
            id: n.id,
            host: n.host.clone(),
            port: n.port,
            bus_port: n.bus_port,
            repl_port: n.repl_port,
            flags: NodeFlags(n.flags.0 & (NodeFlags::PFAIL | NodeFlags::FAIL)),
            pong_received_ms: n.pong_received_ms,
        };
        let mut out: Vec<GossipEntry> = candidates
            .iter()
            .filter(|n| n.flags.failing())
            .take(MAX_GOSSIP_ENTRIES)
            .map(|n| entry(n))
            .collect();
        let wanted = (3 + candidates.len() / 10).min(candidates.len());
        let healthy: Vec<&&NodeInfo> = candidates.iter().filter(|n| !n.flags.failing()).collect();
        for i in 0..healthy.len().min(wanted) {
            if out.len() >= MAX_GOSSIP_ENTRIES {
                break;
            }
            let n = healthy[(self.gossip_cursor + i) % healthy.len()];
            out.push(entry(n));
        }
        self.gossip_cursor = self.gossip_cursor.wrapping_add(wanted.max(1));
        out
    }

    pub(super) fn send_ping_kind(&mut self, now_ms: u64, to: NodeId, kind: PingKind) {
        let gossip = self.gossip_for(Some(to));
        let body = match kind {
            // A node still in handshake may not know us: only a MEET introduces us to it.
            PingKind::Ping if self.in_handshake(to) => Body::Meet { gossip },
            PingKind::Ping => Body::Ping { gossip },
            PingKind::Pong => Body::Pong { gossip },
        };
        if kind == PingKind::Ping {
            if let Some(n) = self.topo.nodes.get_mut(&to) {
                if n.ping_sent_ms == 0 {
                    n.ping_sent_ms = now_ms;
                }
            }
            self.peers.entry(to).or_default().last_ping_transmit_ms = now_ms;
        }
        self.send(Dest::Node(to), body);
    }

    pub(super) fn broadcast_pong(&mut self, now_ms: u64) {
        let targets: Vec<NodeId> = self.other_nodes().collect();
        for t in targets {
            self.send_ping_kind(now_ms, t, PingKind::Pong);
        }
    }

    pub(super) fn send(&mut self, to: Dest, body: Body) {
        if self.outbox.len() >= MAX_OUTBOX_MESSAGES {
            self.stats.outbox_dropped += 1;
            return;
        }
        let msg = BusMessage {
            header: self.header(),
            body,
        };
        self.stats.messages_sent += 1;
        self.outbox.push_back(Outgoing { to, msg });
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum PingKind {
    Ping,
    Pong,
}
