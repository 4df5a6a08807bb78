"""The console's jobs pages with a million jobs in the table, as an operator's
browser meets them: the shipped `worker` and `gateway` binaries as processes
with their default configuration (a scratch PostgreSQL database for the
worker, an SQLite file for the gateway), a signed-in viewer, and every page
the jobs console offers fetched over HTTP, each many times, first with an
empty table and then with `--rows` jobs seeded by
libs/jobs/testing/busy_week.sql (through psql). Prints p50 and p99 per page
for both, and the ratio seeded/empty: what a million jobs cost a page.

Standard library only; run by console_jobs.sh.
"""

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

PASSWORD = "a long password for measuring pages"

# (label, path): every filter the jobs page offers, and a job's detail.
PAGES = [
    ("queues and newest jobs", "/console/jobs"),
    ("state=available", "/console/jobs?state=available"),
    ("state=scheduled", "/console/jobs?state=scheduled"),
    ("state=executing", "/console/jobs?state=executing"),
    ("state=retryable", "/console/jobs?state=retryable"),
    ("state=completed", "/console/jobs?state=completed"),
    ("state=discarded", "/console/jobs?state=discarded"),
    ("state=cancelled", "/console/jobs?state=cancelled"),
    ("queue=audit-export (0.1%)", "/console/jobs?queue=audit-export"),
    ("kind=tenant.export (0.02%)", "/console/jobs?kind=tenant.export"),
    ("tag=incident-42 (oldest jobs)", "/console/jobs?tag=incident-42"),
    ("tag=nightly (10%)", "/console/jobs?tag=nightly"),
    ("queue=mail&state=discarded", "/console/jobs?queue=mail&state=discarded"),
    ("one job's detail", "/console/jobs/{job}"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(url, *args, stdin=None):
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, *args],
                   check=True, input=stdin, text=True, stdout=subprocess.DEVNULL)


