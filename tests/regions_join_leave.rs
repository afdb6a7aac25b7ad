//! Regions join and leave at run time (real processes on loopback, QUIC with certificates
//! from one deployment CA):
//! - region c, configured with a and b, joins a running a+b deployment whose nodes were
//!   never told about it: they accept it without a restart, it bootstraps by anti-entropy,
//!   writes flow every way; a and b's GC waits for it; once it is gone and
//!   `MERIDIAN REGION FORGET c` was issued on a and b, they collect their tombstones;
//! - a region cut off past `peer-gc-bound-ms` is expelled, its incarnation refused when it
//!   comes back, and readmitted once restarted empty.
//!
//! Every check waits on a condition with a deadline.

mod common;

use common::{info_field, info_u64, q, qerr, wait_until, Server};
use std::path::PathBuf;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
const NAMES: [&str; 3] = ["a", "b", "c"];

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
        .port()
}

/// Certificates (one CA, regions a, b, c) and replication ports.
struct Deployment {
    dir: PathBuf,
    udp: [u16; 3],
}

impl Deployment {
    fn new() -> Deployment {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meridian-join-{}-{n}", std::process::id()));
        meridian_replication::transport::quic::write_deployment(&dir, &NAMES)
            .expect("write certificates");
        Deployment {
            dir,
            udp: [free_udp_port(), free_udp_port(), free_udp_port()],
        }
    }

    /// Region `i`, configured with the regions `peers` only, `extra` lines in its
    /// `[replication]` table.
    fn start(&self, i: usize, peers: &[usize], extra: &str) -> Server {
        self.start_as(i, peers, extra, "addr")
    }

    /// [`Deployment::start`], peers named by `addr` (region mode) or `seeds` (node mode).
    fn start_as(&self, i: usize, peers: &[usize], extra: &str, by: &str) -> Server {
        // A region that comes back is readmitted if it started more than
        // max-clock-offset-ms after it was expelled or forgotten: 1 s, not 10, for quick
        // restarts here.
        self.start_full(i, peers, "max-clock-offset-ms = 1000", extra, by)
    }

