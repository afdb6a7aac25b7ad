//! "Op locally, then merge its delta elsewhere == same state": a mirror replica that starts
//! from the same state as region A and merges exactly what A merges plus A's own deltas holds,
//! after every step, the same entry for every key as A (and so reads the same).

mod common;

use common::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum MirrorStep {
    /// A writes; the mirror merges A's delta.
    WriteA {
        key: usize,
        op: Op,
        physical_ms: u64,
    },
    /// The other region C writes (A and the mirror do not see it yet).
    WriteC {
        key: usize,
        op: Op,
        physical_ms: u64,
    },
    /// A and the mirror both merge one of C's deltas.
    DeliverC { pick: usize },
    /// C merges one of A's deltas.
    DeliverA { pick: usize },
}

fn mirror_step() -> impl Strategy<Value = MirrorStep> {
    prop_oneof![
        4 => (0..KEYS.len(), op_strategy(), 0u64..3_000)
            .prop_map(|(key, op, physical_ms)| MirrorStep::WriteA { key, op, physical_ms }),
        2 => (0..KEYS.len(), op_strategy(), 0u64..3_000)
            .prop_map(|(key, op, physical_ms)| MirrorStep::WriteC { key, op, physical_ms }),
        2 => any::<usize>().prop_map(|pick| MirrorStep::DeliverC { pick }),
        1 => any::<usize>().prop_map(|pick| MirrorStep::DeliverA { pick }),
    ]
}

fn assert_mirrored(a: &Replica, mirror: &Replica, step: &MirrorStep) {
    for key in KEYS {
        assert_eq!(a.raw(key), mirror.raw(key), "entry of {key} after {step:?}");
        assert_eq!(
            a.view(key),
            mirror.view(key),
            "view of {key} after {step:?}"
        );
        assert_eq!(
            a.ks.key_digest(key.as_bytes()),
            mirror.ks.key_digest(key.as_bytes())
        );
    }
    assert_eq!(a.ks.len(), mirror.ks.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

    #[test]
    fn local_op_equals_merging_its_delta(steps in prop::collection::vec(mirror_step(), 1..60)) {
        let mut a = Replica::new(1);
        let mut c = Replica::new(2);
        let mut mirror = Replica::new(3);
        for step in &steps {
            match step {
                MirrorStep::WriteA { key, op, physical_ms } => {
                    if let Some(d) = a.op(KEYS[*key], *physical_ms, op) {
                        mirror.apply(&d);
                    }
                }
                MirrorStep::WriteC { key, op, physical_ms } => {
                    c.op(KEYS[*key], *physical_ms, op);
                }
                MirrorStep::DeliverC { pick } => {
                    if !c.log.is_empty() {
                        let d = c.log[pick % c.log.len()].clone();
                        a.apply(&d);
                        mirror.apply(&d);
                    }
                }
                MirrorStep::DeliverA { pick } => {
                    if !a.log.is_empty() {
                        let d = a.log[pick % a.log.len()].clone();
                        c.apply(&d);
                    }
                }
            }
            assert_mirrored(&a, &mirror, step);
        }
    }

    /// Single-region mode (no tombstones kept): the same holds for a lone region's writes.
    #[test]
    fn local_op_equals_merging_its_delta_without_tombstones(
        ops in prop::collection::vec((0..KEYS.len(), op_strategy(), 0u64..3_000), 1..60)
    ) {
        let mut a = Replica::with_tombstones(1, false);
        let mut mirror = Replica::with_tombstones(3, false);
        for (key, op, physical_ms) in &ops {
            if let Some(d) = a.op(KEYS[*key], *physical_ms, op) {
                mirror.apply(&d);
            }
            for key in KEYS {
                prop_assert_eq!(a.view(key), mirror.view(key), "view of {} after {:?}", key, op);
            }
            prop_assert_eq!(a.ks.len(), mirror.ks.len());
        }
    }

    /// Starting from any common state (built by anti-entropy from A), one op by A and its
    /// delta give the same entry.
    #[test]
    fn delta_of_one_op_applied_to_a_copy_gives_the_origin_state(
        (n, steps) in history_strategy(50),
        key in 0..KEYS.len(),
        op in op_strategy(),
        physical_ms in 0u64..3_000,
    ) {
        let mut rs = run_history(n, &steps);
        let mut copy = Replica::new(60);
        copy.pull(&rs[0]);
        for k in KEYS {
            prop_assert_eq!(copy.raw(k), rs[0].raw(k), "anti-entropy copy of {}", k);
        }
        if let Some(d) = rs[0].op(KEYS[key], physical_ms, &op) {
            copy.apply(&d);
        }
        for k in KEYS {
            prop_assert_eq!(copy.raw(k), rs[0].raw(k), "entry of {} after {:?}", k, op);
        }
    }
}
