//! The region-cluster shell: drives the sans-IO [`ClusterNode`] (meridian-regions) with a TCP
//! cluster bus, a 100 ms tick, the node's state file, and routes client commands
//! (`MOVED`/`ASK`/`CROSSSLOT`/`CLUSTERDOWN`).
//!
//! The bus is TCP, like Redis Cluster's: gossip is small, ordered per link and needs no
//! encryption inside a region's network; QUIC (with its certificates) is kept for the
//! inter-region links, where loss, latency and trust differ. With `bus-secret`, a
//! connection is admitted by a challenge and every frame carries an HMAC
//! (`meridian_regions::bus_auth` says why not TLS). One listener on `bus-port`;
//! inbound links feed one channel; one writer task per destination address, created on
//! demand and dropped on the first error (the next message reconnects).
//!
//! State that must survive a restart (node id, epochs, own slots, primary) is written to
//! `nodes-file` before the node acts on a change, like Redis' nodes.conf.
//!
//! The write pause of a manual failover. A manual failover's write pause is the one place
//! the cluster shell waits on shard locks: routing a write takes the node lock, but the
//! write runs later under its shard lock, so a pause decided in between could miss it. When
//! one of its replicas' MFSTART arrives, the cluster task sets
//! `Cluster::writes_paused_until` (a deadline, so a waiting write is bounded whatever
//! happens), then takes and lets go of each shard lock in turn on a blocking thread (never
//! two at once, never under the node lock: a MIGRATE may hold a shard across its transfer),
//! and only then reads the feed offset it answers with. Every cluster write checks the
//! deadline under its shard lock (one relaxed load; keyless handlers that lock on demand,
//! MERIDIAN MERGE and INVALIDATE, through `Ctx::pause_began`), so each write either
//! finished before that barrier (and is in the offset) or waits out the pause (and is then
//! redirected). Redis gets this for free from its single thread. Merges from other regions
//! and Kafka invalidations do not wait: anti-entropy and the promotion replay cover them.

use crate::config::ClusterConfig;
use crate::store::Held;
use crate::store::Store;
use crate::util::now_ms;
use bytes::{Buf, BytesMut};
use meridian_regions::bus_auth::{self, BusSecret, FrameSigner, FrameVerifier};
use meridian_regions::node::{
    Event, NodeConfig, PersistentState, MANUAL_FAILOVER_TIMEOUT_MS, MF_PAUSE_MULT,
};
use meridian_regions::topology::InvalidationScope;
use meridian_regions::topology::{NodeId, NodeInfo, Role, Route, RouteRequest, Topology};
use meridian_regions::{bus, ClusterNode, Dest};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// Bus messages waiting for the cluster task (inbound) or for one destination (outbound).
const BUS_QUEUE: usize = 1024;
const TICK_MS: u64 = 100;
/// Bus bind retries at start (250 ms apart).
const BUS_BIND_ATTEMPTS: u32 = 40;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long either side of a bus connection waits for the other's half of the handshake.
const BUS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the state file holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Saved {
    id: String,
    current_epoch: u64,
    config_epoch: u64,
    last_vote_epoch: u64,
    /// Slot ranges this node owned, as a primary.
    slots: Vec<(u16, u16)>,
    /// Its primary's node name, as a replica.
    primary: Option<String>,
}

/// The node as the shell holds it: [`ClusterNode`] plus a memo of whether it accepts writes.
///
/// `ClusterNode::can_write` walks the slot owners (coverage, and whether a majority is
/// reachable at `now`); routing asks it for every write, a few hundred times per
/// millisecond under load. The answer for one millisecond is kept until the millisecond
/// changes or anything touches the node mutably: every mutable access goes through
/// `DerefMut`, which forgets the memo, so no message, tick or admin command can be missed
/// (a manual failover's client pause counts from the very next write).
pub struct NodeCell {
    node: ClusterNode,
    write_ok: Option<(u64, bool)>,
}

impl NodeCell {
    fn new(node: ClusterNode) -> Self {
        NodeCell {
            node,
            write_ok: None,
        }
    }

    /// [`ClusterNode::can_write`], memoized for `now_ms` (see the type's docs).
    pub fn can_write(&mut self, now_ms: u64) -> bool {
        match self.write_ok {
            Some((at, ok)) if at == now_ms => ok,
            _ => {
                let ok = self.node.can_write(now_ms);
                self.write_ok = Some((now_ms, ok));
                ok
            }
        }
    }
}

