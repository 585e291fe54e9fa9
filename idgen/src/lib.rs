//! Message ids: int64s from disk-checkpointed ranges.
//!
//! Each node owns a region of the id space; inside it ids are handed out in
//! blocks from a high-water mark that is checkpointed (fsync) to disk before
//! any id beyond it is used, so a restart, even after `kill -9`, never repeats
//! or goes back. This crate owns the ids; the transport that carries them
//! to other processes is the `link` crate ([`remote`] holds the service and
//! the leasing client of cluster mode).

//!
//! Id layout: `id = (counter << REGION_BITS) | region` with
//! [`REGION_BITS`] = 8, so regions are `0..=255` and ids stay positive i64s.
//! The counter starts at the larger of the checkpointed mark and the unix
//! time in microseconds, and is moved up to the clock once a second, so ids
//! of different regions stay close to time order. Consecutive ids of one
//! region differ by [`ID_STEP`]; use [`nth_id`] to walk a batch from
//! [`IdGen::next_ids`].

pub mod alloc;
pub mod checkpoint;
mod file;
pub mod remote;

use async_trait::async_trait;
use proto::MsgId;

pub use alloc::RangeAllocator;
pub use checkpoint::{Checkpoint, FileCheckpoint};
pub use file::FileIdGen;
pub use remote::{IdgenService, LeasedIds};

/// Bits of an id that hold the region.
pub const REGION_BITS: u32 = 8;

/// The highest region number.
pub const MAX_REGION: u16 = (1 << REGION_BITS) - 1;

/// The distance between two consecutive ids of one region.
pub const ID_STEP: i64 = 1 << REGION_BITS;

/// The id of `counter` in `region` (`region` must be at most [`MAX_REGION`]).
#[must_use]
pub fn make_id(counter: i64, region: u16) -> MsgId {
    MsgId((counter << REGION_BITS) | i64::from(region & MAX_REGION))
}

/// The `k`th id of a batch whose first id is `first` (`nth_id(first, 0) == first`).
#[must_use]
pub fn nth_id(first: MsgId, k: u32) -> MsgId {
    MsgId(first.0 + i64::from(k) * ID_STEP)
}

/// The region an id was made in.
#[must_use]
pub fn region_of(id: MsgId) -> u16 {
    // The mask keeps the value below 256, so the cast is lossless.
    (id.0 & i64::from(MAX_REGION)) as u16
}

/// The counter part of an id.
#[must_use]
pub fn counter_of(id: MsgId) -> i64 {
    id.0 >> REGION_BITS
}

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
    /// The region number is above [`MAX_REGION`].
    #[error("region {0} out of range 0..=255")]
    Region(u16),
    /// No idgen process could lease ids (cluster mode, see [`remote`]).
    #[error("idgen unavailable: {0}")]
    Unavailable(String),
}

/// The id service, as center uses it (in process here, over a link in cluster mode).
#[async_trait]
pub trait IdGen: Send + Sync + 'static {
    /// Hands out `n` (>= 1) strictly increasing ids of one region; returns the
    /// first. The k-th (from 0) is [`nth_id`]`(first, k)`: ids of a region are
    /// [`ID_STEP`] apart, never adjacent integers.
    /// The others are `nth_id(first, 1..n)`: consecutive ids of a region are
    /// [`ID_STEP`] apart, not 1. `n == 0` is taken as 1.
    ///
    /// # Errors
    /// [`IdGenError`] when no id can be handed out safely.
    async fn next_ids(&self, n: u32) -> Result<MsgId, IdGenError>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips() {
        let id = make_id(1_700_000_000_000_000, 255);
        assert!(id.0 > 0);
        assert_eq!(region_of(id), 255);
        assert_eq!(counter_of(id), 1_700_000_000_000_000);
        assert_eq!(nth_id(id, 3), make_id(1_700_000_000_000_003, 255));
        let top = make_id(alloc::MAX_COUNTER, MAX_REGION);
        assert!(top.0 > 0);
    }

    #[test]
    fn later_counter_wins_over_region() {
        assert!(make_id(10, 255) < make_id(11, 0));
    }
}
