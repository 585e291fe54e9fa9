//! HTTP handlers, request and response bodies, the OpenAPI document and the
//! router. Handlers validate everything before they touch any state, then
//! hand pushes to the dispatcher ([`crate::dispatch`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use bytes::Bytes;
use proto::token::{valid_channel, MAX_SUB_LEN};
use proto::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::config::MAX_TTL;
use crate::dispatch::{encode, Job, PushOutcome};
use crate::error::{ApiError, ApiJson, ErrorBody, ErrorDetail};
use crate::metrics::HttpLabels;
use crate::metrics::KindLabel;
use crate::tasks::TaskView;
use crate::Center;

/// A user id in the OpenAPI document: 1 to 256 bytes (the schema counts
/// characters; ids are limited in bytes). Only its schema is used.
pub(crate) struct UserIdSchema;

impl utoipa::PartialSchema for UserIdSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(256))
            .description(Some("user id: 1 to 256 bytes"))
            .into()
    }
}

impl ToSchema for UserIdSchema {}

/// Body of `POST /push/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushUsersReq {
    /// Recipients (1 to `max_users`, each 1 to 256 bytes; duplicates count once).
    #[schema(example = json!(["alice", "bob"]), min_items = 1, value_type = Vec<UserIdSchema>)]
    pub users: Vec<String>,
    /// The payload: any JSON value, delivered as is.
    #[schema(value_type = serde_json::Value, example = json!({"text": "hi"}))]
    pub data: Box<RawValue>,
    /// Write to each user's offline queue before answering (default true).
    #[serde(default = "yes")]
    pub store: bool,
    /// How long the stored message is kept, in seconds (1 to 2592000; default 86400).
    #[schema(example = 86400, minimum = 1, maximum = 2592000)]
    #[serde(default, deserialize_with = "integral_seconds")]
    pub ttl: Option<u64>,
}

/// A whole number of seconds, as JSON Schema's `integer` allows it: `60`
/// or `60.0` (an integral value), never `60.5` or negative; null is absent.
fn integral_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(Some(f as u64)),
        _ => Err(D::Error::custom(format!(
            "invalid value: {n}, expected a whole number of seconds"
        ))),
    }
}

/// Answer of `POST /push/users`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PushUsersResp {
    /// The message id.
    pub id: i64,
    /// Connections the message was written to.
    pub delivered: u64,
    /// Users whose queue holds the message (all of them when `store`, else 0).
    pub stored: u64,
}

/// Body of `POST /push/channel`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushChannelReq {
    /// Channel name: 1 to 128 bytes of ASCII letters, digits and `_ . : @ / -`.
    #[schema(
        example = "news",
        min_length = 1,
        max_length = 128,
        pattern = r"^[A-Za-z0-9_.:@/-]+$"
    )]
    pub channel: String,
    /// The payload: any JSON value.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
    /// Append to the channel's bounded history (default false).
    #[serde(default)]
    pub history: bool,
}

/// Answer of `POST /push/channel`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PushChannelResp {
    /// The message id.
    pub id: i64,
    /// Connections the message was written to.
    pub delivered: u64,
}

/// Body of `POST /push/broadcast`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastReq {
    /// The payload: any JSON value.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
}

/// Answer of `POST /push/broadcast` (202).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BroadcastResp {
    /// The message id.
    pub id: i64,
    /// The task that delivers it; see `GET /tasks/{task}`.
    pub task: String,
}

/// One live connection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnView {
    /// Connection id (decimal string).
    pub conn: String,
    /// Room id (decimal string).
    pub room: String,
    /// Device id, when the client gave one.
    pub device: Option<String>,
    /// When it authenticated, ms since the epoch.
    pub since: i64,
}

/// Answer of `GET /users/{user}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// The user.
    pub user: String,
    /// Whether the user has a live connection.
    pub online: bool,
    /// Live connections.
    pub connections: Vec<ConnView>,
    /// Total time online, in ms, live connections included.
    pub online_ms: u64,
}

/// Answer of `DELETE /users/{user}/connections`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KickResp {
    /// Connections closed (close code 4005).
    pub kicked: u64,
}

