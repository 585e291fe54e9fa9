//! Delivery: replay, acks, devices, channels, broadcast, metrics.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use proto::{ClientFrame, ErrorCode, MsgId, ServerFrame, UserId};

async fn auth_with(
    t: &TestRoom,
    tr: Transport,
    token: String,
    last_id: Option<i64>,
    device: Option<&str>,
) -> Client {
    let mut c = t.client(tr).await;
    c.send(&ClientFrame::Auth {
        seq: None,
        token,
        last_id: last_id.map(MsgId),
        device: device.map(str::to_owned),
    })
    .await;
    assert!(matches!(c.frame().await, ServerFrame::AuthOk { .. }));
    c
}

#[tokio::test]
async fn replay_after_last_id_comes_in_order_before_live_messages_without_duplicates() {
    let t = start(config()).await;
    for tr in ALL {
        let user = format!("r-{tr:?}");
        for id in 1..=5 {
            t.backend.store(&user, msg(id, None));
        }
        let mut c = auth_with(&t, tr, token(&user), Some(2), None).await;
        // Live pushes right after auth: 5 repeats a replayed one, 6 is new.
        let u = [UserId::new(&user)];
        t.room.deliver_users(&u, &encoded(5, None));
        t.room.deliver_users(&u, &encoded(6, None));
        let got: Vec<i64> = [c.msg().await, c.msg().await, c.msg().await, c.msg().await]
            .iter()
            .map(|m| m.id.0)
            .collect();
        assert_eq!(got, [3, 4, 5, 6], "{tr:?}");
        c.roundtrip(1).await; // nothing else (no second 5) before the pong
    }
    assert_eq!(t.metric("pushgate_room_replayed_total"), 9);
}

#[tokio::test]
async fn a_failed_replay_is_retried_in_place_and_live_messages_wait_for_it() {
    let t = start(config()).await;
    for (i, tr) in ALL.into_iter().enumerate() {
        let user = format!("hiccup-{tr:?}");
        t.backend.store(&user, msg(1, None));
        t.backend.store(&user, msg(2, None));
        t.backend.state.lock().failing_replay.push(user.clone());
        let mut c = auth_with(&t, tr, token(&user), Some(0), None).await;
        let tries = i as u64 + 1;
        t.wait_until("the replay put off", |t| {
            t.metric("pushgate_room_replay_retries_total") == tries
        })
        .await;
        // A live message while the replay waits: held back, not written
        // ahead of the stored ones (the client would resume past them).
        t.room
            .deliver_users(&[UserId::new(&user)], &encoded(3, None));
        t.backend.state.lock().failing_replay.retain(|u| *u != user);
        let got: Vec<i64> = [c.msg().await, c.msg().await, c.msg().await]
            .iter()
            .map(|m| m.id.0)
            .collect();
        assert_eq!(got, [1, 2, 3], "{tr:?}");
        // Still open and usable.
        c.roundtrip(1).await;
    }
}

#[tokio::test]
async fn replays_wait_their_turn_at_the_store_and_a_long_wait_puts_one_off() {
    let mut cfg = config();
    cfg.replays_at_once = 2;
    let t = start(cfg).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    t.backend.state.lock().replay_gate = Some(gate.clone());
    let users: Vec<String> = (0..3).map(|i| format!("line-{i}")).collect();
    for u in &users {
        t.backend.store(u, msg(1, None));
        t.backend.store(u, msg(2, None));
    }
    let mut clients = Vec::new();
    for u in &users {
        clients.push(auth_with(&t, Transport::Tcp, token(u), Some(0), None).await);
    }
    // Two reads at the store, the third waits in line.
    t.wait_until("two in flight, one waiting", |t| {
        t.backend.state.lock().replays_in_flight == 2
            && t.metric("pushgate_room_replays_waiting") == 1
    })
    .await;
    // After a heartbeat (5 s here) in line it is put off in place, not failed.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    t.wait_until("a turn missed", |t| {
        t.metric("pushgate_room_replay_turns_missed_total") >= 1
    })
    .await;
    assert_eq!(t.metric("pushgate_room_replay_retries_total"), 0);
    // A live message meanwhile waits behind the replay.
    t.room
        .deliver_users(&[UserId::new(&users[2])], &encoded(3, None));
    gate.add_permits(1000);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut want = vec![1, 2];
        if i == 2 {
            want.push(3);
        }
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(c.msg().await.id.0);
        }
        assert_eq!(got, want, "client {i}");
        c.roundtrip(1).await;
    }
    assert_eq!(t.backend.state.lock().most_replays_in_flight, 2);
}

