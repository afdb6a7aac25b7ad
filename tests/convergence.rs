//! Issue 19: acknowledged writes must survive local reclaim paths — eviction, tombstone GC,
//! a kill -9 and restart of an in-memory region, expiry — and every region must converge to
//! the value a region that had never lost anything would hold.
//!
//! Three regions (`a`, `b`, `c`) run as separate `meridian` processes on loopback, replicating
//! over QUIC with certificates from `write_deployment`; client ports come from `--port 0`,
//! replication (UDP) ports from [`common::free_port`]. Every test starts its own regions.
//!
//! What is asserted is the *converged* value: every region is polled until all of them equal
//! the expected value, and a timeout fails printing what each region holds. The reply of the
//! write that follows a local loss is only checked to be a sane integer (a region that lost
//! its copy answers from what it holds locally).
//!
//! Where the loss must happen before anti-entropy could repair it (eviction, restart), the
//! region that loses state is cut off (`MERIDIAN LINK DOWN`) between the loss and its write,
//! so the order is the on every run, however slow the machine, and then healed.
//!
//! Knobs: `anti-entropy-interval-ms = 1000` (a region that lost keys is refilled in about a
//! second after healing), `gc-interval-ms = 100` (a GC pass over every shard per 100 ms; the
//! frontier gossip that makes a tombstone collectable is a fixed 5 s), `resend-timeout-ms =
//! 200`.

mod common;

use common::{cmd, free_port, info_u64, q, wait_until, Server};
use redis::Connection;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Deadline for every region to reach the expected value (a debug build on 2 shared cores).
const CONVERGE: Duration = Duration::from_secs(30);
/// Deadline for a tombstone to become collectable: frontiers are gossiped every 5 s, and a
/// region collects once every peer's gossip covers the removal.
const GC_WAIT: Duration = Duration::from_secs(60);
/// Deadline for a key to be evicted (the background cycle or the next write evicts it).
const EVICT_WAIT: Duration = Duration::from_secs(30);
const NAMES: [&str; 3] = ["a", "b", "c"];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

