"""The sidecar's Prometheus API against a real Prometheus holding the same data, with real clients.

The points of the PromQL differential test (three vLLM servers with V1, V0 and both metric
names, 8 DCGM GPUs, a counter reset, a gap, a target that stops, NaNs) go into a store that a
real ``Daemon`` serves, and via ``promtool tsdb create-blocks-from openmetrics`` into a real
Prometheus 2.42. Then:

* the same instant and range queries (the battery and every shipped dashboard query) go to
  both ``/api/v1/query`` and ``/api/v1/query_range`` and the JSON is compared: result types,
  label sets, series order, timestamps exactly, values within 1e-9 (NaN equals NaN), and the
  same error type and status code where Prometheus refuses;
* the same bad requests (malformed queries, unknown functions, bad times and steps, too many
  points, a range of years) get the same status code and ``errorType`` from both, and the same
  message where tuner words it as Prometheus does;
* ``promtool query instant|range|series|labels`` print the same thing against both;
* ``prometheus-api-client`` reads query, range, labels, label values and series from both;
* ``/api/v1/metadata`` of a daemon and of a Prometheus scraping the same (DCGM stand-in) target
  agree;
* a query past its deadline is ``timeout``/503, the daemon goes on answering, and a second
  daemon keeps scraping its target while queries run.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_api_client import PrometheusConnect

from tests.integration.test_promql_differential import (
    BATTERY,
    HOURS,
    dashboard_expressions,
    generate,
)
from tests.support.dcgm import DcgmExporter, ScriptedTarget
from tests.support.prometheus import PrometheusServer, require_binary, start_prometheus
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.store import Matcher, Store

pytestmark = pytest.mark.integration


@dataclass
class Sides:
    sidecar: str
    prom: PrometheusServer
    daemon: Daemon
    t0: int
    store_file: Path

    @property
    def end(self) -> int:
        return self.t0 + HOURS * 3600


def _daemon(tmp: Path, store_file: Path, targets: list[dict[str, Any]] | None = None,
            **extra: Any) -> Daemon:
    cfg = parse_config({
        "targets": targets or [], "scrape_interval": "1s", "scrape_timeout": "500ms",
        "store": {"path": str(store_file), "retention": "3650d"},
        "listen": "127.0.0.1:0", **extra,
    }, str(tmp / "tuner.yaml"))
    daemon = Daemon(cfg)
    daemon.start()
    return daemon


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sides]:
    tmp = tmp_path_factory.mktemp("query-api")
    t0 = (int(time.time()) // 3600 - 30) * 3600  # well in the past, hour-aligned
    points = generate(t0)
    store_file = tmp / "tuner.db"
    with Store(store_file, retention=3650 * 86400.0) as store:
        store.append_points(points)
    prom = start_prometheus(tmp / "prometheus", points=points)
    daemon = _daemon(tmp, store_file)
    host, port = daemon.address
    try:
        yield Sides(f"http://{host}:{port}", prom, daemon, t0, store_file)
    finally:
        daemon.stop()
        prom.stop()


def _get(url: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{url}{path}", params=params, timeout=120)
    return r.status_code, r.json()


def _close(a: str, b: str) -> bool:
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def _same_points(ours: list[list[Any]], theirs: list[list[Any]], what: str) -> None:
    assert [p[0] for p in ours] == [p[0] for p in theirs], f"{what}: timestamps differ"
    for (t, a), (_, b) in zip(ours, theirs, strict=True):
        assert _close(a, b), f"{what} @ {t}: tuner {a} != Prometheus {b}"


def compare(s: Sides, path: str, params: dict[str, Any], ordered: bool = True) -> int:
    """Send one request to both; the answers must agree. Returns the number of values compared."""
    status, ours = _get(s.sidecar, path, params)
    pstatus, theirs = _get(s.prom.url, path, params)
    what = f"{path} {params}"
    if theirs["status"] == "error":
        assert ours["status"] == "error", f"{what}: Prometheus refused ({theirs}), tuner answered"
        assert (status, ours["errorType"]) == (pstatus, theirs["errorType"]), (what, ours, theirs)
        return 0
    assert ours["status"] == "success" and status == 200, (what, ours)
    od, td = ours["data"], theirs["data"]
    assert od["resultType"] == td["resultType"], what
    if td["resultType"] in ("scalar", "string"):
        assert od["result"][0] == td["result"][0]
        assert _close(od["result"][1], td["result"][1]) if td["resultType"] == "scalar" else \
            od["result"][1] == td["result"][1]
        return 1
    om, tm = [r["metric"] for r in od["result"]], [r["metric"] for r in td["result"]]
    if ordered:
        assert om == tm, f"{what}: series (or their order) differ:\n{om[:4]}\n{tm[:4]}"
    else:
        key = lambda m: sorted(m.items())  # noqa: E731
        assert sorted(om, key=key) == sorted(tm, key=key), f"{what}: label sets differ"
    by_metric = {tuple(sorted(r["metric"].items())): r for r in od["result"]}
    n = 0
    for r in td["result"]:
        mine = by_metric[tuple(sorted(r["metric"].items()))]
        if td["resultType"] == "vector":
            _same_points([mine["value"]], [r["value"]], what)
            n += 1
        else:
            _same_points(mine["values"], r["values"], what)
            n += len(r["values"])
    return n


EXPRS = BATTERY + [e for _, e in dashboard_expressions()]
# Prometheus orders instant vectors as its engine produced them; so do we, except where
# aggregation groups come out of a Go map (topk/bottomk/quantile groups) — compared as sets
UNORDERED = ("topk", "bottomk", "sort_desc", "quantile(")


# and a subquery over an aggregation or a binary operation: Prometheus's range evaluation
# collects those series in a Go map, so their order is not even stable between its own runs
SUBQUERY = re.compile(r"\[[^\]]*:[^\]]*\]")


@pytest.mark.parametrize("expr", EXPRS)
def test_instant_queries_agree(sides: Sides, expr: str) -> None:
    ordered = not any(u in expr for u in UNORDERED) and not SUBQUERY.search(expr)
    for ts in (sides.t0 + 3600 + 7, sides.t0 + 3 * 3600 + 301, sides.end - 15):
        compare(sides, "/api/v1/query", {"query": expr, "time": ts}, ordered=ordered)


RANGE_EXPRS = [e for _, e in dashboard_expressions()] + [
    "up", "rate(vllm:generation_tokens_total[5m])", "scalar(sum(up))", "time()",
    "vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc", "1 / 0", "-vllm:num_requests_running",
]


@pytest.mark.parametrize("expr", RANGE_EXPRS)
def test_range_queries_agree(sides: Sides, expr: str) -> None:
    compare(sides, "/api/v1/query_range", {"query": expr, "start": sides.t0 - 600,
                                           "end": sides.end + 600, "step": "120"})


def test_the_comparison_sees_data(sides: Sides) -> None:
    """Not vacuous: the dashboard queries return many values over the history."""
    n = sum(compare(sides, "/api/v1/query_range", {"query": e, "start": sides.t0,
                                                   "end": sides.end, "step": "600"})
            for _, e in dashboard_expressions()[:15])
    assert n > 200


def test_series_labels_and_values_agree(sides: Sides) -> None:
    span = {"start": sides.t0, "end": sides.end}
    for path, params in [
        ("/api/v1/series", {"match[]": ["up", 'vllm:num_requests_running{instance=~".*:800[01]"}'],
                            **span}),
        ("/api/v1/series", {"match[]": "DCGM_FI_DEV_GPU_UTIL", **span}),
        ("/api/v1/labels", span),
        ("/api/v1/labels", {"match[]": "vllm:cache_config_info", **span}),
        ("/api/v1/label/__name__/values", span),
        ("/api/v1/label/instance/values", {"match[]": "up", **span}),
        ("/api/v1/label/finished_reason/values", span),
    ]:
        status, ours = _get(sides.sidecar, path, params)
        pstatus, theirs = _get(sides.prom.url, path, params)
        assert (status, ours) == (pstatus, theirs), path
        assert theirs["data"], f"{path}: vacuous"


BAD_REQUESTS: list[tuple[str, dict[str, Any], bool]] = [
    # (path, params, same message as Prometheus)
    ("/api/v1/query", {"query": "sum(up"}, False),
    ("/api/v1/query", {"query": "nosuchfn(up)"}, False),
    ("/api/v1/query", {"query": "rate(up[5m]"}, False),
    ("/api/v1/query", {"query": "up", "time": "yesterday"}, True),
    ("/api/v1/query", {"query": "up", "timeout": "soon"}, True),
    ("/api/v1/query", {"query": "vllm:request_success_total + on (instance) "
                                "vllm:num_requests_running", "time": "{t}"}, False),  # execution
    ("/api/v1/query_range", {"query": "up", "start": "x", "end": "1", "step": "15"}, True),
    ("/api/v1/query_range", {"query": "up", "start": "100", "end": "50", "step": "15"}, True),
    ("/api/v1/query_range", {"query": "up", "start": "0", "end": "60", "step": "0"}, True),
    ("/api/v1/query_range", {"query": "up", "start": "0", "end": "60", "step": "-5"}, True),
    ("/api/v1/query_range", {"query": "up", "start": "0", "end": "60", "step": "fast"}, True),
    ("/api/v1/query_range", {"query": "up", "start": "0", "end": "11001", "step": "1"}, True),
    ("/api/v1/query_range", {"query": "up", "start": "2000-01-01T00:00:00Z",
                             "end": "2025-01-01T00:00:00Z", "step": "60"}, True),  # years
    ("/api/v1/query_range", {"query": "up[5m]", "start": "0", "end": "60", "step": "15"}, True),
    ("/api/v1/query_range", {"query": "nosuchfn(up)", "start": "0", "end": "60",
                             "step": "15"}, False),
    ("/api/v1/series", {}, True),
    ("/api/v1/series", {"match[]": "rate(up[5m])"}, False),
    ("/api/v1/label/1bad/values", {}, True),
]


@pytest.mark.parametrize(("path", "params", "same_message"), BAD_REQUESTS)
def test_bad_requests_get_prometheus_errors(sides: Sides, path: str, params: dict[str, Any],
                                            same_message: bool) -> None:
    params = {k: str(sides.t0 + 3600) if v == "{t}" else v for k, v in params.items()}
    status, ours = _get(sides.sidecar, path, params)
    pstatus, theirs = _get(sides.prom.url, path, params)
    assert theirs["status"] == "error", theirs
    assert (status, ours["status"], ours["errorType"]) == (pstatus, "error", theirs["errorType"])
    assert ours["error"]
    if same_message:
        assert ours["error"] == theirs["error"]
    # no crash: the sidecar answers the next query
    assert _get(sides.sidecar, "/api/v1/query", {"query": "1", "time": "0"})[0] == 200


def test_query_past_its_timeout_is_503_and_the_daemon_goes_on(sides: Sides) -> None:
    params = {"query": "histogram_quantile(0.99, sum by (le) "
                       "(rate(vllm:time_to_first_token_seconds_bucket[5m])))",
              "start": sides.t0, "end": sides.end, "step": "15", "timeout": "1ms"}
    status, body = _get(sides.sidecar, "/api/v1/query_range", params)
    assert (status, body["errorType"], body["error"]) == (
        503, "timeout", "query timed out in expression evaluation")
    status, body = _get(sides.sidecar, "/api/v1/query", {"query": "count(up)",
                                                         "time": sides.end - 15})
    assert status == 200 and body["data"]["result"][0]["value"][1] == "2"


# -- real clients ------------------------------------------------------------------------------


def _promtool(*args: str) -> str:
    proc = subprocess.run([require_binary("promtool"), "query", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_promtool_prints_the_same_against_both(sides: Sides) -> None:
    t, start, end = str(sides.t0 + 3600), str(sides.t0), str(sides.t0 + 1800)
    for args in [
        ("instant", "{url}", "sum by (instance) (vllm:num_requests_running)", f"--time={t}"),
        ("instant", "{url}", "DCGM_FI_DEV_FB_USED", f"--time={t}", "-o", "json"),
        ("range", "{url}", 'vllm:num_requests_running{instance="127.0.0.1:8000"}',
         f"--start={start}", f"--end={end}", "--step=5m"),
        ("range", "{url}", "count(up)", f"--start={start}", f"--end={end}", "--step=1m",
         "-o", "json"),
        ("series", "{url}", "--match=up", f"--start={start}", f"--end={end}"),
        ("labels", "{url}", "instance", "--match=up", f"--start={start}", f"--end={end}"),
    ]:
        ours = _promtool(*(a.replace("{url}", sides.sidecar) for a in args))
        theirs = _promtool(*(a.replace("{url}", sides.prom.url) for a in args))
        assert ours == theirs, args
        assert ours.strip(), f"{args}: vacuous"


def test_prometheus_api_client_reads_both_alike(sides: Sides) -> None:
    ours = PrometheusConnect(url=sides.sidecar, disable_ssl=True)
    theirs = PrometheusConnect(url=sides.prom.url, disable_ssl=True)
    t = {"time": sides.t0 + 3600}
    q = "sum by (instance) (rate(vllm:request_success_total[5m]))"
    a, b = ours.custom_query(q, params=t), theirs.custom_query(q, params=t)
    assert [r["metric"] for r in a] == [r["metric"] for r in b] and len(a) == 3
    assert all(_close(x["value"][1], y["value"][1]) for x, y in zip(a, b, strict=True))
    start = datetime.fromtimestamp(sides.t0, UTC)
    end = datetime.fromtimestamp(sides.t0 + 7200, UTC)
    a = ours.custom_query_range("vllm:num_requests_waiting", start_time=start, end_time=end,
                                step="300")
    b = theirs.custom_query_range("vllm:num_requests_waiting", start_time=start, end_time=end,
                                  step="300")
    assert a == b and len(a) == 3
    span = {"start": sides.t0, "end": sides.end}
    assert ours.get_label_names(params=span) == theirs.get_label_names(params=span)
    assert {"dcgm", "vllm"} <= set(ours.get_label_values("job", params=span))
    assert ours.get_label_values("job", params=span) == theirs.get_label_values("job", params=span)
    series = ours.get_series(start, end, params={"match[]": "vllm:cache_config_info"})
    assert series == theirs.get_series(start, end, params={"match[]": "vllm:cache_config_info"})
    assert len(series) == 3


# -- scraping goes on while queries run -------------------------------------------------------


def test_scraping_goes_on_while_queries_run(sides: Sides, tmp_path: Path) -> None:
    store_file = tmp_path / "busy.db"
    shutil.copyfile(sides.store_file, store_file)
    heartbeat = ScriptedTarget()
    heartbeat.set("heartbeat 1\n")
    daemon = _daemon(tmp_path, store_file, [{"name": "beat", "url": heartbeat.url}])
    host, port = daemon.address
    url = f"http://{host}:{port}"
    stop = threading.Event()
    answered: list[int] = []

    def hammer() -> None:
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                r = client.get(f"{url}/api/v1/query_range", params={
                    "query": "histogram_quantile(0.99, sum by (le, instance) "
                             "(rate(vllm:time_to_first_token_seconds_bucket[5m])))",
                    "start": sides.t0, "end": sides.end, "step": "30"})
                answered.append(r.status_code)

    def beats() -> int:
        return sum(len(sd.timestamps) for sd in daemon.store.select(
            [Matcher("__name__", "=", "heartbeat")], 0, 2**62))

    try:
        deadline = time.monotonic() + 30
        while beats() == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = beats()
        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for th in threads:
            th.start()
        while not answered and time.monotonic() < deadline + 120:
            time.sleep(0.5)  # at least one heavy query has run to the end
        time.sleep(3)
        during = beats() - before
        stop.set()
        for th in threads:
            th.join()
        assert answered and set(answered) == {200}
        assert before > 0 and during >= 2, f"{during} scrapes while queries ran"
    finally:
        stop.set()
        daemon.stop()
        heartbeat.close()


def test_metadata_matches_a_prometheus_scraping_the_same_target(
        tmp_path: Path, dcgm_exporter: DcgmExporter, prometheus_factory: Any) -> None:
    """The DCGM stand-in scraped by both: /api/v1/metadata gives the same TYPE and HELP."""
    host_port = dcgm_exporter.url.split("//")[1].split("/")[0]
    prom = prometheus_factory(scrape_configs=[{
        "job_name": "dcgm", "scrape_interval": "1s",
        "static_configs": [{"targets": [host_port]}]}])
    daemon = _daemon(tmp_path, tmp_path / "meta.db",
                     [{"name": "gpu", "url": dcgm_exporter.url, "kind": "dcgm"}])
    host, port = daemon.address
    try:
        deadline = time.monotonic() + 60
        params = {"metric": "DCGM_FI_DEV_GPU_UTIL"}
        while time.monotonic() < deadline:
            ours = _get(f"http://{host}:{port}", "/api/v1/metadata", params)[1]["data"]
            theirs = _get(prom.url, "/api/v1/metadata", params)[1]["data"]
            if ours and theirs:
                break
            time.sleep(0.5)
        assert ours == theirs == {"DCGM_FI_DEV_GPU_UTIL": [
            {"type": "gauge", "help": "GPU utilization (in %).", "unit": ""}]}
        everything = _get(f"http://{host}:{port}", "/api/v1/metadata", {})[1]["data"]
        assert set(everything) == set(_get(prom.url, "/api/v1/metadata", {})[1]["data"])
    finally:
        daemon.stop()
