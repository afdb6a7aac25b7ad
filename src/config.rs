//! Configuration: a TOML file (`--config`) and CLI flags for the same keys; flags win.
//! Defaults serve on 127.0.0.1:6379 with no file at all.

use clap::Parser;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    pub bind: String,
    pub port: u16,
    pub maxclients: usize,
    #[serde(deserialize_with = "de_memory")]
    pub maxmemory: u64,
    pub maxmemory_policy: String,
    pub maxmemory_samples: usize,
    #[serde(deserialize_with = "de_memory_usize")]
    pub proto_max_bulk_len: usize,
    pub max_multibulk_len: usize,
    #[serde(deserialize_with = "de_memory_usize")]
    pub max_inline_len: usize,
    /// Prometheus `/metrics` port (off when absent).
    pub metrics_port: Option<u16>,
    /// This node's region name and compact id (HLC tie-break).
    pub region: String,
    pub region_id: u16,
    /// Bound of each shard's delta log.
    pub delta_log_max: usize,
    /// A remote HLC more than this far ahead of the local clock is not merged (held until
    /// local time catches up): see `meridian_replication::proto::link`.
    pub max_clock_offset_ms: u64,
    /// After a start, client writes wait until every peer answered the restart handshake,
    /// for at most this long (0: never wait): see `region_link::Control::holds_writes`.
    pub restart_write_hold_ms: u64,
    /// Background cycles per second (active expiry, stats), like Redis' `hz`.
    pub hz: u32,
    /// Threads serving clients (0 = [`default_io_threads`] of the cores).
    pub io_threads: usize,
    /// Keys examined per shard per active-expiry cycle.
    pub active_expire_budget: usize,
    pub log_level: String,
    /// Multi-region replication; absent = single region.
    pub replication: Option<ReplicationConfig>,
    /// Kafka invalidation consumer; absent (or `enabled = false`) = off.
    pub kafka: Option<KafkaConfig>,
    /// Region cluster (Redis Cluster protocol); absent = standalone.
    pub cluster: Option<ClusterConfig>,
    /// How long a key's invalidation floor (versioned tombstone) is kept after it was raised.
    pub invalidation_retention_ms: u64,
    /// Most invalidation floors kept per shard (the oldest are forgotten first).
    pub max_invalidation_tombstones: usize,
    /// In-region replication backlog bound (bytes of encoded changes), like Redis'.
    #[serde(deserialize_with = "de_memory")]
    pub repl_backlog_size: u64,
    /// Refuse writes unless this many replicas acked within `min-replicas-max-lag` s.
    pub min_replicas_to_write: usize,
    pub min_replicas_max_lag: u64,
    /// Start as a replica of `"host port"` (like Redis' `replicaof`).
    pub replicaof: Option<String>,
    /// The default user's password (Redis' `requirepass`; empty or absent: none).
    pub requirepass: Option<String>,
    /// ACL users as Redis' `user` directives without the keyword:
    /// `"alice on >secret ~cache:* +@read"`. Not together with `aclfile`.
    pub users: Vec<String>,
    /// The users' file (ACL SAVE/LOAD; loaded at start), relative to the config file.
    pub aclfile: Option<PathBuf>,
    /// Only loopback clients while the default user has no password (as Redis).
    pub protected_mode: bool,
    /// Redis' `jemalloc-bg-thread` (default on): jemalloc's background threads give freed
    /// memory back to the OS after its decay time, also when the process is idle after a
    /// burst or a drained replication backlog.
    pub jemalloc_bg_thread: bool,
    /// SLOWLOG: commands slower than this many microseconds are logged (negative: none,
    /// 0: all); at most `slowlog-max-len` entries. LATENCY: events over
    /// `latency-monitor-threshold` milliseconds (0: off). Redis' defaults.
    pub slowlog_log_slower_than: i64,
    pub slowlog_max_len: u64,
    pub latency_monitor_threshold: u64,
    /// What a replica authenticates to its primary with (AUTH [masteruser] masterauth).
    pub masteruser: Option<String>,
    pub masterauth: Option<String>,
    /// Most ACL LOG entries kept.
    pub acllog_max_len: usize,
    /// The TLS client port (0: none). With it, `port = 0` turns the plain port off (as
    /// Redis); without it, `port = 0` picks a free port.
    pub tls_port: u16,
    /// PEM files, relative to the config file: this node's certificate chain and key (the
    /// server's, and the client's on replica links and MIGRATE), the CA that clients' and
    /// peers' certificates must chain to (a file, or a directory of files).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_cert_file: Option<PathBuf>,
    pub tls_ca_cert_dir: Option<PathBuf>,
    /// Client certificates on `tls-port`: required (`yes`, the default), not asked for
    /// (`no`), or checked when sent (`optional`).
    #[serde(deserialize_with = "de_auth_clients")]
    pub tls_auth_clients: AuthClients,
    /// A replica connects to its primary over TLS.
    pub tls_replication: bool,
    /// MIGRATE connects to its target over TLS.
    pub tls_cluster: bool,
    /// Most bytes of unparsed input a client may have (Redis' `client-query-buffer-limit`).
    #[serde(deserialize_with = "de_memory")]
    pub client_query_buffer_limit: u64,
    /// Redis' `client-output-buffer-limit`: `<class> <hard> <soft> <soft seconds>` groups.
    pub client_output_buffer_limit: String,
    /// Seconds of idleness after which a client is closed (0: never), as Redis' `timeout`.
    pub timeout: u64,
    /// `no` (default), `yes` or `local`: serve the `DEBUG` command (as Redis 7).
    pub enable_debug_command: String,
    /// Directory of the config file (relative paths inside it resolve against this).
    #[serde(skip)]
    pub config_dir: Option<PathBuf>,
}

