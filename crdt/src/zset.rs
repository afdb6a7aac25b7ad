//! Redis sorted sets as a CRDT, with an order index for rank and range queries.
//!
//! A member's state is the lattice of a set member and of a string counter, side by side:
//!
//! - **Existence** is [`Dots`], as in [`crate::OrSet`]: `ZADD` gives the local region's entry
//!   a fresh dot, `ZREM` kills the entries it observed, so an add concurrent with a remove
//!   keeps the member (add-wins).
//! - **The score set by `ZADD`** rides on the dot as its payload: the base score is the
//!   payload of the live dot with the greatest `(hlc, region)`, an LWW register over the
//!   adds that are still alive (a member alive only through increments has base 0).
//! - **`ZINCRBY`** adds to the region's counter contribution ([`FContrib`], the float twin of
//!   [`crate::Contrib`]: per `(region, incarnation)`, with the part a reset observed). A
//!   `ZADD` or `ZREM` resets exactly the increments it observed, as `SET` and `DEL` do for a
//!   string, so an increment concurrent with either survives. A member with unobserved
//!   increments is alive even when its dots are dead (as a string with a live counter is).
//!
//! The score is `base + Σ (net − obs_net)`, the sum taken in `(region, incarnation)` order so
//! every replica computes the same bits. A sum that is not a number (`+inf` and `-inf` from
//! two regions) reads as 0.
//!
//! The members live in an arena (`nodes`) found by a hash index on the member's bytes; the
//! live ones are also in a treap ordered by `(score, member)` whose nodes count their
//! subtree, so ranks, `ZRANGE` by index, score or lex are `O(log n + m)`. Priorities are the
//! member's keyed hash ([`crate::SeededState`]): deterministic for a given seed, not
//! choosable by a client. Dead members (tombstones) stay in the arena and index only.

use crate::dots::Dots;
use crate::hlc::{Hlc, RegionId, Stamp};
use crate::packed::Key;
use crate::zset_table::{Arena, Index};
use crate::SeededState;
use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::hash::BuildHasher;
use thin_vec::ThinVec;

const NIL: u32 = u32::MAX;

/// A score as a dot payload: the bits of an `f64` (ordered by bits, only to make the dot
/// lattice total; scores are compared as floats everywhere else).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScoreBits(pub u64);

impl ScoreBits {
    pub fn of(score: f64) -> ScoreBits {
        ScoreBits(score.to_bits())
    }

    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

/// One incarnation of a region's `ZINCRBY` contribution to a member's score, and the part of
/// it a reset (`ZADD`, `ZREM`) observed. See [`crate::Contrib`] for incarnations and `own`.
#[derive(Copy, Clone, Debug, Serialize, Deserialize)]
pub struct FContrib {
    pub region: RegionId,
    pub inc: Hlc,
    pub hlc: Hlc,
    pub net: f64,
    pub obs_hlc: Hlc,
    pub obs_net: f64,
    #[serde(skip)]
    pub own: bool,
}

impl FContrib {
    fn shared(&self) -> (RegionId, Hlc, Hlc, u64, Hlc, u64) {
        (
            self.region,
            self.inc,
            self.hlc,
            self.net.to_bits(),
            self.obs_hlc,
            self.obs_net.to_bits(),
        )
    }

    pub fn id(&self) -> (RegionId, Hlc) {
        (self.region, self.inc)
    }

    /// Not fully observed by a reset.
    pub fn is_live(&self) -> bool {
        self.hlc > self.obs_hlc
    }

    fn unobserved(&self) -> f64 {
        if !self.is_live() {
            return 0.0;
        }
        let d = self.net - self.obs_net;
        if d.is_nan() {
            0.0
        } else {
            d
        }
    }

    /// Per field max, as [`crate::Contrib`]; a tie of HLCs (never from a sole writer) is
    /// broken by the bits so the join stays total.
    fn merge(&mut self, other: &FContrib) -> bool {
        let mut changed = false;
        if (other.hlc, other.net.to_bits()) > (self.hlc, self.net.to_bits()) {
            self.hlc = other.hlc;
            self.net = other.net;
            changed = true;
        }
        if (other.obs_hlc, other.obs_net.to_bits()) > (self.obs_hlc, self.obs_net.to_bits()) {
            self.obs_hlc = other.obs_hlc;
            self.obs_net = other.obs_net;
            changed = true;
        }
        changed
    }
}

impl PartialEq for FContrib {
    fn eq(&self, o: &FContrib) -> bool {
        self.shared() == o.shared()
    }
}
impl Eq for FContrib {}

/// The replicated state of one member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZState {
    pub dots: Dots<ScoreBits>,
    #[serde(with = "contribs")]
    pub ctr: ThinVec<FContrib>,
}

