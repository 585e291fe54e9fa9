//! The pure core of id generation: a counter and a durably reserved mark.
//!
//! No I/O and no clock: the caller passes `now` in (unix microseconds) and
//! performs the checkpoint writes this type asks for. The invariant it keeps:
//! a counter value is handed out only if it is below the `reserved` mark, and
//! `reserved` only grows after the caller reports a durable checkpoint of it.
//! So the checkpoint file always lies above every counter ever handed out,
//! and a restart that starts at `max(checkpoint, now)` never repeats one.

/// Smallest block reserved ahead of the counter by one checkpoint.
pub const MIN_BLOCK: i64 = 10_000;

/// Largest block reserved ahead of the counter by one checkpoint.
pub const MAX_BLOCK: i64 = 100_000_000;

/// Highest counter value: `counter << REGION_BITS` must stay a positive i64.
pub const MAX_COUNTER: i64 = i64::MAX >> crate::REGION_BITS;

/// Why a take could not be served from the reserved block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeError {
    /// Checkpoint this mark durably, report it with
    /// [`RangeAllocator::reserved_to`], then take again.
    NeedCheckpoint(i64),
    /// The counter space is used up.
    Exhausted,
}

/// Hands out counter values from a block reserved by a durable checkpoint.
#[derive(Clone, Debug)]
pub struct RangeAllocator {
    /// Next counter value to hand out.
    next: i64,
    /// Counter values below this are covered by a durable checkpoint.
    reserved: i64,
    /// How far ahead of `next` a new checkpoint reserves.
    block: i64,
    /// Counter values handed out since the last [`RangeAllocator::tick`].
    taken_since_tick: i64,
}

impl RangeAllocator {
    /// Starts after a restart: the counter begins at the larger of the
    /// checkpointed mark and `now_us` (unix microseconds), and at least 1.
    /// Nothing is reserved yet, so the first take asks for a checkpoint.
    #[must_use]
    pub fn new(checkpointed: i64, now_us: i64) -> Self {
        let next = checkpointed.max(now_us).max(1);
        RangeAllocator {
            next,
            reserved: next,
            block: MIN_BLOCK,
            taken_since_tick: 0,
        }
    }

    /// Takes `n` consecutive counter values and returns the first, or says
    /// which mark must be checkpointed first.
    ///
    /// # Errors
    /// [`TakeError::NeedCheckpoint`] when the block does not cover `n` more
    /// values; [`TakeError::Exhausted`] when the counter space is used up.
    pub fn try_take(&mut self, n: u32) -> Result<i64, TakeError> {
        let n = i64::from(n.max(1));
        let end = self.next.checked_add(n).ok_or(TakeError::Exhausted)?;
        if end > MAX_COUNTER {
            return Err(TakeError::Exhausted);
        }
        if end > self.reserved {
            let mark = end.saturating_add(self.block).min(MAX_COUNTER);
            return Err(TakeError::NeedCheckpoint(mark));
        }
        let first = self.next;
        self.next = end;
        self.taken_since_tick += n;
        Ok(first)
    }

    /// Records that `mark` is durably checkpointed. Never lowers the mark.
    pub fn reserved_to(&mut self, mark: i64) {
        self.reserved = self.reserved.max(mark);
    }

    /// Once a second: moves the counter up to `now_us` (so regions stay
    /// close to time order), adapts the block to the recent rate and returns
    /// a mark to checkpoint ahead of time, if the remaining block is short.
    pub fn tick(&mut self, now_us: i64) -> Option<i64> {
        self.next = self.next.max(now_us.min(MAX_COUNTER));
        // Reserve about two seconds of the recent rate ahead.
        self.block = self
            .taken_since_tick
            .saturating_mul(2)
            .clamp(MIN_BLOCK, MAX_BLOCK);
        self.taken_since_tick = 0;
        let headroom = self.reserved - self.next;
        if headroom < self.block / 2 {
            Some(self.next.saturating_add(self.block).min(MAX_COUNTER))
        } else {
            None
        }
    }

    /// The next counter value to hand out (every value below it may be in use).
    #[must_use]
    pub fn next(&self) -> i64 {
        self.next
    }

    /// The durably reserved mark.
    #[must_use]
    pub fn reserved(&self) -> i64 {
        self.reserved
    }

