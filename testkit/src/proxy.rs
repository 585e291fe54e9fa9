//! A TCP proxy for fault tests: it forwards a link between two processes
//! until told to cut it, like a network partition.
//!
//! - [`Proxy::blackhole`]: nothing passes in either direction; bytes already
//!   sent wait (TCP rides the partition out, as it does when packets are
//!   lost and retransmitted), and new connections are accepted but not
//!   connected onward. Callers see timeouts, not errors.
//! - [`Proxy::heal`]: everything flows again, the waiting bytes first.
//! - [`Proxy::reset`]: every open connection is closed at once (both ends
//!   see the connection end); new ones are forwarded as before.
//!
//! ```no_run
//! # async fn f(target: std::net::SocketAddr) {
//! let proxy = testkit::Proxy::start(target).await;
//! let addr = proxy.addr(); // give this address to the client instead of `target`
//! proxy.blackhole();
//! proxy.heal();
//! # }
//! ```

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes copied per read.
const CHUNK: usize = 16 * 1024;

/// What the proxy does with traffic now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    /// Whether traffic passes.
    pass: bool,
    /// Bumped by [`Proxy::reset`]: connections opened before end.
    epoch: u64,
}

/// A TCP proxy on 127.0.0.1 in front of one target; stops when dropped
/// (its connections end with it).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: watch::Sender<State>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(target: SocketAddr) -> Proxy {
        Proxy::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target).await
    }

    /// Listens on `listen` and forwards to `target`.
    ///
    /// # Panics
    /// When `listen` cannot be bound.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("proxy: cannot bind {listen}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy: no local address: {e}"));
        let (state, _) = watch::channel(State {
            pass: true,
            epoch: 0,
        });
        let rx = state.subscribe();
        let accept = tokio::spawn(accept_loop(listener, target, rx));
        Proxy {
            addr,
            target,
            state,
            accept,
        }
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    #[must_use]
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Stops all traffic, both ways, on every connection (see the module docs).
    pub fn blackhole(&self) {
        self.state.send_modify(|s| s.pass = false);
    }

    /// Lets traffic pass again.
    pub fn heal(&self) {
        self.state.send_modify(|s| s.pass = true);
    }

    /// Closes every connection open now.
    pub fn reset(&self) {
        self.state.send_modify(|s| s.epoch += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Every connection task watches the state: a closed channel ends them.
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: watch::Receiver<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        tokio::spawn(connection(client, target, state.clone()));
    }
}

/// Waits until traffic may pass; false when the proxy is gone or the
/// connection's epoch ended.
async fn passable(state: &mut watch::Receiver<State>, epoch: u64) -> bool {
    loop {
        let s = *state.borrow_and_update();
        if s.epoch != epoch {
            return false;
        }
        if s.pass {
            return true;
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}

async fn connection(client: TcpStream, target: SocketAddr, mut state: watch::Receiver<State>) {
    let epoch = state.borrow().epoch;
    if !passable(&mut state, epoch).await {
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return; // the client sees its connection end, as with a refused connect
    };
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pump(cr, uw, state.clone(), epoch);
    let down = pump(ur, cw, state, epoch);
    // Either direction ending (EOF, error, reset) ends both.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    epoch: u64,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        if !passable(&mut state, epoch).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            // Re-check: a blackhole or reset while waiting for bytes.
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // Bytes read just before a cut wait with the rest.
        if !passable(&mut state, epoch).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, byte: u8, wait: Duration) -> Option<u8> {
        s.write_all(&[byte]).await.ok()?;
        let mut b = [0u8; 1];
        match tokio::time::timeout(wait, s.read(&mut b)).await {
            Ok(Ok(1)) => Some(b[0]),
            _ => None,
        }
    }

    #[tokio::test]
    async fn blackhole_holds_bytes_heal_delivers_them_reset_closes() {
        let p = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let short = Duration::from_millis(200);
        let long = Duration::from_secs(5);
        assert_eq!(roundtrip(&mut s, 1, long).await, Some(1));
        p.blackhole();
        assert_eq!(
            roundtrip(&mut s, 2, short).await,
            None,
            "passed a blackhole"
        );
        // A new connection is accepted but goes nowhere.
        let mut fresh = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut fresh, 3, short).await, None);
        p.heal();
        let mut b = [0u8; 1];
        tokio::time::timeout(long, s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b[0], 2, "the byte sent during the cut arrives after it");
        tokio::time::timeout(long, fresh.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b[0], 3);
        p.reset();
        let n = tokio::time::timeout(long, s.read(&mut b)).await.unwrap();
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "reset left the connection open: {n:?}"
        );
        // New connections pass again.
        let mut again = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut again, 4, long).await, Some(4));
    }
}
