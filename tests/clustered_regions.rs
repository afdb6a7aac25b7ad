//! Clustered regions (issue 20): region a is a cluster of three primaries, region b a
//! single node; peers are named by `seeds` (one address of the other region), each node
//! discovers the other region's topology and links to the nodes serving its slots. Real
//! processes, real QUIC, 10 ms one-way delay and 2 % of frames dropped on every link; every
//! wait is a condition with a deadline.

mod common;

use common::{free_port, info_u64, key_slot, q, wait_until, Server};
use std::path::PathBuf;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
const A_SLOTS: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
        .port()
}

struct Deployment {
    dir: PathBuf,
    /// Region a's primaries, then (with replicas) one replica of each.
    a: Vec<Server>,
    b: Server,
}

impl Deployment {
    fn start() -> Deployment {
        Deployment::start_with(false)
    }

    /// `replicas`: region a's three primaries get a replica each.
    fn start_with(replicas: bool) -> Deployment {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meridian-cr-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        meridian_replication::transport::quic::write_deployment(&dir, &["a", "b"])
            .expect("certificates");
        let d = dir.display().to_string();
        let n_a = if replicas { 6 } else { 3 };
        let ports: Vec<u16> = (0..n_a).map(|_| free_port()).collect();
        let bus: Vec<u16> = (0..n_a).map(|_| free_port()).collect();
        let udp_a: Vec<u16> = (0..n_a).map(|_| free_udp_port()).collect();
        let udp_b = free_udp_port();
        let repl = |region: &str, listen: u16, peer: &str, peer_id: u16, seed: u16| {
            format!(
                "[replication]\nlisten = \"127.0.0.1:{listen}\"\nca-cert = \"{d}/ca.pem\"\ncert = \"{d}/{region}.pem\"\nkey = \"{d}/{region}-key.pem\"\nresend-timeout-ms = 200\nanti-entropy-interval-ms = 2000\npeers = [ {{ region = \"{peer}\", region-id = {peer_id}, seeds = [\"127.0.0.1:{seed}\"], delay-ms = 10, drop-rate = 0.02 }} ]\n"
            )
        };
        let mut a = Vec::new();
        for i in 0..n_a {
            let meet: Vec<String> = (0..n_a)
                .filter(|&j| j != i)
                .map(|j| format!("\"127.0.0.1:{}@{}\"", ports[j], bus[j]))
                .collect();
            let role = if i < 3 {
                let (lo, hi) = A_SLOTS[i];
                format!("slots = \"{lo}-{hi}\"")
            } else {
                format!("replicate = \"127.0.0.1:{}\"", ports[i - 3])
            };
            let toml = format!(
                "region = \"a\"\nregion-id = 0\nbind = \"127.0.0.1\"\nport = {port}\n{repl}[cluster]\nbus-port = {bus}\nnode-timeout-ms = 2000\nnodes-file = \"{d}/nodes-{port}.json\"\nmeet = [{meet}]\n{role}\n",
                port = ports[i],
                bus = bus[i],
                meet = meet.join(", "),
                // Each a node seeds b; b seeds a's first node only.
                repl = repl("a", udp_a[i], "b", 1, udp_b),
            );
            a.push(Server::start_with_config(
                &toml,
                &["--port", &ports[i].to_string()],
            ));
        }
        let b = Server::start_with_config(
            &format!(
                "region = \"b\"\nregion-id = 1\n{}",
                repl("b", udp_b, "a", 0, udp_a[0])
            ),
            &[],
        );
        let dep = Deployment { dir, a, b };
        let known = format!("cluster_known_nodes:{n_a}");
        for s in &dep.a {
            let mut con = s.conn();
            wait_until(DEADLINE, "cluster_state:ok", || {
                let info: String = q(&mut con, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains(&known)
            });
        }
        dep
    }

    /// Run `args` (a one-key command) at whichever live a node serves the key now: the
    /// others answer MOVED.
    fn at_a_owner<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut last = String::new();
        for s in &self.a {
            let Ok(mut con) = s.client().get_connection() else {
                continue;
            };
            match common::cmd(args).query::<T>(&mut con) {
                Ok(v) => return v,
                Err(e) => last = e.to_string(),
            }
        }
        panic!("no a node serves {args:?}: {last}");
    }

