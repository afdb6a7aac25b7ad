//! Seed corpora: real frames, produced by the encoders the server uses (region link frames,
//! replica stream frames, cluster bus messages, a bus-auth handshake, RESP requests as
//! clients and `encode_command` write them, Kafka records as `meridian invalidate` and the
//! documented batched form write them).

use bytes::{Bytes, BytesMut};
use meridian::frame::encode_command;
use meridian::kafka::record_value;
use meridian_crdt::{Delta, Hlc, Keyspace, KeyspaceConfig, RegionId, Stamp};
use meridian_regions::bus::{self, Body, BusMessage, GossipEntry, Header};
use meridian_regions::bus_auth::{BusSecret, NONCE_BYTES};
use meridian_regions::topology::{NodeFlags, NodeId, SlotBitmap};
use meridian_replication::codec::{
    self, Ack, AeDigests, AeEntries, AeKeys, Batch, Frame, Frontier, Hello, KeyState, RefuseReason,
    Refused, SlotKeys, SlotVersions,
};
use meridian_replication::proto::topology::{RegionTopology, TopoNode};
use meridian_replication::replica_stream::frame::{encode_frame, ReplicaFrame};

/// The secret of the `bus-auth` target's handshakes.
pub const BUS_SECRET: &[u8] = b"fuzzing-bus-secret-0123456789abcdef";

pub fn bus_secret() -> BusSecret {
    match BusSecret::new(BUS_SECRET) {
        Some(s) => s,
        None => unreachable!("the fuzzing secret is long enough"),
    }
}

/// A keyspace of region 1 with one key of each kind (a sorted set too), some written by region 2 as well
/// (merged in), a TTL and a deleted key: the entries' deltas and whole states.
pub fn sample_keyspace() -> (Vec<Delta>, Vec<KeyState>) {
    let config = |r| KeyspaceConfig {
        region: RegionId(r),
        retain_tombstones: true,
        ..KeyspaceConfig::default()
    };
    let mut a = Keyspace::new(config(1));
    let mut b = Keyspace::new(config(2));
    let st = |n: u64, r: u16| Stamp::new(Hlc::from_parts(1_700_000_000_000 + n, 0), RegionId(r));
    for (ks, r) in [(&mut a, 1), (&mut b, 2)] {
        let off = u64::from(r) * 100;
        ks.write(b"ctr", st(off + 1, r), 0, |w| w.incr_by(5 * i64::from(r)))
            .ok();
        ks.write(b"set", st(off + 2, r), 0, |w| {
            w.sadd(b"m1");
            w.sadd(if r == 1 { &b"m2"[..] } else { b"m3" });
        });
        ks.write(b"str", st(off + 3, r), 0, |w| {
            w.set_str(Bytes::from_static(b"value with spaces\r\n"), false);
            w.set_deadline(Some(1_800_000_000_000));
        });
        ks.write(b"hash", st(off + 4, r), 0, |w| {
            w.hash_set(b"f1", Bytes::from_static(b"v1"));
            w.hash_set(b"f2", Bytes::from_static(b"12345"));
        });
        ks.write(b"gone", st(off + 5, r), 0, |w| {
            w.set_str(Bytes::from_static(b"x"), false);
        });
        ks.write(b"zset", st(off + 6, r), 0, |w| {
            w.zadd(b"z1", 1.5 * f64::from(r));
            w.zincr(if r == 1 { &b"z2"[..] } else { b"z3" }, 2.0);
        });
    }
    a.write(b"gone", st(300, 1), 0, |w| w.delete());
    a.write(b"set", st(301, 1), 0, |w| w.srem(b"m1"));
    a.write(b"zset", st(302, 1), 0, |w| w.zrem(b"z1"));
    let mut deltas: Vec<Delta> = a.drain_deltas().collect();
    let from_b: Vec<Delta> = b.drain_deltas().collect();
    for d in &from_b {
        a.apply_delta(d);
    }
    deltas.extend(from_b);
    let mut keys: Vec<Bytes> = deltas.iter().map(|d| d.key.clone()).collect();
    keys.sort();
    keys.dedup();
    let states = keys
        .into_iter()
        .filter_map(|key| {
            let state = a.raw_entry(&key)?.into_owned();
            Some(KeyState { key, state })
        })
        .collect();
    (deltas, states)
}

