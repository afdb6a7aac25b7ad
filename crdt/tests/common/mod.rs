//! Shared harness for the integration tests: replicas (a [`Keyspace`] plus its region's
//! [`HlcClock`] and the log of every delta it produced), a small Redis-like op vocabulary,
//! proptest strategies for op histories, and a view of what a client would read.
//!
//! Replicas observe the HLC of everything they merge, like the server does, so a write that
//! causally follows another gets a greater stamp even when physical clocks disagree.

#![allow(dead_code)]

use bytes::Bytes;
use meridian_crdt::{
    Applied, Delta, Entry, EntryWriter, HlcClock, Keyspace, KeyspaceConfig, Kind, RegionId, Str,
    Val,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// Expiry clock of the law tests: no generated deadline is ever reached, so nothing expires
/// and the tests see pure merge behaviour.
pub const NOW_MS: u64 = 1;
/// Generated deadlines are `FAR_DEADLINE_MS + small`.
pub const FAR_DEADLINE_MS: u64 = 1 << 40;

/// Keys used by generated histories; the first and the last share a hash slot.
pub const KEYS: [&str; 3] = ["k0", "k1", "{k0}x"];
const VALUES: [&str; 5] = ["7", "-3", "abc", "0", "12"];
const MEMBERS: [&str; 4] = ["m0", "m1", "m2", "m3"];
const FIELDS: [&str; 3] = ["f0", "f1", "f2"];

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A client-level operation on one key.
#[derive(Clone, Debug)]
pub enum Op {
    Set(u8),
    SetKeepTtl(u8),
    Incr(i64),
    Del,
    Sadd(u8),
    Srem(u8),
    Hset(u8, u8),
    Hincr(u8, i64),
    Hdel(u8),
    Expire(u64),
    Persist,
    /// `SET k v VERSION n` (refused at or below the key's invalidation floor).
    SetVersioned(u8, u64),
    /// An invalidation record: `Some(v)` versioned, `None` unconditional.
    Invalidate(Option<u64>),
    Zadd(u8, i8),
    Zincr(u8, i8),
    Zrem(u8),
}

pub fn value(i: u8) -> Bytes {
    b(VALUES[usize::from(i) % VALUES.len()])
}

pub fn member(i: u8) -> Bytes {
    b(MEMBERS[usize::from(i) % MEMBERS.len()])
}

pub fn field(i: u8) -> Bytes {
    b(FIELDS[usize::from(i) % FIELDS.len()])
}

/// Run `op` the way a command would: type-checked ops answer WRONGTYPE (no change) on a key
/// of another type, `EXPIRE`/`PERSIST` do nothing on a missing key.
pub fn apply_op(w: &mut EntryWriter, op: &Op) {
    match *op {
        Op::Set(v) => w.set_str(value(v), false),
        Op::SetKeepTtl(v) => w.set_str(value(v), true),
        Op::Incr(by) => {
            let _ = w.incr_by(by);
        }
        Op::Del => {
            w.delete();
        }
        Op::Sadd(m) => {
            if w.expect(Kind::Set).is_ok() {
                w.sadd(&member(m));
            }
        }
        Op::Srem(m) => {
            if w.expect(Kind::Set).is_ok() {
                w.srem(&member(m));
            }
        }
        Op::Hset(f, v) => {
            if w.expect(Kind::Hash).is_ok() {
                w.hash_update(&field(f), |s, stamp| s.set(stamp, value(v)));
            }
        }
        Op::Hincr(f, by) => {
            if w.expect(Kind::Hash).is_ok() {
                let _ = w.hash_update(&field(f), |s, stamp| s.incr_by(stamp, by));
            }
        }
        Op::Hdel(f) => {
            if w.expect(Kind::Hash).is_ok() {
                w.hdel(&field(f));
            }
        }
        Op::Expire(d) => {
            if w.entry().is_alive() {
                w.set_deadline(Some(FAR_DEADLINE_MS + d));
            }
        }
        Op::Persist => {
            if w.entry().is_alive() && w.entry().deadline_ms().is_some() {
                w.set_deadline(None);
            }
        }
        Op::SetVersioned(v, version) => {
            let _ = w.set_str_versioned(value(v), version, false);
        }
        Op::Invalidate(version) => {
            w.invalidate(version);
        }
        Op::Zadd(m, sc) => {
            if w.expect(Kind::ZSet).is_ok() {
                w.zadd(&member(m), f64::from(sc) / 4.0);
            }
        }
        Op::Zincr(m, by) => {
            if w.expect(Kind::ZSet).is_ok() {
                w.zincr(&member(m), f64::from(by));
            }
        }
        Op::Zrem(m) => {
            if w.expect(Kind::ZSet).is_ok() {
                w.zrem(&member(m));
            }
        }
    }
}

pub fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u8>().prop_map(Op::Set),
        1 => any::<u8>().prop_map(Op::SetKeepTtl),
        3 => (-20i64..20).prop_map(Op::Incr),
        2 => Just(Op::Del),
        4 => any::<u8>().prop_map(Op::Sadd),
        2 => any::<u8>().prop_map(Op::Srem),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(f, v)| Op::Hset(f, v)),
        2 => (any::<u8>(), -20i64..20).prop_map(|(f, by)| Op::Hincr(f, by)),
        2 => any::<u8>().prop_map(Op::Hdel),
        1 => (0u64..5).prop_map(Op::Expire),
        1 => Just(Op::Persist),
        2 => (any::<u8>(), 1u64..6).prop_map(|(v, n)| Op::SetVersioned(v, n)),
        1 => proptest::option::weighted(0.8, 1u64..6).prop_map(Op::Invalidate),
        3 => (any::<u8>(), -8i8..8).prop_map(|(m, s)| Op::Zadd(m, s)),
        2 => (any::<u8>(), -8i8..8).prop_map(|(m, s)| Op::Zincr(m, s)),
        2 => any::<u8>().prop_map(Op::Zrem),
    ]
}

