//! A taskhost plugin: handles batches of tasks taken from a queue.

wit_bindgen::generate!({ path: "wit", world: "handler-plugin" });

use exports::taskhost::plugin::handler::Guest;
use taskhost::plugin::host::{self, Level};
use taskhost::plugin::types::{NewTask, Outcome, Task};

struct Plugin;

impl Guest for Plugin {
    /// Answers one outcome per task, in batch order.
    fn handle(batch: Vec<Task>) -> Vec<Outcome> {
        // Configuration: `--set greeting=hi` or `config = { greeting = "hi" }`.
        let greeting = host::get_config("greeting").unwrap_or_else(|| "hello".to_owned());
        batch
            .iter()
            .map(|task| {
                host::log(
                    Level::Info,
                    &format!("{greeting}: task {}, {} bytes", task.id, task.payload.len()),
                );
                if task.queue == "followups" {
                    return Outcome::Done;
                }
                // A follow-up task, for whatever serves the `followups` queue.
                let follow_up = NewTask {
                    queue: "followups".to_owned(),
                    payload: format!("after {}", task.id).into_bytes(),
                    unique_key: None,
                    delay_ms: None,
                };
                match host::enqueue(&follow_up) {
                    Ok(_) => Outcome::Done,
                    Err(reason) => {
                        host::log(Level::Warn, &format!("cannot enqueue: {reason}"));
                        Outcome::Retry(None)
                    }
                }
            })
            .collect()
    }
}

export!(Plugin);
