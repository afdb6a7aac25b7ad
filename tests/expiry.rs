//! TTL expiry: lazy (an expired key is never served and is reclaimed on access) and active
//! (the background cycle reclaims keys nobody touches: DBSIZE reaches 0, INFO expired_keys
//! counts them). Every wait is on a condition with a generous deadline, never a bare sleep.

mod common;

use common::*;

/// Wait until the local clock (the server's clock: same host) is past `deadline_ms`.
fn wait_past(deadline_ms: i64) {
    wait_until(WAIT_TIMEOUT, "the key's deadline passes", || {
        now_ms() > deadline_ms + 1
    });
}

fn deadline(c: &mut redis::Connection, key: &str) -> i64 {
    let d: i64 = q(c, &["PEXPIRETIME", key]);
    assert!(d > 0, "{key} has no deadline ({d})");
    d
}

#[test]
fn lazy_expiry_on_access() {
    // hz 1: the active cycle runs rarely, so right after the deadline the key is usually
    // still in the table and only the lazy check stands between it and the client.
    let s = Server::start_with(&["--hz", "1"]);
    let mut c = s.conn();
    let mut proved_lazy = false;
    for attempt in 0..5 {
        let key = format!("lazy:{attempt}");
        q::<()>(&mut c, &["SET", &key, "v", "PX", "300"]);
        assert_eq!(
            q::<String>(&mut c, &["GET", &key]),
            "v",
            "alive before its deadline"
        );
        let d = deadline(&mut c, &key);
        wait_past(d);
        let expired_before = info_u64(&mut c, "expired_keys");
        let still_in_table = q::<i64>(&mut c, &["DBSIZE"]) == 1;
        // Never served once the deadline passed, however the key is reclaimed.
        assert_eq!(v(&mut c, &["GET", &key]), redis::Value::Nil);
        assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 0);
        if still_in_table {
            // The GET itself reclaimed it and counted the expiry.
            assert_eq!(info_u64(&mut c, "expired_keys"), expired_before + 1);
            proved_lazy = true;
            break;
        }
    }
    assert!(
        proved_lazy,
        "active expiry always won the race; lazy path never exercised"
    );
}

#[test]
fn expired_keys_are_invisible_to_every_command() {
    let s = Server::start_with(&["--hz", "1"]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "str", "10", "PX", "300"]);
    q::<i64>(&mut c, &["SADD", "set", "a", "b"]);
    q::<i64>(&mut c, &["PEXPIRE", "set", "300"]);
    q::<i64>(&mut c, &["HSET", "hash", "f", "v"]);
    q::<i64>(&mut c, &["PEXPIRE", "hash", "300"]);
    let d = deadline(&mut c, "str")
        .max(deadline(&mut c, "set"))
        .max(deadline(&mut c, "hash"));
    wait_past(d);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "str", "set", "hash"]), 0);
    assert_eq!(q::<i64>(&mut c, &["TTL", "str"]), -2);
    assert_eq!(q::<String>(&mut c, &["TYPE", "set"]), "none");
    assert!(q::<Vec<String>>(&mut c, &["SMEMBERS", "set"]).is_empty());
    assert!(q::<Vec<String>>(&mut c, &["HGETALL", "hash"]).is_empty());
    assert!(q::<Vec<String>>(&mut c, &["KEYS", "*"]).is_empty());
    let (_, scanned): (String, Vec<String>) = q(&mut c, &["SCAN", "0", "COUNT", "100000"]);
    assert!(scanned.is_empty(), "SCAN returned expired keys {scanned:?}");
    // Writes start from nothing, not from the expired value.
    q::<()>(&mut c, &["SET", "ctr", "10", "PX", "300"]);
    q::<i64>(&mut c, &["SADD", "s2", "old"]);
    q::<i64>(&mut c, &["PEXPIRE", "s2", "300"]);
    let d = deadline(&mut c, "ctr").max(deadline(&mut c, "s2"));
    wait_past(d);
    assert_eq!(q::<i64>(&mut c, &["INCR", "ctr"]), 1);
    assert_eq!(
        q::<i64>(&mut c, &["TTL", "ctr"]),
        -1,
        "the new key has no TTL"
    );
    assert_eq!(q::<i64>(&mut c, &["SADD", "s2", "new"]), 1);
    assert_eq!(q::<Vec<String>>(&mut c, &["SMEMBERS", "s2"]), ["new"]);
    q::<()>(&mut c, &["SET", "nx", "v", "PX", "300"]);
    let d = deadline(&mut c, "nx");
    wait_past(d);
    assert_eq!(q::<i64>(&mut c, &["SETNX", "nx", "again"]), 1);
}

