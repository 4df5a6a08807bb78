use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use contracts::jobs::v1::AggregateWindowArgs;
use ingest::{
    reading::Reading,
    sink::WriteReport,
    store::{PgReadingStore, ReadingStore as _, SqliteReadingStore, postgres::migrator},
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
            Self::Postgres(pool) => PgReadingStore::new(pool.clone())
                .write_batch(readings, &rules())
                .await
                .unwrap(),
            Self::Sqlite(pool) => SqliteReadingStore::new(pool.clone())
                .write_batch(readings, &rules())
                .await
                .unwrap(),
        }
    }

    async fn aggregation_jobs(&self) -> Vec<serde_json::Value> {
        let filter = jobs::ListFilter {
            kind: Some(<AggregateWindowArgs as contracts::JobArgs>::KIND.into()),
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
    ingest::store::sqlite::migrator()
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

/// Waits (up to 20 s) until `sessions` other sessions of this database are
/// blocked on a lock: the deterministic point where both transactions hold
/// what they hold and want what the other has.
async fn until_waiting_on_locks(pool: &PgPool, sessions: i64) {
    service_runtime::testing::wait_until(
        &format!("{sessions} sessions waiting on a lock"),
        std::time::Duration::from_secs(20),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            (waiting >= sessions).then_some(())
        },
    )
    .await;
}

async fn migrated_postgres(prefix: &str) -> Option<jobs::testing::ScratchPostgres> {
    let postgres = jobs::testing::ScratchPostgres::create(prefix).await?;
    jobs::postgres::migrator()
        .run(&postgres.pool)
        .await
        .unwrap();
    migrator().run(&postgres.pool).await.unwrap();
    Some(postgres)
}

/// Two batches holding the same readings in opposite orders (a batch and
/// its resend, assembled by different batchers), started together: a
/// third transaction holds one "gate" reading of each, so both batches
/// wait at their gate and then run on at the same instant. They must
/// serialise on the shared readings, not deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_and_its_resend_in_opposite_orders_do_not_deadlock() {
    let Some(postgres) = migrated_postgres("ingest_order").await else {
        return;
    };
    let pool = postgres.pool.clone();
    let mut gate = pool.begin().await.unwrap();
    for id in ["a-gate-1", "a-gate-2"] {
        sqlx::query(
            "INSERT INTO ingest.reading (event_id, tenant_id, device_id, metric, value, observed_at)
             VALUES ($1, 'acme', 'gate', 'temperature_c', 0, now())",
        )
        .bind(id)
        .execute(&mut *gate)
        .await
        .unwrap();
    }
    let one = vec![
        reading("r1", "d1", 1),
        reading("a-gate-1", "gate", 2),
        reading("r2", "d2", 3),
    ];
    let other = vec![
        reading("r2", "d2", 3),
        reading("a-gate-2", "gate", 2),
        reading("r1", "d1", 1),
    ];
    let spawn = |batch: Vec<Reading>| {
        let pool = pool.clone();
        tokio::spawn(async move {
            PgReadingStore::new(pool.clone())
                .write_batch(&batch, &rules())
                .await
        })
    };
    let (one, other) = (spawn(one), spawn(other));
    until_waiting_on_locks(&pool, 2).await;
    gate.rollback().await.unwrap();
    let one = one.await.unwrap().expect("first batch");
    let other = other.await.unwrap().expect("second batch");
    assert_eq!(
        one.inserted + other.inserted,
        4,
        "r1, r2 and both gates stored once: {one:?} {other:?}"
    );
    assert_eq!(one.duplicates + other.duplicates, 2);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.reading")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 4);
    postgres.drop_database().await;
}

/// A deadlock no ordering inside the sink can prevent (another session
/// takes the same locks in the other order) costs the sink one retry, not
/// the batch: PostgreSQL aborts the sink's transaction (it waited first,
/// so its deadlock check runs first) and the sink runs it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_aborted_by_a_deadlock_is_retried_and_stored() {
    let Some(postgres) = migrated_postgres("ingest_retry").await else {
        return;
    };
    let pool = postgres.pool.clone();
    PgReadingStore::new(pool.clone())
        .write_batch(&[reading("seed", "d1", 1)], &rules())
        .await
        .unwrap();
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '60s'")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM ingest.series_watermark WHERE device_id = 'd1' FOR UPDATE")
        .execute(&mut *other)
        .await
        .unwrap();
    let sink = {
        let pool = pool.clone();
        tokio::spawn(async move {
            PgReadingStore::new(pool.clone())
                .write_batch(&[reading("contested", "d1", 2)], &rules())
                .await
        })
    };
    // The sink holds `contested` and waits for the watermark; now take
    // `contested` from the other side.
    until_waiting_on_locks(&pool, 1).await;
    sqlx::query(
        "INSERT INTO ingest.reading (event_id, tenant_id, device_id, metric, value, observed_at)
         VALUES ('contested', 'acme', 'd1', 'temperature_c', 2, now())
         ON CONFLICT DO NOTHING",
    )
    .execute(&mut *other)
    .await
    .unwrap();
    other.commit().await.unwrap();
    let report = sink
        .await
        .unwrap()
        .expect("the sink retries a transaction the deadlock detector aborted");
    assert_eq!(
        (report.inserted, report.duplicates),
        (0, 1),
        "the other session stored it first"
    );
    postgres.drop_database().await;
}

