"""The jobs engine against graphile-worker, as a user would measure them.

Both engines run as processes with their shipped defaults on the same
PostgreSQL, each in a scratch database of its own, in turn: A B A B ...
for `--pairs` pairs (the first engine alternates), and the report gives
each figure per run, the ratio ours/peer per pair, the median of the pair
ratios and their spread.

Per run:
- bulk insert: `--jobs` no-op jobs through each engine's own client API
  (`worker enqueue --count`, i.e. `jobs::postgres::insert_many` in
  statements of 10,000, the path ingest uses; graphile-worker's
  `WorkerUtils.addJobs` in batches of 10,000), timed inside each client;
- burn-down: the engine process starts with those jobs waiting and runs
  them all. Whole-run rate counts from process start to the last
  completion; the steady rate is 80% of the jobs over the time between
  10% and 90% done. Completion times come from the database for ours
  (`finalized_at`, read after the run) and from graphile-worker's own
  `job:complete` events (its rows are deleted). Nothing polls the job
  table while jobs run, except an existence check every 100 ms;
- CPU per job over the burn-down: the engine's processes from
  /proc/<pid>/stat, and PostgreSQL as the rest of the machine (/proc/stat
  busy time minus the engine and this script: nothing else runs here);
- WAL bytes (pg_current_wal_lsn) and transactions (pg_stat_database, read
  after the engine exits so every backend has flushed its counters) per
  job over the burn-down;
- insert-to-start latency, open loop: with the engine idle, `--rate` jobs
  per second for `--seconds`, one per statement on one connection, at
  fixed times that do not wait for anything; latency is the claim time
  minus the insert time, both the database's own clock (ours:
  `attempted_at - inserted_at`; graphile-worker: `locked_at - created_at`,
  copied by a trigger as its rows are deleted).

Prints a Markdown report and, with --json, writes every figure.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The SQL each engine offers for one job from SQL: ours is the function
# every enqueue goes through (`jobs::postgres::insert_many` calls it, then
# notifies), graphile-worker's is `add_job` (its trigger notifies).
OURS_INSERT_ONE = """
SELECT pg_notify('jobs_insert', 'default') FROM jobs.enqueue(
  ARRAY['noop'], ARRAY['default'], ARRAY['{}'], ARRAY[NULL]::text[], ARRAY[NULL]::text[],
  ARRAY[1]::smallint[], ARRAY[20], ARRAY[NULL]::timestamptz[], ARRAY[NULL]::bytea[],
  ARRAY[NULL]::integer[])
"""
PEER_INSERT_ONE = "SELECT graphile_worker.add_job('noop', '{}'::json)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid):
    """utime + stime of a live process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds():
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in cpu[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_seconds():
    t = os.times()
    return t.user + t.system


def url_for(base, database):
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}"


