//! Pub/sub on one node (issue 24): Redis 7's replies in RESP2 subscribe mode and RESP3,
//! real clients (the `redis` crate, redis-cli, redis-py with protocol=3), and a slow
//! subscriber closed by `client-output-buffer-limit pubsub` while PUBLISH keeps answering.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// Send each command (raw RESP) and read the given number of replies.
fn run(raw: &mut Raw, script: &[(&[&str], usize)]) -> Vec<Resp> {
    let mut out = Vec::new();
    for (args, replies) in script {
        raw.send(&encode_cmd(args));
        for _ in 0..*replies {
            out.push(raw.read());
        }
    }
    out
}

#[test]
fn resp2_subscribe_mode_replies_as_redis() {
    let s = Server::start();
    let Some(reference) = RedisRef::start() else {
        return;
    };
    let script: &[(&[&str], usize)] = &[
        (&["SUBSCRIBE", "a", "b"], 2),
        (&["SUBSCRIBE", "a"], 1),
        (&["PSUBSCRIBE", "p*"], 1),
        (&["GET", "x"], 1),
        (&["PING"], 1),
        (&["PING", "hi"], 1),
        (&["SSUBSCRIBE", "s"], 1),
        (&["UNSUBSCRIBE", "b", "nosuch"], 2),
        (&["PUNSUBSCRIBE"], 1),
        (&["PUNSUBSCRIBE"], 1),
        (&["SUNSUBSCRIBE", "s"], 1),
        (&["UNSUBSCRIBE"], 1),
        (&["UNSUBSCRIBE"], 1),
        (&["GET", "x"], 1),
        (&["PING"], 1),
    ];
    let ours = run(&mut s.raw(), script);
    let theirs = run(&mut reference.raw(), script);
    assert_eq!(ours, theirs);

    // Messages and PUBSUB introspection, with one subscriber.
    let mut results = Vec::new();
    for port in [s.port, reference.port] {
        let mut sub = Raw::connect(port);
        let mut publ = Raw::connect(port);
        let mut got = run(
            &mut sub,
            &[(&["SUBSCRIBE", "news"], 1), (&["PSUBSCRIBE", "n?ws"], 1)],
        );
        got.extend(run(
            &mut publ,
            &[
                (&["PUBLISH", "news", "hello"], 1),
                (&["PUBLISH", "nobody", "x"], 1),
                (&["PUBSUB", "NUMSUB", "news", "other"], 1),
                (&["PUBSUB", "NUMPAT"], 1),
                (&["PUBSUB", "CHANNELS", "ne*"], 1),
                (&["PUBSUB", "SHARDCHANNELS"], 1),
                (&["PUBSUB", "SHARDNUMSUB", "news"], 1),
                (&["PUBSUB", "NOPE"], 1),
                (&["PUBSUB", "CHANNELS", "a", "b"], 1),
                (&["SPUBLISH", "news", "x"], 1),
            ],
        ));
        got.push(sub.read());
        got.push(sub.read());
        results.push(got);
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn resp3_pushes_arrive_between_ordinary_replies() {
    let s = Server::start();
    let mut sub = s.raw();
    sub.cmd(&["HELLO", "3"]);
    let got = run(
        &mut sub,
        &[
            (&["SUBSCRIBE", "ch"], 1),
            (&["SET", "k", "v"], 1),
            (&["PUBLISH", "ch", "m"], 2),
            (&["GET", "k"], 1),
        ],
    );
    let push = |v: &[&str]| {
        Resp::Push(
            v.iter()
                .map(|s| match s.parse::<i64>() {
                    Ok(n) => Resp::Int(n),
                    Err(_) => Resp::bulk(s),
                })
                .collect(),
        )
    };
    assert_eq!(
        got,
        vec![
            push(&["subscribe", "ch", "1"]),
            Resp::ok(),
            push(&["message", "ch", "m"]),
            Resp::Int(1),
            Resp::bulk("v"),
        ]
    );
}

#[test]
fn redis_crate_receives_channel_and_pattern_messages() {
    let s = Server::start();
    let mut con = s.conn();
    let mut publisher = s.conn();
    let mut ps = con.as_pubsub();
    ps.subscribe("orders").unwrap();
    ps.psubscribe("user.*").unwrap();
    ps.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let n: i64 = q(&mut publisher, &["PUBLISH", "orders", "o1"]);
    assert_eq!(n, 1);
    let n: i64 = q(&mut publisher, &["PUBLISH", "user.42", "u"]);
    assert_eq!(n, 1);
    let m = ps.get_message().unwrap();
    assert_eq!(m.get_channel_name(), "orders");
    assert_eq!(m.get_payload::<String>().unwrap(), "o1");
    let m = ps.get_message().unwrap();
    assert_eq!(m.get_channel_name(), "user.42");
    assert_eq!(m.get_pattern::<String>().unwrap(), "user.*");
    assert_eq!(m.get_payload::<String>().unwrap(), "u");
}

#[test]
fn redis_cli_in_subscribe_mode_prints_messages() {
    if !tool_available("redis-cli") {
        return;
    }
    let s = Server::start();
    let mut child = Command::new("redis-cli")
        .args(["-p", &s.port.to_string(), "SUBSCRIBE", "alerts"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-cli");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut con = s.conn();
    wait_until(WAIT_TIMEOUT, "redis-cli subscribed", || {
        v(&mut con, &["PUBSUB", "NUMSUB", "alerts"])
            == redis::Value::Array(vec![
                redis::Value::BulkString(b"alerts".to_vec()),
                redis::Value::Int(1),
            ])
    });
    let n: i64 = q(&mut con, &["PUBLISH", "alerts", "disk full"]);
    assert_eq!(n, 1);
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l == "disk full") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("redis-cli printed no message: {lines:?}"),
        }
    }
    assert_eq!(
        lines,
        ["subscribe", "alerts", "1", "message", "alerts", "disk full"]
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn redis_py_resp3_pubsub() {
    let have_py = tool_available("python3")
        && Command::new("python3")
            .args(["-c", "import redis"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !have_py {
        return;
    }
    let s = Server::start();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/pubsub_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(format!("127.0.0.1:{}", s.port))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK pubsub"),
        "redis-py pubsub script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn a_subscriber_that_does_not_read_is_closed_and_publish_keeps_answering() {
    let s = Server::start();
    let mut con = s.conn();
    let _: () = q(
        &mut con,
        &[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 1mb 256kb 60",
        ],
    );
    let mut slow = s.raw();
    slow.send(&encode_cmd(&["SUBSCRIBE", "firehose"]));
    assert_eq!(
        slow.read(),
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("firehose"),
            Resp::Int(1)
        ])
    );
    let payload = "x".repeat(64 * 1024);
    let before = info_u64(&mut con, "client_output_buffer_limit_disconnections");
    // The slow subscriber never reads: its socket buffers fill, then its mailbox, then it
    // is closed. Every PUBLISH answers meanwhile.
    wait_until(WAIT_TIMEOUT, "the slow subscriber is disconnected", || {
        let _: i64 = q(&mut con, &["PUBLISH", "firehose", &payload]);
        info_u64(&mut con, "client_output_buffer_limit_disconnections") > before
    });
    wait_until(WAIT_TIMEOUT, "its subscription is gone", || {
        v(&mut con, &["PUBSUB", "NUMSUB", "firehose"])
            == redis::Value::Array(vec![
                redis::Value::BulkString(b"firehose".to_vec()),
                redis::Value::Int(0),
            ])
    });
    let n: i64 = q(&mut con, &["PUBLISH", "firehose", "after"]);
    assert_eq!(n, 0);
    assert!(info_u64(&mut con, "pubsub_output_buffer_disconnections") >= 1);
    assert_eq!(info_u64(&mut con, "pubsub_channels"), 0);
}

#[test]
fn acl_channel_rules_gate_subscribe_and_publish() {
    let s = Server::start();
    let mut admin = s.conn();
    let _: () = q(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            "feeds",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
            "&news.*",
        ],
    );
    let mut raw = s.raw();
    assert_eq!(raw.cmd(&["AUTH", "feeds", "pw"]), Resp::ok());
    assert_eq!(raw.cmd(&["PUBLISH", "news.eu", "x"]), Resp::Int(0));
    assert_eq!(
        raw.cmd(&["PUBLISH", "sports", "x"]),
        Resp::err("NOPERM No permissions to access a channel")
    );
    assert_eq!(
        raw.cmd(&["PSUBSCRIBE", "news*"]),
        Resp::err("NOPERM No permissions to access a channel")
    );
    assert_eq!(
        raw.cmd(&["SUBSCRIBE", "news.eu"]),
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("news.eu"),
            Resp::Int(1)
        ])
    );
    let log = v(&mut admin, &["ACL", "LOG", "1"]);
    assert!(format!("{log:?}").contains("channel"), "{log:?}");
}

