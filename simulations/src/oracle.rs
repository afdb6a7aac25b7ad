//! The oracle: what every key must converge to, computed from the operations the workload
//! applied and what each resetting operation observed at its region.
//!
//! Counters: the converged value is the register's base plus, per region, its total
//! increments minus the part a reset (`SET`/`DEL`/`HDEL`) observed — the exact-sum rule.
//! Registers: the max-stamp `SET` wins unless a `DEL` observed exactly that write (LWW).
//! Sets: a member is present iff some add dot was not observed by a remove (add-wins).
//! What a reset observed is read from the resetting region's keyspace just before it runs;
//! everything else is the oracle's own bookkeeping.

use bytes::Bytes;
use meridian_crdt::{parse_i64, Entry, Hlc, RegionId, Stamp, Str, Val};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub struct StrModel {
    reg: Option<(Stamp, Bytes)>,
    reg_killed: Stamp,
    /// Per region: (stamp of its last increment, sum of all its increments).
    contrib: BTreeMap<RegionId, (Hlc, i64)>,
    /// Per region: the greatest (hlc, net) of its contribution a reset observed.
    observed: BTreeMap<RegionId, (Hlc, i64)>,
}

impl StrModel {
    pub fn set(&mut self, stamp: Stamp, value: Bytes, seen: Option<&Str>) {
        self.observe_counters(seen);
        if self.reg.as_ref().is_none_or(|(s, _)| stamp > *s) {
            self.reg = Some((stamp, value));
        }
    }

    pub fn incr(&mut self, stamp: Stamp, by: i64) {
        let c = self.contrib.entry(stamp.region).or_insert((Hlc::ZERO, 0));
        c.0 = c.0.max(stamp.hlc);
        c.1 += by;
    }

    /// A `DEL`/`HDEL` at a region whose state was `seen`.
    pub fn remove(&mut self, seen: Option<&Str>) {
        if let Some(s) = seen {
            self.reg_killed = self.reg_killed.max(s.reg.stamp);
        }
        self.observe_counters(seen);
    }

    fn observe_counters(&mut self, seen: Option<&Str>) {
        for c in seen.map_or(&[][..], |s| &s.ctr[..]) {
            let o = self.observed.entry(c.region).or_insert((Hlc::ZERO, 0));
            *o = (*o).max((c.hlc, c.net));
        }
    }

    /// Expected visible value (integers in decimal).
    pub fn expected(&self) -> Option<Bytes> {
        let reg = self
            .reg
            .as_ref()
            .filter(|(s, _)| *s > self.reg_killed)
            .map(|(_, v)| v.clone());
        let obs = |r: &RegionId| self.observed.get(r).copied().unwrap_or((Hlc::ZERO, 0));
        let live = self.contrib.iter().any(|(r, c)| c.0 > obs(r).0);
        if !live {
            return reg;
        }
        let base = match &reg {
            None => 0i128,
            Some(b) => match parse_i64(b) {
                Some(n) => i128::from(n),
                None => return reg,
            },
        };
        let sum: i128 = self
            .contrib
            .iter()
            .map(|(r, c)| i128::from(c.1) - i128::from(obs(r).1))
            .sum();
        let v = (base + sum).clamp(i128::from(i64::MIN), i128::from(i64::MAX));
        Some(Bytes::from(v.to_string()))
    }
}

#[derive(Clone, Debug, Default)]
pub struct SetModel {
    adds: BTreeMap<Bytes, BTreeMap<RegionId, Hlc>>,
    killed: BTreeMap<Bytes, BTreeMap<RegionId, Hlc>>,
}

impl SetModel {
    pub fn add(&mut self, stamp: Stamp, member: &Bytes) {
        let h = self.adds.entry(member.clone()).or_default();
        let e = h.entry(stamp.region).or_insert(Hlc::ZERO);
        *e = (*e).max(stamp.hlc);
    }

