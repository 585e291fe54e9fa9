//! Ids over internal links (cluster mode).
//!
//! An idgen process serves its [`IdGen`] (a [`crate::FileIdGen`] of its own
//! region) as [`IdgenService`]. A center does not call it per push: it leases
//! a block of ids ([`LeasedIds`], default [`DEFAULT_BLOCK`]) and hands them
//! out locally, so the hot path is a short lock and no network call.
//!
//! Blocks come from one idgen while it answers (sticky, so the ids one center
//! hands out keep increasing), and from the next one when it fails, so
//! losing one idgen costs nothing but the ids of its leased blocks: ids of
//! different regions never collide, and each idgen's checkpoint keeps its own
//! ids from repeating across restarts.
//!
//! A block is used only while it is younger than `max_age` (default
//! [`DEFAULT_MAX_AGE`]): an idgen's counter is floored at unix microseconds,
//! and cluster replay relies on ids staying close to wall-clock time. Note
//! that the idgen moves its counter up to the clock once a second
//! ([`crate::FileIdGen`]), so a fresh block may itself lag the clock by up to
//! that second; together an id lags the clock by at most about
//! `max_age + 1 s` (plus the ids taken ahead of it).
//!
//! This module owns the wire protocol and both ends; it does not bind
//! sockets (the caller passes listeners to [`link::serve`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use proto::MsgId;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::{nth_id, IdGen, IdGenError};

/// Service name in the link hello.
pub const SERVICE: &str = "idgen";

/// Ids leased per block by default.
pub const DEFAULT_BLOCK: u32 = 4096;

/// How long a leased block is used by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(250);

/// The most ids one lease may ask for. A larger request would push the
/// idgen's counter far ahead of the clock (each id is one counter step).
pub const MAX_LEASE: u32 = 1 << 20;

/// What a center asks an idgen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdgenReq {
    /// Hand out `n` ids (`0` is taken as 1, at most [`MAX_LEASE`]).
    Lease {
        /// How many ids.
        n: u32,
    },
}

/// An idgen's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdgenResp {
    /// `n` ids: the k-th (from 0) is [`nth_id`]`(first, k)`.
    Ok {
        /// The first id of the block.
        first: MsgId,
        /// How many ids the block holds.
        n: u32,
    },
    /// No ids were handed out (checkpoint failure, region exhausted, request
    /// too large).
    Err(String),
}

/// Serves an [`IdGen`] to centers over links (ordered: one lease at a time
/// per connection).
pub struct IdgenService {
    ids: Arc<dyn IdGen>,
}

impl IdgenService {
    /// Wraps `ids`.
    pub fn new(ids: Arc<dyn IdGen>) -> Arc<Self> {
        Arc::new(IdgenService { ids })
    }
}

#[async_trait]
impl link::Service for IdgenService {
    type Req = IdgenReq;
    type Resp = IdgenResp;
    const NAME: &'static str = SERVICE;
    const ORDERED: bool = true;

    async fn call(&self, req: IdgenReq) -> IdgenResp {
        let IdgenReq::Lease { n } = req;
        let n = n.max(1);
        if n > MAX_LEASE {
            return IdgenResp::Err(format!("lease of {n} ids is above {MAX_LEASE}"));
        }
        match self.ids.next_ids(n).await {
            Ok(first) => IdgenResp::Ok { first, n },
            Err(e) => {
                tracing::warn!(n, error = %e, "idgen lease failed");
                IdgenResp::Err(e.to_string())
            }
        }
    }
}

/// The unused rest of a leased block.
#[derive(Clone, Copy, Debug)]
struct Block {
    /// The next id to hand out.
    next: MsgId,
    /// Ids left from `next` on.
    left: u32,
    /// When the lease was asked for: the block's counter is at least the
    /// idgen's clock floor of that moment.
    leased_at: Instant,
}

/// Center side: leases blocks from several idgen processes (distinct
/// regions; one at a time, the next on failure) and hands ids out locally.
///
/// Every process listing the same idgens may use any order: ids are unique
/// by region, not by position in the list.
pub struct LeasedIds {
    clients: Vec<link::Client<IdgenReq, IdgenResp>>,
    /// Round robin position.
    turn: AtomicUsize,
    block: u32,
    max_age: Duration,
    /// The current block; the lock is never held across an `.await`.
    current: Mutex<Option<Block>>,
    /// One refill at a time, so a burst of callers at a block boundary makes
    /// one lease instead of one each (and wastes no blocks).
    refill: Semaphore,
    /// Failed refills so far: callers that queued behind a failed refill
    /// fail at once instead of each trying every idgen again.
    failures: AtomicU64,
    last_failure: Mutex<String>,
}

