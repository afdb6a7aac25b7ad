//! Pub/sub on one node, as Redis 7: channels, glob patterns and shard channels, each
//! subscriber a bounded [`Mailbox`] its connection task drains.
//!
//! PUBLISH never waits: under the registry's read lock it appends the message (encoded once
//! per protocol and per matching pattern, shared as `Bytes`) to each subscriber's mailbox
//! and wakes its connection. A mailbox past `client-output-buffer-limit pubsub` (counting
//! what its connection is still writing) is closed instead: its connection ends and the
//! disconnection is counted (`client_output_buffer_limit_disconnections` in INFO). The
//! subscription confirmations of (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE go through the same
//! mailbox, queued under the registry's write lock, so no message can come before its
//! subscription's confirmation.

use crate::frame::{encode, Reply};
use crate::limits::OutputLimit;
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Most patterns one client may subscribe to (every PUBLISH tries each pattern).
pub const MAX_PATTERNS_PER_CLIENT: usize = 10_000;

/// One subscriber's queue of encoded pushes, drained by its connection task.
pub struct Mailbox {
    queue: Mutex<Queue>,
    notify: tokio::sync::Notify,
    closed: AtomicBool,
    resp3: AtomicBool,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Bytes>,
    /// Bytes in `items` plus what the connection took and has not written yet.
    bytes: u64,
    /// What the connection took from the queue and is writing now.
    unsent: u64,
    /// Since when (ms) over the soft limit; 0: not over it.
    soft_since: u64,
}

impl Mailbox {
    fn new(resp3: bool) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Queue::default()),
            notify: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            resp3: AtomicBool::new(resp3),
        }
    }

    /// Queue an encoded push; false (and the mailbox closed) past `limit`.
    fn push(&self, item: Bytes, limit: OutputLimit, now: u64) -> bool {
        if self.closed.load(Relaxed) {
            return false;
        }
        let mut q = self.queue.lock();
        let pending = q.bytes + item.len() as u64;
        if limit != OutputLimit::default() && limit.exceeded(pending, &mut q.soft_since, now) {
            drop(q);
            self.closed.store(true, Relaxed);
            self.notify.notify_one();
            return false;
        }
        q.bytes = pending;
        let was_empty = q.items.is_empty();
        q.items.push_back(item);
        drop(q);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Queue a reply for this subscriber (confirmations), whatever the limit.
    fn push_reply(&self, reply: &Reply) {
        let mut b = BytesMut::new();
        encode(reply, self.resp3.load(Relaxed), &mut b);
        let mut q = self.queue.lock();
        q.bytes += b.len() as u64;
        q.items.push_back(b.freeze());
        drop(q);
        self.notify.notify_one();
    }

    /// Move everything queued to `out`; the moved bytes count as unsent until
    /// [`Mailbox::sent`].
    pub fn drain_into(&self, out: &mut BytesMut) {
        let mut q = self.queue.lock();
        let mut moved = 0;
        for b in q.items.drain(..) {
            moved += b.len() as u64;
            out.extend_from_slice(&b);
        }
        q.unsent += moved;
    }

    /// The connection wrote what it drained.
    pub fn sent(&self) {
        let mut q = self.queue.lock();
        q.bytes = q.bytes.saturating_sub(q.unsent);
        q.unsent = 0;
    }

    pub fn has_items(&self) -> bool {
        !self.queue.lock().items.is_empty()
    }

    /// Closed for going over the output buffer limit.
    pub fn closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Until something is queued or the mailbox closes.
    pub async fn wait(&self) {
        if self.closed() || self.has_items() {
            return;
        }
        self.notify.notified().await;
    }

    /// Until the mailbox closes (while the connection writes).
    pub async fn wait_closed(&self) {
        while !self.closed() {
            self.notify.notified().await;
        }
    }
}

type Subscribers = HashMap<u64, Arc<Mailbox>, ahash::RandomState>;

#[derive(Default)]
struct Registry {
    channels: HashMap<Bytes, Subscribers, ahash::RandomState>,
    patterns: HashMap<Bytes, Subscribers, ahash::RandomState>,
    shard_channels: HashMap<Bytes, Subscribers, ahash::RandomState>,
}

/// Which of the three kinds of subscription.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    Channel,
    Pattern,
    Shard,
}

