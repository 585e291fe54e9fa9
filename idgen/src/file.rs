//! [`FileIdGen`]: the in-process id service over a [`RangeAllocator`] and a
//! [`FileCheckpoint`] in the data dir.
//!
//! The hot path takes ids from the reserved block under a short
//! `parking_lot` lock and does no I/O. Only when the block runs out does a
//! caller write a new mark (on the blocking pool) before it gets its ids. A
//! background task, once a second, moves the counter up to the clock and
//! reserves the next block ahead of time, so callers rarely wait for a write.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use proto::MsgId;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::alloc::{RangeAllocator, TakeError, MIN_BLOCK};
use crate::checkpoint::{Checkpoint, FileCheckpoint};
use crate::{make_id, IdGen, IdGenError, MAX_REGION};

/// How often the background task moves to the clock and reserves ahead.
const TICK: Duration = Duration::from_secs(1);

/// How many times one call retries when other callers drain each new block
/// before it gets its turn (each retry writes a larger block).
const MAX_RESERVE_ROUNDS: u32 = 64;

/// Ids for one region, checkpointed to `DIR/idgen-<region>.ckpt`.
pub struct FileIdGen {
    inner: Arc<Inner>,
    stop: Arc<Notify>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

/// State shared with the background task and the blocking pool.
struct Inner {
    region: u16,
    alloc: Mutex<RangeAllocator>,
    /// The last durably written mark. Held across the blocking write (on the
    /// blocking pool, never across an `.await`) so that marks reach the file
    /// in increasing order and concurrent writers of the same block write once.
    written: Mutex<i64>,
    checkpoint: Box<dyn Checkpoint>,
}

impl std::fmt::Debug for FileIdGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = self.inner.alloc.lock();
        f.debug_struct("FileIdGen")
            .field("region", &self.inner.region)
            .field("next", &a.next())
            .field("reserved", &a.reserved())
            .finish()
    }
}

impl FileIdGen {
    /// Opens (creating `dir` if needed) the id generator of `region`, reserves
    /// the first block durably and spawns the 1 s checkpoint task.
    ///
    /// Must be called inside a tokio runtime. Does blocking file I/O once.
    ///
    /// # Errors
    /// [`IdGenError::Region`] when `region > 255`; [`IdGenError::Checkpoint`]
    /// or [`IdGenError::Corrupt`] when the checkpoint cannot be read or written,
    /// or when no tokio runtime is running.
    pub fn open(dir: &Path, region: u16) -> Result<FileIdGen, IdGenError> {
        if region > MAX_REGION {
            return Err(IdGenError::Region(region));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            IdGenError::Checkpoint(std::io::Error::other(
                "FileIdGen::open needs a running tokio runtime",
            ))
        })?;
        std::fs::create_dir_all(dir)?;
        let checkpoint = FileCheckpoint::new(dir, region);
        let stored = checkpoint.load()?.unwrap_or(0);
        let mut alloc = RangeAllocator::new(stored, now_us());
        let first_mark = alloc.next().saturating_add(MIN_BLOCK);
        checkpoint.store(first_mark)?;
        alloc.reserved_to(first_mark);
        tracing::debug!(region, stored, first_mark, "idgen opened");

        let inner = Arc::new(Inner {
            region,
            alloc: Mutex::new(alloc),
            written: Mutex::new(first_mark),
            checkpoint: Box::new(checkpoint),
        });
        let stop = Arc::new(Notify::new());
        let ticker = runtime.spawn(tick_loop(inner.clone(), stop.clone()));
        Ok(FileIdGen {
            inner,
            stop,
            ticker: Mutex::new(Some(ticker)),
        })
    }

    /// The region this generator owns.
    #[must_use]
    pub fn region(&self) -> u16 {
        self.inner.region
    }

    /// Stops the background task and makes sure the mark above every id
    /// handed out is on disk. Later `next_ids` calls still work (each block
    /// is then reserved on demand).
    ///
    /// # Errors
    /// [`IdGenError::Checkpoint`] when the final write fails.
    pub async fn close(&self) -> Result<(), IdGenError> {
        self.stop.notify_one();
        let ticker = self.ticker.lock().take();
        if let Some(ticker) = ticker {
            let _ = ticker.await;
        }
        let mark = {
            let a = self.inner.alloc.lock();
            a.reserved().max(a.next())
        };
        reserve(&self.inner, mark).await
    }
}

impl Drop for FileIdGen {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.lock().take() {
            ticker.abort();
        }
    }
}

#[async_trait]
impl IdGen for FileIdGen {
    async fn next_ids(&self, n: u32) -> Result<MsgId, IdGenError> {
        for _ in 0..MAX_RESERVE_ROUNDS {
            let taken = self.inner.alloc.lock().try_take(n);
            match taken {
                Ok(counter) => return Ok(make_id(counter, self.inner.region)),
                Err(TakeError::Exhausted) => return Err(IdGenError::Exhausted),
                Err(TakeError::NeedCheckpoint(mark)) => reserve(&self.inner, mark).await?,
            }
        }
        Err(IdGenError::Checkpoint(std::io::Error::other(
            "checkpoint writes cannot keep up with id demand",
        )))
    }
}

