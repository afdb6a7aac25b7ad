//! The oracle: what every key must converge to, computed from the operations the workload
//! applied, what each operation observed at its region, and which acknowledged writes no
//! copy anywhere holds any more.
//!
//! A key's history is a list of *atoms*, one per effect of an acknowledged write:
//! - register writes and register tombstones (`SET`, a versioned fill, `HSET` of a field;
//!   `DEL`/`HDEL` of what the region held), ordered by stamp, a tombstone winning a tie;
//! - increments, each of one counter *incarnation* `(region, inc)` (read back from the
//!   writing region's state right after the write), flagged once a reset observed them;
//! - set adds (dots), flagged once a remove observed them;
//! - TTL entries (`SET … EX`, `EXPIRE`, `PERSIST`), flagged once a write observed and
//!   replaced them;
//! - component creations (the type-conflict rule: the live component with the greatest
//!   creating stamp is the visible one), and invalidation floors.
//!
//! What a removing write observes is read from its region's state just before it runs: it
//! removes exactly the atoms that state contains (an increment `(region, inc, hlc)` is held
//! by a contribution `(region, inc)` at or past `hlc`; a dot by its region's entry at or
//! past it). A write on a key its region evicted therefore observes nothing of the old
//! state, and the increments, members and TTLs it could not see survive.
//!
//! Converged value: the register is the greatest non-lost register atom; a string's value
//! is that register's value plus every non-lost increment no reset observed (the exact-sum
//! rule); a member is present iff one of its non-lost adds was not observed by a remove; a
//! TTL entry is alive unless a write observed it or a later register write of the key
//! superseded it (the documented TTL rule); a string filled at a version at or below the
//! floor is hidden.
//!
//! Loss: when a copy of a key goes away (eviction, expiry reclaim, an empty restart, a
//! dropped log or frame), the simulator hands [`KeyModel::forget_lost`] the join of every
//! copy before and after. An atom held before and by no copy after is lost for good — the
//! system cannot be expected to show it — and a removal whose record is lost stops
//! counting (what it removed comes back wherever it survived). Garbage collection is never
//! a loss: what it drops must be redundant, so the oracle keeps expecting the atoms.

use bytes::Bytes;
use meridian_crdt::list::{Level, Pos};
use meridian_crdt::{
    parse_i64, Comp, Dots, Entry, Hlc, Kind, RegionId, Stamp, Str, Val, ZState, PERSIST,
};

/// Where a string atom lives: the key's string component (`None`) or a hash field.
pub type Field = Option<Bytes>;

#[derive(Clone, Debug)]
struct RegAtom {
    field: Field,
    stamp: Stamp,
    /// `None`: a tombstone (an observed `DEL`/`HDEL` of the register written at `stamp`).
    value: Option<Bytes>,
    version: u64,
    lost: bool,
    /// (Tombstones) garbage collection dropped this record somewhere: it was stable, so
    /// it is never lost afterwards.
    collected: bool,
    /// The regions that vouched for it: the collectors and their active peers then (not
    /// those expelled from GC). Emptied by `region_restarted`, the record is no longer
    /// protected (see there).
    collected_by: u16,
    live_at: u16,
}

#[derive(Clone, Debug)]
struct IncAtom {
    field: Field,
    stamp: Stamp,
    /// The incarnation the increment went into (the contribution's id is `(region, inc)`).
    inc: Hlc,
    by: i64,
    observed: bool,
    lost: bool,
    /// GC dropped the record of the reset that observed it (see `RegAtom::collected`).
    collected: bool,
    collected_by: u16,
    live_at: u16,
    /// A `ZINCRBY` of the sorted-set member `field` (a float contribution), not a string's.
    zset: bool,
}

#[derive(Clone, Debug)]
struct AddAtom {
    /// A set member; for a list element, its value.
    member: Bytes,
    /// A list element's position (its identity: the push's stamp is its last level); `None`
    /// for a set member. An element is added once and removed by observed remove, so it is
    /// an add of its own: its dot is its creation stamp.
    pos: Option<Pos>,
    stamp: Stamp,
    /// A `ZADD` (the score's bits, carried by the member's dot), not an `SADD`.
    zscore: Option<u64>,
    killed: bool,
    lost: bool,
    collected: bool,
    collected_by: u16,
    live_at: u16,
}

#[derive(Clone, Debug)]
struct TtlAtom {
    stamp: Stamp,
    payload: u64,
    killed: bool,
    lost: bool,
    collected: bool,
    collected_by: u16,
}

#[derive(Clone, Debug)]
struct CreatedAtom {
    kind: Kind,
    stamp: Stamp,
    lost: bool,
}

#[derive(Clone, Debug)]
struct FloorAtom {
    version: u64,
    lost: bool,
}

/// What one region's state for a key looked like to an operation.
#[derive(Clone, Copy)]
pub struct View<'a> {
    e: Option<&'a Entry>,
    /// Everything in `e` is dead to the operation (the key expired here: the write first
    /// removes what it observed, as a `DEL` would).
    dead: bool,
}

impl<'a> View<'a> {
    pub fn new(e: Option<&'a Entry>) -> View<'a> {
        View { e, dead: false }
    }

    /// The view after an implicit `DEL` of everything in it.
    pub fn deleted(self) -> View<'a> {
        View {
            e: self.e,
            dead: true,
        }
    }

    fn key_alive(&self) -> bool {
        !self.dead && self.e.is_some_and(Entry::is_alive)
    }

    fn comp_alive(&self, c: &Comp) -> bool {
        !self.dead && c.val.is_alive()
    }

    pub fn floor(&self) -> u64 {
        self.e.map_or(0, Entry::floor)
    }
}

fn comp_of(e: &Entry, kind: Kind) -> Option<&Comp> {
    e.components().iter().find(|c| c.val.kind() == kind)
}

/// The string atoms of `field` live in this `Str` of `e`.
pub fn str_at<'a>(e: &'a Entry, field: &Field) -> Option<&'a Str> {
    match field {
        None => comp_of(e, Kind::Str).and_then(|c| match &c.val {
            Val::Str(s) => Some(s),
            _ => None,
        }),
        Some(f) => comp_of(e, Kind::Hash).and_then(|c| match &c.val {
            Val::Hash(h) => h.raw_get(f),
            _ => None,
        }),
    }
}

