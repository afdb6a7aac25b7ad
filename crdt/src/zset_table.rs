//! Storage of a sorted set's members: an arena in fixed-size chunks and a hash index over
//! it that grows incrementally, so that neither a large set's growth nor its index's
//! rehash moves everything in one write (Redis' dict rehashes incrementally too; see
//! `elements` for the same treatment of sets and hashes).
//!
//! - [`Arena`]: slots `u32` → `T`. The first chunk grows like a `Vec` (small sets stay
//!   small); past it, chunks of [`CHUNK`] slots are added, never moved.
//! - [`Index`]: member → slot. An entry is the slot and 32 bits of the member's keyed hash;
//!   the table hashes the entry alone, so moving entries to a bigger table never reads the
//!   members. From [`INCREMENTAL_MIN_BUCKETS`] on, a full table is replaced by one twice its
//!   size and the old one is drained a bucket or two per insert or removal.

use hashbrown::HashTable;

const CHUNK_SHIFT: u32 = 12;
/// Slots per chunk past the first (4096: some 360 KB of sorted-set nodes).
pub(crate) const CHUNK: usize = 1 << CHUNK_SHIFT;
const MASK: u32 = (1 << CHUNK_SHIFT) - 1;

#[derive(Clone, Debug)]
pub(crate) struct Arena<T> {
    chunks: Vec<Vec<T>>,
    len: u32,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Arena<T> {
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>()
    }

    pub(crate) fn push(&mut self, v: T) -> u32 {
        let i = self.len;
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(v),
            _ => {
                let mut c = Vec::with_capacity(if self.chunks.is_empty() { 1 } else { CHUNK });
                c.push(v);
                self.chunks.push(c);
            }
        }
        self.len += 1;
        i
    }

    /// Remove the last slot.
    pub(crate) fn pop(&mut self) {
        if let Some(c) = self.chunks.last_mut() {
            c.pop();
            self.len -= 1;
            if c.is_empty() {
                self.chunks.pop();
            }
        }
    }
}

impl<T> std::ops::Index<u32> for Arena<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: u32) -> &T {
        &self.chunks[(i >> CHUNK_SHIFT) as usize][(i & MASK) as usize]
    }
}

impl<T> std::ops::IndexMut<u32> for Arena<T> {
    #[inline]
    fn index_mut(&mut self, i: u32) -> &mut T {
        &mut self.chunks[(i >> CHUNK_SHIFT) as usize][(i & MASK) as usize]
    }
}

/// Tables of at least this many buckets grow incrementally.
const INCREMENTAL_MIN_BUCKETS: usize = 4096;

/// An index entry: 32 bits of the member's hash (high) and its slot (low).
fn entry(h32: u32, slot: u32) -> u64 {
    (u64::from(h32) << 32) | u64::from(slot)
}

/// The table's hash of an entry, from its 32 hash bits alone.
#[inline]
fn table_hash(h32: u32) -> u64 {
    // A bijection of the keyed hash bits: low bits (the bucket) as spread as the keyed
    // hash's, high bits (hashbrown's tag) mixed from all of them.
    u64::from(h32).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(h32)
}

#[inline]
fn rehash(e: &u64) -> u64 {
    table_hash((*e >> 32) as u32)
}

#[derive(Clone, Default)]
pub(crate) struct Index {
    cur: HashTable<u64>,
    old: HashTable<u64>,
    /// Next bucket of `old` to move.
    cursor: usize,
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.cur.len() + self.old.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the tables have room for (for memory accounting: 9 bytes each).
    pub(crate) fn capacity(&self) -> usize {
        self.cur.capacity() + self.old.capacity()
    }

    /// The slot whose entry has hash bits `h32` and for which `is` holds.
    pub(crate) fn find(&self, h32: u32, is: impl Fn(u32) -> bool) -> Option<u32> {
        let h = table_hash(h32);
        let eq = |e: &u64| (*e >> 32) as u32 == h32 && is(*e as u32);
        self.cur
            .find(h, eq)
            .or_else(|| self.old.find(h, eq))
            .map(|e| *e as u32)
    }

