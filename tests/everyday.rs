//! Everyday commands beyond the basics: COPY, SMOVE, SINTERSTORE/SUNIONSTORE/SDIFFSTORE,
//! SSCAN, HSCAN — replies compared with a real redis-server, and full scans of large
//! collections through the redis crate's cursor iterators.

mod common;

use common::{assert_same_as_redis, q, Server};
use std::collections::{HashMap, HashSet};

#[test]
fn replies_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["SADD", "a", "1", "2", "3", "4"],
            &["SADD", "b", "3", "4", "5"],
            &["SET", "str", "v"],
            &["SINTERSTORE", "i", "a", "b"],
            &["SMEMBERS", "i"],
            &["SUNIONSTORE", "u", "a", "b", "nokey"],
            &["SMEMBERS", "u"],
            &["SDIFFSTORE", "d", "a", "b"],
            &["SMEMBERS", "d"],
            &["SDIFFSTORE", "str", "a", "b"],
            &["TYPE", "str"],
            &["SINTERSTORE", "d", "a", "nokey"],
            &["EXISTS", "d"],
            &["SINTERSTORE", "d", "a", "str"],
            &["SET", "str", "v"],
            &["SUNIONSTORE", "d"],
            &["SMOVE", "a", "b", "1"],
            &["SMOVE", "a", "b", "1"],
            &["SMEMBERS", "a"],
            &["SMEMBERS", "b"],
            &["SMOVE", "a", "fresh", "2"],
            &["SMEMBERS", "fresh"],
            &["SMOVE", "a", "a", "3"],
            &["SMOVE", "a", "str", "3"],
            &["SMOVE", "str", "a", "3"],
            &["SMOVE", "nokey", "a", "3"],
            &["SINTERCARD", "2", "a", "b"],
            &["SINTERCARD", "2", "a", "b", "LIMIT", "1"],
            &["SINTERCARD", "2", "a", "b", "LIMIT", "0"],
            &["SINTERCARD", "1", "a"],
            &["SINTERCARD", "2", "a", "nokey"],
            &["SINTERCARD", "0", "a"],
            &["SINTERCARD", "x", "a"],
            &["SINTERCARD", "3", "a", "b"],
            &["SINTERCARD", "2", "a", "b", "LIMIT", "-1"],
            &["SINTERCARD", "2", "a", "b", "LIMIT"],
            &["SINTERCARD", "2", "a", "b", "FOO", "1"],
            &["SINTERCARD", "2", "a", "str"],
            &[
                "COMMAND",
                "GETKEYS",
                "SINTERCARD",
                "2",
                "a",
                "b",
                "LIMIT",
                "1",
            ],
            &["SSCAN", "nokey", "0"],
            &["SSCAN", "i", "x"],
            &["SSCAN", "i", "0", "COUNT", "0"],
            &["SSCAN", "i", "0", "MATCH"],
            &["SSCAN", "str", "0"],
            &["HSET", "h", "f", "v"],
            &["HSCAN", "h", "0"],
            &["HSCAN", "h", "0", "MATCH", "g*"],
            &["HSCAN", "nokey", "0"],
            &["HSCAN", "str", "0"],
            &["SET", "src", "hello", "EX", "100"],
            &["COPY", "src", "dst"],
            &["GET", "dst"],
            &["TTL", "dst"],
            &["COPY", "src", "dst"],
            &["COPY", "src", "dst", "REPLACE"],
            &["COPY", "src", "src"],
            &["COPY", "nokey", "dst"],
            &["COPY", "src", "dst", "DB", "x"],
            &["COPY", "src", "dst", "BAD"],
            &["COPY", "h", "h2"],
            &["HGETALL", "h2"],
            &["COPY", "b", "str", "REPLACE"],
            &["TYPE", "str"],
            &["SMEMBERS", "str"],
        ],
    );
}

