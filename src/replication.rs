//! The replication shell: one task on the main runtime owns the sans-IO [`RegionLink`] and
//! the QUIC transport. It drains the shards' delta logs (woken by `Stats::delta_notify`),
//! merges received frames into the sharded store, drives timers, anti-entropy and GC, and
//! injects the configured test faults (one-way delay, drop rate) and runtime link cuts
//! (`MERIDIAN LINK DOWN|UP <region>`).
//!
//! Client writes never wait on replication: a shard's delta log is bounded; when it
//! overflows the oldest deltas are dropped and the task asks every peer for anti-entropy.

use crate::config::{Config, ReplicationConfig};
use crate::server::now_ms;
use crate::store::{key_shard, shard_of, Shard, Store, SHARDS};
use bytes::Bytes;
use meridian_crdt::{Applied, Delta, Entry, Hlc, RegionId};
use meridian_replication::transport::quic::{PeerConfig, QuicConfig, QuicTransport};
use meridian_replication::{encode_into, LinkConfig, RegionLink, ReplicaStore};
use parking_lot::MutexGuard;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The whole sharded store, locked for one protocol call (all shards, ascending order).
pub struct LockedStore<'a>(pub Vec<MutexGuard<'a, Shard>>);

impl LockedStore<'_> {
    fn slot_shard(&mut self, slot: u16) -> &mut Shard {
        &mut self.0[shard_of(slot)]
    }
}

impl ReplicaStore for LockedStore<'_> {
    fn apply_delta(&mut self, delta: &Delta) -> Applied {
        let s = self.slot_shard(delta.slot);
        let r = s.ks.apply_delta(delta);
        if r == Applied::Changed {
            s.touch_key(&delta.key);
            // The primary's state changed: in-region replicas must see it too.
            s.feed.push_delta(delta);
        }
        r
    }

    fn merge_full(&mut self, key: &[u8], state: &Entry) -> Applied {
        let s = &mut self.0[key_shard(key)];
        let r = s.ks.merge_state(key, true, state);
        if r == Applied::Changed {
            s.touch_key(key);
            s.feed.push_state(key, state);
        }
        r
    }

    fn slot_digest(&mut self, slot: u16) -> u64 {
        self.slot_shard(slot).ks.slot_digest(slot)
    }

    fn for_each_key_digest(&self, slot: u16, visit: &mut dyn FnMut(&Bytes, u64)) {
        ReplicaStore::for_each_key_digest(&self.0[shard_of(slot)].ks, slot, visit)
    }

    fn for_each_entry(&self, slot: u16, visit: &mut dyn FnMut(&Bytes, &Entry)) {
        ReplicaStore::for_each_entry(&self.0[shard_of(slot)].ks, slot, visit)
    }

    fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.0[key_shard(key)].ks.raw_entry(key)
    }

    fn slot_is_lossy(&self, slot: u16) -> bool {
        self.0[shard_of(slot)].ks.slot_is_lossy(slot)
    }

    fn mark_slot_repaired(&mut self, slot: u16) {
        self.slot_shard(slot).ks.mark_slot_repaired(slot)
    }

    fn gc(&mut self, stable: &dyn Fn(RegionId) -> Hlc) -> usize {
        self.0.iter_mut().map(|s| s.ks.gc(&|r| stable(r))).sum()
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
    /// Milliseconds since the last frame received from the peer.
    pub last_recv_ms: AtomicU64,
    pub frames_dropped: AtomicU64,
}

/// What the rest of the server sees of replication.
#[derive(Default)]
pub struct Control {
    pub peers: Vec<PeerControl>,
    pub deltas_enqueued: AtomicU64,
    pub deltas_sent: AtomicU64,
    pub deltas_resent: AtomicU64,
    pub deltas_applied: AtomicU64,
    pub ae_rounds: AtomicU64,
    pub ae_rounds_clean: AtomicU64,
    pub ae_entries_received: AtomicU64,
    pub ae_entries_shipped: AtomicU64,
    pub gc_dropped: AtomicU64,
    /// Incoming replication connections refused in the TLS handshake (unknown CA...).
    pub handshake_failures: AtomicU64,
    /// Incoming connections with a valid certificate for a region not accepted here.
    pub identity_rejections: AtomicU64,
}

impl Control {
    pub fn peer(&self, region: &[u8]) -> Option<&PeerControl> {
        self.peers.iter().find(|p| p.region.as_bytes() == region)
    }

