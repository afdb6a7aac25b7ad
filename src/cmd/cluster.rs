//! Cluster commands. Slot arithmetic (KEYSLOT, COUNTKEYSINSLOT, GETKEYSINSLOT) works on any
//! node; with `[cluster]` enabled the topology subcommands (INFO, MYID, NODES, SLOTS, SHARDS,
//! MEET, ADDSLOTS[RANGE], DELSLOTS[RANGE], SETSLOT, REPLICATE, FAILOVER, FORGET, RESET,
//! SAVECONFIG, REPLICAS/SLAVES, SET-CONFIG-EPOCH, BUMPEPOCH) drive the node's `ClusterNode`
//! (src/cluster.rs), and ASKING/READONLY/READWRITE set the connection's routing flags.

use super::*;
use meridian_crdt::{key_slot, SLOT_COUNT};

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("cluster", -2, 0, 0, 0, 0, cluster),
        spec!("readonly", 1, FAST, 0, 0, 0, readonly),
        spec!("readwrite", 1, FAST, 0, 0, 0, readwrite),
        spec!("asking", 1, FAST, 0, 0, 0, asking),
        // Keys are found (and locked) by the handler: `key` may be "" with KEYS.
        spec!("migrate", -6, WRITE, 0, 0, 0, migrate),
    ]
}

/// `MIGRATE host port key|"" destination-db timeout [COPY] [REPLACE] [AUTH pw]
/// [AUTH2 user pw] [KEYS key …]`: move keys to another node of the region with their CRDT
/// state intact (the target merges it: [`migrate_target`]), then drop them here without a
/// delta (no tombstone for the other regions: the key lives on in this one); this node's
/// replicas are told to drop them too. Blocks this connection's thread for the transfer,
/// like Redis' MIGRATE.
fn migrate(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    use std::io::{BufRead, BufReader, Write};
    let host = String::from_utf8_lossy(a[1]).to_string();
    let Some(port) = crate::util::parse_int(a[2]).filter(|p| (1..=65535).contains(p)) else {
        return err("ERR Invalid port");
    };
    let Some(timeout_ms) = crate::util::parse_int(a[5]).filter(|t| *t >= 0) else {
        return not_int();
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
    // Collect what exists, with its whole state.
    let mut batch = Vec::new();
    for k in &keys {
        let shard = ctx.shard(k);
        if let Some(e) = shard.ks.raw_entry(k).filter(|e| e.is_alive()) {
            match postcard::to_allocvec(&*e) {
                Ok(blob) => batch.push((*k, blob)),
                Err(e) => return err_owned(format!("ERR cannot serialize {k:?}: {e}")),
            }
        }
    }
    if batch.is_empty() {
        return Reply::Simple(std::borrow::Cow::Borrowed("NOKEY"));
    }
    let timeout = std::time::Duration::from_millis((timeout_ms as u64).max(100));
    let ioerr = |what: &str| err_owned(format!("IOERR error or timeout {what} target instance"));
    let addr = format!("{host}:{port}");
    let Some(sock) = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .ok()
        .and_then(|mut it| it.next())
    else {
        return ioerr("connecting to");
    };
    let Ok(tcp) = std::net::TcpStream::connect_timeout(&sock, timeout) else {
        return ioerr("connecting to");
    };
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    // `tls-cluster yes`: TLS to the target (its `tls-port`), the handshake on the first write.
    let tls = ctx.shared.tls.as_ref().and_then(|t| t.cluster.as_ref());
    let Ok(mut stream) = crate::tls::BlockingStream::new(tcp, &host, tls) else {
        return ioerr("connecting to");
    };
    let mut out = bytes::BytesMut::new();
    match auth {
        Some((Some(u), p)) => crate::frame::encode_command(&[&b"AUTH"[..], u, p], &mut out),
        Some((None, p)) => crate::frame::encode_command(&[&b"AUTH"[..], p], &mut out),
        None => {}
    }
    for (k, blob) in &batch {
        let [cmd, sub] = MIGRATE_TARGET;
        crate::frame::encode_command(&[cmd, sub, k, blob], &mut out);
    }
    if stream
        .write_all(&out)
        .and_then(|()| stream.flush())
        .is_err()
    {
        return ioerr("writing to");
    }
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    for _ in 0..batch.len() + usize::from(auth.is_some()) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 && line.starts_with('+') => {}
            Ok(n) if n > 0 => {
                return err_owned(format!(
                    "ERR Target instance replied with error: {}",
                    &line.trim_end()[1..]
                ))
            }
            _ => return ioerr("reading from"),
        }
    }
    if !copy {
        for (k, _) in &batch {
            let shard = ctx.shard(k);
            if shard.ks.take_key(k).is_some() {
                // Replicas drop their copy too (the key lives on at the target).
                shard.feed.push_forget(k);
                shard.touch_key(k);
            }
        }
    }
    ok()
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
