//! cargo-fuzz target: the `stream_framing` property of `checks/proto.rs`.
//!
//! Run from `proto/`: `cargo +nightly fuzz run stream_framing` (see `fuzz/README.md`).
#![no_main]

#[path = "../checks/proto.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::stream_framing(data);
});
