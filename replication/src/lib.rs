//! meridian-replication: how regions exchange state, without doing any I/O.
//!
//! Everything here is a state machine driven by its caller (the QUIC shell in production,
//! the simulator in tests): time is a `now_ms` argument, frames go in through `handle_*` and
//! come out of `poll_*`, and the keyspace is reached only through [`LinkStore`].
//!
//! - [`codec`]: versioned, length-prefixed postcard frames with a hard size limit.
//! - [`store`]: the narrow trait the protocol needs from the keyspace, implemented for
//!   [`meridian_crdt::Keyspace`].
//! - [`proto::link`]: [`RegionLink`], one region's endpoint: per-peer delta logs, acks,
//!   resends, backpressure, GC frontier gossip; it embeds the anti-entropy engine.
//! - [`proto::anti_entropy`]: slot digests → key fingerprints → entries, so repair traffic
//!   grows with divergence, not data size; also bootstraps an empty region.
//! - [`replica_stream`]: the in-region replica stream (PSYNC-like): frames, the primary's
//!   bounded backlog, and both ends as state machines (`StreamSender`, `StreamReceiver`).

pub mod codec;
pub mod proto;
pub mod replica_stream;
pub mod store;
#[cfg(feature = "transport")]
pub mod transport;

pub use codec::{
    decode, encode, encode_into, CodecError, Frame, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
pub use proto::anti_entropy::{AntiEntropy, AntiEntropyStats};
pub use proto::link::{LinkConfig, LinkStats, PeerStatus, RegionLink, DEFAULT_MAX_CLOCK_OFFSET_MS};
pub use store::LinkStore;
