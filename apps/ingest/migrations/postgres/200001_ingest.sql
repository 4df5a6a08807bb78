-- The ingest app's data (schema `ingest`). Other apps reach it only through
-- platform.ingest.v1.IngestService.

CREATE SCHEMA IF NOT EXISTS ingest;

-- One row per distinct event id: redelivery never duplicates a reading.
CREATE TABLE ingest.reading (
  event_id    text PRIMARY KEY,
  tenant_id   text NOT NULL,
  device_id   text NOT NULL,
  metric      text NOT NULL,
  value       double precision NOT NULL
                CHECK (value = value AND value NOT IN ('Infinity'::float8, '-Infinity'::float8)),
  observed_at timestamptz NOT NULL,
  attributes  jsonb NOT NULL DEFAULT '{}',
  ingested_at timestamptz NOT NULL DEFAULT now()
);
-- Window reads: one series, a time range.
CREATE INDEX reading_series_time ON ingest.reading (tenant_id, device_id, metric, observed_at);
-- Pruning by age.
CREATE INDEX reading_observed_at ON ingest.reading (observed_at);

-- Per series, the event-time watermark (latest observed_at minus lateness).
CREATE TABLE ingest.series_watermark (
  tenant_id text NOT NULL,
  device_id text NOT NULL,
  metric    text NOT NULL,
  watermark timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, device_id, metric)
);

-- Computed window results (statistics, anomaly score), one per window.
CREATE TABLE ingest.window_result (
  tenant_id      text NOT NULL,
  device_id      text NOT NULL,
  metric         text NOT NULL,
  window_start   timestamptz NOT NULL,
  window_seconds integer NOT NULL CHECK (window_seconds > 0),
  statistics     jsonb NOT NULL,
  anomaly_score  double precision NOT NULL,
  anomalous      boolean NOT NULL,
  model_version  text NOT NULL,
  computed_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, device_id, metric, window_start, window_seconds)
);

-- Messages that can never succeed, with the field at fault.
CREATE TABLE ingest.dead_letter (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  received_at timestamptz NOT NULL DEFAULT now(),
  source      text NOT NULL,
  event_id    text,
  field       text NOT NULL,
  reason      text NOT NULL,
  payload     jsonb NOT NULL
);
