//! Connection and server commands: PING, HELLO, CLIENT, COMMAND, CONFIG, INFO, TIME, and the
//! table entries of the transaction commands (executed by the connection itself).

use super::*;
use meridian_crdt::EvictionPolicy;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("ping", -1, FAST | STALE, 0, 0, 0, ping),
        spec!("echo", 2, FAST, 0, 0, 0, echo),
        spec!("hello", -1, FAST | NO_MULTI | STALE, 0, 0, 0, hello),
        spec!("quit", -1, FAST, 0, 0, 0, quit),
        spec!("reset", 1, FAST | NO_MULTI, 0, 0, 0, reset),
        spec!("select", 2, FAST, 0, 0, 0, select),
        spec!("command", -1, STALE, 0, 0, 0, command),
        spec!("client", -2, ADMIN, 0, 0, 0, client),
        spec!("config", -2, ADMIN, 0, 0, 0, config),
        spec!("info", -1, STALE, 0, 0, 0, info),
        spec!("time", 1, FAST, 0, 0, 0, time),
        spec!("lastsave", 1, FAST, 0, 0, 0, lastsave),
        spec!("slowlog", -2, ADMIN | STALE, 0, 0, 0, slowlog),
        spec!("latency", -2, ADMIN | STALE, 0, 0, 0, latency),
        spec!("meridian", -2, ADMIN, 0, 0, 0, meridian),
        spec!("debug", -2, ADMIN | NO_MULTI, 0, 0, 0, debug),
        spec!("multi", 1, FAST | NO_MULTI, 0, 0, 0, in_connection),
        spec!("exec", 1, NO_MULTI, 0, 0, 0, in_connection),
        spec!("discard", 1, FAST | NO_MULTI, 0, 0, 0, in_connection),
        spec!("watch", -2, FAST | NO_MULTI, 1, -1, 1, in_connection),
        spec!("unwatch", 1, FAST | NO_MULTI, 0, 0, 0, in_connection),
    ]
}

/// DEBUG, served only with `enable-debug-command` (Redis 7's option and refusal). One
/// subcommand: `DEBUG PANIC-CLIENT` panics this connection's task (the node keeps serving;
/// the tests use it to check a panicking connection gives back everything it held).
fn debug(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    use crate::limits::DebugCommand;
    let allowed = match ctx.shared.limits.debug_command {
        DebugCommand::Yes => true,
        DebugCommand::Local => ctx
            .conn
            .addr
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback()),
        DebugCommand::No => false,
    };
    if !allowed {
        return err("ERR DEBUG command not allowed. If the enable-debug-command option is set to \"local\", you can run it from a local connection, otherwise you need to set this option in the configuration file, and then restart the server.");
    }
    if a[1].eq_ignore_ascii_case(b"panic-client") {
        panic!("DEBUG PANIC-CLIENT from client {}", ctx.conn.id);
    }
    unknown_sub("DEBUG", a[1])
}

/// MULTI/EXEC/DISCARD/WATCH/UNWATCH are run by the connection; reaching here is a bug.
fn in_connection(_ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    err("ERR internal: transaction command dispatched outside the connection")
}

fn ping(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    if ctx.conn.subscribe_mode() && a.len() <= 2 {
        // Redis in RESP2 subscribe mode: a push-shaped ["pong", <message or "">].
        let msg = a.get(1).map_or(Bytes::new(), |m| Bytes::copy_from_slice(m));
        return Reply::Array(vec![bulk(Bytes::from_static(b"pong")), bulk(msg)]);
    }
    match a.len() {
        1 => Reply::Simple(Cow::Borrowed("PONG")),
        2 => bulk(Bytes::copy_from_slice(a[1])),
        _ => arity("ping"),
    }
}

fn echo(_ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    bulk(Bytes::copy_from_slice(a[1]))
}

fn hello(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let mut i = 1;
    let mut resp3 = ctx.conn.resp3;
    if let Some(v) = a.get(1) {
        match crate::util::parse_int(v) {
            Some(2) => resp3 = false,
            Some(3) => resp3 = true,
            Some(_) => return err("NOPROTO unsupported protocol version"),
            None => return err("ERR Protocol version is not an integer or out of range"),
        }
        i = 2;
    }
    // Every option is parsed before any takes effect (as Redis).
    let (mut auth, mut name) = (None, None);
    while i < a.len() {
        if a[i].eq_ignore_ascii_case(b"auth") && i + 2 < a.len() {
            auth = Some((a[i + 1], a[i + 2]));
            i += 3;
        } else if a[i].eq_ignore_ascii_case(b"setname") && i + 1 < a.len() {
            name = Some(a[i + 1]);
            i += 2;
        } else {
            return err_owned(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(a[i])
            ));
        }
    }
    if let Some((user, pass)) = auth {
        if let Err(e) = super::acl::login(ctx, user, pass, "HELLO") {
            return e;
        }
    }
    if !ctx.conn.session.authenticated {
        return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if let Some(n) = name {
        if n.iter().any(|&b| b <= b' ' || b > b'~') {
            return err("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        let n = (!n.is_empty()).then(|| own(n));
        ctx.conn.name = n.clone();
        if let Some(c) = ctx.shared.clients.lock().get_mut(&ctx.conn.id) {
            c.name = n;
        }
    }
    ctx.conn.resp3 = resp3;
    if let Some(s) = &ctx.conn.subs {
        s.set_resp3(resp3);
    }
    let s = |t: &'static str| Reply::Bulk(Bytes::from_static(t.as_bytes()));
    Reply::Map(vec![
        (s("server"), s("redis")),
        (s("version"), s(crate::REDIS_COMPAT_VERSION)),
        (s("proto"), Reply::Int(if ctx.conn.resp3 { 3 } else { 2 })),
        (s("id"), Reply::Int(ctx.conn.id as i64)),
        (s("mode"), s("standalone")),
        (s("role"), s("master")),
        (s("modules"), Reply::Array(vec![])),
    ])
}

fn quit(_ctx: &mut Ctx, _a: &[&[u8]]) -> Outcome {
    Outcome::Close(ok())
}

fn reset(ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    ctx.conn.resp3 = false;
    ctx.conn.name = None;
    ctx.conn.multi = None;
    ctx.conn.multi_error = false;
    if let Some(s) = ctx.conn.subs.as_mut() {
        s.clear();
        s.set_resp3(false);
    }
    // As Redis: back to the default user, authenticated only if it needs no password.
    ctx.conn.session.start(&ctx.shared.acl);
    if let Some(c) = ctx.shared.clients.lock().get_mut(&ctx.conn.id) {
        c.user = "default".into();
    }
    Reply::Simple(Cow::Borrowed("RESET"))
}

fn select(_ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    match crate::util::parse_int(a[1]) {
        Some(0) => ok(),
        Some(_) => err("ERR DB index is out of range"),
        None => not_int(),
    }
}

fn command_info(spec: &Spec) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(Bytes::from_static(spec.name.as_bytes())),
        Reply::Int(i64::from(spec.arity)),
        Reply::Set(
            spec.flag_names()
                .into_iter()
                .map(|f| Reply::Simple(Cow::Borrowed(f)))
                .collect(),
        ),
        Reply::Int(i64::from(spec.first_key)),
        Reply::Int(i64::from(spec.last_key)),
        Reply::Int(i64::from(spec.step)),
    ])
}

