//! Hash commands: HSET HMSET HSETNX HGET HMGET HDEL HGETALL HKEYS HVALS HLEN HEXISTS HSTRLEN
//! HINCRBY HINCRBYFLOAT, RESP3 map replies, Redis 7 error texts.

mod common;

use common::*;
use std::collections::HashMap;

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

#[test]
fn hset_hget_hmget_hlen_hexists() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "a", "1", "b", "2"]), 2);
    // Only new fields count; existing ones are overwritten.
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "b", "20", "c", "3"]), 1);
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "b"]), "20");
    assert_eq!(v(&mut c, &["HGET", "h", "zz"]), redis::Value::Nil);
    assert_eq!(v(&mut c, &["HGET", "missing", "a"]), redis::Value::Nil);
    assert_eq!(
        q::<Vec<Option<String>>>(&mut c, &["HMGET", "h", "a", "zz", "c"]),
        [Some("1".into()), None, Some("3".into())]
    );
    assert_eq!(
        q::<Vec<Option<String>>>(&mut c, &["HMGET", "missing", "a", "b"]),
        [None, None]
    );
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]), 3);
    assert_eq!(q::<i64>(&mut c, &["HLEN", "missing"]), 0);
    assert_eq!(q::<i64>(&mut c, &["HEXISTS", "h", "a"]), 1);
    assert_eq!(q::<i64>(&mut c, &["HEXISTS", "h", "zz"]), 0);
    assert_eq!(q::<i64>(&mut c, &["HEXISTS", "missing", "a"]), 0);
    assert_eq!(q::<String>(&mut c, &["TYPE", "h"]), "hash");
    // HMSET: the deprecated form answers OK.
    assert_eq!(
        v(&mut c, &["HMSET", "h", "d", "4", "a", "10"]),
        redis::Value::Okay
    );
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "a"]), "10");
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]), 4);
}

/// Regression: a field named twice in one HSET used to panic the connection task (the CRDT
/// register was set twice with one HLC stamp) and lose the whole hash.
#[test]
fn hset_with_a_repeated_field_keeps_the_last_value() {
    let s = Server::start();
    let mut c = s.conn();
    q::<i64>(&mut c, &["HSET", "h", "a", "1"]);
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "f", "1", "f", "2"]), 1);
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "f"]), "2");
    assert_eq!(
        q::<String>(&mut c, &["HGET", "h", "a"]),
        "1",
        "existing fields survive"
    );
    assert_eq!(
        q::<i64>(&mut c, &["HSET", "h", "a", "x", "g", "y", "a", "z"]),
        1
    );
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "a"]), "z");
    assert_eq!(
        v(&mut c, &["HMSET", "h2", "f", "1", "f", "2", "f", "3"]),
        redis::Value::Okay
    );
    assert_eq!(q::<String>(&mut c, &["HGET", "h2", "f"]), "3");
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]), 3);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 2);
}

#[test]
fn hgetall_hkeys_hvals() {
    let s = Server::start();
    let mut c = s.conn();
    q::<i64>(&mut c, &["HSET", "h", "f1", "v1", "f2", "v2", "f3", ""]);
    let all: HashMap<String, String> = q(&mut c, &["HGETALL", "h"]);
    assert_eq!(
        all,
        HashMap::from([
            ("f1".into(), "v1".into()),
            ("f2".into(), "v2".into()),
            ("f3".into(), String::new()),
        ])
    );
    // Keys and values come in the same order as HGETALL's pairs.
    let flat: Vec<String> = q(&mut c, &["HGETALL", "h"]);
    let keys: Vec<String> = q(&mut c, &["HKEYS", "h"]);
    let vals: Vec<String> = q(&mut c, &["HVALS", "h"]);
    assert_eq!(keys.len(), 3);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(&vals[i], &all[k]);
        assert_eq!(&flat[2 * i], k);
    }
    assert!(q::<Vec<String>>(&mut c, &["HGETALL", "missing"]).is_empty());
    assert!(q::<Vec<String>>(&mut c, &["HKEYS", "missing"]).is_empty());
    assert!(q::<Vec<String>>(&mut c, &["HVALS", "missing"]).is_empty());
}

