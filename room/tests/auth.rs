//! Authentication over every transport: auth_ok, refused tokens, timeouts.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use proto::{ClientFrame, ConnId, ErrorCode, RoomId, ServerFrame, UserId};

#[tokio::test]
async fn auth_ok_carries_conn_user_room_heartbeat_on_every_transport() {
    let t = start(config()).await;
    let mut keep = Vec::new();
    for tr in ALL {
        let mut c = t.client(tr).await;
        c.send(&auth(token("alice"))).await;
        match c.frame().await {
            ServerFrame::AuthOk {
                seq,
                conn,
                user,
                room,
                heartbeat,
            } => {
                assert_eq!(seq, Some(1), "{tr:?}");
                assert_eq!(user, UserId::new("alice"));
                assert_eq!(room, RoomId(7));
                assert_eq!(conn.room(), RoomId(7));
                assert_eq!(heartbeat, 5);
            }
            other => panic!("{tr:?}: expected auth_ok, got {other:?}"),
        }
        c.roundtrip(9).await;
        keep.push(c);
    }
    assert_eq!(t.room.connections(), 3);
    assert_eq!(t.room.users(), 1);
}

#[tokio::test]
async fn device_comes_from_token_then_frame_then_default_and_backend_is_told() {
    let t = start(config()).await;
    let mut with_dev = claims("bob");
    with_dev.dev = Some("tok-dev".into());
    let mut a = t.client(Transport::Tcp).await;
    a.send(&ClientFrame::Auth {
        seq: None,
        token: mint(&with_dev),
        last_id: None,
        device: Some("frame-dev".into()),
    })
    .await;
    let conn_a = match a.frame().await {
        ServerFrame::AuthOk { conn, .. } => conn,
        other => panic!("{other:?}"),
    };
    let _b = t.authed(Transport::WsJson, "bob", Some("frame-dev")).await;
    let _c = t.authed(Transport::WsBin, "bob", None).await;
    t.wait_until("3 connected", |t| {
        t.backend.state.lock().connected.len() == 3
    })
    .await;
    let mut devices: Vec<String> = t
        .backend
        .state
        .lock()
        .connected
        .iter()
        .map(|s| s.device.to_string())
        .collect();
    devices.sort();
    assert_eq!(devices, ["default", "frame-dev", "tok-dev"]);
    drop(a);
    t.wait_until("disconnected", |t| {
        t.backend
            .state
            .lock()
            .disconnected
            .iter()
            .any(|s| s.conn == conn_a && &*s.device == "tok-dev")
    })
    .await;
    t.wait_until("2 left", |t| t.room.connections() == 2).await;
}

#[tokio::test]
async fn bad_signature_is_4001_on_every_transport() {
    let t = start(config()).await;
    let forged = proto::token::mint(&claims("mallory"), b"other-secret").unwrap();
    for tr in ALL {
        let mut c = t.client(tr).await;
        c.send(&auth(forged.clone())).await;
        c.expect_close(ErrorCode::AuthFailed, 4001).await;
    }
    assert_eq!(
        t.metric("pushgate_room_auth_failures_total{reason=\"token\"}"),
        3
    );
    assert_eq!(t.room.connections(), 0);
    assert!(t.backend.state.lock().connected.is_empty());
}

#[tokio::test]
async fn expired_token_is_4001() {
    let t = start(config()).await;
    let mut c_ = claims("old");
    c_.exp = now_secs() - 120;
    for tr in [Transport::WsJson, Transport::Tcp] {
        let mut c = t.client(tr).await;
        c.send(&auth(mint(&c_))).await;
        let reason = c.expect_close(ErrorCode::AuthFailed, 4001).await;
        assert!(reason.contains("expired"), "{reason}");
    }
}

#[tokio::test]
async fn garbage_token_is_4001() {
    let t = start(config()).await;
    let mut c = t.client(Transport::WsBin).await;
    c.send(&auth("not.a.jwt".into())).await;
    c.expect_close(ErrorCode::AuthFailed, 4001).await;
}

#[tokio::test]
async fn first_frame_not_auth_is_not_authenticated_4001() {
    let t = start(config()).await;
    for tr in ALL {
        let mut c = t.client(tr).await;
        c.send(&ping(3)).await;
        c.expect_close(ErrorCode::NotAuthenticated, 4001).await;
    }
}

#[tokio::test]
async fn no_auth_frame_in_time_is_4002() {
    let mut cfg = config();
    cfg.auth_timeout = Duration::from_millis(200);
    let t = start(cfg).await;
    for tr in ALL {
        let mut c = t.client(tr).await;
        c.expect_close(ErrorCode::AuthTimeout, 4002).await;
    }
    t.wait_until("3 closes counted", |t| {
        t.metric("pushgate_room_closes_total{code=\"4002\"}") == 3
    })
    .await;
}

#[tokio::test]
async fn conn_ids_are_distinct() {
    let t = start(config()).await;
    let mut ids = Vec::new();
    for tr in ALL {
        let mut c = t.client(tr).await;
        c.send(&auth(token("x"))).await;
        if let ServerFrame::AuthOk { conn, .. } = c.frame().await {
            ids.push(conn);
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|c: &ConnId| c.room() == RoomId(7)));
}