/// `[replication]`: this region's QUIC endpoint, certificates, peers, link tuning and
/// test-only fault injection.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReplicationConfig {
    /// UDP address of the replication endpoint.
    pub listen: String,
    /// PEM paths, relative to the config file's directory.
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub peers: Vec<PeerEntry>,
    pub batch_max_deltas: usize,
    pub batch_max_bytes: usize,
    pub resend_timeout_ms: u64,
    /// Bound of each per-peer outgoing delta log (beyond: dropped, anti-entropy repairs).
    pub log_max_deltas: usize,
    pub anti_entropy_interval_ms: u64,
    pub gc_interval_ms: u64,
    /// Local deltas are drained at most once per this interval (0: on every wake-up). A
    /// write after a quiet interval ships at once; a stream of writes waits up to this long
    /// to ship together, for far fewer wake-ups, frames and acks.
    pub flush_interval_ms: u64,
    /// `background` (idle class while it keeps up) or `normal`: see `sched`.
    pub thread_priority: crate::sched::ThreadPriority,
    /// A peer region from which nothing was heard for longer than this is expelled from
    /// GC: deleted-state metadata is collected without it, and its incarnation is refused
    /// when it comes back (it must restart empty). 0: never (GC waits forever).
    pub peer_gc_bound_ms: u64,
    /// Accept a region not listed in `peers` that connects with a certificate from the
    /// deployment CA (a region joining at run time), as a peer.
    pub accept_new_regions: bool,
    /// `lz4` (default) or `none`: compress delta batches and anti-entropy entries of at
    /// least 256 bytes on the wire when that makes them smaller. Peers decode both.
    pub compression: Compression,
}

/// `[replication] compression`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Lz4,
    None,
}

impl Compression {
    pub fn is_on(self) -> bool {
        self == Compression::Lz4
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        let l = meridian_replication::LinkConfig::default();
        ReplicationConfig {
            listen: "127.0.0.1:7102".into(),
            ca_cert: "certs/ca.pem".into(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            peers: Vec::new(),
            batch_max_deltas: l.max_batch_deltas,
            batch_max_bytes: l.max_batch_bytes,
            resend_timeout_ms: l.resend_timeout_ms,
            log_max_deltas: l.max_log_deltas,
            anti_entropy_interval_ms: l.anti_entropy_interval_ms,
            gc_interval_ms: 1_000,
            flush_interval_ms: 1,
            thread_priority: Default::default(),
            peer_gc_bound_ms: l.peer_gc_bound_ms,
            accept_new_regions: true,
            compression: Compression::Lz4,
        }
    }
}

/// `[cluster]`: this node's place in the region's Redis-Cluster-compatible cluster.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// Cluster bus TCP port (default: client port + 10000, like Redis).
    pub bus_port: Option<u16>,
    /// Address other nodes and clients (MOVED replies) use for this node.
    pub announce_ip: String,
    pub node_timeout_ms: u64,
    pub require_full_coverage: bool,
    /// Node id, epochs and own slots (`{port}` is replaced by the client port); relative to
    /// the config file's directory.
    pub nodes_file: PathBuf,
    /// Nodes to introduce ourselves to at start (`host:port` client address, bus at +10000,
    /// or `host:port@busport`).
    pub meet: Vec<String>,
    /// Slots to claim on first start (`0-5460,7000`), when the nodes file has none.
    pub slots: Option<String>,
    /// Replicate the node with this client address (`host:port`) once it is known.
    pub replicate: Option<String>,
    /// The region's shared cluster-bus secret (at least 16 bytes): with it, bus connections
    /// authenticate and every frame carries an HMAC (`meridian_regions::bus_auth`).
    pub bus_secret: Option<String>,
    /// The same, read from a file (trailing whitespace ignored); relative to the config
    /// file's directory.
    pub bus_secret_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: true,
            bus_port: None,
            announce_ip: "127.0.0.1".into(),
            node_timeout_ms: 15_000,
            require_full_coverage: true,
            nodes_file: "nodes-{port}.json".into(),
            meet: Vec::new(),
            slots: None,
            replicate: None,
            bus_secret: None,
            bus_secret_file: None,
        }
    }
}

