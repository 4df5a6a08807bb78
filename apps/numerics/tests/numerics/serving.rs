//! Dynamic batching over gRPC: many concurrent callers share forward
//! passes and each gets its own answer; a reload switches the version
//! without failing a request in flight.

use std::{sync::Arc, time::Duration};

use contracts::numerics::v1::{self as pb, numerics_service_client::NumericsServiceClient};
use numerics::wire::encode;
use numerics_engine::{
    Tensor,
    model::AnomalyModel,
    train::{TrainConfig, train},
    weights::Weights,
};
use service_runtime::{ServiceUrl, traced_channel};

fn row(tag: usize) -> Vec<f32> {
    // Distinct per caller: the tag shows up in the features.
    vec![tag as f32 * 0.1, 0.5, 0.2, 1.0, 0.3, 0.0, 0.1, 0.8]
}

fn request(features: &[f32]) -> pb::ScoreAnomaliesRequest {
    pb::ScoreAnomaliesRequest {
        features: Some(encode(&Tensor::f32(vec![1, 8], features.to_vec()).unwrap())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_are_batched_and_each_gets_its_own_answer_across_a_reload() {
    let mut config = numerics::Config::for_tests();
    config.serving.max_wait = Duration::from_millis(20);
    config.serving.max_batch_size = 32;
    let model_dir = std::env::temp_dir().join(format!("numerics-models-{}", std::process::id()));
    std::fs::create_dir_all(&model_dir).unwrap();
    config.serving.model_dir = model_dir.clone();
    let running = numerics::start(config).await.unwrap();
    let timeout = Duration::from_secs(30);
    let channel = traced_channel(
        &ServiceUrl::local(running.grpc_addr.unwrap().port()),
        &service_runtime::Transport::Plaintext,
        "numerics",
        timeout,
        timeout,
    )
    .unwrap();
    let client = NumericsServiceClient::new(channel);
    let shipped = numerics::serving::shipped_model().unwrap();

    let callers: Vec<_> = (0..64)
        .map(|tag| {
            let mut client = client.clone();
            tokio::spawn(async move {
                (
                    tag,
                    client
                        .score_anomalies(request(&row(tag)))
                        .await
                        .unwrap()
                        .into_inner(),
                )
            })
        })
        .collect();
    for caller in callers {
        let (tag, answer) = caller.await.unwrap();
        let alone = shipped.forward(&row(tag), 1).unwrap()[0];
        assert_eq!(answer.scores.len(), 1);
        assert!(
            (answer.scores[0] - f64::from(alone)).abs() < 1e-6,
            "caller {tag} got another's score"
        );
        assert_eq!(answer.model_version, shipped.version());
    }
    let info = client
        .clone()
        .get_model_info(pb::GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.model_version.as_str(), info.input_width),
        (shipped.version(), 8)
    );

    // Reload under load: every request in flight succeeds, on one version
    // or the other; afterwards the new one serves.
    let path = model_dir.join("test-v2.safetensors");
    let next = train(
        &TrainConfig {
            samples: 500,
            epochs: 5,
            ..TrainConfig::default()
        },
        "test-v2",
    )
    .model;
    std::fs::write(&path, next.to_weights().to_bytes()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every version any caller was answered with, as the answers come.
    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = (0..8)
        .map(|tag| {
            let mut client = client.clone();
            let (stop, answered) = (stop.clone(), answered.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let version = client
                        .score_anomalies(request(&row(tag)))
                        .await
                        .unwrap()
                        .into_inner()
                        .model_version;
                    answered.lock().unwrap().push(version);
                }
            })
        })
        .collect();
    let answers_with = |version: &str, at_least: usize| {
        let (answered, version) = (answered.clone(), version.to_owned());
        move || {
            let (answered, version) = (answered.clone(), version.clone());
            async move {
                let n = answered
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|v| **v == version)
                    .count();
                (n >= at_least).then_some(())
            }
        }
    };
    // The load is running on the shipped model before the reload...
    service_runtime::testing::wait_until(
        "the load to be answered by the shipped model",
        Duration::from_secs(10),
        answers_with(shipped.version(), 8),
    )
    .await;
    let reloaded = client
        .clone()
        .reload_model(pb::ReloadModelRequest {
            // Relative to NUMERICS_MODEL_DIR, as an operator would name it.
            weights_path: "test-v2.safetensors".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            reloaded.previous_version.as_str(),
            reloaded.model_version.as_str()
        ),
        (shipped.version(), "test-v2")
    );
    // ...and goes on, without an error, on the new one after it.
    service_runtime::testing::wait_until(
        "the load to be answered by the reloaded model",
        Duration::from_secs(10),
        answers_with("test-v2", 8),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for caller in load {
        caller.await.unwrap();
    }
    let seen: std::collections::BTreeSet<String> =
        answered.lock().unwrap().iter().cloned().collect();
    assert!(seen.contains("test-v2"), "{seen:?}");
    let answer = client
        .clone()
        .score_anomalies(request(&row(3)))
        .await
        .unwrap()
        .into_inner();
    let expected =
        AnomalyModel::from_weights(&Weights::from_bytes(&std::fs::read(&path).unwrap()).unwrap())
            .unwrap()
            .forward(&row(3), 1)
            .unwrap()[0];
    assert!((answer.scores[0] - f64::from(expected)).abs() < 1e-6);

    let bad = client
        .clone()
        .reload_model(pb::ReloadModelRequest {
            weights_path: "/nonexistent/weights.safetensors".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let wrong_width = client
        .clone()
        .score_anomalies(pb::ScoreAnomaliesRequest {
            features: Some(encode(&Tensor::f32(vec![1, 3], vec![0.0; 3]).unwrap())),
        })
        .await
        .unwrap_err();
    assert_eq!(
        wrong_width.message(),
        "features.shape: must be [n, 8], got [1, 3]"
    );
    let _ = std::fs::remove_dir_all(&model_dir);
    running.shutdown().await;
}
