//! The in-region replica stream (PSYNC-like), its sans-IO parts: the wire frames and the
//! primary's bounded replication backlog.
//!
//! A replica follows one primary of its own region. The primary numbers every change of its
//! state with a node-wide offset (1, 2, 3…: one per [`ReplicaFrame::Delta`] or
//! [`ReplicaFrame::State`]; the offset is implicit, the replica counts frames) and keeps the
//! newest encoded frames in a [`Backlog`] bounded in bytes. A replica that reconnects with
//! the primary's replication id and an offset still covered by the backlog continues from
//! there (partial resync); otherwise it receives a snapshot (`Entries` chunks, then
//! `SnapshotEnd { offset }`) and the stream continues after `offset`. Merges are idempotent
//! and commutative, so an overlap between snapshot and stream is harmless.
//!
//! Framing is `meridian_regions::wire`'s: `len: u32 LE` · `version: u8` · postcard body; decoding is pure,
//! `Ok(None)` means "read more", malformed input is an error, never a panic, and decoded
//! entries are validated and rebuilt like region frames.

use crate::codec::{check_entry, CodecError, KeyState};
use bytes::Bytes;
use meridian_crdt::{key_slot, Delta, Entry};
use meridian_regions::wire::Framing;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

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

/// The stream position a replica asked for is no longer (or not yet) in the backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("offset {0} is outside the replication backlog")]
pub struct OutOfBacklog(pub u64);

/// The primary's replication backlog: the newest encoded change frames, bounded in bytes
/// (at least the newest frame is kept). Frame `i` from the front has offset
/// `first_offset() + i`; `offset()` is the last assigned offset (0: nothing yet).
///
/// The frames are kept back to back in one byte ring and copied out to a sender. Keeping
/// each frame as its own `Bytes` (slices of a shared arena) cost the writing thread two
/// atomic reference-count updates per change on lines the sender's side updated too, and
/// the sender copied the bytes into its socket buffer anyway.
#[derive(Debug)]
pub struct Backlog {
    /// The frames' bytes, oldest first.
    bytes: VecDeque<u8>,
    /// Where each frame ends, oldest first, counted in bytes ever pushed.
    ends: VecDeque<u64>,
    /// Bytes ever pushed before `bytes[0]`.
    base: u64,
    max_size_bytes: usize,
    offset: u64,
}

