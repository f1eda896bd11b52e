//! The repository config: any bytes decode or fail cleanly; decoded ones round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata::fuzzing::config(data));
