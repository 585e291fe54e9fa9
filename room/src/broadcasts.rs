//! The broadcasts a room has fanned out recently, so that a center can ask
//! how far each got ([`Room::broadcast_progress`](crate::Room::broadcast_progress)),
//! and the paced fan-out itself ([`fan_out`]).
//!
//! Nothing per connection is spent on tracking: a broadcast's [`Push`] is
//! shared by every queue that holds it, so the number of queues (and
//! sessions in the middle of writing it) that still hold it is the strong
//! count of the `Arc`, read through a [`Weak`]; a queue that drops it
//! unwritten (a slow consumer's, or a closed connection's) counts it in the
//! push's `gone` counter. What is neither pending nor gone was written.
//!
//! The fan-out answers before it queues: the room takes a snapshot of its
//! connections (one `Arc` clone each), remembers the broadcast, answers
//! the caller, and a task queues it to the snapshot a batch at a time,
//! yielding between batches. A batch's sessions write it before the next
//! batch is woken, so a broadcast to the ~18,000 connections of a room does
//! not put 18,000 woken tasks ahead of everything else in the runtime: the
//! link calls, heartbeats and replays of the room get their turn between
//! batches, and the call that asked for the broadcast is answered at once
//! (it once waited behind the woken sessions past the link's timeout).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use proto::{BroadcastProgress, MsgId};

use crate::hub::{Conn, Hub, Push};
use crate::metrics::{self, Metrics};

/// Broadcasts remembered at most.
const MAX_TRACKED: usize = 256;

/// A broadcast is forgotten this long after it was fanned out.
const KEEP: Duration = Duration::from_secs(600);

/// Connections a fan-out queues to (and wakes) before it yields.
pub(crate) const FAN_OUT_BATCH: usize = 64;

/// How far one fan-out got: its own counters, shared by the task that
/// queues it and the room's list of recent broadcasts.
#[derive(Debug, Default)]
pub(crate) struct FanOut {
    /// Queues that took it.
    queued: AtomicU64,
    /// Connections that did not take it (full queue, closing).
    skipped: AtomicU64,
    /// Connections in the snapshot; those not visited yet are what the
    /// two counts above leave of it.
    total: u64,
}

impl FanOut {
    /// Counts one batch: `queued` took it and `skipped` did not, of
    /// `queued + skipped` connections visited.
    fn record(&self, queued: u64, skipped: u64) {
        self.queued.fetch_add(queued, Ordering::Relaxed);
        // Release: whoever sees this batch's skipped sees its queued.
        self.skipped.fetch_add(skipped, Ordering::Release);
    }
}

/// One broadcast fanned out here.
#[derive(Debug)]
struct Tracked {
    id: MsgId,
    at: Instant,
    push: Weak<Push>,
    gone: Arc<AtomicU64>,
    fan: Arc<FanOut>,
}

