//! In-region replication (issue #7): inside a region, a shard is a primary plus async
//! replicas. The primary streams every change of its state to its replicas over the client
//! TCP port, PSYNC-style; replicas apply them with CRDT merges under shard locks.
//!
//! # API for the cluster shell
//! `Shared::inregion` is an [`InRegion`]; it is the only handle the shell needs:
//! - [`InRegion::follow`]`(Some(PrimaryAddr { host, port }))` makes this node a replica of
//!   that primary (drops its own replicas, starts a new replication id, connects, tries a
//!   partial resync first, reconnects with backoff); `follow(None)` promotes it (accepts
//!   writes again, keeps its data). Cheap and non-blocking: the link task does the I/O.
//! - [`InRegion::role`], [`InRegion::repl_offset`] (the offset to advertise in cluster bus
//!   headers and to rank replicas in elections), [`InRegion::link_up`],
//!   [`InRegion::drop_replica_links`].
//! - [`InRegion::set_refuse_writes`]: standalone replicas answer `-READONLY` to writes; a
//!   cluster shell that answers `-MOVED` itself may turn that off.
//!
//! # Offsets and the backlog
//! Every change of this node's state gets the next node-wide offset, assigned under the
//! writing shard's lock and the backlog lock (so backlog order is offset order): local
//! writes (`Shard::after_write`) and also deltas and states merged from *other regions*
//! (`region_link::LockedStore`), since those change the primary's state too and replicas
//! must converge without waiting for a full sync. Expiry and eviction are local on every
//! node and never streamed. Frames are encoded once (postcard, see
//! `meridian_replication::replica`) into a [`Backlog`] bounded by `repl-backlog-size` bytes.
//! Nothing is recorded until the first replica connects (no cost per write before that).
//!
//! # Protocol (over the client port)
//! replica → `MERIDIAN SYNC <primary-replid|?> <applied-offset> <replica-port>`; primary →
//! `+CONTINUE <replid> <offset>` (the backlog still covers it) or `+FULLRESYNC <replid>
//! <offset>` followed by `Entries` chunks (every entry of every slot, tombstones included)
//! and `SnapshotEnd { offset }`; the live stream then continues after the offset the
//! snapshot began at (overlap is harmless: merges are idempotent). A full sync first drops
//! the replica's data (keys deleted on the primary in between would otherwise linger).
//! The replica acks (`Ack { offset }`) after applying and every 100 ms; the primary pings
//! every second. Malformed frames, timeouts and a replica that falls out of the backlog
//! close the link with a log line; the replica reconnects.

use crate::frame::Reply;
use crate::store::{shard_of, Held, Remote, Store, PREFETCH_AHEAD};
use crate::tls::ClientStream;
use crate::util::now_ms;
use bytes::{Bytes, BytesMut};
use meridian_crdt::{Delta, Entry};
use meridian_replication::replica_stream::SyncRequest;
use meridian_replication::replica_stream::{
    decide, encode_delta, encode_frame, encode_state, Backlog, ReceiverEvent, ReplicaFrame,
    SnapshotWriter, StreamReceiver, StreamSender, LINK_TIMEOUT_MS,
};
use parking_lot::Mutex;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
const RECONNECT_MIN_MS: u64 = 100;
const RECONNECT_MAX_MS: u64 = 2_000;
const READ_CHUNK_BYTES: usize = 64 * 1024;
pub const DEFAULT_BACKLOG_BYTES: usize = 1024 * 1024;

fn new_replid() -> String {
    let a = crate::util::now_micros() ^ (u64::from(std::process::id()) << 40);
    let b = a.rotate_left(17).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (&a as *const u64 as u64);
    let c = b.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ a;
    format!("{a:016x}{b:016x}{:08x}", c as u32)
}

/// The encoding buffer is kept for the next change unless one grew it past this.
const SCRATCH_KEEP_BYTES: usize = 64 * 1024;

struct FeedState {
    backlog: Backlog,
    /// Where a change is encoded before it is copied into the backlog.
    scratch: Vec<u8>,
    /// This node's replication id: names the stream the offsets belong to.
    replid: String,
}

/// The node-wide change feed: every change of this node's state, numbered, into the bounded
/// backlog. Shards hold an `Arc` to it.
pub struct ReplFeed {
    /// Off until the first replica asks for a sync (and on replicas).
    active: AtomicBool,
    /// Mirror of the backlog's last offset (read without the lock: WAIT, INFO).
    offset: AtomicU64,
    state: Mutex<FeedState>,
    /// Signalled after every append (stream senders wait on it).
    appended: Notify,
    /// What this node's replicas acknowledged ([`ReplFeed::replicas_hold`]).
    acks: Mutex<ReplicaAcks>,
    /// Changes and key states too large for a replication frame: a change the stream could
    /// not carry (replicas resync), a snapshot that failed on a key, a region-link frame that
    /// could not be encoded (INFO `replication_too_large`). Writes are bounded so that none
    /// should be; merged state can still grow a key past the bound.
    pub too_large: AtomicU64,
}

