//! Per-slot access (resharding, anti-entropy) and SCAN by slot.

use super::tables::slot_index;
use super::Keyspace;
use crate::entry::Entry;
use crate::slot::SLOT_COUNT;
use std::borrow::Cow;

impl Keyspace {
    pub fn slot_len(&self, slot: u16) -> usize {
        self.table(slot).map_or(0, |t| t.alive)
    }

    /// Live keys of a slot (expired-but-unreclaimed ones filtered by `now_ms`).
    pub fn slot_keys(
        &self,
        slot: u16,
        now_ms: u64,
    ) -> impl Iterator<Item = (&[u8], Cow<'_, Entry>)> {
        self.table(slot)
            .into_iter()
            .flat_map(|t| self.nodes.iter(&t.map))
            .filter(move |n| n.body.is_alive() && !n.body.is_expired(now_ms))
            .map(|n| (&n.key[..], n.body.view()))
    }

    /// Every entry of a slot, tombstones included (anti-entropy ships them too).
    pub fn slot_entries(&self, slot: u16) -> impl Iterator<Item = (&[u8], Cow<'_, Entry>)> {
        self.table(slot)
            .into_iter()
            .flat_map(|t| self.nodes.iter(&t.map))
            .map(|n| (&n.key[..], n.body.view()))
    }

    /// Iterate live keys in slot order starting at `cursor` (a slot number), visiting whole
    /// slots until at least `count` keys were visited. Returns the next cursor (0 = done).
    pub fn scan(
        &self,
        cursor: u64,
        count: usize,
        now_ms: u64,
        mut visit: impl FnMut(&[u8], &Entry),
    ) -> u64 {
        let mut slot = cursor as usize;
        let mut seen = 0;
        while slot < SLOT_COUNT {
            if let Some(t) = self.slots[slot_index(slot as u16)].as_deref() {
                for n in self.nodes.iter(&t.map) {
                    if n.body.is_alive() && !n.body.is_expired(now_ms) {
                        visit(&n.key, &n.body.view());
                        seen += 1;
                    }
                }
            }
            slot += 1;
            if seen >= count {
                break;
            }
        }
        if slot >= SLOT_COUNT {
            0
        } else {
            slot as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::keyspace::tests::*;
    use crate::slot::{key_slot, SLOT_COUNT};
    use bytes::Bytes;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

        /// Every key present throughout a full scan is returned at least once, whatever the
        /// COUNT and whatever other keys come and go during the scan; nothing else is returned.
        #[test]
        fn scan_returns_every_key_present_throughout(
            stable in prop::collection::btree_set("[a-z]{1,6}", 0..60),
            churn in prop::collection::vec(("[A-Z]{1,6}", any::<bool>()), 0..40),
            count in 1usize..50,
        ) {
            let mut w = Writer::new(1, true);
            for k in &stable {
                w.set(k, 1_000, None);
            }
            let mut seen = std::collections::BTreeSet::new();
            let mut cursor = 0;
            let mut churn = churn.into_iter();
            let mut calls = 0;
            loop {
                cursor = w.ks.scan(cursor, count, 1_000, |k, _| {
                    seen.insert(String::from_utf8(k.to_vec()).unwrap());
                });
                calls += 1;
                prop_assert!(calls <= SLOT_COUNT + 1);
                if let Some((k, add)) = churn.next() {
                    if add {
                        w.set(&k, 1_000, None);
                    } else {
                        w.write(&k, 1_000, |w| w.delete());
                    }
                }
                if cursor == 0 {
                    break;
                }
            }
            for k in &stable {
                prop_assert!(seen.contains(k), "{} missed", k);
            }
            for k in &seen {
                prop_assert!(stable.contains(k) || k.chars().all(|c| c.is_ascii_uppercase()));
            }
            assert_consistent(&w.ks);
        }
    }

    #[test]
    fn scan_skips_expired_and_deleted_keys() {
        let mut w = Writer::new(1, true);
        w.set("live", 10, None);
        w.set("old", 10, Some(100));
        w.set("gone", 10, None);
        w.write("gone", 11, |w| w.delete());
        let mut seen = Vec::new();
        let cursor = w.ks.scan(0, 1_000_000, 100, |k, _| {
            seen.push(Bytes::copy_from_slice(k))
        });
        assert_eq!(cursor, 0);
        assert_eq!(seen, vec![bytes("live")]);
    }

    #[test]
    fn slot_access_and_drop_slot() {
        let mut w = Writer::new(1, true);
        let slot = tag_slot();
        for k in &TAG_SLOT_KEYS[..3] {
            w.set(k, 10, None);
        }
        w.set(TAG_SLOT_KEYS[3], 10, Some(100));
        w.set(TAG_SLOT_KEYS[4], 10, None);
        w.write(TAG_SLOT_KEYS[4], 11, |w| w.delete());
        w.set("elsewhere", 10, Some(1_000));
        assert_ne!(key_slot(b"elsewhere"), slot);
        assert_eq!(w.ks.slot_len(slot), 4);
        let mut live: Vec<Bytes> =
            w.ks.slot_keys(slot, 50)
                .map(|(k, _)| Bytes::copy_from_slice(k))
                .collect();
        live.sort();
        assert_eq!(live.len(), 4);
        let at_deadline = w.ks.slot_keys(slot, 100).count();
        assert_eq!(at_deadline, 3, "slot_keys filters keys past their deadline");
        assert_eq!(
            w.ks.slot_len(slot),
            4,
            "slot_len counts them until reclaimed"
        );
        assert_eq!(
            w.ks.slot_entries(slot).count(),
            5,
            "slot_entries includes tombstones"
        );
        assert_eq!(w.ks.stats().tombstones, 1);
        assert_eq!(w.ks.stats().volatile, 2);
        assert_ne!(w.ks.slot_digest(slot), 0);

        assert_eq!(w.ks.drop_slot(slot), 4);
        assert_eq!(w.ks.slot_len(slot), 0);
        assert_eq!(w.ks.slot_keys(slot, 50).count(), 0);
        assert_eq!(w.ks.slot_digest(slot), 0);
        assert_eq!(w.ks.len(), 1);
        assert_eq!(w.ks.stats().tombstones, 0);
        assert_eq!(w.ks.stats().volatile, 1);
        assert!(w.ks.get(b"elsewhere", 50).is_some());
        assert_eq!(
            w.ks.drop_slot(slot),
            0,
            "dropping an absent slot is a no-op"
        );
        assert_consistent(&w.ks);
    }
}