/// Whether the list element at `pos` is in `e`, and alive.
fn list_elem(e: &Entry, pos: &[Level]) -> Option<bool> {
    comp_of(e, Kind::List).and_then(|c| match &c.val {
        Val::List(l) => l
            .raw()
            .find(|x| x.pos.as_slice() == pos)
            .map(|x| x.is_alive()),
        _ => None,
    })
}

fn member_dots<'a>(e: &'a Entry, member: &[u8]) -> Option<&'a Dots<()>> {
    comp_of(e, Kind::Set).and_then(|c| match &c.val {
        Val::Set(s) => s.raw().find(|(m, _)| *m == member).map(|(_, d)| d),
        _ => None,
    })
}

/// A sorted-set member's state in `e` (tombstone included).
fn zmember<'a>(e: &'a Entry, member: &[u8]) -> Option<&'a ZState> {
    comp_of(e, Kind::ZSet).and_then(|c| match &c.val {
        Val::ZSet(z) => z.raw_get(member),
        _ => None,
    })
}

/// The incarnation a `ZINCRBY` at `stamp` went into (see [`incarnation_of`]).
pub fn zincarnation_of(e: Option<&Entry>, member: &[u8], stamp: Stamp) -> Option<Hlc> {
    e.and_then(|e| zmember(e, member)).and_then(|z| {
        z.ctr
            .iter()
            .find(|c| c.region == stamp.region && c.hlc == stamp.hlc)
            .map(|c| c.inc)
    })
}

/// The dot entry of `region` in `dots`, as `(hlc, alive)`.
fn dot_of<P: Clone + Ord>(dots: &Dots<P>, region: RegionId) -> Option<(Hlc, bool)> {
    dots.entries()
        .iter()
        .find(|d| d.region == region)
        .map(|d| (d.hlc, d.alive))
}

impl RegAtom {
    fn contained(&self, e: Option<&Entry>) -> bool {
        let Some(s) = e.and_then(|e| str_at(e, &self.field)) else {
            return false;
        };
        match self.value {
            // A write is held, or superseded by a later register held.
            Some(_) => s.reg.stamp >= self.stamp,
            None => {
                s.reg.stamp > self.stamp || (s.reg.stamp == self.stamp && s.reg.value.is_none())
            }
        }
    }

    /// The register this write set is what the state holds, alive.
    fn live(&self, e: Option<&Entry>) -> bool {
        self.value.is_some()
            && e.and_then(|e| str_at(e, &self.field))
                .is_some_and(|s| s.reg.stamp == self.stamp && s.reg.value.is_some())
    }
}

impl IncAtom {
    /// `(hlc, obs_hlc)` of the contribution this increment went into, where it is held.
    fn contrib(&self, e: Option<&Entry>) -> Option<(Hlc, Hlc)> {
        let e = e?;
        if self.zset {
            let member = self.field.as_ref()?;
            return zmember(e, member).and_then(|z| {
                z.ctr
                    .iter()
                    .find(|c| c.region == self.stamp.region && c.inc == self.inc)
                    .map(|c| (c.hlc, c.obs_hlc))
            });
        }
        str_at(e, &self.field).and_then(|s| {
            s.ctr
                .iter()
                .find(|c| c.region == self.stamp.region && c.inc == self.inc)
                .map(|c| (c.hlc, c.obs_hlc))
        })
    }

    fn contained(&self, e: Option<&Entry>) -> bool {
        self.contrib(e).is_some_and(|(h, _)| h >= self.stamp.hlc)
    }

    fn observed_in(&self, e: Option<&Entry>) -> bool {
        self.contrib(e).is_some_and(|(_, o)| o >= self.stamp.hlc)
    }

    fn live(&self, e: Option<&Entry>) -> bool {
        self.contrib(e)
            .is_some_and(|(h, o)| h >= self.stamp.hlc && o < self.stamp.hlc)
    }
}

impl AddAtom {
    fn dot(&self, e: Option<&Entry>) -> Option<(Hlc, bool)> {
        if let Some(pos) = &self.pos {
            return e
                .and_then(|e| list_elem(e, pos))
                .map(|alive| (self.stamp.hlc, alive));
        }
        if self.zscore.is_some() {
            return e
                .and_then(|e| zmember(e, &self.member))
                .and_then(|z| dot_of(&z.dots, self.stamp.region));
        }
        e.and_then(|e| member_dots(e, &self.member))
            .and_then(|d| dot_of(d, self.stamp.region))
    }

    fn contained(&self, e: Option<&Entry>) -> bool {
        self.dot(e).is_some_and(|(h, _)| h >= self.stamp.hlc)
    }

    fn killed_in(&self, e: Option<&Entry>) -> bool {
        self.dot(e)
            .is_some_and(|(h, alive)| h > self.stamp.hlc || (h == self.stamp.hlc && !alive))
    }

    fn live(&self, e: Option<&Entry>) -> bool {
        self.dot(e)
            .is_some_and(|(h, alive)| h == self.stamp.hlc && alive)
    }
}

impl TtlAtom {
    fn dot(&self, e: Option<&Entry>) -> Option<(Hlc, bool)> {
        e.and_then(|e| dot_of(e.expiry(), self.stamp.region))
    }

    fn contained(&self, e: Option<&Entry>) -> bool {
        self.dot(e).is_some_and(|(h, _)| h >= self.stamp.hlc)
    }

    fn killed_in(&self, e: Option<&Entry>) -> bool {
        self.dot(e)
            .is_some_and(|(h, alive)| h > self.stamp.hlc || (h == self.stamp.hlc && !alive))
    }
}

impl CreatedAtom {
    fn contained(&self, e: Option<&Entry>) -> bool {
        e.and_then(|e| comp_of(e, self.kind))
            .is_some_and(|c| c.created >= self.stamp)
    }
}

/// Whether `small`'s information is all in `big` (joining it in changes nothing).
pub fn entry_contains(big: Option<&Entry>, small: &Entry) -> bool {
    match big {
        None => small.components().is_empty() && small.expiry().is_empty() && small.floor() == 0,
        Some(b) => {
            let mut j = b.clone();
            !j.merge(small)
        }
    }
}

