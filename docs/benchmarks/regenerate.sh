#!/usr/bin/env bash
# Regenerates docs/benchmarks.md: every side-by-side ratio the platform
# claims, measured in one run on this machine, with the machine, versions
# and method. Absolute figures do not travel between machines; ratios
# measured in one run do.
#
#   bash docs/benchmarks/regenerate.sh [--only jobs,ingest,numerics,gateway,console]
#
# Each section is written to docs/benchmarks/<section>.md with its own
# machine line and date; docs/benchmarks.md is the sections put together.
# `--only` re-measures some sections and keeps the others as they were.
#
# Needs PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres)
# and NATS JetStream (NATS_URL, default nats://127.0.0.1:4222), Node.js with npm
# (graphile-worker), and Debian's wrk and hey (the gateway's script installs
# them). numpy is installed, pinned, in a throwaway venv outside the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."

ONLY=jobs,ingest,numerics,gateway,console
while [ $# -gt 0 ]; do
  case $1 in
    --only) ONLY=$2; shift 2 ;;
    *) echo "usage: $0 [--only jobs,ingest,numerics,gateway,console]" >&2; exit 2 ;;
  esac
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
# A finished section is kept at once: a later section failing does not
# lose it.
keep() { mkdir -p "$SECTIONS"; cp "$WORK/$1.md" "$SECTIONS/$1.md"; }

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
TOOLS="${TMPDIR:-/tmp}/platform-benchmarks-tools"
PINS=(numpy==2.3.5 threadpoolctl==3.6.0)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/platform-benchmarks.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
OUT=docs/benchmarks.md
SECTIONS=docs/benchmarks

# Only what the chosen sections run.
packages=()
if wants jobs || wants console; then packages+=(-p worker); fi
if wants ingest; then packages+=(-p ingest); fi
if wants numerics; then packages+=(-p numerics); fi
if wants gateway; then packages+=(-p gateway -p launcher); fi
if wants console; then packages+=(-p gateway); fi
cargo build --release --locked "${packages[@]}" --quiet
# The same binary side_by_side.sh would build, without a second build of
# the worker alone (a different feature set rebuilds its dependencies).
# Given to that script only: an exported WORKER_BIN would reach the apps
# the gateway benchmark starts, which refuse unknown WORKER_ settings.
WORKER_BIN=target/release/worker

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
simd=$(grep -m1 '^flags' /proc/cpuinfo | grep -q avx512f && echo AVX-512 || (grep -m1 '^flags' /proc/cpuinfo | grep -q avx2 && echo AVX2 || echo "no AVX2"))
# Every section starts with when, where and at which revision it ran.
provenance() {
  echo "- run: $(date -u +%Y-%m-%d) at revision $(git rev-parse --short=12 HEAD)$(git diff --quiet -- . ':(exclude)docs/benchmarks.md' ':(exclude)docs/benchmarks/*.md' || echo ' (with local changes)')"
  echo "- machine: $cpu, $(nproc) cores, $simd, $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r); $(rustc --version)"
  echo
}

if wants jobs; then
  WORKER_BIN="$WORKER_BIN" bash apps/worker/bench/side_by_side.sh --pairs 5 --json "$WORK/jobs.json" > "$WORK/jobs.out" 2> "$WORK/jobs.err" \
    || { cat "$WORK/jobs.err" >&2; exit 1; }
  { head -n 2 "$WORK/jobs.out"; provenance; tail -n +3 "$WORK/jobs.out"; } > "$WORK/jobs.md"
  keep jobs
fi

if wants ingest; then
  {
    echo "## Ingest: the pipeline against a raw binary COPY"
    echo
    provenance
    echo "\`ingest bench\` (PostgreSQL and NATS JetStream on loopback, scratch databases):"
    echo
    echo '```'
    target/release/ingest bench --database-url "$DATABASE_URL" --nats-url "$NATS_URL"
    echo '```'
  } > "$WORK/ingest.md"
  keep ingest
fi

if wants numerics; then
  if [ ! -f "$TOOLS/pins" ] || [ "$(cat "$TOOLS/pins")" != "${PINS[*]}" ]; then
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
    echo "${PINS[*]}" > "$TOOLS/pins"
  fi
  {
    echo "## Numerics: the engine against numpy"
    echo
    provenance
    echo "\`numerics bench\` with numpy ${PINS[0]#numpy==} (its OpenBLAS, \`OPENBLAS_CORETYPE\` unset, 2 threads);"
    echo "the BLAS kernel threadpoolctl reports:"
    echo
    echo '```'
    env -u OPENBLAS_CORETYPE OPENBLAS_NUM_THREADS=2 "$TOOLS/venv/bin/python" -c \
      'import threadpoolctl, numpy; [print(k, ":", v) for i in threadpoolctl.threadpool_info() for k, v in i.items() if k in ("internal_api", "version", "architecture", "num_threads")]'
    echo '```'
    echo
    echo '```'
    env -u OPENBLAS_CORETYPE target/release/numerics bench --python "$TOOLS/venv/bin/python"
    echo '```'
  } > "$WORK/numerics.md"
  keep numerics
fi

if wants gateway; then
  {
    echo "## Gateway: the whole stack against a bare axum server"
    echo
    provenance
    echo "\`apps/gateway/bench/run.sh\`:"
    echo
    echo '```'
    bash apps/gateway/bench/run.sh 2> "$WORK/gateway.err" || { cat "$WORK/gateway.err" >&2; exit 1; }
    echo '```'
  } > "$WORK/gateway.md"
  keep gateway
fi

if wants console; then
  {
    echo "## Console: the jobs pages with a million jobs"
    echo
    provenance
    echo "\`apps/gateway/bench/console_jobs.sh\` (the release \`worker\` and \`gateway\` as processes, a signed-in viewer over HTTP;"
    echo "the same pages on the empty table first: what a million jobs cost each page):"
    echo
    WORKER_BIN="$WORKER_BIN" GATEWAY_BIN=target/release/gateway bash apps/gateway/bench/console_jobs.sh \
      --rows 1000000 --requests 100 2> "$WORK/console.err" || { cat "$WORK/console.err" >&2; exit 1; }
  } > "$WORK/console.md"
  keep console
fi

{
  echo "# Benchmarks"
  echo
  echo "Regenerated by \`bash docs/benchmarks/regenerate.sh\` (sections: \`--only\`). Each"
  echo "section's figures come from one run on the machine it names; compare ratios,"
  echo "not absolute numbers, across machines. How the figures were found and what"
  echo "changed them: docs/profiling.md."
  for part in jobs ingest numerics gateway console; do
    if [ -f "$SECTIONS/$part.md" ]; then echo; cat "$SECTIONS/$part.md"; fi
  done
} > "$OUT"
echo "wrote $OUT"
