use crate::both_stores;

both_stores!(a_duplicate_returns_the_existing_job_flagged);
both_stores!(bulk_inserts_with_duplicates_keep_one_per_key);
both_stores!(a_discarded_job_no_longer_holds_its_key);
both_stores!(concurrent_inserts_of_one_unique_job_create_exactly_one);

mod body {
    use jobs::{Completion, JobState, JobStore, NewJob, Outcome, UniqueOpts};
    use serde_json::json;

    fn unique_by_url(url: &str, nonce: u32) -> NewJob {
        NewJob::new("webhook", json!({"url": url, "nonce": nonce})).unique(UniqueOpts {
            by_args: Some(vec!["url".into()]),
            ..UniqueOpts::default()
        })
    }

    pub async fn a_duplicate_returns_the_existing_job_flagged<S: JobStore>(store: S) {
        let first = store
            .insert_many(&[unique_by_url("a", 1)])
            .await
            .unwrap()
            .remove(0);
        let second = store
            .insert_many(&[unique_by_url("a", 2)])
            .await
            .unwrap()
            .remove(0);
        assert!(!first.duplicate);
        assert!(second.duplicate);
        assert_eq!(second.job.id, first.job.id);
        assert_eq!(
            second.job.args["nonce"], 1,
            "the existing job, not the new one"
        );
    }

    pub async fn bulk_inserts_with_duplicates_keep_one_per_key<S: JobStore>(store: S) {
        store
            .insert_many(&[unique_by_url("existing", 0)])
            .await
            .unwrap();
        let batch = [
            unique_by_url("x", 1),
            NewJob::new("noop", json!({})),
            unique_by_url("x", 2),
            unique_by_url("existing", 3),
            unique_by_url("y", 4),
        ];
        let out = store.insert_many(&batch).await.unwrap();
        let flags: Vec<bool> = out.iter().map(|i| i.duplicate).collect();
        assert_eq!(flags, [false, false, true, true, false]);
        assert_eq!(out[2].job.id, out[0].job.id);
        assert_eq!(out[4].job.args["url"], "y");
        assert_eq!(out[1].job.kind, "noop");
        let total: u64 = store
            .queue_counts()
            .await
            .unwrap()
            .iter()
            .map(|q| q.counts.iter().sum::<u64>())
            .sum();
        assert_eq!(total, 4);
    }

    pub async fn a_discarded_job_no_longer_holds_its_key<S: JobStore>(store: S) {
        let first = store
            .insert_many(&[unique_by_url("d", 1)])
            .await
            .unwrap()
            .remove(0)
            .job;
        let claimed = store
            .claim("default", 1, "n", None)
            .await
            .unwrap()
            .remove(0);
        let discard = Outcome::Discard {
            error: "gone".into(),
        };
        store
            .complete_many(&[Completion {
                id: claimed.id,
                attempt: claimed.attempt,
                outcome: discard,
            }])
            .await
            .unwrap();
        let again = store
            .insert_many(&[unique_by_url("d", 2)])
            .await
            .unwrap()
            .remove(0);
        assert!(!again.duplicate);
        assert_ne!(again.job.id, first.id);
        // Retrying the discarded one would make two live holders: refused.
        let error = store.retry(first.id).await.unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "job {} is discarded: a live job holds its unique key",
                first.id
            )
        );
        assert_eq!(
            store.get(first.id).await.unwrap().unwrap().state,
            JobState::Discarded
        );
    }

    pub async fn concurrent_inserts_of_one_unique_job_create_exactly_one<S: JobStore>(store: S) {
        let mut tasks = Vec::new();
        for nonce in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .insert_many(&[unique_by_url("race", nonce)])
                    .await
                    .unwrap()
                    .remove(0)
            }));
        }
        let mut created = 0;
        let mut ids = std::collections::HashSet::new();
        for task in tasks {
            let inserted = task.await.unwrap();
            created += usize::from(!inserted.duplicate);
            ids.insert(inserted.job.id);
        }
        assert_eq!(created, 1);
        assert_eq!(ids.len(), 1, "every caller got the same job");
    }
}
