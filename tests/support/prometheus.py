"""A real Prometheus 2.42 for tests: start it on a loopback port, backfill history, query it.

Usage (the ``prometheus_factory`` fixture starts servers and stops them at teardown)::

    def test_x(prometheus_factory, tmp_path):
        points = [("up", (("job", "a"),), 1_700_000_000_000, 1.0), ...]  # (name, labels, ts_ms, v)
        prom = prometheus_factory(points=points, rule_files=[Path("rules/vllm.yaml")])
        data = prom.query("up", ts=1_700_000_000)       # the "data" of /api/v1/query
        vec = prom.instant_vector("up", ts=...)          # [(labels dict, float), ...]

* ``points`` uses the same shape as ``Store.append_points`` — ``(name, labels, ts_ms, value)``
  with labels a tuple of pairs or a mapping — so one list feeds both the embedded store and
  Prometheus. They are written as OpenMetrics text (timestamps in seconds, ``# EOF``) and turned
  into TSDB blocks with ``promtool tsdb create-blocks-from openmetrics FILE DIR`` before the
  server starts (``backfill``). Stale markers cannot be expressed in OpenMetrics, so a
  backfilled series simply ends; ordinary NaN values are kept.
* Backfilled data must lie in the past (blocks newer than the head would overlap it); use
  timestamps at least a few hours before ``time.time()``. The server runs with a 100-year
  retention so old blocks are never deleted.
* ``rule_files`` are copied into the server's config; Prometheus evaluates them every
  ``evaluation_interval`` (``prom.rule_groups()`` returns ``/api/v1/rules``;
  ``prom.metrics_text()`` returns its own ``/metrics``, e.g. for
  ``prometheus_rule_group_last_duration_seconds``).
* ``query`` raises ``PrometheusQueryError`` (with Prometheus's message) on an error answer.
* A missing ``prometheus``/``promtool`` binary makes the fixture fail, never skip.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.common import free_port, stop_process, tail, wait_http

Point = tuple[str, Any, int, float]


class PrometheusQueryError(Exception):
    """Prometheus answered a query with ``status: error``; ``error_type`` is its errorType."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


