//! Sampled eviction under one of Redis' eight policies, and `random_key`: local memory
//! management, never a delta.

use super::slab::Node;
use super::tables::slot_index;
use super::{lfu_decayed, lru_idle_ms, Keyspace};
use crate::packed::Key;
use crate::slot::{key_slot, SLOT_COUNT};
use bytes::Bytes;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EvictionPolicy {
    NoEviction,
    AllKeysLru,
    AllKeysLfu,
    AllKeysRandom,
    VolatileLru,
    VolatileLfu,
    VolatileRandom,
    VolatileTtl,
}

impl EvictionPolicy {
    pub const ALL: [(EvictionPolicy, &'static str); 8] = [
        (EvictionPolicy::NoEviction, "noeviction"),
        (EvictionPolicy::AllKeysLru, "allkeys-lru"),
        (EvictionPolicy::AllKeysLfu, "allkeys-lfu"),
        (EvictionPolicy::AllKeysRandom, "allkeys-random"),
        (EvictionPolicy::VolatileLru, "volatile-lru"),
        (EvictionPolicy::VolatileLfu, "volatile-lfu"),
        (EvictionPolicy::VolatileRandom, "volatile-random"),
        (EvictionPolicy::VolatileTtl, "volatile-ttl"),
    ];

    pub fn parse(name: &str) -> Option<EvictionPolicy> {
        Self::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(p, _)| *p)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map_or("noeviction", |(_, n)| n)
    }

    fn volatile_only(self) -> bool {
        matches!(
            self,
            EvictionPolicy::VolatileLru
                | EvictionPolicy::VolatileLfu
                | EvictionPolicy::VolatileRandom
                | EvictionPolicy::VolatileTtl
        )
    }
}

impl Keyspace {
    /// Evict one key locally (simulator fault / eviction). Returns bytes freed.
    pub fn evict_key(&mut self, key: &[u8]) -> usize {
        self.reclaim(key_slot(key), key, false)
    }

