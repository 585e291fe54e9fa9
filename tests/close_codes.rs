//! Close codes 4001–4008 on every transport (TCP: the final error frame).
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::time::{Duration, Instant};

use common::{mint, now_secs, Client, Event, Server, Transport};
use proto::ClientFrame;
use serde_json::{json, Value};

/// On TCP the final error frame must carry `code`; on WebSocket an error frame before
/// the close is optional, but when present must carry `code` too.
fn check_error_frame(t: Transport, frames: &[Value], code: &str) {
    let errs: Vec<&Value> = frames.iter().filter(|f| f["op"] == "error").collect();
    if t == Transport::Tcp {
        assert!(
            errs.last().is_some_and(|e| e["code"] == code),
            "{t:?}: expected a final error frame with code {code}, frames: {frames:?}"
        );
    } else if let Some(e) = errs.last() {
        assert_eq!(
            e["code"], code,
            "{t:?}: error frame before close: {frames:?}"
        );
    }
}

async fn bad_token_4001(t: Transport) {
    let s = Server::start(&[]).await;
    let cases = [
        (
            "wrong secret",
            mint("not-the-secret", "u", None, None, now_secs() + 3600),
        ),
        (
            "expired",
            mint(&s.secret, "u", None, None, now_secs() - 120),
        ),
        ("garbage", "not.a.jwt".to_string()),
        ("empty", String::new()),
        (
            "empty sub",
            mint(&s.secret, "", None, None, now_secs() + 3600),
        ),
    ];
    for (what, token) in cases {
        let mut c = s.connect(t).await;
        c.send(&ClientFrame::Auth {
            seq: Some(1),
            token,
            last_id: None,
            device: None,
        })
        .await;
        let (_, frames) = c.expect_close(4001, Duration::from_secs(5)).await;
        check_error_frame(t, &frames, "auth_failed");
        assert!(
            !frames.iter().any(|f| f["op"] == "auth_ok"),
            "{t:?} {what}: got auth_ok with a bad token: {frames:?}"
        );
    }
    let v = s.stats().await;
    assert_eq!(
        v["connections"], 0,
        "{t:?}: refused connections counted: {v}"
    );
}

async fn auth_timeout_4002(t: Transport) {
    let s = Server::start(&["--auth-timeout", "1"]).await;
    let start = Instant::now();
    let mut c = s.connect(t).await;
    let (_, frames) = c.expect_close(4002, Duration::from_secs(5)).await;
    check_error_frame(t, &frames, "auth_timeout");
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{t:?}: closed after {:?}, before the 1 s auth timeout",
        start.elapsed()
    );
}

async fn heartbeat_timeout_4003(t: Transport) {
    let s = Server::start(&["--heartbeat", "1"]).await;
    let (mut silent, ok) = s.login(t, "silent", "d").await;
    assert_eq!(ok["heartbeat"], 1);
    let (mut alive, _) = s.login(t, "alive", "d").await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut seq = 100;
    let closed = loop {
        assert!(
            Instant::now() < deadline,
            "{t:?}: silent connection not closed within 8 s (heartbeat 1 s)"
        );
        seq += 1;
        assert!(alive.ping_sync(seq).await.is_empty());
        match silent.recv(Duration::from_millis(300)).await {
            Some(Event::Closed { code, reason }) => break (code, reason),
            Some(Event::Frame(f)) => {
                assert_eq!(f["op"], "error", "{t:?}: unexpected frame {f}");
                assert_eq!(f["code"], "heartbeat_timeout", "{t:?}: {f}");
            }
            None => {}
        }
    };
    assert_eq!(
        closed.0,
        Some(4003),
        "{t:?}: silent connection closed with {closed:?}"
    );
    // The pinging one survives well past the timeout.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        seq += 1;
        assert!(alive.ping_sync(seq).await.is_empty());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    s.wait_online("silent", false).await;
    s.wait_online("alive", true).await;
}

