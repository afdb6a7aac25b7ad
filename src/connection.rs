//! One client connection: read bytes, decode every complete request in the buffer, execute
//! them in order, write all replies with one write (pipelining), and act on each command's
//! `Outcome` (close, WAIT, a replica stream takeover, a write pause).
//!
//! In detail: read → parse the complete requests (up to 7 ahead of the one running; none
//! past a CONFIG or MERIDIAN request until it has run: new limits, or a connection turned
//! replica stream) → execute in order → yield once (every ready connection runs first, like
//! Redis' `beforeSleep`; `YieldOnce` requeues the task at once, not past an I/O-driver poll
//! as `tokio::task::yield_now` does) → one write; while a request runs, the keyspace
//! lookups of the ones parsed ahead are prefetched in stages (`Store::prefetch_ahead`: slot
//! table six ahead, node four ahead, value two ahead — or, for a set or hash command
//! (`cmd::ELEMENT`), the member's or field's bucket, found by a probe that prefetches
//! candidate buckets instead of comparing them (hashbrown's raw entry), so even a hot key's
//! 100 k-field hash does not stall; each stage reads what the previous fetched, so a
//! pipeline's cache misses overlap; before the first request of a batch runs,
//! `Store::prefetch_ramp` issues the stages the first six would otherwise have missed:
//! their tables together, then the nodes of the first four, then the value of the second);
//! shard locks pass from one pipelined command to the next (`store::Held`, never across an
//! await: with one client thread a batch keeps every shard it touched, including through
//! the prefetch hints, so its commands and hints take no lock of their own; with several it
//! keeps one; a guard is only ever added with `try_lock`, and a thread that must wait
//! releases all first, so nobody waits while holding one; a handler that locks a shard on
//! demand takes it from the held guards first, `Ctx::held`); MULTI/EXEC/WATCH live in `transaction.rs`.

use crate::cluster::Refusal;
use crate::cmd::{self, ConnState, Ctx, Locks, Outcome, Spec};
use crate::frame::{encode, parse_request_resume, Limits, ParseError, Partial, Reply};
use crate::limits::{OutputClass, OutputLimit};
use crate::pubsub::Mailbox;
use crate::shared::Shared;
use crate::store::{shard_of, Hint, Store, PREFETCH_AHEAD};
use crate::tls::{send, ClientStream};
use crate::transaction::{self, unwatch_all};
use crate::util::now_ms;
use bytes::{Bytes, BytesMut};
use meridian_crdt::key_slot;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Flush replies early when a huge pipeline produced this much output.
const MAX_PENDING_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
/// How often a write paused by a manual failover looks again (the pause lasts until the
/// replica took over, milliseconds usually).
const PAUSE_RECHECK: std::time::Duration = std::time::Duration::from_millis(2);
/// How long a closing TLS connection may take to send its close_notify.
const CLOSE_NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Serve one client, over plain TCP or TLS (`S`; each its own monomorphized loop), until
/// it leaves, errs, or becomes a replica stream.
pub async fn serve<S: ClientStream>(
    stream: S,
    store: Arc<Store>,
    shared: Arc<Shared>,
    conn: ConnState,
) {
    // However this task ends (a panic included), its WATCH registrations are released.
    let mut conn = Watching {
        store: store.clone(),
        conn,
    };
    serve_client(stream, &store, &shared, &mut conn).await;
}

/// A connection's state, its WATCH registrations released when dropped: on the normal end
/// of the connection and on a panic in its task alike, so no shard keeps watchers of a
/// client that is gone.
struct Watching {
    store: Arc<Store>,
    conn: ConnState,
}

impl std::ops::Deref for Watching {
    type Target = ConnState;
    fn deref(&self) -> &ConnState {
        &self.conn
    }
}

impl std::ops::DerefMut for Watching {
    fn deref_mut(&mut self) -> &mut ConnState {
        &mut self.conn
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        unwatch_all(&self.store, &mut self.conn);
        // A panic mid-batch must not leave this thread deferring the replication wake-up.
        self.store.flush_replication_wake();
    }
}

