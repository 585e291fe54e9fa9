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
        &book,
    )
    .await
    .and_then(|summary| {
        book.publish()?;
        Ok(summary)
    });
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
    book: &Arc<Book>,
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
            let spec = Spec {
                name: "redis".into(),
                program: "redis-server".into(),
                args: vec![
                    "--port".into(),
                    redis_addr.port().to_string(),
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
                ready: Ready::Port(redis_addr),
            }
            .endpoint("listen", redis_addr);
            let redis = start(book, spec).map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}\n(install Redis: apt-get install redis-server, or use --store embedded)"
                )
            })?;
            procs.push(redis);
            wait_ready(book, procs)
                .await
                .context("redis-server did not start")?;
            let url = format!("redis://{redis_addr}/");
            let args = common(vec![
                "saver".into(),
                "--listen".into(),
                saver_addr.to_string(),
                "--redis".into(),
                url,
            ]);
            let spec = Spec::pushgate(exe, "saver", args).endpoint("listen", saver_addr);
            procs.push(start(book, spec)?);
        }
        DevStore::Embedded => {
            let dir = data.join("saver");
            let args = common(vec![
                "saver".into(),
                "--listen".into(),
                saver_addr.to_string(),
                "--data".into(),
                dir.display().to_string(),
            ]);
            let mut spec = Spec::pushgate(exe, "saver", args).endpoint("listen", saver_addr);
            spec.data_dir = Some(dir);
            procs.push(start(book, spec)?);
        }
    }
    let mut registers = Vec::new();
    for k in 0..args.registers {
        let addr = port(10 + k)?;
        registers.push(addr.to_string());
        let args = common(vec!["register".into(), "--listen".into(), addr.to_string()]);
        let spec =
            Spec::pushgate(exe, &format!("register-{}", k + 1), args).endpoint("listen", addr);
        procs.push(start(book, spec)?);
    }
    let mut idgens = Vec::new();
    for k in 0..args.idgens {
        let addr = port(20 + k)?;
        idgens.push(addr.to_string());
        let region = u16::try_from(k + 1).context("too many idgens")?;
        let dir = data.join(format!("idgen-{}", k + 1));
        let args = common(vec![
            "idgen".into(),
            "--listen".into(),
            addr.to_string(),
            "--region".into(),
            region.to_string(),
            "--data".into(),
            dir.display().to_string(),
        ]);
        let mut spec =
            Spec::pushgate(exe, &format!("idgen-{}", k + 1), args).endpoint("listen", addr);
        spec.data_dir = Some(dir);
        spec.region = Some(region);
        procs.push(start(book, spec)?);
    }
    wait_ready(book, procs).await?;
    let registers = registers.join(",");
    let mut summary = String::from("pushgate dev cluster\n");
    for c in 0..args.centers {
        let http = port(c)?;
        let args = common(vec![
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
        ]);
        let spec = Spec::pushgate(exe, &format!("center-{}", c + 1), args).endpoint("http", http);
        procs.push(start(book, spec)?);
        book.edit(|m| m.centers.push(format!("http://{http}/api/v1")));
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
        let mut spec = Spec::pushgate(exe, &format!("room-{}", i + 1), common(v))
            .endpoint("ws", ws)
            .endpoint("tcp", tcp)
            .endpoint("internal", internal)
            .endpoint("http", health);
        if let Some(q) = quic {
            spec = spec.endpoint("quic", q);
        }
        let room = start(book, spec)?;
        let entry = ManifestRoom {
            id: i + 1,
            pid: room.pid(),
            ws: format!("ws://{ws}/ws"),
            tcp: tcp.to_string(),
            quic: quic.map(|q| q.to_string()),
            tls_fingerprint: None,
            internal: internal.to_string(),
            health: format!("http://{health}"),
        };
        book.edit(|m| m.rooms.push(entry));
        procs.push(room);
    }
    wait_ready(book, procs).await?;
    let lines: Vec<String> = book.read(|m| {
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
                line
            })
            .collect()
    });
    for line in lines {
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
    summary.push_str(if args.no_restart {
        "  restarts   off (--no-restart): a child that dies stays down\n"
    } else {
        "  restarts   on: a child that dies is started again (same arguments, ports, data)\n"
    });
    summary.push_str(&format!(
        "api key: {api_key}\ntoken secret: {token_secret}\ncluster key: {cluster_key}\n"
    ));
    summary.push_str(&format!(
        "try: pushgate token --user alice --token-secret {token_secret}\n     curl -H 'Authorization: Bearer {api_key}' http://{}/api/v1/stats",
        port(0)?
    ));
    Ok(summary)
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