/// Acknowledged offsets of the replicas that could be promoted: those connected (from the
/// offset their sync started at: a partial resync's replica holds it, a full sync's holds
/// nothing older than it), and those that left less than the hold bound ago (a replica cut
/// off from its primary may still be promoted with what it had).
#[derive(Default)]
struct ReplicaAcks {
    /// (replica id, its address, acked offset)
    live: Vec<(u64, String, u64)>,
    /// (address, acked offset, when it left)
    departed: Vec<(String, u64, u64)>,
}

impl ReplFeed {
    pub fn new(max_size_bytes: usize) -> ReplFeed {
        ReplFeed {
            active: AtomicBool::new(false),
            offset: AtomicU64::new(0),
            state: Mutex::new(FeedState {
                backlog: Backlog::new(max_size_bytes, 0),
                scratch: Vec::new(),
                replid: new_replid(),
            }),
            appended: Notify::new(),
            acks: Mutex::new(ReplicaAcks::default()),
            too_large: AtomicU64::new(0),
        }
    }

    /// The offset every replica that could be promoted holds (connected ones, and those
    /// that left within `hold_ms`); `None` when there is none. The inter-region links claim
    /// no more than that (`replication::ReplicaCap`).
    pub fn replicas_hold(&self, now_ms: u64, hold_ms: u64) -> Option<u64> {
        let mut acks = self.acks.lock();
        acks.departed
            .retain(|(_, _, left)| now_ms.saturating_sub(*left) <= hold_ms);
        let live = acks.live.iter().map(|(_, _, a)| *a);
        let departed = acks.departed.iter().map(|(_, a, _)| *a);
        live.chain(departed).min()
    }

    pub(crate) fn ack_join(&self, id: u64, addr: String, offset: u64) {
        let mut acks = self.acks.lock();
        // Back (resyncing): its new sync's offset stands for it from now on.
        acks.departed.retain(|(a, _, _)| *a != addr);
        acks.live.push((id, addr, offset));
    }

    pub(crate) fn ack_update(&self, id: u64, offset: u64) {
        if let Some(r) = self.acks.lock().live.iter_mut().find(|r| r.0 == id) {
            r.2 = r.2.max(offset);
        }
    }

    pub(crate) fn ack_leave(&self, id: u64, now_ms: u64) {
        let mut acks = self.acks.lock();
        if let Some(i) = acks.live.iter().position(|r| r.0 == id) {
            let (_, addr, offset) = acks.live.swap_remove(i);
            acks.departed.push((addr, offset, now_ms));
        }
    }

    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    pub fn offset(&self) -> u64 {
        self.offset.load(Relaxed)
    }

    pub fn replid(&self) -> String {
        self.state.lock().replid.clone()
    }

    /// Record a change (call under the key's shard lock). No-op while inactive.
    #[inline]
    pub fn push_delta(&self, delta: &Delta) {
        if self.is_active() {
            self.push(|out| encode_delta(delta, out));
        }
    }

    /// Record a whole key state merged from elsewhere (call under the key's shard lock).
    pub fn push_state(&self, key: &[u8], state: &Entry) {
        if self.is_active() {
            self.push(|out| encode_state(key, state, out));
        }
    }

    /// Record that `key` left this node with its state (MIGRATE), so replicas drop their
    /// copy too (call under the key's shard lock). No-op while inactive.
    pub fn push_forget(&self, key: &[u8]) {
        if self.is_active() {
            self.push(|out| meridian_replication::replica_stream::encode_forget(key, out));
        }
    }

    /// Record that every key of `slot` left this node (the slot went to another node), so
    /// replicas drop theirs too (call under the slot's shard lock). No-op while inactive.
    pub fn push_forget_slot(&self, slot: u16) {
        if self.is_active() {
            self.push(|out| encode_frame(&ReplicaFrame::ForgetSlot { slot }, out));
        }
    }

    /// Append one frame, encoded by `encode` into a reused buffer and copied into the
    /// backlog's ring (no allocation per change).
    fn push(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<usize, meridian_replication::CodecError>,
    ) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        st.scratch.clear();
        match encode(&mut st.scratch) {
            Ok(_) => {
                let off = st.backlog.push(&st.scratch);
                self.offset.store(off, Relaxed);
            }
            Err(e) => {
                // Cannot be streamed (too large): skip an offset and forget the backlog, so
                // every replica falls back to a full sync.
                self.too_large.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "change too large for the replica stream; replicas will resync");
                let off = st.backlog.skip_offset();
                self.offset.store(off, Relaxed);
            }
        }
        if st.scratch.capacity() > SCRATCH_KEEP_BYTES {
            // One huge change does not pin its buffer for the life of the feed.
            st.scratch = Vec::new();
        }
        drop(guard);
        self.appended.notify_waiters();
    }

    pub fn set_backlog_size(&self, bytes: usize) {
        self.state.lock().backlog.set_max_size_bytes(bytes);
    }

    /// (size limit, bytes held, first offset held, frames held)
    pub fn backlog_info(&self) -> (usize, usize, u64, usize) {
        let st = self.state.lock();
        let b = &st.backlog;
        (
            b.max_size_bytes(),
            b.size_bytes(),
            b.first_offset(),
            b.len(),
        )
    }
}

