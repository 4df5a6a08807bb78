-- The ops console's operators: people who run the platform, not tenants
-- (nothing here belongs to a tenant). Passwords are argon2id PHC strings;
-- a session row is found by the SHA-256 of the cookie's token, so a copy
-- of this table opens no session; the audit log records who did what.

CREATE TABLE gateway.operator (
  operator_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  username            text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
  password_hash       text NOT NULL,
  role                text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
  created_at          timestamptz NOT NULL DEFAULT now(),
  password_changed_at timestamptz NOT NULL DEFAULT now(),
  disabled_at         timestamptz,
  -- The TOTP secret (RFC 6238), set once enrolment is confirmed.
  totp_secret         bytea CHECK (length(totp_secret) = 20)
);

-- One-time recovery codes for a lost second factor, by SHA-256.
CREATE TABLE gateway.operator_recovery_code (
  operator_id bigint NOT NULL REFERENCES gateway.operator ON DELETE CASCADE,
  code_digest bytea NOT NULL CHECK (length(code_digest) = 32),
  used_at     timestamptz,
  PRIMARY KEY (operator_id, code_digest)
);

-- One-time password-reset links an admin makes (by the SHA-256 of the
-- token in the link's fragment): valid until expires_at, once.
CREATE TABLE gateway.operator_reset (
  token_digest bytea PRIMARY KEY CHECK (length(token_digest) = 32),
  operator_id  bigint NOT NULL REFERENCES gateway.operator ON DELETE CASCADE,
  created_at   timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz NOT NULL,
  used_at      timestamptz
);

CREATE TABLE gateway.operator_session (
  token_digest bytea PRIMARY KEY CHECK (length(token_digest) = 32),
  operator_id  bigint NOT NULL REFERENCES gateway.operator ON DELETE CASCADE,
  csrf_token   text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz NOT NULL DEFAULT now(),
  -- When the second factor was given (NULL: password only so far).
  second_factor_at timestamptz
);
-- "Log out everywhere" and dropping a user's sessions on a password change.
CREATE INDEX operator_session_operator ON gateway.operator_session (operator_id);
-- Sweeping expired sessions.
CREATE INDEX operator_session_last_seen ON gateway.operator_session (last_seen_at);

CREATE TABLE gateway.audit_log (
  audit_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at       timestamptz NOT NULL DEFAULT now(),
  operator text NOT NULL,
  action   text NOT NULL,
  target   text NOT NULL,
  detail   text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON gateway.audit_log (at);