    /// The `INFO crdt` lines about links.
    pub fn info(&self, now: u64, o: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            o,
            "repl_peers:{}\r\nrepl_deltas_enqueued:{}\r\nrepl_deltas_sent:{}\r\nrepl_deltas_resent:{}\r\nrepl_deltas_applied:{}\r\nrepl_ae_rounds:{}\r\nrepl_ae_rounds_clean:{}\r\nrepl_ae_entries_received:{}\r\nrepl_ae_entries_shipped:{}\r\nrepl_gc_dropped:{}\r\nrepl_handshake_failures:{}\r\nrepl_identity_rejections:{}\r\n",
            self.peers.len(),
            self.deltas_enqueued.load(Relaxed),
            self.deltas_sent.load(Relaxed),
            self.deltas_resent.load(Relaxed),
            self.deltas_applied.load(Relaxed),
            self.ae_rounds.load(Relaxed),
            self.ae_rounds_clean.load(Relaxed),
            self.ae_entries_received.load(Relaxed),
            self.ae_entries_shipped.load(Relaxed),
            self.gc_dropped.load(Relaxed),
            self.handshake_failures.load(Relaxed),
            self.identity_rejections.load(Relaxed),
        );
        for p in &self.peers {
            let last = p.last_recv_ms.load(Relaxed);
            let _ = write!(
                o,
                "peer_{}:id={},link={},connected={},bytes_sent={},bytes_received={},frames_sent={},frames_received={},frames_dropped={},backlog_deltas={},last_recv_ms_ago={}\r\n",
                p.region,
                p.region_id,
                if p.down.load(Relaxed) { "down" } else { "up" },
                u8::from(p.connected.load(Relaxed)),
                p.bytes_sent.load(Relaxed),
                p.bytes_received.load(Relaxed),
                p.frames_sent.load(Relaxed),
                p.frames_received.load(Relaxed),
                p.frames_dropped.load(Relaxed),
                p.backlog.load(Relaxed),
                if last == 0 { -1 } else { now.saturating_sub(last) as i64 },
            );
        }
    }
}

