//! Broadcast tasks: a broadcast is accepted at once (202) and then runs over
//! every live room, with per-room progress that `GET /tasks/{task}` reports.
//!
//! # Admission: the broadcast lane
//!
//! Broadcasts wait in a bounded lane ([`CenterConfig::broadcast_queue`]
//! tasks; beyond, 429 `overloaded` with `Retry-After`) and run
//! [`CenterConfig::broadcasts_at_once`] at a time, in the order they were
//! accepted. A running broadcast holds its slot until the rooms have
//! written it to all but 0.1 % of the connections that queued it (or until
//! [`CenterConfig::broadcast_wait`] passed): so broadcasts are admitted at
//! the rate the rooms deliver them, and a burst of them never piles up
//! in every connection's queue (where the queue bound would close the
//! connections as slow consumers). A connection that still holds the
//! previous one when the next arrives gets both in one write.
//!
//! # Progress
//!
//! Each room answers the fan-out with how many connections queued the
//! message and how many did not take it (full queue, closing); the task
//! then asks every room with some still queued how far it got, every 20 ms
//! at first and then less often (up to every 500 ms), until none is left or
//! `broadcast_wait` passed. Per room, `delivered + skipped + pending` is the
//! connections that were live when the broadcast reached it. A room that
//! fails is counted in `rooms_failed` (and in `rooms_done`); the task still
//! finishes, as `done`. A task is `failed` only when the list of rooms could
//! not be read (or the center stopped before it ran). The table keeps the
//! newest [`MAX_TASKS`] tasks, and drops finished ones after [`TASK_TTL`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::future::join_all;
use parking_lot::Mutex;
use proto::{BroadcastProgress, EncodedMsg, RoomId};
use register::Directory;
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

use crate::admission::retry_after;
use crate::error::ApiError;
use crate::metrics::{KindLabel, Metrics};
use crate::{CenterConfig, Rooms};

/// Tasks kept at most.
pub const MAX_TASKS: usize = 1000;
/// Finished tasks are forgotten after this long.
pub const TASK_TTL: Duration = Duration::from_secs(3600);

/// First pause between two progress questions to the rooms.
const FIRST_POLL: Duration = Duration::from_millis(20);
/// Longest pause between two progress questions.
const MAX_POLL: Duration = Duration::from_millis(500);

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const FAILED: u8 = 3;

/// Not measured yet (`queued_ms`, `duration_ms`).
const UNSET: u64 = u64::MAX;

/// One room's part of a task.
#[derive(Debug, Clone, Copy)]
struct RoomPart {
    state: RoomState,
    progress: BroadcastProgress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoomState {
    Running,
    Done,
    Failed,
}

impl RoomState {
    fn name(self) -> &'static str {
        match self {
            RoomState::Running => "running",
            RoomState::Done => "done",
            RoomState::Failed => "failed",
        }
    }
}

/// Progress of one task, updated while it runs.
#[derive(Debug)]
pub(crate) struct TaskState {
    id: String,
    created: Instant,
    state: AtomicU8,
    rooms_total: AtomicU64,
    /// From acceptance until the task started running, ms.
    queued_ms: AtomicU64,
    /// From start until done, ms.
    duration_ms: AtomicU64,
    /// Per room (touched between awaits only).
    rooms: Mutex<BTreeMap<RoomId, RoomPart>>,
}

/// One room's part of a task, as `GET /tasks/{task}` shows it.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct RoomTaskView {
    /// Room id.
    pub room: u32,
    /// `running` (some connections still have it queued), `done` or
    /// `failed` (the room could not be reached).
    #[schema(example = "done")]
    pub state: String,
    /// Connections it was written to.
    pub delivered: u64,
    /// Connections that did not get it: queue full (closed as slow
    /// consumers, 4006) or closed before it was written.
    pub skipped: u64,
    /// Connections that still have it queued.
    pub pending: u64,
}

