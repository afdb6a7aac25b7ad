//! Transactions: `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`. A transaction queues
//! its commands (copies of their arguments) on the connection; `EXEC` routes them as one
//! (cluster: one slot, served here), waits out a write pause whole, checks the watched
//! keys' versions and runs every command holding every shard lock, so no other command
//! interleaves. A remote change of a watched key (a merge from another region, the replica
//! stream, MIGRATE) bumps its version as a local write does (`Store::merge_remote`).

use crate::cluster::Refusal;
use crate::cmd::{self, ConnState, Ctx, Locks, Outcome, Spec};
use crate::connection::{admin_write_key, make_room, paused, Args, OOM};
use crate::frame::Reply;
use crate::shared::Shared;
use crate::store::{key_shard, Held, Store};
use bytes::Bytes;
use meridian_crdt::key_slot;
use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;

/// `Some(outcome)` when `spec` is a transaction command (run here), else `None`.
pub fn command<'s>(
    store: &'s Store,
    shared: &'s Shared,
    conn: &mut ConnState,
    spec: &Spec,
    args: &[&[u8]],
    now: u64,
    held: &mut Held<'s>,
) -> Option<Outcome> {
    let outcome = match spec.name {
        "multi" => {
            if conn.multi.is_some() {
                return Some(cmd::err("ERR MULTI calls can not be nested").into());
            }
            conn.multi = Some(Vec::new());
            conn.multi_error = false;
            conn.multi_bytes = 0;
            cmd::ok().into()
        }
        "discard" => {
            if conn.multi.take().is_none() {
                return Some(cmd::err("ERR DISCARD without MULTI").into());
            }
            conn.asking = false;
            unwatch_all(store, conn);
            cmd::ok().into()
        }
        "exec" => {
            // ASKING lasts the whole transaction, as in Redis.
            let asking = std::mem::take(&mut conn.asking);
            if let Some(c) = &shared.cluster {
                match route_exec(store, c, conn, asking, now, held) {
                    None => {}
                    Some(Refusal::Paused) => return Some(paused(conn, asking)),
                    Some(Refusal::Error(e)) => {
                        // As Redis: a redirected EXEC discards the transaction.
                        conn.multi = None;
                        conn.multi_error = false;
                        unwatch_all(store, conn);
                        return Some(Reply::Error(Cow::Owned(e)).into());
                    }
                }
            }
            let outcome = exec(store, shared, conn, now, asking);
            if !matches!(outcome, Outcome::Pause) {
                // An ASKING queued inside the transaction ran in it: it ends with EXEC.
                conn.asking = false;
            }
            outcome
        }
        "watch" => {
            if conn.multi.is_some() {
                return Some(cmd::err("ERR WATCH inside MULTI is not allowed").into());
            }
            for k in &args[1..] {
                let k = Bytes::copy_from_slice(k);
                let mut shard = store.shard(key_shard(&k));
                let v = shard.watch(&k);
                conn.watched.push((k, v));
            }
            cmd::ok().into()
        }
        "unwatch" => {
            unwatch_all(store, conn);
            cmd::ok().into()
        }
        _ => return None,
    };
    Some(outcome)
}

/// What a queued command is counted for besides its arguments' bytes: the argument
/// vector and each argument's own allocation.
const QUEUED_COMMAND_OVERHEAD: u64 = 64;
const QUEUED_ARG_OVERHEAD: u64 = 48;

pub const ERR_MULTI_TOO_BIG: &str =
    "ERR Transaction discarded: its queued commands exceed client-query-buffer-limit";

/// Queue a command of the open transaction (the caller checked it may be queued). The
/// queue is bounded like the input it came from: its commands together (arguments and
/// bookkeeping) may not exceed `client-query-buffer-limit`, or the transaction is failed
/// (`EXECABORT` at EXEC, as any queuing error) and its queue freed at once. After an
/// error nothing more is stored: EXEC will discard the transaction anyway.
pub fn queue(shared: &Shared, conn: &mut ConnState, args: &[&[u8]]) -> Reply {
    if conn.multi_error {
        return Reply::Simple(Cow::Borrowed("QUEUED"));
    }
    let size = args
        .iter()
        .map(|a| a.len() as u64 + QUEUED_ARG_OVERHEAD)
        .sum::<u64>()
        + QUEUED_COMMAND_OVERHEAD;
    conn.multi_bytes = conn.multi_bytes.saturating_add(size);
    if conn.multi_bytes > shared.limits.query_buffer.load(Relaxed) {
        conn.multi_error = true;
        conn.multi_bytes = 0;
        if let Some(q) = conn.multi.as_mut() {
            *q = Vec::new();
        }
        return cmd::err(ERR_MULTI_TOO_BIG);
    }
    if let Some(q) = conn.multi.as_mut() {
        q.push(args.iter().map(|a| Bytes::copy_from_slice(a)).collect());
    }
    Reply::Simple(Cow::Borrowed("QUEUED"))
}

