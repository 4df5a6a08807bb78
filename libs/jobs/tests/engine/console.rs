//! What an operator's console asks of the store: pages of the job list
//! whose cost is bounded however big the table is, and per-state counts;
//! on PostgreSQL, each of their plans pinned to an index, as the claim
//! query's is.

use jobs::{JobPage, JobState, JobStore, LIST_WINDOW, ListFilter, NewJob};
use serde_json::json;

use crate::support::{PgDatabase, on_both};

/// Inserts `n` jobs in queue `bulk` (kind `noop`), in batches.
async fn insert_bulk(store: &impl JobStore, n: usize) {
    let jobs: Vec<_> = (0..n)
        .map(|i| NewJob::new("noop", json!({"i": i})).with_queue("bulk"))
        .collect();
    for chunk in jobs.chunks(10_000) {
        store.insert_many(chunk).await.unwrap();
    }
}

/// Every page of `filter`, following the cursors.
async fn all_pages(store: &impl JobStore, filter: &ListFilter) -> Vec<JobPage> {
    let mut pages = Vec::new();
    let mut filter = filter.clone();
    loop {
        let page = store.list_page(&filter).await.unwrap();
        let next = page.next_before;
        pages.push(page);
        match next {
            Some(before) => filter.before_id = Some(before),
            None => return pages,
        }
    }
}

