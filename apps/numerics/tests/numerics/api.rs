//! The RPCs end to end: operations with broadcasting, a program in one
//! round trip, a solve, window statistics, and errors as statuses.

use std::time::Duration;

use contracts::numerics::v1::{self as pb, numerics_service_client::NumericsServiceClient};
use numerics::wire::{decode, encode};
use numerics_engine::{Tensor, program::Limits};
use service_runtime::{ServiceUrl, TracedChannel, traced_channel};
use tonic::Code;

/// A client of the app under test (shared by the test modules).
pub async fn client(running: &service_runtime::Running) -> NumericsServiceClient<TracedChannel> {
    client_at(running.grpc_addr.unwrap().port())
}

/// A client of the app listening on `port`.
fn client_at(port: u16) -> NumericsServiceClient<TracedChannel> {
    let timeout = Duration::from_secs(30);
    let channel = traced_channel(
        &ServiceUrl::local(port),
        &service_runtime::Transport::Plaintext,
        "numerics",
        timeout,
        timeout,
    )
    .unwrap();
    NumericsServiceClient::new(channel)
}

fn f64s(shape: Vec<usize>, values: Vec<f64>) -> pb::Tensor {
    encode(&Tensor::f64(shape, values).unwrap())
}

fn values(t: &pb::Tensor) -> (Vec<usize>, Vec<f64>) {
    let t = decode("result", t, &Limits::default(), true).unwrap();
    (t.shape().to_vec(), t.to_f64_vec())
}

