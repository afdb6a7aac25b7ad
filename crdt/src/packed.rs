//! How the keyspace stores a key: a 24-byte key handle and a packed body, 64 bytes per node.
//!
//! Most keys are a plain string or a counter written from one region, with no TTL. The full
//! [`Entry`] for those carries a component list, a register, a counter vector and metadata
//! slots that are all empty or zero but still cost their space (a 160-byte node plus a
//! separate counter allocation). [`Stored`] keeps those two shapes packed into the fields
//! that are actually set, and everything else as a boxed [`Entry`]. Packing is exact: a
//! packed body unpacks to the very `Entry` it was packed from (tested), so merge, digest and
//! every rule of the CRDT are unchanged; only the storage differs.
//!
//! Readers get a `Cow<Entry>` ([`Stored::view`]); writers open the body as a full entry
//! (the keyspace's `Opened`: in place when boxed, unpacked when packed), work on it and pack
//! it again.

use crate::entry::{Comp, Entry, Val};
use crate::hlc::{Hlc, RegionId, Stamp};
use crate::strval::{Contrib, Register, Str};
use crate::CrdtError;
use bytes::Bytes;
use std::borrow::Cow;
use thin_vec::ThinVec;

/// Inline key length: 0..=23. An enum so that the other values of its byte are free for
/// [`Key`]'s tag (the whole key handle stays 24 bytes).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Len {
    L0,
    L1,
    L2,
    L3,
    L4,
    L5,
    L6,
    L7,
    L8,
    L9,
    L10,
    L11,
    L12,
    L13,
    L14,
    L15,
    L16,
    L17,
    L18,
    L19,
    L20,
    L21,
    L22,
    L23,
}

const LENS: [Len; INLINE_KEY + 1] = [
    Len::L0,
    Len::L1,
    Len::L2,
    Len::L3,
    Len::L4,
    Len::L5,
    Len::L6,
    Len::L7,
    Len::L8,
    Len::L9,
    Len::L10,
    Len::L11,
    Len::L12,
    Len::L13,
    Len::L14,
    Len::L15,
    Len::L16,
    Len::L17,
    Len::L18,
    Len::L19,
    Len::L20,
    Len::L21,
    Len::L22,
    Len::L23,
];

/// Keys up to this many bytes live inside the node.
pub(crate) const INLINE_KEY: usize = 23;

/// A key's bytes: inline up to 23 bytes (no allocation, no pointer to chase on compare:
/// `redis-benchmark`'s 16-byte keys and most real ones), otherwise behind a thin pointer.
#[derive(Clone, Debug)]
pub(crate) enum Key {
    Inline { len: Len, bytes: [u8; INLINE_KEY] },
    Heap(ThinVec<u8>),
}

impl Key {
    pub(crate) fn new(key: &[u8]) -> Key {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: LENS[key.len()],
                bytes,
            }
        } else {
            Key::Heap(ThinVec::from(key))
        }
    }

    /// Bytes allocated for the key outside the node.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Key::Inline { .. } => 0,
            Key::Heap(b) => alloc_class(THIN_HEADER + b.len()),
        }
    }
}

// A key compares, hashes and (de)serializes as its bytes, like the `Bytes` it stands in for:
// a collection of `Key`s is looked up by `&[u8]` and encodes exactly as one of `Bytes`.
impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        **self == **other
    }
}
impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        Bytes::deserialize(d).map(|b| Key::new(&b))
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Heap(b) => b,
        }
    }
}

