-- Per-tenant daily quota of readings (NULL: the gateway's default), and
-- each tenant's accepted readings per UTC day, counted as they are
-- reserved before publishing and corrected after.

ALTER TABLE gateway.tenant ADD COLUMN readings_per_day bigint CHECK (readings_per_day >= 0);

CREATE TABLE gateway.daily_usage (
  tenant_id text NOT NULL REFERENCES gateway.tenant ON DELETE CASCADE,
  day       date NOT NULL,
  readings  bigint NOT NULL DEFAULT 0 CHECK (readings >= 0),
  PRIMARY KEY (tenant_id, day)
);
