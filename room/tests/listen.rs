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
    let mut c = Client::Ws { ws, bin: false };
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
    if let Client::Ws { ws, .. } = &mut c {
        use futures_util::SinkExt;
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            String::from_utf8(json).unwrap().into(),
        ))
        .await
        .unwrap();
    }
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
