//! One test per conflict rule of ARCHITECTURE §4 (the contract users rely on), each named
//! after its rule. Regions are replicas with their own HLC; "concurrent" means neither saw
//! the other's write before making its own; every test converges by exchanging deltas in
//! both orders and checks that every region reads the same.

mod common;

use bytes::Bytes;
use common::*;
use meridian_crdt::{Applied, CrdtError, Hlc, Kind, RegionId};

/// Deliver every delta of every replica to every other one, in log order and then again in
/// reverse (duplicates are harmless).
fn converge(rs: &mut [Replica]) {
    converge_views(rs);
    for key in KEYS {
        for r in rs.iter() {
            assert_eq!(r.raw(key), rs[0].raw(key), "replicas agree on {key}");
        }
    }
}

/// Like [`converge`], but after `gc` replicas may differ in collected metadata: compare
/// what clients read.
fn converge_views(rs: &mut [Replica]) {
    let all: Vec<_> = rs.iter().flat_map(|r| r.log.clone()).collect();
    for r in rs.iter_mut() {
        for d in &all {
            r.apply(d);
        }
        for d in all.iter().rev() {
            r.apply(d);
        }
    }
    for key in KEYS {
        for r in rs.iter() {
            assert_eq!(r.view(key), rs[0].view(key), "replicas read the same {key}");
        }
    }
}

/// `to` merges the deltas `from` has produced so far.
fn ship(from: &Replica, to: &mut Replica) {
    for d in from.log.clone() {
        to.apply(&d);
    }
}

fn set_view(members: &[&str], deadline: Option<u64>) -> View {
    View::Set(members.iter().map(|m| b(m)).collect(), deadline)
}

fn str_view(v: &str) -> View {
    View::Str(b(v), None)
}

fn regions(n: u16) -> Vec<Replica> {
    (1..=n).map(Replica::new).collect()
}

#[test]
fn sadd_concurrent_with_srem_keeps_member() {
    let mut rs = regions(3);
    rs[0].write("k0", 10, |w| w.sadd(&b("m")));
    rs[0].write("k0", 11, |w| w.sadd(&b("n")));
    let (a, rest) = rs.split_at_mut(1);
    ship(&a[0], &mut rest[0]);
    // Region 2 removes both members it saw; concurrently region 1 re-adds m and region 3,
    // which never saw the set, adds n.
    assert!(rs[1].write("k0", 20, |w| w.srem(b"m")));
    assert!(rs[1].write("k0", 21, |w| w.srem(b"n")));
    assert_eq!(
        rs[1].view("k0"),
        View::Missing,
        "the set emptied: the key is gone"
    );
    assert!(!rs[0].write("k0", 20, |w| w.sadd(&b("m"))));
    assert!(rs[2].write("k0", 20, |w| w.sadd(&b("n"))));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), set_view(&["m", "n"], None));
    }
    // A remove that observed the adds does remove.
    rs[1].write("k0", 30, |w| w.srem(b"m"));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), set_view(&["n"], None));
    }
}

#[test]
fn del_concurrent_with_sadd_keeps_unobserved_member() {
    let mut rs = regions(2);
    rs[0].write("k0", 10, |w| w.sadd(&b("old")));
    let (a, b_) = rs.split_at_mut(1);
    ship(&a[0], &mut b_[0]);
    rs[1].write("k0", 20, |w| w.delete());
    rs[0].write("k0", 15, |w| w.sadd(&b("new")));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), set_view(&["new"], None));
    }
}

#[test]
fn del_concurrent_with_incr_keeps_unobserved_increments() {
    let mut rs = regions(3);
    rs[0].write("k0", 10, |w| w.incr_by(5)).unwrap();
    rs[1].write("k0", 10, |w| w.incr_by(2)).unwrap();
    {
        let (a, rest) = rs.split_at_mut(1);
        ship(&a[0], &mut rest[0]);
        ship(&rest[0], &mut a[0]);
    }
    assert_eq!(rs[0].int("k0"), Some(7));
    // Region 1 deletes what it saw (5 from itself, 2 from region 2); concurrently region 2
    // adds 3 more and region 3 adds 4.
    assert!(rs[0].write("k0", 20, |w| w.delete()));
    assert_eq!(rs[1].write("k0", 20, |w| w.incr_by(3)), Ok(10));
    assert_eq!(rs[2].write("k0", 20, |w| w.incr_by(4)), Ok(4));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(
            r.int("k0"),
            Some(7),
            "3 + 4: the increments DEL did not see"
        );
    }
}

