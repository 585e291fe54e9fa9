//! `pushgate dev-cluster`: a whole cluster on one machine, for trying
//! cluster mode and for benchmarks. It starts redis-server (or one saver on
//! the embedded store), the registers, idgens and saver, the centers and N
//! rooms as child processes of this binary, prints the endpoints, forwards
//! every child's output with a `[name]` prefix, restarts a child that dies
//! (with the same arguments, ports and data directory; not with
//! `--no-restart`), and stops them all (rooms first, with SIGTERM) on Ctrl-C
//! or SIGTERM. [`supervise`] holds the children.
//!
//! Ports, from `--base-port B`: centers `B+0…`, registers `B+10…`, idgens
//! `B+20…`, saver `B+30`, redis `B+40`; room `i` (from 0) takes
//! `B+100+4i` (WebSocket), `+1` (TCP), `+2` (internal), `+3` (health).
//!
//! With `--manifest FILE` it also writes, once ready, a JSON file naming
//! every process with its PID, command line, data directory, endpoints and
//! restart count, and the generated secrets (mode 0600), and rewrites it on
//! every restart: what `bench c1m --attach FILE` and other tools read.

mod supervise;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use self::supervise::{start, wait_ready, Book, Manifest, ManifestRoom, Proc, Ready, Spec};
use crate::secrets;
use crate::settings::dev::{DevClusterArgs, DevStore};
use crate::settings::LogFormat;

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
    let book = Book::new(
        Manifest {
            pid: std::process::id(),
            data: data.display().to_string(),
            restart: !args.no_restart,
            api_key: api_key.clone(),
            token_secret: token_secret.clone(),
            ..Manifest::default()
        },
        args.manifest.clone(),
    );
    let mut launcher = Launcher {
        args: &args,
        exe: &exe,
        data: &data,
        cluster_key: &cluster_key,
        book: &book,
        procs: Vec::new(),
    };
    let secrets = Secrets {
        api_key: &api_key,
        token_secret: &token_secret,
        cluster_key: &cluster_key,
    };
    let result = launcher.start_all(&secrets).await.and_then(|summary| {
        book.publish()?;
        Ok(summary)
    });
    let procs = launcher.procs;
    let n = procs.len();
    match result {
        Ok(summary) => {
            let children = supervise::supervise(procs, &book, !args.no_restart);
            println!("{summary}");
            println!("ready");
            info!(
                processes = n,
                restart = !args.no_restart,
                "dev cluster up; Ctrl-C stops it"
            );
            shutdown.wait().await;
            info!("stopping the dev cluster");
            children.stop().await;
            info!("stopped");
            Ok(())
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "dev cluster failed to start; stopping what was started");
            supervise::supervise(procs, &book, false).stop().await;
            Err(e)
        }
    }
}

/// The generated secrets every child shares.
struct Secrets<'a> {
    api_key: &'a str,
    token_secret: &'a str,
    cluster_key: &'a str,
}

/// Starts the children in order and keeps them (and the manifest) as it goes.
struct Launcher<'a> {
    args: &'a DevClusterArgs,
    exe: &'a Path,
    data: &'a Path,
    cluster_key: &'a str,
    book: &'a Arc<Book>,
    procs: Vec<Proc>,
}

/// The addresses of the cluster's internal services, comma-separated lists.
struct Internal {
    registers: String,
    idgens: String,
    saver: SocketAddr,
}