/// Region link frames (one of each variant).
pub fn region_frames() -> Vec<Frame> {
    let (deltas, states) = sample_keyspace();
    let origin_deltas: Vec<Delta> = deltas
        .iter()
        .filter(|d| d.stamp.region == RegionId(1))
        .cloned()
        .collect();
    let mut present = vec![0u8; meridian_crdt::SLOT_COUNT / 8];
    present[0] = 0b101;
    present[2047] = 0x80;
    let mut topo = RegionTopology::single("eu-west", 7, 0, "10.0.0.1:7100".into());
    topo.nodes = vec![
        TopoNode {
            id: 11,
            repl_addr: "10.0.0.1:7100".into(),
            slots: vec![(0, 8191)],
            primary: true,
        },
        TopoNode {
            id: 12,
            repl_addr: "[::1]:7101".into(),
            slots: vec![(8192, 16383)],
            primary: true,
        },
        TopoNode {
            id: 13,
            repl_addr: "replica.example:7102".into(),
            slots: vec![],
            primary: false,
        },
    ];
    vec![
        Frame::Batch(Batch {
            origin: RegionId(1),
            epoch: 1 << 63 | 3,
            floor: 1,
            first_seq: 1,
            moved: vec![],
            deltas: origin_deltas,
        }),
        // A resend whose first delta went as a placeholder (`Batch::moved`).
        Frame::Batch(Batch {
            origin: RegionId(1),
            epoch: 1 << 63 | 3,
            floor: 1,
            first_seq: 4,
            deltas: vec![Delta {
                key: Bytes::new(),
                slot: 0,
                stamp: Stamp::new(Hlc(1 << 44), RegionId(1)),
                full: false,
                state: meridian_crdt::Entry::default(),
            }],
            moved: vec![(0, 9)],
        }),
        Frame::Ack(Ack {
            origin: RegionId(2),
            epoch: 3,
            seq: 77,
        }),
        Frame::Frontier(Frontier {
            seen: vec![(RegionId(1), Hlc(5)), (RegionId(2), Hlc(1 << 45))],
            enqueued: Hlc(4),
        }),
        Frame::AeDigests(AeDigests {
            round: 4,
            present: Bytes::from(present),
            digests: Bytes::from_static(&[1, 2, 3, 4, 5, 6]),
        }),
        Frame::AeKeys(AeKeys {
            round: 4,
            last: true,
            origin_seen: Hlc(1 << 44),
            slots: vec![SlotKeys {
                slot: 16383,
                fps: Bytes::from_static(&[9, 8, 7, 6, 5, 4, 3, 2]),
            }],
        }),
        Frame::AeEntries(AeEntries {
            round: 9,
            entries: states,
            want: vec![SlotKeys {
                slot: 3,
                fps: Bytes::from_static(&[1, 2, 3, 4]),
            }],
            last: true,
            offer: vec![SlotVersions {
                slot: 3,
                keys: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8]),
            }],
            left_to_deltas: Bytes::from_static(&[1, 2, 3, 4]),
        }),
        Frame::Hello(Hello {
            ask: true,
            your_max: Hlc(1 << 40),
            clock: Hlc(1 << 41),
            region: RegionId(7),
            epoch: 1 << 63 | 5,
            born_ms: 1_700_000_000_000,
        }),
        Frame::TopologyRequest,
        Frame::Topology(topo),
        Frame::Refused(Refused {
            epoch: 1 << 63 | 9,
            reason: RefuseReason::RegionIdClash,
            sender: 1 << 63 | 10,
        }),
    ]
}

/// Replica stream frames (one of each variant).
pub fn replica_frames() -> Vec<ReplicaFrame> {
    let (deltas, states) = sample_keyspace();
    let mut frames = vec![
        ReplicaFrame::Entries(states.clone()),
        ReplicaFrame::SnapshotEnd { offset: 12345 },
        ReplicaFrame::Ping,
        ReplicaFrame::Ack { offset: 99 },
        ReplicaFrame::Forget {
            key: Bytes::from_static(b"moved"),
        },
        ReplicaFrame::ForgetSlot { slot: 16383 },
    ];
    frames.extend(deltas.into_iter().take(4).map(ReplicaFrame::Delta));
    frames.extend(states.into_iter().take(2).map(|ks| ReplicaFrame::State {
        key: ks.key,
        state: ks.state,
    }));
    frames
}