async fn serve_client<S: ClientStream>(
    mut stream: S,
    store: &Arc<Store>,
    shared: &Arc<Shared>,
    conn: &mut ConnState,
) {
    let (store, shared) = (store.clone(), shared.clone());
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut out = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut p = Pipeline {
        ahead: VecDeque::with_capacity(LOOKAHEAD),
        spare: Vec::new(),
        ahead_bytes: 0,
        exhausted: false,
        tail: None,
        partial: Partial::default(),
    };
    'conn: loop {
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            // A bulk on its way: room for it at once (doubling, so an announced size that
            // never comes costs no more than what arrived).
            let want = p.partial.need().saturating_sub(buf.len());
            buf.reserve(
                want.min(buf.len().max(READ_CHUNK_BYTES))
                    .max(READ_CHUNK_BYTES),
            );
        }
        let timeout_secs = shared.limits.timeout_secs.load(Relaxed);
        let read = if let Some(mb) = conn.subs.as_ref().map(|s| s.mailbox.clone()) {
            // A subscriber: its pushes or its next request, whichever comes first (no idle
            // timeout, as Redis).
            match read_or_push(&mut stream, &mut buf, &mb).await {
                Some(r) => r,
                None => {
                    if deliver_pushes(&mut stream, &mb, &mut out, &shared, conn)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
            }
        } else if timeout_secs == 0 {
            stream.read_buf(&mut buf).await
        } else {
            // `timeout`: an idle client is closed (a client waiting in WAIT is not idle: it
            // waits below, not here; a replica stream left this loop).
            let idle = std::time::Duration::from_secs(timeout_secs);
            match tokio::time::timeout(idle, stream.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    shared.limits.idle_disconnections.fetch_add(1, Relaxed);
                    tracing::debug!(client = conn.id, "closing idle client (timeout)");
                    break;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut limits = Limits {
            max_bulk_len: store.runtime.proto_max_bulk_len.load(Relaxed),
            max_multibulk_len: shared.config.max_multibulk_len,
            max_inline_len: shared.config.max_inline_len,
            unauthenticated: !conn.session.authenticated,
        };
        let mut now = now_ms();
        // Replies are flushed early past this (or the normal class' hard limit, checked then).
        let out_limit = shared.limits.output(OutputClass::Normal);
        let flush_at = match out_limit.hard {
            0 => MAX_PENDING_OUTPUT_BYTES,
            hard => MAX_PENDING_OUTPUT_BYTES.min(usize::try_from(hard).unwrap_or(usize::MAX)),
        };
        // The replication task's wake-up waits until the replies are written (flushed
        // before every await below that can wait on the client or on others).
        store.defer_replication_wake();
        // The shard lock the previous command of this batch left held (see `Held`).
        // Released before every await below: other tasks of this thread lock shards too.
        let mut held = Held::new(shared.io_threads.load(Relaxed) == 1);
        // Requests parsed ahead of the one running (see `Ahead`), from a fresh read.
        p.ahead_bytes = 0;
        p.exhausted = false;
        p.tail = None;
        let mut batch_start = true;
        loop {
            p.parse_ahead(&mut buf, &limits);
            let Some(next) = p.ahead.pop_front() else {
                let Some(e) = p.tail.take() else { break };
                before_await(&mut held, &store);
                close_on_protocol_error(&mut stream, &mut out, &store, conn, e).await;
                break 'conn;
            };
            p.ahead_bytes -= next.len;
            let barrier = next.barrier;
            // The arguments are slices of the request's bytes: a handler shares one as
            // `Bytes` (a reference count on `frame`) only when a delta carries it.
            let frame = buf.split_to(next.len).freeze();
            let args: Args<'_> = next.ranges.iter().map(|r| &frame[r.clone()]).collect();
            p.spare.push(next.ranges);
            if args.is_empty() {
                continue;
            }
            let current = next.key.clone().map(|(_, r)| &frame[r]);
            // A lone request (`-P 1`) looks its key up at once: a ramp would only repeat that.
            if std::mem::take(&mut batch_start) && !p.ahead.is_empty() {
                let element = next.element.clone().map(|r| &frame[r]);
                let first = current
                    .zip(next.key.as_ref())
                    .map(|(k, (slot, _))| (*slot, k, element));
                store.prefetch_ramp(
                    &mut held,
                    std::iter::once(first).chain(ahead_keys(&buf, &p.ahead, current)),
                );
            }
            store.prefetch_ahead(&mut held, ahead_keys(&buf, &p.ahead, current));
            let request = Request {
                frame: &frame,
                args: &args,
                spec: next.spec,
                first_slot: next.key.map(|(slot, _)| slot),
            };
            let outcome = request.execute(&store, &shared, conn, now, &mut held);
            let outcome = match outcome {
                Outcome::Pause => {
                    let waited = request.run_through_pause(
                        &mut stream,
                        &mut out,
                        &store,
                        &shared,
                        conn,
                        &mut now,
                        &mut held,
                    );
                    match waited.await {
                        Some(outcome) => outcome,
                        None => break 'conn,
                    }
                }
                outcome => outcome,
            };
            if barrier {
                // Parse on, with the limits as they are now.
                limits.max_bulk_len = store.runtime.proto_max_bulk_len.load(Relaxed);
                limits.unauthenticated = !conn.session.authenticated;
                p.exhausted = false;
            }
            if let Some(s) = &conn.subs {
                // Pushes queued so far go before this command's reply (as Redis' buffer).
                s.mailbox.drain_into(&mut out);
            }
            let reply = match outcome {
                Outcome::Reply(r) => r,
                Outcome::Pushed => continue,
                Outcome::Takeover(req) => {
                    before_await(&mut held, &store);
                    take_over(stream, &out, buf.split(), &store, &shared, conn, req).await;
                    return;
                }
                Outcome::Wait {
                    replicas,
                    timeout_ms,
                } => {
                    before_await(&mut held, &store);
                    let waited =
                        wait_replicas(&mut stream, &mut out, &shared, conn, replicas, timeout_ms);
                    match waited.await {
                        Some(reply) => reply,
                        None => break 'conn,
                    }
                }
                Outcome::Close(r) => {
                    encode(&r, conn.resp3, &mut out);
                    before_await(&mut held, &store);
                    let _ = send(&mut stream, &out).await;
                    break 'conn;
                }
                Outcome::Block {
                    keys,
                    timeout_ms,
                    timeout_reply,
                } => {
                    before_await(&mut held, &store);
                    let blocked = request.run_blocked(
                        &mut stream,
                        &mut out,
                        &mut buf,
                        &store,
                        &shared,
                        conn,
                        &mut held,
                        Wait {
                            keys,
                            timeout_ms,
                            timeout_reply,
                        },
                    );
                    let reply = match blocked.await {
                        Some(reply) => reply,
                        None => break 'conn,
                    };
                    // What the client sent meanwhile is in `buf`: parse on.
                    p.exhausted = false;
                    reply
                }
                // Waited out above.
                Outcome::Pause => Reply::Null,
            };
            if let Some(e) = crate::cmdstats::error_text(&reply) {
                shared.cmdstats.error_reply(e);
            }
            encode(&reply, conn.resp3, &mut out);
            if out.len() >= flush_at {
                before_await(&mut held, &store);
                let flushed = flush_limited(&mut stream, &out, out_limit, &shared, conn).await;
                if flushed.is_err() || (S::BUFFERED && stream.flush().await.is_err()) {
                    break 'conn;
                }
                out.clear();
            }
        }
        debug_assert!(p.ahead.is_empty() && p.ahead_bytes == 0);
        drop(held);
        if end_batch(&mut stream, &mut out, &store, &shared, conn)
            .await
            .is_err()
        {
            break;
        }
        if let Some(s) = &conn.subs {
            s.mailbox.sent();
            if s.mailbox.closed() {
                pubsub_limit_reached(&shared, conn);
                break;
            }
        }
        // What is left is the start of a request still arriving: within
        // `client-query-buffer-limit`, including what its headers announce.
        let unparsed = buf.len().max(p.partial.need()) as u64;
        if unparsed > shared.limits.query_buffer.load(Relaxed) {
            shared
                .limits
                .query_buffer_disconnections
                .fetch_add(1, Relaxed);
            let head = &buf[..buf.len().min(64)];
            tracing::warn!(
                client = conn.id,
                addr = %conn.addr,
                qbuf = buf.len(),
                announced = p.partial.need(),
                "Closing client that reached max query buffer length (qbuf initial bytes: {:?})",
                String::from_utf8_lossy(head)
            );
            break;
        }
        if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK_BYTES {
            buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        }
    }
    store.flush_replication_wake();
    if S::BUFFERED {
        // TLS: a close_notify before the socket closes (best effort, bounded).
        let _ = tokio::time::timeout(CLOSE_NOTIFY_TIMEOUT, stream.shutdown()).await;
    }
}

/// One request about to run: its bytes, its arguments (slices of them), its command and,
/// when found at parse time, its first key's slot.
struct Request<'r> {
    frame: &'r Bytes,
    args: &'r [&'r [u8]],
    spec: Option<&'static Spec>,
    first_slot: Option<u16>,
}

