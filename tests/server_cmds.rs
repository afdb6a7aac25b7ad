//! Connection and server commands: PING ECHO HELLO (RESP2/RESP3) QUIT SELECT COMMAND CLIENT
//! CONFIG INFO TIME CLUSTER KEYSLOT/COUNTKEYSINSLOT/GETKEYSINSLOT.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

/// Every command the foundation issue lists: each must be in the command table.
const ISSUE_COMMANDS: &[&str] = &[
    "ping",
    "echo",
    "hello",
    "quit",
    "select",
    "command",
    "client",
    "get",
    "set",
    "setnx",
    "setex",
    "psetex",
    "getset",
    "getdel",
    "getex",
    "mget",
    "mset",
    "msetnx",
    "append",
    "strlen",
    "getrange",
    "setrange",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "incrbyfloat",
    "del",
    "unlink",
    "exists",
    "type",
    "rename",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "ttl",
    "pttl",
    "persist",
    "expiretime",
    "sadd",
    "srem",
    "smembers",
    "sismember",
    "smismember",
    "scard",
    "spop",
    "srandmember",
    "sinter",
    "sunion",
    "sdiff",
    "hset",
    "hget",
    "hmget",
    "hdel",
    "hgetall",
    "hkeys",
    "hvals",
    "hlen",
    "hexists",
    "hincrby",
    "hincrbyfloat",
    "hsetnx",
    "hstrlen",
    "scan",
    "keys",
    "dbsize",
    "randomkey",
    "flushdb",
    "flushall",
    "info",
    "config",
    "time",
    "multi",
    "exec",
    "discard",
    "watch",
    "cluster",
];

#[test]
fn ping_echo_select_quit() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(
        v(&mut c, &["PING"]),
        redis::Value::SimpleString("PONG".into())
    );
    assert_eq!(q::<String>(&mut c, &["PING", "hello world"]), "hello world");
    assert_eq!(
        qerr(&mut c, &["PING", "a", "b"]),
        "ERR wrong number of arguments for 'ping' command"
    );
    assert_eq!(q::<String>(&mut c, &["ECHO", "msg"]), "msg");
    let bin: Vec<u8> = redis::cmd("ECHO")
        .arg(&b"\0\r\n\xff"[..])
        .query(&mut c)
        .unwrap();
    assert_eq!(bin, b"\0\r\n\xff");
    assert_eq!(
        qerr(&mut c, &["ECHO"]),
        "ERR wrong number of arguments for 'echo' command"
    );
    assert_eq!(v(&mut c, &["SELECT", "0"]), redis::Value::Okay);
    assert_eq!(
        qerr(&mut c, &["SELECT", "1"]),
        "ERR DB index is out of range"
    );
    assert_eq!(
        qerr(&mut c, &["SELECT", "x"]),
        "ERR value is not an integer or out of range"
    );
    // QUIT answers OK, then the server closes the connection.
    let mut raw = s.raw();
    assert_eq!(raw.cmd(&["QUIT"]), Resp::ok());
    raw.assert_closed();
}

