//! The broadcasts a room has fanned out recently, so that a center can ask
//! how far each got ([`Room::broadcast_progress`](crate::Room::broadcast_progress)).
//!
//! Nothing per connection is spent on it: a broadcast's [`Push`] is shared
//! by every queue that holds it, so the number of queues (and sessions in
//! the middle of writing it) that still hold it is the strong count of the
//! `Arc`, read through a [`Weak`]; a queue that drops it unwritten (a slow
//! consumer's, or a closed connection's) counts it in the push's `gone`
//! counter. What is neither pending nor gone was written.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use proto::{BroadcastProgress, MsgId};

use crate::hub::Push;

/// Broadcasts remembered at most.
const MAX_TRACKED: usize = 256;

/// A broadcast is forgotten this long after it was fanned out.
const KEEP: Duration = Duration::from_secs(600);

/// One broadcast fanned out here.
#[derive(Debug)]
struct Tracked {
    id: MsgId,
    at: Instant,
    push: Weak<Push>,
    gone: Arc<AtomicU64>,
    /// Queued at fan-out.
    queued: u64,
    /// Not queued at fan-out (full queue, closing connection).
    skipped: u64,
}

impl Tracked {
    fn progress(&self) -> BroadcastProgress {
        let gone = self.gone.load(Ordering::Acquire).min(self.queued);
        // A queue counts the push gone just before it lets go of it, so
        // for a moment both may count it once.
        let pending = (self.push.strong_count() as u64).min(self.queued - gone);
        BroadcastProgress {
            delivered: self.queued - gone - pending,
            skipped: self.skipped + gone,
            pending,
        }
    }
}

/// The recent broadcasts of one room.
#[derive(Debug, Default)]
pub(crate) struct Broadcasts {
    recent: Mutex<VecDeque<Tracked>>,
}

impl Broadcasts {
    /// Whether broadcast `id` was fanned out here already, and how far it got.
    pub(crate) fn progress(&self, id: MsgId) -> Option<BroadcastProgress> {
        let recent = self.recent.lock();
        recent
            .iter()
            .rev()
            .find(|t| t.id == id)
            .map(Tracked::progress)
    }

    /// Remembers broadcast `id`, just fanned out: `queued` connections hold
    /// `push`, `skipped` did not take it. Takes the caller's reference, so
    /// that only queues (and sessions writing it) hold it from then on;
    /// returns its progress.
    pub(crate) fn start(
        &self,
        id: MsgId,
        push: Arc<Push>,
        gone: Arc<AtomicU64>,
        queued: u64,
        skipped: u64,
    ) -> BroadcastProgress {
        let now = Instant::now();
        let mut recent = self.recent.lock();
        while recent
            .front()
            .is_some_and(|t| recent.len() >= MAX_TRACKED || now.duration_since(t.at) > KEEP)
        {
            recent.pop_front();
        }
        let t = Tracked {
            id,
            at: now,
            push: Arc::downgrade(&push),
            gone,
            queued,
            skipped,
        };
        drop(push);
        let p = t.progress();
        recent.push_back(t);
        p
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;
    use proto::{ConnId, EncodedMsg, RoomId, UserId};

    use super::*;
    use crate::hub::{Conn, Hub, Popped};
    use crate::metrics::Metrics;

    fn msg(id: i64) -> EncodedMsg {
        EncodedMsg {
            id: MsgId(id),
            channel: false,
            stored: false,
            json: Bytes::from_static(b"{}"),
            bin: Bytes::from_static(b"\x01"),
            except: None,
        }
    }

    #[test]
    fn every_connection_is_counted_once_written_skipped_or_pending() {
        // Queues of two messages: the third push to a connection closes it.
        let hub = Hub::new(2, 1 << 20);
        let m = Metrics::default();
        let b = Broadcasts::default();
        let conns: Vec<Arc<Conn>> = (1..=4)
            .map(|i| Arc::new(Conn::new(ConnId::new(RoomId(1), i))))
            .collect();
        let users: Vec<UserId> = (1..=4).map(|i| UserId::new(&format!("u{i}"))).collect();
        let regs: Vec<_> = conns
            .iter()
            .zip(&users)
            .map(|(c, u)| hub.register(u, Arc::clone(c), 0).unwrap())
            .collect();
        // Connection 4 already has two messages queued: it will overflow.
        let (filler, _) = Push::tracked(&msg(1)).unwrap();
        hub.deliver_users(&users[3..], &filler, &m);
        hub.deliver_users(&users[3..], &filler, &m);

        let (p, gone) = Push::tracked(&msg(7)).unwrap();
        let (queued, skipped) = hub.broadcast(&p, &m);
        assert_eq!((queued, skipped), (3, 1));
        let at = |d, s, p| BroadcastProgress {
            delivered: d,
            skipped: s,
            pending: p,
        };
        assert_eq!(b.start(MsgId(7), p, gone, queued, skipped), at(0, 1, 3));
        assert_eq!(b.progress(MsgId(7)), Some(at(0, 1, 3)));
        assert_eq!(b.progress(MsgId(8)), None);

        // Connection 1 writes it.
        match conns[0].pop() {
            Popped::Msg(m) => assert_eq!(m.id, MsgId(7)),
            other => panic!("expected the broadcast, got {other:?}"),
        }
        assert_eq!(b.progress(MsgId(7)), Some(at(1, 1, 2)));

        // Connection 2 overflows with it still queued: gone.
        let (more, _) = Push::tracked(&msg(9)).unwrap();
        hub.deliver_users(&users[1..2], &more, &m);
        hub.deliver_users(&users[1..2], &more, &m);
        assert_eq!(b.progress(MsgId(7)), Some(at(1, 2, 1)));

        // Connection 3 closes with it queued: gone when its handle goes.
        let mut regs = regs;
        let r3 = regs.remove(2);
        drop(r3);
        let c3 = conns[2].clone();
        drop(conns);
        drop(c3);
        assert_eq!(b.progress(MsgId(7)), Some(at(1, 3, 0)));
        drop(regs);
    }

    #[test]
    fn keeps_a_bounded_number_of_broadcasts() {
        let b = Broadcasts::default();
        for id in 0..(MAX_TRACKED as i64 + 10) {
            let (p, gone) = Push::tracked(&msg(id + 1)).unwrap();
            b.start(MsgId(id + 1), p, gone, 0, 0);
        }
        assert_eq!(b.recent.lock().len(), MAX_TRACKED);
        assert_eq!(b.progress(MsgId(1)), None);
        assert!(b.progress(MsgId(MAX_TRACKED as i64 + 10)).is_some());
    }
}
