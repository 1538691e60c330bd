//! Operator actions on a [`MemoryQueue`]: everything under its one lock.

use std::sync::atomic::Ordering;

use async_trait::async_trait;

use super::{Entry, MemoryQueue, State};
use crate::queue::admin::{
    AdminError, DeadInfo, PeekPage, PeekedTask, QueueAdmin, TaskState, Which,
};
use crate::queue::{Task, TaskId};

fn peeked(t: &Task, at_ms: Option<u64>, dead: Option<DeadInfo>) -> PeekedTask {
    PeekedTask {
        id: t.id,
        unique_key: t.unique_key.clone(),
        attempt: t.attempt,
        enqueued_at_ms: t.enqueued_at_ms,
        at_ms,
        payload: t.payload.clone(),
        dead,
    }
}

/// The state a live entry is in at `now`, and its time if it has one.
fn state_at(e: &Entry, now: u64) -> (TaskState, Option<u64>) {
    match e.state {
        State::Ready => (TaskState::Pending, None),
        State::Delayed(at) if at <= now => (TaskState::Pending, Some(at)),
        State::Delayed(at) => (TaskState::Delayed, Some(at)),
        State::Leased(until) if until <= now => (TaskState::Pending, Some(until)),
        State::Leased(until) => (TaskState::Leased, Some(until)),
    }
}

fn selected(which: &Which, id: TaskId) -> bool {
    match which {
        Which::All => true,
        Which::Ids(ids) => ids.contains(&id),
    }
}

#[async_trait]
impl QueueAdmin for MemoryQueue {
    async fn peek_page(&self, page: PeekPage) -> Result<Vec<PeekedTask>, AdminError> {
        let now = self.clock.now_ms();
        let g = self.lock();
        let mut out: Vec<PeekedTask> = if page.state == TaskState::Dead {
            g.dead
                .iter()
                .filter(|d| d.task.id > page.after)
                .map(|d| {
                    let info = DeadInfo {
                        reason: d.reason.clone(),
                        failed_at_ms: d.failed_at_ms,
                    };
                    peeked(&d.task, None, Some(info))
                })
                .collect()
        } else {
            // Ids first, payloads copied only for the page: a scrape's
            // oldest-pending peek over a big queue holds the lock briefly.
            let mut hits: Vec<(TaskId, Option<u64>)> = g
                .tasks
                .values()
                .filter(|e| e.task.id > page.after)
                .filter_map(|e| match state_at(e, now) {
                    (s, at) if s == page.state => Some((e.task.id, at)),
                    _ => None,
                })
                .collect();
            if hits.len() > page.limit {
                hits.select_nth_unstable(page.limit);
                hits.truncate(page.limit);
            }
            hits.iter()
                .filter_map(|(id, at)| g.tasks.get(id).map(|e| peeked(&e.task, *at, None)))
                .collect()
        };
        out.sort_by_key(|t| t.id);
        out.truncate(page.limit);
        Ok(out)
    }

    async fn retry_dead(&self, which: Which) -> Result<u64, AdminError> {
        let mut moved = 0;
        {
            let mut g = self.lock();
            let dead = std::mem::take(&mut g.dead);
            for d in dead {
                let key_taken = d
                    .task
                    .unique_key
                    .as_ref()
                    .is_some_and(|k| g.unique.contains_key(k));
                if !selected(&which, d.task.id) || key_taken {
                    g.dead.push_back(d);
                    continue;
                }
                let mut task = d.task;
                task.attempt = 0;
                let id = task.id;
                if let Some(k) = &task.unique_key {
                    g.unique.insert(k.clone(), id);
                }
                g.tasks.insert(
                    id,
                    Entry {
                        task,
                        state: State::Ready,
                    },
                );
                g.ready.push_back(id);
                moved += 1;
            }
        }
        if moved > 0 {
            self.work.notify_one();
        }
        Ok(moved)
    }

    async fn purge_dead(&self, which: Which) -> Result<u64, AdminError> {
        let mut g = self.lock();
        let before = g.dead.len();
        g.dead.retain(|d| !selected(&which, d.task.id));
        Ok((before - g.dead.len()) as u64)
    }

    async fn cancel(&self, id: TaskId) -> Result<(), AdminError> {
        let now = self.clock.now_ms();
        {
            let mut g = self.lock();
            let state = match g.tasks.get(&id) {
                Some(e) => match e.state {
                    State::Ready => State::Ready,
                    State::Delayed(at) => State::Delayed(at),
                    State::Leased(until) if until > now => {
                        return Err(AdminError::leased(&self.name, id));
                    }
                    State::Leased(until) => State::Leased(until),
                },
                None => {
                    return Err(AdminError::not_found(&self.name, id, "pending or delayed"));
                }
            };
            match state {
                State::Ready => g.ready.retain(|&r| r != id),
                State::Delayed(at) => drop(g.delayed.remove(&(at, id))),
                State::Leased(until) => drop(g.leases.remove(&(until, id))),
            }
            g.remove(id);
        }
        self.room.notify_waiters();
        Ok(())
    }

    async fn run_now(&self, id: TaskId) -> Result<(), AdminError> {
        let now = self.clock.now_ms();
        {
            let mut g = self.lock();
            let at = match g.tasks.get(&id).map(|e| &e.state) {
                Some(State::Delayed(at)) => *at,
                Some(State::Leased(until)) if *until > now => {
                    return Err(AdminError::leased(&self.name, id));
                }
                // Already visible: nothing to do.
                Some(_) => return Ok(()),
                None => {
                    return Err(AdminError::not_found(&self.name, id, "delayed"));
                }
            };
            g.delayed.remove(&(at, id));
            if let Some(e) = g.tasks.get_mut(&id) {
                e.state = State::Ready;
            }
            g.ready.push_back(id);
        }
        self.work.notify_one();
        Ok(())
    }

    async fn set_paused(&self, paused: bool) -> Result<(), AdminError> {
        self.paused.store(paused, Ordering::Relaxed);
        if !paused {
            self.work.notify_waiters();
        }
        Ok(())
    }

    async fn is_paused(&self) -> Result<bool, AdminError> {
        Ok(self.paused.load(Ordering::Relaxed))
    }
}
