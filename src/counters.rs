//! The one table of figures this node reports: every `INFO` field and every `/metrics`
//! family is a row of [`FIGURES`] (node-wide), [`PEER_FIGURES`] (per peer region) or
//! [`NODE_FIGURES`] (per peer node in node mode), with its name(s), help text, `INFO` section
//! and how to read it. `cmd::server::info_text` and `metrics::render` both iterate these
//! tables, so a new counter is declared once. Only what is not a figure stays with a
//! renderer: the in-region replica stream's role-dependent lines (`InRegion::info`), the
//! `db0:` line and Kafka's per-partition lag.

use crate::memory;
use crate::region_link::{ms_ago, Control, NodeStatus, PeerControl};
use crate::shared::Shared;
use crate::store::Store;
use meridian_crdt::KeyspaceStats;
use std::cell::OnceCell;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

/// An `INFO` section, in the order `INFO` prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Server,
    Clients,
    Memory,
    Stats,
    Replication,
    Cpu,
    /// `cmdstat_<command>` lines (not a default section, as in Redis).
    Commandstats,
    /// `errorstat_<KIND>` lines.
    Errorstats,
    Crdt,
    Invalidations,
    Cluster,
    Keyspace,
}

impl Section {
    pub const ALL: [Section; 12] = [
        Section::Server,
        Section::Clients,
        Section::Memory,
        Section::Stats,
        Section::Replication,
        Section::Cpu,
        Section::Commandstats,
        Section::Errorstats,
        Section::Crdt,
        Section::Invalidations,
        Section::Cluster,
        Section::Keyspace,
    ];

    /// The section's header (`# Server`).
    pub fn title(self) -> &'static str {
        match self {
            Section::Server => "Server",
            Section::Clients => "Clients",
            Section::Memory => "Memory",
            Section::Stats => "Stats",
            Section::Replication => "Replication",
            Section::Cpu => "CPU",
            Section::Commandstats => "Commandstats",
            Section::Errorstats => "Errorstats",
            Section::Crdt => "CRDT",
            Section::Invalidations => "Invalidations",
            Section::Cluster => "Cluster",
            Section::Keyspace => "Keyspace",
        }
    }

    /// The name `INFO <section>` asks for.
    pub fn name(self) -> &'static str {
        match self {
            Section::Server => "server",
            Section::Clients => "clients",
            Section::Memory => "memory",
            Section::Stats => "stats",
            Section::Replication => "replication",
            Section::Cpu => "cpu",
            Section::Commandstats => "commandstats",
            Section::Errorstats => "errorstats",
            Section::Crdt => "crdt",
            Section::Invalidations => "invalidations",
            Section::Cluster => "cluster",
            Section::Keyspace => "keyspace",
        }
    }
}

/// A Prometheus family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// A figure as read.
#[derive(Clone, Debug)]
pub enum Value {
    N(u64),
    I(i64),
    Text(String),
    /// Printed with two decimals; not a metric.
    Ratio(f64),
    /// Printed as 16 hex digits; not a metric.
    Hex(u64),
}

impl Value {
    /// The sample value, for figures that are numbers.
    pub fn as_sample(&self) -> Option<i64> {
        match *self {
            Value::N(v) => Some(i64::try_from(v).unwrap_or(i64::MAX)),
            Value::I(v) => Some(v),
            Value::Text(_) | Value::Ratio(_) | Value::Hex(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::N(v) => write!(f, "{v}"),
            Value::I(v) => write!(f, "{v}"),
            Value::Text(s) => f.write_str(s),
            Value::Ratio(r) => write!(f, "{r:.2}"),
            Value::Hex(v) => write!(f, "{v:016x}"),
        }
    }
}

/// What the readers read from: the store, the shared services and the sums that cost a
/// pass over the shards (or a read of `/proc`), each taken at most once per `INFO` or scrape.
pub struct Readings<'a> {
    pub store: &'a Store,
    pub shared: &'a Shared,
    pub now_ms: u64,
    ks: OnceCell<KeyspaceStats>,
    hits_misses: OnceCell<(u64, u64)>,
    deltas: OnceCell<(u64, u64)>,
    used_memory: OnceCell<u64>,
    rss: OnceCell<u64>,
    kafka_latency: OnceCell<(u64, u64)>,
}

impl<'a> Readings<'a> {
    pub fn new(store: &'a Store, shared: &'a Shared, now_ms: u64) -> Readings<'a> {
        Readings {
            store,
            shared,
            now_ms,
            ks: OnceCell::new(),
            hits_misses: OnceCell::new(),
            deltas: OnceCell::new(),
            used_memory: OnceCell::new(),
            rss: OnceCell::new(),
            kafka_latency: OnceCell::new(),
        }
    }

    /// The keyspace's statistics summed over the shards.
    pub fn ks(&self) -> &KeyspaceStats {
        self.ks.get_or_init(|| self.store.sum_stats())
    }

    fn hits_misses(&self) -> (u64, u64) {
        *self.hits_misses.get_or_init(|| self.store.hits_misses())
    }

    /// Deltas produced by local writes and dropped from the bounded logs.
    fn deltas(&self) -> (u64, u64) {
        *self.deltas.get_or_init(|| self.store.delta_counts())
    }

    fn used_memory(&self) -> u64 {
        *self
            .used_memory
            .get_or_init(|| self.store.used_memory_now())
    }

    fn rss(&self) -> u64 {
        *self.rss.get_or_init(memory::process_rss_bytes)
    }

    /// Kafka's apply latency (p50, p99) over recent records.
    fn kafka_latency(&self) -> (u64, u64) {
        *self
            .kafka_latency
            .get_or_init(|| self.shared.kafka.latency_percentiles().unwrap_or((0, 0)))
    }

    /// The region link's state (none without a `[replication]` table).
    fn link(&self) -> Option<&Control> {
        self.shared.repl.as_deref()
    }
}

