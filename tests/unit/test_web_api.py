"""The sidecar's Prometheus API over a real Store: answers, wire format, every bad input.

Handlers are driven through the real route table (``dispatch``) and, for GET/POST over a socket,
a real ``WebServer`` on loopback. Expected JSON is Prometheus 2.42's as its API and
``util/jsonutil`` write it; the integration tier compares against a real Prometheus.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.dcgm import DcgmExporter
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.promql import Engine, QueryLimits
from tuner.rules import RuleEngine, load_rule_texts
from tuner.store import STALE_NAN, Store
from tuner.web import PrometheusApi, Request, WebServer
from tuner.web.api_format import format_timestamp, format_value, parse_step, parse_time
from tuner.web.server import dispatch

T0 = 1_700_000_000  # seconds; samples every 15 s for 10 minutes


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store.db", retention=3650 * 86400.0)
    pts = []
    for k in range(41):
        ts = (T0 + 15 * k) * 1000
        for inst in ("a", "b"):
            pts.append(("req_total", (("instance", inst), ("job", "vllm")), ts, 10.0 * k))
        pts.append(("temp", (("gpu", "0"),), ts, 0.5))
        pts.append(("odd", (("kind", "nan"),), ts, math.nan))
        pts.append(("odd", (("kind", "inf"),), ts, math.inf))
        pts.append(("odd", (("kind", "tiny"),), ts, 1e-7))
    pts.append(("gone", (("x", "1"),), T0 * 1000, 1.0))
    pts.append(("gone", (("x", "1"),), (T0 + 15) * 1000, STALE_NAN))
    s.append_points(pts)
    yield s
    s.close()


class TickingClock:
    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def api(store: Store) -> Iterator[PrometheusApi]:
    a = PrometheusApi(store, clock=lambda: T0 + 600.0)
    yield a
    a.close()


def call(api: PrometheusApi, path: str, method: str = "GET", **params: Any) -> tuple[int, dict[str, Any]]:
    req = Request(method, path, {k.replace("match", "match[]") if k == "match" else k:
                                 v if isinstance(v, list) else [str(v)] for k, v in params.items()})
    resp = dispatch(api.routes(), req)
    assert resp.content_type == "application/json", resp.body
    return resp.status, json.loads(resp.body)


def ok(api: PrometheusApi, path: str, **params: Any) -> Any:
    status, body = call(api, path, **params)
    assert status == 200 and body["status"] == "success", body
    return body["data"]


def error(api: PrometheusApi, path: str, **params: Any) -> tuple[int, str, str]:
    status, body = call(api, path, **params)
    assert body["status"] == "error" and set(body) == {"status", "errorType", "error"}, body
    return status, body["errorType"], body["error"]


# -- wire format ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "text"), [
    (0.5, "0.5"), (2.0, "2"), (-0.0, "-0"), (1e-7, "1e-07"), (1e-6, "0.000001"),
    (1e20, "100000000000000000000"), (1e21, "1e+21"), (math.nan, "NaN"), (math.inf, "+Inf"),
    (-math.inf, "-Inf"), (0.1 + 0.2, "0.30000000000000004"), (123456789.125, "123456789.125"),
])
def test_values_are_spelled_as_go_strconv_in_prometheus_json(value: float, text: str) -> None:
    assert format_value(value) == text


def test_timestamps_keep_three_fraction_digits_like_prometheus() -> None:
    assert [format_timestamp(ms) for ms in (1_700_000_000_000, 1_700_000_000_500, 1_700_000_000_005,
                                             -1500)] == ["1700000000", "1700000000.500",
                                                         "1700000000.005", "-1.500"]


def test_times_as_unix_seconds_or_rfc3339_and_steps_as_seconds_or_durations() -> None:
    assert parse_time("1700000000", "time") == 1_700_000_000_000
    assert parse_time("1700000000.5", "time") == 1_700_000_000_500
    assert parse_time("2023-11-14T22:13:20Z", "time") == 1_700_000_000_000
    assert parse_time("2023-11-14T23:13:20.123456789+01:00", "time") == 1_700_000_000_123
    assert parse_step("15") == parse_step("15s") == 15_000
    assert parse_step("0.25") == 250 and parse_step("1h30m") == 5_400_000


# -- queries -------------------------------------------------------------------------------------


def test_instant_vector_as_prometheus_returns_it(api: PrometheusApi) -> None:
    data = ok(api, "/api/v1/query", query="req_total", time=T0 + 300)
    assert data == {"resultType": "vector", "result": [
        {"metric": {"__name__": "req_total", "instance": "a", "job": "vllm"},
         "value": [T0 + 300, "200"]},
        {"metric": {"__name__": "req_total", "instance": "b", "job": "vllm"},
         "value": [T0 + 300, "200"]}]}


def test_grafana_health_check_query(api: PrometheusApi) -> None:
    # Grafana's data source test: an instant "1+1" at time=4
    assert ok(api, "/api/v1/query", query="1+1", time="4") == {
        "resultType": "scalar", "result": [4, "2"]}


def test_time_defaults_to_now_and_string_and_matrix_results(api: PrometheusApi) -> None:
    assert ok(api, "/api/v1/query", query="temp")["result"][0]["value"] == [T0 + 600, "0.5"]
    assert ok(api, "/api/v1/query", query='"hi"', time=T0) == {
        "resultType": "string", "result": [T0, "hi"]}
    data = ok(api, "/api/v1/query", query="temp[30s]", time=T0 + 30)
    assert data == {"resultType": "matrix", "result": [
        {"metric": {"__name__": "temp", "gpu": "0"},
         "values": [[T0, "0.5"], [T0 + 15, "0.5"], [T0 + 30, "0.5"]]}]}


def test_nan_inf_and_small_values_spelled_prometheus_way(api: PrometheusApi) -> None:
    data = ok(api, "/api/v1/query", query="odd", time=T0 + 60)
    assert {r["metric"]["kind"]: r["value"][1] for r in data["result"]} == {
        "nan": "NaN", "inf": "+Inf", "tiny": "1e-07"}


def test_range_query_sorted_by_labels_with_step_points(api: PrometheusApi) -> None:
    data = ok(api, "/api/v1/query_range", query="sum by (instance) (rate(req_total[1m]))",
              start=T0 + 60, end=T0 + 120, step="30s")
    assert data["resultType"] == "matrix"
    assert [r["metric"] for r in data["result"]] == [{"instance": "a"}, {"instance": "b"}]
    assert data["result"][0]["values"] == [[T0 + 60, "0.6666666666666666"],
                                           [T0 + 90, "0.6666666666666666"],
                                           [T0 + 120, "0.6666666666666666"]]


def test_range_query_of_a_scalar_and_rfc3339_bounds(api: PrometheusApi) -> None:
    data = ok(api, "/api/v1/query_range", query="2", start="2023-11-14T22:13:20Z",
              end="2023-11-14T22:13:50Z", step="15")
    assert data["result"] == [{"metric": {}, "values": [[T0, "2"], [T0 + 15, "2"], [T0 + 30, "2"]]}]


def test_get_and_form_post_over_a_socket(store: Store) -> None:
    api = PrometheusApi(store)
    web = WebServer("127.0.0.1", 0, api.routes())
    web.start()
    host, port = web.address
    try:
        url = f"http://{host}:{port}/api/v1/query"
        got = httpx.get(url, params={"query": "temp", "time": str(T0)}).json()
        posted = httpx.post(url, data={"query": "temp", "time": str(T0)}).json()
        assert got == posted and got["data"]["result"][0]["value"] == [T0, "0.5"]
        r = httpx.post(f"http://{host}:{port}/api/v1/query_range",
                       data={"query": "temp", "start": T0, "end": T0 + 30, "step": 15})
        assert r.status_code == 200 and len(r.json()["data"]["result"][0]["values"]) == 3
        assert r.headers["content-type"] == "application/json"
    finally:
        web.stop()
        api.close()


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "fragment"), [
    ({"query": "sum(req_total"}, 'invalid parameter "query": '),
    ({"query": "nosuchfn(req_total)"}, 'unknown function "nosuchfn"'),
    ({"query": ""}, 'invalid parameter "query": '),
    ({"query": "up", "time": "yesterday"},
     'invalid parameter "time": Invalid time value for \'time\': cannot parse "yesterday" to a '
     "valid timestamp"),
    ({"query": "up", "time": "2023-02-30T00:00:00Z"}, 'invalid parameter "time"'),
    ({"query": "up", "timeout": "soon"},
     'invalid parameter "timeout": cannot parse "soon" to a valid duration'),
])
def test_bad_instant_queries_are_bad_data_400(api: PrometheusApi, params: dict[str, str],
                                              fragment: str) -> None:
    status, etype, message = error(api, "/api/v1/query", **params)
    assert (status, etype) == (400, "bad_data") and fragment in message


@pytest.mark.parametrize(("params", "message"), [
    ({"start": "x", "end": T0, "step": 15},
     'invalid parameter "start": cannot parse "x" to a valid timestamp'),
    ({"start": T0, "end": T0 - 1, "step": 15},
     'invalid parameter "end": end timestamp must not be before start time'),
    ({"start": T0, "end": T0 + 60, "step": "0"},
     'invalid parameter "step": zero or negative query resolution step widths are not accepted. '
     "Try a positive integer"),
    ({"start": T0, "end": T0 + 60, "step": "fast"},
     'invalid parameter "step": cannot parse "fast" to a valid duration'),
    ({"start": T0, "end": T0 + 60},
     'invalid parameter "step": cannot parse "" to a valid duration'),
    ({"start": T0, "end": T0 + 11_001, "step": 1},  # too many points
     "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query "
     "resolution (?step=XX)"),
    ({"start": 0, "end": T0, "step": "15s"},  # a range of years at a 15 s step
     "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query "
     "resolution (?step=XX)"),
])
def test_bad_range_queries_are_bad_data_400(api: PrometheusApi, params: dict[str, Any],
                                            message: str) -> None:
    assert error(api, "/api/v1/query_range", query="temp", **params) == (400, "bad_data", message)


def test_exactly_11000_points_is_allowed(api: PrometheusApi) -> None:
    data = ok(api, "/api/v1/query_range", query="1", start=T0, end=T0 + 11_000, step=1)
    assert len(data["result"][0]["values"]) == 11_001


def test_range_query_of_a_range_vector_is_refused(api: PrometheusApi) -> None:
    status, etype, message = error(api, "/api/v1/query_range", query="temp[1m]", start=T0,
                                   end=T0 + 60, step=15)
    assert (status, etype) == (400, "bad_data")
    assert message == ('invalid expression type "range vector" for range query, must be Scalar '
                       "or instant Vector")


def test_evaluation_error_is_execution_422(api: PrometheusApi) -> None:
    # dropping the metric name leaves two series with the same labels
    status, etype, message = error(api, "/api/v1/query",
                                   query='label_replace(req_total, "instance", "x", "", "")',
                                   time=T0 + 60)
    assert (status, etype) == (422, "execution")
    assert "vector cannot contain metrics with the same labelset" in message


def test_query_past_its_deadline_is_timeout_503_and_the_api_goes_on(store: Store) -> None:
    api = PrometheusApi(store, limits=QueryLimits(timeout=5.0), monotonic=TickingClock(1.0))
    try:
        assert error(api, "/api/v1/query_range", query="rate(req_total[1m])", start=T0,
                     end=T0 + 600, step=15) == (503, "timeout",
                                                "query timed out in expression evaluation")
        assert ok(api, "/api/v1/query", query="1", time=T0)["result"] == [T0, "1"]
    finally:
        api.close()


def test_request_timeout_shortens_the_deadline(store: Store) -> None:
    api = PrometheusApi(store, limits=QueryLimits(timeout=1000.0), monotonic=TickingClock(1.0))
    try:
        params = {"query": "rate(req_total[1m])", "start": T0, "end": T0 + 600, "step": 15}
        assert ok(api, "/api/v1/query_range", **params)["resultType"] == "matrix"
        assert error(api, "/api/v1/query_range", timeout="5s", **params)[:2] == (503, "timeout")
    finally:
        api.close()


def test_too_many_samples_is_execution_422(store: Store) -> None:
    api = PrometheusApi(store, limits=QueryLimits(max_samples=50))
    try:
        assert error(api, "/api/v1/query", query="count_over_time(req_total[10m])",
                     time=T0 + 600) == (
            422, "execution",
            "query processing would load too many samples into memory in query execution")
    finally:
        api.close()


# -- series, labels, label values --------------------------------------------------------------


def test_series_with_matchers_and_window(api: PrometheusApi) -> None:
    assert ok(api, "/api/v1/series", match=['req_total{instance="a"}', "temp"]) == [
        {"__name__": "req_total", "instance": "a", "job": "vllm"},
        {"__name__": "temp", "gpu": "0"}]
    # "gone" has samples only at T0 and T0+15 (a stale marker)
    assert ok(api, "/api/v1/series", match=["gone"], start=T0 + 100, end=T0 + 200) == []
    assert len(ok(api, "/api/v1/series", match=["gone"], start=T0, end=T0 + 200)) == 1


def test_labels_and_label_values(api: PrometheusApi) -> None:
    assert ok(api, "/api/v1/labels") == ["__name__", "gpu", "instance", "job", "kind", "x"]
    assert ok(api, "/api/v1/labels", match=["req_total"]) == ["__name__", "instance", "job"]
    assert ok(api, "/api/v1/label/__name__/values") == ["gone", "odd", "req_total", "temp"]
    assert ok(api, "/api/v1/label/__name__/values", start=T0 + 100, end=T0 + 200) == [
        "odd", "req_total", "temp"]
    assert ok(api, "/api/v1/label/instance/values", match=["req_total"]) == ["a", "b"]
    assert ok(api, "/api/v1/label/nosuch/values") == []


@pytest.mark.parametrize(("path", "params", "expected"), [
    ("/api/v1/series", {}, (400, "bad_data", "no match[] parameter provided")),
    ("/api/v1/series", {"match": ["rate(x[5m])"]}, (400, "bad_data", None)),
    ("/api/v1/series", {"match": ['{job=~".*"}']}, (400, "bad_data", None)),
    ("/api/v1/series", {"match": ["temp"], "start": "later"}, (400, "bad_data", None)),
    ("/api/v1/label/1bad/values", {}, (400, "bad_data", 'invalid label name: "1bad"')),
    ("/api/v1/label/job/nothing", {}, (404, "not_found", None)),
    ("/api/v1/rules", {"type": "both"},
     (400, "bad_data", 'invalid parameter "type": not supported value "both"')),
])
def test_bad_catalogue_requests(api: PrometheusApi, path: str, params: dict[str, Any],
                                expected: tuple[int, str, str | None]) -> None:
    status, etype, message = error(api, path, **params)
    assert (status, etype) == expected[:2]
    if expected[2] is not None:
        assert message == expected[2]
    else:
        assert message  # says what was wrong


# -- Grafana's other calls, rules, alerts ------------------------------------------------------


def test_buildinfo_exemplars_and_metadata(api: PrometheusApi) -> None:
    info = ok(api, "/api/v1/status/buildinfo")
    assert info["version"] == "2.42.0" and info["revision"].startswith("tuner-")
    assert ok(api, "/api/v1/query_exemplars", query="temp", start=T0, end=T0 + 60) == []
    assert error(api, "/api/v1/query_exemplars", query="temp(")[:2] == (400, "bad_data")
    assert ok(api, "/api/v1/metadata") == {}


RULES = """
groups:
- name: g
  interval: 15s
  rules:
  - record: job:req:rate1m
    expr: sum by (job) (rate(req_total[1m]))
  - alert: Busy
    expr: rate(req_total[1m]) > 0.5
    for: 0s
    labels: {severity: warning}
    annotations: {summary: "{{ $labels.instance }} busy"}
  - alert: Hot
    expr: temp > 100
    for: 5m
