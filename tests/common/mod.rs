//! End-to-end harness: runs the real `pushgate` binary on loopback ports and
//! talks to it like an outsider (WebSocket JSON and binary, TCP, REST).
//!
//! Every test file uses a subset of it, hence the `dead_code` allowance.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cluster;
pub mod sse;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use proto::{ClientFrame, MsgId, ServerFrame};
use serde_json::{json, Value};
use testkit::wire::{self, BytesMut, Unit};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::WebSocketStream;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pushgate");

/// The Python of the virtual environment that scripts/test makes under the
/// target dir, checked to import `module` (from the PyPI package `package`):
/// the independent clients (aioquic, websockets) run there. A missing one
/// fails the test and says how to install it.
pub fn python_with(module: &str, package: &str) -> PathBuf {
    // target/<profile>/pushgate → target/pyvenv
    let target = PathBuf::from(BIN)
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .to_path_buf();
    let py = target.join("pyvenv").join("bin").join("python");
    let ok = py.is_file()
        && std::process::Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Python with {package} is required at {}: run scripts/test, or\n  \
         python3 -m venv {venv} && {venv}/bin/pip install '{package}'\n\
         (Debian/Ubuntu: apt-get install python3-venv)",
        py.display(),
        venv = target.join("pyvenv").display()
    );
    py
}