/// A key's state as stored: packed when it is one of the two common shapes, else boxed.
#[derive(Debug)]
pub(crate) enum Stored {
    /// A string written by `SET` and friends: one string component whose register holds a
    /// plain (unversioned) value, no counter contributions, no TTL, removal record or floor.
    Str {
        created: Hlc,
        at: Hlc,
        created_region: RegionId,
        region: RegionId,
        /// `value.len()`, capped at `u16::MAX`: accounting reads it here instead of from the
        /// value's header (a cache miss a `SET` would otherwise take for nothing).
        len_hint: u16,
        value: ThinVec<u8>,
    },
    /// A counter built by `INCR` in one region: one string component with an empty
    /// register and a single contribution no reset has observed, opened by the write that
    /// created the component (its incarnation is `created`), no metadata.
    Ctr {
        created: Hlc,
        hlc: Hlc,
        net: i64,
        created_region: RegionId,
        region: RegionId,
        /// [`Contrib::own`].
        own: bool,
    },
    /// No component and no metadata: a node just created, before its first write lands.
    Empty,
    Full(Box<Entry>),
}

impl Stored {
    /// Stands in while a body is moved out (allocates nothing).
    pub(crate) const PLACEHOLDER: Stored = Stored::Empty;

    /// Pack `e` if it has one of the packed shapes.
    pub(crate) fn pack(e: Entry) -> Stored {
        match Stored::packable(&e) {
            Some(Shape::Str) => {
                let mut e = e;
                let c = e.comps.pop();
                match c {
                    Some(Comp {
                        created,
                        val:
                            Val::Str(Str {
                                reg:
                                    Register {
                                        stamp,
                                        value: Some(v),
                                        ..
                                    },
                                ..
                            }),
                    }) => Stored::Str {
                        created: created.hlc,
                        at: stamp.hlc,
                        created_region: created.region,
                        region: stamp.region,
                        len_hint: u16::try_from(v.len()).unwrap_or(u16::MAX),
                        value: ThinVec::from(&v[..]),
                    },
                    _ => unreachable!("checked by packable"),
                }
            }
            Some(Shape::Empty) => Stored::Empty,
            Some(Shape::Ctr) => {
                let c = &e.comps[0];
                let Val::Str(s) = &c.val else {
                    unreachable!("checked by packable")
                };
                let k = s.ctr[0];
                Stored::Ctr {
                    created: c.created.hlc,
                    hlc: k.hlc,
                    net: k.net,
                    created_region: c.created.region,
                    region: k.region,
                    own: k.own,
                }
            }
            None => Stored::Full(Box::new(e)),
        }
    }

    fn packable(e: &Entry) -> Option<Shape> {
        if e.meta.as_deref().is_some_and(|m| !m.is_empty()) {
            return None;
        }
        if e.comps.is_empty() {
            return Some(Shape::Empty);
        }
        if e.comps.len() != 1 {
            return None;
        }
        let Val::Str(s) = &e.comps[0].val else {
            return None;
        };
        if s.reg.version != 0 {
            return None;
        }
        if s.ctr.is_empty() && s.reg.value.is_some() {
            return Some(Shape::Str);
        }
        let plain_counter = s.reg.value.is_none()
            && s.reg.stamp == Stamp::ZERO
            && s.ctr.len() == 1
            && s.ctr[0].inc == e.comps[0].created.hlc
            && s.ctr[0].obs_hlc == Hlc::ZERO
            && s.ctr[0].obs_net == 0;
        plain_counter.then_some(Shape::Ctr)
    }

    /// The full entry, moved out (a packed string's value is copied into a `Bytes`).
    pub(crate) fn unpack(self) -> Entry {
        match self {
            Stored::Full(b) => *b,
            packed => packed.to_entry(),
        }
    }

    /// The full entry, rebuilt from a packed body (cloning the value).
    fn to_entry(&self) -> Entry {
        match self {
            Stored::Full(b) => (**b).clone(),
            Stored::Empty => Entry::default(),
            Stored::Str {
                created,
                at,
                created_region,
                region,
                value,
                ..
            } => string_entry(
                Stamp::new(*created, *created_region),
                Stamp::new(*at, *region),
                Bytes::copy_from_slice(value),
            ),
            Stored::Ctr {
                created,
                hlc,
                net,
                created_region,
                region,
                own,
            } => counter_entry(
                Stamp::new(*created, *created_region),
                Stamp::new(*hlc, *region),
                *net,
                *own,
            ),
        }
    }