    /// Add a slot known to be absent.
    pub(crate) fn insert(&mut self, h32: u32, slot: u32) {
        self.step();
        if self.cur.len() == self.cur.capacity()
            && self.cur.num_buckets() >= INCREMENTAL_MIN_BUCKETS
        {
            self.finish_growth();
            let full = self.cur.num_buckets() / 8 * 7;
            let fresh = HashTable::with_capacity(full.max(self.cur.len()) * 2);
            self.old = std::mem::replace(&mut self.cur, fresh);
            self.cursor = 0;
        }
        self.cur
            .insert_unique(table_hash(h32), entry(h32, slot), rehash);
    }

    /// Remove the entry of `slot` (whose hash bits are `h32`).
    pub(crate) fn remove(&mut self, h32: u32, slot: u32) {
        let h = table_hash(h32);
        let e = entry(h32, slot);
        match self.cur.find_entry(h, |x| *x == e) {
            Ok(o) => {
                o.remove();
            }
            Err(_) => {
                if let Ok(o) = self.old.find_entry(h, |x| *x == e) {
                    o.remove();
                }
            }
        }
        self.step();
        if self.old.is_empty() {
            self.end_growth();
        }
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.cur.iter().chain(self.old.iter()).map(|e| *e as u32)
    }

    /// Move a bucket (two while the buckets left outnumber the room for inserts).
    fn step(&mut self) {
        if self.old.is_empty() {
            return;
        }
        let left = self.old.num_buckets() - self.cursor;
        let room = self
            .cur
            .capacity()
            .saturating_sub(self.cur.len() + self.old.len());
        let n = if left >= room { 2 } else { 1 };
        let end = (self.cursor + n).min(self.old.num_buckets());
        self.migrate(end);
    }

    fn finish_growth(&mut self) {
        let end = self.old.num_buckets();
        self.migrate(end);
    }

    fn migrate(&mut self, end: usize) {
        for i in self.cursor..end {
            if let Ok(e) = self.old.get_bucket_entry(i) {
                let (moved, _) = e.remove();
                self.cur.insert_unique(rehash(&moved), moved, rehash);
            }
        }
        self.cursor = end;
        if self.old.is_empty() {
            self.end_growth();
        }
    }

    fn end_growth(&mut self) {
        if self.old.num_buckets() > 0 {
            self.old = HashTable::new();
        }
        self.cursor = 0;
    }

    #[cfg(test)]
    pub(crate) fn migrating(&self) -> bool {
        !self.old.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_chunks_grow_and_shrink() {
        let mut a: Arena<u64> = Arena::default();
        for i in 0..(3 * CHUNK as u64 + 5) {
            assert_eq!(a.push(i * 3), i as u32);
        }
        assert_eq!(a[(2 * CHUNK + 7) as u32], (2 * CHUNK as u64 + 7) * 3);
        a[5] = 1;
        assert_eq!(a[5], 1);
        for _ in 0..6 {
            a.pop();
        }
        assert_eq!(a.len(), 3 * CHUNK - 1);
        assert_eq!(a.chunks.len(), 3);
    }

    /// Growth past the incremental size, with removals interleaved, keeps every entry
    /// findable exactly once and completes.
    #[test]
    fn index_grows_incrementally_and_keeps_every_entry() {
        let mut ix = Index::default();
        let h = |i: u32| i.wrapping_mul(2_654_435_761) ^ (i >> 3);
        let mut live = std::collections::BTreeSet::new();
        let mut saw = false;
        for i in 0..60_000u32 {
            ix.insert(h(i), i);
            live.insert(i);
            if i % 5 == 0 {
                let j = i / 2;
                if live.remove(&j) {
                    ix.remove(h(j), j);
                }
            }
            saw |= ix.migrating();
        }
        assert!(saw, "never grew incrementally");
        assert_eq!(ix.len(), live.len());
        for &i in &live {
            assert_eq!(ix.find(h(i), |s| s == i), Some(i));
        }
        let mut all: Vec<u32> = ix.slots().collect();
        all.sort_unstable();
        assert_eq!(all, live.iter().copied().collect::<Vec<_>>());
    }
}
