//! In-process benchmarks (not timed tests): merged deltas per second over one link, bytes
//! per delta on the wire, anti-entropy bytes for 1 % divergence over 100 k keys.
//! Run with `cargo run --release -p meridian-simulations --bin meridian-sim -- --bench-link`.

use bytes::Bytes;
use meridian_crdt::{Delta, HlcClock, Keyspace, KeyspaceConfig, RegionId};
use meridian_replication::{decode, encode, Frame, FrameEncoder, LinkConfig, RegionLink};
use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// Frames go LZ4-compressed (`[replication] compression = "lz4"`, the server's default).
    static COMPRESS: Cell<bool> = const { Cell::new(true) };
}

fn keyspace(r: u16) -> Keyspace {
    Keyspace::new(KeyspaceConfig {
        region: RegionId(r),
        retain_tombstones: true,
        ..KeyspaceConfig::default()
    })
}

fn key16(i: usize) -> Bytes {
    Bytes::from(format!("key:{i:012}"))
}

/// Move every frame `src` has to send into `dst` through the codec.
fn flow(
    now: u64,
    src: &mut RegionLink,
    dst: &mut RegionLink,
    ks_dst: &mut Keyspace,
    buf: &mut Vec<u8>,
) -> (bool, usize, usize) {
    let (mut moved, mut bytes, mut ae_bytes) = (false, 0, 0);
    let mut enc = FrameEncoder::new(COMPRESS.get());
    while let Some((_, frame)) = src.poll_transmit(now) {
        buf.clear();
        let n = enc.encode_into(&frame, buf).expect("encodable");
        if frame.is_anti_entropy() {
            ae_bytes += n;
        }
        bytes += n;
        let (f, _) = decode(buf).expect("valid").expect("whole");
        dst.handle_frame(now, src.region(), f, ks_dst);
        moved = true;
    }
    (moved, bytes, ae_bytes)
}

/// Ship everything queued on either side (and the replies) through the codec; returns
/// (all bytes, anti-entropy bytes).
fn pump(
    now: u64,
    a: &mut RegionLink,
    ka: &mut Keyspace,
    b: &mut RegionLink,
    kb: &mut Keyspace,
) -> (usize, usize) {
    let mut buf = Vec::new();
    let (mut bytes, mut ae_bytes) = (0, 0);
    loop {
        // Anti-entropy digests and comparisons are computed a slot range per step.
        let working = a.has_anti_entropy_work() || b.has_anti_entropy_work();
        a.poll_anti_entropy(now, ka);
        b.poll_anti_entropy(now, kb);
        let (m1, b1, e1) = flow(now, a, b, kb, &mut buf);
        let (m2, b2, e2) = flow(now, b, a, ka, &mut buf);
        bytes += b1 + b2;
        ae_bytes += e1 + e2;
        if !m1 && !m2 && !working {
            return (bytes, ae_bytes);
        }
    }
}

fn link_pair() -> (RegionLink, RegionLink) {
    let cfg = LinkConfig {
        anti_entropy_interval_ms: u64::MAX / 4,
        frontier_interval_ms: u64::MAX / 4,
        ..LinkConfig::default()
    };
    (
        RegionLink::new(RegionId(0), &[RegionId(1)], 1, cfg.clone()),
        RegionLink::new(RegionId(1), &[RegionId(0)], 1, cfg),
    )
}

