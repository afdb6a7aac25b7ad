//! Lists: every reply compared with a real redis-server's, byte for byte (RESP2 and RESP3),
//! and the blocking commands through the `redis` crate — woken by pushes, first come first
//! served, timing out, inside MULTI, and released when the client leaves.

mod common;

use common::{assert_same_as_redis, info_u64, q, qerr, wait_until, Server};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn list_replies_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["RPUSH", "l", "a", "b", "c"],
            &["LPUSH", "l", "z", "y"],
            &["LRANGE", "l", "0", "-1"],
            &["LLEN", "l"],
            &["LLEN", "nokey"],
            &["LINDEX", "l", "0"],
            &["LINDEX", "l", "-1"],
            &["LINDEX", "l", "100"],
            &["LINDEX", "l", "-100"],
            &["LINDEX", "l", "x"],
            &["LRANGE", "l", "1", "2"],
            &["LRANGE", "l", "-2", "100"],
            &["LRANGE", "l", "3", "1"],
            &["LRANGE", "l", "a", "1"],
            &["LRANGE", "l", "-9223372036854775808", "9223372036854775807"],
            &["LRANGE", "nokey", "0", "-1"],
            &["LPUSHX", "nokey", "a"],
            &["RPUSHX", "l", "d", "e"],
            &["EXISTS", "nokey"],
            &["LSET", "l", "1", "Y"],
            &["LSET", "l", "-1", "E"],
            &["LSET", "l", "100", "v"],
            &["LSET", "nokey", "0", "v"],
            &["LSET", "l", "x", "v"],
            &["LRANGE", "l", "0", "-1"],
            &["LINSERT", "l", "BEFORE", "a", "a0"],
            &["LINSERT", "l", "after", "a", "a1"],
            &["LINSERT", "l", "AFTER", "E", "tail"],
            &["LINSERT", "l", "BEFORE", "missing", "x"],
            &["LINSERT", "l", "MIDDLE", "a", "x"],
            &["LINSERT", "nokey", "BEFORE", "a", "x"],
            &["LRANGE", "l", "0", "-1"],
            &["RPUSH", "r", "x", "a", "x", "b", "x", "c", "x"],
            &["LREM", "r", "2", "x"],
            &["LRANGE", "r", "0", "-1"],
            &["LREM", "r", "-1", "x"],
            &["LRANGE", "r", "0", "-1"],
            &["LREM", "r", "0", "x"],
            &["LREM", "r", "0", "nothing"],
            &["LREM", "r", "a", "x"],
            &["LREM", "nokey", "1", "x"],
            &["LRANGE", "r", "0", "-1"],
            &["RPUSH", "t", "1", "2", "3", "4", "5", "6"],
            &["LTRIM", "t", "1", "-2"],
            &["LRANGE", "t", "0", "-1"],
            &["LTRIM", "t", "0", "0"],
            &["LRANGE", "t", "0", "-1"],
            &["LTRIM", "t", "5", "1"],
            &["EXISTS", "t"],
            &["LTRIM", "nokey", "0", "1"],
            &["LTRIM", "l", "x", "1"],
            &["RPUSH", "p", "a", "b", "c", "b", "a", "b"],
            &["LPOS", "p", "b"],
            &["LPOS", "p", "b", "RANK", "2"],
            &["LPOS", "p", "b", "RANK", "-1"],
            &["LPOS", "p", "b", "RANK", "-2", "COUNT", "0"],
            &["LPOS", "p", "b", "COUNT", "0"],
            &["LPOS", "p", "b", "COUNT", "2"],
            &["LPOS", "p", "b", "COUNT", "0", "MAXLEN", "3"],
            &["LPOS", "p", "b", "RANK", "-1", "MAXLEN", "2"],
            &["LPOS", "p", "zz"],
            &["LPOS", "p", "zz", "COUNT", "1"],
            &["LPOS", "nokey", "a"],
            &["LPOS", "nokey", "a", "COUNT", "1"],
            &["LPOS", "p", "b", "RANK", "0"],
            &["LPOS", "p", "b", "COUNT", "-1"],
            &["LPOS", "p", "b", "MAXLEN", "-1"],
            &["LPOS", "p", "b", "RANK", "x"],
            &["LPOS", "p", "b", "FOO", "1"],
            &["LPOS", "p", "b", "RANK"],
            &["LPOP", "p"],
            &["RPOP", "p"],
            &["LPOP", "p", "2"],
            &["RPOP", "p", "0"],
            &["RPOP", "p", "10"],
            &["EXISTS", "p"],
            &["LPOP", "p"],
            &["LPOP", "p", "1"],
            &["LPOP", "p", "-1"],
            &["LPOP", "p", "x"],
            &["LPOP", "p", "1", "2"],
            &["RPUSH", "src", "1", "2", "3"],
            &["LMOVE", "src", "dst", "LEFT", "RIGHT"],
            &["LMOVE", "src", "dst", "RIGHT", "LEFT"],
            &["LMOVE", "src", "src", "LEFT", "RIGHT"],
            &["LRANGE", "src", "0", "-1"],
            &["LRANGE", "dst", "0", "-1"],
            &["LMOVE", "src", "dst", "UP", "LEFT"],
            &["LMOVE", "nokey", "dst", "LEFT", "LEFT"],
            &["RPOPLPUSH", "src", "dst"],
            &["RPOPLPUSH", "nokey", "dst"],
            &["LRANGE", "dst", "0", "-1"],
            &["LMPOP", "2", "nokey", "dst", "LEFT"],
            &["LMPOP", "2", "nokey", "dst", "RIGHT", "COUNT", "10"],
            &["LMPOP", "1", "nokey", "LEFT"],
            &["LMPOP", "0", "dst", "LEFT"],
            &["LMPOP", "x", "dst", "LEFT"],
            &["LMPOP", "2", "dst", "LEFT"],
            &["LMPOP", "1", "dst", "MIDDLE"],
            &["LMPOP", "1", "dst", "LEFT", "COUNT", "0"],
            &["LMPOP", "1", "dst", "LEFT", "COUNT", "1", "COUNT", "1"],
            &["SET", "str", "v"],
            &["LPUSH", "str", "a"],
            &["RPUSHX", "str", "a"],
            &["LPOP", "str"],
            &["LLEN", "str"],
            &["LRANGE", "str", "0", "1"],
            &["LINDEX", "str", "0"],
            &["LSET", "str", "0", "v"],
            &["LINSERT", "str", "BEFORE", "a", "b"],
            &["LREM", "str", "0", "a"],
            &["LTRIM", "str", "0", "1"],
            &["LPOS", "str", "a"],
            &["RPUSH", "ok", "v"],
            &["LMOVE", "str", "ok", "LEFT", "LEFT"],
            &["LMOVE", "ok", "str", "LEFT", "LEFT"],
            &["LRANGE", "ok", "0", "-1"],
            &["LMPOP", "2", "ok", "str", "LEFT"],
            &["LMPOP", "1", "str", "LEFT"],
            &["RPUSH", "ty", "a"],
            &["TYPE", "ty"],
            &["BLPOP", "ty", "0"],
            &["BLPOP", "nokey", "ty", "0.01"],
            &["RPUSH", "ty", "a", "b"],
            &["BRPOP", "nokey", "ty", "0"],
            &["BLMOVE", "ty", "ty2", "LEFT", "RIGHT", "0"],
            &["BRPOPLPUSH", "ty2", "ty", "0"],
            &["BLMPOP", "0", "2", "nokey", "ty", "LEFT", "COUNT", "5"],
            &["BLPOP", "nokey", "-1"],
            &["BLPOP", "nokey", "x"],
            &["BLPOP", "nokey", "1e100"],
            &["BLMPOP", "-1", "1", "nokey", "LEFT"],
            &["BLMPOP", "0", "0", "nokey", "LEFT"],
            &["BLPOP", "str", "0"],
            &["BLMOVE", "nokey", "x", "UP", "LEFT", "0"],
            &["LPUSH", "l"],
            &["BLPOP", "l"],
            &["MULTI"],
            &["BLPOP", "nokey", "0"],
            &["BRPOPLPUSH", "nokey", "x", "0"],
            &["BLMPOP", "0", "1", "nokey", "LEFT"],
            &["EXEC"],
            &["RPUSH", "d", "a", "b"],
            &["COPY", "d", "d2"],
            &["LRANGE", "d2", "0", "-1"],
            &["DEL", "d"],
            &["LRANGE", "d", "0", "-1"],
        ],
    );
}