impl Request<'_> {
    fn execute<'s>(
        &self,
        store: &'s Store,
        shared: &'s Shared,
        conn: &mut ConnState,
        now: u64,
        held: &mut Held<'s>,
    ) -> Outcome {
        let Request {
            frame,
            args,
            spec,
            first_slot,
        } = *self;
        execute_parsed(
            store, shared, conn, frame, args, spec, first_slot, now, held,
        )
    }

    /// A write during a manual failover's pause: earlier replies go out, then it waits and
    /// is routed again (runs here if the failover is abandoned, or gets MOVED to the
    /// promoted replica), like Redis' client pause. The pause is bounded by its deadline
    /// (`Shared::write_pause_began`). Likewise a write in the restart window (counted once
    /// per command). The outcome once it ran; `None` if the client is gone.
    #[allow(clippy::too_many_arguments)]
    async fn run_through_pause<'s, S: ClientStream>(
        &self,
        stream: &mut S,
        out: &mut BytesMut,
        store: &'s Store,
        shared: &'s Shared,
        conn: &mut ConnState,
        now: &mut u64,
        held: &mut Held<'s>,
    ) -> Option<Outcome> {
        let mut counted = false;
        let mut outcome = Outcome::Pause;
        while matches!(outcome, Outcome::Pause) {
            if !counted && shared.restart_holds_writes(*now) {
                counted = true;
                if let Some(r) = &shared.repl {
                    r.restart_writes_held.fetch_add(1, Relaxed);
                }
            }
            before_await(held, store);
            if !out.is_empty() {
                if send(stream, out).await.is_err() {
                    return None;
                }
                out.clear();
            }
            loop {
                tokio::time::sleep(PAUSE_RECHECK).await;
                *now = now_ms();
                if !shared.write_pause_began(*now) {
                    break;
                }
            }
            outcome = self.execute(store, shared, conn, *now, held);
        }
        Some(outcome)
    }
}

/// What a blocked command waits for (`Outcome::Block`).
struct Wait {
    keys: Vec<Bytes>,
    timeout_ms: u64,
    timeout_reply: Reply,
}

/// Read ahead from a blocked client only up to this much (a client that sends more waits
/// with it unread, as it would behind a full socket).
const BLOCKED_READ_MAX: usize = 1 << 20;

/// A blocked client's place in its keys' waiter queues, given up however the wait ends
/// (served, timed out, disconnected, the task dropped).
struct Blocked<'s> {
    store: &'s Store,
    keys: Vec<Bytes>,
    id: u64,
    /// First in line on one of the keys when queued.
    first: bool,
}

impl<'s> Blocked<'s> {
    /// Queue `waiter` on every key, one shard lock at a time (the caller holds none).
    fn register(store: &'s Store, keys: Vec<Bytes>, waiter: &Arc<crate::store::Waiter>) -> Self {
        let mut first = false;
        for k in &keys {
            first |= store.shard(crate::store::key_shard(k)).block_on(k, waiter);
        }
        store.stats.blocked_clients.fetch_add(1, Relaxed);
        store.stats.waiters.lock().insert(waiter.id, waiter.clone());
        Blocked {
            store,
            keys,
            id: waiter.id,
            first,
        }
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        for k in &self.keys {
            self.store
                .shard(crate::store::key_shard(k))
                .unblock(k, self.id);
        }
        self.store.stats.blocked_clients.fetch_sub(1, Relaxed);
        self.store.stats.waiters.lock().remove(&self.id);
    }
}