/// Durably writes a mark of at least `mark` (on the blocking pool) and lets
/// the allocator use it.
async fn reserve(inner: &Arc<Inner>, mark: i64) -> Result<(), IdGenError> {
    let shared = inner.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<i64, IdGenError> {
        let mut written = shared.written.lock();
        if *written < mark {
            shared.checkpoint.store(mark)?;
            *written = mark;
        }
        Ok(*written)
    })
    .await
    .map_err(|e| IdGenError::Checkpoint(std::io::Error::other(e)))??;
    inner.alloc.lock().reserved_to(written);
    Ok(())
}

/// Once a second: move to the clock, reserve the next block ahead.
async fn tick_loop(inner: Arc<Inner>, stop: Arc<Notify>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.notified() => break,
            _ = interval.tick() => {}
        }
        let want = inner.alloc.lock().tick(now_us());
        if let Some(mark) = want {
            if let Err(e) = reserve(&inner, mark).await {
                tracing::warn!(region = inner.region, error = %e, "idgen checkpoint failed");
            }
        }
    }
}

/// Unix time in microseconds (0 if the clock is before 1970).
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{counter_of, nth_id, region_of};
    use std::collections::HashSet;

    #[tokio::test]
    async fn ids_carry_the_region_and_increase() {
        let dir = tempfile::tempdir().unwrap();
        let g = FileIdGen::open(dir.path(), 42).unwrap();
        let a = g.next_ids(1).await.unwrap();
        let b = g.next_ids(5).await.unwrap();
        let c = g.next_ids(1).await.unwrap();
        assert_eq!(region_of(a), 42);
        assert_eq!(region_of(b), 42);
        assert_eq!(b, nth_id(a, 1));
        assert_eq!(c, nth_id(b, 5));
        assert!(a.0 > 0);
        assert!(
            counter_of(a) >= 1_600_000_000_000_000,
            "counter starts at the clock"
        );
        g.close().await.unwrap();
    }

    #[tokio::test]
    async fn region_out_of_range_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            FileIdGen::open(dir.path(), 256),
            Err(IdGenError::Region(256))
        ));
    }

    #[tokio::test]
    async fn reopen_continues_above_everything_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = MsgId(0);
        for round in 0..5 {
            let g = FileIdGen::open(dir.path(), 1).unwrap();
            let first = g.next_ids(1).await.unwrap();
            assert!(first > last, "round {round}: {first} <= {last}");
            // Cross several blocks.
            for _ in 0..10 {
                let f = g.next_ids(7_000).await.unwrap();
                last = nth_id(f, 6_999);
            }
            drop(g); // no close: like a crash, only the block marks are on disk
        }
    }

    #[tokio::test]
    async fn corrupt_checkpoint_fails_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("idgen-0.ckpt"), "junk").unwrap();
        assert!(matches!(
            FileIdGen::open(dir.path(), 0),
            Err(IdGenError::Corrupt(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_get_unique_increasing_ids() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(FileIdGen::open(dir.path(), 9).unwrap());
        let mut tasks = Vec::new();
        for t in 0..32u32 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut prev = MsgId(0);
                for i in 0..500u32 {
                    let n = 1 + (t + i) % 40;
                    let first = g.next_ids(n).await.unwrap();
                    assert!(first > prev, "not increasing within a task");
                    for k in 0..n {
                        mine.push(nth_id(first, k));
                    }
                    prev = nth_id(first, n - 1);
                }
                mine
            }));
        }
        let mut all = HashSet::new();
        let mut count = 0usize;
        for t in tasks {
            for id in t.await.unwrap() {
                count += 1;
                assert!(all.insert(id), "duplicate id {id}");
                assert_eq!(region_of(id), 9);
            }
        }
        assert_eq!(count, all.len());
        g.close().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn ticker_reserves_ahead_and_stops_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let g = FileIdGen::open(dir.path(), 3).unwrap();
        let ck = FileCheckpoint::new(dir.path(), 3);
        let before = ck.load().unwrap().unwrap();
        // Use most of the first block, then let a tick run.
        let _ = g.next_ids(9_000).await.unwrap();
        tokio::time::sleep(TICK * 2).await;
        // The tick's write runs on the blocking pool; wait for it (bounded).
        let mut after = before;
        for _ in 0..200 {
            after = ck.load().unwrap().unwrap();
            if after > before {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(after > before, "the ticker did not reserve ahead");
        g.close().await.unwrap();
        assert!(g.ticker.lock().is_none());
    }
}