impl std::ops::Deref for NodeCell {
    type Target = ClusterNode;
    fn deref(&self) -> &ClusterNode {
        &self.node
    }
}

impl std::ops::DerefMut for NodeCell {
    fn deref_mut(&mut self) -> &mut ClusterNode {
        self.write_ok = None;
        &mut self.node
    }
}

/// Shared between the cluster task and every connection.
pub struct Cluster {
    pub node: Mutex<NodeCell>,
    /// Wakes the cluster task after an admin command queued bus messages.
    wake: Notify,
    nodes_file: PathBuf,
    /// `replicate = "host:port"` from the config, until that node is known.
    pending_replicate: Mutex<Option<String>>,
    /// When this node last became a primary (ms since the epoch; 0 = not since start): the
    /// invalidation consumer replays the stream from shortly before it.
    pub promoted_at_ms: AtomicU64,
    /// While a manual failover pauses writes: until when (ms since the epoch; 0 = no
    /// pause). Mirror of [`ClusterNode::pause_deadline`], read by every cluster write under
    /// its shard lock (see `run`: how the pause is made exact).
    pub writes_paused_until: AtomicU64,
    /// `[cluster] bus-secret`: bus connections must prove it.
    bus_secret: Option<BusSecret>,
    /// Inbound bus connections refused: no or a wrong hello, or a frame whose tag failed.
    pub bus_auth_failures: AtomicU64,
    /// PUBLISHes too large for the bus (`MAX_BUS_PUBLISH_BYTES`): delivered here only.
    pub publish_too_large: AtomicU64,
}

impl Cluster {
    /// Send a PUBLISH (or, with `shard_slot`, an SPUBLISH) made here to the other nodes of
    /// the region (the slot's shard): queued under the node lock, sent by the cluster task
    /// (at most once: a full queue or a down link drops it). False when too large for the
    /// bus (this node's subscribers got it).
    pub fn publish(&self, channel: &[u8], message: &[u8], shard_slot: Option<u16>) -> bool {
        let queued = self.node.lock().publish(channel, message, shard_slot);
        self.wake.notify_one();
        queued
    }

    /// Build the node from the config and its state file (creating a new identity if none).
    /// `repl_listen`: the `[replication] listen` address, if the node has that table; its
    /// port is announced on the bus (`NodeInfo::repl_port`, on `announce-ip`), so every
    /// node of the region learns every other's inter-region replication endpoint.
    pub fn open(
        cfg: &ClusterConfig,
        dir: Option<&std::path::Path>,
        port: u16,
        repl_listen: Option<&str>,
    ) -> Result<Arc<Cluster>, String> {
        let repl_port = match repl_listen {
            Some(l) => l
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("replication listen {l}: {e}"))?
                .port(),
            None => 0,
        };
        let nodes_file = match (dir, cfg.nodes_file.is_relative()) {
            (Some(d), true) => d.join(&cfg.nodes_file),
            _ => cfg.nodes_file.clone(),
        };
        let nodes_file = PathBuf::from(
            nodes_file
                .to_string_lossy()
                .replace("{port}", &port.to_string()),
        );
        let saved: Option<Saved> = match std::fs::read_to_string(&nodes_file) {
            Ok(text) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| format!("{}: {e}", nodes_file.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", nodes_file.display())),
        };
        let id = match &saved {
            Some(s) => NodeId::from_redis_name(&s.id)
                .ok_or_else(|| format!("{}: bad node id", nodes_file.display()))?,
            None => NodeId(uuid::Uuid::new_v4()),
        };
        let bus_port = cfg.bus_port.unwrap_or(port.wrapping_add(10_000));
        let mut me = NodeInfo::new(id, cfg.announce_ip.clone(), port, bus_port);
        me.repl_port = repl_port;
        let mut node = ClusterNode::new(
            NodeConfig {
                node_timeout_ms: cfg.node_timeout_ms,
                require_full_coverage: cfg.require_full_coverage,
            },
            me,
        );
        let now = now_ms();
        let mut pending_replicate = cfg.replicate.clone();
        match &saved {
            Some(s) => {
                node.restore(PersistentState {
                    current_epoch: s.current_epoch,
                    config_epoch: s.config_epoch,
                    last_vote_epoch: s.last_vote_epoch,
                });
                let slots: Vec<u32> = s
                    .slots
                    .iter()
                    .flat_map(|(a, b)| u32::from(*a)..=u32::from(*b))
                    .collect();
                if !slots.is_empty() {
                    node.add_slots(now, &slots).map_err(|e| e.to_string())?;
                }
                if s.primary.is_some() {
                    pending_replicate = s.primary.clone();
                }
            }
            None => {
                if let Some(spec) = &cfg.slots {
                    let slots = parse_slot_ranges(spec)?;
                    node.add_slots(now, &slots).map_err(|e| e.to_string())?;
                }
            }
        }
        for addr in &cfg.meet {
            let (host, bus) = parse_meet(addr)?;
            node.meet(now, &host, bus).map_err(|e| e.to_string())?;
        }
        let bus_secret = bus_secret(cfg, dir)?;
        let c = Arc::new(Cluster {
            bus_secret,
            bus_auth_failures: AtomicU64::new(0),
            publish_too_large: AtomicU64::new(0),
            node: Mutex::new(NodeCell::new(node)),
            wake: Notify::new(),
            nodes_file,
            pending_replicate: Mutex::new(pending_replicate),
            promoted_at_ms: AtomicU64::new(0),
            writes_paused_until: AtomicU64::new(0),
        });
        c.save()?;
        Ok(c)
    }

