use std::future::Future;

use jobs::{
    JobStore, PgStore, SqliteStore,
    testing::{ScratchPostgres, ScratchSqlite},
};

/// A fresh, migrated PostgreSQL store; see [`ScratchPostgres`].
pub struct PgDatabase {
    pub store: PgStore,
    scratch: ScratchPostgres,
}

impl PgDatabase {
    /// `None` (with a message) when `DATABASE_URL` is unset; CI sets it.
    pub async fn create() -> Option<Self> {
        let scratch = ScratchPostgres::create("jobs_test").await?;
        let store = PgStore::new(scratch.pool.clone());
        store.migrate().await.unwrap();
        Some(Self { store, scratch })
    }

    pub async fn drop_database(self) {
        self.scratch.drop_database().await;
    }
}

/// A fresh, migrated SQLite store; see [`ScratchSqlite`].
pub struct SqliteDatabase {
    pub store: SqliteStore,
    scratch: ScratchSqlite,
}

impl SqliteDatabase {
    pub async fn create() -> Self {
        let scratch = ScratchSqlite::create("jobs_test").await;
        let store = SqliteStore::new(scratch.pool.clone());
        store.migrate().await.unwrap();
        Self { store, scratch }
    }

    pub async fn remove(self) {
        self.scratch.remove().await;
    }
}

/// Runs `test` against a fresh SQLite store and, when configured, a fresh
/// PostgreSQL store.
pub async fn on_both<F, Fut1, Fut2>(sqlite: impl FnOnce(SqliteStore) -> Fut1, postgres: F)
where
    Fut1: Future<Output = ()>,
    F: FnOnce(PgStore) -> Fut2,
    Fut2: Future<Output = ()>,
{
    let db = SqliteDatabase::create().await;
    sqlite(db.store.clone()).await;
    db.remove().await;
    if let Some(db) = PgDatabase::create().await {
        postgres(db.store.clone()).await;
        db.drop_database().await;
    }
}

/// Declares a test that runs the generic async fn `$body(store)` on both stores.
#[macro_export]
macro_rules! both_stores {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::support::on_both(|s| body::$name(s), |s| body::$name(s)).await;
        }
    };
}
