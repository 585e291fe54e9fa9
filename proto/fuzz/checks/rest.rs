//! Properties of the REST API's decoders: request bodies (`PushUsersReq`,
//! `PushChannelReq`, `BroadcastReq`) and path segments, through the whole
//! axum router of a center (`center::Center::router`) with in-memory
//! doubles behind it, so that validation after deserialization is covered
//! too. Shared by the `rest_bodies` fuzz target and
//! `center/tests/fuzz_smoke.rs`.
//!
//! Properties: nothing panics; no answer is a 5xx (the doubles never fail,
//! so bad input must be a 4xx); every error answer is the documented JSON
//! error body; a wrong key never gets past the 401; a push that the
//! body types refuse is never a 2xx.
#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use center::api::{BroadcastReq, PushChannelReq, PushUsersReq};
use center::{Center, CenterConfig, CenterDeps, Rooms, RoomsError};
use http_body_util::BodyExt;
use idgen::{IdGen, IdGenError};
use proto::{EncodedMsg, MsgId, RoomId, UserId};
use register::LocalDirectory;
use saver::{Bounds, Store, StoreError, StoredMsg};
use tower::ServiceExt;

/// The API key of the center under test.
pub(crate) const KEY: &str = "fuzz-key";

/// Ids from a counter.
struct Ids(AtomicI64);

#[async_trait]
impl IdGen for Ids {
    async fn next_ids(&self, n: u32) -> Result<MsgId, IdGenError> {
        Ok(MsgId(
            self.0.fetch_add(i64::from(n.max(1)), Ordering::Relaxed),
        ))
    }
}

/// A store that keeps nothing and never fails.
struct NoStore;

