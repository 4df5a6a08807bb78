use crate::both_stores;

both_stores!(a_stale_attempt_cannot_overwrite_a_newer_one);
both_stores!(outcomes_set_state_errors_and_attempts);
both_stores!(cancel_reaches_every_non_terminal_state);
both_stores!(a_discarded_or_cancelled_job_can_be_retried_by_hand);
both_stores!(a_waiting_job_can_be_discarded_by_hand_and_retried_later);
both_stores!(a_paused_queue_is_not_claimed_until_resumed);
both_stores!(a_global_limit_holds_across_nodes);
both_stores!(listing_filters_and_pages_newest_first);

mod body {
    use chrono::Utc;
    use jobs::{Completion, JobState, JobStore, ListFilter, NewJob, Outcome};
    use serde_json::json;

    async fn claim_one<S: JobStore>(store: &S, node: &str) -> jobs::Job {
        store
            .claim("default", 1, node, None)
            .await
            .unwrap()
            .remove(0)
    }

    pub async fn a_stale_attempt_cannot_overwrite_a_newer_one<S: JobStore>(store: S) {
        store
            .insert_many(&[NewJob::new("noop", json!({}))])
            .await
            .unwrap();
        let first = claim_one(&store, "a").await;
        // Node a goes silent; rescue hands the job back; node b claims it.
        assert_eq!(
            store
                .rescue(std::time::Duration::ZERO)
                .await
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            [first.id]
        );
        let second = claim_one(&store, "b").await;
        assert_eq!(second.attempt, 2);
        let stale = Completion {
            id: first.id,
            attempt: first.attempt,
            outcome: Outcome::Completed,
        };
        assert_eq!(
            store.complete_many(&[stale]).await.unwrap(),
            0,
            "the old attempt is ignored"
        );
        assert_eq!(
            store.get(first.id).await.unwrap().unwrap().state,
            JobState::Executing
        );
        let fresh = Completion {
            id: second.id,
            attempt: 2,
            outcome: Outcome::Completed,
        };
        assert_eq!(store.complete_many(&[fresh]).await.unwrap(), 1);
        let done = store.get(first.id).await.unwrap().unwrap();
        assert_eq!(done.state, JobState::Completed);
        assert!(done.finalized_at.is_some());
        assert!(
            done.errors[0]
                .error
                .starts_with("rescued: node a stopped heartbeating"),
            "{:?}",
            done.errors
        );
    }

    pub async fn outcomes_set_state_errors_and_attempts<S: JobStore>(store: S) {
        let jobs: Vec<_> = (0..4)
            .map(|i| NewJob::new("noop", json!({"i": i})))
            .collect();
        store.insert_many(&jobs).await.unwrap();
        let claimed = store.claim("default", 4, "n", None).await.unwrap();
        let later = Utc::now() + chrono::Duration::seconds(60);
        let ends = [
            Outcome::Retry {
                at: later,
                error: "flaky".into(),
            },
            Outcome::Snooze { until: later },
            Outcome::Discard {
                error: "bad input".into(),
            },
            Outcome::Cancelled {
                reason: "no longer wanted".into(),
            },
        ];
        let completions: Vec<_> = claimed
            .iter()
            .zip(ends)
            .map(|(job, outcome)| Completion {
                id: job.id,
                attempt: job.attempt,
                outcome,
            })
            .collect();
        assert_eq!(
            store.complete_many(&completions).await.unwrap(),
            4,
            "one statement, every end applied"
        );
        let get = |i: usize| {
            let store = store.clone();
            let id = claimed[i].id;
            async move { store.get(id).await.unwrap().unwrap() }
        };
        let retry = get(0).await;
        assert_eq!(
            (retry.state, retry.attempt, retry.errors[0].error.as_str()),
            (JobState::Retryable, 1, "flaky")
        );
        assert_eq!(retry.scheduled_at.timestamp(), later.timestamp());
        let snoozed = get(1).await;
        assert_eq!(
            (snoozed.state, snoozed.attempt),
            (JobState::Scheduled, 0),
            "a snooze spends no attempt"
        );
        assert!(snoozed.errors.is_empty());
        let discarded = get(2).await;
        assert_eq!(discarded.state, JobState::Discarded);
        assert_eq!(discarded.errors[0].attempt, 1);
        assert!(discarded.finalized_at.is_some());
        let cancelled = get(3).await;
        assert_eq!(
            (cancelled.state, cancelled.errors[0].error.as_str()),
            (JobState::Cancelled, "no longer wanted")
        );
        assert!(
            store
                .claim("default", 10, "n", None)
                .await
                .unwrap()
                .is_empty(),
            "nothing is due now"
        );
    }

