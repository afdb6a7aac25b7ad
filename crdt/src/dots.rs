//! Per-origin dot entries: the building block of every observed-remove structure here.
//!
//! For one element (a set member, a key's TTL) each region keeps at most one entry: the
//! latest dot (its HLC) it produced for the element, whether that dot is still alive, and a
//! payload. A region only ever replaces its *own* entry with a later dot, and a remove marks
//! the entries it observed as dead. Per region the entries form a lattice ordered by
//! `(hlc, dead)`, so merge is a per-region max: commutative, associative, idempotent, and
//! safe under duplication and reordering. Add-wins falls out: an add concurrent with a remove
//! carries a dot the remove never saw, so it stays alive.

use crate::hlc::{Hlc, RegionId};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DotEntry<P> {
    pub region: RegionId,
    pub hlc: Hlc,
    pub alive: bool,
    pub payload: P,
}

impl<P: Ord> DotEntry<P> {
    /// Lattice order: later dot wins; for the same dot, dead wins; payload breaks exotic ties.
    fn dominates(&self, other: &DotEntry<P>) -> bool {
        (self.hlc, !self.alive, &self.payload) > (other.hlc, !other.alive, &other.payload)
    }
}

/// The entries of one element, sorted by region (at most one per region).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dots<P>(pub SmallVec<[DotEntry<P>; 1]>);

impl<P> Default for Dots<P> {
    fn default() -> Self {
        Dots(SmallVec::new())
    }
}

impl<P: Clone + Ord> Dots<P> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_alive(&self) -> bool {
        self.0.iter().any(|e| e.alive)
    }

    pub fn alive(&self) -> impl Iterator<Item = &DotEntry<P>> {
        self.0.iter().filter(|e| e.alive)
    }

    pub fn entries(&self) -> &[DotEntry<P>] {
        &self.0
    }

    /// Record a local event: region's entry becomes `(hlc, alive, payload)`.
    /// `hlc` must be newer than anything this replica has seen from `region` for the element.
    pub fn set(&mut self, region: RegionId, hlc: Hlc, payload: P) {
        let entry = DotEntry {
            region,
            hlc,
            alive: true,
            payload,
        };
        match self.0.binary_search_by_key(&region, |e| e.region) {
            Ok(i) => {
                // Re-setting the very same entry (SADD k a a in one write) is idempotent.
                debug_assert!(
                    self.0[i].hlc < hlc || self.0[i] == entry,
                    "local dots must advance"
                );
                self.0[i] = entry;
            }
            Err(i) => self.0.insert(i, entry),
        }
    }

    /// Observed remove: every entry seen so far dies. Returns whether anything was alive.
    pub fn kill_all(&mut self) -> bool {
        let mut any = false;
        for e in self.0.iter_mut() {
            any |= e.alive;
            e.alive = false;
        }
        any
    }

    /// Join with another replica's (or a delta's) entries.
    pub fn merge(&mut self, other: &Dots<P>) -> bool {
        let mut changed = false;
        for theirs in other.0.iter() {
            match self.0.binary_search_by_key(&theirs.region, |e| e.region) {
                Ok(i) => {
                    if theirs.dominates(&self.0[i]) {
                        self.0[i] = theirs.clone();
                        changed = true;
                    }
                }
                Err(i) => {
                    self.0.insert(i, theirs.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// Drop dead entries every region has seen (`stable(region) >= hlc`).
    pub fn gc(&mut self, stable: &impl Fn(RegionId) -> Hlc) {
        self.0.retain(|e| e.alive || e.hlc > stable(e.region));
    }

    /// Largest HLC in the element (for digests and clock observation).
    pub fn max_hlc(&self) -> Hlc {
        self.0.iter().map(|e| e.hlc).max().unwrap_or(Hlc::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u16) -> RegionId {
        RegionId(n)
    }

    #[test]
    fn add_concurrent_with_remove_survives() {
        let mut a: Dots<()> = Dots::default();
        a.set(r(1), Hlc(10), ());
        let mut b = a.clone();
        b.kill_all(); // region 2 removes what it saw
        a.set(r(1), Hlc(20), ()); // region 1 re-adds concurrently
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert!(ab.is_alive());
    }

    #[test]
    fn observed_remove_of_same_dot_wins() {
        let mut a: Dots<()> = Dots::default();
        a.set(r(1), Hlc(10), ());
        let mut b = a.clone();
        b.kill_all();
        a.merge(&b);
        assert!(!a.is_alive());
    }
}
