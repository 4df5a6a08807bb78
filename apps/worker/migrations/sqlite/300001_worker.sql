-- The worker app's own data, prefixed `worker_` in the shared embedded file.

CREATE TABLE worker_job_runs (
  job_id  INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  node    TEXT NOT NULL,
  ran_at  INTEGER NOT NULL
);
CREATE INDEX worker_job_runs_job ON worker_job_runs (job_id);
