//! cargo-fuzz target: link frames (`checks/link.rs`) whose bodies are read as
//! every service's requests and answers (`checks/services.rs`) and as the
//! generic shapes.
//!
//! Run from `proto/`: `cargo +nightly fuzz run link_wire` (see `fuzz/README.md`).
#![no_main]

#[path = "../checks/link.rs"]
mod link_checks;
#[path = "../checks/services.rs"]
mod service_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    link_checks::link_frames(data, &|body| {
        link_checks::generic_bodies(body) | service_checks::service_bodies(body)
    });
});
