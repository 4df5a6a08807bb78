//! The worker's way to the numerics service: a client with a timeout (the
//! channel's), a couple of quick retries on `UNAVAILABLE`, and a circuit
//! breaker. When numerics keeps failing, the circuit opens and jobs fail at
//! once with a retryable error (the engine reschedules them with backoff)
//! instead of each holding a slot of its queue while it times out.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use contracts::numerics::v1::{self as pb, numerics_service_client::NumericsServiceClient};
use service_runtime::TracedChannel;
use tonic::{Code, Status};

/// Consecutive failures that open the circuit.
const OPEN_AFTER: u32 = 5;
/// How long it stays open before one trial call, and how long a trial may
/// go unreported before another is let through.
const OPEN_FOR: Duration = Duration::from_secs(10);
/// Quick retries of an `UNAVAILABLE` call.
const QUICK_RETRIES: u32 = 2;
/// The pause before each: 50 ms, then 200 ms.
const RETRY_PAUSE: jobs::Backoff =
    jobs::Backoff::exponential(Duration::from_millis(50), Duration::from_millis(200))
        .with_factor(4.0);

/// Closed, open until an instant, or letting one trial through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Calls go through; failures are counted.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Calls fail at once until then.
    Open {
        /// When a trial call is let through.
        until: Instant,
    },
    /// One trial call is in flight; if it has not reported by `until`
    /// (its caller was dropped without a word), another trial may go.
    HalfOpen {
        /// When the trial counts as lost.
        until: Instant,
    },
}

/// What [`Breaker::allow`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// An ordinary call: the circuit is closed.
    Call,
    /// The one trial of a half-open circuit: if it is dropped before it
    /// reports, that counts as a failure (see [`TrialGuard`]).
    Trial,
}

/// The breaker's state machine, clock passed in (so tests drive it).
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<Circuit>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: Mutex::new(Circuit::Closed { failures: 0 }),
        }
    }
}

impl Breaker {
    fn state(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// May a call go through at `now`? `None` while the circuit is open
    /// or a trial is under way.
    pub fn allow(&self, now: Instant) -> Option<Permit> {
        let mut state = self.state();
        match *state {
            Circuit::Closed { .. } => Some(Permit::Call),
            Circuit::Open { until } | Circuit::HalfOpen { until } if now >= until => {
                *state = Circuit::HalfOpen {
                    until: now + OPEN_FOR,
                };
                Some(Permit::Trial)
            }
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => None,
        }
    }

    /// Records a call's outcome at `now`.
    pub fn record(&self, now: Instant, healthy: bool) {
        let mut state = self.state();
        *state = match (*state, healthy) {
            (_, true) => Circuit::Closed { failures: 0 },
            (Circuit::Closed { failures }, false) if failures + 1 < OPEN_AFTER => Circuit::Closed {
                failures: failures + 1,
            },
            (_, false) => Circuit::Open {
                until: now + OPEN_FOR,
            },
        };
    }

    /// The current state.
    pub fn circuit(&self) -> Circuit {
        *self.state()
    }
}

/// Reports a trial call's outcome even when the call never finishes: the
/// jobs engine drops a job's future on timeout or cancellation, and a
/// trial dropped unreported would otherwise leave the circuit half-open.
struct TrialGuard<'a> {
    breaker: &'a Breaker,
    permit: Permit,
    reported: bool,
}

impl<'a> TrialGuard<'a> {
    fn new(breaker: &'a Breaker, permit: Permit) -> Self {
        Self {
            breaker,
            permit,
            reported: false,
        }
    }

    fn record(&mut self, healthy: bool) {
        self.reported = true;
        self.breaker.record(Instant::now(), healthy);
    }
}

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        if !self.reported && self.permit == Permit::Trial {
            self.breaker.record(Instant::now(), false);
        }
    }
}

/// Why numerics did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumericsError {
    /// The circuit is open: not even tried.
    #[error("numerics is failing; circuit open, not called")]
    CircuitOpen,
    /// Transient (unavailable, timeout, overloaded): retry later.
    #[error("numerics unavailable: {0}")]
    Unavailable(String),
    /// The request was wrong: retrying cannot help.
    #[error("numerics rejected the request: {0}")]
    Rejected(String),
}

/// A numerics client behind the breaker.
#[derive(Clone)]
pub struct Numerics {
    client: NumericsServiceClient<TracedChannel>,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for Numerics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Numerics")
            .field("circuit", &self.breaker.circuit())
            .finish_non_exhaustive()
    }
}

fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Unknown
    )
}

impl Numerics {
    /// A client over `channel` (its timeout bounds each call).
    pub fn new(channel: TracedChannel) -> Self {
        Self {
            client: NumericsServiceClient::new(channel),
            breaker: Arc::default(),
        }
    }

    /// The breaker, for operators and tests.
    pub fn circuit(&self) -> Circuit {
        self.breaker.circuit()
    }

    async fn call<T, F, Fut>(&self, call: F) -> Result<T, NumericsError>
    where
        F: Fn(NumericsServiceClient<TracedChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let Some(permit) = self.breaker.allow(Instant::now()) else {
            return Err(NumericsError::CircuitOpen);
        };
        let mut outcome = TrialGuard::new(&self.breaker, permit);
        let mut retries = 0;
        loop {
            match call(self.client.clone()).await {
                Ok(response) => {
                    outcome.record(true);
                    return Ok(response.into_inner());
                }
                Err(status) if transient(&status) => {
                    if status.code() == Code::Unavailable && retries < QUICK_RETRIES {
                        retries += 1;
                        tokio::time::sleep(RETRY_PAUSE.delay(retries)).await;
                        continue;
                    }
                    outcome.record(false);
                    return Err(NumericsError::Unavailable(format!(
                        "{} ({:?})",
                        status.message(),
                        status.code()
                    )));
                }
                Err(status) => {
                    // The service answered: it is healthy, the request was not.
                    outcome.record(true);
                    return Err(NumericsError::Rejected(status.message().to_owned()));
                }
            }
        }
    }

