//! Keyspace commands: DEL UNLINK EXISTS TYPE RENAME RENAMENX, the TTL family (EXPIRE PEXPIRE
//! EXPIREAT PEXPIREAT with NX XX GT LT, TTL PTTL PERSIST EXPIRETIME PEXPIRETIME), SCAN (MATCH
//! COUNT TYPE, completeness), KEYS DBSIZE RANDOMKEY FLUSHDB FLUSHALL.

mod common;

use common::*;
use std::collections::HashSet;

#[test]
fn del_unlink_exists_type() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["MSET", "a", "1", "b", "2", "c", "3"]);
    q::<i64>(&mut c, &["SADD", "s", "m"]);
    q::<i64>(&mut c, &["HSET", "h", "f", "v"]);
    assert_eq!(q::<String>(&mut c, &["TYPE", "a"]), "string");
    assert_eq!(q::<String>(&mut c, &["TYPE", "s"]), "set");
    assert_eq!(q::<String>(&mut c, &["TYPE", "h"]), "hash");
    assert_eq!(q::<String>(&mut c, &["TYPE", "zz"]), "none");
    // EXISTS counts every argument, repeats included.
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "a", "a", "zz", "s", "h"]), 4);
    assert_eq!(q::<i64>(&mut c, &["DEL", "a", "zz", "s", "a"]), 2);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "a", "s"]), 0);
    assert_eq!(q::<i64>(&mut c, &["UNLINK", "b", "h", "nope"]), 2);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "b", "h"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "c"]), 1);
    assert_eq!(q::<i64>(&mut c, &["DEL", "nope"]), 0);
    // A deleted key is really gone: recreating it starts fresh.
    assert_eq!(q::<i64>(&mut c, &["SADD", "a", "x"]), 1);
    assert_eq!(q::<String>(&mut c, &["TYPE", "a"]), "set");
    for (args, name) in [
        (&["DEL"][..], "del"),
        (&["UNLINK"], "unlink"),
        (&["EXISTS"], "exists"),
        (&["TYPE"], "type"),
        (&["RENAME", "a"], "rename"),
        (&["RENAMENX", "a"], "renamenx"),
    ] {
        assert_eq!(
            qerr(&mut c, args),
            format!("ERR wrong number of arguments for '{name}' command")
        );
    }
}

#[test]
fn rename_moves_value_and_ttl() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "{u}src", "v", "EX", "1000"]);
    let deadline: i64 = q(&mut c, &["PEXPIRETIME", "{u}src"]);
    assert_eq!(
        v(&mut c, &["RENAME", "{u}src", "{u}dst"]),
        redis::Value::Okay
    );
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "{u}src"]), 0);
    assert_eq!(q::<String>(&mut c, &["GET", "{u}dst"]), "v");
    assert_eq!(q::<i64>(&mut c, &["PEXPIRETIME", "{u}dst"]), deadline);

    // Overwrites a destination of another type, dropping the destination's TTL.
    q::<i64>(&mut c, &["HSET", "{u}h", "f1", "a", "f2", "b"]);
    q::<i64>(&mut c, &["HINCRBY", "{u}h", "n", "7"]);
    q::<i64>(&mut c, &["SADD", "{u}set", "x"]);
    q::<i64>(&mut c, &["EXPIRE", "{u}set", "1000"]);
    assert_eq!(v(&mut c, &["RENAME", "{u}h", "{u}set"]), redis::Value::Okay);
    assert_eq!(q::<String>(&mut c, &["TYPE", "{u}set"]), "hash");
    assert_eq!(q::<i64>(&mut c, &["TTL", "{u}set"]), -1);
    assert_eq!(sorted(q(&mut c, &["HKEYS", "{u}set"])), ["f1", "f2", "n"]);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "{u}set", "n", "1"]), 8);

    // Sets and counters move too.
    q::<i64>(&mut c, &["SADD", "{u}s1", "a", "b"]);
    q::<()>(&mut c, &["RENAME", "{u}s1", "{u}s2"]);
    assert_eq!(sorted(q(&mut c, &["SMEMBERS", "{u}s2"])), ["a", "b"]);
    q::<i64>(&mut c, &["INCRBY", "ctr", "5"]);
    q::<()>(&mut c, &["RENAME", "ctr", "ctr2"]);
    assert_eq!(q::<i64>(&mut c, &["INCR", "ctr2"]), 6);

    // Same name: OK and nothing changes.
    assert_eq!(v(&mut c, &["RENAME", "ctr2", "ctr2"]), redis::Value::Okay);
    assert_eq!(q::<String>(&mut c, &["GET", "ctr2"]), "6");
    assert_eq!(qerr(&mut c, &["RENAME", "nope", "x"]), "ERR no such key");
    assert_eq!(qerr(&mut c, &["RENAMENX", "nope", "x"]), "ERR no such key");
}

