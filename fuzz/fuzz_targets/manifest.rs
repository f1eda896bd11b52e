//! Snapshot manifests are read from disk: any bytes must decode or fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = strata::manifest::Manifest::decode(data, None, None);
    // Also behind a valid frame, so the fuzzer reaches zstd and bincode.
    let framed = strata::codec::frame::wrap(strata::manifest::MAGIC, strata::manifest::VERSION, data);
    let _ = strata::manifest::Manifest::decode(&framed, None, None);
});