#[async_trait]
impl Store for NoStore {
    async fn append_users(&self, _: &[UserId], _: &StoredMsg, _: Bounds) -> Result<(), StoreError> {
        Ok(())
    }
    async fn read_user(
        &self,
        _: &UserId,
        _: MsgId,
        _: i64,
        _: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        Ok(Vec::new())
    }
    async fn ack(&self, _: &UserId, _: &str, _: MsgId) -> Result<(), StoreError> {
        Ok(())
    }
    async fn acked(&self, _: &UserId, _: &str) -> Result<Option<MsgId>, StoreError> {
        Ok(None)
    }
    async fn cid_get(&self, _: &UserId, _: &str, _: i64) -> Result<Option<MsgId>, StoreError> {
        Ok(None)
    }
    async fn cid_put(&self, _: &UserId, _: &str, _: MsgId, _: i64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn append_channel(&self, _: &str, _: &StoredMsg, _: Bounds) -> Result<(), StoreError> {
        Ok(())
    }
    async fn read_channel(
        &self,
        _: &str,
        _: MsgId,
        _: i64,
        _: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        Ok(Vec::new())
    }
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Rooms that take everything and hold nobody.
struct NoRooms;

#[async_trait]
impl Rooms for NoRooms {
    async fn deliver_users(
        &self,
        _: RoomId,
        _: &[UserId],
        _: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError> {
        Ok(0)
    }
    async fn publish_channel(
        &self,
        _: RoomId,
        _: &str,
        _: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError> {
        Ok(0)
    }
    async fn broadcast(
        &self,
        _: RoomId,
        _: &Arc<EncodedMsg>,
    ) -> Result<proto::BroadcastProgress, RoomsError> {
        Ok(proto::BroadcastProgress::default())
    }
    async fn resync(&self, _: RoomId, _: Option<&[UserId]>, _: MsgId) -> Result<u64, RoomsError> {
        Ok(0)
    }
    async fn kick_user(&self, _: RoomId, _: &UserId) -> Result<u64, RoomsError> {
        Ok(0)
    }
    async fn presence_changes(
        &self,
        _: RoomId,
        _: &[(bool, proto::PresenceChange)],
    ) -> Result<u64, RoomsError> {
        Ok(0)
    }
    async fn channel_members(
        &self,
        _: RoomId,
        _: &str,
        _: Option<&str>,
        _: u32,
    ) -> Result<proto::MembersPage, RoomsError> {
        Ok(proto::MembersPage::default())
    }
}

/// A center over the doubles, with its own single-threaded runtime, built
/// once per process.
pub(crate) struct Api {
    rt: tokio::runtime::Runtime,
    app: Router,
}

pub(crate) fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cfg = CenterConfig {
            api_key: KEY.to_owned(),
            max_users: 64,
            max_body: 16 * 1024,
            ..CenterConfig::default()
        };
        let center = {
            let _in = rt.enter();
            Center::new(
                cfg,
                CenterDeps {
                    dir: Arc::new(LocalDirectory::new()),
                    store: Arc::new(NoStore),
                    ids: Arc::new(Ids(AtomicI64::new(1))),
                    rooms: Arc::new(NoRooms),
                },
            )
        };
        let app = center.router();
        Api { rt, app }
    })
}

/// Percent-encodes every byte but the unreserved ones.
fn segment(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for &c in b {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            s.push(char::from(c));
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

/// One request: the first byte picks the route, the content type and
/// whether the key is right; the rest is the body (pushes) or the path
/// segment (users, tasks). Returns whether the answer was a 2xx.
pub(crate) fn rest_bodies(data: &[u8]) -> bool {
    let [sel, rest @ ..] = data else {
        return false;
    };
    let (method, path, body): (&str, String, &[u8]) = match sel % 8 {
        0 | 7 => ("POST", "/api/v1/push/users".into(), rest),
        1 => ("POST", "/api/v1/push/channel".into(), rest),
        2 => ("POST", "/api/v1/push/broadcast".into(), rest),
        3 => ("GET", format!("/api/v1/users/{}", segment(rest)), b""),
        4 => (
            "DELETE",
            format!("/api/v1/users/{}/connections", segment(rest)),
            b"",
        ),
        5 => ("GET", format!("/api/v1/tasks/{}", segment(rest)), b""),
        _ => ("PUT", format!("/api/v1/push/{}", segment(rest)), rest),
    };
    let ctype = match (sel >> 3) % 4 {
        0 | 3 => Some("application/json"),
        1 => Some("application/json; charset=utf-8"),
        _ => None,
    };
    let right_key = sel >> 5 != 7;
    let key = if right_key { KEY } else { "wrong" };
    let mut req = Request::builder()
        .method(method)
        .uri(&path)
        .header("authorization", format!("Bearer {key}"));
    if let Some(ct) = ctype {
        req = req.header("content-type", ct);
    }
    let req = req.body(Body::from(body.to_vec())).expect("valid request");
    let api = api();
    let (status, bytes) = api.rt.block_on(async {
        let resp = api.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, bytes)
    });
    assert!(
        !status.is_server_error(),
        "{method} {path} answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    if status.is_client_error() {
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("an error body is json");
        assert!(v["error"]["code"].is_string(), "error body {v}");
        assert!(v["error"]["message"].is_string(), "error body {v}");
    }
    if !right_key {
        // 401 on every route there is (an empty segment matches none: 404).
        assert!(
            matches!(status.as_u16(), 401 | 404 | 405),
            "{method} {path} with a wrong key: {status}"
        );
        return false;
    }
    // The body types decide what a push may be.
    let typed = match (method, sel % 8) {
        ("POST", 0 | 7) => serde_json::from_slice::<PushUsersReq>(body).is_ok(),
        ("POST", 1) => serde_json::from_slice::<PushChannelReq>(body).is_ok(),
        ("POST", 2) => serde_json::from_slice::<BroadcastReq>(body).is_ok(),
        _ => true,
    };
    if !typed {
        assert!(
            status == StatusCode::BAD_REQUEST
                || status == StatusCode::UNSUPPORTED_MEDIA_TYPE
                || status == StatusCode::PAYLOAD_TOO_LARGE,
            "{path}: a body the types refuse got {status}"
        );
    }
    if status.is_success() {
        let _: serde_json::Value = serde_json::from_slice(&bytes).expect("a 2xx body is json");
    }
    status.is_success()
}

/// Seeds: valid and nearly valid requests of each route.
pub(crate) fn rest_seeds() -> Vec<Vec<u8>> {
    let with = |sel: u8, body: &str| [&[sel][..], body.as_bytes()].concat();
    vec![
        with(
            0,
            r#"{"users":["alice","bob","alice"],"data":{"text":"hi"},"store":true,"ttl":60}"#,
        ),
        with(0, r#"{"users":["u"],"data":[[[[1]]]],"store":false}"#),
        with(8, r#"{"users":[""],"data":null}"#),
        with(1, r#"{"channel":"news","data":"x","history":true}"#),
        with(1, r#"{"channel":"bad channel","data":1}"#),
        with(2, r#"{"data":{"a":[1,2,{"b":"\u00e9"}]}}"#),
        with(3, "alice"),
        with(4, "alice"),
        with(5, "b-1"),
        with(16, r#"{"data":1}"#),
    ]
}
