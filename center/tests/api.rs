//! End-to-end tests of the REST API through `Center::router()`.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use center::CenterConfig;
use common::*;
use proto::{MsgId, RoomId, UserId};
use register::Directory;
use saver::Store;
use serde_json::{json, Value};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn push_users_stores_and_delivers() {
    let h = harness().await;
    h.connect("alice", 1, 1).await;
    h.connect("alice", 1, 2).await;
    h.connect("alice", 2, 3).await;
    h.connect("bob", 2, 4).await;
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["alice","bob","carol","alice"],"data":{"text":"hi","n":[1,2]}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = v["id"].as_i64().unwrap();
    assert!(id > 0);
    assert_eq!(v["delivered"], 4, "{v}");
    assert_eq!(v["stored"], 3, "duplicates count once: {v}");
    for u in ["alice", "bob", "carol"] {
        let m = h.stored(u).await;
        assert_eq!(m.len(), 1, "{u}");
        assert_eq!(m[0].id, MsgId(id));
        let data: Value = serde_json::from_slice(&m[0].data).unwrap();
        assert_eq!(data, json!({"text":"hi","n":[1,2]}));
        // Default ttl: one day.
        assert_eq!(m[0].expires_at - m[0].ts, 86_400_000);
    }
    let mut calls = h.rooms.calls();
    calls.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        calls,
        vec![
            Call::Users {
                room: 1,
                users: vec!["alice".into()],
                id
            },
            Call::Users {
                room: 2,
                users: vec!["alice".into(), "bob".into()],
                id
            },
        ]
    );
}

#[tokio::test]
async fn push_users_without_store_and_with_ttl() {
    let h = harness().await;
    h.connect("alice", 1, 1).await;
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["alice","bob"],"data":"x","store":false}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stored"], 0);
    assert_eq!(v["delivered"], 1);
    assert!(h.stored("alice").await.is_empty());
    assert!(h.stored("bob").await.is_empty());

    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["bob"],"data":null,"ttl":60}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stored"], 1);
    assert_eq!(v["delivered"], 0);
    let m = h.stored("bob").await;
    assert_eq!(m[0].expires_at - m[0].ts, 60_000);
    assert_eq!(&m[0].data[..], b"null");
}

#[tokio::test]
async fn ids_increase_across_pushes() {
    let h = harness().await;
    let mut last = 0;
    for _ in 0..5 {
        let (_, v) = h
            .call(
                "POST",
                "/api/v1/push/users",
                Some(r#"{"users":["u"],"data":1}"#),
            )
            .await;
        let id = v["id"].as_i64().unwrap();
        assert!(id > last);
        last = id;
    }
}

#[tokio::test]
async fn concurrent_pushes_to_one_user_arrive_in_id_order() {
    let h = harness().await;
    h.connect("alice", 1, 1).await;
    h.connect("alice", 2, 2).await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let app = h.app.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!(
                r#"{{"users":["alice","u{i}"],"data":{i},"store":{}}}"#,
                i % 3 != 0
            );
            send(
                &app,
                req(
                    "POST",
                    "/api/v1/push/users",
                    Some(&body),
                    Some(KEY),
                    Some("application/json"),
                ),
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["delivered"], 2);
        ids.push(v["id"].as_i64().unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 300, "ids are unique");
    for room in [1, 2] {
        let seen: Vec<i64> = h
            .rooms
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Users { room: r, users, id }
                    if r == room && users.contains(&"alice".to_owned()) =>
                {
                    Some(id)
                }
                _ => None,
            })
            .collect();
        assert_eq!(seen.len(), 300);
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "room {room} saw ids out of order: {seen:?}"
        );
    }
    // The queue holds the stored ones, in id order.
    let stored: Vec<i64> = h.stored("alice").await.iter().map(|m| m.id.0).collect();
    assert_eq!(stored.len(), 200);
    assert!(stored.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn store_failure_is_503_and_not_delivered() {
    let h = harness().await;
    h.connect("fail-1", 1, 1).await;
    h.connect("ok", 1, 2).await;
    h.store.fail_prefix.store(true, Ordering::SeqCst);
    let (a, b) = tokio::join!(
        h.call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["fail-1"],"data":1}"#)
        ),
        h.call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["ok"],"data":2}"#)
        ),
    );
    assert_eq!(a.0, StatusCode::SERVICE_UNAVAILABLE, "{}", a.1);
    assert_eq!(code(&a.1), "store_unavailable");
    assert_eq!(b.0, StatusCode::OK, "{}", b.1);
    let calls = h.rooms.calls();
    assert!(
        calls.iter().all(
            |c| !matches!(c, Call::Users { users, .. } if users.contains(&"fail-1".to_owned()))
        ),
        "{calls:?}"
    );
    assert_eq!(calls.len(), 1);
    // Not stored: a push that is not acknowledged leaves nothing behind.
    assert!(h.stored("fail-1").await.is_empty());
    // store=false does not touch the store, so it succeeds.
    let (s, _) = h
        .call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["fail-1"],"data":1,"store":false}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn push_channel_with_and_without_history() {
    let h = harness().await;
    h.connect("a", 1, 1).await;
    h.connect("b", 2, 2).await;
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/channel",
            Some(r#"{"channel":"news","data":{"t":1}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id1 = v["id"].as_i64().unwrap();
    assert_eq!(v["delivered"], 2);
    assert!(h
        .store
        .read_channel("news", MsgId(0), now_ms(), 100)
        .await
        .unwrap()
        .is_empty());
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/channel",
            Some(r#"{"channel":"news","data":{"t":2},"history":true}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id2 = v["id"].as_i64().unwrap();
    assert!(id2 > id1);
    let hist = h
        .store
        .read_channel("news", MsgId(0), now_ms(), 100)
        .await
        .unwrap();
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].id, MsgId(id2));
    assert_eq!(hist[0].expires_at - hist[0].ts, 3_600_000);
    let mut calls = h.rooms.calls();
    calls.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        calls,
        vec![
            Call::Channel {
                room: 1,
                channel: "news".into(),
                id: id1
            },
            Call::Channel {
                room: 1,
                channel: "news".into(),
                id: id2
            },
            Call::Channel {
                room: 2,
                channel: "news".into(),
                id: id1
            },
            Call::Channel {
                room: 2,
                channel: "news".into(),
                id: id2
            },
        ]
    );
}

