#!/usr/bin/env bash
# The gateway's benchmark, as an outsider measures it: release binaries as
# processes, outside load generators (wrk, hey from Debian, pinned), every
# figure a ratio against a peer measured in the same run.
#
# 1. Middleware overhead: `gateway bench edge` serves one fixed-body route
#    behind the whole stack and on a bare axum server; the server is pinned
#    to core 0 and wrk to core 1; three alternating rounds each.
# 2. Latency at a fixed rate: hey at 1,000 requests/s against both.
# 3. Readings: the launcher's platform (embedded SQLite) and
#    `gateway bench readings`, which publishes the same batches through
#    POST /v1/readings and straight to ingest's gRPC API, alternating.
#
# Usage: apps/gateway/bench/run.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=$(pwd)

HEY_VERSION=0.1.4-2+b4
WRK_VERSION=4.1.0-3+b2
if ! command -v hey >/dev/null || ! command -v wrk >/dev/null; then
  apt-get install -y -q "hey=$HEY_VERSION" "wrk=$WRK_VERSION" >/dev/null
fi

cargo build --release --locked -p gateway -p launcher
GATEWAY="$ROOT/target/release/gateway"
PLATFORM="$ROOT/target/release/platform"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo

# 1 and 2: the stack against a bare router.
# The edge bench calls no backend: plaintext gRPC settings keep it from
# needing certificates.
GATEWAY_GRPC_PLAINTEXT=true taskset -c 0 "$GATEWAY" bench edge --stacked 127.0.0.1:38180 --bare 127.0.0.1:38181 \
  > "$WORK/edge.out" 2> "$WORK/edge.log" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q '^key ' "$WORK/edge.out" 2>/dev/null && break; sleep 0.1; done
KEY=$(awk '/^key /{print $2}' "$WORK/edge.out")
[ -n "$KEY" ] || { echo "bench edge did not start:" >&2; cat "$WORK/edge.log" >&2; exit 1; }
AUTH="Authorization: Bearer $KEY"

wrk_rate() { # url [header]
  taskset -c 1 wrk -t1 -c16 -d8s ${2:+-H "$2"} "$1" | awk '/Requests\/sec/{print $2}'
}
echo "1. Throughput, GET /bench (fixed 11-byte body), wrk -t1 -c16 -d8s, server on core 0, wrk on core 1"
wrk_rate http://127.0.0.1:38181/bench >/dev/null # warm-up
wrk_rate http://127.0.0.1:38180/bench "$AUTH" >/dev/null
STACKED=(); BARE=()
for round in 1 2 3; do
  b=$(wrk_rate http://127.0.0.1:38181/bench); BARE+=("$b")
  s=$(wrk_rate http://127.0.0.1:38180/bench "$AUTH"); STACKED+=("$s")
  echo "   round $round: bare $b req/s, whole stack $s req/s"
done
python3 - "${BARE[@]}" "${STACKED[@]}" <<'PY'
import statistics, sys
values = [float(v) for v in sys.argv[1:]]
bare, stacked = values[:3], values[3:]
b, s = statistics.median(bare), statistics.median(stacked)
print(f"   median: bare {b:.0f} req/s, whole stack {s:.0f} req/s: stack/bare = {s/b:.2f} (overhead {100*(1-s/b):.1f}%)")
PY
echo
echo "2. Latency at a fixed 1,000 requests/s (hey -z 8s -c 4 -q 250), same cores"
for which in bare stacked; do
  if [ "$which" = bare ]; then url=http://127.0.0.1:38181/bench; header=(); else url=http://127.0.0.1:38180/bench; header=(-H "$AUTH"); fi
  taskset -c 1 hey -z 8s -c 4 -q 250 "${header[@]}" "$url" > "$WORK/hey-$which.txt"
  p50=$(awk '/50% in/{print $3*1000}' "$WORK/hey-$which.txt")
  p99=$(awk '/99% in/{print $3*1000}' "$WORK/hey-$which.txt")
  rps=$(awk '/Requests\/sec/{print $2}' "$WORK/hey-$which.txt")
  echo "   $which: $rps req/s, p50 ${p50} ms, p99 ${p99} ms"
done
kill -TERM "${PIDS[0]}" 2>/dev/null || true
echo

# 3. Readings through the gateway against straight to ingest.
export GATEWAY_HTTP_ADDR=127.0.0.1:38080 GATEWAY_ADMIN_ADDR=127.0.0.1:39281
export INGEST_GRPC_ADDR=127.0.0.1:38051 INGEST_ADMIN_ADDR=127.0.0.1:39282
export WORKER_GRPC_ADDR=127.0.0.1:38052 WORKER_ADMIN_ADDR=127.0.0.1:39283
export NUMERICS_GRPC_ADDR=127.0.0.1:38053 NUMERICS_ADMIN_ADDR=127.0.0.1:39284
export GATEWAY_RATE_LIMIT_PER_KEY=1000000 GATEWAY_RATE_LIMIT_PER_CLIENT=1000000
(cd "$WORK" && exec "$PLATFORM" up > "$WORK/platform.log" 2>&1) &
PIDS+=($!)
for _ in $(seq 1 150); do grep -q "apps ready" "$WORK/platform.log" 2>/dev/null && break; sleep 0.2; done
grep -q "apps ready" "$WORK/platform.log" || { echo "the platform did not start" >&2; cat "$WORK/platform.log" >&2; exit 1; }
echo "3. Readings: the launcher's platform (embedded SQLite), client on the same 2 cores"
(cd "$WORK" && "$GATEWAY" bench readings --gateway "http://$GATEWAY_HTTP_ADDR" \
  --ingest "http://$INGEST_GRPC_ADDR" --key "$(cat data/dev-api-key)" --tenant dev \
  --tls-dir data/certs) | sed 's/^/   /'
