//! `host peek`: list a queue's tasks in one state without taking them.

use anyhow::Result;
use clap::Args;
use taskhost::queue::{PeekedTask, TaskId, TaskState};

use super::StoreArgs;
use super::ops::with_admin;

/// Options of `host peek`.
#[derive(Debug, Args)]
pub struct PeekArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Queue name.
    queue: String,
    /// Which tasks: pending, delayed, leased or dead.
    #[arg(long, default_value = "pending")]
    state: TaskState,
    /// Most tasks to list (at most 1000).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// List tasks with ids above this one (the last id of the previous page).
    #[arg(long)]
    after: Option<TaskId>,
    /// Print JSON (payload as base64, and as text when it is UTF-8).
    #[arg(long)]
    json: bool,
}

/// Prints the tasks, oldest (lowest id) first.
pub async fn peek(a: PeekArgs) -> Result<()> {
    let (state, after, limit) = (a.state, a.after, a.limit);
    let tasks = with_admin(&a.store, "peek", &a.queue, async |q| {
        Ok(q.peek(state, after, limit).await?)
    })
    .await?;
    if a.json {
        let items: Vec<_> = tasks.iter().map(|t| json(state, t)).collect();
        let next = if tasks.len() >= limit.min(1000) && limit > 0 {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        let out = serde_json::json!({
            "queue": a.queue, "state": state, "tasks": items, "next_after": next,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if tasks.is_empty() {
        outln!("(no {} tasks in queue {:?})", state.as_str(), a.queue);
    }
    for t in &tasks {
        let mut line = format!(
            "#{} attempt {} enqueued {}",
            t.id, t.attempt, t.enqueued_at_ms
        );
        if let Some(k) = &t.unique_key {
            line.push_str(&format!(" key {k:?}"));
        }
        if let Some(at) = t.at_ms {
            let label = if state == TaskState::Leased {
                "lease until"
            } else {
                "visible at"
            };
            line.push_str(&format!(" {label} {at}"));
        }
        if let Some(d) = &t.dead {
            line.push_str(&format!(" failed at {}: {}", d.failed_at_ms, d.reason));
        }
        outln!("{line}");
        match std::str::from_utf8(&t.payload) {
            Ok(s) => outln!("  payload: {s}"),
            Err(_) => outln!("  payload (hex): {}", hex(&t.payload)),
        }
    }
    Ok(())
}

fn json(state: TaskState, t: &PeekedTask) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": t.id, "unique_key": t.unique_key, "attempt": t.attempt,
        "enqueued_at_ms": t.enqueued_at_ms,
        "payload_base64": base64(&t.payload),
        "payload": std::str::from_utf8(&t.payload).ok(),
    });
    if let Some(at) = t.at_ms {
        let field = if state == TaskState::Leased {
            "lease_expires_at_ms"
        } else {
            "visible_at_ms"
        };
        v[field] = at.into();
    }
    if let Some(d) = &t.dead {
        v["reason"] = d.reason.clone().into();
        v["failed_at_ms"] = d.failed_at_ms.into();
    }
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Standard base64 with padding (RFC 4648).
fn base64(b: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, coded) in cases {
            assert_eq!(super::base64(plain.as_bytes()), coded);
        }
    }
}
