-- The ops console's operators, sessions and audit log (see the PostgreSQL
-- migration). Times are microseconds since the epoch.

CREATE TABLE gateway_operator (
  operator_id         INTEGER PRIMARY KEY AUTOINCREMENT,
  username            TEXT NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 64),
  password_hash       TEXT NOT NULL,
  role                TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
  created_at          INTEGER NOT NULL,
  password_changed_at INTEGER NOT NULL,
  disabled_at         INTEGER,
  totp_secret         BLOB CHECK (length(totp_secret) = 20)
);

CREATE TABLE gateway_operator_recovery_code (
  operator_id INTEGER NOT NULL REFERENCES gateway_operator (operator_id) ON DELETE CASCADE,
  code_digest BLOB NOT NULL CHECK (length(code_digest) = 32),
  used_at     INTEGER,
  PRIMARY KEY (operator_id, code_digest)
);

CREATE TABLE gateway_operator_reset (
  token_digest BLOB PRIMARY KEY CHECK (length(token_digest) = 32),
  operator_id  INTEGER NOT NULL REFERENCES gateway_operator (operator_id) ON DELETE CASCADE,
  created_at   INTEGER NOT NULL,
  expires_at   INTEGER NOT NULL,
  used_at      INTEGER
);

CREATE TABLE gateway_operator_session (
  token_digest BLOB PRIMARY KEY CHECK (length(token_digest) = 32),
  operator_id  INTEGER NOT NULL REFERENCES gateway_operator (operator_id) ON DELETE CASCADE,
  csrf_token   TEXT NOT NULL,
  created_at   INTEGER NOT NULL,
  last_seen_at INTEGER NOT NULL,
  second_factor_at INTEGER
);
CREATE INDEX gateway_operator_session_operator ON gateway_operator_session (operator_id);
CREATE INDEX gateway_operator_session_last_seen ON gateway_operator_session (last_seen_at);

CREATE TABLE gateway_audit_log (
  audit_id INTEGER PRIMARY KEY AUTOINCREMENT,
  at       INTEGER NOT NULL,
  operator TEXT NOT NULL,
  action   TEXT NOT NULL,
  target   TEXT NOT NULL,
  detail   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX gateway_audit_log_at ON gateway_audit_log (at);
