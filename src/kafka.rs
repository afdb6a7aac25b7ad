//! Kafka-fed invalidations: a consumer thread applies "key K changed at version V" records
//! from the source of truth, and `meridian invalidate` produces them.
//!
//! Record format (documented in the README): the record key is the cache key (Kafka's
//! partitioning then keeps per-key order); the value is empty (an unversioned invalidation),
//! `{"version": <u64>}`, or the batched `{"keys": ["k1", …], "version": <u64>}` (the record
//! key is then ignored). Anything else is malformed: counted, logged with partition and
//! offset, optionally forwarded to a dead-letter topic, and skipped.
//!
//! Delivery is at-least-once: auto-commit is on but offsets are *stored* only after a
//! record is applied (`enable.auto.offset.store=false`), so a crash or rebalance replays
//! from the last applied record; applying is idempotent (a floor is a max, a removal of an
//! absent value is a no-op). The consumer runs on its own OS thread (librdkafka's API
//! blocks) and takes one shard lock per key, like a client write.

use crate::config::KafkaConfig;
use crate::store::Store;
use crate::util::now_ms;
use bytes::Bytes;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Most keys one batched record may carry.
pub const MAX_KEYS_PER_RECORD: usize = 10_000;
/// Apply-latency histogram: one bucket per millisecond up to this bound, then one overflow.
const LATENCY_BUCKETS_MS: usize = 2_000;

