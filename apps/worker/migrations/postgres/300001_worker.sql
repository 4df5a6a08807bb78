-- The worker app's own data (schema `worker`). The jobs tables are not here:
-- they belong to libs/jobs.

CREATE SCHEMA IF NOT EXISTS worker;

-- One row per run of a `record_run` job: the crash tests and the benchmark
-- count these to prove no job was lost and to find duplicates.
CREATE TABLE worker.job_runs (
  job_id  bigint NOT NULL,
  attempt integer NOT NULL,
  node    text NOT NULL,
  ran_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_runs_job ON worker.job_runs (job_id);
