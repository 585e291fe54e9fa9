//! Pushes through the REST API, as an application server would: unicast
//! (`POST /push/users`), channel (`/push/channel`) and broadcast
//! (`/push/broadcast`), each carrying the send time in its payload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::stats::LatencyHist;

/// A REST client for one center.
#[derive(Clone)]
pub(crate) struct Rest {
    http: reqwest::Client,
    base: Arc<str>,
    api_key: Arc<str>,
}

/// What a run of unicast pushes did.
#[derive(Default)]
pub(crate) struct PushTally {
    /// Requests sent.
    pub(crate) sent: AtomicU64,
    /// Requests answered 2xx.
    pub(crate) acked: AtomicU64,
    /// Failures by reason.
    pub(crate) errors: Mutex<BTreeMap<String, u64>>,
    /// REST call latency of acknowledged pushes.
    pub(crate) http: Mutex<Option<LatencyHist>>,
}

impl PushTally {
    fn error(&self, why: String) {
        *self.errors.lock().entry(why).or_insert(0) += 1;
    }
}

impl Rest {
    /// A client for the REST API at `base` (`http://host:port/api/v1`).
    pub(crate) fn new(base: &str, api_key: &str) -> anyhow::Result<Rest> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Rest {
            http,
            base: Arc::from(base.trim_end_matches('/')),
            api_key: Arc::from(api_key),
        })
    }

    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Vec<u8>, String> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&*self.api_key)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timeout".to_string()
                } else if e.is_connect() {
                    "connect".to_string()
                } else {
                    "request".to_string()
                }
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|_| "body".to_string())?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(format!("status {}", status.as_u16()))
        }
    }

    /// A broadcast; returns the REST call time.
    pub(crate) async fn broadcast(&self, n: u32) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let body = serde_json::json!({ "data": payload("b", n) });
        self.post("/push/broadcast", &body)
            .await
            .map_err(|e| anyhow::anyhow!("broadcast {n}: {e}"))?;
        Ok(started.elapsed())
    }

    /// A push to `channel`.
    pub(crate) async fn channel(&self, channel: &str, n: u32) -> anyhow::Result<()> {
        let body = serde_json::json!({ "channel": channel, "data": payload("c", n) });
        self.post("/push/channel", &body)
            .await
            .map_err(|e| anyhow::anyhow!("channel push to {channel}: {e}"))?;
        Ok(())
    }

    /// A push to one user, counted in `tally`.
    pub(crate) async fn unicast(&self, user: u64, n: u32, store: bool, tally: &PushTally) {
        let body = serde_json::json!({
            "users": [format!("c1m-{user}")],
            "data": payload("u", n),
            "store": store,
        });
        tally.sent.fetch_add(1, Relaxed);
        let started = Instant::now();
        match self.post("/push/users", &body).await {
            Ok(_) => {
                tally.acked.fetch_add(1, Relaxed);
                let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let mut h = tally.http.lock();
                if h.is_none() {
                    *h = LatencyHist::new().ok();
                }
                if let Some(h) = h.as_mut() {
                    h.record_ns(ns);
                }
            }
            Err(e) => tally.error(e),
        }
    }
}

/// The payload of every c1m push: kind, number, send time (Unix ns).
fn payload(kind: &str, n: u32) -> serde_json::Value {
    serde_json::json!({ "k": kind, "n": n, "t": crate::now_unix_ns() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_what_workers_parse() {
        let p = payload("u", 2);
        let text = serde_json::to_vec(&p).unwrap();
        let parsed: crate::c1m::worker::Payload<'_> = serde_json::from_slice(&text).unwrap();
        assert_eq!(parsed.k, "u");
        assert_eq!(parsed.n, 2);
        assert!(parsed.t > 0);
    }
}
