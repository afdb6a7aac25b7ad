//! The key-level envelope: a key's typed components, its TTL, and the [`Delta`] every local
//! write yields.
//!
//! An [`Entry`] holds at most one component per type (string, set, hash), each with the stamp
//! of the write that created it. Normally there is exactly one; two appear only when regions
//! wrote different types concurrently, and then the live component with the greater creation
//! stamp is the visible one (deterministic type-conflict rule). Keeping the loser as its own
//! lattice component keeps merge associative.
//!
//! Existence is observed-remove: `DEL` kills exactly the dots and increments it saw. The TTL is
//! [`Dots`] of deadlines: a causally later `EXPIRE`/`PERSIST` kills the ones it saw; among
//! concurrent ones the longest deadline wins and `PERSIST` beats any deadline. A write that
//! creates the key (re)starts it without TTL, like Redis: it kills the deadlines left over
//! from an earlier incarnation (an emptied set, or an `EXPIRE` that raced a `DEL`).
//!
//! A dead element keeps the dots of the write that created it, not of the write that killed
//! it. So each entry also records, per region, the stamp of the latest write that removed
//! something from it ([`Entry::removals`]); tombstones are only collected once those removals
//! are stable too (see [`Entry::gc`]).

use crate::collections::{OrMap, OrSet};
use crate::dots::Dots;
use crate::hlc::{Hlc, RegionId, Stamp};
use crate::list::List;
use crate::strval::{Register, Str};
use crate::zset::ZSet;
use crate::CrdtError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Deadline payload meaning "no expiry" (PERSIST).
pub const PERSIST: u64 = u64::MAX;

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Str,
    Set,
    Hash,
    List,
    ZSet,
}

impl Kind {
    /// The name `TYPE` answers.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Set => "set",
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::ZSet => "zset",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Val {
    Str(Str),
    Set(OrSet),
    Hash(OrMap),
    List(List),
    ZSet(ZSet),
}

impl Val {
    pub fn kind(&self) -> Kind {
        match self {
            Val::Str(_) => Kind::Str,
            Val::Set(_) => Kind::Set,
            Val::Hash(_) => Kind::Hash,
            Val::List(_) => Kind::List,
            Val::ZSet(_) => Kind::ZSet,
        }
    }

    fn empty(kind: Kind) -> Val {
        match kind {
            Kind::Str => Val::Str(Str::default()),
            Kind::Set => Val::Set(OrSet::default()),
            Kind::Hash => Val::Hash(OrMap::default()),
            Kind::List => Val::List(List::default()),
            Kind::ZSet => Val::ZSet(ZSet::new()),
        }
    }

    pub fn is_alive(&self) -> bool {
        match self {
            Val::Str(s) => s.is_alive(),
            Val::Set(s) => !s.is_empty(),
            Val::Hash(h) => !h.is_empty(),
            Val::List(l) => !l.is_empty(),
            Val::ZSet(z) => !z.is_empty(),
        }
    }

    fn merge(&mut self, other: &Val) -> bool {
        match (self, other) {
            (Val::Str(a), Val::Str(b)) => a.merge(b),
            (Val::Set(a), Val::Set(b)) => a.merge(b),
            (Val::Hash(a), Val::Hash(b)) => a.merge(b),
            (Val::List(a), Val::List(b)) => a.merge(b),
            (Val::ZSet(a), Val::ZSet(b)) => a.merge(b),
            _ => unreachable!("components are merged by kind"),
        }
    }

    /// Observed remove of everything; returns the tombstone part for the delta.
    fn kill_all(&mut self) -> Val {
        match self {
            Val::Str(s) => {
                s.remove();
                Val::Str(s.clone())
            }
            Val::Set(s) => Val::Set(s.kill_all()),
            Val::Hash(h) => Val::Hash(h.kill_all()),
            Val::List(l) => Val::List(l.kill_all()),
            Val::ZSet(z) => Val::ZSet(z.kill_all()),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Val::Str(s) => s.heap_bytes(),
            Val::Set(s) => s.heap_bytes() + 48,
            Val::Hash(h) => h.heap_bytes() + 48,
            Val::List(l) => l.heap_bytes() + 48,
            Val::ZSet(z) => z.heap_bytes() + 64,
        }
    }

