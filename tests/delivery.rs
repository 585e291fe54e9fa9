//! Delivery guarantees: offline queues, last_id replay, per-device acks,
//! store:false, and durability across SIGTERM and kill -9.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::time::Duration;

use common::{datas, ids, Server, Transport};
use serde_json::json;

/// An offline user gets every stored message, in order, when a connection authenticates.
#[tokio::test]
async fn offline_user_gets_stored_messages_on_auth() {
    let s = Server::start(&[]).await;
    for t in common::TRANSPORTS {
        let u = common::uniq("off");
        let mut want = Vec::new();
        for i in 0..5 {
            want.push(s.push_id(&[&u], json!({"i": i})).await);
        }
        let (mut c, _) = s.login(t, &u, "d").await;
        let got = c.msgs(5).await;
        assert_eq!(ids(&got), want, "{t:?}: stored messages in id order");
        assert_eq!(
            datas(&got),
            (0..5).map(|i| json!({"i": i})).collect::<Vec<_>>(),
            "{t:?}"
        );
        // Then live ones follow.
        let id = s.push_id(&[&u], json!("live")).await;
        assert_eq!(c.next_msg().await["id"], id, "{t:?}");
    }
}

/// `last_id` replays only greater ids, in order, before new ones.
#[tokio::test]
async fn last_id_replays_only_greater_ids_in_order() {
    let s = Server::start(&[]).await;
    for t in common::TRANSPORTS {
        let u = common::uniq("lid");
        let mut sent = Vec::new();
        for i in 0..6 {
            sent.push(s.push_id(&[&u], json!(i)).await);
        }
        let (mut c, _) = s.login_after(t, &u, "d", sent[2]).await;
        // A new push right after auth must come after the replay.
        let live = s.push_id(&[&u], json!("new")).await;
        let got = c.msgs(4).await;
        assert_eq!(
            ids(&got),
            vec![sent[3], sent[4], sent[5], live],
            "{t:?}: replay after last_id={} then live",
            sent[2]
        );
        assert!(
            c.ping_sync(2).await.is_empty(),
            "{t:?}: nothing else expected"
        );

        // last_id beyond everything: nothing replayed.
        let (mut c2, _) = s.login_after(t, &u, "d2", live).await;
        assert!(
            c2.ping_sync(3).await.is_empty(),
            "{t:?}: last_id = newest must replay nothing"
        );
        // last_id 0: everything.
        let (mut c3, _) = s.login_after(t, &u, "d3", 0).await;
        let got = c3.msgs(7).await;
        let mut all = sent.clone();
        all.push(live);
        assert_eq!(ids(&got), all, "{t:?}: last_id=0 replays the whole queue");
    }
}

/// Without last_id a device gets what it has not acked.
#[tokio::test]
async fn device_gets_what_it_has_not_acked() {
    let s = Server::start(&[]).await;
    for t in common::TRANSPORTS {
        let u = common::uniq("ack");
        let (mut c, _) = s.login(t, &u, "phone").await;
        let a = s.push_id(&[&u], json!("a")).await;
        let b = s.push_id(&[&u], json!("b")).await;
        let got = c.msgs(2).await;
        assert_eq!(ids(&got), vec![a, b], "{t:?}");
        c.ack(b).await;
        // ping/pong after the ack: the server has read the ack.
        assert!(c.ping_sync(4).await.is_empty());
        c.close().await;
        s.wait_online(&u, false).await;
        let cc = s.push_id(&[&u], json!("c")).await;
        let (mut c, _) = s.login(t, &u, "phone").await;
        let first = c.next_msg().await;
        assert_eq!(first["id"], cc, "{t:?}: after acking {b}, reconnecting without last_id must start at the unacked {cc}: {first}");
        assert!(
            c.ping_sync(5).await.is_empty(),
            "{t:?}: only the unacked message"
        );
    }
}

/// Acks are per device: another device of the same user still gets everything unacked.
#[tokio::test]
async fn acks_are_per_device() {
    let s = Server::start(&[]).await;
    let (mut phone, _) = s.login(Transport::WsJson, "pd", "phone").await;
    let a = s.push_id(&["pd"], json!("a")).await;
    let b = s.push_id(&["pd"], json!("b")).await;
    assert_eq!(ids(&phone.msgs(2).await), vec![a, b]);
    phone.ack(b).await;
    assert!(phone.ping_sync(1).await.is_empty());
    let (mut laptop, _) = s.login(Transport::Tcp, "pd", "laptop").await;
    let got = laptop.msgs(2).await;
    assert_eq!(
        ids(&got),
        vec![a, b],
        "a device that acked nothing gets the whole queue"
    );
}

