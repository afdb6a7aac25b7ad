//! The I/O shell: listener, connection tasks, background cycle (active expiry, eviction,
//! ops/s), shared server state. Time is read here and passed into the cores.

use crate::cmd::ConnState;
use crate::config::Config;
use crate::store::{Runtime, Store};
use meridian_crdt::{EvictionPolicy, RegionId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Delta log bound per shard when no replication consumes it.
const SINGLE_REGION_LOG_MAX: usize = 16;

use crate::shared::{ClientEntry, Shared};
use crate::util::now_ms;

pub struct Server {
    pub store: Arc<Store>,
    pub shared: Arc<Shared>,
    /// The plain client port (None: `port 0` next to a `tls-port`).
    listener: Option<TcpListener>,
    /// `tls-port`.
    tls_listener: Option<TcpListener>,
    repl: Option<crate::region_link::Replicator>,
    kafka: Option<crate::kafka::KafkaConsumer>,
}

fn random_seed() -> u64 {
    // Seed for table hashing and sampling: different per process (the shell uses OS
    // entropy; the cores receive it as an input).
    rand::random::<u64>()
}

impl Server {
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        // Certificate and key files first: a bad one stops the start with its name.
        let tls = crate::tls::Tls::load(&config)
            .map_err(std::io::Error::other)?
            .map(Arc::new);
        let listener = if config.plain_port_off() {
            None
        } else {
            Some(listen(&config.bind, config.port).await?)
        };
        let tls_listener = match config.tls_port {
            0 => None,
            port => Some(listen(&config.bind, port).await?),
        };
        // With `--port 0` the kernel picks the port: report the real one (INFO, CLIENT LIST).
        let mut config = config;
        if let Some(l) = &listener {
            config.port = l.local_addr()?.port();
        }
        let policy =
            EvictionPolicy::parse(&config.maxmemory_policy).unwrap_or(EvictionPolicy::NoEviction);
        let acl = Arc::new(crate::acl::Acl::from_config(&config).map_err(std::io::Error::other)?);
        let seed = random_seed();
        // Tables keyed by members, fields (and the link's keys) hash with a seed of this
        // process (the keyspace's tables take `seed` below).
        if !meridian_crdt::set_hash_seed(random_seed()) {
            tracing::warn!("hash seed already in use: members and fields hash with it");
        }
        let repl = crate::region_link::Replicator::start(&config).map_err(std::io::Error::other)?;
        let runtime = Runtime {
            maxmemory: AtomicU64::new(config.maxmemory),
            policy: Mutex::new(policy),
            samples: AtomicUsize::new(config.maxmemory_samples),
            maxclients: AtomicUsize::new(config.maxclients),
            proto_max_bulk_len: AtomicUsize::new(config.proto_max_bulk_len),
            max_entry_bytes: if repl.is_some() {
                meridian_replication::LINK_MAX_ENTRY_BYTES
            } else {
                meridian_replication::REPLICA_MAX_ENTRY_BYTES
            },
        };
        let store = Arc::new(Store::new(
            RegionId(config.region_id),
            seed,
            // Without peers nobody consumes the log: it keeps notes of only a few deltas per
            // shard, for inspection (MERIDIAN DELTAS; see `store::Shard::notes`).
            if repl.is_some() {
                config.delta_log_max
            } else {
                config.delta_log_max.min(SINGLE_REGION_LOG_MAX)
            },
            runtime,
            repl.is_some(),
        ));
        let run_id = format!(
            "{:016x}{:016x}{:08x}",
            seed,
            seed.rotate_left(29) ^ 0x6d65_7269_6469_616e,
            std::process::id()
        );
        store
            .feed()
            .set_backlog_size(usize::try_from(config.repl_backlog_size).unwrap_or(usize::MAX));
        let inregion = Arc::new(crate::replica_stream::InRegion::new(
            store.feed().clone(),
            config.min_replicas_to_write,
            config.min_replicas_max_lag,
        ));
        // The port its primary lists it under (and a replica is reached at): the TLS one
        // when the replica stream is TLS or there is no plain port (as Redis).
        inregion.set_listening_port(if config.tls_replication || listener.is_none() {
            config.tls_port
        } else {
            config.port
        });
        if let Some((host, port)) = config.replicaof_addr() {
            inregion.follow(Some(crate::replica_stream::PrimaryAddr { host, port }));
        }
        let cluster = match &config.cluster {
            Some(c) if c.enabled => Some(
                crate::cluster::Cluster::open(
                    c,
                    config.config_dir.as_deref(),
                    // The client port other nodes and clients are sent to: the TLS one with
                    // `tls-cluster` or no plain port (as Redis).
                    if config.tls_cluster || listener.is_none() {
                        config.tls_port
                    } else {
                        config.port
                    },
                    config.replication.as_ref().map(|r| r.listen.as_str()),
                )
                .map_err(std::io::Error::other)?,
            ),
            _ => None,
        };
        if let Some(c) = &cluster {
            // Before replication starts merging what other regions send.
            c.publish_served(&store);
        }
        let kafka_stats = Arc::new(crate::kafka::KafkaStats::default());
        let kafka = match &config.kafka {
            Some(k) if k.enabled => Some(
                crate::kafka::start(
                    k,
                    &config.region,
                    store.clone(),
                    kafka_stats.clone(),
                    cluster.clone(),
                )
                .map_err(std::io::Error::other)?,
            ),
            _ => None,
        };
        let output_limits = crate::limits::parse_output_limits(
            &config.client_output_buffer_limit,
            Default::default(),
        )
        .map_err(std::io::Error::other)?;
        let limits = crate::limits::ClientLimits::new(
            config.client_query_buffer_limit,
            config.timeout,
            output_limits,
            crate::limits::DebugCommand::parse(&config.enable_debug_command)
                .unwrap_or(crate::limits::DebugCommand::No),
        );
        let shared = Arc::new(Shared {
            limits,
            encoding: Default::default(),
            pubsub: Default::default(),
            cmdstats: crate::cmdstats::CmdStats::new(
                crate::cmd::table().len(),
                config.slowlog_log_slower_than,
                config.slowlog_max_len,
                config.latency_monitor_threshold,
            ),
            acl,
            cluster,
            inregion,
            io_threads: AtomicUsize::new(1),
            config,
            started_ms: now_ms(),
            run_id,
            clients: Mutex::new(HashMap::new()),
            next_client_id: AtomicU64::new(1),
            tls,
            repl: repl.as_ref().map(|r| r.control.clone()),
            kafka: kafka_stats,
        });
        Ok(Server {
            store,
            shared,
            listener,
            tls_listener,
            repl,
            kafka,
        })
    }

    /// The plain client port's address, or `tls-port`'s when there is no plain port.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match (&self.listener, &self.tls_listener) {
            (Some(l), _) | (None, Some(l)) => l.local_addr(),
            (None, None) => Err(std::io::Error::other("no client port")),
        }
    }

    /// `tls-port`'s address, if there is one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Accept clients forever; spawns the background cycle and the metrics endpoint.
    pub async fn run(mut self) -> std::io::Result<()> {
        // The consumer thread stops (committing what it applied) when the server does.
        let _kafka = self.kafka.take();
        tokio::spawn(background(self.store.clone(), self.shared.clone()));
        if let Some(c) = &self.shared.cluster {
            tokio::spawn(crate::cluster::run(
                c.clone(),
                self.store.clone(),
                self.shared.config.bind.clone(),
                self.shared.inregion.clone(),
                self.shared.clone(),
            ));
        }
        if let Some(r) = self.repl.take() {
            r.spawn(self.store.clone(), self.shared.cluster.clone())?;
        }
        tokio::spawn(crate::replica_stream::run_replica_link(
            self.store.clone(),
            self.shared.inregion.clone(),
            self.shared.acl.clone(),
            self.shared.tls.as_ref().and_then(|t| t.replication.clone()),
        ));
        if let Some(port) = self.shared.config.metrics_port {
            let addr = format!("{}:{port}", self.shared.config.bind);
            let listener = TcpListener::bind(&addr).await?;
            tracing::info!(%addr, "metrics endpoint listening");
            tokio::spawn(crate::metrics::serve(
                listener,
                self.store.clone(),
                self.shared.clone(),
            ));
        }
        serve_ports(self.listener, self.tls_listener, self.store, self.shared).await
    }

    /// Serve clients on `extra` more threads, each with its own single-threaded runtime and
    /// its own SO_REUSEPORT listener on the same address: the kernel spreads connections over
    /// the threads, and no connection ever wakes another thread (thread-per-core, like
    /// Redis' single event loop, times the cores).
    pub fn spawn_io_threads(&self, extra: usize) -> std::io::Result<()> {
        let addr = self.listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let tls_addr = self.tls_local_addr();
        self.shared.io_threads.store(1 + extra, Relaxed);
        for i in 0..extra {
            let (store, shared) = (self.store.clone(), self.shared.clone());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("meridian-io-{}", i + 1))
                .spawn(move || {
                    rt.block_on(async move {
                        let listeners = addr
                            .map(reuseport_listener)
                            .transpose()
                            .and_then(|l| Ok((l, tls_addr.map(reuseport_listener).transpose()?)));
                        match listeners {
                            Ok((l, tls)) => serve_ports(l, tls, store, shared).await,
                            Err(e) => {
                                tracing::error!(error = %e, "io thread cannot listen");
                                Ok(())
                            }
                        }
                    })
                })?;
        }
        Ok(())
    }
}