    fn max_hlc(&self) -> Hlc {
        match self {
            Val::Str(s) => s.max_hlc(),
            Val::Set(s) => s.max_hlc(),
            Val::Hash(h) => h.max_hlc(),
            Val::List(l) => l.max_hlc(),
            Val::ZSet(z) => z.max_hlc(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comp {
    /// Stamp of the write that created this component (max over replicas).
    pub created: Stamp,
    pub val: Val,
}

/// Local, non-replicated bookkeeping used for eviction.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Millisecond clock of the last access, wrapping at 2^32 ms (~49 days), like Redis'
    /// LRU clock wraps.
    pub lru_ms: u32,
    /// Logarithmic access frequency (LFU), like Redis' 8-bit counter.
    pub lfu: u8,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Entry {
    pub(crate) comps: SmallVec<[Comp; 1]>,
    /// TTLs, removal records and the invalidation floor: absent for most keys (no TTL, never
    /// overwritten across types, never invalidated), so kept out of line. `None` reads as
    /// an empty [`Meta`].
    pub(crate) meta: Option<Box<Meta>>,
}

/// The rarely present part of an [`Entry`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    expiry: Dots<u64>,
    /// Per region (sorted, at most one each): the stamp of its latest write that removed
    /// something here (DEL, SREM, HDEL, an overwrite of another type, a TTL replaced).
    removed: SmallVec<[Stamp; 1]>,
    /// Invalidation floor: the greatest source version an invalidation applied to this key
    /// (max lattice; `0` = none). A string whose value came from a versioned fill at a
    /// version ≤ the floor is hidden, wherever and whenever that fill lands.
    floor: u64,
    /// Cached effective deadline (ms since epoch); `0` = none.
    #[serde(skip)]
    deadline_ms: u64,
}

impl Meta {
    const EMPTY: Meta = Meta {
        expiry: Dots(SmallVec::new_const()),
        removed: SmallVec::new_const(),
        floor: 0,
        deadline_ms: 0,
    };

    pub(crate) fn is_empty(&self) -> bool {
        self.expiry.is_empty() && self.removed.is_empty() && self.floor == 0
    }
}

impl PartialEq for Meta {
    fn eq(&self, other: &Self) -> bool {
        self.expiry == other.expiry && self.removed == other.removed && self.floor == other.floor
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.comps == other.comps && self.m() == other.m()
    }
}
impl Eq for Entry {}

impl Entry {
    /// An entry of one component and no metadata.
    pub(crate) fn from_comp(c: Comp) -> Entry {
        Entry {
            comps: smallvec::smallvec![c],
            meta: None,
        }
    }

    fn m(&self) -> &Meta {
        static EMPTY: Meta = Meta::EMPTY;
        self.meta.as_deref().unwrap_or(&EMPTY)
    }

    fn m_mut(&mut self) -> &mut Meta {
        self.meta.get_or_insert_with(Box::default)
    }

    /// Give the out-of-line part back once it holds nothing.
    fn tidy_meta(&mut self) {
        if self.meta.as_deref().is_some_and(Meta::is_empty) {
            self.meta = None;
        }
    }

    /// Whether any component is alive (the key exists, ignoring TTL).
    pub fn is_alive(&self) -> bool {
        self.comps.iter().any(|c| self.shows(c))
    }

    /// The visible component: the live one with the greatest creation stamp.
    pub fn visible(&self) -> Option<&Val> {
        self.comps
            .iter()
            .filter(|c| self.shows(c))
            .max_by_key(|c| c.created)
            .map(|c| &c.val)
    }

    /// A component counts as present: alive and not a stale versioned fill.
    fn shows(&self, c: &Comp) -> bool {
        c.val.is_alive() && !self.is_stale(c)
    }

    /// A string from a versioned fill at or below the invalidation floor: kept as state (the
    /// register is a lattice; dropping it would break convergence) but never shown.
    fn is_stale(&self, c: &Comp) -> bool {
        match &c.val {
            Val::Str(s) => s.reg.version != 0 && s.reg.version <= self.floor(),
            _ => false,
        }
    }

    /// The invalidation floor (`0` = none): versioned fills at or below it are refused.
    pub fn floor(&self) -> u64 {
        self.meta.as_ref().map_or(0, |m| m.floor)
    }

    /// Forget the invalidation floor (tombstone retention ran out), and the stale fills it
    /// hid with it: they must not reappear.
    pub(crate) fn clear_floor(&mut self) {
        let floor = self.floor();
        self.comps.retain(|c| match &c.val {
            Val::Str(s) => !(s.reg.value.is_some() && s.reg.version != 0 && s.reg.version <= floor),
            _ => true,
        });
        if let Some(m) = self.meta.as_mut() {
            m.floor = 0;
        }
        self.tidy_meta();
    }

    /// A floor-only tombstone (what remains of an invalidated key after expiry/eviction).
    pub(crate) fn with_floor(floor: u64) -> Entry {
        let mut e = Entry::default();
        if floor != 0 {
            e.m_mut().floor = floor;
        }
        e
    }

    /// Whether this state (a delta) carries a versioned fill at or below `floor`.
    pub fn has_stale_fill_for(&self, floor: u64) -> bool {
        floor != 0
            && self.comps.iter().any(|c| match &c.val {
                Val::Str(s) => {
                    s.reg.value.is_some() && s.reg.version != 0 && s.reg.version <= floor
                }
                _ => false,
            })
    }

    pub fn kind(&self) -> Option<Kind> {
        self.visible().map(Val::kind)
    }

    /// No state at all: no component and no metadata (what a replication placeholder
    /// carries; a merge of it changes nothing).
    pub fn is_void(&self) -> bool {
        self.comps.is_empty() && self.meta.as_ref().is_none_or(|m| m.is_empty())
    }

    pub fn as_str(&self) -> Option<&Str> {
        match self.visible()? {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_set(&self) -> Option<&OrSet> {
        match self.visible()? {
            Val::Set(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_hash(&self) -> Option<&OrMap> {
        match self.visible()? {
            Val::Hash(h) => Some(h),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&List> {
        match self.visible()? {
            Val::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_zset(&self) -> Option<&ZSet> {
        match self.visible()? {
            Val::ZSet(z) => Some(z),
            _ => None,
        }
    }

    pub fn components(&self) -> &[Comp] {
        &self.comps
    }

    pub fn expiry(&self) -> &Dots<u64> {
        &self.m().expiry
    }

    /// Per region, the stamp of its latest write that removed something from this key.
    /// Tombstones here are only collectable once these are stable.
    pub fn removals(&self) -> &[Stamp] {
        &self.m().removed
    }

    /// Record a removing write (per-region max). Returns whether it was new.
    fn note_removal(&mut self, stamp: Stamp) -> bool {
        let removed = &mut self.m_mut().removed;
        match removed.binary_search_by_key(&stamp.region, |s| s.region) {
            Ok(i) if stamp.hlc > removed[i].hlc => {
                removed[i] = stamp;
                true
            }
            Ok(_) => false,
            Err(i) => {
                removed.insert(i, stamp);
                true
            }
        }
    }

    /// Take `other`'s TTL and removal records (not its components): completes a delta that
    /// must carry the key's whole state.
    pub(crate) fn merge_metadata(&mut self, other: &Entry) {
        self.merge_meta(other);
    }

    /// Join `other`'s TTLs, removal records and floor into this entry's; returns whether
    /// anything changed.
    fn merge_meta(&mut self, other: &Entry) -> bool {
        let Some(theirs) = other.meta.as_deref() else {
            return false;
        };
        let mut changed = false;
        if !theirs.expiry.is_empty() && self.m_mut().expiry.merge(&theirs.expiry) {
            self.recompute_deadline();
            changed = true;
        }
        for s in &theirs.removed {
            changed |= self.note_removal(*s);
        }
        if theirs.floor > self.floor() {
            self.m_mut().floor = theirs.floor;
            changed = true;
        }
        self.tidy_meta();
        changed
    }

    /// Effective deadline in ms since the epoch, if any.
    pub fn deadline_ms(&self) -> Option<u64> {
        let d = self.m().deadline_ms;
        (d != 0).then_some(d)
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        let d = self.m().deadline_ms;
        d != 0 && d <= now_ms
    }

    fn recompute_deadline(&mut self) {
        let Some(m) = self.meta.as_deref_mut() else {
            return;
        };
        let mut deadline = 0u64;
        for e in m.expiry.alive() {
            if e.payload == PERSIST {
                deadline = 0;
                break;
            }
            deadline = deadline.max(e.payload.max(1));
        }
        m.deadline_ms = deadline;
    }

    /// Rough bytes this entry holds beyond its key (for eviction accounting).
    pub fn heap_bytes(&self) -> usize {
        self.comps.iter().map(|c| c.val.heap_bytes()).sum::<usize>()
            + self
                .meta
                .as_ref()
                .map_or(0, |m| 64 + m.expiry.entries().len() * 32)
    }

    pub fn max_hlc(&self) -> Hlc {
        let c = self
            .comps
            .iter()
            .map(|c| c.val.max_hlc().max(c.created.hlc))
            .max();
        let r = self.m().removed.iter().map(|s| s.hlc).max();
        c.unwrap_or(Hlc::ZERO)
            .max(self.m().expiry.max_hlc())
            .max(r.unwrap_or(Hlc::ZERO))
    }

    fn comp_index(&self, kind: Kind) -> Result<usize, usize> {
        self.comps.binary_search_by_key(&kind, |c| c.val.kind())
    }

    /// Join another replica's state (or a delta) into this one. Returns whether anything changed.
    pub fn merge(&mut self, other: &Entry) -> bool {
        let mut changed = false;
        for theirs in &other.comps {
            match self.comp_index(theirs.val.kind()) {
                Ok(i) => {
                    let mine = &mut self.comps[i];
                    if theirs.created > mine.created {
                        mine.created = theirs.created;
                        changed = true;
                    }
                    changed |= mine.val.merge(&theirs.val);
                }
                Err(i) => {
                    // Merge into an empty component rather than cloning: the collections'
                    // cached counters are then recomputed here, whatever their state in
                    // `other` (a decoded delta has none).
                    self.comps.insert(
                        i,
                        Comp {
                            created: theirs.created,
                            val: Val::empty(theirs.val.kind()),
                        },
                    );
                    self.comps[i].val.merge(&theirs.val);
                    changed = true;
                }
            }
        }
        changed |= self.merge_meta(other);
        changed |= self.drop_superseded_ttl();
        changed
    }

    /// The stamp of the latest write to a string register of this key (`SET` and friends):
    /// the key's TTL is decided as of it (see [`Entry::drop_superseded_ttl`]).
    fn ttl_base(&self) -> Stamp {
        self.comps
            .iter()
            .filter_map(|c| match &c.val {
                Val::Str(s) => Some(s.reg.stamp),
                _ => None,
            })
            .max()
            .unwrap_or(Stamp::ZERO)
    }

    /// A register write decides the key's TTL as of its stamp: `SET` without `KEEPTTL`
    /// clears it, and the writes that keep it (`KEEPTTL`, `APPEND`, `SETRANGE`,
    /// `INCRBYFLOAT`) re-issue the deadline they saw under their own stamp. So every TTL
    /// entry older than the latest register write is dead, wherever it lands — also one the
    /// writing region never saw because it had evicted or lost the key (it would have
    /// cleared it had it kept the key). The base only grows and a dead entry stays dead,
    /// so this stays a lattice. Returns whether an entry died.
    fn drop_superseded_ttl(&mut self) -> bool {
        let base = self.ttl_base();
        let Some(m) = self.meta.as_deref_mut() else {
            return false;
        };
        let mut changed = false;
        for e in m.expiry.0.iter_mut() {
            if e.alive && Stamp::new(e.hlc, e.region) < base {
                e.alive = false;
                changed = true;
            }
        }
        if changed {
            self.recompute_deadline();
        }
        changed
    }

    /// Drop tombstone metadata that every region has seen. `drop_dead` drops all dead
    /// metadata regardless (single-region mode).
    ///
    /// `stable(region)` must be an HLC up to which every region has merged all of `region`'s
    /// writes (over links that deliver each region's writes in order). A dead element is
    /// only dropped once both its own dots and every removal recorded on the entry are
    /// stable: until a removal has reached everyone, some region may still send state that
    /// holds the element alive, and only the tombstone keeps it dead.
    pub fn gc(&mut self, stable: &impl Fn(RegionId) -> Hlc, drop_dead: bool) {
        if !drop_dead && !self.removals_stable(stable) {
            return;
        }
        for c in self.comps.iter_mut() {
            match &mut c.val {
                Val::Set(s) => s.gc(stable, drop_dead),
                Val::Hash(h) => h.gc(stable, drop_dead),
                Val::List(l) => l.gc(stable, drop_dead),
                Val::ZSet(z) => z.gc(stable, drop_dead),
                Val::Str(_) => {}
            }
        }
        if let Some(m) = self.meta.as_deref_mut() {
            m.removed.clear();
            m.expiry.gc(stable);
            if drop_dead {
                m.expiry.0.retain(|e| e.alive);
            }
        }
        self.tidy_meta();
    }

    fn removals_stable(&self, stable: &impl Fn(RegionId) -> Hlc) -> bool {
        self.m().removed.iter().all(|s| s.hlc <= stable(s.region))
    }

    /// Is this entry a tombstone every region has seen (safe to drop)? Its writes and the
    /// removals that killed them must all be stable.
    pub fn is_stable_tombstone(&self, stable: &impl Fn(RegionId) -> Hlc) -> bool {
        // An invalidation floor is dropped by its retention, not by causal stability.
        if self.floor() != 0 || self.is_alive() || !self.removals_stable(stable) {
            return false;
        }
        let mut stable_all = true;
        let mut check = |region: RegionId, hlc: Hlc| stable_all &= hlc <= stable(region);
        for c in &self.comps {
            check(c.created.region, c.created.hlc);
            match &c.val {
                Val::Str(s) => {
                    check(s.reg.stamp.region, s.reg.stamp.hlc);
                    for k in &s.ctr {
                        check(k.region, k.hlc.max(k.obs_hlc));
                    }
                }
                Val::Set(s) => {
                    for (_, d) in s.raw() {
                        for e in d.entries() {
                            check(e.region, e.hlc);
                        }
                    }
                }
                Val::Hash(h) => {
                    for (_, s) in h.raw() {
                        check(s.reg.stamp.region, s.reg.stamp.hlc);
                        for k in &s.ctr {
                            check(k.region, k.hlc.max(k.obs_hlc));
                        }
                    }
                }
                Val::List(l) => {
                    for s in l.stamps() {
                        check(s.region, s.hlc);
                    }
                }
                Val::ZSet(z) => {
                    for (_, s) in z.raw() {
                        for e in s.dots.entries() {
                            check(e.region, e.hlc);
                        }
                        for k in s.ctr.iter() {
                            check(k.region, k.hlc.max(k.obs_hlc));
                        }
                    }
                }
            }
        }
        for e in self.m().expiry.entries() {
            check(e.region, e.hlc);
        }
        stable_all
    }

    /// Recompute derived (non-serialised) fields after decoding.
    pub fn rebuild(&mut self) {
        for c in self.comps.iter_mut() {
            match &mut c.val {
                Val::Set(s) => s.rebuild(),
                Val::Hash(h) => h.rebuild(),
                Val::Str(_) | Val::List(_) | Val::ZSet(_) => {}
            }
        }
        self.recompute_deadline();
    }

    /// Order-independent content digest of the observable state (anti-entropy).
    pub fn digest(&self) -> u64 {
        let mut h = 0x6d65_7269_6469_616e;
        let m = self.m();
        if m.floor != 0 {
            h = crate::digest::mix(h, m.floor);
        }
        for c in self.comps.iter().filter(|c| c.val.is_alive()) {
            h = crate::digest::mix(h, c.created.hlc.0);
            h = crate::digest::mix(h, u64::from(c.created.region.0));
            h = match &c.val {
                Val::Str(s) => s.digest(crate::digest::mix(h, 1)),
                Val::Set(s) => s.digest(crate::digest::mix(h, 2)),
                Val::Hash(m) => m.digest(crate::digest::mix(h, 3)),
                Val::List(l) => l.digest(crate::digest::mix(h, 4)),
                Val::ZSet(z) => z.digest(crate::digest::mix(h, 5)),
            };
        }
        for e in m.expiry.alive() {
            h = crate::digest::mix(h, e.hlc.0);
            h = crate::digest::mix(h, u64::from(e.region.0));
            h = crate::digest::mix(h, e.payload);
        }
        h
    }
}

/// What one local write yields: the key and the minimal state to merge elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub key: Bytes,
    pub slot: u16,
    /// The stamp of the write (its origin dot).
    pub stamp: Stamp,
    /// The state carries the key's whole live state at the origin (strings always; sets and
    /// hashes when the write created the key). A partial delta is never applied on top of an
    /// evicted key.
    pub full: bool,
    pub state: Entry,
}

/// A write in progress on one entry: applies local ops and accumulates their delta.
///
/// Every op of one write shares the write's stamp, so a write may touch each element (a
/// member, a field, the string) at most once: the caller collapses duplicates
/// (`SADD k a a`, `HSET k f 1 f 2`) first. Re-adding the same member is tolerated.
pub struct EntryWriter<'a> {
    pub(crate) entry: &'a mut Entry,
    pub(crate) delta: Entry,
    pub(crate) stamp: Stamp,
    pub(crate) changed: bool,
    pub(crate) created_key: bool,
    /// A string register write that clears the TTL (`SET` without `KEEPTTL`): its delta is
    /// the key's whole visible state as of its stamp, wherever it lands.
    pub(crate) whole: bool,
}

impl<'a> EntryWriter<'a> {
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    pub fn entry(&self) -> &Entry {
        self.entry
    }

    /// Kind check for commands: `Err(WrongType)` if the key holds another type.
    pub fn expect(&self, kind: Kind) -> Result<(), CrdtError> {
        match self.entry.kind() {
            Some(k) if k != kind => Err(CrdtError::WrongType),
            _ => Ok(()),
        }
    }

    /// This write removed something: record it on the entry and in the delta.
    fn note_removal(&mut self) {
        self.entry.note_removal(self.stamp);
        self.delta.note_removal(self.stamp);
        self.changed = true;
    }

    /// Ship the entry's TTL entries (after a local change to them) in the delta.
    fn delta_expiry(&mut self) {
        if !self.entry.m().expiry.is_empty() {
            self.delta.m_mut().expiry.merge(&self.entry.m().expiry);
            self.delta.recompute_deadline();
        }
        self.changed = true;
    }

    /// Kill every TTL entry this region observed; returns whether one was alive.
    fn kill_ttl(&mut self) -> bool {
        if !self
            .entry
            .meta
            .as_deref_mut()
            .is_some_and(|m| m.expiry.kill_all())
        {
            return false;
        }
        self.entry.recompute_deadline();
        self.delta_expiry();
        self.note_removal();
        true
    }

    /// Get (creating if needed) the component of `kind`, after killing every other live
    /// component (an overwrite observes and removes them, like Redis' SET over a set).
    /// When the key does not exist, this write creates it: leftover deadlines are killed.
    fn comp(&mut self, kind: Kind) -> usize {
        if !self.entry.is_alive() {
            self.kill_ttl();
        }
        let mut killed = false;
        let floor = self.entry.floor();
        for c in self.entry.comps.iter_mut() {
            // A stale fill is dead to this write, even of its own kind: observe and remove it
            // so what this write builds (an INCR, an APPEND) starts from nothing.
            let stale =
                matches!(&c.val, Val::Str(s) if s.reg.version != 0 && s.reg.version <= floor);
            if (c.val.kind() != kind || stale) && c.val.is_alive() {
                let tomb = c.val.kill_all();
                self.delta.merge(&Entry {
                    comps: smallvec::smallvec![Comp {
                        created: c.created,
                        val: tomb
                    }],
                    ..Entry::default()
                });
                killed = true;
            }
        }
        if killed {
            self.note_removal();
        }
        let i = match self.entry.comp_index(kind) {
            Ok(i) => i,
            Err(i) => {
                self.entry.comps.insert(
                    i,
                    Comp {
                        created: self.stamp,
                        val: Val::empty(kind),
                    },
                );
                i
            }
        };
        if !self.entry.comps[i].val.is_alive() && self.entry.comps[i].created < self.stamp {
            // Re-created after a delete: this write is the creating one now.
            self.entry.comps[i].created = self.stamp;
        }
        i
    }

    fn str_mut(&mut self) -> &mut Str {
        let i = self.comp(Kind::Str);
        match &mut self.entry.comps[i].val {
            Val::Str(s) => s,
            _ => unreachable!(),
        }
    }

    /// Record the full string component in the delta.
    fn str_delta(&mut self) {
        self.str_delta_with(None);
    }

    /// [`EntryWriter::str_delta`], the delta carrying `wire` (the same bytes as the stored
    /// value) instead of a second handle on the stored value.
    fn str_delta_with(&mut self, wire: Option<Bytes>) {
        if let Ok(i) = self.entry.comp_index(Kind::Str) {
            let c = &self.entry.comps[i];
            if let Val::Str(st) = &c.val {
                let reg = Register {
                    stamp: st.reg.stamp,
                    value: wire.or_else(|| st.reg.value.clone()),
                    version: st.reg.version,
                };
                let comp = Comp {
                    created: c.created,
                    val: Val::Str(Str {
                        reg,
                        ctr: st.ctr.clone(),
                    }),
                };
                self.delta_put(comp);
            }
        }
        self.changed = true;
    }

    /// After a register write: `keep_ttl == false` clears the TTLs it observed; `true`
    /// re-issues the deadline it saw under this write's stamp (older TTL entries are dead
    /// once a later register write lands: [`Entry::drop_superseded_ttl`]).
    fn register_ttl(&mut self, keep_ttl: bool) {
        if !keep_ttl {
            self.kill_ttl();
            self.whole = true;
            return;
        }
        let alive: Option<u64> =
            self.entry
                .m()
                .expiry
                .alive()
                .map(|e| e.payload)
                .fold(None, |acc, p| match acc {
                    _ if p == PERSIST => Some(PERSIST),
                    Some(PERSIST) => Some(PERSIST),
                    Some(a) => Some(a.max(p)),
                    None => Some(p),
                });
        if let Some(p) = alive {
            self.set_deadline((p != PERSIST).then_some(p));
        }
    }

    /// `SET` (any type is overwritten). `keep_ttl == false` clears the TTLs it observed.
    pub fn set_str(&mut self, value: Bytes, keep_ttl: bool) {
        let stamp = self.stamp;
        self.str_mut().set(stamp, value);
        self.str_delta();
        self.register_ttl(keep_ttl);
    }

    /// [`EntryWriter::set_str`] of a value that lives in a request's buffer: the entry
    /// stores its own copy (a key never pins a request buffer), and the delta ships `value`
    /// itself, so the stored copy is never shared (no refcount header, no atomics on it).
    pub fn set_str_shared(&mut self, value: Bytes, keep_ttl: bool) {
        let stamp = self.stamp;
        self.str_mut().set(stamp, Bytes::copy_from_slice(&value));
        self.str_delta_with(Some(value));
        self.register_ttl(keep_ttl);
    }

    /// `SET … VERSION n`: a fill loaded from the source at `version`. Refused (nothing
    /// written) when an invalidation at a version ≥ `version` was applied to the key.
    pub fn set_str_versioned(
        &mut self,
        value: Bytes,
        version: u64,
        keep_ttl: bool,
    ) -> Result<(), CrdtError> {
        if version == 0 || version <= self.entry.floor() {
            return Err(CrdtError::Stale {
                floor: self.entry.floor(),
            });
        }
        let stamp = self.stamp;
        self.str_mut()
            .set_versioned(stamp, Bytes::copy_from_slice(&value), version);
        self.str_delta_with(Some(value));
        self.register_ttl(keep_ttl);
        Ok(())
    }

    /// An invalidation from the source of truth: `Some(v)` removes the value unless it is
    /// a fill from a version newer than `v` and raises the key's floor to `v` (so later or
    /// replicated fills at ≤ `v` are refused); `None` removes the value unconditionally.
    /// Returns whether a visible value was removed.
    pub fn invalidate(&mut self, version: Option<u64>) -> bool {
        let was_visible = self.entry.is_alive();
        let newer = version.is_some_and(|v| {
            matches!(self.entry.visible(), Some(Val::Str(s)) if s.reg.value.is_some() && s.reg.version > v)
        });
        if let Some(v) = version {
            if v > self.entry.floor() {
                self.entry.m_mut().floor = v;
                self.delta.m_mut().floor = v;
                self.changed = true;
            }
        }
        if newer {
            return false;
        }
        // Kill what this region holds, hidden stale fills included: they must not come
        // back once the floor is forgotten (retention).
        self.kill_everything();
        was_visible
    }

    /// `INCRBY` family; the key must hold a string (checked by the caller).
    pub fn incr_by(&mut self, by: i64) -> Result<i64, CrdtError> {
        self.expect(Kind::Str)?;
        let stamp = self.stamp;
        let r = self.str_mut().incr_by(stamp, by)?;
        self.str_delta();
        Ok(r)
    }

    /// `SADD` of one member; returns whether it was new.
    pub fn sadd(&mut self, member: &[u8]) -> bool {
        let i = self.comp(Kind::Set);
        let stamp = self.stamp;
        let created = self.entry.comps[i].created;
        let Val::Set(set) = &mut self.entry.comps[i].val else {
            unreachable!()
        };
        let (new, delta) = set.add(stamp, member);
        self.delta_put(Comp {
            created,
            val: Val::Set(delta),
        });
        self.changed = true;
        new
    }

    /// `SREM` of one member; returns whether it was present.
    pub fn srem(&mut self, member: &[u8]) -> bool {
        let Ok(i) = self.entry.comp_index(Kind::Set) else {
            return false;
        };
        let created = self.entry.comps[i].created;
        let Val::Set(set) = &mut self.entry.comps[i].val else {
            unreachable!()
        };
        match set.remove(member) {
            Some(dots) => {
                self.delta_set_member(created, member, &dots);
                self.note_removal();
                true
            }
            None => false,
        }
    }

    fn delta_set_member(&mut self, created: Stamp, member: &[u8], dots: &Dots<()>) {
        let mut s = OrSet::default();
        s.merge_member(member, dots);
        self.delta_put(Comp {
            created,
            val: Val::Set(s),
        });
        self.changed = true;
    }

    /// Add a component built for the delta (its collection counters computed by merging into
    /// an empty one): moved in when the delta has none of its kind, merged otherwise.
    fn delta_put(&mut self, comp: Comp) {
        match self.delta.comp_index(comp.val.kind()) {
            Err(at) => self.delta.comps.insert(at, comp),
            Ok(_) => {
                self.delta.merge(&Entry {
                    comps: smallvec::smallvec![comp],
                    ..Entry::default()
                });
            }
        }
    }

    /// `HSET` of one field to a value in a request buffer: the entry stores copies, the
    /// delta shares `field` and `value`. Returns whether the field was present.
    pub fn hash_set(&mut self, field: &[u8], value: Bytes) -> bool {
        let i = self.comp(Kind::Hash);
        let stamp = self.stamp;
        let created = self.entry.comps[i].created;
        let Val::Hash(h) = &mut self.entry.comps[i].val else {
            unreachable!()
        };
        let (was, delta) = h.set_field(field, stamp, value);
        self.delta_put(Comp {
            created,
            val: Val::Hash(delta),
        });
        self.changed = true;
        was
    }

    /// Local update of one hash field (`HSET`, `HINCRBY`…); the closure sees the field's
    /// string state and the write's stamp.
    pub fn hash_update<R>(&mut self, field: &[u8], f: impl FnOnce(&mut Str, Stamp) -> R) -> R {
        let i = self.comp(Kind::Hash);
        let stamp = self.stamp;
        let created = self.entry.comps[i].created;
        let Val::Hash(h) = &mut self.entry.comps[i].val else {
            unreachable!()
        };
        let before = h.raw_get(field).cloned().unwrap_or_default();
        let (was, r, state) = h.update(field, |s| f(s, stamp));
        if before != state {
            self.delta_hash_field(created, field, &state);
            if was && !state.is_alive() {
                self.note_removal();
            }
        }
        r
    }

    /// `HDEL` of one field; returns whether it was present.
    pub fn hdel(&mut self, field: &[u8]) -> bool {
        let Ok(i) = self.entry.comp_index(Kind::Hash) else {
            return false;
        };
        let created = self.entry.comps[i].created;
        let Val::Hash(h) = &mut self.entry.comps[i].val else {
            unreachable!()
        };
        match h.remove(field) {
            Some(state) => {
                let f = Bytes::copy_from_slice(field);
                self.delta_hash_field(created, &f, &state);
                self.note_removal();
                true
            }
            None => false,
        }
    }

    fn delta_hash_field(&mut self, created: Stamp, field: &[u8], state: &Str) {
        let mut m = OrMap::default();
        m.merge_field(field, state);
        self.delta_put(Comp {
            created,
            val: Val::Hash(m),
        });
        self.changed = true;
    }

    /// The list at this key, if it holds one.
    pub fn list(&self) -> Option<&List> {
        self.entry.as_list()
    }

    /// The live list component, for a write that only changes an existing list.
    fn live_list(&mut self) -> Option<(Stamp, &mut List)> {
        let i = self.entry.comp_index(Kind::List).ok()?;
        let c = &mut self.entry.comps[i];
        match &mut c.val {
            Val::List(l) if !l.is_empty() => Some((c.created, l)),
            _ => None,
        }
    }

    fn delta_list(&mut self, created: Stamp, delta: List) {
        self.delta_put(Comp {
            created,
            val: Val::List(delta),
        });
        self.changed = true;
    }

    fn zset_mut(&mut self) -> (Stamp, &mut ZSet) {
        let i = self.comp(Kind::ZSet);
        let created = self.entry.comps[i].created;
        let Val::ZSet(z) = &mut self.entry.comps[i].val else {
            unreachable!()
        };
        (created, z)
    }

    fn delta_zset(&mut self, created: Stamp, delta: ZSet) {
        self.delta_put(Comp {
            created,
            val: Val::ZSet(delta),
        });
        self.changed = true;
    }

    /// `LPUSH` (`front`) / `RPUSH` of `values` in argument order (the key must hold a list or
    /// nothing: checked by the caller). Returns the new length; `None` (nothing written)
    /// when no position is left at that end (only after hostile positions).
    pub fn list_push(&mut self, front: bool, values: &[&[u8]]) -> Option<usize> {
        let i = self.comp(Kind::List);
        let stamp = self.stamp;
        let created = self.entry.comps[i].created;
        let Val::List(l) = &mut self.entry.comps[i].val else {
            unreachable!()
        };
        let delta = l.push(front, stamp, values)?;
        let n = l.len();
        self.delta_list(created, delta);
        Some(n)
    }

    /// `LREM`: remove up to `limit` elements equal to `value`, from the head (or the tail).
    /// Returns how many.
    pub fn list_rem(&mut self, value: &[u8], limit: usize, from_tail: bool) -> usize {
        let Some((created, l)) = self.live_list() else {
            return 0;
        };
        let delta = l.kill_matching(value, limit, from_tail);
        let n = delta.element_count();
        if n > 0 {
            self.delta_list(created, delta);
            self.note_removal();
        }
        n
    }

    /// `LPOP`/`RPOP` of up to `count` elements, in pop order.
    pub fn list_pop(&mut self, front: bool, count: usize) -> Vec<Bytes> {
        let Some((created, l)) = self.live_list() else {
            return Vec::new();
        };
        let len = l.len();
        let n = count.min(len);
        if n == 0 {
            return Vec::new();
        }
        let (mut vals, delta) = l.kill_range(if front { 0 } else { len - n }, n);
        if !front {
            vals.reverse();
        }
        self.delta_list(created, delta);
        self.note_removal();
        vals
    }

    /// `LSET`: live element `index` takes `value` (LWW). Returns whether it exists.
    pub fn list_set(&mut self, index: usize, value: &[u8]) -> bool {
        let stamp = self.stamp;
        let Some((created, l)) = self.live_list() else {
            return false;
        };
        let Some(e) = l.set_at(index, stamp, value) else {
            return false;
        };
        let mut delta = List::default();
        delta.merge_elem(&e);
        self.delta_list(created, delta);
        true
    }

    /// `LINSERT`: `value` before or after live element `index`. Returns the new length;
    /// `None` when there is no such element or no position is left.
    pub fn list_insert(&mut self, index: usize, before: bool, value: &[u8]) -> Option<usize> {
        let stamp = self.stamp;
        let (created, l) = self.live_list()?;
        let delta = l.insert_at(index, before, stamp, value)?;
        let n = l.len();
        self.delta_list(created, delta);
        Some(n)
    }

    /// `ZADD` of one member at `score`; returns whether it was new.
    pub fn zadd(&mut self, member: &[u8], score: f64) -> bool {
        let stamp = self.stamp;
        let (created, z) = self.zset_mut();
        let (new, delta) = z.add(stamp, member, score);
        self.delta_zset(created, delta);
        new
    }

    /// `ZINCRBY` of one member; the new score, or `None` (nothing written) when it would
    /// not be a number. The key must hold a sorted set or nothing (checked by the caller).
    pub fn zincr(&mut self, member: &[u8], by: f64) -> Option<f64> {
        let stamp = self.stamp;
        let current = self.entry.as_zset().and_then(|z| z.score(member));
        if (current.unwrap_or(0.0) + by).is_nan() {
            return None;
        }
        let (created, z) = self.zset_mut();
        let (score, delta) = z.incr(stamp, member, by)?;
        self.delta_zset(created, delta);
        Some(score)
    }

    /// `ZREM` of one member; returns whether it was present.
    pub fn zrem(&mut self, member: &[u8]) -> bool {
        let Ok(i) = self.entry.comp_index(Kind::ZSet) else {
            return false;
        };
        let created = self.entry.comps[i].created;
        let Val::ZSet(z) = &mut self.entry.comps[i].val else {
            unreachable!()
        };
        match z.remove(member) {
            Some(state) => {
                let mut d = ZSet::new();
                d.merge_member(member, &state);
                self.delta_zset(created, d);
                self.note_removal();
                true
            }
            None => false,
        }
    }

    /// The sorted set this write works on, if the key holds one.
    pub fn zset(&self) -> Option<&ZSet> {
        self.entry.as_zset()
    }

    /// `DEL`: observed remove of every component and TTL. Returns whether the key existed.
    pub fn delete(&mut self) -> bool {
        let existed = self.entry.is_alive();
        if !existed {
            return false;
        }
        self.kill_everything();
        true
    }

    /// Observed remove of every live component (visible or not) and of the TTL.
    fn kill_everything(&mut self) {
        if !self.entry.comps.iter().any(|c| c.val.is_alive()) {
            return;
        }
        let mut tomb = Entry::default();
        for c in self.entry.comps.iter_mut() {
            if c.val.is_alive() {
                let t = c.val.kill_all();
                tomb.comps.push(Comp {
                    created: c.created,
                    val: t,
                });
            }
        }
        self.delta.merge(&tomb);
        self.kill_ttl();
        self.note_removal();
    }

    /// `EXPIRE`/`PEXPIREAT`/`PERSIST` (`None`): replaces the TTLs this region observed.
    pub fn set_deadline(&mut self, deadline_ms: Option<u64>) {
        let payload = deadline_ms.unwrap_or(PERSIST);
        let stamp = self.stamp;
        if self.entry.m_mut().expiry.kill_all() {
            self.note_removal();
        }
        self.entry
            .m_mut()
            .expiry
            .set(stamp.region, stamp.hlc, payload);
        self.entry.recompute_deadline();
        self.delta_expiry();
    }

    /// `SPOP`-style removal helpers and other collection reads need the set itself.
    pub fn set_members(&self) -> Option<&OrSet> {
        self.entry.as_set()
    }
}

impl Entry {
    /// The delta of a `DEL` stamped `stamp` that observed exactly this state: every live
    /// component and TTL entry here killed, nothing else (an observed remove, so a write this
    /// state has not seen survives it). MIGRATE sends it to a target that holds this state of
    /// a key deleted here meanwhile.
    pub fn removal(&self, stamp: Stamp) -> Entry {
        let mut copy = self.clone();
        let mut w = EntryWriter {
            entry: &mut copy,
            delta: Entry::default(),
            stamp,
            changed: false,
            created_key: false,
            whole: false,
        };
        w.delete();
        w.delta
    }

    /// Single-region mode (no tombstones kept): physically drop what `delta` killed, in time
    /// proportional to the delta, not to the value (an SREM on a big set stays O(1)).
    pub(crate) fn forget_dead_in(&mut self, delta: &Entry) {
        for dc in &delta.comps {
            let Ok(i) = self.comp_index(dc.val.kind()) else {
                continue;
            };
            match (&mut self.comps[i].val, &dc.val) {
                (Val::Set(mine), Val::Set(d)) => {
                    for (m, dots) in d.raw() {
                        if !dots.is_alive() {
                            mine.forget_if_dead(m);
                        }
                    }
                }
                (Val::Hash(mine), Val::Hash(d)) => {
                    for (f, s) in d.raw() {
                        if !s.is_alive() {
                            mine.forget_if_dead(f);
                        }
                    }
                }
                (Val::List(mine), Val::List(d)) => {
                    if d.element_count() > 8 {
                        // One pass over the list rather than a lookup per tombstone.
                        mine.gc(&|_| Hlc::MAX, true);
                    } else {
                        for e in d.raw().filter(|e| !e.is_alive()) {
                            mine.forget_if_dead(&e.pos);
                        }
                    }
                }
                (Val::ZSet(mine), Val::ZSet(d)) => {
                    for (m, s) in d.raw() {
                        if !s.is_alive() {
                            mine.forget_if_dead(m);
                        }
                    }
                }
                _ => {}
            }
        }
        self.comps.retain(|c| c.val.is_alive());
        let dead_ttl = !delta.m().expiry.is_empty();
        if let Some(m) = self.meta.as_deref_mut() {
            if dead_ttl {
                m.expiry.0.retain(|e| e.alive);
            }
            m.removed.clear();
        }
        self.tidy_meta();
    }
}