/// Checks that headless Chromium and its WebDriver are installed (a test
/// that drives a real browser fails, and says how to install them, when
/// they are not) and returns the Python that runs the selenium scripts.
pub fn chromium_python() -> PathBuf {
    let which = |name: &str| {
        std::process::Command::new("which")
            .arg(name)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let chromium = which("chromium") || which("chromium-browser");
    let driver = which("chromedriver");
    assert!(
        chromium && driver,
        "this test needs Chromium and its WebDriver (chromium: {chromium}, \
         chromedriver: {driver}): run scripts/test, or\n  \
         apt-get install -y chromium chromium-driver"
    );
    python_with("selenium", "selenium")
}

/// How long a server may take to print `ready`.
pub const STARTUP: Duration = Duration::from_secs(20);

/// Default wait for a frame the test expects.
pub const FRAME_WAIT: Duration = Duration::from_secs(5);

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A fresh user name, unique in this process.
pub fn uniq(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Mints an HS256 JWT with a standard JWT library (not pushgate's own code):
/// the contract says any JWT library can mint one.
pub fn mint(
    secret: &str,
    user: &str,
    device: Option<&str>,
    channels: Option<&[&str]>,
    exp: u64,
) -> String {
    let mut claims = json!({ "sub": user, "exp": exp });
    if let Some(d) = device {
        claims["dev"] = json!(d);
    }
    if let Some(c) = channels {
        claims["channels"] = json!(c);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Polls `f` every 20 ms until it returns true; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

/// A running (or stopped) `pushgate` process on a temporary data dir.
pub struct Server {
    child: Option<Child>,
    pid: u32,
    data: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub api_key: String,
    pub secret: String,
    /// Every stdout line up to and including `ready`.
    pub startup: Vec<String>,
    stderr: Arc<Mutex<String>>,
    http_client: reqwest::Client,
}

/// The value following `--flag` in `args`, if any.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A `tokio::process::Command` for the binary with no PUSHGATE_* variables inherited.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("PUSHGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd.kill_on_drop(true);
    cmd
}

struct Spawned {
    child: Child,
    pid: u32,
    startup: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

/// Spawns the binary with exactly `args` (in `cwd` if given) and reads stdout
/// until `ready`. Panics with the captured stderr when it does not get there.
///
/// A start that fails only because a fixed port is taken (`Address already in
/// use`: a restarted node's port still held for a moment, or another test's
/// process that bound it first) is tried again with the same arguments, up to
/// [`BIND_ATTEMPTS`] times, 300 ms apart.
async fn spawn_until_ready(
    args: &[String],
    env: &[(String, String)],
    cwd: Option<&Path>,
) -> Spawned {
    let mut last = String::new();
    for _ in 0..BIND_ATTEMPTS {
        match try_spawn_until_ready(args, env, cwd).await {
            Ok(sp) => return sp,
            Err(e) if e.contains("Address already in use") => {
                last = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{last}\n(still a port in use after {BIND_ATTEMPTS} attempts)")
}

/// Starts tried by [`spawn_until_ready`] while a fixed port is in use.
const BIND_ATTEMPTS: u32 = 10;

/// One try of [`spawn_until_ready`]: the error holds the reason, the exit
/// status and the captured output.
async fn try_spawn_until_ready(
    args: &[String],
    env: &[(String, String)],
    cwd: Option<&Path>,
) -> Result<Spawned, String> {
    let mut cmd = command();
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().expect("spawn pushgate binary");
    let pid = child.id().expect("child pid");
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = stderr.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = err_lines.next_line().await {
            let mut s = sink.lock();
            s.push_str(&l);
            s.push('\n');
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + STARTUP;
    let mut startup = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, out.next_line()).await {
            Ok(Ok(Some(line))) => {
                let done = line.trim() == "ready";
                startup.push(line);
                if done {
                    break;
                }
            }
            other => {
                let why = match other {
                    Err(_) => "timed out (20 s) before `ready`".to_string(),
                    Ok(Ok(None)) => "stdout closed before `ready`".to_string(),
                    Ok(Err(e)) => format!("stdout read error {e}"),
                    Ok(Ok(Some(_))) => unreachable!(),
                };
                let _ = child.start_kill();
                let status = timeout(Duration::from_secs(2), child.wait()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!(
                    "pushgate {args:?}: {why}; exit: {status:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    startup.join("\n"),
                    stderr.lock()
                ));
            }
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    Ok(Spawned {
        child,
        pid,
        startup,
        stderr,
    })
}

/// Finds `prefix` among the startup lines and returns the rest of that line.
pub fn startup_value(lines: &[String], prefix: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().to_string()))
}

fn startup_addr(lines: &[String], prefix: &str) -> SocketAddr {
    let v = startup_value(lines, prefix)
        .unwrap_or_else(|| panic!("no `{prefix}ADDR` line in startup output {lines:?}"));
    v.parse().unwrap_or_else(|e| {
        panic!("`{prefix}{v}` is not a socket address ({e}); startup output {lines:?}")
    })
}

impl Server {
    /// Starts a server on port 0 everywhere with `extra` flags.
    pub async fn start(extra: &[&str]) -> Server {
        Server::start_env(extra, &[]).await
    }

    /// Starts a server with extra flags and environment variables.
    pub async fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let data = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "--data".into(),
            data.path().display().to_string(),
            "--ws".into(),
            "127.0.0.1:0".into(),
            "--tcp".into(),
            "127.0.0.1:0".into(),
            "--quic".into(),
            "127.0.0.1:0".into(),
            "--http".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sp = spawn_until_ready(&args, &env, None).await;
        let mut s = Server {
            child: Some(sp.child),
            pid: sp.pid,
            data,
            args,
            env,
            ws: "0.0.0.0:0".parse().unwrap(),
            tcp: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            api_key: String::new(),
            secret: String::new(),
            startup: Vec::new(),
            stderr: sp.stderr,
            http_client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                // Below the shortest --http-header-timeout a test sets (2 s):
                // the server closes an idle keep-alive connection at that
                // timeout, and a request sent on it just then fails.
                .pool_idle_timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        };
        s.absorb_startup(sp.startup);
        s
    }

    fn absorb_startup(&mut self, lines: Vec<String>) {
        self.ws = startup_addr(&lines, "ws listening on ");
        self.tcp = startup_addr(&lines, "tcp listening on ");
        self.http = startup_addr(&lines, "http listening on ");
        // Printed when generated; when given (flag, env or file) it may not be.
        let env = |k: &str| {
            self.env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        self.api_key = startup_value(&lines, "api key: ")
            .or_else(|| flag_value(&self.args, "--api-key"))
            .or_else(|| env("PUSHGATE_API_KEY"))
            .unwrap_or_default();
        self.secret = startup_value(&lines, "token secret: ")
            .or_else(|| flag_value(&self.args, "--token-secret"))
            .or_else(|| env("PUSHGATE_TOKEN_SECRET"))
            .unwrap_or_default();
        self.startup = lines;
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    /// The process id of the current child.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().clone()
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {} failed", self.pid);
    }

    /// Sends SIGTERM (does not wait).
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("no child");
        match timeout(limit, child.wait()).await {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => panic!("wait: {e}"),
            Err(_) => panic!(
                "pushgate (pid {}) did not exit within {limit:?}\n--- stderr ---\n{}",
                self.pid,
                self.stderr()
            ),
        }
    }

    /// SIGTERM, then waits for the exit (up to 15 s) and returns its status.
    pub async fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit(Duration::from_secs(15)).await
    }

    /// SIGKILL by pid, and reaps the child.
    pub async fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.wait_exit(Duration::from_secs(5)).await;
    }

    /// Starts the binary again with the same flags and data dir (the child must
    /// have been stopped; a running one is killed first). Addresses change.
    pub async fn restart(&mut self) {
        if self.running() {
            self.kill9().await;
        }
        let sp = spawn_until_ready(&self.args, &self.env, None).await;
        self.child = Some(sp.child);
        self.pid = sp.pid;
        self.stderr = sp.stderr;
        self.absorb_startup(sp.startup);
    }

    /// [`Server::restart`] with `extra` flags added to the command line.
    pub async fn restart_with(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.restart().await;
    }

    // --- tokens -------------------------------------------------------------

    /// A one-hour token for `user`.
    pub fn token(&self, user: &str) -> String {
        mint(&self.secret, user, None, None, now_secs() + 3600)
    }

    /// A token with a device claim.
    pub fn token_dev(&self, user: &str, device: &str) -> String {
        mint(&self.secret, user, Some(device), None, now_secs() + 3600)
    }

    /// A token allowing `channels`.
    pub fn token_channels(&self, user: &str, channels: &[&str]) -> String {
        mint(&self.secret, user, None, Some(channels), now_secs() + 3600)
    }

    // --- clients ------------------------------------------------------------

    /// Connects (no auth yet).
    pub async fn connect(&self, t: Transport) -> Client {
        Client::connect(self, t).await
    }

    /// Connects and authenticates `user` on `device`, returning the client and its auth_ok,
    /// once `GET /users/{user}` lists the connection (see [`Server::login_raw`]).
    pub async fn login(&self, t: Transport, user: &str, device: &str) -> (Client, Value) {
        let (c, ok) = self.login_raw(t, user, device).await;
        self.wait_visible(user, &ok).await;
        (c, ok)
    }

    /// Connects and authenticates, returning right after auth_ok.
    pub async fn login_raw(&self, t: Transport, user: &str, device: &str) -> (Client, Value) {
        let mut c = self.connect(t).await;
        let ok = c.auth(&self.token(user), None, Some(device)).await;
        (c, ok)
    }

    /// Connects and authenticates with `last_id` (waits until the directory lists it).
    pub async fn login_after(
        &self,
        t: Transport,
        user: &str,
        device: &str,
        last_id: i64,
    ) -> (Client, Value) {
        let mut c = self.connect(t).await;
        let ok = c.auth(&self.token(user), Some(last_id), Some(device)).await;
        self.wait_visible(user, &ok).await;
        (c, ok)
    }

    /// Waits until `GET /users/{user}` lists the connection of `auth_ok`.
    pub async fn wait_visible(&self, user: &str, auth_ok: &Value) {
        let want = id_text(&auth_ok["conn"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.user(user).await;
            let listed = v["connections"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| id_text(&c["conn"]) == want));
            if listed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connection {want} of {user} not listed by GET /users after 5 s: {v}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // --- REST -----------------------------------------------------------------

    /// `http://127.0.0.1:PORT`
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http)
    }

    /// A raw request: `key` None = no Authorization header.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        let url = format!("{}{}", self.http_base(), path);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.http_client.request(m, &url);
        if let Some(k) = key {
            rb = rb.header("Authorization", format!("Bearer {k}"));
        }
        if let Some(ct) = content_type {
            rb = rb.header("Content-Type", ct);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let resp = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, text)
    }

    /// An authenticated API call under /api/v1 with a JSON body; returns status and parsed body
    /// (`Value::Null` plus the raw text in `{"_raw":…}` when it is not JSON).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let full = format!("/api/v1{path}");
        let (st, text) = self
            .raw(
                method,
                &full,
                Some(&self.api_key),
                body.as_ref().map(|_| "application/json"),
                body.map(|b| serde_json::to_vec(&b).unwrap()),
            )
            .await;
        let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "_raw": text }));
        (st, v)
    }

    /// POST that must answer `want`.
    pub async fn api_ok(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (st, v) = self.api(method, path, body.clone()).await;
        assert_eq!(
            st, want,
            "{method} /api/v1{path} body {body:?}: expected {want}, got {st} {v}"
        );
        v
    }

    /// `POST /push/users` with the given body; must answer 200.
    pub async fn push(&self, body: Value) -> Value {
        self.api_ok("POST", "/push/users", Some(body), 200).await
    }

    /// Pushes `data` to `users` (stored) and returns the answer.
    pub async fn push_users(&self, users: &[&str], data: Value) -> Value {
        self.push(json!({ "users": users, "data": data })).await
    }

    /// Pushes and returns the message id.
    pub async fn push_id(&self, users: &[&str], data: Value) -> i64 {
        let v = self.push_users(users, data).await;
        v["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("push answer without integer id: {v}"))
    }

    /// `POST /push/channel`.
    pub async fn push_channel(&self, channel: &str, data: Value) -> Value {
        self.api_ok(
            "POST",
            "/push/channel",
            Some(json!({ "channel": channel, "data": data })),
            200,
        )
        .await
    }

    /// `GET /users/{user}`.
    pub async fn user(&self, user: &str) -> Value {
        self.api_ok("GET", &format!("/users/{user}"), None, 200)
            .await
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Value {
        self.api_ok("GET", "/stats", None, 200).await
    }

    /// Polls `GET /tasks/{task}` until `state` is done (or failed); returns the last answer.
    pub async fn wait_task(&self, task: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self
                .api_ok("GET", &format!("/tasks/{task}"), None, 200)
                .await;
            let state = v["state"].as_str().unwrap_or("").to_string();
            assert!(
                ["queued", "running", "done", "failed"].contains(&state.as_str()),
                "task state must be queued|running|done|failed, got {v}"
            );
            if state == "done" || state == "failed" {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "task {task} not done after 10 s: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `GET /users/{user}` reports `online == want`.
    pub async fn wait_online(&self, user: &str, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.user(user).await;
            if v["online"] == json!(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "user {user} online != {want} after 5 s: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGKILL by pid (a no-op once the child has been reaped).
            let _ = c.start_kill();
        }
    }
}

/// Asserts that a REST error answer is a 4xx in `want` with the contract's error body.
pub fn assert_api_error(what: &str, status: u16, body: &Value, want: &[u16]) {
    if let Err(e) = check_api_error(what, status, body, want) {
        panic!("{e}");
    }
}

/// Checks that a REST error answer is a 4xx in `want` with the contract's error body.
pub fn check_api_error(what: &str, status: u16, body: &Value, want: &[u16]) -> Result<(), String> {
    if !want.contains(&status) {
        return Err(format!(
            "{what}: expected status in {want:?}, got {status} {body}"
        ));
    }
    let Some(code) = body["error"]["code"].as_str() else {
        return Err(format!(
            "{what}: status {status} ok, but expected {{\"error\":{{\"code\":…,\"message\":…}}}} body, got {body}"
        ));
    };
    if code.is_empty()
        || !code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "{what}: error.code must be snake_case, got {code:?}"
        ));
    }
    if !body["error"]["message"].is_string() {
        return Err(format!(
            "{what}: error.message must be a string, got {body}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// How a client connects (WsJson, WsBin, WsDefault, Tcp).
pub use testkit::wire::Transport;

/// The three transports every protocol test runs on.
pub const TRANSPORTS: [Transport; 3] = [Transport::WsJson, Transport::WsBin, Transport::Tcp];

/// What a client saw.
#[derive(Debug, Clone)]
pub enum Event {
    /// A server frame, in the JSON shape of DESIGN.md (binary frames converted).
    Frame(Value),
    /// The connection ended. `code` is the WebSocket close code, or the close
    /// code of the final TCP error frame; `reason` the close reason / error message.
    Closed { code: Option<u16>, reason: String },
}

/// A protocol client over any transport.
pub struct Client {
    conn: wire::Client,
    pub transport: Transport,
    /// Close code from a TCP error frame seen before EOF.
    tcp_close: Option<(u16, String)>,
    closed: Option<(Option<u16>, String)>,
    pending: VecDeque<Value>,
}

/// Max frame the test client accepts from the server.
const CLIENT_MAX: usize = wire::MAX_FRAME;

/// Encodes a client frame in the JSON encoding of DESIGN.md (independently of proto::json).
pub fn client_json(f: &ClientFrame) -> Value {
    let mut v = match f {
        ClientFrame::Auth {
            token,
            last_id,
            device,
            ..
        } => {
            let mut v = json!({ "op": "auth", "token": token });
            if let Some(l) = last_id {
                v["last_id"] = json!(l.0);
            }
            if let Some(d) = device {
                v["device"] = json!(d);
            }
            v
        }
        ClientFrame::Ping { .. } => json!({ "op": "ping" }),
        ClientFrame::Sub {
            channel,
            last_id,
            presence,
            ..
        } => {
            let mut v = json!({ "op": "sub", "channel": channel });
            if let Some(l) = last_id {
                v["last_id"] = json!(l.0);
            }
            if *presence {
                v["presence"] = json!(true);
            }
            v
        }
        ClientFrame::Presence { channel, .. } => json!({ "op": "presence", "channel": channel }),
        ClientFrame::Unsub { channel, .. } => json!({ "op": "unsub", "channel": channel }),
        ClientFrame::Ack { id, .. } => json!({ "op": "ack", "id": id.0 }),
        ClientFrame::Refresh { token, .. } => json!({ "op": "refresh", "token": token }),
        ClientFrame::Send { msg, .. } => json!({
            "op": "send", "to": msg.to.as_str(), "cid": msg.cid,
            "data": serde_json::from_slice::<Value>(&msg.data).unwrap_or(Value::Null),
        }),
        ClientFrame::Pub { msg, .. } => json!({
            "op": "pub", "channel": msg.channel, "cid": msg.cid,
            "data": serde_json::from_slice::<Value>(&msg.data).unwrap_or(Value::Null),
        }),
    };
    if let Some(s) = f.seq() {
        v["seq"] = json!(s);
    }
    v
}

/// Converts a decoded binary server frame to the JSON shape of DESIGN.md.
pub fn server_frame_json(f: &ServerFrame) -> Value {
    let mut v = match f {
        ServerFrame::AuthOk {
            conn,
            user,
            room,
            heartbeat,
            ..
        } => json!({
            "op": "auth_ok", "conn": conn.to_string(), "user": user.as_str(),
            "room": room.to_string(), "heartbeat": heartbeat
        }),
        ServerFrame::Pong { .. } => json!({ "op": "pong" }),
        ServerFrame::SubOk { channel, .. } => json!({ "op": "sub_ok", "channel": channel }),
        ServerFrame::UnsubOk { channel, .. } => json!({ "op": "unsub_ok", "channel": channel }),
        ServerFrame::RefreshOk { exp, .. } => json!({ "op": "refresh_ok", "exp": exp }),
        ServerFrame::SendOk { cid, id, .. } => json!({ "op": "send_ok", "cid": cid, "id": id.0 }),
        ServerFrame::PubOk { cid, id, .. } => json!({ "op": "pub_ok", "cid": cid, "id": id.0 }),
        ServerFrame::Msg(m) => {
            let data: Value = serde_json::from_slice(&m.data).unwrap_or_else(|e| {
                panic!(
                    "binary msg data is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&m.data)
                )
            });
            let mut v = json!({ "op": "msg", "id": m.id.0, "ts": m.ts, "data": data });
            if let Some(c) = &m.channel {
                v["channel"] = json!(c);
            }
            if let Some(from) = &m.sender {
                v["from"] = json!(from.user.as_str());
                v["cid"] = json!(from.cid);
            }
            v
        }
        ServerFrame::Error {
            code,
            message,
            close,
            ..
        } => {
            let mut v = json!({ "op": "error", "code": code.as_str(), "message": message });
            if let Some(c) = close {
                v["close"] = json!(c.as_u16());
            }
            v
        }
        ServerFrame::Join(c) | ServerFrame::Leave(c) => json!({
            "op": if matches!(f, ServerFrame::Join(_)) { "join" } else { "leave" },
            "channel": c.channel, "user": c.user.as_str(), "device": c.device,
        }),
        ServerFrame::PresenceOk { page, .. } => json!({
            "op": "presence_ok", "channel": page.channel, "more": page.more,
            "users": page.users.iter()
                .map(|u| json!({ "user": u.user.as_str(), "connections": u.connections }))
                .collect::<Vec<_>>(),
        }),
    };
    let seq = match f {
        ServerFrame::AuthOk { seq, .. }
        | ServerFrame::Pong { seq }
        | ServerFrame::SubOk { seq, .. }
        | ServerFrame::UnsubOk { seq, .. }
        | ServerFrame::RefreshOk { seq, .. }
        | ServerFrame::SendOk { seq, .. }
        | ServerFrame::PubOk { seq, .. }
        | ServerFrame::PresenceOk { seq, .. }
        | ServerFrame::Error { seq, .. } => *seq,
        ServerFrame::Msg(_) | ServerFrame::Join(_) | ServerFrame::Leave(_) => None,
    };
    if let Some(s) = seq {
        v["seq"] = json!(s);
    }
    v
}

/// Opens a WebSocket on an existing TCP stream, asking for `subprotocol`.
pub async fn ws_handshake(
    stream: TcpStream,
    addr: SocketAddr,
    subprotocol: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let (ws, _chosen) = wire::ws_handshake(stream, addr, "/ws", subprotocol).await?;
    Ok(ws)
}

impl Client {
    /// Connects to the server's listener for `t`.
    pub async fn connect(s: &Server, t: Transport) -> Client {
        let addr = if t == Transport::Tcp { s.tcp } else { s.ws };
        Client::connect_addr(addr, t).await
    }

    /// Connects with a tiny socket receive buffer (for slow-consumer tests).
    pub async fn connect_small_rcvbuf(s: &Server, t: Transport, rcvbuf: u32) -> Client {
        let addr = if t == Transport::Tcp { s.tcp } else { s.ws };
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(rcvbuf).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client::wrap(wire::Client::on_stream(stream, addr, t).await)
    }

    /// Wraps an open TCP stream to the TCP listener.
    pub fn from_tcp(stream: TcpStream) -> Client {
        Client::wrap(wire::Client::from_tcp(stream))
    }

    /// Wraps an open WebSocket.
    pub fn from_ws(ws: WebSocketStream<TcpStream>, bin: bool) -> Client {
        Client::wrap(wire::Client::from_ws(ws, bin))
    }

    fn wrap(conn: wire::Client) -> Client {
        Client {
            transport: conn.transport(),
            conn,
            tcp_close: None,
            closed: None,
            pending: VecDeque::new(),
        }
    }

    /// Connects to `addr` (a room's WebSocket or TCP listener, as `t` says).
    pub async fn connect_addr(addr: SocketAddr, t: Transport) -> Client {
        Client::wrap(wire::Client::connect(addr, t).await)
    }

    /// [`Client::connect_addr`] that returns a failed connect or handshake
    /// instead of panicking (for clients that reconnect).
    pub async fn try_connect_addr(addr: SocketAddr, t: Transport) -> Result<Client, String> {
        wire::Client::try_connect(addr, t).await.map(Client::wrap)
    }

    /// Sends a frame in this transport's encoding (JSON by [`client_json`]).
    pub async fn send(&mut self, f: &ClientFrame) {
        let _ = match self.transport {
            Transport::WsJson | Transport::WsDefault => {
                self.conn.send_text(&client_json(f).to_string()).await
            }
            Transport::WsBin | Transport::Tcp => self.conn.send(f).await,
        };
    }

    /// Sends a raw WebSocket text frame (panics on TCP).
    pub async fn send_text(&mut self, text: &str) {
        let _ = self.conn.send_text(text).await;
    }

    /// Sends raw bytes: a WebSocket binary frame, or bytes on the TCP stream as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.conn.send_raw(bytes).await;
    }

    /// Sends a TCP frame with a correct length prefix around `body`.
    pub async fn send_tcp_body(&mut self, body: &[u8]) {
        let _ = self.conn.send_tcp_body(body).await;
    }

    /// Sends the auth frame (seq 1) and expects auth_ok.
    pub async fn auth(&mut self, token: &str, last_id: Option<i64>, device: Option<&str>) -> Value {
        self.send(&ClientFrame::Auth {
            seq: Some(1),
            token: token.to_string(),
            last_id: last_id.map(MsgId),
            device: device.map(str::to_string),
        })
        .await;
        let v = self.next().await;
        assert_eq!(
            v["op"], "auth_ok",
            "{:?}: expected auth_ok, got {v}",
            self.transport
        );
        v
    }

    /// Ping with `seq`, then reads until the pong; returns every msg frame seen before it.
    pub async fn ping_sync(&mut self, seq: u32) -> Vec<Value> {
        self.send(&ClientFrame::Ping { seq: Some(seq) }).await;
        let mut msgs = Vec::new();
        loop {
            let v = self.next().await;
            if v["op"] == "pong" {
                assert_eq!(
                    v["seq"],
                    json!(seq),
                    "{:?}: pong must echo seq: {v}",
                    self.transport
                );
                return msgs;
            }
            msgs.push(v);
        }
    }

    /// Sends `ack id`.
    pub async fn ack(&mut self, id: i64) {
        self.send(&ClientFrame::Ack {
            seq: None,
            id: MsgId(id),
        })
        .await;
    }

    /// Subscribes and expects sub_ok.
    pub async fn sub(&mut self, channel: &str) {
        self.send(&ClientFrame::Sub {
            seq: Some(7),
            channel: channel.to_string(),
            last_id: None,
            presence: false,
        })
        .await;
        let v = self.next().await;
        assert_eq!(
            v["op"], "sub_ok",
            "{:?}: sub {channel}: expected sub_ok, got {v}",
            self.transport
        );
        assert_eq!(v["channel"], channel, "{v}");
        assert_eq!(v["seq"], 7, "sub_ok must echo seq: {v}");
    }

    /// The next event within `limit`, or None on timeout.
    pub async fn recv(&mut self, limit: Duration) -> Option<Event> {
        if let Some(v) = self.pending.pop_front() {
            return Some(Event::Frame(v));
        }
        if let Some((code, reason)) = &self.closed {
            return Some(Event::Closed {
                code: *code,
                reason: reason.clone(),
            });
        }
        let ev = timeout(limit, self.read_one()).await.ok()?;
        if let Event::Closed { code, reason } = &ev {
            self.closed = Some((*code, reason.clone()));
        }
        Some(ev)
    }

    /// Reads one transport unit as an event.
    async fn read_one(&mut self) -> Event {
        let unit = self.conn.next_unit().await;
        let tcp = self.transport == Transport::Tcp;
        let bin = self.transport == Transport::WsBin;
        match unit {
            Unit::Eof | Unit::Error(_) if tcp => {
                let (code, reason) = match self.tcp_close.take() {
                    Some((c, r)) => (Some(c), r),
                    None => (None, "eof without error frame".into()),
                };
                Event::Closed { code, reason }
            }
            Unit::Eof => Event::Closed {
                code: None,
                reason: "stream ended".into(),
            },
            Unit::Error(e) => Event::Closed {
                code: None,
                reason: format!("ws error: {e}"),
            },
            Unit::Text(t) => {
                assert!(!bin, "pushgate.v1.bin connection got a text frame: {t}");
                let v: Value = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("server text frame is not JSON ({e}): {t}"));
                Event::Frame(v)
            }
            Unit::Binary(b) if tcp => {
                let f = wire::decode_binary(&b).unwrap_or_else(|e| {
                    panic!("server TCP frame does not decode ({e}): {:?}", b.to_vec())
                });
                let v = server_frame_json(&f);
                if let (Some(c), Some(m)) = (v["close"].as_u64(), v["message"].as_str()) {
                    self.tcp_close = Some((c as u16, m.to_string()));
                }
                Event::Frame(v)
            }
            Unit::Binary(b) => {
                assert!(bin, "json connection got a binary frame: {b:?}");
                let f = wire::decode_binary(&b)
                    .unwrap_or_else(|e| panic!("server binary frame does not decode ({e}): {b:?}"));
                Event::Frame(server_frame_json(&f))
            }
            Unit::Close { code, reason } => Event::Closed { code, reason },
        }
    }

    /// The next frame; panics on close or after 5 s.
    pub async fn next(&mut self) -> Value {
        match self.recv(FRAME_WAIT).await {
            Some(Event::Frame(v)) => v,
            Some(Event::Closed { code, reason }) => {
                panic!(
                    "{:?}: expected a frame, connection closed (code {code:?}, {reason:?})",
                    self.transport
                )
            }
            None => panic!(
                "{:?}: expected a frame, none within {FRAME_WAIT:?}",
                self.transport
            ),
        }
    }

    /// The next frame, which must be a msg.
    pub async fn next_msg(&mut self) -> Value {
        let v = self.next().await;
        assert_eq!(
            v["op"], "msg",
            "{:?}: expected a msg frame, got {v}",
            self.transport
        );
        v
    }

    /// The next `n` msgs.
    pub async fn msgs(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_msg().await);
        }
        out
    }

    /// Reads until the connection ends (within `limit`); returns the close code,
    /// reason and every frame seen before it.
    pub async fn closed(&mut self, limit: Duration) -> (Option<u16>, String, Vec<Value>) {
        let deadline = Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some(Event::Frame(v)) => frames.push(v),
                Some(Event::Closed { code, reason }) => return (code, reason, frames),
                None => panic!(
                    "{:?}: connection still open after {limit:?}; frames seen: {frames:?}",
                    self.transport
                ),
            }
        }
    }

    /// Expects the connection to be closed with `code` within `limit`. For TCP the
    /// final error frame must carry it; returns the reason and the error frame's code.
    pub async fn expect_close(&mut self, code: u16, limit: Duration) -> (String, Vec<Value>) {
        let (got, reason, frames) = self.closed(limit).await;
        assert_eq!(
            got,
            Some(code),
            "{:?}: expected close code {code}, got {got:?} (reason {reason:?}), frames before: {frames:?}",
            self.transport
        );
        (reason, frames)
    }

    /// Asserts that no frame arrives within `dur` (and the connection stays open).
    pub async fn assert_quiet(&mut self, dur: Duration) {
        if let Some(ev) = self.recv(dur).await {
            panic!(
                "{:?}: expected nothing for {dur:?}, got {ev:?}",
                self.transport
            );
        }
    }

    /// Closes politely (WebSocket close / TCP shutdown).
    pub async fn close(mut self) {
        self.conn.close().await;
    }
}

