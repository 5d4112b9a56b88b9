"""Benchmark the sidecar's Prometheus API: dashboard range queries vs Prometheus, scraping under load.

1. Data: the synthetic day of tests/support/history.py (one vLLM server and 8 GPUs, 24 h at a
   5 s scrape, about 3 million samples) in a store served by ``tuner run`` (its own process, as
   in production), and backfilled with promtool into a real Prometheus 2.42.
2. Every shipped dashboard query (Grafana variables filled in, recording rules inlined, as in
   the differential test) as ``/api/v1/query_range`` over the 24 h at a 60 s step (1441 points
   per series, what a day-wide Grafana panel asks for), against both servers, ``--repeats``
   times each. Printed per query: the median time of each and the ratio tuner / Prometheus
   (with the min-max spread of the ratio over the repeats); then the geometric mean ratio.
3. The sidecar keeps scraping a target (the DCGM stand-in, once a second) while this runs:
   its scrape cycle time (``tuner_scrape_duration_seconds``, from its own /metrics) and the
   number of scrapes per second are printed for a quiet window and for a window with two
   clients sending dashboard queries back to back. "During" must not grow.

Usage: ``python benchmarks/query_api.py [--hours 24] [--repeats 3] [--window 20] [--workers 1]
[--workdir DIR]`` (``--workers``: the sidecar's ``query.max_concurrency``)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_promql_differential import dashboard_expressions  # noqa: E402
from tests.support.common import (  # noqa: E402
    free_port,
    stop_process,
    wait_http,
)
from tests.support.dcgm import DcgmExporter  # noqa: E402
from tests.support.history import Scenario, build_points, build_store, day_start  # noqa: E402
from tests.support.prometheus import backfill, start_prometheus  # noqa: E402


def timed_range(client: httpx.Client, url: str, expr: str, start: float, end: float,
                step: float) -> tuple[float, int]:
    """Seconds for one query_range, and the number of points it returned."""
    t0 = time.perf_counter()
    r = client.get(f"{url}/api/v1/query_range",
                   params={"query": expr, "start": start, "end": end, "step": step})
    wall = time.perf_counter() - t0
    body = r.json()
    if body.get("status") != "success":
        raise SystemExit(f"{url}: {expr}: {body}")
    return wall, sum(len(s["values"]) for s in body["data"]["result"])


def scrape_stats(client: httpx.Client, url: str) -> tuple[float, float]:
    """(sum, count) of the sidecar's tuner_scrape_duration_seconds for the stand-in target."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get(f"{url}/metrics").text
    total = count = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "tuner_scrape_duration_seconds_sum":
                total += s.value
            elif s.name == "tuner_scrape_duration_seconds_count":
                count += s.value
    return total, count


