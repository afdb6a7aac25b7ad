//! Local writes: `write_in` (one probe finds or creates the node, the write happens in place,
//! the delta is queued), the packed fast paths `set_plain` and `incr_plain`, `delete_all`.

use super::slab::node_bytes;
use super::tables::{node_mut, slot_table};
use super::{next_coin, touch, After, Keyspace, Prior};
use crate::entry::{Delta, Entry, EntryWriter, Kind};
use crate::hlc::Stamp;
use crate::packed::Stored;
use crate::slot::key_slot;
use crate::CrdtError;
use bytes::Bytes;

impl Keyspace {
    /// Apply a local write. The closure runs ops on an [`EntryWriter`]; if it changed
    /// anything, the delta is queued for `drain_deltas`.
    pub fn write<R>(
        &mut self,
        key: &[u8],
        stamp: Stamp,
        now_ms: u64,
        f: impl FnOnce(&mut EntryWriter) -> R,
    ) -> R {
        self.write_in(key_slot(key), Bytes::copy_from_slice(key), stamp, now_ms, f)
    }

    /// [`Keyspace::write`] for a caller that already knows the key's slot and holds the key
    /// as `Bytes`: the delta shares `key` (a request argument) rather than copying it. One
    /// table probe finds or creates the key's node, and the write happens in place.
    pub fn write_in<R>(
        &mut self,
        slot: u16,
        key: Bytes,
        stamp: Stamp,
        now_ms: u64,
        f: impl FnOnce(&mut EntryWriter) -> R,
    ) -> R {
        debug_assert_eq!(stamp.region, self.cfg.region);
        debug_assert_eq!(slot, key_slot(&key));
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let coin = self.next_coin();
        let retain = self.cfg.retain_tombstones;
        let lost_here = self.slot_is_lossy(slot);
        let h = self.nodes.hash(&key);
        let table = slot_table(&mut self.slots, slot);
        let (node, existed) = self.nodes.get_or_create(&mut table.map, h, &key);
        // A live key whose deadline passed is gone for this write. (A tombstone whose
        // leftover deadline passed is not an expired key: the write builds on it.)
        let was_alive = node.body.is_alive();
        let expired = was_alive && node.body.is_expired(now_ms);
        let was_volatile = was_alive && node.body.deadline_ms().is_some();
        let floor_before = node.body.floor();
        let before = if existed { node_bytes(node) } else { 0 };
        let mut opened = node.body_open();
        let entry = opened.entry();
        // No state at all here (a new node, or what eviction left of an invalidated key).
        let bare = entry.components().is_empty();
        let mut w = EntryWriter {
            entry: &mut *entry,
            delta: Entry::default(),
            stamp,
            changed: false,
            created_key: !was_alive || expired,
            whole: false,
        };
        if expired {
            // This write starts a new key. Rather than dropping the old one and starting from
            // nothing, remove what this region observed, as a DEL would, and ship that with
            // the write: the region's counter contributions stay cumulative (a fresh one
            // would replace its old contribution elsewhere and break the sum), and regions
            // that still hold the old incarnation and its passed deadline see the new key.
            // Writes this region did not observe survive (observed remove).
            w.delete();
            w.changed = false;
        }
        let r = f(&mut w);
        let (changed, mut delta_state, created_key, whole) =
            (w.changed, w.delta, w.created_key, w.whole);
        if expired && !changed {
            // Nothing written: plain local expiry, which never replicates. The invalidation
            // floor stays, as every reclaim keeps it (a refused stale fill is the usual
            // reason nothing was written).
            drop(opened);
            let table = slot_table(&mut self.slots, slot);
            let mut kept = 0;
            if floor_before != 0 {
                node.body = Stored::pack(Entry::with_floor(floor_before));
                kept = node_bytes(node);
            } else {
                self.nodes.remove_hashed(&mut table.map, h, &key);
            }
            table.alive -= 1;
            table.volatile -= usize::from(was_volatile);
            table.digest = None;
            self.set_lossy(slot);
            self.release_if_empty(slot);
            let s = &mut self.stats;
            s.expired += 1;
            s.keys -= 1;
            s.tombstones += usize::from(floor_before != 0);
            s.volatile -= usize::from(was_volatile);
            s.bytes = s.bytes + kept - before;
            return r;
        }
        let is_alive = entry.is_alive();
        // Full: the delta alone rebuilds the key's whole live state. True when the write
        // created the key, or when every live component is a string the delta carries whole
        // (a string write always ships its whole string). The TTL goes along.
        //
        // Not when the key had no state here while its slot is lossy: this region evicted or
        // lost keys there and cannot tell "absent" from "forgotten", so what it wrote is its
        // part only, never to be taken elsewhere for the whole key.
        // A `SET` without `KEEPTTL` is whole anyway: the register it writes wins over
        // everything older, and older TTL entries die with it (a cache refill after local
        // expiry reaches regions that reclaimed the key too).
        let full = whole
            || !(lost_here && bare)
                && (created_key
                    || entry
                        .components()
                        .iter()
                        .filter(|c| c.val.is_alive())
                        .all(|c| c.val.kind() == Kind::Str && delta_state.carries(Kind::Str)));
        if changed && full {
            delta_state.merge_metadata(entry);
        }
        if !retain {
            entry.forget_dead_in(&delta_state);
            if !is_alive && entry.floor() != 0 {
                // Single-region mode keeps nothing dead but the invalidation floor.
                *entry = Entry::with_floor(entry.floor());
            }
        }
        let floor = entry.floor();
        drop(opened);
        touch(&mut node.access, now_ms, coin);
        let keep = is_alive || (retain && existed) || (retain && changed) || floor != 0;
        let after = After::of(node, keep);
        if !keep {
            let table = slot_table(&mut self.slots, slot);
            self.nodes.remove_hashed(&mut table.map, h, &key);
        }
        if floor > floor_before {
            self.note_floor(now_ms, &key, floor);
        }
        if changed {
            self.deltas.push(Delta {
                key,
                slot,
                stamp,
                full,
                state: delta_state,
            });
        }
        let prior = Prior {
            existed,
            was_alive,
            was_volatile,
            bytes: before,
        };
        self.stats.expired += u64::from(expired);
        self.account(slot, prior, after, changed);
        r
    }