#[test]
fn hello_2_and_3_switch_protocols() {
    let s = Server::start();
    let mut raw = s.raw();
    let id = match raw.cmd(&["CLIENT", "ID"]) {
        Resp::Int(id) => id,
        other => panic!("CLIENT ID: {other:?}"),
    };
    // RESP2: a map degrades to a flat array.
    match raw.cmd(&["HELLO", "2"]) {
        Resp::Array(items) => {
            let fields: HashMap<String, Resp> = items
                .chunks(2)
                .map(|kv| (kv[0].text(), kv[1].clone()))
                .collect();
            assert_eq!(fields["proto"], Resp::Int(2));
            assert_eq!(fields["server"], Resp::bulk("redis"));
        }
        other => panic!("HELLO 2 should answer a flat array, got {other:?}"),
    }
    assert_eq!(raw.cmd(&["GET", "missing"]), Resp::NilBulk);

    // RESP3: a real map (%7) with the handshake fields client libraries read.
    let reply = raw.cmd(&["HELLO", "3"]);
    let Resp::Map(pairs) = reply else {
        panic!("HELLO 3 must answer a RESP3 map, got {reply:?}");
    };
    let fields: HashMap<String, Resp> = pairs.into_iter().map(|(k, v)| (k.text(), v)).collect();
    assert_eq!(fields["server"], Resp::bulk("redis"));
    assert!(
        fields["version"].text().starts_with('7'),
        "{:?}",
        fields["version"]
    );
    assert_eq!(fields["proto"], Resp::Int(3));
    assert_eq!(fields["id"], Resp::Int(id));
    assert_eq!(fields["mode"], Resp::bulk("standalone"));
    assert_eq!(fields["role"], Resp::bulk("master"));
    assert_eq!(fields["modules"], Resp::Array(vec![]));
    // RESP3 null and simple types from now on.
    assert_eq!(raw.cmd(&["GET", "missing"]), Resp::Null);
    assert_eq!(raw.cmd(&["PING"]), Resp::Simple("PONG".into()));
    assert!(matches!(
        raw.cmd(&["CONFIG", "GET", "maxmemory"]),
        Resp::Map(_)
    ));
    // And back to RESP2.
    assert!(matches!(raw.cmd(&["HELLO", "2"]), Resp::Array(_)));
    assert_eq!(raw.cmd(&["GET", "missing"]), Resp::NilBulk);

    // HELLO without a version answers in the current protocol.
    assert!(matches!(raw.cmd(&["HELLO"]), Resp::Array(_)));
    // SETNAME inside HELLO.
    assert!(matches!(
        raw.cmd(&["HELLO", "3", "SETNAME", "conn-a"]),
        Resp::Map(_)
    ));
    assert_eq!(raw.cmd(&["CLIENT", "GETNAME"]), Resp::bulk("conn-a"));
    assert_eq!(
        raw.cmd(&["HELLO", "4"]),
        Resp::err("NOPROTO unsupported protocol version")
    );
    assert_eq!(
        raw.cmd(&["HELLO", "x"]),
        Resp::err("ERR Protocol version is not an integer or out of range")
    );
    assert_eq!(
        raw.cmd(&["HELLO", "3", "BOGUS"]),
        Resp::err("ERR Syntax error in HELLO option 'BOGUS'")
    );

    // The redis crate's RESP3 mode performs the handshake and works end to end.
    let mut c = s.conn_resp3();
    assert_eq!(v(&mut c, &["SET", "k", "v"]), redis::Value::Okay);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "v");
    assert_eq!(v(&mut c, &["GET", "missing"]), redis::Value::Nil);
}

#[test]
fn command_count_info_docs() {
    let s = Server::start();
    let mut c = s.conn();
    let count: usize = q(&mut c, &["COMMAND", "COUNT"]);
    let all: Vec<redis::Value> = q(&mut c, &["COMMAND"]);
    assert_eq!(count, all.len());
    let list: Vec<String> = q(&mut c, &["COMMAND", "LIST"]);
    assert_eq!(list.len(), count);
    let listed: HashSet<&str> = list.iter().map(String::as_str).collect();
    for name in ISSUE_COMMANDS {
        assert!(listed.contains(name), "COMMAND LIST lacks {name}");
    }

    // COMMAND INFO: name, arity, flags, first key, last key, step.
    let info: Vec<redis::Value> = q(&mut c, &["COMMAND", "INFO", "get", "mset", "nosuch"]);
    assert_eq!(info.len(), 3);
    let redis::Value::Array(get) = &info[0] else {
        panic!("COMMAND INFO get: {:?}", info[0]);
    };
    assert_eq!(get[0], redis::Value::BulkString(b"get".to_vec()));
    assert_eq!(get[1], redis::Value::Int(2));
    let flags: HashSet<String> = redis::from_redis_value(&get[2]).unwrap();
    assert!(
        flags.contains("readonly") && flags.contains("fast"),
        "{flags:?}"
    );
    assert_eq!(
        &get[3..6],
        &[
            redis::Value::Int(1),
            redis::Value::Int(1),
            redis::Value::Int(1)
        ]
    );
    let redis::Value::Array(mset) = &info[1] else {
        panic!("COMMAND INFO mset: {:?}", info[1]);
    };
    assert_eq!(mset[1], redis::Value::Int(-3));
    assert_eq!(
        &mset[3..6],
        &[
            redis::Value::Int(1),
            redis::Value::Int(-1),
            redis::Value::Int(2)
        ]
    );
    let set_flags: HashSet<String> = redis::from_redis_value(&mset[2]).unwrap();
    assert!(set_flags.contains("write") && set_flags.contains("denyoom"));
    assert_eq!(info[2], redis::Value::Nil);
    // Every issue command has an entry with a sane arity.
    let mut args = vec!["COMMAND", "INFO"];
    args.extend_from_slice(ISSUE_COMMANDS);
    let infos: Vec<redis::Value> = q(&mut c, &args);
    for (name, i) in ISSUE_COMMANDS.iter().zip(&infos) {
        let redis::Value::Array(fields) = i else {
            panic!("COMMAND INFO {name}: {i:?}");
        };
        assert!(
            matches!(fields[1], redis::Value::Int(n) if n != 0),
            "{name} arity"
        );
    }

    let docs: HashMap<String, redis::Value> = q(&mut c, &["COMMAND", "DOCS", "get", "set"]);
    assert!(
        docs.contains_key("get") && docs.contains_key("set"),
        "{docs:?}"
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"]),
        ["a", "b"]
    );
    assert_eq!(
        qerr(&mut c, &["COMMAND", "FOO"]),
        "ERR unknown subcommand 'FOO'. Try COMMAND HELP."
    );
}

