use crate::both_stores;

both_stores!(rescue_spares_live_nodes_and_finished_jobs);
both_stores!(rescue_discards_jobs_out_of_attempts);
both_stores!(prune_deletes_old_finished_jobs_in_batches);
both_stores!(one_leader_at_a_time_until_its_lease_expires);

mod body {
    use std::time::Duration;

    use jobs::{Completion, JobState, JobStore, NewJob, Outcome};
    use serde_json::json;

    pub async fn rescue_spares_live_nodes_and_finished_jobs<S: JobStore>(store: S) {
        let jobs: Vec<_> = (0..3)
            .map(|i| NewJob::new("noop", json!({"i": i})))
            .collect();
        store.insert_many(&jobs).await.unwrap();
        store.heartbeat("alive").await.unwrap();
        let alive = store
            .claim("default", 1, "alive", None)
            .await
            .unwrap()
            .remove(0);
        let dead = store.claim("default", 2, "dead", None).await.unwrap();
        // One of the dead node's jobs finished before it died.
        store
            .complete_many(&[Completion {
                id: dead[0].id,
                attempt: 1,
                outcome: Outcome::Completed,
            }])
            .await
            .unwrap();
        let rescued: Vec<i64> = store
            .rescue(Duration::from_secs(30))
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(rescued, [dead[1].id]);
        assert_eq!(
            store.get(dead[1].id).await.unwrap().unwrap().state,
            JobState::Available
        );
        assert_eq!(
            store.get(dead[0].id).await.unwrap().unwrap().state,
            JobState::Completed
        );
        assert_eq!(
            store.get(alive.id).await.unwrap().unwrap().state,
            JobState::Executing
        );
    }

    pub async fn rescue_discards_jobs_out_of_attempts<S: JobStore>(store: S) {
        store
            .insert_many(&[NewJob::new("noop", json!({})).with_max_attempts(1)])
            .await
            .unwrap();
        let job = store
            .claim("default", 1, "dead", None)
            .await
            .unwrap()
            .remove(0);
        store.rescue(Duration::from_secs(30)).await.unwrap();
        let after = store.get(job.id).await.unwrap().unwrap();
        assert_eq!(after.state, JobState::Discarded);
        assert!(after.finalized_at.is_some());
    }

    pub async fn prune_deletes_old_finished_jobs_in_batches<S: JobStore>(store: S) {
        let jobs: Vec<_> = (0..5)
            .map(|i| NewJob::new("noop", json!({"i": i})))
            .collect();
        store.insert_many(&jobs).await.unwrap();
        let claimed = store.claim("default", 4, "n", None).await.unwrap();
        let ends: Vec<_> = claimed
            .iter()
            .map(|j| Completion {
                id: j.id,
                attempt: 1,
                outcome: Outcome::Completed,
            })
            .collect();
        store.complete_many(&ends).await.unwrap();
        assert_eq!(
            store.prune(Duration::from_secs(3600), 10).await.unwrap(),
            0,
            "too young"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            store.prune(Duration::from_millis(1), 3).await.unwrap(),
            3,
            "bounded batch"
        );
        assert_eq!(store.prune(Duration::from_millis(1), 3).await.unwrap(), 1);
        let counts = &store.queue_counts().await.unwrap()[0];
        assert_eq!(
            (
                counts.count(JobState::Completed),
                counts.count(JobState::Available)
            ),
            (0, 1)
        );
    }

    pub async fn one_leader_at_a_time_until_its_lease_expires<S: JobStore>(store: S) {
        let ttl = Duration::from_millis(300);
        assert!(store.try_lead("duty", "a", ttl).await.unwrap());
        assert!(!store.try_lead("duty", "b", ttl).await.unwrap());
        assert!(
            store.try_lead("duty", "a", ttl).await.unwrap(),
            "the holder renews"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            store.try_lead("duty", "b", ttl).await.unwrap(),
            "an expired lease moves"
        );
        store.resign("duty", "b").await.unwrap();
        assert!(
            store.try_lead("duty", "a", ttl).await.unwrap(),
            "a resigned lease is free"
        );
    }
}
