//! TLS on every listener: wss:// and TLS over TCP with a certificate chain
//! made here (a CA and a leaf it signs; the client trusts the CA), QUIC with
//! the same certificate, refusals of untrusted certificates, configuration
//! errors, the self-signed development certificate, and reload on SIGHUP.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::time::Duration;

use common::{
    peer_leaf, quic_client, quic_endpoint, run_cli, tls_connect, tls_server, wss_handshake,
    FrameClient, Server, TestCa, QUIC_ALPN,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The next JSON text frame of a wss:// client.
async fn ws_next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("stream open")
            .expect("no websocket error");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn ws_send<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, v: Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(v.to_string())).await.unwrap();
}

#[tokio::test]
async fn wss_tls_tcp_and_quic_with_a_ca_signed_certificate() {
    let (ca, _dir, s) = tls_server(&[]).await;
    let fp = s.tls_fingerprint();

    // wss://
    let tls = tls_connect(s.ws, &[&ca.pem]).await.unwrap();
    assert_eq!(common::fingerprint(&peer_leaf(&tls)), fp);
    let mut ws = wss_handshake(tls, s.ws).await.unwrap();
    ws_send(
        &mut ws,
        json!({"op": "auth", "token": s.token("tls-ws"), "seq": 1}),
    )
    .await;
    let ok = ws_next(&mut ws).await;
    assert_eq!(ok["op"], "auth_ok", "{ok}");
    s.wait_visible("tls-ws", &ok).await;

    // Server-sent events over the same wss:// listener (https://…/sse).
    let tls = tls_connect(s.ws, &[&ca.pem]).await.unwrap();
    let target = format!("/sse?token={}", s.token("tls-sse"));
    let mut sse = common::sse::Sse::open_on(Box::new(tls), s.ws, &target, &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    let ok = sse.opened(0).await;
    s.wait_visible("tls-sse", &ok).await;

    // TLS over TCP
    let tls = tls_connect(s.tcp, &[&ca.pem]).await.unwrap();
    assert_eq!(common::fingerprint(&peer_leaf(&tls)), fp);
    let mut tcp = FrameClient::new(tls);
    let ok = tcp.auth(&s.token("tls-tcp")).await;
    s.wait_visible("tls-tcp", &ok).await;

    // QUIC serves the same certificate.
    let ep = quic_endpoint(&[&ca.pem], &[QUIC_ALPN]);
    let (conn, mut q) = quic_client(&ep, s.quic_addr()).await;
    let ok = q.auth(&s.token("tls-quic")).await;
    s.wait_visible("tls-quic", &ok).await;
    let certs = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    assert_eq!(common::fingerprint(&certs[0]), fp);

    let r = s
        .push_users(
            &["tls-ws", "tls-tcp", "tls-quic", "tls-sse"],
            json!({"x": 1}),
        )
        .await;
    assert_eq!(r["delivered"], 4, "{r}");
    let ev = sse.event().await;
    assert_eq!(ev.id, Some(r["id"].to_string()), "{ev:?}");
    assert_eq!(ev.json()["data"], json!({"x": 1}));
    let m = ws_next(&mut ws).await;
    assert_eq!(
        (m["id"].clone(), m["data"].clone()),
        (r["id"].clone(), json!({"x": 1}))
    );
    let m = tcp.next().await;
    assert_eq!(
        (m["id"].clone(), m["data"].clone()),
        (r["id"].clone(), json!({"x": 1}))
    );
    let m = q.next().await;
    assert_eq!(
        (m["id"].clone(), m["data"].clone()),
        (r["id"].clone(), json!({"x": 1}))
    );
    assert!(tcp.ping_sync(4).await.is_empty());

    // A plain client on a TLS listener gets no session.
    let mut plain = common::Client::connect(&s, common::Transport::Tcp).await;
    plain.send(&proto::ClientFrame::Ping { seq: Some(1) }).await;
    if let Some(common::Event::Frame(v)) = plain.recv(Duration::from_secs(3)).await {
        panic!("plain TCP client got a frame: {v}");
    }
}

#[tokio::test]
async fn untrusted_certificate_is_refused_at_the_handshake() {
    let (_ca, _dir, s) = tls_server(&[]).await;
    let stranger = TestCa::new("not the server's ca");
    for addr in [s.ws, s.tcp] {
        let e = tls_connect(addr, &[&stranger.pem]).await.err();
        let text = format!("{e:?}");
        assert!(
            e.is_some(),
            "{addr}: handshake succeeded with an untrusted CA"
        );
        assert!(
            text.contains("UnknownIssuer") || text.contains("InvalidCertificate"),
            "{addr}: expected a certificate error, got {text}"
        );
    }
    // The standalone default: wss:// is off, and the self-signed QUIC
    // certificate is not trusted by a client that was not given it.
    let plain = Server::start(&[]).await;
    let ep = quic_endpoint(&[&stranger.pem], &[QUIC_ALPN]);
    assert!(common::quic_connect(&ep, plain.quic_addr()).await.is_err());
}

#[tokio::test]
async fn bad_certificate_or_key_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("ca");
    let (cert, key) = ca.leaf().write(d);
    let other = ca.leaf();
    let other_key = d.join("other_key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let (cert, key, other_key, garbage) = (
        cert.display().to_string(),
        key.display().to_string(),
        other_key.display().to_string(),
        garbage.display().to_string(),
    );
    let data = d.join("data").display().to_string();
    let base = [
        "--data",
        &data,
        "--ws",
        "127.0.0.1:0",
        "--tcp",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "missing cert file",
            vec!["--tls-cert", "/nonexistent/cert.pem", "--tls-key", &key],
            "/nonexistent/cert.pem",
        ),
        (
            "cert not PEM",
            vec!["--tls-cert", &garbage, "--tls-key", &key],
            "garbage.pem",
        ),
        (
            "key not PEM",
            vec!["--tls-cert", &cert, "--tls-key", &garbage],
            "garbage.pem",
        ),
        (
            "key of another certificate",
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            "other_key.pem",
        ),
        ("cert without key", vec!["--tls-cert", &cert], "--tls-key"),
        ("key without cert", vec!["--tls-key", &key], "--tls-cert"),
    ];
    let mut failures = Vec::new();
    for (what, extra, needle) in &cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter().copied());
        let (code, _, err) = run_cli(&args, &[], Duration::from_secs(10)).await;
        if code != Some(64) || !err.contains(needle) {
            failures.push(format!(
                "{what}: exit {code:?} (want 64), stderr must name {needle:?}: {err}"
            ));
        }
    }
    // `pushgate room` checks its certificate the same way, before anything else.
    let (code, _, err) = run_cli(
        &[
            "room",
            "--id",
            "1",
            "--registers",
            "127.0.0.1:1",
            "--token-secret",
            "0123456789abcdef0123",
            "--saver",
            "127.0.0.1:1",
            "--tls-cert",
            &cert,
            "--tls-key",
            &other_key,
        ],
        &[],
        Duration::from_secs(10),
    )
    .await;
    if code != Some(64) || !err.contains("other_key.pem") {
        failures.push(format!("room with a mismatched key: exit {code:?}: {err}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn self_signed_certificate_is_kept_in_the_data_dir() {
    let mut s = Server::start(&[]).await;
    let pem = common::data_dir_cert(&s);
    let fp = s.tls_fingerprint();
    assert_eq!(common::fingerprint(&common::pem_cert_der(&pem)), fp);
    let key = s.data_dir().join("tls_key.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "tls_key.pem must be private");
    }
    // WebSocket and TCP stay plain without --tls-cert (the harness speaks ws:// and tcp).
    let (_c, _) = s.login(common::Transport::WsJson, "plain", "d").await;
    s.stop().await;
    s.restart().await;
    assert_eq!(s.tls_fingerprint(), fp, "the certificate must be reused");
    // And QUIC serves it, for localhost.
    let ep = quic_endpoint(&[&pem], &[QUIC_ALPN]);
    let (_conn, mut q) = quic_client(&ep, s.quic_addr()).await;
    q.auth(&s.token("selfsigned")).await;
}

/// SIGHUP: new connections get the new certificate, established ones stay;
/// a bad file keeps the current certificate.
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let (ca1, dir, s) = tls_server(&[]).await;
    let fp1 = s.tls_fingerprint();

    // Established before the reload, on each transport.
    let tls = tls_connect(s.ws, &[&ca1.pem]).await.unwrap();
    let mut ws = wss_handshake(tls, s.ws).await.unwrap();
    ws_send(&mut ws, json!({"op":"auth","token": s.token("old-ws")})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "auth_ok");
    let mut tcp = FrameClient::new(tls_connect(s.tcp, &[&ca1.pem]).await.unwrap());
    tcp.auth(&s.token("old-tcp")).await;
    let ep1 = quic_endpoint(&[&ca1.pem], &[QUIC_ALPN]);
    let (_qc, mut q) = quic_client(&ep1, s.quic_addr()).await;
    q.auth(&s.token("old-quic")).await;

    let ca2 = TestCa::new("second ca");
    let leaf2 = ca2.leaf();
    leaf2.write(dir.path());
    s.sighup();
    s.wait_stderr("tls certificate reloaded", 1, Duration::from_secs(10))
        .await;
    let fp2 = common::fingerprint(&leaf2.der);
    assert_ne!(fp1, fp2);

    // New connections: the new certificate, on every listener.
    for addr in [s.ws, s.tcp] {
        let tls = tls_connect(addr, &[&ca2.pem]).await.unwrap();
        assert_eq!(common::fingerprint(&peer_leaf(&tls)), fp2, "{addr}");
        assert!(
            tls_connect(addr, &[&ca1.pem]).await.is_err(),
            "{addr}: still serving the old certificate"
        );
    }
    let ep2 = quic_endpoint(&[&ca2.pem], &[QUIC_ALPN]);
    let (_qc2, mut q2) = quic_client(&ep2, s.quic_addr()).await;
    q2.auth(&s.token("new-quic")).await;

    // Old connections: still alive.
    ws_send(&mut ws, json!({"op":"ping","seq":5})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "pong");
    assert!(tcp.ping_sync(6).await.is_empty());
    assert!(q.ping_sync(7).await.is_empty());
    let r = s
        .push_users(&["old-ws", "old-tcp", "old-quic"], json!("still here"))
        .await;
    assert_eq!(r["delivered"], 3, "{r}");
    assert_eq!(ws_next(&mut ws).await["data"], "still here");
    assert_eq!(tcp.next().await["data"], "still here");
    assert_eq!(q.next().await["data"], "still here");

    // A broken file: an error, and the current certificate stays.
    std::fs::write(dir.path().join("cert.pem"), "garbage\n").unwrap();
    s.sighup();
    s.wait_stderr("tls certificate reload failed", 1, Duration::from_secs(10))
        .await;
    let tls = tls_connect(s.tcp, &[&ca2.pem]).await.unwrap();
    assert_eq!(common::fingerprint(&peer_leaf(&tls)), fp2);
    let mut tcp2 = FrameClient::new(tls);
    tcp2.auth(&s.token("after-bad")).await;
}
