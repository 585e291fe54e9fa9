//! The Rust client library (`pushgate-client`) against the real binary:
//! WebSocket JSON, WebSocket binary, TCP and QUIC (standalone's self-signed
//! certificate, trusted by its printed fingerprint), reconnect by itself after
//! a kick with `last_id` resume (pushes during the outage replayed, none lost,
//! none twice), QUIC migration by rebinding the client's socket, heartbeat
//! pings, re-subscription, acks, server rotation on a failed connect and on a
//! drain (4007 with `reconnect_after_ms`).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pushgate_client::{
    Client, ClientBuilder, Encoding, ErrorCode, Event, Events, Fingerprint, Message,
};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Longest wait for one expected event.
const WAIT: Duration = Duration::from_secs(10);

/// The client URL of `s` for `t`.
fn url(s: &Server, t: Transport) -> String {
    match t {
        Transport::WsJson | Transport::WsBin | Transport::WsDefault => {
            format!("ws://{}/ws", s.ws)
        }
        Transport::Tcp => format!("tcp://{}", s.tcp),
        // Other transports of the harness are not used by this file.
        #[allow(unreachable_patterns)]
        other => panic!("no client url for {other:?} here"),
    }
}

fn encoding(t: Transport) -> Encoding {
    match t {
        Transport::WsBin => Encoding::Binary,
        _ => Encoding::Json,
    }
}

/// A token provider minting a fresh one-hour token for `user` on every call,
/// counting the calls.
fn tokens(
    secret: &str,
    user: &str,
    channels: Option<Vec<String>>,
    calls: Arc<AtomicUsize>,
) -> impl Fn() -> std::future::Ready<Result<String, pushgate_client::BoxError>> + Send + Sync + 'static
{
    let secret = secret.to_string();
    let user = user.to_string();
    move || {
        calls.fetch_add(1, Ordering::Relaxed);
        let ch: Option<Vec<&str>> = channels
            .as_ref()
            .map(|c| c.iter().map(String::as_str).collect());
        std::future::ready(Ok(mint(
            &secret,
            &user,
            None,
            ch.as_deref(),
            now_secs() + 3600,
        )))
    }
}

/// The next event within [`WAIT`]; panics on timeout or end.
async fn next(events: &mut Events) -> Event {
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("client events ended"),
        Err(_) => panic!("no client event within {WAIT:?}"),
    }
}

/// Reads events until one matches `pick`; every message seen on the way is
/// appended to `msgs`. Panics after [`WAIT`].
async fn until<T>(
    events: &mut Events,
    msgs: &mut Vec<Message>,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("client events ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; messages so far {msgs:?}"),
        };
        if let Some(t) = pick(&ev) {
            return t;
        }
        match ev {
            Event::Message(m) => msgs.push(m),
            Event::ConnectFailed { .. } | Event::Disconnected(_) | Event::Connected(_) => {
                panic!("unexpected {ev:?} while waiting for {what}")
            }
            _ => {}
        }
    }
}

/// Reads messages until `n` have been collected in `msgs`.
async fn collect(events: &mut Events, msgs: &mut Vec<Message>, n: usize) {
    while msgs.len() < n {
        match next(events).await {
            Event::Message(m) => msgs.push(m),
            Event::Subscribed { .. } | Event::Unsubscribed { .. } => {}
            other => panic!(
                "expected messages ({} of {n} so far), got {other:?}",
                msgs.len()
            ),
        }
    }
}

/// Asserts that no event arrives for `dur`.
async fn quiet(events: &mut Events, dur: Duration) {
    if let Ok(ev) = tokio::time::timeout(dur, events.recv()).await {
        panic!("expected no event for {dur:?}, got {ev:?}");
    }
}

fn ids(msgs: &[Message]) -> Vec<i64> {
    msgs.iter().map(|m| m.id).collect()
}

fn datas(msgs: &[Message]) -> Vec<Value> {
    msgs.iter().map(|m| m.json::<Value>().unwrap()).collect()
}

