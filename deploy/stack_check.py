"""The observability as it runs: the local stack (`platform up`, the
shipped binaries with their default telemetry) driven with real traffic,
every app's /metrics linted by `promtool check metrics`, every metric an
alert rule or a dashboard panel uses found in the scrapes, and then
Debian's Prometheus itself scraping the stack with the shipped rules: every
target up, every rule loaded and evaluated without error.

    stack_check.py --binaries DIR --promtool PATH --prometheus PATH [--nats URL] [--save-metrics FILE]
    stack_check.py --known-metrics FILE [--dashboards DIR]

With --nats (CI passes NATS_URL) ingest also consumes from JetStream, so
the consumer-lag metric exists. --save-metrics keeps the scraped names;
--known-metrics checks the alerts and dashboards against such a file
without starting anything (how deploy/check.sh plants a fault). Runs in the
deploy-check venv (nats-py).
"""

import argparse
import asyncio
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
PATIENCE = 90  # seconds; a hang guard, not a timing claim
APPS = ["gateway", "ingest", "worker", "numerics"]
PROMQL_WORDS = {"by", "without", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "offset", "inf", "nan"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=10):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(what, check):
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise SystemExit(f"stack check: gave up waiting for {what}")


def metric_names_in(expr):
    """Metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()[:1]
        if word.lower() in PROMQL_WORDS or following == "(" or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def used_metrics(dashboards=REPO / "deploy/grafana/dashboards"):
    """Every metric name the alert rules and the dashboards use, and where."""
    used = {}
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in metric_names_in(rule["expr"]):
                used.setdefault(name, set()).add(f"alert {rule.get('alert', rule.get('record'))}")
    for board in sorted(pathlib.Path(dashboards).glob("*.json")):
        data = json.loads(board.read_text())
        for panel in data.get("panels", []):
            for target in panel.get("targets", []):
                expr = target.get("expr", "").replace("$__rate_interval", "5m")
                expr = re.sub(r"\$\w+", "x", expr)
                for name in metric_names_in(expr):
                    used.setdefault(name, set()).add(f"dashboard {data.get('uid')} panel {panel.get('title')!r}")
    # Prometheus makes `up` itself.
    used.pop("up", None)
    return used


def encode_reading(event_id, tenant, device, metric, value, at):
    """A platform.ingest.v1.Reading in protobuf wire format (fields 1-6)."""
    def string(field, text):
        data = text.encode()
        return bytes([field << 3 | 2]) + varint(len(data)) + data

    def varint(n):
        out = b""
        while True:
            byte = n & 0x7F
            n >>= 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    import struct
    seconds = int(at.timestamp())
    timestamp = bytes([1 << 3 | 0]) + varint(seconds)
    return (string(1, event_id) + string(2, tenant) + string(3, device) + string(4, metric)
            + bytes([5 << 3 | 1]) + struct.pack("<d", value)
            + bytes([6 << 3 | 2]) + varint(len(timestamp)) + timestamp)


async def publish_nats(url, subject, payloads):
    import nats
    client = await nats.connect(url)
    js = client.jetstream()
    for payload in payloads:
        await js.publish(subject, payload)
    await client.drain()


async def delete_stream(url, name):
    import nats
    client = await nats.connect(url)
    try:
        await client.jetstream().delete_stream(name)
    except Exception as error:  # the stream may never have been made
        print(f"stack check: stream {name} not deleted: {error}", file=sys.stderr)
    await client.drain()


def missing_metrics(present, dashboards):
    return [
        f"metric {name} (used by {', '.join(sorted(users))}) is on no app's /metrics"
        for name, users in sorted(used_metrics(dashboards).items())
        if name not in present
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binaries", type=pathlib.Path)
    parser.add_argument("--promtool")
    parser.add_argument("--prometheus")
    parser.add_argument("--nats")
    parser.add_argument("--save-metrics", type=pathlib.Path)
    parser.add_argument("--known-metrics", type=pathlib.Path)
    parser.add_argument("--dashboards", type=pathlib.Path, default=REPO / "deploy/grafana/dashboards")
    args = parser.parse_args()
    if args.known_metrics:
        problems = missing_metrics(set(args.known_metrics.read_text().split()), args.dashboards)
        for problem in problems:
            print(f"stack check: {problem}", file=sys.stderr)
        return 1 if problems else 0
    if not (args.binaries and args.promtool and args.prometheus):
        parser.error("--binaries, --promtool and --prometheus are needed to run the stack")
    problems = []
    work = pathlib.Path(tempfile.mkdtemp(prefix="platform-stack-check."))
    ports = {f"{app.upper()}_ADMIN_ADDR": free_port() for app in APPS}
    ports.update({"GATEWAY_HTTP_ADDR": free_port(), "INGEST_GRPC_ADDR": free_port(),
                  "WORKER_GRPC_ADDR": free_port(), "NUMERICS_GRPC_ADDR": free_port()})
    env = {k: v for k, v in os.environ.items() if not re.match(r"(GATEWAY|INGEST|WORKER|NUMERICS|OTEL)_", k)}
    env.update({name: f"127.0.0.1:{port}" for name, port in ports.items()})
    # Short windows, so windows close and the worker aggregates them
    # while the check runs.
    env.update({"INGEST_WINDOW": "2s", "INGEST_ALLOWED_LATENESS": "1s"})
    stream = f"STACKCHECK{os.getpid()}"
    if args.nats:
        env.update({"INGEST_NATS_URL": args.nats, "INGEST_NATS_STREAM": stream,
                    "INGEST_NATS_SUBJECTS": f"stackcheck{os.getpid()}.>", "INGEST_NATS_CONSUMER": "stack-check"})
    log = open(work / "platform.log", "w")
    platform = subprocess.Popen([str(args.binaries.resolve() / "platform"), "up"], cwd=work, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prometheus = None
    try:
        wait_for("the stack to be ready", lambda: "all 4 apps ready" in (work / "platform.log").read_text())
        key = (work / "data/dev-api-key").read_text().strip()
        gateway = f"http://127.0.0.1:{ports['GATEWAY_HTTP_ADDR']}"
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        now = datetime.now(timezone.utc)
        readings = [{"event_id": f"stack-{i}", "device_id": f"d{i % 3}", "metric": "temperature_c",
                     "value": 20.0 + (i % 7), "observed_at": (now - timedelta(seconds=40 - i)).isoformat()}
                    for i in range(40)]
        status, body = http("POST", f"{gateway}/v1/readings", json.dumps({"readings": readings}).encode(), auth)
        if status != 200:
            problems.append(f"POST /v1/readings answered {status}: {body}")
        for path in ["/v1/results", "/v1/status", "/v1/nothing-here"]:
            http("GET", gateway + path, headers=auth)
        if args.nats:
            payloads = [encode_reading(f"nats-{i}", "dev", "n1", "temperature_c", float(i), now - timedelta(seconds=5))
                        for i in range(20)]
            asyncio.run(publish_nats(args.nats, f"stackcheck{os.getpid()}.dev", payloads))
        admin = {app: f"http://127.0.0.1:{ports[app.upper() + '_ADMIN_ADDR']}" for app in APPS}
        # The worker aggregates closed windows (asking numerics); its
        # maintenance leader then reports queue depth and age.
        wait_for("the worker's job metrics", lambda: all(
            name in http("GET", admin["worker"] + "/metrics")[1]
            for name in ["jobs_attempts_total", "jobs_queue_depth", "jobs_queue_oldest_available_age_seconds"]))
        if args.nats:
            wait_for("ingest's consumer lag metric", lambda: "ingest_nats_pending" in http("GET", admin["ingest"] + "/metrics")[1])

        present = set()
        for app in APPS:
            status, text = http("GET", admin[app] + "/metrics")
            (work / f"{app}.metrics").write_text(text)
            lint = subprocess.run([args.promtool, "check", "metrics"], input=text, capture_output=True, text=True)
            if lint.returncode != 0 or lint.stdout.strip() or lint.stderr.strip():
                problems.append(f"{app} /metrics: promtool check metrics: {(lint.stdout + lint.stderr).strip()}")
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    present.add(re.split(r"[{ ]", line, maxsplit=1)[0])
            print(f"scraped {app}: {len(text.splitlines())} lines, lint clean" if lint.returncode == 0 else f"scraped {app}")
        missing = missing_metrics(present, args.dashboards)
        if not args.nats:
            # Only a JetStream consumer reports its lag.
            missing = [m for m in missing if not m.startswith("metric ingest_nats_pending ")]
        problems.extend(missing)
        if args.save_metrics:
            args.save_metrics.write_text("\n".join(sorted(present)) + "\n")
        print(f"{len(used_metrics(args.dashboards))} metrics used by alerts and dashboards; {len(present)} series names scraped")

        # Prometheus itself: the shipped rules against the running stack.
        prom_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(REPO / "deploy/prometheus/alerts.yaml")],
            "scrape_configs": [{"job_name": app, "static_configs": [{"targets": [admin[app].removeprefix("http://")]}]} for app in APPS],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = subprocess.Popen(
            [args.prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=open(work / "prometheus.log", "w"), stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        def targets_up():
            status, body = http("GET", api + "/targets")
            if status != 200:
                return None
            active = json.loads(body)["data"]["activeTargets"]
            return active if len(active) == len(APPS) and all(t["health"] == "up" for t in active) else None

        wait_for("Prometheus to scrape every app", targets_up)

        def rules_evaluated():
            status, body = http("GET", api + "/rules")
            if status != 200:
                return None
            rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

        rules = wait_for("every rule to be evaluated", rules_evaluated)
        for rule in rules:
            if rule.get("health") != "ok" or rule.get("lastError"):
                problems.append(f"Prometheus: rule {rule['name']} health {rule.get('health')}: {rule.get('lastError')}")
        firing = [r["name"] for r in rules if r.get("state") == "firing"]
        status, body = http("GET", api + "/query?query=count(build_info)")
        builds = json.loads(body)["data"]["result"]
        if not builds or builds[0]["value"][1] != str(len(APPS)):
            problems.append(f"Prometheus: count(build_info) is {builds}, expected {len(APPS)}")
        print(f"Prometheus {args.prometheus}: {len(APPS)} targets up, {len(rules)} rules loaded and evaluated "
              f"without error; firing now: {firing or 'none'}")
        if "PlatformAppDown" in firing:
            problems.append("PlatformAppDown fires against a healthy stack")
    finally:
        if args.nats:
            asyncio.run(delete_stream(args.nats, stream))
        if prometheus:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        os.killpg(platform.pid, signal.SIGTERM)
        try:
            platform.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(platform.pid, signal.SIGKILL)
    for problem in problems:
        print(f"stack check: {problem}", file=sys.stderr)
    if problems:
        print(f"stack check: logs and scrapes kept in {work}", file=sys.stderr)
        return 1
    subprocess.run(["rm", "-rf", str(work)])
    print("stack check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
