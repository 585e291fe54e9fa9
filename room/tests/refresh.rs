//! Token expiry and `refresh` on every transport: a connection lives under
//! its token's `exp` plus the grace period, and a `refresh` with a valid
//! token of the same user moves that deadline and replaces the channel
//! grants; anything else is refused with `forbidden` and changes nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use proto::{ClientFrame, ErrorCode, ServerFrame};

fn refresh(seq: u32, token: String) -> ClientFrame {
    ClientFrame::Refresh {
        seq: Some(seq),
        token,
    }
}

/// A token for `user` that expires `secs` from now.
fn token_for(user: &str, secs: u64) -> String {
    let mut c = claims(user);
    c.exp = now_secs() + secs;
    mint(&c)
}

/// Expects `error` `forbidden` answering `seq`, and returns its message.
async fn forbidden(c: &mut Client, seq: u32) -> String {
    match c.frame().await {
        ServerFrame::Error {
            seq: s,
            code: ErrorCode::Forbidden,
            message,
            close: None,
        } => {
            assert_eq!(s, Some(seq));
            message
        }
        other => panic!("expected a non-fatal forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn refresh_answers_the_new_exp_on_every_transport() {
    let t = start(config()).await;
    for tr in ALL {
        let mut c = t.authed(tr, "alice", None).await;
        let mut new = claims("alice");
        new.exp = now_secs() + 7200;
        c.send(&refresh(4, mint(&new))).await;
        match c.frame().await {
            ServerFrame::RefreshOk { seq, exp } => {
                assert_eq!(seq, Some(4), "{tr:?}");
                assert_eq!(exp, new.exp, "{tr:?}");
            }
            other => panic!("{tr:?}: expected refresh_ok, got {other:?}"),
        }
        c.roundtrip(5).await;
    }
    assert!(t
        .metrics()
        .contains("pushgate_room_token_refreshes_total{outcome=\"ok\"} 3"));
}

#[tokio::test]
async fn refused_refreshes_are_not_fatal_and_change_nothing() {
    let mut cfg = config();
    cfg.token_grace = Duration::ZERO;
    let t = start(cfg).await;
    for tr in ALL {
        // The token in force expires in 3 s; every refused refresh must
        // leave that deadline where it is.
        let mut c = t.client(tr).await;
        c.send(&auth(token_for("alice", 3))).await;
        assert!(matches!(c.frame().await, ServerFrame::AuthOk { .. }));

        c.send(&refresh(1, token_for("mallory", 3600))).await;
        assert_eq!(
            forbidden(&mut c, 1).await,
            "refresh refused: the token names another user"
        );

        let mut old = claims("alice");
        old.exp = now_secs() - 5;
        c.send(&refresh(2, mint(&old))).await;
        assert_eq!(forbidden(&mut c, 2).await, "refresh refused: token expired");

        let other_secret = proto::token::mint(&claims("alice"), b"another secret").unwrap();
        c.send(&refresh(3, other_secret)).await;
        let text = forbidden(&mut c, 3).await;
        assert!(text.starts_with("refresh refused: invalid token"), "{text}");

        c.send(&refresh(4, "not a jwt".into())).await;
        forbidden(&mut c, 4).await;

        // Still usable...
        c.roundtrip(5).await;
        // ...until the old deadline: refused tokens moved nothing.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        c.send(&ping(6)).await;
        let reason = c.expect_close(ErrorCode::TokenExpired, 4008).await;
        assert_eq!(reason, "token expired", "{tr:?}");
    }
    assert!(t
        .metrics()
        .contains("pushgate_room_token_refreshes_total{outcome=\"refused\"} 12"));
    t.wait_until("three 4008 closes counted", |t| {
        t.metrics()
            .contains("pushgate_room_closes_total{code=\"4008\"} 3")
    })
    .await;
}

#[tokio::test]
async fn an_expired_token_closes_with_4008_after_the_grace_and_a_refresh_keeps_it_open() {
    let mut cfg = config();
    cfg.token_grace = Duration::from_secs(2);
    let t = start(cfg).await;
    // exp is in whole seconds: 2 s from now is 1 to 2 s of real time, and
    // with 2 s of grace the connection closes 3 to 4 s from here.
    let mut lapsing = t.client(Transport::Tcp).await;
    lapsing.send(&auth(token_for("bob", 2))).await;
    assert!(matches!(lapsing.frame().await, ServerFrame::AuthOk { .. }));
    let mut kept = t.client(Transport::WsJson).await;
    kept.send(&auth(token_for("carol", 2))).await;
    assert!(matches!(kept.frame().await, ServerFrame::AuthOk { .. }));
    kept.send(&refresh(2, token_for("carol", 3600))).await;
    assert!(matches!(kept.frame().await, ServerFrame::RefreshOk { .. }));

    // Within the grace (past exp at the latest by now): still served.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    lapsing.roundtrip(3).await;
    // Past exp + grace: the next frame closes it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    lapsing.send(&ping(4)).await;
    lapsing.expect_close(ErrorCode::TokenExpired, 4008).await;
    // The refreshed one lives on under its new token.
    kept.roundtrip(5).await;
    assert_eq!(t.room.connections(), 1);
}

#[tokio::test]
async fn a_refresh_replaces_the_channel_grants() {
    let t = start(config()).await;
    let mut c = t.client(Transport::WsBin).await;
    let mut first = claims("dave");
    first.channels = Some(vec!["news".into()]);
    c.send(&auth(mint(&first))).await;
    assert!(matches!(c.frame().await, ServerFrame::AuthOk { .. }));
    let sub = |seq, ch: &str| ClientFrame::Sub {
        seq: Some(seq),
        channel: ch.into(),
        last_id: None,
        presence: false,
    };
    c.send(&sub(1, "news")).await;
    assert!(matches!(c.frame().await, ServerFrame::SubOk { .. }));

    let mut second = claims("dave");
    second.channels = Some(vec!["chat:*".into()]);
    c.send(&refresh(2, mint(&second))).await;
    assert!(matches!(c.frame().await, ServerFrame::RefreshOk { .. }));
    // The new grants apply to the subs that follow...
    c.send(&sub(3, "chat:42")).await;
    assert!(matches!(c.frame().await, ServerFrame::SubOk { .. }));
    c.send(&sub(4, "sports")).await;
    match c.frame().await {
        ServerFrame::Error { code, seq, .. } => {
            assert_eq!((code, seq), (ErrorCode::ChannelForbidden, Some(4)));
        }
        other => panic!("{other:?}"),
    }
    // ...and channels already subscribed stay subscribed.
    t.room.publish_channel("news", &encoded(10, Some("news")));
    assert_eq!(c.msg().await.id.0, 10);
}