/// A conn id as text, whether JSON gives it as a string or a number.
pub fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `data` values of `msgs`.
pub fn datas(msgs: &[Value]) -> Vec<Value> {
    msgs.iter().map(|m| m["data"].clone()).collect()
}

/// The ids of `msgs`.
pub fn ids(msgs: &[Value]) -> Vec<i64> {
    msgs.iter()
        .map(|m| {
            m["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("msg without integer id: {m}"))
        })
        .collect()
}

/// Asserts `v` is strictly increasing.
pub fn assert_increasing(what: &str, v: &[i64]) {
    for w in v.windows(2) {
        assert!(w[0] < w[1], "{what}: ids must strictly increase, got {v:?}");
    }
}

/// Runs the binary to completion with `args` (no PUSHGATE_* env inherited);
/// returns exit code, stdout and stderr. Kills it after `limit`.
pub async fn run_cli(
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (Option<i32>, String, String) {
    let mut cmd = command();
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn pushgate");
    match timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("pushgate {args:?}: {e}"),
        Err(_) => panic!("pushgate {args:?} did not exit within {limit:?}"),
    }
}

/// Spawns the binary with exactly `args` in `cwd`, waits for `ready` and returns
/// the child (killed on drop) with its startup lines and stderr.
pub async fn spawn_raw(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: Option<&Path>,
) -> (Child, Vec<String>, Arc<Mutex<String>>) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sp = spawn_until_ready(&args, &env, cwd).await;
    (sp.child, sp.startup, sp.stderr)
}