/// SSCAN and HSCAN over collections large enough to take many calls: every element
/// exactly once, following cursors to 0.
#[test]
fn scans_of_large_collections_return_every_element() {
    let s = Server::start();
    let mut c = s.conn();
    let members: Vec<String> = (0..2000).map(|i| format!("m{i}")).collect();
    for chunk in members.chunks(500) {
        let mut args = vec!["SADD", "big"];
        args.extend(chunk.iter().map(String::as_str));
        let _: i64 = q(&mut c, &args);
        let mut hargs = vec!["HSET", "bigh"];
        for m in chunk {
            hargs.push(m);
            hargs.push(m);
        }
        let _: i64 = q(&mut c, &hargs);
    }
    let mut seen = HashMap::<String, usize>::new();
    for m in scan_all(&mut c, &["SSCAN", "big"], &["COUNT", "100"]) {
        *seen.entry(m).or_default() += 1;
    }
    assert_eq!(seen.len(), 2000);
    assert!(seen.values().all(|&n| n == 1), "each member once");
    // One database, as in cluster mode: COPY to another is refused.
    let e = common::qerr(&mut c, &["COPY", "m", "n", "DB", "1"]);
    assert_eq!(e, "ERR DB index is out of range");
    let flat = scan_all(&mut c, &["HSCAN", "bigh"], &["MATCH", "m1*"]);
    let fields: HashSet<(String, String)> = flat
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    let want: HashSet<(String, String)> = members
        .iter()
        .filter(|m| m.starts_with("m1"))
        .map(|m| (m.clone(), m.clone()))
        .collect();
    assert_eq!(fields, want);
}

/// Every item of a cursor scan (`cmd key`, cursor, `opts`), following cursors to 0.
fn scan_all(c: &mut redis::Connection, cmd: &[&str], opts: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = "0".to_string();
    for _ in 0..10_000 {
        let mut args: Vec<&str> = cmd.to_vec();
        args.push(&cursor);
        args.extend_from_slice(opts);
        let (next, items): (String, Vec<String>) = q(c, &args);
        out.extend(items);
        if next == "0" {
            return out;
        }
        cursor = next;
    }
    panic!("the scan never ended");
}

/// OBJECT and MEMORY USAGE: Redis' encoding names for each shape of value (what client
/// code and test suites inspect), and the same errors.
#[test]
fn object_and_memory_usage() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["SET", "int", "12345"],
            &["SET", "emb", "hello"],
            &[
                "SET",
                "raw",
                "a-string-longer-than-forty-four-bytes-0123456789",
            ],
            &["OBJECT", "ENCODING", "int"],
            &["OBJECT", "ENCODING", "emb"],
            &["OBJECT", "ENCODING", "raw"],
            &["INCR", "ctr"],
            &["OBJECT", "ENCODING", "ctr"],
            &["SADD", "ints", "1", "2", "3"],
            &["OBJECT", "ENCODING", "ints"],
            &["HSET", "h", "f", "v"],
            &["OBJECT", "ENCODING", "h"],
            &["OBJECT", "ENCODING", "nokey"],
            &["OBJECT", "REFCOUNT", "int"],
            &["OBJECT", "REFCOUNT", "raw"],
            &["OBJECT", "FREQ", "int"],
            &["OBJECT", "ENCODING"],
            &["OBJECT", "NOPE", "x"],
            &["MEMORY", "USAGE", "nokey"],
            &["MEMORY", "USAGE", "int", "SAMPLES", "x"],
            &["MEMORY", "USAGE", "int", "BAD"],
            &["MEMORY", "NOPE"],
        ],
    );
    let mut c = s.conn();
    let members: Vec<String> = (0..200).map(|i| format!("member-{i}")).collect();
    let mut args = vec!["SADD", "big"];
    args.extend(members.iter().map(String::as_str));
    let _: i64 = q(&mut c, &args);
    let enc: String = q(&mut c, &["OBJECT", "ENCODING", "big"]);
    assert_eq!(enc, "hashtable");
    // A small set of strings: listpack since Redis 7.2 (the reference here may be 7.0).
    let _: i64 = q(&mut c, &["SADD", "small", "a", "b"]);
    let enc: String = q(&mut c, &["OBJECT", "ENCODING", "small"]);
    assert_eq!(enc, "listpack");
    let idle: i64 = q(&mut c, &["OBJECT", "IDLETIME", "big"]);
    assert!(idle >= 0);
    let small: i64 = q(&mut c, &["MEMORY", "USAGE", "int"]);
    let big: i64 = q(&mut c, &["MEMORY", "USAGE", "big"]);
    assert!(small > 0 && big > 200 * 8, "{small} {big}");
    let _: () = q(
        &mut c,
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"],
    );
    let freq: i64 = q(&mut c, &["OBJECT", "FREQ", "big"]);
    assert!(freq >= 1);
    let e = common::qerr(&mut c, &["OBJECT", "IDLETIME", "big"]);
    assert!(
        e.starts_with("ERR An LFU maxmemory policy is selected"),
        "{e}"
    );
}

