//! Wire codec: versioned, length-prefixed frames encoded with postcard.
//!
//! Framing is `meridian_regions::wire`'s (`len: u32 LE` · `version: u8` · postcard body),
//! shared with the cluster bus and the replica stream. Decoding a buffer is pure: an incomplete frame is
//! `Ok(None)` (read more), anything malformed is an error, never a panic. Decoded entries
//! are validated (sorted, one dot per region) and their derived fields rebuilt, so a peer's
//! garbage cannot break the keyspace's invariants.

use bytes::Bytes;
use meridian_crdt::{key_slot, Delta, Entry, Hlc, RegionId, Str, Val};
use meridian_regions::wire::{FrameError, Framing};
use serde::{Deserialize, Serialize};

/// 2: `Hello` (restart handshake); a batch's epoch is an incarnation id compared for
/// equality, not magnitude. 3: `AeEntries::offer` (versions of the asker's differing keys,
/// so a side whose copy is older leaves the key to the asker instead of shipping it).
/// 4: `Hello::region`, `Hello::epoch`, `Hello::born_ms` (who is asking: a region that joins
/// at run time is known by its `Hello`; the GC bound's refusals name incarnations) and
/// `Frame::Refused`. Earlier frames keep their encoding (new fields and the new variant
/// come last), but a version-3 peer is refused by the framing, as every bump so far.
/// 5: `Batch::moved` (a resent delta whose content was joined into a later, never-sent
/// delta of its key travels as a placeholder naming that later sequence) and
/// `AeEntries::left_to_deltas`, and `Frame::Packed` (LZ4-compressed frames).
pub const PROTOCOL_VERSION: u8 = 5;
/// Hard limit on one frame (prefix excluded). Batches and anti-entropy chunks stay far below.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
const FRAMING: Framing = Framing {
    version: PROTOCOL_VERSION,
    max_body: MAX_FRAME_BYTES,
};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("invalid frame content: {0}")]
    Invalid(&'static str),
}

/// A run of deltas from one origin: `deltas[i]` has sequence `first_seq + i`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub origin: RegionId,
    /// Incarnation of the sender's log: an id (not a time, not ordered) that changes with
    /// every restart; 1 declares the region's first incarnation ever (a fresh deployment).
    pub epoch: u64,
    /// Every sequence below `floor` was acknowledged or abandoned (log dropped).
    pub floor: u64,
    pub first_seq: u64,
    pub deltas: Vec<Delta>,
    /// Placeholders among `deltas`, as `(index, to)` in increasing index order: the delta
    /// at `index` was sent before, and on this resend its content travels in the later,
    /// never-sent delta of sequence `to` (same key). A placeholder takes its sequence
    /// (acknowledged like any delta), is not merged, and carries its write's stamp; the
    /// receiver's frontier for the origin stays below that stamp until it has merged `to`.
    pub moved: Vec<(u32, u64)>,
}

/// Highest contiguous sequence received from `origin` in `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub origin: RegionId,
    pub epoch: u64,
    pub seq: u64,
}

/// The sender's view of causal stability: for each origin, an HLC below which it holds
/// every write of that origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontier {
    pub seen: Vec<(RegionId, Hlc)>,
    /// The greatest stamp of the sender's own deltas enqueued so far (every local write
    /// made before what it merged is enqueued when it gossips): what GC waits for.
    pub enqueued: Hlc,
}

