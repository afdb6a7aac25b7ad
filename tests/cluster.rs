//! The region cluster with real processes on loopback: six nodes (three primaries, three
//! replicas) form from their configs alone, like `examples/cluster-6`; cluster clients
//! (redis-rs, redis-cli) route by MOVED; failover promotes a replica. Every check waits on a
//! condition with a deadline.

mod common;

use common::cluster::{tag_on_node0, Cluster, DEADLINE};
use common::{q, qerr, tool_available, wait_until};
use redis::cluster::ClusterClient;
use redis::Commands;
use std::path::PathBuf;

#[test]
fn six_nodes_form_a_cluster_that_cluster_clients_use() {
    let cl = Cluster::start(5_000);
    for i in 0..6 {
        cl.wait_ok(i);
    }
    // Every node agrees on the slot map: three primaries, one replica each.
    let mut c0 = cl.conn(0);
    wait_until(DEADLINE, "replicas attached", || {
        let nodes: String = q(&mut c0, &["CLUSTER", "NODES"]);
        nodes.lines().filter(|l| l.contains(" slave ")).count() == 3
    });
    let slots: Vec<redis::Value> = q(&mut c0, &["CLUSTER", "SLOTS"]);
    assert_eq!(slots.len(), 3);

    // redis-rs cluster client: keys spread over every primary.
    let client = ClusterClient::new(cl.urls()).expect("cluster client");
    let mut con = client.get_connection().expect("cluster connection");
    set_and_read_back(&mut con, "key", 600);
    let _: i64 = con.incr("{user}:visits", 5).expect("INCR");
    let _: () = redis::cmd("MSET")
        .arg("{user}:a")
        .arg(1)
        .arg("{user}:b")
        .arg(2)
        .query(&mut con)
        .expect("same-slot MSET");
    // Each primary holds only its own keys.
    let mut total = 0;
    for i in 0..3 {
        let n: i64 = q(&mut cl.conn(i), &["DBSIZE"]);
        assert!(n > 100, "primary {i} holds {n} keys");
        total += n;
    }
    assert_eq!(total, 603);

    // Direct (non-cluster) clients get the Redis errors cluster clients rely on.
    let e = qerr(&mut c0, &["MSET", "a", "1", "b", "2"]);
    assert!(e.starts_with("CROSSSLOT"), "{e}");
    // A transaction is routed as a whole at EXEC, as in Redis: keys of two slots (both
    // served here) → CROSSSLOT, and the transaction is gone.
    let mine: Vec<String> = (0..)
        .map(|n| format!("tx{n}"))
        .filter(|k| common::key_slot(k.as_bytes()) < 5461)
        .take(2)
        .collect();
    assert_ne!(
        common::key_slot(mine[0].as_bytes()),
        common::key_slot(mine[1].as_bytes())
    );
    let _: () = q(&mut c0, &["MULTI"]);
    let queued: String = q(&mut c0, &["SET", &mine[0], "1"]);
    assert_eq!(queued, "QUEUED");
    let _: String = q(&mut c0, &["SET", &mine[1], "2"]);
    let e = qerr(&mut c0, &["EXEC"]);
    assert_eq!(e, "CROSSSLOT Keys in request don't hash to the same slot");
    assert_eq!(qerr(&mut c0, &["EXEC"]), "ERR EXEC without MULTI");
    for k in &mine {
        assert_eq!(q::<i64>(&mut c0, &["EXISTS", k]), 0, "{k}");
    }
    let slot: i64 = q(&mut c0, &["CLUSTER", "KEYSLOT", "foo"]);
    let e = qerr(&mut c0, &["GET", "foo"]);
    assert_eq!(e, format!("MOVED {slot} 127.0.0.1:{}", cl.ports[2]));
    // MERIDIAN INVALIDATE is routed like a write: the owner applies it, others redirect.
    let e = qerr(&mut c0, &["MERIDIAN", "INVALIDATE", "foo"]);
    assert_eq!(e, format!("MOVED {slot} 127.0.0.1:{}", cl.ports[2]));
    let mut owner = cl.conn(2);
    let _: () = q(&mut owner, &["SET", "foo", "v"]);
    let removed: i64 = q(&mut owner, &["MERIDIAN", "INVALIDATE", "foo"]);
    assert_eq!(removed, 1);
    assert_eq!(q::<Option<String>>(&mut owner, &["GET", "foo"]), None);
    let e = qerr(&mut cl.conn(3), &["GET", "key:1"]);
    assert!(
        e.starts_with("MOVED"),
        "a replica redirects without READONLY: {e}"
    );

    if tool_available("redis-cli") {
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "check", &format!("127.0.0.1:{}", cl.ports[0])])
            .output()
            .expect("run redis-cli --cluster check");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("[OK] All 16384 slots covered."), "{text}");
        assert!(
            text.contains("[OK] All nodes agree about slots configuration."),
            "{text}"
        );
    }
}