/// One step of a multi-replica history.
#[derive(Clone, Debug)]
pub enum Step {
    /// A local write on replica `replica` at physical time `physical_ms`.
    Write {
        replica: usize,
        key: usize,
        op: Op,
        physical_ms: u64,
    },
    /// Replica `to` receives delta number `pick` (mod log length) of replica `from`:
    /// any order, duplicates allowed.
    Deliver { from: usize, to: usize, pick: usize },
    /// Anti-entropy: replica `to` merges `from`'s whole state of one key.
    Pull { from: usize, to: usize, key: usize },
}

pub fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<usize>(), 0..KEYS.len(), op_strategy(), 0u64..3_000).prop_map(
            |(replica, key, op, physical_ms)| Step::Write { replica, key, op, physical_ms }
        ),
        2 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(from, to, pick)| Step::Deliver { from, to, pick }),
        1 => (any::<usize>(), any::<usize>(), 0..KEYS.len())
            .prop_map(|(from, to, key)| Step::Pull { from, to, key }),
    ]
}

pub fn history_strategy(max_steps: usize) -> impl Strategy<Value = (usize, Vec<Step>)> {
    (
        2usize..=4,
        prop::collection::vec(step_strategy(), 1..max_steps),
    )
}

pub struct Replica {
    pub ks: Keyspace,
    pub clock: HlcClock,
    /// Every delta this replica produced, in order.
    pub log: Vec<Delta>,
}

impl Replica {
    /// A multi-region replica (keeps tombstones until `gc`).
    pub fn new(region: u16) -> Replica {
        Replica::with_tombstones(region, true)
    }

    pub fn with_tombstones(region: u16, retain_tombstones: bool) -> Replica {
        Replica {
            ks: Keyspace::new(KeyspaceConfig {
                region: RegionId(region),
                retain_tombstones,
                seed: 0x5eed ^ u64::from(region),
            }),
            clock: HlcClock::new(RegionId(region)),
            log: Vec::new(),
        }
    }

