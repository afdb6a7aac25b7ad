//! The harness itself: every target's seeds are real, accepted frames (the codecs give back
//! the encoded value), and a short deterministic run of each finds nothing and reaches both
//! accepted and rejected inputs (the mutations neither leave everything intact nor destroy
//! everything).

use meridian_fuzzing::{fuzz, hex, run, unhex, Outcome, Target};
use meridian_regions::bus::{self, Body};
use meridian_regions::topology::NodeId;

#[test]
fn seeds_are_real_frames_that_round_trip() {
    for t in Target::ALL {
        t.check_seeds();
    }
}

#[test]
fn short_runs_find_nothing_and_reach_both_outcomes() {
    for t in Target::ALL {
        let stats = match run(t, 3_000, 7, None) {
            Ok(s) => s,
            Err(c) => panic!(
                "{} crashed: {}\ninput: {}",
                t.name(),
                c.message,
                hex(&c.input)
            ),
        };
        assert_eq!(stats.executions, 3_000);
        assert!(stats.accepted > 0, "{}: nothing accepted", t.name());
        assert!(stats.rejected > 0, "{}: nothing rejected", t.name());
    }
}

#[test]
fn replayed_inputs_and_target_names() {
    // A crash report prints the input in hex; `--replay` reads it back.
    let input = b"\x05*1\r\n$4\r\nPING\r\n";
    assert_eq!(unhex(&hex(input)).as_deref(), Some(&input[..]));
    assert_eq!(Target::Resp.check(input), Outcome::Accepted);
    assert_eq!(Target::from_name("parse_request"), Some(Target::Resp));
    assert_eq!(Target::from_name("kafka-record"), Some(Target::KafkaRecord));
}

/// The harness finds a bug that only a well-formed but unusual frame triggers: a cluster
/// bus decoder that (wrongly) panics on a Fail message about a node no seed names. The
/// crash comes back with an input that replays it.
#[test]
fn an_injected_decoder_bug_is_found_and_replays() {
    let buggy = |data: &[u8]| {
        if let Ok(Some((msg, _))) = bus::decode(data) {
            if matches!(msg.body, Body::Fail { node } if node != NodeId::from_u128(9)) {
                panic!("injected bug");
            }
        }
        Target::ClusterBus.check(data)
    };
    let t = Target::ClusterBus;
    let (_, input, message) = fuzz(buggy, &t.seeds(), t.dict(), t.lengths(), 1_000_000, 3, None)
        .expect_err("the injected bug is found");
    assert_eq!(message, "injected bug");
    let replay = std::panic::catch_unwind(|| buggy(&input));
    assert!(replay.is_err(), "the reported input replays the crash");
}
