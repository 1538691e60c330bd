//! Keeping the `tasks` table as small as its backlog.
//!
//! Every lease and every settlement leaves a dead row version (acks delete
//! their rows), and PostgreSQL reuses that space only once a `VACUUM` has
//! passed. Autovacuum looks at most once a minute by default, so a queue
//! moving 10,000 tasks a second grew its table by about 390 bytes a task,
//! past 200 MiB in a minute, and every lease scanned the dead index entries
//! at the front of its index. So each host vacuums the table itself after
//! every [`PostgresOptions::vacuum_every`](super::PostgresOptions) tasks it
//! settled: `VACUUM (SKIP_LOCKED)`, which skips the table when another host
//! or autovacuum is vacuuming it. It runs on the settling call (tens of
//! milliseconds for a table the size of a small backlog), so no background
//! task is needed.

use std::sync::atomic::Ordering;

use super::Shared;

impl Shared {
    /// Counts `n` settled tasks; vacuums `tasks` when the count crosses a
    /// multiple of `vacuum_every`. A failed vacuum (say the host's role does
    /// not own the table) is logged, not returned: the settlement stands
    /// and autovacuum still runs.
    pub(super) async fn settled(&self, n: u64) {
        let every = self.opts.vacuum_every;
        if every == 0 || n == 0 {
            return;
        }
        let before = self.settled.fetch_add(n, Ordering::Relaxed);
        if before / every == (before + n) / every {
            return;
        }
        let started = std::time::Instant::now();
        let r = match self.conn().await {
            Ok(conn) => conn
                .batch_execute(&self.sql.vacuum)
                .await
                .map_err(|e| self.pg_error(e)),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => tracing::debug!(took = ?started.elapsed(), "vacuumed the tasks table"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot vacuum the tasks table; autovacuum still runs")
            }
        }
    }
}
