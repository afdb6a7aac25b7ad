//! Fuzz-style property tests: random argument vectors (command names from the server's own
//! table, mixed-case or garbage, with keys, huge/negative/odd numbers, option keywords, empty
//! and random byte strings) must never panic the command layer or crash the server.
//!
//! - In process: sequences go straight to `meridian::connection::execute` against one shared
//!   store, so a panic is caught by proptest and shrunk to a minimal command sequence.
//! - Over the wire: the real binary gets the same kind of sequences (one connection per case)
//!   plus random and mutated RESP bytes, and must still answer PING on a fresh connection.

mod common;

use bytes::Bytes;
use common::*;
use meridian::cmd::ConnState;
use meridian::config::Config;
use meridian::server::Server as Node;
use proptest::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::OnceLock;

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
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn command_layer_never_panics(reqs in prop::collection::vec(request(names()), 1..16)) {
        let p = in_process();
        let (store, shared) = (&p.node.store, &p.node.shared);
        let now = meridian::server::now_ms();
        let mut conn = ConnState::new(1, "127.0.0.1:1".into(), now);
        for req in &reqs {
            let args: Vec<Bytes> = req.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            let _ = meridian::connection::execute(store, shared, &mut conn, &args, now);
        }
        // Leave no transaction or watch behind; undo limits a case may have set.
        for end in [&["DISCARD"][..], &["UNWATCH"]] {
            let args: Vec<Bytes> = end.iter().map(|a| Bytes::from_static(a.as_bytes())).collect();
            let _ = meridian::connection::execute(store, shared, &mut conn, &args, now);
        }
        store.runtime.maxmemory.store(0, Relaxed);
        store.runtime.proto_max_bulk_len.store(MAX_BULK, Relaxed);
        // The store still works after whatever the case did.
        let get = [Bytes::from_static(b"PING")];
        let reply = meridian::connection::execute(store, shared, &mut conn, &get, now);
        prop_assert_eq!(reply, meridian::frame::Reply::Simple("PONG".into()));
    }
}

/// The real server, shared by the over-the-wire cases, with an admin connection that undoes
/// limits (maxclients, maxmemory) a random CONFIG SET may have imposed.
struct Wire {
    server: Server,
    admin: std::sync::Mutex<Raw>,
}

fn wire() -> &'static Wire {
    static WIRE: OnceLock<Wire> = OnceLock::new();
    WIRE.get_or_init(|| {
        let server = Server::start_with(&["--proto-max-bulk-len", "1mb"]);
        let admin = std::sync::Mutex::new(server.raw());
        Wire { server, admin }
    })
}

fn reset_and_check(w: &Wire) {
    let mut admin = w.admin.lock().unwrap();
    let reset = admin.cmd(&[
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
    drop(admin);
    let mut fresh = w.server.raw();
    assert_eq!(
        fresh.cmd(&["PING"]),
        Resp::Simple("PONG".into()),
        "server stopped answering"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 60, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn server_survives_random_commands(reqs in prop::collection::vec(request(names()), 1..12)) {
        let w = wire();
        let mut raw = w.server.raw();
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
        drop(raw);
        reset_and_check(w);
    }

    #[test]
    fn server_survives_random_and_mutated_bytes(
        base in prop::collection::vec(request(names()), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        noise_first in any::<bool>(),
    ) {
        let w = wire();
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
        let mut raw = w.server.raw();
        raw.send(&bytes);
        raw.shutdown_write();
        // Drain until the server closes or stops sending; the content does not matter.
        raw.stream.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
        while raw.try_read().is_some() {}
        drop(raw);
        reset_and_check(w);
    }
}
