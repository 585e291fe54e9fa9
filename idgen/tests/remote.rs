//! Ids over real links on 127.0.0.1: idgen servers backed by real
//! [`FileIdGen`]s in temp dirs (distinct regions), and [`LeasedIds`] clients.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use idgen::remote::{IdgenReq, IdgenResp, MAX_LEASE, SERVICE};
use idgen::{counter_of, nth_id, region_of, FileIdGen, IdGen, IdGenError, IdgenService, LeasedIds};
use link::{ClientConfig, ServerConfig};
use proto::MsgId;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-key";

/// One idgen process's worth: a `FileIdGen` of `region` in a temp dir, served
/// on a loopback port until `stop` is cancelled.
struct Idgen {
    addr: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    ids: Arc<FileIdGen>,
    _dir: tempfile::TempDir,
}

impl Idgen {
    async fn start(region: u16) -> Idgen {
        let dir = tempfile::tempdir().unwrap();
        let ids = Arc::new(FileIdGen::open(dir.path(), region).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let server = tokio::spawn(link::serve(
            listener,
            IdgenService::new(ids.clone()),
            ServerConfig::new(KEY),
            stop.clone(),
        ));
        Idgen {
            addr,
            stop,
            server,
            ids,
            _dir: dir,
        }
    }

    /// Stops serving and waits until the listener and every connection are gone.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .unwrap()
            .unwrap();
        self.ids.close().await.unwrap();
    }
}

fn client_cfg() -> ClientConfig {
    let mut cfg = ClientConfig::new(KEY);
    cfg.call_timeout = Duration::from_secs(3);
    cfg
}

