//! Pair-style harness (quinn-proto's shape): several `RegionLink`s wired through in-memory
//! queues that duplicate, reorder and drop frames, each over a real `Keyspace`.

use bytes::Bytes;
use meridian_crdt::{key_slot, HlcClock, Keyspace, KeyspaceConfig, RegionId, SLOT_COUNT};
use meridian_replication::{decode, encode, Frame, LinkConfig, RegionLink};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Node {
    ks: Keyspace,
    clock: HlcClock,
    link: RegionLink,
    up: bool,
}

struct Net {
    nodes: Vec<Node>,
    /// (deliver_at, from, to, bytes)
    wire: Vec<(u64, usize, usize, Vec<u8>)>,
    rng: Rng,
    now: u64,
    loss: u64,
    dup: u64,
    ae_bytes: usize,
}

fn ids(n: usize) -> Vec<RegionId> {
    (0..n as u16).map(RegionId).collect()
}

impl Net {
    fn new(n: usize, cfg: LinkConfig, seed: u64) -> Net {
        let all = ids(n);
        let nodes = all
            .iter()
            .map(|&r| {
                let peers: Vec<_> = all.iter().copied().filter(|&p| p != r).collect();
                Node {
                    ks: Keyspace::new(KeyspaceConfig {
                        region: r,
                        retain_tombstones: true,
                        ..KeyspaceConfig::default()
                    }),
                    clock: HlcClock::new(r),
                    link: RegionLink::new(r, &peers, 1, cfg.clone()),
                    up: true,
                }
            })
            .collect();
        Net {
            nodes,
            wire: Vec::new(),
            rng: Rng(seed | 1),
            now: 1_000,
            loss: 0,
            dup: 0,
            ae_bytes: 0,
        }
    }

    fn write(&mut self, i: usize, op: u64) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let stamp = n.clock.now(now);
        let key = format!("k{}", op % 7);
        match op % 4 {
            0 => {
                n.ks.write(key.as_bytes(), stamp, now, |w| w.incr_by(1).map(|_| ()))
                    .unwrap_or(());
            }
            1 => {
                n.ks.write(format!("s{}", op % 5).as_bytes(), stamp, now, |w| {
                    w.sadd(&Bytes::from(format!("m{}", op % 3)));
                })
            }
            2 => {
                n.ks.write(format!("s{}", op % 5).as_bytes(), stamp, now, |w| {
                    w.srem(format!("m{}", op % 3).as_bytes());
                })
            }
            _ => n.ks.write(key.as_bytes(), stamp, now, |w| {
                w.delete();
            }),
        }
    }

    fn step(&mut self) {
        self.now += 10;
        let now = self.now;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let n = &mut self.nodes[i];
            let deltas: Vec<_> = n.ks.drain_deltas().collect();
            n.link.enqueue_all(now, deltas);
            // As the shell: every local write so far is enqueued.
            n.link.note_local_hlc(n.clock.last());
            n.link.handle_timeout(now);
            n.link.poll_anti_entropy(now, &mut n.ks);
            while let Some((peer, frame)) = n.link.poll_transmit(now) {
                let bytes = encode(&frame).unwrap();
                if frame.is_anti_entropy() {
                    self.ae_bytes += bytes.len();
                }
                let copies = if self.rng.below(100) < self.dup { 2 } else { 1 };
                for _ in 0..copies {
                    if self.rng.below(100) < self.loss {
                        continue;
                    }
                    let at = now + 1 + self.rng.below(40);
                    self.wire.push((at, i, peer.0 as usize, bytes.clone()));
                }
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|m| m.0 <= now);
        self.wire = later;
        for (_, from, to, bytes) in due {
            let n = &mut self.nodes[to];
            if !n.up || !self.nodes[from].up {
                continue;
            }
            let n = &mut self.nodes[to];
            let (frame, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            n.link
                .handle_frame(now, RegionId(from as u16), frame, &mut n.ks);
            n.clock.observe(n.link.max_seen_hlc());
        }
    }

    fn settle(&mut self, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            self.step();
            if self.wire.is_empty()
                && self.converged()
                && self.nodes.iter().all(|n| n.link.is_idle())
            {
                return true;
            }
        }
        false
    }

    fn converged(&mut self) -> bool {
        let first: Vec<u64> = (0..SLOT_COUNT as u16)
            .map(|s| self.nodes[0].ks.slot_digest(s))
            .collect();
        self.nodes[1..]
            .iter_mut()
            .all(|n| (0..SLOT_COUNT as u16).all(|s| n.ks.slot_digest(s) == first[s as usize]))
    }
}

