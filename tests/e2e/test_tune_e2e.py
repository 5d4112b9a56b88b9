"""``tuner tune`` end to end on real vLLM CPU canaries of the tiny model.

One search (to keep the vLLM time short): baseline + 5 searched trials, with a memory knob
(num-gpu-blocks-override, 4..40 blocks of 128 tokens) whose low end cannot hold one
2,048-token sequence (16 blocks or fewer: vLLM keeps one block back). The baseline's
measured KV capacity bounds the space before the first candidate: those block counts are
ruled out and never launched, and the Latin-hypercube initial design covers the likely part
(max-num-seqs up to the load's 8 requests in flight). Searched trials stop early once their
token rate is worse than the incumbent's beyond the noise. The search is stopped with
SIGTERM in the middle of a trial and continued with ``--resume``. Checks: the baseline ran
first and its KV capacity was read; the design and the bound shaped the candidates; no point
was searched twice; an early stop kept partial figures; the resumed search repeated no
finished trial and the interrupted one left no canary behind; the outputs (with the report's
Search section) exist; and the flags in best.json start a server.

Run under ``flock /tmp/tuner-vllm.lock``. About 4-5 minutes on 2 cores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.vllm import vllm_env
from tuner.canary import LaunchSpec, LocalCanary
from tuner.store import Matcher, Store, is_stale
from tuner.tune import load_trials

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def processes_with(mark: str) -> list[int]:
    """Pids whose environment carries ``TUNER_E2E_MARK=<mark>`` (our canaries, nothing else)."""
    found = []
    needle = f"TUNER_E2E_MARK={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def persisted_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(
                "SELECT COUNT(*) FROM documents WHERE kind='tune_trial'").fetchone()[0])
    except sqlite3.Error:
        return 0


def tune_config(model_dir: Path, out: Path, mark: str) -> dict[str, Any]:
    return {
        "launch": {
            "model": str(model_dir),
            "served_model_name": "tiny-llama",
            "flags": {
                "max-model-len": 2048,
                "dtype": "bfloat16",
                "optimization-level": 0,
                "kv-cache-memory-bytes": 256 * 1024 * 1024,
                "max-num-seqs": 16,
                "num-gpu-blocks-override": 24,
            },
            "env": {**vllm_env("0"), "TUNER_E2E_MARK": mark},
        },
        "space": {
            "max-num-seqs": {"low": 2, "high": 64, "log": True},
            "gpu-memory-utilization": {"flag": "num-gpu-blocks-override", "type": "integer",
                                       "low": 4, "high": 40},
            "max-num-batched-tokens": None,
        },
        "objective": {"kind": "throughput", "dollars_per_hour": 1.0},
        "slo": {"ttft_p99_seconds": 10.0, "itl_p99_seconds": 1.0, "error_rate": 0.05},
        "load": {"prompt_tokens": {"kind": "uniform", "low": 96, "high": 160},
                 "output_tokens": 48, "concurrency": 8, "duration": 4, "warmup_requests": 2},
        "budget": {"trials": 5},
        "noise": {"finalists": 1, "repeats": 0, "confirm_rounds": 0,
                  "single_run_noise": 0.1, "early_stop_after": 0.3},
        "optimizer": {"estimator": "GP", "initial_points": 3, "seed": 8,
                      "initial_design": "lhs"},
        "canary": {"health_timeout": "150s", "scrape_interval": "1s"},
        "out": str(out),
    }


def test_search_fails_some_trials_survives_sigterm_resumes_and_best_flags_start(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    mark = uuid.uuid4().hex
    out = tmp_path / "out"
    cfg_path = tmp_path / "tune.yaml"
    cfg_path.write_text(yaml.safe_dump(tune_config(tiny_model_dir, out, mark)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "tuner", "tune", "--config", str(cfg_path)]

    # -- run until 3 trials are persisted and the 4th canary is up, then SIGTERM --------------
    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    db = out / "tune.db"
    deadline = time.monotonic() + 400
    while persisted_count(db) < 3:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "3 trials did not finish in time"
        time.sleep(1)
    while not processes_with(mark):  # the next trial's canary is starting: mid-trial
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    time.sleep(3)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 143, err
    assert "interrupted" in err and "--resume" in err
    assert processes_with(mark) == [], "a canary outlived the interrupted tuner"
    before = load_trials(out)
    assert [t.number for t in before] == list(range(len(before))) and len(before) >= 3

    # -- without --resume the out dir is refused, untouched ------------------------------------
    refused = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    assert [t.to_json() for t in load_trials(out)] == [t.to_json() for t in before]

    # -- resume to the end ---------------------------------------------------------------------
    resumed = subprocess.run([*argv, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert processes_with(mark) == []
    trials = load_trials(out)
    assert [t.to_json() for t in trials[: len(before)]] == [t.to_json() for t in before]
    assert [t.number for t in trials] == list(range(len(trials)))
    assert len(trials) >= 6

    # baseline first, in the same run, before every candidate
    assert trials[0].kind == "baseline" and trials[0].state == "ok"
    assert all(t.started >= trials[0].ended for t in trials[1:])
    assert trials[0].measurement is not None and trials[0].measurement.output_tok_per_s > 0

    # exactly the budget of searched trials; no finished point searched twice
    searched = [t for t in trials if t.kind == "search"]
    assert len(searched) == 5
    assert len({json.dumps(dict(t.point), sort_keys=True) for t in searched}) == 5

    # the baseline's KV capacity (cache_config_info: 24 blocks x 128) bounded the space:
    # fewer than 17 blocks cannot hold one 2,048-token sequence, so none was launched
    base = trials[0].measurement
    assert base.kv_capacity_tokens == 24 * 128 and base.kv_block_size == 128
    assert all(t.flags["num-gpu-blocks-override"] >= 17 for t in searched)
    assert not [t for t in trials if t.state == "failed"], [(t.point, t.reason) for t in trials]
    # the first three searched points are the Latin-hypercube design over the likely part:
    # max-num-seqs 2..8 (the load keeps 8 requests in flight), one point per third of the
    # log range, and one per third of 17..40 blocks
    design = sorted(searched[:3], key=lambda t: t.point["max-num-seqs"])
    assert design[0].point["max-num-seqs"] <= 3
    assert all(t.point["max-num-seqs"] <= 8 for t in design)
    thirds = sorted(int((t.point["gpu-memory-utilization"] - 17) / 24 * 3) for t in design)
    assert thirds == [0, 1, 2], [t.point for t in design]
    # early stops: partial figures kept, the window not spent recorded
    stopped = [t for t in trials if t.state == "stopped"]
    for t in stopped:
        assert t.kind == "search" and t.measurement is not None and t.measurement.requests > 0
        assert any(n.startswith("stopped early after") for n in t.notes)
        assert 0 < t.timings["saved_s"] < 4
    ok = [t for t in trials if t.state == "ok"]
    # a stop fires only below the incumbent's rate beyond the noise, so no stopped trial ran
    # faster than the best completed one (whether any stops depends on the machine's noise)
    best_rate = max(t.measurement.output_tok_per_s for t in ok if t.measurement is not None)
    for t in stopped:
        assert t.measurement is not None and t.measurement.output_tok_per_s < best_rate
    for t in ok + stopped:  # server-side signals came from scraping the canary
        assert t.measurement is not None
        assert t.measurement.server_generation_tokens > 0
    # the canaries were scraped through the same ingest step as production targets: up and
    # scrape_* per trial, KV usage through the production signal, every series stale once
    # its trial ended
    with Store(out / "tune.db", read_only=True) as store:
        for t in ok:
            inst = [Matcher("instance", "=", f"trial-{t.number}")]
            (up,) = store.select([Matcher("__name__", "=", "up"), *inst], 0, 2**62)
            assert len(up.values) >= 3 and is_stale(up.values[-1])
            assert list(up.values[:-1]) == [1.0] * (len(up.values) - 1)
            (n,) = store.select([Matcher("__name__", "=", "scrape_samples_scraped"), *inst],
                                0, 2**62)
            assert n.values[0] > 50
            gen = store.select([Matcher("__name__", "=", "vllm:generation_tokens_total"), *inst],
                               0, 2**62)
            assert gen and all(is_stale(s.values[-1]) for s in gen)
            # KV usage through the production signal, when a scrape caught a request running;
            # on a saturated 2-core host vLLM CPU can answer every scrape between steps (all
            # zeros while tokens flow), and then the figure is unknown and the trial says so
            m = t.measurement
            assert m is not None and m.running_peak >= 0
            if m.running_peak > 0:
                assert 0 < m.kv_usage_max <= 1, (t.number, m)
            else:
                assert math.isnan(m.kv_usage_max), (t.number, m)
                assert any(n.startswith("KV usage unknown") for n in t.notes), t.notes

    # -- outputs ---------------------------------------------------------------------------
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    report = (out / "report.md").read_text()
    assert "vllm serve" in report and "## Search" in report
    assert "ruled out: --num-gpu-blocks-override below 17" in report
    assert "initial design: lhs, 3 points over the likely part" in report
    assert "start-up: " in report
    if stopped:
        assert f"stopped early: {len(stopped)} trial" in report
    for png in ("convergence.png", "throughput_vs_ttft.png", "objective_vs_knobs.png"):
        assert (out / png).stat().st_size > 5000
    best = json.loads((out / "best.json").read_text())
    assert best["slo_met"] is True and best["flags"]["num-gpu-blocks-override"] >= 17
    # the workload it was tuned for: the baseline canary's own histograms (96-160 prompt
    # tokens, 48 output), and no arrival rate (a closed loop says nothing about production's)
    workload = best["workload"]
    assert 96 <= workload["prompt_tokens"]["p50"] <= 200, workload["prompt_tokens"]
    assert 20 <= workload["output_tokens"]["p50"] <= 50, workload["output_tokens"]
    assert workload["request_rate_per_s"] is None and workload["requests"] > 0

    # -- the flags in best.json start a server ------------------------------------------------
    spec = LaunchSpec(model=str(tiny_model_dir), flags=best["flags"],
                      served_model_name="tiny-llama", env=vllm_env("0"))
    with LocalCanary(spec, tmp_path / "best.log", health_timeout=150) as handle:
        # First a request shaped like the tuned load (the tuner warms every canary up that
        # way): vLLM CPU 0.32 at -O0 kills its worker when the very first request of a fresh
        # server is a 2-token prompt (checked by hand with these flags: "hello" first -> 500,
        # worker died; a 600-character prompt first, then "hello" -> both 200). vLLM's, not
        # the flags'.
        warm = httpx.post(handle.url + "/v1/completions", trust_env=False, timeout=60,
                          json={"model": "tiny-llama", "prompt": "hello " * 100, "max_tokens": 4})
        assert warm.status_code == 200, warm.text[:500]
        r = httpx.post(handle.url + "/v1/completions", trust_env=False, timeout=60,
                       json={"model": "tiny-llama", "prompt": "hello", "max_tokens": 4})
        assert r.status_code == 200, (best["flags"], r.text[:500],
                                      (tmp_path / "best.log").read_text()[-3000:])
        assert r.json()["usage"]["completion_tokens"] == 4
        metrics = httpx.get(handle.metrics_url, trust_env=False, timeout=10).text
        blocks = best["flags"]["num-gpu-blocks-override"]
        assert f'num_gpu_blocks="{blocks}"' in metrics


def test_load_generator_errors_fail_the_trial_with_the_reason(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every request is refused by a real vLLM (prompts longer than max-model-len): the
    baseline is a failed trial with reason load_errors, the search stops there, and the
    record keeps the numbers and the explanation."""
    from tuner.cli import main

    mark = uuid.uuid4().hex
    data = tune_config(tiny_model_dir, tmp_path / "out", mark)
    data["launch"]["flags"]["max-model-len"] = 512
    data["launch"]["flags"]["num-gpu-blocks-override"] = 16
    data["load"] = {"prompt_tokens": 1024, "output_tokens": 8, "concurrency": 4, "duration": 2}
    cfg_path = tmp_path / "tune.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    code = main(["tune", "--config", str(cfg_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "the baseline (trial 0) failed (load_errors)" in err
    assert "requests failed and 0/" in err and "(errors 100%, 20% allowed; 0 succeeded)" in err
    (baseline,) = load_trials(tmp_path / "out")
    assert baseline.state == "failed" and baseline.reason == "load_errors"
    assert baseline.measurement is not None and baseline.measurement.errors > 0
    assert processes_with(mark) == []
