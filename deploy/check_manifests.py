"""The project's own checks on rendered Kubernetes manifests: what schemas
and generic scanners cannot know about this platform.

    check_manifests.py RENDERED.yaml --overlay NAME [--binaries DIR]

Checks hardening (non-root with a fixed UID, seccomp, read-only root
filesystem, no capabilities, no service-account token, requests and a
memory limit), probes on each app's admin port, grace periods above
shutdown delay plus grace, image pinning, selectors that match, a PDB and a
NetworkPolicy for every app, default deny, gRPC ingress rules equal to the
per-RPC policy in proto/, the migrations Job's name and bounds, and, with
--binaries, each app's `--check-config` on the exact environment the
manifests give it. Prints every problem; exits 1 if there is any.
"""

import argparse
import base64
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
import tempfile

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
# app: (service port name, port, admin port)
APPS = {
    "gateway": ("http", 8080, 9181),
    "ingest": ("grpc", 50051, 9182),
    "worker": ("grpc", 50052, 9183),
    "numerics": ("grpc", 50053, 9184),
}
# Which app serves which gRPC service (proto/platform/*/v1); every app
# with a gRPC port also serves ServiceInfoService.
SERVED_BY = {
    "IngestService": ["ingest"],
    "JobsService": ["worker"],
    "WebhooksService": ["worker"],
    "NumericsService": ["numerics"],
    "TenantDataService": ["ingest", "worker"],
    "ServiceInfoService": ["ingest", "worker", "numerics"],
}
PLATFORM_UID = 65532
DIGEST = re.compile(r"@sha256:([0-9a-f]{64}|RELEASE_DIGEST)$")


class Report:
    def __init__(self):
        self.problems = []

    def fail(self, where, problem):
        self.problems.append(f"{where}: {problem}")


