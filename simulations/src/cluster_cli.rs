//! `meridian-sim --clustered …`: the command line of the clustered-regions simulator
//! ([`meridian_simulations::cluster_sim`]). Lives in the binary: the sweep reads the wall
//! clock for its seeds/s figure, which no simulator core may do.

use crate::cli_common;
use meridian_crdt::digest::mix;
use meridian_simulations::cluster_sim::{
    run, ClusterBug, ClusterFaults, ClusterReport, ClusterSimConfig,
};
use std::collections::BTreeMap;

fn print_report(r: &ClusterReport) {
    println!(
        "seed {} shape {:?} ops {} refused {} frames {} dropped {} reshards {} slots_moved {} \
         keys_migrated {} failovers {} joins {} leaves {} atoms_lost {} refused_unserved {} \
         refused_scope {} \
         unrouted {} slots_rerouted {} heal_ms {} keys_in_doubt {} gc_dropped {} gc_ms {}",
        r.seed,
        r.shape,
        r.ops,
        r.ops_refused,
        r.frames,
        r.frames_dropped,
        r.reshards,
        r.slots_moved,
        r.keys_migrated,
        r.failovers,
        r.joins,
        r.leaves,
        r.atoms_lost,
        r.refused_unserved,
        r.refused_scope,
        r.unrouted,
        r.slots_rerouted,
        r.heal_ms,
        r.keys_in_doubt,
        r.gc_dropped,
        r.gc_ms
    );
    for v in &r.violations {
        println!("VIOLATION {v}");
    }
}

/// `meridian-sim --clustered …` (see `main.rs`): `--seed N`, `--seeds A..B`,
/// `--self-check N`, `--bug NAME`, `--no-FAULT`, `--fault-ms MS`, `--max-heal-ms MS`,
/// `--anti-entropy-ms MS` (0: no periodic rounds).
pub fn cli(args: &[String]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let usage = || {
        eprintln!(
            "usage: meridian-sim --clustered (--seed N | --seeds A..B | --self-check N) \
             [--bug NAME] [--no-FAULT]... [--fault-ms MS] [--max-heal-ms MS] \
             [--anti-entropy-ms MS (periodic rounds; 0: off; default 2000)]\n  \
             faults (all on by default): {}\n  bugs: {}",
            ClusterFaults::NAMES.join(", "),
            ClusterBug::NAMES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
        ExitCode::from(2)
    };
    let mut base = ClusterSimConfig::new(0);
    let mut flags = String::from(" --clustered");
    let mut mode: Option<(String, String)> = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "--clustered" => {}
            "--bug" => {
                i += 1;
                match args.get(i).and_then(|s| ClusterBug::parse(s)) {
                    Some(b) => {
                        base.bug = Some(b);
                        flags.push_str(&format!(" --bug {}", b.name()));
                    }
                    None => return usage(),
                }
            }
            "--fault-ms" | "--max-heal-ms" | "--anti-entropy-ms" => {
                i += 1;
                let Some(ms) = args.get(i).and_then(|s| s.parse().ok()) else {
                    return usage();
                };
                match arg {
                    "--fault-ms" => base.fault_ms = ms,
                    "--max-heal-ms" => base.max_heal_ms = ms,
                    _ => base.anti_entropy_ms = ms,
                }
                flags.push_str(&format!(" {arg} {ms}"));
            }
            "--seed" | "--seeds" | "--self-check" => {
                i += 1;
                let Some(v) = args.get(i) else {
                    return usage();
                };
                mode = Some((arg.to_string(), v.clone()));
            }
            _ => {
                let Some(sw) = arg
                    .strip_prefix("--no-")
                    .and_then(|n| base.faults.switch(n))
                else {
                    return usage();
                };
                *sw = false;
                flags.push_str(&format!(" {arg}"));
            }
        }
        i += 1;
    }
    let config = |seed: u64| ClusterSimConfig {
        seed,
        ..base.clone()
    };
    let Some((mode, value)) = mode else {
        return usage();
    };
    match mode.as_str() {
        "--seed" => {
            let Some(seed) = cli_common::seed(&value) else {
                return usage();
            };
            let r = run(config(seed));
            cli_common::replay(&r, print_report, r.trace_hash, r.violations.is_empty())
        }
        "--self-check" => {
            let Some(seed) = cli_common::seed(&value) else {
                return usage();
            };
            let (a, b) = (run(config(seed)).trace_hash, run(config(seed)).trace_hash);
            cli_common::self_check(a, b, &format!("meridian-sim --self-check {seed}{flags}"))
        }
        _ => {
            let Some((a, b)) = cli_common::seed_range(&value) else {
                return usage();
            };
            let start = std::time::Instant::now();
            let mut failures = 0;
            let mut combined = 0u64;
            let mut by_kind: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            let (mut reshards, mut failovers, mut lost, mut doubt) = (0, 0, 0, 0);
            let (mut joins, mut leaves, mut kept) = (0, 0, 0);
            let mut collected = 0;
            for seed in a..b {
                let r = run(config(seed));
                combined = mix(combined, r.trace_hash);
                reshards += r.reshards;
                failovers += r.failovers;
                joins += r.joins;
                leaves += r.leaves;
                kept += r.tombstones_of_left_regions;
                lost += r.atoms_lost;
                doubt += r.keys_in_doubt;
                collected += r.gc_dropped;
                if !r.violations.is_empty() {
                    failures += 1;
                    let kinds = r.violation_kinds();
                    for k in &kinds {
                        by_kind.entry(k.clone()).or_insert((0, seed)).0 += 1;
                    }
                    println!(
                        "FAIL seed {seed}: {} violation(s) [{}], first: {}",
                        r.violations.len(),
                        kinds.join(" "),
                        r.violations[0]
                    );
                    println!("  replay: meridian-sim --seed {seed}{flags}");
                }
            }
            let deterministic = run(config(a)).trace_hash == run(config(a)).trace_hash;
            if !deterministic {
                println!("DETERMINISM MISMATCH on seed {a}: meridian-sim --self-check {a}{flags}");
            }
            for (kind, (n, seed)) in &by_kind {
                println!("  {kind}: {n} seed(s), e.g. meridian-sim --seed {seed}{flags}");
            }
            let n = b.saturating_sub(a);
            println!(
                "{n} clustered seeds, {failures} failed, {reshards} reshards, {failovers} \
                 failovers, {joins} regions joined, {leaves} left, {lost} atoms lost with \
                 failed primaries or regions, {doubt} keys in doubt, \
                 {collected} entries garbage-collected ({kept} tombstones kept for regions \
                 that left), {:.1} seeds/s, \
                 determinism {}",
                n as f64 / start.elapsed().as_secs_f64().max(1e-9),
                if deterministic { "ok" } else { "MISMATCH" }
            );
            println!("trace-hash {combined:016x}");
            if failures == 0 && deterministic {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