/// One key's history (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct KeyModel {
    regs: Vec<RegAtom>,
    incs: Vec<IncAtom>,
    adds: Vec<AddAtom>,
    ttls: Vec<TtlAtom>,
    created: Vec<CreatedAtom>,
    floors: Vec<FloorAtom>,
}

/// A violation of a per-region rule found by [`KeyModel::check_region`].
pub struct LocalViolation(pub String);

impl KeyModel {
    // ---- what removing writes observe ----

    /// `Str::remove` of the string at `field` (alive in the view): a tombstone for the
    /// register it held and an observation of every increment it held.
    fn kill_str(&mut self, v: &View, field: &Field) {
        let Some(s) = v.e.and_then(|e| str_at(e, field)) else {
            return;
        };
        if s.reg.value.is_some() {
            self.regs.push(RegAtom {
                field: field.clone(),
                stamp: s.reg.stamp,
                value: None,
                version: 0,
                lost: false,
                collected: false,
                collected_by: 0,
                live_at: 0,
            });
        }
        self.reset_counters(v, field);
    }

    /// A reset (`SET`, `DEL`): every increment the state at `field` held is observed.
    fn reset_counters(&mut self, v: &View, field: &Field) {
        for a in self
            .incs
            .iter_mut()
            .filter(|a| !a.zset && a.field == *field)
        {
            if a.contained(v.e) {
                a.observed = true;
            }
        }
    }

    fn kill_member(&mut self, v: &View, member: &[u8]) {
        for a in self
            .adds
            .iter_mut()
            .filter(|a| a.pos.is_none() && a.zscore.is_none() && a.member == member)
        {
            if a.contained(v.e) {
                a.killed = true;
            }
        }
    }

    fn kill_ttl(&mut self, v: &View) {
        for a in self.ttls.iter_mut() {
            if a.contained(v.e) {
                a.killed = true;
            }
        }
    }

    /// Observed remove of one live component (`Val::kill_all`).
    fn kill_comp(&mut self, v: &View, c: &Comp) {
        match &c.val {
            Val::Str(_) => self.kill_str(v, &None),
            Val::Set(s) => {
                let members: Vec<Bytes> = s
                    .raw()
                    .filter(|(_, d)| d.is_alive())
                    .map(|(m, _)| Bytes::copy_from_slice(m))
                    .collect();
                for m in members {
                    self.kill_member(v, &m);
                }
            }
            Val::Hash(h) => {
                let fields: Vec<Bytes> = h
                    .raw()
                    .filter(|(_, s)| s.is_alive())
                    .map(|(f, _)| Bytes::copy_from_slice(f))
                    .collect();
                for f in fields {
                    self.kill_str(v, &Some(f));
                }
            }
            Val::List(l) => {
                for e in l.raw().filter(|e| e.is_alive()) {
                    self.list_kill(v, &e.pos);
                }
            }
            Val::ZSet(z) => {
                let members: Vec<Bytes> = z
                    .raw()
                    .filter(|(_, s)| s.is_alive())
                    .map(|(m, _)| Bytes::copy_from_slice(m))
                    .collect();
                for m in members {
                    self.kill_zmember(v, &m);
                }
            }
        }
    }

    /// `EntryWriter::kill_everything`: every live component and the TTL.
    fn kill_everything(&mut self, v: &View) {
        let Some(e) = v.e else { return };
        if !e.components().iter().any(|c| v.comp_alive(c)) {
            return;
        }
        for c in e.components() {
            if v.comp_alive(c) {
                self.kill_comp(v, c);
            }
        }
        self.kill_ttl(v);
    }

    /// `EntryWriter::comp`: a write of `kind` removes the other live components (and a
    /// stale fill) it observes, kills leftover TTLs when it creates the key, and (re)creates
    /// its component when that is not alive.
    fn comp(&mut self, v: &View, kind: Kind, stamp: Stamp) {
        if !v.key_alive() {
            self.kill_ttl(v);
        }
        let floor = v.floor();
        let mut same_killed = false;
        if let Some(e) = v.e {
            for c in e.components() {
                let stale =
                    matches!(&c.val, Val::Str(s) if s.reg.version != 0 && s.reg.version <= floor);
                if (c.val.kind() != kind || stale) && v.comp_alive(c) {
                    self.kill_comp(v, c);
                    same_killed |= c.val.kind() == kind;
                }
            }
        }
        let existing = v.e.and_then(|e| comp_of(e, kind));
        let alive = existing.is_some_and(|c| v.comp_alive(c)) && !same_killed;
        if existing.is_none_or(|c| !alive && c.created < stamp) {
            self.created.push(CreatedAtom {
                kind,
                stamp,
                lost: false,
            });
        }
    }

    // ---- operations (each called with the region's view just before it ran) ----

    /// `DEL` (also the implicit removal a write on an expired key starts with).
    pub fn delete(&mut self, v: &View) {
        if v.key_alive() {
            self.kill_everything(v);
        }
    }

    /// `SET value [EX]` or a versioned fill (`version > 0`); `deadline`: the `EX` part.
    pub fn set_str(
        &mut self,
        v: &View,
        stamp: Stamp,
        value: Bytes,
        version: u64,
        deadline: Option<u64>,
    ) {
        self.comp(v, Kind::Str, stamp);
        self.reset_counters(v, &None);
        self.regs.push(RegAtom {
            field: None,
            stamp,
            value: Some(value),
            version,
            lost: false,
            collected: false,
            collected_by: 0,
            live_at: 0,
        });
        self.kill_ttl(v);
        if let Some(d) = deadline {
            self.set_deadline(v, stamp, Some(d));
        }
    }

    /// `INCRBY`/`HINCRBY` that passed the type check: its component write happened; `inc`
    /// is the incarnation it went into (`None`: refused, e.g. not an integer).
    pub fn incr(&mut self, v: &View, stamp: Stamp, field: Field, by: i64, inc: Option<Hlc>) {
        let kind = if field.is_some() {
            Kind::Hash
        } else {
            Kind::Str
        };
        self.comp(v, kind, stamp);
        if let Some(inc) = inc {
            self.incs.push(IncAtom {
                field,
                stamp,
                inc,
                by,
                observed: false,
                lost: false,
                collected: false,
                collected_by: 0,
                live_at: 0,
                zset: false,
            });
        }
    }