/// DUMP and RESTORE round trips of every type, with TTL, REPLACE and ABSTTL; Redis'
/// errors for a busy key, a bad TTL and a payload that is not ours (one from redis-server).
#[test]
fn dump_and_restore() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &["SET", "s", "value"]);
    let _: i64 = q(&mut c, &["SADD", "set", "a", "b"]);
    let _: i64 = q(&mut c, &["HSET", "h", "f", "v", "g", "w"]);
    let _: i64 = q(&mut c, &["INCRBY", "ctr", "41"]);
    for k in ["s", "set", "h", "ctr"] {
        let d: Vec<u8> = redis::cmd("DUMP").arg(k).query(&mut c).expect("dump");
        let copy = format!("{k}-copy");
        let r: String = redis::cmd("RESTORE")
            .arg(&copy)
            .arg(0)
            .arg(&d)
            .query(&mut c)
            .expect("restore");
        assert_eq!(r, "OK");
        let e: redis::RedisError = redis::cmd("RESTORE")
            .arg(&copy)
            .arg(0)
            .arg(&d)
            .query::<String>(&mut c)
            .expect_err("busy");
        assert!(e.to_string().contains("BUSYKEY"), "{e}");
        let t: String = q(&mut c, &["TYPE", &copy]);
        let t0: String = q(&mut c, &["TYPE", k]);
        assert_eq!(t, t0);
    }
    let got: Vec<String> = q(&mut c, &["HMGET", "h-copy", "f", "g"]);
    assert_eq!(got, ["v", "w"]);
    let n: i64 = q(&mut c, &["INCR", "ctr-copy"]);
    assert_eq!(n, 42);
    let d: Vec<u8> = redis::cmd("DUMP").arg("s").query(&mut c).expect("dump");
    let _: String = redis::cmd("RESTORE")
        .arg("s-ttl")
        .arg(100_000)
        .arg(&d)
        .arg("REPLACE")
        .query(&mut c)
        .expect("restore with ttl");
    let ttl: i64 = q(&mut c, &["PTTL", "s-ttl"]);
    assert!(ttl > 0 && ttl <= 100_000, "{ttl}");
    // An absolute TTL in the past: nothing is created.
    let _: String = redis::cmd("RESTORE")
        .arg("gone")
        .arg(1)
        .arg(&d)
        .arg("ABSTTL")
        .query(&mut c)
        .expect("restore expired");
    let n: i64 = q(&mut c, &["EXISTS", "gone"]);
    assert_eq!(n, 0);
    let e: redis::RedisError = redis::cmd("RESTORE")
        .arg("x")
        .arg(-1)
        .arg(&d)
        .query::<String>(&mut c)
        .expect_err("negative ttl");
    assert!(e.to_string().contains("Invalid TTL value"), "{e}");
    let mut bad = d.clone();
    bad[0] ^= 1;
    let e: redis::RedisError = redis::cmd("RESTORE")
        .arg("x")
        .arg(0)
        .arg(&bad)
        .query::<String>(&mut c)
        .expect_err("damaged");
    assert!(e.to_string().contains("payload version or checksum"), "{e}");
    let nil: Option<Vec<u8>> = redis::cmd("DUMP").arg("nokey").query(&mut c).expect("dump");
    assert!(nil.is_none());
    // redis-server's own payload is not ours.
    if let Some(r) = common::RedisRef::start() {
        let mut rc = redis::Client::open(format!("redis://127.0.0.1:{}/", r.port))
            .expect("client")
            .get_connection()
            .expect("connect");
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut rc)
            .expect("set");
        let theirs: Vec<u8> = redis::cmd("DUMP").arg("k").query(&mut rc).expect("dump");
        let e: redis::RedisError = redis::cmd("RESTORE")
            .arg("x")
            .arg(0)
            .arg(&theirs)
            .query::<String>(&mut c)
            .expect_err("foreign payload");
        assert!(e.to_string().contains("payload version or checksum"), "{e}");
    }
}