/// A partial ack: reconnect gets exactly the messages after the acked id.
#[tokio::test]
async fn partial_ack_then_reconnect() {
    let s = Server::start(&[]).await;
    let (mut c, _) = s.login(Transport::WsBin, "pa", "d").await;
    let mut sent = Vec::new();
    for i in 0..4 {
        sent.push(s.push_id(&["pa"], json!(i)).await);
    }
    assert_eq!(ids(&c.msgs(4).await), sent);
    c.ack(sent[1]).await;
    assert!(c.ping_sync(1).await.is_empty());
    c.close().await;
    s.wait_online("pa", false).await;
    let (mut c, _) = s.login(Transport::WsBin, "pa", "d").await;
    let got = c.msgs(2).await;
    assert_eq!(
        ids(&got),
        sent[2..].to_vec(),
        "after ack of {}, expected the rest",
        sent[1]
    );
    assert!(c.ping_sync(2).await.is_empty());
}

/// store:false is delivered live, but not queued and never replayed.
#[tokio::test]
async fn store_false_is_not_replayed() {
    let s = Server::start(&[]).await;
    // Offline: stored 0, and nothing replayed on connect.
    let r = s
        .push(json!({"users": ["nf"], "data": "gone", "store": false}))
        .await;
    assert_eq!(r["stored"], 0, "store:false must not queue: {r}");
    assert_eq!(r["delivered"], 0, "{r}");
    let (mut c, _) = s.login(Transport::WsJson, "nf", "d").await;
    let sentinel = s.push_id(&["nf"], json!("sentinel")).await;
    let m = c.next_msg().await;
    assert_eq!(m["id"], sentinel, "store:false message was replayed: {m}");

    // Online: delivered live...
    let r = s
        .push(json!({"users": ["nf"], "data": "live", "store": false}))
        .await;
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(r["stored"], 0, "{r}");
    let m = c.next_msg().await;
    assert_eq!(m["data"], "live");
    // ...but a new device replaying from 0 only sees the stored one.
    let (mut d, _) = s.login_after(Transport::Tcp, "nf", "d2", 0).await;
    let got = d.msgs(1).await;
    assert_eq!(ids(&got), vec![sentinel]);
    assert!(
        d.ping_sync(1).await.is_empty(),
        "store:false messages replayed to d2"
    );
}

/// The queue keeps the newest `--queue-max` messages.
#[tokio::test]
async fn queue_keeps_newest_max() {
    let s = Server::start(&["--queue-max", "3"]).await;
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(s.push_id(&["qm"], json!(i)).await);
    }
    let (mut c, _) = s.login(Transport::WsJson, "qm", "d").await;
    let got = c.msgs(3).await;
    assert_eq!(ids(&got), sent[3..].to_vec(), "newest 3 of 6");
    assert!(c.ping_sync(1).await.is_empty());
}

