//! Differential tests against the `crdts` crate as an oracle, on random op sequences over
//! several regions with random syncs:
//! - our counter (string `INCRBY` contributions) vs `crdts::PNCounter`,
//! - our register (string `SET`) vs `crdts::LWWReg` with marker `(hlc, region)`,
//! - our add-wins set vs `crdts::Orswot`.
//!
//! Syncs are whole-state pulls on both sides (anti-entropy for us, `merge` for the oracle),
//! so both sides hold the same information at every step and must read the same at every
//! step; at the end everything is also exchanged as deltas and compared again.

mod common;

use bytes::Bytes;
use common::*;
use crdts::{CmRDT, CvRDT, LWWReg, Orswot, PNCounter};
use meridian_crdt::{Kind, Stamp};
use num_like::to_i64;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashSet};

mod num_like {
    /// `crdts` reads counters as a `num::BigInt`; compare through its decimal form.
    pub fn to_i64(v: impl std::fmt::Display) -> i64 {
        v.to_string()
            .parse()
            .expect("counter fits i64 in these tests")
    }
}

const KEY: &str = "k0";

#[derive(Clone, Debug)]
enum DiffStep<O> {
    Op {
        replica: usize,
        op: O,
        physical_ms: u64,
    },
    /// `to` pulls `from`'s whole state.
    Sync { from: usize, to: usize },
}

fn diff_steps<O: std::fmt::Debug + Clone>(
    op: impl Strategy<Value = O> + Clone,
) -> impl Strategy<Value = (usize, Vec<DiffStep<O>>)> {
    let step = prop_oneof![
        3 => (any::<usize>(), op, 0u64..2_000)
            .prop_map(|(replica, op, physical_ms)| DiffStep::Op { replica, op, physical_ms }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(from, to)| DiffStep::Sync { from, to }),
    ];
    (2usize..=4, prop::collection::vec(step, 1..60))
}

