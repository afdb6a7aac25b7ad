//! State every connection shares besides the store (configuration, client registry, the
//! service handles: region link, Kafka, region cluster, replica stream) and whether writes
//! pause now.

use crate::config::Config;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

pub struct ClientEntry {
    pub addr: String,
    pub name: Option<Bytes>,
    pub created_ms: u64,
    /// The user it authenticated as (CLIENT LIST).
    pub user: String,
    /// The port it connected to (`laddr`: the plain or the TLS port).
    pub local_port: u16,
}

/// State shared by every connection besides the store.
pub struct Shared {
    pub config: Config,
    pub started_ms: u64,
    pub run_id: String,
    pub clients: Mutex<HashMap<u64, ClientEntry>>,
    pub(crate) next_client_id: AtomicU64,
    /// Multi-region replication state (None: single region).
    pub repl: Option<Arc<crate::region_link::Control>>,
    /// Kafka invalidation counters (all zero when the consumer is off).
    pub kafka: Arc<crate::kafka::KafkaStats>,
    /// Region cluster (None: standalone).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// In-region replication (both roles): `follow`, WAIT, min-replicas, INFO.
    pub inregion: Arc<crate::replica_stream::InRegion>,
    /// Users, passwords, permissions and the ACL log.
    pub acl: Arc<crate::acl::Acl>,
    /// TLS: `tls-port`'s acceptor, the replica link's and MIGRATE's connectors (None: off).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Threads serving clients (see `store::Held`: with one, a batch keeps its shard locks).
    pub io_threads: AtomicUsize,
    /// Per-client limits (query and output buffers, idle timeout) and their counters.
    pub limits: crate::limits::ClientLimits,
    /// Redis' encoding tunables (CONFIG SET/GET, OBJECT ENCODING).
    pub encoding: crate::cmd::encoding::Encoding,
    /// INFO commandstats/errorstats, SLOWLOG, LATENCY.
    pub cmdstats: crate::cmdstats::CmdStats,
    /// Pub/sub subscriptions of this node's clients.
    pub pubsub: Arc<crate::pubsub::PubSub>,
}

impl Shared {
    /// Checked by every write under its shard lock(s): do writes wait now? A manual
    /// failover pauses a cluster node's writes (begun, perhaps, since the write was routed):
    /// the cluster task raises the deadline, then takes each shard lock once before it reads
    /// the offset it tells the replica, so no write it did not count can run after that (see
    /// `cluster::run`). A node with peer regions holds writes until every peer answered its
    /// restart handshake (bounded by `restart-write-hold-ms`), cluster or not: see
    /// [`crate::region_link::Control::holds_writes`].
    #[inline]
    pub fn write_pause_began(&self, now: u64) -> bool {
        self.failover_pause_began(now) || self.restart_holds_writes(now)
    }

    /// A manual failover's pause alone (see [`Shared::write_pause_began`]): what a write
    /// that issues no stamp of its own (MIGRATE's target side merging a moved key) waits
    /// for.
    #[inline]
    pub fn failover_pause_began(&self, now: u64) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| now <= c.writes_paused_until.load(Relaxed))
    }

    /// The restart window: see [`Shared::write_pause_began`].
    #[inline]
    pub fn restart_holds_writes(&self, now: u64) -> bool {
        self.repl.as_ref().is_some_and(|r| r.holds_writes(now))
    }
}
