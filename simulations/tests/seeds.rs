//! Seed sweeps and checker bug-injection tests in `cargo test`. Debug builds run fewer seeds
//! to stay within a few minutes on two cores; `meridian-sim --seeds 0..1000` (release) is
//! the long sweep.

use meridian_simulations::sim::Faults;
use meridian_simulations::{run, Bug, SimConfig, SimReport};

const SEEDS: u64 = if cfg!(debug_assertions) { 60 } else { 300 };

#[test]
fn seeds_pass_all_checkers() {
    let mut failures = Vec::new();
    for seed in 0..SEEDS {
        let r = run(SimConfig::new(seed));
        if !r.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {} (replay: meridian-sim --seed {seed})",
                r.violations[0]
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn same_seed_same_trace_hash() {
    for seed in [3, 17] {
        let a = run(SimConfig::new(seed));
        let b = run(SimConfig::new(seed));
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
    }
    assert_ne!(
        run(SimConfig::new(1)).trace_hash,
        run(SimConfig::new(2)).trace_hash
    );
}

#[test]
fn every_fault_is_on_by_default() {
    let f = Faults::default();
    let mut all = f.clone();
    for name in Faults::NAMES {
        assert_eq!(all.switch(name).map(|b| *b), Some(true), "{name} is off");
    }
    assert_eq!(f, SimConfig::new(0).faults);
}

fn has_kind(r: &SimReport, kind: &str) -> bool {
    r.violations.iter().any(|v| v.starts_with(kind))
}

/// Within `seeds`, find a seed where the run with `bug` reports a violation of one of
/// `kinds` that the same run without the bug does not: the checker caught the bug itself,
/// not whatever else the faults made it report.
fn caught(bug: Bug, kinds: &[&str], seeds: u64, tune: impl Fn(&mut SimConfig)) -> (u64, String) {
    for seed in 0..seeds {
        let mut cfg = SimConfig::new(seed);
        tune(&mut cfg);
        let clean = run(cfg.clone());
        cfg.bug = Some(bug);
        let buggy = run(cfg);
        for k in kinds {
            if has_kind(&buggy, k) && !has_kind(&clean, k) {
                let v = buggy.violations.iter().find(|v| v.starts_with(k));
                return (seed, v.cloned().unwrap_or_default());
            }
        }
    }
    panic!("{bug:?} was not caught as {kinds:?} within {seeds} seeds");
}

/// Faults that make this build's core report violations of their own turned off, so that a
/// caught bug is the injected one (see each test).
fn quiet(cfg: &mut SimConfig) {
    cfg.faults.empty_restarts = false;
    cfg.max_heal_ms = 20_000;
}

#[test]
fn value_checker_catches_a_merge_that_drops_one_regions_counter_contribution() {
    let (seed, v) = caught(
        Bug::DropCounterContributionsOf(meridian_crdt::RegionId(1)),
        &["value", "liveness"],
        10,
        quiet,
    );
    assert!(seed < 10, "{v}");
}

#[test]
fn local_checker_catches_a_merge_that_replaces_the_local_state() {
    caught(Bug::MergeReplacesLocalState, &["local"], 10, quiet);
}

#[test]
fn local_checker_catches_a_write_the_region_silently_forgets() {
    caught(Bug::SilentLocalLoss, &["local"], 10, quiet);
}

#[test]
fn floor_checker_catches_eviction_that_forgets_the_invalidation_floor() {
    caught(Bug::EvictionDropsFloor, &["floor"], 20, quiet);
}

#[test]
fn ttl_checker_catches_a_set_that_keeps_the_ttl() {
    caught(Bug::SetKeepsTtl, &["ttl"], 10, quiet);
}

#[test]
fn partial_checker_catches_a_partial_delta_rebuilding_an_evicted_key() {
    caught(Bug::PartialDeltaRebuildsLostKey, &["partial"], 20, quiet);
}

#[test]
fn value_checker_catches_a_merge_that_drops_a_concurrent_type_change() {
    caught(
        Bug::DropConcurrentTypeChange,
        &["value", "liveness"],
        20,
        quiet,
    );
}

#[test]
fn value_checker_catches_expiry_that_replicates_as_a_delete() {
    caught(
        Bug::ExpiryReplicatesDelete,
        &["value", "local", "ttl"],
        20,
        quiet,
    );
}
