//! Hostile clients: garbage on every listener must not hurt well-behaved clients,
//! and every offender must be closed.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Server, Transport};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn junk(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads until the server closes (EOF or reset). Returns whether it did within `limit`.
async fn server_closes(mut s: TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// One hostile connection of kind `k % 10`; returns a description when the server did not close it.
async fn hostile(k: usize, tcp: SocketAddr, ws: SocketAddr, secret: String) -> Result<(), String> {
    let limit = Duration::from_secs(8);
    let kind = k % 10;
    let what =
        |w: &str| format!("hostile #{k} ({w}) was not closed by the server within {limit:?}");
    match kind {
        0 | 1 => {
            // Random bytes on TCP / on the WebSocket port.
            let addr = if kind == 0 { tcp } else { ws };
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let _ = s.write_all(&junk(k as u64 + 1, 3000)).await;
            if !server_closes(s, limit).await {
                return Err(what("random bytes"));
            }
        }
        2 => {
            // A length prefix announcing 64 MB.
            let mut s = TcpStream::connect(tcp).await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            proto::binary::write_len(64 << 20, &mut out);
            let _ = s.write_all(&out).await;
            if !server_closes(s, limit).await {
                return Err(what("huge length prefix"));
            }
        }
        3 => {
            // Slowloris: one byte of a frame every 100 ms.
            let mut s = TcpStream::connect(tcp).await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            proto::binary::write_len(200, &mut out);
            out.extend_from_slice(&[1u8; 200]);
            let start = Instant::now();
            for b in out {
                if s.write_all(&[b]).await.is_err() || start.elapsed() > limit {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if start.elapsed() > limit {
                return Err(what("slowloris"));
            }
        }
        4 => {
            // Connect and say nothing (TCP and WS port alternately).
            let addr = if k % 20 < 10 { tcp } else { ws };
            let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            if !server_closes(s, limit).await {
                return Err(what("idle socket"));
            }
        }
        5 => {
            // Bad HTTP on the WebSocket listener.
            let mut s = TcpStream::connect(ws).await.map_err(|e| e.to_string())?;
            let _ = s
                .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await;
            if !server_closes(s, limit).await {
                return Err(what("upgrade without key"));
            }
        }
        6 => {
            // Endless header.
            let mut s = TcpStream::connect(ws).await.map_err(|e| e.to_string())?;
            let _ = s.write_all(b"GET /ws HTTP/1.1\r\nX: ").await;
            let start = Instant::now();
            loop {
                let wrote =
                    tokio::time::timeout(Duration::from_millis(500), s.write_all(&[b'a'; 1024]))
                        .await;
                if let Ok(Err(_)) = wrote {
                    break;
                }
                if start.elapsed() > limit {
                    return Err(what("endless header"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        7 | 8 => {
            // A WebSocket that sends garbage frames / a bad token.
            let stream = TcpStream::connect(ws).await.map_err(|e| e.to_string())?;
            let proto = if kind == 7 {
                "pushgate.v1.json"
            } else {
                "pushgate.v1.bin"
            };
            let mut w = common::ws_handshake(stream, ws, Some(proto))
                .await
                .map_err(|e| e.to_string())?;
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::Message;
            let m = if kind == 7 {
                Message::text(String::from_utf8_lossy(&junk(k as u64, 200)).into_owned())
            } else {
                let mut out = Vec::new();
                let token =
                    common::mint(&(secret + "x"), "evil", None, None, common::now_secs() + 60);
                proto::binary::encode_client(
                    &proto::ClientFrame::Auth {
                        seq: None,
                        token,
                        last_id: None,
                        device: None,
                    },
                    &mut out,
                );
                Message::binary(out)
            };
            let _ = w.send(m).await;
            let closed = tokio::time::timeout(limit, async {
                while let Some(Ok(m)) = w.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            })
            .await;
            if closed.is_err() {
                return Err(what("garbage websocket frames"));
            }
        }
        _ => {
            // Connect and hang up at once.
            let s = TcpStream::connect(if k % 2 == 0 { tcp } else { ws })
                .await
                .map_err(|e| e.to_string())?;
            drop(s);
        }
    }
    Ok(())
}

#[tokio::test]
async fn fifty_hostile_connections_do_not_hurt_good_clients() {
    let s = Server::start(&["--auth-timeout", "1", "--max-frame", "4096"]).await;
    let (mut good_ws, _) = s.login(Transport::WsBin, "good", "a").await;
    let (mut good_tcp, _) = s.login(Transport::Tcp, "good", "b").await;

    let tasks: Vec<_> = (0..50)
        .map(|k| tokio::spawn(hostile(k, s.tcp, s.ws, s.secret.clone())))
        .collect();

    let mut sent = Vec::new();
    for i in 0..50 {
        let r = s.push_users(&["good"], json!({"i": i})).await;
        assert_eq!(r["delivered"], 2, "push {i} while under attack: {r}");
        sent.push(r["id"].as_i64().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        common::ids(&good_ws.msgs(50).await),
        sent,
        "ws client lost messages under attack"
    );
    assert_eq!(
        common::ids(&good_tcp.msgs(50).await),
        sent,
        "tcp client lost messages under attack"
    );

    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.expect("hostile task panicked") {
            errors.push(e);
        }
    }
    assert!(
        errors.is_empty(),
        "offenders not closed:\n{}",
        errors.join("\n")
    );

    // Still healthy, still only two authenticated connections.
    assert!(good_ws.ping_sync(1).await.is_empty());
    assert!(good_tcp.ping_sync(1).await.is_empty());
    let (st, _) = s.raw("GET", "/healthz", None, None, None).await;
    assert_eq!(st, 200);
    let v = s.stats().await;
    assert_eq!(v["connections"], 2, "{v}");
    // New clients are still welcome.
    let (mut late, _) = s.login(Transport::WsJson, "late", "d").await;
    let id = s.push_id(&["late"], json!(1)).await;
    assert_eq!(late.next_msg().await["id"], id);
}

/// A flood of pings from one client does not starve another client's pushes.
#[tokio::test]
async fn ping_flood_does_not_starve_others() {
    let s = Server::start(&["--rate-limit", "100"]).await;
    let (mut good, _) = s.login(Transport::WsJson, "calm", "d").await;
    let (mut flood, _) = s.login(Transport::Tcp, "flood", "d").await;
    for i in 0..2000u32 {
        flood.send(&proto::ClientFrame::Ping { seq: Some(i) }).await;
    }
    let id = s.push_id(&["calm"], json!("through")).await;
    assert_eq!(good.next_msg().await["id"], id);
    // The flooder is rate limited: an error rate_limited (and possibly a close), never a crash.
    let mut saw_limit = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match flood.recv(Duration::from_millis(500)).await {
            Some(common::Event::Frame(f)) if f["op"] == "error" => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                saw_limit = true;
                break;
            }
            Some(common::Event::Frame(_)) => {}
            Some(common::Event::Closed { .. }) | None => break,
        }
    }
    assert!(
        saw_limit,
        "2000 pings at once with --rate-limit 100 must get error rate_limited"
    );
    assert!(good.ping_sync(9).await.is_empty());
}

/// Reads what the server sends until it closes or `limit` passes; `None`
/// when it is still open then.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Slowloris on the REST listener: 300 connections that each send one byte
/// of a request and then nothing. Meanwhile the API and new WebSocket
/// clients are served, and every one of them is closed after the header
/// timeout (2 s here), unanswered.
#[tokio::test]
async fn http_slowloris_is_closed_after_the_header_timeout() {
    let s = Server::start(&["--http-header-timeout", "2"]).await;
    let mut lorises = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(s.http).await.unwrap();
        c.write_all(b"G").await.unwrap();
        lorises.push(c);
    }
    // Meanwhile: the REST API answers, and a new client connects and gets a push.
    let v = s.stats().await;
    assert!(v["connections"].is_number(), "{v}");
    let (mut ws, _) = s.login(Transport::WsJson, "loris-victim", "d").await;
    let id = s.push_id(&["loris-victim"], json!("still here")).await;
    assert_eq!(ws.next_msg().await["id"], id);
    // Every slow connection is closed, without an answer.
    let closes = lorises
        .into_iter()
        .map(|mut c| async move { read_to_close(&mut c, Duration::from_secs(10)).await });
    let results = futures_util::future::join_all(closes).await;
    let open = results.iter().filter(|r| r.is_none()).count();
    assert_eq!(
        open, 0,
        "{open} of 300 slowloris connections still open after 10 s"
    );
    let answered = results.iter().flatten().filter(|b| !b.is_empty()).count();
    assert_eq!(answered, 0, "an unfinished request was answered");
    // And afterwards, as before.
    let (st, _) = s.raw("GET", "/healthz", None, None, None).await;
    assert_eq!(st, 200);
}

/// Over `--http-max-conns` a new HTTP connection is closed at once, even
/// with a complete request; once the slow ones time out, requests are
/// served again.
#[tokio::test]
async fn http_connections_over_the_cap_are_closed_at_once() {
    let s = Server::start(&["--http-max-conns", "8", "--http-header-timeout", "3"]).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(s.http).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    let mut extra = TcpStream::connect(s.http).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = read_to_close(&mut extra, Duration::from_secs(2)).await;
    assert_eq!(
        got.as_deref(),
        Some(&b""[..]),
        "the 9th connection must be closed unanswered while 8 are held"
    );
    // The held ones time out; then the API answers again.
    for mut c in held {
        assert!(read_to_close(&mut c, Duration::from_secs(10))
            .await
            .is_some());
    }
    let (st, body) = s.raw("GET", "/healthz", None, None, None).await;
    assert_eq!(st, 200, "{body}");
}

/// `--max-conns-per-ip 6`, counted over every listener together: with three
/// WebSocket and three TCP connections held, one more from the same address
/// is refused on either listener (WebSocket: HTTP 429; TCP: error
/// `overloaded` with close 4007, and why), the six keep working, and a slot
/// comes back when one of them ends.
#[tokio::test]
async fn connections_per_address_are_limited() {
    use tokio_tungstenite::tungstenite::Error as WsError;
    // Six per address, counted over every listener together: three
    // WebSocket and three TCP connections fill it.
    let s = Server::start(&["--max-conns-per-ip", "6"]).await;
    let mut ws = Vec::new();
    let mut tcp = Vec::new();
    for i in 0..3 {
        ws.push(s.login(Transport::WsJson, &format!("ipw{i}"), "d").await.0);
        tcp.push(s.login(Transport::Tcp, &format!("ipt{i}"), "d").await.0);
    }
    // One more WebSocket: refused at the handshake with 429.
    let stream = TcpStream::connect(s.ws).await.unwrap();
    match common::ws_handshake(stream, s.ws, Some("pushgate.v1.json")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 429, "{resp:?}"),
        Err(e) => panic!("seventh connection (websocket): expected HTTP 429, got {e}"),
        Ok(_) => panic!("a seventh connection from one address was accepted"),
    }
    // One more TCP connection: the final error frame says why.
    let mut c = s.connect(Transport::Tcp).await;
    let (code, _, frames) = c.closed(Duration::from_secs(5)).await;
    assert_eq!(code, Some(4007), "{frames:?}");
    let err = frames.iter().find(|f| f["op"] == "error").cloned();
    assert_eq!(
        err.map(|e| (e["code"].clone(), e["message"].clone())),
        Some((
            json!("overloaded"),
            json!("too many connections from this address")
        )),
        "{frames:?}"
    );
    // The six keep working.
    for c in ws.iter_mut().chain(tcp.iter_mut()) {
        assert!(c.ping_sync(5).await.is_empty());
    }
    // One leaves: its slot comes back.
    ws.pop().unwrap().close().await;
    let mut back = None;
    for _ in 0..100 {
        let stream = TcpStream::connect(s.ws).await.unwrap();
        if let Ok(w) = common::ws_handshake(stream, s.ws, Some("pushgate.v1.json")).await {
            back = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut back = common::Client::from_ws(back.expect("a slot came back within 5 s"), false);
    back.auth(&s.token("ipback"), None, None).await;
}
