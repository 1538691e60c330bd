//! taskhost plugin that ships log lines to a reporting endpoint over HTTP.
//!
//! Configuration: `url`, the endpoint (its host must be in the plugin's
//! `allowed_hosts`). Every task's payload is one row, a JSON value (any
//! other bytes are sent as a JSON string). A batch, which may hold rows of
//! many jobs, becomes ONE `POST url` with the JSON array of its rows, in
//! batch order. A 2xx answer marks every row done; 4xx other than 408/429
//! fails them (the endpoint will never take them), and so does a refusal by
//! the host (the endpoint is not in `allowed_hosts`); anything else, or no
//! answer, retries the batch with the host's back-off. 429 and 503 are
//! retried by the host itself before the plugin sees them.

use taskhost_guest::{Handler, Outcome, Task, config, export_handler, http, warn};

/// The JSON array of a batch's rows.
pub fn body(batch: &[Task]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.iter().map(|t| t.payload.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, t) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if serde_json::from_slice::<serde_json::Value>(&t.payload).is_ok() {
            out.extend_from_slice(&t.payload);
        } else {
            let text = String::from_utf8_lossy(&t.payload);
            out.extend_from_slice(
                serde_json::Value::from(text.as_ref())
                    .to_string()
                    .as_bytes(),
            );
        }
    }
    out.push(b']');
    out
}

/// What a status code means for every row of the batch.
pub fn outcome(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Done,
        408 | 429 => Outcome::Retry(None),
        400..=499 => Outcome::Fail(format!("the endpoint refused the batch with {status}")),
        _ => Outcome::Retry(None),
    }
}

struct LogReport;

impl Handler for LogReport {
    fn handle(batch: Vec<Task>) -> Vec<Outcome> {
        let Some(url) = config("url").filter(|u| !u.is_empty()) else {
            let why = "log-report: no `url` in the plugin's config".to_string();
            return batch.iter().map(|_| Outcome::Fail(why.clone())).collect();
        };
        let one = match http::post(&url, "application/json", &body(&batch)) {
            Ok(resp) => outcome(resp.status),
            // Not allowed to reach the endpoint: no retry can help.
            Err(http::Error::Refused(e)) => Outcome::Fail(format!("log-report: POST {url}: {e}")),
            Err(e) => {
                warn(&format!("log-report: POST {url}: {e}"));
                Outcome::Retry(None)
            }
        };
        batch.iter().map(|_| one.clone()).collect()
    }
}

export_handler!(LogReport);

#[cfg(test)]
mod tests {
    use super::*;

    fn task(payload: &str) -> Task {
        Task {
            id: 1,
            queue: "logs".into(),
            unique_key: None,
            payload: payload.as_bytes().to_vec(),
            attempt: 1,
            enqueued_at_ms: 0,
        }
    }

    #[test]
    fn a_batch_is_one_json_array_of_rows() {
        let b = body(&[task(r#"{"job":1,"line":"a"}"#), task("plain \"text\"")]);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v[0]["job"], 1);
        assert_eq!(v[1], "plain \"text\"");
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(outcome(204), Outcome::Done);
        assert_eq!(outcome(429), Outcome::Retry(None));
        assert_eq!(outcome(502), Outcome::Retry(None));
        assert!(matches!(outcome(400), Outcome::Fail(_)));
    }
}
