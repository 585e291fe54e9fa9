//! cargo-fuzz target: the `tokens` property of `checks/proto.rs`.
//!
//! Run from `proto/`: `cargo +nightly fuzz run tokens` (see `fuzz/README.md`).
#![no_main]

#[path = "../checks/proto.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::tokens(data);
});
