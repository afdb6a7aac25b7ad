//! The keyspace's test support (a [`Writer`] region, [`assert_consistent`]: a recount of
//! everything the keyspace caches, checked by every test) and the tests that cross its jobs:
//! stats and per-slot counters against a recount after random operations, writer edge cases,
//! invalidation floors, and the packed fast paths against the general ones. Tests of one job
//! sit next to it (`expiry.rs`, `eviction.rs`, `scan.rs`, `gc.rs`, `write.rs`).

use super::slab::node_bytes;
use super::tables::{slot_at, slot_index};
use super::*;
use crate::entry::{EntryWriter, Kind};
use crate::hlc::{Hlc, HlcClock};
use crate::packed::Stored;
use crate::slot::key_slot;
use proptest::prelude::*;

/// Proptest case count: `default`, or `PROPTEST_CASES` for a longer soak.
pub(super) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(super) fn ks(region: u16, retain: bool) -> Keyspace {
    Keyspace::new(KeyspaceConfig {
        region: RegionId(region),
        retain_tombstones: retain,
        seed: 42,
    })
}

pub(super) fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A region writing with its own clock (physical time = `now_ms`).
pub(super) struct Writer {
    pub(super) ks: Keyspace,
    pub(super) clock: HlcClock,
}

impl Writer {
    pub(super) fn new(region: u16, retain: bool) -> Writer {
        Writer {
            ks: ks(region, retain),
            clock: HlcClock::new(RegionId(region)),
        }
    }

    pub(super) fn write<R>(
        &mut self,
        key: &str,
        now_ms: u64,
        f: impl FnOnce(&mut EntryWriter) -> R,
    ) -> R {
        let stamp = self.clock.now(now_ms);
        self.ks.write(key.as_bytes(), stamp, now_ms, f)
    }

    pub(super) fn set(&mut self, key: &str, now_ms: u64, deadline_ms: Option<u64>) {
        self.write(key, now_ms, |w| {
            w.set_str(bytes("v"), false);
            if deadline_ms.is_some() {
                w.set_deadline(deadline_ms);
            }
        });
    }
}

/// Recount everything the keyspace caches and compare.
pub(super) fn assert_consistent(ks: &Keyspace) {
    let (mut keys, mut volatile, mut tombstones, mut bytes_total) = (0, 0, 0, 0);
    let mut nodes = 0;
    for (i, t) in ks.slots.iter().enumerate() {
        let slot = usize::from(slot_at(i));
        assert_eq!(slot_index(slot as u16), i);
        let Some(t) = t.as_deref() else { continue };
        let (mut alive, mut vol) = (0, 0);
        for n in ks.nodes.iter(&t.map) {
            nodes += 1;
            let (k, e) = (&n.key[..], n.body.view());
            assert_eq!(key_slot(k) as usize, slot, "key stored in its slot");
            // Canonical storage: packed exactly when the entry has a packed shape, and the
            // packed body answers like the entry it stands for.
            let repacked = Stored::pack(e.clone().into_owned());
            assert_eq!(
                matches!(n.body, Stored::Full(_)),
                matches!(repacked, Stored::Full(_)),
                "{k:?} stored packed iff packable"
            );
            assert_eq!(n.body.is_alive(), e.is_alive(), "packed liveness of {k:?}");
            assert_eq!(
                n.body.deadline_ms(),
                e.deadline_ms(),
                "packed deadline of {k:?}"
            );
            assert_eq!(n.body.floor(), e.floor(), "packed floor of {k:?}");
            let mut rebuilt = e.clone().into_owned();
            rebuilt.rebuild();
            assert_eq!(
                e.deadline_ms(),
                rebuilt.deadline_ms(),
                "cached deadline of {k:?}"
            );
            assert_eq!(e.is_alive(), rebuilt.is_alive(), "cached liveness of {k:?}");
            bytes_total += node_bytes(n);
            if e.is_alive() {
                alive += 1;
                vol += usize::from(e.deadline_ms().is_some());
            } else {
                tombstones += 1;
            }
        }
        assert_eq!(t.alive, alive, "slot {slot} alive");
        assert_eq!(t.volatile, vol, "slot {slot} volatile");
        assert_eq!(ks.slot_len(slot as u16), alive);
        keys += alive;
        volatile += vol;
    }
    // Every slab slot is either a node some table holds or on the free list.
    let slab = &ks.nodes.slab;
    assert_eq!(slab.live, nodes, "slab holds exactly the tables' nodes");
    let slots_written: usize = slab.chunks.iter().map(Vec::len).sum();
    assert_eq!(
        slots_written,
        nodes + slab.free.len(),
        "freed handles are all listed"
    );
    let s = ks.stats();
    assert_eq!(s.keys, keys, "stats.keys");
    assert_eq!(s.volatile, volatile, "stats.volatile");
    assert_eq!(s.tombstones, tombstones, "stats.tombstones");
    assert_eq!(s.bytes, bytes_total, "stats.bytes");
    assert_eq!(ks.len(), keys);
    if !ks.cfg.retain_tombstones {
        assert_eq!(tombstones, 0, "single-region mode keeps no tombstones");
    }
}