/// One parsed record: which keys, and the source version (`None` = unconditional).
#[derive(Debug, PartialEq, Eq)]
pub struct Invalidation {
    pub keys: Vec<Bytes>,
    pub version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordValue {
    version: u64,
    #[serde(default)]
    keys: Option<Vec<String>>,
}

/// Parse a record (pure). The error says why it is malformed.
pub fn parse_record(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Invalidation, String> {
    let record_key = || match key {
        Some(k) if !k.is_empty() => Ok(Bytes::copy_from_slice(k)),
        _ => Err("record has no key".to_string()),
    };
    let value = value.unwrap_or_default();
    if value.iter().all(u8::is_ascii_whitespace) {
        return Ok(Invalidation {
            keys: vec![record_key()?],
            version: None,
        });
    }
    let body: RecordValue =
        serde_json::from_slice(value).map_err(|e| format!("bad JSON value: {e}"))?;
    if body.version == 0 {
        return Err("version must be a positive integer".into());
    }
    let keys = match body.keys {
        None => vec![record_key()?],
        Some(ks) if ks.is_empty() => return Err("\"keys\" is empty".into()),
        Some(ks) if ks.len() > MAX_KEYS_PER_RECORD => {
            return Err(format!("more than {MAX_KEYS_PER_RECORD} keys"))
        }
        Some(ks) => ks.into_iter().map(Bytes::from).collect(),
    };
    Ok(Invalidation {
        keys,
        version: Some(body.version),
    })
}

/// The JSON value `meridian invalidate` (and tests) produce for one key.
pub fn record_value(version: Option<u64>) -> Vec<u8> {
    match version {
        Some(v) => format!("{{\"version\":{v}}}").into_bytes(),
        None => Vec::new(),
    }
}

/// Apply one invalidation to the local store (also used by `MERIDIAN INVALIDATE`).
/// Returns how many keys lost a visible value.
pub fn apply(store: &Store, inv: &Invalidation, now_ms: u64) -> usize {
    inv.keys
        .iter()
        .filter(|key| invalidate_key(store, key, inv.version, now_ms))
        .count()
}

/// Invalidate one key as a local write; returns whether a visible value was removed.
fn invalidate_key(store: &Store, key: &[u8], version: Option<u64>, now_ms: u64) -> bool {
    // Stamp under the shard lock, like a client write: the replication shell relies on
    // every issued stamp's delta being in the shard log once it can take that lock.
    let mut shard = store.shard(crate::store::key_shard(key));
    let stamp = store.stamp(now_ms);
    let removed = shard
        .ks
        .write(key, stamp, now_ms, |w| w.invalidate(version));
    shard.after_write(&store.stats);
    removed
}

/// Apply one invalidation on a cluster node: keys of slots it serves as primary in full,
/// keys of its primary's slots (as a replica) as a floor raise only, others not at all.
/// Returns (keys whose value was removed, keys whose floor alone was raised).
pub fn apply_in_cluster(
    store: &Store,
    cluster: &crate::cluster::Cluster,
    inv: &Invalidation,
    now_ms: u64,
) -> (usize, usize) {
    use meridian_regions::topology::InvalidationScope;
    // Decided under the node lock, applied after it (never both locks at once).
    let scopes = cluster.invalidation_scopes(&inv.keys);
    let mut removed = 0;
    let mut floors = 0;
    for (key, scope) in inv.keys.iter().zip(scopes) {
        match scope {
            InvalidationScope::Apply => {
                removed += usize::from(invalidate_key(store, key, inv.version, now_ms));
            }
            InvalidationScope::FloorOnly => {
                let Some(v) = inv.version else { continue };
                let mut shard = store.shard(crate::store::key_shard(key));
                if shard.ks.raise_floor(key, v) {
                    shard.touch_key(key);
                    floors += 1;
                }
            }
            InvalidationScope::Skip => {}
        }
    }
    (removed, floors)
}

/// Counters for `INFO invalidations` and `/metrics`.
#[derive(Default)]
pub struct KafkaStats {
    pub enabled: AtomicBool,
    pub records_applied: AtomicU64,
    pub keys_invalidated: AtomicU64,
    pub records_malformed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub consumer_errors: AtomicU64,
    /// Cluster replicas: keys whose invalidation floor alone was raised.
    pub floors_raised_as_replica: AtomicU64,
    /// Cluster mode: times the stream was replayed after a promotion to primary.
    pub promotion_replays: AtomicU64,
    /// Consumer lag per partition, from librdkafka's statistics.
    pub lag: Mutex<BTreeMap<i32, i64>>,
    /// Record timestamp → applied: count per millisecond since start (or `CONFIG
    /// RESETSTAT`); the last bucket holds everything slower.
    latency_ms: Mutex<Vec<u64>>,
}

impl KafkaStats {
    fn note_latency(&self, ms: u64) {
        let mut h = self.latency_ms.lock();
        if h.is_empty() {
            h.resize(LATENCY_BUCKETS_MS + 1, 0);
        }
        let i = usize::try_from(ms).map_or(LATENCY_BUCKETS_MS, |m| m.min(LATENCY_BUCKETS_MS));
        h[i] += 1;
    }

    /// (p50, p99) apply latency in ms.
    pub fn latency_percentiles(&self) -> Option<(u64, u64)> {
        let h = self.latency_ms.lock();
        let total: u64 = h.iter().sum();
        if total == 0 {
            return None;
        }
        let at = |q: u64| {
            let rank = (total * q).div_ceil(100).max(1);
            let mut seen = 0;
            for (ms, n) in h.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return ms as u64;
                }
            }
            LATENCY_BUCKETS_MS as u64
        };
        Some((at(50), at(99)))
    }

    /// Forget the latency histogram (`CONFIG RESETSTAT`).
    pub fn reset_latency(&self) {
        self.latency_ms.lock().clear();
    }

    pub fn total_lag(&self) -> i64 {
        self.lag.lock().values().filter(|l| **l > 0).sum()
    }
}

struct Ctx {
    stats: Arc<KafkaStats>,
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: Statistics) {
        let mut lag = BTreeMap::new();
        for t in statistics.topics.values() {
            for (p, part) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" bucket.
                if *p >= 0 && part.consumer_lag >= 0 {
                    lag.insert(*p, part.consumer_lag);
                }
            }
        }
        *self.stats.lag.lock() = lag;
    }
}

impl ConsumerContext for Ctx {}