/// `INFO cpu`: the process' CPU seconds, as Redis prints them.
#[test]
fn info_has_a_cpu_section() {
    let s = Server::start();
    let mut c = s.conn();
    let info: String = q(&mut c, &["INFO", "cpu"]);
    assert!(info.starts_with("# CPU\r\n"), "{info}");
    for f in [
        "used_cpu_sys",
        "used_cpu_user",
        "used_cpu_sys_children",
        "used_cpu_user_children",
    ] {
        let v = common::info_field(&mut c, f);
        let secs: f64 = v.parse().unwrap_or_else(|_| panic!("{f}: {v:?}"));
        assert!(secs >= 0.0);
    }
    let all: String = q(&mut c, &["INFO"]);
    assert!(all.contains("# CPU\r\n"));
}

/// Redis' encoding tunables: accepted, validated and reported as Redis does, and they
/// decide what OBJECT ENCODING answers (code written against Redis sets them and looks).
#[test]
fn encoding_tunables_are_configurable() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["CONFIG", "GET", "hash-max-listpack-entries"],
            &["CONFIG", "GET", "hash-max-ziplist-value"],
            &["CONFIG", "GET", "set-max-intset-entries"],
            &["CONFIG", "GET", "zset-max-listpack-*"],
            &["CONFIG", "GET", "list-max-listpack-size"],
            &["CONFIG", "SET", "hash-max-listpack-entries", "x"],
            &["CONFIG", "SET", "hash-max-listpack-entries", "-1"],
            &["CONFIG", "SET", "hash-max-ziplist-entries", "1"],
            &["CONFIG", "GET", "hash-max-listpack-entries"],
            &["HSET", "h", "a", "1", "b", "2"],
            &["OBJECT", "ENCODING", "h"],
            &["CONFIG", "SET", "set-max-intset-entries", "2"],
            &["SADD", "ints", "1", "2"],
            &["OBJECT", "ENCODING", "ints"],
        ],
    );
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["SADD", "ints3", "1", "2", "3"]);
    let enc: String = q(&mut c, &["OBJECT", "ENCODING", "ints3"]);
    assert_eq!(
        enc, "listpack",
        "Redis 7.2: past set-max-intset-entries, a small set"
    );
    let _: () = q(&mut c, &["CONFIG", "SET", "set-max-listpack-entries", "0"]);
    let enc: String = q(&mut c, &["OBJECT", "ENCODING", "ints3"]);
    assert_eq!(enc, "hashtable");
}

