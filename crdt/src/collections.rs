//! Add-wins OR-set (Redis sets) and OR-map of [`Str`] fields (Redis hashes).
//!
//! A set member carries [`Dots`]: one entry per region that added it. `SADD` gives the local
//! region's entry a fresh dot, `SREM` kills the entries it observed, so an add concurrent with
//! a remove survives (add-wins). A hash field is a [`Str`]: LWW for `HSET`, a counter after
//! `HINCRBY`, observed-remove for `HDEL`. Dead members and fields are tombstones kept until
//! every region has seen them (see `gc`).

use crate::dots::Dots;
use crate::elements::Elements;
use crate::hlc::{Hlc, RegionId, Stamp};
use crate::strval::{Register, Str};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub const ELEMENT_OVERHEAD_BYTES: usize = 64;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OrSet {
    members: Elements<Dots<()>>,
    #[serde(skip)]
    alive: usize,
    #[serde(skip)]
    heap_bytes: usize,
}

impl PartialEq for OrSet {
    fn eq(&self, other: &Self) -> bool {
        self.members == other.members
    }
}
impl Eq for OrSet {}

impl OrSet {
    pub fn len(&self) -> usize {
        self.alive
    }

    pub fn is_empty(&self) -> bool {
        self.alive == 0
    }

    pub fn contains(&self, member: &[u8]) -> bool {
        self.members.get(member).is_some_and(Dots::is_alive)
    }

    /// A lookup hint (see `Keyspace::prefetch`): probes for `member`, which brings its
    /// bucket into cache.
    pub(crate) fn prefetch(&self, member: &[u8]) {
        self.members.prefetch(member);
    }

    pub fn members(&self) -> impl Iterator<Item = &[u8]> {
        self.members
            .iter()
            .filter(|(_, d)| d.is_alive())
            .map(|(m, _)| &m[..])
    }

    /// All members including tombstones (for deltas and anti-entropy).
    pub fn raw(&self) -> impl Iterator<Item = (&[u8], &Dots<()>)> {
        self.members.iter().map(|(m, d)| (&m[..], d))
    }

    pub fn element_count(&self) -> usize {
        self.members.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.heap_bytes
    }

    /// The member's dots, created empty if absent. The set keeps its own copy of a new
    /// member's bytes (a member never pins a request buffer); a present one costs no copy.
    fn slot_for(&mut self, member: &[u8]) -> &mut Dots<()> {
        element(&mut self.members, &mut self.heap_bytes, member).0
    }

    /// `SADD`: returns whether the member was absent, and the delta: a one-member set.
    pub fn add(&mut self, stamp: Stamp, member: &[u8]) -> (bool, OrSet) {
        let (dots, hash) = element(&mut self.members, &mut self.heap_bytes, member);
        let was = dots.is_alive();
        dots.set(stamp.region, stamp.hlc, ());
        let delta = OrSet {
            alive: usize::from(dots.is_alive()),
            heap_bytes: member.len() + ELEMENT_OVERHEAD_BYTES,
            members: Elements::one(member, hash, dots.clone()),
        };
        if !was {
            self.alive += 1;
        }
        (!was, delta)
    }

    /// `SREM`: observed remove. Returns the killed dots (the delta) if the member was present.
    pub fn remove(&mut self, member: &[u8]) -> Option<Dots<()>> {
        let dots = self.members.get_mut(member)?;
        if !dots.kill_all() {
            return None;
        }
        self.alive -= 1;
        Some(dots.clone())
    }

    /// Physically drop a dead member (single-region mode keeps no tombstones).
    pub fn forget_if_dead(&mut self, member: &[u8]) {
        if self.members.get(member).is_some_and(|d| !d.is_alive()) {
            if let Some((m, _)) = self.members.remove_entry(member) {
                self.heap_bytes -= m.len() + ELEMENT_OVERHEAD_BYTES;
            }
        }
    }

