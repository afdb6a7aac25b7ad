//! The replication shell: one task on the main runtime owns the sans-IO [`RegionLink`] and
//! the QUIC transport. It drains the shards' delta logs (woken by `Stats::delta_notify`),
//! merges received frames into the sharded store, drives timers, anti-entropy and GC, and
//! injects the configured test faults (one-way delay, drop rate) and runtime link cuts
//! (`MERIDIAN LINK DOWN|UP <region>`).
//!
//! Client writes never wait on replication: a shard's delta log is bounded; when it
//! overflows the oldest deltas are dropped, and the drain reports them to the link
//! (`RegionLink::note_local_loss`: their lowest stamp and their slots), which asks every
//! peer for anti-entropy and holds this region's GC frontier below them until those slots
//! are repaired with every peer.
//!
//! The link's incarnation id is random (not the wall clock: a restart after a backward clock
//! step would look stale to peers). Until the restart handshake is answered (a round trip
//! once connected), writes are stamped from the local clock alone, which a backward step may
//! have put below this region's previous incarnation; the handshake then raises the clock
//! above every stamp of ours that peers hold.

use crate::config::{Config, ReplicationConfig};
use crate::replica_stream::ReplFeed;

use crate::store::{key_shard, shard_of, Remote, Store, SHARDS};
use crate::util::now_ms;
use bytes::Bytes;
use meridian_crdt::{Applied, Delta, Entry, Hlc, RegionId};
use meridian_replication::transport::quic::{PeerConfig, QuicConfig, QuicTransport};
use meridian_replication::{encode_into, FrameEncoder, LinkConfig, LinkStore, RegionLink};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::time::Duration;

/// The sharded store as the replication protocol sees it. Every call locks only the shard
/// it needs, for that call: a delta batch locks each touched shard once, one shard at a
/// time; anti-entropy reads and merges a slot or a key at a time (the protocol tolerates a
/// view that moves between calls: a difference it misses or invents is settled by the next
/// round); GC goes shard by shard; acks and frontier gossip lock nothing. No path of the
/// replication thread ever holds two shard locks, so clients of other shards keep running
/// and a client of the same shard waits for at most one slot's or one batch's worth of work.
pub struct ShellStore<'a> {
    store: &'a Store,
    /// `Some(i)`: `gc` collects shard `i` only (the shell spreads GC over its interval).
    gc_shard: Option<usize>,
}

impl<'a> ShellStore<'a> {
    pub fn new(store: &'a Store) -> ShellStore<'a> {
        ShellStore {
            store,
            gc_shard: None,
        }
    }

    /// A view whose `gc` collects shard `i` only (GC spread over its interval).
    pub fn for_gc_shard(store: &'a Store, i: usize) -> ShellStore<'a> {
        ShellStore {
            store,
            gc_shard: Some(i),
        }
    }
}

impl ShellStore<'_> {
    /// Whether this node stores `slot` (see `ServedSlots`); counts a refusal.
    fn serves(&self, slot: u16) -> bool {
        let ok = self.store.served.serves(slot);
        if !ok {
            self.store.stats.refused_not_served.fetch_add(1, Relaxed);
        }
        ok
    }
}

impl LinkStore for ShellStore<'_> {
    fn apply_delta(&mut self, delta: &Delta) -> Applied {
        if !self.serves(delta.slot) {
            return Applied::Unchanged;
        }
        let mut shard = self.store.shard(shard_of(delta.slot));
        self.store.merge_remote(&mut shard, Remote::Delta(delta))
    }

    fn apply_deltas(&mut self, deltas: &[Delta]) {
        // Group by shard (stable: one key's deltas keep their order), then lock each
        // touched shard once.
        let mut counts = [0u32; SHARDS];
        let served = |d: &Delta| self.store.served.serves(d.slot);
        let refused = deltas.iter().filter(|d| !served(d)).count();
        if refused > 0 {
            self.store
                .stats
                .refused_not_served
                .fetch_add(refused as u64, Relaxed);
        }
        for d in deltas.iter().filter(|d| served(d)) {
            counts[shard_of(d.slot)] += 1;
        }
        let mut starts = [0u32; SHARDS + 1];
        for i in 0..SHARDS {
            starts[i + 1] = starts[i] + counts[i];
        }
        let mut fill = starts;
        let mut order = vec![0u32; deltas.len() - refused];
        for (n, d) in deltas.iter().enumerate().filter(|(_, d)| served(d)) {
            let i = shard_of(d.slot);
            order[fill[i] as usize] = n as u32;
            fill[i] += 1;
        }
        for i in 0..SHARDS {
            let run = &order[starts[i] as usize..starts[i + 1] as usize];
            if run.is_empty() {
                continue;
            }
            let mut shard = self.store.shard(i);
            for &n in run {
                self.store
                    .merge_remote(&mut shard, Remote::Delta(&deltas[n as usize]));
            }
        }
    }

    fn merge_full(&mut self, key: &[u8], state: &Entry) -> Applied {
        if !self.serves(meridian_crdt::key_slot(key)) {
            return Applied::Unchanged;
        }
        let mut s = self.store.shard(key_shard(key));
        self.store.merge_remote(&mut s, Remote::State(key, state))
    }

    // A slot this node does not serve shows as empty (its keys, if any, are being dropped
    // or migrated): anti-entropy never ships a copy of a slot from a node that lost it.
    fn slot_digest(&mut self, slot: u16) -> u64 {
        if !self.store.served.serves(slot) {
            return 0;
        }
        self.store.shard(shard_of(slot)).ks.slot_digest(slot)
    }

    fn for_each_key_digest(&self, slot: u16, visit: &mut dyn FnMut(&[u8], u64)) {
        if self.store.served.serves(slot) {
            LinkStore::for_each_key_digest(&self.store.shard(shard_of(slot)).ks, slot, visit)
        }
    }

    fn for_each_entry(&self, slot: u16, visit: &mut dyn FnMut(&[u8], &Entry)) {
        if self.store.served.serves(slot) {
            LinkStore::for_each_entry(&self.store.shard(shard_of(slot)).ks, slot, visit)
        }
    }

    fn entry(&self, key: &[u8]) -> Option<Entry> {
        if !self.store.served.serves(meridian_crdt::key_slot(key)) {
            return None;
        }
        self.store
            .shard(key_shard(key))
            .ks
            .raw_entry(key)
            .map(Cow::into_owned)
    }

    fn slot_is_lossy(&self, slot: u16) -> bool {
        self.store.shard(shard_of(slot)).ks.slot_is_lossy(slot)
    }

    fn slot_loss_mark(&self, slot: u16) -> Option<u64> {
        self.store.shard(shard_of(slot)).ks.slot_loss_mark(slot)
    }

    fn mark_slot_repaired(&mut self, slot: u16, mark: u64) {
        self.store
            .shard(shard_of(slot))
            .ks
            .mark_slot_repaired_if(slot, mark);
    }

    fn gc(&mut self, stable: &dyn Fn(RegionId) -> Hlc) -> usize {
        if let Some(i) = self.gc_shard {
            return self.store.shard(i % SHARDS).ks.gc(&|r| stable(r));
        }
        // Shard by shard: GC never needs a cross-shard view.
        (0..SHARDS)
            .map(|i| self.store.shard(i).ks.gc(&|r| stable(r)))
            .sum()
    }
}