impl Launcher<'_> {
    /// The address at `offset` from `--base-port` on `--host`.
    fn port(&self, offset: u32) -> anyhow::Result<SocketAddr> {
        let p = u32::from(self.args.base_port) + offset;
        let p = u16::try_from(p).context("--base-port too high for this many rooms")?;
        Ok(SocketAddr::new(self.args.host, p))
    }

    /// A pushgate child's arguments with the flags every child has.
    fn common(&self, mut v: Vec<String>) -> Vec<String> {
        let log = match self.args.log_format {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        };
        v.extend([
            "--cluster-key".into(),
            self.cluster_key.into(),
            "--log-format".into(),
            log.into(),
        ]);
        v
    }

    fn start(&mut self, spec: Spec) -> anyhow::Result<()> {
        self.procs.push(start(self.book, spec)?);
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        wait_ready(self.book, &mut self.procs).await
    }

    /// Every child, store first and rooms last; the summary printed at `ready`.
    async fn start_all(&mut self, secrets: &Secrets<'_>) -> anyhow::Result<String> {
        let saver = self.start_store().await?;
        let registers = self.start_registers()?;
        let idgens = self.start_idgens()?;
        self.wait_ready().await?;
        let internal = Internal {
            registers,
            idgens,
            saver,
        };
        let mut summary = String::from("pushgate dev cluster\n");
        summary.push_str(&self.start_centers(&internal, secrets.api_key)?);
        self.start_rooms(&internal, secrets.token_secret)?;
        self.wait_ready().await?;
        summary.push_str(&self.room_lines());
        // Centers read the membership every second: say ready once they list every room.
        for c in 0..self.args.centers {
            wait_rooms(self.port(c)?, secrets.api_key, self.args.rooms as usize).await?;
        }
        summary.push_str(&self.tail(&internal, secrets)?);
        Ok(summary)
    }

    /// redis-server and a saver on it, or a saver on the embedded store.
    async fn start_store(&mut self) -> anyhow::Result<SocketAddr> {
        let saver_addr = self.port(30)?;
        let saver_http = self.port(70)?;
        match self.args.store {
            DevStore::Redis => {
                let redis_addr = self.port(40)?;
                let dir = self.data.join("redis");
                std::fs::create_dir_all(&dir)?;
                let spec = redis_spec(self.args.host, redis_addr, dir);
                let redis = start(self.book, spec).map_err(|e| {
                    anyhow::anyhow!(
                        "{e:#}\n(install Redis: apt-get install redis-server, or use --store embedded)"
                    )
                })?;
                self.procs.push(redis);
                self.wait_ready()
                    .await
                    .context("redis-server did not start")?;
                let url = format!("redis://{redis_addr}/");
                let rest = vec!["--redis".into(), url];
                let spec = self.service("saver", "saver", saver_addr, saver_http, rest);
                self.start(spec)?;
            }
            DevStore::Embedded => {
                let dir = self.data.join("saver");
                let rest = vec!["--data".into(), dir.display().to_string()];
                let mut spec = self.service("saver", "saver", saver_addr, saver_http, rest);
                spec.data_dir = Some(dir);
                self.start(spec)?;
            }
        }
        Ok(saver_addr)
    }

    /// A link service child (`pushgate COMMAND`, a saver, register or
    /// idgen) named `name`, with its internal listener on `listen`, its
    /// health and metrics on `http`, and `rest` of its flags.
    fn service(
        &self,
        command: &str,
        name: &str,
        listen: SocketAddr,
        http: SocketAddr,
        rest: Vec<String>,
    ) -> Spec {
        let mut args = vec![
            command.to_owned(),
            "--listen".into(),
            listen.to_string(),
            "--http".into(),
            http.to_string(),
        ];
        args.extend(rest);
        Spec::pushgate(self.exe, name, self.common(args))
            .endpoint("listen", listen)
            .endpoint("http", http)
    }

    /// The registers; their addresses, comma-separated.
    fn start_registers(&mut self) -> anyhow::Result<String> {
        let mut registers = Vec::new();
        for k in 0..self.args.registers {
            let addr = self.port(10 + k)?;
            let http = self.port(50 + k)?;
            registers.push(addr.to_string());
            let name = format!("register-{}", k + 1);
            let spec = self.service("register", &name, addr, http, Vec::new());
            self.start(spec)?;
        }
        Ok(registers.join(","))
    }

    /// The idgens, regions 1, 2, …; their addresses, comma-separated.
    fn start_idgens(&mut self) -> anyhow::Result<String> {
        let mut idgens = Vec::new();
        for k in 0..self.args.idgens {
            let addr = self.port(20 + k)?;
            let http = self.port(60 + k)?;
            idgens.push(addr.to_string());
            let region = u16::try_from(k + 1).context("too many idgens")?;
            let dir = self.data.join(format!("idgen-{}", k + 1));
            let rest = vec![
                "--region".into(),
                region.to_string(),
                "--data".into(),
                dir.display().to_string(),
            ];
            let name = format!("idgen-{}", k + 1);
            let mut spec = self.service("idgen", &name, addr, http, rest);
            spec.data_dir = Some(dir);
            spec.region = Some(region);
            self.start(spec)?;
        }
        Ok(idgens.join(","))
    }

    /// The centers; their summary lines.
    fn start_centers(&mut self, internal: &Internal, api_key: &str) -> anyhow::Result<String> {
        let mut summary = String::new();
        for c in 0..self.args.centers {
            let http = self.port(c)?;
            let args = self.common(vec![
                "center".into(),
                "--http".into(),
                http.to_string(),
                "--api-key".into(),
                api_key.into(),
                "--registers".into(),
                internal.registers.clone(),
                "--idgens".into(),
                internal.idgens.clone(),
                "--saver".into(),
                internal.saver.to_string(),
            ]);
            let name = format!("center-{}", c + 1);
            self.start(Spec::pushgate(self.exe, &name, args).endpoint("http", http))?;
            self.book
                .edit(|m| m.centers.push(format!("http://{http}/api/v1")));
            summary.push_str(&format!(
                "  REST API   http://{http}/api/v1   (center {})\n",
                c + 1
            ));
        }
        Ok(summary)
    }

    /// The rooms, each listed in the manifest as it starts.
    fn start_rooms(&mut self, internal: &Internal, token_secret: &str) -> anyhow::Result<()> {
        let extra: Vec<String> = self
            .args
            .room_args
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        for i in 0..self.args.rooms {
            let (ws, tcp, internal_addr, health) = (
                self.port(100 + 4 * i)?,
                self.port(101 + 4 * i)?,
                self.port(102 + 4 * i)?,
                self.port(103 + 4 * i)?,
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
                internal_addr.to_string(),
                "--http".into(),
                health.to_string(),
                "--registers".into(),
                internal.registers.clone(),
                "--saver".into(),
                internal.saver.to_string(),
                // Clients' `send` and `pub` go through the room's own
                // dispatcher, which takes its ids from the idgens.
                "--idgens".into(),
                internal.idgens.clone(),
                "--token-secret".into(),
                token_secret.into(),
                "--heartbeat".into(),
                self.args.heartbeat.to_string(),
            ];
            // UDP: the same port number as the WebSocket listener's TCP port.
            let quic = self.args.quic.then_some(ws);
            if let Some(q) = quic {
                v.extend(["--quic".into(), q.to_string()]);
            }
            v.extend(extra.iter().cloned());
            let mut spec = Spec::pushgate(self.exe, &format!("room-{}", i + 1), self.common(v))
                .endpoint("ws", ws)
                .endpoint("tcp", tcp)
                .endpoint("internal", internal_addr)
                .endpoint("http", health);
            if let Some(q) = quic {
                spec = spec.endpoint("quic", q);
            }
            let room = start(self.book, spec)?;
            let entry = ManifestRoom {
                id: i + 1,
                pid: room.pid(),
                ws: format!("ws://{ws}/ws"),
                tcp: tcp.to_string(),
                quic: quic.map(|q| q.to_string()),
                tls_fingerprint: None,
                internal: internal_addr.to_string(),
                health: format!("http://{health}"),
            };
            self.book.edit(|m| m.rooms.push(entry));
            self.procs.push(room);
        }
        Ok(())
    }

    /// One summary line per room, from the manifest (with the QUIC
    /// fingerprints the rooms printed).
    fn room_lines(&self) -> String {
        self.book.read(|m| {
            m.rooms
                .iter()
                .map(|r| {
                    let mut line = format!("  room {:<4}  {}   tcp {}", r.id, r.ws, r.tcp);
                    if let Some(q) = &r.quic {
                        line.push_str(&format!("   quic {q}"));
                    }
                    line.push_str(&format!("   health {}/metrics", r.health));
                    if let Some(fp) = &r.tls_fingerprint {
                        line.push_str(&format!("   tls {fp}"));
                    }
                    line.push('\n');
                    line
                })
                .collect()
        })
    }

    /// The summary's last lines: internal services, restarts, secrets, a hint.
    fn tail(&self, internal: &Internal, secrets: &Secrets<'_>) -> anyhow::Result<String> {
        let args = self.args;
        let mut out = format!(
            "  registers  {}\n  idgens     {}\n  saver      {} ({:?})\n",
            internal.registers, internal.idgens, internal.saver, args.store
        );
        out.push_str(if args.no_restart {
            "  restarts   off (--no-restart): a child that dies stays down\n"
        } else {
            "  restarts   on: a child that dies is started again (same arguments, ports, data)\n"
        });
        let Secrets {
            api_key,
            token_secret,
            cluster_key,
        } = secrets;
        out.push_str(&format!(
            "api key: {api_key}\ntoken secret: {token_secret}\ncluster key: {cluster_key}\n"
        ));
        out.push_str(&format!(
            "try: pushgate token --user alice --token-secret {token_secret}\n     curl -H 'Authorization: Bearer {api_key}' http://{}/api/v1/stats",
            self.port(0)?
        ));
        Ok(out)
    }
}

/// redis-server on `addr`, its files in `dir` (AOF, fsync every second).
fn redis_spec(host: IpAddr, addr: SocketAddr, dir: std::path::PathBuf) -> Spec {
    Spec {
        name: "redis".into(),
        program: "redis-server".into(),
        args: vec![
            "--port".into(),
            addr.port().to_string(),
            "--bind".into(),
            host.to_string(),
            "--dir".into(),
            dir.display().to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "everysec".into(),
        ],
        env: Vec::new(),
        data_dir: Some(dir),
        region: None,
        endpoints: Default::default(),
        ready: Ready::Port(addr),
    }
    .endpoint("listen", addr)
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