impl Request<'_> {
    /// A blocking command that found nothing: earlier replies go out, the client queues on
    /// the keys and runs the command again each time the first key's change wakes it, until
    /// it is served (its reply), the timeout passes (`timeout_reply`), or the client leaves
    /// (`None`). Bytes the client sends meanwhile are read into `buf` (so a disconnect is
    /// seen) and run after.
    #[allow(clippy::too_many_arguments)]
    async fn run_blocked<'s, S: ClientStream>(
        &self,
        stream: &mut S,
        out: &mut BytesMut,
        buf: &mut BytesMut,
        store: &'s Store,
        shared: &'s Shared,
        conn: &mut ConnState,
        held: &mut Held<'s>,
        wait: Wait,
    ) -> Option<Reply> {
        if !out.is_empty() {
            send(stream, out).await.ok()?;
            out.clear();
        }
        let deadline = (wait.timeout_ms > 0).then(|| {
            tokio::time::Instant::now() + std::time::Duration::from_millis(wait.timeout_ms)
        });
        let waiter = Arc::new(crate::store::Waiter {
            id: conn.id,
            notify: tokio::sync::Notify::new(),
            unblock: std::sync::atomic::AtomicU8::new(0),
        });
        let queued = Blocked::register(store, wait.keys, &waiter);
        // First in line on a key: run again at once (a push since the command ran woke no
        // one). Behind others: what arrives is theirs first; each leaves waking the next.
        let mut run = queued.first;
        loop {
            match waiter.unblock.load(Relaxed) {
                0 => {}
                crate::store::UNBLOCK_ERROR => {
                    drop(queued);
                    return Some(Reply::Error(Cow::Borrowed(
                        "UNBLOCKED client unblocked via CLIENT UNBLOCK",
                    )));
                }
                _ => {
                    drop(queued);
                    return Some(wait.timeout_reply);
                }
            }
            if run {
                // Run again once queued: a change after this run wakes this client.
                let outcome = self.execute(store, shared, conn, now_ms(), held);
                // Counted once, when it first ran.
                conn.pending_commands = conn.pending_commands.saturating_sub(1);
                before_await(held, store);
                match outcome {
                    Outcome::Block { .. } => {}
                    Outcome::Pause => {
                        tokio::time::sleep(PAUSE_RECHECK).await;
                        continue;
                    }
                    Outcome::Reply(r) => {
                        drop(queued);
                        return Some(r);
                    }
                    other => {
                        drop(queued);
                        return Some(other.into_reply());
                    }
                }
            }
            // Only a wake-up runs the command again (bytes from the client do not: a
            // client behind others in line must not take what is theirs).
            run = match wait_for(&waiter, deadline, stream, buf).await? {
                Woke::Notified => true,
                Woke::Read => false,
                Woke::Deadline => {
                    drop(queued);
                    return Some(wait.timeout_reply);
                }
            };
        }
    }
}

/// What ended a blocked client's wait ([`wait_for`]).
enum Woke {
    Notified,
    /// The client sent bytes (kept in its buffer for after the blocking command).
    Read,
    Deadline,
}

/// Wait for a wake-up, the deadline, bytes from the client (read into `buf`), or the
/// client to leave (`None`).
async fn wait_for<S: ClientStream>(
    waiter: &crate::store::Waiter,
    deadline: Option<tokio::time::Instant>,
    stream: &mut S,
    buf: &mut BytesMut,
) -> Option<Woke> {
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = waiter.notify.notified() => Some(Woke::Notified),
        _ = timeout => Some(Woke::Deadline),
        r = stream.read_buf(buf), if buf.len() < BLOCKED_READ_MAX => {
            if matches!(r, Ok(0) | Err(_)) {
                None
            } else {
                Some(Woke::Read)
            }
        }
    }
}

/// The requests of a read parsed ahead of the one running (see [`Ahead`]), and the
/// parser's state between them.
struct Pipeline {
    ahead: VecDeque<Ahead>,
    /// Argument vectors of requests that ran, reused.
    spare: Vec<Vec<Range<usize>>>,
    /// The bytes of the read buffer the requests in `ahead` take (they start it).
    ahead_bytes: usize,
    /// Nothing more is parsed until a barrier ran (or the next read).
    exhausted: bool,
    /// The protocol error after the complete requests, if any.
    tail: Option<ParseError>,
    /// The parser's progress on the incomplete request the buffer ends with (it starts at
    /// `ahead_bytes` when parsed: only the last request can be incomplete, and nothing is
    /// parsed after it before the next read).
    partial: Partial,
}

impl Pipeline {
    /// Parse up to [`LOOKAHEAD`] requests ahead, none past a barrier or a protocol error.
    fn parse_ahead(&mut self, buf: &mut [u8], limits: &Limits) {
        let Pipeline {
            ahead,
            spare,
            ahead_bytes,
            exhausted,
            tail,
            partial,
        } = self;
        while ahead.len() < LOOKAHEAD && !*exhausted {
            let mut ranges = spare.pop().unwrap_or_default();
            match parse_request_resume(&mut buf[*ahead_bytes..], limits, &mut ranges, partial) {
                Ok(n) => {
                    let frame = &buf[*ahead_bytes..*ahead_bytes + n];
                    let spec = ranges.first().and_then(|r| cmd::lookup(&frame[r.clone()]));
                    let key = spec.and_then(|spec| first_key(spec, frame, &ranges));
                    let element = spec
                        .filter(|s| s.flags & cmd::ELEMENT != 0)
                        .and_then(|s| ranges.get(s.first_key as usize + 1))
                        .cloned();
                    // Nothing after a barrier is parsed before it has run. Before the
                    // client authenticated every request is one: an AUTH lifts the
                    // pre-auth bounds for the very next request (as in Redis).
                    let barrier = spec.is_some_and(|spec| BARRIERS.contains(&spec.name))
                        || limits.unauthenticated;
                    *exhausted = barrier;
                    *ahead_bytes += n;
                    ahead.push_back(Ahead {
                        len: n,
                        ranges,
                        spec,
                        key,
                        element,
                        barrier,
                    });
                }
                Err(e) => {
                    spare.push(ranges);
                    *exhausted = true;
                    if !matches!(e, ParseError::Incomplete) {
                        *tail = Some(e);
                    }
                }
            }
        }
    }
}

/// MERIDIAN SYNC: after the replies before it, this connection carries a replica stream
/// (the requests parsed after it, in `rest`, go with it).
async fn take_over<S: ClientStream>(
    mut stream: S,
    out: &[u8],
    rest: BytesMut,
    store: &Arc<Store>,
    shared: &Shared,
    conn: &mut ConnState,
    req: meridian_replication::replica_stream::SyncRequest,
) {
    if out.is_empty() || send(&mut stream, out).await.is_ok() {
        let (hub, peer) = (shared.inregion.clone(), conn.addr.clone());
        let limits = &shared.limits;
        crate::replica_stream::serve_replica(stream, rest, store.clone(), hub, req, peer, limits)
            .await;
    }
    unwatch_all(store, conn);
}