#[test]
fn client_setname_getname_id_info_list() {
    let s = Server::start();
    let mut a = s.conn();
    let mut b = s.conn();
    assert_eq!(v(&mut a, &["CLIENT", "GETNAME"]), redis::Value::Nil);
    assert_eq!(
        v(&mut a, &["CLIENT", "SETNAME", "alpha"]),
        redis::Value::Okay
    );
    assert_eq!(q::<String>(&mut a, &["CLIENT", "GETNAME"]), "alpha");
    assert_eq!(
        v(&mut b, &["CLIENT", "SETNAME", "beta"]),
        redis::Value::Okay
    );
    assert_eq!(
        qerr(&mut a, &["CLIENT", "SETNAME", "has space"]),
        "ERR Client names cannot contain spaces, newlines or special characters."
    );
    assert_eq!(q::<String>(&mut a, &["CLIENT", "GETNAME"]), "alpha");

    let id_a: i64 = q(&mut a, &["CLIENT", "ID"]);
    let id_b: i64 = q(&mut b, &["CLIENT", "ID"]);
    assert_ne!(id_a, id_b);
    assert!(id_b > id_a, "ids grow with connection order");
    assert_eq!(
        q::<i64>(&mut a, &["CLIENT", "ID"]),
        id_a,
        "stable per connection"
    );

    let info: String = q(&mut a, &["CLIENT", "INFO"]);
    assert!(info.contains(&format!("id={id_a} ")), "{info}");
    assert!(info.contains(" name=alpha "), "{info}");
    assert!(info.contains("cmd=client|info"), "{info}");

    let list: String = q(&mut a, &["CLIENT", "LIST"]);
    let lines: Vec<&str> = list.lines().collect();
    let line_a = lines
        .iter()
        .find(|l| l.starts_with(&format!("id={id_a} ")))
        .unwrap_or_else(|| panic!("CLIENT LIST lacks {id_a}: {list}"));
    assert!(line_a.contains(" name=alpha "));
    let line_b = lines
        .iter()
        .find(|l| l.starts_with(&format!("id={id_b} ")))
        .unwrap_or_else(|| panic!("CLIENT LIST lacks {id_b}: {list}"));
    assert!(line_b.contains(" name=beta "));

    // A closed connection leaves the list.
    drop(b);
    wait_until(WAIT_TIMEOUT, "the closed client leaves CLIENT LIST", || {
        let list: String = q(&mut a, &["CLIENT", "LIST"]);
        !list.contains(&format!("id={id_b} "))
    });
    // An empty name clears it.
    q::<()>(&mut a, &["CLIENT", "SETNAME", ""]);
    assert_eq!(v(&mut a, &["CLIENT", "GETNAME"]), redis::Value::Nil);
    assert_eq!(
        qerr(&mut a, &["CLIENT", "NOPE"]),
        "ERR unknown subcommand 'NOPE'. Try CLIENT HELP."
    );
}