#[test]
fn three_regions_converge_under_duplication_reordering_and_loss() {
    for seed in 1..6u64 {
        let mut net = Net::new(
            3,
            LinkConfig {
                max_batch_deltas: 4,
                resend_timeout_ms: 200,
                anti_entropy_interval_ms: 1_000_000,
                ..LinkConfig::default()
            },
            seed,
        );
        net.dup = 30;
        net.loss = 10;
        for _ in 0..300 {
            let op = net.rng.next();
            let i = net.rng.below(3) as usize;
            net.write(i, op);
            if net.rng.below(3) == 0 {
                net.step();
            }
        }
        net.loss = 0;
        assert!(net.settle(2_000), "seed {seed} did not converge");
        assert_eq!(net.ae_bytes, 0, "deltas alone repair without anti-entropy");
        let dup: u64 = net
            .nodes
            .iter()
            .map(|n| n.link.stats().deltas_duplicate)
            .sum();
        assert!(dup > 0, "duplicates were exercised");
    }
}

#[test]
fn bounded_log_falls_back_to_anti_entropy() {
    let mut net = Net::new(
        2,
        LinkConfig {
            max_log_deltas: 16,
            anti_entropy_interval_ms: 1_000_000,
            ..LinkConfig::default()
        },
        7,
    );
    net.nodes[1].up = false;
    for op in 0..500 {
        net.write(0, op);
        net.step();
        assert!(net.nodes[0].link.backlog(RegionId(1)) <= 16);
    }
    assert!(net.nodes[0].link.stats().logs_dropped > 0);
    net.nodes[1].up = true;
    assert!(net.settle(2_000));
    assert!(net.nodes[0].link.anti_entropy_stats().rounds_completed > 0);
}

#[test]
fn empty_region_bootstraps_by_anti_entropy_and_gc_bounds_tombstones() {
    let mut net = Net::new(
        3,
        LinkConfig {
            anti_entropy_interval_ms: 500,
            frontier_interval_ms: 100,
            ..LinkConfig::default()
        },
        9,
    );
    net.nodes[2].up = false;
    for op in 0..400 {
        let i = (op % 2) as usize;
        net.write(i, op * 7919);
        net.step();
    }
    // Region 2 starts over as an empty new incarnation.
    let peers = [RegionId(0), RegionId(1)];
    net.nodes[2].ks = Keyspace::new(KeyspaceConfig {
        region: RegionId(2),
        retain_tombstones: true,
        ..KeyspaceConfig::default()
    });
    net.nodes[2].link = RegionLink::new(
        RegionId(2),
        &peers,
        2,
        LinkConfig {
            anti_entropy_interval_ms: 500,
            frontier_interval_ms: 100,
            ..LinkConfig::default()
        },
    );
    net.nodes[2].up = true;
    assert!(net.settle(5_000));
    assert!(!net.nodes[2].ks.is_empty());
    // Let frontiers circulate while GC runs, as the shell runs it.
    let before: usize = net.nodes.iter().map(|n| n.ks.stats().tombstones).sum();
    for _ in 0..200 {
        net.step();
        for n in net.nodes.iter_mut() {
            n.link.collect_garbage(&mut n.ks);
        }
    }
    let after: usize = net.nodes.iter().map(|n| n.ks.stats().tombstones).sum();
    assert!(
        before > 0 && after < before,
        "tombstones {before} -> {after}"
    );
    assert!(net.converged());
}

#[test]
fn frames_are_decodable_and_batches_bounded() {
    let mut net = Net::new(
        2,
        LinkConfig {
            max_batch_deltas: 8,
            ..LinkConfig::default()
        },
        3,
    );
    for op in 0..100 {
        net.write(0, op);
    }
    let deltas: Vec<_> = net.nodes[0].ks.drain_deltas().collect();
    net.nodes[0].link.enqueue_all(net.now, deltas);
    let enqueued = net.nodes[0].link.stats().deltas_enqueued as usize;
    // Writes to a key whose delta was not sent yet join it (`LinkConfig::coalesce`).
    let joined = net.nodes[0].link.stats().deltas_coalesced as usize;
    assert!(enqueued > 20);
    let mut shipped = 0;
    while let Some((_, f)) = net.nodes[0].link.poll_transmit(net.now) {
        if let Frame::Batch(b) = f {
            assert!(b.deltas.len() <= 8);
            assert_eq!(b.first_seq as usize, shipped + 1);
            shipped += b.deltas.len();
        }
    }
    assert_eq!(shipped + joined, enqueued);
}

