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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::bus::{self, Body, BusError, BusMessage, GossipEntry, Header, MAX_GOSSIP_ENTRIES};
use crate::topology::{
    ClusterInfo, NodeFlags, NodeId, NodeInfo, Role, SlotBitmap, Topology, SLOT_COUNT,
};

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
pub struct Config {
    pub node_timeout_ms: u64,
    /// Cluster state is FAIL while a slot is unassigned or served by a FAIL node.
    pub require_full_coverage: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_timeout_ms: 15_000,
            require_full_coverage: true,
        }
    }
}

impl Config {
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
pub struct Stats {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub outbox_dropped: u64,
    pub events_dropped: u64,
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

#[derive(Clone, Debug)]
struct Election {
    start_at_ms: u64,
    rank: u64,
    /// Set once the vote request went out.
    epoch: Option<u64>,
    votes: BTreeSet<NodeId>,
    manual: bool,
}

/// Replica side of CLUSTER FAILOVER (default or FORCE).
#[derive(Clone, Debug)]
struct ManualFailover {
    deadline_ms: u64,
    /// The primary's offset once it paused (default mode).
    primary_offset: Option<u64>,
    ready: bool,
    mfstart_sent_ms: u64,
}

#[derive(Clone, Debug)]
struct PendingMeet {
    host: String,
    bus_port: u16,
    until_ms: u64,
    last_sent_ms: u64,
}

#[derive(Clone)]
pub struct ClusterNode {
    config: Config,
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
    stats: Stats,
}

impl ClusterNode {
    pub fn new(config: Config, myself: NodeInfo) -> Self {
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
            stats: Stats::default(),
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

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn topology(&self) -> &Topology {
        &self.topo
    }
    pub fn myself_id(&self) -> NodeId {
        self.topo.myself_id()
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// `CLUSTER INFO` with this node's message counters.
    pub fn cluster_info(&self) -> ClusterInfo {
        let mut info = self.topo.cluster_info();
        info.messages_sent = self.stats.messages_sent;
        info.messages_received = self.stats.messages_received;
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

    // ---------------------------------------------------------------- inputs: messages

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
            // Only a node that wants to join (MEET) or learned of us by gossip (PING) may
            // introduce itself; anything else from a stranger is stale and ignored.
            if !matches!(msg.body, Body::Meet { .. } | Body::Ping { .. }) {
                return Ok(());
            }
            let h = &msg.header;
            if self
                .add_node(now_ms, sender, &h.host, h.port, h.bus_port, h.repl_port)
                .is_err()
            {
                return Ok(());
            }
        }
        self.process_header(now_ms, &msg.header, matches!(msg.body, Body::Pong { .. }));
        let h = msg.header;
        match msg.body {
            Body::Meet { gossip } | Body::Ping { gossip } => {
                self.process_gossip(now_ms, sender, &gossip);
                self.send_ping_kind(now_ms, sender, PingKind::Pong);
            }
            Body::Pong { gossip } => self.process_gossip(now_ms, sender, &gossip),
            Body::Fail { node } => {
                if node != me {
                    self.mark_fail(now_ms, node, false);
                }
            }
            Body::FailoverAuthRequest { force_ack } => self.maybe_vote(now_ms, &h, force_ack),
            Body::FailoverAuthAck => {
                let counts = self.topo.node(sender).is_some_and(|n| n.role.is_primary())
                    && self.topo.slots.count_of(sender) > 0;
                if let Some(e) = &mut self.election {
                    if counts && e.epoch.is_some_and(|ep| h.current_epoch >= ep) {
                        e.votes.insert(sender);
                    }
                }
                self.check_election_won(now_ms);
            }
            Body::Update {
                node,
                config_epoch,
                slots,
            } => self.process_update(now_ms, node, config_epoch, &slots),
            Body::MfStart => {
                if self.pauses_for(sender) {
                    // Twice the replica's deadline, as Redis (CLUSTER_MF_PAUSE_MULT): the pause
                    // must outlast a promotion that comes at the end of it.
                    self.paused_for = Some((
                        sender,
                        now_ms.saturating_add(MF_PAUSE_MULT * MANUAL_FAILOVER_TIMEOUT_MS),
                    ));
                    self.send_ping_kind(now_ms, sender, PingKind::Ping);
                }
            }
        }
        self.update_state(now_ms);
        Ok(())
    }

    fn process_header(&mut self, now_ms: u64, h: &Header, is_pong: bool) {
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
            self.topo.current_epoch += 1;
            let epoch = self.topo.current_epoch;
            self.topo.myself_mut().config_epoch = epoch;
        }
    }

