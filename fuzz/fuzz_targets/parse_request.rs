//! RESP requests: `meridian::frame::parse_request` on the stream whole and
//! `parse_request_resume` chunk by chunk must agree, and every request must re-encode to
//! the same arguments.
//! The checks are `meridian_fuzzing::targets`' (shared with the stable harness,
//! `meridian-fuzz`); seed the corpus with real frames first:
//! `cargo run -p meridian-fuzzing --bin meridian-fuzz -- --write-corpus fuzz/corpus`, then
//! `cargo +nightly fuzz run parse_request` from `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_fuzzing::Target;

fuzz_target!(|data: &[u8]| {
    Target::Resp.check(data);
});
