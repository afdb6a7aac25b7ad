//! maxmemory under each policy. The limit is set with CONFIG SET relative to the server's own
//! INFO used_memory, then far more data than fits is written:
//! - noeviction refuses writes with Redis' OOM error and keeps everything;
//! - allkeys-* evict, never refuse, and keep used_memory near the limit; LRU/LFU keep hot keys;
//! - volatile-* evict only keys with a TTL: keys without one always survive, and once no
//!   volatile key is left, writes get OOM.
//!
//! The policy tests run with one delta note per shard and first [`warm_up`] every slot
//! table, so the limit is measured above memory that eviction cannot free and the keyspace
//! is what the limit governs. `small_limit_with_default_config_still_evicts` checks the
//! default config too (slot tables are freed with their last key).

mod common;

use common::*;
use redis::Connection;

const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
const VALUE_BYTES: usize = 1000;
/// Room above the baseline: a few thousand 1 KB keys. Eviction picks shards round-robin while
/// writes land by key hash, so each shard's population drifts like a random walk; a few
/// hundred keys per shard keep that walk far from draining a shard down to its hot keys.
const HEADROOM_BYTES: u64 = 8 << 20;
/// Data written per test: three times the headroom.
const WRITE_BYTES: usize = 24 << 20;
/// Allowed overshoot of used_memory over maxmemory (per-ms sampling, I/O buffers).
const SLACK_BYTES: u64 = 2 << 20;
const BATCH: usize = 100;
/// How often (in writes) the fill reads the recently-used keys.
const HOT_EVERY: usize = 500;

fn value() -> String {
    "x".repeat(VALUE_BYTES)
}

/// One delta note per shard (the default keeps 16): notes hold copies of keys, which
/// eviction cannot free.
const SMALL_LOG: &str = "delta-log-max = 1\n";

fn start() -> Server {
    Server::start_with_config(SMALL_LOG, &[])
}

/// Allocate every slot's table up front (tables outlive their keys), with keys that expire
/// right away (expiry frees the keys, never the tables).
fn warm_up(c: &mut Connection) {
    for chunk in one_key_per_slot("warm").chunks(2048) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("SET").arg(k).arg("x").arg("PX").arg(50).ignore();
        }
        let _: () = p.query(c).unwrap();
    }
    wait_until(WAIT_TIMEOUT, "the warm-up keys expire", || {
        q::<i64>(c, &["DBSIZE"]) == 0
    });
}

/// Limit memory to what is used now plus `HEADROOM_BYTES`, with `policy`.
fn limit_memory(c: &mut Connection, policy: &str) -> u64 {
    let used = info_u64(c, "used_memory");
    let max = used + HEADROOM_BYTES;
    q::<()>(c, &["CONFIG", "SET", "maxmemory", &max.to_string()]);
    q::<()>(c, &["CONFIG", "SET", "maxmemory-policy", policy]);
    assert_eq!(info_field(c, "maxmemory_policy"), policy);
    max
}

/// Write `count` keys `prefix:i` (pipelined in batches), optionally with a TTL; every
/// `HOT_EVERY` writes, read the `hot` keys so they stay recently used. Panics on any error.
fn fill(c: &mut Connection, prefix: &str, count: usize, ttl_s: Option<u64>, hot: &[String]) {
    let v = value();
    for start in (0..count).step_by(BATCH) {
        let mut p = redis::pipe();
        for i in start..(start + BATCH).min(count) {
            let cmd = p.cmd("SET").arg(format!("{prefix}:{i}")).arg(&v);
            if let Some(t) = ttl_s {
                cmd.arg("EX").arg(t);
            }
            cmd.ignore();
        }
        if start % HOT_EVERY == 0 {
            for k in hot {
                p.cmd("GET").arg(k).ignore();
            }
        }
        let r: redis::RedisResult<()> = p.query(c);
        if let Err(e) = r {
            panic!("write {prefix}:{start}.. failed: {e}");
        }
    }
}

/// Which keys a policy should keep, and how the test makes them so.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Favour {
    /// Nothing (random policies).
    None,
    /// Keys read every `HOT_EVERY` writes during the fill (LRU).
    Recent,
    /// Keys read 300 times before the fill, never during it (LFU).
    Frequent,
    /// Keys with a far deadline among keys with near ones (volatile-ttl).
    LongTtl,
}