/// Event ids are the producer's, so they are unique per tenant only: a
/// tenant publishing another tenant's event ids stores its own readings
/// and learns nothing about the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_are_unique_per_tenant_not_across_tenants() {
    on_both(|store| async move {
        let acme = reading("e1", "d1", 5);
        let mut globex = reading("e1", "d1", 6);
        globex.tenant_id = "globex".into();
        let first = store.write(std::slice::from_ref(&acme)).await;
        assert_eq!((first.inserted, first.duplicates), (1, 0));
        let other = store.write(std::slice::from_ref(&globex)).await;
        assert_eq!(
            (other.inserted, other.duplicates),
            (1, 0),
            "another tenant's event id is not a duplicate"
        );
        let again = store.write(&[acme, globex]).await;
        assert_eq!(
            (again.inserted, again.duplicates),
            (0, 2),
            "each tenant's own redelivery is"
        );
        assert_eq!(store.readings().await, 2);
    })
    .await;
}

/// A database written before readings were keyed by tenant keeps every
/// row through the migration: readings, and dead letters, which gain the
/// tenant their payload named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_key_migration_keeps_existing_data() {
    // SQLite.
    let sqlite = jobs::testing::ScratchSqlite::create("ingest_migrate").await;
    jobs::sqlite::migrator().run(&sqlite.pool).await.unwrap();
    jobs::embedded_migrator(
        200_001,
        "ingest",
        include_str!("../../migrations/sqlite/200001_ingest.sql"),
    )
    .run(&sqlite.pool)
    .await
    .unwrap();
    for (event, tenant) in [("e1", "acme"), ("e2", "globex")] {
        sqlx::query(
            "INSERT INTO ingest_reading (event_id, tenant_id, device_id, metric, value, observed_at, ingested_at)
             VALUES (?, ?, 'd1', 'temperature_c', 1.5, 1000, 2000)",
        )
        .bind(event)
        .bind(tenant)
        .execute(&sqlite.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO ingest_dead_letter (received_at, source, event_id, field, reason, payload)
         VALUES (1, 'grpc', 'bad', 'value', 'must be finite', '{\"tenant_id\": \"acme\"}')",
    )
    .execute(&sqlite.pool)
    .await
    .unwrap();
    // The new version starts: a fresh pool migrates the file and serves.
    sqlite.pool.close().await;
    let upgraded = SqliteReadingStore::connect(&sqlite.url).await.unwrap();
    upgraded.migrate().await.unwrap();
    let pool = upgraded.pool().clone();
    let kept: Vec<(String, String, f64, i64)> = sqlx::query_as(
        "SELECT tenant_id, event_id, value, observed_at FROM ingest_reading ORDER BY event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        [
            ("acme".to_owned(), "e1".to_owned(), 1.5, 1000),
            ("globex".to_owned(), "e2".to_owned(), 1.5, 1000)
        ]
    );
    let letter: Option<String> = sqlx::query_scalar("SELECT tenant_id FROM ingest_dead_letter")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(letter.as_deref(), Some("acme"));
    let store = Store::Sqlite(pool.clone());
    let mut theirs = reading("e1", "d1", 5);
    theirs.tenant_id = "globex".into();
    assert_eq!(
        store.write(&[theirs]).await.inserted,
        1,
        "keyed by tenant now"
    );
    pool.close().await;
    sqlite.remove().await;

    // PostgreSQL.
    let Some(postgres) = jobs::testing::ScratchPostgres::create("ingest_migrate").await else {
        return;
    };
    jobs::postgres::migrator()
        .run(&postgres.pool)
        .await
        .unwrap();
    jobs::embedded_migrator(
        200_001,
        "ingest",
        include_str!("../../migrations/postgres/200001_ingest.sql"),
    )
    .run(&postgres.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ingest.reading (event_id, tenant_id, device_id, metric, value, observed_at)
         VALUES ('e1', 'acme', 'd1', 'temperature_c', 1.5, now()), ('e2', 'globex', 'd1', 'temperature_c', 1.5, now())",
    )
    .execute(&postgres.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ingest.dead_letter (source, event_id, field, reason, payload)
         VALUES ('grpc', 'bad', 'value', 'must be finite', '{\"tenant_id\": \"acme\"}')",
    )
    .execute(&postgres.pool)
    .await
    .unwrap();
    migrator().run(&postgres.pool).await.unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.reading")
        .fetch_one(&postgres.pool)
        .await
        .unwrap();
    assert_eq!(kept, 2);
    let key: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'reading_pkey'",
    )
    .fetch_one(&postgres.pool)
    .await
    .unwrap();
    assert_eq!(key, "PRIMARY KEY (tenant_id, event_id)");
    let letter: Option<String> = sqlx::query_scalar("SELECT tenant_id FROM ingest.dead_letter")
        .fetch_one(&postgres.pool)
        .await
        .unwrap();
    assert_eq!(letter.as_deref(), Some("acme"));
    postgres.drop_database().await;
}
