//! `pushgate dev-cluster`: a whole cluster on one machine, for trying
//! cluster mode and for benchmarks. It starts redis-server (or one saver on
//! the embedded store), the registers, idgens and saver, the centers and N
//! rooms as child processes of this binary, prints the endpoints, forwards
//! every child's output with a `[name]` prefix, and stops them all (rooms
//! first, with SIGTERM) on Ctrl-C or SIGTERM.
//!
//! Ports, from `--base-port B`: centers `B+0…`, registers `B+10…`, idgens
//! `B+20…`, saver `B+30`, redis `B+40`; room `i` (from 0) takes
//! `B+100+4i` (WebSocket), `+1` (TCP), `+2` (internal), `+3` (health).
//!
//! With `--manifest FILE` it also writes, once ready, a JSON file naming
//! every process with its PID and endpoints and the generated secrets (mode
//! 0600): what `bench c1m --attach FILE` and other tools read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::args::{DevClusterArgs, DevStore};
use crate::cli::LogFormat;
use crate::secrets;

/// Longest a child may take to print `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a child may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// One child process.
struct Proc {
    name: String,
    child: Child,
}

/// What `--manifest` writes: every process and endpoint of the cluster.
#[derive(Debug, Default, serde::Serialize)]
struct Manifest {
    /// PID of `pushgate dev-cluster` itself.
    pid: u32,
    /// REST API base URLs of the centers (`http://addr/api/v1`).
    centers: Vec<String>,
    /// The rooms, in `--id` order.
    rooms: Vec<ManifestRoom>,
    /// Every child process: name and PID.
    processes: Vec<ManifestProcess>,
    /// The REST API key.
    api_key: String,
    /// The client token secret.
    token_secret: String,
}

/// One room in the manifest.
#[derive(Debug, Default, serde::Serialize)]
struct ManifestRoom {
    id: u32,
    pid: Option<u32>,
    ws: String,
    tcp: String,
    /// UDP address of the QUIC listener (with `--quic`).
    quic: Option<String>,
    /// SHA-256 fingerprint of the certificate the room serves, when it
    /// serves one (`sha256:<hex>`).
    tls_fingerprint: Option<String>,
    internal: String,
    health: String,
}

/// One process in the manifest.
#[derive(Debug, serde::Serialize)]
struct ManifestProcess {
    name: String,
    pid: Option<u32>,
}

