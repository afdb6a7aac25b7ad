//! Cluster commands. Slot arithmetic (KEYSLOT, COUNTKEYSINSLOT, GETKEYSINSLOT) works on any
//! node; with `[cluster]` enabled the topology subcommands (INFO, MYID, NODES, SLOTS, SHARDS,
//! MEET, ADDSLOTS[RANGE], DELSLOTS[RANGE], SETSLOT, REPLICATE, FAILOVER, FORGET, RESET,
//! SAVECONFIG, REPLICAS/SLAVES, SET-CONFIG-EPOCH, BUMPEPOCH) drive the node's `ClusterNode`
//! (src/cluster.rs), and ASKING/READONLY/READWRITE set the connection's routing flags.

use super::*;
use crate::store::Store;
use meridian_crdt::{key_slot, SLOT_COUNT};

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("cluster", -2, 0, 0, 0, 0, cluster),
        spec!("readonly", 1, FAST, 0, 0, 0, readonly),
        spec!("readwrite", 1, FAST, 0, 0, 0, readwrite),
        spec!("asking", 1, FAST, 0, 0, 0, asking),
        // Keys are found (and locked) by the handler: `key` may be "" with KEYS.
        spec!("migrate", -6, WRITE | NO_MULTI, 0, 0, 0, migrate),
    ]
}

/// MIGRATE's timeout (Redis' idle time of any one socket operation) is capped: MIGRATE blocks
/// its connection's I/O thread, and with it that thread's other clients, while it runs. A
/// timeout of 0 or less is Redis' default of one second.
pub(crate) const MIGRATE_MAX_TIMEOUT_MS: i64 = 10_000;
/// The whole exchange with the target (connect, send, replies) ends by then, however the
/// target dribbles its bytes.
const MIGRATE_MAX_EXCHANGE: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest reply line read from the target (its `+OK` or an error text).
const MIGRATE_REPLY_LINE_MAX: usize = 4096;
/// Rounds of sending the keys that changed while the previous round was on its way.
const MIGRATE_ROUNDS: usize = 3;

/// `MIGRATE host port key|"" destination-db timeout [COPY] [REPLACE] [AUTH pw]
/// [AUTH2 user pw] [KEYS key …]`: move keys to another node of the region with their CRDT
/// state intact (the target merges it: [`migrate_target`]), then drop them here without a
/// delta (no tombstone for the other regions: the key lives on in this one); this node's
/// replicas are told to drop them too. Blocks this connection's thread for the transfer,
/// like Redis' MIGRATE, but holds no shard lock while it talks to the target (see
/// [`move_keys`]). Refused inside MULTI (a transaction would hold every shard through the
/// transfer); the timeout is capped at [`MIGRATE_MAX_TIMEOUT_MS`].
fn migrate(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let host = String::from_utf8_lossy(a[1]).to_string();
    let Some(port) = crate::util::parse_int(a[2]).filter(|p| (1..=65535).contains(p)) else {
        return err("ERR Invalid port");
    };
    let Some(timeout_ms) = crate::util::parse_int(a[5]) else {
        return not_int();
    };
    let timeout_ms = if timeout_ms <= 0 {
        1000
    } else {
        timeout_ms.min(MIGRATE_MAX_TIMEOUT_MS)
    };
    let (mut copy, mut keys) = (false, Vec::new());
    // The target's AUTH (AUTH password | AUTH2 username password), sent before the keys.
    let mut auth: Option<(Option<&[u8]>, &[u8])> = None;
    let mut i = 6;
    while i < a.len() {
        let o = a[i].to_ascii_lowercase();
        match o.as_slice() {
            b"copy" => copy = true,
            b"replace" => {}
            b"auth" => {
                let Some(p) = a.get(i + 1) else {
                    return syntax();
                };
                auth = Some((None, p));
                i += 1;
            }
            b"auth2" => {
                let (Some(u), Some(p)) = (a.get(i + 1), a.get(i + 2)) else {
                    return syntax();
                };
                auth = Some((Some(u), p));
                i += 2;
            }
            b"keys" => {
                if !a[3].is_empty() {
                    return err("ERR When using MIGRATE KEYS option, the key argument must be set to the empty string");
                }
                keys.extend(a[i + 1..].iter().cloned());
                break;
            }
            _ => return syntax(),
        }
        i += 1;
    }
    if keys.is_empty() {
        keys.push(a[3]);
    }
    if !matches!(ctx.locks, Locks::None) {
        // Inside EXEC (the connection refuses to queue it; this is the in-process entry).
        return err("ERR Command not allowed inside a transaction");
    }
    let target = MigrateTarget {
        host: &host,
        port: port as u16,
        idle: std::time::Duration::from_millis(timeout_ms as u64),
        auth,
        // `tls-cluster yes`: TLS to the target (its `tls-port`).
        tls: ctx.shared.tls.as_ref().and_then(|t| t.cluster.as_ref()),
    };
    match move_keys(ctx.store, &keys, copy, ctx.now_ms, |batch| {
        target.send(batch)
    }) {
        Ok(false) => Reply::Simple(std::borrow::Cow::Borrowed("NOKEY")),
        Ok(true) => ok(),
        Err(e) => e,
    }
}

