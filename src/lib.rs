//! meridian: a multi-region, active-active cache that speaks the Redis protocol.
//! This crate is the I/O shell around the pure cores in `meridian-crdt`, `meridian-regions`
//! and `meridian-replication`: sockets, tasks, timers, config, metrics and the command layer.
//!
//! - [`frame`]: RESP2/RESP3 codec (pure).
//! - [`connection`]: per-client read → decode → execute → write loop, transactions.
//! - [`cmd`]: command table and families (string, set, hash, keys, server, cluster).
//! - [`store`]: sharded locks around the `Keyspace`, HLC, delta logs, eviction.
//! - [`server`]: listener, background cycle; [`metrics`]: Prometheus endpoint.
//! - [`region_link`]: the inter-region link (QUIC) on its own thread; [`region_link_nodes`]:
//!   its node mode (peer regions that are clusters); [`replica_stream`]: the in-region
//!   replica stream (REPLICAOF, PSYNC-like over the client port); [`kafka`]: the
//!   invalidation stream.
//! - [`cluster`]: this node in its region cluster; [`topology`]: this node's region as peer
//!   regions discover it.

pub mod acl;
pub mod cluster;
pub mod cmd;
pub mod cmdstats;
pub mod config;
pub mod connection;
pub mod counters;
pub mod frame;
pub mod kafka;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod pubsub;
pub mod region_link;
pub mod region_link_nodes;
pub mod replica_stream;
pub mod sched;
pub mod server;
pub mod shared;
pub mod store;
pub mod tls;
pub mod topology;
pub mod transaction;
pub mod util;

/// The Redis version meridian answers to (`INFO`, `HELLO`): the command semantics it follows.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";
