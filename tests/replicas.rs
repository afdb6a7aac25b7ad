//! In-region replicas (REPLICAOF): real primary and replica processes. A replica converges
//! through a full sync of existing data then the live stream; it refuses writes; a dropped
//! link resumes with a partial resync while the backlog covers it and a full one when not;
//! it survives the primary's death and can be promoted; WAIT and min-replicas-to-write count
//! its acks. Every wait is on a condition with a deadline.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;

fn replica_of(primary: &Server, extra: &[&str]) -> Server {
    let target = format!("127.0.0.1 {}", primary.port);
    let mut args = vec!["--replicaof", target.as_str()];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

fn wait_online(replica: &mut redis::Connection) {
    wait_until(
        WAIT_TIMEOUT,
        "the replica is in sync with its primary",
        || {
            info_field(replica, "master_link_status") == "up"
                && info_field(replica, "master_sync_in_progress") == "0"
        },
    );
}

/// A reply of `args` with members and fields in a canonical order: each process hashes
/// them with its own seed (as Redis does), so their order differs between nodes.
fn unordered(args: &[&str], v: redis::Value) -> Vec<String> {
    match v {
        redis::Value::Array(items) if args[0] == "SMEMBERS" => {
            let mut items: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
            items.sort();
            items
        }
        redis::Value::Array(items) if args[0] == "HGETALL" => {
            let mut pairs: Vec<String> = items.chunks(2).map(|p| format!("{p:?}")).collect();
            pairs.sort();
            pairs
        }
        v => vec![format!("{v:?}")],
    }
}

/// The replica answers `args` like the primary does (polls until it does).
fn wait_same(primary: &mut redis::Connection, replica: &mut redis::Connection, args: &[&str]) {
    let want = unordered(args, v(primary, args));
    wait_until(
        WAIT_TIMEOUT,
        &format!("the replica answers {args:?} like the primary"),
        || unordered(args, v(replica, args)) == want,
    );
}

fn offset_acked_by_all(primary: &mut redis::Connection) -> bool {
    let text: String = q(primary, &["INFO", "replication"]);
    let master: u64 = info_u64(primary, "master_repl_offset");
    text.lines()
        .filter(|l| l.starts_with("slave"))
        .all(|l| l.contains(&format!("offset={master},")))
}

#[test]
fn replica_converges_full_sync_then_live_stream() {
    let primary = Server::start();
    let mut p = primary.conn();
    // Pre-existing data of every type, with a TTL: reaches the replica by full sync.
    let _: () = q(&mut p, &["SET", "str", "hello"]);
    let _: i64 = q(&mut p, &["INCRBY", "ctr", "41"]);
    let _: i64 = q(&mut p, &["SADD", "set", "a", "b", "c"]);
    let _: i64 = q(&mut p, &["HSET", "hash", "f1", "v1", "f2", "v2"]);
    let _: () = q(&mut p, &["SET", "ttl", "soon", "EX", "1000"]);
    let _: () = q(&mut p, &["SET", "gone", "x"]);
    let _: i64 = q(&mut p, &["DEL", "gone"]);
    for i in 0..300 {
        let _: () = q(&mut p, &["SET", &format!("bulk:{i}"), &i.to_string()]);
    }

    let replica = replica_of(&primary, &[]);
    let mut r = replica.conn();
    wait_online(&mut r);
    for args in [
        &["GET", "str"][..],
        &["GET", "ctr"],
        &["SMEMBERS", "set"],
        &["HGETALL", "hash"],
        &["EXISTS", "gone"],
        &["DBSIZE"],
        &["PEXPIRETIME", "ttl"],
    ] {
        wait_same(&mut p, &mut r, args);
    }
    assert_eq!(info_u64(&mut p, "sync_full"), 1);
    assert_eq!(info_field(&mut r, "role"), "slave");
    assert_eq!(info_field(&mut r, "master_port"), primary.port.to_string());
    assert_eq!(info_field(&mut p, "connected_slaves"), "1");
    let slave0 = info_field(&mut p, "slave0");
    assert!(
        slave0.contains(&format!("port={}", replica.port)) && slave0.contains("state=online"),
        "{slave0}"
    );

    // Live stream: every kind of change.
    let _: i64 = q(&mut p, &["INCRBY", "ctr", "1"]);
    let _: i64 = q(&mut p, &["SREM", "set", "b"]);
    let _: i64 = q(&mut p, &["SADD", "set", "d"]);
    let _: i64 = q(&mut p, &["HDEL", "hash", "f1"]);
    let _: i64 = q(&mut p, &["HINCRBY", "hash", "n", "7"]);
    let _: () = q(&mut p, &["SET", "str", "world"]);
    let _: i64 = q(&mut p, &["EXPIRE", "str", "500"]);
    let _: i64 = q(&mut p, &["PERSIST", "ttl"]);
    let _: i64 = q(&mut p, &["DEL", "bulk:7"]);
    let acked: i64 = q(&mut p, &["WAIT", "1", "5000"]);
    assert_eq!(acked, 1, "WAIT counts the replica that acked the writes");
    // WAIT returned 1: the replica acked this client's last write, so it already holds it.
    assert_eq!(q::<String>(&mut r, &["GET", "ctr"]), "42");
    for args in [
        &["GET", "str"][..],
        &["SMEMBERS", "set"],
        &["HGETALL", "hash"],
        &["PEXPIRETIME", "str"],
        &["TTL", "ttl"],
        &["DBSIZE"],
    ] {
        assert_eq!(
            unordered(args, v(&mut r, args)),
            unordered(args, v(&mut p, args)),
            "{args:?} after WAIT"
        );
    }
    assert!(offset_acked_by_all(&mut p));
    assert_eq!(
        info_u64(&mut r, "slave_repl_offset"),
        info_u64(&mut p, "master_repl_offset")
    );
}

#[test]
fn replica_refuses_writes_but_applies_the_stream() {
    let primary = Server::start();
    let replica = replica_of(&primary, &[]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    wait_online(&mut r);
    for args in [
        &["SET", "k", "v"][..],
        &["INCR", "c"],
        &["SADD", "s", "m"],
        &["HSET", "h", "f", "v"],
        &["DEL", "k"],
        &["FLUSHALL"],
    ] {
        assert_eq!(
            qerr(&mut r, args),
            "READONLY You can't write against a read only replica.",
            "{args:?}"
        );
    }
    let _: () = q(&mut r, &["MULTI"]);
    let _: String = q(&mut r, &["SET", "k", "v"]);
    assert!(qerr(&mut r, &["EXEC"]).starts_with("READONLY"));
    assert!(qerr(&mut r, &["WAIT", "0", "0"]).contains("replica"));
    // Reads work, and replicated writes still apply.
    let _: () = q(&mut p, &["SET", "k", "from-primary"]);
    wait_same(&mut p, &mut r, &["GET", "k"]);
    let role: redis::Value = q(&mut r, &["ROLE"]);
    assert!(format!("{role:?}").contains("slave"), "{role:?}");
}

#[test]
fn dropped_link_resumes_with_partial_resync() {
    let primary = Server::start();
    let replica = replica_of(&primary, &[]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    let _: () = q(&mut p, &["SET", "before", "1"]);
    wait_online(&mut r);
    wait_same(&mut p, &mut r, &["GET", "before"]);
    assert_eq!(info_u64(&mut p, "sync_partial_ok"), 0);

    // The primary drops the link; the replica reconnects and continues from its offset.
    let killed: i64 = q(&mut p, &["CLIENT", "KILL", "TYPE", "replica"]);
    assert_eq!(killed, 1);
    let _: () = q(&mut p, &["SET", "after-kill", "2"]);
    wait_until(WAIT_TIMEOUT, "a partial resync", || {
        info_u64(&mut p, "sync_partial_ok") >= 1
    });
    wait_same(&mut p, &mut r, &["GET", "after-kill"]);

    // The replica follows an unreachable address for a while, then comes back: the writes
    // it missed are still in the backlog.
    let dead = free_port().to_string();
    let _: () = q(&mut r, &["REPLICAOF", "127.0.0.1", &dead]);
    wait_until(WAIT_TIMEOUT, "the primary sees the replica leave", || {
        info_field(&mut p, "connected_slaves") == "0"
    });
    assert_eq!(info_field(&mut r, "master_link_status"), "down");
    for i in 0..50 {
        let _: () = q(&mut p, &["SET", &format!("missed:{i}"), &i.to_string()]);
    }
    let partial_before = info_u64(&mut p, "sync_partial_ok");
    let port = primary.port.to_string();
    let _: () = q(&mut r, &["REPLICAOF", "127.0.0.1", &port]);
    wait_online(&mut r);
    wait_same(&mut p, &mut r, &["DBSIZE"]);
    wait_same(&mut p, &mut r, &["GET", "missed:49"]);
    assert_eq!(info_u64(&mut p, "sync_partial_ok"), partial_before + 1);
    assert_eq!(
        info_u64(&mut p, "sync_full"),
        1,
        "only the first sync was full"
    );
}

#[test]
fn replica_beyond_the_backlog_gets_a_full_resync() {
    let primary = Server::start_with(&["--repl-backlog-size", "2kb"]);
    let replica = replica_of(&primary, &[]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    wait_online(&mut r);
    assert_eq!(info_u64(&mut p, "sync_full"), 1);
    let dead = free_port().to_string();
    let _: () = q(&mut r, &["REPLICAOF", "127.0.0.1", &dead]);
    wait_until(WAIT_TIMEOUT, "the primary sees the replica leave", || {
        info_field(&mut p, "connected_slaves") == "0"
    });
    // Far more than 2 KiB of changes: the replica's offset falls out of the backlog.
    let value = "x".repeat(200);
    for i in 0..100 {
        let _: () = q(&mut p, &["SET", &format!("k:{i}"), &value]);
    }
    let _: i64 = q(&mut p, &["DEL", "k:3"]);
    let port = primary.port.to_string();
    let _: () = q(&mut r, &["REPLICAOF", "127.0.0.1", &port]);
    wait_until(WAIT_TIMEOUT, "a second full sync", || {
        info_u64(&mut p, "sync_full") == 2
    });
    wait_online(&mut r);
    assert_eq!(info_u64(&mut p, "sync_partial_err"), 1);
    assert_eq!(info_u64(&mut p, "sync_partial_ok"), 0);
    wait_same(&mut p, &mut r, &["DBSIZE"]);
    wait_same(&mut p, &mut r, &["GET", "k:99"]);
    assert_eq!(q::<i64>(&mut r, &["EXISTS", "k:3"]), 0);

    // A restarted replica (kill -9) has nothing: it resyncs in full as well.
    drop(r);
    drop(replica);
    let replica = replica_of(&primary, &[]);
    let mut r = replica.conn();
    wait_online(&mut r);
    wait_same(&mut p, &mut r, &["DBSIZE"]);
    assert_eq!(info_u64(&mut p, "sync_full"), 3);
}

#[test]
fn primary_crash_then_promotion() {
    let primary = Server::start();
    let replica = replica_of(&primary, &[]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    let _: () = q(&mut p, &["SET", "k", "v"]);
    let _: i64 = q(&mut p, &["INCRBY", "ctr", "10"]);
    let acked: i64 = q(&mut p, &["WAIT", "1", "5000"]);
    assert_eq!(acked, 1);
    drop(p);
    drop(primary); // SIGKILL

    wait_until(WAIT_TIMEOUT, "the replica sees its link down", || {
        info_field(&mut r, "master_link_status") == "down"
    });
    assert_eq!(
        q::<String>(&mut r, &["GET", "k"]),
        "v",
        "reads keep working"
    );
    assert!(qerr(&mut r, &["SET", "k", "w"]).starts_with("READONLY"));

    let _: () = q(&mut r, &["REPLICAOF", "NO", "ONE"]);
    assert_eq!(info_field(&mut r, "role"), "master");
    let _: () = q(&mut r, &["SET", "k", "w"]);
    assert_eq!(q::<i64>(&mut r, &["INCRBY", "ctr", "1"]), 11);
    assert_eq!(q::<String>(&mut r, &["GET", "k"]), "w");
}

#[test]
fn min_replicas_to_write_and_wait() {
    let primary = Server::start_with(&["--min-replicas-to-write", "1"]);
    let mut p = primary.conn();
    assert_eq!(
        qerr(&mut p, &["SET", "k", "v"]),
        "NOREPLICAS Not enough good replicas to write."
    );
    assert_eq!(
        q::<Option<String>>(&mut p, &["GET", "k"]),
        None,
        "reads are fine"
    );
    let got: Vec<String> = q(&mut p, &["CONFIG", "GET", "min-replicas-*"]);
    assert!(
        got.contains(&"min-replicas-to-write".to_string()),
        "{got:?}"
    );

    let replica = replica_of(&primary, &[]);
    let mut r = replica.conn();
    wait_online(&mut r);
    wait_until(WAIT_TIMEOUT, "the primary counts a good replica", || {
        info_u64(&mut p, "min_slaves_good_slaves") == 1
    });
    let _: () = q(&mut p, &["SET", "k", "v"]);
    assert_eq!(q::<i64>(&mut p, &["WAIT", "1", "5000"]), 1);
    // Asking for more replicas than exist returns the count once the timeout passes.
    assert_eq!(q::<i64>(&mut p, &["WAIT", "2", "100"]), 1);

    drop(r);
    drop(replica); // SIGKILL
    wait_until(
        WAIT_TIMEOUT,
        "writes are refused without the replica",
        || {
            cmd(&["SET", "k", "w"])
                .query::<()>(&mut p)
                .is_err_and(|e| err_text(&e).starts_with("NOREPLICAS"))
        },
    );
    assert_eq!(q::<i64>(&mut p, &["WAIT", "1", "50"]), 0);
    let _: () = q(&mut p, &["CONFIG", "SET", "min-replicas-to-write", "0"]);
    let _: () = q(&mut p, &["SET", "k", "w"]);
}

#[test]
fn malformed_stream_frames_close_the_link_without_harm() {
    // Garbage from a "replica" after MERIDIAN SYNC: the primary drops that link only.
    let primary = Server::start();
    let mut p = primary.conn();
    let _: () = q(&mut p, &["SET", "k", "v"]);
    let mut raw = primary.raw();
    raw.send(&encode_cmd(&["MERIDIAN", "SYNC", "?", "0", "1"]));
    raw.send(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]);
    let mut all = Vec::new();
    let _ = raw.stream.read_to_end(&mut all);
    assert!(
        all.starts_with(b"+FULLRESYNC "),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    wait_until(WAIT_TIMEOUT, "the bad replica link is gone", || {
        info_field(&mut p, "connected_slaves") == "0"
    });
    let _: () = q(&mut p, &["SET", "k", "w"]);

    // Garbage from a "primary": the replica drops the link, logs it, and reconnects.
    let fake = TcpListener::bind("127.0.0.1:0").expect("bind");
    let fake_port = fake.local_addr().expect("addr").port();
    let replica = Server::start_with(&["--replicaof", &format!("127.0.0.1 {fake_port}")]);
    for round in 0..2 {
        let (mut s, _) = fake.accept().expect("the replica connects");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut hello = [0u8; 256];
        let n = s.read(&mut hello).expect("read the SYNC command");
        assert!(
            String::from_utf8_lossy(&hello[..n]).contains("SYNC"),
            "round {round}"
        );
        s.write_all(b"+FULLRESYNC abc 0\r\n\x05\x00\x00\x00\x01\xff\xff\xff\xff")
            .expect("write garbage");
        // The replica closes this connection (then dials again: the next accept).
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let mut r = replica.conn();
    assert_eq!(q::<String>(&mut r, &["PING"]), "PONG");
}
