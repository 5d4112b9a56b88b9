"""Re-tune on drift, on the real daemon and a real vLLM CPU server whose load changes shape.

Phase 1 sends short prompts (~64 tokens); the workload it produces, fingerprinted from the
daemon's own store with the production function, is written as a tune result's ``workload``
(what ``tuner tune`` stores, see test_tune_e2e). The daemon's drift check (window 1m, every
3s) first finds production within the threshold. Phase 2 sends prompts 16 times longer: the
distance crosses the threshold, ``tuner_workload_drift_distance`` on /metrics says so, and
``WorkloadDrift`` — its description naming what changed and both fingerprints — arrives in a
real Alertmanager. Run under ``flock /tmp/tuner-vllm.lock``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.support.alertmanager import AlertmanagerProcess
from tests.support.vllm import VllmServer
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.load import LengthDist, LoadSpec, run_load_sync, summarize
from tuner.promql import Engine
from tuner.workload import fingerprint

pytestmark = pytest.mark.e2e


def _load(server: VllmServer, prompt: int, requests: int) -> None:
    spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=prompt),
                    output_tokens=LengthDist("fixed", mean=8), concurrency=4,
                    duration=60.0, max_requests=requests, seed=prompt)
    summary = summarize(run_load_sync(server.url, server.model, spec))
    assert summary.requests == requests and summary.errors == 0, summary


def _distance(daemon: Daemon) -> float:
    host, port = daemon.address
    text = httpx.get(f"http://{host}:{port}/metrics", trust_env=False, timeout=10).text
    m = re.search(r"^tuner_workload_drift_distance (\S+)$", text, re.M)
    assert m, text
    return float(m.group(1))


def _wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_daemon_sees_production_drift_from_the_tuned_workload(
        tmp_path: Path, vllm_server: VllmServer, alertmanager: AlertmanagerProcess) -> None:
    result = tmp_path / "run" / "best.json"
    result.parent.mkdir()
    result.write_text(json.dumps({"flags": {}}))  # replaced by the tuned fingerprint below
    cfg = parse_config(vllm_server.sidecar_settings(
        tmp_path / "tuner.db", alertmanagers=[{"url": alertmanager.url}],
        drift={"tune_result": str(result), "window": "1m", "interval": "3s",
               "threshold": 1.0, "min_requests": 10},
    ), str(tmp_path / "tuner.yaml"))
    daemon = Daemon(cfg)
    daemon.start()
    try:
        assert daemon.drift is not None
        # The server is shared: let the previous tests' traffic age out of the 1m window, so the
        # live window holds only this test's requests (it started with their lengths: p90 37
        # output tokens against phase 1's 8).
        time.sleep(62)
        # -- phase 1: the workload the flags were "tuned for" -----------------------------------
        t0 = time.time()
        _load(vllm_server, 64, 40)
        time.sleep(3)  # the last scrape of phase 1
        tuned = fingerprint(Engine(reader=daemon.store), t0 - 1, time.time())
        assert tuned["prompt_tokens"] is not None and tuned["requests"] >= 40, tuned
        tuned["request_rate_per_s"] = None  # as tune stores a closed-loop load: rate unknown
        result.write_text(json.dumps({"flags": {}, "workload": tuned}))
        _wait(lambda: daemon.drift.drift is not None, 20, "a first comparison")  # type: ignore[union-attr]
        assert 0.0 <= _distance(daemon) < 1.0, daemon.drift.note
        assert not any(a["labels"]["alertname"] == "WorkloadDrift" for a in alertmanager.alerts())

        # -- phase 2: production now sends prompts 16 times longer -------------------------------
        _load(vllm_server, 1024, 60)
        _wait(lambda: (d := daemon.drift.drift) is not None and d.drifted,  # type: ignore[union-attr]
              30, "the drift check to see the new shape")
        distance = _distance(daemon)
        assert distance >= 1.0, daemon.drift.note
        alert = alertmanager.wait_for_alert(
            lambda a: a["labels"]["alertname"] == "WorkloadDrift", timeout=30)
        desc = alert["annotations"]["description"]
        assert "What changed: prompt tokens" in desc and "Tuned for: prompt p50/p90" in desc
        assert "Live (last 1 min): prompt p50/p90" in desc
        assert daemon.drift.live_workload is not None  # what the next tuning window tunes for
    finally:
        daemon.stop()