class Scratch:
    """A database created for one run and dropped after it."""

    def __init__(self, base_url, name, tls):
        self.base_url = base_url
        self.name = name
        # The same TLS setting for both engines' connections: node-postgres
        # (graphile-worker) does not use TLS unless told to, sqlx prefers it.
        self.url = url_for(base_url, name) + ("?sslmode=require" if tls else "?sslmode=disable")

    def __enter__(self):
        with psycopg.connect(self.base_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {self.name}")
        return self

    def __exit__(self, *exc):
        with psycopg.connect(self.base_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def counters(url, database):
    with psycopg.connect(url, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
        xacts = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()[0]
    return int(lsn), int(xacts)


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def rates_from_completions(times, started, total):
    """Whole-run and steady (10% -> 90% done) rates from completion times."""
    times = sorted(times)
    whole = total / (times[-1] - started)
    t10 = times[int(total * 0.1)]
    t90 = times[int(total * 0.9) - 1]
    steady = (int(total * 0.9) - int(total * 0.1)) / (t90 - t10)
    return whole, steady


def open_loop_inserts(url, sql, rate, seconds):
    """Inserts at fixed times; returns how late the latest insert was sent."""
    n = int(rate * seconds)
    worst_lag = 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter() + 0.05
        for i in range(n):
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            else:
                worst_lag = max(worst_lag, now - due)
            conn.execute(sql)
    return n, worst_lag


class Ours:
    name = "ours"

    def __init__(self, args):
        self.binary = os.path.abspath(args.worker_bin)
        self.overrides = dict(item.split("=", 1) for item in args.ours_env)
        self.workdir = tempfile.mkdtemp(prefix="side-by-side-worker-")

    def env(self, url):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WORKER_", "OTEL_", "PLATFORM_", "RUST_LOG"))
        }
        self.admin = free_port()
        env.update(
            WORKER_DATABASE_URL=url,
            WORKER_GRPC_ADDR=f"127.0.0.1:{free_port()}",
            WORKER_ADMIN_ADDR=f"127.0.0.1:{self.admin}",
            # No certificates in a scratch folder; loopback only.
            WORKER_GRPC_PLAINTEXT="true",
        )
        env.update(self.overrides)
        return env

    def version(self):
        return subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout.strip()

    def prepare(self, url):
        subprocess.run([self.binary, "migrate"], env=self.env(url), cwd=self.workdir, check=True,
                       capture_output=True)

    def bulk_insert(self, url, jobs):
        out = subprocess.run(
            [self.binary, "enqueue", "--kind", "noop", "--count", str(jobs)],
            env=self.env(url), cwd=self.workdir, check=True, capture_output=True, text=True,
        ).stdout
        # "enqueued N job(s) in S s (R jobs/s)"
        words = out.split()
        return int(words[1]) / float(words[4])

    def start(self, url, log):
        proc = subprocess.Popen([self.binary], env=self.env(url), cwd=self.workdir,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs = [proc]
        return self.procs

    def wait_ready(self):
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("worker did not become ready in 60 s")

    def drained(self, conn):
        return conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM jobs.job WHERE state IN ('available', 'executing'))"
        ).fetchone()[0]

    def completion_times(self, conn):
        return [r[0] for r in conn.execute(
            "SELECT extract(epoch FROM finalized_at)::float8 FROM jobs.job WHERE state = 'completed'"
        )]

    def latency_setup(self, conn):
        self.latency_after = conn.execute("SELECT coalesce(max(id), 0) FROM jobs.job").fetchone()[0]

    insert_one = OURS_INSERT_ONE

    def latencies(self, conn):
        return [r[0] for r in conn.execute(
            "SELECT extract(epoch FROM attempted_at - inserted_at)::float8 FROM jobs.job WHERE id > %s",
            (self.latency_after,),
        )]

    def latency_done(self, conn, n):
        return conn.execute(
            "SELECT count(*) FROM jobs.job WHERE id > %s AND state = 'completed'", (self.latency_after,)
        ).fetchone()[0] >= n


def node_postgres_url(url):
    """node-postgres reads `sslmode=require` as verify-full; the loopback
    server's certificate is self-signed, so ask for TLS without checks."""
    return url.replace("sslmode=require", "sslmode=no-verify")


class Peer:
    name = "graphile-worker"

    def __init__(self, args):
        self.dir = os.path.abspath(args.peer_dir)
        self.processes = args.peer_processes
        self.concurrency = args.peer_concurrency
        self.local_queue = args.peer_local_queue
        self.batch_delay = args.peer_batch_delay
        self.completed = []

    def version(self):
        with open(os.path.join(self.dir, "node_modules", "graphile-worker", "package.json")) as f:
            version = json.load(f)["version"]
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        return (f"graphile-worker {version} on Node.js {node}: {self.processes} processes x "
                f"{self.concurrency} concurrent jobs, local queue {self.local_queue}, "
                f"completeJobBatchDelay {self.batch_delay} ms")

    def prepare(self, url):
        # add_jobs.mjs with no jobs migrates the schema and adds nothing.
        self.node(["add_jobs.mjs", node_postgres_url(url), "0", "1"])

    def node(self, argv):
        return subprocess.run(["node", *argv], cwd=self.dir, check=True, capture_output=True,
                              text=True).stdout

    def bulk_insert(self, url, jobs):
        added, seconds = self.node(["add_jobs.mjs", node_postgres_url(url), str(jobs), "10000"]).split()
        return int(added) / float(seconds)

    def start(self, url, log):
        self.completed = []
        self.procs = []
        for _ in range(self.processes):
            proc = subprocess.Popen(
                ["node", "worker.mjs", node_postgres_url(url), str(self.concurrency), str(self.local_queue),
                 str(self.batch_delay)],
                cwd=self.dir, stdout=subprocess.PIPE, stderr=log, text=True,
            )
            self.procs.append(proc)
            threading.Thread(target=self.read_events, args=(proc,), daemon=True).start()
        return self.procs

    def read_events(self, proc):
        # Each process prints "ready" then, every 50 ms while it completes
        # jobs, "<epoch ms> <completions so far>".
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 2:
                self.completed.append((float(parts[0]) / 1000.0, int(parts[1]), proc.pid))

    def wait_ready(self):
        # worker.mjs prints ready after run() resolves; the events thread
        # does not record it, so wait for the processes' schema check
        # instead: a first add is picked up within the poll interval.
        time.sleep(1.0)

    def drained(self, conn):
        return conn.execute("SELECT NOT EXISTS (SELECT 1 FROM graphile_worker._private_jobs)").fetchone()[0]

    def completion_times(self, conn):
        # Per-process cumulative counts at times -> one time per job.
        last = {}
        times = []
        for at, count, pid in sorted(self.completed):
            prev = last.get(pid, 0)
            times.extend([at] * (count - prev))
            last[pid] = count
        return times

    def latency_setup(self, conn):
        conn.execute("""
            CREATE TABLE IF NOT EXISTS public.bench_started (created_at timestamptz, locked_at timestamptz);
            CREATE OR REPLACE FUNCTION public.bench_log() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO public.bench_started VALUES (OLD.created_at, OLD.locked_at); RETURN OLD; END $$;
            CREATE TRIGGER bench_log AFTER DELETE ON graphile_worker._private_jobs
              FOR EACH ROW EXECUTE FUNCTION public.bench_log();
        """)

    insert_one = PEER_INSERT_ONE

    def latencies(self, conn):
        return [r[0] for r in conn.execute(
            "SELECT extract(epoch FROM locked_at - created_at)::float8 FROM public.bench_started"
        )]

    def latency_done(self, conn, n):
        return conn.execute("SELECT count(*) FROM public.bench_started").fetchone()[0] >= n


def stop(procs):
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_once(engine, args, index, logdir):
    database = f"side_by_side_{engine.name.replace('-', '_')}_{index}_{os.getpid()}"
    result = {"engine": engine.name}
    with Scratch(args.database_url, database, args.postgres_tls) as scratch:
        engine.prepare(scratch.url)
        result["bulk_insert_per_s"] = engine.bulk_insert(scratch.url, args.jobs)
        with psycopg.connect(scratch.url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            conn.execute("VACUUM ANALYZE")
        time.sleep(0.5)
        wal0, xacts0 = counters(args.database_url, database)
        busy0, self0 = machine_busy_seconds(), self_cpu_seconds()
        log = open(os.path.join(logdir, f"{database}.log"), "w")
        started = time.time()
        procs = engine.start(scratch.url, log)
        with psycopg.connect(scratch.url, autocommit=True) as conn:
            deadline = time.time() + args.timeout
            while not engine.drained(conn):
                if time.time() > deadline:
                    raise RuntimeError(f"{engine.name} did not finish {args.jobs} jobs in {args.timeout} s")
                time.sleep(0.1)
            engine_cpu = sum(proc_cpu_seconds(p.pid) for p in procs)
            busy1, self1 = machine_busy_seconds(), self_cpu_seconds()
            # graphile-worker's last batched completions and its events.
            time.sleep(0.3)
            stop(procs)
            times = engine.completion_times(conn)
        log.close()
        if len(times) < args.jobs:
            raise RuntimeError(f"{engine.name}: {len(times)} completions seen for {args.jobs} jobs")
        wal1, xacts1 = counters(args.database_url, database)
        whole, steady = rates_from_completions(times[: args.jobs], started, args.jobs)
        machine = busy1 - busy0
        postgres = machine - engine_cpu - (self1 - self0)
        result.update(
            whole_run_per_s=whole,
            steady_per_s=steady,
            cpu_us_per_job=(engine_cpu + postgres) / args.jobs * 1e6,
            engine_cpu_us_per_job=engine_cpu / args.jobs * 1e6,
            postgres_cpu_us_per_job=postgres / args.jobs * 1e6,
            wal_bytes_per_job=(wal1 - wal0) / args.jobs,
            xacts_per_job=(xacts1 - xacts0) / args.jobs,
        )

        # Insert-to-start latency, open loop, with the engine idle.
        with psycopg.connect(scratch.url, autocommit=True) as conn:
            engine.latency_setup(conn)
            log = open(os.path.join(logdir, f"{database}-latency.log"), "w")
            procs = engine.start(scratch.url, log)
            engine.wait_ready()
            n, lag = open_loop_inserts(scratch.url, engine.insert_one, args.rate, args.seconds)
            deadline = time.time() + 30
            while not engine.latency_done(conn, n) and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(0.3)
            stop(procs)
            log.close()
            samples = sorted(v * 1e3 for v in engine.latencies(conn))
        if len(samples) < n:
            raise RuntimeError(f"{engine.name}: {len(samples)} of {n} latency jobs started")
        result.update(
            latency_p50_ms=percentile(samples, 0.5),
            latency_p99_ms=percentile(samples, 0.99),
            latency_max_ms=samples[-1],
            latency_send_lag_ms=lag * 1e3,
        )
    return result


FIGURES = [
    ("steady_per_s", "burn-down, steady (10% → 90% done), jobs/s", "higher"),
    ("whole_run_per_s", "burn-down, whole run from process start, jobs/s", "higher"),
    ("cpu_us_per_job", "CPU per job, PostgreSQL + engine, µs", "lower"),
    ("engine_cpu_us_per_job", "  of which the engine's processes, µs", "lower"),
    ("postgres_cpu_us_per_job", "  of which PostgreSQL (rest of the machine), µs", "lower"),
    ("wal_bytes_per_job", "WAL per job, bytes", "lower"),
    ("xacts_per_job", "transactions per job", "lower"),
    ("latency_p50_ms", "insert-to-start p50, ms", "lower"),
    ("latency_p99_ms", "insert-to-start p99, ms", "lower"),
    ("latency_max_ms", "insert-to-start max, ms", "lower"),
    ("bulk_insert_per_s", "bulk insert, jobs/s", "higher"),
]


def figure(value):
    """One decimal, or three significant digits below 1 (transactions per
    job are a few hundredths)."""
    if value != 0 and abs(value) < 1:
        return f"{value:.3g}"
    return f"{value:,.1f}"


def machine_name():
    model = "unknown CPU"
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return f"{model}, {os.cpu_count()} cores, {simd}, Linux {platform.release()}"


def report(results, pairs, args, versions, pg_version):
    lines = [
        "## Jobs: the `worker` binary against graphile-worker",
        "",
        f"- machine: {machine_name()}; PostgreSQL {pg_version} on loopback, one scratch database per run, "
        f"both engines {'with' if args.postgres_tls else 'without'} TLS to it",
        f"- ours: {versions['ours']}, "
        + (f"default configuration except {', '.join(args.ours_env)}, " if args.ours_env
           else "default configuration, ")
        + 
        "development mode (the `noop` kind registered), default telemetry (logs to a file, no OTLP endpoint)",
        f"- peer: {versions['peer']}",
        f"- {args.jobs:,} no-op jobs per run; {pairs} pairs, alternating which engine runs first; "
        f"latency open loop at {args.rate:g} jobs/s for {args.seconds:g} s",
        "",
        "| figure | ours (median) | peer (median) | ours/peer: median of pair ratios | spread (min–max) | better when |",
        "|---|---|---|---|---|---|",
    ]
    summary = {}
    for key, label, better in FIGURES:
        ours = [p[0][key] for p in results]
        peer = [p[1][key] for p in results]
        ratios = sorted(o / p if p else float("nan") for o, p in zip(ours, peer))
        med = statistics.median(ratios)
        summary[key] = {"ours": ours, "peer": peer, "ratios": ratios, "median_ratio": med}
        lines.append(
            f"| {label} | {figure(statistics.median(ours))} | {figure(statistics.median(peer))} | "
            f"{med:.2f}× | {ratios[0]:.2f}–{ratios[-1]:.2f} | {better} |"
        )
    return "\n".join(lines), summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--worker-bin", required=True)
    parser.add_argument("--peer-dir", required=True, help="folder with worker.mjs and node_modules")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="latency arrivals per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency run length")
    parser.add_argument("--peer-processes", type=int, default=4)
    parser.add_argument("--peer-concurrency", type=int, default=24)
    parser.add_argument("--peer-local-queue", type=int, default=500)
    parser.add_argument("--peer-batch-delay", type=int, default=0)
    parser.add_argument("--ours-env", action="append", default=[], metavar="WORKER_X=value",
                        help="override one of the worker's settings (tuning runs; the report says so)")
    parser.add_argument("--postgres-tls", action="store_true",
                        help="both engines connect with TLS (default: both without)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--only", choices=["ours", "peer"], help="run one engine (profiling)")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--logs", default=None, help="keep the engines' logs here")
    args = parser.parse_args()

    logdir = args.logs or tempfile.mkdtemp(prefix="side-by-side-logs-")
    os.makedirs(logdir, exist_ok=True)
    ours, peer = Ours(args), Peer(args)
    with psycopg.connect(args.database_url) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]
    versions = {"ours": ours.version(), "peer": peer.version()}
    results = []
    for pair in range(args.pairs):
        order = [ours, peer] if pair % 2 == 0 else [peer, ours]
        if args.only:
            order = [ours] if args.only == "ours" else [peer]
        done = {}
        for engine in order:
            print(f"pair {pair + 1}: {engine.name} ...", file=sys.stderr, flush=True)
            done[engine.name] = run_once(engine, args, pair, logdir)
            print(json.dumps(done[engine.name]), file=sys.stderr, flush=True)
        if not args.only:
            results.append((done["ours"], done["graphile-worker"]))
    shutil.rmtree(ours.workdir, ignore_errors=True)
    if args.only:
        return
    text, summary = report(results, args.pairs, args, versions, pg_version)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_name(), "postgres": pg_version, "versions": versions,
                       "runs": results, "summary": summary, "report": text}, f, indent=2)


if __name__ == "__main__":
    main()
