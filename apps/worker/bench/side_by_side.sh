#!/usr/bin/env bash
# The jobs engine against graphile-worker, side by side (see side_by_side.py):
#   bash apps/worker/bench/side_by_side.sh [side_by_side.py options]
# e.g. --pairs 3 --json target/side-by-side.json
#
# Needs PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres,
# a role that may create databases) and Node.js with npm. Builds the shipped
# `worker` binary (release profile); installs the pinned tools outside the
# repository: psycopg in a venv, graphile-worker from the committed lock.
set -euo pipefail
cd "$(dirname "$0")/../../.."

TOOLS="${TMPDIR:-/tmp}/platform-bench-tools"
PINS=(psycopg==3.2.13 psycopg-binary==3.2.13)
PEER_SRC=apps/worker/bench/peers/graphile-worker
PEER="$TOOLS/graphile-worker"

if [ ! -f "$TOOLS/pins" ] || [ "$(cat "$TOOLS/pins")" != "${PINS[*]}" ]; then
  rm -rf "$TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" > "$TOOLS/pins"
fi
mkdir -p "$PEER"
if ! cmp -s "$PEER_SRC/package-lock.json" "$PEER/package-lock.json"; then
  cp "$PEER_SRC/package.json" "$PEER_SRC/package-lock.json" "$PEER/"
  (cd "$PEER" && npm ci --no-audit --no-fund --silent)
fi
cp "$PEER_SRC"/*.mjs "$PEER/"

# WORKER_BIN: an already built binary (CI's smoke run uses the debug build;
# its figures mean nothing, it only keeps the harness working).
if [ -z "${WORKER_BIN:-}" ]; then
  cargo build --release --locked -p worker --quiet
  WORKER_BIN=target/release/worker
fi
exec "$TOOLS/venv/bin/python" apps/worker/bench/side_by_side.py \
  --worker-bin "$WORKER_BIN" --peer-dir "$PEER" "$@"
