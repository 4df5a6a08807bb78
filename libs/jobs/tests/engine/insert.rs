use crate::both_stores;

both_stores!(inserted_jobs_are_available_or_scheduled);
both_stores!(bulk_insert_keeps_order_and_validates_everything_first);
both_stores!(claims_follow_priority_then_schedule_and_respect_the_limit);

mod body {
    use std::time::Duration;

    use jobs::{JobState, JobStore, NewJob};
    use serde_json::json;

    pub async fn inserted_jobs_are_available_or_scheduled<S: JobStore>(store: S) {
        let now = NewJob::new("noop", json!({"n": 1}))
            .with_tags(["a", "b,\"c\\ {d}"])
            .with_priority(2);
        let later = NewJob::new("noop", json!({})).scheduled_in(Duration::from_secs(3600));
        let inserted = store.insert_many(&[now, later]).await.unwrap();
        assert_eq!(inserted[0].job.state, JobState::Available);
        assert_eq!(inserted[0].job.tags, ["a", "b,\"c\\ {d}"]);
        assert_eq!(inserted[0].job.priority, 2);
        assert_eq!(inserted[0].job.args, json!({"n": 1}));
        assert_eq!(inserted[1].job.state, JobState::Scheduled);
        let fetched = store.get(inserted[0].job.id).await.unwrap().unwrap();
        assert_eq!(fetched, inserted[0].job);
        assert!(store.get(i64::MAX).await.unwrap().is_none());
    }

    pub async fn bulk_insert_keeps_order_and_validates_everything_first<S: JobStore>(store: S) {
        let jobs: Vec<_> = (0..2_500)
            .map(|i| NewJob::new("noop", json!({"i": i})))
            .collect();
        let inserted = store.insert_many(&jobs).await.unwrap();
        assert_eq!(inserted.len(), 2_500);
        for (i, row) in inserted.iter().enumerate() {
            assert_eq!(row.job.args, json!({"i": i}), "row {i} out of order");
        }
        let mut bad = vec![NewJob::new("noop", json!({})); 3];
        bad[2].priority = 7;
        let error = store.insert_many(&bad).await.unwrap_err().to_string();
        assert_eq!(error, "invalid job: priority must be from 0 to 4, got 7");
        let counts = store.queue_counts().await.unwrap();
        assert_eq!(
            counts[0].count(JobState::Available),
            2_500,
            "nothing of the bad batch was written"
        );
        // The oldest available job is the queue's lag: the first one
        // inserted (all were runnable at once).
        let first = inserted.iter().map(|row| row.job.scheduled_at).min();
        assert_eq!(counts[0].oldest_available, first);
        assert!(first.is_some());
    }

    pub async fn claims_follow_priority_then_schedule_and_respect_the_limit<S: JobStore>(store: S) {
        let jobs = [
            NewJob::new("noop", json!({"name": "low"})).with_priority(3),
            NewJob::new("noop", json!({"name": "high-1"})).with_priority(0),
            NewJob::new("noop", json!({"name": "high-2"})).with_priority(0),
            NewJob::new("noop", json!({"name": "other-queue"}))
                .with_queue("other")
                .with_priority(0),
            NewJob::new("noop", json!({"name": "future"}))
                .with_priority(0)
                .scheduled_in(Duration::from_secs(60)),
        ];
        store.insert_many(&jobs).await.unwrap();
        let claimed = store.claim("default", 2, "node-a", None).await.unwrap();
        let names: Vec<_> = claimed
            .iter()
            .map(|j| j.args["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["high-1", "high-2"]);
        for job in &claimed {
            assert_eq!(job.state, JobState::Executing);
            assert_eq!(job.attempt, 1);
            assert_eq!(job.attempted_by.as_deref(), Some("node-a"));
        }
        let rest = store.claim("default", 10, "node-b", None).await.unwrap();
        let names: Vec<_> = rest
            .iter()
            .map(|j| j.args["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["low"],
            "scheduled jobs wait, other queues are separate"
        );
    }
}

#[tokio::test]
async fn transactional_insert_postgres() {
    let Some(db) = crate::support::PgDatabase::create().await else {
        return;
    };
    let job = jobs::NewJob::new("noop", serde_json::json!({"tx": true}));
    let mut tx = db.store.pool().begin().await.unwrap();
    let inserted = jobs::postgres::insert(&mut tx, &job).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(
        jobs::JobStore::get(&db.store, inserted.job.id)
            .await
            .unwrap()
            .is_none(),
        "rolled back with the caller"
    );
    let mut tx = db.store.pool().begin().await.unwrap();
    let inserted = jobs::postgres::insert(&mut tx, &job).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        jobs::JobStore::get(&db.store, inserted.job.id)
            .await
            .unwrap()
            .is_some(),
        "committed with the caller"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn transactional_insert_sqlite() {
    let db = crate::support::SqliteDatabase::create().await;
    let job = jobs::NewJob::new("noop", serde_json::json!({"tx": true}));
    let mut tx = db.store.pool().begin().await.unwrap();
    let inserted = jobs::sqlite::insert(&mut tx, &job).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(
        jobs::JobStore::get(&db.store, inserted.job.id)
            .await
            .unwrap()
            .is_none()
    );
    let mut tx = db.store.pool().begin().await.unwrap();
    let inserted = jobs::sqlite::insert(&mut tx, &job).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        jobs::JobStore::get(&db.store, inserted.job.id)
            .await
            .unwrap()
            .is_some()
    );
    db.remove().await;
}

/// The claim query is served by the partial `job_claim` index: equality on
/// the queue, the ORDER BY from the index, no sort, no scan of finished rows.
#[tokio::test]
async fn the_claim_query_uses_the_claim_index() {
    let Some(db) = crate::support::PgDatabase::create().await else {
        return;
    };
    let store = &db.store;
    let jobs: Vec<_> = (0..20_000)
        .map(|i| jobs::NewJob::new("noop", serde_json::json!({"i": i})))
        .collect();
    for chunk in jobs.chunks(10_000) {
        jobs::JobStore::insert_many(store, chunk).await.unwrap();
    }
    sqlx::query("ANALYZE jobs.job")
        .execute(store.pool())
        .await
        .unwrap();
    let plan = store.explain_claim("default", 100).await.unwrap();
    eprintln!("{plan}");
    assert!(plan.contains("Index Scan using job_claim on job"), "{plan}");
    assert!(
        !plan.contains("Sort"),
        "the index provides the order: {plan}"
    );
    assert!(
        plan.contains("LockRows"),
        "rows are locked (SKIP LOCKED): {plan}"
    );
    db.drop_database().await;
}