/// Handle of the consumer thread: stops it (committing stored offsets) when dropped.
pub struct KafkaConsumer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn consumer_config(cfg: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "1000")
        // Invalidations are latency-sensitive: do not let the broker hold a fetch for the
        // default 500 ms when it has nothing (some brokers do not answer early).
        .set("fetch.wait.max.ms", "10");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

fn producer_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    for (k, v) in properties {
        // Consumer-only keys would make the producer refuse to start.
        if !k.starts_with("group.") && !k.starts_with("enable.auto") && !k.starts_with("auto.") {
            c.set(k, v);
        }
    }
    c
}

/// Start consuming. Errors only on configuration problems; broker outages are retried by
/// librdkafka while the cache keeps serving.
///
/// In cluster mode (`cluster` given) every node consumes the whole stream with its own group
/// `<group>-<node id>` and applies only what concerns its slots (see [`apply_in_cluster`]).
pub fn start(
    cfg: &KafkaConfig,
    region: &str,
    store: Arc<Store>,
    stats: Arc<KafkaStats>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> Result<KafkaConsumer, String> {
    let mut group = cfg
        .group
        .clone()
        .unwrap_or_else(|| format!("meridian-{region}"));
    if let Some(c) = &cluster {
        group = format!("{group}-{}", c.my_name());
    }
    let consumer: BaseConsumer<Ctx> = consumer_config(cfg, &group)
        .create_with_context(Ctx {
            stats: stats.clone(),
        })
        .map_err(|e| format!("kafka consumer: {e}"))?;
    consumer
        .subscribe(&[cfg.topic.as_str()])
        .map_err(|e| format!("kafka subscribe {}: {e}", cfg.topic))?;
    let dead_letter = match &cfg.dead_letter_topic {
        Some(t) => {
            let p: BaseProducer = producer_config(&cfg.brokers, &cfg.properties)
                .create()
                .map_err(|e| format!("kafka dead-letter producer: {e}"))?;
            Some((p, t.clone()))
        }
        None => None,
    };
    stats.enabled.store(true, Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let topic = cfg.topic.clone();
    tracing::info!(brokers = %cfg.brokers, %topic, %group, "kafka invalidation consumer started");
    let replay_ms = cfg.promotion_replay_ms;
    let thread = std::thread::Builder::new()
        .name("kafka-invalidations".into())
        .spawn(move || {
            run(
                consumer,
                dead_letter,
                store,
                stats,
                stop2,
                cluster.map(|c| (c, replay_ms)),
            )
        })
        .map_err(|e| format!("kafka thread: {e}"))?;
    Ok(KafkaConsumer {
        stop,
        thread: Some(thread),
    })
}

fn run(
    consumer: BaseConsumer<Ctx>,
    dead_letter: Option<(BaseProducer, String)>,
    store: Arc<Store>,
    stats: Arc<KafkaStats>,
    stop: Arc<AtomicBool>,
    cluster: Option<(Arc<crate::cluster::Cluster>, u64)>,
) {
    let mut last_error_log_ms = 0u64;
    // The promotion whose replay is done (or not needed: a node that starts as a primary
    // resumes from its own group's committed offsets).
    let mut replayed_promotion = 0u64;
    let mut last_replay_try_ms = 0u64;
    while !stop.load(Relaxed) {
        if let Some((c, replay_ms)) = &cluster {
            let promoted = c.promoted_at_ms.load(Relaxed);
            let now = now_ms();
            // Retried (at most once a second) until the consumer has an assignment and the
            // broker answers.
            if promoted != replayed_promotion && now.saturating_sub(last_replay_try_ms) >= 1_000 {
                last_replay_try_ms = now;
                if replay_since(&consumer, promoted.saturating_sub(*replay_ms)) {
                    replayed_promotion = promoted;
                    stats.promotion_replays.fetch_add(1, Relaxed);
                }
            }
        }
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            if let Some((p, _)) = &dead_letter {
                p.poll(Duration::ZERO);
            }
            continue;
        };
        let msg = match polled {
            Ok(m) => m,
            Err(e) => {
                // Broker down, rebalance in progress…: librdkafka retries by itself.
                stats.consumer_errors.fetch_add(1, Relaxed);
                let now = now_ms();
                if now.saturating_sub(last_error_log_ms) > 5_000 {
                    tracing::warn!(error = %e, "kafka consumer error (retrying)");
                    last_error_log_ms = now;
                }
                continue;
            }
        };
        let now = now_ms();
        match parse_record(msg.key(), msg.payload()) {
            Ok(inv) => {
                let removed = match &cluster {
                    None => apply(&store, &inv, now),
                    Some((c, _)) => {
                        let (removed, floors) = apply_in_cluster(&store, c, &inv, now);
                        stats
                            .floors_raised_as_replica
                            .fetch_add(floors as u64, Relaxed);
                        removed
                    }
                };
                stats.records_applied.fetch_add(1, Relaxed);
                stats.keys_invalidated.fetch_add(removed as u64, Relaxed);
                if let Some(ts) = msg.timestamp().to_millis() {
                    stats.note_latency(now.saturating_sub(u64::try_from(ts).unwrap_or(now)));
                }
            }
            Err(why) => {
                stats.records_malformed.fetch_add(1, Relaxed);
                tracing::warn!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    %why,
                    "malformed invalidation record skipped"
                );
                if let Some((p, topic)) = &dead_letter {
                    let mut rec = BaseRecord::<[u8], [u8]>::to(topic);
                    if let Some(k) = msg.key() {
                        rec = rec.key(k);
                    }
                    if let Some(v) = msg.payload() {
                        rec = rec.payload(v);
                    }
                    match p.send(rec) {
                        Ok(()) => {
                            stats.dead_lettered.fetch_add(1, Relaxed);
                        }
                        Err((e, _)) => tracing::warn!(error = %e, "dead-letter send failed"),
                    }
                    p.poll(Duration::ZERO);
                }
            }
        }
        // Applied (or deliberately skipped): only now may the offset be committed.
        if let Err(e) = consumer.store_offset_from_message(&msg) {
            tracing::warn!(error = %e, "kafka offset store failed");
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final kafka commit");
    }
    if let Some((p, _)) = &dead_letter {
        let _ = p.flush(Duration::from_secs(5));
    }
}

/// Move every assigned partition's position back to the first record at or after
/// `since_ms` (record timestamps), never forward. `false` when it could not be done yet
/// (no assignment, broker unreachable): the caller tries again on the next poll.
fn replay_since(consumer: &BaseConsumer<Ctx>, since_ms: u64) -> bool {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let positions = match consumer.position() {
        Ok(p) if p.count() > 0 => p,
        Ok(_) => return false,
        Err(e) => {
            tracing::debug!(error = %e, "kafka position (replay after promotion)");
            return false;
        }
    };
    let mut wanted = rdkafka::TopicPartitionList::new();
    for e in positions.elements() {
        let ts = i64::try_from(since_ms).unwrap_or(i64::MAX);
        if let Err(err) =
            wanted.add_partition_offset(e.topic(), e.partition(), rdkafka::Offset::Offset(ts))
        {
            tracing::warn!(error = %err, "kafka replay after promotion");
            return false;
        }
    }
    let found = match consumer.offsets_for_times(wanted, TIMEOUT) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "kafka offsets for times (replay after promotion)");
            return false;
        }
    };
    let mut seek = rdkafka::TopicPartitionList::new();
    for e in found.elements() {
        // No record since then: Kafka answers the end (-1). Some brokers (tansu's memory
        // storage) answer 0 instead; the replay then re-reads the whole partition, which
        // costs time and cache misses but loses nothing.
        let rdkafka::Offset::Offset(from) = e.offset() else {
            continue;
        };
        let now_at = positions
            .find_partition(e.topic(), e.partition())
            .map(|p| p.offset());
        // Only backwards: a consumer that is behind keeps its own position, and so does one
        // that has not consumed from this partition since it started (no position yet: it
        // starts from its committed offset, which seeking could only skip past).
        let keep = match now_at {
            Some(rdkafka::Offset::Offset(at)) => at <= from,
            _ => true,
        };
        if !keep {
            let _ =
                seek.add_partition_offset(e.topic(), e.partition(), rdkafka::Offset::Offset(from));
        }
    }
    if seek.count() == 0 {
        return true;
    }
    match consumer.seek_partitions(seek, TIMEOUT) {
        Ok(done) => {
            tracing::info!(
                since_ms,
                partitions = done.count(),
                "promoted: replaying invalidations"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "kafka seek (replay after promotion)");
            false
        }
    }
}