#[test]
fn set_concurrent_with_incr_adds_unobserved_increments() {
    let mut rs = regions(3);
    rs[0].write("k0", 10, |w| w.incr_by(5)).unwrap();
    {
        let (a, rest) = rs.split_at_mut(1);
        ship(&a[0], &mut rest[0]);
    }
    rs[1].write("k0", 20, |w| w.set_str(b("100"), false));
    rs[0].write("k0", 30, |w| w.incr_by(3)).unwrap();
    rs[2].write("k0", 5, |w| w.incr_by(1)).unwrap();
    converge(&mut rs);
    for r in &rs {
        assert_eq!(
            r.int("k0"),
            Some(104),
            "100 + the 3 and 1 the SET did not observe"
        );
        assert_eq!(r.view("k0"), str_view("104"));
    }
    // A non-numeric SET hides concurrent increments (kept, so every region agrees), and the
    // key is then not an integer.
    rs[0].write("k1", 10, |w| w.incr_by(1)).unwrap();
    {
        let (a, rest) = rs.split_at_mut(1);
        ship(&a[0], &mut rest[0]);
    }
    rs[1].write("k1", 20, |w| w.set_str(b("abc"), false));
    rs[0].write("k1", 30, |w| w.incr_by(1)).unwrap();
    converge(&mut rs);
    for r in rs.iter_mut() {
        assert_eq!(r.view("k1"), str_view("abc"));
        assert_eq!(
            r.write("k1", 40, |w| w.incr_by(1)),
            Err(CrdtError::NotInteger)
        );
    }
}

#[test]
fn concurrent_set_same_winner_everywhere_highest_hlc_then_region() {
    // Higher HLC wins, whatever the region ids.
    let mut rs = regions(2);
    rs[0].write("k0", 300, |w| w.set_str(b("from-1"), false));
    rs[1].write("k0", 200, |w| w.set_str(b("from-2"), false));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), str_view("from-1"));
    }
    // Same HLC (same physical ms, fresh clocks): the greater region id wins.
    let mut rs = regions(2);
    let s1 = rs[0].write("k0", 100, |w| {
        w.set_str(b("from-1"), false);
        w.stamp()
    });
    let s2 = rs[1].write("k0", 100, |w| {
        w.set_str(b("from-2"), false);
        w.stamp()
    });
    assert_eq!(s1.hlc, s2.hlc);
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), str_view("from-2"));
    }
    // Three regions, deltas in every order: one winner.
    let mut rs = regions(3);
    rs[0].write("k1", 500, |w| w.set_str(b("a"), false));
    rs[1].write("k1", 500, |w| w.set_str(b("b"), false));
    rs[2].write("k1", 499, |w| w.set_str(b("c"), false));
    let all: Vec<_> = rs.iter().flat_map(|r| r.log.clone()).collect();
    for perm in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]] {
        let mut x = Replica::new(9);
        for i in perm {
            x.apply(&all[i]);
        }
        assert_eq!(x.view("k1"), str_view("b"));
    }
}

#[test]
fn causally_later_write_wins_despite_clock_skew() {
    let mut rs = regions(2);
    // Region 1's clock runs 49 s ahead of region 2's.
    let early = rs[0].write("k0", 50_000, |w| {
        w.set_str(b("early"), false);
        w.stamp()
    });
    {
        let (a, b_) = rs.split_at_mut(1);
        ship(&a[0], &mut b_[0]);
    }
    assert_eq!(rs[1].view("k0"), str_view("early"));
    // Region 2 saw "early" and overwrites it at its (behind) physical time.
    let later = rs[1].write("k0", 1_000, |w| {
        w.set_str(b("later"), false);
        w.stamp()
    });
    assert!(
        later > early,
        "the HLC orders the causally later write after"
    );
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), str_view("later"));
    }
    // The same holds for a DEL that follows a skewed write: the key stays deleted.
    rs[0].write("k1", 90_000, |w| w.sadd(&b("m")));
    {
        let (a, b_) = rs.split_at_mut(1);
        ship(&a[0], &mut b_[0]);
    }
    rs[1].write("k1", 2_000, |w| w.delete());
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k1"), View::Missing);
    }
}

const D1: u64 = 10_000;
const D2: u64 = 20_000;

#[test]
fn concurrent_expire_longest_deadline_wins() {
    let mut rs = regions(2);
    rs[0].write("k0", 10, |w| w.set_str(b("v"), false));
    {
        let (a, b_) = rs.split_at_mut(1);
        ship(&a[0], &mut b_[0]);
    }
    // The shorter deadline gets the later HLC: length, not time of the write, decides.
    rs[0].write("k0", 20, |w| w.set_deadline(Some(D2)));
    rs[1].write("k0", 30, |w| w.set_deadline(Some(D1)));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), View::Str(b("v"), Some(D2)));
        assert!(
            r.ks.peek(b"k0", D1).is_some(),
            "not expired at the shorter deadline"
        );
        assert!(r.ks.peek(b"k0", D2).is_none(), "expired at the longest one");
    }
}

