//! Listeners: path, subprotocols, connection limit.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use proto::{ErrorCode, ServerFrame};
use tokio_tungstenite::tungstenite::Error as WsError;

#[tokio::test]
async fn wrong_path_gets_404() {
    let t = start(config()).await;
    for path in ["/", "/other", "/ws/x"] {
        match ws_connect(t.ws, path, None).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 404, "{path}"),
            Err(e) => panic!("{path}: expected 404, got {e}"),
            Ok(_) => panic!("{path}: accepted"),
        }
    }
    t.wait_until("3 handshake failures", |t| {
        t.metric("pushgate_room_handshake_failures_total") == 3
    })
    .await;
}

#[tokio::test]
async fn json_is_the_default_and_unknown_subprotocols_get_400() {
    let t = start(config()).await;
    let (ws, chosen) = ws_connect(t.ws, "/ws", None).await.unwrap();
    assert_eq!(chosen, None);
    let mut c = Client::from_ws(ws, false);
    c.send(&auth(token("j"))).await;
    assert!(matches!(c.frame().await, ServerFrame::AuthOk { .. }));
    match ws_connect(t.ws, "/ws", Some("chat.v9, mqtt")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 400),
        Err(e) => panic!("expected 400, got {e}"),
        Ok(_) => panic!("accepted an unknown subprotocol"),
    }
    // The first of ours in the client's order wins.
    let (_ws, chosen) = ws_connect(t.ws, "/ws", Some("x, pushgate.v1.bin, pushgate.v1.json"))
        .await
        .unwrap();
    assert_eq!(chosen.as_deref(), Some("pushgate.v1.bin"));
}

#[tokio::test]
async fn text_frames_are_json_even_on_the_binary_subprotocol() {
    let t = start(config()).await;
    let mut c = t.client(Transport::WsBin).await;
    let mut json = Vec::new();
    proto::json::encode_client(&auth(token("mixed")), &mut json);
    c.send_text(&String::from_utf8(json).unwrap()).await;
    // The reply is binary (the negotiated encoding); the client decodes it as such.
    assert!(matches!(c.frame().await, ServerFrame::AuthOk { .. }));
}

#[tokio::test]
async fn a_full_room_refuses_fast() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let t = start(cfg).await;
    let mut a = t.authed(Transport::WsJson, "first", None).await;
    let _b = t.client(Transport::Tcp).await; // unauthenticated sockets count too
    t.wait_until("both accepted", |t| t.metric("pushgate_room_sockets") == 2)
        .await;
    match ws_connect(t.ws, "/ws", None).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        Err(e) => panic!("expected 503, got {e}"),
        Ok(_) => panic!("accepted beyond max_connections"),
    }
    let mut tcp = t.client(Transport::Tcp).await;
    tcp.expect_close(ErrorCode::Overloaded, 4007).await;
    assert_eq!(t.metric("pushgate_room_refused_total{transport=\"ws\"}"), 1);
    assert_eq!(
        t.metric("pushgate_room_refused_total{transport=\"tcp\"}"),
        1
    );
    // Existing connections are unaffected, and a freed slot is reusable.
    a.roundtrip(1).await;
    drop(a);
    t.wait_until("slot freed", |t| t.metric("pushgate_room_sockets") == 1)
        .await;
    let mut again = t.authed(Transport::WsBin, "second", None).await;
    again.roundtrip(2).await;
}

