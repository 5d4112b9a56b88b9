"""Time evaluating every shipped rule once: tuner.promql over the store vs a real Prometheus.

Data: 24 hours at a 5-second scrape interval of one vLLM server and its 8 GPUs. The vLLM
series come from ``tests/support/history.py`` (the busy-day scenario: real names, labels and
bucket bounds) plus the remaining families a vLLM 0.32 CPU server exposes on /metrics (the
other latency and token histograms, every ``finished_reason``, HTTP handler metrics, Python
and process metrics), so the series count is that of a real exposition (~390 series,
~6.7M samples). The same points go into a ``tuner.store.Store`` and, via
``promtool tsdb create-blocks-from openmetrics``, into a real Prometheus 2.42 that loads
rules/*.yaml.

Measured:
* tuner: every rule of every group in rules/*.yaml evaluated once with ``Engine.instant`` at
  the last sample's time, recording-rule results appended to the store as the daemon would:
  with a fresh engine without cache (first run and median of ``--repeat`` runs), with a fresh
  ``Engine(cache=True)`` (rules over the same series share one fetch), and with one
  long-lived caching engine evaluating every 10 s (the daemon's steady state);
* Prometheus, its own rule evaluation: the sum over groups of ``evaluationTime`` from
  /api/v1/rules (= ``prometheus_rule_group_last_duration_seconds``), median of several
  evaluation cycles — the fair comparison;
* Prometheus over HTTP: the sum of /api/v1/query wall times for the same expressions at the
  same time (includes HTTP and JSON overhead).

Run: ``python benchmarks/rules_eval.py`` (needs prometheus and promtool; takes a few minutes).
Target: tuner within 3x of Prometheus's own rule evaluation.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.history import Scenario, build_points  # noqa: E402
from tests.support.prometheus import start_prometheus  # noqa: E402
from tuner.promql import Engine, parse_expr  # noqa: E402
from tuner.store import Store  # noqa: E402

Labels = tuple[tuple[str, str], ...]
STEP = 5.0
ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
       20.0, 40.0, 80.0)
REQ = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
       240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
HTTP = (0.1, 0.5, 1.0)


def _le(b: float) -> str:
    return "+Inf" if math.isinf(b) else f"{b:g}"


def extra_series(grid_ms: np.ndarray, base: Labels, rng: np.random.Generator
                 ) -> Iterator[tuple[str, Labels, np.ndarray]]:
    """The families of a vLLM 0.32 /metrics page that history.py does not generate."""
    n = len(grid_ms)

    def lab(*extra: tuple[str, str]) -> Labels:
        return tuple(sorted(base + extra))

    def counter(rate: float) -> np.ndarray:
        return np.cumsum(rng.poisson(rate * STEP, n).astype(float))

    def histogram(name: str, bounds: tuple[float, ...], rate: float,
                  extra: tuple[tuple[str, str], ...] = ()) -> Iterator[tuple[str, Labels,
                                                                                np.ndarray]]:
        count = counter(rate)
        fractions = np.linspace(0.05, 1.0, len(bounds) + 1) ** 0.5
        for b, f in zip((*bounds, math.inf), fractions, strict=True):
            yield f"{name}_bucket", lab(*extra, ("le", _le(b))), np.floor(count * f)
        yield f"{name}_count", lab(*extra), count
        yield f"{name}_sum", lab(*extra), count * 0.7

    yield from histogram("vllm:request_time_per_output_token_seconds", ITL, 3.0)
    for h in ("prefill_time", "decode_time", "inference_time"):
        yield from histogram(f"vllm:request_{h}_seconds", REQ, 3.0)
    yield from histogram("vllm:request_params_max_tokens", TOKENS, 3.0)
    yield from histogram("vllm:request_params_n", (1, 2, 5, 10, 20), 3.0)
    yield from histogram("vllm:iteration_tokens_total", TOKENS, 20.0)
    for reason in ("abort", "error", "repetition"):
        yield "vllm:request_success_total", lab(("finished_reason", reason)), counter(0.01)
    for reason in ("capacity", "deferred"):
        yield "vllm:num_requests_waiting_by_reason", lab(("reason", reason)), np.zeros(n)
    for state in ("awake", "weights_offloaded", "discard_all"):
        yield ("vllm:engine_sleep_state", lab(("sleep_state", state)),
               np.full(n, 1.0 if state == "awake" else 0.0))
    target = tuple(p for p in base if p[0] in ("job", "instance"))
    handlers = ("/v1/completions", "/v1/chat/completions", "/health", "/metrics")
    for h in handlers:
        for status in ("2xx", "4xx", "5xx"):
            yield ("http_requests_total",
                   tuple(sorted((*target, ("handler", h), ("method", "POST"),
                                 ("status", status)))),
                   counter(3.0 if status == "2xx" else 0.01))
        hl = (("handler", h), ("method", "POST"))
        yield from (
            (name, tuple(sorted(p for p in labels if p[0] not in ("model_name", "engine"))), v)
            for name, labels, v in histogram("http_request_duration_seconds", HTTP, 3.0, hl))
        for s in ("request", "response"):
            c = counter(3.0)
            yield f"http_{s}_size_bytes_count", tuple(sorted((*target, *hl))), c
            yield f"http_{s}_size_bytes_sum", tuple(sorted((*target, *hl))), c * 512
    for g in ("0", "1", "2"):
        for name in ("python_gc_objects_collected_total", "python_gc_objects_uncollectable_total",
                     "python_gc_collections_total"):
            yield name, tuple(sorted((*target, ("generation", g)))), counter(1.0)
    yield ("python_info", tuple(sorted((*target, ("implementation", "CPython"),
                                        ("major", "3"), ("minor", "11")))), np.ones(n))
    for name in ("process_virtual_memory_bytes", "process_resident_memory_bytes",
                 "process_open_fds", "process_max_fds"):
        yield name, target, 1e9 + rng.random(n) * 1e6
    yield "process_cpu_seconds_total", target, np.cumsum(np.full(n, 4.0))


def build(start: float, hours: float) -> dict[tuple[str, Labels], tuple[np.ndarray, np.ndarray]]:
    """All series as (timestamps ms, values)."""
    sc = Scenario(start=start, hours=hours, step=STEP, instance="127.0.0.1:8000")
    acc: dict[tuple[str, Labels], tuple[list[int], list[float]]] = {}
    for name, labels, ts, v in build_points(sc):
        pts = acc.setdefault((name, labels), ([], []))
        pts[0].append(ts)
        pts[1].append(v)
    series = {k: (np.array(t, dtype=np.int64), np.array(v)) for k, (t, v) in acc.items()}
    grid_ms = (sc.grid() * 1000).astype(np.int64)
    base = next(lab for (name, lab) in series if name == "vllm:num_requests_running")
    rng = np.random.default_rng(1)
    for name, labels, values in extra_series(grid_ms, base, rng):
        series[(name, labels)] = (grid_ms, values)
    up_labels = tuple(p for p in base if p[0] in ("job", "instance"))
    series[("up", up_labels)] = (grid_ms, np.ones(len(grid_ms)))
    return series


def write_openmetrics(path: Path, series: dict[tuple[str, Labels], tuple[np.ndarray, np.ndarray]]
                      ) -> int:
    n = 0
    with path.open("w") as f:
        for name in sorted({k[0] for k in series}):
            f.write(f"# TYPE {name} unknown\n")
            for (nm, labels), (ts, vals) in sorted(series.items()):
                if nm != name:
                    continue
                inner = ",".join(f'{k}="{v}"' for k, v in labels)
                head = f"{name}{{{inner}}} "
                f.write("".join(f"{head}{v!r} {t / 1000:.3f}\n"
                                for t, v in zip(ts.tolist(), vals.tolist(), strict=True)))
                n += len(ts)
        f.write("# EOF\n")
    return n


def rule_groups() -> list[tuple[str, list[dict[str, Any]]]]:
    groups = []
    for rf in sorted((REPO / "rules").glob("*.yaml")):
        for g in (yaml.safe_load(rf.read_text()) or {}).get("groups", []):
            groups.append((g["name"], g.get("rules", [])))
    return groups


def eval_rules(store: Store, ts: float, engine: Engine | None = None,
               cache: bool = False) -> tuple[float, int]:
    """Evaluate every rule once like the daemon would; returns (seconds, output series)."""
    engine = engine or Engine(store, cache=cache)
    out = 0
    t = time.perf_counter()
    for _, rules in rule_groups():
        for rule in rules:
            res = engine.instant(parse_expr(str(rule["expr"])), ts)
            out += len(res.vector)
            if "record" in rule and res.vector:
                store.append_points(
                    (rule["record"], tuple(sorted((k, v) for k, v in e.labels.items()
                                                  if k != "__name__")), round(ts * 1000),
                     e.value)
                    for e in res.vector)
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tuner-rules-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        end = math.floor(time.time() / STEP) * STEP - STEP
        start = end - args.hours * 3600 + STEP
        t = time.perf_counter()
        series = build(start, args.hours)
        n_samples = sum(len(ts) for ts, _ in series.values())
        print(f"data: {len(series)} series, {n_samples:,} samples "
              f"({args.hours:g}h at {STEP:g}s), built in {time.perf_counter() - t:.1f}s")

        t = time.perf_counter()
        store = Store(work / "store.db", retention=30 * 86400.0, max_bytes=50 * 1024**3)
        batch: list[tuple[str, Labels, int, float]] = []
        for (name, labels), (ts, vals) in series.items():
            batch.extend(zip([name] * len(ts), [labels] * len(ts), ts.tolist(), vals.tolist(),
                             strict=True))
            if len(batch) > 500_000:
                store.append_points(batch)
                batch = []
        store.append_points(batch)
        store.checkpoint()
        print(f"store: written in {time.perf_counter() - t:.1f}s, "
              f"{store.size_bytes() / 1e6:.0f} MB")

        t = time.perf_counter()
        om = work / "data.om.txt"
        write_openmetrics(om, series)
        data_dir = work / "prometheus" / "data"
        _promtool_backfill(om, data_dir)
        om.unlink()
        print(f"prometheus: backfilled in {time.perf_counter() - t:.1f}s")
        del series

        rule_files = sorted((REPO / "rules").glob("*.yaml"))
        prom = start_prometheus(work / "prometheus", rule_files=rule_files,
                                evaluation_interval="10s", data_dir=data_dir)
        try:
            cold = [eval_rules(store, end) for _ in range(args.repeat)]
            cold_cached = [eval_rules(store, end, cache=True) for _ in range(args.repeat)]
            # steady state: one long-lived caching engine evaluating every 10 s, as the daemon
            long_lived = Engine(store, cache=True)
            steady = [eval_rules(store, end - 10 * (args.repeat + 2 - i), long_lived)[0]
                      for i in range(args.repeat + 3)][3:]
            n_rules = sum(len(r) for _, r in rule_groups())
            print(f"rules: {n_rules} in {len(rule_groups())} groups; output series per run: "
                  f"{cold[0][1]}")
            tuner_first = cold[0][0]
            tuner_median = statistics.median(o[0] for o in cold)
            tuner_cached = statistics.median(o[0] for o in cold_cached)
            tuner_steady = statistics.median(steady)

            api_times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                for _, rules in rule_groups():
                    for rule in rules:
                        prom.query(str(rule["expr"]), end)
                api_times.append(time.perf_counter() - t)
            api = statistics.median(api_times)

            own = _prometheus_own(prom, cycles=max(3, args.repeat))
        finally:
            prom.stop()
            store.close()

        print(f"tuner.promql, no cache (first run):        {tuner_first * 1000:9.1f} ms")
        print(f"tuner.promql, no cache (median of {args.repeat}):     {tuner_median * 1000:9.1f} ms")
        print(f"tuner.promql, fresh caching engine:         {tuner_cached * 1000:9.1f} ms "
              "(windows over the same series share one fetch)")
        print(f"tuner.promql, long-lived caching engine:    {tuner_steady * 1000:9.1f} ms "
              "(daemon steady state, evaluations 10 s apart)")
        print(f"Prometheus own rule evaluation:             {own * 1000:9.1f} ms "
              "(sum of group evaluationTime, median of cycles)")
        print(f"Prometheus /api/v1/query, same exprs:       {api * 1000:9.1f} ms")
        print(f"ratio vs Prometheus rule evaluation: no cache {tuner_median / own:.2f}x, "
              f"fresh caching engine {tuner_cached / own:.2f}x, "
              f"steady state {tuner_steady / own:.2f}x (target <= 3x)")
        print(f"ratio vs Prometheus HTTP queries:    no cache {tuner_median / api:.2f}x, "
              f"fresh caching engine {tuner_cached / api:.2f}x")
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _promtool_backfill(om: Path, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q",
                           str(om), str(data_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"promtool failed: {proc.stderr}")


def _prometheus_own(prom: Any, cycles: int) -> float:
    """Sum over groups of the median ``evaluationTime`` across ``cycles`` evaluations."""
    seen: dict[str, str] = {}
    times: dict[str, list[float]] = {}
    deadline = time.monotonic() + 15 * (cycles + 2)
    while time.monotonic() < deadline:
        for g in prom.rule_groups():
            stamp = g.get("lastEvaluation", "")
            if stamp and not stamp.startswith("0001") and stamp != seen.get(g["name"]):
                seen[g["name"]] = stamp
                times.setdefault(g["name"], []).append(float(g["evaluationTime"]))
        if times and all(len(v) > cycles for v in times.values()):
            break
        time.sleep(0.5)
    if not times:
        raise SystemExit("Prometheus did not evaluate the rule groups")
    # the first evaluation after start-up is cold; leave it out when there are more
    return sum(statistics.median(v[1:] or v) for v in times.values())


if __name__ == "__main__":
    raise SystemExit(main())
