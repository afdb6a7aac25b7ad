//! In-region replication commands: `REPLICAOF`/`SLAVEOF`, `WAIT`, `ROLE`. The stream itself
//! (`MERIDIAN SYNC`) and its state live in `crate::replica_stream`.

use super::{err, not_int, ok, spec, Ctx, Outcome, Spec, ADMIN, NO_MULTI, STALE};
use crate::frame::Reply;
use crate::replica_stream::{PrimaryAddr, StreamRole};
use bytes::Bytes;

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("replicaof", 3, ADMIN | NO_MULTI | STALE, 0, 0, 0, replicaof),
        spec!("slaveof", 3, ADMIN | NO_MULTI | STALE, 0, 0, 0, replicaof),
        spec!("wait", 3, NO_MULTI, 0, 0, 0, wait),
        spec!("role", 1, STALE, 0, 0, 0, role),
    ]
}

/// `REPLICAOF host port` / `REPLICAOF NO ONE`.
fn replicaof(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    if a[1].eq_ignore_ascii_case(b"no") && a[2].eq_ignore_ascii_case(b"one") {
        ctx.shared.inregion.follow(None);
        return ok();
    }
    let Ok(host) = std::str::from_utf8(a[1]) else {
        return err("ERR Invalid master host");
    };
    let port = match crate::util::parse_int(a[2]) {
        Some(p) if (1..=65535).contains(&p) => p as u16,
        _ => return err("ERR Invalid master port"),
    };
    let target = PrimaryAddr {
        host: host.to_string(),
        port,
    };
    if ctx.shared.inregion.following().as_ref() == Some(&target) {
        return Reply::Simple("OK Already connected to specified master".into());
    }
    ctx.shared.inregion.follow(Some(target));
    ok()
}

/// `WAIT numreplicas timeout`: the connection blocks (see `connection::serve`).
fn wait(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    let Some(n) = crate::util::parse_int(a[1]) else {
        return not_int().into();
    };
    let Some(timeout_ms) = crate::util::parse_int(a[2]) else {
        return err("ERR timeout is not an integer or out of range").into();
    };
    if timeout_ms < 0 {
        return err("ERR timeout is negative").into();
    }
    if ctx.shared.inregion.role() == StreamRole::Replica {
        return err("ERR WAIT cannot be used with replica instances.").into();
    }
    Outcome::Wait {
        replicas: n.max(0) as usize,
        timeout_ms: timeout_ms as u64,
    }
}

fn role(ctx: &mut Ctx, _a: &[&[u8]]) -> Reply {
    let hub = &ctx.shared.inregion;
    match (hub.role(), hub.following()) {
        (StreamRole::Replica, Some(p)) => Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(b"slave")),
            Reply::Bulk(Bytes::from(p.host)),
            Reply::Int(i64::from(p.port)),
            Reply::Bulk(Bytes::from_static(if hub.link_up() {
                b"connected"
            } else {
                b"connect"
            })),
            Reply::Int(hub.repl_offset() as i64),
        ]),
        _ => Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(b"master")),
            Reply::Int(hub.repl_offset() as i64),
            Reply::Array(
                hub.replica_list()
                    .into_iter()
                    .map(|(ip, port, off)| {
                        Reply::Array(vec![
                            Reply::Bulk(Bytes::from(ip)),
                            Reply::Bulk(Bytes::from(port.to_string())),
                            Reply::Bulk(Bytes::from(off.to_string())),
                        ])
                    })
                    .collect(),
            ),
        ]),
    }
}