    pub async fn cancel_reaches_every_non_terminal_state<S: JobStore>(store: S) {
        let inserted = store
            .insert_many(&[
                NewJob::new("noop", json!({"n": "available"})),
                NewJob::new("noop", json!({"n": "scheduled"}))
                    .scheduled_in(std::time::Duration::from_secs(60)),
                NewJob::new("noop", json!({"n": "executing"})).with_priority(0),
            ])
            .await
            .unwrap();
        let executing = claim_one(&store, "n").await;
        assert_eq!(executing.args["n"], "executing");
        for row in &inserted[..2] {
            let cancelled = store.cancel(row.job.id).await.unwrap();
            assert_eq!(cancelled.state, JobState::Cancelled);
            assert!(cancelled.finalized_at.is_some());
        }
        // An executing job is only marked; its node ends it.
        let marked = store.cancel(executing.id).await.unwrap();
        assert_eq!(marked.state, JobState::Executing);
        assert!(marked.cancel_requested_at.is_some());
        assert_eq!(
            store
                .cancel_requested(&[executing.id, inserted[0].job.id])
                .await
                .unwrap(),
            [executing.id]
        );
        let error = store
            .cancel(inserted[0].job.id)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "job {} is cancelled: it has already finished",
                inserted[0].job.id
            )
        );
        assert_eq!(
            store.cancel(987_654).await.unwrap_err().to_string(),
            "job 987654 not found"
        );
        // If its node died instead, rescue honours the request.
        store.rescue(std::time::Duration::ZERO).await.unwrap();
        assert_eq!(
            store.get(executing.id).await.unwrap().unwrap().state,
            JobState::Cancelled
        );
    }

    pub async fn a_discarded_or_cancelled_job_can_be_retried_by_hand<S: JobStore>(store: S) {
        store
            .insert_many(&[NewJob::new("noop", json!({})).with_max_attempts(1)])
            .await
            .unwrap();
        let job = claim_one(&store, "n").await;
        let discard = Outcome::Discard {
            error: "boom".into(),
        };
        store
            .complete_many(&[Completion {
                id: job.id,
                attempt: 1,
                outcome: discard,
            }])
            .await
            .unwrap();
        let retried = store.retry(job.id).await.unwrap();
        assert_eq!(retried.state, JobState::Available);
        assert_eq!(retried.max_attempts, 2, "one more attempt is granted");
        assert!(retried.finalized_at.is_none());
        assert_eq!(retried.errors.len(), 1, "history is kept");
        let again = claim_one(&store, "n").await;
        assert_eq!(again.attempt, 2);
        let error = store.retry(job.id).await.unwrap_err().to_string();
        assert!(
            error.ends_with(
                "only a discarded, cancelled, retryable or scheduled job can be retried"
            ),
            "{error}"
        );
    }

    pub async fn a_waiting_job_can_be_discarded_by_hand_and_retried_later<S: JobStore>(store: S) {
        let inserted = store
            .insert_many(&[
                NewJob::new("noop", json!({"n": 1})),
                NewJob::new("noop", json!({"n": 2}))
                    .scheduled_in(std::time::Duration::from_secs(3600)),
                NewJob::new("noop", json!({"n": 3})),
            ])
            .await
            .unwrap();
        let (available, scheduled) = (inserted[0].job.id, inserted[1].job.id);
        for id in [available, scheduled] {
            let discarded = store.discard(id).await.unwrap();
            assert_eq!(discarded.state, JobState::Discarded);
            assert!(discarded.finalized_at.is_some());
        }
        // A discarded job is never claimed; the other one is.
        let claimed = claim_one(&store, "n").await;
        assert_eq!(claimed.id, inserted[2].job.id);
        assert!(
            store
                .claim("default", 10, "n", None)
                .await
                .unwrap()
                .is_empty()
        );
        // An executing job is cancelled, not discarded; a finished one neither.
        for id in [claimed.id, available] {
            let error = store.discard(id).await.unwrap_err().to_string();
            assert!(
                error.ends_with("only an available, scheduled or retryable job can be discarded (cancel an executing one)"),
                "{error}"
            );
        }
        assert_eq!(
            store.discard(987_654).await.unwrap_err().to_string(),
            "job 987654 not found"
        );
        // Discarding is not the end: it can be retried by hand.
        assert_eq!(
            store.retry(available).await.unwrap().state,
            JobState::Available
        );
    }

    pub async fn a_paused_queue_is_not_claimed_until_resumed<S: JobStore>(store: S) {
        store
            .insert_many(&[NewJob::new("noop", json!({})).with_queue("mail")])
            .await
            .unwrap();
        store.set_paused("mail", true).await.unwrap();
        assert!(store.claim("mail", 10, "n", None).await.unwrap().is_empty());
        let stats = store.queue_counts().await.unwrap();
        let mail = stats.iter().find(|q| q.queue == "mail").unwrap();
        assert!(mail.paused);
        assert_eq!(mail.count(JobState::Available), 1);
        store.set_paused("mail", false).await.unwrap();
        assert_eq!(store.claim("mail", 10, "n", None).await.unwrap().len(), 1);
    }

    pub async fn a_global_limit_holds_across_nodes<S: JobStore>(store: S) {
        let jobs: Vec<_> = (0..10)
            .map(|i| NewJob::new("noop", json!({"i": i})))
            .collect();
        store.insert_many(&jobs).await.unwrap();
        let a = store.claim("default", 10, "a", Some(3)).await.unwrap();
        let b = store.claim("default", 10, "b", Some(3)).await.unwrap();
        assert_eq!((a.len(), b.len()), (3, 0));
        store
            .complete_many(&[Completion {
                id: a[0].id,
                attempt: 1,
                outcome: Outcome::Completed,
            }])
            .await
            .unwrap();
        assert_eq!(
            store
                .claim("default", 10, "b", Some(3))
                .await
                .unwrap()
                .len(),
            1
        );
    }

    pub async fn listing_filters_and_pages_newest_first<S: JobStore>(store: S) {
        let mut jobs: Vec<_> = (0..7)
            .map(|i| NewJob::new("noop", json!({"i": i})).with_tags(["batch"]))
            .collect();
        jobs.push(NewJob::new("webhook", json!({})).with_queue("hooks"));
        store.insert_many(&jobs).await.unwrap();
        let filter = ListFilter {
            tag: Some("batch".into()),
            limit: 3,
            ..ListFilter::default()
        };
        let page1 = store.list(&filter).await.unwrap();
        let page2 = store
            .list(&ListFilter {
                before_id: Some(page1[2].id),
                ..filter.clone()
            })
            .await
            .unwrap();
        let page3 = store
            .list(&ListFilter {
                before_id: Some(page2[2].id),
                ..filter.clone()
            })
            .await
            .unwrap();
        let seen: Vec<i64> = page1
            .iter()
            .chain(&page2)
            .chain(&page3)
            .map(|j| j.args["i"].as_i64().unwrap())
            .collect();
        assert_eq!(seen, [6, 5, 4, 3, 2, 1, 0]);
        let hooks = store
            .list(&ListFilter {
                queue: Some("hooks".into()),
                kind: Some("webhook".into()),
                limit: 50,
                ..ListFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(hooks.len(), 1);
        let none = store
            .list(&ListFilter {
                states: vec![JobState::Completed],
                limit: 50,
                ..ListFilter::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
