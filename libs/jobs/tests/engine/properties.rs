//! A state machine property test: any interleaving of enqueue, claim,
//! complete, fail, snooze, stale completion, cancel, retry, rescue and prune
//! keeps the engine's promises.
//!
//! - no job is ever held by two claims at once (a job runs on one node);
//! - attempts never exceed max attempts;
//! - a unique key never has two live jobs;
//! - every executing row is a claim the test holds, and vice versa (nothing
//!   is lost or silently released);
//! - jobs disappear only through pruning, and only when terminal;
//! - terminal rows, and only they, carry `finalized_at`.

use std::collections::{BTreeMap, BTreeSet};

use jobs::{Completion, JobState, JobStore, ListFilter, NewJob, Outcome, UniqueOpts};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use serde_json::json;

use crate::support::{PgDatabase, SqliteDatabase};

/// Node 2 never heartbeats: rescue treats it as dead.
const NODES: [&str; 3] = ["node-0", "node-1", "node-2"];

#[derive(Debug, Clone)]
pub enum Op {
    Enqueue {
        group: Option<u8>,
        max_attempts: i32,
        delayed: bool,
    },
    Claim {
        node: usize,
        limit: u32,
    },
    Complete {
        pick: usize,
    },
    Fail {
        pick: usize,
    },
    Snooze {
        pick: usize,
    },
    StaleComplete {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Retry {
        pick: usize,
    },
    Rescue,
    Prune,
}

/// The reference only counts what exists, to steer generation.
#[derive(Debug, Clone, Default)]
pub struct Model {
    enqueued: usize,
}

pub struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let enqueue = (
            proptest::option::of(0u8..3),
            1i32..=3,
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(group, max_attempts, delayed)| Op::Enqueue {
                group,
                max_attempts,
                delayed,
            });
        if state.enqueued == 0 {
            return enqueue.boxed();
        }
        prop_oneof![
            3 => enqueue,
            3 => (0usize..3, 1u32..=3).prop_map(|(node, limit)| Op::Claim { node, limit }),
            2 => any::<usize>().prop_map(|pick| Op::Complete { pick }),
            2 => any::<usize>().prop_map(|pick| Op::Fail { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Snooze { pick }),
            1 => any::<usize>().prop_map(|pick| Op::StaleComplete { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
            1 => Just(Op::Rescue),
            1 => Just(Op::Prune),
        ]
        .boxed()
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        if let Op::Enqueue { .. } = op {
            state.enqueued += 1;
        }
        state
    }
}

/// Where the system under test keeps its database.
pub trait Backend: 'static {
    type Store: JobStore;
    type Db;
    fn create(rt: &tokio::runtime::Runtime) -> Option<(Self::Store, Self::Db)>;
    fn remove(rt: &tokio::runtime::Runtime, db: Self::Db);
}

pub struct Sqlite;
impl Backend for Sqlite {
    type Store = jobs::SqliteStore;
    type Db = SqliteDatabase;
    fn create(rt: &tokio::runtime::Runtime) -> Option<(Self::Store, Self::Db)> {
        let db = rt.block_on(SqliteDatabase::create());
        Some((db.store.clone(), db))
    }
    fn remove(rt: &tokio::runtime::Runtime, db: Self::Db) {
        rt.block_on(db.remove());
    }
}

pub struct Postgres;
impl Backend for Postgres {
    type Store = jobs::PgStore;
    type Db = PgDatabase;
    fn create(rt: &tokio::runtime::Runtime) -> Option<(Self::Store, Self::Db)> {
        let db = rt.block_on(PgDatabase::create())?;
        Some((db.store.clone(), db))
    }
    fn remove(rt: &tokio::runtime::Runtime, db: Self::Db) {
        rt.block_on(db.drop_database());
    }
}

pub struct Sut<B: Backend> {
    rt: tokio::runtime::Runtime,
    store: Option<(B::Store, B::Db)>,
    /// Claims the test holds: job id to (node, attempt).
    running: BTreeMap<i64, (usize, i32)>,
    /// Every job enqueued and not pruned, with its unique group.
    known: BTreeMap<i64, Option<u8>>,
}

impl<B: Backend> Sut<B> {
    fn pick_running(&self, pick: usize) -> Option<(i64, usize, i32)> {
        let n = self.running.len();
        (n > 0).then(|| {
            let (id, (node, attempt)) = self
                .running
                .iter()
                .nth(pick % n)
                .map(|(i, v)| (*i, *v))
                .unwrap_or_default();
            (id, node, attempt)
        })
    }