/// Per-peer state shared with `INFO crdt` and `MERIDIAN LINK`.
#[derive(Default)]
pub struct PeerControl {
    pub region: String,
    pub region_id: u16,
    /// Cut at run time: frames to and from this peer are dropped here.
    pub down: AtomicBool,
    pub connected: AtomicBool,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    /// Local deltas not yet acknowledged by the peer.
    pub backlog: AtomicU64,
    /// Age of the oldest unacknowledged local delta (0: nothing outstanding).
    pub lag_ms: AtomicU64,
    /// Wall-clock ms of the peer's last acknowledgement (0: never).
    pub last_ack_ms: AtomicU64,
    pub deltas_acked: AtomicU64,
    /// Deltas the peer acknowledged per second, over the last publishing second.
    pub deltas_per_sec: AtomicU64,
    /// Encoded anti-entropy frames sent to this peer (digests, key lists, entries).
    pub ae_bytes_sent: AtomicU64,
    /// Milliseconds since the last frame received from the peer.
    pub last_recv_ms: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// Frames from the peer taken off the transport's receive queue by the replication loop
    /// (merged, or dropped and counted in `frames_dropped` while the link is cut): at rest
    /// equal to `frames_received`, the difference is what waits in the queue.
    pub frames_handled: AtomicU64,
    /// Deltas and anti-entropy entries from the peer held: too far ahead of our clock.
    pub clock_held: AtomicU64,
    /// Where the link stands for GC ([`PEER_ACTIVE`], [`PEER_EXPELLED`], [`PEER_REFUSED`]).
    pub gc_state: std::sync::atomic::AtomicU8,
    /// Link time since the last frame from the peer (`peer-gc-bound-ms` expels past it).
    pub silent_ms: AtomicU64,
    /// The peer's incarnation as last heard (0: none yet).
    pub epoch: AtomicU64,
    /// Added at run time (a region that joined), not configured.
    pub joined: bool,
    /// `MERIDIAN REGION FORGET` was issued: the replication loop removes it.
    pub forgetting: AtomicBool,
}

/// [`PeerControl::gc_state`]: replicating.
pub const PEER_ACTIVE: u8 = 0;
/// Expelled from GC (silent past `peer-gc-bound-ms`): its incarnation is refused.
pub const PEER_EXPELLED: u8 = 1;
/// The peer refuses this region's incarnation (it expelled us): restart this region.
pub const PEER_REFUSED: u8 = 2;

impl PeerControl {
    pub fn new(region: &str, region_id: u16, joined: bool) -> PeerControl {
        PeerControl {
            region: region.to_string(),
            region_id,
            joined,
            ..PeerControl::default()
        }
    }

    /// `expelled`: expelled from GC, its incarnation refused; `refused`: it refuses ours;
    /// `down`: cut by `MERIDIAN LINK DOWN`; `up`: connected and not cut; `connecting`: not
    /// cut, but no connection to the peer now (a link never reads `up` unconnected).
    pub fn link_state(&self) -> &'static str {
        match self.gc_state.load(Relaxed) {
            PEER_EXPELLED => return "expelled",
            PEER_REFUSED => return "refused",
            _ => {}
        }
        if self.down.load(Relaxed) {
            "down"
        } else if self.connected.load(Relaxed) {
            "up"
        } else {
            "connecting"
        }
    }

    /// Publish the link's view of this peer.
    pub fn publish_gc_state(&self, status: &meridian_replication::PeerStatus) {
        use meridian_replication::proto::link::PeerState;
        let state = match status.state {
            PeerState::Active => PEER_ACTIVE,
            PeerState::Expelled => PEER_EXPELLED,
            PeerState::RefusedByPeer => PEER_REFUSED,
        };
        self.gc_state.store(state, Relaxed);
        self.silent_ms.store(status.silent_ms, Relaxed);
        self.epoch.store(status.epoch.unwrap_or(0), Relaxed);
    }
}

/// A run-time request to the replication loop.
#[derive(Debug)]
pub enum ReplRequest {
    /// `MERIDIAN REGION FORGET <region>`.
    Forget(String),
}

/// One peer node's link in node mode (`region_link_nodes`), for `INFO crdt` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    pub region: String,
    /// Its replication address.
    pub addr: String,
    pub connected: bool,
    /// Slots this node's link to it covers (ours that it serves in its region).
    pub slots: usize,
    pub backlog_deltas: usize,
    pub lag_ms: u64,
    pub last_ack_ms: u64,
    pub deltas_acked: u64,
}

/// What the rest of the server sees of replication.
#[derive(Default)]
pub struct Control {
    /// Peer regions, configured or joined at run time (see [`Control::peers`]).
    pub peers: parking_lot::RwLock<Vec<Arc<PeerControl>>>,
    /// Requests for the replication loop (`MERIDIAN REGION FORGET`), and its wake-up.
    pub requests: parking_lot::Mutex<Vec<ReplRequest>>,
    pub request_notify: tokio::sync::Notify,
    /// `peer-gc-bound-ms` and `accept-new-regions` in force.
    pub peer_gc_bound_ms: AtomicU64,
    pub accept_new_regions: AtomicBool,
    /// Regions added at run time (they connected with a valid certificate), refused (a
    /// region id clash, `accept-new-regions = false`, too many regions), and forgotten.
    pub regions_joined: AtomicU64,
    pub regions_refused: AtomicU64,
    pub regions_forgotten: AtomicU64,
    /// Peers expelled from GC for their silence, frames refused from expelled
    /// incarnations, refusals received from peers that expelled this region.
    pub peers_expelled: AtomicU64,
    pub frames_refused: AtomicU64,
    pub refusals_received: AtomicU64,
    /// Node mode: every peer node this node has a link to (empty in region mode).
    pub nodes: parking_lot::Mutex<Vec<NodeStatus>>,
    pub deltas_enqueued: AtomicU64,
    pub deltas_sent: AtomicU64,
    pub deltas_resent: AtomicU64,
    /// Resent deltas that went as placeholders, their content joined into a later entry.
    pub deltas_forwarded: AtomicU64,
    pub deltas_applied: AtomicU64,
    /// Outgoing logs dropped at their bound (their deltas go by anti-entropy instead).
    pub logs_dropped: AtomicU64,
    pub deltas_abandoned: AtomicU64,
    pub ae_rounds: AtomicU64,
    pub ae_rounds_clean: AtomicU64,
    pub ae_entries_received: AtomicU64,
    pub ae_entries_shipped: AtomicU64,
    pub gc_dropped: AtomicU64,
    pub gc_runs: AtomicU64,
    /// Deltas from peers held for carrying an HLC too far ahead of the local clock (each
    /// attempt; the sender resends), and anti-entropy entries likewise.
    pub deltas_clock_held: AtomicU64,
    pub entries_clock_held: AtomicU64,
    /// `max-clock-offset-ms` in force.
    pub max_clock_offset_ms: AtomicU64,
    /// Losses from the shard delta logs reported to the link, and the slots whose repair
    /// still holds back this region's GC frontier.
    pub local_losses: AtomicU64,
    pub local_gap_slots: AtomicU64,
    /// This incarnation's link id, and whether every peer answered its restart handshake.
    pub incarnation: AtomicU64,
    /// Published (Release) only after the store clock observed every peer's answer and the
    /// start's lossy slots were settled (`handshake_completed`).
    pub handshake_done: AtomicBool,
    /// Client writes wait until `handshake_done` or this wall-clock ms, whichever is first
    /// (0: never wait; `restart-write-hold-ms`).
    pub hold_until_ms: AtomicU64,
    /// Client writes (commands, or transactions) that waited for the restart handshake.
    pub restart_writes_held: AtomicU64,
    /// Deltas merged from peers per second, over the last publishing second.
    pub deltas_applied_per_sec: AtomicU64,
    /// Incoming replication connections refused in the TLS handshake (unknown CA...).
    pub handshake_failures: AtomicU64,
    /// Incoming connections with a valid certificate for a region not accepted here.
    pub identity_rejections: AtomicU64,
}

