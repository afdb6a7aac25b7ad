//! `ClusterNode`: one node's cluster-bus state machine (Redis Cluster's `cluster.c` logic,
//! sans-IO).
//!
//! Inputs: `handle_message(now_ms, msg)` for every decoded bus message, `tick(now_ms, rng)`
//! every [`TICK_INTERVAL_MS`], and the admin operations behind `CLUSTER MEET|ADDSLOTS|…`.
//! Outputs: `poll_outgoing()` (messages to send, by node id or by address for MEET) and
//! `poll_event()` (role/slot/state changes the server reacts to). Queries: `topology()`
//! (routing, `CLUSTER` replies) and `can_write(now_ms)`.
//!
//! Protocol, as in Redis Cluster:
//! - Every node pings every known node each `ping_interval_ms`; every message carries the
//!   sender's header (epochs, role, offset, claimed slots) and pings/pongs gossip about a few
//!   nodes, always including the ones the sender sees failing.
//! - A node not heard from (no pong and no message at all) for `node_timeout_ms` is PFAIL.
//!   Gossip from primaries counts as failure reports, valid for `2 * node_timeout_ms`; when
//!   PFAIL plus reports reach a majority of the slot-owning primaries, the node is FAIL and a
//!   FAIL message is broadcast.
//! - A replica whose primary is FAIL waits `500 + random(0..500) + rank * 1000` ms (rank 0 =
//!   most recent replication offset), bumps `current_epoch` and asks every node for a vote;
//!   a slot-owning primary votes at most once per epoch, at most once per `2 * node_timeout_ms`
//!   per failing primary, and only if the primary is FAIL (or the request is a manual one) and
//!   the requester's slot claim is not stale. A majority of votes wins: the replica takes the
//!   slots with the election epoch as its config epoch and broadcasts a pong.
//! - Slot claims are resolved by config epoch: a higher epoch wins; a node that sees a stale
//!   claim answers with UPDATE, and a primary that lost all its slots to another node becomes
//!   its replica (that is how a failed primary rejoins). Two primaries with the same config
//!   epoch: the one with the lower node id takes a fresh epoch.
//! - A primary that cannot reach a majority of the slot-owning primaries for `node_timeout_ms`
//!   sets the cluster state FAIL and refuses writes; when it can reach them again it waits
//!   a rejoin delay so that a failover decided meanwhile reaches it first.
//!
//! Bounds: at most [`MAX_NODES`] known nodes, [`MAX_OUTBOX_MESSAGES`] queued messages (new
//! ones are dropped and counted when full — every bus message is either periodic or retried),
//! [`MAX_EVENTS`] queued events (oldest dropped), `MAX_GOSSIP_ENTRIES` gossip entries.
//!
//! Beyond Redis: a primary's own header is authoritative for the slots it serves (slots it
//! stops claiming become unassigned in receivers' views); a primary refusing a vote because
//! the requester's slot view is stale sends it an UPDATE; a late "replica" header cannot demote
//! a slot owner known at a newer epoch (the simulator reorders messages, TCP would not).
//!
//! Known gap (as in Redis): `SETSLOT NODE` on the importing node bumps its epoch above every
//! epoch it knows; if the source took a newer epoch (collision resolution) that the importer
//! has not heard of yet, the source's older claim can win the slot back at the importer while
//! the source has already let it go, leaving the slot unassigned until an operator repeats
//! `SETSLOT <slot> NODE <importer>` (which bumps again). Migrate once epochs have settled.
//!
//! Not persisted here: `current_epoch`, the config epoch and the last vote epoch must survive a
//! restart for the voting rule to be safe (Redis keeps them in nodes.conf); see
//! [`ClusterNode::persistent_state`].
//!
//! One [`ClusterNode`], several `impl` blocks, one job each:
//! - this file: the types, construction, queries, the two inputs (`handle_message`,
//!   `tick`: they dispatch to the jobs) and the shared helpers (role, node table, events).
//! - `gossip`: what every message carries: headers (the sender's view, slot claims resolved
//!   by config epoch, UPDATE, epoch collisions), gossip entries, sending pings and pongs.
//! - `failure`: PFAIL → FAIL by failure reports from a majority, and the cluster state it
//!   implies (slot coverage, the minority write fence, the rejoin delay).
//! - `election`: a replica's election when its primary is FAIL, and voting on others'.
//! - `manual_failover`: `CLUSTER FAILOVER` default/FORCE/TAKEOVER, the primary's pause.
//! - `admin`: meet, add/del slots, setslot, replicate, config epochs, forget, reset.

