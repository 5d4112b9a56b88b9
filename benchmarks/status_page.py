"""Status page render time: ``/`` against ``/healthz`` and ``/metrics`` on the same listener.

Fills a store of realistic size through a real daemon (its scrape path, on a clock that
starts ``--hours`` ago): ``--vllm`` recorded vLLM 0.32 expositions served by fixture servers
(counters advance at every scrape; ~600 series each) and the DCGM-exporter stand-in (8 GPUs),
every ``--interval`` seconds, with the shipped rules evaluated every minute. Then the daemon
runs live (scraping on the wall clock) and the benchmark times, over real HTTP, ``--requests``
renders of ``/`` with every cache off ("full": each request collects targets, instant
signals, an hour of each signal at a 60 s step, alerts, suggest, tune report from the store),
with the page's charts reused within their minute as the daemon does ("charts/min": what most
requests cost), with the page's 5 s response cache on as well, and the two cheap endpoints as
the reference measured in the same run. Prints median, p90 and the interquartile range of each, and ratios of medians.

    python benchmarks/status_page.py [--hours 6] [--interval 15] [--vllm 2] [--requests 40]

The fill runs the real scrape path, ~0.1 s per scrape cycle on 2 busy cores: 24 h at 5 s
(``--hours 24 --interval 5``) takes about half an hour to build.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.dcgm import DcgmExporter
from tests.support.page import RecordedVllmTarget, page_config
from tuner.daemon import Daemon


def summary(xs: list[float]) -> tuple[float, float, float]:
    """(median, p90, interquartile range) in milliseconds."""
    ms = sorted(x * 1000 for x in xs)
    q = statistics.quantiles(ms, n=20)
    quart = statistics.quantiles(ms, n=4)
    return statistics.median(ms), q[17], quart[2] - quart[0]


def timed_gets(client: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url)
        out.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise SystemExit(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--interval", type=float, default=15.0)
    ap.add_argument("--vllm", type=int, default=2)
    ap.add_argument("--requests", type=int, default=40)
    args = ap.parse_args()

    vllms = [RecordedVllmTarget() for _ in range(args.vllm)]
    dcgm = DcgmExporter(gpus=8).start()
    with tempfile.TemporaryDirectory(prefix="tuner-page-bench-") as tmp:
        cfg = page_config(Path(tmp), [
            *({"name": f"vllm-{i}", "url": v.url} for i, v in enumerate(vllms)),
            {"name": "gpu-node", "url": dcgm.url, "kind": "dcgm"},
        ], scrape_interval=f"{args.interval:g}s")
        steps = int(args.hours * 3600 / args.interval)
        fake = [time.time() - steps * args.interval]
        daemon = Daemon(cfg, clock=lambda: fake[0] if fake else time.time())
        t0 = time.perf_counter()
        every_minute = max(1, round(60 / args.interval))
        for step in range(steps):
            daemon.scrape_once()
            if step % every_minute == 0:
                daemon.alerting.evaluate()
            fake[0] += args.interval
        fake.clear()
        fill = time.perf_counter() - t0
        samples = daemon.store.sample_count()
        size_mb = daemon.store.size_bytes() / 1e6
        series = len(daemon.store._series_rows)
        print(f"store: {args.hours:g} h at {args.interval:g} s, {args.vllm} vLLM + 1 DCGM target: "
              f"{samples:,} samples in {series:,} series, {size_mb:.0f} MB "
              f"(filled in {fill:.0f} s)")
        daemon.start()
        try:
            host, port = daemon.address
            base = f"http://{host}:{port}"
            with httpx.Client(trust_env=False, timeout=120) as client:
                timed_gets(client, base + "/", 3)  # warm-up (parses, first suggest run)
                daemon.page.cache_seconds = 0.0
                daemon.page.chart_cache = False
                full = timed_gets(client, base + "/", args.requests)
                daemon.page.chart_cache = True
                uncached = timed_gets(client, base + "/", args.requests)
                daemon.page.cache_seconds = 5.0
                cached = timed_gets(client, base + "/", args.requests)
                healthz = timed_gets(client, base + "/healthz", args.requests)
                metrics = timed_gets(client, base + "/metrics", args.requests)
                size_kb = len(client.get(base + "/").content) / 1024
        finally:
            daemon.stop()
    for v in vllms:
        v.close()
    dcgm.close()

    rows = [("/ (full)", full), ("/ (charts/min)", uncached), ("/ (5 s cache)", cached), ("/healthz", healthz),
            ("/metrics", metrics)]
    ref = summary(healthz)[0]
    ref_metrics = summary(metrics)[0]
    print(f"{'endpoint':<16}{'median ms':>11}{'p90 ms':>9}{'IQR ms':>9}{'÷ /healthz':>12}"
          f"{'÷ /metrics':>12}")
    for name, xs in rows:
        med, p90, iqr = summary(xs)
        print(f"{name:<16}{med:>11.2f}{p90:>9.2f}{iqr:>9.2f}{med / ref:>12.1f}"
              f"{med / ref_metrics:>12.1f}")
    print(f"page size {size_kb:.0f} KiB; {args.requests} requests each, one client, while the "
          "daemon scrapes live")


if __name__ == "__main__":
    main()