/// `ThinVec` as the sequence a `Vec` is.
mod contribs {
    use super::FContrib;
    use serde::{Deserialize, Deserializer, Serializer};
    use thin_vec::ThinVec;

    pub fn serialize<S: Serializer>(v: &ThinVec<FContrib>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ThinVec<FContrib>, D::Error> {
        let v = Vec::<FContrib>::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}

impl ZState {
    pub fn is_alive(&self) -> bool {
        self.dots.is_alive() || self.ctr.iter().any(FContrib::is_live)
    }

    /// The visible score (meaningful when alive).
    pub fn score(&self) -> f64 {
        let base = self
            .dots
            .alive()
            .max_by_key(|e| (e.hlc, e.region))
            .map_or(0.0, |e| e.payload.get());
        let mut s = base;
        for c in self.ctr.iter() {
            s += c.unobserved();
        }
        if s.is_nan() {
            0.0
        } else {
            s
        }
    }

    /// A reset (`ZADD`, `ZREM`) observes every increment seen so far. A contribution whose
    /// running sum is no longer finite is given up by its owner (the next increment opens a
    /// new incarnation): `inf − inf` would hide what comes after.
    fn reset_counters(&mut self) {
        for c in self.ctr.iter_mut() {
            c.obs_hlc = c.hlc;
            c.obs_net = c.net;
            if !c.net.is_finite() {
                c.own = false;
            }
        }
    }

    fn merge(&mut self, other: &ZState) -> bool {
        let mut changed = self.dots.merge(&other.dots);
        for theirs in other.ctr.iter() {
            match self.ctr.binary_search_by_key(&theirs.id(), FContrib::id) {
                Ok(i) => changed |= self.ctr[i].merge(theirs),
                Err(i) => {
                    self.ctr.insert(
                        i,
                        FContrib {
                            own: false,
                            ..*theirs
                        },
                    );
                    changed = true;
                }
            }
        }
        changed
    }

    fn max_hlc(&self) -> Hlc {
        let c = self
            .ctr
            .iter()
            .map(|c| c.hlc.max(c.obs_hlc))
            .max()
            .unwrap_or(Hlc::ZERO);
        c.max(self.dots.max_hlc())
    }

    /// Every dot and increment here has reached every region.
    fn is_stable(&self, stable: &impl Fn(RegionId) -> Hlc) -> bool {
        self.dots
            .entries()
            .iter()
            .all(|e| e.hlc <= stable(e.region))
            && self
                .ctr
                .iter()
                .all(|c| c.hlc.max(c.obs_hlc) <= stable(c.region))
    }

    fn heap_bytes(&self) -> usize {
        let dots = if self.dots.0.spilled() {
            self.dots.0.capacity() * std::mem::size_of::<crate::DotEntry<ScoreBits>>()
        } else {
            0
        };
        let ctr = if self.ctr.capacity() == 0 {
            0
        } else {
            16 + self.ctr.capacity() * std::mem::size_of::<FContrib>()
        };
        dots + ctr
    }

    fn digest(&self, h: u64) -> u64 {
        let mut h = h;
        for e in self.dots.alive() {
            h = crate::digest::mix(h, u64::from(e.region.0));
            h = crate::digest::mix(h, e.hlc.0);
            h = crate::digest::mix(h, e.payload.0);
        }
        for c in self.ctr.iter().filter(|c| c.is_live()) {
            h = crate::digest::mix(h, u64::from(c.region.0));
            h = crate::digest::mix(h, c.inc.0);
            h = crate::digest::mix(h, c.hlc.0);
            h = crate::digest::mix(h, c.obs_hlc.0);
            h = crate::digest::mix(h, c.net.to_bits());
            h = crate::digest::mix(h, c.obs_net.to_bits());
        }
        h
    }
}

/// A member in the arena: its bytes, its state, and its place in the order index.
#[derive(Clone, Debug)]
struct Node {
    member: Key,
    /// The visible score (cached: the index's order key).
    score: f64,
    left: u32,
    right: u32,
    /// Nodes in this subtree (0 while not in the index).
    size: u32,
    /// The treap priority: 32 bits of the member's keyed hash (also its index entry's).
    prio: u32,
    state: ZState,
}

/// Bytes the set holds per member besides the member's own heap bytes and state: its node
/// and its index slot.
pub const ZSET_MEMBER_OVERHEAD: usize = std::mem::size_of::<Node>() + 8;

#[derive(Clone, Default)]
pub struct ZSet {
    nodes: Arena<Node>,
    /// Arena slots of members physically dropped, for reuse.
    free: Vec<u32>,
    /// Member → arena slot.
    index: Index,
    root: u32,
    /// Heap bytes of members' keys and states (the arena and index are counted by capacity).
    extra_bytes: usize,
}

/// 32 bits of the member's keyed hash: its index entry's and its treap priority.
fn hash32(m: &[u8]) -> u32 {
    (SeededState.hash_one(m) >> 32) as u32
}

fn cmp_key(a_score: f64, a: &[u8], b_score: f64, b: &[u8]) -> Ordering {
    a_score
        .partial_cmp(&b_score)
        .unwrap_or(Ordering::Equal)
        .then_with(|| a.cmp(b))
}

/// How a bound compares: a score bound (`min` inclusive or not) or a lex bound.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum ScoreBound {
    Incl(f64),
    Excl(f64),
}

#[derive(Copy, Clone, Debug, PartialEq)]
pub enum LexBound<'a> {
    NegInf,
    PosInf,
    Incl(&'a [u8]),
    Excl(&'a [u8]),
}

impl ZSet {
    fn empty_root() -> u32 {
        NIL
    }

    pub fn new() -> ZSet {
        ZSet {
            root: Self::empty_root(),
            ..ZSet::default()
        }
    }

    /// Live members.
    pub fn len(&self) -> usize {
        self.size(self.root_idx())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn root_idx(&self) -> u32 {
        // `Default` leaves root 0 with no nodes: treat an empty arena as an empty tree.
        if self.nodes.is_empty() {
            NIL
        } else {
            self.root
        }
    }

    /// Members including tombstones.
    pub fn element_count(&self) -> usize {
        self.index.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.free.capacity() * 4
            + self.index.capacity() * 9
            + self.extra_bytes
    }

    fn size(&self, t: u32) -> usize {
        if t == NIL {
            0
        } else {
            self.nodes[t].size as usize
        }
    }

    fn find(&self, member: &[u8]) -> Option<u32> {
        let nodes = &self.nodes;
        self.index
            .find(hash32(member), |i| *nodes[i].member == *member)
    }

    /// A member's state, even when dead.
    pub fn raw_get(&self, member: &[u8]) -> Option<&ZState> {
        self.find(member).map(|i| &self.nodes[i].state)
    }

    pub fn score(&self, member: &[u8]) -> Option<f64> {
        let i = self.find(member)?;
        let n = &self.nodes[i];
        (n.size > 0).then_some(n.score)
    }

    pub fn contains(&self, member: &[u8]) -> bool {
        self.score(member).is_some()
    }

    /// A lookup hint (see `Keyspace::prefetch`).
    pub(crate) fn prefetch(&self, member: &[u8]) {
        let _ = self.find(member);
    }

    /// Every member with its state, tombstones included (deltas, anti-entropy, tests).
    pub fn raw(&self) -> impl Iterator<Item = (&[u8], &ZState)> {
        self.index.slots().map(|i| {
            let n = &self.nodes[i];
            (&n.member[..], &n.state)
        })
    }

    /// The 0-based rank of a live member, ascending.
    pub fn rank(&self, member: &[u8]) -> Option<usize> {
        let x = self.find(member)?;
        let xn = &self.nodes[x];
        if xn.size == 0 {
            return None;
        }
        let mut t = self.root_idx();
        let mut r = 0;
        while t != NIL && t != x {
            let n = &self.nodes[t];
            if cmp_key(xn.score, &xn.member, n.score, &n.member) == Ordering::Less {
                t = n.left;
            } else {
                r += self.size(n.left) + 1;
                t = n.right;
            }
        }
        Some(r + self.size(xn.left))
    }

    /// How many live members come before the first one for which `before` is false
    /// (`before` must hold for a prefix of the order).
    fn count_while(&self, before: impl Fn(f64, &[u8]) -> bool) -> usize {
        let mut t = self.root_idx();
        let mut c = 0;
        while t != NIL {
            let n = &self.nodes[t];
            if before(n.score, &n.member) {
                c += self.size(n.left) + 1;
                t = n.right;
            } else {
                t = n.left;
            }
        }
        c
    }

    /// Rank of the first member at or above `min` (a score range's start).
    pub fn rank_from_score(&self, min: ScoreBound) -> usize {
        match min {
            ScoreBound::Incl(x) => self.count_while(|s, _| s < x),
            ScoreBound::Excl(x) => self.count_while(|s, _| s <= x),
        }
    }

    /// Rank one past the last member at or below `max` (a score range's end).
    pub fn rank_to_score(&self, max: ScoreBound) -> usize {
        match max {
            ScoreBound::Incl(x) => self.count_while(|s, _| s <= x),
            ScoreBound::Excl(x) => self.count_while(|s, _| s < x),
        }
    }

    /// Rank of the first member at or above a lex `min` (members of equal score).
    pub fn rank_from_lex(&self, min: LexBound) -> usize {
        match min {
            LexBound::NegInf => 0,
            LexBound::PosInf => self.len(),
            LexBound::Incl(x) => self.count_while(|_, m| m < x),
            LexBound::Excl(x) => self.count_while(|_, m| m <= x),
        }
    }

    /// Rank one past the last member at or below a lex `max`.
    pub fn rank_to_lex(&self, max: LexBound) -> usize {
        match max {
            LexBound::NegInf => 0,
            LexBound::PosInf => self.len(),
            LexBound::Incl(x) => self.count_while(|_, m| m <= x),
            LexBound::Excl(x) => self.count_while(|_, m| m < x),
        }
    }

    /// Live members in order from rank `start` (ascending), or from rank `start` counted
    /// from the end (descending, `rev`): `O(log n)` to start, `O(1)` amortised per step.
    pub fn iter_from(&self, start: usize, rev: bool) -> ZIter<'_> {
        let mut stack = Vec::new();
        let len = self.len();
        if start < len {
            // Forward rank of the first member to yield.
            let mut k = if rev { len - 1 - start } else { start };
            let mut t = self.root_idx();
            while t != NIL {
                let n = &self.nodes[t];
                let ls = self.size(n.left);
                match k.cmp(&ls) {
                    Ordering::Less => {
                        if !rev {
                            stack.push(t);
                        }
                        t = n.left;
                    }
                    Ordering::Equal => {
                        stack.push(t);
                        break;
                    }
                    Ordering::Greater => {
                        if rev {
                            stack.push(t);
                        }
                        k -= ls + 1;
                        t = n.right;
                    }
                }
            }
        }
        ZIter {
            set: self,
            stack,
            rev,
        }
    }

    /// Live members ascending.
    pub fn iter(&self) -> ZIter<'_> {
        self.iter_from(0, false)
    }

    // --- the treap -------------------------------------------------------------------------

    fn less(&self, a: u32, b: u32) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        cmp_key(x.score, &x.member, y.score, &y.member) == Ordering::Less
    }

