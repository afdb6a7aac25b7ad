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
                "region = \"a\"\nregion-id = 0\nbind = \"127.0.0.1\"\nport = {port}\n{repl}[cluster]\nbus-port = {bus}\nnode-timeout-ms = 2000\nnodes-file = \"{d}/nodes-{port}.json\"\nbus-secret = \"bus-secret-of-a-region-0123\"\nmeet = [{meet}]\n{role}\n",
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
/// Region b with three primaries (a failover needs a majority of primaries alive).
const B3_SLOTS: [(u16, u16); 3] = [(0, 6000), (6001, 12000), (12001, 16383)];

/// Region a: three primaries, region b: two primaries with other cuts, region c: one node
/// (the shape of `examples/clustered-regions/start.sh` without the replicas, which have no
/// links and collect nothing). Every node names both other regions by seeds.
struct ThreeRegions {
    dir: PathBuf,
    a: Vec<Server>,
    b: Vec<Server>,
    c: Server,
    b_slots: &'static [(u16, u16)],
}

impl ThreeRegions {
    fn start() -> ThreeRegions {
        ThreeRegions::start_with(&B_SLOTS, false)
    }

    /// Region b's primaries serve `b_slots`; `replicas`: each primary of a and b gets a
    /// replica (`b[n]` replicates `b[0]`, and so on), which runs the inter-region links once
    /// promoted.
    fn start_with(b_slots: &'static [(u16, u16)], replicas: bool) -> ThreeRegions {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meridian-cr3-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        meridian_replication::transport::quic::write_deployment(&dir, &["a", "b", "c"])
            .expect("certificates");
        let d = dir.display().to_string();
        let udp_a: Vec<u16> = (0..6).map(|_| free_udp_port()).collect();
        let udp_b: Vec<u16> = (0..6).map(|_| free_udp_port()).collect();
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
        // A cluster region: `slots[i]` at node i, then (`replicas`) a replica of each.
        let cluster = |region: &str,
                       id: u16,
                       udp: &[u16],
                       slots: &[(u16, u16)],
                       peers: &[String],
                       replicas: bool| {
            let n = slots.len() * if replicas { 2 } else { 1 };
            let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let bus: Vec<u16> = (0..n).map(|_| free_port()).collect();
            (0..n)
                .map(|i| {
                    let meet: Vec<String> = (0..n)
                        .filter(|&j| j != i)
                        .map(|j| format!("\"127.0.0.1:{}@{}\"", ports[j], bus[j]))
                        .collect();
                    let role = match slots.get(i) {
                        Some((lo, hi)) => format!("slots = \"{lo}-{hi}\""),
                        None => format!("replicate = \"127.0.0.1:{}\"", ports[i - slots.len()]),
                    };
                    let toml = format!(
                        "region = \"{region}\"\nregion-id = {id}\nbind = \"127.0.0.1\"\nport = {port}\n{repl}[cluster]\nbus-port = {bus}\nnode-timeout-ms = 2000\nnodes-file = \"{d}/nodes-{port}.json\"\nbus-secret = \"bus-secret-of-a-region-0123\"\nmeet = [{meet}]\n{role}\n",
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
            replicas,
        );
        let b = cluster(
            "b",
            1,
            &udp_b,
            b_slots,
            &[peer("a", 0, udp_a[1]), peer("c", 2, udp_c)],
            replicas,
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
        let dep = ThreeRegions {
            dir,
            a,
            b,
            c,
            b_slots,
        };
        for (servers, n) in [(&dep.a, dep.a.len()), (&dep.b, dep.b.len())] {
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
            "b" => &self.b[of(self.b_slots)],
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

/// Run `args` at whichever of `servers` serves the key (the others answer MOVED, or are
/// dead), as a cluster client does: while a failover or a slot move settles, every node may
/// answer MOVED (to a dead primary), CLUSTERDOWN or TRYAGAIN, which leave the command
/// unexecuted, so it is tried again until the deadline. Any other error fails the test.
fn at_owner<T: redis::FromRedisValue>(servers: &[Server], args: &[&str]) -> T {
    let mut out = None;
    let mut last = String::new();
    let what = format!("a node serves {args:?}");
    wait_until(DEADLINE, &what, || {
        for s in servers {
            let Ok(mut con) = s.client().get_connection() else {
                continue;
            };
            match common::cmd(args).query::<T>(&mut con) {
                Ok(v) => {
                    out = Some(v);
                    return true;
                }
                Err(e) => {
                    let retry = matches!(
                        e.kind(),
                        redis::ErrorKind::Moved
                            | redis::ErrorKind::Ask
                            | redis::ErrorKind::ClusterDown
                            | redis::ErrorKind::TryAgain
                    );
                    assert!(retry, "{args:?} failed: {e}");
                    last = e.to_string();
                }
            }
        }
        false
    });
    out.unwrap_or_else(|| panic!("no node serves {args:?}: {last}"))
}

/// Each region's live nodes, by name.
fn regions_of<'x>(
    a: &'x [Server],
    b: &'x [Server],
    c: &'x Server,
) -> Vec<(&'static str, Vec<&'x Server>)> {
    vec![
        ("a", a.iter().collect()),
        ("b", b.iter().collect()),
        ("c", vec![c]),
    ]
}

/// Run a one-key command at whichever of `servers` serves the key now.
fn read(servers: &[&Server], args: &[&str]) -> redis::Value {
    let mut last = String::new();
    for s in servers {
        let Ok(mut con) = s.client().get_connection() else {
            continue;
        };
        match common::cmd(args).query::<redis::Value>(&mut con) {
            Ok(v) => return v,
            Err(e) => last = e.to_string(),
        }
    }
    panic!("no node serves {args:?}: {last}");
}

/// Everything at once, as a deployment sees it (issue 20's topology, with three primaries
/// in b: an automatic failover needs a majority of primaries alive, as in Redis): writes of
/// every type in all three regions while region a reshards slots from its node 0 to node 1
/// and region b's primary serving those slots is killed with SIGKILL mid-reshard (its
/// replica takes over). Counters incremented in every region before, during and after are
/// exact in every region (b's writes before the kill were confirmed by `WAIT 1` on its
/// replica, as a user who needs them durable does); hash fields written per region hold
/// each region's last write; strings written everywhere read the same everywhere; a member
/// added in b and removed in a after the failover stays removed; every key ends only at its
/// owners; and every primary collects its tombstones (GC waits for the replicas, through the
/// promotion, and goes on after it).
#[test]
fn writes_in_three_regions_through_a_reshard_in_a_and_a_kill_9_failover_in_b() {
    let mut dep = ThreeRegions::start_with(&B3_SLOTS, true);
    // Region b's nodes: primaries 0, 1 and 2, then their replicas (a's likewise).
    let mut b = std::mem::take(&mut dep.b);
    // Slots of a's node 0 (0-5460), which b's node 0 serves too (0-6000).
    let moved = keys_in_node0_slots(4, 4);
    let counters: Vec<String> = moved.iter().flat_map(|(_, k)| k.clone()).collect();
    let sets: Vec<String> = moved.iter().map(|(_, k)| format!("{}:set", k[0])).collect();
    let hashes: Vec<String> = moved.iter().map(|(_, k)| format!("{}:h", k[0])).collect();
    let strings: Vec<String> = moved.iter().map(|(_, k)| format!("{}:s", k[0])).collect();
    // One round of writes in `region`, at whichever of `servers` serves each key.
    let write = |servers: &[Server], region: &str, round: usize| {
        for k in &counters {
            let _: i64 = at_owner(servers, &["INCR", k]);
        }
        let field = format!("f-{region}");
        let value = format!("{region}{round}");
        for k in &hashes {
            let _: i64 = at_owner(servers, &["HSET", k, &field, &value]);
        }
        for k in &strings {
            let _: () = at_owner(servers, &["SET", k, &value]);
        }
    };
    let c = std::slice::from_ref(&dep.c);
    let as_string = |v: redis::Value| -> Option<String> {
        redis::from_redis_value::<Option<String>>(&v).ok().flatten()
    };
    // Round 0 everywhere; b adds the member a removes later.
    write(&dep.a, "a", 0);
    write(&b, "b", 0);
    write(c, "c", 0);
    for k in &sets {
        let _: i64 = at_owner(&b, &["SADD", k, "m-b"]);
    }
    for (r, servers) in regions_of(&dep.a, &b, &dep.c) {
        for k in &counters {
            wait_until(DEADLINE, &format!("{k} reads 3 in {r}"), || {
                as_string(read(&servers, &["GET", k])).as_deref() == Some("3")
            });
        }
    }
    for k in &sets {
        wait_until(DEADLINE, &format!("{k} has m-b in a"), || {
            at_owner::<i64>(&dep.a, &["SISMEMBER", k, "m-b"]) == 1
        });
    }
    // Region a starts moving the slots: IMPORTING at node 1, MIGRATING at node 0.
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
    for (slot, _) in &moved {
        let slot = slot.to_string();
        let _: () = q(
            &mut dst,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id],
        );
        let _: () = q(
            &mut src,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id],
        );
    }
    // Round 1: b's writes confirmed on its replica, then b's node 0 dies mid-reshard; a (at
    // the source, which still has the keys) and c write meanwhile.
    write(&b[..1], "b", 1);
    let mut b0 = b[0].conn();
    let acked: i64 = q(&mut b0, &["WAIT", "1", "10000"]);
    assert_eq!(acked, 1, "b's replica confirmed round 1");
    write(&dep.a[..1], "a", 1);
    let dead = b.remove(0);
    drop(dead);
    write(c, "c", 1);
    // The keys move while b fails over.
    for (slot, _) in &moved {
        let slot = slot.to_string();
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
        for s in &dep.a[..3] {
            let mut con = s.conn();
            let _: () = q(&mut con, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
        }
    }
    // b's replica of its node 0 (now b[2]: primaries 1 and 2 come first) takes over.
    let mut promoted = b[2].conn();
    wait_until(DEADLINE, "b's replica promoted", || {
        let role: Vec<redis::Value> = q(&mut promoted, &["ROLE"]);
        matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master")
    });
    // Round 2 everywhere, at the new owners; a removes b's member.
    write(&dep.a, "a", 2);
    write(&b, "b", 2);
    write(c, "c", 2);
    for k in &sets {
        let _: i64 = at_owner(&dep.a, &["SREM", k, "m-b"]);
    }
    for (r, servers) in regions_of(&dep.a, &b, &dep.c) {
        for k in &counters {
            wait_until(DEADLINE, &format!("{k} reads 9 in {r}"), || {
                as_string(read(&servers, &["GET", k])).as_deref() == Some("9")
            });
        }
        for k in &hashes {
            wait_until(
                DEADLINE,
                &format!("{k} holds each region's last write in {r}"),
                || {
                    let all: std::collections::BTreeMap<String, String> =
                        redis::from_redis_value(&read(&servers, &["HGETALL", k]))
                            .unwrap_or_default();
                    ["a", "b", "c"]
                        .iter()
                        .all(|x| all.get(&format!("f-{x}")) == Some(&format!("{x}2")))
                },
            );
        }
        for k in &sets {
            wait_until(DEADLINE, &format!("{k} emptied in {r}"), || {
                read(&servers, &["EXISTS", k]) == redis::Value::Int(0)
            });
        }
    }
    for k in &strings {
        wait_until(
            DEADLINE,
            &format!("{k} reads the same in every region"),
            || {
                let vals: Vec<Option<String>> = regions_of(&dep.a, &b, &dep.c)
                    .iter()
                    .map(|(_, servers)| as_string(read(servers, &["GET", k])))
                    .collect();
                vals[0].is_some() && vals.windows(2).all(|w| w[0] == w[1])
            },
        );
    }
    for (slot, _) in &moved {
        let n: usize = q(&mut src, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
        assert_eq!(n, 0, "a's old owner keeps nothing of slot {slot}");
    }
    // The promoted node holds exactly the keys of its slots: the test's keys, all in them.
    let n: usize = q(&mut promoted, &["DBSIZE"]);
    assert_eq!(n, counters.len() + hashes.len() + strings.len());
    // Every live primary collects its tombstones (replicas collect once promoted).
    let primaries: Vec<&Server> = dep.a[..3].iter().chain(&b[..3]).chain(c).collect();
    for s in &primaries {
        let mut con = s.conn();
        wait_until(DEADLINE * 2, "every tombstone collected", || {
            info_u64(&mut con, "tombstones") == 0
        });
    }
    for (r, servers) in regions_of(&dep.a, &b, &dep.c) {
        for k in &sets {
            assert_eq!(
                read(&servers, &["EXISTS", k]),
                redis::Value::Int(0),
                "{k} stays removed in {r}"
            );
        }
    }
}
