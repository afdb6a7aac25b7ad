//! Fuzz-style property tests: random argument vectors (command names from the server's own
//! table, mixed-case or garbage, with keys, huge/negative/odd numbers, option keywords, empty
//! and random byte strings) must never panic the command layer or crash the server.
//!
//! - In process: sequences go straight to `meridian::connection::execute` against one shared
//!   store, so a panic is caught by proptest and shrunk to a minimal command sequence.
//! - Over the wire: the real binary gets the same kind of sequences (one connection per case)
//!   plus random and mutated RESP bytes, and must still answer PING on a fresh connection.
//!
//! Found so far: `HSET h f 1 f 2` panicked the connection task and lost the hash (fixed in
//! `cmd/hash.rs`; regression test in tests/hashes.rs).

mod common;

use bytes::Bytes;
use common::*;
use meridian::cmd::ConnState;
use meridian::config::Config;
use meridian::server::Server as Node;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, OnceLock};

/// Bounded reply sizes: the per-test proto-max-bulk-len, and the magnitude of SRANDMEMBER's
/// negative count (its reply holds |count| members; the server caps it at 2^24, which would
/// cost hundreds of MB per case here).
const MAX_BULK: usize = 1 << 20;
const MAX_SRANDMEMBER_COUNT: i64 = 10_000;

fn command_names() -> Vec<String> {
    let mut names: Vec<String> = meridian::cmd::table()
        .keys()
        .map(|k| String::from_utf8(k.to_vec()).unwrap())
        .collect();
    names.sort();
    names
}

const KEYS: &[&str] = &["k", "k2", "{t}a", "{t}b", "s", "h", "n", ""];
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "10",
    "-10",
    "100",
    "16383",
    "16384",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "99999999999999999999999",
    "4611686018427387904",
    "1.5",
    "-0",
    "1e308",
    "1e-308",
    "inf",
    "-inf",
    "nan",
    "+1",
    " 1",
    "0x10",
    "007",
];
const WORDS: &[&str] = &[
    "NX",
    "XX",
    "GT",
    "LT",
    "EX",
    "PX",
    "EXAT",
    "PXAT",
    "KEEPTTL",
    "GET",
    "PERSIST",
    "MATCH",
    "COUNT",
    "TYPE",
    "ASYNC",
    "SYNC",
    "string",
    "set",
    "hash",
    "*",
    "?",
    "[a-",
    "\\",
    "[^]",
    "setname",
    "getname",
    "id",
    "info",
    "list",
    "get",
    "keyslot",
    "countkeysinslot",
    "getkeysinslot",
    "maxmemory",
    "maxmemory-policy",
    "maxmemory-samples",
    "maxclients",
    "allkeys-lru",
    "volatile-ttl",
    "noeviction",
    "docs",
    "getkeys",
    "deltas",
    "region",
    "AUTH",
    "SETNAME",
    "everything",
    "myid",
];

fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(|s| s.as_bytes().to_vec()),
        3 => prop::sample::select(NUMBERS).prop_map(|s| s.as_bytes().to_vec()),
        3 => prop::sample::select(WORDS).prop_map(|s| s.as_bytes().to_vec()),
        1 => any::<i64>().prop_map(|n| n.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..24),
        1 => Just(Vec::new()),
    ]
}

fn name(names: &'static [String]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::sample::select(names).prop_map(|n| n.into_bytes()),
        2 => (prop::sample::select(names), any::<u64>()).prop_map(|(n, mask)| {
            // Random letter case.
            n.bytes()
                .enumerate()
                .map(|(i, b)| if mask >> (i % 64) & 1 == 1 { b.to_ascii_uppercase() } else { b })
                .collect()
        }),
        1 => prop::collection::vec(any::<u8>(), 1..12),
    ]
}

/// One request: name + up to 8 arguments, with the unbounded-reply cases bounded.
fn request(names: &'static [String]) -> impl Strategy<Value = Vec<Vec<u8>>> {
    (name(names), prop::collection::vec(arg(), 0..8)).prop_map(|(n, args)| {
        let is_srandmember = n.eq_ignore_ascii_case(b"srandmember");
        let mut req = vec![n];
        for a in args {
            let bounded = match std::str::from_utf8(&a)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(v) if is_srandmember && v < -MAX_SRANDMEMBER_COUNT => b"-3".to_vec(),
                _ => a,
            };
            req.push(bounded);
        }
        req
    })
}

fn names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(command_names)
}

/// The names sent over the wire: not the blocking list commands, which on an empty key wait
/// for a push no case makes (in process they answer at once, as inside EXEC; tests/lists.rs
/// covers their blocking).
fn wire_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        command_names()
            .into_iter()
            .filter(|n| !meridian::cmd::list::BLOCKING.contains(&n.as_str()))
            .collect()
    })
}

