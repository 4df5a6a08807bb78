use crate::both_stores;

both_stores!(a_node_runs_every_job_exactly_once);
both_stores!(failures_retry_with_backoff_then_discard);
both_stores!(undecodable_args_are_discarded_at_once);
both_stores!(timeouts_and_panics_are_retried);
both_stores!(cancelling_an_executing_job_stops_its_handler);
both_stores!(shutdown_releases_jobs_that_outlive_the_grace_period);
both_stores!(an_insert_wakes_an_idle_node_before_its_poll);
both_stores!(cron_ticks_are_enqueued_once_across_nodes_and_restarts);
both_stores!(an_attempt_continues_the_trace_that_enqueued_it);

mod body {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use jobs::{
        Done, Job, JobContext, JobError, JobState, JobStore, NewJob, Node, NodeConfig, QueueConfig,
        Registry, Worker,
    };
    use serde::Deserialize;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    /// Records each run: job id to the number of times it ran.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<HashMap<i64, u32>>>);

    #[derive(Deserialize)]
    struct Empty {}

    impl Worker for Recorder {
        type Args = Empty;
        const KIND: &'static str = "record";

        async fn work(&self, ctx: JobContext, _args: Empty) -> Result<Done, JobError> {
            *self.0.lock().unwrap().entry(ctx.id).or_default() += 1;
            Ok(Done::Completed)
        }
    }

    /// Behaves as its args say.
    struct Scripted;

    #[derive(Deserialize)]
    struct Script {
        action: String,
    }

    impl Worker for Scripted {
        type Args = Script;
        const KIND: &'static str = "scripted";

        fn timeout(&self) -> Option<Duration> {
            Some(Duration::from_millis(100))
        }

        fn backoff(&self, _attempt: i32) -> Duration {
            Duration::ZERO
        }

