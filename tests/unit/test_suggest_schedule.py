"""Scheduled suggest inside the daemon: a cron job that keeps the last N reports in the store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.history import Scenario, build_store, day_start
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.errors import ConfigError
from tuner.suggest import latest_reports
from tuner.workload import iso

START = day_start(time.time())


def test_daemon_runs_suggest_on_its_cron_schedule(tmp_path: Path) -> None:
    sc = Scenario(start=START, hours=18.0, step=60.0)
    build_store(tmp_path / "tuner.db", sc).close()
    cfg = parse_config({"store": {"path": "tuner.db", "retention": "30d"},
                        "listen": "127.0.0.1:0",
                        "launch": {"max-num-seqs": 256},
                        "suggest": {"schedule": "*/15 * * * *", "since": "6h", "keep": 2}},
                       str(tmp_path / "tuner.yaml"))
    now = [START + 16 * 3600.0]
    daemon = Daemon(cfg, clock=lambda: now[0])
    try:
        daemon.start()
        job = daemon.scheduler.get_job("suggest")
        assert job is not None
        assert str(job.trigger.fields[6]) == "*/15"  # minute field of the cron trigger
        for hour in (16, 17, 18):
            now[0] = START + hour * 3600.0
            daemon.scheduled_suggest()
        reports = latest_reports(daemon.store)
    finally:
        daemon.stop()
    assert [r["window"]["end"] for r in reports] == [iso(START + 18 * 3600.0),
                                                     iso(START + 17 * 3600.0)]
    # 10:00-16:00 held the storm: the stored report recommends fewer sequences
    first = reports[-1]
    assert any(r["flag"] == "--max-num-seqs" and r["direction"] == "down"
               for r in first["recommendations"])


def test_bad_cron_expression_refuses_to_start(tmp_path: Path) -> None:
    cfg = parse_config({"store": {"path": "tuner.db"}, "listen": "127.0.0.1:0",
                        "suggest": {"schedule": "61 * * * *"}}, str(tmp_path / "tuner.yaml"))
    with pytest.raises(ConfigError, match=r"suggest.schedule: '61 \* \* \* \*' is not a valid"):
        Daemon(cfg)
    assert not (tmp_path / "tuner.db").exists()  # nothing was opened
