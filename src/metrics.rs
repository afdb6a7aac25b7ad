//! Prometheus text exposition on `GET /metrics` (off unless `metrics-port` is set). A tiny
//! HTTP/1.1 responder: one request per connection, bounded request size.

use crate::region_link::{Control, PeerControl};
use crate::shared::Shared;
use crate::store::Store;
use crate::util::now_ms;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MAX_REQUEST_BYTES: usize = 8 * 1024;

pub async fn serve(listener: TcpListener, store: Arc<Store>, shared: Arc<Shared>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let (store, shared) = (store.clone(), shared.clone());
        tokio::spawn(async move {
            let mut req = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < MAX_REQUEST_BYTES {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&chunk[..n]),
                }
            }
            let ok = req.starts_with(b"GET /metrics ") || req.starts_with(b"GET /metrics?");
            let (status, body) = if ok {
                ("200 OK", render(&store, &shared))
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}

/// A Prometheus text-format writer: every family gets its `# HELP` and `# TYPE` lines once.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(
            self.0,
            "# HELP meridian_{name} {help}\n# TYPE meridian_{name} {kind}\n"
        );
    }

    fn sample(&mut self, name: &str, label: Option<(&str, &dyn std::fmt::Display)>, value: i64) {
        let _ = match label {
            Some((k, v)) => writeln!(self.0, "meridian_{name}{{{k}=\"{v}\"}} {value}"),
            None => writeln!(self.0, "meridian_{name} {value}"),
        };
    }

    /// A family with one unlabelled sample.
    fn metric(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, None, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn counters(&mut self, rows: &[(&str, &str, u64)]) {
        for &(name, help, value) in rows {
            self.metric(name, "counter", help, value);
        }
    }

    fn gauges(&mut self, rows: &[(&str, &str, u64)]) {
        for &(name, help, value) in rows {
            self.metric(name, "gauge", help, value);
        }
    }
}

/// The metrics registry rendered as Prometheus text.
pub fn render(store: &Store, shared: &Shared) -> String {
    let st = &store.stats;
    let ks = store.sum_stats();
    let ir = &shared.inregion;
    let (hits, misses) = store.hits_misses();
    let (produced, dropped) = store.delta_counts();
    let mut o = Exposition(String::new());
    o.gauges(&[
        (
            "uptime_seconds",
            "Seconds since start.",
            now_ms().saturating_sub(shared.started_ms) / 1000,
        ),
        (
            "connected_clients",
            "Client connections open.",
            st.connected_clients.load(Relaxed) as u64,
        ),
        (
            "instantaneous_ops_per_sec",
            "Commands per second over the last second.",
            st.ops_per_sec.load(Relaxed),
        ),
        ("keys", "Live keys.", ks.keys as u64),
        ("keys_with_ttl", "Live keys with a TTL.", ks.volatile as u64),
        (
            "tombstones",
            "Deleted keys kept until every region saw the delete.",
            ks.tombstones as u64,
        ),
        (
            "used_memory_bytes",
            "Bytes in use: allocated (jemalloc) less the node slabs' free slots.",
            store.used_memory_now(),
        ),
        (
            "used_memory_rss_bytes",
            "Resident set size.",
            crate::memory::process_rss_bytes(),
        ),
        (
            "maxmemory_bytes",
            "Configured memory limit (0 = none).",
            store.runtime.maxmemory.load(Relaxed),
        ),
        (
            "repl_offset",
            "In-region replication offset (primary: assigned; replica: applied).",
            ir.repl_offset(),
        ),
        (
            "connected_replicas",
            "Replicas streaming from this node.",
            ir.replica_list().len() as u64,
        ),
    ]);
    o.counters(&[
        (
            "connections_received_total",
            "Client connections accepted.",
            st.connections_received.load(Relaxed),
        ),
        (
            "rejected_connections_total",
            "Connections refused by maxclients.",
            st.rejected_connections.load(Relaxed),
        ),
        (
            "commands_processed_total",
            "Commands executed.",
            st.commands.load(Relaxed),
        ),
        ("keyspace_hits_total", "Reads that found their key.", hits),
        ("keyspace_misses_total", "Reads that missed.", misses),
        (
            "expired_keys_total",
            "Keys reclaimed because their TTL passed.",
            ks.expired,
        ),
        (
            "evicted_keys_total",
            "Keys evicted by maxmemory.",
            ks.evicted,
        ),
        (
            "deltas_produced_total",
            "CRDT deltas yielded by local writes.",
            produced,
        ),
        (
            "deltas_dropped_total",
            "Deltas dropped from the bounded log.",
            dropped,
        ),
        (
            "protocol_errors_total",
            "Connections closed for protocol errors.",
            st.protocol_errors.load(Relaxed),
        ),
        (
            "replica_sync_full_total",
            "Full resyncs served to replicas.",
            ir.sync_full.load(Relaxed),
        ),
        (
            "replica_sync_partial_ok_total",
            "Partial resyncs served to replicas.",
            ir.sync_partial_ok.load(Relaxed),
        ),
    ]);
    invalidation_metrics(&mut o, store, shared, &ks);
    if let Some(c) = &shared.repl {
        replication(&mut o, c, now_ms());
    }
    o.0
}