#[test]
fn concurrent_persist_beats_expire() {
    for (persist_ms, expire_ms) in [(20, 30), (30, 20)] {
        let mut rs = regions(2);
        rs[0].write("k0", 10, |w| {
            w.set_str(b("v"), false);
            w.set_deadline(Some(D1));
        });
        {
            let (a, b_) = rs.split_at_mut(1);
            ship(&a[0], &mut b_[0]);
        }
        rs[0].write("k0", persist_ms, |w| w.set_deadline(None));
        rs[1].write("k0", expire_ms, |w| w.set_deadline(Some(D2)));
        converge(&mut rs);
        for r in &rs {
            assert_eq!(r.view("k0"), View::Str(b("v"), None));
            assert!(r.ks.peek(b"k0", u64::MAX - 1).is_some());
        }
    }
}

#[test]
fn causally_later_expire_replaces_earlier() {
    let mut rs = regions(2);
    rs[0].write("k0", 10, |w| {
        w.set_str(b("v"), false);
        w.set_deadline(Some(D2));
    });
    {
        let (a, b_) = rs.split_at_mut(1);
        ship(&a[0], &mut b_[0]);
    }
    // Shorter but causally later: replaces.
    rs[1].write("k0", 20, |w| w.set_deadline(Some(D1)));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), View::Str(b("v"), Some(D1)));
    }
    // Causally later PERSIST removes it; a causally later EXPIRE sets one again.
    rs[0].write("k0", 30, |w| w.set_deadline(None));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), View::Str(b("v"), None));
    }
    rs[1].write("k0", 40, |w| w.set_deadline(Some(D2)));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), View::Str(b("v"), Some(D2)));
    }
    // A causally later SET without KEEPTTL clears it; SET KEEPTTL keeps it.
    rs[0].write("k0", 50, |w| w.set_str(b("w"), true));
    converge(&mut rs);
    assert_eq!(rs[1].view("k0"), View::Str(b("w"), Some(D2)));
    rs[0].write("k0", 60, |w| w.set_str(b("x"), false));
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k0"), str_view("x"));
    }
}

#[test]
fn type_conflict_greater_creation_stamp_wins() {
    for (str_ms, set_ms, winner) in [(100, 200, Kind::Set), (300, 200, Kind::Str)] {
        let mut rs = regions(2);
        rs[0].write("k0", str_ms, |w| w.set_str(b("s"), false));
        rs[1].write("k0", set_ms, |w| w.sadd(&b("m")));
        converge(&mut rs);
        for r in rs.iter_mut() {
            let e = r.ks.peek(b"k0", NOW_MS).expect("the key exists");
            assert_eq!(e.kind(), Some(winner));
            // The loser is kept as its own component (merge stays associative) but hidden.
            assert_eq!(e.components().len(), 2);
            let expected = match winner {
                Kind::Set => set_view(&["m"], None),
                _ => str_view("s"),
            };
            assert_eq!(r.view("k0"), expected);
            // Commands against the loser's type answer WRONGTYPE.
            let other = if winner == Kind::Set {
                Kind::Str
            } else {
                Kind::Set
            };
            assert_eq!(
                r.write("k0", 400, |w| w.expect(other)),
                Err(CrdtError::WrongType)
            );
        }
        // A later SET observes both components and resolves the conflict everywhere.
        rs[0].write("k0", 1_000, |w| w.set_str(b("final"), false));
        converge(&mut rs);
        for r in &rs {
            assert_eq!(r.view("k0"), str_view("final"));
            let e = r.ks.peek(b"k0", NOW_MS).unwrap();
            assert_eq!(
                e.components().iter().filter(|c| c.val.is_alive()).count(),
                1
            );
        }
    }
}

#[test]
fn del_concurrent_with_hset_keeps_field() {
    let mut rs = regions(2);
    rs[0].write("k0", 10, |w| {
        w.hash_update(&b("f1"), |s, st| s.set(st, b("v1")));
        w.hash_update(&b("f3"), |s, st| s.set(st, b("v3")));
    });
    {
        let (a, b_) = rs.split_at_mut(1);
        ship(&a[0], &mut b_[0]);
    }
    rs[1].write("k0", 20, |w| w.delete());
    rs[0].write("k0", 15, |w| {
        w.hash_update(&b("f1"), |s, st| s.set(st, b("v1b")));
        w.hash_update(&b("f2"), |s, st| s.set(st, b("v2")));
    });
    converge(&mut rs);
    let expected = View::Hash(
        [(b("f1"), b("v1b")), (b("f2"), b("v2"))]
            .into_iter()
            .collect(),
        None,
    );
    for r in &rs {
        assert_eq!(
            r.view("k0"),
            expected,
            "f3 was observed by DEL, f1/f2 writes were not"
        );
    }
}