/// A node-wide figure.
pub struct Figure {
    pub section: Section,
    /// Its `INFO` field (none: only on `/metrics`).
    pub info: Option<&'static str>,
    /// Its family on `/metrics`, after `meridian_` (none: only in `INFO`).
    pub metric: Option<(&'static str, MetricKind)>,
    pub help: &'static str,
    /// None: not reported on this node (the region link's figures without a link).
    pub read: fn(&Readings) -> Option<Value>,
}

/// A per-peer-region figure: `INFO crdt`'s `peer_<region>:` line, `/metrics` labelled
/// `peer="<region>"`.
pub struct PeerFigure {
    /// Its key in the `peer_<region>:` line (none: only on `/metrics`).
    pub info: Option<&'static str>,
    /// Its family on `/metrics`, after `meridian_repl_` (none: only in `INFO`).
    pub metric: Option<(&'static str, MetricKind)>,
    pub help: &'static str,
    pub read: fn(&PeerControl, u64) -> Value,
}

/// A per-peer-node figure in node mode: `INFO crdt`'s `peer_node_<i>:` line, `/metrics`
/// labelled `peer="<region>",node="<addr>"`.
pub struct NodeFigure {
    pub info: Option<&'static str>,
    /// After `meridian_repl_`.
    pub metric: Option<(&'static str, MetricKind)>,
    pub help: &'static str,
    pub read: fn(&NodeStatus, u64) -> Value,
}

const fn row(
    section: Section,
    info: Option<&'static str>,
    metric: Option<(&'static str, MetricKind)>,
    help: &'static str,
    read: fn(&Readings) -> Option<Value>,
) -> Figure {
    Figure {
        section,
        info,
        metric,
        help,
        read,
    }
}

use MetricKind::{Counter, Gauge};
use Section::*;

fn n(v: u64) -> Option<Value> {
    Some(Value::N(v))
}

fn text(s: impl Into<String>) -> Option<Value> {
    Some(Value::Text(s.into()))
}

/// A region link figure: none without a link.
fn link(r: &Readings, f: impl FnOnce(&Control) -> u64) -> Option<Value> {
    r.link().map(|c| Value::N(f(c)))
}

/// Every node-wide figure, in `INFO` order within each section.
#[rustfmt::skip]
pub static FIGURES: &[Figure] = &[
    // # Server
    row(Server, Some("redis_version"), None,
        "The Redis version whose command semantics meridian follows.",
        |_| text(crate::REDIS_COMPAT_VERSION)),
    row(Server, Some("meridian_version"), None,
        "meridian's own version.",
        |_| text(env!("CARGO_PKG_VERSION"))),
    row(Server, Some("redis_mode"), None,
        "cluster or standalone.",
        |r| text(if r.shared.cluster.is_some() { "cluster" } else { "standalone" })),
    row(Server, Some("os"), None, "The operating system.", |_| text(std::env::consts::OS)),
    row(Server, Some("arch_bits"), None, "Pointer width.", |_| n(64)),
    row(Server, Some("process_id"), None,
        "The server's process id.",
        |_| n(u64::from(std::process::id()))),
    row(Server, Some("run_id"), None,
        "Random id of this run.",
        |r| text(r.shared.run_id.to_string())),
    row(Server, Some("tcp_port"), None, "The client port.", |r| n(u64::from(r.shared.config.port))),
    row(Server, Some("uptime_in_seconds"), Some(("uptime_seconds", Gauge)),
        "Seconds since start.",
        |r| n(r.now_ms.saturating_sub(r.shared.started_ms) / 1000)),
    row(Server, Some("uptime_in_days"), None,
        "Days since start.",
        |r| n(r.now_ms.saturating_sub(r.shared.started_ms) / 1000 / 86400)),
    row(Server, Some("hz"), None,
        "Background cycles per second.",
        |r| n(u64::from(r.shared.config.hz))),
    row(Server, Some("executable"), None, "The executable.", |_| text("meridian")),
    // # Clients
    row(Clients, Some("connected_clients"), Some(("connected_clients", Gauge)),
        "Client connections open.",
        |r| n(r.store.stats.connected_clients.load(Relaxed) as u64)),
    row(Clients, Some("maxclients"), None,
        "Client connections allowed.",
        |r| n(r.store.runtime.maxclients.load(Relaxed) as u64)),
    row(Clients, Some("blocked_clients"), None,
        "Clients waiting in a blocking command (BLPOP and friends).",
        |r| n(r.store.stats.blocked_clients.load(Relaxed) as u64)),
    // # Memory
    row(Memory, Some("used_memory"), Some(("used_memory_bytes", Gauge)),
        "Bytes in use: allocated (jemalloc) less the node slabs' free slots.",
        |r| n(r.used_memory())),
    row(Memory, Some("used_memory_human"), None,
        "used_memory, human readable.",
        |r| text(memory::human(r.used_memory()))),
    row(Memory, Some("used_memory_rss"), Some(("used_memory_rss_bytes", Gauge)),
        "Resident set size.",
        |r| n(r.rss())),
    row(Memory, Some("used_memory_rss_human"), None,
        "used_memory_rss, human readable.",
        |r| text(memory::human(r.rss()))),
    row(Memory, Some("used_memory_dataset"), None,
        "Bytes the keyspace accounts to keys and values.",
        |r| n(r.ks().bytes as u64)),
    row(Memory, Some("maxmemory"), Some(("maxmemory_bytes", Gauge)),
        "Configured memory limit (0 = none).",
        |r| n(r.store.runtime.maxmemory.load(Relaxed))),
    row(Memory, Some("maxmemory_human"), None,
        "maxmemory, human readable.",
        |r| text(memory::human(r.store.runtime.maxmemory.load(Relaxed)))),
    row(Memory, Some("maxmemory_policy"), None,
        "The eviction policy.",
        |r| text(r.store.runtime.policy.lock().name())),
    row(Memory, Some("mem_fragmentation_ratio"), None, "used_memory_rss / used_memory.", |r| {
        let (used, rss) = (r.used_memory(), r.rss());
        Some(Value::Ratio(if used > 0 { rss as f64 / used as f64 } else { 0.0 }))
    }),
    row(Memory, Some("mem_allocator"), None, "The allocator.", |_| text("jemalloc")),
    // # Stats
    row(Stats, Some("total_connections_received"), Some(("connections_received_total", Counter)),
        "Client connections accepted.",
        |r| n(r.store.stats.connections_received.load(Relaxed))),
    row(Stats, Some("total_commands_processed"), Some(("commands_processed_total", Counter)),
        "Commands executed.",
        |r| n(r.store.stats.commands.load(Relaxed))),
    row(Stats, Some("total_error_replies"), Some(("error_replies_total", Counter)),
        "Error replies sent (rejected commands included; see INFO errorstats).",
        |r| n(r.shared.cmdstats.total_error_replies())),
    row(Stats, Some("instantaneous_ops_per_sec"), Some(("instantaneous_ops_per_sec", Gauge)),
        "Commands per second over the last second.",
        |r| n(r.store.stats.ops_per_sec.load(Relaxed))),
    row(Stats, Some("rejected_connections"), Some(("rejected_connections_total", Counter)),
        "Connections refused by maxclients.",
        |r| n(r.store.stats.rejected_connections.load(Relaxed))),
    row(Stats, Some("expired_keys"), Some(("expired_keys_total", Counter)),
        "Keys reclaimed because their TTL passed.",
        |r| n(r.ks().expired)),
    row(Stats, Some("evicted_keys"), Some(("evicted_keys_total", Counter)),
        "Keys evicted by maxmemory.",
        |r| n(r.ks().evicted)),
    row(Stats, Some("keyspace_hits"), Some(("keyspace_hits_total", Counter)),
        "Reads that found their key.",
        |r| n(r.hits_misses().0)),
    row(Stats, Some("keyspace_misses"), Some(("keyspace_misses_total", Counter)),
        "Reads that missed.",
        |r| n(r.hits_misses().1)),
    row(Stats, Some("total_error_replies"), None, "Error replies (not counted).", |_| n(0)),
    row(Stats, Some("protocol_errors"), Some(("protocol_errors_total", Counter)),
        "Connections closed for protocol errors.",
        |r| n(r.store.stats.protocol_errors.load(Relaxed))),
    row(Stats, Some("tls_handshake_failures"), Some(("tls_handshake_failures_total", Counter)),
        "Clients on tls-port refused for a failed TLS handshake.",
        |r| n(r.store.stats.tls_handshake_failures.load(Relaxed))),
    row(Stats, Some("client_query_buffer_limit_disconnections"),
        Some(("client_query_buffer_limit_disconnections_total", Counter)),
        "Clients closed for going over client-query-buffer-limit.",
        |r| n(r.shared.limits.query_buffer_disconnections.load(Relaxed))),
    row(Stats, Some("client_output_buffer_limit_disconnections"),
        Some(("client_output_buffer_limit_disconnections_total", Counter)),
        "Clients and replica links closed for going over client-output-buffer-limit.",
        |r| n(r.shared.limits.output_buffer_disconnections.load(Relaxed))),
    row(Stats, Some("pubsub_channels"), Some(("pubsub_channels", Gauge)),
        "Channels with at least one subscriber.",
        |r| n(r.shared.pubsub.counts().0)),
    row(Stats, Some("pubsub_patterns"), Some(("pubsub_patterns", Gauge)),
        "Patterns with at least one subscriber.",
        |r| n(r.shared.pubsub.counts().1)),
    row(Stats, Some("pubsub_shardchannels"), Some(("pubsub_shardchannels", Gauge)),
        "Shard channels with at least one subscriber.",
        |r| n(r.shared.pubsub.counts().2)),
    row(Stats, Some("pubsub_output_buffer_disconnections"),
        Some(("pubsub_output_buffer_disconnections_total", Counter)),
        "Subscribers closed for falling behind by client-output-buffer-limit pubsub (also in client_output_buffer_limit_disconnections).",
        |r| n(r.shared.pubsub.disconnections.load(Relaxed))),
    row(Stats, Some("client_idle_timeout_disconnections"),
        Some(("client_idle_timeout_disconnections_total", Counter)),
        "Clients closed for being idle longer than timeout.",
        |r| n(r.shared.limits.idle_disconnections.load(Relaxed))),
    row(Stats, Some("connection_panics"), Some(("connection_panics_total", Counter)),
        "Connection tasks that panicked (client closed, its slot and state released).",
        |r| n(r.shared.limits.connection_panics.load(Relaxed))),
    row(Stats, Some("accept_errors"), Some(("accept_errors_total", Counter)),
        "Failed accepts (EMFILE and the like) on the client, metrics and cluster bus listeners.",
        |r| n(r.shared.limits.accept_errors.load(Relaxed)
            + crate::limits::BUS_ACCEPT_ERRORS.load(Relaxed))),
    row(Stats, Some("service_connections_refused"), Some(("service_connections_refused_total", Counter)),
        "Metrics and cluster bus connections refused at their bound or closed for silence.",
        |r| n(r.shared.limits.service_connections_refused.load(Relaxed)
            + crate::limits::BUS_CONNECTIONS_REFUSED.load(Relaxed))),
    row(Stats, Some("sync_full"), Some(("replica_sync_full_total", Counter)),
        "Full resyncs served to replicas.",
        |r| n(r.shared.inregion.sync_full.load(Relaxed))),
    row(Stats, Some("sync_partial_ok"), Some(("replica_sync_partial_ok_total", Counter)),
        "Partial resyncs served to replicas.",
        |r| n(r.shared.inregion.sync_partial_ok.load(Relaxed))),
    row(Stats, Some("replication_too_large"), Some(("replication_too_large_total", Counter)),
        "Changes or key states too large for a replication frame (a resync, a failed snapshot, a link frame not sent).",
        |r| n(r.store.feed().too_large.load(Relaxed))),
    row(Stats, Some("sync_partial_err"), None,
        "Partial resyncs refused (served in full).",
        |r| n(r.shared.inregion.sync_partial_err.load(Relaxed))),
    // # Replication (after the replica stream's own lines, `InRegion::info`)
    row(Replication, None, Some(("repl_offset", Gauge)),
        "In-region replication offset (primary: assigned; replica: applied).",
        |r| n(r.shared.inregion.repl_offset())),
    row(Replication, None, Some(("connected_replicas", Gauge)),
        "Replicas streaming from this node.",
        |r| n(r.shared.inregion.replica_list().len() as u64)),
    row(Replication, Some("region_peers"), None,
        "Peer regions.",
        |r| link(r, |c| c.peers().len() as u64)),
    row(Replication, Some("region_peers_connected"), None,
        "Peer regions connected now.",
        |r| link(r, |c| c.peers().iter().filter(|p| p.connected.load(Relaxed)).count() as u64)),
    row(Replication, Some("anti_entropy_rounds"), None,
        "Anti-entropy rounds completed (repl_ae_rounds).",
        |r| link(r, |c| c.ae_rounds.load(Relaxed))),
    row(Replication, Some("anti_entropy_entries_received"), None,
        "Key states merged from anti-entropy (an empty region's bootstrap).",
        |r| link(r, |c| c.ae_entries_received.load(Relaxed))),
    row(Replication, Some("region_deltas_applied"), None,
        "Deltas received from peer regions and merged.",
        |r| link(r, |c| c.deltas_applied.load(Relaxed))),
    // # CRDT
    row(Crdt, Some("region"), None,
        "This region's name.",
        |r| text(r.shared.config.region.clone())),
    row(Crdt, Some("region_id"), None,
        "This region's id.",
        |r| n(u64::from(r.shared.config.region_id))),
    row(Crdt, Some("deltas_produced"), Some(("deltas_produced_total", Counter)),
        "CRDT deltas yielded by local writes.",
        |r| n(r.deltas().0)),
    row(Crdt, Some("deltas_dropped_from_log"), Some(("deltas_dropped_total", Counter)),
        "Deltas dropped from the bounded log.",
        |r| n(r.deltas().1)),
    row(Crdt, Some("deltas_applied"), None,
        "Deltas the keyspace merged from elsewhere.",
        |r| n(r.ks().deltas_applied)),
    row(Crdt, Some("partial_deltas_dropped"), None,
        "Partial deltas dropped: their key's state was not there to extend.",
        |r| n(r.ks().partial_deltas_dropped)),
    row(Crdt, Some("tombstones"), Some(("tombstones", Gauge)),
        "Deleted keys kept until every region saw the delete.",
        |r| n(r.ks().tombstones as u64)),
    row(Crdt, Some("served_slots"), None,
        "Slots this node serves.",
        |r| n(r.store.served.count() as u64)),
    row(Crdt, Some("repl_refused_not_served"), Some(("repl_refused_not_served_total", Counter)),
        "Deltas and anti-entropy entries from other regions refused for a slot this node does not serve.",
        |r| n(r.store.stats.refused_not_served.load(Relaxed))),
    row(Crdt, Some("repl_peers"), Some(("repl_peers", Gauge)),
        "Configured peer regions.",
        |r| link(r, |c| c.peers().len() as u64)),
    row(Crdt, Some("repl_peer_gc_bound_ms"), Some(("repl_peer_gc_bound_ms", Gauge)),
        "A peer silent for longer than this is expelled from GC (0: never).",
        |r| link(r, |c| c.peer_gc_bound_ms.load(Relaxed))),
    row(Crdt, Some("repl_accept_new_regions"), None,
        "1 if regions not configured may join.",
        |r| link(r, |c| u64::from(c.accept_new_regions.load(Relaxed)))),
    row(Crdt, Some("repl_regions_joined"), Some(("repl_regions_joined_total", Counter)),
        "Regions added at run time (they connected with a certificate from the deployment CA).",
        |r| link(r, |c| c.regions_joined.load(Relaxed))),
    row(Crdt, Some("repl_regions_refused"), Some(("repl_regions_refused_total", Counter)),
        "Regions that connected and were refused (region id clash, accept-new-regions off, too many).",
        |r| link(r, |c| c.regions_refused.load(Relaxed))),
    row(Crdt, Some("repl_regions_forgotten"), Some(("repl_regions_forgotten_total", Counter)),
        "Peer regions removed by MERIDIAN REGION FORGET.",
        |r| link(r, |c| c.regions_forgotten.load(Relaxed))),
    row(Crdt, Some("repl_peers_expelled"), Some(("repl_peers_expelled_total", Counter)),
        "Peer regions expelled from GC: nothing heard from them past peer-gc-bound-ms.",
        |r| link(r, |c| c.peers_expelled.load(Relaxed))),
    row(Crdt, Some("repl_frames_refused"), Some(("repl_frames_refused_total", Counter)),
        "Frames refused from an expelled peer incarnation (not merged).",
        |r| link(r, |c| c.frames_refused.load(Relaxed))),
    row(Crdt, Some("repl_refusals_received"), Some(("repl_refusals_received_total", Counter)),
        "Refusals received: a peer expelled this region's incarnation (restart it empty).",
        |r| link(r, |c| c.refusals_received.load(Relaxed))),
    row(Crdt, Some("repl_deltas_enqueued"), Some(("repl_deltas_enqueued_total", Counter)),
        "Local deltas queued for the peers.",
        |r| link(r, |c| c.deltas_enqueued.load(Relaxed))),
    row(Crdt, Some("repl_deltas_sent"), Some(("repl_deltas_sent_total", Counter)),
        "Deltas shipped (all peers, resends included).",
        |r| link(r, |c| c.deltas_sent.load(Relaxed))),
    row(Crdt, Some("repl_deltas_resent"), Some(("repl_deltas_resent_total", Counter)),
        "Deltas shipped again after an ack timeout.",
        |r| link(r, |c| c.deltas_resent.load(Relaxed))),
    row(Crdt, Some("repl_deltas_forwarded"), Some(("repl_deltas_forwarded_total", Counter)),
        "Resent deltas superseded by a later write of their key: sent as placeholders, their content joined into the later delta.",
        |r| link(r, |c| c.deltas_forwarded.load(Relaxed))),
    row(Crdt, Some("repl_deltas_applied"), Some(("repl_deltas_applied_total", Counter)),
        "Deltas received from peers and merged.",
        |r| link(r, |c| c.deltas_applied.load(Relaxed))),
    row(Crdt, None, Some(("repl_deltas_applied_per_second", Gauge)),
        "Deltas merged from peers per second (last second).",
        |r| link(r, |c| c.deltas_applied_per_sec.load(Relaxed))),
    row(Crdt, Some("repl_logs_dropped"), None,
        "Peer logs dropped whole for overflowing (anti-entropy repairs).",
        |r| link(r, |c| c.logs_dropped.load(Relaxed))),
    row(Crdt, Some("repl_deltas_abandoned"), None,
        "Deltas abandoned with a dropped log.",
        |r| link(r, |c| c.deltas_abandoned.load(Relaxed))),
    row(Crdt, Some("repl_ae_rounds"), Some(("repl_anti_entropy_rounds_total", Counter)),
        "Anti-entropy rounds completed.",
        |r| link(r, |c| c.ae_rounds.load(Relaxed))),
    row(Crdt, Some("repl_ae_rounds_clean"), Some(("repl_anti_entropy_rounds_clean_total", Counter)),
        "Anti-entropy rounds that found no difference.",
        |r| link(r, |c| c.ae_rounds_clean.load(Relaxed))),
    row(Crdt, Some("repl_ae_entries_received"), Some(("repl_anti_entropy_entries_received_total", Counter)),
        "Key states merged from anti-entropy.",
        |r| link(r, |c| c.ae_entries_received.load(Relaxed))),
    row(Crdt, Some("repl_ae_entries_shipped"), Some(("repl_anti_entropy_entries_shipped_total", Counter)),
        "Key states shipped by anti-entropy.",
        |r| link(r, |c| c.ae_entries_shipped.load(Relaxed))),
    row(Crdt, None, Some(("repl_gc_runs_total", Counter)),
        "Tombstone garbage-collection runs.",
        |r| link(r, |c| c.gc_runs.load(Relaxed))),
    row(Crdt, Some("repl_gc_dropped"), Some(("repl_gc_dropped_total", Counter)),
        "Tombstone metadata entries dropped by GC.",
        |r| link(r, |c| c.gc_dropped.load(Relaxed))),
    row(Crdt, Some("repl_handshake_failures"), Some(("repl_handshake_failures_total", Counter)),
        "Incoming replication connections refused in TLS.",
        |r| link(r, |c| c.handshake_failures.load(Relaxed))),
    row(Crdt, Some("repl_identity_rejections"), Some(("repl_identity_rejections_total", Counter)),
        "Incoming connections from a region not accepted here.",
        |r| link(r, |c| c.identity_rejections.load(Relaxed))),
    row(Crdt, Some("repl_max_clock_offset_ms"), Some(("repl_max_clock_offset_ms", Gauge)),
        "Remote HLCs further ahead of the local clock than this are held.",
        |r| link(r, |c| c.max_clock_offset_ms.load(Relaxed))),
    row(Crdt, Some("repl_clock_held_deltas"), Some(("repl_clock_held_deltas_total", Counter)),
        "Deltas from peers held (not merged, not acknowledged) for an HLC further ahead of the local clock than max-clock-offset-ms.",
        |r| link(r, |c| c.deltas_clock_held.load(Relaxed))),
    row(Crdt, Some("repl_clock_held_entries"), Some(("repl_clock_held_entries_total", Counter)),
        "Anti-entropy entries from peers held for an HLC further ahead of the local clock than max-clock-offset-ms.",
        |r| link(r, |c| c.entries_clock_held.load(Relaxed))),
    row(Crdt, Some("repl_local_losses"), Some(("repl_local_losses_total", Counter)),
        "Drains that found local deltas dropped from a full shard delta log (repaired by anti-entropy).",
        |r| link(r, |c| c.local_losses.load(Relaxed))),
    row(Crdt, Some("repl_local_gap_slots"), Some(("repl_local_gap_slots", Gauge)),
        "Slots of lost local deltas not yet repaired with every peer (GC of this region's tombstones waits).",
        |r| link(r, |c| c.local_gap_slots.load(Relaxed))),
    row(Crdt, Some("repl_incarnation"), None,
        "This run's incarnation (peers refuse an expelled one).",
        |r| r.link().map(|c| Value::Hex(c.incarnation.load(Relaxed)))),
    row(Crdt, Some("repl_restart_handshake_done"), Some(("repl_restart_handshake_done", Gauge)),
        "1 once every peer answered this incarnation's restart handshake.",
        |r| link(r, |c| u64::from(c.handshake_done.load(Relaxed)))),
    row(Crdt, Some("repl_restart_writes_held"), Some(("repl_restart_writes_held_total", Counter)),
        "Client writes that waited for the restart handshake (restart-write-hold-ms).",
        |r| link(r, |c| c.restart_writes_held.load(Relaxed))),
    row(Crdt, Some("repl_restart_hold_remaining_ms"), Some(("repl_restart_hold_remaining_ms", Gauge)),
        "How much longer client writes may wait for the restart handshake (0: they don't).",
        |r| link(r, |c| c.hold_remaining_ms(r.now_ms))),
    // # Invalidations (Kafka's per-partition lag follows)
    row(Invalidations, Some("kafka_enabled"), None,
        "1 if the invalidation stream is consumed.",
        |r| n(u64::from(r.shared.kafka.enabled.load(Relaxed)))),
    row(Invalidations, Some("kafka_records_applied"), Some(("kafka_records_applied_total", Counter)),
        "Invalidation records applied.",
        |r| n(r.shared.kafka.records_applied.load(Relaxed))),
    row(Invalidations, Some("kafka_keys_invalidated"), Some(("kafka_keys_invalidated_total", Counter)),
        "Keys whose value an invalidation removed.",
        |r| n(r.shared.kafka.keys_invalidated.load(Relaxed))),
    row(Invalidations, Some("kafka_records_malformed"), Some(("kafka_records_malformed_total", Counter)),
        "Malformed invalidation records skipped.",
        |r| n(r.shared.kafka.records_malformed.load(Relaxed))),
    row(Invalidations, Some("kafka_dead_lettered"), Some(("kafka_dead_lettered_total", Counter)),
        "Malformed records forwarded to the dead-letter topic.",
        |r| n(r.shared.kafka.dead_lettered.load(Relaxed))),
    row(Invalidations, Some("kafka_consumer_errors"), Some(("kafka_consumer_errors_total", Counter)),
        "Kafka consumer errors (broker outages are retried).",
        |r| n(r.shared.kafka.consumer_errors.load(Relaxed))),
    row(Invalidations, Some("kafka_floors_raised_as_replica"), None,
        "Invalidation floors raised while a replica (replayed on promotion).",
        |r| n(r.shared.kafka.floors_raised_as_replica.load(Relaxed))),
    row(Invalidations, Some("kafka_promotion_replays"), None,
        "Invalidations replayed on promotion to primary.",
        |r| n(r.shared.kafka.promotion_replays.load(Relaxed))),
    row(Invalidations, Some("kafka_consumer_lag"), None,
        "Records behind the partitions' ends, summed.",
        |r| Some(Value::I(r.shared.kafka.total_lag()))),
    row(Invalidations, Some("kafka_apply_latency_p50_ms"), Some(("kafka_apply_latency_p50_ms", Gauge)),
        "Record timestamp to applied, median of recent records.",
        |r| n(r.kafka_latency().0)),
    row(Invalidations, Some("kafka_apply_latency_p99_ms"), Some(("kafka_apply_latency_p99_ms", Gauge)),
        "Record timestamp to applied, p99 of recent records.",
        |r| n(r.kafka_latency().1)),
    row(Invalidations, Some("stale_fills_refused"), Some(("stale_fills_refused_total", Counter)),
        "Local SET … VERSION at or below the key's invalidation.",
        |r| n(r.store.stats.stale_fills_refused.load(Relaxed))),
    row(Invalidations, Some("stale_fills_hidden"), Some(("stale_fills_hidden_total", Counter)),
        "Replicated fills at or below the key's invalidation.",
        |r| n(r.ks().stale_fills_hidden)),
    row(Invalidations, Some("invalidation_tombstones"), Some(("invalidation_tombstones", Gauge)),
        "Keys holding a versioned invalidation tombstone.",
        |r| n(r.ks().invalidation_tombstones as u64)),
    // # CPU
    row(Cpu, Some("used_cpu_sys"), None,
        "System CPU seconds of the process.",
        |_| Some(cpu_seconds(libc::RUSAGE_SELF, false))),
    row(Cpu, Some("used_cpu_user"), None,
        "User CPU seconds of the process.",
        |_| Some(cpu_seconds(libc::RUSAGE_SELF, true))),
    row(Cpu, Some("used_cpu_sys_children"), None,
        "System CPU seconds of waited-for children.",
        |_| Some(cpu_seconds(libc::RUSAGE_CHILDREN, false))),
    row(Cpu, Some("used_cpu_user_children"), None,
        "User CPU seconds of waited-for children.",
        |_| Some(cpu_seconds(libc::RUSAGE_CHILDREN, true))),
    // # Cluster
    row(Cluster, Some("cluster_enabled"), None,
        "1 in a region cluster.",
        |r| n(u64::from(r.shared.cluster.is_some()))),
    row(Cluster, Some("cluster_bus_auth_failures"), Some(("cluster_bus_auth_failures_total", Counter)),
        "Inbound cluster-bus connections refused: no or a wrong bus-secret hello, or a frame whose HMAC failed.",
        |r| n(r.shared.cluster.as_ref().map_or(0, |c| c.bus_auth_failures.load(Relaxed)))),
    // # Keyspace (its `db0:` line is written by `INFO`)
    row(Keyspace, None, Some(("keys", Gauge)), "Live keys.", |r| n(r.ks().keys as u64)),
    row(Keyspace, None, Some(("keys_with_ttl", Gauge)),
        "Live keys with a TTL.",
        |r| n(r.ks().volatile as u64)),
];

const fn peer(
    info: Option<&'static str>,
    metric: Option<(&'static str, MetricKind)>,
    help: &'static str,
    read: fn(&PeerControl, u64) -> Value,
) -> PeerFigure {
    PeerFigure {
        info,
        metric,
        help,
        read,
    }
}

fn load(a: &std::sync::atomic::AtomicU64) -> Value {
    Value::N(a.load(Relaxed))
}

fn flag(b: bool) -> Value {
    Value::N(u64::from(b))
}

/// Every per-peer-region figure, in the order of the `peer_<region>:` line.
#[rustfmt::skip]
pub static PEER_FIGURES: &[PeerFigure] = &[
    peer(Some("id"), Some(("peer_region_id", Gauge)),
        "The peer's numeric region id.",
        |p, _| Value::N(u64::from(p.region_id))),
    peer(Some("link"), None,
        "expelled, refused, down, up or connecting.",
        |p, _| Value::Text(p.link_state().to_string())),
    peer(None, Some(("peer_expelled", Gauge)),
        "1 while the peer is expelled from GC (silent past peer-gc-bound-ms, or forgotten and back): its incarnation is refused.",
        |p, _| flag(p.link_state() == "expelled")),
    peer(None, Some(("peer_refused", Gauge)),
        "1 while the peer refuses this region's incarnation (it expelled us): restart this region empty.",
        |p, _| flag(p.link_state() == "refused")),
    peer(None, Some(("peer_link_up", Gauge)),
        "1 while the link is connected and not cut (MERIDIAN LINK DOWN).",
        |p, _| flag(p.link_state() == "up")),
    peer(Some("connected"), Some(("peer_connected", Gauge)),
        "1 while the QUIC connection to the peer is up.",
        |p, _| flag(p.connected.load(Relaxed))),
    peer(Some("bytes_sent"), Some(("peer_bytes_sent_total", Counter)),
        "Bytes written to the peer's stream.",
        |p, _| load(&p.bytes_sent)),
    peer(Some("bytes_received"), Some(("peer_bytes_received_total", Counter)),
        "Bytes read from the peer's stream.",
        |p, _| load(&p.bytes_received)),
    peer(Some("frames_sent"), Some(("peer_frames_sent_total", Counter)),
        "Frames written to the peer.",
        |p, _| load(&p.frames_sent)),
    peer(Some("frames_received"), Some(("peer_frames_received_total", Counter)),
        "Frames read from the peer.",
        |p, _| load(&p.frames_received)),
    peer(Some("frames_handled"), Some(("peer_frames_handled_total", Counter)),
        "Frames from the peer taken off the receive queue and handled (at rest: all received).",
        |p, _| load(&p.frames_handled)),
    peer(Some("frames_dropped"), Some(("peer_frames_dropped_total", Counter)),
        "Frames dropped (link cut, injected loss, queue full).",
        |p, _| load(&p.frames_dropped)),
    peer(Some("backlog_deltas"), Some(("peer_backlog_deltas", Gauge)),
        "Local deltas not yet acknowledged by the peer (lag in ops).",
        |p, _| load(&p.backlog)),
    peer(Some("lag_ms"), Some(("peer_lag_ms", Gauge)),
        "Age of the oldest unacknowledged delta (lag in ms).",
        |p, _| load(&p.lag_ms)),
    peer(Some("deltas_acked"), Some(("peer_deltas_acked_total", Counter)),
        "Deltas the peer acknowledged.",
        |p, _| load(&p.deltas_acked)),
    peer(Some("deltas_per_sec"), Some(("peer_deltas_per_second", Gauge)),
        "Deltas the peer acknowledged per second (last second).",
        |p, _| load(&p.deltas_per_sec)),
    peer(Some("last_ack_ms_ago"), Some(("peer_last_ack_age_ms", Gauge)),
        "Milliseconds since the peer's last acknowledgement (-1: never).",
        |p, now| Value::I(ms_ago(now, p.last_ack_ms.load(Relaxed)))),
    peer(Some("ae_bytes_sent"), Some(("peer_anti_entropy_bytes_sent_total", Counter)),
        "Anti-entropy bytes sent to the peer.",
        |p, _| load(&p.ae_bytes_sent)),
    peer(Some("last_recv_ms_ago"), Some(("peer_last_receive_age_ms", Gauge)),
        "Milliseconds since the last frame from the peer (-1: never).",
        |p, now| Value::I(ms_ago(now, p.last_recv_ms.load(Relaxed)))),
    peer(Some("clock_held"), Some(("peer_clock_held_total", Counter)),
        "Deltas and entries from the peer held for an HLC too far ahead of the local clock.",
        |p, _| load(&p.clock_held)),
    peer(Some("silent_ms"), Some(("peer_silent_ms", Gauge)),
        "Link time since the last frame from the peer (expelled from GC past peer-gc-bound-ms).",
        |p, _| load(&p.silent_ms)),
    peer(Some("joined"), None,
        "1 if the peer joined at run time (not configured).",
        |p, _| flag(p.joined)),
];

const fn node(
    info: Option<&'static str>,
    metric: Option<(&'static str, MetricKind)>,
    help: &'static str,
    read: fn(&NodeStatus, u64) -> Value,
) -> NodeFigure {
    NodeFigure {
        info,
        metric,
        help,
        read,
    }
}

/// Every per-peer-node figure (node mode), in the order of the `peer_node_<i>:` line.
#[rustfmt::skip]
pub static NODE_FIGURES: &[NodeFigure] = &[
    node(Some("region"), None, "The peer node's region.", |s, _| {
        Value::Text(s.region.clone())
    }),
    node(
        Some("addr"),
        None,
        "The peer node's replication address.",
        |s, _| Value::Text(s.addr.clone()),
    ),
    node(
        Some("connected"),
        Some(("node_connected", Gauge)),
        "1 while the QUIC connection to the peer node is up.",
        |s, _| flag(s.connected),
    ),
    node(
        Some("slots"),
        Some(("node_slots", Gauge)),
        "Slots the link to the peer node covers.",
        |s, _| Value::N(s.slots as u64),
    ),
    node(
        Some("backlog_deltas"),
        Some(("node_backlog_deltas", Gauge)),
        "Local deltas not yet acknowledged by the peer node.",
        |s, _| Value::N(s.backlog_deltas as u64),
    ),
    node(
        Some("lag_ms"),
        Some(("node_lag_ms", Gauge)),
        "Age of the oldest delta the peer node has not acknowledged.",
        |s, _| Value::N(s.lag_ms),
    ),
    node(
        Some("last_ack_ms_ago"),
        None,
        "Milliseconds since the peer node's last acknowledgement (-1: never).",
        |s, now| Value::I(ms_ago(now, s.last_ack_ms)),
    ),
    node(
        Some("deltas_acked"),
        None,
        "Deltas the peer node acknowledged.",
        |s, _| Value::N(s.deltas_acked),
    ),
];

/// Append `section`'s figures to an `INFO` reply, one `field:value` line each.
pub fn write_info(section: Section, r: &Readings, o: &mut String) {
    use std::fmt::Write;
    for f in FIGURES.iter().filter(|f| f.section == section) {
        if let Some(name) = f.info {
            if let Some(v) = (f.read)(r) {
                let _ = write!(o, "{name}:{v}\r\n");
            }
        }
    }
}

/// Append the region link's per-peer and per-node lines to `INFO crdt`.
pub fn write_info_peers(c: &Control, now_ms: u64, o: &mut String) {
    use std::fmt::Write;
    for p in c.peers().iter() {
        let _ = write!(o, "peer_{}:", p.region);
        let fields = PEER_FIGURES
            .iter()
            .filter_map(|f| f.info.map(|k| (k, (f.read)(p, now_ms))));
        for (i, (key, v)) in fields.enumerate() {
            let _ = write!(o, "{}{key}={v}", if i == 0 { "" } else { "," });
        }
        o.push_str("\r\n");
    }
    for (i, s) in c.nodes.lock().iter().enumerate() {
        let _ = write!(o, "peer_node_{i}:");
        let fields = NODE_FIGURES
            .iter()
            .filter_map(|f| f.info.map(|k| (k, (f.read)(s, now_ms))));
        for (j, (key, v)) in fields.enumerate() {
            let _ = write!(o, "{}{key}={v}", if j == 0 { "" } else { "," });
        }
        o.push_str("\r\n");
    }
}

/// `getrusage` seconds as Redis prints them (`%ld.%06ld`).
fn cpu_seconds(who: libc::c_int, user: bool) -> Value {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a pointer to a live rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Value::Text("0.000000".into());
    }
    let t = if user { ru.ru_utime } else { ru.ru_stime };
    Value::Text(format!("{}.{:06}", t.tv_sec, t.tv_usec))
}
