//! `bench compare --floor-only` end to end: it starts `bench floor` as a
//! process, runs the `idle` workload against it (connect, heartbeats,
//! broadcasts), stops it, and writes the Markdown results. Counts and the
//! file's shape are checked, not timings.

use std::process::Command;

#[test]
fn compare_against_the_floor_writes_results() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("floor.md");
    let bench = env!("CARGO_BIN_EXE_bench");
    let run = Command::new(bench)
        .args([
            "compare",
            "--floor-only",
            "--connections",
            "40",
            "--rate",
            "2000",
            "--settle",
            "0s",
            "--hold",
            "1500ms",
            "--heartbeats",
            "1",
            "--broadcasts",
            "2",
            "--runs",
            "1",
            "--sources",
            "127.0.0.2-127.0.0.3",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("running bench compare");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "bench compare failed: {}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("broadcasts: 2 sent (0 failed), 80/80 delivered"),
        "{stdout}"
    );
    let md = std::fs::read_to_string(&out).expect("results file");
    assert!(
        md.contains("| 1 s | server CPU per heartbeat (µs) |"),
        "{md}"
    );
    assert!(md.contains("| 1 | 1 s | floor | 40/40 |"), "{md}");
    assert!(md.contains("bench idle --transport ws"), "{md}");
    assert!(md.contains("--token-secret $SECRET"), "{md}");
    assert!(md.contains("bench floor --ws 127.0.0.1:0"), "{md}");
}