    /// What `Entry::as_str` then `Str::bytes` give for this body, without rebuilding a
    /// packed string's entry; `Err(WrongType)` when it is not a string.
    pub(crate) fn string_value(&self) -> Result<Option<Bytes>, CrdtError> {
        let v = match self {
            Stored::Str { value, .. } => Ok(Some(Bytes::copy_from_slice(value))),
            other => (other.view().as_str().map(|s| s.bytes())).ok_or(CrdtError::WrongType),
        };
        debug_assert_eq!(
            v,
            self.view()
                .as_str()
                .map(|s| s.bytes())
                .ok_or(CrdtError::WrongType)
        );
        v
    }

    /// The entry for reading: borrowed when boxed, rebuilt when packed.
    pub(crate) fn view(&self) -> Cow<'_, Entry> {
        match self {
            Stored::Full(b) => Cow::Borrowed(&**b),
            packed => Cow::Owned(packed.to_entry()),
        }
    }

    /// A plain `SET` (no TTL, no version) of a packed string, in place: the new value
    /// replaces the old one without reading it. Returns the string's creation stamp and the
    /// old value, or
    /// `None` (nothing changed) when the body is not a packed string. The result is the
    /// packed form of what the general write path builds (see `Keyspace::set_plain`).
    /// The old value is handed back, so the caller can free it last: freeing reads its
    /// header, a likely cache miss that other work can then overlap.
    pub(crate) fn overwrite_str(
        &mut self,
        stamp: Stamp,
        value: &[u8],
    ) -> Option<(Stamp, ThinVec<u8>)> {
        let Stored::Str {
            created,
            created_region,
            at,
            region,
            len_hint,
            value: stored,
        } = self
        else {
            return None;
        };
        *at = stamp.hlc;
        *region = stamp.region;
        let old = if usize::from(*len_hint) == value.len() && stored.len() == value.len() {
            // Same length (fixed-size tokens, counters kept as strings, benchmarks): write
            // over the old bytes, no free and no allocation. The hint check comes first, so
            // a different length is decided without reading the old value's header.
            stored.copy_from_slice(value);
            ThinVec::new()
        } else {
            *len_hint = u16::try_from(value.len()).unwrap_or(u16::MAX);
            std::mem::replace(stored, ThinVec::from(value))
        };
        Some((Stamp::new(*created, *created_region), old))
    }

    /// `INCRBY` of a counter packed by the writing region (`stamp.region`), in place:
    /// returns the counter's creation stamp and its new value. `None`, and nothing changed,
    /// when the body is not such a counter or the value would leave i64 (the general path
    /// then decides).
    pub(crate) fn incr_own(&mut self, stamp: Stamp, by: i64) -> Option<(Stamp, i64)> {
        let Stored::Ctr {
            created,
            hlc,
            net,
            created_region,
            region,
            own,
        } = self
        else {
            return None;
        };
        if *region != stamp.region || !*own {
            return None;
        }
        *net = net.checked_add(by)?;
        *hlc = stamp.hlc;
        Some((Stamp::new(*created, *created_region), *net))
    }

    /// Merge a remote plain string (`created`, written at `at`, holding `value`) into a
    /// packed string of the same incarnation (same creation stamp), in place: the later
    /// write wins, as `Register::merge` decides. Returns whether it changed, or `None`
    /// (nothing done) when the body is not a packed string created at `created`.
    pub(crate) fn merge_plain_str(
        &mut self,
        created: Stamp,
        at: Stamp,
        value: &[u8],
    ) -> Option<bool> {
        let Stored::Str {
            created: c,
            created_region: cr,
            at: a,
            region: r,
            ..
        } = self
        else {
            return None;
        };
        if Stamp::new(*c, *cr) != created {
            return None;
        }
        if at <= Stamp::new(*a, *r) {
            return Some(false);
        }
        drop(self.overwrite_str(at, value));
        Some(true)
    }

    /// Pack again after a write or merge, if the entry now has a packed shape.
    pub(crate) fn settle(&mut self) {
        if let Stored::Full(b) = self {
            if Stored::packable(b).is_some() {
                let e = std::mem::take(&mut **b);
                *self = Stored::pack(e);
            }
        }
    }

    /// No component at all (a new node, or a floor-only remnant).
    pub(crate) fn is_bare(&self) -> bool {
        match self {
            Stored::Full(b) => b.comps.is_empty(),
            Stored::Empty => true,
            _ => false,
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        match self {
            Stored::Full(b) => b.is_alive(),
            Stored::Str { .. } => true,
            Stored::Ctr { hlc, .. } => *hlc > Hlc::ZERO,
            Stored::Empty => false,
        }
    }

    pub(crate) fn deadline_ms(&self) -> Option<u64> {
        match self {
            Stored::Full(b) => b.deadline_ms(),
            _ => None,
        }
    }

    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        match self {
            Stored::Full(b) => b.is_expired(now_ms),
            _ => false,
        }
    }

    pub(crate) fn floor(&self) -> u64 {
        match self {
            Stored::Full(b) => b.floor(),
            _ => 0,
        }
    }

    /// Bytes allocated outside the node (for `used_memory`): the box and what the entry
    /// holds, or the packed string's value.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Stored::Full(b) => BOX_BYTES + b.heap_bytes(),
            Stored::Str { len_hint: 0, .. } => 0,
            Stored::Str {
                len_hint: u16::MAX,
                value,
                ..
            } => alloc_class(THIN_HEADER + value.len()),
            Stored::Str { len_hint, .. } => alloc_class(THIN_HEADER + usize::from(*len_hint)),
            Stored::Ctr { .. } | Stored::Empty => 0,
        }
    }
}

