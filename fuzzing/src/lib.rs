//! A fuzz harness for meridian's wire decoders that runs on the stable toolchain with no
//! extra tools: a seed corpus of real frames (produced by the encoders), a deterministic
//! mutator, and one target per decoder that panics when the decoder panics or breaks a
//! property its callers rely on (see [`targets`]). `meridian-fuzz` drives it; the
//! cargo-fuzz crate in `fuzz/` runs the same targets coverage-guided on nightly.

pub mod corpus;
pub mod mutate;
pub mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

pub use mutate::Lengths;
use mutate::Mutator;
pub use targets::Outcome;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// RESP requests: `meridian::frame::parse_request` / `parse_request_resume`.
    Resp,
    /// Region link frames: `meridian_replication::codec::decode`.
    RegionCodec,
    /// Replica stream frames: `meridian_replication::replica_stream::frame::decode_frame`.
    ReplicaStream,
    /// Cluster bus messages: `meridian_regions::bus::decode`.
    ClusterBus,
    /// Cluster bus authentication: `meridian_regions::bus_auth` accept/verify.
    BusAuth,
    /// Kafka invalidation records: `meridian::kafka::parse_record`.
    KafkaRecord,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Resp,
        Target::RegionCodec,
        Target::ReplicaStream,
        Target::ClusterBus,
        Target::BusAuth,
        Target::KafkaRecord,
    ];

    /// The name on the command line (also the cargo-fuzz target's, with `_`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Resp => "resp",
            Target::RegionCodec => "region-codec",
            Target::ReplicaStream => "replica-stream",
            Target::ClusterBus => "cluster-bus",
            Target::BusAuth => "bus-auth",
            Target::KafkaRecord => "kafka-record",
        }
    }

    /// The cargo-fuzz target in `fuzz/` running this one.
    pub fn cargo_fuzz_name(self) -> &'static str {
        match self {
            Target::Resp => "parse_request",
            Target::RegionCodec => "region_codec",
            Target::ReplicaStream => "replica_stream",
            Target::ClusterBus => "cluster_bus",
            Target::BusAuth => "bus_auth",
            Target::KafkaRecord => "kafka_record",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == name || t.cargo_fuzz_name() == name)
    }

    /// Feeds one input to the decoder; panics on a failed check.
    pub fn check(self, data: &[u8]) -> Outcome {
        match self {
            Target::Resp => targets::resp(data),
            Target::RegionCodec => targets::region_codec(data),
            Target::ReplicaStream => targets::replica_stream(data),
            Target::ClusterBus => targets::cluster_bus(data),
            Target::BusAuth => targets::bus_auth(data),
            Target::KafkaRecord => targets::kafka_record(data),
        }
    }

    /// The seed corpus: real frames from the encoders.
    pub fn seeds(self) -> Vec<Vec<u8>> {
        match self {
            Target::Resp => corpus::resp_seeds(),
            Target::RegionCodec => corpus::region_seeds(),
            Target::ReplicaStream => corpus::replica_seeds(),
            Target::ClusterBus => corpus::bus_seeds(),
            Target::BusAuth => corpus::bus_auth_seeds(),
            Target::KafkaRecord => corpus::kafka_seeds(),
        }
    }

    pub fn dict(self) -> &'static [&'static [u8]] {
        match self {
            Target::Resp => corpus::RESP_DICT,
            Target::KafkaRecord => corpus::JSON_DICT,
            _ => corpus::WIRE_DICT,
        }
    }

    pub fn lengths(self) -> Lengths {
        match self {
            Target::Resp => Lengths::Resp,
            Target::KafkaRecord => Lengths::Text,
            Target::BusAuth => Lengths::Wire {
                first_frame: meridian_regions::bus_auth::NONCE_BYTES
                    + meridian_regions::bus_auth::HELLO_BYTES,
            },
            _ => Lengths::Wire { first_frame: 0 },
        }
    }

    /// Checks the seeds themselves: each is accepted whole (for the frame codecs, decoding
    /// gives back the value that was encoded, consuming every byte).
    pub fn check_seeds(self) {
        match self {
            Target::RegionCodec => {
                for f in corpus::region_frames() {
                    let bytes = meridian_replication::codec::encode(&f).expect("encodes");
                    let back = meridian_replication::codec::decode(&bytes);
                    assert_eq!(back, Ok(Some((f, bytes.len()))));
                }
            }
            Target::ReplicaStream => {
                use meridian_replication::replica_stream::frame::{decode_frame, encode_frame};
                for f in corpus::replica_frames() {
                    let mut bytes = Vec::new();
                    encode_frame(&f, &mut bytes).expect("encodes");
                    assert_eq!(decode_frame(&bytes), Ok(Some((f, bytes.len()))));
                }
            }
            Target::ClusterBus => {
                use meridian_regions::bus;
                for m in corpus::bus_messages() {
                    let bytes = bus::encode(&m).expect("encodes");
                    assert_eq!(bus::decode(&bytes), Ok(Some((m, bytes.len()))));
                }
            }
            Target::Resp | Target::BusAuth => {}
            Target::KafkaRecord => {}
        }
        for seed in self.seeds() {
            let outcome = self.check(&seed);
            // Some Kafka seeds are malformed records on purpose (version 0, no key...).
            if self != Target::KafkaRecord {
                assert_eq!(
                    outcome,
                    Outcome::Accepted,
                    "{}: seed {}",
                    self.name(),
                    hex(&seed)
                );
            }
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub executions: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub incomplete: u64,
    pub elapsed: Duration,
}

impl Stats {
    pub fn per_second(&self) -> f64 {
        self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A failed check: the input (replay it with `meridian-fuzz --target T --replay HEX`) and
/// the panic message.
#[derive(Clone, Debug)]
pub struct Crash {
    pub target: Target,
    pub execution: u64,
    pub input: Vec<u8>,
    pub message: String,
}

/// Runs `target` on up to `iterations` mutated seeds (stopping after `max_time` if given),
/// deterministically from `seed`. Stops at the first crash.
pub fn run(
    target: Target,
    iterations: u64,
    seed: u64,
    max_time: Option<Duration>,
) -> Result<Stats, Crash> {
    let seeds = target.seeds();
    fuzz(
        |data| target.check(data),
        &seeds,
        target.dict(),
        target.lengths(),
        iterations,
        seed,
        max_time,
    )
    .map_err(|(execution, input, message)| Crash {
        target,
        execution,
        input,
        message,
    })
}

/// The loop behind [`run`], for any check: the crash is (execution, input, panic message).
pub fn fuzz(
    check: impl Fn(&[u8]) -> Outcome,
    seeds: &[Vec<u8>],
    dict: &[&[u8]],
    lengths: Lengths,
    iterations: u64,
    seed: u64,
    max_time: Option<Duration>,
) -> Result<Stats, (u64, Vec<u8>, String)> {
    let mut mutator = Mutator::new(seed);
    let mut input = Vec::new();
    let mut stats = Stats::default();
    let start = Instant::now();
    while stats.executions < iterations {
        // Looking at the clock every 1024 inputs keeps it off the profile.
        if stats.executions % 1024 == 0 && max_time.is_some_and(|t| start.elapsed() >= t) {
            break;
        }
        mutator.input(seeds, dict, lengths, &mut input);
        stats.executions += 1;
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(Outcome::Accepted) => stats.accepted += 1,
            Ok(Outcome::Rejected) => stats.rejected += 1,
            Ok(Outcome::Incomplete) => stats.incomplete += 1,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err((stats.executions, input, message));
            }
        }
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