    /// This node's 40-hex name (stable across restarts: it is in the state file).
    pub fn my_name(&self) -> String {
        self.node.lock().topology().myself_id().redis_name()
    }

    /// Per key: apply an invalidation in full, raise only its floor, or skip it.
    pub fn invalidation_scopes(&self, keys: &[bytes::Bytes]) -> Vec<InvalidationScope> {
        let node = self.node.lock();
        let topo = node.topology();
        keys.iter()
            .map(|k| topo.invalidation_scope(meridian_crdt::key_slot(k)))
            .collect()
    }

    pub fn bus_port(&self) -> u16 {
        self.node.lock().topology().myself().bus_port
    }

    /// Wake the task: an admin command queued messages or changed state.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    fn saved(&self) -> Saved {
        let node = self.node.lock();
        let topo = node.topology();
        let me = topo.myself();
        let st = node.persistent_state();
        let slots = meridian_regions::topology::ranges_of(topo.slot_map().slots_of(me.id));
        Saved {
            id: me.id.redis_name(),
            current_epoch: st.current_epoch,
            config_epoch: st.config_epoch,
            last_vote_epoch: st.last_vote_epoch,
            slots,
            primary: me
                .role
                .primary_id()
                .and_then(|p| topo.node(p))
                .map(|p| p.id.redis_name()),
        }
    }

    /// Write the state file (atomically: temp file + rename).
    pub fn save(&self) -> Result<(), String> {
        let s = self.saved();
        let text = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?;
        let tmp = self.nodes_file.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.nodes_file))
            .map_err(|e| format!("{}: {e}", self.nodes_file.display()))
    }

    /// Route a key-bearing command, given its keys with their slots. `None`: run it here;
    /// otherwise why not (see [`Refusal`]).
    #[allow(clippy::too_many_arguments)]
    pub fn route<'s>(
        &self,
        store: &'s Store,
        keys: &[(&[u8], u16)],
        write: bool,
        asking: bool,
        readonly_read: bool,
        now: u64,
        held: &mut Held<'s>,
    ) -> Option<Refusal> {
        let &(first, slot) = keys.first()?;
        let mut multiple_keys = false;
        for &(k, s) in &keys[1..] {
            if s != slot {
                return Some(Refusal::Error(
                    "CROSSSLOT Keys in request don't hash to the same slot".into(),
                ));
            }
            multiple_keys |= k != first;
        }
        let mut node = self.node.lock();
        let topo = node.topology();
        // Key presence decides ASK / TRYAGAIN while the slot moves (Redis counts every key
        // argument, repeated ones included). Never hold the node lock while taking a shard
        // lock (EXEC holds every shard and may run CLUSTER commands, which take the node
        // lock), nor a shard lock the connection kept from its previous command (`held`: it
        // may be this very shard). A stable slot (the common case) needs neither: one
        // node lock routes it.
        let (mut existing_keys, mut missing_keys) = (0, 0);
        if topo.migrating(slot).is_some() || topo.importing(slot).is_some() {
            drop(node);
            held.release();
            let shard = store.shard(crate::store::shard_of(slot));
            for &(k, _) in keys {
                if shard.ks.peek(k, now).is_some() {
                    existing_keys += 1;
                } else {
                    missing_keys += 1;
                }
            }
            drop(shard);
            node = self.node.lock();
        }
        let topo = node.topology();
        let route = topo.route(&RouteRequest {
            slot,
            existing_keys,
            missing_keys,
            multiple_keys,
            asking,
            readonly_read,
        });
        match route {
            Route::Local if write && !node.can_write(now) => Some(if node.write_paused(now) {
                Refusal::Paused
            } else {
                Refusal::Error("CLUSTERDOWN The cluster is down".into())
            }),
            r => r.error_text().map(Refusal::Error),
        }
    }
}