fn header(sender: u128, replica_of: Option<u128>) -> Header {
    let mut slots = SlotBitmap::default();
    for s in [0, 1, 2, 100, 8191, 16383] {
        slots.set(s, true);
    }
    Header {
        sender: NodeId::from_u128(sender),
        host: "10.0.0.1".into(),
        port: 7000,
        bus_port: 17000,
        repl_port: 7100,
        current_epoch: 9,
        config_epoch: 4,
        replica_of: replica_of.map(NodeId::from_u128),
        repl_offset: 123_456,
        flags: NodeFlags(NodeFlags::NOFAILOVER),
        slots,
        mf_paused: false,
    }
}

/// Cluster bus messages (one of each body).
pub fn bus_messages() -> Vec<BusMessage> {
    let gossip = vec![
        GossipEntry {
            id: NodeId::from_u128(8),
            host: "10.0.0.2".into(),
            port: 7001,
            bus_port: 17001,
            repl_port: 7101,
            flags: NodeFlags(NodeFlags::PFAIL),
            pong_received_ms: 1_700_000_000_000,
        },
        GossipEntry {
            id: NodeId::from_u128(9),
            host: "node-9.example".into(),
            port: 7002,
            bus_port: 17002,
            repl_port: 0,
            flags: NodeFlags(NodeFlags::FAIL | NodeFlags::HANDSHAKE),
            pong_received_ms: 0,
        },
    ];
    let bodies = vec![
        Body::Meet {
            gossip: gossip.clone(),
        },
        Body::Ping {
            gossip: gossip.clone(),
        },
        Body::Pong { gossip },
        Body::Fail {
            node: NodeId::from_u128(9),
        },
        Body::FailoverAuthRequest { force_ack: true },
        Body::FailoverAuthAck,
        Body::Update {
            node: NodeId::from_u128(8),
            config_epoch: 12,
            slots: header(1, None).slots,
        },
        Body::MfStart,
        Body::Publish {
            channel: b"news".to_vec(),
            message: b"hello".to_vec(),
            shard: false,
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| BusMessage {
            header: header(7, (i % 3 == 1).then_some(8)),
            body,
        })
        .collect()
}

fn expect_ok<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("encoding a seed {what} failed: {e:?}"),
    }
}

pub fn region_seeds() -> Vec<Vec<u8>> {
    let frames = region_frames();
    let mut seeds: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| expect_ok(codec::encode(f), "region frame"))
        .collect();
    // The same frames as the server sends them: large ones LZ4-compressed (`Frame::Packed`).
    let mut enc = codec::FrameEncoder::new(true);
    for f in &frames {
        let mut out = Vec::new();
        expect_ok(enc.encode_into(f, &mut out), "compressed region frame");
        seeds.push(out);
    }
    seeds
}

pub fn replica_seeds() -> Vec<Vec<u8>> {
    replica_frames()
        .iter()
        .map(|f| {
            let mut out = Vec::new();
            expect_ok(encode_frame(f, &mut out), "replica frame");
            out
        })
        .collect()
}

pub fn bus_seeds() -> Vec<Vec<u8>> {
    bus_messages()
        .iter()
        .map(|m| expect_ok(bus::encode(m), "bus message"))
        .collect()
}

/// `bus-auth` inputs: challenge (16) · hello (52) · frames, each followed by its tag.
pub fn bus_auth_seeds() -> Vec<Vec<u8>> {
    let secret = bus_secret();
    let messages = bus_seeds();
    (0u8..4)
        .map(|i| {
            let challenge = [i.wrapping_mul(37); NONCE_BYTES];
            let (hello, mut signer) = secret.hello(&challenge, [i + 1; NONCE_BYTES]);
            let mut out = challenge.to_vec();
            out.extend_from_slice(&hello);
            for m in messages
                .iter()
                .skip(usize::from(i))
                .take(usize::from(i) + 1)
            {
                out.extend_from_slice(m);
                out.extend_from_slice(&signer.sign(m));
            }
            out
        })
        .collect()
}