/// Sends SIGTERM to `pid`.
pub fn sigterm_pid(pid: u32) {
    let st = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success());
}

/// kill -9 keeps every acknowledged stored message; a device's ack survives
/// (duplicates allowed, losses not); ids after restart exceed every id before.
pub async fn kill9_scenario(extra: &[&str]) {
    let mut s = Server::start(extra).await;
    let (mut online, _) = s.login(Transport::WsJson, "k9on", "d").await;
    let mut sent = Vec::new();
    let mut max = 0;
    for i in 0..40 {
        let r = s.push_users(&["k9", "k9on"], json!({"i": i})).await;
        let id = r["id"].as_i64().unwrap();
        assert_eq!(r["stored"], 2, "{r}");
        sent.push(id);
        max = max.max(id);
    }
    // The online one got them live and acked half of them.
    let got = online.msgs(40).await;
    assert_eq!(ids(&got), sent);
    online.ack(sent[19]).await;
    assert!(online.ping_sync(1).await.is_empty());
    s.kill9().await;
    s.restart().await;
    let (mut c, _) = s.login(Transport::WsBin, "k9", "d").await;
    let got = c.msgs(40).await;
    assert_eq!(
        ids(&got),
        sent,
        "every acknowledged push must survive kill -9"
    );
    assert_eq!(got[39]["data"], json!({"i": 39}));
    // The device that acked: may get duplicates, must not miss anything unacked.
    let (mut on, _) = s.login(Transport::Tcp, "k9on", "d").await;
    let mut replayed = Vec::new();
    while replayed.last() != Some(&sent[39]) {
        let m = on.next_msg().await;
        replayed.push(m["id"].as_i64().unwrap());
        assert!(
            replayed.len() <= 40,
            "more than the queue replayed: {replayed:?}"
        );
    }
    assert_increasing("replay after kill -9", &replayed);
    assert!(
        replayed.ends_with(&sent[20..]),
        "unacked messages after kill -9: expected {:?} at the end of {replayed:?}",
        &sent[20..]
    );
    for i in 0..20 {
        let id = s.push_id(&["k9"], json!(i)).await;
        assert!(
            id > max,
            "id {id} after kill -9 must exceed every id handed out before ({max})"
        );
        max = id;
    }
}