/// Multi-region link state (the same figures as `INFO crdt`). Tombstones waiting for GC
/// are `meridian_tombstones`.
fn replication(o: &mut Exposition, c: &Control, now: u64) {
    let totals: [(&str, &str, &AtomicU64); 22] = [
        (
            "regions_joined_total",
            "Regions added at run time (they connected with a certificate from the deployment CA).",
            &c.regions_joined,
        ),
        (
            "regions_refused_total",
            "Regions that connected and were refused (region id clash, accept-new-regions off, too many).",
            &c.regions_refused,
        ),
        (
            "regions_forgotten_total",
            "Peer regions removed by MERIDIAN REGION FORGET.",
            &c.regions_forgotten,
        ),
        (
            "peers_expelled_total",
            "Peer regions expelled from GC: nothing heard from them past peer-gc-bound-ms.",
            &c.peers_expelled,
        ),
        (
            "frames_refused_total",
            "Frames refused from an expelled peer incarnation (not merged).",
            &c.frames_refused,
        ),
        (
            "refusals_received_total",
            "Refusals received: a peer expelled this region's incarnation (restart it empty).",
            &c.refusals_received,
        ),
        (
            "deltas_enqueued_total",
            "Local deltas queued for the peers.",
            &c.deltas_enqueued,
        ),
        (
            "deltas_sent_total",
            "Deltas shipped (all peers, resends included).",
            &c.deltas_sent,
        ),
        (
            "deltas_resent_total",
            "Deltas shipped again after an ack timeout.",
            &c.deltas_resent,
        ),
        (
            "deltas_applied_total",
            "Deltas received from peers and merged.",
            &c.deltas_applied,
        ),
        (
            "anti_entropy_rounds_total",
            "Anti-entropy rounds completed.",
            &c.ae_rounds,
        ),
        (
            "anti_entropy_rounds_clean_total",
            "Anti-entropy rounds that found no difference.",
            &c.ae_rounds_clean,
        ),
        (
            "anti_entropy_entries_received_total",
            "Key states merged from anti-entropy.",
            &c.ae_entries_received,
        ),
        (
            "anti_entropy_entries_shipped_total",
            "Key states shipped by anti-entropy.",
            &c.ae_entries_shipped,
        ),
        (
            "gc_runs_total",
            "Tombstone garbage-collection runs.",
            &c.gc_runs,
        ),
        (
            "gc_dropped_total",
            "Tombstone metadata entries dropped by GC.",
            &c.gc_dropped,
        ),
        (
            "handshake_failures_total",
            "Incoming replication connections refused in TLS.",
            &c.handshake_failures,
        ),
        (
            "identity_rejections_total",
            "Incoming connections from a region not accepted here.",
            &c.identity_rejections,
        ),
        (
            "clock_held_deltas_total",
            "Deltas from peers held (not merged, not acknowledged) for an HLC further ahead of the local clock than max-clock-offset-ms.",
            &c.deltas_clock_held,
        ),
        (
            "clock_held_entries_total",
            "Anti-entropy entries from peers held for an HLC further ahead of the local clock than max-clock-offset-ms.",
            &c.entries_clock_held,
        ),
        (
            "local_losses_total",
            "Drains that found local deltas dropped from a full shard delta log (repaired by anti-entropy).",
            &c.local_losses,
        ),
        (
            "restart_writes_held_total",
            "Client writes that waited for the restart handshake (restart-write-hold-ms).",
            &c.restart_writes_held,
        ),
    ];
    for (name, help, v) in totals {
        o.metric(&format!("repl_{name}"), "counter", help, v.load(Relaxed));
    }
    o.gauges(&[
        (
            "repl_deltas_applied_per_second",
            "Deltas merged from peers per second (last second).",
            c.deltas_applied_per_sec.load(Relaxed),
        ),
        (
            "repl_peers",
            "Configured peer regions.",
            c.peers().len() as u64,
        ),
        (
            "repl_local_gap_slots",
            "Slots of lost local deltas not yet repaired with every peer (GC of this region's tombstones waits).",
            c.local_gap_slots.load(Relaxed),
        ),
        (
            "repl_max_clock_offset_ms",
            "Remote HLCs further ahead of the local clock than this are held.",
            c.max_clock_offset_ms.load(Relaxed),
        ),
        (
            "repl_peer_gc_bound_ms",
            "A peer silent for longer than this is expelled from GC (0: never).",
            c.peer_gc_bound_ms.load(Relaxed),
        ),
        (
            "repl_restart_handshake_done",
            "1 once every peer answered this incarnation's restart handshake.",
            u64::from(c.handshake_done.load(Relaxed)),
        ),
        (
            "repl_restart_hold_remaining_ms",
            "How much longer client writes may wait for the restart handshake (0: they don't).",
            c.hold_remaining_ms(now),
        ),
    ]);

    type PeerValue = fn(&PeerControl, u64) -> i64;
    let families: [(&str, &str, &str, PeerValue); 20] = [
        (
            "peer_expelled",
            "gauge",
            "1 while the peer is expelled from GC (silent past peer-gc-bound-ms, or forgotten and back): its incarnation is refused.",
            |p, _| i64::from(p.link_state() == "expelled"),
        ),
        (
            "peer_refused",
            "gauge",
            "1 while the peer refuses this region's incarnation (it expelled us): restart this region empty.",
            |p, _| i64::from(p.link_state() == "refused"),
        ),
        (
            "peer_silent_ms",
            "gauge",
            "Link time since the last frame from the peer (expelled from GC past peer-gc-bound-ms).",
            |p, _| p.silent_ms.load(Relaxed) as i64,
        ),
        (
            "peer_connected",
            "gauge",
            "1 while the QUIC connection to the peer is up.",
            |p, _| i64::from(p.connected.load(Relaxed)),
        ),
        (
            "peer_link_up",
            "gauge",
            "1 while the link is connected and not cut (MERIDIAN LINK DOWN).",
            |p, _| i64::from(p.link_state() == "up"),
        ),
        (
            "peer_backlog_deltas",
            "gauge",
            "Local deltas not yet acknowledged by the peer (lag in ops).",
            |p, _| p.backlog.load(Relaxed) as i64,
        ),
        (
            "peer_lag_ms",
            "gauge",
            "Age of the oldest unacknowledged delta (lag in ms).",
            |p, _| p.lag_ms.load(Relaxed) as i64,
        ),
        (
            "peer_deltas_acked_total",
            "counter",
            "Deltas the peer acknowledged.",
            |p, _| p.deltas_acked.load(Relaxed) as i64,
        ),
        (
            "peer_deltas_per_second",
            "gauge",
            "Deltas the peer acknowledged per second (last second).",
            |p, _| p.deltas_per_sec.load(Relaxed) as i64,
        ),
        (
            "peer_last_ack_age_ms",
            "gauge",
            "Milliseconds since the peer's last acknowledgement (-1: never).",
            |p, now| crate::region_link::ms_ago(now, p.last_ack_ms.load(Relaxed)),
        ),
        (
            "peer_last_receive_age_ms",
            "gauge",
            "Milliseconds since the last frame from the peer (-1: never).",
            |p, now| crate::region_link::ms_ago(now, p.last_recv_ms.load(Relaxed)),
        ),
        (
            "peer_bytes_sent_total",
            "counter",
            "Bytes written to the peer's stream.",
            |p, _| p.bytes_sent.load(Relaxed) as i64,
        ),
        (
            "peer_bytes_received_total",
            "counter",
            "Bytes read from the peer's stream.",
            |p, _| p.bytes_received.load(Relaxed) as i64,
        ),
        (
            "peer_frames_sent_total",
            "counter",
            "Frames written to the peer.",
            |p, _| p.frames_sent.load(Relaxed) as i64,
        ),
        (
            "peer_frames_received_total",
            "counter",
            "Frames read from the peer.",
            |p, _| p.frames_received.load(Relaxed) as i64,
        ),
        (
            "peer_frames_handled_total",
            "counter",
            "Frames from the peer taken off the receive queue and handled (at rest: all received).",
            |p, _| p.frames_handled.load(Relaxed) as i64,
        ),
        (
            "peer_frames_dropped_total",
            "counter",
            "Frames dropped (link cut, injected loss, queue full).",
            |p, _| p.frames_dropped.load(Relaxed) as i64,
        ),
        (
            "peer_anti_entropy_bytes_sent_total",
            "counter",
            "Anti-entropy bytes sent to the peer.",
            |p, _| p.ae_bytes_sent.load(Relaxed) as i64,
        ),
        (
            "peer_region_id",
            "gauge",
            "The peer's numeric region id.",
            |p, _| i64::from(p.region_id),
        ),
        (
            "peer_clock_held_total",
            "counter",
            "Deltas and entries from the peer held for an HLC too far ahead of the local clock.",
            |p, _| p.clock_held.load(Relaxed) as i64,
        ),
    ];
    for (name, kind, help, value) in families {
        let name = format!("repl_{name}");
        o.family(&name, kind, help);
        for p in c.peers().iter() {
            o.sample(&name, Some(("peer", &p.region)), value(p, now));
        }
    }
    // Node mode: per peer node (labels peer region and node address).
    type NodeValue = fn(&crate::region_link::NodeStatus) -> i64;
    let nodes = c.nodes.lock().clone();
    if nodes.is_empty() {
        return;
    }
    let node_families: [(&str, &str, &str, NodeValue); 4] = [
        (
            "node_connected",
            "gauge",
            "1 while the QUIC connection to the peer node is up.",
            |n| i64::from(n.connected),
        ),
        (
            "node_slots",
            "gauge",
            "Slots the link to the peer node covers.",
            |n| n.slots as i64,
        ),
        (
            "node_backlog_deltas",
            "gauge",
            "Local deltas not yet acknowledged by the peer node.",
            |n| n.backlog_deltas as i64,
        ),
        (
            "node_lag_ms",
            "gauge",
            "Age of the oldest delta the peer node has not acknowledged.",
            |n| n.lag_ms as i64,
        ),
    ];
    for (name, kind, help, value) in node_families {
        let name = format!("repl_{name}");
        o.family(&name, kind, help);
        for n in &nodes {
            let _ = writeln!(
                o.0,
                "meridian_{name}{{peer=\"{}\",node=\"{}\"}} {}",
                n.region,
                n.addr,
                value(n)
            );
        }
    }
}

