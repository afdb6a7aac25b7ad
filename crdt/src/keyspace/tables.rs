//! Per-slot tables: a hashbrown `HashTable` of node handles per slot (allocated with the slot's
//! first key, freed with its last), table pointers grouped by `slot % 16`, the table operations
//! (`Nodes`: a table holds only handles, so finding a key reads its node), and prefetch hints.

use super::slab::{Node, Slab};
use super::Keyspace;
use crate::entry::Access;
use crate::packed::{Key, Stored};
use crate::slot::SLOT_COUNT;
use hashbrown::HashTable;

/// The nodes and the hasher shared by every slot table of a keyspace. Table operations
/// live here because a table holds only handles: finding a key reads its node.
pub(super) struct Nodes {
    pub(super) slab: Slab,
    pub(super) hasher: ahash::RandomState,
}

/// A slot's keys: handles of its nodes.
#[derive(Default)]
pub(super) struct Table {
    pub(super) nodes: HashTable<u32>,
}

impl Table {
    pub(super) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl Nodes {
    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn get<'a>(&'a self, t: &Table, key: &[u8]) -> Option<&'a Node> {
        self.get_hashed(t, self.hash(key), key)
    }

    pub(super) fn get_hashed<'a>(&'a self, t: &Table, h: u64, key: &[u8]) -> Option<&'a Node> {
        let slab = &self.slab;
        let i = *t.nodes.find(h, |&i| slab.get(i).key[..] == *key)?;
        Some(slab.get(i))
    }

    pub(super) fn get_mut_hashed(&mut self, t: &Table, h: u64, key: &[u8]) -> Option<&mut Node> {
        let slab = &self.slab;
        let i = *t.nodes.find(h, |&i| slab.get(i).key[..] == *key)?;
        Some(self.slab.get_mut(i))
    }

    /// The node of `key` (hash `h`), created empty if absent; `true` when it existed.
    pub(super) fn get_or_create(&mut self, t: &mut Table, h: u64, key: &[u8]) -> (&mut Node, bool) {
        let (slab, hasher) = (&self.slab, &self.hasher);
        match t.nodes.entry(
            h,
            |&i| slab.get(i).key[..] == *key,
            |&i| hasher.hash_one(&slab.get(i).key[..]),
        ) {
            hashbrown::hash_table::Entry::Occupied(o) => {
                let i = *o.get();
                (self.slab.get_mut(i), true)
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                let i = self.slab.insert(Node {
                    key: Key::new(key),
                    access: Access::default(),
                    body: Stored::Empty,
                });
                v.insert(i);
                (self.slab.get_mut(i), false)
            }
        }
    }

    pub(super) fn remove_hashed(&mut self, t: &mut Table, h: u64, key: &[u8]) -> Option<Node> {
        let slab = &self.slab;
        match t.nodes.find_entry(h, |&i| slab.get(i).key[..] == *key) {
            Ok(o) => {
                let i = o.remove().0;
                Some(self.slab.remove(i))
            }
            Err(_) => None,
        }
    }

    /// Take a key's node out (a write or merge puts it back with [`Nodes::insert`]).
    pub(super) fn remove(&mut self, t: &mut Table, key: &[u8]) -> Option<Node> {
        self.remove_hashed(t, self.hash(key), key)
    }

    /// Insert a node whose key is absent.
    pub(super) fn insert(&mut self, t: &mut Table, node: Node) {
        let h = self.hash(&node.key);
        let i = self.slab.insert(node);
        let (slab, hasher) = (&self.slab, &self.hasher);
        t.nodes
            .insert_unique(h, i, |&i| hasher.hash_one(&slab.get(i).key[..]));
    }

    pub(super) fn iter<'a>(&'a self, t: &'a Table) -> impl Iterator<Item = &'a Node> {
        t.nodes.iter().map(|&i| self.slab.get(i))
    }

    /// Keep the nodes `f` says to keep; free the others.
    pub(super) fn retain(&mut self, t: &mut Table, mut f: impl FnMut(&mut Node) -> bool) {
        let slab = &mut self.slab;
        t.nodes.retain(|&mut i| {
            let keep = f(slab.get_mut(i));
            if !keep {
                slab.remove(i);
            }
            keep
        });
    }

    /// Free every node of a table that is being dropped.
    pub(super) fn free_table(&mut self, t: &Table) {
        for &i in t.nodes.iter() {
            self.slab.remove(i);
        }
    }
}

