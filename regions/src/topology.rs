//! The cluster as one node sees it: node ids, roles, config epochs, the 16384-slot map, this
//! node's MIGRATING/IMPORTING slots, and the pure queries a server needs on every command
//! (`route`) or on `CLUSTER SLOTS|SHARDS|NODES|INFO` (plain data; the server encodes RESP).
//!
//! `Topology` is owned and mutated by [`crate::node::ClusterNode`]; the server only reads it.
//! Nothing here reads a clock: times are whatever `now_ms` the caller passed to the node.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use meridian_crdt::slot::SLOT_COUNT;

/// Bytes of a slot bitmap: one bit per slot.
pub const SLOT_BITMAP_BYTES: usize = SLOT_COUNT / 8;
/// Length of a Redis-style node name (hex characters).
pub const NODE_NAME_HEX_LEN: usize = 40;

/// A node's identity: a uuid, shown to Redis clients as a 40-hex-char name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub Uuid);

impl NodeId {
    pub fn from_u128(v: u128) -> Self {
        NodeId(Uuid::from_u128(v))
    }

    /// The 40-hex-char Redis name: the uuid's 32 hex digits followed by 8 hex digits of a
    /// fold of the uuid, so the name is derivable from the id and checkable when parsed.
    pub fn redis_name(&self) -> String {
        let mut name = String::with_capacity(NODE_NAME_HEX_LEN);
        let _ = write!(name, "{}{:08x}", self.0.simple(), Self::check_word(self.0));
        debug_assert_eq!(name.len(), NODE_NAME_HEX_LEN);
        name
    }

    /// Parses a name produced by [`NodeId::redis_name`] (case-insensitive). `None` if it is
    /// not 40 hex chars or the check word does not match.
    pub fn from_redis_name(name: &str) -> Option<NodeId> {
        if name.len() != NODE_NAME_HEX_LEN || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let uuid = Uuid::try_parse(name.get(..32)?).ok()?;
        let check = u32::from_str_radix(name.get(32..)?, 16).ok()?;
        (check == Self::check_word(uuid)).then_some(NodeId(uuid))
    }

    fn check_word(uuid: Uuid) -> u32 {
        let v = uuid.as_u128();
        let folded = (v >> 64) as u64 ^ v as u64;
        (folded >> 32) as u32 ^ folded as u32 ^ 0x6d65_7269 // "meri"
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redis_name())
    }
}

/// Primary (owns slots, takes writes) or replica of a primary in the same region.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Replica { of: NodeId },
}

impl Role {
    pub fn is_primary(&self) -> bool {
        matches!(self, Role::Primary)
    }
    pub fn primary_id(&self) -> Option<NodeId> {
        match self {
            Role::Primary => None,
            Role::Replica { of } => Some(*of),
        }
    }
}

/// Node flags as in `CLUSTER NODES` (the bits also travel in gossip).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFlags(pub u8);

impl NodeFlags {
    /// Possibly failing: this node got no pong for `node_timeout_ms` (Redis `fail?`).
    pub const PFAIL: u8 = 1;
    /// Failing, agreed by a majority of primaries.
    pub const FAIL: u8 = 2;
    /// Learned of but never answered yet.
    pub const HANDSHAKE: u8 = 4;
    /// Never takes part in a failover as the promoted replica.
    pub const NOFAILOVER: u8 = 8;
    /// Bits that may appear on the wire; anything else is rejected by the codec.
    pub const ALL: u8 = Self::PFAIL | Self::FAIL | Self::HANDSHAKE | Self::NOFAILOVER;

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
    pub fn set(&mut self, bit: u8) {
        self.0 |= bit;
    }
    pub fn clear(&mut self, bit: u8) {
        self.0 &= !bit;
    }
    pub fn failing(self) -> bool {
        self.has(Self::PFAIL | Self::FAIL)
    }
}

/// One bit per slot, `SLOT_BITMAP_BYTES` long when valid. Reads of an invalid (short) bitmap
/// see no slots rather than panicking; the codec rejects wrong lengths.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotBitmap(Vec<u8>);

// As a byte string (one length + memcpy in postcard), not a sequence of 2048 elements.
impl Serialize for SlotBitmap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SlotBitmap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = SlotBitmap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a slot bitmap byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<SlotBitmap, E> {
                if v.len() > SLOT_BITMAP_BYTES {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(SlotBitmap(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<SlotBitmap, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(BytesVisitor)
    }
}

impl std::fmt::Debug for SlotBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotBitmap({:?})", ranges_of(self.iter()))
    }
}

impl Default for SlotBitmap {
    fn default() -> Self {
        SlotBitmap(vec![0; SLOT_BITMAP_BYTES])
    }
}

