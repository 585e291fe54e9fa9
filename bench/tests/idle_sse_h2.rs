//! `bench idle --transport sse-h2` against a real standalone `pushgate` with
//! TLS on its WebSocket listener: 50 SSE streams over HTTP/2, 20 per
//! connection (so three TLS connections), all authenticated, held through
//! heartbeat comments (counted as pongs; no pings sent), none dropped.
//!
//! It runs the `pushgate` binary next to `bench` (`cargo test --workspace`
//! builds both; run alone, `cargo build -p pushgate` first so the binary is
//! current), as the c1m smoke test does.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A standalone server; killed when dropped.
struct Server {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `pushgate` on `data` with `extra` flags and waits for `ready`.
    fn start(bin: &Path, data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(bin)
            .arg("--data")
            .arg(data)
            .args([
                "--ws",
                "127.0.0.1:0",
                "--tcp",
                "127.0.0.1:0",
                "--quic",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no `ready` from pushgate: {lines:?}"));
            let ready = line.contains("ready");
            lines.push(line);
            if ready {
                break;
            }
        }
        Server { child, lines }
    }

    /// The value after `prefix` on its start-up lines.
    fn value(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| {
                let i = l.find(prefix)?;
                l[i + prefix.len()..].split_whitespace().next()
            })
            .unwrap_or_else(|| panic!("no {prefix:?} in {:?}", self.lines))
            .to_string()
    }
}

fn pushgate_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let bin = bench.with_file_name("pushgate");
    assert!(
        bin.exists(),
        "{} is missing: `cargo build -p pushgate` first",
        bin.display()
    );
    bin
}

#[test]
fn fifty_streams_over_three_h2_connections_hold() {
    let bin = pushgate_bin();
    let dir = tempfile::tempdir().expect("temp dir");
    // A first start generates the self-signed certificate (for QUIC) in
    // DATA; the second serves it on the WebSocket listener too.
    drop(Server::start(&bin, dir.path(), &[]));
    let cert = dir.path().join("tls_cert.pem");
    let key = dir.path().join("tls_key.pem");
    let cert_s = cert.display().to_string();
    let key_s = key.display().to_string();
    let server = Server::start(
        &bin,
        dir.path(),
        &[
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
            "--heartbeat",
            "1",
        ],
    );
    let ws = server.value("ws listening on ");
    let secret = server.value("token secret: ");
    let out = dir.path().join("idle.json");
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "idle",
            "--transport",
            "sse-h2",
            "--ws",
            &format!("wss://{ws}/ws"),
            "--tls-ca",
            &cert_s,
            "--h2-streams",
            "20",
            "--connections",
            "50",
            "--hold",
            "2500ms",
            "--token-secret",
            &secret,
            "--json-out",
        ])
        .arg(&out)
        .status()
        .expect("run bench idle");
    assert!(status.success(), "bench idle failed: {status}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("idle.json")).expect("json");
    assert_eq!(r["transport"], "sse-h2", "{r}");
    assert_eq!(r["authenticated"], 50, "{r}");
    assert_eq!(r["connect_failed"], 0, "{r}");
    assert_eq!(r["unexpected_closes"], 0, "{r}");
    assert_eq!(r["live_at_end"], 50, "{r}");
    assert_eq!(r["undecodable"], 0, "{r}");
    // Nothing goes out after the request; the heartbeat comments come in.
    assert_eq!(r["pings_sent"], 0, "{r}");
    assert!(r["pongs"].as_u64().unwrap_or(0) >= 50, "{r}");
}
