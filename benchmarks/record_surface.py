"""Record a response surface from real vLLM CPU canaries for ``search_efficiency.py``.

A grid over max-num-seqs x num-gpu-blocks-override (the CPU memory knob), each point measured
``--repeats`` times on a fresh canary (restart noise included), with exactly the tuner's trial
code (``tuner.tune.run_trial``: canary start, warm-up, load, scrape, signals, stop) and the load
of ``examples/tune-cpu.yaml``. Points are measured round-robin (all points once, then again)
so slow drift of the machine spreads over the grid. Every trial is appended to the JSON file
as it ends, so an interrupted recording keeps what it measured (rerun to continue).

    export TUNER_TINY_MODEL_DIR=$(python -m tests.support.tiny_model)
    flock /tmp/tuner-vllm.lock python benchmarks/record_surface.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.tune import (  # noqa: E402
    Space,
    Step,
    TrialContext,
    TrialLog,
    build_load_spec,
    load_tune_config,
    run_trial,
)

SEQS = (2, 8, 32, 128)
BLOCKS = (16, 28, 48)
DATA = ROOT / "benchmarks" / "data" / "surface_cpu.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args()
    if "TUNER_TINY_MODEL_DIR" not in os.environ:
        from tests.support.tiny_model import ensure_tiny_model

        os.environ["TUNER_TINY_MODEL_DIR"] = str(ensure_tiny_model())
    cfg = load_tune_config(ROOT / "examples" / "tune-cpu.yaml")
    knobs = {k.name: k for k in cfg.space.knobs}
    space = Space((knobs["max-num-seqs"], knobs["gpu-memory-utilization"]))
    flags = {k: v for k, v in cfg.launch.flags.items() if k != "max-num-seqs"}
    flags.pop("num-gpu-blocks-override", None)
    cfg = replace(cfg, space=space, launch=replace(cfg.launch, flags=flags))
    data = json.loads(args.out.read_text()) if args.out.exists() else {
        "grid": {"max-num-seqs": list(SEQS), "num-gpu-blocks-override": list(BLOCKS)},
        "load": {k: v for k, v in cfg.load.items()},
        "flags": flags,
        "trials": [],
    }
    done: dict[tuple[int, int], int] = {}
    for t in data["trials"]:
        key = (t["point"]["max-num-seqs"], t["point"]["gpu-memory-utilization"])
        done[key] = done.get(key, 0) + 1
    work = Path(tempfile.mkdtemp(prefix="tuner-surface-"))
    log = TrialLog(work)
    client = httpx.Client(trust_env=False)
    ctx = TrialContext(cfg, log.store, work / "logs", client, build_load_spec(cfg.load),
                       threading.Event())
    number = len(data["trials"])
    try:
        for rep in range(args.repeats):
            for seqs in SEQS:
                for blocks in BLOCKS:
                    if done.get((seqs, blocks), 0) > rep:
                        continue
                    point = {"max-num-seqs": seqs, "gpu-memory-utilization": blocks}
                    step = Step("search", point, {**flags, **space.flags(point)})
                    t0 = time.time()
                    trial = run_trial(ctx, number, step, reference=None)
                    assert trial is not None
                    number += 1
                    body = trial.to_json()
                    body["log_tail"] = body["log_tail"][-2000:]
                    data["trials"].append(body)
                    tmp = args.out.with_suffix(".tmp")
                    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                    tmp.replace(args.out)
                    print(f"{seqs:>4} seqs {blocks:>3} blocks rep {rep}: {trial.state:6} "
                          f"{trial.objective or 0:8.1f} tok/s  "
                          f"p99 ttft {trial.measurement.ttft_p99 if trial.measurement else 0:.2f}"
                          f"  preempt {trial.measurement.preemptions if trial.measurement else 0}"
                          f"  {time.time() - t0:.0f}s {trial.reason}", flush=True)
    finally:
        client.close()
        log.close()


if __name__ == "__main__":
    main()
