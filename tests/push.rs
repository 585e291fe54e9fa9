//! The REST push API end to end: users (all devices), multicast, channels,
//! broadcast tasks, user lookup, kick and stats.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ids, Server, Transport};
use serde_json::{json, Value};

/// A push to a user reaches every connection of that user (3 devices, 3 transports).
#[tokio::test]
async fn push_reaches_every_device_of_the_user() {
    let s = Server::start(&[]).await;
    let (mut a, _) = s.login(Transport::WsJson, "u1", "phone").await;
    let (mut b, _) = s.login(Transport::WsBin, "u1", "tablet").await;
    let (mut c, _) = s.login(Transport::Tcp, "u1", "laptop").await;
    let (mut other, _) = s.login(Transport::WsJson, "u2", "phone").await;

    let r = s.push_users(&["u1"], json!({"hello": "all"})).await;
    assert_eq!(
        r["delivered"], 3,
        "delivered must count the 3 connections of u1: {r}"
    );
    assert_eq!(r["stored"], 1, "stored must count 1 user queued: {r}");
    let id = r["id"].as_i64().expect("push answer id");
    for (name, cl) in [("ws json", &mut a), ("ws bin", &mut b), ("tcp", &mut c)] {
        let m = cl.next_msg().await;
        assert_eq!(m["id"], id, "{name}: {m}");
        assert_eq!(m["data"], json!({"hello": "all"}), "{name}: {m}");
        assert!(
            m.get("channel").is_none() || m["channel"].is_null(),
            "{name}: user msg carries a channel: {m}"
        );
    }
    other.assert_quiet(Duration::from_millis(200)).await;
}

/// Same device twice (two connections) also both receive.
#[tokio::test]
async fn push_reaches_two_connections_of_the_same_device() {
    let s = Server::start(&[]).await;
    let (mut a, _) = s.login(Transport::WsJson, "twin", "d").await;
    let (mut b, _) = s.login(Transport::Tcp, "twin", "d").await;
    let r = s.push_users(&["twin"], json!(1)).await;
    assert_eq!(r["delivered"], 2, "{r}");
    assert_eq!(a.next_msg().await["id"], r["id"]);
    assert_eq!(b.next_msg().await["id"], r["id"]);
}

/// A push to a list of users reaches those (online ones now, offline ones on connect) and nobody else.
#[tokio::test]
async fn multicast_to_a_list_of_users() {
    let s = Server::start(&[]).await;
    let (mut u1, _) = s.login(Transport::WsJson, "m1", "d").await;
    let (mut u2, _) = s.login(Transport::Tcp, "m2", "d").await;
    let (mut u3, _) = s.login(Transport::WsBin, "m3", "d").await;
    let r = s.push_users(&["m1", "m2", "m4"], json!("multi")).await;
    assert_eq!(r["delivered"], 2, "m1 and m2 are online: {r}");
    assert_eq!(r["stored"], 3, "all 3 listed users are queued: {r}");
    let id = r["id"].clone();
    assert_eq!(u1.next_msg().await["id"], id);
    assert_eq!(u2.next_msg().await["id"], id);
    u3.assert_quiet(Duration::from_millis(200)).await;
    // m4 was offline: gets it on connect.
    let (mut u4, _) = s.login(Transport::WsJson, "m4", "d").await;
    let m = u4.next_msg().await;
    assert_eq!(m["id"], id, "offline member of the multicast: {m}");
    assert_eq!(m["data"], "multi");
}

/// A channel push reaches subscribers only, on every transport.
#[tokio::test]
async fn channel_push_reaches_subscribers_only() {
    let s = Server::start(&[]).await;
    let mut subs = Vec::new();
    for t in common::TRANSPORTS {
        let mut c = s.connect(t).await;
        c.auth(
            &s.token_channels(&common::uniq("sub"), &["chat.*"]),
            None,
            None,
        )
        .await;
        c.sub("chat.room1").await;
        subs.push(c);
    }
    let mut elsewhere = s.connect(Transport::WsJson).await;
    elsewhere
        .auth(&s.token_channels("x", &["chat.*"]), None, None)
        .await;
    elsewhere.sub("chat.room2").await;
    let (mut nosub, _) = s.login(Transport::Tcp, "y", "d").await;

    let r = s.push_channel("chat.room1", json!({"t": "hi"})).await;
    assert_eq!(r["delivered"], 3, "3 subscribers: {r}");
    for c in subs.iter_mut() {
        let m = c.next_msg().await;
        assert_eq!(m["id"], r["id"], "{:?}: {m}", c.transport);
        assert_eq!(m["channel"], "chat.room1", "{:?}: {m}", c.transport);
        assert_eq!(m["data"], json!({"t": "hi"}));
    }
    elsewhere.assert_quiet(Duration::from_millis(150)).await;
    nosub.assert_quiet(Duration::from_millis(50)).await;
}

