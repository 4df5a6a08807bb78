-- Per-tenant daily quota of readings and usage per UTC day (see the
-- PostgreSQL migration); days as YYYY-MM-DD.

ALTER TABLE gateway_tenant ADD COLUMN readings_per_day INTEGER CHECK (readings_per_day >= 0);

CREATE TABLE gateway_daily_usage (
  tenant_id TEXT NOT NULL REFERENCES gateway_tenant (tenant_id) ON DELETE CASCADE,
  day       TEXT NOT NULL,
  readings  INTEGER NOT NULL DEFAULT 0 CHECK (readings >= 0),
  PRIMARY KEY (tenant_id, day)
);