impl std::fmt::Debug for LeasedIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<&str> = self.clients.iter().map(link::Client::addr).collect();
        f.debug_struct("LeasedIds")
            .field("idgens", &addrs)
            .field("block", &self.block)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl LeasedIds {
    /// Clients of the idgens at `addrs` (they connect in the background).
    /// `block` (0 is taken as 1) ids are leased at a time ([`DEFAULT_BLOCK`]
    /// is a good default) and a block is used for at most `max_age`
    /// ([`DEFAULT_MAX_AGE`]). With no address every call fails.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(
        addrs: Vec<String>,
        cfg: link::ClientConfig,
        block: u32,
        max_age: Duration,
    ) -> Arc<LeasedIds> {
        let clients = addrs
            .into_iter()
            .map(|a| link::Client::new(a, SERVICE, cfg.clone()))
            .collect();
        Arc::new(LeasedIds {
            clients,
            // Centers start on different idgens (spreads the load).
            turn: AtomicUsize::new(std::process::id() as usize),
            block: block.clamp(1, MAX_LEASE),
            max_age,
            current: Mutex::new(None),
            refill: Semaphore::new(1),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(String::new()),
        })
    }

    /// Takes `n` ids from the current block, if it is young enough and has them.
    fn take(&self, n: u32) -> Option<MsgId> {
        let mut current = self.current.lock();
        let b = current.as_mut()?;
        if b.left < n || b.leased_at.elapsed() >= self.max_age {
            return None;
        }
        let first = b.next;
        b.next = nth_id(first, n);
        b.left -= n;
        Some(first)
    }

    /// Leases `n` ids from the next idgen that answers.
    async fn lease(&self, n: u32) -> Result<MsgId, IdGenError> {
        let count = self.clients.len();
        if count == 0 {
            return Err(IdGenError::Unavailable("no idgen addresses".to_owned()));
        }
        // Sticky: blocks come from one idgen while it answers, so the ids
        // one center hands out keep increasing (another idgen's counter may
        // be up to a second behind); the next one is used only on failure.
        let start = self.turn.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..count {
            let at = (start + i) % count;
            let client = &self.clients[at];
            match client.call(IdgenReq::Lease { n }).await {
                Ok(IdgenResp::Ok { first, n: got }) if got >= n => {
                    self.turn.store(at, Ordering::Relaxed);
                    return Ok(first);
                }
                Ok(IdgenResp::Ok { n: got, .. }) => {
                    tracing::warn!(
                        idgen = client.addr(),
                        asked = n,
                        got,
                        "idgen leased too few ids"
                    );
                    last = format!("idgen at {} leased {got} ids, not {n}", client.addr());
                }
                Ok(IdgenResp::Err(reason)) => {
                    tracing::warn!(idgen = client.addr(), %reason, "idgen refused a lease");
                    last = format!("idgen at {}: {reason}", client.addr());
                }
                Err(e) => {
                    // The link logs its own ups and downs.
                    tracing::debug!(idgen = client.addr(), error = %e, "idgen lease failed; trying the next");
                    last = e.to_string();
                }
            }
        }
        Err(IdGenError::Unavailable(format!(
            "no idgen answered (last: {last})"
        )))
    }
}

#[async_trait]
impl IdGen for LeasedIds {
    async fn next_ids(&self, n: u32) -> Result<MsgId, IdGenError> {
        let n = n.max(1);
        if n > MAX_LEASE {
            return Err(IdGenError::Unavailable(format!(
                "{n} ids in one call is above the lease limit {MAX_LEASE}"
            )));
        }
        if let Some(first) = self.take(n) {
            return Ok(first);
        }
        if n >= self.block {
            // A whole block or more: lease exactly these, keep the current block.
            return self.lease(n).await;
        }
        let failures = self.failures.load(Ordering::Acquire);
        // The semaphore is never closed, so acquire cannot fail; map it anyway.
        let _permit = self
            .refill
            .acquire()
            .await
            .map_err(|e| IdGenError::Unavailable(e.to_string()))?;
        // Someone else may have refilled while this caller waited.
        if let Some(first) = self.take(n) {
            return Ok(first);
        }
        if self.failures.load(Ordering::Acquire) != failures {
            let last = self.last_failure.lock().clone();
            return Err(IdGenError::Unavailable(last));
        }
        let leased_at = Instant::now();
        match self.lease(self.block).await {
            Ok(first) => {
                *self.current.lock() = Some(Block {
                    next: nth_id(first, n),
                    left: self.block - n,
                    leased_at,
                });
                Ok(first)
            }
            Err(e) => {
                *self.last_failure.lock() = e.to_string();
                self.failures.fetch_add(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }
}