    /// The current block size.
    #[must_use]
    pub fn block(&self) -> i64 {
        self.block
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000;

    fn take(a: &mut RangeAllocator, n: u32) -> i64 {
        match a.try_take(n) {
            Ok(first) => first,
            Err(TakeError::NeedCheckpoint(mark)) => {
                a.reserved_to(mark);
                a.try_take(n).unwrap()
            }
            Err(TakeError::Exhausted) => panic!("exhausted"),
        }
    }

    #[test]
    fn starts_at_now_or_checkpoint_whichever_is_later() {
        assert_eq!(RangeAllocator::new(0, NOW).next(), NOW);
        assert_eq!(RangeAllocator::new(NOW + 5, NOW).next(), NOW + 5);
        assert_eq!(RangeAllocator::new(0, -3).next(), 1);
    }

    #[test]
    fn first_take_needs_a_checkpoint_covering_it() {
        let mut a = RangeAllocator::new(0, NOW);
        assert_eq!(
            a.try_take(3),
            Err(TakeError::NeedCheckpoint(NOW + 3 + MIN_BLOCK))
        );
        a.reserved_to(NOW + 3 + MIN_BLOCK);
        assert_eq!(a.try_take(3), Ok(NOW));
        assert_eq!(a.try_take(1), Ok(NOW + 3));
        assert_eq!(a.next(), NOW + 4);
    }

    #[test]
    fn never_hands_out_at_or_beyond_the_reserved_mark() {
        let mut a = RangeAllocator::new(0, NOW);
        a.reserved_to(NOW + 10);
        assert_eq!(a.try_take(10), Ok(NOW));
        assert!(matches!(a.try_take(1), Err(TakeError::NeedCheckpoint(_))));
        assert_eq!(a.next(), NOW + 10);
    }

    #[test]
    fn reserved_mark_never_moves_back() {
        let mut a = RangeAllocator::new(0, NOW);
        a.reserved_to(NOW + 100);
        a.reserved_to(NOW + 50);
        assert_eq!(a.reserved(), NOW + 100);
    }

    #[test]
    fn zero_is_taken_as_one() {
        let mut a = RangeAllocator::new(0, NOW);
        let x = take(&mut a, 0);
        let y = take(&mut a, 0);
        assert_eq!(y, x + 1);
    }

    #[test]
    fn restart_from_checkpoint_skips_everything_handed_out() {
        let mut a = RangeAllocator::new(0, NOW);
        let mut last = 0;
        for i in 0..1000 {
            last = take(&mut a, 1 + i % 50);
        }
        // The file holds `reserved`; a restart with an older clock must start above.
        let b = RangeAllocator::new(a.reserved(), NOW - 1_000_000);
        assert!(b.next() > last);
    }

    #[test]
    fn tick_moves_to_now_and_asks_for_headroom() {
        let mut a = RangeAllocator::new(0, NOW);
        a.reserved_to(NOW + MIN_BLOCK);
        // Plenty of headroom: no checkpoint asked.
        assert_eq!(a.tick(NOW), None);
        // The clock moved past the reserved mark: ask for a block ahead of now.
        let later = NOW + 2 * MIN_BLOCK;
        assert_eq!(a.tick(later), Some(later + MIN_BLOCK));
        assert_eq!(a.next(), later);
        // Until it is durable, takes still ask for a checkpoint.
        assert!(matches!(a.try_take(1), Err(TakeError::NeedCheckpoint(_))));
    }

    #[test]
    fn block_adapts_to_rate() {
        let mut a = RangeAllocator::new(0, NOW);
        for _ in 0..100 {
            take(&mut a, 1000);
        }
        let _ = a.tick(NOW);
        assert_eq!(a.block(), 200_000);
        let _ = a.tick(NOW);
        assert_eq!(a.block(), MIN_BLOCK);
    }

    #[test]
    fn tick_does_not_move_back() {
        let mut a = RangeAllocator::new(0, NOW);
        let _ = a.tick(NOW - 1_000);
        assert_eq!(a.next(), NOW);
    }

    #[test]
    fn exhausts_at_the_top_of_the_counter_space() {
        let mut a = RangeAllocator::new(MAX_COUNTER - 5, NOW);
        a.reserved_to(MAX_COUNTER);
        assert_eq!(a.try_take(5), Ok(MAX_COUNTER - 5));
        assert_eq!(a.try_take(1), Err(TakeError::Exhausted));
        let mut b = RangeAllocator::new(MAX_COUNTER - 5, NOW);
        assert_eq!(b.try_take(u32::MAX), Err(TakeError::Exhausted));
    }
}