/// `[kafka]`: the invalidation stream.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct KafkaConfig {
    pub enabled: bool,
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    pub topic: String,
    /// Consumer group; default `meridian-<region>` (every region consumes the whole stream).
    /// In cluster mode every node consumes it all with its own group, `<group>-<node id>`.
    pub group: Option<String>,
    /// Cluster mode: a replica promoted to primary re-reads the records of this many ms
    /// before its promotion and applies them in full (as a replica it applied only their
    /// floors). Must exceed node-timeout + election time + the old primary's consumer lag.
    pub promotion_replay_ms: u64,
    /// Where malformed records are forwarded (off when absent).
    pub dead_letter_topic: Option<String>,
    /// Passed through to librdkafka as is (security settings: `security.protocol`,
    /// `sasl.mechanism`, `ssl.ca.location`…), after meridian's own defaults.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            enabled: true,
            brokers: "127.0.0.1:9092".into(),
            topic: "meridian-invalidations".into(),
            group: None,
            promotion_replay_ms: 30_000,
            dead_letter_topic: None,
            properties: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PeerEntry {
    pub region: String,
    pub region_id: u16,
    /// The peer's replication UDP address (a region of one node, replicated one link per
    /// peer region). Either this or `seeds`.
    #[serde(default)]
    pub addr: String,
    /// Replication addresses of any of the peer region's nodes: the peer region may be a
    /// cluster; its topology is discovered and followed, and this node links to each of its
    /// primaries whose slots it shares (node mode, see README "Clustered regions"). Every
    /// region of a deployment that uses `seeds` must use them for all its peers.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Test faults on frames this node sends to the peer: one-way delay and drop rate.
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub drop_rate: f64,
}

/// Most regions a deployment may have (this region and its peers), and so one more than
/// the greatest `region-id`. Every region links to every other (a full mesh: one QUIC
/// connection, one outgoing log and window per peer, each write shipped once per peer), and
/// the replication protocol holds no fixed-width per-peer set, but meshes were measured to
/// 32 regions only (README, "Many regions"); 64 leaves room without promising more.
pub const MAX_REGIONS: usize = 64;

impl Config {
    /// The region count and ids are within what the code supports, names and ids unique.
    pub fn check_regions(&self) -> Result<(), String> {
        let max_id = MAX_REGIONS - 1;
        if usize::from(self.region_id) > max_id {
            return Err(format!(
                "region-id {} is out of range: region ids are 0..={max_id} (at most \
                 {MAX_REGIONS} regions)",
                self.region_id
            ));
        }
        let Some(r) = &self.replication else {
            return Ok(());
        };
        if r.peers.len() >= MAX_REGIONS {
            return Err(format!(
                "[replication] lists {} peers: at most {MAX_REGIONS} regions are supported \
                 (this one and {} peers)",
                r.peers.len(),
                MAX_REGIONS - 1
            ));
        }
        for (i, p) in r.peers.iter().enumerate() {
            if usize::from(p.region_id) > max_id {
                return Err(format!(
                    "peer {}: region-id {} is out of range: region ids are 0..={max_id} \
                     (at most {MAX_REGIONS} regions)",
                    p.region, p.region_id
                ));
            }
            if let Some(q) = r.peers[..i]
                .iter()
                .find(|q| q.region == p.region || q.region_id == p.region_id)
            {
                return Err(format!(
                    "peers {} (region-id {}) and {} (region-id {}) share a name or an id",
                    q.region, q.region_id, p.region, p.region_id
                ));
            }
            match (p.addr.is_empty(), p.seeds.is_empty()) {
                (true, true) => {
                    return Err(format!("peer {}: give `addr` or `seeds`", p.region));
                }
                (false, false) => {
                    return Err(format!(
                        "peer {}: give `addr` (one node) or `seeds` (any of its nodes), not both",
                        p.region
                    ));
                }
                _ => {}
            }
            for a in p
                .seeds
                .iter()
                .chain(Some(&p.addr).filter(|a| !a.is_empty()))
            {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return Err(format!(
                        "peer {}: {a:?} is not an ip:port address",
                        p.region
                    ));
                }
            }
        }
        if r.node_mode() && r.peers.iter().any(|p| p.seeds.is_empty()) {
            return Err(
                "[replication]: peers named by `seeds` (node mode) and by `addr` cannot be mixed"
                    .into(),
            );
        }
        Ok(())
    }
}

impl ReplicationConfig {
    /// Peers are named by `seeds`: links go to the peer regions' nodes, whichever serves
    /// each slot (regions that are clusters), not to one address per region.
    pub fn node_mode(&self) -> bool {
        self.peers.iter().any(|p| !p.seeds.is_empty())
    }