/// Why a command does not run here now.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Answer with this error (`MOVED …`, `ASK …`, `CLUSTERDOWN …`, `CROSSSLOT …`).
    Error(String),
    /// A write while this primary pauses writes for a manual failover: wait, then route
    /// it again (it runs here if the failover is abandoned, or is redirected).
    Paused,
}

/// `0-5460,7000,8000-8100` → slot numbers.
pub fn parse_slot_ranges(spec: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a
            .trim()
            .parse()
            .map_err(|_| format!("bad slot range {part}"))?;
        let b: u32 = b
            .trim()
            .parse()
            .map_err(|_| format!("bad slot range {part}"))?;
        if a > b || b >= meridian_crdt::SLOT_COUNT as u32 {
            return Err(format!("bad slot range {part}"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// `host:port` (client port; the bus is at port + 10000) or `host:port@busport`.
/// The bus secret from `bus-secret` or `bus-secret-file` (not both), at least 16 bytes.
fn bus_secret(
    cfg: &ClusterConfig,
    dir: Option<&std::path::Path>,
) -> Result<Option<BusSecret>, String> {
    let text = match (&cfg.bus_secret, &cfg.bus_secret_file) {
        (Some(_), Some(_)) => {
            return Err("[cluster] takes bus-secret or bus-secret-file, not both".into())
        }
        (Some(s), None) => s.clone(),
        (None, Some(f)) => {
            let path = match dir {
                Some(d) if f.is_relative() => d.join(f),
                _ => f.clone(),
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("bus-secret-file {}: {e}", path.display()))?;
            text.trim_end().to_string()
        }
        (None, None) => return Ok(None),
    };
    BusSecret::new(text.as_bytes()).map(Some).ok_or_else(|| {
        format!(
            "[cluster] bus-secret must be at least {} bytes",
            bus_auth::MIN_SECRET_BYTES
        )
    })
}

fn parse_meet(addr: &str) -> Result<(String, u16), String> {
    let bad = || format!("bad meet address {addr} (want host:port or host:port@busport)");
    let (hostport, bus) = match addr.split_once('@') {
        Some((hp, b)) => (hp, Some(b.parse::<u16>().map_err(|_| bad())?)),
        None => (addr, None),
    };
    let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let bus = match bus {
        Some(b) => b,
        None => port.checked_add(10_000).ok_or_else(bad)?,
    };
    Ok((host.to_string(), bus))
}

/// Run the bus listener and the cluster task forever.
pub async fn run(
    cluster: Arc<Cluster>,
    store: Arc<Store>,
    bind: String,
    inregion: Arc<crate::replica_stream::InRegion>,
    shared: Arc<crate::shared::Shared>,
) {
    // Replicas answer MOVED (the routing does), not READONLY.
    inregion.set_refuse_writes(false);
    follow_role(&cluster, &inregion);
    let port = cluster.bus_port();
    // A restarted node may find its bus port held for a moment (a peer's reconnect attempt
    // that the kernel turned into a self-connection before we came back): retry for a
    // while, then give up like Redis does: a cluster node without its bus must not serve.
    let mut attempt = 0u32;
    let listener = loop {
        match TcpListener::bind((bind.as_str(), port)).await {
            Ok(l) => break l,
            Err(e) if attempt < BUS_BIND_ATTEMPTS => {
                attempt += 1;
                tracing::warn!(port, error = %e, attempt, "cluster bus port busy; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                tracing::error!(port, error = %e, "cannot bind the cluster bus; exiting");
                std::process::exit(1);
            }
        }
    };
    tracing::info!(port, "cluster bus listening");
    let loopback = bind
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
        || bind == "localhost";
    if cluster.bus_secret.is_none() && !loopback {
        tracing::warn!(
            port,
            "the cluster bus has no bus-secret: anyone who reaches this port can join the region's cluster"
        );
    }
    let (tx, mut rx) = mpsc::channel::<bus::BusMessage>(BUS_QUEUE);
    tokio::spawn(accept_bus(listener, tx, cluster.clone()));
    let mut links: HashMap<String, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng: rand::rngs::SmallRng = rand::SeedableRng::from_os_rng();
    let mut last_saved = cluster.saved();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                // Take whatever else already arrived too.
                let mut batch = vec![msg];
                while let Ok(m) = rx.try_recv() {
                    batch.push(m);
                }
                let pausing = {
                    let node = cluster.node.lock();
                    batch.iter().any(|m| {
                        matches!(m.body, bus::Body::MfStart) && node.pauses_for(m.header.sender)
                    })
                };
                if pausing {
                    // One of our replicas asks for a manual failover: the offset this primary
                    // answers with must cover every write it acknowledged or will. Writes
                    // check the deadline under their shard lock, so once each shard lock has
                    // been taken (and let go) after raising it, no write runs any more and
                    // every one that ran is in the feed offset read below. One lock at a
                    // time, never under the node lock, on a blocking thread (a MIGRATE holds
                    // its shard across a transfer): this task's runtime serves clients too.
                    let until = now_ms().saturating_add(MF_PAUSE_MULT * MANUAL_FAILOVER_TIMEOUT_MS);
                    cluster.writes_paused_until.store(until, SeqCst);
                    let s = store.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        for i in 0..crate::store::SHARDS {
                            drop(s.shard(i));
                        }
                    })
                    .await;
                }
                let mut node = cluster.node.lock();
                // Headers carry the offset (elections, manual failovers): fresh, not a tick old.
                node.set_repl_offset(inregion.repl_offset());
                for m in batch {
                    if let bus::Body::Publish { channel, message, shard } = &m.body {
                        // Another node's PUBLISH, for our subscribers (never waits).
                        if bus::validate(&m).is_ok() && node.accepts_publish_from(m.header.sender) {
                            let limit = shared.limits.output(crate::limits::OutputClass::Pubsub);
                            shared.pubsub.publish(channel, message, *shard, limit, now_ms());
                        }
                        continue;
                    }
                    if let Err(e) = node.handle_message(now_ms(), m) {
                        tracing::warn!(error = %e, "cluster bus message refused");
                    }
                }
            }
            _ = tick.tick() => {
                let seed = rand::RngCore::next_u64(&mut rng);
                {
                    let mut node = cluster.node.lock();
                    // The replication offset ranks replicas in elections.
                    node.set_repl_offset(inregion.repl_offset());
                    node.tick(now_ms(), seed);
                }
                resolve_pending_replicate(&cluster);
            }
            _ = cluster.wake.notified() => {}
        }
        let (out, events) = {
            let mut node = cluster.node.lock();
            let until = node.pause_deadline().unwrap_or(0);
            if cluster.writes_paused_until.load(Relaxed) != until {
                cluster.writes_paused_until.store(until, SeqCst);
            }
            let mut out = Vec::new();
            while let Some(o) = node.poll_outgoing() {
                let addr = match &o.to {
                    Dest::Node(id) => match node.topology().node(*id) {
                        Some(n) => n.bus_addr(),
                        None => continue,
                    },
                    Dest::Addr { host, bus_port } => format!("{host}:{bus_port}"),
                };
                match bus::encode(&o.msg) {
                    Ok(bytes) => out.push((addr, bytes)),
                    Err(e) => tracing::warn!(error = %e, "cannot encode a bus message"),
                }
            }
            let mut events = Vec::new();
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
            (out, events)
        };
        // Persist before acting on (or announcing) a new configuration.
        let now_saved = cluster.saved();
        if now_saved != last_saved {
            if let Err(e) = cluster.save() {
                tracing::error!(error = %e, "cannot write the cluster state file");
            }
            last_saved = now_saved;
        }
        for (addr, bytes) in out {
            send(&mut links, addr, bytes, &cluster.bus_secret);
        }
        // Before `SlotsLost` drops a slot's keys: from then on nothing from another region
        // stores one again.
        cluster.publish_served(&store);
        for e in events {
            if matches!(e, Event::RoleChanged(_)) {
                follow_role(&cluster, &inregion);
            }
            on_event(&cluster, &store, e);
        }
    }
}