    fn pick_known(&self, pick: usize) -> Option<i64> {
        let n = self.known.len();
        (n > 0).then(|| *self.known.keys().nth(pick % n).unwrap())
    }

    fn end(&mut self, store: &B::Store, id: i64, attempt: i32, outcome: Outcome) {
        let applied = self
            .rt
            .block_on(store.complete_many(&[Completion {
                id,
                attempt,
                outcome,
            }]))
            .unwrap();
        assert_eq!(applied, 1, "ending a held claim of job {id} must apply");
        self.running.remove(&id);
    }
}

pub struct JobsMachine<B>(std::marker::PhantomData<B>);

impl<B: Backend> StateMachineTest for JobsMachine<B> {
    type SystemUnderTest = Sut<B>;
    type Reference = Reference;

    fn init_test(_: &Model) -> Sut<B> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = B::create(&rt);
        if let Some((store, _)) = &store {
            // Nodes 0 and 1 are alive for the whole case; node 2 is not.
            for node in &NODES[..2] {
                rt.block_on(store.heartbeat(node)).unwrap();
            }
        }
        Sut {
            rt,
            store,
            running: BTreeMap::new(),
            known: BTreeMap::new(),
        }
    }

    fn apply(mut sut: Sut<B>, _: &Model, op: Op) -> Sut<B> {
        let Some((store, _)) = sut.store.as_ref().map(|(s, _)| (s.clone(), ())) else {
            return sut;
        };
        let now = chrono::Utc::now();
        match op {
            Op::Enqueue {
                group,
                max_attempts,
                delayed,
            } => {
                let mut job =
                    NewJob::new("noop", json!({"g": group})).with_max_attempts(max_attempts);
                if group.is_some() {
                    job = job.unique(UniqueOpts::default());
                }
                if delayed {
                    job = job.scheduled_in(std::time::Duration::from_secs(3600));
                }
                let inserted = sut
                    .rt
                    .block_on(store.insert_many(&[job]))
                    .unwrap()
                    .remove(0);
                if inserted.duplicate {
                    assert!(group.is_some(), "only unique jobs can be duplicates");
                } else {
                    sut.known.insert(inserted.job.id, group);
                }
            }
            Op::Claim { node, limit } => {
                let claimed = sut
                    .rt
                    .block_on(store.claim("default", limit, NODES[node], None))
                    .unwrap();
                assert!(claimed.len() <= limit as usize);
                for job in claimed {
                    assert!(
                        !sut.running.contains_key(&job.id),
                        "job {} claimed while another claim still holds it",
                        job.id
                    );
                    assert_eq!(job.state, JobState::Executing);
                    sut.running.insert(job.id, (node, job.attempt));
                }
            }
            Op::Complete { pick } => {
                if let Some((id, _, attempt)) = sut.pick_running(pick) {
                    sut.end(&store, id, attempt, Outcome::Completed);
                }
            }
            Op::Fail { pick } => {
                if let Some((id, _, attempt)) = sut.pick_running(pick) {
                    let max = sut
                        .rt
                        .block_on(store.get(id))
                        .unwrap()
                        .unwrap()
                        .max_attempts;
                    let outcome = if attempt >= max {
                        Outcome::Discard {
                            error: "out of attempts".into(),
                        }
                    } else {
                        Outcome::Retry {
                            at: now,
                            error: "failed".into(),
                        }
                    };
                    sut.end(&store, id, attempt, outcome);
                }
            }
            Op::Snooze { pick } => {
                if let Some((id, _, attempt)) = sut.pick_running(pick) {
                    sut.end(&store, id, attempt, Outcome::Snooze { until: now });
                }
            }
            Op::StaleComplete { pick } => {
                if let Some((id, _, attempt)) = sut.pick_running(pick) {
                    let stale = Completion {
                        id,
                        attempt: attempt - 1,
                        outcome: Outcome::Completed,
                    };
                    assert_eq!(
                        sut.rt.block_on(store.complete_many(&[stale])).unwrap(),
                        0,
                        "a stale attempt applied"
                    );
                }
            }
            Op::Cancel { pick } => {
                if let Some(id) = sut.pick_known(pick) {
                    match sut.rt.block_on(store.cancel(id)) {
                        Ok(job) if sut.running.contains_key(&id) => {
                            assert_eq!(job.state, JobState::Executing)
                        }
                        Ok(job) => assert_eq!(job.state, JobState::Cancelled),
                        Err(jobs::JobsError::WrongState { state, .. }) => {
                            assert!(state.is_terminal())
                        }
                        Err(other) => panic!("cancel failed: {other}"),
                    }
                }
            }
            Op::Retry { pick } => {
                if let Some(id) = sut.pick_known(pick) {
                    match sut.rt.block_on(store.retry(id)) {
                        Ok(job) => {
                            assert_eq!(job.state, JobState::Available);
                            assert!(!sut.running.contains_key(&id), "retried a held claim");
                        }
                        Err(jobs::JobsError::WrongState { .. }) => {}
                        Err(other) => panic!("retry failed: {other}"),
                    }
                }
            }
            Op::Rescue => {
                let rescued: BTreeSet<i64> = sut
                    .rt
                    .block_on(store.rescue(std::time::Duration::from_secs(3600)))
                    .unwrap()
                    .into_iter()
                    .map(|r| r.id)
                    .collect();
                let dead: BTreeSet<i64> = sut
                    .running
                    .iter()
                    .filter(|(_, (node, _))| *node == 2)
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(
                    rescued, dead,
                    "rescue must take exactly the dead node's jobs"
                );
                for id in dead {
                    sut.running.remove(&id);
                }
            }
            Op::Prune => {
                let before = all_jobs(&sut.rt, &store);
                let terminal: BTreeSet<i64> = before
                    .iter()
                    .filter(|j| j.state.is_terminal())
                    .map(|j| j.id)
                    .collect();
                sut.rt
                    .block_on(store.prune(std::time::Duration::ZERO, 1_000))
                    .unwrap();
                let after: BTreeSet<i64> = all_jobs(&sut.rt, &store).iter().map(|j| j.id).collect();
                for id in before.iter().map(|j| j.id).filter(|id| !after.contains(id)) {
                    assert!(
                        terminal.contains(&id),
                        "prune deleted a job that was not finished: {id}"
                    );
                    sut.known.remove(&id);
                }
            }
        }
        sut
    }

