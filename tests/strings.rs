//! String commands through a real client: GET SET (EX PX EXAT PXAT NX XX KEEPTTL GET) SETNX
//! SETEX PSETEX GETSET GETDEL GETEX MGET MSET MSETNX APPEND STRLEN GETRANGE SETRANGE, with
//! Redis 7 replies and error texts.

mod common;

use common::*;
use redis::Value;

#[test]
fn set_and_get_round_trip_binary_values() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(v(&mut c, &["GET", "missing"]), Value::Nil);
    assert_eq!(v(&mut c, &["SET", "k", "hello"]), Value::Okay);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "hello");
    assert_eq!(v(&mut c, &["SET", "k", "again"]), Value::Okay);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "again");
    // Binary-safe: NUL, CR/LF and high bytes survive untouched.
    let blob: Vec<u8> = (0..=255u8).chain(*b"\r\n\0\r\n").collect();
    let _: () = redis::cmd("SET")
        .arg("bin")
        .arg(&blob)
        .query(&mut c)
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET").arg("bin").query(&mut c).unwrap();
    assert_eq!(back, blob);
    // Empty value is a value.
    assert_eq!(v(&mut c, &["SET", "empty", ""]), Value::Okay);
    assert_eq!(v(&mut c, &["GET", "empty"]), Value::BulkString(Vec::new()));
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "empty"]), 1);
}

#[test]
fn set_nx_xx_get_options() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(v(&mut c, &["SET", "k", "1", "XX"]), Value::Nil);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "k"]), 0);
    assert_eq!(v(&mut c, &["SET", "k", "1", "NX"]), Value::Okay);
    assert_eq!(v(&mut c, &["SET", "k", "2", "NX"]), Value::Nil);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "1");
    assert_eq!(v(&mut c, &["SET", "k", "3", "XX"]), Value::Okay);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "3");
    // GET returns the old value (nil when there was none) and still sets.
    assert_eq!(q::<String>(&mut c, &["SET", "k", "4", "GET"]), "3");
    assert_eq!(v(&mut c, &["SET", "fresh", "x", "GET"]), Value::Nil);
    assert_eq!(q::<String>(&mut c, &["GET", "fresh"]), "x");
    // NX + GET on an existing key: old value back, nothing written (Redis 7).
    assert_eq!(q::<String>(&mut c, &["SET", "k", "5", "NX", "GET"]), "4");
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "4");
    // Options are case-insensitive.
    assert_eq!(
        v(&mut c, &["set", "k", "6", "xx", "get"]),
        Value::BulkString(b"4".to_vec())
    );
    assert_eq!(
        qerr(&mut c, &["SET", "k", "v", "NX", "XX"]),
        "ERR syntax error"
    );
    assert_eq!(
        qerr(&mut c, &["SET", "k", "v", "BOGUS"]),
        "ERR syntax error"
    );
    // SET ... GET on a non-string is WRONGTYPE and changes nothing.
    q::<i64>(&mut c, &["SADD", "set", "m"]);
    assert_eq!(
        qerr(&mut c, &["SET", "set", "v", "GET"]),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    assert_eq!(q::<String>(&mut c, &["TYPE", "set"]), "set");
    // Plain SET replaces a value of any type.
    assert_eq!(v(&mut c, &["SET", "set", "v"]), Value::Okay);
    assert_eq!(q::<String>(&mut c, &["TYPE", "set"]), "string");
}

