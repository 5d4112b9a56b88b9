"""Admission control end to end on real vLLM CPU (``--max-num-seqs 4 --max-num-queued-reqs 2``).

* The load generator counts the 503 refusals apart from other errors (plain HTTP 503 and the
  error event with code 503 inside an HTTP 200 stream are both refusals), and its count
  matches the server's ``vllm:admission_rejections_total``.
* The daemon scrapes the overloaded server; ``tuner suggest --since 5m`` (a separate process
  reading the store) recommends a change with the 503 evidence, never "no change".
* A tune trial of a server with those flags reports its rejections (trial record, report.md,
  trials.csv), and a trial whose flags vLLM's parser refuses fails with ``flag_rejected``
  naming the flag instead of raising (vLLM exits at argument parsing: a few seconds).

Run under ``flock /tmp/tuner-vllm.lock``; one shared server plus two canaries (~3 minutes).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.vllm import ADMISSION_FLAGS, VllmServer, test_launch_spec
from tuner.config import load_config
from tuner.daemon import Daemon
from tuner.exposition import parse_exposition
from tuner.load import LengthDist, LoadSpec, run_load_sync, summarize
from tuner.report import render_tune_csv, render_tune_report
from tuner.store import Store
from tuner.tune import Step, TrialContext, parse_tune_config, run_trial, summarize_search

pytestmark = pytest.mark.e2e

#: The issue's overload: 48 requests, 24 at a time, against 2 admitted at once.
OVERLOAD = LoadSpec(prompt_tokens=LengthDist("fixed", mean=32),
                    output_tokens=LengthDist("fixed", mean=32), concurrency=24,
                    duration=60.0, max_requests=48, seed=3)


def rejections_counter(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10, trust_env=False).text
    return sum(s.value for s in parse_exposition(text).samples
               if s.name == "vllm:admission_rejections_total")


def test_overload_is_counted_as_503_rejections_and_suggest_recommends_a_change(
    tmp_path: Path, vllm_admission_server: VllmServer
) -> None:
    server = vllm_admission_server
    cfg_file = tmp_path / "tuner.yaml"
    cfg_file.write_text(yaml.safe_dump(server.sidecar_settings(
        "tuner.db", launch=dict(ADMISSION_FLAGS),
        slo={"ttft_p99_seconds": 1.0, "itl_p99_seconds": 0.1})))
    daemon = Daemon(load_config(cfg_file))
    daemon.start()
    try:
        time.sleep(3)
        before = rejections_counter(server.metrics_url)
        results = [run_load_sync(server.url, server.model, OVERLOAD) for _ in range(3)]
        refused = rejections_counter(server.metrics_url) - before
        time.sleep(4)  # the final counters
    finally:
        daemon.stop()

    summaries = [summarize(r) for r in results]
    rejected = sum(s.rejections for s in summaries)
    # most of the burst is refused, and the client saw every refusal the server counted
    assert rejected >= 60, summaries
    assert rejected == refused, (rejected, refused)
    assert all(s.errors == 0 for s in summaries), [r.error for res in results
                                                   for r in res.records if not r.rejected][:5]
    assert all(s.error_rate == pytest.approx((s.rejections + s.errors) / s.requests)
               for s in summaries)
    kinds = {r.error.split(":")[0] for res in results for r in res.records if r.rejected}
    assert kinds <= {"http 503", "stream error (code 503)"}, kinds
    print(f"rejected {rejected} of {sum(s.requests for s in summaries)}; kinds {sorted(kinds)}")

    out = subprocess.run(
        [sys.executable, "-m", "tuner", "suggest", "--since", "5m", "--config", str(cfg_file),
         "--format", "json"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_id = {f["id"]: f for f in report["findings"]}
    assert "admission_rejections" in by_id, report["findings"]
    f = by_id["admission_rejections"]
    assert "max_num_queued_reqs" in f["summary"] and f["value"] > 100  # per 1000 arriving (46 of 48 quiet, 27 busy)
    assert f["ranges"]
    recs = report["recommendations"]
    assert not any(r["direction"] == "none" for r in recs), recs
    raise_cap = [r for r in recs if r["flag"] == "--max-num-queued-reqs"]
    assert raise_cap, recs
    r = raise_cap[0]
    assert r["direction"] == "up" and r["current"] == 2 and r["suggested"] >= 4
    assert r["evidence"][0]["finding"] == "admission_rejections"
    assert "503" in r["evidence"][0]["summary"]
    # this server exports http_requests_total: the error rate is known
    assert not any("http_requests_total" in m for m in report["targets"][0]["missing"])

    table = subprocess.run(
        [sys.executable, "-m", "tuner", "suggest", "--since", "5m", "--config", str(cfg_file)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, check=True).stdout
    assert "--max-num-queued-reqs" in table and "503" in table
    print(table)


def test_a_tune_trial_reports_rejections_and_a_refused_flag_fails_only_its_trial(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec = test_launch_spec(tiny_model_dir, ADMISSION_FLAGS, cores="1")
    cfg = parse_tune_config({
        "launch": {"model": spec.model, "served_model_name": spec.served_model_name,
                   "flags": dict(spec.flags), "env": dict(spec.env)},
        "space": {"max-num-seqs": None, "gpu-memory-utilization": None,
                  "max-num-queued-reqs": {"low": 2, "high": 64}},
        "slo": {"ttft_p99_seconds": 10.0, "error_rate": 0.05},
        "load": {"prompt_tokens": 32, "output_tokens": 32, "concurrency": 24,
                 "duration": 30, "max_requests": 48},
        "budget": {"trials": 1},
        "canary": {"health_timeout": "300s", "scrape_interval": "1s"},
        "out": str(tmp_path / "out"),
    }, str(tmp_path / "tune.yaml"))
    store = Store(tmp_path / "tune.db")
    try:
        with httpx.Client(trust_env=False) as client:
            ctx = TrialContext(cfg, store, tmp_path / "logs", client, OVERLOAD,
                               threading.Event())
            base = run_trial(ctx, 0, Step("baseline", {}, dict(cfg.baseline_flags),
                                          measures_baseline=True), None)
            t0 = time.monotonic()
            bogus = run_trial(ctx, 1, Step("search", {"max-num-queued-reqs": 4},
                                           {**cfg.baseline_flags, "max-num-queued-reqs": 4,
                                            "no-such-flag": 3}), 1.0)
            bogus_s = time.monotonic() - t0
    finally:
        store.close()
    assert base is not None and base.measurement is not None, base
    m = base.measurement
    # how many of the 48 are refused depends on timing (46 quiet, 27 on a busy machine)
    assert m.rejections >= 10 and m.errors == 0, m
    # the canary's own counter, scraped into the search's store, agrees with the client; its
    # increase() over a load window of a second or two is extrapolated (44 counted read 48.4)
    assert 0.8 * m.rejections <= m.server_rejections <= 1.2 * m.requests, m
    assert m.error_rate == pytest.approx(m.rejections / m.requests)
    # refusals count against the SLO's 5% error rate: the trial ran but missed the SLO
    assert base.state == "slo" and "error_rate" in base.violations, base

    assert bogus is not None and bogus.state == "failed" and bogus.reason == "flag_rejected"
    assert "--no-such-flag" in bogus.log_tail.splitlines()[-1]
    assert bogus.measurement is None
    print(f"flag-rejected trial took {bogus_s:.1f}s; baseline: {m.rejections}/{m.requests} "
          "rejected")

    outcome = summarize_search(cfg, [base, bogus])
    text = render_tune_report(outcome)
    assert f"| {m.rejections}/{m.requests} | 0/{m.requests} |" in text
    assert "Trial 1 (flag_rejected)" in text and "--no-such-flag" in text
    rows = list(csv.DictReader(io.StringIO(render_tune_csv(outcome))))
    assert rows[0]["rejections"] == str(m.rejections) and rows[1]["reason"] == "flag_rejected"
