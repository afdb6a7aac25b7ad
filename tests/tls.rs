//! TLS on the client port (`tls-port`), the in-region replica stream (`tls-replication`)
//! and MIGRATE (`tls-cluster`), with real clients: redis-cli `--tls`, redis-py over TLS, the
//! `redis` crate on the plain port. Certificates (a CA, a node certificate, a client
//! certificate, and a client certificate from another CA) are made with rcgen per test.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::PathBuf;
use std::process::Command;

/// A temp dir of PEM files: `ca.pem`; `node.pem`/`node-key.pem` (SANs 127.0.0.1 and
/// localhost, server and client use); `client.pem`/`client-key.pem`; `rogue.pem`/
/// `rogue-key.pem`, a client certificate from an untrusted CA. Removed on drop.
struct Certs {
    dir: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let pem = params.self_signed(&key).expect("CA certificate").pem();
    (params, key, pem)
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    sans: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> (String, String) {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("certificate params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

impl Certs {
    fn new() -> Certs {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meridian-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("certs dir");
        let (ca_params, ca_key, ca_pem) = ca("meridian test CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let (node, node_key) = leaf(
            &issuer,
            "meridian node",
            &["127.0.0.1", "localhost"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) = leaf(
            &issuer,
            "meridian client",
            &["client"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let (rogue_params, rogue_key, _) = ca("someone else's CA");
        let rogue_issuer = Issuer::new(rogue_params, rogue_key);
        let (rogue, rogue_key) = leaf(
            &rogue_issuer,
            "rogue client",
            &["client"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        for (name, pem) in [
            ("ca.pem", ca_pem),
            ("node.pem", node),
            ("node-key.pem", node_key),
            ("client.pem", client),
            ("client-key.pem", client_key),
            ("rogue.pem", rogue),
            ("rogue-key.pem", rogue_key),
        ] {
            std::fs::write(dir.join(name), pem).expect("write PEM");
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The TOML keys of a node serving TLS with the node certificate, plus `extra`.
    fn toml(&self, tls_port: u16, extra: &str) -> String {
        format!(
            "tls-port = {tls_port}\ntls-cert-file = \"{}\"\ntls-key-file = \"{}\"\ntls-ca-cert-file = \"{}\"\n{extra}\n",
            self.path("node.pem"),
            self.path("node-key.pem"),
            self.path("ca.pem"),
        )
    }

    /// A node with a plain port and a TLS port (both free ports).
    fn server(&self, extra: &str) -> Server {
        let s = Server::start_with_config(
            &self.toml(free_port(), extra),
            &["--port", &free_port().to_string()],
        );
        assert_ne!(s.tls_port, 0, "the TLS port is reported");
        assert_ne!(s.tls_port, s.port);
        s
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redis-cli over TLS to `port` with `tls_args` (`--cacert …`, `--cert …`), running `args`.
fn cli_tls(port: u16, tls_args: &[String], args: &[&str]) -> std::process::Output {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .args(tls_args)
        .args(args)
        .output()
        .expect("run redis-cli")
}

fn with_client_cert(c: &Certs) -> Vec<String> {
    vec![
        "--cacert".into(),
        c.path("ca.pem"),
        "--cert".into(),
        c.path("client.pem"),
        "--key".into(),
        c.path("client-key.pem"),
    ]
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn redis_cli_over_tls_pings_sets_and_gets() {
    if !tool_available("redis-cli") {
        return;
    }
    let c = Certs::new();
    // Three client threads, each with its own listeners on both ports.
    let s = c.server("io-threads = 3");
    let tls = with_client_cert(&c);
    for _ in 0..6 {
        assert_eq!(stdout(&cli_tls(s.tls_port, &tls, &["PING"])), "PONG");
    }
    assert_eq!(
        stdout(&cli_tls(s.tls_port, &tls, &["SET", "k", "over tls"])),
        "OK"
    );
    assert_eq!(
        stdout(&cli_tls(s.tls_port, &tls, &["GET", "k"])),
        "over tls"
    );
    // One keyspace: the plain port sees what TLS clients wrote.
    let mut con = s.conn();
    assert_eq!(q::<String>(&mut con, &["GET", "k"]), "over tls");
    // CLIENT LIST names each client's own port as laddr.
    let info = stdout(&cli_tls(s.tls_port, &tls, &["CLIENT", "INFO"]));
    assert!(
        info.contains(&format!("laddr=127.0.0.1:{} ", s.tls_port)),
        "{info}"
    );
    let info: String = q(&mut con, &["CLIENT", "INFO"]);
    assert!(
        info.contains(&format!("laddr=127.0.0.1:{} ", s.port)),
        "{info}"
    );
    // CONFIG GET reports the TLS keys.
    let got: Vec<String> = q(&mut con, &["CONFIG", "GET", "tls-*"]);
    let pairs: std::collections::HashMap<_, _> = got
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    assert_eq!(pairs["tls-port"], s.tls_port.to_string());
    assert_eq!(pairs["tls-auth-clients"], "yes");
    assert_eq!(pairs["tls-replication"], "no");
    assert_eq!(pairs["tls-cert-file"], c.path("node.pem"));
    assert!(qerr(&mut con, &["CONFIG", "SET", "tls-port", "1"]).contains("immutable"));
}

#[test]
fn redis_py_over_tls() {
    if !tool_available("python3") {
        return;
    }
    let c = Certs::new();
    let s = c.server("");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/tls_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(format!("127.0.0.1:{}", s.tls_port))
        .args([
            c.path("ca.pem"),
            c.path("client.pem"),
            c.path("client-key.pem"),
        ])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim_end().ends_with("OK tls"),
        "redis-py over TLS failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client that cannot complete the handshake is refused and counted, and everyone else
/// is served on.
#[test]
fn failed_handshakes_are_refused_and_counted() {
    if !tool_available("redis-cli") {
        return;
    }
    let c = Certs::new();
    let s = c.server("");
    let mut con = s.conn();
    assert_eq!(info_u64(&mut con, "tls_handshake_failures"), 0);
    // A plain client on the TLS port.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}/", s.tls_port))
        .expect("url")
        .get_connection_with_timeout(IO_TIMEOUT)
        .and_then(|mut p| redis::cmd("PING").query::<String>(&mut p));
    assert!(plain.is_err(), "a plain client was served on the TLS port");
    // Raw bytes too: no reply, the connection is closed (a TLS alert at most).
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", s.tls_port)).expect("connect");
        raw.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        raw.write_all(b"PING\r\n").expect("write");
        let mut got = Vec::new();
        let _ = raw.read_to_end(&mut got);
        assert!(!String::from_utf8_lossy(&got).contains("PONG"), "{got:?}");
    }
    // No client certificate while tls-auth-clients is yes (the default).
    let no_cert = vec!["--cacert".to_string(), c.path("ca.pem")];
    let o = cli_tls(s.tls_port, &no_cert, &["PING"]);
    assert_ne!(
        stdout(&o),
        "PONG",
        "a client without a certificate was served"
    );
    // A certificate from another CA.
    let rogue = vec![
        "--cacert".into(),
        c.path("ca.pem"),
        "--cert".into(),
        c.path("rogue.pem"),
        "--key".into(),
        c.path("rogue-key.pem"),
    ];
    let o = cli_tls(s.tls_port, &rogue, &["PING"]);
    assert_ne!(
        stdout(&o),
        "PONG",
        "a client with an untrusted certificate was served"
    );
    wait_until(WAIT_TIMEOUT, "four handshake failures counted", || {
        info_u64(&mut con, "tls_handshake_failures") >= 4
    });
    // The node serves on, both ports.
    assert_eq!(q::<String>(&mut con, &["PING"]), "PONG");
    let tls = with_client_cert(&c);
    assert_eq!(stdout(&cli_tls(s.tls_port, &tls, &["PING"])), "PONG");
}

#[test]
fn tls_auth_clients_no_and_optional() {
    if !tool_available("redis-cli") {
        return;
    }
    let c = Certs::new();
    let no_cert = vec!["--cacert".to_string(), c.path("ca.pem")];
    let rogue = vec![
        "--cacert".into(),
        c.path("ca.pem"),
        "--cert".into(),
        c.path("rogue.pem"),
        "--key".into(),
        c.path("rogue-key.pem"),
    ];
    let s = c.server("tls-auth-clients = \"no\"");
    assert_eq!(stdout(&cli_tls(s.tls_port, &no_cert, &["PING"])), "PONG");
    let s = c.server("tls-auth-clients = \"optional\"");
    assert_eq!(stdout(&cli_tls(s.tls_port, &no_cert, &["PING"])), "PONG");
    let tls = with_client_cert(&c);
    assert_eq!(stdout(&cli_tls(s.tls_port, &tls, &["PING"])), "PONG");
    // Optional still checks a certificate that is sent.
    assert_ne!(stdout(&cli_tls(s.tls_port, &rogue, &["PING"])), "PONG");
}

/// `port 0` next to `tls-port` turns the plain port off: TLS only.
#[test]
fn port_zero_with_tls_port_serves_tls_only() {
    if !tool_available("redis-cli") {
        return;
    }
    let c = Certs::new();
    let tls_port = free_port();
    let s = Server::start_with_config(&c.toml(tls_port, "port = 0"), &["--port", "0"]);
    assert_eq!((s.port, s.tls_port), (tls_port, tls_port));
    let tls = with_client_cert(&c);
    assert_eq!(stdout(&cli_tls(tls_port, &tls, &["SET", "a", "1"])), "OK");
    assert_eq!(
        stdout(&cli_tls(tls_port, &tls, &["CONFIG", "GET", "port"])),
        "port\n0"
    );
}

/// Bad certificate or key files stop the start with the file named, no panic.
#[test]
fn bad_certificate_files_stop_the_start() {
    let c = Certs::new();
    let missing = c.dir.join("missing.pem");
    let garbage = c.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let cases = [
        (
            format!(
                "tls-port = {}\ntls-cert-file = \"{}\"\ntls-key-file = \"{}\"\ntls-ca-cert-file = \"{}\"\n",
                free_port(),
                missing.display(),
                c.path("node-key.pem"),
                c.path("ca.pem")
            ),
            "tls-cert-file",
        ),
        (
            format!(
                "tls-port = {}\ntls-cert-file = \"{}\"\ntls-key-file = \"{}\"\ntls-ca-cert-file = \"{}\"\n",
                free_port(),
                c.path("node.pem"),
                garbage.display(),
                c.path("ca.pem")
            ),
            "tls-key-file",
        ),
        (
            // The key of another certificate.
            format!(
                "tls-port = {}\ntls-cert-file = \"{}\"\ntls-key-file = \"{}\"\ntls-ca-cert-file = \"{}\"\n",
                free_port(),
                c.path("node.pem"),
                c.path("client-key.pem"),
                c.path("ca.pem")
            ),
            "tls-key-file",
        ),
        (
            format!(
                "tls-port = {}\ntls-cert-file = \"{}\"\ntls-key-file = \"{}\"\n",
                free_port(),
                c.path("node.pem"),
                c.path("node-key.pem"),
            ),
            "tls-ca-cert-file",
        ),
    ];
    for (toml, named) in cases {
        let path = c.dir.join("bad.toml");
        std::fs::write(&path, &toml).expect("write config");
        let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["--port", "0", "--config"])
            .arg(&path)
            .output()
            .expect("run meridian");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "exit {:?} for {toml}: {err}",
            out.status
        );
        assert!(err.contains(named), "{named} not named in {err:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A replica with `tls-replication yes` syncs from its primary's TLS port (which speaks
/// nothing else) and serves the data; the stream goes on over TLS.
#[test]
fn replica_syncs_over_tls() {
    let c = Certs::new();
    let primary = c.server("");
    let mut p = primary.conn();
    for i in 0..100 {
        let _: () = q(&mut p, &["SET", &format!("k{i}"), &format!("v{i}")]);
    }
    let replica = c.server(&format!(
        "tls-replication = true\nreplicaof = \"127.0.0.1 {}\"",
        primary.tls_port
    ));
    let mut r = replica.conn();
    wait_until(WAIT_TIMEOUT, "the replica's link is up", || {
        info_field(&mut r, "master_link_status") == "up"
    });
    wait_until(WAIT_TIMEOUT, "the snapshot arrived", || {
        q::<Option<String>>(&mut r, &["GET", "k99"]).as_deref() == Some("v99")
    });
    // The live stream, and WAIT counting the TLS replica's acks.
    let _: () = q(&mut p, &["SET", "live", "yes"]);
    let acked: i64 = q(&mut p, &["WAIT", "1", "30000"]);
    assert_eq!(acked, 1);
    assert_eq!(q::<String>(&mut r, &["GET", "live"]), "yes");
    assert_eq!(info_u64(&mut p, "connected_slaves"), 1);
    // The primary lists the replica under its TLS port (where it serves).
    let info: String = q(&mut p, &["INFO", "replication"]);
    assert!(
        info.contains(&format!("port={}", replica.tls_port)),
        "{info}"
    );
    let mut replica = replica;
    replica.assert_alive();
}

/// A replica without `tls-replication` cannot sync from a TLS port: the link stays down.
#[test]
fn replica_without_tls_replication_cannot_use_the_tls_port() {
    let c = Certs::new();
    let primary = c.server("");
    let mut p = primary.conn();
    let _: () = q(&mut p, &["SET", "k", "v"]);
    let replica = Server::start_with(&["--replicaof", &format!("127.0.0.1 {}", primary.tls_port)]);
    let mut r = replica.conn();
    // Failed handshakes from the replica's retries are counted by the primary.
    wait_until(
        WAIT_TIMEOUT,
        "the primary refuses the plain replica",
        || info_u64(&mut p, "tls_handshake_failures") >= 1,
    );
    assert_eq!(info_field(&mut r, "master_link_status"), "down");
    assert_eq!(info_u64(&mut p, "connected_slaves"), 0);
}

/// MIGRATE with `tls-cluster yes` moves keys to a target's TLS port; without it the TLS
/// port refuses the plain connection and the key stays.
#[test]
fn migrate_over_tls() {
    let c = Certs::new();
    let target = c.server("");
    let source = c.server("tls-cluster = true");
    let plain_source = c.server("");
    let (mut s, mut t) = (source.conn(), target.conn());
    let _: () = q(&mut s, &["SET", "m1", "one"]);
    let _: () = q(&mut s, &["SADD", "m2", "a", "b"]);
    let port = target.tls_port.to_string();
    let reply: String = q(
        &mut s,
        &[
            "MIGRATE",
            "127.0.0.1",
            &port,
            "",
            "0",
            "5000",
            "KEYS",
            "m1",
            "m2",
        ],
    );
    assert_eq!(reply, "OK");
    assert_eq!(q::<String>(&mut t, &["GET", "m1"]), "one");
    assert_eq!(q::<i64>(&mut t, &["SCARD", "m2"]), 2);
    assert_eq!(q::<i64>(&mut s, &["EXISTS", "m1", "m2"]), 0);

    let mut ps = plain_source.conn();
    let _: () = q(&mut ps, &["SET", "m3", "three"]);
    // An error (what the TLS port answers plain text with is a TLS alert, no reply).
    let e = qerr(&mut ps, &["MIGRATE", "127.0.0.1", &port, "m3", "0", "2000"]);
    assert!(!e.is_empty());
    assert_eq!(q::<String>(&mut ps, &["GET", "m3"]), "three");
    assert_eq!(q::<Option<String>>(&mut t, &["GET", "m3"]), None);
}

/// A two-primary cluster with `tls-cluster yes` and no plain ports: the nodes announce their
/// TLS ports (CLUSTER NODES, MOVED), MIGRATE moves a slot's key over TLS, and
/// `redis-cli -c --tls` follows the redirect to the new owner.
#[test]
fn tls_cluster_announces_tls_ports_and_migrates_over_tls() {
    if !tool_available("redis-cli") {
        return;
    }
    let c = Certs::new();
    let tls_ports = [free_port(), free_port()];
    let bus = [free_port(), free_port()];
    let slots = ["0-8191", "8192-16383"];
    let nodes: Vec<Server> = (0..2)
        .map(|i| {
            let other = 1 - i;
            let toml = c.toml(
                tls_ports[i],
                &format!(
                    "port = 0\ntls-cluster = true\ntls-replication = true\n[cluster]\nbus-port = {}\nnode-timeout-ms = 5000\nnodes-file = \"{}/nodes-{{port}}.json\"\nmeet = [\"127.0.0.1:{}@{}\"]\nslots = \"{}\"\n",
                    bus[i],
                    c.dir.display(),
                    tls_ports[other],
                    bus[other],
                    slots[i]
                ),
            );
            Server::start_with_config(&toml, &["--port", "0"])
        })
        .collect();
    assert_eq!(nodes[0].port, tls_ports[0], "TLS only");
    let tls = with_client_cert(&c);
    let on = |i: usize, args: &[&str]| stdout(&cli_tls(tls_ports[i], &tls, args));
    for i in 0..2 {
        wait_until(WAIT_TIMEOUT, "cluster_state:ok", || {
            on(i, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
        });
    }
    // Every node is listed at its TLS port.
    let listed = on(0, &["CLUSTER", "NODES"]);
    for p in tls_ports {
        assert!(listed.contains(&format!("127.0.0.1:{p}@")), "{listed}");
    }
    // A key of node 0's slots, moved to node 1 the way a resharding does.
    let key = "{tls}k";
    let slot = key_slot(b"tls").to_string();
    assert!(key_slot(b"tls") <= 8191, "the key's slot is node 0's");
    assert_eq!(on(0, &["SET", key, "secret"]), "OK");
    let id0 = on(0, &["CLUSTER", "MYID"]);
    let id1 = on(1, &["CLUSTER", "MYID"]);
    assert_eq!(
        on(1, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &id0]),
        "OK"
    );
    assert_eq!(
        on(0, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &id1]),
        "OK"
    );
    let port1 = tls_ports[1].to_string();
    assert_eq!(
        on(0, &["MIGRATE", "127.0.0.1", &port1, key, "0", "5000"]),
        "OK"
    );
    for i in 0..2 {
        assert_eq!(on(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &id1]), "OK");
    }
    // MOVED names the TLS port, and redis-cli -c follows it over TLS.
    let moved = on(0, &["GET", key]);
    assert!(moved.contains(&format!("127.0.0.1:{port1}")), "{moved}");
    let out = Command::new("redis-cli")
        .args([
            "-c",
            "-h",
            "127.0.0.1",
            "-p",
            &tls_ports[0].to_string(),
            "--tls",
        ])
        .args(&tls)
        .args(["GET", key])
        .output()
        .expect("run redis-cli -c");
    assert_eq!(stdout(&out), "secret");
}
