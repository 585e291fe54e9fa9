//! Server-sent events (`GET /sse` on the WebSocket listener), end to end on
//! real sockets against a standalone server: the request as auth + subs,
//! user and channel messages as events with ids, resume with Last-Event-ID,
//! heartbeat comments keeping a silent client alive, refusals with an HTTP
//! status, and a kick ending the stream with `event: close`.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::time::Duration;

use common::sse::Sse;
use common::{mint, now_secs, Server};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

fn url_token(s: &Server, user: &str, channels: &[&str]) -> String {
    mint(&s.secret, user, None, Some(channels), now_secs() + 3600)
}

#[tokio::test]
async fn user_and_channel_messages_arrive_as_events_and_resume_by_last_event_id() {
    let s = Server::start(&[]).await;
    let token = url_token(&s, "sse-alice", &["news"]);
    let mut sse = Sse::open(s.ws, &format!("/sse?token={token}&channels=news"), &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    let head = sse.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    let ok = sse.opened(1).await;
    assert_eq!(ok["user"], "sse-alice");
    s.wait_visible("sse-alice", &ok).await;

    // A user message: an unnamed event, id = the message id, data = the msg frame.
    let id1 = s
        .push_id(&["sse-alice"], json!({"n": 1, "text": "a\nb"}))
        .await;
    let ev = sse.event().await;
    assert_eq!(ev.event, None, "{ev:?}");
    assert_eq!(ev.id.as_deref(), Some(id1.to_string().as_str()));
    let msg = ev.json();
    assert_eq!(
        (msg["op"].as_str(), msg["data"]["n"].as_i64()),
        (Some("msg"), Some(1))
    );
    assert_eq!(
        msg["data"]["text"], "a\nb",
        "a line break inside data survives"
    );

    // A channel message: the same, with the channel in the frame.
    let r = s
        .api_ok(
            "POST",
            "/push/channel",
            Some(json!({"channel": "news", "data": {"n": 2}})),
            200,
        )
        .await;
    let ev = sse.event().await;
    assert_eq!(
        ev.id.as_deref(),
        Some(r["id"].to_string().as_str()),
        "{ev:?}"
    );
    assert_eq!(ev.json()["channel"], "news");
    drop(sse);
    s.wait_online("sse-alice", false).await;

    // Offline: two stored messages. A browser coming back sends the last id
    // it saw as Last-Event-ID and gets exactly what followed it, once.
    let id3 = s.push_id(&["sse-alice"], json!({"n": 3})).await;
    let id4 = s.push_id(&["sse-alice"], json!({"n": 4})).await;
    let mut sse = Sse::open(
        s.ws,
        &format!("/sse?token={token}"),
        &[("Last-Event-ID", &id1.to_string())],
    )
    .await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    sse.opened(0).await;
    let got: Vec<String> = vec![sse.event().await, sse.event().await]
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(got, [id3.to_string(), id4.to_string()]);
    // Nothing else is replayed: the next event is a new push.
    let id5 = s.push_id(&["sse-alice"], json!({"n": 5})).await;
    assert_eq!(sse.event().await.id, Some(id5.to_string()));

    // The token may come in an Authorization header, the resume point as ?last_id=.
    let mut sse = Sse::open(
        s.ws,
        &format!("/sse?last_id={id4}"),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    sse.opened(0).await;
    assert_eq!(sse.event().await.id, Some(id5.to_string()));
}

#[tokio::test]
async fn bad_requests_get_an_http_error_and_no_stream() {
    let s = Server::start(&["--max-channels", "2"]).await;
    let good = url_token(&s, "sse-bob", &["a", "b", "c"]);
    let expired = mint(&s.secret, "sse-bob", None, None, now_secs() - 10);
    let other = mint("not-the-secret", "sse-bob", None, None, now_secs() + 60);
    for (target, headers, want, says) in [
        ("/sse".to_string(), vec![], 401, "missing token"),
        (
            format!("/sse?token={expired}"),
            vec![],
            401,
            "invalid or expired token",
        ),
        (
            format!("/sse?token={other}"),
            vec![],
            401,
            "invalid or expired token",
        ),
        (
            format!("/sse?token={good}&channels=a,b,c"),
            vec![],
            400,
            "too many channels",
        ),
        (
            format!("/sse?token={good}&channels=a,,b"),
            vec![],
            400,
            "comma-separated",
        ),
        (
            format!("/sse?token={good}&page=2"),
            vec![],
            400,
            "unknown or repeated",
        ),
        (
            format!("/sse?token={good}"),
            vec![("Last-Event-ID", "x")],
            400,
            "non-negative integer",
        ),
    ] {
        let sse = Sse::open(s.ws, &target, &headers).await;
        let (status, head) = (sse.status, sse.head.clone());
        let body = sse.body().await;
        assert_eq!(status, want, "{target}: {head}{body}");
        assert!(body.contains(says), "{target}: {body}");
        assert!(!head.contains("event-stream"), "{target}: {head}");
    }
    // POST is not how a stream opens.
    let mut sock = TcpStream::connect(s.ws).await.unwrap();
    sock.write_all(b"POST /sse HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    let _ = timeout(Duration::from_secs(5), sock.read_to_string(&mut reply)).await;
    assert!(reply.starts_with("HTTP/1.1 405 "), "{reply}");
    // The CORS preflight of a cross-origin fetch with a token header.
    let mut sock = TcpStream::connect(s.ws).await.unwrap();
    sock.write_all(
        b"OPTIONS /sse?channels=a HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\
          Access-Control-Request-Method: GET\r\n\
          Access-Control-Request-Headers: authorization, last-event-id\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reply = String::new();
    let _ = timeout(Duration::from_secs(5), sock.read_to_string(&mut reply)).await;
    assert!(reply.starts_with("HTTP/1.1 204 "), "{reply}");
    for h in [
        "Access-Control-Allow-Origin: *",
        "Access-Control-Allow-Methods: GET",
        "Access-Control-Allow-Headers: Authorization, Last-Event-ID",
    ] {
        assert!(reply.contains(h), "{h}: {reply}");
    }
    assert!(reply.ends_with("\r\n\r\n"), "a 204 has no body: {reply:?}");
    // The server still serves a good request after all of them.
    let mut sse = Sse::open(s.ws, &format!("/sse?token={good}&channels=a,b"), &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    sse.opened(2).await;
}

#[tokio::test]
async fn heartbeat_comments_keep_a_silent_client_alive_and_a_kick_ends_with_close() {
    // Silence for twice the heartbeat closes a WebSocket client (4003); an
    // SSE client never speaks, and the server's comments count as life.
    let s = Server::start(&["--heartbeat", "1"]).await;
    let token = url_token(&s, "sse-carol", &[]);
    let mut sse = Sse::open(s.ws, &format!("/sse?token={token}"), &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    let ok = sse.opened(0).await;
    assert_eq!(ok["heartbeat"], 1);
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    let mut comments = 0;
    while tokio::time::Instant::now() < until {
        let ev = sse
            .next(Duration::from_secs(2))
            .await
            .expect("stream ended");
        assert!(ev.comment, "only comments while nothing is pushed: {ev:?}");
        comments += 1;
    }
    assert!(
        comments >= 3,
        "{comments} comments in 3.5 s at a 1 s heartbeat"
    );
    let id = s.push_id(&["sse-carol"], json!({"still": "here"})).await;
    assert_eq!(sse.event().await.id, Some(id.to_string()));

    // A kick: the error frame, then `event: close` with the code, then the end.
    s.api_ok("DELETE", "/users/sse-carol/connections", None, 200)
        .await;
    let err = sse.event().await;
    assert_eq!(err.event.as_deref(), Some("error"), "{err:?}");
    assert_eq!(err.json()["code"], "kicked");
    let close = sse.event().await;
    assert_eq!(close.event.as_deref(), Some("close"), "{close:?}");
    assert_eq!(close.json()["code"], 4005);
    assert!(
        sse.next(Duration::from_secs(3)).await.is_none(),
        "the stream ends after close"
    );
}

/// An independent client: Python's standard library reading the stream as
/// the EventSource specification parses it (tests/py/sse_client.py). It
/// resumes with Last-Event-ID, gets exactly the stored messages after it,
/// then a live push, each as an unnamed event whose id is the message id.
#[tokio::test]
async fn an_independent_python_client_resumes_and_receives_live_events() {
    use tokio::io::AsyncBufReadExt;

    let py = common::python_with("http.client", "Python 3 (the standard library)");
    let s = Server::start(&[]).await;
    let user = "sse-py";
    let id1 = s.push_id(&[user], json!({"n": 1})).await;
    let id2 = s.push_id(&[user], json!({"n": 2})).await;
    let id3 = s.push_id(&[user], json!({"n": 3, "text": "a\nb"})).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/sse_client.py");
    let token = url_token(&s, user, &[]);
    let mut child = tokio::process::Command::new(py)
        .arg(script)
        .args([
            "127.0.0.1",
            &s.ws.port().to_string(),
            &token,
            &id1.to_string(),
            "3",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> serde_json::Value {
        let line = timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a line from the Python client in time")
            .unwrap()
            .expect("the Python client ended early");
        serde_json::from_str(&line).unwrap()
    };
    let head = next().await;
    assert_eq!(head["status"], 200, "{head}");
    assert!(head["type"]
        .as_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // Named events first (auth_ok), then the messages after Last-Event-ID.
    let mut events = Vec::new();
    while events.len() < 2 {
        let ev = next().await;
        if ev["event"].is_null() {
            events.push(ev);
        } else {
            assert_eq!(ev["event"], "auth_ok", "{ev}");
        }
    }
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        [id2.to_string(), id3.to_string()],
        "exactly what followed id {id1}"
    );
    let msg: serde_json::Value = serde_json::from_str(events[1]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        (msg["op"].as_str(), msg["data"]["text"].as_str()),
        (Some("msg"), Some("a\nb"))
    );
    // Live.
    let id4 = s.push_id(&[user], json!({"n": 4})).await;
    let ev = next().await;
    assert_eq!(ev["id"], id4.to_string(), "{ev}");
    let status = timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
