"""How fast ``tuner tune`` finds a good configuration, against grid and random search.

Replays a response surface recorded once from real vLLM CPU canaries
(``benchmarks/data/surface_cpu.json``, written by ``record_surface.py``: a grid of
max-num-seqs x num-gpu-blocks-override, each point measured on fresh canaries several times).
A searcher that asks for a point gets one of that point's recorded runs at random, so the
restart-to-restart noise is the real one. SLO and scoring are the tuner's own
(``score_trial`` with the SLO of ``examples/tune-cpu.yaml``).

Searchers, 10 seeds each, budget 16 trials:

* ``tuner``: ``skopt.Optimizer`` as ``make_optimizer`` builds it from ``examples/tune-cpu.yaml``
  (GP), over the grid (one integer knob per axis, over the grid indices; max-num-seqs was
  recorded on a log-spaced grid, so its index is its log scale). It may ask for a point again
  (a re-measurement): that costs a trial, as it would in a real search;
* ``grid``: vLLM auto_tune style nested loops, ascending (every grid point once, then done);
* ``random``: the grid points in a random order (without replacement: a strong baseline).

Printed: trials needed until a configuration within 95% of the grid optimum (by its mean over
the recorded runs) has been measured; the quality (true mean / grid optimum) of the config each
searcher would pick (best *observed*, feasible) at budgets 8, 12 and 16; and the tuner's own
time per trial outside server start, load and server stop, as a share of a trial, from the
recorded trials' timings plus ask/tell and SQLite persistence measured here.

    python benchmarks/search_efficiency.py [--data benchmarks/data/surface_cpu.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.tune import (  # noqa: E402
    Measurement,
    Space,
    Trial,
    TrialLog,
    load_tune_config,
    make_optimizer,
    score_trial,
)

SEEDS = range(10)
BUDGETS = (8, 12, 16)
MAX_BUDGET = 16


def load_surface(path: Path) -> tuple[dict[tuple[int, int], list[dict[str, Any]]], Any]:
    import json

    data = json.loads(path.read_text())
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for t in data["trials"]:
        p = t["point"]
        runs.setdefault((p["max-num-seqs"], p["gpu-memory-utilization"]), []).append(t)
    return runs, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "surface_cpu.json")
    ap.add_argument("--initial-points", type=int, default=None,
                    help="override the example's optimizer.initial_points")
    ap.add_argument("--acq", default=None, help="override optimizer.acq_func (EI, PI, LCB, ...)")
    ap.add_argument("--estimator", default=None, help="override optimizer.estimator (GP, RF, ET)")
    args = ap.parse_args()
    os.environ.setdefault("TUNER_TINY_MODEL_DIR", "/unused")
    cfg = load_tune_config(ROOT / "examples" / "tune-cpu.yaml")
    runs, data = load_surface(args.data)
    seqs = sorted({k[0] for k in runs})
    blocks = sorted({k[1] for k in runs})
    # The searched space is the recorded grid: one integer knob per grid axis, over the grid's
    # indices (max-num-seqs was recorded on a log-spaced grid, so its index is its log scale).
    knobs = {k.name: k for k in cfg.space.knobs}
    space = Space((
        replace(knobs["max-num-seqs"], low=0, high=len(seqs) - 1, log=False),
        replace(knobs["gpu-memory-utilization"], low=0, high=len(blocks) - 1, log=False),
    ))
    cfg = replace(cfg, space=space, budget=replace(cfg.budget, trials=MAX_BUDGET))
    over = {k: v for k, v in (("initial_points", args.initial_points), ("acq_func", args.acq),
                              ("estimator", args.estimator)) if v is not None}
    cfg = replace(cfg, optimizer=replace(cfg.optimizer, **over))

    def measurement(t: dict[str, Any]) -> Measurement | None:
        m = t.get("measurement")
        return Measurement.from_json(m) if m and t["state"] in ("ok", "slo") else None

    # true value of a point: mean objective over its runs; feasible if most runs met the SLO
    truth: dict[tuple[int, int], float] = {}
    for key, rs in runs.items():
        ok = [t for t in rs if t["state"] == "ok"]
        truth[key] = statistics.fmean(t["objective"] for t in ok) if 2 * len(ok) >= len(rs) else -1
    optimum = max(truth.values())
    target = 0.95 * optimum
    reference = statistics.median(v for v in truth.values() if v > 0)

    def snap(point: dict[str, Any]) -> tuple[int, int]:
        return seqs[point["max-num-seqs"]], blocks[point["gpu-memory-utilization"]]

    def measure(key: tuple[int, int], rng: np.random.Generator) -> tuple[float | None, float, bool]:
        t = runs[key][int(rng.integers(len(runs[key])))]
        m = measurement(t)
        state, value, loss, _ = score_trial(m, cfg.objective, cfg.slo, reference)
        return value, loss, state == "ok"

    ask_tell_s: list[float] = []

    def search(kind: str, seed: int) -> list[tuple[tuple[int, int], float | None, bool]]:
        rng = np.random.default_rng(1000 + seed)
        out = []
        if kind == "grid":
            for key in [(s, b) for s in seqs for b in blocks]:
                value, _, ok = measure(key, rng)
                out.append((key, value, ok))
            return out
        if kind == "random":  # uniform over the grid, without replacement
            keys = [(s, b) for s in seqs for b in blocks]
            for i in rng.permutation(len(keys)):
                value, _, ok = measure(keys[i], rng)
                out.append((keys[i], value, ok))
            return out
        opt = make_optimizer(replace(cfg, optimizer=replace(cfg.optimizer, seed=seed)))
        for _ in range(MAX_BUDGET):
            t0 = time.perf_counter()
            x = opt.ask()
            dt = time.perf_counter() - t0
            key = snap(space.point(x))
            value, loss, ok = measure(key, rng)
            t0 = time.perf_counter()
            opt.tell(x, loss)
            ask_tell_s.append(dt + time.perf_counter() - t0)
            out.append((key, value, ok))
        return out

    def trials_to_target(history: list[tuple[tuple[int, int], float | None, bool]]) -> int | None:
        for i, (key, _, _) in enumerate(history, start=1):
            if truth[key] >= target:
                return i
        return None

    def picked_quality(history: list[tuple[tuple[int, int], float | None, bool]],
                       budget: int) -> float:
        seen = [(v, key) for key, v, ok in history[:budget] if ok and v is not None]
        if not seen:
            return 0.0
        _, key = max(seen)
        return max(0.0, truth[key]) / optimum

    print(f"surface: {args.data.name}: {len(runs)} grid points x "
          f"{statistics.fmean(len(r) for r in runs.values()):.1f} runs "
          f"({len(data['trials'])} real vLLM CPU trials)")
    print(f"optimizer: {cfg.optimizer}")
    print(f"grid optimum {optimum:,.0f} tok/s at {max(truth, key=lambda k: truth[k])} "
          f"(max-num-seqs, blocks); 95% target {target:,.0f}; "
          f"SLO p99 TTFT <= {cfg.slo.ttft_p99_seconds}s, p99 ITL <= {cfg.slo.itl_p99_seconds}s")
    spreads = [statistics.stdev([t["objective"] for t in r if t.get("objective")]) /
               statistics.fmean([t["objective"] for t in r if t.get("objective")])
               for r in runs.values() if sum(1 for t in r if t.get("objective")) > 1]
    if spreads:
        print(f"restart noise: median relative sd between runs of a point "
              f"{statistics.median(spreads) * 100:.0f}% (max {max(spreads) * 100:.0f}%)")
    print()
    print(f"{'searcher':8}  {'trials to 95% (median, mean, reached)':38}  "
          + "  ".join(f"picked@{b:<2} (mean±sd)" for b in BUDGETS))
    results: dict[str, dict[str, Any]] = {}
    for kind in ("tuner", "grid", "random"):
        hists = [search(kind, s) for s in SEEDS]
        needs = [trials_to_target(h) for h in hists]
        reached = [n for n in needs if n is not None]
        med = statistics.median([n if n is not None else MAX_BUDGET + 1 for n in needs])
        mean = statistics.fmean([n if n is not None else MAX_BUDGET + 1 for n in needs])
        quals = {b: [picked_quality(h, b) for h in hists] for b in BUDGETS}
        results[kind] = {"median": med, "quals": quals}
        cols = "  ".join(
            f"{statistics.fmean(q) * 100:6.1f}% ± {statistics.pstdev(q) * 100:4.1f}%    "
            for q in quals.values()
        )
        print(f"{kind:8}  {med:6.1f} {mean:6.1f}  {len(reached):2}/{len(needs)} seeds"
              f"{'':17}  {cols}")
    grid_n = len(runs)
    print()
    print(f"tuner needs {results['tuner']['median']:.1f} trials (median) vs the grid's "
          f"{grid_n}: {results['tuner']['median'] / grid_n:.2f} of the grid "
          f"(target <= 0.33); grid needs {results['grid']['median']:.1f}")
    for b in BUDGETS:
        t = statistics.fmean(results["tuner"]["quals"][b])
        r = statistics.fmean(results["random"]["quals"][b])
        print(f"budget {b:2}: tuner {t * 100:.1f}% vs random {r * 100:.1f}% of the optimum "
              f"({'better' if t > r else 'not better'})")

    # -- the tuner's own time per trial ---------------------------------------------------
    timed = [t["timings"] for t in data["trials"] if t["timings"].get("load_s")]
    total = statistics.fmean(t["total_s"] for t in timed)
    start = statistics.fmean(t["start_s"] for t in timed)
    load = statistics.fmean(t["load_s"] for t in timed)
    stop = statistics.fmean(t.get("stop_s", 0.0) for t in timed)
    own_recorded = statistics.fmean(
        t["total_s"] - t["start_s"] - t["load_s"] - t.get("stop_s", 0.0) for t in timed
    )
    with tempfile.TemporaryDirectory() as tmp:
        log = TrialLog(Path(tmp))
        body = data["trials"][0]
        t0 = time.perf_counter()
        for i in range(50):
            log.put(Trial.from_json({**body, "number": i}))
        persist = (time.perf_counter() - t0) / 50
        log.close()
    ask_tell = statistics.fmean(ask_tell_s)
    own = own_recorded + ask_tell + persist
    print()
    print(f"per trial (mean of {len(timed)} recorded trials): total {total:.1f}s = server start "
          f"{start:.1f}s + load {load:.1f}s + server stop {stop:.1f}s + tuner {own_recorded:.2f}s "
          "(scrape, signals, scoring)")
    print(f"plus ask+tell {ask_tell * 1000:.0f} ms (GP, up to {MAX_BUDGET} points) and "
          f"persisting {persist * 1000:.1f} ms")
    print(f"tuner's own time: {own:.2f}s per trial = {own / (total + ask_tell + persist) * 100:.1f}%"
          " of a trial (target < 5%)")


if __name__ == "__main__":
    main()
