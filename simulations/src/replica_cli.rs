//! `meridian-sim --replicas …`: the command line of the in-region replica stream simulator
//! ([`meridian_simulations::replica_sim`]). Lives in the binary (the sweep reads the wall
//! clock for its seeds/s figure).

use crate::cli_common;
use meridian_crdt::digest::mix;
use meridian_simulations::replica_sim::{
    run, ReplicaBug, ReplicaConfig, ReplicaFaults, ReplicaReport,
};
use std::process::ExitCode;

fn print_report(r: &ReplicaReport) {
    println!(
        "seed {} replicas {} writes {} full_syncs {} partial_syncs {} cuts {} out_of_backlog {} \
         failovers {} forgets {} heal_ms {}",
        r.seed,
        r.replicas,
        r.writes,
        r.full_syncs,
        r.partial_syncs,
        r.cuts,
        r.out_of_backlog,
        r.failovers,
        r.forgets,
        r.heal_ms
    );
    for v in &r.violations {
        println!("VIOLATION {v}");
    }
}

/// `--seed N`, `--seeds A..B`, `--self-check N`, `--bug NAME`, `--no-FAULT`.
pub fn cli(args: &[String]) -> ExitCode {
    let usage = || {
        eprintln!(
            "usage: meridian-sim --replicas (--seed N | --seeds A..B | --self-check N) \
             [--bug NAME] [--no-FAULT]...\n  faults (all on by default): {}\n  bugs: {}",
            ReplicaFaults::NAMES.join(", "),
            ReplicaBug::NAMES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
        ExitCode::from(2)
    };
    let mut base = ReplicaConfig::new(0);
    let mut flags = String::from(" --replicas");
    let mut mode: Option<(String, String)> = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "--replicas" => {}
            "--bug" => {
                i += 1;
                let Some(b) = args.get(i).and_then(|s| ReplicaBug::parse(s)) else {
                    return usage();
                };
                base.bug = Some(b);
                flags.push_str(&format!(" --bug {}", b.name()));
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
    let config = |seed: u64| ReplicaConfig {
        seed,
        ..base.clone()
    };
    let Some((mode, value)) = mode else {
        return usage();
    };
    let ok = |b: bool| {
        if b {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
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
            let (mut failures, mut combined) = (0, 0u64);
            let (mut full, mut partial, mut oob, mut failovers) = (0, 0, 0, 0);
            for seed in a..b {
                let r = run(config(seed));
                combined = mix(combined, r.trace_hash);
                full += r.full_syncs;
                partial += r.partial_syncs;
                oob += r.out_of_backlog;
                failovers += r.failovers;
                if !r.violations.is_empty() {
                    failures += 1;
                    println!("FAIL seed {seed}: {}", r.violations[0]);
                    println!("  replay: meridian-sim --seed {seed}{flags}");
                }
            }
            let deterministic = run(config(a)).trace_hash == run(config(a)).trace_hash;
            let n = b.saturating_sub(a);
            println!(
                "{n} replica-stream seeds, {failures} failed, {full} full syncs, {partial} partial \
                 syncs, {oob} fell out of the backlog, {failovers} failovers, {:.1} seeds/s, \
                 determinism {}",
                n as f64 / start.elapsed().as_secs_f64().max(1e-9),
                if deterministic { "ok" } else { "MISMATCH" }
            );
            println!("trace-hash {combined:016x}");
            ok(failures == 0 && deterministic)
        }
    }
}
