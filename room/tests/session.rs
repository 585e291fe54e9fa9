//! Session life: heartbeats, bad input, rate limit, kick, slow consumer, drain.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use proto::{ErrorCode, ServerFrame, UserId};

#[tokio::test]
async fn silent_client_is_closed_4003() {
    let mut cfg = config();
    cfg.heartbeat = Duration::from_millis(150);
    let t = start(cfg).await;
    for tr in ALL {
        let mut c = t.authed(tr, "quiet", None).await;
        c.expect_close(ErrorCode::HeartbeatTimeout, 4003).await;
    }
    t.wait_until("all gone", |t| t.room.connections() == 0)
        .await;
}

#[tokio::test]
async fn pings_keep_a_connection_alive_past_the_heartbeat_timeout() {
    let mut cfg = config();
    cfg.heartbeat = Duration::from_millis(150);
    let t = start(cfg).await;
    let mut clients = Vec::new();
    for tr in ALL {
        clients.push(t.authed(tr, "lively", None).await);
    }
    // 1.2 s of pings every 100 ms: four times the 300 ms idle limit.
    for seq in 0..12 {
        for c in &mut clients {
            c.roundtrip(seq).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(t.room.connections(), 3);
}

#[tokio::test]
async fn oversized_frame_is_frame_too_large_4004() {
    let t = start(config()).await; // max_frame 4096
    for tr in ALL {
        let mut c = t.authed(tr, "big", None).await;
        let huge = format!("{{\"op\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(10_000));
        match tr {
            Transport::Tcp => {
                // A length prefix announcing 10 000 bytes is refused at once.
                let mut out = Vec::new();
                proto::binary::write_len(10_000, &mut out);
                out.extend_from_slice(&[0u8; 64]);
                c.send_raw(&out).await;
            }
            _ => c.send_raw(huge.as_bytes()).await,
        }
        c.expect_close(ErrorCode::FrameTooLarge, 4004).await;
    }
}

#[tokio::test]
async fn oversized_auth_frame_is_refused_before_auth() {
    let t = start(config()).await;
    let mut c = t.client(Transport::WsJson).await;
    let huge = format!("{{\"op\":\"auth\",\"token\":\"{}\"}}", "x".repeat(8_000));
    c.send_raw(huge.as_bytes()).await;
    c.expect_close(ErrorCode::FrameTooLarge, 4004).await;
}

#[tokio::test]
async fn malformed_frames_are_bad_frame_4004() {
    let t = start(config()).await;
    let cases: [(Transport, &[u8]); 4] = [
        (Transport::WsJson, b"{not json"),
        (Transport::WsJson, b"{\"op\":\"fly\"}"),
        (Transport::WsBin, &[0xEE, 1, 2]),
        (Transport::Tcp, &[3, 0xEE, 1, 2]),
    ];
    for (tr, bytes) in cases {
        let mut c = t.authed(tr, "sloppy", None).await;
        c.send_raw(bytes).await;
        c.expect_close(ErrorCode::BadFrame, 4004).await;
    }
    // Other clients never notice.
    let mut ok = t.authed(Transport::WsJson, "fine", None).await;
    ok.roundtrip(1).await;
}

#[tokio::test]
async fn flooding_client_is_rate_limited_4004() {
    let mut cfg = config();
    cfg.rate_limit = 5; // burst 10
    let t = start(cfg).await;
    for tr in [Transport::WsJson, Transport::Tcp] {
        let mut c = t.authed(tr, "flood", None).await;
        for seq in 0..40 {
            c.send(&ping(seq)).await;
        }
        c.expect_close(ErrorCode::RateLimited, 4004).await;
    }
    // A client within its budget is fine.
    let mut calm = t.authed(Transport::WsBin, "calm", None).await;
    for seq in 0..5 {
        calm.roundtrip(seq).await;
    }
}

#[tokio::test]
async fn kick_closes_every_connection_of_the_user_4005() {
    let t = start(config()).await;
    let mut a = t.authed(Transport::WsJson, "kicked", Some("a")).await;
    let mut b = t.authed(Transport::Tcp, "kicked", Some("b")).await;
    let mut other = t.authed(Transport::WsBin, "stays", None).await;
    assert_eq!(t.room.kick_user(&UserId::new("kicked")), 2);
    a.expect_close(ErrorCode::Kicked, 4005).await;
    b.expect_close(ErrorCode::Kicked, 4005).await;
    other.roundtrip(1).await;
    t.wait_until("kicked gone", |t| t.room.connections() == 1)
        .await;
    assert_eq!(t.room.kick_user(&UserId::new("kicked")), 0);
    assert_eq!(t.room.users(), 1);
}

/// Issue 13: the queue was bounded by count only, so a client that never
/// reads could pin `send_queue` × the largest push (≈ 0.5 GB at the
/// defaults). Now it is bounded in bytes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_queue_is_bounded_in_bytes() {
    let mut cfg = config();
    cfg.send_queue = 100_000; // never the limit here
    cfg.send_queue_bytes = 256 * 1024;
    let t = start(cfg).await;
    let _slow = t.authed(Transport::Tcp, "slowbytes", None).await;
    // 60 KB pushes: once the socket buffers (a few MB) are full, the queue
    // takes at most ~4 of them. By count alone all 2,000 (120 MB) would queue.
    let mut refused_at = None;
    for i in 0..2_000 {
        if t.room
            .deliver_users(&[UserId::new("slowbytes")], &big(i, 60_000))
            == 0
        {
            refused_at = Some(i);
            break;
        }
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(
        refused_at.is_some(),
        "2,000 pushes of 60 KB queued for a client that never reads"
    );
    assert_eq!(t.metric("pushgate_room_queue_full_total"), 1);
    t.wait_until("slow gone", |t| t.room.connections() == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_4006_while_others_keep_receiving() {
    let mut cfg = config();
    cfg.send_queue = 8;
    let t = start(cfg).await;
    for tr in [Transport::WsJson, Transport::Tcp] {
        let mut slow = t.authed(tr, "slow", None).await;
        let mut fast = t.authed(Transport::WsBin, "fast", None).await;
        let before = t.metric("pushgate_room_queue_full_total");
        // The slow client never reads: its socket buffers fill, its session's
        // write stalls, its queue overflows.
        let mut refused = false;
        for i in 0..20_000 {
            if t.room
                .deliver_users(&[UserId::new("slow")], &big(i, 60_000))
                == 0
            {
                refused = true;
                break;
            }
            if i % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        assert!(refused, "{tr:?}: the slow queue never overflowed");
        assert!(t.metric("pushgate_room_queue_full_total") > before);
        // The fast client on the same room is unaffected.
        for id in 1..=20 {
            assert_eq!(
                t.room
                    .deliver_users(&[UserId::new("fast")], &encoded(id, None)),
                1
            );
            assert_eq!(fast.msg().await.id.0, id);
        }
        t.wait_until("slow gone", |t| t.room.connections() == 1)
            .await;
        // Reading now: whatever was buffered, then (if it fitted) the 4006 close.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match slow.recv().await {
                    Event::Frame(ServerFrame::Error { close, code, .. }) => {
                        assert_eq!(code, ErrorCode::SlowConsumer);
                        assert_eq!(close.map(|c| c.as_u16()), Some(4006));
                    }
                    Event::Frame(_) => {}
                    Event::Close { code, .. } => {
                        assert_eq!(code, 4006);
                        break;
                    }
                    Event::Eof => break,
                }
            }
        })
        .await;
        drop(fast);
        t.wait_until("all gone", |t| t.room.connections() == 0)
            .await;
    }
    // Counted once the final frames are out (or their grace ran out).
    t.wait_until("two 4006 closes", |t| {
        t.metric("pushgate_room_closes_total{code=\"4006\"}") == 2
    })
    .await;
}

#[tokio::test]
async fn drain_closes_everyone_4007_with_a_jittered_delay_and_stops_accepting() {
    let t = start(config()).await; // drain_reconnect_delay 1000 ms
    let mut clients = Vec::new();
    for tr in ALL {
        clients.push(t.authed(tr, "d", None).await);
    }
    // One that has not authenticated yet is told too.
    let mut pending = t.client(Transport::Tcp).await;
    let room = t.room.clone();
    let drained = tokio::spawn(async move { room.drain(Duration::from_secs(5)).await });
    for c in &mut clients {
        let reason = c.expect_close(ErrorCode::Draining, 4007).await;
        let ms: u64 = reason
            .strip_prefix("draining reconnect_after_ms=")
            .unwrap_or_else(|| panic!("reason {reason:?}"))
            .parse()
            .unwrap();
        assert!(ms <= 1000, "{ms}");
    }
    pending.expect_close(ErrorCode::Draining, 4007).await;
    assert!(drained.await.unwrap(), "drain finished in time");
    assert_eq!(t.room.connections(), 0);
    // Nothing is accepted any more.
    let refused = ws_connect(t.ws, "/ws", None).await;
    assert!(refused.is_err(), "accepted after drain");
}

#[tokio::test]
async fn connections_per_user_are_capped_when_asked() {
    let mut cfg = config();
    cfg.max_user_connections = 2;
    let t = start(cfg).await;
    let a = t.authed(Transport::WsJson, "capped", None).await;
    let _b = t.authed(Transport::Tcp, "capped", None).await;
    // A third connection of the same user is refused after auth, like a bad token.
    let mut c = t.client(Transport::WsBin).await;
    c.send(&auth(token("capped"))).await;
    c.expect_close(ErrorCode::TooManyConnections, 4001).await;
    // Other users are not affected.
    let _other = t.authed(Transport::WsJson, "someone-else", None).await;
    // Once one closes, the user may connect again.
    drop(a);
    t.wait_until("one gone", |t| t.room.connections() == 2)
        .await;
    let _again = t.authed(Transport::WsJson, "capped", None).await;
    assert_eq!(t.room.connections(), 3);
}
