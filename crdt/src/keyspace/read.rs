//! Lookups: `peek` (no side effect), `get` (lazy expiry, access recorded), `raw_entry`, and the
//! staged `prefetch` hints a pipeline issues for its next requests.

use super::slab::Node;
use super::tables::{prefetch, slot_index, Prefetch};
use super::{lfu_decayed, lru_idle_ms, touch, Keyspace, LFU_INIT};
use crate::entry::Entry;
use crate::packed::Stored;
use crate::slot::key_slot;
use crate::CrdtError;
use bytes::Bytes;
use std::borrow::Cow;

impl Keyspace {
    /// Lookup hints for a pipeline: a connection runs one command while it prefetches for
    /// the next ones, so their cache misses overlap instead of queueing. Each stage needs
    /// what the previous one (issued a command earlier) brought into cache: the slot's
    /// table, then the key's node (this stage reads the table's buckets), then the value.
    /// They never change state, and a wrong or absent key just fetches nothing useful.
    /// `element` (a member or field the command names after the key) is probed for in the
    /// key's set or hash at the value stage, its candidate buckets prefetched rather than
    /// compared: their misses (a 100 k-field hash) then overlap with the commands before it.
    pub fn prefetch(&self, stage: Prefetch, slot: u16, key: &[u8], element: Option<&[u8]>) {
        let Some(Some(t)) = self.slots.get(slot_index(slot)) else {
            return;
        };
        match stage {
            Prefetch::Table => prefetch(&**t),
            Prefetch::Node => {
                let slab = &self.nodes.slab;
                // An `eq` that prefetches each candidate and matches none: one probe.
                let _ = t.map.nodes.find(self.nodes.hash(key), |&i| {
                    prefetch(slab.addr(i));
                    false
                });
            }
            Prefetch::Value => {
                if let Some(n) = self.nodes.get(&t.map, key) {
                    match &n.body {
                        Stored::Str { value, .. } => prefetch(value.as_ptr()),
                        Stored::Full(b) => match element {
                            Some(e) => b.components().iter().for_each(|c| match &c.val {
                                crate::entry::Val::Set(s) => s.prefetch(e),
                                crate::entry::Val::Hash(h) => h.prefetch(e),
                                crate::entry::Val::Str(_) | crate::entry::Val::List(_) => {}
                                crate::entry::Val::ZSet(z) => z.prefetch(e),
                            }),
                            None => prefetch(&**b),
                        },
                        _ => {}
                    }
                }
            }
        }
    }

    /// Read-only lookup; an expired key reads as absent (it is reclaimed by `get` or expiry).
    pub fn peek(&self, key: &[u8], now_ms: u64) -> Option<Cow<'_, Entry>> {
        let n = self.nodes.get(&self.table(key_slot(key))?.map, key)?;
        (n.body.is_alive() && !n.body.is_expired(now_ms)).then(|| n.body.view())
    }

    /// Lookup for a command: reclaims the key if its TTL passed and records the access.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<Cow<'_, Entry>> {
        self.get_in(key_slot(key), key, now_ms)
    }

    /// [`Keyspace::get`] for a caller that already knows the key's slot.
    pub fn get_in(&mut self, slot: u16, key: &[u8], now_ms: u64) -> Option<Cow<'_, Entry>> {
        self.touch_live(slot, key, now_ms).map(|n| n.body.view())
    }

    /// `GET`: the visible string value of a live key (`Ok(None)`: a string with no visible
    /// value), `Err(WrongType)` for other kinds, `None` when absent; lookup, expiry and
    /// access tracking as [`Keyspace::get_in`]. A packed string is copied out directly,
    /// without rebuilding its entry.
    pub fn get_string_in(
        &mut self,
        slot: u16,
        key: &[u8],
        now_ms: u64,
    ) -> Option<Result<Option<Bytes>, CrdtError>> {
        self.touch_live(slot, key, now_ms)
            .map(|n| n.body.string_value())
    }

    /// The node of a live key, its access recorded; an expired key is reclaimed (`None`).
    pub(super) fn touch_live(&mut self, slot: u16, key: &[u8], now_ms: u64) -> Option<&mut Node> {
        debug_assert_eq!(slot, key_slot(key));
        let h = self.nodes.hash(key);
        let (alive, expired) = match self
            .table(slot)
            .and_then(|t| self.nodes.get_hashed(&t.map, h, key))
        {
            None => return None,
            Some(n) => (n.body.is_alive(), n.body.is_expired(now_ms)),
        };
        if !alive {
            return None;
        }
        if expired {
            self.reclaim(slot, key, true);
            return None;
        }
        let coin = self.next_coin();
        let table = self.slots[slot_index(slot)].as_deref()?;
        let n = self.nodes.get_mut_hashed(&table.map, h, key)?;
        touch(&mut n.access, now_ms, coin);
        Some(n)
    }

    pub fn exists(&mut self, key: &[u8], now_ms: u64) -> bool {
        self.get(key, now_ms).is_some()
    }

    /// `OBJECT IDLETIME|FREQ`: a live key's milliseconds since its last access and its LFU
    /// counter (decayed to `now_ms`), without recording an access.
    pub fn access_of(&self, key: &[u8], now_ms: u64) -> Option<(u64, u8)> {
        let n = self.nodes.get(&self.table(key_slot(key))?.map, key)?;
        if !n.body.is_alive() || n.body.is_expired(now_ms) {
            return None;
        }
        let lfu = if n.access.lru_ms == 0 && n.access.lfu == 0 {
            LFU_INIT
        } else {
            lfu_decayed(&n.access, now_ms)
        };
        Some((u64::from(lru_idle_ms(&n.access, now_ms)), lfu))
    }

    /// Raw entry (tombstones included) for anti-entropy.
    pub fn raw_entry(&self, key: &[u8]) -> Option<Cow<'_, Entry>> {
        let t = self.table(key_slot(key))?;
        Some(self.nodes.get(&t.map, key)?.body.view())
    }
}