    /// `ZREM`/`ZADD` of a member: the adds and increments of it the view holds are
    /// removed (adds, by `ZREM` only) and reset.
    fn observe_zmember(&mut self, v: &View, member: &[u8], kill: bool) {
        for a in self
            .incs
            .iter_mut()
            .filter(|a| a.zset && a.field.as_deref() == Some(member))
        {
            if a.contained(v.e) {
                a.observed = true;
            }
        }
        if kill {
            for a in self
                .adds
                .iter_mut()
                .filter(|a| a.zscore.is_some() && a.member == member)
            {
                if a.contained(v.e) {
                    a.killed = true;
                }
            }
        }
    }

    fn kill_zmember(&mut self, v: &View, member: &[u8]) {
        self.observe_zmember(v, member, true);
    }

    /// `ZADD member score`.
    pub fn zadd(&mut self, v: &View, stamp: Stamp, member: Bytes, score: f64) {
        self.comp(v, Kind::ZSet, stamp);
        self.observe_zmember(v, &member, false);
        self.adds.push(AddAtom {
            member,
            stamp,
            pos: None,
            zscore: Some(score.to_bits()),
            killed: false,
            lost: false,
            collected: false,
            collected_by: 0,
            live_at: 0,
        });
    }

    /// `ZINCRBY member by` that passed the type check; `inc`: the incarnation it went into.
    pub fn zincr(&mut self, v: &View, stamp: Stamp, member: Bytes, by: i64, inc: Option<Hlc>) {
        self.comp(v, Kind::ZSet, stamp);
        if let Some(inc) = inc {
            self.incs.push(IncAtom {
                field: Some(member),
                stamp,
                inc,
                by,
                observed: false,
                lost: false,
                collected: false,
                collected_by: 0,
                live_at: 0,
                zset: true,
            });
        }
    }

    /// `ZREM` of a member the view holds alive.
    pub fn zrem(&mut self, v: &View, member: &[u8]) {
        if !v.dead
            && v.e
                .and_then(|e| zmember(e, member))
                .is_some_and(ZState::is_alive)
        {
            self.kill_zmember(v, member);
        }
    }

    /// `HSET` of one field.
    pub fn hset(&mut self, v: &View, stamp: Stamp, field: Bytes, value: Bytes) {
        self.comp(v, Kind::Hash, stamp);
        let field = Some(field);
        self.reset_counters(v, &field);
        self.regs.push(RegAtom {
            field,
            stamp,
            value: Some(value),
            version: 0,
            lost: false,
            collected: false,
            collected_by: 0,
            live_at: 0,
        });
    }

    /// `HDEL` of a field the view holds alive.
    pub fn hdel(&mut self, v: &View, field: Bytes) {
        let field = Some(field);
        if v.e
            .and_then(|e| str_at(e, &field))
            .is_some_and(|s| !v.dead && s.is_alive())
        {
            self.kill_str(v, &field);
        }
    }

    pub fn sadd(&mut self, v: &View, stamp: Stamp, member: Bytes) {
        self.comp(v, Kind::Set, stamp);
        self.adds.push(AddAtom {
            member,
            pos: None,
            stamp,
            zscore: None,
            killed: false,
            lost: false,
            collected: false,
            collected_by: 0,
            live_at: 0,
        });
    }

    /// A list push: `elems` are the elements it added (position, value), all stamped
    /// `stamp`.
    pub fn list_push(&mut self, v: &View, stamp: Stamp, elems: Vec<(Pos, Bytes)>) {
        self.comp(v, Kind::List, stamp);
        for (pos, member) in elems {
            self.adds.push(AddAtom {
                member,
                pos: Some(pos),
                stamp,
                zscore: None,
                killed: false,
                lost: false,
                collected: false,
                collected_by: 0,
                live_at: 0,
            });
        }
    }

    /// A list pop (or any removal) of the element at `pos`, which the view holds.
    pub fn list_kill(&mut self, v: &View, pos: &[Level]) {
        for a in self
            .adds
            .iter_mut()
            .filter(|a| a.pos.as_deref() == Some(pos))
        {
            if a.contained(v.e) {
                a.killed = true;
            }
        }
    }

    /// `SREM` of a member the view holds alive.
    pub fn srem(&mut self, v: &View, member: &[u8]) {
        if !v.dead
            && v.e
                .and_then(|e| member_dots(e, member))
                .is_some_and(Dots::is_alive)
        {
            self.kill_member(v, member);
        }
    }

    /// `EXPIRE` (`Some`) / `PERSIST` (`None`): replaces the TTLs the view holds.
    pub fn set_deadline(&mut self, v: &View, stamp: Stamp, deadline: Option<u64>) {
        self.kill_ttl(v);
        self.ttls.push(TtlAtom {
            stamp,
            payload: deadline.unwrap_or(PERSIST),
            killed: false,
            lost: false,
            collected: false,
            collected_by: 0,
        });
    }

    /// An invalidation: raises the floor, and removes what the view holds unless its visible
    /// value is a fill newer than `version`.
    pub fn invalidate(&mut self, v: &View, version: Option<u64>) {
        if let Some(ver) = version {
            if ver > v.floor() {
                self.floors.push(FloorAtom {
                    version: ver,
                    lost: false,
                });
            }
        }
        let newer = version.is_some_and(|ver| {
            !v.dead
                && matches!(v.e.and_then(Entry::visible),
                    Some(Val::Str(s)) if s.reg.value.is_some() && s.reg.version > ver)
        });
        if !newer {
            self.kill_everything(v);
        }
    }

    // ---- loss ----

