//! The clustered-regions simulator (`cluster_sim`): a seed sweep, determinism, every fault
//! on by default, and one injected bug per checker. Debug builds run fewer seeds;
//! `meridian-sim --clustered --seeds 0..1000` (release) is the long sweep.

use meridian_simulations::cluster_sim::{run, ClusterBug, ClusterFaults, ClusterSimConfig};

const SEEDS: u64 = if cfg!(debug_assertions) { 16 } else { 200 };

/// With periodic anti-entropy on (the default) and off (every repair from the rounds the
/// protocol requests itself).
#[test]
fn clustered_seeds_pass_all_checkers() {
    let mut failures = Vec::new();
    for ae in [ClusterSimConfig::new(0).anti_entropy_ms, 0] {
        for seed in 0..SEEDS {
            let r = run(ClusterSimConfig {
                anti_entropy_ms: ae,
                ..ClusterSimConfig::new(seed)
            });
            if !r.violations.is_empty() {
                failures.push(format!(
                    "seed {seed}: {} (replay: meridian-sim --clustered --seed {seed} \
                     --anti-entropy-ms {ae})",
                    r.violations[0]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn clustered_same_seed_same_trace_hash() {
    let a = run(ClusterSimConfig::new(5));
    let b = run(ClusterSimConfig::new(5));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_ne!(a.trace_hash, run(ClusterSimConfig::new(6)).trace_hash);
}

#[test]
fn clustered_faults_are_all_on_by_default_and_exercised() {
    let mut f = ClusterFaults::default();
    for name in ClusterFaults::NAMES {
        assert_eq!(f.switch(name).map(|b| *b), Some(true), "{name} is off");
    }
    let (mut reshards, mut failovers, mut shapes) = (0, 0, std::collections::BTreeSet::new());
    for seed in 0..6 {
        let r = run(ClusterSimConfig::new(seed));
        reshards += r.reshards;
        failovers += r.failovers;
        shapes.insert(r.shape.clone());
        assert!(r.unrouted > 0 || r.slots_rerouted > 0, "seed {seed}: {r:?}");
    }
    assert!(reshards > 0 && failovers > 0, "{reshards} {failovers}");
    assert!(shapes.len() > 1, "{shapes:?}");
}

/// `region-churn`: every run has a region joining at run time; some have one leaving, and
/// those pass every checker too (the sweep in `clustered_seeds_pass_all_checkers` covers
/// them; this makes sure the schedule really produces them).
#[test]
fn clustered_regions_join_and_leave_at_run_time() {
    let mut leaving = None;
    for seed in 0..20 {
        let r = run(ClusterSimConfig::new(seed));
        assert_eq!(r.joins, 1, "seed {seed}");
        if r.leaves > 0 {
            leaving = Some((seed, r.violations));
            break;
        }
    }
    let (seed, violations) = leaving.expect("a region leaves within 20 seeds");
    assert!(violations.is_empty(), "seed {seed}: {violations:#?}");
}

/// Within `seeds`, a seed where the run with `bug` reports a violation of `kind` that the
/// same run without it does not (`anti_entropy_ms`: the periodic interval, 0 for off).
/// Region churn is off here, to keep these short: a region joining bootstraps every slot
/// by anti-entropy and holds GC back until then, which hides a bug's effect in many seeds
/// (the sweeps, with it on, are the proof that the protocol is right; these, that the
/// checkers can see a wrong one).
fn caught(bug: ClusterBug, kind: &str, seeds: u64, anti_entropy_ms: u64) -> String {
    for seed in 0..seeds {
        let mut cfg = ClusterSimConfig {
            anti_entropy_ms,
            ..ClusterSimConfig::new(seed)
        };
        cfg.faults.region_churn = false;
        let clean = run(cfg.clone());
        cfg.bug = Some(bug);
        let buggy = run(cfg);
        let has = |r: &meridian_simulations::cluster_sim::ClusterReport| {
            r.violation_kinds().iter().any(|k| k == kind)
        };
        if has(&buggy) && !has(&clean) {
            return format!("seed {seed}: {:?}", buggy.violations.first());
        }
    }
    panic!("{bug:?} was not caught as {kind} within {seeds} seeds");
}

/// With periodic anti-entropy off: with it on, the periodic rounds repair (later) what the
/// missing gap's rounds would have.
#[test]
fn converge_checker_catches_node_links_that_skip_the_reroute_gap() {
    caught(ClusterBug::SkipRerouteGap, "converge", 16, 0);
}

#[test]
fn placement_checker_catches_a_node_storing_unserved_slots() {
    let on = ClusterSimConfig::new(0).anti_entropy_ms;
    caught(ClusterBug::StoreUnserved, "placement", 10, on);
}

#[test]
fn counter_checker_catches_a_reshard_that_loses_the_moved_keys() {
    // Converged everywhere, but without the increments only the moved copy held.
    let on = ClusterSimConfig::new(0).anti_entropy_ms;
    caught(ClusterBug::MigrationLosesKeys, "counter", 10, on);
}

#[test]
fn gc_checker_catches_links_without_the_node_wide_aggregate() {
    // With three regions, tombstones carrying a third region's stamps stay.
    let on = ClusterSimConfig::new(0).anti_entropy_ms;
    caught(ClusterBug::NoGcAggregate, "gc", 10, on);
}

#[test]
fn clustered_runs_collect_garbage() {
    let (mut three, mut dropped) = (0, 0);
    for seed in 0..6 {
        let r = run(ClusterSimConfig::new(seed));
        three += usize::from(r.shape.len() == 3);
        dropped += r.gc_dropped;
    }
    assert!(three > 0, "a run with three regions");
    assert!(dropped > 0, "GC collects");
}

/// Garbage is collected during the faults too (on by default), failovers included: a
/// node's links claim only what its replica holds, so a failover to a replica a removal
/// had not reached never brings back what it removed (the `value` checker, in
/// `clustered_seeds_pass_all_checkers`). Without the cap it does.
#[test]
fn value_checker_catches_claims_not_capped_by_the_replicas() {
    let on = ClusterSimConfig::new(0).anti_entropy_ms;
    caught(ClusterBug::UncappedClaims, "value", 12, on);
}

#[test]
fn clustered_runs_collect_garbage_during_faults() {
    let mut collected = 0;
    for seed in 0..4 {
        let mut cfg = ClusterSimConfig::new(seed);
        cfg.max_gc_ms = 0;
        // A joining region holds GC back until it is repaired (`caught`).
        cfg.faults.region_churn = false;
        collected += run(cfg).gc_dropped;
    }
    assert!(collected > 0);
}
