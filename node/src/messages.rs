//! Messages from clients (`send`, `pub`) on their way from a room's
//! session to a center's dispatcher: the application server's hook first
//! (`--hook-url`), then [`center::Center::client_message`] (store, ids,
//! delivery, idempotency by cid).
//!
//! With `--send-known-users-only`, a `send` to a user the deployment does
//! not know ([`crate::known`]) is refused with `unknown_user` before the
//! hook is asked (an unknown recipient costs the application server
//! nothing); a `send` to oneself, and a retry of a message accepted before,
//! are never refused for it.
//!
//! The hook is asked before anything is stored: `POST URL` with
//! `{"event":"send"|"pub","from","device","to"|"channel","data","cid"}`
//! and `Authorization: Bearer <--hook-secret>`; it answers
//! `{"allow":true}` (optionally with `"data"`, which replaces the payload)
//! or `{"allow":false,"code","message"}`. At most `--hook-concurrency`
//! calls are in flight; a call that cannot start, or does not answer within
//! `--hook-timeout-ms`, a non-2xx, an answer over 64 KiB plus the largest
//! payload, or one that is not such an object, gives `hook_unavailable`.
//! The session waits only for its own message: other clients never wait
//! for a slow hook beyond their own calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::MsgId;
use room::{ClientMessage, MessageError, SessionInfo, Target};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::known::KnownUsers;

/// Hook answers larger than this (plus the largest payload) are refused.
const HOOK_ANSWER_SLACK: usize = 64 << 10;

/// The messages side of a room's backend.
pub(crate) struct Messages {
    hook: Option<Hook>,
    /// `--history-channels`: names, or prefixes ending in `*`.
    history: Vec<String>,
    /// The dispatcher; unset until the center exists (standalone builds it
    /// after the room), or for good in a cluster room without `--idgens`.
    center: OnceLock<center::Center>,
    /// `--send-known-users-only`: the room's notes of known users.
    known: Option<Arc<KnownUsers>>,
}

impl Messages {
    /// Messages asking `hook` (if any); `pub` to `history` channels is
    /// kept; a `send` goes only to users `known` knows, when given.
    pub(crate) fn new(
        hook: Option<Hook>,
        history: Vec<String>,
        known: Option<Arc<KnownUsers>>,
    ) -> Messages {
        Messages {
            hook,
            history,
            center: OnceLock::new(),
            known,
        }
    }

    /// The center whose dispatcher takes the messages (set once).
    pub(crate) fn set_center(&self, c: center::Center) {
        let _ = self.center.set(c);
    }

    /// Writes the hook's counters (Prometheus text).
    pub(crate) fn write_metrics(&self, out: &mut String) {
        if let Some(h) = &self.hook {
            h.write_metrics(out);
        }
        if let Some(k) = &self.known {
            k.write_metrics(out);
        }
    }

    /// `Err(unknown_user)` when `--send-known-users-only` is on and `msg`
    /// is a `send` to a user who is neither known nor `from` itself;
    /// `Ok(Some(id))` when it is, but repeats a message accepted before
    /// (answered with its id, as always).
    async fn check_known(
        &self,
        center: &center::Center,
        from: &SessionInfo,
        msg: &ClientMessage,
    ) -> Result<Option<MsgId>, MessageError> {
        let (Some(known), Target::User(to)) = (&self.known, &msg.to) else {
            return Ok(None);
        };
        if *to == from.user {
            return Ok(None);
        }
        let unavailable =
            |e: center::ApiError| MessageError::Unavailable(format!("not accepted: {e}"));
        if center
            .user_known(to, crate::backend::now_ms())
            .await
            .map_err(unavailable)?
        {
            return Ok(None);
        }
        // Accepted before (the recipient known then): answered as always.
        if let Some(id) = center
            .accepted_cid(&from.user, &msg.cid)
            .await
            .map_err(unavailable)?
        {
            return Ok(Some(id));
        }
        known.refused();
        Err(MessageError::UnknownUser(
            "the recipient is not a known user".into(),
        ))
    }

    fn keeps_history(&self, channel: &str) -> bool {
        room::config::matches_any(&self.history, channel)
    }

    /// See [`room::Backend::message`].
    pub(crate) async fn send(
        &self,
        from: &SessionInfo,
        msg: ClientMessage,
    ) -> Result<MsgId, MessageError> {
        let Some(center) = self.center.get() else {
            return Err(MessageError::Unavailable(
                "this room cannot dispatch messages (a cluster room needs --idgens)".into(),
            ));
        };
        if let Some(id) = self.check_known(center, from, &msg).await? {
            return Ok(id);
        }
        let data = match &self.hook {
            Some(h) => {
                // A retry of an accepted message is answered without
                // asking the hook again.
                let known = center
                    .accepted_cid(&from.user, &msg.cid)
                    .await
                    .map_err(|e| MessageError::Unavailable(format!("not accepted: {e}")))?;
                if let Some(id) = known {
                    return Ok(id);
                }
                h.ask(from, &msg).await?.unwrap_or(msg.data)
            }
            None => msg.data,
        };
        let to = match msg.to {
            Target::User(u) => center::ClientTarget::User(u),
            Target::Channel(name) => center::ClientTarget::Channel {
                history: self.keeps_history(&name),
                name,
            },
        };
        let m = center::ClientMsg {
            from: from.user.clone(),
            conn: from.conn,
            cid: msg.cid,
            data,
            to,
        };
        center
            .client_message(m)
            .await
            .map_err(|e| MessageError::Unavailable(format!("not accepted: {e}")))
    }
}