    fn check_invariants(sut: &Sut<B>, _: &Model) {
        let Some((store, _)) = &sut.store else { return };
        let rows = all_jobs(&sut.rt, store);
        let ids: BTreeSet<i64> = rows.iter().map(|j| j.id).collect();
        for id in sut.known.keys() {
            assert!(ids.contains(id), "job {id} vanished without being pruned");
        }
        let mut live_per_group: BTreeMap<u8, usize> = BTreeMap::new();
        for job in &rows {
            assert!(
                job.attempt <= job.max_attempts,
                "job {} attempt {} > max {}",
                job.id,
                job.attempt,
                job.max_attempts
            );
            assert_eq!(
                job.finalized_at.is_some(),
                job.state.is_terminal(),
                "job {} finalized_at vs {}",
                job.id,
                job.state
            );
            if job.state == JobState::Executing {
                let (node, attempt) =
                    sut.running.get(&job.id).copied().unwrap_or_else(|| {
                        panic!("job {} is executing but no claim holds it", job.id)
                    });
                assert_eq!(job.attempted_by.as_deref(), Some(NODES[node]));
                assert_eq!(job.attempt, attempt);
            } else {
                assert!(
                    !sut.running.contains_key(&job.id),
                    "job {} is {} but a claim holds it",
                    job.id,
                    job.state
                );
            }
            if let Some(group) = sut.known.get(&job.id).copied().flatten()
                && !matches!(job.state, JobState::Discarded | JobState::Cancelled)
            {
                *live_per_group.entry(group).or_default() += 1;
            }
        }
        for (group, live) in live_per_group {
            assert!(live <= 1, "unique group {group} has {live} live jobs");
        }
    }

    fn teardown(sut: Sut<B>, _: Model) {
        if let Some((_, db)) = sut.store {
            B::remove(&sut.rt, db);
        }
    }
}

fn all_jobs<S: JobStore>(rt: &tokio::runtime::Runtime, store: &S) -> Vec<jobs::Job> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = rt
            .block_on(store.list(&ListFilter {
                before_id: before,
                limit: jobs::MAX_LIST,
                ..ListFilter::default()
            }))
            .unwrap();
        let done = page.len() < jobs::MAX_LIST as usize;
        before = page.last().map(|j| j.id);
        out.extend(page);
        if done {
            return out;
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2_000, ..ProptestConfig::default() })]
    #[test]
    fn any_interleaving_keeps_the_promises_on_sqlite(sequential 1..60 => JobsMachine<Sqlite>);
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 500, ..ProptestConfig::default() })]
    #[test]
    fn any_interleaving_keeps_the_promises_on_postgres(sequential 1..60 => JobsMachine<Postgres>);
}