/// A key on its way to MIGRATE's target: the state to send, and the state this node must
/// still hold for the key to be dropped here once the target has it (`None`: the key is
/// gone here, only a removal was sent).
struct InFlight<'k> {
    key: &'k [u8],
    send: meridian_crdt::Entry,
    expect: Option<meridian_crdt::Entry>,
}

/// MIGRATE's keys moved without socket I/O under a shard lock: the keys' shards are locked
/// (in ascending order, the global lock order) to snapshot their states, released while
/// `send` delivers them, and locked again to drop the keys. Returns whether any key existed.
///
/// The rule for a key written between the snapshot and the drop: a key is dropped here only
/// if its state equals the state the target acknowledged, so no write acknowledged here
/// meanwhile (by a client, the region link or this node's primary) is lost:
/// - changed (a write, a merge, a DEL's tombstone): its current state is sent again; merges
///   are joins, so the target ends up with both;
/// - gone, in a keyspace that drops removed keys at once (one region): a DEL may have
///   removed it, so the target is sent that removal (an observed remove of exactly the
///   state it got), and the key is dropped there too; with peer regions a DEL leaves a
///   tombstone (changed, above), and a key gone was expired, evicted or moved by another
///   MIGRATE: nothing to do;
/// - still changing after [`MIGRATE_ROUNDS`] rounds: it stays here (the target holds an
///   older state, which a later MIGRATE completes), and MIGRATE answers an error.
fn move_keys<'k>(
    store: &Store,
    keys: &[&'k [u8]],
    copy: bool,
    now_ms: u64,
    mut send: impl FnMut(&[(&[u8], Vec<u8>)]) -> Result<(), Reply>,
) -> Result<bool, Reply> {
    let mut keys: Vec<&[u8]> = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let shard_idx = |k: &[u8]| crate::store::shard_of(key_slot(k));
    let mut idxs: Vec<usize> = keys.iter().map(|k| shard_idx(k)).collect();
    let mut flight: Vec<InFlight<'k>> = {
        let mut guards = store.lock_some(&mut idxs);
        let mut out = Vec::new();
        for k in &keys {
            let i = shard_idx(k);
            let Some((_, g)) = guards.iter_mut().find(|(j, _)| *j == i) else {
                continue;
            };
            if let Some(e) = g.ks.raw_entry(k).filter(|e| e.is_alive()) {
                let e = e.into_owned();
                out.push(InFlight {
                    key: k,
                    send: e.clone(),
                    expect: Some(e),
                });
            }
        }
        out
    };
    if flight.is_empty() {
        return Ok(false);
    }
    for _ in 0..MIGRATE_ROUNDS {
        let mut batch = Vec::with_capacity(flight.len());
        for f in &flight {
            match postcard::to_allocvec(&f.send) {
                Ok(blob) => batch.push((f.key, blob)),
                Err(e) => return Err(err_owned(format!("ERR cannot serialize a key: {e}"))),
            }
        }
        send(&batch)?;
        drop(batch);
        if copy {
            return Ok(true);
        }
        let mut idxs: Vec<usize> = flight.iter().map(|f| shard_idx(f.key)).collect();
        let mut guards = store.lock_some(&mut idxs);
        let mut again = Vec::new();
        for f in flight {
            let i = shard_idx(f.key);
            let Some((_, shard)) = guards.iter_mut().find(|(j, _)| *j == i) else {
                continue;
            };
            let now = shard.ks.raw_entry(f.key).map(|e| e.into_owned());
            match (now, f.expect) {
                (Some(cur), Some(sent)) if cur == sent => {
                    if shard.ks.take_key(f.key).is_some() {
                        // Replicas drop their copy too (the key lives on at the target).
                        shard.feed.push_forget(f.key);
                        shard.touch_key(f.key);
                    }
                }
                (Some(cur), _) => again.push(InFlight {
                    key: f.key,
                    send: cur.clone(),
                    expect: Some(cur),
                }),
                (None, Some(sent)) if !shard.ks.config().retain_tombstones => {
                    again.push(InFlight {
                        key: f.key,
                        send: sent.removal(store.stamp(now_ms)),
                        expect: None,
                    })
                }
                (None, _) => {}
            }
        }
        drop(guards);
        if again.is_empty() {
            return Ok(true);
        }
        flight = again;
    }
    Err(err_owned(format!(
        "ERR {} key(s) kept changing while being sent to the target and stayed here: retry MIGRATE",
        flight.len()
    )))
}

