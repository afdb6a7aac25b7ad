//! QUIC transport over real loopback sockets: mutual TLS with region-bound certificates,
//! refusal of foreign CAs and wrong regions, garbage datagrams, malformed frames.
//! Every wait is a condition polled against a deadline; nothing relies on a sleep.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::Bytes;
use meridian_crdt::RegionId;
use meridian_replication::codec::{encode, Ack, Frame};
use meridian_replication::transport::{
    generate_ca, generate_node_cert, write_deployment, PeerConfig, PeerConnStats, PeerKey,
    QuicConfig, QuicTransport,
};

const DEADLINE: Duration = Duration::from_secs(10);

struct Ca {
    cert: String,
    key: String,
}

fn ca() -> Ca {
    let (cert, key) = generate_ca().unwrap();
    Ca { cert, key }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An address nobody listens on: the peer is one we accept from, never dial.
fn unused() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

fn node(ca: &Ca, region: &str, peers: &[(&str, SocketAddr)]) -> QuicTransport {
    let (cert, key) = generate_node_cert(&ca.cert, &ca.key, region).unwrap();
    let peers = peers
        .iter()
        .map(|(r, addr)| PeerConfig {
            region: r.to_string(),
            addr: *addr,
        })
        .collect();
    QuicTransport::start(QuicConfig::new(
        region,
        loopback(),
        ca.cert.clone(),
        cert,
        key,
        peers,
    ))
    .unwrap()
}

fn frame(seq: u64) -> Frame {
    Frame::Ack(Ack {
        origin: RegionId(7),
        epoch: 1,
        seq,
    })
}

fn frame_bytes(seq: u64) -> Bytes {
    Bytes::from(encode(&frame(seq)).unwrap())
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn state(t: &QuicTransport, peer: &str) -> PeerConnStats {
    t.peer_state(peer).unwrap()
}

async fn connected(x: &QuicTransport, y: &QuicTransport) {
    wait_until("link up", || {
        state(x, y.region()).connected && state(y, x.region()).connected
    })
    .await;
}

/// `n` frames each way between `x` and `y`, all delivered, in order, tagged with the sender.
async fn exchange(x: &QuicTransport, y: &QuicTransport, base: u64, n: u64) {
    connected(x, y).await;
    for (from, to) in [(x, y), (y, x)] {
        for i in 0..n {
            from.send(to.region(), frame_bytes(base + i)).unwrap();
        }
        for i in 0..n {
            let (peer, got) = tokio::time::timeout(DEADLINE, to.recv())
                .await
                .expect("frame not delivered in time")
                .expect("transport closed");
            assert_eq!(peer, from.region());
            assert_eq!(got, frame(base + i));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_exchange_frames_both_ways() {
    let ca = ca();
    let b = node(&ca, "b", &[("a", unused())]);
    let a = node(&ca, "a", &[("b", b.local_addr().unwrap())]);
    exchange(&a, &b, 1, 200).await;
    exchange(&a, &b, 1_000, 10).await;

    let (sa, sb) = (state(&a, "b"), state(&b, "a"));
    assert_eq!(
        (sa.connects, sb.connects),
        (1, 1),
        "one connection per pair"
    );
    assert_eq!(sa.frames_sent, 210);
    assert_eq!(sa.frames_received, 210);
    assert_eq!(sa.bytes_sent, sb.bytes_received);
    assert_eq!(sb.bytes_sent, sa.bytes_received);
    assert_eq!(b.stats().accepted, 1);
    assert_eq!(a.peer_states().len(), 1);
    assert!(a.send("zz", frame_bytes(1)).is_err(), "unknown peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let ca = ca();
    let b = node(&ca, "b", &[("a", unused())]);
    let b_addr = b.local_addr().unwrap();
    let a = node(&ca, "a", &[("b", b_addr)]);
    exchange(&a, &b, 1, 5).await;

    // Claims region a, with a certificate from a CA b does not trust.
    let rogue = node(&ca_other(), "a", &[("b", b_addr)]);
    wait_until("foreign CA refused", || b.stats().handshake_failures >= 1).await;
    assert_eq!(b.stats().accepted, 1);
    assert_eq!(state(&b, "a").connects, 1, "legit link untouched");
    exchange(&a, &b, 100, 5).await;
    assert_eq!(state(&b, "a").connects, 1);
    drop(rogue);
}

fn ca_other() -> Ca {
    ca()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_region_is_refused() {
    let ca = ca();
    let b = node(&ca, "b", &[("a", unused())]);
    let b_addr = b.local_addr().unwrap();
    let a = node(&ca, "a", &[("b", b_addr)]);
    exchange(&a, &b, 1, 5).await;

    // A valid certificate from the right CA, but for region x, which b does not expect.
    // x's name sorts above b, so it would not dial by itself: force it.
    let rogue = node(&ca, "x", &[("b", b_addr)]);
    rogue.connect("b", b_addr).unwrap();
    wait_until("wrong region refused", || {
        b.stats().identity_rejections >= 1
    })
    .await;
    assert_eq!(b.stats().accepted, 1);
    exchange(&a, &b, 100, 5).await;
    assert_eq!(state(&b, "a").connects, 1);

    // The dialer checks the acceptor's name too: a node asking for "c" at b's address
    // never gets a working link (b's certificate says b.meridian).
    let c_side = node(&ca, "a", &[("c", b_addr)]);
    wait_until("b's cert refused by a dialer expecting c", || {
        b.stats().handshake_failures >= 1
    })
    .await;
    assert!(!state(&c_side, "c").connected);
    exchange(&a, &b, 200, 5).await;
    drop(rogue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_break_the_endpoint() {
    let ca = ca();
    let b = node(&ca, "b", &[("a", unused())]);
    let b_addr = b.local_addr().unwrap();
    let a = node(&ca, "a", &[("b", b_addr)]);
    exchange(&a, &b, 1, 5).await;

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..500usize {
        let len = [1, 7, 40, 200, 1200, 1500][i % 6];
        let mut datagram: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if i % 3 == 0 {
            // Looks like a QUIC v1 long-header Initial, so it reaches the parser.
            datagram[0] = 0xc0 | (datagram[0] & 0x0f);
            if len >= 5 {
                datagram[1..5].copy_from_slice(&[0, 0, 0, 1]);
            }
        }
        socket.send_to(&datagram, b_addr).unwrap();
        socket.send_to(&datagram, a.local_addr().unwrap()).unwrap();
    }
    exchange(&a, &b, 100, 20).await;
    assert_eq!(
        state(&b, "a").connects,
        1,
        "garbage did not disturb the link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_closes_only_that_link_which_reconnects() {
    let ca = ca();
    let b = node(&ca, "b", &[("a", unused()), ("c", unused())]);
    let c = node(&ca, "c", &[("a", unused()), ("b", unused())]);
    let a = node(
        &ca,
        "a",
        &[
            ("b", b.local_addr().unwrap()),
            ("c", c.local_addr().unwrap()),
        ],
    );
    exchange(&a, &b, 1, 5).await;
    exchange(&a, &c, 1, 5).await;

    // Unsupported version byte, then an oversize length prefix.
    let bad_frames = [
        Bytes::from_static(&[5, 0, 0, 0, 99, 1, 2, 3, 4]),
        Bytes::from_static(&[0xff, 0xff, 0xff, 0x7f, 1]),
    ];
    for (round, bad) in bad_frames.into_iter().enumerate() {
        let round = round as u64;
        connected(&a, &b).await;
        a.send("b", bad).unwrap();
        wait_until("protocol error detected", || {
            state(&b, "a").protocol_errors == round + 1
        })
        .await;
        wait_until("reconnected", || {
            let (sa, sb) = (state(&a, "b"), state(&b, "a"));
            sa.connects == round + 2 && sb.connects == round + 2 && sa.connected && sb.connected
        })
        .await;
        exchange(&a, &b, 100 * (round + 1), 5).await;
    }
    // The a–c link never noticed.
    assert_eq!(state(&a, "c").connects, 1);
    assert_eq!(state(&c, "a").connects, 1);
    assert_eq!(state(&c, "a").protocol_errors, 0);
    exchange(&a, &c, 1_000, 5).await;
}

#[test]
fn deployment_files_are_written() {
    let dir = std::env::temp_dir().join(format!("meridian-certs-{}", std::process::id()));
    write_deployment(&dir, &["a", "b", "c"]).unwrap();
    for f in [
        "ca.pem",
        "ca-key.pem",
        "a.pem",
        "a-key.pem",
        "b.pem",
        "b-key.pem",
        "c.pem",
        "c-key.pem",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.starts_with("-----BEGIN"), "{f} is PEM");
    }
    assert!(write_deployment(&dir, &["Bad Name"]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The nodes of a region that is a cluster are distinct peers: two nodes of region a both
/// connect to b's node at once, neither replaces the other, and b tells their frames apart
/// and answers each one (`send_to`). A node removed from the topology is closed and no
/// longer dialed; added again, it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_of_a_clustered_region_are_distinct_peers() {
    let ca = ca();
    let b = node(&ca, "b", &[("a", unused())]);
    let b_addr = b.local_addr().unwrap();
    let a1 = node(&ca, "a", &[("b", b_addr)]);
    let a2 = node(&ca, "a", &[("b", b_addr)]);
    let key = |t: &QuicTransport| PeerKey {
        region: "a".into(),
        addr: t.local_addr().unwrap(),
    };
    let (k1, k2) = (key(&a1), key(&a2));
    wait_until("both a nodes connected at b", || {
        let states = b.node_states();
        [&k1, &k2]
            .iter()
            .all(|k| states.iter().any(|(key, s)| key == *k && s.connected))
    })
    .await;
    for (i, a) in [&a1, &a2].into_iter().enumerate() {
        a.send("b", frame_bytes(i as u64)).unwrap();
    }
    let mut from = Vec::new();
    for _ in 0..2 {
        let (k, f) = tokio::time::timeout(DEADLINE, b.recv_from())
            .await
            .expect("frame in time")
            .expect("open");
        from.push((k, f));
    }
    from.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want = vec![(k1.clone(), frame(0)), (k2.clone(), frame(1))];
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(from, want, "each frame tagged with its node");
    for (i, (k, a)) in [(&k1, &a1), (&k2, &a2)].into_iter().enumerate() {
        b.send_to(k, frame_bytes(10 + i as u64)).unwrap();
        let (peer, got) = tokio::time::timeout(DEADLINE, a.recv())
            .await
            .expect("frame in time")
            .expect("open");
        assert_eq!((peer.as_str(), got), ("b", frame(10 + i as u64)));
    }
    for (k, s) in b.node_states().iter().filter(|(k, _)| *k == k1 || *k == k2) {
        assert_eq!(s.connects, 1, "{k}: never replaced by its sibling");
    }
    assert!(state(&b, "a").connected);

    // a2 drops b from its topology: closed, not redialed.
    let kb = PeerKey {
        region: "b".into(),
        addr: b_addr,
    };
    a2.remove_peer(&kb);
    wait_until("a2's link closed at b", || {
        b.node_states()
            .iter()
            .any(|(k, s)| *k == k2 && !s.connected)
    })
    .await;
    assert!(a2.send_to(&kb, frame_bytes(1)).is_err());
    assert!(
        b.node_states().iter().any(|(k, s)| *k == k1 && s.connected),
        "a1 untouched"
    );
    a2.add_peer("b", b_addr).unwrap();
    wait_until("a2 back", || {
        b.node_states().iter().any(|(k, s)| *k == k2 && s.connected)
    })
    .await;
}

fn node_with(
    ca: &Ca,
    region: &str,
    peers: &[(&str, SocketAddr)],
    accept_new_regions: bool,
) -> QuicTransport {
    let (cert, key) = generate_node_cert(&ca.cert, &ca.key, region).unwrap();
    let peers = peers
        .iter()
        .map(|(r, addr)| PeerConfig {
            region: r.to_string(),
            addr: *addr,
        })
        .collect();
    let mut cfg = QuicConfig::new(region, loopback(), ca.cert.clone(), cert, key, peers);
    cfg.accept_new_regions = accept_new_regions;
    QuicTransport::start(cfg).unwrap()
}

/// A region that joins at run time: `c` is configured with `a`, which is not configured
/// with `c`. Its name sorts above, so `a` would never dial it: `c` dials `a` once `a` has
/// not connected within the grace period, and `a` (accepting new regions) takes it, proven
/// by its certificate. Without `accept_new_regions`, the same dial is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_not_configured_joins_by_dialing() {
    let ca = ca();
    let a = node_with(&ca, "a", &[], true);
    let c = node(&ca, "c", &[("a", a.local_addr().unwrap())]);
    wait_until("a accepts c", || {
        a.peer_state("c").is_some_and(|s| s.connected)
    })
    .await;
    assert_eq!(a.stats().regions_joined, 1);
    assert!(a.regions().contains(&"c".to_string()));
    exchange(&a, &c, 1, 20).await;
    // Forgotten: the connection goes; c dials again and is taken again (the protocol above
    // decides whether to refuse that incarnation).
    a.forget_region("c");
    wait_until("c back", || a.peer_state("c").is_some_and(|s| s.connected)).await;
    exchange(&a, &c, 100, 5).await;

    let strict = node_with(&ca, "a", &[], false);
    let d = node(&ca, "d", &[("a", strict.local_addr().unwrap())]);
    wait_until("d refused", || strict.stats().identity_rejections >= 1).await;
    assert_eq!(strict.stats().regions_joined, 0);
    assert!(strict.peer_state("d").is_none());
    drop(d);
}

/// Both configured with each other: the higher name's join dial (if it comes before the
/// lower one's dial) is refused with the dial-order code, and one connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_regions_keep_the_dial_order() {
    let ca = ca();
    // b first, a's address not known yet: a dials b once up. b's own dial (after the grace
    // period) goes to a dead address until then.
    let b = node(&ca, "b", &[("a", unused())]);
    let a = node(&ca, "a", &[("b", b.local_addr().unwrap())]);
    exchange(&a, &b, 1, 10).await;
    tokio::time::sleep(Duration::from_millis(
        meridian_replication::transport::quic::JOIN_GRACE_MS + 500,
    ))
    .await;
    exchange(&a, &b, 100, 10).await;
    assert_eq!(state(&a, "b").connects, 1, "no second connection");
    assert_eq!(state(&b, "a").connects, 1);
}