#[test]
fn hincrby_fields_are_counters() {
    let mut rs = regions(3);
    let f = b("f");
    for (r, by) in rs.iter_mut().zip([5, 7, -2]) {
        let got = r.write("k0", 10, |w| w.hash_update(&f, |s, st| s.incr_by(st, by)));
        assert_eq!(got, Ok(by));
    }
    converge(&mut rs);
    let field_int = |r: &Replica| {
        r.ks.peek(b"k0", NOW_MS)
            .as_deref()
            .and_then(|e| e.as_hash())
            .and_then(|h| h.get(b"f"))
            .map(|s| s.integer().unwrap())
    };
    for r in &rs {
        assert_eq!(field_int(r), Some(10));
    }
    // HSET concurrent with HINCRBY: the HSET resets what it saw, the concurrent increment adds.
    rs[0].write("k0", 20, |w| w.hash_update(&f, |s, st| s.set(st, b("100"))));
    rs[1]
        .write("k0", 20, |w| w.hash_update(&f, |s, st| s.incr_by(st, 1)))
        .unwrap();
    converge(&mut rs);
    for r in &rs {
        assert_eq!(field_int(r), Some(101));
    }
    // HDEL concurrent with HINCRBY keeps the unobserved increment.
    rs[0].write("k0", 30, |w| w.hdel(b"f"));
    rs[2]
        .write("k0", 30, |w| w.hash_update(&f, |s, st| s.incr_by(st, 4)))
        .unwrap();
    converge(&mut rs);
    for r in &rs {
        assert_eq!(field_int(r), Some(4));
    }
    // A field holding text is not a counter.
    rs[0].write("k0", 40, |w| {
        w.hash_update(&b("t"), |s, st| s.set(st, b("x")))
    });
    assert_eq!(
        rs[0].write("k0", 41, |w| w
            .hash_update(&b("t"), |s, st| s.incr_by(st, 1))),
        Err(CrdtError::NotInteger)
    );
}

#[test]
fn partial_delta_not_applied_over_evicted_key() {
    let mut a = Replica::new(1);
    let mut bb = Replica::new(2);
    let created = a
        .write_at("k0", 10, NOW_MS, |w| w.sadd(&b("m1")))
        .1
        .unwrap();
    assert!(
        created.full,
        "a write that creates the key carries its whole state"
    );
    assert_eq!(bb.apply(&created), Applied::Changed);
    assert!(bb.ks.evict_key(b"k0") > 0);
    assert_eq!(bb.ks.stats().evicted, 1);
    let partial = a
        .write_at("k0", 20, NOW_MS, |w| w.sadd(&b("m2")))
        .1
        .unwrap();
    assert!(!partial.full);
    assert_eq!(bb.apply(&partial), Applied::DroppedPartial);
    assert_eq!(
        bb.view("k0"),
        View::Missing,
        "no partial state: the key stays a miss"
    );
    assert!(bb.ks.raw_entry(b"k0").is_none());
    assert_eq!(bb.ks.stats().partial_deltas_dropped, 1);
    // A full delta (a string write carries the whole string) is applied.
    let full = a
        .write_at("k0", 30, NOW_MS, |w| w.set_str(b("s"), false))
        .1
        .unwrap();
    assert!(full.full);
    assert_eq!(bb.apply(&full), Applied::Changed);
    assert_eq!(bb.view("k0"), a.view("k0"));
    assert_eq!(bb.view("k0"), str_view("s"));
    // Anti-entropy repairs the slot; afterwards partial deltas build on absent keys again.
    bb.ks.mark_slot_repaired(meridian_crdt::key_slot(b"k0"));
    assert!(!bb.ks.slot_is_lossy(meridian_crdt::key_slot(b"k0")));
}