    /// Evict one key chosen by `policy` among `samples` random candidates. Returns the bytes
    /// freed, or `None` when nothing is evictable under the policy.
    pub fn evict_one(
        &mut self,
        policy: EvictionPolicy,
        samples: usize,
        now_ms: u64,
        rng: &mut impl FnMut() -> u64,
    ) -> Option<usize> {
        if policy == EvictionPolicy::NoEviction || self.stats.keys == 0 {
            return None;
        }
        if policy.volatile_only() && self.stats.volatile == 0 {
            return None;
        }
        let mut best: Option<(u64, u16, Key)> = None;
        for _ in 0..samples.max(1) {
            let Some((slot, n)) = self.sample(rng(), policy.volatile_only()) else {
                break;
            };
            let score = match policy {
                EvictionPolicy::AllKeysLru | EvictionPolicy::VolatileLru => {
                    u64::from(lru_idle_ms(&n.access, now_ms))
                }
                EvictionPolicy::AllKeysLfu | EvictionPolicy::VolatileLfu => {
                    u64::from(u8::MAX - lfu_decayed(&n.access, now_ms))
                }
                EvictionPolicy::VolatileTtl => u64::MAX - n.body.deadline_ms().unwrap_or(u64::MAX),
                _ => rng(),
            };
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, slot, n.key.clone()));
            }
        }
        let (_, slot, key) = best?;
        Some(self.reclaim(slot, &key, false))
    }

    pub(super) fn sample(&self, r: u64, volatile_only: bool) -> Option<(u16, &Node)> {
        let start = (r % SLOT_COUNT as u64) as usize;
        for i in 0..SLOT_COUNT {
            let slot = (start + i) % SLOT_COUNT;
            let Some(t) = self.slots[slot_index(slot as u16)].as_deref() else {
                continue;
            };
            let n = if volatile_only { t.volatile } else { t.alive };
            if n == 0 {
                continue;
            }
            let pick = ((r >> 14) % n as u64) as usize;
            return self
                .nodes
                .iter(&t.map)
                .filter(|n| n.body.is_alive() && (!volatile_only || n.body.deadline_ms().is_some()))
                .nth(pick)
                .map(|n| (slot as u16, n));
        }
        None
    }

    /// A random live key (RANDOMKEY); `r` is the caller's random number.
    pub fn random_key(&self, r: u64, now_ms: u64) -> Option<Bytes> {
        for attempt in 0..16u64 {
            let (_, n) = self.sample(r.rotate_left(attempt as u32 * 7), false)?;
            if !n.body.is_expired(now_ms) {
                return Some(Bytes::copy_from_slice(&n.key));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::keyspace::tests::*;
    use crate::keyspace::EvictionPolicy;

    /// An "rng" that makes `sample` visit every key of `slot`, one per call, in table order.
    fn slot_walker(slot: u16) -> impl FnMut() -> u64 {
        let mut i = 0u64;
        move || {
            let r = (i << 14) | u64::from(slot);
            i += 1;
            r
        }
    }

    #[test]
    fn noeviction_never_evicts() {
        let mut w = Writer::new(1, true);
        for k in TAG_SLOT_KEYS {
            w.set(k, 1_000, None);
        }
        let mut rng = slot_walker(tag_slot());
        assert_eq!(
            w.ks.evict_one(EvictionPolicy::NoEviction, 5, 1_000, &mut rng),
            None
        );
        assert_eq!(w.ks.len(), 5);
    }

    #[test]
    fn lru_evicts_the_least_recently_touched_sample() {
        for policy in [EvictionPolicy::AllKeysLru, EvictionPolicy::VolatileLru] {
            let mut w = Writer::new(1, true);
            for (i, k) in TAG_SLOT_KEYS.iter().enumerate() {
                w.set(k, 1_000 * (i as u64 + 1) * 10, Some(1 << 40));
            }
            // "{t}a" was written first but read last: "{t}b" is now the least recent.
            assert!(w.ks.get(b"{t}a", 100_000).is_some());
            let mut rng = slot_walker(tag_slot());
            let freed = w.ks.evict_one(policy, 5, 100_000, &mut rng);
            assert!(freed.is_some_and(|b| b > 0), "{policy:?}");
            assert!(
                w.ks.raw_entry(b"{t}b").is_none(),
                "{policy:?} evicts the LRU key"
            );
            assert_eq!(w.ks.len(), 4);
            assert_eq!(w.ks.stats().evicted, 1);
            assert_eq!(w.ks.pending_deltas(), 5, "eviction yields no delta");
            assert_consistent(&w.ks);
        }
    }

    #[test]
    fn lfu_evicts_the_least_frequently_used_sample() {
        for policy in [EvictionPolicy::AllKeysLfu, EvictionPolicy::VolatileLfu] {
            let mut w = Writer::new(1, true);
            for k in TAG_SLOT_KEYS {
                w.set(k, 1_000, Some(1 << 40));
            }
            for k in TAG_SLOT_KEYS.iter().filter(|k| **k != "{t}c") {
                for _ in 0..50 {
                    w.ks.get(k.as_bytes(), 1_000);
                }
            }
            let mut rng = slot_walker(tag_slot());
            assert!(w.ks.evict_one(policy, 5, 1_000, &mut rng).is_some());
            assert!(
                w.ks.raw_entry(b"{t}c").is_none(),
                "{policy:?} evicts the cold key"
            );
            assert_consistent(&w.ks);
        }
    }

    #[test]
    fn volatile_ttl_evicts_the_nearest_deadline() {
        let mut w = Writer::new(1, true);
        let deadlines = [50_000, 20_000, 90_000, 30_000];
        for (k, d) in TAG_SLOT_KEYS.iter().zip(deadlines) {
            w.set(k, 1_000, Some(d));
        }
        w.set(TAG_SLOT_KEYS[4], 1_000, None);
        let mut rng = slot_walker(tag_slot());
        assert!(w
            .ks
            .evict_one(EvictionPolicy::VolatileTtl, 5, 1_000, &mut rng)
            .is_some());
        assert!(w.ks.raw_entry(b"{t}b").is_none());
        let mut rng = slot_walker(tag_slot());
        w.ks.evict_one(EvictionPolicy::VolatileTtl, 5, 1_000, &mut rng);
        assert!(w.ks.raw_entry(b"{t}d").is_none());
        assert_consistent(&w.ks);
    }

    #[test]
    fn volatile_policies_never_evict_keys_without_ttl() {
        let volatile_policies = [
            EvictionPolicy::VolatileLru,
            EvictionPolicy::VolatileLfu,
            EvictionPolicy::VolatileRandom,
            EvictionPolicy::VolatileTtl,
        ];
        for policy in volatile_policies {
            let mut w = Writer::new(1, true);
            let plain = keys_in_distinct_slots("p", 6);
            for k in &plain {
                w.set(k, 1_000, None);
            }
            let mut x = 7u64;
            let mut rng = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            assert_eq!(
                w.ks.evict_one(policy, 5, 1_000, &mut rng),
                None,
                "{policy:?}"
            );
            for k in TAG_SLOT_KEYS {
                w.set(k, 1_000, Some(1 << 40));
            }
            let mut evicted = 0;
            while w.ks.evict_one(policy, 3, 1_000, &mut rng).is_some() {
                evicted += 1;
                assert!(evicted <= TAG_SLOT_KEYS.len());
            }
            assert_eq!(
                evicted,
                TAG_SLOT_KEYS.len(),
                "{policy:?} evicts every volatile key"
            );
            assert_eq!(
                w.ks.len(),
                plain.len(),
                "{policy:?} keeps every key without TTL"
            );
            for k in &plain {
                assert!(w.ks.raw_entry(k.as_bytes()).is_some());
            }
            assert_consistent(&w.ks);
        }
    }

    #[test]
    fn allkeys_random_evicts_until_empty() {
        let mut w = Writer::new(1, false);
        for k in keys_in_distinct_slots("r", 8) {
            w.set(&k, 1_000, None);
        }
        let mut x = 99u64;
        let mut rng = move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            x
        };
        let mut n = 0;
        while w
            .ks
            .evict_one(EvictionPolicy::AllKeysRandom, 5, 1_000, &mut rng)
            .is_some()
        {
            n += 1;
        }
        assert_eq!(n, 8);
        assert!(w.ks.is_empty());
        assert_eq!(w.ks.stats().bytes, 0);
        assert_consistent(&w.ks);
    }

    #[test]
    fn eviction_policy_names_round_trip() {
        for (p, name) in EvictionPolicy::ALL {
            assert_eq!(EvictionPolicy::parse(name), Some(p));
            assert_eq!(EvictionPolicy::parse(&name.to_uppercase()), Some(p));
            assert_eq!(p.name(), name);
        }
        assert_eq!(EvictionPolicy::parse("lru"), None);
    }
}
