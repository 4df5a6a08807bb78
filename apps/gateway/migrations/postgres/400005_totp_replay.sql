-- The last TOTP time step each operator signed in (or enrolled) with: a
-- code is accepted once, and never one from an earlier step, so a code
-- seen over a shoulder or in a log cannot be replayed within its window.
ALTER TABLE gateway.operator ADD COLUMN totp_last_step bigint;
