-- Enqueueing without access to the jobs tables. An app that only enqueues
-- (ingest, in the transaction that stores the reading closing a window)
-- runs as a role that may execute these two functions and nothing else in
-- this schema: it can neither read other jobs' arguments nor change their
-- state. Every enqueue goes through them, the worker's too, so there is
-- one insert path to reason about.
--
-- SECURITY DEFINER: they run with their owner's rights (the migrator that
-- created the tables). The fixed search_path keeps a caller from planting
-- its own `unnest` or `now` ahead of pg_catalog; every object of ours is
-- named with its schema.

-- Inserts jobs given column by column (one array per column, one element
-- per job, in input order) and returns the rows inserted; a unique job
-- whose key is held by a live job is skipped (the caller looks up the
-- holder with jobs.unique_holders).
CREATE FUNCTION jobs.enqueue(
  kinds text[], queues text[], args text[], metas text[], tags text[], priorities smallint[],
  max_attempts integer[], scheduled timestamptz[], keys bytea[], masks integer[]
) RETURNS TABLE (id bigint, inserted_at timestamptz, unique_key bytea)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO jobs.job (kind, queue, args, meta, tags, priority, max_attempts, state, scheduled_at,
                        unique_key, unique_states)
  SELECT input.kind, input.queue, input.args::jsonb, COALESCE(input.meta::jsonb, '{}'),
         COALESCE(input.tags::text[], '{}'), input.priority, input.max_attempts,
         CASE WHEN input.scheduled_at > now() THEN 'scheduled' ELSE 'available' END::jobs.job_state,
         COALESCE(input.scheduled_at, now()), input.unique_key, input.unique_states
  FROM unnest(kinds, queues, args, metas, tags, priorities, max_attempts, scheduled, keys, masks)
       WITH ORDINALITY AS input(kind, queue, args, meta, tags, priority, max_attempts, scheduled_at,
                                unique_key, unique_states, position)
  ORDER BY input.position
  ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND (unique_states & jobs.state_bit(state)) <> 0
  DO NOTHING
  RETURNING job.id, job.inserted_at, job.unique_key
$$;

-- The live jobs holding `keys`: the originals of duplicates an enqueue
-- skipped, so the caller can answer with the job that holds its key.
CREATE FUNCTION jobs.unique_holders(keys bytea[]) RETURNS SETOF jobs.job
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
  SELECT * FROM jobs.job
  WHERE job.unique_key = ANY(keys) AND (job.unique_states & jobs.state_bit(job.state)) <> 0
$$;

REVOKE ALL ON FUNCTION jobs.enqueue(text[], text[], text[], text[], text[], smallint[], integer[],
                                    timestamptz[], bytea[], integer[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION jobs.unique_holders(bytea[]) FROM PUBLIC;
