//! Prometheus text exposition on `GET /metrics` (off unless `metrics-port` is set). A tiny
//! HTTP/1.1 responder: one request per connection, bounded request size.

use crate::counters::{MetricKind, Readings, FIGURES, NODE_FIGURES, PEER_FIGURES};
use crate::region_link::Control;
use crate::shared::Shared;
use crate::store::Store;
use crate::util::now_ms;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Serve `/metrics`: at most `MAX_METRICS_CONNECTIONS` connections at once (more are
/// answered 503 and closed), each given `METRICS_IO_TIMEOUT` to send its request and again
/// to take the answer; failing accepts back off (`server::AcceptBackoff`). All counted.
pub async fn serve(listener: TcpListener, store: Arc<Store>, shared: Arc<Shared>) {
    use crate::limits::{MAX_METRICS_CONNECTIONS, METRICS_IO_TIMEOUT};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    let mut backoff = crate::server::AcceptBackoff::default();
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                backoff
                    .failed(&shared.limits.accept_errors, "metrics", &e)
                    .await;
                continue;
            }
        };
        backoff.succeeded();
        let limits = &shared.limits;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            limits.service_connections_refused.fetch_add(1, Relaxed);
            // Best effort, never waiting on the client.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let (store, shared) = (store.clone(), shared.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let served = tokio::time::timeout(METRICS_IO_TIMEOUT, read_request(&mut stream));
            let req = match served.await {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(_) => {
                    shared
                        .limits
                        .service_connections_refused
                        .fetch_add(1, Relaxed);
                    return;
                }
            };
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
            let _ =
                tokio::time::timeout(METRICS_IO_TIMEOUT, stream.write_all(resp.as_bytes())).await;
        });
    }
}

const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The request's head (up to `MAX_REQUEST_BYTES`); `None` if the client went away first.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut req = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < MAX_REQUEST_BYTES {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&chunk[..n]),
        }
    }
    Some(req)
}

/// A Prometheus text-format writer: every family gets its `# HELP` and `# TYPE` lines once.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: MetricKind, help: &str) {
        let _ = write!(
            self.0,
            "# HELP meridian_{name} {help}\n# TYPE meridian_{name} {}\n",
            kind.as_str()
        );
    }

    fn sample(&mut self, name: &str, labels: std::fmt::Arguments<'_>, value: i64) {
        let _ = writeln!(self.0, "meridian_{name}{labels} {value}");
    }
}

/// The metrics registry rendered as Prometheus text: the figures of `crate::counters` that
/// have a metric name, then Kafka's per-partition lag.
pub fn render(store: &Store, shared: &Shared) -> String {
    let r = Readings::new(store, shared, now_ms());
    let mut o = Exposition(String::new());
    for f in FIGURES {
        let (Some((name, kind)), Some(v)) = (f.metric, (f.read)(&r)) else {
            continue;
        };
        if let Some(v) = v.as_sample() {
            o.family(name, kind, f.help);
            o.sample(name, format_args!(""), v);
        }
    }
    if let Some(c) = &shared.repl {
        link_peers(&mut o, c, r.now_ms);
    }
    o.family(
        "kafka_consumer_lag",
        MetricKind::Gauge,
        "Records behind the partition's end.",
    );
    for (p, lag) in shared.kafka.lag.lock().iter() {
        o.sample(
            "kafka_consumer_lag",
            format_args!("{{partition=\"{p}\"}}"),
            *lag,
        );
    }
    o.0
}

/// The region link's figures per peer region (label `peer`) and, in node mode, per peer
/// node (labels `peer` and `node`): the same figures as `INFO crdt`'s `peer_…` lines.
fn link_peers(o: &mut Exposition, c: &Control, now: u64) {
    let peers = c.peers();
    for f in PEER_FIGURES {
        let Some((name, kind)) = f.metric else {
            continue;
        };
        let name = format!("repl_{name}");
        o.family(&name, kind, f.help);
        for p in peers.iter() {
            if let Some(v) = (f.read)(p, now).as_sample() {
                o.sample(&name, format_args!("{{peer=\"{}\"}}", p.region), v);
            }
        }
    }
    let nodes = c.nodes.lock().clone();
    if nodes.is_empty() {
        return;
    }
    for f in NODE_FIGURES {
        let Some((name, kind)) = f.metric else {
            continue;
        };
        let name = format!("repl_{name}");
        o.family(&name, kind, f.help);
        for n in &nodes {
            if let Some(v) = (f.read)(n, now).as_sample() {
                let labels = format_args!("{{peer=\"{}\",node=\"{}\"}}", n.region, n.addr);
                o.sample(&name, labels, v);
            }
        }
    }
}
