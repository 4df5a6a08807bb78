"""Checks of deployment files no schema covers.

    check_config_files.py collector FILE    every pipeline names declared
        components, memory_limiter first among each pipeline's processors
    check_config_files.py dockerfile FILE   one stage per app on the pinned
        distroless base, non-root, health check through the binary
    check_config_files.py compose FILE...   every service a file defines has
        a memory limit and a health check (one-shot steps excepted), the
        platform's apps are non-root, read-only, without capabilities, and
        start after the migrations
    check_config_files.py dashboards DIR DATASOURCES PROMTOOL   every
        dashboard loads, has a fixed unique uid and a title, names only the
        provisioned data source, and its PromQL parses (promtool)
"""

import json
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

APPS = ["gateway", "ingest", "worker", "numerics"]
BASE = re.compile(
    r"^FROM gcr\.io/distroless/cc-debian12:nonroot@sha256:(BASE_IMAGE_DIGEST|[0-9a-f]{64}) AS (\w+)$"
)


def collector(path):
    config = yaml.safe_load(pathlib.Path(path).read_text())
    problems = []
    declared = {kind: set((config.get(kind) or {}).keys()) for kind in ("receivers", "processors", "exporters", "connectors", "extensions")}
    service = config.get("service") or {}
    for extension in service.get("extensions") or []:
        if extension not in declared["extensions"]:
            problems.append(f"service.extensions names {extension!r}, which is not declared under extensions")
    pipelines = service.get("pipelines") or {}
    if not pipelines:
        problems.append("service.pipelines is empty")
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind) or []:
                known = declared[kind] | (declared["connectors"] if kind != "processors" else set())
                if component not in known:
                    problems.append(f"pipeline {name}: {kind} names {component!r}, which is not declared")
        processors = pipeline.get("processors") or []
        if not processors or processors[0].split("/")[0] != "memory_limiter":
            problems.append(f"pipeline {name}: memory_limiter must be the first processor, got {processors}")
    return problems


def dockerfile(path):
    lines = pathlib.Path(path).read_text().splitlines()
    problems = []
    stages = {}
    current = None
    for number, line in enumerate(lines, 1):
        if line.startswith("FROM "):
            match = BASE.match(line)
            if not match:
                problems.append(f"line {number}: the base must be gcr.io/distroless/cc-debian12:nonroot pinned by digest (or the BASE_IMAGE_DIGEST placeholder): {line}")
                current = None
                continue
            current = match.group(2)
            stages[current] = []
        elif current:
            stages[current].append(line)
    for app in APPS:
        body = "\n".join(stages.get(app, []))
        if app not in stages:
            problems.append(f"no stage for {app}")
            continue
        if "USER 65532:65532" not in body:
            problems.append(f"stage {app}: must run as USER 65532:65532")
        if f'CMD ["/usr/local/bin/{app}", "health-check"]' not in body:
            problems.append(f"stage {app}: HEALTHCHECK must run `{app} health-check`")
        if f"COPY --chmod=0555 bin/{app} " not in body:
            problems.append(f"stage {app}: must copy the release's bin/{app}, read-only")
        if re.search(r"^RUN ", body, re.M):
            problems.append(f"stage {app}: no RUN (the base has no shell; the binary is built by the release, not here)")
    return problems


def dashboards(path, datasources, promtool):
    provisioned = {d["uid"]: d["type"] for d in yaml.safe_load(pathlib.Path(datasources).read_text())["datasources"]}
    problems = []
    uids = {}
    rules = []
    for board in sorted(pathlib.Path(path).glob("*.json")):
        try:
            data = json.loads(board.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"{board.name}: not JSON: {error}")
            continue
        uid = data.get("uid", "")
        if not re.fullmatch(r"[a-z0-9-]{1,40}", uid):
            problems.append(f"{board.name}: uid {uid!r} must be fixed: 1-40 of a-z, 0-9, '-'")
        elif uid in uids:
            problems.append(f"{board.name}: uid {uid!r} is also {uids[uid]}'s")
        uids[uid] = board.name
        if not data.get("title"):
            problems.append(f"{board.name}: no title")
        ids = [panel.get("id") for panel in data.get("panels", [])]
        if len(ids) != len(set(ids)):
            problems.append(f"{board.name}: panel ids repeat")
        for panel in data.get("panels", []):
            if panel.get("type") == "row":
                continue
            where = f"{board.name} panel {panel.get('title')!r}"
            for source in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
                if not source or provisioned.get(source.get("uid")) != source.get("type"):
                    problems.append(f"{where}: data source {source} is not a provisioned one {provisioned}")
            if not panel.get("targets"):
                problems.append(f"{where}: no query")
            for target in panel.get("targets", []):
                expr = re.sub(r"\$__rate_interval|\$__interval", "5m", target.get("expr", ""))
                rules.append({"record": f"dashboard:{len(rules)}", "expr": expr, "labels": {"where": where}})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, file)
        file.flush()
        result = subprocess.run([promtool, "check", "rules", file.name], capture_output=True, text=True)
        if result.returncode != 0:
            problems.append(f"a dashboard query does not parse: {(result.stdout + result.stderr).strip()}")
    return problems


def compose(*paths):
    problems = []
    for path in paths:
        services = (yaml.safe_load(pathlib.Path(path).read_text()) or {}).get("services", {})
        for name, service in services.items():
            where = f"{pathlib.Path(path).name} service {name}"
            if "image" not in service:
                continue  # an override of a service another file defines
            if not (((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}).get("memory"):
                problems.append(f"{where}: no deploy.resources.limits.memory")
            one_shot = service.get("restart") == "no"
            if not one_shot and not service.get("healthcheck"):
                problems.append(f"{where}: no healthcheck")
            app = next((a for a in APPS if service["image"].startswith(f"platform/{a}:")), None)
            if app is None:
                continue
            if not service.get("read_only") or service.get("user") != "65532:65532" or "ALL" not in (service.get("cap_drop") or []):
                problems.append(f"{where}: a platform app runs read_only, as 65532:65532, with cap_drop [ALL]")
            if not one_shot:
                waits = service.get("depends_on") or {}
                if not any(dep.startswith("migrate") and cond.get("condition") == "service_completed_successfully"
                           for dep, cond in waits.items()) and app != "numerics":
                    problems.append(f"{where}: must start after the migrations (depends_on a migrate step, service_completed_successfully)")
                test = (service.get("healthcheck") or {}).get("test", [])
                if test != ["CMD", f"/usr/local/bin/{app}", "health-check"]:
                    problems.append(f"{where}: the health check must be `{app} health-check`, got {test}")
    return problems


def main():
    kind, path = sys.argv[1], sys.argv[2]
    checks = {"collector": collector, "dockerfile": dockerfile, "dashboards": dashboards, "compose": compose}
    problems = checks[kind](path, *sys.argv[3:])
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
