//! The console's jobs pages in front of a real worker: queues with their
//! depth by state, the job list filtered by state, queue, kind and tag,
//! a job's detail with its arguments escaped, cancel and retry confirmed
//! on their own pages, a queue paused and resumed, every action in the
//! gateway's audit log, and a viewer refused every action.

use crate::support::{
    ScratchDb,
    console::{Browser, PASSWORD, header},
    nothing_listening, url_of,
};
use contracts::jobs::v1::{self as pb, jobs_service_client::JobsServiceClient};
use gateway::storage::{operators::Role, sqlite::SqliteGatewayStore};

fn spec(kind: &str, queue: &str, tags: &[&str], args: serde_json::Value) -> pb::JobSpec {
    pb::JobSpec {
        kind: kind.into(),
        queue: queue.into(),
        args: Some(contracts::json::json_to_struct(&args)),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_inspect_filter_and_steer_jobs_and_viewers_only_look() {
    let (worker_db, gateway_db) = (ScratchDb::new(), ScratchDb::new());
    let worker = worker::start(worker::Config::for_tests(&worker_db.url()))
        .await
        .unwrap();
    let config = gateway::Config::for_tests(
        &gateway_db.url(),
        nothing_listening(),
        url_of(&worker),
        nothing_listening(),
    );
    let gateway = gateway::start(config).await.unwrap();
    let addr = gateway.http_addr.unwrap();
    let store = SqliteGatewayStore::connect(&gateway_db.url())
        .await
        .unwrap();
    for (name, role) in [("ops", Role::Operator), ("eve", Role::Viewer)] {
        gateway::console::create_operator(&store, name, PASSWORD, role, "test")
            .await
            .unwrap();
    }

    // Jobs in a queue no node runs, so they wait where they are.
    let patience = std::time::Duration::from_secs(20);
    let mut jobs = JobsServiceClient::new(
        service_runtime::traced_channel(
            &url_of(&worker),
            &service_runtime::Transport::Plaintext,
            "worker",
            patience,
            patience,
        )
        .unwrap(),
    );
    let hostile = "<script>alert('args')</script>";
    let enqueued = jobs
        .enqueue_jobs(pb::EnqueueJobsRequest {
            jobs: vec![
                spec(
                    "noop",
                    "reports",
                    &["nightly"],
                    serde_json::json!({"note": hostile}),
                ),
                spec("noop", "reports", &["adhoc"], serde_json::json!({"n": 2})),
                spec("noop", "exports", &[], serde_json::json!({"n": 3})),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let first = enqueued[0].job.as_ref().unwrap().id;

    let ops = Browser::login(addr, "ops").await;
    let page = ops.get("/console/jobs").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains("<a href=\"/console/jobs?queue=reports\">reports</a>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("/console/queues/reports/pause"),
        "{}",
        page.body
    );

    let by_tag = ops.get("/console/jobs?tag=nightly").await;
    assert!(
        by_tag
            .body
            .contains(&format!("<a href=\"/console/jobs/{first}\">"))
    );
    let rows = |page: &service_runtime::testing::TestResponse| {
        page.body
            .matches("<tr><th scope=\"row\"><a href=\"/console/jobs/")
            .count()
    };
    assert_eq!(rows(&by_tag), 1, "{}", by_tag.body);
    let by_queue = ops.get("/console/jobs?state=available&queue=exports").await;
    assert_eq!(rows(&by_queue), 1, "{}", by_queue.body);
    assert!(
        by_queue.body.contains("<td>exports</td>"),
        "{}",
        by_queue.body
    );
    assert!(
        !by_queue.body.contains("<td>reports</td>"),
        "{}",
        by_queue.body
    );
    assert!(
        by_queue
            .body
            .contains("<option value=\"available\" selected>"),
        "the filter is kept: {}",
        by_queue.body
    );
    let nothing = ops.get("/console/jobs?kind=no.such.kind").await;
    assert!(nothing.body.contains("No job matches these filters."));
    let bad = ops.get("/console/jobs?state=sleeping").await;
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("state: \"sleeping\" is not a job state"));

    let detail = ops.get(&format!("/console/jobs/{first}")).await;
    assert_eq!(detail.status, 200);
    assert!(!detail.body.contains(hostile), "arguments are escaped");
    assert!(
        detail
            .body
            .contains("&#60;script&#62;alert(&#39;args&#39;)&#60;/script&#62;"),
        "{}",
        detail.body
    );
    assert!(
        detail
            .body
            .contains(&format!("/console/jobs/{first}/cancel"))
    );

    // Cancel, confirmed on its own page; then retry.
    let cancelled = ops
        .confirm(
            &format!("/console/jobs/{first}/cancel"),
            &format!("/console/jobs/{first}/cancel"),
        )
        .await;
    assert_eq!(cancelled.status, 303, "{}", cancelled.body);
    let after = ops.get(header(&cancelled, "location")).await;
    assert!(
        after.body.contains("<dt>State</dt><dd>cancelled</dd>"),
        "{}",
        after.body
    );
    assert!(after.body.contains("Cancelled"));
    let retried = ops
        .confirm(
            &format!("/console/jobs/{first}/retry"),
            &format!("/console/jobs/{first}/retry"),
        )
        .await;
    assert_eq!(retried.status, 303);
    let after = ops.get(&format!("/console/jobs/{first}")).await;
    assert!(
        after.body.contains("<dt>State</dt><dd>available</dd>"),
        "{}",
        after.body
    );

    // Discard the waiting job: it stays, discarded, and can be retried.
    let discarded = ops
        .confirm(
            &format!("/console/jobs/{first}/discard"),
            &format!("/console/jobs/{first}/discard"),
        )
        .await;
    assert_eq!(discarded.status, 303, "{}", discarded.body);
    let after = ops.get(&format!("/console/jobs/{first}")).await;
    assert!(
        after.body.contains("<dt>State</dt><dd>discarded</dd>"),
        "{}",
        after.body
    );
    assert!(
        after.body.contains(&format!("/console/jobs/{first}/retry")),
        "{}",
        after.body
    );
    assert!(
        !after
            .body
            .contains(&format!("/console/jobs/{first}/discard\"")),
        "{}",
        after.body
    );

    // Pause and resume a queue.
    let paused = ops
        .confirm(
            "/console/queues/reports/pause",
            "/console/queues/reports/pause",
        )
        .await;
    assert_eq!(paused.status, 303);
    let stats = jobs
        .get_queue_stats(pb::GetQueueStatsRequest {
            queue: "reports".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.queues[0].paused);
    assert!(stats.queues[0].oldest_available_at.is_some());
    let page = ops.get("/console/jobs").await;
    assert!(
        page.body.contains("/console/queues/reports/resume"),
        "{}",
        page.body
    );
    ops.confirm(
        "/console/queues/reports/resume",
        "/console/queues/reports/resume",
    )
    .await;
    let stats = jobs
        .get_queue_stats(pb::GetQueueStatsRequest {
            queue: "reports".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.queues[0].paused);

    // Every action is in the gateway's audit log, with who did it.
    let log = store_log(&store).await;
    for action in [
        "job.cancel",
        "job.retry",
        "job.discard",
        "queue.pause",
        "queue.resume",
    ] {
        assert!(
            log.iter().any(|(who, what)| who == "ops" && what == action),
            "{action} in {log:?}"
        );
    }

    // A viewer sees the pages but no action.
    let eve = Browser::login(addr, "eve").await;
    let seen = eve.get(&format!("/console/jobs/{first}")).await;
    assert_eq!(seen.status, 200);
    assert!(!seen.body.contains("/cancel\""), "{}", seen.body);
    assert_eq!(
        eve.get(&format!("/console/jobs/{first}/cancel"))
            .await
            .status,
        403
    );
    assert!(!eve.get("/console/jobs").await.body.contains("/pause\""));
    assert_eq!(eve.get("/console/queues/reports/pause").await.status, 403);

    gateway.shutdown().await;
    worker.shutdown().await;
}

async fn store_log(store: &SqliteGatewayStore) -> Vec<(String, String)> {
    use gateway::storage::operators::OperatorStore as _;
    store
        .audit_log(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.operator, e.action))
        .collect()
}
