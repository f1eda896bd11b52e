//! Pack files are read from disk: trailer parsing must never panic or read out of bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = strata::pack::parse_pack(data, "fuzz") {
        for e in entries {
            let end = e.offset as usize + e.stored_len as usize;
            assert!(end <= data.len());
        }
    }
});
