//! The in-region replica stream (PSYNC-like), sans-IO: a primary streams every change of
//! its state to the replicas of its own region, which apply them with CRDT merges.
//!
//! The primary numbers every change of its state with a node-wide offset (1, 2, 3…: one
//! per change frame — [`ReplicaFrame::Delta`], [`ReplicaFrame::State`],
//! [`ReplicaFrame::Forget`], [`ReplicaFrame::ForgetSlot`]; the offset is implicit, the
//! replica counts frames) and keeps the newest encoded frames in a [`Backlog`] bounded in
//! bytes. Its replication id names the stream the offsets belong to.
//!
//! One connection, over the client port:
//! ```text
//! replica → MERIDIAN SYNC <primary replid | ?> <applied offset> <listening port>   (RESP)
//! primary → +CONTINUE <replid> <offset>\r\n        the backlog covers it: partial resync
//!         | +FULLRESYNC <replid> <offset>\r\n      otherwise: Entries…, SnapshotEnd{offset}
//! primary → change frames after <offset>, Ping every second
//! replica → Ack{applied} after applying and every 100 ms
//! ```
//! A full resync drops the replica's data first (keys deleted or moved away on the
//! primary in between would otherwise linger); the live stream continues after the offset
//! the snapshot began at (an overlap is harmless: merges are idempotent and commutative).
//!
//! The two ends are state machines fed bytes and `now_ms`, like the region link:
//! [`StreamSender`] (primary side, one per replica connection; [`decide`] chooses partial
//! or full resync, [`SnapshotWriter`] cuts the snapshot into chunks) and [`StreamReceiver`]
//! (replica side: validates the order of frames, counts offsets, says when to ack). The
//! server (`src/replica_stream.rs`) owns the sockets, the backlog's lock and the store;
//! the simulator (`simulations/src/replica_sim.rs`) drives both ends over lossy,
//! reordering-free byte pipes with disconnects, backlog overflows and failovers.

pub mod backlog;
pub mod frame;
pub mod receiver;
pub mod sender;
#[cfg(test)]
mod tests;

pub use backlog::{Backlog, OutOfBacklog};
pub use frame::{
    decode_frame, encode_delta, encode_forget, encode_frame, encode_state, ReplicaFrame,
    MAX_REPLICA_FRAME_BYTES, REPLICA_PROTOCOL_VERSION, SNAPSHOT_CHUNK_BYTES,
};
pub use receiver::{ReceiverEvent, StreamReceiver};
pub use sender::{decide, Resync, SnapshotWriter, StreamSender, SyncRequest};

/// The replica acks at least this often (and after applying what it read).
pub const ACK_INTERVAL_MS: u64 = 100;
/// The primary pings an idle stream this often.
pub const PING_INTERVAL_MS: u64 = 1_000;
/// No byte from the other side for this long: the connection is dead.
pub const LINK_TIMEOUT_MS: u64 = 10_000;
/// Backlog frames handed to one socket write.
pub const SEND_BATCH_BYTES: usize = 256 * 1024;
/// The handshake line is at most this long.
pub const MAX_HANDSHAKE_LINE_BYTES: usize = 512;

/// Why a replica stream connection must close (logged by the shell; the replica
/// reconnects).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("bad frame: {0}")]
    Frame(#[from] crate::codec::CodecError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("nothing from the other side within {LINK_TIMEOUT_MS} ms")]
    Timeout,
    #[error("the replica fell out of the backlog ({0})")]
    OutOfBacklog(#[from] OutOfBacklog),
    #[error("the primary refused: {0}")]
    Refused(String),
}
