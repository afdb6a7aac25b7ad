//! `meridian-sim`: run, replay and sweep deterministic simulations.
//!
//! ```text
//! meridian-sim --seed N            replay one run; the last line is its trace hash
//! meridian-sim --seeds A..B        sweep; prints the replay command of every failure
//! meridian-sim --self-check N      run seed N twice and compare trace hashes
//! meridian-sim --bench-link        in-process link / wire-size / anti-entropy benchmark
//! options: --bug (inject the dropped-counter-contribution bug), --gc-during-faults,
//!          --writes-on-evicted, --no-evictions, --fault-ms MS
//! ```
//! Exit code 1 on any violation or determinism mismatch, 2 on bad usage.

use meridian_crdt::RegionId;
use meridian_simulations::{bench, run, Bug, SimConfig, SimReport};
use std::process::ExitCode;
use std::time::Instant;

struct Opts {
    bug: bool,
    gc_during_faults: bool,
    writes_on_evicted: bool,
    no_evictions: bool,
    fault_ms: Option<u64>,
}

impl Opts {
    fn config(&self, seed: u64) -> SimConfig {
        let mut cfg = SimConfig::new(seed);
        if self.bug {
            cfg.bug = Some(Bug::DropCounterContributionsOf(RegionId(1)));
        }
        cfg.gc_during_faults = self.gc_during_faults;
        cfg.writes_on_evicted = self.writes_on_evicted;
        cfg.evictions = !self.no_evictions;
        if let Some(ms) = self.fault_ms {
            cfg.fault_ms = ms;
        }
        cfg
    }

    fn flags(&self) -> String {
        let mut s = String::new();
        if self.bug {
            s.push_str(" --bug");
        }
        if self.gc_during_faults {
            s.push_str(" --gc-during-faults");
        }
        if self.writes_on_evicted {
            s.push_str(" --writes-on-evicted");
        }
        if self.no_evictions {
            s.push_str(" --no-evictions");
        }
        if let Some(ms) = self.fault_ms {
            s.push_str(&format!(" --fault-ms {ms}"));
        }
        s
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: meridian-sim (--seed N | --seeds A..B | --self-check N | --bench-link) [--bug] [--gc-during-faults] [--writes-on-evicted] [--no-evictions] [--fault-ms MS]");
    ExitCode::from(2)
}

fn print_report(r: &SimReport) {
    println!(
        "seed {} regions {} ops {} refused {} frames {} dropped {} delta_bytes {} anti_entropy_bytes {} crashes {} evictions {} partial_dropped {} logs_dropped {} gc_dropped {} converge_ms {} metadata {}",
        r.seed, r.regions, r.ops, r.ops_refused, r.frames, r.frames_dropped, r.delta_bytes,
        r.anti_entropy_bytes, r.crashes, r.evictions, r.partial_deltas_dropped, r.logs_dropped,
        r.gc_dropped, r.converge_ms, r.metadata_elements
    );
    for v in &r.violations {
        println!("VIOLATION {v}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Opts {
        bug: false,
        gc_during_faults: false,
        writes_on_evicted: false,
        no_evictions: false,
        fault_ms: None,
    };
    let mut mode: Option<(String, String)> = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--bug" => opts.bug = true,
            "--gc-during-faults" => opts.gc_during_faults = true,
            "--writes-on-evicted" => opts.writes_on_evicted = true,
            "--no-evictions" => opts.no_evictions = true,
            "--bench-link" => mode = Some(("bench".into(), String::new())),
            "--fault-ms" => {
                i += 1;
                match args.get(i).and_then(|s| s.parse().ok()) {
                    Some(ms) => opts.fault_ms = Some(ms),
                    None => return usage(),
                }
            }
            m @ ("--seed" | "--seeds" | "--self-check") => {
                i += 1;
                let Some(v) = args.get(i) else {
                    return usage();
                };
                mode = Some((m.to_string(), v.clone()));
            }
            _ => return usage(),
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
            let Ok(seed) = value.parse::<u64>() else {
                return usage();
            };
            let r = run(opts.config(seed));
            print_report(&r);
            println!("trace-hash {:016x}", r.trace_hash);
            if r.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        "--self-check" => {
            let Ok(seed) = value.parse::<u64>() else {
                return usage();
            };
            let a = run(opts.config(seed));
            let b = run(opts.config(seed));
            println!("run 1 trace-hash {:016x}", a.trace_hash);
            println!("run 2 trace-hash {:016x}", b.trace_hash);
            if a.trace_hash == b.trace_hash {
                println!("determinism ok");
                ExitCode::SUCCESS
            } else {
                println!(
                    "DETERMINISM MISMATCH: replay: meridian-sim --self-check {seed}{}",
                    opts.flags()
                );
                ExitCode::FAILURE
            }
        }
        "--seeds" => {
            let Some((a, b)) = value.split_once("..") else {
                return usage();
            };
            let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) else {
                return usage();
            };
            let start = Instant::now();
            let mut failures = 0;
            let mut combined = 0u64;
            for seed in a..b {
                let r = run(opts.config(seed));
                combined = meridian_crdt::digest::mix(combined, r.trace_hash);
                if !r.violations.is_empty() {
                    failures += 1;
                    println!(
                        "FAIL seed {seed}: {} violation(s), first: {}",
                        r.violations.len(),
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