#[test]
fn list_replies_match_redis_server_in_resp3() {
    let s = Server::start();
    let Some(reference) = common::RedisRef::start() else {
        return;
    };
    let (mut ours, mut theirs) = (s.raw(), reference.raw());
    // HELLO's own reply names the server: not compared.
    ours.cmd(&["HELLO", "3"]);
    theirs.cmd(&["HELLO", "3"]);
    let script: &[&[&str]] = &[
        &["RPUSH", "l", "a", "b"],
        &["LPOP", "nokey"],
        &["LPOP", "nokey", "2"],
        &["LMPOP", "1", "nokey", "LEFT"],
        &["LMPOP", "1", "l", "LEFT"],
        &["LPOS", "l", "b"],
        &["LPOS", "nokey", "b"],
        &["BLPOP", "nokey", "0.01"],
        &["BLMOVE", "nokey", "x", "LEFT", "LEFT", "0.01"],
    ];
    for args in script {
        assert_eq!(
            ours.cmd(args),
            theirs.cmd(args),
            "reply to {args:?} differs"
        );
    }
}

/// `OBJECT ENCODING` answers as Redis 7.2 (the version meridian reports): `listpack` while
/// the list fits `list-max-listpack-size`, `quicklist` beyond.
#[test]
fn object_encoding_follows_list_max_listpack_size() {
    let s = Server::start();
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["RPUSH", "small", "a", "b", "c"]);
    let enc: String = q(&mut c, &["OBJECT", "ENCODING", "small"]);
    assert_eq!(enc, "listpack");
    let big = "x".repeat(9000);
    let _: i64 = q(&mut c, &["RPUSH", "big", &big]);
    let enc: String = q(&mut c, &["OBJECT", "ENCODING", "big"]);
    assert_eq!(enc, "quicklist", "past 8 kB (the default -2)");
    let _: () = q(&mut c, &["CONFIG", "SET", "list-max-listpack-size", "2"]);
    let enc: String = q(&mut c, &["OBJECT", "ENCODING", "small"]);
    assert_eq!(enc, "quicklist", "more entries than a positive size allows");
    let t: String = q(&mut c, &["TYPE", "small"]);
    assert_eq!(t, "list");
    let n: i64 = q(&mut c, &["MEMORY", "USAGE", "small"]);
    assert!(n > 0);
}