impl Backlog {
    /// An empty backlog whose next frame gets offset `offset + 1`.
    pub fn new(max_size_bytes: usize, offset: u64) -> Backlog {
        Backlog {
            bytes: VecDeque::new(),
            ends: VecDeque::new(),
            base: 0,
            max_size_bytes: max_size_bytes.max(1),
            offset,
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Offset of the oldest frame held (`offset() + 1` when empty).
    pub fn first_offset(&self) -> u64 {
        self.offset + 1 - self.ends.len() as u64
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn max_size_bytes(&self) -> usize {
        self.max_size_bytes
    }

    /// Append one encoded frame (copied in, never empty); returns its offset. The oldest
    /// frames go first, so the ring never holds more than the bound, or than one frame
    /// larger than it.
    pub fn push(&mut self, frame: &[u8]) -> u64 {
        debug_assert!(
            !frame.is_empty(),
            "an empty frame would shift replica offsets"
        );
        self.drop_oldest(frame.len());
        let needed = self.bytes.len() + frame.len();
        if needed > self.bytes.capacity() {
            // Doubling, but never past the bound (or the one frame larger than it).
            let room = (self.bytes.capacity() * 2).clamp(needed, needed.max(self.max_size_bytes));
            self.bytes.reserve_exact(room - self.bytes.len());
        }
        self.bytes.extend(frame);
        self.ends.push_back(self.base + self.bytes.len() as u64);
        self.offset += 1;
        self.offset
    }

    /// Give up an offset without a frame (a change that cannot be streamed): the backlog is
    /// forgotten, so every replica falls back to a full sync.
    pub fn skip_offset(&mut self) -> u64 {
        self.offset += 1;
        self.clear();
        self.offset
    }

    pub fn set_max_size_bytes(&mut self, max_size_bytes: usize) {
        self.max_size_bytes = max_size_bytes.max(1);
        self.drop_oldest(0);
    }

    /// Forget every frame; the offset keeps counting.
    pub fn clear(&mut self) {
        self.base += self.bytes.len() as u64;
        self.bytes.clear();
        self.ends.clear();
        self.bytes.shrink_to(self.max_size_bytes);
    }

    /// Drop the oldest frames until `incoming` more bytes fit the bound (or none is left),
    /// and give back room a frame larger than the bound left behind.
    fn drop_oldest(&mut self, incoming: usize) {
        let mut cut = 0u64;
        while self.bytes.len() - cut as usize + incoming > self.max_size_bytes {
            match self.ends.pop_front() {
                Some(end) => cut = end - self.base,
                None => break,
            }
        }
        self.bytes.drain(..cut as usize);
        self.base += cut;
        let keep = self.max_size_bytes.max(self.bytes.len() + incoming);
        if self.bytes.capacity() > keep.saturating_mul(2) {
            self.bytes.shrink_to(keep);
        }
        debug_assert!(self.ends.len() as u64 <= self.offset + 1);
    }

    /// Can a replica that applied everything up to `applied` continue from the backlog?
    pub fn covers(&self, applied: u64) -> bool {
        applied <= self.offset && applied + 1 >= self.first_offset()
    }

    /// Append the frames after `applied` to `out`, back to back: at most `max_bytes` of them
    /// (at least one frame when any is due). Returns the new applied offset.
    pub fn read_after(
        &self,
        applied: u64,
        max_bytes: usize,
        out: &mut Vec<u8>,
    ) -> Result<u64, OutOfBacklog> {
        if !self.covers(applied) {
            return Err(OutOfBacklog(applied));
        }
        let skip = (applied + 1 - self.first_offset()) as usize;
        if skip == self.ends.len() {
            return Ok(applied);
        }
        let from = match skip {
            0 => self.base,
            _ => self.ends[skip - 1],
        };
        // The due frames that end within the budget; at least the first.
        let limit = from.saturating_add(max_bytes as u64);
        let n = (self.ends.partition_point(|&e| e <= limit) - skip).max(1);
        let (start, end) = (
            (from - self.base) as usize,
            (self.ends[skip + n - 1] - self.base) as usize,
        );
        let (a, b) = self.bytes.as_slices();
        if start < a.len() {
            out.extend_from_slice(&a[start..end.min(a.len())]);
        }
        if end > a.len() {
            out.extend_from_slice(&b[start.saturating_sub(a.len())..end - a.len()]);
        }
        Ok(applied + n as u64)
    }
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

    #[test]
    fn backlog_offsets_bounds_and_reads() {
        let mut b = Backlog::new(10, 0);
        assert!(b.covers(0));
        assert!(!b.covers(1), "cannot continue from the future");
        assert_eq!(b.push(b"aaaa"), 1);
        assert_eq!(b.push(b"bbbb"), 2);
        assert_eq!((b.first_offset(), b.size_bytes()), (1, 8));
        assert_eq!(b.push(b"cccc"), 3);
        // 12 bytes > 10: the oldest goes.
        assert_eq!((b.first_offset(), b.len(), b.size_bytes()), (2, 2, 8));
        assert!(!b.covers(0));
        assert!(b.covers(1) && b.covers(3));
        let mut out = Vec::new();
        assert_eq!(b.read_after(0, 100, &mut out), Err(OutOfBacklog(0)));
        assert_eq!(b.read_after(1, 100, &mut out), Ok(3));
        assert_eq!(out, b"bbbbcccc");
        out.clear();
        // A budget smaller than one frame still makes progress.
        assert_eq!(b.read_after(1, 1, &mut out), Ok(2));
        assert_eq!(out, b"bbbb");
        out.clear();
        assert_eq!(b.read_after(3, 100, &mut out), Ok(3));
        assert!(out.is_empty());
        // One frame larger than the bound is still kept.
        b.push(&[7u8; 50]);
        assert_eq!((b.len(), b.first_offset(), b.offset()), (1, 4, 4));
        assert_eq!(b.read_after(3, 1, &mut out), Ok(4));
        assert_eq!(out, [7u8; 50]);
        b.clear();
        assert!(b.is_empty() && b.covers(4) && !b.covers(3));
        assert_eq!(b.push(b"x"), 5);
        // A change that could not be streamed takes an offset and forgets the backlog.
        assert_eq!(b.skip_offset(), 6);
        assert!(b.is_empty() && !b.covers(5) && b.covers(6));
        assert_eq!(b.push(b"yy"), 7);
        out.clear();
        assert_eq!(b.read_after(6, 100, &mut out), Ok(7));
        assert_eq!(out, b"yy");
        // A backlog started at a later offset.
        let b = Backlog::new(10, 100);
        assert!(b.covers(100) && !b.covers(99));
    }

    /// A frame far over the bound is kept alone; the room it took is given back once
    /// smaller frames follow, and the ring never holds more than the bound otherwise.
    #[test]
    fn backlog_gives_back_a_huge_frames_room() {
        let mut b = Backlog::new(1000, 0);
        for i in 0..100u8 {
            b.push(&[i; 30]);
            assert!(b.size_bytes() <= 1000);
        }
        assert!(b.bytes.capacity() <= 2000, "{}", b.bytes.capacity());
        b.push(&vec![7u8; 1 << 20]);
        assert_eq!((b.len(), b.size_bytes()), (1, 1 << 20));
        b.push(b"small");
        assert_eq!(b.len(), 1);
        assert!(b.bytes.capacity() <= 2000, "{}", b.bytes.capacity());
        let mut out = Vec::new();
        assert_eq!(b.read_after(101, 100, &mut out), Ok(102));
        assert_eq!(out, b"small");
    }

    /// Frames wrap around the ring's end many times and still read back whole, in order.
    #[test]
    fn backlog_ring_wraps() {
        let mut b = Backlog::new(100, 0);
        let frame = |i: u64| -> Vec<u8> { (0..(i % 13 + 1)).map(|k| (i + k) as u8).collect() };
        let mut sent = 0;
        let mut out = Vec::new();
        for i in 1..=2000u64 {
            b.push(&frame(i));
            if i % 7 == 0 {
                out.clear();
                let to = b.read_after(sent, 1000, &mut out).unwrap();
                let want: Vec<u8> = (sent + 1..=to).flat_map(frame).collect();
                assert_eq!(out, want, "frames {}..={to}", sent + 1);
                sent = to;
            }
        }
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

        #[test]
        fn backlog_reads_return_exactly_the_frames_after(sizes in proptest::collection::vec(1usize..20, 1..60), max in 1usize..100, from in 0u64..70, budget in 1usize..50) {
            let mut b = Backlog::new(max, 0);
            let frame = |i: usize| vec![i as u8; sizes[i]];
            for i in 0..sizes.len() {
                b.push(&frame(i));
            }
            prop_assert!(b.size_bytes() <= max || b.len() == 1);
            let mut out = Vec::new();
            match b.read_after(from, budget, &mut out) {
                Ok(to) => {
                    prop_assert!(b.covers(from));
                    prop_assert!(to > from || to == b.offset());
                    // Offset o is frame o - 1; the bytes are those frames, back to back.
                    let want: Vec<u8> = (from..to).flat_map(|o| frame(o as usize)).collect();
                    prop_assert_eq!(&out, &want);
                    // Within the budget unless one frame alone exceeds it, and no frame
                    // that would still have fit was left out.
                    prop_assert!(out.len() <= budget || to == from + 1);
                    if to < b.offset() {
                        prop_assert!(out.len() + sizes[to as usize] > budget);
                    }
                }
                Err(_) => prop_assert!(!b.covers(from)),
            }
        }
    }
}
