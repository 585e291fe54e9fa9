//! Server-sent events over HTTP/2 (https:// with ALPN `h2`), end to end on
//! real sockets against a standalone server, with the `h2` crate's client:
//! several users' streams on one TLS connection, each its own session (push,
//! resume by Last-Event-ID on a new stream, the close event of a kick), a
//! stream reset by the client, the connection's end ending every stream,
//! 4xx answers to what is not an event stream, and the limits (streams per
//! connection, each stream a connection of the room); and a real browser's
//! `EventSource` (headless Chromium through Python selenium, which
//! negotiates h2 by itself), seen to arrive over HTTP/2. Needs Chromium,
//! its WebDriver and selenium in the test venv (scripts/test installs
//! them); without them that test fails and says how to install them.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::sse::Sse;
use common::{mint, now_secs, tls_client_config, tls_server, Server, TestCa};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// One HTTP/2 connection over TLS to the WebSocket listener, offering ALPN
/// `h2` only (the handshake asserts the server chose it); its driver task.
async fn h2_connect(
    s: &Server,
    ca: &TestCa,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    h2_connect_with(s, ca, h2::client::Builder::new()).await
}

/// [`h2_connect`] with the client's settings from `builder`.
async fn h2_connect_with(
    s: &Server,
    ca: &TestCa,
    builder: h2::client::Builder,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(s.ws).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(&[&ca.pem], &[b"h2"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = builder.handshake(tls).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

/// The value of the sample `name` (with its labels) on `/metrics`.
async fn metric(s: &Server, name: &str) -> u64 {
    let (st, body) = s.raw("GET", "/metrics", None, None, None).await;
    assert_eq!(st, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
        .parse()
        .unwrap()
}

/// Waits until the sample `name` is `want` (5 s).
async fn wait_metric(s: &Server, name: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric(s, name).await;
        if v == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {v}, not {want}, after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const H2_STREAMS: &str = "pushgate_room_sse_connections{http=\"2\"}";
const H1_STREAMS: &str = "pushgate_room_sse_connections{http=\"1.1\"}";
const H2_CONNS: &str = "pushgate_room_h2_connections";

#[tokio::test]
async fn two_users_on_one_h2_connection_push_resume_and_close() {
    let (ca, _dir, s) = tls_server(&[]).await;
    let (h2, driver) = h2_connect(&s, &ca).await;
    let alice = mint(
        &s.secret,
        "h2-alice",
        None,
        Some(&["news"]),
        now_secs() + 3600,
    );
    let bob = mint(&s.secret, "h2-bob", None, None, now_secs() + 3600);

    // Two users' event streams on the one connection, each its own session.
    let target = format!("/sse?token={alice}&channels=news");
    let mut a = Sse::open_h2(&h2, "GET", &target, &[]).await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert!(
        a.head.contains("content-type: text/event-stream"),
        "{}",
        a.head
    );
    assert!(a.head.contains("cache-control: no-cache"), "{}", a.head);
    assert!(
        !a.head.contains("connection"),
        "no Connection header on h2: {}",
        a.head
    );
    let ok_a = a.opened(1).await;
    assert_eq!(ok_a["user"], "h2-alice");
    let mut b = Sse::open_h2(&h2, "GET", &format!("/sse?token={bob}"), &[]).await;
    assert_eq!(b.status, 200, "{}", b.head);
    let ok_b = b.opened(0).await;
    assert_eq!(ok_b["user"], "h2-bob");
    assert_ne!(ok_a["conn"], ok_b["conn"], "one session per stream");
    s.wait_visible("h2-alice", &ok_a).await;
    s.wait_visible("h2-bob", &ok_b).await;
    assert_eq!(metric(&s, H2_STREAMS).await, 2);
    assert_eq!(metric(&s, H1_STREAMS).await, 0);
    assert_eq!(metric(&s, H2_CONNS).await, 1);
    assert_eq!(metric(&s, "pushgate_room_connections").await, 2);

    // A REST push to each user arrives on that user's stream only.
    let id1 = s.push_id(&["h2-alice"], json!({"to": "alice"})).await;
    let id_b = s.push_id(&["h2-bob"], json!({"to": "bob"})).await;
    let ev = a.event().await;
    assert_eq!(ev.id, Some(id1.to_string()), "{ev:?}");
    assert_eq!(ev.json()["data"], json!({"to": "alice"}));
    let ev = b.event().await;
    assert_eq!(ev.id, Some(id_b.to_string()), "{ev:?}");
    assert_eq!(ev.json()["data"], json!({"to": "bob"}));
    // A channel message.
    let r = s.push_channel("news", json!({"n": 2})).await;
    let ev = a.event().await;
    assert_eq!(ev.id, Some(r["id"].to_string()), "{ev:?}");
    assert_eq!(ev.json()["channel"], "news");

    // The client resets alice's stream (EventSource.close()): her session
    // ends, bob's goes on, the connection stays.
    drop(a);
    s.wait_online("h2-alice", false).await;
    wait_metric(&s, H2_STREAMS, 1).await;
    assert_eq!(metric(&s, H2_CONNS).await, 1);
    let id = s.push_id(&["h2-bob"], json!({"still": "here"})).await;
    assert_eq!(b.event().await.id, Some(id.to_string()));

    // Offline, two stored messages; a new stream on the same connection
    // with Last-Event-ID gets exactly what followed it.
    let id3 = s.push_id(&["h2-alice"], json!({"n": 3})).await;
    let id4 = s.push_id(&["h2-alice"], json!({"n": 4})).await;
    let mut a = Sse::open_h2(
        &h2,
        "GET",
        &format!("/sse?token={alice}"),
        &[("last-event-id", &id1.to_string())],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.head);
    a.opened(0).await;
    let got: Vec<Option<String>> = vec![a.event().await.id, a.event().await.id];
    assert_eq!(got, [Some(id3.to_string()), Some(id4.to_string())]);
    let id5 = s.push_id(&["h2-alice"], json!({"n": 5})).await;
    assert_eq!(a.event().await.id, Some(id5.to_string()));

    // A kick ends bob's stream with the error and close events, then the
    // stream's end; alice's stream is untouched.
    s.api_ok("DELETE", "/users/h2-bob/connections", None, 200)
        .await;
    let err = b.event().await;
    assert_eq!(err.event.as_deref(), Some("error"), "{err:?}");
    assert_eq!(err.json()["code"], "kicked");
    let close = b.event().await;
    assert_eq!(close.event.as_deref(), Some("close"), "{close:?}");
    assert_eq!(close.json()["code"], 4005);
    assert!(
        b.next(Duration::from_secs(3)).await.is_none(),
        "the stream ends after close"
    );
    let id6 = s.push_id(&["h2-alice"], json!({"n": 6})).await;
    assert_eq!(a.event().await.id, Some(id6.to_string()));

    // The connection's end ends the streams still open on it.
    driver.abort();
    let _ = driver.await;
    drop(h2);
    s.wait_online("h2-alice", false).await;
    wait_metric(&s, H2_STREAMS, 0).await;
    wait_metric(&s, H2_CONNS, 0).await;
    assert_eq!(metric(&s, "pushgate_room_connections").await, 0);
}

#[tokio::test]
async fn h2_answers_what_is_not_an_event_stream_with_4xx() {
    let (ca, _dir, s) = tls_server(&[]).await;
    let (h2, _driver) = h2_connect(&s, &ca).await;
    let token = s.token("h2-carol");
    for (method, target, want, says) in [
        ("GET", "/ws".to_string(), 400, "WebSocket needs HTTP/1.1"),
        ("GET", "/".to_string(), 404, "not found"),
        ("GET", "/sse".to_string(), 401, "missing token"),
        (
            "GET",
            "/sse?token=x.y.z".to_string(),
            401,
            "invalid or expired",
        ),
        (
            "GET",
            format!("/sse?token={token}&page=2"),
            400,
            "unknown or repeated",
        ),
        (
            "POST",
            format!("/sse?token={token}"),
            405,
            "opened with GET /sse",
        ),
    ] {
        let r = Sse::open_h2(&h2, method, &target, &[]).await;
        let (status, head) = (r.status, r.head.clone());
        let body = r.body().await;
        assert_eq!(status, want, "{method} {target}: {head}{body}");
        assert!(body.contains(says), "{method} {target}: {body}");
        assert!(head.contains("content-type: text/plain"), "{head}");
    }
    // The CORS preflight.
    let r = Sse::open_h2(&h2, "OPTIONS", "/sse", &[]).await;
    assert_eq!(r.status, 204, "{}", r.head);
    assert!(
        r.head.contains("access-control-allow-methods: GET"),
        "{}",
        r.head
    );
    // The connection still serves a good request after all of them.
    let mut sse = Sse::open_h2(&h2, "GET", &format!("/sse?token={token}"), &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    sse.opened(0).await;

    // HTTP/1.1 on the same listener is unchanged (a client without ALPN h2).
    let tls = common::tls_connect(s.ws, &[&ca.pem]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let target = format!("/sse?token={}", s.token("h2-dave"));
    let mut h1 = Sse::open_on(Box::new(tls), s.ws, &target, &[]).await;
    assert_eq!(h1.status, 200, "{}", h1.head);
    h1.opened(0).await;
    assert_eq!(metric(&s, H1_STREAMS).await, 1);
    assert_eq!(metric(&s, H2_STREAMS).await, 1);
}

#[tokio::test]
async fn h2_streams_are_bounded_per_connection_and_count_as_connections() {
    let (ca, _dir, s) = tls_server(&["--h2-max-streams", "2", "--max-connections", "4"]).await;
    let (h2, _driver) = h2_connect(&s, &ca).await;
    // The server advertises its limit in its SETTINGS.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h2.current_max_send_streams() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no SETTINGS with 2 streams"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open = |user: &str| format!("/sse?token={}", s.token(user));
    let mut first = Sse::open_h2(&h2, "GET", &open("h2-s1"), &[]).await;
    first.opened(0).await;
    let mut second = Sse::open_h2(&h2, "GET", &open("h2-s2"), &[]).await;
    second.opened(0).await;
    // A third waits for a free stream: no answer while two are open...
    let third = Sse::request_h2(&h2, "GET", &open("h2-s3"), &[]).await;
    let mut third = Box::pin(Sse::head_h2(third));
    assert!(
        timeout(Duration::from_millis(700), &mut third)
            .await
            .is_err(),
        "a third stream was answered beyond the limit of 2"
    );
    // ...and is served once one ends.
    drop(first);
    let mut third = timeout(Duration::from_secs(5), third).await.unwrap();
    assert_eq!(third.status, 200, "{}", third.head);
    third.opened(0).await;
    wait_metric(&s, H2_STREAMS, 2).await;

    // Each stream is a connection of the room: with the socket of this
    // connection and two streams, a second connection's socket makes 4 of
    // --max-connections 4, and its first stream is refused as a full room.
    let (h2b, _driver_b) = h2_connect(&s, &ca).await;
    let r = Sse::open_h2(&h2b, "GET", &open("h2-s4"), &[]).await;
    let status = r.status;
    let body = r.body().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("room full"), "{body}");
    assert_eq!(
        metric(&s, "pushgate_room_refused_total{transport=\"sse\"}").await,
        1
    );
    // A third connection is refused when accepted (the room holds 4): its
    // first stream gets the 503, in HTTP/2.
    let (h2c, _driver_c) = h2_connect(&s, &ca).await;
    let r = Sse::open_h2(&h2c, "GET", &open("h2-s5"), &[]).await;
    let status = r.status;
    let body = r.body().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("room full"), "{body}");
    assert_eq!(
        metric(&s, "pushgate_room_refused_total{transport=\"ws\"}").await,
        1
    );
    // A stream that ends gives its place back.
    drop(second);
    wait_metric(&s, H2_STREAMS, 1).await;
    let mut r = Sse::open_h2(&h2b, "GET", &open("h2-s4"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    r.opened(0).await;
}

#[tokio::test]
async fn a_stream_that_is_not_read_is_closed_as_a_slow_consumer_and_holds_no_other_back() {
    // The client gives each stream a 4 KiB window and the connection 1 MiB,
    // and never reads the first stream: its window fills, the server stops
    // writing it (flow control), its session's outbox fills and it is
    // closed as a slow consumer (4006), as over HTTP/1.1; the other stream
    // of the connection gets its messages all along.
    let (ca, _dir, s) = tls_server(&["--send-queue", "8"]).await;
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(4096)
        .initial_connection_window_size(1 << 20);
    let (h2, _driver) = h2_connect_with(&s, &ca, builder).await;
    let mut slow = Sse::open_h2(
        &h2,
        "GET",
        &format!("/sse?token={}", s.token("h2-slow")),
        &[],
    )
    .await;
    let ok = slow.opened(0).await;
    s.wait_visible("h2-slow", &ok).await;
    let mut fast = Sse::open_h2(
        &h2,
        "GET",
        &format!("/sse?token={}", s.token("h2-fast")),
        &[],
    )
    .await;
    let ok = fast.opened(0).await;
    s.wait_visible("h2-fast", &ok).await;
    let big = "x".repeat(1000);
    let mut full = false;
    for i in 0..200 {
        s.push_id(&["h2-slow"], json!({"i": i, "pad": big})).await;
        if i % 10 == 0 {
            let id = s.push_id(&["h2-fast"], json!({"i": i})).await;
            assert_eq!(fast.event().await.id, Some(id.to_string()), "push {i}");
        }
        if metric(&s, "pushgate_room_queue_full_total").await == 1 {
            full = true;
            break;
        }
    }
    assert!(full, "the unread stream's outbox never filled");
    // Its session ends (the final events cannot be written: reset).
    wait_metric(&s, "pushgate_room_closes_total{code=\"4006\"}", 1).await;
    wait_metric(&s, H2_STREAMS, 1).await;
    s.wait_online("h2-slow", false).await;
    let id = s.push_id(&["h2-fast"], json!({"after": true})).await;
    assert_eq!(fast.event().await.id, Some(id.to_string()));
    assert_eq!(metric(&s, H2_CONNS).await, 1);
}

#[tokio::test]
async fn a_connection_without_streams_is_closed_after_the_auth_timeout() {
    let (ca, _dir, s) = tls_server(&["--auth-timeout", "1"]).await;
    // Never a stream: closed after one to two auth timeouts.
    let (_h2, idle) = h2_connect(&s, &ca).await;
    wait_metric(&s, H2_CONNS, 1).await;
    timeout(Duration::from_secs(4), idle)
        .await
        .unwrap()
        .unwrap();
    wait_metric(&s, H2_CONNS, 0).await;
    // An open stream keeps its connection, however quiet; once it ends,
    // the connection goes too.
    let (h2, driver) = h2_connect(&s, &ca).await;
    let mut sse = Sse::open_h2(
        &h2,
        "GET",
        &format!("/sse?token={}", s.token("h2-idle")),
        &[],
    )
    .await;
    sse.opened(0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !driver.is_finished(),
        "a connection with a stream was closed"
    );
    assert_eq!(metric(&s, H2_STREAMS).await, 1);
    drop(sse);
    timeout(Duration::from_secs(4), driver)
        .await
        .unwrap()
        .unwrap();
    wait_metric(&s, H2_CONNS, 0).await;
}

#[tokio::test]
async fn a_drain_closes_every_stream_with_4007_and_then_the_connection() {
    let (ca, _dir, mut s) = tls_server(&[]).await;
    let (h2, driver) = h2_connect(&s, &ca).await;
    let mut streams = Vec::new();
    for user in ["h2-d1", "h2-d2"] {
        let mut sse = Sse::open_h2(&h2, "GET", &format!("/sse?token={}", s.token(user)), &[]).await;
        let ok = sse.opened(0).await;
        s.wait_visible(user, &ok).await;
        streams.push(sse);
    }
    s.sigterm();
    for sse in &mut streams {
        let err = sse.event().await;
        assert_eq!(err.event.as_deref(), Some("error"), "{err:?}");
        assert_eq!(err.json()["code"], "draining");
        let close = sse.event().await;
        assert_eq!(close.event.as_deref(), Some("close"), "{close:?}");
        assert_eq!(close.json()["code"], 4007);
        assert!(sse.next(Duration::from_secs(3)).await.is_none());
    }
    // The connection ends (GOAWAY, then the process exits).
    timeout(Duration::from_secs(10), driver)
        .await
        .unwrap()
        .unwrap();
    assert!(s.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn chromium_eventsource_uses_h2() {
    use tokio::io::AsyncBufReadExt;
    let py = common::chromium_python();
    let (_ca, _dir, s) = tls_server(&[]).await;
    let url = format!(
        "https://localhost:{}/sse?token={}",
        s.ws.port(),
        s.token("h2-chromium")
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/sse_h2.py");
    let mut child = tokio::process::Command::new(py)
        .arg(script)
        .args(["--url", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let mut next_line = async |what: &str| -> String {
        match timeout(Duration::from_secs(60), lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let mut err = String::new();
                let _ = timeout(Duration::from_secs(5), stderr.read_to_string(&mut err)).await;
                panic!("no {what} line from the browser script ({other:?}):\n{err}");
            }
        }
    };
    assert_eq!(next_line("open").await, "open");
    // The browser's stream came over HTTP/2.
    assert_eq!(metric(&s, H2_STREAMS).await, 1);
    assert_eq!(metric(&s, H1_STREAMS).await, 0);
    assert!(metric(&s, H2_CONNS).await >= 1);
    let id = s
        .push_id(&["h2-chromium"], json!({"hello": "browser"}))
        .await;
    assert_eq!(next_line("message").await, format!("message {id}"));
    s.api_ok("DELETE", "/users/h2-chromium/connections", None, 200)
        .await;
    let close = next_line("close").await;
    let close: serde_json::Value =
        serde_json::from_str(close.strip_prefix("close ").unwrap()).unwrap();
    assert_eq!(close["code"], 4005, "{close}");
    let status = timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), after `first`'s high bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing (RFC 7541 §6.2.2).
fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads the next frame: (type, flags, stream id, payload).
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(sock: &mut S) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    sock.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    sock.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream, payload)
}

#[tokio::test]
async fn a_client_over_the_stream_limit_gets_refused_stream() {
    // A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS (raw frames,
    // not the h2 crate, which would wait) gets REFUSED_STREAM for the
    // stream over the limit; the others are served.
    const SETTINGS: u8 = 0x4;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const REFUSED_STREAM: u32 = 0x7;
    let (ca, _dir, s) = tls_server(&["--h2-max-streams", "2"]).await;
    let tcp = TcpStream::connect(s.ws).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(&[&ca.pem], &[b"h2"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // The server's SETTINGS name the limit (id 0x3 = MAX_CONCURRENT_STREAMS).
    let (kind, flags, _, payload) = timeout(Duration::from_secs(5), read_frame(&mut tls))
        .await
        .unwrap();
    assert_eq!((kind, flags), (SETTINGS, 0));
    let limit = payload
        .chunks(6)
        .find(|c| c[..2] == [0, 3])
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    assert_eq!(limit, Some(2), "{payload:?}");
    tls.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap(); // ACK
    let path = format!("/sse?token={}", s.token("h2-raw"));
    for stream in [1u32, 3, 5] {
        let block = hpack_block(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", &path),
        ]);
        // END_STREAM | END_HEADERS
        tls.write_all(&frame(HEADERS, 0x5, stream, &block))
            .await
            .unwrap();
    }
    let mut answered = Vec::new();
    let mut refused = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while refused.is_none() || answered.len() < 2 {
        let (kind, _, stream, payload) = tokio::time::timeout_at(deadline, read_frame(&mut tls))
            .await
            .unwrap_or_else(|_| panic!("answered {answered:?}, refused {refused:?} after 5 s"));
        match kind {
            HEADERS => answered.push(stream),
            RST_STREAM => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                refused = Some((stream, code));
            }
            _ => {}
        }
    }
    assert_eq!(refused, Some((5, REFUSED_STREAM)));
    answered.sort_unstable();
    assert_eq!(answered, [1, 3]);
    wait_metric(&s, H2_STREAMS, 2).await;
}
