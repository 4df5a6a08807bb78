-- The gateway's own data in the shared SQLite file (tables prefixed
-- gateway_): tenants and their API keys, as in the PostgreSQL schema.

CREATE TABLE gateway_tenant (
  tenant_id  TEXT PRIMARY KEY,
  name       TEXT NOT NULL DEFAULT '',
  state      TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended')),
  created_at INTEGER NOT NULL, -- microseconds since the epoch, as every app here
  updated_at INTEGER NOT NULL
);

CREATE TABLE gateway_api_key (
  tenant_id    TEXT NOT NULL REFERENCES gateway_tenant (tenant_id) ON DELETE CASCADE,
  key_id       TEXT NOT NULL,
  digest       BLOB NOT NULL,
  pepper_id    TEXT NOT NULL,
  -- A JSON array of scope names.
  scopes       TEXT NOT NULL,
  name         TEXT NOT NULL DEFAULT '',
  created_at   INTEGER NOT NULL,
  expires_at   INTEGER,
  revoked_at   INTEGER,
  last_used_at INTEGER,
  PRIMARY KEY (tenant_id, key_id)
) WITHOUT ROWID;