/// Delivery outcome counter for the producer command.
struct Delivery {
    failed: AtomicU64,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            eprintln!("meridian invalidate: delivery failed: {e}");
            self.failed.fetch_add(1, Relaxed);
        }
    }
}

/// `meridian invalidate`: publish one record per key and wait for delivery.
pub fn produce(
    brokers: &str,
    topic: &str,
    keys: &[String],
    version: Option<u64>,
) -> Result<(), String> {
    let producer: BaseProducer<Delivery> = producer_config(brokers, &BTreeMap::new())
        .create_with_context(Delivery {
            failed: AtomicU64::new(0),
        })
        .map_err(|e| format!("kafka producer: {e}"))?;
    let value = record_value(version);
    for key in keys {
        let mut rec = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(&value[..]);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, back)) => {
                    if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                        return Err(format!("send {key}: {e}"));
                    }
                    producer.poll(Duration::from_millis(50));
                    rec = back;
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("flush: {e}"))?;
    match producer.context().failed.load(Relaxed) {
        0 => Ok(()),
        n => Err(format!("{n} record(s) not delivered")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(keys: &[&str], version: Option<u64>) -> Invalidation {
        Invalidation {
            keys: keys.iter().map(|k| Bytes::from(k.to_string())).collect(),
            version,
        }
    }

    #[test]
    fn empty_value_is_an_unversioned_invalidation_of_the_record_key() {
        assert_eq!(parse_record(Some(b"k"), None), Ok(inv(&["k"], None)));
        assert_eq!(parse_record(Some(b"k"), Some(b"")), Ok(inv(&["k"], None)));
    }

    #[test]
    fn versioned_and_batched_forms_parse() {
        assert_eq!(
            parse_record(Some(b"k"), Some(br#"{"version": 42}"#)),
            Ok(inv(&["k"], Some(42)))
        );
        assert_eq!(
            parse_record(None, Some(br#"{"keys": ["a", "b"], "version": 7}"#)),
            Ok(inv(&["a", "b"], Some(7)))
        );
        assert_eq!(record_value(Some(9)), br#"{"version":9}"#.to_vec());
    }

    #[test]
    fn anything_else_is_malformed() {
        for (key, value) in [
            (None, &b""[..]),
            (Some(&b"k"[..]), &b"not json"[..]),
            (Some(&b"k"[..]), &br#"{"version": -1}"#[..]),
            (Some(&b"k"[..]), &br#"{"version": 0}"#[..]),
            (Some(&b"k"[..]), &br#"{"version": "5"}"#[..]),
            (Some(&b"k"[..]), &br#"{"version": 5, "extra": 1}"#[..]),
            (Some(&b"k"[..]), &br#"{"keys": [], "version": 5}"#[..]),
            (Some(&b"k"[..]), &br#"{"keys": [1], "version": 5}"#[..]),
            (Some(&b"k"[..]), &br#"{"keys": ["a"]}"#[..]),
            (Some(&b"k"[..]), &br#"[1,2]"#[..]),
            (Some(&b"k"[..]), &b"\xff\xfe"[..]),
        ] {
            assert!(
                parse_record(key, Some(value)).is_err(),
                "{key:?} {:?} must be malformed",
                String::from_utf8_lossy(value)
            );
        }
    }
}