enum Shape {
    Empty,
    Str,
    Ctr,
}

/// The length and capacity words in front of a [`ThinVec`]'s bytes.
const THIN_HEADER: usize = 16;

/// What a boxed [`Entry`] costs on its own (its size class).
const BOX_BYTES: usize = 112;

/// Bytes the allocator hands out for a request of `n` (jemalloc size classes, roughly):
/// 16-byte steps to 128, then four classes per doubling.
fn alloc_class(n: usize) -> usize {
    if n == 0 {
        0
    } else if n <= 128 {
        n.div_ceil(16) * 16
    } else {
        let step = (n.next_power_of_two() / 8).max(16);
        n.div_ceil(step) * step
    }
}

/// `(created, written at, value)` of an entry that is a plain string (the shape
/// [`Stored::Str`] packs), else `None`.
pub(crate) fn plain_string(e: &Entry) -> Option<(Stamp, Stamp, &Bytes)> {
    if !matches!(Stored::packable(e), Some(Shape::Str)) {
        return None;
    }
    let c = &e.comps[0];
    match &c.val {
        Val::Str(Str {
            reg:
                Register {
                    stamp,
                    value: Some(v),
                    ..
                },
            ..
        }) => Some((c.created, *stamp, v)),
        _ => None,
    }
}

/// The entry a packed counter stands for: one string component, created at `created`, with
/// an empty register and the single contribution `net` of region `at.region`, opened at
/// `created.hlc` and last written at `at.hlc` (`own`: see [`Contrib::own`]).
pub(crate) fn counter_entry(created: Stamp, at: Stamp, net: i64, own: bool) -> Entry {
    Entry::from_comp(Comp {
        created,
        val: Val::Str(Str {
            reg: Register::default(),
            ctr: vec![Contrib {
                region: at.region,
                inc: created.hlc,
                hlc: at.hlc,
                net,
                obs_hlc: Hlc::ZERO,
                obs_net: 0,
                own,
            }],
        }),
    })
}

