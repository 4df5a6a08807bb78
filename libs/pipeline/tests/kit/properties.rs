//! For any messages, batch sizes, timeouts, partition counts and injected
//! sink failures: every message is acknowledged exactly once, as succeeded
//! or failed; every succeeded message is stored exactly once; and order
//! within a partition is preserved.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use pipeline::{
    Failure, Handler, ItemFailure, PipelineConfig, Processed,
    testing::{Acked, test_pipeline},
};
use proptest::prelude::*;

/// (partition, sequence within partition, fail in processing)
type Msg = (u64, u64, bool);

struct Store {
    stored: Mutex<Vec<Msg>>,
    /// Batches whose first item's sequence is divisible by this fail.
    fail_every: u64,
}

impl Handler for Store {
    type In = Msg;
    type Out = Msg;

    fn process(&self, input: &Msg) -> Result<Processed<Msg>, Failure> {
        if input.2 {
            return Err(Failure::invalid("injected invalid message"));
        }
        Ok(Processed {
            data: *input,
            batch_key: input.0,
        })
    }

    async fn handle_batch(&self, _key: u64, items: &[Msg]) -> Result<Vec<ItemFailure>, Failure> {
        if self.fail_every > 0 && items[0].1.is_multiple_of(self.fail_every) {
            return Err(Failure::retryable("injected sink failure"));
        }
        // Fail single items too, by sequence.
        let failures: Vec<ItemFailure> = items
            .iter()
            .enumerate()
            .filter(|(_, m)| self.fail_every > 0 && m.1 % (self.fail_every * 3 + 1) == 1)
            .map(|(i, _)| (i, Failure::retryable("injected item failure")))
            .collect();
        let mut stored = self.stored.lock().unwrap();
        for (i, item) in items.iter().enumerate() {
            if !failures.iter().any(|(f, _)| *f == i) {
                stored.push(*item);
            }
        }
        Ok(failures)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_message_is_acknowledged_once_and_stored_once_in_partition_order(
        partitions in proptest::collection::vec((0u64..6, proptest::bool::weighted(0.1)), 1..300),
        batch_size in 1usize..40,
        timeout_ms in 1u64..20,
        processors in 1usize..4,
        batchers in 1usize..3,
        batch_processors in 1usize..4,
        fail_every in 0u64..7,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = Arc::new(Store { stored: Mutex::new(Vec::new()), fail_every });
            let config = PipelineConfig {
                processors,
                batchers,
                batch_processors,
                batch_size,
                batch_timeout: Duration::from_millis(timeout_ms),
                partitioned: true,
                max_demand: 16,
                max_in_flight: 64,
                ..PipelineConfig::default()
            };
            let (source, pipeline) = test_pipeline(config, store.clone()).unwrap();
            let mut next_seq: HashMap<u64, u64> = HashMap::new();
            let mut pending = Vec::new();
            for (partition, invalid) in partitions {
                let seq = next_seq.entry(partition).or_default();
                *seq += 1;
                let message = (partition, *seq, invalid);
                pending.push((message, source.push(message, partition).await.unwrap()));
            }
            let mut succeeded = Vec::new();
            for (message, rx) in pending {
                match rx.await.expect("every message is acknowledged") {
                    Acked::Succeeded => succeeded.push(message),
                    Acked::Failed(_) => {}
                }
            }
            let report = pipeline.drain(Duration::from_secs(10)).await;
            assert!(report.complete);
            assert_eq!(report.unacknowledged, 0);
            let stored = store.stored.lock().unwrap().clone();
            let mut stored_sorted = stored.clone();
            stored_sorted.sort();
            succeeded.sort();
            assert_eq!(stored_sorted, succeeded, "stored exactly the succeeded messages, once each");
            let mut last: HashMap<u64, u64> = HashMap::new();
            for (partition, seq, _) in stored {
                let previous = last.insert(partition, seq).unwrap_or(0);
                assert!(seq > previous, "partition {partition}: {seq} stored after {previous}");
            }
        });
    }
}
