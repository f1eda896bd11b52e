//! Pack files (trailer, footer, frames) are read from disk: never panic, never out of bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata::fuzzing::pack(data));