struct Cluster {
    dir: PathBuf,
    /// Extra top-level config lines, the same for every region.
    top: String,
    udp: [u16; 3],
    servers: Vec<Option<Server>>,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// Start with `top` (TOML lines for the top level of every region's config) added.
    fn start_with(top: &str) -> Cluster {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("meridian-converge-{}-{n}", std::process::id()));
        meridian_replication::transport::quic::write_deployment(&dir, &NAMES)
            .expect("write certificates");
        let mut cl = Cluster {
            dir,
            top: top.to_string(),
            udp: [free_port(), free_port(), free_port()],
            servers: Vec::new(),
        };
        for i in 0..3 {
            let s = cl.spawn(i);
            cl.servers.push(Some(s));
        }
        cl
    }

    fn config(&self, i: usize) -> String {
        let d = self.dir.display();
        let peers: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| {
                format!(
                    "  {{ region = \"{}\", region-id = {j}, addr = \"127.0.0.1:{}\" }},",
                    NAMES[j], self.udp[j]
                )
            })
            .collect();
        format!(
            "region = \"{r}\"\nregion-id = {i}\n{top}\n[replication]\nlisten = \"127.0.0.1:{port}\"\n\
             ca-cert = \"{d}/ca.pem\"\ncert = \"{d}/{r}.pem\"\nkey = \"{d}/{r}-key.pem\"\n\
             resend-timeout-ms = 200\nanti-entropy-interval-ms = 1000\ngc-interval-ms = 100\n\
             peers = [\n{}\n]\n",
            peers.join("\n"),
            r = NAMES[i],
            top = self.top,
            port = self.udp[i],
        )
    }

    fn spawn(&self, i: usize) -> Server {
        Server::start_with_config(&self.config(i), &["--io-threads", "1"])
    }

    fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().expect("region running")
    }

    fn conn(&self, i: usize) -> Connection {
        self.server(i).conn()
    }

    /// kill -9 region `i` (in memory, no persistence: it loses everything) and start it
    /// again on the same replication port.
    fn kill_and_restart(&mut self, i: usize) {
        // `Server`'s drop is `Child::kill` (SIGKILL) and a wait for the exit.
        self.servers[i] = None;
        self.servers[i] = Some(self.spawn(i));
    }

    /// `MERIDIAN LINK DOWN|UP <to>` on region `on` (it drops frames to and from `to`).
    fn link(&self, on: usize, to: usize, up: bool) {
        let verb = if up { "UP" } else { "DOWN" };
        let _: String = q(&mut self.conn(on), &["MERIDIAN", "LINK", verb, NAMES[to]]);
    }

    /// Cut (or heal) the link between `x` and `y`, on both sides.
    fn cut_pair(&self, x: usize, y: usize, down: bool) {
        self.link(x, y, !down);
        self.link(y, x, !down);
    }

    /// Cut (or heal) every link of region `i`, on both sides.
    fn isolate(&self, i: usize, down: bool) {
        for j in (0..3).filter(|&j| j != i) {
            self.cut_pair(i, j, down);
        }
    }

    /// Wait until `read` gives `want` in every region; on timeout, fail with every region's
    /// last value.
    fn wait_all(&self, what: &str, want: &str, read: impl Fn(&mut Connection) -> String) {
        self.wait_regions(&[A, B, C], what, want, read);
    }

    /// Wait until `read` gives `want` in each of `regions`.
    fn wait_regions(
        &self,
        regions: &[usize],
        what: &str,
        want: &str,
        read: impl Fn(&mut Connection) -> String,
    ) {
        let mut cons: Vec<Connection> = regions.iter().map(|&i| self.conn(i)).collect();
        let deadline = Instant::now() + CONVERGE;
        loop {
            let vals: Vec<String> = cons.iter_mut().map(&read).collect();
            if vals.iter().all(|v| v == want) {
                return;
            }
            if Instant::now() >= deadline {
                let agree = vals.windows(2).all(|w| w[0] == w[1]);
                let each: Vec<String> = regions
                    .iter()
                    .zip(&vals)
                    .map(|(&i, v)| format!("{}={v}", NAMES[i]))
                    .collect();
                panic!(
                    "{what}: expected {want} in {}, after {CONVERGE:?} {} [{}]",
                    if regions.len() == 3 {
                        "every region".to_string()
                    } else {
                        format!("{regions:?}")
                    },
                    if agree {
                        "they agree on another value"
                    } else {
                        "they still disagree"
                    },
                    each.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A reply (or error) as text, for comparisons and failure messages; never panics.
fn read(c: &mut Connection, args: &[&str]) -> String {
    match cmd(args).query::<redis::Value>(c) {
        Ok(redis::Value::Nil) => "(nil)".into(),
        Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(redis::Value::Int(n)) => n.to_string(),
        Ok(redis::Value::Okay) => "OK".into(),
        Ok(redis::Value::SimpleString(s)) => s,
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error: {e}"),
    }
}

fn get(key: &str) -> impl Fn(&mut Connection) -> String + '_ {
    move |c| read(c, &["GET", key])
}

/// The value and its TTL: `"v2 ttl=-1"` (no TTL), `"v2 ttl=3597"`, `"(nil) ttl=-2"`.
fn value_and_ttl(key: &str) -> impl Fn(&mut Connection) -> String + '_ {
    move |c| {
        let v = read(c, &["GET", key]);
        let ttl = read(c, &["TTL", key]);
        format!("{v} ttl={ttl}")
    }
}

/// A write whose reply must be an integer (the region answers from what it holds).
fn int(c: &mut Connection, args: &[&str]) -> i64 {
    cmd(args)
        .query::<i64>(c)
        .unwrap_or_else(|e| panic!("{args:?} must answer an integer: {e}"))
}

fn assert_sane(reply: i64, range: std::ops::RangeInclusive<i64>, what: &str) {
    assert!(
        range.contains(&reply),
        "{what} answered {reply}, outside the sane range {range:?}"
    );
}

/// Make region `c` evict `keys` locally: `allkeys-random` with `maxmemory 1` evicts every
/// key (the write that triggers it may itself be refused with OOM once nothing is left),
/// then the limit goes back to 0.
fn evict(c: &mut Connection, keys: &[&str]) {
    let evicted_before = info_u64(c, "evicted_keys");
    let _: () = q(c, &["CONFIG", "SET", "maxmemory-policy", "allkeys-random"]);
    let _: () = q(c, &["CONFIG", "SET", "maxmemory", "1"]);
    let _ = cmd(&["SET", "evict:trigger", "x"]).query::<redis::Value>(c);
    let mut exists = vec!["EXISTS"];
    exists.extend_from_slice(keys);
    wait_until(EVICT_WAIT, &format!("{keys:?} are evicted"), || {
        q::<i64>(c, &exists) == 0
    });
    let _: () = q(c, &["CONFIG", "SET", "maxmemory", "0"]);
    assert!(
        info_u64(c, "evicted_keys") > evicted_before,
        "the keys went, but evicted_keys did not grow"
    );
}

/// `tombstones` of `INFO crdt`: dead keys kept until every region has seen their removal.
fn tombstones(c: &mut Connection) -> u64 {
    info_u64(c, "tombstones")
}

/// Wait until region `i`'s GC has collected at least one more tombstone than before a fresh
/// one is made here: a key written and deleted in `i`. Once that tombstone is collected, the
/// GC frontier covers everything older, so anything GC would drop has been dropped.
fn wait_for_a_gc_pass(cl: &Cluster, i: usize, marker: &str) {
    let mut c = cl.conn(i);
    let _: () = q(&mut c, &["SET", marker, "x"]);
    let dropped = info_u64(&mut c, "repl_gc_dropped");
    let _: i64 = q(&mut c, &["DEL", marker]);
    wait_until(
        GC_WAIT,
        &format!(
            "region {}'s GC collects the tombstone of {marker}",
            NAMES[i]
        ),
        || info_u64(&mut c, "repl_gc_dropped") > dropped,
    );
}

fn stale_fill_reply(c: &mut Connection, key: &str, value: &str, version: &str) -> String {
    read(c, &["SET", key, value, "VERSION", version])
}

/// A `-STALE …` error reply, as [`read`] renders it.
fn is_stale(reply: &str) -> bool {
    reply.starts_with("error:") && reply.contains("STALE")
}

// ---------------------------------------------------------------------------------------
// 1. Eviction, then a counter write in the region that evicted
// ---------------------------------------------------------------------------------------

/// `INCRBY k 10` in a (all read 10); a evicts `k`; `INCR k` in a. The ten acknowledged
/// increments must survive: every region converges to 11 (today: 1).
#[test]
fn incr_after_local_eviction_keeps_acknowledged_increments() {
    let cl = Cluster::start();
    let mut a = cl.conn(A);
    assert_eq!(int(&mut a, &["INCRBY", "k", "10"]), 10);
    cl.wait_all("INCRBY 10 replicated", "10", get("k"));

    cl.isolate(A, true);
    evict(&mut a, &["k"]);
    let r = int(&mut a, &["INCR", "k"]);
    assert_sane(r, 1..=11, "INCR after eviction");
    cl.isolate(A, false);

    cl.wait_all(
        "10 acknowledged increments + 1 after a's eviction",
        "11",
        get("k"),
    );
}

/// Variant: a and b both contributed (10 + 5); a evicts `k` and then `DECRBY k 3` while b,
/// concurrently, `INCR k`. Every region converges to 15 - 3 + 1 = 13.
#[test]
fn decrby_after_local_eviction_with_concurrent_incr_elsewhere() {
    let cl = Cluster::start();
    let (mut a, mut b) = (cl.conn(A), cl.conn(B));
    assert_eq!(int(&mut a, &["INCRBY", "k", "10"]), 10);
    cl.wait_all("a's INCRBY 10 replicated", "10", get("k"));
    assert_eq!(int(&mut b, &["INCRBY", "k", "5"]), 15);
    cl.wait_all("b's INCRBY 5 replicated", "15", get("k"));

    cl.isolate(A, true);
    evict(&mut a, &["k"]);
    let r = int(&mut a, &["DECRBY", "k", "3"]);
    assert_sane(r, -3..=12, "DECRBY after eviction");
    assert_eq!(int(&mut b, &["INCR", "k"]), 16, "b holds all of k");
    cl.isolate(A, false);

    cl.wait_all("15 - 3 (a, after eviction) + 1 (b)", "13", get("k"));
}

/// Variant: a hash field counter. `HINCRBY h f 10` in a; a evicts `h`; `HINCRBY h f 1` in a.
/// Every region converges to 11.
#[test]
fn hincrby_after_local_eviction_keeps_acknowledged_increments() {
    let cl = Cluster::start();
    let mut a = cl.conn(A);
    assert_eq!(int(&mut a, &["HINCRBY", "h", "f", "10"]), 10);
    cl.wait_all("HINCRBY 10 replicated", "10", |c| {
        read(c, &["HGET", "h", "f"])
    });

    cl.isolate(A, true);
    evict(&mut a, &["h"]);
    let r = int(&mut a, &["HINCRBY", "h", "f", "1"]);
    assert_sane(r, 1..=11, "HINCRBY after eviction");
    cl.isolate(A, false);

    cl.wait_all(
        "10 acknowledged field increments + 1 after a's eviction",
        "11",
        |c| read(c, &["HGET", "h", "f"]),
    );
}

// ---------------------------------------------------------------------------------------
// 2. Tombstone GC during a partial partition
// ---------------------------------------------------------------------------------------

/// `INCRBY k 10` in a (all read 10); b↔c cut (a still reaches both); `DEL k` in a; a
/// collects the tombstone while b and c, which cannot compare notes, keep theirs; `INCR k`
/// in a; heal. The DEL removed exactly the 10, so every region converges to 1 (today: -9).
#[test]
fn counter_write_after_tombstone_gc_during_partial_partition() {
    let cl = Cluster::start();
    let mut a = cl.conn(A);
    assert_eq!(int(&mut a, &["INCRBY", "k", "10"]), 10);
    cl.wait_all("INCRBY 10 replicated", "10", get("k"));

    cl.cut_pair(B, C, true);
    assert_eq!(int(&mut a, &["DEL", "k"]), 1);
    cl.wait_all("the DEL reaches b and c through a", "(nil)", get("k"));
    wait_until(GC_WAIT, "a collects the tombstone of k", || {
        tombstones(&mut a) == 0
    });
    eprintln!(
        "a collected the tombstone; b holds {} tombstone(s), c {}",
        tombstones(&mut cl.conn(B)),
        tombstones(&mut cl.conn(C))
    );

    let r = int(&mut a, &["INCR", "k"]);
    assert_sane(r, 1..=1, "INCR after DEL");
    // b and c apply it while still cut from each other (the order), then heal.
    cl.wait_regions(&[B, C], "a's INCR reaches b and c", "1", |c| {
        read(c, &["EXISTS", "k"])
    });
    cl.cut_pair(B, C, false);

    cl.wait_all("DEL removed the 10, then INCR 1", "1", get("k"));
}

/// Variant: the same with a hash field counter: `HINCRBY h f 10`, b↔c cut, `DEL h` in a, a
/// collects the tombstone, `HINCRBY h f 1` in a, heal: every region reads 1 for `h f`.
#[test]
fn hincrby_after_tombstone_gc_during_partial_partition() {
    let cl = Cluster::start();
    let mut a = cl.conn(A);
    assert_eq!(int(&mut a, &["HINCRBY", "h", "f", "10"]), 10);
    cl.wait_all("HINCRBY 10 replicated", "10", |c| {
        read(c, &["HGET", "h", "f"])
    });

    cl.cut_pair(B, C, true);
    assert_eq!(int(&mut a, &["DEL", "h"]), 1);
    cl.wait_all("the DEL reaches b and c through a", "0", |c| {
        read(c, &["EXISTS", "h"])
    });
    wait_until(GC_WAIT, "a collects the tombstone of h", || {
        tombstones(&mut a) == 0
    });

    let r = int(&mut a, &["HINCRBY", "h", "f", "1"]);
    assert_sane(r, 1..=1, "HINCRBY after DEL");
    cl.wait_regions(&[B, C], "a's HINCRBY reaches b and c", "1", |c| {
        read(c, &["EXISTS", "h"])
    });
    cl.cut_pair(B, C, false);

    cl.wait_all("DEL removed the 10, then HINCRBY 1", "1", |c| {
        read(c, &["HGET", "h", "f"])
    });
}

// ---------------------------------------------------------------------------------------
// 3. kill -9 and restart of an in-memory region
// ---------------------------------------------------------------------------------------

/// `INCRBY k 10` in a (all read 10); a is killed (SIGKILL) and restarted empty; `INCR k` in
/// a before anything refilled it (b and c drop a's frames meanwhile); heal. Every region
/// converges to 11 (today: 1).
#[test]
fn incr_after_kill_and_restart_keeps_acknowledged_increments() {
    let mut cl = Cluster::start();
    assert_eq!(int(&mut cl.conn(A), &["INCRBY", "k", "10"]), 10);
    cl.wait_all("INCRBY 10 replicated", "10", get("k"));

    cl.link(B, A, false);
    cl.link(C, A, false);
    cl.kill_and_restart(A);
    let mut a = cl.conn(A);
    assert_eq!(read(&mut a, &["GET", "k"]), "(nil)", "a restarted empty");
    let r = int(&mut a, &["INCR", "k"]);
    assert_sane(r, 1..=11, "INCR after restart");
    cl.link(B, A, true);
    cl.link(C, A, true);

    cl.wait_all(
        "10 acknowledged increments + 1 after a's restart",
        "11",
        get("k"),
    );
}

/// Variant: a (10) and b (5) contributed; a restarts empty and increments 3 times while b
/// concurrently increments twice; heal: 20 everywhere.
#[test]
fn concurrent_incrs_after_restart_in_two_regions() {
    let mut cl = Cluster::start();
    assert_eq!(int(&mut cl.conn(A), &["INCRBY", "k", "10"]), 10);
    cl.wait_all("a's INCRBY 10 replicated", "10", get("k"));
    assert_eq!(int(&mut cl.conn(B), &["INCRBY", "k", "5"]), 15);
    cl.wait_all("b's INCRBY 5 replicated", "15", get("k"));

    cl.link(B, A, false);
    cl.link(C, A, false);
    cl.kill_and_restart(A);
    let writers: Vec<_> = [(A, 3), (B, 2)]
        .into_iter()
        .map(|(i, n)| {
            let mut c = cl.conn(i);
            std::thread::spawn(move || {
                for _ in 0..n {
                    let r = int(&mut c, &["INCR", "k"]);
                    assert_sane(r, 1..=20, "INCR after a's restart");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread");
    }
    cl.link(B, A, true);
    cl.link(C, A, true);

    cl.wait_all("15 + 3 (restarted a) + 2 (b)", "20", get("k"));
}

/// Variant: a region that is behind restarts. a (10) and c (4) contributed; c is cut off
/// and misses a's `INCRBY k 100`; c is killed and restarted empty, still cut off, and
/// increments once; heal: 10 + 4 + 100 + 1 = 115 everywhere.
#[test]
fn lagging_region_restarts_and_increments() {
    let mut cl = Cluster::start();
    assert_eq!(int(&mut cl.conn(A), &["INCRBY", "k", "10"]), 10);
    cl.wait_all("a's INCRBY 10 replicated", "10", get("k"));
    assert_eq!(int(&mut cl.conn(C), &["INCRBY", "k", "4"]), 14);
    cl.wait_all("c's INCRBY 4 replicated", "14", get("k"));

    cl.isolate(C, true);
    assert_eq!(int(&mut cl.conn(A), &["INCRBY", "k", "100"]), 114);
    cl.wait_regions(&[A, B], "a's INCRBY 100 reaches b", "114", get("k"));
    assert_eq!(read(&mut cl.conn(C), &["GET", "k"]), "14", "c is behind");

    // a and b keep dropping c's frames; the restarted c's own links start up.
    cl.kill_and_restart(C);
    let mut c = cl.conn(C);
    let r = int(&mut c, &["INCR", "k"]);
    assert_sane(r, 1..=115, "INCR after c's restart");
    for i in [A, B] {
        cl.link(i, C, true);
    }

    cl.wait_all("10 + 4 + 100 + 1 after c's restart", "115", get("k"));
}

// ---------------------------------------------------------------------------------------
// 4. Writes to a key with a TTL that the writing region evicted
// ---------------------------------------------------------------------------------------

/// b: `SET t v1 EX 3600`; a evicts `t`; a: `SET t v2`. As if a had kept the key, its SET
/// clears the TTL: every region holds v2 with no TTL (today: the 3600 s deadline comes back).
#[test]
fn set_after_local_eviction_clears_the_ttl() {
    let cl = Cluster::start();
    let _: () = q(&mut cl.conn(B), &["SET", "t", "v1", "EX", "3600"]);
    cl.wait_all("b's SET EX replicated", "v1", get("t"));

    let mut a = cl.conn(A);
    cl.isolate(A, true);
    evict(&mut a, &["t"]);
    let _: () = q(&mut a, &["SET", "t", "v2"]);
    cl.isolate(A, false);

    cl.wait_all(
        "v2 without a TTL (SET clears the TTL it would have observed)",
        "v2 ttl=-1",
        value_and_ttl("t"),
    );
}

/// Variant: the TTL was a's own. a: `SET t v1 EX 3600`; a evicts `t`; a: `SET t v2`: no TTL
/// anywhere.
#[test]
fn set_after_local_eviction_clears_the_regions_own_ttl() {
    let cl = Cluster::start();
    let mut a = cl.conn(A);
    let _: () = q(&mut a, &["SET", "t", "v1", "EX", "3600"]);
    cl.wait_all("a's SET EX replicated", "v1", get("t"));

    cl.isolate(A, true);
    evict(&mut a, &["t"]);
    let _: () = q(&mut a, &["SET", "t", "v2"]);
    cl.isolate(A, false);

    cl.wait_all("v2 without a TTL", "v2 ttl=-1", value_and_ttl("t"));
}

/// Variant: b: `SET t v1 EX 3600`; a evicts `t`; a: `SET t v2 EX 60`, a causally later
/// deadline that replaces b's: v2 with a TTL of at most 60 s everywhere.
#[test]
fn set_ex_after_local_eviction_replaces_the_ttl() {
    let cl = Cluster::start();
    let _: () = q(&mut cl.conn(B), &["SET", "t", "v1", "EX", "3600"]);
    cl.wait_all("b's SET EX replicated", "v1", get("t"));

    let mut a = cl.conn(A);
    cl.isolate(A, true);
    evict(&mut a, &["t"]);
    let _: () = q(&mut a, &["SET", "t", "v2", "EX", "60"]);
    cl.isolate(A, false);

    cl.wait_all("v2 with a's 60 s TTL", "v2 ttl<=60", |c| {
        let v = read(c, &["GET", "t"]);
        let ttl = read(c, &["TTL", "t"]);
        match ttl.parse::<i64>() {
            Ok(t) if (1..=60).contains(&t) => format!("{v} ttl<=60"),
            _ => format!("{v} ttl={ttl}"),
        }
    });
}

/// Variant: b: `SET t v1 EX 3600`; a evicts `t`; a: `SET t v2 KEEPTTL`. A KEEPTTL write keeps
/// the deadline it *saw* (README, "Semantics under conflict": TTL, eviction), and a saw none:
/// v2 with no TTL everywhere (before the fix: b's 3600 s deadline stayed).
#[test]
fn set_keepttl_after_local_eviction_keeps_only_the_ttl_it_saw() {
    let cl = Cluster::start();
    let _: () = q(&mut cl.conn(B), &["SET", "t", "v1", "EX", "3600"]);
    cl.wait_all("b's SET EX replicated", "v1", get("t"));

    let mut a = cl.conn(A);
    cl.isolate(A, true);
    evict(&mut a, &["t"]);
    let _: () = q(&mut a, &["SET", "t", "v2", "KEEPTTL"]);
    cl.isolate(A, false);

    cl.wait_all(
        "v2, keeping the (absent) deadline a saw",
        "v2 ttl=-1",
        value_and_ttl("t"),
    );
}

// ---------------------------------------------------------------------------------------
// 5. The invalidation floor outlives the value (expiry, eviction, GC)
// ---------------------------------------------------------------------------------------

/// Wait until every region holds the invalidation floor (INFO `invalidation_tombstones`
/// counts floors raised, by writes and by merges).
fn wait_floor_everywhere(cl: &Cluster) {
    for (i, name) in NAMES.iter().enumerate() {
        let mut c = cl.conn(i);
        wait_until(CONVERGE, &format!("region {name} holds the floor"), || {
            info_u64(&mut c, "invalidation_tombstones") >= 1
        });
    }
}

/// The server's clock (`TIME`) in ms.
fn server_ms(c: &mut Connection) -> i64 {
    let t: Vec<i64> = q(c, &["TIME"]);
    t[0] * 1000 + t[1] / 1000
}

/// Active expiry off (`active-expire-budget = 0`): an expired key stays in the keyspace until
/// something touches it, so the refused fill below is what meets the expired key, as in the
/// issue (with active expiry on, the cycle usually reclaims it first, which kept the floor).
const LAZY_EXPIRY_ONLY: &str = "active-expire-budget = 0\n";

/// Wait, without touching any key, until `c`'s clock has passed `deadline_ms`.
fn wait_past(c: &mut Connection, deadline_ms: i64, what: &str) {
    wait_until(CONVERGE, what, || server_ms(c) > deadline_ms);
}

/// `MERIDIAN INVALIDATE f VERSION 7`; `SET f new VERSION 8` expiring 300 ms later; once it has
/// expired, `SET f old VERSION 6` three times: every one is refused with -STALE (before the
/// fix: the first was, and the refused write dropped the floor with the expired value, so
/// the next two were accepted). Still after a GC pass, and in every region.
#[test]
fn invalidation_floor_survives_expiry() {
    let cl = Cluster::start_with(LAZY_EXPIRY_ONLY);
    let mut a = cl.conn(A);
    let _: i64 = q(&mut a, &["MERIDIAN", "INVALIDATE", "f", "VERSION", "7"]);
    wait_floor_everywhere(&cl);
    let deadline = server_ms(&mut a) + 300;
    let _: () = q(
        &mut a,
        &[
            "SET",
            "f",
            "new",
            "VERSION",
            "8",
            "PXAT",
            &deadline.to_string(),
        ],
    );
    wait_past(&mut a, deadline, "the v8 fill's deadline passes");

    let replies: Vec<String> = (0..3)
        .map(|_| stale_fill_reply(&mut a, "f", "old", "6"))
        .collect();
    assert!(
        replies.iter().all(|r| is_stale(r)),
        "a accepted a fill at version 6 below the floor 7 after the key expired: {replies:?}"
    );
    wait_for_a_gc_pass(&cl, A, "gc-marker");
    for (i, name) in NAMES.iter().enumerate() {
        let r = stale_fill_reply(&mut cl.conn(i), "f", "old", "6");
        assert!(
            is_stale(&r),
            "region {name} accepted a fill at version 6 (floor 7) after expiry and GC: {r}"
        );
    }
    cl.wait_all("no stale fill anywhere", "(nil)", get("f"));
}

/// Variant: the floor and the fill reach c by replication (invalidated in a, filled in b),
/// the fill expires in c, and c refuses `SET f old VERSION 6` three times.
#[test]
fn replicated_invalidation_floor_survives_expiry_elsewhere() {
    let cl = Cluster::start_with(LAZY_EXPIRY_ONLY);
    let _: i64 = q(
        &mut cl.conn(A),
        &["MERIDIAN", "INVALIDATE", "f", "VERSION", "7"],
    );
    wait_floor_everywhere(&cl);
    let mut b = cl.conn(B);
    // Long enough for the fill to reach c before it expires, even on a loaded machine.
    let deadline = server_ms(&mut b) + 3000;
    let _: () = q(
        &mut b,
        &[
            "SET",
            "f",
            "new",
            "VERSION",
            "8",
            "PXAT",
            &deadline.to_string(),
        ],
    );
    let mut c = cl.conn(C);
    // (Should the deadline pass first, the GET reclaims the key and the refused fills below
    // no longer meet an expired value: the test then checks less, but never fails wrongly.)
    wait_until(CONVERGE, "the v8 fill reaches c", || {
        server_ms(&mut c) > deadline || read(&mut c, &["GET", "f"]) != "(nil)"
    });
    wait_past(&mut c, deadline, "the v8 fill's deadline passes");

    let replies: Vec<String> = (0..3)
        .map(|_| stale_fill_reply(&mut c, "f", "old", "6"))
        .collect();
    assert!(
        replies.iter().all(|r| is_stale(r)),
        "c accepted a fill at version 6 below the floor 7 after the key expired: {replies:?}"
    );
    cl.wait_all("no stale fill anywhere", "(nil)", get("f"));
}

/// Variant: the floor on eviction instead of expiry. `INVALIDATE f VERSION 7`; `SET f new
/// VERSION 8`; a evicts `f`; `SET f old VERSION 6` three times in a and once more after a
/// GC pass: all -STALE; every region converges back to "new".
#[test]
fn invalidation_floor_survives_eviction() {
    let cl = Cluster::start();
    let mut a = cl.conn(A);
    let _: i64 = q(&mut a, &["MERIDIAN", "INVALIDATE", "f", "VERSION", "7"]);
    wait_floor_everywhere(&cl);
    let _: () = q(&mut a, &["SET", "f", "new", "VERSION", "8"]);
    cl.wait_all("the v8 fill replicated", "new", get("f"));

    cl.isolate(A, true);
    evict(&mut a, &["f"]);
    let replies: Vec<String> = (0..3)
        .map(|_| stale_fill_reply(&mut a, "f", "old", "6"))
        .collect();
    assert!(
        replies.iter().all(|r| is_stale(r)),
        "a accepted a fill at version 6 below the floor 7 after evicting the key: {replies:?}"
    );
    cl.isolate(A, false);
    wait_for_a_gc_pass(&cl, A, "gc-marker");
    let r = stale_fill_reply(&mut a, "f", "old", "6");
    assert!(
        is_stale(&r),
        "a accepted a fill at version 6 (floor 7) after eviction and GC: {r}"
    );
    cl.wait_all("the v8 fill, back in a by anti-entropy", "new", get("f"));
}