    /// `SET key value` with no option (the TTL cleared, no version): what
    /// `write_in(.., |w| w.set_str_shared(value, false))` does, without unpacking a packed
    /// string (its old value is never read). Anything else takes the general path.
    pub fn set_plain(&mut self, slot: u16, key: Bytes, stamp: Stamp, now_ms: u64, value: Bytes) {
        debug_assert_eq!(stamp.region, self.cfg.region);
        debug_assert_eq!(slot, key_slot(&key));
        let node = node_mut(&self.slots, &mut self.nodes, slot, &key);
        let Some(node) = node.filter(|n| matches!(n.body, Stored::Str { .. })) else {
            self.write_in(slot, key, stamp, now_ms, |w| w.set_str_shared(value, false));
            return;
        };
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let coin = next_coin(&mut self.coin);
        let before = node_bytes(node);
        let Some((created, old)) = node.body.overwrite_str(stamp, &value) else {
            unreachable!("a packed string, checked above")
        };
        touch(&mut node.access, now_ms, coin);
        let after = After::of(node, true);
        // A packed string is live, has no TTL, no other component and no metadata: the
        // delta is the whole new string, as the general path builds it.
        let state = crate::packed::string_entry(created, stamp, value);
        self.record_in_place(slot, key, stamp, before, after, state);
        drop(old);
    }

    /// The bookkeeping of a local write done in place on a live packed node with no TTL
    /// (`set_plain`, `incr_plain`): its full delta (`state`, the node's new entry) and the
    /// counters (it was `before` bytes).
    fn record_in_place(
        &mut self,
        slot: u16,
        key: Bytes,
        stamp: Stamp,
        before: usize,
        after: After,
        state: Entry,
    ) {
        self.deltas.push(Delta {
            key,
            slot,
            stamp,
            full: true,
            state,
        });
        let prior = Prior {
            existed: true,
            was_alive: true,
            was_volatile: false,
            bytes: before,
        };
        self.account(slot, prior, after, true);
    }

    /// `INCRBY key by` (the whole command): [`Keyspace::write_in`] of `incr_by(by)`, with
    /// an in-place path for a counter this region packed (the common counter): its value
    /// and write stamp change in the node, and the delta is the counter's packed entry, as
    /// the general path builds it. Anything else (another kind, another region's counter,
    /// an overflow) takes the general path.
    pub fn incr_plain(
        &mut self,
        slot: u16,
        key: Bytes,
        stamp: Stamp,
        now_ms: u64,
        by: i64,
    ) -> Result<i64, CrdtError> {
        debug_assert_eq!(stamp.region, self.cfg.region);
        debug_assert_eq!(slot, key_slot(&key));
        let node = node_mut(&self.slots, &mut self.nodes, slot, &key);
        let Some((node, (created, value))) =
            node.and_then(|n| n.body.incr_own(stamp, by).map(|r| (n, r)))
        else {
            return self.write_in(slot, key, stamp, now_ms, |w| w.incr_by(by));
        };
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let coin = next_coin(&mut self.coin);
        // A packed counter has no heap part: its size did not change.
        let bytes = node_bytes(node);
        touch(&mut node.access, now_ms, coin);
        let after = After::of(node, true);
        let state = crate::packed::counter_entry(created, stamp, value, true);
        self.record_in_place(slot, key, stamp, bytes, after, state);
        Ok(value)
    }

    /// Take the deltas produced by local writes since the last call.
    pub fn drain_deltas(&mut self) -> std::vec::Drain<'_, Delta> {
        self.deltas.drain(..)
    }

    pub fn pending_deltas(&self) -> usize {
        self.deltas.len()
    }

    /// Observed remove of every key (`FLUSHALL`): yields a delta per key.
    pub fn delete_all(&mut self, stamp_for: &mut impl FnMut() -> Stamp, now_ms: u64) -> usize {
        let mut keys = Vec::new();
        for t in self.slots.iter().flatten() {
            keys.extend(
                self.nodes
                    .iter(&t.map)
                    .filter(|n| n.body.is_alive())
                    .map(|n| Bytes::copy_from_slice(&n.key)),
            );
        }
        let n = keys.len();
        for k in keys {
            let stamp = stamp_for();
            self.write(&k, stamp, now_ms, |w| w.delete());
        }
        n
    }
}

impl Entry {
    fn carries(&self, kind: Kind) -> bool {
        self.components().iter().any(|c| c.val.kind() == kind)
    }
}

#[cfg(test)]
mod tests {
    use crate::keyspace::tests::*;

    #[test]
    fn delete_all_yields_a_delta_per_live_key() {
        let mut w = Writer::new(1, true);
        for k in keys_in_distinct_slots("d", 6) {
            w.set(&k, 10, None);
        }
        w.ks.drain_deltas().for_each(drop);
        let mut clock = w.clock.clone();
        let n = w.ks.delete_all(&mut || clock.now(20), 20);
        assert_eq!(n, 6);
        assert_eq!(w.ks.pending_deltas(), 6);
        assert!(w.ks.is_empty());
        assert_eq!(w.ks.stats().tombstones, 6);
        assert_consistent(&w.ks);
    }
}