/// Point the in-region replica stream at this node's primary (or stop following).
fn follow_role(cluster: &Cluster, inregion: &crate::replica_stream::InRegion) {
    let target = {
        let node = cluster.node.lock();
        let topo = node.topology();
        topo.myself()
            .role
            .primary_id()
            .and_then(|p| topo.node(p))
            .map(|p| crate::replica_stream::PrimaryAddr {
                host: p.host.clone(),
                port: p.port,
            })
    };
    if inregion.following() != target {
        tracing::info!(primary = ?target, "in-region replication follows");
        inregion.follow(target);
    }
}

fn resolve_pending_replicate(cluster: &Cluster) {
    let mut pending = cluster.pending_replicate.lock();
    let Some(target) = pending.clone() else {
        return;
    };
    let mut node = cluster.node.lock();
    let id = node
        .topology()
        .nodes()
        .find(|n| n.client_addr() == target || n.id.redis_name() == target)
        .map(|n| n.id);
    let Some(id) = id else { return };
    if node.topology().myself().role.primary_id() == Some(id) {
        *pending = None;
        return;
    }
    match node.replicate(now_ms(), id) {
        Ok(()) => {
            tracing::info!(primary = %target, "replicating");
            *pending = None;
        }
        Err(e) => tracing::debug!(error = %e, "replicate deferred"),
    }
}