impl SlotBitmap {
    pub fn is_valid(&self) -> bool {
        self.0.len() == SLOT_BITMAP_BYTES
    }
    pub fn get(&self, slot: u16) -> bool {
        self.0
            .get(usize::from(slot) / 8)
            .is_some_and(|b| b & (1 << (slot % 8)) != 0)
    }
    pub fn set(&mut self, slot: u16, on: bool) {
        if let Some(b) = self.0.get_mut(usize::from(slot) / 8) {
            if on {
                *b |= 1 << (slot % 8);
            } else {
                *b &= !(1 << (slot % 8));
            }
        }
    }
    pub fn count(&self) -> usize {
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }
    /// Slots set here and not in `other`, ascending.
    pub fn minus(&self, other: &SlotBitmap) -> Vec<u16> {
        let mut out = Vec::new();
        for (i, &c) in self.0.iter().enumerate() {
            let d = c & !other.0.get(i).copied().unwrap_or(0);
            for bit in 0..8u16 {
                if d & (1 << bit) != 0 {
                    out.push(i as u16 * 8 + bit);
                }
            }
        }
        out
    }
    /// Set slots in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &b)| {
            (0..8u16).filter_map(move |bit| (b & (1 << bit) != 0).then_some(i as u16 * 8 + bit))
        })
    }
}

/// Contiguous `(start, end)` inclusive ranges of an ascending slot sequence.
pub fn ranges_of(slots: impl Iterator<Item = u16>) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for s in slots {
        match out.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(s) => *end = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// What one node knows about another (or itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Client-facing host (IP or name) and port; the bus is on the same host at `bus_port`.
    pub host: String,
    pub port: u16,
    pub bus_port: u16,
    /// UDP port of the node's inter-region replication endpoint on `host` (0 = none: the
    /// node has no `[replication]` table). Learned from the bus like `port`; not part of any
    /// `CLUSTER` reply (Redis has no such field).
    pub repl_port: u16,
    pub role: Role,
    pub flags: NodeFlags,
    /// The epoch of this node's last slot-configuration change as a primary (a replica's
    /// headers carry its primary's instead, as in Redis).
    pub config_epoch: u64,
    /// Replication offset as last reported (orders replicas for promotion).
    pub repl_offset: u64,
    /// Local observations (ms in the caller's clock) kept for failure detection and `NODES`:
    /// when the unanswered ping was sent (0 = none pending), last pong, last message of any kind.
    pub ping_sent_ms: u64,
    pub pong_received_ms: u64,
    pub data_received_ms: u64,
    /// When we flagged FAIL (0 = not failing).
    pub fail_time_ms: u64,
}

impl NodeInfo {
    pub fn new(id: NodeId, host: impl Into<String>, port: u16, bus_port: u16) -> Self {
        NodeInfo {
            id,
            host: host.into(),
            port,
            bus_port,
            repl_port: 0,
            role: Role::Primary,
            flags: NodeFlags::default(),
            config_epoch: 0,
            repl_offset: 0,
            ping_sent_ms: 0,
            pong_received_ms: 0,
            data_received_ms: 0,
            fail_time_ms: 0,
        }
    }
    /// `host:port` — what MOVED/ASK replies carry.
    pub fn client_addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
    /// `host:bus_port` — where cluster-bus messages go.
    pub fn bus_addr(&self) -> String {
        format!("{}:{}", self.host, self.bus_port)
    }
    /// `host:repl_port` (`[host]:repl_port` for an IPv6 literal) — the node's inter-region
    /// replication endpoint, if it has one.
    pub fn repl_addr(&self) -> Option<String> {
        (self.repl_port != 0).then(|| {
            if self.host.contains(':') && !self.host.starts_with('[') {
                format!("[{}]:{}", self.host, self.repl_port)
            } else {
                format!("{}:{}", self.host, self.repl_port)
            }
        })
    }
}

/// Slot → owning primary, with each owner's bitmap and count kept in step, so "does this
/// claim differ from what we know" is one 2 KiB comparison.
#[derive(Clone, Debug)]
pub struct SlotMap {
    owners: Vec<Option<NodeId>>,
    owned: BTreeMap<NodeId, (SlotBitmap, usize)>,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            owners: vec![None; SLOT_COUNT],
            owned: BTreeMap::new(),
        }
    }
}

