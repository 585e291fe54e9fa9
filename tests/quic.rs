//! QUIC end to end: a minimal quinn client written here (ALPN `pushgate/1`,
//! one bidirectional stream of length-prefixed binary frames) against the
//! real binary: auth, push, ping, limits, close codes, drain, connection
//! migration; and an independent client (Python aioquic).
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    data_dir_cert, quic_client, quic_connect, quic_endpoint, FrameClient, Server, QUIC_ALPN,
};
use proto::ClientFrame;
use serde_json::json;

/// The application close code of a closed QUIC connection, if it was closed that way.
async fn app_close(conn: &quinn::Connection) -> Option<(u64, String)> {
    let e = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("connection closed within 5 s");
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => Some((
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn quic_auth_push_ping() {
    let s = Server::start(&["--heartbeat", "7"]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (_conn, mut c) = quic_client(&ep, s.quic_addr()).await;
    let ok = c.auth(&s.token("qalice")).await;
    assert_eq!(ok["user"], "qalice", "{ok}");
    assert_eq!(ok["heartbeat"], 7, "{ok}");
    assert_eq!(ok["seq"], 1, "{ok}");
    s.wait_online("qalice", true).await;

    let r = s.push_users(&["qalice"], json!({"hello": "quic"})).await;
    let m = c.next().await;
    assert_eq!(m["op"], "msg", "{m}");
    assert_eq!(m["id"], r["id"], "{m} vs {r}");
    assert_eq!(m["data"], json!({"hello": "quic"}));

    for seq in [5u32, 0, u32::MAX] {
        assert!(c.ping_sync(seq).await.is_empty());
    }
    // The server counts it as a QUIC connection.
    let (_, metrics) = s.raw("GET", "/metrics", None, None, None).await;
    assert!(
        metrics.contains("pushgate_room_accepted_total{transport=\"quic\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn quic_oversized_frame_closes_4004() {
    let s = Server::start(&["--max-frame", "1024"]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (conn, mut c) = quic_client(&ep, s.quic_addr()).await;
    c.auth(&s.token("qbig")).await;
    // A length prefix announcing 1025 bytes: refused before the body.
    let mut prefix = Vec::new();
    proto::binary::write_len(1025, &mut prefix);
    c.send_raw(&prefix).await;
    let v = c.next().await;
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["code"], "frame_too_large", "{v}");
    assert_eq!(v["close"], 4004, "{v}");
    assert!(
        c.recv(Duration::from_secs(3)).await.is_none(),
        "stream must end"
    );
    let (code, _) = app_close(&conn)
        .await
        .expect("closed by the server with an application code");
    assert_eq!(code, 4004, "the QUIC close code is the pushgate close code");
}

#[tokio::test]
async fn quic_refresh_and_token_expiry_4008() {
    let s = Server::start(&["--token-grace", "0"]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (conn, mut c) = quic_client(&ep, s.quic_addr()).await;
    let soon = common::now_secs() + 2;
    c.auth(&common::mint(&s.secret, "qexp", None, None, soon))
        .await;
    // Another user's token is refused, not fatal, and changes nothing.
    c.send(&ClientFrame::Refresh {
        seq: Some(2),
        token: s.token("mallory"),
    })
    .await;
    let v = c.next().await;
    assert_eq!(v["code"], "forbidden", "{v}");
    assert_eq!(v["seq"], 2, "{v}");
    assert!(v.get("close").is_none(), "{v}");
    assert!(c.ping_sync(3).await.is_empty());
    tokio::time::sleep(Duration::from_millis(3100)).await;
    c.send(&ClientFrame::Ping { seq: Some(4) }).await;
    let v = c.next().await;
    assert_eq!(v["code"], "token_expired", "{v}");
    assert_eq!(v["close"], 4008, "{v}");
    assert_eq!(app_close(&conn).await.map(|c| c.0), Some(4008));
}

#[tokio::test]
async fn quic_bad_token_closes_4001() {
    let s = Server::start(&[]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (conn, mut c) = quic_client(&ep, s.quic_addr()).await;
    c.send(&ClientFrame::Auth {
        seq: Some(1),
        token: "not.a.jwt".into(),
        last_id: None,
        device: None,
    })
    .await;
    let v = c.next().await;
    assert_eq!(v["code"], "auth_failed", "{v}");
    assert_eq!(v["close"], 4001, "{v}");
    assert_eq!(app_close(&conn).await.map(|c| c.0), Some(4001));
}

#[tokio::test]
async fn quic_refuses_wrong_alpn_and_untrusted_certificate() {
    let s = Server::start(&[]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[b"h3"]);
    let e = quic_connect(&ep, s.quic_addr()).await.err();
    assert!(e.is_some(), "a client offering only ALPN h3 was accepted");
    let other = common::TestCa::new("someone else");
    let ep = quic_endpoint(&[&other.pem], &[QUIC_ALPN]);
    let e = quic_connect(&ep, s.quic_addr()).await.err();
    let text = format!("{e:?}");
    assert!(
        e.is_some(),
        "a client that does not trust the certificate connected"
    );
    assert!(
        text.contains("UnknownIssuer") || text.to_lowercase().contains("certificate"),
        "unexpected error: {text}"
    );
}

/// The client rebinds its UDP socket mid-session: pushes before, during and
/// after the move all arrive on the same session, with no new auth.
#[tokio::test]
async fn quic_connection_migration_keeps_the_session() {
    let s = Server::start(&[]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (conn, mut c) = quic_client(&ep, s.quic_addr()).await;
    let ok = c.auth(&s.token("mover")).await;
    s.wait_visible("mover", &ok).await;

    let before = s.push_id(&["mover"], json!("before")).await;
    assert_eq!(c.next().await["id"], before);

    let old_addr = ep.local_addr().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    ep.rebind(socket).unwrap();
    let new_addr = ep.local_addr().unwrap();
    assert_ne!(old_addr.port(), new_addr.port(), "rebind kept the port");

    // Pushed while the client has not yet sent anything from its new address.
    let during = s.push_id(&["mover"], json!("during")).await;
    let m = c.next().await;
    assert_eq!(m["id"], during, "{m}");
    // The session goes on from the new address.
    assert!(c.ping_sync(7).await.is_empty());
    let after = s.push_id(&["mover"], json!("after")).await;
    let m = c.next().await;
    assert_eq!(m["id"], after, "{m}");
    assert_eq!(m["data"], "after");

    // Still the one connection that authenticated at first: no re-auth.
    let u = s.user("mover").await;
    let conns = u["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{u}");
    assert_eq!(
        common::id_text(&conns[0]["conn"]),
        common::id_text(&ok["conn"]),
        "{u}"
    );
    assert!(
        conn.close_reason().is_none(),
        "connection closed: {:?}",
        conn.close_reason()
    );
    // Then back again, for good measure.
    ep.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let again = s.push_id(&["mover"], json!("again")).await;
    assert_eq!(c.next().await["id"], again);
    assert!(c.ping_sync(8).await.is_empty());
}

#[tokio::test]
async fn quic_drain_closes_with_4007() {
    let mut s = Server::start(&["--drain-timeout", "5"]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (conn, mut c) = quic_client(&ep, s.quic_addr()).await;
    c.auth(&s.token("qdrain")).await;
    s.sigterm();
    let v = c.next().await;
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["code"], "draining", "{v}");
    assert_eq!(v["close"], 4007, "{v}");
    let (code, reason) = app_close(&conn).await.expect("application close");
    assert_eq!(code, 4007);
    assert!(
        reason.starts_with("draining reconnect_after_ms="),
        "{reason:?}"
    );
    let st = s.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(st.code(), Some(0));
}

/// The QUIC idle timeout follows the heartbeat: a client that goes silent
/// gets the session's heartbeat timeout (4003, with its error frame) first.
#[tokio::test]
async fn quic_silent_client_gets_heartbeat_timeout() {
    let s = Server::start(&["--heartbeat", "1"]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (conn, mut c) = quic_client(&ep, s.quic_addr()).await;
    c.auth(&s.token("qquiet")).await;
    let v = c
        .recv(Duration::from_secs(6))
        .await
        .expect("error frame before the QUIC idle timeout");
    assert_eq!(v["code"], "heartbeat_timeout", "{v}");
    assert_eq!(v["close"], 4003, "{v}");
    assert_eq!(app_close(&conn).await.map(|c| c.0), Some(4003));
}

/// The Python that runs the independent client (see `common::python_with`).
fn python() -> PathBuf {
    common::python_with("aioquic", "aioquic")
}

/// An independent implementation (Python aioquic) connects, authenticates
/// with the binary auth frame and receives a push.
#[tokio::test]
async fn aioquic_client_receives_a_push() {
    aioquic_push(&[]).await;
}

/// The same through a Retry (address validation), which aioquic checks
/// (integrity tag, connection ids) with code we did not write.
#[tokio::test]
async fn aioquic_client_answers_a_retry() {
    aioquic_push(&["--quic-retry-above", "0"]).await;
}

async fn aioquic_push(flags: &[&str]) {
    let py = python();
    let s = Server::start(flags).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("py")
        .join("quic_client.py");
    let ca = s.data_dir().join("tls_cert.pem");
    let addr = s.quic_addr();
    let mut child = tokio::process::Command::new(&py)
        .arg(&script)
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--ca", &ca.display().to_string()])
        .args(["--token", &s.token("pyuser"), "--count", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    let n = tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
        .await
        .expect("python client printed auth_ok in time")
        .unwrap();
    assert!(n > 0, "python client ended early");
    let ok: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(ok["op"], "auth_ok", "{line}");
    assert_eq!(ok["user"], "pyuser", "{line}");
    let a = s
        .push_id(&["pyuser"], json!({"n": 1, "text": "héllo"}))
        .await;
    let b = s.push_id(&["pyuser"], json!([1, 2, 3])).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        line.clear();
        tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
            .await
            .expect("python client printed the message in time")
            .unwrap();
        got.push(serde_json::from_str::<serde_json::Value>(line.trim()).unwrap());
    }
    assert_eq!(got[0]["op"], "msg");
    assert_eq!(got[0]["id"], a);
    assert_eq!(got[0]["data"], json!({"n": 1, "text": "héllo"}));
    assert_eq!(got[1]["id"], b);
    assert_eq!(got[1]["data"], json!([1, 2, 3]));
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("python client exits")
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, metrics) = s.raw("GET", "/metrics", None, None, None).await;
    let retried = !flags.is_empty();
    assert!(
        metrics.contains(&format!(
            "pushgate_room_quic_retries_total {}\n",
            u8::from(retried)
        )),
        "{metrics}"
    );
}

/// A frame split across many tiny writes still decodes (the stream is a
/// byte stream, as on TCP).
#[tokio::test]
async fn quic_frames_split_across_writes() {
    let s = Server::start(&[]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (_conn, mut c): (_, FrameClient<_>) = quic_client(&ep, s.quic_addr()).await;
    let mut body = Vec::new();
    proto::binary::encode_client(
        &ClientFrame::Auth {
            seq: Some(3),
            token: s.token("qsplit"),
            last_id: None,
            device: None,
        },
        &mut body,
    );
    let mut out = Vec::new();
    proto::binary::write_len(body.len(), &mut out);
    out.extend_from_slice(&body);
    for b in out.chunks(7) {
        c.send_raw(b).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let v = c.next().await;
    assert_eq!(v["op"], "auth_ok", "{v}");
    assert_eq!(v["seq"], 3, "{v}");
}

/// Cluster mode: `pushgate room --quic --tls-cert --tls-key` (through
/// `dev-cluster --quic --room-args`) serves wss:// and QUIC with the given
/// certificate; a push through the center reaches both. The dev cluster's
/// manifest names the QUIC address (UDP, the WebSocket port number) and the
/// fingerprint.
#[tokio::test]
async fn cluster_room_serves_quic_and_wss() {
    let data = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new("cluster ca");
    let (cert, key) = ca.leaf().write(data.path());
    // A block of ports that is free now (the dev cluster takes base..base+104).
    let base = loop {
        let b = 20_000 + (rand::random::<u16>() % 400) * 100 + 50;
        let free = (0..106u16).all(|o| std::net::TcpListener::bind(("127.0.0.1", b + o)).is_ok());
        if free {
            break b;
        }
    };
    let room_args = format!("--tls-cert {} --tls-key {}", cert.display(), key.display());
    let cluster_data = data.path().join("cluster").display().to_string();
    let manifest = data.path().join("manifest.json");
    let manifest_arg = manifest.display().to_string();
    let args = [
        "dev-cluster",
        "--quic",
        "--manifest",
        &manifest_arg,
        "--rooms",
        "1",
        "--store",
        "embedded",
        "--registers",
        "1",
        "--idgens",
        "1",
        "--base-port",
        &base.to_string(),
        "--data",
        &cluster_data,
        "--room-args",
        &room_args,
    ];
    let (child, lines, stderr) = common::spawn_raw(&args, &[], None).await;
    let pid = child.id().unwrap();
    // Stops the cluster on every exit path (an outright kill would orphan its children).
    struct Term(u32);
    impl Drop for Term {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(self.0.to_string())
                .status();
            for _ in 0..100 {
                if !std::path::Path::new(&format!("/proc/{}/cmdline", self.0)).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _term = Term(pid);
    let value = |p: &str| {
        common::startup_value(&lines, p)
            .unwrap_or_else(|| panic!("no {p:?} in {lines:?}\n{}", stderr.lock()))
    };
    let quic: std::net::SocketAddr = value("[room-1] quic listening on ").parse().unwrap();
    let ws: std::net::SocketAddr = value("[room-1] ws listening on ").parse().unwrap();
    let fp = value("[room-1] tls fingerprint: ");
    assert_eq!(quic, ws, "QUIC (UDP) uses the WebSocket port number");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["rooms"][0]["quic"], quic.to_string(), "{m}");
    assert_eq!(m["rooms"][0]["tls_fingerprint"], fp, "{m}");
    let api_key = value("api key: ");
    let secret = value("token secret: ");
    let token = |u: &str| common::mint(&secret, u, None, None, common::now_secs() + 600);

    let ep = quic_endpoint(&[&ca.pem], &[QUIC_ALPN]);
    let (conn, mut q) = quic_client(&ep, quic).await;
    let ok = q.auth(&token("cq")).await;
    assert_eq!(ok["room"], "1", "{ok}");
    let certs = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    assert_eq!(common::fingerprint(&certs[0]), fp);
    let tls = common::tls_connect(ws, &[&ca.pem]).await.unwrap();
    let mut wss = common::wss_handshake(tls, ws).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    let auth = json!({"op": "auth", "token": token("cw")}).to_string();
    wss.send(tokio_tungstenite::tungstenite::Message::text(auth))
        .await
        .unwrap();
    let next_text = |m: Option<Result<tokio_tungstenite::tungstenite::Message, _>>| {
        let m: tokio_tungstenite::tungstenite::Message = m.unwrap().unwrap();
        serde_json::from_str::<serde_json::Value>(m.to_text().unwrap()).unwrap()
    };
    let v = next_text(
        tokio::time::timeout(Duration::from_secs(5), wss.next())
            .await
            .unwrap(),
    );
    assert_eq!(v["op"], "auth_ok", "{v}");

    let http = reqwest::Client::new();
    let push = |users: serde_json::Value| {
        http.post(format!("http://127.0.0.1:{base}/api/v1/push/users"))
            .bearer_auth(&api_key)
            .json(&json!({"users": users, "data": "via center"}))
            .send()
    };
    // The directory learns of both connections within moments.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let r: serde_json::Value = loop {
        let r: serde_json::Value = push(json!(["cq", "cw"]))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r["delivered"] == 2 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r["delivered"], 2, "{r}");
    let m = q.next().await;
    assert_eq!(m["data"], "via center", "{m}");
    let m = next_text(
        tokio::time::timeout(Duration::from_secs(5), wss.next())
            .await
            .unwrap(),
    );
    assert_eq!(m["data"], "via center", "{m}");
}

/// A full room refuses the QUIC connection attempt.
#[tokio::test]
async fn quic_full_room_refuses() {
    let s = Server::start(&["--max-connections", "1"]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (_conn, mut c) = quic_client(&ep, s.quic_addr()).await;
    c.auth(&s.token("first")).await;
    let e = quic_connect(&ep, s.quic_addr())
        .await
        .expect_err("a second connection to a full room was accepted");
    assert!(
        format!("{e:?}").contains("CONNECTION_REFUSED"),
        "expected CONNECTION_REFUSED, got {e:?}"
    );
    // The first one is unaffected.
    assert!(c.ping_sync(1).await.is_empty());
}

/// With `--quic-retry-above 0` every new attempt is sent a Retry first:
/// the client answers it, authenticates and receives pushes, and the room
/// counts one retry per connection. With the default, one connection gets
/// no Retry.
#[tokio::test]
async fn quic_retry_validates_the_address_first() {
    let s = Server::start(&["--quic-retry-above", "0"]).await;
    let ca = data_dir_cert(&s);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (_c1, mut a) = quic_client(&ep, s.quic_addr()).await;
    a.auth(&s.token("retry-a")).await;
    let (_c2, mut b) = quic_client(&ep, s.quic_addr()).await;
    b.auth(&s.token("retry-b")).await;
    s.wait_online("retry-b", true).await;
    let r = s
        .push_users(&["retry-a", "retry-b"], json!("validated"))
        .await;
    for c in [&mut a, &mut b] {
        let m = c.next().await;
        assert_eq!(m["id"], r["id"], "{m} vs {r}");
    }
    let (_, metrics) = s.raw("GET", "/metrics", None, None, None).await;
    assert!(
        metrics.contains("pushgate_room_quic_retries_total 2\n"),
        "{metrics}"
    );

    let d = Server::start(&[]).await;
    let ca = data_dir_cert(&d);
    let ep = quic_endpoint(&[&ca], &[QUIC_ALPN]);
    let (_c3, mut c) = quic_client(&ep, d.quic_addr()).await;
    c.auth(&d.token("no-retry")).await;
    let (_, metrics) = d.raw("GET", "/metrics", None, None, None).await;
    assert!(
        metrics.contains("pushgate_room_quic_retries_total 0\n"),
        "{metrics}"
    );
}
