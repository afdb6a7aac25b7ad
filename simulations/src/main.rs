//! `meridian-sim`: run, replay and sweep deterministic simulations.
//!
//! ```text
//! meridian-sim --seed N            replay one run; the last line is its trace hash
//! meridian-sim --seeds A..B        sweep; prints the replay command of every failure
//! meridian-sim --self-check N      run seed N twice and compare trace hashes
//! meridian-sim --bench-link        in-process link / wire-size / anti-entropy benchmark
//! meridian-sim --clustered (--seed N | --seeds A..B | --self-check N)
//!                                  regions as clusters (`cluster_sim`: reshards, failovers,
//!                                  stale topology; its own --bug and --no-FAULT names)
//! meridian-sim --replicas (--seed N | --seeds A..B | --self-check N)
//!                                  the in-region replica stream (`replica_sim`: cuts,
//!                                  backlog overflows, slot moves, failovers; its own
//!                                  --bug and --no-FAULT names)
//! options: --fault-ms MS, --max-heal-ms MS, --restart-write-hold-ms MS (virtual; 0: writes
//!          are never held after an empty restart)
//!          --bug NAME   inject a deliberate bug (drop-counter, merge-replaces,
//!                       evict-drops-floor, set-keeps-ttl, silent-local-loss,
//!                       partial-rebuilds, drop-type-change, expiry-replicates)
//!          --no-FAULT   turn a fault mode off, for debugging only (gc-during-faults,
//!                       evictions, writes-on-evicted, expiry, empty-restarts,
//!                       log-overflow, clock-jumps, type-conflicts, invalidations,
//!                       expulsions)
//! ```
//! Every fault mode is on by default; no flag turns one on. Exit code 1 on any violation or
//! determinism mismatch, 2 on bad usage.

mod cli_common;
mod cluster_cli;
mod replica_cli;

use meridian_simulations::sim::Faults;
use meridian_simulations::{bench, run, Bug, SimConfig, SimReport};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Default)]
struct Opts {
    bug: Option<Bug>,
    off: Vec<&'static str>,
    fault_ms: Option<u64>,
    max_heal_ms: Option<u64>,
    restart_write_hold_ms: Option<u64>,
}

impl Opts {
    fn config(&self, seed: u64) -> SimConfig {
        let mut cfg = SimConfig::new(seed);
        cfg.bug = self.bug;
        for name in &self.off {
            *cfg.faults.switch(name).expect("checked when parsed") = false;
        }
        if let Some(ms) = self.fault_ms {
            cfg.fault_ms = ms;
        }
        if let Some(ms) = self.max_heal_ms {
            cfg.max_heal_ms = ms;
        }
        if let Some(ms) = self.restart_write_hold_ms {
            cfg.restart_write_hold_ms = ms;
        }
        cfg
    }

