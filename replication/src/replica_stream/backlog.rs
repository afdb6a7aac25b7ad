//! The primary's replication backlog: the newest encoded change frames, bounded in bytes.

use std::collections::VecDeque;

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
    use proptest::prelude::*;

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