impl SlotMap {
    pub fn owner(&self, slot: u16) -> Option<NodeId> {
        self.owners.get(usize::from(slot)).copied().flatten()
    }
    pub fn count_of(&self, id: NodeId) -> usize {
        self.owned.get(&id).map_or(0, |(_, n)| *n)
    }
    pub fn assigned(&self) -> usize {
        self.owned.values().map(|(_, n)| n).sum()
    }
    /// Owners of at least one slot.
    pub fn owners(&self) -> impl Iterator<Item = (NodeId, usize)> + '_ {
        self.owned.iter().map(|(id, (_, n))| (*id, *n))
    }
    /// Slots owned by `id`, ascending.
    pub fn slots_of(&self, id: NodeId) -> impl Iterator<Item = u16> + '_ {
        self.owned.get(&id).into_iter().flat_map(|(b, _)| b.iter())
    }
    pub fn bitmap_of(&self, id: NodeId) -> SlotBitmap {
        self.owned
            .get(&id)
            .map_or_else(SlotBitmap::default, |(b, _)| b.clone())
    }
    /// Whether `id` owns exactly the slots of `claim`.
    pub fn owns_exactly(&self, id: NodeId, claim: &SlotBitmap) -> bool {
        match self.owned.get(&id) {
            Some((b, _)) => b == claim,
            None => claim.is_empty(),
        }
    }
    /// Slots set in `claim` that `id` does not own here, ascending: the only slots a claim by
    /// `id` can change or conflict on.
    pub fn claimed_not_owned(&self, id: NodeId, claim: &SlotBitmap) -> Vec<u16> {
        match self.owned.get(&id) {
            Some((owned, _)) => claim.minus(owned),
            None => claim.iter().collect(),
        }
    }
    /// `(start, end, owner)` runs over the assigned slots.
    pub fn runs(&self) -> Vec<(u16, u16, NodeId)> {
        let mut out: Vec<(u16, u16, NodeId)> = Vec::new();
        for (s, owner) in self.owners.iter().enumerate() {
            let Some(owner) = owner else { continue };
            let s = s as u16;
            match out.last_mut() {
                Some((_, end, o)) if *o == *owner && *end + 1 == s => *end = s,
                _ => out.push((s, s, *owner)),
            }
        }
        out
    }
    pub(crate) fn assign(&mut self, slot: u16, owner: Option<NodeId>) {
        let Some(cell) = self.owners.get_mut(usize::from(slot)) else {
            return;
        };
        if *cell == owner {
            return;
        }
        if let Some(old) = cell.take() {
            let (bits, n) = self
                .owned
                .get_mut(&old)
                .expect("an owner of a slot has an entry");
            assert!(*n > 0 && bits.get(slot), "slot map out of step");
            bits.set(slot, false);
            *n -= 1;
            if *n == 0 {
                self.owned.remove(&old);
            }
        }
        if let Some(new) = owner {
            let (bits, n) = self.owned.entry(new).or_default();
            bits.set(slot, true);
            *n += 1;
        }
        *cell = owner;
    }
}

/// Two maps are equal when every owner owns the same slots.
impl PartialEq for SlotMap {
    fn eq(&self, other: &Self) -> bool {
        self.owned == other.owned
    }
}

impl Eq for SlotMap {}

/// Inputs of one routing decision (Redis `getNodeByQuery`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RouteRequest {
    pub slot: u16,
    /// How many of the command's keys exist in the local keyspace and how many do not. Only
    /// looked at while the slot is MIGRATING or IMPORTING here (the shell may leave both 0
    /// otherwise): a migrating source serves when nothing is missing, redirects with ASK when
    /// nothing is here, and answers TRYAGAIN when the keys are split.
    pub existing_keys: usize,
    pub missing_keys: usize,
    /// The command names more than one distinct key (an importing target answers TRYAGAIN
    /// to such a command under ASKING unless every key is already here).
    pub multiple_keys: bool,
    /// The client sent `ASKING` just before this command.
    pub asking: bool,
    /// A read-only command from a client in `READONLY` mode (replicas may serve it).
    pub readonly_read: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ClusterDownReason {
    /// The cluster state is FAIL (uncovered slots, or this primary lost the majority).
    ClusterFail,
    /// Nobody owns the slot.
    Unbound,
}

/// What a node does with an external invalidation of one key ([`Topology::invalidation_scope`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum InvalidationScope {
    /// The node serves the key's slot as primary (or imports it): apply it in full, as a
    /// write that reaches its replicas and the other regions.
    Apply,
    /// The node replicates the slot's primary: raise the key's floor only (a max, no write,
    /// no dot), so that a promoted replica already hides and refuses stale fills.
    FloorOnly,
    /// Another shard's key: nothing to do.
    Skip,
}

/// Where a command must run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Local,
    Moved {
        slot: u16,
        addr: String,
    },
    Ask {
        slot: u16,
        addr: String,
    },
    ClusterDown(ClusterDownReason),
    /// A multi-key command on a slot being migrated whose keys are split between the source
    /// and the target: the client retries after a moment (Redis `-TRYAGAIN`).
    TryAgain,
}

impl Route {
    /// The Redis error text (without the leading `-`), or `None` for `Local`.
    pub fn error_text(&self) -> Option<String> {
        match self {
            Route::Local => None,
            Route::Moved { slot, addr } => Some(format!("MOVED {slot} {addr}")),
            Route::Ask { slot, addr } => Some(format!("ASK {slot} {addr}")),
            Route::ClusterDown(ClusterDownReason::ClusterFail) => {
                Some("CLUSTERDOWN The cluster is down".to_string())
            }
            Route::ClusterDown(ClusterDownReason::Unbound) => {
                Some("CLUSTERDOWN Hash slot not served".to_string())
            }
            Route::TryAgain => {
                Some("TRYAGAIN Multiple keys request during rehashing of slot".to_string())
            }
        }
    }
}

