//! Random backup / forget / gc / restore sequences under injected storage faults, checked against a model.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata::fuzzing::model(data));