/// A broadcast is a task that reaches every live connection.
#[tokio::test]
async fn broadcast_reaches_everyone() {
    let s = Server::start(&[]).await;
    let mut clients = Vec::new();
    for (i, t) in common::TRANSPORTS.into_iter().enumerate() {
        let (c, _) = s.login(t, &format!("b{i}"), "d").await;
        clients.push(c);
    }
    // A connection that never authenticated is not a recipient.
    let _anon = s.connect(Transport::WsJson).await;
    let r = s
        .api_ok(
            "POST",
            "/push/broadcast",
            Some(json!({"data": {"b": true}})),
            202,
        )
        .await;
    let id = r["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("broadcast answer needs integer id: {r}"));
    let task = r["task"]
        .as_str()
        .unwrap_or_else(|| panic!("broadcast answer needs task string: {r}"));
    for c in clients.iter_mut() {
        let m = c.next_msg().await;
        assert_eq!(m["id"], id, "{:?}: {m}", c.transport);
        assert_eq!(m["data"], json!({"b": true}));
    }
    let t = s.wait_task(task).await;
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["kind"], "broadcast", "{t}");
    assert_eq!(t["task"], task, "{t}");
    assert_eq!(t["delivered"], 3, "3 authenticated connections: {t}");
    assert_eq!(t["skipped"], 0, "{t}");
    assert_eq!(t["pending"], 0, "{t}");
    assert!(t["rooms_total"].as_u64().unwrap_or(0) >= 1, "{t}");
    assert_eq!(t["rooms_done"], t["rooms_total"], "{t}");
    let rooms = t["rooms"].as_array().cloned().unwrap_or_default();
    let per_room: u64 = rooms.iter().filter_map(|r| r["delivered"].as_u64()).sum();
    assert_eq!(per_room, 3, "{t}");
    assert!(rooms.iter().all(|r| r["state"] == "done"), "{t}");
    // Broadcast is not stored per user: a new connection does not get it.
    let (mut late, _) = s.login(Transport::WsJson, "b0", "new-device").await;
    assert!(
        late.ping_sync(1).await.is_empty(),
        "broadcast must not be replayed"
    );
}

