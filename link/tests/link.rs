//! Links over real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use link::{serve, Client, ClientConfig, LinkError, ServerConfig, Service};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize, Deserialize)]
enum Req {
    Echo(String),
    Sleep(u64),
    Count,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Resp {
    Echo(String),
    Slept,
    Count(u64),
}

#[derive(Default)]
struct Svc {
    seen: AtomicU64,
}

#[async_trait]
impl Service for Svc {
    type Req = Req;
    type Resp = Resp;
    const NAME: &'static str = "test";
    const ORDERED: bool = false;
    async fn call(&self, req: Req) -> Resp {
        self.seen.fetch_add(1, Ordering::Relaxed);
        match req {
            Req::Echo(s) => Resp::Echo(s),
            Req::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Resp::Slept
            }
            Req::Count => Resp::Count(self.seen.load(Ordering::Relaxed)),
        }
    }
}

/// Ordered: appends to a log, so the order of handling is visible.
#[derive(Default)]
struct Log {
    log: parking_lot::Mutex<Vec<u64>>,
}

#[async_trait]
impl Service for Log {
    type Req = u64;
    type Resp = usize;
    const NAME: &'static str = "log";
    const ORDERED: bool = true;
    async fn call(&self, n: u64) -> usize {
        // Later requests sleep less (whole milliseconds, above the timer's
        // resolution): a concurrent server would reorder them.
        tokio::time::sleep(Duration::from_millis(20 - (n % 20))).await;
        let mut log = self.log.lock();
        log.push(n);
        log.len()
    }
}

async fn start<S: Service>(svc: Arc<S>, key: &str) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, svc, ServerConfig::new(key), stop.clone()));
    (addr, stop)
}

fn cfg(key: &str) -> ClientConfig {
    let mut c = ClientConfig::new(key);
    c.call_timeout = Duration::from_millis(500);
    c.backoff_max = Duration::from_millis(100);
    c
}

#[tokio::test]
async fn pipelined_calls_get_their_own_answers() {
    let (addr, _stop) = start(Arc::new(Svc::default()), "k").await;
    let c: Client<Req, Resp> = Client::new(addr.to_string(), "test", cfg("k"));
    let calls = (0..2000).map(|i| {
        let c = c.clone();
        async move { (i, c.call(Req::Echo(format!("m{i}"))).await) }
    });
    for (i, r) in futures_util::future::join_all(calls).await {
        assert_eq!(r.unwrap(), Resp::Echo(format!("m{i}")));
    }
}

#[tokio::test]
async fn ordered_service_handles_requests_in_sending_order() {
    let svc = Arc::new(Log::default());
    let (addr, _stop) = start(svc.clone(), "").await;
    let c: Client<u64, usize> = Client::new(addr.to_string(), "log", cfg(""));
    assert!(c.wait_connected(Duration::from_secs(2)).await);
    // join_all of at most 30 futures polls them in order, so each chunk's
    // frames are queued in order and are in flight together.
    for chunk in 0..10u64 {
        let calls = (chunk * 20..chunk * 20 + 20).map(|i| c.call(i));
        let rs = futures_util::future::join_all(calls).await;
        assert!(rs.iter().all(Result::is_ok));
    }
    assert_eq!(*svc.log.lock(), (0..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn slow_call_times_out_and_others_proceed() {
    let (addr, _stop) = start(Arc::new(Svc::default()), "k").await;
    let c: Client<Req, Resp> = Client::new(addr.to_string(), "test", cfg("k"));
    let slow = c.call(Req::Sleep(2000));
    let fast = c.call(Req::Echo("x".into()));
    let (slow, fast) = tokio::join!(slow, fast);
    assert!(matches!(slow, Err(LinkError::Timeout { .. })), "{slow:?}");
    assert_eq!(fast.unwrap(), Resp::Echo("x".into()));
}

#[tokio::test]
async fn wrong_key_or_service_is_refused() {
    let (addr, _stop) = start(Arc::new(Svc::default()), "right").await;
    let c: Client<Req, Resp> = Client::new(addr.to_string(), "test", cfg("wrong"));
    let r = c.call(Req::Count).await;
    assert!(matches!(r, Err(LinkError::Unavailable { .. })), "{r:?}");
    let c: Client<Req, Resp> = Client::new(addr.to_string(), "saver", cfg("right"));
    let r = c.call(Req::Count).await;
    assert!(matches!(r, Err(LinkError::Unavailable { .. })), "{r:?}");
}

#[tokio::test]
async fn garbage_connection_does_not_disturb_others() {
    use tokio::io::AsyncWriteExt;
    let (addr, _stop) = start(Arc::new(Svc::default()), "k").await;
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&[0, 0, 0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap(); // 4 GiB frame: refused
    let c: Client<Req, Resp> = Client::new(addr.to_string(), "test", cfg("k"));
    assert_eq!(
        c.call(Req::Echo("ok".into())).await.unwrap(),
        Resp::Echo("ok".into())
    );
}

#[tokio::test]
async fn reconnects_after_server_restart_and_reports_new_instance() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Svc::default()),
        ServerConfig::new("k"),
        stop.clone(),
    ));
    let c: Client<Req, Resp> = Client::new(addr.to_string(), "test", cfg("k"));
    assert!(c.wait_connected(Duration::from_secs(2)).await);
    let first = c.instance().unwrap();
    // A call in flight when the server goes away fails, it does not hang.
    let inflight = tokio::spawn({
        let c = c.clone();
        async move { c.call(Req::Sleep(300)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    server.await.unwrap();
    let r = inflight.await.unwrap();
    assert!(matches!(r, Err(LinkError::Disconnected { .. })), "{r:?}");
    // Down: fails at once.
    let t = std::time::Instant::now();
    let r = c.call(Req::Count).await;
    assert!(matches!(r, Err(LinkError::Unavailable { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_millis(200));
    // Back on the same port, a new instance.
    let listener = TcpListener::bind(addr).await.unwrap();
    let stop2 = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        Arc::new(Svc::default()),
        ServerConfig::new("k"),
        stop2.clone(),
    ));
    assert!(c.wait_connected(Duration::from_secs(3)).await);
    assert_ne!(c.instance().unwrap(), first);
    assert_eq!(c.call(Req::Count).await.unwrap(), Resp::Count(1));
    stop2.cancel();
}

/// An older peer: it knows only the first request of [`Req`].
struct Older;

#[derive(Debug, Serialize, Deserialize)]
enum OlderReq {
    Echo(String),
}

#[async_trait]
impl Service for Older {
    type Req = OlderReq;
    type Resp = Resp;
    const NAME: &'static str = "test";
    const ORDERED: bool = true;
    async fn call(&self, req: OlderReq) -> Resp {
        let OlderReq::Echo(s) = req;
        Resp::Echo(s)
    }
}

#[tokio::test]
async fn a_request_the_peer_does_not_know_is_told_apart_and_the_link_goes_on() {
    let (addr, _stop) = start(Arc::new(Older), "k").await;
    let c: Client<Req, Resp> = Client::new(addr.to_string(), "test", cfg("k"));
    let err = c.call(Req::Count).await.unwrap_err();
    assert!(err.is_unknown_request(), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    // Other errors are not taken for it.
    let late = LinkError::Timeout {
        service: "test",
        addr: addr.to_string(),
        timeout: Duration::from_millis(1),
    };
    assert!(!late.is_unknown_request());
    // The same connection serves what the peer knows.
    assert_eq!(
        c.call(Req::Echo("still here".into())).await.unwrap(),
        Resp::Echo("still here".into())
    );
}