/// Where MIGRATE sends its keys, and how.
struct MigrateTarget<'a> {
    host: &'a str,
    port: u16,
    /// Redis' timeout: the longest any one socket operation may wait.
    idle: std::time::Duration,
    auth: Option<(Option<&'a [u8]>, &'a [u8])>,
    tls: Option<&'a std::sync::Arc<rustls::ClientConfig>>,
}

impl MigrateTarget<'_> {
    /// One exchange: connect, AUTH if asked, one [`MIGRATE_TARGET`] command per key, then
    /// every reply read, each line bounded ([`MIGRATE_REPLY_LINE_MAX`]), the whole within
    /// [`MIGRATE_MAX_EXCHANGE`]. Anything but `+…` for each is an error, and nothing is
    /// dropped here.
    fn send(&self, batch: &[(&[u8], Vec<u8>)]) -> Result<(), Reply> {
        use std::io::{BufRead, BufReader, Write};
        let ioerr =
            |what: &str| err_owned(format!("IOERR error or timeout {what} target instance"));
        let deadline = std::time::Instant::now() + MIGRATE_MAX_EXCHANGE;
        // The time the next socket operation may take: Redis' timeout, within the deadline.
        let budget = || {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            (!left.is_zero()).then(|| self.idle.min(left))
        };
        let mut stream = migrate_connect(self.host, self.port, self.idle, self.tls)
            .map_err(|_| ioerr("connecting to"))?;
        let mut out = bytes::BytesMut::new();
        match self.auth {
            Some((Some(u), p)) => crate::frame::encode_command(&[&b"AUTH"[..], u, p], &mut out),
            Some((None, p)) => crate::frame::encode_command(&[&b"AUTH"[..], p], &mut out),
            None => {}
        }
        for (k, blob) in batch {
            let [cmd, sub] = MIGRATE_TARGET;
            crate::frame::encode_command(&[cmd, sub, k, blob], &mut out);
        }
        for chunk in out.chunks(64 * 1024) {
            let Some(t) = budget() else {
                return Err(ioerr("writing to"));
            };
            if stream.tcp().set_write_timeout(Some(t)).is_err() || stream.write_all(chunk).is_err()
            {
                return Err(ioerr("writing to"));
            }
        }
        if stream.flush().is_err() {
            return Err(ioerr("writing to"));
        }
        drop(out);
        let mut reader = BufReader::new(&mut stream);
        let mut line = Vec::new();
        for _ in 0..batch.len() + usize::from(self.auth.is_some()) {
            line.clear();
            loop {
                let Some(t) = budget() else {
                    return Err(ioerr("reading from"));
                };
                if reader.get_ref().tcp().set_read_timeout(Some(t)).is_err() {
                    return Err(ioerr("reading from"));
                }
                let buf = match reader.fill_buf() {
                    Ok([]) | Err(_) => return Err(ioerr("reading from")),
                    Ok(buf) => buf,
                };
                let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                    Some(n) => (n + 1, true),
                    None => (buf.len(), false),
                };
                line.extend_from_slice(&buf[..take]);
                reader.consume(take);
                if line.len() > MIGRATE_REPLY_LINE_MAX {
                    return Err(err("ERR Target instance sent a reply line too long"));
                }
                if done {
                    break;
                }
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            match text.split_first() {
                Some((b'+', _)) => {}
                Some((b'-', msg)) => {
                    return Err(err_owned(format!(
                        "ERR Target instance replied with error: {}",
                        String::from_utf8_lossy(msg)
                    )))
                }
                _ => return Err(err("ERR Target instance sent an invalid reply")),
            }
        }
        Ok(())
    }
}

/// MIGRATE's connection to its target: TCP, with TLS when `tls` is given (the handshake
/// runs on the first write).
fn migrate_connect(
    host: &str,
    port: u16,
    timeout: std::time::Duration,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> std::io::Result<crate::tls::BlockingStream> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrNotAvailable))?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    crate::tls::BlockingStream::new(tcp, host, tls).map_err(std::io::Error::other)
}

/// The command [`migrate`] sends the target node for each key: `MERIDIAN MERGE <key>
/// <state>`, the state a postcard-encoded `Entry`. Both ends are this binary.
pub(super) const MIGRATE_TARGET: [&[u8]; 2] = [b"MERIDIAN", b"MERGE"];