/// `n` keys, each in a slot of its own.
pub(super) fn keys_in_distinct_slots(prefix: &str, n: usize) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        let k = format!("{prefix}{i}");
        if seen.insert(key_slot(k.as_bytes())) {
            out.push(k);
        }
        i += 1;
    }
    out
}

pub(super) const TAG_SLOT_KEYS: [&str; 5] = ["{t}a", "{t}b", "{t}c", "{t}d", "{t}e"];

pub(super) fn tag_slot() -> u16 {
    key_slot(b"{t}")
}

// ---- stats stay consistent under random operations ----

#[derive(Clone, Debug)]
enum KsOp {
    Set {
        key: u8,
        ttl_ms: Option<u64>,
    },
    Incr {
        key: u8,
    },
    Sadd {
        key: u8,
        member: u8,
    },
    Srem {
        key: u8,
        member: u8,
    },
    Hset {
        key: u8,
        field: u8,
    },
    Hdel {
        key: u8,
        field: u8,
    },
    Expire {
        key: u8,
        ttl_ms: u64,
    },
    Persist {
        key: u8,
    },
    Del {
        key: u8,
    },
    /// The other region writes; its delta is applied here.
    Remote {
        key: u8,
        member: u8,
        del: bool,
    },
    Get {
        key: u8,
    },
    Advance {
        ms: u64,
    },
    ActiveExpire {
        budget: u8,
    },
    EvictKey {
        key: u8,
    },
    EvictOne {
        policy: u8,
    },
    DropSlot {
        key: u8,
    },
    Gc,
    Repair {
        key: u8,
    },
}

fn ks_op() -> impl Strategy<Value = KsOp> {
    let key = 0u8..12;
    prop_oneof![
        3 => (key.clone(), prop::option::of(1u64..200)).prop_map(|(key, ttl_ms)| KsOp::Set { key, ttl_ms }),
        2 => key.clone().prop_map(|key| KsOp::Incr { key }),
        3 => (key.clone(), 0u8..4).prop_map(|(key, member)| KsOp::Sadd { key, member }),
        2 => (key.clone(), 0u8..4).prop_map(|(key, member)| KsOp::Srem { key, member }),
        2 => (key.clone(), 0u8..3).prop_map(|(key, field)| KsOp::Hset { key, field }),
        1 => (key.clone(), 0u8..3).prop_map(|(key, field)| KsOp::Hdel { key, field }),
        2 => (key.clone(), 1u64..200).prop_map(|(key, ttl_ms)| KsOp::Expire { key, ttl_ms }),
        1 => key.clone().prop_map(|key| KsOp::Persist { key }),
        2 => key.clone().prop_map(|key| KsOp::Del { key }),
        3 => (key.clone(), 0u8..4, any::<bool>()).prop_map(|(key, member, del)| KsOp::Remote { key, member, del }),
        2 => key.clone().prop_map(|key| KsOp::Get { key }),
        2 => (1u64..120).prop_map(|ms| KsOp::Advance { ms }),
        1 => (1u8..8).prop_map(|budget| KsOp::ActiveExpire { budget }),
        1 => key.clone().prop_map(|key| KsOp::EvictKey { key }),
        1 => (0u8..8).prop_map(|policy| KsOp::EvictOne { policy }),
        1 => key.clone().prop_map(|key| KsOp::DropSlot { key }),
        1 => Just(KsOp::Gc),
        1 => key.prop_map(|key| KsOp::Repair { key }),
    ]
}

