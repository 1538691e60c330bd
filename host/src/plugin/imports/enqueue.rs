//! `enqueue` and `enqueue-many`: follow-up tasks from a plugin, each push
//! bounded by its own time-out, since the epoch deadline cannot interrupt a
//! host call.

use std::time::Duration;

use crate::plugin::bindings::wit::{self, Enqueued};
use crate::plugin::store::CallState;
use crate::queue::{BaseQueue, NewTask, Pushed};

/// Largest payload a plugin may enqueue.
const MAX_ENQUEUE_PAYLOAD: usize = 16 << 20;

/// How long an `enqueue` may wait (e.g. for room in a full queue).
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// A task as a plugin hands it over, as the queue takes it; the target
/// queue is the caller's to resolve.
pub(crate) fn new_task(task: wit::NewTask) -> NewTask {
    NewTask {
        payload: task.payload,
        unique_key: task.unique_key,
        delay: task.delay_ms.map(Duration::from_millis),
    }
}

/// Checks a plugin's task and names its target: the queue it asks for, or
/// the running batch's queue when it names none.
fn target(state: &CallState, mut task: wit::NewTask) -> Result<(String, NewTask), String> {
    if task.payload.len() > MAX_ENQUEUE_PAYLOAD {
        return Err(format!(
            "payload of {} bytes is over the {MAX_ENQUEUE_PAYLOAD}-byte limit",
            task.payload.len()
        ));
    }
    let name = if task.queue.is_empty() {
        state.queue.to_string()
    } else {
        std::mem::take(&mut task.queue)
    };
    Ok((name, new_task(task)))
}

/// Enqueues one task.
pub(super) async fn enqueue(state: &mut CallState, task: wit::NewTask) -> Result<Enqueued, String> {
    let (name, new) = target(state, task)?;
    let queue = state.ctx.queues.queue(&name).map_err(|e| e.to_string())?;
    let mut pushed = push_within_timeout(&*queue, &name, vec![new]).await?;
    pushed
        .pop()
        .map(enqueued)
        .ok_or_else(|| format!("queue {name:?} answered no result"))
}

/// Enqueues tasks with one push per target queue; one result per task, in order.
pub(super) async fn enqueue_many(
    state: &mut CallState,
    tasks: Vec<wit::NewTask>,
) -> Vec<Result<Enqueued, String>> {
    let mut out: Vec<Result<Enqueued, String>> = Vec::with_capacity(tasks.len());
    // Per target queue, in first-seen order: the tasks and their slots in `out`.
    let mut groups: Vec<(String, Vec<usize>, Vec<NewTask>)> = Vec::new();
    for task in tasks {
        let (name, new) = match target(state, task) {
            Ok(t) => t,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        let slot = out.len();
        out.push(Err(String::new()));
        match groups.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, slots, batch)) => {
                slots.push(slot);
                batch.push(new);
            }
            None => groups.push((name, vec![slot], vec![new])),
        }
    }
    for (name, slots, batch) in groups {
        let pushed = match state.ctx.queues.queue(&name) {
            Ok(queue) => push_within_timeout(&*queue, &name, batch).await,
            Err(e) => Err(e.to_string()),
        };
        match pushed {
            Ok(results) => {
                for (slot, p) in slots.into_iter().zip(results) {
                    out[slot] = Ok(enqueued(p));
                }
            }
            Err(e) => {
                for slot in slots {
                    out[slot] = Err(e.clone());
                }
            }
        }
    }
    out
}

/// Pushes a batch, giving up after [`ENQUEUE_TIMEOUT`].
async fn push_within_timeout(
    queue: &dyn BaseQueue,
    name: &str,
    batch: Vec<NewTask>,
) -> Result<Vec<Pushed>, String> {
    let n = batch.len();
    match tokio::time::timeout(ENQUEUE_TIMEOUT, queue.push_batch(batch)).await {
        Ok(Ok(results)) if results.len() == n => Ok(results),
        Ok(Ok(results)) => Err(format!(
            "queue {name:?} answered {} results for {n} tasks",
            results.len()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "enqueue to {name:?} timed out after {ENQUEUE_TIMEOUT:?}"
        )),
    }
}

fn enqueued(p: Pushed) -> Enqueued {
    match p {
        Pushed::Created(id) => Enqueued::Created(id),
        Pushed::Duplicate(id) => Enqueued::Duplicate(id),
    }
}
