//! Local losses: `reclaim` removes a key without a delta (expiry, eviction; an invalidation
//! floor stays), and every loss marks its slot lossy until anti-entropy repairs it.

use super::slab::node_bytes;
use super::tables::slot_index;
use super::Keyspace;
use crate::entry::Entry;
use crate::packed::Stored;
use crate::slot::SLOT_COUNT;

impl Keyspace {
    /// Local removal without a delta (expiry, eviction): other regions keep the key.
    pub(super) fn reclaim(&mut self, slot: u16, key: &[u8], expired: bool) -> usize {
        let Some(table) = self.slots[slot_index(slot)].as_deref_mut() else {
            return 0;
        };
        let Some(mut node) = self.nodes.remove(&mut table.map, key) else {
            return 0;
        };
        let alive = node.body.is_alive();
        let volatile = alive && node.body.deadline_ms().is_some();
        table.alive -= usize::from(alive);
        table.volatile -= usize::from(volatile);
        table.digest = None;
        let mut bytes = node_bytes(&node);
        let floor = node.body.floor();
        let mut kept_tomb = false;
        if floor != 0 {
            // The value goes, the invalidation floor stays: a stale fill must not come back
            // because the key expired or was evicted.
            node.body = Stored::pack(Entry::with_floor(floor));
            bytes -= node_bytes(&node);
            self.nodes.insert(&mut table.map, node);
            kept_tomb = true;
        }
        let s = &mut self.stats;
        s.keys -= usize::from(alive);
        s.tombstones = s.tombstones - usize::from(!alive) + usize::from(kept_tomb);
        s.volatile -= usize::from(volatile);
        s.bytes -= bytes;
        if expired {
            s.expired += 1;
        } else {
            s.evicted += 1;
        }
        self.set_lossy(slot);
        self.release_if_empty(slot);
        bytes
    }

    /// A key of this slot was evicted or expired locally since the last repair: partial
    /// deltas for absent keys must not rebuild it.
    pub fn slot_is_lossy(&self, slot: u16) -> bool {
        self.lossy[usize::from(slot) / 64] & (1 << (slot % 64)) != 0
    }

    /// Every slot `keep` selects is lossy: this keyspace may have lost keys there it cannot
    /// name (a region restarted empty: its peers hold state of its previous life), so partial
    /// deltas must not rebuild absent keys until anti-entropy has repaired the slot.
    pub fn mark_all_lossy(&mut self, keep: impl Fn(u16) -> bool) {
        for slot in (0..SLOT_COUNT as u16).filter(|&s| keep(s)) {
            self.set_lossy(slot);
        }
        self.start_losses = self.losses;
    }

    /// Undo [`Keyspace::mark_all_lossy`] in the slots no loss happened in since (the start
    /// turned out to be a first one: no peer held anything of this region).
    pub fn clear_start_losses(&mut self) {
        let upto = std::mem::take(&mut self.start_losses);
        let slots: Vec<u16> = self
            .loss_marks
            .iter()
            .filter(|&(_, &m)| m <= upto)
            .map(|(&s, _)| s)
            .collect();
        for slot in slots {
            self.mark_slot_repaired(slot);
        }
    }

    pub(super) fn set_lossy(&mut self, slot: u16) {
        self.lossy[usize::from(slot) / 64] |= 1 << (slot % 64);
        self.losses += 1;
        self.loss_marks.insert(slot, self.losses);
    }

    /// `None` when the slot is not lossy; otherwise a mark that changes with every further
    /// loss in the slot. Anti-entropy notes it when it digests the slot and repairs the
    /// slot only if the mark is unchanged when the round completes (a key evicted after
    /// the digest was taken is not covered by that round's comparison).
    pub fn slot_loss_mark(&self, slot: u16) -> Option<u64> {
        if !self.slot_is_lossy(slot) {
            return None;
        }
        Some(self.loss_marks.get(&slot).copied().unwrap_or(0))
    }

    /// Anti-entropy repaired the slot: partial deltas may build on absent keys again.
    pub fn mark_slot_repaired(&mut self, slot: u16) {
        self.lossy[usize::from(slot) / 64] &= !(1 << (slot % 64));
        self.loss_marks.remove(&slot);
    }

    /// [`Keyspace::mark_slot_repaired`] if no loss happened in the slot since `mark` was
    /// read from [`Keyspace::slot_loss_mark`]. Returns whether the slot was repaired.
    pub fn mark_slot_repaired_if(&mut self, slot: u16, mark: u64) -> bool {
        if self.slot_loss_mark(slot) != Some(mark) {
            return false;
        }
        self.mark_slot_repaired(slot);
        true
    }
}
