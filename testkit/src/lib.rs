//! Test harness for pushgate: a real `redis-server` on a free loopback port,
//! a real three-master Redis Cluster, free ports for servers under test, a
//! TCP proxy that cuts and heals links ([`Proxy`]) for fault tests, and a
//! WebSocket/TCP wire client speaking proto ([`wire`]).
//!
//! Dev-only: used by the saver tests and the root end-to-end tests. Nothing
//! here is mocked; a missing `redis-server` or `redis-cli` is a test failure,
//! not a skip.
//!
//! ```no_run
//! let redis = testkit::RedisServer::start();
//! let url = redis.url(); // "redis://127.0.0.1:N/"
//! // ... the server is killed (by PID) when `redis` is dropped.
//!
//! let cluster = testkit::RedisCluster::start();
//! let urls = cluster.urls(); // one "redis://127.0.0.1:N/" per master
//! // ... every node is killed (by PID) when `cluster` is dropped.
//! ```

mod proxy;
pub use proxy::Proxy;
pub mod wire;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`RedisServer::start`] waits for the server to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Number of fresh ports tried when a start loses a race for its port.
const START_ATTEMPTS: u32 = 5;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that the
/// kernel will not hand out to anyone else for about a minute.
///
/// The port is reserved the way Yelp's `ephemeral-port-reserve` does it: a
/// listener is bound on port 0, a connection is made to it and accepted, and
/// the accepted side is closed first, so it sits in `TIME_WAIT` on that port.
/// While it does, the kernel skips the port for every automatic choice (a
/// `bind` to port 0 and the source port of an outbound `connect`), which is
/// how a freshly picked port used to be lost to another test's outbound
/// connection before the server bound it. A server that binds with
/// `SO_REUSEADDR` (every pushgate listener does, as tokio and std do) binds it
/// at once. Another explicit `bind` of the same port can still race, so
/// callers that start a server should still retry on `EADDRINUSE`.
///
/// # Panics
/// When no loopback port can be bound at all.
#[must_use]
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind a port on 127.0.0.1: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the local address: {e}"));
    // Best effort: without the TIME_WAIT reservation the port is still free.
    if let Ok(client) = TcpStream::connect(addr) {
        if let Ok((accepted, _)) = listener.accept() {
            drop(accepted);
            // Wait for the peer's FIN so the accepted side reaches TIME_WAIT
            // (not FIN_WAIT_2) before the client closes too.
            let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = (&client).read(&mut [0u8; 1]);
        }
        drop(client);
    }
    addr.port()
}

/// A `redis-server` child process on 127.0.0.1 with persistence off, in its
/// own temporary directory. Killed (SIGKILL, by PID) and reaped on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    /// Persistence arguments (after the port and bind ones).
    persistence: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server --port N --save "" --appendonly no --daemonize no`
    /// on a free port in a temp dir and waits until it answers `PING`.
    ///
    /// # Panics
    /// With "redis-server not found: apt-get install redis-server" when the
    /// binary is missing, or when the server does not come up in time.
    #[must_use]
    pub fn start() -> RedisServer {
        Self::start_persisting(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server that keeps an append-only file in its temp dir,
    /// fsynced as `appendfsync` says (`always`, `everysec` or `no`), so that
    /// [`RedisServer::kill9_and_restart`] keeps what was written.
    ///
    /// # Panics
    /// Like [`RedisServer::start`].
    #[must_use]
    pub fn start_with_aof(appendfsync: &str) -> RedisServer {
        Self::start_persisting(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            appendfsync,
        ])
    }

    fn start_persisting(persistence: &[&str]) -> RedisServer {
        let persistence: Vec<String> = persistence.iter().map(|s| (*s).to_owned()).collect();
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => panic!("temp dir for redis-server: {e}"),
            };
            match Self::try_start(dir, free_port(), persistence.clone()) {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts: {last}");
    }

    /// Kills the server with SIGKILL and starts it again on the same port,
    /// in the same directory, with the same persistence (what survives is
    /// what its persistence kept).
    ///
    /// # Panics
    /// When it does not come back (the port was taken meanwhile, …).
    pub fn kill9_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}")),
        );
        match Self::try_start(dir, self.port, self.persistence.clone()) {
            Ok(again) => *self = again,
            Err(e) => panic!("redis-server did not restart: {e}"),
        }
    }

    /// One attempt on one port; `Err` when it did not answer (port taken, …).
    fn try_start(
        dir: tempfile::TempDir,
        port: u16,
        persistence: Vec<String>,
    ) -> Result<RedisServer, String> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(&persistence)
            .args(["--daemonize", "no"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: apt-get install redis-server")
            }
            Err(e) => panic!("cannot run redis-server ({e}): apt-get install redis-server"),
        };
        let mut server = RedisServer {
            child,
            port,
            persistence,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(port) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {port} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:N/`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port the server listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the server (to kill or stop it in a test).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // `Child::kill` sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends an inline `PING` and checks for `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}