    fn flags(&self) -> String {
        let mut s = String::new();
        if let Some(b) = self.bug {
            s.push_str(&format!(" --bug {}", b.name()));
        }
        for name in &self.off {
            s.push_str(&format!(" --no-{name}"));
        }
        if let Some(ms) = self.fault_ms {
            s.push_str(&format!(" --fault-ms {ms}"));
        }
        if let Some(ms) = self.max_heal_ms {
            s.push_str(&format!(" --max-heal-ms {ms}"));
        }
        if let Some(ms) = self.restart_write_hold_ms {
            s.push_str(&format!(" --restart-write-hold-ms {ms}"));
        }
        s
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: meridian-sim (--seed N | --seeds A..B | --self-check N | --bench-link) \
         [--bug NAME] [--no-FAULT]... [--fault-ms MS] [--max-heal-ms MS] [--restart-write-hold-ms MS]\n  \
         faults (all on by default): {}\n  bugs: {}",
        Faults::NAMES.join(", "),
        Bug::NAMES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
    ExitCode::from(2)
}

fn print_report(r: &SimReport) {
    println!(
        "seed {} regions {} ops {} refused {} frames {} dropped {} delta_bytes {} anti_entropy_bytes {} crashes {} empty_restarts {} evictions {} expired {} clock_jumps {} stalls {} local_deltas_dropped {} partial_dropped {} logs_dropped {} clock_held {} gc_dropped {} atoms_lost {} converge_ms {} metadata {} restart_writes_held {} restart_holds_expired {} expulsions {} frames_refused {} forgets {} operator_restarts {}",
        r.seed, r.regions, r.ops, r.ops_refused, r.frames, r.frames_dropped, r.delta_bytes,
        r.anti_entropy_bytes, r.crashes, r.empty_restarts, r.evictions, r.expired,
        r.clock_jumps, r.stalls, r.local_deltas_dropped, r.partial_deltas_dropped,
        r.logs_dropped, r.deltas_clock_held, r.gc_dropped, r.atoms_lost, r.converge_ms,
        r.metadata_elements, r.restart_writes_held, r.restart_holds_expired, r.expulsions,
        r.frames_refused, r.forgets, r.operator_restarts
    );
    for v in &r.violations {
        println!("VIOLATION {v}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--clustered") {
        return cluster_cli::cli(&args);
    }
    if args.iter().any(|a| a == "--replicas") {
        return replica_cli::cli(&args);
    }
    let mut opts = Opts::default();
    let mut mode: Option<(String, String)> = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "--bench-link" => mode = Some(("bench".into(), String::new())),
            "--bug" => {
                i += 1;
                match args.get(i).and_then(|s| Bug::parse(s)) {
                    Some(b) => opts.bug = Some(b),
                    None => return usage(),
                }
            }
            "--fault-ms" | "--max-heal-ms" | "--restart-write-hold-ms" => {
                i += 1;
                let Some(ms) = args.get(i).and_then(|s| s.parse().ok()) else {
                    return usage();
                };
                match arg {
                    "--fault-ms" => opts.fault_ms = Some(ms),
                    "--max-heal-ms" => opts.max_heal_ms = Some(ms),
                    _ => opts.restart_write_hold_ms = Some(ms),
                }
            }
            m @ ("--seed" | "--seeds" | "--self-check") => {
                i += 1;
                let Some(v) = args.get(i) else {
                    return usage();
                };
                mode = Some((m.to_string(), v.clone()));
            }
            _ => {
                let name = arg.strip_prefix("--no-");
                match name.and_then(|n| Faults::NAMES.iter().find(|f| **f == n)) {
                    Some(f) => opts.off.push(f),
                    None => {
                        if Faults::NAMES.iter().any(|f| arg == format!("--{f}")) {
                            eprintln!("{arg}: every fault mode is on by default");
                        }
                        return usage();
                    }
                }
            }
        }
        i += 1;
    }
    let Some((mode, value)) = mode else {
        return usage();
    };
    match mode.as_str() {
        "bench" => {
            bench::run_all();
            ExitCode::SUCCESS
        }
        "--seed" => {
            let Some(seed) = cli_common::seed(&value) else {
                return usage();
            };
            let r = run(opts.config(seed));
            cli_common::replay(&r, print_report, r.trace_hash, r.violations.is_empty())
        }
        "--self-check" => {
            let Some(seed) = cli_common::seed(&value) else {
                return usage();
            };
            let a = run(opts.config(seed)).trace_hash;
            let b = run(opts.config(seed)).trace_hash;
            let replay = format!("meridian-sim --self-check {seed}{}", opts.flags());
            cli_common::self_check(a, b, &replay)
        }
        "--seeds" => {
            let Some((a, b)) = cli_common::seed_range(&value) else {
                return usage();
            };
            let start = Instant::now();
            let mut failures = 0;
            let mut combined = 0u64;
            let mut by_kind: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
            for seed in a..b {
                let r = run(opts.config(seed));
                combined = meridian_crdt::digest::mix(combined, r.trace_hash);
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
                    println!("  replay: meridian-sim --seed {seed}{}", opts.flags());
                }
            }
            // Determinism self-check on the first seed of the sweep.
            let again = run(opts.config(a));
            let first = run(opts.config(a));
            let deterministic = again.trace_hash == first.trace_hash;
            if !deterministic {
                println!(
                    "DETERMINISM MISMATCH on seed {a}: replay: meridian-sim --self-check {a}{}",
                    opts.flags()
                );
            }
            for (kind, (n, seed)) in &by_kind {
                println!(
                    "  {kind}: {n} seed(s), e.g. meridian-sim --seed {seed}{}",
                    opts.flags()
                );
            }
            let secs = start.elapsed().as_secs_f64();
            let n = b.saturating_sub(a);
            println!(
                "{n} seeds, {failures} failed, {:.1} seeds/s, determinism {}",
                n as f64 / secs.max(1e-9),
                if deterministic { "ok" } else { "MISMATCH" }
            );
            println!("trace-hash {combined:016x}");
            if failures == 0 && deterministic {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => usage(),
    }
}