/// A stage of [`Keyspace::prefetch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    Table,
    Node,
    Value,
}

/// Ask the CPU to bring `p`'s cache line in (a hint: no effect on memory or state).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only moves a cache line towards the core; it never faults (even on
    // an invalid address) and reads or writes nothing the program can observe.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Where a slot's table pointer sits in `Keyspace::slots`: grouped by `slot % 16`, so the
/// slots a server shard holds (its shard is `slot % 16`) are 1024 neighbours (8 KiB that
/// stay in cache) instead of every 16th entry of 128 KiB (a cache miss on most lookups).
/// A bijection on `0..SLOT_COUNT`; out-of-range slots map out of range.
pub(super) fn slot_index(slot: u16) -> usize {
    let s = usize::from(slot);
    if s >= SLOT_COUNT {
        return usize::MAX;
    }
    (s % SLOT_GROUPS) * (SLOT_COUNT / SLOT_GROUPS) + s / SLOT_GROUPS
}

/// Inverse of [`slot_index`].
#[cfg(test)]
pub(super) fn slot_at(index: usize) -> u16 {
    let per = SLOT_COUNT / SLOT_GROUPS;
    ((index % per) * SLOT_GROUPS + index / per) as u16
}

pub(super) const SLOT_GROUPS: usize = 16;

/// The node of `key` in `slot`, if it has one (live or not). Free-standing, so the rest of
/// the keyspace stays borrowable while the node is held.
pub(super) fn node_mut<'a>(
    slots: &[Option<Box<SlotTable>>],
    nodes: &'a mut Nodes,
    slot: u16,
    key: &[u8],
) -> Option<&'a mut Node> {
    let h = nodes.hash(key);
    let t = slots[slot_index(slot)].as_deref()?;
    nodes.get_mut_hashed(&t.map, h, key)
}

/// A slot's table, created with its first key.
pub(super) fn slot_table(slots: &mut [Option<Box<SlotTable>>], slot: u16) -> &mut SlotTable {
    slots[slot_index(slot)].get_or_insert_with(|| {
        Box::new(SlotTable {
            map: Table::default(),
            alive: 0,
            volatile: 0,
            digest: None,
        })
    })
}

pub(super) struct SlotTable {
    pub(super) map: Table,
    pub(super) alive: usize,
    pub(super) volatile: usize,
    /// Cached anti-entropy digest; `None` when the slot changed since.
    pub(super) digest: Option<u64>,
}

impl Keyspace {
    pub(super) fn table(&self, slot: u16) -> Option<&SlotTable> {
        self.slots.get(slot_index(slot))?.as_deref()
    }

    pub(super) fn table_mut(&mut self, slot: u16) -> &mut SlotTable {
        slot_table(&mut self.slots, slot)
    }

    /// Bytes the keyspace's node slab holds unused (freed or not yet written): allocated,
    /// but available to new keys. `used_memory` leaves them out, as an allocator's own free
    /// lists are.
    pub fn slab_free_bytes(&self) -> usize {
        self.nodes.slab.free_bytes()
    }

    /// Free a slot's table once it holds no key (tombstones included): a table's bucket
    /// array and header would otherwise outlive its keys, memory eviction cannot free.
    pub(super) fn release_if_empty(&mut self, slot: u16) {
        let i = slot_index(slot);
        if self.slots[i].as_deref().is_some_and(|t| t.map.is_empty()) {
            self.slots[i] = None;
        }
    }
}
