//! Broadcast tasks: a broadcast is accepted at once (202) and then runs over
//! every live room, with per-room progress that `GET /tasks/{task}` reports.
//!
//! A room that fails is counted in `rooms_failed` (and in `rooms_done`); the
//! task still finishes, as `done`. A task is `failed` only when the list of
//! rooms could not be read. The table keeps the newest [`MAX_TASKS`] tasks,
//! and drops finished ones after [`TASK_TTL`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::future::join_all;
use parking_lot::Mutex;
use proto::EncodedMsg;
use register::Directory;
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::{KindLabel, Metrics};
use crate::Rooms;

/// Tasks kept at most.
pub const MAX_TASKS: usize = 1000;
/// Finished tasks are forgotten after this long.
pub const TASK_TTL: Duration = Duration::from_secs(3600);

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const FAILED: u8 = 3;

/// Progress of one task, updated while it runs.
#[derive(Debug)]
pub(crate) struct TaskState {
    id: String,
    created: Instant,
    state: AtomicU8,
    rooms_total: AtomicU64,
    rooms_done: AtomicU64,
    rooms_failed: AtomicU64,
    delivered: AtomicU64,
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
    /// `queued`, `running`, `done` or `failed`.
    #[schema(example = "done")]
    pub state: String,
    /// Live rooms when the task started.
    pub rooms_total: u64,
    /// Rooms finished (including failed ones).
    pub rooms_done: u64,
    /// Rooms that could not be reached.
    pub rooms_failed: u64,
    /// Connections written.
    pub delivered: u64,
}

impl TaskState {
    fn view(&self) -> TaskView {
        let state = match self.state.load(Ordering::Acquire) {
            QUEUED => "queued",
            RUNNING => "running",
            DONE => "done",
            _ => "failed",
        };
        TaskView {
            task: self.id.clone(),
            kind: "broadcast".to_owned(),
            state: state.to_owned(),
            rooms_total: self.rooms_total.load(Ordering::Acquire),
            rooms_done: self.rooms_done.load(Ordering::Acquire),
            rooms_failed: self.rooms_failed.load(Ordering::Acquire),
            delivered: self.delivered.load(Ordering::Acquire),
        }
    }

    fn finished(&self) -> bool {
        self.state.load(Ordering::Acquire) >= DONE
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
            rooms_done: AtomicU64::new(0),
            rooms_failed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
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

/// Runs a broadcast over every live room.
pub(crate) async fn run_broadcast(
    task: Arc<TaskState>,
    msg: Arc<EncodedMsg>,
    dir: Arc<dyn Directory>,
    rooms: Arc<dyn Rooms>,
    metrics: Arc<Metrics>,
) {
    let started = Instant::now();
    task.state.store(RUNNING, Ordering::Release);
    let list = match dir.rooms().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%e, task = %task.id, "broadcast failed: no room list");
            task.state.store(FAILED, Ordering::Release);
            metrics
                .push_errors
                .get_or_create(&KindLabel { kind: "broadcast" })
                .inc();
            return;
        }
    };
    task.rooms_total.store(list.len() as u64, Ordering::Release);
    let calls = list.iter().map(|r| {
        let (task, msg, rooms, metrics) = (&task, &msg, &rooms, &metrics);
        async move {
            match rooms.broadcast(r.room, msg).await {
                Ok(n) => {
                    task.delivered.fetch_add(n, Ordering::AcqRel);
                    metrics.deliveries.inc_by(n);
                }
                Err(e) => {
                    tracing::warn!(%e, task = %task.id, "broadcast to room failed");
                    metrics.room_errors.inc();
                    task.rooms_failed.fetch_add(1, Ordering::AcqRel);
                }
            }
            task.rooms_done.fetch_add(1, Ordering::AcqRel);
        }
    });
    join_all(calls).await;
    task.state.store(DONE, Ordering::Release);
    metrics
        .pushes
        .get_or_create(&KindLabel { kind: "broadcast" })
        .inc();
    metrics
        .push_latency
        .observe(started.elapsed().as_secs_f64());
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
