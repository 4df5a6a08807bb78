#!/usr/bin/env bash
# The release command: reproducible binaries, their SBOMs and checksums.
#
#   deploy/release/release.sh build  [--out DIR] [--base-image-digest sha256:<64 hex>] [--allow-dirty]
#   deploy/release/release.sh verify [--canary] [--report FILE]
#   deploy/release/release.sh dockerfile --base-image-digest sha256:<64 hex> --out DIR
#
# build   builds every app binary of the checked-out commit with
#         `cargo auditable build --release --locked` (the dependency list is
#         embedded in each binary), stamped with the commit's revision and
#         time (SOURCE_DATE_EPOCH), with every absolute path remapped (Rust
#         and C), then writes one CycloneDX SBOM per binary, validates them
#         and writes SHA256SUMS. With --base-image-digest it also writes the
#         Dockerfile with the distroless base pinned to that digest.
# dockerfile  writes only the Dockerfile with its base pinned (what build
#         does with a digest; deploy/check.sh runs it and lints the result).
# verify  clones the commit into two different directories, builds each
#         there, and compares every artefact byte for byte; writes a report
#         and exits 1 on any difference. --canary builds only
#         deploy/release/canary (ring's and SQLite's C code, the build
#         stamp): the few-minute variant CI runs.
#
# Tools are pinned and installed when missing: cargo-auditable and
# cargo-cyclonedx from crates.io, cyclonedx-python-lib into a throwaway venv.
# Releases are x86_64-unknown-linux-gnu only.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
AUDITABLE_VERSION=0.7.7
CYCLONEDX_VERSION=0.5.9
CYCLONEDX_PYTHON_VERSION=11.12.0
TARGET_TRIPLE=x86_64-unknown-linux-gnu
TOOLS="${TMPDIR:-/tmp}/platform-release-tools"
# The shipped binaries, by package: name of the binary.
APP_BINARIES=(gateway:gateway ingest:ingest worker:worker numerics:numerics launcher:platform)
BASE_IMAGE="gcr.io/distroless/cc-debian12:nonroot"
DIGEST_PLACEHOLDER="@sha256:BASE_IMAGE_DIGEST"

die() { echo "release: $*" >&2; exit 1; }
say() { echo "release: $*" >&2; }

install_tools() {
  local installed
  installed=$(cargo install --list)
  if ! grep -q "^cargo-auditable v$AUDITABLE_VERSION:" <<< "$installed"; then
    cargo install --locked cargo-auditable --version "$AUDITABLE_VERSION"
  fi
  if ! grep -q "^cargo-cyclonedx v$CYCLONEDX_VERSION:" <<< "$installed"; then
    cargo install --locked cargo-cyclonedx --version "$CYCLONEDX_VERSION"
  fi
  if [ ! -x "$TOOLS/venv/bin/python" ] \
    || ! "$TOOLS/venv/bin/pip" show cyclonedx-python-lib 2>/dev/null | grep -q "^Version: $CYCLONEDX_PYTHON_VERSION$"; then
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
      "cyclonedx-python-lib[json-validation]==$CYCLONEDX_PYTHON_VERSION"
  fi
}

