//! Seed sweeps in `cargo test`. Debug builds run fewer seeds to stay within about a minute
//! on two cores; `meridian-sim --seeds 0..1000` (release) is the long sweep.

use meridian_crdt::RegionId;
use meridian_simulations::{run, Bug, SimConfig};

const SEEDS: u64 = if cfg!(debug_assertions) { 200 } else { 400 };

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
fn checkers_find_a_merge_that_drops_one_regions_counter_contribution() {
    let mut found = None;
    for seed in 0..5 {
        let mut cfg = SimConfig::new(seed);
        cfg.bug = Some(Bug::DropCounterContributionsOf(RegionId(1)));
        cfg.max_heal_ms = 5_000;
        let r = run(cfg);
        if !r.violations.is_empty() {
            found = Some((seed, r.violations));
            break;
        }
    }
    let (seed, violations) = found.expect("the injected bug must be caught within 5 seeds");
    assert!(seed < 5);
    assert!(violations
        .iter()
        .any(|v| v.starts_with("value") || v.starts_with("liveness")));
}