/// Route an EXEC in a cluster by every key of its queued commands, as Redis does: all in
/// one slot served here (else `CROSSSLOT`, `MOVED`…), and, if any of them writes, only while
/// this node takes writes. `None` without a transaction or with a failed one (EXEC answers).
fn route_exec<'s>(
    store: &'s Store,
    c: &crate::cluster::Cluster,
    conn: &ConnState,
    asking: bool,
    now: u64,
    held: &mut crate::store::Held<'s>,
) -> Option<Refusal> {
    let queue = conn.multi.as_ref().filter(|_| !conn.multi_error)?;
    let mut keys: smallvec::SmallVec<[(&[u8], u16); 4]> = smallvec::SmallVec::new();
    let (mut write, mut reads_only) = (false, true);
    for q in queue {
        let args: smallvec::SmallVec<[&[u8]; 8]> = q.iter().map(|a| &a[..]).collect();
        let Some(spec) = cmd::lookup(args[0]) else {
            continue;
        };
        write |= spec.flags & cmd::WRITE != 0;
        reads_only &= spec.flags & cmd::READONLY != 0;
        if spec.first_key > 0 {
            keys.extend(
                spec.key_indices(&args)
                    .map(|i| (&q[i][..], key_slot(&q[i]))),
            );
        } else if let Some(k) = admin_write_key(spec, &args) {
            write = true;
            keys.push((k, key_slot(k)));
        }
    }
    if keys.is_empty() {
        return None;
    }
    let readonly_read = conn.readonly && reads_only;
    c.route(store, &keys, write, asking, readonly_read, now, held)
}

fn exec(store: &Store, shared: &Shared, conn: &mut ConnState, now: u64, asking: bool) -> Outcome {
    let Some(queue) = conn.multi.take() else {
        return cmd::err("ERR EXEC without MULTI").into();
    };
    if conn.multi_error {
        conn.multi_error = false;
        unwatch_all(store, conn);
        return cmd::err("EXECABORT Transaction discarded because of previous errors.").into();
    }
    let specs: Vec<&'static Spec> = queue.iter().filter_map(|a| cmd::lookup(&a[0])).collect();
    let writes = specs.iter().any(|s| s.flags & cmd::WRITE != 0);
    if writes {
        if let Some(refused) = shared.inregion.write_refusal(now) {
            unwatch_all(store, conn);
            return refused.into();
        }
    }
    let needs_room = specs.iter().any(|s| s.flags & cmd::DENYOOM != 0);
    let maxmemory = store.runtime.maxmemory.load(Relaxed);
    if needs_room && !make_room(store, conn, now, maxmemory) {
        unwatch_all(store, conn);
        return cmd::err(OOM).into();
    }
    let guards = store.lock_all();
    // (Any MERIDIAN subcommand counts: INVALIDATE and MERGE write.)
    let pausable = writes || specs.iter().any(|s| s.name == "meridian");
    if pausable && shared.write_pause_began(now) {
        // See `execute_parsed`: the transaction waits, whole, with its WATCHes.
        drop(guards);
        conn.multi = Some(queue);
        return paused(conn, asking);
    }
    let dirty = conn
        .watched
        .iter()
        .any(|(k, v)| guards[key_shard(k)].watch_version(k) != *v);
    let watched = std::mem::take(&mut conn.watched);
    // Queued arguments are copies (see `execute_parsed`): no request buffer to share.
    let no_frame = Bytes::new();
    let mut ctx = Ctx {
        store,
        shared,
        conn,
        now_ms: now,
        locks: Locks::All(guards),
        key_slots: cmd::KeySlots::new(),
        frame: &no_frame,
        held: &mut Held::new(false),
    };
    let reply = if dirty {
        Reply::NullArray
    } else {
        Reply::Array(
            queue
                .iter()
                .zip(specs)
                .map(|(a, spec)| {
                    let args: Args<'_> = a.iter().map(|a| &a[..]).collect();
                    let t0 = shared.cmdstats.start();
                    let reply = (spec.handler)(&mut ctx, &args).into_reply();
                    let slow = crate::cmdstats::SlowInfo {
                        args: &args,
                        addr: &ctx.conn.addr,
                        name: ctx.conn.name.as_ref(),
                        fast: spec.flags & cmd::FAST != 0,
                    };
                    let failed = matches!(reply, Reply::Error(_));
                    shared.cmdstats.ran(spec.id, t0, failed, slow);
                    reply
                })
                .collect(),
        )
    };
    if writes {
        ctx.conn.write_offset = store.feed().offset();
    }
    // Release the watch registrations while still holding every shard.
    if let Locks::All(g) = &mut ctx.locks {
        for (k, _) in &watched {
            g[key_shard(k)].unwatch(k);
        }
    }
    reply.into()
}

/// Drop this connection's WATCH registrations (DISCARD, EXEC, the connection's end).
pub fn unwatch_all(store: &Store, conn: &mut ConnState) {
    for (k, _) in conn.watched.drain(..) {
        store.shard(key_shard(&k)).unwatch(&k);
    }
}
