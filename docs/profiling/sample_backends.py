"""Samples what PostgreSQL's client backends are doing, every 2 ms for N
seconds, and prints the share of samples each (statement, wait event) was
active: a wall-clock profile of the database's side, which `perf` (CPU
only) cannot give. Usage: python sample_backends.py SECONDS (psycopg 3 in
a throwaway venv; the side-by-side benchmark's venv has it).
"""
import psycopg, time, collections, sys
conn = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
counts = collections.Counter(); n = 0
end = time.time() + float(sys.argv[1])
while time.time() < end:
    rows = conn.execute("select left(regexp_replace(query, '\\s+', ' ', 'g'), 40), state, coalesce(wait_event_type,'') || ':' || coalesce(wait_event,'') from pg_stat_activity where datname like 'jobs_bench%' or datname like 'bench%' or (datname <> 'postgres' and backend_type='client backend')").fetchall()
    n += 1
    for r in rows:
        if r[1] == 'active':
            counts[(r[0], r[2])] += 1
    time.sleep(0.002)
print("samples", n)
for k, v in counts.most_common(15):
    print(f"{v/n:6.2f}", k)
