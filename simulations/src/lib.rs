//! meridian-simulations: a deterministic simulator for meridian's replication cores.
//!
//! One seeded RNG (ChaCha8) drives everything: the workload, the network (delay, loss,
//! duplication, reordering, symmetric and one-way partitions, isolation), crashes and
//! restarts, clock skew and jumps, and evictions. Time is virtual. Each region runs the
//! production `Keyspace` and `RegionLink`, and every frame goes through the real codec.
//! A run is safety under faults, then heal and quiesce, then the checkers in [`oracle`]
//! and [`sim`]. The same seed yields the same trace hash.

pub mod bench;
pub mod oracle;
pub mod sim;

pub use sim::{run, Bug, SimConfig, SimReport};
