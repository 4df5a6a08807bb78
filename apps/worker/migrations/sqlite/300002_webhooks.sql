-- Tenants' webhook endpoints and their deliveries (see the PostgreSQL
-- migration). Times are Unix microseconds.

CREATE TABLE worker_webhook_endpoint (
  tenant_id             TEXT NOT NULL,
  endpoint_id           TEXT NOT NULL,
  url                   TEXT NOT NULL,
  description           TEXT NOT NULL DEFAULT '',
  events                TEXT NOT NULL DEFAULT '[]',
  enabled               INTEGER NOT NULL DEFAULT 1,
  disabled_reason       TEXT NOT NULL DEFAULT '',
  max_in_flight         INTEGER NOT NULL,
  secret_generation     INTEGER NOT NULL DEFAULT 1,
  previous_secret_until INTEGER,
  failing_since         INTEGER,
  created_at            INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, endpoint_id)
);

CREATE TABLE worker_webhook_delivery (
  tenant_id   TEXT NOT NULL,
  delivery_id TEXT NOT NULL,
  endpoint_id TEXT NOT NULL,
  event       TEXT NOT NULL,
  payload     TEXT NOT NULL,
  state       TEXT NOT NULL DEFAULT 'pending',
  attempts    INTEGER NOT NULL DEFAULT 0,
  last_status INTEGER NOT NULL DEFAULT 0,
  last_error  TEXT NOT NULL DEFAULT '',
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  PRIMARY KEY (tenant_id, delivery_id),
  FOREIGN KEY (tenant_id, endpoint_id)
    REFERENCES worker_webhook_endpoint (tenant_id, endpoint_id) ON DELETE CASCADE
);
CREATE INDEX worker_webhook_delivery_by_endpoint
  ON worker_webhook_delivery (tenant_id, endpoint_id, created_at DESC, delivery_id DESC);
CREATE INDEX worker_webhook_delivery_by_age ON worker_webhook_delivery (created_at);
