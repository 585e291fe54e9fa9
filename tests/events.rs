//! Session events (`--events-url`) against a real HTTP receiver on
//! 127.0.0.1: connect, sub, ack, unsub and disconnect of a connection in
//! order with their fields and the hook secret; a receiver that fails
//! gets the same events again (at least once); a receiver that hangs
//! fills the bounded queue, the excess is dropped and counted, and pushes
//! are delivered all the while.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::{eventually, uniq, Server, Transport};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// What the receiver saw, and how it answers.
#[derive(Default)]
struct Receiver {
    /// Every event of every request (answered 2xx or not), with the
    /// request's Authorization header.
    seen: Mutex<Vec<(Option<String>, Value)>>,
    /// Requests answered 503 before the receiver takes any.
    fail_first: AtomicUsize,
    /// Requests failed so far.
    failed: AtomicUsize,
    /// Hold every request for 30 s (longer than pushgate waits).
    hang: AtomicBool,
}

async fn take(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    if r.hang.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let events = body["events"].as_array().cloned().unwrap_or_default();
    assert!(!events.is_empty() && events.len() <= 1000, "{body}");
    if r.failed.load(Ordering::Relaxed) < r.fail_first.load(Ordering::Relaxed) {
        r.failed.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let mut seen = r.seen.lock();
    for e in events {
        seen.push((auth.clone(), e));
    }
    StatusCode::NO_CONTENT
}

/// Starts the receiver; returns its URL.
async fn receiver(r: Arc<Receiver>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new().route("/events", post(take)).with_state(r);
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/events")
}

/// The events of `user` taken so far.
fn of(r: &Receiver, user: &str) -> Vec<(Option<String>, Value)> {
    r.seen
        .lock()
        .iter()
        .filter(|(_, e)| e["user"] == user)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_session_reports_connect_sub_ack_unsub_disconnect_in_order() {
    let r = Arc::new(Receiver::default());
    // The first two requests fail: the events come again (at least once).
    r.fail_first.store(2, Ordering::Relaxed);
    let url = receiver(r.clone()).await;
    let s = Server::start(&["--events-url", &url, "--hook-secret", "hook-s3cret-0123"]).await;
    let user = uniq("ev");
    let mut c = s.connect(Transport::WsJson).await;
    let ok = c
        .auth(&s.token_channels(&user, &["news"]), None, Some("phone"))
        .await;
    c.sub("news").await;
    let id = s.push_id(&[&user], json!("receipt me")).await;
    assert_eq!(c.next_msg().await["id"], id);
    c.ack(id).await;
    c.send(&proto::ClientFrame::Unsub {
        seq: Some(8),
        channel: "news".into(),
    })
    .await;
    assert_eq!(c.next().await["op"], "unsub_ok");
    c.close().await;

    eventually(
        "five events of the session",
        Duration::from_secs(15),
        || {
            let r = r.clone();
            let user = user.clone();
            async move { of(&r, &user).len() >= 5 }
        },
    )
    .await;
    let got = of(&r, &user);
    let kinds: Vec<&str> = got
        .iter()
        .map(|(_, e)| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["connect", "sub", "ack", "unsub", "disconnect"],
        "{got:?}"
    );
    for (auth, e) in &got {
        assert_eq!(auth.as_deref(), Some("Bearer hook-s3cret-0123"));
        assert_eq!(e["conn"], ok["conn"], "{e}");
        assert_eq!(e["room"], ok["room"], "{e}");
        assert_eq!(e["device"], "phone", "{e}");
        assert!(e["ts"].as_i64().unwrap() > 1_700_000_000_000, "{e}");
    }
    assert_eq!(got[1].1["channel"], "news");
    assert_eq!(got[2].1["id"], id);
    assert!(got[2].1.get("channel").is_none(), "{:?}", got[2]);
    assert_eq!(got[3].1["channel"], "news");
    assert!(got[0].1.get("id").is_none() && got[0].1.get("channel").is_none());
    let (_, metrics) = s.raw("GET", "/metrics", None, None, None).await;
    assert!(
        metrics.contains("pushgate_events_post_failures_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_hung_receiver_costs_dropped_events_never_deliveries() {
    let r = Arc::new(Receiver::default());
    r.hang.store(true, Ordering::Relaxed);
    let url = receiver(r.clone()).await;
    let s = Server::start(&["--events-url", &url, "--events-queue", "4"]).await;
    // One event opens a batch; after its 1 s linger, the request hangs.
    let (first, _) = s.login(Transport::Tcp, "hang-first", "d").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 20 connects and disconnects: 40 events for a queue of 4 behind it.
    for i in 0..20 {
        let (c, _) = s.login(Transport::Tcp, &format!("hang-{i}"), "d").await;
        c.close().await;
    }
    drop(first);
    let user = uniq("still");
    let (mut c, _) = s.login(Transport::WsBin, &user, "d").await;
    let started = tokio::time::Instant::now();
    let id = s.push_id(&[&user], json!("delivered anyway")).await;
    assert_eq!(c.next_msg().await["id"], id);
    assert!(started.elapsed() < Duration::from_secs(2));
    eventually(
        "events dropped and counted",
        Duration::from_secs(10),
        || {
            let s = &s;
            async move {
                let (_, m) = s.raw("GET", "/metrics", None, None, None).await;
                m.lines()
                    .find_map(|l| l.strip_prefix("pushgate_events_dropped_total "))
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|n| n >= 20)
            }
        },
    )
    .await;
}

/// A cluster room posts the events of the sessions it holds, with its id.
#[tokio::test]
async fn a_cluster_room_posts_its_sessions_events() {
    let r = Arc::new(Receiver::default());
    let url = receiver(r.clone()).await;
    let mut cl = common::cluster::Cluster::start(1, 1).await;
    let mut args = cl.room_args(7);
    args.extend(["--events-url".to_owned(), url]);
    cl.rooms
        .push(common::cluster::Node::start("room-7", args).await);
    cl.wait_rooms(2).await;
    let mut c = cl.login(1, "cl-ev", None).await;
    let id = cl.push(0, &["cl-ev"], json!("via the center")).await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(c.next_msg().await["id"], id);
    c.ack(id).await;
    c.close().await;
    eventually("the cluster room's events", Duration::from_secs(15), || {
        let r = r.clone();
        async move { of(&r, "cl-ev").len() >= 3 }
    })
    .await;
    let got = of(&r, "cl-ev");
    let kinds: Vec<&str> = got
        .iter()
        .map(|(_, e)| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["connect", "ack", "disconnect"], "{got:?}");
    assert!(
        got.iter()
            .all(|(auth, e)| auth.is_none() && e["room"] == "7"),
        "{got:?}"
    );
    assert_eq!(got[1].1["id"], id);
}

/// A connection refused after auth (the user's connection limit) reports
/// nothing: no disconnect without a connect.
#[tokio::test]
async fn a_connection_refused_at_registration_reports_nothing() {
    let r = Arc::new(Receiver::default());
    let url = receiver(r.clone()).await;
    let s = Server::start(&["--events-url", &url, "--max-user-connections", "1"]).await;
    let (first, ok) = s.login(Transport::Tcp, "ev-limit", "d").await;
    let mut second = s.connect(Transport::WsJson).await;
    second
        .send(&proto::ClientFrame::Auth {
            seq: Some(1),
            token: s.token("ev-limit"),
            last_id: None,
            device: None,
        })
        .await;
    second.expect_close(4001, Duration::from_secs(5)).await;
    first.close().await;
    eventually(
        "the first connection's two events",
        Duration::from_secs(15),
        || {
            let r = r.clone();
            async move { of(&r, "ev-limit").len() >= 2 }
        },
    )
    .await;
    // Another second for a stray event to arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = of(&r, "ev-limit");
    let kinds: Vec<&str> = got
        .iter()
        .map(|(_, e)| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["connect", "disconnect"], "{got:?}");
    assert!(got.iter().all(|(_, e)| e["conn"] == ok["conn"]), "{got:?}");
}