/// Where a replica connects: the primary's client port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryAddr {
    pub host: String,
    pub port: u16,
}

/// This node's end of the in-region replica stream (the region cluster's own notion of a
/// node's role is `meridian_regions::topology::Role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamRole {
    Primary,
    Replica,
}

struct ReplicaSlot {
    id: u64,
    ip: String,
    port: u16,
    online: bool,
    ack_offset: u64,
    last_ack_ms: u64,
}

/// In-region replication state of this node, both roles (see the module docs).
pub struct InRegion {
    feed: Arc<ReplFeed>,
    target: watch::Sender<Option<PrimaryAddr>>,
    is_replica: AtomicBool,
    refuse_writes_when_replica: AtomicBool,
    /// `is_replica && refuse_writes_when_replica` (one load on the write path).
    readonly: AtomicBool,
    // ---- replica side ----
    link_up: AtomicBool,
    sync_in_progress: AtomicBool,
    last_io_ms: AtomicU64,
    /// The primary's replid and the offset applied from it (what a partial resync asks for).
    master_replid: Mutex<Option<String>>,
    applied_offset: AtomicU64,
    // ---- primary side ----
    replicas: Mutex<Vec<ReplicaSlot>>,
    next_replica_id: AtomicU64,
    kill_epoch: AtomicU64,
    kill: Notify,
    acked: Notify,
    pub sync_full: AtomicU64,
    pub sync_partial_ok: AtomicU64,
    pub sync_partial_err: AtomicU64,
    pub min_replicas_to_write: AtomicUsize,
    pub min_replicas_max_lag_s: AtomicU64,
    listening_port: AtomicU64,
}

impl InRegion {
    pub fn new(feed: Arc<ReplFeed>, min_to_write: usize, max_lag_s: u64) -> InRegion {
        InRegion {
            feed,
            target: watch::Sender::new(None),
            is_replica: AtomicBool::new(false),
            refuse_writes_when_replica: AtomicBool::new(true),
            readonly: AtomicBool::new(false),
            link_up: AtomicBool::new(false),
            sync_in_progress: AtomicBool::new(false),
            last_io_ms: AtomicU64::new(0),
            master_replid: Mutex::new(None),
            applied_offset: AtomicU64::new(0),
            replicas: Mutex::new(Vec::new()),
            next_replica_id: AtomicU64::new(1),
            kill_epoch: AtomicU64::new(0),
            kill: Notify::new(),
            acked: Notify::new(),
            sync_full: AtomicU64::new(0),
            sync_partial_ok: AtomicU64::new(0),
            sync_partial_err: AtomicU64::new(0),
            min_replicas_to_write: AtomicUsize::new(min_to_write),
            min_replicas_max_lag_s: AtomicU64::new(max_lag_s),
            listening_port: AtomicU64::new(0),
        }
    }

    pub fn feed(&self) -> &Arc<ReplFeed> {
        &self.feed
    }

    /// The client port this node announces to its primary (INFO's `slaveN:port=`).
    pub fn set_listening_port(&self, port: u16) {
        self.listening_port.store(u64::from(port), Relaxed);
    }

    /// Follow `primary` (become its replica), or with `None` stop following and accept
    /// writes (promotion). Returns immediately; the link task connects in the background.
    pub fn follow(&self, primary: Option<PrimaryAddr>) {
        if *self.target.borrow() == primary {
            return;
        }
        match &primary {
            Some(_) => {
                self.is_replica.store(true, Relaxed);
                self.update_readonly();
                // Our own stream ends here: a new id, no backlog, no replicas of our own.
                {
                    let mut st = self.feed.state.lock();
                    self.feed.active.store(false, Relaxed);
                    st.backlog.clear();
                    st.replid = new_replid();
                }
                self.drop_replica_links();
            }
            None => {
                self.is_replica.store(false, Relaxed);
                self.update_readonly();
                // Local writes follow: this data is no longer a prefix of the old primary's
                // stream, so never resume it partially.
                *self.master_replid.lock() = None;
                self.applied_offset.store(0, Relaxed);
            }
        }
        self.link_up.store(false, Relaxed);
        self.sync_in_progress.store(false, Relaxed);
        self.target.send_replace(primary);
    }