#[tokio::test]
async fn get_user_lists_connections() {
    let s = Server::start(&[]).await;
    let before = common::now_ms();
    let (a, ok_a) = s.login(Transport::WsJson, "gu", "phone").await;
    let (_b, ok_b) = s.login(Transport::Tcp, "gu", "laptop").await;
    // The directory is updated right after auth_ok: allow it a moment.
    common::eventually("gu has 2 connections", Duration::from_secs(2), || async {
        s.user("gu").await["connections"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let v = s.user("gu").await;
    assert_eq!(v["user"], "gu", "{v}");
    assert_eq!(v["online"], true, "{v}");
    let conns = v["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("connections must be a list: {v}"));
    assert_eq!(conns.len(), 2, "{v}");
    let devices: BTreeSet<&str> = conns.iter().filter_map(|c| c["device"].as_str()).collect();
    assert_eq!(devices, BTreeSet::from(["laptop", "phone"]), "{v}");
    let cids: BTreeSet<String> = conns
        .iter()
        .map(|c| c["conn"].to_string().trim_matches('"').to_string())
        .collect();
    let want: BTreeSet<String> = [&ok_a, &ok_b]
        .iter()
        .map(|o| o["conn"].to_string().trim_matches('"').to_string())
        .collect();
    assert_eq!(cids, want, "connection ids must match auth_ok.conn: {v}");
    for c in conns {
        let since = c["since"]
            .as_i64()
            .unwrap_or_else(|| panic!("since must be ms integer: {c}"));
        assert!(
            since >= before - 1000 && since <= common::now_ms() + 1000,
            "since {since} not ms-now: {c}"
        );
        assert!(!c["room"].is_null(), "room missing: {c}");
    }
    // Disconnect one: eventually only one left.
    a.close().await;
    common::eventually(
        "gu down to 1 connection",
        Duration::from_secs(5),
        || async { s.user("gu").await["connections"].as_array().map(Vec::len) == Some(1) },
    )
    .await;
    // Unknown user: 200, offline, no connections.
    let v = s.user("nobody-here").await;
    assert_eq!(v["online"], false, "{v}");
    assert_eq!(v["connections"], json!([]), "{v}");
}

/// `POST /users/online` answers from the room's own index (standalone), and
/// `GET /users/{user}/messages` reads the offline queue in pages.
#[tokio::test]
async fn users_online_and_stored_messages() {
    let s = Server::start(&[]).await;
    let (_a, _) = s.login(Transport::WsJson, "on-a", "phone").await;
    let (b, _) = s.login(Transport::Tcp, "on-b", "laptop").await;
    common::eventually("on-b online", Duration::from_secs(2), || async {
        s.user("on-b").await["online"] == true
    })
    .await;
    let v = s
        .api_ok(
            "POST",
            "/users/online",
            Some(json!({"users": ["on-a", "on-b", "on-c"]})),
            200,
        )
        .await;
    assert_eq!(
        v,
        json!({"online": {"on-a": true, "on-b": true, "on-c": false}})
    );
    b.close().await;
    common::eventually("on-b offline", Duration::from_secs(5), || async {
        s.api_ok(
            "POST",
            "/users/online",
            Some(json!({"users": ["on-b"]})),
            200,
        )
        .await["online"]["on-b"]
            == false
    })
    .await;

    // Stored for an offline user, then read back in pages.
    let first = s.push_id(&["on-c"], json!({"n": 1})).await;
    let second = s.push_id(&["on-c"], json!({"n": 2})).await;
    let v = s
        .api_ok("GET", "/users/on-c/messages?limit=1", None, 200)
        .await;
    assert_eq!(v["messages"][0]["id"], first, "{v}");
    assert_eq!(v["messages"][0]["data"], json!({"n": 1}), "{v}");
    assert_eq!(v["next_after"], first, "{v}");
    let v = s
        .api_ok(
            "GET",
            &format!("/users/on-c/messages?after={first}"),
            None,
            200,
        )
        .await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["messages"][0]["id"], second, "{v}");
    assert_eq!(v["next_after"], Value::Null, "{v}");
}

/// Online time counts live connections and keeps the time of those that
/// ended (standalone answers from the room's own index plus a record of
/// ended connections: both halves must add up).
#[tokio::test]
async fn online_time_survives_the_connection() {
    let s = Server::start(&[]).await;
    let (a, _) = s.login(Transport::WsJson, "ot", "phone").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let live = s.user("ot").await;
    assert_eq!(live["online"], true, "{live}");
    let live_ms = live["online_ms"].as_u64().unwrap_or(0);
    assert!(live_ms >= 1000, "a live connection's time counts: {live}");
    a.close().await;
    common::eventually("ot offline", Duration::from_secs(5), || async {
        s.user("ot").await["online"] == false
    })
    .await;
    let off = s.user("ot").await;
    let off_ms = off["online_ms"].as_u64().unwrap_or(0);
    assert!(off_ms >= live_ms, "ended time is kept: {off} after {live}");
    assert_eq!(off["connections"], json!([]), "{off}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.user("ot").await["online_ms"].as_u64(),
        Some(off_ms),
        "an offline user's time does not grow"
    );
    let (_b, _) = s.login(Transport::Tcp, "ot", "laptop").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = s.user("ot").await;
    let back_ms = back["online_ms"].as_u64().unwrap_or(0);
    assert!(
        back_ms >= off_ms + 400,
        "ended plus live: {back} after {off}"
    );
    let st = s.stats().await;
    assert_eq!(st["connections"], 1, "{st}");
}

/// DELETE /users/{u}/connections closes all of them with 4005, and nobody else.
#[tokio::test]
async fn kick_closes_with_4005() {
    let s = Server::start(&[]).await;
    let mut victims = Vec::new();
    for (i, t) in common::TRANSPORTS.into_iter().enumerate() {
        let (c, _) = s.login(t, "kicked", &format!("d{i}")).await;
        victims.push(c);
    }
    let (mut bystander, _) = s.login(Transport::WsJson, "stays", "d").await;
    let r = s
        .api_ok("DELETE", "/users/kicked/connections", None, 200)
        .await;
    assert_eq!(r["kicked"], 3, "{r}");
    for c in victims.iter_mut() {
        let (_reason, frames) = c.expect_close(4005, Duration::from_secs(5)).await;
        if c.transport == Transport::Tcp {
            assert!(
                frames
                    .iter()
                    .any(|f| f["op"] == "error" && f["code"] == "kicked"),
                "TCP kick must end with an error frame code kicked: {frames:?}"
            );
        }
    }
    s.wait_online("kicked", false).await;
    let r = s
        .api_ok("DELETE", "/users/kicked/connections", None, 200)
        .await;
    assert_eq!(r["kicked"], 0, "second kick finds nobody: {r}");
    assert!(bystander.ping_sync(1).await.is_empty());
    let id = s.push_id(&["stays"], json!(1)).await;
    assert_eq!(bystander.next_msg().await["id"], id);
}

#[tokio::test]
async fn stats_count_connections_and_users() {
    let s = Server::start(&[]).await;
    let v = s.stats().await;
    assert_eq!(v["connections"], 0, "{v}");
    assert_eq!(v["users"], 0, "{v}");
    let (_a, _) = s.login(Transport::WsJson, "s1", "a").await;
    let (_b, _) = s.login(Transport::WsBin, "s1", "b").await;
    let (c, _) = s.login(Transport::Tcp, "s2", "a").await;
    let _unauth = s.connect(Transport::Tcp).await;
    // The directory is updated right after auth_ok: allow it a moment.
    let mut v = s.stats().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while v["connections"] != 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        v = s.stats().await;
    }
    assert_eq!(v["connections"], 3, "authenticated connections: {v}");
    assert_eq!(v["users"], 2, "{v}");
    let rooms = v["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("rooms must be a list: {v}"));
    assert!(!rooms.is_empty(), "{v}");
    let sum: u64 = rooms
        .iter()
        .map(|r| r["connections"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(sum, 3, "per-room connections must add up: {v}");
    assert!(rooms.iter().all(|r| !r["room"].is_null()), "{v}");
    c.close().await;
    common::eventually(
        "stats after a disconnect",
        Duration::from_secs(5),
        || async {
            let v = s.stats().await;
            v["connections"] == 2 && v["users"] == 1
        },
    )
    .await;
}

/// Ids strictly increase across pushes, in answers and in what a client receives.
#[tokio::test]
async fn ids_strictly_increase() {
    let s = Server::start(&[]).await;
    let (mut c, _) = s.login(Transport::Tcp, "inc", "d").await;
    let mut answered = Vec::new();
    for i in 0..30 {
        let v: Value = if i % 3 == 2 {
            s.push(json!({"users": ["inc"], "data": i, "store": false}))
                .await
        } else {
            s.push_users(&["inc", "other"], json!(i)).await
        };
        answered.push(v["id"].as_i64().unwrap_or_else(|| panic!("{v}")));
    }
    common::assert_increasing("push answers", &answered);
    let got = ids(&c.msgs(30).await);
    assert_eq!(got, answered, "client must receive every push in id order");
    // Concurrent pushes: all ids distinct.
    let futs: Vec<_> = (0..20).map(|i| s.push_users(&["inc"], json!(i))).collect();
    let answers = futures_util::future::join_all(futs).await;
    let set: BTreeSet<i64> = answers.iter().map(|v| v["id"].as_i64().unwrap()).collect();
    assert_eq!(
        set.len(),
        20,
        "concurrent pushes got duplicate ids: {answers:?}"
    );
    assert!(*set.iter().next().unwrap() > *answered.last().unwrap());
    let got = ids(&c.msgs(20).await);
    common::assert_increasing("delivery order of concurrent pushes", &got);
}

/// Once a client has its auth_ok, the API sees the connection: a store:false push
/// right away reaches it and a kick right away closes it. 300 rounds, because a
/// race between auth_ok and the directory update only shows now and then.
#[tokio::test]
async fn connection_is_visible_to_the_api_as_soon_as_auth_ok() {
    let s = Server::start(&[]).await;
    let mut misses = Vec::new();
    for round in 0..300 {
        let t = common::TRANSPORTS[round % 3];
        let u = common::uniq("vis");
        let (mut c, _) = s.login_raw(t, &u, "d").await;
        let r = s
            .push(json!({"users": [u], "data": round, "store": false}))
            .await;
        if r["delivered"] != 1 {
            misses.push(format!(
                "round {round} {t:?}: store:false push right after auth_ok: {r}"
            ));
        } else {
            assert_eq!(c.next_msg().await["data"], round);
        }
        let k = common::uniq("vis-kick");
        let (mut c, _) = s.login_raw(t, &k, "d").await;
        let r = s
            .api_ok("DELETE", &format!("/users/{k}/connections"), None, 200)
            .await;
        if r["kicked"] != 1 {
            misses.push(format!(
                "round {round} {t:?}: kick right after auth_ok: {r}"
            ));
        } else {
            c.expect_close(4005, Duration::from_secs(5)).await;
        }
    }
    assert!(
        misses.is_empty(),
        "{} of 600 API calls right after auth_ok did not see the connection:\n{}",
        misses.len(),
        misses.join("\n")
    );
}

/// A channel push with `history: true` can be recovered by `sub` with `last_id`;
/// one without history cannot.
#[tokio::test]
async fn channel_history_recovered_by_sub_last_id() {
    let s = Server::start(&[]).await;
    let h1 = s
        .api_ok(
            "POST",
            "/push/channel",
            Some(json!({"channel": "hist", "data": 1, "history": true})),
            200,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let h2 = s
        .api_ok(
            "POST",
            "/push/channel",
            Some(json!({"channel": "hist", "data": 2, "history": true})),
            200,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let h3 = s
        .api_ok(
            "POST",
            "/push/channel",
            Some(json!({"channel": "hist", "data": 3, "history": true})),
            200,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    s.push_channel("nohist", json!("gone")).await;
    for t in common::TRANSPORTS {
        let mut c = s.connect(t).await;
        c.auth(
            &s.token_channels(&common::uniq("h"), &["hist", "nohist"]),
            None,
            None,
        )
        .await;
        c.send(&proto::ClientFrame::Sub {
            seq: Some(5),
            channel: "hist".into(),
            last_id: Some(proto::MsgId(h1)),
            presence: false,
        })
        .await;
        let mut msgs = Vec::new();
        let mut ok = false;
        while !(ok && msgs.len() == 2) {
            let v = c.next().await;
            match v["op"].as_str() {
                Some("sub_ok") => ok = true,
                Some("msg") => msgs.push(v),
                _ => panic!("{t:?}: unexpected frame during sub with last_id: {v}"),
            }
        }
        assert_eq!(
            ids(&msgs),
            vec![h2, h3],
            "{t:?}: channel history after {h1}"
        );
        assert!(
            msgs.iter().all(|m| m["channel"] == "hist"),
            "{t:?}: {msgs:?}"
        );
        c.send(&proto::ClientFrame::Sub {
            seq: Some(6),
            channel: "nohist".into(),
            last_id: Some(proto::MsgId(0)),
            presence: false,
        })
        .await;
        let v = c.next().await;
        assert_eq!(
            v["op"], "sub_ok",
            "{t:?}: a channel without history replays nothing: {v}"
        );
        assert!(
            c.ping_sync(1).await.is_empty(),
            "{t:?}: history replayed for a push without history"
        );
    }
}

/// --max-connections: a connection beyond the limit is refused; the others are unaffected.
#[tokio::test]
async fn max_connections_refuses_extra_clients() {
    let s = Server::start(&["--max-connections", "2"]).await;
    let (mut a, _) = s.login(Transport::WsJson, "mc1", "d").await;
    let (mut b, _) = s.login(Transport::Tcp, "mc2", "d").await;
    for t in [Transport::Tcp, Transport::WsJson] {
        let addr = if t == Transport::Tcp { s.tcp } else { s.ws };
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        let mut c = match t {
            Transport::Tcp => common::Client::from_tcp(stream),
            _ => match common::ws_handshake(stream, addr, Some("pushgate.v1.json")).await {
                Ok(ws) => common::Client::from_ws(ws, false),
                Err(_) => continue, // refused at the handshake
            },
        };
        c.send(&proto::ClientFrame::Auth {
            seq: None,
            token: s.token("mc3"),
            last_id: None,
            device: None,
        })
        .await;
        let (code, _, frames) = c.closed(Duration::from_secs(5)).await;
        assert!(
            !frames.iter().any(|f| f["op"] == "auth_ok"),
            "{t:?}: a third connection authenticated with --max-connections 2 (close {code:?}): {frames:?}"
        );
    }
    assert!(a.ping_sync(1).await.is_empty());
    assert!(b.ping_sync(1).await.is_empty());
}
