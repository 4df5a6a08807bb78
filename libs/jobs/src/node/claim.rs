//! Claiming: one producer per queue claims jobs whenever there is room and
//! reason to, holds a short run of claimed jobs ahead of the free slots, and
//! spawns each job's execution as a slot frees.
//!
//! Why claim ahead: a claim is a round trip to the database, and with a
//! small queue limit (10) and short jobs the node spent its time waiting
//! for claims of a few jobs each (2 to 7k no-op jobs/s, PostgreSQL's CPU per
//! job dominated by small transactions). Holding what the queue will start
//! in the next [`AHEAD_HORIZON`] lets claims come in batches whatever the
//! limit, while slow jobs (whose start rate is low) are not hoarded: a node
//! never holds more than about that much work another node could have run.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{CLAIM_RETRY, Running, Shared, execute::execute, lock};
use crate::{
    Job, JobsError,
    store::{Completion, JobStore, Outcome},
};

/// How much work a node holds claimed but not started: what its queue
/// starts in this long, at the rate it has been starting jobs.
pub(super) const AHEAD_HORIZON: Duration = Duration::from_millis(50);
/// The most jobs held ahead, whatever the rate (one completion batch).
pub(super) const MAX_AHEAD: usize = 2_000;
/// How often the start rate is measured again.
const RATE_WINDOW: Duration = Duration::from_millis(100);

/// The rate a queue starts jobs at, and what that says to hold ahead.
#[derive(Debug)]
pub(super) struct StartRate {
    window_started: Instant,
    started_in_window: u64,
    per_second: f64,
}

impl StartRate {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            window_started: now,
            started_in_window: 0,
            per_second: 0.0,
        }
    }

    /// Counts `n` starts at `now`; closes the window once it is long enough.
    pub(super) fn started(&mut self, n: usize, now: Instant) {
        self.started_in_window += n as u64;
        let elapsed = now.saturating_duration_since(self.window_started);
        if elapsed >= RATE_WINDOW {
            self.per_second = self.started_in_window as f64 / elapsed.as_secs_f64();
            self.window_started = now;
            self.started_in_window = 0;
        }
    }

    /// Jobs worth holding ahead: what starts within [`AHEAD_HORIZON`].
    pub(super) fn ahead(&self) -> usize {
        let jobs = (self.per_second * AHEAD_HORIZON.as_secs_f64()).floor();
        if jobs.is_finite() && jobs > 0.0 {
            (jobs as usize).min(MAX_AHEAD)
        } else {
            0
        }
    }
}

/// How many jobs to ask for, if a claim is worth a round trip now:
/// `free` slots plus `ahead` held jobs, less what is already held. When the
/// last claim filled its ask (`more_waiting`), wait until half the room is
/// empty so claims come in batches; when the queue looked drained, claim
/// for any room once nothing is held (a wake-up or the poll says something
/// may have arrived; while jobs are held they run first).
pub(super) fn claim_size(free: usize, ahead: usize, held: usize, more_waiting: bool) -> usize {
    let room = free + ahead;
    let want = room.saturating_sub(held);
    let worth = if more_waiting {
        want > 0 && (want * 2 >= room || held == 0 && free > 0)
    } else {
        want > 0 && held == 0
    };
    if worth { want } else { 0 }
}

/// Whether the queue looked drained, so that the next claim waits for a
/// reason to expect jobs (a wake-up or the poll).
///
/// Why it remembers wake-ups during a claim: a claim reads the table as of
/// when its statement began, so a job inserted while it is on its way is
/// not in its answer, and the insert's wake-up has already been taken. Had
/// a short answer then marked the queue drained, that job would wait for
/// the poll (seen: insert-to-start max 1,004 ms with a 1 s poll interval,
/// against 16 ms for graphile-worker in the same run).
#[derive(Debug, Default)]
pub(super) struct Drained {
    drained: bool,
    woken_since_claim_sent: bool,
}

impl Drained {
    /// True while claiming would find nothing new.
    pub(super) fn is_drained(&self) -> bool {
        self.drained
    }

    /// A claim was sent: wake-ups from now on may be jobs it does not see.
    pub(super) fn claim_sent(&mut self) {
        self.woken_since_claim_sent = false;
    }

    /// A claim came back; `short` when it found fewer jobs than it asked
    /// for. Drained only if nothing woke the queue while it was on its way.
    pub(super) fn claim_answered(&mut self, short: bool) {
        self.drained = short && !self.woken_since_claim_sent;
    }

    /// An insert, a freed slot or a queue change: worth claiming again.
    pub(super) fn woken(&mut self) {
        self.drained = false;
        self.woken_since_claim_sent = true;
    }

    /// The poll interval passed: claim again whatever was seen.
    pub(super) fn polled(&mut self) {
        self.drained = false;
    }
}

/// A claim on its way to the store: how many jobs it asked for, and what
/// came back.
type ClaimInFlight = Pin<Box<dyn Future<Output = (usize, Result<Vec<Job>, JobsError>)> + Send>>;

