//! The IM half, end to end on real sockets: clients `send` 1:1 messages and
//! `pub` to channels; the messages are stored like pushes, carry `from` and
//! `cid`, skip the sending connection, reach the sender's other devices,
//! are idempotent by cid (also after a restart), go through the hook, and
//! bad input gets its non-fatal error. Embedded store, Redis, and a cluster.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use bytes::Bytes;
use common::{now_secs, Client, Server, Transport};
use parking_lot::Mutex;
use proto::{ClientFrame, UserId};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

/// A token with the IM claims: `channels`, `pub`, and `send` when given.
fn im_token(s: &Server, user: &str, device: &str, extra: Value) -> String {
    let mut claims = json!({
        "sub": user, "dev": device, "exp": now_secs() + 3600,
        "channels": ["room:*"], "pub": ["room:*"],
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(s.secret.as_bytes()),
    )
    .unwrap()
}

async fn login(s: &Server, t: Transport, user: &str, device: &str) -> Client {
    let mut c = s.connect(t).await;
    let ok = c
        .auth(&im_token(s, user, device, json!({})), None, None)
        .await;
    assert_eq!(ok["op"], "auth_ok", "{ok}");
    c
}

fn send(seq: u32, to: &str, data: Value, cid: &str) -> ClientFrame {
    ClientFrame::send(
        Some(seq),
        UserId::new(to),
        Bytes::from(data.to_string()),
        cid.into(),
    )
}

fn publish(seq: u32, channel: &str, data: Value, cid: &str) -> ClientFrame {
    ClientFrame::publish(
        Some(seq),
        channel.into(),
        Bytes::from(data.to_string()),
        cid.into(),
    )
}

/// Sends `f` and returns the answer (send_ok, pub_ok or error).
async fn ask(c: &mut Client, f: &ClientFrame) -> Value {
    c.send(f).await;
    let v = c.next().await;
    assert_eq!(v["seq"], json!(f.seq()), "{v}");
    v
}

/// The 1:1 path on one server: delivery, sync, idempotency, offline replay.
async fn send_round(s: &Server, t: Transport) {
    let tag = format!("{t:?}").to_lowercase();
    let (alice, bob, carol) = (
        format!("alice-{tag}"),
        format!("bob-{tag}"),
        format!("carol-{tag}"),
    );
    let mut a1 = login(s, t, &alice, "phone").await;
    let mut a2 = login(s, t, &alice, "laptop").await;
    let mut b = login(s, t, &bob, "phone").await;
    let ok = ask(&mut a1, &send(7, &bob, json!({"text": "hi"}), "c-1")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    assert_eq!(ok["cid"], "c-1");
    let id = ok["id"].as_i64().unwrap();
    for c in [&mut b, &mut a2] {
        let m = c.next_msg().await;
        assert_eq!(m["id"], id, "{m}");
        assert_eq!(m["data"], json!({"text": "hi"}));
        assert_eq!(m["from"], alice.as_str());
        assert_eq!(m["cid"], "c-1");
        assert!(m.get("channel").is_none(), "{m}");
    }
    // Never echoed to the sending connection.
    a1.assert_quiet(QUIET).await;
    // The same cid again: the same id, delivered to nobody again.
    let again = ask(&mut a1, &send(8, &bob, json!({"text": "hi"}), "c-1")).await;
    assert_eq!(again["op"], "send_ok", "{again}");
    assert_eq!(again["id"], id, "{again}");
    b.assert_quiet(QUIET).await;
    a2.assert_quiet(Duration::from_millis(1)).await;
    // An offline recipient finds it in its queue, with the sender.
    let ok = ask(&mut a1, &send(9, &carol, json!("later"), "c-2")).await;
    let later = ok["id"].as_i64().unwrap();
    let mut c = login(s, t, &carol, "phone").await;
    let m = c.next_msg().await;
    assert_eq!((m["id"].as_i64(), &m["from"]), (Some(later), &json!(alice)));
    let (status, v) = s
        .api("GET", &format!("/users/{carol}/messages"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["messages"][0]["from"], alice.as_str(), "{v}");
    assert_eq!(v["messages"][0]["cid"], "c-2", "{v}");
}

#[tokio::test]
async fn send_reaches_the_recipient_and_the_senders_other_devices_once() {
    let s = Server::start(&[]).await;
    for t in [Transport::WsJson, Transport::WsBin, Transport::Tcp] {
        send_round(&s, t).await;
    }
}

#[tokio::test]
async fn send_on_redis_and_the_cid_outlives_a_restart() {
    let redis = testkit::RedisServer::start();
    let mut s = Server::start(&["--redis", &redis.url()]).await;
    send_round(&s, Transport::WsJson).await;
    let mut a = login(&s, Transport::WsJson, "dana", "phone").await;
    let first = ask(&mut a, &send(1, "erin", json!(1), "once")).await;
    drop(a);
    s.restart().await;
    let mut a = login(&s, Transport::WsJson, "dana", "phone").await;
    // The sender's queue has it too (for its other devices): replayed.
    assert_eq!(a.next_msg().await["id"], first["id"]);
    let again = ask(&mut a, &send(2, "erin", json!(1), "once")).await;
    assert_eq!(again["id"], first["id"], "{again}");
    let (_, v) = s.api("GET", "/users/erin/messages", None).await;
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{v}");
}

#[tokio::test]
async fn the_embedded_store_keeps_cids_across_a_kill() {
    let mut s = Server::start(&[]).await;
    let mut a = login(&s, Transport::WsJson, "fay", "phone").await;
    let first = ask(&mut a, &send(1, "gil", json!("x"), "k-1")).await;
    drop(a);
    s.kill9().await;
    s.restart().await;
    let mut a = login(&s, Transport::WsJson, "fay", "phone").await;
    assert_eq!(a.next_msg().await["id"], first["id"]);
    let again = ask(&mut a, &send(2, "gil", json!("x"), "k-1")).await;
    assert_eq!(again["id"], first["id"], "{again}");
}

#[tokio::test]
async fn pub_reaches_other_subscribers_and_keeps_history_where_asked() {
    let s = Server::start(&["--history-channels", "room:kept*"]).await;
    let mut a = login(&s, Transport::WsJson, "hal", "phone").await;
    let mut b = login(&s, Transport::Tcp, "ivy", "phone").await;
    for c in [&mut a, &mut b] {
        c.sub("room:1").await;
        c.sub("room:kept").await;
    }
    let ok = ask(&mut a, &publish(3, "room:1", json!({"t": 1}), "p-1")).await;
    assert_eq!(ok["op"], "pub_ok", "{ok}");
    let m = b.next_msg().await;
    assert_eq!(m["id"], ok["id"]);
    assert_eq!(m["channel"], "room:1");
    assert_eq!(m["from"], "hal");
    assert_eq!(m["cid"], "p-1");
    a.assert_quiet(QUIET).await;
    // Kept in history only on --history-channels.
    let kept = ask(&mut a, &publish(4, "room:kept", json!("k"), "p-2")).await;
    let _ = b.next_msg().await;
    let mut late = login(&s, Transport::WsJson, "jon", "phone").await;
    late.send(&ClientFrame::Sub {
        seq: Some(9),
        channel: "room:kept".into(),
        last_id: Some(proto::MsgId(0)),
        presence: false,
    })
    .await;
    assert_eq!(late.next().await["op"], "sub_ok");
    let h = late.next_msg().await;
    assert_eq!((&h["id"], &h["from"]), (&kept["id"], &json!("hal")));
    late.send(&ClientFrame::Sub {
        seq: Some(10),
        channel: "room:1".into(),
        last_id: Some(proto::MsgId(0)),
        presence: false,
    })
    .await;
    assert_eq!(late.next().await["op"], "sub_ok");
    late.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn bad_sends_get_their_error_and_the_connection_stays() {
    let s = Server::start(&["--send-rate", "2", "--max-send-bytes", "100"]).await;
    let mut a = login(&s, Transport::WsJson, "kim", "phone").await;
    let mut b = login(&s, Transport::WsJson, "lee", "phone").await;
    let cases = [
        (send(1, "lee", json!(1), ""), "bad_frame"),
        (send(2, "lee", json!(1), &"x".repeat(65)), "bad_frame"),
        (send(3, "", json!(1), "c"), "bad_frame"),
        (send(4, "lee", json!("y".repeat(200)), "c"), "too_large"),
        (publish(5, "news", json!(1), "c"), "forbidden"),
        (publish(6, "room:*", json!(1), "c"), "bad_channel"),
    ];
    for (f, code) in cases {
        let v = ask(&mut a, &f).await;
        assert_eq!(
            (v["op"].as_str(), v["code"].as_str()),
            (Some("error"), Some(code)),
            "{v}"
        );
        assert!(v.get("close").is_none(), "{v}");
    }
    b.assert_quiet(QUIET).await;
    // Over the send rate (2/s, burst 4): rate_limited, not a close.
    let mut limited = 0;
    for i in 0..8 {
        let v = ask(&mut a, &send(20 + i, "lee", json!(i), &format!("r-{i}"))).await;
        if v["code"] == "rate_limited" {
            limited += 1;
        } else {
            assert_eq!(v["op"], "send_ok", "{v}");
        }
    }
    assert!(limited >= 3, "{limited} of 8 rate limited");
    assert!(a.ping_sync(99).await.is_empty());
    // A token with "send": false.
    let mut muted = s.connect(Transport::WsJson).await;
    muted
        .auth(
            &im_token(&s, "mo", "phone", json!({"send": false})),
            None,
            None,
        )
        .await;
    let v = ask(&mut muted, &send(1, "lee", json!(1), "m")).await;
    assert_eq!(v["code"], "forbidden", "{v}");
}

/// One hook call: its `Authorization` header and body.
type Seen = (Option<String>, Value);

/// What the test hook saw, and how it answers.
#[derive(Clone, Default)]
struct HookState {
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn hook(
    axum::extract::State(st): axum::extract::State<HookState>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    st.seen.lock().push((auth, body.clone()));
    match body["data"]["do"].as_str() {
        Some("deny") => axum::Json(json!({"allow": false, "code": "spam", "message": "no spam"}))
            .into_response(),
        Some("rewrite") => {
            axum::Json(json!({"allow": true, "data": {"clean": true}})).into_response()
        }
        Some("fail") => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Some("slow") => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            axum::Json(json!({"allow": true})).into_response()
        }
        Some("garbage") => "x".repeat(1 << 20).into_response(),
        _ => axum::Json(json!({"allow": true})).into_response(),
    }
}

#[tokio::test]
async fn the_hook_decides_before_anything_is_stored() {
    let st = HookState::default();
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(st.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/hook");
    let s = Server::start(&[
        "--hook-url",
        &url,
        "--hook-secret",
        "hs-1",
        "--hook-timeout-ms",
        "500",
    ])
    .await;
    let mut a = login(&s, Transport::WsJson, "nia", "phone").await;
    let mut b = login(&s, Transport::WsJson, "oli", "phone").await;
    let ok = ask(&mut a, &send(1, "oli", json!({"do": "pass"}), "h-1")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    assert_eq!(b.next_msg().await["data"], json!({"do": "pass"}));
    let ok = ask(&mut a, &send(2, "oli", json!({"do": "rewrite"}), "h-2")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    assert_eq!(b.next_msg().await["data"], json!({"clean": true}));
    for (i, (what, code)) in [
        ("deny", "hook_denied"),
        ("fail", "hook_unavailable"),
        ("slow", "hook_unavailable"),
        ("garbage", "hook_unavailable"),
    ]
    .into_iter()
    .enumerate()
    {
        let seq = 10 + u32::try_from(i).unwrap();
        let v = ask(
            &mut a,
            &send(seq, "oli", json!({"do": what}), &format!("h-{what}")),
        )
        .await;
        assert_eq!(v["code"], code, "{what}: {v}");
        if what == "deny" {
            assert_eq!(v["message"], "no spam", "{v}");
        }
    }
    b.assert_quiet(QUIET).await;
    // A retry of an accepted message: its id, without asking the hook.
    let asked = st.seen.lock().len();
    let again = ask(&mut a, &send(20, "oli", json!({"do": "pass"}), "h-1")).await;
    assert_eq!(again["op"], "send_ok", "{again}");
    assert_eq!(st.seen.lock().len(), asked);
    let (_, v) = s.api("GET", "/users/oli/messages", None).await;
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(2), "{v}");
    let seen = st.seen.lock().clone();
    let (auth, first) = &seen[0];
    assert_eq!(auth.as_deref(), Some("Bearer hs-1"));
    assert_eq!(first["event"], "send");
    assert_eq!(first["from"], "nia");
    assert_eq!(first["to"], "oli");
    assert_eq!(first["device"], "phone");
    assert_eq!(first["cid"], "h-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_pub_cross_rooms_in_a_cluster() {
    let c = common::cluster::Cluster::start(2, 1).await;
    let token = |user: &str| {
        let claims = json!({
            "sub": user, "exp": now_secs() + 3600,
            "channels": ["room:*"], "pub": ["room:*"],
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(c.secret.as_bytes()),
        )
        .unwrap()
    };
    let mut a = Client::connect_addr(c.ws(0), Transport::WsJson).await;
    a.auth(&token("pam"), None, None).await;
    let mut b = Client::connect_addr(c.ws(1), Transport::WsJson).await;
    b.auth(&token("quin"), None, None).await;
    b.sub("room:x").await;
    a.sub("room:x").await;
    common::eventually("quin online", Duration::from_secs(10), || async {
        let (_, v) = c.api(0, "GET", "/users/quin", None).await;
        v["online"] == true
    })
    .await;
    let ok = ask(&mut a, &send(1, "quin", json!("across"), "x-1")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    let m = b.next_msg().await;
    assert_eq!((&m["id"], &m["from"]), (&ok["id"], &json!("pam")));
    let again = ask(&mut a, &send(2, "quin", json!("across"), "x-1")).await;
    assert_eq!(again["id"], ok["id"]);
    let ok = ask(&mut a, &publish(3, "room:x", json!("all"), "x-2")).await;
    assert_eq!(ok["op"], "pub_ok", "{ok}");
    let m = b.next_msg().await;
    assert_eq!((&m["id"], &m["channel"]), (&ok["id"], &json!("room:x")));
    a.assert_quiet(QUIET).await;
    b.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn a_user_over_its_send_rate_on_several_connections_is_rate_limited() {
    // Each connection alone is far under --send-rate; together they pass
    // --user-send-rate (2/s, burst 4).
    let s = Server::start(&["--send-rate", "100", "--user-send-rate", "2"]).await;
    let mut conns = Vec::new();
    for d in ["a", "b", "c"] {
        conns.push(login(&s, Transport::WsJson, "una", d).await);
    }
    let mut limited = 0;
    let mut accepted = 0;
    for i in 0..9u32 {
        // The user's other connections get each accepted message (device
        // sync): skip those on the way to the answer.
        let c = &mut conns[i as usize % 3];
        c.send(&send(i + 1, "vic", json!(i), &format!("u-{i}")))
            .await;
        let v = loop {
            let v = c.next().await;
            if v["op"] != "msg" {
                break v;
            }
        };
        assert_eq!(v["seq"], json!(i + 1), "{v}");
        if v["code"] == "rate_limited" {
            assert!(v["message"].as_str().unwrap().contains("this user"), "{v}");
            assert!(v.get("close").is_none(), "{v}");
            limited += 1;
        } else {
            assert_eq!(v["op"], "send_ok", "{v}");
            accepted += 1;
        }
    }
    assert!(limited >= 4, "{limited} of 9 limited");
    assert!(accepted >= 4, "{accepted} of 9 accepted");
    // Another user is not affected.
    let mut other = login(&s, Transport::Tcp, "wes", "x").await;
    let v = ask(&mut other, &send(1, "vic", json!(1), "w-1")).await;
    assert_eq!(v["op"], "send_ok", "{v}");
}