fn command(_ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let Some(sub) = a.get(1) else {
        let mut all: Vec<&Spec> = table().values().collect();
        all.sort_by_key(|s| s.name);
        return Reply::Array(all.into_iter().map(command_info).collect());
    };
    if sub.eq_ignore_ascii_case(b"count") {
        Reply::Int(table().len() as i64)
    } else if sub.eq_ignore_ascii_case(b"info") {
        Reply::Array(
            a[2..]
                .iter()
                .map(|n| lookup(n).map_or(Reply::Null, command_info))
                .collect(),
        )
    } else if sub.eq_ignore_ascii_case(b"docs") {
        // Minimal docs: enough for redis-cli's hints and client libraries.
        let names: Vec<&Spec> = if a.len() > 2 {
            a[2..].iter().filter_map(|n| lookup(n)).collect()
        } else {
            table().values().collect()
        };
        Reply::Map(
            names
                .into_iter()
                .map(|s| {
                    (
                        Reply::Bulk(Bytes::from_static(s.name.as_bytes())),
                        Reply::Map(vec![(
                            Reply::Bulk(Bytes::from_static(b"summary")),
                            Reply::Bulk(Bytes::from_static(b"")),
                        )]),
                    )
                })
                .collect(),
        )
    } else if sub.eq_ignore_ascii_case(b"getkeys") {
        let Some(spec) = a.get(2).and_then(|n| lookup(n)) else {
            return err("ERR Invalid command specified");
        };
        let args = &a[2..];
        if !spec.arity_ok(args.len()) {
            return err("ERR Invalid number of arguments specified for command");
        }
        Reply::Array(
            spec.key_indices(args)
                .map(|i| Reply::Bulk(Bytes::copy_from_slice(args[i])))
                .collect(),
        )
    } else if sub.eq_ignore_ascii_case(b"list") {
        let mut names: Vec<&str> = table().values().map(|s| s.name).collect();
        names.sort_unstable();
        Reply::Array(
            names
                .into_iter()
                .map(|n| Reply::Bulk(Bytes::from_static(n.as_bytes())))
                .collect(),
        )
    } else {
        unknown_sub("COMMAND", sub)
    }
}

fn unknown_sub(cmd: &str, sub: &[u8]) -> Reply {
    err_owned(format!(
        "ERR unknown subcommand '{}'. Try {cmd} HELP.",
        String::from_utf8_lossy(sub)
    ))
}

fn client_line(
    ctx: &Ctx,
    id: u64,
    (addr, local_port): (&str, u16),
    name: &[u8],
    created_ms: u64,
    cmd: &str,
    user: &str,
) -> String {
    format!(
        "id={id} addr={addr} laddr={}:{} fd=0 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={cmd} user={user} redir=-1 resp={}",
        ctx.shared.config.bind,
        local_port,
        String::from_utf8_lossy(name),
        ctx.now_ms.saturating_sub(created_ms) / 1000,
        if ctx.conn.resp3 && id == ctx.conn.id { 3 } else { 2 },
    )
}