/// Read `keys` 300 times each, so their LFU counters climb well above a fresh key's.
fn make_frequent(c: &mut Connection, keys: &[String]) {
    let mut p = redis::pipe();
    for _ in 0..300 {
        for k in keys {
            p.cmd("GET").arg(k).ignore();
        }
    }
    let _: () = p.query(c).unwrap();
}

/// Server flags per favour. LRU runs the background cycle once a second: that cycle may
/// evict with a clock read before the client's latest reads, which the server currently
/// misjudges (see `eviction_with_a_slightly_stale_clock_keeps_hot_keys`); fewer cycles keep
/// that rare, and reading the hot keys only every `HOT_EVERY` writes keeps it rarer.
fn start_for(favour: Favour) -> Server {
    match favour {
        Favour::Recent => Server::start_with_config(SMALL_LOG, &["--hz", "1"]),
        _ => start(),
    }
}

fn assert_favoured_survive(c: &mut Connection, policy: &str, favoured: &[String]) {
    let alive = exists_count(c, favoured);
    assert!(
        alive >= favoured.len() * 9 / 10,
        "{policy}: only {alive}/{} favoured keys survived",
        favoured.len()
    );
}

fn exists_count(c: &mut Connection, keys: &[String]) -> usize {
    let mut args = vec!["EXISTS"];
    args.extend(keys.iter().map(String::as_str));
    q(c, &args)
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i}")).collect()
}

/// DBSIZE and INFO evicted_keys from one moment: the background cycle may still be evicting
/// (used memory can overshoot between samples), so read until evicted_keys is stable.
fn dbsize_and_evicted(c: &mut Connection) -> (usize, usize) {
    let mut result = None;
    wait_until(WAIT_TIMEOUT, "eviction settles", || {
        let before = info_u64(c, "evicted_keys");
        let dbsize: usize = q(c, &["DBSIZE"]);
        let after = info_u64(c, "evicted_keys");
        result = Some((dbsize, after as usize));
        before == after
    });
    result.unwrap()
}

fn assert_bounded(c: &mut Connection, max: u64) {
    let used = info_u64(c, "used_memory");
    assert!(
        used <= max + SLACK_BYTES,
        "used_memory {used} exceeds maxmemory {max} by more than {SLACK_BYTES}"
    );
}

#[test]
fn noeviction_refuses_writes_with_oom() {
    let s = start();
    let mut c = s.conn();
    warm_up(&mut c);
    let max = limit_memory(&mut c, "noeviction");
    let val = value();
    let mut written = 0;
    let err = loop {
        assert!(written < WRITE_BYTES / VALUE_BYTES, "never hit the limit");
        match cmd(&["SET", &format!("k:{written}"), &val]).query::<()>(&mut c) {
            Ok(()) => written += 1,
            Err(e) => break err_text(&e),
        }
    };
    assert_eq!(err, OOM);
    assert!(
        written > 100,
        "only {written} keys fit in {HEADROOM_BYTES} bytes"
    );
    // Nothing was evicted; everything written is readable.
    assert_eq!(info_u64(&mut c, "evicted_keys"), 0);
    assert_eq!(q::<usize>(&mut c, &["DBSIZE"]), written);
    assert_eq!(q::<String>(&mut c, &["GET", "k:0"]), val);
    // Every memory-growing write is refused; reads, DEL and non-growing commands are not.
    for args in [
        vec!["SET", "new", "v"],
        vec!["SADD", "s", "m"],
        vec!["HSET", "h", "f", "v"],
        vec!["INCR", "k:0"],
        vec!["APPEND", "k:1", "x"],
        vec!["MSET", "a", "1", "b", "2"],
    ] {
        assert_eq!(qerr(&mut c, &args), OOM, "{args:?}");
    }
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "new", "s", "h", "a"]), 0);
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "k:1"]), VALUE_BYTES as i64);
    assert_bounded(&mut c, max);
    // Deleting data makes room again.
    let mut args = vec!["DEL".to_string()];
    args.extend(keys("k", written / 2));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(q::<usize>(&mut c, &args), written / 2);
    assert_eq!(v(&mut c, &["SET", "new", "v"]), redis::Value::Okay);
    // As does raising the limit.
    let big = (max * 4).to_string();
    q::<()>(&mut c, &["CONFIG", "SET", "maxmemory", &big]);
    fill(&mut c, "more", 2000, None, &[]);
}

