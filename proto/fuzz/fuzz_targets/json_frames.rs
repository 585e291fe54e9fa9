//! cargo-fuzz target: the `json_frames` property of `checks/proto.rs`.
//!
//! Run from `proto/`: `cargo +nightly fuzz run json_frames` (see `fuzz/README.md`).
#![no_main]

#[path = "../checks/proto.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::json_frames(data);
});
