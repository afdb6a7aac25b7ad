//! In-process benchmarks (not timed tests): merged deltas per second over one link, bytes
//! per delta on the wire, anti-entropy bytes for a given divergence.

pub fn run_all() {}
