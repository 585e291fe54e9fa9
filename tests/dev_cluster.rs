//! `pushgate dev-cluster` supervision: a child killed with `kill -9` (found
//! by its PID in the `--manifest` file) is started again with the same
//! command line and data directory, the manifest follows it, and the cluster
//! serves again; with `--no-restart` it stays down. Real processes and ports.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, spawn_raw};
use serde_json::{json, Value};
use tokio::process::Child;

/// A block of `n` loopback ports from `base` that is free now, in the
/// stretch `from..from+10_000` (each test its own stretch).
fn free_block(from: u16, n: u16) -> u16 {
    for _ in 0..200 {
        let b = from + (rand::random::<u16>() % 95) * 100;
        if (0..n).all(|o| std::net::TcpListener::bind(("127.0.0.1", b + o)).is_ok()) {
            return b;
        }
    }
    panic!("no free block of {n} ports from {from}");
}

/// Stops the dev cluster with SIGTERM if the test ends early (an outright
/// kill would leave its redis-server behind).
struct Term(u32);

impl Drop for Term {
    fn drop(&mut self) {
        if alive(self.0) {
            signal(self.0, "-TERM");
            for _ in 0..100 {
                if !alive(self.0) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pid}");
}

/// The command line of `pid` as /proc has it.
fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn read_manifest(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The manifest entry of process `name`.
fn process<'a>(m: &'a Value, name: &str) -> &'a Value {
    m["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no process {name} in {m:#}"))
}

fn pid_of(m: &Value, name: &str) -> Option<u32> {
    process(m, name)["pid"].as_u64().map(|p| p as u32)
}

