//! taskhost plugin that refreshes execution statuses, as Harbor's
//! `execution:id:*:status_outdate` sweep did, but driven by a queue.
//!
//! Each task names one execution and the states of its tasks, as UTF-8 text
//! separated by spaces:
//!
//! ```text
//! <execution id> <task state> <task state> ...
//! ```
//!
//! Task states are `pending`, `scheduled`, `running`, `success`, `error` and
//! `stopped` (case-insensitive). The execution's status follows Harbor's
//! rule ([`summarize`]):
//!
//! 1. any task `running`, or some `pending`/`scheduled` next to finished ones -> `running`;
//! 2. all tasks `pending`/`scheduled` (or none at all) -> `pending`;
//! 3. all finished, any `error` -> `error`;
//! 4. all finished, any `stopped` -> `stopped`;
//! 5. all `success` -> `success`.
//!
//! The results of a batch, `<execution id> <status>` each, are enqueued
//! together (one `enqueue-many` call) on the follow-up queue
//! named by the configuration key `output_queue` (default
//! `execution-status`) with the execution id as unique key: a result for an
//! execution whose previous result is still pending collapses into it.
//! Producers push refresh requests with the execution id as unique key too,
//! so marking an execution outdated three times while a refresh is pending
//! costs one refresh (Harbor's SADD, without losing what a dead host popped).
//!
//! A malformed payload fails (dead-letters) with a reason naming the problem;
//! a refused enqueue answers `retry`.

use taskhost_guest::{Handler, NewTask, Outcome, Task, export_handler};

/// Follow-up queue used when the configuration has no `output_queue`.
const DEFAULT_OUTPUT: &str = "execution-status";

/// Status of an execution or of one of its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started.
    Pending,
    /// Waiting for a start time.
    Scheduled,
    /// In progress.
    Running,
    /// Finished well.
    Success,
    /// Finished with an error.
    Error,
    /// Stopped by a user.
    Stopped,
}

impl State {
    /// Parses a state name, ignoring case.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "pending" => State::Pending,
            "scheduled" => State::Scheduled,
            "running" => State::Running,
            "success" => State::Success,
            "error" => State::Error,
            "stopped" => State::Stopped,
            _ => return None,
        })
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Scheduled => "scheduled",
            State::Running => "running",
            State::Success => "success",
            State::Error => "error",
            State::Stopped => "stopped",
        }
    }

    fn waiting(self) -> bool {
        matches!(self, State::Pending | State::Scheduled)
    }
}

/// The status of an execution whose tasks are in `states` (Harbor's rule).
pub fn summarize(states: &[State]) -> State {
    let waiting = states.iter().filter(|s| s.waiting()).count();
    if states.contains(&State::Running) || (waiting > 0 && waiting < states.len()) {
        State::Running
    } else if waiting == states.len() {
        State::Pending
    } else if states.contains(&State::Error) {
        State::Error
    } else if states.contains(&State::Stopped) {
        State::Stopped
    } else {
        State::Success
    }
}

/// Parses one refresh request: the execution id and its tasks' states.
pub fn parse(payload: &[u8]) -> Result<(String, Vec<State>), String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_owned())?;
    let mut words = text.split_whitespace();
    let id = words
        .next()
        .ok_or_else(|| "empty payload: expected `<execution id> <task state> ...`".to_owned())?;
    let states = words
        .map(|w| {
            State::parse(w).ok_or_else(|| {
                format!(
                    "execution {id}: unknown task state {w:?} (pending, scheduled, running, success, error, stopped)"
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((id.to_owned(), states))
}

/// The plugin type exported as the component's handler.
struct StatusRefresh;

impl Handler for StatusRefresh {
    fn handle(batch: Vec<Task>) -> Vec<Outcome> {
        let queue = match taskhost_guest::config("output_queue") {
            Some(q) if !q.is_empty() => q,
            _ => DEFAULT_OUTPUT.to_owned(),
        };
        // Derive every status first, then enqueue all results in one host
        // call: one queue round trip per batch, not one per execution.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        for task in &batch {
            match refresh(task, &queue) {
                Ok(result) => {
                    outcomes.push(None);
                    results.push(result);
                }
                Err(reason) => outcomes.push(Some(Outcome::Fail(reason))),
            }
        }
        if results.is_empty() {
            return outcomes.into_iter().flatten().collect();
        }
        let mut pushed = taskhost_guest::enqueue_many(&results)
            .into_iter()
            .zip(&results);
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| match pushed.next() {
                    Some((Ok(_), _)) => Outcome::Done,
                    Some((Err(err), result)) => {
                        let id = result.unique_key.as_deref().unwrap_or("?");
                        taskhost_guest::warn(&format!(
                            "execution {id}: enqueue to {queue} refused: {err}"
                        ));
                        Outcome::Retry(None)
                    }
                    None => Outcome::Retry(None),
                })
            })
            .collect()
    }
}

export_handler!(StatusRefresh);

/// The follow-up task carrying a task's execution status, or why the
/// payload cannot be read.
fn refresh(task: &Task, queue: &str) -> Result<NewTask, String> {
    let (id, states) = parse(&task.payload)?;
    let status = summarize(&states);
    Ok(NewTask {
        queue: queue.to_owned(),
        payload: format!("{id} {}", status.name()).into_bytes(),
        unique_key: Some(id),
        delay_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    #[test]
    fn harbor_rule() {
        assert_eq!(summarize(&[Success, Running, Error]), Running);
        assert_eq!(summarize(&[Success, Pending]), Running);
        assert_eq!(summarize(&[Pending, Scheduled]), Pending);
        assert_eq!(summarize(&[]), Pending);
        assert_eq!(summarize(&[Success, Error, Stopped]), Error);
        assert_eq!(summarize(&[Success, Stopped]), Stopped);
        assert_eq!(summarize(&[Success, Success]), Success);
    }

    #[test]
    fn payloads() {
        assert_eq!(
            parse(b"exec-7 success RUNNING").unwrap(),
            ("exec-7".to_owned(), vec![Success, Running])
        );
        assert!(parse(b"").unwrap_err().contains("empty"));
        let e = parse(b"exec-7 done").unwrap_err();
        assert!(e.contains("exec-7") && e.contains("done"), "{e}");
    }
}