async fn oversize_frame_4004(t: Transport) {
    let s = Server::start(&["--max-frame", "1024"]).await;
    let (mut bystander, _) = s.login(Transport::WsJson, "by", "d").await;
    // After auth.
    let (mut c, _) = s.login(t, "big", "d").await;
    let pad = "x".repeat(2000);
    match t {
        Transport::Tcp => {
            // A length prefix announcing 1 MB must be refused before the body arrives.
            let mut out = Vec::new();
            proto::binary::write_len(1_000_000, &mut out);
            c.send_raw(&out).await;
        }
        Transport::WsBin => c.send_raw(pad.as_bytes()).await,
        _ => {
            c.send_text(&json!({"op": "ping", "pad": pad}).to_string())
                .await
        }
    }
    let (_, frames) = c.expect_close(4004, Duration::from_secs(5)).await;
    check_error_frame(t, &frames, "frame_too_large");
    // Before auth, too.
    let mut c = s.connect(t).await;
    match t {
        Transport::Tcp => c.send_tcp_body(&vec![0u8; 4096]).await,
        Transport::WsBin => c.send_raw(&vec![0u8; 4096]).await,
        _ => c.send_text(&"y".repeat(4096)).await,
    }
    c.expect_close(4004, Duration::from_secs(5)).await;
    // A frame just under the limit is fine.
    let (mut ok, _) = s.login(t, "small", "d").await;
    assert!(ok.ping_sync(1).await.is_empty());
    let id = s.push_id(&["by"], json!("still here")).await;
    assert_eq!(bystander.next_msg().await["id"], id);
}

