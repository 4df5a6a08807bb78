-- Readings keyed by (tenant, event id), as on PostgreSQL (see its
-- 200002): SQLite cannot change a primary key in place, so the table is
-- rebuilt, keeping every row.
CREATE TABLE ingest_reading_by_tenant (
  event_id    TEXT NOT NULL,
  tenant_id   TEXT NOT NULL,
  device_id   TEXT NOT NULL,
  metric      TEXT NOT NULL,
  value       REAL NOT NULL,
  observed_at INTEGER NOT NULL,
  attributes  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(attributes)),
  ingested_at INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, event_id)
);
INSERT INTO ingest_reading_by_tenant
       (event_id, tenant_id, device_id, metric, value, observed_at, attributes, ingested_at)
SELECT event_id, tenant_id, device_id, metric, value, observed_at, attributes, ingested_at
  FROM ingest_reading;
DROP TABLE ingest_reading;
ALTER TABLE ingest_reading_by_tenant RENAME TO ingest_reading;
CREATE INDEX ingest_reading_series_time ON ingest_reading (tenant_id, device_id, metric, observed_at);
CREATE INDEX ingest_reading_observed_at ON ingest_reading (observed_at);

-- Dead letters carry their tenant.
ALTER TABLE ingest_dead_letter ADD COLUMN tenant_id TEXT;
UPDATE ingest_dead_letter
   SET tenant_id = NULLIF(json_extract(payload, '$.tenant_id'), '')
 WHERE tenant_id IS NULL;
CREATE INDEX ingest_dead_letter_tenant ON ingest_dead_letter (tenant_id, id);