/// Long lists: pushes at both ends, index reads and writes in the middle and at the ends,
/// trims, against a model.
#[test]
fn long_lists_follow_a_model() {
    let s = Server::start();
    let mut c = s.conn();
    let mut model: std::collections::VecDeque<String> = Default::default();
    for i in 0..3000 {
        let v = format!("v{i}");
        if i % 3 == 0 {
            let _: i64 = q(&mut c, &["LPUSH", "big", &v]);
            model.push_front(v);
        } else {
            let _: i64 = q(&mut c, &["RPUSH", "big", &v]);
            model.push_back(v);
        }
    }
    for i in [0usize, 1, 17, 1499, 1500, 2998, 2999] {
        let got: String = q(&mut c, &["LINDEX", "big", &i.to_string()]);
        assert_eq!(got, model[i]);
        let _: () = q(&mut c, &["LSET", "big", &i.to_string(), &format!("set{i}")]);
        model[i] = format!("set{i}");
    }
    let _: i64 = q(&mut c, &["LINSERT", "big", "BEFORE", "set1500", "ins"]);
    model.insert(1500, "ins".into());
    let _: () = q(&mut c, &["LTRIM", "big", "100", "-101"]);
    let model: Vec<String> = model.into_iter().skip(100).collect();
    let model: Vec<String> = model[..model.len() - 100].to_vec();
    let got: Vec<String> = q(&mut c, &["LRANGE", "big", "0", "-1"]);
    assert_eq!(got, model);
    let popped: Vec<String> = q(&mut c, &["RPOP", "big", "1000"]);
    let mut expect: Vec<String> = model[model.len() - 1000..].to_vec();
    expect.reverse();
    assert_eq!(popped, expect);
    let n: i64 = q(&mut c, &["LLEN", "big"]);
    assert_eq!(n as usize, model.len() - 1000);
}

fn blocked(s: &Server, n: u64) {
    let mut c = s.conn();
    wait_until(DEADLINE, "clients blocked", || {
        info_u64(&mut c, "blocked_clients") == n
    });
}