/// A request the parser refused: count it, answer the error after the replies before it
/// (as Redis does, when it has one) and let the caller close the connection.
async fn close_on_protocol_error<S: ClientStream>(
    stream: &mut S,
    out: &mut BytesMut,
    store: &Store,
    conn: &ConnState,
    e: ParseError,
) {
    store.stats.protocol_errors.fetch_add(1, Relaxed);
    tracing::debug!(client = conn.id, error = %e, "protocol error, closing");
    if let Some(r) = e.to_reply() {
        encode(&r, conn.resp3, out);
    }
    let _ = send(stream, out).await;
}

/// WAIT: blocks this connection only; earlier replies go out first. The number of
/// replicas that acknowledged this connection's last write; `None` if the client is gone.
async fn wait_replicas<S: ClientStream>(
    stream: &mut S,
    out: &mut BytesMut,
    shared: &Shared,
    conn: &ConnState,
    replicas: usize,
    timeout_ms: u64,
) -> Option<Reply> {
    if !out.is_empty() {
        send(stream, out).await.ok()?;
        out.clear();
    }
    let acked = shared
        .inregion
        .wait_for(conn.write_offset, replicas, timeout_ms)
        .await;
    Some(Reply::Int(acked as i64))
}

/// After the last request of a read ran: count its commands and write its replies.
async fn end_batch<S: ClientStream>(
    stream: &mut S,
    out: &mut BytesMut,
    store: &Store,
    shared: &Shared,
    conn: &mut ConnState,
) -> std::io::Result<()> {
    store
        .stats
        .commands
        .fetch_add(std::mem::take(&mut conn.pending_commands), Relaxed);
    if out.is_empty() {
        store.flush_replication_wake();
        return Ok(());
    }
    // Like Redis' event loop (read every ready client, then write every reply): let the
    // other ready connections run their commands first, so the replies leave in one burst
    // and a waiting client is woken once per burst, not once per connection with our
    // processing in between.
    YieldOnce(false).await;
    write_replies(stream, out, store, shared, conn).await?;
    out.clear();
    Ok(())
}

/// A subscriber's next read, or `None` when pushes are waiting (or its mailbox closed).
/// Requests come first, so a steady stream of messages cannot starve the client's own
/// commands (they drain the mailbox too). `read_buf` is cancel-safe: a read cut short
/// loses nothing.
async fn read_or_push<S: ClientStream>(
    stream: &mut S,
    buf: &mut BytesMut,
    mailbox: &Mailbox,
) -> Option<std::io::Result<usize>> {
    tokio::select! {
        biased;
        r = stream.read_buf(buf) => Some(r),
        _ = mailbox.wait() => None,
    }
}

/// Write a subscriber's queued pushes under `client-output-buffer-limit pubsub`; an error
/// ends the connection (its mailbox closed by a publisher for going over the limit while
/// it waited or wrote, or the client gone).
async fn deliver_pushes<S: ClientStream>(
    stream: &mut S,
    mailbox: &Mailbox,
    out: &mut BytesMut,
    shared: &Shared,
    conn: &ConnState,
) -> std::io::Result<()> {
    let over = || std::io::Error::other("pubsub output buffer limit");
    if mailbox.closed() {
        pubsub_limit_reached(shared, conn);
        return Err(over());
    }
    mailbox.drain_into(out);
    let limit = shared.limits.output(OutputClass::Pubsub);
    let written = tokio::select! {
        r = flush_limited(stream, out, limit, shared, conn) => r,
        _ = mailbox.wait_closed() => {
            pubsub_limit_reached(shared, conn);
            Err(over())
        }
    };
    written?;
    if S::BUFFERED {
        stream.flush().await?;
    }
    out.clear();
    mailbox.sent();
    Ok(())
}

/// A subscriber that fell behind by more than `client-output-buffer-limit pubsub`: counted
/// (INFO `client_output_buffer_limit_disconnections`, `pubsub_clients_disconnected`).
fn pubsub_limit_reached(shared: &Shared, conn: &ConnState) {
    shared
        .limits
        .output_buffer_disconnections
        .fetch_add(1, Relaxed);
    shared.pubsub.count_disconnection();
    tracing::warn!(
        client = conn.id,
        addr = %conn.addr,
        "Client scheduled to be closed ASAP for overcoming of output buffer limits (pubsub)."
    );
}

/// Yield to the tasks already queued, without letting the I/O driver run first (unlike
/// `tokio::task::yield_now`, which defers the wake-up until the driver is polled, so
/// connections that became ready meanwhile would run their commands before our replies
/// leave).
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// What every await inside a batch needs first: the shard guard a command left held is
/// released (other tasks of this thread lock shards too), and the replication wake-up the
/// batch's writes put off is done (see `Store::defer_replication_wake`).
fn before_await(held: &mut Held<'_>, store: &Store) {
    held.release();
    store.flush_replication_wake();
}