    pub fn following(&self) -> Option<PrimaryAddr> {
        self.target.borrow().clone()
    }

    pub fn role(&self) -> StreamRole {
        if self.is_replica.load(Relaxed) {
            StreamRole::Replica
        } else {
            StreamRole::Primary
        }
    }

    /// Primary: its last assigned offset; replica: the offset applied from its primary.
    pub fn repl_offset(&self) -> u64 {
        match self.role() {
            StreamRole::Primary => self.feed.offset(),
            StreamRole::Replica => self.applied_offset.load(Relaxed),
        }
    }

    pub fn link_up(&self) -> bool {
        self.link_up.load(Relaxed)
    }

    pub fn set_refuse_writes(&self, refuse: bool) {
        self.refuse_writes_when_replica.store(refuse, Relaxed);
        self.update_readonly();
    }

    fn update_readonly(&self) {
        self.readonly.store(
            self.is_replica.load(Relaxed) && self.refuse_writes_when_replica.load(Relaxed),
            Relaxed,
        );
    }

    /// Close every replica link (they reconnect and try a partial resync). Returns how many.
    pub fn drop_replica_links(&self) -> usize {
        let n = self.replicas.lock().len();
        self.kill_epoch.fetch_add(1, Relaxed);
        self.kill.notify_waiters();
        n
    }

    /// Why a write must be refused now, if it must (`-READONLY`, `-NOREPLICAS`).
    #[inline]
    pub fn write_refusal(&self, now_ms: u64) -> Option<Reply> {
        if self.readonly.load(Relaxed) {
            return Some(Reply::Error(Cow::Borrowed(
                "READONLY You can't write against a read only replica.",
            )));
        }
        let min = self.min_replicas_to_write.load(Relaxed);
        if min > 0 && !self.is_replica.load(Relaxed) && self.good_replicas(now_ms) < min {
            return Some(Reply::Error(Cow::Borrowed(
                "NOREPLICAS Not enough good replicas to write.",
            )));
        }
        None
    }

    /// Online replicas whose last ack is at most `min-replicas-max-lag` seconds old.
    pub fn good_replicas(&self, now_ms: u64) -> usize {
        let max_lag_ms = self.min_replicas_max_lag_s.load(Relaxed) * 1000;
        self.replicas
            .lock()
            .iter()
            .filter(|r| r.online && now_ms.saturating_sub(r.last_ack_ms) <= max_lag_ms)
            .count()
    }

    /// (ip, announced port, acked offset) of every connected replica.
    pub fn replica_list(&self) -> Vec<(String, u16, u64)> {
        self.replicas
            .lock()
            .iter()
            .map(|r| (r.ip.clone(), r.port, r.ack_offset))
            .collect()
    }

    fn count_acked(&self, offset: u64) -> usize {
        self.replicas
            .lock()
            .iter()
            .filter(|r| r.online && r.ack_offset >= offset)
            .count()
    }