#[test]
fn renamenx_only_to_a_free_name() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["MSET", "{r}a", "1", "{r}b", "2"]);
    assert_eq!(q::<i64>(&mut c, &["RENAMENX", "{r}a", "{r}b"]), 0);
    assert_eq!(q::<String>(&mut c, &["GET", "{r}a"]), "1");
    assert_eq!(q::<String>(&mut c, &["GET", "{r}b"]), "2");
    assert_eq!(q::<i64>(&mut c, &["RENAMENX", "{r}a", "{r}c"]), 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "{r}a"]), 0);
    assert_eq!(q::<String>(&mut c, &["GET", "{r}c"]), "1");
    assert_eq!(q::<i64>(&mut c, &["RENAMENX", "{r}c", "{r}c"]), 0);
}

#[test]
fn ttl_pttl_persist_expiretime() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["TTL", "nope"]), -2);
    assert_eq!(q::<i64>(&mut c, &["PTTL", "nope"]), -2);
    assert_eq!(q::<i64>(&mut c, &["EXPIRETIME", "nope"]), -2);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRETIME", "nope"]), -2);
    q::<()>(&mut c, &["SET", "k", "v"]);
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]), -1);
    assert_eq!(q::<i64>(&mut c, &["PTTL", "k"]), -1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRETIME", "k"]), -1);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRETIME", "k"]), -1);

    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "100"]), 1);
    let ttl: i64 = q(&mut c, &["TTL", "k"]);
    assert!((99..=100).contains(&ttl), "{ttl}");
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "k", "50000"]), 1);
    let pttl: i64 = q(&mut c, &["PTTL", "k"]);
    assert!(pttl > 40_000 && pttl <= 50_000, "{pttl}");
    let at = now_ms() / 1000 + 3600;
    assert_eq!(q::<i64>(&mut c, &["EXPIREAT", "k", &at.to_string()]), 1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRETIME", "k"]), at);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRETIME", "k"]), at * 1000);
    let pat = now_ms() + 7_200_123;
    assert_eq!(q::<i64>(&mut c, &["PEXPIREAT", "k", &pat.to_string()]), 1);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRETIME", "k"]), pat);
    assert_eq!(q::<i64>(&mut c, &["EXPIRETIME", "k"]), pat / 1000);

    assert_eq!(q::<i64>(&mut c, &["PERSIST", "k"]), 1);
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]), -1);
    assert_eq!(q::<i64>(&mut c, &["PERSIST", "k"]), 0);
    assert_eq!(q::<i64>(&mut c, &["PERSIST", "nope"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "nope", "10"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "nope"]), 0);

    // TTLs apply to every type.
    q::<i64>(&mut c, &["SADD", "s", "m"]);
    q::<i64>(&mut c, &["HSET", "h", "f", "v"]);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "s", "100"]), 1);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "h", "100000"]), 1);
    assert!(q::<i64>(&mut c, &["TTL", "s"]) > 0);
    assert!(q::<i64>(&mut c, &["TTL", "h"]) > 0);
    // Writes that modify (SADD, HSET) keep the TTL.
    q::<i64>(&mut c, &["SADD", "s", "m2"]);
    q::<i64>(&mut c, &["HSET", "h", "g", "w"]);
    assert!(q::<i64>(&mut c, &["TTL", "s"]) > 0);
    assert!(q::<i64>(&mut c, &["TTL", "h"]) > 0);
}