#[test]
fn active_expiry_reclaims_untouched_keys() {
    let s = Server::start();
    let mut c = s.conn();
    let mut p = redis::pipe();
    for i in 0..300 {
        // Spread deadlines a little; none of these keys is ever read again.
        p.cmd("SET")
            .arg(format!("vol:{i}"))
            .arg("v")
            .arg("PX")
            .arg(200 + i)
            .ignore();
    }
    for i in 0..10 {
        p.cmd("SET").arg(format!("keep:{i}")).arg("v").ignore();
    }
    let _: () = p.query(&mut c).unwrap();
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 310);
    let ks: String = q(&mut c, &["INFO", "keyspace"]);
    assert!(ks.contains("db0:keys=310,expires=300,"), "{ks}");
    // DBSIZE and INFO never touch keys, so only the background cycle can shrink this.
    wait_until(
        WAIT_TIMEOUT,
        "active expiry reclaims all 300 volatile keys",
        || q::<i64>(&mut c, &["DBSIZE"]) == 10,
    );
    assert_eq!(info_u64(&mut c, "expired_keys"), 300);
    let ks: String = q(&mut c, &["INFO", "keyspace"]);
    assert!(ks.contains("db0:keys=10,expires=0,"), "{ks}");
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "keep:0", "keep:9"]), 2);
}

#[test]
fn active_expiry_empties_the_keyspace() {
    let s = Server::start();
    let mut c = s.conn();
    let mut p = redis::pipe();
    for i in 0..200 {
        p.cmd("SET")
            .arg(format!("k:{i}"))
            .arg("v")
            .arg("PX")
            .arg(250)
            .ignore();
        p.cmd("SADD").arg(format!("s:{i}")).arg("m").ignore();
        p.cmd("PEXPIRE").arg(format!("s:{i}")).arg(250).ignore();
    }
    let _: () = p.query(&mut c).unwrap();
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 400);
    wait_until(
        WAIT_TIMEOUT,
        "DBSIZE reaches 0 without any key being read",
        || q::<i64>(&mut c, &["DBSIZE"]) == 0,
    );
    assert_eq!(info_u64(&mut c, "expired_keys"), 400);
}

#[test]
fn persist_and_overwrites_cancel_expiry() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "persisted", "v", "PX", "300"]);
    q::<()>(&mut c, &["SET", "overwritten", "v", "PX", "300"]);
    q::<()>(&mut c, &["SET", "extended", "v", "PX", "300"]);
    q::<()>(&mut c, &["SET", "kept", "v", "PX", "300"]);
    q::<()>(&mut c, &["SET", "getex", "v", "PX", "300"]);
    let d = ["persisted", "overwritten", "extended", "kept", "getex"]
        .iter()
        .map(|k| deadline(&mut c, k))
        .max()
        .unwrap();
    assert_eq!(q::<i64>(&mut c, &["PERSIST", "persisted"]), 1);
    q::<()>(&mut c, &["SET", "overwritten", "v2"]);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "extended", "600000"]), 1);
    q::<()>(&mut c, &["SET", "kept", "v2", "KEEPTTL"]);
    q::<String>(&mut c, &["GETEX", "getex", "PERSIST"]);
    wait_past(d);
    // Give the active cycle a chance to (wrongly) reclaim them: wait until it has
    // reclaimed an unrelated key that expired after `d`.
    q::<()>(&mut c, &["SET", "probe", "v", "PX", "50"]);
    wait_until(
        WAIT_TIMEOUT,
        "the active cycle reclaims the probe key",
        || q::<i64>(&mut c, &["DBSIZE"]) == 4,
    );
    assert_eq!(q::<String>(&mut c, &["GET", "persisted"]), "v");
    assert_eq!(q::<String>(&mut c, &["GET", "overwritten"]), "v2");
    assert_eq!(q::<String>(&mut c, &["GET", "extended"]), "v");
    assert_eq!(q::<String>(&mut c, &["GET", "getex"]), "v");
    assert_eq!(
        v(&mut c, &["GET", "kept"]),
        redis::Value::Nil,
        "KEEPTTL kept the deadline"
    );
}
