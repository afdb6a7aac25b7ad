//! The command layer: one family per file, each handler parses its arguments, applies them
//! to the keyspace through [`Ctx`] and returns a [`Reply`] — nothing else (mini-redis shape).
//!
//! The dispatcher looks a command up in a static table ([`Spec`]: arity, flags, key
//! positions), checks arity, answers -OOM for writes when memory cannot be freed, locks the
//! shards of the command's keys (ascending order, so deadlock-free) and calls the handler.

pub mod acl;
pub mod bitmap;
pub mod cluster;
pub mod cursor;
pub mod dump;
pub mod encoding;
pub mod hash;
pub mod keys;
pub mod list;
pub mod pubsub;
pub mod replica;
pub mod server;
pub mod set;
pub mod sort;
pub mod string;
pub mod zset;

use crate::frame::Reply;
use crate::shared::Shared;
use crate::store::{Shard, Store};
use bytes::Bytes;
use meridian_crdt::key_slot;
use meridian_crdt::{CrdtError, Entry, EntryWriter, Kind};
use parking_lot::MutexGuard;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A command's handler: `args` are the request's arguments (the name first), slices of the
/// request's bytes ([`Ctx::bytes`] shares one without copying).
pub type Handler = fn(&mut Ctx, &[&[u8]]) -> Outcome;

/// What a command asks of its connection: most reply, a few change what the connection does
/// next. Handlers return a [`Reply`] (turned into `Outcome::Reply` by [`spec!`]) or an
/// `Outcome` itself.
#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// Write this reply, then close the connection (QUIT).
    Close(Reply),
    /// Block this connection until `replicas` replicas acknowledged its last write, or
    /// `timeout_ms` passed (0: no timeout); the reply is how many did (WAIT).
    Wait {
        replicas: usize,
        timeout_ms: u64,
    },
    /// The connection becomes a replica stream (`MERIDIAN SYNC`).
    Takeover(meridian_replication::replica_stream::SyncRequest),
    /// A write while writes pause (a manual failover, the restart window): earlier replies
    /// go out, the connection waits the pause out and runs the command again.
    Pause,
    /// A blocking command found nothing to take (BLPOP and friends): the connection waits
    /// until one of `keys` changes, then runs the command again, or answers `timeout_reply`
    /// after `timeout_ms` (0: never). Inside a transaction: `timeout_reply` at once.
    Block {
        keys: Vec<Bytes>,
        timeout_ms: u64,
        timeout_reply: Reply,
    },
    /// The replies were queued to the connection's pub/sub mailbox (subscription
    /// confirmations, one per channel): nothing more to write.
    Pushed,
}

impl From<Reply> for Outcome {
    #[inline]
    fn from(r: Reply) -> Outcome {
        Outcome::Reply(r)
    }
}

impl Outcome {
    /// The reply, for a caller that cannot block or hand the connection over (a command
    /// inside EXEC, the in-process test entry): what cannot run there is refused.
    pub fn into_reply(self) -> Reply {
        match self {
            Outcome::Reply(r) | Outcome::Close(r) => r,
            Outcome::Block { timeout_reply, .. } => timeout_reply,
            Outcome::Wait { .. } | Outcome::Takeover(_) | Outcome::Pause | Outcome::Pushed => {
                err("ERR Command not allowed inside a transaction")
            }
        }
    }
}

pub const WRITE: u32 = 1;
pub const READONLY: u32 = 2;
pub const DENYOOM: u32 = 4;
pub const FAST: u32 = 8;
pub const ADMIN: u32 = 16;
/// Lock every shard (multi-key atomicity, or iterate the whole keyspace).
pub const ALL_SHARDS: u32 = 32;
/// Not allowed inside MULTI (handled by the connection).
pub const NO_MULTI: u32 = 64;
pub const LOADING: u32 = 128;
pub const STALE: u32 = 256;
/// The argument after the key names a member or field: it is prefetched with the key when
/// the request is parsed ahead of the one running (see `Keyspace::prefetch`).
pub const ELEMENT: u32 = 512;
/// The argument before the first key is the number of keys (`SINTERCARD numkeys key…`,
/// Redis' `keynum` key spec): the keys are the next that many arguments (`last_key` is
/// not used); a count that is not a number or runs past the arguments names no keys (the
/// handler refuses it).
pub const NUMKEYS: u32 = 1024;
/// With [`NUMKEYS`]: the first argument is a key too, the destination
/// (`ZUNIONSTORE destination numkeys key…`).
pub const DEST_KEY: u32 = 2048;
/// Sharded pub/sub (SSUBSCRIBE, SUNSUBSCRIBE, SPUBLISH): its "keys" are shard channels, and
/// a replica of the slot's primary serves it without READONLY (as Redis Cluster).
pub const SHARD_PUBSUB: u32 = 4096;

