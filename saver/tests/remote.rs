//! The shared store suite through the links: `RemoteStore` → `SaverService`
//! → a real store (embedded on a temp dir, and `RedisStore` on a real
//! `redis-server`), all over real sockets on 127.0.0.1; then failover between
//! savers.
//!
//! The cases are a copy of those in `suite.rs` (they are private to that test
//! crate, and that file is being changed in parallel): keep the two in step,
//! or move the cases to a shared module both files include.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::join_all;
use link::{ClientConfig, ServerConfig};
use proto::{MsgId, UserId};
use saver::{
    Bounds, EmbeddedStore, RedisStore, RemoteStore, SaverService, Store, StoreError, StoredMsg,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const HOUR: i64 = 3_600_000;

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn msg(id: i64, expires_at: i64) -> StoredMsg {
    StoredMsg {
        id: MsgId(id),
        ts: now(),
        expires_at,
        data: Bytes::from(format!("{{\"n\":{id}}}")),
    }
}

fn u(s: &str) -> UserId {
    UserId::new(s)
}

fn ids(msgs: &[StoredMsg]) -> Vec<i64> {
    msgs.iter().map(|m| m.id.0).collect()
}

const BIG: Bounds = Bounds { max: 1000 };

async fn read_all(store: &dyn Store, user: &str) -> Vec<i64> {
    ids(&store
        .read_user(&u(user), MsgId(i64::MIN), now(), 10_000)
        .await
        .unwrap())
}

// ---- cases ---------------------------------------------------------------

async fn append_read_order(store: &dyn Store) {
    let t = now() + HOUR;
    for id in [3, 1, 2] {
        store
            .append_users(&[u("ann")], &msg(id, t), BIG)
            .await
            .unwrap();
    }
    let got = store
        .read_user(&u("ann"), MsgId(0), now(), 100)
        .await
        .unwrap();
    assert_eq!(ids(&got), [1, 2, 3]);
    assert_eq!(got[0], msg(1, t).clone_with_ts(got[0].ts));
    assert_eq!(got[2].data, Bytes::from("{\"n\":3}"));
}

async fn after_id_filtering(store: &dyn Store) {
    let t = now() + HOUR;
    for id in 1..=10 {
        store
            .append_users(&[u("bob")], &msg(id, t), BIG)
            .await
            .unwrap();
    }
    let r = |after| async move {
        ids(&store
            .read_user(&u("bob"), MsgId(after), now(), 100)
            .await
            .unwrap())
    };
    assert_eq!(r(5).await, [6, 7, 8, 9, 10]);
    assert_eq!(r(10).await, Vec::<i64>::new());
    assert_eq!(r(i64::MAX).await, Vec::<i64>::new());
    assert_eq!(r(-1).await, (1..=10).collect::<Vec<_>>());
}

async fn trims_to_max(store: &dyn Store) {
    let t = now() + HOUR;
    for id in 1..=12 {
        store
            .append_users(&[u("cat")], &msg(id, t), Bounds { max: 5 })
            .await
            .unwrap();
    }
    assert_eq!(read_all(store, "cat").await, [8, 9, 10, 11, 12]);
    // A smaller bound on a later push trims further.
    store
        .append_users(&[u("cat")], &msg(13, t), Bounds { max: 2 })
        .await
        .unwrap();
    assert_eq!(read_all(store, "cat").await, [12, 13]);
    // max 0 keeps nothing.
    store
        .append_users(&[u("cat")], &msg(14, t), Bounds { max: 0 })
        .await
        .unwrap();
    assert_eq!(read_all(store, "cat").await, Vec::<i64>::new());
}

async fn ttl_expiry(store: &dyn Store) {
    let base = now();
    let short = base + 1_000;
    let long = base + HOUR;
    for (id, exp) in [(1, short), (2, long), (3, short), (4, long)] {
        store
            .append_users(&[u("dan")], &msg(id, exp), BIG)
            .await
            .unwrap();
    }
    let at = |t| async move { ids(&store.read_user(&u("dan"), MsgId(0), t, 100).await.unwrap()) };
    assert_eq!(at(base).await, [1, 2, 3, 4]);
    assert_eq!(at(short - 1).await, [1, 2, 3, 4]);
    assert_eq!(at(short).await, [2, 4], "expired at expires_at");
    assert_eq!(at(base + 2_000).await, [2, 4]);
    assert_eq!(at(long + 1).await, Vec::<i64>::new());
}

async fn multi_user_append(store: &dyn Store) {
    let t = now() + HOUR;
    store
        .append_users(&[u("m1"), u("m2"), u("m3")], &msg(1, t), BIG)
        .await
        .unwrap();
    store
        .append_users(&[u("m2")], &msg(2, t), BIG)
        .await
        .unwrap();
    store.append_users(&[], &msg(3, t), BIG).await.unwrap();
    assert_eq!(read_all(store, "m1").await, [1]);
    assert_eq!(read_all(store, "m2").await, [1, 2]);
    assert_eq!(read_all(store, "m3").await, [1]);
    assert_eq!(read_all(store, "m4").await, Vec::<i64>::new());
}

async fn reappend_same_id_is_idempotent(store: &dyn Store) {
    let t = now() + HOUR;
    let m = msg(7, t);
    store.append_users(&[u("re")], &m, BIG).await.unwrap();
    store.append_users(&[u("re")], &m, BIG).await.unwrap();
    assert_eq!(read_all(store, "re").await, [7]);
}

async fn acks_are_monotonic(store: &dyn Store) {
    let user = u("eve");
    assert_eq!(store.acked(&user, "phone").await.unwrap(), None);
    store.ack(&user, "phone", MsgId(5)).await.unwrap();
    assert_eq!(store.acked(&user, "phone").await.unwrap(), Some(MsgId(5)));
    store.ack(&user, "phone", MsgId(3)).await.unwrap();
    assert_eq!(store.acked(&user, "phone").await.unwrap(), Some(MsgId(5)));
    store.ack(&user, "phone", MsgId(90)).await.unwrap();
    assert_eq!(store.acked(&user, "phone").await.unwrap(), Some(MsgId(90)));
    // Ids beyond f64 precision still compare exactly.
    let big = (1_i64 << 60) + 2;
    store.ack(&user, "phone", MsgId(big)).await.unwrap();
    store.ack(&user, "phone", MsgId(big - 1)).await.unwrap();
    assert_eq!(store.acked(&user, "phone").await.unwrap(), Some(MsgId(big)));
    store.ack(&user, "phone", MsgId(big + 1)).await.unwrap();
    assert_eq!(
        store.acked(&user, "phone").await.unwrap(),
        Some(MsgId(big + 1))
    );
    // Devices and users are separate.
    assert_eq!(store.acked(&user, "laptop").await.unwrap(), None);
    assert_eq!(store.acked(&u("eve2"), "phone").await.unwrap(), None);
    store.ack(&user, "laptop", MsgId(1)).await.unwrap();
    assert_eq!(store.acked(&user, "laptop").await.unwrap(), Some(MsgId(1)));
}

async fn channel_history_bounds(store: &dyn Store) {
    let t = now() + HOUR;
    for id in 1..=6 {
        store
            .append_channel("news", &msg(id, t), Bounds { max: 3 })
            .await
            .unwrap();
    }
    let r = |after, limit| async move {
        ids(&store
            .read_channel("news", MsgId(after), now(), limit)
            .await
            .unwrap())
    };
    assert_eq!(r(0, 100).await, [4, 5, 6]);
    assert_eq!(r(4, 100).await, [5, 6]);
    assert_eq!(r(0, 1).await, [4]);
    assert_eq!(
        ids(&store
            .read_channel("other", MsgId(0), now(), 10)
            .await
            .unwrap()),
        Vec::<i64>::new()
    );
    // Channel history and user queues do not mix.
    assert_eq!(read_all(store, "news").await, Vec::<i64>::new());
    // Expired history is filtered.
    store
        .append_channel("news", &msg(7, now() + 500), Bounds { max: 3 })
        .await
        .unwrap();
    let late = ids(&store
        .read_channel("news", MsgId(0), now() + 1_000, 10)
        .await
        .unwrap());
    assert_eq!(late, [5, 6]);
}

async fn limit_is_respected(store: &dyn Store) {
    let base = now();
    for id in 1..=20 {
        // Odd ids expire soon, even ones in an hour.
        let exp = if id % 2 == 1 {
            base + 1_000
        } else {
            base + HOUR
        };
        store
            .append_users(&[u("lim")], &msg(id, exp), BIG)
            .await
            .unwrap();
    }
    let r = |t, limit| async move {
        ids(&store
            .read_user(&u("lim"), MsgId(0), t, limit)
            .await
            .unwrap())
    };
    assert_eq!(r(base, 0).await, Vec::<i64>::new());
    assert_eq!(r(base, 4).await, [1, 2, 3, 4]);
    // Expired entries do not count towards the limit.
    assert_eq!(r(base + 2_000, 3).await, [2, 4, 6]);
    assert_eq!(
        r(base + 2_000, 100).await,
        (1..=10).map(|i| i * 2).collect::<Vec<_>>()
    );
}

async fn concurrent_appends_all_durable(store: &dyn Store) {
    let t = now() + HOUR;
    let n = 300i64;
    let calls = (1..=n).map(|i| async move {
        let users = [u("shared"), u(&format!("own-{i}"))];
        store.append_users(&users, &msg(i, t), BIG).await
    });
    for r in join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(read_all(store, "shared").await, (1..=n).collect::<Vec<_>>());
    for i in [1, n / 2, n] {
        assert_eq!(read_all(store, &format!("own-{i}")).await, [i]);
    }
    let shared = u("shared");
    let acks = (1..=50).map(|i| store.ack(&shared, "d", MsgId(i)));
    for r in join_all(acks).await {
        r.unwrap();
    }
    assert_eq!(
        store.acked(&u("shared"), "d").await.unwrap(),
        Some(MsgId(50))
    );
}

async fn odd_names(store: &dyn Store) {
    let t = now() + HOUR;
    let names = [
        "a:b",
        "{x}",
        "}{",
        "a}b",
        "a%7Db",
        "ünïcødé 😀",
        "pg:{u:z}:q",
        "",
    ];
    for (i, name) in names.iter().enumerate() {
        let id = i64::try_from(i).unwrap() + 1;
        store
            .append_users(&[u(name)], &msg(id, t), BIG)
            .await
            .unwrap();
        store.append_channel(name, &msg(id, t), BIG).await.unwrap();
        store.ack(&u(name), name, MsgId(id)).await.unwrap();
    }
    for (i, name) in names.iter().enumerate() {
        let id = i64::try_from(i).unwrap() + 1;
        assert_eq!(read_all(store, name).await, [id], "user {name:?}");
        let h = store.read_channel(name, MsgId(0), now(), 10).await.unwrap();
        assert_eq!(ids(&h), [id], "channel {name:?}");
        assert_eq!(store.acked(&u(name), name).await.unwrap(), Some(MsgId(id)));
    }
}

async fn closed_store_refuses(store: &dyn Store) {
    let t = now() + HOUR;
    store
        .append_users(&[u("cl")], &msg(1, t), BIG)
        .await
        .unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        store.append_users(&[u("cl")], &msg(2, t), BIG).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.read_user(&u("cl"), MsgId(0), now(), 10).await,
        Err(StoreError::Closed)
    ));
    // Closing twice is fine.
    store.close().await.unwrap();
}

trait CloneWithTs {
    fn clone_with_ts(&self, ts: i64) -> StoredMsg;
}

impl CloneWithTs for StoredMsg {
    fn clone_with_ts(&self, ts: i64) -> StoredMsg {
        StoredMsg { ts, ..self.clone() }
    }
}

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

suite!(
    append_read_order,
    after_id_filtering,
    trims_to_max,
    ttl_expiry,
    multi_user_append,
    reappend_same_id_is_idempotent,
    acks_are_monotonic,
    channel_history_bounds,
    limit_is_respected,
    concurrent_appends_all_durable,
    odd_names,
    closed_store_refuses,
);

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
    assert!(matches!(down, Err(StoreError::Backend(_))), "{down:?}");

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
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    remote.close().await.unwrap();
    saver.stop().await;
    let _ = store.close().await;
}

#[tokio::test]
async fn no_saver_addresses_is_an_error() {
    let remote = RemoteStore::new(Vec::new(), client_cfg());
    assert!(matches!(
        remote.acked(&u("x"), "d").await,
        Err(StoreError::Backend(_))
    ));
}
