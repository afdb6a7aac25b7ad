//! Remote state: `apply_delta`/`merge_state` (in place, with the packed plain-string path),
//! `raise_floor` (a floor-only merge: no stamp, no delta), and the slot-move hand-overs
//! `take_key` and `drop_slot`.

use super::slab::node_bytes;
use super::tables::{slot_index, slot_table};
use super::{After, Applied, Keyspace, Prior};
use crate::entry::{Delta, Entry};
use crate::hlc::Hlc;
use crate::slot::key_slot;

impl Keyspace {
    /// Raise `key`'s invalidation floor to `floor` without a write: no stamp, no dot, no
    /// delta, just the max-lattice merge of a floor-only state. A cluster replica applies
    /// this part of an invalidation from the stream so that, once promoted, it already
    /// hides and refuses fills at or below the floor. Returns whether the floor rose.
    pub fn raise_floor(&mut self, key: &[u8], floor: u64) -> bool {
        if floor == 0 {
            return false;
        }
        self.merge_state(key, true, &Entry::with_floor(floor)) == Applied::Changed
    }

    /// Merge remote state for one key (a delta or an anti-entropy transfer).
    pub fn apply_delta(&mut self, delta: &Delta) -> Applied {
        self.merge_state(&delta.key, delta.full, &delta.state)
    }

    /// Merge a remote entry state. `full` says it is the origin's whole state for the key.
    /// In place: one table probe finds or creates the key's node.
    pub fn merge_state(&mut self, key: &[u8], full: bool, state: &Entry) -> Applied {
        self.merge_state_with(key, full, state, true)
    }

    /// [`Keyspace::merge_state`]; `in_place` lets a plain string merge into a packed string
    /// of the same incarnation without opening the node (tests compare both ways).
    pub(crate) fn merge_state_with(
        &mut self,
        key: &[u8],
        full: bool,
        state: &Entry,
        in_place: bool,
    ) -> Applied {
        let slot = key_slot(key);
        let retain = self.cfg.retain_tombstones;
        let h = self.nodes.hash(key);
        // Absent here: no node, or one with no component (what eviction or expiry left of an
        // invalidated key: its floor).
        if !full
            && self.slot_is_lossy(slot)
            && self
                .table(slot)
                .and_then(|t| self.nodes.get_hashed(&t.map, h, key))
                .is_none_or(|n| n.body.is_bare())
        {
            self.stats.partial_deltas_dropped += 1;
            return Applied::DroppedPartial;
        }
        let table = slot_table(&mut self.slots, slot);
        let (node, existed) = self.nodes.get_or_create(&mut table.map, h, key);
        let before = if existed { node_bytes(node) } else { 0 };
        // The common replicated write, a plain string over the same plain string, in place:
        // live before and after, no TTL, no floor, nothing to collect.
        let plain = in_place
            .then(|| crate::packed::plain_string(state))
            .flatten()
            .and_then(|(created, at, value)| node.body.merge_plain_str(created, at, value));
        if let Some(changed) = plain {
            let after = After::of(node, true);
            let prior = Prior {
                existed,
                was_alive: true,
                was_volatile: false,
                bytes: before,
            };
            self.account(slot, prior, after, changed);
            self.stats.deltas_applied += 1;
            return if changed {
                Applied::Changed
            } else {
                Applied::Unchanged
            };
        }
        let was_alive = node.body.is_alive();
        let was_volatile = was_alive && node.body.deadline_ms().is_some();
        let floor_before = node.body.floor();
        let mut opened = node.body_open();
        let entry = opened.entry();
        let changed = entry.merge(state);
        if !retain {
            entry.gc(&|_| Hlc(u64::MAX), true);
            if !entry.is_alive() && entry.floor() != 0 {
                *entry = Entry::with_floor(entry.floor());
            }
        }
        let floor = entry.floor();
        let stale_fill_hidden = changed && state.has_stale_fill_for(floor);
        let is_alive = entry.is_alive();
        drop(opened);
        let keep = is_alive || retain || floor != 0;
        let after = After::of(node, keep);
        if !keep {
            let table = slot_table(&mut self.slots, slot);
            self.nodes.remove_hashed(&mut table.map, h, key);
        }
        if stale_fill_hidden {
            self.stats.stale_fills_hidden += 1;
        }
        if floor > floor_before {
            self.note_floor(self.floor_clock_ms, key, floor);
        }
        let prior = Prior {
            existed,
            was_alive,
            was_volatile,
            bytes: before,
        };
        self.account(slot, prior, after, changed);
        self.stats.deltas_applied += 1;
        if changed {
            Applied::Changed
        } else {
            Applied::Unchanged
        }
    }

    /// Hand a key over to another node of the region (MIGRATE): remove its whole state
    /// locally, without a delta (the region as a whole still holds it) and without marking
    /// the slot lossy (the key moved, it was not lost). Returns the state that left.
    pub fn take_key(&mut self, key: &[u8]) -> Option<Entry> {
        let slot = key_slot(key);
        let table = self.slots[slot_index(slot)].as_deref_mut()?;
        let node = self.nodes.remove(&mut table.map, key)?;
        let bytes = node_bytes(&node);
        let e = node.body.unpack();
        let alive = e.is_alive();
        let volatile = alive && e.deadline_ms().is_some();
        table.alive -= usize::from(alive);
        table.volatile -= usize::from(volatile);
        table.digest = None;
        let s = &mut self.stats;
        s.keys -= usize::from(alive);
        s.tombstones -= usize::from(!alive);
        s.volatile -= usize::from(volatile);
        s.bytes -= bytes;
        self.release_if_empty(slot);
        Some(e)
    }

    /// Drop a whole slot locally (it moved to another node). Returns the keys dropped.
    pub fn drop_slot(&mut self, slot: u16) -> usize {
        let Some(t) = self.slots[slot_index(slot)].take() else {
            return 0;
        };
        let mut bytes = 0;
        let mut tombs = 0;
        for n in self.nodes.iter(&t.map) {
            bytes += node_bytes(n);
            tombs += usize::from(!n.body.is_alive());
        }
        self.nodes.free_table(&t.map);
        let s = &mut self.stats;
        s.keys -= t.alive;
        s.volatile -= t.volatile;
        s.tombstones -= tombs;
        s.bytes -= bytes;
        t.alive
    }
}
