-- The jobs engine's schema. Owned by libs/jobs; no other crate writes here.

CREATE SCHEMA IF NOT EXISTS jobs;

CREATE TYPE jobs.job_state AS ENUM (
  'available', 'scheduled', 'executing', 'retryable', 'completed', 'discarded', 'cancelled'
);

-- The bit of a state in a unique-states mask; must match JobState::bit().
CREATE FUNCTION jobs.state_bit(s jobs.job_state) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE s
    WHEN 'available' THEN 1 WHEN 'scheduled' THEN 2 WHEN 'executing' THEN 4
    WHEN 'retryable' THEN 8 WHEN 'completed' THEN 16 WHEN 'discarded' THEN 32
    WHEN 'cancelled' THEN 64 END
$$;

CREATE TABLE jobs.job (
  id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  state               jobs.job_state NOT NULL DEFAULT 'available',
  queue               text NOT NULL CHECK (length(queue) BETWEEN 1 AND 128),
  kind                text NOT NULL CHECK (length(kind) BETWEEN 1 AND 128),
  args                jsonb NOT NULL DEFAULT '{}',
  meta                jsonb NOT NULL DEFAULT '{}',
  tags                text[] NOT NULL DEFAULT '{}',
  errors              jsonb NOT NULL DEFAULT '[]',
  priority            smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 4),
  attempt             integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
  max_attempts        integer NOT NULL DEFAULT 20 CHECK (max_attempts > 0),
  attempted_by        text,
  inserted_at         timestamptz NOT NULL DEFAULT now(),
  scheduled_at        timestamptz NOT NULL DEFAULT now(),
  attempted_at        timestamptz,
  finalized_at        timestamptz,
  cancel_requested_at timestamptz,
  unique_key          bytea,
  unique_states       integer,
  CONSTRAINT attempt_within_max CHECK (attempt <= max_attempts),
  -- Timestamps match the state: a terminal job has finalized_at and only a
  -- terminal job has it; an executing job says who runs it since when; a
  -- job that ran has spent an attempt.
  CONSTRAINT timestamps_match_state CHECK (
    (state IN ('completed', 'discarded', 'cancelled')) = (finalized_at IS NOT NULL)
    AND (state <> 'executing' OR (attempted_at IS NOT NULL AND attempted_by IS NOT NULL AND attempt > 0))
    AND (state NOT IN ('retryable', 'completed') OR (attempted_at IS NOT NULL AND attempt > 0))
  ),
  CONSTRAINT unique_key_has_states CHECK ((unique_key IS NULL) = (unique_states IS NULL))
);

-- Serves the claim query: equality on queue, then the ORDER BY, over the
-- runnable rows only (so the index stays small however many jobs finished).
CREATE INDEX job_claim ON jobs.job (queue, priority, scheduled_at, id)
  WHERE state IN ('available', 'scheduled', 'retryable');

-- Counting a queue's executing jobs (global limits) and rescue by node.
CREATE INDEX job_executing ON jobs.job (queue, attempted_by) WHERE state = 'executing';

-- Pruning finished jobs oldest first.
CREATE INDEX job_finalized ON jobs.job (finalized_at) WHERE finalized_at IS NOT NULL;

-- Uniqueness: a key is held only while the row's state is in its mask.
CREATE UNIQUE INDEX job_unique_key ON jobs.job (unique_key)
  WHERE unique_key IS NOT NULL AND (unique_states & jobs.state_bit(state)) <> 0;

-- Queue settings shared by every node (pause is global and immediate).
CREATE TABLE jobs.queue (
  name       text PRIMARY KEY,
  paused     boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Live nodes; a node that stops heartbeating has its executing jobs rescued.
CREATE TABLE jobs.node (
  id           text PRIMARY KEY,
  started_at   timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Leases for periodic duties (cron, rescue, prune): one holder at a time.
CREATE TABLE jobs.leader (
  name       text PRIMARY KEY,
  node_id    text NOT NULL,
  expires_at timestamptz NOT NULL
);
