//! Sorted sets: every reply compared with a real redis-server's, byte for byte (RESP2),
//! scores as RESP3 doubles through the `redis` crate, large sets (the order index), the
//! commands whose replies are random or meridian's own (ZRANDMEMBER, ZSCAN, DUMP), and
//! bounds on what a client's numbers can make the server build.

mod common;

use common::{assert_same_as_redis, q, qerr, Server};

/// A script of one command per line, arguments split on spaces (`""` is an empty argument).
fn script(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split(' ')
                .map(|a| {
                    if a == "\"\"" {
                        String::new()
                    } else {
                        a.to_string()
                    }
                })
                .collect()
        })
        .collect()
}

fn same_as_redis(s: &Server, cmds: &[Vec<String>]) {
    let owned: Vec<Vec<&str>> = cmds
        .iter()
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = owned.iter().map(Vec::as_slice).collect();
    assert_same_as_redis(s, &refs);
}

#[test]
fn sorted_set_replies_match_redis_server() {
    let s = Server::start();
    same_as_redis(
        &s,
        &script(
            r#"
        ZADD z 0.1 a 1 b 2.5 c inf d
        ZSCORE z a
        ZRANGE z 0 -1 WITHSCORES
        ZSCAN z 0
        ZPOPMIN z
        ZPOPMIN z 1
        ZADD z 0.1 a 1 b 2.5 c inf d
        ZRANGESTORE d z 0 -1 WITHSCORES
        ZRANGE z 0 -1 LIMIT 0 1
        ZRANGE z (1 5 BYSCORE REV
        ZRANGE z 5 (1 BYSCORE REV
        ZRANGE z 0 1 BYLEX WITHSCORES
        ZUNIONSTORE d 0 z
        ZUNION 0 z
        ZINTER 2 z
        ZADD z nan x
        ZADD z 1e400 x
        ZADD z 1e-400 x
        ZADD z 0x10 x
        ZSCORE z x
        ZINCRBY z -inf d
        ZADD z INCR 1 a 2 b
        ZADD z NX XX 1 a
        ZADD z GT LT 1 a
        ZADD z GT NX 1 a
        ZADD z 1
        ZADD z XX 1 a 2
        ZRANK z a WITHSCORE
        ZRANK z a
        ZREVRANK z a
        ZRANGEBYSCORE z 1 2 REV
        ZRANGEBYLEX z - + WITHSCORES
        ZREVRANGE z 0 1 LIMIT 0 1
        ZRANGE z 0 -1 WITHSCORES
        ZREVRANGE z 0 -1 WITHSCORES
        ZREVRANGE z -2 -1
        ZRANGE z 1 100
        ZRANGE z 5 1
        ZRANGE z -100 -3
        ZRANGE z x 1
        ZPOPMIN z -1
        ZPOPMIN z abc
        ZRANDMEMBER z -9223372036854775808
        ZRANDMEMBER z -5000000000000000000 WITHSCORES
        ZRANDMEMBER z 1 WITHSCORES x
        ZUNION 2 z nokey WEIGHTS 1 x
        ZUNION 2 z nokey AGGREGATE foo
        ZUNION 2 z nokey WITHSCORES WITHSCORES
        ZDIFF 1 z WEIGHTS 1
        ZRANGEBYSCORE z 1 x
        ZRANGEBYLEX z 1 x
        ZREMRANGEBYRANK z a 1
        ZCOUNT z ( 1
        ZCOUNT z -inf +inf
        ZCOUNT z (0.1 2.5
        ZCOUNT z 3 1
        ZRANGE z 0 -1 BYSCORE
        ZINTERCARD 0 z
        ZINTERCARD 1 z
        ZINTERCARD 2 z
        ZINTERCARD 1 z LIMIT -1
        ZRANGEBYSCORE z -inf +inf LIMIT -1 2
        ZRANGEBYSCORE z -inf +inf LIMIT 0 -1
        ZRANGEBYSCORE z -inf +inf WITHSCORES LIMIT 1 2
        ZREVRANGEBYSCORE z +inf -inf WITHSCORES LIMIT 1 2
        ZREVRANGEBYSCORE z -inf +inf
        ZSCAN z 0 COUNT 0
        ZADD z CH 5 d
        SET str v
        ZADD str 1 a
        ZUNION 2 z str
        ZUNION 2 z str FOO
        ZRANGESTORE dst z 0 -1 REV
        ZRANGE dst 0 -1 WITHSCORES
        ZADD z2 "" a
        ZADD z2 (1 a
        ZADD z2 +inf a
        ZADD z2 INFINITY b
        ZADD z2 -0 c
        ZRANGE z2 0 -1 WITHSCORES
        ZRANGEBYSCORE z2 -inf +inf LIMIT 0
        ZRANGE z2 0 -1 LIMIT 0
        ZRANGEBYLEX z2 - + LIMIT 1 1
        ZRANDMEMBER z2 0
        ZRANDMEMBER nokey 2
        ZRANDMEMBER nokey
        ZMSCORE nokey a
        ZMSCORE z a nope b
        ZADD lex 0 a 0 b 0 c 0 d 0 e 0 ff 0 g
        ZRANGEBYLEX lex [b (e
        ZRANGEBYLEX lex (b [e
        ZREVRANGEBYLEX lex [e (b
        ZREVRANGEBYLEX lex + - LIMIT 1 2
        ZRANGEBYLEX lex - + LIMIT 2 100
        ZRANGEBYLEX lex a b
        ZLEXCOUNT lex - +
        ZLEXCOUNT lex [c +
        ZLEXCOUNT lex [f [fz
        ZRANGE lex [b [d BYLEX
        ZRANGE lex [d [b BYLEX REV
        ZREMRANGEBYLEX lex [b (d
        ZRANGE lex 0 -1
        ZREMRANGEBYLEX lex x y
        ZREMRANGEBYRANK lex 0 1
        ZRANGE lex 0 -1
        ZREMRANGEBYSCORE z 1 2.5
        ZREMRANGEBYSCORE z x 2.5
        ZRANGE z 0 -1 WITHSCORES
        ZCARD z
        ZCARD nokey
        ZCARD str
        ZREM z a a nope
        ZREM str a
        ZREM nokey a
        ZADD u 1 a 2 b 3 c
        ZADD v 10 b 20 c 30 d
        SADD s c d e
        ZUNION 3 u v s WITHSCORES
        ZUNION 2 u v WEIGHTS 2 0.5 WITHSCORES
        ZUNION 2 u v AGGREGATE MIN WITHSCORES
        ZUNION 2 u v AGGREGATE MAX WITHSCORES
        ZINTER 2 u v WITHSCORES
        ZINTER 3 u v s WITHSCORES
        ZINTER 2 u v WEIGHTS 1 -1 AGGREGATE SUM WITHSCORES
        ZDIFF 2 u v WITHSCORES
        ZDIFF 2 v u
        ZUNIONSTORE out 2 u v WEIGHTS 1 2
        ZRANGE out 0 -1 WITHSCORES
        ZINTERSTORE out 2 u v
        ZRANGE out 0 -1 WITHSCORES
        ZDIFFSTORE out 2 u v
        ZRANGE out 0 -1 WITHSCORES
        ZINTERSTORE out 2 u nokey
        EXISTS out
        ZUNIONSTORE out 2 u v WITHSCORES
        ZUNIONSTORE out 3 u v
        ZUNIONSTORE out x u v
        ZUNIONSTORE out -1 u v
        ZINTERCARD 2 u v
        ZINTERCARD 2 u v LIMIT 1
        ZINTERCARD 3 u v
        ZINTERCARD 2 u v FOO
        ZINCRBY u 2.5 a
        ZINCRBY u x a
        ZINCRBY u 1 new
        ZINCRBY str 1 a
        ZINCRBY u inf a
        ZINCRBY u -inf a
        ZADD u INCR 1 b
        ZADD u INCR NX 1 b
        ZADD u INCR XX 1 zz
        ZADD u INCR GT -1 b
        ZADD u INCR LT -1 b
        ZADD u GT CH 1 b 100 c 5 new2
        ZADD u LT CH 1 b 100 c 5 new3
        ZADD u XX CH 0 b 0 nothere
        ZADD u NX 0 b 7 new4
        ZADD u 1 dup 2 dup 3 dup
        ZADD u CH 1 dup 2 dup 3 dup
        ZSCORE u dup
        ZRANGE u 0 -1 WITHSCORES
        ZPOPMAX u
        ZPOPMAX u 2
        ZPOPMIN u 0
        ZPOPMIN u 100
        EXISTS u
        ZPOPMIN nokey
        ZPOPMIN nokey 2
        ZPOPMIN str
        ZPOPMIN u 1 2
        ZADD big 1 a
        OBJECT ENCODING big
        TYPE big
        ZSCORE big nope
        ZSCORE nokey a
        ZMSCORE big
        ZRANK nokey a
        ZRANGE nokey 0 -1
        ZRANGE str 0 -1
        ZRANGE nokey x y BYSCORE
        ZRANGESTORE dst nokey 0 -1
        EXISTS dst
        ZRANGESTORE dst2 z 0 -1 BYLEX
        ZRANGESTORE dst2 big 0 -1 LIMIT 0 1
        ZADD sc 1.5 a -2.25 b 1e20 c 123456789012 d 0.3 e 1e-7 f
        ZRANGE sc 0 -1 WITHSCORES
        ZSCAN sc 0
        ZSCAN sc 0 MATCH a*
        ZSCAN nokey 0
        ZSCAN str 0
        ZINCRBY sc 0.1 e
        ZINCRBY sc 0.2 e
"#,
        ),
    );
}

#[test]
fn options_encodings_and_edge_cases_match_redis_server() {
    let s = Server::start();
    same_as_redis(
        &s,
        &script(
            r#"
        CONFIG SET zset-max-listpack-entries 4
        ZADD e 1 a 2 b 3 c
        OBJECT ENCODING e
        ZADD e 4 d 5 e
        OBJECT ENCODING e
        CONFIG SET zset-max-listpack-entries 128
        CONFIG SET zset-max-listpack-value 3
        ZADD f 1 abcd
        OBJECT ENCODING f
        CONFIG SET zset-max-listpack-value 64
        TYPE e
        COPY e e2
        ZRANGE e2 0 -1 WITHSCORES
        EXPIRE e 100
        COPY e e3
        TTL e3
        ZADD e 1 x 1 y 1 z
        ZRANGE e 0 -1
        ZRANGE e (1 3 BYSCORE LIMIT 1 1 WITHSCORES
        ZRANGE e +inf -inf BYSCORE REV LIMIT 0 2 WITHSCORES
        ZRANGE e + - BYLEX REV
        ZREMRANGEBYRANK e -2 -1
        ZREMRANGEBYRANK e 5 1
        ZRANGE e 0 -1 WITHSCORES
        ZREMRANGEBYSCORE e -inf (2
        ZRANGE e 0 -1 WITHSCORES
        ZREMRANGEBYSCORE e -inf +inf
        EXISTS e
        ZADD n 1 a
        ZREM n a
        EXISTS n
        ZINCRBY n 5 a
        ZADD n XX INCR 2 a
        ZADD n CH GT 3 a
        ZSCORE n a
        ZADD n INCR -inf a
        ZADD n INCR +inf a
        ZRANGE n 0 -1 WITHSCORES
        ZADD n 1 -inf
        ZADD n -1.5e300 m
        ZRANGE n 0 -1 WITHSCORES
        ZADD n 1.0 b 01 c 1e0 d
        ZRANGE n 0 -1 WITHSCORES
        ZREVRANK n nope
        ZRANK n d
        ZREVRANK n d
        ZRANGE n 0 0 REV
        ZRANGE n 0 1 REV WITHSCORES
        ZRANGE n 0 1 BYSCORE BYLEX
        ZRANGE n 0 1 REV REV
        ZRANGE n 0 1 WITHSCORES WITHSCORES
        ZRANGEBYSCORE n -inf +inf REV
        ZRANGEBYSCORE n -inf +inf BYSCORE
        ZREVRANGE n 0 -1 REV
        ZRANGESTORE x n 0 -1 WITHSCORES
        ZRANGESTORE x n 0 -1
        ZRANGESTORE x n 0 -1 LIMIT 0 1 BYSCORE
        ZRANGE x 0 -1 WITHSCORES
        ZRANGE n 0 -1 LIMIT 1 1 BYSCORE
        ZRANGE n 0 -1 LIMIT x 1 BYSCORE
        ZRANGE n 0 -1 LIMIT 1 BYSCORE
        ZINCRBY n 1
        ZSCORE n
        ZRANK n
        ZREM n
        ZCOUNT n 1
        ZPOPMIN
        ZUNION 1
        ZUNION
        ZINTERCARD 1
        ZUNIONSTORE out 1
        ZRANDMEMBER n -3 x
        ZRANDMEMBER n 1 2
        ZRANDMEMBER str
        ZADD hash 1 a
        HSET h f v
        ZADD h 1 a
        ZUNION 2 n h
        ZINTERCARD 2 n h
        ZRANGESTORE n2 h 0 -1
        ZRANGESTORE h n 0 -1
        TYPE h
        ZRANGE h 0 -1
        ZADD many 0 d0 1 d1 2 d2 3 d3 4 d4 5 d5 6 d6 0 d7 1 d8 2 d9 3 d10 4 d11 5 d12 6 d13 0 d14 1 d15 2 d16 3 d17 4 d18 5 d19 6 d0 0 d1 1 d2 2 d3 3 d4 4 d5 5 d6 6 d7 0 d8 1 d9 2 d10 3 d11 4 d12 5 d13 6 d14 0 d15 1 d16 2 d17 3 d18 4 d19
        ZADD many CH GT 0 d0 1 d1 2 d2 3 d3 4 d4 5 d5 6 d6 0 d7 1 d8 2 d9 3 d10 4 d11 5 d12 6 d13 0 d14 1 d15 2 d16 3 d17 4 d18 5 d19 6 d0 0 d1 1 d2 2 d3 3 d4 4 d5 5 d6 6 d7 0 d8 1 d9 2 d10 3 d11 4 d12 5 d13 6 d14 0 d15 1 d16 2 d17 3 d18 4 d19
        ZRANGE many 0 -1 WITHSCORES
        ZREM many d1 d1 d2 d2 d3 nope d1
        RENAME many renamed
        ZRANGE renamed 0 -1 WITHSCORES
        EXISTS many
        ZRANDMEMBER renamed 100 WITHSCORES
        ZRANDMEMBER renamed 0
"#,
        ),
    );
}

/// 3000 members (past every listpack bound: a skiplist in Redis, the order index here):
/// ranks, slices from both ends, score and lex windows with LIMIT, removals by rank.
#[test]
fn large_sets_rank_and_range_like_redis_server() {
    let s = Server::start();
    let mut cmds: Vec<Vec<String>> = Vec::new();
    let mut add = vec!["ZADD".to_string(), "big".to_string()];
    for i in 0..3000u32 {
        add.push(format!("{}", (i * 7919) % 1000));
        add.push(format!("m{i:05}"));
    }
    cmds.push(add);
    cmds.extend(script(
        "OBJECT ENCODING big
         ZCARD big
         ZRANK big m00000
         ZRANK big m02999
         ZREVRANK big m01234
         ZRANGE big 0 9 WITHSCORES
         ZRANGE big -10 -1 WITHSCORES
         ZRANGE big 1500 1509
         ZREVRANGE big 100 105 WITHSCORES
         ZRANGE big (500 510 BYSCORE LIMIT 3 7 WITHSCORES
         ZRANGE big 510 (500 BYSCORE REV LIMIT 2 5
         ZCOUNT big 100 (200
         ZCOUNT big -inf +inf
         ZREMRANGEBYRANK big 10 19
         ZRANGE big 5 15
         ZREMRANGEBYSCORE big 990 +inf
         ZCARD big
         ZPOPMAX big 3
         ZPOPMIN big 3
         ZINCRBY big 1000 m01500
         ZRANK big m01500
         ZADD lexbig 0 a",
    ));
    for i in 0..300u32 {
        cmds.push(vec![
            "ZADD".into(),
            "lexbig".into(),
            "0".into(),
            format!("k{:04}", i * 37 % 1000),
        ]);
    }
    cmds.extend(script(
        "ZRANGEBYLEX lexbig [k0100 (k0200
         ZREVRANGEBYLEX lexbig (k0900 [k0800 LIMIT 5 5
         ZLEXCOUNT lexbig (k0500 +
         ZREMRANGEBYLEX lexbig - (k0300
         ZCARD lexbig
         ZRANGESTORE part big 100 199
         ZRANGE part 0 4 WITHSCORES
         ZUNIONSTORE u 2 big part WEIGHTS 1 2
         ZRANGE u 0 4 WITHSCORES
         ZINTERCARD 2 big part LIMIT 50",
    ));
    same_as_redis(&s, &cmds);
}

/// RESP3 clients get scores as doubles (`,`), members with scores as pairs.
#[test]
fn resp3_scores_are_doubles() {
    let s = Server::start();
    let mut c = s.conn_resp3();
    let _: i64 = q(&mut c, &["ZADD", "z", "1.5", "a", "-inf", "b", "2", "c"]);
    let v: redis::Value = q(&mut c, &["ZSCORE", "z", "a"]);
    assert_eq!(v, redis::Value::Double(1.5));
    let v: redis::Value = q(&mut c, &["ZRANGE", "z", "0", "1", "WITHSCORES"]);
    let want = redis::Value::Array(vec![
        redis::Value::Array(vec![
            redis::Value::BulkString(b"b".to_vec()),
            redis::Value::Double(f64::NEG_INFINITY),
        ]),
        redis::Value::Array(vec![
            redis::Value::BulkString(b"a".to_vec()),
            redis::Value::Double(1.5),
        ]),
    ]);
    assert_eq!(v, want);
    let v: redis::Value = q(&mut c, &["ZINCRBY", "z", "0.25", "c"]);
    assert_eq!(v, redis::Value::Double(2.25));
    // Through the typed API, as an application reads a leaderboard.
    let top: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
        .arg("z")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut s.conn())
        .expect("ZREVRANGE");
    assert_eq!(
        top,
        vec![
            ("c".to_string(), 2.25),
            ("a".to_string(), 1.5),
            ("b".to_string(), f64::NEG_INFINITY)
        ]
    );
}

#[test]
fn random_members_scan_dump_and_copy() {
    let s = Server::start();
    let mut c = s.conn();
    let mut args = vec!["ZADD".to_string(), "z".to_string()];
    for i in 0..500 {
        args.push(format!("{}", i as f64 / 4.0));
        args.push(format!("m{i}"));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(q::<i64>(&mut c, &argv), 500);

    // ZRANDMEMBER: distinct for a positive count (at most the set), repeats for a negative.
    let picked: Vec<String> = q(&mut c, &["ZRANDMEMBER", "z", "20"]);
    let distinct: std::collections::BTreeSet<&String> = picked.iter().collect();
    assert_eq!((picked.len(), distinct.len()), (20, 20));
    let all: Vec<String> = q(&mut c, &["ZRANDMEMBER", "z", "100000"]);
    assert_eq!(all.len(), 500);
    let rep: Vec<String> = q(&mut c, &["ZRANDMEMBER", "z", "-1000"]);
    assert_eq!(rep.len(), 1000);
    let ws: Vec<String> = q(&mut c, &["ZRANDMEMBER", "z", "3", "WITHSCORES"]);
    assert_eq!(ws.len(), 6);
    for pair in ws.chunks(2) {
        let score: String = q(&mut c, &["ZSCORE", "z", &pair[0]]);
        assert_eq!(pair[1], score);
    }
    // A huge negative count is refused, not allocated.
    let e = qerr(&mut c, &["ZRANDMEMBER", "z", "-9223372036854775807"]);
    assert!(e.contains("out of range"), "{e}");

    // ZSCAN visits every member exactly once, with its score.
    let mut cursor = "0".to_string();
    let mut seen = std::collections::BTreeMap::new();
    loop {
        let (next, items): (String, Vec<String>) =
            q(&mut c, &["ZSCAN", "z", &cursor, "COUNT", "37"]);
        for pair in items.chunks(2) {
            assert!(seen.insert(pair[0].clone(), pair[1].clone()).is_none());
        }
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 500);
    assert_eq!(seen["m2"], "0.5");

    // DUMP / RESTORE and COPY keep members and scores.
    let payload: Vec<u8> = q(&mut c, &["DUMP", "z"]);
    let _: () = redis::cmd("RESTORE")
        .arg("z2")
        .arg(0)
        .arg(&payload)
        .query(&mut c)
        .expect("RESTORE");
    let _: i64 = q(&mut c, &["COPY", "z", "z3"]);
    let want: Vec<String> = q(&mut c, &["ZRANGE", "z", "0", "-1", "WITHSCORES"]);
    for k in ["z2", "z3"] {
        let got: Vec<String> = q(&mut c, &["ZRANGE", k, "0", "-1", "WITHSCORES"]);
        assert_eq!(got, want, "{k}");
    }
    let used: i64 = q(&mut c, &["MEMORY", "USAGE", "z"]);
    assert!(used > 500 * 16, "MEMORY USAGE {used}");
    assert_eq!(q::<String>(&mut c, &["TYPE", "z"]), "zset");
}

/// Counts and ranges from a client are bounded by the set: nothing is sized from them.
#[test]
fn huge_counts_and_ranges_are_bounded_by_the_set() {
    let s = Server::start();
    let mut c = s.conn();
    let _: i64 = q(&mut c, &["ZADD", "z", "1", "a", "2", "b"]);
    let max = i64::MAX.to_string();
    let min = (i64::MIN + 1).to_string();
    let r: Vec<String> = q(&mut c, &["ZRANGE", "z", &min, &max]);
    assert_eq!(r, ["a", "b"]);
    let r: Vec<String> = q(
        &mut c,
        &["ZRANGEBYSCORE", "z", "-inf", "+inf", "LIMIT", "0", &max],
    );
    assert_eq!(r, ["a", "b"]);
    let r: Vec<String> = q(&mut c, &["ZPOPMIN", "z", &max]);
    assert_eq!(r, ["a", "1", "b", "2"]);
    let r: Vec<String> = q(&mut c, &["ZRANDMEMBER", "z", &max]);
    assert!(r.is_empty());
}

/// BZPOPMIN / BZPOPMAX: an immediate pop, the timeout reply and the errors as redis-server
/// answers them; a client blocked on an empty key is woken by another client's ZADD (the
/// lists' waiter queues), and INFO counts it blocked meanwhile.
#[test]
fn bzpopmin_and_bzpopmax() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["ZADD", "z", "1", "a", "2", "b", "3", "c"],
            &["BZPOPMIN", "z", "0"],
            &["BZPOPMAX", "nokey", "z", "0"],
            &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
            &["BZPOPMIN", "nokey", "0.01"],
            &["BZPOPMIN", "z", "-1"],
            &["BZPOPMIN", "z", "x"],
            &["SET", "str", "v"],
            &["BZPOPMIN", "str", "0"],
            &["BZPOPMAX", "z"],
        ],
    );
    let mut waiter = s.conn();
    let t = std::thread::spawn(move || -> Option<(String, String, f64)> {
        redis::cmd("BZPOPMAX")
            .arg("empty")
            .arg("0")
            .query(&mut waiter)
            .expect("BZPOPMAX")
    });
    let mut c = s.conn();
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the client blocks",
        || common::info_u64(&mut c, "blocked_clients") == 1,
    );
    let _: i64 = q(&mut c, &["ZADD", "empty", "7", "m", "9", "n"]);
    assert_eq!(
        t.join().expect("waiter"),
        Some(("empty".to_string(), "n".to_string(), 9.0))
    );
    let left: Vec<String> = q(&mut c, &["ZRANGE", "empty", "0", "-1"]);
    assert_eq!(left, vec!["m"]);
}
