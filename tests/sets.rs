//! Set commands: SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP SRANDMEMBER SINTER SUNION
//! SDIFF (keys sharing a hash tag), RESP3 set replies, WRONGTYPE and arity errors.

mod common;

use common::*;
use std::collections::HashSet;

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

fn members(c: &mut redis::Connection, key: &str) -> Vec<String> {
    sorted(q(c, &["SMEMBERS", key]))
}

#[test]
fn sadd_srem_smembers_scard() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["SADD", "s", "a", "b", "c", "a"]), 3);
    assert_eq!(q::<i64>(&mut c, &["SADD", "s", "b", "d"]), 1);
    assert_eq!(members(&mut c, "s"), ["a", "b", "c", "d"]);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "s"]), 4);
    assert_eq!(q::<i64>(&mut c, &["SREM", "s", "a", "zz", "b"]), 2);
    assert_eq!(members(&mut c, "s"), ["c", "d"]);
    assert_eq!(q::<i64>(&mut c, &["SREM", "missing", "a"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "missing"]), 0);
    assert_eq!(members(&mut c, "missing"), Vec::<String>::new());
    assert_eq!(q::<String>(&mut c, &["TYPE", "s"]), "set");
    // Removing the last member removes the key.
    assert_eq!(q::<i64>(&mut c, &["SREM", "s", "c", "d"]), 2);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "s"]), 0);
    assert_eq!(q::<String>(&mut c, &["TYPE", "s"]), "none");
    // Binary and empty members.
    let _: i64 = redis::cmd("SADD")
        .arg("b")
        .arg(&b"\0\xff"[..])
        .arg("")
        .query(&mut c)
        .unwrap();
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "b", ""]), 1);
    let yes: i64 = redis::cmd("SISMEMBER")
        .arg("b")
        .arg(&b"\0\xff"[..])
        .query(&mut c)
        .unwrap();
    assert_eq!(yes, 1);
}

#[test]
fn sismember_and_smismember() {
    let s = Server::start();
    let mut c = s.conn();
    q::<i64>(&mut c, &["SADD", "s", "one", "two"]);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "s", "one"]), 1);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "s", "three"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "missing", "one"]), 0);
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["SMISMEMBER", "s", "one", "three", "two"]),
        [1, 0, 1]
    );
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["SMISMEMBER", "missing", "a", "b"]),
        [0, 0]
    );
    assert_eq!(
        qerr(&mut c, &["SMISMEMBER", "s"]),
        "ERR wrong number of arguments for 'smismember' command"
    );
}

#[test]
fn spop_removes_what_it_returns() {
    let s = Server::start();
    let mut c = s.conn();
    let all: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let mut args = vec!["SADD", "s"];
    args.extend(all.iter().map(String::as_str));
    q::<i64>(&mut c, &args);

    let one: String = q(&mut c, &["SPOP", "s"]);
    assert!(all.contains(&one));
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "s", &one]), 0);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "s"]), 19);

    let five: Vec<String> = q(&mut c, &["SPOP", "s", "5"]);
    assert_eq!(five.len(), 5);
    assert_eq!(five.iter().collect::<HashSet<_>>().len(), 5, "distinct");
    for m in &five {
        assert!(all.contains(m) && *m != one);
        assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "s", m]), 0);
    }
    assert_eq!(q::<i64>(&mut c, &["SCARD", "s"]), 14);
    assert_eq!(q::<Vec<String>>(&mut c, &["SPOP", "s", "0"]).len(), 0);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "s"]), 14);

    // More than the set holds: everything, and the key is gone.
    let rest: Vec<String> = q(&mut c, &["SPOP", "s", "100"]);
    assert_eq!(rest.len(), 14);
    let mut seen: HashSet<String> = rest.into_iter().collect();
    seen.extend(five);
    seen.insert(one);
    assert_eq!(seen, all.into_iter().collect());
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "s"]), 0);

    assert_eq!(v(&mut c, &["SPOP", "s"]), redis::Value::Nil);
    assert_eq!(q::<Vec<String>>(&mut c, &["SPOP", "s", "3"]).len(), 0);
    assert_eq!(
        qerr(&mut c, &["SPOP", "s", "-1"]),
        "ERR value is out of range, must be positive"
    );
    assert_eq!(
        qerr(&mut c, &["SPOP", "s", "x"]),
        "ERR value is out of range, must be positive"
    );
    assert_eq!(qerr(&mut c, &["SPOP", "s", "1", "2"]), "ERR syntax error");
}