    /// A path from the config, resolved against the config file's directory.
    pub fn resolve(&self, dir: Option<&std::path::Path>, p: &std::path::Path) -> PathBuf {
        match dir {
            Some(d) if p.is_relative() => d.join(p),
            _ => p.to_path_buf(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1".into(),
            port: 6379,
            maxclients: 10_000,
            maxmemory: 0,
            maxmemory_policy: "noeviction".into(),
            maxmemory_samples: 5,
            proto_max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
            metrics_port: None,
            region: "a".into(),
            region_id: 0,
            delta_log_max: 8192,
            max_clock_offset_ms: meridian_replication::DEFAULT_MAX_CLOCK_OFFSET_MS,
            restart_write_hold_ms: 10_000,
            hz: 10,
            io_threads: 0,
            active_expire_budget: 2000,
            log_level: "info".into(),
            replication: None,
            kafka: None,
            cluster: None,
            invalidation_retention_ms: 3_600_000,
            max_invalidation_tombstones: 1_000_000,
            repl_backlog_size: 1024 * 1024,
            min_replicas_to_write: 0,
            min_replicas_max_lag: 10,
            replicaof: None,
            requirepass: None,
            users: Vec::new(),
            aclfile: None,
            protected_mode: true,
            jemalloc_bg_thread: true,
            slowlog_log_slower_than: 10_000,
            slowlog_max_len: 128,
            latency_monitor_threshold: 0,
            masteruser: None,
            masterauth: None,
            acllog_max_len: 128,
            tls_port: 0,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_cert_file: None,
            tls_ca_cert_dir: None,
            tls_auth_clients: AuthClients::Yes,
            tls_replication: false,
            tls_cluster: false,
            client_query_buffer_limit: crate::limits::DEFAULT_QUERY_BUFFER_LIMIT,
            client_output_buffer_limit: crate::limits::DEFAULT_OUTPUT_BUFFER_LIMIT.into(),
            timeout: 0,
            enable_debug_command: "no".into(),
            config_dir: None,
        }
    }
}

#[derive(Parser, Debug, Default)]
#[command(
    name = "meridian",
    version,
    about = "Multi-region active-active Redis-compatible cache with CRDT values"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub bind: Option<String>,
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long)]
    pub maxclients: Option<usize>,
    /// Memory limit, e.g. 100mb, 2gb (0 = none).
    #[arg(long)]
    pub maxmemory: Option<String>,
    #[arg(long)]
    pub maxmemory_policy: Option<String>,
    #[arg(long)]
    pub maxmemory_samples: Option<usize>,
    #[arg(long)]
    pub proto_max_bulk_len: Option<String>,
    #[arg(long)]
    pub metrics_port: Option<u16>,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub region_id: Option<u16>,
    /// Remote HLCs further ahead of the local clock than this (ms) are held, not merged.
    #[arg(long)]
    pub max_clock_offset_ms: Option<u64>,
    /// After a start, client writes wait (at most this long, ms; 0: never) until every peer
    /// answered the restart handshake.
    #[arg(long)]
    pub restart_write_hold_ms: Option<u64>,
    #[arg(long)]
    pub hz: Option<u32>,
    /// Threads serving clients (0 = three quarters of the cores, at least one).
    #[arg(long)]
    pub io_threads: Option<usize>,
    #[arg(long)]
    pub log_level: Option<String>,
    /// Kafka brokers for the invalidation stream (turns the consumer on).
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    #[arg(long)]
    pub kafka_topic: Option<String>,
    #[arg(long)]
    pub kafka_group: Option<String>,
    /// Run as a Redis-Cluster-compatible node (`[cluster]` table for the rest).
    #[arg(long)]
    pub cluster_enabled: bool,
    #[arg(long)]
    pub cluster_node_timeout: Option<u64>,
    /// In-region replication backlog, e.g. 1mb.
    #[arg(long)]
    pub repl_backlog_size: Option<String>,
    #[arg(long)]
    pub min_replicas_to_write: Option<usize>,
    #[arg(long)]
    pub min_replicas_max_lag: Option<u64>,
    /// Start as a replica of "host port".
    #[arg(long)]
    pub replicaof: Option<String>,
    /// The default user's password.
    #[arg(long)]
    pub requirepass: Option<String>,
    /// ACL users' file (loaded at start, ACL SAVE/LOAD).
    #[arg(long)]
    pub aclfile: Option<PathBuf>,
    /// `yes` (default) or `no`: see the `protected-mode` key.
    #[arg(long)]
    pub protected_mode: Option<String>,
    /// User a replica authenticates to its primary as.
    #[arg(long)]
    pub masteruser: Option<String>,
    /// Password a replica authenticates to its primary with.
    #[arg(long)]
    pub masterauth: Option<String>,
    /// TLS client port (0: none; see the `tls-port` key).
    #[arg(long)]
    pub tls_port: Option<u16>,
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long)]
    pub tls_key_file: Option<PathBuf>,
    #[arg(long)]
    pub tls_ca_cert_file: Option<PathBuf>,
    #[arg(long)]
    pub tls_ca_cert_dir: Option<PathBuf>,
    /// `yes` (default), `no` or `optional`.
    #[arg(long)]
    pub tls_auth_clients: Option<String>,
    /// `yes` or `no` (default).
    #[arg(long)]
    pub tls_replication: Option<String>,
    /// `yes` or `no` (default).
    #[arg(long)]
    pub tls_cluster: Option<String>,
    /// Most unparsed input per client, e.g. 1gb.
    #[arg(long)]
    pub client_query_buffer_limit: Option<String>,
    /// Output buffer limits per client class, Redis' syntax.
    #[arg(long)]
    pub client_output_buffer_limit: Option<String>,
    /// Close clients idle this many seconds (0: never).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// `no`, `yes` or `local`: serve the DEBUG command.
    #[arg(long)]
    pub enable_debug_command: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Write a local deployment's certificates: a CA and one certificate per region.
    Certs {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated region names, e.g. a,b,c.
        #[arg(long, value_delimiter = ',', required = true)]
        regions: Vec<String>,
    },
    /// Publish invalidation records (one per key) to the stream and wait for delivery.
    Invalidate {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value = "meridian-invalidations")]
        topic: String,
        /// Source version the keys changed at (omit: unconditional invalidation).
        #[arg(long)]
        version: Option<u64>,
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