fn client(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let sub = &a[1];
    if sub.eq_ignore_ascii_case(b"setname") && a.len() == 3 {
        if a[2].iter().any(|&b| b <= b' ' || b > b'~') {
            return err("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        let name = (!a[2].is_empty()).then(|| own(a[2]));
        ctx.conn.name = name.clone();
        if let Some(c) = ctx.shared.clients.lock().get_mut(&ctx.conn.id) {
            c.name = name;
        }
        ok()
    } else if sub.eq_ignore_ascii_case(b"getname") && a.len() == 2 {
        bulk_opt(ctx.conn.name.clone())
    } else if sub.eq_ignore_ascii_case(b"id") && a.len() == 2 {
        Reply::Int(ctx.conn.id as i64)
    } else if sub.eq_ignore_ascii_case(b"info") && a.len() == 2 {
        let c = &ctx.conn;
        let line = client_line(
            ctx,
            c.id,
            (&c.addr, c.local_port),
            c.name.as_deref().unwrap_or(b""),
            c.created_ms,
            "client|info",
            c.session.user_name(),
        );
        Reply::Verbatim(format!("{line}\n"))
    } else if sub.eq_ignore_ascii_case(b"list") {
        let clients: Vec<_> = {
            let map = ctx.shared.clients.lock();
            let mut v: Vec<_> = map
                .iter()
                .map(|(id, c)| {
                    (
                        *id,
                        (c.addr.clone(), c.local_port),
                        c.name.clone(),
                        c.created_ms,
                        c.user.clone(),
                    )
                })
                .collect();
            v.sort_by_key(|c| c.0);
            v
        };
        let mut out = String::new();
        for (id, addr, name, created, user) in clients {
            let cmd = if id == ctx.conn.id {
                "client|list"
            } else {
                "NULL"
            };
            let _ = writeln!(
                out,
                "{}",
                client_line(
                    ctx,
                    id,
                    (&addr.0, addr.1),
                    name.as_deref().unwrap_or(b""),
                    created,
                    cmd,
                    &user
                )
            );
        }
        Reply::Verbatim(out)
    } else if sub.eq_ignore_ascii_case(b"unblock") && (a.len() == 3 || a.len() == 4) {
        let Some(id) = crate::util::parse_int(a[2]) else {
            return not_int();
        };
        let how = match a.get(3) {
            None => crate::store::UNBLOCK_TIMEOUT,
            Some(m) if m.eq_ignore_ascii_case(b"timeout") => crate::store::UNBLOCK_TIMEOUT,
            Some(m) if m.eq_ignore_ascii_case(b"error") => crate::store::UNBLOCK_ERROR,
            Some(_) => return err("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"),
        };
        let waiter = u64::try_from(id)
            .ok()
            .and_then(|id| ctx.store.stats.waiters.lock().get(&id).cloned());
        match waiter {
            Some(w) => {
                w.unblock.store(how, std::sync::atomic::Ordering::Relaxed);
                w.notify.notify_one();
                Reply::Int(1)
            }
            None => Reply::Int(0),
        }
    } else if sub.eq_ignore_ascii_case(b"kill")
        && a.len() == 4
        && a[2].eq_ignore_ascii_case(b"type")
    {
        // Only the replica links are killable here (tests and operators use it to force a
        // reconnect and a partial resync).
        if a[3].eq_ignore_ascii_case(b"replica") || a[3].eq_ignore_ascii_case(b"slave") {
            Reply::Int(ctx.shared.inregion.drop_replica_links() as i64)
        } else {
            Reply::Int(0)
        }
    } else if sub.eq_ignore_ascii_case(b"setinfo")
        || sub.eq_ignore_ascii_case(b"no-evict")
        || sub.eq_ignore_ascii_case(b"no-touch")
    {
        ok()
    } else {
        unknown_sub("CLIENT", sub)
    }
}

/// Current value of a config parameter as text, if known.
fn config_value(ctx: &Ctx, name: &str) -> Option<String> {
    let rt = &ctx.store.runtime;
    let c = &ctx.shared.config;
    Some(match name {
        "maxmemory" => rt.maxmemory.load(Relaxed).to_string(),
        "maxmemory-policy" => rt.policy.lock().name().to_string(),
        "maxmemory-samples" => rt.samples.load(Relaxed).to_string(),
        "maxclients" => rt.maxclients.load(Relaxed).to_string(),
        "slowlog-log-slower-than" => ctx.shared.cmdstats.slower_than_us.load(Relaxed).to_string(),
        "slowlog-max-len" => ctx
            .shared
            .cmdstats
            .slowlog_max_len
            .load(Relaxed)
            .to_string(),
        "latency-monitor-threshold" => ctx
            .shared
            .cmdstats
            .latency_threshold_ms
            .load(Relaxed)
            .to_string(),
        "proto-max-bulk-len" => rt.proto_max_bulk_len.load(Relaxed).to_string(),
        "port" => c.port.to_string(),
        "bind" => c.bind.clone(),
        "hz" => c.hz.to_string(),
        "databases" => "1".into(),
        "save" => String::new(),
        "appendonly" => "no".into(),
        "timeout" => ctx.shared.limits.timeout_secs.load(Relaxed).to_string(),
        "client-query-buffer-limit" => ctx.shared.limits.query_buffer.load(Relaxed).to_string(),
        "client-output-buffer-limit" => ctx.shared.limits.output_text(),
        "enable-debug-command" => c.enable_debug_command.to_ascii_lowercase(),
        "cluster-enabled" => "no".into(),
        "region" => c.region.clone(),
        "repl-backlog-size" => ctx.store.feed().backlog_info().0.to_string(),
        "min-replicas-to-write" => ctx
            .shared
            .inregion
            .min_replicas_to_write
            .load(Relaxed)
            .to_string(),
        "min-replicas-max-lag" => ctx
            .shared
            .inregion
            .min_replicas_max_lag_s
            .load(Relaxed)
            .to_string(),
        "requirepass" => ctx.shared.acl.requirepass(),
        "protected-mode" => yes_no(ctx.shared.acl.protected_mode.load(Relaxed)),
        "jemalloc-bg-thread" => yes_no(crate::memory::background_thread()),
        "aclfile" => ctx
            .shared
            .acl
            .aclfile
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string()),
        "masteruser" => ctx.shared.acl.master_auth().0.unwrap_or_default(),
        "masterauth" => ctx.shared.acl.master_auth().1.unwrap_or_default(),
        "acllog-max-len" => ctx.shared.acl.log_max_len.load(Relaxed).to_string(),
        "replicaof" => ctx
            .shared
            .inregion
            .following()
            .map_or_else(String::new, |p| format!("{} {}", p.host, p.port)),
        "tls-port" => c.tls_port.to_string(),
        "tls-cert-file" => path_text(&c.tls_cert_file),
        "tls-key-file" => path_text(&c.tls_key_file),
        "tls-ca-cert-file" => path_text(&c.tls_ca_cert_file),
        "tls-ca-cert-dir" => path_text(&c.tls_ca_cert_dir),
        "tls-auth-clients" => c.tls_auth_clients.name().into(),
        "tls-replication" => yes_no(c.tls_replication),
        "tls-cluster" => yes_no(c.tls_cluster),
        _ => return None,
    })
}

fn path_text(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map_or_else(String::new, |p| p.display().to_string())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

const CONFIG_NAMES: [&str; 39] = [
    "maxmemory",
    "maxmemory-policy",
    "maxmemory-samples",
    "maxclients",
    "proto-max-bulk-len",
    "port",
    "bind",
    "hz",
    "databases",
    "save",
    "appendonly",
    "timeout",
    "cluster-enabled",
    "region",
    "repl-backlog-size",
    "min-replicas-to-write",
    "min-replicas-max-lag",
    "replicaof",
    "requirepass",
    "protected-mode",
    "jemalloc-bg-thread",
    "slowlog-log-slower-than",
    "slowlog-max-len",
    "latency-monitor-threshold",
    "aclfile",
    "masteruser",
    "masterauth",
    "acllog-max-len",
    "tls-port",
    "tls-cert-file",
    "tls-key-file",
    "tls-ca-cert-file",
    "tls-ca-cert-dir",
    "tls-auth-clients",
    "tls-replication",
    "tls-cluster",
    "client-query-buffer-limit",
    "client-output-buffer-limit",
    "enable-debug-command",
];

/// A validated CONFIG SET assignment, applied once every pair parsed.
type ConfigChange = Box<dyn FnOnce(&Store, &crate::shared::Shared)>;

fn config(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let sub = &a[1];
    if sub.eq_ignore_ascii_case(b"get") {
        if a.len() < 3 {
            return arity("config|get");
        }
        let mut out = Vec::new();
        for name in CONFIG_NAMES {
            if a[2..]
                .iter()
                .any(|p| crate::util::glob_match(p, name.as_bytes(), true))
            {
                if let Some(v) = config_value(ctx, name) {
                    out.push((
                        Reply::Bulk(Bytes::from_static(name.as_bytes())),
                        Reply::Bulk(Bytes::from(v)),
                    ));
                }
            }
        }
        // The encoding tunables; an old `ziplist` name answers when asked for by name.
        for (i, t) in super::encoding::TUNABLES.iter().enumerate() {
            for name in std::iter::once(t.name).chain(t.alias) {
                let asked = a[2..].iter().any(|p| {
                    if name == t.name {
                        crate::util::glob_match(p, name.as_bytes(), true)
                    } else {
                        p.eq_ignore_ascii_case(name.as_bytes())
                    }
                });
                if asked {
                    out.push((
                        Reply::Bulk(Bytes::from_static(name.as_bytes())),
                        Reply::Bulk(Bytes::from(ctx.shared.encoding.get(i).to_string())),
                    ));
                }
            }
        }
        Reply::Map(out)
    } else if sub.eq_ignore_ascii_case(b"set") {
        if a.len() < 4 || !a.len().is_multiple_of(2) {
            return arity("config|set");
        }
        // Validate everything first: CONFIG SET is all-or-nothing.
        let mut changes: Vec<ConfigChange> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for kv in a[2..].chunks(2) {
            let name = String::from_utf8_lossy(kv[0]).to_ascii_lowercase();
            let value = String::from_utf8_lossy(kv[1]).to_string();
            // Redis' wording: "CONFIG SET failed (possibly related to argument '<name>') - <why>".
            let fail = |why: &str| {
                err_owned(format!(
                    "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
                ))
            };
            if seen.contains(&name) {
                return fail("duplicate parameter");
            }
            seen.push(name.clone());
            let not_integer = "argument couldn't be parsed into an integer";
            let not_memory = "argument must be a memory value";
            match name.as_str() {
                "maxmemory" => {
                    let Some(n) = crate::config::parse_memory(&value) else {
                        return fail(not_memory);
                    };
                    changes.push(Box::new(move |s: &Store, _: &crate::shared::Shared| {
                        s.runtime.maxmemory.store(n, Relaxed)
                    }));
                }
                "maxmemory-policy" => {
                    let Some(p) = EvictionPolicy::parse(&value) else {
                        return fail("argument(s) must be one of the following: volatile-lru, volatile-lfu, volatile-random, volatile-ttl, allkeys-lru, allkeys-lfu, allkeys-random, noeviction");
                    };
                    changes.push(Box::new(move |s: &Store, _: &crate::shared::Shared| {
                        *s.runtime.policy.lock() = p
                    }));
                }
                "maxmemory-samples" => {
                    let Ok(n) = value.parse::<i64>() else {
                        return fail(not_integer);
                    };
                    // Bounded tighter than Redis (1..=2^31-1): each sample costs a lookup.
                    if !(1..=64).contains(&n) {
                        return fail("argument must be between 1 and 64 inclusive");
                    }
                    let n = n as usize;
                    changes.push(Box::new(move |s: &Store, _: &crate::shared::Shared| {
                        s.runtime.samples.store(n, Relaxed)
                    }));
                }
                "slowlog-log-slower-than" | "slowlog-max-len" | "latency-monitor-threshold" => {
                    let Ok(n) = value.parse::<i64>() else {
                        return fail(not_integer);
                    };
                    let min = if name == "slowlog-log-slower-than" {
                        i64::MIN
                    } else {
                        0
                    };
                    if n < min {
                        return fail(
                            "argument must be between 0 and 9223372036854775807 inclusive",
                        );
                    }
                    let which = name.clone();
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        let c = &sh.cmdstats;
                        match which.as_str() {
                            "slowlog-log-slower-than" => c.slower_than_us.store(n, Relaxed),
                            "slowlog-max-len" => c.slowlog_max_len.store(n as u64, Relaxed),
                            _ => c.latency_threshold_ms.store(n as u64, Relaxed),
                        }
                    }));
                }
                "maxclients" => {
                    let Ok(n) = value.parse::<i64>() else {
                        return fail(not_integer);
                    };
                    if !(1..=u32::MAX as i64).contains(&n) {
                        return fail("argument must be between 1 and 4294967295 inclusive");
                    }
                    let n = n as usize;
                    changes.push(Box::new(move |s: &Store, _: &crate::shared::Shared| {
                        s.runtime.maxclients.store(n, Relaxed)
                    }));
                }
                "proto-max-bulk-len" => {
                    let Some(n) =
                        crate::config::parse_memory(&value).and_then(|n| usize::try_from(n).ok())
                    else {
                        return fail(not_memory);
                    };
                    if n < 1024 * 1024 {
                        return fail(
                            "argument must be between 1048576 and 9223372036854775807 inclusive",
                        );
                    }
                    changes.push(Box::new(move |s: &Store, _: &crate::shared::Shared| {
                        s.runtime.proto_max_bulk_len.store(n, Relaxed)
                    }));
                }
                "repl-backlog-size" => {
                    let Some(n) = crate::config::parse_memory(&value)
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| *n >= 1)
                    else {
                        return fail(not_memory);
                    };
                    changes.push(Box::new(move |s: &Store, _: &crate::shared::Shared| {
                        s.feed().set_backlog_size(n)
                    }));
                }
                "min-replicas-to-write" | "min-slaves-to-write" => {
                    let Some(n) = value.parse::<u32>().ok() else {
                        return fail(not_integer);
                    };
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        sh.inregion.min_replicas_to_write.store(n as usize, Relaxed)
                    }));
                }
                "min-replicas-max-lag" | "min-slaves-max-lag" => {
                    let Some(n) = value.parse::<u32>().ok() else {
                        return fail(not_integer);
                    };
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        sh.inregion
                            .min_replicas_max_lag_s
                            .store(u64::from(n), Relaxed)
                    }));
                }
                "requirepass" => {
                    let pass = kv[1].to_vec();
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        sh.acl.set_requirepass(&pass)
                    }));
                }
                "jemalloc-bg-thread" => {
                    let Some(on) = crate::config::parse_yes_no(&value) else {
                        return fail("argument must be 'yes' or 'no'");
                    };
                    changes.push(Box::new(move |_: &Store, _: &crate::shared::Shared| {
                        crate::memory::set_background_thread(on);
                    }));
                }
                "protected-mode" => {
                    let Some(on) = crate::config::parse_yes_no(&value) else {
                        return fail("argument must be 'yes' or 'no'");
                    };
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        sh.acl.protected_mode.store(on, Relaxed)
                    }));
                }
                "masteruser" | "masterauth" => {
                    let v = (!value.is_empty()).then(|| value.clone());
                    let user = name == "masteruser";
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        if user {
                            sh.acl.set_masteruser(v)
                        } else {
                            sh.acl.set_masterauth(v)
                        }
                    }));
                }
                "acllog-max-len" => {
                    let Ok(n) = value.parse::<usize>() else {
                        return fail(not_integer);
                    };
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        sh.acl.log_max_len.store(n, Relaxed)
                    }));
                }
                "timeout" => {
                    let Ok(n) = value.parse::<i64>() else {
                        return fail(not_integer);
                    };
                    if !(0..=i64::from(i32::MAX)).contains(&n) {
                        return fail("argument must be between 0 and 2147483647 inclusive");
                    }
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        sh.limits.timeout_secs.store(n as u64, Relaxed)
                    }));
                }
                "client-query-buffer-limit" => {
                    let Some(n) = crate::config::parse_memory(&value) else {
                        return fail(not_memory);
                    };
                    if n < 1024 * 1024 {
                        return fail(
                            "argument must be between 1048576 and 9223372036854775807 inclusive",
                        );
                    }
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        sh.limits.query_buffer.store(n, Relaxed)
                    }));
                }
                "client-output-buffer-limit" => {
                    let current = ctx.shared.limits.outputs();
                    let limits = match crate::limits::parse_output_limits(&value, current) {
                        Ok(l) => l,
                        Err(why) => return fail(why),
                    };
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        sh.limits.set_output(limits)
                    }));
                }
                "enable-debug-command" => return fail("can't set immutable config"),
                "save" | "appendonly" => {}
                // TLS is set up at start (a restart reloads certificates).
                n if n.starts_with("tls-") && CONFIG_NAMES.contains(&n) => {
                    return fail("can't set immutable config");
                }
                n if super::encoding::find(n).is_some() => {
                    let i = super::encoding::find(n).unwrap_or(0);
                    let t = &super::encoding::TUNABLES[i];
                    let Ok(v) = value.parse::<i64>() else {
                        return fail(not_integer);
                    };
                    if !(t.min..=t.max).contains(&v) {
                        return err_owned(format!(
                            "ERR CONFIG SET failed (possibly related to argument '{name}') - argument must be between {} and {} inclusive",
                            t.min, t.max
                        ));
                    }
                    changes.push(Box::new(move |_: &Store, sh: &crate::shared::Shared| {
                        sh.encoding.set(i, v)
                    }));
                }
                _ => {
                    return err_owned(format!(
                        "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                    ))
                }
            }
        }
        for c in changes {
            c(ctx.store, ctx.shared);
        }
        ok()
    } else if sub.eq_ignore_ascii_case(b"resetstat") {
        let s = &ctx.store.stats;
        s.commands.store(0, Relaxed);
        ctx.store.reset_hits_misses();
        s.connections_received.store(0, Relaxed);
        s.rejected_connections.store(0, Relaxed);
        s.protocol_errors.store(0, Relaxed);
        ctx.shared.limits.reset_stats();
        ctx.shared.kafka.reset_latency();
        ctx.shared.cmdstats.reset();
        ok()
    } else if sub.eq_ignore_ascii_case(b"rewrite") {
        err("ERR The server is running without a config file")
    } else {
        unknown_sub("CONFIG", sub)
    }
}

