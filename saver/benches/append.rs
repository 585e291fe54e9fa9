//! Stored pushes per second on the embedded store, with 1, 64 and 512
//! concurrent writers. Group commit lets concurrent writers share fsyncs, so
//! throughput should grow with the number of writers.
//!
//! Run: `cargo bench -p pushgate-saver --bench append -- --measurement-time 10`

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use proto::{MsgId, UserId};
use saver::{Bounds, EmbeddedStore, Store, StoredMsg};

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = {
        let _guard = rt.enter();
        Arc::new(EmbeddedStore::open(&dir.path().join("pushgate.redb")).unwrap())
    };
    let data = Bytes::from(vec![b'x'; 200]);
    let mut next_id = 0i64;

    let mut group = c.benchmark_group("embedded_append_users");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for writers in [1u64, 64, 512] {
        group.bench_with_input(BenchmarkId::from_parameter(writers), &writers, |b, &w| {
            b.iter_custom(|iters| {
                let per_writer = iters.div_ceil(w);
                let base = next_id;
                next_id += i64::try_from(per_writer * w).unwrap();
                let start = Instant::now();
                rt.block_on(async {
                    let mut tasks = Vec::new();
                    for t in 0..w {
                        let store = store.clone();
                        let data = data.clone();
                        tasks.push(tokio::spawn(async move {
                            let user = UserId::from(format!("user-{t}"));
                            for i in 0..per_writer {
                                let id = base + i64::try_from(t * per_writer + i).unwrap();
                                let msg = StoredMsg {
                                    id: MsgId(id),
                                    ts: 0,
                                    expires_at: i64::MAX,
                                    data: data.clone(),
                                    sender: None,
                                };
                                store
                                    .append_users(
                                        std::slice::from_ref(&user),
                                        &msg,
                                        Bounds { max: 100 },
                                    )
                                    .await
                                    .unwrap();
                            }
                        }));
                    }
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
                // Scale to the iterations asked for (writers round up).
                let elapsed = start.elapsed();
                Duration::from_secs_f64(
                    elapsed.as_secs_f64() * iters as f64 / (per_writer * w) as f64,
                )
            });
        });
    }
    group.finish();
    rt.block_on(store.close()).unwrap();
}

criterion_group!(benches, append);
criterion_main!(benches);