#[tokio::test]
async fn broadcast_runs_as_a_task_with_progress_and_a_failing_room() {
    let h = harness().await;
    h.connect("a", 1, 1).await;
    h.connect("b", 1, 2).await;
    h.connect("c", 2, 3).await;
    h.connect("d", 3, 4).await;
    h.rooms.failing.lock().insert(3);
    h.rooms.gated.store(true, Ordering::SeqCst);
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/broadcast",
            Some(r#"{"data":{"all":true}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_i64().unwrap();
    let task = v["task"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tasks/{task}");
    // Room 1 is not gated: wait until it is done while 2 and 3 wait.
    let mut view = Value::Null;
    for _ in 0..500 {
        let (s, v) = h.call("GET", &path, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        view = v;
        if view["rooms_done"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(view["kind"], "broadcast");
    assert_eq!(view["task"], task.as_str());
    assert_eq!(view["rooms_total"], 3);
    assert_eq!(view["rooms_done"], 1);
    assert_eq!(view["delivered"], 1);
    assert_eq!(view["skipped"], 1);
    h.rooms.gate.add_permits(2);
    for _ in 0..500 {
        let (_, v) = h.call("GET", &path, None).await;
        view = v;
        if view["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(view["state"], "done", "{view}");
    assert_eq!(view["rooms_done"], 3);
    assert_eq!(view["rooms_failed"], 1);
    // Room 1's two connections: one written, one skipped (the double's
    // slow consumer); room 2's one written.
    assert_eq!(view["delivered"], 2);
    assert_eq!(view["skipped"], 1);
    assert_eq!(view["pending"], 0);
    assert!(view["queued_ms"].is_u64(), "{view}");
    assert!(view["duration_ms"].is_u64(), "{view}");
    assert_eq!(
        view["rooms"],
        json!([
            {"room": 1, "state": "done", "delivered": 1, "skipped": 1, "pending": 0},
            {"room": 2, "state": "done", "delivered": 1, "skipped": 0, "pending": 0},
            {"room": 3, "state": "failed", "delivered": 0, "skipped": 0, "pending": 0},
        ]),
        "{view}"
    );
    let mut b: Vec<(u32, i64)> = h
        .rooms
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Broadcast { room, id } => Some((room, id)),
            _ => None,
        })
        .collect();
    b.sort_unstable();
    assert_eq!(b, vec![(1, id), (2, id)]);
    // Broadcasts are not stored per user.
    assert!(h.stored("a").await.is_empty());
}

#[tokio::test]
async fn unknown_task_is_404() {
    let h = harness().await;
    let (s, v) = h.call("GET", "/api/v1/tasks/b-999", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(code(&v), "not_found");
}

#[tokio::test]
async fn user_view_and_kick() {
    let h = harness().await;
    h.connect("alice", 1, 1).await;
    h.connect("alice", 2, 7).await;
    let (s, v) = h.call("GET", "/api/v1/users/alice", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["online"], true);
    let conns = v["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    let c0 = conns.iter().find(|c| c["room"] == "1").unwrap();
    assert_eq!(c0["conn"], proto::ConnId::new(RoomId(1), 1).to_string());
    assert_eq!(c0["device"], "dev1");
    assert!(c0["since"].as_i64().unwrap() > 0);
    assert!(v["online_ms"].as_u64().unwrap() >= 2000, "{v}");

    let (s, v) = h.call("GET", "/api/v1/users/nobody", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"user":"nobody","online":false,"connections":[],"online_ms":0})
    );

    let (s, v) = h
        .call("DELETE", "/api/v1/users/alice/connections", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"kicked": 2}));
    let mut calls = h.rooms.calls();
    calls.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        calls,
        vec![
            Call::Kick {
                room: 1,
                user: "alice".into()
            },
            Call::Kick {
                room: 2,
                user: "alice".into()
            },
        ]
    );
    let (s, v) = h
        .call("DELETE", "/api/v1/users/nobody/connections", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"kicked": 0}));
    // A room that cannot be reached: 503, not a silent success.
    h.rooms.failing.lock().insert(2);
    let (s, v) = h
        .call("DELETE", "/api/v1/users/alice/connections", None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&v), "unavailable");
}