/// allkeys-*: never refuse, stay bounded, account for every key, keep the favoured ones.
fn allkeys(policy: &str, favour: Favour) {
    let s = start_for(favour);
    let mut c = s.conn();
    warm_up(&mut c);
    // The favoured keys are written first: the oldest keys of all.
    let hot = keys("hot", 20);
    fill(&mut c, "hot", hot.len(), None, &[]);
    if favour == Favour::Frequent {
        make_frequent(&mut c, &hot);
    }
    let max = limit_memory(&mut c, policy);
    let n = WRITE_BYTES / VALUE_BYTES;
    let touched: &[String] = if favour == Favour::Recent { &hot } else { &[] };
    fill(&mut c, "cold", n, None, touched);
    assert_bounded(&mut c, max);
    let (dbsize, evicted) = dbsize_and_evicted(&mut c);
    assert!(evicted > 0, "{policy}: nothing evicted");
    assert!(dbsize < n, "{policy}: everything kept ({dbsize})");
    assert_eq!(
        dbsize + evicted,
        n + hot.len(),
        "{policy}: every key is kept or evicted"
    );
    if favour != Favour::None {
        assert_favoured_survive(&mut c, policy, &hot);
        // The oldest cold keys (never read again) are among the first to go.
        let oldest = keys("cold", 1000);
        let old_alive = exists_count(&mut c, &oldest);
        assert!(
            old_alive < 500,
            "{policy}: {old_alive}/1000 of the oldest keys survived"
        );
    }
    // Writes keep working after eviction.
    assert_eq!(v(&mut c, &["SET", "after", "v"]), redis::Value::Okay);
    assert_eq!(q::<String>(&mut c, &["GET", "after"]), "v");
}

#[test]
fn allkeys_lru_evicts_cold_keys() {
    allkeys("allkeys-lru", Favour::Recent);
}

#[test]
fn allkeys_lfu_evicts_rarely_used_keys() {
    allkeys("allkeys-lfu", Favour::Frequent);
}

#[test]
fn allkeys_random_evicts_and_stays_bounded() {
    allkeys("allkeys-random", Favour::None);
}

/// volatile-*: keys without a TTL are never evicted; the favoured volatile keys are kept.
fn volatile(policy: &str, favour: Favour) {
    let s = start_for(favour);
    let mut c = s.conn();
    warm_up(&mut c);
    let permanent = keys("perm", 300);
    fill(&mut c, "perm", permanent.len(), None, &[]);
    let favoured = keys("fav", 20);
    let ttl = if favour == Favour::LongTtl {
        10_000_000
    } else {
        3600
    };
    fill(&mut c, "fav", favoured.len(), Some(ttl), &[]);
    if favour == Favour::Frequent {
        make_frequent(&mut c, &favoured);
    }
    let max = limit_memory(&mut c, policy);
    let n = WRITE_BYTES / VALUE_BYTES;
    let touched: &[String] = if favour == Favour::Recent {
        &favoured
    } else {
        &[]
    };
    fill(&mut c, "vol", n, Some(3600), touched);
    assert_bounded(&mut c, max);
    assert_eq!(
        exists_count(&mut c, &permanent),
        permanent.len(),
        "{policy} evicted a key without TTL"
    );
    let (dbsize, evicted) = dbsize_and_evicted(&mut c);
    assert!(evicted > 0, "{policy}: nothing evicted");
    assert_eq!(
        dbsize + evicted,
        permanent.len() + favoured.len() + n,
        "{policy}: every key is kept or evicted"
    );
    if favour != Favour::None {
        assert_favoured_survive(&mut c, policy, &favoured);
    }
    // With the limit below what the permanent keys need, every volatile key goes, the
    // permanent ones stay, and writes are refused.
    q::<()>(&mut c, &["CONFIG", "SET", "maxmemory", "1"]);
    assert_eq!(qerr(&mut c, &["SET", "perm:new", "v"]), OOM);
    // Eviction may still be finishing in the background (see
    // `concurrent_evictors_never_give_up_while_keys_remain`): wait for it, then check.
    wait_until(WAIT_TIMEOUT, "every volatile key is evicted", || {
        q::<usize>(&mut c, &["DBSIZE"]) <= permanent.len()
    });
    assert_eq!(q::<usize>(&mut c, &["DBSIZE"]), permanent.len());
    assert_eq!(exists_count(&mut c, &permanent), permanent.len());
    let ks: String = q(&mut c, &["INFO", "keyspace"]);
    assert!(ks.contains(",expires=0,"), "{ks}");
}