#[test]
fn hdel_removes_fields_and_empty_hashes() {
    let s = Server::start();
    let mut c = s.conn();
    q::<i64>(&mut c, &["HSET", "h", "a", "1", "b", "2", "c", "3"]);
    assert_eq!(q::<i64>(&mut c, &["HDEL", "h", "a", "zz", "a"]), 1);
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]), 2);
    assert_eq!(q::<i64>(&mut c, &["HDEL", "missing", "a"]), 0);
    assert_eq!(q::<i64>(&mut c, &["HDEL", "h", "b", "c"]), 2);
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "h"]),
        0,
        "empty hash is removed"
    );
    assert_eq!(q::<String>(&mut c, &["TYPE", "h"]), "none");
}

#[test]
fn hsetnx_and_hstrlen() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["HSETNX", "h", "f", "first"]), 1);
    assert_eq!(q::<i64>(&mut c, &["HSETNX", "h", "f", "second"]), 0);
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "f"]), "first");
    assert_eq!(q::<i64>(&mut c, &["HSTRLEN", "h", "f"]), 5);
    assert_eq!(q::<i64>(&mut c, &["HSTRLEN", "h", "zz"]), 0);
    assert_eq!(q::<i64>(&mut c, &["HSTRLEN", "missing", "f"]), 0);
    q::<i64>(&mut c, &["HINCRBY", "h", "n", "-123"]);
    assert_eq!(q::<i64>(&mut c, &["HSTRLEN", "h", "n"]), 4);
}

#[test]
fn hincrby_counts_and_checks() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "n", "5"]), 5);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "n", "-7"]), -2);
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "n"]), "-2");
    q::<i64>(&mut c, &["HSET", "h", "s", "10"]);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "s", "1"]), 11);
    q::<i64>(&mut c, &["HSET", "h", "txt", "abc"]);
    assert_eq!(
        qerr(&mut c, &["HINCRBY", "h", "txt", "1"]),
        "ERR hash value is not an integer"
    );
    assert_eq!(
        qerr(&mut c, &["HINCRBY", "h", "n", "x"]),
        "ERR value is not an integer or out of range"
    );
    q::<i64>(&mut c, &["HSET", "h", "max", "9223372036854775807"]);
    assert_eq!(
        qerr(&mut c, &["HINCRBY", "h", "max", "1"]),
        "ERR increment or decrement would overflow"
    );
    assert_eq!(
        q::<String>(&mut c, &["HGET", "h", "max"]),
        "9223372036854775807"
    );
    // HSET over a counter field replaces it.
    q::<i64>(&mut c, &["HSET", "h", "n", "100"]);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "n", "1"]), 101);
}

#[test]
fn hincrbyfloat_formats_like_redis() {
    let s = Server::start();
    let mut c = s.conn();
    q::<i64>(&mut c, &["HSET", "h", "f", "10.50"]);
    assert_eq!(
        q::<String>(&mut c, &["HINCRBYFLOAT", "h", "f", "0.1"]),
        "10.6"
    );
    assert_eq!(
        q::<String>(&mut c, &["HINCRBYFLOAT", "h", "f", "-5"]),
        "5.6"
    );
    q::<i64>(&mut c, &["HSET", "h", "e", "5.0e3"]);
    assert_eq!(
        q::<String>(&mut c, &["HINCRBYFLOAT", "h", "e", "2.0e2"]),
        "5200"
    );
    assert_eq!(
        q::<String>(&mut c, &["HINCRBYFLOAT", "h", "new", "1.5"]),
        "1.5"
    );
    q::<i64>(&mut c, &["HINCRBY", "h", "i", "5"]);
    assert_eq!(
        q::<String>(&mut c, &["HINCRBYFLOAT", "h", "i", "1.5"]),
        "6.5"
    );
    assert_eq!(
        qerr(&mut c, &["HINCRBY", "h", "i", "1"]),
        "ERR hash value is not an integer"
    );
    q::<i64>(&mut c, &["HSET", "h", "txt", "abc"]);
    assert_eq!(
        qerr(&mut c, &["HINCRBYFLOAT", "h", "txt", "1"]),
        "ERR hash value is not a float"
    );
    assert_eq!(
        qerr(&mut c, &["HINCRBYFLOAT", "h", "f", "x"]),
        "ERR value is not a valid float"
    );
    assert_eq!(
        qerr(&mut c, &["HINCRBYFLOAT", "h", "f", "inf"]),
        "ERR value is NaN or Infinity"
    );
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "f"]), "5.6");
}