impl Config {
    /// Any TLS at all: a TLS port, or TLS links out.
    pub fn tls_enabled(&self) -> bool {
        self.tls_port != 0 || self.tls_replication || self.tls_cluster
    }

    /// The plain client port is off: `port = 0` next to a `tls-port` (as Redis).
    pub fn plain_port_off(&self) -> bool {
        self.port == 0 && self.tls_port != 0
    }

    /// `replicaof` as (host, port), if set and well formed.
    pub fn replicaof_addr(&self) -> Option<(String, u16)> {
        let r = self.replicaof.as_deref()?;
        let mut it = r.split_whitespace();
        let host = it.next()?;
        let port = it.next()?.parse::<u16>().ok()?;
        if it.next().is_some() || port == 0 {
            return None;
        }
        Some((host.to_string(), port))
    }

    /// File (if any) then flags; validates the result.
    pub fn load(cli: &Cli) -> Result<Config, String> {
        let mut c = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let mut c: Config =
                    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), PathBuf::from);
                for p in [
                    &mut c.tls_cert_file,
                    &mut c.tls_key_file,
                    &mut c.tls_ca_cert_file,
                    &mut c.tls_ca_cert_dir,
                ]
                .into_iter()
                .flatten()
                {
                    if p.is_relative() {
                        *p = dir.join(&*p);
                    }
                }
                c.config_dir = Some(dir);
                c
            }
            None => Config::default(),
        };
        if let Some(v) = &cli.bind {
            c.bind = v.clone();
        }
        if let Some(v) = cli.port {
            c.port = v;
        }
        if let Some(v) = cli.maxclients {
            c.maxclients = v;
        }
        if let Some(v) = &cli.maxmemory {
            c.maxmemory = parse_memory(v).ok_or_else(|| format!("invalid --maxmemory {v}"))?;
        }
        if let Some(v) = &cli.maxmemory_policy {
            c.maxmemory_policy = v.clone();
        }
        if let Some(v) = cli.maxmemory_samples {
            c.maxmemory_samples = v;
        }
        if let Some(v) = &cli.proto_max_bulk_len {
            c.proto_max_bulk_len = parse_memory(v)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("invalid --proto-max-bulk-len {v}"))?;
        }
        if cli.metrics_port.is_some() {
            c.metrics_port = cli.metrics_port;
        }
        if let Some(v) = &cli.region {
            c.region = v.clone();
        }
        if let Some(v) = cli.region_id {
            c.region_id = v;
        }
        if let Some(v) = cli.max_clock_offset_ms {
            c.max_clock_offset_ms = v;
        }
        if let Some(v) = cli.restart_write_hold_ms {
            c.restart_write_hold_ms = v;
        }
        if let Some(v) = cli.io_threads {
            c.io_threads = v;
        }
        if let Some(v) = cli.hz {
            c.hz = v;
        }
        if let Some(v) = &cli.log_level {
            c.log_level = v.clone();
        }
        if let Some(v) = &cli.kafka_brokers {
            c.kafka.get_or_insert_with(KafkaConfig::default).brokers = v.clone();
        }
        if let Some(v) = &cli.kafka_topic {
            c.kafka.get_or_insert_with(KafkaConfig::default).topic = v.clone();
        }
        if let Some(v) = &cli.kafka_group {
            c.kafka.get_or_insert_with(KafkaConfig::default).group = Some(v.clone());
        }
        if cli.cluster_enabled {
            c.cluster.get_or_insert_with(ClusterConfig::default).enabled = true;
        }
        if let Some(v) = cli.cluster_node_timeout {
            c.cluster
                .get_or_insert_with(ClusterConfig::default)
                .node_timeout_ms = v;
        }
        if let Some(cl) = &c.cluster {
            if cl.enabled && cl.node_timeout_ms == 0 {
                return Err("cluster node-timeout-ms must be > 0".into());
            }
        }
        if let Some(v) = &cli.repl_backlog_size {
            c.repl_backlog_size =
                parse_memory(v).ok_or_else(|| format!("invalid --repl-backlog-size {v}"))?;
        }
        if let Some(v) = cli.min_replicas_to_write {
            c.min_replicas_to_write = v;
        }
        if let Some(v) = cli.min_replicas_max_lag {
            c.min_replicas_max_lag = v;
        }
        if let Some(v) = &cli.replicaof {
            c.replicaof = Some(v.clone());
        }
        if let Some(v) = &cli.requirepass {
            c.requirepass = Some(v.clone());
        }
        if let Some(v) = &cli.aclfile {
            c.aclfile = Some(v.clone());
        }
        if let Some(v) = &cli.protected_mode {
            c.protected_mode = parse_yes_no(v)
                .ok_or_else(|| format!("--protected-mode must be yes or no, got {v:?}"))?;
        }
        if let Some(v) = &cli.masteruser {
            c.masteruser = Some(v.clone());
        }
        if let Some(v) = &cli.masterauth {
            c.masterauth = Some(v.clone());
        }
        if let Some(v) = cli.tls_port {
            c.tls_port = v;
        }
        for (flag, key) in [
            (&cli.tls_cert_file, &mut c.tls_cert_file),
            (&cli.tls_key_file, &mut c.tls_key_file),
            (&cli.tls_ca_cert_file, &mut c.tls_ca_cert_file),
            (&cli.tls_ca_cert_dir, &mut c.tls_ca_cert_dir),
        ] {
            if flag.is_some() {
                key.clone_from(flag);
            }
        }
        if let Some(v) = &cli.tls_auth_clients {
            c.tls_auth_clients = AuthClients::parse(v).ok_or_else(|| {
                format!("--tls-auth-clients must be yes, no or optional, got {v:?}")
            })?;
        }
        if let Some(v) = &cli.tls_replication {
            c.tls_replication = parse_yes_no(v)
                .ok_or_else(|| format!("--tls-replication must be yes or no, got {v:?}"))?;
        }
        if let Some(v) = &cli.tls_cluster {
            c.tls_cluster = parse_yes_no(v)
                .ok_or_else(|| format!("--tls-cluster must be yes or no, got {v:?}"))?;
        }
        if c.tls_enabled() && (c.tls_cert_file.is_none() || c.tls_key_file.is_none()) {
            return Err(
                "tls-port, tls-replication and tls-cluster need tls-cert-file and tls-key-file"
                    .into(),
            );
        }
        if c.tls_enabled()
            && (c.tls_replication || c.tls_cluster || c.tls_auth_clients != AuthClients::No)
            && c.tls_ca_cert_file.is_none()
            && c.tls_ca_cert_dir.is_none()
        {
            return Err(
                "either tls-ca-cert-file or tls-ca-cert-dir must be given when \
                        tls-cluster, tls-replication or tls-auth-clients is on"
                    .into(),
            );
        }
        if let Some(v) = &cli.client_query_buffer_limit {
            c.client_query_buffer_limit = parse_memory(v)
                .ok_or_else(|| format!("invalid --client-query-buffer-limit {v}"))?;
        }
        if let Some(v) = &cli.client_output_buffer_limit {
            c.client_output_buffer_limit = v.clone();
        }
        if let Some(v) = cli.timeout {
            c.timeout = v;
        }
        if let Some(v) = &cli.enable_debug_command {
            c.enable_debug_command = v.clone();
        }
        crate::limits::parse_output_limits(&c.client_output_buffer_limit, Default::default())
            .map_err(|e| format!("client-output-buffer-limit: {e}"))?;
        if crate::limits::DebugCommand::parse(&c.enable_debug_command).is_none() {
            return Err("enable-debug-command must be no, yes or local".into());
        }
        if c.client_query_buffer_limit < 1024 * 1024 {
            return Err("client-query-buffer-limit must be at least 1mb".into());
        }
        if let Some(r) = &c.replicaof {
            if c.replicaof_addr().is_none() && !r.eq_ignore_ascii_case("no one") {
                return Err(format!("replicaof must be \"host port\", got {r:?}"));
            }
        }
        if let Some(k) = &c.kafka {
            if k.enabled && (k.brokers.is_empty() || k.topic.is_empty()) {
                return Err("[kafka] needs brokers and topic".into());
            }
        }
        if meridian_crdt::EvictionPolicy::parse(&c.maxmemory_policy).is_none() {
            return Err(format!("unknown maxmemory-policy {}", c.maxmemory_policy));
        }
        if c.hz == 0 || c.hz > 500 {
            return Err("hz must be within 1..=500".into());
        }
        c.check_regions()?;
        if let Some(r) = &c.replication {
            for p in &r.peers {
                if p.region == c.region || p.region_id == c.region_id {
                    return Err(format!("peer {} has this region's name or id", p.region));
                }
                if !(0.0..=1.0).contains(&p.drop_rate) {
                    return Err(format!("peer {}: drop-rate must be within 0..=1", p.region));
                }
            }
            if !r.peers.is_empty()
                && (r.cert.as_os_str().is_empty() || r.key.as_os_str().is_empty())
            {
                return Err("[replication] needs cert and key".into());
            }
        }
        Ok(c)
    }
}