/// A queue whose few jobs are the oldest of a big table: a page searches
/// one window of ids (saying from where), the next goes on below it, and
/// following the cursors finds every match once, newest first.
async fn a_rare_old_queue_is_found_window_by_window(store: impl JobStore) {
    let rare: Vec<_> = (0..5)
        .map(|i| NewJob::new("report", json!({"i": i})).with_queue("rare"))
        .collect();
    store.insert_many(&rare).await.unwrap();
    insert_bulk(&store, LIST_WINDOW as usize + 10).await;
    let filter = ListFilter {
        queue: Some("rare".into()),
        limit: 50,
        ..ListFilter::default()
    };
    let pages = all_pages(&store, &filter).await;
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert!(pages[0].jobs.is_empty(), "the newest window holds none");
    let from = pages[0].searched_from.expect("the first page was windowed");
    assert_eq!(pages[0].next_before, Some(from));
    let found: Vec<i64> = pages[1]
        .jobs
        .iter()
        .map(|j| j.args["i"].as_i64().unwrap())
        .collect();
    assert_eq!(found, [4, 3, 2, 1, 0]);
    assert_eq!(pages[1].next_before, None);

    // A state with an index of its own is not windowed: one page.
    let oldest = pages[1].jobs.last().unwrap().id;
    store.discard(oldest).await.unwrap();
    let failed = store
        .list_page(&ListFilter {
            states: vec![JobState::Discarded],
            limit: 50,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.searched_from, None);
    assert_eq!(
        failed.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [oldest]
    );
    assert_eq!(failed.next_before, None);

    // A full page ends at its last job, windowed or not.
    let bulk = store
        .list_page(&ListFilter {
            queue: Some("bulk".into()),
            limit: 3,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(bulk.jobs.len(), 3);
    assert_eq!(bulk.next_before, Some(bulk.jobs[2].id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_old_queue_is_found_window_by_window_on_both_stores() {
    on_both(
        a_rare_old_queue_is_found_window_by_window,
        a_rare_old_queue_is_found_window_by_window,
    )
    .await;
}

/// A table with what a console filters for, big enough (200,000 jobs)
/// that the planner prefers an index to a scan where one serves:
/// [`jobs::testing::seed_busy_week`].
async fn busy_table() -> Option<PgDatabase> {
    let db = PgDatabase::create().await?;
    jobs::testing::seed_busy_week(db.store.pool(), 200_000)
        .await
        .unwrap();
    Some(db)
}

/// Each filter the console offers, and the per-state counts, are answered
/// from an index (never a scan of the table): a state by its partial
/// index, a rare tag by `job_tags`, a queue or kind by a bounded range of
/// the primary key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_queries_use_indexes() {
    let Some(db) = busy_table().await else {
        return;
    };
    let store = &db.store;
    let plan = |filter: ListFilter| async move {
        let plan = store
            .explain_list(&ListFilter {
                limit: 50,
                ..filter
            })
            .await
            .unwrap();
        eprintln!("{plan}\n");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        plan
    };
    let state = |s: JobState| ListFilter {
        states: vec![s],
        ..ListFilter::default()
    };
    for failed in [JobState::Discarded, JobState::Cancelled] {
        let found = plan(state(failed)).await;
        assert!(found.contains("using job_failed"), "{found}");
    }
    let executing = plan(state(JobState::Executing)).await;
    assert!(
        executing.contains("job_executing") || executing.contains("job_pkey"),
        "{executing}"
    );
    for waiting in [
        JobState::Available,
        JobState::Retryable,
        JobState::Scheduled,
    ] {
        let found = plan(state(waiting)).await;
        assert!(
            found.contains("job_claim") || found.contains("job_pkey"),
            "{found}"
        );
    }
    let completed = plan(state(JobState::Completed)).await;
    assert!(
        completed.contains("Index Scan Backward using job_pkey"),
        "{completed}"
    );
    let tag = plan(ListFilter {
        tag: Some("incident-42".into()),
        ..ListFilter::default()
    })
    .await;
    assert!(tag.contains("Bitmap Index Scan on job_tags"), "{tag}");
    for filter in [
        ListFilter {
            queue: Some("audit-export".into()),
            ..ListFilter::default()
        },
        ListFilter {
            kind: Some("tenant.export".into()),
            ..ListFilter::default()
        },
    ] {
        let windowed = plan(filter).await;
        assert!(windowed.contains("using job_pkey"), "{windowed}");
        assert!(windowed.contains("id >="), "a bounded range: {windowed}");
    }

    let counts = store.explain_counts().await.unwrap();
    eprintln!("{counts}");
    assert!(!counts.contains("Seq Scan"), "{counts}");
    for index in ["job_claim", "job_executing", "job_failed"] {
        assert!(
            counts.contains(&format!("Index Only Scan using {index}")),
            "{counts}"
        );
    }
    db.drop_database().await;
}

/// Past 100,000 rows, completed jobs are the planner's estimate per queue,
/// marked so, and close to the truth; every other state is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_jobs_are_estimated_on_a_big_table_and_the_rest_counted() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let store = &db.store;
    insert_bulk(store, 120_000).await;
    for statement in [
        "UPDATE jobs.job SET state = 'completed', attempt = 1, attempted_at = now(), finalized_at = now() WHERE id % 10 <> 0",
        "UPDATE jobs.job SET state = 'discarded', attempt = 1, attempted_at = now(), finalized_at = now() WHERE id % 1000 = 0",
        "VACUUM ANALYZE jobs.job",
    ] {
        sqlx::query(statement).execute(store.pool()).await.unwrap();
    }
    let counts = store.queue_counts().await.unwrap();
    let bulk = counts.iter().find(|c| c.queue == "bulk").unwrap();
    assert!(bulk.completed_estimated);
    let completed = bulk.count(JobState::Completed) as f64;
    assert!(
        (completed - 108_000.0).abs() < 108_000.0 * 0.05,
        "an estimate within 5%: {completed}"
    );
    assert_eq!(bulk.count(JobState::Discarded), 120);
    assert_eq!(bulk.count(JobState::Available), 12_000 - 120);
    db.drop_database().await;
}

/// The completion rate counts what finished in the last minute, per
/// queue: 30 jobs completed just now read as half a job per second.
async fn completions_per_second_cover_the_last_minute(store: impl JobStore) {
    insert_bulk(&store, 40).await;
    store.heartbeat("n1").await.unwrap();
    let claimed = store.claim("bulk", 30, "n1", None).await.unwrap();
    assert_eq!(claimed.len(), 30);
    let ends: Vec<_> = claimed
        .iter()
        .map(|job| jobs::Completion {
            id: job.id,
            attempt: job.attempt,
            outcome: jobs::Outcome::Completed,
        })
        .collect();
    store.complete_many(&ends).await.unwrap();
    let counts = store.queue_counts().await.unwrap();
    let bulk = counts.iter().find(|c| c.queue == "bulk").unwrap();
    assert_eq!(bulk.count(JobState::Completed), 30);
    assert!(
        (bulk.completed_per_second - 0.5).abs() < 1e-9,
        "30 in the last minute: {}",
        bulk.completed_per_second
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_per_second_cover_the_last_minute_on_both_stores() {
    on_both(
        completions_per_second_cover_the_last_minute,
        completions_per_second_cover_the_last_minute,
    )
    .await;
}