fn push2(kind: &str, channel: &str, last: Resp) -> Resp {
    Resp::Array(vec![Resp::bulk(kind), Resp::bulk(channel), last])
}

/// As Redis Cluster: PUBLISH on any node reaches the subscribers of every node of the
/// region (over the authenticated bus); SPUBLISH reaches the slot's shard (its primary and
/// replicas), and a node outside the shard answers MOVED to shard commands.
#[test]
fn cluster_publish_reaches_every_node_and_spublish_the_shard() {
    let cl = common::cluster::Cluster::start_ready(5_000);
    let mut subs: Vec<Raw> = (0..6).map(|i| Raw::connect(cl.ports[i])).collect();
    for s in &mut subs {
        s.send(&encode_cmd(&["SUBSCRIBE", "news"]));
        assert_eq!(s.read(), push2("subscribe", "news", Resp::Int(1)));
    }
    let mut p = cl.conn(2);
    // The count is this node's subscribers, as in Redis Cluster.
    let n: i64 = q(&mut p, &["PUBLISH", "news", "hi"]);
    assert_eq!(n, 1);
    for s in &mut subs {
        assert_eq!(s.read(), push2("message", "news", Resp::bulk("hi")));
    }

    // A shard channel whose slot node 0 serves (node 3 is its replica).
    let ch = format!("{{{}}}", common::cluster::tag_on_node0("sch"));
    let mut primary = Raw::connect(cl.ports[0]);
    let mut replica = Raw::connect(cl.ports[3]);
    for s in [&mut primary, &mut replica] {
        s.send(&encode_cmd(&["SSUBSCRIBE", &ch]));
        assert_eq!(s.read(), push2("ssubscribe", &ch, Resp::Int(1)));
    }
    let mut other = Raw::connect(cl.ports[1]);
    let moved = other.cmd(&["SSUBSCRIBE", &ch]);
    assert!(moved.text().starts_with("MOVED "), "{moved:?}");
    let moved = other.cmd(&["SPUBLISH", &ch, "x"]);
    assert!(moved.text().starts_with("MOVED "), "{moved:?}");
    // SPUBLISH on the replica (allowed without READONLY, as Redis) reaches the primary.
    let mut r = cl.conn(3);
    let n: i64 = q(&mut r, &["SPUBLISH", &ch, "s1"]);
    assert_eq!(n, 1);
    assert_eq!(replica.read(), push2("smessage", &ch, Resp::bulk("s1")));
    assert_eq!(primary.read(), push2("smessage", &ch, Resp::bulk("s1")));
}
