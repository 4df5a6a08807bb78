//! `platform.jobs.v1.JobsService` over the jobs engine. Domain errors
//! become gRPC statuses in exactly one place, [`status`].

use std::time::Duration;

use contracts::jobs::v1::{self as pb, jobs_service_server::JobsService};
use jobs::{ArgsError, JobStore, JobsError, ListFilter, NewJob, QueueConfig, Registry, UniqueOpts};
use tonic::{Request, Response, Status};

use crate::{
    convert::{job_to_pb, state_from_pb, struct_to_json, timestamp_to_chrono},
    error::{ApiError, status},
};

/// Most jobs one `EnqueueJobs` call may carry.
pub const MAX_BATCH: usize = 10_000;
/// Default page size for `ListJobs`.
const DEFAULT_PAGE: u32 = 50;

/// The gRPC handler: the store, the job types (to validate args at the
/// door) and this node's queue limits (for stats).
#[derive(Debug, Clone)]
pub struct JobsApi<S> {
    store: S,
    registry: Registry,
    queues: Vec<QueueConfig>,
}

impl<S: JobStore> JobsApi<S> {
    /// A handler over `store`.
    pub fn new(store: S, registry: Registry, queues: Vec<QueueConfig>) -> Self {
        Self {
            store,
            registry,
            queues,
        }
    }

    /// Turns a request's job into an engine job, naming the field at fault.
    fn new_job(&self, spec: pb::JobSpec, field: &str) -> Result<NewJob, Status> {
        let invalid = |name: &str, problem: String| {
            status(ApiError::invalid(format!("{field}.{name}"), problem))
        };
        if spec.kind.is_empty() {
            return Err(invalid("kind", "is required".into()));
        }
        let args = spec
            .args
            .map_or_else(|| serde_json::json!({}), struct_to_json);
        self.registry
            .validate(&spec.kind, &args)
            .map_err(|error| match error {
                ArgsError::UnknownKind { .. } => invalid("kind", error.to_string()),
                ArgsError::Invalid(_) => invalid("args", error.to_string()),
            })?;
        let mut job = NewJob::new(spec.kind, args).with_tags(spec.tags);
        if !spec.queue.is_empty() {
            job = job.with_queue(spec.queue);
        }
        if let Some(priority) = spec.priority {
            let priority = i16::try_from(priority)
                .map_err(|_| invalid("priority", "must be from 0 to 4".into()))?;
            job = job.with_priority(priority);
        }
        if let Some(max_attempts) = spec.max_attempts {
            job = job.with_max_attempts(max_attempts);
        }
        match spec.schedule {
            None => {}
            Some(pb::job_spec::Schedule::RunAt(at)) => {
                let at = timestamp_to_chrono(&at)
                    .ok_or_else(|| invalid("run_at", "is out of range".into()))?;
                job = job.scheduled_at(at);
            }
            Some(pb::job_spec::Schedule::RunIn(delay)) => {
                let delay = Duration::try_from(delay)
                    .map_err(|_| invalid("run_in", "must not be negative".into()))?;
                job = job.scheduled_in(delay);
            }
        }
        if let Some(unique) = spec.unique {
            let mut opts = UniqueOpts {
                by_queue: unique.by_queue,
                ..UniqueOpts::default()
            };
            if !unique.by_args.is_empty() {
                opts.by_args = Some(unique.by_args);
            }
            if let Some(period) = unique.by_period {
                let period = Duration::try_from(period)
                    .map_err(|_| invalid("unique.by_period", "must not be negative".into()))?;
                opts.by_period = Some(period);
            }
            if !unique.states.is_empty() {
                opts.states = unique
                    .states
                    .iter()
                    .map(|s| pb::JobState::try_from(*s).ok().and_then(state_from_pb))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        invalid(
                            "unique.states",
                            "contains an unknown or unspecified state".into(),
                        )
                    })?;
            }
            job = job.unique(opts);
        }
        job.validate().map_err(|error| match error {
            JobsError::InvalidJob {
                field: name,
                problem,
            } => invalid(name, problem),
            other => status(other),
        })?;
        Ok(job)
    }

    async fn queue_stats(&self, only: Option<&str>) -> Result<Vec<pb::QueueStats>, Status> {
        let counts = self.store.queue_counts().await.map_err(status)?;
        let mut names: Vec<String> = counts.iter().map(|c| c.queue.clone()).collect();
        names.extend(self.queues.iter().map(|q| q.name.clone()));
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .filter(|name| only.is_none_or(|only| only == name))
            .map(|name| {
                let found = counts.iter().find(|c| c.queue == name);
                let count = |state| found.map_or(0, |c| c.count(state));
                let config = self.queues.iter().find(|q| q.name == name);
                pb::QueueStats {
                    paused: found.is_some_and(|c| c.paused),
                    available: count(jobs::JobState::Available),
                    scheduled: count(jobs::JobState::Scheduled),
                    executing: count(jobs::JobState::Executing),
                    retryable: count(jobs::JobState::Retryable),
                    completed: count(jobs::JobState::Completed),
                    completed_estimated: found.is_some_and(|c| c.completed_estimated),
                    completed_per_second: found.map_or(0.0, |c| c.completed_per_second),
                    discarded: count(jobs::JobState::Discarded),
                    cancelled: count(jobs::JobState::Cancelled),
                    local_limit: config.map_or(0, |q| q.local_limit),
                    global_limit: config.and_then(|q| q.global_limit).unwrap_or(0),
                    oldest_available_at: found
                        .and_then(|c| c.oldest_available)
                        .map(crate::convert::chrono_to_timestamp),
                    queue: name,
                }
            })
            .collect())
    }
}