/// Claims jobs for one queue whenever there is room and reason to; at
/// shutdown hands back the jobs it held, and returns how many.
///
/// The claim runs beside the starting of held jobs, not instead of it:
/// while a claim is on its way, slots that free up are filled from what is
/// held, so the queue's slots do not sit idle for a round trip (a profile
/// of the burn-down showed the claim statement busy half the time and the
/// machine a third idle, slots waiting on it).
pub(super) async fn produce<S: JobStore>(
    shared: Arc<Shared<S>>,
    index: usize,
    stop: CancellationToken,
    executions: Arc<tokio::sync::Mutex<JoinSet<()>>>,
) -> u64 {
    let queue = &shared.per_queue[index];
    let limit = queue.config.local_limit as usize;
    let mut held: VecDeque<Job> = VecDeque::new();
    let mut rate = StartRate::new(Instant::now());
    let mut failures = 0u32;
    let mut more_waiting = true;
    let mut in_flight: Option<ClaimInFlight> = None;
    let mut drained = Drained::default();
    loop {
        if stop.is_cancelled() {
            break;
        }
        let started = start_held(&shared, index, &mut held, &executions).await;
        rate.started(started, Instant::now());
        if in_flight.is_none() && !drained.is_drained() {
            let running = queue.running.load(Ordering::Acquire) as usize;
            let free = limit.saturating_sub(running);
            // A global limit counts claimed jobs as executing: holding some
            // ahead would keep them from other nodes.
            let ahead = if queue.config.global_limit.is_some() {
                0
            } else {
                rate.ahead()
            };
            let size = claim_size(free, ahead, held.len(), more_waiting);
            if size > 0 {
                in_flight = Some(claim(shared.clone(), index, size));
                drained.claim_sent();
            }
        }
        // Wait for the claim, a freed slot, an insert or the poll interval.
        // A slot freed while jobs are held starts one; an insert or the poll
        // makes a drained queue worth claiming from again.
        tokio::select! {
            () = stop.cancelled() => break,
            (asked, result) = wait_for(&mut in_flight) => {
                in_flight = None;
                match result {
                    Ok(jobs) => {
                        failures = 0;
                        more_waiting = jobs.len() == asked;
                        drained.claim_answered(!more_waiting);
                        held.extend(jobs);
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(queue = %queue.config.name, %error, "claim failed");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(CLAIM_RETRY.delay(failures)) => {}
                        }
                    }
                }
            }
            () = tokio::time::sleep(shared.config.poll_interval), if in_flight.is_none() => {
                more_waiting = false;
                drained.polled();
            }
            () = queue.wake.notified() => drained.woken(),
        }
    }
    // A claim on its way may already have claimed jobs: wait for them, so
    // they are handed back with the rest rather than left to the rescuer.
    if let Some(claim) = in_flight
        && let (_, Ok(jobs)) = claim.await
    {
        held.extend(jobs);
    }
    release_held(&shared, held).await
}

/// Sends a claim for `size` jobs of the queue at `index`.
fn claim<S: JobStore>(shared: Arc<Shared<S>>, index: usize, size: usize) -> ClaimInFlight {
    Box::pin(async move {
        let queue = &shared.per_queue[index].config;
        let result = shared
            .store
            .claim(
                &queue.name,
                u32::try_from(size).unwrap_or(u32::MAX),
                &shared.config.node_id,
                queue.global_limit,
            )
            .await;
        (size, result)
    })
}

/// The claim's answer, or never when no claim is on its way.
async fn wait_for(in_flight: &mut Option<ClaimInFlight>) -> (usize, Result<Vec<Job>, JobsError>) {
    match in_flight {
        Some(claim) => claim.await,
        None => std::future::pending().await,
    }
}

/// Starts held jobs while the queue has free slots; returns how many.
async fn start_held<S: JobStore>(
    shared: &Arc<Shared<S>>,
    index: usize,
    held: &mut VecDeque<Job>,
    executions: &tokio::sync::Mutex<JoinSet<()>>,
) -> usize {
    let queue = &shared.per_queue[index];
    let limit = queue.config.local_limit as usize;
    let free = limit.saturating_sub(queue.running.load(Ordering::Acquire) as usize);
    let n = free.min(held.len());
    if n == 0 {
        return 0;
    }
    let mut set = executions.lock().await;
    for job in held.drain(..n) {
        start(shared, index, job, &mut set);
    }
    // Reap finished executions so the set stays small.
    while set.try_join_next().is_some() {}
    n
}

/// Hands held jobs back at shutdown: never started, so no attempt is spent.
/// Returns how many.
async fn release_held<S: JobStore>(shared: &Shared<S>, held: VecDeque<Job>) -> u64 {
    let released = held.len() as u64;
    for job in held {
        let _ = shared
            .completions
            .send(Completion {
                id: job.id,
                attempt: job.attempt,
                outcome: Outcome::Released,
            })
            .await;
    }
    released
}

