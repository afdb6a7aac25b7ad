//! Redis lists as a sequence CRDT: dense position identifiers, observed-remove elements and
//! an LWW register per element's value.
//!
//! **Identity and order.** Every element is born with a position [`Pos`]: a short sequence of
//! [`Level`]s `(digit, hlc, region)`, compared lexicographically (a prefix sorts first). The
//! last level carries the stamp of the write that created the element, so two elements never
//! share a position, and the list's order is the order of positions — the same total order in
//! every region, whatever order the writes arrive in. `LPUSH` takes the digit before the
//! current head (`head - 1`), `RPUSH` the one after the tail (`tail + 1`), `LINSERT` a digit
//! between the two neighbours (one level deeper when they are adjacent). Concurrent pushes
//! from two regions may pick the same digit: the `(hlc, region)` of the level breaks the tie,
//! so they interleave deterministically (the later write sorts after, at both ends).
//!
//! **Removal** (`LPOP`, `RPOP`, `LREM`, `LTRIM`, the source of `LMOVE`) is an observed remove
//! of element identities: the element becomes a tombstone (position only, no value) and a
//! tombstone wins every merge. An element is never re-added, so there is no add/remove race
//! to arbitrate: two regions popping the same head concurrently both answer it to their
//! client, and the converged list holds it once removed — never duplicated, and no element
//! that was not popped is lost. Tombstones are collected by the keyspace GC once their
//! creation and the removals recorded on the entry are causally stable (as for sets).
//!
//! **`LSET`** is an LWW register on the element's value: the value carries the stamp of the
//! write that set it (the creation stamp until an `LSET`); the greater stamp wins.
//!
//! **Storage.** Elements live in chunks of up to [`CHUNK_ELEMS`] elements / [`CHUNK_BYTES`]
//! bytes, each a byte string encoding its elements relative to the previous one: a flag byte,
//! the digit as a delta (nothing when it is the previous digit + 1, as consecutive pushes
//! make it), the HLC as a zig-zag delta, the region only when it changes, then the value. A
//! pushed small value costs about its length plus 4–6 bytes. Each chunk keeps its element and
//! live counts, so `LINDEX`/`LSET` walk chunks from the nearer end (as Redis' quicklist walks
//! its nodes) and decode within one chunk: element `i` costs O(min(i, n - i) / 32 + 32);
//! pushes and pops at either end touch one chunk, and pushes at one end leave full chunks
//! behind them (about 8.5 bytes per 3-byte element for a 1 M-element list). Popped elements
//! stay as tombstones until GC with peers, and go at once without (single-region mode).
//!
//! The wire form (serde) is the plain element list; decoding validates it and rebuilds the
//! chunks, so a hostile peer's bytes never reach the chunk decoder.

use crate::hlc::{Hlc, RegionId, Stamp};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::collections::VecDeque;

/// Most elements in one chunk.
pub const CHUNK_ELEMS: usize = 32;
/// A chunk whose encoding grows past this many bytes is split.
pub const CHUNK_BYTES: usize = 2048;
/// Valid digits lie strictly between these (room for `head - 1` and `tail + 1` for 2^62
/// pushes; a peer's position outside is refused when decoded).
pub const DIGIT_MIN: i64 = -(1 << 62);
pub const DIGIT_MAX: i64 = 1 << 62;
/// Most levels a position may have (decoded positions beyond are refused).
pub const MAX_LEVELS: usize = 64;

/// One level of a position.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Level {
    pub digit: i64,
    pub hlc: Hlc,
    pub region: RegionId,
}

impl Level {
    const ZERO: Level = Level {
        digit: 0,
        hlc: Hlc(0),
        region: RegionId(0),
    };
}

/// An element's position and identity (lexicographic order; see the module doc).
pub type Pos = SmallVec<[Level; 1]>;

/// The stamp of the write that created the element at `pos`.
pub fn created(pos: &[Level]) -> Stamp {
    pos.last()
        .map_or(Stamp::ZERO, |l| Stamp::new(l.hlc, l.region))
}

/// One element, decoded: its position, and its value with the stamp that set it (`None`: a
/// tombstone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elem {
    pub pos: Pos,
    pub val: Option<(Stamp, Bytes)>,
}

impl Elem {
    pub fn is_alive(&self) -> bool {
        self.val.is_some()
    }
}

// ---- the chunk encoding ----

