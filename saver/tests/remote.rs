//! The shared store suite through the links: `RemoteStore` → `SaverService`
//! → a real store (embedded on a temp dir, and `RedisStore` on a real
//! `redis-server`), all over real sockets on 127.0.0.1; then failover between
//! savers.
//!
//! The cases are those of `suite.rs`, shared through `tests/cases/mod.rs`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use link::{ClientConfig, ServerConfig};
use proto::MsgId;
use saver::remote::{SaverReq, SaverResp};
use saver::{
    Append, Bounds, EmbeddedStore, RedisStore, RemoteStore, SaverService, Store, StoreError,
    StoredMsg,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[macro_use]
mod cases;
use cases::*;

// ---- savers --------------------------------------------------------------

const KEY: &str = "saver-test-key";

/// A saver: `store` served on a loopback port until stopped.
struct Saver {
    addr: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Saver {
    async fn start(store: Arc<dyn Store>) -> Saver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, store)
    }

    /// Serves on `addr` again (a saver restarting on its port).
    async fn start_on(addr: &str, store: Arc<dyn Store>) -> Saver {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, store)
    }

    fn serve(listener: TcpListener, store: Arc<dyn Store>) -> Saver {
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let server = tokio::spawn(link::serve(
            listener,
            SaverService::new(store),
            ServerConfig::new(KEY),
            stop.clone(),
        ));
        Saver { addr, stop, server }
    }

    /// Stops serving; returns when the listener and every connection are closed.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .unwrap()
            .unwrap();
    }
}

fn client_cfg() -> ClientConfig {
    let mut cfg = ClientConfig::new(KEY);
    cfg.call_timeout = Duration::from_secs(3);
    cfg
}

// ---- backends ------------------------------------------------------------

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod on_remote_embedded {
            use std::sync::Arc;
            use saver::Store as _;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = Arc::new(super::EmbeddedStore::open(&dir.path().join("pushgate.redb")).unwrap());
                    let saver = super::Saver::start(store.clone()).await;
                    let remote = super::RemoteStore::new(vec![saver.addr.clone()], super::client_cfg());
                    super::$case(&*remote).await;
                    remote.close().await.unwrap();
                    saver.stop().await;
                    store.close().await.unwrap();
                }
            )*
        }
        mod on_remote_redis {
            use std::sync::Arc;
            use saver::Store as _;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = testkit::RedisServer::start();
                    let store = Arc::new(super::RedisStore::connect(&server.url()).await.unwrap());
                    let saver = super::Saver::start(store.clone()).await;
                    let remote = super::RemoteStore::new(vec![saver.addr.clone()], super::client_cfg());
                    super::$case(&*remote).await;
                    remote.close().await.unwrap();
                    saver.stop().await;
                    store.close().await.unwrap();
                }
            )*
        }
    };
}

every_case!(suite);

// ---- failover ------------------------------------------------------------