/// SET `<prefix>:<i>` = i for i in 0..n through a cluster client, then GET each back.
fn set_and_read_back(con: &mut redis::cluster::ClusterConnection, prefix: &str, n: i64) {
    for i in 0..n {
        let _: () = con
            .set(format!("{prefix}:{i}"), i)
            .expect("SET through the cluster");
    }
    for i in 0..n {
        let v: i64 = con
            .get(format!("{prefix}:{i}"))
            .expect("GET through the cluster");
        assert_eq!(v, i, "{prefix}:{i}");
    }
}

/// Can `python3` import redis-py? Under CI a missing module fails the test (`.ci/run`
/// installs it); elsewhere the test is skipped with a notice.
fn python_redis_available() -> bool {
    if !tool_available("python3") {
        return false;
    }
    let ok = std::process::Command::new("python3")
        .args(["-c", "import redis.cluster"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("the python module redis (redis-py) is required in CI (.ci/run installs it)");
        }
        eprintln!("NOTICE: python3 cannot import redis (pip install redis); skipping this test");
    }
    ok
}

#[test]
fn redis_py_cluster_client_reads_and_writes_every_slot() {
    if !python_redis_available() {
        return;
    }
    let cl = Cluster::start_ready(5_000);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/cluster_client.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(cl.ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK 16384 slots over 3 primaries"),
        "redis-py RedisCluster failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The script's writes are where the slot map says: each primary holds a third.
    for i in 0..3 {
        let n: i64 = q(&mut cl.conn(i), &["DBSIZE"]);
        assert!(n > 5000, "primary {i} holds {n} keys");
    }
}

#[test]
fn restarted_node_keeps_its_identity() {
    let mut cl = Cluster::start(5_000);
    cl.wait_ok(4);
    let id: String = q(&mut cl.conn(4), &["CLUSTER", "MYID"]);
    cl.nodes[4] = None; // SIGKILL
    let s = cl.spawn(4);
    cl.nodes[4] = Some(s);
    let again: String = q(&mut cl.conn(4), &["CLUSTER", "MYID"]);
    assert_eq!(id, again);
    cl.wait_ok(4);
    let mut c0 = cl.conn(0);
    wait_until(DEADLINE, "the others see it connected again", || {
        let nodes: String = q(&mut c0, &["CLUSTER", "NODES"]);
        nodes
            .lines()
            .any(|l| l.starts_with(&id) && l.contains(" slave ") && !l.contains("fail"))
    });
}

#[test]
fn killed_primary_is_replaced_by_its_replica() {
    let mut cl = Cluster::start(1_000);
    for i in 0..6 {
        cl.wait_ok(i);
    }
    let mut c1 = cl.conn(1);
    let old: String = q(&mut cl.conn(0), &["CLUSTER", "MYID"]);
    let replica: String = q(&mut cl.conn(3), &["CLUSTER", "MYID"]);
    wait_until(DEADLINE, "node 3 replicates node 0", || {
        let nodes: String = q(&mut c1, &["CLUSTER", "NODES"]);
        nodes
            .lines()
            .any(|l| l.starts_with(&replica) && l.contains(&format!("slave {old}")))
    });
    // Writes acknowledged by WAIT 1 on the primary must survive its death.
    let mut c0 = cl.conn(0);
    let mut acked = Vec::new();
    for n in 0..2000 {
        let key = format!("acked:{n}");
        if redis::cmd("SET")
            .arg(&key)
            .arg(n)
            .query::<()>(&mut c0)
            .is_ok()
        {
            acked.push((key, n));
        }
    }
    assert!(acked.len() > 400, "node 0 owns a third of the keys");
    let replicas: i64 = q(&mut c0, &["WAIT", "1", "10000"]);
    assert_eq!(replicas, 1, "the replica acknowledged the writes");
    // The replica serves them to READONLY clients already.
    let mut c3r = cl.conn(3);
    let _: () = q(&mut c3r, &["READONLY"]);
    let v: i64 = q(&mut c3r, &["GET", &acked[0].0]);
    assert_eq!(v, acked[0].1);
    cl.nodes[0] = None; // SIGKILL the primary of slots 0-5460
    wait_until(DEADLINE, "the replica is promoted", || {
        let nodes: String = q(&mut c1, &["CLUSTER", "NODES"]);
        nodes
            .lines()
            .any(|l| l.starts_with(&replica) && l.contains("master") && l.contains("0-5460"))
    });
    // Writes to those slots are accepted again, at the promoted node.
    let mut c3 = cl.conn(3);
    wait_until(DEADLINE, "the promoted node accepts writes", || {
        redis::cmd("SET")
            .arg("key:0")
            .arg("after")
            .query::<()>(&mut c3)
            .is_ok()
    });
    let v: String = q(&mut c3, &["GET", "key:0"]);
    assert_eq!(v, "after");
    for (key, n) in &acked {
        let v: Option<i64> = q(&mut c3, &["GET", key]);
        assert_eq!(v, Some(*n), "acknowledged write {key} lost in the failover");
    }
    // The old primary comes back as a replica of the new one.
    let s = cl.spawn(0);
    cl.nodes[0] = Some(s);
    wait_until(DEADLINE, "old primary rejoins as a replica", || {
        let nodes: String = q(&mut c1, &["CLUSTER", "NODES"]);
        nodes
            .lines()
            .any(|l| l.starts_with(&old) && l.contains(&format!("slave {replica}")))
    });
}

#[test]
fn resharding_1000_slots_under_load_loses_and_duplicates_nothing() {
    if !tool_available("redis-cli") {
        return;
    }
    let cl = Cluster::start(5_000);
    for i in 0..3 {
        cl.wait_ok(i);
    }
    // Replicas attached before anything is written: what they hold afterwards came through
    // their primaries' streams (a late full sync would hide a missing stream frame).
    cl.wait_replicas_attached();
    let client = ClusterClient::new(cl.urls()).expect("cluster client");
    let mut con = client.get_connection().expect("cluster connection");
    const KEYS: usize = 2000;
    for i in 0..KEYS {
        let _: () = con.set(format!("key:{i}"), i).expect("load");
    }
    // A writer keeps incrementing counters spread over the moving slots while slots move;
    // the cluster client follows MOVED/ASK.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut con = client.get_connection().expect("writer connection");
        std::thread::spawn(move || {
            let mut done = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _: i64 = con
                    .incr(format!("ctr:{}", done % 50), 1)
                    .expect("INCR during resharding");
                done += 1;
            }
            done
        })
    };
    let from: String = q(&mut cl.conn(0), &["CLUSTER", "MYID"]);
    let to: String = q(&mut cl.conn(1), &["CLUSTER", "MYID"]);
    let out = std::process::Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", cl.ports[0]),
        ])
        .args(["--cluster-from", &from, "--cluster-to", &to])
        .args(["--cluster-slots", "1000", "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster reshard");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let increments = writer.join().expect("writer");

    let mut c1 = cl.conn(1);
    let nodes: String = q(&mut c1, &["CLUSTER", "NODES"]);
    let me = nodes
        .lines()
        .find(|l| l.contains("myself"))
        .expect("own line");
    assert!(me.contains("0-999"), "node 1 now owns slots 0-999: {me}");
    for i in 0..KEYS {
        let v: i64 = con.get(format!("key:{i}")).expect("GET after resharding");
        assert_eq!(v, i as i64, "key:{i}");
    }
    let mut counted = 0i64;
    for i in 0..50 {
        let v: Option<i64> = con.get(format!("ctr:{i}")).expect("counter");
        counted += v.unwrap_or(0);
    }
    assert_eq!(
        counted as u64, increments,
        "every acknowledged INCR is counted once"
    );
    let total: i64 = (0..3).map(|i| q::<i64>(&mut cl.conn(i), &["DBSIZE"])).sum();
    let counters = (0..50u64).filter(|i| *i < increments).count() as i64;
    assert_eq!(
        total,
        KEYS as i64 + counters,
        "no key lives on two primaries"
    );
    // Each replica follows its primary's moves: keys migrated away are dropped there too,
    // so it holds exactly its primary's keys (none of the moved slots stay on node 0's).
    for i in 0..3 {
        let (mut primary, mut replica) = (cl.conn(i), cl.conn(i + 3));
        wait_until(DEADLINE, "the replica holds its primary's keys", || {
            q::<i64>(&mut primary, &["DBSIZE"]) == q::<i64>(&mut replica, &["DBSIZE"])
        });
    }
    let mut r0 = cl.conn(3);
    let moved: i64 = (0..1000)
        .map(|s| q::<i64>(&mut r0, &["CLUSTER", "COUNTKEYSINSLOT", &s.to_string()]))
        .sum();
    assert_eq!(moved, 0, "node 0's replica still holds keys of moved slots");
}