#[test]
fn full_delta_over_evicted_key_keeps_ttl_and_every_live_component() {
    let mut a = Replica::new(1);
    let mut bb = Replica::new(2);
    let d = a
        .write_at("k0", 10, NOW_MS, |w| {
            w.set_str(b("1"), false);
            w.set_deadline(Some(D1));
        })
        .1
        .unwrap();
    bb.apply(&d);
    bb.ks.evict_key(b"k0");
    // INCR keeps the TTL; its delta is full, so it must carry the TTL too, or the evicted
    // region would rebuild a key that never expires.
    let d = a.write_at("k0", 20, NOW_MS, |w| w.incr_by(1)).1.unwrap();
    assert!(d.full);
    bb.apply(&d);
    assert_eq!(bb.view("k0"), View::Str(b("2"), Some(D1)));
    assert!(bb.ks.peek(b"k0", D1).is_none());

    // A string write on a key that also holds a live (hidden) set is not the key's whole
    // state: it must not rebuild the key on a region that evicted it.
    let mut a = Replica::new(1);
    let mut c = Replica::new(3);
    let mut bb = Replica::new(2);
    a.write("k1", 300, |w| w.set_str(b("5"), false));
    c.write("k1", 200, |w| w.sadd(&b("m")));
    ship(&c, &mut a);
    assert_eq!(a.view("k1"), str_view("5"));
    ship(&a, &mut bb);
    ship(&c, &mut bb);
    bb.ks.evict_key(b"k1");
    let d = a.write_at("k1", 400, NOW_MS, |w| w.incr_by(1)).1.unwrap();
    let applied = bb.apply(&d);
    if d.full {
        assert_eq!(bb.raw("k1"), a.raw("k1"));
    } else {
        assert_eq!(applied, Applied::DroppedPartial);
    }
}

#[test]
fn gc_drops_tombstones_once_stable_and_keeps_them_before() {
    let mut rs = regions(3);
    let s_set = rs[0].write("k0", 10, |w| {
        w.set_str(b("v"), false);
        w.stamp()
    });
    {
        let (a, rest) = rs.split_at_mut(1);
        ship(&a[0], &mut rest[0]);
        ship(&a[0], &mut rest[1]);
    }
    // Region 2 deletes the key it saw.
    let s_del = rs[1].write("k0", 20, |w| {
        assert!(w.delete());
        w.stamp()
    });
    assert_eq!(rs[1].ks.stats().tombstones, 1);
    assert_eq!(rs[1].ks.stats().keys, 0);
    let stable_upto = |a: Hlc, b_: Hlc| {
        move |r: RegionId| match r.0 {
            1 => a,
            2 => b_,
            _ => Hlc::ZERO,
        }
    };
    // Nothing stable yet.
    assert_eq!(rs[1].ks.gc(&stable_upto(Hlc::ZERO, Hlc::ZERO)), 0);
    assert!(rs[1].ks.raw_entry(b"k0").is_some());
    // Every region saw the SET, but not yet the DEL: region 3 may still send state built on
    // the SET (an INCR concurrent with the DEL), so the tombstone must stay.
    assert_eq!(
        rs[1].ks.gc(&stable_upto(s_set.hlc, Hlc(s_del.hlc.0 - 1))),
        0
    );
    assert!(
        rs[1].ks.raw_entry(b"k0").is_some(),
        "tombstone kept before the DEL is stable"
    );
    assert_eq!(rs[1].ks.stats().tombstones, 1);
    // Once the DEL is stable everywhere, the tombstone goes.
    assert_eq!(rs[1].ks.gc(&stable_upto(s_set.hlc, s_del.hlc)), 1);
    assert!(rs[1].ks.raw_entry(b"k0").is_none());
    assert_eq!(rs[1].ks.stats().tombstones, 0);
    assert_eq!(rs[1].ks.metadata_elements(), 0);

    // Element tombstones inside a live key: a removed member.
    let mut rs = regions(2);
    rs[0].write("k1", 10, |w| {
        w.sadd(&b("gone"));
        w.sadd(&b("kept"));
    });
    {
        let (a, b_) = rs.split_at_mut(1);
        ship(&a[0], &mut b_[0]);
    }
    let s_add = rs[0].ks.raw_entry(b"k1").unwrap().max_hlc();
    let s_rem = rs[1].write("k1", 20, |w| {
        assert!(w.srem(b"gone"));
        w.stamp()
    });
    let before = rs[1].ks.metadata_elements();
    rs[1].ks.gc(&stable_upto(s_add, Hlc(s_rem.hlc.0 - 1)));
    assert_eq!(
        rs[1].ks.metadata_elements(),
        before,
        "member tombstone kept before stable"
    );
    rs[1].ks.gc(&stable_upto(s_add, s_rem.hlc));
    assert_eq!(
        rs[1].ks.metadata_elements(),
        before - 1,
        "member tombstone dropped"
    );
    assert_eq!(rs[1].view("k1"), set_view(&["kept"], None));
    // The live state is untouched by gc and still converges.
    converge_views(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k1"), set_view(&["kept"], None));
    }
}

