//! Convergence after a region loses state it held: eviction, expiry reclaim, tombstone GC,
//! an empty restart, stale state of its own coming back. Two or three keyspaces exchange
//! deltas and whole states by hand; each test states what a user relies on.

use super::*;
use crate::entry::EntryWriter;
use crate::hlc::{Hlc, HlcClock};
use crate::slot::key_slot;

struct Region {
    ks: Keyspace,
    clock: HlcClock,
    shipped: Vec<Delta>,
}

impl Region {
    fn new(region: u16) -> Region {
        Region {
            ks: Keyspace::new(KeyspaceConfig {
                region: RegionId(region),
                retain_tombstones: true,
                seed: 7,
            }),
            clock: HlcClock::new(RegionId(region)),
            shipped: Vec::new(),
        }
    }

    /// The same region restarted with nothing (its clock keeps going forward).
    fn restart_empty(&mut self) {
        let clock = self.clock.clone();
        *self = Region::new(self.ks.region().0);
        self.clock = clock;
    }

    fn write<R>(&mut self, key: &str, now: u64, f: impl FnOnce(&mut EntryWriter) -> R) -> R {
        let stamp = self.clock.now(now);
        let r = self.ks.write(key.as_bytes(), stamp, now, f);
        self.shipped.extend(self.ks.drain_deltas());
        r
    }

    fn incr(&mut self, key: &str, now: u64, by: i64) -> i64 {
        let stamp = self.clock.now(now);
        let r = self
            .ks
            .incr_plain(
                key_slot(key.as_bytes()),
                Bytes::from(key.to_string()),
                stamp,
                now,
                by,
            )
            .expect("in range");
        self.shipped.extend(self.ks.drain_deltas());
        r
    }

    /// Deliver this region's pending deltas to `to`, serialized as on the wire.
    fn ship_to(&mut self, to: &mut Region) {
        for d in self.shipped.drain(..) {
            let d: Delta = postcard::from_bytes(&postcard::to_stdvec(&d).unwrap()).unwrap();
            let mut d = d;
            d.state.rebuild();
            to.ks.apply_delta(&d);
        }
    }