#[test]
fn set_expiry_options() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(v(&mut c, &["SET", "ex", "v", "EX", "100"]), Value::Okay);
    let ttl: i64 = q(&mut c, &["TTL", "ex"]);
    assert!((99..=100).contains(&ttl), "TTL after EX 100: {ttl}");
    assert_eq!(v(&mut c, &["SET", "px", "v", "PX", "100000"]), Value::Okay);
    let pttl: i64 = q(&mut c, &["PTTL", "px"]);
    assert!(
        pttl > 90_000 && pttl <= 100_000,
        "PTTL after PX 100000: {pttl}"
    );
    let at = now_ms() / 1000 + 500;
    let at_s = at.to_string();
    assert_eq!(v(&mut c, &["SET", "exat", "v", "EXAT", &at_s]), Value::Okay);
    assert_eq!(q::<i64>(&mut c, &["EXPIRETIME", "exat"]), at);
    let pat = now_ms() + 500_000;
    let pat_s = pat.to_string();
    assert_eq!(
        v(&mut c, &["SET", "pxat", "v", "PXAT", &pat_s]),
        Value::Okay
    );
    assert_eq!(q::<i64>(&mut c, &["PEXPIRETIME", "pxat"]), pat);
    // KEEPTTL keeps the deadline; a plain SET clears it.
    assert_eq!(v(&mut c, &["SET", "pxat", "w", "KEEPTTL"]), Value::Okay);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRETIME", "pxat"]), pat);
    assert_eq!(q::<String>(&mut c, &["GET", "pxat"]), "w");
    assert_eq!(v(&mut c, &["SET", "pxat", "x"]), Value::Okay);
    assert_eq!(q::<i64>(&mut c, &["TTL", "pxat"]), -1);

    for (opt, val) in [("EX", "0"), ("PX", "-1"), ("EXAT", "0"), ("PXAT", "-5")] {
        assert_eq!(
            qerr(&mut c, &["SET", "k", "v", opt, val]),
            "ERR invalid expire time in 'set' command",
            "SET {opt} {val}"
        );
    }
    assert_eq!(
        qerr(&mut c, &["SET", "k", "v", "EX", "abc"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(qerr(&mut c, &["SET", "k", "v", "EX"]), "ERR syntax error");
    assert_eq!(
        qerr(&mut c, &["SET", "k", "v", "EX", "10", "PX", "10"]),
        "ERR syntax error"
    );
    assert_eq!(
        qerr(&mut c, &["SET", "k", "v", "KEEPTTL", "EX", "10"]),
        "ERR syntax error"
    );
    // A rejected SET leaves no key behind.
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "k"]), 0);
}

#[test]
fn setnx_setex_psetex() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["SETNX", "k", "a"]), 1);
    assert_eq!(q::<i64>(&mut c, &["SETNX", "k", "b"]), 0);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "a");

    assert_eq!(v(&mut c, &["SETEX", "se", "100", "v"]), Value::Okay);
    assert_eq!(q::<String>(&mut c, &["GET", "se"]), "v");
    let ttl: i64 = q(&mut c, &["TTL", "se"]);
    assert!((99..=100).contains(&ttl), "{ttl}");
    assert_eq!(
        qerr(&mut c, &["SETEX", "se", "0", "v"]),
        "ERR invalid expire time in 'setex' command"
    );
    assert_eq!(
        qerr(&mut c, &["SETEX", "se", "x", "v"]),
        "ERR value is not an integer or out of range"
    );

    assert_eq!(v(&mut c, &["PSETEX", "pse", "100000", "v"]), Value::Okay);
    let pttl: i64 = q(&mut c, &["PTTL", "pse"]);
    assert!(pttl > 90_000 && pttl <= 100_000, "{pttl}");
    assert_eq!(
        qerr(&mut c, &["PSETEX", "pse", "-1", "v"]),
        "ERR invalid expire time in 'psetex' command"
    );
    assert_eq!(
        qerr(&mut c, &["SETEX", "k"]),
        "ERR wrong number of arguments for 'setex' command"
    );
}

#[test]
fn getset_getdel_getex() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(v(&mut c, &["GETSET", "k", "1"]), Value::Nil);
    assert_eq!(q::<String>(&mut c, &["GETSET", "k", "2"]), "1");
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "2");
    // GETSET clears a TTL, like SET.
    q::<i64>(&mut c, &["EXPIRE", "k", "100"]);
    q::<String>(&mut c, &["GETSET", "k", "3"]);
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]), -1);

    assert_eq!(q::<String>(&mut c, &["GETDEL", "k"]), "3");
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "k"]), 0);
    assert_eq!(v(&mut c, &["GETDEL", "k"]), Value::Nil);

    q::<i64>(&mut c, &["SADD", "set", "m"]);
    for args in [
        &["GETSET", "set", "x"][..],
        &["GETDEL", "set"],
        &["GETEX", "set"],
        &["GET", "set"],
    ] {
        assert_eq!(
            qerr(&mut c, args),
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "{args:?}"
        );
    }
    assert_eq!(q::<i64>(&mut c, &["SCARD", "set"]), 1);

    assert_eq!(v(&mut c, &["GETEX", "missing", "EX", "10"]), Value::Nil);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "missing"]), 0);
    q::<()>(&mut c, &["SET", "g", "v"]);
    assert_eq!(q::<String>(&mut c, &["GETEX", "g"]), "v");
    assert_eq!(q::<i64>(&mut c, &["TTL", "g"]), -1);
    assert_eq!(q::<String>(&mut c, &["GETEX", "g", "EX", "100"]), "v");
    let ttl: i64 = q(&mut c, &["TTL", "g"]);
    assert!((99..=100).contains(&ttl), "{ttl}");
    assert_eq!(q::<String>(&mut c, &["GETEX", "g", "PX", "200000"]), "v");
    let pttl: i64 = q(&mut c, &["PTTL", "g"]);
    assert!(pttl > 100_000, "{pttl}");
    let at = (now_ms() / 1000 + 1000).to_string();
    assert_eq!(q::<String>(&mut c, &["GETEX", "g", "EXAT", &at]), "v");
    assert_eq!(q::<String>(&mut c, &["EXPIRETIME", "g"]), at);
    let pat = (now_ms() + 900_000).to_string();
    assert_eq!(q::<String>(&mut c, &["GETEX", "g", "PXAT", &pat]), "v");
    assert_eq!(q::<String>(&mut c, &["PEXPIRETIME", "g"]), pat);
    assert_eq!(q::<String>(&mut c, &["GETEX", "g", "PERSIST"]), "v");
    assert_eq!(q::<i64>(&mut c, &["TTL", "g"]), -1);
    assert_eq!(qerr(&mut c, &["GETEX", "g", "FOO"]), "ERR syntax error");
    assert_eq!(
        qerr(&mut c, &["GETEX", "g", "EX", "1", "PERSIST"]),
        "ERR syntax error"
    );
    assert_eq!(
        qerr(&mut c, &["GETEX", "g", "EX", "0"]),
        "ERR invalid expire time in 'getex' command"
    );
}