fn info(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let wanted: Vec<String> = a[1..]
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    Reply::Verbatim(info_text(ctx.store, ctx.shared, ctx.now_ms, &wanted))
}

/// The INFO text (also used by the metrics endpoint's tests and tooling): the figures of
/// `crate::counters::FIGURES` section by section, with the lines that are not figures.
pub fn info_text(
    store: &Store,
    shared: &crate::shared::Shared,
    now_ms: u64,
    wanted: &[String],
) -> String {
    use crate::counters::{write_info, write_info_peers, Readings, Section};
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "everything" || w == "default");
    // As Redis: commandstats only by name or with `all`/`everything`.
    let everything = wanted.iter().any(|w| w == "all" || w == "everything");
    let want =
        |s: &str| wanted.iter().any(|w| w == s) || (all && (s != "commandstats" || everything));
    let r = Readings::new(store, shared, now_ms);
    let mut o = String::new();
    for section in Section::ALL {
        if !want(section.name()) {
            continue;
        }
        let _ = write!(o, "# {}\r\n", section.title());
        if section == Section::Replication {
            shared.inregion.info(now_ms, &mut o);
        }
        write_info(section, &r, &mut o);
        match section {
            Section::Crdt => {
                if let Some(c) = &shared.repl {
                    write_info_peers(c, now_ms, &mut o);
                }
            }
            Section::Invalidations => {
                for (p, lag) in shared.kafka.lag.lock().iter() {
                    let _ = write!(o, "kafka_lag_partition_{p}:{lag}\r\n");
                }
            }
            Section::Commandstats => {
                let table = crate::cmd::table();
                let mut names: Vec<(&str, u16)> = table.values().map(|s| (s.name, s.id)).collect();
                names.sort_unstable();
                let stats = shared.cmdstats.per_command();
                for (name, id) in names {
                    let Some(&[calls, nanos, failed, rejected]) = stats.get(usize::from(id)) else {
                        continue;
                    };
                    if calls == 0 && failed == 0 && rejected == 0 {
                        continue;
                    }
                    let usec = nanos / 1000;
                    let per = if calls == 0 {
                        0.0
                    } else {
                        usec as f64 / calls as f64
                    };
                    let _ = write!(
                        o,
                        "cmdstat_{}:calls={calls},usec={usec},usec_per_call={per:.2},\
                         rejected_calls={rejected},failed_calls={failed}\r\n",
                        name.to_ascii_lowercase()
                    );
                }
            }
            Section::Errorstats => {
                for (kind, count) in shared.cmdstats.errors() {
                    let _ = write!(o, "errorstat_{kind}:count={count}\r\n");
                }
            }
            Section::Keyspace => {
                let ks = r.ks();
                if ks.keys > 0 {
                    let _ = write!(
                        o,
                        "db0:keys={},expires={},avg_ttl=0\r\n",
                        ks.keys, ks.volatile
                    );
                }
            }
            _ => {}
        }
        o.push_str("\r\n");
    }
    while o.ends_with("\r\n\r\n") {
        o.truncate(o.len() - 2);
    }
    o
}