/// A task as `GET /tasks/{task}` shows it.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct TaskView {
    /// Task id.
    #[schema(example = "b-42")]
    pub task: String,
    /// Always `broadcast` for now.
    #[schema(example = "broadcast")]
    pub kind: String,
    /// `queued` (waiting in the broadcast lane), `running`, `done` or
    /// `failed`.
    #[schema(example = "done")]
    pub state: String,
    /// Live rooms when the task started.
    pub rooms_total: u64,
    /// Rooms finished (including failed ones).
    pub rooms_done: u64,
    /// Rooms that could not be reached.
    pub rooms_failed: u64,
    /// Connections the message was written to.
    pub delivered: u64,
    /// Connections that were live when it reached their room but did not
    /// get it (slow consumer, closed first).
    pub skipped: u64,
    /// Connections that still have it queued (0 once done, unless the
    /// center stopped following it after `--broadcast-wait`).
    pub pending: u64,
    /// Time spent waiting in the broadcast lane, ms (`null` while queued).
    pub queued_ms: Option<u64>,
    /// From start until every connection wrote it or dropped it, ms
    /// (`null` until done).
    pub duration_ms: Option<u64>,
    /// Per room, in room order.
    pub rooms: Vec<RoomTaskView>,
}

fn ms(v: &AtomicU64) -> Option<u64> {
    Some(v.load(Ordering::Acquire)).filter(|&v| v != UNSET)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(UNSET - 1)
}

impl TaskState {
    fn view(&self) -> TaskView {
        let state = match self.state.load(Ordering::Acquire) {
            QUEUED => "queued",
            RUNNING => "running",
            DONE => "done",
            _ => "failed",
        };
        let mut v = TaskView {
            task: self.id.clone(),
            kind: "broadcast".to_owned(),
            state: state.to_owned(),
            rooms_total: self.rooms_total.load(Ordering::Acquire),
            rooms_done: 0,
            rooms_failed: 0,
            delivered: 0,
            skipped: 0,
            pending: 0,
            queued_ms: ms(&self.queued_ms),
            duration_ms: ms(&self.duration_ms),
            rooms: Vec::new(),
        };
        let rooms = self.rooms.lock();
        v.rooms.reserve(rooms.len());
        for (room, part) in rooms.iter() {
            match part.state {
                RoomState::Running => {}
                RoomState::Done => v.rooms_done += 1,
                RoomState::Failed => {
                    v.rooms_done += 1;
                    v.rooms_failed += 1;
                }
            }
            v.delivered += part.progress.delivered;
            v.skipped += part.progress.skipped;
            v.pending += part.progress.pending;
            v.rooms.push(RoomTaskView {
                room: room.0,
                state: part.state.name().to_owned(),
                delivered: part.progress.delivered,
                skipped: part.progress.skipped,
                pending: part.progress.pending,
            });
        }
        v
    }

    fn finished(&self) -> bool {
        self.state.load(Ordering::Acquire) >= DONE
    }

    fn fail(&self) {
        self.state.store(FAILED, Ordering::Release);
    }

    /// Records a room's answer; `None`: the room failed.
    fn update(&self, room: RoomId, p: Option<BroadcastProgress>) {
        let part = match p {
            Some(progress) => RoomPart {
                state: if progress.pending == 0 {
                    RoomState::Done
                } else {
                    RoomState::Running
                },
                progress,
            },
            None => RoomPart {
                state: RoomState::Failed,
                progress: BroadcastProgress::default(),
            },
        };
        self.rooms.lock().insert(room, part);
    }

    /// How many rooms answered, and the totals over them.
    fn totals(&self) -> (usize, BroadcastProgress) {
        let rooms = self.rooms.lock();
        let mut total = BroadcastProgress::default();
        for part in rooms.values() {
            total.add(&part.progress);
        }
        (rooms.len(), total)
    }

    /// Whether `room` still has connections holding it.
    fn is_running(&self, room: RoomId) -> bool {
        self.rooms
            .lock()
            .get(&room)
            .is_some_and(|p| p.state == RoomState::Running)
    }

    /// Stops following `room`: its counts stay as last reported.
    fn settle_room(&self, room: RoomId) {
        if let Some(part) = self.rooms.lock().get_mut(&room) {
            part.state = RoomState::Done;
        }
    }

    /// Stops following the rooms still running: their counts stay as last
    /// reported.
    fn settle(&self) {
        for part in self.rooms.lock().values_mut() {
            if part.state == RoomState::Running {
                part.state = RoomState::Done;
            }
        }
    }
}

/// The table of recent tasks.
#[derive(Default)]
pub(crate) struct Tasks {
    by_id: DashMap<String, Arc<TaskState>>,
    order: Mutex<VecDeque<Arc<TaskState>>>,
}

