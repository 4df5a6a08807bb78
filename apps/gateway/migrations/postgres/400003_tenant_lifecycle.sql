-- Per-tenant limits beyond the daily readings (NULL: the gateway's
-- default) and deletion. A deleted tenant keeps its row as a tombstone,
-- with no name, keys or usage, so its id is never given to another
-- tenant: the apps remember deleted tenants by id.

ALTER TABLE gateway.tenant
  ADD COLUMN max_series          bigint CHECK (max_series >= 0),
  ADD COLUMN retention_days      bigint CHECK (retention_days > 0),
  ADD COLUMN delete_requested_at timestamptz,
  ADD COLUMN deleted_at          timestamptz;
