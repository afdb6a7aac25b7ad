//! Nodes and the slab that holds them: one 64-byte `Node` per key (key, LRU/LFU, state packed
//! or boxed), named by a 32-bit handle; `Opened` lends a node's state out as a full [`Entry`].

use super::NODE_BYTES;
use crate::entry::{Access, Entry};
use crate::packed::{Key, Stored};

/// One key and its state, in one 64-byte allocation (see [`crate::packed`]).
pub(super) struct Node {
    pub(super) key: Key,
    pub(super) access: Access,
    pub(super) body: Stored,
}

const _: () = assert!(std::mem::size_of::<Node>() == 64);

const _: () = assert!(std::mem::size_of::<Option<Node>>() == 64);

impl Node {
    /// The node's entry opened for a write or merge; packed again when the guard drops.
    pub(super) fn body_open(&mut self) -> Opened<'_> {
        let scratch = match &self.body {
            Stored::Full(_) => None,
            _ => Some(std::mem::replace(&mut self.body, Stored::PLACEHOLDER).unpack()),
        };
        Opened {
            body: &mut self.body,
            scratch,
        }
    }
}

/// A node's body as a full [`Entry`] for a write or merge: in place when boxed, unpacked on
/// the stack when packed (no box allocated for it). Dropping it packs the entry again if
/// it has a packed shape.
pub(super) struct Opened<'a> {
    body: &'a mut Stored,
    scratch: Option<Entry>,
}

impl Opened<'_> {
    pub(super) fn entry(&mut self) -> &mut Entry {
        match (&mut self.scratch, &mut *self.body) {
            (Some(e), _) => e,
            (None, Stored::Full(b)) => b,
            (None, _) => unreachable!("a packed body is opened into scratch"),
        }
    }
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        match self.scratch.take() {
            Some(e) => {
                #[cfg(debug_assertions)]
                let before = e.clone();
                *self.body = Stored::pack(e);
                #[cfg(debug_assertions)]
                assert_eq!(self.body.view().as_ref(), &before, "packing is lossless");
            }
            None => {
                #[cfg(debug_assertions)]
                let before = self.body.view().into_owned();
                self.body.settle();
                #[cfg(debug_assertions)]
                assert_eq!(self.body.view().as_ref(), &before, "packing is lossless");
            }
        }
    }
}

/// Bytes a node costs, for `used_memory`: the node, its key and body allocations, and its
/// share of the table (a bucket pointer plus control byte at about half load).
pub(super) fn node_bytes(n: &Node) -> usize {
    NODE_BYTES + n.key.heap_bytes() + n.body.heap_bytes()
}

/// Nodes per slab chunk: a chunk reserves 256 KiB of address space, and only the pages its
/// nodes have been written to become resident.
pub(super) const CHUNK_BITS: u32 = 12;

pub(super) const CHUNK: usize = 1 << CHUNK_BITS;

/// Every node of a keyspace, named by a 32-bit handle. A slot table's bucket is then 4 bytes
/// instead of an 8-byte pointer (at a million keys most slot tables sit at half load, so the
/// bucket is a fifth of a counter's memory), and a node costs exactly its 64 bytes with no
/// allocator rounding. Freed handles are reused first; what they hold stays counted as free
/// ([`Slab::free_bytes`]), the way an allocator's free lists do.
#[derive(Default)]
pub(super) struct Slab {
    pub(super) chunks: Vec<Vec<Option<Node>>>,
    pub(super) free: Vec<u32>,
    pub(super) live: usize,
}

impl Slab {
    pub(super) fn insert(&mut self, node: Node) -> u32 {
        self.live += 1;
        if let Some(h) = self.free.pop() {
            *self.slot(h) = Some(node);
            return h;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let c = self.chunks.len() - 1;
        let chunk = &mut self.chunks[c];
        chunk.push(Some(node));
        ((c << CHUNK_BITS) | (chunk.len() - 1)) as u32
    }

    pub(super) fn slot(&mut self, h: u32) -> &mut Option<Node> {
        let h = h as usize;
        &mut self.chunks[h >> CHUNK_BITS][h & (CHUNK - 1)]
    }

    pub(super) fn get(&self, h: u32) -> &Node {
        let h = h as usize;
        match &self.chunks[h >> CHUNK_BITS][h & (CHUNK - 1)] {
            Some(n) => n,
            None => unreachable!("a table never holds a freed handle"),
        }
    }

    /// Where handle `h`'s node lives, without reading it (for a prefetch).
    pub(super) fn addr(&self, h: u32) -> *const Option<Node> {
        let h = h as usize;
        &self.chunks[h >> CHUNK_BITS][h & (CHUNK - 1)]
    }

    pub(super) fn get_mut(&mut self, h: u32) -> &mut Node {
        match self.slot(h) {
            Some(n) => n,
            None => unreachable!("a table never holds a freed handle"),
        }
    }

    pub(super) fn remove(&mut self, h: u32) -> Node {
        let Some(n) = self.slot(h).take() else {
            unreachable!("a table never holds a freed handle")
        };
        self.free.push(h);
        self.live -= 1;
        n
    }

    /// Bytes the slab holds that no node uses: freed slots and the unwritten tail of the
    /// newest chunk (allocated, so the allocator counts them as used).
    pub(super) fn free_bytes(&self) -> usize {
        (self.chunks.len() * CHUNK - self.live) * std::mem::size_of::<Option<Node>>()
    }
}
