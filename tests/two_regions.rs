//! Two regions as separate `meridian` processes on loopback (QUIC, certificates from
//! `write_deployment`): link state on the Prometheus endpoint, and a new region that starts
//! empty and fills from an existing one by anti-entropy. Every check waits on a condition
//! with a deadline.

mod common;

use common::{
    free_port, http_get, info_field, info_u64, key_slot, q, scrape_metrics, wait_until, Server,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);
const NAMES: [&str; 2] = ["a", "b"];

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
        .port()
}

/// Certificates and ports for regions `a` and `b`; servers are started on demand.
struct Pair {
    dir: PathBuf,
    udp: [u16; 2],
}

impl Pair {
    fn new() -> Pair {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meridian-pair-{}-{n}", std::process::id()));
        meridian_replication::transport::quic::write_deployment(&dir, &NAMES)
            .expect("write certificates");
        Pair {
            dir,
            udp: [free_udp_port(), free_udp_port()],
        }
    }

    /// Region `i`, with `extra` lines in its `[replication]` table and extra flags.
    fn start(&self, i: usize, extra: &str, flags: &[&str]) -> Server {
        self.start_top(i, "", extra, flags)
    }

    /// [`Pair::start`] with `top` lines among the top-level keys.
    fn start_top(&self, i: usize, top: &str, extra: &str, flags: &[&str]) -> Server {
        let j = 1 - i;
        let d = self.dir.display();
        let toml = format!(
            "region = \"{r}\"\nregion-id = {i}\n{top}\n\n[replication]\nlisten = \"127.0.0.1:{port}\"\nca-cert = \"{d}/ca.pem\"\ncert = \"{d}/{r}.pem\"\nkey = \"{d}/{r}-key.pem\"\nresend-timeout-ms = 200\n{extra}\npeers = [{{ region = \"{p}\", region-id = {j}, addr = \"127.0.0.1:{pport}\" }}]\n",
            r = NAMES[i],
            port = self.udp[i],
            p = NAMES[j],
            pport = self.udp[j],
        );
        let mut args = vec!["--io-threads", "1"];
        args.extend_from_slice(flags);
        Server::start_with_config(&toml, &args)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn link_state_is_on_the_metrics_endpoint() {
    let pair = Pair::new();
    let port_a = free_port();
    let a = pair.start(0, "", &["--metrics-port", &port_a.to_string()]);
    let b = pair.start(1, "", &[]);
    wait_until(CONVERGE, "a's metrics endpoint answers", || {
        http_get(port_a, "/metrics").is_ok_and(|(status, _, _)| status.ends_with("200 OK"))
    });

    let mut ca = a.conn();
    for i in 0..500 {
        let _: () = q(&mut ca, &["SET", &format!("m:{i}"), "v"]);
    }
    let _: () = q(&mut ca, &["SET", "doomed", "v"]);
    let _: i64 = q(&mut ca, &["DEL", "doomed"]);
    let mut cb = b.conn();
    wait_until(CONVERGE, "b holds a's 500 keys", || {
        q::<i64>(&mut cb, &["DBSIZE"]) == 500
    });

    // Counters are published by the replication thread every 100 ms: wait for a sample
    // that shows b acknowledged every delta.
    let peer = |m: &HashMap<String, f64>, name: &str| -> f64 {
        let key = format!("meridian_repl_peer_{name}{{peer=\"b\"}}");
        *m.get(&key)
            .unwrap_or_else(|| panic!("{key} missing from /metrics"))
    };
    let mut m = HashMap::new();
    wait_until(
        CONVERGE,
        "a's metrics show b acknowledged everything",
        || {
            m = scrape_metrics(port_a);
            // 502 writes; the SET and DEL of `doomed` may ship as one joined delta
            // (link-log coalescing), so at least 501 deltas.
            peer(&m, "connected") == 1.0
                && peer(&m, "backlog_deltas") == 0.0
                && peer(&m, "deltas_acked_total") >= 501.0
        },
    );
    assert_eq!(peer(&m, "link_up"), 1.0);
    assert_eq!(peer(&m, "lag_ms"), 0.0, "nothing outstanding");
    assert_eq!(peer(&m, "region_id"), 1.0);
    assert!(peer(&m, "bytes_sent_total") > 0.0);
    assert!(peer(&m, "bytes_received_total") > 0.0, "acks come back");
    assert!(peer(&m, "frames_sent_total") > 0.0);
    assert!(peer(&m, "last_ack_age_ms") >= 0.0, "b has acknowledged");
    assert!(peer(&m, "last_receive_age_ms") >= 0.0);
    for name in [
        "deltas_per_second",
        "frames_received_total",
        "frames_dropped_total",
        "anti_entropy_bytes_sent_total",
        "clock_held_total",
    ] {
        peer(&m, name);
    }
    assert_eq!(m["meridian_repl_peers"], 1.0);
    assert!(m["meridian_repl_deltas_enqueued_total"] >= 502.0);
    assert!(m["meridian_repl_deltas_sent_total"] >= 501.0);
    for name in [
        "deltas_resent_total",
        "deltas_applied_total",
        "deltas_applied_per_second",
        "anti_entropy_rounds_total",
        "anti_entropy_rounds_clean_total",
        "anti_entropy_entries_received_total",
        "anti_entropy_entries_shipped_total",
        "gc_runs_total",
        "gc_dropped_total",
        "handshake_failures_total",
        "identity_rejections_total",
        "clock_held_deltas_total",
        "clock_held_entries_total",
        "local_losses_total",
        "local_gap_slots",
        "restart_handshake_done",
    ] {
        let key = format!("meridian_repl_{name}");
        assert!(m.contains_key(&key), "{key} missing from /metrics");
    }
    assert_eq!(
        m["meridian_repl_max_clock_offset_ms"], 10_000.0,
        "the default"
    );
    // Tombstones waiting for GC (the deleted key, until both regions saw the delete).
    assert!(m.contains_key("meridian_tombstones"));

    // A cut link shows up as such.
    let _: String = q(&mut ca, &["MERIDIAN", "LINK", "DOWN", "b"]);
    wait_until(CONVERGE, "the cut link is reported", || {
        peer(&scrape_metrics(port_a), "link_up") == 0.0
    });
}

#[test]
fn new_region_bootstraps_by_anti_entropy() {
    let pair = Pair::new();
    // a's log towards b holds at most 50 deltas: b, which does not exist yet, can only get
    // most of the data set by anti-entropy.
    let a = pair.start(
        0,
        "log-max-deltas = 50\nanti-entropy-interval-ms = 1000",
        &[],
    );
    let mut ca = a.conn();
    const KEYS: usize = 2000;
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("SET")
            .arg(format!("boot:{i}"))
            .arg(format!("v{i}"))
            .ignore();
    }
    pipe.cmd("INCRBY").arg("boot:counter").arg(41).ignore();
    pipe.cmd("SADD").arg("boot:set").arg("x").arg("y").ignore();
    let _: () = pipe.query(&mut ca).expect("populate a");
    let want: i64 = q(&mut ca, &["DBSIZE"]);
    assert_eq!(want, KEYS as i64 + 2);

    let b = pair.start(1, "anti-entropy-interval-ms = 1000", &[]);
    let mut cb = b.conn();
    wait_until(CONVERGE, "b fills up to a's key count", || {
        q::<i64>(&mut cb, &["DBSIZE"]) == want
    });
    assert_eq!(q::<String>(&mut cb, &["GET", "boot:0"]), "v0");
    assert_eq!(
        q::<String>(&mut cb, &["GET", &format!("boot:{}", KEYS - 1)]),
        format!("v{}", KEYS - 1)
    );
    assert_eq!(q::<String>(&mut cb, &["GET", "boot:counter"]), "41");
    assert_eq!(q::<i64>(&mut cb, &["SCARD", "boot:set"]), 2);

    // INFO replication shows the progress (published every 100 ms).
    wait_until(CONVERGE, "b reports the anti-entropy transfer", || {
        info_u64(&mut cb, "anti_entropy_entries_received") >= (KEYS / 2) as u64
            && info_u64(&mut cb, "region_peers_connected") == 1
    });
    wait_until(CONVERGE, "a round completes on b's side or a's", || {
        info_u64(&mut cb, "anti_entropy_rounds") + info_u64(&mut ca, "anti_entropy_rounds") > 0
    });
}

/// The replication thread runs at a lower priority (5 nicer) than the client I/O threads,
/// so that local requests win a contended core — whatever nice value the test runs at.
#[cfg(target_os = "linux")]
#[test]
fn replication_thread_yields_the_core_to_client_threads() {
    let pair = Pair::new();
    let a = pair.start(0, "", &[]);
    let nice_of = |name: &str| -> Option<i64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", a.pid())).ok()?;
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
                // Fields after the parenthesised command: state is field 3, nice field 19.
                let rest = &stat[stat.rfind(')')? + 2..];
                return rest.split(' ').nth(16)?.parse().ok();
            }
        }
        None
    };
    let main = nice_of("meridian").expect("the main (client) thread's nice value");
    // It lowers its own priority as it starts: wait for that, with a deadline.
    let want = (main + 5).min(19);
    wait_until(
        CONVERGE,
        "the replication thread runs 5 nicer than the process",
        || nice_of("meridian-repl") == Some(want),
    );
}