/// One live room in `GET /stats`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomView {
    /// Room id (decimal string).
    pub room: String,
    /// Connections it holds.
    pub connections: u64,
}

/// Answer of `GET /stats`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsView {
    /// Live connections.
    pub connections: u64,
    /// Users with a live connection.
    pub users: u64,
    /// Live rooms.
    pub rooms: Vec<RoomView>,
}

/// Answer of `/healthz` and `/readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// `ok`, or `not_ready`.
    pub status: String,
}

fn yes() -> bool {
    true
}

pub(crate) fn now_ms() -> i64 {
    proto::unix_ms(std::time::SystemTime::now())
}

pub(crate) fn check_user(u: &str) -> Result<(), ApiError> {
    if u.is_empty() {
        return Err(ApiError::InvalidUser("empty".to_owned()));
    }
    if u.len() > MAX_SUB_LEN {
        return Err(ApiError::InvalidUser(format!(
            "longer than {MAX_SUB_LEN} bytes"
        )));
    }
    Ok(())
}

/// The users of a request, each checked, duplicates dropped (first
/// occurrence kept, in order); at most `max` given.
pub(crate) fn distinct_users(users: &[String], max: usize) -> Result<Vec<UserId>, ApiError> {
    if users.len() > max {
        return Err(ApiError::TooManyUsers {
            n: users.len(),
            max,
        });
    }
    let mut seen = HashSet::with_capacity(users.len());
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        check_user(u)?;
        if seen.insert(u.as_str()) {
            out.push(UserId::new(u));
        }
    }
    Ok(out)
}

/// Deepest nesting of arrays and objects accepted in `data`: deeper values
/// are valid JSON but break common client parsers (serde_json stops at 128).
pub const MAX_DATA_DEPTH: usize = 64;

/// Nesting depth of a JSON text already known to be valid.
fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The payload as shared bytes, refused when nested too deep.
fn raw_bytes(v: &RawValue) -> Result<Bytes, ApiError> {
    let text = v.get().as_bytes();
    if json_depth(text) > MAX_DATA_DEPTH {
        return Err(ApiError::InvalidRequest(format!(
            "data is nested deeper than {MAX_DATA_DEPTH} levels"
        )));
    }
    Ok(Bytes::copy_from_slice(text))
}

impl Center {
    /// Queues `job` and waits for the dispatcher's answer.
    pub(crate) async fn dispatch(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<PushOutcome, ApiError>>,
    ) -> Result<PushOutcome, ApiError> {
        let i = &self.inner;
        let kind = job.kind();
        let queued = i.tx.max_capacity() - i.tx.capacity();
        let admitted = i
            .admission
            .check(queued, i.cfg.request_timeout)
            .and_then(|()| {
                i.tx.try_send(job).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => i.admission.shed(queued),
                    mpsc::error::TrySendError::Closed(_) => ApiError::ShuttingDown,
                })
            });
        if let Err(e) = admitted {
            if matches!(e, ApiError::Overloaded { .. }) {
                i.metrics.shed.get_or_create(&KindLabel { kind }).inc();
            }
            return Err(e);
        }
        rx.await.map_err(|_| ApiError::Unavailable("dispatcher"))?
    }
}

