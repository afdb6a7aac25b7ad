//! The Kafka invalidation stream against a real Kafka-compatible broker (tansu, started on a
//! free loopback port per test) and real `meridian` processes. Every check waits on a
//! condition with a deadline.

mod common;

use common::cluster::Cluster;
use common::{free_port, info_u64, q, qerr, tool_available, wait_until, Server};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::Offset;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Broker start, topic creation, consumer-group joins and replication on a loaded 2-core box.
const DEADLINE: Duration = Duration::from_secs(90);

/// A tansu broker; killed (by pid) on drop.
struct Broker {
    child: Option<Child>,
    port: u16,
    storage: String,
    /// Working directory (holds the SQLite file of a persistent broker).
    _dir: Option<PathBuf>,
}

impl Broker {
    /// `None` outside CI when tansu is not installed (CI fails instead).
    fn start() -> Option<Broker> {
        Broker::start_with("memory://tansu/".into(), None)
    }

    /// A broker whose data survives a restart (SQLite file).
    fn start_persistent() -> Option<Broker> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meridian-tansu-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        // tansu resolves a sqlite URL's path against its working directory.
        Broker::start_with("sqlite://tansu.db".into(), Some(dir))
    }

    fn start_with(storage: String, dir: Option<PathBuf>) -> Option<Broker> {
        if !tool_available("tansu") {
            return None;
        }
        let mut b = Broker {
            child: None,
            port: free_port(),
            storage,
            _dir: dir,
        };
        b.spawn();
        Some(b)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let cwd = self._dir.clone().unwrap_or_else(std::env::temp_dir);
        let child = Command::new("tansu")
            .current_dir(cwd)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let port = self.port;
        wait_until(DEADLINE, "tansu accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_topic(&self, name: &str, partitions: u32) {
        let broker = format!("tcp://127.0.0.1:{}", self.port);
        wait_until(DEADLINE, "topic created", || {
            Command::new("tansu")
                .args([
                    "topic",
                    "create",
                    name,
                    "--partitions",
                    &partitions.to_string(),
                ])
                .args(["--broker", &broker])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    fn producer(&self) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .set("linger.ms", "1")
            .create()
            .expect("test producer")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn send(p: &BaseProducer, topic: &str, key: Option<&str>, value: &[u8]) {
    let mut rec = BaseRecord::<str, [u8]>::to(topic).payload(value);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    p.send(rec).map_err(|(e, _)| e).expect("enqueue record");
}

fn flush(p: &BaseProducer) {
    p.flush(Duration::from_secs(60)).expect("records delivered");
}

fn versioned(v: u64) -> Vec<u8> {
    format!("{{\"version\":{v}}}").into_bytes()
}

fn kafka_toml(broker: &Broker, topic: &str, group: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\n",
        broker.addr()
    )
}

fn get(con: &mut redis::Connection, key: &str) -> Option<String> {
    q(con, &["GET", key])
}

fn applied(con: &mut redis::Connection) -> u64 {
    info_u64(con, "kafka_records_applied")
}

/// Two replicating regions on loopback; `kafka[i]` is region i's `[kafka]` table (if any).
fn two_regions(kafka: [Option<String>; 2]) -> (Vec<Server>, PathBuf) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("meridian-kregions-{}-{n}", std::process::id()));
    meridian_replication::transport::quic::write_deployment(&dir, &["a", "b"])
        .expect("write certificates");
    let udp: Vec<u16> = (0..2)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("ephemeral UDP port")
                .port()
        })
        .collect();
    let names = ["a", "b"];
    let d = dir.display();
    let servers = (0..2)
        .map(|i| {
            let j = 1 - i;
            let toml = format!(
                "region = \"{r}\"\nregion-id = {i}\n\n[replication]\nlisten = \"127.0.0.1:{port}\"\nca-cert = \"{d}/ca.pem\"\ncert = \"{d}/{r}.pem\"\nkey = \"{d}/{r}-key.pem\"\nresend-timeout-ms = 200\nanti-entropy-interval-ms = 2000\npeers = [ {{ region = \"{pr}\", region-id = {j}, addr = \"127.0.0.1:{pport}\" }} ]\n\n{k}",
                r = names[i],
                port = udp[i],
                pr = names[j],
                pport = udp[j],
                k = kafka[i].clone().unwrap_or_default(),
            );
            Server::start_with_config(&toml, &["--io-threads", "1"])
        })
        .collect();
    (servers, dir)
}