/// Writes an operator action's outcome to the audit log and passes the
/// result on.
fn audited<T>(
    actor: &str,
    action: &str,
    target: &str,
    result: Result<T, Status>,
) -> Result<T, Status> {
    security::audit::record(&security::audit::AuditEvent {
        actor,
        action,
        target,
        outcome: security::audit::AuditOutcome::of(&result),
    });
    result
}

fn queue_name(queue: &str) -> Result<&str, Status> {
    if queue.is_empty() || queue.len() > 128 {
        return Err(status(ApiError::invalid(
            "queue",
            "must be 1 to 128 characters",
        )));
    }
    Ok(queue)
}

#[tonic::async_trait]
impl<S: JobStore> JobsService for JobsApi<S> {
    async fn enqueue_job(
        &self,
        request: Request<pb::EnqueueJobRequest>,
    ) -> Result<Response<pb::EnqueueJobResponse>, Status> {
        let spec = request
            .into_inner()
            .job
            .ok_or_else(|| status(ApiError::invalid("job", "is required")))?;
        let job = self.new_job(spec, "job")?;
        let inserted = self.store.insert_many(&[job]).await.map_err(status)?;
        let inserted = inserted
            .into_iter()
            .next()
            .ok_or_else(|| status(ApiError::Internal("insert returned nothing")))?;
        Ok(Response::new(pb::EnqueueJobResponse {
            job: Some(job_to_pb(inserted.job)),
            duplicate: inserted.duplicate,
        }))
    }

