"""The shipped alert rules fire on real vLLM CPU servers and reach a real Alertmanager.

* A server with a tiny KV cache (``--num-gpu-blocks-override 24``) under 32 concurrent long
  requests preempts: ``VllmPreemptionsHigh`` fires in the sidecar and arrives in Alertmanager.
* ngram speculative decoding on the random-weight model with sampled output accepts almost
  nothing: ``VllmSpecDecodeNotPaying`` fires (mean acceptance length near 1).
* admission control (``--max-num-seqs 4 --max-num-queued-reqs 2``, the shared
  ``vllm_admission_server``) under 48 requests 24 at a time refuses most with HTTP 503:
  ``VllmAdmissionRejectionsHigh`` fires and arrives, and ``tuner status`` shows the rate.

The rules are the shipped rendering with every ``for:`` shortened to 5s (windows stay as
shipped; ``rate`` over 5m works on the minute of data a test has), so each test takes about
a minute of load. Run under ``flock /tmp/tuner-vllm.lock``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.alertmanager import AlertmanagerProcess
from tests.support.vllm import VllmServer
from tuner.config import SLO, load_config, parse_config
from tuner.daemon import Daemon
from tuner.load import LengthDist, LoadSpec, run_load_sync, summarize
from tuner.rules import render_rule_files

pytestmark = pytest.mark.e2e

# Alerts that must never fire on a real, reachable, working vLLM: they would mean the rules
# watch metric names this vLLM does not export, or misread a busy engine as a stalled one.
NEVER_ON_A_WORKING_SERVER = {"VllmInstanceDown", "VllmMetricsAbsent", "VllmEngineStalled",
                             "VllmHttpServerErrors", "VllmRequestErrors"}


def _short_rules(tmp_path: Path) -> list[str]:
    out = []
    for name, text in render_rule_files(SLO()).items():
        p = tmp_path / name
        p.write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 5s", text))
        out.append(str(p))
    return out


def _daemon(tmp_path: Path, server: VllmServer, am: AlertmanagerProcess) -> Daemon:
    cfg = parse_config(
        server.sidecar_settings(tmp_path / "tuner.db", evaluation_interval="2s",
                                rule_files=_short_rules(tmp_path),
                                alertmanagers=[{"url": am.url}]),
        str(tmp_path / "tuner.yaml"),
    )
    return Daemon(cfg)


def _fired(daemon: Daemon) -> set[str]:
    return {a.alertname for a in daemon.alerting.engine.alerts() if a.state == "firing"}


def test_preemption_alert_fires_on_real_vllm_and_reaches_alertmanager(
    tmp_path: Path, vllm_preempting_server: VllmServer, alertmanager: AlertmanagerProcess
) -> None:
    server = vllm_preempting_server
    daemon = _daemon(tmp_path, server, alertmanager)
    daemon.start()
    try:
        time.sleep(3)
        assert "VllmPreemptionsHigh" not in _fired(daemon)
        spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=256),
                        output_tokens=LengthDist("fixed", mean=512),
                        concurrency=32, duration=90.0, max_requests=64, seed=5)
        summary = summarize(run_load_sync(server.url, server.model, spec))
        assert summary.errors == 0, summary
        got = alertmanager.wait_for_alert(
            lambda a: a["labels"].get("alertname") == "VllmPreemptionsHigh", timeout=60)
        assert got["labels"]["instance"] == "vllm-0" and got["labels"]["severity"] == "warning"
        assert got["labels"]["model_name"] == server.model
        assert "preemptions per 1000 finished requests over 5m" in (
            got["annotations"]["description"])
        per_1000 = float(got["annotations"]["description"].split(": ")[1].split()[0])
        assert per_1000 > 5
        fired = _fired(daemon)
        assert not fired & NEVER_ON_A_WORKING_SERVER, fired
    finally:
        daemon.stop()


def _sampled_load(url: str, model: str, requests: int, concurrency: int,
                  max_tokens: int) -> int:
    """Completions with temperature 1.0 (the load generator is greedy); returns failures."""
    def one(i: int) -> bool:
        body = {"model": model, "prompt": f"request {i}: tell a story about the number {i}",
                "max_tokens": max_tokens, "temperature": 1.0, "ignore_eos": True, "seed": i}
        try:
            r = client.post(f"{url}/v1/completions", json=body)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    with httpx.Client(timeout=120, trust_env=False) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        return sum(not ok for ok in pool.map(one, range(requests)))


def test_spec_decode_alert_fires_on_real_vllm_with_ngram_drafts(
    tmp_path: Path, vllm_specdecode_server: VllmServer, alertmanager: AlertmanagerProcess
) -> None:
    # Greedy decoding of the random-weight model repeats itself, so ngram drafts are accepted
    # (measured: 44% acceptance, mean acceptance length 2.25 -> correctly no alert). Sampled
    # output (temperature 1.0) is close to uniform over the 2,048-token vocabulary: an ngram
    # draft is then accepted with probability ~1/2048, the case the alert exists for.
    server = vllm_specdecode_server
    daemon = _daemon(tmp_path, server, alertmanager)
    daemon.start()
    try:
        failures = _sampled_load(server.url, server.model, requests=48, concurrency=8,
                                 max_tokens=192)
        assert failures == 0
        got = alertmanager.wait_for_alert(
            lambda a: a["labels"].get("alertname") == "VllmSpecDecodeNotPaying", timeout=60)
        assert got["labels"]["instance"] == "vllm-0"
        mean_len = float(got["annotations"]["description"].split("yields ")[1].split()[0])
        assert 1.0 <= mean_len < 1.5  # V1 names: mean acceptance length, near 1 here
        fired = _fired(daemon)
        assert not fired & NEVER_ON_A_WORKING_SERVER, fired
    finally:
        daemon.stop()


def _overload(url: str, model: str, requests: int, concurrency: int) -> dict[int, int]:
    """Non-streamed completions, ``concurrency`` at a time; HTTP status -> count."""
    def one(i: int) -> int:
        body = {"model": model, "prompt": f"request {i}: count to a thousand",
                "max_tokens": 256, "ignore_eos": True, "temperature": 0}
        return client.post(f"{url}/v1/completions", json=body).status_code

    with httpx.Client(timeout=300, trust_env=False) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(one, range(requests)))
    return {c: codes.count(c) for c in set(codes)}


def test_admission_rejections_alert_and_status_on_real_vllm(
    tmp_path: Path, vllm_admission_server: VllmServer, alertmanager: AlertmanagerProcess
) -> None:
    server = vllm_admission_server
    cfg_file = tmp_path / "tuner.yaml"
    cfg_file.write_text(
        f"targets:\n  - {{name: vllm-0, url: '{server.metrics_url}', kind: vllm}}\n"
        f"scrape_interval: 1s\nevaluation_interval: 2s\nlisten: '127.0.0.1:0'\n"
        f"store: {{path: {tmp_path / 'tuner.db'}, retention: 1h}}\n"
        f"rule_files: {json.dumps(_short_rules(tmp_path))}\n"
        f"alertmanagers: [{{url: '{alertmanager.url}'}}]\n")
    # http_requests_total{status="5xx"} is born at a server's first 5xx, already counting it,
    # and rate() sees no increase in a series' first sample: a warm-up burst before the
    # daemon starts makes the series exist (vLLM pre-creates the admission counter itself).
    warm = _overload(server.url, server.model, requests=12, concurrency=12)
    assert warm.get(503), warm
    daemon = Daemon(load_config(cfg_file))
    daemon.start()
    try:
        time.sleep(3)
        assert "VllmAdmissionRejectionsHigh" not in _fired(daemon)
        codes = _overload(server.url, server.model, requests=48, concurrency=24)
        assert codes.get(503, 0) >= 24, codes  # most refused at once (46 of 48 when recorded)
        assert set(codes) <= {200, 503}, codes
        got = alertmanager.wait_for_alert(
            lambda a: a["labels"].get("alertname") == "VllmAdmissionRejectionsHigh", timeout=90)
        labels, desc = got["labels"], got["annotations"]["description"]
        assert labels["instance"] == "vllm-0" and labels["reason"] == "max_num_queued_reqs"
        assert labels["model_name"] == server.model and labels["family"] == "admission"
        per_1000 = float(desc.split(": ")[1].split()[0])
        refused = 1000 * codes[503] / sum(codes.values())
        assert abs(per_1000 - refused) <= 50, (per_1000, codes)  # the server's count, not ours
        assert "--max-num-queued-reqs" in desc
        # tuner status (the CLI, another process) shows the rejection rate and the 5xx share
        out = subprocess.run(
            [sys.executable, "-m", "tuner", "status", "--config", str(cfg_file),
             "--format", "json"], capture_output=True, text=True, timeout=120, check=True)
        sig = json.loads(out.stdout)["signals"]["vllm-0"]
        assert abs(sig["rejections_per_1000"] - refused) <= 50, sig
        assert sig["http_5xx_ratio"] > 0.4, sig
        assert sig["kv_capacity_tokens"] == 131072, sig
        table = subprocess.run(
            [sys.executable, "-m", "tuner", "status", "--config", str(cfg_file)],
            capture_output=True, text=True, timeout=120, check=True).stdout
        assert "rejections_per_1000" in table and f"{sig['rejections_per_1000']:,.1f}" in table
        fired = _fired(daemon)
        assert not fired & (NEVER_ON_A_WORKING_SERVER - {"VllmHttpServerErrors"}), fired
    finally:
        daemon.stop()
