//! Chunk-list tree nodes are read from packs: decoding never panics and round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata::fuzzing::node(data));
