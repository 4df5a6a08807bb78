use contracts::jobs::v1::{self as pb, JobState};
use prost_types::{Struct, Value, value::Kind};
use tonic::Code;

use crate::support::{client, on_both};

fn args(pairs: &[(&str, Value)]) -> Option<Struct> {
    Some(Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    })
}

fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn spec(kind: &str) -> pb::JobSpec {
    pb::JobSpec {
        kind: kind.into(),
        args: args(&[]),
        ..pb::JobSpec::default()
    }
}

async fn wait_for_state(
    client: &mut contracts::jobs::v1::jobs_service_client::JobsServiceClient<
        service_runtime::TracedChannel,
    >,
    id: i64,
    state: JobState,
) -> pb::Job {
    crate::support::wait_for_job(client, id, |s| s == state).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_rejected_naming_the_field() {
    on_both(|running| async move {
        let mut client = client(&running);
        let cases = [
            (
                spec("nonexistent"),
                "job.kind: unknown job kind \"nonexistent\"",
            ),
            (
                pb::JobSpec {
                    args: args(&[("url", text("x"))]),
                    ..spec("webhook.deliver")
                },
                "job.args: missing field `event`",
            ),
            (
                pb::JobSpec {
                    priority: Some(9),
                    ..spec("noop")
                },
                "job.priority: must be from 0 to 4, got 9",
            ),
            (
                pb::JobSpec {
                    max_attempts: Some(0),
                    ..spec("noop")
                },
                "job.max_attempts: must be at least 1, got 0",
            ),
            (
                pb::JobSpec {
                    kind: String::new(),
                    ..spec("noop")
                },
                "job.kind: is required",
            ),
        ];
        for (job, expected) in cases {
            let error = client
                .enqueue_job(pb::EnqueueJobRequest { job: Some(job) })
                .await
                .unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument);
            assert!(
                error.message().starts_with(expected),
                "{} / {expected}",
                error.message()
            );
        }
        // All or none: one bad job in a batch writes nothing.
        let batch = vec![
            spec("noop"),
            spec("noop"),
            pb::JobSpec {
                priority: Some(-1),
                ..spec("noop")
            },
        ];
        let error = client
            .enqueue_jobs(pb::EnqueueJobsRequest { jobs: batch })
            .await
            .unwrap_err();
        assert!(
            error.message().starts_with("jobs[2].priority"),
            "{}",
            error.message()
        );
        let stats = client
            .get_queue_stats(pb::GetQueueStatsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            stats
                .queues
                .iter()
                .all(|q| q.available + q.completed + q.executing == 0),
            "{stats:?}"
        );
        running
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_jobs_run_and_can_be_inspected() {
    on_both(|running| async move {
        let mut client = client(&running);
        let job = pb::JobSpec {
            tags: vec!["smoke".into()],
            ..spec("noop")
        };
        let enqueued = client
            .enqueue_job(pb::EnqueueJobRequest { job: Some(job) })
            .await
            .unwrap()
            .into_inner();
        assert!(!enqueued.duplicate);
        let id = enqueued.job.unwrap().id;
        let done = wait_for_state(&mut client, id, JobState::Completed).await;
        assert_eq!(
            (done.attempt, done.tags.as_slice()),
            (1, ["smoke".to_owned()].as_slice())
        );
        assert!(done.finalized_at.is_some());
        assert!(!done.attempted_by.is_empty());

        let missing = client
            .get_job(pb::GetJobRequest { id: 999_999 })
            .await
            .unwrap_err();
        assert_eq!(
            (missing.code(), missing.message()),
            (Code::NotFound, "job 999999 not found")
        );
        running
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_jobs_and_pagination_over_grpc() {
    on_both(|running| async move {
        let mut client = client(&running);
        let unique = pb::JobSpec {
            unique: Some(pb::UniqueOptions {
                by_args: vec!["n".into()],
                ..pb::UniqueOptions::default()
            }),
            args: args(&[("n", text("1"))]),
            schedule: Some(pb::job_spec::Schedule::RunIn(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            })),
            ..spec("noop")
        };
        let first = client
            .enqueue_job(pb::EnqueueJobRequest {
                job: Some(unique.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        let second = client
            .enqueue_job(pb::EnqueueJobRequest { job: Some(unique) })
            .await
            .unwrap()
            .into_inner();
        assert!(second.duplicate);
        assert_eq!(
            first.job.as_ref().unwrap().id,
            second.job.as_ref().unwrap().id
        );
        assert_eq!(first.job.unwrap().state(), JobState::Scheduled);

        let later = |i: i64| pb::JobSpec {
            args: args(&[(
                "i",
                Value {
                    kind: Some(Kind::NumberValue(i as f64)),
                },
            )]),
            schedule: Some(pb::job_spec::Schedule::RunIn(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            })),
            queue: "paged".into(),
            ..spec("noop")
        };
        let batch: Vec<_> = (0..5).map(later).collect();
        let results = client
            .enqueue_jobs(pb::EnqueueJobsRequest { jobs: batch })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(results.len(), 5);
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_jobs(pb::ListJobsRequest {
                    queue: "paged".into(),
                    page_size: 2,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            seen.extend(
                page.jobs
                    .iter()
                    .map(|j| j.args.as_ref().unwrap().fields["i"].clone()),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let numbers: Vec<f64> = seen
            .into_iter()
            .map(|v| match v.kind {
                Some(Kind::NumberValue(n)) => n,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(numbers, [4.0, 3.0, 2.0, 1.0, 0.0]);
        let bad = client
            .list_jobs(pb::ListJobsRequest {
                page_token: "x".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad.message(), "page_token: malformed");
        running
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_cancel_retry_pause_and_resume() {
    on_both(|running| async move {
        let mut client = client(&running);
        let paused = client
            .pause_queue(pb::PauseQueueRequest {
                queue: "default".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(paused.queue.unwrap().paused);
        let id = client
            .enqueue_job(pb::EnqueueJobRequest {
                job: Some(spec("noop")),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id;
        // A control job on a running queue, enqueued after it: once the
        // node has run the control, it has had its chance at the paused one.
        let control = client
            .enqueue_job(pb::EnqueueJobRequest {
                job: Some(pb::JobSpec {
                    queue: "maintenance".into(),
                    ..spec("noop")
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id;
        wait_for_state(&mut client, control, JobState::Completed).await;
        let job = client
            .get_job(pb::GetJobRequest { id })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(
            job.state(),
            JobState::Available,
            "a paused queue runs nothing"
        );

        let cancelled = client
            .cancel_job(pb::CancelJobRequest { id })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(cancelled.state(), JobState::Cancelled);
        let again = client
            .cancel_job(pb::CancelJobRequest { id })
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition);

        let retried = client
            .retry_job(pb::RetryJobRequest { id })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(retried.state(), JobState::Available);
        let resumed = client
            .resume_queue(pb::ResumeQueueRequest {
                queue: "default".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let stats = resumed.queue.unwrap();
        assert!(!stats.paused);
        assert_eq!(stats.local_limit, 10);
        wait_for_state(&mut client, id, JobState::Completed).await;
        running
    })
    .await;
}

/// Production registers only the platform's real job kinds: `noop` and
/// `record_run` (tests, crash tests, benchmarks) are unknown there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_the_test_only_job_kinds() {
    let scratch = crate::support::Scratch::sqlite().await;
    let mut config = worker::Config::for_tests(&scratch.url());
    config.common.environment = service_runtime::Environment::Production;
    let running = worker::start(config).await.unwrap();
    let mut client = client(&running);
    for kind in ["noop", "record_run"] {
        let refused = client
            .enqueue_job(pb::EnqueueJobRequest {
                job: Some(spec(kind)),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused
                .message()
                .starts_with(&format!("job.kind: unknown job kind \"{kind}\"")),
            "{}",
            refused.message()
        );
    }
    running.shutdown().await;
    scratch.remove().await;
}

/// Operator actions reach the audit log (target `audit`) with actor,
/// action, object and outcome, even when the rest of the log is at `warn`:
/// the shipped binary, under mutual TLS, is asked by the operator's
/// certificate to pause and resume a queue and to cancel a job that does
/// not exist; the actor is the identity the certificate names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_are_written_to_the_audit_log() {
    let scratch = jobs::testing::ScratchSqlite::create("worker_audit").await;
    let log_path = std::env::temp_dir().join(format!("worker-audit-{}.txt", std::process::id()));
    let pki = std::env::temp_dir().join(format!("worker-audit-pki-{}", std::process::id()));
    security::tls::dev_pki::generate(&pki, &["worker", "operator"]).unwrap();
    let worker = service_runtime::testing::AppProcess::start_with_stderr(
        env!("CARGO_BIN_EXE_worker"),
        "WORKER_",
        vec![
            ("WORKER_DATABASE_URL".into(), scratch.url.clone()),
            ("WORKER_LOG_FORMAT".into(), "json".into()),
            ("WORKER_TLS_DIR".into(), pki.display().to_string()),
        ],
        std::fs::File::create(&log_path).unwrap(),
    );
    worker.ready().await;
    let timeout = std::time::Duration::from_secs(10);
    let mut client = pb::jobs_service_client::JobsServiceClient::new(
        service_runtime::traced_channel(
            &service_runtime::ServiceUrl::local(worker.grpc_addr.port()),
            &service_runtime::Transport::mutual_tls_in(&pki, "operator"),
            "worker",
            timeout,
            timeout,
        )
        .unwrap(),
    );
    client
        .pause_queue(pb::PauseQueueRequest {
            queue: "default".into(),
        })
        .await
        .unwrap();
    client
        .resume_queue(pb::ResumeQueueRequest {
            queue: "default".into(),
        })
        .await
        .unwrap();
    client
        .cancel_job(pb::CancelJobRequest { id: 424_242 })
        .await
        .unwrap_err();
    drop(worker);
    scratch.remove().await;

    let log = std::fs::read_to_string(&log_path).unwrap();
    std::fs::remove_file(&log_path).unwrap();
    let _ = std::fs::remove_dir_all(&pki);
    let audit: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["target"] == "audit")
        .collect();
    let seen: Vec<(String, String, String)> = audit
        .iter()
        .map(|event| {
            assert_eq!(event["actor"], "operator", "{event}");
            (
                event["action"].as_str().unwrap().to_owned(),
                event["object"].as_str().unwrap().to_owned(),
                event["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = |a: &str, o: &str, r: &str| (a.to_owned(), o.to_owned(), r.to_owned());
    assert_eq!(
        seen,
        [
            expected("queue.pause", "default", "allowed"),
            expected("queue.resume", "default", "allowed"),
            expected("job.cancel", "424242", "failed"),
        ],
        "{log}"
    );
}
