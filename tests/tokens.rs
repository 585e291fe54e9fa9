//! RS256 and ES256 client tokens end to end: `--token-public-key` (PEM) and
//! `--token-jwks` next to the HS256 secret, on WebSocket, TCP and SSE, in
//! `auth` and `refresh`; key files that do not load stop the start with a
//! usage error. The test keys are proto/tests/keys/ (made for tests only).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{now_secs, run_cli, Server, Transport};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::ClientFrame;
use serde_json::json;

fn key_path(name: &str) -> String {
    format!("{}/proto/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A token for `user` signed with the private key `private` (`alg` from
/// its name), naming `kid` when given.
fn sign(private: &str, kid: Option<&str>, user: &str) -> String {
    let pem = std::fs::read(key_path(private)).unwrap();
    let (alg, key) = if private.starts_with("ec") {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap())
    } else {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap())
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    let claims = json!({ "sub": user, "exp": now_secs() + 600, "channels": ["news"] });
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

async fn keyed_server() -> Server {
    let pem = key_path("rsa-public.pem");
    let jwks = key_path("jwks.json");
    Server::start(&["--token-public-key", &pem, "--token-jwks", &jwks]).await
}

#[tokio::test]
async fn rs256_and_es256_tokens_authenticate_and_refresh() {
    let s = keyed_server().await;
    let cases = [
        (Transport::WsJson, "rsa-private.pem", None),
        (Transport::Tcp, "ec-private.pem", Some("ec-1")),
        (Transport::WsBin, "rsa2-private.pem", Some("rsa-2")),
        (Transport::Tcp, "rsa2-private.pem", None),
    ];
    let mut keep = Vec::new();
    for (i, (t, private, kid)) in cases.into_iter().enumerate() {
        let user = format!("pk-{i}");
        let mut c = s.connect(t).await;
        let ok = c.auth(&sign(private, kid, &user), None, None).await;
        assert_eq!(ok["user"], user.as_str(), "{t:?} {private}");
        c.sub("news").await;
        keep.push(c);
    }
    // The HS256 secret still works beside the keys.
    let mut hs = s.connect(Transport::WsJson).await;
    hs.auth(&s.token_channels("pk-hs", &["news"]), None, None)
        .await;
    hs.sub("news").await;
    let r = s.push_channel("news", json!("to every key")).await;
    for c in keep.iter_mut().chain(std::iter::once(&mut hs)) {
        let m = c.next_msg().await;
        assert_eq!(m["id"], r["id"]);
    }
    // refresh with a token of another algorithm, same user.
    let c = &mut keep[0];
    c.send(&ClientFrame::Refresh {
        seq: Some(5),
        token: sign("ec-private.pem", Some("ec-1"), "pk-0"),
    })
    .await;
    let v = c.next().await;
    assert_eq!(v["op"], "refresh_ok", "{v}");
    assert_eq!(v["seq"], 5, "{v}");
}

/// Opens a connection with `token` and returns the 4001 close reason.
async fn refused(s: &Server, t: Transport, token: String) -> String {
    let mut c = s.connect(t).await;
    c.send(&ClientFrame::Auth {
        seq: Some(1),
        token,
        last_id: None,
        device: None,
    })
    .await;
    c.expect_close(4001, Duration::from_secs(5)).await.0
}

#[tokio::test]
async fn tokens_no_key_verifies_are_refused_with_the_reason() {
    // JWKS keys are picked by kid.
    let jwks = key_path("jwks.json");
    let s = Server::start(&["--token-jwks", &jwks]).await;
    assert_eq!(
        refused(
            &s,
            Transport::WsJson,
            sign("rsa2-private.pem", Some("rsa-9"), "x")
        )
        .await,
        "auth failed: invalid token: no RS256 key with kid \"rsa-9\""
    );
    assert_eq!(
        refused(
            &s,
            Transport::Tcp,
            sign("rsa-private.pem", Some("rsa-2"), "x")
        )
        .await,
        "auth failed: invalid token: bad signature"
    );
    // A PEM key has no kid: it is tried whatever the token names.
    let s = keyed_server().await;
    assert_eq!(
        refused(
            &s,
            Transport::WsBin,
            sign("rsa2-private.pem", Some("rsa-9"), "x")
        )
        .await,
        "auth failed: invalid token: bad signature"
    );
    // Without keys, an RS256 token names the algorithm.
    let plain = Server::start(&[]).await;
    assert_eq!(
        refused(&plain, Transport::Tcp, sign("rsa-private.pem", None, "x")).await,
        "auth failed: invalid token: algorithm RS256 is not accepted, only HS256"
    );
}

#[tokio::test]
async fn an_sse_stream_opens_with_an_es256_token() {
    let s = keyed_server().await;
    let token = sign("ec-private.pem", Some("ec-1"), "pk-sse");
    let path = format!("/sse?token={token}&channels=news");
    let mut sse = common::sse::Sse::open(s.ws, &path, &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    let ok = sse.opened(1).await;
    assert_eq!(ok["user"], "pk-sse", "{ok}");
    // The same stream refused without the keys: 401 before it starts.
    let plain = Server::start(&[]).await;
    let refused = common::sse::Sse::open(plain.ws, &path, &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.head);
}

#[tokio::test]
async fn key_files_that_do_not_load_are_usage_errors() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let private = key_path("rsa-private.pem");
    let jwks = key_path("jwks.json");
    let missing = format!("{d}/nope.pem");
    let cases = [
        (
            vec!["--token-public-key", private.as_str()],
            format!("--token-public-key {private}: not an RSA or EC P-256 public key in PEM"),
        ),
        (
            vec!["--token-public-key", jwks.as_str()],
            format!("--token-public-key {jwks}: not an RSA or EC P-256 public key in PEM"),
        ),
        (
            vec!["--token-jwks", private.as_str()],
            format!("--token-jwks {private}: not a JWKS document"),
        ),
        (
            vec!["--token-jwks", missing.as_str()],
            format!("--token-jwks {missing}: "),
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec!["--data", d, "--ws", "127.0.0.1:0", "--tcp", "127.0.0.1:0"];
        args.extend(["--quic", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
        args.extend(flags.iter().copied());
        let (code, _, err) = run_cli(&args, &[], Duration::from_secs(20)).await;
        assert_eq!(code, Some(64), "{flags:?}: {err}");
        assert!(err.contains(&want), "{flags:?}: {err}");
    }
}

/// The JWKS of proto/tests/keys/jwks.json with only the key named `kid`.
fn jwks_with(kid: &str) -> String {
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(key_path("jwks.json")).unwrap()).unwrap();
    let keys: Vec<_> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kid"] == kid)
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_and_refreshed_and_a_failed_fetch_keeps_the_keys() {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use parking_lot::Mutex;

    // The identity provider: serves whatever `doc` holds (None: HTTP 500).
    let doc: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(Some(jwks_with("ec-1"))));
    let d = Arc::clone(&doc);
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let d = Arc::clone(&d);
            async move {
                match d.lock().clone() {
                    Some(body) => (StatusCode::OK, body),
                    None => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A PEM key from a file stays beside the fetched ones.
    let pem = key_path("rsa-public.pem");
    let s = Server::start(&[
        "--token-jwks-url",
        &url,
        "--token-jwks-refresh",
        "1",
        "--token-public-key",
        &pem,
    ])
    .await;
    let accepted = |private: &'static str, kid: Option<&'static str>| {
        let s = &s;
        async move {
            let mut c = s.connect(Transport::WsJson).await;
            let ok = c.auth(&sign(private, kid, "jw"), None, None).await;
            assert_eq!(ok["op"], "auth_ok", "{private} {kid:?}: {ok}");
        }
    };
    common::eventually("the first fetch", Duration::from_secs(10), || async {
        let mut c = s.connect(Transport::Tcp).await;
        c.send(&ClientFrame::Auth {
            seq: Some(1),
            token: sign("ec-private.pem", Some("ec-1"), "jw"),
            last_id: None,
            device: None,
        })
        .await;
        c.next().await["op"] == "auth_ok"
    })
    .await;
    accepted("rsa-private.pem", None).await;

    // The provider rotates its key: the new one is taken, the old one refused.
    *doc.lock() = Some(jwks_with("rsa-2"));
    common::eventually("the rotated key", Duration::from_secs(10), || async {
        let mut c = s.connect(Transport::WsBin).await;
        c.send(&ClientFrame::Auth {
            seq: Some(1),
            token: sign("rsa2-private.pem", Some("rsa-2"), "jw"),
            last_id: None,
            device: None,
        })
        .await;
        c.next().await["op"] == "auth_ok"
    })
    .await;
    assert_eq!(
        refused(
            &s,
            Transport::WsJson,
            sign("ec-private.pem", Some("ec-1"), "x")
        )
        .await,
        "auth failed: invalid token: algorithm ES256 is not accepted, only HS256 and RS256"
    );

    // The provider fails: the keys in force stay.
    *doc.lock() = None;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    accepted("rsa2-private.pem", Some("rsa-2")).await;
    accepted("rsa-private.pem", None).await;
    assert!(
        s.stderr().contains("token JWKS fetch failed"),
        "the failure is logged"
    );
}

/// A token naming a key the room has not fetched yet (the provider rotated
/// since) makes the room fetch the JWKS again at once, not at the next
/// refresh (300 s here): its client's retry a moment later is accepted.
/// Such fetches come at most once every 10 s, however many tokens name
/// unknown keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_an_unknown_key_makes_the_jwks_fetched_again_at_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use parking_lot::Mutex;

    let doc: Arc<Mutex<String>> = Arc::new(Mutex::new(jwks_with("ec-1")));
    let hits = Arc::new(AtomicUsize::new(0));
    let (d, h) = (Arc::clone(&doc), Arc::clone(&hits));
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (d, h) = (Arc::clone(&d), Arc::clone(&h));
            async move {
                // The first answer comes late, so that tokens the room
                // refuses before it has any key come in while it fetches:
                // that fetch answers them, and they must not use up the
                // 10 s of the fetches for unknown keys.
                if h.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                d.lock().clone()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s = Server::start(&["--token-jwks-url", &url, "--token-jwks-refresh", "300"]).await;
    let auth_ok = |private: &'static str, kid: &'static str| {
        let s = &s;
        async move {
            let mut c = s.connect(Transport::Tcp).await;
            c.send(&ClientFrame::Auth {
                seq: Some(1),
                token: sign(private, Some(kid), "kid"),
                last_id: None,
                device: None,
            })
            .await;
            c.next().await["op"] == "auth_ok"
        }
    };
    common::eventually("the first fetch", Duration::from_secs(10), || {
        auth_ok("ec-private.pem", "ec-1")
    })
    .await;
    // Give a fetch for the refusals meanwhile the time to show, were it made.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = hits.load(Ordering::SeqCst);
    assert_eq!(first, 1, "the refusals before the first fetch made another");

    // The provider rotates to a new key: the first token signed with it
    // is refused, and makes the room fetch again.
    *doc.lock() = jwks_with("rsa-2");
    assert!(!auth_ok("rsa2-private.pem", "rsa-2").await);
    common::eventually(
        "the new key, long before the refresh",
        Duration::from_secs(5),
        || auth_ok("rsa2-private.pem", "rsa-2"),
    )
    .await;
    let second = hits.load(Ordering::SeqCst);
    assert!(second > first, "fetched again ({first} -> {second})");

    // Another unknown key right after: fetched again only once 10 s have
    // passed since the last fetch for an unknown key, however many ask.
    *doc.lock() = jwks_with("ec-1");
    for _ in 0..5 {
        assert!(!auth_ok("ec-private.pem", "ec-1").await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hits.load(Ordering::SeqCst), second, "no fetch within 10 s");
    common::eventually("the key, after 10 s", Duration::from_secs(15), || {
        auth_ok("ec-private.pem", "ec-1")
    })
    .await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        second + 1,
        "one fetch for five"
    );
    assert!(s.stderr().contains("a token named a key not known here"));
}
