"""How fast ``tuner tune``'s search finds a good configuration, against grid and random search.

Replays a response surface recorded from real vLLM CPU canaries by ``record_surface.py``
(``--data``, default ``benchmarks/data/surface_cpu_3d.json``: max-num-seqs x
num-gpu-blocks-override x max-num-batched-tokens, each point measured on fresh canaries;
``surface_cpu.json`` is the older 2-knob one). A searcher that asks for a point gets one of
that point's recorded runs at random, so the restart-to-restart noise is the real one. SLO
and scoring are the tuner's own (``score_trial`` with the SLO of ``examples/tune-cpu.yaml``).

Searchers, 10 seeds each:

* ``tuner``: the tune search's own pieces as ``tuner tune`` runs them: the baseline first
  (max-num-seqs 128, max-num-batched-tokens 2048, the block count nearest the example's 32:
  it costs a trial), the KV bound from the baseline's KV capacity and the load
  (``tuner.tune.bound``), the Latin-hypercube initial design over the likely part
  (``initial_design``), then ``propose`` (the GP's asks, never a measured or ruled-out
  point), with the optimizer settings of ``examples/tune-cpu.yaml``. The knobs span the
  grid's range (log scale where the example's knob is); a proposal is measured at the nearest
  grid point (in the knob's scale), and "measured" means that grid point was. Early stopping
  is not replayed (the surface has no partial windows);
* ``grid``: vLLM auto_tune style nested loops, ascending (every grid point once);
* ``random``: the grid points in a random order (without replacement: a strong baseline).

Printed: what the surface is (grid, runs, load, the recording's noise figures); trials until a
configuration within 95% of the grid optimum (by its mean over the recorded runs) has been
measured (median over seeds, with the spread); the quality (true mean / optimum) of the config
each searcher would pick (best observed, feasible) at budgets 8, 12 and 16 (mean ± sd over
seeds); and the share of a trial spent on server start-up, from the recorded timings.

    python benchmarks/search_efficiency.py [--data benchmarks/data/surface_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import warnings
from collections.abc import Mapping
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.tune import (  # noqa: E402
    Measurement,
    Space,
    build_load_spec,
    load_tune_config,
    make_optimizer,
    score_trial,
)
from tuner.tune.bound import kv_bound  # noqa: E402
from tuner.tune.optimizer import initial_design, propose  # noqa: E402

SEEDS = range(10)
BUDGETS = (8, 12, 16)
MAX_TRIALS = 30
DATA = ROOT / "benchmarks" / "data" / "surface_cpu_3d.json"
BASELINE = {"max-num-seqs": 128, "num-gpu-blocks-override": 32, "max-num-batched-tokens": 2048}
Key = tuple[int, ...]


class SurfaceError(Exception):
    """A surface file this benchmark cannot replay (says which file and what is wrong)."""


def load_surface(path: Path, flag_knobs: Mapping[str, Any], partial: bool = False
                 ) -> tuple[dict[str, list[int]], dict[Key, list[dict[str, Any]]], dict[str, Any]]:
    """(grid by flag, runs by grid point, the file's data); SurfaceError when the file is not
    a complete recorded grid over knobs of the tune example (``partial``: points without a
    run are left out instead, for a preliminary look at a recording still under way)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SurfaceError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SurfaceError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("grid"), dict) \
            or not isinstance(data.get("trials"), list):
        raise SurfaceError(f"{path}: not a surface of record_surface.py (needs a 'grid' "
                           "mapping of flag -> values and a 'trials' list)")
    grid: dict[str, list[int]] = {}
    for flag, values in data["grid"].items():
        if flag not in flag_knobs:
            raise SurfaceError(f"{path}: grid axis {flag!r} is not a knob's flag of "
                               f"examples/tune-cpu.yaml ({', '.join(flag_knobs)})")
        if not isinstance(values, list) or len(values) < 2 \
                or not all(isinstance(v, int) for v in values):
            raise SurfaceError(f"{path}: grid axis {flag!r} needs two or more integer values")
        grid[flag] = sorted(values)
    if not grid:
        raise SurfaceError(f"{path}: the grid has no axis")
    runs: dict[Key, list[dict[str, Any]]] = {k: [] for k in product(*grid.values())}
    for i, t in enumerate(data["trials"]):
        flags = t.get("flags") if isinstance(t, dict) else None
        if not isinstance(flags, dict) or any(f not in flags for f in grid):
            raise SurfaceError(f"{path}: trial {i} has no flags for every grid axis "
                               f"({', '.join(grid)})")
        key = tuple(flags[f] for f in grid)
        if key not in runs:
            raise SurfaceError(f"{path}: trial {i} ran {dict(zip(grid, key, strict=True))}, "
                               "which is not a point of the grid")
        runs[key].append(t)
    missing = [k for k, v in runs.items() if not v]
    if missing and partial:
        runs = {k: v for k, v in runs.items() if v}
    elif missing:
        raise SurfaceError(
            f"{path}: {len(missing)} of {len(runs)} grid points have no run (e.g. "
            f"{dict(zip(grid, missing[0], strict=True))}): an incomplete surface; finish the "
            "recording (rerun record_surface.py) or pass a complete one")
    return grid, runs, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--initial-points", type=int, default=None,
                    help="override the example's optimizer.initial_points")
    ap.add_argument("--design", default=None, help="override optimizer.initial_design")
    ap.add_argument("--partial", action="store_true",
                    help="replay only the grid points that have runs (a preliminary look at an "
                    "incomplete recording; the figures are then not the full grid's)")
    args = ap.parse_args()
    os.environ.setdefault("TUNER_TINY_MODEL_DIR", "/unused")
    base_cfg = load_tune_config(ROOT / "examples" / "tune-cpu.yaml")
    flag_knobs = {k.flag: k for k in base_cfg.space.knobs}
    try:
        grid, runs, data = load_surface(args.data, flag_knobs, args.partial)
    except SurfaceError as exc:
        sys.exit(f"search_efficiency: {exc}")
    flags = list(grid)
    # the searched space: the example's knobs over the grid's range
    knobs = tuple(replace(flag_knobs[f], low=min(grid[f]), high=max(grid[f])) for f in flags)
    space = Space(knobs)
    over: dict[str, Any] = {"initial_points": args.initial_points,
                            "initial_design": args.design}
    opt_cfg = replace(base_cfg.optimizer, **{k: v for k, v in over.items() if v is not None})
    cfg = replace(base_cfg, space=space, optimizer=opt_cfg,
                  budget=replace(base_cfg.budget, trials=MAX_TRIALS))

    def ok_runs(key: Key) -> list[dict[str, Any]]:
        return [t for t in runs[key] if t["state"] == "ok" and t.get("objective")]

    truth: dict[Key, float] = {}
    for key, rs in runs.items():
        ok = ok_runs(key)
        truth[key] = statistics.fmean(t["objective"] for t in ok) if 2 * len(ok) >= len(rs) \
            else -1.0
    optimum_key = max(truth, key=lambda k: truth[k])
    optimum = truth[optimum_key]
    target = 0.95 * optimum
    near = [k for k, v in truth.items() if v >= target]

    def scale(f: str, v: float) -> float:
        return math.log(v) if flag_knobs[f].log else float(v)

    spans = {f: (scale(f, max(grid[f])) - scale(f, min(grid[f]))) or 1.0 for f in flags}
    keys = list(runs)
    scaled = np.array([[scale(f, g) / spans[f] for f, g in zip(flags, key, strict=True)]
                       for key in keys])
    snapped: dict[tuple[Any, ...], Key] = {}

    def snap(point: Mapping[str, Any]) -> Key:
        """The recorded point nearest ``point`` (each knob in its scale, over its range)."""
        raw = tuple(point[k.name] for k in knobs)
        if raw not in snapped:
            x = np.array([scale(f, v) / spans[f] for f, v in zip(flags, raw, strict=True)])
            snapped[raw] = keys[int(np.argmin(((scaled - x) ** 2).sum(axis=1)))]
        return snapped[raw]

    def as_point(key: Key) -> dict[str, Any]:
        return {k.name: v for k, v in zip(knobs, key, strict=True)}

    baseline = snap({k.name: BASELINE[k.flag] for k in knobs})

    def measure(key: Key, rng: np.random.Generator, reference: float | None
                ) -> tuple[float | None, float, bool]:
        t = runs[key][int(rng.integers(len(runs[key])))]
        m = t.get("measurement")
        meas = Measurement.from_json(m) if m and t["state"] in ("ok", "slo") else None
        state, value, loss, _ = score_trial(meas, cfg.objective, cfg.slo, reference)
        return value, loss, state == "ok"

    load = build_load_spec(data["load"])
    block_size = 128  # vLLM's CPU backend
    base_flags = {**data.get("flags", {}), **dict(zip(flags, baseline, strict=True))}
    blocks = base_flags.get("num-gpu-blocks-override")
    capacity = float(blocks) * block_size if blocks else math.nan
    bound = kv_bound(space, base_flags, capacity, block_size, load,
                     data.get("flags", {}).get("max-model-len"))

    History = list[tuple[Key, float | None, bool]]

    def tuner(seed: int) -> History:
        rng = np.random.default_rng(1000 + seed)
        c = replace(cfg, optimizer=replace(cfg.optimizer, seed=seed))
        opt = make_optimizer(c)
        ref, loss, ok = measure(baseline, rng, None)
        hist: History = [(baseline, ref, ok)]
        ref = ref if ref else None
        loss = -1.0 if ok else loss
        opt.tell(space.x(as_point(baseline)), loss)
        taken = {baseline}

        def allowed(p: Mapping[str, Any]) -> bool:
            return snap(p) not in taken and (bound is None or bound.allows(p))

        design = [p for p in initial_design(space, c.optimizer.initial_points,
                                            c.optimizer.initial_design, seed,
                                            within=bound.likely if bound else None)]
        while len(hist) < min(MAX_TRIALS, len(runs)):
            point = next((p for p in design if allowed(p)), None)
            if point is None:
                proposed = propose(opt, space, 1, allowed)
                if not proposed:
                    break
                point = space.point(proposed[0])
            key = snap(point)
            taken.add(key)
            value, loss, ok = measure(key, rng, ref)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.tell(space.x(as_point(key)), loss)
            hist.append((key, value, ok))
        return hist

    def grid_search(seed: int) -> History:
        rng = np.random.default_rng(1000 + seed)
        return [(k, *measure(k, rng, None)[::2]) for k in product(*grid.values()) if k in runs]

    def random_search(seed: int) -> History:
        rng = np.random.default_rng(1000 + seed)
        keys = [k for k in product(*grid.values()) if k in runs]
        return [(keys[i], *measure(keys[i], rng, None)[::2]) for i in rng.permutation(len(keys))]

    def trials_to_target(h: History) -> int | None:
        return next((i for i, (k, _, _) in enumerate(h, start=1) if truth[k] >= target), None)

    def picked_quality(h: History, budget: int) -> float:
        seen = [(v, k) for k, v, ok in h[:budget] if ok and v is not None]
        return max(0.0, truth[max(seen)[1]]) / optimum if seen else 0.0

    # -- what the surface is -----------------------------------------------------------------
    n_runs = [len(r) for r in runs.values()]
    print(f"surface: {args.data.name}: {data.get('what', 'no description recorded')}")
    full = math.prod(len(v) for v in grid.values())
    if len(runs) < full:
        print(f"  PARTIAL: only {len(runs)} of the grid's {full} points have runs; the figures "
              "below are over those points only (preliminary)")
    print("  grid: " + " x ".join(f"--{f} {grid[f]}" for f in flags)
          + f" = {len(runs)} points, {min(n_runs)}-{max(n_runs)} fresh-canary runs each "
          f"({sum(n_runs)} trials)")
    print(f"  load: {json.dumps(data['load'], sort_keys=True)}; fixed flags: "
          f"{json.dumps(data.get('flags', {}), sort_keys=True)}")
    noise = data.get("noise")
    if noise:
        one, across = noise["one_server"], noise["across_restarts"]
        print(f"  recorded noise (CV of output tok/s): one server {one.get('cv_median', 0):.1%} "
              f"median over {one['points']} points (max {one.get('cv_max', 0):.1%}); across "
              f"restarts {across.get('cv_median', 0):.1%} median over {across['points']} points "
              f"(p90 {across.get('cv_p90', 0):.1%})")
    feasible = sum(1 for v in truth.values() if v > 0)
    print(f"  optimum {optimum:,.0f} tok/s at {dict(zip(flags, optimum_key, strict=True))}; "
          f"95% target {target:,.0f}: {len(near)} of {len(runs)} points reach it; "
          f"{feasible} points meet the SLO in most runs (p99 TTFT <= {cfg.slo.ttft_p99_seconds}s)")
    print(f"  tuner's baseline {dict(zip(flags, baseline, strict=True))}: "
          f"{truth[baseline]:,.0f} tok/s ({truth[baseline] / optimum:.0%} of the optimum)")
    if bound is not None:
        for note in bound.notes:
            print(f"  KV bound: {note}")
    print(f"  optimizer: {cfg.optimizer}")
    print()

    # -- searchers ---------------------------------------------------------------------------
    results: dict[str, dict[str, Any]] = {}
    print(f"{'searcher':8}  {'trials to 95%: median [min..max] (reached)':44}  "
          + "  ".join(f"picked@{b:<2} mean ± sd" for b in BUDGETS))
    for name, fn in (("tuner", tuner), ("grid", grid_search), ("random", random_search)):
        hists = [fn(s) for s in SEEDS]
        cap = len(hists[0]) if name == "grid" else max(len(h) for h in hists)
        needs = [n if (n := trials_to_target(h)) is not None else cap + 1 for h in hists]
        reached = sum(1 for h in hists if trials_to_target(h) is not None)
        quals = {b: [picked_quality(h, b) for h in hists] for b in BUDGETS}
        results[name] = {"needs": needs, "quals": quals}
        cols = "  ".join(f"{statistics.fmean(q):6.1%} ± {statistics.pstdev(q):5.1%}  "
                         for q in quals.values())
        print(f"{name:8}  {statistics.median(needs):6.1f} [{min(needs):2}..{max(needs):2}] "
              f"sd {statistics.pstdev(needs):4.1f} ({reached:2}/{len(hists)} seeds){'':13}"
              f"  {cols}")
    print()
    t_med = statistics.median(results["tuner"]["needs"])
    g_med = statistics.median(results["grid"]["needs"])
    print(f"tuner needs {t_med:.1f} trials (median, baseline included) to reach 95% of the "
          f"optimum (target: at most 1/3 of the grid's): {t_med / len(runs):.2f} of the full "
          f"grid ({len(runs)} trials) and {t_med / g_med:.2f} of the {g_med:.0f} the grid search "
          f"needs to get there ({'met' if 3 * t_med <= min(g_med, len(runs)) else 'NOT met'} "
          f"against the stricter); random needs "
          f"{statistics.median(results['random']['needs']):.1f}")
    for b in BUDGETS:
        tq, rq = results["tuner"]["quals"][b], results["random"]["quals"][b]
        print(f"budget {b:2}: tuner {statistics.fmean(tq):.1%} ± {statistics.pstdev(tq):.1%} vs "
              f"random {statistics.fmean(rq):.1%} ± {statistics.pstdev(rq):.1%} of the optimum "
              f"({'better' if statistics.fmean(tq) > statistics.fmean(rq) else 'NOT better'}; "
              f"spread {'tighter' if statistics.pstdev(tq) < statistics.pstdev(rq) else 'NOT tighter'})")
    tn, rn = results["tuner"]["needs"], results["random"]["needs"]
    print(f"spread of trials-to-95% across seeds: tuner sd {statistics.pstdev(tn):.1f}, "
          f"random sd {statistics.pstdev(rn):.1f} "
          f"({'tighter' if statistics.pstdev(tn) < statistics.pstdev(rn) else 'NOT tighter'})")

    # -- where a trial's time goes -------------------------------------------------------------
    timed = [t["timings"] for t in data["trials"] if t.get("timings", {}).get("load_s")]
    if timed:
        total = sum(t["total_s"] for t in timed)
        start = sum(t["start_s"] for t in timed)
        starts = sorted(t["start_s"] for t in timed)
        print()
        print(f"start-up: {start / total:.0%} of the recorded trials' time ({len(timed)} trials: "
              f"start {statistics.median(starts):.0f} s median [{starts[0]:.0f}..{starts[-1]:.0f}]"
              f", load {statistics.median(t['load_s'] for t in timed):.0f} s, total "
              f"{statistics.median(t['total_s'] for t in timed):.0f} s per trial)")


if __name__ == "__main__":
    main()
