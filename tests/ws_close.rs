//! The WebSocket close handshake (RFC 6455 §5.5.1, §7.1.1) both ways: a
//! client's Close is answered with a Close echoing its code, before and after
//! auth; the server's Close (kick, 4005) is followed by waiting for the
//! client's reply before TCP is closed. Checked with an independent client
//! (Python `websockets`, tests/py/ws_close.py) and with a raw one.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{ws_handshake, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The Python that runs the independent client (see `common::python_with`).
fn python() -> PathBuf {
    common::python_with("websockets.asyncio.client", "websockets>=13")
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("py")
        .join("ws_close.py")
}

/// Runs the Python client in `mode` to its end (it must succeed) and
/// returns its output lines, each one JSON value.
async fn py_run(s: &Server, mode: &str, timeout: &str, token: Option<&str>) -> Vec<Value> {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(script())
        .args(["--url", &format!("ws://{}/ws", s.ws)])
        .args(["--mode", mode, "--timeout", timeout])
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("python client ended within 30 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("python output {l:?}: {e}")))
        .collect()
}

/// Runs the Python client's close mode and returns its last JSON line.
async fn py_client_close(s: &Server, token: Option<&str>) -> Value {
    let lines = py_run(s, "client-close", "5", token).await;
    lines
        .last()
        .cloned()
        .expect("the python client printed its result")
}

/// A client's Close 1000 before auth gets a Close 1000 back (browsers: clean
/// close, code 1000, not 1006).
#[tokio::test]
async fn client_close_before_auth_is_answered() {
    let s = Server::start(&[]).await;
    let v = py_client_close(&s, None).await;
    assert_eq!(v["close_code"], 1000, "{v}");
    assert_eq!(v["rcvd"][0], 1000, "server's Close: {v}");
    assert_eq!(v["sent"][0], 1000, "{v}");
    assert_eq!(v["rcvd_then_sent"], false, "the client closed first: {v}");
}

/// The same after auth; the connection is gone from the directory after.
#[tokio::test]
async fn client_close_after_auth_is_answered() {
    let s = Server::start(&[]).await;
    let v = py_client_close(&s, Some(&s.token("pyclose"))).await;
    assert_eq!(v["close_code"], 1000, "{v}");
    assert_eq!(
        v["rcvd"],
        json!([1000, "bye"]),
        "server echoes the Close: {v}"
    );
    s.wait_online("pyclose", false).await;
}

/// A kick (4005): the client gets the Close, answers it, and the server
/// closes TCP after the answer; the client sees a clean close with 4005.
#[tokio::test]
async fn server_close_is_clean() {
    let s = Server::start(&[]).await;
    let mut child = tokio::process::Command::new(python())
        .arg(script())
        .args(["--url", &format!("ws://{}/ws", s.ws)])
        .args(["--mode", "server-close", "--timeout", "10"])
        .args(["--token", &s.token("pykick")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("python client printed auth_ok in time")
        .unwrap()
        .unwrap_or_default();
    assert!(first.contains("auth_ok"), "{first}");
    s.wait_online("pykick", true).await;
    let r = s
        .api_ok("DELETE", "/users/pykick/connections", None, 200)
        .await;
    assert_eq!(r["kicked"], 1, "{r}");
    let last = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("python client ended in time")
        .unwrap()
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{last:?}: {e}"));
    assert_eq!(v["close_code"], 4005, "{v}");
    assert_eq!(v["rcvd"], json!([4005, "kicked"]), "{v}");
    assert_eq!(v["sent"][0], 4005, "the client echoes: {v}");
    assert_eq!(v["rcvd_then_sent"], true, "{v}");
    let st = child.wait().await.unwrap();
    assert!(st.success(), "{st:?}");
}

/// After its Close, the server keeps TCP open for the client's reply (it
/// does not close or reset the connection as soon as its Close is out),
/// and closes it once the reply arrived.
#[tokio::test]
async fn server_waits_for_the_close_reply() {
    let s = Server::start(&[]).await;
    let stream = TcpStream::connect(s.ws).await.unwrap();
    let mut ws = ws_handshake(stream, s.ws, Some("pushgate.v1.json"))
        .await
        .unwrap();
    let auth = json!({"op": "auth", "seq": 1, "token": s.token("rawkick")});
    ws.send(Message::text(auth.to_string())).await.unwrap();
    let ok = ws.next().await.unwrap().unwrap();
    assert!(ok.to_text().unwrap().contains("auth_ok"), "{ok:?}");
    s.wait_online("rawkick", true).await;
    s.api_ok("DELETE", "/users/rawkick/connections", None, 200)
        .await;
    // Frames until the server's Close; tungstenite queues the reply but
    // sends it only when this side reads or writes again.
    let close = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("server's Close within 5 s")
            .expect("a frame, not the end")
            .unwrap();
        if let Message::Close(c) = m {
            break c;
        }
    };
    assert_eq!(close.map(|c| u16::from(c.code)), Some(4005));
    // No reply yet: the server must not have closed TCP.
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), ws.get_mut().read(&mut buf)).await;
    assert!(
        early.is_err(),
        "server closed TCP (or sent more) before the client's Close reply: {early:?}"
    );
    // The reply: now the server closes TCP, cleanly (EOF, not a reset).
    ws.flush().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.get_mut().read(&mut buf))
        .await
        .expect("server closed TCP within 5 s of the Close reply");
    assert!(matches!(end, Ok(0)), "expected EOF, got {end:?}");
}

/// Framing seen by the independent client: a Ping with a payload gets its
/// Pong, a message in three fragments and one with a 16-bit length are
/// answered, and one over the 64 KiB frame limit closes with 4004.
#[tokio::test]
async fn independent_client_framing() {
    let s = Server::start(&[]).await;
    let lines = py_run(&s, "framing", "10", Some(&s.token("pyframes"))).await;
    let [replies, end] = &lines[..] else {
        panic!("expected two lines: {lines:?}");
    };
    assert_eq!(replies["pong"], true, "{replies}");
    assert_eq!(replies["fragmented"], json!({"op": "pong", "seq": 7}));
    assert_eq!(replies["medium"], json!({"op": "pong", "seq": 8}));
    assert_eq!(end["close_code"], 4004, "{end}");
    assert_eq!(
        end["rcvd"][0], 4004,
        "a Close frame, not a dropped connection: {end}"
    );
}