    /// The a node serving `key`.
    fn a_owner(&self, key: &str) -> &Server {
        let slot = key_slot(key.as_bytes());
        let i = A_SLOTS
            .iter()
            .position(|&(lo, hi)| (lo..=hi).contains(&slot))
            .expect("a slot range");
        &self.a[i]
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn get(s: &Server, key: &str) -> Option<String> {
    let mut con = s.conn();
    q(&mut con, &["GET", key])
}

/// Writes in both regions, through each a key's owner, and counters incremented in both,
/// converge exactly; every a node holds only keys of its own slots.
#[test]
fn a_clustered_region_and_a_single_node_region_converge() {
    let dep = Deployment::start();
    let mut a_keys = Vec::new();
    let mut b_keys = Vec::new();
    let mut bcon = dep.b.conn();
    for i in 0..150 {
        let k = format!("fromA:{i}");
        let mut con = dep.a_owner(&k).conn();
        let _: () = q(&mut con, &["SET", &k, &format!("a{i}")]);
        a_keys.push(k);
        let k = format!("fromB:{i}");
        let _: () = q(&mut bcon, &["SET", &k, &format!("b{i}")]);
        b_keys.push(k);
    }
    let counters: Vec<String> = (0..30).map(|j| format!("ctr:{j}")).collect();
    for c in &counters {
        let mut con = dep.a_owner(c).conn();
        let _: i64 = q(&mut con, &["INCRBY", c, "2"]);
        let _: i64 = q(&mut bcon, &["INCRBY", c, "3"]);
    }
    for (i, k) in a_keys.iter().enumerate() {
        wait_until(DEADLINE, &format!("{k} in b"), || {
            get(&dep.b, k) == Some(format!("a{i}"))
        });
    }
    for (i, k) in b_keys.iter().enumerate() {
        wait_until(DEADLINE, &format!("{k} in a"), || {
            get(dep.a_owner(k), k) == Some(format!("b{i}"))
        });
    }
    for c in &counters {
        wait_until(DEADLINE, &format!("{c} exact"), || {
            get(&dep.b, c).as_deref() == Some("5") && get(dep.a_owner(c), c).as_deref() == Some("5")
        });
    }
    // Every a node stores only its own slots' keys: its DBSIZE is the number of keys
    // written to its slots.
    let total = a_keys.len() + b_keys.len() + counters.len();
    let mut sum = 0;
    for (i, s) in dep.a.iter().enumerate() {
        let (lo, hi) = A_SLOTS[i];
        let mine = a_keys
            .iter()
            .chain(&b_keys)
            .chain(&counters)
            .filter(|k| (lo..=hi).contains(&key_slot(k.as_bytes())))
            .count();
        let mut con = s.conn();
        let n: usize = q(&mut con, &["DBSIZE"]);
        assert_eq!(n, mine, "a node {i} holds only its slots' keys");
        sum += n;
        assert_eq!(info_u64(&mut con, "repl_refused_not_served"), 0);
    }
    assert_eq!(sum, total);
    let n: usize = q(&mut bcon, &["DBSIZE"]);
    assert_eq!(n, total);
    // b's link state, per peer node: one link to each of a's primaries, connected, covering
    // every slot between them, nothing left unacknowledged.
    wait_until(DEADLINE, "b's per-node link state", || {
        let info: String = q(&mut bcon, &["INFO", "crdt"]);
        let nodes: Vec<&str> = info
            .lines()
            .filter(|l| l.starts_with("peer_node_"))
            .collect();
        let field = |l: &str, f: &str| -> u64 {
            l.split([':', ','])
                .find_map(|kv| kv.strip_prefix(&format!("{f}=")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(u64::MAX)
        };
        nodes.len() == 3
            && nodes.iter().all(|l| field(l, "connected") == 1)
            && nodes.iter().map(|l| field(l, "slots")).sum::<u64>() == 16384
            && nodes.iter().all(|l| field(l, "backlog_deltas") == 0)
            && info.contains("peer_a:id=0,link=up,connected=1")
    });
    // Deletes in the region that did not write the keys: gone everywhere, and the
    // deleted-state metadata is collected on every node once every link's peer has seen it.
    for k in a_keys.iter().step_by(2) {
        let _: i64 = q(&mut bcon, &["DEL", k]);
    }
    for k in b_keys.iter().step_by(2) {
        let mut con = dep.a_owner(k).conn();
        let _: i64 = q(&mut con, &["DEL", k]);
    }
    for k in a_keys.iter().chain(&b_keys).step_by(2) {
        wait_until(DEADLINE, &format!("{k} deleted everywhere"), || {
            get(&dep.b, k).is_none() && get(dep.a_owner(k), k).is_none()
        });
    }
    for s in dep.a.iter().chain(std::iter::once(&dep.b)) {
        let mut con = s.conn();
        wait_until(DEADLINE, "tombstones collected", || {
            info_u64(&mut con, "tombstones") == 0
        });
    }
    for (i, k) in a_keys.iter().enumerate().skip(1).step_by(2) {
        assert_eq!(get(&dep.b, k), Some(format!("a{i}")), "{k} kept");
    }
}

/// Keys of `n` distinct slots of a's node 0 (0-5460), `per` keys each (hash tags).
fn keys_in_node0_slots(n: usize, per: usize) -> Vec<(u16, Vec<String>)> {
    let mut out: Vec<(u16, Vec<String>)> = Vec::new();
    let mut t = 0;
    while out.len() < n {
        let tag = format!("rs{t}");
        t += 1;
        let slot = key_slot(tag.as_bytes());
        if slot > 5460 || out.iter().any(|(s, _)| *s == slot) {
            continue;
        }
        out.push((slot, (0..per).map(|i| format!("{{{tag}}}:{i}")).collect()));
    }
    out
}

/// Region a moves slots from its node 0 to node 1 (IMPORTING/MIGRATING, MIGRATE of every
/// key, SETSLOT NODE) while region b keeps writing to keys of those slots and both regions
/// increment counters there. b follows a's new topology: everything converges at the new
/// owner, counters are exact, and the old owner keeps no key of the moved slots.
#[test]
fn a_reshard_in_the_clustered_region_while_the_other_region_writes() {
    let dep = Deployment::start();
    let moved = keys_in_node0_slots(8, 5);
    let mut bcon = dep.b.conn();
    let write_round = |bcon: &mut redis::Connection, round: usize| {
        for (_, keys) in &moved {
            for k in keys {
                let _: () = q(bcon, &["SET", k, &format!("r{round}")]);
                let _: i64 = q(bcon, &["INCR", &format!("{k}:c")]);
            }
        }
    };
    write_round(&mut bcon, 0);
    for (_, keys) in &moved {
        for k in keys {
            wait_until(DEADLINE, &format!("{k} at a's node 0"), || {
                get(&dep.a[0], k).as_deref() == Some("r0")
            });
        }
    }
    let mut src = dep.a[0].conn();
    let mut dst = dep.a[1].conn();
    let src_id: String = q(&mut src, &["CLUSTER", "MYID"]);
    let dst_id: String = q(&mut dst, &["CLUSTER", "MYID"]);
    let dst_port = dep.a[1]
        .addr()
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    for (round, (slot, keys)) in moved.iter().enumerate() {
        let slot = slot.to_string();
        let _: () = q(
            &mut dst,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id],
        );
        let _: () = q(
            &mut src,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id],
        );
        write_round(&mut bcon, round + 1);
        // a increments there too, at whichever node serves the key now (the source while
        // it still has it).
        for k in keys {
            let c = format!("{k}:c");
            let _: i64 = q(&mut src, &["INCR", &c]);
        }
        // As `redis-cli --cluster reshard` does: migrate until the slot is empty (deltas
        // from b keep landing at the source while it still serves the slot), then hand it
        // over; the source refuses while it holds a key, so that step may take a retry.
        wait_until(DEADLINE, &format!("slot {slot} handed over"), || {
            let in_slot: Vec<String> = q(&mut src, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
            for k in &in_slot {
                let _: () = q(
                    &mut src,
                    &["MIGRATE", "127.0.0.1", &dst_port, k, "0", "5000"],
                );
            }
            redis::cmd("CLUSTER")
                .arg(&["SETSLOT", &slot, "NODE", &dst_id])
                .query::<()>(&mut src)
                .is_ok()
        });
        for s in &dep.a {
            let mut con = s.conn();
            let _: () = q(&mut con, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
        }
    }
    let last = moved.len();
    write_round(&mut bcon, last + 1);
    let want = format!("r{}", last + 1);
    // b's counters: one INCR per round (0..=last+1); a's: one per moved slot's round.
    let b_incr = last + 2;
    for (_, keys) in &moved {
        for k in keys {
            let c = format!("{k}:c");
            wait_until(DEADLINE, &format!("{k} at a's node 1"), || {
                get(&dep.a[1], k).as_deref() == Some(want.as_str())
            });
            wait_until(DEADLINE, &format!("{c} exact in both regions"), || {
                // b's increments and the one a made while the slot moved.
                let want_c = (b_incr + 1).to_string();
                get(&dep.a[1], &c).as_deref() == Some(want_c.as_str())
                    && get(&dep.b, &c).as_deref() == Some(want_c.as_str())
            });
        }
    }
    for (slot, _) in &moved {
        let n: usize = q(&mut src, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
        assert_eq!(n, 0, "the old owner keeps nothing of slot {slot}");
    }
}

/// kill -9 of one of region a's primaries while both regions write to its slots: its
/// replica is promoted, opens its own links, and the slots it took over are repaired with
/// region b by anti-entropy. Counters incremented in both regions before and after the
/// failover are exact everywhere (the write acknowledged by the dead primary and not yet
/// replicated in-region is lost with it: only writes after the failover and those b
/// holds are checked), and every key is at its owner.
#[test]
fn a_kill_9_failover_in_the_clustered_region_while_both_regions_write() {
    let mut dep = Deployment::start_with(true);
    let mut bcon = dep.b.conn();
    // Keys of node 0's slots.
    let keys: Vec<String> = (0..)
        .map(|i| format!("fo:{i}"))
        .filter(|k| key_slot(k.as_bytes()) <= 5460)
        .take(40)
        .collect();
    for k in &keys {
        let _: i64 = q(&mut bcon, &["INCR", k]);
    }
    for k in &keys {
        wait_until(DEADLINE, &format!("{k} at a"), || {
            get(&dep.a[0], k).as_deref() == Some("1")
        });
    }
    // Primary 0 dies (SIGKILL); b keeps writing meanwhile.
    let dead = dep.a.remove(0);
    drop(dead);
    for k in &keys {
        let _: i64 = q(&mut bcon, &["INCR", k]);
    }
    // The replica (now index 2 of the remaining: primaries 1, 2, then replicas 0, 1, 2)
    // takes over.
    let promoted = &dep.a[2];
    let mut pcon = promoted.conn();
    wait_until(DEADLINE, "the replica promoted", || {
        let role: Vec<redis::Value> = q(&mut pcon, &["ROLE"]);
        matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master")
    });
    for k in &keys {
        let _: i64 = dep.at_a_owner(&["INCR", k]);
    }
    for k in &keys {
        let _: i64 = q(&mut bcon, &["INCR", k]);
    }
    // b: 3 increments; a: 1 after the failover.
    for k in &keys {
        wait_until(DEADLINE, &format!("{k} exact in both regions"), || {
            get(&dep.b, k).as_deref() == Some("4") && get(promoted, k).as_deref() == Some("4")
        });
    }
    let n: usize = q(&mut pcon, &["DBSIZE"]);
    assert_eq!(
        n,
        keys.len(),
        "the promoted node holds its slots' keys, only them"
    );
}

// ---- three regions ----

const B_SLOTS: [(u16, u16); 2] = [(0, 8191), (8192, 16383)];

/// Region a: three primaries, region b: two primaries with other cuts, region c: one node
/// (the shape of `examples/clustered-regions/start.sh` without the replicas, which have no
/// links and collect nothing). Every node names both other regions by seeds.
struct ThreeRegions {
    dir: PathBuf,
    a: Vec<Server>,
    b: Vec<Server>,
    c: Server,
}

impl ThreeRegions {
    fn start() -> ThreeRegions {
        let dir = std::env::temp_dir().join(format!("meridian-cr3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        meridian_replication::transport::quic::write_deployment(&dir, &["a", "b", "c"])
            .expect("certificates");
        let d = dir.display().to_string();
        let udp_a: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
        let udp_b: Vec<u16> = (0..2).map(|_| free_udp_port()).collect();
        let udp_c = free_udp_port();
        let peer = |name: &str, id: u16, seed: u16| {
            format!(
                "{{ region = \"{name}\", region-id = {id}, seeds = [\"127.0.0.1:{seed}\"], delay-ms = 10, drop-rate = 0.02 }}"
            )
        };
        let repl = |region: &str, listen: u16, peers: &[String]| {
            format!(
                "[replication]\nlisten = \"127.0.0.1:{listen}\"\nca-cert = \"{d}/ca.pem\"\ncert = \"{d}/{region}.pem\"\nkey = \"{d}/{region}-key.pem\"\nresend-timeout-ms = 200\nanti-entropy-interval-ms = 2000\npeers = [ {} ]\n",
                peers.join(", ")
            )
        };
        // A cluster region's primaries: `slots[i]` at node i.
        let cluster = |region: &str,
                       id: u16,
                       udp: &[u16],
                       slots: &[(u16, u16)],
                       peers: &[String]| {
            let ports: Vec<u16> = slots.iter().map(|_| free_port()).collect();
            let bus: Vec<u16> = slots.iter().map(|_| free_port()).collect();
            (0..slots.len())
                .map(|i| {
                    let meet: Vec<String> = (0..slots.len())
                        .filter(|&j| j != i)
                        .map(|j| format!("\"127.0.0.1:{}@{}\"", ports[j], bus[j]))
                        .collect();
                    let (lo, hi) = slots[i];
                    let toml = format!(
                        "region = \"{region}\"\nregion-id = {id}\nbind = \"127.0.0.1\"\nport = {port}\n{repl}[cluster]\nbus-port = {bus}\nnode-timeout-ms = 2000\nnodes-file = \"{d}/nodes-{port}.json\"\nmeet = [{meet}]\nslots = \"{lo}-{hi}\"\n",
                        port = ports[i],
                        bus = bus[i],
                        meet = meet.join(", "),
                        repl = repl(region, udp[i], peers),
                    );
                    Server::start_with_config(&toml, &["--port", &ports[i].to_string()])
                })
                .collect::<Vec<Server>>()
        };
        let a = cluster(
            "a",
            0,
            &udp_a,
            &A_SLOTS,
            &[peer("b", 1, udp_b[0]), peer("c", 2, udp_c)],
        );
        let b = cluster(
            "b",
            1,
            &udp_b,
            &B_SLOTS,
            &[peer("a", 0, udp_a[1]), peer("c", 2, udp_c)],
        );
        let c = Server::start_with_config(
            &format!(
                "region = \"c\"\nregion-id = 2\n{}",
                repl(
                    "c",
                    udp_c,
                    &[peer("a", 0, udp_a[2]), peer("b", 1, udp_b[1])]
                )
            ),
            &[],
        );
        let dep = ThreeRegions { dir, a, b, c };
        for (servers, n) in [(&dep.a, 3), (&dep.b, 2)] {
            let known = format!("cluster_known_nodes:{n}");
            for s in servers {
                let mut con = s.conn();
                wait_until(DEADLINE, "cluster_state:ok", || {
                    let info: String = q(&mut con, &["CLUSTER", "INFO"]);
                    info.contains("cluster_state:ok") && info.contains(&known)
                });
            }
        }
        dep
    }

    /// The node of `region` ("a", "b" or "c") serving `key`.
    fn owner(&self, region: &str, key: &str) -> &Server {
        let slot = key_slot(key.as_bytes());
        let of = |servers: &'static [(u16, u16)]| {
            servers
                .iter()
                .position(|&(lo, hi)| (lo..=hi).contains(&slot))
                .expect("a slot range")
        };
        match region {
            "a" => &self.a[of(&A_SLOTS)],
            "b" => &self.b[of(&B_SLOTS)],
            _ => &self.c,
        }
    }

    fn nodes(&self) -> impl Iterator<Item = &Server> {
        self.a.iter().chain(&self.b).chain(std::iter::once(&self.c))
    }
}

impl Drop for ThreeRegions {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three regions, two of them clusters with different slot maps. Keys written in all three
/// regions (a member added in each; a counter incremented in each), then deleted: each
/// tombstone carries the stamps of the two regions other than the node's own, which no
/// single link of a node knows about both of. With the node-wide aggregate in the links'
/// frontier gossip, every tombstone is collected on every node, and what was deleted stays
/// deleted.
#[test]
fn three_regions_collect_tombstones_of_keys_written_in_all_three() {
    let dep = ThreeRegions::start();
    const REGIONS: [&str; 3] = ["a", "b", "c"];
    let sets: Vec<String> = (0..60).map(|i| format!("s3:{i}")).collect();
    let counters: Vec<String> = (0..30).map(|i| format!("c3:{i}")).collect();
    for r in REGIONS {
        for k in &sets {
            let mut con = dep.owner(r, k).conn();
            let _: i64 = q(&mut con, &["SADD", k, &format!("m-{r}")]);
        }
        for k in &counters {
            let mut con = dep.owner(r, k).conn();
            let _: i64 = q(&mut con, &["INCRBY", k, "2"]);
        }
    }
    for r in REGIONS {
        for k in &sets {
            wait_until(DEADLINE, &format!("{k} has three members in {r}"), || {
                let mut con = dep.owner(r, k).conn();
                let n: usize = q(&mut con, &["SCARD", k]);
                n == 3
            });
        }
        for k in &counters {
            wait_until(DEADLINE, &format!("{k} reads 6 in {r}"), || {
                get(dep.owner(r, k), k).as_deref() == Some("6")
            });
        }
    }
    // Deleted, each key from one region in turn.
    for (i, k) in sets.iter().chain(&counters).enumerate() {
        let mut con = dep.owner(REGIONS[i % 3], k).conn();
        let _: i64 = q(&mut con, &["DEL", k]);
    }
    for r in REGIONS {
        for k in sets.iter().chain(&counters) {
            wait_until(DEADLINE, &format!("{k} deleted in {r}"), || {
                let mut con = dep.owner(r, k).conn();
                let n: i64 = q(&mut con, &["EXISTS", k]);
                n == 0
            });
        }
    }
    for s in dep.nodes() {
        let mut con = s.conn();
        wait_until(DEADLINE * 2, "every tombstone collected", || {
            info_u64(&mut con, "tombstones") == 0
        });
    }
    for r in REGIONS {
        for k in sets.iter().chain(&counters) {
            let mut con = dep.owner(r, k).conn();
            let n: i64 = q(&mut con, &["EXISTS", k]);
            assert_eq!(n, 0, "{k} stays deleted in {r}");
        }
    }
}