/// Write a batch's replies, then do the replication wake-up its writes put off (see
/// `Store::defer_replication_wake`): after the bytes are on their way, or before waiting
/// for a full socket to drain. Over TLS the records are written and flushed after the
/// wake-up.
async fn write_replies<S: ClientStream>(
    stream: &mut S,
    out: &[u8],
    store: &Store,
    shared: &Shared,
    conn: &ConnState,
) -> std::io::Result<()> {
    let sent = stream.try_write_now(out);
    store.flush_replication_wake();
    let sent = match sent {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if sent < out.len() {
        let limit = shared.limits.output(OutputClass::Normal);
        flush_limited(stream, &out[sent..], limit, shared, conn).await?;
    }
    if S::BUFFERED {
        stream.flush().await?;
    }
    Ok(())
}

/// Write `out` whole, under `client-output-buffer-limit`'s class `limit`: whenever the
/// stream refuses more bytes, what the client has not taken yet may not reach the hard
/// limit, nor stay over the soft limit for its seconds; past either the client is closed
/// (an error) and counted, as Redis does. With no limit, a plain `write_all`. A buffered
/// (TLS) stream is flushed by the caller.
async fn flush_limited<S: ClientStream>(
    stream: &mut S,
    out: &[u8],
    limit: OutputLimit,
    shared: &Shared,
    conn: &ConnState,
) -> std::io::Result<()> {
    use std::task::Poll;
    if limit == OutputLimit::default() {
        return stream.write_all(out).await;
    }
    let mut sent = 0;
    let mut soft_since = 0;
    while sent < out.len() {
        // What the stream takes now, without waiting.
        let now_taken = std::future::poll_fn(|cx| {
            match std::pin::Pin::new(&mut *stream).poll_write(cx, &out[sent..]) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending => Poll::Ready(None),
            }
        })
        .await;
        let n = match now_taken {
            Some(r) => r?,
            None => {
                let pending = (out.len() - sent) as u64;
                let now = now_ms();
                if limit.exceeded(pending, &mut soft_since, now) {
                    shared
                        .limits
                        .output_buffer_disconnections
                        .fetch_add(1, Relaxed);
                    tracing::warn!(
                        client = conn.id,
                        addr = %conn.addr,
                        pending,
                        "Client scheduled to be closed ASAP for overcoming of output buffer limits."
                    );
                    return Err(std::io::Error::other("output buffer limit"));
                }
                let write = stream.write(&out[sent..]);
                if soft_since > 0 {
                    // Over the soft limit: look again when its seconds are up.
                    let deadline = soft_since + limit.soft_secs.saturating_mul(1000);
                    let wait =
                        std::time::Duration::from_millis(deadline.saturating_sub(now).max(1));
                    match tokio::time::timeout(wait, write).await {
                        Ok(r) => r?,
                        Err(_) => continue,
                    }
                } else {
                    write.await?
                }
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// Requests of a pipeline parsed before the one running is: while it runs, the keyspace
/// lookups of the next ones are prefetched in stages ([`Store::prefetch_ahead`]), so a
/// batch's cache misses overlap instead of each stalling its own command.
const LOOKAHEAD: usize = PREFETCH_AHEAD + 1;

/// Commands the requests after which are parsed only once they have run: CONFIG SET may
/// change the limits they are parsed with, and MERIDIAN SYNC turns the rest of the
/// connection into a replica stream (its bytes are not requests; inline parsing may even
/// rewrite bytes in place).
const BARRIERS: [&str; 2] = ["config", "meridian"];

/// A request parsed but not yet run: its length in the read buffer, its arguments (ranges
/// of those bytes), its command, for a keyed command its first key's slot and range (both
/// looked up once, for the prefetch and for `execute`), the member or field it names (for
/// the prefetch), and whether it is one of the [`BARRIERS`].
struct Ahead {
    len: usize,
    ranges: Vec<Range<usize>>,
    spec: Option<&'static Spec>,
    key: Option<(u16, Range<usize>)>,
    /// The member or field a set or hash command names after its key (`cmd::ELEMENT`).
    element: Option<Range<usize>>,
    barrier: bool,
}

/// The first key of a parsed request (`frame` holds its bytes), if its command has keys.
fn first_key(spec: &Spec, frame: &[u8], ranges: &[Range<usize>]) -> Option<(u16, Range<usize>)> {
    let first = usize::try_from(spec.first_key).ok().filter(|&i| i > 0)?;
    let r = ranges.get(first)?.clone();
    Some((key_slot(&frame[r.clone()]), r))
}

/// The prefetch hints of the requests parsed ahead (for [`Store::prefetch_ahead`] and
/// [`Store::prefetch_ramp`]); `buf` starts with the first of them. `None` for a request with
/// no key, and for one on the key of the request about to run (`current`) that names no
/// member or field: that key will be in cache (a hot key, e.g. `SET counter …` from every
/// client, would otherwise pay for hints that fetch nothing), but a member or field still
/// needs its probe (`SADD myset <random member>`).
fn ahead_keys<'b>(
    buf: &'b [u8],
    ahead: &'b VecDeque<Ahead>,
    current: Option<&'b [u8]>,
) -> impl Iterator<Item = Hint<'b>> + Clone + 'b {
    let mut at = 0;
    ahead.iter().map(move |a| {
        let frame = &buf[at..at + a.len];
        at += a.len;
        let (slot, r) = a.key.as_ref()?;
        let key = &frame[r.clone()];
        let element = a.element.clone().map(|r| &frame[r]);
        // A hot key's member or field still needs its probe.
        (current != Some(key) || element.is_some()).then_some((*slot, key, element))
    })
}

/// A request's arguments (its command's name first), slices of its bytes.
pub(crate) type Args<'a> = smallvec::SmallVec<[&'a [u8]; 8]>;

fn unknown_command(args: &[&[u8]]) -> Reply {
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0][..args[0].len().min(128)])
    );
    // Like Redis: the quoted arguments together take at most 128 bytes of the message, so
    // the reply stays small however many arguments were sent.
    let mut quoted = String::new();
    for a in &args[1..] {
        if quoted.len() >= 128 {
            break;
        }
        let room = 128 - quoted.len();
        quoted.push('\'');
        quoted.push_str(&String::from_utf8_lossy(&a[..a.len().min(room)]));
        quoted.push_str("' ");
    }
    msg.push_str(&quoted);
    Reply::Error(Cow::Owned(msg))
}

/// What a RESP2 client in subscribe mode may run (Redis' text lists them).
const PUBSUB_CONTEXT: [&str; 9] = [
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
    "ping",
    "quit",
    "reset",
];

pub(crate) const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

use crate::store::Held;

/// Whether `spec` may run under (and leave behind) a [`Held`] guard: a plain keyed
/// command, outside transactions, with no maxmemory to enforce (`maxmemory` is the
/// command's one reading of the limit, which `make_room` uses too, so a concurrent CONFIG
/// SET cannot make eviction lock shards under the guard). Every other path may lock shards
/// on its own (eviction, WATCH, EXEC), so it runs with no guard held; cluster routing, which
/// locks a shard only while the key's slot is migrating, releases the guard first.
fn may_hold(conn: &ConnState, spec: &Spec, maxmemory: u64) -> bool {
    spec.first_key > 0
        && spec.flags & cmd::ALL_SHARDS == 0
        && spec.name != "watch"
        && conn.multi.is_none()
        && maxmemory == 0
}