fn time(ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    let micros = crate::util::now_micros();
    let _ = ctx;
    Reply::Array(vec![
        Reply::Bulk(Bytes::from((micros / 1_000_000).to_string())),
        Reply::Bulk(Bytes::from((micros % 1_000_000).to_string())),
    ])
}

/// `SLOWLOG GET [count] | LEN | RESET | HELP` (Redis 7; see `cmdstats`).
fn slowlog(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let sub = a[1].to_ascii_lowercase();
    let stats = &ctx.shared.cmdstats;
    match (sub.as_slice(), a.len()) {
        (b"get", 2 | 3) => {
            let count = match a.get(2) {
                None => Some(10),
                Some(c) => match meridian_crdt::parse_i64(c) {
                    Some(-1) => None,
                    Some(n) if n >= 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                    _ => return err("ERR count should be greater than or equal to -1"),
                },
            };
            let entries = stats.slowlog_get(count.or(Some(usize::MAX)));
            Reply::Array(
                entries
                    .into_iter()
                    .map(|e| {
                        Reply::Array(vec![
                            Reply::Int(e.id as i64),
                            Reply::Int(e.unix_secs as i64),
                            Reply::Int(e.micros as i64),
                            Reply::Array(e.args.into_iter().map(Reply::Bulk).collect()),
                            Reply::Bulk(Bytes::from(e.addr)),
                            Reply::Bulk(e.name),
                        ])
                    })
                    .collect(),
            )
        }
        (b"len", 2) => Reply::Int(stats.slowlog_len() as i64),
        (b"reset", 2) => {
            stats.slowlog_reset();
            ok()
        }
        (b"help", 2) => crate::cmd::keys::help_lines(&[
            "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET [<count>]",
            "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
            "    Entries are made of:",
            "    id, timestamp, time in microseconds, arguments array, client IP and port,",
            "    client name",
            "LEN",
            "    Return the length of the slowlog.",
            "RESET",
            "    Reset the slowlog.",
            "HELP",
            "    Print this help.",
        ]),
        _ => unknown_subcommand(a, "SLOWLOG", &["get", "len", "reset", "help"]),
    }
}

