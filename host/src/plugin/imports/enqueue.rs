//! `enqueue` and `enqueue-many`: follow-up tasks from a plugin.
//!
//! A plugin may only enqueue to its own queue and the queues it is granted
//! (`enqueue_to`, by default the queues its config names as outputs), so it
//! cannot feed work to another plugin that holds other grants, nor create
//! queues without bound. What it hands over is capped per call and per
//! batch in tasks and bytes (`limits.enqueue_*`), and pushed in chunks so
//! no single queue round trip (one Redis script, one SQLite transaction)
//! grows with the plugin's list. Every push is bounded by a time-out, since
//! the epoch deadline cannot interrupt a host call.

use std::time::Duration;

use tokio::time::Instant;

use crate::plugin::bindings::wit::{self, Enqueued};
use crate::plugin::store::CallState;
use crate::queue::{BaseQueue, NewTask, Pushed};

/// Largest payload a plugin may enqueue.
const MAX_ENQUEUE_PAYLOAD: usize = 16 << 20;

/// How long one `enqueue`/`enqueue-many` call may wait (e.g. for room in a
/// full queue), all of its pushes together.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most tasks pushed to a queue in one round trip.
const CHUNK_TASKS: usize = 256;

/// Most bytes pushed to a queue in one round trip (a chunk holds at least
/// one task, whatever its size).
const CHUNK_BYTES: usize = 1 << 20;

/// A task as a plugin hands it over, as the queue takes it; the target
/// queue is the caller's to resolve.
pub(crate) fn new_task(task: wit::NewTask) -> NewTask {
    NewTask {
        payload: task.payload,
        unique_key: task.unique_key,
        delay: task.delay_ms.map(Duration::from_millis),
    }
}

/// Bytes a task costs against the enqueue caps: payload and unique key.
fn task_bytes(task: &wit::NewTask) -> usize {
    task.payload
        .len()
        .saturating_add(task.unique_key.as_ref().map_or(0, String::len))
}

/// Checks a plugin's task and names its target: the queue it asks for, or
/// the running batch's queue when it names none; a queue it is not granted
/// is refused.
fn target(state: &CallState, mut task: wit::NewTask) -> Result<(String, NewTask), String> {
    if task.payload.len() > MAX_ENQUEUE_PAYLOAD {
        return Err(format!(
            "payload of {} bytes is over the {MAX_ENQUEUE_PAYLOAD}-byte limit",
            task.payload.len()
        ));
    }
    let name = if task.queue.is_empty() || task.queue == *state.queue {
        state.queue.to_string()
    } else if state.ctx.enqueue_to.contains(&task.queue) {
        std::mem::take(&mut task.queue)
    } else {
        return Err(refused_queue(state, &task.queue));
    };
    Ok((name, new_task(task)))
}

fn refused_queue(state: &CallState, queue: &str) -> String {
    let granted: Vec<&str> = state.ctx.enqueue_to.iter().map(String::as_str).collect();
    format!(
        "plugin {} may not enqueue to queue {queue:?}: only its own queue {:?} and its enqueue_to grants {granted:?}",
        state.ctx.spec.name, &*state.queue
    )
}

/// Checks a call of `tasks` tasks and `bytes` bytes against the per-call
/// and per-batch caps and, if it fits, counts it against the batch.
fn admit(state: &mut CallState, tasks: usize, bytes: usize) -> Result<(), String> {
    let l = &state.ctx.spec.limits;
    let (done_tasks, done_bytes) = state.enqueued;
    let batch_tasks = done_tasks.saturating_add(tasks);
    let batch_bytes = done_bytes.saturating_add(bytes);
    let caps = [
        (
            tasks,
            l.enqueue_call_tasks,
            "tasks in one call",
            "enqueue_call_tasks",
        ),
        (
            bytes,
            l.enqueue_call_bytes,
            "bytes in one call",
            "enqueue_call_bytes",
        ),
        (
            batch_tasks,
            l.enqueue_batch_tasks,
            "tasks in this batch",
            "enqueue_batch_tasks",
        ),
        (
            batch_bytes,
            l.enqueue_batch_bytes,
            "bytes in this batch",
            "enqueue_batch_bytes",
        ),
    ];
    for (n, cap, what, key) in caps {
        if n > cap {
            return Err(format!(
                "enqueue refused: {n} {what} is over limits.{key} = {cap}"
            ));
        }
    }
    state.enqueued = (batch_tasks, batch_bytes);
    Ok(())
}

/// Enqueues one task.
pub(super) async fn enqueue(state: &mut CallState, task: wit::NewTask) -> Result<Enqueued, String> {
    let bytes = task_bytes(&task);
    let (name, new) = target(state, task)?;
    admit(state, 1, bytes)?;
    let queue = state.ctx.queues.queue(&name).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + ENQUEUE_TIMEOUT;
    push_chunked(&*queue, &name, vec![new], deadline)
        .await
        .pop()
        .ok_or_else(|| format!("queue {name:?} answered no result"))?
        .map(enqueued)
}

/// Enqueues tasks, pushed per target queue in chunks; one result per task,
/// in order. A call over a cap is refused whole, each task naming the cap.
pub(super) async fn enqueue_many(
    state: &mut CallState,
    tasks: Vec<wit::NewTask>,
) -> Vec<Result<Enqueued, String>> {
    let bytes = tasks
        .iter()
        .fold(0usize, |sum, t| sum.saturating_add(task_bytes(t)));
    if let Err(e) = admit(state, tasks.len(), bytes) {
        return vec![Err(e); tasks.len()];
    }
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
    let deadline = Instant::now() + ENQUEUE_TIMEOUT;
    for (name, slots, batch) in groups {
        let results = match state.ctx.queues.queue(&name) {
            Ok(queue) => push_chunked(&*queue, &name, batch, deadline).await,
            Err(e) => vec![Err(e.to_string()); slots.len()],
        };
        for (slot, r) in slots.into_iter().zip(results) {
            out[slot] = r.map(enqueued);
        }
    }
    out
}

/// Pushes `tasks` in chunks of at most [`CHUNK_TASKS`] tasks and
/// [`CHUNK_BYTES`] bytes, giving up at `deadline`; one result per task.
async fn push_chunked(
    queue: &dyn BaseQueue,
    name: &str,
    tasks: Vec<NewTask>,
    deadline: Instant,
) -> Vec<Result<Pushed, String>> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut rest = tasks.into_iter().peekable();
    while rest.peek().is_some() {
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        while let Some(t) = rest.peek() {
            let size = t.payload.len() + t.unique_key.as_ref().map_or(0, String::len);
            if !chunk.is_empty() && (chunk.len() >= CHUNK_TASKS || bytes + size > CHUNK_BYTES) {
                break;
            }
            bytes += size;
            chunk.extend(rest.next());
        }
        let n = chunk.len();
        match push_until(queue, name, chunk, deadline).await {
            Ok(pushed) => out.extend(pushed.into_iter().map(Ok)),
            Err(e) => out.extend(std::iter::repeat_n(Err(e), n)),
        }
    }
    out
}

/// Pushes one chunk, giving up at `deadline`.
async fn push_until(
    queue: &dyn BaseQueue,
    name: &str,
    chunk: Vec<NewTask>,
    deadline: Instant,
) -> Result<Vec<Pushed>, String> {
    let n = chunk.len();
    match tokio::time::timeout_at(deadline, queue.push_batch(chunk)).await {
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