/// MIGRATE's target side (`MERIDIAN MERGE <key> <state>`, see [`MIGRATE_TARGET`]): merge a
/// key's whole CRDT state sent by another node's [`migrate`], through
/// `Store::merge_remote` (WATCH, this node's replicas, the HLC). The merge issues no stamp
/// of its own, so only a manual failover's pause holds it (MIGRATE's source drops the key
/// once we answer, and the promoted replica must have it), not the restart window.
pub(super) fn migrate_target(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    let (Some(key), Some(blob), 4) = (a.get(2), a.get(3), a.len()) else {
        return err("ERR usage: MERIDIAN MERGE <key> <state>").into();
    };
    if ctx.failover_pause_began(key) {
        return ctx.wait_out_pause();
    }
    let mut entry: meridian_crdt::Entry = match postcard::from_bytes(blob) {
        Ok(e) => e,
        Err(e) => return err_owned(format!("ERR bad key state: {e}")).into(),
    };
    if let Err(e) = meridian_replication::codec::check_entry(&entry) {
        return err_owned(format!("ERR bad key state: {e}")).into();
    }
    entry.rebuild();
    let store = ctx.store;
    store.merge_remote(ctx.shard(key), crate::store::Remote::State(key, &entry));
    ok().into()
}

fn readonly(ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    ctx.conn.readonly = true;
    ok()
}

fn readwrite(ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    ctx.conn.readonly = false;
    ok()
}

fn asking(ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    ctx.conn.asking = true;
    ok()
}

fn text(s: &str) -> Reply {
    Reply::Bulk(Bytes::from(s.to_string()))
}

fn endpoint(e: &meridian_regions::topology::Endpoint) -> Reply {
    Reply::Array(vec![
        text(&e.host),
        Reply::Int(i64::from(e.port)),
        text(&e.id.redis_name()),
        Reply::Array(Vec::new()),
    ])
}

fn node_arg(a: &[u8]) -> Result<meridian_regions::NodeId, Reply> {
    std::str::from_utf8(a)
        .ok()
        .and_then(meridian_regions::NodeId::from_redis_name)
        .ok_or_else(|| err_owned(format!("ERR Unknown node {}", String::from_utf8_lossy(a))))
}

/// Slot list arguments (`ADDSLOTS 1 2 3`) or pairs (`ADDSLOTSRANGE 1 5 7 9`). Validated
/// into a slot bitmap before anything else is allocated: a slot named twice is refused (as
/// Redis does), so a request repeating `0 16383` a million times costs one pass over its
/// arguments, not a million copies of every slot.
fn slot_list(a: &[&[u8]], ranges: bool) -> Result<Vec<u32>, Reply> {
    let one = |b: &&[u8]| match crate::util::parse_int(b) {
        Some(n) if (0..SLOT_COUNT as i64).contains(&n) => Ok(n as u32),
        _ => Err(err("ERR Invalid or out of range slot")),
    };
    if ranges && !a.len().is_multiple_of(2) {
        return Err(err(
            "ERR wrong number of arguments for 'cluster|addslotsrange' command",
        ));
    }
    let mut named = vec![false; SLOT_COUNT];
    let mut out = Vec::new();
    let mut add = |slot: u32| -> Result<(), Reply> {
        let seen = &mut named[slot as usize];
        if std::mem::replace(seen, true) {
            return Err(err_owned(format!(
                "ERR Slot {slot} specified multiple times"
            )));
        }
        out.push(slot);
        Ok(())
    };
    if !ranges {
        for b in a {
            add(one(b)?)?;
        }
        return Ok(out);
    }
    for pair in a.chunks(2) {
        let (lo, hi) = (one(&pair[0])?, one(&pair[1])?);
        if lo > hi {
            return Err(err_owned(format!(
                "ERR start slot number {lo} is greater than end slot number {hi}"
            )));
        }
        for slot in lo..=hi {
            add(slot)?;
        }
    }
    Ok(out)
}