/// Bind `bind:port` for the I/O threads to share (port 0: the kernel picks one).
async fn listen(bind: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr = format!("{bind}:{port}");
    let sock_addr: SocketAddr = tokio::net::lookup_host(&addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {addr}")))?;
    if sock_addr.port() != 0 {
        // The I/O threads share the port through SO_REUSEPORT, which would also let a
        // second server (same user) bind it and silently take half the connections.
        // A plain bind first fails if anyone holds the port, as redis-server does.
        drop(std::net::TcpListener::bind(sock_addr)?);
    }
    reuseport_listener(sock_addr)
}

/// Accept on the plain port and `tls-port` (either may be absent) on this thread.
async fn serve_ports(
    plain: Option<TcpListener>,
    tls: Option<TcpListener>,
    store: Arc<Store>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    match (plain, tls) {
        (Some(p), Some(t)) => {
            tokio::spawn(accept_loop(t, store.clone(), shared.clone(), true));
            accept_loop(p, store, shared, false).await
        }
        (Some(l), None) => accept_loop(l, store, shared, false).await,
        (None, Some(l)) => accept_loop(l, store, shared, true).await,
        (None, None) => Ok(()),
    }
}

/// A listener with SO_REUSEADDR and SO_REUSEPORT (several threads accept on one port).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accept clients forever on one listener (`tls`: `tls-port`, each client's handshake in
/// its own task), serving them on the current runtime.
async fn accept_loop(
    listener: TcpListener,
    store: Arc<Store>,
    shared: Arc<Shared>,
    tls: bool,
) -> std::io::Result<()> {
    let local_port = listener.local_addr()?.port();
    let acceptor = match &shared.tls {
        Some(t) if tls => t.acceptor.clone(),
        _ => None,
    };
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                backoff
                    .failed(&shared.limits.accept_errors, "client", &e)
                    .await;
                continue;
            }
        };
        backoff.succeeded();
        store.stats.connections_received.fetch_add(1, Relaxed);
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = &acceptor else {
            admit(stream, peer, local_port, &store, &shared);
            continue;
        };
        let (acceptor, store, shared) = (acceptor.clone(), store.clone(), shared.clone());
        tokio::spawn(async move {
            match crate::tls::accept(&acceptor, stream).await {
                Ok(stream) => admit(stream, peer, local_port, &store, &shared),
                Err(e) => {
                    // Plain text on the TLS port, no or a bad client certificate: refused.
                    store.stats.tls_handshake_failures.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
            }
        });
    }
}

