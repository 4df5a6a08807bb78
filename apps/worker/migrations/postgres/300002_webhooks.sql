-- Tenants' webhook endpoints and their deliveries (schema `worker`). Every
-- row carries its tenant in its key; signing secrets are not stored: each
-- is derived from the worker's webhook key, the endpoint and its secret
-- generation, so a leaked table leaks no secret.

CREATE TABLE worker.webhook_endpoint (
  tenant_id             text NOT NULL,
  endpoint_id           text NOT NULL,
  url                   text NOT NULL,
  description           text NOT NULL DEFAULT '',
  events                text NOT NULL DEFAULT '[]',   -- JSON array of event types
  enabled               boolean NOT NULL DEFAULT true,
  disabled_reason       text NOT NULL DEFAULT '',
  max_in_flight         integer NOT NULL,
  secret_generation     integer NOT NULL DEFAULT 1,
  previous_secret_until timestamptz,
  failing_since         timestamptz,
  created_at            timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, endpoint_id)
);

CREATE TABLE worker.webhook_delivery (
  tenant_id   text NOT NULL,
  delivery_id text NOT NULL,
  endpoint_id text NOT NULL,
  event       text NOT NULL,
  payload     text NOT NULL,                          -- JSON: the event's data
  state       text NOT NULL DEFAULT 'pending',
  attempts    integer NOT NULL DEFAULT 0,
  last_status integer NOT NULL DEFAULT 0,
  last_error  text NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, delivery_id),
  FOREIGN KEY (tenant_id, endpoint_id)
    REFERENCES worker.webhook_endpoint (tenant_id, endpoint_id) ON DELETE CASCADE
);
CREATE INDEX webhook_delivery_by_endpoint
  ON worker.webhook_delivery (tenant_id, endpoint_id, created_at DESC, delivery_id DESC);
CREATE INDEX webhook_delivery_by_age ON worker.webhook_delivery (created_at);
