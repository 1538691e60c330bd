//! Task records: the one JSON shape a producer uses for a task, shared by
//! `host push --format ndjson` and `POST /v1/queues/{queue}/tasks`.
//!
//! A record is `{"payload": "text"}` or `{"payload_base64": "..."}` (exactly
//! one of the two), with optional `unique_key` and `delay_ms`.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::queue::NewTask;

/// One task as a producer writes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    /// The payload as UTF-8 text.
    #[serde(default)]
    pub payload: Option<String>,
    /// The payload as standard base64 (any bytes).
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// Pushing a key that is still in the queue answers `duplicate`.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// Hold the task back this many milliseconds.
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// A record that is not a task, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct RecordError {
    /// "line 7" (NDJSON) or "tasks[6]" (a JSON envelope).
    pub place: String,
    /// What is wrong with it.
    pub message: String,
}

impl TaskRecord {
    /// The task this record describes.
    pub fn into_task(self) -> Result<NewTask, String> {
        let payload = match (self.payload, self.payload_base64) {
            (Some(p), None) => p.into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| format!("payload_base64 is not valid base64: {e}"))?,
            (Some(_), Some(_)) => {
                return Err("give either payload or payload_base64, not both".into());
            }
            (None, None) => return Err("a task needs payload or payload_base64".into()),
        };
        if let Some(k) = &self.unique_key
            && k.is_empty()
        {
            return Err("unique_key must not be empty".into());
        }
        Ok(NewTask {
            payload,
            unique_key: self.unique_key,
            delay: self.delay_ms.filter(|&d| d > 0).map(Duration::from_millis),
        })
    }
}

/// Parses one JSON record.
pub fn parse_record(json: &[u8]) -> Result<NewTask, String> {
    let r: TaskRecord = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    r.into_task()
}

/// Parses NDJSON: one record per line; blank lines (and a `\r` before the
/// `\n`, as JSON allows) are skipped. Errors name the 1-based line.
pub fn parse_ndjson(body: &[u8]) -> Result<Vec<NewTask>, RecordError> {
    let mut tasks = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let task = parse_record(line).map_err(|message| RecordError {
            place: format!("line {}", n + 1),
            message,
        })?;
        tasks.push(task);
    }
    Ok(tasks)
}

/// The `{"tasks": [...]}` envelope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    tasks: Vec<serde_json::Value>,
}

/// Parses `{"tasks": [record, ...]}`. Errors name the record's index.
pub fn parse_envelope(body: &[u8]) -> Result<Vec<NewTask>, RecordError> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| RecordError {
        place: "body".into(),
        message: format!("expected {{\"tasks\": [...]}}: {e}"),
    })?;
    env.tasks
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<TaskRecord>(v)
                .map_err(|e| e.to_string())
                .and_then(TaskRecord::into_task)
                .map_err(|message| RecordError {
                    place: format!("tasks[{i}]"),
                    message,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_text_and_base64_and_name_the_bad_line() {
        let body = b"{\"payload\":\"a\"}\n\n{\"payload_base64\":\"AP8=\",\"unique_key\":\"k\",\"delay_ms\":5}\r\n";
        let t = parse_ndjson(body).unwrap();
        assert_eq!(t[0].payload, b"a");
        assert_eq!(t[1].payload, [0u8, 255]);
        assert_eq!(t[1].unique_key.as_deref(), Some("k"));
        assert_eq!(t[1].delay, Some(Duration::from_millis(5)));
        let e = parse_ndjson(b"{\"payload\":\"a\"}\n{\"payload_base64\":\"!!\"}\n").unwrap_err();
        assert_eq!(e.place, "line 2");
        assert!(e.message.contains("base64"), "{e}");
        let e = parse_envelope(br#"{"tasks":[{"payload":"x"},{"nope":1}]}"#).unwrap_err();
        assert_eq!(e.place, "tasks[1]");
        assert!(parse_record(br#"{"payload":"x","payload_base64":"eA=="}"#).is_err());
    }
}