    /// `WAIT`: block until `numreplicas` replicas acked `offset` or `timeout_ms` passed
    /// (0: no timeout). Woken by acks, never polls.
    pub async fn wait_for(&self, offset: u64, numreplicas: usize, timeout_ms: u64) -> usize {
        let deadline = (timeout_ms > 0)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
        loop {
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = self.count_acked(offset);
            if n >= numreplicas {
                return n;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return self.count_acked(offset);
                    }
                }
                None => notified.await,
            }
        }
    }

    fn register_replica(&self, ip: String, port: u16, offset: u64) -> u64 {
        let id = self.next_replica_id.fetch_add(1, Relaxed);
        self.feed.ack_join(id, format!("{ip}:{port}"), offset);
        self.replicas.lock().push(ReplicaSlot {
            id,
            ip,
            port,
            online: false,
            ack_offset: offset,
            last_ack_ms: now_ms(),
        });
        id
    }

    fn update_replica(&self, id: u64, f: impl FnOnce(&mut ReplicaSlot)) {
        if let Some(r) = self.replicas.lock().iter_mut().find(|r| r.id == id) {
            f(r);
            self.feed.ack_update(id, r.ack_offset);
        }
        self.acked.notify_waiters();
    }

    fn unregister_replica(&self, id: u64) {
        self.replicas.lock().retain(|r| r.id != id);
        self.feed.ack_leave(id, now_ms());
        self.acked.notify_waiters();
    }

    /// The `# Replication` section body (Redis field names).
    pub fn info(&self, now_ms: u64, o: &mut String) {
        use std::fmt::Write;
        let replicas = self.replicas.lock();
        let primary = self.following();
        match &primary {
            // `slave_read_only:1`: a replica never takes a write (standalone it answers
            // -READONLY, in a cluster it redirects with -MOVED), as Redis' default.
            Some(p) if self.role() == StreamRole::Replica => {
                let last = self.last_io_ms.load(Relaxed);
                let _ = write!(
                    o,
                    "role:slave\r\nmaster_host:{}\r\nmaster_port:{}\r\nmaster_link_status:{}\r\nmaster_last_io_seconds_ago:{}\r\nmaster_sync_in_progress:{}\r\nslave_read_repl_offset:{off}\r\nslave_repl_offset:{off}\r\nslave_priority:100\r\nslave_read_only:1\r\nreplica_announced:1\r\n",
                    p.host,
                    p.port,
                    if self.link_up() { "up" } else { "down" },
                    if last == 0 { -1 } else { (now_ms.saturating_sub(last) / 1000) as i64 },
                    u8::from(self.sync_in_progress.load(Relaxed)),
                    off = self.applied_offset.load(Relaxed),
                );
            }
            _ => o.push_str("role:master\r\n"),
        }
        let _ = write!(o, "connected_slaves:{}\r\n", replicas.len());
        for (i, r) in replicas.iter().enumerate() {
            let _ = write!(
                o,
                "slave{i}:ip={},port={},state={},offset={},lag={}\r\n",
                r.ip,
                r.port,
                if r.online { "online" } else { "wait_bgsave" },
                r.ack_offset,
                now_ms.saturating_sub(r.last_ack_ms) / 1000,
            );
        }
        drop(replicas);
        let (max, size, first, frames) = self.feed.backlog_info();
        let (replid, offset) = match self.role() {
            StreamRole::Replica => (
                self.master_replid
                    .lock()
                    .clone()
                    .unwrap_or_else(|| self.feed.replid()),
                self.applied_offset.load(Relaxed),
            ),
            StreamRole::Primary => (self.feed.replid(), self.feed.offset()),
        };
        let _ = write!(
            o,
            "master_failover_state:no-failover\r\nmaster_replid:{replid}\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:{offset}\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:{}\r\nrepl_backlog_size:{max}\r\nrepl_backlog_first_byte_offset:{first}\r\nrepl_backlog_histlen:{size}\r\nrepl_backlog_frames:{frames}\r\nmin_slaves_good_slaves:{}\r\n",
            u8::from(self.feed.is_active()),
            self.good_replicas(now_ms),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Primary side: one replica connection (protocol: `meridian_replication::replica_stream`)
// ---------------------------------------------------------------------------------------

/// Serve one replica on a client connection that sent `MERIDIAN SYNC` (never returns
/// before the link ends). `pending` holds bytes read after the command.
pub async fn serve_replica<S: ClientStream>(
    mut stream: S,
    pending: BytesMut,
    store: Arc<Store>,
    hub: Arc<InRegion>,
    req: SyncRequest,
    peer: String,
    limits: &crate::limits::ClientLimits,
) {
    if hub.role() == StreamRole::Replica {
        let _ = write_timed(
            &mut stream,
            b"-ERR this node is a replica: chained replication is not supported\r\n",
        )
        .await;
        return;
    }
    let ip = peer
        .rsplit_once(':')
        .map_or(peer.as_str(), |(h, _)| h)
        .to_string();
    // Decide under the backlog lock, so the backlog cannot move between check and start.
    let resync = {
        let st = hub.feed.state.lock();
        let resync = decide(&req, &st.replid, hub.feed.is_active(), &st.backlog);
        hub.feed.active.store(true, Relaxed);
        resync
    };
    let start = resync.offset();
    let id = hub.register_replica(ip.clone(), req.listening_port, start);
    let result = async {
        write_timed(&mut stream, &resync.line()).await?;
        if resync.is_partial() {
            hub.sync_partial_ok.fetch_add(1, Relaxed);
        } else {
            hub.sync_full.fetch_add(1, Relaxed);
            if req.replid != "?" {
                hub.sync_partial_err.fetch_add(1, Relaxed);
            }
            send_snapshot(&mut stream, &store, start).await?;
        }
        hub.update_replica(id, |r| {
            r.online = true;
            r.ack_offset = start;
            r.last_ack_ms = now_ms();
        });
        tracing::info!(replica = %format!("{ip}:{}", req.listening_port), partial = resync.is_partial(), offset = start, "replica synchronised, streaming");
        stream_changes(stream, pending, &hub, id, start, limits).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(replica = %format!("{ip}:{}", req.listening_port), error = %e, "replica link closed");
    }
    hub.unregister_replica(id);
}

/// Write all of `bytes` and flush (TLS records), within the link timeout.
async fn write_timed(w: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> Result<(), String> {
    let write = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    match tokio::time::timeout(Duration::from_millis(LINK_TIMEOUT_MS), write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write: {e}")),
        Err(_) => Err("write timed out".into()),
    }
}

/// Every entry of every slot (tombstones included), one slot under its shard's lock at a
/// time, cut into chunks by [`SnapshotWriter`]; then `SnapshotEnd { offset }`.
async fn send_snapshot(
    stream: &mut (impl AsyncWrite + Unpin),
    store: &Store,
    offset: u64,
) -> Result<(), String> {
    let mut w = SnapshotWriter::new();
    for slot in 0..meridian_crdt::SLOT_COUNT as u16 {
        {
            let shard = store.shard(shard_of(slot));
            for (k, e) in shard.ks.slot_entries(slot) {
                // A key too large for one frame fails the sync (never skipped: the replica
                // would silently miss it), counted and logged.
                w.push(k, e.into_owned()).map_err(|e| {
                    store.feed().too_large.fetch_add(1, Relaxed);
                    tracing::error!(key = %String::from_utf8_lossy(&k[..k.len().min(64)]), error = %e, "snapshot failed: a key is too large for a replica frame");
                    e.to_string()
                })?;
            }
        }
        if let Some(bytes) = w.take_ready() {
            write_timed(stream, &bytes).await?;
        }
    }
    let (rest, entries) = w.finish(offset).map_err(|e| {
        store.feed().too_large.fetch_add(1, Relaxed);
        tracing::error!(error = %e, "snapshot failed: a key is too large for a replica frame");
        e.to_string()
    })?;
    write_timed(stream, &rest).await?;
    tracing::info!(entries, offset, "snapshot sent to replica");
    Ok(())
}

/// Stream backlog frames after `start` and read acks ([`StreamSender`]), until an error or
/// a kill request.
async fn stream_changes<S: ClientStream>(
    mut stream: S,
    pending: BytesMut,
    hub: &InRegion,
    id: u64,
    start: u64,
    limits: &crate::limits::ClientLimits,
) -> Result<(), String> {
    let epoch = hub.kill_epoch.load(Relaxed);
    // `client-output-buffer-limit`'s replica class, on the stream bytes written and not yet
    // acknowledged: (offset sent, bytes written through it) per write, until acked.
    let mut unacked: std::collections::VecDeque<(u64, u64)> = Default::default();
    let (mut written, mut acked_bytes, mut soft_since) = (0u64, 0u64, 0u64);
    let mut tx = StreamSender::new(now_ms(), start);
    let mut inbuf = pending;
    let mut out: Vec<u8> = Vec::new();
    let on_ack = |offset: u64, unacked: &mut std::collections::VecDeque<(u64, u64)>| {
        hub.update_replica(id, |r| {
            r.ack_offset = r.ack_offset.max(offset);
            r.last_ack_ms = now_ms();
        });
        let mut acked_bytes = None;
        while unacked.front().is_some_and(|&(o, _)| o <= offset) {
            acked_bytes = unacked.pop_front().map(|(_, b)| b);
        }
        acked_bytes
    };
    loop {
        if !inbuf.is_empty() {
            if let Some(acked) = tx
                .handle_bytes(now_ms(), &inbuf)
                .map_err(|e| e.to_string())?
            {
                if let Some(b) = on_ack(acked, &mut unacked) {
                    acked_bytes = b;
                }
            }
            inbuf.clear();
        }
        let limit = limits.output(crate::limits::OutputClass::Replica);
        if limit.exceeded(
            written.saturating_sub(acked_bytes),
            &mut soft_since,
            now_ms(),
        ) {
            limits.output_buffer_disconnections.fetch_add(1, Relaxed);
            return Err(format!(
                "over client-output-buffer-limit (replica class): {} bytes unacknowledged",
                written.saturating_sub(acked_bytes)
            ));
        }
        let appended = hub.feed.appended.notified();
        let killed = hub.kill.notified();
        tokio::pin!(appended, killed);
        appended.as_mut().enable();
        killed.as_mut().enable();
        if hub.kill_epoch.load(Relaxed) != epoch || hub.role() == StreamRole::Replica {
            return Err("replica links dropped on request".to_string());
        }
        let now = now_ms();
        out.clear();
        {
            let st = hub.feed.state.lock();
            tx.poll_transmit(now, &st.backlog, &mut out)
                .map_err(|e| e.to_string())?;
        }
        if !out.is_empty() {
            write_timed(&mut stream, &out).await?;
            written += out.len() as u64;
            unacked.push_back((tx.sent(), written));
            // Acks that arrived meanwhile (a long burst must not look like silence).
            inbuf.reserve(READ_CHUNK_BYTES);
            match read_ready(&mut stream, &mut inbuf).await {
                Some(Ok(0)) => return Err("replica closed the connection".into()),
                Some(Ok(_)) | None => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
            }
            continue;
        }
        tx.handle_timeout(now).map_err(|e| e.to_string())?;
        let wake = Duration::from_millis(tx.poll_timeout().saturating_sub(now).max(1));
        inbuf.reserve(READ_CHUNK_BYTES);
        tokio::select! {
            r = stream.read_buf(&mut inbuf) => match r {
                Ok(0) => return Err("replica closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            },
            _ = appended => {}
            _ = killed => {}
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// What `stream` has ready to read, without waiting (`None`: nothing yet): a plain
/// socket's `try_read_buf`, for any stream (TLS decrypts what arrived).
async fn read_ready(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> Option<std::io::Result<usize>> {
    use std::future::Future;
    use std::task::Poll;
    // `read_buf` is cancel safe: dropped while pending, it read nothing.
    let mut read = std::pin::pin!(stream.read_buf(buf));
    std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Replica side: the link task
// ---------------------------------------------------------------------------------------

/// Follows whatever [`InRegion::follow`] set, forever (spawn once on the main runtime).
/// `tls`: the connector of `tls-replication yes` (None: plain TCP).
pub async fn run_replica_link(
    store: Arc<Store>,
    hub: Arc<InRegion>,
    acl: Arc<crate::acl::Acl>,
    tls: Option<Arc<rustls::ClientConfig>>,
) {
    let mut rx = hub.target.subscribe();
    loop {
        let target = rx.borrow_and_update().clone();
        let Some(target) = target else {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut backoff_ms = RECONNECT_MIN_MS;
        loop {
            let started = now_ms();
            tokio::select! {
                r = run_link(&store, &hub, &target, &acl, tls.as_ref()) => {
                    hub.link_up.store(false, Relaxed);
                    hub.sync_in_progress.store(false, Relaxed);
                    if let Err(e) = r {
                        tracing::warn!(primary = %format!("{}:{}", target.host, target.port), error = %e, "link to primary down");
                    }
                }
                _ = rx.changed() => break,
            }
            if now_ms().saturating_sub(started) > 5_000 {
                backoff_ms = RECONNECT_MIN_MS;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                _ = rx.changed() => break,
            }
            backoff_ms = (backoff_ms * 2).min(RECONNECT_MAX_MS);
        }
        hub.link_up.store(false, Relaxed);
        hub.sync_in_progress.store(false, Relaxed);
    }
}

async fn run_link(
    store: &Store,
    hub: &InRegion,
    target: &PrimaryAddr,
    acl: &crate::acl::Acl,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    let addr = format!("{}:{}", target.host, target.port);
    let stream = match tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect {addr}: {e}")),
        Err(_) => return Err(format!("connect {addr}: timed out")),
    };
    if crate::cluster::is_self_connection(&stream) {
        // Dropped at once: it would hold the port the primary needs when it restarts.
        return Err(format!(
            "connect {addr}: connected to itself (primary down)"
        ));
    }
    let _ = stream.set_nodelay(true);
    match tls {
        Some(config) => {
            let stream = crate::tls::connect(config, &target.host, stream)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            follow(store, hub, acl, &addr, stream).await
        }
        None => follow(store, hub, acl, &addr, stream).await,
    }
}

/// The replica's end of the link, once connected: AUTH, `MERIDIAN SYNC`, then apply what
/// the primary sends and ack it.
async fn follow<S: ClientStream>(
    store: &Store,
    hub: &InRegion,
    acl: &crate::acl::Acl,
    addr: &str,
    mut stream: S,
) -> Result<(), String> {
    if let Some((user, pass)) = acl.master_credentials() {
        authenticate(&mut stream, user.as_deref(), &pass).await?;
    }
    let position = hub
        .master_replid
        .lock()
        .clone()
        .map(|id| (id, hub.applied_offset.load(Relaxed)));
    let port = hub.listening_port.load(Relaxed) as u16;
    let mut rx = StreamReceiver::new(now_ms(), position, port, PREFETCH_AHEAD);
    write_timed(&mut stream, &rx.request()).await?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut ack_buf = Vec::new();
    loop {
        while let Some(ev) = rx.poll_event().map_err(|e| e.to_string())? {
            // Frames decoded ahead of this one: their keys are prefetched while it applies
            // (as a client connection does for pipelined requests).
            store.prefetch_ahead(
                &mut Held::new(false),
                rx.ahead().map(|next| match next {
                    ReplicaFrame::Delta(d) => Some((d.slot, &d.key[..], None)),
                    ReplicaFrame::State { key, .. } => {
                        Some((meridian_crdt::key_slot(key), &key[..], None))
                    }
                    _ => None,
                }),
            );
            apply_event(store, hub, addr, ev);
        }
        hub.applied_offset.store(rx.applied(), Relaxed);
        ack_buf.clear();
        if rx
            .poll_transmit(now_ms(), &mut ack_buf)
            .map_err(|e| e.to_string())?
        {
            write_timed(&mut stream, &ack_buf).await?;
        }
        let now = now_ms();
        rx.handle_timeout(now).map_err(|e| e.to_string())?;
        let wake = Duration::from_millis(rx.poll_timeout().saturating_sub(now).max(1));
        buf.clear();
        buf.reserve(READ_CHUNK_BYTES);
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => return Err("primary closed the connection".into()),
                Ok(_) => {
                    let now = now_ms();
                    hub.last_io_ms.store(now, Relaxed);
                    rx.handle_bytes(now, &buf);
                }
                Err(e) => return Err(format!("read: {e}")),
            },
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// The replica's AUTH to its primary (`masteruser`/`masterauth`, as Redis' replicas): one
/// command, one line of reply, before `MERIDIAN SYNC` (nothing else is in flight, so no
/// byte of the stream can be read here).
async fn authenticate(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    user: Option<&str>,
    pass: &str,
) -> Result<(), String> {
    let mut req = BytesMut::new();
    match user {
        Some(u) => {
            crate::frame::encode_command(&[&b"AUTH"[..], u.as_bytes(), pass.as_bytes()], &mut req)
        }
        None => crate::frame::encode_command(&[&b"AUTH"[..], pass.as_bytes()], &mut req),
    }
    write_timed(stream, &req).await?;
    let mut line = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if line.len() >= MAX_AUTH_REPLY_BYTES {
                return Err("primary's AUTH reply too long".to_string());
            }
            match stream.read(&mut byte).await {
                Ok(0) => return Err("primary closed the connection during AUTH".to_string()),
                Ok(_) => line.push(byte[0]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_millis(LINK_TIMEOUT_MS), read)
        .await
        .map_err(|_| "primary did not answer AUTH".to_string())??;
    if line.starts_with(b"+OK") {
        Ok(())
    } else {
        Err(format!(
            "primary refused AUTH (check masteruser/masterauth): {}",
            String::from_utf8_lossy(line.trim_ascii_end())
        ))
    }
}

/// Longest AUTH reply line the replica reads (Redis' errors are far shorter).
const MAX_AUTH_REPLY_BYTES: usize = 1024;

/// Apply what the receiver says, under one shard lock at a time.
fn apply_event(store: &Store, hub: &InRegion, addr: &str, ev: ReceiverEvent) {
    match ev {
        ReceiverEvent::FullResync { offset, .. } => {
            hub.link_up.store(true, Relaxed);
            hub.sync_in_progress.store(true, Relaxed);
            // Forget the old position first: a link lost mid-snapshot must not resume.
            *hub.master_replid.lock() = None;
            store.drop_all_slots();
            tracing::info!(%addr, offset, "full resync from primary");
        }
        ReceiverEvent::Continue { offset } => {
            hub.link_up.store(true, Relaxed);
            tracing::info!(%addr, offset, "partial resync from primary");
        }
        ReceiverEvent::SnapshotDone { replid, offset } => {
            // It now holds its primary's whole state and follows its stream, which carries
            // only changes the primary took: the start's lossy marks (a node with peers)
            // must not make it drop a partial delta for a key its primary built (losses
            // since, e.g. its own expiry, stay).
            store.clear_start_losses();
            *hub.master_replid.lock() = Some(replid);
            hub.applied_offset.store(offset, Relaxed);
            hub.sync_in_progress.store(false, Relaxed);
            tracing::info!(%addr, offset, "full resync complete");
        }
        ReceiverEvent::Apply(frame) => match frame {
            ReplicaFrame::Entries(entries) => {
                for ks in &entries {
                    apply_state(store, &ks.key, &ks.state);
                }
            }
            ReplicaFrame::Delta(d) => {
                // A replica mirrors its primary: what the primary applied, it applies, even
                // in a slot its own expiry made lossy (it has no anti-entropy to wait for),
                // so a delta merges as a state.
                let mut s = store.shard(shard_of(d.slot));
                store.merge_remote(&mut s, Remote::State(&d.key, &d.state));
            }
            ReplicaFrame::State { key, state } => apply_state(store, &key, &state),
            ReplicaFrame::Forget { key } => {
                let mut s = store.shard(crate::store::key_shard(&key));
                if s.ks.take_key(&key).is_some() {
                    s.touch_key(&key);
                }
            }
            ReplicaFrame::ForgetSlot { slot } => {
                let mut s = store.shard(shard_of(slot));
                if s.ks.drop_slot(slot) > 0 {
                    s.touch_all_watched();
                }
            }
            // The receiver hands out nothing else.
            ReplicaFrame::SnapshotEnd { .. } | ReplicaFrame::Ping | ReplicaFrame::Ack { .. } => {}
        },
    }
}

/// Merge a whole key state (snapshot entry or streamed state) under the key's shard lock.
fn apply_state(store: &Store, key: &Bytes, state: &Entry) {
    let mut s = store.shard(crate::store::key_shard(key));
    store.merge_remote(&mut s, Remote::State(key, state));
}
