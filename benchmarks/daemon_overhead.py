"""Sidecar overhead: CPU per scrape cycle and RSS of `tuner run`, next to a real Prometheus.

Starts one real vLLM CPU server on the tiny model and the DCGM-exporter stand-in, then for each
scrape interval runs `tuner run` and a real `prometheus` scraping the same two targets at the
same interval, side by side, and reads both processes' CPU time and RSS from /proc.

Prints, per interval: tuner CPU seconds per scrape cycle, tuner % of one core, tuner peak RSS,
Prometheus % of one core and RSS, and the tuner/Prometheus CPU ratio.
Targets (issue 2): under 1% of one core at 5s, RSS under 150 MB.

Run under the vLLM lock:  flock /tmp/tuner-vllm.lock python benchmarks/daemon_overhead.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from tests.support.common import free_port, stop_process, wait_http
from tests.support.dcgm import DcgmExporter
from tests.support.vllm import start_vllm
from tuner.canary import install_cleanup_handlers

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def light_load(url: str, stop: threading.Event) -> None:
    """A trickle of requests so vLLM's counters and histograms move during the window."""
    with httpx.Client(trust_env=False, timeout=30) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                client.post(f"{url}/v1/completions",
                            json={"model": "tiny-llama", "prompt": "hello " * 20,
                                  "max_tokens": 16, "ignore_eos": True})
            stop.wait(1.0)


def measure(interval: float, seconds: float, vllm_metrics: str, dcgm_url: str,
            work: Path) -> dict[str, float]:
    tuner_port, prom_port = free_port(), free_port()
    cfg = work / f"tuner-{interval:g}.yaml"
    cfg.write_text(
        "targets:\n"
        f"  - {{name: vllm-0, url: '{vllm_metrics}', kind: vllm}}\n"
        f"  - {{name: gpu-node, url: '{dcgm_url}', kind: dcgm}}\n"
        f"scrape_interval: {interval:g}s\n"
        f"store: {{path: tuner-{interval:g}.db, retention: 1d}}\n"
        f"listen: 127.0.0.1:{tuner_port}\n"
    )
    vhost = vllm_metrics.split("//", 1)[1].split("/", 1)[0]
    dhost = dcgm_url.split("//", 1)[1].split("/", 1)[0]
    pcfg = work / f"prometheus-{interval:g}.yml"
    pcfg.write_text(
        f"global: {{scrape_interval: {interval:g}s, scrape_timeout: {min(interval, 5):g}s}}\n"
        "scrape_configs:\n"
        f"  - {{job_name: vllm, static_configs: [{{targets: ['{vhost}']}}]}}\n"
        f"  - {{job_name: dcgm, static_configs: [{{targets: ['{dhost}']}}]}}\n"
    )
    tlog = (work / f"tuner-{interval:g}.log").open("wb")
    plog = (work / f"prometheus-{interval:g}.log").open("wb")
    tuner = subprocess.Popen([sys.executable, "-m", "tuner", "run", "--config", str(cfg)],
                             stdout=tlog, stderr=subprocess.STDOUT)
    prom = subprocess.Popen(["prometheus", f"--config.file={pcfg}",
                             f"--storage.tsdb.path={work / f'tsdb-{interval:g}'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=plog, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{tuner_port}/healthz", 60, tuner)
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", 60, prom)
        time.sleep(max(10.0, 2 * interval))  # warm-up: imports, first scrapes, series creation
        t_cpu0, p_cpu0, t0 = cpu_seconds(tuner.pid), cpu_seconds(prom.pid), time.monotonic()
        t_rss = p_rss = 0.0
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            t_rss = max(t_rss, rss_mb(tuner.pid))
            p_rss = max(p_rss, rss_mb(prom.pid))
        elapsed = time.monotonic() - t0
        t_cpu = cpu_seconds(tuner.pid) - t_cpu0
        p_cpu = cpu_seconds(prom.pid) - p_cpu0
    finally:
        stop_process(tuner)
        stop_process(prom)
        tlog.close()
        plog.close()
    cycles = elapsed / interval
    return {
        "interval_s": interval,
        "window_s": elapsed,
        "tuner_cpu_s_per_cycle": t_cpu / cycles,
        "tuner_core_pct": 100 * t_cpu / elapsed,
        "tuner_rss_mb": t_rss,
        "prometheus_core_pct": 100 * p_cpu / elapsed,
        "prometheus_rss_mb": p_rss,
        "cpu_ratio_tuner_over_prometheus": (t_cpu / p_cpu) if p_cpu > 0 else float("inf"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="measurement window each")
    parser.add_argument("--intervals", default="1,5")
    args = parser.parse_args()
    install_cleanup_handlers()  # SIGTERM/Ctrl-C: stop the vLLM servers first
    work = Path(tempfile.mkdtemp(prefix="tuner-bench-overhead-"))
    dcgm = DcgmExporter().start()
    canary = start_vllm(log_path=work / "vllm.log", cores="1")
    stop = threading.Event()
    loader = threading.Thread(target=light_load, args=(canary.handle.url, stop), daemon=True)
    loader.start()
    try:
        body = httpx.get(canary.handle.metrics_url, trust_env=False).text
        print(f"vLLM /metrics: {len(body.splitlines())} lines, {len(body) / 1024:.0f} KiB; "
              f"DCGM stand-in: 8 GPUs")
        rows = [measure(float(i), args.seconds, canary.handle.metrics_url, dcgm.url, work)
                for i in args.intervals.split(",")]
    finally:
        stop.set()
        canary.stop()
        dcgm.close()
    print()
    print(f"{'interval':>8} {'tuner cpu/cycle':>16} {'tuner %core':>12} {'tuner RSS':>10} "
          f"{'prom %core':>11} {'prom RSS':>9} {'cpu ratio':>10}")
    for r in rows:
        print(f"{r['interval_s']:>7g}s {r['tuner_cpu_s_per_cycle'] * 1000:>13.1f} ms "
              f"{r['tuner_core_pct']:>11.2f}% {r['tuner_rss_mb']:>7.0f} MB "
              f"{r['prometheus_core_pct']:>10.2f}% {r['prometheus_rss_mb']:>6.0f} MB "
              f"{r['cpu_ratio_tuner_over_prometheus']:>9.2f}x")
    five = next((r for r in rows if r["interval_s"] == 5), None)
    if five:
        print(f"\ntarget at 5s: <1% of a core -> {five['tuner_core_pct']:.2f}% "
              f"({'met' if five['tuner_core_pct'] < 1 else 'NOT met'}); RSS <150 MB -> "
              f"{five['tuner_rss_mb']:.0f} MB ({'met' if five['tuner_rss_mb'] < 150 else 'NOT met'})")


if __name__ == "__main__":
    main()