// ---------------------------------------------------------------------------
// TLS and QUIC (tests/tls.rs, tests/quic.rs)
// ---------------------------------------------------------------------------

/// ALPN of pushgate over QUIC.
pub const QUIC_ALPN: &[u8] = b"pushgate/1";

impl Server {
    /// The QUIC listener's address, from the `quic listening on ` startup line.
    pub fn quic_addr(&self) -> SocketAddr {
        startup_addr(&self.startup, "quic listening on ")
    }

    /// The `tls fingerprint: ` startup line's value (`sha256:<hex>`).
    pub fn tls_fingerprint(&self) -> String {
        startup_value(&self.startup, "tls fingerprint: ")
            .unwrap_or_else(|| panic!("no `tls fingerprint:` line in {:?}", self.startup))
    }

    /// Sends SIGHUP to the current child.
    pub fn sighup(&self) {
        send_signal(self.pid, "HUP");
    }

    /// Waits until stderr contains `needle` `count` times at least.
    pub async fn wait_stderr(&self, needle: &str, count: usize, limit: Duration) {
        eventually(
            &format!("{count} × {needle:?} on the server's stderr"),
            limit,
            || {
                let n = self.stderr().matches(needle).count();
                async move { n >= count }
            },
        )
        .await;
    }
}

/// Sends `kill -<sig>` to `pid`.
pub fn send_signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(der);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The DER of the first certificate in a PEM text.
pub fn pem_cert_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate in the PEM")
        .expect("valid PEM")
        .to_vec()
}