/// HRANDFIELD: Redis' replies for the deterministic cases, and random picks drawn from the
/// hash (distinct for a positive count, repeats allowed for a negative one); a hostile
/// count is refused instead of building a huge reply.
#[test]
fn hrandfield() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["HSET", "one", "f", "v"],
            &["HRANDFIELD", "one"],
            &["HRANDFIELD", "one", "1"],
            &["HRANDFIELD", "one", "5", "WITHVALUES"],
            &["HRANDFIELD", "one", "-2", "WITHVALUES"],
            &["HRANDFIELD", "one", "0"],
            &["HRANDFIELD", "nokey"],
            &["HRANDFIELD", "nokey", "3"],
            &["HRANDFIELD", "one", "x"],
            &["HRANDFIELD", "one", "1", "BAD"],
            &["HRANDFIELD", "one", "1", "WITHVALUES", "x"],
            &["HRANDFIELD", "one", "-9223372036854775808"],
            &["HRANDFIELD", "one", "-9223372036854775807", "WITHVALUES"],
            &["SET", "str", "v"],
            &["HRANDFIELD", "str"],
        ],
    );
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["HSET", "h", "a", "1", "b", "2", "c", "3"]);
    let distinct: Vec<String> = q(&mut c, &["HRANDFIELD", "h", "10"]);
    assert_eq!(distinct.iter().collect::<HashSet<_>>().len(), 3);
    let repeats: Vec<String> = q(&mut c, &["HRANDFIELD", "h", "-50"]);
    assert_eq!(repeats.len(), 50);
    assert!(repeats
        .iter()
        .all(|f| ["a", "b", "c"].contains(&f.as_str())));
    let pairs: Vec<String> = q(&mut c, &["HRANDFIELD", "h", "2", "WITHVALUES"]);
    assert_eq!(pairs.len(), 4);
    let e = common::qerr(&mut c, &["HRANDFIELD", "h", "-100000000"]);
    assert!(
        e.starts_with("ERR value is out of range, the reply would be too large"),
        "{e}"
    );
}

/// INFO commandstats and errorstats count calls, failed calls (an error from the command)
/// and rejected calls (refused before it ran), as Redis does; CONFIG RESETSTAT starts
/// them again; `commandstats` is not a default section.
#[test]
fn commandstats_and_errorstats() {
    let s = Server::start();
    let mut c = s.conn();
    for i in 0..5 {
        let _: () = q(&mut c, &["SET", &format!("k{i}"), "v"]);
    }
    let _: () = q(&mut c, &["SADD", "set", "m"]);
    assert!(common::qerr(&mut c, &["SET", "k0"]).starts_with("ERR wrong number"));
    assert!(common::qerr(&mut c, &["INCR", "k0"]).starts_with("ERR value is not"));
    assert!(common::qerr(&mut c, &["GET", "set"]).starts_with("WRONGTYPE"));
    assert!(common::qerr(&mut c, &["NOSUCHCMD"]).starts_with("ERR unknown command"));
    let info: String = q(&mut c, &["INFO", "commandstats"]);
    let line = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{name}:")))
            .unwrap_or_else(|| panic!("no cmdstat_{name} in {info}"))
            .to_string()
    };
    assert!(info.starts_with("# Commandstats\r\n"), "{info}");
    assert!(
        line("set").starts_with("cmdstat_set:calls=5,usec="),
        "{}",
        line("set")
    );
    assert!(
        line("set").ends_with("rejected_calls=1,failed_calls=0"),
        "{}",
        line("set")
    );
    assert!(
        line("incr").ends_with("rejected_calls=0,failed_calls=1"),
        "{}",
        line("incr")
    );
    assert!(
        line("get").ends_with("rejected_calls=0,failed_calls=1"),
        "{}",
        line("get")
    );
    let errors: String = q(&mut c, &["INFO", "errorstats"]);
    assert!(errors.contains("errorstat_ERR:count=3"), "{errors}");
    assert!(errors.contains("errorstat_WRONGTYPE:count=1"), "{errors}");
    assert_eq!(common::info_field(&mut c, "total_error_replies"), "4");
    let default: String = q(&mut c, &["INFO"]);
    assert!(!default.contains("# Commandstats"));
    assert!(default.contains("# Errorstats"));
    let everything: String = q(&mut c, &["INFO", "everything"]);
    assert!(everything.contains("cmdstat_set:calls=5"));
    let _: () = q(&mut c, &["CONFIG", "RESETSTAT"]);
    let info: String = q(&mut c, &["INFO", "commandstats"]);
    assert!(!info.contains("cmdstat_set:"), "{info}");
    let errors: String = q(&mut c, &["INFO", "errorstats"]);
    assert!(!errors.contains("errorstat_"), "{errors}");
}