#[test]
fn gc_never_resurrects_a_delete_with_fifo_links() {
    // The scenario the stability rule protects against: region 3's state still holds the
    // deleted member when region 2 considers collecting its tombstone.
    let mut rs = regions(3);
    rs[0].write("k0", 10, |w| w.sadd(&b("m")));
    let s_add = rs[0].ks.raw_entry(b"k0").unwrap().max_hlc();
    for i in 1..3 {
        let d = rs[0].log[0].clone();
        rs[i].apply(&d);
    }
    rs[1].write("k0", 20, |w| w.srem(b"m"));
    // Region 1's add is stable (everyone has it), region 2's remove is not: gc keeps it.
    rs[1]
        .ks
        .gc(&|r: RegionId| if r.0 == 1 { s_add } else { Hlc::ZERO });
    // Region 3 re-ships its state of the key (anti-entropy) before it saw the SREM.
    let stale = rs[2].raw("k0").unwrap();
    rs[1].ks.merge_state(b"k0", true, &stale);
    assert_eq!(
        rs[1].view("k0"),
        View::Missing,
        "the removed member stays removed"
    );
}

#[test]
fn overflowing_incr_refused_value_unchanged() {
    let mut a = Replica::new(1);
    a.write("k0", 10, |w| {
        w.set_str(Bytes::from(i64::MAX.to_string()), false)
    });
    let before = a.raw("k0");
    let logged = a.log.len();
    assert_eq!(
        a.write("k0", 20, |w| w.incr_by(1)),
        Err(CrdtError::Overflow)
    );
    assert_eq!(a.raw("k0"), before, "state unchanged");
    assert_eq!(a.log.len(), logged, "a refused write yields no delta");
    assert_eq!(a.int("k0"), Some(i64::MAX));
    a.write("k1", 10, |w| {
        w.set_str(Bytes::from(i64::MIN.to_string()), false)
    });
    assert_eq!(
        a.write("k1", 20, |w| w.incr_by(-1)),
        Err(CrdtError::Overflow)
    );
    assert_eq!(a.int("k1"), Some(i64::MIN));
    assert_eq!(a.write("k1", 30, |w| w.incr_by(i64::MAX)), Ok(-1));

    // Concurrent increments that are each fine locally: the converged sum saturates (the
    // documented rule) instead of wrapping, and further increments past it are refused.
    let mut rs = regions(2);
    rs[0].write("k0", 10, |w| w.incr_by(i64::MAX - 1)).unwrap();
    rs[1].write("k0", 10, |w| w.incr_by(5)).unwrap();
    converge(&mut rs);
    for r in rs.iter_mut() {
        assert_eq!(r.int("k0"), Some(i64::MAX), "MAX + 4 is reported as MAX");
        // The exact sum is still beyond i64 after these: refused.
        assert_eq!(
            r.write("k0", 20, |w| w.incr_by(1)),
            Err(CrdtError::Overflow)
        );
        assert_eq!(
            r.write("k0", 21, |w| w.incr_by(-2)),
            Err(CrdtError::Overflow)
        );
        // Back in range: the reply is the new value clients then read.
        assert_eq!(r.write("k0", 22, |w| w.incr_by(-10)), Ok(i64::MAX - 6));
        assert_eq!(r.int("k0"), Some(i64::MAX - 6));
        assert_eq!(
            r.write("k0", 23, |w| w.incr_by(10)),
            Err(CrdtError::Overflow)
        );
    }
}

#[test]
fn expiry_and_eviction_never_replicate() {
    let mut a = Replica::new(1);
    a.write_at("k0", 10, 10, |w| {
        w.set_str(b("v"), false);
        w.set_deadline(Some(100));
    });
    a.write_at("k1", 10, 10, |w| w.set_str(b("w"), false));
    let logged = a.log.len();
    assert_eq!(a.ks.active_expire(100, 1_000), 1);
    assert!(a.ks.evict_key(b"k1") > 0);
    assert_eq!(a.ks.pending_deltas(), 0);
    assert_eq!(a.log.len(), logged);
    assert!(a.ks.is_empty());
}

