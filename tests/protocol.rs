//! Client protocol v1 on every transport: auth_ok, ping/pong, sub/unsub and
//! channel permissions from the token.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use common::{Server, Transport};
use proto::{ClientFrame, MsgId};
use serde_json::json;
use std::time::Duration;

async fn auth_ok_fields(t: Transport) {
    let s = Server::start(&["--heartbeat", "7"]).await;
    let mut c = s.connect(t).await;
    let ok = c.auth(&s.token("alice"), None, Some("phone")).await;
    assert_eq!(ok["op"], "auth_ok", "{t:?}: {ok}");
    assert_eq!(ok["user"], "alice", "{t:?}: auth_ok.user: {ok}");
    assert_eq!(
        ok["heartbeat"], 7,
        "{t:?}: auth_ok.heartbeat must be the --heartbeat value: {ok}"
    );
    assert_eq!(
        ok["seq"], 1,
        "{t:?}: auth_ok must echo the auth frame's seq: {ok}"
    );
    let conn = ok["conn"]
        .as_str()
        .unwrap_or_else(|| panic!("{t:?}: auth_ok.conn must be a string: {ok}"));
    assert!(!conn.is_empty(), "{t:?}: empty conn id: {ok}");
    assert!(
        ok["room"].is_string() && !ok["room"].as_str().unwrap().is_empty(),
        "{t:?}: auth_ok.room must be a non-empty string (DESIGN: \"room\":\"<room id>\"): {ok}"
    );
    // A second connection gets a different conn id.
    let mut c2 = s.connect(t).await;
    let ok2 = c2.auth(&s.token("alice"), None, Some("laptop")).await;
    assert_ne!(
        ok2["conn"], ok["conn"],
        "{t:?}: two connections share a conn id"
    );
}

async fn ping_pong_echoes_seq(t: Transport) {
    let s = Server::start(&[]).await;
    let (mut c, _) = s.login(t, "bob", "d1").await;
    for seq in [42u32, 0, u32::MAX] {
        c.send(&ClientFrame::Ping { seq: Some(seq) }).await;
        let v = c.next().await;
        assert_eq!(v["op"], "pong", "{t:?}: {v}");
        assert_eq!(v["seq"], json!(seq), "{t:?}: pong must echo seq {seq}: {v}");
    }
    c.send(&ClientFrame::Ping { seq: None }).await;
    let v = c.next().await;
    assert_eq!(v["op"], "pong", "{t:?}: {v}");
    assert!(
        v.get("seq").is_none() || v["seq"].is_null(),
        "{t:?}: pong to a ping without seq carries seq: {v}"
    );
}

async fn sub_unsub_and_permissions(t: Transport) {
    let s = Server::start(&[]).await;
    let mut c = s.connect(t).await;
    c.auth(
        &s.token_channels("carol", &["news", "sport.*"]),
        None,
        Some("d"),
    )
    .await;
    c.sub("news").await;
    c.sub("sport.eu").await;

    // Forbidden by the token: an error, and the connection stays usable.
    c.send(&ClientFrame::Sub {
        seq: Some(9),
        channel: "weather".into(),
        last_id: None,
        presence: false,
    })
    .await;
    let v = c.next().await;
    assert_eq!(
        v["op"], "error",
        "{t:?}: sub to a channel the token does not allow: {v}"
    );
    assert_eq!(v["code"], "channel_forbidden", "{t:?}: {v}");
    assert!(c.ping_sync(10).await.is_empty(), "{t:?}: unexpected frames");

    // "sport" itself is not covered by "sport.*".
    c.send(&ClientFrame::Sub {
        seq: Some(11),
        channel: "sportx".into(),
        last_id: None,
        presence: false,
    })
    .await;
    let v = c.next().await;
    assert_eq!(
        v["code"], "channel_forbidden",
        "{t:?}: prefix sport.* must not allow sportx: {v}"
    );

    let r = s.push_channel("news", json!({"n": 1})).await;
    assert_eq!(r["delivered"], 1, "{t:?}: push to news: {r}");
    let m = c.next_msg().await;
    assert_eq!(
        m["channel"], "news",
        "{t:?}: channel msg must carry its channel: {m}"
    );
    assert_eq!(m["data"], json!({"n": 1}), "{t:?}: {m}");
    assert_eq!(
        m["id"].as_i64(),
        r["id"].as_i64(),
        "{t:?}: msg id must match the push answer: {m} vs {r}"
    );

    // Nobody subscribed to weather: delivered 0 and nothing arrives.
    let r = s.push_channel("weather", json!("w")).await;
    assert_eq!(r["delivered"], 0, "{t:?}: {r}");

    c.send(&ClientFrame::Unsub {
        seq: Some(12),
        channel: "news".into(),
    })
    .await;
    let v = c.next().await;
    assert_eq!(v["op"], "unsub_ok", "{t:?}: {v}");
    assert_eq!(v["channel"], "news", "{t:?}: {v}");
    assert_eq!(v["seq"], 12, "{t:?}: unsub_ok must echo seq: {v}");
    let r = s.push_channel("news", json!({"n": 2})).await;
    assert_eq!(r["delivered"], 0, "{t:?}: push after unsub: {r}");
    let r = s.push_channel("sport.eu", json!({"n": 3})).await;
    assert_eq!(r["delivered"], 1, "{t:?}: {r}");
    let m = c.next_msg().await;
    assert_eq!(
        m["channel"], "sport.eu",
        "{t:?}: expected only the sport.eu msg after unsub of news: {m}"
    );
    c.assert_quiet(Duration::from_millis(200)).await;
}