/// A standalone server with `--tls-cert`/`--tls-key` from a fresh CA, and
/// `extra` flags; returns the CA, the directory of the files (kept alive)
/// and the server.
pub async fn tls_server(extra: &[&str]) -> (TestCa, tempfile::TempDir, Server) {
    let ca = TestCa::new("pushgate test ca");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.leaf().write(dir.path());
    let mut args = vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (ca, dir, Server::start(&refs).await)
}

/// A test certificate authority (rcgen), issuing leaf certificates.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A leaf certificate: chain PEM (leaf, then the CA) and key PEM.
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    /// DER of the leaf alone.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `localhost` and 127.0.0.1 signed by this CA.
    pub fn leaf(&self) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pushgate test leaf");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Leaf {
    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let c = dir.join("cert.pem");
        let k = dir.join("key.pem");
        std::fs::write(&c, &self.chain_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

/// A rustls client configuration (ring) trusting exactly the PEM certificates in `roots`.
pub fn tls_client_config(roots: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            store.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS client stream.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS handshake to `addr` as `localhost`, trusting `roots`.
pub async fn tls_connect(addr: SocketAddr, roots: &[&str]) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(roots, &[]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("tls handshake timed out"))?
}

/// The leaf certificate (DER) the server presented on a TLS stream.
pub fn peer_leaf(s: &TlsStream) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server presented a certificate")
        .to_vec()
}