def duration_seconds(raw):
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", str(raw))
    if not match:
        raise ValueError(f"not a duration: {raw!r}")
    value, unit = int(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def pod_spec(obj):
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        return obj["spec"]["template"]["spec"], obj["spec"]["template"]["metadata"].get("labels", {})
    return None, None


def selector_matches(selector, labels):
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present = labels.get(expr["key"])
        if expr["operator"] == "In" and present not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and present in expr["values"]:
            return False
        if expr["operator"] == "Exists" and present is None:
            return False
    return True


def proto_callers():
    """app -> identities (lowercase) allowed to call any RPC it serves."""
    callers = {app: set() for app in APPS}
    for proto in (REPO / "proto" / "platform").glob("*/v1/*.proto"):
        text = proto.read_text()
        for match in re.finditer(r"\bservice\s+(\w+)\s*\{", text):
            name = match.group(1)
            depth, i = 1, match.end()
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            identities = set(re.findall(r"IDENTITY_([A-Z]+)", text[match.end():i]))
            for app in SERVED_BY.get(name, []):
                callers[app] |= {x.lower() for x in identities} - {"operator", "unspecified"}
    return callers


def check_hardening(report, where, obj, spec):
    sc = spec.get("securityContext") or {}
    if sc.get("runAsNonRoot") is not True:
        report.fail(where, "pod securityContext.runAsNonRoot must be true")
    if not isinstance(sc.get("runAsUser"), int) or sc["runAsUser"] == 0:
        report.fail(where, "pod securityContext.runAsUser must be a fixed non-zero UID")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        report.fail(where, "pod securityContext.seccompProfile.type must be RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        report.fail(where, "automountServiceAccountToken must be false")
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        cw = f"{where} container {container['name']}"
        csc = container.get("securityContext") or {}
        if csc.get("readOnlyRootFilesystem") is not True:
            report.fail(cw, "readOnlyRootFilesystem must be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            report.fail(cw, "allowPrivilegeEscalation must be false")
        if csc.get("privileged"):
            report.fail(cw, "must not be privileged")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            report.fail(cw, "capabilities.drop must include ALL")
        if (csc.get("capabilities") or {}).get("add"):
            report.fail(cw, "must add no capability")
        resources = container.get("resources") or {}
        for what in ("cpu", "memory"):
            if what not in (resources.get("requests") or {}):
                report.fail(cw, f"resources.requests.{what} is missing")
        if "memory" not in (resources.get("limits") or {}):
            report.fail(cw, "resources.limits.memory is missing")
        image = container.get("image", "")
        if image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
            report.fail(cw, f"image {image!r} is not pinned to a tag or digest")


def config_maps(objects):
    return {o["metadata"]["name"]: o.get("data") or {} for o in objects if o["kind"] == "ConfigMap"}


def container_env(container, maps):
    """The variables the container gets: literal values, ConfigMap values,
    and secret references as ('secret', name, key)."""
    env = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref:
            env.update(maps.get(ref["name"], {}))
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in (var.get("valueFrom") or {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = ("secret", ref["name"], ref["key"])
        elif "configMapKeyRef" in (var.get("valueFrom") or {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = maps.get(ref["name"], {}).get(ref["key"])
    return env


def check_app(report, obj, spec, labels, maps):
    app = obj["metadata"]["name"]
    where = f"Deployment {app}"
    port_name, port, admin = APPS[app]
    containers = spec.get("containers", [])
    if len(containers) != 1:
        report.fail(where, "must run exactly one container, the app")
        return
    container = containers[0]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    if ports.get(port_name) != port:
        report.fail(where, f"container port {port_name} must be {port}")
    if ports.get("admin") != admin:
        report.fail(where, f"container port admin must be {admin}")
    env = container_env(container, maps)
    prefix = app.upper() + "_"
    admin_addr = env.get(prefix + "ADMIN_ADDR", "")
    if not str(admin_addr).endswith(f":{admin}") or not str(admin_addr).startswith("0.0.0.0:"):
        report.fail(where, f"{prefix}ADMIN_ADDR must be 0.0.0.0:{admin} (the probes' port), got {admin_addr!r}")
    for probe_name, path in (("startupProbe", None), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        probe = container.get(probe_name)
        if not probe:
            report.fail(where, f"{probe_name} is missing")
            continue
        http = probe.get("httpGet")
        if not http:
            report.fail(where, f"{probe_name} must be httpGet on the admin port (the gRPC port speaks mutual TLS only)")
            continue
        target = http.get("port")
        resolved = ports.get(target) if isinstance(target, str) else target
        if resolved != admin:
            report.fail(where, f"{probe_name} probes port {target!r}, not the admin port {admin}")
        if path and http.get("path") != path:
            report.fail(where, f"{probe_name} must ask {path}, not {http.get('path')!r}")
    try:
        delay = duration_seconds(env.get(prefix + "SHUTDOWN_DELAY", "0s"))
        grace = duration_seconds(env.get(prefix + "SHUTDOWN_GRACE", "10s"))
    except ValueError as error:
        report.fail(where, str(error))
        delay, grace = 0, 10
    period = spec.get("terminationGracePeriodSeconds", 30)
    if period <= delay + grace:
        report.fail(where, f"terminationGracePeriodSeconds {period} must exceed SHUTDOWN_DELAY + SHUTDOWN_GRACE = {delay + grace:g} s")
    if spec["securityContext"].get("runAsUser") != PLATFORM_UID:
        report.fail(where, f"runAsUser must be {PLATFORM_UID}, the distroless nonroot user")
    if not spec.get("topologySpreadConstraints"):
        report.fail(where, "topologySpreadConstraints are missing")


def check_selectors(report, objects, workloads):
    pods = [labels for _, labels, _ in workloads]
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Service":
            selector = {"matchLabels": obj["spec"].get("selector") or {}}
            matching = [w for w in workloads if selector_matches(selector, w[1])]
            if not matching:
                report.fail(f"Service {name}", "its selector matches no pod")
            for port in obj["spec"].get("ports", []):
                target = port.get("targetPort")
                if isinstance(target, str) and matching:
                    names = {p.get("name") for c in matching[0][2].get("containers", []) for p in c.get("ports") or []}
                    if target not in names:
                        report.fail(f"Service {name}", f"targetPort {target!r} is no container port of its pods")
        elif kind in ("PodDisruptionBudget",):
            if not any(selector_matches(obj["spec"]["selector"], labels) for labels in pods):
                report.fail(f"{kind} {name}", "its selector matches no pod")
        elif kind == "NetworkPolicy":
            selector = obj["spec"].get("podSelector") or {}
            if selector and not any(selector_matches(selector, labels) for labels in pods):
                report.fail(f"NetworkPolicy {name}", "its podSelector matches no pod")
        elif kind == "HorizontalPodAutoscaler":
            ref = obj["spec"]["scaleTargetRef"]
            if not any(o["kind"] == ref["kind"] and o["metadata"]["name"] == ref["name"] for o in objects):
                report.fail(f"HorizontalPodAutoscaler {name}", f"targets {ref['kind']} {ref['name']}, which does not exist")


def check_headless(report, objects):
    """gRPC apps' Services resolve to every pod: the callers balance."""
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Service" and name in APPS and APPS[name][0] == "grpc":
            if obj["spec"].get("clusterIP") != "None":
                report.fail(f"Service {name}", "must be headless (clusterIP: None) so its callers balance over every pod")


def check_coverage(report, objects):
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    denies = [
        p for p in policies
        if not (p["spec"].get("podSelector") or {})
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    if not denies:
        report.fail("NetworkPolicy", "no default-deny policy (empty podSelector, Ingress and Egress, no rules)")
    for app in APPS:
        labels = {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "platform"}
        if not any(selector_matches(p["spec"]["selector"], labels) for p in pdbs):
            report.fail(f"Deployment {app}", "no PodDisruptionBudget covers it")
        own = [p for p in policies if (p["spec"].get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name") == app]
        if not own:
            report.fail(f"Deployment {app}", "no NetworkPolicy of its own allows its traffic")


def check_rpc_policy(report, objects):
    callers = proto_callers()
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    for app, (port_name, port, _) in APPS.items():
        if port_name != "grpc":
            continue
        policy = policies.get(app)
        if not policy:
            continue  # reported by check_coverage
        allowed = set()
        for rule in policy["spec"].get("ingress") or []:
            if not any(p.get("port") == port for p in rule.get("ports") or []):
                continue
            peers = rule.get("from")
            if not peers:
                report.fail(f"NetworkPolicy {app}", f"port {port} is open to every caller; the RPC policy allows only {sorted(callers[app])}")
                continue
            for peer in peers:
                name = (peer.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                if name is None or "namespaceSelector" in peer or "ipBlock" in peer:
                    report.fail(f"NetworkPolicy {app}", f"port {port} admits {peer}, not a platform app")
                else:
                    allowed.add(name)
        if allowed != callers[app]:
            report.fail(
                f"NetworkPolicy {app}",
                f"port {port} admits {sorted(allowed)} but the RPC policy in proto/ lets {sorted(callers[app])} call it",
            )


def check_job(report, obj):
    name = obj["metadata"]["name"]
    spec = obj["spec"]
    where = f"Job {name}"
    version = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    if not name.endswith("-" + version.replace(".", "-")):
        report.fail(where, f"the migrations Job's name must end with the release version ({version.replace('.', '-')})")
    if "backoffLimit" not in spec:
        report.fail(where, "backoffLimit is missing")
    if "ttlSecondsAfterFinished" not in spec:
        report.fail(where, "ttlSecondsAfterFinished is missing")
    if "activeDeadlineSeconds" not in spec:
        report.fail(where, "activeDeadlineSeconds is missing")


def check_images(report, overlay, workloads):
    for where, _, spec in workloads:
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            image = container.get("image", "")
            platform = any(f"/{app}" in image and "platform" in image for app in APPS)
            if overlay == "prod" and platform and not DIGEST.search(image):
                report.fail(f"{where} container {container['name']}", f"production image {image!r} is not pinned by digest")


def secret_values(objects):
    values = {}
    for obj in objects:
        if obj["kind"] == "Secret":
            for key, value in (obj.get("data") or {}).items():
                values[(obj["metadata"]["name"], key)] = base64.b64decode(value).decode()
            for key, value in (obj.get("stringData") or {}).items():
                values[(obj["metadata"]["name"], key)] = value
    return values


def synthetic_secret(key):
    if key.endswith("DATABASE_URL"):
        user = key.split("_")[0].lower()
        return f"postgres://{user}@db.example.internal:5432/platform"
    return secrets.token_urlsafe(48)


def check_config(report, objects, workloads, binaries, pki):
    maps = config_maps(objects)
    known_secrets = secret_values(objects)
    for where, _, spec in workloads:
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            image = container.get("image", "")
            app = next((a for a in APPS if re.search(rf"/{a}([:@]|$)", image)), None)
            if app is None:
                continue
            cw = f"{where} container {container['name']}"
            env = container_env(container, maps)
            run_env = {"PATH": os.environ.get("PATH", ""), "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
            volumes = {v["name"]: v for v in spec.get("volumes") or []}
            secret_files = {}
            secrets_volume = volumes.get(mounts.get("/etc/platform/secrets"))
            for source in ((secrets_volume or {}).get("projected") or {}).get("sources", []):
                ref = source.get("secret")
                for item in (ref or {}).get("items", []):
                    secret_files[item["path"]] = (ref["name"], item["key"])
            certs = pathlib.Path(tempfile.mkdtemp(dir=pki.parent))
            shutil.copy(pki / f"{app}.pem", certs / "tls.crt")
            shutil.copy(pki / f"{app}.key", certs / "tls.key")
            shutil.copy(pki / "ca.pem", certs / "ca.crt")
            for name, value in env.items():
                if isinstance(value, tuple):
                    _, secret, key = value
                    if key != name:
                        report.fail(cw, f"{name} comes from key {key!r} of Secret {secret}: name the key after the variable")
                    value = known_secrets.get((secret, key)) or synthetic_secret(key)
                if value is None:
                    report.fail(cw, f"{name} refers to a ConfigMap key that does not exist")
                    continue
                value = str(value)
                if value.startswith("/etc/platform/tls/"):
                    if "/etc/platform/tls" not in mounts:
                        report.fail(cw, f"{name} names {value}, but nothing is mounted at /etc/platform/tls")
                    value = str(certs / value.rsplit("/", 1)[1])
                elif value.startswith("/etc/platform/secrets/"):
                    path = value.rsplit("/", 1)[1]
                    if name != path + "_FILE":
                        report.fail(cw, f"{name} names the file {path}: name the file after the variable ({name[:-5]})")
                    if path not in secret_files:
                        report.fail(cw, f"{name} names {value}, which no mounted Secret provides")
                        continue
                    secret, key = secret_files[path]
                    file = certs / path
                    file.write_text(known_secrets.get((secret, key)) or synthetic_secret(key))
                    value = str(file)
                run_env[name] = value
            binary = binaries / app
            args = [str(binary), "--check-config"]
            result = subprocess.run(args, env=run_env, capture_output=True, text=True)
            if result.returncode != 0:
                lines = [l.strip() for l in result.stderr.splitlines() if l.strip()]
                report.fail(cw, f"`{app} --check-config` on its manifest environment: " + "; ".join(lines))
            shutil.rmtree(certs, ignore_errors=True)


def check(documents, overlay, binaries=None):
    report = Report()
    objects = [d for d in documents if d]
    maps = config_maps(objects)
    workloads = []
    service_accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    for obj in objects:
        spec, labels = pod_spec(obj)
        if spec is None:
            continue
        where = f"{obj['kind']} {obj['metadata']['name']}"
        workloads.append((where, labels, spec))
        check_hardening(report, where, obj, spec)
        account = service_accounts.get(spec.get("serviceAccountName", "default"))
        if account is None:
            report.fail(where, f"runs as ServiceAccount {spec.get('serviceAccountName', 'default')!r}, which the manifests do not define")
        elif account.get("automountServiceAccountToken") is not False:
            report.fail(f"ServiceAccount {account['metadata']['name']}", "automountServiceAccountToken must be false")
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in spec.get("containers", []):
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe not in container:
                        report.fail(f"{where} container {container['name']}", f"{probe} is missing")
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] in APPS:
            check_app(report, obj, spec, labels, maps)
        if obj["kind"] == "Job":
            check_job(report, obj)
    missing = [app for app in APPS if not any(w[0] == f"Deployment {app}" for w in workloads)]
    for app in missing:
        report.fail(f"Deployment {app}", "is missing")
    check_selectors(report, objects, workloads)
    check_coverage(report, objects)
    check_headless(report, objects)
    check_rpc_policy(report, objects)
    check_images(report, overlay, workloads)
    if binaries is not None:
        with tempfile.TemporaryDirectory() as tmp:
            pki = pathlib.Path(tmp) / "pki"
            subprocess.run([str(binaries / "platform"), "certs", "--dir", str(pki)], check=True, capture_output=True)
            check_config(report, objects, workloads, binaries, pki)
    return report.problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered")
    parser.add_argument("--overlay", required=True)
    parser.add_argument("--binaries", type=pathlib.Path, help="folder with the app binaries, for --check-config")
    args = parser.parse_args()
    documents = list(yaml.safe_load_all(pathlib.Path(args.rendered).read_text()))
    problems = check(documents, args.overlay, args.binaries)
    for problem in problems:
        print(f"{args.overlay}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.overlay}: manifest policy ok ({sum(1 for d in documents if d)} objects)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