/// One in-process node shared by every case (state carries over between cases on purpose).
struct InProcess {
    _rt: tokio::runtime::Runtime,
    node: Node,
}

fn in_process() -> &'static InProcess {
    static NODE: OnceLock<InProcess> = OnceLock::new();
    NODE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = Config {
            port: 0,
            proto_max_bulk_len: MAX_BULK,
            ..Config::default()
        };
        let node = rt
            .block_on(Node::bind(config))
            .expect("bind in-process node");
        InProcess { _rt: rt, node }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn command_layer_never_panics(reqs in prop::collection::vec(request(names()), 1..16)) {
        let p = in_process();
        let (store, shared) = (&p.node.store, &p.node.shared);
        let now = meridian::util::now_ms();
        let mut conn = ConnState::new(1, "127.0.0.1:1".into(), now);
        // One pipelined batch: shard guards pass from command to command, every one a batch
        // took kept as with one client thread (a command that locks on its own while a
        // guard is held would hang here).
        let mut held = meridian::store::Held::new(true);
        for req in &reqs {
            let args: Vec<Bytes> = req.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            let _ = meridian::connection::execute(store, shared, &mut conn, &args, now, &mut held);
        }
        // Leave no transaction or watch behind; undo limits a case may have set.
        for end in [&["DISCARD"][..], &["UNWATCH"]] {
            let args: Vec<Bytes> = end.iter().map(|a| Bytes::from_static(a.as_bytes())).collect();
            let _ = meridian::connection::execute(store, shared, &mut conn, &args, now, &mut held);
        }
        drop(held);
        store.runtime.maxmemory.store(0, Relaxed);
        store.runtime.proto_max_bulk_len.store(MAX_BULK, Relaxed);
        // The store still works after whatever the case did (asked by a fresh client: this
        // one may have entered subscribe mode, where PING answers ["pong", ""]).
        let mut fresh = ConnState::new(2, "127.0.0.1:2".into(), now);
        let get = [Bytes::from_static(b"PING")];
        let reply = meridian::connection::execute(store, shared, &mut fresh, &get, now, &mut meridian::store::Held::new(false));
        prop_assert_eq!(reply, meridian::frame::Reply::Simple("PONG".into()));
    }
}

/// Undo limits a random CONFIG SET may have imposed (maxclients, maxmemory), through a
/// connection opened before the case, then check a fresh client still gets PONG.
fn reset_and_check(server: &Server, admin: &Mutex<Raw>) {
    let reset = admin.lock().unwrap().cmd(&[
        "CONFIG",
        "SET",
        "maxclients",
        "10000",
        "maxmemory",
        "0",
        "proto-max-bulk-len",
        "1mb",
    ]);
    assert_eq!(reset, Resp::ok());
    let mut fresh = server.raw();
    assert_eq!(
        fresh.cmd(&["PING"]),
        Resp::Simple("PONG".into()),
        "server stopped answering"
    );
}

/// Run `cases` cases of `strategy` against one real server owned by the calling test (so it
/// is killed when the test ends, pass or fail).
fn run_against_server<S: Strategy>(cases: u32, strategy: S, case: impl Fn(&Server, S::Value))
where
    S::Value: std::fmt::Debug,
{
    let server = Server::start_with(&["--proto-max-bulk-len", "1mb"]);
    let admin = Mutex::new(server.raw());
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |value| {
        case(&server, value);
        reset_and_check(&server, &admin);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn server_survives_random_commands() {
    let strategy = prop::collection::vec(request(wire_names()), 1..12);
    run_against_server(60, strategy, |server, reqs| {
        let mut raw = server.raw();
        let mut bytes = Vec::new();
        for r in &reqs {
            bytes.extend(encode_cmd(r));
        }
        raw.send(&bytes);
        // Read what comes back (QUIT or a refused connection may end it early).
        for _ in 0..reqs.len() {
            if raw.try_read().is_none() {
                break;
            }
        }
    });
}

#[test]
fn server_survives_random_and_mutated_bytes() {
    let strategy = (
        prop::collection::vec(request(wire_names()), 1..4),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    );
    run_against_server(60, strategy, |server, (base, flips, noise, noise_first)| {
        let mut bytes: Vec<u8> = base.iter().flat_map(|r| encode_cmd(r)).collect();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        if noise_first {
            let mut v = noise;
            v.extend(bytes);
            bytes = v;
        } else {
            bytes.extend(noise);
        }
        let mut raw = server.raw();
        raw.send(&bytes);
        raw.shutdown_write();
        // Drain until the server closes or stops sending; the content does not matter.
        raw.stream
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        while raw.try_read().is_some() {}
    });
}
