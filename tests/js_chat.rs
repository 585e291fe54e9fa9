//! The browser client (clients/js/pushgate.js) sending: its chat example
//! page (clients/js/chat.html) in two tabs of a real headless Chromium,
//! driven through Python selenium (tests/py/chat.py): 1:1 messages both
//! ways and a group message, each shown with its sender and with the id
//! the server gave it (checked here against the users' stored queues),
//! and on a channel with presence the members and a join shown.
//!
//! Needs Debian's `chromium` and `chromium-driver` and `selenium` in the
//! test venv (scripts/test installs them); without them it fails and says
//! how to install them.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{now_secs, Server};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A token with `channels` and `pub` on `room:*`.
fn token(s: &Server, user: &str) -> String {
    let claims = json!({
        "sub": user, "exp": now_secs() + 3600,
        "channels": ["room:*"], "pub": ["room:*"],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(s.secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn two_browser_tabs_talk_through_the_chat_page() {
    let py = common::chromium_python();
    let s = Server::start(&["--presence-channels", "room:*"]).await;
    let artifacts = std::env::temp_dir().join(format!("pushgate-chat-{}", std::process::id()));
    let out = tokio::process::Command::new(py)
        .arg(root().join("tests").join("py").join("chat.py"))
        .arg("--page")
        .arg(root().join("clients").join("js").join("chat.html"))
        .args(["--ws", &format!("ws://{}/ws", s.ws)])
        .args(["--alice-token", &token(&s, "alice")])
        .args(["--bob-token", &token(&s, "bob")])
        .args(["--channel", "room:1"])
        .arg("--artifacts")
        .arg(&artifacts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the chat script ends within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the chat script failed ({}):\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
        out.status
    );
    let got: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("last line of the script is its result ({e}): {stdout}"));

    // What the pages showed is what the server stored, id for id (exact:
    // the ids are above 2^53 and the page keeps them as strings).
    for (user, key, from, text) in [
        ("bob", "to_bob", "alice", "hello bob"),
        ("alice", "to_alice", "bob", "hi alice"),
    ] {
        let (status, v) = s.api("GET", &format!("/users/{user}/messages"), None).await;
        assert_eq!(status, 200, "{v}");
        let shown = got[key].as_str().unwrap();
        let m = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| common::id_text(&m["id"]) == shown)
            .unwrap_or_else(|| panic!("{user}'s queue has {shown}: {v}"));
        assert_eq!(m["from"], from, "{m}");
        assert_eq!(m["data"], json!({ "text": text }), "{m}");
    }
    let group: i64 = got["group"].as_str().unwrap().parse().unwrap();
    assert!(group > (1 << 53), "ids above 2^53 ({group})");
}