/// A delta dropped from a full per-shard delta log (`delta-log-max = 2`, a pipelined burst
/// into one shard) never ships: the drain reports the loss, anti-entropy repairs its slot
/// with the peer, and only then may GC collect the tombstone it left. The removed member
/// stays removed everywhere, also after GC and later anti-entropy rounds.
#[test]
fn a_delta_lost_from_a_full_log_is_repaired_before_gc() {
    let pair = Pair::new();
    let ae = "anti-entropy-interval-ms = 1000";
    let a = pair.start_top(0, "delta-log-max = 2", ae, &[]);
    let b = pair.start(1, ae, &[]);
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let _: i64 = q(&mut ca, &["SADD", "lost:set", "m"]);
    wait_until(CONVERGE, "b has the member", || {
        q::<i64>(&mut cb, &["SISMEMBER", "lost:set", "m"]) == 1
    });
    // The removal, then enough writes into the same shard to push it out of the log
    // before the replication thread drains it (the batch wakes it once, after its replies).
    let shard = key_slot(b"lost:set") % 16;
    let fillers: Vec<String> = (0..)
        .map(|i| format!("lost:fill:{i}"))
        .filter(|k| key_slot(k.as_bytes()) % 16 == shard)
        .take(64)
        .collect();
    let mut pipe = redis::pipe();
    pipe.cmd("SREM").arg("lost:set").arg("m").ignore();
    for k in &fillers {
        pipe.cmd("SET").arg(k).arg("v").ignore();
    }
    let _: () = pipe.query(&mut ca).expect("burst");
    wait_until(CONVERGE, "a reports the loss", || {
        info_u64(&mut ca, "repl_local_losses") >= 1
            && info_u64(&mut ca, "deltas_dropped_from_log") >= 1
    });
    wait_until(CONVERGE, "the loss is repaired, b converged", || {
        info_u64(&mut ca, "repl_local_gap_slots") == 0
            && q::<i64>(&mut cb, &["EXISTS", "lost:set"]) == 0
            && q::<i64>(&mut cb, &["EXISTS", &fillers[63]]) == 1
    });
    // Frontiers circulate (every 5 s), then GC collects the tombstone on both sides.
    wait_until(CONVERGE, "the tombstone is collected", || {
        info_u64(&mut ca, "tombstones") == 0 && info_u64(&mut cb, "tombstones") == 0
    });
    let rounds = info_u64(&mut ca, "repl_ae_rounds") + info_u64(&mut cb, "repl_ae_rounds");
    wait_until(CONVERGE, "more anti-entropy rounds ran after GC", || {
        info_u64(&mut ca, "repl_ae_rounds") + info_u64(&mut cb, "repl_ae_rounds") >= rounds + 2
    });
    for c in [&mut ca, &mut cb] {
        assert_eq!(
            q::<i64>(c, &["SISMEMBER", "lost:set", "m"]),
            0,
            "nothing came back"
        );
    }
    assert_eq!(info_field(&mut ca, "repl_restart_handshake_done"), "1");
    assert_eq!(info_u64(&mut ca, "repl_clock_held_deltas"), 0);
}

