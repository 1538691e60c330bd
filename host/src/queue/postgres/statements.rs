//! The SQL of one schema: each statement of `sql/` with the schema's
//! name and wake channel filled in.

/// The statements of one schema, with its name filled in.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) push: String,
    pub(super) holders: String,
    pub(super) lease: String,
    pub(super) renew: String,
    pub(super) ack: String,
    pub(super) ack_keyed: String,
    pub(super) settle: String,
    pub(super) trim_dead: String,
    pub(super) dead_letters: String,
    pub(super) stats: String,
    pub(super) lock: String,
    pub(super) count: String,
    pub(super) notify: String,
    pub(super) queues: String,
    pub(super) heartbeat: String,
    pub(super) hosts: String,
    pub(super) reloads: String,
    pub(super) request_reload: String,
    pub(super) gone_hosts: String,
    pub(super) reclaim: String,
    pub(super) deregister: String,
    pub(super) vacuum: String,
}

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        let s = |sql: &str| fill(sql, schema);
        Self {
            push: s(include_str!("sql/push.sql")),
            holders: s(include_str!("sql/holders.sql")),
            lease: s(include_str!("sql/lease.sql")),
            renew: s(include_str!("sql/renew.sql")),
            ack: s(include_str!("sql/ack.sql")),
            ack_keyed: s(include_str!("sql/ack_keyed.sql")),
            settle: s(include_str!("sql/settle.sql")),
            trim_dead: s(include_str!("sql/trim_dead.sql")),
            dead_letters: s(include_str!("sql/dead_letters.sql")),
            stats: s(include_str!("sql/stats.sql")),
            lock: s(include_str!("sql/lock.sql")),
            count: s(include_str!("sql/count.sql")),
            notify: s("SELECT pg_notify(@channel@, $1)::text"),
            queues: s("SELECT name FROM @schema@.queues ORDER BY name"),
            heartbeat: s(
                "INSERT INTO @schema@.hosts (id, info, expires_at)
                 VALUES ($1, $2::text::jsonb, now() + make_interval(secs => $3))
                 ON CONFLICT (id) DO UPDATE SET info = EXCLUDED.info, expires_at = EXCLUDED.expires_at",
            ),
            hosts: s("SELECT info::text FROM @schema@.hosts WHERE expires_at > now()"),
            reloads: s("SELECT reloads FROM @schema@.hosts WHERE id = $1"),
            request_reload: s(
                "UPDATE @schema@.hosts SET reloads = reloads + 1 WHERE expires_at > now()",
            ),
            gone_hosts: s(include_str!("sql/gone_hosts.sql")),
            reclaim: s(include_str!("sql/reclaim.sql")),
            deregister: s(include_str!("sql/deregister.sql")),
            vacuum: s("VACUUM (SKIP_LOCKED) @schema@.tasks"),
        }
    }
}

/// `sql` with `@schema@` replaced by the quoted schema name and
/// `@channel@` by the wake channel as a string literal. The schema name
/// is checked to be `[A-Za-z0-9_]+`, so neither needs escaping.
pub(super) fn fill(sql: &str, schema: &str) -> String {
    sql.replace("@schema@", &format!("\"{schema}\""))
        .replace("@channel@", &format!("'{}'", channel(schema)))
}

/// The `NOTIFY` channel of a schema.
pub(super) fn channel(schema: &str) -> String {
    format!("{schema}.wake")
}