#[test]
fn emptied_collection_does_not_pass_its_ttl_to_the_next_key() {
    let mut a = Replica::new(1);
    a.write("k0", 10, |w| {
        w.sadd(&b("m"));
        w.set_deadline(Some(D1));
    });
    a.write("k0", 20, |w| w.srem(b"m"));
    assert_eq!(a.view("k0"), View::Missing);
    a.write("k0", 30, |w| w.sadd(&b("n")));
    assert_eq!(a.view("k0"), set_view(&["n"], None), "a new key has no TTL");
    // Same when a concurrent EXPIRE raced a DEL: the re-created key starts without TTL.
    let mut rs = regions(2);
    rs[0].write("k1", 10, |w| w.set_str(b("v"), false));
    {
        let (x, y) = rs.split_at_mut(1);
        ship(&x[0], &mut y[0]);
    }
    rs[0].write("k1", 20, |w| w.delete());
    rs[1].write("k1", 20, |w| w.set_deadline(Some(D1)));
    converge(&mut rs);
    assert_eq!(rs[0].view("k1"), View::Missing);
    rs[0].write("k1", 30, |w| w.incr_by(1)).unwrap();
    converge(&mut rs);
    for r in &rs {
        assert_eq!(r.view("k1"), str_view("1"));
    }
}

#[test]
fn write_on_a_tombstone_whose_old_ttl_passed_keeps_history() {
    // A deleted key whose (concurrent) TTL passed is still a tombstone: a write on it must
    // build on it (and keep its counter history), not treat it as an expired live key.
    let mut rs = regions(2);
    rs[0].write_at("k0", 10, 10, |w| w.incr_by(5)).0.unwrap();
    {
        let (x, y) = rs.split_at_mut(1);
        ship(&x[0], &mut y[0]);
    }
    rs[1].write_at("k0", 20, 20, |w| w.delete());
    rs[0].write_at("k0", 20, 20, |w| w.set_deadline(Some(100)));
    {
        let (x, y) = rs.split_at_mut(1);
        ship(&y[0], &mut x[0]);
        ship(&x[0], &mut y[0]);
    }
    assert_eq!(rs[1].view_at("k0", 50), View::Missing);
    // Region 2 increments after the old deadline.
    assert_eq!(rs[1].write_at("k0", 30, 200, |w| w.incr_by(1)).0, Ok(1));
    assert_eq!(
        rs[1].ks.stats().expired,
        0,
        "a tombstone is not an expired key"
    );
    {
        let (x, y) = rs.split_at_mut(1);
        ship(&y[0], &mut x[0]);
    }
    for r in &rs {
        assert_eq!(r.view_at("k0", 200), str_view("1"));
    }
}

#[test]
fn write_after_expiry_starts_a_new_key_everywhere() {
    // Region 1 increments, region 2 SETs with a TTL (observing the 5); both hold the key.
    let mut rs = regions(2);
    rs[0].write_at("k0", 10, 10, |w| w.incr_by(5)).0.unwrap();
    {
        let (x, y) = rs.split_at_mut(1);
        ship(&x[0], &mut y[0]);
    }
    rs[1].write_at("k0", 20, 20, |w| {
        w.set_str(b("100"), false);
        w.set_deadline(Some(1_000));
    });
    {
        let (x, y) = rs.split_at_mut(1);
        ship(&y[0], &mut x[0]);
    }
    // After the deadline region 1 increments: a new key holding 1, on both regions, even
    // though region 2 has not reclaimed the old one yet.
    assert_eq!(
        rs[0].write_at("k0", 2_000, 2_000, |w| w.incr_by(1)).0,
        Ok(1)
    );
    assert_eq!(rs[0].ks.stats().expired, 1);
    {
        let (x, y) = rs.split_at_mut(1);
        ship(&x[0], &mut y[0]);
    }
    for r in &rs {
        assert_eq!(r.view_at("k0", 2_000), str_view("1"));
    }
    // Anti-entropy in either direction agrees.
    {
        let (x, y) = rs.split_at_mut(1);
        x[0].pull(&y[0]);
        y[0].pull(&x[0]);
    }
    for r in &rs {
        assert_eq!(r.view_at("k0", 2_000), str_view("1"));
    }

    // Same for a set: the old members (observed) go, the new one is visible everywhere.
    let mut rs = regions(2);
    rs[0].write_at("k1", 10, 10, |w| {
        w.sadd(&b("old"));
        w.set_deadline(Some(1_000));
    });
    {
        let (x, y) = rs.split_at_mut(1);
        ship(&x[0], &mut y[0]);
    }
    rs[0].write_at("k1", 2_000, 2_000, |w| w.sadd(&b("new")));
    {
        let (x, y) = rs.split_at_mut(1);
        ship(&x[0], &mut y[0]);
    }
    for r in &rs {
        assert_eq!(r.view_at("k1", 2_000), set_view(&["new"], None));
    }
    // A write that changes nothing on an expired key is plain local expiry: no delta.
    let logged = rs[1].log.len();
    rs[1].write_at("k0", 3_000, 3_000, |w| w.srem(b"x"));
    assert_eq!(rs[1].log.len(), logged);
}

