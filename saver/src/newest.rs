//! An in-memory upper bound of the newest id stored for each user, so that
//! a connect with nothing to replay costs no store read.
//!
//! Users hash into a fixed table of slots; each slot holds the highest id
//! ever appended for any of its users. A slot at or below a connection's
//! resume point proves that none of its users has anything newer; anything
//! else (a collision, an expired message) only means "read the store". The
//! slot is raised before the append is written, so a push acknowledged to
//! its caller is never hidden from a replay that starts after the
//! acknowledgement. 2^16 slots: 512 KiB per store, whatever the number of
//! users.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicI64, Ordering};

/// log2 of the number of slots.
const SLOT_BITS: u32 = 16;

/// See the module documentation.
pub(crate) struct NewestIds {
    slots: Box<[AtomicI64]>,
}

impl NewestIds {
    /// Every slot at 0: nothing stored.
    pub(crate) fn new() -> NewestIds {
        NewestIds {
            slots: (0..1usize << SLOT_BITS)
                .map(|_| AtomicI64::new(0))
                .collect(),
        }
    }

    fn slot(&self, user: &str) -> &AtomicI64 {
        // A fixed-key hash: the same user always lands in the same slot.
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(user);
        let mask = (1u64 << SLOT_BITS) - 1;
        // Masked to SLOT_BITS bits: fits usize and the table.
        &self.slots[(h & mask) as usize]
    }

    /// Records that `user` has a message with id `id` (call before writing it).
    pub(crate) fn raise(&self, user: &str, id: i64) {
        self.slot(user).fetch_max(id, Ordering::AcqRel);
    }

    /// Whether `user` surely has no stored message with id above `after`.
    pub(crate) fn nothing_after(&self, user: &str, after: i64) -> bool {
        self.slot(user).load(Ordering::Acquire) <= after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_user_is_never_reported_empty() {
        let n = NewestIds::new();
        assert!(n.nothing_after("alice", 0));
        n.raise("alice", 42);
        assert!(!n.nothing_after("alice", 0));
        assert!(!n.nothing_after("alice", 41));
        assert!(n.nothing_after("alice", 42));
        // Never moves back.
        n.raise("alice", 7);
        assert!(!n.nothing_after("alice", 41));
        // Most other users are in other slots: still proven empty.
        let empty = (0..1000)
            .filter(|i| n.nothing_after(&format!("user{i}"), 0))
            .count();
        assert!(empty >= 990, "{empty} of 1000 proven empty");
    }
}
