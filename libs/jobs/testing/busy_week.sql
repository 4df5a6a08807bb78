-- A week of a busy platform's jobs, as a 7-day retention leaves them:
-- `SELECT pg_temp.seed_busy_week(n)` inserts n jobs into a migrated jobs
-- table (then run VACUUM ANALYZE, as autovacuum would). About 94%
-- completed; the newest 3% a backlog of available jobs (every 60th
-- executing); 1% scheduled an hour ahead, 0.5% retrying, 1.5% discarded and
-- 0.5% cancelled, spread over the week; queues from `default` (50%) down to
-- `audit-export` (0.1%); 20 kinds and a rare `tenant.export` (0.02%); 10%
-- tagged `nightly`, 1% `tenant:acme`, and `incident-42` on a few dozen of
-- the oldest. Used by the console's plan tests
-- (`jobs::testing::seed_busy_week`) and its benchmark
-- (`apps/gateway/bench/console_jobs.sh`, through psql).
CREATE FUNCTION pg_temp.seed_busy_week(n bigint) RETURNS void
LANGUAGE sql AS $$
INSERT INTO jobs.job (state, queue, kind, args, tags, attempt, attempted_by,
                       inserted_at, scheduled_at, attempted_at, finalized_at)
  SELECT s.state::jobs.job_state, q.queue, k.kind,
         jsonb_build_object('tenant', 'tenant-' || (i % 50), 'n', i),
         CASE WHEN i % 10 = 0 THEN ARRAY['nightly']
              WHEN i % 97 = 0 THEN ARRAY['tenant:acme', 'export']
              WHEN i * 200 < n AND i % 100 = 1 THEN ARRAY['incident-42']
              ELSE '{}' END,
         CASE WHEN s.state IN ('available', 'scheduled') THEN 0 ELSE 1 END,
         CASE WHEN s.state IN ('available', 'scheduled') THEN NULL ELSE 'node-1' END,
         t.at,
         CASE WHEN s.state = 'scheduled' THEN now() + interval '1 hour' ELSE t.at END,
         CASE WHEN s.state IN ('available', 'scheduled') THEN NULL ELSE t.at END,
         CASE WHEN s.state IN ('completed', 'discarded', 'cancelled')
              THEN t.at + interval '1 second' END
  FROM generate_series(1, n) AS i
  CROSS JOIN LATERAL (SELECT now() - interval '7 days' * (1 - i::float8 / n) AS at) t
  CROSS JOIN LATERAL (SELECT CASE
      WHEN i * 100 > n * 97 THEN CASE WHEN i % 60 = 0 THEN 'executing' ELSE 'available' END
      WHEN i % 100 = 0 THEN 'scheduled'
      WHEN i % 200 = 1 THEN 'retryable'
      WHEN i % 67 = 2 THEN 'discarded'
      WHEN i % 199 = 3 THEN 'cancelled'
      ELSE 'completed' END AS state) s
  CROSS JOIN LATERAL (SELECT CASE
      WHEN i % 1000 = 7 THEN 'audit-export'
      WHEN i % 100 < 3 THEN 'mail'
      WHEN i % 100 < 10 THEN 'reports'
      WHEN i % 100 < 25 THEN 'aggregation'
      WHEN i % 100 < 50 THEN 'webhooks'
      ELSE 'default' END AS queue) q
  CROSS JOIN LATERAL (SELECT CASE
      WHEN i % 5000 = 11 THEN 'tenant.export'
      ELSE 'kind.' || ((i * 7919) % 20) END AS kind) k;
$$;