/// A node endpoint in `CLUSTER SLOTS` / `SHARDS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub id: NodeId,
}

/// One `CLUSTER SLOTS` entry: a contiguous range, its primary first, then healthy replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotsEntry {
    pub start: u16,
    pub end: u16,
    pub primary: Endpoint,
    pub replicas: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardNode {
    pub endpoint: Endpoint,
    pub is_primary: bool,
    pub repl_offset: u64,
    /// `"online"` or `"failed"`.
    pub health: &'static str,
}

/// One `CLUSTER SHARDS` entry: a primary's slot ranges and the shard's nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardEntry {
    pub slots: Vec<(u16, u16)>,
    pub nodes: Vec<ShardNode>,
}

/// `CLUSTER INFO` fields; `to_text` renders the `field:value\r\n` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    pub state_ok: bool,
    pub slots_assigned: usize,
    pub slots_ok: usize,
    pub slots_pfail: usize,
    pub slots_fail: usize,
    pub known_nodes: usize,
    pub size: usize,
    pub current_epoch: u64,
    pub my_epoch: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Frames from unknown nodes that were not a MEET, and from nodes still in handshake
    /// that were not their PONG: ignored (see `ClusterNode::handle_message`).
    pub messages_ignored: u64,
}

impl ClusterInfo {
    pub fn to_text(&self) -> String {
        let state = if self.state_ok { "ok" } else { "fail" };
        format!(
            "cluster_enabled:1\r\ncluster_state:{state}\r\ncluster_slots_assigned:{}\r\n\
             cluster_slots_ok:{}\r\ncluster_slots_pfail:{}\r\ncluster_slots_fail:{}\r\n\
             cluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:{}\r\n\
             cluster_my_epoch:{}\r\ncluster_stats_messages_sent:{}\r\n\
             cluster_stats_messages_received:{}\r\n\
             cluster_stats_messages_ignored:{}\r\n",
            self.slots_assigned,
            self.slots_ok,
            self.slots_pfail,
            self.slots_fail,
            self.known_nodes,
            self.size,
            self.current_epoch,
            self.my_epoch,
            self.messages_sent,
            self.messages_received,
            self.messages_ignored
        )
    }
}

/// One node's view of the cluster.
#[derive(Clone, Debug)]
pub struct Topology {
    myself: NodeId,
    pub(crate) current_epoch: u64,
    pub(crate) nodes: BTreeMap<NodeId, NodeInfo>,
    pub(crate) slots: SlotMap,
    /// Slots this node is migrating away: slot → target node.
    pub(crate) migrating: BTreeMap<u16, NodeId>,
    /// Slots this node is importing: slot → source node.
    pub(crate) importing: BTreeMap<u16, NodeId>,
    /// Cluster state as of the node's last tick (see `ClusterNode::can_write` for the exact,
    /// time-aware check on writes).
    pub(crate) state_ok: bool,
}

impl Topology {
    pub fn new(myself: NodeInfo) -> Self {
        let id = myself.id;
        let mut nodes = BTreeMap::new();
        nodes.insert(id, myself);
        Topology {
            myself: id,
            current_epoch: 0,
            nodes,
            slots: SlotMap::default(),
            migrating: BTreeMap::new(),
            importing: BTreeMap::new(),
            state_ok: false,
        }
    }

