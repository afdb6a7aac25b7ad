//! meridian-regions: the sans-IO core of the Redis-Cluster-compatible cluster of one region.
//!
//! 16384 hash slots are owned by shards; a shard is one primary plus replicas in the same
//! region. Nodes are identified by uuids ([`topology::NodeId`], shown to clients as 40-hex
//! Redis names). Config epochs order slot-ownership changes. The cluster bus ([`bus`]) carries
//! gossip, failure reports, failover votes and slot updates; [`node::ClusterNode`] is the state
//! machine of one node: failure detection (PFAIL → FAIL by a majority of primaries), replica
//! elections, manual failover, slot migration states, and the write fence of a minority
//! primary. Nothing here opens a socket, reads a clock or draws a random number: time and
//! randomness are inputs.
//!
//! | module | owns |
//! |---|---|
//! | [`topology`] | `NodeId`, `NodeInfo`, `SlotMap`, `Topology` (one node's view), `route` (MOVED/ASK/CLUSTERDOWN), `CLUSTER SLOTS/SHARDS/NODES/INFO` as data |
//! | [`bus`] | `BusMessage` (header + Meet/Ping/Pong/Fail/FailoverAuthRequest/Ack/Update/MfStart), versioned length-prefixed postcard codec with a size cap |
//! | [`wire`] | the length-prefixed, versioned postcard framing shared by the bus, the region link and the replica stream |
//! | [`node`] | `ClusterNode`: `handle_message`, `tick`, `poll_outgoing`, `poll_event`, admin ops, `can_write` |
//!
//! # How the server drives it (the I/O shell, not written yet)
//!
//! One task owns the `ClusterNode` (or it sits behind a lock read on every command):
//!
//! ```text
//! loop {
//!     select! {
//!         frame bytes from a bus link  => while let Some((msg, n)) = bus::decode(&buf)? {
//!                                             buf.advance(n);
//!                                             node.handle_message(now_ms(), msg)?; // Err: drop link
//!                                         }
//!         every node::TICK_INTERVAL_MS => node.tick(now_ms(), rng.next_u64()),
//!         CLUSTER <subcommand>        => node.meet / add_slots / del_slots / set_slot /
//!                                        replicate / failover / forget / reset
//!     }
//!     while let Some(out) = node.poll_outgoing() {
//!         // Dest::Node(id): topology().node(id).bus_addr(); Dest::Addr: connect to it.
//!         link(out.to).write(bus::encode(&out.msg)?);
//!     }
//!     while let Some(ev) = node.poll_event() { /* RoleChanged → (re)start or stop replica
//!         stream; SlotsLost → drop keys of slots we no longer own; log the rest */ }
//!     persist(node.persistent_state()) if it changed; // before acting on new epochs
//! }
//! ```
//!
//! On every key-bearing command: `node.topology().route(&RouteRequest { slot: key_slot(key),
//! existing_keys, missing_keys, multiple_keys, asking, readonly_read })` (key presence is
//! only needed while the slot is migrating or importing); `Route::error_text()` is the exact
//! Redis error (`MOVED 3999 10.0.0.2:7000`, `ASK …`, `TRYAGAIN …`, `CLUSTERDOWN …`). Before applying a write,
//! `node.can_write(now_ms)` must hold (false on a replica, on a primary cut off from the
//! majority for `node_timeout_ms`, during a manual-failover pause); the server answers
//! `-CLUSTERDOWN The cluster is down` otherwise. `CLUSTER SLOTS|SHARDS|NODES|INFO` come from
//! `topology().cluster_slots()`, `cluster_shards()`, `cluster_nodes()` (exact text) and
//! `node.cluster_info().to_text()`. The replication layer reports progress with
//! `node.set_repl_offset(offset)` (it ranks replicas in elections).
//!
//! Known simplifications (documented where they live; see also the SETSLOT race in
//! [`node`]): no replica migration to orphaned primaries, no replica data-age check
//! before an election, and a node pings every known node each `ping_interval_ms` (fine for
//! tens of nodes; large clusters would sample like Redis).

pub mod bus;
pub mod bus_auth;
pub mod node;
pub mod topology;
pub mod wire;

pub use bus::{BusError, BusMessage};
pub use node::{
    ClusterError, ClusterNode, Dest, Event, FailoverMode, NodeConfig, Outgoing, SetSlot,
};
pub use topology::{NodeId, NodeInfo, Role, Route, RouteRequest, SlotMap, Topology};
