//! Three regions as separate `meridian` processes on loopback, replicating over QUIC with
//! certificates from `write_deployment`. Every check waits on a condition with a deadline.

mod common;

use common::{info_field, info_u64, q, wait_until, Server};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);
const NAMES: [&str; 3] = ["a", "b", "c"];

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
        .port()
}

struct Cluster {
    /// Injected on every link: `(delay-ms, drop-rate)`.
    faults: (u64, f64),
    dir: PathBuf,
    udp: [u16; 3],
    servers: Vec<Option<Server>>,
}

impl Cluster {
    fn start(faults: (u64, f64)) -> Cluster {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meridian-regions-{}-{n}", std::process::id()));
        meridian_replication::transport::quic::write_deployment(&dir, &NAMES)
            .expect("write certificates");
        let udp = [free_udp_port(), free_udp_port(), free_udp_port()];
        let mut c = Cluster {
            faults,
            dir,
            udp,
            servers: Vec::new(),
        };
        for i in 0..3 {
            let s = c.spawn(i);
            c.servers.push(Some(s));
        }
        c
    }

    fn config(&self, i: usize) -> String {
        let d = self.dir.display();
        let peers: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| {
                format!(
                    "  {{ region = \"{}\", region-id = {j}, addr = \"127.0.0.1:{}\", delay-ms = {}, drop-rate = {} }},",
                    NAMES[j], self.udp[j], self.faults.0, self.faults.1
                )
            })
            .collect();
        format!(
            "region = \"{r}\"\nregion-id = {i}\n\n[replication]\nlisten = \"127.0.0.1:{port}\"\nca-cert = \"{d}/ca.pem\"\ncert = \"{d}/{r}.pem\"\nkey = \"{d}/{r}-key.pem\"\nresend-timeout-ms = 200\nanti-entropy-interval-ms = 2000\npeers = [\n{}\n]\n",
            peers.join("\n"),
            r = NAMES[i],
            port = self.udp[i],
        )
    }

    fn spawn(&self, i: usize) -> Server {
        Server::start_with_config(&self.config(i), &["--io-threads", "1"])
    }

    fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().expect("region running")
    }

    fn conn(&self, i: usize) -> redis::Connection {
        self.server(i).conn()
    }

    /// Wait until `f` gives the same value as `want` in every region.
    fn wait_all(&self, what: &str, want: &str, f: impl Fn(&mut redis::Connection) -> String) {
        let mut cons: Vec<_> = (0..3).map(|i| self.conn(i)).collect();
        wait_until(CONVERGE, what, || cons.iter_mut().all(|c| f(c) == want));
    }

    /// Wait until every region gives the same non-empty value; returns it.
    fn wait_same(&self, what: &str, f: impl Fn(&mut redis::Connection) -> String) -> String {
        let mut cons: Vec<_> = (0..3).map(|i| self.conn(i)).collect();
        let mut out = String::new();
        wait_until(CONVERGE, what, || {
            let vals: Vec<String> = cons.iter_mut().map(&f).collect();
            out = vals[0].clone();
            !out.is_empty() && vals.iter().all(|v| *v == out)
        });
        out
    }

    /// Cut region `i` from both others (it drops frames both ways).
    fn partition(&self, i: usize, down: bool) {
        let mut c = self.conn(i);
        for j in (0..3).filter(|&j| j != i) {
            let _: String = q(
                &mut c,
                &[
                    "MERIDIAN",
                    "LINK",
                    if down { "DOWN" } else { "UP" },
                    NAMES[j],
                ],
            );
        }
    }
}

