//! Operator actions on a [`RedisQueue`]: each one Lua script
//! (`scripts/admin_*.lua`) or one command, so each is atomic.
//!
//! Dead letters live in a sorted set scored by task id, so a peek page or a
//! retry/purge step is a range read however many there are; retrying or
//! purging them all runs in steps of [`RedisOptions::script_elements`](super::RedisOptions)
//! so no script blocks Redis long. Cancel and run-now look a task up by id
//! in the lists (no index by id there): their cost grows with the queue.

use std::sync::OnceLock;

use async_trait::async_trait;
use redis::Value;

use super::codec::{unpack, unpack_dead};
use super::keys;
use super::queue::RedisQueue;
use super::script::{HELPERS, Program, array, int};
use crate::queue::TaskId;
use crate::queue::admin::{
    AdminError, DeadInfo, PeekPage, PeekedTask, QueueAdmin, TaskState, Which,
};

/// The operator scripts, hashed once per process.
struct AdminScripts {
    peek: Program,
    dead: Program,
    task: Program,
}

fn scripts() -> &'static AdminScripts {
    static SCRIPTS: OnceLock<AdminScripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| {
        use keys::*;
        let program = |keys, body| {
            Program::new(
                keys,
                &[HELPERS, include_str!("scripts/admin_helpers.lua")],
                body,
            )
        };
        AdminScripts {
            peek: program(
                &[LEASED, BATCHES, READY, DELAYED, DEAD],
                include_str!("scripts/admin_peek.lua"),
            ),
            dead: program(
                &[DEAD, UNIQUE, READY],
                include_str!("scripts/admin_dead.lua"),
            ),
            task: program(
                &[
                    READY, DELAYED, UNIQUE, LEASED, BATCHES, SIZES, HOLDERS, HELD,
                ],
                include_str!("scripts/admin_task.lua"),
            ),
        }
    })
}

/// A bulk or simple string reply as text.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

impl RedisQueue {
    /// One `peek` item from `at, bumped, element` (a dead letter for `dead`).
    fn peeked(&self, at: &Value, bumped: &Value, el: Value, dead: bool) -> Option<PeekedTask> {
        let Value::BulkString(el) = el else {
            return None;
        };
        let at_ms = text(at)
            .and_then(|t| t.parse::<f64>().ok())
            .map(|f| f as u64);
        let (info, e) = if dead {
            let (failed_at_ms, reason, e) = unpack_dead(el)?;
            (
                Some(DeadInfo {
                    reason,
                    failed_at_ms,
                }),
                e,
            )
        } else {
            (None, unpack(el).ok()?)
        };
        // A dead letter and a held lease carry the delivery they were at.
        let current = dead || int(bumped) == Some(1);
        let attempt = if current {
            e.attempts.saturating_add(1)
        } else {
            e.attempts
        };
        Some(PeekedTask {
            id: e.id,
            unique_key: e.key,
            attempt,
            enqueued_at_ms: e.enqueued_at,
            at_ms,
            payload: e.payload,
            dead: info,
        })
    }

    /// Runs `admin_dead.lua` for `op` over `which`; returns how many it changed.
    async fn dead_op(&self, op: &str, which: Which) -> Result<u64, AdminError> {
        let now = self.shared.clock.now_ms();
        let step = self.shared.opts.script_elements.max(1);
        let mut done = 0u64;
        match which {
            Which::All => {
                let mut cursor = "0".to_owned();
                loop {
                    let mut inv = self.shared.call(&scripts().dead, &self.prefix);
                    inv.arg(op).arg(now).arg("all").arg(&cursor).arg(step);
                    let (n, last, read) = self.dead_reply(self.shared.run(&inv).await?)?;
                    done += n;
                    if read < step as u64 {
                        return Ok(done);
                    }
                    cursor = last;
                }
            }
            Which::Ids(ids) => {
                for part in ids.chunks(step) {
                    let mut inv = self.shared.call(&scripts().dead, &self.prefix);
                    inv.arg(op).arg(now).arg("ids");
                    for id in part {
                        inv.arg(id);
                    }
                    done += self.dead_reply(self.shared.run(&inv).await?)?.0;
                }
                Ok(done)
            }
        }
    }