impl Tasks {
    /// Registers a new queued task.
    pub(crate) fn create(&self, id: String) -> Arc<TaskState> {
        let t = Arc::new(TaskState {
            id: id.clone(),
            created: Instant::now(),
            state: AtomicU8::new(QUEUED),
            rooms_total: AtomicU64::new(0),
            queued_ms: AtomicU64::new(UNSET),
            duration_ms: AtomicU64::new(UNSET),
            rooms: Mutex::new(BTreeMap::new()),
        });
        let mut evicted = Vec::new();
        {
            let mut order = self.order.lock();
            order.push_back(t.clone());
            while let Some(front) = order.front() {
                let too_many = order.len() > MAX_TASKS;
                let too_old = front.finished() && front.created.elapsed() > TASK_TTL;
                if !(too_many || too_old) {
                    break;
                }
                if let Some(old) = order.pop_front() {
                    evicted.push(old);
                }
            }
        }
        for old in evicted {
            self.by_id.remove(&old.id);
        }
        self.by_id.insert(id, t.clone());
        t
    }

    /// The task's current view, if it is still known.
    pub(crate) fn get(&self, id: &str) -> Option<TaskView> {
        let t = self.by_id.get(id)?.clone();
        if t.finished() && t.created.elapsed() > TASK_TTL {
            return None;
        }
        Some(t.view())
    }
}

/// What a broadcast task needs.
pub(crate) struct BroadcastDeps {
    pub(crate) cfg: Arc<CenterConfig>,
    pub(crate) dir: Arc<dyn Directory>,
    pub(crate) rooms: Arc<dyn Rooms>,
    pub(crate) metrics: Arc<Metrics>,
}

/// A broadcast waiting in the lane.
struct Waiting {
    task: Arc<TaskState>,
    msg: Arc<EncodedMsg>,
}

/// The broadcast lane (see the module docs).
pub(crate) struct Lane {
    tx: mpsc::Sender<Waiting>,
    /// Smoothed time a broadcast holds its slot, ms.
    slot_ms: Arc<AtomicU64>,
    at_once: usize,
}

/// A place in the lane, taken before the broadcast takes its id.
pub(crate) struct Place(mpsc::OwnedPermit<Waiting>);

