//! Stable smoke runs of the fuzz targets of proto's decoders (JSON frames,
//! binary frames, stream framing, tokens): the same properties as
//! `proto/fuzz` (`proto/fuzz/checks/proto.rs`), on the committed seeds
//! (`proto/fuzz/seeds/<target>`, crash regressions included), generated
//! seeds, random bytes and mutants, a bounded number of inputs each.
//!
//! `cargo test -p pushgate-proto --test fuzz_smoke -- --ignored write_seeds`
//! rewrites the generated seed files.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../fuzz/checks/proto.rs"]
mod checks;
#[path = "../fuzz/checks/smoke.rs"]
mod smoke;

use std::path::PathBuf;

fn seed_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
}

fn seeds(target: &str, generated: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut all = smoke::seed_files(&seed_dir(target));
    all.extend(generated);
    all
}

#[test]
fn json_frames_smoke() {
    smoke::run(
        "json_frames",
        seeds("json_frames", checks::json_seeds()),
        30_000,
        checks::json_frames,
    );
}

#[test]
fn binary_frames_smoke() {
    smoke::run(
        "binary_frames",
        seeds("binary_frames", checks::binary_seeds()),
        50_000,
        checks::binary_frames,
    );
}

#[test]
fn stream_framing_smoke() {
    smoke::run(
        "stream_framing",
        seeds("stream_framing", checks::stream_seeds()),
        20_000,
        checks::stream_framing,
    );
}

#[test]
fn tokens_smoke() {
    smoke::run(
        "tokens",
        seeds("tokens", checks::token_seeds()),
        10_000,
        checks::tokens,
    );
}

/// Regression (binary_frames, first minute of fuzzing): a `msg` whose data
/// is a JSON string of invalid UTF-8 was accepted by `binary::decode_server`
/// and turned into a JSON frame that is not UTF-8. The input is also in
/// `proto/fuzz/seeds/binary_frames/crash-1761f665…`.
#[test]
fn regression_msg_data_must_be_utf8() {
    let input = [
        0x85, 0x00, 0xfc, 0xff, 0x01, 0x0f, 0x08, b'"', 0xa9, 0x8a, 0xce, 0xca, b'e', b'9', b'"',
    ];
    assert_eq!(
        proto::binary::decode_server(&input),
        Err(proto::DecodeError::BadField("data"))
    );
    checks::binary_frames(&input);
}

/// The smoke runner fails on a property violation (it is not a no-op).
#[test]
#[should_panic(expected = "check failed")]
fn smoke_runner_fails_on_a_broken_property() {
    smoke::run("broken", vec![b"x".to_vec()], 10, |d| {
        assert!(d.len() > 10, "short input");
        true
    });
}

/// Writes the generated seeds into `proto/fuzz/seeds/<target>/` (the fuzz
/// runs start from them).
#[test]
#[ignore = "writes files: run by hand when the samples change"]
fn write_seeds() {
    for (target, seeds) in [
        ("json_frames", checks::json_seeds()),
        ("binary_frames", checks::binary_seeds()),
        ("stream_framing", checks::stream_seeds()),
        ("tokens", checks::token_seeds()),
    ] {
        let dir = seed_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}