/// SLOWLOG as Redis: with `slowlog-log-slower-than 0` every command is logged, newest
/// first, with its arguments (long ones cut as Redis cuts them), client address and name;
/// LEN, RESET, max length, and the errors of bad arguments (those compared with redis-server).
#[test]
fn slowlog_records_commands() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &["CLIENT", "SETNAME", "tester"]);
    let _: () = q(&mut c, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    let long = "x".repeat(200);
    let _: () = q(&mut c, &["SET", "k", &long]);
    let entries: Vec<redis::Value> = q(&mut c, &["SLOWLOG", "GET", "2"]);
    assert_eq!(entries.len(), 2);
    let redis::Value::Array(newest) = &entries[0] else {
        panic!("{entries:?}")
    };
    assert_eq!(newest.len(), 6);
    let args: Vec<String> = redis::from_redis_value(&newest[3]).expect("args");
    assert_eq!(args[0], "SET");
    assert_eq!(args[2], format!("{}... (72 more bytes)", "x".repeat(128)));
    let name: String = redis::from_redis_value(&newest[5]).expect("name");
    assert_eq!(name, "tester");
    let addr: String = redis::from_redis_value(&newest[4]).expect("addr");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let len: i64 = q(&mut c, &["SLOWLOG", "LEN"]);
    assert!(len >= 3, "{len}");
    let _: () = q(&mut c, &["SLOWLOG", "RESET"]);
    // The RESET itself is logged after it ran, as in Redis.
    let len: i64 = q(&mut c, &["SLOWLOG", "LEN"]);
    assert_eq!(len, 1);
    let _: () = q(&mut c, &["CONFIG", "SET", "slowlog-max-len", "2"]);
    for _ in 0..5 {
        let _: () = q(&mut c, &["PING"]);
    }
    let len: i64 = q(&mut c, &["SLOWLOG", "LEN"]);
    assert_eq!(len, 2);
    let all: Vec<redis::Value> = q(&mut c, &["SLOWLOG", "GET", "-1"]);
    assert_eq!(all.len(), 2);
    let _: () = q(&mut c, &["CONFIG", "SET", "slowlog-log-slower-than", "-1"]);
    let _: () = q(&mut c, &["SLOWLOG", "RESET"]);
    let _: () = q(&mut c, &["PING"]);
    let len: i64 = q(&mut c, &["SLOWLOG", "LEN"]);
    assert_eq!(len, 0, "a negative threshold logs nothing");
    assert_same_as_redis(
        &s,
        &[
            &["SLOWLOG", "GET", "-2"],
            &["SLOWLOG", "GET", "x"],
            &["SLOWLOG", "FOO"],
            &["SLOWLOG", "LEN", "1"],
            &["LATENCY", "FOO"],
            &["LATENCY", "HISTORY", "command"],
            &["LATENCY", "LATEST"],
        ],
    );
}

