"""suggest end to end: a real vLLM CPU server that preempts, scraped into a store by the daemon.

The preempting server (``--num-gpu-blocks-override 24`` = 3,072 tokens of KV cache,
``--max-num-seqs 64``) gets 32 concurrent 256+512-token requests from tuner.load while the
daemon scrapes it every second. ``tuner suggest --since 10m`` (a separate process, reading the
store) must then recommend fewer sequences or more KV capacity, with the preemptions and the
full KV cache as evidence. Run under ``flock /tmp/tuner-vllm.lock``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.vllm import PREEMPTING_FLAGS, VllmServer
from tuner.config import load_config
from tuner.daemon import Daemon
from tuner.load import LengthDist, LoadSpec, run_load_sync, summarize

pytestmark = pytest.mark.e2e


def test_suggest_recommends_fewer_seqs_or_more_kv_after_preemptions(
    tmp_path: Path, vllm_preempting_server: VllmServer
) -> None:
    server = vllm_preempting_server
    cfg_file = tmp_path / "tuner.yaml"
    cfg_file.write_text(yaml.safe_dump(server.sidecar_settings(
        "tuner.db", launch={k: v for k, v in PREEMPTING_FLAGS.items() if k == "max-num-seqs"},
        slo={"ttft_p99_seconds": 1.0, "itl_p99_seconds": 0.1})))
    daemon = Daemon(load_config(cfg_file))
    daemon.start()
    try:
        time.sleep(3)
        spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=256),
                        output_tokens=LengthDist("fixed", mean=512),
                        concurrency=32, duration=90.0, max_requests=96, seed=11)
        summary = summarize(run_load_sync(server.url, server.model, spec))
        assert summary.errors == 0, summary
        time.sleep(3)  # the final counters
    finally:
        daemon.stop()

    out = subprocess.run(
        [sys.executable, "-m", "tuner", "suggest", "--since", "10m", "--config", str(cfg_file),
         "--format", "json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_id = {f["id"]: f for f in report["findings"]}
    assert "preemptions" in by_id, report["findings"]
    assert by_id["preemptions"]["value"] > 10  # per 1000 requests
    kv_fix = [r for r in report["recommendations"]
              if (r["flag"] == "--max-num-seqs" and r["direction"] == "down")
              or (r["flag"] == "--gpu-memory-utilization" and r["direction"] == "up")]
    assert kv_fix, report["recommendations"]
    seqs = next((r for r in kv_fix if r["flag"] == "--max-num-seqs"), None)
    if seqs is not None:
        assert seqs["current"] == 64 and seqs["suggested"] < 64
        assert seqs["evidence"][0]["finding"] == "preemptions"
        assert seqs["evidence"][0]["ranges"]
    # the server's real configuration came from vllm:cache_config_info
    cfg = report["targets"][0]["segments"][-1]["config"]
    assert cfg.get("num_gpu_blocks") == "24"
    # no DCGM here: partial, and the GPU-memory rule says why it was skipped
    assert report["partial"] is True
    assert any("DCGM" in m for m in report["targets"][0]["missing"])
    # the workload fingerprint saw the 256-token prompts and 512-token outputs
    wl = report["workload"]
    assert 200 <= wl["prompt_tokens"]["p50"] <= 500
    assert 500 <= wl["output_tokens"]["p50"] <= 1000

    table = subprocess.run(
        [sys.executable, "-m", "tuner", "suggest", "--since", "10m", "--config", str(cfg_file)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=True,
    ).stdout
    assert "--max-num-seqs" in table or "--gpu-memory-utilization" in table
    print(table)  # shown with -rP: the figures of this run
