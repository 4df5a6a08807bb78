"""Checks of deployment files no schema covers.

    check_config_files.py collector FILE    every pipeline names declared
        components, memory_limiter first among each pipeline's processors
    check_config_files.py dockerfile FILE   one stage per app on the pinned
        distroless base, non-root, health check through the binary
"""

import pathlib
import re
import sys

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


def main():
    kind, path = sys.argv[1], sys.argv[2]
    problems = {"collector": collector, "dockerfile": dockerfile}[kind](path)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
