//! Pushes through the REST API, as an application server would: unicast
//! (`POST /push/users`), channel (`/push/channel`) and broadcast
//! (`/push/broadcast`), each carrying the send time in its payload; and a
//! broadcast's progress (`GET /tasks/{task}`). Every answer other than 2xx
//! is counted by status for the whole run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::stats::LatencyHist;

/// Times a shed push (429) is sent again after its `Retry-After`.
const SHED_RETRIES: u32 = 20;

/// Longest wait taken from one `Retry-After`.
const MAX_SHED_WAIT: Duration = Duration::from_secs(10);

/// A call that got no 2xx: why, and when the server asked to come back.
struct Refused {
    why: String,
    retry_after: Option<Duration>,
}

/// A REST client for one center.
#[derive(Clone)]
pub(crate) struct Rest {
    http: reqwest::Client,
    base: Arc<str>,
    api_key: Arc<str>,
    answers: Arc<Answers>,
}

/// Every REST call of the run, by outcome.
#[derive(Default)]
struct Answers {
    calls: AtomicU64,
    /// Answers other than 2xx, by status code.
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// Calls that got no answer, by reason (`timeout`, `connect`, ...).
    failed: Mutex<BTreeMap<String, u64>>,
}

/// What the REST calls of a run got, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RestAnswers {
    /// Calls made.
    pub(crate) calls: u64,
    /// Answers other than 2xx, by status code (`"503"`, `"429"`, ...).
    pub(crate) non_2xx: BTreeMap<String, u64>,
    /// Calls that got no answer at all, by reason.
    pub(crate) no_answer: BTreeMap<String, u64>,
}

impl RestAnswers {
    /// Answers with status `code`.
    pub(crate) fn status(&self, code: u16) -> u64 {
        self.non_2xx.get(&code.to_string()).copied().unwrap_or(0)
    }
}

/// What `POST /push/broadcast` answers (202).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct BroadcastAccepted {
    /// The broadcast's task (`b-…`); absent from servers without tasks.
    task: Option<String>,
}

/// A broadcast sent.
#[derive(Clone, Debug)]
pub(crate) struct BroadcastSent {
    /// REST call time.
    pub(crate) http: Duration,
    /// Its task, when the server named one.
    pub(crate) task: Option<String>,
}

/// A broadcast task as `GET /tasks/{task}` shows it. Every field is
/// optional, so that servers that report less still parse: `skipped` and
/// `pending` are `None` when the server does not report them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct TaskView {
    /// Task id.
    pub(crate) task: String,
    /// `broadcast`.
    pub(crate) kind: String,
    /// `queued`, `running`, `done` or `failed`.
    pub(crate) state: String,
    /// Live rooms when it started.
    pub(crate) rooms_total: u64,
    /// Rooms finished (failed ones included).
    pub(crate) rooms_done: u64,
    /// Rooms that could not be reached.
    pub(crate) rooms_failed: u64,
    /// Connections written.
    pub(crate) delivered: u64,
    /// Live when the broadcast reached the room but not written (slow
    /// consumer, or gone first).
    pub(crate) skipped: Option<u64>,
    /// Still queued.
    pub(crate) pending: Option<u64>,
    /// Time queued before it ran, ms.
    pub(crate) queued_ms: Option<f64>,
    /// Time it ran, ms (`None` until done).
    pub(crate) duration_ms: Option<f64>,
    /// Each room.
    pub(crate) rooms: Vec<TaskRoom>,
}

impl TaskView {
    /// Done or failed: nothing more will change.
    pub(crate) fn finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "failed")
    }
}

/// One room of a broadcast task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct TaskRoom {
    /// Room number.
    pub(crate) room: u64,
    /// `running`, `done` or `failed`.
    pub(crate) state: String,
    /// Connections written.
    pub(crate) delivered: u64,
    /// Live but not written.
    pub(crate) skipped: u64,
    /// Still queued.
    pub(crate) pending: u64,
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

/// Idle connections the REST client keeps to the center: with the requests
/// in flight (at most 600 plus a few, see `phases`), under the center's
/// `--http-max-conns` of 1,024.
pub(crate) const MAX_IDLE: usize = 384;