    /// Some copy of the key went away: `before` is the join of every copy that existed
    /// (the lost one included), `after` of every copy left. See the module doc. A removal
    /// record garbage collection dropped somewhere is never lost: collection says every
    /// region has it (if a stale copy of what it removed comes back, that is a bug).
    pub fn forget_lost(&mut self, before: Option<&Entry>, after: Option<&Entry>) -> usize {
        let mut lost = 0;
        let mut gone = |held: bool, now: bool, flag: &mut bool| {
            if !*flag && held && !now {
                *flag = true;
                lost += 1;
            }
        };
        for a in self.regs.iter_mut() {
            let now = a.contained(after) || a.collected;
            gone(a.contained(before), now, &mut a.lost);
        }
        for a in self.incs.iter_mut() {
            gone(a.contained(before), a.contained(after), &mut a.lost);
            if a.observed && !a.collected && a.observed_in(before) && !a.observed_in(after) {
                a.observed = false;
            }
        }
        for a in self.adds.iter_mut() {
            gone(a.contained(before), a.contained(after), &mut a.lost);
            if a.killed && !a.collected && a.killed_in(before) && !a.killed_in(after) {
                a.killed = false;
            }
        }
        for a in self.ttls.iter_mut() {
            gone(a.contained(before), a.contained(after), &mut a.lost);
            if a.killed && !a.collected && a.killed_in(before) && !a.killed_in(after) {
                a.killed = false;
            }
        }
        for a in self.created.iter_mut() {
            gone(a.contained(before), a.contained(after), &mut a.lost);
        }
        let floor = |e: Option<&Entry>| e.map_or(0, Entry::floor);
        for a in self.floors.iter_mut() {
            gone(
                floor(before) >= a.version,
                floor(after) >= a.version,
                &mut a.lost,
            );
        }
        lost
    }

    /// Garbage collection at one region turned its state `before` into `after`: the
    /// removal records it dropped are stable (see [`KeyModel::forget_lost`]) among the
    /// regions of `by` (bits: the collector and the peers its GC waited for).
    pub fn note_collected(&mut self, before: Option<&Entry>, after: Option<&Entry>, by: u16) {
        for a in self.regs.iter_mut().filter(|a| a.value.is_none()) {
            if a.contained(before) && !a.contained(after) {
                a.collected = true;
                a.collected_by |= by;
            }
        }
        for a in self.incs.iter_mut() {
            if a.observed && a.observed_in(before) && !a.observed_in(after) {
                a.collected = true;
                a.collected_by |= by;
            }
        }
        for a in self.adds.iter_mut() {
            if a.killed && a.killed_in(before) && !a.killed_in(after) {
                a.collected = true;
                a.collected_by |= by;
            }
        }
        for a in self.ttls.iter_mut() {
            // Garbage collection only drops a dead entry, so one it dropped was killed
            // there, by a write that observed it or by a later register write superseding
            // it (the TTL rule: the oracle cannot tell which once that write is lost).
            if a.killed_in(before) && !a.killed_in(after) {
                a.killed = true;
                a.collected = true;
                a.collected_by |= by;
            }
        }
    }

    /// Region `bit` was restarted empty after it had been cut off from GC (the
    /// simulator's operator): a removal record only it (and regions restarted so) collected
    /// was known to no one else, so it is no longer protected; `held` is the join of every
    /// copy of the key now. If any record lost its protection so, every atom no copy holds
    /// is lost (a removal only the restarted region knew, and what it had removed that no
    /// one else holds either). Returns the atoms lost.
    pub fn region_restarted(&mut self, bit: u16, held: Option<&Entry>) -> usize {
        let mask = !(1u16 << bit);
        let mut unprotected = false;
        let mut drop_bit = |collected: &mut bool, by: &mut u16| {
            if *collected && *by & !mask != 0 {
                *by &= mask;
                if *by == 0 {
                    *collected = false;
                    unprotected = true;
                }
            }
        };
        self.regs
            .iter_mut()
            .for_each(|a| drop_bit(&mut a.collected, &mut a.collected_by));
        self.incs
            .iter_mut()
            .for_each(|a| drop_bit(&mut a.collected, &mut a.collected_by));
        self.adds
            .iter_mut()
            .for_each(|a| drop_bit(&mut a.collected, &mut a.collected_by));
        self.ttls
            .iter_mut()
            .for_each(|a| drop_bit(&mut a.collected, &mut a.collected_by));
        if !unprotected {
            return 0;
        }
        let mut lost = 0;
        let mut gone = |now: bool, flag: &mut bool| {
            if !*flag && !now {
                *flag = true;
                lost += 1;
            }
        };
        for a in self.regs.iter_mut() {
            let now = a.contained(held) || a.collected;
            gone(now, &mut a.lost);
        }
        for a in self.incs.iter_mut() {
            gone(a.contained(held), &mut a.lost);
            if a.observed && !a.collected && !a.observed_in(held) {
                a.observed = false;
            }
        }
        for a in self.adds.iter_mut() {
            gone(a.contained(held), &mut a.lost);
            if a.killed && !a.collected && !a.killed_in(held) {
                a.killed = false;
            }
        }
        for a in self.ttls.iter_mut() {
            gone(a.contained(held), &mut a.lost);
            if a.killed && !a.collected && !a.killed_in(held) {
                a.killed = false;
            }
        }
        for a in self.created.iter_mut() {
            gone(a.contained(held), &mut a.lost);
        }
        let floor = held.map_or(0, Entry::floor);
        for a in self.floors.iter_mut() {
            gone(floor >= a.version, &mut a.lost);
        }
        lost
    }

    // ---- per-region checks during the fault phase ----

