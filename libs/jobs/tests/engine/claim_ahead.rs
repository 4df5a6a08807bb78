//! Jobs a node claims ahead of its free slots (when it starts jobs fast)
//! keep every guarantee of a claimed job: the limit holds, each runs once,
//! and the ones not started at shutdown go back without spending an
//! attempt.

use crate::both_stores;

both_stores!(a_node_holding_jobs_ahead_never_runs_more_than_its_limit);
both_stores!(jobs_held_ahead_go_back_at_shutdown_without_spending_an_attempt);

mod body {
    use std::{
        collections::HashMap,
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use jobs::{
        Done, JobContext, JobError, JobState, JobStore, ListFilter, NewJob, Node, NodeConfig,
        QueueConfig, Registry, Worker,
    };
    use serde::Deserialize;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    #[derive(Deserialize)]
    struct Empty {}

    /// Counts runs per job and the most running at once; once `block_after`
    /// jobs have started, the rest hang until the node stops them.
    #[derive(Clone, Default)]
    struct Counting {
        runs: Arc<Mutex<HashMap<i64, u32>>>,
        running: Arc<AtomicUsize>,
        most_running: Arc<AtomicUsize>,
        started: Arc<AtomicUsize>,
        block_after: Option<usize>,
    }

    impl Worker for Counting {
        type Args = Empty;
        const KIND: &'static str = "counting";

        async fn work(&self, ctx: JobContext, _args: Empty) -> Result<Done, JobError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(now, Ordering::SeqCst);
            let nth = self.started.fetch_add(1, Ordering::SeqCst);
            *self.runs.lock().unwrap().entry(ctx.id).or_default() += 1;
            if self.block_after.is_some_and(|n| nth >= n) {
                ctx.cancel.cancelled().await;
            } else {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Done::Completed)
        }
    }

    async fn insert<S: JobStore>(store: &S, n: usize) {
        let jobs: Vec<_> = (0..n)
            .map(|i| NewJob::new("counting", json!({"i": i})))
            .collect();
        for chunk in jobs.chunks(1_000) {
            store.insert_many(chunk).await.unwrap();
        }
    }

    fn start<S: JobStore>(
        store: &S,
        worker: &Counting,
        limit: u32,
    ) -> (CancellationToken, tokio::task::JoinHandle<jobs::NodeReport>) {
        let mut config = NodeConfig::new(vec![QueueConfig::new("default", limit)]);
        config.poll_interval = Duration::from_millis(50);
        config.shutdown_grace = Duration::from_millis(200);
        let stop = CancellationToken::new();
        let node = Node::new(
            store.clone(),
            Registry::new().register(worker.clone()),
            config,
        );
        let token = stop.clone();
        (
            stop,
            tokio::spawn(async move { node.run(token).await.unwrap() }),
        )
    }

    async fn all_jobs<S: JobStore>(store: &S) -> Vec<jobs::Job> {
        let mut out = Vec::new();
        let mut filter = ListFilter {
            limit: 500,
            ..ListFilter::default()
        };
        loop {
            let page = store.list(&filter).await.unwrap();
            let Some(last) = page.last() else {
                return out;
            };
            filter.before_id = Some(last.id);
            out.extend(page);
        }
    }

    pub async fn a_node_holding_jobs_ahead_never_runs_more_than_its_limit<S: JobStore>(store: S) {
        const JOBS: usize = 3_000;
        insert(&store, JOBS).await;
        let worker = Counting::default();
        let (stop, node) = start(&store, &worker, 3);
        for _ in 0..1_200 {
            if worker.runs.lock().unwrap().len() == JOBS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        stop.cancel();
        let report = node.await.unwrap();
        let runs = worker.runs.lock().unwrap().clone();
        assert_eq!(runs.len(), JOBS, "every job ran");
        assert!(runs.values().all(|&n| n == 1), "each job ran once");
        assert!(
            worker.most_running.load(Ordering::SeqCst) <= 3,
            "at most 3 at once, saw {}",
            worker.most_running.load(Ordering::SeqCst)
        );
        assert_eq!(report.recorded, JOBS as u64);
        let jobs = all_jobs(&store).await;
        assert!(
            jobs.iter()
                .all(|j| j.state == JobState::Completed && j.attempt == 1)
        );
    }

    pub async fn jobs_held_ahead_go_back_at_shutdown_without_spending_an_attempt<S: JobStore>(
        store: S,
    ) {
        const JOBS: usize = 3_000;
        const FINISHED: usize = 1_500;
        const LIMIT: u32 = 4;
        insert(&store, JOBS).await;
        let worker = Counting {
            block_after: Some(FINISHED),
            ..Counting::default()
        };
        let (stop, node) = start(&store, &worker, LIMIT);
        // The first 1,500 run fast (so the node holds jobs ahead); then
        // every slot hangs, and what the node holds stays held.
        for _ in 0..1_200 {
            if worker.started.load(Ordering::SeqCst) >= FINISHED + LIMIT as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let executing = store
            .list(&ListFilter {
                states: vec![JobState::Executing],
                limit: 1_000,
                ..ListFilter::default()
            })
            .await
            .unwrap()
            .len();
        assert!(
            executing > LIMIT as usize,
            "the node holds claimed jobs beyond its {LIMIT} slots: {executing} executing"
        );
        stop.cancel();
        let report = node.await.unwrap();
        let jobs = all_jobs(&store).await;
        assert_eq!(jobs.len(), JOBS);
        let runs = worker.runs.lock().unwrap().clone();
        for job in &jobs {
            match job.state {
                JobState::Completed => {
                    assert_eq!(runs.get(&job.id), Some(&1), "completed once: {job:?}");
                }
                JobState::Available => assert_eq!(
                    job.attempt, 0,
                    "handed back without spending its attempt: {job:?}"
                ),
                other => panic!("no job is left {other:?}: {job:?}"),
            }
        }
        let completed = jobs
            .iter()
            .filter(|j| j.state == JobState::Completed)
            .count();
        assert_eq!(completed, FINISHED, "only the jobs that finished completed");
        assert_eq!(
            report.released, executing as u64,
            "the hanging jobs and every held one were handed back"
        );
    }
}
