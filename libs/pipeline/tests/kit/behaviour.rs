use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use pipeline::{
    Failure, Handler, ItemFailure, PipelineConfig, Processed, RateLimit,
    testing::{Acked, test_pipeline},
};

/// Accepts even numbers, rejects odd ones as invalid, records batches, fails
/// a batch that contains 100 and cannot dead-letter 13.
#[derive(Default)]
struct Evens {
    batches: Mutex<Vec<Vec<u64>>>,
    dead_letters: Mutex<Vec<(u64, String)>>,
    gate: Option<tokio::sync::Semaphore>,
}

impl Handler for Evens {
    type In = u64;
    type Out = u64;

    fn process(&self, input: &u64) -> Result<Processed<u64>, Failure> {
        if input % 2 == 1 {
            return Err(Failure::invalid(format!("value: {input} is odd")));
        }
        Ok(Processed {
            data: *input,
            batch_key: 0,
        })
    }

    async fn handle_batch(&self, _key: u64, items: &[u64]) -> Result<Vec<ItemFailure>, Failure> {
        if let Some(gate) = &self.gate {
            let _ = gate.acquire().await.map(|p| p.forget());
        }
        if items.contains(&100) {
            return Err(Failure::retryable("sink unavailable"));
        }
        self.batches.lock().unwrap().push(items.to_vec());
        Ok(Vec::new())
    }

    async fn handle_failed(&self, failed: Vec<(u64, Failure)>) -> Result<(), Failure> {
        if failed.iter().any(|(v, _)| *v == 13) {
            return Err(Failure::retryable("dead-letter store unavailable"));
        }
        self.dead_letters
            .lock()
            .unwrap()
            .extend(failed.into_iter().map(|(v, f)| (v, f.reason)));
        Ok(())
    }
}

fn config() -> PipelineConfig {
    PipelineConfig {
        batch_size: 3,
        batch_timeout: Duration::from_millis(30),
        ..PipelineConfig::default()
    }
}