/// `LATENCY LATEST | HISTORY event | RESET [event…] | DOCTOR | HELP` (Redis 7; events
/// `command` and `fast-command` once `latency-monitor-threshold` is set).
fn latency(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let sub = a[1].to_ascii_lowercase();
    let stats = &ctx.shared.cmdstats;
    match (sub.as_slice(), a.len()) {
        (b"latest", 2) => Reply::Array(
            stats
                .latency_latest()
                .into_iter()
                .map(|(name, t, latest, max)| {
                    Reply::Array(vec![
                        Reply::Bulk(Bytes::from_static(name.as_bytes())),
                        Reply::Int(t as i64),
                        Reply::Int(latest as i64),
                        Reply::Int(max as i64),
                    ])
                })
                .collect(),
        ),
        (b"history", 3) => {
            let event = String::from_utf8_lossy(a[2]).to_ascii_lowercase();
            Reply::Array(
                stats
                    .latency_history(&event)
                    .into_iter()
                    .map(|(t, v)| Reply::Array(vec![Reply::Int(t as i64), Reply::Int(v as i64)]))
                    .collect(),
            )
        }
        (b"reset", _) => Reply::Int(stats.latency_reset(&a[2..]) as i64),
        (b"doctor", 2) => {
            let latest = stats.latency_latest();
            let text = if latest.is_empty() {
                if stats.latency_threshold_ms.load(Relaxed) == 0 {
                    "I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this \
                     meridian instance. You may use \"CONFIG SET latency-monitor-threshold \
                     <milliseconds>.\" in order to enable it.\n"
                        .to_string()
                } else {
                    "Dave, no latency spike was observed during the lifetime of this meridian \
                     instance, not in the slightest bit. I honestly think you ought to sleep \
                     better tonight.\n"
                        .to_string()
                }
            } else {
                let mut t = String::from(
                    "Dave, I have observed latency spikes in this meridian instance.\n\n",
                );
                for (i, (name, _, latest, max)) in latest.iter().enumerate() {
                    let _ = writeln!(
                        t,
                        "{}. {name}: latest {latest} milliseconds, all time high {max} milliseconds.",
                        i + 1
                    );
                }
                t
            };
            Reply::Verbatim(text)
        }
        (b"help", 2) => crate::cmd::keys::help_lines(&[
            "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "DOCTOR",
            "    Return a human readable latency analysis report.",
            "HISTORY <event>",
            "    Return time-latency samples for the <event> class.",
            "LATEST",
            "    Return the latest latency samples for all events.",
            "RESET [<event> ...]",
            "    Reset latency data of one or more <event> classes.",
            "    (default: reset all data for all event classes)",
            "HELP",
            "    Print this help.",
        ]),
        _ => unknown_subcommand(
            a,
            "LATENCY",
            &[
                "latest",
                "history",
                "reset",
                "doctor",
                "help",
                "graph",
                "histogram",
            ],
        ),
    }
}