impl SubKind {
    fn words(self) -> (&'static str, &'static str) {
        match self {
            SubKind::Channel => ("subscribe", "unsubscribe"),
            SubKind::Pattern => ("psubscribe", "punsubscribe"),
            SubKind::Shard => ("ssubscribe", "sunsubscribe"),
        }
    }
}

/// Every subscription of the node, and its counters.
#[derive(Default)]
pub struct PubSub {
    reg: RwLock<Registry>,
    /// Subscribers closed for going over `client-output-buffer-limit pubsub`.
    pub disconnections: AtomicU64,
}

/// One connection's subscriptions; dropped with the connection, which unsubscribes it.
pub struct Subscriptions {
    hub: Arc<PubSub>,
    id: u64,
    pub mailbox: Arc<Mailbox>,
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard: HashSet<Bytes>,
}

impl Subscriptions {
    pub fn new(hub: Arc<PubSub>, id: u64, resp3: bool) -> Subscriptions {
        Subscriptions {
            hub,
            id,
            mailbox: Arc::new(Mailbox::new(resp3)),
            channels: HashSet::new(),
            patterns: HashSet::new(),
            shard: HashSet::new(),
        }
    }

    /// The protocol pushes are encoded in (HELLO may change it).
    pub fn set_resp3(&self, resp3: bool) {
        self.mailbox.resp3.store(resp3, Relaxed);
    }

    /// Any subscription left (the connection is in subscribe mode).
    pub fn active(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard.is_empty())
    }

    /// The count a confirmation carries: channels and patterns, or shard channels (Redis 7).
    fn count(&self, kind: SubKind) -> i64 {
        match kind {
            SubKind::Shard => self.shard.len() as i64,
            _ => (self.channels.len() + self.patterns.len()) as i64,
        }
    }

    fn set(&mut self, kind: SubKind) -> &mut HashSet<Bytes> {
        match kind {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shard,
        }
    }

    /// Subscribe to `names`, queueing one confirmation each. Err: Redis-style error text.
    pub fn subscribe(&mut self, kind: SubKind, names: &[&[u8]]) -> Result<(), &'static str> {
        if kind == SubKind::Pattern {
            let new = names
                .iter()
                .filter(|n| !self.patterns.contains(**n))
                .count();
            if self.patterns.len() + new > MAX_PATTERNS_PER_CLIENT {
                return Err("ERR too many patterns subscribed by this client");
            }
        }
        let hub = self.hub.clone();
        let mut reg = hub.reg.write();
        for &n in names {
            let name = Bytes::copy_from_slice(n);
            if self.set(kind).insert(name.clone()) {
                reg.map(kind)
                    .entry(name.clone())
                    .or_default()
                    .insert(self.id, self.mailbox.clone());
            }
            let word = kind.words().0;
            self.mailbox
                .push_reply(&confirmation(word, Some(name), self.count(kind)));
        }
        Ok(())
    }

    /// Unsubscribe from `names` (none: from all of this kind), one confirmation each.
    pub fn unsubscribe(&mut self, kind: SubKind, names: &[&[u8]]) {
        let names: Vec<Bytes> = if names.is_empty() {
            self.set(kind).iter().cloned().collect()
        } else {
            names.iter().map(|n| Bytes::copy_from_slice(n)).collect()
        };
        let word = kind.words().1;
        let hub = self.hub.clone();
        let mut reg = hub.reg.write();
        if names.is_empty() {
            self.mailbox
                .push_reply(&confirmation(word, None, self.count(kind)));
            return;
        }
        for name in names {
            if self.set(kind).remove(&name) {
                reg.remove(kind, &name, self.id);
            }
            self.mailbox
                .push_reply(&confirmation(word, Some(name), self.count(kind)));
        }
    }

    /// Drop every subscription without confirmations (RESET, the connection's end).
    pub fn clear(&mut self) {
        let hub = self.hub.clone();
        let mut reg = hub.reg.write();
        for kind in [SubKind::Channel, SubKind::Pattern, SubKind::Shard] {
            for name in std::mem::take(self.set(kind)) {
                reg.remove(kind, &name, self.id);
            }
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.clear();
    }
}

