-- What an operator's console asks of the jobs table with a million jobs in
-- it, answered from indexes the hot path (insert, claim, complete of a job
-- without tags) never writes: every index a state change touches costs
-- each job a write, so these hold only rows that few jobs become.

-- The claim index again, carrying each row's state: the counts of
-- available, scheduled and retryable jobs per queue then come from the
-- index alone, not from the table pages those rows are scattered over
-- (a week of jobs puts a scheduled or retrying one on nearly every page).
-- Same key and predicate, so the claim query's plan is unchanged, and no
-- state change writes to it that did not before.
-- contract: no release reads an index by name, and the replacement has the
-- old one's key and predicate under the old name, so the previous release's
-- claim (running during a rollout) keeps its plan; nothing is taken away.
CREATE INDEX job_claim_with_state ON jobs.job (queue, priority, scheduled_at, id) INCLUDE (state)
  WHERE state IN ('available', 'scheduled', 'retryable');
DROP INDEX jobs.job_claim;
ALTER INDEX jobs.job_claim_with_state RENAME TO job_claim;

-- Jobs that ended discarded or cancelled, newest first, and their count
-- per queue from the index alone. Written only when a job ends that way.
CREATE INDEX job_failed ON jobs.job (id) INCLUDE (queue, state)
  WHERE state IN ('discarded', 'cancelled');

-- Jobs by tag. Only jobs that carry tags are written here.
CREATE INDEX job_tags ON jobs.job USING gin (tags) WHERE tags <> '{}';

-- How queue and state go together, so that the planner's estimate of a
-- queue's completed jobs (the one count too large to take exactly on a
-- big table) follows the real mix of queues and states.
CREATE STATISTICS jobs.job_queue_state (mcv) ON queue, state FROM jobs.job;

-- The planner's estimate of one queue's completed jobs (EXPLAIN, nothing
-- read): what the console shows, marked as an estimate, once the table is
-- too big to count them in the time a page has.
CREATE FUNCTION jobs.estimated_completed(queue_name text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  plan json;
BEGIN
  EXECUTE format(
    'EXPLAIN (FORMAT JSON) SELECT 1 FROM jobs.job WHERE queue = %L AND state = %L',
    queue_name, 'completed')
  INTO plan;
  RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::bigint;
END
$$;