#[test]
fn volatile_lru_spares_keys_without_ttl() {
    volatile("volatile-lru", Favour::Recent);
}

#[test]
fn volatile_lfu_spares_keys_without_ttl() {
    volatile("volatile-lfu", Favour::Frequent);
}

#[test]
fn volatile_random_spares_keys_without_ttl() {
    volatile("volatile-random", Favour::None);
}

#[test]
fn volatile_ttl_evicts_nearest_deadline_first() {
    volatile("volatile-ttl", Favour::LongTtl);
}

/// With the default config and a limit a few MB above current usage, writes keep succeeding
/// with the data set shrunk to what fits: memory eviction cannot free (slot tables that
/// outlived their keys, the delta log's notes) must not eat the headroom until
/// allkeys-lru has evicted everything and answers OOM.
#[test]
fn small_limit_with_default_config_still_evicts() {
    let s = Server::start();
    let mut c = s.conn();
    let max = limit_memory(&mut c, "allkeys-lru");
    fill(&mut c, "k", WRITE_BYTES / VALUE_BYTES, None, &[]);
    assert_bounded(&mut c, max);
    assert!(
        q::<usize>(&mut c, &["DBSIZE"]) > 100,
        "the data set was evicted entirely"
    );
}

#[test]
fn maxmemory_policy_from_the_command_line() {
    let s = Server::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let mut c = s.conn();
    assert_eq!(info_u64(&mut c, "maxmemory"), 64 << 20);
    assert_eq!(info_field(&mut c, "maxmemory_policy"), "allkeys-lru");
    let cfg: std::collections::HashMap<String, String> =
        q(&mut c, &["CONFIG", "GET", "maxmemory*"]);
    assert_eq!(cfg["maxmemory"], (64u64 << 20).to_string());
    assert_eq!(cfg["maxmemory-policy"], "allkeys-lru");
}

/// Root cause of hot keys occasionally lost under LRU/LFU: idle time is
/// `(now as u32).wrapping_sub(last_access)`, and eviction may run with a `now` read slightly
/// before another thread touched a key (the background cycle reads the clock, then works;
/// thread-per-core connections each read their own). A key touched "after" that `now` looks
/// ~49 days idle (LRU) or fully decayed (LFU), so the hottest keys are evicted first.
#[test]
fn eviction_with_a_slightly_stale_clock_keeps_hot_keys() {
    use bytes::Bytes;
    use meridian_crdt::{EvictionPolicy, Hlc, Keyspace, KeyspaceConfig, RegionId, Stamp};
    for policy in [EvictionPolicy::AllKeysLru, EvictionPolicy::AllKeysLfu] {
        let mut ks = Keyspace::new(KeyspaceConfig {
            region: RegionId(0),
            retain_tombstones: false,
            seed: 42,
        });
        let t0: u64 = 1_700_000_000_000;
        let mut hlc = Hlc(0);
        let mut put = |ks: &mut Keyspace, key: &str, now: u64| {
            hlc = hlc.tick(now);
            let v = Bytes::from_static(b"value");
            ks.write(key.as_bytes(), Stamp::new(hlc, RegionId(0)), now, |w| {
                w.set_str(v, false)
            });
        };
        // Two keys half the slot ring apart, so random sampling sees both.
        let name_in = |lo: u16, prefix: &str| -> String {
            (0..)
                .map(|n| format!("{prefix}{n}"))
                .find(|k| (lo..lo + 200).contains(&key_slot(k.as_bytes())))
                .unwrap()
        };
        let (cold, hot) = (name_in(0, "cold"), name_in(8192, "hot"));
        // The cold key was written a minute ago and never read; the hot one is read a lot,
        // last at t1.
        put(&mut ks, &cold, t0);
        put(&mut ks, &hot, t0);
        let t1 = t0 + 60_000;
        for i in 0..200 {
            assert!(ks.get(hot.as_bytes(), t1 - 200 + i).is_some());
        }
        // Eviction with a clock 5 ms behind the last access to "hot".
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let mut rng = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        ks.evict_one(policy, 16, t1 - 5, &mut rng)
            .expect("something is evictable");
        assert!(
            ks.peek(hot.as_bytes(), t1).is_some(),
            "{policy:?} evicted the key accessed 5 ms 'in the future' instead of the cold one"
        );
        assert!(ks.peek(cold.as_bytes(), t1).is_none());
    }
}