fn confirmation(word: &'static str, name: Option<Bytes>, count: i64) -> Reply {
    Reply::Push(vec![
        Reply::Bulk(Bytes::from_static(word.as_bytes())),
        name.map_or(Reply::Null, Reply::Bulk),
        Reply::Int(count),
    ])
}

impl Registry {
    fn map(&mut self, kind: SubKind) -> &mut HashMap<Bytes, Subscribers, ahash::RandomState> {
        match kind {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shard_channels,
        }
    }

    fn remove(&mut self, kind: SubKind, name: &Bytes, id: u64) {
        let m = self.map(kind);
        if let Some(s) = m.get_mut(name) {
            s.remove(&id);
            if s.is_empty() {
                m.remove(name);
            }
        }
    }
}

/// A push encoded lazily, once per protocol.
struct Encoded {
    parts: Vec<Reply>,
    wire: [Option<Bytes>; 2],
}

impl Encoded {
    fn new(parts: Vec<Reply>) -> Encoded {
        Encoded {
            parts,
            wire: [None, None],
        }
    }

    fn get(&mut self, resp3: bool) -> Bytes {
        let parts = &self.parts;
        self.wire[resp3 as usize]
            .get_or_insert_with(|| {
                let mut b = BytesMut::new();
                encode(&Reply::Push(parts.clone()), resp3, &mut b);
                b.freeze()
            })
            .clone()
    }
}

fn bulk(b: &[u8]) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(b))
}

impl PubSub {
    /// Deliver `message` on `channel` to its subscribers and the matching patterns' (or,
    /// `shard`, to the shard channel's); how many received it. Never waits.
    pub fn publish(
        &self,
        channel: &[u8],
        message: &[u8],
        shard: bool,
        limit: OutputLimit,
        now: u64,
    ) -> i64 {
        let reg = self.reg.read();
        let mut receivers = 0;
        let mut deliver = |subs: &Subscribers, enc: &mut Encoded| {
            for mb in subs.values() {
                receivers += 1;
                mb.push(enc.get(mb.resp3.load(Relaxed)), limit, now);
            }
        };
        let channels = if shard {
            &reg.shard_channels
        } else {
            &reg.channels
        };
        if let Some(subs) = channels.get(channel) {
            let word = if shard { "smessage" } else { "message" };
            let mut enc = Encoded::new(vec![
                Reply::Bulk(Bytes::from_static(word.as_bytes())),
                bulk(channel),
                bulk(message),
            ]);
            deliver(subs, &mut enc);
        }
        if !shard {
            for (pattern, subs) in &reg.patterns {
                if crate::util::glob_match(pattern, channel, false) {
                    let mut enc = Encoded::new(vec![
                        Reply::Bulk(Bytes::from_static(b"pmessage")),
                        Reply::Bulk(pattern.clone()),
                        bulk(channel),
                        bulk(message),
                    ]);
                    deliver(subs, &mut enc);
                }
            }
        }
        receivers
    }

    /// PUBSUB CHANNELS / SHARDCHANNELS: the active channels matching `pattern`.
    pub fn channels(&self, shard: bool, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let reg = self.reg.read();
        let m = if shard {
            &reg.shard_channels
        } else {
            &reg.channels
        };
        m.keys()
            .filter(|c| pattern.is_none_or(|p| crate::util::glob_match(p, c, false)))
            .cloned()
            .collect()
    }

    /// PUBSUB NUMSUB / SHARDNUMSUB: subscribers of a channel.
    pub fn numsub(&self, shard: bool, channel: &[u8]) -> i64 {
        let reg = self.reg.read();
        let m = if shard {
            &reg.shard_channels
        } else {
            &reg.channels
        };
        m.get(channel).map_or(0, |s| s.len() as i64)
    }

    /// PUBSUB NUMPAT: patterns subscribed to (by anyone; each counted once).
    pub fn numpat(&self) -> i64 {
        self.reg.read().patterns.len() as i64
    }

    /// Channels, patterns and shard channels with subscribers (INFO).
    pub fn counts(&self) -> (u64, u64, u64) {
        let reg = self.reg.read();
        (
            reg.channels.len() as u64,
            reg.patterns.len() as u64,
            reg.shard_channels.len() as u64,
        )
    }

    /// Count a subscriber closed for its output buffer.
    pub fn count_disconnection(&self) {
        self.disconnections.fetch_add(1, Relaxed);
    }
}
