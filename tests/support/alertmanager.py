"""A real Alertmanager (Debian ``prometheus-alertmanager``) for tests, on a loopback port.

Usage::

    def test_x(alertmanager):
        url = alertmanager.url                      # http://127.0.0.1:PORT
        alerts = alertmanager.alerts()              # GET /api/v2/alerts (active, unresolved)
        a = alertmanager.wait_for_alert(lambda a: a["labels"]["alertname"] == "X", timeout=30)
        alertmanager.stop(); alertmanager.start()   # same port and storage: down, then up

``alertmanager_factory()`` starts more instances. Clustering is disabled
(``--cluster.listen-address=``), storage lives in the test's tmp dir, the single route goes
to a receiver with no integrations and short group timers. A missing binary fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.common import free_port, stop_process, tail, wait_http

CONFIG = """\
route:
  receiver: "null"
  group_by: ["alertname"]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
"""


def alertmanager_binary() -> str:
    path = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if path is None:
        pytest.fail("prometheus-alertmanager is not installed "
                    "(apt-get install prometheus-alertmanager)")
    return path


class AlertmanagerProcess:
    """One Alertmanager process; ``stop()``/``start()`` keep its port and storage."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(CONFIG)
        self.log = workdir / "alertmanager.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> AlertmanagerProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        cmd = [
            alertmanager_binary(),
            f"--config.file={self.config}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/-/ready", timeout, self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def alerts(self, **params: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (active, not yet resolved alerts)."""
        r = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5, trust_env=False)
        r.raise_for_status()
        data: list[dict[str, Any]] = r.json()
        return data

    def wait_for_alert(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                       poll: float = 0.25) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = self.alerts()
            for a in seen:
                if predicate(a):
                    return a
            time.sleep(poll)
        raise AssertionError(
            f"no matching alert in {self.url} after {timeout}s; it holds "
            f"{[a.get('labels') for a in seen]}\n{tail(self.log)}"
        )

    def wait_until_gone(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                        poll: float = 0.25) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(predicate(a) for a in self.alerts()):
                return
            time.sleep(poll)
        raise AssertionError(f"matching alert still active in {self.url} after {timeout}s")


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[[], AlertmanagerProcess]]:
    started: list[AlertmanagerProcess] = []

    def make() -> AlertmanagerProcess:
        am = AlertmanagerProcess(tmp_path / f"alertmanager-{len(started)}")
        started.append(am)
        return am.start()

    yield make
    for am in started:
        am.stop()


@pytest.fixture
def alertmanager(alertmanager_factory: Callable[[], AlertmanagerProcess]) -> AlertmanagerProcess:
    return alertmanager_factory()