/// A value just under the largest key state a region link frame carries replicates; one
/// over it, and a set grown past it by small writes, are refused before they are
/// acknowledged; and the link keeps flowing afterwards (a frame too large to encode used
/// to wedge it: resent, never acknowledged).
#[test]
fn a_value_larger_than_a_link_frame_is_refused_and_the_link_flows() {
    let pair = Pair::new();
    let a = pair.start(0, "", &[]);
    let b = pair.start(1, "", &[]);
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let max = meridian_replication::LINK_MAX_ENTRY_BYTES;
    let under = "x".repeat(max - 4096);
    let _: () = q(&mut ca, &["SET", "big", &under]);
    wait_until(CONVERGE, "b has the value just under the bound", || {
        redis::cmd("STRLEN")
            .arg("big")
            .query::<usize>(&mut cb)
            .is_ok_and(|n| n == under.len())
    });
    let over = "x".repeat(max + 1);
    let e = common::qerr(&mut ca, &["SET", "huge", &over]);
    assert!(e.contains("the most replication carries"), "{e}");
    let e = common::qerr(&mut ca, &["APPEND", "big", &"y".repeat(8192)]);
    assert!(e.contains("the most replication carries"), "{e}");
    // A set grown by small writes stops at the bound.
    let member = |i: usize| format!("{i:0>200}");
    let mut refused = None;
    for i in 0..max / 200 {
        match redis::cmd("SADD")
            .arg("set")
            .arg(member(i))
            .query::<i64>(&mut ca)
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, common::err_text(&e)));
                break;
            }
        }
    }
    let (n, e) = refused.expect("SADD refused before the set passes the bound");
    assert!(e.contains("the most replication carries"), "{e}");
    let exists: i64 = q(&mut ca, &["EXISTS", "huge"]);
    assert_eq!(exists, 0);
    let _: () = q(&mut ca, &["SET", "after", "1"]);
    wait_until(
        CONVERGE,
        "b has the set and the write after the refusals",
        || {
            let card = redis::cmd("SCARD").arg("set").query::<usize>(&mut cb);
            let after = redis::cmd("GET")
                .arg("after")
                .query::<Option<String>>(&mut cb);
            card.is_ok_and(|c| c == n) && after.is_ok_and(|v| v.as_deref() == Some("1"))
        },
    );
}

