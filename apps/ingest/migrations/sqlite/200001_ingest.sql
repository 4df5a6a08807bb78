-- The ingest app's data in the embedded (SQLite) database, prefixed
-- `ingest_`: the file is shared with the jobs tables so a batch and its
-- aggregation jobs commit in one transaction. Times are unix microseconds.

CREATE TABLE ingest_reading (
  event_id    TEXT PRIMARY KEY,
  tenant_id   TEXT NOT NULL,
  device_id   TEXT NOT NULL,
  metric      TEXT NOT NULL,
  value       REAL NOT NULL,
  observed_at INTEGER NOT NULL,
  attributes  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(attributes)),
  ingested_at INTEGER NOT NULL
);
CREATE INDEX ingest_reading_series_time ON ingest_reading (tenant_id, device_id, metric, observed_at);
CREATE INDEX ingest_reading_observed_at ON ingest_reading (observed_at);

CREATE TABLE ingest_series_watermark (
  tenant_id TEXT NOT NULL,
  device_id TEXT NOT NULL,
  metric    TEXT NOT NULL,
  watermark INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, device_id, metric)
);

CREATE TABLE ingest_window_result (
  tenant_id      TEXT NOT NULL,
  device_id      TEXT NOT NULL,
  metric         TEXT NOT NULL,
  window_start   INTEGER NOT NULL,
  window_seconds INTEGER NOT NULL CHECK (window_seconds > 0),
  statistics     TEXT NOT NULL CHECK (json_valid(statistics)),
  anomaly_score  REAL NOT NULL,
  anomalous      INTEGER NOT NULL,
  model_version  TEXT NOT NULL,
  computed_at    INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, device_id, metric, window_start, window_seconds)
);

CREATE TABLE ingest_dead_letter (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  received_at INTEGER NOT NULL,
  source      TEXT NOT NULL,
  event_id    TEXT,
  field       TEXT NOT NULL,
  reason      TEXT NOT NULL,
  payload     TEXT NOT NULL CHECK (json_valid(payload))
);