async fn malformed_frame_4004(t: Transport) {
    let s = Server::start(&[]).await;
    let (mut bystander, _) = s.login(Transport::Tcp, "by", "d").await;
    type Case = (&'static str, Vec<u8>);
    let cases: Vec<Case> = match t {
        Transport::Tcp | Transport::WsBin => vec![
            ("ff bytes", vec![0xff; 7]),
            ("empty body", vec![]),
            ("json on a binary transport", br#"{"op":"ping"}"#.to_vec()),
        ],
        _ => vec![
            ("not json", b"not json".to_vec()),
            ("unknown op", br#"{"op":"nope"}"#.to_vec()),
            ("not an object", b"[1,2,3]".to_vec()),
            ("ack without id", br#"{"op":"ack"}"#.to_vec()),
            ("seq not a u32", br#"{"op":"ping","seq":-1}"#.to_vec()),
        ],
    };
    for (what, bytes) in cases {
        let (mut c, _) = s.login(t, "bad", "d").await;
        match t {
            Transport::Tcp => c.send_tcp_body(&bytes).await,
            Transport::WsBin => c.send_raw(&bytes).await,
            _ => c.send_text(std::str::from_utf8(&bytes).unwrap()).await,
        }
        let (code, reason, frames) = c.closed(Duration::from_secs(5)).await;
        assert_eq!(
            code,
            Some(4004),
            "{t:?} {what}: expected close 4004, got {code:?} {reason:?} {frames:?}"
        );
        check_error_frame(t, &frames, "bad_frame");
    }
    assert!(bystander.ping_sync(1).await.is_empty());
}

/// A token that lapses closes its connection with 4008 once the grace is
/// over; one refreshed in time keeps its connection (`--token-grace 1`).
async fn token_expired_4008(t: Transport) {
    let s = Server::start(&["--token-grace", "1"]).await;
    let soon = now_secs() + 2;
    let mut lapsing = s.connect(t).await;
    lapsing
        .auth(&mint(&s.secret, "lapse", None, None, soon), None, None)
        .await;
    let mut kept = s.connect(t).await;
    kept.auth(&mint(&s.secret, "keep", None, None, soon), None, None)
        .await;
    let exp = now_secs() + 3600;
    kept.send(&ClientFrame::Refresh {
        seq: Some(9),
        token: mint(&s.secret, "keep", None, None, exp),
    })
    .await;
    let ok = kept.next().await;
    assert_eq!(
        ok,
        json!({"op": "refresh_ok", "seq": 9, "exp": exp}),
        "{t:?}"
    );
    // Served until exp + grace (2 + 1 s, whole seconds: up to 4 s from now).
    assert!(lapsing.ping_sync(1).await.is_empty());
    tokio::time::sleep(Duration::from_millis(4100)).await;
    lapsing.send(&ClientFrame::Ping { seq: Some(2) }).await;
    let (reason, frames) = lapsing.expect_close(4008, Duration::from_secs(5)).await;
    check_error_frame(t, &frames, "token_expired");
    assert_eq!(reason, "token expired", "{t:?}");
    assert!(
        kept.ping_sync(3).await.is_empty(),
        "{t:?}: refreshed connection closed"
    );
    s.wait_online("lapse", false).await;
}

macro_rules! per_transport {
    ($($name:ident),* $(,)?) => {
        mod ws_json {
            use super::*;
            $( #[tokio::test] async fn $name() { super::$name(Transport::WsJson).await } )*
        }
        mod ws_bin {
            use super::*;
            $( #[tokio::test] async fn $name() { super::$name(Transport::WsBin).await } )*
        }
        mod tcp {
            use super::*;
            $( #[tokio::test] async fn $name() { super::$name(Transport::Tcp).await } )*
        }
    };
}

per_transport!(
    bad_token_4001,
    auth_timeout_4002,
    heartbeat_timeout_4003,
    oversize_frame_4004,
    malformed_frame_4004,
    token_expired_4008
);

/// DELETE /users/{u}/connections: 4005 (also covered in push.rs across transports).
#[tokio::test]
async fn kick_4005_ws_reason_and_reconnect() {
    let s = Server::start(&[]).await;
    let (mut c, _) = s.login(Transport::WsJson, "kk", "d").await;
    let r = s.api_ok("DELETE", "/users/kk/connections", None, 200).await;
    assert_eq!(r["kicked"], 1, "{r}");
    c.expect_close(4005, Duration::from_secs(5)).await;
    // Kicking does not ban: the user may come back.
    let (mut c, _) = s.login(Transport::WsJson, "kk", "d").await;
    assert!(c.ping_sync(1).await.is_empty());
}

/// A client that never reads is closed with 4006; another client keeps receiving every push.
#[tokio::test]
async fn slow_consumer_4006_others_unaffected() {
    let s = Server::start(&["--send-queue", "8"]).await;
    let mut slow = Client::connect_small_rcvbuf(&s, Transport::WsJson, 4096).await;
    let ok = slow.auth(&s.token("slow"), None, Some("d")).await;
    s.wait_visible("slow", &ok).await;
    let (mut good, _) = s.login(Transport::WsBin, "good", "d").await;

    let big = "z".repeat(100_000);
    let mut sent = Vec::new();
    let mut slow_gone = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = Vec::new();
    for i in 0..400 {
        assert!(Instant::now() < deadline, "slow consumer never detected");
        let r = s
            .push(json!({"users": ["slow", "good"], "data": {"i": i, "pad": big}, "store": false}))
            .await;
        sent.push(r["id"].as_i64().unwrap());
        // The good client reads everything as it comes.
        received.push(good.next_msg().await["id"].as_i64().unwrap());
        // Once the slow one's queue is full it is no longer written to.
        if r["delivered"] == 1 {
            slow_gone = true;
            break;
        }
        assert_eq!(r["delivered"], 2, "{r}");
    }
    assert!(
        slow_gone,
        "a client that never reads was still written to after {} pushes of 100 KB with --send-queue 8",
        sent.len()
    );
    assert_eq!(
        received, sent,
        "the good client must get every push in order"
    );
    // Now read what the slow one was sent: messages, then close 4006.
    let (code, reason, frames) = slow.closed(Duration::from_secs(10)).await;
    assert_eq!(
        code,
        Some(4006),
        "slow consumer must be closed with 4006, got {code:?} {reason:?} after {} frames",
        frames.len()
    );
    s.wait_online("slow", false).await;
    let id = s.push_id(&["good"], json!("after")).await;
    assert_eq!(good.next_msg().await["id"], id);
}

/// SIGTERM: every client gets 4007 with `draining reconnect_after_ms=<N>`, and the process exits 0.
#[tokio::test]
async fn sigterm_sends_4007_and_exits_0() {
    let mut s = Server::start(&["--drain-timeout", "5"]).await;
    let mut clients = Vec::new();
    for (i, t) in common::TRANSPORTS.into_iter().enumerate() {
        let (c, _) = s.login(t, &format!("dr{i}"), "d").await;
        clients.push(c);
    }
    s.sigterm();
    for c in clients.iter_mut() {
        let (reason, frames) = c.expect_close(4007, Duration::from_secs(5)).await;
        let t = c.transport;
        check_error_frame(t, &frames, "draining");
        if t == Transport::Tcp {
            // TCP carries the code in the final error frame (checked above).
            continue;
        }
        let n = reason
            .strip_prefix("draining reconnect_after_ms=")
            .unwrap_or_else(|| {
                panic!(
                    "{t:?}: close reason must be `draining reconnect_after_ms=<N>`, got {reason:?}"
                )
            });
        assert!(
            n.parse::<u64>().is_ok(),
            "{t:?}: reconnect_after_ms must be an integer, got {reason:?}"
        );
    }
    let st = s.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(
        st.code(),
        Some(0),
        "exit after SIGTERM: {st:?}\n{}",
        s.stderr()
    );
}

/// SIGTERM right after `ready` (no clients) exits 0: `ready` means the signal
/// handlers are in place. 50 rounds, because a missing handler is a race.
#[tokio::test]
async fn sigterm_right_after_ready_exits_0() {
    for round in 0..50 {
        let mut s = Server::start(&[]).await;
        let st = s.stop().await;
        assert_eq!(
            st.code(),
            Some(0),
            "round {round}: SIGTERM right after ready: {st:?} (killed by the signal = no handler yet)\n{}",
            s.stderr()
        );
        assert!(
            tokio::net::TcpStream::connect(s.tcp).await.is_err(),
            "tcp listener still accepting after exit"
        );
    }
}

/// A token with `alg` `none` is refused (4001) with a message that says so,
/// in words written for the client's developer (no serde internals).
#[tokio::test]
async fn alg_none_token_gets_a_clean_message() {
    let s = Server::start(&[]).await;
    let b64 = |v: Value| b64url(v.to_string().as_bytes());
    let token = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "mallory", "exp": now_secs() + 3600}))
    );
    let want =
        "auth failed: invalid token: header names no accepted algorithm (only HS256 is accepted)";
    for t in [Transport::WsJson, Transport::Tcp] {
        let mut c = s.connect(t).await;
        c.send(&ClientFrame::Auth {
            seq: Some(1),
            token: token.clone(),
            last_id: None,
            device: None,
        })
        .await;
        let (reason, frames) = c.expect_close(4001, Duration::from_secs(5)).await;
        let err = frames.iter().find(|f| f["op"] == "error");
        assert_eq!(
            err.map(|e| e["message"].clone()),
            Some(json!(want)),
            "{t:?}: {frames:?}"
        );
        if t == Transport::WsJson {
            assert_eq!(reason, want, "{t:?}: close reason");
        }
    }
}

/// A client that drops its TCP connection without a close frame is logged
/// as gone, not as a malformed frame; a real protocol violation is named.
#[tokio::test]
async fn going_away_is_not_logged_as_a_bad_frame() {
    let s = Server::start_env(&[], &[("PUSHGATE_LOG", "info,room=debug")]).await;
    let (c, _) = s.login(Transport::WsJson, "goer", "d").await;
    drop(c);
    s.wait_stderr(
        "client went away: connection closed without a close frame",
        1,
        Duration::from_secs(5),
    )
    .await;
    // Reserved bits set on a text frame (masked, as from a client): a
    // protocol violation, named as one.
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;
    let stream = tokio::net::TcpStream::connect(s.ws).await.unwrap();
    let mut ws = common::ws_handshake(stream, s.ws, None).await.unwrap();
    let mut frame = vec![0x80 | 0x40 | 0x1, 0x80 | 2, 0, 0, 0, 0];
    frame.extend_from_slice(b"{}");
    ws.get_mut().write_all(&frame).await.unwrap();
    let close = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("close within 5 s")
            .expect("a close frame before the end")
            .unwrap();
        if let Message::Close(c) = m {
            break c.unwrap();
        }
    };
    assert_eq!(u16::from(close.code), 4004, "{close:?}");
    assert!(
        close.reason.starts_with("websocket protocol violation"),
        "{close:?}"
    );
    let err = s.stderr();
    assert!(!err.contains("invalid field websocket frame"), "{err}");
}

/// Base64url without padding (JWT segments).
fn b64url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