/// LATENCY: off by default; with a threshold, a command that takes longer (a SADD of
/// 300 000 members takes well over 1 ms) is an event in LATEST and HISTORY (SADD is a
/// `fast` command in Redis: the `fast-command` event); RESET clears.
#[test]
fn latency_monitor_records_slow_commands() {
    let s = Server::start();
    let mut c = s.conn();
    let latest: Vec<redis::Value> = q(&mut c, &["LATENCY", "LATEST"]);
    assert!(latest.is_empty());
    let _: () = q(&mut c, &["CONFIG", "SET", "latency-monitor-threshold", "1"]);
    let members: Vec<String> = (0..300_000).map(|i| i.to_string()).collect();
    let mut cmd = redis::cmd("SADD");
    cmd.arg("big").arg(&members);
    let added: i64 = cmd.query(&mut c).expect("SADD");
    assert_eq!(added, 300_000);
    let latest: Vec<(String, i64, i64, i64)> = q(&mut c, &["LATENCY", "LATEST"]);
    assert_eq!(latest.len(), 1, "{latest:?}");
    assert_eq!(latest[0].0, "fast-command");
    assert!(latest[0].2 >= 1 && latest[0].3 >= latest[0].2);
    let history: Vec<(i64, i64)> = q(&mut c, &["LATENCY", "HISTORY", "fast-command"]);
    assert_eq!(history.len(), 1);
    let doctor: String = q(&mut c, &["LATENCY", "DOCTOR"]);
    assert!(doctor.contains("fast-command"), "{doctor}");
    let reset: i64 = q(&mut c, &["LATENCY", "RESET"]);
    assert_eq!(reset, 1);
    let latest: Vec<redis::Value> = q(&mut c, &["LATENCY", "LATEST"]);
    assert!(latest.is_empty());
}

/// SORT and SORT_RO on sets: numeric and ALPHA order, DESC, LIMIT, BY a string key or a
/// hash field (missing weights), GET patterns (`#`, strings, hash fields, missing), and
/// Redis' errors — replies compared with redis-server.
#[test]
fn sort_matches_redis() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["SADD", "nums", "3", "10", "-2.5", "7", "1e2", "0"],
            &["SORT", "nums"],
            &["SORT", "nums", "DESC"],
            &["SORT", "nums", "LIMIT", "1", "3"],
            &["SORT", "nums", "LIMIT", "-5", "2"],
            &["SORT", "nums", "LIMIT", "4", "-1"],
            &["SORT", "nums", "LIMIT", "10", "2"],
            &["SORT", "nums", "LIMIT", "0", "0"],
            &["SORT", "nums", "ALPHA"],
            &["SORT", "nums", "ALPHA", "DESC", "LIMIT", "0", "2"],
            &["SADD", "words", "pear", "apple", "fig", "banana"],
            &["SORT", "words"],
            &["SORT", "words", "ALPHA"],
            &["SORT_RO", "words", "ALPHA", "DESC"],
            &[
                "MSET", "w_pear", "4", "w_apple", "1", "w_fig", "3", "w_banana", "2",
            ],
            &["SORT", "words", "BY", "w_*"],
            &[
                "SORT", "words", "BY", "w_*", "DESC", "GET", "#", "GET", "w_*",
            ],
            &["HSET", "h_pear", "price", "5", "name", "Pear"],
            &["HSET", "h_apple", "price", "9", "name", "Apple"],
            &["HSET", "h_fig", "price", "1"],
            &["HSET", "h_banana", "price", "7", "name", "Banana"],
            &[
                "SORT",
                "words",
                "BY",
                "h_*->price",
                "GET",
                "h_*->name",
                "GET",
                "#",
            ],
            &[
                "SORT",
                "words",
                "BY",
                "h_*->price",
                "ALPHA",
                "GET",
                "h_*->price",
            ],
            &[
                "SORT",
                "words",
                "ALPHA",
                "GET",
                "nothere_*",
                "GET",
                "h_*->nofield",
            ],
            &["SORT", "words", "ALPHA", "GET", "fixed"],
            &["SET", "w_fig", "notanumber"],
            &["SORT", "words", "BY", "w_*"],
            &["SORT", "nokey"],
            &["SORT", "nokey", "BY", "nosort"],
            &["SET", "str", "x"],
            &["SORT", "str"],
            &["SORT", "nums", "FOO"],
            &["SORT", "nums", "LIMIT", "1"],
            &["SORT", "nums", "LIMIT", "x", "1"],
            &["SORT_RO", "nums", "STORE", "dst"],
            &["SORT", "nums", "BY"],
        ],
    );
}