#[tokio::test]
async fn operations_programs_solves_and_statistics_answer_over_grpc() {
    let running = numerics::start(numerics::Config::for_tests())
        .await
        .unwrap();
    let mut client = client(&running).await;

    let sum = client
        .compute(pb::ComputeRequest {
            op: pb::Op::Add as i32,
            operands: vec![
                f64s(vec![2, 1], vec![1.0, 2.0]),
                f64s(vec![3], vec![10.0, 20.0, 30.0]),
            ],
            attributes: None,
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(
        values(&sum),
        (vec![2, 3], vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0])
    );

    // relu(x @ w + b), then its mean over rows: one round trip.
    let program = client
        .evaluate(pb::EvaluateRequest {
            inputs: [
                ("x".to_owned(), f64s(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])),
                ("w".to_owned(), f64s(vec![2, 1], vec![1.0, -1.0])),
                ("b".to_owned(), f64s(vec![1], vec![0.5])),
            ]
            .into(),
            steps: vec![
                pb::ProgramStep {
                    output: "xw".into(),
                    op: pb::Op::Matmul as i32,
                    inputs: vec!["x".into(), "w".into()],
                    attributes: None,
                },
                pb::ProgramStep {
                    output: "z".into(),
                    op: pb::Op::Add as i32,
                    inputs: vec!["xw".into(), "b".into()],
                    attributes: None,
                },
                pb::ProgramStep {
                    output: "h".into(),
                    op: pb::Op::Relu as i32,
                    inputs: vec!["z".into()],
                    attributes: None,
                },
                pb::ProgramStep {
                    output: "m".into(),
                    op: pb::Op::Mean as i32,
                    inputs: vec!["h".into()],
                    attributes: Some(pb::OpAttributes {
                        axes: vec![0],
                        ..Default::default()
                    }),
                },
            ],
            outputs: vec!["z".into(), "m".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .outputs;
    assert_eq!(values(&program["z"]).1, vec![-0.5, -0.5]);
    assert_eq!(values(&program["m"]).1, vec![0.0]);

    let solved = client
        .decompose(pb::DecomposeRequest {
            decomposition: pb::Decomposition::Solve as i32,
            a: Some(f64s(vec![2, 2], vec![2.0, 0.0, 0.0, 4.0])),
            b: Some(f64s(vec![2], vec![2.0, 8.0])),
        })
        .await
        .unwrap()
        .into_inner()
        .factors;
    assert_eq!(values(&solved["x"]).1, vec![1.0, 2.0]);

    let mut window: Vec<f64> = (0..100).map(|i| 20.0 + (i % 5) as f64 * 0.1).collect();
    window[40] = 90.0;
    let stats = client
        .compute_window_statistics(pb::ComputeWindowStatisticsRequest {
            values: window,
            quantiles: vec![0.5, 0.99],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stats.count, stats.max, stats.anomalous_indexes.as_slice()),
        (100, 90.0, &[40u64][..])
    );
    assert_eq!(stats.quantiles.len(), 2);

    running.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_naming_the_operand() {
    let running = numerics::start(numerics::Config::for_tests())
        .await
        .unwrap();
    let mut client = client(&running).await;
    let error = client
        .compute(pb::ComputeRequest {
            op: pb::Op::Matmul as i32,
            operands: vec![
                f64s(vec![2, 3], vec![0.0; 6]),
                f64s(vec![2, 3], vec![0.0; 6]),
            ],
            attributes: None,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("inner dimensions 3 and 2 differ"),
        "{}",
        error.message()
    );

    let mut short = f64s(vec![2], vec![1.0, 2.0]);
    short.data.pop();
    let error = client
        .compute(pb::ComputeRequest {
            op: pb::Op::Neg as i32,
            operands: vec![short],
            attributes: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.message(),
        "operands[0].data: 15 bytes for shape [2] of f64 (needs 16)"
    );

    let error = client
        .decompose(pb::DecomposeRequest {
            decomposition: pb::Decomposition::Cholesky as i32,
            a: Some(f64s(vec![2, 2], vec![1.0, 2.0, 2.0, 1.0])),
            b: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::InvalidArgument, "a: matrix is not positive definite")
    );

    let error = client
        .compute_window_statistics(pb::ComputeWindowStatisticsRequest {
            values: vec![1.0, f64::NAN],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.message(), "values[1]: must be finite, got NaN");

    let error = client
        .evaluate(pb::EvaluateRequest {
            inputs: Default::default(),
            steps: vec![pb::ProgramStep {
                output: "y".into(),
                op: pb::Op::Neg as i32,
                inputs: vec!["x".into()],
                attributes: None,
            }],
            outputs: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(error.message(), "steps[0].inputs[0]: \"x\" is not defined");
    running.shutdown().await;
}

#[tokio::test]
async fn a_full_compute_queue_answers_resource_exhausted() {
    let pool = numerics::pool::CpuPool::new(1, 0);
    let (started, has_started) = std::sync::mpsc::channel::<()>();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let busy = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.run(move || {
                started.send(()).unwrap();
                wait.recv().is_ok()
            })
            .await
        })
    };
    while has_started.try_recv().is_err() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The first job holds the only worker; with no waiting room the next
    // is refused at once.
    assert_eq!(
        pool.run(|| ()).await,
        Err(numerics::pool::PoolError::Full(0))
    );
    release.send(()).unwrap();
    assert_eq!(busy.await.unwrap(), Ok(true));
    assert_eq!(pool.run(|| 7).await, Ok(7), "free again");
}

/// A long computation runs on the CPU pool: while it runs, readiness and
/// other RPCs answer. No clock is read: the answers come between two
/// readings of `numerics_pool_busy` = 1 on the app's own `/metrics`, with
/// the computation still unanswered after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_computation_does_not_hold_up_health_checks_or_other_rpcs() {
    // The shipped binary with its telemetry, so `/metrics` shows when its
    // one CPU worker is busy.
    let running = service_runtime::testing::AppProcess::start(
        env!("CARGO_BIN_EXE_numerics"),
        "NUMERICS_",
        vec![("NUMERICS_WORKERS".into(), "1".into())],
    );
    running.ready().await;
    let mut client = client_at(running.grpc_addr.port());
    let n = 900;
    let big = f64s(vec![n, n], (0..n * n).map(|i| (i % 7) as f64).collect());
    let heavy = pb::EvaluateRequest {
        inputs: [("a".to_owned(), big)].into(),
        steps: (0..48)
            .map(|i| pb::ProgramStep {
                output: format!("p{i}"),
                op: pb::Op::Matmul as i32,
                inputs: vec!["a".into(), "a".into()],
                attributes: None,
            })
            .chain([pb::ProgramStep {
                output: "total".into(),
                op: pb::Op::Sum as i32,
                inputs: vec!["p47".into()],
                attributes: None,
            }])
            .collect(),
        outputs: vec![],
    };
    let long = {
        let mut client = client.clone();
        tokio::spawn(async move { client.evaluate(heavy).await })
    };
    // The one CPU worker is computing: answers from here on come while it
    // is busy.
    service_runtime::testing::wait_until(
        "the computation to occupy the CPU worker",
        Duration::from_secs(10),
        || async { (running.metric("numerics_pool_busy").await == 1.0).then_some(()) },
    )
    .await;
    let ready = service_runtime::testing::http_get(running.admin_addr, "/readyz", &[])
        .await
        .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    client
        .get_model_info(pb::GetModelInfoRequest {})
        .await
        .unwrap();
    assert_eq!(
        running.metric("numerics_pool_busy").await,
        1.0,
        "readiness and model info were answered while the computation ran"
    );
    assert!(!long.is_finished());
    long.await.unwrap().unwrap();
}

/// Statistics of nothing are not zeros: a caller that sends no values is
/// told so, instead of getting a count of 0 beside a mean, minimum and
/// maximum of 0 that read like measurements.
#[tokio::test]
async fn window_statistics_of_no_values_are_refused_naming_the_field() {
    let running = numerics::start(numerics::Config::for_tests())
        .await
        .unwrap();
    let mut client = client(&running).await;
    let answer = client
        .compute_window_statistics(pb::ComputeWindowStatisticsRequest {
            quantiles: vec![0.5],
            ..Default::default()
        })
        .await;
    let status = answer.expect_err("no values, no statistics");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("values: "),
        "{}",
        status.message()
    );
    running.shutdown().await;
}