# build_tree SRC OUT CANARY: builds the tree at SRC into OUT/{bin,sbom}.
build_tree() {
  local src=$1 out=$2 canary=$3
  local cargo_home=${CARGO_HOME:-$HOME/.cargo}
  local revision epoch manifest_dir
  revision=$(git -C "$src" rev-parse --short=12 HEAD)
  epoch=$(git -C "$src" log -1 --format=%ct)
  mkdir -p "$out/bin" "$out/sbom"
  if [ "$canary" = 1 ]; then manifest_dir="$src/deploy/release/canary"; else manifest_dir="$src"; fi
  local packages=()
  if [ "$canary" = 1 ]; then
    packages=(-p release-canary)
  else
    for entry in "${APP_BINARIES[@]}"; do packages+=(-p "${entry%%:*}"); done
  fi
  say "building $revision (SOURCE_DATE_EPOCH=$epoch) in $src"
  (
    cd "$manifest_dir"
    # Everything that would put this machine's paths or clock into the
    # binaries is pinned: the stamp, Rust's paths, C's paths (ring and the
    # bundled SQLite are compiled by cc-rs, which RUSTFLAGS does not reach).
    export SOURCE_DATE_EPOCH=$epoch PLATFORM_GIT_REVISION=$revision
    export CARGO_TARGET_DIR="$src/target/release-build" CARGO_INCREMENTAL=0
    export RUSTFLAGS="--remap-path-prefix=$src=/src --remap-path-prefix=$cargo_home=/cargo"
    export CFLAGS="-ffile-prefix-map=$src=/src -ffile-prefix-map=$cargo_home=/cargo"
    export CXXFLAGS=$CFLAGS
    cargo auditable build --release --locked --target "$TARGET_TRIPLE" "${packages[@]}"
    cargo cyclonedx --format json --spec-version 1.5 --describe binaries \
      --target "$TARGET_TRIPLE" --quiet
  )
  local release_dir="$src/target/release-build/$TARGET_TRIPLE/release"
  if [ "$canary" = 1 ]; then
    cp "$release_dir/release-canary" "$out/bin/"
    mv "$manifest_dir/release-canary_bin.cdx.json" "$out/sbom/release-canary.cdx.json"
  else
    local entry package binary
    for entry in "${APP_BINARIES[@]}"; do
      package=${entry%%:*} binary=${entry##*:}
      cp "$release_dir/$binary" "$out/bin/"
      local sbom
      # cargo-cyclonedx names the file after the binary, beside its manifest.
      sbom=$(find "$src/apps/$package" -maxdepth 1 -name "${binary}_bin*.cdx.json" | head -n1)
      [ -n "$sbom" ] || die "cargo cyclonedx wrote no SBOM for $package"
      mv "$sbom" "$out/sbom/$binary.cdx.json"
    done
  fi
  # The SBOMs of libraries and test crates are not artefacts.
  find "$src/apps" "$src/libs" "$src/tests" -name '*.cdx.json' -delete 2>/dev/null || true
  # Workspace crates are named by their path (`path+file:///…/libs/jobs`):
  # remap it as the binaries' paths are.
  sed -i "s|path+file://$src|path+file:///src|g" "$out"/sbom/*.cdx.json
  "$TOOLS/venv/bin/python" "$REPO/deploy/release/check_sboms.py" "$out"
  (cd "$out" && sha256sum bin/* sbom/* > SHA256SUMS)
}

write_dockerfile() {
  local out=$1 digest=$2
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] \
    || die "--base-image-digest: expected sha256:<64 lowercase hex>, got \"$digest\""
  sed "s|$DIGEST_PLACEHOLDER|@$digest|g" "$REPO/deploy/docker/Dockerfile" > "$out/Dockerfile"
  grep -q "$BASE_IMAGE@$digest" "$out/Dockerfile" \
    || die "deploy/docker/Dockerfile does not name $BASE_IMAGE$DIGEST_PLACEHOLDER"
  say "wrote $out/Dockerfile (base $BASE_IMAGE@$digest)"
}

cmd_build() {
  local out="" digest="" allow_dirty=0
  while [ $# -gt 0 ]; do
    case $1 in
      --out) out=$2; shift 2 ;;
      --base-image-digest) digest=$2; shift 2 ;;
      --allow-dirty) allow_dirty=1; shift ;;
      *) die "build: unknown argument $1" ;;
    esac
  done
  if [ "$allow_dirty" = 0 ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
    die "the checkout has uncommitted changes; a release is built from a commit (or pass --allow-dirty)"
  fi
  local revision
  revision=$(git -C "$REPO" rev-parse --short=12 HEAD)
  out=${out:-$REPO/target/release-artefacts/$revision}
  rm -rf "$out"
  install_tools
  build_tree "$REPO" "$out" 0
  if [ -n "$digest" ]; then
    write_dockerfile "$out" "$digest"
  else
    say "no --base-image-digest: no Dockerfile written (images need the base pinned)"
  fi
  say "artefacts in $out:"
  cat "$out/SHA256SUMS" >&2
}

cmd_verify() {
  local canary=0 report=""
  while [ $# -gt 0 ]; do
    case $1 in
      --canary) canary=1; shift ;;
      --report) report=$2; shift 2 ;;
      *) die "verify: unknown argument $1" ;;
    esac
  done
  install_tools
  local commit work
  commit=$(git -C "$REPO" rev-parse HEAD)
  work=$(mktemp -d "${TMPDIR:-/tmp}/platform-verify.XXXXXX")
  # Two clones at paths of different lengths, each with its own target
  # directory: nothing may depend on where the tree lies.
  local a="$work/a" b="$work/second-build-tree/b"
  local started took_a took_b
  for tree in "$a" "$b"; do
    git clone --quiet --no-hardlinks "$REPO" "$tree"
    git -C "$tree" checkout --quiet --detach "$commit"
  done
  started=$(date +%s)
  build_tree "$a" "$work/out-a" "$canary"
  took_a=$(( $(date +%s) - started ))
  started=$(date +%s)
  build_tree "$b" "$work/out-b" "$canary"
  took_b=$(( $(date +%s) - started ))
  local status=0
  local table
  table=$(join -j 2 <(sort -k2 "$work/out-a/SHA256SUMS") <(sort -k2 "$work/out-b/SHA256SUMS") \
    | awk '{ same = ($2 == $3) ? "identical" : "DIFFERENT"; printf "| `%s` | `%s` | `%s` | %s |\n", $1, $2, $3, same }')
  if grep -q DIFFERENT <<< "$table" \
    || [ "$(wc -l < "$work/out-a/SHA256SUMS")" != "$(wc -l < "$work/out-b/SHA256SUMS")" ]; then
    status=1
  fi
  local verdict="every artefact identical"
  [ "$status" = 0 ] || verdict="ARTEFACTS DIFFER (diffoscope the two out-* folders in $work)"
  local text
  text=$(cat <<EOF
# Reproducibility report: $(git -C "$REPO" log -1 --format='%h %s' "$commit" | cut -c1-100)

- Commit: \`$commit\`, SOURCE_DATE_EPOCH $(git -C "$REPO" log -1 --format=%ct "$commit") ($(git -C "$REPO" log -1 --format=%cI "$commit"))
- What: $([ "$canary" = 1 ] && echo "the canary (deploy/release/canary)" || echo "every app binary") built twice from clean clones at \`$a\` and \`$b\`, each with its own target directory
- Toolchain: $(rustc --version), cargo-auditable $AUDITABLE_VERSION, cargo-cyclonedx $CYCLONEDX_VERSION
- Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores
- Build time: ${took_a} s and ${took_b} s
- SBOMs: valid CycloneDX 1.5 (strict schema), and every crate embedded by cargo-auditable is listed

| artefact | sha256, build A | sha256, build B | |
|---|---|---|---|
$table

Verdict: **$verdict**.
EOF
)
  echo "$text"
  if [ -n "$report" ]; then echo "$text" > "$report"; fi
  if [ "$status" = 0 ]; then rm -rf "$work"; fi
  return "$status"
}

cmd_dockerfile() {
  local out="" digest=""
  while [ $# -gt 0 ]; do
    case $1 in
      --out) out=$2; shift 2 ;;
      --base-image-digest) digest=$2; shift 2 ;;
      *) die "dockerfile: unknown argument $1" ;;
    esac
  done
  [ -n "$out" ] || die "dockerfile: --out DIR is required"
  mkdir -p "$out"
  write_dockerfile "$out" "$digest"
}

case ${1:-} in
  build) shift; cmd_build "$@" ;;
  dockerfile) shift; cmd_dockerfile "$@" ;;
  verify) shift; cmd_verify "$@" ;;
  *) die "usage: $0 build [--out DIR] [--base-image-digest sha256:HEX] [--allow-dirty] | verify [--canary] [--report FILE] | dockerfile --base-image-digest sha256:HEX --out DIR" ;;
esac