    /// Local rules for one region's state `e` of this key (bit `bit` of the atoms'
    /// `live_at`): an atom that was live in the region's state stays live there until a
    /// removal the oracle recorded (or a later write) replaces it, unless the region lost
    /// its copy of the key since the last check (`lost_copy`).
    pub fn check_region(
        &mut self,
        bit: u16,
        e: Option<&Entry>,
        lost_copy: bool,
    ) -> Option<LocalViolation> {
        let mut bad = None;
        let mask = 1u16 << bit;
        // (field, stamp, tombstone) of every register atom recorded.
        let regs: Vec<(Field, Stamp, bool)> = self
            .regs
            .iter()
            .map(|t| (t.field.clone(), t.stamp, t.value.is_none()))
            .collect();
        for a in self.regs.iter_mut() {
            let now = a.live(e);
            if a.live_at & mask != 0 && !now && !lost_copy && !a.lost {
                let s = e.and_then(|e| str_at(e, &a.field));
                let tomb = regs
                    .iter()
                    .any(|(f, st, t)| *f == a.field && *st == a.stamp && *t);
                let later = regs.iter().any(|(f, st, _)| *f == a.field && *st > a.stamp);
                // Replaced by a later write, or removed by a recorded DEL/HDEL (the tombstone
                // may be collected since, and the key written again).
                let ok = s.is_some_and(|s| s.reg.stamp > a.stamp) || tomb || later;
                if !ok {
                    bad.get_or_insert(LocalViolation(format!(
                        "register {:?} written at {} (field {:?}) is gone without a recorded \
                         removal (state: {})",
                        a.value,
                        fmt_stamp(a.stamp),
                        a.field,
                        fmt_entry(e)
                    )));
                }
            }
            a.live_at = (a.live_at & !mask) | if now { mask } else { 0 };
        }
        for a in self.incs.iter_mut() {
            let now = a.live(e);
            if a.live_at & mask != 0 && !now && !lost_copy && !a.lost {
                // Observed by a recorded reset (its record may be collected since).
                if !a.observed {
                    bad.get_or_insert(LocalViolation(format!(
                        "increment {} at {} (incarnation {}, field {:?}) is no longer counted \
                         (state: {})",
                        a.by,
                        fmt_stamp(a.stamp),
                        fmt_hlc(a.inc),
                        a.field,
                        fmt_entry(e)
                    )));
                }
            }
            a.live_at = (a.live_at & !mask) | if now { mask } else { 0 };
        }
        for a in self.adds.iter_mut() {
            let now = a.live(e);
            if a.live_at & mask != 0 && !now && !lost_copy && !a.lost {
                // Removed by a recorded remove (its tombstone may be collected since), or
                // replaced by a later add of the same region, alive.
                let moved_on = a.dot(e).is_some_and(|(h, alive)| h > a.stamp.hlc && alive);
                if !a.killed && !moved_on {
                    bad.get_or_insert(LocalViolation(format!(
                        "member {:?} added at {} is gone without a recorded remove (state: {})",
                        a.member,
                        fmt_stamp(a.stamp),
                        fmt_entry(e)
                    )));
                }
            }
            a.live_at = (a.live_at & !mask) | if now { mask } else { 0 };
        }
        bad
    }

    /// Where the atom lists end (before an operation adds its atoms).
    pub fn marks(&self) -> [usize; 3] {
        [self.regs.len(), self.incs.len(), self.adds.len()]
    }

    /// Right after a write at a region: the atoms it added (those past `marks`; register
    /// tombstones aside) are live in the region's state.
    pub fn check_own_write(&mut self, bit: u16, e: Option<&Entry>, marks: [usize; 3]) -> bool {
        let mask = 1u16 << bit;
        let mut ok = true;
        for a in self.regs[marks[0]..].iter_mut() {
            if a.value.is_some() {
                ok &= a.live(e);
            }
            if a.live(e) {
                a.live_at |= mask;
            }
        }
        for a in self.incs[marks[1]..].iter_mut() {
            ok &= a.live(e);
            if a.live(e) {
                a.live_at |= mask;
            }
        }
        for a in self.adds[marks[2]..].iter_mut() {
            ok &= a.live(e);
            if a.live(e) {
                a.live_at |= mask;
            }
        }
        ok
    }

    /// Forget the region's liveness bits (its copy was replaced wholesale).
    pub fn clear_region(&mut self, bit: u16) {
        let mask = !(1u16 << bit);
        self.regs.iter_mut().for_each(|a| a.live_at &= mask);
        self.incs.iter_mut().for_each(|a| a.live_at &= mask);
        self.adds.iter_mut().for_each(|a| a.live_at &= mask);
    }

    /// A compact listing of the atoms (debugging).
    pub fn describe(&self) -> String {
        let flag = |lost: bool, dead: bool| match (lost, dead) {
            (true, _) => " LOST",
            (false, true) => " dead",
            _ => "",
        };
        let mut out = String::new();
        for a in &self.regs {
            out.push_str(&format!(
                "\n  reg {:?} {} {:?} v{}{}",
                a.field,
                fmt_stamp(a.stamp),
                a.value,
                a.version,
                flag(a.lost, false)
            ));
        }
        for a in &self.incs {
            out.push_str(&format!(
                "\n  inc {:?} {} inc {} by {}{} live_at {:b}",
                a.field,
                fmt_stamp(a.stamp),
                fmt_hlc(a.inc),
                a.by,
                flag(a.lost, a.observed),
                a.live_at
            ));
        }
        for a in &self.adds {
            out.push_str(&format!(
                "\n  add {:?}{} {}{} live_at {:b}",
                a.member,
                a.zscore
                    .map_or(String::new(), |z| format!(" score {}", f64::from_bits(z))),
                fmt_stamp(a.stamp),
                flag(a.lost, a.killed),
                a.live_at
            ));
        }
        for a in &self.ttls {
            out.push_str(&format!(
                "\n  ttl {} {}{}",
                fmt_stamp(a.stamp),
                a.payload as i64 - 1_700_000_000_000,
                flag(a.lost, a.killed)
            ));
        }
        for a in &self.created {
            out.push_str(&format!(
                "\n  created {:?} {}{}",
                a.kind,
                fmt_stamp(a.stamp),
                flag(a.lost, false)
            ));
        }
        for a in &self.floors {
            out.push_str(&format!("\n  floor {}{}", a.version, flag(a.lost, false)));
        }
        out
    }

    /// Atoms the model holds (for reports).
    pub fn atoms(&self) -> usize {
        self.regs.len()
            + self.incs.len()
            + self.adds.len()
            + self.ttls.len()
            + self.created.len()
            + self.floors.len()
    }

    /// Acknowledged atoms lost everywhere.
    pub fn lost_atoms(&self) -> usize {
        self.regs.iter().filter(|a| a.lost).count()
            + self.incs.iter().filter(|a| a.lost).count()
            + self.adds.iter().filter(|a| a.lost).count()
            + self.ttls.iter().filter(|a| a.lost).count()
    }

    // ---- the converged value ----

    fn floor(&self) -> u64 {
        self.floors
            .iter()
            .filter(|a| !a.lost)
            .map(|a| a.version)
            .max()
            .unwrap_or(0)
    }

    /// The register of `field`: the greatest non-lost atom, a tombstone winning a tie.
    fn register(&self, field: &Field) -> Option<&RegAtom> {
        self.regs
            .iter()
            .filter(|a| !a.lost && a.field == *field)
            .max_by_key(|a| (a.stamp, a.value.is_none()))
    }

