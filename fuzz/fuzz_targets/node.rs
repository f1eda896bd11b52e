//! Chunk-list tree nodes are read from packs: decoding must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = strata::tree::Node::decode(data, &"fuzz") {
        assert_eq!(node.encode(), data);
    }
});