    /// Anti-entropy of one key: each side merges the other's whole state.
    fn sync_key(&mut self, other: &mut Region, key: &str) {
        let mine = self.ks.raw_entry(key.as_bytes()).map(|e| e.into_owned());
        let theirs = other.ks.raw_entry(key.as_bytes()).map(|e| e.into_owned());
        if let Some(t) = theirs {
            self.ks.merge_state(key.as_bytes(), true, &t);
        }
        if let Some(m) = mine {
            other.ks.merge_state(key.as_bytes(), true, &m);
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        let e = self.ks.raw_entry(key.as_bytes())?;
        let s = e.as_str()?;
        Some(s.integer().expect("an integer"))
    }

    fn deadline(&self, key: &str) -> Option<u64> {
        self.ks.raw_entry(key.as_bytes())?.deadline_ms()
    }
}

#[test]
fn increments_survive_an_eviction_in_their_region() {
    let (mut a, mut b) = (Region::new(1), Region::new(2));
    a.incr("k", 10, 10);
    a.ship_to(&mut b);
    a.ks.evict_key(b"k");
    // What a region answers is what it holds; what converges counts everything.
    assert_eq!(a.incr("k", 20, 1), 1);
    a.ship_to(&mut b);
    assert_eq!(
        b.int("k"),
        Some(11),
        "the new incarnation adds to the old one"
    );
    a.sync_key(&mut b, "k");
    assert_eq!(a.int("k"), Some(11));
    assert_eq!(a.ks.raw_entry(b"k"), b.ks.raw_entry(b"k"));
}

#[test]
fn a_stale_copy_of_its_own_counter_is_never_extended() {
    // a's latest increment is still on its way to b when a evicts the key and gets b's
    // older copy back; extending that copy would replace the increment in flight.
    let (mut a, mut b) = (Region::new(1), Region::new(2));
    a.incr("k", 10, 10);
    a.ship_to(&mut b);
    a.incr("k", 11, 1); // in flight
    let in_flight = std::mem::take(&mut a.shipped);
    a.ks.evict_key(b"k");
    b.sync_key(&mut a, "k");
    assert_eq!(a.int("k"), Some(10), "a holds b's older copy");
    assert_eq!(a.incr("k", 12, 1), 11);
    a.shipped.extend(in_flight);
    a.ship_to(&mut b);
    a.sync_key(&mut b, "k");
    assert_eq!(b.int("k"), Some(12));
    assert_eq!(a.int("k"), Some(12));
}

#[test]
fn a_collected_tombstone_does_not_subtract_from_later_increments() {
    // The partial-partition case: a collected the tombstone of a DEL that observed 10; b
    // still holds it. a's next increment must read 1 everywhere, not 1 - 10.
    let (mut a, mut b) = (Region::new(1), Region::new(2));
    a.incr("k", 10, 10);
    a.ship_to(&mut b);
    assert!(a.write("k", 20, |w| w.delete()));
    a.ship_to(&mut b);
    assert_eq!(a.ks.gc(&|_| Hlc(u64::MAX)), 1, "a collected the tombstone");
    assert_eq!(b.ks.stats().tombstones, 1, "b still holds it");
    assert_eq!(a.incr("k", 30, 1), 1);
    a.ship_to(&mut b);
    assert_eq!(b.int("k"), Some(1));
    a.sync_key(&mut b, "k");
    assert_eq!(a.int("k"), Some(1));
    assert_eq!(a.ks.raw_entry(b"k"), b.ks.raw_entry(b"k"));
}

#[test]
fn an_empty_restart_keeps_every_replicated_increment() {
    let (mut a, mut b) = (Region::new(1), Region::new(2));
    a.incr("k", 10, 10);
    a.ship_to(&mut b);
    a.restart_empty();
    assert_eq!(a.incr("k", 20, 1), 1);
    a.ship_to(&mut b);
    assert_eq!(b.int("k"), Some(11));
    a.sync_key(&mut b, "k");
    assert_eq!(a.int("k"), Some(11));
    // And the restarted region keeps adding to its new incarnation, in place.
    assert_eq!(a.incr("k", 30, 1), 12);
}

#[test]
fn a_hash_field_counter_survives_eviction() {
    let (mut a, mut b) = (Region::new(1), Region::new(2));
    let hincr = |w: &mut EntryWriter, by| w.hash_update(b"f", |s, st| s.incr_by(st, by));
    a.write("h", 10, |w| hincr(w, 10)).unwrap();
    a.ship_to(&mut b);
    a.ks.evict_key(b"h");
    a.write("h", 20, |w| hincr(w, 1)).unwrap();
    a.ship_to(&mut b);
    a.sync_key(&mut b, "h");
    for r in [&a, &b] {
        let e = r.ks.raw_entry(b"h").unwrap();
        let f = e.as_hash().unwrap().get(b"f").unwrap().integer().unwrap();
        assert_eq!(f, 11);
    }
}

#[test]
fn a_write_on_a_key_absent_in_a_lossy_slot_ships_a_partial_delta() {
    let mut a = Region::new(1);
    a.incr("k", 10, 10);
    a.shipped.clear();
    a.ks.evict_key(b"k");
    a.incr("k", 20, 1);
    assert!(
        !a.shipped[0].full,
        "a's part only, not the key's whole state"
    );
    // A third region that lost the key too does not take it for the whole key.
    let mut c = Region::new(3);
    c.incr("k", 5, 1);
    c.ks.evict_key(b"k");
    a.ship_to(&mut c);
    assert!(c.ks.raw_entry(b"k").is_none(), "left to anti-entropy");
}

#[test]
fn set_on_an_evicted_key_clears_the_ttl_it_would_have_seen() {
    let (mut a, mut b) = (Region::new(1), Region::new(2));
    b.write("t", 10, |w| {
        w.set_str(bytes("v1"), false);
        w.set_deadline(Some(3_600_010));
    });
    b.ship_to(&mut a);
    assert_eq!(a.deadline("t"), Some(3_600_010));
    a.ks.evict_key(b"t");
    a.write("t", 20, |w| w.set_str(bytes("v2"), false));
    a.ship_to(&mut b);
    a.sync_key(&mut b, "t");
    for r in [&a, &b] {
        assert_eq!(r.deadline("t"), None, "the old deadline does not come back");
        let e = r.ks.raw_entry(b"t").unwrap();
        assert_eq!(e.as_str().unwrap().bytes(), Some(bytes("v2")));
    }
}

#[test]
fn keepttl_and_append_keep_the_deadline_in_every_region() {
    let (mut a, mut b) = (Region::new(1), Region::new(2));
    b.write("t", 10, |w| {
        w.set_str(bytes("v1"), false);
        w.set_deadline(Some(5_000));
    });
    b.ship_to(&mut a);
    a.write("t", 20, |w| w.set_str(bytes("v2"), true));
    a.ship_to(&mut b);
    assert_eq!(b.deadline("t"), Some(5_000));
    assert_eq!(a.deadline("t"), Some(5_000));
    // A concurrent EXPIRE older than the register write is superseded by it everywhere.
    let (mut c, mut d) = (Region::new(3), Region::new(4));
    c.write("u", 10, |w| w.set_str(bytes("x"), false));
    c.ship_to(&mut d);
    d.write("u", 11, |w| w.set_deadline(Some(9_000)));
    c.write("u", 12, |w| w.set_str(bytes("y"), false));
    d.ship_to(&mut c);
    c.ship_to(&mut d);
    assert_eq!(c.deadline("u"), None);
    assert_eq!(d.deadline("u"), None);
}

#[test]
fn the_floor_survives_expiry_when_a_stale_fill_is_refused() {
    let mut a = Region::new(1);
    a.write("f", 10, |w| w.invalidate(Some(7)));
    a.write("f", 20, |w| {
        w.set_str_versioned(bytes("new"), 8, false).unwrap();
        w.set_deadline(Some(320));
    });
    for now in [400, 401, 402] {
        let r = a.write("f", now, |w| w.set_str_versioned(bytes("old"), 6, false));
        assert!(r.is_err(), "refused at {now}");
    }
    assert_eq!(a.ks.raw_entry(b"f").unwrap().floor(), 7);
    assert_eq!(a.ks.len(), 0);
    // Eviction keeps it too.
    a.write("g", 10, |w| w.invalidate(Some(3)));
    a.write("g", 11, |w| w.set_str_versioned(bytes("x"), 4, false))
        .unwrap();
    a.ks.evict_key(b"g");
    assert!(a
        .write("g", 12, |w| w.set_str_versioned(bytes("y"), 3, false))
        .is_err());
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn a_floor_left_by_eviction_does_not_let_a_partial_delta_rebuild_the_key() {
    let (mut a, mut b) = (Region::new(1), Region::new(2));
    a.write("s", 10, |w| w.invalidate(Some(3)));
    a.write("s", 11, |w| w.sadd(b"m1"));
    a.ship_to(&mut b);
    b.ks.evict_key(b"s");
    assert_eq!(b.ks.raw_entry(b"s").unwrap().floor(), 3, "the floor stays");
    a.write("s", 12, |w| w.sadd(b"m2"));
    assert!(!a.shipped[0].full);
    a.ship_to(&mut b);
    assert!(
        b.ks.raw_entry(b"s").unwrap().as_set().is_none(),
        "a set of m2 alone would be a partial rebuild"
    );
}

#[test]
fn a_restart_marks_every_slot_lossy_until_repaired_or_found_to_be_a_first_start() {
    let mut a = Region::new(1);
    a.ks.mark_all_lossy(|s| s % 2 == 0);
    assert!(a.ks.slot_is_lossy(0) && !a.ks.slot_is_lossy(1));
    a.incr("x", 10, 1);
    a.ks.evict_key(b"x"); // a real loss after the start
    a.ks.clear_start_losses();
    let x = key_slot(b"x");
    assert!(a.ks.slot_is_lossy(x), "a later loss stays");
    let other = if x == 0 { 2 } else { 0 };
    assert!(!a.ks.slot_is_lossy(other));
}

#[test]
fn a_set_on_a_key_absent_in_a_lossy_slot_is_whole() {
    // The cache refill after local expiry: it must reach regions that reclaimed the key too.
    let mut a = Region::new(1);
    a.write("k", 10, |w| {
        w.set_str(bytes("old"), false);
        w.set_deadline(Some(100));
    });
    a.shipped.clear();
    assert!(a.ks.get(b"k", 200).is_none(), "expired and reclaimed");
    a.write("k", 210, |w| w.set_str(bytes("fresh"), false));
    assert!(
        a.shipped[0].full,
        "a SET without KEEPTTL is the whole visible state"
    );
    let mut c = Region::new(3);
    c.write("k", 5, |w| w.set_str(bytes("x"), false));
    c.ks.evict_key(b"k");
    a.ship_to(&mut c);
    let e = c.ks.raw_entry(b"k").expect("taken");
    assert_eq!(e.as_str().unwrap().bytes(), Some(bytes("fresh")));
}