    async fn enqueue_jobs(
        &self,
        request: Request<pb::EnqueueJobsRequest>,
    ) -> Result<Response<pb::EnqueueJobsResponse>, Status> {
        let specs = request.into_inner().jobs;
        if specs.len() > MAX_BATCH {
            return Err(status(ApiError::invalid(
                "jobs",
                format!("at most {MAX_BATCH} per call, got {}", specs.len()),
            )));
        }
        // Validate every job before writing any: all or none.
        let jobs = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| self.new_job(spec, &format!("jobs[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let inserted = self.store.insert_many(&jobs).await.map_err(status)?;
        let results = inserted
            .into_iter()
            .map(|i| pb::EnqueueJobResponse {
                job: Some(job_to_pb(i.job)),
                duplicate: i.duplicate,
            })
            .collect();
        Ok(Response::new(pb::EnqueueJobsResponse { results }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let id = request.into_inner().id;
        let job = self
            .store
            .get(id)
            .await
            .map_err(status)?
            .ok_or_else(|| status(JobsError::NotFound(id)))?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(job_to_pb(job)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let states = request
            .states
            .iter()
            .map(|s| pb::JobState::try_from(*s).ok().and_then(state_from_pb))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                status(ApiError::invalid(
                    "states",
                    "contains an unknown or unspecified state",
                ))
            })?;
        let before_id = if request.page_token.is_empty() {
            None
        } else {
            Some(
                request
                    .page_token
                    .parse::<i64>()
                    .map_err(|_| status(ApiError::invalid("page_token", "malformed")))?,
            )
        };
        let limit = if request.page_size == 0 {
            DEFAULT_PAGE
        } else {
            request.page_size.min(jobs::MAX_LIST)
        };
        let some = |s: String| (!s.is_empty()).then_some(s);
        let filter = ListFilter {
            states,
            queue: some(request.queue),
            kind: some(request.kind),
            tag: some(request.tag),
            before_id,
            limit,
        };
        let page = self.store.list_page(&filter).await.map_err(status)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.jobs.into_iter().map(job_to_pb).collect(),
            next_page_token: page
                .next_before
                .map_or_else(String::new, |before| before.to_string()),
            searched_from_id: page.searched_from.unwrap_or(0),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let id = request.into_inner().id;
        let job = audited(
            &actor,
            "job.cancel",
            &id.to_string(),
            self.store.cancel(id).await.map_err(status),
        )?;
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(job_to_pb(job)),
        }))
    }

    async fn discard_job(
        &self,
        request: Request<pb::DiscardJobRequest>,
    ) -> Result<Response<pb::DiscardJobResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let id = request.into_inner().id;
        let job = audited(
            &actor,
            "job.discard",
            &id.to_string(),
            self.store.discard(id).await.map_err(status),
        )?;
        Ok(Response::new(pb::DiscardJobResponse {
            job: Some(job_to_pb(job)),
        }))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let id = request.into_inner().id;
        let job = audited(
            &actor,
            "job.retry",
            &id.to_string(),
            self.store.retry(id).await.map_err(status),
        )?;
        Ok(Response::new(pb::RetryJobResponse {
            job: Some(job_to_pb(job)),
        }))
    }

    async fn get_queue_stats(
        &self,
        request: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        let queue = request.into_inner().queue;
        let only = (!queue.is_empty()).then_some(queue.as_str());
        Ok(Response::new(pb::GetQueueStatsResponse {
            queues: self.queue_stats(only).await?,
        }))
    }

    async fn pause_queue(
        &self,
        request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let queue = request.into_inner().queue;
        let paused = match queue_name(&queue) {
            Ok(name) => self.store.set_paused(name, true).await.map_err(status),
            Err(invalid) => Err(invalid),
        };
        audited(&actor, "queue.pause", &queue, paused)?;
        let stats = self.queue_stats(Some(&queue)).await?.into_iter().next();
        Ok(Response::new(pb::PauseQueueResponse { queue: stats }))
    }

    async fn resume_queue(
        &self,
        request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        let actor = security::audit::peer_actor(&request);
        let queue = request.into_inner().queue;
        let resumed = match queue_name(&queue) {
            Ok(name) => self.store.set_paused(name, false).await.map_err(status),
            Err(invalid) => Err(invalid),
        };
        audited(&actor, "queue.resume", &queue, resumed)?;
        let stats = self.queue_stats(Some(&queue)).await?.into_iter().next();
        Ok(Response::new(pb::ResumeQueueResponse { queue: stats }))
    }
}