/// Whether this node stores `slot`'s keys: its primary (itself, or the one it replicates:
/// a replica holds its primary's slots) owns the slot, or it imports it.
fn serves(topo: &Topology, slot: u16) -> bool {
    let me = topo.myself().role.primary_id().unwrap_or(topo.myself_id());
    topo.slot_map().owner(slot) == Some(me) || topo.importing(slot).is_some()
}

impl Cluster {
    /// Rewrite the store's [`crate::store::ServedSlots`] from the topology (what other
    /// regions' deltas and anti-entropy may store here).
    /// When the set changed, keys of slots no longer served are dropped too (after it
    /// changed: nothing from another region stores one again), so a delta merged between
    /// the topology change and this call does not linger.
    pub fn publish_served(&self, store: &Store) {
        let changed = {
            let node = self.node.lock();
            let topo = node.topology();
            store.served.publish(|slot| serves(topo, slot))
        };
        if changed > 0 {
            tracing::debug!(changed, served = store.served.count(), "served slots");
            let dropped = drop_unserved(store);
            if dropped > 0 {
                tracing::info!(dropped, "keys of slots no longer served dropped");
            }
        }
    }
}

/// Drop the keys of every slot the store's `ServedSlots` says this node does not serve
/// (nor imports). Returns the keys dropped. Takes shard locks only (never the node lock).
fn drop_unserved(store: &Store) -> usize {
    let mut dropped = 0;
    for slot in (0..meridian_crdt::SLOT_COUNT as u16).filter(|&s| !store.served.serves(s)) {
        let mut shard = store.shard(crate::store::shard_of(slot));
        if shard.ks.slot_len(slot) > 0 {
            dropped += shard.ks.drop_slot(slot);
            // Our replicas drop theirs too (a replica itself has none: it never streams).
            shard.feed.push_forget_slot(slot);
            shard.touch_all_watched();
        }
    }
    dropped
}

fn on_event(cluster: &Cluster, store: &Store, e: Event) {
    match e {
        Event::SlotsLost { count } => {
            cluster.publish_served(store);
            let dropped = drop_unserved(store);
            tracing::info!(count, dropped, "slots lost to another node");
        }
        Event::RoleChanged(role) => match role {
            Role::Primary => {
                cluster.promoted_at_ms.store(now_ms(), Relaxed);
                tracing::info!("role: primary");
            }
            Role::Replica { of } => tracing::info!(primary = %of.redis_name(), "role: replica"),
        },
        other => tracing::info!(event = ?other, "cluster event"),
    }
}