#[test]
fn set_then_invalidate_misses_in_every_region() {
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("inv", 2);
    let (regions, _dir) = two_regions([
        Some(kafka_toml(&broker, "inv", "meridian-a")),
        Some(kafka_toml(&broker, "inv", "meridian-b")),
    ]);
    let mut a = regions[0].conn();
    let mut b = regions[1].conn();
    let _: () = q(&mut a, &["SET", "user:1", "alice", "VERSION", "3"]);
    let _: () = q(&mut a, &["SET", "user:2", "bob"]);
    wait_until(DEADLINE, "b sees a's writes", || {
        get(&mut b, "user:1").is_some() && get(&mut b, "user:2").is_some()
    });

    let p = broker.producer();
    send(&p, "inv", Some("user:1"), &versioned(3));
    send(&p, "inv", Some("user:2"), b"");
    flush(&p);
    for (name, con) in [("a", &mut a), ("b", &mut b)] {
        wait_until(DEADLINE, &format!("region {name} misses"), || {
            get(con, "user:1").is_none() && get(con, "user:2").is_none()
        });
        // Each region consumes the whole stream with its own group.
        wait_until(DEADLINE, &format!("region {name} applied both"), || {
            applied(con) == 2
        });
    }
    assert_eq!(info_u64(&mut a, "kafka_records_malformed"), 0);
}

#[test]
fn stale_versioned_fill_is_refused_and_newer_accepted() {
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("inv", 1);
    let server = Server::start_with_config(&kafka_toml(&broker, "inv", "g1"), &[]);
    let mut con = server.conn();
    let _: () = q(&mut con, &["SET", "k", "v4", "VERSION", "4"]);

    // The CLI producer, as an operator would run it.
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["invalidate", "--brokers", &broker.addr(), "--topic", "inv"])
        .args(["--version", "5", "k"])
        .output()
        .expect("run meridian invalidate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(DEADLINE, "invalidation applied", || {
        get(&mut con, "k").is_none()
    });

    for stale in ["4", "5"] {
        let e = qerr(&mut con, &["SET", "k", "slow-fill", "VERSION", stale]);
        assert!(e.starts_with("STALE"), "{e}");
    }
    assert_eq!(get(&mut con, "k"), None, "a refused fill writes nothing");
    assert_eq!(info_u64(&mut con, "stale_fills_refused"), 2);
    let _: () = q(&mut con, &["SET", "k", "v6", "VERSION", "6", "EX", "100"]);
    assert_eq!(get(&mut con, "k").as_deref(), Some("v6"));
    // Unversioned writes keep plain Redis behaviour.
    let _: () = q(&mut con, &["SET", "k", "plain"]);
    assert_eq!(get(&mut con, "k").as_deref(), Some("plain"));
    assert!(info_u64(&mut con, "invalidation_tombstones") >= 1);
}

#[test]
fn replicated_stale_fill_is_refused_by_the_invalidated_region() {
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("inv", 1);
    // Only region a consumes the stream; b has not heard of the invalidation.
    let (regions, _dir) = two_regions([Some(kafka_toml(&broker, "inv", "ga")), None]);
    let mut a = regions[0].conn();
    let mut b = regions[1].conn();
    // Partition first: a's floor must not reach b before b makes its stale fill.
    let _: () = q(&mut a, &["MERIDIAN", "LINK", "DOWN", "b"]);
    let _: () = q(&mut b, &["MERIDIAN", "LINK", "DOWN", "a"]);
    let p = broker.producer();
    send(&p, "inv", Some("cart:9"), &versioned(10));
    flush(&p);
    wait_until(DEADLINE, "a applied the invalidation", || {
        applied(&mut a) == 1
    });

    // b fills from a lagging replica of the source: version 9, and its HLC is later.
    let _: () = q(&mut b, &["SET", "cart:9", "stale", "VERSION", "9"]);
    assert_eq!(get(&mut b, "cart:9").as_deref(), Some("stale"));
    let _: () = q(&mut b, &["SET", "cart:10", "fresh", "VERSION", "11"]);
    let _: () = q(&mut a, &["MERIDIAN", "LINK", "UP", "b"]);
    let _: () = q(&mut b, &["MERIDIAN", "LINK", "UP", "a"]);

    wait_until(DEADLINE, "a has the fresh key", || {
        get(&mut a, "cart:10").as_deref() == Some("fresh")
    });
    assert_eq!(
        get(&mut a, "cart:9"),
        None,
        "the stale fill is refused in a"
    );
    assert!(info_u64(&mut a, "stale_fills_hidden") >= 1);
    // b learns the invalidation floor from a and hides its own stale fill too.
    wait_until(DEADLINE, "b drops its stale fill", || {
        get(&mut b, "cart:9").is_none()
    });
    let e = qerr(&mut b, &["SET", "cart:9", "again", "VERSION", "10"]);
    assert!(e.starts_with("STALE"), "{e}");
}

