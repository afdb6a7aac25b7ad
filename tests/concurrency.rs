//! Many clients at once: 200 concurrent connections updating shared keys lose no update;
//! maxclients refuses the connection past the limit with Redis' error, and frees the slot
//! when a client leaves.

mod common;

use common::*;
use std::collections::HashSet;
use std::sync::Barrier;

const CLIENTS: usize = 200;
const OPS_PER_CLIENT: usize = 50;

#[test]
fn two_hundred_clients_increment_exactly() {
    let s = Server::start();
    let barrier = Barrier::new(CLIENTS);
    std::thread::scope(|scope| {
        for t in 0..CLIENTS {
            let (s, barrier) = (&s, &barrier);
            scope.spawn(move || {
                let mut c = s.conn();
                // Everyone connected before anyone starts: maximal overlap.
                barrier.wait();
                for i in 0..OPS_PER_CLIENT {
                    q::<i64>(&mut c, &["INCR", "shared"]);
                    q::<i64>(&mut c, &["INCRBY", "shared:by3", "3"]);
                    q::<i64>(&mut c, &["HINCRBY", "hash", "field", "1"]);
                    q::<i64>(&mut c, &["SADD", "members", &format!("{t}:{i}")]);
                    q::<()>(&mut c, &["SET", &format!("own:{t}"), &i.to_string()]);
                }
            });
        }
    });
    let mut c = s.conn();
    let total = CLIENTS * OPS_PER_CLIENT;
    assert_eq!(q::<usize>(&mut c, &["GET", "shared"]), total);
    assert_eq!(q::<usize>(&mut c, &["GET", "shared:by3"]), 3 * total);
    assert_eq!(q::<usize>(&mut c, &["HGET", "hash", "field"]), total);
    assert_eq!(q::<usize>(&mut c, &["SCARD", "members"]), total);
    // Each client's last write is the one that stuck.
    for t in (0..CLIENTS).step_by(37) {
        assert_eq!(
            q::<usize>(&mut c, &["GET", &format!("own:{t}")]),
            OPS_PER_CLIENT - 1
        );
    }
    assert_eq!(q::<usize>(&mut c, &["DBSIZE"]), 4 + CLIENTS);
}

#[test]
fn concurrent_clients_get_distinct_ids_and_are_listed() {
    let s = Server::start();
    let mut conns: Vec<redis::Connection> = (0..50).map(|_| s.conn()).collect();
    let ids: HashSet<i64> = conns
        .iter_mut()
        .map(|c| q::<i64>(c, &["CLIENT", "ID"]))
        .collect();
    assert_eq!(ids.len(), 50);
    let mut probe = s.conn();
    wait_until(WAIT_TIMEOUT, "INFO counts all 51 clients", || {
        info_u64(&mut probe, "connected_clients") == 51
    });
    let list: String = q(&mut probe, &["CLIENT", "LIST"]);
    assert_eq!(list.lines().count(), 51);
}

fn assert_rejected(s: &Server) {
    let mut raw = s.raw();
    assert_eq!(raw.read(), Resp::err("ERR max number of clients reached"));
    raw.assert_closed();
}

#[test]
fn maxclients_via_config_set() {
    let s = Server::start();
    let mut admin = s.conn();
    q::<()>(&mut admin, &["CONFIG", "SET", "maxclients", "2"]);
    let mut second = s.conn();
    assert_eq!(q::<String>(&mut second, &["PING"]), "PONG");
    assert_rejected(&s);
    // A client library cannot use the refused connection either (redis-rs reads the refusal
    // as the reply to its handshake, then hits the closed socket).
    s.client()
        .get_connection()
        .and_then(|mut c| cmd(&["PING"]).query::<String>(&mut c))
        .expect_err("third connection must be refused");
    assert!(info_u64(&mut admin, "rejected_connections") >= 2);
    // Existing clients are unaffected.
    assert_eq!(q::<String>(&mut admin, &["PING"]), "PONG");
    // A client leaving frees its slot.
    drop(second);
    wait_until(
        WAIT_TIMEOUT,
        "a new client is accepted after one left",
        || {
            let mut raw = s.raw();
            raw.try_cmd(&["PING"]) == Some(Resp::Simple("PONG".into()))
        },
    );
    // Raising the limit admits more.
    q::<()>(&mut admin, &["CONFIG", "SET", "maxclients", "10"]);
    let more: Vec<redis::Connection> = (0..5).map(|_| s.conn()).collect();
    assert_eq!(more.len(), 5);
}

#[test]
fn maxclients_from_the_command_line() {
    let s = Server::start_with(&["--maxclients", "1"]);
    let mut only = s.conn();
    assert_eq!(
        q::<std::collections::HashMap<String, String>>(&mut only, &["CONFIG", "GET", "maxclients"])
            ["maxclients"],
        "1"
    );
    assert_rejected(&s);
    assert_eq!(q::<String>(&mut only, &["PING"]), "PONG");
}
