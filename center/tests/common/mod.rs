//! Test harness: a center over the real directory, the real embedded store
//! (wrapped so a test can make it fail or stall), the real file id
//! generator, and a recording rooms double.
#![allow(dead_code, clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use center::{Center, CenterConfig, CenterDeps, Rooms, RoomsError};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use proto::{BroadcastProgress, ConnId, EncodedMsg, MsgId, RoomId, UserId};
use register::{ConnInfo, Directory, LocalDirectory};
use saver::{Bounds, EmbeddedStore, Store, StoreError, StoredMsg};
use tokio::sync::Semaphore;
use tower::ServiceExt;

pub const KEY: &str = "test-key-123";

/// One call the center made to a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Users {
        room: u32,
        users: Vec<String>,
        id: i64,
    },
    Channel {
        room: u32,
        channel: String,
        id: i64,
    },
    Broadcast {
        room: u32,
        id: i64,
    },
    Kick {
        room: u32,
        user: String,
    },
    Resync {
        room: u32,
        users: Option<Vec<String>>,
        after: i64,
    },
}

/// Rooms double: records calls; counts a user's connections in the room
/// from the directory; rooms in `failing` answer an error; broadcasts wait
/// for a permit of `gate` when `gated` is set.
pub struct RecRooms {
    pub dir: Arc<LocalDirectory>,
    pub calls: Mutex<Vec<Call>>,
    pub failing: Mutex<HashSet<u32>>,
    pub gated: AtomicBool,
    pub gate: Semaphore,
    /// Members of every channel, per room: user → connections.
    pub members: Mutex<std::collections::BTreeMap<u32, std::collections::BTreeMap<String, u32>>>,
    /// Presence changes received, per room.
    pub presence: Mutex<Vec<(u32, bool, String)>>,
    /// Broadcast progress per (room, id), and how often it was asked.
    pub progress: Mutex<std::collections::HashMap<(u32, i64), (BroadcastProgress, u32)>>,
}

impl RecRooms {
    fn conns_in(&self, room: RoomId, user: &UserId) -> u64 {
        self.dir.get(user).iter().filter(|c| c.room == room).count() as u64
    }
    fn check(&self, room: RoomId) -> Result<(), RoomsError> {
        if self.failing.lock().contains(&room.0) {
            return Err(RoomsError::Link {
                room,
                source: link::LinkError::Unavailable {
                    service: "room",
                    addr: "test failure".to_owned(),
                },
            });
        }
        Ok(())
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }
}

