//! A primary and a replica driven over in-memory byte pipes (the Pair harness).

use super::*;
use bytes::Bytes;
use meridian_crdt::{Hlc, Keyspace, KeyspaceConfig, RegionId, Stamp, SLOT_COUNT};
use std::collections::BTreeMap;

struct Primary {
    ks: Keyspace,
    backlog: Backlog,
    replid: String,
    recording: bool,
    clock: u64,
}

impl Primary {
    fn new(backlog_bytes: usize) -> Primary {
        Primary {
            ks: Keyspace::new(KeyspaceConfig {
                region: RegionId(1),
                retain_tombstones: true,
                ..KeyspaceConfig::default()
            }),
            backlog: Backlog::new(backlog_bytes, 0),
            replid: "a".repeat(40),
            recording: false,
            clock: 1_000,
        }
    }

    fn record(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> Result<usize, crate::CodecError>) {
        if self.recording {
            let mut b = Vec::new();
            encode(&mut b).unwrap();
            self.backlog.push(&b);
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.clock += 1;
        let st = Stamp::new(Hlc::from_parts(self.clock, 0), RegionId(1));
        let v = Bytes::copy_from_slice(value.as_bytes());
        self.ks
            .write(key.as_bytes(), st, 0, |w| w.set_str(v, false));
        let deltas: Vec<_> = self.ks.drain_deltas().collect();
        for d in deltas {
            self.record(|out| encode_delta(&d, out));
        }
    }

    fn forget(&mut self, key: &str) {
        self.ks.take_key(key.as_bytes());
        self.record(|out| encode_forget(key.as_bytes(), out));
    }
}

struct Replica {
    ks: Keyspace,
    position: Option<(String, u64)>,
}

impl Replica {
    fn new() -> Replica {
        Replica {
            ks: Keyspace::new(KeyspaceConfig {
                region: RegionId(1),
                retain_tombstones: true,
                ..KeyspaceConfig::default()
            }),
            position: None,
        }
    }