async fn token_without_channels_allows_none(t: Transport) {
    let s = Server::start(&[]).await;
    let (mut c, _) = s.login(t, "dave", "d").await;
    c.send(&ClientFrame::Sub {
        seq: Some(3),
        channel: "news".into(),
        last_id: None,
        presence: false,
    })
    .await;
    let v = c.next().await;
    assert_eq!(
        v["op"], "error",
        "{t:?}: token without channels claim must allow none: {v}"
    );
    assert_eq!(v["code"], "channel_forbidden", "{t:?}: {v}");
    let r = s.push_channel("news", json!(1)).await;
    assert_eq!(
        r["delivered"], 0,
        "{t:?}: refused sub must not deliver: {r}"
    );
}

async fn ack_is_silent(t: Transport) {
    let s = Server::start(&[]).await;
    let (mut c, _) = s.login(t, "erin", "d").await;
    let id = s.push_id(&["erin"], json!("x")).await;
    let m = c.next_msg().await;
    assert_eq!(m["id"], id);
    c.send(&ClientFrame::Ack {
        seq: None,
        id: MsgId(id),
    })
    .await;
    assert!(
        c.ping_sync(5).await.is_empty(),
        "{t:?}: ack must not be answered"
    );
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
    auth_ok_fields,
    ping_pong_echoes_seq,
    sub_unsub_and_permissions,
    token_without_channels_allows_none,
    ack_is_silent,
);

/// A WebSocket client that asks for no subprotocol speaks JSON.
#[tokio::test]
async fn ws_without_subprotocol_is_json() {
    let s = Server::start(&[]).await;
    let (mut c, ok) = s.login(Transport::WsDefault, "frank", "d").await;
    assert_eq!(ok["user"], "frank");
    let id = s.push_id(&["frank"], json!({"k": [1, 2]})).await;
    let m = c.next_msg().await;
    assert_eq!(m["id"], id);
    assert_eq!(m["data"], json!({"k": [1, 2]}));
    let ts = m["ts"].as_i64().expect("msg.ts must be an integer");
    let now = common::now_ms();
    assert!(
        (now - ts).abs() < 60_000,
        "msg.ts must be ms since the epoch, got {ts} (now {now})"
    );
}

/// The JSON text encoding keeps arbitrary JSON data intact (unicode, nesting, numbers).
#[tokio::test]
async fn json_data_roundtrip_all_transports() {
    let s = Server::start(&[]).await;
    let data = json!({"s": "héllo \"wörld\" \u{1F600}\n", "n": -12.5, "big": 9007199254740993i64,
                      "a": [null, true, false, {"x": []}], "e": {}});
    for t in common::TRANSPORTS {
        let u = common::uniq("rt");
        let (mut c, _) = s.login(t, &u, "d").await;
        s.push_id(&[&u], data.clone()).await;
        let m = c.next_msg().await;
        assert_eq!(m["data"], data, "{t:?}: data changed in transit");
    }
}