impl Tracked {
    fn progress(&self) -> BroadcastProgress {
        // Skipped first: a batch seen there is seen in queued too. A batch
        // seen in queued only counts once more as not visited (pending a
        // moment longer, never written too early).
        let skipped = self.fan.skipped.load(Ordering::Acquire);
        let queued = self.fan.queued.load(Ordering::Relaxed);
        let unsent = self.fan.total.saturating_sub(queued + skipped);
        // The references before `gone`: a queue counts the push gone just
        // before it lets go of it, so a push dropped unwritten between the
        // two reads is seen in both (and the `min` below takes it once),
        // never in neither (which would count it written). The fence
        // pairs with the release of an `Arc`'s drop.
        let held = self.push.strong_count() as u64;
        std::sync::atomic::fence(Ordering::Acquire);
        let gone = self.gone.load(Ordering::Acquire).min(queued);
        // While the fan-out runs, its own reference counts as one more
        // pending.
        let pending = held.min(queued - gone);
        BroadcastProgress {
            delivered: queued - gone - pending,
            skipped: skipped + gone,
            pending: pending + unsent,
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

    /// Remembers broadcast `id`, about to be queued to `connections`
    /// connections, and returns the counters its fan-out updates; or, when
    /// `id` was fanned out here already (a retried call), how far that got
    /// (checked and remembered under one lock: two calls never both start).
    pub(crate) fn start(
        &self,
        id: MsgId,
        push: &Arc<Push>,
        gone: Arc<AtomicU64>,
        connections: u64,
    ) -> Result<Arc<FanOut>, BroadcastProgress> {
        let now = Instant::now();
        let mut recent = self.recent.lock();
        if let Some(t) = recent.iter().rev().find(|t| t.id == id) {
            return Err(t.progress());
        }
        while recent
            .front()
            .is_some_and(|t| recent.len() >= MAX_TRACKED || now.duration_since(t.at) > KEEP)
        {
            recent.pop_front();
        }
        let fan = Arc::new(FanOut {
            total: connections,
            ..FanOut::default()
        });
        recent.push_back(Tracked {
            id,
            at: now,
            push: Arc::downgrade(push),
            gone,
            fan: Arc::clone(&fan),
        });
        Ok(fan)
    }
}

/// Queues `push` to `conns` (a snapshot of the room's connections), a
/// batch of [`FAN_OUT_BATCH`] at a time, counting in `fan` and yielding to
/// the runtime between batches (see the module's docs). Each connection's
/// handle is let go once visited, so a connection that closed meanwhile is
/// not kept.
pub(crate) async fn fan_out(
    hub: &Hub,
    metrics: &Metrics,
    conns: Vec<Arc<Conn>>,
    push: Arc<Push>,
    fan: &FanOut,
) {
    let mut rest = Rest {
        conns: conns.into_iter(),
        fan,
    };
    while fan_out_batch(hub, metrics, &mut rest.conns, &push, fan) {
        tokio::task::yield_now().await;
    }
}

/// The connections a fan-out has not visited yet; dropped before the end
/// (the runtime shutting down), they count as skipped, so that the
/// broadcast's progress does not show them pending for as long as it is
/// remembered.
struct Rest<'a> {
    conns: std::vec::IntoIter<Arc<Conn>>,
    fan: &'a FanOut,
}

impl Drop for Rest<'_> {
    fn drop(&mut self) {
        let left = self.conns.len() as u64;
        if left > 0 {
            self.fan.record(0, left);
        }
    }
}

/// [`fan_out`] without yielding, where no runtime is at hand.
pub(crate) fn fan_out_now(
    hub: &Hub,
    metrics: &Metrics,
    conns: Vec<Arc<Conn>>,
    push: Arc<Push>,
    fan: &FanOut,
) {
    let mut rest = Rest {
        conns: conns.into_iter(),
        fan,
    };
    while fan_out_batch(hub, metrics, &mut rest.conns, &push, fan) {}
}