#[tokio::test]
async fn users_online_in_bulk() {
    let h = harness().await;
    h.connect("alice", 1, 1).await;
    h.connect("online", 2, 3).await;
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/users/online",
            Some(r#"{"users":["alice","bob","alice","online"]}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"online": {"alice": true, "bob": false, "online": true}})
    );
    // 10,000 users in one call; one more is refused.
    let mut users: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
    users[9_999] = "alice".into();
    let body = json!({ "users": users }).to_string();
    let (s, v) = h.call("POST", "/api/v1/users/online", Some(&body)).await;
    assert_eq!(s, StatusCode::OK);
    let online = v["online"].as_object().unwrap();
    assert_eq!(online.len(), 10_000);
    assert_eq!(online.values().filter(|b| b == &&json!(true)).count(), 1);
    users.push("one-more".into());
    let body = json!({ "users": users }).to_string();
    let (s, v) = h.call("POST", "/api/v1/users/online", Some(&body)).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "too_many_users"));
    for bad in [r#"{"users":[""]}"#, r#"{"users":"alice"}"#, r#"["alice"]"#] {
        let (s, _) = h.call("POST", "/api/v1/users/online", Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
    // The user named `online` can still be looked up by GET.
    let (s, v) = h.call("GET", "/api/v1/users/online", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["user"].as_str(), v["online"].as_bool()),
        (Some("online"), Some(true))
    );
}

#[tokio::test]
async fn user_messages_are_paged_by_id() {
    let h = harness().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let body = format!(r#"{{"users":["carol"],"data":{{"n":{n}}}}}"#);
        let (s, v) = h.call("POST", "/api/v1/push/users", Some(&body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        ids.push(v["id"].as_i64().unwrap());
    }
    let (s, v) = h
        .call("GET", "/api/v1/users/carol/messages?limit=2", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"], "carol");
    let page: Vec<i64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page, ids[..2]);
    assert_eq!(v["messages"][1]["data"], json!({"n": 1}));
    assert!(v["messages"][0]["ts"].as_i64().unwrap() > 0);
    assert_eq!(v["next_after"], ids[1]);
    let (_, v) = h
        .call(
            "GET",
            &format!("/api/v1/users/carol/messages?after={}&limit=3", ids[1]),
            None,
        )
        .await;
    let page: Vec<i64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page, ids[2..]);
    assert_eq!(v["next_after"], Value::Null, "the last page: {v}");
    let (s, v) = h.call("GET", "/api/v1/users/nobody/messages", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"user": "nobody", "messages": [], "next_after": null})
    );
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?after=-1",
        "?after=x",
        "?page=2",
    ] {
        let (s, v) = h
            .call("GET", &format!("/api/v1/users/carol/messages{bad}"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(code(&v), "invalid_request", "{bad}: {v}");
    }
    // Reading changes nothing.
    assert_eq!(h.stored("carol").await.len(), 5);
}

#[tokio::test]
async fn stats() {
    let h = harness().await;
    let (s, v) = h.call("GET", "/api/v1/stats", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"connections":0,"users":0,"rooms":[]}));
    h.connect("a", 1, 1).await;
    h.connect("a", 2, 2).await;
    h.connect("b", 2, 3).await;
    let (_, v) = h.call("GET", "/api/v1/stats", None).await;
    assert_eq!(
        v,
        json!({"connections":3,"users":2,"rooms":[{"room":"1","connections":1},{"room":"2","connections":2}]})
    );
}

