"""Noise of a tuning measurement on real vLLM CPU: the coefficient of variation (CV) of repeated
runs of one config, on one server and across restarts, unpinned against pinned, in one run.

* unpinned: what a search did before ``cpus:`` — vLLM's default OpenMP binding
  (``VLLM_CPU_OMP_THREADS_BIND=auto``) and no CPU affinity for the server or the load client.
* pinned: the search's ``cpus: auto`` plan (``tuner.tune.cpus.plan_cpus``): the canary's
  OpenMP threads and process on its core(s), this process (the load client) on the other(s).
* compute (``--modes`` to include it): only the canary's OpenMP (compute) threads on its
  core(s); its API server and engine loop free to run anywhere; the load client pinned.

The modes alternate canary by canary (A B B A A B ...) so a machine that gets busier or
quieter during the benchmark does not favour one. Each canary gets a warm-up and ``--runs``
load runs of ``--seconds`` s (output tok/s). Printed per mode:

* one server: the CV of a canary's runs (median over canaries, and the range);
* across restarts: the CV of the canaries' first runs (a fresh canary measured once, as a
  search measures a trial), with a bootstrap 90% interval over canaries;

and the pinned/unpinned ratio of both. The vLLM lock (/tmp/tuner-vllm.lock, or ``TUNER_VLLM_LOCK``) is taken per
canary, so other vLLM users interleave; SIGTERM and Ctrl-C stop the running canary.

    python benchmarks/tune_noise.py [--restarts 3] [--runs 3] [--seconds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.tiny_model import ensure_tiny_model  # noqa: E402
from tests.support.vllm import test_launch_spec, vllm_lock  # noqa: E402
from tuner.canary import LocalCanary, install_cleanup_handlers  # noqa: E402
from tuner.load import LengthDist, LoadSpec, run_load_sync, summarize  # noqa: E402
from tuner.tune.cpus import (  # noqa: E402
    CpuRequest,
    cpu_list,
    current_cpus,
    plan_cpus,
    probe_plan,
    set_process_cpus,
)


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation (sample stdev / mean); NaN for fewer than 2 values."""
    vals = [v for v in values if np.isfinite(v)]
    if len(vals) < 2 or statistics.fmean(vals) == 0:
        return float("nan")
    return statistics.stdev(vals) / statistics.fmean(vals)