/// Topology subcommands of a cluster-enabled node; `None` when `sub` is not one of them.
fn cluster_topology(ctx: &mut Ctx, a: &[&[u8]]) -> Option<Reply> {
    use meridian_regions::node::{FailoverMode, SetSlot};
    let c = ctx.shared.cluster.clone()?;
    let sub = String::from_utf8_lossy(a[1]).to_ascii_lowercase();
    let now = ctx.now_ms;
    let done = |r: Result<(), meridian_regions::ClusterError>| match r {
        Ok(()) => {
            c.poke();
            ok()
        }
        Err(e) => err_owned(e.to_string()),
    };
    let reply = match (sub.as_str(), a.len()) {
        ("info", 2) => Reply::Verbatim(c.node.lock().cluster_info().to_text()),
        ("myid", 2) => text(&c.node.lock().myself_id().redis_name()),
        ("nodes", 2) => Reply::Verbatim(c.node.lock().topology().cluster_nodes()),
        ("slots", 2) => {
            let node = c.node.lock();
            Reply::Array(
                node.topology()
                    .cluster_slots()
                    .iter()
                    .map(|e| {
                        let mut v = vec![
                            Reply::Int(i64::from(e.start)),
                            Reply::Int(i64::from(e.end)),
                            endpoint(&e.primary),
                        ];
                        v.extend(e.replicas.iter().map(endpoint));
                        Reply::Array(v)
                    })
                    .collect(),
            )
        }
        ("shards", 2) => {
            let node = c.node.lock();
            Reply::Array(
                node.topology()
                    .cluster_shards()
                    .iter()
                    .map(|sh| {
                        let slots = sh
                            .slots
                            .iter()
                            .flat_map(|(lo, hi)| {
                                [Reply::Int(i64::from(*lo)), Reply::Int(i64::from(*hi))]
                            })
                            .collect();
                        let nodes = sh
                            .nodes
                            .iter()
                            .map(|n| {
                                Reply::Map(vec![
                                    (text("id"), text(&n.endpoint.id.redis_name())),
                                    (text("port"), Reply::Int(i64::from(n.endpoint.port))),
                                    (text("ip"), text(&n.endpoint.host)),
                                    (text("endpoint"), text(&n.endpoint.host)),
                                    (
                                        text("role"),
                                        text(if n.is_primary { "master" } else { "replica" }),
                                    ),
                                    (text("replication-offset"), Reply::Int(n.repl_offset as i64)),
                                    (text("health"), text(n.health)),
                                ])
                            })
                            .collect();
                        Reply::Map(vec![
                            (text("slots"), Reply::Array(slots)),
                            (text("nodes"), Reply::Array(nodes)),
                        ])
                    })
                    .collect(),
            )
        }
        ("meet", 4 | 5) => {
            let host = String::from_utf8_lossy(a[2]).to_string();
            let port = crate::util::parse_int(a[3]).filter(|p| (1..=65535).contains(p));
            let bus = match a.get(4) {
                Some(b) => crate::util::parse_int(b).filter(|p| (1..=65535).contains(p)),
                None => port.map(|p| p + 10_000).filter(|p| *p <= 65535),
            };
            match (port, bus) {
                (Some(_), Some(bus)) => done(c.node.lock().meet(now, &host, bus as u16)),
                _ => err_owned(format!(
                    "ERR Invalid node address specified: {host}:{}",
                    String::from_utf8_lossy(a[3])
                )),
            }
        }
        ("addslots" | "delslots" | "addslotsrange" | "delslotsrange", n) if n >= 3 => {
            let ranges = sub.ends_with("range");
            match slot_list(&a[2..], ranges) {
                Ok(slots) if sub.starts_with("add") => done(c.node.lock().add_slots(now, &slots)),
                Ok(slots) => done(c.node.lock().del_slots(now, &slots)),
                Err(e) => e,
            }
        }
        ("setslot", 4 | 5) => {
            let slot = match crate::util::parse_int(a[2]) {
                Some(n) if (0..SLOT_COUNT as i64).contains(&n) => n as u32,
                _ => return Some(err("ERR Invalid or out of range slot")),
            };
            let op = String::from_utf8_lossy(a[3]).to_ascii_lowercase();
            let target = a.get(4).map(|b| node_arg(b));
            let op = match (op.as_str(), target) {
                ("stable", None) => SetSlot::Stable,
                ("migrating", Some(Ok(id))) => SetSlot::Migrating(id),
                ("importing", Some(Ok(id))) => SetSlot::Importing(id),
                ("node", Some(Ok(id))) => SetSlot::Node(id),
                (_, Some(Err(e))) => return Some(e),
                _ => return Some(syntax()),
            };
            let keys = {
                let idx = crate::store::shard_of(slot as u16);
                match &mut ctx.locks {
                    Locks::All(g) => g[idx].ks.slot_len(slot as u16),
                    _ => ctx.store.shard(idx).ks.slot_len(slot as u16),
                }
            };
            done(c.node.lock().set_slot(now, slot, op, keys as u64))
        }
        ("replicate", 3) => match node_arg(a[2]) {
            Ok(id) => done(c.node.lock().replicate(now, id)),
            Err(e) => e,
        },
        ("forget", 3) => match node_arg(a[2]) {
            Ok(id) => done(c.node.lock().forget(now, id)),
            Err(e) => e,
        },
        ("failover", 2 | 3) => {
            let mode = match a.get(2).map(|m| m.to_ascii_lowercase()) {
                None => FailoverMode::Default,
                Some(m) if m == b"force" => FailoverMode::Force,
                Some(m) if m == b"takeover" => FailoverMode::Takeover,
                Some(_) => return Some(syntax()),
            };
            done(c.node.lock().failover(now, mode))
        }
        ("reset", 2 | 3) => {
            let hard = match a.get(2).map(|m| m.to_ascii_lowercase()) {
                None => false,
                Some(m) if m == b"soft" => false,
                Some(m) if m == b"hard" => true,
                Some(_) => return Some(syntax()),
            };
            let mut dbsize = 0;
            ctx.each_shard(|s| dbsize += s.ks.len());
            let mut node = c.node.lock();
            if node.topology().myself().role.is_primary() && dbsize > 0 {
                return Some(err(
                    "ERR CLUSTER RESET can't be called with master nodes containing keys",
                ));
            }
            node.reset(
                now,
                hard.then(|| meridian_regions::NodeId(uuid::Uuid::new_v4())),
            );
            drop(node);
            c.poke();
            ok()
        }
        ("saveconfig", 2) => match c.save() {
            Ok(()) => ok(),
            Err(e) => err_owned(format!("ERR error saving the cluster node config: {e}")),
        },
        ("count-failure-reports", 3) => Reply::Int(0),
        ("replicas" | "slaves", 3) => match node_arg(a[2]) {
            Ok(id) => {
                let node = c.node.lock();
                match node.topology().cluster_replicas(id) {
                    Some(lines) => Reply::Array(lines.iter().map(|l| text(l)).collect()),
                    None if node.topology().node(id).is_none() => {
                        err_owned(format!("ERR Unknown node {}", id.redis_name()))
                    }
                    None => err("ERR The specified node is not a master"),
                }
            }
            Err(e) => e,
        },
        ("set-config-epoch", 3) => match crate::util::parse_int(a[2]) {
            Some(epoch) => done(c.node.lock().set_config_epoch(epoch)),
            None => not_int(),
        },
        ("bumpepoch", 2) => {
            let (bumped, epoch) = c.node.lock().bump_epoch(now);
            c.poke();
            Reply::Simple(std::borrow::Cow::Owned(format!(
                "{} {epoch}",
                if bumped { "BUMPED" } else { "STILL" }
            )))
        }
        _ => return None,
    };
    Some(reply)
}

