//! Messages sent by clients (`send`, `pub`): the same ordered dispatcher
//! as REST pushes, plus the sender and idempotency by client message id.
//!
//! A `send` is a push to the recipient and to the sender (so the sender's
//! other devices, connected or not, have it too) with `store: true` and the
//! default queue time to live; a `pub` is a channel push, kept in the
//! channel's history when the caller says the channel has one. In both, the
//! sending connection is left out of the delivery (it gets `send_ok` /
//! `pub_ok`).
//!
//! # Idempotency
//!
//! The store keeps `(user, cid) -> id` for as long as the message lives
//! ([`saver::Store::cid_put`]), written only once the message itself is
//! stored: a retry after a failure never finds an id whose message was not
//! kept (it may, after a failed `cid_put`, store the message a second time
//! under a new id: a duplicate, never a loss). Before a message is
//! dispatched its cid is looked up; a cid already in flight in this center
//! is answered `unavailable` (retry), so two concurrent attempts with one
//! cid cannot both be stored through one center.

use std::collections::HashSet;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use proto::{ConnId, MsgId, Sender, UserId};
use tokio::sync::oneshot;

use crate::dispatch::{From, Job};
use crate::error::ApiError;
use crate::Center;

/// A message from a client.
#[derive(Debug, Clone)]
pub struct ClientMsg {
    /// The sending user.
    pub from: UserId,
    /// The sending connection (left out of the delivery).
    pub conn: ConnId,
    /// The client's id for the message.
    pub cid: String,
    /// The payload: one JSON value, as UTF-8 JSON text.
    pub data: Bytes,
    /// Where it goes.
    pub to: ClientTarget,
}

/// Where a client's message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTarget {
    /// A user (`send`).
    User(UserId),
    /// A channel (`pub`); `history`: keep it in the channel's history.
    Channel {
        /// The channel.
        name: String,
        /// Whether the channel keeps history.
        history: bool,
    },
}

/// Cids being dispatched by this center, so that a second attempt with
/// the same cid does not run beside the first.
#[derive(Debug, Default)]
pub(crate) struct InFlight(Mutex<HashSet<(UserId, String)>>);

/// Removes its entry from [`InFlight`] when dropped (also when the caller
/// gives up and drops the future).
struct Claim<'a> {
    set: &'a InFlight,
    key: Option<(UserId, String)>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.set.0.lock().remove(&k);
        }
    }
}

impl InFlight {
    fn claim(&self, user: &UserId, cid: &str) -> Option<Claim<'_>> {
        let key = (user.clone(), cid.to_owned());
        self.0.lock().insert(key.clone()).then_some(Claim {
            set: self,
            key: Some(key),
        })
    }
}

impl Center {
    /// The id that the message with `cid` from `user` was given, if it was
    /// accepted and has not expired (for asking a hook only about new
    /// messages).
    ///
    /// # Errors
    /// [`ApiError::StoreUnavailable`] when the store cannot answer.
    pub async fn accepted_cid(&self, user: &UserId, cid: &str) -> Result<Option<MsgId>, ApiError> {
        let now = crate::api::now_ms();
        self.inner
            .deps
            .store
            .cid_get(user, cid, now)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cid lookup failed");
                ApiError::StoreUnavailable
            })
    }

    /// Whether `user` is known for `--send-known-users-only`: the store
    /// holds a seen record of them not expired at `now_ms`
    /// ([`saver::Store::seen_put`]), or they are connected now (the
    /// directory lists a connection). The store is asked first.
    ///
    /// # Errors
    /// [`ApiError::StoreUnavailable`] when the store cannot answer;
    /// [`ApiError::Unavailable`] when the record is absent and the
    /// directory cannot answer.
    pub async fn user_known(&self, user: &UserId, now_ms: i64) -> Result<bool, ApiError> {
        let deps = &self.inner.deps;
        let seen = deps.store.seen_get(user, now_ms).await.map_err(|e| {
            tracing::warn!(error = %e, "seen lookup failed");
            ApiError::StoreUnavailable
        })?;
        if seen {
            return Ok(true);
        }
        let conns = deps
            .dir
            .lookup(std::slice::from_ref(user))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "directory lookup failed");
                ApiError::Unavailable("directory")
            })?;
        Ok(conns.iter().any(|c| !c.is_empty()))
    }

    /// Stores and delivers a message sent by a client; returns its id (the
    /// first id, when the same cid was accepted before and has not
    /// expired).
    ///
    /// # Errors
    /// [`ApiError`] when the message was not accepted (nothing was stored
    /// or delivered): the store, the ids or the dispatcher are unavailable,
    /// overloaded, or the same cid is being dispatched right now.
    pub async fn client_message(&self, m: ClientMsg) -> Result<MsgId, ApiError> {
        let inner = &self.inner;
        let store = &inner.deps.store;
        let Some(_claim) = inner.in_flight.claim(&m.from, &m.cid) else {
            return Err(ApiError::Unavailable(
                "a message with this cid is being sent: retry",
            ));
        };
        let now = crate::api::now_ms();
        match store.cid_get(&m.from, &m.cid, now).await {
            Ok(Some(id)) => return Ok(id),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cid lookup failed");
                return Err(ApiError::StoreUnavailable);
            }
        }
        let from = Some(From {
            sender: Sender {
                user: m.from.clone(),
                cid: m.cid.clone(),
            },
            conn: m.conn,
        });
        let cfg = &inner.cfg;
        let (reply, rx) = oneshot::channel();
        let accepted = Instant::now();
        let (job, ttl) = match m.to {
            ClientTarget::User(to) => {
                let mut users = vec![to];
                if users[0] != m.from {
                    users.push(m.from.clone());
                }
                let job = Job::Users {
                    users,
                    data: m.data,
                    store: true,
                    ttl: cfg.queue_ttl,
                    ts: now,
                    accepted,
                    reply,
                    from,
                };
                (job, cfg.queue_ttl)
            }
            ClientTarget::Channel { name, history } => {
                let job = Job::Channel {
                    channel: name,
                    data: m.data,
                    history,
                    ts: now,
                    accepted,
                    reply,
                    from,
                };
                (job, cfg.queue_ttl.max(cfg.channel_history_ttl))
            }
        };
        let out = self.dispatch(job, rx).await?;
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        if let Err(e) = store.cid_put(&m.from, &m.cid, out.id, expires).await {
            // The message is stored and delivered: answer it. A retry with
            // this cid may then be stored again (a duplicate, not a loss).
            tracing::warn!(error = %e, id = %out.id, "recording the cid failed");
        }
        Ok(out.id)
    }
}