/// Regions 0 and 1 with keyspaces that keep tombstones and links that run anti-entropy
/// only on request, 512 slots per step, and never resend on their own.
fn stepwise_pair() -> (Keyspace, Keyspace, RegionLink, RegionLink) {
    let cfg = LinkConfig {
        anti_entropy_interval_ms: 1_000_000,
        anti_entropy_retry_ms: 100,
        anti_entropy_step_slots: 512,
        resend_timeout_ms: 1_000_000,
        ..LinkConfig::default()
    };
    let mk = |r: u16| {
        Keyspace::new(KeyspaceConfig {
            region: RegionId(r),
            retain_tombstones: true,
            ..KeyspaceConfig::default()
        })
    };
    (
        mk(0),
        mk(1),
        RegionLink::new(RegionId(0), &[RegionId(1)], 1, cfg.clone()),
        RegionLink::new(RegionId(1), &[RegionId(0)], 1, cfg),
    )
}

/// A round that overlaps deltas still in flight leaves those keys to the deltas (no double
/// shipping), is computed a slot range per step, and the regions still converge.
#[test]
fn anti_entropy_round_leaves_in_flight_keys_to_their_deltas() {
    let (mut ka, mut kb, mut a, mut b) = stepwise_pair();
    let mut clock = HlcClock::new(RegionId(0));
    for i in 0..2_000u32 {
        let st = clock.now(1_000);
        ka.write(format!("k{i}").as_bytes(), st, 1_000, |w| {
            w.incr_by(1).map(|_| ())
        })
        .unwrap_or(());
    }
    a.enqueue_all(1_000, ka.drain_deltas());
    // The batches are on the wire (held here) while A runs a round with B.
    let mut held = Vec::new();
    let mut ae_frames = Vec::new();
    while let Some((_, f)) = a.poll_transmit(1_000) {
        if f.is_anti_entropy() {
            ae_frames.push(f);
        } else {
            held.push(f);
        }
    }
    assert!(!held.is_empty());
    a.request_anti_entropy(RegionId(1));
    a.handle_timeout(1_000);
    // The link is busy shipping: the requested round waits (at most `retry_ms`).
    a.poll_anti_entropy(1_000, &mut ka);
    assert!(!a.has_anti_entropy_work());
    let now = 1_100;
    a.handle_timeout(now);
    let mut steps = 0;
    loop {
        a.poll_anti_entropy(now, &mut ka);
        b.poll_anti_entropy(now, &mut kb);
        steps += 1;
        let mut moved = false;
        while let Some((_, f)) = a.poll_transmit(now) {
            assert!(
                !matches!(f, Frame::Batch(_)),
                "every batch is already in flight"
            );
            b.handle_frame(now, RegionId(0), f, &mut kb);
            moved = true;
        }
        while let Some((_, f)) = b.poll_transmit(now) {
            a.handle_frame(now, RegionId(1), f, &mut ka);
            moved = true;
        }
        if !moved && !a.has_anti_entropy_work() && !b.has_anti_entropy_work() {
            break;
        }
        assert!(steps < 1_000, "the round finishes");
    }
    assert!(
        steps >= 2 * SLOT_COUNT / 512,
        "digests and comparisons took several steps"
    );
    let ae = a.anti_entropy_stats();
    assert_eq!(ae.rounds_completed, 1);
    assert!(ae.slots_differing > 0, "B lacked the keys in flight");
    assert_eq!(
        ae.entries_shipped, 0,
        "keys in flight are left to their deltas"
    );
    // The deltas land and the regions agree.
    for f in held {
        b.handle_frame(1_050, RegionId(0), f, &mut kb);
    }
    for s in 0..SLOT_COUNT as u16 {
        assert_eq!(ka.slot_digest(s), kb.slot_digest(s));
    }
}

