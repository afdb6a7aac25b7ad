//! Three regions as separate `meridian` processes on loopback, replicating over QUIC with
//! certificates from `write_deployment`. Every check waits on a condition with a deadline.

mod common;

use common::{q, wait_until, Server};
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