/// Restart handshake. A link sends `ask: true` to every peer when it starts (again until
/// some `Hello` from that peer arrives); a peer answers with `ask: false`. `your_max` is
/// the greatest HLC the sender knows the receiver's region to have issued (its deltas,
/// its gossiped frontier): a region restarted empty raises its clock above it, so it never
/// reissues a stamp its previous incarnation used. `clock` is the sender's own clock at
/// its last drain, at or above every stamp its state holds: a link started after the
/// sender's previous one (a failover, a restarted process that kept its state) may not
/// know `your_max` yet, so the asker raises its clock above this too (within its bound).
///
/// `region` and `epoch` name the sender (its region id and its link's incarnation): a
/// region not configured here that connects at run time is added by its `Hello`, and a
/// peer expelled from GC (see `RegionLink`) is readmitted only by another incarnation.
/// `born_ms` is the sender link's start (its wall clock; 0: not known yet): a peer expelled
/// before any incarnation of it was heard is readmitted only by one born after that.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub ask: bool,
    pub your_max: Hlc,
    pub clock: Hlc,
    pub region: RegionId,
    pub epoch: u64,
    pub born_ms: u64,
}

/// Why a peer refuses the receiver's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// Nothing was heard from this incarnation for longer than the sender's GC bound (or the
    /// sender forgot the region): it collected deleted-state metadata without it, so this
    /// incarnation's state may hold what that removed. Restart the region empty: a new
    /// incarnation is accepted and bootstraps by anti-entropy.
    Expelled,
    /// The receiver's region id is another region's there.
    RegionIdClash,
    /// The sender accepts no region it is not configured with (`accept-new-regions`).
    NotAccepted,
}

/// The sender refuses the receiver's incarnation `epoch` (0: whichever it is): nothing it
/// sends is merged. `sender` is the sender's own incarnation (so that a refusal it gets in
/// turn can name it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub epoch: u64,
    pub reason: RefuseReason,
    pub sender: u64,
}

/// Anti-entropy step 1 (initiator → responder): salted 16-bit digests of non-empty slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeDigests {
    pub round: u64,
    /// Bitmap of slots with a non-zero digest (`SLOT_COUNT / 8` bytes, or empty for none).
    pub present: Bytes,
    /// One `u16` LE per set bit, in slot order.
    pub digests: Bytes,
}

/// Salted 32-bit fingerprints of (key, key digest) for the live keys of one slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotKeys {
    pub slot: u16,
    pub fps: Bytes,
}

/// Anti-entropy step 2 (responder → initiator): the differing slots with the responder's
/// key fingerprints. Chunked; `last` marks the end of the round's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeKeys {
    pub round: u64,
    pub last: bool,
    /// The responder's own write frontier when it compared (causal-stability bookkeeping:
    /// a clean round proves the initiator holds the responder's writes up to it).
    pub origin_seen: Hlc,
    pub slots: Vec<SlotKeys>,
}

/// Versions of the sender's differing keys in one slot: per key, its salted 32-bit key id
/// (`u32` LE) and the physical milliseconds of the greatest HLC in its state, low 32 bits
/// (`u32` LE, compared with wrap-around; versions within one millisecond count as equal),
/// 8 bytes each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVersions {
    pub slot: u16,
    pub keys: Bytes,
}

/// Bytes per key in [`SlotVersions::keys`].
pub const VERSION_BYTES: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    pub key: Bytes,
    pub state: Entry,
}

/// Anti-entropy step 3+: full key states (tombstones included) plus the fingerprints the
/// sender wants the receiver to ship back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeEntries {
    pub round: u64,
    pub entries: Vec<KeyState>,
    pub want: Vec<SlotKeys>,
    /// This frame completes the answer to one `want` request.
    pub last: bool,
    /// With a `want`: the versions of the sender's own differing keys in the wanted slots.
    /// A wanted key whose offered version is newer than the receiver's copy is not shipped
    /// (the sender ships its copy, and the receiver pushes back what it knew more). Empty:
    /// every wanted key is shipped.
    pub offer: Vec<SlotVersions>,
    /// With `last` of an answer: salted ids (`u32` LE each, see `AeEntries::offer`) of
    /// wanted keys not shipped because the sender's delta of the key is still in flight to
    /// the receiver: that delta brings the key, and the receiver does not push its own
    /// (older) copy back for them this round.
    pub left_to_deltas: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Batch(Batch),
    Ack(Ack),
    Frontier(Frontier),
    AeDigests(AeDigests),
    AeKeys(AeKeys),
    AeEntries(AeEntries),
    Hello(Hello),
    /// Discovery: asks the receiver for its region's topology (answered by `Topology`).
    TopologyRequest,
    /// The sender's region: its nodes, their replication addresses and served slots
    /// (validated on decode: see [`crate::proto::topology::RegionTopology::validate`]).
    Topology(crate::proto::topology::RegionTopology),
    /// The sender refuses the receiver's incarnation (see [`Refused`]).
    Refused(Refused),
    /// Another frame, compressed (see [`FrameEncoder`]); [`decode`] returns the inner one.
    Packed(Packed),
}

