//! The cluster harness shared by the cluster and fault suites: every
//! component its own `pushgate` process on loopback, Redis from testkit,
//! optional fault proxies (testkit::Proxy) on the internal links.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{eventually, mint, now_secs, spawn_raw, Client, Event, Transport};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::process::Child;
use tokio::time::Instant;

/// One `pushgate <subcommand>` process.
pub struct Node {
    pub name: String,
    pub args: Vec<String>,
    pub child: Option<Child>,
    pub lines: Vec<String>,
    pub stderr: Arc<Mutex<String>>,
}

impl Node {
    pub async fn start(name: &str, args: Vec<String>) -> Node {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (child, lines, stderr) = spawn_raw(&refs, &[], None).await;
        Node {
            name: name.to_owned(),
            args,
            child: Some(child),
            lines,
            stderr,
        }
    }

    pub fn addr(&self, prefix: &str) -> SocketAddr {
        let line = self
            .lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{}: no line {prefix:?} in {:?}", self.name, self.lines));
        line.split_whitespace().next().unwrap().parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).unwrap()
    }

    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub async fn stop(&mut self) {
        let pid = self.pid();
        super::sigterm_pid(pid);
        let mut c = self.child.take().unwrap();
        let st = tokio::time::timeout(Duration::from_secs(30), c.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit after SIGTERM", self.name))
            .unwrap();
        assert!(
            st.success(),
            "{} exited with {st}: {}",
            self.name,
            self.stderr.lock()
        );
    }

    /// Starts the same command again (same ports where they were fixed).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running node");
        let again = Node::start(&self.name, self.args.clone()).await;
        *self = again;
    }
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

pub fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A cluster: Redis, 2 registers, 2 idgens, 1 saver, centers, rooms.
pub struct Cluster {
    pub redis: testkit::RedisServer,
    pub _data: tempfile::TempDir,
    pub key: String,
    pub api_key: String,
    pub secret: String,
    pub registers: Vec<Node>,
    pub idgens: Vec<Node>,
    pub savers: Vec<Node>,
    pub centers: Vec<Node>,
    pub rooms: Vec<Node>,
    pub reg_list: String,
    pub saver_list: String,
    pub idgen_list: String,
    pub lease_ms: u64,
    pub http: reqwest::Client,
}

impl Cluster {
    pub async fn start(rooms: u32, centers: usize) -> Cluster {
        Cluster::start_on(testkit::RedisServer::start(), rooms, centers).await
    }