#[test]
fn srandmember_counts() {
    let s = Server::start();
    let mut c = s.conn();
    q::<i64>(&mut c, &["SADD", "s", "a", "b", "c", "d", "e"]);
    let all: HashSet<String> = ["a", "b", "c", "d", "e"].map(String::from).into();

    let one: String = q(&mut c, &["SRANDMEMBER", "s"]);
    assert!(all.contains(&one));
    // Positive count: distinct members, at most the cardinality.
    let three: Vec<String> = q(&mut c, &["SRANDMEMBER", "s", "3"]);
    assert_eq!(three.len(), 3);
    assert_eq!(three.iter().collect::<HashSet<_>>().len(), 3);
    assert!(three.iter().all(|m| all.contains(m)));
    let many: Vec<String> = q(&mut c, &["SRANDMEMBER", "s", "50"]);
    assert_eq!(many.into_iter().collect::<HashSet<_>>(), all);
    // Negative count: exactly |count| members, repeats allowed.
    let reps: Vec<String> = q(&mut c, &["SRANDMEMBER", "s", "-12"]);
    assert_eq!(reps.len(), 12);
    assert!(reps.iter().all(|m| all.contains(m)));
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SRANDMEMBER", "s", "0"]).len(),
        0
    );
    // Nothing removed.
    assert_eq!(q::<i64>(&mut c, &["SCARD", "s"]), 5);

    assert_eq!(v(&mut c, &["SRANDMEMBER", "missing"]), redis::Value::Nil);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SRANDMEMBER", "missing", "5"]).len(),
        0
    );
    assert_eq!(
        qerr(&mut c, &["SRANDMEMBER", "s", "x"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        qerr(&mut c, &["SRANDMEMBER", "s", "1", "2"]),
        "ERR syntax error"
    );
}

#[test]
fn sinter_sunion_sdiff_with_hash_tags() {
    let s = Server::start();
    let mut c = s.conn();
    q::<i64>(&mut c, &["SADD", "{t}a", "1", "2", "3", "4"]);
    q::<i64>(&mut c, &["SADD", "{t}b", "3", "4", "5"]);
    q::<i64>(&mut c, &["SADD", "{t}c", "4", "6"]);
    assert_eq!(sorted(q(&mut c, &["SINTER", "{t}a", "{t}b"])), ["3", "4"]);
    assert_eq!(
        sorted(q(&mut c, &["SINTER", "{t}a", "{t}b", "{t}c"])),
        ["4"]
    );
    assert_eq!(
        sorted(q(&mut c, &["SUNION", "{t}a", "{t}b", "{t}c"])),
        ["1", "2", "3", "4", "5", "6"]
    );
    assert_eq!(sorted(q(&mut c, &["SDIFF", "{t}a", "{t}b"])), ["1", "2"]);
    assert_eq!(
        sorted(q(&mut c, &["SDIFF", "{t}a", "{t}b", "{t}c"])),
        ["1", "2"]
    );
    assert_eq!(sorted(q(&mut c, &["SDIFF", "{t}b", "{t}a"])), ["5"]);
    // A single key: the set itself.
    assert_eq!(sorted(q(&mut c, &["SINTER", "{t}a"])), ["1", "2", "3", "4"]);
    // Missing keys are empty sets.
    assert!(q::<Vec<String>>(&mut c, &["SINTER", "{t}a", "{t}none"]).is_empty());
    assert_eq!(
        sorted(q(&mut c, &["SUNION", "{t}none", "{t}c"])),
        ["4", "6"]
    );
    assert_eq!(
        sorted(q(&mut c, &["SDIFF", "{t}a", "{t}none"])),
        ["1", "2", "3", "4"]
    );
    assert!(q::<Vec<String>>(&mut c, &["SDIFF", "{t}none", "{t}a"]).is_empty());
    // Any non-set key is WRONGTYPE, even next to a missing key (Redis 7).
    q::<()>(&mut c, &["SET", "{t}str", "x"]);
    for cmd_name in ["SINTER", "SUNION", "SDIFF"] {
        assert_eq!(
            qerr(&mut c, &[cmd_name, "{t}a", "{t}str"]),
            WRONGTYPE,
            "{cmd_name}"
        );
    }
    assert_eq!(qerr(&mut c, &["SINTER", "{t}none", "{t}str"]), WRONGTYPE);
    assert_eq!(
        qerr(&mut c, &["SUNION"]),
        "ERR wrong number of arguments for 'sunion' command"
    );
}

#[test]
fn set_commands_on_other_types_are_wrongtype() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "str", "x"]);
    q::<i64>(&mut c, &["HSET", "h", "f", "v"]);
    for key in ["str", "h"] {
        for args in [
            vec!["SADD", key, "m"],
            vec!["SREM", key, "m"],
            vec!["SMEMBERS", key],
            vec!["SISMEMBER", key, "m"],
            vec!["SMISMEMBER", key, "m"],
            vec!["SCARD", key],
            vec!["SPOP", key],
            vec!["SRANDMEMBER", key],
        ] {
            assert_eq!(qerr(&mut c, &args), WRONGTYPE, "{args:?}");
        }
    }
    assert_eq!(q::<String>(&mut c, &["GET", "str"]), "x");
    for (args, name) in [
        (&["SADD", "s"][..], "sadd"),
        (&["SREM", "s"], "srem"),
        (&["SMEMBERS"], "smembers"),
        (&["SISMEMBER", "s"], "sismember"),
        (&["SCARD"], "scard"),
        (&["SPOP"], "spop"),
        (&["SRANDMEMBER"], "srandmember"),
        (&["SINTER"], "sinter"),
        (&["SDIFF"], "sdiff"),
    ] {
        assert_eq!(
            qerr(&mut c, args),
            format!("ERR wrong number of arguments for '{name}' command")
        );
    }
}