    /// A remove of `member` observed these dots (a dot kills every earlier dot of its region).
    pub fn remove_observed(&mut self, member: &Bytes, dots: impl Iterator<Item = (RegionId, Hlc)>) {
        let k = self.killed.entry(member.clone()).or_default();
        for (r, h) in dots {
            let e = k.entry(r).or_insert(Hlc::ZERO);
            *e = (*e).max(h);
        }
    }

    pub fn expected(&self) -> Vec<Bytes> {
        self.adds
            .iter()
            .filter(|(m, adds)| {
                adds.iter().any(|(r, h)| {
                    *h > self
                        .killed
                        .get(*m)
                        .and_then(|k| k.get(r))
                        .copied()
                        .unwrap_or(Hlc::ZERO)
                })
            })
            .map(|(m, _)| m.clone())
            .collect()
    }
}

/// A cache-aside key fed by versioned fills (`SET … VERSION v`) and invalidations from the
/// source of truth. The register rule is LWW with observed removal, as for strings; on top,
/// the winning fill is hidden when its version is at or below the greatest invalidation
/// version applied anywhere: no value older than an applied invalidation reappears.
#[derive(Clone, Debug, Default)]
pub struct FillModel {
    /// Accepted fills by stamp: (source version, value).
    fills: BTreeMap<Stamp, (u64, Bytes)>,
    /// Greatest register stamp an invalidation observed and removed.
    killed: Stamp,
    /// Greatest invalidation version applied in any region.
    pub floor: u64,
}

impl FillModel {
    pub fn fill(&mut self, stamp: Stamp, version: u64, value: Bytes) {
        self.fills.insert(stamp, (version, value));
    }

    /// An invalidation at a region whose raw register was `seen` (hidden fills included);
    /// `removes` says whether it removed what it saw (it keeps a newer visible fill).
    pub fn invalidate(&mut self, version: Option<u64>, seen: Option<&Str>, removes: bool) {
        if let Some(v) = version {
            self.floor = self.floor.max(v);
        }
        if let Some(s) = seen.filter(|s| removes && s.reg.value.is_some()) {
            self.killed = self.killed.max(s.reg.stamp);
        }
    }

    pub fn expected(&self) -> Option<Bytes> {
        let (stamp, (version, value)) = self.fills.last_key_value()?;
        (*stamp > self.killed && *version > self.floor).then(|| value.clone())
    }
}

#[derive(Clone, Debug)]
pub enum KeyModel {
    Str(StrModel),
    Set(SetModel),
    Hash(BTreeMap<Bytes, StrModel>),
    Fill(FillModel),
}

/// A key's observable value, rendered for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rendered {
    Absent,
    Str(Bytes),
    Set(Vec<Bytes>),
    Hash(Vec<(Bytes, Bytes)>),
}

impl KeyModel {
    pub fn expected(&self) -> Rendered {
        match self {
            KeyModel::Str(s) => s.expected().map_or(Rendered::Absent, Rendered::Str),
            KeyModel::Fill(f) => f.expected().map_or(Rendered::Absent, Rendered::Str),
            KeyModel::Set(s) => {
                let m = s.expected();
                if m.is_empty() {
                    Rendered::Absent
                } else {
                    Rendered::Set(m)
                }
            }
            KeyModel::Hash(fields) => {
                let f: Vec<_> = fields
                    .iter()
                    .filter_map(|(f, m)| m.expected().map(|v| (f.clone(), v)))
                    .collect();
                if f.is_empty() {
                    Rendered::Absent
                } else {
                    Rendered::Hash(f)
                }
            }
        }
    }
}

/// Render a keyspace entry the way a client would see it (TTL ignored: it is compared
/// separately, because regions with skewed clocks expire at different instants).
pub fn render(e: Option<&Entry>) -> Rendered {
    let Some(e) = e.filter(|e| e.is_alive()) else {
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
    }
}