fn send(
    links: &mut HashMap<String, mpsc::Sender<Vec<u8>>>,
    addr: String,
    bytes: Vec<u8>,
    secret: &Option<BusSecret>,
) {
    if let Some(tx) = links.get(&addr) {
        match tx.try_send(bytes) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => return, // the link is stuck: drop
            Err(mpsc::error::TrySendError::Closed(b)) => {
                links.remove(&addr);
                return send(links, addr, b, secret);
            }
        }
    }
    let (tx, rx) = mpsc::channel(BUS_QUEUE);
    let _ = tx.try_send(bytes);
    tokio::spawn(write_link(addr.clone(), rx, secret.clone()));
    links.insert(addr, tx);
}

/// A TCP connection to a port on this host that nobody listens on can end up connected
/// to itself (the kernel picked the destination port as the source port).
pub fn is_self_connection(s: &TcpStream) -> bool {
    matches!((s.local_addr(), s.peer_addr()), (Ok(l), Ok(p)) if l == p)
}

/// One outbound bus connection: each queued item is one encoded frame.
async fn write_link(addr: String, mut rx: mpsc::Receiver<Vec<u8>>, secret: Option<BusSecret>) {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        _ => return, // dropped: the next message retries
    };
    // Connecting to a dead peer's bus port on this host can connect the socket to itself
    // (the kernel picked the destination port as the source port). Such a link talks to
    // us, not to the peer, and holds the port the peer needs when it restarts: drop it.
    if is_self_connection(&stream) {
        tracing::debug!(addr, "cluster bus connection to itself dropped");
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    let mut signer = match &secret {
        None => None,
        Some(secret) => match hello(&mut stream, secret).await {
            Ok(signer) => Some(signer),
            Err(e) => {
                tracing::warn!(addr, error = %e, "cluster bus handshake failed (same bus-secret on every node?)");
                return;
            }
        },
    };
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        let mut push = |frame: Vec<u8>| {
            batch.extend_from_slice(&frame);
            if let Some(signer) = signer.as_mut() {
                batch.extend_from_slice(&signer.sign(&frame));
            }
        };
        push(first);
        while let Ok(more) = rx.try_recv() {
            push(more);
        }
        if stream.write_all(&batch).await.is_err() {
            return;
        }
    }
}

/// The connecting side of the bus handshake: read the challenge, answer with our hello.
async fn hello(stream: &mut TcpStream, secret: &BusSecret) -> Result<FrameSigner, String> {
    let mut challenge = [0u8; bus_auth::NONCE_BYTES];
    match tokio::time::timeout(BUS_HANDSHAKE_TIMEOUT, stream.read_exact(&mut challenge)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("no challenge: {e}")),
        Err(_) => return Err("no challenge in time (the peer has no bus-secret?)".into()),
    }
    let (hello, signer) = secret.hello(&challenge, rand::random());
    stream.write_all(&hello).await.map_err(|e| e.to_string())?;
    Ok(signer)
}

/// Inbound bus links: at most `MAX_BUS_CONNECTIONS` at once (more are closed at once),
/// each closed after `BUS_IDLE_TIMEOUT` of silence; failing accepts back off (see
/// `server::AcceptBackoff`). All counted (`crate::limits`).
async fn accept_bus(
    listener: TcpListener,
    tx: mpsc::Sender<bus::BusMessage>,
    cluster: Arc<Cluster>,
) {
    use crate::limits::{BUS_ACCEPT_ERRORS, BUS_CONNECTIONS_REFUSED, MAX_BUS_CONNECTIONS};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_BUS_CONNECTIONS));
    let mut backoff = crate::server::AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                backoff.failed(&BUS_ACCEPT_ERRORS, "cluster bus", &e).await;
                continue;
            }
        };
        backoff.succeeded();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            BUS_CONNECTIONS_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let tx = tx.clone();
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = read_link(stream, tx, &cluster).await {
                tracing::warn!(%peer, error = %e, "cluster bus link dropped");
            }
        });
    }
}

