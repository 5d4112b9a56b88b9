"""Canary start-up time and load-client throughput on real vLLM CPU (prints numbers).

1. Start-up to /health of the tiny model with an empty compile cache (a fresh
   VLLM_CACHE_ROOT) and with the warm one in .cache/vllm, ``--starts`` times each.
2. On the warm server (max-num-seqs 128, the CPU default): output tok/s of tuner.load at
   concurrency 1, 16 and 64 (256 prompt / 128 output tokens, ``--runs`` runs of
   ``--seconds`` s each; median, min and max), TTFT/ITL p99 alongside.
3. On a ``--num-gpu-blocks-override 24`` server with max-num-seqs 64: preemptions under 32
   concurrent 256+512-token requests (64 requests).

    flock /tmp/tuner-vllm.lock python benchmarks/canary_load.py [--runs 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.tiny_model import ensure_tiny_model  # noqa: E402
from tests.support.vllm import PREEMPTING_FLAGS, test_launch_spec  # noqa: E402
from tuner.canary import LocalCanary, install_cleanup_handlers  # noqa: E402
from tuner.exposition import parse_exposition  # noqa: E402
from tuner.load import LengthDist, LoadSpec, run_load_sync, summarize  # noqa: E402


def metric(url: str, name: str) -> float:
    text = httpx.get(url, timeout=10, trust_env=False).text
    return sum(s.value for s in parse_exposition(text).samples if s.name == name)


CORES = "0"


def start(model: Path, log: Path, flags: dict[str, object] | None = None,
          env: dict[str, str] | None = None) -> tuple[LocalCanary, float]:
    canary = LocalCanary(test_launch_spec(model, flags, cores=CORES, env=env), log,
                         health_timeout=600)
    t0 = time.monotonic()
    canary.start()
    return canary, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--starts", type=int, default=1)
    ap.add_argument("--startup-only", action="store_true",
                    help="only the start-up figures (cold/warm cache, executor backends)")
    ap.add_argument("--cores", default="0", help="VLLM_CPU_OMP_THREADS_BIND (default 0: one "
                    "OpenMP thread; '0-1' spins two threads, slow when the machine is busy)")
    args = ap.parse_args()
    install_cleanup_handlers()  # SIGTERM/Ctrl-C: stop the vLLM servers first
    global CORES
    CORES = args.cores
    model = ensure_tiny_model()
    tmp = Path(tempfile.mkdtemp(prefix="canary-bench-"))

    cold, warm, uni = [], [], []
    for i in range(args.starts):  # interleaved, so the machine's load spreads over all three
        c, t = start(model, tmp / f"cold{i}.log", env={"VLLM_CACHE_ROOT": str(tmp / f"c{i}")})
        c.stop()
        cold.append(t)
        c, t = start(model, tmp / f"warm{i}.log")
        c.stop()
        warm.append(t)
        # the worker in the engine-core process (what vLLM does for one GPU): one process
        # fewer to spawn and import torch into
        c, t = start(model, tmp / f"uni{i}.log", flags={"distributed-executor-backend": "uni"})
        c.stop()
        uni.append(t)

    def fmt(ts: list[float]) -> str:
        return f"{statistics.median(ts):.1f} s [{min(ts):.1f}..{max(ts):.1f}]"

    print(f"start-up to /health (median [min..max] of {args.starts}): cold compile cache "
          f"{fmt(cold)}, warm {fmt(warm)}, warm with --distributed-executor-backend uni "
          f"{fmt(uni)} ({statistics.median(uni) / statistics.median(warm):.2f}x warm)")
    if args.startup_only:
        return

    canary, _ = start(model, tmp / "load.log")
    assert canary.handle is not None
    try:
        print(f"OMP threads bound to {CORES}; client CPU per output token below")
        print(f"{'concurrency':>11} {'tok/s median':>12} {'min':>7} {'max':>7} "
              f"{'TTFT p99':>9} {'ITL p99':>8} {'errors':>6} {'client us/tok':>13}")
        for conc in (1, 16, 64):
            rates, ttft, itl, errors, cpu_us = [], [], [], 0, []
            for run in range(args.runs):
                spec = LoadSpec(LengthDist("fixed", mean=256), LengthDist("fixed", mean=128),
                                concurrency=conc, duration=args.seconds,
                                warmup_requests=conc if run == 0 else 0, seed=run)
                c0 = time.process_time()
                s = summarize(run_load_sync(canary.handle.url, "tiny-llama", spec))
                cpu_us.append(1e6 * (time.process_time() - c0) / max(1, s.output_tokens))
                rates.append(s.output_tok_per_s)
                ttft.append(s.ttft_p99)
                itl.append(s.itl_p99)
                errors += s.errors
            print(f"{conc:>11} {statistics.median(rates):>12.0f} {min(rates):>7.0f} "
                  f"{max(rates):>7.0f} {statistics.median(ttft):>8.3f}s "
                  f"{statistics.median(itl):>7.3f}s {errors:>6} "
                  f"{statistics.median(cpu_us):>13.0f}")
    finally:
        canary.stop()

    canary, _ = start(model, tmp / "preempt.log", flags=dict(PREEMPTING_FLAGS))
    assert canary.handle is not None
    try:
        before = metric(canary.handle.metrics_url, "vllm:num_preemptions_total")
        spec = LoadSpec(LengthDist("fixed", mean=256), LengthDist("fixed", mean=512),
                        concurrency=32, duration=300, max_requests=64)
        s = summarize(run_load_sync(canary.handle.url, "tiny-llama", spec))
        pre = metric(canary.handle.metrics_url, "vllm:num_preemptions_total") - before
        print(f"preempting server (24 blocks, max-num-seqs 64): {pre:.0f} preemptions for "
              f"{s.requests} requests at concurrency 32 (256 in / 512 out), "
              f"{s.output_tok_per_s:.0f} output tok/s, {s.errors} errors")
    finally:
        canary.stop()


if __name__ == "__main__":
    main()
