//! `meridian-fuzz`: runs the stable fuzz harness (see the crate docs).
//!
//! ```text
//! meridian-fuzz --target all --iters 10000000 --seed 1
//! meridian-fuzz --target region-codec --iters 200000 --max-seconds 20
//! meridian-fuzz --target resp --replay 2a310d0a...      # one input, from a crash report
//! meridian-fuzz --write-corpus fuzz/corpus              # seeds for the cargo-fuzz targets
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use meridian_fuzzing::{hex, run, unhex, Target};

#[derive(Parser)]
#[command(about = "Fuzz meridian's wire decoders with mutated real frames (stable toolchain)")]
struct Args {
    /// resp, region-codec, replica-stream, cluster-bus, bus-auth, kafka-record, or all.
    #[arg(long, default_value = "all")]
    target: String,
    /// Inputs per target.
    #[arg(long, default_value_t = 1_000_000)]
    iters: u64,
    /// Seed of the mutator (a run is deterministic from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop each target after this many seconds even if `--iters` are not done.
    #[arg(long)]
    max_seconds: Option<f64>,
    /// Run one input (hex, as a crash report prints it) and exit.
    #[arg(long)]
    replay: Option<String>,
    /// Write each target's seed corpus to DIR/<cargo-fuzz target>/ and exit.
    #[arg(long, value_name = "DIR")]
    write_corpus: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let targets: Vec<Target> = if args.target == "all" {
        Target::ALL.to_vec()
    } else {
        match args
            .target
            .split(',')
            .map(|name| Target::from_name(name.trim()).ok_or(name))
            .collect()
        {
            Ok(t) => t,
            Err(name) => {
                eprintln!("unknown target {name:?}");
                return ExitCode::from(2);
            }
        }
    };

    if let Some(dir) = &args.write_corpus {
        for t in &targets {
            let d = dir.join(t.cargo_fuzz_name());
            if let Err(e) = std::fs::create_dir_all(&d) {
                eprintln!("{}: {e}", d.display());
                return ExitCode::FAILURE;
            }
            for (i, seed) in t.seeds().iter().enumerate() {
                let path = d.join(format!("seed-{i:02}"));
                if let Err(e) = std::fs::write(&path, seed) {
                    eprintln!("{}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            println!("{}: {} seeds in {}", t.name(), t.seeds().len(), d.display());
        }
        return ExitCode::SUCCESS;
    }

    if let Some(input) = &args.replay {
        let Some(bytes) = unhex(input) else {
            eprintln!("--replay takes hex");
            return ExitCode::from(2);
        };
        for t in &targets {
            println!("{}: {:?}", t.name(), t.check(&bytes));
        }
        return ExitCode::SUCCESS;
    }

    let max_time = args.max_seconds.map(Duration::from_secs_f64);
    let mut total = 0u64;
    for t in &targets {
        t.check_seeds();
        match run(*t, args.iters, args.seed, max_time) {
            Ok(s) => {
                total += s.executions;
                println!(
                    "{:<15} {:>11} execs in {:>7.1} s ({:>9.0}/s), 0 crashes; accepted {}, rejected {}, incomplete {}",
                    t.name(),
                    s.executions,
                    s.elapsed.as_secs_f64(),
                    s.per_second(),
                    s.accepted,
                    s.rejected,
                    s.incomplete,
                );
            }
            Err(crash) => {
                eprintln!(
                    "CRASH in {} at execution {} (seed {}): {}\ninput ({} bytes): {}\nreplay: meridian-fuzz --target {} --replay {}",
                    crash.target.name(),
                    crash.execution,
                    args.seed,
                    crash.message,
                    crash.input.len(),
                    hex(&crash.input),
                    crash.target.name(),
                    hex(&crash.input),
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!("total {total} executions, 0 crashes");
    ExitCode::SUCCESS
}