/// Appends `id` for `user` and acks it, as a center would.
async fn push(store: &dyn Store, user: &str, id: i64) -> Result<(), StoreError> {
    let big = Bounds { max: 100_000 };
    store
        .append_users(&[u(user)], &msg(id, now() + HOUR), big)
        .await?;
    store.ack(&u(user), "d", MsgId(id)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_when_one_of_two_savers_stops() {
    let redis = testkit::RedisServer::start();
    let store_a = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let store_b = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let a = Saver::start(store_a.clone()).await;
    let b = Saver::start(store_b.clone()).await;
    let remote = RemoteStore::new(vec![a.addr.clone(), b.addr.clone()], client_cfg());

    // Writers run through the stop: calls in flight on the stopped saver and
    // calls made after it must all succeed (on the other one).
    let started = Instant::now();
    let run_for = Duration::from_millis(1_500);
    let mut writers = Vec::new();
    for t in 0..4i64 {
        let remote = remote.clone();
        writers.push(tokio::spawn(async move {
            let user = format!("w{t}");
            let mut done = Vec::new();
            let mut i = 1;
            while started.elapsed() < run_for {
                let id = t * 1_000_000 + i;
                push(&*remote, &user, id).await.unwrap();
                done.push(id);
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (user, done)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.stop().await;
    store_a.close().await.unwrap();

    for w in writers {
        let (user, done) = w.await.unwrap();
        assert!(done.len() > 10, "{user}: only {} pushes", done.len());
        assert_eq!(read_all(&*remote, &user).await, done, "{user}");
        assert_eq!(
            remote.acked(&u(&user), "d").await.unwrap(),
            done.last().map(|&id| MsgId(id))
        );
    }
    // Every method still works with one saver left.
    for id in 1..=20 {
        push(&*remote, "after", id).await.unwrap();
        remote
            .append_channel("ch", &msg(id, now() + HOUR), BIG)
            .await
            .unwrap();
    }
    assert_eq!(
        read_all(&*remote, "after").await,
        (1..=20).collect::<Vec<_>>()
    );
    let h = remote
        .read_channel("ch", MsgId(10), now(), 100)
        .await
        .unwrap();
    assert_eq!(ids(&h), (11..=20).collect::<Vec<_>>());

    remote.close().await.unwrap();
    b.stop().await;
    store_b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saver_whose_store_is_closed_is_skipped() {
    let redis = testkit::RedisServer::start();
    let store_a = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let store_b = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let a = Saver::start(store_a.clone()).await;
    let b = Saver::start(store_b.clone()).await;
    let remote = RemoteStore::new(vec![a.addr.clone(), b.addr.clone()], client_cfg());
    // Saver a drains: its store refuses, its listener is still up.
    store_a.close().await.unwrap();
    for id in 1..=20 {
        push(&*remote, "dr", id).await.unwrap();
    }
    assert_eq!(read_all(&*remote, "dr").await, (1..=20).collect::<Vec<_>>());
    remote.close().await.unwrap();
    a.stop().await;
    b.stop().await;
    store_b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_saver_down_is_an_error_and_back_is_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("pushgate.redb")).unwrap());
    let saver = Saver::start(store.clone()).await;
    let addr = saver.addr.clone();
    let remote = RemoteStore::new(vec![addr.clone()], client_cfg());
    push(&*remote, "solo", 1).await.unwrap();

    saver.stop().await;
    let down = tokio::time::timeout(Duration::from_secs(10), push(&*remote, "solo", 2))
        .await
        .unwrap();
    assert!(matches!(down, Err(StoreError::NoSaver { .. })), "{down:?}");

    // The saver restarts on its port; the client reconnects (backoff ≤ 2 s).
    let saver = Saver::start_on(&addr, store.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match push(&*remote, "solo", 2).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("saver not used again after restart: {e}"),
        }
    }
    assert_eq!(read_all(&*remote, "solo").await, [1, 2]);
    remote.close().await.unwrap();
    saver.stop().await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failure_comes_back_as_a_backend_error() {
    let redis = testkit::RedisServer::start();
    let store = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let saver = Saver::start(store.clone()).await;
    let remote = RemoteStore::new(vec![saver.addr.clone()], client_cfg());
    push(&*remote, "bf", 1).await.unwrap();
    drop(redis); // killed
    let r = tokio::time::timeout(Duration::from_secs(30), push(&*remote, "bf", 2))
        .await
        .unwrap();
    assert!(matches!(r, Err(StoreError::Remote { .. })), "{r:?}");
    remote.close().await.unwrap();
    saver.stop().await;
    let _ = store.close().await;
}

#[tokio::test]
async fn no_saver_addresses_is_an_error() {
    let remote = RemoteStore::new(Vec::new(), client_cfg());
    assert!(matches!(
        remote.acked(&u("x"), "d").await,
        Err(StoreError::Setup(_))
    ));
}

// ---- batches -------------------------------------------------------------

/// A saver that counts the calls it gets: batches and single calls.
struct Counting {
    inner: Arc<SaverService>,
    batches: AtomicUsize,
    singles: AtomicUsize,
}

#[async_trait::async_trait]
impl link::Service for Counting {
    type Req = SaverReq;
    type Resp = SaverResp;
    const NAME: &'static str = saver::remote::SERVICE;
    const ORDERED: bool = false;

    async fn call(&self, req: SaverReq) -> SaverResp {
        let n = match req {
            SaverReq::AppendMany { .. } => &self.batches,
            _ => &self.singles,
        };
        n.fetch_add(1, Ordering::Relaxed);
        self.inner.call(req).await
    }
}

/// Serves `service` on a loopback port; the address and the stopper.
async fn serve<S: link::Service>(service: Arc<S>) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(link::serve(
        listener,
        service,
        ServerConfig::new(KEY),
        stop.clone(),
    ));
    (addr, stop)
}

fn sized_msg(id: i64, bytes: usize) -> StoredMsg {
    StoredMsg {
        data: bytes::Bytes::from(format!("\"{}\"", "x".repeat(bytes))),
        ..msg(id, now() + HOUR)
    }
}

/// A dispatcher's batch of writes is one saver call, and one over
/// `APPEND_MANY_BYTES` is a few, with every write durable either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_saver_call_and_a_big_one_a_few() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("pushgate.redb")).unwrap());
    let counting = Arc::new(Counting {
        inner: SaverService::new(store.clone()),
        batches: AtomicUsize::new(0),
        singles: AtomicUsize::new(0),
    });
    let (addr, stop) = serve(counting.clone()).await;
    let remote = RemoteStore::new(vec![addr], client_cfg());

    let small: Vec<Append> = (1..=50)
        .map(|id| users_write(&["s", &format!("s{id}")], id, 1000))
        .collect();
    let results = remote.append_many(&small).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(counting.batches.load(Ordering::Relaxed), 1);
    assert_eq!(counting.singles.load(Ordering::Relaxed), 0);
    assert_eq!(read_all(&*remote, "s").await, (1..=50).collect::<Vec<_>>());

    // 40 writes of 40 KiB: 1.6 MB, two calls.
    let big: Vec<Append> = (101..=140)
        .map(|id| Append::Users {
            users: vec![u("b")],
            msg: sized_msg(id, 40 * 1024),
            bounds: BIG,
        })
        .collect();
    let total: usize = big.iter().map(Append::wire_size).sum();
    assert!(total > saver::remote::APPEND_MANY_BYTES, "{total}");
    let results = remote.append_many(&big).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(counting.batches.load(Ordering::Relaxed), 3);
    assert_eq!(
        read_all(&*remote, "b").await,
        (101..=140).collect::<Vec<_>>()
    );
    remote.close().await.unwrap();
    stop.cancel();
    store.close().await.unwrap();
}

/// What a saver of the version before `AppendMany` decodes: its requests
/// up to `AppendUsers` (the first) and its answers up to `Done`.
#[derive(serde::Deserialize)]
enum OlderReq {
    AppendUsers {
        users: Vec<proto::UserId>,
        msg: StoredMsg,
        bounds: Bounds,
    },
}

#[derive(serde::Serialize)]
enum OlderResp {
    Done,
}

struct OlderSaver {
    store: Arc<dyn Store>,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl link::Service for OlderSaver {
    type Req = OlderReq;
    type Resp = OlderResp;
    const NAME: &'static str = saver::remote::SERVICE;
    const ORDERED: bool = false;

    async fn call(&self, req: OlderReq) -> OlderResp {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let OlderReq::AppendUsers { users, msg, bounds } = req;
        self.store.append_users(&users, &msg, bounds).await.unwrap();
        OlderResp::Done
    }
}

/// During an upgrade a center may be newer than its savers: a batch to a
/// saver that does not know `AppendMany` goes as one call per write, and
/// every write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_saver_gets_a_call_per_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("pushgate.redb")).unwrap());
    let older = Arc::new(OlderSaver {
        store: store.clone(),
        calls: AtomicUsize::new(0),
    });
    let (addr, stop) = serve(older.clone()).await;
    let remote = RemoteStore::new(vec![addr], client_cfg());
    let writes: Vec<Append> = (1..=3).map(|id| users_write(&["o"], id, 100)).collect();
    let results = remote.append_many(&writes).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The batch is refused undecoded (it never reaches the service); then
    // the three writes.
    assert_eq!(older.calls.load(Ordering::Relaxed), 3);
    assert_eq!(read_all(&*store, "o").await, [1, 2, 3]);
    remote.close().await.unwrap();
    stop.cancel();
    store.close().await.unwrap();
}