#[test]
fn split_keys_of_a_migrating_slot_get_tryagain() {
    let cl = Cluster::start(5_000);
    for i in 0..3 {
        cl.wait_ok(i);
    }
    // A hash tag in node 0's slots (0-5460).
    let tag = tag_on_node0("mig");
    let slot = common::key_slot(format!("{{{tag}}}").as_bytes()).to_string();
    let [a, b, c] = ["a", "b", "c"].map(|k| format!("{{{tag}}}:{k}"));
    let (mut src, mut dst) = (cl.conn(0), cl.conn(1));
    for k in [&a, &b, &c] {
        let _: () = q(&mut src, &["SET", k, k]);
    }
    let _: () = q(&mut src, &["SADD", &format!("{{{tag}}}:s1"), "x"]);
    let _: () = q(&mut src, &["SADD", &format!("{{{tag}}}:s2"), "y"]);
    let src_id: String = q(&mut src, &["CLUSTER", "MYID"]);
    let dst_id: String = q(&mut dst, &["CLUSTER", "MYID"]);
    let _: () = q(
        &mut dst,
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id],
    );
    let _: () = q(
        &mut src,
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id],
    );
    let dst_port = cl.ports[1].to_string();
    let migrate = |con: &mut redis::Connection, key: &str| {
        let _: () = q(con, &["MIGRATE", "127.0.0.1", &dst_port, key, "0", "5000"]);
    };
    migrate(&mut src, &a);
    migrate(&mut src, &format!("{{{tag}}}:s1"));

    // Source: keys split between the nodes → TRYAGAIN, whatever the command.
    const TRYAGAIN: &str = "TRYAGAIN Multiple keys request during rehashing of slot";
    let s1 = format!("{{{tag}}}:s1");
    let s2 = format!("{{{tag}}}:s2");
    for cmd in [
        vec!["MGET", &a, &b],
        vec!["EXISTS", &b, &a],
        vec!["DEL", &a, &b, &c],
        vec!["SUNION", &s1, &s2],
        vec!["MSET", &a, "1", &b, "2"],
    ] {
        assert_eq!(qerr(&mut src, &cmd), TRYAGAIN, "{cmd:?} on the source");
    }
    // Nothing was written or deleted by the refused commands.
    let vals: Vec<Option<String>> = q(&mut src, &["MGET", &b, &c]);
    assert_eq!(
        vals,
        vec![Some(b.clone()), Some(c.clone())],
        "all here: served"
    );
    // All gone from the source: ASK, not TRYAGAIN.
    let ask = format!("ASK {slot} 127.0.0.1:{dst_port}");
    assert_eq!(
        qerr(&mut src, &["MGET", &a, &format!("{{{tag}}}:none")]),
        ask
    );
    assert_eq!(qerr(&mut src, &["GET", &a]), ask);

    // Target, after ASKING: a multi-key command needs every key already there.
    let _: () = q(&mut dst, &["ASKING"]);
    assert_eq!(qerr(&mut dst, &["MGET", &a, &b]), TRYAGAIN);
    let _: () = q(&mut dst, &["ASKING"]);
    assert_eq!(qerr(&mut dst, &["SUNION", &s1, &s2]), TRYAGAIN);
    let _: () = q(&mut dst, &["ASKING"]);
    let v: String = q(&mut dst, &["GET", &a]);
    assert_eq!(v, a, "one key, present: served");
    let _: () = q(&mut dst, &["ASKING"]);
    let v: Vec<String> = q(&mut dst, &["MGET", &a, &a]);
    assert_eq!(
        v,
        vec![a.clone(), a.clone()],
        "the same key twice is one key"
    );
    // Without ASKING the target redirects to the owner.
    assert!(qerr(&mut dst, &["MGET", &a, &b]).starts_with("MOVED"));

    // Once every key moved, the target serves the multi-key command under ASKING.
    migrate(&mut src, &b);
    migrate(&mut src, &c);
    migrate(&mut src, &s2);
    assert_eq!(qerr(&mut src, &["MGET", &a, &b]), ask);
    let _: () = q(&mut dst, &["ASKING"]);
    let v: Vec<String> = q(&mut dst, &["MGET", &a, &b, &c]);
    assert_eq!(v, vec![a.clone(), b.clone(), c.clone()]);
    let _: () = q(&mut dst, &["ASKING"]);
    let members: Vec<String> = common::sorted(q(&mut dst, &["SUNION", &s1, &s2]));
    assert_eq!(members, vec!["x".to_string(), "y".to_string()]);

    // ASKING before MULTI covers the whole transaction (as in Redis): EXEC runs at the
    // importing target.
    let _: () = q(&mut dst, &["ASKING"]);
    let _: () = q(&mut dst, &["MULTI"]);
    let _: String = q(&mut dst, &["SET", &a, "via-exec"]);
    let _: String = q(&mut dst, &["GET", &a]);
    let r: Vec<Option<String>> = q(&mut dst, &["EXEC"]);
    assert_eq!(r, vec![Some("OK".into()), Some("via-exec".into())]);
    // Without it, a queued command is redirected at once and EXEC aborts (as in Redis).
    let _: () = q(&mut dst, &["MULTI"]);
    assert!(qerr(&mut dst, &["GET", &a]).starts_with("MOVED"));
    assert!(qerr(&mut dst, &["EXEC"]).starts_with("EXECABORT"));
    assert_eq!(qerr(&mut dst, &["EXEC"]), "ERR EXEC without MULTI");
}

