"""The rolling upgrade's other half: the previous release's binaries run
against the schema this commit's migrations leave, and the cross-app story
still works (a tenant and key made by the old gateway's commands, readings
published through the old gateway, windows aggregated by the old worker
with the old numerics, results read back). Migrations are expand/contract,
so while a rollout replaces pods, old and new run on one schema.

    upgrade_check.py --previous DIR --current DIR --database-url URL

DIR holds the binaries (gateway, ingest, worker, numerics). A scratch
database is created on URL's server and dropped at the end.
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

PATIENCE = 120  # seconds; a hang guard, not a timing claim


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_database(url, name):
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}" + (f"?{query}" if query else "")


def psql(url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True, capture_output=True)


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def wait_for(what, check):
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise SystemExit(f"upgrade check: gave up waiting for {what}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--previous", type=pathlib.Path, required=True)
    parser.add_argument("--current", type=pathlib.Path, required=True)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    name = f"upgrade_{uuid.uuid4().hex[:12]}"
    admin = with_database(args.database_url, "postgres")
    url = with_database(args.database_url, name)
    psql(admin, f"CREATE DATABASE {name}")
    processes = []
    logs = pathlib.Path(f"/tmp/platform-upgrade-{name}")
    logs.mkdir()
    try:
        # The new release's migrations Job.
        base_env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn"}
        for app in ["worker", "ingest", "gateway"]:
            env = dict(base_env, **{f"{app.upper()}_DATABASE_URL": url, f"{app.upper()}_GRPC_PLAINTEXT": "true"})
            subprocess.run([str(args.current / app), "migrate"], env=env, check=True, capture_output=True)
        print(f"schema migrated by {args.current}")

        # The previous release's apps on it (each finds its own migrations
        # applied and runs none).
        ports = {k: free_port() for k in ["ingest", "worker", "numerics", "gateway", "ia", "wa", "na", "ga"]}
        envs = {
            "numerics": {"NUMERICS_GRPC_ADDR": f"127.0.0.1:{ports['numerics']}", "NUMERICS_ADMIN_ADDR": f"127.0.0.1:{ports['na']}",
                         "NUMERICS_GRPC_PLAINTEXT": "true"},
            "ingest": {"INGEST_GRPC_ADDR": f"127.0.0.1:{ports['ingest']}", "INGEST_ADMIN_ADDR": f"127.0.0.1:{ports['ia']}",
                       "INGEST_GRPC_PLAINTEXT": "true", "INGEST_DATABASE_URL": url,
                       "INGEST_WINDOW": "2s", "INGEST_ALLOWED_LATENESS": "1s"},
            "worker": {"WORKER_GRPC_ADDR": f"127.0.0.1:{ports['worker']}", "WORKER_ADMIN_ADDR": f"127.0.0.1:{ports['wa']}",
                       "WORKER_GRPC_PLAINTEXT": "true", "WORKER_DATABASE_URL": url,
                       "WORKER_INGEST_URL": f"http://127.0.0.1:{ports['ingest']}",
                       "WORKER_NUMERICS_URL": f"http://127.0.0.1:{ports['numerics']}"},
            "gateway": {"GATEWAY_HTTP_ADDR": f"127.0.0.1:{ports['gateway']}", "GATEWAY_ADMIN_ADDR": f"127.0.0.1:{ports['ga']}",
                        "GATEWAY_GRPC_PLAINTEXT": "true", "GATEWAY_DATABASE_URL": url,
                        "GATEWAY_INGEST_URL": f"http://127.0.0.1:{ports['ingest']}",
                        "GATEWAY_WORKER_URL": f"http://127.0.0.1:{ports['worker']}",
                        "GATEWAY_NUMERICS_URL": f"http://127.0.0.1:{ports['numerics']}"},
        }
        admin_port = {"numerics": "na", "ingest": "ia", "worker": "wa", "gateway": "ga"}
        for app in ["numerics", "ingest", "worker", "gateway"]:
            log = open(logs / f"{app}.log", "w")
            processes.append(subprocess.Popen([str(args.previous / app)], env=dict(base_env, **envs[app]),
                                              stdout=subprocess.DEVNULL, stderr=log))
            wait_for(f"the previous {app} to be ready",
                     lambda app=app: http("GET", f"http://127.0.0.1:{ports[admin_port[app]]}/readyz")[0] == 200)
        version = subprocess.run([str(args.previous / "gateway"), "--version"], capture_output=True, text=True).stdout.strip()
        print(f"previous release serving on the new schema: {version}")

        # The story, driven through the previous release's gateway.
        gateway_env = dict(base_env, **envs["gateway"])
        subprocess.run([str(args.previous / "gateway"), "tenants", "create", "acme"], env=gateway_env, check=True, capture_output=True)
        created = subprocess.run([str(args.previous / "gateway"), "keys", "create", "acme", "--scope", "readings:write",
                                  "--scope", "results:read"], env=gateway_env, check=True, capture_output=True, text=True)
        key = next(word for word in created.stdout.split() if word.startswith("plk."))
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        now = datetime.now(timezone.utc)
        readings = [{"event_id": f"u{i}", "device_id": "boiler-1", "metric": "temperature_c", "value": 20.0 + i,
                     "observed_at": (now - timedelta(seconds=30 - i)).isoformat()} for i in range(30)]
        status, body = http("POST", f"{gateway}/v1/readings", json.dumps({"readings": readings}).encode(), auth)
        if status != 200:
            raise SystemExit(f"upgrade check: the previous gateway answered {status} to a publish: {body}")

        def results():
            status, body = http("GET", f"{gateway}/v1/results", headers=auth)
            return status == 200 and len(json.loads(body).get("results", [])) > 0 and body

        body = wait_for("window results through the previous release", results)
        print(f"upgrade check: ok ({len(json.loads(body)['results'])} window results served by the previous release on the new schema)")
        return 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        psql(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        for log in sorted(logs.glob("*.log")):
            text = log.read_text().strip()
            if text:
                print(f"--- {log.name} (last lines)\n" + "\n".join(text.splitlines()[-5:]), file=sys.stderr)
        subprocess.run(["rm", "-rf", str(logs)])


if __name__ == "__main__":
    sys.exit(main())