    fn update(&mut self, t: u32) {
        let n = &self.nodes[t];
        let s = 1 + self.size(n.left) + self.size(n.right);
        self.nodes[t].size = s as u32;
    }

    /// Split the subtree at `t` into the nodes before `x` and the nodes from `x` on.
    fn split(&mut self, t: u32, x: u32) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.less(t, x) {
            let (l, r) = self.split(self.nodes[t].right, x);
            self.nodes[t].right = l;
            self.update(t);
            (t, r)
        } else {
            let (l, r) = self.split(self.nodes[t].left, x);
            self.nodes[t].left = r;
            self.update(t);
            (l, t)
        }
    }

    /// Join two subtrees, every node of `a` before every node of `b`.
    fn join(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a].prio >= self.nodes[b].prio {
            let r = self.join(self.nodes[a].right, b);
            self.nodes[a].right = r;
            self.update(a);
            a
        } else {
            let l = self.join(a, self.nodes[b].left);
            self.nodes[b].left = l;
            self.update(b);
            b
        }
    }

    fn insert_at(&mut self, t: u32, x: u32) -> u32 {
        if t == NIL {
            return x;
        }
        if self.nodes[x].prio > self.nodes[t].prio {
            let (l, r) = self.split(t, x);
            let n = &mut self.nodes[x];
            n.left = l;
            n.right = r;
            self.update(x);
            return x;
        }
        if self.less(x, t) {
            let l = self.insert_at(self.nodes[t].left, x);
            self.nodes[t].left = l;
        } else {
            let r = self.insert_at(self.nodes[t].right, x);
            self.nodes[t].right = r;
        }
        self.update(t);
        t
    }

    fn erase_at(&mut self, t: u32, x: u32) -> u32 {
        if t == NIL {
            return NIL;
        }
        if t == x {
            let n = &self.nodes[t];
            return self.join(n.left, n.right);
        }
        if self.less(x, t) {
            let l = self.erase_at(self.nodes[t].left, x);
            self.nodes[t].left = l;
        } else {
            let r = self.erase_at(self.nodes[t].right, x);
            self.nodes[t].right = r;
        }
        self.update(t);
        t
    }

    fn tree_insert(&mut self, x: u32) {
        let n = &mut self.nodes[x];
        n.left = NIL;
        n.right = NIL;
        n.size = 1;
        let root = self.root_idx();
        self.root = self.insert_at(root, x);
    }

    fn tree_remove(&mut self, x: u32) {
        let root = self.root_idx();
        self.root = self.erase_at(root, x);
        let n = &mut self.nodes[x];
        n.left = NIL;
        n.right = NIL;
        n.size = 0;
    }

    // --- members -----------------------------------------------------------------------------

    /// The arena slot of `member`, created (dead, out of the index) if absent.
    fn slot_for(&mut self, member: &[u8]) -> u32 {
        if let Some(i) = self.find(member) {
            return i;
        }
        let h = hash32(member);
        let node = Node {
            member: Key::new(member),
            score: 0.0,
            left: NIL,
            right: NIL,
            size: 0,
            prio: h,
            state: ZState::default(),
        };
        self.extra_bytes += node.member.heap_bytes();
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                if self.nodes.is_empty() {
                    self.root = NIL;
                }
                self.nodes.push(node)
            }
        };
        self.index.insert(h, i);
        i
    }

    /// Run `f` on a member's state and put the member back in order. Returns whether it
    /// was alive before and is alive after.
    fn with_state<R>(&mut self, i: u32, f: impl FnOnce(&mut ZState) -> R) -> (bool, bool, R) {
        let was = self.nodes[i].size > 0;
        let before_bytes = self.nodes[i].state.heap_bytes();
        if was {
            self.tree_remove(i);
        }
        let n = &mut self.nodes[i];
        let r = f(&mut n.state);
        let now = n.state.is_alive();
        n.score = n.state.score();
        let after_bytes = n.state.heap_bytes();
        self.extra_bytes = self.extra_bytes + after_bytes - before_bytes;
        if now {
            self.tree_insert(i);
        }
        (was, now, r)
    }

    fn state_delta(member: &[u8], state: &ZState) -> ZSet {
        let mut d = ZSet::new();
        d.merge_member(member, state);
        d
    }

    /// `ZADD member score`: this region's dot now carries `score`, and the increments seen
    /// so far are reset. Returns whether the member was absent, and the delta.
    pub fn add(&mut self, stamp: Stamp, member: &[u8], score: f64) -> (bool, ZSet) {
        let i = self.slot_for(member);
        let (was, _, ()) = self.with_state(i, |s| {
            s.reset_counters();
            s.dots.set(stamp.region, stamp.hlc, ScoreBits::of(score));
        });
        let delta = Self::state_delta(member, &self.nodes[i].state);
        (!was, delta)
    }

    /// `ZINCRBY member by`: adds to this region's contribution (opening one if it holds
    /// none). Returns the new score and the delta; `None` (nothing changed) when the result
    /// would not be a number.
    pub fn incr(&mut self, stamp: Stamp, member: &[u8], by: f64) -> Option<(f64, ZSet)> {
        let current = self.score(member).unwrap_or(0.0);
        if (current + by).is_nan() {
            return None;
        }
        let i = self.slot_for(member);
        self.with_state(i, |s| {
            match s.ctr.iter().position(|c| c.own && c.region == stamp.region) {
                Some(k) => {
                    let c = &mut s.ctr[k];
                    c.net += by;
                    c.hlc = c.hlc.max(stamp.hlc);
                }
                None => {
                    let inc = crate::strval::new_incarnation(
                        s.ctr
                            .iter()
                            .filter(|c| c.region == stamp.region)
                            .map(|c| c.inc),
                        stamp.hlc,
                    );
                    let c = FContrib {
                        region: stamp.region,
                        inc,
                        hlc: stamp.hlc,
                        net: by,
                        obs_hlc: Hlc::ZERO,
                        obs_net: 0.0,
                        own: true,
                    };
                    let at = match s.ctr.binary_search_by_key(&c.id(), FContrib::id) {
                        Ok(k) | Err(k) => k,
                    };
                    s.ctr.insert(at, c);
                }
            }
        });
        let n = &self.nodes[i];
        Some((n.score, Self::state_delta(member, &n.state)))
    }

    /// `ZREM`: observed remove of the member's dots and increments. Returns the member's
    /// state (the delta) if it was present.
    pub fn remove(&mut self, member: &[u8]) -> Option<ZState> {
        let i = self.find(member)?;
        if self.nodes[i].size == 0 {
            return None;
        }
        self.with_state(i, |s| {
            s.dots.kill_all();
            s.reset_counters();
        });
        Some(self.nodes[i].state.clone())
    }

    /// Physically drop a dead member (single-region mode keeps no tombstones).
    pub fn forget_if_dead(&mut self, member: &[u8]) {
        if let Some(i) = self.find(member) {
            if self.nodes[i].size == 0 {
                self.drop_node(i);
            }
        }
    }

    fn drop_node(&mut self, i: u32) {
        self.index.remove(self.nodes[i].prio, i);
        let n = &mut self.nodes[i];
        self.extra_bytes -= n.member.heap_bytes() + n.state.heap_bytes();
        n.member = Key::new(b"");
        n.state = ZState::default();
        if i as usize + 1 == self.nodes.len() {
            self.nodes.pop();
        } else {
            self.free.push(i);
        }
        if self.index.is_empty() {
            *self = ZSet::new();
        }
    }

    pub fn merge_member(&mut self, member: &[u8], theirs: &ZState) -> bool {
        if let Some(i) = self.find(member) {
            if self.nodes[i].state == *theirs {
                return false;
            }
        }
        let i = self.slot_for(member);
        let (_, _, changed) = self.with_state(i, |s| s.merge(theirs));
        changed
    }

    pub fn merge(&mut self, other: &ZSet) -> bool {
        let mut changed = false;
        for (m, s) in other.raw() {
            changed |= self.merge_member(m, s);
        }
        changed
    }

    /// Observed remove of every member; returns the killed members (the delta).
    pub fn kill_all(&mut self) -> ZSet {
        let mut delta = ZSet::new();
        let live: Vec<u32> = self.index.slots().collect();
        for i in live {
            if self.nodes[i].size == 0 {
                continue;
            }
            self.with_state(i, |s| {
                s.dots.kill_all();
                s.reset_counters();
            });
            let n = &self.nodes[i];
            delta.merge_member(&n.member, &n.state);
        }
        delta
    }

    /// Drop dead members every region has seen (`keep_alive_only`: every dead member).
    pub fn gc(&mut self, stable: &impl Fn(RegionId) -> Hlc, keep_alive_only: bool) {
        let all: Vec<u32> = self.index.slots().collect();
        for i in all {
            let n = &mut self.nodes[i];
            let before = n.state.heap_bytes();
            n.state.dots.gc(stable);
            let after = n.state.heap_bytes();
            self.extra_bytes = self.extra_bytes + after - before;
            let n = &self.nodes[i];
            if n.size == 0 && (keep_alive_only || n.state.is_stable(stable)) {
                self.drop_node(i);
            }
        }
    }

    pub fn max_hlc(&self) -> Hlc {
        self.raw()
            .map(|(_, s)| s.max_hlc())
            .max()
            .unwrap_or(Hlc::ZERO)
    }

    pub(crate) fn digest(&self, h: u64) -> u64 {
        let mut acc: u64 = 0;
        for (m, s) in self.raw() {
            if s.is_alive() {
                acc = acc.wrapping_add(s.digest(crate::digest::mix_bytes(0x25e7, m)));
            }
        }
        crate::digest::mix(h, acc)
    }

    /// Every check a test wants after a change: the index holds exactly the live members,
    /// in order, with right sizes and cached scores.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let mut prev: Option<u32> = None;
        let mut count = 0;
        for (m, s) in self.iter() {
            let i = self.find(m).expect("indexed");
            assert_eq!(s.to_bits(), self.nodes[i].state.score().to_bits());
            if let Some(p) = prev {
                assert!(self.less(p, i), "out of order");
            }
            prev = Some(i);
            count += 1;
        }
        let alive = self.raw().filter(|(_, s)| s.is_alive()).count();
        assert_eq!(count, alive);
        assert_eq!(self.len(), alive);
    }
}

