//! Stable smoke run of the `link_wire` fuzz target's framing and generic
//! bodies (`proto/fuzz/checks/link.rs`): tokio-util's length-delimited
//! codec as links configure it, then the hello, the welcome and
//! `(request id, body)` frames, on seeds, random bytes and mutants, a
//! bounded number of inputs. (The services' own message types are fuzzed by
//! the `link_wire` target only: see `proto/fuzz/checks/services.rs`.)
//!
//! `cargo test -p pushgate-link --test fuzz_smoke -- --ignored write_seeds`
//! rewrites the generated seed files.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../proto/fuzz/checks/link.rs"]
mod link_checks;
#[path = "../../proto/fuzz/checks/smoke.rs"]
mod smoke;

use std::path::PathBuf;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/fuzz/seeds/link_wire")
}

#[test]
fn link_wire_smoke() {
    let mut seeds = smoke::seed_files(&seed_dir());
    seeds.extend(link_checks::link_seeds());
    smoke::run("link_wire", seeds, 30_000, |d| {
        link_checks::link_frames(d, &link_checks::generic_bodies)
    });
}

/// The decoders refuse what they must: an oversized length before its body
/// arrives, a hello of the wrong shape.
#[test]
fn link_limits_hold() {
    // 4-byte length 0x0100_0001 (16 MiB + 1) with the default limit: no frame.
    let mut over = vec![0u8];
    over.extend_from_slice(&[0x01, 0x00, 0x00, 0x01]);
    assert!(!link_checks::link_frames(&over, &|_| true));
    // A frame of exactly the limit (limit byte 5 -> 5 bytes) is delivered.
    let mut at = vec![5u8];
    at.extend(link_checks::framed(&[0, 1, 2, 3, 4]));
    assert!(link_checks::link_frames(&at, &|_| true));
    assert!(!link_checks::round_trip::<link::Hello>(&[0xff; 3]));
}

/// Writes the generated seeds into `proto/fuzz/seeds/link_wire/`.
#[test]
#[ignore = "writes files: run by hand when the samples change"]
fn write_seeds() {
    std::fs::create_dir_all(seed_dir()).unwrap();
    for (i, s) in link_checks::link_seeds().iter().enumerate() {
        std::fs::write(seed_dir().join(format!("seed-{i:02}")), s).unwrap();
    }
}
