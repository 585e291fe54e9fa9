//! The `c1m` benchmark as a smoke test: 20,000 connections through a real
//! `pushgate dev-cluster` (three rooms, Redis, two load-generator worker
//! processes), every phase shortened (the floor measured first, on 2,000
//! connections), and no loss allowed: every connection
//! authenticated and held, every broadcast and channel push delivered to
//! everyone, every acknowledged unicast received, and every client of the
//! killed room back with nothing lost. Timings are not asserted (they are
//! the benchmark's business, not a test's).
//!
//! Needs `redis-server` on the PATH (scripts/test installs it) and an
//! open-files limit of at least 10,200. It runs the `pushgate` binary next to
//! `bench` (`cargo test --workspace` builds both; run alone, `cargo build -p
//! pushgate` first so the binary is current).

use std::process::Command;

#[test]
fn twenty_thousand_connections_lose_nothing() {
    let out = tempfile::tempdir().expect("temp dir");
    let bench = env!("CARGO_BIN_EXE_bench");
    let status = Command::new(bench)
        .args([
            "c1m",
            "--connections",
            "20000",
            "--per-room",
            "10000",
            "--per-worker",
            "10000",
            "--ramp-rate",
            "10000",
            "--hold",
            "5s",
            "--settle",
            "2s",
            "--broadcasts",
            "3",
            "--channels",
            "10",
            "--channel-rounds",
            "1",
            "--unicast-rate",
            "1000",
            "--unicast-for",
            "4s",
            "--unicast-concurrency",
            "32",
            "--floor",
            "2000",
            "--floor-hold",
            "3s",
            "--floor-broadcasts",
            "2",
            "--out",
        ])
        .arg(out.path())
        .status()
        .expect("run bench c1m");
    let report = std::fs::read(out.path().join("report.json"));
    if let Ok(md) = std::fs::read_to_string(out.path().join("report.md")) {
        eprintln!("{md}");
    }
    assert!(
        status.success(),
        "bench c1m failed ({status}); a missing redis-server is installed by \
         `apt-get install redis-server` (scripts/test does it)"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&report.expect("report.json")).expect("report is JSON");
    assert_eq!(r["incomplete"], serde_json::Value::Null);
    // The floor, measured first by the same kind of worker: its figures are
    // the run's.
    let floor = &r["floor"];
    assert_eq!(floor["authenticated"], 2000, "{floor}");
    assert_eq!(floor["deliveries"], 4000, "{floor}");
    assert_eq!(floor["drops"], 0, "{floor}");
    assert!(floor["pongs"].as_u64().unwrap_or(0) > 0, "{floor}");
    assert!(floor["ping_us"].as_f64().unwrap_or(0.0) > 0.0, "{floor}");
    assert!(
        floor["delivery_us"].as_f64().unwrap_or(0.0) > 0.0,
        "{floor}"
    );
    assert_eq!(r["config"]["floor_ping_us"], floor["ping_us"]);
    assert_eq!(r["config"]["floor_delivery_us"], floor["delivery_us"]);
    assert_eq!(r["ramp"]["authenticated"], 20000);
    assert_eq!(r["hold"]["drops"], 0);
    assert_eq!(r["hold"]["live_end"], 20000);
    assert_eq!(r["broadcasts"]["missed"], 0);
    assert_eq!(r["broadcasts"]["deliveries"], 60000);
    assert_eq!(r["channels"]["received"], r["channels"]["expected"]);
    assert_eq!(r["channels"]["received"], 20000);
    for phase in ["unicast_fixed", "unicast_max"] {
        assert_eq!(r[phase]["lost"], 0, "{phase}");
        assert!(r[phase]["acked"].as_u64().unwrap_or(0) > 0, "{phase}");
        assert_eq!(r[phase]["received"], r[phase]["acked"], "{phase}");
    }
    // The registers and the saver were scraped too: how long they took to
    // answer, as they timed it, beside their callers' view; phase by phase.
    let internal = &r["internal"];
    let calls = |list: &str, service: &str| {
        internal[list]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["service"] == service))
            .and_then(|c| c["calls"].as_u64())
            .unwrap_or(0)
    };
    for service in ["register", "saver"] {
        assert!(
            calls("services", service) > 0,
            "{service} called: {internal}"
        );
        assert!(calls("served", service) > 0, "{service} served: {internal}");
    }
    // Rooms call registers for each of their connections.
    assert!(calls("served", "register") >= 20000, "{internal}");
    let phases: Vec<&str> = internal["phases"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["phase"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        phases,
        [
            "ramp",
            "settle and hold",
            "broadcasts",
            "channels",
            "unicast"
        ],
        "{internal}"
    );
    let kill = &r["kill"];
    assert!(kill["clients"].as_u64().unwrap_or(0) > 5000, "{kill}");
    assert_eq!(kill["reconnected"], kill["clients"]);
    assert!(kill["all_back_ms"].is_number(), "{kill}");
    assert_eq!(kill["lost"], 0);
    assert!(kill["pushes_acked"].as_u64().unwrap_or(0) > 0, "{kill}");
    for f in ["latency.svg", "connections.svg", "memory.svg"] {
        let svg = std::fs::read_to_string(out.path().join(f)).expect(f);
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{f}");
    }
}