/// The group's committed offset on partition 0 of `topic` (what a restarted consumer
/// resumes from), read with a throwaway client of the same group.
fn committed(broker: &Broker, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(30))
        .expect("committed offsets");
    match got.find_partition(topic, 0).map(|p| p.offset()) {
        Some(Offset::Offset(o)) => o,
        _ => 0,
    }
}

#[test]
fn consumer_killed_mid_stream_resumes_without_skipping() {
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("inv", 1);
    const N: usize = 3000;
    let toml = kafka_toml(&broker, "inv", "restart");
    let server = Server::start_with_config(&toml, &[]);
    let mut con = server.conn();
    let p = broker.producer();
    for i in 0..N {
        send(&p, "inv", Some(&format!("k{i}")), &versioned(7));
    }
    flush(&p);
    wait_until(DEADLINE, "consumer under way", || applied(&mut con) >= 50);
    drop(server); // SIGKILL: no final commit.
    let resume_from = committed(&broker, "restart", "inv");
    assert!(
        (resume_from as usize) < N,
        "killed before the end of the stream ({resume_from})"
    );

    // The restarted node (empty memory) resumes at the committed offset: every record from
    // there on must be applied; ones before were applied by the first life.
    let server = Server::start_with_config(&toml, &[]);
    let mut con = server.conn();
    let expected = N as u64 - resume_from as u64;
    wait_until(DEADLINE, "the rest of the stream applied", || {
        applied(&mut con) >= expected
    });
    for i in resume_from as usize..N {
        let e = qerr(&mut con, &["SET", &format!("k{i}"), "x", "VERSION", "7"]);
        assert!(e.starts_with("STALE"), "record {i} was skipped: {e}");
    }
    wait_until(DEADLINE, "offsets committed to the end", || {
        committed(&broker, "restart", "inv") == N as i64
    });
}

