//! Presence, end to end on real sockets: members of channels listed in
//! `--presence-channels`, `join`/`leave` to subscribers that asked with
//! `"presence":true` (never their own), the `presence` frame, and
//! `GET /api/v1/channels/{channel}/presence` paged by cursor; on every
//! transport, with the Rust client library, and across the rooms of a
//! cluster.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{now_secs, Client, Server, Transport, TRANSPORTS};
use proto::ClientFrame;
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

fn token(secret: &str, user: &str, device: &str) -> String {
    let claims = json!({
        "sub": user, "dev": device, "exp": now_secs() + 3600,
        "channels": ["room:*", "news", "presence:*"],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn login_at(
    addr: std::net::SocketAddr,
    t: Transport,
    secret: &str,
    user: &str,
    device: &str,
) -> Client {
    let mut c = Client::connect_addr(addr, t).await;
    let ok = c.auth(&token(secret, user, device), None, None).await;
    assert_eq!(ok["op"], "auth_ok", "{ok}");
    c
}

async fn login(s: &Server, t: Transport, user: &str, device: &str) -> Client {
    let addr = if t == Transport::Tcp { s.tcp } else { s.ws };
    login_at(addr, t, &s.secret, user, device).await
}

/// Sends `f` and returns the next frame, which must echo its seq.
async fn ask(c: &mut Client, f: ClientFrame) -> Value {
    let seq = f.seq();
    c.send(&f).await;
    let v = c.next().await;
    assert_eq!(v["seq"], json!(seq), "{v}");
    v
}

fn sub(seq: u32, channel: &str, presence: bool) -> ClientFrame {
    ClientFrame::Sub {
        seq: Some(seq),
        channel: channel.into(),
        last_id: None,
        presence,
    }
}

fn presence(seq: u32, channel: &str) -> ClientFrame {
    ClientFrame::Presence {
        seq: Some(seq),
        channel: channel.into(),
    }
}

fn change(op: &str, channel: &str, user: &str, device: &str) -> Value {
    json!({"op": op, "channel": channel, "user": user, "device": device})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_leaves_and_members_on_every_transport() {
    let s = Server::start(&["--presence-channels", "room:*"]).await;
    for t in TRANSPORTS {
        let ch = format!("room:{t:?}").to_lowercase();
        let mut alice = login(&s, t, "alice", "phone").await;
        let ok = ask(&mut alice, sub(1, &ch, true)).await;
        assert_eq!(ok["op"], "sub_ok", "{t:?}: {ok}");

        // Another member: alice hears of it, bob (no presence) hears nothing.
        let mut bob = login(&s, t, "bob", "laptop").await;
        assert_eq!(ask(&mut bob, sub(1, &ch, false)).await["op"], "sub_ok");
        assert_eq!(alice.next().await, change("join", &ch, "bob", "laptop"));
        let mut bob2 = login(&s, t, "bob", "tablet").await;
        assert_eq!(ask(&mut bob2, sub(1, &ch, false)).await["op"], "sub_ok");
        assert_eq!(alice.next().await, change("join", &ch, "bob", "tablet"));
        bob.assert_quiet(QUIET).await;

        // Members: users in order with their connections.
        let v = ask(&mut alice, presence(2, &ch)).await;
        assert_eq!(
            v,
            json!({"op": "presence_ok", "seq": 2, "channel": ch, "more": false,
                   "users": [{"user": "alice", "connections": 1},
                             {"user": "bob", "connections": 2}]}),
            "{t:?}"
        );
        // Any member may ask, with or without the events.
        let v = ask(&mut bob, presence(3, &ch)).await;
        assert_eq!(v["users"].as_array().unwrap().len(), 2, "{v}");

        // Leaving by unsub and by disconnecting.
        let f = ClientFrame::Unsub {
            seq: Some(4),
            channel: ch.clone(),
        };
        assert_eq!(ask(&mut bob, f).await["op"], "unsub_ok");
        assert_eq!(alice.next().await, change("leave", &ch, "bob", "laptop"));
        bob2.close().await;
        assert_eq!(alice.next().await, change("leave", &ch, "bob", "tablet"));
        let v = ask(&mut alice, presence(5, &ch)).await;
        assert_eq!(v["users"], json!([{"user": "alice", "connections": 1}]));

        // Refusals are not fatal: a channel without presence, one not subscribed.
        assert_eq!(ask(&mut alice, sub(6, "news", true)).await["op"], "sub_ok");
        let v = ask(&mut alice, presence(7, "news")).await;
        assert_eq!(
            (&v["op"], &v["code"]),
            (&json!("error"), &json!("forbidden")),
            "{v}"
        );
        assert!(v.get("close").is_none(), "{v}");
        let v = ask(&mut alice, presence(8, "room:elsewhere")).await;
        assert_eq!(v["code"], "forbidden", "{v}");
        let v = ask(&mut alice, presence(9, "bad channel")).await;
        assert_eq!(v["code"], "forbidden", "{v}");
        // Still usable, and own subscriptions never echo a join.
        let mut carol = login(&s, t, "carol", "default").await;
        assert_eq!(ask(&mut carol, sub(1, &ch, true)).await["op"], "sub_ok");
        assert_eq!(alice.next().await, change("join", &ch, "carol", "default"));
        carol.assert_quiet(QUIET).await;
        alice.close().await;
        assert_eq!(carol.next().await, change("leave", &ch, "alice", "phone"));
        bob.close().await;
        carol.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_pages_through_members_by_cursor() {
    let s = Server::start(&["--presence-channels", "room:*"]).await;
    // 25 users, the first five with two connections.
    let mut clients = Vec::new();
    let mut want = BTreeMap::new();
    for i in 0..25 {
        let user = format!("u{i:02}");
        let n = if i < 5 { 2 } else { 1 };
        for d in 0..n {
            let mut c = login(&s, Transport::WsJson, &user, &format!("d{d}")).await;
            assert_eq!(ask(&mut c, sub(1, "room:big", false)).await["op"], "sub_ok");
            clients.push(c);
        }
        want.insert(user, n);
    }
    // One who is not a member of this channel.
    let mut other = login(&s, Transport::Tcp, "zed", "x").await;
    assert_eq!(
        ask(&mut other, sub(1, "room:small", false)).await["op"],
        "sub_ok"
    );

    let mut got = BTreeMap::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/channels/room:big/presence?limit=10&cursor={c}"),
            None => "/channels/room:big/presence?limit=10".to_owned(),
        };
        let v = s.api_ok("GET", &path, None, 200).await;
        assert_eq!(v["channel"], "room:big");
        pages += 1;
        let users = v["users"].as_array().unwrap();
        assert!(users.len() <= 10, "{v}");
        for u in users {
            let name = u["user"].as_str().unwrap().to_owned();
            assert!(
                got.keys().all(|k: &String| *k < name),
                "in order, once: {v}"
            );
            got.insert(name, u["connections"].as_i64().unwrap());
        }
        match v["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(got, want);

    // The default page holds them all; a channel without presence has none.
    let v = s
        .api_ok("GET", "/channels/room:big/presence", None, 200)
        .await;
    assert_eq!(
        (v["users"].as_array().unwrap().len(), &v["next"]),
        (25, &Value::Null)
    );
    let v = s.api_ok("GET", "/channels/news/presence", None, 200).await;
    assert_eq!(v, json!({"channel": "news", "users": [], "next": null}));
    let v = s
        .api_ok("GET", "/channels/room:small/presence", None, 200)
        .await;
    assert_eq!(v["users"], json!([{"user": "zed", "connections": 1}]));

    // Bad input: 400 with the error shape; without the key, 401.
    for bad in [
        "/channels/room:big/presence?limit=0",
        "/channels/room:big/presence?limit=10001",
        "/channels/room:big/presence?limit=x",
        "/channels/room:big/presence?cursor=zz",
        "/channels/room:big/presence?cursor=",
        "/channels/room:big/presence?page=2",
        "/channels/%20/presence",
    ] {
        let (status, body) = s.api("GET", bad, None).await;
        common::assert_api_error(bad, status, &body, &[400]);
    }
    let (status, _) = s
        .raw(
            "GET",
            "/api/v1/channels/room:big/presence",
            None,
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);

    // Members leave as their connections go.
    for c in clients {
        c.close().await;
    }
    common::eventually("members gone", Duration::from_secs(10), || async {
        let v = s
            .api_ok("GET", "/channels/room:big/presence", None, 200)
            .await;
        v["users"] == json!([])
    })
    .await;
    other.close().await;
}

/// The next client event within 10 s.
async fn wait(events: &mut pushgate_client::Events) -> pushgate_client::Event {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_watches_and_asks() {
    use pushgate_client::{Client as PgClient, Event};
    let s = Server::start(&["--presence-channels", "room:*"]).await;
    let secret = s.secret.clone();
    let (client, mut events) = PgClient::builder([format!("ws://{}/ws", s.ws)])
        .token(token(&secret, "ann", "app"))
        .start()
        .unwrap();

    loop {
        if let Event::Connected(_) = wait(&mut events).await {
            break;
        }
    }
    client.subscribe_with_presence("room:rs").await.unwrap();
    loop {
        if let Event::Subscribed { channel } = wait(&mut events).await {
            assert_eq!(channel, "room:rs");
            break;
        }
    }
    let mut ben = login(&s, Transport::WsBin, "ben", "web").await;
    assert_eq!(
        ask(&mut ben, sub(1, "room:rs", false)).await["op"],
        "sub_ok"
    );
    match wait(&mut events).await {
        Event::Join(c) => assert_eq!(
            (c.channel.as_str(), c.user.as_str(), c.device.as_str()),
            ("room:rs", "ben", "web")
        ),
        other => panic!("expected a join, got {other:?}"),
    }
    let page = client.presence("room:rs").await.unwrap();
    let users: Vec<(String, u32)> = page
        .users
        .iter()
        .map(|u| (u.user.as_str().to_owned(), u.connections))
        .collect();
    assert_eq!(users, [("ann".to_owned(), 1), ("ben".to_owned(), 1)]);
    assert!(!page.more);
    let refused = client.presence("room:other").await.unwrap_err();
    assert!(
        matches!(&refused, pushgate_client::ClientError::Refused { code, .. } if *code == proto::ErrorCode::Forbidden),
        "{refused:?}"
    );
    ben.close().await;
    match wait(&mut events).await {
        Event::Leave(c) => assert_eq!(c.user.as_str(), "ben"),
        other => panic!("expected a leave, got {other:?}"),
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_the_rooms_of_a_cluster() {
    let c = common::cluster::Cluster::start(2, 1).await;
    let secret = c.secret.clone();
    let ch = "presence:lobby";
    let mut amy = login_at(c.ws(0), Transport::WsJson, &secret, "amy", "a").await;
    assert_eq!(ask(&mut amy, sub(1, ch, true)).await["op"], "sub_ok");
    let mut bo = login_at(c.ws(1), Transport::WsBin, &secret, "bo", "b").await;
    assert_eq!(ask(&mut bo, sub(1, ch, true)).await["op"], "sub_ok");
    // Bo's join crosses to amy's room; bo (room 1) never hears amy's
    // subscription, which happened before his.
    assert_eq!(amy.next().await, change("join", ch, "bo", "b"));
    // Each room learns of the other through the registers within a
    // membership refresh; events before that reach only the rooms already
    // known (best effort). Wait until amy's room counts bo's.
    let mut seq = 10;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        seq += 1;
        let v = ask(&mut amy, presence(seq, ch)).await;
        if v["users"].as_array().is_some_and(|u| u.len() == 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "amy's room never counted bo: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cy = login_at(c.ws(0), Transport::WsDefault, &secret, "cy", "c").await;
    assert_eq!(ask(&mut cy, sub(1, ch, false)).await["op"], "sub_ok");
    assert_eq!(amy.next().await, change("join", ch, "cy", "c"));
    assert_eq!(bo.next().await, change("join", ch, "cy", "c"));

    // Members over both rooms, from a client and from the center's REST API.
    let want = json!([{"user": "amy", "connections": 1},
                      {"user": "bo", "connections": 1},
                      {"user": "cy", "connections": 1}]);
    let v = ask(&mut bo, presence(2, ch)).await;
    assert_eq!((&v["users"], &v["more"]), (&want, &json!(false)), "{v}");
    let v = c
        .api_ok(0, "GET", &format!("/channels/{ch}/presence?limit=2"), None)
        .await;
    assert_eq!(v["users"], json!([want[0], want[1]]), "{v}");
    let next = v["next"].as_str().unwrap().to_owned();
    let path = format!("/channels/{ch}/presence?limit=2&cursor={next}");
    let v = c.api_ok(0, "GET", &path, None).await;
    assert_eq!(
        (&v["users"], &v["next"]),
        (&json!([want[2]]), &Value::Null),
        "{v}"
    );

    cy.close().await;
    assert_eq!(amy.next().await, change("leave", ch, "cy", "c"));
    assert_eq!(bo.next().await, change("leave", ch, "cy", "c"));
    bo.close().await;
    assert_eq!(amy.next().await, change("leave", ch, "bo", "b"));
    amy.assert_quiet(QUIET).await;
}
