#!/usr/bin/env bash
# The console's jobs pages with a million jobs (see console_jobs.py):
#   bash apps/gateway/bench/console_jobs.sh [console_jobs.py options]
# e.g. --rows 1000000 --requests 100 --json target/console-jobs.json
#
# Needs PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres,
# a role that may create databases) and psql. Builds the shipped `worker`
# and `gateway` binaries (release profile) unless WORKER_BIN and
# GATEWAY_BIN name built ones (CI's smoke run passes the debug builds with
# a small --rows; its figures mean nothing, it keeps the harness working).
set -euo pipefail
cd "$(dirname "$0")/../../.."

if [ -z "${WORKER_BIN:-}" ] || [ -z "${GATEWAY_BIN:-}" ]; then
  cargo build --release --locked -p worker -p gateway --quiet
  WORKER_BIN=target/release/worker
  GATEWAY_BIN=target/release/gateway
fi
exec python3 apps/gateway/bench/console_jobs.py \
  --worker-bin "$WORKER_BIN" --gateway-bin "$GATEWAY_BIN" "$@"