/// Six fresh nodes (no `meet`, no `slots` in their configs) become a cluster at runtime the
/// way Redis users make one: `redis-cli --cluster create … --cluster-replicas 1`, which
/// gives each node its config epoch (CLUSTER SET-CONFIG-EPOCH), assigns slots, MEETs them
/// and attaches replicas. Then cluster clients work, and the admin subcommands a cluster
/// tool reads (REPLICAS, BUMPEPOCH, HELP) answer as in Redis.
#[test]
fn redis_cli_cluster_create_forms_a_cluster_at_runtime() {
    if !tool_available("redis-cli") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("meridian-create-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cluster dir");
    let ports: Vec<u16> = (0..6).map(|_| common::free_port()).collect();
    let nodes: Vec<common::Server> = ports
        .iter()
        .map(|p| {
            let toml = format!(
                "bind = \"127.0.0.1\"\nport = {p}\n[cluster]\nbus-port = {bus}\nnode-timeout-ms = 5000\nnodes-file = \"{dir}/nodes-{p}.json\"\n",
                bus = common::free_port(),
                dir = dir.display(),
            );
            common::Server::start_with_config(&toml, &["--port", &p.to_string()])
        })
        .collect();

    // A fresh node takes a config epoch; it refuses one once set, or once it knows a peer.
    let mut c5 = nodes[5].conn();
    let e = qerr(&mut c5, &["CLUSTER", "SET-CONFIG-EPOCH", "-1"]);
    assert_eq!(e, "ERR Invalid config epoch specified: -1");

    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster create");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("[OK] All 16384 slots covered."),
        "redis-cli --cluster create failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for n in &nodes {
        let mut con = n.conn();
        wait_until(DEADLINE, "cluster_state:ok with six nodes", || {
            let info: String = q(&mut con, &["CLUSTER", "INFO"]);
            info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6")
        });
    }
    let e = qerr(&mut c5, &["CLUSTER", "SET-CONFIG-EPOCH", "9"]);
    assert_eq!(
        e,
        "ERR The user can assign a config epoch only when the node does not know any other node."
    );

    // Every node's epoch is its own: redis-cli handed out distinct ones before the MEETs.
    let mut c0 = nodes[0].conn();
    let table: String = q(&mut c0, &["CLUSTER", "NODES"]);
    let mut epochs: Vec<&str> = table.lines().filter_map(|l| l.split(' ').nth(6)).collect();
    epochs.sort_unstable();
    epochs.dedup();
    assert_eq!(epochs.len(), 6, "config epochs not distinct:\n{table}");

    // Each primary lists its one replica, in CLUSTER NODES' line format.
    let primaries: Vec<(String, usize)> = table
        .lines()
        .filter(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("master")))
        .filter_map(|l| {
            let id = l.split(' ').next()?.to_string();
            let port: u16 = l
                .split(' ')
                .nth(1)?
                .split([':', '@'])
                .nth(1)?
                .parse()
                .ok()?;
            Some((id, ports.iter().position(|p| *p == port)?))
        })
        .collect();
    assert_eq!(primaries.len(), 3, "{table}");
    let replica_line = |con: &mut redis::Connection, id: &str| -> Option<String> {
        let lines: Vec<String> = q(con, &["CLUSTER", "REPLICAS", id]);
        (lines.len() == 1).then(|| lines[0].clone())
    };
    for (id, _) in &primaries {
        wait_until(DEADLINE, "the primary's replica is listed", || {
            replica_line(&mut c0, id).is_some_and(|l| {
                l.split(' ').nth(2).is_some_and(|f| f.contains("slave"))
                    && l.split(' ').nth(3) == Some(id.as_str())
            })
        });
    }
    let replica_id = replica_line(&mut c0, &primaries[0].0)
        .and_then(|l| l.split(' ').next().map(str::to_string))
        .expect("a replica");
    let e = qerr(&mut c0, &["CLUSTER", "SLAVES", &replica_id]);
    assert_eq!(e, "ERR The specified node is not a master");
    let stranger = "0123456789abcdef0123456789abcdef01234567";
    let e = qerr(&mut c0, &["CLUSTER", "REPLICAS", stranger]);
    assert_eq!(e, format!("ERR Unknown node {stranger}"));
    let e = qerr(&mut c0, &["CLUSTER", "INFO", "extra"]);
    assert_eq!(
        e,
        "ERR wrong number of arguments for 'cluster|info' command"
    );

    // Cluster clients read and write across the slots.
    let client = ClusterClient::new(
        addrs
            .iter()
            .map(|a| format!("redis://{a}/"))
            .collect::<Vec<_>>(),
    )
    .expect("cluster client");
    let mut con = client.get_connection().expect("cluster connection");
    set_and_read_back(&mut con, "k", 300);
    let mut held = 0;
    for (_, i) in &primaries {
        let n: i64 = q(&mut nodes[*i].conn(), &["DBSIZE"]);
        assert!(n > 50, "primary on port {} holds {n} keys", ports[*i]);
        held += n;
    }
    assert_eq!(held, 300);

    // BUMPEPOCH: a primary whose epoch is not the greatest takes a new, greatest one.
    let (_, lowest) = primaries
        .iter()
        .min_by_key(|(id, _)| {
            table
                .lines()
                .find(|l| l.starts_with(id.as_str()))
                .and_then(|l| l.split(' ').nth(6)?.parse::<u64>().ok())
        })
        .expect("a primary");
    let bumped: String = q(&mut nodes[*lowest].conn(), &["CLUSTER", "BUMPEPOCH"]);
    let epoch = bumped
        .strip_prefix("BUMPED ")
        .and_then(|e| e.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("not bumped: {bumped}\n{table}"));
    let greatest = epochs.iter().filter_map(|e| e.parse::<u64>().ok()).max();
    assert!(
        greatest.is_some_and(|g| epoch > g),
        "{bumped} is not above every epoch:\n{table}"
    );
    let still: String = q(&mut nodes[*lowest].conn(), &["CLUSTER", "BUMPEPOCH"]);
    assert_eq!(still, format!("STILL {epoch}"));

    // Unknown subcommands and wrong arities get Redis' errors; HELP lists the subcommands.
    let e = qerr(&mut c0, &["CLUSTER", "NOSUCH"]);
    assert_eq!(e, "ERR unknown subcommand 'NOSUCH'. Try CLUSTER HELP.");
    let e = qerr(&mut c0, &["CLUSTER", "REPLICAS"]);
    assert_eq!(
        e,
        "ERR wrong number of arguments for 'cluster|replicas' command"
    );
    let help: Vec<String> = q(&mut c0, &["CLUSTER", "HELP"]);
    assert!(help.iter().any(|l| l.starts_with("REPLICAS")), "{help:?}");

    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A primary that loses a slot still holding keys (another node claims it with a greater
/// config epoch: here BUMPEPOCH then SETSLOT NODE, Redis' way to take a slot over) drops
/// those keys, and its replica drops them too, in stream order.
#[test]
fn a_slot_taken_over_is_dropped_by_the_old_owner_and_its_replica() {
    let cl = Cluster::start_ready(5_000);
    let tag = tag_on_node0("t");
    let slot = common::key_slot(format!("{{{tag}}}").as_bytes()).to_string();
    let (mut c0, mut c1, mut r0) = (cl.conn(0), cl.conn(1), cl.conn(3));
    for i in 0..20 {
        let _: () = q(&mut c0, &["SET", &format!("{{{tag}}}:{i}"), "v"]);
    }
    let _: i64 = q(&mut c0, &["WAIT", "1", "5000"]);
    let count =
        |con: &mut redis::Connection| -> i64 { q(con, &["CLUSTER", "COUNTKEYSINSLOT", &slot]) };
    assert_eq!(count(&mut r0), 20, "the replica has the keys");

    // Node 1 takes the greatest epoch first (it may already hold it), then the slot.
    let id1: String = q(&mut c1, &["CLUSTER", "MYID"]);
    let bumped: String = q(&mut c1, &["CLUSTER", "BUMPEPOCH"]);
    assert!(
        bumped.starts_with("BUMPED ") || bumped.starts_with("STILL "),
        "{bumped}"
    );
    let _: () = q(&mut c1, &["CLUSTER", "SETSLOT", &slot, "NODE", &id1]);
    wait_until(
        DEADLINE,
        "the old owner and its replica drop the slot",
        || count(&mut c0) == 0 && count(&mut r0) == 0,
    );
    let e = qerr(&mut c0, &["GET", &format!("{{{tag}}}:0")]);
    assert_eq!(e, format!("MOVED {slot} 127.0.0.1:{}", cl.ports[1]));
    // The rest of node 0's data is untouched on both.
    let (n0, n3): (i64, i64) = (q(&mut c0, &["DBSIZE"]), q(&mut r0, &["DBSIZE"]));
    assert_eq!(n0, n3);
}

/// `CLUSTER FAILOVER` (default mode) under a steady writer: the primary pauses writes until
/// its replica has everything and takes over, so the writer sees only delays and then
/// `MOVED` (never `CLUSTERDOWN`, as in Redis), and no acknowledged INCR is lost: each reply
/// is exactly one more than the last, across the switch.
#[test]
fn manual_failover_pauses_writers_and_loses_no_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    let cl = Cluster::start_ready(5_000);
    let tag = tag_on_node0("mf");
    // Four writers, each INCRs its own counter on node 0 through its own connection.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let key = format!("{{{tag}}}:ctr{w}");
            let acked = Arc::new(AtomicU64::new(0));
            let (stop, seen) = (stop.clone(), acked.clone());
            let mut port = cl.ports[0];
            let handle = std::thread::spawn(move || {
                let connect = |port: u16| {
                    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                        .and_then(|c| c.get_connection())
                        .expect("writer connection")
                };
                let mut con = connect(port);
                let mut errors = Vec::new();
                while !stop.load(Relaxed) {
                    match redis::cmd("INCR").arg(&key).query::<u64>(&mut con) {
                        Ok(n) => {
                            let before = seen.fetch_add(1, Relaxed);
                            assert_eq!(n, before + 1, "an acknowledged INCR was lost ({port})");
                        }
                        Err(e) if common::err_text(&e).starts_with("MOVED") => {
                            port = common::err_text(&e)
                                .rsplit(':')
                                .next()
                                .and_then(|p| p.parse().ok())
                                .expect("MOVED names a port");
                            con = connect(port);
                        }
                        Err(e) => errors.push(common::err_text(&e)),
                    }
                }
                (key, port, errors)
            });
            (acked, handle)
        })
        .collect();
    let acked = || {
        writers
            .iter()
            .map(|(a, _)| a.load(Relaxed))
            .min()
            .unwrap_or(0)
    };
    wait_until(DEADLINE, "the writers are going", || acked() > 200);
    let _: () = q(&mut cl.conn(3), &["CLUSTER", "FAILOVER"]);
    let role = |i: usize| -> String {
        let r: Vec<redis::Value> = q(&mut cl.conn(i), &["ROLE"]);
        match r.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        }
    };
    wait_until(DEADLINE, "the replica took over", || {
        role(3) == "master" && role(0) == "slave"
    });
    let at_switch = acked();
    wait_until(DEADLINE, "the writers go on at the new primary", || {
        acked() > at_switch + 200
    });
    stop.store(true, Relaxed);
    let mut promoted = cl.conn(3);
    for (count, handle) in writers {
        let (key, port, errors) = handle.join().expect("writer");
        assert_eq!(
            port, cl.ports[3],
            "{key}: the writer followed MOVED to the promoted replica"
        );
        assert!(
            errors.is_empty(),
            "{key}: writes failed during the failover: {errors:?}"
        );
        let total: u64 = q(&mut promoted, &["GET", &key]);
        assert_eq!(total, count.load(Relaxed), "{key}");
    }
}