/// A slot argument with Redis' replies: not a number → the integer error, out of range →
/// `out_of_range` (Redis words it differently per subcommand).
fn slot_arg(b: &[u8], out_of_range: &'static str) -> Result<u16, Reply> {
    match crate::util::parse_int(b) {
        None => Err(not_int()),
        Some(n) if (0..SLOT_COUNT as i64).contains(&n) => Ok(n as u16),
        Some(_) => Err(err(out_of_range)),
    }
}

fn cluster(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    if let Some(r) = cluster_topology(ctx, a) {
        // A slot assignment changed by hand (SETSLOT NODE, DELSLOTS…): what other regions
        // may store here follows at once (see `Cluster::publish_served`).
        if let Some(c) = &ctx.shared.cluster {
            c.publish_served(ctx.store);
        }
        return r;
    }
    let sub = &a[1];
    if sub.eq_ignore_ascii_case(b"keyslot") && a.len() == 3 {
        Reply::Int(i64::from(key_slot(a[2])))
    } else if sub.eq_ignore_ascii_case(b"countkeysinslot") && a.len() == 3 {
        let slot = match slot_arg(a[2], "ERR Invalid slot") {
            Ok(s) => s,
            Err(e) => return e,
        };
        let idx = crate::store::shard_of(slot);
        let n = match &mut ctx.locks {
            Locks::All(g) => g[idx].ks.slot_len(slot),
            _ => ctx.store.shard(idx).ks.slot_len(slot),
        };
        Reply::Int(n as i64)
    } else if sub.eq_ignore_ascii_case(b"getkeysinslot") && a.len() == 4 {
        const INVALID: &str = "ERR Invalid slot or number of keys";
        let slot = match slot_arg(a[2], INVALID) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let count = match crate::util::parse_int(a[3]) {
            None => return not_int(),
            Some(n) if n >= 0 => n as usize,
            Some(_) => return err(INVALID),
        };
        let idx = crate::store::shard_of(slot);
        let now = ctx.now_ms;
        let keys: Vec<Reply> = {
            let mut guard;
            let shard = match &mut ctx.locks {
                Locks::All(g) => &mut g[idx],
                _ => {
                    guard = ctx.store.shard(idx);
                    &mut *guard
                }
            };
            shard
                .ks
                .slot_keys(slot, now)
                .take(count)
                .map(|(k, _)| Reply::Bulk(Bytes::copy_from_slice(k)))
                .collect()
        };
        Reply::Array(keys)
    } else if sub.eq_ignore_ascii_case(b"info") && ctx.shared.cluster.is_none() {
        err("ERR This instance has cluster support disabled")
    } else if sub.eq_ignore_ascii_case(b"myid") && ctx.shared.cluster.is_none() {
        bulk(Bytes::from(ctx.shared.run_id.clone()))
    } else if sub.eq_ignore_ascii_case(b"help") && a.len() == 2 {
        Reply::Array(HELP.iter().map(|l| text(l)).collect())
    } else if ctx.shared.cluster.is_none() {
        err("ERR This instance has cluster support disabled")
    } else {
        // HELP lists every subcommand a cluster-enabled node serves, each line starting with
        // its name.
        let known = HELP[1..].iter().any(|l| {
            l.split(' ')
                .next()
                .is_some_and(|n| n.as_bytes().eq_ignore_ascii_case(sub))
        });
        if known {
            err_owned(format!(
                "ERR wrong number of arguments for 'cluster|{}' command",
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            ))
        } else {
            // Redis shows at most 128 bytes of the name.
            err_owned(format!(
                "ERR unknown subcommand '{}'. Try CLUSTER HELP.",
                String::from_utf8_lossy(&sub[..sub.len().min(128)])
            ))
        }
    }
}

