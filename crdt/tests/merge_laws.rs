//! Merge laws: for every lattice in the crate (Dots, Str, OrSet, OrMap, Entry) merge is
//! commutative, associative and idempotent, over states reached by real histories (random
//! local ops on 2–4 regions, random partial delta exchange with reordering and duplicates).
//! At the keyspace level: replicas fed the same deltas in any order, with duplicates, end up
//! with equal entries, equal slot digests and equal visible values.

mod common;

use common::*;
use meridian_crdt::{
    key_slot, Delta, Dots, Entry, Keyspace, KeyspaceConfig, OrMap, OrSet, RegionId, Str, Val, ZSet,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

const MAX_STATES_PER_KEY: usize = 7;

/// States of each key seen during a history: entries at several points on every replica, and
/// the deltas produced for the key (deltas are lattice elements too).
fn sampled_entries(n: usize, steps: &[Step]) -> Vec<Vec<Entry>> {
    let mut rs: Vec<Replica> = (1..=n as u16).map(Replica::new).collect();
    let mut per_key: Vec<Vec<Entry>> = vec![Vec::new(); KEYS.len()];
    let push = |per_key: &mut Vec<Vec<Entry>>, k: usize, e: Entry| {
        if per_key[k].len() < MAX_STATES_PER_KEY && !per_key[k].contains(&e) {
            per_key[k].push(e);
        }
    };
    for (i, step) in steps.iter().enumerate() {
        run_step(&mut rs, step);
        if i % 5 == 4 {
            for r in &rs {
                for (k, key) in KEYS.iter().enumerate() {
                    if let Some(e) = r.raw(key) {
                        push(&mut per_key, k, e);
                    }
                }
            }
        }
    }
    for r in &rs {
        for (k, key) in KEYS.iter().enumerate() {
            if let Some(e) = r.raw(key) {
                push(&mut per_key, k, e);
            }
        }
        for d in r.log.iter().rev().take(2) {
            let k = KEYS
                .iter()
                .position(|key| key.as_bytes() == d.key.as_ref())
                .unwrap();
            push(&mut per_key, k, d.state.clone());
        }
    }
    per_key
}

fn rebuilt(e: &Entry) -> Entry {
    let mut x = e.clone();
    x.rebuild();
    x
}

fn merged(a: &Entry, b: &Entry) -> Entry {
    let mut x = a.clone();
    x.merge(b);
    x
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

    #[test]
    fn entry_merge_is_a_join((n, steps) in history_strategy(60)) {
        for states in sampled_entries(n, &steps) {
            check_laws("Entry", &states, |a, b| { a.merge(b); });
            for a in &states {
                for b in &states {
                    let ab = merged(a, b);
                    let ba = merged(b, a);
                    prop_assert_eq!(ab.digest(), ba.digest());
                    prop_assert_eq!(view_of(Some(&ab)), view_of(Some(&ba)));
                    // Cached counters (alive members/fields, deadline) match a recount.
                    prop_assert_eq!(view_of(Some(&ab)), view_of(Some(&rebuilt(&ab))));
                    prop_assert_eq!(ab.deadline_ms(), rebuilt(&ab).deadline_ms());
                    prop_assert_eq!(ab.is_alive(), rebuilt(&ab).is_alive());
                }
            }
        }
    }

    #[test]
    fn component_merges_are_joins((n, steps) in history_strategy(60)) {
        for states in sampled_entries(n, &steps) {
            let mut strs: Vec<Str> = Vec::new();
            let mut sets: Vec<OrSet> = Vec::new();
            let mut maps: Vec<OrMap> = Vec::new();
            let mut zsets: Vec<ZSet> = Vec::new();
            let mut ttls: Vec<Dots<u64>> = Vec::new();
            let mut member_dots: BTreeMap<Vec<u8>, Vec<Dots<()>>> = BTreeMap::new();
            let mut field_strs: BTreeMap<Vec<u8>, Vec<Str>> = BTreeMap::new();
            for e in &states {
                ttls.push(e.expiry().clone());
                for c in e.components() {
                    match &c.val {
                        Val::Str(s) => strs.push(s.clone()),
                        Val::Set(s) => {
                            for (m, d) in s.raw() {
                                member_dots.entry(m.to_vec()).or_default().push(d.clone());
                            }
                            sets.push(s.clone());
                        }
                        Val::Hash(h) => {
                            for (f, s) in h.raw() {
                                field_strs.entry(f.to_vec()).or_default().push(s.clone());
                            }
                            maps.push(h.clone());
                        }
                        // Lists have their own law checks (`list::tests`).
                        Val::List(_) => {}
                        Val::ZSet(z) => zsets.push(z.clone()),
                    }
                }
            }
            check_laws("Str", &strs, |a, b| { a.merge(b); });
            check_laws("OrSet", &sets, |a, b| { a.merge(b); });
            check_laws("OrMap", &maps, |a, b| { a.merge(b); });
            check_laws("ZSet", &zsets, |a, b| { a.merge(b); });
            // The order index agrees with the states after any merge.
            for a in &zsets {
                for b in &zsets {
                    let mut x = a.clone();
                    x.merge(b);
                    x.check_invariants();
                }
            }
            check_laws("Dots<u64> (TTL)", &ttls, |a, b| { a.merge(b); });
            for dots in member_dots.values() {
                check_laws("Dots<()> (member)", dots, |a, b| { a.merge(b); });
            }
            for fs in field_strs.values() {
                check_laws("Str (hash field)", fs, |a, b| { a.merge(b); });
            }
            // Cached counters of the collections survive merging.
            for a in &sets {
                for b in &sets {
                    let mut x = a.clone();
                    x.merge(b);
                    prop_assert_eq!(x.len(), x.members().count());
                }
            }
            for a in &maps {
                for b in &maps {
                    let mut x = a.clone();
                    x.merge(b);
                    prop_assert_eq!(x.len(), x.fields().count());
                }
            }
        }
    }

    /// Two fresh keyspaces fed the same deltas in different orders, with duplicates, hold the
    /// same entries, slot digests and visible values — and so do the replicas that produced
    /// them after a full exchange.
    #[test]
    fn keyspaces_fed_same_deltas_in_any_order_converge(
        (n, steps) in history_strategy(80),
        seed_x in any::<u64>(),
        seed_y in any::<u64>(),
        sync_seed in any::<u64>(),
    ) {
        let mut rs = run_history(n, &steps);
        let all: Vec<Delta> = rs.iter().flat_map(|r| r.log.iter().cloned()).collect();
        let mut x = Replica::new(50);
        let mut y = Replica::new(51);
        for d in shuffled_with_duplicates(&all, seed_x) {
            x.apply(&d);
        }
        for d in shuffled_with_duplicates(&all, seed_y) {
            y.apply(&d);
        }
        full_sync(&mut rs, sync_seed);
        let mut slots: Vec<u16> = KEYS.iter().map(|k| key_slot(k.as_bytes())).collect();
        slots.dedup();
        for key in KEYS {
            prop_assert_eq!(x.raw(key), y.raw(key), "entry of {}", key);
            prop_assert_eq!(x.view(key), y.view(key));
            prop_assert_eq!(x.ks.key_digest(key.as_bytes()), y.ks.key_digest(key.as_bytes()));
            for r in &rs {
                prop_assert_eq!(r.raw(key), x.raw(key), "replica {:?} entry of {}", r.region(), key);
                prop_assert_eq!(r.view(key), x.view(key));
            }
        }
        for &slot in &slots {
            let dx = x.ks.slot_digest(slot);
            prop_assert_eq!(dx, y.ks.slot_digest(slot));
            for r in rs.iter_mut() {
                prop_assert_eq!(r.ks.slot_digest(slot), dx);
            }
        }
        prop_assert_eq!(x.ks.stats().keys, y.ks.stats().keys);
        prop_assert_eq!(x.ks.stats().tombstones, y.ks.stats().tombstones);
        prop_assert_eq!(x.ks.stats().volatile, y.ks.stats().volatile);
    }

    /// A key's digest agrees with its visible state: equal views ⇒ equal digests is what
    /// anti-entropy relies on to skip keys; different views must (practically) differ.
    #[test]
    fn digest_tracks_visible_state((n, steps) in history_strategy(60)) {
        let rs = run_history(n, &steps);
        for key in KEYS {
            for a in &rs {
                for b in &rs {
                    if a.raw(key) == b.raw(key) {
                        prop_assert_eq!(a.ks.key_digest(key.as_bytes()), b.ks.key_digest(key.as_bytes()));
                    }
                    if a.view(key) != b.view(key) {
                        prop_assert_ne!(a.ks.key_digest(key.as_bytes()), b.ks.key_digest(key.as_bytes()));
                    }
                }
            }
        }
    }
}

/// Sanity check of the harness itself: a keyspace with another seed stores the same thing.
#[test]
fn keyspace_seed_does_not_change_state() {
    let mut a = Keyspace::new(KeyspaceConfig {
        region: RegionId(1),
        retain_tombstones: true,
        seed: 1,
    });
    let mut c = Keyspace::new(KeyspaceConfig {
        region: RegionId(2),
        retain_tombstones: true,
        seed: 99,
    });
    let mut r = Replica::new(1);
    r.op("k0", 10, &Op::Sadd(1));
    r.op("k0", 11, &Op::Sadd(2));
    for d in &r.log {
        a.apply_delta(d);
        c.apply_delta(d);
    }
    assert_eq!(a.raw_entry(b"k0"), c.raw_entry(b"k0"));
    assert_eq!(
        a.slot_digest(key_slot(b"k0")),
        c.slot_digest(key_slot(b"k0"))
    );
}
