//! What the three simulators' command lines share: replaying one seed, the determinism
//! self-check, and parsing seeds and seed ranges. Each simulator keeps its own flags and
//! sweep summary.

use std::process::ExitCode;

/// A seed (`--seed N`, `--self-check N`).
pub fn seed(value: &str) -> Option<u64> {
    value.parse().ok()
}

/// A seed range `A..B` (`--seeds`).
pub fn seed_range(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.split_once("..")?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `--seed N`: the report (printed by `print`), its trace hash, and failure if any checker
/// fired.
pub fn replay<R>(r: &R, print: impl Fn(&R), trace_hash: u64, clean: bool) -> ExitCode {
    print(r);
    println!("trace-hash {trace_hash:016x}");
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--self-check N`: two runs of one seed must have the same trace hash; `replay` is the
/// command line that reproduces a mismatch.
pub fn self_check(a: u64, b: u64, replay: &str) -> ExitCode {
    println!("run 1 trace-hash {a:016x}");
    println!("run 2 trace-hash {b:016x}");
    if a == b {
        println!("determinism ok");
        ExitCode::SUCCESS
    } else {
        println!("DETERMINISM MISMATCH: replay: {replay}");
        ExitCode::FAILURE
    }
}