/// `CLUSTER HELP`: after the heading, one line per subcommand a cluster-enabled node serves,
/// starting with its name (the wrong-arity error looks names up here).
const HELP: &[&str] = &[
    "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ADDSLOTS <slot> [<slot> ...]",
    "ADDSLOTSRANGE <start slot> <end slot> [<start slot> <end slot> ...]",
    "BUMPEPOCH",
    "COUNT-FAILURE-REPORTS <node-id>",
    "COUNTKEYSINSLOT <slot>",
    "DELSLOTS <slot> [<slot> ...]",
    "DELSLOTSRANGE <start slot> <end slot> [<start slot> <end slot> ...]",
    "FAILOVER [FORCE|TAKEOVER]",
    "FORGET <node-id>",
    "GETKEYSINSLOT <slot> <count>",
    "INFO",
    "KEYSLOT <key>",
    "MEET <ip> <port> [<bus-port>]",
    "MYID",
    "NODES",
    "REPLICAS <node-id>",
    "REPLICATE <node-id>",
    "RESET [HARD|SOFT]",
    "SAVECONFIG",
    "SET-CONFIG-EPOCH <epoch>",
    "SETSLOT <slot> (IMPORTING <node-id>|MIGRATING <node-id>|STABLE|NODE <node-id>)",
    "SHARDS",
    "SLAVES <node-id>",
    "SLOTS",
    "HELP",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Held, Runtime};
    use meridian_crdt::{Entry, RegionId};

    fn store(replicated: bool) -> Store {
        let runtime = Runtime::for_tests(0);
        Store::new(RegionId(1), 7, 16, runtime, replicated)
    }

    fn shard_idx(k: &[u8]) -> usize {
        crate::store::shard_of(key_slot(k))
    }

    fn sadd(store: &Store, key: &[u8], member: &[u8]) {
        let stamp = store.stamp(1_000);
        let mut g = store.shard(shard_idx(key));
        g.ks.write(key, stamp, 1_000, |w| w.sadd(member));
        g.ks.drain_deltas().for_each(drop);
    }

    fn del(store: &Store, key: &[u8]) {
        let stamp = store.stamp(1_000);
        let mut g = store.shard(shard_idx(key));
        g.ks.write(key, stamp, 1_000, |w| w.delete());
        g.ks.drain_deltas().for_each(drop);
    }

    fn exists(store: &Store, key: &[u8]) -> bool {
        let g = store.shard(shard_idx(key));
        g.ks.raw_entry(key).is_some_and(|e| e.is_alive())
    }

    /// What a target that merges every state it is sent holds of `key`.
    fn merged(sent: &[Vec<(Vec<u8>, Entry)>], key: &[u8]) -> Entry {
        let mut e = Entry::default();
        for (k, state) in sent.iter().flatten() {
            if k == key {
                e.merge(state);
            }
        }
        e
    }

    fn record(
        sent: &mut Vec<Vec<(Vec<u8>, Entry)>>,
        batch: &[(&[u8], Vec<u8>)],
    ) -> Result<(), Reply> {
        sent.push(
            batch
                .iter()
                .map(|(k, b)| (k.to_vec(), postcard::from_bytes(b).expect("a state")))
                .collect(),
        );
        Ok(())
    }

    /// The keys' shards are free while the states are on their way (another command, a
    /// merge, may run), and the keys are dropped once the target has them.
    #[test]
    fn migrate_holds_no_shard_lock_while_sending() {
        let store = store(false);
        let keys: [&[u8]; 3] = [b"{a}k", b"{b}k", b"{c}k"];
        for k in keys {
            sadd(&store, k, b"m");
        }
        let mut sends = 0;
        let moved = move_keys(&store, &keys, false, 1_000, |batch| {
            sends += 1;
            assert_eq!(batch.len(), 3);
            for k in keys {
                let mut held = Held::new(false);
                assert!(
                    store.try_take(&mut held, shard_idx(k)).is_some(),
                    "a shard is locked during the transfer"
                );
            }
            Ok(())
        });
        assert!(matches!(moved, Ok(true)));
        assert_eq!(sends, 1);
        assert!(keys.iter().all(|k| !exists(&store, k)));
        let none = move_keys(&store, &keys, false, 1_000, |_| Ok(()));
        assert!(matches!(none, Ok(false)));
    }

    /// A write acknowledged between the snapshot and the drop is sent again: the target
    /// ends with it, and the key leaves only once the target has its current state.
    #[test]
    fn a_key_written_while_on_its_way_is_sent_again() {
        for replicated in [false, true] {
            let store = store(replicated);
            sadd(&store, b"k", b"old");
            let mut sent = Vec::new();
            let moved = move_keys(&store, &[b"k"], false, 1_000, |batch| {
                if sent.is_empty() {
                    sadd(&store, b"k", b"new");
                }
                record(&mut sent, batch)
            });
            assert!(matches!(moved, Ok(true)));
            assert_eq!(sent.len(), 2);
            let at_target = merged(&sent, b"k");
            let set = at_target.as_set().expect("a set");
            assert!(set.contains(b"old") && set.contains(b"new"));
            assert!(!exists(&store, b"k"));
        }
    }

    /// A DEL acknowledged between the snapshot and the drop reaches the target: with peer
    /// regions as the tombstone, in one region (no tombstones) as the removal of what the
    /// target was sent.
    #[test]
    fn a_key_deleted_while_on_its_way_is_deleted_at_the_target() {
        for replicated in [false, true] {
            let store = store(replicated);
            sadd(&store, b"k", b"m");
            let mut sent = Vec::new();
            let moved = move_keys(&store, &[b"k"], false, 1_000, |batch| {
                if sent.is_empty() {
                    del(&store, b"k");
                }
                record(&mut sent, batch)
            });
            assert!(matches!(moved, Ok(true)), "replicated: {replicated}");
            assert_eq!(sent.len(), 2, "replicated: {replicated}");
            assert!(!merged(&sent, b"k").is_alive(), "replicated: {replicated}");
        }
    }

    /// A key written during every round stays here (nothing lost), with an error; COPY
    /// sends once and keeps the key; a failed send keeps the key.
    #[test]
    fn a_key_that_keeps_changing_stays_and_copy_keeps_keys() {
        let store = store(false);
        sadd(&store, b"k", b"m0");
        let mut n = 0;
        let moved = move_keys(&store, &[b"k"], false, 1_000, |_| {
            n += 1;
            sadd(&store, b"k", format!("m{n}").as_bytes());
            Ok(())
        });
        assert!(matches!(moved, Err(Reply::Error(e)) if e.contains("stayed here")));
        assert_eq!(n, MIGRATE_ROUNDS);
        assert!(exists(&store, b"k"));
        let mut sends = 0;
        let copied = move_keys(&store, &[b"k", b"k"], true, 1_000, |batch| {
            sends += 1;
            assert_eq!(batch.len(), 1, "a key named twice is sent once");
            Ok(())
        });
        assert!(matches!(copied, Ok(true)));
        assert_eq!(sends, 1);
        assert!(exists(&store, b"k"));
        let failed = move_keys(&store, &[b"k"], false, 1_000, |_| Err(err("IOERR x")));
        assert!(failed.is_err());
        assert!(exists(&store, b"k"));
    }

    /// A huge ADDSLOTSRANGE request is refused after one pass, allocating at most one slot
    /// map; a slot named twice is refused with Redis' text.
    #[test]
    fn slot_lists_are_validated_before_allocating() {
        let all: Vec<&[u8]> = vec![b"0", b"16383"];
        assert_eq!(slot_list(&all, true).map(|v| v.len()), Ok(SLOT_COUNT));
        let repeated: Vec<&[u8]> = all.iter().copied().cycle().take(2_000_000).collect();
        assert!(matches!(
            slot_list(&repeated, true),
            Err(Reply::Error(e)) if e == "ERR Slot 0 specified multiple times"
        ));
        let twice: Vec<&[u8]> = vec![b"5", b"7", b"5"];
        assert!(slot_list(&twice, false).is_err());
        let bad: Vec<&[u8]> = vec![b"10", b"16384"];
        assert!(slot_list(&bad, true).is_err());
        let odd: Vec<&[u8]> = vec![b"1"];
        assert!(slot_list(&odd, true).is_err());
    }
}