        async fn work(&self, ctx: JobContext, args: Script) -> Result<Done, JobError> {
            match args.action.as_str() {
                "fail" => Err(JobError::Retry(format!("failed attempt {}", ctx.attempt))),
                "hang" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Done::Completed)
                }
                "panic" if ctx.attempt == 1 => panic!("handler bug"),
                "wait-for-cancel" => {
                    ctx.cancel.cancelled().await;
                    Ok(Done::Completed)
                }
                _ => Ok(Done::Completed),
            }
        }
    }

    fn config(queues: Vec<QueueConfig>) -> NodeConfig {
        let mut config = NodeConfig::new(queues);
        config.poll_interval = Duration::from_millis(50);
        config.shutdown_grace = Duration::from_millis(300);
        config
    }

    fn registry(recorder: &Recorder) -> Registry {
        Registry::new()
            .register(recorder.clone())
            .register(Scripted)
    }

    /// Starts a node; returns its stop token and join handle.
    fn spawn_node<S: JobStore>(
        store: &S,
        registry: Registry,
        config: NodeConfig,
    ) -> (CancellationToken, tokio::task::JoinHandle<jobs::NodeReport>) {
        let stop = CancellationToken::new();
        let node = Node::new(store.clone(), registry, config);
        let token = stop.clone();
        (
            stop,
            tokio::spawn(async move { node.run(token).await.unwrap() }),
        )
    }

    /// Waits (bounded) until `done(job)` holds for the job.
    async fn wait_for<S: JobStore>(store: &S, id: i64, done: impl Fn(&Job) -> bool) -> Job {
        for _ in 0..400 {
            let job = store.get(id).await.unwrap().unwrap();
            if done(&job) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "job {id} never reached the expected state: {:?}",
            store.get(id).await.unwrap()
        );
    }

    pub async fn a_node_runs_every_job_exactly_once<S: JobStore>(store: S) {
        let recorder = Recorder::default();
        let jobs: Vec<_> = (0..300)
            .map(|i| NewJob::new("record", json!({"i": i})))
            .collect();
        let inserted = store.insert_many(&jobs).await.unwrap();
        let (stop, node) = spawn_node(
            &store,
            registry(&recorder),
            config(vec![QueueConfig::new("default", 16)]),
        );
        let last = inserted.last().unwrap().job.id;
        wait_for(&store, last, |j| j.state == JobState::Completed).await;
        for row in &inserted {
            wait_for(&store, row.job.id, |j| j.state == JobState::Completed).await;
        }
        stop.cancel();
        let report = node.await.unwrap();
        assert_eq!(report.recorded, 300);
        let runs = recorder.0.lock().unwrap().clone();
        assert_eq!(runs.len(), 300);
        assert!(runs.values().all(|&n| n == 1), "a job ran twice");
    }

    pub async fn failures_retry_with_backoff_then_discard<S: JobStore>(store: S) {
        let job = NewJob::new("scripted", json!({"action": "fail"})).with_max_attempts(3);
        let id = store.insert_many(&[job]).await.unwrap()[0].job.id;
        let (stop, node) = spawn_node(
            &store,
            registry(&Recorder::default()),
            config(vec![QueueConfig::new("default", 2)]),
        );
        let job = wait_for(&store, id, |j| j.state == JobState::Discarded).await;
        stop.cancel();
        node.await.unwrap();
        assert_eq!(job.attempt, 3);
        let errors: Vec<_> = job
            .errors
            .iter()
            .map(|e| (e.attempt, e.error.as_str()))
            .collect();
        assert_eq!(
            errors,
            [
                (1, "failed attempt 1"),
                (2, "failed attempt 2"),
                (3, "failed attempt 3 (attempt 3 of 3)")
            ]
        );
    }

    pub async fn undecodable_args_are_discarded_at_once<S: JobStore>(store: S) {
        let id = store
            .insert_many(&[NewJob::new("scripted", json!({"act": "x"}))])
            .await
            .unwrap()[0]
            .job
            .id;
        let (stop, node) = spawn_node(
            &store,
            registry(&Recorder::default()),
            config(vec![QueueConfig::new("default", 2)]),
        );
        let job = wait_for(&store, id, |j| j.state.is_terminal()).await;
        stop.cancel();
        node.await.unwrap();
        assert_eq!((job.state, job.attempt), (JobState::Discarded, 1));
        assert!(
            job.errors[0]
                .error
                .contains("args do not decode as scripted: missing field `action`"),
            "{:?}",
            job.errors
        );
    }

    pub async fn timeouts_and_panics_are_retried<S: JobStore>(store: S) {
        let jobs = [
            NewJob::new("scripted", json!({"action": "hang"})).with_max_attempts(2),
            NewJob::new("scripted", json!({"action": "panic"})),
        ];
        let ids: Vec<i64> = store
            .insert_many(&jobs)
            .await
            .unwrap()
            .iter()
            .map(|i| i.job.id)
            .collect();
        let (stop, node) = spawn_node(
            &store,
            registry(&Recorder::default()),
            config(vec![QueueConfig::new("default", 4)]),
        );
        let hung = wait_for(&store, ids[0], |j| j.state == JobState::Discarded).await;
        let panicked = wait_for(&store, ids[1], |j| j.state == JobState::Completed).await;
        stop.cancel();
        node.await.unwrap();
        assert_eq!(hung.errors[0].error, "timed out after 100ms");
        assert_eq!(panicked.attempt, 2);
        assert_eq!(panicked.errors[0].error, "panicked: handler bug");
    }

    pub async fn cancelling_an_executing_job_stops_its_handler<S: JobStore>(store: S) {
        let id = store
            .insert_many(&[NewJob::new(
                "scripted",
                json!({"action": "wait-for-cancel"}),
            )])
            .await
            .unwrap()[0]
            .job
            .id;
        let (stop, node) = spawn_node(
            &store,
            registry(&Recorder::default()),
            config(vec![QueueConfig::new("default", 2)]),
        );
        wait_for(&store, id, |j| j.state == JobState::Executing).await;
        store.cancel(id).await.unwrap();
        let job = wait_for(&store, id, |j| j.state.is_terminal()).await;
        stop.cancel();
        node.await.unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.errors[0].error, "cancelled on request");
    }

    pub async fn shutdown_releases_jobs_that_outlive_the_grace_period<S: JobStore>(store: S) {
        // No timeout for this queue's kind: "hang" only ends when stopped.
        struct Stubborn;
        impl Worker for Stubborn {
            type Args = Empty;
            const KIND: &'static str = "stubborn";
            async fn work(&self, _ctx: JobContext, _args: Empty) -> Result<Done, JobError> {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Done::Completed)
            }
        }
        let id = store
            .insert_many(&[NewJob::new("stubborn", json!({}))])
            .await
            .unwrap()[0]
            .job
            .id;
        let registry = Registry::new().register(Stubborn);
        let (stop, node) = spawn_node(
            &store,
            registry,
            config(vec![QueueConfig::new("default", 2)]),
        );
        wait_for(&store, id, |j| j.state == JobState::Executing).await;
        stop.cancel();
        let report = node.await.unwrap();
        assert_eq!(report.released, 1);
        let job = store.get(id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempt),
            (JobState::Available, 0),
            "released without spending the attempt"
        );
        assert_eq!(
            job.errors[0].error,
            "released at shutdown before it finished"
        );
    }

    pub async fn an_insert_wakes_an_idle_node_before_its_poll<S: JobStore>(store: S) {
        let recorder = Recorder::default();
        let mut config = config(vec![QueueConfig::new("default", 4)]);
        config.poll_interval = Duration::from_secs(3600);
        let (stop, node) = spawn_node(&store, registry(&recorder), config);
        // Let the node finish its first (empty) claim and start listening.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = store
            .insert_many(&[NewJob::new("record", json!({}))])
            .await
            .unwrap()[0]
            .job
            .id;
        wait_for(&store, id, |j| j.state == JobState::Completed).await;
        stop.cancel();
        node.await.unwrap();
    }

    pub async fn cron_ticks_are_enqueued_once_across_nodes_and_restarts<S: JobStore>(store: S) {
        let cron = jobs::CronJob::new(
            "every-minute",
            "* * * * *",
            "UTC",
            NewJob::new("record", json!({})),
        )
        .unwrap();
        let recorder = Recorder::default();
        let with_cron = || {
            let mut config = config(vec![QueueConfig::new("default", 4)]);
            config.cron = vec![cron.clone()];
            config
        };
        // Two nodes at once, then a third after both stopped (a restart):
        // the latest minute's tick is within the look-back for all three.
        let (stop_a, a) = spawn_node(&store, registry(&recorder), with_cron());
        let (stop_b, b) = spawn_node(&store, registry(&recorder), with_cron());
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        stop_a.cancel();
        stop_b.cancel();
        a.await.unwrap();
        b.await.unwrap();
        let (stop_c, c) = spawn_node(&store, registry(&recorder), with_cron());
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        stop_c.cancel();
        c.await.unwrap();

        let filter = jobs::ListFilter {
            kind: Some("record".into()),
            limit: 100,
            ..jobs::ListFilter::default()
        };
        let jobs = store.list(&filter).await.unwrap();
        let mut ticks: Vec<String> = jobs
            .iter()
            .map(|j| j.meta["cron"]["tick"].as_str().unwrap().to_owned())
            .collect();
        assert!(!ticks.is_empty(), "the cron job was never enqueued");
        let total = ticks.len();
        ticks.sort();
        ticks.dedup();
        assert_eq!(ticks.len(), total, "a tick was enqueued twice: {ticks:?}");
        // At most the minute before the test and one minute boundary crossed.
        assert!(total <= 2, "{ticks:?}");
    }

    pub async fn an_attempt_continues_the_trace_that_enqueued_it<S: JobStore>(store: S) {
        use tracing::Instrument as _;
        let capture = telemetry::testing::capture_spans();
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("enqueue-{}-{run}", std::process::id());
        let request = tracing::info_span!("enqueue request", otel.name = %marker);
        let id = async {
            store
                .insert_many(&[NewJob::new("record", json!({}))])
                .await
                .unwrap()[0]
                .job
                .id
        }
        .instrument(request)
        .await;
        let recorder = Recorder::default();
        let (stop, node) = spawn_node(
            &store,
            registry(&recorder),
            config(vec![QueueConfig::new("default", 2)]),
        );
        wait_for(&store, id, |j| j.state == JobState::Completed).await;
        stop.cancel();
        node.await.unwrap();
        let spans = capture.finished_spans();
        let enqueue = spans
            .iter()
            .find(|s| s.name == marker)
            .expect("the enqueue span was captured");
        let attempt = spans
            .iter()
            .find(|s| s.name == "job record" && s.trace_id == enqueue.trace_id)
            .unwrap_or_else(|| panic!("no job span in the enqueuing trace {}", enqueue.trace_id));
        assert_eq!(
            attempt.parent_span_id, enqueue.span_id,
            "the attempt is a child of the enqueuing span"
        );
    }
}