const F_ALIVE: u8 = 1;
/// The value's stamp is not the creation stamp (an `LSET` happened).
const F_VSTAMP: u8 = 2;
/// Level 0's region is the previous element's.
const F_SAME_REGION: u8 = 4;
/// Level 0's digit is the previous element's + 1.
const F_NEXT_DIGIT: u8 = 8;
/// More levels follow level 0.
const F_MORE: u8 = 16;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], off: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&b) = buf.get(*off) {
        *off += 1;
        if shift < 64 {
            v |= u64::from(b & 0x7f) << shift;
        }
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    v
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_level(out: &mut Vec<u8>, l: &Level) {
    put_varint(out, zigzag(l.digit));
    put_varint(out, l.hlc.0);
    put_varint(out, u64::from(l.region.0));
}

fn get_level(buf: &[u8], off: &mut usize) -> Level {
    let digit = unzigzag(get_varint(buf, off));
    let hlc = Hlc(get_varint(buf, off));
    let region = RegionId(get_varint(buf, off) as u16);
    Level { digit, hlc, region }
}

/// Encode `e` (value bytes `value`) after an element whose level 0 is `prev`.
fn encode(out: &mut Vec<u8>, prev: &Level, pos: &[Level], vstamp: Option<Stamp>, value: &[u8]) {
    let l0 = pos.first().copied().unwrap_or(Level::ZERO);
    let mut flags = 0;
    let own = created(pos);
    let alive = vstamp.is_some();
    if alive {
        flags |= F_ALIVE;
    }
    let vs = vstamp.filter(|s| *s != own);
    if vs.is_some() {
        flags |= F_VSTAMP;
    }
    if l0.region == prev.region {
        flags |= F_SAME_REGION;
    }
    if prev.digit.checked_add(1) == Some(l0.digit) {
        flags |= F_NEXT_DIGIT;
    }
    if pos.len() > 1 {
        flags |= F_MORE;
    }
    out.push(flags);
    if flags & F_NEXT_DIGIT == 0 {
        put_varint(out, zigzag(l0.digit.wrapping_sub(prev.digit)));
    }
    put_varint(out, zigzag(l0.hlc.0.wrapping_sub(prev.hlc.0) as i64));
    if flags & F_SAME_REGION == 0 {
        put_varint(out, u64::from(l0.region.0));
    }
    if pos.len() > 1 {
        put_varint(out, (pos.len() - 1) as u64);
        for l in &pos[1..] {
            put_level(out, l);
        }
    }
    if let Some(s) = vs {
        put_varint(out, s.hlc.0);
        put_varint(out, u64::from(s.region.0));
    }
    if alive {
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// One element as decoded from a chunk: its value is a range of the chunk's bytes.
#[derive(Clone, Debug)]
struct Head {
    pos: Pos,
    /// The value's stamp (`None`: a tombstone).
    vstamp: Option<Stamp>,
    val: std::ops::Range<usize>,
}

impl Head {
    fn l0(&self) -> Level {
        self.pos.first().copied().unwrap_or(Level::ZERO)
    }
}

fn decode(buf: &[u8], off: &mut usize, prev: &Level) -> Head {
    let flags = buf.get(*off).copied().unwrap_or(0);
    *off += 1;
    let digit = if flags & F_NEXT_DIGIT != 0 {
        prev.digit.wrapping_add(1)
    } else {
        prev.digit.wrapping_add(unzigzag(get_varint(buf, off)))
    };
    let hlc = Hlc(prev
        .hlc
        .0
        .wrapping_add(unzigzag(get_varint(buf, off)) as u64));
    let region = if flags & F_SAME_REGION != 0 {
        prev.region
    } else {
        RegionId(get_varint(buf, off) as u16)
    };
    let mut pos: Pos = smallvec::smallvec![Level { digit, hlc, region }];
    if flags & F_MORE != 0 {
        let more = get_varint(buf, off) as usize;
        for _ in 0..more {
            pos.push(get_level(buf, off));
        }
    }
    let vs = if flags & F_VSTAMP != 0 {
        let h = Hlc(get_varint(buf, off));
        let r = RegionId(get_varint(buf, off) as u16);
        Some(Stamp::new(h, r))
    } else {
        None
    };
    let (vstamp, val) = if flags & F_ALIVE != 0 {
        let len = get_varint(buf, off) as usize;
        let start = (*off).min(buf.len());
        let end = start.saturating_add(len).min(buf.len());
        *off = end;
        (Some(vs.unwrap_or_else(|| created(&pos))), start..end)
    } else {
        (None, 0..0)
    };
    Head { pos, vstamp, val }
}

#[derive(Clone, Debug, Default)]
struct Chunk {
    buf: Vec<u8>,
    n: u32,
    live: u32,
    /// Offset of the last element, and its position (appends encode after it).
    last_off: u32,
    tail: Pos,
}

impl Chunk {
    fn bytes(&self) -> usize {
        self.buf.capacity() + std::mem::size_of::<Chunk>()
    }

    fn heads(&self) -> ChunkIter<'_> {
        ChunkIter {
            buf: &self.buf,
            off: 0,
            prev: Level::ZERO,
        }
    }

    fn first_pos(&self) -> Pos {
        let mut off = 0;
        decode(&self.buf, &mut off, &Level::ZERO).pos
    }

    /// Rebuild from elements (heads and their values in `src`).
    fn build<'a>(items: impl Iterator<Item = (Head, &'a [u8])>) -> Chunk {
        let mut c = Chunk::default();
        let mut prev = Level::ZERO;
        for (h, v) in items {
            c.last_off = c.buf.len() as u32;
            encode(&mut c.buf, &prev, &h.pos, h.vstamp, v);
            prev = h.l0();
            c.n += 1;
            c.live += u32::from(h.vstamp.is_some());
            c.tail = h.pos;
        }
        c
    }

    /// Append an element known to sort after the tail.
    fn append(&mut self, pos: &[Level], vstamp: Option<Stamp>, value: &[u8]) {
        let prev = if self.n == 0 {
            Level::ZERO
        } else {
            self.tail.first().copied().unwrap_or(Level::ZERO)
        };
        self.last_off = self.buf.len() as u32;
        encode(&mut self.buf, &prev, pos, vstamp, value);
        self.n += 1;
        self.live += u32::from(vstamp.is_some());
        self.tail = Pos::from_slice(pos);
    }

    /// Replace elements `[at, at + remove)` with `insert` (in order), re-encoding the element
    /// after them relative to the new previous one. One pass over the elements up to the
    /// edit.
    fn splice(&mut self, at: usize, remove: usize, insert: &[(&[Level], Option<Stamp>, &[u8])]) {
        let mut off = 0;
        let mut prev = Level::ZERO;
        // The element before `at`: its offset and position (the tail if all after it go).
        let mut before: Option<(usize, Pos)> = None;
        for _ in 0..at {
            let o = off;
            let h = decode(&self.buf, &mut off, &prev);
            prev = h.l0();
            before = Some((o, h.pos));
        }
        let (start, prev_at) = (off, prev);
        let mut removed_live = 0;
        let mut removed_pos = None;
        for _ in 0..remove {
            let h = decode(&self.buf, &mut off, &prev);
            removed_live += u32::from(h.vstamp.is_some());
            prev = h.l0();
            removed_pos = Some(h.pos);
        }
        let inserted_live = insert.iter().filter(|x| x.1.is_some()).count() as u32;
        if let ([(pos, vs, v)], Some(old)) = (insert, &removed_pos) {
            if remove == 1 && *pos == old.as_slice() {
                // The same element rewritten (killed, or a new value): the next one's
                // encoding, relative to this one's position, stands.
                let mut out = Vec::with_capacity(16 + v.len());
                encode(&mut out, &prev_at, pos, *vs, v);
                let grow = out.len() as isize - (off - start) as isize;
                self.buf.splice(start..off, out);
                self.live = self.live + inserted_live - removed_live;
                if self.last_off as usize > start {
                    self.last_off = (self.last_off as isize + grow) as u32;
                }
                return;
            }
        }
        // The element after the replaced ones, re-encoded.
        let (next, end) = if at + remove < self.n as usize {
            let mut o = off;
            let h = decode(&self.buf, &mut o, &prev);
            (Some(h), o)
        } else {
            (None, off)
        };
        let mut prev = prev_at;
        let mut out = Vec::with_capacity(32);
        let mut new_last = None;
        for (pos, vs, v) in insert {
            if next.is_none() {
                new_last = Some((start + out.len(), Pos::from_slice(pos)));
            }
            encode(&mut out, &prev, pos, *vs, v);
            prev = pos.first().copied().unwrap_or(Level::ZERO);
        }
        let next_at = start + out.len();
        if let Some(h) = &next {
            let v = self.buf[h.val.clone()].to_vec();
            encode(&mut out, &prev, &h.pos, h.vstamp, &v);
        }
        let grow = out.len() as isize - (end - start) as isize;
        let tail_moved = end == self.buf.len();
        self.buf.splice(start..end, out);
        self.n = self.n + insert.len() as u32 - remove as u32;
        self.live = self.live + inserted_live - removed_live;
        if self.n == 0 {
            self.last_off = 0;
            self.tail = Pos::new();
        } else if next.is_some() && tail_moved {
            // The re-encoded next element was the last one.
            self.last_off = next_at as u32;
        } else if let Some((o, p)) = new_last {
            self.last_off = o as u32;
            self.tail = p;
        } else if next.is_none() {
            // Removed the tail without inserting: the element before is the last now.
            if let Some((o, p)) = before {
                self.last_off = o as u32;
                self.tail = p;
            }
        } else {
            self.last_off = (self.last_off as isize + grow) as u32;
        }
    }

    /// Rewrite the element at `at` (ending at `end`, alive if `was_alive`) in place with
    /// the same position: its neighbours' encodings stand.
    fn rewrite(
        &mut self,
        at: &At,
        end: usize,
        pos: &[Level],
        was_alive: bool,
        vs: Option<Stamp>,
        v: &[u8],
    ) {
        let mut out = Vec::with_capacity(16 + v.len());
        encode(&mut out, &at.prev, pos, vs, v);
        let grow = out.len() as isize - (end - at.off) as isize;
        self.buf.splice(at.off..end, out);
        self.live = self.live + u32::from(vs.is_some()) - u32::from(was_alive);
        if self.last_off as usize > at.off {
            self.last_off = (self.last_off as isize + grow) as u32;
        }
    }

    /// Drop the last element if it is a tombstone.
    fn drop_last_if_dead(&mut self) {
        let mut it = self.heads();
        let mut before: Option<(usize, Pos)> = None;
        let mut last = None;
        loop {
            let at = it.off;
            let Some((h, _)) = it.next() else { break };
            if let Some(l) = last.replace((at, h)) {
                before = Some((l.0, l.1.pos));
            }
        }
        let Some((at, h)) = last else { return };
        if h.vstamp.is_some() {
            return;
        }
        self.buf.truncate(at);
        self.n -= 1;
        match before {
            Some((o, p)) => {
                self.last_off = o as u32;
                self.tail = p;
            }
            None => {
                self.last_off = 0;
                self.tail = Pos::new();
            }
        }
    }

    fn shrink(&mut self) {
        if self.buf.capacity() > self.buf.len() + self.buf.len() / 2 + 64 {
            self.buf.shrink_to_fit();
        }
    }
}