"""


def test_rules_and_alerts_from_the_rule_engine(store: Store) -> None:
    engine = RuleEngine(load_rule_texts({"rules.yaml": RULES}), Engine(store), writer=store)
    api = PrometheusApi(store, rules=engine)
    try:
        before = ok(api, "/api/v1/rules")["groups"][0]
        assert before["lastEvaluation"] == "0001-01-01T00:00:00Z"
        assert {r["health"] for r in before["rules"]} == {"unknown"}
        engine.evaluate(T0 + 300.5)
        group = ok(api, "/api/v1/rules")["groups"][0]
        assert (group["name"], group["file"], group["interval"]) == ("g", "rules.yaml", 15)
        assert group["lastEvaluation"] == "2023-11-14T22:18:20.5Z"
        record, busy, hot = group["rules"]
        assert record["type"] == "recording" and record["health"] == "ok"
        assert record["query"] == "sum by (job) (rate(req_total[1m]))"
        assert busy["type"] == "alerting" and busy["state"] == "firing"
        assert [a["labels"]["instance"] for a in busy["alerts"]] == ["a", "b"]
        assert busy["alerts"][0] == {
            "labels": {"alertname": "Busy", "instance": "a", "job": "vllm",
                       "severity": "warning"},
            "annotations": {"summary": "a busy"}, "state": "firing",
            "activeAt": "2023-11-14T22:18:20.5Z", "value": "6.666666666666666e-01"}
        assert hot["state"] == "inactive" and hot["duration"] == 300 and hot["alerts"] == []
        assert [r["name"] for g in ok(api, "/api/v1/rules", type="alert")["groups"]
                for r in g["rules"]] == ["Busy", "Hot"]
        alerts = ok(api, "/api/v1/alerts")["alerts"]
        assert [a["labels"]["instance"] for a in alerts] == ["a", "b"]
    finally:
        api.close()


def test_worker_processes_answer_like_the_threads(store: Store) -> None:
    """The daemon's setting: store routes answered by spawned worker processes."""
    in_thread = PrometheusApi(store, clock=lambda: T0 + 600.0)
    workers = PrometheusApi(store, worker_store=store.path, max_concurrency=1,
                            clock=lambda: T0 + 600.0)
    try:
        for path, params in [
            ("/api/v1/query", {"query": "sum by (instance) (rate(req_total[1m]))"}),  # time: now
            ("/api/v1/query_range", {"query": "temp", "start": T0, "end": T0 + 60, "step": 15}),
            ("/api/v1/series", {"match": ["req_total"]}),
            ("/api/v1/label/__name__/values", {}),
            ("/api/v1/query", {"query": "sum(req_total"}),  # bad_data from the worker
            ("/api/v1/query_range", {"query": "temp", "start": 0, "end": T0, "step": 1}),
        ]:
            assert call(workers, path, **params) == call(in_thread, path, **params), path
        # the worker reads what is written after it started
        store.append_points([("late", (), (T0 + 600) * 1000, 7.0)])
        assert ok(workers, "/api/v1/query", query="late")["result"][0]["value"][1] == "7"
    finally:
        workers.close()
        in_thread.close()


def test_metadata_from_the_newest_scrape(tmp_path: Path, dcgm_exporter: DcgmExporter) -> None:
    cfg = parse_config({"targets": [{"name": "gpu", "url": dcgm_exporter.url, "kind": "dcgm"}],
                        "store": {"path": str(tmp_path / "t.db")}, "listen": "127.0.0.1:0"},
                       str(tmp_path / "tuner.yaml"))
    daemon = Daemon(cfg)
    try:
        assert ok(daemon.api, "/api/v1/metadata") == {}  # nothing scraped yet
        daemon.scrape_once()
        meta = ok(daemon.api, "/api/v1/metadata")
        assert meta["DCGM_FI_DEV_FB_USED"] == [
            {"type": "gauge", "help": "Framebuffer memory used (in MiB).", "unit": ""}]
        assert len(meta) == 11
        assert list(ok(daemon.api, "/api/v1/metadata", metric="DCGM_FI_DEV_GPU_UTIL")) == [
            "DCGM_FI_DEV_GPU_UTIL"]
        assert len(ok(daemon.api, "/api/v1/metadata", limit=3)) == 3
        assert error(daemon.api, "/api/v1/metadata", limit="many")[:2] == (400, "bad_data")
    finally:
        daemon.stop()