pub struct Spec {
    pub name: &'static str,
    /// Redis arity: exact if positive, minimum if negative (counting the name).
    pub arity: i32,
    pub flags: u32,
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub handler: Handler,
    /// Index in the table's name order, set when the table is built: the command's bit in
    /// ACL permission sets (`acl::Registry`).
    pub id: u16,
}

impl Spec {
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i32;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// Indices of key arguments in `args` (args[0] is the command name).
    pub fn key_indices(&self, args: &[&[u8]]) -> impl Iterator<Item = usize> {
        let argc = args.len();
        let first = self.first_key.max(0) as usize;
        let mut valid = self.first_key > 0;
        let last = if self.flags & NUMKEYS != 0 {
            let n = args
                .get(first.wrapping_sub(1))
                .and_then(|n| crate::util::parse_int(n))
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n >= 1 && first + n <= argc);
            valid &= n.is_some();
            (first + n.unwrap_or(1)).saturating_sub(1)
        } else if self.last_key < 0 {
            (argc as i32 + self.last_key).max(0) as usize
        } else {
            self.last_key as usize
        };
        let step = self.step.max(1) as usize;
        let dest = (self.flags & DEST_KEY != 0 && valid && argc > 1).then_some(1);
        dest.into_iter().chain(
            (first..=last.min(argc.saturating_sub(1)))
                .step_by(step)
                .filter(move |_| valid),
        )
    }

    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.flags & WRITE != 0 {
            v.push("write");
        }
        if self.flags & READONLY != 0 {
            v.push("readonly");
        }
        if self.flags & DENYOOM != 0 {
            v.push("denyoom");
        }
        if self.flags & ADMIN != 0 {
            v.push("admin");
        }
        if self.flags & FAST != 0 {
            v.push("fast");
        }
        if self.flags & NUMKEYS != 0 {
            v.push("movablekeys");
        }
        if self.flags & LOADING != 0 {
            v.push("loading");
        }
        if self.flags & STALE != 0 {
            v.push("stale");
        }
        v
    }
}

type Table = HashMap<&'static [u8], Spec, ahash::RandomState>;

static TABLE: OnceLock<Table> = OnceLock::new();

pub fn table() -> &'static Table {
    TABLE.get_or_init(|| {
        let mut all: Vec<Spec> = Vec::new();
        for spec in string::specs()
            .into_iter()
            .chain(bitmap::specs())
            .chain(dump::specs())
            .chain(set::specs())
            .chain(hash::specs())
            .chain(list::specs())
            .chain(zset::specs())
            .chain(keys::specs())
            .chain(server::specs())
            .chain(cluster::specs())
            .chain(replica::specs())
            .chain(acl::specs())
            .chain(sort::specs())
            .chain(pubsub::specs())
        {
            all.push(spec);
        }
        all.sort_by_key(|s| s.name);
        let mut m = Table::default();
        for (id, mut spec) in all.into_iter().enumerate() {
            spec.id = u16::try_from(id).unwrap_or(u16::MAX);
            m.insert(spec.name.as_bytes(), spec);
        }
        m
    })
}

/// Look a command up by name, case-insensitively, without allocating.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    let mut buf = [0u8; 32];
    if name.len() > buf.len() {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    table().get(&buf[..name.len()])
}

/// Per-connection state the commands see.
pub struct ConnState {
    pub id: u64,
    pub addr: String,
    pub name: Option<Bytes>,
    pub resp3: bool,
    pub created_ms: u64,
    pub last_cmd: &'static str,
    pub multi: Option<Vec<Vec<Bytes>>>,
    pub multi_error: bool,
    /// What the queued commands of the open transaction take (`transaction::queue`).
    pub multi_bytes: u64,
    pub watched: Vec<(Bytes, u64)>,
    /// Sampling for SPOP/SRANDMEMBER/RANDOMKEY and eviction (seeded per connection from
    /// the OS: clients cannot predict it).
    pub rng: rand::rngs::SmallRng,
    /// Commands run since the last flush to the shared counter (one atomic per batch).
    pub pending_commands: u64,
    /// Cluster: `ASKING` was the previous command (one command's worth of permission).
    pub asking: bool,
    /// Cluster: `READONLY` (reads may be served by a replica).
    pub readonly: bool,
    /// In-region replication offset after this client's last write (what WAIT waits for).
    pub write_offset: u64,
    /// Who this connection is (AUTH) and what it may run (`acl`).
    pub session: crate::acl::Session,
    /// The port the client connected to (`laddr`: the plain or the TLS port).
    pub local_port: u16,
    /// Pub/sub subscriptions and the mailbox of their messages (None: never subscribed).
    pub subs: Option<Box<crate::pubsub::Subscriptions>>,
}

