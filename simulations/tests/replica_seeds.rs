//! The in-region replica stream simulator (`replica_sim`): a seed sweep, determinism, every
//! fault on by default and exercised, and one injected bug per checker. Debug builds run
//! fewer seeds; `meridian-sim --replicas --seeds 0..1000` (release) is the long sweep.

use meridian_simulations::replica_sim::{run, ReplicaBug, ReplicaConfig, ReplicaFaults};

const SEEDS: u64 = if cfg!(debug_assertions) { 12 } else { 200 };

#[test]
fn replica_seeds_pass_all_checkers() {
    let mut failures = Vec::new();
    for seed in 0..SEEDS {
        let r = run(ReplicaConfig::new(seed));
        if !r.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {} (replay: meridian-sim --replicas --seed {seed})",
                r.violations[0]
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn replica_same_seed_same_trace_hash() {
    let a = run(ReplicaConfig::new(3));
    assert_eq!(a.trace_hash, run(ReplicaConfig::new(3)).trace_hash);
    assert_ne!(a.trace_hash, run(ReplicaConfig::new(4)).trace_hash);
}

#[test]
fn replica_faults_are_all_on_by_default_and_exercised() {
    let mut f = ReplicaFaults::default();
    for name in ReplicaFaults::NAMES {
        assert_eq!(f.switch(name).map(|b| *b), Some(true), "{name} is off");
    }
    let (mut full, mut partial, mut oob, mut failovers, mut forgets) = (0, 0, 0, 0, 0);
    for seed in 3..7 {
        let r = run(ReplicaConfig::new(seed));
        full += r.full_syncs;
        partial += r.partial_syncs;
        oob += r.out_of_backlog;
        failovers += r.failovers;
        forgets += r.forgets;
    }
    assert!(
        full > 0 && partial > 0 && oob > 0 && failovers > 0 && forgets > 0,
        "{full} {partial} {oob} {failovers} {forgets}"
    );
}

/// Each bug is caught by its checker within a few seeds (and the clean run is not).
#[test]
fn every_checker_catches_its_bug() {
    for (bug, kind) in [
        (ReplicaBug::KeepDataOnFullResync, "converge"),
        (ReplicaBug::LoseBacklogFrame, "converge"),
        (ReplicaBug::WrongSnapshotEnd, "protocol"),
        (ReplicaBug::NoReconnect, "liveness"),
    ] {
        let caught = (0..8).any(|seed| {
            let mut cfg = ReplicaConfig::new(seed);
            cfg.bug = Some(bug);
            run(cfg).violation_kinds().iter().any(|k| k == kind)
        });
        assert!(caught, "{} not caught by {kind}", bug.name());
    }
}
