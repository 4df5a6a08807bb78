use std::{future::Future, path::PathBuf, sync::atomic::AtomicU64};

use jobs::{JobStore, PgStore, SqliteStore};
use sqlx::{Connection as _, Executor as _, PgConnection};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{n}_{:x}",
        std::process::id(),
        nanos & 0xffff_ffff
    )
}

/// A fresh PostgreSQL database, dropped by [`PgDatabase::drop_database`].
pub struct PgDatabase {
    pub store: PgStore,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// `None` (with a message) when `DATABASE_URL` is unset; CI sets it.
    pub async fn create() -> Option<Self> {
        let Ok(admin_url) = std::env::var("DATABASE_URL") else {
            eprintln!("skipping the PostgreSQL run: DATABASE_URL is not set");
            return None;
        };
        let name = unique_name("jobs_test");
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("DATABASE_URL is set but unreachable");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let url = with_database(&admin_url, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .unwrap();
        let store = PgStore::new(pool);
        store.migrate().await.unwrap();
        Some(Self {
            store,
            admin_url,
            name,
        })
    }

    pub async fn drop_database(self) {
        self.store.pool().close().await;
        let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .unwrap();
    }
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_end..].find('/').map(|i| i + authority_end);
    let base = path_start.map_or(base, |i| &base[..i]);
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A fresh SQLite file, deleted by [`SqliteDatabase::remove`].
pub struct SqliteDatabase {
    pub store: SqliteStore,
    pub path: PathBuf,
}

impl SqliteDatabase {
    pub async fn create() -> Self {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name("jobs_test")));
        let pool = jobs::sqlite::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let store = SqliteStore::new(pool);
        store.migrate().await.unwrap();
        Self { store, path }
    }

    pub async fn remove(self) {
        self.store.pool().close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
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