/// Redis' reply to a subcommand it does not know, or a known one with the wrong number of
/// arguments (`known`: the container's subcommand names).
pub(crate) fn unknown_subcommand(a: &[&[u8]], cmd: &str, known: &[&str]) -> Reply {
    let sub = String::from_utf8_lossy(a[1]);
    let lower = sub.to_ascii_lowercase();
    if known.contains(&lower.as_str()) {
        return Reply::Error(Cow::Owned(format!(
            "ERR wrong number of arguments for '{}|{lower}' command",
            cmd.to_ascii_lowercase()
        )));
    }
    Reply::Error(Cow::Owned(format!(
        "ERR unknown subcommand '{sub}'. Try {cmd} HELP."
    )))
}

fn lastsave(ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    Reply::Int((ctx.shared.started_ms / 1000) as i64)
}

/// meridian-specific admin: `MERIDIAN DELTAS [n]` shows the newest deltas of every shard's
/// log (with peers, what the replication link will ship; without, the notes kept of the
/// newest writes), `MERIDIAN REGION [LIST | FORGET <region>]`.
fn meridian(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    let sub = &a[1];
    if sub.eq_ignore_ascii_case(b"sync") {
        // MERIDIAN SYNC <primary-replid|?> <applied-offset> <port>: a replica asks for the
        // stream; the connection is handed over to `replica_stream::serve_replica`.
        let (Some(id), Some(off), Some(port), 5) = (a.get(2), a.get(3), a.get(4), a.len()) else {
            return err("ERR usage: MERIDIAN SYNC <replid|?> <offset> <port>").into();
        };
        return match meridian_replication::replica_stream::SyncRequest::parse(id, off, port) {
            Ok(req) => Outcome::Takeover(req),
            Err(e) => err(e).into(),
        };
    }
    if sub.eq_ignore_ascii_case(super::cluster::MIGRATE_TARGET[1]) {
        return super::cluster::migrate_target(ctx, a);
    }
    // INVALIDATE writes one key and stamps it: it waits out a pause first (a manual
    // failover's pause and the restart window hold it).
    if let (Some(key), 3..) = (a.get(2), a.len()) {
        if sub.eq_ignore_ascii_case(b"invalidate") && ctx.pause_began(key) {
            return ctx.wait_out_pause();
        }
    }
    meridian_reply(ctx, a).into()
}