    /// [`Cluster::start`] with the store on `redis`.
    pub async fn start_on(redis: testkit::RedisServer, rooms: u32, centers: usize) -> Cluster {
        let data = tempfile::tempdir().unwrap();
        let key = super::uniq("ck");
        let lease_ms = 3000;
        let common_args = |mut v: Vec<String>| {
            v.extend(s(&["--cluster-key", &key]));
            v
        };
        let mut registers = Vec::new();
        let mut reg_addrs = Vec::new();
        for _ in 0..2 {
            let a = local(testkit::free_port());
            reg_addrs.push(a.clone());
            registers.push(
                Node::start(
                    "register",
                    common_args(s(&[
                        "register",
                        "--listen",
                        &a,
                        "--lease-ms",
                        &lease_ms.to_string(),
                    ])),
                )
                .await,
            );
        }
        let mut idgens = Vec::new();
        let mut idgen_addrs = Vec::new();
        for region in 1..=2 {
            let a = local(testkit::free_port());
            idgen_addrs.push(a.clone());
            let dir = data.path().join(format!("idgen-{region}"));
            idgens.push(
                Node::start(
                    "idgen",
                    common_args(s(&[
                        "idgen",
                        "--listen",
                        &a,
                        "--region",
                        &region.to_string(),
                        "--data",
                        &dir.display().to_string(),
                    ])),
                )
                .await,
            );
        }
        let saver_addr = local(testkit::free_port());
        let savers = vec![
            Node::start(
                "saver",
                common_args(s(&[
                    "saver",
                    "--listen",
                    &saver_addr,
                    "--redis",
                    &redis.url(),
                ])),
            )
            .await,
        ];
        let mut c = Cluster {
            redis,
            _data: data,
            key: key.clone(),
            api_key: super::uniq("api"),
            secret: super::uniq("secret"),
            registers,
            idgens,
            savers,
            centers: Vec::new(),
            rooms: Vec::new(),
            reg_list: reg_addrs.join(","),
            saver_list: saver_addr,
            idgen_list: idgen_addrs.join(","),
            lease_ms,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        for _ in 0..centers {
            c.add_center().await;
        }
        for id in 1..=rooms {
            c.add_room(id).await;
        }
        if centers > 0 {
            c.wait_rooms(rooms as usize).await;
        }
        c
    }

    pub async fn add_center(&mut self) {
        let args = self.center_args(&self.saver_list);
        let n = Node::start("center", args).await;
        self.centers.push(n);
    }

    /// The arguments of a center of this cluster whose saver is at `saver`.
    pub fn center_args(&self, saver: &str) -> Vec<String> {
        s(&[
            "center",
            "--http",
            "127.0.0.1:0",
            "--api-key",
            &self.api_key,
            "--registers",
            &self.reg_list,
            "--idgens",
            &self.idgen_list,
            "--saver",
            saver,
            "--cluster-key",
            &self.key,
        ])
    }

    /// Spawns a self-reconnecting client for each of `users` over the
    /// WebSocket addresses in `rooms` (user i starts at room i), and waits
    /// until every user is listed online.
    pub async fn online_clients(
        &self,
        rooms: &Arc<Mutex<Vec<SocketAddr>>>,
        users: &[String],
    ) -> Vec<Resilient> {
        let clients = users
            .iter()
            .enumerate()
            .map(|(i, u)| Resilient::spawn(rooms.clone(), self.token(u), i))
            .collect();
        for u in users {
            eventually(&format!("{u} online"), Duration::from_secs(10), || async {
                let (_, v) = self.api(0, "GET", &format!("/users/{u}"), None).await;
                v["online"] == true
            })
            .await;
        }
        clients
    }

    /// A fixed internal port (as in production), so a restart of the room
    /// comes back on the same address as a new instance.
    pub fn room_args(&self, id: u32) -> Vec<String> {
        self.room_args_on(id, &local(testkit::free_port()))
    }

    /// [`Cluster::room_args`] with the internal listener on `internal`.
    pub fn room_args_on(&self, id: u32, internal: &str) -> Vec<String> {
        let internal = internal.to_owned();
        s(&[
            "room",
            "--id",
            &id.to_string(),
            "--ws",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
            "--internal",
            &internal,
            "--http",
            "127.0.0.1:0",
            "--registers",
            &self.reg_list,
            "--saver",
            &self.saver_list,
            "--idgens",
            &self.idgen_list,
            "--token-secret",
            &self.secret,
            "--cluster-key",
            &self.key,
            "--reconnect-delay-ms",
            "200",
            "--drain-timeout",
            "5",
            // tests/presence.rs; other tests use other channels.
            "--presence-channels",
            "presence:*",
        ])
    }

    /// Starts room `id`; returns its index in `rooms`.
    pub async fn add_room(&mut self, id: u32) -> usize {
        let n = Node::start(&format!("room-{id}"), self.room_args(id)).await;
        self.rooms.push(n);
        self.rooms.len() - 1
    }

    pub fn ws(&self, room: usize) -> SocketAddr {
        self.rooms[room].addr("ws listening on ")
    }

    pub fn token(&self, user: &str) -> String {
        mint(
            &self.secret,
            user,
            None,
            Some(&["news", "chan-*"]),
            now_secs() + 3600,
        )
    }

    pub async fn api(
        &self,
        center: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!(
            "http://{}/api/v1{path}",
            self.centers[center].addr("http listening on ")
        );
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.http.request(m, &url).bearer_auth(&self.api_key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn api_ok(
        &self,
        center: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let (st, v) = self.api(center, method, path, body).await;
        assert!(st == 200 || st == 202, "{method} {path}: {st} {v}");
        v
    }

    pub async fn push(&self, center: usize, users: &[&str], data: Value) -> Value {
        self.api_ok(
            center,
            "POST",
            "/push/users",
            Some(json!({"users": users, "data": data})),
        )
        .await
    }

    /// Polls a task until it is done or failed (10 s at most).
    pub async fn wait_task(&self, center: usize, task: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, t) = self
                .api(center, "GET", &format!("/tasks/{task}"), None)
                .await;
            if t["state"] == "done" || t["state"] == "failed" {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {task} still {t} after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn room_count(&self, center: usize) -> usize {
        let v = self.api_ok(center, "GET", "/stats", None).await;
        v["rooms"].as_array().map_or(0, Vec::len)
    }

    pub async fn wait_rooms(&self, n: usize) {
        for c in 0..self.centers.len() {
            eventually(
                &format!("center {c} lists {n} rooms"),
                Duration::from_secs(5),
                || async move { self.room_count(c).await == n },
            )
            .await;
        }
    }

    /// Connects `user` to room index `room` and waits until center 0 lists it.
    pub async fn login(&self, room: usize, user: &str, last_id: Option<i64>) -> Client {
        let mut c = Client::connect_addr(self.ws(room), Transport::WsJson).await;
        let ok = c.auth(&self.token(user), last_id, Some("d1")).await;
        self.wait_listed(user, &ok).await;
        c
    }

    /// Waits until center 0 lists the connection of `auth_ok` as `user`'s.
    pub async fn wait_listed(&self, user: &str, auth_ok: &Value) {
        let conn = super::id_text(&auth_ok["conn"]);
        eventually(
            &format!("{user} listed online"),
            Duration::from_secs(5),
            || {
                let conn = conn.clone();
                async move {
                    let (_, v) = self.api(0, "GET", &format!("/users/{user}"), None).await;
                    v["connections"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| super::id_text(&c["conn"]) == conn))
                }
            },
        )
        .await;
    }
}

/// A client that keeps itself connected: on any close it reconnects (with
/// jittered backoff) to the next room in `rooms`, presenting the highest id
/// it has as `last_id`. Records every message id it receives.
pub struct Resilient {
    pub ids: Arc<Mutex<BTreeSet<i64>>>,
    /// Messages received whose id had been received before.
    pub dups: Arc<Mutex<u64>>,
    pub reconnects: Arc<Mutex<u32>>,
    pub stop: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Resilient {
    pub fn spawn(rooms: Arc<Mutex<Vec<SocketAddr>>>, token: String, start: usize) -> Resilient {
        let ids = Arc::new(Mutex::new(BTreeSet::new()));
        let reconnects = Arc::new(Mutex::new(0));
        let dups = Arc::new(Mutex::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let (ids, reconnects, stop) = (ids.clone(), reconnects.clone(), stop.clone());
            let dups = dups.clone();
            async move {
                let mut i = start;
                let mut first = true;
                while !stop.is_cancelled() {
                    let addr = {
                        let r = rooms.lock();
                        r[i % r.len()]
                    };
                    i += 1;
                    if !first {
                        *reconnects.lock() += 1;
                        let jitter = rand::random::<u64>() % 150;
                        tokio::time::sleep(Duration::from_millis(50 + jitter)).await;
                    }
                    first = false;
                    // A room that is draining or restarting may refuse or
                    // reset the connection, even mid-handshake: try the next.
                    let Ok(mut c) = Client::try_connect_addr(addr, Transport::WsJson).await else {
                        continue;
                    };
                    let last = ids.lock().last().copied();
                    c.send(&proto::ClientFrame::Auth {
                        seq: Some(1),
                        token: token.clone(),
                        last_id: last.map(proto::MsgId),
                        device: Some("d1".into()),
                    })
                    .await;
                    loop {
                        let ev = tokio::select! {
                            () = stop.cancelled() => return,
                            ev = c.recv(Duration::from_secs(30)) => ev,
                        };
                        match ev {
                            Some(Event::Frame(v)) if v["op"] == "msg" => {
                                if !ids.lock().insert(v["id"].as_i64().unwrap()) {
                                    *dups.lock() += 1;
                                }
                            }
                            Some(Event::Frame(_)) => {}
                            Some(Event::Closed { .. }) | None => break,
                        }
                    }
                }
            }
        });
        Resilient {
            ids,
            dups,
            reconnects,
            stop,
            task,
        }
    }

    pub async fn finish(self) -> (BTreeSet<i64>, u32) {
        self.stop.cancel();
        let _ = self.task.await;
        let ids = self.ids.lock().clone();
        let r = *self.reconnects.lock();
        (ids, r)
    }
}

pub async fn wait_ids(r: &Resilient, want: &BTreeSet<i64>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let missing: Vec<i64> = want.difference(&r.ids.lock()).copied().collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} messages never arrived, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Faults: links through proxies, steady pushes, zero-loss checks
// ---------------------------------------------------------------------------

/// The links of a room that a fault test can cut.
pub struct RoomLinks {
    /// Centers → this room (the room advertises the proxy's address).
    pub centers: testkit::Proxy,
    /// This room → each register, in the registers' order.
    pub registers: Vec<testkit::Proxy>,
}

impl Cluster {
    /// Starts room `id` with its links behind proxies; returns its index in
    /// `rooms` and the proxies.
    pub async fn add_room_behind_proxies(&mut self, id: u32) -> (usize, RoomLinks) {
        let internal: SocketAddr = local(testkit::free_port()).parse().unwrap();
        let centers = testkit::Proxy::start(internal).await;
        let mut registers = Vec::new();
        for a in self.reg_list.split(',') {
            registers.push(testkit::Proxy::start(a.parse().unwrap()).await);
        }
        let regs: Vec<String> = registers.iter().map(|p| p.addr().to_string()).collect();
        let mut args = self.room_args_on(id, &internal.to_string());
        let at = args.iter().position(|a| a == "--registers").unwrap();
        args[at + 1] = regs.join(",");
        args.extend(s(&["--advertise", &centers.addr().to_string()]));
        let n = Node::start(&format!("room-{id}"), args).await;
        self.rooms.push(n);
        (self.rooms.len() - 1, RoomLinks { centers, registers })
    }

    /// Starts a center whose saver link goes through a proxy; returns its
    /// index in `centers` and the proxy.
    pub async fn add_center_behind_saver_proxy(&mut self) -> (usize, testkit::Proxy) {
        let proxy = testkit::Proxy::start(self.saver_list.parse().unwrap()).await;
        let args = self.center_args(&proxy.addr().to_string());
        self.centers.push(Node::start("center", args).await);
        (self.centers.len() - 1, proxy)
    }

    /// Starts pushing stored messages through `center`, one user at a time
    /// in turn, every `every`, until [`Pusher::stop`].
    pub fn pusher(&self, center: usize, users: Vec<String>, every: Duration) -> Pusher {
        let url = format!(
            "http://{}/api/v1/push/users",
            self.centers[center].addr("http listening on ")
        );
        let (http, key) = (self.http.clone(), self.api_key.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let acked = Arc::new(Mutex::new(vec![BTreeSet::new(); users.len()]));
        let refused = Arc::new(Mutex::new(0u32));
        let task = tokio::spawn({
            let (stop, acked, refused) = (stop.clone(), acked.clone(), refused.clone());
            async move {
                let mut k = 0usize;
                while !stop.is_cancelled() {
                    let u = k % users.len();
                    k += 1;
                    let body = json!({"users": [users[u].as_str()], "data": k});
                    let answer = http.post(&url).bearer_auth(&key).json(&body).send().await;
                    let id = match answer {
                        Ok(r) if r.status().as_u16() == 200 => {
                            r.json::<Value>().await.ok().and_then(|v| v["id"].as_i64())
                        }
                        _ => None,
                    };
                    match id {
                        Some(id) => {
                            acked.lock()[u].insert(id);
                        }
                        // Not acknowledged: not owed to anyone.
                        None => *refused.lock() += 1,
                    }
                    tokio::time::sleep(every).await;
                }
            }
        });
        Pusher {
            stop,
            task,
            acked,
            refused,
        }
    }
}

/// Steady stored pushes (see [`Cluster::pusher`]).
pub struct Pusher {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    acked: Arc<Mutex<Vec<BTreeSet<i64>>>>,
    refused: Arc<Mutex<u32>>,
}

impl Pusher {
    /// Stops; returns the ids acknowledged per user (in the order given)
    /// and how many pushes were refused.
    pub async fn stop(self) -> (Vec<BTreeSet<i64>>, u32) {
        self.stop.cancel();
        let _ = self.task.await;
        let acked = self.acked.lock().clone();
        let refused = *self.refused.lock();
        (acked, refused)
    }

    /// The ids acknowledged so far, per user.
    pub fn snapshot(&self) -> Vec<BTreeSet<i64>> {
        self.acked.lock().clone()
    }

    /// Pushes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().iter().map(BTreeSet::len).sum()
    }
}