/// `tls-auth-clients`: whether clients on `tls-port` must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthClients {
    Yes,
    No,
    Optional,
}

impl AuthClients {
    pub fn parse(s: &str) -> Option<AuthClients> {
        match parse_yes_no(s) {
            Some(true) => Some(AuthClients::Yes),
            Some(false) => Some(AuthClients::No),
            None => s
                .eq_ignore_ascii_case("optional")
                .then_some(AuthClients::Optional),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AuthClients::Yes => "yes",
            AuthClients::No => "no",
            AuthClients::Optional => "optional",
        }
    }
}

/// `tls-auth-clients` in TOML: `true`/`false` or `"yes"`/`"no"`/`"optional"`.
fn de_auth_clients<'de, D: serde::Deserializer<'de>>(d: D) -> Result<AuthClients, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        Bool(bool),
        Text(String),
    }
    match V::deserialize(d)? {
        V::Bool(true) => Ok(AuthClients::Yes),
        V::Bool(false) => Ok(AuthClients::No),
        V::Text(s) => AuthClients::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "tls-auth-clients must be yes, no or optional, got {s:?}"
            ))
        }),
    }
}

/// Redis' booleans: `yes`/`no` (any case).
pub fn parse_yes_no(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("yes") {
        Some(true)
    } else if s.eq_ignore_ascii_case("no") {
        Some(false)
    } else {
        None
    }
}