    pub fn merge_member(&mut self, member: &[u8], theirs: &Dots<()>) -> bool {
        let dots = self.slot_for(member);
        let was = dots.is_alive();
        let changed = dots.merge(theirs);
        let now = dots.is_alive();
        match (was, now) {
            (false, true) => self.alive += 1,
            (true, false) => self.alive -= 1,
            _ => {}
        }
        changed
    }

    pub fn merge(&mut self, other: &OrSet) -> bool {
        let mut changed = false;
        for (m, d) in other.members.iter() {
            changed |= self.merge_member(m, d);
        }
        changed
    }

    /// Observed remove of every member; returns the killed members (the delta).
    pub fn kill_all(&mut self) -> OrSet {
        let mut delta = OrSet::default();
        for (m, d) in self.members.iter_mut() {
            if d.kill_all() {
                delta.merge_member(m, d);
            }
        }
        self.alive = 0;
        delta
    }

    pub fn gc(&mut self, stable: &impl Fn(RegionId) -> Hlc, keep_alive_only: bool) {
        let mut freed = 0;
        self.members.retain(|m, d| {
            d.gc(stable);
            let keep = !d.is_empty() && (d.is_alive() || !keep_alive_only);
            if !keep {
                freed += m.len() + ELEMENT_OVERHEAD_BYTES;
            }
            keep
        });
        self.heap_bytes -= freed;
    }

    /// Recompute derived counters after deserialisation.
    pub fn rebuild(&mut self) {
        self.alive = self.members.values().filter(|d| d.is_alive()).count();
        self.heap_bytes = self
            .members
            .keys()
            .map(|m| m.len() + ELEMENT_OVERHEAD_BYTES)
            .sum::<usize>();
    }

    pub fn max_hlc(&self) -> Hlc {
        self.members
            .values()
            .map(Dots::max_hlc)
            .max()
            .unwrap_or(Hlc::ZERO)
    }

    pub(crate) fn digest(&self, h: u64) -> u64 {
        // Order-independent: sum of per-member hashes.
        let mut acc: u64 = 0;
        for (m, d) in self.members.iter() {
            let mut x = crate::digest::mix_bytes(0x5e7, m);
            let mut any = false;
            for e in d.alive() {
                any = true;
                x = crate::digest::mix(x, u64::from(e.region.0));
                x = crate::digest::mix(x, e.hlc.0);
            }
            if any {
                acc = acc.wrapping_add(x);
            }
        }
        crate::digest::mix(h, acc)
    }
}

/// A member's or field's state, created empty (and counted in `heap_bytes`) if absent, and
/// the element's hash (for a one-element delta built next: [`Elements::one`]). The
/// collection keeps its own copy of a new element's bytes, so an element never pins a
/// request or frame buffer.
fn element<'a, V: Default>(
    map: &'a mut Elements<V>,
    heap_bytes: &mut usize,
    key: &[u8],
) -> (&'a mut V, u64) {
    let (v, h, new) = map.element(key, V::default);
    if new {
        *heap_bytes += key.len() + ELEMENT_OVERHEAD_BYTES;
    }
    (v, h)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OrMap {
    fields: Elements<Str>,
    #[serde(skip)]
    alive: usize,
    #[serde(skip)]
    heap_bytes: usize,
}

impl PartialEq for OrMap {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields
    }
}
impl Eq for OrMap {}

impl OrMap {
    pub fn len(&self) -> usize {
        self.alive
    }

    pub fn is_empty(&self) -> bool {
        self.alive == 0
    }

    pub fn get(&self, field: &[u8]) -> Option<&Str> {
        self.fields.get(field).filter(|s| s.is_alive())
    }

    /// A lookup hint (see `Keyspace::prefetch` and `Elements::prefetch`).
    pub(crate) fn prefetch(&self, field: &[u8]) {
        self.fields.prefetch(field);
    }