/// Execute one request (arguments already split) for a connection. `held` carries a shard
/// guard between the commands of one batch (see [`Held`]). A cluster write during a manual
/// failover's pause answers `Null` and sets `conn.paused`: the caller runs it again later
/// (as `serve` does).
pub fn execute<'s>(
    store: &'s Store,
    shared: &'s Shared,
    conn: &mut ConnState,
    args: &[Bytes],
    now: u64,
    held: &mut Held<'s>,
) -> Reply {
    let spec = cmd::lookup(&args[0]);
    let slices: Args<'_> = args.iter().map(|a| &a[..]).collect();
    execute_parsed(
        store,
        shared,
        conn,
        &Bytes::new(),
        &slices,
        spec,
        None,
        now,
        held,
    )
    .into_reply()
}

/// [`execute`] of a request whose command `spec` (`cmd::lookup` of `args[0]`) and, when
/// known, first key's slot were found when it was parsed.
#[allow(clippy::too_many_arguments)]
fn execute_parsed<'s>(
    store: &'s Store,
    shared: &'s Shared,
    conn: &mut ConnState,
    frame: &Bytes,
    args: &[&[u8]],
    spec: Option<&'static Spec>,
    first_slot: Option<u16>,
    now: u64,
    held: &mut Held<'s>,
) -> Outcome {
    conn.pending_commands += 1;
    let maxmemory = store.runtime.maxmemory.load(Relaxed);
    let hold = spec.is_some_and(|s| may_hold(conn, s, maxmemory));
    if !hold {
        held.release();
    }
    let Some(spec) = spec else {
        if conn.multi.is_some() {
            conn.multi_error = true;
        }
        return unknown_command(args).into();
    };
    if !spec.arity_ok(args.len()) {
        if conn.multi.is_some() {
            conn.multi_error = true;
        }
        shared.cmdstats.rejected(spec.id);
        return cmd::arity(spec.name).into();
    }
    // ACL: one load and one test for a user allowed everything (see `acl`).
    if !conn.session.free || conn.session.version != shared.acl.version() {
        if let Some(refused) = cmd::acl::gate(shared, conn, spec, args, now) {
            if conn.multi.is_some() {
                conn.multi_error = true;
            }
            shared.cmdstats.rejected(spec.id);
            return refused;
        }
    }
    if conn.subscribe_mode() && !PUBSUB_CONTEXT.contains(&spec.name) {
        shared.cmdstats.rejected(spec.id);
        return Reply::Error(Cow::Owned(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.name
        )))
        .into();
    }
    conn.last_cmd = spec.name;
    if let Some(outcome) = transaction::command(store, shared, conn, spec, args, now, held) {
        return outcome;
    }
    let keys = keys_with_slots(spec, args, first_slot);
    // ASKING: for the next command, or, inside MULTI, until EXEC (as in Redis).
    let asking = if conn.multi.is_some() {
        conn.asking
    } else {
        std::mem::take(&mut conn.asking)
    };
    if let Some(refused) = route(store, shared, conn, spec, &keys, asking, now, held) {
        if !matches!(refused, Outcome::Pause) {
            shared.cmdstats.rejected(spec.id);
        }
        return refused;
    }
    if conn.multi.is_some() {
        if spec.flags & cmd::NO_MULTI != 0 {
            conn.multi_error = true;
            shared.cmdstats.rejected(spec.id);
            return cmd::err("ERR Command not allowed inside a transaction").into();
        }
        return transaction::queue(shared, conn, args).into();
    }
    let write = spec.flags & cmd::WRITE != 0;
    if write {
        if let Some(refused) = shared.inregion.write_refusal(now) {
            shared.cmdstats.rejected(spec.id);
            return refused.into();
        }
        if !make_room(store, conn, now, maxmemory) && spec.flags & cmd::DENYOOM != 0 {
            shared.cmdstats.rejected(spec.id);
            return cmd::err(OOM).into();
        }
    }
    let mut key_slots = cmd::KeySlots::new();
    let locks = lock_shards(store, spec, &keys, hold, held, &mut key_slots);
    if write && conn.multi.is_none() && shared.write_pause_began(now) {
        // A manual failover paused writes (perhaps since this one was routed): wait with the
        // others. Handlers that lock on demand check for themselves (`Ctx::pause_began`).
        drop(locks);
        return paused(conn, asking);
    }
    let mut ctx = Ctx {
        store,
        shared,
        conn,
        now_ms: now,
        locks,
        key_slots,
        frame,
        held,
    };
    let t0 = shared.cmdstats.start();
    let outcome = (spec.handler)(&mut ctx, args);
    if matches!(outcome, Outcome::Pause) {
        // Run again after the pause: counted then.
        ctx.conn.pending_commands = ctx.conn.pending_commands.saturating_sub(1);
    } else if matches!(outcome, Outcome::Block { .. }) {
        // A blocking command that found nothing: its call is the run that serves it.
    } else {
        let failed = matches!(&outcome, Outcome::Reply(Reply::Error(_)));
        let slow = crate::cmdstats::SlowInfo {
            args,
            addr: &ctx.conn.addr,
            name: ctx.conn.name.as_ref(),
            fast: spec.flags & cmd::FAST != 0,
        };
        shared.cmdstats.ran(spec.id, t0, failed, slow);
    }
    if write {
        // The feed offset after the write (≥ its own offset): what WAIT waits for.
        ctx.conn.write_offset = store.feed().offset();
    }
    if hold {
        if let Locks::Some(v) = ctx.locks {
            for (i, g) in v {
                ctx.held.put(i, g);
            }
        }
    }
    outcome
}

