//! Users in bulk and a user's stored messages: `POST /users/online` (who of
//! up to 10,000 users has a live connection) and `GET /users/{user}/messages`
//! (the offline queue, paged by id), for app servers that show presence or
//! sync a device from the server.

use std::collections::BTreeMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use proto::{MsgId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use crate::api::{check_user, distinct_users, now_ms};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::Center;

/// Most users in one `POST /users/online`.
pub const MAX_ONLINE_USERS: usize = 10_000;
/// Default page of `GET /users/{user}/messages`.
pub const DEFAULT_MESSAGES: u32 = 100;
/// Largest page of `GET /users/{user}/messages`.
pub const MAX_MESSAGES: u32 = 1000;

/// Body of `POST /users/online`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnlineReq {
    /// Users to look up (at most 10,000; each 1 to 256 bytes).
    #[schema(example = json!(["alice", "bob"]), value_type = Vec<crate::api::UserIdSchema>)]
    pub users: Vec<String>,
}

/// Answer of `POST /users/online`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OnlineResp {
    /// Each user asked for: whether it has a live connection now.
    #[schema(example = json!({"alice": true, "bob": false}))]
    pub online: BTreeMap<String, bool>,
}

/// Which users have a live connection.
#[utoipa::path(
    post, path = "/api/v1/users/online", tag = "users",
    request_body = OnlineReq,
    responses(
        (status = 200, description = "each user online or not", body = OnlineResp),
        (status = 400, description = "bad input (more than 10,000 users, an invalid id)", body = ErrorBody),
        (status = 401, description = "bad api key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not json", body = ErrorBody),
        (status = 503, description = "the directory could not answer", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn users_online(
    State(c): State<Center>,
    ApiJson(req): ApiJson<OnlineReq>,
) -> Result<ApiJson<OnlineResp>, ApiError> {
    let ids = distinct_users(&req.users, MAX_ONLINE_USERS)?;
    let conns = c
        .inner
        .deps
        .dir
        .lookup(&ids)
        .await
        .map_err(|_| ApiError::Unavailable("directory"))?;
    let online = ids
        .iter()
        .zip(conns)
        .map(|(u, conns)| (u.as_str().to_owned(), !conns.is_empty()))
        .collect();
    Ok(ApiJson(OnlineResp { online }))
}

/// Query of `GET /users/{user}/messages`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    /// Only messages with a greater id (default 0: from the oldest kept).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Most messages to return (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One stored message.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredView {
    /// The message id.
    pub id: i64,
    /// The payload, as pushed.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
    /// Milliseconds since the epoch when it was accepted.
    pub ts: i64,
    /// The sending user, for messages a client sent with `send`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The sender's client message id, with `from`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// Answer of `GET /users/{user}/messages`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagesResp {
    /// The user.
    pub user: String,
    /// Stored messages, oldest first, not expired.
    pub messages: Vec<StoredView>,
    /// When more follow: the `after` of the next page (the last id
    /// returned); otherwise null.
    pub next_after: Option<i64>,
}

/// A user's stored messages (its offline queue), oldest first.
#[utoipa::path(
    get, path = "/api/v1/users/{user}/messages", tag = "users",
    params(("user" = String, Path, description = "user id: 1 to 256 bytes", min_length = 1, max_length = 256), MessagesQuery),
    responses(
        (status = 200, description = "a page of messages", body = MessagesResp),
        (status = 400, description = "invalid user id, after or limit", body = ErrorBody),
        (status = 401, description = "bad api key", body = ErrorBody),
        (status = 503, description = "the store could not answer", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn user_messages(
    State(c): State<Center>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<ApiJson<MessagesResp>, ApiError> {
    let Path(user) = path.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let Query(q) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    check_user(&user)?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::InvalidRequest(
            "after must not be negative".into(),
        ));
    }
    let limit = q.limit.unwrap_or(DEFAULT_MESSAGES);
    if !(1..=MAX_MESSAGES).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be 1 to {MAX_MESSAGES}"
        )));
    }
    // One more than asked tells whether another page follows.
    let mut stored = c
        .inner
        .deps
        .store
        .read_user(&UserId::new(&user), MsgId(after), now_ms(), limit + 1)
        .await
        .map_err(|_| ApiError::StoreUnavailable)?;
    let more = stored.len() > limit as usize;
    stored.truncate(limit as usize);
    let mut messages = Vec::with_capacity(stored.len());
    for m in stored {
        // Stored payloads were checked as JSON when pushed.
        let data = serde_json::from_slice::<Box<RawValue>>(&m.data)
            .map_err(|_| ApiError::Unavailable("store (a stored payload is not JSON)"))?;
        let (from, cid) = match m.sender {
            Some(s) => (Some(s.user.as_str().to_owned()), Some(s.cid)),
            None => (None, None),
        };
        messages.push(StoredView {
            id: m.id.0,
            data,
            ts: m.ts,
            from,
            cid,
        });
    }
    let next_after = if more {
        messages.last().map(|m| m.id)
    } else {
        None
    };
    Ok(ApiJson(MessagesResp {
        user,
        messages,
        next_after,
    }))
}