def bootstrap_cv(values: Sequence[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 90% bootstrap interval of the CV of ``values`` (resampled with replacement)."""
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if arr.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    samples = rng.choice(arr, size=(draws, arr.size), replace=True)
    means = samples.mean(axis=1)
    cvs = samples.std(axis=1, ddof=1) / np.where(means == 0, np.nan, means)
    lo, hi = np.nanpercentile(cvs, [5, 95])
    return float(lo), float(hi)


def measure_canary(model: Path, log: Path, mode: str, spec: LoadSpec, runs: int,
                   canary_cores: tuple[int, ...], load_cores: tuple[int, ...]) -> list[float]:
    """Start one canary in ``mode``, warm it up, and return ``runs`` output tok/s."""
    launch = test_launch_spec(model, env={"VLLM_CPU_OMP_THREADS_BIND": "auto"})
    pinned = mode != "unpinned"
    if pinned:
        launch = replace(launch, cpus=canary_cores if mode == "pinned" else (),
                         env={**launch.env, "VLLM_CPU_OMP_THREADS_BIND": cpu_list(canary_cores)})
    canary = LocalCanary(launch, log, health_timeout=900)
    before = current_cpus()
    with vllm_lock():
        try:
            handle = canary.start()
            if pinned:
                error = set_process_cpus(load_cores)
                if error:
                    print(f"  note: {error}", flush=True)
            warm = replace(spec, duration=min(spec.duration, 3.0), warmup_requests=0)
            run_load_sync(handle.url, launch.served_model_name or launch.model, warm)
            out = []
            for _ in range(runs):
                result = run_load_sync(handle.url, launch.served_model_name or launch.model, spec)
                out.append(summarize(result).output_tok_per_s)
            return out
        finally:
            set_process_cpus(before)
            canary.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restarts", type=int, default=3, help="canaries per mode (default 3)")
    ap.add_argument("--runs", type=int, default=3, help="load runs per canary (default 3)")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per run (default 8)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--modes", default="unpinned,pinned",
                    help="comma-separated, from unpinned, pinned, compute (default: the first two)")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"unpinned", "pinned", "compute"} or "unpinned" not in modes:
        ap.error("--modes: a list from unpinned, pinned, compute that includes unpinned")
    install_cleanup_handlers()  # SIGTERM / Ctrl-C stop the running canary
    model = ensure_tiny_model()
    tmp = Path(tempfile.mkdtemp(prefix="tune-noise-"))
    plan = probe_plan(plan_cpus(CpuRequest(), current_cpus()))
    print(f"CPUs available: {cpu_list(current_cpus())}; {plan.describe()}", flush=True)
    if not plan.pinned:
        print("pinning is impossible here, so pinned runs equal unpinned ones", flush=True)
    spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=128),
                    output_tokens=LengthDist("fixed", mean=64), concurrency=args.concurrency,
                    duration=args.seconds, warmup_requests=0, seed=7)
    runs: dict[str, list[list[float]]] = {m: [] for m in modes}
    order: list[str] = []
    for i in range(args.restarts):  # A B B A A B ... (rotated for three modes)
        order += modes if i % 2 == 0 else modes[::-1]
    t0 = time.monotonic()
    for n, mode in enumerate(order):
        values = measure_canary(model, tmp / f"{n:02d}-{mode}.log", mode, spec,
                                args.runs, plan.canary_cores(0), plan.load)
        runs[mode].append(values)
        print(f"  canary {n + 1}/{len(order)} {mode:>8}: "
              + " ".join(f"{v:7.1f}" for v in values) + " tok/s", flush=True)
    print(f"\n{len(order)} canaries, {args.runs} runs of {args.seconds:g} s each, concurrency "
          f"{args.concurrency}, 128 prompt / 64 output tokens; {time.monotonic() - t0:.0f} s")
    figures: dict[str, dict[str, object]] = {}
    print(f"{'mode':>8} {'tok/s median':>12} {'CV one server':>24} "
          f"{'CV across restarts':>30}")
    for mode, per_canary in runs.items():
        within = [cv(v) for v in per_canary]
        firsts = [v[0] for v in per_canary]
        across = cv(firsts)
        lo, hi = bootstrap_cv(firsts)
        med = statistics.median([x for v in per_canary for x in v])
        figures[mode] = {"runs": per_canary, "cv_one_server_median": statistics.median(within),
                         "cv_one_server_range": [min(within), max(within)],
                         "cv_across_restarts": across, "cv_across_restarts_90": [lo, hi],
                         "median_tok_s": med}
        print(f"{mode:>8} {med:12.1f} {statistics.median(within):9.1%} "
              f"({min(within):.1%}..{max(within):.1%}) {across:12.1%} "
              f"(90% bootstrap {lo:.1%}..{hi:.1%})")
    u = figures["unpinned"]
    for mode in modes[1:]:
        p = figures[mode]
        r1 = float(p["cv_one_server_median"]) / float(u["cv_one_server_median"])  # type: ignore[arg-type]
        r2 = float(p["cv_across_restarts"]) / float(u["cv_across_restarts"])  # type: ignore[arg-type]
        r3 = float(p["median_tok_s"]) / float(u["median_tok_s"])  # type: ignore[arg-type]
        print(f"{mode}/unpinned: CV one server {r1:.2f}x, CV across restarts {r2:.2f}x "
              f"(< 1: less noise); median tok/s {r3:.2f}x")
    figures["plan"] = {"describe": plan.describe(), "cpus": list(current_cpus())}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
