//! Stable smoke run of the `rest_bodies` fuzz target
//! (`proto/fuzz/checks/rest.rs`): requests with arbitrary bodies and path
//! segments through a center's router over in-memory doubles, on seeds,
//! random bytes and mutants, a bounded number of inputs. No answer may be a
//! 5xx or an error body of another shape, and nothing may panic.
//!
//! `cargo test -p pushgate-center --test fuzz_smoke -- --ignored write_seeds`
//! rewrites the generated seed files.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../proto/fuzz/checks/rest.rs"]
mod rest;
#[path = "../../proto/fuzz/checks/smoke.rs"]
mod smoke;

use std::path::PathBuf;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/fuzz/seeds/rest_bodies")
}

#[test]
fn rest_bodies_smoke() {
    let mut seeds = smoke::seed_files(&seed_dir());
    seeds.extend(rest::rest_seeds());
    smoke::run("rest_bodies", seeds, 20_000, rest::rest_bodies);
}

/// Writes the generated seeds into `proto/fuzz/seeds/rest_bodies/`.
#[test]
#[ignore = "writes files: run by hand when the samples change"]
fn write_seeds() {
    std::fs::create_dir_all(seed_dir()).unwrap();
    for (i, s) in rest::rest_seeds().iter().enumerate() {
        std::fs::write(seed_dir().join(format!("seed-{i:02}")), s).unwrap();
    }
}
