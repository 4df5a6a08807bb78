-- The gateway's own data: tenants and their API keys. Only the gateway
-- reads or writes this schema; other apps learn a request's tenant from
-- the principal the gateway passes them.

CREATE SCHEMA IF NOT EXISTS gateway;

CREATE TABLE gateway.tenant (
  tenant_id  text PRIMARY KEY CHECK (tenant_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
  name       text NOT NULL DEFAULT '',
  state      text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended')),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Keyed by (tenant, key id): the key itself names its tenant, so a lookup
-- never crosses tenants. Only the HMAC of the secret is stored, with the
-- id of the pepper it was made under.
CREATE TABLE gateway.api_key (
  tenant_id    text NOT NULL REFERENCES gateway.tenant ON DELETE CASCADE,
  key_id       text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
  digest       bytea NOT NULL,
  pepper_id    text NOT NULL,
  scopes       text[] NOT NULL,
  name         text NOT NULL DEFAULT '',
  created_at   timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz,
  revoked_at   timestamptz,
  last_used_at timestamptz,
  PRIMARY KEY (tenant_id, key_id)
);
