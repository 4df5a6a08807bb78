"""numpy's side of `numerics bench`: the same work, the same sizes, printed
as one JSON object. Threads are set by the caller (OPENBLAS_NUM_THREADS).

Window statistics: count, mean, population variance, min, max, the 0.5,
0.95 and 0.99 quantiles (numpy's default linear method), the least-squares
trend (slope, intercept, r^2) against the index, and the positions with
|z| > 3. (The Rust side also computes an EWMA, which numpy has no
vectorised form for; it is left out here, to numpy's advantage.)
"""

import json
import sys
import time

import numpy as np


def best_of(reps, fn):
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def median_of(reps, fn):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def window_statistics(values, x):
    n = values.size
    mean = values.mean()
    dev = values - mean
    var = np.dot(dev, dev) / n
    lo, hi = values.min(), values.max()
    q = np.quantile(values, [0.5, 0.95, 0.99])
    dx = x - x.mean()
    sxx = np.dot(dx, dx)
    sxy = np.dot(dx, dev)
    slope = sxy / sxx
    intercept = mean - slope * x.mean()
    r2 = sxy * sxy / (sxx * np.dot(dev, dev))
    flags = np.flatnonzero(np.abs(dev) > 3.0 * np.sqrt(var))
    return n, mean, var, lo, hi, q, slope, intercept, r2, flags


def main():
    sizes = [int(s) for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else [1024, 2048]
    window = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    rng = np.random.default_rng(7)
    out = {"numpy": np.__version__, "matmul_gflops": {}}
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        a @ b  # warm up
        t = best_of(10 if n <= 1024 else 4, lambda: a @ b)
        out["matmul_gflops"][str(n)] = 2.0 * n**3 / t / 1e9
    values = rng.standard_normal(window) * 3.0 + 20.0
    x = np.arange(window, dtype=np.float64)
    window_statistics(values, x)
    out["window_stats_ms"] = median_of(21, lambda: window_statistics(values, x)) * 1e3
    # The anomaly model's forward pass: 8 -> 16 relu -> 1 sigmoid.
    w1 = rng.standard_normal((8, 16), dtype=np.float32)
    b1 = rng.standard_normal(16, dtype=np.float32)
    w2 = rng.standard_normal((16, 1), dtype=np.float32)
    b2 = np.float32(0.1)

    def forward(x):
        h = np.maximum(x @ w1 + b1, 0.0)
        return 1.0 / (1.0 + np.exp(-(h @ w2 + b2)))

    out["forward_ns_per_row"] = {}
    for rows in (1, 64, 1024):
        x = rng.standard_normal((rows, 8), dtype=np.float32)
        forward(x)
        reps = max(200, 200_000 // rows)
        t = median_of(7, lambda: [forward(x) for _ in range(reps)])
        out["forward_ns_per_row"][str(rows)] = t / reps / rows * 1e9
    print(json.dumps(out))


if __name__ == "__main__":
    main()
