//! The replica stream's wire frames: framing is `meridian_regions::wire`'s (`len: u32 LE` ·
//! `version: u8` · postcard body); decoding is pure, `Ok(None)` means "read more", malformed
//! input is an error, never a panic, and decoded entries are validated and rebuilt like
//! region frames.

use crate::codec::{check_entry, CodecError, KeyState};
use bytes::Bytes;
use meridian_crdt::{key_slot, Delta, Entry};
use meridian_regions::wire::Framing;
use serde::{Deserialize, Serialize};

pub const REPLICA_PROTOCOL_VERSION: u8 = 1;
/// Hard limit on one replica frame (prefix excluded): one value may be large (a big string
/// or set), so this is above the region link's limit; snapshot chunks stay far below.
pub const MAX_REPLICA_FRAME_BYTES: usize = 64 << 20;
/// Snapshot chunks are cut once their estimated size reaches this.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;
const FRAMING: Framing = Framing {
    version: REPLICA_PROTOCOL_VERSION,
    max_body: MAX_REPLICA_FRAME_BYTES,
};

/// One frame of the replica stream (after the `+FULLRESYNC`/`+CONTINUE` line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaFrame {
    /// Primary → replica, full sync: whole key states (tombstones included).
    Entries(Vec<KeyState>),
    /// Primary → replica: the snapshot is complete; it covers every change up to `offset`.
    SnapshotEnd { offset: u64 },
    /// Primary → replica: one change (a local write, or a delta merged from another
    /// region). Occupies the next offset.
    Delta(Delta),
    /// Primary → replica: a whole key state the primary merged from another region
    /// (anti-entropy). Occupies the next offset.
    State { key: Bytes, state: Entry },
    /// Primary → replica heartbeat (no offset).
    Ping,
    /// Replica → primary: every change up to `offset` is applied.
    Ack { offset: u64 },
    /// Primary → replica: the key left this node with its state (MIGRATE moved it to the
    /// slot's new owner); drop the local copy, leaving no tombstone (the key lives on in the
    /// region). Occupies the next offset.
    Forget { key: Bytes },
    /// Primary → replica: every key of `slot` left this node (the slot went to another
    /// node); drop them, leaving no tombstones. Occupies the next offset.
    ForgetSlot { slot: u16 },
}

impl ReplicaFrame {
    /// Does this frame occupy a stream offset?
    pub fn has_offset(&self) -> bool {
        matches!(
            self,
            ReplicaFrame::Delta(_)
                | ReplicaFrame::State { .. }
                | ReplicaFrame::Forget { .. }
                | ReplicaFrame::ForgetSlot { .. }
        )
    }
}

/// Borrowing twin of [`ReplicaFrame`] for encoding without cloning (same variant order, so
/// postcard produces identical bytes).
#[derive(Serialize)]
enum FrameRef<'a> {
    #[allow(dead_code)]
    Entries(&'a [KeyState]),
    #[allow(dead_code)]
    SnapshotEnd {
        offset: u64,
    },
    Delta(&'a Delta),
    State {
        key: &'a [u8],
        state: &'a Entry,
    },
    #[allow(dead_code)]
    Ping,
    #[allow(dead_code)]
    Ack {
        offset: u64,
    },
    Forget {
        key: &'a [u8],
    },
}

fn encode_with<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    Ok(FRAMING.encode_into(value, out)?)
}

/// Append one encoded frame to `out`; returns its size on the wire.
pub fn encode_frame(frame: &ReplicaFrame, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    encode_with(frame, out)
}

/// Append `ReplicaFrame::Delta(delta.clone())`, encoded without the clone, to `out`;
/// returns its size on the wire (on error `out` is left as it was).
pub fn encode_delta(delta: &Delta, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    encode_with(&FrameRef::Delta(delta), out)
}

/// Append `ReplicaFrame::State { key, state }`, encoded without cloning, to `out`.
pub fn encode_state(key: &[u8], state: &Entry, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    encode_with(&FrameRef::State { key, state }, out)
}

/// Append `ReplicaFrame::Forget { key }`, encoded without copying the key, to `out`.
pub fn encode_forget(key: &[u8], out: &mut Vec<u8>) -> Result<usize, CodecError> {
    encode_with(&FrameRef::Forget { key }, out)
}