struct ChunkIter<'a> {
    buf: &'a [u8],
    off: usize,
    prev: Level,
}

impl<'a> Iterator for ChunkIter<'a> {
    type Item = (Head, &'a [u8]);
    fn next(&mut self) -> Option<(Head, &'a [u8])> {
        if self.off >= self.buf.len() {
            return None;
        }
        let h = decode(self.buf, &mut self.off, &self.prev);
        self.prev = h.l0();
        let v = &self.buf[h.val.clone()];
        Some((h, v))
    }
}

/// A Redis list as a sequence CRDT (see the module doc).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(into = "Vec<Elem>", try_from = "Vec<Elem>")]
pub struct List {
    /// In position order. A deque: pushes at the head split the first chunk, and the new
    /// chunk goes in without moving the others.
    chunks: VecDeque<Chunk>,
    /// Live elements.
    live: usize,
    /// All elements, tombstones included.
    total: usize,
    /// Bytes held (chunks and their table), kept current.
    bytes: usize,
}

impl Clone for List {
    /// A clone's buffers are sized to their contents: its byte count is its own.
    fn clone(&self) -> List {
        let chunks: VecDeque<Chunk> = self.chunks.clone();
        List {
            bytes: chunks.iter().map(Chunk::bytes).sum(),
            chunks,
            live: self.live,
            total: self.total,
        }
    }
}

impl PartialEq for List {
    fn eq(&self, other: &List) -> bool {
        self.total == other.total && self.raw().eq(other.raw())
    }
}
impl Eq for List {}

impl From<List> for Vec<Elem> {
    fn from(l: List) -> Vec<Elem> {
        l.raw().collect()
    }
}

impl TryFrom<Vec<Elem>> for List {
    type Error = &'static str;
    fn try_from(mut v: Vec<Elem>) -> Result<List, &'static str> {
        for e in &v {
            if e.pos.is_empty() || e.pos.len() > MAX_LEVELS {
                return Err("list element position of no or too many levels");
            }
            if e.pos
                .iter()
                .any(|l| l.digit <= DIGIT_MIN || l.digit >= DIGIT_MAX)
            {
                return Err("list element digit out of range");
            }
        }
        v.sort_by(|a, b| a.pos.cmp(&b.pos));
        let mut l = List::default();
        for e in &v {
            l.merge_elem(e);
        }
        Ok(l)
    }
}

/// Where a chunk grows (see [`List::edit_at`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Edge {
    Front,
    Back,
    Middle,
}

/// Where an element sits: chunk and index in it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct At {
    chunk: usize,
    idx: usize,
    /// Where the element's encoding starts, and level 0 of the one before it.
    off: usize,
    prev: Level,
}

impl List {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Elements held, tombstones included.
    pub fn element_count(&self) -> usize {
        self.total
    }

    pub fn heap_bytes(&self) -> usize {
        self.bytes
    }