#[test]
fn malformed_records_are_skipped_and_counted() {
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("inv", 1);
    broker.create_topic("inv-dead", 1);
    let toml = format!(
        "{}dead-letter-topic = \"inv-dead\"\n",
        kafka_toml(&broker, "inv", "g-malformed")
    );
    let server = Server::start_with_config(&toml, &[]);
    let mut con = server.conn();
    for k in ["a", "b", "c"] {
        let _: () = q(&mut con, &["SET", k, "1"]);
    }
    let p = broker.producer();
    send(&p, "inv", Some("a"), &versioned(1));
    send(&p, "inv", Some("x"), b"{not json");
    send(&p, "inv", None, b"");
    send(&p, "inv", Some("x"), br#"{"version": 3, "colour": "red"}"#);
    send(&p, "inv", None, br#"{"keys": ["b", "c"], "version": 2}"#);
    flush(&p);
    wait_until(
        DEADLINE,
        "valid records around the bad ones applied",
        || {
            get(&mut con, "a").is_none()
                && get(&mut con, "b").is_none()
                && get(&mut con, "c").is_none()
        },
    );
    wait_until(DEADLINE, "malformed counted", || {
        info_u64(&mut con, "kafka_records_malformed") == 3
    });
    assert_eq!(applied(&mut con), 2);
    wait_until(DEADLINE, "malformed forwarded", || {
        info_u64(&mut con, "kafka_dead_lettered") == 3
    });
}

#[test]
fn broker_outage_keeps_serving_and_consumer_resumes() {
    let Some(mut broker) = Broker::start_persistent() else {
        return;
    };
    broker.create_topic("inv", 1);
    let server = Server::start_with_config(&kafka_toml(&broker, "inv", "g-outage"), &[]);
    let mut con = server.conn();
    let _: () = q(&mut con, &["SET", "before", "1"]);
    let _: () = q(&mut con, &["SET", "after", "1"]);
    let p = broker.producer();
    send(&p, "inv", Some("before"), b"");
    flush(&p);
    drop(p);
    wait_until(DEADLINE, "first record applied", || {
        get(&mut con, "before").is_none()
    });

    broker.stop();
    // The cache keeps serving while the broker is gone.
    let _: () = q(&mut con, &["SET", "during", "1"]);
    assert_eq!(get(&mut con, "during").as_deref(), Some("1"));

    broker.spawn();
    let p = broker.producer();
    send(&p, "inv", Some("after"), b"");
    flush(&p);
    wait_until(DEADLINE, "consumer resumed after the outage", || {
        get(&mut con, "after").is_none()
    });
    assert_eq!(get(&mut con, "during").as_deref(), Some("1"));
}

/// A key named `{prefix}:<n>` in slots `lo..=hi`.
fn key_in(prefix: &str, lo: u16, hi: u16) -> String {
    (0..)
        .map(|n| format!("{prefix}:{n}"))
        .find(|k| (lo..=hi).contains(&common::key_slot(k.as_bytes())))
        .expect("a key in the range")
}

#[test]
fn cluster_nodes_apply_invalidations_of_their_slots_and_a_promoted_replica_misses_none() {
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("inv", 2);
    // Default group: each node consumes the whole stream as meridian-a-<node id>.
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\ntopic = \"inv\"\n",
        broker.addr()
    );
    let mut cl = Cluster::start_with(1_000, &toml);
    for i in 0..6 {
        cl.wait_ok(i);
    }
    cl.wait_replicas_attached();
    let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
    let keys: Vec<String> = ranges
        .iter()
        .map(|&(lo, hi)| key_in("user", lo, hi))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let _: () = q(&mut cl.conn(i), &["SET", k, "v5", "VERSION", "5"]);
    }
    let p = broker.producer();
    for k in &keys {
        send(&p, "inv", Some(k), &versioned(7));
    }
    flush(&p);
    for (i, k) in keys.iter().enumerate() {
        let mut con = cl.conn(i);
        wait_until(
            DEADLINE,
            "the owning primary applied the invalidation",
            || get(&mut con, k).is_none(),
        );
        // Every node reads every record (its own group) ...
        wait_until(DEADLINE, "every record consumed", || applied(&mut con) == 3);
        // ... and keeps the floor of its own key only: nothing for other shards' keys.
        assert_eq!(info_u64(&mut con, "invalidation_tombstones"), 1, "node {i}");
        let e = qerr(&mut con, &["SET", k, "stale", "VERSION", "7"]);
        assert!(e.starts_with("STALE"), "{e}");
    }
    // Replicas hold the floor too (from the stream and their own consumer): READONLY reads
    // miss, and a node never applies another shard's keys.
    for i in 3..6 {
        let mut con = cl.conn(i);
        wait_until(DEADLINE, "every record consumed", || applied(&mut con) == 3);
        let _: () = q(&mut con, &["READONLY"]);
        wait_until(DEADLINE, "the replica misses", || {
            get(&mut con, &keys[i - 3]).is_none()
        });
        assert_eq!(info_u64(&mut con, "invalidation_tombstones"), 1, "node {i}");
    }

    // Failover: records published after the primary died are read by its replica while it
    // is still a replica; once promoted it must have applied them in full.
    let plain = key_in("plain", 0, 5460);
    let fill = key_in("fill", 0, 5460);
    let mut c0 = cl.conn(0);
    let _: () = q(&mut c0, &["SET", &plain, "unversioned"]);
    let _: () = q(&mut c0, &["SET", &fill, "v5", "VERSION", "5"]);
    let replicas: i64 = q(&mut c0, &["WAIT", "1", "10000"]);
    assert_eq!(replicas, 1);
    cl.nodes[0] = None; // SIGKILL
    send(&p, "inv", Some(&plain), b"");
    send(&p, "inv", Some(&fill), &versioned(6));
    flush(&p);
    let mut c3 = cl.conn(3);
    let _: () = q(&mut c3, &["READONLY"]);
    // (Reads fail with CLUSTERDOWN between the primary's FAIL and the promotion.)
    let gone = |con: &mut redis::Connection, k: &str| {
        matches!(
            redis::cmd("GET").arg(k).query::<Option<String>>(con),
            Ok(None)
        )
    };
    wait_until(
        DEADLINE,
        "node 3 is promoted and applied both records",
        || {
            common::info_field(&mut c3, "role") == "master"
                && gone(&mut c3, &plain)
                && gone(&mut c3, &fill)
        },
    );
    let e = qerr(&mut c3, &["SET", &fill, "stale", "VERSION", "6"]);
    assert!(e.starts_with("STALE"), "{e}");
    // A fill newer than the invalidation is accepted by the new primary.
    wait_until(DEADLINE, "the promoted node accepts writes", || {
        redis::cmd("SET")
            .arg(&fill)
            .arg("v8")
            .arg("VERSION")
            .arg(8)
            .query::<()>(&mut c3)
            .is_ok()
    });
    assert_eq!(get(&mut c3, &fill).as_deref(), Some("v8"));
}