fn now_us() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// The `n` ids of one `next_ids` answer, checked to be strictly increasing
/// and of one region.
fn expand(first: MsgId, n: u32) -> Vec<MsgId> {
    let ids: Vec<MsgId> = (0..n.max(1)).map(|k| nth_id(first, k)).collect();
    for w in ids.windows(2) {
        assert!(w[0] < w[1], "block not increasing: {} then {}", w[0], w[1]);
        assert_eq!(region_of(w[0]), region_of(w[1]));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_over_two_regions_get_unique_ids() {
    let one = Idgen::start(1).await;
    let two = Idgen::start(2).await;
    let a = LeasedIds::new(
        vec![one.addr.clone(), two.addr.clone()],
        client_cfg(),
        64,
        Duration::from_millis(250),
    );
    let b = LeasedIds::new(
        vec![two.addr.clone(), one.addr.clone()],
        client_cfg(),
        64,
        Duration::from_millis(250),
    );
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let ids = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..300u32 {
                // Mostly below the block, sometimes a whole block or more.
                let n = if i % 37 == 0 {
                    64 + i % 90
                } else {
                    1 + (t + i) % 20
                };
                let first = ids.next_ids(n).await.unwrap();
                mine.extend(expand(first, n));
            }
            mine
        }));
    }
    let mut all = HashSet::new();
    let mut regions = HashSet::new();
    let mut count = 0usize;
    for t in tasks {
        for id in t.await.unwrap() {
            count += 1;
            regions.insert(region_of(id));
            assert!(all.insert(id), "duplicate id {id}");
        }
    }
    assert_eq!(count, all.len());
    assert_eq!(
        regions,
        HashSet::from([1, 2]),
        "blocks come from both idgens"
    );
    drop((a, b));
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_keep_succeeding_when_an_idgen_stops() {
    let one = Idgen::start(1).await;
    let two = Idgen::start(2).await;
    // A small block: leases happen all the time, also while idgen 1 goes away.
    let ids = LeasedIds::new(
        vec![one.addr.clone(), two.addr.clone()],
        client_cfg(),
        8,
        Duration::from_millis(250),
    );
    // Blocks come from one idgen at a time: stop the one in use.
    let in_use = region_of(ids.next_ids(1).await.unwrap());
    let (used, spare) = if in_use == 1 { (one, two) } else { (two, one) };
    let other = if in_use == 1 { 2 } else { 1 };
    let started = Instant::now();
    let run_for = Duration::from_millis(2_000);
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut i = 0u32;
            while started.elapsed() < run_for {
                let n = 1 + (t + i) % 5;
                let first = ids.next_ids(n).await.unwrap();
                got.push((started.elapsed(), expand(first, n)));
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            got
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_at = started.elapsed();
    used.stop().await;

    let mut all = HashSet::new();
    let mut before = HashSet::new();
    let mut late_regions = HashSet::new();
    let mut late_calls = 0;
    for t in tasks {
        for (at, block) in t.await.unwrap() {
            if at < stopped_at {
                before.insert(region_of(block[0]));
            }
            // Well after the stop (the last block of idgen 1 is at most
            // max_age old), every block comes from idgen 2.
            if at > stopped_at + Duration::from_millis(600) {
                late_regions.insert(region_of(block[0]));
                late_calls += 1;
            }
            for id in block {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
    }
    assert!(
        before.contains(&in_use),
        "the idgen in use served before the stop"
    );
    assert!(late_calls > 20, "only {late_calls} calls after the stop");
    assert_eq!(late_regions, HashSet::from([other]));
    drop(ids);
    spare.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_older_than_max_age_are_not_used() {
    let one = Idgen::start(7).await;
    let ids = LeasedIds::new(
        vec![one.addr.clone()],
        client_cfg(),
        4096,
        Duration::from_millis(250),
    );
    let a = ids.next_ids(1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let floor = now_us();
    let b = ids.next_ids(1).await.unwrap();
    assert!(
        counter_of(b) > counter_of(a) + 4096,
        "the old block was used after max_age: {a} then {b}"
    );
    // The idgen moves its counter to the clock once a second: a fresh block
    // lags the clock by at most about that second.
    let slack = 1_500_000;
    assert!(
        counter_of(b) >= floor - slack,
        "id {b} (counter {}) is {} µs behind the clock",
        counter_of(b),
        floor - counter_of(b)
    );
    drop(ids);
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_block_is_handed_out_locally() {
    let one = Idgen::start(3).await;
    let ids = LeasedIds::new(
        vec![one.addr.clone()],
        client_cfg(),
        64,
        Duration::from_secs(60),
    );
    let x = ids.next_ids(1).await.unwrap();
    let y = ids.next_ids(3).await.unwrap();
    let z = ids.next_ids(0).await.unwrap();
    assert_eq!(y, nth_id(x, 1));
    assert_eq!(z, nth_id(y, 3), "n = 0 is taken as 1");
    assert_eq!(region_of(x), 3);
    drop(ids);
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_block_in_one_call() {
    let one = Idgen::start(4).await;
    let ids = LeasedIds::new(
        vec![one.addr.clone()],
        client_cfg(),
        16,
        Duration::from_secs(60),
    );
    let mut all = HashSet::new();
    let a = ids.next_ids(1).await.unwrap();
    assert!(all.insert(a));
    let big = ids.next_ids(100).await.unwrap();
    for id in expand(big, 100) {
        assert!(all.insert(id), "duplicate id {id}");
    }
    // The big call leased its own block; the current one is still in use.
    let c = ids.next_ids(1).await.unwrap();
    assert_eq!(c, nth_id(a, 1));
    assert!(all.insert(c));
    for n in [16, 17, 5_000, 1, 15] {
        let first = ids.next_ids(n).await.unwrap();
        for id in expand(first, n) {
            assert!(all.insert(id), "duplicate id {id}");
        }
    }
    assert!(matches!(
        ids.next_ids(MAX_LEASE + 1).await,
        Err(IdGenError::Unavailable(_))
    ));
    drop(ids);
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_idgen_reachable_is_an_error_not_a_hang() {
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let mut cfg = client_cfg();
    cfg.first_connect_wait = Duration::from_millis(200);
    let ids = LeasedIds::new(vec![addr], cfg, 64, Duration::from_millis(250));
    let r = tokio::time::timeout(Duration::from_secs(10), ids.next_ids(1))
        .await
        .unwrap();
    assert!(matches!(r, Err(IdGenError::Unavailable(_))), "{r:?}");
    let none = LeasedIds::new(Vec::new(), client_cfg(), 64, Duration::from_millis(250));
    assert!(matches!(
        none.next_ids(1).await,
        Err(IdGenError::Unavailable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_leases_and_refuses_oversized_ones() {
    let one = Idgen::start(9).await;
    let client: link::Client<IdgenReq, IdgenResp> =
        link::Client::new(one.addr.clone(), SERVICE, client_cfg());
    let IdgenResp::Ok { first, n } = client.call(IdgenReq::Lease { n: 10 }).await.unwrap() else {
        panic!("lease refused");
    };
    assert_eq!(n, 10);
    assert_eq!(region_of(first), 9);
    let IdgenResp::Ok { first: next, n } = client.call(IdgenReq::Lease { n: 0 }).await.unwrap()
    else {
        panic!("lease refused");
    };
    assert_eq!(n, 1);
    // After the first block (the idgen may have moved to the clock in between).
    assert!(
        next >= nth_id(first, 10),
        "{next} inside the block of {first}"
    );
    assert!(matches!(
        client
            .call(IdgenReq::Lease { n: MAX_LEASE + 1 })
            .await
            .unwrap(),
        IdgenResp::Err(_)
    ));
    drop(client);
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_hands_out_increasing_ids_across_blocks() {
    let one = Idgen::start(1).await;
    let two = Idgen::start(2).await;
    let ids = LeasedIds::new(
        vec![one.addr.clone(), two.addr.clone()],
        client_cfg(),
        16,
        Duration::from_millis(20),
    );
    let mut prev = MsgId(0);
    for i in 0..200 {
        if i % 20 == 0 {
            // Let the block age out: the next comes from a fresh lease.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let id = ids.next_ids(1).await.unwrap();
        assert!(id > prev, "id {id:?} after {prev:?}");
        prev = id;
    }
    drop(ids);
    one.stop().await;
    two.stop().await;
}
