//! Region link frames: `meridian_replication::codec::decode`.
//! The checks are `meridian_fuzzing::targets`' (shared with the stable harness,
//! `meridian-fuzz`); seed the corpus with real frames first:
//! `cargo run -p meridian-fuzzing --bin meridian-fuzz -- --write-corpus fuzz/corpus`, then
//! `cargo +nightly fuzz run region_codec` from `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_fuzzing::Target;

fuzz_target!(|data: &[u8]| {
    Target::RegionCodec.check(data);
});
