"""Benchmark ``tuner suggest --since 24h``: wall time and peak memory.

1. Single server: a store holding 24 h at 5 s of one vLLM server and 8 GPUs (about 3 million
   samples, the synthetic day of tests/support/history.py: quiet night, busy day, preemption
   storm 14:00-16:00). ``tuner suggest`` runs as a separate process so its peak RSS is its
   own. Reference measured in the same run: reading every sample of the window out of the
   store once (``Store.select`` on all series), the I/O floor any analysis pays.
   Target: under 5 s and 500 MB on 2 cores.
2. Fleet: a real Prometheus 2.42 holding 24 h of 50 vLLM instances (one GPU each, 2-minute
   resolution, backfilled with promtool one instance at a time), queried with
   ``tuner suggest --prometheus URL``. Reference: the same query load's share spent inside
   Prometheus is not separable, so the figure printed is wall time per instance.

Usage: ``python benchmarks/suggest.py [--skip-fleet] [--instances 50] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.history import Scenario, build_points, build_store, day_start  # noqa: E402
from tuner.store import Matcher, Store  # noqa: E402

# Runs the CLI like ``python -m tuner`` and reports the process's own peak RSS (VmHWM, which
# exec resets; ru_maxrss would include the forking parent's pages).
_WRAPPER = (
    "import sys\n"
    "from tuner.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "sys.stderr.write(f'VMHWM_KB {hwm}\\n')\n"
    "sys.exit(rc)\n"
)


def run_cli(args: list[str]) -> tuple[float, float, dict]:
    """Run the ``tuner`` CLI with ARGS; return (wall seconds, peak RSS MiB, parsed JSON)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"tuner {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    hwm = next(int(line.split()[1]) for line in proc.stderr.splitlines()
               if line.startswith("VMHWM_KB"))
    return wall, hwm / 1024.0, json.loads(proc.stdout)


def single(workdir: Path) -> None:
    start = day_start(time.time())
    sc = Scenario(start=start, step=5.0, gpus=8)
    db = workdir / "single.db"
    t0 = time.perf_counter()
    if not db.exists():
        build_store(db, sc).close()
    with Store(db, read_only=True) as store:
        samples = store.sample_count()
    print(f"single server: store of {samples:,} samples (24h at 5s, 1 vLLM + 8 GPUs), "
          f"built in {time.perf_counter() - t0:.1f}s, {db.stat().st_size / 2**20:.0f} MiB")

    cfg = workdir / "tuner.yaml"
    cfg.write_text(
        f"store: {{path: {db}, retention: 30d}}\n"
        "launch: {max-num-seqs: 256, max-model-len: 32768, max-num-batched-tokens: 2048}\n"
        "cost: {dollars_per_hour: 8}\n")
    # reference: read every sample of the window once
    with Store(db, read_only=True) as store:
        t0 = time.perf_counter()
        n = sum(len(s.values) for s in store.select(
            [Matcher("__name__", "=~", ".+")], int(sc.start * 1000), int(sc.end * 1000)))
        ref = time.perf_counter() - t0
    print(f"  reference: read all {n:,} samples of the window in {ref:.2f}s")
    walls = []
    for _ in range(3):
        wall, rss, report = run_cli(["suggest", "--config", str(cfg), "--since", "24h",
                                     "--until", str(sc.end), "--format", "json"])
        walls.append(wall)
        print(f"  tuner suggest --since 24h: {wall:.2f}s wall, peak RSS {rss:.0f} MiB")
    med = sorted(walls)[1]
    flags = sorted({f"{r['flag']}:{r['direction']}" for r in report["recommendations"]})
    print(f"  median {med:.2f}s = {med / ref:.1f}x the raw read; target < 5 s and < 500 MB")
    print(f"  recommendations: {', '.join(flags)}")


def fleet(workdir: Path, instances: int) -> None:
    from tests.support.prometheus import backfill, start_prometheus

    start = day_start(time.time())
    data_dir = workdir / "fleet-data"
    t0 = time.perf_counter()
    scenarios = []
    total = 0
    for i in range(instances):
        sc = Scenario(start=start, step=120.0, instance=f"vllm-{i:02d}",
                      extra_labels=(("pod", f"p{i:02d}"),), dcgm_extra_labels=(
                          ("pod", f"p{i:02d}"),), gpus=1,
                      storm=(14.0, 16.0) if i % 5 == 0 else None, spec_k=3 if i % 2 else 0)
        scenarios.append(sc)
        if not (data_dir / f".done-{i}").exists():
            total += backfill(build_points(sc), data_dir, workdir / "om")
            (data_dir / f".done-{i}").touch()
    print(f"fleet: {instances} vLLM instances, 24h at 2m backfilled ({total:,} new samples) "
          f"in {time.perf_counter() - t0:.0f}s")
    server = start_prometheus(workdir / "prom", data_dir=data_dir, timeout=300)
    try:
        wall, rss, report = run_cli(["suggest", "--prometheus", server.url, "--since", "24h",
                                     "--until", str(scenarios[0].end), "--format", "json"])
    finally:
        server.stop()
    down = sum(1 for r in report["recommendations"] if r["flag"] == "--max-num-seqs")
    print(f"  tuner suggest --prometheus --since 24h: {wall:.1f}s wall "
          f"({wall / instances:.2f}s per instance), peak RSS {rss:.0f} MiB, "
          f"{len(report['targets'])} targets, {down} max-num-seqs recommendations "
          f"(expected {len([s for s in scenarios if s.storm])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-fleet", action="store_true")
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--workdir", default=None, help="keep stores here (reused between runs)")
    args = ap.parse_args()
    if args.workdir:
        wd = Path(args.workdir)
        wd.mkdir(parents=True, exist_ok=True)
        single(wd)
        if not args.skip_fleet:
            fleet(wd, args.instances)
        return
    with tempfile.TemporaryDirectory() as tmp:
        single(Path(tmp))
        if not args.skip_fleet:
            fleet(Path(tmp), args.instances)


if __name__ == "__main__":
    main()