impl Control {
    /// Do client writes wait now (the restart window)? Until every peer answered the
    /// restart handshake, this region's clock may be below stamps it issued in an earlier
    /// life (an empty restart): a write stamped then could order before, or be swallowed
    /// by, its own older writes. Bounded by `restart-write-hold-ms`. One load once done.
    #[inline]
    pub fn holds_writes(&self, now_ms: u64) -> bool {
        !self.handshake_done.load(Acquire) && now_ms <= self.hold_until_ms.load(Relaxed)
    }

    /// Milliseconds client writes may still wait for the restart handshake (0: they don't).
    pub fn hold_remaining_ms(&self, now_ms: u64) -> u64 {
        if self.handshake_done.load(Acquire) {
            return 0;
        }
        self.hold_until_ms
            .load(Relaxed)
            .saturating_add(1)
            .saturating_sub(now_ms)
    }

    /// The peer regions now (a snapshot).
    pub fn peers(&self) -> Vec<Arc<PeerControl>> {
        self.peers.read().clone()
    }

    pub fn peer(&self, region: &[u8]) -> Option<Arc<PeerControl>> {
        self.peers
            .read()
            .iter()
            .find(|p| p.region.as_bytes() == region)
            .cloned()
    }

    /// `MERIDIAN REGION FORGET <region>`: checked here, carried out by the replication loop
    /// (its link, log and transport peers go; GC stops waiting for it; its incarnation is
    /// refused if it comes back).
    pub fn forget(&self, region: &[u8], own: &str) -> Result<(), String> {
        let name = String::from_utf8_lossy(region);
        if region == own.as_bytes() {
            return Err(format!(
                "ERR {name} is this region: forget it on the other regions' nodes"
            ));
        }
        let Some(p) = self.peer(region) else {
            return Err(format!(
                "ERR unknown region '{name}' (MERIDIAN REGION LIST shows the peer regions)"
            ));
        };
        p.forgetting.store(true, Relaxed);
        self.requests
            .lock()
            .push(ReplRequest::Forget(p.region.clone()));
        self.request_notify.notify_one();
        Ok(())
    }
}

/// `-1` for "never", else milliseconds since `at_ms`.
pub fn ms_ago(now_ms: u64, at_ms: u64) -> i64 {
    if at_ms == 0 {
        -1
    } else {
        now_ms.saturating_sub(at_ms) as i64
    }
}

/// Started replication: the transport is bound on the replication thread's own runtime;
/// [`Replicator::spawn`] starts that thread.
pub struct Replicator {
    pub control: Arc<Control>,
    /// The replication thread's runtime (the transport's tasks are registered on it).
    rt: Option<tokio::runtime::Runtime>,
    core: Option<Core>,
    /// Node mode (peers named by `seeds`): see `region_link_nodes`.
    nodes: Option<crate::region_link_nodes::NodesCore>,
    thread_priority: crate::sched::ThreadPriority,
}

/// What the replication loop owns.
struct Core {
    control: Arc<Control>,
    transport: QuicTransport,
    link: RegionLink,
    /// Test faults per configured peer region: (name, one-way delay ms, drop rate).
    faults: Vec<(String, u64, f64)>,
    gc_interval_ms: u64,
    flush_interval_ms: u64,
    /// This region's name and id (a joining region's id must not clash with them).
    region: String,
    region_id: u16,
    /// `[replication] compression`: LZ4 for large frames.
    compress: bool,
}

/// One peer region as the region-mode loop holds it (configured, or joined at run time).
struct LoopPeer {
    pc: Arc<PeerControl>,
    id: RegionId,
    delay_ms: u64,
    drop_rate: f64,
    /// Delayed outgoing frames (constant delay: FIFO).
    delayed: VecDeque<(u64, Bytes)>,
    /// `deltas_acked` at the last rate sample.
    acked_sample: u64,
    /// The link's state for it at the last publish (transitions are logged).
    state: u8,
}

