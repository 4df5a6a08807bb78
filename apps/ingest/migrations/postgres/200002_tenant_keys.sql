-- Event ids are chosen by producers, so they are unique per tenant only.
-- Keyed by event id alone, one tenant publishing another's ids had them
-- counted as duplicates (and dropped the other tenant's later readings,
-- and learned which ids exist). Readings are keyed by (tenant, event id).
--
-- Rebuilding the primary key locks the table while its index builds. For
-- a large table, build the index beforehand without blocking writers:
--   CREATE UNIQUE INDEX CONCURRENTLY reading_tenant_event
--     ON ingest.reading (tenant_id, event_id);
-- and this migration only swaps it in.
ALTER TABLE ingest.reading DROP CONSTRAINT reading_pkey;
DO $$
BEGIN
  IF to_regclass('ingest.reading_tenant_event') IS NOT NULL THEN
    ALTER TABLE ingest.reading
      ADD CONSTRAINT reading_pkey PRIMARY KEY USING INDEX reading_tenant_event;
  ELSE
    ALTER TABLE ingest.reading ADD PRIMARY KEY (tenant_id, event_id);
  END IF;
END
$$;

-- Dead letters belong to a tenant too: the tenant the message named (or,
-- for NATS, its subject's); NULL only when neither is known.
ALTER TABLE ingest.dead_letter ADD COLUMN tenant_id text;
UPDATE ingest.dead_letter
   SET tenant_id = NULLIF(payload->>'tenant_id', '')
 WHERE tenant_id IS NULL;
CREATE INDEX dead_letter_tenant ON ingest.dead_letter (tenant_id, id);
