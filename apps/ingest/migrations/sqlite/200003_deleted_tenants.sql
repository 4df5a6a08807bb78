-- Tenants whose data was deleted (see the PostgreSQL migration).
CREATE TABLE ingest_deleted_tenant (
  tenant_id  TEXT PRIMARY KEY,
  deleted_at INTEGER NOT NULL -- microseconds since the epoch
);
