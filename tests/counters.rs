//! Counter commands: INCR DECR INCRBY DECRBY INCRBYFLOAT — exact 64-bit arithmetic, Redis'
//! integer grammar, overflow refused with the value unchanged, TTL kept, SET resets.

mod common;

use common::*;

const NOT_INT: &str = "ERR value is not an integer or out of range";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

#[test]
fn incr_decr_family_counts_exactly() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["INCR", "n"]), 1);
    assert_eq!(q::<i64>(&mut c, &["INCR", "n"]), 2);
    assert_eq!(q::<i64>(&mut c, &["DECR", "n"]), 1);
    assert_eq!(q::<i64>(&mut c, &["INCRBY", "n", "41"]), 42);
    assert_eq!(q::<i64>(&mut c, &["DECRBY", "n", "50"]), -8);
    assert_eq!(q::<i64>(&mut c, &["INCRBY", "n", "-2"]), -10);
    assert_eq!(q::<i64>(&mut c, &["DECRBY", "n", "-10"]), 0);
    // The value reads back as its decimal text and is a string.
    assert_eq!(q::<String>(&mut c, &["GET", "n"]), "0");
    assert_eq!(q::<String>(&mut c, &["TYPE", "n"]), "string");
    assert_eq!(q::<i64>(&mut c, &["DECR", "fresh"]), -1);
    assert_eq!(q::<i64>(&mut c, &["DECRBY", "fresh2", "5"]), -5);
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "fresh2"]), 2);
}

#[test]
fn incr_parses_existing_string_values() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "10"]);
    assert_eq!(q::<i64>(&mut c, &["INCR", "k"]), 11);
    q::<()>(&mut c, &["SET", "neg", "-9223372036854775807"]);
    assert_eq!(q::<i64>(&mut c, &["DECR", "neg"]), i64::MIN);
    // Redis' integer grammar: no spaces, no leading zeros or '+', no floats.
    for bad in [
        "abc",
        "1.5",
        " 1",
        "1 ",
        "007",
        "+1",
        "",
        "1e3",
        "9223372036854775808",
    ] {
        q::<()>(&mut c, &["SET", "bad", bad]);
        assert_eq!(qerr(&mut c, &["INCR", "bad"]), NOT_INT, "INCR on {bad:?}");
        assert_eq!(q::<String>(&mut c, &["GET", "bad"]), bad, "value unchanged");
    }
    for bad in [
        "abc",
        "1.0",
        "",
        "9223372036854775808",
        "-9223372036854775809",
    ] {
        assert_eq!(
            qerr(&mut c, &["INCRBY", "k", bad]),
            NOT_INT,
            "INCRBY by {bad:?}"
        );
        assert_eq!(
            qerr(&mut c, &["DECRBY", "k", bad]),
            NOT_INT,
            "DECRBY by {bad:?}"
        );
    }
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "11");
}

#[test]
fn overflow_is_refused_and_value_unchanged() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "max", "9223372036854775807"]);
    assert_eq!(qerr(&mut c, &["INCR", "max"]), OVERFLOW);
    assert_eq!(qerr(&mut c, &["INCRBY", "max", "1"]), OVERFLOW);
    assert_eq!(q::<String>(&mut c, &["GET", "max"]), "9223372036854775807");
    q::<()>(&mut c, &["SET", "min", "-9223372036854775808"]);
    assert_eq!(qerr(&mut c, &["DECR", "min"]), OVERFLOW);
    assert_eq!(qerr(&mut c, &["INCRBY", "min", "-1"]), OVERFLOW);
    assert_eq!(q::<String>(&mut c, &["GET", "min"]), "-9223372036854775808");
    // Negating i64::MIN cannot be represented: Redis' own message.
    assert_eq!(
        qerr(&mut c, &["DECRBY", "min", "-9223372036854775808"]),
        "ERR decrement would overflow"
    );
    // Overflow reached by counting (not SET) is refused the same way.
    assert_eq!(
        q::<i64>(&mut c, &["INCRBY", "c", "9223372036854775806"]),
        i64::MAX - 1
    );
    assert_eq!(q::<i64>(&mut c, &["INCR", "c"]), i64::MAX);
    assert_eq!(qerr(&mut c, &["INCR", "c"]), OVERFLOW);
    assert_eq!(q::<i64>(&mut c, &["DECR", "c"]), i64::MAX - 1);
}

