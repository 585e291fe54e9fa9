//! CPU per decoded client frame (JSON text), the frames a room reads most:
//! the heartbeat (`ping`, with and without `seq`), acks, a subscription.
//! The heartbeat is told apart without the JSON parser; the others show
//! what the parser costs.
//!
//! Run: `cargo bench -p pushgate-proto --bench decode`

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn decode(c: &mut Criterion) {
    let frames: [(&str, &[u8]); 5] = [
        ("ping", br#"{"op":"ping"}"#),
        ("ping_seq", br#"{"op":"ping","seq":4242}"#),
        // The same heartbeat spelt with a space: the parser's path.
        ("ping_spaced", br#"{"op": "ping"}"#),
        ("ack", br#"{"op":"ack","seq":7,"id":7340032123456}"#),
        (
            "sub",
            br#"{"op":"sub","seq":3,"channel":"news.sports","last_id":123}"#,
        ),
    ];
    let mut g = c.benchmark_group("decode_client_json");
    g.throughput(Throughput::Elements(1));
    for (name, bytes) in frames {
        g.bench_function(name, |b| {
            b.iter(|| proto::json::decode_client(black_box(bytes)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
