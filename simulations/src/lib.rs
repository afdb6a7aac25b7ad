//! meridian-simulations: a deterministic simulator for meridian's replication cores.
//!
//! One seeded RNG (ChaCha8) drives everything: the workload, the network (delay, loss,
//! duplication, reordering, symmetric and one-way partitions, isolation), crashes and
//! empty restarts, clock skew and far jumps, eviction of live keys and writes to them,
//! expiry, garbage collection during faults, a starved replication loop overflowing its
//! bounded local delta log, type conflicts, invalidation floors — every fault on by default
//! ([`sim::Faults`]; a switch only turns one off, for debugging). Time is virtual. Each
//! region runs the production `Keyspace` and `RegionLink`, and every frame goes through
//! the real codec. A run is safety under faults (with per-region checks as it goes), then
//! heal and quiesce, then the checkers in [`oracle`] and [`sim`]. The same seed yields the
//! same trace hash.

pub mod bench;
pub mod cluster_sim;
pub mod oracle;
pub mod replica_sim;
pub mod sim;

pub use sim::{run, Bug, SimConfig, SimReport};