#[test]
fn mget_mset_msetnx() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(
        v(&mut c, &["MSET", "a", "1", "b", "2", "c", "3"]),
        Value::Okay
    );
    q::<i64>(&mut c, &["SADD", "set", "m"]);
    let got: Vec<Option<String>> = q(&mut c, &["MGET", "a", "missing", "b", "set", "c"]);
    assert_eq!(
        got,
        vec![
            Some("1".into()),
            None,
            Some("2".into()),
            None, // MGET reports non-strings as nil, never WRONGTYPE
            Some("3".into())
        ]
    );
    assert_eq!(
        qerr(&mut c, &["MSET", "a", "1", "b"]),
        "ERR wrong number of arguments for 'mset' command"
    );
    assert_eq!(
        qerr(&mut c, &["MSET", "a"]),
        "ERR wrong number of arguments for 'mset' command"
    );
    // MSETNX is all or nothing.
    assert_eq!(q::<i64>(&mut c, &["MSETNX", "x", "1", "a", "new"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "x"]), 0);
    assert_eq!(q::<String>(&mut c, &["GET", "a"]), "1");
    assert_eq!(q::<i64>(&mut c, &["MSETNX", "x", "1", "y", "2"]), 1);
    let got: Vec<String> = q(&mut c, &["MGET", "x", "y"]);
    assert_eq!(got, ["1", "2"]);
    assert_eq!(
        qerr(&mut c, &["MSETNX", "x", "1", "y"]),
        "ERR wrong number of arguments for 'msetnx' command"
    );
    // MSET clears TTLs of the keys it overwrites.
    q::<i64>(&mut c, &["EXPIRE", "a", "100"]);
    q::<()>(&mut c, &["MSET", "a", "9"]);
    assert_eq!(q::<i64>(&mut c, &["TTL", "a"]), -1);
}

#[test]
fn append_and_strlen() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "k"]), 0);
    assert_eq!(q::<i64>(&mut c, &["APPEND", "k", "Hello"]), 5);
    assert_eq!(q::<i64>(&mut c, &["APPEND", "k", " World"]), 11);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "Hello World");
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "k"]), 11);
    // APPEND keeps the TTL (it modifies, it does not replace).
    q::<i64>(&mut c, &["EXPIRE", "k", "100"]);
    q::<i64>(&mut c, &["APPEND", "k", "!"]);
    assert!(q::<i64>(&mut c, &["TTL", "k"]) > 0);
    // On a counter the decimal text is appended to.
    q::<i64>(&mut c, &["INCRBY", "n", "42"]);
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "n"]), 2);
    assert_eq!(q::<i64>(&mut c, &["APPEND", "n", "7"]), 3);
    assert_eq!(q::<String>(&mut c, &["GET", "n"]), "427");
    assert_eq!(q::<i64>(&mut c, &["INCR", "n"]), 428);
    q::<i64>(&mut c, &["HSET", "h", "f", "v"]);
    assert_eq!(
        qerr(&mut c, &["APPEND", "h", "x"]),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    assert_eq!(
        qerr(&mut c, &["STRLEN", "h"]),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
}

#[test]
fn getrange_like_redis_docs() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "mykey", "This is a string"]);
    let r = |c: &mut redis::Connection, a: &str, b: &str| -> String {
        q(c, &["GETRANGE", "mykey", a, b])
    };
    assert_eq!(r(&mut c, "0", "3"), "This");
    assert_eq!(r(&mut c, "-3", "-1"), "ing");
    assert_eq!(r(&mut c, "0", "-1"), "This is a string");
    assert_eq!(r(&mut c, "10", "100"), "string");
    assert_eq!(r(&mut c, "5", "3"), "");
    assert_eq!(r(&mut c, "-1", "-5"), "");
    assert_eq!(r(&mut c, "-100", "3"), "This");
    assert_eq!(q::<String>(&mut c, &["SUBSTR", "mykey", "0", "3"]), "This");
    assert_eq!(q::<String>(&mut c, &["GETRANGE", "missing", "0", "-1"]), "");
    assert_eq!(
        qerr(&mut c, &["GETRANGE", "mykey", "a", "1"]),
        "ERR value is not an integer or out of range"
    );
}