/// Masters in a [`RedisCluster`].
const CLUSTER_MASTERS: usize = 3;

/// Slots in a Redis Cluster; all must be assigned before it is ready.
const CLUSTER_SLOTS: u32 = 16_384;

/// How long [`RedisCluster::start`] waits for `redis-cli --cluster create`
/// and then for every node to report `cluster_state:ok`.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "apt-get install redis-server (redis-cli comes with it / redis-tools)";

/// A Redis Cluster of three masters and no replicas: three `redis-server
/// --cluster-enabled yes` children on 127.0.0.1, each in its own temporary
/// directory, joined with `redis-cli --cluster create`. Every node is killed
/// (SIGKILL, by PID) and reaped on drop.
///
/// Each node gets two free ports: its client port and its cluster bus port
/// (`--cluster-port`, Redis ≥ 7.0), because the default bus port (client
/// port + 10000) is out of range for most ephemeral ports.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
}

/// One node of a [`RedisCluster`].
#[derive(Debug)]
struct ClusterNode {
    child: Child,
    port: u16,
    bus: u16,
    dir: tempfile::TempDir,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        // `Child::kill` sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisCluster {
    /// Starts three cluster-enabled `redis-server`s on free ports (persistence
    /// off, `--cluster-node-timeout 2000`), runs `redis-cli --cluster create …
    /// --cluster-replicas 0 --cluster-yes`, and waits (at most 30 s) until
    /// every node reports `cluster_state:ok` with all 16384 slots assigned.
    ///
    /// # Panics
    /// With "apt-get install redis-server (redis-cli comes with it /
    /// redis-tools)" when `redis-server` or `redis-cli` is missing, or when
    /// the cluster does not come up in time.
    #[must_use]
    pub fn start() -> RedisCluster {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start() {
                Ok(cluster) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("redis cluster did not start after {START_ATTEMPTS} attempts: {last}");
    }

    /// One attempt: start the nodes, create the cluster, wait until it is ok.
    /// On `Err` the nodes started so far are killed (dropped).
    fn try_start() -> Result<RedisCluster, String> {
        let mut nodes = Vec::with_capacity(CLUSTER_MASTERS);
        for _ in 0..CLUSTER_MASTERS {
            nodes.push(ClusterNode::start(&nodes)?);
        }
        let cluster = RedisCluster { nodes };
        cluster.create()?;
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// Runs `redis-cli --cluster create` (bounded in time; its output goes to
    /// a file so that a full pipe cannot block it).
    fn create(&self) -> Result<(), String> {
        let log_path = self.nodes[0].dir.path().join("cluster-create.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("create log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("create log: {e}"))?;
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let spawned = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn();
        let mut cli = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-cli not found: {INSTALL_HINT}")
            }
            Err(e) => panic!("cannot run redis-cli ({e}): {INSTALL_HINT}"),
        };
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let status = loop {
            match cli.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() > deadline => {
                    let _ = cli.kill();
                    let _ = cli.wait();
                    return Err(format!(
                        "redis-cli --cluster create did not finish: {}",
                        read_log(&log_path)
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(format!("waiting for redis-cli: {e}")),
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "redis-cli --cluster create failed ({status}): {}",
                read_log(&log_path)
            ))
        }
    }

    /// Waits until every node says `cluster_state:ok`, knows every node and
    /// sees all slots assigned.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            let mut pending = None;
            for node in &self.nodes {
                let info = command(node.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if !cluster_info_ready(&info, self.nodes.len()) {
                    pending = Some((node.port, info));
                    break;
                }
            }
            let Some((port, info)) = pending else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "node 127.0.0.1:{port} not ready after {CLUSTER_READY_TIMEOUT:?}: {info}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:N/` of every node.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// The client port of every node, in the order of [`RedisCluster::urls`].
    #[must_use]
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The process id of every node, in the order of [`RedisCluster::urls`]
    /// (to kill or stop one in a test).
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.child.id()).collect()
    }
}