/// A frame compressed with LZ4 (block format): `lz4` decompresses to exactly `raw_len`
/// bytes, the postcard body of one frame that is not itself `Packed`. `raw_len` is bounded
/// by [`MAX_FRAME_BYTES`] like any frame, so a peer cannot make the receiver allocate more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    pub raw_len: u32,
    pub lz4: Bytes,
}

/// Frames of at least this many bytes (batches and anti-entropy entries) are compressed.
pub const COMPRESS_MIN_BYTES: usize = 256;

/// Encodes frames for one link, compressing large batches and anti-entropy entries with
/// LZ4 when `compress` is on (`[replication] compression`) and it pays (a frame that does
/// not shrink goes plain). Keeps its scratch buffers between frames.
#[derive(Debug, Default)]
pub struct FrameEncoder {
    pub compress: bool,
    raw: Vec<u8>,
    lz4: Vec<u8>,
}

impl FrameEncoder {
    pub fn new(compress: bool) -> FrameEncoder {
        FrameEncoder {
            compress,
            raw: Vec::new(),
            lz4: Vec::new(),
        }
    }

    /// Append one encoded frame to `out`; returns its size on the wire.
    pub fn encode_into(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<usize, CodecError> {
        if !self.compress || !matches!(frame, Frame::Batch(_) | Frame::AeEntries(_)) {
            return encode_into(frame, out);
        }
        self.raw.clear();
        self.raw = postcard::to_extend(frame, std::mem::take(&mut self.raw))
            .map_err(|e| CodecError::Frame(FrameError::Malformed(e.to_string())))?;
        let n = self.raw.len();
        if !(COMPRESS_MIN_BYTES..=MAX_FRAME_BYTES).contains(&n) {
            return encode_into(frame, out);
        }
        self.lz4.clear();
        self.lz4
            .resize(lz4_flex::block::get_maximum_output_size(n), 0);
        let Ok(packed) = lz4_flex::block::compress_into(&self.raw, &mut self.lz4) else {
            return encode_into(frame, out);
        };
        if packed + 8 >= n {
            return encode_into(frame, out);
        }
        let wrapped = Frame::Packed(Packed {
            raw_len: n as u32,
            lz4: Bytes::copy_from_slice(&self.lz4[..packed]),
        });
        encode_into(&wrapped, out)
    }
}

impl Frame {
    /// Anti-entropy traffic (reported separately from delta shipping).
    pub fn is_anti_entropy(&self) -> bool {
        matches!(
            self,
            Frame::AeDigests(_) | Frame::AeKeys(_) | Frame::AeEntries(_)
        )
    }
}

/// Append one encoded frame to `out`; returns its size on the wire.
pub fn encode_into(frame: &Frame, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    Ok(FRAMING.encode_into(frame, out)?)
}

pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Decode one frame from the front of `buf`: `Ok(Some((frame, consumed)))`, `Ok(None)` when
/// more bytes are needed, or an error (the connection should be closed).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, CodecError> {
    let Some((mut frame, n)) = FRAMING.decode::<Frame>(buf)? else {
        return Ok(None);
    };
    if let Frame::Packed(p) = &frame {
        frame = unpack(p)?;
    }
    validate(&mut frame)?;
    Ok(Some((frame, n)))
}

