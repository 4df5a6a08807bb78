//! Scratch databases for tests of the engine and of the apps built on it:
//! each test gets its own PostgreSQL database (when `DATABASE_URL` is set)
//! or SQLite file, and removes it afterwards.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use sqlx::{Connection as _, Executor as _, PgConnection, PgPool, SqlitePool};

pub use crate::postgres::with_database;

/// `<prefix>_<pid>_<n>_<time>`: unique across tests and test processes.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}_{}_{n}_{:x}",
        std::process::id(),
        nanos & 0xffff_ffff
    )
}

/// The URL of a service a test needs (`DATABASE_URL`, `NATS_URL`), or
/// `None` to skip that test, saying so on stderr. Under
/// `REQUIRE_SERVICES=1` (set by `.ci/run`) an unset variable fails the
/// test instead: in CI a missing service must not pass as a skip.
#[allow(
    clippy::print_stderr,
    reason = "test support: the skip notice and the failure report"
)]
pub fn service_url(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("REQUIRE_SERVICES").is_ok_and(|v| v == "1") => panic!(
            "{variable} is not set but REQUIRE_SERVICES=1: this test needs the service \
             (.ci/run sets {variable} to the service on loopback)"
        ),
        _ => {
            eprintln!("skipping the part that needs {variable}: it is not set");
            None
        }
    }
}

/// A PostgreSQL database of its own, on the server `DATABASE_URL` names.
#[derive(Debug)]
pub struct ScratchPostgres {
    /// A pool on the new database.
    pub pool: PgPool,
    /// Its URL.
    pub url: String,
    admin_url: String,
    name: String,
}

impl ScratchPostgres {
    /// `None` when `DATABASE_URL` is unset (see [`service_url`]: under
    /// `REQUIRE_SERVICES=1` that fails instead). Panics when it is set but
    /// unreachable.
    #[allow(clippy::expect_used, reason = "test support: a panic is the report")]
    pub async fn create(prefix: &str) -> Option<Self> {
        let admin_url = service_url("DATABASE_URL")?;
        let name = unique_name(prefix);
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("DATABASE_URL is set but unreachable");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create the scratch database");
        let url = with_database(&admin_url, &name);
        let pool = crate::postgres::connect(&url, "test", 8, std::time::Duration::from_secs(30))
            .await
            .expect("connect to the scratch database");
        Some(Self {
            pool,
            url,
            admin_url,
            name,
        })
    }

    /// Closes the pool and drops the database.
    #[allow(clippy::expect_used, reason = "test support: a panic is the report")]
    pub async fn drop_database(self) {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .expect("reconnect to drop the database");
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .expect("drop the scratch database");
        // Roles are the server's, not the database's: drop the ones named
        // after it (see `roles::app_role`).
        let roles: Vec<String> =
            sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)")
                .bind(format!("{}_", self.name))
                .fetch_all(&mut admin)
                .await
                .expect("list the scratch database's roles");
        for role in roles {
            admin
                .execute(format!("DROP ROLE IF EXISTS \"{}\"", role.replace('"', "\"\"")).as_str())
                .await
                .expect("drop a scratch role");
        }
    }
}

/// An SQLite file of its own in the temporary folder.
#[derive(Debug)]
pub struct ScratchSqlite {
    /// A pool on the file (see [`crate::sqlite::connect`]).
    pub pool: SqlitePool,
    /// Its URL.
    pub url: String,
    path: PathBuf,
}

impl ScratchSqlite {
    /// Creates the file.
    #[allow(clippy::expect_used, reason = "test support: a panic is the report")]
    pub async fn create(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name(prefix)));
        let url = format!("sqlite://{}", path.display());
        let pool = crate::sqlite::connect(&url)
            .await
            .expect("create the scratch SQLite file");
        Self { pool, url, path }
    }

    /// Closes the pool and deletes the file and its journals.
    pub async fn remove(self) {
        self.pool.close().await;
        for suffix in ["", "-wal", "-shm", ".setup.lock"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

/// Fills a migrated PostgreSQL jobs table with `rows` jobs as a week of a
/// busy platform leaves them (`testing/busy_week.sql` says what is in
/// them), then `VACUUM ANALYZE`, as autovacuum would. For the console's
/// plan tests; its benchmark runs the same file through psql.
pub async fn seed_busy_week(pool: &sqlx::PgPool, rows: i64) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql(include_str!("../testing/busy_week.sql"))
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_temp.seed_busy_week($1)")
        .bind(rows)
        .execute(&mut *conn)
        .await?;
    sqlx::query("VACUUM ANALYZE jobs.job")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