/// wss:// JSON client (`pushgate.v1.json`) over an established TLS stream.
pub async fn wss_handshake(
    tls: TlsStream,
    addr: SocketAddr,
) -> Result<WebSocketStream<TlsStream>, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("wss://localhost:{}/ws", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("pushgate.v1.json"),
    );
    let (ws, _) = tokio_tungstenite::client_async(req, tls).await?;
    Ok(ws)
}

/// A client of length-prefixed binary frames over any byte stream (TLS over
/// TCP, a QUIC stream): what TCP clients speak, frame by frame.
pub struct FrameClient<S> {
    pub io: S,
    buf: BytesMut,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> FrameClient<S> {
    pub fn new(io: S) -> FrameClient<S> {
        FrameClient {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Sends one frame with its length prefix.
    pub async fn send(&mut self, f: &ClientFrame) {
        self.send_raw(&wire::tcp_frame(f)).await;
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next server frame in JSON shape, or `None` at EOF / on an error /
    /// after `limit`.
    pub async fn recv(&mut self, limit: Duration) -> Option<Value> {
        let body = timeout(limit, wire::read_frame(&mut self.io, &mut self.buf))
            .await
            .ok()??;
        let f = wire::decode_binary(&body)
            .unwrap_or_else(|e| panic!("server frame does not decode ({e}): {:?}", body.to_vec()));
        Some(server_frame_json(&f))
    }

    /// The next server frame; panics after [`FRAME_WAIT`].
    pub async fn next(&mut self) -> Value {
        self.recv(FRAME_WAIT)
            .await
            .expect("expected a server frame within 5 s")
    }

    /// Authenticates (seq 1) and returns `auth_ok`.
    pub async fn auth(&mut self, token: &str) -> Value {
        self.send(&ClientFrame::Auth {
            seq: Some(1),
            token: token.to_string(),
            last_id: None,
            device: Some("d".into()),
        })
        .await;
        let v = self.next().await;
        assert_eq!(v["op"], "auth_ok", "expected auth_ok, got {v}");
        v
    }

    /// Ping with `seq`; returns the frames seen before the pong.
    pub async fn ping_sync(&mut self, seq: u32) -> Vec<Value> {
        self.send(&ClientFrame::Ping { seq: Some(seq) }).await;
        let mut seen = Vec::new();
        loop {
            let v = self.next().await;
            if v["op"] == "pong" && v["seq"] == json!(seq) {
                return seen;
            }
            seen.push(v);
        }
    }
}

/// A QUIC client stream: the bidirectional stream's two halves as one byte stream.
pub struct QuicIo {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl tokio::io::AsyncRead for QuicIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for QuicIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.send), cx)
    }
}

/// A quinn client endpoint on a fresh loopback UDP port, trusting `roots`
/// and offering `alpn`.
pub fn quic_endpoint(roots: &[&str], alpn: &[&[u8]]) -> quinn::Endpoint {
    let tls = tls_client_config(roots, alpn);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

/// Connects (server name `localhost`); the error when the handshake fails.
pub async fn quic_connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let connecting = ep.connect(addr, "localhost").unwrap();
    timeout(Duration::from_secs(10), connecting)
        .await
        .expect("quic handshake within 10 s")
}

/// Connects, opens the one bidirectional stream and frames it.
pub async fn quic_client(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
) -> (quinn::Connection, FrameClient<QuicIo>) {
    let conn = quic_connect(ep, addr)
        .await
        .unwrap_or_else(|e| panic!("quic connect {addr}: {e}"));
    let (send, recv) = conn.open_bi().await.unwrap();
    (conn, FrameClient::new(QuicIo { send, recv }))
}

/// The self-signed certificate a standalone server keeps in its data dir, PEM.
pub fn data_dir_cert(s: &Server) -> String {
    std::fs::read_to_string(s.data_dir().join("tls_cert.pem")).expect("DATA/tls_cert.pem")
}

/// `promtool check metrics` (Debian: `apt-get install prometheus`) reads
/// `body` as Prometheus text and finds nothing to complain about: every
/// family typed, every counter named `_total`, help on every family.
pub fn promtool_accepts(body: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is required ({e}): apt-get install prometheus (scripts/test does)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}\n--- /metrics:\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
