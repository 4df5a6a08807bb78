-- Per-tenant limits and deletion (see the PostgreSQL migration).

ALTER TABLE gateway_tenant ADD COLUMN max_series INTEGER CHECK (max_series >= 0);
ALTER TABLE gateway_tenant ADD COLUMN retention_days INTEGER CHECK (retention_days > 0);
ALTER TABLE gateway_tenant ADD COLUMN delete_requested_at INTEGER;
ALTER TABLE gateway_tenant ADD COLUMN deleted_at INTEGER;