#[test]
fn blpop_is_woken_by_a_push_first_come_first_served() {
    let s = Server::start();
    let spawn = |args: Vec<&'static str>| {
        let mut c = s.conn();
        std::thread::spawn(move || -> Option<(String, String)> {
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            cmd.query(&mut c).expect("blocking command")
        })
    };
    let first = spawn(vec!["BLPOP", "q1", "q2", "0"]);
    blocked(&s, 1);
    let second = spawn(vec!["BRPOP", "q2", "0"]);
    blocked(&s, 2);
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["RPUSH", "q2", "a"]);
    assert_eq!(
        first.join().expect("first"),
        Some(("q2".into(), "a".into())),
        "the client that blocked first is served first"
    );
    blocked(&s, 1);
    let _: i64 = q(&mut c, &["RPUSH", "q2", "b", "c"]);
    assert_eq!(
        second.join().expect("second"),
        Some(("q2".into(), "c".into()))
    );
    blocked(&s, 0);
    let left: Vec<String> = q(&mut c, &["LRANGE", "q2", "0", "-1"]);
    assert_eq!(left, vec!["b"], "one element each, the rest stays");
}

#[test]
fn blmove_and_blmpop_are_woken_and_time_out() {
    let s = Server::start();
    let mut waiter = s.conn();
    let t = std::thread::spawn(move || -> Option<String> {
        redis::cmd("BLMOVE")
            .arg("src")
            .arg("dst")
            .arg("RIGHT")
            .arg("LEFT")
            .arg("0")
            .query(&mut waiter)
            .expect("blmove")
    });
    blocked(&s, 1);
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["LPUSH", "src", "x"]);
    assert_eq!(t.join().expect("blmove"), Some("x".into()));
    let dst: Vec<String> = q(&mut c, &["LRANGE", "dst", "0", "-1"]);
    assert_eq!(dst, vec!["x"]);

    let mut waiter = s.conn();
    let t = std::thread::spawn(move || -> redis::Value {
        redis::cmd("BLMPOP")
            .arg("0")
            .arg("2")
            .arg("m1")
            .arg("m2")
            .arg("LEFT")
            .arg("COUNT")
            .arg("2")
            .query(&mut waiter)
            .expect("blmpop")
    });
    blocked(&s, 1);
    let _: i64 = q(&mut c, &["RPUSH", "m2", "a", "b", "c"]);
    let got = t.join().expect("blmpop");
    let got: (String, Vec<String>) = redis::from_redis_value(&got).expect("reply shape");
    assert_eq!(got, ("m2".into(), vec!["a".into(), "b".into()]));

    // A timeout answers nil; the client is no longer blocked.
    let got: Option<(String, String)> = q(&mut c, &["BLPOP", "empty", "0.05"]);
    assert_eq!(got, None);
    assert_eq!(info_u64(&mut c, "blocked_clients"), 0);
    assert_eq!(
        qerr(&mut c, &["BLPOP", "empty", "-1"]),
        "ERR timeout is negative"
    );
}

#[test]
fn a_client_that_leaves_while_blocked_is_unblocked() {
    let s = Server::start();
    {
        let mut raw = s.raw();
        raw.send(&common::encode_cmd(&["BLPOP", "gone", "0"]));
        blocked(&s, 1);
    }
    blocked(&s, 0);
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["RPUSH", "gone", "a"]);
    let n: i64 = q(&mut c, &["LLEN", "gone"]);
    assert_eq!(n, 1, "nobody took the element");
}

#[test]
fn a_blocked_client_is_woken_by_another_clients_lmove() {
    let s = Server::start();
    let mut waiter = s.conn();
    let t = std::thread::spawn(move || -> Option<(String, String)> {
        redis::cmd("BRPOP")
            .arg("target")
            .arg("0")
            .query(&mut waiter)
            .expect("brpop")
    });
    blocked(&s, 1);
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["RPUSH", "from", "m"]);
    let _: Option<String> = q(&mut c, &["LMOVE", "from", "target", "LEFT", "LEFT"]);
    assert_eq!(
        t.join().expect("brpop"),
        Some(("target".into(), "m".into()))
    );
    // Counted once, however many times it looked before it was served.
    let stats: String = q(&mut c, &["INFO", "commandstats"]);
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("cmdstat_brpop:calls=1,")),
        "{stats}"
    );
}

