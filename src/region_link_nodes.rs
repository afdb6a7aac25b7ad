//! Node mode of the inter-region shell (issue 20, ARCHITECTURE.md "Clustered regions"):
//! peers named by `seeds`, regions that may be clusters. This node learns each peer
//! region's topology (`Frame::TopologyRequest` to any connected node of it, answered with
//! `Frame::Topology`), connects to the peer primaries, and drives a
//! [`NodeLinks`]: one link per peer node whose slots it shares, deltas routed by slot.
//! It answers peers' topology requests from its own region's view (`src/topology.rs`).
//!
//! Shared with the region-mode loop (`region_link.rs`): the drain of the shard logs (HLC
//! order up to the horizon, losses reported), `ShellStore` (one shard lock per call;
//! nothing stored outside the served slots), `Control` for `INFO crdt` and `/metrics`, the
//! restart window, the per-peer test faults (`delay-ms`, `drop-rate`, on the frames this
//! node sends to the region's nodes), GC spread over shards ([`NodeLinks::collect_garbage`];
//! each drain, `note_local_hlc` with its horizon, hands the links the node-wide aggregate
//! for their frontier gossip, so with three regions or more a third region's writes are
//! collected too).

use crate::cluster::Cluster;
use crate::region_link::{Control, ShellStore};
use crate::store::{Store, SHARDS};
use crate::util::now_ms;
use bytes::Bytes;
use meridian_crdt::{Delta, Hlc, RegionId, SLOT_COUNT};
use meridian_replication::codec::Frame;
use meridian_replication::encode_into;
use meridian_replication::proto::node_links::{NodeLinks, PeerNode};
use meridian_replication::proto::topology::PeerTopologies;
use meridian_replication::transport::quic::{PeerKey, QuicTransport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use std::time::Duration;

/// How often each peer region's topology is asked for (and this node's own served slots
/// compared with the last look).
const TOPOLOGY_POLL_MS: u64 = 500;

/// A peer region as configured.
pub struct PeerRegion {
    pub name: String,
    pub id: RegionId,
    pub seeds: Vec<SocketAddr>,
    /// Test faults on frames this node sends to the region's nodes: one-way delay (ms)
    /// and drop rate.
    pub delay_ms: u64,
    pub drop_rate: f64,
}

/// What the node-mode loop owns.
pub struct NodesCore {
    pub control: Arc<Control>,
    pub transport: QuicTransport,
    pub links: NodeLinks,
    pub region: String,
    pub region_id: u16,
    pub peers: Vec<PeerRegion>,
    /// This node's replication address as peers reach it (a region of one node).
    pub single_addr: String,
    pub flush_interval_ms: u64,
    /// GC visits one shard every `gc_interval_ms / SHARDS` (as in region mode).
    pub gc_interval_ms: u64,
    /// `[replication] compression`: LZ4 for large frames.
    pub compress: bool,
}

/// Transport peers by index: a [`PeerNode`]'s `node` is its index here.
#[derive(Default)]
struct NodeTable {
    keys: Vec<PeerKey>,
    index: HashMap<PeerKey, u64>,
}

impl NodeTable {
    fn index_of(&mut self, key: &PeerKey) -> u64 {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let i = self.keys.len() as u64;
        self.keys.push(key.clone());
        self.index.insert(key.clone(), i);
        i
    }
}

impl NodesCore {
    pub async fn run(self, store: Arc<Store>, cluster: Option<Arc<Cluster>>) {
        let NodesCore {
            control,
            transport,
            mut links,
            region,
            region_id,
            mut peers,
            single_addr,
            flush_interval_ms,
            gc_interval_ms,
            compress,
        } = self;
        let mut enc = meridian_replication::FrameEncoder::new(compress);
        // Regions forgotten here, by name: a node of one that speaks again reaches a link
        // that refuses its incarnation (or readmits a new one: then it is a peer again).
        let mut forgotten: Vec<(String, RegionId)> = Vec::new();
        let gc_step_ms = (gc_interval_ms / SHARDS as u64).max(1);
        let mut next_gc = now_ms() + gc_step_ms;
        let mut gc_shard = 0usize;
        let mut cap = crate::region_link::ReplicaCap::new();
        let mut next_cap = 0;
        for p in &peers {
            for s in &p.seeds {
                if let Err(e) = transport.add_peer(&p.name, *s) {
                    tracing::warn!(peer = %p.name, seed = %s, error = %e, "seed refused");
                }
            }
        }
        let mut table = NodeTable::default();
        let mut topos = PeerTopologies::new();
        let mut served: Vec<bool> = vec![false; SLOT_COUNT];
        let mut next_poll = 0u64;
        let mut next_stats = 0u64;
        let mut pending: Vec<Delta> = Vec::new();
        let mut lost: Option<(Hlc, Vec<u16>)> = None;
        let mut buf = Vec::new();
        let mut handshake_seen = false;
        // Frames held for a peer region's injected delay (constant: FIFO), and the drop
        // rate's generator.
        let mut delayed: std::collections::VecDeque<(u64, PeerKey, Bytes)> = Default::default();
        let mut rng: rand::rngs::SmallRng = rand::SeedableRng::from_os_rng();
        // Whether this node was a primary at the last look (a replica has no links).
        let mut primary = true;
        let mut flush_at: Option<u64> = Some(0);
        let mut last_flush = 0u64;
        loop {
            let now = now_ms();
            if now >= next_poll {
                next_poll = now + TOPOLOGY_POLL_MS;
                // A replica has no links: its primary replicates its slots; promoted, it
                // takes them over (every slot then a gain, repaired with every peer).
                let is_primary = cluster.as_ref().is_none_or(|c| {
                    c.node
                        .lock()
                        .topology()
                        .myself()
                        .role
                        .primary_id()
                        .is_none()
                });
                if is_primary != primary {
                    primary = is_primary;
                    if primary {
                        reroute(&transport, &mut links, &mut table, &topos, &peers);
                    } else {
                        for p in &peers {
                            links.set_owners(p.id, |_| None);
                        }
                    }
                    tracing::info!(primary, "inter-region links follow the node's role");
                }
                // Slots this node started serving (an import completed, a promotion, the
                // start): repaired with every peer region before its frontier passes them.
                let gained: Vec<u16> = (0..SLOT_COUNT as u16)
                    .filter(|&s| {
                        let now_served = primary && store.served.serves(s);
                        let was = std::mem::replace(&mut served[usize::from(s)], now_served);
                        now_served && !was
                    })
                    .collect();
                if !gained.is_empty() {
                    links.note_local_loss(Hlc::ZERO, &gained);
                }
                let mut req = Vec::new();
                if encode_into(&Frame::TopologyRequest, &mut req).is_ok() {
                    let req = Bytes::from(req);
                    for p in &peers {
                        let _ = transport.send(&p.name, req.clone());
                    }
                }
            }
            // Local deltas, as in region mode (see `region_link::Core::run`).
            let flush = flush_at.is_some_and(|t| now >= t);
            let horizon = if flush {
                flush_at = None;
                last_flush = now;
                crate::region_link::drain_local(&store, now, &mut pending, &mut lost)
            } else {
                Hlc::ZERO
            };
            let ready = pending.partition_point(|d| d.stamp.hlc <= horizon);
            for d in pending.drain(..ready) {
                links.enqueue(now, d);
            }
            if let Some((below, slots)) = lost.take() {
                links.note_local_loss(below, &slots);
                flush_at.get_or_insert(now + flush_interval_ms.max(1));
            }
            links.note_local_hlc(horizon);
            if now >= next_cap {
                next_cap = now + crate::region_link::CAP_STEP_MS;
                let bound = links.peer_gc_bound_ms();
                if let Some(c) = cap.step(store.feed(), now, bound, || links.claim_checkpoint()) {
                    links.set_replica_cap(c);
                }
            }
            if flush && !pending.is_empty() {
                flush_at = Some(now + flush_interval_ms.max(1));
            }
            links.handle_timeout(now);
            links.poll_anti_entropy(now, &mut ShellStore::new(&store));
            if now >= next_gc {
                next_gc = now + gc_step_ms;
                links.collect_garbage(&mut ShellStore::for_gc_shard(&store, gc_shard));
                gc_shard = (gc_shard + 1) % SHARDS;
            }
            forget_requested(
                now,
                &control,
                &transport,
                &mut links,
                &mut peers,
                &mut forgotten,
            );
            let out = Outbound {
                control: &control,
                transport: &transport,
                table: &table,
                peers: &peers,
            };
            out.ship(
                now,
                &mut links,
                &mut delayed,
                (&mut buf, &mut enc),
                &mut rng,
            );
            if !handshake_seen
                && peers.iter().all(|p| topos.get(&p.name).is_some())
                && links.peers().count() > 0
                && links.handshake_done()
            {
                handshake_seen = true;
                if links.restarted() {
                    links.request_anti_entropy();
                    tracing::info!("restart handshake done: restarted, slots lossy until repaired");
                } else {
                    store.clear_start_losses();
                    tracing::info!("restart handshake done: first start");
                }
                control.handshake_done.store(true, Release);
            }
            if now >= next_stats {
                next_stats = now + 100;
                publish(now, &control, &transport, &links, &table, &peers);
            }
            let wake = links
                .poll_timeout()
                .unwrap_or(now + 1000)
                .min(next_poll)
                .min(next_stats)
                .min(next_gc)
                .min(flush_at.unwrap_or(u64::MAX))
                .min(delayed.front().map_or(u64::MAX, |d| d.0));
            let go_on = flush_at.is_some_and(|t| t <= now) || links.has_anti_entropy_work();
            let sleep = Duration::from_millis(wake.saturating_sub(now).max(1));
            tokio::select! {
                biased;
                got = transport.recv_from() => {
                    let mut next = got;
                    let mut handled = 0;
                    loop {
                        let Some((from, frame)) = next else { return };
                        handled += 1;
                        let now = now_ms();
                        let pc_arc = control.peer(from.region.as_bytes());
                        let pc = pc_arc.as_deref();
                        if let Some(pc) = pc {
                            pc.frames_handled.fetch_add(1, Relaxed);
                        }
                        'frame: { match frame {
                            Frame::TopologyRequest => {
                                let t = match &cluster {
                                    Some(c) => c.region_topology(&region),
                                    None => crate::topology::region_topology(&region, None, &single_addr),
                                };
                                buf.clear();
                                if encode_into(&Frame::Topology(t), &mut buf).is_ok() {
                                    let _ = transport.send_to(&from, Bytes::copy_from_slice(&buf));
                                }
                            }
                            Frame::Topology(t) => {
                                if t.region == from.region && topos.update(t) && primary {
                                    reroute(&transport, &mut links, &mut table, &topos, &peers);
                                }
                            }
                            frame => {
                                if !peers.iter().any(|p| p.name == from.region) {
                                    // Forgotten: to its links (refused, or readmitted below).
                                    if let Some(&(_, id)) = forgotten.iter().find(|f| f.0 == from.region) {
                                        let node = table.index_of(&from);
                                        let peer = PeerNode { region: id, node };
                                        links.handle_frame(now, peer, frame, &mut ShellStore::new(&store));
                                        let readmitted = links.link(peer).and_then(|l| l.peer_state(id))
                                            == Some(meridian_replication::proto::link::PeerState::Active);
                                        if readmitted {
                                            forgotten.retain(|f| f.0 != from.region);
                                            join_region(&control, &mut links, &mut peers, &from, id);
                                        }
                                        break 'frame;
                                    }
                                    // Joining: its `Hello` names its region id.
                                    let meridian_replication::Frame::Hello(h) = &frame else {
                                        break 'frame;
                                    };
                                    let id = h.region;
                                    if let Some((reason, why)) = crate::region_link::join_refusal(&control, (&region, region_id), &from.region, id) {
                                        crate::region_link::refuse_region(&transport, &control, &from.region, reason, &why);
                                        transport.forget_region(&from.region);
                                        break 'frame;
                                    }
                                    join_region(&control, &mut links, &mut peers, &from, id);
                                    // Its topology, from the node that connected (a seed).
                                    let mut req = Vec::new();
                                    if encode_into(&Frame::TopologyRequest, &mut req).is_ok() {
                                        let _ = transport.send_to(&from, Bytes::from(req));
                                    }
                                }
                                let Some(p) = peers.iter().find(|p| p.name == from.region) else {
                                    break 'frame;
                                };
                                if let Some(pc) = pc {
                                    if pc.down.load(Relaxed) {
                                        pc.frames_dropped.fetch_add(1, Relaxed);
                                        break 'frame;
                                    }
                                    pc.last_recv_ms.store(now.max(1), Relaxed);
                                }
                                let node = table.index_of(&from);
                                let peer = PeerNode { region: p.id, node };
                                links.handle_frame(now, peer, frame, &mut ShellStore::new(&store));
                                store.observe(links.max_seen_hlc());
                            }
                        } }
                        if handled >= 32 {
                            break;
                        }
                        match crate::region_link::ready_now(transport.recv_from()) {
                            Some(got) => next = got,
                            None => break,
                        }
                    }
                    flush_at.get_or_insert(now_ms().max(last_flush + flush_interval_ms));
                }
                _ = store.stats.delta_notify.notified() => {
                    flush_at.get_or_insert(now_ms().max(last_flush + flush_interval_ms));
                }
                _ = control.request_notify.notified() => {}
                _ = std::future::ready(()), if go_on => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

/// A region that connected at run time (its `Hello` named `id`) becomes a peer region: its
/// topology is learned from the node that connected, as from a seed.
fn join_region(
    control: &Control,
    links: &mut NodeLinks,
    peers: &mut Vec<PeerRegion>,
    from: &PeerKey,
    id: RegionId,
) {
    links.add_region(id);
    peers.push(PeerRegion {
        name: from.region.clone(),
        id,
        seeds: vec![from.addr],
        delay_ms: 0,
        drop_rate: 0.0,
    });
    control
        .peers
        .write()
        .push(Arc::new(crate::region_link::PeerControl::new(
            &from.region,
            id.0,
            true,
        )));
    control.regions_joined.fetch_add(1, Relaxed);
    tracing::info!(region = %from.region, region_id = id.0, seed = %from.addr, "region joined: added as a peer region (topology from the node that connected; GC waits for it from now on)");
}

/// A peer region's topology changed: connect to its primaries and route its slots to them.
fn reroute(
    transport: &QuicTransport,
    links: &mut NodeLinks,
    table: &mut NodeTable,
    topos: &PeerTopologies,
    peers: &[PeerRegion],
) {
    for p in peers {
        let Some(t) = topos.get(&p.name) else {
            continue;
        };
        let mut owners: Vec<Option<u64>> = vec![None; SLOT_COUNT];
        for n in t.nodes.iter().filter(|n| n.primary) {
            let Ok(addr) = n.repl_addr.parse::<SocketAddr>() else {
                tracing::warn!(peer = %p.name, addr = %n.repl_addr, "peer node address not ip:port");
                continue;
            };
            let key = match transport.add_peer(&p.name, addr) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(peer = %p.name, %addr, error = %e, "cannot add peer node");
                    continue;
                }
            };
            let idx = table.index_of(&key);
            for &(a, b) in &n.slots {
                for s in a..=b {
                    if let Some(o) = owners.get_mut(usize::from(s)) {
                        *o = Some(idx);
                    }
                }
            }
        }
        links.set_owners(p.id, |s| owners.get(usize::from(s)).copied().flatten());
        tracing::info!(
            peer = %p.name,
            version = t.version,
            nodes = t.nodes.len(),
            "peer region topology"
        );
    }
}

fn publish(
    now: u64,
    control: &Control,
    transport: &QuicTransport,
    links: &NodeLinks,
    table: &NodeTable,
    peers: &[PeerRegion],
) {
    let st = links.stats();
    control.local_gap_slots.store(0, Relaxed);
    control.local_losses.store(st.slots_rerouted, Relaxed);
    control.gc_dropped.store(st.gc_dropped, Relaxed);
    let (ls, ae) = links.totals();
    control.deltas_enqueued.store(ls.deltas_enqueued, Relaxed);
    control.deltas_sent.store(ls.deltas_sent, Relaxed);
    control.deltas_resent.store(ls.deltas_resent, Relaxed);
    control.deltas_forwarded.store(ls.deltas_forwarded, Relaxed);
    control.deltas_applied.store(ls.deltas_applied, Relaxed);
    control.logs_dropped.store(ls.logs_dropped, Relaxed);
    control.deltas_abandoned.store(ls.deltas_abandoned, Relaxed);
    control.gc_runs.store(ls.gc_runs, Relaxed);
    control.peers_expelled.store(ls.peers_expelled, Relaxed);
    control.frames_refused.store(ls.frames_refused, Relaxed);
    control
        .refusals_received
        .store(ls.refusals_received, Relaxed);
    control
        .deltas_clock_held
        .store(ls.deltas_clock_held, Relaxed);
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
    let states: HashMap<PeerKey, bool> = transport
        .node_states()
        .into_iter()
        .map(|(k, s)| (k, s.connected))
        .collect();
    let mut nodes = Vec::new();
    for (peer, slots) in links.peers() {
        let (Some(key), Some(link)) = (table.keys.get(peer.node as usize), links.link(peer)) else {
            continue;
        };
        let status = link.peer_status(now, peer.region).unwrap_or_default();
        nodes.push(crate::region_link::NodeStatus {
            region: key.region.clone(),
            addr: key.addr.to_string(),
            connected: states.get(key).copied().unwrap_or(false),
            slots,
            backlog_deltas: status.backlog_deltas,
            lag_ms: status.lag_ms,
            last_ack_ms: status.last_ack_ms,
            deltas_acked: status.deltas_acked,
        });
    }
    for p in peers {
        let Some(pc) = control.peer(p.name.as_bytes()) else {
            continue;
        };
        if let Some(ps) = transport.peer_state(&p.name) {
            pc.connected.store(ps.connected, Relaxed);
            pc.bytes_sent.store(ps.bytes_sent, Relaxed);
            pc.bytes_received.store(ps.bytes_received, Relaxed);
            pc.frames_sent.store(ps.frames_sent, Relaxed);
            pc.frames_received.store(ps.frames_received, Relaxed);
        }
        // The region's GC state: expelled if a link to one of its nodes expelled it, refused
        // if one refuses us.
        use meridian_replication::proto::link::PeerState;
        let mut status = meridian_replication::PeerStatus {
            silent_ms: u64::MAX,
            ..Default::default()
        };
        for (peer, _) in links.peers().filter(|(q, _)| q.region == p.id) {
            if let Some(s) = links.link(peer).and_then(|l| l.peer_status(now, p.id)) {
                status.silent_ms = status.silent_ms.min(s.silent_ms);
                status.epoch = status.epoch.or(s.epoch);
                status.state = match (status.state, s.state) {
                    (PeerState::Expelled, _) | (_, PeerState::Expelled) => PeerState::Expelled,
                    (PeerState::RefusedByPeer, _) | (_, PeerState::RefusedByPeer) => {
                        PeerState::RefusedByPeer
                    }
                    _ => PeerState::Active,
                };
            }
        }
        if status.silent_ms == u64::MAX {
            status.silent_ms = 0;
        }
        let before = pc.gc_state.load(Relaxed);
        pc.publish_gc_state(&status);
        crate::region_link::log_gc_state(&p.name, before, pc.gc_state.load(Relaxed), &status);
        let mine = nodes.iter().filter(|n| n.region == p.name);
        let (mut backlog, mut lag, mut last_ack, mut acked) = (0, 0, 0, 0);
        for n in mine {
            backlog += n.backlog_deltas as u64;
            lag = lag.max(n.lag_ms);
            last_ack = last_ack.max(n.last_ack_ms);
            acked += n.deltas_acked;
        }
        pc.backlog.store(backlog, Relaxed);
        pc.lag_ms.store(lag, Relaxed);
        pc.last_ack_ms.store(last_ack, Relaxed);
        pc.deltas_acked.store(acked, Relaxed);
    }
    *control.nodes.lock() = nodes;
}

/// `MERIDIAN REGION FORGET` (every primary holds its own links: it is issued on every
/// node): the regions the requests name leave the peers, the links, the transport and the
/// control (`forgotten` keeps their ids: a node of one that speaks again reaches a link
/// that refuses its incarnation).
fn forget_requested(
    now: u64,
    control: &Control,
    transport: &QuicTransport,
    links: &mut NodeLinks,
    peers: &mut Vec<PeerRegion>,
    forgotten: &mut Vec<(String, RegionId)>,
) {
    let requests: Vec<crate::region_link::ReplRequest> =
        std::mem::take(&mut *control.requests.lock());
    for req in requests {
        let crate::region_link::ReplRequest::Forget(name) = req;
        let Some(i) = peers.iter().position(|p| p.name == name) else {
            continue;
        };
        let p = peers.remove(i);
        links.forget_region(p.id, now);
        transport.forget_region(&name);
        control.peers.write().retain(|q| q.region != name);
        forgotten.retain(|(n, _)| *n != name);
        forgotten.push((name.clone(), p.id));
        control.regions_forgotten.fetch_add(1, Relaxed);
        tracing::warn!(
            region = %name,
            region_id = p.id.0,
            "region forgotten (MERIDIAN REGION FORGET): its links and connections \
             are gone, GC no longer waits for it; if it comes back, incarnations \
             started before now are refused"
        );
    }
}

/// Where the links' frames go: the peer nodes of `table`, through their region's injected
/// faults (`peers`: drop rate, delay) and the `MERIDIAN LINK DOWN` cut (`control`).
struct Outbound<'a> {
    control: &'a Control,
    transport: &'a QuicTransport,
    table: &'a NodeTable,
    peers: &'a [PeerRegion],
}