/// The full entry of a packed string: one string component created at `created`, whose
/// register holds `value` written at `at`.
pub(crate) fn string_entry(created: Stamp, at: Stamp, value: Bytes) -> Entry {
    Entry::from_comp(Comp {
        created,
        val: Val::Str(Str {
            reg: Register {
                stamp: at,
                value: Some(value),
                version: 0,
            },
            ctr: Vec::new(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::{Keyspace, KeyspaceConfig};

    fn st(hlc: u64, region: u16) -> Stamp {
        Stamp::new(Hlc(hlc), RegionId(region))
    }

    /// Packing a key's whole state and unpacking it gives the same state back, and only the
    /// two common shapes are packed.
    fn roundtrip(e: &Entry) -> &'static str {
        let packed = Stored::pack(e.clone());
        let shape = match &packed {
            Stored::Str { .. } => "str",
            Stored::Ctr { .. } => "ctr",
            Stored::Empty => "empty",
            Stored::Full(_) => "full",
        };
        assert_eq!(packed.view().as_ref(), e, "view of {shape}");
        assert_eq!(packed.is_alive(), e.is_alive());
        assert_eq!(packed.deadline_ms(), e.deadline_ms());
        assert_eq!(packed.floor(), e.floor());
        assert_eq!(&packed.unpack(), e, "unpack of {shape}");
        shape
    }

    fn state(ks: &Keyspace, key: &str) -> Entry {
        ks.raw_entry(key.as_bytes()).expect("present").into_owned()
    }

    #[test]
    fn common_shapes_pack_and_everything_else_stays_full() {
        let mut a = Keyspace::new(KeyspaceConfig {
            region: RegionId(1),
            retain_tombstones: true,
            ..KeyspaceConfig::default()
        });
        let mut b = Keyspace::new(KeyspaceConfig {
            region: RegionId(2),
            retain_tombstones: true,
            ..KeyspaceConfig::default()
        });
        let v = Bytes::from_static(b"value");
        a.write(b"s", st(10, 1), 0, |w| w.set_str_shared(v.clone(), false));
        a.write(b"s", st(11, 1), 0, |w| w.set_str_shared(v.clone(), false));
        assert_eq!(
            roundtrip(&state(&a, "s")),
            "str",
            "SET twice: creation != write stamp"
        );
        a.write(b"c", st(12, 1), 0, |w| w.incr_by(5).map(drop))
            .unwrap();
        assert_eq!(roundtrip(&state(&a, "c")), "ctr");
        // Another region's increment on top: two contributions.
        b.merge_state(b"c", true, &state(&a, "c"));
        assert_eq!(roundtrip(&state(&b, "c")), "ctr", "replicated as is");
        b.write(b"c", st(13, 2), 0, |w| w.incr_by(1).map(drop))
            .unwrap();
        assert_eq!(roundtrip(&state(&b, "c")), "full");
        // TTL, reset, versioned fill, set, tombstone.
        a.write(b"t", st(14, 1), 0, |w| {
            w.set_str_shared(v.clone(), false);
            w.set_deadline(Some(1_000_000));
        });
        assert_eq!(roundtrip(&state(&a, "t")), "full");
        a.write(b"c", st(15, 1), 0, |w| w.set_str_shared(v.clone(), false));
        assert_eq!(
            roundtrip(&state(&a, "c")),
            "full",
            "SET over INCR observes the counter"
        );
        a.write(b"f", st(16, 1), 0, |w| {
            w.set_str_versioned(v.clone(), 7, false)
        })
        .unwrap();
        assert_eq!(roundtrip(&state(&a, "f")), "full");
        a.write(b"m", st(17, 1), 0, |w| w.sadd(&v));
        assert_eq!(roundtrip(&state(&a, "m")), "full");
        a.write(b"s", st(18, 1), 0, |w| w.delete());
        assert_eq!(roundtrip(&state(&a, "s")), "full", "tombstone");
        assert_eq!(roundtrip(&Entry::default()), "empty");
    }

    #[test]
    fn keys_inline_up_to_fifteen_bytes_and_on_the_heap_beyond() {
        for len in [0, 1, 15, 16, 22, 23, 24, 300] {
            let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let k = Key::new(&key);
            assert_eq!(&k[..], &key[..]);
            assert_eq!(k.heap_bytes() == 0, len <= INLINE_KEY, "len {len}");
        }
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }
}