pub struct ZIter<'a> {
    set: &'a ZSet,
    stack: Vec<u32>,
    rev: bool,
}

impl<'a> Iterator for ZIter<'a> {
    type Item = (&'a [u8], f64);

    fn next(&mut self) -> Option<Self::Item> {
        let x = self.stack.pop()?;
        let nodes = &self.set.nodes;
        let n = &nodes[x];
        let mut t = if self.rev { n.left } else { n.right };
        while t != NIL {
            self.stack.push(t);
            let c = &nodes[t];
            t = if self.rev { c.right } else { c.left };
        }
        Some((&n.member[..], n.score))
    }
}

impl PartialEq for ZSet {
    fn eq(&self, other: &Self) -> bool {
        self.element_count() == other.element_count()
            && self.raw().all(|(m, s)| other.raw_get(m) == Some(s))
    }
}
impl Eq for ZSet {}

impl std::fmt::Debug for ZSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.raw()).finish()
    }
}

/// Serialized as a sequence of `(member, state)`; decoding merges each into an empty set,
/// so a repeated member or unsorted dots from a hostile peer come out canonical.
impl Serialize for ZSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.element_count()))?;
        for (m, st) in self.raw() {
            seq.serialize_element(&(serde_bytes_ref(m), st))?;
        }
        seq.end()
    }
}