impl Outbound<'_> {
    /// Send what the links have to send (`poll_transmit`), then the delayed frames now
    /// due. A frame that cannot go is counted dropped: the links resend.
    fn ship(
        &self,
        now: u64,
        links: &mut NodeLinks,
        delayed: &mut std::collections::VecDeque<(u64, PeerKey, Bytes)>,
        (buf, enc): (&mut Vec<u8>, &mut meridian_replication::FrameEncoder),
        rng: &mut rand::rngs::SmallRng,
    ) {
        while let Some((peer, frame)) = links.poll_transmit(now) {
            let Some(key) = self.table.keys.get(peer.node as usize) else {
                continue;
            };
            let pc_arc = self.control.peer(key.region.as_bytes());
            let pc = pc_arc.as_deref();
            if pc.is_some_and(|pc| pc.down.load(Relaxed)) {
                if let Some(pc) = pc {
                    pc.frames_dropped.fetch_add(1, Relaxed);
                }
                continue;
            }
            buf.clear();
            if let Err(e) = enc.encode_into(&frame, buf) {
                // See `region_link::ship`.
                tracing::error!(error = %e, "cannot encode replication frame");
                continue;
            }
            let (delay, drop_rate) = self
                .peers
                .iter()
                .find(|p| p.name == key.region)
                .map_or((0, 0.0), |p| (p.delay_ms, p.drop_rate));
            let bytes = Bytes::copy_from_slice(buf);
            let sent = if drop_rate > 0.0 && rand::Rng::random::<f64>(rng) < drop_rate {
                false
            } else if delay > 0 {
                delayed.push_back((now + delay, key.clone(), bytes));
                true
            } else {
                self.transport.send_to(key, bytes).is_ok()
            };
            if !sent {
                if let Some(pc) = pc {
                    pc.frames_dropped.fetch_add(1, Relaxed);
                }
            }
        }
        while delayed.front().is_some_and(|(due, _, _)| *due <= now) {
            let Some((_, key, bytes)) = delayed.pop_front() else {
                break;
            };
            let pc_arc = self.control.peer(key.region.as_bytes());
            let pc = pc_arc.as_deref();
            let cut = pc.is_some_and(|pc| pc.down.load(Relaxed));
            if cut || self.transport.send_to(&key, bytes).is_err() {
                if let Some(pc) = pc {
                    pc.frames_dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }
}
