"""`tuner status`: targets and live signals computed by the PromQL evaluator over the store."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.support.dcgm import DcgmExporter, ScriptedTarget
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.report import render_status
from tuner.status import read_status


def vllm_body(step: int) -> str:
    """vLLM V1 exposition after ``step`` scrapes of a steady server: 50 tok/s, 1 preemption/scrape."""
    ttft_fast, ttft_total = 8 * step, 10 * step  # 80% under 0.1s, the rest under 0.5s
    return (
        'vllm:num_requests_running{engine="0",model_name="m"} 4\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 2\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.875\n'
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {250 * step}\n'
        f'vllm:num_preemptions_total{{engine="0",model_name="m"}} {step}\n'
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="m"}} {ttft_fast}\n'
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.5",model_name="m"}} {ttft_total}\n'
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="m"}} {ttft_total}\n'
        f'vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {ttft_total}\n'
        f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} {ttft_total * 0.1}\n'
    )


def test_status_reports_targets_and_signals(tmp_path: Path) -> None:
    vllm = ScriptedTarget()
    dcgm = DcgmExporter(gpus=2, util=40.0).start()
    try:
        cfg = parse_config(
            {
                "targets": [
                    {"name": "vllm-0", "url": vllm.url},
                    {"name": "gpu-node", "url": dcgm.url, "kind": "dcgm"},
                    {"name": "gone", "url": "http://127.0.0.1:1/metrics"},
                ],
                "scrape_interval": "5s",
                "store": {"path": str(tmp_path / "t.db")},
                "listen": "127.0.0.1:0",
            },
            str(tmp_path / "tuner.yaml"),
        )
        now = [1_800_000_000.0]
        daemon = Daemon(cfg, clock=lambda: now[0])
        try:
            for step in range(1, 80):  # 79 scrapes, 5 s apart: 6.5 minutes of history
                vllm.set(vllm_body(step))
                daemon.scrape_once()
                now[0] += 5
        finally:
            daemon.stop()
        status = read_status(cfg, now=now[0] - 5)
        ups = {t.name: t.up for t in status.targets}
        assert ups == {"vllm-0": True, "gpu-node": True, "gone": False}
        sig = status.signals["vllm-0"]
        assert sig["running"] == 4 and sig["waiting"] == 2
        assert sig["kv_cache_usage"] == 0.875
        assert math.isclose(sig["generation_tokens_per_s"], 50.0, rel_tol=1e-6)
        # 1 preemption per 5 s scrape -> 60 in 5 minutes (extrapolated like Prometheus)
        assert 55 <= sig["preemptions_5m"] <= 61
        # 80% of first tokens under 100 ms, 20% in (0.1, 0.5]: p99 interpolates inside that bucket
        assert 0.1 < sig["ttft_p99_5m"] <= 0.5
        assert status.signals["gpu-node"]["gpu_utilization"] == 40.0
        text = render_status(status)
        assert "vllm-0" in text and "DOWN" in text and "87.5%" in text
        # this server exports no http_requests_total: its error rates are unknown, never 0
        assert "http_5xx_ratio" not in sig
        assert status.to_json()["unknown"] == {"vllm-0": ["http_5xx_ratio", "http_4xx_ratio"]}
        assert "vllm-0: http_5xx_ratio, http_4xx_ratio unknown" in text
        # the CLI reads the same store from another process
        cfg_file = tmp_path / "tuner.yaml"
        cfg_file.write_text(
            f"targets:\n  - {{name: vllm-0, url: '{vllm.url}'}}\n"
            f"store: {{path: {tmp_path / 't.db'}}}\n"
        )
        out = subprocess.run(
            [sys.executable, "-m", "tuner", "status", "--config", str(cfg_file), "--format", "json"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        doc = json.loads(out.stdout)
        assert doc["targets"][0]["name"] == "vllm-0" and doc["targets"][0]["up"] is True
    finally:
        vllm.close()
        dcgm.close()


def test_status_without_a_store_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "tuner.yaml"
    cfg.write_text(f"store: {{path: {tmp_path / 'missing.db'}}}\n")
    out = subprocess.run([sys.executable, "-m", "tuner", "status", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "does not exist" in out.stderr and "missing.db" in out.stderr
    assert "Traceback" not in out.stderr