fn lrange(c: &mut redis::Connection, key: &str) -> Vec<String> {
    q(c, &["LRANGE", key, "0", "-1"])
}

/// Lists under a partition: both regions push at both ends, insert, set and pop — the
/// same head popped on both sides — and after the heal hold exactly the same list: every
/// pushed element once, the head popped twice removed once, nothing else lost.
#[test]
fn lists_converge_exactly_after_concurrent_pushes_and_pops_under_a_partition() {
    let pair = Pair::new();
    let a = pair.start(0, "", &[]);
    let b = pair.start(1, "", &[]);
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let _: i64 = q(&mut ca, &["RPUSH", "q", "x", "y", "z"]);
    wait_until(CONVERGE, "b has a's list", || {
        lrange(&mut cb, "q") == ["x", "y", "z"]
    });
    let _: () = q(&mut ca, &["MERIDIAN", "LINK", "DOWN", "b"]);
    let _: () = q(&mut cb, &["MERIDIAN", "LINK", "DOWN", "a"]);

    // Both pop the head: each client gets it.
    assert_eq!(q::<String>(&mut ca, &["LPOP", "q"]), "x");
    assert_eq!(q::<String>(&mut cb, &["LPOP", "q"]), "x");
    let _: i64 = q(&mut ca, &["RPUSH", "q", "a1", "a2"]);
    let _: i64 = q(&mut ca, &["LPUSH", "q", "ah"]);
    let _: i64 = q(&mut cb, &["RPUSH", "q", "b1"]);
    let _: i64 = q(&mut cb, &["LPUSH", "q", "bh"]);
    let _: i64 = q(&mut cb, &["LINSERT", "q", "AFTER", "y", "b-after-y"]);
    let _: () = q(&mut ca, &["LSET", "q", "-1", "a2-set"]);
    // b pops its own tail element; a pops z, which b still has.
    assert_eq!(q::<String>(&mut cb, &["RPOP", "q"]), "b1");
    let _: i64 = q(&mut ca, &["LREM", "q", "1", "z"]);

    let _: () = q(&mut ca, &["MERIDIAN", "LINK", "UP", "b"]);
    let _: () = q(&mut cb, &["MERIDIAN", "LINK", "UP", "a"]);
    wait_until(CONVERGE, "both regions hold the same list", || {
        let (la, lb) = (lrange(&mut ca, "q"), lrange(&mut cb, "q"));
        la == lb && la.len() == 6
    });
    let got = lrange(&mut ca, "q");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["a1", "a2-set", "ah", "b-after-y", "bh", "y"],
        "every element pushed once, popped ones removed once: {got:?}"
    );
    // Each region's own order holds within the merged one.
    let at = |v: &str| got.iter().position(|x| x == v).expect("present");
    assert!(at("y") < at("b-after-y") && at("b-after-y") < at("a1") && at("a1") < at("a2-set"));
    assert!(at("ah") < at("y") && at("bh") < at("y"));
    assert_eq!(q::<i64>(&mut cb, &["LLEN", "q"]), 6);
}