#[test]
fn hash_arity_and_wrongtype() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(
        qerr(&mut c, &["HSET", "h", "a"]),
        "ERR wrong number of arguments for 'hset' command"
    );
    assert_eq!(
        qerr(&mut c, &["HSET", "h", "a", "1", "b"]),
        "ERR wrong number of arguments for 'hset' command"
    );
    assert_eq!(
        qerr(&mut c, &["HMSET", "h", "a", "1", "b"]),
        "ERR wrong number of arguments for 'hmset' command"
    );
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "h"]),
        0,
        "rejected HSET writes nothing"
    );
    for (args, name) in [
        (&["HGET", "h"][..], "hget"),
        (&["HMGET", "h"], "hmget"),
        (&["HDEL", "h"], "hdel"),
        (&["HGETALL"], "hgetall"),
        (&["HKEYS"], "hkeys"),
        (&["HVALS"], "hvals"),
        (&["HLEN"], "hlen"),
        (&["HEXISTS", "h"], "hexists"),
        (&["HSTRLEN", "h"], "hstrlen"),
        (&["HINCRBY", "h", "f"], "hincrby"),
        (&["HINCRBYFLOAT", "h", "f"], "hincrbyfloat"),
        (&["HSETNX", "h", "f"], "hsetnx"),
    ] {
        assert_eq!(
            qerr(&mut c, args),
            format!("ERR wrong number of arguments for '{name}' command")
        );
    }
    q::<()>(&mut c, &["SET", "str", "x"]);
    q::<i64>(&mut c, &["SADD", "set", "x"]);
    for key in ["str", "set"] {
        for args in [
            vec!["HSET", key, "f", "v"],
            vec!["HMSET", key, "f", "v"],
            vec!["HSETNX", key, "f", "v"],
            vec!["HGET", key, "f"],
            vec!["HMGET", key, "f"],
            vec!["HDEL", key, "f"],
            vec!["HGETALL", key],
            vec!["HKEYS", key],
            vec!["HVALS", key],
            vec!["HLEN", key],
            vec!["HEXISTS", key, "f"],
            vec!["HSTRLEN", key, "f"],
            vec!["HINCRBY", key, "f", "1"],
            vec!["HINCRBYFLOAT", key, "f", "1"],
        ] {
            assert_eq!(qerr(&mut c, &args), WRONGTYPE, "{args:?}");
        }
    }
}

#[test]
fn resp3_hgetall_is_a_map() {
    let s = Server::start();
    let mut raw = s.raw();
    raw.cmd(&["HELLO", "3"]);
    raw.cmd(&["HSET", "h", "a", "1", "b", "2"]);
    match raw.cmd(&["HGETALL", "h"]) {
        Resp::Map(pairs) => {
            let mut got: Vec<(String, String)> =
                pairs.iter().map(|(k, v)| (k.text(), v.text())).collect();
            got.sort();
            assert_eq!(got, [("a".into(), "1".into()), ("b".into(), "2".into())]);
        }
        other => panic!("HGETALL under RESP3 must be a map (%), got {other:?}"),
    }
    assert_eq!(raw.cmd(&["HGET", "h", "zz"]), Resp::Null);
    let mut c = s.conn_resp3();
    let m: HashMap<String, i64> = q(&mut c, &["HGETALL", "h"]);
    assert_eq!(m, HashMap::from([("a".into(), 1), ("b".into(), 2)]));
}

#[test]
fn hash_replies_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["HSET", "h", "a", "1", "b", "2"],
            &["HSET", "h", "a", "3"],
            &["HSET", "h", "a"],
            &["HSET", "h", "x", "1", "x", "2"],
            &["HGET", "h", "x"],
            &["HGET", "h", "a"],
            &["HMGET", "h", "a", "x", "b"],
            &["HGETALL", "h"],
            &["HKEYS", "h"],
            &["HVALS", "h"],
            &["HLEN", "h"],
            &["HEXISTS", "h", "b"],
            &["HSTRLEN", "h", "a"],
            &["HSETNX", "h", "a", "9"],
            &["HSETNX", "h", "c", "9"],
            &["HINCRBY", "h", "c", "5"],
            &["HINCRBY", "h", "c", "x"],
            &["HSET", "h", "t", "text"],
            &["HINCRBY", "h", "t", "1"],
            &["HINCRBYFLOAT", "h", "t", "1"],
            &["HINCRBYFLOAT", "h", "c", "0.5"],
            &["HINCRBYFLOAT", "h", "c", "inf"],
            &["HMSET", "h", "d", "1"],
            &["HDEL", "h", "a", "zz"],
            &["SET", "s", "v"],
            &["HGET", "s", "f"],
            &["HDEL", "h", "b", "c", "d", "t"],
            &["EXISTS", "h"],
        ],
    );
}