    fn apply(&mut self, ev: ReceiverEvent) {
        match ev {
            ReceiverEvent::FullResync { .. } => {
                for slot in 0..SLOT_COUNT as u16 {
                    self.ks.drop_slot(slot);
                }
            }
            ReceiverEvent::Continue { .. } | ReceiverEvent::SnapshotDone { .. } => {}
            ReceiverEvent::Apply(f) => match f {
                ReplicaFrame::Entries(es) => {
                    for e in es {
                        self.ks.merge_state(&e.key, true, &e.state);
                    }
                }
                ReplicaFrame::Delta(d) => {
                    self.ks.merge_state(&d.key, true, &d.state);
                }
                ReplicaFrame::State { key, state } => {
                    self.ks.merge_state(&key, true, &state);
                }
                ReplicaFrame::Forget { key } => {
                    self.ks.take_key(&key);
                }
                ReplicaFrame::ForgetSlot { slot } => {
                    self.ks.drop_slot(slot);
                }
                other => panic!("not a change: {other:?}"),
            },
        }
    }
}

fn dump(ks: &Keyspace) -> BTreeMap<Vec<u8>, u64> {
    let mut m = BTreeMap::new();
    for slot in 0..SLOT_COUNT as u16 {
        for (k, e) in ks.slot_entries(slot) {
            m.insert(k.to_vec(), e.digest());
        }
    }
    m
}

fn parse_request(bytes: &[u8]) -> SyncRequest {
    SyncRequest::decode(bytes).unwrap().unwrap()
}

/// One connection: the replica's receiver, the primary's sender (after the handshake).
struct Conn {
    rx: StreamReceiver,
    tx: Option<StreamSender>,
    to_replica: Vec<u8>,
    to_primary: Vec<u8>,
    resync: Resync,
}

fn connect(p: &mut Primary, r: &Replica, now: u64) -> Conn {
    let rx = StreamReceiver::new(now, r.position.clone(), 7001, 4);
    let req = parse_request(&rx.request());
    let resync = decide(&req, &p.replid, p.recording, &p.backlog);
    p.recording = true;
    let mut to_replica = resync.line();
    if let Resync::Full { offset, .. } = &resync {
        let mut w = SnapshotWriter::new();
        for slot in 0..SLOT_COUNT as u16 {
            for (k, e) in p.ks.slot_entries(slot) {
                w.push(k, e.into_owned()).unwrap();
            }
            if let Some(b) = w.take_ready() {
                to_replica.extend(b);
            }
        }
        let (rest, _) = w.finish(*offset).unwrap();
        to_replica.extend(rest);
    }
    Conn {
        rx,
        tx: Some(StreamSender::new(now, resync.offset())),
        to_replica,
        to_primary: Vec::new(),
        resync,
    }
}

/// Move every byte both ways (in chunks of `chunk`) until nothing moves.
fn pump(p: &mut Primary, r: &mut Replica, c: &mut Conn, now: u64, chunk: usize) {
    loop {
        if let Some(tx) = &mut c.tx {
            tx.poll_transmit(now, &p.backlog, &mut c.to_replica)
                .unwrap();
        }
        if c.to_replica.is_empty() && c.to_primary.is_empty() {
            break;
        }
        while !c.to_replica.is_empty() {
            let n = chunk.min(c.to_replica.len());
            let bytes: Vec<u8> = c.to_replica.drain(..n).collect();
            c.rx.handle_bytes(now, &bytes);
            while let Some(ev) = c.rx.poll_event().unwrap() {
                r.apply(ev);
            }
            r.position = c.rx.position();
        }
        c.rx.poll_transmit(now, &mut c.to_primary).unwrap();
        if let Some(tx) = &mut c.tx {
            let bytes = std::mem::take(&mut c.to_primary);
            tx.handle_bytes(now, &bytes).unwrap();
        }
    }
}

#[test]
fn full_sync_then_stream_then_partial_resync() {
    let mut p = Primary::new(1 << 20);
    let mut r = Replica::new();
    for i in 0..100 {
        p.set(&format!("k{i}"), "v1");
    }
    let mut c = connect(&mut p, &r, 0);
    assert!(matches!(c.resync, Resync::Full { offset: 0, .. }));
    pump(&mut p, &mut r, &mut c, 0, 7);
    assert_eq!(dump(&r.ks), dump(&p.ks));
    for i in 0..50 {
        p.set(&format!("k{i}"), "v2");
    }
    p.forget("k99");
    pump(&mut p, &mut r, &mut c, 1, 13);
    assert_eq!(dump(&r.ks), dump(&p.ks));
    assert_eq!(c.tx.as_ref().unwrap().acked(), 51);
    assert_eq!(r.position, Some((p.replid.clone(), 51)));
    // The connection drops with changes in flight; the next one continues.
    for i in 0..10 {
        p.set(&format!("n{i}"), "x");
    }
    drop(c);
    let mut c = connect(&mut p, &r, 2);
    assert_eq!(
        c.resync,
        Resync::Partial {
            replid: p.replid.clone(),
            offset: 51
        }
    );
    pump(&mut p, &mut r, &mut c, 2, 1);
    assert_eq!(dump(&r.ks), dump(&p.ks));
    assert_eq!(r.position, Some((p.replid.clone(), 61)));
}

#[test]
fn a_replica_out_of_the_backlog_resyncs_in_full_and_drops_what_left() {
    let mut p = Primary::new(200);
    let mut r = Replica::new();
    p.set("gone", "x");
    let mut c = connect(&mut p, &r, 0);
    pump(&mut p, &mut r, &mut c, 0, 64);
    assert!(dump(&r.ks).contains_key(&b"gone"[..]));
    drop(c);
    // While it is away the key moves to another node and the backlog overflows.
    p.forget("gone");
    for i in 0..50 {
        p.set(&format!("k{i}"), "v");
    }
    let mut c = connect(&mut p, &r, 1);
    assert!(!c.resync.is_partial());
    pump(&mut p, &mut r, &mut c, 1, 64);
    assert_eq!(dump(&r.ks), dump(&p.ks));
    assert!(!dump(&r.ks).contains_key(&b"gone"[..]));
}

#[test]
fn a_new_primary_id_means_a_full_resync() {
    let mut p = Primary::new(1 << 20);
    let mut r = Replica::new();
    p.set("a", "1");
    let mut c = connect(&mut p, &r, 0);
    pump(&mut p, &mut r, &mut c, 0, 64);
    p.replid = "b".repeat(40);
    let c = connect(&mut p, &r, 1);
    assert!(matches!(c.resync, Resync::Full { .. }));
}

#[test]
fn a_lost_snapshot_never_resumes_partially() {
    let mut p = Primary::new(1 << 20);
    let mut r = Replica::new();
    for i in 0..10 {
        p.set(&format!("k{i}"), "v");
    }
    let mut c = connect(&mut p, &r, 0);
    // Only the handshake line and part of the snapshot arrive.
    let part: Vec<u8> = c.to_replica.drain(..c.to_replica.len() / 2).collect();
    c.rx.handle_bytes(0, &part);
    while let Some(ev) = c.rx.poll_event().unwrap() {
        r.apply(ev);
    }
    assert!(c.rx.in_snapshot());
    assert_eq!(c.rx.position(), None);
    let mut ack = Vec::new();
    assert!(
        !c.rx.poll_transmit(10_000, &mut ack).unwrap(),
        "no ack mid-snapshot"
    );
}

#[test]
fn protocol_violations_close_the_connection() {
    let (_, deltas) = crate::codec::tests::sample_deltas();
    let frame = |f: &ReplicaFrame| {
        let mut b = Vec::new();
        encode_frame(f, &mut b).unwrap();
        b
    };
    // A change inside a snapshot.
    let mut rx = StreamReceiver::new(0, None, 1, 4);
    rx.handle_bytes(0, b"+FULLRESYNC abc 5\r\n");
    assert!(matches!(
        rx.poll_event(),
        Ok(Some(ReceiverEvent::FullResync { .. }))
    ));
    rx.handle_bytes(0, &frame(&ReplicaFrame::Delta(deltas[0].clone())));
    assert!(matches!(rx.poll_event(), Err(StreamError::Protocol(_))));
    // A snapshot that ends elsewhere than announced.
    let mut rx = StreamReceiver::new(0, None, 1, 4);
    rx.handle_bytes(0, b"+FULLRESYNC abc 5\r\n");
    rx.poll_event().unwrap();
    rx.handle_bytes(0, &frame(&ReplicaFrame::SnapshotEnd { offset: 6 }));
    assert!(matches!(rx.poll_event(), Err(StreamError::Protocol(_))));
    // Continuing a stream we did not ask for.
    let mut rx = StreamReceiver::new(0, Some(("abc".into(), 3)), 1, 4);
    rx.handle_bytes(0, b"+CONTINUE abc 4\r\n");
    assert!(matches!(rx.poll_event(), Err(StreamError::Protocol(_))));
    // A refusal, and a line that never ends.
    let mut rx = StreamReceiver::new(0, None, 1, 4);
    rx.handle_bytes(0, b"-ERR no\r\n");
    assert!(matches!(rx.poll_event(), Err(StreamError::Refused(_))));
    let mut rx = StreamReceiver::new(0, None, 1, 4);
    rx.handle_bytes(0, &[b'+'; 600]);
    assert!(rx.poll_event().is_err());
    // Entries while streaming, an ack from the primary.
    for f in [
        ReplicaFrame::Entries(vec![]),
        ReplicaFrame::Ack { offset: 1 },
        ReplicaFrame::SnapshotEnd { offset: 3 },
    ] {
        let mut rx = StreamReceiver::new(0, Some(("abc".into(), 3)), 1, 4);
        rx.handle_bytes(0, b"+CONTINUE abc 3\r\n");
        rx.poll_event().unwrap();
        rx.handle_bytes(0, &frame(&f));
        assert!(
            matches!(rx.poll_event(), Err(StreamError::Protocol(_))),
            "{f:?}"
        );
    }
    // Primary side: anything but an ack, or an ack of what was never sent.
    let mut tx = StreamSender::new(0, 10);
    assert!(tx.handle_bytes(0, &frame(&ReplicaFrame::Ping)).is_err());
    let mut tx = StreamSender::new(0, 10);
    assert!(tx
        .handle_bytes(0, &frame(&ReplicaFrame::Ack { offset: 11 }))
        .is_err());
    let mut tx = StreamSender::new(0, 10);
    assert_eq!(
        tx.handle_bytes(0, &frame(&ReplicaFrame::Ack { offset: 10 })),
        Ok(None)
    );
    // Many pings in a row are skipped without recursion.
    let mut rx = StreamReceiver::new(0, Some(("abc".into(), 3)), 1, 4);
    rx.handle_bytes(0, b"+CONTINUE abc 3\r\n");
    rx.poll_event().unwrap();
    let mut pings = Vec::new();
    for _ in 0..100_000 {
        encode_frame(&ReplicaFrame::Ping, &mut pings).unwrap();
    }
    rx.handle_bytes(0, &pings);
    assert_eq!(rx.poll_event(), Ok(None));
}

#[test]
fn timeouts_pings_and_acks() {
    let backlog = Backlog::new(100, 0);
    let mut tx = StreamSender::new(0, 0);
    let mut out = Vec::new();
    tx.poll_transmit(10, &backlog, &mut out).unwrap();
    assert!(out.is_empty());
    tx.poll_transmit(PING_INTERVAL_MS, &backlog, &mut out)
        .unwrap();
    assert_eq!(decode_frame(&out).unwrap().unwrap().0, ReplicaFrame::Ping);
    assert!(tx.poll_timeout() <= LINK_TIMEOUT_MS);
    assert!(tx.handle_timeout(LINK_TIMEOUT_MS - 1).is_ok());
    assert_eq!(
        tx.handle_timeout(LINK_TIMEOUT_MS),
        Err(StreamError::Timeout)
    );

    let mut rx = StreamReceiver::new(0, Some(("abc".into(), 3)), 1, 4);
    rx.handle_bytes(0, b"+CONTINUE abc 3\r\n");
    rx.poll_event().unwrap();
    let mut out = Vec::new();
    assert!(rx.poll_transmit(0, &mut out).unwrap(), "first ack at once");
    assert!(!rx.poll_transmit(50, &mut out).unwrap());
    assert!(
        rx.poll_transmit(ACK_INTERVAL_MS, &mut out).unwrap(),
        "periodic ack"
    );
    assert_eq!(
        rx.handle_timeout(LINK_TIMEOUT_MS),
        Err(StreamError::Timeout)
    );
}

#[test]
fn sync_requests_parse_and_refuse_garbage() {
    let req = SyncRequest {
        replid: "?".into(),
        offset: 0,
        listening_port: 7001,
    };
    assert_eq!(parse_request(&req.encode()), req);
    assert!(SyncRequest::parse(b"", b"0", b"1").is_err());
    assert!(SyncRequest::parse(b"a b", b"0", b"1").is_err());
    assert!(SyncRequest::parse(b"a", b"-1", b"1").is_err());
    assert!(SyncRequest::parse(b"a", b"0", b"70000").is_err());
    assert!(Resync::parse("+FULLRESYNC x").is_err());
    assert!(Resync::parse("+CONTINUE  5").is_err());
}