    /// Every element in order, tombstones included (deltas, anti-entropy, the wire form).
    pub fn raw(&self) -> impl Iterator<Item = Elem> + '_ {
        self.chunks.iter().flat_map(|c| {
            c.heads().map(|(h, v)| Elem {
                val: h.vstamp.map(|s| (s, Bytes::copy_from_slice(v))),
                pos: h.pos,
            })
        })
    }

    /// The live values from index `start` on (in order).
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &[u8]> + '_ {
        let at = self.locate(start);
        let (c0, i0) = at.map_or((self.chunks.len(), 0), |a| (a.chunk, a.idx));
        self.chunks
            .iter()
            .enumerate()
            .skip(c0)
            .flat_map(move |(ci, c)| {
                let skip = if ci == c0 { i0 } else { 0 };
                c.heads().skip(skip)
            })
            .filter(|(h, _)| h.vstamp.is_some())
            .map(|(_, v)| v)
    }

    /// The live values, in order.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.iter_from(0)
    }

    /// The live values from the tail backwards, starting `from_end` elements before it.
    pub fn values_rev(&self, from_end: usize) -> impl Iterator<Item = &[u8]> + '_ {
        let mut skip = from_end;
        self.chunks.iter().rev().flat_map(move |c| {
            let live = c.live as usize;
            if skip >= live {
                skip -= live;
                return Vec::new().into_iter();
            }
            let mut v: Vec<&[u8]> = c
                .heads()
                .filter(|(h, _)| h.vstamp.is_some())
                .map(|(_, v)| v)
                .collect();
            v.reverse();
            let s = std::mem::take(&mut skip);
            v.drain(..s);
            v.into_iter()
        })
    }

    /// The chunk and in-chunk index (counting tombstones) of live element `index`, walking
    /// chunks from the nearer end.
    fn locate(&self, index: usize) -> Option<At> {
        if index >= self.live {
            return None;
        }
        let (chunk, mut k) = if index < self.live / 2 {
            let mut k = index;
            let mut ci = 0;
            loop {
                let live = self.chunks[ci].live as usize;
                if k < live {
                    break (ci, k);
                }
                k -= live;
                ci += 1;
            }
        } else {
            let mut k = self.live - 1 - index;
            let mut ci = self.chunks.len() - 1;
            loop {
                let live = self.chunks[ci].live as usize;
                if k < live {
                    break (ci, live - 1 - k);
                }
                k -= live;
                ci -= 1;
            }
        };
        let mut it = self.chunks[chunk].heads();
        let mut idx = 0;
        loop {
            let (off, prev) = (it.off, it.prev);
            let (h, _) = it.next()?;
            if h.vstamp.is_some() {
                if k == 0 {
                    return Some(At {
                        chunk,
                        idx,
                        off,
                        prev,
                    });
                }
                k -= 1;
            }
            idx += 1;
        }
    }

    /// The located element, decoded, and where its encoding ends.
    fn decode_at(&self, at: &At) -> (Head, usize) {
        let mut o = at.off;
        let h = decode(&self.chunks[at.chunk].buf, &mut o, &at.prev);
        (h, o)
    }

    fn head_at(&self, at: At) -> (Head, &[u8]) {
        match self.chunks[at.chunk].heads().nth(at.idx) {
            Some(x) => x,
            None => unreachable!("located elements exist"),
        }
    }

    /// Live element `index` (0 = head).
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let at = self.locate(index)?;
        Some(self.head_at(at).1)
    }

    /// Position of live element `index`.
    pub fn pos_at(&self, index: usize) -> Option<Pos> {
        let at = self.locate(index)?;
        Some(self.head_at(at).0.pos)
    }

    /// Index of the chunk where `pos` belongs (the last chunk whose first element ≤ `pos`).
    fn chunk_for(&self, pos: &[Level]) -> usize {
        if self.chunks.len() <= 1 {
            return 0;
        }
        // The first and last chunks are the common targets (pushes).
        if pos < self.chunks[0].first_pos().as_slice() {
            return 0;
        }
        let last = self.chunks.len() - 1;
        if self.chunks[last].first_pos().as_slice() <= pos {
            return last;
        }
        let (mut lo, mut hi) = (0, last);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.chunks[mid].first_pos().as_slice() <= pos {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    fn edit<R>(&mut self, ci: usize, f: impl FnOnce(&mut Chunk) -> R) -> R {
        self.edit_at(ci, Edge::Middle, f)
    }

    /// [`List::edit`] of a chunk that grows at `edge`: a split there leaves the full part
    /// full (pushes at one end fill chunks rather than leave them half empty).
    fn edit_at<R>(&mut self, ci: usize, edge: Edge, f: impl FnOnce(&mut Chunk) -> R) -> R {
        let c = &mut self.chunks[ci];
        let before = c.bytes();
        let (n0, l0) = (c.n, c.live);
        let r = f(c);
        let after = c.bytes();
        self.bytes = self.bytes + after - before;
        self.total = self.total + c.n as usize - n0 as usize;
        self.live = self.live + c.live as usize - l0 as usize;
        if c.n == 0 {
            self.bytes -= c.bytes();
            self.chunks.remove(ci);
        } else if c.n > 1 && (c.n as usize > CHUNK_ELEMS || c.buf.len() > CHUNK_BYTES) {
            self.split(ci, edge);
        }
        r
    }

    fn split(&mut self, ci: usize, edge: Edge) {
        let c = &self.chunks[ci];
        let n = c.n as usize;
        let at = match edge {
            Edge::Front => 1,
            Edge::Back => n - 1,
            Edge::Middle => n / 2,
        };
        let items: Vec<(Head, &[u8])> = c.heads().collect();
        let mut a = Chunk::build(items[..at].iter().map(|(h, v)| (h.clone(), *v)));
        let mut b = Chunk::build(items[at..].iter().map(|(h, v)| (h.clone(), *v)));
        // The part that will not grow again gives back its spare room.
        match edge {
            Edge::Back => a.buf.shrink_to_fit(),
            Edge::Front => b.buf.shrink_to_fit(),
            Edge::Middle => {}
        }
        let old = c.bytes();
        self.bytes = self.bytes - old + a.bytes() + b.bytes();
        self.chunks[ci] = a;
        self.chunks.insert(ci + 1, b);
    }

    /// Merge one element (a delta's or a peer's). Returns whether anything changed.
    pub fn merge_elem(&mut self, e: &Elem) -> bool {
        let vstamp = e.val.as_ref().map(|v| v.0);
        let value: &[u8] = e.val.as_ref().map_or(&[], |v| &v.1);
        if self.chunks.is_empty() {
            self.chunks.push_back(Chunk::default());
            self.bytes += std::mem::size_of::<Chunk>();
        }
        let ci = self.chunk_for(&e.pos);
        // Fast path: after the tail of the chunk.
        {
            let c = &self.chunks[ci];
            if c.n == 0 || c.tail.as_slice() < e.pos.as_slice() {
                let edge = if ci + 1 == self.chunks.len() {
                    Edge::Back
                } else {
                    Edge::Middle
                };
                self.edit_at(ci, edge, |c| c.append(&e.pos, vstamp, value));
                return true;
            }
        }
        let mut found = None;
        for (i, (h, v)) in self.chunks[ci].heads().enumerate() {
            match h.pos.as_slice().cmp(e.pos.as_slice()) {
                Ordering::Less => continue,
                Ordering::Equal => {
                    found = Some((i, Some((h.vstamp, v.to_vec()))));
                    break;
                }
                Ordering::Greater => {
                    found = Some((i, None));
                    break;
                }
            }
        }
        let Some((i, existing)) = found else {
            self.edit(ci, |c| c.append(&e.pos, vstamp, value));
            return true;
        };
        match existing {
            None => {
                let edge = if ci == 0 && i == 0 {
                    Edge::Front
                } else {
                    Edge::Middle
                };
                self.edit_at(ci, edge, |c| c.splice(i, 0, &[(&e.pos, vstamp, value)]));
                true
            }
            Some((None, _)) => false,
            Some((Some(mine), old)) => match vstamp {
                None => {
                    self.edit(ci, |c| c.splice(i, 1, &[(&e.pos, None, &[])]));
                    true
                }
                Some(theirs) if theirs > mine => {
                    self.edit(ci, |c| c.splice(i, 1, &[(&e.pos, Some(theirs), value)]));
                    true
                }
                Some(_) => {
                    drop(old);
                    false
                }
            },
        }
    }

    pub fn merge(&mut self, other: &List) -> bool {
        let mut changed = false;
        for e in other.raw() {
            changed |= self.merge_elem(&e);
        }
        changed
    }

    /// A position between `lo` and `hi` (either open), for a write stamped `me`; `None` when
    /// the digit space there is exhausted (only reachable with hostile positions).
    pub fn between(lo: Option<&[Level]>, hi: Option<&[Level]>, me: Stamp) -> Option<Pos> {
        let mut out = Pos::new();
        // `out` always copies `lo`'s levels, so `lo` bounds every level; `hi` only while
        // `out` equals its prefix.
        let mut hi_active = hi.is_some();
        for i in 0..=MAX_LEVELS {
            let l = lo.and_then(|p| p.get(i));
            let h = if hi_active {
                hi.and_then(|p| p.get(i))
            } else {
                None
            };
            if hi_active && h.is_none() {
                return None;
            }
            let a = l.map_or(i128::from(DIGIT_MIN), |l| i128::from(l.digit));
            let b = h.map_or(i128::from(DIGIT_MAX), |h| i128::from(h.digit));
            if b - a > 1 {
                let d = match (l, h) {
                    (Some(_), None) => a + 1,
                    (None, Some(_)) => b - 1,
                    (None, None) => 0,
                    (Some(_), Some(_)) => a + (b - a) / 2,
                };
                out.push(Level {
                    digit: d as i64,
                    hlc: me.hlc,
                    region: me.region,
                });
                return Some(out);
            }
            let l = *l?;
            out.push(l);
            hi_active = h.is_some_and(|h| *h == l);
        }
        None
    }

    /// `LPUSH`/`RPUSH` of `values` (in argument order) by a write stamped `stamp`. Returns
    /// the delta, or `None` when no position is left (see [`List::between`]).
    pub fn push(&mut self, front: bool, stamp: Stamp, values: &[&[u8]]) -> Option<List> {
        let mut delta = List::default();
        let mut positions = Vec::with_capacity(values.len());
        let mut edge = if front {
            self.first_pos()
        } else {
            self.last_pos()
        };
        for _ in values {
            let p = if front {
                List::between(None, edge.as_deref(), stamp)?
            } else {
                List::between(edge.as_deref(), None, stamp)?
            };
            edge = Some(p.clone());
            positions.push(p);
        }
        for (p, v) in positions.iter().zip(values) {
            let e = Elem {
                pos: p.clone(),
                val: Some((stamp, Bytes::copy_from_slice(v))),
            };
            self.merge_elem(&e);
            delta.merge_elem(&e);
        }
        Some(delta)
    }

    /// The first element's position, tombstones included (a push before it sorts first).
    fn first_pos(&self) -> Option<Pos> {
        self.chunks.front().map(Chunk::first_pos)
    }

    fn last_pos(&self) -> Option<Pos> {
        self.chunks.back().map(|c| c.tail.clone())
    }

    /// `LINSERT`: a new element right before (`before`) or after live element `index`.
    pub fn insert_at(
        &mut self,
        index: usize,
        before: bool,
        stamp: Stamp,
        value: &[u8],
    ) -> Option<List> {
        let at = self.pos_at(index)?;
        let (lo, hi) = if before {
            let lo = index.checked_sub(1).and_then(|i| self.pos_at(i));
            (lo, Some(at))
        } else {
            (Some(at), self.pos_at(index + 1))
        };
        let p = List::between(lo.as_deref(), hi.as_deref(), stamp)?;
        let e = Elem {
            pos: p,
            val: Some((stamp, Bytes::copy_from_slice(value))),
        };
        self.merge_elem(&e);
        let mut delta = List::default();
        delta.merge_elem(&e);
        Some(delta)
    }

    /// Kill live element `index`; returns its value and its tombstone.
    pub fn kill_at(&mut self, index: usize) -> Option<(Bytes, Elem)> {
        let at = self.locate(index)?;
        let (h, end) = self.decode_at(&at);
        let value = Bytes::copy_from_slice(&self.chunks[at.chunk].buf[h.val.clone()]);
        let pos = h.pos;
        self.edit(at.chunk, |c| c.rewrite(&at, end, &pos, true, None, &[]));
        Some((value, Elem { pos, val: None }))
    }

    /// Kill `n` live elements from live index `start` on (one pass over the chunks they
    /// span); returns their values in list order, and their tombstones (the delta).
    pub fn kill_range(&mut self, start: usize, n: usize) -> (Vec<Bytes>, List) {
        let mut vals = Vec::with_capacity(n.min(self.live));
        let mut delta = List::default();
        if n == 1 {
            if let Some((v, t)) = self.kill_at(start) {
                vals.push(v);
                delta.merge_elem(&t);
            }
            return (vals, delta);
        }
        let Some(at) = self.locate(start) else {
            return (vals, delta);
        };
        let (mut ci, mut from) = (at.chunk, at.idx);
        let mut left = n;
        while left > 0 && ci < self.chunks.len() {
            let c = &self.chunks[ci];
            let nc = Chunk::build(c.heads().enumerate().map(|(i, (mut h, v))| {
                if i >= from && left > 0 && h.vstamp.is_some() {
                    vals.push(Bytes::copy_from_slice(v));
                    delta.append_sorted(&h.pos, None, &[]);
                    h.vstamp = None;
                    left -= 1;
                    (h, &[][..])
                } else {
                    (h, v)
                }
            }));
            let (old, killed) = (c.bytes(), c.live - nc.live);
            self.bytes = self.bytes - old + nc.bytes();
            self.live -= killed as usize;
            self.chunks[ci] = nc;
            from = 0;
            ci += 1;
        }
        (vals, delta)
    }

    /// `LREM`: kill up to `limit` live elements equal to `value`, the first ones from the
    /// head (or from the tail), in one pass over the chunks; returns the tombstones (the
    /// delta).
    pub fn kill_matching(&mut self, value: &[u8], limit: usize, from_tail: bool) -> List {
        let mut killed: Vec<Pos> = Vec::new();
        let order: Vec<usize> = if from_tail {
            (0..self.chunks.len()).rev().collect()
        } else {
            (0..self.chunks.len()).collect()
        };
        for ci in order {
            if killed.len() >= limit {
                break;
            }
            let c = &self.chunks[ci];
            let items: Vec<(Head, &[u8])> = c.heads().collect();
            let mut hit = vec![false; items.len()];
            let idx: Vec<usize> = if from_tail {
                (0..items.len()).rev().collect()
            } else {
                (0..items.len()).collect()
            };
            let before = killed.len();
            for i in idx {
                if killed.len() >= limit {
                    break;
                }
                if items[i].0.vstamp.is_some() && items[i].1 == value {
                    hit[i] = true;
                    killed.push(items[i].0.pos.clone());
                }
            }
            if killed.len() == before {
                continue;
            }
            let nc = Chunk::build(items.into_iter().zip(hit).map(|((mut h, v), dead)| {
                if dead {
                    h.vstamp = None;
                    (h, &[][..])
                } else {
                    (h, v)
                }
            }));
            let (old, gone) = (c.bytes(), c.live - nc.live);
            self.bytes = self.bytes - old + nc.bytes();
            self.live -= gone as usize;
            self.chunks[ci] = nc;
        }
        killed.sort();
        let mut delta = List::default();
        for p in &killed {
            delta.append_sorted(p, None, &[]);
        }
        delta
    }

    /// `LSET`: live element `index` takes `value` under `stamp`; returns the delta element.
    pub fn set_at(&mut self, index: usize, stamp: Stamp, value: &[u8]) -> Option<Elem> {
        let at = self.locate(index)?;
        let (h, end) = self.decode_at(&at);
        let pos = h.pos;
        self.edit(at.chunk, |c| {
            c.rewrite(&at, end, &pos, true, Some(stamp), value)
        });
        Some(Elem {
            pos,
            val: Some((stamp, Bytes::copy_from_slice(value))),
        })
    }

    /// Observed remove of every element; returns the tombstones (the delta).
    pub fn kill_all(&mut self) -> List {
        let mut delta = List::default();
        let mut chunks = VecDeque::with_capacity(self.chunks.len());
        let mut bytes = 0;
        for c in std::mem::take(&mut self.chunks) {
            if c.live == 0 {
                bytes += c.bytes();
                chunks.push_back(c);
                continue;
            }
            let nc = Chunk::build(c.heads().map(|(mut h, _)| {
                if h.vstamp.is_some() {
                    delta.append_sorted(&h.pos, None, &[]);
                }
                h.vstamp = None;
                (h, &[][..])
            }));
            bytes += nc.bytes();
            chunks.push_back(nc);
        }
        self.chunks = chunks;
        self.bytes = bytes;
        self.live = 0;
        delta
    }

    /// Append an element sorting after everything here (building a list in order).
    fn append_sorted(&mut self, pos: &[Level], vstamp: Option<Stamp>, value: &[u8]) {
        if self.chunks.is_empty() {
            self.chunks.push_back(Chunk::default());
            self.bytes += std::mem::size_of::<Chunk>();
        }
        let last = self.chunks.len() - 1;
        self.edit_at(last, Edge::Back, |c| c.append(pos, vstamp, value));
    }

    /// Physically drop the tombstone at `pos` (single-region mode keeps none).
    pub fn forget_if_dead(&mut self, pos: &[Level]) {
        if self.chunks.is_empty() {
            return;
        }
        let last = self.chunks.len() - 1;
        if self.chunks[last].tail.as_slice() == pos {
            // The tail (an RPOP in single-region mode): one walk of its chunk.
            self.edit(last, Chunk::drop_last_if_dead);
            return;
        }
        let ci = self.chunk_for(pos);
        let found = self.chunks[ci]
            .heads()
            .position(|(h, _)| h.pos.as_slice() == pos && h.vstamp.is_none());
        if let Some(i) = found {
            self.edit(ci, |c| c.splice(i, 1, &[]));
        }
    }

    /// Drop tombstones whose creation every region has seen (`drop_dead`: every one).
    pub fn gc(&mut self, stable: &impl Fn(RegionId) -> Hlc, drop_dead: bool) {
        if self.total == self.live {
            return;
        }
        let mut chunks = VecDeque::with_capacity(self.chunks.len());
        let mut total = 0;
        for c in std::mem::take(&mut self.chunks) {
            if c.live == c.n {
                total += c.n as usize;
                chunks.push_back(c);
                continue;
            }
            let nc = Chunk::build(c.heads().filter(|(h, _)| {
                let s = created(&h.pos);
                h.vstamp.is_some() || !(drop_dead || s.hlc <= stable(s.region))
            }));
            if nc.n > 0 {
                total += nc.n as usize;
                chunks.push_back(nc);
            }
        }
        self.chunks = chunks;
        self.total = total;
        for c in &mut self.chunks {
            c.shrink();
        }
        self.bytes = self.chunks.iter().map(Chunk::bytes).sum();
    }

    /// Every stamp in the list (creations and value stamps), for stability checks.
    pub fn stamps(&self) -> impl Iterator<Item = Stamp> + '_ {
        self.raw().flat_map(|e| {
            let c = created(&e.pos);
            let v = e.val.as_ref().map_or(c, |v| v.0);
            [c, v]
        })
    }

    pub fn max_hlc(&self) -> Hlc {
        self.raw()
            .flat_map(|e| {
                let v = e.val.as_ref().map_or(Hlc::ZERO, |v| v.0.hlc);
                e.pos.iter().map(|l| l.hlc).chain(std::iter::once(v)).max()
            })
            .max()
            .unwrap_or(Hlc::ZERO)
    }

    pub(crate) fn digest(&self, h: u64) -> u64 {
        let mut acc = h;
        for e in self.raw() {
            let Some((s, v)) = &e.val else { continue };
            for l in &e.pos {
                acc = crate::digest::mix(acc, l.digit as u64);
                acc = crate::digest::mix(acc, l.hlc.0);
                acc = crate::digest::mix(acc, u64::from(l.region.0));
            }
            acc = crate::digest::mix(acc, s.hlc.0);
            acc = crate::digest::mix(acc, u64::from(s.region.0));
            acc = crate::digest::mix_bytes(acc, v);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn st(h: u64, r: u16) -> Stamp {
        Stamp::new(Hlc(h), RegionId(r))
    }

    fn vals(l: &List) -> Vec<String> {
        l.values()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    fn b(s: &str) -> &[u8] {
        s.as_bytes()
    }

    /// Counters and the chunk caches agree with a rebuild from the raw elements.
    fn check(l: &List) {
        let raw: Vec<Elem> = l.raw().collect();
        assert_eq!(raw.len(), l.element_count());
        assert_eq!(raw.iter().filter(|e| e.is_alive()).count(), l.len());
        assert!(
            raw.windows(2).all(|w| w[0].pos < w[1].pos),
            "sorted, distinct"
        );
        for c in &l.chunks {
            let mut last = None;
            let mut it = c.heads();
            loop {
                let at = it.off;
                match it.next() {
                    Some((h, _)) => last = Some((at, h.pos)),
                    None => break,
                }
            }
            let (off, pos) = last.expect("no empty chunk");
            assert_eq!(off as u32, c.last_off);
            assert_eq!(pos, c.tail);
            assert!(c.n as usize <= CHUNK_ELEMS);
        }
        assert_eq!(
            l.bytes,
            l.chunks.iter().map(Chunk::bytes).sum::<usize>(),
            "bytes"
        );
        for (i, v) in l.values().enumerate() {
            assert_eq!(l.get(i), Some(v));
        }
        let rebuilt = List::try_from(raw).expect("valid");
        assert_eq!(&rebuilt, l);
    }

    #[test]
    fn pushes_pops_and_index() {
        let mut l = List::default();
        let mut h = 1;
        for i in 0..200 {
            h += 1;
            let v = format!("v{i}");
            if i % 2 == 0 {
                l.push(false, st(h, 1), &[v.as_bytes()]).unwrap();
            } else {
                l.push(true, st(h, 1), &[v.as_bytes()]).unwrap();
            }
        }
        check(&l);
        assert_eq!(l.len(), 200);
        assert_eq!(l.get(0), Some(b("v199")));
        assert_eq!(l.get(199), Some(b("v198")));
        let (v, _) = l.kill_at(0).unwrap();
        assert_eq!(v, "v199");
        let (v, _) = l.kill_at(l.len() - 1).unwrap();
        assert_eq!(v, "v198");
        check(&l);
        h += 1;
        l.set_at(10, st(h, 1), b("ten")).unwrap();
        assert_eq!(l.get(10), Some(b("ten")));
        h += 1;
        l.insert_at(10, true, st(h, 1), b("before-ten")).unwrap();
        assert_eq!(l.get(10), Some(b("before-ten")));
        assert_eq!(l.get(11), Some(b("ten")));
        check(&l);
        l.gc(&|_| Hlc(u64::MAX), true);
        assert_eq!(l.element_count(), l.len());
        check(&l);
        // Single-region mode drops a tombstone right away: at the tail, the head, inside.
        for i in [usize::MAX, 0, 7, usize::MAX] {
            let i = i.min(l.len() - 1);
            let want: Vec<Vec<u8>> = l
                .values()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, v)| v.to_vec())
                .collect();
            let (_, t) = l.kill_at(i).unwrap();
            l.forget_if_dead(&t.pos);
            check(&l);
            assert_eq!(l.element_count(), l.len());
            assert_eq!(l.values().map(<[u8]>::to_vec).collect::<Vec<_>>(), want);
        }
        let d = l.kill_matching(b"v5", 1, true);
        assert_eq!(d.element_count(), 1);
        assert_eq!(l.len(), 194);
        check(&l);
        let (v, d) = l.kill_range(5, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(d.element_count(), 100);
        assert_eq!(l.len(), 94);
        check(&l);
        check(&d);
        let d = l.kill_all();
        assert_eq!(d.element_count(), 94);
        assert!(l.is_empty());
        check(&l);
    }

    #[test]
    fn values_larger_than_a_chunk_keep_one_chunk_each() {
        let mut l = List::default();
        let big = vec![b'x'; CHUNK_BYTES * 2];
        for i in 0..6u64 {
            l.push(i % 2 == 0, st(i + 1, 1), &[&big]).unwrap();
            check(&l);
        }
        l.insert_at(3, true, st(10, 1), &big).unwrap();
        check(&l);
        assert_eq!(l.len(), 7);
    }

    #[test]
    fn pushes_at_one_end_fill_their_chunks() {
        let mut l = List::default();
        for i in 0..(CHUNK_ELEMS as u64 * 10) {
            l.push(false, st(i + 1, 1), &[b"v"]).unwrap();
        }
        assert_eq!(l.chunks.len(), 10);
        let mut f = List::default();
        for i in 0..(CHUNK_ELEMS as u64 * 10) {
            f.push(true, st(i + 1, 1), &[b"v"]).unwrap();
        }
        assert_eq!(f.chunks.len(), 10);
        check(&l);
        check(&f);
    }

    #[test]
    fn many_inserts_at_one_spot_stay_ordered() {
        let mut l = List::default();
        l.push(false, st(1, 1), &[b("a"), b("z")]).unwrap();
        for i in 0..300u64 {
            l.insert_at(1, true, st(10 + i, 1), format!("{i}").as_bytes())
                .unwrap();
        }
        check(&l);
        assert_eq!(l.get(0), Some(b("a")));
        assert_eq!(
            l.get(1),
            Some(b("299")),
            "each insert goes before the last one"
        );
        assert_eq!(l.get(300), Some(b("0")));
        assert_eq!(l.get(301), Some(b("z")));
    }

    #[test]
    fn concurrent_pushes_interleave_the_same_everywhere() {
        let mut a = List::default();
        a.push(false, st(1, 1), &[b("x")]).unwrap();
        let mut b_ = a.clone();
        let da = a.push(false, st(5, 1), &[b("a1"), b("a2")]).unwrap();
        let db = b_.push(false, st(6, 2), &[b("b1")]).unwrap();
        let da2 = a.push(true, st(7, 1), &[b("ah")]).unwrap();
        let db2 = b_.push(true, st(8, 2), &[b("bh")]).unwrap();
        a.merge(&db);
        a.merge(&db2);
        b_.merge(&da);
        b_.merge(&da2);
        assert_eq!(vals(&a), vals(&b_));
        assert_eq!(a, b_);
        check(&a);
    }

    #[test]
    fn concurrent_pops_of_one_element_remove_it_once() {
        let mut a = List::default();
        a.push(false, st(1, 1), &[b("x"), b("y")]).unwrap();
        let mut b_ = a.clone();
        let (va, ta) = a.kill_at(0).unwrap();
        let (vb, tb) = b_.kill_at(0).unwrap();
        assert_eq!(va, vb, "both clients get the head");
        a.merge_elem(&tb);
        b_.merge_elem(&ta);
        assert_eq!(vals(&a), vec!["y"]);
        assert_eq!(a, b_);
    }

    #[test]
    fn lset_is_last_writer_wins_and_remove_wins_over_lset() {
        let mut a = List::default();
        a.push(false, st(1, 1), &[b("x")]).unwrap();
        let mut b_ = a.clone();
        let sa = a.set_at(0, st(5, 1), b("A")).unwrap();
        let sb = b_.set_at(0, st(6, 2), b("B")).unwrap();
        a.merge_elem(&sb);
        b_.merge_elem(&sa);
        assert_eq!(vals(&a), vec!["B"]);
        assert_eq!(a, b_);
        let (_, t) = a.kill_at(0).unwrap();
        let s = b_.set_at(0, st(9, 2), b("C")).unwrap();
        a.merge_elem(&s);
        b_.merge_elem(&t);
        assert!(a.is_empty() && b_.is_empty());
        assert_eq!(a, b_);
    }

    #[test]
    fn hostile_positions_are_refused_or_answered_without_a_panic() {
        let bad = vec![Elem {
            pos: smallvec::smallvec![Level {
                digit: i64::MIN,
                hlc: Hlc(1),
                region: RegionId(1)
            }],
            val: Some((st(1, 1), Bytes::from_static(b"x"))),
        }];
        assert!(List::try_from(bad).is_err());
        let edge = vec![Elem {
            pos: smallvec::smallvec![Level {
                digit: DIGIT_MIN + 1,
                hlc: Hlc(1),
                region: RegionId(1)
            }],
            val: Some((st(1, 1), Bytes::from_static(b"x"))),
        }];
        let mut l = List::try_from(edge).unwrap();
        assert!(l.push(true, st(2, 1), &[b("y")]).is_none());
        assert!(l.push(false, st(3, 1), &[b("y")]).is_some());
        assert!(l.insert_at(0, false, st(4, 1), b("z")).is_some());
        check(&l);
    }

    #[test]
    fn wire_form_round_trips() {
        let mut l = List::default();
        for i in 0..100u64 {
            l.push(
                i % 3 == 0,
                st(i + 1, (i % 2) as u16),
                &[format!("{i}").as_bytes()],
            )
            .unwrap();
        }
        l.kill_at(5).unwrap();
        let bytes = postcard::to_allocvec(&l).unwrap();
        let back: List = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, l);
        check(&back);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(bool, u8),
        Pop(bool),
        Insert(u8, bool),
        Set(u8),
        Kill(u8),
        Rem(u8, bool),
        Range(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), 1u8..4).prop_map(|(f, n)| Op::Push(f, n)),
            any::<bool>().prop_map(Op::Pop),
            (any::<u8>(), any::<bool>()).prop_map(|(i, b)| Op::Insert(i, b)),
            any::<u8>().prop_map(Op::Set),
            any::<u8>().prop_map(Op::Kill),
            (any::<u8>(), any::<bool>()).prop_map(|(i, t)| Op::Rem(i, t)),
            (any::<u8>(), 1u8..5).prop_map(|(i, n)| Op::Range(i, n)),
        ]
    }

    /// Apply `op` to `l` (a write stamped `s`); returns its delta.
    fn apply(l: &mut List, op: &Op, s: Stamp) -> List {
        let mut d = List::default();
        let v = format!("{}:{}", s.region.0, s.hlc.0);
        match op {
            Op::Push(front, n) => {
                let vs: Vec<String> = (0..*n).map(|i| format!("{v}.{i}")).collect();
                let refs: Vec<&[u8]> = vs.iter().map(|x| x.as_bytes()).collect();
                d = l.push(*front, s, &refs).unwrap();
            }
            Op::Pop(front) if !l.is_empty() => {
                let i = if *front { 0 } else { l.len() - 1 };
                d.merge_elem(&l.kill_at(i).unwrap().1);
            }
            Op::Insert(i, before) if !l.is_empty() => {
                d = l
                    .insert_at(*i as usize % l.len(), *before, s, v.as_bytes())
                    .unwrap();
            }
            Op::Set(i) if !l.is_empty() => {
                d.merge_elem(&l.set_at(*i as usize % l.len(), s, v.as_bytes()).unwrap());
            }
            Op::Kill(i) if !l.is_empty() => {
                d.merge_elem(&l.kill_at(*i as usize % l.len()).unwrap().1);
            }
            Op::Rem(i, tail) if !l.is_empty() => {
                let v = l.get(*i as usize % l.len()).unwrap().to_vec();
                d = l.kill_matching(&v, 1, *tail);
                assert_eq!(d.element_count(), 1);
            }
            Op::Range(i, n) if !l.is_empty() => {
                let start = *i as usize % l.len();
                d = l.kill_range(start, *n as usize).1;
            }
            _ => {}
        }
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Three regions write concurrently, exchanging deltas in different orders (and
        /// full states): every replica converges to the same list, and merge is
        /// commutative, associative and idempotent.
        #[test]
        fn replicas_converge(ops in prop::collection::vec((0u16..3, op(), any::<bool>()), 1..60)) {
            let mut reps = vec![List::default(), List::default(), List::default()];
            let mut deltas: Vec<List> = Vec::new();
            let mut hlc = 10;
            for (r, op, sync) in &ops {
                hlc += 1;
                let d = apply(&mut reps[*r as usize], op, st(hlc, *r));
                check(&d);
                deltas.push(d);
                if *sync {
                    // Gossip everything known so far to the next replica.
                    let from = reps[*r as usize].clone();
                    reps[(*r as usize + 1) % 3].merge(&from);
                }
            }
            for rep in &reps {
                check(rep);
            }
            // Deltas applied in reverse order, twice each, on top of each replica.
            let mut finals = Vec::new();
            for rep in &reps {
                let mut x = rep.clone();
                for d in deltas.iter().rev() {
                    x.merge(d);
                    prop_assert!(!x.merge(d), "idempotent");
                }
                check(&x);
                finals.push(x);
            }
            prop_assert_eq!(&finals[0], &finals[1]);
            prop_assert_eq!(&finals[1], &finals[2]);
            // State merges commute and associate.
            let (a, b_, c) = (&reps[0], &reps[1], &reps[2]);
            let mut ab = a.clone(); ab.merge(b_);
            let mut ba = b_.clone(); ba.merge(a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(c);
            let mut bc = b_.clone(); bc.merge(c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            prop_assert_eq!(ab_c.digest(0), a_bc.digest(0));
            // GC of everything dead keeps the live values and order.
            let mut g = ab_c.clone();
            g.gc(&|_| Hlc(u64::MAX), false);
            check(&g);
            prop_assert_eq!(vals(&g), vals(&ab_c));
        }
    }
}