/// `MERIDIAN REGION`: this region's name. `MERIDIAN REGION LIST`: this region and its
/// peer regions (configured or joined at run time), each as a flat list of fields: region,
/// id, state (`self`, `up`, `connecting`, `down`, `expelled`, `refused`, `forgetting`),
/// last heard (ms ago, -1: never), silent (link ms), incarnation (hex, the peer's as last
/// heard), joined (1: added at run time). `MERIDIAN REGION FORGET <region>`: remove a peer
/// region at run time (issue it on every node of every remaining region).
fn region_cmd(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let own = &ctx.shared.config.region;
    let Some(op) = a.get(2) else {
        return bulk(Bytes::from(own.clone()));
    };
    let usage = || err("ERR usage: MERIDIAN REGION [LIST | FORGET <region>]");
    if op.eq_ignore_ascii_case(b"list") {
        if a.len() != 3 {
            return usage();
        }
        let now = crate::util::now_ms();
        let field = |k: &'static str| Reply::Simple(Cow::Borrowed(k));
        let text = |v: String| Reply::Bulk(Bytes::from(v));
        let mut rows = vec![Reply::Array(vec![
            field("region"),
            text(own.clone()),
            field("id"),
            Reply::Int(i64::from(ctx.shared.config.region_id)),
            field("state"),
            text("self".into()),
            field("last-heard-ms-ago"),
            Reply::Int(0),
            field("silent-ms"),
            Reply::Int(0),
            field("incarnation"),
            text(ctx.shared.repl.as_ref().map_or(String::new(), |c| {
                format!("{:016x}", c.incarnation.load(Relaxed))
            })),
            field("joined"),
            Reply::Int(0),
        ])];
        if let Some(c) = &ctx.shared.repl {
            for p in c.peers().iter() {
                let state = if p.forgetting.load(Relaxed) {
                    "forgetting"
                } else {
                    p.link_state()
                };
                let epoch = p.epoch.load(Relaxed);
                rows.push(Reply::Array(vec![
                    field("region"),
                    text(p.region.clone()),
                    field("id"),
                    Reply::Int(i64::from(p.region_id)),
                    field("state"),
                    text(state.into()),
                    field("last-heard-ms-ago"),
                    Reply::Int(crate::region_link::ms_ago(
                        now,
                        p.last_recv_ms.load(Relaxed),
                    )),
                    field("silent-ms"),
                    Reply::Int(p.silent_ms.load(Relaxed) as i64),
                    field("incarnation"),
                    text(if epoch == 0 {
                        String::new()
                    } else {
                        format!("{epoch:016x}")
                    }),
                    field("joined"),
                    Reply::Int(i64::from(p.joined)),
                ]));
            }
        }
        return Reply::Array(rows);
    }
    if op.eq_ignore_ascii_case(b"forget") {
        let (Some(region), 4) = (a.get(3), a.len()) else {
            return err("ERR usage: MERIDIAN REGION FORGET <region>");
        };
        let Some(c) = &ctx.shared.repl else {
            return err("ERR replication is not configured");
        };
        return match c.forget(region, own) {
            Ok(()) => ok(),
            Err(e) => err_owned(e),
        };
    }
    usage()
}

fn meridian_reply(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let sub = &a[1];
    if sub.eq_ignore_ascii_case(b"deltas") {
        let n = match a.get(2) {
            None => 10,
            Some(v) => match crate::util::parse_int(v) {
                Some(n) if n >= 0 => n as usize,
                _ => return not_int(),
            },
        };
        let mut all = Vec::new();
        ctx.each_shard(|s| {
            for d in s.recent_deltas() {
                all.push((d.stamp, Bytes::from(d.key), d.slot, d.full));
            }
        });
        all.sort_by_key(|d| std::cmp::Reverse(d.0));
        all.truncate(n);
        Reply::Array(
            all.into_iter()
                .map(|(stamp, key, slot, full)| {
                    Reply::Array(vec![
                        Reply::Bulk(key),
                        Reply::Int(i64::from(slot)),
                        Reply::Bulk(Bytes::from(format!(
                            "{}.{}@{}",
                            stamp.hlc.physical_ms(),
                            stamp.hlc.logical(),
                            stamp.region.0
                        ))),
                        Reply::Simple(Cow::Borrowed(if full { "full" } else { "partial" })),
                    ])
                })
                .collect(),
        )
    } else if sub.eq_ignore_ascii_case(b"link") {
        // MERIDIAN LINK DOWN|UP <region>: cut or restore a replication link at run time.
        let (Some(dir), Some(region)) = (a.get(2), a.get(3)) else {
            return err("ERR usage: MERIDIAN LINK DOWN|UP <region>");
        };
        let down = if dir.eq_ignore_ascii_case(b"down") {
            true
        } else if dir.eq_ignore_ascii_case(b"up") {
            false
        } else {
            return syntax();
        };
        let Some(c) = &ctx.shared.repl else {
            return err("ERR replication is not configured");
        };
        match c.peer(region) {
            Some(p) => {
                p.down.store(down, Relaxed);
                ok()
            }
            None => err("ERR no such peer region"),
        }
    } else if sub.eq_ignore_ascii_case(b"invalidate") {
        // MERIDIAN INVALIDATE <key> [VERSION n]: apply an invalidation record by hand, the way
        // the Kafka consumer does.
        let usage = || err("ERR usage: MERIDIAN INVALIDATE <key> [VERSION n]");
        let version = match (a.get(3), a.get(4), a.len()) {
            (None, None, 3) => None,
            (Some(o), Some(v), 5) if o.eq_ignore_ascii_case(b"version") => {
                match crate::util::parse_int(v) {
                    Some(n) if n > 0 => Some(n as u64),
                    _ => return err("ERR VERSION must be a positive integer"),
                }
            }
            _ => return usage(),
        };
        let Some(key) = a.get(2) else {
            return usage();
        };
        let removed = ctx.write(key, |w| w.invalidate(version));
        Reply::Int(i64::from(removed))
    } else if sub.eq_ignore_ascii_case(b"region") {
        region_cmd(ctx, a)
    } else {
        unknown_sub("MERIDIAN", sub)
    }
}