    pub fn myself_id(&self) -> NodeId {
        self.myself
    }
    pub fn myself(&self) -> &NodeInfo {
        self.nodes
            .get(&self.myself)
            .expect("myself is always in the node table")
    }
    pub(crate) fn myself_mut(&mut self) -> &mut NodeInfo {
        self.nodes
            .get_mut(&self.myself)
            .expect("myself is always in the node table")
    }
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }
    pub fn current_epoch(&self) -> u64 {
        self.current_epoch
    }
    pub fn slot_map(&self) -> &SlotMap {
        &self.slots
    }
    pub fn owner(&self, slot: u16) -> Option<NodeId> {
        self.slots.owner(slot)
    }
    pub fn migrating(&self, slot: u16) -> Option<NodeId> {
        self.migrating.get(&slot).copied()
    }
    pub fn importing(&self, slot: u16) -> Option<NodeId> {
        self.importing.get(&slot).copied()
    }
    pub fn state_ok(&self) -> bool {
        self.state_ok
    }
    /// Primaries serving at least one slot: the electorate for FAIL and failover votes.
    pub fn size(&self) -> usize {
        self.slots.owned.len()
    }
    pub fn replicas_of(&self, primary: NodeId) -> impl Iterator<Item = &NodeInfo> {
        self.nodes
            .values()
            .filter(move |n| n.role == Role::Replica { of: primary })
    }

    /// The owner's config epoch, as we know it (0 for unknown owners).
    pub(crate) fn owner_epoch(&self, slot: u16) -> Option<u64> {
        let owner = self.slots.owner(slot)?;
        Some(self.nodes.get(&owner).map_or(0, |n| n.config_epoch))
    }

    /// Redis' routing rule for a key-bearing command (`getNodeByQuery`, single node view).
    pub fn route(&self, req: &RouteRequest) -> Route {
        if usize::from(req.slot) >= SLOT_COUNT {
            return Route::ClusterDown(ClusterDownReason::Unbound);
        }
        if !self.state_ok {
            return Route::ClusterDown(ClusterDownReason::ClusterFail);
        }
        let Some(owner) = self.slots.owner(req.slot) else {
            return Route::ClusterDown(ClusterDownReason::Unbound);
        };
        let me = self.myself;
        if owner == me && req.missing_keys > 0 {
            if let Some(target) = self.migrating(req.slot) {
                if let Some(t) = self.nodes.get(&target) {
                    // Some keys here, some already moved: no node can run it atomically.
                    if req.existing_keys > 0 {
                        return Route::TryAgain;
                    }
                    return Route::Ask {
                        slot: req.slot,
                        addr: t.client_addr(),
                    };
                }
            }
        }
        if self.importing(req.slot).is_some() && req.asking {
            if req.multiple_keys && req.missing_keys > 0 {
                return Route::TryAgain;
            }
            return Route::Local;
        }
        if req.readonly_read && self.myself().role == (Role::Replica { of: owner }) {
            return Route::Local;
        }
        if owner != me {
            return match self.nodes.get(&owner) {
                Some(o) => Route::Moved {
                    slot: req.slot,
                    addr: o.client_addr(),
                },
                None => Route::ClusterDown(ClusterDownReason::Unbound),
            };
        }
        Route::Local
    }

    /// What this node does with an invalidation from an external stream (which every node
    /// of the region reads in full) for a key in `slot`.
    pub fn invalidation_scope(&self, slot: u16) -> InvalidationScope {
        let owner = self.slots.owner(slot);
        match self.myself().role {
            Role::Primary if owner == Some(self.myself) || self.importing(slot).is_some() => {
                InvalidationScope::Apply
            }
            Role::Replica { of } if owner == Some(of) => InvalidationScope::FloorOnly,
            _ => InvalidationScope::Skip,
        }
    }

    /// `CLUSTER SLOTS`: contiguous ranges with their primary and non-failing replicas.
    pub fn cluster_slots(&self) -> Vec<SlotsEntry> {
        self.slots
            .runs()
            .into_iter()
            .filter_map(|(start, end, owner)| {
                let primary = self.nodes.get(&owner)?;
                Some(SlotsEntry {
                    start,
                    end,
                    primary: endpoint(primary),
                    replicas: self
                        .replicas_of(owner)
                        .filter(|r| !r.flags.has(NodeFlags::FAIL))
                        .map(endpoint)
                        .collect(),
                })
            })
            .collect()
    }

    /// `CLUSTER SHARDS`: one entry per primary (with or without slots) and its replicas.
    pub fn cluster_shards(&self) -> Vec<ShardEntry> {
        self.nodes
            .values()
            .filter(|n| n.role.is_primary())
            .map(|p| {
                let mut nodes = vec![shard_node(p)];
                nodes.extend(self.replicas_of(p.id).map(shard_node));
                ShardEntry {
                    slots: ranges_of(self.slots.slots_of(p.id)),
                    nodes,
                }
            })
            .collect()
    }

    /// `CLUSTER NODES`: one line per node, `\n`-terminated, in Redis' exact format:
    /// `<id> <ip:port@cport> <flags> <master> <ping-sent> <pong-recv> <config-epoch>
    /// <link-state> <slot> ...`, with `[slot->-id]` / `[slot-<-id]` on this node's line.
    pub fn cluster_nodes(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.values() {
            self.node_line(n, &mut out);
            out.push('\n');
        }
        out
    }

    /// `CLUSTER REPLICAS <primary>`: the replicas' `CLUSTER NODES` lines (no newline);
    /// `None` when `primary` is not a known primary.
    pub fn cluster_replicas(&self, primary: NodeId) -> Option<Vec<String>> {
        if !self.nodes.get(&primary)?.role.is_primary() {
            return None;
        }
        Some(
            self.replicas_of(primary)
                .map(|n| {
                    let mut line = String::new();
                    self.node_line(n, &mut line);
                    line
                })
                .collect(),
        )
    }

    /// One node's `CLUSTER NODES` line, without the newline.
    fn node_line(&self, n: &NodeInfo, out: &mut String) {
        let _ = write!(
            out,
            "{} {}:{}@{} {} {} {} {} {} {}",
            n.id,
            n.host,
            n.port,
            n.bus_port,
            self.flags_text(n),
            n.role
                .primary_id()
                .map_or_else(|| "-".to_string(), |p| p.redis_name()),
            n.ping_sent_ms,
            n.pong_received_ms,
            n.config_epoch,
            self.link_state(n),
        );
        for (start, end) in ranges_of(self.slots.slots_of(n.id)) {
            if start == end {
                let _ = write!(out, " {start}");
            } else {
                let _ = write!(out, " {start}-{end}");
            }
        }
        if n.id == self.myself {
            for (slot, target) in &self.migrating {
                let _ = write!(out, " [{slot}->-{target}]");
            }
            for (slot, source) in &self.importing {
                let _ = write!(out, " [{slot}-<-{source}]");
            }
        }
    }

    fn flags_text(&self, n: &NodeInfo) -> String {
        let mut flags: Vec<&str> = Vec::with_capacity(4);
        if n.id == self.myself {
            flags.push("myself");
        }
        flags.push(if n.role.is_primary() {
            "master"
        } else {
            "slave"
        });
        if n.flags.has(NodeFlags::PFAIL) {
            flags.push("fail?");
        }
        if n.flags.has(NodeFlags::FAIL) {
            flags.push("fail");
        }
        if n.flags.has(NodeFlags::HANDSHAKE) {
            flags.push("handshake");
        }
        if n.flags.has(NodeFlags::NOFAILOVER) {
            flags.push("nofailover");
        }
        flags.join(",")
    }

    fn link_state(&self, n: &NodeInfo) -> &'static str {
        if n.id == self.myself || (n.pong_received_ms > 0 && !n.flags.failing()) {
            "connected"
        } else {
            "disconnected"
        }
    }

    /// `CLUSTER INFO` without message counters (the node fills those in).
    pub fn cluster_info(&self) -> ClusterInfo {
        let (mut pfail, mut fail) = (0, 0);
        for (owner, count) in self.slots.owners() {
            let flags = self.nodes.get(&owner).map(|n| n.flags).unwrap_or_default();
            if flags.has(NodeFlags::FAIL) {
                fail += count;
            } else if flags.has(NodeFlags::PFAIL) {
                pfail += count;
            }
        }
        let assigned = self.slots.assigned();
        ClusterInfo {
            state_ok: self.state_ok,
            slots_assigned: assigned,
            slots_ok: assigned - pfail - fail,
            slots_pfail: pfail,
            slots_fail: fail,
            known_nodes: self.nodes.len(),
            size: self.size(),
            current_epoch: self.current_epoch,
            my_epoch: self.myself().config_epoch,
            messages_sent: 0,
            messages_received: 0,
            messages_ignored: 0,
        }
    }
}