/// Two evictors at once (a client's write and the background cycle, or two client threads)
/// share one round-robin shard cursor. One may then count 16 fruitless shards while the
/// shards it never visited still hold evictable keys, and answer OOM although eviction could
/// still make room (seen over the wire: OOM under volatile-random with ~60 volatile keys left).
#[test]
fn concurrent_evictors_never_give_up_while_keys_remain() {
    use bytes::Bytes;
    use meridian::cmd::ConnState;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = meridian::config::Config {
        port: 0,
        ..meridian::config::Config::default()
    };
    let node = rt.block_on(meridian::server::Server::bind(config)).unwrap();
    let (store, shared) = (&node.store, &node.shared);
    let mut conn = ConnState::new(1, "127.0.0.1:1".into(), 0);
    let mut run = |args: &[&str]| {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        let now = meridian::util::now_ms();
        meridian::connection::execute(
            store,
            shared,
            &mut conn,
            &args,
            now,
            &mut meridian::store::Held::new(false),
        )
    };
    let mut early = 0;
    for round in 0..100 {
        run(&["CONFIG", "SET", "maxmemory", "0"]);
        for i in 0..500 {
            run(&["SET", &format!("k:{round}:{i}"), "v", "EX", "3600"]);
        }
        run(&[
            "CONFIG",
            "SET",
            "maxmemory",
            "1",
            "maxmemory-policy",
            "volatile-random",
        ]);
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2u64)
                .map(|t| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut r = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                        let mut rng = move || {
                            r ^= r << 13;
                            r ^= r >> 7;
                            r ^= r << 17;
                            r
                        };
                        barrier.wait();
                        let ok = store.enforce_maxmemory(meridian::util::now_ms(), &mut rng);
                        // Volatile keys left at the moment this evictor gave up.
                        (ok, store.key_count().1)
                    })
                })
                .collect();
            for h in handles {
                let (ok, volatile_left) = h.join().unwrap();
                if !ok && volatile_left > 0 {
                    early += 1;
                }
            }
        });
    }
    assert_eq!(
        early, 0,
        "an evictor answered OOM with volatile keys left, {early} times"
    );
}

/// Counters are nearly all node: eviction frees node-slab slots, which later keys reuse,
/// while the allocator keeps the slab. `used_memory` counts those slots as free; if it did
/// not, it would stay above the limit after every eviction, every later write would evict
/// again, and the keyspace would drain far below the limit.
#[test]
fn counters_evict_down_to_the_limit_not_below_it() {
    let s = start();
    let mut c = s.conn();
    warm_up(&mut c);
    let max = limit_memory(&mut c, "allkeys-random");
    // Far more than fits: a counter costs about 80 B, the headroom holds ~100 k of them.
    let n = 400_000;
    for batch in (0..n).collect::<Vec<_>>().chunks(2000) {
        let mut p = redis::pipe();
        for i in batch {
            p.cmd("INCR").arg(format!("ctr:{i}")).ignore();
        }
        let _: () = p.query(&mut c).unwrap();
    }
    assert_bounded(&mut c, max);
    let (dbsize, evicted) = dbsize_and_evicted(&mut c);
    assert!(evicted > 0, "nothing evicted");
    assert_eq!(dbsize + evicted, n, "every counter is kept or evicted");
    // Kept: what the headroom holds at 128 B per counter (a counter costs about 85 B; with
    // the slab's free slots counted as used, 40–60 k were kept).
    let floor = (HEADROOM_BYTES / 128) as usize;
    assert!(
        dbsize >= floor,
        "only {dbsize} counters kept under an {HEADROOM_BYTES}-byte headroom (expected ≥ {floor})"
    );
}