/// Decode one frame from the front of `buf`: `Ok(Some((frame, consumed)))`, `Ok(None)` when
/// more bytes are needed, or an error (close the connection).
pub fn decode_frame(buf: &[u8]) -> Result<Option<(ReplicaFrame, usize)>, CodecError> {
    let Some((mut frame, n)) = FRAMING.decode::<ReplicaFrame>(buf)? else {
        return Ok(None);
    };
    match &mut frame {
        ReplicaFrame::Entries(entries) => {
            for ks in entries.iter_mut() {
                check_entry(&ks.state)?;
                ks.state.rebuild();
            }
        }
        ReplicaFrame::Delta(d) => {
            if d.slot != key_slot(&d.key) {
                return Err(CodecError::Invalid("delta slot does not match its key"));
            }
            check_entry(&d.state)?;
            d.state.rebuild();
        }
        ReplicaFrame::State { state, .. } => {
            check_entry(state)?;
            state.rebuild();
        }
        ReplicaFrame::ForgetSlot { slot } => {
            if usize::from(*slot) >= meridian_crdt::SLOT_COUNT {
                return Err(CodecError::Invalid("slot out of range"));
            }
        }
        ReplicaFrame::SnapshotEnd { .. }
        | ReplicaFrame::Ping
        | ReplicaFrame::Ack { .. }
        | ReplicaFrame::Forget { .. } => {}
    }
    Ok(Some((frame, n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_deltas;
    use proptest::prelude::*;

    fn sample_frames() -> Vec<ReplicaFrame> {
        let (ks, deltas) = sample_deltas();
        let entries = deltas
            .iter()
            .map(|d| KeyState {
                key: d.key.clone(),
                state: ks.raw_entry(&d.key).unwrap().into_owned(),
            })
            .collect();
        vec![
            ReplicaFrame::Entries(entries),
            ReplicaFrame::SnapshotEnd { offset: 7 },
            ReplicaFrame::Delta(deltas[0].clone()),
            ReplicaFrame::State {
                key: deltas[1].key.clone(),
                state: deltas[1].state.clone(),
            },
            ReplicaFrame::Ping,
            ReplicaFrame::Ack { offset: 42 },
            ReplicaFrame::Forget {
                key: deltas[2].key.clone(),
            },
            ReplicaFrame::ForgetSlot { slot: 16383 },
        ]
    }

    #[test]
    fn round_trips_and_reports_incomplete() {
        for f in sample_frames() {
            let mut bytes = Vec::new();
            encode_frame(&f, &mut bytes).unwrap();
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode_frame(&bytes[..cut]),
                    Ok(None),
                    "prefix of {cut} bytes"
                );
            }
            let (back, used) = decode_frame(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, f);
        }
    }

    #[test]
    fn borrowed_encoding_matches_owned() {
        let (_, deltas) = sample_deltas();
        let mut owned = Vec::new();
        encode_frame(&ReplicaFrame::Delta(deltas[2].clone()), &mut owned).unwrap();
        let mut borrowed = b"already here".to_vec();
        encode_delta(&deltas[2], &mut borrowed).unwrap();
        assert_eq!(borrowed[12..], owned[..]);
        let mut owned = Vec::new();
        let st = ReplicaFrame::State {
            key: deltas[0].key.clone(),
            state: deltas[0].state.clone(),
        };
        encode_frame(&st, &mut owned).unwrap();
        let mut borrowed = Vec::new();
        encode_state(&deltas[0].key, &deltas[0].state, &mut borrowed).unwrap();
        assert_eq!(borrowed, owned);
        let mut owned = Vec::new();
        let forget = ReplicaFrame::Forget {
            key: deltas[1].key.clone(),
        };
        encode_frame(&forget, &mut owned).unwrap();
        let mut borrowed = Vec::new();
        encode_forget(&deltas[1].key, &mut borrowed).unwrap();
        assert_eq!(borrowed, owned);
        assert!(forget.has_offset() && ReplicaFrame::ForgetSlot { slot: 0 }.has_offset());
        assert!(!ReplicaFrame::Ping.has_offset());
    }

    #[test]
    fn rejects_a_slot_out_of_range() {
        let mut b = Vec::new();
        encode_frame(&ReplicaFrame::ForgetSlot { slot: 16384 }, &mut b).unwrap();
        assert!(matches!(decode_frame(&b), Err(CodecError::Invalid(_))));
    }

    #[test]
    fn rejects_bad_version_and_mismatched_slot() {
        let mut b = Vec::new();
        encode_frame(&ReplicaFrame::Ping, &mut b).unwrap();
        b[4] = 9;
        assert_eq!(
            decode_frame(&b),
            Err(CodecError::Frame(
                meridian_regions::wire::FrameError::Version(9)
            ))
        );
        let (_, mut deltas) = sample_deltas();
        deltas[0].slot = deltas[0].slot.wrapping_add(1) % 16384;
        let mut bytes = Vec::new();
        encode_delta(&deltas[0], &mut bytes).unwrap();
        assert!(matches!(decode_frame(&bytes), Err(CodecError::Invalid(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn corrupted_frames_never_panic(which in 0usize..6, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let mut bytes = Vec::new();
            encode_frame(&sample_frames()[which], &mut bytes).unwrap();
            for (pos, val) in flips {
                let i = pos % bytes.len();
                if i >= 4 || val & 1 == 0 { bytes[i] ^= val; }
            }
            let _ = decode_frame(&bytes);
            let cut = cut % (bytes.len() + 1);
            let _ = decode_frame(&bytes[..cut]);
        }

    }
}