fn endpoint(n: &NodeInfo) -> Endpoint {
    Endpoint {
        host: n.host.clone(),
        port: n.port,
        id: n.id,
    }
}

fn shard_node(n: &NodeInfo) -> ShardNode {
    ShardNode {
        endpoint: endpoint(n),
        is_primary: n.role.is_primary(),
        repl_offset: n.repl_offset,
        health: if n.flags.has(NodeFlags::FAIL) {
            "failed"
        } else {
            "online"
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> NodeId {
        NodeId::from_u128(n)
    }

    /// Three primaries A (0..=5460), B (5461..=10922), C (rest), replica R of A; viewed by `me`.
    fn cluster(me: u128) -> Topology {
        let mut t = Topology::new(NodeInfo::new(
            id(me),
            "127.0.0.1",
            7000 + me as u16,
            17000 + me as u16,
        ));
        for n in 1..=4u128 {
            if n != me {
                t.nodes.insert(
                    id(n),
                    NodeInfo::new(id(n), "127.0.0.1", 7000 + n as u16, 17000 + n as u16),
                );
            }
        }
        t.nodes.get_mut(&id(4)).unwrap().role = Role::Replica { of: id(1) };
        for s in 0..SLOT_COUNT as u16 {
            let owner = match s {
                0..=5460 => 1,
                5461..=10922 => 2,
                _ => 3,
            };
            t.slots.assign(s, Some(id(owner)));
        }
        t.state_ok = true;
        t
    }

    fn req(slot: u16) -> RouteRequest {
        RouteRequest {
            slot,
            existing_keys: 1,
            missing_keys: 0,
            multiple_keys: false,
            asking: false,
            readonly_read: false,
        }
    }

    #[test]
    fn redis_names_roundtrip_and_are_checked() {
        let n = id(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        let name = n.redis_name();
        assert_eq!(name.len(), 40);
        assert_eq!(NodeId::from_redis_name(&name), Some(n));
        assert_eq!(NodeId::from_redis_name(&name.to_uppercase()), Some(n));
        let mut bad = name.clone().into_bytes();
        bad[39] = if bad[39] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            NodeId::from_redis_name(std::str::from_utf8(&bad).unwrap()),
            None
        );
        assert_eq!(NodeId::from_redis_name("xyz"), None);
        assert_eq!(NodeId::from_redis_name(&"g".repeat(40)), None);
    }

    #[test]
    fn local_moved_and_clusterdown() {
        let mut t = cluster(1);
        assert_eq!(t.route(&req(0)), Route::Local);
        let moved = t.route(&req(6000));
        assert_eq!(
            moved,
            Route::Moved {
                slot: 6000,
                addr: "127.0.0.1:7002".into()
            }
        );
        assert_eq!(moved.error_text().unwrap(), "MOVED 6000 127.0.0.1:7002");
        t.slots.assign(100, None);
        assert_eq!(
            t.route(&req(100)),
            Route::ClusterDown(ClusterDownReason::Unbound)
        );
        assert_eq!(
            t.route(&req(100)).error_text().unwrap(),
            "CLUSTERDOWN Hash slot not served"
        );
        t.state_ok = false;
        assert_eq!(
            t.route(&req(0)),
            Route::ClusterDown(ClusterDownReason::ClusterFail)
        );
        assert_eq!(
            t.route(&req(u16::MAX)),
            Route::ClusterDown(ClusterDownReason::Unbound)
        );
    }

    #[test]
    fn migrating_source_asks_only_for_missing_keys() {
        let mut t = cluster(1);
        t.migrating.insert(7, id(2));
        assert_eq!(t.route(&req(7)), Route::Local);
        let missing = RouteRequest {
            existing_keys: 0,
            missing_keys: 1,
            ..req(7)
        };
        let ask = t.route(&missing);
        assert_eq!(
            ask,
            Route::Ask {
                slot: 7,
                addr: "127.0.0.1:7002".into()
            }
        );
        assert_eq!(ask.error_text().unwrap(), "ASK 7 127.0.0.1:7002");
        // Other slots are unaffected.
        assert_eq!(
            t.route(&RouteRequest {
                existing_keys: 0,
                missing_keys: 1,
                ..req(8)
            }),
            Route::Local
        );
    }

    #[test]
    fn split_keys_of_a_migrating_slot_get_tryagain() {
        let mut t = cluster(1);
        t.migrating.insert(7, id(2));
        let split = RouteRequest {
            existing_keys: 1,
            missing_keys: 2,
            multiple_keys: true,
            ..req(7)
        };
        assert_eq!(t.route(&split), Route::TryAgain);
        assert_eq!(
            Route::TryAgain.error_text().unwrap(),
            "TRYAGAIN Multiple keys request during rehashing of slot"
        );
        // All gone: ASK; all here: served.
        let gone = RouteRequest {
            existing_keys: 0,
            missing_keys: 3,
            multiple_keys: true,
            ..req(7)
        };
        assert!(matches!(t.route(&gone), Route::Ask { slot: 7, .. }));
        let here = RouteRequest {
            existing_keys: 3,
            missing_keys: 0,
            multiple_keys: true,
            ..req(7)
        };
        assert_eq!(t.route(&here), Route::Local);
        // The importing side under ASKING: a multi-key command needs every key present.
        let mut t = cluster(2);
        t.importing.insert(7, id(1));
        let asking = |existing_keys, missing_keys, multiple_keys| RouteRequest {
            existing_keys,
            missing_keys,
            multiple_keys,
            asking: true,
            ..req(7)
        };
        assert_eq!(t.route(&asking(1, 1, true)), Route::TryAgain);
        assert_eq!(t.route(&asking(0, 2, true)), Route::TryAgain);
        assert_eq!(t.route(&asking(2, 0, true)), Route::Local);
        assert_eq!(t.route(&asking(0, 1, false)), Route::Local);
        // Without ASKING the importing side still redirects to the owner.
        assert!(matches!(
            t.route(&RouteRequest {
                asking: false,
                ..asking(1, 1, true)
            }),
            Route::Moved { slot: 7, .. }
        ));
    }

    #[test]
    fn invalidations_apply_on_the_owner_floor_on_its_replicas_and_skip_elsewhere() {
        let primary = cluster(1);
        assert_eq!(primary.invalidation_scope(0), InvalidationScope::Apply);
        assert_eq!(primary.invalidation_scope(5460), InvalidationScope::Apply);
        assert_eq!(primary.invalidation_scope(5461), InvalidationScope::Skip);
        let mut importer = cluster(2);
        importer.importing.insert(7, id(1));
        assert_eq!(importer.invalidation_scope(7), InvalidationScope::Apply);
        assert_eq!(importer.invalidation_scope(8), InvalidationScope::Skip);
        assert_eq!(importer.invalidation_scope(6000), InvalidationScope::Apply);
        let replica = cluster(4); // replicates node 1
        assert_eq!(replica.invalidation_scope(0), InvalidationScope::FloorOnly);
        assert_eq!(replica.invalidation_scope(6000), InvalidationScope::Skip);
        assert_eq!(replica.invalidation_scope(16383), InvalidationScope::Skip);
    }

    #[test]
    fn importing_target_accepts_only_after_asking() {
        let mut t = cluster(2);
        t.importing.insert(7, id(1));
        assert_eq!(
            t.route(&req(7)),
            Route::Moved {
                slot: 7,
                addr: "127.0.0.1:7001".into()
            }
        );
        assert_eq!(
            t.route(&RouteRequest {
                asking: true,
                ..req(7)
            }),
            Route::Local
        );
        assert_eq!(
            t.route(&RouteRequest {
                asking: true,
                existing_keys: 0,
                missing_keys: 1,
                ..req(7)
            }),
            Route::Local
        );
        // ASKING on a slot that is not importing still redirects.
        assert_eq!(
            t.route(&RouteRequest {
                asking: true,
                ..req(8)
            }),
            Route::Moved {
                slot: 8,
                addr: "127.0.0.1:7001".into()
            }
        );
    }

    #[test]
    fn readonly_replica_serves_its_primary_slots_only() {
        let t = cluster(4);
        let ro = |slot| RouteRequest {
            readonly_read: true,
            ..req(slot)
        };
        assert_eq!(t.route(&ro(0)), Route::Local);
        assert_eq!(
            t.route(&ro(6000)),
            Route::Moved {
                slot: 6000,
                addr: "127.0.0.1:7002".into()
            }
        );
        assert_eq!(
            t.route(&req(0)),
            Route::Moved {
                slot: 0,
                addr: "127.0.0.1:7001".into()
            }
        );
    }

    #[test]
    fn nodes_lines_have_the_redis_format() {
        let mut t = cluster(1);
        t.slots.assign(16383, Some(id(1)));
        t.migrating.insert(5, id(2));
        t.importing.insert(6000, id(2));
        {
            let me = t.nodes.get_mut(&id(1)).unwrap();
            me.config_epoch = 3;
        }
        {
            let b = t.nodes.get_mut(&id(2)).unwrap();
            b.config_epoch = 2;
            b.ping_sent_ms = 0;
            b.pong_received_ms = 1_700_000_000_000;
            b.flags.set(NodeFlags::PFAIL);
        }
        let text = t.cluster_nodes();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(text.ends_with('\n'));
        let me = lines
            .iter()
            .find(|l| l.starts_with(&id(1).redis_name()))
            .unwrap();
        assert_eq!(
            *me,
            format!(
                "{} 127.0.0.1:7001@17001 myself,master - 0 0 3 connected 0-5460 16383 [5->-{}] [6000-<-{}]",
                id(1), id(2), id(2)
            )
        );
        let b = lines
            .iter()
            .find(|l| l.starts_with(&id(2).redis_name()))
            .unwrap();
        assert_eq!(
            *b,
            format!(
                "{} 127.0.0.1:7002@17002 master,fail? - 0 1700000000000 2 disconnected 5461-10922",
                id(2)
            )
        );
        let r = lines
            .iter()
            .find(|l| l.starts_with(&id(4).redis_name()))
            .unwrap();
        assert_eq!(
            *r,
            format!(
                "{} 127.0.0.1:7004@17004 slave {} 0 0 0 disconnected",
                id(4),
                id(1)
            )
        );
    }

    #[test]
    fn slots_shards_and_info() {
        let t = cluster(1);
        let slots = t.cluster_slots();
        assert_eq!(slots.len(), 3);
        assert_eq!(
            (slots[0].start, slots[0].end, slots[0].primary.id),
            (0, 5460, id(1))
        );
        assert_eq!(slots[0].replicas.len(), 1);
        assert_eq!(slots[0].replicas[0].id, id(4));
        assert_eq!((slots[2].start, slots[2].end), (10923, 16383));
        let shards = t.cluster_shards();
        assert_eq!(shards.len(), 3);
        let a = shards
            .iter()
            .find(|s| s.nodes[0].endpoint.id == id(1))
            .unwrap();
        assert_eq!(a.slots, vec![(0, 5460)]);
        assert_eq!(a.nodes.len(), 2);
        assert!(!a.nodes[1].is_primary);
        let info = t.cluster_info();
        assert_eq!(
            (info.slots_assigned, info.size, info.known_nodes),
            (16384, 3, 4)
        );
        assert!(info
            .to_text()
            .starts_with("cluster_enabled:1\r\ncluster_state:ok\r\n"));
    }

    #[test]
    fn ranges_and_bitmaps() {
        assert_eq!(
            ranges_of([1, 2, 3, 5, 7, 8].into_iter()),
            vec![(1, 3), (5, 5), (7, 8)]
        );
        let mut b = SlotBitmap::default();
        b.set(16383, true);
        b.set(0, true);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 16383]);
        assert_eq!(b.count(), 2);
        b.set(0, false);
        assert!(!b.get(0) && b.get(16383) && !b.get(u16::MAX));
    }
}