/// Started replication: the transport is bound; `run` drives it.
pub struct Replicator {
    pub control: Arc<Control>,
    transport: QuicTransport,
    link: RegionLink,
    faults: Vec<(u64, f64)>,
    gc_interval_ms: u64,
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
    /// Bind the QUIC endpoint (must run inside the tokio runtime). `None` when the config
    /// has no `[replication]` peers.
    pub fn start(config: &Config) -> Result<Option<Replicator>, String> {
        let Some(rc) = config.replication.as_ref().filter(|r| !r.peers.is_empty()) else {
            return Ok(None);
        };
        let bind: SocketAddr = rc
            .listen
            .parse()
            .map_err(|e| format!("replication listen {}: {e}", rc.listen))?;
        let mut peers = Vec::new();
        for p in &rc.peers {
            peers.push(PeerConfig {
                region: p.region.clone(),
                addr: p
                    .addr
                    .parse()
                    .map_err(|e| format!("peer {} addr {}: {e}", p.region, p.addr))?,
            });
        }
        let qc = QuicConfig::new(
            config.region.clone(),
            bind,
            read_pem(rc, config, &rc.ca_cert)?,
            read_pem(rc, config, &rc.cert)?,
            read_pem(rc, config, &rc.key)?,
            peers,
        );
        let transport = QuicTransport::start(qc).map_err(|e| format!("replication: {e}"))?;
        let link_cfg = LinkConfig {
            max_batch_deltas: rc.batch_max_deltas.max(1),
            max_batch_bytes: rc.batch_max_bytes.max(1024),
            resend_timeout_ms: rc.resend_timeout_ms.max(1),
            max_log_deltas: rc.log_max_deltas.max(1),
            anti_entropy_interval_ms: rc.anti_entropy_interval_ms.max(10),
            ..LinkConfig::default()
        };
        let ids: Vec<RegionId> = rc.peers.iter().map(|p| RegionId(p.region_id)).collect();
        // The epoch must grow across restarts: wall-clock milliseconds do.
        let link = RegionLink::new(RegionId(config.region_id), &ids, now_ms().max(1), link_cfg);
        let control = Arc::new(Control {
            peers: rc
                .peers
                .iter()
                .map(|p| PeerControl {
                    region: p.region.clone(),
                    region_id: p.region_id,
                    ..PeerControl::default()
                })
                .collect(),
            ..Control::default()
        });
        Ok(Some(Replicator {
            control,
            transport,
            link,
            faults: rc.peers.iter().map(|p| (p.delay_ms, p.drop_rate)).collect(),
            gc_interval_ms: rc.gc_interval_ms.max(10),
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.transport.local_addr()
    }

    /// The replication loop (never returns while the server runs).
    pub async fn run(self, store: Arc<Store>) {
        let Replicator {
            control,
            transport,
            mut link,
            faults,
            gc_interval_ms,
        } = self;
        let n = control.peers.len();
        let idx_of_id = |id: RegionId| control.peers.iter().position(|p| p.region_id == id.0);
        // Delayed outgoing frames per peer (constant delay: FIFO per peer).
        let mut delayed: Vec<VecDeque<(u64, Bytes)>> = vec![VecDeque::new(); n];
        let mut rng: u64 = now_ms() | 1;
        let mut next_rand = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut dropped_seen = store.stats.deltas_dropped.load(Relaxed);
        let mut next_gc = now_ms() + gc_interval_ms;
        let mut next_stats = 0u64;
        let mut pending: Vec<Delta> = Vec::new();
        let mut buf = Vec::new();
        let mut timer_due = true;
        loop {
            let now = now_ms();
            // Read the clock *before* draining: every stamp issued so far was issued under
            // its shard's lock, so once the drain below has taken that lock, the write's
            // delta is in the log. (Read after, a write still in flight could be claimed.)
            let local_hlc = store.last_hlc();
            // Local deltas: drain each shard's log (briefly locking one shard at a time),
            // then restore HLC order across shards.
            for i in 0..SHARDS {
                let mut s = store.shard(i);
                pending.extend(s.log.drain(..));
            }
            pending.sort_unstable_by_key(|d| d.stamp);
            let dropped = store.stats.deltas_dropped.load(Relaxed);
            if dropped != dropped_seen {
                // The bounded shard log lost deltas: fall back to digests with every peer.
                dropped_seen = dropped;
                for p in &control.peers {
                    link.request_anti_entropy(RegionId(p.region_id));
                }
            }
            for d in pending.drain(..) {
                link.enqueue(now, d);
            }
            link.note_local_hlc(local_hlc);
            if timer_due || now >= next_gc {
                link.handle_timeout(now);
                let mut locked = LockedStore(store.lock_all());
                link.poll_anti_entropy(now, &mut locked);
                if now >= next_gc {
                    next_gc = now + gc_interval_ms;
                    link.collect_garbage(&mut locked);
                }
                timer_due = false;
            }
            while let Some((peer, frame)) = link.poll_transmit(now) {
                let Some(i) = idx_of_id(peer) else { continue };
                let pc = &control.peers[i];
                let (delay, drop_rate) = faults[i];
                if pc.down.load(Relaxed) || (drop_rate > 0.0 && next_rand() < drop_rate) {
                    pc.frames_dropped.fetch_add(1, Relaxed);
                    continue;
                }
                buf.clear();
                if let Err(e) = encode_into(&frame, &mut buf) {
                    tracing::warn!(error = %e, "cannot encode replication frame");
                    continue;
                }
                let bytes = Bytes::copy_from_slice(&buf);
                if delay > 0 {
                    delayed[i].push_back((now + delay, bytes));
                } else if transport.send(&pc.region, bytes).is_err() {
                    // Not connected or queue full: the link resends unacknowledged deltas.
                    pc.frames_dropped.fetch_add(1, Relaxed);
                }
            }
            for (i, q) in delayed.iter_mut().enumerate() {
                while q.front().is_some_and(|(due, _)| *due <= now) {
                    let (_, bytes) = q.pop_front().expect("front checked");
                    let pc = &control.peers[i];
                    if pc.down.load(Relaxed) || transport.send(&pc.region, bytes).is_err() {
                        pc.frames_dropped.fetch_add(1, Relaxed);
                    }
                }
            }
            if now >= next_stats {
                next_stats = now + 100;
                publish(&control, &transport, &link);
            }
            let mut wake = link
                .poll_timeout()
                .unwrap_or(now + 1000)
                .min(next_gc)
                .min(next_stats);
            for q in &delayed {
                if let Some((due, _)) = q.front() {
                    wake = wake.min(*due);
                }
            }
            let sleep = Duration::from_millis(wake.saturating_sub(now).max(1));
            tokio::select! {
                biased;
                got = transport.recv() => {
                    let Some((from, frame)) = got else { return };
                    let Some(i) = control.peers.iter().position(|p| p.region == from) else {
                        continue;
                    };
                    let pc = &control.peers[i];
                    if pc.down.load(Relaxed) {
                        pc.frames_dropped.fetch_add(1, Relaxed);
                        continue;
                    }
                    pc.last_recv_ms.store(now_ms().max(1), Relaxed);
                    let now = now_ms();
                    let mut locked = LockedStore(store.lock_all());
                    link.handle_frame(now, RegionId(pc.region_id), frame, &mut locked);
                    drop(locked);
                    store.observe(link.max_seen_hlc());
                    // Answers (acks, anti-entropy) may be due right away.
                    timer_due = true;
                }
                _ = store.stats.delta_notify.notified() => {}
                _ = tokio::time::sleep(sleep) => { timer_due = true; }
            }
        }
    }
}

fn publish(control: &Control, transport: &QuicTransport, link: &RegionLink) {
    let st = link.stats();
    control.deltas_enqueued.store(st.deltas_enqueued, Relaxed);
    control.deltas_sent.store(st.deltas_sent, Relaxed);
    control.deltas_resent.store(st.deltas_resent, Relaxed);
    control.deltas_applied.store(st.deltas_applied, Relaxed);
    control.gc_dropped.store(st.gc_dropped, Relaxed);
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
    for (region, ps) in transport.peer_states() {
        if let Some(pc) = control.peer(region.as_bytes()) {
            pc.connected.store(ps.connected, Relaxed);
            pc.bytes_sent.store(ps.bytes_sent, Relaxed);
            pc.bytes_received.store(ps.bytes_received, Relaxed);
            pc.frames_sent.store(ps.frames_sent, Relaxed);
            pc.frames_received.store(ps.frames_received, Relaxed);
            pc.backlog
                .store(link.backlog(RegionId(pc.region_id)) as u64, Relaxed);
        }
    }
}