#[test]
fn config_get_and_set() {
    let s = Server::start();
    let mut c = s.conn();
    let m: HashMap<String, String> = q(&mut c, &["CONFIG", "GET", "maxmemory"]);
    assert_eq!(m, HashMap::from([("maxmemory".into(), "0".into())]));
    let m: HashMap<String, String> = q(&mut c, &["CONFIG", "GET", "maxmemory*"]);
    for k in ["maxmemory", "maxmemory-policy", "maxmemory-samples"] {
        assert!(m.contains_key(k), "CONFIG GET maxmemory* lacks {k}: {m:?}");
    }
    assert_eq!(m["maxmemory-policy"], "noeviction");
    // Several patterns at once; names are case-insensitive.
    let m: HashMap<String, String> = q(
        &mut c,
        &["CONFIG", "GET", "MAXCLIENTS", "maxmemory-samples"],
    );
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m["maxclients"], "10000");
    assert!(q::<HashMap<String, String>>(&mut c, &["CONFIG", "GET", "no-such-thing"]).is_empty());
    // The real process runs on jemalloc with its background purge threads on (Redis'
    // default), switchable at run time.
    let bg = |c: &mut redis::Connection| {
        q::<HashMap<String, String>>(c, &["CONFIG", "GET", "jemalloc-bg-thread"])
            ["jemalloc-bg-thread"]
            .clone()
    };
    assert_eq!(bg(&mut c), "yes");
    assert_eq!(
        v(&mut c, &["CONFIG", "SET", "jemalloc-bg-thread", "no"]),
        redis::Value::Okay
    );
    assert_eq!(bg(&mut c), "no");
    assert_eq!(
        v(&mut c, &["CONFIG", "SET", "jemalloc-bg-thread", "yes"]),
        redis::Value::Okay
    );
    assert_eq!(bg(&mut c), "yes");

    assert_eq!(
        v(&mut c, &["CONFIG", "SET", "maxmemory", "100mb"]),
        redis::Value::Okay
    );
    assert_eq!(
        q::<HashMap<String, String>>(&mut c, &["CONFIG", "GET", "maxmemory"])["maxmemory"],
        (100u64 << 20).to_string()
    );
    assert_eq!(
        v(
            &mut c,
            &[
                "CONFIG",
                "SET",
                "maxmemory-policy",
                "allkeys-lru",
                "maxmemory-samples",
                "10"
            ]
        ),
        redis::Value::Okay
    );
    let m: HashMap<String, String> = q(&mut c, &["CONFIG", "GET", "maxmemory-*"]);
    assert_eq!(m["maxmemory-policy"], "allkeys-lru");
    assert_eq!(m["maxmemory-samples"], "10");
    assert_eq!(info_field(&mut c, "maxmemory_policy"), "allkeys-lru");
    assert_eq!(info_u64(&mut c, "maxmemory"), 100 << 20);

    // All or nothing: one bad value rejects the whole call.
    assert_eq!(
        qerr(&mut c, &["CONFIG", "SET", "maxmemory", "1mb", "maxmemory-policy", "bogus"]),
        "ERR CONFIG SET failed (possibly related to argument 'maxmemory-policy') - argument(s) must be one of the following: volatile-lru, volatile-lfu, volatile-random, volatile-ttl, allkeys-lru, allkeys-lfu, allkeys-random, noeviction"
    );
    assert_eq!(
        q::<HashMap<String, String>>(&mut c, &["CONFIG", "GET", "maxmemory"])["maxmemory"],
        (100u64 << 20).to_string()
    );
    assert_eq!(
        qerr(&mut c, &["CONFIG", "SET", "maxmemory", "lots"]),
        "ERR CONFIG SET failed (possibly related to argument 'maxmemory') - argument must be a memory value"
    );
    assert_eq!(
        qerr(&mut c, &["CONFIG", "SET", "maxclients", "x"]),
        "ERR CONFIG SET failed (possibly related to argument 'maxclients') - argument couldn't be parsed into an integer"
    );
    assert_eq!(
        qerr(&mut c, &["CONFIG", "SET", "maxclients", "0"]),
        "ERR CONFIG SET failed (possibly related to argument 'maxclients') - argument must be between 1 and 4294967295 inclusive"
    );
    assert_eq!(
        qerr(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "10"]),
        "ERR CONFIG SET failed (possibly related to argument 'proto-max-bulk-len') - argument must be between 1048576 and 9223372036854775807 inclusive"
    );
    assert_eq!(
        qerr(
            &mut c,
            &["CONFIG", "SET", "maxmemory", "1mb", "maxmemory", "2mb"]
        ),
        "ERR CONFIG SET failed (possibly related to argument 'maxmemory') - duplicate parameter"
    );
    assert_eq!(
        qerr(&mut c, &["CONFIG", "SET", "no-such-thing", "1"]),
        "ERR Unknown option or number of arguments for CONFIG SET - 'no-such-thing'"
    );
    assert_eq!(
        qerr(&mut c, &["CONFIG", "SET", "maxmemory"]),
        "ERR wrong number of arguments for 'config|set' command"
    );
    assert_eq!(
        qerr(&mut c, &["CONFIG", "GET"]),
        "ERR wrong number of arguments for 'config|get' command"
    );
    assert_eq!(
        qerr(&mut c, &["CONFIG", "FOO"]),
        "ERR unknown subcommand 'FOO'. Try CONFIG HELP."
    );
}