/// Finish with a delta exchange among our replicas (every delta, shuffled, duplicated) and a
/// full merge among the oracles.
fn exchange_everything<T: Clone + CvRDT>(ours: &mut [Replica], theirs: &mut [T], seed: u64) {
    full_sync(ours, seed);
    let mut all = theirs[0].clone();
    for t in theirs.iter().skip(1) {
        all.merge(t.clone());
    }
    for t in theirs.iter_mut() {
        t.merge(all.clone());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

    #[test]
    fn counter_matches_pncounter(
        (n, steps) in diff_steps(-1_000i64..1_000),
        seed in any::<u64>(),
    ) {
        let mut ours: Vec<Replica> = (1..=n as u16).map(Replica::new).collect();
        let mut theirs: Vec<PNCounter<u16>> = vec![PNCounter::new(); n];
        for step in &steps {
            match step {
                DiffStep::Op { replica, op: by, physical_ms } => {
                    let i = replica % n;
                    let r = ours[i].write(KEY, *physical_ms, |w| w.incr_by(*by));
                    let actor = ours[i].region().0;
                    let t = &mut theirs[i];
                    let op = if *by >= 0 {
                        t.inc_many(actor, by.unsigned_abs())
                    } else {
                        t.dec_many(actor, by.unsigned_abs())
                    };
                    t.apply(op);
                    prop_assert_eq!(r, Ok(to_i64(t.read())), "INCRBY returns the new value");
                }
                DiffStep::Sync { from, to } => {
                    let (from, to) = (from % n, to % n);
                    if from != to {
                        pull_between(&mut ours, from, to);
                        let t = theirs[from].clone();
                        theirs[to].merge(t);
                    }
                }
            }
            for (o, t) in ours.iter().zip(&theirs) {
                prop_assert_eq!(o.int(KEY).unwrap_or(0), to_i64(t.read()));
            }
        }
        exchange_everything(&mut ours, &mut theirs, seed);
        let total: i64 = steps.iter().map(|s| match s { DiffStep::Op { op, .. } => *op, _ => 0 }).sum();
        for (o, t) in ours.iter().zip(&theirs) {
            prop_assert_eq!(o.int(KEY).unwrap_or(0), to_i64(t.read()));
            prop_assert_eq!(o.int(KEY).unwrap_or(0), total, "the exact sum of every increment");
        }
    }

    #[test]
    fn register_matches_lwwreg(
        (n, steps) in diff_steps(0u8..5),
        seed in any::<u64>(),
    ) {
        type Reg = LWWReg<Option<Bytes>, (u64, u16)>;
        let mut ours: Vec<Replica> = (1..=n as u16).map(Replica::new).collect();
        let mut theirs: Vec<Reg> = vec![Reg::default(); n];
        for step in &steps {
            match step {
                DiffStep::Op { replica, op: v, physical_ms } => {
                    let i = replica % n;
                    let stamp: Stamp = ours[i].write(KEY, *physical_ms, |w| {
                        w.set_str(value(*v), false);
                        w.stamp()
                    });
                    theirs[i].update(Some(value(*v)), (stamp.hlc.0, stamp.region.0));
                }
                DiffStep::Sync { from, to } => {
                    let (from, to) = (from % n, to % n);
                    if from != to {
                        pull_between(&mut ours, from, to);
                        let t = theirs[from].clone();
                        prop_assert!(theirs[to].validate_merge(&t).is_ok());
                        theirs[to].merge(t);
                    }
                }
            }
            for (o, t) in ours.iter().zip(&theirs) {
                let read = o.ks.peek(KEY.as_bytes(), NOW_MS).as_deref().and_then(|e| e.as_str()).and_then(|s| s.bytes());
                prop_assert_eq!(&read, &t.val);
                let stamp = o.ks.peek(KEY.as_bytes(), NOW_MS).as_deref().and_then(|e| e.as_str()).map(|s| s.reg.stamp);
                prop_assert_eq!(stamp.map(|s| (s.hlc.0, s.region.0)).unwrap_or((0, 0)), t.marker);
            }
        }
        exchange_everything(&mut ours, &mut theirs, seed);
        for (o, t) in ours.iter().zip(&theirs) {
            let read = o.ks.peek(KEY.as_bytes(), NOW_MS).as_deref().and_then(|e| e.as_str()).and_then(|s| s.bytes());
            prop_assert_eq!(&read, &t.val);
        }
    }

    #[test]
    fn or_set_matches_orswot(
        (n, steps) in diff_steps((any::<bool>(), 0u8..4)),
        seed in any::<u64>(),
    ) {
        let mut ours: Vec<Replica> = (1..=n as u16).map(Replica::new).collect();
        let mut theirs: Vec<Orswot<Bytes, u16>> = vec![Orswot::new(); n];
        for step in &steps {
            match step {
                DiffStep::Op { replica, op: (add, m), physical_ms } => {
                    let i = replica % n;
                    let m = member(*m);
                    let actor = ours[i].region().0;
                    if *add {
                        let ours_new = ours[i].write(KEY, *physical_ms, |w| {
                            w.expect(Kind::Set).unwrap();
                            w.sadd(&m)
                        });
                        let t = &mut theirs[i];
                        let was = t.contains(&m).val;
                        let op = t.add(m.clone(), t.read_ctx().derive_add_ctx(actor));
                        t.apply(op);
                        prop_assert_eq!(ours_new, !was, "SADD reports whether the member was new");
                    } else {
                        let ours_was = ours[i].write(KEY, *physical_ms, |w| w.srem(&m));
                        let t = &mut theirs[i];
                        let ctx = t.contains(&m);
                        let was = ctx.val;
                        let op = t.rm(m.clone(), ctx.derive_rm_ctx());
                        t.apply(op);
                        prop_assert_eq!(ours_was, was, "SREM reports whether the member was present");
                    }
                }
                DiffStep::Sync { from, to } => {
                    let (from, to) = (from % n, to % n);
                    if from != to {
                        pull_between(&mut ours, from, to);
                        let t = theirs[from].clone();
                        theirs[to].merge(t);
                    }
                }
            }
            for (o, t) in ours.iter().zip(&theirs) {
                prop_assert_eq!(members(o), oracle_members(t));
            }
        }
        exchange_everything(&mut ours, &mut theirs, seed);
        let first = members(&ours[0]);
        for (o, t) in ours.iter().zip(&theirs) {
            prop_assert_eq!(members(o), oracle_members(t));
            prop_assert_eq!(members(o), first.clone(), "final membership agrees everywhere");
        }
    }
}

fn members(r: &Replica) -> BTreeSet<Bytes> {
    r.ks.peek(KEY.as_bytes(), NOW_MS)
        .as_deref()
        .and_then(|e| e.as_set())
        .map(|s| s.members().map(Bytes::copy_from_slice).collect())
        .unwrap_or_default()
}

fn oracle_members(t: &Orswot<Bytes, u16>) -> BTreeSet<Bytes> {
    let v: HashSet<Bytes> = t.read().val;
    v.into_iter().collect()
}
