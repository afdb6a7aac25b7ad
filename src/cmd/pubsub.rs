//! Pub/sub commands (see `crate::pubsub`): (P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, PUBLISH,
//! SPUBLISH and PUBSUB. Subscription confirmations go through the connection's mailbox
//! (`Outcome::Pushed`), in order with the messages.

use super::*;
use crate::limits::OutputClass;
use crate::pubsub::{SubKind, Subscriptions};

pub fn specs() -> Vec<Spec> {
    vec![
        spec!(
            "subscribe",
            -2,
            NO_MULTI | STALE | LOADING,
            0,
            0,
            0,
            subscribe
        ),
        spec!(
            "psubscribe",
            -2,
            NO_MULTI | STALE | LOADING,
            0,
            0,
            0,
            psubscribe
        ),
        spec!(
            "ssubscribe",
            -2,
            SHARD_PUBSUB | NO_MULTI | STALE | LOADING,
            1,
            -1,
            1,
            ssubscribe
        ),
        spec!(
            "unsubscribe",
            -1,
            NO_MULTI | STALE | LOADING,
            0,
            0,
            0,
            unsubscribe
        ),
        spec!(
            "punsubscribe",
            -1,
            NO_MULTI | STALE | LOADING,
            0,
            0,
            0,
            punsubscribe
        ),
        spec!(
            "sunsubscribe",
            -1,
            SHARD_PUBSUB | NO_MULTI | STALE | LOADING,
            1,
            -1,
            1,
            sunsubscribe
        ),
        spec!("publish", 3, FAST | STALE | LOADING, 0, 0, 0, publish),
        spec!(
            "spublish",
            3,
            SHARD_PUBSUB | FAST | STALE | LOADING,
            1,
            1,
            1,
            spublish
        ),
        spec!("pubsub", -2, STALE | LOADING, 0, 0, 0, pubsub),
    ]
}

fn subs<'c>(ctx: &'c mut Ctx) -> &'c mut Subscriptions {
    let hub = ctx.shared.pubsub.clone();
    let (id, resp3) = (ctx.conn.id, ctx.conn.resp3);
    ctx.conn
        .subs
        .get_or_insert_with(|| Box::new(Subscriptions::new(hub, id, resp3)))
}

fn sub(ctx: &mut Ctx, kind: SubKind, names: &[&[u8]]) -> Outcome {
    match subs(ctx).subscribe(kind, names) {
        Ok(()) => Outcome::Pushed,
        Err(e) => err(e).into(),
    }
}

fn unsub(ctx: &mut Ctx, kind: SubKind, names: &[&[u8]]) -> Outcome {
    subs(ctx).unsubscribe(kind, names);
    Outcome::Pushed
}

fn subscribe(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    sub(ctx, SubKind::Channel, &a[1..])
}

fn psubscribe(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    sub(ctx, SubKind::Pattern, &a[1..])
}

fn ssubscribe(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    sub(ctx, SubKind::Shard, &a[1..])
}

fn unsubscribe(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    unsub(ctx, SubKind::Channel, &a[1..])
}

fn punsubscribe(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    unsub(ctx, SubKind::Pattern, &a[1..])
}

fn sunsubscribe(ctx: &mut Ctx, a: &[&[u8]]) -> Outcome {
    unsub(ctx, SubKind::Shard, &a[1..])
}

fn do_publish(ctx: &mut Ctx, a: &[&[u8]], shard: bool) -> Reply {
    let limit = ctx.shared.limits.output(OutputClass::Pubsub);
    let n = ctx
        .shared
        .pubsub
        .publish(a[1], a[2], shard, limit, ctx.now_ms);
    if let Some(c) = &ctx.shared.cluster {
        // Redis Cluster: PUBLISH reaches every node's subscribers, SPUBLISH the slot's
        // shard (routing sent it here: this node serves the slot). The count is ours.
        let slot = shard.then(|| meridian_crdt::key_slot(a[1]));
        if !c.publish(a[1], a[2], slot) {
            c.publish_too_large
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    Reply::Int(n)
}

fn publish(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    do_publish(ctx, a, false)
}

fn spublish(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    do_publish(ctx, a, true)
}

const PUBSUB_HELP: &[&str] = &[
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]",
    "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]",
    "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP",
    "    Prints this help.",
];

fn pubsub(ctx: &mut Ctx, a: &[&[u8]]) -> Reply {
    let sub = a[1].to_ascii_lowercase();
    let hub = &ctx.shared.pubsub;
    match (sub.as_slice(), a.len()) {
        (b"help", 2) => Reply::Array(
            PUBSUB_HELP
                .iter()
                .map(|l| Reply::Simple(Cow::Borrowed(l)))
                .collect(),
        ),
        (b"channels", 2 | 3) | (b"shardchannels", 2 | 3) => {
            let shard = sub.as_slice() == b"shardchannels";
            let names = hub.channels(shard, a.get(2).copied());
            Reply::Array(names.into_iter().map(Reply::Bulk).collect())
        }
        (b"numsub", _) | (b"shardnumsub", _) => {
            let shard = sub.as_slice() == b"shardnumsub";
            let mut v = Vec::with_capacity((a.len() - 2) * 2);
            for c in &a[2..] {
                v.push(Reply::Bulk(Bytes::copy_from_slice(c)));
                v.push(Reply::Int(hub.numsub(shard, c)));
            }
            // A flat array in RESP3 too (as Redis 7.0; clients parse it so).
            Reply::Array(v)
        }
        (b"numpat", 2) => Reply::Int(hub.numpat()),
        // Redis 7.0's text for a known subcommand with the wrong arguments.
        (b"help" | b"channels" | b"shardchannels" | b"numpat", _) => err_owned(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
            String::from_utf8_lossy(a[1])
        )),
        _ => super::server::unknown_subcommand(a, "PUBSUB", &[]),
    }
}