#[tokio::test]
async fn shutdown_stops_accepting_but_keeps_sessions() {
    let t = start(config()).await;
    let mut c = t.authed(Transport::Tcp, "stay", None).await;
    t.shutdown.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(ws_connect(t.ws, "/ws", None).await.is_err());
    c.roundtrip(1).await;
    assert!(t.room.drain(std::time::Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_silent_websocket_handshake_times_out() {
    let mut cfg = config();
    cfg.auth_timeout = std::time::Duration::from_millis(200);
    let t = start(cfg).await;
    let mut raw = tokio::net::TcpStream::connect(t.ws).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await
    .expect("not closed after the handshake timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    t.wait_until("counted", |t| {
        t.metric("pushgate_room_handshake_failures_total") == 1
    })
    .await;
}

#[tokio::test]
async fn tcp_frames_may_arrive_one_byte_at_a_time() {
    let t = start(config()).await;
    let mut body = Vec::new();
    proto::binary::encode_client(&auth(token("dribble")), &mut body);
    let mut framed = Vec::new();
    proto::binary::write_len(body.len(), &mut framed);
    framed.extend_from_slice(&body);
    let mut c = t.client(Transport::Tcp).await;
    for b in &framed {
        c.send_raw(std::slice::from_ref(b)).await;
        tokio::task::yield_now().await;
    }
    assert!(matches!(c.frame().await, ServerFrame::AuthOk { .. }));
    c.roundtrip(1).await;
}

/// A raw client's masked frame, as browsers send them.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x5a, 0x17, 0xc3, 0x8e];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server frame: (opcode, payload).
async fn server_frame(sock: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    sock.read_exact(&mut head).await.unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => usize::from(sock.read_u16().await.unwrap()),
        127 => usize::try_from(sock.read_u64().await.unwrap()).unwrap(),
        n => usize::from(n),
    };
    let mut payload = vec![0; len];
    sock.read_exact(&mut payload).await.unwrap();
    assert_eq!(head[0] & 0x80, 0x80, "server frames are final");
    (head[0] & 0x0f, payload)
}

/// The framing on raw bytes: a frame arriving a byte at a time, several in
/// one write, a Ping answered by a Pong with its payload, then a protocol
/// violation (an unmasked frame) closed with 4004 and TCP closed after.
#[tokio::test]
async fn raw_frames_split_coalesced_and_a_violation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = start(config()).await;
    let mut sock = tokio::net::TcpStream::connect(t.ws).await.unwrap();
    sock.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(sock.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));

    let auth = format!(r#"{{"op":"auth","seq":1,"token":"{}"}}"#, token("raw"));
    let mut long = vec![0x81, 0xfe];
    long.extend_from_slice(&u16::try_from(auth.len()).unwrap().to_be_bytes());
    long.extend_from_slice(&[0; 4]); // a zero mask leaves the payload as is
    long.extend_from_slice(auth.as_bytes());
    for b in long {
        sock.write_all(&[b]).await.unwrap();
        sock.flush().await.unwrap();
    }
    let (op, body) = server_frame(&mut sock).await;
    assert_eq!(op, 0x1);
    assert!(String::from_utf8(body).unwrap().contains("auth_ok"));

    let mut two = masked(0x1, br#"{"op":"ping","seq":2}"#);
    two.extend(masked(0x9, b"hi"));
    two.extend(masked(0x1, br#"{"op":"ping","seq":3}"#));
    sock.write_all(&two).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(server_frame(&mut sock).await);
    }
    assert_eq!(got[0], (0x1, br#"{"op":"pong","seq":2}"#.to_vec()));
    assert_eq!(got[1], (0xA, b"hi".to_vec()), "the Pong echoes the Ping");
    assert_eq!(got[2], (0x1, br#"{"op":"pong","seq":3}"#.to_vec()));

    // Unmasked: a protocol violation.
    sock.write_all(&[0x81, 0x02, b'{', b'}']).await.unwrap();
    let (op, body) = server_frame(&mut sock).await;
    assert_eq!(op, 0x1);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("bad_frame") && text.contains("unmasked"),
        "{text}"
    );
    let (op, body) = server_frame(&mut sock).await;
    assert_eq!(op, 0x8);
    assert_eq!(u16::from_be_bytes([body[0], body[1]]), 4004);
    // The server waits for our Close, then closes TCP.
    sock.write_all(&masked(0x8, &4004u16.to_be_bytes()))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sock.read_to_end(&mut rest),
    )
    .await
    .expect("TCP closed after the close handshake")
    .unwrap();
    assert_eq!(n, 0, "nothing after the Close: {rest:?}");
}
