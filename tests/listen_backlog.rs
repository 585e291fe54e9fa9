//! `--listen-backlog`: the WebSocket, TCP and HTTP listeners are bound with
//! the accept backlog asked for (4096 by default), which the kernel caps at
//! `net.core.somaxconn`. Read back with `ss` (iproute2): for a listening
//! socket its Send-Q column is the backlog.
#![allow(clippy::unwrap_used)] // tests may unwrap (STYLE: not on request paths)

mod common;

use std::net::SocketAddr;

use common::Server;

/// The backlog of the listening socket on `addr`, as `ss` reports it.
fn backlog(addr: SocketAddr) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .expect("`ss` (iproute2) is required: apt-get install iproute2");
    assert!(out.status.success(), "ss failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!(":{}", addr.port())))
        .unwrap_or_else(|| panic!("no listening socket on {addr} in `ss` output: {text}"));
    // State Recv-Q Send-Q Local Peer
    let cols: Vec<&str> = line.split_whitespace().collect();
    cols[2]
        .parse()
        .unwrap_or_else(|e| panic!("Send-Q of {line:?}: {e}"))
}

fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn listeners_use_the_backlog_asked_for() {
    let s = Server::start(&["--listen-backlog", "77"]).await;
    for (what, addr) in [("ws", s.ws), ("tcp", s.tcp), ("http", s.http)] {
        assert_eq!(backlog(addr), 77, "{what} listener {addr}");
    }
}

#[tokio::test]
async fn backlog_from_the_environment() {
    let s = Server::start_env(&[], &[("PUSHGATE_LISTEN_BACKLOG", "55")]).await;
    assert_eq!(backlog(s.ws), 55);
}

#[tokio::test]
async fn default_backlog_is_4096_capped_by_somaxconn() {
    let s = Server::start(&[]).await;
    let want = 4096.min(somaxconn());
    for (what, addr) in [("ws", s.ws), ("tcp", s.tcp), ("http", s.http)] {
        assert_eq!(backlog(addr), want, "{what} listener {addr}");
    }
}