#[test]
fn client_unblock_ends_a_wait_with_the_timeout_reply_or_an_error() {
    let s = Server::start();
    let mut c = s.conn();
    for (mode, want_err) in [("TIMEOUT", false), ("ERROR", true)] {
        let mut waiter = s.conn();
        let id: i64 = q(&mut waiter, &["CLIENT", "ID"]);
        let t = std::thread::spawn(move || {
            redis::cmd("BLPOP")
                .arg("never")
                .arg("0")
                .query::<Option<(String, String)>>(&mut waiter)
        });
        blocked(&s, 1);
        let n: i64 = q(&mut c, &["CLIENT", "UNBLOCK", &id.to_string(), mode]);
        assert_eq!(n, 1);
        match t.join().expect("blpop") {
            Ok(v) => {
                assert!(!want_err);
                assert_eq!(v, None);
            }
            Err(e) => {
                assert!(want_err);
                assert!(
                    e.to_string()
                        .contains("client unblocked via CLIENT UNBLOCK"),
                    "{e}"
                );
            }
        }
        blocked(&s, 0);
    }
    let n: i64 = q(&mut c, &["CLIENT", "UNBLOCK", "12345"]);
    assert_eq!(n, 0, "not a blocked client");
    assert_eq!(
        qerr(&mut c, &["CLIENT", "UNBLOCK", "1", "LATER"]),
        "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"
    );
}

#[test]
fn dump_restore_and_copy_keep_a_lists_order() {
    let s = Server::start();
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["RPUSH", "src", "a", "b", "c"]);
    let _: i64 = q(&mut c, &["LPUSH", "src", "z"]);
    let payload: Vec<u8> = redis::cmd("DUMP").arg("src").query(&mut c).expect("dump");
    let _: () = redis::cmd("RESTORE")
        .arg("copy")
        .arg(0)
        .arg(payload)
        .query(&mut c)
        .expect("restore");
    let got: Vec<String> = q(&mut c, &["LRANGE", "copy", "0", "-1"]);
    assert_eq!(got, ["z", "a", "b", "c"]);
    let t: String = q(&mut c, &["TYPE", "copy"]);
    assert_eq!(t, "list");
    let _: i64 = q(&mut c, &["COPY", "src", "copy2"]);
    let got: Vec<String> = q(&mut c, &["LRANGE", "copy2", "0", "-1"]);
    assert_eq!(got, ["z", "a", "b", "c"]);
}

/// Requests a blocked client sends meanwhile wait behind its blocking command, in order.
#[test]
fn requests_behind_a_blocked_command_run_after_it() {
    let s = Server::start();
    let mut raw = s.raw();
    raw.send(&common::encode_cmd(&["BLPOP", "later", "0"]));
    blocked(&s, 1);
    raw.send(&common::encode_cmd(&["PING"]));
    raw.send(&common::encode_cmd(&["LLEN", "later"]));
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["RPUSH", "later", "a", "b"]);
    assert_eq!(
        raw.read(),
        common::Resp::Array(vec![common::Resp::bulk("later"), common::Resp::bulk("a")])
    );
    assert_eq!(raw.read().text(), "PONG");
    assert_eq!(raw.read(), common::Resp::Int(1));
}

/// SORT and SORT_RO on lists (BY nosort keeps the list's order, DESC reverses it) and
/// SORT … STORE, which writes its result as a list.
#[test]
fn sort_on_lists_and_store_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["RPUSH", "l", "3", "1", "2", "10"],
            &["SORT", "l"],
            &["SORT", "l", "DESC"],
            &["SORT", "l", "ALPHA"],
            &["SORT", "l", "BY", "nosort"],
            &["SORT", "l", "BY", "nosort", "DESC"],
            &["SORT", "l", "BY", "nosort", "LIMIT", "1", "2"],
            &["SORT_RO", "l", "LIMIT", "0", "2"],
            &["SET", "w_1", "9"],
            &["SET", "w_10", "0"],
            &["SORT", "l", "BY", "w_*", "GET", "#", "GET", "w_*"],
            &["SORT", "l", "STORE", "dst"],
            &["LRANGE", "dst", "0", "-1"],
            &["TYPE", "dst"],
            &["SORT", "l", "BY", "nosort", "STORE", "dst"],
            &["LRANGE", "dst", "0", "-1"],
            &["SADD", "set", "b", "a", "c"],
            &["SORT", "set", "ALPHA", "STORE", "dst"],
            &["LRANGE", "dst", "0", "-1"],
            &["SORT", "l", "GET", "missing_*", "STORE", "dst"],
            &["LRANGE", "dst", "0", "-1"],
            &["SORT", "nokey", "STORE", "dst"],
            &["EXISTS", "dst"],
            &["RPUSH", "bad", "a"],
            &["SORT", "bad"],
        ],
    );
}