#[test]
fn resp3_set_replies_are_sets() {
    let s = Server::start();
    let mut raw = s.raw();
    assert!(matches!(raw.cmd(&["HELLO", "3"]), Resp::Map(_)));
    assert_eq!(raw.cmd(&["SADD", "s", "x", "y"]), Resp::Int(2));
    match raw.cmd(&["SMEMBERS", "s"]) {
        Resp::Set(items) => {
            let mut got: Vec<String> = items.iter().map(Resp::text).collect();
            got.sort();
            assert_eq!(got, ["x", "y"]);
        }
        other => panic!("SMEMBERS under RESP3 should be a set (~), got {other:?}"),
    }
    assert!(matches!(raw.cmd(&["SUNION", "s"]), Resp::Set(_)));
    assert_eq!(raw.cmd(&["SPOP", "missing"]), Resp::Null);
    // And a real RESP3 client library decodes them.
    let mut c = s.conn_resp3();
    assert_eq!(sorted(q(&mut c, &["SMEMBERS", "s"])), ["x", "y"]);
}

#[test]
fn set_replies_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["SADD", "s", "a", "b", "c", "a"],
            &["SADD", "s", "c"],
            &["SMEMBERS", "s"],
            &["SISMEMBER", "s", "a"],
            &["SMISMEMBER", "s", "a", "x"],
            &["SCARD", "s"],
            &["SREM", "s", "a", "x"],
            &["SADD", "{t}1", "1", "2", "3"],
            &["SADD", "{t}2", "2", "3", "4"],
            &["SINTER", "{t}1", "{t}2"],
            &["SUNION", "{t}1", "{t}2"],
            &["SDIFF", "{t}1", "{t}2"],
            &["SINTER", "{t}1", "{t}none"],
            &["SPOP", "none"],
            &["SPOP", "none", "2"],
            &["SPOP", "s", "-1"],
            &["SRANDMEMBER", "none"],
            &["SRANDMEMBER", "none", "-3"],
            &["SRANDMEMBER", "s", "x"],
            &["SET", "str", "v"],
            &["SADD", "str", "m"],
            &["SINTER", "none", "str"],
            &["SREM", "s", "b", "c"],
            &["EXISTS", "s"],
        ],
    );
}

/// Hostile counts: a positive count past the set answers the set, and SPOP pops it all; a
/// negative count's reply is bounded (Redis would build a reply of any size): past a
/// million members, or 256 MiB, it is refused with a clear error, and LONG_MIN is Redis'
/// "out of range". No allocation follows the count before it is checked.
#[test]
fn srandmember_and_spop_with_huge_counts() {
    let mut s = Server::start();
    let mut c = s.conn();
    q::<i64>(&mut c, &["SADD", "s", "a", "b", "c"]);
    let huge = i64::MAX.to_string();
    let all: Vec<String> = sorted(q(&mut c, &["SRANDMEMBER", "s", &huge]));
    assert_eq!(all, ["a", "b", "c"]);
    assert_eq!(
        qerr(&mut c, &["SRANDMEMBER", "s", &i64::MIN.to_string()]),
        "ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807"
    );
    for count in ["-100000000000", &(-i64::MAX).to_string(), "-1048577"] {
        let e = qerr(&mut c, &["SRANDMEMBER", "s", count]);
        assert!(
            e.starts_with("ERR value is out of range, the reply would be too large"),
            "{e}"
        );
    }
    s.assert_alive();
    // At the member bound, repeats allowed.
    let most: Vec<String> = q(&mut c, &["SRANDMEMBER", "s", "-1048576"]);
    assert_eq!(most.len(), 1 << 20);
    // Large members: the byte bound.
    let big = "x".repeat(512 * 1024);
    q::<i64>(&mut c, &["SADD", "big", &big]);
    let e = qerr(&mut c, &["SRANDMEMBER", "big", "-1000"]);
    assert!(
        e.starts_with("ERR value is out of range, the reply would be too large"),
        "{e}"
    );
    let under: Vec<String> = q(&mut c, &["SRANDMEMBER", "big", "-100"]);
    assert_eq!(under.len(), 100);
    assert_eq!(
        qerr(&mut c, &["SPOP", "s", "-1"]),
        "ERR value is out of range, must be positive"
    );
    let popped: Vec<String> = sorted(q(&mut c, &["SPOP", "s", &huge]));
    assert_eq!(popped, ["a", "b", "c"]);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "s"]), 0);
}

/// Members hash with a seed each process draws from the OS: the same members added in the
/// same order come back from SMEMBERS in a different order on two servers (with a fixed
/// seed they came back identical, and a client could choose members that collide).
#[test]
fn member_hashing_is_seeded_per_process() {
    let order = || {
        let s = Server::start();
        let mut c = s.conn();
        let members: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
        let mut args = vec!["SADD", "s"];
        args.extend(members.iter().map(String::as_str));
        q::<i64>(&mut c, &args);
        q::<Vec<String>>(&mut c, &["SMEMBERS", "s"])
    };
    assert_ne!(order(), order());
}