/// A member's bytes serialized as bytes (not a sequence of u8).
struct BytesRef<'a>(&'a [u8]);

fn serde_bytes_ref(b: &[u8]) -> BytesRef<'_> {
    BytesRef(b)
}

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de> Deserialize<'de> for ZSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ZSet;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of sorted-set members")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ZSet, A::Error> {
                let mut z = ZSet::new();
                while let Some((m, st)) = seq.next_element::<(Key, ZState)>()? {
                    z.merge_member(&m, &st);
                }
                Ok(z)
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn st(h: u64, r: u16) -> Stamp {
        Stamp::new(Hlc(h), RegionId(r))
    }

    fn view(z: &ZSet) -> Vec<(Vec<u8>, f64)> {
        z.iter().map(|(m, s)| (m.to_vec(), s)).collect()
    }

    #[test]
    fn order_rank_and_ranges() {
        let mut z = ZSet::new();
        for (i, m) in ["d", "a", "c", "b", "e"].iter().enumerate() {
            z.add(st(i as u64 + 1, 1), m.as_bytes(), (i % 3) as f64);
        }
        z.check_invariants();
        // scores: d0 a1 c2 b0 e1 → order b0 d0 a1 e1 c2
        let names: Vec<_> = z.iter().map(|(m, _)| m.to_vec()).collect();
        assert_eq!(names, [b"b", b"d", b"a", b"e", b"c"].map(|x| x.to_vec()));
        assert_eq!(z.rank(b"a"), Some(2));
        assert_eq!(z.rank(b"zz"), None);
        assert_eq!(z.rank_from_score(ScoreBound::Incl(1.0)), 2);
        assert_eq!(z.rank_from_score(ScoreBound::Excl(1.0)), 4);
        assert_eq!(z.rank_to_score(ScoreBound::Incl(1.0)), 4);
        let rev: Vec<_> = z.iter_from(1, true).map(|(m, _)| m.to_vec()).collect();
        assert_eq!(rev, [b"e", b"a", b"d", b"b"].map(|x| x.to_vec()));
        let fwd: Vec<_> = z.iter_from(3, false).map(|(m, _)| m.to_vec()).collect();
        assert_eq!(fwd, [b"e", b"c"].map(|x| x.to_vec()));
        z.remove(b"a");
        z.check_invariants();
        assert_eq!(z.len(), 4);
        assert_eq!(z.score(b"a"), None);
    }

    #[test]
    fn add_wins_over_concurrent_remove_with_its_score() {
        let mut a = ZSet::new();
        a.add(st(1, 1), b"m", 1.0);
        let mut b = a.clone();
        b.remove(b"m");
        a.add(st(2, 1), b"m", 5.0);
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.score(b"m"), Some(5.0));
    }

    #[test]
    fn increments_add_up_and_zadd_resets_only_what_it_saw() {
        let mut a = ZSet::new();
        a.add(st(1, 1), b"m", 10.0);
        let mut b = a.clone();
        a.incr(st(2, 1), b"m", 2.0).unwrap();
        b.incr(st(3, 2), b"m", 3.0).unwrap();
        a.merge(&b);
        b.merge(&a);
        assert_eq!(a.score(b"m"), Some(15.0));
        // B sets the score having seen everything; A increments concurrently.
        b.add(st(10, 2), b"m", 1.0);
        a.incr(st(11, 1), b"m", 4.0).unwrap();
        a.merge(&b);
        b.merge(&a);
        assert_eq!(a, b);
        assert_eq!(a.score(b"m"), Some(5.0));
        a.check_invariants();
    }

    #[test]
    fn zincrby_after_zrem_starts_from_zero() {
        let mut a = ZSet::new();
        a.add(st(1, 1), b"m", 10.0);
        a.incr(st(2, 1), b"m", 2.0).unwrap();
        a.remove(b"m");
        assert_eq!(a.score(b"m"), None);
        let (s, _) = a.incr(st(3, 1), b"m", 1.5).unwrap();
        assert_eq!(s, 1.5);
        assert!(a.incr(st(4, 1), b"m", f64::INFINITY).is_some());
        assert!(a.incr(st(5, 1), b"m", f64::NEG_INFINITY).is_none());
        assert_eq!(a.score(b"m"), Some(f64::INFINITY));
        a.add(st(6, 1), b"m", 1.0);
        a.incr(st(7, 1), b"m", 1.0).unwrap();
        assert_eq!(a.score(b"m"), Some(2.0), "a reset of an infinite sum");
    }

    #[test]
    fn serde_round_trip_and_gc() {
        let mut a = ZSet::new();
        for i in 0..100u64 {
            a.add(st(i + 1, 1), format!("m{i}").as_bytes(), (i % 7) as f64);
        }
        for i in 0..50u64 {
            a.remove(format!("m{}", i * 2).as_bytes());
        }
        let bytes = postcard::to_allocvec(&a).unwrap();
        let back: ZSet = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, a);
        assert_eq!(view(&back), view(&a));
        let mut g = a.clone();
        g.gc(&|_| Hlc(1000), false);
        assert_eq!(g.element_count(), 50);
        assert_eq!(view(&g), view(&a));
        g.check_invariants();
        for i in 0..100u64 {
            g.forget_if_dead(format!("m{i}").as_bytes());
        }
        g.check_invariants();
    }

    /// Past the arena's first chunk and the index's incremental size: members dropped
    /// and added again (reusing freed slots) stay in order and findable.
    #[test]
    fn large_sets_drop_and_reuse_slots() {
        let mut z = ZSet::new();
        let mut h = 0u64;
        let mut st_next = || {
            h += 1;
            st(h, 1)
        };
        for i in 0..20_000u32 {
            z.add(st_next(), format!("m{i}").as_bytes(), f64::from(i % 1000));
        }
        for i in (0..20_000u32).filter(|i| i % 3 == 0) {
            let m = format!("m{i}");
            assert!(z.remove(m.as_bytes()).is_some());
            z.forget_if_dead(m.as_bytes());
        }
        assert_eq!(z.element_count(), 20_000 - 6_667);
        for i in 0..5_000u32 {
            z.add(st_next(), format!("n{i}").as_bytes(), -f64::from(i));
        }
        z.check_invariants();
        assert_eq!(z.len(), 20_000 - 6_667 + 5_000);
        assert_eq!(z.rank(b"n4999"), Some(0));
        assert_eq!(z.score(b"m1"), Some(1.0));
        assert_eq!(z.score(b"m3"), None);
        let back: ZSet = postcard::from_bytes(&postcard::to_allocvec(&z).unwrap()).unwrap();
        assert_eq!(back, z);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(usize, u8, i8),
        Incr(usize, u8, i8),
        Rem(usize, u8),
        Sync(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 0..8u8, -4..4i8).prop_map(|(r, m, s)| Op::Add(r, m, s)),
            (0..3usize, 0..8u8, -4..4i8).prop_map(|(r, m, s)| Op::Incr(r, m, s)),
            (0..3usize, 0..8u8).prop_map(|(r, m)| Op::Rem(r, m)),
            (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync(a, b)),
        ]
    }

    /// Replicas after a random history, and every state they passed through.
    fn run(ops: &[Op]) -> Vec<ZSet> {
        let mut rs = vec![ZSet::new(), ZSet::new(), ZSet::new()];
        let mut seen = Vec::new();
        for (t, o) in ops.iter().enumerate() {
            let h = t as u64 + 1;
            match *o {
                Op::Add(r, m, s) => {
                    rs[r].add(st(h, r as u16), &[m], f64::from(s) / 2.0);
                }
                Op::Incr(r, m, s) => {
                    rs[r].incr(st(h, r as u16), &[m], f64::from(s));
                }
                Op::Rem(r, m) => {
                    rs[r].remove(&[m]);
                }
                Op::Sync(a, b) => {
                    let from = rs[a].clone();
                    rs[b].merge(&from);
                }
            }
            for r in &rs {
                r.check_invariants();
            }
            if t % 4 == 0 {
                seen.extend(rs.iter().cloned());
            }
        }
        seen.extend(rs);
        seen
    }

    fn joined(a: &ZSet, b: &ZSet) -> ZSet {
        let mut x = a.clone();
        x.merge(b);
        x
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn merge_is_commutative_associative_idempotent(ops in prop::collection::vec(op(), 1..60)) {
            let states = run(&ops);
            let n = states.len();
            let pick = |i: usize| &states[i % n];
            for i in 0..n.min(6) {
                let (a, b, c) = (pick(i), pick(i * 3 + 1), pick(i * 7 + 2));
                let ab = joined(a, b);
                let ba = joined(b, a);
                prop_assert_eq!(&ab, &ba);
                prop_assert_eq!(view(&ab), view(&ba));
                prop_assert_eq!(ab.digest(0), ba.digest(0));
                let abc1 = joined(&ab, c);
                let abc2 = joined(a, &joined(b, c));
                prop_assert_eq!(&abc1, &abc2);
                prop_assert_eq!(view(&abc1), view(&abc2));
                prop_assert_eq!(&joined(a, a), a);
                abc1.check_invariants();
            }
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// A member's fixed cost stays compact: redis-server spends 60–100 bytes per member of
    /// a large sorted set, and the budget is twice that with the member's bytes.
    #[test]
    fn per_member_metadata_is_compact() {
        assert!(
            std::mem::size_of::<Node>() <= 96,
            "node is {} bytes",
            std::mem::size_of::<Node>()
        );
        let mut z = ZSet::new();
        for i in 0..100_000u64 {
            z.add(
                Stamp::new(Hlc(i + 1), RegionId(1)),
                format!("member:{i:08}").as_bytes(),
                i as f64,
            );
        }
        let per = z.heap_bytes() / 100_000;
        println!(
            "node {} B, heap per member {per} B",
            std::mem::size_of::<Node>()
        );
        assert!(per <= 160, "{per} bytes per member");
    }
}
