//! Cluster commands available on a single node: slot arithmetic (KEYSLOT, COUNTKEYSINSLOT,
//! GETKEYSINSLOT) and the client-side no-ops (READONLY, READWRITE, ASKING). Multi-node
//! topology arrives with the region-cluster issue.

use super::*;
use meridian_crdt::{key_slot, SLOT_COUNT};

pub fn specs() -> Vec<Spec> {
    vec![
        spec!("cluster", -2, 0, 0, 0, 0, cluster),
        spec!("readonly", 1, FAST, 0, 0, 0, noop_ok),
        spec!("readwrite", 1, FAST, 0, 0, 0, noop_ok),
        spec!("asking", 1, FAST, 0, 0, 0, noop_ok),
    ]
}

fn noop_ok(_ctx: &mut Ctx, _a: &[Bytes]) -> Reply {
    ok()
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

fn cluster(ctx: &mut Ctx, a: &[Bytes]) -> Reply {
    let sub = &a[1];
    if sub.eq_ignore_ascii_case(b"keyslot") && a.len() == 3 {
        Reply::Int(i64::from(key_slot(&a[2])))
    } else if sub.eq_ignore_ascii_case(b"countkeysinslot") && a.len() == 3 {
        let slot = match slot_arg(&a[2], "ERR Invalid slot") {
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
        let slot = match slot_arg(&a[2], INVALID) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let count = match crate::util::parse_int(&a[3]) {
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
                .map(|(k, _)| Reply::Bulk(k.clone()))
                .collect()
        };
        Reply::Array(keys)
    } else if sub.eq_ignore_ascii_case(b"info") {
        err("ERR This instance has cluster support disabled")
    } else if sub.eq_ignore_ascii_case(b"myid") {
        bulk(Bytes::from(ctx.shared.run_id.clone()))
    } else {
        err("ERR This instance has cluster support disabled")
    }
}
