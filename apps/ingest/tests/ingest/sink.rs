use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use ingest::{
    reading::Reading,
    sink::{AGGREGATE_WINDOW, WriteReport, migrator},
    window::Windowing,
};
use jobs::JobStore as _;
use sqlx::{PgPool, SqlitePool};

/// The store under test: PostgreSQL (when configured) or SQLite.
#[derive(Clone)]
enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Store {
    async fn write(&self, readings: &[Reading]) -> WriteReport {
        match self {
            Self::Postgres(pool) => ingest::sink::write_batch(pool, readings, &rules())
                .await
                .unwrap(),
            Self::Sqlite(pool) => ingest::sink::sqlite::write_batch(pool, readings, &rules())
                .await
                .unwrap(),
        }
    }

    async fn aggregation_jobs(&self) -> Vec<serde_json::Value> {
        let filter = jobs::ListFilter {
            kind: Some(AGGREGATE_WINDOW.into()),
            limit: 500,
            ..jobs::ListFilter::default()
        };
        let jobs = match self {
            Self::Postgres(pool) => jobs::PgStore::new(pool.clone())
                .list(&filter)
                .await
                .unwrap(),
            Self::Sqlite(pool) => jobs::SqliteStore::new(pool.clone())
                .list(&filter)
                .await
                .unwrap(),
        };
        jobs.into_iter().rev().map(|j| j.args).collect()
    }

    async fn readings(&self) -> i64 {
        match self {
            Self::Postgres(pool) => sqlx::query_scalar("SELECT count(*) FROM ingest.reading")
                .fetch_one(pool)
                .await
                .unwrap(),
            Self::Sqlite(pool) => sqlx::query_scalar("SELECT count(*) FROM ingest_reading")
                .fetch_one(pool)
                .await
                .unwrap(),
        }
    }
}

/// Runs `test` on a fresh SQLite file, then on a fresh PostgreSQL database
/// when `DATABASE_URL` is set.
async fn on_both<F, Fut>(test: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sqlite = jobs::testing::ScratchSqlite::create("ingest_test").await;
    jobs::sqlite::migrator().run(&sqlite.pool).await.unwrap();
    ingest::sink::sqlite::migrator()
        .run(&sqlite.pool)
        .await
        .unwrap();
    test(Store::Sqlite(sqlite.pool.clone())).await;
    sqlite.remove().await;
    if let Some(postgres) = jobs::testing::ScratchPostgres::create("ingest_test").await {
        jobs::postgres::migrator()
            .run(&postgres.pool)
            .await
            .unwrap();
        migrator().run(&postgres.pool).await.unwrap();
        test(Store::Postgres(postgres.pool.clone())).await;
        postgres.drop_database().await;
    }
}

fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn reading(id: &str, device: &str, seconds: i64) -> Reading {
    Reading {
        event_id: id.into(),
        tenant_id: "acme".into(),
        device_id: device.into(),
        metric: "temperature_c".into(),
        value: seconds as f64,
        observed_at: base() + Duration::seconds(seconds),
        attributes: BTreeMap::new(),
    }
}

fn rules() -> Windowing {
    Windowing {
        length: Duration::seconds(60),
        allowed_lateness: Duration::seconds(10),
        max_closed_per_batch: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_stores_nothing_twice_and_late_readings_reaggregate_once() {
    on_both(|store| async move {
        let first = [reading("e1", "d1", 5), reading("e2", "d1", 75)];
        let report = store.write(&first).await;
        assert_eq!(
            (report.inserted, report.duplicates, report.jobs_enqueued),
            (2, 0, 1),
            "window 10:00 closed at 10:01:05"
        );

        let again = store.write(&first).await;
        assert_eq!(
            (again.inserted, again.duplicates, again.jobs_enqueued),
            (0, 2, 0),
            "redelivery changes nothing"
        );

        let late = store.write(&[reading("e3", "d1", 30)]).await;
        assert_eq!(
            (late.inserted, late.jobs_enqueued),
            (1, 1),
            "a late reading re-triggers its window"
        );
        let later = store.write(&[reading("e4", "d1", 40)]).await;
        assert_eq!((later.inserted, later.jobs_enqueued), (1, 0), "once");

        let moved = store.write(&[reading("e5", "d1", 200)]).await;
        assert_eq!(
            moved.jobs_enqueued, 2,
            "the watermark passed 10:02:00 and 10:03:00"
        );

        let summary: Vec<(String, bool)> = store
            .aggregation_jobs()
            .await
            .iter()
            .map(|a| {
                (
                    a["window_start"].as_str().unwrap().to_owned(),
                    a["late"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("2026-11-24T10:00:00+00:00".to_owned(), false),
                ("2026-11-24T10:00:00+00:00".to_owned(), true),
                ("2026-11-24T10:01:00+00:00".to_owned(), false),
                ("2026-11-24T10:02:00+00:00".to_owned(), false),
            ]
        );
        assert_eq!(store.readings().await, 5);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_over_the_same_series_neither_deadlock_nor_double_enqueue() {
    on_both(|store| async move {
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..10 {
                    let batch: Vec<Reading> = ["d1", "d2", "d3"]
                        .iter()
                        .map(|d| reading(&format!("{d}-{round}"), d, i64::from(round) * 30))
                        .chain(std::iter::once(reading(
                            &format!("w{worker}-{round}"),
                            "d1",
                            i64::from(round) * 30 + 1,
                        )))
                        .collect();
                    store.write(&batch).await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut keys: Vec<String> = store
            .aggregation_jobs()
            .await
            .iter()
            .map(|a| format!("{}/{}/{}", a["device_id"], a["window_start"], a["late"]))
            .collect();
        let total = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), total, "no window enqueued twice");
        assert_eq!(
            store.readings().await,
            3 * 10 + 4 * 10,
            "every distinct event stored once"
        );
    })
    .await;
}