/// RESP requests: `encode_command`'s multibulk, inline commands (quotes, escapes),
/// pipelines, an empty multibulk. The first byte of each `resp` input is a control byte
/// (chunking and limits, see `targets::resp`).
pub fn resp_seeds() -> Vec<Vec<u8>> {
    let commands: Vec<Vec<&[u8]>> = vec![
        vec![b"PING"],
        vec![b"SET", b"key", b"value"],
        vec![b"SET", b"k", b"v", b"EX", b"100", b"NX"],
        vec![b"GET", b"key"],
        vec![b"HSET", b"h", b"f1", b"v1", b"f2", b"\x00\xff\r\n"],
        vec![b"MSET", b"a", b"1", b"b", b"2"],
        vec![b"AUTH", b"default", b"secret"],
        vec![b"CLIENT", b"SETNAME", b"x"],
        vec![b""],
    ];
    let mut requests: Vec<Vec<u8>> = commands
        .iter()
        .map(|args| {
            let mut out = BytesMut::new();
            encode_command(args, &mut out);
            out.to_vec()
        })
        .collect();
    requests.extend(
        [
            &b"PING\r\n"[..],
            b"SET key \"va lue\\x41\\n\" 'it\\'s'\r\n",
            b"GET  key\n",
            b"\r\n",
            b"*0\r\n",
            b"*-1\r\n",
            b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n",
            b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n",
        ]
        .iter()
        .map(|r| r.to_vec()),
    );
    requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            // Control bytes spread over chunk sizes, with and without the pre-auth limits
            // (the mutator sets the tight-limits bit).
            let mut out = vec![(i as u8).wrapping_mul(29) & 0x7f];
            out.extend_from_slice(&r);
            out
        })
        .collect()
}

/// Kafka records: `flags` (bit 0: the record has a key, bit 1: a value) · key length (one
/// byte) · key · value, with the values `meridian invalidate` writes and the batched form.
pub fn kafka_seeds() -> Vec<Vec<u8>> {
    let record = |key: Option<&[u8]>, value: Option<&[u8]>| {
        let flags = u8::from(key.is_some()) | u8::from(value.is_some()) << 1;
        let key = key.unwrap_or_default();
        let mut out = vec![flags, key.len() as u8];
        out.extend_from_slice(key);
        out.extend_from_slice(value.unwrap_or_default());
        out
    };
    vec![
        record(Some(b"user:42"), Some(&record_value(Some(7)))),
        record(Some(b"user:42"), Some(&record_value(None))),
        record(Some(b"k"), None),
        record(Some(b"k"), Some(&record_value(Some(u64::MAX)))),
        record(None, Some(br#"{"version":12,"keys":["a","b","c"]}"#)),
        record(
            Some(b"ignored"),
            Some(br#"{"keys":["\u00e9t\u00e9","k\"q\\"], "version": 3}"#),
        ),
        record(Some(b"k"), Some(b" \n\t")),
        record(Some(b"k"), Some(br#"{"version":0}"#)),
        record(None, Some(br#"{"version":1}"#)),
        record(Some(b"k"), Some(br#"{"version":1,"other":true}"#)),
        record(Some(b"k"), Some(br#"{"version":1,"keys":[]}"#)),
    ]
}

/// Tokens the mutator inserts, per target.
pub const RESP_DICT: &[&[u8]] = &[
    b"\r\n",
    b"*",
    b"$",
    b"*1\r\n",
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"\"",
    b"'",
    b"\\x",
    b"\\x4",
    b"\\",
    b"\\\"",
    b" ",
    b"\n",
    b"\r",
    b"*2147483648\r\n",
    b"$536870913\r\n",
];
pub const WIRE_DICT: &[&[u8]] = &[
    &[0, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0xff],
    &[
        0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
    ],
    &[0x00],
    &[0x01],
    &[0xff, 0xff, 0x03],
    b"10.0.0.1:7100",
    b"[::1]:0",
];
pub const JSON_DICT: &[&[u8]] = &[
    b"\"version\":",
    b"\"keys\":",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"\"",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    b"null",
    b"true",
    b"1e3",
    b"-1",
    b"18446744073709551616",
    b"0.5",
    b"\xff",
    b"\xe2\x82\xac",
];
