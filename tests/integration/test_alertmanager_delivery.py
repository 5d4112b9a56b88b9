"""Alerts reach a real Alertmanager (v2 API): delivery, resolution, down-then-up, two AMs,
and the whole sidecar (scrape -> store -> shipped rules -> notify) against a real one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.alertmanager import AlertmanagerProcess
from tests.support.common import free_port, stop_process, tail, wait_http
from tests.support.dcgm import DcgmExporter
from tuner.cli import main
from tuner.config import load_config
from tuner.daemon import Daemon
from tuner.errors import TunerError
from tuner.notify import Notifier
from tuner.rules import AlertState

pytestmark = pytest.mark.integration


def _alert(name: str, desc: str = "d", resolved_at: float = 0.0) -> AlertState:
    now = time.time()
    return AlertState(
        alertname=name, group="g", source="f", labels={"alertname": name, "severity": "warning"},
        annotations={"description": desc}, state="resolved" if resolved_at else "firing",
        value=1.0, active_at=now - 60, fired_at=now - 30, resolved_at=resolved_at,
        valid_until=now + 240, generator_url="http://127.0.0.1:9464/graph?g0.expr=up",
    )


def _named(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda a: a["labels"].get("alertname") == name


def test_alerts_arrive_and_resolve(alertmanager: AlertmanagerProcess) -> None:
    with Notifier([alertmanager.url]) as n:
        n.send([_alert("TunerTestFiring", "first")])
        got = alertmanager.wait_for_alert(_named("TunerTestFiring"), timeout=15)
        assert got["labels"] == {"alertname": "TunerTestFiring", "severity": "warning"}
        assert got["annotations"] == {"description": "first"}
        assert got["generatorURL"] == "http://127.0.0.1:9464/graph?g0.expr=up"
        assert got["status"]["state"] == "active"
        # resolution: endsAt in the past -> Alertmanager no longer lists it as active
        n.send([_alert("TunerTestFiring", "first", resolved_at=time.time() - 1)])
        alertmanager.wait_until_gone(_named("TunerTestFiring"), timeout=15)
        assert n.flush(10)
        assert n.stats()[0].sent == 2


def test_alertmanager_down_then_up_receives_the_current_alerts(
    alertmanager: AlertmanagerProcess,
) -> None:
    alertmanager.stop()
    with Notifier([alertmanager.url], timeout=1.0, backoff_initial=0.05, backoff_max=0.5) as n:
        n.send([_alert("TunerWhileDown", "old state")])
        # an outage: many failed attempts, back-off reaches its cap, nothing is lost
        deadline = time.monotonic() + 20
        while n.stats()[0].failed_attempts < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        n.send([_alert("TunerWhileDown", "current state"), _alert("TunerAlsoFiring")])
        st = n.stats()[0]
        assert st.failed_attempts >= 8 and st.queued == 2 and st.sent == 0
        alertmanager.start()
        got = alertmanager.wait_for_alert(_named("TunerWhileDown"), timeout=20)
        assert got["annotations"]["description"] == "current state"  # not the stale copy
        alertmanager.wait_for_alert(_named("TunerAlsoFiring"), timeout=10)
        assert n.flush(10)
        st = n.stats()[0]
        assert (st.sent, st.queued, st.dropped, st.consecutive_failures) == (2, 0, 0, 0)


def test_one_alertmanager_down_does_not_delay_the_other(
    alertmanager_factory: Callable[[], AlertmanagerProcess],
) -> None:
    up, down = alertmanager_factory(), alertmanager_factory()
    down.stop()
    with Notifier([down.url, up.url], timeout=1.0, backoff_initial=0.1, backoff_max=0.5) as n:
        n.send([_alert("TunerTwoAms")])
        up.wait_for_alert(_named("TunerTwoAms"), timeout=10)
        assert n.stats()[0].sent == 0 and n.stats()[1].sent == 1
        down.start()
        down.wait_for_alert(_named("TunerTwoAms"), timeout=15)


# -- the sidecar end to end -----------------------------------------------------------------------


def _config(tmp_path: Path, dcgm_url: str, am_url: str, rule_files: list[str] | None = None,
            port: int | None = None) -> Path:
    cfg = {
        "targets": [{"name": "gpu-node", "url": dcgm_url, "kind": "dcgm"}],
        "scrape_interval": "1s",
        "evaluation_interval": "1s",
        "store": {"path": str(tmp_path / "tuner.db")},
        "listen": f"127.0.0.1:{port or free_port()}",
        "alertmanagers": [{"url": am_url, "timeout": "2s"}],
    }
    if rule_files is not None:
        cfg["rule_files"] = rule_files
    p = tmp_path / "tuner.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_sidecar_fires_shipped_gpu_xid_rule_into_alertmanager(
    tmp_path: Path, alertmanager: AlertmanagerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    dcgm = DcgmExporter(gpus=2).start()
    cfg_path = _config(tmp_path, dcgm.url, alertmanager.url)  # no rule_files: shipped rules
    daemon = Daemon(load_config(cfg_path))
    try:
        daemon.start()
        time.sleep(3)
        assert daemon.alerting.engine.alerts() == []  # healthy GPUs: silent
        dcgm.xid = 79
        got = alertmanager.wait_for_alert(_named("GpuXidError"), timeout=30)
        labels = got["labels"]
        assert labels["severity"] == "critical" and labels["instance"] == "gpu-node"
        assert labels["hostname"] == "node-1" and labels["gpu"] in ("0", "1")
        assert got["annotations"]["description"] == (
            f"GPU {labels['gpu']} (NVIDIA H100 80GB HBM3) on node-1 reported XID 79.")
        assert got["annotations"]["runbook_url"] == "rules/RUNBOOK.md#gpuxiderror"
        assert len([a for a in alertmanager.alerts() if _named("GpuXidError")(a)]) == 2
        # ALERTS-style series on the sidecar's own /metrics
        host, port = daemon.address
        metrics = httpx.get(f"http://{host}:{port}/metrics", trust_env=False).text
        assert 'tuner_alerts{' in metrics and 'alertname="GpuXidError"' in metrics
        assert 'alertstate="firing"' in metrics
        assert f'tuner_notifications_sent_total{{alertmanager="{alertmanager.url}"}}' in metrics
        # `tuner alerts` (another process would do the same) lists them from the store
        assert main(["alerts", "--config", str(cfg_path), "--format", "json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        firing = [a for a in listed if a["alertname"] == "GpuXidError"]
        assert len(firing) == 2 and {a["state"] for a in firing} == {"firing"}
        active_at = {a["labels"]["gpu"]: a["active_at"] for a in firing}
        assert main(["alerts", "--config", str(cfg_path)]) == 0
        assert "GpuXidError" in capsys.readouterr().out
    finally:
        daemon.stop()
    # a restarted daemon keeps activeAt
    daemon = Daemon(load_config(cfg_path))
    try:
        daemon.start()
        time.sleep(2.5)
        again = {a.labels["gpu"]: a.active_at for a in daemon.alerting.engine.alerts()
                 if a.alertname == "GpuXidError" and a.state == "firing"}
        assert again == active_at
        # the XID clears: keep_firing_for (15m) keeps the alert firing, as promtool tests say
        dcgm.xid = 0
        time.sleep(3)
        assert {a.state for a in daemon.alerting.engine.alerts()
                if a.alertname == "GpuXidError"} == {"firing"}
    finally:
        daemon.stop()
        dcgm.close()


def test_daemon_refuses_to_start_with_bad_rules(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n- name: g\n  rules:\n  - {alert: A, expr: 'up == 0', for: soon}\n")
    cfg = _config(tmp_path, "http://127.0.0.1:1/metrics", "http://127.0.0.1:2", [str(bad)])
    with pytest.raises(TunerError) as e:
        Daemon(load_config(cfg))
    assert str(bad) in str(e.value) and "group 'g'" in str(e.value) and "alert 'A'" in str(e.value)
    proc = subprocess.run([sys.executable, "-m", "tuner", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "for:" in proc.stderr and str(bad) in proc.stderr


def test_sighup_reload_keeps_last_good_rules(tmp_path: Path,
                                             alertmanager: AlertmanagerProcess) -> None:
    dcgm = DcgmExporter(gpus=1).start()
    rules = tmp_path / "rules.yaml"
    good = ("groups:\n- name: g\n  rules:\n  - alert: TunerGpuSeen\n"
            "    expr: DCGM_FI_DEV_SM_CLOCK > 0\n    labels: {severity: info}\n")
    rules.write_text(good)
    port = free_port()
    cfg = _config(tmp_path, dcgm.url, alertmanager.url, [str(rules)], port=port)
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tuner", "run", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc, log)
        alertmanager.wait_for_alert(_named("TunerGpuSeen"), timeout=30)
        rules.write_text(good.replace("expr: DCGM_FI_DEV_SM_CLOCK > 0", "expr: rate(x[5m]"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "keeping the last good rules" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert "rules reload failed, keeping the last good rules" in text, tail(log)
        assert str(rules) in text and "group 'g'" in text
        assert proc.poll() is None
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
        assert "tuner_rules_last_reload_successful 0.0" in metrics
        assert 'alertname="TunerGpuSeen"' in metrics  # the old rules still evaluate
        rules.write_text(good.replace("TunerGpuSeen", "TunerGpuSeenAgain"))
        proc.send_signal(signal.SIGHUP)
        alertmanager.wait_for_alert(_named("TunerGpuSeenAgain"), timeout=30)
        assert "rules reloaded: 1 rules in 1 groups" in log.read_text()
    finally:
        stop_process(proc)
        dcgm.close()