    fn dead_reply(&self, v: Value) -> Result<(u64, String, u64), AdminError> {
        let r = array(v).map_err(|v| self.bad_reply("dead-letter action", &v))?;
        match (
            r.first().and_then(int),
            r.get(1).and_then(text),
            r.get(2).and_then(int),
        ) {
            (Some(n), Some(last), Some(read)) => Ok((n.max(0) as u64, last, read.max(0) as u64)),
            _ => Err(self
                .bad_reply("dead-letter action", &Value::Array(r))
                .into()),
        }
    }

    /// Runs `admin_task.lua` for `op` on task `id`.
    async fn task_op(&self, op: &str, id: TaskId, wanted: &'static str) -> Result<(), AdminError> {
        let mut inv = self.shared.call(&scripts().task, &self.prefix);
        inv.arg(op).arg(self.shared.clock.now_ms()).arg(id);
        let v = self.shared.run(&inv).await?;
        match text(&v).as_deref() {
            Some("ok") => Ok(()),
            Some("leased") => Err(AdminError::leased(&self.name, id)),
            Some("none") => Err(AdminError::not_found(&self.name, id, wanted)),
            _ => Err(self.bad_reply("task action", &v).into()),
        }
    }
}

#[async_trait]
impl QueueAdmin for RedisQueue {
    async fn peek_page(&self, page: PeekPage) -> Result<Vec<PeekedTask>, AdminError> {
        let mut inv = self.shared.call(&scripts().peek, &self.prefix);
        inv.arg(self.shared.clock.now_ms())
            .arg(page.state.as_str())
            .arg(page.after)
            .arg(page.limit);
        let v = self.shared.run(&inv).await?;
        let r = array(v).map_err(|v| self.bad_reply("peek", &v))?;
        let mut out = Vec::with_capacity(r.len() / 3);
        let mut it = r.into_iter();
        while let (Some(at), Some(bumped), Some(el)) = (it.next(), it.next(), it.next()) {
            let shown = format!("{el:?}");
            match self.peeked(&at, &bumped, el, page.state == TaskState::Dead) {
                Some(t) => out.push(t),
                // Like the lease path: an element this layout cannot read
                // is reported, never a reason to hide the rest.
                None => {
                    tracing::warn!(queue = %self.name, element = %shown, "peek: unreadable element skipped")
                }
            }
        }
        Ok(out)
    }

    async fn retry_dead(&self, which: Which) -> Result<u64, AdminError> {
        self.dead_op("retry", which).await
    }

    async fn purge_dead(&self, which: Which) -> Result<u64, AdminError> {
        self.dead_op("purge", which).await
    }

    async fn cancel(&self, id: TaskId) -> Result<(), AdminError> {
        self.task_op("cancel", id, "pending or delayed").await
    }

    async fn run_now(&self, id: TaskId) -> Result<(), AdminError> {
        self.task_op("run", id, "delayed").await
    }

    async fn set_paused(&self, paused: bool) -> Result<(), AdminError> {
        let key = format!("{}{}", self.prefix, keys::PAUSED);
        let mut conn = self.shared.conn.clone();
        let mut pipe = redis::pipe();
        if paused {
            pipe.cmd("SET").arg(&key).arg(1).ignore();
        } else {
            // Resumed: idle hosts look at once rather than at their next poll.
            pipe.cmd("DEL").arg(&key).ignore();
            pipe.cmd("PUBLISH")
                .arg(format!("{}wake", self.prefix))
                .arg("")
                .ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))?;
        Ok(())
    }

    async fn is_paused(&self) -> Result<bool, AdminError> {
        let mut conn = self.shared.conn.clone();
        let n: i64 = redis::cmd("EXISTS")
            .arg(format!("{}{}", self.prefix, keys::PAUSED))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e))?;
        Ok(n > 0)
    }
}