/// The application server's hook.
pub(crate) struct Hook {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<String>,
    timeout: Duration,
    slots: Semaphore,
    max_answer: usize,
    counters: HookCounters,
}

#[derive(Default)]
struct HookCounters {
    allowed: AtomicU64,
    denied: AtomicU64,
    failed: AtomicU64,
    /// Sum of call times in microseconds.
    micros: AtomicU64,
}

#[derive(Serialize)]
struct HookRequest<'a> {
    event: &'static str,
    from: &'a str,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a RawValue,
    cid: &'a str,
}

#[derive(Deserialize)]
struct HookAnswer {
    allow: bool,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl Hook {
    /// A hook at `url`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub(crate) fn new(
        url: reqwest::Url,
        secret: Option<String>,
        timeout: Duration,
        concurrency: usize,
        max_payload: usize,
    ) -> anyhow::Result<Hook> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(concurrency.min(256))
            .tcp_nodelay(true)
            .build()?;
        Ok(Hook {
            client,
            url,
            secret,
            timeout,
            slots: Semaphore::new(concurrency),
            max_answer: max_payload.saturating_add(HOOK_ANSWER_SLACK),
            counters: HookCounters::default(),
        })
    }

    /// Asks the hook; `Ok(Some(data))` when it replaced the payload.
    async fn ask(
        &self,
        from: &SessionInfo,
        msg: &ClientMessage,
    ) -> Result<Option<Bytes>, MessageError> {
        let started = Instant::now();
        let r = tokio::time::timeout(self.timeout, self.call(from, msg))
            .await
            .unwrap_or_else(|_| {
                Err(MessageError::HookUnavailable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )))
            });
        let c = &self.counters;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        c.micros.fetch_add(us, Ordering::Relaxed);
        let counter = match &r {
            Ok(_) => &c.allowed,
            Err(MessageError::Denied { .. }) => &c.denied,
            Err(_) => &c.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        r
    }

    async fn call(
        &self,
        from: &SessionInfo,
        msg: &ClientMessage,
    ) -> Result<Option<Bytes>, MessageError> {
        let unavailable = |why: String| MessageError::HookUnavailable(why);
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| unavailable("closed".into()))?;
        let data_text = std::str::from_utf8(&msg.data)
            .map_err(|_| MessageError::Forbidden("data is not UTF-8".into()))?;
        let data: &RawValue = serde_json::from_str(data_text)
            .map_err(|_| MessageError::Forbidden("data is not JSON".into()))?;
        let (event, to, channel) = match &msg.to {
            Target::User(u) => ("send", Some(u.as_str()), None),
            Target::Channel(c) => ("pub", None, Some(c.as_str())),
        };
        let body = HookRequest {
            event,
            from: from.user.as_str(),
            device: &from.device,
            to,
            channel,
            data,
            cid: &msg.cid,
        };
        let mut req = self.client.post(self.url.clone()).json(&body);
        if let Some(s) = &self.secret {
            req = req.bearer_auth(s);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| unavailable(format!("request failed: {}", without_url(&e))))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("answered {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unavailable(format!("reading the answer: {}", without_url(&e))))?
        {
            if body.len() + chunk.len() > self.max_answer {
                return Err(unavailable("answer too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: HookAnswer = serde_json::from_slice(&body)
            .map_err(|_| unavailable("answer is not {\"allow\": bool, ...}".into()))?;
        if !answer.allow {
            let code = answer
                .code
                .filter(|c| !c.is_empty() && c.len() <= 64)
                .unwrap_or_else(|| "hook_denied".into());
            let message: String = answer
                .message
                .unwrap_or_else(|| "refused by the application".into())
                .chars()
                .take(512)
                .collect();
            return Err(MessageError::Denied { code, message });
        }
        Ok(answer
            .data
            .map(|d| Bytes::copy_from_slice(d.get().as_bytes())))
    }

    fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.counters;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::events::write_labelled(
            out,
            "pushgate_hook_calls_total",
            "Hook calls for client messages, by outcome (failed: timeout, refused connection, non-2xx or bad answer).",
            "outcome",
            &[
                ("allowed", get(&c.allowed)),
                ("denied", get(&c.denied)),
                ("failed", get(&c.failed)),
            ],
        );
        let _ = writeln!(
            out,
            "# HELP pushgate_hook_call_seconds_total Time spent in hook calls.\n# TYPE pushgate_hook_call_seconds_total counter\npushgate_hook_call_seconds_total {}",
            c.micros.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

/// A reqwest error's text without its URL (which may carry credentials).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "the hook");
    }
    s
}