/// Serve an accepted client (TLS handshake done) in its own task, or refuse it (protected
/// mode, `maxclients`).
fn admit<S: crate::tls::ClientStream>(
    mut stream: S,
    peer: SocketAddr,
    local_port: u16,
    store: &Arc<Store>,
    shared: &Arc<Shared>,
) {
    let stats = &store.stats;
    if refused_by_protected_mode(shared, peer) {
        // Redis' protected mode: no password on the default user, so only loopback
        // clients are served; the others are told why and closed.
        tokio::spawn(async move {
            let _ = crate::tls::send(&mut stream, crate::acl::DENIED).await;
        });
        return;
    }
    let max = store.runtime.maxclients.load(Relaxed);
    if stats.connected_clients.load(Relaxed) >= max {
        stats.rejected_connections.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _ = crate::tls::send(&mut stream, b"-ERR max number of clients reached\r\n").await;
        });
        return;
    }
    stats.connected_clients.fetch_add(1, Relaxed);
    let id = shared.next_client_id.fetch_add(1, Relaxed);
    let created = now_ms();
    shared.clients.lock().insert(
        id,
        ClientEntry {
            addr: peer.to_string(),
            name: None,
            created_ms: created,
            user: "default".into(),
            local_port,
        },
    );
    let mut conn = ConnState::new(id, peer.to_string(), created);
    conn.local_port = local_port;
    conn.session.start(&shared.acl);
    let (store, shared) = (store.clone(), shared.clone());
    tokio::spawn(async move {
        // Released however the task ends, a panic included.
        let _slot = ClientSlot {
            store: store.clone(),
            shared: shared.clone(),
            id,
        };
        crate::connection::serve(stream, store, shared, conn).await;
    });
}