/// Spawns the execution of one claimed job.
fn start<S: JobStore>(shared: &Arc<Shared<S>>, index: usize, job: Job, set: &mut JoinSet<()>) {
    let cancel = CancellationToken::new();
    shared.per_queue[index]
        .running
        .fetch_add(1, Ordering::AcqRel);
    lock(&shared.running).insert(
        job.id,
        Running {
            attempt: job.attempt,
            cancel: cancel.clone(),
            queue: index,
        },
    );
    let span = tracing::info_span!(
        "job",
        otel.name = %format!("job {}", job.kind),
        job.id = job.id,
        job.kind = %job.kind,
        job.queue = %job.queue,
        job.attempt = job.attempt,
        job.outcome = tracing::field::Empty,
    );
    crate::trace::continue_trace(&span, &job.meta);
    let shared = shared.clone();
    set.spawn(async move { execute(shared, job, cancel).await }.instrument(span));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_that_starts_nothing_holds_nothing_ahead() {
        let t0 = Instant::now();
        let mut rate = StartRate::new(t0);
        assert_eq!(rate.ahead(), 0);
        rate.started(0, t0 + Duration::from_secs(1));
        assert_eq!(rate.ahead(), 0);
    }

    #[test]
    fn the_held_amount_follows_the_start_rate_and_is_capped() {
        let t0 = Instant::now();
        let mut rate = StartRate::new(t0);
        // 10 jobs/s (slow jobs): 0.5 job in 50 ms, so none held.
        rate.started(1, t0 + Duration::from_millis(100));
        assert_eq!(rate.ahead(), 0);
        // 2,000 jobs/s: 100 in 50 ms.
        rate.started(400, t0 + Duration::from_millis(300));
        assert_eq!(rate.ahead(), 100);
        // A million jobs/s: capped.
        rate.started(1_000_000, t0 + Duration::from_millis(1_300));
        assert_eq!(rate.ahead(), MAX_AHEAD);
    }

    #[test]
    fn the_rate_is_measured_over_a_whole_window() {
        let t0 = Instant::now();
        let mut rate = StartRate::new(t0);
        rate.started(50, t0 + Duration::from_millis(10));
        assert_eq!(rate.ahead(), 0, "a 10 ms window is too short to measure");
        rate.started(50, t0 + Duration::from_millis(100));
        assert_eq!(rate.ahead(), 50, "100 jobs in 100 ms: 50 in 50 ms");
    }

    #[test]
    fn claims_come_in_batches_while_jobs_keep_coming() {
        // Limit 10, nothing worth holding ahead (slow jobs): every free
        // slot is claimed for (a claim per job is cheap at that rate).
        assert_eq!(claim_size(10, 0, 0, true), 10);
        assert_eq!(claim_size(1, 0, 0, true), 1);
        assert_eq!(claim_size(0, 0, 0, true), 0);
        // Holding 100 ahead: claim when half of the 110 is missing.
        assert_eq!(claim_size(10, 100, 60, true), 0);
        assert_eq!(claim_size(10, 100, 55, true), 55);
        // Nothing held and a slot free: never leave a slot idle.
        assert_eq!(claim_size(1, 100, 0, true), 101);
    }

    #[test]
    fn a_wake_up_while_a_claim_is_on_its_way_is_not_lost() {
        let mut drained = Drained::default();
        drained.claim_sent();
        // A job is inserted after the claim's statement began: its wake-up
        // arrives before the claim's (short) answer, which does not hold it.
        drained.woken();
        drained.claim_answered(true);
        assert!(
            !drained.is_drained(),
            "the inserted job must be claimed now, not at the poll"
        );
        // The claim after it finds nothing and nothing woke the queue.
        drained.claim_sent();
        drained.claim_answered(true);
        assert!(drained.is_drained());
        // A full answer never marks the queue drained.
        drained.claim_sent();
        drained.claim_answered(false);
        assert!(!drained.is_drained());
        // Drained, then a wake-up or the poll: worth a claim again.
        drained.claim_sent();
        drained.claim_answered(true);
        drained.woken();
        assert!(!drained.is_drained());
        drained.claim_sent();
        drained.claim_answered(true);
        drained.polled();
        assert!(!drained.is_drained());
    }

    #[test]
    fn a_drained_queue_is_claimed_from_for_any_room_once_nothing_is_held() {
        assert_eq!(claim_size(1, 0, 0, false), 1);
        assert_eq!(claim_size(0, 0, 0, false), 0);
        assert_eq!(claim_size(0, 5, 5, false), 0);
        // Jobs held from the last claim run before the database is asked
        // again (no claim per freed slot at the end of a burst).
        assert_eq!(claim_size(1, 100, 40, false), 0);
        assert_eq!(claim_size(1, 100, 0, false), 101);
    }
}