impl Cluster {
    /// Cut (or restore) every link of region `i`, on both sides: `i` drops frames to and
    /// from the others, and the others drop frames to and from `i`.
    fn cut(&self, i: usize, down: bool) {
        let verb = if down { "DOWN" } else { "UP" };
        for j in (0..3).filter(|&j| j != i) {
            let _: String = q(&mut self.conn(i), &["MERIDIAN", "LINK", verb, NAMES[j]]);
            let _: String = q(&mut self.conn(j), &["MERIDIAN", "LINK", verb, NAMES[i]]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(Path::new(&self.dir));
    }
}

fn get(c: &mut redis::Connection, key: &str) -> String {
    q::<Option<String>>(c, &["GET", key]).unwrap_or_default()
}

fn incr_from_all(cl: &Cluster, key: &'static str, per_region: usize) {
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let mut c = cl.conn(i);
            std::thread::spawn(move || {
                for _ in 0..per_region {
                    let _: i64 = q(&mut c, &["INCR", key]);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
}

#[test]
fn three_regions_converge() {
    // Lossy, delayed links: resends and anti-entropy must still converge exactly.
    let cl = Cluster::start((20, 0.1));

    // Concurrent INCR everywhere → exact total everywhere.
    incr_from_all(&cl, "hits", 200);
    cl.wait_all("every region counts 600 hits", "600", |c| get(c, "hits"));

    // Concurrent SET → one winner everywhere.
    for (i, name) in NAMES.iter().enumerate() {
        let _: String = q(&mut cl.conn(i), &["SET", "winner", name]);
    }
    let w = cl.wait_same("SET converges", |c| get(c, "winner"));
    assert!(NAMES.contains(&w.as_str()));

    // SADD/SREM conflict → add wins.
    let _: i64 = q(&mut cl.conn(0), &["SADD", "s", "m", "other"]);
    cl.wait_all("s replicated", "1", |c| {
        q::<i64>(c, &["SISMEMBER", "s", "m"]).to_string()
    });
    cl.partition(2, true);
    let _: i64 = q(&mut cl.conn(0), &["SREM", "s", "m"]);
    let _: i64 = q(&mut cl.conn(2), &["SADD", "s", "m"]);
    cl.partition(2, false);
    cl.wait_all("concurrent SADD wins over SREM", "1", |c| {
        q::<i64>(c, &["SISMEMBER", "s", "m"]).to_string()
    });

    // EXPIRE replicates: the TTL reaches every region, then the key is gone everywhere.
    let _: String = q(&mut cl.conn(0), &["SET", "ttl", "v"]);
    cl.wait_all("ttl key replicated", "v", |c| get(c, "ttl"));
    let _: i64 = q(&mut cl.conn(1), &["PEXPIRE", "ttl", "3000"]);
    cl.wait_all("expired everywhere", "", |c| get(c, "ttl"));

    // Partition c, write on both sides, heal → converged.
    cl.partition(2, true);
    for _ in 0..50 {
        let _: i64 = q(&mut cl.conn(0), &["INCR", "part"]);
        let _: i64 = q(&mut cl.conn(2), &["INCR", "part"]);
    }
    let _: String = q(&mut cl.conn(2), &["SET", "only-c", "1"]);
    let mut b = cl.conn(1);
    wait_until(CONVERGE, "b sees a's side", || get(&mut b, "part") == "50");
    cl.partition(2, false);
    cl.wait_all("partition healed (counter)", "100", |c| get(c, "part"));
    cl.wait_all("partition healed (c's key)", "1", |c| get(c, "only-c"));
}

#[test]
fn killed_region_converges_after_restart() {
    let mut cl = Cluster::start((0, 0.0));
    let _: i64 = q(&mut cl.conn(0), &["INCR", "before"]);
    cl.wait_all("initial replication", "1", |c| get(c, "before"));

    // Writers in a and b; c is killed (SIGKILL) mid-way and restarted.
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let mut c = cl.conn(i);
            std::thread::spawn(move || {
                for _ in 0..300 {
                    let _: i64 = q(&mut c, &["INCR", "during"]);
                }
            })
        })
        .collect();
    let mut a = cl.conn(0);
    wait_until(CONVERGE, "writes under way", || {
        get(&mut a, "during").parse::<u64>().unwrap_or(0) >= 50
    });
    cl.servers[2] = None; // Server's drop kills the process (Child::kill = SIGKILL).
    let restarted = cl.spawn(2);
    cl.servers[2] = Some(restarted);
    for w in writers {
        w.join().expect("writer thread");
    }
    cl.wait_all("restarted region converges", "600", |c| get(c, "during"));
    cl.wait_all("old state restored", "1", |c| get(c, "before"));
}

#[test]
fn del_concurrent_with_incr_keeps_unobserved_increments() {
    let cl = Cluster::start((0, 0.0));
    // 10 increments everybody has seen.
    for i in 0..10 {
        let _: i64 = q(&mut cl.conn(i % 3), &["INCR", "k"]);
    }
    cl.wait_all("initial increments replicated", "10", |c| get(c, "k"));

    // c is cut off (both sides). a deletes what it observed (10); concurrently c increments
    // 7 times, which a's DEL cannot have observed.
    cl.cut(2, true);
    let _: i64 = q(&mut cl.conn(0), &["DEL", "k"]);
    for _ in 0..7 {
        let _: i64 = q(&mut cl.conn(2), &["INCR", "k"]);
    }
    // b sees the DEL (it observed it before its own increments), then adds 3 on top.
    let mut b = cl.conn(1);
    wait_until(CONVERGE, "b sees a's DEL", || get(&mut b, "k").is_empty());
    for _ in 0..3 {
        let _: i64 = q(&mut b, &["INCR", "k"]);
    }
    let mut a = cl.conn(0);
    wait_until(CONVERGE, "a sees b's increments", || {
        get(&mut a, "k") == "3"
    });
    assert_eq!(
        get(&mut cl.conn(2), "k"),
        "17",
        "c is cut off: it still counts 10 + 7"
    );

    // Heal: the DEL removes only the 10 increments it observed; c's 7 and b's 3 survive.
    cl.cut(2, false);
    cl.wait_all("unobserved increments survive the DEL", "10", |c| {
        get(c, "k")
    });
    // And it stays a counter: one more increment anywhere lands everywhere.
    let _: i64 = q(&mut cl.conn(2), &["INCR", "k"]);
    cl.wait_all("counter still works after the merge", "11", |c| get(c, "k"));
}

#[test]
fn node_with_foreign_ca_is_refused_and_clients_keep_working() {
    let cl = Cluster::start((0, 0.0));
    let _: String = q(&mut cl.conn(0), &["SET", "warm", "1"]);
    cl.wait_all("cluster up", "1", |c| get(c, "warm"));

    // A 4th process claims region b with a certificate from another CA. It trusts the real
    // CA (so it would accept the real nodes' certificates); only its own identity is forged.
    // By the dial order ("b" < "c") it dials c itself; a dials b, so it also lists a.
    let foreign = cl.dir.join("foreign");
    meridian_replication::transport::quic::write_deployment(&foreign, &["b"])
        .expect("foreign certificates");
    let d = cl.dir.display();
    let f = foreign.display();
    let rogue_cfg = format!(
        "region = \"b\"\nregion-id = 1\n\n[replication]\nlisten = \"127.0.0.1:{port}\"\nca-cert = \"{d}/ca.pem\"\ncert = \"{f}/b.pem\"\nkey = \"{f}/b-key.pem\"\nresend-timeout-ms = 200\npeers = [\n  {{ region = \"a\", region-id = 0, addr = \"127.0.0.1:{ua}\" }},\n  {{ region = \"c\", region-id = 2, addr = \"127.0.0.1:{uc}\" }},\n]\n",
        port = free_udp_port(),
        ua = cl.udp[0],
        uc = cl.udp[2],
    );
    let rogue = Server::start_with_config(&rogue_cfg, &["--io-threads", "1"]);
    let mut r = rogue.conn();
    let _: String = q(&mut r, &["SET", "rogue-only", "x"]);
    let _: i64 = q(&mut r, &["INCR", "warm-counter"]);

    // Wait until c has refused the rogue's handshake several times (it redials with backoff).
    let mut c = cl.conn(2);
    wait_until(CONVERGE, "c refuses the rogue's handshakes", || {
        info_u64(&mut c, "repl_handshake_failures") >= 3
    });

    // Clients of a keep working, and a <-> real b (and c) replication keeps working: a
    // marker written at the real b after the rogue's write reaches a and c...
    let mut a = cl.conn(0);
    let _: String = q(&mut a, &["SET", "a-key", "fine"]);
    assert_eq!(get(&mut a, "a-key"), "fine");
    let _: String = q(&mut cl.conn(1), &["SET", "marker", "from-real-b"]);
    cl.wait_all("real b's write reaches everybody", "from-real-b", |c| {
        get(c, "marker")
    });
    cl.wait_all("a's write reaches everybody", "fine", |c| get(c, "a-key"));
    incr_from_all(&cl, "after-rogue", 20);
    cl.wait_all("replication still exact", "60", |c| get(c, "after-rogue"));

    // ...while nothing from the rogue was ever applied anywhere.
    for (i, name) in NAMES.iter().enumerate() {
        let mut con = cl.conn(i);
        assert_eq!(
            get(&mut con, "rogue-only"),
            "",
            "rogue key leaked into {name}"
        );
        assert_eq!(
            get(&mut con, "warm-counter"),
            "",
            "rogue delta leaked into {name}"
        );
        assert_eq!(info_field(&mut con, "repl_peers"), "2");
    }
    // a's view of b is the real b: connected, and no identity was confused.
    let peer_b = info_field(&mut a, "peer_b");
    assert!(peer_b.contains("connected=1"), "a's link to b: {peer_b}");
    assert_eq!(info_u64(&mut c, "repl_identity_rejections"), 0);
    // The rogue never got a link up, and it never learnt anything either.
    let rogue_c = info_field(&mut r, "peer_c");
    assert!(
        rogue_c.contains("connected=0"),
        "rogue's link to c: {rogue_c}"
    );
    assert_eq!(get(&mut r, "marker"), "");
}

#[test]
fn garbage_udp_is_ignored() {
    let cl = Cluster::start((0, 0.0));
    let _: String = q(&mut cl.conn(0), &["SET", "warm", "1"]);
    cl.wait_all("cluster up", "1", |c| get(c, "warm"));

    // A few thousand random datagrams at b's replication port (b accepts from a and dials
    // c), sent while clients in all regions write. Some look like QUIC long-header Initial
    // packets (version 1), some like short-header packets, the rest are plain noise.
    let target = format!("127.0.0.1:{}", cl.udp[1]);
    let noise = std::thread::spawn(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut x: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in 0..4000u32 {
            let len = 1 + (next() % 1400) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            match n % 4 {
                0 if len >= 6 => {
                    buf[0] = 0xc0 | (buf[0] & 0x0f);
                    buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                }
                1 => buf[0] = 0x40 | (buf[0] & 0x3f),
                _ => {}
            }
            // Errors (e.g. ICMP feedback) do not matter.
            let _ = sock.send_to(&buf, &target);
        }
    });
    incr_from_all(&cl, "during-noise", 100);
    noise.join().expect("noise thread");

    // Clients keep working everywhere, and replication converges exactly.
    for i in 0..3 {
        let mut con = cl.conn(i);
        let _: String = q(&mut con, &["SET", &format!("k{i}"), "v"]);
        assert_eq!(get(&mut con, &format!("k{i}")), "v");
    }
    cl.wait_all("counter converges after the noise", "300", |c| {
        get(c, "during-noise")
    });
    for i in 0..3 {
        let key = format!("k{i}");
        cl.wait_all("writes after the noise replicate", "v", |c| get(c, &key));
    }
    incr_from_all(&cl, "after-noise", 10);
    cl.wait_all("replication still exact", "30", |c| get(c, "after-noise"));
    let mut b = cl.conn(1);
    for peer in ["peer_a", "peer_c"] {
        let line = info_field(&mut b, peer);
        assert!(line.contains("connected=1"), "b's {peer}: {line}");
    }
}