    /// [`Deployment::start_as`] with `top` lines among the top-level keys.
    fn start_full(&self, i: usize, peers: &[usize], top: &str, extra: &str, by: &str) -> Server {
        let d = self.dir.display();
        let peers: Vec<String> = peers
            .iter()
            .map(|&j| {
                let at = format!("\"127.0.0.1:{}\"", self.udp[j]);
                let at = if by == "seeds" { format!("[{at}]") } else { at };
                format!(
                    "{{ region = \"{}\", region-id = {j}, {by} = {at} }}",
                    NAMES[j]
                )
            })
            .collect();
        let toml = format!(
            "region = \"{r}\"\nregion-id = {i}\n{top}\n\n[replication]\nlisten = \"127.0.0.1:{port}\"\n\
             ca-cert = \"{d}/ca.pem\"\ncert = \"{d}/{r}.pem\"\nkey = \"{d}/{r}-key.pem\"\n\
             resend-timeout-ms = 200\nanti-entropy-interval-ms = 1000\ngc-interval-ms = 100\n\
             {extra}\npeers = [{}]\n",
            peers.join(", "),
            r = NAMES[i],
            port = self.udp[i],
        );
        Server::start_with_config(&toml, &["--io-threads", "1"])
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `MERIDIAN REGION LIST` as (region, state, joined) rows.
fn regions(con: &mut redis::Connection) -> Vec<(String, String, i64)> {
    let rows: Vec<redis::Value> = q(con, &["MERIDIAN", "REGION", "LIST"]);
    rows.into_iter()
        .map(|row| {
            let redis::Value::Array(fields) = row else {
                panic!("a row is a list of fields: {row:?}");
            };
            let text = |v: &redis::Value| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                other => panic!("not text: {other:?}"),
            };
            let mut region = String::new();
            let mut state = String::new();
            let mut joined = -1;
            for kv in fields.chunks(2) {
                match text(&kv[0]).as_str() {
                    "region" => region = text(&kv[1]),
                    "state" => state = text(&kv[1]),
                    "joined" => {
                        let redis::Value::Int(n) = kv[1] else {
                            panic!("joined is an integer");
                        };
                        joined = n;
                    }
                    _ => {}
                }
            }
            (region, state, joined)
        })
        .collect()
}

fn state_of(con: &mut redis::Connection, region: &str) -> Option<String> {
    regions(con)
        .into_iter()
        .find(|(r, _, _)| r == region)
        .map(|(_, s, _)| s)
}

#[test]
fn a_region_joins_a_running_pair_then_is_forgotten_and_gc_goes_on() {
    let dep = Deployment::new();
    // a and b know each other only.
    let a = dep.start(0, &[1], "");
    let b = dep.start(1, &[0], "");
    let (mut ca, mut cb) = (a.conn(), b.conn());
    for i in 0..200 {
        let _: () = q(&mut ca, &["SET", &format!("a:{i}"), "v"]);
    }
    let _: i64 = q(&mut cb, &["INCRBY", "ctr", "5"]);
    wait_until(DEADLINE, "a and b converge", || {
        q::<i64>(&mut cb, &["DBSIZE"]) == 201 && q::<i64>(&mut ca, &["DBSIZE"]) == 201
    });
    assert_eq!(
        regions(&mut ca)
            .into_iter()
            .map(|(r, _, _)| r)
            .collect::<Vec<_>>(),
        ["a", "b"]
    );

    // c joins: configured with a and b, which were not told about it.
    let c = dep.start(2, &[0, 1], "");
    let mut cc = c.conn();
    wait_until(DEADLINE, "c bootstraps from its peers", || {
        q::<i64>(&mut cc, &["DBSIZE"]) == 201
    });
    assert_eq!(q::<String>(&mut cc, &["GET", "a:199"]), "v");
    wait_until(DEADLINE, "a and b list c as a joined peer, up", || {
        [&mut ca, &mut cb].into_iter().all(|con| {
            regions(con)
                .iter()
                .any(|(r, s, j)| r == "c" && s == "up" && *j == 1)
        })
    });
    assert_eq!(info_u64(&mut ca, "repl_regions_joined"), 1);
    // Writes flow every way, counters stay exact.
    let _: i64 = q(&mut cc, &["INCRBY", "ctr", "10"]);
    let _: () = q(&mut cc, &["SET", "from-c", "x"]);
    let _: i64 = q(&mut ca, &["INCRBY", "ctr", "100"]);
    for con in [&mut ca, &mut cb, &mut cc] {
        wait_until(DEADLINE, "every region holds every write", || {
            q::<Option<String>>(con, &["GET", "from-c"]).as_deref() == Some("x")
                && q::<String>(con, &["GET", "ctr"]) == "115"
        });
    }

    // c goes away for good. Deletes in a leave tombstones that a and b keep: their GC
    // waits for c (its default bound is an hour).
    drop(c);
    for i in 0..50 {
        let _: i64 = q(&mut ca, &["DEL", &format!("a:{i}")]);
    }
    wait_until(DEADLINE, "b got the deletes", || {
        q::<i64>(&mut cb, &["DBSIZE"]) == 152
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(info_u64(&mut ca, "tombstones") >= 50, "GC waits for c");
    assert!(info_u64(&mut cb, "tombstones") >= 50, "GC waits for c");

    // Wrong arguments get clear errors.
    assert!(qerr(&mut ca, &["MERIDIAN", "REGION", "FORGET"]).contains("usage"));
    assert!(qerr(&mut ca, &["MERIDIAN", "REGION", "FORGET", "zz"]).contains("unknown region"));
    assert!(qerr(&mut ca, &["MERIDIAN", "REGION", "FORGET", "a"]).contains("this region"));
    assert!(qerr(&mut ca, &["MERIDIAN", "REGION", "FORGET", "c", "x"]).contains("usage"));
    assert!(qerr(&mut ca, &["MERIDIAN", "REGION", "NOPE"]).contains("usage"));
    assert_eq!(q::<String>(&mut ca, &["MERIDIAN", "REGION"]), "a");

    // Forgotten on each remaining region: GC no longer waits for it.
    for con in [&mut ca, &mut cb] {
        let _: () = q(con, &["MERIDIAN", "REGION", "FORGET", "c"]);
    }
    for con in [&mut ca, &mut cb] {
        wait_until(DEADLINE, "c is no longer listed", || {
            state_of(con, "c").is_none()
        });
        wait_until(DEADLINE, "tombstones are collected without c", || {
            info_u64(con, "tombstones") == 0
        });
        assert_eq!(info_u64(con, "repl_regions_forgotten"), 1);
        assert!(info_field(con, "repl_peers") == "1");
    }
    // a and b still replicate.
    let _: () = q(&mut ca, &["SET", "after", "1"]);
    wait_until(DEADLINE, "a and b still replicate", || {
        q::<Option<String>>(&mut cb, &["GET", "after"]).as_deref() == Some("1")
    });

    // c comes back as a new process (empty, a new incarnation started after it was
    // forgotten): readmitted, it bootstraps again.
    let c = dep.start(2, &[0, 1], "");
    let mut cc = c.conn();
    wait_until(DEADLINE, "the new c bootstraps", || {
        q::<i64>(&mut cc, &["DBSIZE"]) == q::<i64>(&mut ca, &["DBSIZE"])
            && q::<Option<String>>(&mut cc, &["GET", "after"]).as_deref() == Some("1")
    });
    wait_until(DEADLINE, "a lists c again, up", || {
        state_of(&mut ca, "c").as_deref() == Some("up")
    });
}

#[test]
fn a_region_cut_off_past_the_gc_bound_is_refused_until_restarted_empty() {
    let dep = Deployment::new();
    // Long enough for a restarted node to be connected (and heard) within it: a peer notices
    // a dead connection only after the QUIC idle timeout (5 s), then redials.
    let bound = "peer-gc-bound-ms = 10000";
    let top = "max-clock-offset-ms = 1000";
    let a = dep.start_full(0, &[1], top, bound, "addr");
    let b = dep.start_full(1, &[0], top, bound, "addr");
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let _: () = q(&mut ca, &["SADD", "s", "m"]);
    wait_until(DEADLINE, "b holds the member", || {
        q::<i64>(&mut cb, &["SCARD", "s"]) == 1
    });
    // Cut at a (frames both ways dropped there) past the bound: each expels the other,
    // and a collects the removal's tombstone without b.
    let _: String = q(&mut ca, &["MERIDIAN", "LINK", "DOWN", "b"]);
    let _: i64 = q(&mut ca, &["SREM", "s", "m"]);
    let _: () = q(&mut cb, &["SET", "b-only", "lost"]);
    wait_until(DEADLINE, "a expels b", || {
        state_of(&mut ca, "b").as_deref() == Some("expelled")
    });
    wait_until(DEADLINE, "a collects without b", || {
        info_u64(&mut ca, "tombstones") == 0
    });
    wait_until(DEADLINE, "b expels a", || {
        state_of(&mut cb, "a").as_deref() == Some("expelled")
    });
    // Healed: b's incarnation, which still holds the member, is refused; nothing merged.
    let _: String = q(&mut ca, &["MERIDIAN", "LINK", "UP", "b"]);
    wait_until(DEADLINE, "both sides are told they are refused", || {
        info_u64(&mut ca, "repl_refusals_received") > 0
            && info_u64(&mut cb, "repl_refusals_received") > 0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(q::<i64>(&mut ca, &["SCARD", "s"]), 0, "no zombie member");
    assert_eq!(q::<Option<String>>(&mut ca, &["GET", "b-only"]), None);
    assert_eq!(state_of(&mut ca, "b").as_deref(), Some("expelled"));

    // b's operator restarts it (empty: a new incarnation): readmitted, bootstraps. What b
    // wrote that never left it is gone.
    drop(cb);
    drop(b);
    let b = dep.start_full(1, &[0], top, bound, "addr");
    let mut cb = b.conn();
    let _: () = q(&mut ca, &["SET", "later", "1"]);
    wait_until(DEADLINE, "the new b is readmitted and converges", || {
        state_of(&mut ca, "b").as_deref() == Some("up")
            && q::<Option<String>>(&mut cb, &["GET", "later"]).as_deref() == Some("1")
    });
    assert_eq!(q::<i64>(&mut cb, &["SCARD", "s"]), 0);
    assert_eq!(q::<Option<String>>(&mut cb, &["GET", "b-only"]), None);
    let _: () = q(&mut cb, &["SET", "from-new-b", "1"]);
    wait_until(DEADLINE, "the new b replicates", || {
        q::<Option<String>>(&mut ca, &["GET", "from-new-b"]).as_deref() == Some("1")
    });
}

/// The same in node mode (peers named by `seeds`): the nodes of a and b learn c's topology
/// from the node that connected, link to it, and forget it on `MERIDIAN REGION FORGET`.
#[test]
fn node_mode_a_region_joins_then_is_forgotten() {
    let dep = Deployment::new();
    let a = dep.start_as(0, &[1], "", "seeds");
    let b = dep.start_as(1, &[0], "", "seeds");
    let (mut ca, mut cb) = (a.conn(), b.conn());
    for i in 0..100 {
        let _: () = q(&mut ca, &["SET", &format!("a:{i}"), "v"]);
    }
    wait_until(DEADLINE, "a and b converge", || {
        q::<i64>(&mut cb, &["DBSIZE"]) == 100
    });
    let c = dep.start_as(2, &[0, 1], "", "seeds");
    let mut cc = c.conn();
    wait_until(DEADLINE, "c bootstraps from its peers", || {
        q::<i64>(&mut cc, &["DBSIZE"]) == 100
    });
    let _: () = q(&mut cc, &["SET", "from-c", "x"]);
    for con in [&mut ca, &mut cb] {
        wait_until(DEADLINE, "c's write reaches a and b", || {
            q::<Option<String>>(con, &["GET", "from-c"]).as_deref() == Some("x")
        });
        wait_until(DEADLINE, "c is a joined peer, up", || {
            regions(con)
                .iter()
                .any(|(r, s, j)| r == "c" && s == "up" && *j == 1)
        });
    }
    drop(c);
    for i in 0..30 {
        let _: i64 = q(&mut ca, &["DEL", &format!("a:{i}")]);
    }
    wait_until(DEADLINE, "b got the deletes", || {
        q::<i64>(&mut cb, &["DBSIZE"]) == 71
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(info_u64(&mut ca, "tombstones") >= 30, "GC waits for c");
    for con in [&mut ca, &mut cb] {
        let _: () = q(con, &["MERIDIAN", "REGION", "FORGET", "c"]);
    }
    for con in [&mut ca, &mut cb] {
        wait_until(DEADLINE, "c is no longer listed", || {
            state_of(con, "c").is_none()
        });
        wait_until(DEADLINE, "tombstones are collected without c", || {
            info_u64(con, "tombstones") == 0
        });
    }
}
