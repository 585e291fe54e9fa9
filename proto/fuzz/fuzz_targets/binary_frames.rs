//! cargo-fuzz target: the `binary_frames` property of `checks/proto.rs`.
//!
//! Run from `proto/`: `cargo +nightly fuzz run binary_frames` (see `fuzz/README.md`).
#![no_main]

#[path = "../checks/proto.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::binary_frames(data);
});