/// Runs the dev cluster until Ctrl-C or SIGTERM.
///
/// # Errors
/// When a process cannot be started or does not become ready.
pub(crate) async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("create data dir {}", args.data.display()))?;
    let data = std::fs::canonicalize(&args.data)?;
    let (api_key, _) = secrets::load_or_generate(&data, "api_key", None)?;
    let (token_secret, _) = secrets::load_or_generate(&data, "token_secret", None)?;
    let (cluster_key, _) = secrets::load_or_generate(&data, "cluster_key", None)?;
    let exe = std::env::current_exe().context("find this binary")?;
    let host = args.host;
    let port = |offset: u32| -> anyhow::Result<SocketAddr> {
        let p = u32::from(args.base_port) + offset;
        let p = u16::try_from(p).context("--base-port too high for this many rooms")?;
        Ok(SocketAddr::new(host, p))
    };
    let log = match args.log_format {
        LogFormat::Human => "human",
        LogFormat::Json => "json",
    };
    let mut procs: Vec<Proc> = Vec::new();
    let mut manifest = Manifest {
        pid: std::process::id(),
        api_key: api_key.clone(),
        token_secret: token_secret.clone(),
        ..Manifest::default()
    };
    let result = start_all(
        &args,
        &exe,
        &data,
        host,
        &port,
        log,
        &cluster_key,
        &api_key,
        &token_secret,
        &mut procs,
        &mut manifest,
    )
    .await
    .and_then(|summary| {
        if let Some(path) = &args.manifest {
            write_manifest(path, &mut manifest, &procs)?;
        }
        Ok(summary)
    });
    match result {
        Ok(summary) => {
            println!("{summary}");
            println!("ready");
            info!(processes = procs.len(), "dev cluster up; Ctrl-C stops it");
            shutdown.wait().await;
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "dev cluster failed to start; stopping what was started");
            stop_all(procs).await;
            return Err(e);
        }
    }
    info!("stopping the dev cluster");
    stop_all(procs).await;
    info!("stopped");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn start_all(
    args: &DevClusterArgs,
    exe: &Path,
    data: &Path,
    host: IpAddr,
    port: &dyn Fn(u32) -> anyhow::Result<SocketAddr>,
    log: &str,
    cluster_key: &str,
    api_key: &str,
    token_secret: &str,
    procs: &mut Vec<Proc>,
    manifest: &mut Manifest,
) -> anyhow::Result<String> {
    let common = |mut v: Vec<String>| {
        v.extend([
            "--cluster-key".into(),
            cluster_key.into(),
            "--log-format".into(),
            log.into(),
        ]);
        v
    };
    // The store.
    let saver_addr = port(30)?;
    match args.store {
        DevStore::Redis => {
            let redis_addr = port(40)?;
            let dir = data.join("redis");
            std::fs::create_dir_all(&dir)?;
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--port",
                &redis_addr.port().to_string(),
                "--bind",
                &host.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .current_dir(&dir);
            let child = spawn(cmd, "redis").map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}\n(install Redis: apt-get install redis-server, or use --store embedded)"
                )
            })?;
            procs.push(child);
            wait_port(redis_addr, START_TIMEOUT)
                .await
                .context("redis-server did not start")?;
            let url = format!("redis://{redis_addr}/");
            let saver = start(
                exe,
                "saver",
                common(vec![
                    "saver".into(),
                    "--listen".into(),
                    saver_addr.to_string(),
                    "--redis".into(),
                    url,
                ]),
            )?;
            procs.push(saver);
        }
        DevStore::Embedded => {
            let saver = start(
                exe,
                "saver",
                common(vec![
                    "saver".into(),
                    "--listen".into(),
                    saver_addr.to_string(),
                    "--data".into(),
                    data.join("saver").display().to_string(),
                ]),
            )?;
            procs.push(saver);
        }
    }
    let mut registers = Vec::new();
    for k in 0..args.registers {
        let addr = port(10 + k)?;
        registers.push(addr.to_string());
        procs.push(start(
            exe,
            &format!("register-{}", k + 1),
            common(vec!["register".into(), "--listen".into(), addr.to_string()]),
        )?);
    }
    let mut idgens = Vec::new();
    for k in 0..args.idgens {
        let addr = port(20 + k)?;
        idgens.push(addr.to_string());
        procs.push(start(
            exe,
            &format!("idgen-{}", k + 1),
            common(vec![
                "idgen".into(),
                "--listen".into(),
                addr.to_string(),
                "--region".into(),
                (k + 1).to_string(),
                "--data".into(),
                data.join(format!("idgen-{}", k + 1)).display().to_string(),
            ]),
        )?);
    }
    wait_ready(procs).await?;
    let registers = registers.join(",");
    let mut summary = String::from("pushgate dev cluster\n");
    for c in 0..args.centers {
        let http = port(c)?;
        procs.push(start(
            exe,
            &format!("center-{}", c + 1),
            common(vec![
                "center".into(),
                "--http".into(),
                http.to_string(),
                "--api-key".into(),
                api_key.into(),
                "--registers".into(),
                registers.clone(),
                "--idgens".into(),
                idgens.join(","),
                "--saver".into(),
                saver_addr.to_string(),
            ]),
        )?);
        manifest.centers.push(format!("http://{http}/api/v1"));
        summary.push_str(&format!(
            "  REST API   http://{http}/api/v1   (center {})\n",
            c + 1
        ));
    }
    let extra: Vec<String> = args
        .room_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for i in 0..args.rooms {
        let (ws, tcp, internal, health) = (
            port(100 + 4 * i)?,
            port(101 + 4 * i)?,
            port(102 + 4 * i)?,
            port(103 + 4 * i)?,
        );
        let mut v = vec![
            "room".into(),
            "--id".into(),
            (i + 1).to_string(),
            "--ws".into(),
            ws.to_string(),
            "--tcp".into(),
            tcp.to_string(),
            "--internal".into(),
            internal.to_string(),
            "--http".into(),
            health.to_string(),
            "--registers".into(),
            registers.clone(),
            "--saver".into(),
            saver_addr.to_string(),
            "--token-secret".into(),
            token_secret.into(),
            "--heartbeat".into(),
            args.heartbeat.to_string(),
        ];
        // UDP: the same port number as the WebSocket listener's TCP port.
        let quic = args.quic.then_some(ws);
        if let Some(q) = quic {
            v.extend(["--quic".into(), q.to_string()]);
        }
        v.extend(extra.iter().cloned());
        let room = start(exe, &format!("room-{}", i + 1), common(v))?;
        manifest.rooms.push(ManifestRoom {
            id: i + 1,
            pid: room.child.id(),
            ws: format!("ws://{ws}/ws"),
            tcp: tcp.to_string(),
            quic: quic.map(|q| q.to_string()),
            tls_fingerprint: None,
            internal: internal.to_string(),
            health: format!("http://{health}"),
        });
        procs.push(room);
    }
    let fingerprints = wait_ready(procs).await?;
    for r in &mut manifest.rooms {
        r.tls_fingerprint = fingerprints.get(&format!("room-{}", r.id)).cloned();
        let mut line = format!("  room {:<4}  {}   tcp {}", r.id, r.ws, r.tcp);
        if let Some(q) = &r.quic {
            line.push_str(&format!("   quic {q}"));
        }
        line.push_str(&format!("   health {}/metrics", r.health));
        if let Some(fp) = &r.tls_fingerprint {
            line.push_str(&format!("   tls {fp}"));
        }
        summary.push_str(&line);
        summary.push('\n');
    }
    // Centers read the membership every second: say ready once they list every room.
    for c in 0..args.centers {
        wait_rooms(port(c)?, api_key, args.rooms as usize).await?;
    }
    summary.push_str(&format!(
        "  registers  {registers}\n  idgens     {}\n  saver      {saver_addr} ({:?})\n",
        idgens.join(","),
        args.store
    ));
    summary.push_str(&format!(
        "api key: {api_key}\ntoken secret: {token_secret}\ncluster key: {cluster_key}\n"
    ));
    summary.push_str(&format!(
        "try: pushgate token --user alice --token-secret {token_secret}\n     curl -H 'Authorization: Bearer {api_key}' http://{}/api/v1/stats",
        port(0)?
    ));
    Ok(summary)
}