/// Redis `memtoll`: 1k = 1000, 1kb = 1024, m/mb, g/gb; plain bytes otherwise.
pub fn parse_memory(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let units: [(&str, u64); 6] = [
        ("gb", 1 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
        ("g", 1_000_000_000),
        ("m", 1_000_000),
        ("k", 1_000),
    ];
    for (suffix, mul) in units {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.trim().parse::<u64>().ok()?.checked_mul(mul);
        }
    }
    s.strip_suffix('b').unwrap_or(&s).parse().ok()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MemValue {
    Int(u64),
    Text(String),
}

fn de_memory<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match MemValue::deserialize(d)? {
        MemValue::Int(n) => Ok(n),
        MemValue::Text(s) => {
            parse_memory(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid size {s}")))
        }
    }
}

fn de_memory_usize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = de_memory(d)?;
    usize::try_from(n).map_err(serde::de::Error::custom)
}

/// I/O threads when `io-threads` is 0 (the default): three quarters of the cores, at least
/// one, as Redis advises for its `io-threads` (2 or 3 of 4 cores, 6 of 8). The spare quarter
/// is for the kernel's network stack, the background tasks (replication, expiry) and, on a
/// small box, the clients: on 2 cores, two client threads next to a busy load generator
/// queue on each other's shard locks and get preempted holding them.
pub fn default_io_threads(cores: usize) -> usize {
    (cores * 3 / 4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_threads_leave_a_quarter_of_the_cores_spare() {
        let got: Vec<usize> = [1, 2, 3, 4, 8, 16].map(default_io_threads).to_vec();
        assert_eq!(got, [1, 1, 2, 3, 6, 12]);
    }

    #[test]
    fn memory_units_follow_redis() {
        assert_eq!(parse_memory("100mb"), Some(100 << 20));
        assert_eq!(parse_memory("1g"), Some(1_000_000_000));
        assert_eq!(parse_memory("1024"), Some(1024));
        assert_eq!(parse_memory("lots"), None);
    }

    #[test]
    fn toml_keys_match_flags() {
        let c: Config = toml::from_str(
            "port = 7000\nmaxmemory = \"64mb\"\nmaxmemory-policy = \"allkeys-lru\"\n",
        )
        .unwrap();
        assert_eq!(c.port, 7000);
        assert_eq!(c.maxmemory, 64 << 20);
        assert!(toml::from_str::<Config>("no-such-key = 1").is_err());
    }

    #[test]
    fn max_clock_offset_has_a_default_a_key_and_a_flag() {
        assert_eq!(Config::default().max_clock_offset_ms, 10_000);
        let c: Config = toml::from_str("max-clock-offset-ms = 2500\n").unwrap();
        assert_eq!(c.max_clock_offset_ms, 2500);
        let cli = Cli::parse_from(["meridian", "--max-clock-offset-ms", "750"]);
        assert_eq!(Config::load(&cli).unwrap().max_clock_offset_ms, 750);
        assert_eq!(Config::default().restart_write_hold_ms, 10_000);
        let c: Config = toml::from_str("restart-write-hold-ms = 0\n").unwrap();
        assert_eq!(c.restart_write_hold_ms, 0);
        let cli = Cli::parse_from(["meridian", "--restart-write-hold-ms", "250"]);
        assert_eq!(Config::load(&cli).unwrap().restart_write_hold_ms, 250);
    }

    #[test]
    fn replication_table_parses() {
        let c: Config = toml::from_str(
            "region = \"a\"\n[replication]\nlisten = \"127.0.0.1:7102\"\ncert = \"certs/a.pem\"\nkey = \"certs/a-key.pem\"\nresend-timeout-ms = 250\npeers = [{ region = \"b\", region-id = 1, addr = \"127.0.0.1:7202\", delay-ms = 50, drop-rate = 0.1 }]\n",
        )
        .unwrap();
        let r = c.replication.unwrap();
        assert_eq!(r.resend_timeout_ms, 250);
        assert_eq!(r.peers[0].region_id, 1);
        assert_eq!(r.peers[0].delay_ms, 50);
        assert_eq!(
            r.resolve(Some(std::path::Path::new("/etc/m")), &r.cert),
            PathBuf::from("/etc/m/certs/a.pem")
        );
        assert!(Config::default().replication.is_none());
    }

    fn with_peers(region_id: u16, peers: impl IntoIterator<Item = (String, u16)>) -> String {
        let list: Vec<String> = peers
            .into_iter()
            .map(|(r, id)| {
                format!("  {{ region = \"{r}\", region-id = {id}, addr = \"127.0.0.1:1\" }},")
            })
            .collect();
        format!(
            "region = \"r{region_id}\"\nregion-id = {region_id}\n[replication]\ncert = \"c.pem\"\nkey = \"k.pem\"\npeers = [\n{}\n]\n",
            list.join("\n")
        )
    }

    fn load_toml(text: &str) -> Result<Config, String> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "meridian-config-test-{}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        let path_text = path.to_str().ok_or("UTF-8 temp path")?.to_string();
        let got = Config::load(&Cli::parse_from(["meridian", "--config", &path_text]));
        let _ = std::fs::remove_file(&path);
        got
    }

    fn mesh(n: u16, me: u16) -> String {
        with_peers(
            me,
            (0..n).filter(|&j| j != me).map(|j| (format!("r{j}"), j)),
        )
    }

    #[test]
    fn the_largest_supported_mesh_loads() {
        let max = MAX_REGIONS as u16;
        let c = load_toml(&mesh(max, max - 1)).expect("64 regions are supported");
        assert_eq!(c.replication.map(|r| r.peers.len()), Some(MAX_REGIONS - 1));
        assert!(load_toml(&mesh(32, 0)).is_ok());
    }

    #[test]
    fn more_regions_than_supported_is_a_config_error() {
        // 65 regions: 64 peers (ids 0..=64, so one of them is out of range too; the count is
        // reported first).
        let err = load_toml(&mesh(MAX_REGIONS as u16 + 1, 0)).unwrap_err();
        assert!(
            err.contains("lists 64 peers") && err.contains("at most 64 regions"),
            "{err}"
        );
        // Far more (the link once asserted at most 64 peers: a panic at start).
        let err = load_toml(&mesh(200, 3)).unwrap_err();
        assert!(err.contains("lists 199 peers"), "{err}");
    }

    #[test]
    fn region_ids_out_of_range_are_config_errors() {
        let err = load_toml(&with_peers(64, [("b".to_string(), 1)])).unwrap_err();
        assert!(
            err.contains("region-id 64 is out of range") && err.contains("0..=63"),
            "{err}"
        );
        let err = load_toml(&with_peers(0, [("b".to_string(), 1000)])).unwrap_err();
        assert!(
            err.contains("peer b: region-id 1000 is out of range"),
            "{err}"
        );
        // Without replication too: the id is the region's HLC tie-break everywhere.
        let err = load_toml("region-id = 65535\n").unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        let cli = Cli::parse_from(["meridian", "--region-id", "64"]);
        assert!(Config::load(&cli).is_err());
        let cli = Cli::parse_from(["meridian", "--region-id", "63"]);
        assert_eq!(Config::load(&cli).map(|c| c.region_id), Ok(63));
    }

    #[test]
    fn peers_sharing_a_name_or_an_id_are_config_errors() {
        let err = load_toml(&with_peers(0, [("b".into(), 1), ("c".into(), 1)])).unwrap_err();
        assert!(err.contains("share a name or an id"), "{err}");
        let err = load_toml(&with_peers(0, [("b".into(), 1), ("b".into(), 2)])).unwrap_err();
        assert!(err.contains("share a name or an id"), "{err}");
    }

    #[test]
    fn tls_keys_parse_and_are_checked() {
        let c = Config::default();
        assert!(!c.tls_enabled() && c.tls_auth_clients == AuthClients::Yes);
        let dir = std::env::temp_dir().join(format!("meridian-tls-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        std::fs::write(
            &path,
            "tls-port = 6380\ntls-cert-file = \"n.pem\"\ntls-key-file = \"/abs/k.pem\"\ntls-ca-cert-file = \"ca.pem\"\ntls-auth-clients = \"optional\"\ntls-replication = true\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::load(&Cli::parse_from(["meridian", "--config", p])).unwrap();
        // Paths from the file are relative to it; absolute ones stay.
        assert_eq!(c.tls_cert_file, Some(dir.join("n.pem")));
        assert_eq!(c.tls_key_file, Some(PathBuf::from("/abs/k.pem")));
        assert_eq!(c.tls_auth_clients, AuthClients::Optional);
        assert!(c.tls_replication && !c.tls_cluster && !c.plain_port_off());
        let c = Config::load(&Cli::parse_from([
            "meridian",
            "--config",
            p,
            "--port",
            "0",
            "--tls-auth-clients",
            "no",
            "--tls-cluster",
            "yes",
        ]))
        .unwrap();
        assert!(c.plain_port_off() && c.tls_cluster);
        assert_eq!(c.tls_auth_clients, AuthClients::No);
        // TOML booleans for tls-auth-clients; anything else is refused.
        let c: Config = toml::from_str("tls-auth-clients = false\n").unwrap();
        assert_eq!(c.tls_auth_clients, AuthClients::No);
        assert!(toml::from_str::<Config>("tls-auth-clients = \"maybe\"\n").is_err());
        // A TLS port needs a certificate and key, and client auth needs a CA.
        let err = Config::load(&Cli::parse_from(["meridian", "--tls-port", "6380"])).unwrap_err();
        assert!(err.contains("tls-cert-file"), "{err}");
        let err = Config::load(&Cli::parse_from([
            "meridian",
            "--tls-port",
            "6380",
            "--tls-cert-file",
            "c",
            "--tls-key-file",
            "k",
        ]))
        .unwrap_err();
        assert!(err.contains("tls-ca-cert-file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kafka_table_parses_and_is_off_by_default() {
        assert!(Config::default().kafka.is_none());
        let c: Config = toml::from_str(
            "[kafka]\nbrokers = \"127.0.0.1:19092\"\ngroup = \"g\"\nproperties = { \"security.protocol\" = \"plaintext\" }\n",
        )
        .unwrap();
        let k = c.kafka.unwrap();
        assert!(k.enabled);
        assert_eq!(k.topic, "meridian-invalidations");
        assert_eq!(k.group.as_deref(), Some("g"));
        assert_eq!(k.properties["security.protocol"], "plaintext");
    }
}