def scrape_window(client: httpx.Client, url: str, seconds: float) -> tuple[float, float]:
    """Mean scrape cycle time (ms) and scrapes per second over a window."""
    s0, c0 = scrape_stats(client, url)
    time.sleep(seconds)
    s1, c1 = scrape_stats(client, url)
    n = c1 - c0
    return (1000 * (s1 - s0) / n if n else math.nan), n / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window", type=float, default=20.0, help="seconds per scrape window")
    ap.add_argument("--workers", type=int, default=1, help="the sidecar's query.max_concurrency")
    ap.add_argument("--workdir", default=None, help="keep the store and TSDB here (reused)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(args.workdir) if args.workdir else Path(tmp), args)


def run(wd: Path, args: argparse.Namespace) -> None:
    wd.mkdir(parents=True, exist_ok=True)
    sc = Scenario(start=day_start(time.time()), hours=args.hours, step=5.0, gpus=8)
    db, data_dir = wd / "tuner.db", wd / "prom-data"
    t0 = time.perf_counter()
    if not db.exists():
        build_store(db, sc, retention=3650 * 86400.0).close()
    if not (data_dir / ".done").exists():
        backfill(build_points(sc), data_dir, wd / "om")
        (data_dir / ".done").touch()
    print(f"data: {args.hours:g} h at 5 s of 1 vLLM server + 8 GPUs, in the store and in "
          f"Prometheus ({time.perf_counter() - t0:.0f}s to build)")

    exporter = DcgmExporter().start()
    port = free_port()
    cfg = wd / "tuner.yaml"
    cfg.write_text(
        f"targets: [{{name: gpu, url: '{exporter.url}', kind: dcgm}}]\n"
        "scrape_interval: 1s\nscrape_timeout: 900ms\n"
        f"store: {{path: {db}, retention: 3650d}}\nlisten: 127.0.0.1:{port}\n"
        f"query: {{max_concurrency: {args.workers}}}\n")
    log = (wd / "tuner.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "tuner", "run", "--config", str(cfg)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=log, stderr=subprocess.STDOUT)
    prom = start_prometheus(wd / "prom", data_dir=data_dir, timeout=300)
    sidecar = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=600, trust_env=False)
    try:
        wait_http(f"{sidecar}/healthz", 60, daemon, wd / "tuner.log")
        for _ in range(4):  # warm up: the sidecar's query workers start on first use
            timed_range(client, sidecar, "vector(1)", sc.start, sc.end, 600.0)
        compare_queries(client, sidecar, prom.url, sc, args.repeats)
        scraping_under_load(client, sidecar, sc, args.window)
    finally:
        client.close()
        prom.stop()
        stop_process(daemon)
        log.close()
        exporter.close()


def compare_queries(client: httpx.Client, sidecar: str, prom: str, sc: Scenario,
                    repeats: int) -> None:
    start, end, step = sc.start, sc.end, 60.0
    exprs = [e for _, e in dashboard_expressions()]
    print(f"\nquery_range over {(end - start) / 3600:g} h at a {step:g}s step, "
          f"{len(exprs)} dashboard queries, {repeats} repeats (medians; ratio spread min-max)")
    print(f"{'tuner s':>9} {'prom s':>8} {'ratio':>7} {'spread':>15} {'points':>7}  query")
    ratios = []
    tot_ours = tot_prom = 0.0
    for expr in exprs:
        ours, theirs = [], []
        points = 0
        for _ in range(repeats):
            w, points = timed_range(client, sidecar, expr, start, end, step)
            ours.append(w)
            theirs.append(timed_range(client, prom, expr, start, end, step)[0])
        mo, mp = statistics.median(ours), statistics.median(theirs)
        rs = [a / b for a, b in zip(ours, theirs, strict=True)]
        ratios.append(mo / mp)
        tot_ours += mo
        tot_prom += mp
        print(f"{mo:9.3f} {mp:8.4f} {mo / mp:7.0f} {min(rs):7.0f}-{max(rs):<7.0f} {points:7d}  "
              f"{expr[:90]}")
    geo = math.exp(statistics.fmean(math.log(r) for r in ratios))
    print(f"all {len(exprs)} queries: tuner {tot_ours:.1f}s, Prometheus {tot_prom:.2f}s; "
          f"geometric mean ratio {geo:.0f}x (per-query ratios {min(ratios):.0f}x-"
          f"{max(ratios):.0f}x)")


def scraping_under_load(client: httpx.Client, sidecar: str, sc: Scenario,
                        window: float) -> None:
    exprs = [e for _, e in dashboard_expressions()]
    quiet = scrape_window(client, sidecar, window)
    stop = threading.Event()
    answered = [0]

    def hammer(offset: int) -> None:
        with httpx.Client(timeout=600, trust_env=False) as c:
            i = offset
            while not stop.is_set():
                timed_range(c, sidecar, exprs[i % len(exprs)], sc.start, sc.end, 60.0)
                answered[0] += 1
                i += 1

    threads = [threading.Thread(target=hammer, args=(k * 7,), daemon=True) for k in range(2)]
    for th in threads:
        th.start()
    time.sleep(2)
    busy = scrape_window(client, sidecar, window)
    stop.set()
    for th in threads:
        th.join()
    after = scrape_window(client, sidecar, window)
    print(f"\nscrape of the stand-in target every 1 s, {window:g}s windows "
          "(mean cycle time; scrapes per second):")
    print(f"  before:  {quiet[0]:7.2f} ms  {quiet[1]:.2f}/s")
    print(f"  during:  {busy[0]:7.2f} ms  {busy[1]:.2f}/s   ({answered[0]} dashboard queries "
          "answered by 2 clients meanwhile)")
    print(f"  after:   {after[0]:7.2f} ms  {after[1]:.2f}/s")
    print(f"  during / before: {busy[0] / quiet[0]:.2f}x cycle time, "
          f"{busy[1] / quiet[1]:.2f}x scrape rate")


if __name__ == "__main__":
    main()