#[test]
fn config_replies_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["CONFIG", "GET", "maxmemory"],
            &["CONFIG", "SET", "maxmemory", "10mb"],
            &["CONFIG", "GET", "maxmemory"],
            &["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"],
            &["CONFIG", "GET", "maxmemory-policy"],
            &["CONFIG", "SET", "maxmemory-policy", "bogus"],
            &["CONFIG", "SET", "maxmemory", "x"],
            &["CONFIG", "SET", "maxmemory", "1", "maxmemory", "2"],
            &["CONFIG", "SET", "maxclients", "x"],
            &["CONFIG", "SET", "maxclients", "0"],
            &["CONFIG", "SET", "proto-max-bulk-len", "100"],
            &["CONFIG", "SET", "no-such-thing", "1"],
            &["CONFIG", "SET", "maxmemory"],
            &["CONFIG", "GET"],
            &["CONFIG", "SET", "maxmemory", "0"],
        ],
    );
}

#[test]
fn info_sections_and_counters() {
    let s = Server::start();
    let mut c = s.conn();
    let all: String = q(&mut c, &["INFO"]);
    for section in [
        "# Server",
        "# Clients",
        "# Memory",
        "# Stats",
        "# Replication",
        "# Keyspace",
    ] {
        assert!(all.contains(section), "INFO lacks {section}:\n{all}");
    }
    let server: String = q(&mut c, &["INFO", "server"]);
    assert!(server.starts_with("# Server"), "{server}");
    assert!(
        !server.contains("# Memory"),
        "INFO server must show only that section"
    );
    assert!(server.contains("redis_version:7."), "{server}");
    assert!(
        server.contains(&format!("process_id:{}", s.pid())),
        "{server}"
    );
    let two: String = q(&mut c, &["INFO", "memory", "clients"]);
    assert!(two.contains("# Memory") && two.contains("# Clients") && !two.contains("# Stats"));
    assert!(info_u64(&mut c, "used_memory") > 0);
    assert_eq!(info_field(&mut c, "role"), "master");

    // Keyspace line.
    q::<()>(&mut c, &["MSET", "a", "1", "b", "2"]);
    q::<()>(&mut c, &["SET", "t", "x", "EX", "100"]);
    let ks: String = q(&mut c, &["INFO", "keyspace"]);
    assert!(ks.contains("db0:keys=3,expires=1,"), "{ks}");

    // Hits and misses count reads exactly.
    let hits = info_u64(&mut c, "keyspace_hits");
    let misses = info_u64(&mut c, "keyspace_misses");
    q::<Option<String>>(&mut c, &["GET", "a"]);
    q::<Option<String>>(&mut c, &["GET", "b"]);
    q::<Option<String>>(&mut c, &["GET", "t"]);
    q::<Option<String>>(&mut c, &["GET", "nope1"]);
    q::<Option<String>>(&mut c, &["GET", "nope2"]);
    assert_eq!(info_u64(&mut c, "keyspace_hits"), hits + 3);
    assert_eq!(info_u64(&mut c, "keyspace_misses"), misses + 2);

    // Commands processed grows; connected clients follows connections.
    let before = info_u64(&mut c, "total_commands_processed");
    for _ in 0..10 {
        q::<String>(&mut c, &["PING"]);
    }
    assert!(info_u64(&mut c, "total_commands_processed") >= before + 10);
    let extra: Vec<redis::Connection> = (0..3).map(|_| s.conn()).collect();
    wait_until(
        WAIT_TIMEOUT,
        "connected_clients counts 4 connections",
        || info_u64(&mut c, "connected_clients") == 4,
    );
    drop(extra);
    wait_until(WAIT_TIMEOUT, "connected_clients drops back to 1", || {
        info_u64(&mut c, "connected_clients") == 1
    });
    assert!(info_u64(&mut c, "total_connections_received") >= 4);
}