#[test]
fn setrange_patches_and_pads() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "key1", "Hello World"]);
    assert_eq!(q::<i64>(&mut c, &["SETRANGE", "key1", "6", "Redis"]), 11);
    assert_eq!(q::<String>(&mut c, &["GET", "key1"]), "Hello Redis");
    // Missing key: zero-padded up to the offset.
    assert_eq!(q::<i64>(&mut c, &["SETRANGE", "key2", "6", "Redis"]), 11);
    let got: Vec<u8> = q(&mut c, &["GET", "key2"]);
    assert_eq!(got, b"\0\0\0\0\0\0Redis");
    // An empty patch on a missing key creates nothing.
    assert_eq!(q::<i64>(&mut c, &["SETRANGE", "key3", "10", ""]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "key3"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SETRANGE", "key1", "0", ""]), 11);
    assert_eq!(
        qerr(&mut c, &["SETRANGE", "key1", "-1", "x"]),
        "ERR offset is out of range"
    );
    assert_eq!(
        qerr(&mut c, &["SETRANGE", "key1", "536870912", "x"]),
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    assert_eq!(q::<String>(&mut c, &["GET", "key1"]), "Hello Redis");
    q::<i64>(&mut c, &["SADD", "set", "m"]);
    assert_eq!(
        qerr(&mut c, &["SETRANGE", "set", "0", "x"]),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
}

#[test]
fn arity_errors_name_the_command() {
    let s = Server::start();
    let mut c = s.conn();
    for (args, name) in [
        (&["GET"][..], "get"),
        (&["GET", "a", "b"], "get"),
        (&["SET", "k"], "set"),
        (&["SETNX", "k"], "setnx"),
        (&["GETSET", "k"], "getset"),
        (&["GETDEL"], "getdel"),
        (&["GETEX"], "getex"),
        (&["MGET"], "mget"),
        (&["APPEND", "k"], "append"),
        (&["STRLEN"], "strlen"),
        (&["GETRANGE", "k", "0"], "getrange"),
        (&["SETRANGE", "k", "0"], "setrange"),
        (&["PSETEX", "k", "1"], "psetex"),
    ] {
        assert_eq!(
            qerr(&mut c, args),
            format!("ERR wrong number of arguments for '{name}' command"),
            "{args:?}"
        );
    }
}

/// The same script against redis-server: every reply must match byte for byte.
#[test]
fn string_replies_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["SET", "k", "v"],
            &["GET", "k"],
            &["SET", "k", "w", "NX"],
            &["SET", "k", "w", "XX", "GET"],
            &["SET", "k", "w", "NX", "XX"],
            &["SET", "k", "v", "EX", "0"],
            &["SET", "k", "v", "PX", "abc"],
            &["SETNX", "k", "z"],
            &["GETSET", "k", "1"],
            &["GETDEL", "k"],
            &["GETDEL", "k"],
            &["GETEX", "nope"],
            &["GETEX", "nope", "BAD"],
            &["MSET", "a", "1", "b", "2"],
            &["MSET", "a", "1", "b"],
            &["MGET", "a", "b", "zz"],
            &["MSETNX", "a", "1", "c", "2"],
            &["MSETNX", "c", "1", "d", "2"],
            &["APPEND", "a", "23"],
            &["STRLEN", "a"],
            &["GETRANGE", "a", "0", "1"],
            &["GETRANGE", "a", "-2", "-1"],
            &["GETRANGE", "a", "2", "1"],
            &["SETRANGE", "a", "5", "xy"],
            &["GET", "a"],
            &["SETRANGE", "a", "-1", "xy"],
            &["SETEX", "e", "0", "v"],
            &["PSETEX", "e", "x", "v"],
            &["SADD", "s", "m"],
            &["GET", "s"],
            &["APPEND", "s", "x"],
            &["SET", "s", "v", "GET"],
            &["GET"],
            &["SET", "k"],
        ],
    );
}
