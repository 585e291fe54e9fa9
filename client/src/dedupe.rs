//! Duplicate drop: a bounded set of the ids of recent messages.
//!
//! The protocol may deliver a message twice (replayed and live, after a
//! reconnect, or from a cluster's replay overlap), always with the same id.
//! Ids are not a sequence the client can compare against one high-water mark:
//! broadcasts run as background tasks and may arrive after user messages with
//! higher ids, so "drop what is not greater than the last id" would lose them.
//! The client remembers the ids it has seen instead, the newest `capacity`.

use std::collections::{HashSet, VecDeque};

/// The ids of the newest `capacity` messages seen, oldest forgotten first.
#[derive(Debug)]
pub(crate) struct RecentIds {
    set: HashSet<i64>,
    order: VecDeque<i64>,
    capacity: usize,
}

impl RecentIds {
    /// A set remembering at most `capacity` ids (at least 1).
    pub(crate) fn new(capacity: usize) -> RecentIds {
        let capacity = capacity.max(1);
        RecentIds {
            set: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity,
        }
    }

    /// Records `id`; returns false when it was already among the recent ids
    /// (a duplicate to drop).
    pub(crate) fn insert(&mut self, id: i64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_repeats() {
        let mut r = RecentIds::new(8);
        assert!(r.insert(5));
        assert!(r.insert(6));
        assert!(!r.insert(5));
        assert!(!r.insert(6));
        assert!(r.insert(7));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn lower_ids_are_not_duplicates() {
        // A broadcast with a lower id than the last user message is new.
        let mut r = RecentIds::new(8);
        assert!(r.insert(1000));
        assert!(r.insert(900));
        assert!(r.insert(-1));
        assert!(!r.insert(900));
    }

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut r = RecentIds::new(3);
        for id in 1..=3 {
            assert!(r.insert(id));
        }
        assert!(r.insert(4)); // forgets 1
        assert_eq!(r.len(), 3);
        assert!(!r.insert(2));
        assert!(!r.insert(4));
        assert!(r.insert(1), "1 was forgotten");
        assert_eq!(r.len(), 3);
        // A repeat does not refresh or grow anything.
        assert!(!r.insert(1));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn bounded_under_many_ids() {
        let mut r = RecentIds::new(1000);
        for id in 0..100_000 {
            assert!(r.insert(id));
        }
        assert_eq!(r.len(), 1000);
        assert_eq!(r.set.len(), 1000);
        assert!(!r.insert(99_999));
        assert!(r.insert(0));
    }

    #[test]
    fn zero_capacity_still_catches_back_to_back_repeats() {
        let mut r = RecentIds::new(0);
        assert!(r.insert(1));
        assert!(!r.insert(1));
        assert!(r.insert(2));
        assert!(r.insert(1));
    }
}