mod admin;
mod election;
mod failure;
mod gossip;
mod manual_failover;

use std::collections::{BTreeMap, VecDeque};

use crate::bus::{self, Body, BusError, BusMessage};
use crate::topology::{ClusterInfo, NodeFlags, NodeId, NodeInfo, Role, Topology};
use admin::PendingMeet;
use election::Election;
use failure::unreachable;
use gossip::PingKind;
use manual_failover::ManualFailover;

/// How often the shell should call `tick`.
pub const TICK_INTERVAL_MS: u64 = 100;

pub const MAX_NODES: usize = 1000;

pub const MAX_OUTBOX_MESSAGES: usize = 8192;

pub const MAX_EVENTS: usize = 1024;

/// A forgotten node is ignored in gossip for this long (Redis' blacklist TTL).
pub const FORGET_BLACKLIST_MS: u64 = 60_000;

/// A MEET is retried until the node answers or this long has passed.
pub const MEET_TIMEOUT_MS: u64 = 60_000;

/// Fixed part of a replica's election delay.
pub const ELECTION_DELAY_FIXED_MS: u64 = 500;

/// Upper bound (exclusive) of the random part of the election delay.
pub const ELECTION_DELAY_RANDOM_MS: u64 = 500;

/// Extra election delay per rank (replicas with a more recent offset go first).
pub const ELECTION_DELAY_PER_RANK_MS: u64 = 1000;

pub const MANUAL_FAILOVER_TIMEOUT_MS: u64 = 5000;

/// A primary pauses writes for this many manual-failover timeouts.
pub const MF_PAUSE_MULT: u64 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_timeout_ms: u64,
    /// Cluster state is FAIL while a slot is unassigned or served by a FAIL node.
    pub require_full_coverage: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_timeout_ms: 15_000,
            require_full_coverage: true,
        }
    }
}

impl NodeConfig {
    /// How often each node is pinged: well inside the timeout so a few lost pings do not
    /// make a healthy node PFAIL.
    pub fn ping_interval_ms(&self) -> u64 {
        (self.node_timeout_ms / 4).clamp(10, 1000)
    }
    /// An election that has not won by then is abandoned (Redis: `2 * node_timeout`, ≥ 2 s).
    pub fn auth_timeout_ms(&self) -> u64 {
        (2 * self.node_timeout_ms).max(2000)
    }
    /// A replica retries an election this long after the previous one started.
    pub fn auth_retry_ms(&self) -> u64 {
        2 * self.auth_timeout_ms()
    }
    pub fn fail_report_validity_ms(&self) -> u64 {
        2 * self.node_timeout_ms
    }
    /// A primary that was in the minority waits this long before accepting writes again.
    pub fn rejoin_delay_ms(&self) -> u64 {
        self.node_timeout_ms.clamp(500, 5000)
    }
    fn handshake_timeout_ms(&self) -> u64 {
        self.node_timeout_ms.max(1000)
    }
}

/// Where an outgoing message goes: a known node (the shell looks up its bus address in the
/// topology) or a bare address (MEET to a node we do not know yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    Node(NodeId),
    Addr { host: String, bus_port: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Dest,
    pub msg: BusMessage,
}

/// Changes the server reacts to (log, stop/start replication, flush lost slots, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This node's role changed (replicate from the new primary, or stop replicating).
    RoleChanged(Role),
    /// This node won an election (or a takeover) at this config epoch.
    PromotedToPrimary {
        config_epoch: u64,
    },
    /// This node no longer owns these slots (another node's claim won).
    SlotsLost {
        count: usize,
    },
    NodeFailed(NodeId),
    StateChanged {
        ok: bool,
    },
    ManualFailoverTimedOut,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FailoverMode {
    /// Coordinate with the primary: it pauses writes, we catch up, then we win a vote.
    Default,
    /// Start an election now even though the primary is not FAIL.
    Force,
    /// Take the slots with a fresh epoch without any vote.
    Takeover,
}

/// `CLUSTER SETSLOT <slot> …`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SetSlot {
    Migrating(NodeId),
    Importing(NodeId),
    Stable,
    Node(NodeId),
}