def require_binary(name: str) -> str:
    """Path of a binary; fails the test (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install -y prometheus)", pytrace=False)
    return path


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _labels_items(labels: Any) -> list[tuple[str, str]]:
    items = labels.items() if isinstance(labels, Mapping) else labels
    return sorted((str(k), str(v)) for k, v in items if v != "")


def write_openmetrics(path: Path, points: Iterable[Point]) -> int:
    """Write points as OpenMetrics text grouped by metric name and series, time-ordered.

    Returns the number of samples written. Points of one series at the same timestamp keep
    the last value (as the store does).
    """
    series: dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]] = {}
    for name, labels, ts_ms, value in points:
        series.setdefault((name, tuple(_labels_items(labels))), {})[int(ts_ms)] = float(value)
    n = 0
    with path.open("w") as f:
        by_name: dict[str, list[tuple[tuple[str, str], ...]]] = {}
        for name, lbls in series:
            by_name.setdefault(name, []).append(lbls)
        for name in sorted(by_name):
            f.write(f"# TYPE {name} unknown\n")
            for lbls in sorted(by_name[name]):
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in lbls)
                head = f"{name}{{{inner}}}" if inner else name
                pts = series[(name, lbls)]
                for ts in sorted(pts):
                    f.write(f"{head} {_fmt_value(pts[ts])} {ts / 1000:.3f}\n")
                    n += 1
        f.write("# EOF\n")
    return n


def backfill(points: Iterable[Point], data_dir: Path, work_dir: Path) -> int:
    """Turn points into TSDB blocks in ``data_dir`` with promtool; returns samples written."""
    promtool = require_binary("promtool")
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    om = work_dir / "backfill.om.txt"
    n = write_openmetrics(om, points)
    proc = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(om), str(data_dir)],
        capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"promtool backfill failed ({proc.returncode}):\n{proc.stdout}\n"
                           f"{proc.stderr}")
    return n


@dataclass
class PrometheusServer:
    """A running Prometheus process on 127.0.0.1."""

    url: str
    port: int
    data_dir: Path
    config_file: Path
    log: Path
    proc: subprocess.Popen[bytes]
    client: httpx.Client = field(repr=False)

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        r = self.client.get(f"{self.url}{path}", params=params)
        try:
            body = r.json()
        except ValueError:
            raise RuntimeError(f"{path}: HTTP {r.status_code}: {r.text[:500]}") from None
        if body.get("status") != "success":
            raise PrometheusQueryError(body.get("errorType", ""), body.get("error", r.text))
        return body["data"]

    def query(self, expr: str, ts: float) -> dict[str, Any]:
        """The ``data`` object of ``/api/v1/query?query=expr&time=ts``."""
        data: dict[str, Any] = self._get("/api/v1/query", {"query": expr, "time": repr(ts)})
        return data

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict[str, Any]:
        data: dict[str, Any] = self._get("/api/v1/query_range", {
            "query": expr, "start": repr(start), "end": repr(end), "step": repr(step)})
        return data

    def instant_vector(self, expr: str, ts: float) -> list[tuple[dict[str, str], float]]:
        """An instant query's vector as ``[(labels, value)]`` (scalar: one entry, no labels)."""
        data = self.query(expr, ts)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise RuntimeError(f"{expr}: result type {data['resultType']}")
        return [(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return groups

    def metrics_text(self) -> str:
        return self.client.get(f"{self.url}/metrics").text

    def stop(self) -> None:
        stop_process(self.proc)
        self.client.close()


def start_prometheus(
    workdir: Path,
    points: Iterable[Point] | None = None,
    rule_files: Sequence[Path] = (),
    evaluation_interval: str = "15s",
    scrape_configs: list[dict[str, Any]] | None = None,
    extra_args: Sequence[str] = (),
    data_dir: Path | None = None,
    timeout: float = 60.0,
) -> PrometheusServer:
    """Start ``prometheus`` on a free loopback port; backfill ``points`` first if given."""
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or workdir / "data"
    if points is not None:
        backfill(points, data_dir, workdir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rules_dir = workdir / "rules"
    rules_dir.mkdir(exist_ok=True)
    copied = []
    for i, rf in enumerate(rule_files):
        dst = rules_dir / f"{i:02d}-{Path(rf).name}"
        shutil.copyfile(rf, dst)
        copied.append(str(dst))
    config = {
        "global": {"evaluation_interval": evaluation_interval, "scrape_interval": "15s"},
        "rule_files": copied,
        "scrape_configs": scrape_configs or [],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    cmd = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=100y",
        "--web.enable-lifecycle",
        *extra_args,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", timeout, proc, log)
    except Exception:
        stop_process(proc)
        raise
    client = httpx.Client(timeout=120, trust_env=False)
    return PrometheusServer(url, port, data_dir, config_file, log, proc, client)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Call with ``start_prometheus``'s keyword arguments; every server is stopped afterwards."""
    started: list[PrometheusServer] = []
    count = 0

    def start(**kwargs: Any) -> PrometheusServer:
        nonlocal count
        count += 1
        server = start_prometheus(tmp_path / f"prometheus-{count}", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        try:
            server.stop()
        except Exception:  # keep stopping the others
            print(tail(server.log))


def wait_for_rule_evaluation(server: PrometheusServer, timeout: float = 60.0) -> None:
    """Block until every rule group has been evaluated at least once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        groups = server.rule_groups()
        if groups and all(g.get("lastEvaluation", "").startswith("20") and
                          not g["lastEvaluation"].startswith("0001") for g in groups):
            return
        time.sleep(0.5)
    raise RuntimeError(f"rule groups not evaluated within {timeout}s\n{tail(server.log)}")
