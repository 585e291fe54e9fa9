//! `bench c1m --workers-file`: the load generators as listening workers
//! (`bench c1m-worker --listen`), as they would run on another machine.
//! Two workers on 127.0.0.1 (one with its own `--bind`), a started
//! `pushgate dev-cluster`, 2,000 connections, every phase but the killed
//! room shortened, no loss allowed. A separate test binary from
//! `c1m_smoke.rs`, so the two clusters do not run at once.
//!
//! Needs `redis-server` on the PATH and the `pushgate` binary next to
//! `bench` (see `c1m_smoke.rs`).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A listening worker, killed when dropped (if it has not exited).
struct ListeningWorker {
    child: Child,
    addr: String,
}

impl Drop for ListeningWorker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn listening_worker(extra: &[&str]) -> ListeningWorker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["c1m-worker", "--listen", "127.0.0.1:0", "--wait", "5m"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a listening worker");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the worker's first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .to_string();
    ListeningWorker { child, addr }
}

#[test]
fn listening_workers_lose_nothing() {
    let out = tempfile::tempdir().expect("temp dir");
    let a = listening_worker(&["--bind", "127.0.0.5,127.0.0.6"]);
    let mut b = listening_worker(&[]);
    let file = out.path().join("workers.txt");
    std::fs::write(
        &file,
        format!("# two workers\n{}\n\n{}  # the second\n", a.addr, b.addr),
    )
    .expect("workers file");
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "c1m",
            "--connections",
            "2000",
            "--per-room",
            "1500",
            "--ramp-rate",
            "2000",
            "--hold",
            "2s",
            "--settle",
            "1s",
            "--broadcasts",
            "2",
            "--channels",
            "4",
            "--channel-rounds",
            "1",
            "--unicast-rate",
            "500",
            "--unicast-for",
            "2s",
            "--unicast-concurrency",
            "16",
            "--no-kill",
            // The paced mode here; c1m_smoke.rs has each broadcast wait.
            "--broadcast-gap",
            "300ms",
            "--floor-delivery-us",
            "5",
            "--floor-ping-us",
            "20",
            "--workers-file",
        ])
        .arg(&file)
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run bench c1m");
    if let Ok(md) = std::fs::read_to_string(out.path().join("report.md")) {
        eprintln!("{md}");
    }
    assert!(status.success(), "bench c1m failed ({status})");
    let report = std::fs::read(out.path().join("report.json")).expect("report.json");
    let r: serde_json::Value = serde_json::from_slice(&report).expect("report is JSON");
    assert_eq!(r["incomplete"], serde_json::Value::Null);
    assert_eq!(r["config"]["workers"], 2);
    assert_eq!(
        r["config"]["remote_workers"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(r["config"]["broadcast_gap_s"], 0.3);
    assert_eq!(r["ramp"]["authenticated"], 2000);
    assert_eq!(r["hold"]["drops"], 0);
    assert_eq!(r["hold"]["live_end"], 2000);
    let bc = &r["broadcasts"];
    assert_eq!(bc["missed"], 0);
    assert_eq!(bc["deliveries"], 4000);
    for b in bc["each"].as_array().expect("each broadcast") {
        assert_eq!(b["received"], b["expected"], "{b}");
        assert!(b["floor_bound_ms"].is_number(), "{b}");
        assert!(b["last_to_floor"].is_number(), "{b}");
        // The server names each broadcast's task and the bench waits for it.
        let task = &b["task_view"];
        assert_eq!(task["state"], "done", "{b}");
        assert_eq!(task["delivered"], b["expected"], "{b}");
        // A server reporting skipped and pending: the counts add up to the
        // connections live at fan-out.
        if let (Some(s), Some(p)) = (task["skipped"].as_u64(), task["pending"].as_u64()) {
            assert_eq!(
                task["delivered"].as_u64().map(|d| d + s + p),
                b["expected"].as_u64(),
                "{b}"
            );
        }
    }
    assert_eq!(r["channels"]["received"], 2000);
    for phase in ["unicast_fixed", "unicast_max"] {
        assert_eq!(r[phase]["lost"], 0, "{phase}");
        assert!(r[phase]["acked"].as_u64().unwrap_or(0) > 0, "{phase}");
        assert_eq!(r[phase]["received"], r[phase]["acked"], "{phase}");
    }
    assert_eq!(r["rest"]["non_2xx"].get("503"), None, "{}", r["rest"]);
    // Without --keep, a worker exits once its runner is done.
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        matches!(b.child.try_wait(), Ok(Some(s)) if s.success()),
        "the worker did not exit after its runner"
    );
}