#[tokio::test]
async fn a_replay_put_off_before_the_ack_was_known_starts_from_the_ack() {
    let t = start(config()).await;
    let user = "ack-hiccup";
    for id in 1..=3 {
        t.backend.store(user, msg(id, None));
    }
    // The device acked 1 earlier; without `last_id` the replay starts there.
    t.backend.set_ack(user, "default", 1);
    t.backend.state.lock().failing_replay.push(user.to_owned());
    let mut c = auth_with(&t, Transport::WsJson, token(user), None, None).await;
    t.wait_until("the replay put off", |t| {
        t.metric("pushgate_room_replay_retries_total") == 1
    })
    .await;
    t.backend.state.lock().failing_replay.clear();
    assert_eq!(c.msg().await.id.0, 2);
    assert_eq!(c.msg().await.id.0, 3);
    c.roundtrip(1).await;
}

#[tokio::test]
async fn a_replay_that_keeps_failing_closes_4007_instead_of_going_live_over_a_gap() {
    let t = start(config()).await;
    for tr in ALL {
        let user = format!("down-{tr:?}");
        t.backend.store(&user, msg(1, None));
        t.backend.state.lock().failing_replay.push(user.clone());
        let mut c = auth_with(&t, tr, token(&user), Some(0), None).await;
        let reason = c.expect_close(ErrorCode::Internal, 4007).await;
        let ms: u64 = reason
            .strip_prefix("unavailable reconnect_after_ms=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{tr:?}: reason {reason:?}"));
        assert!((1000..5000).contains(&ms), "{tr:?}: {ms}");
    }
}

#[tokio::test]
async fn unstored_messages_are_never_taken_for_replayed_duplicates() {
    let t = start(config()).await;
    let user = "unstored";
    for id in 10..=12 {
        t.backend.store(user, msg(id, None));
    }
    let mut c = auth_with(&t, Transport::Tcp, token(user), Some(0), None).await;
    // A broadcast (or a `store: false` push) whose id is below the last
    // replayed one was never in the queue: it must still be delivered.
    t.room.broadcast(&unstored(11));
    let got: Vec<i64> = [c.msg().await, c.msg().await, c.msg().await, c.msg().await]
        .iter()
        .map(|m| m.id.0)
        .collect();
    assert_eq!(got, [10, 11, 12, 11]);
}

#[tokio::test]
async fn replay_pages_through_more_than_one_backend_page() {
    let t = start(config()).await;
    for id in 1..=1203 {
        t.backend.store("many", msg(id, None));
    }
    let mut c = auth_with(&t, Transport::Tcp, token("many"), Some(0), None).await;
    for id in 1..=1203 {
        assert_eq!(c.msg().await.id.0, id);
    }
    c.roundtrip(1).await;
}

#[tokio::test]
async fn without_last_id_a_device_gets_what_it_has_not_acked_and_acks_are_recorded() {
    let t = start(config()).await;
    for id in 1..=5 {
        t.backend.store("acker", msg(id, None));
    }
    t.backend.set_ack("acker", "phone", 3);
    let mut phone = auth_with(&t, Transport::WsBin, token("acker"), None, Some("phone")).await;
    assert_eq!(phone.msg().await.id.0, 4);
    assert_eq!(phone.msg().await.id.0, 5);
    phone
        .send(&ClientFrame::Ack {
            seq: None,
            id: MsgId(5),
        })
        .await;
    phone.roundtrip(1).await;
    assert_eq!(t.backend.ack_of("acker", "phone"), Some(MsgId(5)));
    // Another device has acked nothing: it gets everything.
    let mut web = auth_with(&t, Transport::WsJson, token("acker"), None, Some("web")).await;
    for id in 1..=5 {
        assert_eq!(web.msg().await.id.0, id);
    }
}