/// A client's `maxclients` slot and `CLIENT LIST` entry, given back when its task ends:
/// normally or by a panic (counted and logged; the node keeps serving).
struct ClientSlot {
    store: Arc<Store>,
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.shared.clients.lock().remove(&self.id);
        crate::util::saturating_dec(&self.store.stats.connected_clients);
        if std::thread::panicking() {
            self.shared.limits.connection_panics.fetch_add(1, Relaxed);
            tracing::error!(client = self.id, "connection task panicked; client closed");
        }
    }
}

/// How a listener survives failing accepts (EMFILE, ENFILE, ENOBUFS…): it waits before the
/// next try, longer while they keep failing (up to a second), counts every failure and
/// logs at most once per [`ACCEPT_LOG_INTERVAL_MS`] instead of spinning and flooding the log.
#[derive(Default)]
pub(crate) struct AcceptBackoff {
    delay_ms: u64,
    last_log_ms: u64,
    unlogged: u64,
}

const ACCEPT_LOG_INTERVAL_MS: u64 = 10_000;

impl AcceptBackoff {
    pub(crate) async fn failed(&mut self, counter: &AtomicU64, listener: &str, e: &std::io::Error) {
        counter.fetch_add(1, Relaxed);
        self.unlogged += 1;
        let now = now_ms();
        if self.last_log_ms == 0 || now.saturating_sub(self.last_log_ms) >= ACCEPT_LOG_INTERVAL_MS {
            tracing::warn!(listener, error = %e, failures = self.unlogged, "accept failed; backing off");
            self.last_log_ms = now;
            self.unlogged = 0;
        }
        self.delay_ms = (self.delay_ms * 2).clamp(10, 1000);
        tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
    }

    pub(crate) fn succeeded(&mut self) {
        self.delay_ms = 0;
    }
}

/// Protected mode (`protected-mode yes`, the default) refuses a client from another host
/// while the default user has no password.
fn refused_by_protected_mode(shared: &Shared, peer: SocketAddr) -> bool {
    let loopback = match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    !loopback && shared.acl.protected_mode.load(Relaxed) && shared.acl.default_nopass()
}

/// Periodic work, `hz` times per second: active expiry with a bounded budget, eviction
/// when over `maxmemory`, the ops/s gauge.
async fn background(store: Arc<Store>, shared: Arc<Shared>) {
    let period = Duration::from_millis(1000 / u64::from(shared.config.hz.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cmds = 0u64;
    let mut last_sample_ms = now_ms();
    let mut rng: rand::rngs::SmallRng = rand::SeedableRng::from_os_rng();
    loop {
        tick.tick().await;
        let now = now_ms();
        store.active_expire(now, shared.config.active_expire_budget);
        store.expire_invalidations(
            now,
            shared.config.invalidation_retention_ms,
            shared.config.max_invalidation_tombstones,
        );
        store.enforce_maxmemory(now, &mut || rand::RngCore::next_u64(&mut rng));
        if now.saturating_sub(last_sample_ms) >= 1000 {
            let cmds = store.stats.commands.load(Relaxed);
            // CONFIG RESETSTAT may have zeroed the counter since the last sample: the
            // gauge reads 0 for that second rather than wrapping around.
            let per_sec = cmds.saturating_sub(last_cmds).saturating_mul(1000)
                / now.saturating_sub(last_sample_ms).max(1);
            store.stats.ops_per_sec.store(per_sec, Relaxed);
            last_cmds = cmds;
            last_sample_ms = now;
        }
    }
}
