//! The REST API over HTTP/2 cleartext (h2c, prior knowledge) next to
//! HTTP/1.1 on the same port (issue 11: one publisher multiplexing pushes).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{Server, Transport};
use futures_util::future::join_all;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_multiplexes_pushes_on_one_connection_and_http1_still_works() {
    let s = Server::start(&[]).await;
    let (mut online, _) = s.login(Transport::WsJson, "h2user", "d").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let url = format!("http://{}/api/v1/push/users", s.http);
    // 200 pushes at once: one HTTP/2 connection carries them as streams.
    let calls = (0..200).map(|i| {
        h2.post(&url)
            .bearer_auth(&s.api_key)
            .json(&json!({"users": ["h2user"], "data": i}))
            .send()
    });
    let mut ids = Vec::new();
    for r in join_all(calls).await {
        let r = r.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        ids.push(v["id"].as_i64().unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    // Every push reached the user.
    let mut got: Vec<i64> = online
        .msgs(200)
        .await
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, ids);
    // HTTP/1.1 on the same listener.
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let r = h1
        .get(format!("http://{}/api/v1/stats", s.http))
        .bearer_auth(&s.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    // Bad input over h2 is refused like over HTTP/1.1.
    let r = h2
        .post(&url)
        .bearer_auth(&s.api_key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