impl Lane {
    /// Starts the lane; it stops taking broadcasts when `stop` is
    /// cancelled (what still waits then fails), and the running ones stop
    /// following their stragglers.
    pub(crate) fn start(
        deps: BroadcastDeps,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Lane {
        let cap = deps.cfg.broadcast_queue.max(1);
        let at_once = deps.cfg.broadcasts_at_once.max(1);
        let (tx, rx) = mpsc::channel(cap);
        let slot_ms = Arc::new(AtomicU64::new(0));
        tracker.spawn(run_lane(
            rx,
            Arc::new(deps),
            Arc::new(Semaphore::new(at_once)),
            slot_ms.clone(),
            stop,
            tracker.clone(),
        ));
        Lane {
            tx,
            slot_ms,
            at_once,
        }
    }

    /// A place in the lane, or 429 `overloaded` when it is full (with the
    /// time the broadcasts ahead would take as `Retry-After`).
    pub(crate) fn reserve(&self) -> Result<Place, ApiError> {
        match self.tx.clone().try_reserve_owned() {
            Ok(p) => Ok(Place(p)),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let ahead = (self.tx.max_capacity() + self.at_once) as u64;
                let each = self.slot_ms.load(Ordering::Relaxed);
                let wait = Duration::from_millis(each.saturating_mul(ahead) / self.at_once as u64);
                Err(ApiError::Overloaded {
                    retry_after_s: retry_after(wait),
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::ShuttingDown),
        }
    }

    /// Tasks waiting for a slot.
    pub(crate) fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

impl Place {
    /// Queues the broadcast `msg` as `task`.
    pub(crate) fn send(self, task: Arc<TaskState>, msg: Arc<EncodedMsg>) {
        self.0.send(Waiting { task, msg });
    }
}

async fn run_lane(
    mut rx: mpsc::Receiver<Waiting>,
    deps: Arc<BroadcastDeps>,
    slots: Arc<Semaphore>,
    slot_ms: Arc<AtomicU64>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            w = rx.recv() => w,
        };
        let Some(w) = next else { break };
        let slot = tokio::select! {
            biased;
            () = stop.cancelled() => {
                w.task.fail();
                break;
            }
            s = Arc::clone(&slots).acquire_owned() => s,
        };
        let Ok(slot) = slot else { break };
        tracker.spawn(run_broadcast(
            w,
            slot,
            Arc::clone(&deps),
            Arc::clone(&slot_ms),
            stop.clone(),
        ));
    }
    // Stopping: nothing waiting will run.
    rx.close();
    while let Ok(w) = rx.try_recv() {
        w.task.fail();
        deps.metrics
            .push_errors
            .get_or_create(&KindLabel { kind: "broadcast" })
            .inc();
    }
}

/// Runs one broadcast over every live room, holding `slot` until it is
/// nearly written everywhere.
async fn run_broadcast(
    w: Waiting,
    slot: OwnedSemaphorePermit,
    deps: Arc<BroadcastDeps>,
    slot_ms: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let Waiting { task, msg } = w;
    let started = Instant::now();
    task.queued_ms
        .store(millis(task.created.elapsed()), Ordering::Release);
    task.state.store(RUNNING, Ordering::Release);
    let metrics = &deps.metrics;
    let list = match deps.dir.rooms().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%e, task = %task.id, "broadcast failed: no room list");
            task.fail();
            metrics
                .push_errors
                .get_or_create(&KindLabel { kind: "broadcast" })
                .inc();
            return;
        }
    };
    task.rooms_total.store(list.len() as u64, Ordering::Release);
    let slot = Mutex::new(Some(slot));
    // Gives the slot up once every room answered and all but 0.1 % of the
    // connections that queued it wrote it.
    let release = || {
        if slot.lock().is_none() {
            return;
        }
        let (answered, total) = task.totals();
        if answered < list.len() || total.pending > (total.delivered + total.pending) / 1000 {
            return;
        }
        if slot.lock().take().is_some() {
            let held = millis(started.elapsed());
            let old = slot_ms.load(Ordering::Relaxed);
            let new = if old == 0 {
                held
            } else {
                old - old / 4 + held / 4
            };
            slot_ms.store(new, Ordering::Relaxed);
        }
    };
    let rooms = list.iter().map(|r| {
        let (task, msg, deps, stop, release) = (&task, &msg, &deps, &stop, &release);
        async move {
            let room = r.room;
            match deps.rooms.broadcast(room, msg).await {
                Ok(p) => task.update(room, Some(p)),
                Err(e) => {
                    tracing::warn!(%e, task = %task.id, "broadcast to room failed");
                    deps.metrics.room_errors.inc();
                    task.update(room, None);
                }
            }
            release();
            // Follow the room's stragglers.
            let mut pause = FIRST_POLL;
            while task.is_running(room) && started.elapsed() < deps.cfg.broadcast_wait {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_POLL);
                match deps.rooms.broadcast_progress(room, msg.id).await {
                    Ok(Some(p)) => task.update(room, Some(p)),
                    // The room forgot it (restarted, or too many since):
                    // what it last said stands.
                    Ok(None) => task.settle_room(room),
                    // Asked again next time; a room that left the
                    // membership stops answering and the wait ends it.
                    Err(e) => tracing::debug!(%e, %room, "broadcast progress unknown"),
                }
                release();
            }
        }
    });
    join_all(rooms).await;
    drop(slot);
    task.settle();
    let (_, total) = task.totals();
    metrics.deliveries.inc_by(total.delivered);
    metrics.broadcast_skipped.inc_by(total.skipped);
    metrics
        .broadcast_seconds
        .observe(started.elapsed().as_secs_f64());
    task.duration_ms
        .store(millis(started.elapsed()), Ordering::Release);
    task.state.store(DONE, Ordering::Release);
    metrics
        .pushes
        .get_or_create(&KindLabel { kind: "broadcast" })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_tasks() {
        let t = Tasks::default();
        for i in 0..(MAX_TASKS + 5) {
            t.create(format!("t{i}"));
        }
        assert!(t.get("t0").is_none());
        assert!(t.get("t4").is_none());
        assert!(t.get("t5").is_some());
        assert_eq!(
            t.get(&format!("t{}", MAX_TASKS + 4)).map(|v| v.state),
            Some("queued".to_owned())
        );
        assert_eq!(t.by_id.len(), MAX_TASKS);
    }
}