fn read_pem(
    rc: &ReplicationConfig,
    config: &Config,
    p: &std::path::Path,
) -> Result<String, String> {
    let path = rc.resolve(config.config_dir.as_deref(), p);
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Replicator {
    /// Build the replication runtime and bind the QUIC endpoint on it. `None` when the
    /// config has no `[replication]` peers.
    pub fn start(config: &Config) -> Result<Option<Replicator>, String> {
        let Some(rc) = config.replication.as_ref().filter(|r| !r.peers.is_empty()) else {
            return Ok(None);
        };
        let bind: SocketAddr = rc
            .listen
            .parse()
            .map_err(|e| format!("replication listen {}: {e}", rc.listen))?;
        let node_mode = rc.node_mode();
        let mut peers = Vec::new();
        for p in rc.peers.iter().filter(|_| !node_mode) {
            peers.push(PeerConfig {
                region: p.region.clone(),
                addr: p
                    .addr
                    .parse()
                    .map_err(|e| format!("peer {} addr {}: {e}", p.region, p.addr))?,
            });
        }
        let mut qc = QuicConfig::new(
            config.region.clone(),
            bind,
            read_pem(rc, config, &rc.ca_cert)?,
            read_pem(rc, config, &rc.cert)?,
            read_pem(rc, config, &rc.key)?,
            peers,
        );
        // Node mode: the peer regions' nodes are added as they are discovered.
        qc.accept_regions = rc.peers.iter().map(|p| p.region.clone()).collect();
        // Regions joining at run time (certificates from the deployment CA).
        qc.accept_new_regions = rc.accept_new_regions;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("replication runtime: {e}"))?;
        let transport = {
            let _in_rt = rt.enter();
            QuicTransport::start(qc)
        };
        let transport = match transport {
            Ok(t) => t,
            Err(e) => {
                // Never block (drop) a runtime inside the caller's async context.
                rt.shutdown_background();
                return Err(format!("replication: {e}"));
            }
        };
        let link_cfg = LinkConfig {
            max_batch_deltas: rc.batch_max_deltas.max(1),
            max_batch_bytes: rc.batch_max_bytes.max(1024),
            resend_timeout_ms: rc.resend_timeout_ms.max(1),
            max_log_deltas: rc.log_max_deltas.max(1),
            anti_entropy_interval_ms: rc.anti_entropy_interval_ms.max(10),
            max_clock_offset_ms: config.max_clock_offset_ms,
            peer_gc_bound_ms: rc.peer_gc_bound_ms,
            ..LinkConfig::default()
        };
        let ids: Vec<RegionId> = rc.peers.iter().map(|p| RegionId(p.region_id)).collect();
        // An incarnation id, compared by peers for equality only: random, never the wall
        // clock (a restart after a backward step must not look stale). The top bit keeps it
        // off 1, which would declare the region's first incarnation ever (a restart cannot
        // know it is not one).
        let incarnation = rand::random::<u64>() | 1 << 63;
        let link = RegionLink::new(
            RegionId(config.region_id),
            &ids,
            incarnation,
            link_cfg.clone(),
        );
        let control = Arc::new(Control {
            peers: parking_lot::RwLock::new(
                rc.peers
                    .iter()
                    .map(|p| Arc::new(PeerControl::new(&p.region, p.region_id, false)))
                    .collect(),
            ),
            peer_gc_bound_ms: AtomicU64::new(rc.peer_gc_bound_ms),
            accept_new_regions: AtomicBool::new(rc.accept_new_regions),
            max_clock_offset_ms: AtomicU64::new(config.max_clock_offset_ms),
            incarnation: AtomicU64::new(incarnation),
            hold_until_ms: AtomicU64::new(match config.restart_write_hold_ms {
                0 => 0,
                hold => now_ms().saturating_add(hold),
            }),
            ..Control::default()
        });
        if node_mode {
            let mut seeded = Vec::new();
            for p in &rc.peers {
                let mut seeds = Vec::new();
                for s in &p.seeds {
                    seeds.push(
                        s.parse()
                            .map_err(|e| format!("peer {} seed {s}: {e}", p.region))?,
                    );
                }
                seeded.push(crate::region_link_nodes::PeerRegion {
                    name: p.region.clone(),
                    id: RegionId(p.region_id),
                    seeds,
                    delay_ms: p.delay_ms,
                    drop_rate: p.drop_rate,
                });
            }
            let links = meridian_replication::proto::node_links::NodeLinks::new(
                RegionId(config.region_id),
                &ids,
                incarnation,
                link_cfg,
            );
            return Ok(Some(Replicator {
                control: control.clone(),
                rt: Some(rt),
                core: None,
                nodes: Some(crate::region_link_nodes::NodesCore {
                    control,
                    transport,
                    links,
                    region: config.region.clone(),
                    region_id: config.region_id,
                    peers: seeded,
                    single_addr: rc.listen.clone(),
                    flush_interval_ms: rc.flush_interval_ms,
                    gc_interval_ms: rc.gc_interval_ms.max(10),
                    compress: rc.compression.is_on(),
                }),
                thread_priority: rc.thread_priority,
            }));
        }
        Ok(Some(Replicator {
            control: control.clone(),
            rt: Some(rt),
            nodes: None,
            thread_priority: rc.thread_priority,
            core: Some(Core {
                control,
                transport,
                link,
                faults: rc
                    .peers
                    .iter()
                    .map(|p| (p.region.clone(), p.delay_ms, p.drop_rate))
                    .collect(),
                gc_interval_ms: rc.gc_interval_ms.max(10),
                flush_interval_ms: rc.flush_interval_ms,
                region: config.region.clone(),
                region_id: config.region_id,
                compress: rc.compression.is_on(),
            }),
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match (&self.core, &self.nodes) {
            (Some(core), _) => core.transport.local_addr(),
            (_, Some(nodes)) => nodes.transport.local_addr(),
            _ => Err(std::io::Error::other("replication already running")),
        }
    }

    /// Run replication on its own thread (`meridian-repl`) with its own current-thread
    /// runtime: QUIC, TLS, encoding and merging never run on a client I/O thread, and the
    /// client threads only pay a shard lock and, at most, one wake-up per burst of writes.
    pub fn spawn(
        mut self,
        store: Arc<Store>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> std::io::Result<()> {
        let Some(rt) = self.rt.take() else {
            return Err(std::io::Error::other("replication already running"));
        };
        let priority = self.thread_priority;
        let (core, nodes) = (self.core.take(), self.nodes.take());
        std::thread::Builder::new()
            .name("meridian-repl".into())
            .spawn(move || {
                match (core, nodes) {
                    (Some(core), _) => {
                        let governor = crate::sched::Governor::start(priority);
                        rt.block_on(core.run(store, governor))
                    }
                    // Node mode runs at normal priority (no starvation governor yet).
                    (None, Some(nodes)) => rt.block_on(nodes.run(store, cluster)),
                    (None, None) => {}
                }
            })?;
        Ok(())
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        // Not spawned (startup failed later): stop the transport, then the runtime without
        // blocking, since this may run inside the main runtime.
        drop(self.core.take());
        drop(self.nodes.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Counters sampled at the previous publish, to report per-second rates.
struct RateSample {
    at_ms: u64,
    applied: u64,
}

/// Why a region that connects at run time is refused (`None`: it may join).
pub(crate) fn join_refusal(
    control: &Control,
    own: (&str, u16),
    name: &str,
    id: RegionId,
) -> Option<(meridian_replication::codec::RefuseReason, String)> {
    use meridian_replication::codec::RefuseReason;
    if !control.accept_new_regions.load(Relaxed) {
        return Some((
            RefuseReason::NotAccepted,
            "accept-new-regions is off".into(),
        ));
    }
    let peers = control.peers();
    if id.0 == own.1 {
        return Some((
            RefuseReason::RegionIdClash,
            format!("region-id {} is this region's ({})", id.0, own.0),
        ));
    }
    if let Some(p) = peers
        .iter()
        .find(|p| p.region_id == id.0 && p.region != name)
    {
        return Some((
            RefuseReason::RegionIdClash,
            format!("region-id {} is region {}'s", id.0, p.region),
        ));
    }
    if usize::from(id.0) >= crate::config::MAX_REGIONS
        || peers.len() + 2 > crate::config::MAX_REGIONS
    {
        return Some((
            RefuseReason::NotAccepted,
            format!(
                "at most {} regions (region ids 0..{}) are supported",
                crate::config::MAX_REGIONS,
                crate::config::MAX_REGIONS - 1
            ),
        ));
    }
    None
}

/// Tell a region that connected why it is refused, and let its connection go.
pub(crate) fn refuse_region(
    transport: &QuicTransport,
    control: &Control,
    name: &str,
    reason: meridian_replication::codec::RefuseReason,
    why: &str,
) {
    use meridian_replication::codec::{Frame, Refused};
    control.regions_refused.fetch_add(1, Relaxed);
    tracing::warn!(region = %name, %why, "region refused");
    let mut buf = Vec::new();
    let frame = Frame::Refused(Refused {
        epoch: 0,
        reason,
        sender: 0,
    });
    if encode_into(&frame, &mut buf).is_ok() {
        let _ = transport.send(name, Bytes::from(buf));
    }
}

impl Core {
    /// The replication loop (never returns while the server runs).
    async fn run(self, store: Arc<Store>, mut governor: crate::sched::Governor) {
        let Core {
            control,
            transport,
            mut link,
            faults,
            gc_interval_ms,
            flush_interval_ms,
            region,
            region_id,
            compress,
        } = self;
        let mut enc = FrameEncoder::new(compress);
        let mut peers: Vec<LoopPeer> = control
            .peers()
            .into_iter()
            .map(|pc| {
                let (delay_ms, drop_rate) = faults
                    .iter()
                    .find(|f| f.0 == pc.region)
                    .map_or((0, 0.0), |f| (f.1, f.2));
                LoopPeer {
                    id: RegionId(pc.region_id),
                    pc,
                    delay_ms,
                    drop_rate,
                    delayed: VecDeque::new(),
                    acked_sample: 0,
                    state: PEER_ACTIVE,
                }
            })
            .collect();
        // Regions forgotten here: their frames still reach the link (which refuses their
        // incarnation), known by name.
        let mut forgotten: Vec<(String, RegionId)> = Vec::new();
        // Frames from regions not known here that are not a `Hello`: logged once per 10 s.
        let mut unknown_logged = 0u64;
        // The drop rate's generator.
        let mut rng: rand::rngs::SmallRng = rand::SeedableRng::from_os_rng();
        // GC visits one shard every `gc_interval_ms / SHARDS`: a pass over every key of the
        // node at once held up frames (and so convergence) for milliseconds every interval.
        let gc_step_ms = (gc_interval_ms / SHARDS as u64).max(1);
        let mut gc_shard = 0usize;
        let mut next_gc = now_ms() + gc_step_ms;
        let mut cap = ReplicaCap::new();
        let mut next_cap = 0;
        let mut next_stats = 0u64;
        let mut rates = RateSample {
            at_ms: now_ms(),
            applied: 0,
        };
        let mut pending: Vec<Delta> = Vec::new();
        let mut lost: Option<(Hlc, Vec<u16>)> = None;
        let mut buf = Vec::new();
        let mut timer_due = true;
        // When the local deltas that woke us get drained: right away if the last drain is
        // `flush_interval_ms` old, else that long after it (sparse writes ship at once,
        // a stream of writes ships once per interval).
        let mut flush_at: Option<u64> = Some(0);
        let mut last_flush = 0u64;
        // When the loop last went to sleep, and the deadline it slept until: a loop that runs
        // well after it was due was starved of CPU (see `sched::Governor`).
        let (mut slept_at, mut due) = (u64::MAX, u64::MAX);
        let mut last_now = 0u64;
        // The restart handshake completed (`handshake_completed` ran).
        let mut handshake_seen = false;
        // Refusals already logged, and when the next warning may go out (one per 10 s).
        let mut refused_logged = (0u64, 0u64);
        loop {
            let now = now_ms();
            if now < last_now {
                // The wall clock stepped back (the link's timers are clamped the same way in
                // `handle_timeout`): no deadline may now wait longer than its own span.
                next_gc = next_gc.min(now + gc_step_ms);
                next_stats = next_stats.min(now);
                last_flush = last_flush.min(now);
                if let Some(t) = flush_at.as_mut() {
                    *t = (*t).min(now);
                }
                for p in peers.iter_mut() {
                    for (at, _) in p.delayed.iter_mut() {
                        *at = (*at).min(now + p.delay_ms);
                    }
                }
                timer_due = true;
            }
            last_now = now;
            governor.observe(now, now.saturating_sub(due.max(slept_at)));
            // Local deltas. The link ships them in HLC order (its frontier for our own
            // writes relies on it), but shards fill their logs concurrently. A write is
            // stamped and logged under its shard lock, so once every shard was locked after
            // reading `horizon`, every delta stamped at or below it is drained: ship those,
            // sorted, and keep the younger ones for the next round.
            let flush = flush_at.is_some_and(|t| now >= t);
            let horizon = if flush {
                flush_at = None;
                last_flush = now;
                drain_local(&store, now, &mut pending, &mut lost)
            } else {
                Hlc::ZERO
            };
            let ready = pending.partition_point(|d| d.stamp.hlc <= horizon);
            for d in pending.drain(..ready) {
                link.enqueue(now, d);
            }
            if pending.capacity() > 4096 && pending.len() < pending.capacity() / 4 {
                pending.shrink_to((pending.len() * 2).max(4096));
            }
            if let Some((below, slots)) = lost.take() {
                // Anti-entropy with every peer, and GC held back until those slots are
                // repaired.
                link.note_local_loss(below, slots);
                // The lost deltas may be younger than this drain's horizon: drain again
                // soon, so a horizon past them tells the link every older delta is enqueued
                // (even if no write follows).
                flush_at.get_or_insert(now + flush_interval_ms.max(1));
            }
            link.note_local_hlc(horizon);
            if now >= next_cap {
                next_cap = now + CAP_STEP_MS;
                let bound = link.peer_gc_bound_ms();
                if let Some(c) = cap.step(store.feed(), now, bound, || link.claim_checkpoint()) {
                    link.set_replica_cap(c);
                }
            }
            if flush && !pending.is_empty() {
                // Younger than this round's horizon: shipped by the next round.
                flush_at = Some(now + flush_interval_ms.max(1));
            }
            if timer_due || now >= next_gc || link.has_anti_entropy_work() {
                if timer_due || now >= next_gc {
                    link.handle_timeout(now);
                }
                let mut shell = ShellStore::new(&store);
                // One bounded step (a slot range); the rest after the next frame or flush.
                link.poll_anti_entropy(now, &mut shell);
                if now >= next_gc {
                    next_gc = now + gc_step_ms;
                    shell.gc_shard = Some(gc_shard);
                    gc_shard = (gc_shard + 1) % SHARDS;
                    link.collect_garbage(&mut shell);
                }
                timer_due = false;
            }
            forget_requested(&control, &transport, &mut link, &mut peers, &mut forgotten);
            ship(
                now,
                &transport,
                &mut link,
                &mut peers,
                (&mut buf, &mut enc),
                &mut rng,
            );
            if now >= next_stats {
                next_stats = now + 100;
                publish(now, &control, &transport, &link, &mut peers, &mut rates);
                let refused = store.stats.refused_not_served.load(Relaxed);
                if refused > refused_logged.0 && now >= refused_logged.1 {
                    tracing::warn!(
                        refused = refused - refused_logged.0,
                        served_slots = store.served.count(),
                        "refused deltas/entries from other regions for slots this node does not serve"
                    );
                    refused_logged = (refused, now + 10_000);
                }
            }
            let mut wake = link
                .poll_timeout()
                .unwrap_or(now + 1000)
                .min(next_gc)
                .min(next_stats);
            for p in &peers {
                if let Some((due, _)) = p.delayed.front() {
                    wake = wake.min(*due);
                }
            }
            // Due local deltas, or anti-entropy steps left: go round again at once (after
            // any frame that is already waiting).
            let go_on = flush_at.is_some_and(|t| t <= now) || link.has_anti_entropy_work();
            if let Some(t) = flush_at {
                wake = wake.min(t);
            }
            let sleep = Duration::from_millis(wake.saturating_sub(now).max(1));
            slept_at = now_ms();
            due = now + sleep.as_millis() as u64;
            tokio::select! {
                biased;
                got = transport.recv() => {
                    // Handle the frames that are already waiting (up to a bound) before the
                    // timers run again: after the thread was starved of CPU for a while, the
                    // acks queued meanwhile must count as progress before a resend timeout
                    // is judged (it resent a whole window of deltas the peer had acked).
                    // Every frame taken from the transport is handled here: the burst
                    // bound is checked before the next one is taken, never after (taking
                    // one more and leaving the loop lost it: a batch then came again only
                    // after the resend timeout, with everything after it).
                    let mut next = got;
                    let mut handled = 0;
                    loop {
                        let Some((from, frame)) = next else { return };
                        handled += 1;
                        if !peers.iter().any(|p| p.pc.region == from) {
                            let us = (region.as_str(), region_id);
                            let stranger = Stranger { from: &from, frame: &frame };
                            stranger.admit(us, &control, &transport, &mut link, &mut peers, &mut forgotten, &mut unknown_logged);
                        }
                        if let Some(i) = peers.iter().position(|p| p.pc.region == from) {
                            let pc = &peers[i].pc;
                            pc.frames_handled.fetch_add(1, Relaxed);
                            if pc.down.load(Relaxed) {
                                pc.frames_dropped.fetch_add(1, Relaxed);
                            } else {
                                let now = now_ms();
                                pc.last_recv_ms.store(now.max(1), Relaxed);
                                // Batches lock each touched shard once; acks and gossip lock
                                // nothing; anti-entropy frames lock one slot's or one key's
                                // shard at a time.
                                let mut shell = ShellStore::new(&store);
                                link.handle_frame(now, RegionId(pc.region_id), frame, &mut shell);
                                store.observe(link.max_seen_hlc());
                                if !handshake_seen && link.handshake_done() {
                                    handshake_seen = true;
                                    handshake_completed(&control, &store, &mut link);
                                }
                            }
                        }
                        if handled >= RECV_BURST {
                            break;
                        }
                        match ready_now(transport.recv()) {
                            Some(got) => next = got,
                            None => break,
                        }
                    }
                    // Answers (acks, anti-entropy) may be due right away.
                    timer_due = true;
                    // The link gossips its frontier only after a drain that follows what it
                    // merged (`RegionLink::note_drained`, GC's safety): drain soon, even with
                    // no local write.
                    flush_at.get_or_insert(now_ms().max(last_flush + flush_interval_ms));
                }
                _ = store.stats.delta_notify.notified() => {
                    flush_at.get_or_insert(now_ms().max(last_flush + flush_interval_ms));
                }
                _ = control.request_notify.notified() => { timer_due = true; }
                _ = std::future::ready(()), if go_on => {}
                _ = tokio::time::sleep(sleep) => { timer_due = true; }
            }
        }
    }
}

/// `MERIDIAN REGION FORGET`: the peers the requests name leave the loop, the link, the
/// transport and the control (their frames still reach the link, which refuses their
/// incarnation: `forgotten`).
fn forget_requested(
    control: &Control,
    transport: &QuicTransport,
    link: &mut RegionLink,
    peers: &mut Vec<LoopPeer>,
    forgotten: &mut Vec<(String, RegionId)>,
) {
    let requests: Vec<ReplRequest> = std::mem::take(&mut *control.requests.lock());
    for req in requests {
        match req {
            ReplRequest::Forget(name) => {
                let Some(i) = peers.iter().position(|p| p.pc.region == name) else {
                    continue;
                };
                let p = peers.remove(i);
                let backlog = link.backlog(p.id);
                link.remove_peer(p.id);
                transport.forget_region(&name);
                control.peers.write().retain(|q| q.region != name);
                forgotten.retain(|(n, _)| *n != name);
                forgotten.push((name.clone(), p.id));
                control.regions_forgotten.fetch_add(1, Relaxed);
                tracing::warn!(
                    region = %name,
                    region_id = p.id.0,
                    backlog,
                    "region forgotten (MERIDIAN REGION FORGET): its link, log and \
                     connections are gone, GC no longer waits for it; if it comes \
                     back, its incarnation is refused until it restarts empty"
                );
            }
        }
    }
}

/// Send what the link has to send (`poll_transmit`), through a peer's injected faults
/// (drop rate, delay), then the delayed frames now due. A frame that cannot go (link cut,
/// not connected, queue full) is counted dropped: the link resends unacknowledged deltas.
fn ship(
    now: u64,
    transport: &QuicTransport,
    link: &mut RegionLink,
    peers: &mut [LoopPeer],
    (buf, enc): (&mut Vec<u8>, &mut FrameEncoder),
    rng: &mut rand::rngs::SmallRng,
) {
    while let Some((peer, frame)) = link.poll_transmit(now) {
        let Some(i) = peers.iter().position(|p| p.id == peer) else {
            continue;
        };
        let lp = &mut peers[i];
        let pc = &lp.pc;
        let (delay, drop_rate) = (lp.delay_ms, lp.drop_rate);
        if pc.down.load(Relaxed) || (drop_rate > 0.0 && rand::Rng::random::<f64>(rng) < drop_rate) {
            pc.frames_dropped.fetch_add(1, Relaxed);
            continue;
        }
        buf.clear();
        let size = match enc.encode_into(&frame, buf) {
            Ok(size) => size,
            Err(e) => {
                // Writes are bounded so that no key's delta or state passes a frame
                // (`Runtime::max_entry_bytes`); merged state may still grow past it.
                tracing::error!(error = %e, "cannot encode replication frame");
                continue;
            }
        };
        if frame.is_anti_entropy() {
            pc.ae_bytes_sent.fetch_add(size as u64, Relaxed);
        }
        let bytes = Bytes::copy_from_slice(buf);
        if delay > 0 {
            lp.delayed.push_back((now + delay, bytes));
        } else if transport.send(&pc.region, bytes).is_err() {
            pc.frames_dropped.fetch_add(1, Relaxed);
        }
    }
    for p in peers.iter_mut() {
        while p.delayed.front().is_some_and(|(due, _)| *due <= now) {
            let (_, bytes) = p.delayed.pop_front().expect("front checked");
            let pc = &p.pc;
            if pc.down.load(Relaxed) || transport.send(&pc.region, bytes).is_err() {
                pc.frames_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// A frame from a region not among the peers.
struct Stranger<'a> {
    from: &'a str,
    frame: &'a meridian_replication::Frame,
}

impl Stranger<'_> {
    /// A forgotten region (its frames go on to the link, which refuses its incarnation)
    /// or one joining (its `Hello` names its id): admitted as a peer unless
    /// [`join_refusal`] says otherwise, then refused and forgotten by the transport. Frames
    /// of any other region are dropped (logged once per 10 s, `unknown_logged`).
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        us: (&str, u16),
        control: &Control,
        transport: &QuicTransport,
        link: &mut RegionLink,
        peers: &mut Vec<LoopPeer>,
        forgotten: &mut Vec<(String, RegionId)>,
        unknown_logged: &mut u64,
    ) {
        let from = self.from;
        let id = match (self.frame, forgotten.iter().find(|f| f.0 == from)) {
            (_, Some(&(_, id))) => Some(id),
            (meridian_replication::Frame::Hello(h), None) => Some(h.region),
            _ => None,
        };
        let Some(id) = id else {
            let now = now_ms();
            if now >= *unknown_logged {
                *unknown_logged = now + 10_000;
                tracing::debug!(region = %from, "frame from a region not (yet) a peer dropped: it joins by its Hello");
            }
            return;
        };
        if let Some((reason, why)) = join_refusal(control, us, from, id) {
            refuse_region(transport, control, from, reason, &why);
            transport.forget_region(from);
            return;
        }
        forgotten.retain(|f| f.0 != from);
        link.add_peer(id);
        let pc = Arc::new(PeerControl::new(from, id.0, true));
        control.peers.write().push(pc.clone());
        control.regions_joined.fetch_add(1, Relaxed);
        tracing::info!(region = %from, region_id = id.0, "region joined: added as a peer (it bootstraps by anti-entropy; GC waits for it from now on)");
        peers.push(LoopPeer {
            pc,
            id,
            delay_ms: 0,
            drop_rate: 0.0,
            delayed: VecDeque::new(),
            acked_sample: 0,
            state: PEER_ACTIVE,
        });
    }
}

/// One drain of the shards' delta logs (both shells' loops): returns the horizon — the
/// store clock after it observed the wall clock `now_ms`, so every write stamped at or
/// below it is in `pending` (sorted by stamp; younger ones wait for the next drain), and an
/// idle region's own frontier keeps advancing, past stamps of its previous life too.
/// Deltas a full log dropped are added to `lost` (lowest stamp, slots), taken under the
/// same shard lock, so any lost delta at or below the horizon is reported before
/// `note_local_hlc` passes it.
pub(crate) fn drain_local(
    store: &Store,
    now_ms: u64,
    pending: &mut Vec<Delta>,
    lost: &mut Option<(Hlc, Vec<u16>)>,
) -> Hlc {
    store.arm_delta_wakeup();
    store.observe(Hlc::from_parts(now_ms, 0));
    let horizon = store.last_hlc();
    for i in 0..SHARDS {
        let mut shard = store.shard(i);
        shard.drain_log_into(pending);
        if let Some((below, slots)) = shard.take_lost() {
            let l = lost.get_or_insert((below, Vec::new()));
            l.0 = l.0.min(below);
            l.1.extend(slots);
        }
    }
    pending.sort_by_key(|d| d.stamp.hlc);
    horizon
}

/// The inter-region links claim only what this node's in-region replicas hold too
/// ([`RegionLink::set_replica_cap`]: else a failover to a replica a removal had not
/// reached would bring back what it removed, once peer regions collected its tombstone).
/// Each step records a checkpoint of what the links would claim with the replica stream's
/// offset at that moment (taken after the merges and drains it reflects, whose changes the
/// feed numbered already); a checkpoint becomes the cap once every replica that could be
/// promoted acknowledged its offset ([`ReplFeed::replicas_hold`]). No replica: no cap.
pub(crate) struct ReplicaCap<C> {
    /// (feed offset, checkpoint), oldest first.
    pending: VecDeque<(u64, C)>,
    capped: bool,
}

/// How often the loops take a checkpoint (the replicas ack every 100 ms or sooner).
pub(crate) const CAP_STEP_MS: u64 = 20;

/// Checkpoints waiting for the replicas' acks (the newest is replaced beyond it).
const CAP_PENDING: usize = 64;

impl<C: Default> ReplicaCap<C> {
    pub(crate) fn new() -> Self {
        ReplicaCap {
            pending: VecDeque::new(),
            capped: false,
        }
    }

    /// One step with the feed's state (see [`ReplicaCap::step_with`]).
    pub(crate) fn step(
        &mut self,
        feed: &ReplFeed,
        now_ms: u64,
        hold_ms: u64,
        checkpoint: impl FnOnce() -> C,
    ) -> Option<Option<C>> {
        // Acks first: an offset read after them is at or above what they acknowledged.
        let held = feed.replicas_hold(now_ms, hold_ms);
        self.step_with(held, feed.offset(), checkpoint)
    }

    /// `held`: the offset every replica that could be promoted acknowledged (`None`: no
    /// replica); `offset`: the feed's offset now, read after the checkpoint's state was
    /// fed. `Some(cap)` when the links' cap is to change (`None` inside: lifted).
    pub(crate) fn step_with(
        &mut self,
        held: Option<u64>,
        offset: u64,
        checkpoint: impl FnOnce() -> C,
    ) -> Option<Option<C>> {
        let Some(held) = held else {
            self.pending.clear();
            return std::mem::take(&mut self.capped).then_some(None);
        };
        let cp = checkpoint();
        match self.pending.back_mut() {
            // Nothing replicated since: what it reflects is at that offset too.
            Some(b) if b.0 == offset => b.1 = cp,
            _ => {
                if self.pending.len() >= CAP_PENDING {
                    self.pending.pop_back();
                }
                self.pending.push_back((offset, cp));
            }
        }
        let mut newest = None;
        while self.pending.front().is_some_and(|(o, _)| *o <= held) {
            newest = self.pending.pop_front().map(|(_, c)| c);
        }
        match newest {
            Some(c) => {
                self.capped = true;
                Some(Some(c))
            }
            // A replica appeared: nothing is known to be held until it acknowledges.
            None if !self.capped => {
                self.capped = true;
                Some(Some(C::default()))
            }
            None => None,
        }
    }
}

/// Every peer answered the restart handshake (called once, right after the frame that
/// completed it, whose `your_max` the store clock has already observed: so no write let
/// through by `handshake_done` can be stamped below a stamp of this region's earlier life).
/// If no peer holds any stamp of ours, this is a first start: the slots `Store::new` marked
/// lossy are cleared (those with a real loss since stay lossy). Otherwise they stay lossy
/// (partial deltas from peers must not rebuild keys this region lost with its earlier life)
/// until anti-entropy, asked for now with every peer, found each equal with every peer.
fn handshake_completed(control: &Control, store: &Store, link: &mut RegionLink) {
    if link.restarted() {
        let peers: Vec<RegionId> = link.peers().collect();
        for p in peers {
            link.request_anti_entropy(p);
        }
        tracing::info!("restart handshake done: restarted, slots lossy until repaired");
    } else {
        store.clear_start_losses();
        tracing::info!("restart handshake done: first start");
    }
    control.handshake_done.store(true, Release);
}

/// Log a peer's GC state change (`peer-gc-bound-ms`): expelled, refused, readmitted.
pub(crate) fn log_gc_state(
    region: &str,
    before: u8,
    after: u8,
    status: &meridian_replication::PeerStatus,
) {
    if before == after {
        return;
    }
    match after {
        PEER_EXPELLED => tracing::error!(
            peer = %region,
            silent_ms = status.silent_ms,
            incarnation = ?status.epoch.map(|e| format!("{e:016x}")),
            "peer region expelled from GC: nothing heard from it past peer-gc-bound-ms (or \
             it was forgotten). Deleted-state metadata is collected without it, so its \
             current incarnation is refused if it comes back: restart it empty to rejoin \
             (what it wrote that never reached a peer is lost)"
        ),
        PEER_REFUSED => tracing::error!(
            peer = %region,
            "peer region refuses this region's incarnation: it expelled this region from \
             its GC (nothing heard past its peer-gc-bound-ms, or forgotten). Nothing is \
             exchanged with it and this region's GC waits. Restart this region empty to \
             rejoin (it then bootstraps from its peers); what it wrote that never reached a \
             peer is lost"
        ),
        _ => tracing::info!(
            peer = %region,
            "peer region readmitted (a new incarnation): it bootstraps by anti-entropy"
        ),
    }
}

/// Frames handled in one turn of the replication loop when they are already waiting.
const RECV_BURST: usize = 32;

/// The future's output if it is ready at once (polled once, without a wake-up).
pub(crate) fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

fn publish(
    now: u64,
    control: &Control,
    transport: &QuicTransport,
    link: &RegionLink,
    peers: &mut [LoopPeer],
    rates: &mut RateSample,
) {
    let st = link.stats();
    control.deltas_enqueued.store(st.deltas_enqueued, Relaxed);
    control.deltas_sent.store(st.deltas_sent, Relaxed);
    control.deltas_resent.store(st.deltas_resent, Relaxed);
    control.deltas_forwarded.store(st.deltas_forwarded, Relaxed);
    control.deltas_applied.store(st.deltas_applied, Relaxed);
    control.logs_dropped.store(st.logs_dropped, Relaxed);
    control.deltas_abandoned.store(st.deltas_abandoned, Relaxed);
    control.gc_dropped.store(st.gc_dropped, Relaxed);
    control.gc_runs.store(st.gc_runs, Relaxed);
    control
        .deltas_clock_held
        .store(st.deltas_clock_held, Relaxed);
    control.local_losses.store(st.local_losses, Relaxed);
    control
        .local_gap_slots
        .store(link.local_gap_slots() as u64, Relaxed);
    control.peers_expelled.store(st.peers_expelled, Relaxed);
    control.frames_refused.store(st.frames_refused, Relaxed);
    control
        .refusals_received
        .store(st.refusals_received, Relaxed);
    let ts = transport.stats();
    control
        .handshake_failures
        .store(ts.handshake_failures, Relaxed);
    control
        .identity_rejections
        .store(ts.identity_rejections, Relaxed);
    let ae = link.anti_entropy_stats();
    control.ae_rounds.store(ae.rounds_completed, Relaxed);
    control.ae_rounds_clean.store(ae.rounds_clean, Relaxed);
    control
        .ae_entries_received
        .store(ae.entries_received, Relaxed);
    control
        .ae_entries_shipped
        .store(ae.entries_shipped, Relaxed);
    control
        .entries_clock_held
        .store(ae.entries_clock_held, Relaxed);
    // Rates over windows of at least a second.
    let elapsed_ms = now.saturating_sub(rates.at_ms);
    let sample = elapsed_ms >= 1000;
    let per_sec = |from: u64, to: u64| to.saturating_sub(from) * 1000 / elapsed_ms.max(1);
    if sample {
        control
            .deltas_applied_per_sec
            .store(per_sec(rates.applied, st.deltas_applied), Relaxed);
        rates.applied = st.deltas_applied;
    }
    let states: std::collections::HashMap<
        String,
        meridian_replication::transport::quic::PeerConnStats,
    > = transport.peer_states().into_iter().collect();
    for lp in peers.iter_mut() {
        let pc = &lp.pc;
        if let Some(status) = link.peer_status(now, lp.id) {
            pc.publish_gc_state(&status);
            let state = pc.gc_state.load(Relaxed);
            log_gc_state(&pc.region, lp.state, state, &status);
            lp.state = state;
        }
        let Some(ps) = states.get(&pc.region) else {
            continue;
        };
        pc.connected.store(ps.connected, Relaxed);
        pc.bytes_sent.store(ps.bytes_sent, Relaxed);
        pc.bytes_received.store(ps.bytes_received, Relaxed);
        pc.frames_sent.store(ps.frames_sent, Relaxed);
        pc.frames_received.store(ps.frames_received, Relaxed);
        if let Some(status) = link.peer_status(now, RegionId(pc.region_id)) {
            pc.backlog.store(status.backlog_deltas as u64, Relaxed);
            pc.lag_ms.store(status.lag_ms, Relaxed);
            pc.last_ack_ms.store(status.last_ack_ms, Relaxed);
            pc.deltas_acked.store(status.deltas_acked, Relaxed);
            pc.clock_held.store(status.clock_held, Relaxed);
            if sample {
                pc.deltas_per_sec
                    .store(per_sec(lp.acked_sample, status.deltas_acked), Relaxed);
                lp.acked_sample = status.deltas_acked;
            }
        }
    }
    if sample {
        rates.at_ms = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Runtime;
    use meridian_crdt::{HlcClock, Keyspace, KeyspaceConfig};

    fn store() -> Store {
        let runtime = Runtime::for_tests(0);
        Store::new(RegionId(0), 7, 64, runtime, true)
    }

    /// The links claim a checkpoint only once the replicas acknowledged the offset it was
    /// taken at; with no replica, no cap; a replica that appears caps at nothing first.
    #[test]
    fn replica_cap_follows_the_replicas_acks() {
        let mut cap: ReplicaCap<u64> = ReplicaCap::new();
        assert_eq!(cap.step_with(None, 10, || 1), None, "no replica, no cap");
        assert_eq!(
            cap.step_with(Some(5), 10, || 2),
            Some(Some(0)),
            "nothing held yet"
        );
        assert_eq!(cap.step_with(Some(5), 12, || 3), None);
        assert_eq!(cap.step_with(Some(10), 15, || 4), Some(Some(2)));
        // Offset unchanged: the newer checkpoint stands for the same offset.
        assert_eq!(cap.step_with(Some(10), 15, || 5), None);
        assert_eq!(cap.step_with(Some(15), 15, || 6), Some(Some(6)));
        assert_eq!(
            cap.step_with(None, 15, || 7),
            Some(None),
            "replicas gone: lifted"
        );
        assert_eq!(cap.step_with(None, 15, || 8), None);
    }

    /// A replica that left still holds the cap back within the bound, not after; one that
    /// comes back counts from its new sync.
    #[test]
    fn replicas_hold_counts_departed_replicas_within_the_bound() {
        let feed = ReplFeed::new(1 << 16);
        assert_eq!(feed.replicas_hold(0, 100), None);
        feed.ack_join(1, "r:1".into(), 7);
        feed.ack_join(2, "r:2".into(), 9);
        feed.ack_update(2, 20);
        feed.ack_update(1, 12);
        assert_eq!(feed.replicas_hold(0, 100), Some(12));
        feed.ack_leave(1, 1_000);
        feed.ack_update(2, 30);
        assert_eq!(
            feed.replicas_hold(1_050, 100),
            Some(12),
            "left, within the bound"
        );
        assert_eq!(
            feed.replicas_hold(1_101, 100),
            Some(30),
            "left past the bound"
        );
        feed.ack_leave(2, 2_000);
        feed.ack_join(3, "r:2".into(), 25);
        assert_eq!(
            feed.replicas_hold(2_001, 100),
            Some(25),
            "back: its new sync counts"
        );
        feed.ack_leave(3, 3_000);
        assert_eq!(feed.replicas_hold(3_200, 100), None);
    }

    /// Deltas of keys written in another region, one per key.
    fn peer_deltas(keys: &[&str]) -> Vec<Delta> {
        let mut ks = Keyspace::new(KeyspaceConfig {
            region: RegionId(1),
            retain_tombstones: true,
            seed: 1,
        });
        let mut clock = HlcClock::new(RegionId(1));
        for (i, k) in keys.iter().enumerate() {
            let st = clock.now(1_000 + i as u64);
            ks.write(k.as_bytes(), st, 1_000, |w| {
                w.set_str(Bytes::from_static(b"v"), false);
            });
        }
        ks.drain_deltas().collect()
    }

    /// A node stores nothing of a slot it does not serve, whatever a peer sends it (deltas
    /// one by one or batched, anti-entropy entries), counts each refusal, and shows such a
    /// slot to anti-entropy as empty.
    #[test]
    fn a_node_refuses_what_peers_send_for_slots_it_does_not_serve() {
        let store = store();
        let mine = meridian_crdt::key_slot(b"mine");
        store.served.publish(|s| s == mine);
        let deltas = peer_deltas(&["mine", "other1", "other2"]);
        let mut shell = ShellStore::new(&store);
        shell.apply_deltas(&deltas);
        assert_eq!(store.stats.refused_not_served.load(Relaxed), 2);
        for d in &deltas {
            let held = shell.entry(&d.key).is_some();
            assert_eq!(held, d.slot == mine, "{:?}", d.key);
            assert_eq!(store.shard(shard_of(d.slot)).ks.slot_len(d.slot) > 0, held);
        }
        let other = deltas
            .iter()
            .find(|d| d.slot != mine)
            .expect("a foreign key");
        assert_eq!(shell.apply_delta(other), Applied::Unchanged);
        assert_eq!(
            shell.merge_full(&other.key, &other.state),
            Applied::Unchanged
        );
        assert_eq!(store.stats.refused_not_served.load(Relaxed), 4);
        assert_eq!(store.shard(shard_of(other.slot)).ks.slot_len(other.slot), 0);
        // Anti-entropy sees only served slots.
        assert_ne!(shell.slot_digest(mine), 0);
        store.served.publish(|_| false);
        assert_eq!(shell.slot_digest(mine), 0);
        let mut seen = 0;
        shell.for_each_entry(mine, &mut |_, _| seen += 1);
        shell.for_each_key_digest(mine, &mut |_, _| seen += 1);
        assert_eq!(seen, 0);
        assert!(shell.entry(b"mine").is_none());
    }
    /// A region that connects at run time: accepted unless new regions are refused, its id
    /// is this region's or another peer's, or it is out of range; `MERIDIAN REGION FORGET`
    /// refuses this region and unknown ones with clear errors.
    #[test]
    fn joining_regions_are_checked() {
        use meridian_replication::codec::RefuseReason;
        let control = Control {
            peers: parking_lot::RwLock::new(vec![Arc::new(PeerControl::new("b", 1, false))]),
            accept_new_regions: AtomicBool::new(true),
            ..Control::default()
        };
        let own = ("a", 0);
        assert_eq!(join_refusal(&control, own, "c", RegionId(2)), None);
        let reason = |name, id| join_refusal(&control, own, name, RegionId(id)).map(|r| r.0);
        assert_eq!(reason("c", 0), Some(RefuseReason::RegionIdClash));
        assert_eq!(reason("c", 1), Some(RefuseReason::RegionIdClash));
        assert_eq!(reason("b", 1), None, "b itself (forgotten, coming back)");
        assert_eq!(reason("c", 64), Some(RefuseReason::NotAccepted));
        control.accept_new_regions.store(false, Relaxed);
        assert_eq!(reason("c", 2), Some(RefuseReason::NotAccepted));

        let err = |r: &[u8]| control.forget(r, "a").unwrap_err();
        assert!(err(b"a").contains("is this region"));
        assert!(err(b"zz").contains("unknown region 'zz'"));
        assert!(control.forget(b"b", "a").is_ok());
        assert!(control.peer(b"b").unwrap().forgetting.load(Relaxed));
        assert!(matches!(
            control.requests.lock().as_slice(),
            [ReplRequest::Forget(r)] if r == "b"
        ));
    }
}