/// Queues `push` to the next [`FAN_OUT_BATCH`] connections of `conns`;
/// false when none was left.
fn fan_out_batch(
    hub: &Hub,
    metrics: &Metrics,
    conns: &mut std::vec::IntoIter<Arc<Conn>>,
    push: &Arc<Push>,
    fan: &FanOut,
) -> bool {
    let (mut queued, mut skipped) = (0, 0);
    for c in conns.by_ref().take(FAN_OUT_BATCH) {
        if hub.push_to(&c, push, metrics) == 1 {
            queued += 1;
        } else {
            skipped += 1;
        }
    }
    metrics::add(&metrics.deliveries, queued);
    fan.record(queued, skipped);
    queued + skipped > 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;
    use proto::{ConnId, EncodedMsg, RoomId, UserId};

    use std::future::Future;
    use std::task::Context;

    use super::*;
    use crate::hub::Popped;

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
        let at = |d, s, p| BroadcastProgress {
            delivered: d,
            skipped: s,
            pending: p,
        };
        let snapshot = hub.all_conns();
        let fan = b.start(MsgId(7), &p, gone, snapshot.len() as u64).unwrap();
        // Before the fan-out: all four pending; a second start is refused.
        assert_eq!(b.progress(MsgId(7)), Some(at(0, 0, 4)));
        let (q, _) = Push::tracked(&msg(7)).unwrap();
        let again = Arc::new(AtomicU64::new(0));
        assert_eq!(b.start(MsgId(7), &q, again, 4).unwrap_err(), at(0, 0, 4));
        fan_out_now(&hub, &m, snapshot, p, &fan);
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
            b.start(MsgId(id + 1), &p, gone, 0).unwrap();
        }
        assert_eq!(b.recent.lock().len(), MAX_TRACKED);
        assert_eq!(b.progress(MsgId(1)), None);
        assert!(b.progress(MsgId(MAX_TRACKED as i64 + 10)).is_some());
    }

    #[test]
    fn a_fan_out_goes_a_batch_at_a_time_and_counts_what_is_left() {
        let hub = Hub::new(4, 1 << 20);
        let m = Metrics::default();
        let b = Broadcasts::default();
        let n = 2 * FAN_OUT_BATCH + 5;
        let conns: Vec<Arc<Conn>> = (1..=n as u64)
            .map(|i| Arc::new(Conn::new(ConnId::new(RoomId(1), i))))
            .collect();
        let users: Vec<UserId> = (0..n).map(|i| UserId::new(&format!("u{i}"))).collect();
        let _regs: Vec<_> = conns
            .iter()
            .zip(&users)
            .map(|(c, u)| hub.register(u, Arc::clone(c), 0).unwrap())
            .collect();
        let (p, gone) = Push::tracked(&msg(5)).unwrap();
        let snapshot = hub.all_conns();
        let fan = b.start(MsgId(5), &p, gone, n as u64).unwrap();
        let mut task = Box::pin(fan_out(&hub, &m, snapshot, p, &fan));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let pending = |d, p| BroadcastProgress {
            delivered: d,
            skipped: 0,
            pending: p,
        };
        // One batch, then it yields: the rest is still to be queued.
        assert!(task.as_mut().poll(&mut cx).is_pending());
        let queued = conns.iter().filter(|c| c.queued() == 1).count();
        assert_eq!(queued, FAN_OUT_BATCH);
        assert_eq!(b.progress(MsgId(5)), Some(pending(0, n as u64)));
        assert!(task.as_mut().poll(&mut cx).is_pending());
        assert!(task.as_mut().poll(&mut cx).is_pending());
        assert!(task.as_mut().poll(&mut cx).is_ready());
        drop(task);
        assert!(conns.iter().all(|c| c.queued() == 1));
        assert_eq!(b.progress(MsgId(5)), Some(pending(0, n as u64)));
        // Written by one: exact once the fan-out let go of its reference.
        assert!(matches!(conns[0].pop(), Popped::Msg(_)));
        assert_eq!(b.progress(MsgId(5)), Some(pending(1, n as u64 - 1)));
        assert_eq!(m.deliveries.load(Ordering::Relaxed), n as u64);

        // A fan-out dropped after one batch (the runtime shutting down):
        // the connections it never visited count as skipped, not pending.
        let (p, gone) = Push::tracked(&msg(6)).unwrap();
        let fan = b.start(MsgId(6), &p, gone, n as u64).unwrap();
        let mut task = Box::pin(fan_out(&hub, &m, hub.all_conns(), p, &fan));
        assert!(task.as_mut().poll(&mut cx).is_pending());
        drop(task);
        assert_eq!(
            b.progress(MsgId(6)),
            Some(BroadcastProgress {
                delivered: 0,
                skipped: (n - FAN_OUT_BATCH) as u64,
                pending: FAN_OUT_BATCH as u64,
            })
        );
    }
}