impl Rest {
    /// A client for the REST API at `base` (`http://host:port/api/v1`).
    pub(crate) fn new(base: &str, api_key: &str) -> anyhow::Result<Rest> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(MAX_IDLE)
            // Under the center's `--http-idle-timeout` (60 s): a pooled
            // connection is dropped here before the center closes it, so a
            // request never goes out on one the center is closing.
            .pool_idle_timeout(Duration::from_secs(45))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Rest {
            http,
            base: Arc::from(base.trim_end_matches('/')),
            api_key: Arc::from(api_key),
            answers: Arc::default(),
        })
    }

    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Vec<u8>, String> {
        self.call(self.post_req(path, body)).await
    }

    fn post_req(&self, path: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&*self.api_key)
            .json(body)
    }

    /// As an application server should: a push the center sheds (429
    /// `overloaded`) is sent again after its `Retry-After`, at most
    /// [`SHED_RETRIES`] times; every 429 is still counted in the answers.
    async fn post_honouring_shed(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Vec<u8>, String> {
        let mut tries = 0;
        loop {
            match self.call_full(self.post_req(path, body)).await {
                Err(Refused {
                    retry_after: Some(wait),
                    ..
                }) if tries < SHED_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(wait.min(MAX_SHED_WAIT)).await;
                }
                other => return other.map_err(|r| r.why),
            }
        }
    }

    /// Sends a request; the body of a 2xx answer, else why not (and counts
    /// the outcome).
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, String> {
        self.call_full(req).await.map_err(|r| r.why)
    }

    /// [`Rest::call`], with the `Retry-After` of a 429.
    async fn call_full(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, Refused> {
        self.answers.calls.fetch_add(1, Relaxed);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                // The innermost cause says what it was (a full file table,
                // a connection the server closed): few kinds in practice.
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                let text: String = cause.to_string().chars().take(80).collect();
                let why = format!("{kind} ({text})");
                *self.answers.failed.lock().entry(why.clone()).or_insert(0) += 1;
                return Err(Refused {
                    why,
                    retry_after: None,
                });
            }
        };
        let status = resp.status();
        let retry_after = (status == reqwest::StatusCode::TOO_MANY_REQUESTS)
            .then(|| resp.headers().get(reqwest::header::RETRY_AFTER))
            .flatten()
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if !status.is_success() {
            *self
                .answers
                .statuses
                .lock()
                .entry(status.as_u16())
                .or_insert(0) += 1;
        }
        let bytes = resp.bytes().await.map_err(|_| Refused {
            why: "body".to_string(),
            retry_after: None,
        })?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            // The error's code says which limit or fault it was (a few
            // kinds, so it can key a tally).
            let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
            let why = match code {
                Some(c) => format!("status {} ({c})", status.as_u16()),
                None => format!("status {}", status.as_u16()),
            };
            Err(Refused { why, retry_after })
        }
    }

    /// What every call so far got.
    pub(crate) fn answers(&self) -> RestAnswers {
        RestAnswers {
            calls: self.answers.calls.load(Relaxed),
            non_2xx: self
                .answers
                .statuses
                .lock()
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            no_answer: self.answers.failed.lock().clone(),
        }
    }

    /// A broadcast: the REST call time and the task the server named.
    pub(crate) async fn broadcast(&self, n: u32) -> anyhow::Result<BroadcastSent> {
        let started = Instant::now();
        let body = serde_json::json!({ "data": payload("b", n) });
        let answer = self
            .post_honouring_shed("/push/broadcast", &body)
            .await
            .map_err(|e| anyhow::anyhow!("broadcast {n}: {e}"))?;
        let http = started.elapsed();
        let accepted: BroadcastAccepted = serde_json::from_slice(&answer).unwrap_or_default();
        Ok(BroadcastSent {
            http,
            task: accepted.task.filter(|t| !t.is_empty()),
        })
    }

    /// A broadcast task's progress.
    pub(crate) async fn task(&self, task: &str) -> Result<TaskView, String> {
        let req = self
            .http
            .get(format!("{}/tasks/{task}", self.base))
            .bearer_auth(&*self.api_key);
        let body = self.call(req).await?;
        serde_json::from_slice(&body).map_err(|e| format!("task {task}: {e}"))
    }

    /// A push to `channel`.
    pub(crate) async fn channel(&self, channel: &str, n: u32) -> anyhow::Result<()> {
        let body = serde_json::json!({ "channel": channel, "data": payload("c", n) });
        self.post_honouring_shed("/push/channel", &body)
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

    /// A center that sheds the first call with 429 and `Retry-After: 1`
    /// and accepts the next: the channel push goes through, and the 429 is
    /// still counted.
    #[tokio::test]
    async fn a_shed_push_is_sent_again_after_retry_after() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 31\r\n\r\n{\"error\":{\"code\":\"overloaded\"}}",
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
            ] {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the body by its length.
                loop {
                    let n = sock.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len || n == 0 {
                            break;
                        }
                    }
                }
                sock.write_all(answer.as_bytes()).await.unwrap();
                sock.shutdown().await.unwrap();
            }
        });
        let rest = Rest::new(&format!("http://{addr}/api/v1"), "k").unwrap();
        let started = Instant::now();
        rest.channel("c1m:1", 1).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(1), "did not wait");
        server.await.unwrap();
        let answers = rest.answers();
        assert_eq!(answers.calls, 2);
        assert_eq!(answers.status(429), 1);
    }

    #[test]
    fn task_views_parse_leniently() {
        // Today's server: no skipped, pending, times or rooms.
        let old: TaskView = serde_json::from_str(
            r#"{"task":"b-1","kind":"broadcast","state":"running","rooms_total":3,
                "rooms_done":1,"rooms_failed":0,"delivered":10}"#,
        )
        .unwrap();
        assert_eq!(old.delivered, 10);
        assert_eq!(old.skipped, None);
        assert!(!old.finished());
        let new: TaskView = serde_json::from_str(
            r#"{"task":"b-2","kind":"broadcast","state":"done","rooms_total":2,"rooms_done":2,
                "rooms_failed":0,"delivered":5,"skipped":1,"pending":0,"queued_ms":3,
                "duration_ms":12.5,"rooms":[{"room":1,"state":"done","delivered":5,
                "skipped":1,"pending":0,"extra":true}]}"#,
        )
        .unwrap();
        assert!(new.finished());
        assert_eq!((new.skipped, new.pending), (Some(1), Some(0)));
        assert_eq!(new.queued_ms, Some(3.0));
        assert_eq!(new.rooms[0].skipped, 1);
        let a: BroadcastAccepted = serde_json::from_str(r#"{"id":7,"task":"b-7"}"#).unwrap();
        assert_eq!(a.task.as_deref(), Some("b-7"));
        let a: BroadcastAccepted = serde_json::from_str(r#"{"id":7}"#).unwrap();
        assert_eq!(a.task, None);
    }
}