async fn connected(events: &mut Events) -> pushgate_client::Connected {
    match next(events).await {
        Event::Connected(c) => c,
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// Connect, receive, get kicked, reconnect by itself with `last_id`: what was
/// pushed during the outage is replayed once, in order, then live pushes go on.
/// `configure` picks the transport's settings.
async fn kick_and_resume(
    s: &Server,
    url: String,
    configure: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> (Client, Events, String, Vec<i64>) {
    let user = uniq("cl-kick");
    let calls = Arc::new(AtomicUsize::new(0));
    let builder = Client::builder([url.clone()])
        .token_provider(tokens(&s.secret, &user, None, calls.clone()))
        .device("d1")
        // The outage lasts at least 0.5 s: the pushes below happen during it.
        .backoff(Duration::from_secs(1), Duration::from_secs(2));
    let (client, mut events) = configure(builder).start().unwrap();
    let c = connected(&mut events).await;
    assert_eq!(c.user, user);
    assert_eq!(c.resumed_from, None);
    assert!(c.heartbeat > 0);
    assert_eq!(c.url, url);
    s.wait_online(&user, true).await;
    assert!(client.is_connected());

    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(s.push_id(&[&user], json!({ "i": i })).await);
    }
    let mut got = Vec::new();
    collect(&mut events, &mut got, 5).await;
    assert_eq!(ids(&got), sent, "{url}");
    assert_eq!(datas(&got)[4], json!({"i": 4}));
    assert!(got.iter().all(|m| m.channel.is_none() && m.ts > 0));
    assert_eq!(client.last_id(), Some(sent[4]));

    let kicked = s
        .api_ok("DELETE", &format!("/users/{user}/connections"), None, 200)
        .await;
    assert_eq!(kicked["kicked"], 1, "{kicked}");
    for i in 5..10 {
        sent.push(s.push_id(&[&user], json!({ "i": i })).await);
    }
    let d = until(&mut events, &mut got, "Disconnected", |e| match e {
        Event::Disconnected(d) => Some(d.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        d.code,
        Some(4005),
        "{url}: kick must close with 4005: {d:?}"
    );
    assert!(d.retry_in >= Duration::from_millis(500) && d.retry_in <= Duration::from_secs(1));
    let c = until(&mut events, &mut got, "Connected again", |e| match e {
        Event::Connected(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        c.resumed_from,
        Some(got.last().unwrap().id),
        "{url}: must resume after the last message received"
    );
    assert_eq!(calls.load(Ordering::Relaxed), 2, "a token per connection");
    collect(&mut events, &mut got, 10).await;
    assert_eq!(ids(&got), sent, "{url}: every push once, in order");
    assert_eq!(
        datas(&got),
        (0..10).map(|i| json!({ "i": i })).collect::<Vec<_>>()
    );

    // Live again.
    s.wait_online(&user, true).await;
    sent.push(s.push_id(&[&user], json!("live")).await);
    collect(&mut events, &mut got, 11).await;
    assert_eq!(ids(&got), sent);
    quiet(&mut events, Duration::from_millis(500)).await;
    assert_eq!(client.last_id(), Some(sent[10]));
    (client, events, user, sent)
}

/// Closes the client; its events end (after those already queued).
async fn close(client: Client, mut events: Events) {
    client.close().await;
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(None) => return,
            Ok(Some(_)) => {}
            Err(_) => panic!("events did not end after close"),
        }
    }
}

async fn kick_and_resume_on(t: Transport) {
    let s = Server::start(&[]).await;
    let (client, events, _, _) = kick_and_resume(&s, url(&s, t), |b| b.encoding(encoding(t))).await;
    close(client, events).await;
}

#[tokio::test]
async fn ws_json_receives_and_resumes_after_kick() {
    kick_and_resume_on(Transport::WsJson).await;
}

#[tokio::test]
async fn ws_bin_receives_and_resumes_after_kick() {
    kick_and_resume_on(Transport::WsBin).await;
}

#[tokio::test]
async fn tcp_receives_and_resumes_after_kick() {
    kick_and_resume_on(Transport::Tcp).await;
}

/// QUIC with standalone's self-signed certificate, trusted by its printed
/// fingerprint; then the client's UDP socket moves (connection migration)
/// and the session goes on: no reconnect, no new auth, nothing lost.
#[tokio::test]
async fn quic_receives_resumes_and_migrates() {
    let s = Server::start(&[]).await;
    let quic = startup_value(&s.startup, "quic listening on ")
        .unwrap_or_else(|| panic!("no `quic listening on` line: {:?}", s.startup));
    let pin = startup_value(&s.startup, "tls fingerprint: ")
        .unwrap_or_else(|| panic!("no `tls fingerprint:` line: {:?}", s.startup));
    let pin = Fingerprint::parse(&pin).unwrap();
    let (client, mut events, user, mut sent) =
        kick_and_resume(&s, format!("quic://{quic}"), |b| b.tls_pin(pin)).await;
    let before = client.quic_local_addr().unwrap();
    let after = client.rebind("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_ne!(before.port(), after.port());
    let mut got = Vec::new();
    for i in 0..3 {
        sent.push(s.push_id(&[&user], json!({ "after_rebind": i })).await);
    }
    collect(&mut events, &mut got, 3).await;
    assert_eq!(ids(&got), sent[11..], "pushes after the rebind arrive");
    quiet(&mut events, Duration::from_millis(300)).await;
    assert!(client.is_connected());
    close(client, events).await;
    // A wrong pin is refused: the handshake fails, nothing connects.
    let (client, mut events) = Client::builder([format!("quic://{quic}")])
        .token("t")
        .tls_pin(Fingerprint([7; 32]))
        .backoff(Duration::from_millis(50), Duration::from_millis(100))
        .start()
        .unwrap();
    match next(&mut events).await {
        Event::ConnectFailed { error, .. } => assert!(error.contains("handshake"), "{error}"),
        other => panic!("a wrong pin must fail the handshake, got {other:?}"),
    }
    close(client, events).await;
}

/// With a 1 s heartbeat the server closes a silent connection after 2 s;
/// the client's pings keep it open.
#[tokio::test]
async fn pings_keep_the_session_alive() {
    let s = Server::start(&["--heartbeat", "1"]).await;
    for t in [Transport::Tcp, Transport::WsJson] {
        let user = uniq("cl-hb");
        let (client, mut events) = Client::builder([url(&s, t)])
            .token_provider(tokens(&s.secret, &user, None, Arc::default()))
            .encoding(encoding(t))
            .start()
            .unwrap();
        let c = connected(&mut events).await;
        assert_eq!(c.heartbeat, 1);
        quiet(&mut events, Duration::from_millis(4500)).await;
        let id = s.push_id(&[&user], json!("still here")).await;
        let mut got = Vec::new();
        collect(&mut events, &mut got, 1).await;
        assert_eq!(ids(&got), vec![id], "{t:?}");
        client.close().await;
    }
}

/// Tokens that live 6 s: the client asks its provider for a new one before
/// each expires and sends it with `refresh`, so with no grace the connection
/// outlives several tokens; a provider that keeps handing out the same token
/// gets no refresh, and the connection ends with 4008.
#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let s = Server::start(&["--heartbeat", "1", "--token-grace", "0"]).await;
    for t in [Transport::Tcp, Transport::WsBin] {
        let user = uniq("cl-refresh");
        let calls = Arc::new(AtomicUsize::new(0));
        let (secret, u, n) = (s.secret.clone(), user.clone(), calls.clone());
        let (client, mut events) = Client::builder([url(&s, t)])
            .token_provider(move || {
                n.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok(mint(&secret, &u, None, None, now_secs() + 6)))
            })
            .encoding(encoding(t))
            .start()
            .unwrap();
        connected(&mut events).await;
        let mut msgs = Vec::new();
        let mut last = now_secs();
        for _ in 0..2 {
            let exp = until(&mut events, &mut msgs, "a token refresh", |e| match e {
                Event::TokenRefreshed { exp } => Some(*exp),
                _ => None,
            })
            .await;
            assert!(exp > last, "{t:?}: exp {exp} not after {last}");
            last = exp;
        }
        // Two tokens of 6 s later, the first connection still serves.
        let id = s.push_id(&[&user], json!("refreshed")).await;
        collect(&mut events, &mut msgs, 1).await;
        assert_eq!(ids(&msgs), vec![id], "{t:?}");
        assert!(calls.load(Ordering::Relaxed) >= 3, "{t:?}");
        client.close().await;
    }

    // The same token every time: nothing to refresh with, 4008 at expiry.
    let user = uniq("cl-static");
    let token = mint(&s.secret, &user, None, None, now_secs() + 3);
    let (client, mut events) = Client::builder([url(&s, Transport::WsJson)])
        .token(token)
        .start()
        .unwrap();
    connected(&mut events).await;
    let code = until(
        &mut events,
        &mut Vec::new(),
        "the 4008 close",
        |e| match e {
            Event::Disconnected(d) => Some(d.code),
            _ => None,
        },
    )
    .await;
    assert_eq!(code, Some(4008));
    client.close().await;
}

/// Subscriptions: sub_ok, channel messages, refusal of a forbidden channel,
/// re-subscription after a reconnect, unsub.
#[tokio::test]
async fn channels_are_subscribed_again_after_reconnect() {
    let s = Server::start(&[]).await;
    let user = uniq("cl-ch");
    let (client, mut events) = Client::builder([url(&s, Transport::WsBin)])
        .token_provider(tokens(
            &s.secret,
            &user,
            Some(vec!["news".into(), "chat:*".into()]),
            Arc::default(),
        ))
        .encoding(Encoding::Binary)
        .backoff(Duration::from_millis(100), Duration::from_millis(200))
        .subscribe("news")
        .start()
        .unwrap();
    connected(&mut events).await;
    let mut got = Vec::new();
    let ch = until(&mut events, &mut got, "Subscribed news", |e| match e {
        Event::Subscribed { channel } => Some(channel.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ch, "news");
    client.subscribe("chat:1").await.unwrap();
    client.subscribe("secret").await.unwrap();
    let ch = until(&mut events, &mut got, "Subscribed chat:1", |e| match e {
        Event::Subscribed { channel } => Some(channel.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ch, "chat:1");
    let (ch, code) = until(&mut events, &mut got, "SubscribeFailed", |e| match e {
        Event::SubscribeFailed { channel, code, .. } => Some((channel.clone(), *code)),
        _ => None,
    })
    .await;
    assert_eq!((ch.as_str(), code), ("secret", ErrorCode::ChannelForbidden));
    assert!(client.subscribe("bad name!").await.is_err());

    let r = s.push_channel("news", json!("n1")).await;
    assert_eq!(r["delivered"], 1, "{r}");
    collect(&mut events, &mut got, 1).await;
    assert_eq!(got[0].channel.as_deref(), Some("news"));
    assert_eq!(got[0].json::<Value>().unwrap(), json!("n1"));
    assert_eq!(
        client.last_id(),
        None,
        "channel messages are not user messages"
    );

    s.api_ok("DELETE", &format!("/users/{user}/connections"), None, 200)
        .await;
    let mut subscribed = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut reconnected = false;
    while subscribed.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "not subscribed again: {subscribed:?}"
        );
        match next(&mut events).await {
            Event::Disconnected(d) => assert_eq!(d.code, Some(4005)),
            Event::Connected(_) => reconnected = true,
            Event::Subscribed { channel } => {
                assert!(reconnected);
                subscribed.push(channel);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    subscribed.sort();
    assert_eq!(
        subscribed,
        ["chat:1", "news"],
        "the forbidden one is forgotten"
    );
    let r = s.push_channel("chat:1", json!("c1")).await;
    assert_eq!(r["delivered"], 1, "{r}");
    collect(&mut events, &mut got, 2).await;
    assert_eq!(got[1].channel.as_deref(), Some("chat:1"));

    client.unsubscribe("news").await.unwrap();
    let ch = until(&mut events, &mut got, "Unsubscribed", |e| match e {
        Event::Unsubscribed { channel } => Some(channel.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ch, "news");
    let r = s.push_channel("news", json!("n2")).await;
    assert_eq!(r["delivered"], 0, "{r}");
    quiet(&mut events, Duration::from_millis(300)).await;
    client.close().await;
}

/// Auto-ack moves the device's position: a later connection of the same
/// device without `last_id` gets nothing replayed; another device gets all.
#[tokio::test]
async fn auto_ack_moves_the_device_position() {
    let s = Server::start(&[]).await;
    let user = uniq("cl-ack");
    let (client, mut events) = Client::builder([url(&s, Transport::Tcp)])
        .token_provider(tokens(&s.secret, &user, None, Arc::default()))
        .device("acker")
        .auto_ack(true)
        .ack_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    connected(&mut events).await;
    s.wait_online(&user, true).await;
    let mut sent = Vec::new();
    for i in 0..150 {
        sent.push(s.push_id(&[&user], json!(i)).await);
    }
    let mut got = Vec::new();
    collect(&mut events, &mut got, 150).await;
    assert_eq!(ids(&got), sent);
    client.flush_acks().await.unwrap();
    client.close().await;
    // The server records a connection's acks before it leaves the directory.
    s.wait_online(&user, false).await;

    let (mut same, _) = s.login(Transport::WsJson, &user, "acker").await;
    assert!(
        same.ping_sync(9).await.is_empty(),
        "the acked device must get nothing replayed"
    );
    let (mut other, _) = s.login(Transport::WsJson, &user, "other").await;
    let replay = other.msgs(150).await;
    assert_eq!(common::ids(&replay), sent);
}

/// A list of servers: a dead one is skipped (ConnectFailed, then the next URL).
#[tokio::test]
async fn a_dead_server_is_skipped() {
    let s = Server::start(&[]).await;
    let user = uniq("cl-dead");
    let dead = format!("tcp://127.0.0.1:{}", testkit::free_port());
    let (client, mut events) = Client::builder([dead.clone(), url(&s, Transport::Tcp)])
        .token_provider(tokens(&s.secret, &user, None, Arc::default()))
        .backoff(Duration::from_millis(50), Duration::from_millis(100))
        .start()
        .unwrap();
    match next(&mut events).await {
        Event::ConnectFailed { url, retry_in, .. } => {
            assert_eq!(url, dead);
            assert!(retry_in <= Duration::from_millis(50));
        }
        other => panic!("expected ConnectFailed, got {other:?}"),
    }
    let c = connected(&mut events).await;
    assert_eq!(c.url, url(&s, Transport::Tcp));
    client.close().await;
}

/// A token the server refuses: 4001, and the client retries with a new token.
#[tokio::test]
async fn auth_failure_is_reported_and_retried() {
    let s = Server::start(&[]).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (client, mut events) = Client::builder([url(&s, Transport::WsJson)])
        .token_provider(tokens("not-the-secret", "mallory", None, calls.clone()))
        .backoff(Duration::from_millis(50), Duration::from_millis(100))
        .start()
        .unwrap();
    for _ in 0..2 {
        match next(&mut events).await {
            Event::Disconnected(d) => {
                assert_eq!(d.code, Some(4001), "{d:?}");
                assert!(!d.reason.is_empty());
            }
            other => panic!("expected Disconnected 4001, got {other:?}"),
        }
    }
    assert!(calls.load(Ordering::Relaxed) >= 2);
    assert!(!client.is_connected());
    client.close().await;
}

/// SIGTERM: the server drains with 4007 `reconnect_after_ms=N`; the client
/// waits N ms and rotates to the next server of its list.
#[tokio::test]
async fn drain_rotates_to_the_next_server() {
    let secret = "client-drain-secret-0123456789abcdef";
    let key = "client-drain-api-key";
    let flags = ["--token-secret", secret, "--api-key", key];
    let mut s1 = Server::start(&flags).await;
    let s2 = Server::start(&flags).await;
    let user = uniq("cl-drain");
    let urls = [url(&s1, Transport::WsJson), url(&s2, Transport::WsBin)];
    let (client, mut events) = Client::builder(urls.clone())
        .token_provider(tokens(secret, &user, None, Arc::default()))
        .start()
        .unwrap();
    let c = connected(&mut events).await;
    assert_eq!(c.url, urls[0]);
    s1.wait_online(&user, true).await;
    let id1 = s1.push_id(&[&user], json!("one")).await;
    let mut got = Vec::new();
    collect(&mut events, &mut got, 1).await;

    s1.sigterm();
    let d = until(&mut events, &mut got, "Disconnected", |e| match e {
        Event::Disconnected(d) => Some(d.clone()),
        _ => None,
    })
    .await;
    assert_eq!(d.code, Some(4007), "{d:?}");
    let n: u64 = d
        .reason
        .strip_prefix("draining reconnect_after_ms=")
        .unwrap_or_else(|| panic!("4007 reason: {:?}", d.reason))
        .parse()
        .unwrap();
    assert_eq!(
        d.retry_in,
        Duration::from_millis(n),
        "the server's delay is obeyed"
    );
    let before = Instant::now();
    let c = until(
        &mut events,
        &mut got,
        "Connected to the second server",
        |e| match e {
            Event::Connected(c) => Some(c.clone()),
            _ => None,
        },
    )
    .await;
    assert!(before.elapsed() + Duration::from_millis(100) >= Duration::from_millis(n));
    assert_eq!(c.url, urls[1]);
    assert_eq!(c.resumed_from, Some(id1));
    s2.wait_online(&user, true).await;
    let id2 = s2.push_id(&[&user], json!("two")).await;
    collect(&mut events, &mut got, 2).await;
    assert_eq!(got[1].id, id2);
    assert!(s1.wait_exit(Duration::from_secs(15)).await.success());
    client.close().await;
}

/// A token provider with the IM claims: `pub` on `room:*`, channels `room:*`.
fn im_tokens(
    secret: &str,
    user: &str,
) -> impl Fn() -> std::future::Ready<Result<String, pushgate_client::BoxError>> + Send + Sync + 'static
{
    let (secret, user) = (secret.to_string(), user.to_string());
    move || {
        let claims = json!({
            "sub": user, "exp": now_secs() + 3600,
            "channels": ["room:*"], "pub": ["room:*"],
        });
        std::future::ready(Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()))
    }
}

/// `send` and `publish` through the library: answers with ids, messages
/// carry `from` and `cid`, a refusal is an error of the call, and a message
/// sent while the connection is down goes out on the next one, once.
#[tokio::test]
async fn send_and_publish_through_the_client() {
    let s = Server::start(&[]).await;
    let start = |user: &str, t: Transport| {
        Client::builder([url(&s, t)])
            .token_provider(im_tokens(&s.secret, user))
            .encoding(encoding(t))
            .backoff(Duration::from_millis(300), Duration::from_millis(600))
            .start()
            .unwrap()
    };
    let (alice, mut a_ev) = start("cl-alice", Transport::WsBin);
    let (bob, mut b_ev) = start("cl-bob", Transport::Tcp);
    connected(&mut a_ev).await;
    connected(&mut b_ev).await;
    bob.subscribe("room:1").await.unwrap();
    assert!(matches!(next(&mut b_ev).await, Event::Subscribed { .. }));

    let sent = alice.send("cl-bob", &json!({"text": "hi"})).await.unwrap();
    assert_eq!(sent.cid.len(), 32);
    let m = until(&mut b_ev, &mut Vec::new(), "message", |e| match e {
        Event::Message(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(m.id, sent.id);
    assert_eq!(m.from.as_deref(), Some("cl-alice"));
    assert_eq!(m.cid.as_deref(), Some(sent.cid.as_str()));
    assert_eq!(m.json::<Value>().unwrap(), json!({"text": "hi"}));

    let p = alice.publish("room:1", &json!("all")).await.unwrap();
    let m = until(&mut b_ev, &mut Vec::new(), "channel message", |e| match e {
        Event::Message(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!((m.id, m.channel.as_deref()), (p.id, Some("room:1")));

    match alice.publish("news", &json!(1)).await {
        Err(pushgate_client::ClientError::Refused { code, .. }) => {
            assert_eq!(code, ErrorCode::Forbidden);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Kick alice and send at once: the message waits for the reconnect,
    // goes out with its cid, and bob gets it once.
    s.api_ok("DELETE", "/users/cl-alice/connections", None, 200)
        .await;
    let sent = alice
        .send_with_cid("cl-bob", &json!("after"), "fixed-cid".into())
        .await
        .unwrap();
    let again = alice
        .send_with_cid("cl-bob", &json!("after"), "fixed-cid".into())
        .await
        .unwrap();
    assert_eq!(again.id, sent.id);
    let m = until(
        &mut b_ev,
        &mut Vec::new(),
        "message after reconnect",
        |e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(m.id, sent.id);
    quiet(&mut b_ev, Duration::from_millis(500)).await;
    close(alice, a_ev).await;
    close(bob, b_ev).await;
}
