//! cargo-fuzz target: REST requests through a center's router
//! (`checks/rest.rs`).
//!
//! Run from `proto/`: `cargo +nightly fuzz run rest_bodies` (see `fuzz/README.md`).
#![no_main]

#[path = "../checks/rest.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::rest_bodies(data);
});
