//! Key files of encrypted repositories: any bytes decode or fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata::fuzzing::key_file(data));