/// The Kafka invalidation stream and the versioned tombstones it leaves.
fn invalidation_metrics(
    o: &mut Exposition,
    store: &Store,
    shared: &Shared,
    ks: &meridian_crdt::KeyspaceStats,
) {
    let k = &shared.kafka;
    o.counters(&[
        (
            "kafka_records_applied_total",
            "Invalidation records applied.",
            k.records_applied.load(Relaxed),
        ),
        (
            "kafka_keys_invalidated_total",
            "Keys whose value an invalidation removed.",
            k.keys_invalidated.load(Relaxed),
        ),
        (
            "kafka_records_malformed_total",
            "Malformed invalidation records skipped.",
            k.records_malformed.load(Relaxed),
        ),
        (
            "kafka_dead_lettered_total",
            "Malformed records forwarded to the dead-letter topic.",
            k.dead_lettered.load(Relaxed),
        ),
        (
            "kafka_consumer_errors_total",
            "Kafka consumer errors (broker outages are retried).",
            k.consumer_errors.load(Relaxed),
        ),
        (
            "stale_fills_refused_total",
            "Local SET … VERSION at or below the key's invalidation.",
            store.stats.stale_fills_refused.load(Relaxed),
        ),
        (
            "repl_refused_not_served_total",
            "Deltas and anti-entropy entries from other regions refused for a slot this node does not serve.",
            store.stats.refused_not_served.load(Relaxed),
        ),
        (
            "stale_fills_hidden_total",
            "Replicated fills at or below the key's invalidation.",
            ks.stale_fills_hidden,
        ),
    ]);
    let (p50, p99) = k.latency_percentiles().unwrap_or((0, 0));
    o.gauges(&[
        (
            "invalidation_tombstones",
            "Keys holding a versioned invalidation tombstone.",
            ks.invalidation_tombstones as u64,
        ),
        (
            "kafka_apply_latency_p50_ms",
            "Record timestamp to applied, median of recent records.",
            p50,
        ),
        (
            "kafka_apply_latency_p99_ms",
            "Record timestamp to applied, p99 of recent records.",
            p99,
        ),
    ]);
    o.family(
        "kafka_consumer_lag",
        "gauge",
        "Records behind the partition's end.",
    );
    for (p, lag) in k.lag.lock().iter() {
        o.sample("kafka_consumer_lag", Some(("partition", p)), *lag);
    }
}