    /// A field's state even when dead (its tombstone).
    pub fn raw_get(&self, field: &[u8]) -> Option<&Str> {
        self.fields.get(field)
    }

    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &Str)> {
        self.raw().filter(|(_, s)| s.is_alive())
    }

    pub fn raw(&self) -> impl Iterator<Item = (&[u8], &Str)> {
        self.fields.iter().map(|(f, s)| (&f[..], s))
    }

    pub fn element_count(&self) -> usize {
        self.fields.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.heap_bytes
    }

    /// Run a local update on one field; returns (was alive, result, field state for the delta).
    pub fn update<R>(&mut self, field: &[u8], f: impl FnOnce(&mut Str) -> R) -> (bool, R, Str) {
        let (slot, _) = element(&mut self.fields, &mut self.heap_bytes, field);
        let was = slot.is_alive();
        let before = slot.heap_bytes();
        let r = f(slot);
        let now = slot.is_alive();
        let after = slot.heap_bytes();
        let state = slot.clone();
        self.heap_bytes = self.heap_bytes + after - before;
        match (was, now) {
            (false, true) => self.alive += 1,
            (true, false) => self.alive -= 1,
            _ => {}
        }
        if !now && state == Str::default() {
            self.forget(field);
        }
        (was, r, state)
    }

    /// `HDEL`: observed remove of one field; returns its tombstone (the delta) if it was present.
    pub fn remove(&mut self, field: &[u8]) -> Option<Str> {
        let slot = self.fields.get_mut(field)?;
        let before = slot.heap_bytes();
        if !slot.remove() {
            return None;
        }
        self.heap_bytes = self.heap_bytes + slot.heap_bytes() - before;
        self.alive -= 1;
        Some(slot.clone())
    }

    pub fn forget_if_dead(&mut self, field: &[u8]) {
        if self.fields.get(field).is_some_and(|s| !s.is_alive()) {
            self.forget(field);
        }
    }

    fn forget(&mut self, field: &[u8]) {
        if let Some((f, s)) = self.fields.remove_entry(field) {
            self.heap_bytes -= f.len() + ELEMENT_OVERHEAD_BYTES + s.heap_bytes();
        }
    }

    /// `HSET` of one field to a value held in a request buffer: the map stores its own
    /// copies (of the field only when it is new); the returned delta state carries `value`
    /// itself. Returns whether the field was present, and the delta: a one-field map.
    pub fn set_field(&mut self, field: &[u8], stamp: Stamp, value: Bytes) -> (bool, OrMap) {
        let (slot, hash) = element(&mut self.fields, &mut self.heap_bytes, field);
        let was = slot.is_alive();
        let before = slot.heap_bytes();
        slot.set(stamp, Bytes::copy_from_slice(&value));
        self.heap_bytes = self.heap_bytes + slot.heap_bytes() - before;
        if !was {
            self.alive += 1;
        }
        let state = Str {
            reg: Register {
                stamp: slot.reg.stamp,
                value: Some(value),
                version: slot.reg.version,
            },
            ctr: slot.ctr.clone(),
        };
        let delta = OrMap {
            alive: usize::from(state.is_alive()),
            heap_bytes: field.len() + ELEMENT_OVERHEAD_BYTES + state.heap_bytes(),
            fields: Elements::one(field, hash, state),
        };
        (was, delta)
    }

    pub fn merge_field(&mut self, field: &[u8], theirs: &Str) -> bool {
        let (slot, _) = element(&mut self.fields, &mut self.heap_bytes, field);
        let was = slot.is_alive();
        let before = slot.heap_bytes();
        let changed = slot.merge(theirs);
        let now = slot.is_alive();
        self.heap_bytes = self.heap_bytes + slot.heap_bytes() - before;
        match (was, now) {
            (false, true) => self.alive += 1,
            (true, false) => self.alive -= 1,
            _ => {}
        }
        changed
    }

    pub fn merge(&mut self, other: &OrMap) -> bool {
        let mut changed = false;
        for (f, s) in other.fields.iter() {
            changed |= self.merge_field(f, s);
        }
        changed
    }

    pub fn kill_all(&mut self) -> OrMap {
        let mut delta = OrMap::default();
        let mut heap_bytes = self.heap_bytes;
        for (f, s) in self.fields.iter_mut() {
            let before = s.heap_bytes();
            if s.remove() {
                delta.merge_field(f, s);
            }
            heap_bytes = heap_bytes + s.heap_bytes() - before;
        }
        self.heap_bytes = heap_bytes;
        self.alive = 0;
        delta
    }

    /// Drop dead fields every region has seen. A dead field's counter contributions are
    /// dropped with it: every region has observed the reset, so none can count them again.
    pub fn gc(&mut self, stable: &impl Fn(RegionId) -> Hlc, keep_alive_only: bool) {
        let mut freed = 0;
        self.fields.retain(|f, s| {
            let keep = s.is_alive() || (!keep_alive_only && s.max_hlc() > stable_min(s, stable));
            if !keep {
                freed += f.len() + ELEMENT_OVERHEAD_BYTES + s.heap_bytes();
            }
            keep
        });
        self.heap_bytes -= freed;
    }

    pub fn rebuild(&mut self) {
        self.alive = self.fields.values().filter(|s| s.is_alive()).count();
        self.heap_bytes = self
            .fields
            .iter()
            .map(|(f, s)| f.len() + ELEMENT_OVERHEAD_BYTES + s.heap_bytes())
            .sum();
    }

    pub fn max_hlc(&self) -> Hlc {
        self.fields
            .values()
            .map(Str::max_hlc)
            .max()
            .unwrap_or(Hlc::ZERO)
    }

    pub(crate) fn digest(&self, h: u64) -> u64 {
        let mut acc: u64 = 0;
        for (f, s) in self.fields.iter() {
            if s.is_alive() {
                acc = acc.wrapping_add(s.digest(crate::digest::mix_bytes(0x4a5, f)));
            }
        }
        crate::digest::mix(h, acc)
    }
}