pub fn merged_deltas_per_second(n: usize) -> f64 {
    let (mut ka, mut kb) = (keyspace(0), keyspace(1));
    let mut clock = HlcClock::new(RegionId(0));
    let deltas: Vec<Delta> = (0..n)
        .map(|i| {
            let st = clock.now(1_000);
            ka.write(&key16(i % 10_000), st, 1_000, |w| w.incr_by(1).map(|_| ()))
                .expect("incr");
            ka.drain_deltas().next().expect("one delta")
        })
        .collect();
    let (mut a, mut b) = link_pair();
    a.handle_timeout(0);
    b.handle_timeout(0);
    let start = Instant::now();
    for chunk in deltas.chunks(4096) {
        a.enqueue_all(1, chunk.iter().cloned());
        pump(1, &mut a, &mut ka, &mut b, &mut kb);
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(b.stats().deltas_applied as usize, n);
    n as f64 / secs
}

/// Wire bytes per delta: (alone in a batch frame, amortised in a full batch).
pub fn bytes_per_delta(make: impl Fn(&mut Keyspace, usize, &mut HlcClock)) -> (usize, f64) {
    let mut ks = keyspace(0);
    let mut clock = HlcClock::new(RegionId(0));
    let deltas: Vec<Delta> = (0..512)
        .map(|i| {
            make(&mut ks, i, &mut clock);
            ks.drain_deltas().next().expect("one delta")
        })
        .collect();
    let frame = |ds: Vec<Delta>| {
        Frame::Batch(meridian_replication::codec::Batch {
            origin: RegionId(0),
            epoch: 1,
            floor: 1,
            first_seq: 1,
            moved: vec![],
            deltas: ds,
        })
    };
    let one = encode(&frame(deltas[..1].to_vec()))
        .expect("encodable")
        .len();
    let all = encode(&frame(deltas)).expect("encodable").len();
    (one, all as f64 / 512.0)
}

/// Anti-entropy bytes to repair `diverged` keys out of `total` (16-byte keys, 100-byte
/// values); returns (anti-entropy bytes, bytes of the diverged keys' key + value).
/// `stale_initiates`: the region missing the writes starts the round (else the other one).
pub fn anti_entropy_bytes(total: usize, diverged: usize, stale_initiates: bool) -> (usize, usize) {
    let (mut ka, mut kb) = (keyspace(0), keyspace(1));
    let mut clock = HlcClock::new(RegionId(0));
    let value = Bytes::from(vec![b'x'; 100]);
    for i in 0..total {
        let st = clock.now(1_000);
        ka.write(&key16(i), st, 1_000, |w| w.set_str(value.clone(), false));
    }
    for d in ka.drain_deltas() {
        kb.apply_delta(&d);
    }
    let mut diverged_bytes = 0;
    for i in 0..diverged {
        let k = key16(i * (total / diverged.max(1)));
        let v = Bytes::from(vec![b'y'; 100]);
        diverged_bytes += k.len() + v.len();
        let st = clock.now(2_000);
        ka.write(&k, st, 2_000, |w| w.set_str(v, false));
    }
    ka.drain_deltas().for_each(drop);
    let (mut a, mut b) = link_pair();
    if stale_initiates {
        b.request_anti_entropy(RegionId(0));
        b.handle_timeout(0);
        b.poll_anti_entropy(0, &mut kb);
    } else {
        a.request_anti_entropy(RegionId(1));
        a.handle_timeout(0);
        a.poll_anti_entropy(0, &mut ka);
    }
    let (_, ae) = pump(0, &mut a, &mut ka, &mut b, &mut kb);
    for s in 0..meridian_crdt::SLOT_COUNT as u16 {
        assert_eq!(
            ka.slot_digest(s),
            kb.slot_digest(s),
            "repaired in one round"
        );
    }
    (ae, diverged_bytes)
}

pub fn run_all() {
    let n = 1_000_000;
    for compress in [false, true, false, true] {
        COMPRESS.set(compress);
        let rate = merged_deltas_per_second(n);
        println!(
            "link: {n} INCR deltas over one link (encode+decode+merge+ack), compression {}: \
             {rate:.0} merged deltas/s",
            if compress { "lz4" } else { "none" }
        );
    }
    COMPRESS.set(false);
    let (one, amortised) = bytes_per_delta(|ks, i, c| {
        let st = c.now(1_000);
        ks.write(&key16(i), st, 1_000, |w| w.incr_by(1).map(|_| ()))
            .expect("incr");
    });
    println!("wire: INCR on a 16-byte key: {one} bytes as a lone batch frame, {amortised:.1} bytes/delta in a 512-delta batch");
    let (one, amortised) = bytes_per_delta(|ks, i, c| {
        let st = c.now(1_000);
        let v = Bytes::from(vec![b'v'; 100]);
        ks.write(&key16(i), st, 1_000, |w| w.set_str(v, false));
    });
    println!("wire: SET of 100 bytes on a 16-byte key: {one} bytes as a lone batch frame, {amortised:.1} bytes/delta in a 512-delta batch");
    for stale_initiates in [true, false] {
        let (ae, div) = anti_entropy_bytes(100_000, 1_000, stale_initiates);
        println!(
            "anti-entropy: 1% of 100000 keys diverged ({} region initiates): {ae} bytes on the wire vs {div} bytes of diverged keys+values ({:.2}x)",
            if stale_initiates { "stale" } else { "up-to-date" },
            ae as f64 / div as f64
        );
    }
}
