//! The ops console (`/console`) in a real headless Chromium: a standalone
//! with three connected clients, driven through Python selenium
//! (tests/py/console.py) as an operator would, and the clients checking
//! what the page did: the kicked one closed with 4005, the pushed one
//! receiving the user, channel and broadcast messages with the ids the page
//! showed (exact 64-bit ids, and a 64-bit number in the data kept as typed).
//!
//! Needs Debian's `chromium` and `chromium-driver` and `selenium` in the
//! test venv (scripts/test installs them); without them it fails and says
//! how to install them. `CONSOLE_SCREENSHOT=path.png` saves the page at the
//! end (docs/img/console.png is taken this way or by hand).
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{id_text, Server, Transport};
use serde_json::Value;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("py")
        .join("console.py")
}

#[tokio::test]
async fn console_in_headless_chromium_shows_kicks_and_pushes() {
    let started = Instant::now();
    let py = common::chromium_python();
    let s = Server::start(&[]).await;

    // alice (binary WebSocket) will be kicked; bob (JSON WebSocket, on
    // channel news) receives the pushes; carol (TCP) just counts.
    let (mut alice, alice_ok) = s.login(Transport::WsBin, "alice", "phone").await;
    let mut bob = s.connect(Transport::WsJson).await;
    let bob_ok = bob
        .auth(&s.token_channels("bob", &["news"]), None, Some("laptop"))
        .await;
    bob.sub("news").await;
    s.wait_visible("bob", &bob_ok).await;
    let (_carol, _) = s.login(Transport::Tcp, "carol", "desk").await;
    let room = id_text(&alice_ok["room"]);
    assert_eq!(s.stats().await["connections"], 3);

    let artifacts = std::env::temp_dir().join(format!("pushgate-console-{}", std::process::id()));
    let mut cmd = tokio::process::Command::new(py);
    cmd.arg(script())
        .args(["--url", &s.http_base(), "--key", &s.api_key])
        .args(["--connections", "3", "--users", "3", "--room", &room])
        .args(["--kick-user", "alice", "--kick-device", "phone"])
        .args(["--kick-conn", &id_text(&alice_ok["conn"])])
        .args(["--push-user", "bob", "--channel", "news"])
        .arg("--artifacts")
        .arg(&artifacts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(shot) = std::env::var_os("CONSOLE_SCREENSHOT") {
        cmd.arg("--screenshot").arg(shot);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the console script ends within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the console script failed ({}):\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
        out.status
    );
    let got: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("last line of the script is its result ({e}): {stdout}"));

    // The kick reached alice with its close code.
    alice.expect_close(4005, Duration::from_secs(5)).await;

    // bob got the user push, the channel push and the broadcast, with the
    // ids the page showed, exactly.
    let msgs = bob.msgs(3).await;
    let user = msgs
        .iter()
        .find(|m| m.get("channel").is_none() && m["data"]["text"] == "from the console")
        .unwrap_or_else(|| panic!("bob got the user push: {msgs:?}"));
    assert_eq!(
        id_text(&user["id"]),
        got["user_id"].as_str().unwrap(),
        "{msgs:?}"
    );
    assert_eq!(
        user["data"]["big"].as_u64(),
        Some(12_345_678_901_234_567_890),
        "the data's 64-bit number as typed: {user}"
    );
    let chan = msgs
        .iter()
        .find(|m| m["channel"] == "news")
        .unwrap_or_else(|| panic!("bob got the channel push: {msgs:?}"));
    assert_eq!(id_text(&chan["id"]), got["channel_id"].as_str().unwrap());
    assert_eq!(chan["data"]["n"], 2);
    let bcast = msgs
        .iter()
        .find(|m| m["data"]["n"] == 3)
        .unwrap_or_else(|| panic!("bob got the broadcast: {msgs:?}"));
    assert_eq!(id_text(&bcast["id"]), got["broadcast_id"].as_str().unwrap());
    let big = got["user_id"].as_str().unwrap().parse::<i64>().unwrap();
    assert!(
        big > (1 << 53),
        "ids above 2^53 ({big}) make exactness matter"
    );

    // The task the page followed is done, server side too.
    let task = s.wait_task(got["task"].as_str().unwrap()).await;
    assert_eq!(task["state"], "done", "{task}");
    eprintln!(
        "console test: {:.1} s in the browser, {:.1} s in all",
        got["seconds"].as_f64().unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
}