    /// The string at `field`: `(visible value, alive, register version)`.
    fn str_value(&self, field: &Field) -> (Option<Bytes>, bool, u64) {
        let reg = self.register(field);
        let reg_value = reg.and_then(|r| r.value.clone());
        let version = reg.filter(|r| r.value.is_some()).map_or(0, |r| r.version);
        let live: Vec<&IncAtom> = self
            .incs
            .iter()
            .filter(|a| !a.lost && !a.observed && !a.zset && a.field == *field)
            .collect();
        if live.is_empty() {
            let alive = reg_value.is_some();
            return (reg_value, alive, version);
        }
        let base = match &reg_value {
            None => 0i128,
            Some(b) => match parse_i64(b) {
                Some(n) => i128::from(n),
                None => return (reg_value, true, version),
            },
        };
        let sum: i128 = live.iter().map(|a| i128::from(a.by)).sum();
        let v = (base + sum).clamp(i128::from(i64::MIN), i128::from(i64::MAX));
        (Some(Bytes::from(v.to_string())), true, version)
    }

    /// A list's live elements in position order: each pushed element exactly once, unless
    /// an acknowledged removal observed it (or it was lost).
    fn list_values(&self) -> Vec<Bytes> {
        let mut m: Vec<(&Pos, Bytes)> = self
            .adds
            .iter()
            .filter(|a| !a.lost && !a.killed)
            .filter_map(|a| a.pos.as_ref().map(|p| (p, a.member.clone())))
            .collect();
        m.sort_by(|a, b| a.0.cmp(b.0));
        m.into_iter().map(|(_, v)| v).collect()
    }

    fn members(&self) -> Vec<Bytes> {
        let mut m: Vec<Bytes> = self
            .adds
            .iter()
            .filter(|a| a.pos.is_none() && a.zscore.is_none() && !a.lost && !a.killed)
            .map(|a| a.member.clone())
            .collect();
        m.sort();
        m.dedup();
        m
    }

    fn fields(&self) -> Vec<(Bytes, Bytes)> {
        let mut names: Vec<Bytes> = self
            .regs
            .iter()
            .filter_map(|a| a.field.clone())
            .chain(
                self.incs
                    .iter()
                    .filter(|a| !a.zset)
                    .filter_map(|a| a.field.clone()),
            )
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|f| {
                let (v, _, _) = self.str_value(&Some(f.clone()));
                v.map(|v| (f, v))
            })
            .collect()
    }

    /// The sorted set's members in order with their scores' bits: a member is present
    /// while one of its adds is not removed or one of its increments not reset; its score
    /// is the latest live add's (0 without one) plus the increments no reset observed.
    fn zmembers(&self) -> Vec<(Bytes, u64)> {
        let mut names: Vec<&Bytes> = self
            .adds
            .iter()
            .filter(|a| a.zscore.is_some())
            .map(|a| &a.member)
            .chain(
                self.incs
                    .iter()
                    .filter(|a| a.zset)
                    .filter_map(|a| a.field.as_ref()),
            )
            .collect();
        names.sort();
        names.dedup();
        let mut out: Vec<(Bytes, f64)> = Vec::new();
        for m in names {
            let base = self
                .adds
                .iter()
                .filter(|a| a.zscore.is_some() && a.member == *m && !a.lost && !a.killed)
                .max_by_key(|a| (a.stamp.hlc, a.stamp.region));
            let incs: Vec<&IncAtom> = self
                .incs
                .iter()
                .filter(|a| a.zset && a.field.as_ref() == Some(m) && !a.lost && !a.observed)
                .collect();
            if base.is_none() && incs.is_empty() {
                continue;
            }
            let mut score = base.and_then(|a| a.zscore).map_or(0.0, f64::from_bits);
            score += incs.iter().map(|a| a.by as f64).sum::<f64>();
            out.push((m.clone(), score));
        }
        out.sort_by(|x, y| {
            x.1.partial_cmp(&y.1)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| x.0.cmp(&y.0))
        });
        out.into_iter().map(|(m, s)| (m, s.to_bits())).collect()
    }

    fn created_of(&self, kind: Kind) -> Stamp {
        self.created
            .iter()
            .filter(|a| !a.lost && a.kind == kind)
            .map(|a| a.stamp)
            .max()
            .unwrap_or(Stamp::ZERO)
    }

    /// The deadline the key must converge to (`None`: no TTL).
    pub fn deadline(&self) -> Option<u64> {
        // The documented rule: every TTL entry older than the key's latest register write
        // is dead.
        let base = self
            .regs
            .iter()
            .filter(|a| !a.lost && a.field.is_none())
            .map(|a| a.stamp)
            .max()
            .unwrap_or(Stamp::ZERO);
        let alive: Vec<u64> = self
            .ttls
            .iter()
            .filter(|a| !a.lost && !a.killed && a.stamp >= base)
            .map(|a| a.payload)
            .collect();
        if alive.is_empty() || alive.contains(&PERSIST) {
            return None;
        }
        alive.into_iter().max()
    }

    /// What a client must read from a converged region whose clock reads `now_ms`.
    pub fn expected(&self, now_ms: u64) -> Rendered {
        if self.deadline().is_some_and(|d| d <= now_ms) {
            return Rendered::Absent;
        }
        let floor = self.floor();
        let mut shown: Vec<(Stamp, Rendered)> = Vec::new();
        let (s, _, version) = self.str_value(&None);
        if let Some(s) = s {
            if version == 0 || version > floor {
                shown.push((self.created_of(Kind::Str), Rendered::Str(s)));
            }
        }
        let m = self.members();
        if !m.is_empty() {
            shown.push((self.created_of(Kind::Set), Rendered::Set(m)));
        }
        let f = self.fields();
        if !f.is_empty() {
            shown.push((self.created_of(Kind::Hash), Rendered::Hash(f)));
        }
        let l = self.list_values();
        if !l.is_empty() {
            shown.push((self.created_of(Kind::List), Rendered::List(l)));
        }
        let z = self.zmembers();
        if !z.is_empty() {
            shown.push((self.created_of(Kind::ZSet), Rendered::ZSet(z)));
        }
        shown
            .into_iter()
            .max_by_key(|(c, _)| *c)
            .map_or(Rendered::Absent, |(_, r)| r)
    }
}