#[tokio::test]
async fn a_user_message_reaches_every_device() {
    let t = start(config()).await;
    let mut a = t.authed(Transport::WsJson, "multi", Some("a")).await;
    let mut b = t.authed(Transport::WsBin, "multi", Some("b")).await;
    let mut c = t.authed(Transport::Tcp, "multi", Some("c")).await;
    let _other = t.authed(Transport::Tcp, "other", None).await;
    let users = [UserId::new("multi"), UserId::new("nobody")];
    assert_eq!(t.room.deliver_users(&users, &encoded(42, None)), 3);
    for cl in [&mut a, &mut b, &mut c] {
        let m = cl.msg().await;
        assert_eq!(m.id, MsgId(42));
        assert_eq!(m.data.as_ref(), b"{\"n\":42}");
        assert_eq!(m.channel, None);
    }
    assert_eq!(t.metric("pushgate_room_deliveries_total"), 3);
}

fn with_channels(user: &str, ch: &[&str]) -> String {
    let mut c = claims(user);
    c.channels = Some(ch.iter().map(|s| (*s).to_owned()).collect());
    mint(&c)
}

async fn sub(c: &mut Client, seq: u32, channel: &str) -> ServerFrame {
    c.send(&ClientFrame::Sub {
        seq: Some(seq),
        channel: channel.to_owned(),
        last_id: None,
        presence: false,
    })
    .await;
    c.frame().await
}