// ---- Invalidations (ARCHITECTURE §4: versioned tombstones; stale data never comes back) ----

#[test]
fn invalidation_removes_fill_at_or_below_its_version() {
    let mut rs = regions(2);
    rs[0].op("k0", 10, &Op::SetVersioned(2, 3));
    rs[0].op("k0", 11, &Op::Invalidate(Some(3)));
    converge(&mut rs);
    assert_eq!(rs[1].view("k0"), View::Missing);
}

#[test]
fn fill_newer_than_invalidation_survives_it() {
    let mut rs = regions(2);
    rs[0].op("k0", 10, &Op::SetVersioned(2, 5));
    rs[1].op("k0", 11, &Op::Invalidate(Some(4)));
    converge(&mut rs);
    assert_eq!(rs[0].view("k0"), str_view("abc"));
}

#[test]
fn stale_fill_after_invalidation_is_refused_locally() {
    let mut r = Replica::new(1);
    r.op("k0", 10, &Op::Invalidate(Some(7)));
    let refused = r.write("k0", 11, |w| w.set_str_versioned(b("old"), 7, false));
    assert_eq!(refused, Err(CrdtError::Stale { floor: 7 }));
    assert_eq!(r.view("k0"), View::Missing);
    r.write("k0", 12, |w| w.set_str_versioned(b("new"), 8, false))
        .expect("a newer version is accepted");
    assert_eq!(r.view("k0"), str_view("new"));
}

#[test]
fn replicated_stale_fill_is_hidden_by_the_floor_even_when_it_is_later() {
    // Region 1 applies the invalidation; region 2, which has not seen it yet, fills from a
    // lagging source at the old version with a *later* HLC. The fill wins LWW, but the
    // floor hides it everywhere once both have merged.
    let mut rs = regions(2);
    rs[0].op("k0", 10, &Op::Invalidate(Some(5)));
    rs[1].op("k0", 20, &Op::SetVersioned(1, 5));
    converge(&mut rs);
    assert_eq!(rs[0].view("k0"), View::Missing);
    assert_eq!(rs[1].view("k0"), View::Missing);
    // The hidden fill is dead to later writes: an INCR starts from nothing.
    rs[1].op("k0", 30, &Op::Incr(2));
    converge(&mut rs);
    assert_eq!(rs[0].int("k0"), Some(2));
}

#[test]
fn unversioned_invalidation_removes_any_value_and_type() {
    let mut rs = regions(2);
    rs[0].op("k0", 10, &Op::SetVersioned(0, 9));
    rs[0].op("k1", 10, &Op::Sadd(1));
    rs[1].op("k0", 11, &Op::Invalidate(None));
    let (a, b2) = rs.split_at_mut(1);
    ship(&a[0], &mut b2[0]);
    rs[1].op("k0", 12, &Op::Invalidate(None));
    rs[1].op("k1", 12, &Op::Invalidate(None));
    converge(&mut rs);
    assert_eq!(rs[0].view("k0"), View::Missing);
    assert_eq!(rs[0].view("k1"), View::Missing);
}

#[test]
fn invalidation_floor_survives_expiry_and_eviction() {
    let mut r = Replica::new(1);
    r.op("k0", 10, &Op::Invalidate(Some(4)));
    r.op("k0", 11, &Op::SetVersioned(1, 6));
    r.ks.evict_key(b"k0");
    let refused = r.write("k0", 12, |w| w.set_str_versioned(b("old"), 4, false));
    assert_eq!(refused, Err(CrdtError::Stale { floor: 4 }));
}

#[test]
fn invalidation_floors_are_bounded_by_retention_and_count() {
    let mut r = Replica::new(1);
    for (i, key) in KEYS.iter().enumerate() {
        r.op(key, 10 + i as u64, &Op::Invalidate(Some(3)));
    }
    assert_eq!(r.ks.stats().invalidation_tombstones, 3);
    // Count bound: the oldest goes first.
    assert_eq!(r.ks.expire_invalidations(13, 1_000, 2, 100), 1);
    assert_eq!(
        r.raw("k0"),
        None,
        "a floor-only key is dropped with its floor"
    );
    assert!(r.raw("k1").is_some());
    // Retention: everything raised more than 1 s ago.
    assert_eq!(r.ks.expire_invalidations(2_000, 1_000, 100, 100), 2);
    assert_eq!(r.ks.stats().invalidation_tombstones, 0);
    assert_eq!(r.ks.stats().tombstones, 0);
    // With the floor gone, an old fill is accepted again (the documented bound).
    r.write("k1", 3_000, |w| w.set_str_versioned(b("x"), 1, false))
        .expect("accepted after retention");
}