fn unpack(p: &Packed) -> Result<Frame, CodecError> {
    let raw_len = p.raw_len as usize;
    if raw_len > MAX_FRAME_BYTES {
        return Err(CodecError::Frame(FrameError::TooLarge {
            len: raw_len,
            max: MAX_FRAME_BYTES,
        }));
    }
    let raw = lz4_flex::block::decompress(&p.lz4, raw_len)
        .map_err(|_| CodecError::Invalid("compressed frame does not decompress"))?;
    if raw.len() != raw_len {
        return Err(CodecError::Invalid("compressed frame has the wrong length"));
    }
    let (inner, rest) = postcard::take_from_bytes::<Frame>(&raw)
        .map_err(|e| CodecError::Frame(FrameError::Malformed(e.to_string())))?;
    if !rest.is_empty() {
        return Err(CodecError::Frame(FrameError::Trailing));
    }
    if matches!(inner, Frame::Packed(_)) {
        return Err(CodecError::Invalid("nested compressed frame"));
    }
    Ok(inner)
}

fn validate(frame: &mut Frame) -> Result<(), CodecError> {
    match frame {
        Frame::Batch(b) => {
            if b.first_seq == 0 || b.floor == 0 {
                return Err(CodecError::Invalid("sequences start at 1"));
            }
            if b.first_seq.checked_add(b.deltas.len() as u64).is_none() {
                return Err(CodecError::Invalid("sequence overflow"));
            }
            let mut prev: Option<u32> = None;
            for &(i, to) in &b.moved {
                if prev.is_some_and(|p| p >= i) {
                    return Err(CodecError::Invalid("placeholders out of order"));
                }
                prev = Some(i);
                let Some(d) = b.deltas.get(i as usize) else {
                    return Err(CodecError::Invalid("placeholder index out of range"));
                };
                if to <= b.first_seq + u64::from(i) {
                    return Err(CodecError::Invalid("placeholder names an earlier sequence"));
                }
                if !d.key.is_empty() || !d.state.is_void() {
                    return Err(CodecError::Invalid("placeholder carries state"));
                }
            }
            for d in b.deltas.iter_mut() {
                if d.slot != key_slot(&d.key) {
                    return Err(CodecError::Invalid("delta slot does not match its key"));
                }
                check_entry(&d.state)?;
                d.state.rebuild();
            }
        }
        Frame::AeDigests(d) => {
            let bits = if d.present.is_empty() {
                0
            } else if d.present.len() == meridian_crdt::SLOT_COUNT / 8 {
                d.present.iter().map(|b| b.count_ones() as usize).sum()
            } else {
                return Err(CodecError::Invalid("slot bitmap has the wrong size"));
            };
            if d.digests.len() != bits * 2 {
                return Err(CodecError::Invalid("digest count does not match bitmap"));
            }
        }
        Frame::AeKeys(k) => check_slot_keys(&k.slots)?,
        Frame::AeEntries(e) => {
            check_slot_keys(&e.want)?;
            if e.left_to_deltas.len() % 4 != 0 {
                return Err(CodecError::Invalid("key id list has a partial id"));
            }
            for v in &e.offer {
                if usize::from(v.slot) >= meridian_crdt::SLOT_COUNT
                    || v.keys.len() % VERSION_BYTES != 0
                {
                    return Err(CodecError::Invalid("bad slot version list"));
                }
            }
            for ks in e.entries.iter_mut() {
                check_entry(&ks.state)?;
                ks.state.rebuild();
            }
        }
        Frame::Ack(_) | Frame::Frontier(_) | Frame::Hello(_) | Frame::Refused(_) => {}
        Frame::TopologyRequest => {}
        Frame::Topology(t) => t.validate().map_err(CodecError::Invalid)?,
        Frame::Packed(_) => return Err(CodecError::Invalid("nested compressed frame")),
    }
    Ok(())
}