/// A key evicted after a round digested its slot was compared while still present: that
/// round must not mark the (now lossy) slot repaired. A later round brings the key back
/// and only then is the slot repaired (seed 617 of meridian-sim: the region wrote to the
/// key on a state that had forgotten its own counter contribution, losing increments).
#[test]
fn eviction_after_the_slot_was_digested_keeps_the_slot_lossy() {
    let (mut ka, mut kb, mut a, mut b) = stepwise_pair();
    let mut clock = HlcClock::new(RegionId(0));
    // A key of a slot the first step digests, held by both regions.
    let key = (0..)
        .map(|i| format!("ctr:{i}"))
        .find(|k| key_slot(k.as_bytes()) < 512)
        .expect("some key");
    let key = key.as_bytes();
    let slot = key_slot(key);
    ka.write(key, clock.now(1_000), 1_000, |w| w.incr_by(13).map(|_| ()))
        .expect("incr");
    ka.drain_deltas().for_each(drop);
    let state = ka.raw_entry(key).map(|e| e.into_owned()).expect("written");
    kb.merge_state(key, true, &state);

    let mut round = |now: u64, a: &mut RegionLink, ka: &mut Keyspace, evict: bool| {
        a.request_anti_entropy(RegionId(1));
        a.handle_timeout(now);
        let mut first = true;
        for _ in 0..1_000 {
            a.poll_anti_entropy(now, ka);
            if first && evict {
                // The slot is digested (equal to B's), then the key is evicted here.
                assert!(a.has_anti_entropy_work(), "the round takes several steps");
                assert!(ka.evict_key(key) > 0);
                assert!(ka.slot_is_lossy(slot));
            }
            first = false;
            b.poll_anti_entropy(now, &mut kb);
            let mut moved = false;
            while let Some((_, f)) = a.poll_transmit(now) {
                b.handle_frame(now, RegionId(0), f, &mut kb);
                moved = true;
            }
            while let Some((_, f)) = b.poll_transmit(now) {
                a.handle_frame(now, RegionId(1), f, ka);
                moved = true;
            }
            if !moved && !a.has_anti_entropy_work() && !b.has_anti_entropy_work() {
                return;
            }
        }
        panic!("the round finishes");
    };
    round(2_000, &mut a, &mut ka, true);
    assert_eq!(a.anti_entropy_stats().rounds_completed, 1);
    assert!(
        ka.slot_is_lossy(slot),
        "a round that digested the slot before the eviction does not repair it"
    );
    // Later rounds fetch the key back, then find the slot equal and repair it.
    let mut now = 2_000;
    while ka.slot_is_lossy(slot) {
        now += 200;
        assert!(now < 10_000, "the slot is repaired");
        round(now, &mut a, &mut ka, false);
    }
    assert_eq!(ka.raw_entry(key).as_deref(), Some(&state));
}

/// A lossy slot is repaired once a round with *every* peer found it equal. The peers found
/// equal are a bit set of any width: a region with more than 64 peers neither panics nor
/// repairs the slot before the last peer's round (the set was one `u64` that asserted at
/// most 64 peers when the link was built).
#[test]
fn a_lossy_slot_waits_for_every_one_of_more_than_64_peers() {
    const PEERS: u16 = 70;
    let cfg = LinkConfig {
        anti_entropy_interval_ms: 3_600_000,
        ..LinkConfig::default()
    };
    let peer_ids: Vec<RegionId> = (1..=PEERS).map(RegionId).collect();
    let mut a = RegionLink::new(RegionId(0), &peer_ids, 1, cfg.clone());
    let mut ka = Keyspace::new(KeyspaceConfig::default());
    let slot = 5;
    ka.mark_all_lossy(|s| s == slot);
    assert!(ka.slot_is_lossy(slot));
    for (n, &p) in peer_ids.iter().enumerate() {
        // Every peer is empty: the round with it finds every slot equal.
        let mut b = RegionLink::new(p, &[RegionId(0)], 1, cfg.clone());
        let mut kb = Keyspace::new(KeyspaceConfig {
            region: p,
            ..KeyspaceConfig::default()
        });
        let now = 2_000 + n as u64;
        a.request_anti_entropy(p);
        a.handle_timeout(now);
        let mut done = false;
        for _ in 0..1_000 {
            a.poll_anti_entropy(now, &mut ka);
            b.poll_anti_entropy(now, &mut kb);
            let mut moved = false;
            while let Some((to, f)) = a.poll_transmit(now) {
                if to == p {
                    b.handle_frame(now, RegionId(0), f, &mut kb);
                    moved = true;
                }
            }
            while let Some((_, f)) = b.poll_transmit(now) {
                a.handle_frame(now, p, f, &mut ka);
                moved = true;
            }
            if !moved && !a.has_anti_entropy_work() && !b.has_anti_entropy_work() {
                done = true;
                break;
            }
        }
        assert!(done, "the round with peer {} finishes", p.0);
        assert_eq!(a.anti_entropy_stats().rounds_completed, n as u64 + 1);
        let last = n + 1 == peer_ids.len();
        assert_eq!(
            ka.slot_is_lossy(slot),
            !last,
            "after the rounds with {} of {PEERS} peers",
            n + 1
        );
    }
}