fn key_name(i: u8) -> String {
    // Half the keys share a slot, so per-slot counters see several keys.
    if i.is_multiple_of(2) {
        format!("{{s}}{i}")
    } else {
        format!("key{i}")
    }
}

fn run_ks_op(local: &mut Writer, remote: &mut Writer, now: &mut u64, op: &KsOp, coin: &mut u64) {
    let t = *now;
    match op {
        KsOp::Set { key, ttl_ms } => local.set(&key_name(*key), t, ttl_ms.map(|d| t + d)),
        KsOp::Incr { key } => {
            let _ = local.write(&key_name(*key), t, |w| w.incr_by(1));
        }
        KsOp::Sadd { key, member } => local.write(&key_name(*key), t, |w| {
            if w.expect(Kind::Set).is_ok() {
                w.sadd(&bytes(&format!("m{member}")));
            }
        }),
        KsOp::Srem { key, member } => local.write(&key_name(*key), t, |w| {
            if w.expect(Kind::Set).is_ok() {
                w.srem(format!("m{member}").as_bytes());
            }
        }),
        KsOp::Hset { key, field } => local.write(&key_name(*key), t, |w| {
            if w.expect(Kind::Hash).is_ok() {
                w.hash_update(&bytes(&format!("f{field}")), |s, st| s.set(st, bytes("x")));
            }
        }),
        KsOp::Hdel { key, field } => local.write(&key_name(*key), t, |w| {
            if w.expect(Kind::Hash).is_ok() {
                w.hdel(format!("f{field}").as_bytes());
            }
        }),
        KsOp::Expire { key, ttl_ms } => local.write(&key_name(*key), t, |w| {
            if w.entry().is_alive() {
                w.set_deadline(Some(t + ttl_ms));
            }
        }),
        KsOp::Persist { key } => local.write(&key_name(*key), t, |w| {
            if w.entry().is_alive() {
                w.set_deadline(None);
            }
        }),
        KsOp::Del { key } => {
            local.write(&key_name(*key), t, |w| w.delete());
        }
        KsOp::Remote { key, member, del } => {
            remote.write(&key_name(*key), t, |w| {
                if *del {
                    w.delete();
                } else if w.expect(Kind::Set).is_ok() {
                    w.sadd(&bytes(&format!("m{member}")));
                }
            });
            let deltas: Vec<Delta> = remote.ks.drain_deltas().collect();
            for d in &deltas {
                local.clock.observe(d.state.max_hlc());
                local.ks.apply_delta(d);
            }
        }
        KsOp::Get { key } => {
            local.ks.get(key_name(*key).as_bytes(), t);
        }
        KsOp::Advance { ms } => *now += ms,
        KsOp::ActiveExpire { budget } => {
            local.ks.active_expire(t, usize::from(*budget));
        }
        KsOp::EvictKey { key } => {
            local.ks.evict_key(key_name(*key).as_bytes());
        }
        KsOp::EvictOne { policy } => {
            let (p, _) = EvictionPolicy::ALL[usize::from(*policy) % 8];
            let mut rng = || {
                *coin = coin
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1442695040888963407);
                *coin >> 11
            };
            local.ks.evict_one(p, 3, t, &mut rng);
        }
        KsOp::DropSlot { key } => {
            local.ks.drop_slot(key_slot(key_name(*key).as_bytes()));
        }
        KsOp::Gc => {
            // Everything the other region wrote up to now is stable, and so are our own
            // writes: a plausible stability frontier.
            let mine = local.clock.last();
            let theirs = remote.clock.last();
            let (lr, rr) = (local.clock.region(), remote.clock.region());
            local.ks.gc(&|r| {
                if r == lr {
                    mine
                } else if r == rr {
                    theirs
                } else {
                    Hlc::ZERO
                }
            });
        }
        KsOp::Repair { key } => local
            .ks
            .mark_slot_repaired(key_slot(key_name(*key).as_bytes())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn stats_match_a_recount_after_random_ops(
        retain in any::<bool>(),
        ops in prop::collection::vec(ks_op(), 1..80),
    ) {
        let mut local = Writer::new(1, retain);
        let mut remote = Writer::new(2, true);
        let mut now = 1_000u64;
        let mut coin = 1u64;
        for op in &ops {
            run_ks_op(&mut local, &mut remote, &mut now, op, &mut coin);
            assert_consistent(&local.ks);
        }
        assert_consistent(&remote.ks);
        // Expiring everything leaves only tombstones.
        let far = now + 1_000_000;
        while local.ks.active_expire(far, 1_000) > 0 {}
        prop_assert_eq!(local.ks.stats().volatile, 0);
        assert_consistent(&local.ks);
    }
}

// ---- writer edge cases ----

#[test]
fn a_no_op_hash_update_yields_no_delta() {
    let mut w = Writer::new(1, true);
    w.write("h", 10, |w| {
        w.hash_update(&bytes("f"), |s, st| s.set(st, bytes("v")))
    });
    w.ks.drain_deltas().for_each(drop);
    // A closure that leaves an absent field alone (HSETNX-like, or a read) changes nothing.
    w.write("h", 20, |w| w.hash_update(&bytes("absent"), |_, _| ()));
    assert_eq!(w.ks.pending_deltas(), 0);
    let e = w.ks.raw_entry(b"h").unwrap();
    assert!(e.as_hash().unwrap().raw_get(b"absent").is_none());
}

#[test]
fn a_refused_op_that_killed_a_hidden_component_still_ships_the_kill() {
    // Type conflict: string "abc" visible, a set hidden. INCR observes the key and kills
    // the hidden set, then fails (not an integer): the kill must still replicate, or this
    // region's state silently diverges from everyone else's.
    let mut w = Writer::new(1, true);
    let mut other = Writer::new(2, true);
    other.write("k", 10, |w| w.sadd(&bytes("m")));
    w.write("k", 20, |w| w.set_str(bytes("abc"), false));
    let exchange = |from: &mut Writer, to: &mut Writer| {
        for d in from.ks.drain_deltas().collect::<Vec<_>>() {
            to.clock.observe(d.state.max_hlc());
            to.ks.apply_delta(&d);
        }
    };
    exchange(&mut other, &mut w);
    exchange(&mut w, &mut other);
    assert_eq!(w.ks.raw_entry(b"k"), other.ks.raw_entry(b"k"));
    assert_eq!(w.ks.raw_entry(b"k").unwrap().components().len(), 2);
    assert_eq!(
        w.write("k", 30, |w| w.incr_by(1)),
        Err(crate::CrdtError::NotInteger)
    );
    assert_eq!(
        w.ks.pending_deltas(),
        1,
        "the kill of the hidden set is a change"
    );
    exchange(&mut w, &mut other);
    assert_eq!(w.ks.raw_entry(b"k"), other.ks.raw_entry(b"k"));
}

#[test]
fn sadd_of_the_same_member_twice_in_one_write_is_idempotent() {
    let mut w = Writer::new(1, true);
    let added = w.write("s", 10, |w| (w.sadd(&bytes("a")), w.sadd(&bytes("a"))));
    assert_eq!(added, (true, false));
    let d = w.ks.drain_deltas().next().unwrap();
    let mut mirror = ks(2, true);
    mirror.apply_delta(&d);
    assert_eq!(mirror.raw_entry(b"s"), w.ks.raw_entry(b"s"));
}

#[test]
fn delta_state_caches_its_deadline() {
    let mut w = Writer::new(1, true);
    w.write("k", 10, |w| {
        w.set_str(bytes("v"), false);
        w.set_deadline(Some(500));
    });
    let d = w.ks.drain_deltas().next().unwrap();
    assert_eq!(d.state.deadline_ms(), Some(500));
    let mut rebuilt = d.state.clone();
    rebuilt.rebuild();
    assert_eq!(rebuilt.deadline_ms(), Some(500));
}

#[test]
fn raise_floor_hides_stale_fills_without_a_delta() {
    let mut w = Writer::new(1, true);
    w.write("k", 10, |w| w.set_str_versioned(bytes("old"), 5, false))
        .unwrap();
    w.write("new", 10, |w| w.set_str_versioned(bytes("fresh"), 9, false))
        .unwrap();
    w.ks.drain_deltas().for_each(drop);
    // A replica's share of an invalidation at version 7: the floor only.
    assert!(w.ks.raise_floor(b"k", 7));
    assert!(w.ks.raise_floor(b"new", 7));
    assert!(
        w.ks.raise_floor(b"absent", 7),
        "a floor-only tombstone is kept"
    );
    assert!(
        !w.ks.raise_floor(b"k", 6),
        "a max: a lower floor changes nothing"
    );
    assert!(!w.ks.raise_floor(b"k", 0));
    assert_eq!(w.ks.pending_deltas(), 0, "no write, no delta");
    assert!(w.ks.get(b"k", 20).is_none(), "the fill at 5 ≤ 7 is hidden");
    assert!(
        w.ks.get(b"new", 20).is_some(),
        "a fill newer than the floor stays"
    );
    assert_eq!(w.ks.raw_entry(b"absent").unwrap().floor(), 7);
    // Fills at or below the floor are refused from now on.
    let refused = w.write("k", 30, |w| w.set_str_versioned(bytes("again"), 7, false));
    assert!(refused.is_err());
    assert_consistent(&w.ks);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    /// Merging a plain string into a packed string in place gives what the general merge
    /// gives (state, reply, counters), whatever order the other regions' writes arrive in:
    /// newer, older, repeated, across deletes, TTLs, counters and type changes.
    #[test]
    fn plain_string_merge_is_the_general_merge(
        retain in any::<bool>(),
        ops in prop::collection::vec((0u8..8, 0usize..3, 0usize..3, 0usize..4), 1..50),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..80),
    ) {
        let mut regions = [Writer::new(1, retain), Writer::new(2, retain), Writer::new(3, retain)];
        let values = [bytes("v"), bytes("w"), Bytes::from(vec![b'x'; 40]), bytes("")];
        let keys = ["a", "b", "c"];
        let mut deltas = Vec::new();
        for (step, (op, r, k, v)) in ops.into_iter().enumerate() {
            let now = 1_000 + step as u64;
            let w = &mut regions[r];
            let key = keys[k];
            match op {
                0..=3 => w.write(key, now, |w| w.set_str_shared(values[v].clone(), false)),
                4 => { w.write(key, now, |w| w.incr_by(1)).ok(); }
                5 => { w.write(key, now, |w| w.delete()); }
                6 => w.write(key, now, |w| w.set_deadline(Some(now + 5))),
                _ => { w.write(key, now, |w| w.sadd(b"m")); }
            }
            deltas.extend(w.ks.drain_deltas());
        }
        // Deliver in order, then again in a shuffled order with repeats.
        let mut schedule: Vec<usize> = (0..deltas.len()).collect();
        if !deltas.is_empty() {
            schedule.extend(order.iter().map(|i| i.index(deltas.len())));
        }
        let mut fast = Writer::new(9, retain);
        let mut general = Writer::new(9, retain);
        for (n, &i) in schedule.iter().enumerate() {
            let d = &deltas[i];
            let a = fast.ks.merge_state_with(&d.key, d.full, &d.state, true);
            let b = general.ks.merge_state_with(&d.key, d.full, &d.state, false);
            prop_assert_eq!(a, b, "reply to delivery {}", n);
            for key in keys {
                prop_assert_eq!(
                    fast.ks.raw_entry(key.as_bytes()).map(|e| e.into_owned()),
                    general.ks.raw_entry(key.as_bytes()).map(|e| e.into_owned()),
                    "state of {} after delivery {}", key, n
                );
            }
            prop_assert_eq!(fast.ks.stats(), general.ks.stats(), "stats after delivery {}", n);
            assert_consistent(&fast.ks);
        }
    }

    /// `set_plain` (a packed string overwritten in place) and `incr_plain` (a packed counter
    /// incremented in place) leave the same state, the same delta, the same reply and the
    /// same counters as the general write path, whatever the key held before: a packed
    /// string, a counter, a set, a TTL'd string, a tombstone, another region's string, or
    /// nothing; overflows included.
    #[test]
    fn plain_set_is_the_general_set(
        retain in any::<bool>(),
        ops in prop::collection::vec((0u8..10, 0usize..4, 0usize..5), 1..60),
    ) {
        let mut fast = Writer::new(1, retain);
        let mut general = Writer::new(1, retain);
        let mut remote = Writer::new(2, retain);
        let keys = ["a", "b", "c", "{a}d"];
        // Same-length pairs ("v"/"w", 300 x/y) take the overwrite-in-place path.
        let values = [
            bytes(""),
            bytes("v"),
            Bytes::from(vec![b'x'; 300]),
            bytes("w"),
            Bytes::from(vec![b'y'; 300]),
        ];
        for (step, (op, k, v)) in ops.into_iter().enumerate() {
            let now = 1_000 + step as u64;
            let key = keys[k];
            let kb = Bytes::copy_from_slice(key.as_bytes());
            let slot = key_slot(key.as_bytes());
            match op {
                0..=2 => {
                    let stamp = fast.clock.now(now);
                    prop_assert_eq!(general.clock.now(now), stamp);
                    fast.ks.set_plain(slot, kb.clone(), stamp, now, values[v].clone());
                    general.ks.write_in(slot, kb, stamp, now, |w| w.set_str_shared(values[v].clone(), false));
                }
                8 | 9 => {
                    // incr_plain, the same way: in place on a counter this region packed.
                    let by = [1, -3, i64::MAX, i64::MIN, 0][v];
                    let stamp = fast.clock.now(now);
                    prop_assert_eq!(general.clock.now(now), stamp);
                    let r = fast.ks.incr_plain(slot, kb.clone(), stamp, now, by);
                    prop_assert_eq!(
                        r,
                        general.ks.write_in(slot, kb, stamp, now, |w| w.incr_by(by))
                    );
                }
                op => {
                    // Another region's string, delivered to both.
                    let from_remote = (op == 7).then(|| {
                        remote.write(key, now, |w| w.set_str_shared(values[v].clone(), false));
                        remote.ks.drain_deltas().collect::<Vec<_>>()
                    });
                    for w in [&mut fast, &mut general] {
                        match op {
                            3 => { w.write(key, now, |w| w.incr_by(1)).ok(); }
                            4 => { w.write(key, now, |w| w.delete()); }
                            5 => { w.write(key, now, |w| w.set_deadline(Some(now + 1_000))); }
                            6 => { w.write(key, now, |w| w.sadd(&bytes("m"))); }
                            _ => {
                                for d in from_remote.iter().flatten() {
                                    w.ks.apply_delta(d);
                                }
                            }
                        }
                    }
                }
            }
            for key in keys {
                prop_assert_eq!(
                    fast.ks.raw_entry(key.as_bytes()).map(|e| e.into_owned()),
                    general.ks.raw_entry(key.as_bytes()).map(|e| e.into_owned()),
                    "state of {} after step {}", key, step
                );
            }
            let (df, dg): (Vec<_>, Vec<_>) =
                (fast.ks.drain_deltas().collect(), general.ks.drain_deltas().collect());
            prop_assert_eq!(df, dg, "deltas after step {}", step);
            prop_assert_eq!(fast.ks.stats(), general.ks.stats(), "stats after step {}", step);
            assert_consistent(&fast.ks);
        }
    }
}

/// Keyspaces with different seeds place the same key differently: a client that does not
/// know the server's seed (random per process) cannot choose keys that collide. Members and
/// fields hash with the process's seed likewise (`SeededState`), fixed only when the shell
/// set none, and a seed cannot change once tables were hashed with the one in use.
#[test]
fn table_hashes_depend_on_the_seed() {
    let ks = |seed| {
        Keyspace::new(KeyspaceConfig {
            seed,
            ..KeyspaceConfig::default()
        })
    };
    let (a, b) = (ks(1), ks(2));
    for key in [&b"k"[..], b"user:1", b"{tag}x"] {
        assert_ne!(a.nodes.hash(key), b.nodes.hash(key));
        assert_eq!(a.nodes.hash(key), ks(1).nodes.hash(key));
    }
    use std::hash::BuildHasher;
    let (s1, s2) = (crate::seeded_state(Some(1)), crate::seeded_state(Some(2)));
    assert_ne!(s1.hash_one(b"member"), s2.hash_one(b"member"));
    assert_ne!(
        s1.hash_one(b"member"),
        crate::seeded_state(None).hash_one(b"member")
    );
    let _ = crate::SeededState.hash_one(b"member");
    assert!(!crate::set_hash_seed(3), "the seed in use stays");
}
