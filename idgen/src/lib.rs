//! Message ids: int64s from disk-checkpointed ranges.
//!
//! Each node owns a region of the id space; inside it ids are handed out in
//! blocks from a high-water mark that is checkpointed (fsync) to disk before
//! any id beyond it is used, so a restart, even after `kill -9`, never repeats
//! or goes back. This crate owns the ids, not the transport that serves them
//! to other processes.

use async_trait::async_trait;
use proto::MsgId;

/// Errors from id generation.
#[derive(Debug, thiserror::Error)]
pub enum IdGenError {
    /// The checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] std::io::Error),
    /// The region's id space is used up.
    #[error("id region exhausted")]
    Exhausted,
    /// The checkpoint file holds something that is not a checkpoint.
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
}

/// The id service, as center uses it (in process here, over a link in cluster mode).
#[async_trait]
pub trait IdGen: Send + Sync + 'static {
    /// Hands out `n` (>= 1) consecutive, strictly increasing ids; returns the first.
    ///
    /// # Errors
    /// [`IdGenError`] when no id can be handed out safely.
    async fn next_ids(&self, n: u32) -> Result<MsgId, IdGenError>;
}