/// A request's keys, each with its slot, computed once: for routing, lock choice and the
/// keyspace (`first_slot`: the first key's, found when the request was parsed). An admin
/// subcommand that writes one key ([`admin_write_key`]) counts that key.
fn keys_with_slots<'a>(
    spec: &Spec,
    args: &[&'a [u8]],
    first_slot: Option<u16>,
) -> smallvec::SmallVec<[(&'a [u8], u16); 4]> {
    if spec.first_key > 0 {
        let first = spec.first_key as usize;
        spec.key_indices(args)
            .map(|i| {
                let slot = match first_slot {
                    Some(slot) if i == first => slot,
                    _ => key_slot(args[i]),
                };
                (args[i], slot)
            })
            .collect()
    } else if let Some(k) = admin_write_key(spec, args) {
        smallvec::smallvec![(k, key_slot(k))]
    } else {
        smallvec::SmallVec::new()
    }
}

/// In a region cluster, whether this node serves the request's keys: `None` to run it
/// here, else its answer (MOVED, ASK, TRYAGAIN, CROSSSLOT…, or a wait through a manual
/// failover's pause). Queued inside MULTI, a paused write is not refused: EXEC is routed
/// (and waits) as a whole.
#[allow(clippy::too_many_arguments)]
fn route<'s>(
    store: &'s Store,
    shared: &'s Shared,
    conn: &mut ConnState,
    spec: &Spec,
    keys: &[(&[u8], u16)],
    asking: bool,
    now: u64,
    held: &mut Held<'s>,
) -> Option<Outcome> {
    let c = shared.cluster.as_ref()?;
    if keys.is_empty() {
        return None;
    }
    let readonly_read =
        (conn.readonly && spec.flags & cmd::READONLY != 0) || spec.flags & cmd::SHARD_PUBSUB != 0;
    let write = spec.flags & cmd::WRITE != 0 || spec.first_key == 0;
    match c.route(store, keys, write, asking, readonly_read, now, held) {
        None => None,
        Some(Refusal::Paused) if conn.multi.is_some() => None,
        Some(Refusal::Paused) => Some(paused(conn, asking)),
        Some(Refusal::Error(e)) => {
            if conn.multi.is_some() {
                conn.multi_error = true;
            }
            Some(Reply::Error(Cow::Owned(e)).into())
        }
    }
}

/// The shard locks a command runs under: every shard (`cmd::ALL_SHARDS`), its keys'
/// shards (taken from the guards `held` from the previous command when `hold`, else
/// waited for holding nothing: see [`Held`]), or none (it locks on demand). Records each
/// key's slot in `key_slots` for the keyspace.
fn lock_shards<'s>(
    store: &'s Store,
    spec: &Spec,
    keys: &[(&[u8], u16)],
    hold: bool,
    held: &mut Held<'s>,
    key_slots: &mut cmd::KeySlots,
) -> Locks<'s> {
    if spec.flags & cmd::ALL_SHARDS != 0 {
        return Locks::All(store.lock_all());
    }
    if spec.first_key == 0 {
        return Locks::None;
    }
    let mut idxs = smallvec::SmallVec::<[usize; 4]>::new();
    for &(key, slot) in keys {
        key_slots.push((key.as_ptr() as usize, key.len(), slot));
        idxs.push(shard_of(slot));
    }
    idxs.sort_unstable();
    idxs.dedup();
    let mut v = crate::store::SomeGuards::new();
    if hold {
        for &i in &idxs {
            let Some(g) = store.try_take(held, i) else {
                break;
            };
            v.push((i, g));
        }
    }
    if v.len() < idxs.len() {
        // A shard is busy: wait for it holding nothing (see `Held`).
        drop(v);
        held.release();
        v = store.lock_some(&mut idxs);
    }
    Locks::Some(v)
}

/// A write to wait through a manual failover's pause: `serve` runs it again, with its
/// ASKING permission (it is not counted twice).
pub(crate) fn paused(conn: &mut ConnState, asking: bool) -> Outcome {
    conn.asking = asking;
    conn.pending_commands = conn.pending_commands.saturating_sub(1);
    Outcome::Pause
}

/// The key of an admin subcommand that writes one key (`MERIDIAN INVALIDATE <key> …`):
/// in a cluster it is routed like a write, so a node never writes a slot it does not own.
pub(crate) fn admin_write_key<'a>(spec: &Spec, args: &[&'a [u8]]) -> Option<&'a [u8]> {
    (spec.name == "meridian" && args.len() >= 3 && args[1].eq_ignore_ascii_case(b"invalidate"))
        .then(|| args[2])
}

/// Evict if over `maxmemory` (the caller's reading of the limit); false when the limit
/// holds and nothing can be evicted.
pub(crate) fn make_room(store: &Store, conn: &mut ConnState, now: u64, maxmemory: u64) -> bool {
    if maxmemory == 0 {
        return true;
    }
    store.enforce_maxmemory(now, &mut || conn.random())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{key_shard, Runtime};
    use meridian_crdt::RegionId;

    /// A connection task that panics while it watches keys leaves no watcher behind.
    #[test]
    fn a_panic_releases_the_connections_watches() {
        let runtime = Runtime::for_tests(0);
        let store = Arc::new(Store::new(RegionId(1), 7, 16, runtime, false));
        let mut conn = ConnState::new(1, "127.0.0.1:1".into(), 0);
        for k in ["a", "b", "c"] {
            let k = Bytes::from_static(k.as_bytes());
            let v = store.shard(key_shard(&k)).watch(&k);
            conn.watched.push((k, v));
        }
        let watched = |store: &Store| -> usize {
            (0..crate::store::SHARDS)
                .map(|i| store.shard(i).watched_keys())
                .sum()
        };
        assert_eq!(watched(&store), 3);
        let s = store.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _conn = Watching { store: s, conn };
            panic!("a bug in a handler");
        }));
        assert!(r.is_err());
        assert_eq!(watched(&store), 0);
    }
}