/// Why an inbound bus connection ended.
enum BusLinkEnd {
    /// Not authenticated: counted in `bus_auth_failures`.
    Refused(String),
    Error(String),
}

impl std::fmt::Display for BusLinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusLinkEnd::Refused(e) => write!(f, "refused: {e}"),
            BusLinkEnd::Error(e) => f.write_str(e),
        }
    }
}

async fn read_link(
    stream: TcpStream,
    tx: mpsc::Sender<bus::BusMessage>,
    cluster: &Cluster,
) -> Result<(), BusLinkEnd> {
    let r = read_frames(stream, tx, cluster.bus_secret.as_ref()).await;
    if let Err(BusLinkEnd::Refused(_)) = &r {
        cluster.bus_auth_failures.fetch_add(1, Relaxed);
    }
    r
}

/// The accepting side of the bus handshake: send a challenge, check the hello.
async fn challenge(
    stream: &mut TcpStream,
    secret: &BusSecret,
) -> Result<FrameVerifier, BusLinkEnd> {
    let challenge: [u8; bus_auth::NONCE_BYTES] = rand::random();
    stream
        .write_all(&challenge)
        .await
        .map_err(|e| BusLinkEnd::Error(e.to_string()))?;
    let mut hello = [0u8; bus_auth::HELLO_BYTES];
    match tokio::time::timeout(BUS_HANDSHAKE_TIMEOUT, stream.read_exact(&mut hello)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(BusLinkEnd::Refused(format!("no hello: {e}"))),
        Err(_) => return Err(BusLinkEnd::Refused("no hello in time".into())),
    }
    secret
        .accept(&challenge, &hello)
        .map_err(|e| BusLinkEnd::Refused(e.to_string()))
}

async fn read_frames(
    mut stream: TcpStream,
    tx: mpsc::Sender<bus::BusMessage>,
    secret: Option<&BusSecret>,
) -> Result<(), BusLinkEnd> {
    let mut verifier = match secret {
        Some(s) => Some(challenge(&mut stream, s).await?),
        None => None,
    };
    let tag_bytes = if verifier.is_some() {
        bus_auth::TAG_BYTES
    } else {
        0
    };
    let mut buf = BytesMut::with_capacity(bus::MAX_BUS_FRAME_BYTES);
    loop {
        let read = stream.read_buf(&mut buf);
        match tokio::time::timeout(crate::limits::BUS_IDLE_TIMEOUT, read).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(BusLinkEnd::Error(e.to_string())),
            Err(_) => {
                crate::limits::BUS_CONNECTIONS_REFUSED
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(BusLinkEnd::Error("silent for too long".into()));
            }
        }
        // Each frame (and its tag) once whole; the tag is checked before decoding.
        while let Some(len) = bus_auth::frame_len(&buf) {
            if len > meridian_regions::wire::PREFIX_BYTES + bus::MAX_BUS_FRAME_BYTES {
                return Err(BusLinkEnd::Error("bus frame over the size limit".into()));
            }
            let Some(frame_tag) = buf.get(len..len + tag_bytes) else {
                break;
            };
            if let Some(v) = verifier.as_mut() {
                v.verify(&buf[..len], frame_tag)
                    .map_err(|e| BusLinkEnd::Refused(e.to_string()))?;
            }
            match bus::decode(&buf[..len]) {
                Ok(Some((msg, n))) if n == len => {
                    buf.advance(len + tag_bytes);
                    // A full queue means the node is behind: drop gossip rather than block.
                    let _ = tx.try_send(msg);
                }
                Ok(_) => return Err(BusLinkEnd::Error("malformed bus frame".into())),
                Err(e) => return Err(BusLinkEnd::Error(format!("malformed bus frame: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_and_meet_addresses_parse() {
        assert_eq!(parse_slot_ranges("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_slot_ranges("5-2").is_err());
        assert!(parse_slot_ranges("16384").is_err());
        assert_eq!(
            parse_meet("127.0.0.1:7001").unwrap(),
            ("127.0.0.1".into(), 17001)
        );
        assert_eq!(
            parse_meet("10.0.0.1:7001@9000").unwrap(),
            ("10.0.0.1".into(), 9000)
        );
        assert!(parse_meet("nope").is_err());
    }
}