#[tokio::test]
async fn auth_is_required_under_the_base_only() {
    let h = harness().await;
    let routes = [
        (
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["a"],"data":1}"#),
        ),
        (
            "POST",
            "/api/v1/push/channel",
            Some(r#"{"channel":"c","data":1}"#),
        ),
        ("POST", "/api/v1/push/broadcast", Some(r#"{"data":1}"#)),
        ("GET", "/api/v1/tasks/x", None),
        ("GET", "/api/v1/users/a", None),
        ("DELETE", "/api/v1/users/a/connections", None),
        ("POST", "/api/v1/users/online", Some(r#"{"users":["a"]}"#)),
        ("GET", "/api/v1/users/a/messages", None),
        ("GET", "/api/v1/stats", None),
        ("GET", "/api/v1/openapi.json", None),
    ];
    for (m, p, b) in routes {
        for key in [
            None,
            Some("wrong"),
            Some("test-key-12"),
            Some("test-key-1234"),
        ] {
            let (s, v) = send(&h.app, req(m, p, b, key, Some("application/json"))).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p} {key:?}");
            assert_eq!(code(&v), "unauthorized");
        }
    }
    // Basic or a bare key is not a bearer token.
    let mut r = req("GET", "/api/v1/stats", None, None, None);
    r.headers_mut()
        .insert("authorization", KEY.parse().unwrap());
    assert_eq!(send(&h.app, r).await.0, StatusCode::UNAUTHORIZED);
    // Nothing happened.
    assert!(h.rooms.calls().is_empty());
    assert!(h.stored("a").await.is_empty());
    let (s, _) = send(&h.app, req("GET", "/api/v1/stats", None, Some(KEY), None)).await;
    assert_eq!(s, StatusCode::OK);
    for p in ["/healthz", "/metrics"] {
        assert_eq!(
            send(&h.app, req("GET", p, None, None, None)).await.0,
            StatusCode::OK,
            "{p}"
        );
    }
}

#[tokio::test]
async fn bad_input_is_4xx_and_changes_nothing() {
    let cfg = CenterConfig {
        max_users: 3,
        max_body: 4096,
        ..CenterConfig::default()
    };
    let h = harness_with(cfg).await;
    h.connect("a", 1, 1).await;
    let long_user = "u".repeat(257);
    let long_channel = "c".repeat(129);
    let big = format!(r#"{{"users":["a"],"data":"{}"}}"#, "x".repeat(5000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/api/v1/push/users", "not json".into(), 400, "bad_json"),
        (
            "/api/v1/push/users",
            r#"{"users":["a"],"data":1"#.into(),
            400,
            "bad_json",
        ),
        ("/api/v1/push/users", "".into(), 400, "bad_json"),
        (
            "/api/v1/push/users",
            r#"{"users":"a","data":1}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":[1],"data":1}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":["a"]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/users",
            r#"{"data":1}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":["a"],"data":1,"store":"yes"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":["a"],"data":1,"ttl":-1}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":["a"],"data":1,"stroe":false}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/users",
            r#"[1,2]"#.into(),
            400,
            "invalid_request",
        ),
        // Bodies are objects: a struct's fields given as an array (which
        // serde would take in order) are refused.
        (
            "/api/v1/push/users",
            r#"[["a"],1,true,60]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/channel",
            r#"["news",1,true]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/broadcast",
            r#"[null]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/broadcast",
            r#""data""#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":[],"data":1}"#.into(),
            400,
            "empty_users",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":["a","b","c","d"],"data":1}"#.into(),
            400,
            "too_many_users",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":["a",""],"data":1}"#.into(),
            400,
            "invalid_user",
        ),
        (
            "/api/v1/push/users",
            format!(r#"{{"users":["a","{long_user}"],"data":1}}"#),
            400,
            "invalid_user",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":["a"],"data":1,"ttl":0}"#.into(),
            400,
            "invalid_ttl",
        ),
        (
            "/api/v1/push/users",
            r#"{"users":["a"],"data":1,"ttl":2592001}"#.into(),
            400,
            "invalid_ttl",
        ),
        ("/api/v1/push/users", big.clone(), 413, "payload_too_large"),
        (
            "/api/v1/push/channel",
            r#"{"channel":"","data":1}"#.into(),
            400,
            "invalid_channel",
        ),
        (
            "/api/v1/push/channel",
            r#"{"channel":"a b","data":1}"#.into(),
            400,
            "invalid_channel",
        ),
        (
            "/api/v1/push/channel",
            r#"{"channel":"news*","data":1}"#.into(),
            400,
            "invalid_channel",
        ),
        (
            "/api/v1/push/channel",
            format!(r#"{{"channel":"{long_channel}","data":1}}"#),
            400,
            "invalid_channel",
        ),
        (
            "/api/v1/push/channel",
            r#"{"channel":"news"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/api/v1/push/channel",
            r#"{"channel":"news","data":1,"history":1}"#.into(),
            400,
            "invalid_request",
        ),
        ("/api/v1/push/channel", "{".into(), 400, "bad_json"),
        (
            "/api/v1/push/broadcast",
            r#"{}"#.into(),
            400,
            "invalid_request",
        ),
        ("/api/v1/push/broadcast", "nope".into(), 400, "bad_json"),
    ];
    for (path, body, status, want) in &cases {
        let (s, v) = h.call("POST", path, Some(body)).await;
        assert_eq!(s.as_u16(), *status, "{path} {body}: {v}");
        assert_eq!(code(&v), *want, "{path} {body}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // Wrong or missing content type: 415.
    for ct in [Some("text/plain"), None] {
        let (s, v) = send(
            &h.app,
            req(
                "POST",
                "/api/v1/push/users",
                Some(r#"{"users":["a"],"data":1}"#),
                Some(KEY),
                ct,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(code(&v), "unsupported_media_type");
    }
    // Bad user ids in paths.
    let (s, v) = h
        .call("GET", &format!("/api/v1/users/{long_user}"), None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_user"));
    let (s, v) = h
        .call(
            "DELETE",
            &format!("/api/v1/users/{long_user}/connections"),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_user"));
    // Nothing changed: no room was called, nothing stored, no task exists.
    assert!(h.rooms.calls().is_empty(), "{:?}", h.rooms.calls());
    for u in ["a", "b", "c", "d", ""] {
        assert!(h.stored(u).await.is_empty());
    }
    assert!(h
        .store
        .read_channel("news", MsgId(0), now_ms(), 10)
        .await
        .unwrap()
        .is_empty());
    let (_, _, m) = text(&h.app, "/metrics").await;
    assert!(!m.contains("pushes_total{kind="), "no push counted:\n{m}");
    // The center still works after all of it.
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["a","b","c"],"data":1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(h.rooms.calls().len(), 1);
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json() {
    let h = harness().await;
    for p in ["/nope", "/api/v1/nope", "/api/v2/stats"] {
        let (s, v) = h.call("GET", p, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{p}");
        assert_eq!(code(&v), "not_found");
    }
    for (m, p) in [
        ("GET", "/api/v1/push/users"),
        ("PUT", "/api/v1/push/channel"),
        ("POST", "/api/v1/stats"),
        ("POST", "/healthz"),
    ] {
        let (s, v) = h.call(m, p, Some("{}")).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{m} {p}: {v}");
        assert_eq!(code(&v), "method_not_allowed");
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let h = harness().await;
    let (s, v) = send(&h.app, req("GET", "/healthz", None, None, None)).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status":"ok"})));
    let (s, _) = send(&h.app, req("GET", "/readyz", None, None, None)).await;
    assert_eq!(s, StatusCode::OK);
    h.center.set_ready(false);
    let (s, v) = send(&h.app, req("GET", "/readyz", None, None, None)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["status"], "not_ready");
    // Liveness does not depend on readiness.
    assert_eq!(
        send(&h.app, req("GET", "/healthz", None, None, None))
            .await
            .0,
        StatusCode::OK
    );
    h.center.set_ready(true);
    assert_eq!(
        send(&h.app, req("GET", "/readyz", None, None, None))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn metrics_count_pushes_and_include_sources() {
    let h = harness().await;
    h.connect("a", 1, 1).await;
    h.center.add_metrics_source(Arc::new(|out: &mut String| {
        out.push_str("# TYPE room_test gauge\nroom_test 7\n")
    }));
    h.call(
        "POST",
        "/api/v1/push/users",
        Some(r#"{"users":["a","b"],"data":1}"#),
    )
    .await;
    h.call(
        "POST",
        "/api/v1/push/channel",
        Some(r#"{"channel":"n","data":1}"#),
    )
    .await;
    h.call(
        "POST",
        "/api/v1/push/users",
        Some(r#"{"users":[],"data":1}"#),
    )
    .await;
    let (s, ct, m) = text(&h.app, "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("text/plain"), "{ct}");
    for want in [
        "pushgate_center_pushes_total{kind=\"users\"} 1",
        "pushgate_center_pushes_total{kind=\"channel\"} 1",
        "pushgate_center_deliveries_total 2",
        "pushgate_center_stored_total 2",
        "pushgate_center_push_latency_seconds_count 2",
        "pushgate_center_store_latency_seconds_count 1",
        "pushgate_center_dispatch_batch_size_count",
        "pushgate_center_dispatch_queue_depth 0",
        "pushgate_center_directory_connections 1",
        "pushgate_center_directory_users 1",
        "pushgate_center_http_requests_total{method=\"POST\",route=\"/api/v1/push/users\",status=\"200\"} 1",
        "pushgate_center_http_requests_total{method=\"POST\",route=\"/api/v1/push/users\",status=\"400\"} 1",
        "room_test 7",
    ] {
        assert!(m.contains(want), "missing {want:?} in:\n{m}");
    }
    assert!(!m.contains("# EOF"));
}

#[tokio::test]
async fn openapi_document_lists_every_endpoint() {
    let h = harness().await;
    let (s, v) = h.call("GET", "/api/v1/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    let paths = v["paths"].as_object().unwrap();
    for p in [
        "/api/v1/push/users",
        "/api/v1/push/channel",
        "/api/v1/push/broadcast",
        "/api/v1/tasks/{task}",
        "/api/v1/users/{user}",
        "/api/v1/users/{user}/connections",
        "/api/v1/users/online",
        "/api/v1/users/{user}/messages",
        "/api/v1/stats",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p}");
    }
    assert!(v["components"]["schemas"]["PushUsersReq"].is_object());
    assert!(v["components"]["securitySchemes"]["api_key"].is_object());
    // Every status the API returns is documented: 401 wherever the key is
    // needed, 400/413/415 wherever a body is read.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let has = |code: &str| responses.contains_key(code);
            if path.starts_with("/api/v1/") {
                assert!(has("401"), "{method} {path}: no 401 in {responses:?}");
            }
            if method == "post" {
                for code in ["400", "413", "415"] {
                    assert!(has(code), "{method} {path}: no {code}");
                }
                let body = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
                let name = body.as_str().unwrap().rsplit('/').next().unwrap();
                assert_eq!(
                    v["components"]["schemas"][name]["type"], "object",
                    "{path}: request bodies are objects"
                );
            }
        }
    }
}

#[tokio::test]
async fn full_queue_is_429_overloaded_with_retry_after() {
    let h = harness().await;
    h.store.gated.store(true, Ordering::SeqCst);
    let n = center::QUEUE_CAPACITY + center::dispatch::MAX_BATCH + 200;
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let app = h.app.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"users":["u{i}"],"data":1}}"#);
            send(
                &app,
                req(
                    "POST",
                    "/api/v1/push/users",
                    Some(&body),
                    Some(KEY),
                    Some("application/json"),
                ),
            )
            .await
        }));
    }
    // Let every request reach the queue, then let the store go.
    let mut overloaded = 0;
    let mut ok = 0;
    let mut release = Some(());
    for (i, t) in tasks.into_iter().enumerate() {
        if i == 0 {
            // Wait until the queue is full before releasing the store.
            for _ in 0..2000 {
                let (_, _, m) = text(&h.app, "/metrics").await;
                if m.contains(&format!("dispatch_queue_depth {}", center::QUEUE_CAPACITY)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if release.take().is_some() {
            h.store.gate.add_permits(1_000_000);
        }
        let (s, v) = t.await.unwrap();
        match s {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(code(&v), "overloaded");
                overloaded += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(overloaded >= 200, "overloaded={overloaded}");
    assert!(ok >= center::QUEUE_CAPACITY, "ok={ok}");
}

#[tokio::test]
async fn hung_request_times_out() {
    let cfg = CenterConfig {
        request_timeout: Duration::from_millis(200),
        ..CenterConfig::default()
    };
    let h = harness_with(cfg).await;
    h.store.gated.store(true, Ordering::SeqCst);
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["a"],"data":1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&v), "timeout");
    h.store.gate.add_permits(10);
}

/// A push that arrives behind a batch that has been stuck for over half
/// the request timeout is refused at once with 429 and `Retry-After`,
/// although nothing was measured before (the first batch after start is the
/// stuck one), instead of being queued into a 503 `timeout`.
#[tokio::test]
async fn a_push_behind_a_stuck_batch_is_shed_at_once() {
    use tower::ServiceExt;
    let cfg = CenterConfig {
        request_timeout: Duration::from_millis(600),
        ..CenterConfig::default()
    };
    let h = harness_with(cfg).await;
    h.store.gated.store(true, Ordering::SeqCst);
    let app = h.app.clone();
    let first = tokio::spawn(async move {
        let body = r#"{"users":["a"],"data":1}"#;
        let r = req(
            "POST",
            "/api/v1/push/users",
            Some(body),
            Some(KEY),
            Some("application/json"),
        );
        send(&app, r).await
    });
    // The first push's batch is in flight, held by the store.
    for _ in 0..2000 {
        if h.center_queue_len().await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = req(
        "POST",
        "/api/v1/push/users",
        Some(r#"{"users":["b"],"data":2}"#),
        Some(KEY),
        Some("application/json"),
    );
    let resp = h.app.clone().oneshot(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = resp.headers().get("retry-after").cloned();
    assert!(retry.is_some(), "no Retry-After");
    let (s, v) = first.await.unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(code(&v), "timeout");
    h.store.gate.add_permits(10);
    assert!(h.stored("b").await.is_empty(), "the shed push was stored");
}

#[tokio::test]
async fn shutdown_answers_queued_pushes_then_refuses() {
    let h = harness().await;
    h.connect("a", 1, 1).await;
    h.store.gated.store(true, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let app = h.app.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &app,
                req(
                    "POST",
                    "/api/v1/push/users",
                    Some(r#"{"users":["a"],"data":1}"#),
                    Some(KEY),
                    Some("application/json"),
                ),
            )
            .await
        }));
    }
    // Wait until every push is in the dispatcher (queued or in the batch).
    for _ in 0..2000 {
        if h.center_queue_len().await >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = h.center.clone();
    let stopping = tokio::spawn(async move { c.shutdown().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.store.gate.add_permits(1_000);
    stopping.await.unwrap();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    assert_eq!(h.stored("a").await.len(), 20);
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["a"],"data":1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&v), "shutting_down");
    assert_eq!(
        send(&h.app, req("GET", "/readyz", None, None, None))
            .await
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

trait QueueLen {
    async fn center_queue_len(&self) -> usize;
}

impl QueueLen for H {
    /// Pushes held by the dispatcher: queued plus the stalled batch.
    async fn center_queue_len(&self) -> usize {
        let (_, _, m) = text(&self.app, "/metrics").await;
        let depth = m
            .lines()
            .find_map(|l| l.strip_prefix("pushgate_center_dispatch_queue_depth "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let batch = m
            .lines()
            .find_map(|l| l.strip_prefix("pushgate_center_dispatch_batch_size_sum "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as usize;
        depth + batch
    }
}

#[tokio::test]
async fn directory_counts_are_per_user_connections() {
    // Sanity of the double used above: deliver counts equal the directory's.
    let h = harness().await;
    h.connect("x", 4, 1).await;
    assert_eq!(h.dir.lookup(&[UserId::new("x")]).await.unwrap()[0].len(), 1);
}

#[tokio::test]
async fn a_room_that_missed_stored_pushes_is_resynced_before_anything_newer() {
    let h = harness().await;
    h.connect("a", 1, 1).await;
    h.connect("b", 2, 2).await;
    h.rooms.failing.lock().insert(2);
    // Stored and acknowledged although room 2 could not be reached.
    let push = |user: &'static str| {
        let body = format!(r#"{{"users":["{user}"],"data":1}}"#);
        let h = &h;
        async move {
            let (s, v) = h.call("POST", "/api/v1/push/users", Some(&body)).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["id"].as_i64().unwrap()
        }
    };
    let missed1 = push("b").await;
    let missed2 = push("b").await;
    let _ = push("a").await;
    assert_eq!(h.stored("b").await.len(), 2);
    h.rooms.failing.lock().remove(&2);
    let next = push("b").await;
    // Room 2's calls: the resync (from before the first missed id, for
    // exactly the users that missed something) comes before the newer push.
    let room2: Vec<Call> = h
        .rooms
        .calls()
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                Call::Users { room: 2, .. } | Call::Resync { room: 2, .. }
            )
        })
        .collect();
    assert_eq!(
        room2,
        vec![
            Call::Resync {
                room: 2,
                users: Some(vec!["b".to_owned()]),
                after: missed1 - 1,
            },
            Call::Users {
                room: 2,
                users: vec!["b".to_owned()],
                id: next,
            },
        ],
        "missed {missed1} and {missed2}"
    );
    // Owed once: nothing more is sent for it.
    let again = push("b").await;
    let resyncs = h
        .rooms
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Resync { .. }))
        .count();
    assert_eq!(resyncs, 1, "after {again}");
}

#[tokio::test]
async fn an_owed_resync_is_retried_without_new_pushes() {
    let h = harness().await;
    h.connect("b", 2, 2).await;
    h.rooms.failing.lock().insert(2);
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/push/users",
            Some(r#"{"users":["b"],"data":1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    h.rooms.failing.lock().remove(&2);
    // No further push: the dispatcher retries on its own (every second).
    let mut seen = false;
    for _ in 0..60 {
        if h.rooms
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Resync { room: 2, .. }))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen,
        "the owed resync was never sent: {:?}",
        h.rooms.calls()
    );
}

#[tokio::test]
async fn channel_presence_merges_the_rooms_pages_in_user_order() {
    let h = harness().await;
    // Two live rooms; "s" is on both.
    h.connect("x1", 1, 1).await;
    h.connect("x2", 2, 1).await;
    {
        let mut m = h.rooms.members.lock();
        m.insert(
            1,
            [("a", 1), ("c", 2), ("s", 1)]
                .map(|(u, n)| (u.to_owned(), n))
                .into(),
        );
        m.insert(
            2,
            [("b", 1), ("d", 1), ("s", 2)]
                .map(|(u, n)| (u.to_owned(), n))
                .into(),
        );
    }
    let mut pages = Vec::new();
    let mut path = "/api/v1/channels/room:1/presence?limit=2".to_owned();
    loop {
        let (s, v) = h.call("GET", &path, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        pages.push(v["users"].clone());
        match v["next"].as_str() {
            Some(c) => path = format!("/api/v1/channels/room:1/presence?limit=2&cursor={c}"),
            None => break,
        }
    }
    let u = |user: &str, n: u32| json!({"user": user, "connections": n});
    assert_eq!(
        pages,
        [
            json!([u("a", 1), u("b", 1)]),
            json!([u("c", 2), u("d", 1)]),
            json!([u("s", 3)])
        ]
    );
    // A room that cannot answer makes the page unavailable, not short.
    h.rooms.failing.lock().insert(2);
    let (s, v) = h
        .call("GET", "/api/v1/channels/room:1/presence", None)
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{v}"
    );
}

#[tokio::test]
async fn presence_changes_reach_every_room_but_their_own() {
    let h = harness().await;
    for room in 1..=3 {
        h.connect(&format!("x{room}"), room, 1).await;
    }
    let change = proto::PresenceChange {
        channel: "room:1".into(),
        user: UserId::new("amy"),
        device: "phone".into(),
    };
    let written = center::presence::relay(
        &*h.dir,
        &*h.rooms,
        RoomId(2),
        &[(true, change.clone()), (false, change)],
    )
    .await;
    assert_eq!(written, 4);
    let mut got = h.rooms.presence.lock().clone();
    got.sort();
    let amy = || "amy".to_owned();
    assert_eq!(
        got,
        [
            (1, false, amy()),
            (1, true, amy()),
            (3, false, amy()),
            (3, true, amy())
        ]
    );
}

#[tokio::test]
async fn broadcasts_wait_their_turn_and_a_full_lane_is_429() {
    use idgen::IdGen;
    use tower::ServiceExt;
    let cfg = CenterConfig {
        broadcast_queue: 1,
        broadcasts_at_once: 1,
        ..CenterConfig::default()
    };
    let h = harness_with(cfg).await;
    h.connect("a", 2, 1).await;
    // Room 2's fan-out waits for the gate: the first broadcast holds the
    // one slot, the second waits in the lane, the third finds it full.
    h.rooms.gated.store(true, Ordering::SeqCst);
    let body = Some(r#"{"data":1}"#);
    let (s1, v1) = h.call("POST", "/api/v1/push/broadcast", body).await;
    assert_eq!(s1, StatusCode::ACCEPTED, "{v1}");
    let first = format!("/api/v1/tasks/{}", v1["task"].as_str().unwrap());
    let mut view = Value::Null;
    for _ in 0..500 {
        view = h.call("GET", &first, None).await.1;
        if view["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(view["state"], "running", "{view}");
    let (s2, v2) = h.call("POST", "/api/v1/push/broadcast", body).await;
    assert_eq!(s2, StatusCode::ACCEPTED, "{v2}");
    let second = format!("/api/v1/tasks/{}", v2["task"].as_str().unwrap());
    let ids_before = h.ids.next_ids(1).await.unwrap();
    let r = send(
        &h.app,
        req(
            "POST",
            "/api/v1/push/broadcast",
            body,
            Some(KEY),
            Some("application/json"),
        ),
    );
    let (s3, v3) = r.await;
    assert_eq!(s3, StatusCode::TOO_MANY_REQUESTS, "{v3}");
    assert_eq!(code(&v3), "overloaded");
    let resp = h
        .app
        .clone()
        .oneshot(req(
            "POST",
            "/api/v1/push/broadcast",
            body,
            Some(KEY),
            Some("application/json"),
        ))
        .await
        .unwrap();
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    // A refused broadcast took no id.
    let ids_after = h.ids.next_ids(1).await.unwrap();
    assert_eq!(ids_after, idgen::nth_id(ids_before, 1));
    let v = h.call("GET", &second, None).await.1;
    assert_eq!(v["state"], "queued", "{v}");
    assert!(v["queued_ms"].is_null(), "{v}");
    let m = text(&h.app, "/metrics").await.2;
    assert!(m.contains("pushgate_center_broadcast_waiting 1"), "{m}");
    assert!(
        m.contains(r#"pushgate_center_shed_total{kind="broadcast"} 2"#),
        "{m}"
    );
    // Let both through: they finish in order.
    h.rooms.gate.add_permits(2);
    for path in [&first, &second] {
        for _ in 0..1000 {
            view = h.call("GET", path, None).await.1;
            if view["state"] == "done" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(view["state"], "done", "{view}");
        assert_eq!(view["delivered"], 1, "{view}");
        assert_eq!(view["pending"], 0, "{view}");
    }
    assert!(view["queued_ms"].as_u64().unwrap() > 0, "{view}");
}
