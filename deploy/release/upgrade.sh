#!/usr/bin/env bash
# The upgrade check (.ci/run): builds the previous release's binaries (the
# commit in deploy/release/PREVIOUS; each release writes its own commit
# there) and runs them against the schema this commit's migrations leave
# (deploy/release/upgrade_check.py).
#   bash deploy/release/upgrade.sh    (needs DATABASE_URL; the current
#                                      binaries built in target/debug)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
: "${DATABASE_URL:?the upgrade check needs DATABASE_URL (a PostgreSQL server it may create databases on)}"
PREVIOUS=$(tr -d '[:space:]' < deploy/release/PREVIOUS)
git cat-file -e "$PREVIOUS^{commit}" \
  || { echo "deploy/release/PREVIOUS names $PREVIOUS, which this clone does not have" >&2; exit 1; }
APPS=(gateway ingest worker numerics)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/platform-upgrade.XXXXXX")
cleanup() {
  git worktree remove --force "$WORK/tree" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/current" "$WORK/previous"
for app in "${APPS[@]}"; do
  [ -x "target/debug/$app" ] || { echo "target/debug/$app is missing: build the workspace first" >&2; exit 1; }
  cp "target/debug/$app" "$WORK/current/"
done
git worktree add --quiet --detach "$WORK/tree" "$PREVIOUS"
# The same target directory: the dependencies are built once for both.
# The previous binaries land in target/debug, so the current ones are put
# back afterwards.
(cd "$WORK/tree" && CARGO_TARGET_DIR="$REPO/target" cargo build --quiet --locked --bins \
  -p gateway -p ingest -p worker -p numerics)
for app in "${APPS[@]}"; do
  cp "target/debug/$app" "$WORK/previous/"
  cp "$WORK/current/$app" "target/debug/$app"
done
echo "previous release: $("$WORK/previous/gateway" --version)"
echo "this commit:      $("$WORK/current/gateway" --version)"
python3 deploy/release/upgrade_check.py --previous "$WORK/previous" --current "$WORK/current" \
  --database-url "$DATABASE_URL"