/// The bus of a cluster with `bus-secret` refuses anyone who cannot prove it: a stranger
/// that skips the handshake, or answers it with another secret, and sends a MEET claiming
/// every slot with a huge epoch is disconnected and counted; nobody learns of it, no slot
/// moves, and the cluster keeps serving.
#[test]
fn a_stranger_without_the_bus_secret_is_refused_and_counted() {
    use meridian_regions::bus::{self, Body, BusMessage, Header};
    use meridian_regions::bus_auth::{BusSecret, NONCE_BYTES};
    use meridian_regions::topology::{NodeFlags, NodeId, SlotBitmap};
    use std::io::{Read, Write};

    let cl = Cluster::start_ready(5_000);
    let mut c0 = cl.conn(0);
    let nodes_before: String = q(&mut c0, &["CLUSTER", "NODES"]);
    let mut slots = SlotBitmap::default();
    for s in 0..16384u16 {
        slots.set(s, true);
    }
    let stranger = NodeId::from_u128(0xBAD);
    let meet = BusMessage {
        header: Header {
            sender: stranger,
            host: "127.0.0.1".into(),
            port: 1,
            bus_port: 2,
            repl_port: 0,
            current_epoch: u64::MAX,
            config_epoch: u64::MAX - 1,
            replica_of: None,
            repl_offset: 0,
            flags: NodeFlags::default(),
            slots,
            mf_paused: false,
        },
        body: Body::Meet { gossip: vec![] },
    };
    let frame = bus::encode(&meet).expect("encode");
    let wrong = BusSecret::new(b"not-the-region-bus-secret").expect("secret");
    for with_wrong_hello in [false, true] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", cl.bus[0])).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut challenge = [0u8; NONCE_BYTES];
        s.read_exact(&mut challenge)
            .expect("the bus sends a challenge");
        if with_wrong_hello {
            let (hello, mut signer) = wrong.hello(&challenge, [5u8; NONCE_BYTES]);
            let _ = s.write_all(&hello);
            let _ = s.write_all(&frame);
            let _ = s.write_all(&signer.sign(&frame));
        } else {
            // Frames straight away, as a node without the secret would send them.
            for _ in 0..4 {
                let _ = s.write_all(&frame);
            }
        }
        // The node closes the connection.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    wait_until(DEADLINE, "both refusals counted", || {
        let n: String = common::info_field(&mut c0, "cluster_bus_auth_failures");
        n.parse::<u64>().unwrap_or(0) >= 2
    });
    let nodes: String = q(&mut c0, &["CLUSTER", "NODES"]);
    assert!(!nodes.contains(&stranger.redis_name()), "{nodes}");
    assert_eq!(nodes.lines().count(), nodes_before.lines().count());
    let info: String = q(&mut c0, &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_known_nodes:6"), "{info}");
    assert!(
        !info.contains(&format!("cluster_current_epoch:{}", u64::MAX)),
        "{info}"
    );
    let slots: Vec<redis::Value> = q(&mut c0, &["CLUSTER", "SLOTS"]);
    assert_eq!(slots.len(), 3, "the three primaries keep their slots");
    let key = format!("{{{}}}x", tag_on_node0("k"));
    let _: () = q(&mut c0, &["SET", &key, "v"]);
}
