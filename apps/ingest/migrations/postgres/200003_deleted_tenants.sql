-- Tenants whose data was deleted (platform.tenancy.v1.DeleteTenantData).
-- Remembered so that work still in flight for them stores nothing
-- afterwards: a window result recorded late is refused, and readings
-- naming them are rejected. Tenant ids are never reused (the gateway keeps
-- its tombstone too).
CREATE TABLE ingest.deleted_tenant (
  tenant_id  text PRIMARY KEY,
  deleted_at timestamptz NOT NULL DEFAULT now()
);