fn check_slot_keys(slots: &[SlotKeys]) -> Result<(), CodecError> {
    for s in slots {
        if usize::from(s.slot) >= meridian_crdt::SLOT_COUNT || s.fps.len() % 4 != 0 {
            return Err(CodecError::Invalid("bad slot fingerprint list"));
        }
    }
    Ok(())
}

fn strictly_sorted<T: Ord>(mut it: impl Iterator<Item = T>) -> bool {
    let Some(mut prev) = it.next() else {
        return true;
    };
    for x in it {
        if x <= prev {
            return false;
        }
        prev = x;
    }
    true
}

fn check_str(s: &Str) -> Result<(), CodecError> {
    // One contribution per (region, incarnation): a region has several incarnations after
    // it lost its own (eviction, restart...), and the merge binary-searches them by that id.
    if !strictly_sorted(s.ctr.iter().map(|c| c.id())) {
        return Err(CodecError::Invalid(
            "counter contributions not sorted by (region, incarnation)",
        ));
    }
    Ok(())
}

/// The merge code relies on these orderings (binary searches); reject states that break them.
/// Validate a decoded entry (sorted, one dot per region) before merging it.
pub fn check_entry(e: &Entry) -> Result<(), CodecError> {
    if !strictly_sorted(e.components().iter().map(|c| c.val.kind())) {
        return Err(CodecError::Invalid("components not sorted by kind"));
    }
    if !strictly_sorted(e.expiry().entries().iter().map(|d| d.region)) {
        return Err(CodecError::Invalid("ttl dots not sorted by region"));
    }
    for c in e.components() {
        match &c.val {
            Val::Str(s) => check_str(s)?,
            Val::Set(s) => {
                for (_, dots) in s.raw() {
                    if !strictly_sorted(dots.entries().iter().map(|d| d.region)) {
                        return Err(CodecError::Invalid("member dots not sorted by region"));
                    }
                }
            }
            Val::Hash(h) => {
                for (_, s) in h.raw() {
                    check_str(s)?;
                }
            }
            // Validated as it is decoded (positions in range, rebuilt in order).
            Val::List(_) => {}
            // Decoding merges each member into an empty set: sorted and one each already.
            Val::ZSet(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use meridian_crdt::{Keyspace, KeyspaceConfig, Stamp};
    use proptest::prelude::*;

    /// A keyspace holding one key of each kind (counter, set, string with a TTL, hash; in
    /// that order) and the deltas that built it: sample content for the frame tests here and
    /// in `replica`.
    pub(crate) fn sample_deltas() -> (Keyspace, Vec<Delta>) {
        let mut ks = Keyspace::new(KeyspaceConfig {
            region: RegionId(1),
            retain_tombstones: true,
            ..KeyspaceConfig::default()
        });
        let st = |n: u64| Stamp::new(Hlc::from_parts(1_000 + n, 0), RegionId(1));
        ks.write(b"ctr", st(1), 0, |w| w.incr_by(5).unwrap());
        ks.write(b"s", st(2), 0, |w| w.sadd(&Bytes::from_static(b"m")));
        ks.write(b"k", st(3), 0, |w| {
            w.set_str(Bytes::from_static(b"value"), false);
            w.set_deadline(Some(99_999));
        });
        ks.write(b"h", st(4), 0, |w| {
            w.hash_update(&Bytes::from_static(b"f"), |s, st| {
                s.set(st, Bytes::from_static(b"v"))
            })
        });
        let deltas = ks.drain_deltas().collect();
        (ks, deltas)
    }

    fn sample_frames() -> Vec<Frame> {
        let (ks, deltas) = sample_deltas();
        let entries = deltas
            .iter()
            .map(|d| KeyState {
                key: d.key.clone(),
                state: ks.raw_entry(&d.key).unwrap().into_owned(),
            })
            .collect();
        vec![
            Frame::Batch(Batch {
                origin: RegionId(1),
                epoch: 1,
                floor: 1,
                first_seq: 1,
                deltas,
                moved: vec![],
            }),
            Frame::Ack(Ack {
                origin: RegionId(2),
                epoch: 3,
                seq: 77,
            }),
            Frame::Frontier(Frontier {
                seen: vec![(RegionId(1), Hlc(5))],
                enqueued: Hlc(4),
            }),
            Frame::Hello(Hello {
                ask: true,
                your_max: Hlc(1 << 40),
                clock: Hlc(1 << 41),
                region: RegionId(7),
                epoch: 1 << 63 | 5,
                born_ms: 1_700_000_000_000,
            }),
            Frame::Refused(Refused {
                epoch: 1 << 63 | 9,
                reason: RefuseReason::Expelled,
                sender: 1 << 63 | 10,
            }),
            Frame::AeEntries(AeEntries {
                round: 9,
                entries,
                want: vec![SlotKeys {
                    slot: 3,
                    fps: Bytes::from_static(&[1, 2, 3, 4]),
                }],
                last: true,
                offer: vec![SlotVersions {
                    slot: 3,
                    keys: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8]),
                }],
                left_to_deltas: Bytes::from_static(&[9, 8, 7, 6]),
            }),
        ]
    }

    #[test]
    fn round_trips_and_reports_incomplete() {
        for f in sample_frames() {
            let bytes = encode(&f).unwrap();
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Ok(None), "prefix of {cut} bytes");
            }
            let (back, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, f);
        }
    }

    /// A counter holding two incarnations of one region's contribution (the region evicted
    /// the key and incremented again, then got its old state back) is valid on the wire:
    /// rejecting it left such keys unrepairable by anti-entropy.
    #[test]
    fn counter_incarnations_of_one_region_are_valid() {
        let mut ks = Keyspace::new(KeyspaceConfig {
            region: RegionId(1),
            retain_tombstones: true,
            ..KeyspaceConfig::default()
        });
        let st = |n: u64| Stamp::new(Hlc::from_parts(1_000 + n, 0), RegionId(1));
        ks.write(b"c", st(1), 0, |w| w.incr_by(10).unwrap());
        let old = ks.raw_entry(b"c").unwrap().into_owned();
        assert!(ks.evict_key(b"c") > 0);
        ks.write(b"c", st(2), 0, |w| w.incr_by(1).unwrap());
        ks.merge_state(b"c", true, &old);
        let state = ks.raw_entry(b"c").unwrap().into_owned();
        let contribs: Vec<_> = state
            .components()
            .iter()
            .filter_map(|c| match &c.val {
                Val::Str(s) => Some(s.ctr.iter().map(|c| c.id()).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(contribs.len(), 2, "two incarnations: {contribs:?}");
        assert_eq!(contribs[0].0, contribs[1].0, "of one region");
        let f = Frame::AeEntries(AeEntries {
            round: 1,
            entries: vec![KeyState {
                key: Bytes::from_static(b"c"),
                state,
            }],
            want: Vec::new(),
            last: true,
            offer: Vec::new(),
            left_to_deltas: Bytes::new(),
        });
        let (back, _) = decode(&encode(&f).unwrap()).unwrap().unwrap();
        assert_eq!(back, f);
    }

    /// `Batch::moved`: a placeholder round-trips; one that carries state, names an
    /// earlier sequence, is out of range or out of order is refused.
    #[test]
    fn batch_placeholders_are_checked() {
        let (_, deltas) = sample_deltas();
        let placeholder = Delta {
            key: Bytes::new(),
            slot: 0,
            stamp: deltas[0].stamp,
            full: false,
            state: Entry::default(),
        };
        let batch = |moved: Vec<(u32, u64)>, first: Delta| {
            let mut ds = deltas.clone();
            ds[0] = first;
            Frame::Batch(Batch {
                origin: RegionId(1),
                epoch: 1,
                floor: 1,
                first_seq: 5,
                deltas: ds,
                moved,
            })
        };
        let good = batch(vec![(0, 9)], placeholder.clone());
        let (back, _) = decode(&encode(&good).unwrap()).unwrap().unwrap();
        assert_eq!(back, good);
        let n = deltas.len() as u32;
        for (bad, why) in [
            (
                batch(vec![(0, 9)], deltas[0].clone()),
                "placeholder carries state",
            ),
            (
                batch(vec![(0, 5)], placeholder.clone()),
                "placeholder names an earlier sequence",
            ),
            (
                batch(vec![(n, 99)], placeholder.clone()),
                "placeholder index out of range",
            ),
            (
                batch(vec![(0, 9), (0, 9)], placeholder.clone()),
                "placeholders out of order",
            ),
        ] {
            assert_eq!(
                decode(&encode(&bad).unwrap()),
                Err(CodecError::Invalid(why))
            );
        }
    }

    /// `FrameEncoder` with compression: every frame decodes to itself, a large batch goes
    /// packed and smaller; a packed frame that lies about its length, does not decompress,
    /// claims more than a frame may hold or nests another is refused.
    #[test]
    fn compressed_frames_round_trip_and_bad_ones_are_refused() {
        let mut enc = FrameEncoder::new(true);
        let (_, deltas) = sample_deltas();
        let mut frames = sample_frames();
        frames.push(Frame::Batch(Batch {
            origin: RegionId(1),
            epoch: 1,
            floor: 1,
            first_seq: 1,
            deltas: deltas.iter().cycle().take(200).cloned().collect(),
            moved: vec![],
        }));
        for f in &frames {
            let mut out = Vec::new();
            let n = enc.encode_into(f, &mut out).unwrap();
            let (back, used) = decode(&out).unwrap().unwrap();
            assert_eq!((&back, used), (f, n));
        }
        let big = frames.last().unwrap();
        let mut packed = Vec::new();
        enc.encode_into(big, &mut packed).unwrap();
        let plain = encode(big).unwrap();
        assert!(
            packed.len() * 2 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        let raw = postcard::to_allocvec(big).unwrap();
        let lz4 = Bytes::from(lz4_flex::block::compress(&raw));
        let nested_raw = postcard::to_allocvec(&Frame::Packed(Packed {
            raw_len: 3,
            lz4: Bytes::from_static(&[1, 2, 3]),
        }))
        .unwrap();
        for bad in [
            Packed {
                raw_len: raw.len() as u32 + 1,
                lz4: lz4.clone(),
            },
            Packed {
                raw_len: raw.len() as u32,
                lz4: Bytes::from_static(&[0xff; 16]),
            },
            Packed {
                raw_len: MAX_FRAME_BYTES as u32 + 1,
                lz4: lz4.clone(),
            },
            Packed {
                raw_len: nested_raw.len() as u32,
                lz4: Bytes::from(lz4_flex::block::compress(&nested_raw)),
            },
        ] {
            assert!(decode(&encode(&Frame::Packed(bad)).unwrap()).is_err());
        }
    }

    #[test]
    fn rejects_oversized_and_bad_version() {
        let mut b = encode(&sample_frames()[1]).unwrap();
        b[4] = 9;
        assert_eq!(decode(&b), Err(CodecError::Frame(FrameError::Version(9))));
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
        assert!(matches!(
            decode(&huge),
            Err(CodecError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn corrupted_frames_never_panic(which in 0usize..6, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let mut bytes = encode(&sample_frames()[which]).unwrap();
            for (pos, val) in flips {
                let i = pos % bytes.len();
                // Keep the length prefix plausible half of the time so the body is parsed.
                if i >= 4 || val & 1 == 0 { bytes[i] ^= val; }
            }
            let _ = decode(&bytes);
            let cut = cut % (bytes.len() + 1);
            let _ = decode(&bytes[..cut]);
        }
    }
}