#[test]
fn info_reports_the_bound_port() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(info_u64(&mut c, "tcp_port"), u64::from(s.port));
}

/// Every write yields a delta; without peers the server keeps what `MERIDIAN DELTAS` shows
/// of the newest ones (key, slot, stamp, full or partial), newest first.
#[test]
fn every_write_shows_its_delta() {
    let s = Server::start();
    let mut c = s.conn();
    let produced = info_u64(&mut c, "deltas_produced");
    let dropped = info_u64(&mut c, "deltas_dropped_from_log");
    let _: () = q(&mut c, &["SET", "{d}s", "v"]);
    let _: i64 = q(&mut c, &["INCR", "{d}n"]);
    let _: i64 = q(&mut c, &["SADD", "{d}set", "a"]);
    let _: i64 = q(&mut c, &["SADD", "{d}set", "b"]);
    // A key longer than a note's reused buffer.
    let long = format!("{{d}}{}", "k".repeat(1000));
    let _: () = q(&mut c, &["SET", &long, "v"]);
    assert_eq!(info_u64(&mut c, "deltas_produced"), produced + 5);
    let shown: Vec<(String, i64, String, String)> = q(&mut c, &["MERIDIAN", "DELTAS", "5"]);
    let keys: Vec<&str> = shown.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(keys, [long.as_str(), "{d}set", "{d}set", "{d}n", "{d}s"]);
    let slot: i64 = q(&mut c, &["CLUSTER", "KEYSLOT", "{d}"]);
    assert!(shown.iter().all(|d| d.1 == slot), "{shown:?}");
    // Sets are partial deltas once the key exists; strings and counters carry their state.
    let kinds: Vec<&str> = shown.iter().map(|d| d.3.as_str()).collect();
    assert_eq!(kinds, ["full", "partial", "full", "full", "full"]);
    let stamps: HashSet<&str> = shown.iter().map(|d| d.2.as_str()).collect();
    assert_eq!(stamps.len(), 5, "each write has its own stamp: {shown:?}");
    // The ring keeps the newest: after many writes to this shard, only they are shown.
    for i in 0..100 {
        let _: () = q(&mut c, &["SET", &format!("{{d}}later{i}"), "v"]);
    }
    let shown: Vec<(String, i64, String, String)> = q(&mut c, &["MERIDIAN", "DELTAS", "3"]);
    let keys: Vec<&str> = shown.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(keys, ["{d}later99", "{d}later98", "{d}later97"]);
    // Bounded: one shard took all 105 writes and keeps the newest 16; the rest count as
    // dropped from the log.
    let all: Vec<(String, i64, String, String)> = q(&mut c, &["MERIDIAN", "DELTAS", "1000"]);
    assert_eq!(all.len(), 16, "{all:?}");
    assert_eq!(
        info_u64(&mut c, "deltas_dropped_from_log"),
        dropped + 105 - 16
    );
}

#[test]
fn time_is_the_server_clock() {
    let s = Server::start();
    let mut c = s.conn();
    let (secs, micros): (u64, u64) = q(&mut c, &["TIME"]);
    assert!(micros < 1_000_000, "{micros}");
    let local = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Same host, same clock: generous margin only for scheduling on a loaded box.
    assert!(secs.abs_diff(local) < 120, "TIME {secs} vs local {local}");
    let (secs2, micros2): (u64, u64) = q(&mut c, &["TIME"]);
    assert!(
        (secs2, micros2) >= (secs, micros),
        "TIME never goes backwards here"
    );
}

fn expected_slot(key: &[u8]) -> i64 {
    i64::from(key_slot(key))
}

