"""Every dashboard panel shows data on current vLLM.

Real parts: two vLLM CPU servers on the tiny model (one plain, one with ngram speculative
decoding) under load from ``tuner.load``, the DCGM stand-in, the tuner sidecar (``tuner run``)
and a real Prometheus started with the ``prometheus.yml`` that ``tuner provision`` rendered
(jobs vllm, dcgm, tuner). Every query of every panel, variables substituted, runs against that
Prometheus; an empty result fails the test unless the panel declares a requirement
(``tuner.dashboards.Requirement``) whose probe is empty too — the feature is really off.
The speculative-decoding panels must have data (a spec-decode server is scraped), and with the
instance filter on the plain server they must be empty together with their probe.

Run under ``flock /tmp/tuner-vllm.lock``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.common import free_port, stop_process, tail, wait_http
from tests.support.dcgm import DcgmExporter
from tests.support.prometheus import require_binary
from tests.support.vllm import VllmServer
from tuner import dashboards
from tuner.config import load_config
from tuner.load import LengthDist, LoadResult, LoadSpec, run_load_sync
from tuner.provision import provision

pytestmark = pytest.mark.e2e

LOAD_SECONDS = 25.0
VARS = {"model_name": ".*", "instance": ".*", "__rate_interval": "1m", "__range": "5m",
        "cost_per_hour": "2.5", "join_label": "pod", "gpu_instance": ".*", "gpu": ".*",
        "target": ".*"}


@dataclass
class Stack:
    prometheus: str
    tuner: str
    client: httpx.Client

    def query(self, expr: str, ts: float) -> list[dict[str, Any]]:
        r = self.client.get(f"{self.prometheus}/api/v1/query", params={"query": expr, "time": ts})
        body = r.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"value": data["result"]}]
        return list(data["result"])


def _start(cmd: list[str], log: Path, ready_url: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, 60, proc, log)
    except Exception:
        stop_process(proc)
        raise
    return proc


@pytest.fixture
def stack(tmp_path: Path, vllm_server: VllmServer, vllm_specdecode_server: VllmServer,
          dcgm_exporter: DcgmExporter) -> Iterator[Stack]:
    tuner_port = free_port()
    config_path = tmp_path / "tuner.yaml"
    config_path.write_text(f"""
targets:
  - {{name: vllm-plain, url: "{vllm_server.metrics_url}", kind: vllm}}
  - {{name: vllm-spec, url: "{vllm_specdecode_server.metrics_url}", kind: vllm}}
  - {{name: gpu-node-1, url: "{dcgm_exporter.url}", kind: dcgm}}
scrape_interval: 1s
scrape_timeout: 1s
listen: 127.0.0.1:{tuner_port}
store: {{path: {tmp_path / "tuner.db"}}}
cost: {{dollars_per_hour: 2.5}}
""")
    config = load_config(config_path)
    out = tmp_path / "provisioned"
    provision(config, out)
    tuner = _start([sys.executable, "-m", "tuner", "run", "--config", str(config_path)],
                   tmp_path / "tuner.log", f"http://127.0.0.1:{tuner_port}/healthz")
    prom_port = free_port()
    try:
        prom = _start([require_binary("prometheus"),
                       f"--config.file={out / 'prometheus/prometheus.yml'}",
                       f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                       f"--web.listen-address=127.0.0.1:{prom_port}"],
                      tmp_path / "prometheus.log", f"http://127.0.0.1:{prom_port}/-/ready")
    except Exception:
        stop_process(tuner)
        raise
    client = httpx.Client(timeout=60, trust_env=False)
    try:
        yield Stack(f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{tuner_port}", client)
    finally:
        client.close()
        stop_process(prom)
        stop_process(tuner)
        print("--- tuner log ---\n" + tail(tmp_path / "tuner.log", 30))
        print("--- prometheus log ---\n" + tail(tmp_path / "prometheus.log", 30))


def _load(server: VllmServer, results: dict[str, LoadResult], key: str) -> None:
    spec = LoadSpec(prompt_tokens=LengthDist("uniform", low=64, high=256),
                    output_tokens=LengthDist("uniform", low=24, high=64),
                    concurrency=8, duration=LOAD_SECONDS, prefix_share=0.5, seed=1)
    results[key] = run_load_sync(server.url, server.model, spec)


def _wait_for_targets(stack: Stack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    up: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        up = stack.query('up{job=~"vllm|dcgm|tuner"} == 1', time.time())
        if len(up) == 4:
            return
        time.sleep(1)
    pytest.fail(f"Prometheus does not see all 4 targets up: {up}")


def test_every_panel_has_data_on_current_vllm(stack: Stack, vllm_server: VllmServer,
                                              vllm_specdecode_server: VllmServer) -> None:
    _wait_for_targets(stack)
    results: dict[str, LoadResult] = {}
    threads = [threading.Thread(target=_load, args=(s, results, k))
               for k, s in (("plain", vllm_server), ("spec", vllm_specdecode_server))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_SECONDS + 180)
    assert set(results) == {"plain", "spec"}
    for key, res in results.items():
        ok = [r for r in res.records if r.ok]
        assert len(ok) >= 8, f"{key}: only {len(ok)} successful requests"
    time.sleep(4)  # a few more scrapes after the load
    ts = time.time()

    queries = list(dashboards.panel_queries(None, 2.5))
    assert len(queries) > 50
    empty, explained = [], []
    for q in queries:
        result = stack.query(dashboards.substitute(q.expr, VARS), ts)
        if result:
            continue
        if q.requires is not None and not stack.query(q.requires.probe, ts):
            explained.append(f"{q.dashboard} / {q.panel} [{q.ref_id}]: needs {q.requires.feature}")
            continue
        empty.append(f"{q.dashboard} / {q.panel} [{q.ref_id}]: {q.expr}")
    assert empty == [], "empty panels:\n" + "\n".join(empty)
    # Only panels about features that are really off here may be empty: an alert and a tune run.
    assert all("vllm-speculative-decoding" not in e for e in explained), explained
    print("\n".join(["panels empty by design:", *explained]))

    # The requirement's condition: on the plain server, spec-decode panels and probe are empty.
    plain = {**VARS, "instance": "vllm-plain"}
    for q in queries:
        if q.requires is dashboards.SPEC_DECODE and "vllm:spec_decode" in q.expr:
            assert stack.query(dashboards.substitute(q.expr, plain), ts) == [], q.panel
    assert stack.query('vllm:spec_decode_num_drafts_total{instance="vllm-plain"}', ts) == []
    assert stack.query('vllm:spec_decode_num_drafts_total{instance="vllm-spec"}', ts) != []
