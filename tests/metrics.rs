//! The Prometheus endpoint (`--metrics-port`): `GET /metrics` serves text exposition whose
//! counters and gauges track what the server did, and agree with INFO.

mod common;

use common::*;

fn start_with_metrics() -> (Server, u16) {
    let port = free_port();
    let s = Server::start_with(&["--metrics-port", &port.to_string()]);
    wait_until(
        WAIT_TIMEOUT,
        "the metrics endpoint accepts connections",
        || http_get(port, "/metrics").is_ok(),
    );
    (s, port)
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let (_s, port) = start_with_metrics();
    let (status, headers, body) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    for (name, kind) in [
        ("meridian_commands_processed_total", "counter"),
        ("meridian_connections_received_total", "counter"),
        ("meridian_keyspace_hits_total", "counter"),
        ("meridian_keyspace_misses_total", "counter"),
        ("meridian_expired_keys_total", "counter"),
        ("meridian_evicted_keys_total", "counter"),
        ("meridian_connected_clients", "gauge"),
        ("meridian_instantaneous_ops_per_sec", "gauge"),
        ("meridian_used_memory_bytes", "gauge"),
        ("meridian_keys", "gauge"),
        ("meridian_maxmemory_bytes", "gauge"),
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} {kind}\n")),
            "no TYPE for {name}"
        );
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    let m = metric_samples(&body);
    assert!(m["meridian_used_memory_bytes"] > 0.0);
    // Anything but /metrics is a 404.
    let (status, _, _) = http_get(port, "/other").unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn metrics_follow_activity_and_agree_with_info() {
    let (s, port) = start_with_metrics();
    let before = scrape_metrics(port);
    let mut c = s.conn();
    for i in 0..100 {
        q::<()>(&mut c, &["SET", &format!("k{i}"), "v"]);
    }
    q::<()>(&mut c, &["SET", "ttl", "v", "EX", "1000"]);
    for i in 0..30 {
        q::<Option<String>>(&mut c, &["GET", &format!("k{i}")]);
    }
    for i in 0..7 {
        q::<Option<String>>(&mut c, &["GET", &format!("missing{i}")]);
    }
    q::<()>(&mut c, &["CONFIG", "SET", "maxmemory", "1gb"]);
    let after = scrape_metrics(port);
    assert!(
        after["meridian_commands_processed_total"]
            >= before["meridian_commands_processed_total"] + 138.0,
        "{} -> {}",
        before["meridian_commands_processed_total"],
        after["meridian_commands_processed_total"]
    );
    assert_eq!(after["meridian_keys"], 101.0);
    assert_eq!(after["meridian_keys_with_ttl"], 1.0);
    assert_eq!(
        after["meridian_keyspace_hits_total"] - before["meridian_keyspace_hits_total"],
        30.0
    );
    assert_eq!(
        after["meridian_keyspace_misses_total"] - before["meridian_keyspace_misses_total"],
        7.0
    );
    assert_eq!(after["meridian_maxmemory_bytes"], (1u64 << 30) as f64);
    assert!(after["meridian_connected_clients"] >= 1.0);
    assert!(after["meridian_connections_received_total"] >= 1.0);
    // Same numbers as INFO.
    assert_eq!(
        info_u64(&mut c, "keyspace_hits") as f64,
        after["meridian_keyspace_hits_total"]
    );
    assert_eq!(
        info_u64(&mut c, "keyspace_misses") as f64,
        after["meridian_keyspace_misses_total"]
    );

    // Expiry shows up as a counter.
    q::<()>(&mut c, &["SET", "short", "v", "PX", "50"]);
    wait_until(WAIT_TIMEOUT, "the expired key is counted", || {
        scrape_metrics(port)["meridian_expired_keys_total"] >= 1.0
    });
    // Connections show up and go away in the gauge.
    let extra: Vec<redis::Connection> = (0..4).map(|_| s.conn()).collect();
    wait_until(WAIT_TIMEOUT, "the gauge counts 5 clients", || {
        scrape_metrics(port)["meridian_connected_clients"] == 5.0
    });
    drop(extra);
    wait_until(WAIT_TIMEOUT, "the gauge drops back to 1 client", || {
        scrape_metrics(port)["meridian_connected_clients"] == 1.0
    });
}

#[test]
fn invalidation_metrics_track_floors_and_refused_fills() {
    let (s, port) = start_with_metrics();
    let mut con = s.conn();
    let _: () = q(&mut con, &["SET", "k", "v", "VERSION", "2"]);
    let removed: i64 = q(&mut con, &["MERIDIAN", "INVALIDATE", "k", "VERSION", "3"]);
    assert_eq!(removed, 1);
    let e = qerr(&mut con, &["SET", "k", "old", "VERSION", "3"]);
    assert!(e.starts_with("STALE"), "{e}");
    let m = scrape_metrics(port);
    assert_eq!(m["meridian_stale_fills_refused_total"], 1.0);
    assert_eq!(m["meridian_invalidation_tombstones"], 1.0);
    assert_eq!(m["meridian_kafka_records_applied_total"], 0.0);
    assert_eq!(info_u64(&mut con, "invalidation_tombstones"), 1);
}
