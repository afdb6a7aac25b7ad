//! Bitmaps and string extras (SETBIT, GETBIT, BITCOUNT, BITPOS, BITOP, BITFIELD,
//! BITFIELD_RO, LCS): every reply compared with a real redis-server's, byte for byte, and
//! the same commands through the `redis` crate.

mod common;

use common::{assert_same_as_redis, q, Server};

#[test]
fn bitmap_replies_match_redis_server() {
    let s = Server::start();
    assert_same_as_redis(
        &s,
        &[
            &["SETBIT", "b", "7", "1"],
            &["SETBIT", "b", "7", "0"],
            &["SETBIT", "b", "100", "1"],
            &["GET", "b"],
            &["GETBIT", "b", "100"],
            &["GETBIT", "b", "101"],
            &["GETBIT", "b", "100000"],
            &["GETBIT", "nokey", "3"],
            &["SETBIT", "b", "-1", "1"],
            &["SETBIT", "b", "4294967296", "1"],
            &["SETBIT", "b", "1", "2"],
            &["SETBIT", "b", "x", "1"],
            &["GETBIT", "b", "-1"],
            &["SET", "s", "foobar"],
            &["BITCOUNT", "s"],
            &["BITCOUNT", "s", "0", "0"],
            &["BITCOUNT", "s", "1", "1"],
            &["BITCOUNT", "s", "1", "1", "BYTE"],
            &["BITCOUNT", "s", "5", "30", "BIT"],
            &["BITCOUNT", "s", "-2", "-1"],
            &["BITCOUNT", "s", "-1", "-2"],
            &["BITCOUNT", "s", "0", "100"],
            &["BITCOUNT", "s", "0"],
            &["BITCOUNT", "s", "0", "1", "WORD"],
            &["BITCOUNT", "s", "a", "1"],
            &["BITCOUNT", "nokey"],
            &["SET", "p", "\u{0}\u{ff}\u{f0}"],
            &["BITPOS", "p", "1"],
            &["BITPOS", "p", "0"],
            &["BITPOS", "p", "1", "2"],
            &["BITPOS", "p", "1", "2", "-1", "BYTE"],
            &["BITPOS", "p", "1", "7", "15", "BIT"],
            &["BITPOS", "p", "0", "8", "15", "BIT"],
            &["BITPOS", "p", "2"],
            &["BITPOS", "nokey", "1"],
            &["BITPOS", "nokey", "0"],
            &["SET", "ones", "\u{7f}"],
            &["BITPOS", "ones", "0"],
            &["BITPOS", "ones", "0", "0", "-1"],
            &["SET", "x", "\u{7f}\u{7f}"],
            &["SETBIT", "full", "0", "1"],
            &["BITPOS", "full", "1", "5", "2"],
            &["SET", "k1", "foobar"],
            &["SET", "k2", "abcdef"],
            &["BITOP", "AND", "dest", "k1", "k2"],
            &["GET", "dest"],
            &["BITOP", "OR", "dest", "k1", "k2", "nokey"],
            &["GET", "dest"],
            &["BITOP", "XOR", "dest", "k1", "x"],
            &["GET", "dest"],
            &["BITOP", "NOT", "dest", "k1"],
            &["GET", "dest"],
            &["BITOP", "NOT", "dest", "k1", "k2"],
            &["BITOP", "NAND", "dest", "k1"],
            &["BITOP", "AND", "dest", "nokey"],
            &["EXISTS", "dest"],
            &["SADD", "set", "m"],
            &["BITOP", "AND", "dest", "k1", "set"],
            &["SETBIT", "set", "1", "1"],
            &["BITFIELD", "bf", "SET", "i8", "0", "100", "GET", "u4", "0"],
            &["BITFIELD", "bf", "INCRBY", "i8", "0", "100"],
            &[
                "BITFIELD", "bf", "OVERFLOW", "SAT", "INCRBY", "i8", "0", "100",
            ],
            &[
                "BITFIELD", "bf", "OVERFLOW", "FAIL", "INCRBY", "i8", "0", "100",
            ],
            &[
                "BITFIELD", "bf", "INCRBY", "u2", "100", "1", "INCRBY", "u2", "100", "1",
            ],
            &[
                "BITFIELD", "bf", "INCRBY", "u2", "100", "1", "INCRBY", "u2", "100", "1",
            ],
            &["BITFIELD", "bf", "SET", "u8", "#1", "255", "GET", "u8", "8"],
            &["BITFIELD", "bf", "GET", "i64", "0", "GET", "u63", "1"],
            &["GET", "bf"],
            &["BITFIELD", "bf", "GET", "u64", "0"],
            &["BITFIELD", "bf", "GET", "i65", "0"],
            &["BITFIELD", "bf", "GET", "x8", "0"],
            &["BITFIELD", "bf", "GET", "u8", "-1"],
            &["BITFIELD", "bf", "SET", "u8", "0", "x"],
            &["BITFIELD", "bf", "OVERFLOW", "BAD"],
            &["BITFIELD", "bf", "GET", "u8"],
            &["BITFIELD", "bf", "FOO"],
            &["BITFIELD", "bf"],
            &["BITFIELD", "nokey", "GET", "u8", "0"],
            &["EXISTS", "nokey"],
            &["BITFIELD_RO", "bf", "GET", "u8", "0"],
            &["BITFIELD_RO", "bf", "SET", "u8", "0", "1"],
            &["BITFIELD", "set", "GET", "u8", "0"],
            &["SET", "l1", "ohmytext"],
            &["SET", "l2", "mynewtext"],
            &["LCS", "l1", "l2"],
            &["LCS", "l1", "l2", "LEN"],
            &["LCS", "l1", "l2", "IDX"],
            &["LCS", "l1", "l2", "IDX", "MINMATCHLEN", "4"],
            &["LCS", "l1", "l2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"],
            &["LCS", "l1", "l2", "IDX", "WITHMATCHLEN"],
            &["LCS", "l1", "l2", "LEN", "IDX"],
            &["LCS", "l1", "nokey"],
            &["LCS", "l1", "set"],
            &["LCS", "l1", "l2", "BAD"],
            &["LCS", "l1", "l2", "MINMATCHLEN", "x"],
            &["SETBIT", "b"],
            &["GETBIT", "b"],
        ],
    );
}

/// Through the redis crate: a presence bitmap of 10 000 users, counted and searched.
#[test]
fn a_presence_bitmap_through_a_client() {
    let s = Server::start();
    let mut c = s.conn();
    for u in (0..10_000u32).filter(|u| u % 3 == 0) {
        let _: i64 = q(&mut c, &["SETBIT", "online", &u.to_string(), "1"]);
    }
    let n: i64 = q(&mut c, &["BITCOUNT", "online"]);
    assert_eq!(n, 3334);
    let first_off: i64 = q(&mut c, &["BITPOS", "online", "0"]);
    assert_eq!(first_off, 1);
    let len: i64 = q(&mut c, &["STRLEN", "online"]);
    assert_eq!(len, 1250);
    let _: i64 = q(&mut c, &["BITOP", "NOT", "offline", "online"]);
    let off: i64 = q(&mut c, &["BITCOUNT", "offline"]);
    assert_eq!(off, 1250 * 8 - 3334);
}