/// Push a message to users.
#[utoipa::path(
    post, path = "/api/v1/push/users", tag = "push",
    request_body = PushUsersReq,
    responses(
        (status = 200, description = "stored (when asked) and delivered", body = PushUsersResp),
        (status = 400, description = "bad input", body = ErrorBody),
        (status = 401, description = "bad api key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not json", body = ErrorBody),
        (status = 429, description = "too busy to serve it in time: refused at once, nothing done; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
        (status = 503, description = "store, ids, directory or a room unavailable, or timed out", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn push_users(
    State(c): State<Center>,
    ApiJson(req): ApiJson<PushUsersReq>,
) -> Result<ApiJson<PushUsersResp>, ApiError> {
    let accepted = Instant::now();
    let cfg = &c.inner.cfg;
    if req.users.is_empty() {
        return Err(ApiError::EmptyUsers);
    }
    let users = distinct_users(&req.users, cfg.max_users)?;
    let ttl = match req.ttl {
        None => cfg.queue_ttl,
        Some(t) if t >= 1 && t <= MAX_TTL.as_secs() => std::time::Duration::from_secs(t),
        Some(_) => {
            return Err(ApiError::InvalidTtl {
                max: MAX_TTL.as_secs(),
            })
        }
    };
    let (reply, rx) = oneshot::channel();
    let job = Job::Users {
        users,
        data: raw_bytes(&req.data)?,
        store: req.store,
        ttl,
        ts: now_ms(),
        accepted,
        reply,
        from: None,
    };
    let out = c.dispatch(job, rx).await?;
    Ok(ApiJson(PushUsersResp {
        id: out.id.0,
        delivered: out.delivered,
        stored: out.stored,
    }))
}

/// Push a message to a channel's subscribers.
#[utoipa::path(
    post, path = "/api/v1/push/channel", tag = "push",
    request_body = PushChannelReq,
    responses(
        (status = 200, description = "delivered", body = PushChannelResp),
        (status = 400, description = "bad input", body = ErrorBody),
        (status = 401, description = "bad api key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not json", body = ErrorBody),
        (status = 429, description = "too busy to serve it in time: refused at once, nothing done; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
        (status = 503, description = "store, ids, directory or a room unavailable, or timed out", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn push_channel(
    State(c): State<Center>,
    ApiJson(req): ApiJson<PushChannelReq>,
) -> Result<ApiJson<PushChannelResp>, ApiError> {
    let accepted = Instant::now();
    if !valid_channel(&req.channel) {
        return Err(ApiError::InvalidChannel);
    }
    let (reply, rx) = oneshot::channel();
    let job = Job::Channel {
        channel: req.channel,
        data: raw_bytes(&req.data)?,
        history: req.history,
        ts: now_ms(),
        accepted,
        reply,
        from: None,
    };
    let out = c.dispatch(job, rx).await?;
    Ok(ApiJson(PushChannelResp {
        id: out.id.0,
        delivered: out.delivered,
    }))
}

/// Send a message to every live connection, as a task.
#[utoipa::path(
    post, path = "/api/v1/push/broadcast", tag = "push",
    request_body = BroadcastReq,
    responses(
        (status = 202, description = "accepted; runs as a task", body = BroadcastResp),
        (status = 400, description = "bad input", body = ErrorBody),
        (status = 401, description = "bad api key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not json", body = ErrorBody),
        (status = 429, description = "too many broadcasts waiting for their turn, or the center too busy: refused at once, nothing done; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
        (status = 503, description = "the id generator unavailable, or shutting down", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn push_broadcast(
    State(c): State<Center>,
    ApiJson(req): ApiJson<BroadcastReq>,
) -> Result<(StatusCode, ApiJson<BroadcastResp>), ApiError> {
    let data = raw_bytes(&req.data)?;
    let ts = now_ms();
    let i = &c.inner;
    // A place in the lane first: a broadcast refused takes no id.
    let place = i.lane.reserve().inspect_err(|_| {
        i.metrics
            .shed
            .get_or_create(&KindLabel { kind: "broadcast" })
            .inc();
    })?;
    let (reply, rx) = oneshot::channel();
    let out = c.dispatch(Job::Broadcast { reply }, rx).await?;
    let task_id = format!("b-{}", out.id.0);
    let task = i.tasks.create(task_id.clone());
    place.send(task, encode(out.id, ts, None, &data, false, None));
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(BroadcastResp {
            id: out.id.0,
            task: task_id,
        }),
    ))
}

/// Progress of a task.
#[utoipa::path(
    get, path = "/api/v1/tasks/{task}", tag = "tasks",
    params(("task" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "the task", body = TaskView),
        (status = 401, description = "bad api key", body = ErrorBody),
        (status = 404, description = "unknown or expired task", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn get_task(
    State(c): State<Center>,
    path: Result<Path<String>, PathRejection>,
) -> Result<ApiJson<TaskView>, ApiError> {
    let Path(task) = path.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    c.inner
        .tasks
        .get(&task)
        .map(ApiJson)
        .ok_or_else(|| ApiError::NotFound(format!("no task {task}")))
}

/// A user's live connections and online time.
#[utoipa::path(
    get, path = "/api/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "user id: 1 to 256 bytes", min_length = 1, max_length = 256)),
    responses(
        (status = 200, description = "the user", body = UserView),
        (status = 400, description = "invalid user id", body = ErrorBody),
        (status = 401, description = "bad api key", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn get_user(
    State(c): State<Center>,
    path: Result<Path<String>, PathRejection>,
) -> Result<ApiJson<UserView>, ApiError> {
    let Path(user) = path.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    user_view(&c, user).await
}

/// The user named `online` (`GET /users/{user}` for that name: the path
/// is also `POST /users/online`'s).
#[utoipa::path(
    get, path = "/api/v1/users/online", tag = "users",
    responses(
        (status = 200, description = "the user named online", body = UserView),
        (status = 401, description = "bad api key", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn get_user_named_online(
    State(c): State<Center>,
) -> Result<ApiJson<UserView>, ApiError> {
    user_view(&c, "online".to_owned()).await
}

async fn user_view(c: &Center, user: String) -> Result<ApiJson<UserView>, ApiError> {
    check_user(&user)?;
    let id = UserId::new(&user);
    let dir = &c.inner.deps.dir;
    let conns = dir
        .lookup(std::slice::from_ref(&id))
        .await
        .map_err(|_| ApiError::Unavailable("directory"))?
        .into_iter()
        .next()
        .unwrap_or_default();
    let online_ms = dir
        .online_ms(&id, now_ms())
        .await
        .map_err(|_| ApiError::Unavailable("directory"))?;
    Ok(ApiJson(UserView {
        user,
        online: !conns.is_empty(),
        connections: conns
            .into_iter()
            .map(|c| ConnView {
                conn: c.conn.to_string(),
                room: c.room.to_string(),
                device: c.device,
                since: c.since,
            })
            .collect(),
        online_ms,
    }))
}

/// Close every connection of a user (close code 4005).
#[utoipa::path(
    delete, path = "/api/v1/users/{user}/connections", tag = "users",
    params(("user" = String, Path, description = "user id: 1 to 256 bytes", min_length = 1, max_length = 256)),
    responses(
        (status = 200, description = "connections closed", body = KickResp),
        (status = 400, description = "invalid user id", body = ErrorBody),
        (status = 401, description = "bad api key", body = ErrorBody),
        (status = 503, description = "a room could not be reached", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn kick_user(
    State(c): State<Center>,
    path: Result<Path<String>, PathRejection>,
) -> Result<ApiJson<KickResp>, ApiError> {
    let Path(user) = path.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    check_user(&user)?;
    let id = UserId::new(&user);
    let conns = c
        .inner
        .deps
        .dir
        .lookup(std::slice::from_ref(&id))
        .await
        .map_err(|_| ApiError::Unavailable("directory"))?;
    let mut rooms: Vec<RoomId> = conns.iter().flatten().map(|c| c.room).collect();
    rooms.sort_unstable();
    rooms.dedup();
    let mut kicked = 0u64;
    let mut failed = false;
    for room in rooms {
        match c.inner.deps.rooms.kick_user(room, &id).await {
            Ok(n) => kicked = kicked.saturating_add(n),
            Err(e) => {
                c.inner.metrics.room_errors.inc();
                tracing::warn!(%e, user = %id, "kick failed");
                failed = true;
            }
        }
    }
    if failed {
        return Err(ApiError::Unavailable("room"));
    }
    Ok(ApiJson(KickResp { kicked }))
}

/// Totals and live rooms.
#[utoipa::path(
    get, path = "/api/v1/stats", tag = "stats",
    responses(
        (status = 200, description = "totals", body = StatsView),
        (status = 401, description = "bad api key", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn stats(State(c): State<Center>) -> Result<ApiJson<StatsView>, ApiError> {
    let dir = &c.inner.deps.dir;
    let s = dir
        .stats()
        .await
        .map_err(|_| ApiError::Unavailable("directory"))?;
    let rooms = dir
        .rooms()
        .await
        .map_err(|_| ApiError::Unavailable("directory"))?;
    Ok(ApiJson(StatsView {
        connections: s.connections,
        users: s.users,
        rooms: rooms
            .into_iter()
            .map(|r| RoomView {
                room: r.room.to_string(),
                connections: r.connections,
            })
            .collect(),
    }))
}

/// The OpenAPI 3 document of this API.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "meta",
    responses(
        (status = 200, description = "OpenAPI 3 document", content_type = "application/json"),
        (status = 401, description = "bad api key", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn openapi() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => {
            tracing::error!(%e, "openapi rendering failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(
    get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "alive", body = HealthView))
)]
pub(crate) async fn healthz() -> ApiJson<HealthView> {
    ApiJson(HealthView {
        status: "ok".to_owned(),
    })
}

/// Readiness: 200 when ready to take work, else 503.
#[utoipa::path(
    get, path = "/readyz", tag = "meta",
    responses(
        (status = 200, description = "ready", body = HealthView),
        (status = 503, description = "not ready (starting or draining)", body = HealthView),
    )
)]
pub(crate) async fn readyz(State(c): State<Center>) -> (StatusCode, ApiJson<HealthView>) {
    if c.inner.ready.load(Ordering::Acquire) {
        (
            StatusCode::OK,
            ApiJson(HealthView {
                status: "ok".to_owned(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            ApiJson(HealthView {
                status: "not_ready".to_owned(),
            }),
        )
    }
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(c): State<Center>) -> Response {
    let i = &c.inner;
    if let Ok(s) = i.deps.dir.stats().await {
        i.metrics
            .dir_connections
            .set(i64::try_from(s.connections).unwrap_or(i64::MAX));
        i.metrics
            .dir_users
            .set(i64::try_from(s.users).unwrap_or(i64::MAX));
    }
    let depth = i.tx.max_capacity().saturating_sub(i.tx.capacity());
    i.metrics
        .queue_depth
        .set(i64::try_from(depth).unwrap_or(i64::MAX));
    i.metrics
        .broadcast_waiting
        .set(i64::try_from(i.lane.waiting()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        i.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Constant-time comparison (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(c): State<Center>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let key = c.inner.cfg.api_key.as_bytes();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if !key.is_empty() && ct_eq(g.as_bytes(), key) => next.run(req).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

async fn timeout(State(c): State<Center>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(c.inner.cfg.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

async fn count_http(State(c): State<Center>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // A fixed set: any other token would add a series per request (hyper
    // accepts extension methods), growing /metrics without bound.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
    .to_owned();
    let resp = next.run(req).await;
    c.inner
        .metrics
        .http
        .get_or_create(&HttpLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(
    info(title = "pushgate", description = "pushgate REST API: push to users, channels and everyone; tasks; users; stats."),
    paths(push_users, push_channel, push_broadcast, get_task, get_user, get_user_named_online, kick_user, crate::users::users_online, crate::users::user_messages, crate::presence::channel_presence, stats, openapi, healthz, readyz, metrics),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;

/// Every route of a center.
pub(crate) fn router(c: &Center) -> Router {
    let cfg = &c.inner.cfg;
    let api = Router::new()
        .route("/api/v1/push/users", post(push_users))
        .route("/api/v1/push/channel", post(push_channel))
        .route("/api/v1/push/broadcast", post(push_broadcast))
        .route("/api/v1/tasks/{task}", get(get_task))
        .route(
            "/api/v1/users/online",
            post(crate::users::users_online).get(get_user_named_online),
        )
        .route("/api/v1/users/{user}", get(get_user))
        .route(
            "/api/v1/users/{user}/messages",
            get(crate::users::user_messages),
        )
        .route("/api/v1/users/{user}/connections", delete(kick_user))
        .route(
            "/api/v1/channels/{channel}/presence",
            get(crate::presence::channel_presence),
        )
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(c.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // The document holds no secret: readable without the key outside
        // the base (tools such as schemathesis and API clients fetch it
        // before they know a key); under the base it needs one, like every call.
        .route("/openapi.json", get(openapi))
        .merge(crate::console::router())
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(cfg.max_body))
        .layer(middleware::from_fn_with_state(c.clone(), timeout))
        .layer(middleware::from_fn_with_state(c.clone(), count_http))
        .with_state(c.clone())
}

#[cfg(test)]
mod depth_tests {
    use super::json_depth;

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(br#"["[[[[", "\"{{"]"#), 1);
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(json_depth(deep.as_bytes()), 65);
    }
}