impl ClusterNode {
    /// Starts one cluster-enabled node on free ports distinct from `others`'
    /// (retrying on a lost port race) and waits until it answers `PING`.
    fn start(others: &[ClusterNode]) -> Result<ClusterNode, String> {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(others) {
                Ok(node) => return Ok(node),
                Err(e) => last = e,
            }
        }
        Err(format!("cluster node did not start: {last}"))
    }

    fn try_start(others: &[ClusterNode]) -> Result<ClusterNode, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port();
        let bus = free_port();
        // A port another node already uses (for clients or its bus) is busy
        // for sure; any other clash shows up as this node exiting, which is retried.
        let taken = |p: u16| others.iter().any(|n| n.port == p || n.bus == p);
        if port == bus || taken(port) || taken(bus) {
            return Err(format!("port {port} or {bus} already taken"));
        }
        let spawned = Command::new("redis-server")
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-node-timeout",
                "2000",
                "--daemonize",
                "no",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: {INSTALL_HINT}")
            }
            Err(e) => panic!("cannot run redis-server ({e}): {INSTALL_HINT}"),
        };
        let mut node = ClusterNode {
            child,
            port,
            bus,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(port) {
                return Ok(node);
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                return Err(format!(
                    "cluster node on ports {port}/{bus} exited: {status}"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("cluster node on port {port} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// True when a `CLUSTER INFO` reply says the cluster is usable: state ok,
/// every slot assigned, and all `nodes` known.
fn cluster_info_ready(info: &str, nodes: usize) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("cluster_state") == Some("ok")
        && field("cluster_slots_assigned") == Some(CLUSTER_SLOTS.to_string().as_str())
        && field("cluster_known_nodes") == Some(nodes.to_string().as_str())
}

/// The text of a log file, for an error message.
fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}

/// Sends one command (as a RESP array) to 127.0.0.1:`port` and returns the
/// reply: the text of a simple string, bulk string or integer.
/// `Err` on I/O errors, timeouts, error replies and other reply types.
fn command(port: u16, args: &[&str]) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect {port}: {e}"))?;
    let timeout = Some(Duration::from_secs(2));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| format!("timeouts: {e}"))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    let line = line.trim_end_matches(['\r', '\n']);
    match line.split_at_checked(1) {
        Some(("+" | ":", rest)) => Ok(rest.to_string()),
        Some(("$", len)) => {
            let len: usize = len.parse().map_err(|_| format!("bad reply {line:?}"))?;
            let mut body = vec![0u8; len + 2];
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("read: {e}"))?;
            body.truncate(len);
            String::from_utf8(body).map_err(|e| format!("reply not utf-8: {e}"))
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redis_server_answers_and_dies_on_drop() {
        let server = RedisServer::start();
        let port = server.port();
        assert!(ping(port));
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}/"));
        drop(server);
        assert!(!ping(port), "redis-server still answers after drop");
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
    }

    #[test]
    fn redis_cluster_is_ok_on_every_node_and_dies_on_drop() {
        let cluster = RedisCluster::start();
        let ports = cluster.ports();
        assert_eq!(ports.len(), 3);
        assert_eq!(cluster.pids().len(), 3);
        assert_eq!(
            cluster.urls(),
            ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}/"))
                .collect::<Vec<_>>()
        );
        for &port in &ports {
            let info = command(port, &["CLUSTER", "INFO"]).unwrap();
            assert!(info.contains("cluster_state:ok"), "{port}: {info}");
            assert!(
                info.contains("cluster_slots_assigned:16384"),
                "{port}: {info}"
            );
            assert!(
                info.contains("cluster_size:3"),
                "{port}: three masters: {info}"
            );
            assert!(info.contains("cluster_known_nodes:3"), "{port}: {info}");
        }
        // Every master owns some slots: a key lands on whichever node owns it.
        let slot = command(ports[0], &["CLUSTER", "KEYSLOT", "pg:{u:ann}:q"]).unwrap();
        assert!(slot.parse::<u32>().unwrap() < CLUSTER_SLOTS);
        drop(cluster);
        for port in ports {
            assert!(!ping(port), "cluster node {port} still answers after drop");
        }
    }

    #[test]
    fn cluster_info_parsing() {
        let ok = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_known_nodes:3\r\n";
        assert!(cluster_info_ready(ok, 3));
        assert!(!cluster_info_ready(ok, 4));
        assert!(!cluster_info_ready(&ok.replace("ok", "fail"), 3));
        assert!(!cluster_info_ready(&ok.replace("16384", "5461"), 3));
        assert!(!cluster_info_ready("", 3));
    }
}