impl ConnState {
    pub fn new(id: u64, addr: String, created_ms: u64) -> ConnState {
        ConnState {
            id,
            addr,
            name: None,
            resp3: false,
            created_ms,
            last_cmd: "NULL",
            multi: None,
            multi_error: false,
            multi_bytes: 0,
            watched: Vec::new(),
            pending_commands: 0,
            asking: false,
            readonly: false,
            write_offset: 0,
            session: crate::acl::Session::default(),
            rng: rand::SeedableRng::from_os_rng(),
            local_port: 0,
            subs: None,
        }
    }

    /// RESP2 subscribe mode: only pub/sub commands, PING, QUIT and RESET are allowed.
    #[inline]
    pub fn subscribe_mode(&self) -> bool {
        !self.resp3 && self.subs.as_ref().is_some_and(|s| s.active())
    }

    pub fn random(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.rng)
    }
}

use crate::store::SomeGuards;

pub enum Locks<'s> {
    None,
    Some(SomeGuards<'s>),
    All(Vec<MutexGuard<'s, Shard>>),
}

pub struct Ctx<'s, 'c> {
    pub store: &'s Store,
    pub shared: &'s Shared,
    pub conn: &'c mut ConnState,
    pub now_ms: u64,
    pub locks: Locks<'s>,
    /// Slots of the command's key arguments, computed once when it locked them.
    pub key_slots: KeySlots,
    /// The request's bytes, which its arguments are slices of (empty when they are not).
    pub frame: &'c Bytes,
    /// The shard guards the connection's batch keeps besides `locks` (`store::Held`): a
    /// shard locked on demand is taken from here first (this thread holds it: waiting for
    /// it would never end).
    pub held: &'c mut crate::store::Held<'s>,
}

/// `(address, length, slot)` of key arguments whose slot is known. The request's argument
/// buffers live (unchanged) for the whole command, so a key at the same address and length
/// is the same bytes.
pub type KeySlots = smallvec::SmallVec<[(usize, usize, u16); 2]>;

impl<'s, 'c> Ctx<'s, 'c> {
    /// An argument as `Bytes` sharing the request's buffer (a reference count, no copy), for
    /// a delta to carry; a copy when `arg` is not a slice of the request.
    pub fn bytes(&self, arg: &[u8]) -> Bytes {
        let frame = self.frame.as_ptr() as usize;
        let at = arg.as_ptr() as usize;
        if at >= frame && at + arg.len() <= frame + self.frame.len() && !arg.is_empty() {
            self.frame.slice_ref(arg)
        } else {
            Bytes::copy_from_slice(arg)
        }
    }

    /// The (already locked) shard holding `key`.
    pub fn shard(&mut self, key: &[u8]) -> &mut Shard {
        let idx = crate::store::shard_of(self.slot_of(key));
        if matches!(self.locks, Locks::None) {
            self.locks = Locks::Some(SomeGuards::new());
        }
        match &mut self.locks {
            Locks::All(g) => &mut g[idx],
            Locks::Some(v) => {
                let pos = match v.iter().position(|(i, _)| *i == idx) {
                    Some(p) => p,
                    None => {
                        // Keyless commands lock on demand; keyed ones were locked up front
                        // (but for keys in options, as MIGRATE … KEYS has).
                        let g = self.held.take(idx).unwrap_or_else(|| self.store.shard(idx));
                        v.push((idx, g));
                        v.len() - 1
                    }
                };
                &mut v[pos].1
            }
            Locks::None => unreachable!("replaced above"),
        }
    }

    /// For a handler that writes `key` with its shard locked on demand (keyless commands:
    /// MERIDIAN INVALIDATE/MERGE): lock that shard now (kept until the command ends) and
    /// tell whether a manual failover pauses writes, in which case the handler returns
    /// [`Ctx::wait_out_pause`] instead of writing. With every shard held (EXEC) the pause
    /// cannot have been made exact yet, so the write goes ahead and is counted.
    pub fn pause_began(&mut self, key: &[u8]) -> bool {
        if matches!(self.locks, Locks::All(_)) {
            return false;
        }
        let _ = self.shard(key);
        self.shared.write_pause_began(self.now_ms)
    }

    /// [`Ctx::pause_began`] for a write that issues no stamp of its own (a merged state):
    /// only a manual failover's pause counts, not the restart window (which keeps this
    /// region from reissuing stamps of its previous life).
    pub fn failover_pause_began(&mut self, key: &[u8]) -> bool {
        if matches!(self.locks, Locks::All(_)) {
            return false;
        }
        let _ = self.shard(key);
        self.shared.failover_pause_began(self.now_ms)
    }

    /// The reply of a write that waits out a manual failover's pause (see
    /// [`Ctx::pause_began`]): the connection runs the command again afterwards.
    pub fn wait_out_pause(&mut self) -> Outcome {
        Outcome::Pause
    }

    /// The key's hash slot (CRC16 only for keys that are not the command's arguments).
    pub fn slot_of(&self, key: &[u8]) -> u16 {
        let at = key.as_ptr() as usize;
        self.key_slots
            .iter()
            .find(|&&(a, n, _)| a == at && n == key.len())
            .map_or_else(|| key_slot(key), |&(_, _, slot)| slot)
    }

    /// Visit every shard (locked one at a time unless all are already held).
    pub fn each_shard(&mut self, mut f: impl FnMut(&mut Shard)) {
        match &mut self.locks {
            Locks::All(g) => g.iter_mut().for_each(|s| f(s)),
            _ => {
                for i in 0..crate::store::SHARDS {
                    f(&mut self.store.shard(i));
                }
            }
        }
    }

    /// Lookup for reading: reclaims expired keys, counts hits and misses.
    pub fn read(&mut self, key: &[u8]) -> Option<Cow<'_, Entry>> {
        self.counted_read(key, |ks, slot, now| ks.get_in(slot, key, now))
    }

    /// [`Ctx::read`] of a string's value (`Keyspace::get_string_in`).
    pub fn read_string(&mut self, key: &[u8]) -> Option<Result<Option<Bytes>, CrdtError>> {
        self.counted_read(key, |ks, slot, now| ks.get_string_in(slot, key, now))
    }

    /// A read of `key` on its keyspace, counted as a hit when it finds the key.
    fn counted_read<'a, R>(
        &'a mut self,
        key: &[u8],
        f: impl FnOnce(&'a mut meridian_crdt::Keyspace, u16, u64) -> Option<R>,
    ) -> Option<R> {
        let now = self.now_ms;
        let slot = self.slot_of(key);
        let shard = self.shard(key);
        let Shard {
            ks, hits, misses, ..
        } = shard;
        let r = f(ks, slot, now);
        if r.is_some() {
            *hits += 1;
        } else {
            *misses += 1;
        }
        r
    }

    /// Lookup without touching hit/miss statistics (existence checks inside writes).
    pub fn lookup(&mut self, key: &[u8]) -> Option<Cow<'_, Entry>> {
        let now = self.now_ms;
        let slot = self.slot_of(key);
        self.shard(key).ks.get_in(slot, key, now)
    }

    pub fn kind(&mut self, key: &[u8]) -> Option<Kind> {
        self.lookup(key).and_then(|e| e.kind())
    }

    /// Apply a local write to `key` and queue its delta.
    pub fn write<R>(&mut self, key: &[u8], f: impl FnOnce(&mut EntryWriter) -> R) -> R {
        let owned = self.bytes(key);
        self.local_write(key, |ks, slot, stamp, now| {
            ks.write_in(slot, owned, stamp, now, f)
        })
    }

    /// `INCRBY key by`: [`Ctx::write`] of `incr_by(by)`, with the keyspace's in-place path
    /// for a counter this region packed.
    pub fn incr_plain(&mut self, key: &[u8], by: i64) -> Result<i64, CrdtError> {
        let owned = self.bytes(key);
        self.local_write(key, |ks, slot, stamp, now| {
            ks.incr_plain(slot, owned, stamp, now, by)
        })
    }

    /// `SET key value` with no option: [`Ctx::write`] of `set_str_shared(value, false)`,
    /// with the keyspace's in-place path for a plain string.
    pub fn set_plain(&mut self, key: &[u8], value: &[u8]) {
        let (owned, value) = (self.bytes(key), self.bytes(value));
        self.local_write(key, |ks, slot, stamp, now| {
            ks.set_plain(slot, owned, stamp, now, value)
        })
    }

    /// Run one local write of `key` on its keyspace (with the key's slot, a fresh stamp
    /// and the time), then log its deltas.
    fn local_write<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(&mut meridian_crdt::Keyspace, u16, meridian_crdt::Stamp, u64) -> R,
    ) -> R {
        let now = self.now_ms;
        let store = self.store;
        // Lock (if this keyless command has not yet), then stamp: see replication's drain.
        let slot = self.slot_of(key);
        let shard = self.shard(key);
        let stamp = store.stamp(now);
        let r = f(&mut shard.ks, slot, stamp, now);
        shard.after_write(&store.stats);
        r
    }
}