def database_url(base, name):
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def wait_ready(port, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not become ready on admin port {port}")


class Console:
    """A signed-in browser without JavaScript: one keep-alive connection."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = urllib.parse.urlencode({"username": "bench", "password": PASSWORD})
        self.conn.request("POST", "/console/login", body, {
            "Content-Type": "application/x-www-form-urlencoded",
            "Sec-Fetch-Site": "same-origin",
        })
        answer = self.conn.getresponse()
        answer.read()
        cookie = answer.getheader("Set-Cookie") or ""
        if answer.status != 303 or not cookie:
            sys.exit(f"login failed: {answer.status}")
        self.cookie = cookie.split(";", 1)[0]

    def get(self, path):
        try:
            return self.timed_get(path)
        except (http.client.RemoteDisconnected, ConnectionError):
            # The server closed the idle connection (while seeding): a
            # browser opens a new one.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            return self.timed_get(path)

    def timed_get(self, path):
        started = time.perf_counter()
        self.conn.request("GET", path, headers={"Cookie": self.cookie})
        answer = self.conn.getresponse()
        body = answer.read()
        elapsed = time.perf_counter() - started
        if answer.status != 200:
            sys.exit(f"GET {path}: {answer.status} {body[:300]!r}")
        return elapsed, body.decode()


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure(console, job, requests):
    """p50 and p99 (ms) per page: 3 warm-up rounds, then `requests` rounds
    over every page in turn (so a pause of the machine's lands on all pages,
    not on one). Without a `job` (the empty table) there is no detail page."""
    pages = [(label, path.format(job=job)) for label, path in PAGES
             if job is not None or "{job}" not in path]
    for _ in range(3):
        for _, path in pages:
            console.get(path)
    times = {label: [] for label, _ in pages}
    for _ in range(requests):
        for label, path in pages:
            times[label].append(console.get(path)[0] * 1000)
    return {label: (statistics.median(t), percentile(t, 99)) for label, t in times.items()}


def a_discarded_job(console):
    _, body = console.get("/console/jobs?state=discarded")
    marker = '<a href="/console/jobs/'
    at = body.find(marker)
    return body[at + len(marker):].split('"', 1)[0] if at >= 0 else "1"


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker-bin", required=True)
    parser.add_argument("--gateway-bin", required=True)
    parser.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100, help="per page and phase")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    root = os.path.dirname(os.path.abspath(__file__))
    seed = os.path.join(root, "../../../libs/jobs/testing/busy_week.sql")
    name = f"console_bench_{os.getpid()}"
    psql(args.database_url, "-c", f"CREATE DATABASE {name}")
    worker_db = database_url(args.database_url, name)
    work = tempfile.mkdtemp(prefix="console-bench-")
    procs = []
    try:
        worker_grpc, worker_admin = free_port(), free_port()
        http_port, gateway_admin = free_port(), free_port()
        # Development defaults, plaintext gRPC on loopback (no certificates
        # to make); nothing of the caller's WORKER_*/GATEWAY_* settings.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("WORKER_", "GATEWAY_"))}
        env.update(PLATFORM_ENV="development", RUST_LOG="warn")
        # A queue no seeded job is in: the node claims nothing, so the
        # table holds still while it is measured.
        worker_env = dict(env, WORKER_DATABASE_URL=worker_db,
                          WORKER_GRPC_ADDR=f"127.0.0.1:{worker_grpc}",
                          WORKER_ADMIN_ADDR=f"127.0.0.1:{worker_admin}",
                          WORKER_QUEUES="bench-idle=1", WORKER_GRPC_PLAINTEXT="true")
        gateway_db = f"sqlite://{work}/gateway.db"
        gateway_env = dict(env, GATEWAY_DATABASE_URL=gateway_db,
                           GATEWAY_HTTP_ADDR=f"127.0.0.1:{http_port}",
                           GATEWAY_ADMIN_ADDR=f"127.0.0.1:{gateway_admin}",
                           GATEWAY_WORKER_URL=f"http://127.0.0.1:{worker_grpc}",
                           GATEWAY_INGEST_URL=f"http://127.0.0.1:{free_port()}",
                           GATEWAY_NUMERICS_URL=f"http://127.0.0.1:{free_port()}",
                           GATEWAY_GRPC_PLAINTEXT="true")
        log = open(os.path.join(work, "apps.log"), "w")
        procs.append(subprocess.Popen([args.worker_bin], env=worker_env, stdout=log, stderr=log))
        wait_ready(worker_admin, "worker")
        subprocess.run([args.gateway_bin, "operators", "create", "bench", "--role", "viewer"],
                       env=gateway_env, input=PASSWORD + "\n", text=True, check=True,
                       stdout=subprocess.DEVNULL)
        procs.append(subprocess.Popen([args.gateway_bin], env=gateway_env, stdout=log, stderr=log))
        wait_ready(gateway_admin, "gateway")
        console = Console(http_port)

        empty = measure(console, None, args.requests)
        started = time.time()
        psql(worker_db, "-f", seed, "-c", f"SELECT pg_temp.seed_busy_week({args.rows})",
             "-c", "VACUUM ANALYZE jobs.job", "-c", "CHECKPOINT")
        seeded_in = time.time() - started
        job = a_discarded_job(console)
        seeded = measure(console, job, args.requests)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        psql(args.database_url, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if sys.exc_info()[0] is not None or os.environ.get("CONSOLE_BENCH_LOG"):
            with open(os.path.join(work, "apps.log")) as f:
                sys.stderr.write(f.read()[-4000:])
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {machine()}")
    print(f"jobs seeded: {args.rows:,} in {seeded_in:.1f} s (libs/jobs/testing/busy_week.sql, "
          f"then VACUUM ANALYZE and CHECKPOINT); {args.requests} rounds over every page after "
          f"3 warm-up rounds, one keep-alive connection")
    print()
    print("| page | empty p50 ms | empty p99 ms | seeded p50 ms | seeded p99 ms | seeded/empty p50 | under 100 ms (p99) |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for label, _ in PAGES:
        s50, s99 = seeded[label]
        worst = max(worst, s99)
        if label in empty:
            e50, e99 = empty[label]
            before, ratio = f"{e50:.1f} | {e99:.1f}", f"{s50 / e50:.2f}x"
        else:
            before, ratio = "- | -", "-"
        print(f"| {label} | {before} | {s50:.1f} | {s99:.1f} | {ratio} | "
              f"{'yes' if s99 < 100 else 'NO'} |")
    print()
    print(f"slowest seeded p99: {worst:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rows": args.rows, "empty": empty,
                       "seeded": seeded}, f, indent=2)


if __name__ == "__main__":
    main()
