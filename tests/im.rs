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
use common::{datas, now_secs, Client, Server, Transport};
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

/// The value of the metric line starting with `name` (labels included) in
/// `/metrics` text, 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `at` (a server's or room's HTTP address) reports `want` seen
/// records written (they are written beside the connection, not before
/// `auth_ok`).
async fn wait_recorded(http: &reqwest::Client, at: SocketAddr, want: f64) {
    let url = format!("http://{at}/metrics");
    common::eventually("seen records written", Duration::from_secs(10), || {
        let req = http.get(&url);
        async move {
            let Ok(r) = req.send().await else {
                return false;
            };
            let text = r.text().await.unwrap_or_default();
            metric(
                &text,
                "pushgate_known_users_recorded_total{outcome=\"written\"}",
            ) >= want
        }
    })
    .await;
}

/// Asserts that `v` is the non-fatal `unknown_user`.
fn assert_unknown_user(v: &Value) {
    assert_eq!(
        (v["op"].as_str(), v["code"].as_str()),
        (Some("error"), Some("unknown_user")),
        "{v}"
    );
    assert!(v.get("close").is_none(), "{v}");
}

/// `--send-known-users-only` on the embedded store: a recipient no one has
/// heard of is refused (nothing stored: connecting later brings nothing),
/// one who is online or authenticated before is not, nor is the sender
/// itself; the connection stays usable; the seen record outlives a kill.
#[tokio::test]
async fn send_known_users_only_refuses_strangers_and_remembers_the_known() {
    let http = reqwest::Client::new();
    let mut s = Server::start(&["--send-known-users-only"]).await;
    let mut a = login(&s, Transport::WsJson, "ku-ann", "phone").await;
    let v = ask(&mut a, &send(1, "ku-nobody", json!("x"), "n-1")).await;
    assert_unknown_user(&v);
    // The connection stays usable; a send to oneself is never refused.
    let me = ask(&mut a, &send(2, "ku-ann", json!("me"), "n-2")).await;
    assert_eq!(me["op"], "send_ok", "{me}");
    // Online: known at once.
    let mut b = login(&s, Transport::Tcp, "ku-ben", "phone").await;
    let ok = ask(&mut a, &send(3, "ku-ben", json!("hi"), "n-3")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    assert_eq!(b.next_msg().await["id"], ok["id"]);
    // Gone, but authenticated lately: still known.
    wait_recorded(&http, s.http, 2.0).await;
    drop(b);
    s.wait_online("ku-ben", false).await;
    let later = ask(&mut a, &send(4, "ku-ben", json!("later"), "n-4")).await;
    assert_eq!(later["op"], "send_ok", "{later}");
    // The refused message was stored nowhere.
    let (_, v) = s.api("GET", "/users/ku-nobody/messages", None).await;
    assert_eq!(v["messages"], json!([]), "{v}");
    let mut n = login(&s, Transport::WsJson, "ku-nobody", "phone").await;
    n.assert_quiet(QUIET).await;
    let (_, text) = s.raw("GET", "/metrics", None, None, None).await;
    assert_eq!(metric(&text, "pushgate_send_unknown_user_total"), 1.0);
    // REST pushes are not affected.
    s.push_id(&["ku-stranger"], json!("rest")).await;
    drop((a, n));
    // The seen records outlive a kill (the write-ahead log).
    s.kill9().await;
    s.restart().await;
    let mut c = login(&s, Transport::WsJson, "ku-cy", "phone").await;
    let ok = ask(&mut c, &send(1, "ku-ben", json!("after"), "r-1")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    let v = ask(&mut c, &send(2, "ku-other", json!("x"), "r-2")).await;
    assert_unknown_user(&v);
    let mut b = login(&s, Transport::WsJson, "ku-ben", "phone").await;
    let got = b.msgs(3).await;
    assert_eq!(
        datas(&got),
        [json!("hi"), json!("later"), json!("after")],
        "{got:?}"
    );
}

/// Without the flag a stranger's queue takes the message as before; with
/// it, a retry of that accepted message still gets its id.
#[tokio::test]
async fn without_the_flag_strangers_get_their_message_and_retries_keep_working_with_it() {
    let mut s = Server::start(&[]).await;
    let mut a = login(&s, Transport::WsJson, "kf-ann", "phone").await;
    let ok = ask(&mut a, &send(1, "kf-nobody", json!("x"), "f-1")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    let (_, v) = s.api("GET", "/users/kf-nobody/messages", None).await;
    assert_eq!(v["messages"][0]["data"], json!("x"), "{v}");
    drop(a);
    s.stop().await;
    s.restart_with(&["--send-known-users-only"]).await;
    let mut a = login(&s, Transport::WsJson, "kf-ann", "phone").await;
    // Its own queue has the message (device sync): replayed first.
    assert_eq!(a.next_msg().await["id"], ok["id"]);
    let again = ask(&mut a, &send(2, "kf-nobody", json!("x"), "f-1")).await;
    assert_eq!(again["op"], "send_ok", "{again}");
    assert_eq!(again["id"], ok["id"], "{again}");
    let v = ask(&mut a, &send(3, "kf-nobody", json!("y"), "f-2")).await;
    assert_unknown_user(&v);
}

/// The same on Redis: the seen record is `pg:{u:<user>}:seen`, with the
/// time to live of `--known-user-ttl`.
#[tokio::test]
async fn send_known_users_only_on_redis() {
    let http = reqwest::Client::new();
    let redis = testkit::RedisServer::start();
    let mut s = Server::start(&[
        "--redis",
        &redis.url(),
        "--send-known-users-only",
        "--known-user-ttl",
        "7200",
    ])
    .await;
    let mut a = login(&s, Transport::WsJson, "kr-ann", "phone").await;
    let v = ask(&mut a, &send(1, "kr-nobody", json!("x"), "n-1")).await;
    assert_unknown_user(&v);
    let b = login(&s, Transport::WsJson, "kr-ben", "phone").await;
    wait_recorded(&http, s.http, 2.0).await;
    drop(b);
    s.wait_online("kr-ben", false).await;
    let ok = ask(&mut a, &send(2, "kr-ben", json!("hi"), "n-2")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli (comes with redis-server: apt-get install redis-server)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let pttl: i64 = cli(&["PTTL", "pg:{u:kr-ben}:seen"]).parse().unwrap();
    assert!(pttl > 7_000_000 && pttl <= 7_200_000, "seen ttl {pttl}");
    assert_eq!(cli(&["EXISTS", "pg:{u:kr-nobody}:seen"]), "0");
    let (_, v) = s.api("GET", "/users/kr-nobody/messages", None).await;
    assert_eq!(v["messages"], json!([]), "{v}");
    drop(a);
    s.restart().await;
    let mut c = login(&s, Transport::WsJson, "kr-cy", "phone").await;
    let ok = ask(&mut c, &send(1, "kr-ben", json!("after"), "r-1")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
}

/// A 2-room cluster: the recipient authenticated on room A, the sender is
/// on room B; the rooms record through the saver and check through the
/// saver and the registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_known_users_only_across_rooms_in_a_cluster() {
    let http = reqwest::Client::new();
    let mut c = common::cluster::Cluster::start(0, 1).await;
    for id in 1..=2 {
        let mut args = c.room_args(id);
        args.push("--send-known-users-only".into());
        let n = common::cluster::Node::start(&format!("room-{id}"), args).await;
        c.rooms.push(n);
    }
    c.wait_rooms(2).await;
    let token = |user: &str| {
        let claims = json!({"sub": user, "exp": now_secs() + 3600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(c.secret.as_bytes()),
        )
        .unwrap()
    };
    let mut sender = Client::connect_addr(c.ws(1), Transport::WsJson).await;
    sender.auth(&token("kc-ann"), None, None).await;
    let v = ask(&mut sender, &send(1, "kc-ben", json!("x"), "c-1")).await;
    assert_unknown_user(&v);
    // Online on room A (index 0): known through the registers.
    let mut b = Client::connect_addr(c.ws(0), Transport::WsJson).await;
    b.auth(&token("kc-ben"), None, None).await;
    common::eventually("kc-ben online", Duration::from_secs(10), || async {
        let (_, v) = c.api(0, "GET", "/users/kc-ben", None).await;
        v["online"] == true
    })
    .await;
    let ok = ask(&mut sender, &send(2, "kc-ben", json!("hi"), "c-2")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    assert_eq!(b.next_msg().await["id"], ok["id"]);
    // Offline: known through the record room A wrote through the saver.
    wait_recorded(&http, c.rooms[0].addr("http listening on "), 1.0).await;
    drop(b);
    common::eventually("kc-ben offline", Duration::from_secs(10), || async {
        let (_, v) = c.api(0, "GET", "/users/kc-ben", None).await;
        v["online"] == false
    })
    .await;
    let ok = ask(&mut sender, &send(3, "kc-ben", json!("later"), "c-3")).await;
    assert_eq!(ok["op"], "send_ok", "{ok}");
    let v = ask(&mut sender, &send(4, "kc-nobody", json!("x"), "c-4")).await;
    assert_unknown_user(&v);
    let (_, v) = c.api(0, "GET", "/users/kc-nobody/messages", None).await;
    assert_eq!(v["messages"], json!([]), "{v}");
}