#[async_trait]
impl Rooms for RecRooms {
    async fn presence_changes(
        &self,
        room: RoomId,
        changes: &[(bool, proto::PresenceChange)],
    ) -> Result<u64, RoomsError> {
        self.check(room)?;
        let mut p = self.presence.lock();
        for (join, c) in changes {
            p.push((room.0, *join, c.user.to_string()));
        }
        Ok(changes.len() as u64)
    }
    async fn channel_members(
        &self,
        room: RoomId,
        _channel: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<proto::MembersPage, RoomsError> {
        self.check(room)?;
        let members = self.members.lock();
        let mut it = members
            .get(&room.0)
            .into_iter()
            .flatten()
            .filter(|(u, _)| after.is_none_or(|a| u.as_str() > a));
        let users = it
            .by_ref()
            .take(limit as usize)
            .map(|(u, n)| proto::PresentUser {
                user: UserId::new(u),
                connections: *n,
            })
            .collect();
        Ok(proto::MembersPage {
            users,
            more: it.next().is_some(),
        })
    }
    async fn deliver_users(
        &self,
        room: RoomId,
        users: &[UserId],
        msg: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError> {
        self.check(room)?;
        self.calls.lock().push(Call::Users {
            room: room.0,
            users: users.iter().map(|u| u.to_string()).collect(),
            id: msg.id.0,
        });
        Ok(users.iter().map(|u| self.conns_in(room, u)).sum())
    }
    async fn publish_channel(
        &self,
        room: RoomId,
        channel: &str,
        msg: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError> {
        self.check(room)?;
        self.calls.lock().push(Call::Channel {
            room: room.0,
            channel: channel.to_owned(),
            id: msg.id.0,
        });
        Ok(1)
    }
    /// Every connection of the room queues it; the first progress question
    /// finds all but the last written and that one skipped (when the room
    /// has two or more), the second finds the room done.
    async fn broadcast(
        &self,
        room: RoomId,
        msg: &Arc<EncodedMsg>,
    ) -> Result<BroadcastProgress, RoomsError> {
        if self.gated.load(Ordering::SeqCst) && room.0 != 1 {
            self.gate.acquire().await.unwrap().forget();
        }
        self.check(room)?;
        self.calls.lock().push(Call::Broadcast {
            room: room.0,
            id: msg.id.0,
        });
        let n = self
            .dir
            .room_list()
            .iter()
            .find(|r| r.room == room)
            .map_or(0, |r| r.connections);
        let p = BroadcastProgress {
            delivered: 0,
            skipped: 0,
            pending: n,
        };
        self.progress.lock().insert((room.0, msg.id.0), (p, 0));
        Ok(p)
    }
    async fn broadcast_progress(
        &self,
        room: RoomId,
        id: MsgId,
    ) -> Result<Option<BroadcastProgress>, RoomsError> {
        self.check(room)?;
        let mut all = self.progress.lock();
        let Some((p, asked)) = all.get_mut(&(room.0, id.0)) else {
            return Ok(None);
        };
        *asked += 1;
        let n = p.total();
        *p = if *asked == 1 && n >= 2 {
            BroadcastProgress {
                delivered: n - 2,
                skipped: 1,
                pending: 1,
            }
        } else {
            let skipped = u64::from(n >= 2);
            BroadcastProgress {
                delivered: n - skipped,
                skipped,
                pending: 0,
            }
        };
        Ok(Some(*p))
    }
    async fn kick_user(&self, room: RoomId, user: &UserId) -> Result<u64, RoomsError> {
        self.check(room)?;
        self.calls.lock().push(Call::Kick {
            room: room.0,
            user: user.to_string(),
        });
        Ok(self.conns_in(room, user))
    }
    async fn resync(
        &self,
        room: RoomId,
        users: Option<&[UserId]>,
        after: MsgId,
    ) -> Result<u64, RoomsError> {
        self.check(room)?;
        self.calls.lock().push(Call::Resync {
            room: room.0,
            users: users.map(|us| us.iter().map(|u| u.to_string()).collect()),
            after: after.0,
        });
        Ok(match users {
            Some(us) => us.iter().map(|u| self.conns_in(room, u)).sum(),
            None => 0,
        })
    }
}

/// The real embedded store, with switches to fail or stall writes.
pub struct TestStore {
    pub inner: EmbeddedStore,
    /// Writes for users whose id starts with "fail" fail.
    pub fail_prefix: AtomicBool,
    /// When set, writes wait for a permit of `gate`.
    pub gated: AtomicBool,
    pub gate: Semaphore,
}

#[async_trait]
impl Store for TestStore {
    async fn append_users(
        &self,
        users: &[UserId],
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError> {
        if self.gated.load(Ordering::SeqCst) {
            self.gate.acquire().await.unwrap().forget();
        }
        if self.fail_prefix.load(Ordering::SeqCst)
            && users.iter().any(|u| u.as_str().starts_with("fail"))
        {
            return Err(StoreError::Setup("injected failure"));
        }
        self.inner.append_users(users, msg, bounds).await
    }
    async fn read_user(
        &self,
        user: &UserId,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        self.inner.read_user(user, after, now_ms, limit).await
    }
    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), StoreError> {
        self.inner.ack(user, device, id).await
    }
    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, StoreError> {
        self.inner.acked(user, device).await
    }
    async fn cid_get(
        &self,
        user: &UserId,
        cid: &str,
        now_ms: i64,
    ) -> Result<Option<MsgId>, StoreError> {
        self.inner.cid_get(user, cid, now_ms).await
    }
    async fn cid_put(
        &self,
        user: &UserId,
        cid: &str,
        id: MsgId,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.inner.cid_put(user, cid, id, expires_at).await
    }
    async fn append_channel(
        &self,
        channel: &str,
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError> {
        self.inner.append_channel(channel, msg, bounds).await
    }
    async fn read_channel(
        &self,
        channel: &str,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        self.inner.read_channel(channel, after, now_ms, limit).await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

pub struct H {
    pub center: Center,
    pub app: Router,
    pub dir: Arc<LocalDirectory>,
    pub rooms: Arc<RecRooms>,
    pub store: Arc<TestStore>,
    pub ids: Arc<idgen::FileIdGen>,
    pub _tmp: tempfile::TempDir,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub async fn harness() -> H {
    harness_with(CenterConfig::default()).await
}

pub async fn harness_with(mut cfg: CenterConfig) -> H {
    cfg.api_key = KEY.to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(LocalDirectory::new());
    let rooms = Arc::new(RecRooms {
        dir: dir.clone(),
        calls: Mutex::new(Vec::new()),
        failing: Mutex::new(HashSet::new()),
        gated: AtomicBool::new(false),
        gate: Semaphore::new(0),
        members: Mutex::default(),
        presence: Mutex::default(),
        progress: Mutex::default(),
    });
    let store = Arc::new(TestStore {
        inner: EmbeddedStore::open(&tmp.path().join("store.redb")).unwrap(),
        fail_prefix: AtomicBool::new(false),
        gated: AtomicBool::new(false),
        gate: Semaphore::new(0),
    });
    let ids = Arc::new(idgen::FileIdGen::open(&tmp.path().join("ids"), 1).unwrap());
    let center = Center::new(
        cfg,
        CenterDeps {
            dir: dir.clone(),
            store: store.clone(),
            ids: ids.clone(),
            rooms: rooms.clone(),
        },
    );
    let app = center.router();
    H {
        center,
        app,
        dir,
        rooms,
        store,
        ids,
        _tmp: tmp,
    }
}

impl H {
    /// Connects `user` as connection `n` of `room`.
    pub async fn connect(&self, user: &str, room: u32, n: u64) {
        self.dir.room_up(RoomId(room)).await.unwrap();
        self.dir
            .connected(ConnInfo {
                user: UserId::new(user),
                conn: ConnId::new(RoomId(room), n),
                room: RoomId(room),
                device: Some(format!("dev{n}")),
                since: now_ms() - 1000,
            })
            .await
            .unwrap();
    }

    pub async fn stored(&self, user: &str) -> Vec<StoredMsg> {
        self.store
            .read_user(&UserId::new(user), MsgId(0), now_ms(), 10_000)
            .await
            .unwrap()
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        send(
            &self.app,
            req(method, path, body, Some(KEY), Some("application/json")),
        )
        .await
    }
}

pub fn req(
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
    ctype: Option<&str>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    if let (Some(ct), Some(_)) = (ctype, body) {
        b = b.header("content-type", ct);
    }
    b.body(body.map_or_else(Body::empty, |s| Body::from(s.to_owned())))
        .unwrap()
}

/// Sends a request; answers the status and the body as JSON (`Null` when empty,
/// a JSON string when it is not JSON).
pub async fn send(app: &Router, r: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app.clone().oneshot(r).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })
    };
    (status, v)
}

pub async fn text(app: &Router, path: &str) -> (StatusCode, String, String) {
    let resp = app
        .clone()
        .oneshot(req("GET", path, None, None, None))
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8(bytes.to_vec()).unwrap())
}
