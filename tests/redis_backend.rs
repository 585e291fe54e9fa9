//! The same guarantees with the saver on a real Redis (`--redis URL`).
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use common::{ids, Server, Transport};
use serde_json::json;

#[tokio::test]
async fn redis_offline_queue_last_id_and_acks() {
    let redis = testkit::RedisServer::start();
    let url = redis.url();
    let s = Server::start(&["--redis", &url]).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(s.push_id(&["r1"], json!(i)).await);
    }
    // Offline queue.
    let (mut c, _) = s.login(Transport::WsJson, "r1", "phone").await;
    assert_eq!(
        ids(&c.msgs(5).await),
        sent,
        "redis: stored messages on auth"
    );
    // Ack, reconnect without last_id: only what follows.
    c.ack(sent[4]).await;
    assert!(c.ping_sync(1).await.is_empty());
    c.close().await;
    s.wait_online("r1", false).await;
    let next = s.push_id(&["r1"], json!("n")).await;
    let (mut c, _) = s.login(Transport::Tcp, "r1", "phone").await;
    assert_eq!(
        c.next_msg().await["id"],
        next,
        "redis: acked device must resume after its ack"
    );
    assert!(c.ping_sync(2).await.is_empty());
    // last_id replay on another device.
    let (mut d, _) = s
        .login_after(Transport::WsBin, "r1", "tablet", sent[1])
        .await;
    let mut want = sent[2..].to_vec();
    want.push(next);
    assert_eq!(ids(&d.msgs(4).await), want, "redis: last_id replay");
    // store:false is not queued.
    let r = s
        .push(json!({"users": ["r2"], "data": 1, "store": false}))
        .await;
    assert_eq!(r["stored"], 0, "{r}");
    let (mut e, _) = s.login(Transport::WsJson, "r2", "d").await;
    assert!(
        e.ping_sync(1).await.is_empty(),
        "redis: store:false replayed"
    );
}

#[tokio::test]
async fn redis_kill9_keeps_acknowledged_messages_and_ids_grow() {
    let redis = testkit::RedisServer::start();
    let url = redis.url();
    common::kill9_scenario(&["--redis", &url]).await;
}

#[tokio::test]
async fn redis_sigterm_restart_keeps_messages() {
    let redis = testkit::RedisServer::start();
    let url = redis.url();
    let mut s = Server::start(&["--redis", &url]).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(s.push_id(&["rs"], json!(i)).await);
    }
    let st = s.stop().await;
    assert_eq!(st.code(), Some(0), "{}", s.stderr());
    s.restart().await;
    let (mut c, _) = s.login(Transport::WsJson, "rs", "d").await;
    assert_eq!(ids(&c.msgs(5).await), sent);
    let id = s.push_id(&["rs"], json!("x")).await;
    assert!(id > sent[4]);
}

/// Messages live in Redis: a second pushgate on a fresh data dir but the same Redis sees them.
#[tokio::test]
async fn redis_is_the_store() {
    let redis = testkit::RedisServer::start();
    let url = redis.url();
    let a = Server::start(&["--redis", &url]).await;
    let id = a.push_id(&["shared"], json!("from a")).await;
    drop(a);
    let b = Server::start(&["--redis", &url]).await;
    let (mut c, _) = b.login(Transport::Tcp, "shared", "d").await;
    let m = c.next_msg().await;
    assert_eq!(
        m["id"], id,
        "message stored through pushgate A must be in Redis for B: {m}"
    );
    assert_eq!(m["data"], "from a");
}