#[test]
fn expire_in_the_past_deletes_now() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["MSET", "a", "1", "b", "2", "c", "3", "d", "4"]);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "a", "-1"]), 1);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "b", "0"]), 1);
    assert_eq!(q::<i64>(&mut c, &["EXPIREAT", "c", "1"]), 1);
    assert_eq!(q::<i64>(&mut c, &["PEXPIREAT", "d", "1"]), 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "a", "b", "c", "d"]), 0);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 0);
}

#[test]
fn expire_nx_xx_gt_lt() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "v"]);
    // No TTL yet: XX and GT refuse (no TTL counts as infinite), NX and LT set.
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "100", "XX"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "100", "GT"]), 0);
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]), -1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "100", "LT"]), 1);
    assert!(q::<i64>(&mut c, &["TTL", "k"]) > 0);
    q::<i64>(&mut c, &["PERSIST", "k"]);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "100", "NX"]), 1);
    // Now there is a TTL of ~100s.
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "500", "NX"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "50", "GT"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "200", "LT"]), 0);
    let ttl: i64 = q(&mut c, &["TTL", "k"]);
    assert!((99..=100).contains(&ttl), "unchanged: {ttl}");
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "200", "GT"]), 1);
    assert!(q::<i64>(&mut c, &["TTL", "k"]) > 150);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "150", "LT"]), 1);
    let ttl: i64 = q(&mut c, &["TTL", "k"]);
    assert!((149..=150).contains(&ttl), "{ttl}");
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "300", "XX"]), 1);
    assert!(q::<i64>(&mut c, &["TTL", "k"]) > 250);
    // XX + GT together.
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "k", "1000", "XX", "GT"]), 0);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "k", "900000", "xx", "gt"]), 1);
    // The same options on the absolute forms.
    let far = (now_ms() / 1000 + 100_000).to_string();
    let near = (now_ms() / 1000 + 10).to_string();
    assert_eq!(q::<i64>(&mut c, &["EXPIREAT", "k", &near, "GT"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIREAT", "k", &far, "GT"]), 1);
    assert_eq!(q::<String>(&mut c, &["EXPIRETIME", "k"]), far);
    let pnear = (now_ms() + 60_000).to_string();
    assert_eq!(q::<i64>(&mut c, &["PEXPIREAT", "k", &pnear, "LT"]), 1);
    assert_eq!(q::<String>(&mut c, &["PEXPIRETIME", "k"]), pnear);
    assert_eq!(q::<i64>(&mut c, &["PEXPIREAT", "k", &pnear, "NX"]), 0);

    assert_eq!(
        qerr(&mut c, &["EXPIRE", "k", "10", "NX", "XX"]),
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    );
    assert_eq!(
        qerr(&mut c, &["EXPIRE", "k", "10", "NX", "GT"]),
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    );
    assert_eq!(
        qerr(&mut c, &["EXPIRE", "k", "10", "GT", "LT"]),
        "ERR GT and LT options at the same time are not compatible"
    );
    assert_eq!(
        qerr(&mut c, &["EXPIRE", "k", "10", "FOO"]),
        "ERR Unsupported option FOO"
    );
    assert_eq!(
        qerr(&mut c, &["EXPIRE", "k", "ten"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        qerr(&mut c, &["EXPIRE", "k", "9223372036854775807"]),
        "ERR invalid expire time in 'expire' command"
    );
    assert_eq!(
        qerr(&mut c, &["PEXPIRE", "k", "9223372036854775807"]),
        "ERR invalid expire time in 'pexpire' command"
    );
    assert_eq!(
        qerr(&mut c, &["EXPIREAT", "k", "9223372036854775807"]),
        "ERR invalid expire time in 'expireat' command"
    );
    assert_eq!(
        qerr(&mut c, &["EXPIRE", "k"]),
        "ERR wrong number of arguments for 'expire' command"
    );
    assert_eq!(
        qerr(&mut c, &["TTL"]),
        "ERR wrong number of arguments for 'ttl' command"
    );
    // The key survived every refused change.
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "v");
}

/// Populate 600 strings, 200 sets and 200 hashes.
fn populate(c: &mut redis::Connection) -> (HashSet<String>, HashSet<String>, HashSet<String>) {
    let strs: HashSet<String> = (0..600).map(|i| format!("str:{i}")).collect();
    let sets: HashSet<String> = (0..200).map(|i| format!("set:{i}")).collect();
    let hashes: HashSet<String> = (0..200).map(|i| format!("hash:{i}")).collect();
    let mut p = redis::pipe();
    for k in &strs {
        p.cmd("SET").arg(k).arg("v").ignore();
    }
    for k in &sets {
        p.cmd("SADD").arg(k).arg("m").ignore();
    }
    for k in &hashes {
        p.cmd("HSET").arg(k).arg("f").arg("v").ignore();
    }
    let _: () = p.query(c).unwrap();
    (strs, sets, hashes)
}

/// Full SCAN iteration with extra options; returns every key seen and how many calls it took.
fn scan_all(c: &mut redis::Connection, opts: &[&str]) -> (Vec<String>, usize) {
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    let mut calls = 0;
    loop {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(opts);
        let (next, batch): (String, Vec<String>) = q(c, &args);
        calls += 1;
        assert!(calls < 100_000, "SCAN does not terminate");
        keys.extend(batch);
        if next == "0" {
            return (keys, calls);
        }
        cursor = next;
    }
}

#[test]
fn scan_is_complete_with_match_count_type() {
    let s = Server::start();
    let mut c = s.conn();
    let (strs, sets, hashes) = populate(&mut c);
    let all: HashSet<String> = strs.iter().chain(&sets).chain(&hashes).cloned().collect();
    assert_eq!(q::<usize>(&mut c, &["DBSIZE"]), 1000);

    let (keys, calls) = scan_all(&mut c, &[]);
    assert_eq!(
        keys.len(),
        1000,
        "each key exactly once without concurrent changes"
    );
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), all);
    assert!(
        calls > 1,
        "default COUNT 10 must take several calls over 1000 keys"
    );

    let (keys, small_calls) = scan_all(&mut c, &["COUNT", "7"]);
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), all);
    let (keys, big_calls) = scan_all(&mut c, &["COUNT", "500"]);
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), all);
    assert!(
        big_calls < small_calls,
        "COUNT bounds work per call: {big_calls} calls with COUNT 500 vs {small_calls} with 7"
    );

    let (keys, _) = scan_all(&mut c, &["MATCH", "set:*", "COUNT", "50"]);
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), sets);
    let (keys, _) = scan_all(&mut c, &["TYPE", "hash"]);
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), hashes);
    let (keys, _) = scan_all(&mut c, &["TYPE", "string", "COUNT", "100"]);
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), strs);
    let (keys, _) = scan_all(&mut c, &["MATCH", "str:1?", "TYPE", "string"]);
    let want: HashSet<String> = (10..20).map(|i| format!("str:{i}")).collect();
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), want);
    let (keys, _) = scan_all(&mut c, &["MATCH", "set:*", "TYPE", "hash"]);
    assert!(keys.is_empty());
    let (keys, _) = scan_all(&mut c, &["MATCH", "nothing*"]);
    assert!(keys.is_empty());

    assert_eq!(qerr(&mut c, &["SCAN", "abc"]), "ERR invalid cursor");
    assert_eq!(
        qerr(&mut c, &["SCAN", "0", "COUNT", "0"]),
        "ERR syntax error"
    );
    assert_eq!(
        qerr(&mut c, &["SCAN", "0", "COUNT", "x"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(qerr(&mut c, &["SCAN", "0", "MATCH"]), "ERR syntax error");
    assert_eq!(
        qerr(&mut c, &["SCAN", "0", "FOO", "bar"]),
        "ERR syntax error"
    );
}

#[test]
fn scan_returns_keys_present_throughout_despite_changes() {
    let s = Server::start();
    let mut c = s.conn();
    let (strs, _, _) = populate(&mut c);
    let mut writer = s.conn();
    let mut cursor = "0".to_string();
    let mut seen = HashSet::new();
    let mut round = 0;
    loop {
        let (next, batch): (String, Vec<String>) = q(&mut c, &["SCAN", &cursor, "COUNT", "20"]);
        seen.extend(batch);
        // Churn between calls: add new keys and delete sets/hashes (never the strings).
        round += 1;
        q::<()>(&mut writer, &["SET", &format!("new:{round}"), "x"]);
        q::<i64>(
            &mut writer,
            &["DEL", &format!("set:{round}"), &format!("hash:{round}")],
        );
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let missing: Vec<&String> = strs.iter().filter(|k| !seen.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "keys present for the whole scan were skipped: {missing:?}"
    );
}

#[test]
fn keys_dbsize_randomkey_flush() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(v(&mut c, &["RANDOMKEY"]), redis::Value::Nil);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 0);
    assert!(q::<Vec<String>>(&mut c, &["KEYS", "*"]).is_empty());
    q::<()>(&mut c, &["SET", "only", "1"]);
    assert_eq!(q::<String>(&mut c, &["RANDOMKEY"]), "only");
    let (strs, sets, hashes) = populate(&mut c);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 1001);
    let mut all: HashSet<String> = strs.iter().chain(&sets).chain(&hashes).cloned().collect();
    all.insert("only".into());
    let keys: Vec<String> = q(&mut c, &["KEYS", "*"]);
    assert_eq!(keys.len(), 1001);
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), all);
    assert_eq!(
        sorted(q(&mut c, &["KEYS", "str:1?"])),
        sorted((10..20).map(|i| format!("str:{i}")).collect())
    );
    assert_eq!(
        sorted(q(&mut c, &["KEYS", "set:1[0-2]"])),
        ["set:10", "set:11", "set:12"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["KEYS", "h*sh:199"]),
        ["hash:199"]
    );
    for _ in 0..20 {
        let k: String = q(&mut c, &["RANDOMKEY"]);
        assert!(all.contains(&k), "RANDOMKEY returned unknown key {k}");
    }

    assert_eq!(qerr(&mut c, &["FLUSHALL", "FOO"]), "ERR syntax error");
    assert_eq!(v(&mut c, &["FLUSHDB"]), redis::Value::Okay);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 0);
    assert_eq!(v(&mut c, &["GET", "str:1"]), redis::Value::Nil);
    q::<()>(&mut c, &["SET", "x", "1"]);
    assert_eq!(v(&mut c, &["FLUSHALL", "ASYNC"]), redis::Value::Okay);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 0);
    q::<()>(&mut c, &["SET", "x", "1"]);
    assert_eq!(v(&mut c, &["FLUSHDB", "SYNC"]), redis::Value::Okay);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "x"]), 0);
    assert_eq!(
        qerr(&mut c, &["DBSIZE", "x"]),
        "ERR wrong number of arguments for 'dbsize' command"
    );
    assert_eq!(
        qerr(&mut c, &["KEYS"]),
        "ERR wrong number of arguments for 'keys' command"
    );
}

