//! The narrow interface the replication protocol needs from a store.
//!
//! The protocol never holds the keyspace: the shell lends it for the duration of a call.
//! Implemented for [`meridian_crdt::Keyspace`], so the simulator exercises exactly the store
//! production runs; tests may wrap it (e.g. to inject faults).

use meridian_crdt::{Applied, Delta, Entry, Hlc, Keyspace, RegionId, SLOT_COUNT};
use std::borrow::Cow;

pub trait LinkStore {
    /// Merge a delta shipped by a region link.
    fn apply_delta(&mut self, delta: &Delta) -> Applied;
    /// Merge a run of deltas, in order (deltas of one key keep their order; deltas of
    /// different keys commute, so a sharded store may group them by shard).
    fn apply_deltas(&mut self, deltas: &[Delta]) {
        for d in deltas {
            self.apply_delta(d);
        }
    }
    /// Merge a key's full state (anti-entropy); tombstones included.
    fn merge_full(&mut self, key: &[u8], state: &Entry) -> Applied;
    /// Digest of a slot's observable state; 0 when the slot holds nothing alive.
    fn slot_digest(&mut self, slot: u16) -> u64;
    /// Visit every live key of a slot with its key digest.
    fn for_each_key_digest(&self, slot: u16, visit: &mut dyn FnMut(&[u8], u64));
    /// Every entry of a slot (tombstones included) with the key.
    fn for_each_entry(&self, slot: u16, visit: &mut dyn FnMut(&[u8], &Entry));
    /// A copy of a key's full state, tombstones included (a copy, so a sharded store can
    /// lock the key's shard for this call only).
    fn entry(&self, key: &[u8]) -> Option<Entry>;
    fn slot_is_lossy(&self, slot: u16) -> bool;
    /// `None` when the slot is not lossy, else a mark that changes with every further
    /// loss in the slot (see `Keyspace::slot_loss_mark`).
    fn slot_loss_mark(&self, slot: u16) -> Option<u64>;
    /// Clear the slot's lossy flag if its loss mark is still `mark`.
    fn mark_slot_repaired(&mut self, slot: u16, mark: u64);
    /// Drop metadata every region has seen (`stable(origin)` = causally stable HLC).
    fn gc(&mut self, stable: &dyn Fn(RegionId) -> Hlc) -> usize;
}

impl LinkStore for Keyspace {
    fn apply_delta(&mut self, delta: &Delta) -> Applied {
        Keyspace::apply_delta(self, delta)
    }

    fn merge_full(&mut self, key: &[u8], state: &Entry) -> Applied {
        self.merge_state(key, true, state)
    }

    fn slot_digest(&mut self, slot: u16) -> u64 {
        debug_assert!(usize::from(slot) < SLOT_COUNT);
        Keyspace::slot_digest(self, slot)
    }

    fn for_each_key_digest(&self, slot: u16, visit: &mut dyn FnMut(&[u8], u64)) {
        for (k, e) in self.slot_entries(slot) {
            if e.is_alive() || e.floor() != 0 {
                visit(k, e.digest());
            }
        }
    }

    fn for_each_entry(&self, slot: u16, visit: &mut dyn FnMut(&[u8], &Entry)) {
        for (k, e) in self.slot_entries(slot) {
            visit(k, &e);
        }
    }

    fn entry(&self, key: &[u8]) -> Option<Entry> {
        self.raw_entry(key).map(Cow::into_owned)
    }

    fn slot_is_lossy(&self, slot: u16) -> bool {
        Keyspace::slot_is_lossy(self, slot)
    }

    fn slot_loss_mark(&self, slot: u16) -> Option<u64> {
        Keyspace::slot_loss_mark(self, slot)
    }

    fn mark_slot_repaired(&mut self, slot: u16, mark: u64) {
        Keyspace::mark_slot_repaired_if(self, slot, mark);
    }

    fn gc(&mut self, stable: &dyn Fn(RegionId) -> Hlc) -> usize {
        Keyspace::gc(self, &|r| stable(r))
    }
}
