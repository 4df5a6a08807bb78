-- The jobs engine's tables in the embedded (SQLite) database. Owned by
-- libs/jobs; every table is prefixed `jobs_` because SQLite has no schemas
-- and the embedded database is shared with other apps' prefixed tables.

CREATE TABLE jobs_job (
  id                  INTEGER PRIMARY KEY AUTOINCREMENT,
  state               TEXT NOT NULL DEFAULT 'available' CHECK (state IN
                        ('available', 'scheduled', 'executing', 'retryable', 'completed', 'discarded', 'cancelled')),
  queue               TEXT NOT NULL CHECK (length(queue) BETWEEN 1 AND 128),
  kind                TEXT NOT NULL CHECK (length(kind) BETWEEN 1 AND 128),
  args                TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(args)),
  meta                TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(meta)),
  tags                TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
  errors              TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(errors)),
  priority            INTEGER NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 4),
  attempt             INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
  max_attempts        INTEGER NOT NULL DEFAULT 20 CHECK (max_attempts > 0),
  attempted_by        TEXT,
  -- Times are unix microseconds (UTC).
  inserted_at         INTEGER NOT NULL,
  scheduled_at        INTEGER NOT NULL,
  attempted_at        INTEGER,
  finalized_at        INTEGER,
  cancel_requested_at INTEGER,
  unique_key          BLOB,
  unique_states       INTEGER,
  CHECK (attempt <= max_attempts),
  CHECK (
    (state IN ('completed', 'discarded', 'cancelled')) = (finalized_at IS NOT NULL)
    AND (state <> 'executing' OR (attempted_at IS NOT NULL AND attempted_by IS NOT NULL AND attempt > 0))
    AND (state NOT IN ('retryable', 'completed') OR (attempted_at IS NOT NULL AND attempt > 0))
  ),
  CHECK ((unique_key IS NULL) = (unique_states IS NULL))
);

CREATE INDEX jobs_job_claim ON jobs_job (queue, priority, scheduled_at, id)
  WHERE state IN ('available', 'scheduled', 'retryable');
CREATE INDEX jobs_job_executing ON jobs_job (queue, attempted_by) WHERE state = 'executing';
CREATE INDEX jobs_job_finalized ON jobs_job (finalized_at) WHERE finalized_at IS NOT NULL;
CREATE UNIQUE INDEX jobs_job_unique_key ON jobs_job (unique_key)
  WHERE unique_key IS NOT NULL AND (unique_states & (CASE state
    WHEN 'available' THEN 1 WHEN 'scheduled' THEN 2 WHEN 'executing' THEN 4
    WHEN 'retryable' THEN 8 WHEN 'completed' THEN 16 WHEN 'discarded' THEN 32
    WHEN 'cancelled' THEN 64 END)) <> 0;

CREATE TABLE jobs_queue (
  name       TEXT PRIMARY KEY,
  paused     INTEGER NOT NULL DEFAULT 0,
  updated_at INTEGER NOT NULL
);

CREATE TABLE jobs_node (
  id           TEXT PRIMARY KEY,
  started_at   INTEGER NOT NULL,
  heartbeat_at INTEGER NOT NULL
);

CREATE TABLE jobs_leader (
  name       TEXT PRIMARY KEY,
  node_id    TEXT NOT NULL,
  expires_at INTEGER NOT NULL
);