/// Refuse a write that would leave `key`'s state (its length plus `heap_bytes`, `now`
/// the state before the write) larger than one replication frame carries
/// (`Runtime::max_entry_bytes`), before anything is written. `grow` is what the write adds
/// at most (see [`element_bytes`]).
#[inline]
pub fn check_room(store: &Store, key: &[u8], now: usize, grow: usize) -> Result<(), Reply> {
    let max = store.runtime.max_entry_bytes;
    if key.len().saturating_add(now).saturating_add(grow) <= max {
        return Ok(());
    }
    Err(err_owned(format!(
        "ERR the key's value would exceed {max} bytes, the most replication carries"
    )))
}

/// What a new member or field of `len` bytes adds to a collection's `heap_bytes` (with the
/// value of a field, `extra`).
#[inline]
pub fn element_bytes(len: usize, extra: usize) -> usize {
    len + meridian_crdt::collections::ELEMENT_OVERHEAD_BYTES + extra
}

// ---- random picks (SRANDMEMBER, SPOP, HRANDFIELD) ----

/// Most elements a random pick with a negative count (elements may repeat) answers, and
/// most bytes: Redis answers any count, which lets one request build a reply of any size;
/// a larger count is refused (a positive count is bounded by the collection itself).
pub const RANDOM_REPLY_MAX: usize = 1 << 20;
pub const RANDOM_REPLY_MAX_BYTES: usize = 256 << 20;

