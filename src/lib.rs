//! meridian: a multi-region, active-active cache that speaks the Redis protocol.
//! This crate is the I/O shell around the pure cores in `meridian-crdt`, `meridian-regions`
//! and `meridian-replication`: sockets, tasks, timers, config, metrics and the command layer.

pub mod frame;