/// A client blocked in region a is woken by a push made in region b.
#[test]
fn blpop_in_one_region_is_woken_by_a_push_in_the_other() {
    let pair = Pair::new();
    let a = pair.start(0, "", &[]);
    let b = pair.start(1, "", &[]);
    let (mut ca, mut cb) = (a.conn(), b.conn());
    // The link is up once a write crosses it.
    let _: () = q(&mut ca, &["SET", "ready", "1"]);
    wait_until(CONVERGE, "the link carries writes", || {
        q::<Option<String>>(&mut cb, &["GET", "ready"]).is_some()
    });
    let mut waiter = a.conn();
    let t = std::thread::spawn(move || -> Option<(String, String)> {
        redis::cmd("BLPOP")
            .arg("jobs")
            .arg("0")
            .query(&mut waiter)
            .expect("blpop")
    });
    wait_until(CONVERGE, "the client blocks in a", || {
        info_u64(&mut ca, "blocked_clients") == 1
    });
    let _: i64 = q(&mut cb, &["RPUSH", "jobs", "from-b"]);
    assert_eq!(
        t.join().expect("blpop"),
        Some(("jobs".into(), "from-b".into()))
    );
    wait_until(CONVERGE, "b sees the pop made in a", || {
        q::<i64>(&mut cb, &["LLEN", "jobs"]) == 0
    });
}

/// Sorted sets under a partition: both regions run ZADD, ZINCRBY and ZREM on the same
/// members while the link is cut, then heal. Both converge to exactly the documented
/// outcome: increments from both regions add up, a ZADD concurrent with a ZREM keeps the
/// member with the ZADD's score (add-wins), a ZINCRBY concurrent with a ZREM keeps the
/// member with just the increments the ZREM had not seen.
#[test]
fn sorted_sets_converge_after_concurrent_writes_in_a_partition() {
    let pair = Pair::new();
    let a = pair.start(0, "", &[]);
    let b = pair.start(1, "", &[]);
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let _: i64 = q(&mut ca, &["ZADD", "lb", "10", "p1", "20", "p2", "30", "p3"]);
    wait_until(CONVERGE, "b holds a's sorted set", || {
        q::<i64>(&mut cb, &["ZCARD", "lb"]) == 3
    });

    let link = |c: &mut redis::Connection, verb: &str, to: &str| {
        let _: String = q(c, &["MERIDIAN", "LINK", verb, to]);
    };
    link(&mut ca, "DOWN", "b");
    link(&mut cb, "DOWN", "a");

    let _: String = q(&mut ca, &["ZINCRBY", "lb", "5", "p1"]);
    let _: i64 = q(&mut ca, &["ZREM", "lb", "p2"]);
    let _: i64 = q(&mut ca, &["ZADD", "lb", "100", "p4"]);
    let _: String = q(&mut ca, &["ZINCRBY", "lb", "1", "p3"]);

    let _: String = q(&mut cb, &["ZINCRBY", "lb", "7", "p1"]);
    let _: i64 = q(&mut cb, &["ZADD", "lb", "25", "p2"]);
    let _: i64 = q(&mut cb, &["ZREM", "lb", "p3"]);
    let _: String = q(&mut cb, &["ZINCRBY", "lb", "2.5", "p5"]);

    // Each side sees only its own writes meanwhile.
    assert_eq!(q::<String>(&mut ca, &["ZSCORE", "lb", "p1"]), "15");
    assert_eq!(q::<String>(&mut cb, &["ZSCORE", "lb", "p1"]), "17");

    link(&mut ca, "UP", "b");
    link(&mut cb, "UP", "a");

    let want: Vec<String> = ["p3", "1", "p5", "2.5", "p1", "22", "p2", "25", "p4", "100"]
        .map(String::from)
        .to_vec();
    let range = |c: &mut redis::Connection| -> Vec<String> {
        q(c, &["ZRANGE", "lb", "0", "-1", "WITHSCORES"])
    };
    let mut last = (Vec::new(), Vec::new());
    wait_until(
        CONVERGE,
        "both regions converge to the documented outcome",
        || {
            last = (range(&mut ca), range(&mut cb));
            last.0 == want && last.1 == want
        },
    );
    assert_eq!(q::<i64>(&mut ca, &["ZRANK", "lb", "p2"]), 3);
    assert_eq!(q::<i64>(&mut cb, &["ZREVRANK", "lb", "p2"]), 1);
}