/// A dead field is stable once every region whose HLC appears in it has been seen past it.
fn stable_min(s: &Str, stable: &impl Fn(RegionId) -> Hlc) -> Hlc {
    let mut min = stable(s.reg.stamp.region);
    for c in &s.ctr {
        min = min.min(stable(c.region));
    }
    min
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(h: u64, r: u16) -> Stamp {
        Stamp::new(Hlc(h), RegionId(r))
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// Recount in place (a clone would shrink the counters' vectors and change the sizes).
    fn recounted(m: &OrMap) -> (usize, usize) {
        let alive = m.raw().filter(|(_, s)| s.is_alive()).count();
        let bytes = m
            .raw()
            .map(|(f, s)| f.len() + ELEMENT_OVERHEAD_BYTES + s.heap_bytes())
            .sum();
        (alive, bytes)
    }

    #[test]
    fn or_map_cached_counters_match_a_recount() {
        let mut m = OrMap::default();
        m.update(&b("f"), |s| {
            s.set(st(1, 1), b("a long value that takes room"))
        });
        m.update(&b("g"), |s| s.incr_by(st(2, 1), 5)).1.unwrap();
        assert_eq!((m.len(), m.heap_bytes()), recounted(&m));
        m.remove(b"f").unwrap();
        assert_eq!((m.len(), m.heap_bytes()), recounted(&m), "after HDEL");
        m.update(&b("f"), |s| s.set(st(3, 1), b("v")));
        let _ = m.kill_all();
        assert_eq!((m.len(), m.heap_bytes()), recounted(&m), "after DEL");
        m.gc(&|_| Hlc(u64::MAX), false);
        assert_eq!((m.len(), m.heap_bytes()), (0, 0));
    }

    #[test]
    fn or_set_cached_counters_match_a_recount() {
        let mut s = OrSet::default();
        s.add(st(1, 1), &b("a"));
        s.add(st(2, 1), &b("b"));
        let mut other = OrSet::default();
        other.add(st(3, 2), &b("c"));
        s.merge(&other);
        s.remove(b"a").unwrap();
        let mut x = s.clone();
        x.rebuild();
        assert_eq!((s.len(), s.heap_bytes()), (x.len(), x.heap_bytes()));
        assert_eq!(s.len(), 2);
        let killed = s.kill_all();
        assert_eq!(
            killed.element_count(),
            2,
            "the delta names exactly the killed members"
        );
        assert!(s.is_empty());
    }
}
