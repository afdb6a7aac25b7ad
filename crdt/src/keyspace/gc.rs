//! Anti-entropy digests (per slot, cached until the slot changes; per key) and GC of dead
//! metadata below the causal-stability frontier.

use super::slab::node_bytes;
use super::tables::slot_index;
use super::Keyspace;
use crate::hlc::{Hlc, RegionId};
use crate::packed::Stored;
use crate::slot::key_slot;

impl Keyspace {
    /// Digest of a slot's observable state: equal on two regions iff (with overwhelming
    /// probability) they hold the same live state for the slot. Cached until the slot changes.
    pub fn slot_digest(&mut self, slot: u16) -> u64 {
        let Some(t) = self.slots[slot_index(slot)].as_deref_mut() else {
            return 0;
        };
        if let Some(d) = t.digest {
            return d;
        }
        let mut acc = 0u64;
        for n in self.nodes.iter(&t.map) {
            if n.body.is_alive() || n.body.floor() != 0 {
                acc = acc.wrapping_add(crate::digest::mix(
                    crate::digest::mix_bytes(0, &n.key),
                    n.body.view().digest(),
                ));
            }
        }
        t.digest = Some(acc);
        acc
    }

    /// Digest of one key's state (anti-entropy key-level comparison); 0 when absent.
    pub fn key_digest(&self, key: &[u8]) -> u64 {
        match self
            .table(key_slot(key))
            .and_then(|t| self.nodes.get(&t.map, key))
        {
            Some(n) if n.body.is_alive() || n.body.floor() != 0 => n.body.view().digest(),
            _ => 0,
        }
    }

    /// Drop metadata every region has seen: dead members/fields/TTLs whose dots are at or
    /// below `stable(region)`, and whole tombstone keys — once the removals that killed them
    /// are stable too (see [`Entry::gc`](crate::Entry::gc) for what `stable` must mean).
    pub fn gc(&mut self, stable: &impl Fn(RegionId) -> Hlc) -> usize {
        if self.stats.tombstones == 0 && !self.cfg.retain_tombstones {
            return 0;
        }
        let mut dropped = 0;
        let mut bytes_delta: isize = 0;
        for slot in self.slots.iter_mut() {
            let Some(t) = slot.as_deref_mut() else {
                continue;
            };
            self.nodes.retain(&mut t.map, |n| {
                // A packed value has nothing dead in it: no tombstone, TTL or reset to collect.
                if matches!(n.body, Stored::Str { .. } | Stored::Ctr { .. }) {
                    return true;
                }
                let before = node_bytes(n) as isize;
                let mut opened = n.body_open();
                let e = opened.entry();
                if e.is_stable_tombstone(stable) {
                    dropped += 1;
                    bytes_delta -= before;
                    return false;
                }
                e.gc(stable, false);
                drop(opened);
                bytes_delta += node_bytes(n) as isize - before;
                true
            });
            if t.map.is_empty() {
                *slot = None;
            }
        }
        self.stats.tombstones -= dropped;
        self.stats.bytes = (self.stats.bytes as isize + bytes_delta).max(0) as usize;
        dropped
    }

    /// Total metadata elements (members, fields, TTL entries, tombstone keys): for checking
    /// that metadata stays bounded.
    pub fn metadata_elements(&self) -> usize {
        let mut n = 0;
        for t in self.slots.iter().flatten() {
            for node in self.nodes.iter(&t.map) {
                let e = node.body.view();
                n += 1 + e.expiry().entries().len();
                for c in e.components() {
                    n += match &c.val {
                        crate::entry::Val::Set(s) => s.element_count(),
                        crate::entry::Val::Hash(h) => h.element_count(),
                        crate::entry::Val::List(l) => l.element_count(),
                        crate::entry::Val::ZSet(z) => z.element_count(),
                        crate::entry::Val::Str(s) => s.ctr.len(),
                    };
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use crate::keyspace::tests::*;
    use crate::slot::key_slot;

    #[test]
    fn slot_digest_is_cached_and_follows_changes() {
        let mut w = Writer::new(1, true);
        let slot = key_slot(b"{t}a");
        assert_eq!(w.ks.slot_digest(slot), 0);
        w.set("{t}a", 10, None);
        let d1 = w.ks.slot_digest(slot);
        assert_eq!(w.ks.slot_digest(slot), d1);
        w.ks.get(b"{t}a", 20);
        assert_eq!(w.ks.slot_digest(slot), d1, "reads do not change the digest");
        w.set("{t}b", 10, None);
        let d2 = w.ks.slot_digest(slot);
        assert_ne!(d2, d1);
        w.write("{t}b", 30, |w| w.delete());
        assert_eq!(
            w.ks.slot_digest(slot),
            d1,
            "the digest covers live state only"
        );
    }
}