    /// Statistics of a window's values.
    pub async fn window_statistics(
        &self,
        request: pb::ComputeWindowStatisticsRequest,
    ) -> Result<pb::ComputeWindowStatisticsResponse, NumericsError> {
        self.call(|mut client| {
            let request = request.clone();
            async move { client.compute_window_statistics(request).await }
        })
        .await
    }

    /// The served model's scores for `rows` feature vectors.
    pub async fn score(
        &self,
        request: pb::ScoreAnomaliesRequest,
    ) -> Result<pb::ScoreAnomaliesResponse, NumericsError> {
        self.call(|mut client| {
            let request = request.clone();
            async move { client.score_anomalies(request).await }
        })
        .await
    }
}

/// The anomaly model's input for a window, from its statistics (computed
/// with quantiles 0.5 and 0.99): the same definition as the numerics
/// engine's `model::features_from`, which the cross-app tests check
/// against this one. Scale-free, clamped to [-20, 20].
pub fn features(s: &pb::ComputeWindowStatisticsResponse) -> [f32; 8] {
    let deviation = s.variance.sqrt();
    let count = s.count as f64;
    let size = (count.ln_1p() / 5.0) as f32;
    if s.count < 3 || deviation <= f64::EPSILON * s.mean.abs().max(1.0) {
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, size];
    }
    let quantile = |q: f64| {
        s.quantiles
            .iter()
            .find(|x| x.q == q)
            .map_or(s.mean, |x| x.value)
    };
    let (p50, p99) = (quantile(0.5), quantile(0.99));
    let z = |x: f64| (x / deviation).clamp(-20.0, 20.0) as f32;
    [
        z(s.max - s.mean),
        z(s.mean - s.min),
        s.trend_r_squared as f32,
        z((s.trend_slope * count).abs()),
        z(p99 - p50),
        z(p50 - s.mean),
        (s.anomalous_indexes.len() as f64 / count * 10.0) as f32,
        size,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_opens_after_repeated_failures_and_recovers_through_one_trial() {
        let breaker = Breaker::default();
        let start = Instant::now();
        for _ in 0..OPEN_AFTER - 1 {
            assert_eq!(breaker.allow(start), Some(Permit::Call));
            breaker.record(start, false);
        }
        assert_eq!(
            breaker.circuit(),
            Circuit::Closed {
                failures: OPEN_AFTER - 1
            }
        );
        breaker.record(start, false);
        assert_eq!(
            breaker.allow(start + OPEN_FOR / 2),
            None,
            "open: calls fail fast"
        );
        assert_eq!(
            breaker.allow(start + OPEN_FOR),
            Some(Permit::Trial),
            "one trial after the pause"
        );
        assert_eq!(breaker.allow(start + OPEN_FOR), None, "only one");
        breaker.record(start + OPEN_FOR, false);
        assert!(
            matches!(breaker.circuit(), Circuit::Open { .. }),
            "a failed trial reopens"
        );
        let later = start + OPEN_FOR * 3;
        assert_eq!(breaker.allow(later), Some(Permit::Trial));
        breaker.record(later, true);
        assert_eq!(breaker.circuit(), Circuit::Closed { failures: 0 });
    }

    /// A trial whose caller never reports (its job timed out or was
    /// cancelled, so the future was dropped) must not hold the circuit
    /// half-open until restart.
    #[test]
    fn a_trial_that_never_reports_does_not_hold_the_circuit_half_open() {
        let breaker = Breaker::default();
        let start = Instant::now();
        for _ in 0..OPEN_AFTER {
            breaker.record(start, false);
        }
        assert_eq!(breaker.allow(start + OPEN_FOR), Some(Permit::Trial));
        assert_eq!(
            breaker.allow(start + OPEN_FOR + Duration::from_millis(10)),
            None,
            "one trial at a time"
        );
        assert_eq!(
            breaker.allow(start + OPEN_FOR * 3),
            Some(Permit::Trial),
            "another trial once the first is long overdue, got {:?}",
            breaker.circuit()
        );
    }

    /// The same through the client: a trial call dropped mid-flight counts
    /// as a failure, so the circuit is open again (not stuck half-open).
    #[tokio::test]
    async fn a_trial_call_dropped_mid_flight_counts_as_a_failure() {
        // A peer that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let channel = service_runtime::traced_channel(
            &service_runtime::ServiceUrl::local(port),
            &service_runtime::Transport::Plaintext,
            "numerics",
            Duration::from_secs(30),
            Duration::from_secs(30),
        )
        .unwrap();
        let numerics = Numerics::new(channel);
        let long_ago = Instant::now()
            .checked_sub(OPEN_FOR * 2)
            .expect("the monotonic clock runs longer than the test's pause");
        for _ in 0..OPEN_AFTER {
            numerics.breaker.record(long_ago, false);
        }
        let dropped = tokio::time::timeout(
            Duration::from_millis(200),
            numerics.window_statistics(pb::ComputeWindowStatisticsRequest::default()),
        )
        .await;
        assert!(dropped.is_err(), "the silent peer never answers");
        assert!(
            matches!(numerics.circuit(), Circuit::Open { .. }),
            "a dropped trial reopens the circuit, got {:?}",
            numerics.circuit()
        );
        silent.abort();
    }
}