#[tokio::test]
async fn sub_and_unsub_follow_the_channels_claim() {
    let t = start(config()).await;
    for tr in ALL {
        let tok = with_channels("subber", &["news", "room:*"]);
        let mut c = auth_with(&t, tr, tok, None, None).await;
        match sub(&mut c, 1, "news").await {
            ServerFrame::SubOk { seq, channel } => {
                assert_eq!((seq, channel.as_str()), (Some(1), "news"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            sub(&mut c, 2, "room:42").await,
            ServerFrame::SubOk { .. }
        ));
        match sub(&mut c, 3, "secret").await {
            ServerFrame::Error {
                seq, code, close, ..
            } => {
                assert_eq!(
                    (seq, code, close),
                    (Some(3), ErrorCode::ChannelForbidden, None)
                );
            }
            other => panic!("{other:?}"),
        }
        match sub(&mut c, 4, "bad name*").await {
            ServerFrame::Error { code, close, .. } => {
                assert_eq!((code, close), (ErrorCode::BadChannel, None))
            }
            other => panic!("{other:?}"),
        }
        // Not fatal: the connection still works and receives channel messages.
        assert_eq!(
            t.room
                .publish_channel("room:42", &encoded(7, Some("room:42"))),
            1
        );
        let m = c.msg().await;
        assert_eq!((m.id.0, m.channel.as_deref()), (7, Some("room:42")));
        c.send(&ClientFrame::Unsub {
            seq: Some(5),
            channel: "room:42".into(),
        })
        .await;
        match c.frame().await {
            ServerFrame::UnsubOk { seq, channel } => {
                assert_eq!((seq, channel.as_str()), (Some(5), "room:42"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            t.room
                .publish_channel("room:42", &encoded(8, Some("room:42"))),
            0
        );
        assert_eq!(t.room.publish_channel("news", &encoded(9, Some("news"))), 1);
        assert_eq!(c.msg().await.id.0, 9);
    }
}

#[tokio::test]
async fn no_channels_claim_allows_no_channel() {
    let t = start(config()).await;
    let mut c = t.authed(Transport::WsJson, "plain", None).await;
    match sub(&mut c, 1, "news").await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::ChannelForbidden),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.room.publish_channel("news", &encoded(1, Some("news"))), 0);
}

#[tokio::test]
async fn too_many_channels_is_refused_but_not_fatal() {
    let t = start(config()).await; // max_channels 4
    let mut c = auth_with(
        &t,
        Transport::Tcp,
        with_channels("greedy", &["c*"]),
        None,
        None,
    )
    .await;
    for i in 0..4 {
        assert!(matches!(
            sub(&mut c, i, &format!("c{i}")).await,
            ServerFrame::SubOk { .. }
        ));
    }
    // Re-subscribing to a held channel is fine.
    assert!(matches!(
        sub(&mut c, 9, "c0").await,
        ServerFrame::SubOk { .. }
    ));
    match sub(&mut c, 10, "c4").await {
        ServerFrame::Error { code, close, .. } => {
            assert_eq!((code, close), (ErrorCode::TooManyChannels, None))
        }
        other => panic!("{other:?}"),
    }
    c.roundtrip(11).await;
    assert_eq!(t.metric("pushgate_room_channels"), 4);
    drop(c);
    t.wait_until("channels released", |t| {
        t.metric("pushgate_room_channels") == 0
    })
    .await;
}

#[tokio::test]
async fn sub_with_last_id_recovers_channel_history() {
    let t = start(config()).await;
    for id in 1..=4 {
        t.backend.store_channel("hist", msg(id, Some("hist")));
    }
    let mut c = auth_with(
        &t,
        Transport::WsBin,
        with_channels("h", &["hist"]),
        None,
        None,
    )
    .await;
    c.send(&ClientFrame::Sub {
        seq: None,
        channel: "hist".into(),
        last_id: Some(MsgId(2)),
        presence: false,
    })
    .await;
    assert!(matches!(c.frame().await, ServerFrame::SubOk { .. }));
    let a = c.msg().await;
    let b = c.msg().await;
    assert_eq!((a.id.0, b.id.0), (3, 4));
    assert_eq!(a.channel.as_deref(), Some("hist"));
}

#[tokio::test]
async fn broadcast_reaches_every_authenticated_connection() {
    let t = start(config()).await;
    let mut a = t.authed(Transport::WsJson, "b1", None).await;
    let mut b = t.authed(Transport::WsBin, "b1", Some("x")).await;
    let mut c = t.authed(Transport::Tcp, "b2", None).await;
    let _unauthenticated = t.client(Transport::Tcp).await;
    let fanned = t.room.broadcast(&encoded(100, None));
    assert_eq!((fanned.total(), fanned.skipped), (3, 0), "{fanned:?}");
    for cl in [&mut a, &mut b, &mut c] {
        assert_eq!(cl.msg().await.id.0, 100);
    }
    // Once read by all three, every session has written it.
    let written = proto::BroadcastProgress {
        delivered: 3,
        skipped: 0,
        pending: 0,
    };
    t.wait_until("written by all three", |t| {
        t.room.broadcast_progress(proto::MsgId(100)) == Some(written)
    })
    .await;
    // The same broadcast again (a retried call) is not sent twice: the
    // next frame is the pong.
    assert_eq!(t.room.broadcast(&encoded(100, None)), written);
    a.send(&ping(7)).await;
    assert_eq!(a.frame().await, ServerFrame::Pong { seq: Some(7) });
    assert_eq!(t.room.connections(), 3);
    assert_eq!(t.room.users(), 2);
}

#[tokio::test]
async fn metrics_text_has_every_family() {
    let t = start(config()).await;
    let mut c = t.authed(Transport::WsJson, "m", None).await;
    c.roundtrip(1).await;
    // frames_out is counted after the flush, which may finish after the client reads.
    t.wait_until("2 frames out", |t| {
        t.metric("pushgate_room_frames_out_total") == 2
    })
    .await;
    let text = t.metrics();
    for name in [
        "pushgate_room_connections 1",
        "pushgate_room_users 1",
        "pushgate_room_channels 0",
        "pushgate_room_frames_in_total 2",
        "pushgate_room_frames_out_total 2",
        "pushgate_room_deliveries_total 0",
        "pushgate_room_drops_total{reason=\"queue_full\"} 0",
        "pushgate_room_closes_total{code=\"4001\"} 0",
        "pushgate_room_auth_failures_total{reason=\"token\"} 0",
        "pushgate_room_replayed_total 0",
        "pushgate_room_queue_full_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == name),
            "missing {name:?} in\n{text}"
        );
    }
}