    /// A primary is the authority on which slots it still serves: slots we think `sender`
    /// owns but its own claim omits (it gave them away, deleted them, or lost them) become
    /// unassigned here, so the next claim for them wins whatever its epoch. Without this, a
    /// view that missed the new owner's claim could keep the old owner forever once the old
    /// owner's config epoch grows past the new owner's (a later epoch-collision bump).
    fn release_unclaimed(&mut self, now_ms: u64, sender: NodeId, claim: &SlotBitmap) {
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
    fn update_slots_from(&mut self, sender: NodeId, epoch: u64, slots: &SlotBitmap) {
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

    fn process_update(&mut self, _now_ms: u64, node: NodeId, epoch: u64, slots: &SlotBitmap) {
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

    fn process_gossip(&mut self, now_ms: u64, sender: NodeId, gossip: &[GossipEntry]) {
        let me = self.myself_id();
        let sender_is_primary = self.topo.node(sender).is_some_and(|n| n.role.is_primary());
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

    fn mark_fail_if_needed(&mut self, now_ms: u64, node: NodeId) {
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

    fn mark_fail(&mut self, now_ms: u64, node: NodeId, broadcast: bool) {
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

    /// Redis `clusterSendFailoverAuthIfNeeded`.
    fn maybe_vote(&mut self, now_ms: u64, h: &Header, force_ack: bool) {
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

    // ---------------------------------------------------------------- inputs: time

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

    fn tick_manual_failover(&mut self, now_ms: u64) {
        let Some(m) = &mut self.manual else {
            return;
        };
        if now_ms > m.deadline_ms {
            self.manual = None;
            self.election = self.election.take().filter(|e| !e.manual);
            self.push_event(Event::ManualFailoverTimedOut);
            return;
        }
        let my_offset = self.topo.myself().repl_offset;
        if m.primary_offset.is_some_and(|o| my_offset >= o) {
            m.ready = true;
        }
        // The bus may lose MFSTART: ask again each ping interval until the primary paused.
        let resend = !m.ready
            && m.primary_offset.is_none()
            && now_ms.saturating_sub(m.mfstart_sent_ms) >= self.config.ping_interval_ms();
        if resend {
            m.mfstart_sent_ms = now_ms;
            if let Some(primary) = self.topo.myself().role.primary_id() {
                self.send(Dest::Node(primary), Body::MfStart);
            }
        }
    }

    /// Redis `clusterHandleSlaveFailover`.
    fn tick_election(&mut self, now_ms: u64, rng_u64: u64) {
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
            self.topo.current_epoch += 1;
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
    fn my_rank(&self, primary: NodeId) -> u64 {
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

    fn check_election_won(&mut self, now_ms: u64) {
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
    fn take_over_from(&mut self, now_ms: u64, primary: NodeId, epoch: u64) {
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

    // ---------------------------------------------------------------- state

    /// Cluster state as of `now_ms`: slot coverage, and for a primary, reaching a majority.
    fn state_ok_at(&self, now_ms: u64) -> bool {
        self.coverage_ok(now_ms) && self.reaches_majority(now_ms)
    }

    fn coverage_ok(&self, now_ms: u64) -> bool {
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
    fn reaches_majority(&self, now_ms: u64) -> bool {
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
    fn settled(&self, now_ms: u64) -> bool {
        self.majority_since_ms
            .is_some_and(|at| now_ms.saturating_sub(at) >= 2 * self.config.node_timeout_ms)
    }

    fn in_rejoin_delay(&self, now_ms: u64) -> bool {
        self.minority_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < self.config.rejoin_delay_ms())
    }

    fn update_state(&mut self, now_ms: u64) {
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

    // ---------------------------------------------------------------- admin operations

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

    /// `CLUSTER FAILOVER [FORCE|TAKEOVER]` on a replica.
    pub fn failover(&mut self, now_ms: u64, mode: FailoverMode) -> Result<(), ClusterError> {
        let Role::Replica { of: primary } = self.topo.myself().role else {
            return Err(ClusterError::NotReplica);
        };
        let p = self
            .topo
            .node(primary)
            .ok_or(ClusterError::UnknownNode(primary))?;
        match mode {
            FailoverMode::Takeover => {
                self.bump_epoch_without_consensus();
                let epoch = self.topo.myself().config_epoch;
                self.manual = None;
                self.election = None;
                self.take_over_from(now_ms, primary, epoch);
            }
            FailoverMode::Force => {
                self.manual = Some(ManualFailover {
                    deadline_ms: now_ms.saturating_add(MANUAL_FAILOVER_TIMEOUT_MS),
                    primary_offset: None,
                    ready: true,
                    mfstart_sent_ms: now_ms,
                });
            }
            FailoverMode::Default => {
                if p.flags.failing() {
                    return Err(ClusterError::PrimaryDown);
                }
                self.manual = Some(ManualFailover {
                    deadline_ms: now_ms.saturating_add(MANUAL_FAILOVER_TIMEOUT_MS),
                    primary_offset: None,
                    ready: false,
                    mfstart_sent_ms: now_ms,
                });
                self.send(Dest::Node(primary), Body::MfStart);
            }
        }
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

    // ---------------------------------------------------------------- helpers

    /// Redis' `clusterBumpConfigEpochWithoutConsensus`: a new config epoch unless ours is
    /// already the greatest known (and not 0). Stricter than Redis: ours must also be the
    /// only one that great (a tie with another node's would not make our claims win).
    /// Returns whether it bumped.
    fn bump_epoch_unless_greatest(&mut self) -> bool {
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

    fn bump_epoch_without_consensus(&mut self) {
        self.topo.current_epoch += 1;
        let epoch = self.topo.current_epoch;
        self.topo.myself_mut().config_epoch = epoch;
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

    fn header(&self) -> Header {
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
    fn gossip_for(&mut self, to: Option<NodeId>) -> Vec<GossipEntry> {
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

    fn send_ping_kind(&mut self, now_ms: u64, to: NodeId, kind: PingKind) {
        let gossip = self.gossip_for(Some(to));
        let body = match kind {
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

    fn broadcast_pong(&mut self, now_ms: u64) {
        let targets: Vec<NodeId> = self.other_nodes().collect();
        for t in targets {
            self.send_ping_kind(now_ms, t, PingKind::Pong);
        }
    }

    fn send(&mut self, to: Dest, body: Body) {
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

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum PingKind {
    Ping,
    Pong,
}

/// No pong and no message of any kind for `timeout_ms`. Every peer is pinged each
/// `ping_interval_ms`, so silence means unreachable — also right after a long pause of this
/// node (no outstanding ping is needed to notice that everything it knows is old).
fn unreachable(n: &NodeInfo, now_ms: u64, timeout_ms: u64) -> bool {
    now_ms.saturating_sub(n.pong_received_ms) > timeout_ms
        && now_ms.saturating_sub(n.data_received_ms) > timeout_ms
}

/// Validates admin slot arguments: in range and no repeats.
fn checked_slots(slots: &[u32]) -> Result<Vec<u16>, ClusterError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT_MS: u64 = 1000;

    /// Nodes wired together with a lossless, instant bus (quinn-proto's `Pair`, for n nodes).
    struct Mesh {
        nodes: Vec<ClusterNode>,
        now_ms: u64,
        /// Messages to index `i` are discarded while `cut[i]`.
        cut: Vec<bool>,
    }

    impl Mesh {
        fn new(n: usize) -> Mesh {
            let config = Config {
                node_timeout_ms: TIMEOUT_MS,
                require_full_coverage: true,
            };
            let nodes = (0..n)
                .map(|i| {
                    let info = NodeInfo::new(
                        NodeId::from_u128(i as u128 + 1),
                        format!("h{i}"),
                        7000,
                        17000,
                    );
                    ClusterNode::new(config.clone(), info)
                })
                .collect();
            Mesh {
                nodes,
                now_ms: 1,
                cut: vec![false; n],
            }
        }

        fn id(&self, i: usize) -> NodeId {
            self.nodes[i].myself_id()
        }

        fn index(&self, to: &Dest) -> Option<usize> {
            (0..self.nodes.len()).find(|&j| match to {
                Dest::Node(id) => self.id(j) == *id,
                Dest::Addr { host, .. } => self.nodes[j].topology().myself().host == *host,
            })
        }

        /// Delivers until no node has anything to send.
        fn settle(&mut self) {
            for _ in 0..10_000 {
                let mut moved = false;
                for i in 0..self.nodes.len() {
                    while let Some(out) = self.nodes[i].poll_outgoing() {
                        moved = true;
                        let Some(j) = self.index(&out.to) else {
                            continue;
                        };
                        if self.cut[i] || self.cut[j] {
                            continue;
                        }
                        let now = self.now_ms;
                        self.nodes[j].handle_message(now, out.msg).unwrap();
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("bus never settled");
        }

        fn run(&mut self, duration_ms: u64) {
            let end = self.now_ms + duration_ms;
            while self.now_ms < end {
                self.now_ms += TICK_INTERVAL_MS;
                for i in 0..self.nodes.len() {
                    let now = self.now_ms;
                    self.nodes[i].tick(now, i as u64 * 7919 + now);
                }
                self.settle();
            }
        }

        /// Nodes 0..primaries own equal slot ranges; the rest replicate round-robin.
        fn cluster(n: usize, primaries: usize) -> Mesh {
            let mut m = Mesh::new(n);
            for j in 1..n {
                let host = format!("h{j}");
                m.nodes[0].meet(1, &host, 17000).unwrap();
            }
            let per = SLOT_COUNT / primaries;
            for p in 0..primaries {
                let end = if p + 1 == primaries {
                    SLOT_COUNT
                } else {
                    (p + 1) * per
                };
                let slots: Vec<u32> = (p * per..end).map(|s| s as u32).collect();
                m.nodes[p].add_slots(1, &slots).unwrap();
            }
            m.run(1000);
            for r in primaries..n {
                let p = m.id((r - primaries) % primaries);
                let now = m.now_ms;
                m.nodes[r].replicate(now, p).unwrap();
            }
            // Long enough for the nodes to settle and resolve epoch collisions.
            m.run(1000 + 2 * TIMEOUT_MS);
            m
        }
    }

    fn header_of(node: &ClusterNode) -> Header {
        node.header()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Corrupted frames either fail to decode or, if they still decode, are rejected or
        /// applied by the state machine — never a panic.
        #[test]
        fn corrupted_frames_never_panic_the_node(
            mutations in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
            kind in 0usize..4,
        ) {
            use std::sync::OnceLock;
            static BASE: OnceLock<(ClusterNode, Vec<Vec<u8>>)> = OnceLock::new();
            let (node, frames) = BASE.get_or_init(|| {
                let m = Mesh::cluster(4, 3);
                let h = header_of(&m.nodes[3]);
                let gossip = m.nodes[1].clone().gossip_for(None);
                let bodies = [
                    Body::Ping { gossip },
                    Body::FailoverAuthRequest { force_ack: true },
                    Body::Update { node: m.id(1), config_epoch: 9, slots: m.nodes[1].topology().slot_map().bitmap_of(m.id(1)) },
                    Body::Fail { node: m.id(2) },
                ];
                let frames = bodies
                    .into_iter()
                    .map(|body| bus::encode(&BusMessage { header: h.clone(), body }).unwrap())
                    .collect();
                (m.nodes[0].clone(), frames)
            });
            let mut frame = frames[kind].clone();
            for (at, byte) in mutations {
                let i = at % frame.len();
                frame[i] = byte;
            }
            if let Ok(Some((msg, _))) = bus::decode(&frame) {
                let mut n = node.clone();
                let _ = n.handle_message(10_000, msg);
                n.tick(10_100, 1);
                while n.poll_outgoing().is_some() {}
            }
        }
    }

    #[test]
    fn a_cluster_forms_with_unique_epochs() {
        let m = Mesh::cluster(4, 3);
        let mut epochs: Vec<u64> = (0..3)
            .map(|i| m.nodes[i].topology().myself().config_epoch)
            .collect();
        epochs.sort_unstable();
        epochs.dedup();
        assert_eq!(epochs.len(), 3, "collision resolution gave unique epochs");
        for n in &m.nodes {
            assert!(n.topology().state_ok());
            assert_eq!(n.topology().size(), 3);
            assert_eq!(n.topology().nodes().count(), 4);
        }
        assert_eq!(
            m.nodes[3].topology().myself().role,
            Role::Replica { of: m.id(0) }
        );
    }

    #[test]
    fn malformed_messages_are_rejected_without_change() {
        let mut m = Mesh::cluster(3, 3);
        let mut msg = BusMessage {
            header: header_of(&m.nodes[1]),
            body: Body::Ping { gossip: vec![] },
        };
        msg.header.slots = postcard::from_bytes(&[2, 0xff, 0xff]).unwrap();
        let before = m.nodes[0].topology().cluster_nodes();
        assert!(matches!(
            m.nodes[0].handle_message(m.now_ms, msg.clone()),
            Err(ClusterError::Bus(_))
        ));
        msg.header = header_of(&m.nodes[0]);
        assert!(m.nodes[0].handle_message(m.now_ms, msg).is_err(), "own id");
        assert_eq!(m.nodes[0].topology().cluster_nodes(), before);
    }

    #[test]
    fn a_primary_votes_once_per_epoch() {
        let mut m = Mesh::cluster(5, 3);
        // Replicas 3 and 4 follow primaries 0 and 1. Pretend both primaries failed.
        let (p0, p1) = (m.id(0), m.id(1));
        for id in [p0, p1] {
            let n = m.nodes[2].topo.nodes.get_mut(&id).unwrap();
            n.flags.set(NodeFlags::FAIL);
        }
        let epoch = m.nodes[2].topology().current_epoch() + 1;
        let req = |i: usize| {
            let mut h = header_of(&m.nodes[i]);
            h.current_epoch = epoch;
            BusMessage {
                header: h,
                body: Body::FailoverAuthRequest { force_ack: false },
            }
        };
        let (r3, r4) = (req(3), req(4));
        let now = m.now_ms;
        m.nodes[2].handle_message(now, r3).unwrap();
        m.nodes[2].handle_message(now, r4).unwrap();
        let acks: Vec<Dest> = std::iter::from_fn(|| m.nodes[2].poll_outgoing())
            .filter(|o| o.msg.body == Body::FailoverAuthAck)
            .map(|o| o.to)
            .collect();
        assert_eq!(acks, vec![Dest::Node(m.id(3))]);
        assert_eq!(m.nodes[2].persistent_state().last_vote_epoch, epoch);
    }

    #[test]
    fn no_vote_unless_the_primary_is_failed() {
        let mut m = Mesh::cluster(4, 3);
        let mut h = header_of(&m.nodes[3]);
        h.current_epoch += 1;
        let msg = BusMessage {
            header: h,
            body: Body::FailoverAuthRequest { force_ack: false },
        };
        let now = m.now_ms;
        m.nodes[1].handle_message(now, msg).unwrap();
        assert!(std::iter::from_fn(|| m.nodes[1].poll_outgoing())
            .all(|o| o.msg.body != Body::FailoverAuthAck));
    }

    #[test]
    fn a_stale_claim_gets_an_update_and_yields() {
        let mut m = Mesh::cluster(3, 3);
        // Node 1 takes slot 0 from node 0 with a fresh epoch while node 0 does not hear it.
        m.cut[0] = true;
        let (now, id0, id1) = (m.now_ms, m.id(0), m.id(1));
        m.nodes[1]
            .set_slot(now, 0, SetSlot::Importing(id0), 0)
            .unwrap();
        m.nodes[1].set_slot(now, 0, SetSlot::Node(id1), 0).unwrap();
        m.settle();
        assert_eq!(m.nodes[2].topology().owner(0), Some(id1));
        assert_eq!(m.nodes[0].topology().owner(0), Some(m.id(0)));
        m.cut[0] = false;
        // Node 0's next ping claims slot 0 with its old epoch; node 1 or 2 answers UPDATE.
        m.run(1000);
        assert_eq!(m.nodes[0].topology().owner(0), Some(id1));
        assert!(
            m.nodes[0].topology().myself().role.is_primary(),
            "kept its other slots"
        );
    }

    #[test]
    fn bumpepoch_keeps_a_unique_greatest_epoch_and_breaks_a_tie() {
        let mut m = Mesh::cluster(3, 3);
        let now = m.now_ms;
        let (bumped, top) = m.nodes[1].bump_epoch(now);
        assert!(bumped || top > 0);
        m.settle();
        // Already the unique greatest: BUMPEPOCH keeps it.
        assert_eq!(m.nodes[1].bump_epoch(now), (false, top));
        // Tied with another node's: it bumps above every epoch.
        m.nodes[2].topo.myself_mut().config_epoch = top;
        assert_eq!(m.nodes[2].bump_epoch(now), (true, top + 1));
    }

    #[test]
    fn a_slot_in_transit_does_not_put_the_cluster_down() {
        let mut m = Mesh::cluster(3, 3);
        let (id0, id1) = (m.id(0), m.id(1));
        let now = m.now_ms;
        m.nodes[1]
            .set_slot(now, 0, SetSlot::Importing(id0), 0)
            .unwrap();
        m.nodes[0]
            .set_slot(now, 0, SetSlot::Migrating(id1), 0)
            .unwrap();
        // The source hands the slot over first: node 2 hears its claim without slot 0
        // before the target claims it.
        m.nodes[0].set_slot(now, 0, SetSlot::Node(id1), 0).unwrap();
        m.settle();
        assert_eq!(m.nodes[2].topology().owner(0), None, "released at node 2");
        assert!(
            m.nodes[2].can_write(m.now_ms),
            "a slot in transit is not a coverage hole"
        );
        m.run(TIMEOUT_MS / 2);
        assert!(m.nodes[2].can_write(m.now_ms));
        let now = m.now_ms;
        m.nodes[1].set_slot(now, 0, SetSlot::Node(id1), 0).unwrap();
        m.settle();
        assert_eq!(m.nodes[2].topology().owner(0), Some(id1));
        assert!(m.nodes[2].can_write(m.now_ms));
    }

    #[test]
    fn an_unclaimed_slot_is_a_hole_after_a_node_timeout() {
        let mut m = Mesh::cluster(3, 3);
        let id1 = m.id(1);
        let now = m.now_ms;
        m.nodes[0].set_slot(now, 0, SetSlot::Node(id1), 0).unwrap();
        m.settle();
        assert!(m.nodes[2].can_write(m.now_ms));
        // Node 1 never claims it: after a node timeout node 2 counts the hole.
        m.run(TIMEOUT_MS + 200);
        assert_eq!(m.nodes[2].topology().owner(0), None);
        assert!(!m.nodes[2].can_write(m.now_ms));
    }

    #[test]
    fn set_config_epoch_only_on_a_lone_fresh_node() {
        let mut m = Mesh::new(1);
        assert_eq!(
            m.nodes[0].set_config_epoch(-1),
            Err(ClusterError::BadEpoch(-1))
        );
        m.nodes[0].set_config_epoch(5).unwrap();
        let st = m.nodes[0].persistent_state();
        assert_eq!((st.config_epoch, st.current_epoch), (5, 5));
        assert_eq!(
            m.nodes[0].set_config_epoch(6),
            Err(ClusterError::EpochAlreadySet)
        );
        let mut m = Mesh::cluster(2, 2);
        m.nodes[1].topo.myself_mut().config_epoch = 0;
        assert_eq!(
            m.nodes[1].set_config_epoch(9),
            Err(ClusterError::EpochWithPeers)
        );
    }

    #[test]
    fn an_isolated_primary_stops_writes_after_the_timeout_and_fails_over() {
        let mut m = Mesh::cluster(6, 3);
        let t0 = m.now_ms;
        assert!(m.nodes[0].can_write(t0));
        m.cut[0] = true;
        m.run(TIMEOUT_MS / 2);
        assert!(m.nodes[0].can_write(m.now_ms));
        m.run(TIMEOUT_MS / 2 + TICK_INTERVAL_MS);
        assert!(!m.nodes[0].can_write(m.now_ms));
        m.run(4 * TIMEOUT_MS);
        assert!(m.nodes[3].topology().myself().role.is_primary());
        assert_eq!(m.nodes[1].topology().owner(0), Some(m.id(3)));
        m.cut[0] = false;
        m.run(2 * TIMEOUT_MS);
        assert_eq!(
            m.nodes[0].topology().myself().role,
            Role::Replica { of: m.id(3) }
        );
        assert!(m.nodes.iter().all(|n| n.topology().state_ok()));
    }

    #[test]
    fn a_returning_primary_with_a_colliding_epoch_does_not_win_its_slots_back() {
        // Node 0 fails over to node 3 while cut off. It comes back with a config epoch equal
        // to node 1's (a collision not yet resolved when it went away) and the lowest id, so
        // the collision rule makes it take a fresh epoch: that epoch must not outbid the
        // failover and win its old slots back.
        let mut m = Mesh::cluster(6, 3);
        m.cut[0] = true;
        m.run(5 * TIMEOUT_MS);
        assert_eq!(m.nodes[1].topology().owner(0), Some(m.id(3)));
        let e1 = m.nodes[1].topology().myself().config_epoch;
        m.nodes[0].topo.myself_mut().config_epoch = e1;
        m.cut[0] = false;
        m.run(3 * TIMEOUT_MS);
        assert_eq!(
            m.nodes[0].topology().myself().role,
            Role::Replica { of: m.id(3) }
        );
        for n in &m.nodes {
            assert_eq!(n.topology().owner(0), Some(m.id(3)));
        }
    }

    #[test]
    fn admin_errors_use_redis_wording() {
        let mut m = Mesh::cluster(4, 3);
        let now = m.now_ms;
        let e = m.nodes[0].add_slots(now, &[0]).unwrap_err();
        assert_eq!(e.to_string(), "ERR Slot 0 is already busy");
        let e = m.nodes[0].add_slots(now, &[16384]).unwrap_err();
        assert_eq!(e.to_string(), "ERR Invalid or out of range slot");
        let e = m.nodes[0].failover(now, FailoverMode::Force).unwrap_err();
        assert_eq!(e, ClusterError::NotReplica);
        let primary = m.id(0);
        assert_eq!(
            m.nodes[3].forget(now, primary),
            Err(ClusterError::ForgetPrimary)
        );
        let me = m.id(3);
        assert_eq!(
            m.nodes[3].replicate(now, me),
            Err(ClusterError::ReplicateSelf)
        );
        let id1 = m.id(1);
        assert_eq!(m.nodes[0].replicate(now, id1), Err(ClusterError::NotEmpty));
    }

    #[test]
    fn takeover_needs_no_votes() {
        let mut m = Mesh::cluster(4, 3);
        m.cut[0] = true;
        m.cut[1] = true;
        m.cut[2] = true;
        let now = m.now_ms;
        m.nodes[3].failover(now, FailoverMode::Takeover).unwrap();
        assert!(m.nodes[3].topology().myself().role.is_primary());
        assert_eq!(m.nodes[3].topology().owner(0), Some(m.id(3)));
        let epochs = m.nodes[3].persistent_state();
        assert_eq!(epochs.config_epoch, epochs.current_epoch);
        assert!(matches!(
            std::iter::from_fn(|| m.nodes[3].poll_event()).last(),
            Some(Event::StateChanged { .. }) | Some(Event::PromotedToPrimary { .. })
        ));
    }

    #[test]
    fn reset_forgets_everything() {
        let mut m = Mesh::cluster(4, 3);
        let now = m.now_ms;
        m.nodes[1].reset(now, Some(NodeId::from_u128(99)));
        let t = m.nodes[1].topology();
        assert_eq!(t.nodes().count(), 1);
        assert_eq!(t.slot_map().assigned(), 0);
        assert_eq!(t.myself_id(), NodeId::from_u128(99));
        assert_eq!(t.current_epoch(), 0);
    }

    /// Delivers node `from`'s queued messages one at a time (none dropped), handing each
    /// to `check` after the receiver applied it.
    fn deliver_each(m: &mut Mesh, from: usize, mut check: impl FnMut(&Mesh, usize, &'static str)) {
        while let Some(out) = m.nodes[from].poll_outgoing() {
            let Some(j) = m.index(&out.to) else {
                continue;
            };
            let kind = out.msg.kind();
            let now = m.now_ms;
            m.nodes[j].handle_message(now, out.msg).unwrap();
            check(m, j, kind);
        }
    }

    #[test]
    fn learns_repl_port_from_meet_ping_and_pong() {
        let mut m = Mesh::new(2);
        m.nodes[0].set_repl_port(7102);
        m.nodes[1].set_repl_port(7202);
        let (a, b) = (m.id(0), m.id(1));
        m.nodes[0].meet(1, "h1", 17000).unwrap();
        let mut seen_meet = false;
        deliver_each(&mut m, 0, |m, j, kind| {
            assert_eq!((j, kind), (1, "meet"));
            let a_at_b = m.nodes[1].topology().node(a).unwrap();
            assert_eq!(a_at_b.repl_port, 7102);
            assert_eq!(a_at_b.repl_addr().as_deref(), Some("h0:7102"));
            seen_meet = true;
        });
        assert!(seen_meet);
        // The meeting node ignores the PONG of a node it cannot name yet (as Redis) and
        // learns it from the PING that follows; whichever message introduces it carries
        // the port, and every later PING/PONG header keeps it.
        let mut kinds = Vec::new();
        for _ in 0..20 {
            m.now_ms += TICK_INTERVAL_MS;
            let now = m.now_ms;
            m.nodes[0].tick(now, 5);
            m.nodes[1].tick(now, 3);
            deliver_each(&mut m, 1, |m, j, kind| {
                if j == 0 {
                    if let Some(b_at_a) = m.nodes[0].topology().node(b) {
                        assert_eq!(b_at_a.repl_addr().as_deref(), Some("h1:7202"));
                        kinds.push(kind);
                    }
                }
            });
            deliver_each(&mut m, 0, |_, _, _| {});
        }
        assert!(
            kinds.contains(&"ping") && kinds.contains(&"pong"),
            "{kinds:?}"
        );
        m.run(500);
        // A changed port (a restart with another `[replication] listen`) reaches the peer
        // with the next header; none (0) reads as no address.
        m.nodes[1].set_repl_port(7302);
        m.run(500);
        assert_eq!(m.nodes[0].topology().node(b).unwrap().repl_port, 7302);
        m.nodes[1].set_repl_port(0);
        m.run(500);
        assert_eq!(m.nodes[0].topology().node(b).unwrap().repl_addr(), None);
        // Redis-compatible output does not show it.
        assert!(!m.nodes[0].topology().cluster_nodes().contains("7302"));
    }

    #[test]
    fn gossip_carries_repl_port() {
        let mut m = Mesh::new(3);
        for i in 0..3 {
            m.nodes[i].set_repl_port(7100 + i as u16);
        }
        let c = m.id(2);
        // 0 and 2 form a cluster; 1 has never heard of 2.
        m.nodes[0].meet(1, "h2", 17000).unwrap();
        m.run(500);
        assert!(m.nodes[1].topology().node(c).is_none());
        let gossip = m.nodes[0].gossip_for(None);
        let g = gossip
            .iter()
            .find(|g| g.id == c)
            .expect("0 gossips about 2");
        assert_eq!(g.repl_port, 7102);
        // 0 meets 1: the MEET's gossip introduces 2 to 1, with its replication port,
        // before 2 and 1 ever talked.
        let now = m.now_ms;
        m.nodes[0].meet(now, "h1", 17000).unwrap();
        let mut learned = false;
        deliver_each(&mut m, 0, |m, j, kind| {
            if (j, kind) == (1, "meet") {
                let c_at_1 = m.nodes[1].topology().node(c).expect("learned by gossip");
                assert!(c_at_1.flags.has(NodeFlags::HANDSHAKE));
                assert_eq!(c_at_1.repl_addr().as_deref(), Some("h2:7102"));
                learned = true;
            }
        });
        assert!(learned);
        m.run(1000);
        for i in 0..3 {
            for j in 0..3 {
                let n = m.nodes[i].topology().node(m.id(j)).unwrap();
                assert_eq!(n.repl_port, 7100 + j as u16, "node {j} as node {i} sees it");
            }
        }
    }
}