    pub fn region(&self) -> RegionId {
        self.clock.region()
    }

    /// A local write stamped by this region's clock at `physical_ms`; its delta (if any)
    /// goes to the log and is also returned.
    pub fn write_at<R>(
        &mut self,
        key: &str,
        physical_ms: u64,
        now_ms: u64,
        f: impl FnOnce(&mut EntryWriter) -> R,
    ) -> (R, Option<Delta>) {
        let stamp = self.clock.now(physical_ms);
        let r = self.ks.write(key.as_bytes(), stamp, now_ms, f);
        let mut deltas: Vec<Delta> = self.ks.drain_deltas().collect();
        assert!(deltas.len() <= 1, "one write yields at most one delta");
        let d = deltas.pop();
        if let Some(d) = &d {
            assert_eq!(d.stamp, stamp);
            assert_eq!(d.key.as_ref(), key.as_bytes());
            self.log.push(d.clone());
        }
        (r, d)
    }

    pub fn write<R>(
        &mut self,
        key: &str,
        physical_ms: u64,
        f: impl FnOnce(&mut EntryWriter) -> R,
    ) -> R {
        self.write_at(key, physical_ms, NOW_MS, f).0
    }

    pub fn op(&mut self, key: &str, physical_ms: u64, op: &Op) -> Option<Delta> {
        self.write_at(key, physical_ms, NOW_MS, |w| apply_op(w, op))
            .1
    }

    /// Merge a remote delta, observing its HLC first (as the server does).
    pub fn apply(&mut self, d: &Delta) -> Applied {
        self.clock.observe(d.stamp.hlc.max(d.state.max_hlc()));
        self.ks.apply_delta(d)
    }

    /// Anti-entropy: merge `other`'s whole state of `key` (tombstones included).
    pub fn pull_key(&mut self, other: &Replica, key: &str) -> Option<Applied> {
        let e = other.ks.raw_entry(key.as_bytes())?.clone();
        self.clock.observe(e.max_hlc());
        Some(self.ks.merge_state(key.as_bytes(), true, &e))
    }

    pub fn pull(&mut self, other: &Replica) {
        for key in KEYS {
            self.pull_key(other, key);
        }
    }

    pub fn raw(&self, key: &str) -> Option<Entry> {
        self.ks.raw_entry(key.as_bytes()).map(|e| e.into_owned())
    }

    pub fn view(&self, key: &str) -> View {
        view_of(self.ks.peek(key.as_bytes(), NOW_MS).as_deref())
    }

    pub fn view_at(&self, key: &str, now_ms: u64) -> View {
        view_of(self.ks.peek(key.as_bytes(), now_ms).as_deref())
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        self.ks
            .peek(key.as_bytes(), NOW_MS)
            .and_then(|e| e.as_str().map(|s| s.integer().expect("integer value")))
    }
}

/// What a client reads for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    Missing,
    Str(Bytes, Option<u64>),
    Set(BTreeSet<Bytes>, Option<u64>),
    Hash(BTreeMap<Bytes, Bytes>, Option<u64>),
    List(Vec<Bytes>, Option<u64>),
    /// Members in order with their scores' bits.
    ZSet(Vec<(Bytes, u64)>, Option<u64>),
}

pub fn str_bytes(s: &Str) -> Bytes {
    s.bytes().expect("a live string has a value")
}

pub fn view_of(e: Option<&Entry>) -> View {
    let Some(e) = e else {
        return View::Missing;
    };
    let deadline = e.deadline_ms();
    match e.visible() {
        None => View::Missing,
        Some(Val::Str(s)) => View::Str(str_bytes(s), deadline),
        Some(Val::Set(s)) => View::Set(s.members().map(Bytes::copy_from_slice).collect(), deadline),
        Some(Val::Hash(h)) => View::Hash(
            h.fields()
                .map(|(f, s)| (Bytes::copy_from_slice(f), str_bytes(s)))
                .collect(),
            deadline,
        ),
        Some(Val::List(l)) => {
            View::List(l.values().map(Bytes::copy_from_slice).collect(), deadline)
        }
        Some(Val::ZSet(z)) => View::ZSet(
            z.iter()
                .map(|(m, s)| (Bytes::copy_from_slice(m), s.to_bits()))
                .collect(),
            deadline,
        ),
    }
}

