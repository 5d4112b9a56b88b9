"""One contract for both history sources: the same tests against LocalSource and PrometheusSource.

The same points go into a SQLite store (``LocalSource``, the in-process evaluator) and, through
``promtool tsdb create-blocks-from openmetrics``, into a real Prometheus 2.42
(``PrometheusSource``). Every test is parametrized over both and asserts the values worked out
by hand, so both are held to the contract ``tuner.source.Source`` promises: instant queries
(vector, scalar, matrix, string), range queries, ``time_range``, empty results, NaN and ±Inf
sample values, and errors that name the query.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.prometheus import PrometheusServer, start_prometheus
from tuner.errors import TunerError
from tuner.promql import ValueType
from tuner.source import LocalSource, PrometheusSource, Source
from tuner.store import Store

pytestmark = pytest.mark.integration

# One hour at 15 s, ending four hours ago (backfilled blocks must not overlap Prometheus's head).
T0 = math.floor(time.time() / 3600) * 3600 - 5 * 3600
STEP = 15
N = 241  # samples per series: T0 .. T0 + 3600
T_LAST = T0 + (N - 1) * STEP
A = (("instance", "a"), ("model_name", "m"))
B = (("instance", "b"), ("model_name", "m"))
ODD = {"nan": math.nan, "inf": math.inf, "neginf": -math.inf}


def _points() -> list[tuple[str, tuple[tuple[str, str], ...], int, float]]:
    pts = []
    for i in range(N):
        ts = (T0 + i * STEP) * 1000
        pts += [
            ("vllm:num_requests_running", A, ts, float(i % 5)),
            ("vllm:num_requests_running", B, ts, 10.0),
            ("vllm:generation_tokens_total", A, ts, 10.0 * i),  # 10 per 15 s = 2/3 per s
        ]
        pts += [("odd_values", (("kind", k),), ts, v) for k, v in ODD.items()]
    return pts


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Store,
                                                                                 PrometheusServer]]]:
    """A store and a Prometheus with the points, and an empty store and an empty Prometheus."""
    base = Path(tmp_path_factory.mktemp("history-sources"))
    pts = _points()
    store = Store(base / "full.db", retention=3650 * 86400.0)
    store.append_points(pts)
    empty_store = Store(base / "empty.db", retention=3650 * 86400.0)
    full = start_prometheus(base / "prom-full", points=pts)
    try:
        empty = start_prometheus(base / "prom-empty")
    except Exception:
        full.stop()
        raise
    try:
        yield {"full": (store, full), "empty": (empty_store, empty)}
    finally:
        full.stop()
        empty.stop()
        store.close()
        empty_store.close()


def _source(backends: dict[str, tuple[Store, PrometheusServer]], which: str,
            kind: str) -> Source:
    store, server = backends[which]
    if kind == "store":
        return LocalSource(store)
    return PrometheusSource(server.url)


@pytest.fixture(params=["store", "prometheus"])
def source(request: pytest.FixtureRequest,
           backends: dict[str, tuple[Store, PrometheusServer]]) -> Source:
    return _source(backends, "full", request.param)


@pytest.fixture(params=["store", "prometheus"])
def empty_source(request: pytest.FixtureRequest,
                 backends: dict[str, tuple[Store, PrometheusServer]]) -> Source:
    return _source(backends, "empty", request.param)


def test_instant_vector(source: Source) -> None:
    t = T0 + 1800 + 7  # sample 120 (at T0 + 1800) is the newest: 120 % 5 = 0
    res = source.instant("vllm:num_requests_running", t)
    assert isinstance(res.kind, ValueType) and res.kind == ValueType.VECTOR
    got = {el.labels["instance"]: (dict(el.labels), el.value) for el in res.vector}
    assert got == {
        "a": ({"__name__": "vllm:num_requests_running", "instance": "a", "model_name": "m"}, 0.0),
        "b": ({"__name__": "vllm:num_requests_running", "instance": "b", "model_name": "m"}, 10.0),
    }
    assert all(type(el.value) is float for el in res.vector)
    summed = source.instant("sum by (model_name) (vllm:num_requests_running)", t)
    assert [(dict(el.labels), el.value) for el in summed.vector] == [({"model_name": "m"}, 10.0)]


def test_instant_scalar_and_string(source: Source) -> None:
    res = source.instant("1 + 1", T0)
    assert res.kind == ValueType.SCALAR and res.scalar == 2.0
    res = source.instant('"hello"', T0)
    assert res.kind == ValueType.STRING and res.string == "hello"


def test_instant_matrix(source: Source) -> None:
    t = T0 + 1800 + 7
    res = source.instant('vllm:num_requests_running{instance="a"}[1m]', t)
    assert res.kind == ValueType.MATRIX and len(res.matrix) == 1
    (series,) = res.matrix
    assert series.labels["instance"] == "a"
    assert series.timestamps.tolist() == [T0 + 1755, T0 + 1770, T0 + 1785, T0 + 1800]
    assert series.values.tolist() == [2.0, 3.0, 4.0, 0.0]  # samples 117..120, i % 5


def test_range_query(source: Source) -> None:
    start, end = T0 + 600, T0 + 1200
    out = source.range("sum(rate(vllm:generation_tokens_total[1m]))", start, end, 60)
    assert len(out) == 1
    (series,) = out
    assert dict(series.labels) == {}
    assert series.timestamps.tolist() == [float(t) for t in range(start, end + 1, 60)]
    assert series.values == pytest.approx(np.full(11, 10.0 / 15.0))
    gauges = source.range("vllm:num_requests_running", start, start + 30, 15)
    by_inst = {s.labels["instance"]: s.values.tolist() for s in gauges}
    assert by_inst == {"a": [0.0, 1.0, 2.0], "b": [10.0, 10.0, 10.0]}  # samples 40, 41, 42


def test_time_range(source: Source, empty_source: Source) -> None:
    rng = source.time_range()
    assert rng is not None
    oldest, newest = rng
    # Prometheus answers at a 5-minute resolution; the store exactly
    assert T0 <= oldest <= T0 + 300
    assert T_LAST - 300 <= newest <= T_LAST
    assert empty_source.time_range() is None


def test_empty_results(source: Source, empty_source: Source) -> None:
    for src in (source, empty_source):
        res = src.instant("nonexistent_metric", T0 + 1800)
        assert res.kind == ValueType.VECTOR and res.vector == ()
        assert src.range("nonexistent_metric", T0, T0 + 600, 60) == ()
        assert src.instant("sum(rate(nonexistent_metric[5m]))", T0 + 1800).vector == ()
    # a metric that exists, asked about long before its first sample
    assert source.instant("vllm:num_requests_running", T0 - 86400).vector == ()
    assert source.range("vllm:num_requests_running", T0 - 7200, T0 - 3600, 60) == ()


def test_nan_and_inf_values(source: Source) -> None:
    res = source.instant("odd_values", T0 + 1800)
    got = {el.labels["kind"]: el.value for el in res.vector}
    assert set(got) == set(ODD)
    assert math.isnan(got["nan"])
    assert got["inf"] == math.inf and got["neginf"] == -math.inf
    out = source.range("odd_values", T0 + 600, T0 + 660, 30)
    values = {s.labels["kind"]: s.values for s in out}
    assert set(values) == set(ODD)
    assert all(len(v) == 3 for v in values.values())
    assert np.isnan(values["nan"]).all()
    assert (values["inf"] == math.inf).all() and (values["neginf"] == -math.inf).all()
    # arithmetic on them follows IEEE: inf - inf is NaN, 1/inf is 0
    diff = source.instant('odd_values{kind="inf"} + on() odd_values{kind="neginf"}', T0 + 1800)
    assert len(diff.vector) == 1 and math.isnan(diff.vector[0].value)
    inv = source.instant('1 / odd_values{kind="inf"}', T0 + 1800)
    assert [el.value for el in inv.vector] == [0.0]


@pytest.mark.parametrize("expr", [
    "sum(rate(vllm:num_requests_running[5m])",  # parse error: unclosed parenthesis
    "vllm:num_requests_running + on() vllm:num_requests_running",  # evaluation: many-to-many
])
def test_errors_name_the_query(source: Source, expr: str) -> None:
    with pytest.raises(TunerError) as err:
        source.instant(expr, T0 + 1800)
    assert expr in str(err.value)
    with pytest.raises(TunerError) as err:
        source.range(expr, T0 + 600, T0 + 1200, 60)
    assert expr in str(err.value)