/// Admin-operation errors; `Display` is the Redis error text (without `-`).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error("ERR Invalid or out of range slot")]
    SlotOutOfRange,
    #[error("ERR Slot {0} is already busy")]
    SlotBusy(u16),
    #[error("ERR Slot {0} is already unassigned")]
    SlotUnassigned(u16),
    #[error("ERR Slot {0} specified multiple times")]
    SlotRepeated(u16),
    #[error("ERR Unknown node {0}")]
    UnknownNode(NodeId),
    #[error("ERR I'm not the owner of hash slot {0}")]
    NotOwner(u16),
    #[error("ERR I'm already the owner of hash slot {0}")]
    AlreadyOwner(u16),
    #[error("ERR Target node is not a master")]
    TargetNotPrimary,
    #[error("ERR Can't assign hashslot {0} to a different node while I still hold keys for this hash slot.")]
    SlotHasKeys(u16),
    #[error("ERR Please use SETSLOT only with masters.")]
    NotPrimary,
    #[error("ERR Can't replicate myself")]
    ReplicateSelf,
    #[error("ERR To set a master the node must be empty and without assigned slots.")]
    NotEmpty,
    #[error("ERR You should send CLUSTER FAILOVER to a replica")]
    NotReplica,
    #[error("ERR Master is down or failed, please use CLUSTER FAILOVER FORCE")]
    PrimaryDown,
    #[error("ERR I tried hard but I can't forget myself...")]
    ForgetSelf,
    #[error("ERR Can't forget my master!")]
    ForgetPrimary,
    #[error("ERR Invalid node address specified")]
    BadAddress,
    #[error("ERR too many known nodes")]
    TooManyNodes,
    #[error("ERR Invalid config epoch specified: {0}")]
    BadEpoch(i64),
    #[error(
        "ERR The user can assign a config epoch only when the node does not know any other node."
    )]
    EpochWithPeers,
    #[error("ERR Node config epoch is already non-zero")]
    EpochAlreadySet,
    #[error("ERR bad bus message: {0}")]
    Bus(#[from] BusError),
}

/// What must survive a restart (write it before acting on a change; Redis' nodes.conf).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PersistentState {
    pub current_epoch: u64,
    pub config_epoch: u64,
    pub last_vote_epoch: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub outbox_dropped: u64,
    pub events_dropped: u64,
    /// Messages from a node we do not know that were not a MEET (ignored).
    pub stranger_messages_ignored: u64,
    /// Messages from a node still in handshake other than its PONG (its claims ignored).
    pub handshake_messages_ignored: u64,
}

/// Per-peer bookkeeping that is not part of the topology view.
#[derive(Clone, Debug, Default)]
struct Peer {
    created_ms: u64,
    last_ping_transmit_ms: u64,
    /// Reporter (a primary) → when it last reported this node PFAIL/FAIL.
    fail_reports: BTreeMap<NodeId, u64>,
    /// When we last voted for a replica of this node (as a failing primary).
    voted_time_ms: Option<u64>,
}

#[derive(Clone)]
pub struct ClusterNode {
    config: NodeConfig,
    topo: Topology,
    peers: BTreeMap<NodeId, Peer>,
    blacklist: BTreeMap<NodeId, u64>,
    pending_meets: Vec<PendingMeet>,
    outbox: VecDeque<Outgoing>,
    events: VecDeque<Event>,
    last_vote_epoch: u64,
    election: Option<Election>,
    manual: Option<ManualFailover>,
    /// Primary side of a manual failover: writes paused until this time, for this replica.
    paused_for: Option<(NodeId, u64)>,
    /// Slots `release_unclaimed` made unassigned, and when: while their new owner's claim is
    /// on its way they still count as covered (for a node timeout), so a slot handed over
    /// does not put the whole cluster down at a node that heard the old owner first.
    released: BTreeMap<u16, u64>,
    /// Last time this primary found itself in the minority.
    minority_at_ms: Option<u64>,
    /// Since when this node has reached a majority without a break (`None`: not now, or
    /// not since it started): see `settled`.
    majority_since_ms: Option<u64>,
    gossip_cursor: usize,
    stats: NodeStats,
}

impl ClusterNode {
    pub fn new(config: NodeConfig, myself: NodeInfo) -> Self {
        assert!(config.node_timeout_ms > 0);
        ClusterNode {
            config,
            topo: Topology::new(myself),
            peers: BTreeMap::new(),
            blacklist: BTreeMap::new(),
            pending_meets: Vec::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            last_vote_epoch: 0,
            election: None,
            manual: None,
            paused_for: None,
            released: BTreeMap::new(),
            minority_at_ms: None,
            majority_since_ms: None,
            gossip_cursor: 0,
            stats: NodeStats::default(),
        }
    }