/// Starts `pushgate dev-cluster` with `args` and `--manifest`, returning the
/// child, its stderr, the manifest path and a guard.
async fn start(
    dir: &Path,
    base: u16,
    args: &[&str],
) -> (
    Child,
    std::sync::Arc<parking_lot::Mutex<String>>,
    PathBuf,
    Term,
) {
    let manifest = dir.join("manifest.json");
    let data = dir.join("data");
    let mut all = vec![
        "dev-cluster".to_owned(),
        "--base-port".into(),
        base.to_string(),
        "--data".into(),
        data.display().to_string(),
        "--manifest".into(),
        manifest.display().to_string(),
        "--heartbeat".into(),
        "5".into(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (child, _lines, stderr) = spawn_raw(&all, &[], None).await;
    let term = Term(child.id().unwrap());
    (child, stderr, manifest, term)
}

/// SIGTERM to dev-cluster; it exits with success within 40 s.
async fn stop(mut child: Child, stderr: &parking_lot::Mutex<String>) {
    signal(child.id().unwrap(), "-TERM");
    let st = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("dev-cluster did not stop")
        .unwrap();
    assert!(st.success(), "{st}: {}", stderr.lock());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_restarts_killed_children_and_keeps_the_manifest_current() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_block(20_000, 110);
    let (child, stderr, path, _term) = start(dir.path(), base, &["--rooms", "1"]).await;
    let before = read_manifest(&path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the manifest holds the secrets");
    assert_eq!(before["restart"], true);
    assert_eq!(before["restarts"], 0);
    // Every pushgate child runs the command line the manifest gives (Redis
    // rewrites its own process title, so it is left out).
    for p in before["processes"].as_array().unwrap() {
        assert_eq!(p["restarts"], 0, "{p}");
        assert_eq!(p["ready"], true, "{p}");
        if p["name"] != "redis" {
            let argv: Vec<String> = serde_json::from_value(p["argv"].clone()).unwrap();
            let pid = p["pid"].as_u64().unwrap() as u32;
            assert_eq!(cmdline(pid), argv, "{p}");
        }
    }
    let idgen = process(&before, "idgen-1").clone();
    let idgen_dir = std::fs::canonicalize(dir.path().join("data/idgen-1")).unwrap();
    assert_eq!(idgen["data_dir"], idgen_dir.display().to_string());
    assert_eq!(idgen["region"], 1);
    assert_eq!(
        idgen["endpoints"]["listen"],
        format!("127.0.0.1:{}", base + 20)
    );
    let redis = process(&before, "redis");
    assert!(redis["data_dir"].as_str().unwrap().ends_with("/data/redis"));
    assert_eq!(
        redis["endpoints"]["listen"],
        format!("127.0.0.1:{}", base + 40)
    );

    // kill -9 a register, an idgen and redis-server by their manifest PIDs.
    let victims = ["register-1", "idgen-1", "redis"];
    let old: Vec<u32> = victims
        .iter()
        .map(|v| pid_of(&before, v).unwrap())
        .collect();
    for pid in &old {
        signal(*pid, "-KILL");
    }
    eventually(
        "the manifest shows every killed child restarted once, ready",
        Duration::from_secs(30),
        || {
            let m = read_manifest(&path);
            let done = victims.iter().zip(&old).all(|(v, old)| {
                let p = process(&m, v);
                pid_of(&m, v).is_some_and(|pid| pid != *old)
                    && p["restarts"] == 1
                    && p["ready"] == true
                    && p["last_exit"]
                        .as_str()
                        .is_some_and(|e| e.contains("SIGKILL"))
            });
            async move { done }
        },
    )
    .await;
    let after = read_manifest(&path);
    assert_eq!(after["restarts"], 3, "{after:#}");
    for pid in &old {
        assert!(!alive(*pid), "killed pid {pid} still there");
    }
    // The idgen came back with the same command line: data dir and region.
    let new_idgen = process(&after, "idgen-1");
    assert_eq!(new_idgen["argv"], idgen["argv"]);
    let argv: Vec<String> = serde_json::from_value(idgen["argv"].clone()).unwrap();
    assert_eq!(cmdline(pid_of(&after, "idgen-1").unwrap()), argv);
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "--data" && w[1] == idgen_dir.display().to_string()));
    assert!(argv.windows(2).any(|w| w[0] == "--region" && w[1] == "1"));
    // Untouched children kept their PIDs.
    assert_eq!(pid_of(&after, "register-2"), pid_of(&before, "register-2"));
    assert_eq!(pid_of(&after, "center-1"), pid_of(&before, "center-1"));

    // The cluster serves again: a stored push through the center's REST API
    // (the first store call after Redis came back may fail once while the
    // saver reconnects), and the stats.
    let http = reqwest::Client::new();
    let center = after["centers"][0].as_str().unwrap().to_owned();
    let key = after["api_key"].as_str().unwrap().to_owned();
    eventually("a stored push answers 200", Duration::from_secs(30), || {
        let req = http
            .post(format!("{center}/push/users"))
            .bearer_auth(&key)
            .json(&json!({"users": ["sup-user"], "data": "after restart"}))
            .send();
        async move {
            match req.await {
                Ok(r) if r.status() == 200 => {
                    let v: Value = r.json().await.unwrap();
                    v["stored"] == 1
                }
                _ => false,
            }
        }
    })
    .await;
    // The registers, idgens and the saver serve health and metrics on
    // their `--http`: how long they took to answer (the saver has just
    // stored a push; the room renews its lease at every register).
    // (register-1 and idgen-1 were restarted above: their figures start
    // again from nothing, so only their listeners are checked.)
    for (name, port, service) in [
        ("register-1", 50, ""),
        ("register-2", 51, "register"),
        ("idgen-1", 60, ""),
        ("idgen-2", 61, "idgen"),
        ("saver", 70, "saver"),
    ] {
        let p = process(&after, name);
        let addr = format!("127.0.0.1:{}", base + port);
        assert_eq!(p["endpoints"]["http"], addr, "{p}");
        let ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "{name}");
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let count = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "pushgate_link_served_seconds_count{{service=\"{service}\"}} "
                ))
            })
            .and_then(|n| n.parse::<u64>().ok());
        match service {
            "" => {}
            // Rooms and centers are connected to it (they may not have
            // needed ids from it yet).
            "idgen" => assert!(count.is_some(), "{name}: {text}"),
            _ => assert!(count.is_some_and(|n| n > 0), "{name}: {text}"),
        }
    }
    // Clients send too: the room dispatches with ids from the idgens (the
    // first try may find the restarted idgen still reconnecting: the same
    // cid is sent again, as a client would).
    let secret = after["token_secret"].as_str().unwrap();
    let ws: std::net::SocketAddr = after["rooms"][0]["ws"]
        .as_str()
        .unwrap()
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let mut c = common::Client::connect_addr(ws, common::Transport::WsJson).await;
    let token = common::mint(secret, "dev-a", None, None, common::now_secs() + 600);
    assert_eq!(c.auth(&token, None, None).await["op"], "auth_ok");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let sent = loop {
        c.send(&proto::ClientFrame::send(
            Some(5),
            proto::UserId::new("dev-b"),
            bytes::Bytes::from_static(b"\"hi\""),
            "dc-1".into(),
        ))
        .await;
        let v = c.next().await;
        if v["op"] == "send_ok" || tokio::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sent["op"], "send_ok", "{sent}");
    c.close().await;
    let r = http
        .get(format!("{center}/stats"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stats: Value = r.json().await.unwrap();
    assert_eq!(stats["rooms"].as_array().unwrap().len(), 1, "{stats}");

    // Stopping restarts nothing; the last manifest has every PID null.
    let pids: Vec<u32> = after["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
        .collect();
    stop(child, &stderr).await;
    let end = read_manifest(&path);
    assert_eq!(end["restarts"], 3, "{end:#}");
    for p in end["processes"].as_array().unwrap() {
        assert!(p["pid"].is_null(), "{p}");
    }
    for pid in pids {
        assert!(!alive(pid), "child {pid} outlived dev-cluster");
    }
    let log = stderr.lock();
    assert_eq!(
        log.matches("child exited unexpectedly").count(),
        3,
        "one restart per kill, none while stopping:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_no_restart_leaves_a_killed_child_down() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_block(30_000, 110);
    let args = [
        "--rooms",
        "1",
        "--registers",
        "1",
        "--idgens",
        "1",
        "--store",
        "embedded",
        "--no-restart",
    ];
    let (child, stderr, path, _term) = start(dir.path(), base, &args).await;
    let m = read_manifest(&path);
    assert_eq!(m["restart"], false);
    let saver = process(&m, "saver");
    assert!(saver["data_dir"].as_str().unwrap().ends_with("/data/saver"));
    let old = pid_of(&m, "register-1").unwrap();
    signal(old, "-KILL");
    eventually(
        "the manifest shows register-1 down",
        Duration::from_secs(10),
        || {
            let m = read_manifest(&path);
            let down = pid_of(&m, "register-1").is_none();
            async move { down }
        },
    )
    .await;
    // Far longer than the first backoff (0.2 s): still down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = read_manifest(&path);
    let p = process(&m, "register-1");
    assert!(p["pid"].is_null(), "{p}");
    assert_eq!(p["restarts"], 0, "{p}");
    assert!(p["last_exit"].as_str().unwrap().contains("SIGKILL"), "{p}");
    assert_eq!(m["restarts"], 0);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", base + 10))
            .await
            .is_err(),
        "something listens on register-1's port"
    );
    assert!(stderr.lock().contains("not restarted (--no-restart)"));
    stop(child, &stderr).await;
}
