//! The Python client of docs/CLIENTS.md (clients/python/pushgate_client.py,
//! on the `websockets` package) against a real server: it authenticates,
//! subscribes, receives user and channel messages with exact 64-bit ids,
//! and after a kick reconnects with `last_id` and gets what it missed, once.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::Server;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStderr, ChildStdout};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join("python")
        .join("pushgate_client.py")
}

/// Reads the client's stderr (one JSON frame per line) until a frame with
/// `op`, within 20 s.
async fn wait_event(lines: &mut Lines<BufReader<ChildStderr>>, op: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("the python client ended before {op}"));
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["op"] == op {
                    return v;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {op} from the python client within 20 s"))
}

/// The next message the client printed on stdout, within 20 s.
async fn next_message(out: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
        .await
        .expect("a message within 20 s")
        .unwrap()
        .expect("the client printed a message");
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn python_client_receives_resumes_and_keeps_ids_exact() {
    let py = common::python_with("websockets.asyncio.client", "websockets>=13");
    let s = Server::start(&[]).await;
    let token = s.token_channels("py", &["news"]);
    let mut child = tokio::process::Command::new(py)
        .arg(script())
        .args(["--url", &format!("ws://{}/ws", s.ws)])
        .args(["--token", &token, "--channel", "news", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut events = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_event(&mut events, "auth_ok").await;
    wait_event(&mut events, "sub_ok").await;

    let u1 = s.push_id(&["py"], json!({"n": 1})).await;
    let c1 = s.push_channel("news", json!({"n": 2})).await["id"]
        .as_i64()
        .unwrap();
    // Kicked (4005): the client comes back with last_id and gets u2, which
    // was stored while it was away, and u1 not again.
    let stdout = child.stdout.take().unwrap();
    let mut out = BufReader::new(stdout).lines();
    let mut got = vec![next_message(&mut out).await, next_message(&mut out).await];
    s.api_ok("DELETE", "/users/py/connections", None, 200).await;
    let u2 = s.push_id(&["py"], json!({"n": 3})).await;
    wait_event(&mut events, "auth_ok").await;
    got.push(next_message(&mut out).await);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the client exits after --count 3")
        .unwrap();
    assert!(status.success(), "{status:?}");

    let mut ids: Vec<i64> = got.iter().map(|m| m["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    let mut want = vec![u1, c1, u2];
    want.sort_unstable();
    assert_eq!(ids, want, "each message once, ids exact: {got:?}");
    let c = got.iter().find(|m| m["id"] == c1).unwrap();
    assert_eq!(c["channel"], "news", "{c}");
    assert_eq!(got[2]["id"], u2, "the replayed message last: {got:?}");
    assert_eq!(got[2]["data"]["n"], 3);
    assert!(
        u1 > (1 << 53),
        "ids above 2^53 ({u1}) make exactness matter"
    );
}

/// With `--token-cmd`, the client asks for a new token before each one
/// expires and sends it with `refresh`: 6 s tokens and no grace, and the
/// first connection outlives two of them without reconnecting (pongs aside,
/// the client reports nothing but the two refresh_ok).
#[tokio::test]
async fn python_client_refreshes_its_token_before_it_expires() {
    let py = common::python_with("websockets.asyncio.client", "websockets>=13");
    let s = Server::start(&["--heartbeat", "1", "--token-grace", "0"]).await;
    let cmd = format!(
        "{} token --token-secret {} --user py-refresh --ttl 6",
        common::BIN,
        s.secret
    );
    let mut child = tokio::process::Command::new(py)
        .arg(script())
        .args(["--url", &format!("ws://{}/ws", s.ws)])
        .args(["--token-cmd", &cmd, "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut events = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_event(&mut events, "auth_ok").await;
    // Two refreshes, and nothing else in between: no error, no reconnect.
    let mut refreshed = 0;
    let mut last_exp = 0;
    while refreshed < 2 {
        let line = tokio::time::timeout(Duration::from_secs(20), events.next_line())
            .await
            .expect("a frame within 20 s")
            .unwrap()
            .expect("the python client is running");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["op"] == "pong" {
            continue;
        }
        assert_eq!(v["op"], "refresh_ok", "{line}");
        let exp = v["exp"].as_u64().unwrap();
        assert!(exp > last_exp, "{line}");
        last_exp = exp;
        refreshed += 1;
    }
    let id = s
        .push_id(&["py-refresh"], json!("after two refreshes"))
        .await;
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next_message(&mut out).await["id"], id);
}
