"""What a subquery costs in tuner.promql's range queries (prints numbers).

Writes 24 h (plus an hour of lead-in) of 4 counters scraped every 5 s into a temporary store,
then runs 24 h range queries at a 60 s step, interleaved over ``--runs`` repeats: the reference
``rate(x[5m])`` and subqueries over it (``max_over_time(rate(x[5m])[1h:1m])``, a default-step
one, one with ``offset``, a nested one). Prints each query's median, min and max seconds and
its ratio to the reference measured in the same run (the subquery's grid points are evaluated
once per query, so the ratio should stay a small constant, not grow with the window).

    python benchmarks/promql_subquery.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.promql import Engine  # noqa: E402
from tuner.store import Store  # noqa: E402

T0 = 1_700_000_000
REFERENCE = "rate(x[5m])"
QUERIES = [
    REFERENCE,
    "max_over_time(rate(x[5m])[1h:1m])",
    "avg_over_time(sum(rate(x[5m]))[30m:])",
    "max_over_time(rate(x[5m])[1h:1m] offset 1h)",
    "max_over_time(avg_over_time(rate(x[5m])[10m:1m])[1h:5m])",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "bench.db", retention=3650 * 86400.0)
        store.append_points([("x", (("i", str(i)),), (T0 + t) * 1000, float(t))
                             for i in range(4) for t in range(0, 90_000, 5)])
        engine = Engine(store)
        times: dict[str, list[float]] = {q: [] for q in QUERIES}
        for _ in range(args.runs):
            for q in QUERIES:  # interleaved, so drift hits every query alike
                start = time.perf_counter()
                engine.range(q, T0 + 3600, T0 + 90_000, 60)
                times[q].append(time.perf_counter() - start)
        store.close()
    ref = statistics.median(times[REFERENCE])
    print(f"24 h range queries at a 60 s step over 4 series of 5 s samples, {args.runs} runs")
    print(f"{'query':60} {'median s':>9} {'min':>7} {'max':>7} {'x ref':>6}")
    for q, ts in times.items():
        med = statistics.median(ts)
        print(f"{q:60} {med:9.3f} {min(ts):7.3f} {max(ts):7.3f} {med / ref:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