#[test]
fn counters_keep_ttl_and_reset_on_set() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "10", "EX", "100"]);
    assert_eq!(q::<i64>(&mut c, &["INCR", "k"]), 11);
    let ttl: i64 = q(&mut c, &["TTL", "k"]);
    assert!(
        (99..=100).contains(&ttl),
        "INCR must keep the TTL, got {ttl}"
    );
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "k", "0.5"]), "11.5");
    assert!(
        q::<i64>(&mut c, &["TTL", "k"]) > 0,
        "INCRBYFLOAT keeps the TTL"
    );
    // SET on a counter replaces the value; counting continues from the new value.
    assert_eq!(q::<i64>(&mut c, &["INCRBY", "ctr", "100"]), 100);
    q::<()>(&mut c, &["SET", "ctr", "5"]);
    assert_eq!(q::<i64>(&mut c, &["INCR", "ctr"]), 6);
    // DEL then INCR starts from zero.
    q::<i64>(&mut c, &["DEL", "ctr"]);
    assert_eq!(q::<i64>(&mut c, &["INCR", "ctr"]), 1);
    // GETSET returns the counter's text and resets it.
    assert_eq!(q::<String>(&mut c, &["GETSET", "ctr", "40"]), "1");
    assert_eq!(q::<i64>(&mut c, &["INCRBY", "ctr", "2"]), 42);
}

#[test]
fn incrbyfloat_formats_like_redis() {
    let s = Server::start();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "f", "10.50"]);
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "f", "0.1"]), "10.6");
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "f", "-5"]), "5.6");
    q::<()>(&mut c, &["SET", "f", "5.0e3"]);
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "f", "2.0e2"]), "5200");
    assert_eq!(q::<String>(&mut c, &["GET", "f"]), "5200");
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "new", "3"]), "3");
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "new", "-1.5"]), "1.5");
    // A float result stops INCR; an integral one does not.
    assert_eq!(qerr(&mut c, &["INCR", "new"]), NOT_INT);
    q::<String>(&mut c, &["INCRBYFLOAT", "new", "0.5"]);
    assert_eq!(q::<i64>(&mut c, &["INCR", "new"]), 3);
    // INCRBYFLOAT on an INCR counter.
    q::<i64>(&mut c, &["INCRBY", "i", "7"]);
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "i", "0.25"]), "7.25");

    assert_eq!(
        qerr(&mut c, &["INCRBYFLOAT", "f", "abc"]),
        "ERR value is not a valid float"
    );
    assert_eq!(
        qerr(&mut c, &["INCRBYFLOAT", "f", "inf"]),
        "ERR increment would produce NaN or Infinity"
    );
    q::<()>(&mut c, &["SET", "txt", "hello"]);
    assert_eq!(
        qerr(&mut c, &["INCRBYFLOAT", "txt", "1"]),
        "ERR value is not a valid float"
    );
    assert_eq!(q::<String>(&mut c, &["GET", "f"]), "5200");
}

#[test]
fn counters_on_other_types_are_wrongtype() {
    let s = Server::start();
    let mut c = s.conn();
    q::<i64>(&mut c, &["SADD", "set", "a"]);
    q::<i64>(&mut c, &["HSET", "hash", "f", "1"]);
    for key in ["set", "hash"] {
        for args in [
            vec!["INCR", key],
            vec!["DECR", key],
            vec!["INCRBY", key, "2"],
            vec!["DECRBY", key, "2"],
            vec!["INCRBYFLOAT", key, "1.5"],
        ] {
            assert_eq!(qerr(&mut c, &args), WRONGTYPE, "{args:?}");
        }
    }
    assert_eq!(q::<i64>(&mut c, &["SCARD", "set"]), 1);
    assert_eq!(
        qerr(&mut c, &["INCR"]),
        "ERR wrong number of arguments for 'incr' command"
    );
    assert_eq!(
        qerr(&mut c, &["INCRBY", "k"]),
        "ERR wrong number of arguments for 'incrby' command"
    );
    assert_eq!(
        qerr(&mut c, &["INCRBYFLOAT", "k", "1", "2"]),
        "ERR wrong number of arguments for 'incrbyfloat' command"
    );
}

#[test]
fn counter_replies_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["INCR", "n"],
            &["INCRBY", "n", "100"],
            &["DECRBY", "n", "7"],
            &["DECR", "n"],
            &["GET", "n"],
            &["INCRBY", "n", "x"],
            &["SET", "m", "9223372036854775807"],
            &["INCR", "m"],
            &["GET", "m"],
            &["DECRBY", "m", "-9223372036854775808"],
            &["SET", "f", "10.50"],
            &["INCRBYFLOAT", "f", "0.1"],
            &["INCRBYFLOAT", "f", "x"],
            &["INCRBYFLOAT", "f", "inf"],
            &["SET", "s", "abc"],
            &["INCR", "s"],
            &["SADD", "t", "m"],
            &["INCR", "t"],
            &["INCRBYFLOAT", "t", "1"],
        ],
    );
}