/// Writes the manifest to `path` (0600: it holds the secrets).
fn write_manifest(path: &Path, manifest: &mut Manifest, procs: &[Proc]) -> anyhow::Result<()> {
    manifest.processes = procs
        .iter()
        .map(|p| ManifestProcess {
            name: p.name.clone(),
            pid: p.child.id(),
        })
        .collect();
    let text = serde_json::to_vec_pretty(manifest)?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.write_all(&text)?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Starts `pushgate <args>` as child `name`.
fn start(exe: &Path, name: &str, args: Vec<String>) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(exe);
    cmd.args(&args).env(
        crate::signal::PARENT_PID_ENV,
        std::process::id().to_string(),
    );
    spawn(cmd, name)
}

/// Spawns with piped output; lines are forwarded with a `[name]` prefix.
fn spawn(mut cmd: Command, name: &str) -> anyhow::Result<Proc> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("start {name}"))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
    })
}

/// What a process prints before `ready` about the certificate it serves.
const FINGERPRINT_LINE: &str = "tls fingerprint: ";

/// Forwards the output of every child not yet forwarded and waits until
/// each of them printed `ready` (redis-server is waited for by its port).
/// Returns the certificate fingerprints the children printed, by name.
async fn wait_ready(procs: &mut [Proc]) -> anyhow::Result<HashMap<String, String>> {
    let mut waits = Vec::new();
    for p in procs.iter_mut() {
        let name = p.name.clone();
        let (tx, rx) = oneshot::channel::<Option<String>>();
        let mut tx = Some(tx);
        if let Some(out) = p.child.stdout.take() {
            let label = name.clone();
            let is_redis = label == "redis";
            if is_redis {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(None);
                }
            }
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                let mut fingerprint = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(fp) = line.strip_prefix(FINGERPRINT_LINE) {
                        fingerprint = Some(fp.to_owned());
                    }
                    if line == "ready" {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(fingerprint.take());
                        }
                    }
                    if !is_redis {
                        println!("[{label}] {line}");
                    }
                }
            });
            waits.push((name.clone(), rx));
        }
        if let Some(err) = p.child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{name}] {line}");
                }
            });
        }
    }
    let mut fingerprints = HashMap::new();
    for (name, rx) in waits {
        match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(fp)) => {
                if let Some(fp) = fp {
                    fingerprints.insert(name, fp);
                }
            }
            Ok(Err(_)) => anyhow::bail!("{name} exited before it was ready (its output is above)"),
            Err(_) => anyhow::bail!("{name} was not ready within {START_TIMEOUT:?}"),
        }
    }
    Ok(fingerprints)
}

/// Waits until the center at `http` lists `n` rooms in `GET /api/v1/stats`.
async fn wait_rooms(http: SocketAddr, api_key: &str, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(body) = http_get(http, "/api/v1/stats", api_key).await {
            let listed = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["rooms"].as_array().map(Vec::len));
            if listed == Some(n) {
                return Ok(());
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the center at {http} does not list {n} rooms after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal HTTP/1.1 GET (no client library in the binary for one call).
async fn http_get(addr: SocketAddr, path: &str, api_key: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {api_key}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok(body.to_owned())
}

/// Waits until something accepts TCP connections on `addr`.
async fn wait_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM to the rooms, then the centers, then everything else (newest
/// first); each group is waited for, and killed after [`STOP_TIMEOUT`].
async fn stop_all(mut procs: Vec<Proc>) {
    let rank = |p: &Proc| {
        if p.name.starts_with("room-") {
            0
        } else if p.name.starts_with("center-") {
            1
        } else if p.name == "redis" {
            3
        } else {
            2
        }
    };
    procs.reverse();
    for group in 0..4 {
        let (now, rest): (Vec<Proc>, Vec<Proc>) = procs.into_iter().partition(|p| rank(p) == group);
        procs = rest;
        for p in &now {
            if let Some(pid) = p.child.id() {
                terminate(pid);
            }
        }
        for mut p in now {
            match tokio::time::timeout(STOP_TIMEOUT, p.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => warn!(process = %p.name, %status, "exited with an error"),
                Ok(Err(e)) => warn!(process = %p.name, error = %e, "wait failed"),
                Err(_) => {
                    warn!(process = %p.name, "did not stop in time; killing it");
                    let _ = p.child.kill().await;
                }
            }
        }
    }
}

/// Sends SIGTERM to `pid` (a child of this process).
fn terminate(pid: u32) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
}