    /// Restores epochs saved from `persistent_state` (call right after `new`).
    pub fn restore(&mut self, state: PersistentState) {
        self.topo.current_epoch = state.current_epoch.max(state.config_epoch);
        self.topo.myself_mut().config_epoch = state.config_epoch;
        self.last_vote_epoch = state.last_vote_epoch;
    }

    pub fn persistent_state(&self) -> PersistentState {
        PersistentState {
            current_epoch: self.topo.current_epoch,
            config_epoch: self.topo.myself().config_epoch,
            last_vote_epoch: self.last_vote_epoch,
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// Queue a PUBLISH for the other nodes of the region (every known node), or an
    /// SPUBLISH (`shard_slot`) for the slot's primary and its replicas. False (nothing
    /// queued) when it is too large for the bus.
    pub fn publish(&mut self, channel: &[u8], message: &[u8], shard_slot: Option<u16>) -> bool {
        if channel.len() + message.len() > bus::MAX_BUS_PUBLISH_BYTES {
            return false;
        }
        let me = self.myself_id();
        let to: Vec<NodeId> = match shard_slot {
            None => self.topo.nodes().map(|n| n.id).collect(),
            Some(slot) => match self.topo.owner(slot) {
                Some(owner) => std::iter::once(owner)
                    .chain(self.topo.replicas_of(owner).map(|n| n.id))
                    .collect(),
                None => Vec::new(),
            },
        };
        for id in to {
            if id != me && !self.in_handshake(id) {
                self.send(
                    Dest::Node(id),
                    Body::Publish {
                        channel: channel.to_vec(),
                        message: message.to_vec(),
                        shard: shard_slot.is_some(),
                    },
                );
            }
        }
        true
    }

    /// Whether a `Body::Publish` from `sender` is delivered: from a member of the region
    /// (known, past its handshake), never from ourselves.
    pub fn accepts_publish_from(&self, sender: NodeId) -> bool {
        sender != self.myself_id()
            && self.topo.node(sender).is_some()
            && !self.in_handshake(sender)
            && !self.blacklist.contains_key(&sender)
    }

    pub fn myself_id(&self) -> NodeId {
        self.topo.myself_id()
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// `CLUSTER INFO` with this node's message counters.
    pub fn cluster_info(&self) -> ClusterInfo {
        let mut info = self.topo.cluster_info();
        info.messages_sent = self.stats.messages_sent;
        info.messages_received = self.stats.messages_received;
        info.messages_ignored =
            self.stats.stranger_messages_ignored + self.stats.handshake_messages_ignored;
        info
    }

    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The replication layer reports how far this node's data is (primary: produced;
    /// replica: applied).
    pub fn set_repl_offset(&mut self, offset: u64) {
        self.topo.myself_mut().repl_offset = offset;
    }

    /// This node's inter-region replication port on its host (0 = none); sent in every
    /// header from now on, so the other nodes learn it with the next PING/PONG.
    pub fn set_repl_port(&mut self, port: u16) {
        self.topo.myself_mut().repl_port = port;
    }

    /// Whether a write to one of this node's slots may be accepted now: this node is a
    /// primary, not paused by a manual failover, and the cluster state is OK as of `now_ms`
    /// (in particular it reaches a majority of the slot-owning primaries).
    pub fn can_write(&self, now_ms: u64) -> bool {
        self.topo.myself().role.is_primary()
            && self.paused_for.is_none_or(|(_, until)| now_ms > until)
            && self.state_ok_at(now_ms)
            && !self.in_rejoin_delay(now_ms)
    }

    /// Until when (ms) this primary pauses writes for a manual failover, if it does.
    pub fn pause_deadline(&self) -> Option<u64> {
        self.paused_for.map(|(_, until)| until)
    }

    /// Would a manual-failover request (MFSTART) from `sender` pause this node's writes?
    /// (This node is a primary and `sender` one of its replicas.)
    pub fn pauses_for(&self, sender: NodeId) -> bool {
        let me = self.myself_id();
        self.topo.myself().role.is_primary()
            && self.topo.node(sender).map(|n| n.role) == Some(Role::Replica { of: me })
    }

    /// Is the pause of a manual failover the only reason [`Self::can_write`] says no? Redis
    /// makes writers wait through the pause (not fail): they then run here, or get MOVED to
    /// the promoted replica.
    pub fn write_paused(&self, now_ms: u64) -> bool {
        self.paused_for.is_some_and(|(_, until)| now_ms <= until)
            && self.topo.myself().role.is_primary()
            && self.state_ok_at(now_ms)
            && !self.in_rejoin_delay(now_ms)
    }

    /// Applies one message from the bus. The sender is identified by the message header, not
    /// by the link it came on (a MEET arrives from a node we cannot name yet), so there is no
    /// `from` argument; the bus is trusted, as in Redis. Errors mean the message was malformed
    /// (drop the link); the state is unchanged then.
    pub fn handle_message(&mut self, now_ms: u64, msg: BusMessage) -> Result<(), ClusterError> {
        bus::validate(&msg)?;
        let me = self.myself_id();
        let sender = msg.header.sender;
        if sender == me {
            return Err(BusError::Invalid("message from myself").into());
        }
        self.stats.messages_received += 1;
        if self.blacklist.contains_key(&sender) {
            return Ok(());
        }
        if !self.topo.nodes.contains_key(&sender) {
            // As in Redis, only a MEET introduces a node (an operator's CLUSTER MEET, or a
            // member that learned of us by gossip and greets us); anything else from a
            // stranger — a PING, a slot claim, a vote — is ignored and counted. The new node
            // stays in handshake, its claims ignored, until it answers our own greeting.
            // The one other way in is the answer to a MEET of ours: a PONG from the address
            // we greeted (how a node that restarted knowing nobody finds its cluster again).
            let h = &msg.header;
            let answers_our_meet = matches!(msg.body, Body::Pong { .. })
                && self
                    .pending_meets
                    .iter()
                    .any(|m| m.host == h.host && m.bus_port == h.bus_port);
            if !matches!(msg.body, Body::Meet { .. }) && !answers_our_meet {
                self.stats.stranger_messages_ignored += 1;
                return Ok(());
            }
            if self
                .add_node(now_ms, sender, &h.host, h.port, h.bus_port, h.repl_port)
                .is_err()
            {
                return Ok(());
            }
            if let Some(n) = self.topo.nodes.get_mut(&sender) {
                // A PONG confirms it at once (`process_header` clears the flag).
                n.flags.set(NodeFlags::HANDSHAKE);
            }
        }
        let is_pong = matches!(msg.body, Body::Pong { .. });
        if !is_pong && self.in_handshake(sender) {
            // Not confirmed yet: greet it back (a MEET, see `send_ping_kind`) and take
            // nothing it says about itself or others until its PONG.
            self.stats.handshake_messages_ignored += 1;
            if let Body::Meet { gossip } | Body::Ping { gossip } = &msg.body {
                // As Redis does with a MEET's gossip: other nodes it names are greeted in
                // turn (in handshake too); its failure reports do not count.
                self.process_gossip(now_ms, sender, gossip, false);
                self.send_ping_kind(now_ms, sender, PingKind::Pong);
                self.send_ping_kind(now_ms, sender, PingKind::Ping);
            }
            return Ok(());
        }
        self.process_header(now_ms, &msg.header, is_pong);
        let h = msg.header;
        match msg.body {
            Body::Meet { gossip } | Body::Ping { gossip } => {
                self.process_gossip(now_ms, sender, &gossip, true);
                self.send_ping_kind(now_ms, sender, PingKind::Pong);
            }
            Body::Pong { gossip } => self.process_gossip(now_ms, sender, &gossip, true),
            Body::Fail { node } => {
                if node != me {
                    self.mark_fail(now_ms, node, false);
                }
            }
            Body::FailoverAuthRequest { force_ack } => self.maybe_vote(now_ms, &h, force_ack),
            Body::FailoverAuthAck => self.handle_auth_ack(now_ms, sender, h.current_epoch),
            Body::Update {
                node,
                config_epoch,
                slots,
            } => self.process_update(now_ms, node, config_epoch, &slots),
            Body::MfStart => self.handle_mf_start(now_ms, sender),
            // Delivered by the shell (see `accepts_publish_from`).
            Body::Publish { .. } => {}
        }
        self.update_state(now_ms);
        Ok(())
    }

    /// Periodic work: pings, failure detection, elections, timeouts. `rng_u64` is a fresh
    /// random number (the only randomness the node uses: election jitter).
    pub fn tick(&mut self, now_ms: u64, rng_u64: u64) {
        let timeout_ms = self.config.node_timeout_ms;
        let ping_interval_ms = self.config.ping_interval_ms();
        self.blacklist.retain(|_, until| *until > now_ms);
        let topo = &self.topo;
        self.released.retain(|&s, &mut at| {
            topo.owner(s).is_none() && now_ms.saturating_sub(at) < timeout_ms
        });

        // MEETs until answered.
        let mut meets = std::mem::take(&mut self.pending_meets);
        meets.retain(|m| {
            now_ms < m.until_ms
                && !self
                    .topo
                    .nodes()
                    .any(|n| n.host == m.host && n.bus_port == m.bus_port)
        });
        for m in &mut meets {
            if now_ms.saturating_sub(m.last_sent_ms) >= ping_interval_ms {
                m.last_sent_ms = now_ms;
                let to = Dest::Addr {
                    host: m.host.clone(),
                    bus_port: m.bus_port,
                };
                let gossip = self.gossip_for(None);
                self.send(to, Body::Meet { gossip });
            }
        }
        self.pending_meets = meets;

        let others: Vec<NodeId> = self.other_nodes().collect();
        for id in others {
            let handshake_expired = {
                let (Some(n), Some(peer)) = (self.topo.node(id), self.peers.get(&id)) else {
                    continue;
                };
                n.flags.has(NodeFlags::HANDSHAKE)
                    && now_ms.saturating_sub(peer.created_ms) > self.config.handshake_timeout_ms()
            };
            if handshake_expired {
                self.remove_node(id);
                continue;
            }
            let due = self
                .peers
                .get(&id)
                .is_none_or(|p| now_ms.saturating_sub(p.last_ping_transmit_ms) >= ping_interval_ms);
            if due {
                self.send_ping_kind(now_ms, id, PingKind::Ping);
            }
            let newly_pfail = self.topo.node(id).is_some_and(|n| {
                !n.flags.failing()
                    && !n.flags.has(NodeFlags::HANDSHAKE)
                    && unreachable(n, now_ms, timeout_ms)
            });
            if newly_pfail {
                if let Some(n) = self.topo.nodes.get_mut(&id) {
                    n.flags.set(NodeFlags::PFAIL);
                }
                self.mark_fail_if_needed(now_ms, id);
            }
        }

        if let Some((_, until)) = self.paused_for {
            if now_ms > until {
                self.paused_for = None;
            }
        }
        self.tick_manual_failover(now_ms);
        self.tick_election(now_ms, rng_u64);
        self.update_state(now_ms);
    }

    fn set_my_role(&mut self, role: Role) {
        if self.topo.myself().role == role {
            return;
        }
        self.topo.myself_mut().role = role;
        self.election = None;
        self.manual = None;
        self.paused_for = None;
        if !role.is_primary() {
            self.topo.migrating.clear();
            self.topo.importing.clear();
        }
        self.push_event(Event::RoleChanged(role));
    }

    fn in_handshake(&self, id: NodeId) -> bool {
        self.topo
            .node(id)
            .is_some_and(|n| n.flags.has(NodeFlags::HANDSHAKE))
    }

    fn add_node(
        &mut self,
        now_ms: u64,
        id: NodeId,
        host: &str,
        port: u16,
        bus_port: u16,
        repl_port: u16,
    ) -> Result<(), ClusterError> {
        if self.topo.nodes.len() >= MAX_NODES {
            return Err(ClusterError::TooManyNodes);
        }
        let mut info = NodeInfo::new(id, host, port, bus_port);
        info.repl_port = repl_port;
        // Age starts now, so a node that never answers becomes PFAIL after the timeout.
        info.data_received_ms = now_ms;
        self.topo.nodes.insert(id, info);
        self.peers.insert(
            id,
            Peer {
                created_ms: now_ms,
                ..Peer::default()
            },
        );
        Ok(())
    }

    fn remove_node(&mut self, id: NodeId) {
        debug_assert_ne!(id, self.myself_id());
        self.topo.nodes.remove(&id);
        self.peers.remove(&id);
        for peer in self.peers.values_mut() {
            peer.fail_reports.remove(&id);
        }
        let slots: Vec<u16> = self.topo.slots.slots_of(id).collect();
        for s in slots {
            self.topo.slots.assign(s, None);
        }
        self.topo.migrating.retain(|_, t| *t != id);
        self.topo.importing.retain(|_, t| *t != id);
    }

    fn other_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.myself_id();
        self.topo.nodes.keys().copied().filter(move |id| *id != me)
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }
}

#[cfg(test)]
mod tests;
