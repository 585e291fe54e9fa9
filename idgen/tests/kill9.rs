//! A real crash test: a child process (this test binary, re-executed in
//! "child mode") hands out ids and prints them; the parent kills it with
//! SIGKILL at random-ish moments, restarts it on the same data dir and checks
//! that every id after a restart is above every id seen before.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idgen::{nth_id, FileIdGen, IdGen};

/// Set in the child: the data dir to open.
const CHILD_ENV: &str = "PUSHGATE_IDGEN_KILL9_CHILD_DIR";
const REGION: u16 = 5;
const ROUNDS: usize = 6;

#[test]
fn kill_minus_9_never_repeats_or_goes_back() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut max_seen: i64 = 0;
    for round in 0..ROUNDS {
        let mut child = spawn_child(dir.path());
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Read a varying number of batches before the kill, so it lands at
        // different points relative to block boundaries.
        let want = 200 + round * 377;
        let mut got = 0;
        while got < want {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("round {round}: child exited early"))
                .unwrap();
            let Some(rest) = line.strip_prefix("ids ") else {
                continue; // libtest chatter
            };
            let mut it = rest.split(' ').map(|x| x.parse::<i64>().unwrap());
            let (first, last) = (it.next().unwrap(), it.next().unwrap());
            assert!(
                first > max_seen,
                "round {round}: id {first} not above {max_seen} seen before"
            );
            assert!(last >= first);
            max_seen = last;
            got += 1;
        }
        sigkill(&mut child);
    }
    assert!(max_seen > 0);
}

fn spawn_child(dir: &Path) -> Child {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args([
            "kill_minus_9_never_repeats_or_goes_back",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// SIGKILL by PID (through `kill -9`, the crate forbids unsafe code), then reap.
fn sigkill(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 failed");
    let exit = child.wait().unwrap();
    assert!(!exit.success(), "the child should have died of SIGKILL");
}

/// Child mode: hand out batches of varying sizes, print `ids <first> <last>`
/// per batch. Stops by itself after 60 s or when stdout is closed.
fn child(dir: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use std::io::Write;
        let g = FileIdGen::open(dir, REGION).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let sizes = [1u32, 7, 3_000, 50_000, 2, 20_000];
        let mut out = std::io::stdout().lock();
        let mut i = 0usize;
        while Instant::now() < deadline {
            let n = sizes[i % sizes.len()];
            i += 1;
            let first = g.next_ids(n).await.unwrap();
            let last = nth_id(first, n - 1);
            if writeln!(out, "ids {} {}", first.0, last.0).is_err() || out.flush().is_err() {
                return;
            }
        }
    });
}