/// A key's observable value, rendered for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rendered {
    Absent,
    Str(Bytes),
    Set(Vec<Bytes>),
    Hash(Vec<(Bytes, Bytes)>),
    List(Vec<Bytes>),
    /// Members in order, with their scores' bits.
    ZSet(Vec<(Bytes, u64)>),
}

/// Render a keyspace entry the way a client at a region whose clock reads `now_ms` sees it.
pub fn render(e: Option<&Entry>, now_ms: u64) -> Rendered {
    let Some(e) = e.filter(|e| e.is_alive() && !e.is_expired(now_ms)) else {
        return Rendered::Absent;
    };
    match e.visible() {
        None => Rendered::Absent,
        Some(Val::Str(s)) => s.bytes().map_or(Rendered::Absent, Rendered::Str),
        Some(Val::Set(s)) => {
            let mut m: Vec<Bytes> = s.members().map(Bytes::copy_from_slice).collect();
            m.sort();
            Rendered::Set(m)
        }
        Some(Val::Hash(h)) => {
            let mut f: Vec<(Bytes, Bytes)> = h
                .fields()
                .filter_map(|(f, s)| s.bytes().map(|v| (Bytes::copy_from_slice(f), v)))
                .collect();
            f.sort();
            Rendered::Hash(f)
        }
        Some(Val::List(l)) => Rendered::List(l.values().map(Bytes::copy_from_slice).collect()),
        Some(Val::ZSet(z)) => Rendered::ZSet(
            z.iter()
                .map(|(m, s)| (Bytes::copy_from_slice(m), s.to_bits()))
                .collect(),
        ),
    }
}

/// The incarnation an increment at `stamp` went into, read from its region's state right
/// after the write (the contribution of that region last written at that stamp).
pub fn incarnation_of(e: Option<&Entry>, field: &Field, stamp: Stamp) -> Option<Hlc> {
    e.and_then(|e| str_at(e, field)).and_then(|s| {
        s.ctr
            .iter()
            .find(|c| c.region == stamp.region && c.hlc == stamp.hlc)
            .map(|c| c.inc)
    })
}

/// A compact rendering of an HLC for debugging: milliseconds since the simulation's epoch
/// and the logical counter.
pub fn fmt_hlc(h: Hlc) -> String {
    let ms = h.physical_ms() as i64 - 1_700_000_000_000;
    if h.logical() == 0 {
        format!("{ms}")
    } else {
        format!("{ms}.{}", h.logical())
    }
}

pub fn fmt_stamp(s: Stamp) -> String {
    format!("{}@r{}", fmt_hlc(s.hlc), s.region.0)
}

fn fmt_str(s: &Str) -> String {
    let mut out = format!(
        "reg {}={:?}",
        fmt_stamp(s.reg.stamp),
        s.reg
            .value
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    );
    if s.reg.version != 0 {
        out.push_str(&format!(" v{}", s.reg.version));
    }
    for c in &s.ctr {
        out.push_str(&format!(
            " ctr(r{} inc {} at {} net {} obs {} {}{})",
            c.region.0,
            fmt_hlc(c.inc),
            fmt_hlc(c.hlc),
            c.net,
            fmt_hlc(c.obs_hlc),
            c.obs_net,
            if c.own { " own" } else { "" }
        ));
    }
    out
}

/// A compact rendering of an entry for debugging.
pub fn fmt_entry(e: Option<&Entry>) -> String {
    let Some(e) = e else {
        return "-".into();
    };
    let mut out = String::new();
    for c in e.components() {
        out.push_str(&format!(
            "[{:?} created {}: ",
            c.val.kind(),
            fmt_stamp(c.created)
        ));
        match &c.val {
            Val::Str(s) => out.push_str(&fmt_str(s)),
            Val::Set(s) => {
                for (m, d) in s.raw() {
                    out.push_str(&format!("{}:", String::from_utf8_lossy(m)));
                    for x in d.entries() {
                        out.push_str(&format!(
                            "{}@r{}{} ",
                            fmt_hlc(x.hlc),
                            x.region.0,
                            if x.alive { "" } else { "✝" }
                        ));
                    }
                }
            }
            Val::Hash(h) => {
                for (f, s) in h.raw() {
                    out.push_str(&format!(
                        "{}: {{{}}} ",
                        String::from_utf8_lossy(f),
                        fmt_str(s)
                    ));
                }
            }
            Val::List(l) => {
                for e in l.raw() {
                    let at = meridian_crdt::list::created(&e.pos);
                    match &e.val {
                        Some((_, v)) => out.push_str(&format!(
                            "{}@{} ",
                            String::from_utf8_lossy(v),
                            fmt_stamp(at)
                        )),
                        None => out.push_str(&format!("✝@{} ", fmt_stamp(at))),
                    }
                }
            }
            Val::ZSet(z) => {
                for (m, st) in z.raw() {
                    out.push_str(&format!("{}:", String::from_utf8_lossy(m)));
                    for x in st.dots.entries() {
                        out.push_str(&format!(
                            "{}@r{}{}={} ",
                            fmt_hlc(x.hlc),
                            x.region.0,
                            if x.alive { "" } else { "✝" },
                            x.payload.get()
                        ));
                    }
                    for k in st.ctr.iter() {
                        out.push_str(&format!(
                            "+r{}/{}@{}:{}-{}@{} ",
                            k.region.0,
                            fmt_hlc(k.inc),
                            fmt_hlc(k.hlc),
                            k.net,
                            k.obs_net,
                            fmt_hlc(k.obs_hlc)
                        ));
                    }
                }
            }
        }
        out.push_str("] ");
    }
    for x in e.expiry().entries() {
        out.push_str(&format!(
            "ttl {}@r{}{}={} ",
            fmt_hlc(x.hlc),
            x.region.0,
            if x.alive { "" } else { "✝" },
            x.payload as i64 - 1_700_000_000_000
        ));
    }
    if e.floor() != 0 {
        out.push_str(&format!("floor {} ", e.floor()));
    }
    for r in e.removals() {
        out.push_str(&format!("rm {} ", fmt_stamp(*r)));
    }
    out
}
