use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use ingest::{
    reading::Reading,
    sink::{AGGREGATE_WINDOW, migrator, write_batch},
    window::Windowing,
};
use jobs::JobStore as _;
use sqlx::{Connection as _, Executor as _, PgPool};

struct Db {
    pool: PgPool,
    admin_url: String,
    name: String,
}

async fn database() -> Option<Db> {
    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        eprintln!("skipping: DATABASE_URL is not set");
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!(
        "ingest_test_{}_{:x}",
        std::process::id(),
        nanos & 0xffff_ffff
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("DATABASE_URL is set but unreachable");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let pool = PgPool::connect(&url).await.unwrap();
    jobs::postgres::migrator().run(&pool).await.unwrap();
    migrator().run(&pool).await.unwrap();
    Some(Db {
        pool,
        admin_url,
        name,
    })
}

impl Db {
    async fn drop_database(self) {
        self.pool.close().await;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        admin
            .execute(format!("DROP DATABASE {} WITH (FORCE)", self.name).as_str())
            .await
            .unwrap();
    }

    async fn aggregation_jobs(&self) -> Vec<serde_json::Value> {
        let store = jobs::PgStore::new(self.pool.clone());
        let filter = jobs::ListFilter {
            kind: Some(AGGREGATE_WINDOW.into()),
            limit: 500,
            ..jobs::ListFilter::default()
        };
        let mut args: Vec<_> = store
            .list(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.args)
            .collect();
        args.reverse();
        args
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

#[tokio::test]
async fn redelivery_stores_nothing_twice_and_late_readings_reaggregate_once() {
    let Some(db) = database().await else { return };
    let first = [reading("e1", "d1", 5), reading("e2", "d1", 75)];
    let report = write_batch(&db.pool, &first, &rules()).await.unwrap();
    assert_eq!(
        (report.inserted, report.duplicates, report.jobs_enqueued),
        (2, 0, 1),
        "window 10:00 closed at 10:01:05"
    );

    let again = write_batch(&db.pool, &first, &rules()).await.unwrap();
    assert_eq!(
        (again.inserted, again.duplicates, again.jobs_enqueued),
        (0, 2, 0),
        "redelivery changes nothing"
    );

    let late = write_batch(&db.pool, &[reading("e3", "d1", 30)], &rules())
        .await
        .unwrap();
    assert_eq!(
        (late.inserted, late.jobs_enqueued),
        (1, 1),
        "a late reading re-triggers its window"
    );
    let later = write_batch(&db.pool, &[reading("e4", "d1", 40)], &rules())
        .await
        .unwrap();
    assert_eq!((later.inserted, later.jobs_enqueued), (1, 0), "once");

    let moved = write_batch(&db.pool, &[reading("e5", "d1", 200)], &rules())
        .await
        .unwrap();
    assert_eq!(
        moved.jobs_enqueued, 2,
        "the watermark passed 10:02:00 and 10:03:00"
    );

    let jobs = db.aggregation_jobs().await;
    let summary: Vec<(String, bool)> = jobs
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
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.reading")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 5);
    db.drop_database().await;
}

#[tokio::test]
async fn concurrent_batches_over_the_same_series_neither_deadlock_nor_double_enqueue() {
    let Some(db) = database().await else { return };
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let pool = db.pool.clone();
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
                write_batch(&pool, &batch, &rules()).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let jobs = db.aggregation_jobs().await;
    let mut keys: Vec<String> = jobs
        .iter()
        .map(|a| format!("{}/{}/{}", a["device_id"], a["window_start"], a["late"]))
        .collect();
    let total = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "no window enqueued twice");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest.reading")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 3 * 10 + 4 * 10, "every distinct event stored once");
    db.drop_database().await;
}
