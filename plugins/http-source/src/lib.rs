//! taskhost source plugin that fetches tasks from an HTTP endpoint.
//!
//! Configuration: `url` (its host must be in the plugin's `allowed_hosts`).
//! Each poll is `GET url?max=N` (`&max=N` if the URL has a query). The
//! endpoint answers 204 or an empty body for "nothing now", or 200 with a
//! JSON array whose items are a string (the payload) or an object
//! `{"payload": "...", "unique_key": "...", "delay_ms": 1000}`. Any other
//! status, or a body that is not such an array, fails the poll (the host
//! backs off and polls again).

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "source-plugin",
    });
}

use bindings::exports::taskhost::plugin::source::Guest;
use bindings::taskhost::plugin::types::NewTask;

/// The poll URL for at most `max` tasks.
pub fn poll_url(url: &str, max: u32) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}max={max}")
}

/// Reads an answer body into tasks (at most `max`).
pub fn parse(body: &[u8], max: u32) -> Result<Vec<NewTask>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let items: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not a JSON array: {e}"))?;
    items
        .into_iter()
        .take(max as usize)
        .enumerate()
        .map(|(i, v)| match v {
            serde_json::Value::String(s) => Ok(NewTask {
                queue: String::new(),
                payload: s.into_bytes(),
                unique_key: None,
                delay_ms: None,
            }),
            serde_json::Value::Object(o) => {
                let payload = o
                    .get("payload")
                    .and_then(|p| p.as_str())
                    .ok_or_else(|| format!("item {i} has no string `payload`"))?;
                Ok(NewTask {
                    queue: String::new(),
                    payload: payload.as_bytes().to_vec(),
                    unique_key: o
                        .get("unique_key")
                        .and_then(|k| k.as_str())
                        .map(str::to_owned),
                    delay_ms: o.get("delay_ms").and_then(|d| d.as_u64()),
                })
            }
            _ => Err(format!("item {i} is neither a string nor an object")),
        })
        .collect()
}

struct HttpSource;

impl Guest for HttpSource {
    fn poll(max: u32) -> Result<Vec<NewTask>, String> {
        let url = bindings::taskhost::plugin::host::get_config("url")
            .filter(|u| !u.is_empty())
            .ok_or("http-source: no `url` in the plugin's config")?;
        let resp = taskhost_guest::http::get(&poll_url(&url, max)).map_err(|e| e.to_string())?;
        match resp.status {
            204 => Ok(Vec::new()),
            200 => parse(&resp.body, max),
            s => Err(format!("GET {url} answered {s}")),
        }
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(HttpSource with_types_in bindings);

#[cfg(not(target_arch = "wasm32"))]
const _: fn(u32) -> Result<Vec<NewTask>, String> = <HttpSource as Guest>::poll;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_answers() {
        assert_eq!(poll_url("http://h/t", 3), "http://h/t?max=3");
        assert_eq!(poll_url("http://h/t?q=1", 3), "http://h/t?q=1&max=3");
        assert!(parse(b"", 5).unwrap().is_empty());
        let got = parse(
            br#"["a", {"payload":"b","unique_key":"k","delay_ms":5}, "c"]"#,
            2,
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].unique_key.as_deref(), Some("k"));
        assert_eq!(got[1].delay_ms, Some(5));
        assert!(parse(b"{}", 5).is_err());
        assert!(parse(b"[1]", 5).is_err());
    }
}
