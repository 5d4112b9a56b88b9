"""The daemon's tuning window: config, cron job, progress on /metrics, failure handling.

The search here uses a base command that exits at once (so the baseline fails and the search
stops, as `tuner tune` does); the real search on vLLM CPU canaries is tests/e2e/test_tune_e2e.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.errors import ConfigError

TUNE_YAML = f"""
launch:
  command: [{sys.executable!r}, "-c", "import sys; print('no GPU today'); sys.exit(3)"]
  model: /nonexistent/model
  flags: {{max-num-seqs: 8}}
space:
  max-num-seqs: {{low: 2, high: 16}}
load:
  prompt_tokens: 32
  output_tokens: 8
  concurrency: 2
  duration: 1
budget: {{trials: 2}}
canary: {{backend: local, health_timeout: 20s}}
"""


def daemon_config(tmp_path: Path, tune: dict[str, object]):  # type: ignore[no-untyped-def]
    (tmp_path / "tune.yaml").write_text(TUNE_YAML)
    return parse_config(
        {
            "targets": [],
            "store": {"path": "tuner.db"},
            "listen": "127.0.0.1:0",
            "tune": tune,
        },
        str(tmp_path / "tuner.yaml"),
    )


def test_tuning_window_runs_and_publishes_progress(tmp_path: Path) -> None:
    cfg = daemon_config(tmp_path, {"config": "tune.yaml", "schedule": "0 3 * * *",
                                   "trials": 2, "out": "runs"})
    assert cfg.tune.config == tmp_path / "tune.yaml" and cfg.tune.out == tmp_path / "runs"
    daemon = Daemon(cfg)
    daemon.start()
    try:
        job = daemon.scheduler.get_job("tune")
        assert job is not None and job.next_run_time.hour == 3
        assert daemon.tuning is not None
        out = daemon.tuning.run_once()  # what the cron job runs
        assert out is not None and out.parent == tmp_path / "runs"
        host, port = daemon.address
        text = httpx.get(f"http://{host}:{port}/metrics", trust_env=False).text
        assert 'tuner_tune_runs_total{result="failed"} 1.0' in text
        assert 'tuner_tune_trials_total{state="failed"} 1.0' in text  # the baseline
        assert "tuner_tune_best_objective NaN" in text
        assert "tuner_tune_last_run_timestamp_seconds" in text
        # the failed baseline was persisted with its log tail
        assert (out / "tune.db").exists()
    finally:
        daemon.stop()


def test_stopped_daemon_does_not_start_a_search(tmp_path: Path) -> None:
    cfg = daemon_config(tmp_path, {"config": "tune.yaml", "schedule": "0 3 * * *"})
    daemon = Daemon(cfg)
    daemon.start()
    daemon.stop()
    assert daemon.tuning is not None and daemon.tuning.run_once() is None


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"schedule": "0 3 * * *"}, "tune.config: is required"),
        ({"config": "tune.yaml"}, "tune.schedule: is required"),
        ({"config": "tune.yaml", "schedule": "nightly"}, "tune.schedule"),
        ({"config": "tune.yaml", "schedule": "0 3 * * *", "trials": 0}, "tune.trials"),
        ({"config": "tune.yaml", "schedule": "0 3 * * *", "when": 1}, "tune.when"),
        ({"config": "tune.yaml", "schedule": "99 3 * * *"}, "not a valid cron expression"),
        ({"config": "missing.yaml", "schedule": "0 3 * * *"}, "missing.yaml"),
    ],
)
def test_bad_tuning_window_refuses_to_start(tmp_path: Path, tune: dict[str, object],
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Daemon(daemon_config(tmp_path, tune))
    assert not (tmp_path / "tuner.db").exists()  # refused before the store was opened


def test_after_drift_the_next_window_tunes_against_the_live_workload(tmp_path: Path) -> None:
    import json

    cfg = daemon_config(tmp_path, {"config": "tune.yaml", "schedule": "0 3 * * *",
                                   "trials": 2, "out": "runs"})
    assert cfg.drift.enabled  # a tuning window turns the drift check on (following its runs)
    daemon = Daemon(cfg)
    daemon.start()
    try:
        assert daemon.tuning is not None and daemon.drift is not None
        assert daemon.tuning.run_once() is not None  # no drift: the tune config's own load
        assert daemon.tuning.last_tune_config.load["prompt_tokens"] == 32
        live = {"prompt_tokens": {"buckets": [{"lo": 1000, "hi": 2000, "p": 1.0}]},
                "output_tokens": {"buckets": [{"lo": 10, "hi": 20, "p": 1.0}]},
                "request_rate_per_s": 3.0}
        daemon.tuning.live_workload = lambda: live  # what the drift check hands over
        out = daemon.tuning.run_once()
        assert out is not None and json.loads((out / "workload.json").read_text()) == live
        load = daemon.tuning.last_tune_config.load
        assert load == {"concurrency": 2, "duration": 1, "workload": str(out / "workload.json")}
        assert "drifted" in daemon.tuning.last_workload
    finally:
        daemon.stop()