#[tokio::test]
async fn messages_are_acknowledged_after_their_batch_is_written() {
    let handler = Arc::new(Evens::default());
    let (source, pipeline) = test_pipeline(config(), handler.clone()).unwrap();
    assert_eq!(source.test_message(2).await, Acked::Succeeded);
    assert_eq!(
        handler.batches.lock().unwrap().concat(),
        [2],
        "written before acknowledged"
    );
    assert_eq!(
        source.test_message(3).await,
        Acked::Failed(Failure::invalid("value: 3 is odd"))
    );
    assert_eq!(
        handler.dead_letters.lock().unwrap().as_slice(),
        [(3, "value: 3 is odd".to_owned())]
    );
    assert_eq!(
        source.test_message(100).await,
        Acked::Failed(Failure::retryable("sink unavailable"))
    );
    let stats = pipeline.stats();
    assert_eq!((stats.dead_letters, stats.in_flight), (1, 0));
    assert_eq!(stats.batch_processors.failed, 1);
    pipeline.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_invalid_message_that_cannot_be_dead_lettered_comes_back_as_retryable() {
    let handler = Arc::new(Evens::default());
    let (source, pipeline) = test_pipeline(config(), handler.clone()).unwrap();
    assert_eq!(
        source.test_message(13).await,
        Acked::Failed(Failure::retryable("dead-letter store unavailable"))
    );
    assert!(handler.dead_letters.lock().unwrap().is_empty());
    assert_eq!(
        pipeline.stats().dead_letters,
        0,
        "not counted as dead-lettered"
    );
    pipeline.drain(Duration::from_secs(5)).await;
}

/// Paused time: the clock moves only when every task waits, so the
/// batcher sees all seven messages before any timeout can fire.
#[tokio::test(start_paused = true)]
async fn batches_close_at_size_or_after_the_timeout_since_their_first_message() {
    let handler = Arc::new(Evens::default());
    let (source, pipeline) = test_pipeline(config(), handler.clone()).unwrap();
    let started = tokio::time::Instant::now();
    let acks = source.test_batch(vec![2, 4, 6, 8, 10, 12, 14]).await;
    assert!(acks.iter().all(|a| *a == Acked::Succeeded));
    let mut sizes: Vec<usize> = handler
        .batches
        .lock()
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect();
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        [1, 3, 3],
        "two batches closed at the size of 3, the odd one out by its timeout"
    );
    assert!(
        started.elapsed() >= config().batch_timeout,
        "the partial batch waited for its timeout: {:?}",
        started.elapsed()
    );
    pipeline.drain(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn in_flight_work_is_bounded_and_nothing_is_dropped() {
    let handler = Arc::new(Evens {
        gate: Some(tokio::sync::Semaphore::new(0)),
        ..Evens::default()
    });
    let config = PipelineConfig {
        max_in_flight: 10,
        max_demand: 4,
        batch_size: 2,
        ..config()
    };
    let (source, pipeline) = test_pipeline(config, handler.clone()).unwrap();
    let source = Arc::new(source);
    let sender = {
        let source = source.clone();
        tokio::spawn(async move { source.test_batch((0..50).map(|i| i * 2).collect()).await })
    };
    // Paused time: this sleep ends only once every task is idle, so the
    // pipeline has done all it can before the assertions look.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = pipeline.stats();
    assert_eq!(
        stats.in_flight, 10,
        "the sink is stuck: the pipeline holds exactly its ceiling"
    );
    assert_eq!(stats.producer.messages_in, 10, "and pulls nothing more");
    handler.gate.as_ref().unwrap().add_permits(1_000);
    let acks = sender.await.unwrap();
    assert_eq!(acks.len(), 50);
    assert!(acks.iter().all(|a| *a == Acked::Succeeded));
    assert_eq!(handler.batches.lock().unwrap().concat().len(), 50);
    pipeline.drain(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn draining_flushes_partial_batches_and_completes_acknowledgements() {
    let handler = Arc::new(Evens::default());
    let config = PipelineConfig {
        batch_size: 100,
        batch_timeout: Duration::from_secs(3600),
        ..config()
    };
    let (source, pipeline) = test_pipeline(config, handler.clone()).unwrap();
    let mut pending = Vec::new();
    for value in [2, 4, 6] {
        pending.push(source.push(value, 0).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        handler.batches.lock().unwrap().is_empty(),
        "a partial batch waits for its timeout"
    );
    let report = pipeline.drain(Duration::from_secs(5)).await;
    assert!(report.complete);
    assert_eq!(report.unacknowledged, 0);
    for rx in pending {
        assert_eq!(rx.await.unwrap(), Acked::Succeeded);
    }
    assert_eq!(handler.batches.lock().unwrap().concat(), [2, 4, 6]);
}

#[tokio::test(start_paused = true)]
async fn a_drain_past_its_budget_leaves_messages_unacknowledged_for_redelivery() {
    let handler = Arc::new(Evens {
        gate: Some(tokio::sync::Semaphore::new(0)),
        ..Evens::default()
    });
    let (source, pipeline) = test_pipeline(config(), handler.clone()).unwrap();
    let rx = source.push(2, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = pipeline.drain(Duration::from_millis(200)).await;
    assert!(!report.complete);
    assert_eq!(report.unacknowledged, 1);
    // The aborted stages dropped the message's way home; once the source is
    // gone too, the wait ends without an acknowledgement.
    drop(source);
    assert!(
        rx.await.is_err(),
        "never acknowledged, neither as success nor as failure"
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_holds_and_can_change_at_runtime() {
    let handler = Arc::new(Evens::default());
    let limit = RateLimit {
        messages: 5,
        interval: Duration::from_secs(3600),
    };
    let config = PipelineConfig {
        rate_limit: Some(limit),
        ..config()
    };
    let (source, pipeline) = test_pipeline(config, handler.clone()).unwrap();
    let source = Arc::new(source);
    let sender = {
        let source = source.clone();
        tokio::spawn(async move { source.test_batch((0..20).map(|i| i * 2).collect()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pipeline.stats().producer.messages_in,
        5,
        "five per hour: five pulled"
    );
    pipeline.set_rate_limit(None);
    let acks = sender.await.unwrap();
    assert!(acks.iter().all(|a| *a == Acked::Succeeded));
    pipeline.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_settings_are_named() {
    let config = PipelineConfig {
        batch_size: 0,
        ..PipelineConfig::default()
    };
    let error = test_pipeline(config, Arc::new(Evens::default()))
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "pipeline test: batch_size must be at least 1"
    );
}

/// The sink's batches are counted, and the monitor says how big one may
/// be: what the ops console shows as the mean batch against its limit.
#[tokio::test]
async fn batches_are_counted_and_their_limit_is_known() {
    let handler = Arc::new(Evens::default());
    let (source, pipeline) = test_pipeline(config(), handler.clone()).unwrap();
    assert_eq!(pipeline.stats().batches, 0);
    // Each message waits for its acknowledgement: a batch each, flushed
    // by the timeout.
    assert_eq!(source.test_message(2).await, Acked::Succeeded);
    assert_eq!(source.test_message(4).await, Acked::Succeeded);
    let stats = pipeline.stats();
    assert_eq!(stats.batches, 2);
    assert_eq!(stats.batch_processors.messages_in, 2);
    assert_eq!(pipeline.monitor().batch_size(), 3);
    pipeline.drain(Duration::from_secs(5)).await;
}