/// SIGTERM and restart keep the stored messages and their ids.
#[tokio::test]
async fn sigterm_restart_keeps_stored_messages() {
    let mut s = Server::start(&[]).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(s.push_id(&["st"], json!(i)).await);
    }
    let st = s.stop().await;
    assert_eq!(
        st.code(),
        Some(0),
        "SIGTERM must exit 0, got {st:?}\n{}",
        s.stderr()
    );
    s.restart().await;
    let (mut c, _) = s.login(Transport::Tcp, "st", "d").await;
    let got = c.msgs(5).await;
    assert_eq!(ids(&got), sent, "stored messages after restart");
    assert_eq!(datas(&got), (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    let next = s.push_id(&["st"], json!("after")).await;
    assert!(
        next > *sent.last().unwrap(),
        "id after restart {next} must exceed {sent:?}"
    );
}

#[tokio::test]
async fn kill9_keeps_acknowledged_messages_and_ids_grow() {
    common::kill9_scenario(&[]).await;
}

/// The embedded store acknowledges a push once it is in its write-ahead log,
/// and makes redb durable at checkpoints (about once a second): pushes from
/// before a checkpoint and pushes only in the log both survive kill -9, and
/// the restart says it applied the log.
#[tokio::test]
async fn kill9_keeps_what_was_checkpointed_and_what_was_only_logged() {
    let mut s = Server::start(&[]).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(s.push_id(&["wal"], json!({"before": i})).await);
    }
    // Two sweeps, so at least one checkpoint, then more pushes into the log.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..20 {
        sent.push(s.push_id(&["wal"], json!({"after": i})).await);
    }
    // A checkpoint may land between the last push and the kill (about one
    // chance in a few hundred); then push a few more and kill again, so
    // that the run does exercise the log.
    let mut replayed = false;
    for attempt in 0..3 {
        s.kill9().await;
        s.restart().await;
        if s.stderr().contains("applied the write-ahead log") {
            replayed = true;
            break;
        }
        for i in 0..5 {
            sent.push(s.push_id(&["wal"], json!({"again": [attempt, i]})).await);
        }
    }
    assert!(
        replayed,
        "no restart replayed the log, so this run did not test it: {}",
        s.stderr()
    );
    let (mut c, _) = s.login(Transport::WsJson, "wal", "d").await;
    let got = c.msgs(sent.len()).await;
    assert_eq!(ids(&got), sent, "every acknowledged push survives kill -9");
    assert_eq!(got[39]["data"], json!({"after": 19}));
}

/// A second kill -9 right after restart (no time for a checkpoint) still never repeats an id.
#[tokio::test]
async fn double_kill9_ids_never_repeat() {
    let mut s = Server::start(&[]).await;
    let mut max = 0;
    for round in 0..3 {
        for i in 0..10 {
            let id = s.push_id(&["dk"], json!([round, i])).await;
            assert!(id > max, "round {round}: id {id} not above {max}");
            max = id;
        }
        s.kill9().await;
        s.restart().await;
    }
    let (mut c, _) = s.login(Transport::Tcp, "dk", "d").await;
    let got = c.msgs(30).await;
    common::assert_increasing("queue after three kill -9", &ids(&got));
    assert_eq!(got.len(), 30);
}

/// A push's `ttl` bounds how long it is kept for an offline user.
#[tokio::test]
async fn push_ttl_expires_stored_messages() {
    let s = Server::start(&[]).await;
    let r = s
        .push(json!({"users": ["ttl"], "data": "short", "ttl": 1}))
        .await;
    assert_eq!(r["stored"], 1, "{r}");
    let keep = s.push_id(&["ttl"], json!("long")).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (mut c, _) = s.login(Transport::WsJson, "ttl", "d").await;
    let m = c.next_msg().await;
    assert_eq!(
        m["id"], keep,
        "a message with ttl 1 s was replayed after 2 s: {m}"
    );
    assert!(c.ping_sync(1).await.is_empty());
}

/// A connect with nothing stored for its user skips the store (counted in
/// `pushgate_room_replays_skipped_total`); one with stored messages still
/// replays them, and so does a reconnect with an older `last_id`.
#[tokio::test]
async fn nothing_stored_skips_the_store_and_stored_still_replays() {
    let s = Server::start(&[]).await;
    let skipped = |s: &Server| {
        let s = s.http_base();
        async move {
            let body = reqwest::get(format!("{s}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            body.lines()
                .find_map(|l| l.strip_prefix("pushgate_room_replays_skipped_total "))
                .map(|v| v.trim().parse::<u64>().unwrap())
                .unwrap_or_else(|| panic!("no pushgate_room_replays_skipped_total in {body}"))
        }
    };
    let before = skipped(&s).await;
    let fresh = common::uniq("fresh");
    let (_c, _) = s.login(Transport::WsJson, &fresh, "d").await;
    assert_eq!(
        skipped(&s).await,
        before + 1,
        "a user without messages skips the store"
    );

    let u = common::uniq("stored");
    let id = s.push_id(&[&u], json!("kept")).await;
    let (mut c, _) = s.login(Transport::WsJson, &u, "d").await;
    assert_eq!(
        c.next_msg().await["id"],
        id,
        "replayed after the skip check"
    );
    assert_eq!(
        skipped(&s).await,
        before + 1,
        "a user with messages reads the store"
    );
    drop(c);
    let (mut again, _) = s.login_after(Transport::Tcp, &u, "d2", id - 1).await;
    assert_eq!(
        again.next_msg().await["id"],
        id,
        "last_id below the stored id replays it"
    );
}