#[test]
fn cluster_keyslot_and_slot_queries() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["CLUSTER", "KEYSLOT", "somekey"]), 11058);
    assert_eq!(
        q::<i64>(&mut c, &["CLUSTER", "KEYSLOT", "foo{hash_tag}"]),
        2515
    );
    assert_eq!(
        q::<i64>(&mut c, &["CLUSTER", "KEYSLOT", "bar{hash_tag}"]),
        2515
    );
    for key in [
        "",
        "a",
        "foo",
        "user:1000",
        "{user1000}.following",
        "{user1000}.followers",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{",
        "}",
        "{}",
        "x{y",
        "x}y{z}",
    ] {
        assert_eq!(
            q::<i64>(&mut c, &["CLUSTER", "KEYSLOT", key]),
            expected_slot(key.as_bytes()),
            "KEYSLOT {key:?}"
        );
    }
    // Hash tag rules from the cluster spec.
    let slot = |c: &mut redis::Connection, k: &str| -> i64 { q(c, &["CLUSTER", "KEYSLOT", k]) };
    assert_eq!(
        slot(&mut c, "{user1000}.following"),
        slot(&mut c, "user1000")
    );
    assert_eq!(slot(&mut c, "foo{bar}{zap}"), slot(&mut c, "bar"));
    assert_eq!(slot(&mut c, "foo{{bar}}zap"), slot(&mut c, "{bar"));

    let tagged: Vec<String> = (0..5).map(|i| format!("{{user7}}:{i}")).collect();
    for k in &tagged {
        q::<()>(&mut c, &["SET", k, "v"]);
    }
    q::<i64>(&mut c, &["SADD", "{user7}:set", "m"]);
    q::<()>(&mut c, &["SET", "elsewhere", "v"]);
    let user_slot = slot(&mut c, "user7").to_string();
    assert_eq!(
        q::<i64>(&mut c, &["CLUSTER", "COUNTKEYSINSLOT", &user_slot]),
        6
    );
    let got: Vec<String> = q(&mut c, &["CLUSTER", "GETKEYSINSLOT", &user_slot, "100"]);
    let mut want: HashSet<String> = tagged.into_iter().collect();
    want.insert("{user7}:set".into());
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
    let three: Vec<String> = q(&mut c, &["CLUSTER", "GETKEYSINSLOT", &user_slot, "3"]);
    assert_eq!(three.len(), 3);
    assert!(three.iter().all(|k| want.contains(k)));
    assert!(q::<Vec<String>>(&mut c, &["CLUSTER", "GETKEYSINSLOT", &user_slot, "0"]).is_empty());
    // Deleting a key updates the slot count.
    q::<i64>(&mut c, &["DEL", "{user7}:0"]);
    assert_eq!(
        q::<i64>(&mut c, &["CLUSTER", "COUNTKEYSINSLOT", &user_slot]),
        5
    );
    let empty_slot = ((expected_slot(b"user7") + 1) % 16384).to_string();
    let other_count: i64 = q(&mut c, &["CLUSTER", "COUNTKEYSINSLOT", &empty_slot]);
    assert_eq!(
        other_count,
        i64::from(expected_slot(b"elsewhere").to_string() == empty_slot)
    );

    assert_eq!(
        qerr(&mut c, &["CLUSTER", "COUNTKEYSINSLOT", "16384"]),
        "ERR Invalid slot"
    );
    assert_eq!(
        qerr(&mut c, &["CLUSTER", "COUNTKEYSINSLOT", "-1"]),
        "ERR Invalid slot"
    );
    assert_eq!(
        qerr(&mut c, &["CLUSTER", "COUNTKEYSINSLOT", "x"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        qerr(&mut c, &["CLUSTER", "GETKEYSINSLOT", "16384", "1"]),
        "ERR Invalid slot or number of keys"
    );
    assert_eq!(
        qerr(&mut c, &["CLUSTER", "GETKEYSINSLOT", "0", "-1"]),
        "ERR Invalid slot or number of keys"
    );
    assert_eq!(
        qerr(&mut c, &["CLUSTER", "GETKEYSINSLOT", "0", "x"]),
        "ERR value is not an integer or out of range"
    );
}

#[test]
fn a_second_server_on_a_taken_port_refuses_to_start() {
    /// Kills the second server if the test fails while it still runs.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let s = Server::start();
    let port = s.port.to_string();
    let mut second = Reap(
        std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["--port", &port, "--io-threads", "2", "--log-level", "warn"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    wait_until(
        std::time::Duration::from_secs(20),
        "second server exits",
        || {
            status = second.0.try_wait().unwrap();
            status.is_some()
        },
    );
    let status = status.unwrap();
    assert!(!status.success(), "second server must fail, got {status}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("in use"), "error names the cause: {err}");
    // The first server keeps every connection.
    for _ in 0..20 {
        assert_eq!(q::<String>(&mut s.conn(), &["PING"]), "PONG");
    }
}