/// Run a history on `n` fresh replicas (regions 1..=n).
pub fn run_history(n: usize, steps: &[Step]) -> Vec<Replica> {
    let mut rs: Vec<Replica> = (1..=n as u16).map(Replica::new).collect();
    for step in steps {
        run_step(&mut rs, step);
    }
    rs
}

pub fn run_step(rs: &mut [Replica], step: &Step) {
    let n = rs.len();
    match step {
        Step::Write {
            replica,
            key,
            op,
            physical_ms,
        } => {
            rs[replica % n].op(KEYS[*key], *physical_ms, op);
        }
        Step::Deliver { from, to, pick } => {
            let (from, to) = (from % n, to % n);
            if rs[from].log.is_empty() {
                return;
            }
            let d = rs[from].log[pick % rs[from].log.len()].clone();
            rs[to].apply(&d);
        }
        Step::Pull { from, to, key } => {
            let (from, to) = (from % n, to % n);
            if from != to {
                if let Some(e) = rs[from].raw(KEYS[*key]) {
                    rs[to].clock.observe(e.max_hlc());
                    rs[to].ks.merge_state(KEYS[*key].as_bytes(), true, &e);
                }
            }
        }
    }
}

/// Deterministic shuffling for orders chosen by a proptest seed.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// `deltas` in a seeded random order, with some of them repeated.
pub fn shuffled_with_duplicates(deltas: &[Delta], seed: u64) -> Vec<Delta> {
    let mut rng = Xorshift(seed);
    let mut out: Vec<Delta> = deltas.to_vec();
    for d in deltas {
        if rng.below(3) == 0 {
            out.push(d.clone());
        }
    }
    rng.shuffle(&mut out);
    out
}

/// Every replica receives every delta of every other replica (seeded order, duplicates).
pub fn full_sync(rs: &mut [Replica], seed: u64) {
    let all: Vec<Delta> = rs.iter().flat_map(|r| r.log.iter().cloned()).collect();
    for (i, r) in rs.iter_mut().enumerate() {
        for d in shuffled_with_duplicates(&all, seed.wrapping_add(i as u64)) {
            r.apply(&d);
        }
    }
}

/// The merge laws over a family of states of one lattice.
pub fn check_laws<T: Clone + PartialEq + std::fmt::Debug>(
    what: &str,
    states: &[T],
    merge: impl Fn(&mut T, &T),
) {
    let join = |a: &T, b: &T| {
        let mut x = a.clone();
        merge(&mut x, b);
        x
    };
    for a in states {
        assert_eq!(&join(a, a), a, "{what}: merge is idempotent");
        for b in states {
            let ab = join(a, b);
            assert_eq!(ab, join(b, a), "{what}: merge is commutative");
            assert_eq!(join(&ab, b), ab, "{what}: merging again changes nothing");
            for c in states {
                assert_eq!(
                    join(&ab, c),
                    join(a, &join(b, c)),
                    "{what}: merge is associative"
                );
            }
        }
    }
}

/// Anti-entropy between two replicas of one slice: `to` pulls `from`'s whole state.
pub fn pull_between(rs: &mut [Replica], from: usize, to: usize) {
    if from == to {
        return;
    }
    let (src, dst) = if from < to {
        let (l, r) = rs.split_at_mut(to);
        (&l[from], &mut r[0])
    } else {
        let (l, r) = rs.split_at_mut(from);
        (&r[0], &mut l[to])
    };
    dst.pull(src);
}

/// Proptest case count: `default`, or `PROPTEST_CASES` from the environment for a longer
/// soak (`PROPTEST_CASES=5000 cargo test -p meridian-crdt`).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