#[test]
fn key_replies_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["SET", "k", "v"],
            &["EXPIRE", "k", "100", "XX"],
            &["EXPIRE", "k", "100", "GT"],
            &["EXPIRE", "k", "100", "NX"],
            &["EXPIRE", "k", "50", "GT"],
            &["EXPIRE", "k", "10", "NX", "XX"],
            &["EXPIRE", "k", "10", "GT", "LT"],
            &["EXPIRE", "k", "10", "BAD"],
            &["EXPIRE", "k", "x"],
            &["TTL", "k"],
            &["PERSIST", "k"],
            &["PERSIST", "k"],
            &["TTL", "k"],
            &["PTTL", "nope"],
            &["EXPIRETIME", "k"],
            &["PEXPIREAT", "nope", "1"],
            &["EXISTS", "k", "k", "nope"],
            &["TYPE", "k"],
            &["RENAME", "nope", "x"],
            &["RENAME", "k", "k2"],
            &["RENAMENX", "k2", "k2"],
            &["SADD", "s", "a"],
            &["RENAMENX", "k2", "s"],
            &["DEL", "k2", "s", "nope"],
            &["SCAN", "x"],
            &["SCAN", "0", "COUNT", "0"],
            &["SCAN", "0", "MATCH"],
            &["KEYS", "*"],
            &["DBSIZE"],
            &["RANDOMKEY"],
            &["FLUSHALL", "BAD"],
            &["FLUSHALL"],
        ],
    );
}