/// Up to `n` distinct random elements of `s` (a partial shuffle with the connection's
/// generator).
pub fn pick_distinct<T: Clone>(ctx: &mut Ctx, s: &[T], n: usize) -> Vec<T> {
    let mut pool: Vec<T> = s.to_vec();
    let n = n.min(pool.len());
    for i in 0..n {
        let j = i + (ctx.conn.random() % (pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(n);
    pool
}

/// Redis' error for a count of `LONG_MIN` (its range is -LONG_MAX..=LONG_MAX).
pub fn count_out_of_range() -> Reply {
    err("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807")
}

// ---- replies and argument helpers shared by the families ----

pub fn err(msg: &'static str) -> Reply {
    Reply::Error(Cow::Borrowed(msg))
}

pub fn err_owned(msg: String) -> Reply {
    Reply::Error(Cow::Owned(msg))
}

pub fn syntax() -> Reply {
    err("ERR syntax error")
}

pub fn not_int() -> Reply {
    err("ERR value is not an integer or out of range")
}

pub fn not_float() -> Reply {
    err("ERR value is not a valid float")
}

pub fn wrongtype() -> Reply {
    err("WRONGTYPE Operation against a key holding the wrong kind of value")
}

pub fn arity(name: &str) -> Reply {
    err_owned(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

pub fn crdt_err(e: CrdtError) -> Reply {
    match e {
        CrdtError::WrongType => wrongtype(),
        CrdtError::NotInteger => not_int(),
        CrdtError::Overflow => err("ERR increment or decrement would overflow"),
        e @ CrdtError::Stale { .. } => err_owned(e.to_string()),
    }
}

pub fn int_arg(b: &[u8]) -> Result<i64, Reply> {
    crate::util::parse_int(b).ok_or_else(not_int)
}

pub fn bulk(b: Bytes) -> Reply {
    Reply::Bulk(b)
}

pub fn bulk_opt(b: Option<Bytes>) -> Reply {
    b.map_or(Reply::Null, Reply::Bulk)
}

pub fn ok() -> Reply {
    Reply::Ok
}

/// Unwrap a `Result<Reply, Reply>` produced with `?` inside handlers.
pub fn flat(r: Result<Reply, Reply>) -> Reply {
    r.unwrap_or_else(|e| e)
}

/// Copy an argument into its own allocation before storing it: arguments are slices of the
/// connection's read buffer, which must not be pinned by stored values.
pub fn own(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

macro_rules! spec {
    ($name:expr, $arity:expr, $flags:expr, $first:expr, $last:expr, $step:expr, $handler:expr) => {
        $crate::cmd::Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            first_key: $first,
            last_key: $last,
            step: $step,
            id: 0,
            handler: |ctx, args| ::core::convert::Into::into(($handler)(ctx, args)),
        }
    };
}
pub(crate) use spec;
