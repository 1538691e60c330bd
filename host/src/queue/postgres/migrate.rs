//! Creating and upgrading the schema: numbered migrations, applied once.
//!
//! `migrations/NNNN_name.sql` are applied in order, each recorded in
//! `<schema>.schema_migrations`, all in one transaction under an advisory
//! lock, so hosts starting together apply each exactly once. A database
//! whose schema is newer than this binary knows is refused: an older host
//! would misread tables a newer one changed.
//!
//! A small runner rather than a migration crate: the SQL must be filled in
//! with a configurable schema name, and the runners for tokio-postgres
//! embed fixed SQL and keep their table outside that schema.

use deadpool_postgres::Object;

use super::fill;

/// Migrations in order: (version, name, SQL with `@schema@` placeholders).
pub(super) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "admin", include_str!("migrations/0002_admin.sql")),
    (3, "hosts", include_str!("migrations/0003_hosts.sql")),
    (
        4,
        "producer_grants",
        include_str!("migrations/0004_producer_grants.sql"),
    ),
    (
        5,
        "task_rows",
        include_str!("migrations/0005_task_rows.sql"),
    ),
];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Why the schema could not be brought to [`SCHEMA_VERSION`].
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// A newer host migrated this database.
    #[error(
        "schema {schema:?} is at version {found}, newer than this host knows ({known}); \
         upgrade the host (or use another schema)"
    )]
    Newer {
        /// The schema.
        schema: String,
        /// The version found.
        found: i32,
        /// [`SCHEMA_VERSION`].
        known: i32,
    },
}

/// Brings `schema` to [`SCHEMA_VERSION`].
pub(super) async fn migrate(conn: &mut Object, schema: &str) -> Result<(), Error> {
    let q = format!("\"{schema}\"");
    let tx = conn.transaction().await?;
    // Serialises hosts migrating the same schema; released at commit.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('taskhost-migrate:' || $1))::text",
        &[&schema],
    )
    .await?;
    // A schema an administrator created for the host's role is used as it
    // is: the host then needs no right to create schemas in the database
    // (`CREATE SCHEMA IF NOT EXISTS` checks that right first).
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {q}")).await?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {q}.schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let found: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {q}.schema_migrations"),
            &[],
        )
        .await?
        .try_get(0)?;
    if found > SCHEMA_VERSION {
        return Err(Error::Newer {
            schema: schema.to_owned(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(&fill(sql, schema)).await?;
        tx.execute(
            &format!("INSERT INTO {q}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[&version, &name],
        )
        .await?;
        tracing::info!(schema, version, name, "applied postgres migration");
    }
    tx.commit().await?;
    Ok(())
}
