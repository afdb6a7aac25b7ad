//! Active expiry (a bounded walk from a rotating slot cursor) and the retention of invalidation
//! floors (forgotten after `retention_ms` or beyond a count). Lazy expiry is in `read`.

use super::slab::node_bytes;
use super::tables::slot_index;
use super::{Keyspace, Prior};
use crate::packed::Key;
use crate::slot::{key_slot, SLOT_COUNT};
use bytes::Bytes;

impl Keyspace {
    /// Active expiry: look at up to `budget` keys from a rotating cursor, reclaiming expired
    /// ones. Returns how many were reclaimed. Bounded work per call, like Redis' cycle.
    pub fn active_expire(&mut self, now_ms: u64, budget: usize) -> usize {
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let mut looked = 0;
        let mut reclaimed = 0;
        let mut expired_keys: Vec<Key> = Vec::new();
        let mut slots_seen = 0;
        while looked < budget && slots_seen < SLOT_COUNT && self.stats.volatile > 0 {
            let slot = self.expire_cursor as u16;
            self.expire_cursor = (self.expire_cursor + 1) % SLOT_COUNT;
            slots_seen += 1;
            let Some(table) = self.slots[slot_index(slot)].as_deref() else {
                continue;
            };
            if table.volatile == 0 {
                continue;
            }
            for n in self.nodes.iter(&table.map) {
                looked += 1;
                if n.body.is_alive() && n.body.is_expired(now_ms) {
                    expired_keys.push(n.key.clone());
                }
            }
            for k in expired_keys.drain(..) {
                self.reclaim(slot, &k, true);
                reclaimed += 1;
            }
        }
        reclaimed
    }

    pub(super) fn note_floor(&mut self, now_ms: u64, key: &[u8], floor: u64) {
        self.floors
            .push_back((now_ms, Bytes::copy_from_slice(key), floor));
        self.stats.invalidation_tombstones = self.floors.len();
    }

    /// Retention of invalidation floors: forget floors raised more than `retention_ms` ago,
    /// and the oldest beyond `max_floors`, at most `budget` per call. A key left with nothing
    /// else is dropped (kept as a CRDT tombstone when `retain_tombstones`). Returns how many
    /// floors were forgotten. After that, a fill at an old version is accepted again: the
    /// documented bound of the guarantee.
    pub fn expire_invalidations(
        &mut self,
        now_ms: u64,
        retention_ms: u64,
        max_floors: usize,
        budget: usize,
    ) -> usize {
        self.floor_clock_ms = self.floor_clock_ms.max(now_ms);
        let mut forgotten = 0;
        for _ in 0..budget {
            let Some((at_ms, _, _)) = self.floors.front() else {
                break;
            };
            if at_ms.saturating_add(retention_ms) > now_ms && self.floors.len() <= max_floors {
                break;
            }
            let Some((_, key, floor)) = self.floors.pop_front() else {
                break;
            };
            let slot = key_slot(&key);
            let retain = self.cfg.retain_tombstones;
            let Some(table) = self.slots[slot_index(slot)].as_deref_mut() else {
                continue;
            };
            let Some(mut node) = self.nodes.remove(&mut table.map, &key[..]) else {
                continue;
            };
            if node.body.floor() != floor {
                // Raised again since: a later queue item owns it.
                self.nodes.insert(&mut table.map, node);
                continue;
            }
            let was_alive = node.body.is_alive();
            let prior = Prior {
                existed: true,
                was_alive,
                was_volatile: was_alive && node.body.deadline_ms().is_some(),
                bytes: node_bytes(&node),
            };
            let mut opened = node.body_open();
            let e = opened.entry();
            e.clear_floor();
            let is_alive = e.is_alive();
            let keep = is_alive || (retain && !e.components().is_empty());
            drop(opened);
            self.put_back(slot, node, prior, true, keep);
            forgotten += 1;
        }
        self.stats.invalidation_tombstones = self.floors.len();
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use crate::keyspace::tests::*;
    use crate::slot::key_slot;

    #[test]
    fn get_reclaims_an_expired_key_lazily() {
        let mut w = Writer::new(1, true);
        w.set("k", 10, Some(100));
        assert_eq!(w.ks.stats().volatile, 1);
        assert!(w.ks.get(b"k", 99).is_some());
        assert!(
            w.ks.peek(b"k", 100).is_none(),
            "peek hides it at the deadline"
        );
        assert_eq!(
            w.ks.len(),
            1,
            "not reclaimed by a peek (like Redis, until touched)"
        );
        assert!(w.ks.get(b"k", 100).is_none());
        assert_eq!(w.ks.len(), 0);
        assert_eq!(w.ks.stats().expired, 1);
        assert_eq!(w.ks.stats().volatile, 0);
        assert!(w.ks.raw_entry(b"k").is_none());
        assert!(
            w.ks.slot_is_lossy(key_slot(b"k")),
            "local loss is remembered"
        );
        assert_eq!(w.ks.pending_deltas(), 1, "only the SET produced a delta");
        assert_consistent(&w.ks);
    }

    #[test]
    fn a_write_after_the_deadline_starts_a_new_key() {
        let mut w = Writer::new(1, true);
        w.write("k", 10, |w| {
            w.incr_by(5).unwrap();
            w.set_deadline(Some(100));
        });
        let r = w.write("k", 150, |w| w.incr_by(1));
        assert_eq!(r, Ok(1));
        assert_eq!(w.ks.stats().expired, 1);
        let e = w.ks.get(b"k", 150).unwrap();
        assert_eq!(e.deadline_ms(), None);
        assert_consistent(&w.ks);
    }

    #[test]
    fn active_expire_is_bounded_by_its_budget() {
        let mut w = Writer::new(1, true);
        let volatile = keys_in_distinct_slots("v", 10);
        let plain = keys_in_distinct_slots("p", 5);
        for k in &volatile {
            w.set(k, 10, Some(100));
        }
        for k in &plain {
            w.set(k, 10, None);
        }
        assert_eq!(w.ks.stats().volatile, 10);
        assert_eq!(w.ks.active_expire(99, 1_000), 0, "nothing due yet");
        assert_eq!(w.ks.active_expire(100, 3), 3);
        assert_eq!(w.ks.stats().keys, 12);
        let mut total = 3;
        loop {
            let n = w.ks.active_expire(100, 4);
            assert!(n <= 4);
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 10);
        assert_eq!(w.ks.stats().expired, 10);
        assert_eq!(w.ks.stats().volatile, 0);
        for k in &plain {
            assert!(
                w.ks.get(k.as_bytes(), 100).is_some(),
                "keys without TTL stay"
            );
        }
        for k in &volatile {
            assert!(w.ks.raw_entry(k.as_bytes()).is_none());
        }
        assert_consistent(&w.ks);
    }
}
