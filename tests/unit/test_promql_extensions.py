"""tuner.promql beyond the rules' subset: subqueries, ``@``, count_values, predict_linear,
holt_winters, atan2, label_join, math and date functions, and the overflow-safe mean.

Expected values are worked out by hand from Prometheus 2.42's semantics (promql/engine.go,
functions.go); the differential integration test checks the same constructs against a real
Prometheus, and tests/integration/test_promql_testdata.py runs Prometheus's own test cases.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import numpy as np
import pytest

from tuner.errors import QueryError, QueryTimeoutError
from tuner.promql import Engine, QueryLimits, Subquery, parse_expr
from tuner.promql.lexer import go_regexp
from tuner.promql.timing import resolve, selector_spans, subquery_grid
from tuner.store import Store

T0 = 1_700_000_000  # seconds; not a multiple of a minute (T0 % 60 == 20)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store.db", retention=3650 * 86400.0)
    yield s
    s.close()


def put(store: Store, name: str, labels: dict[str, str], pts: list[tuple[float, float]]) -> None:
    lab = tuple(sorted(labels.items()))
    store.append_points([(name, lab, int((T0 + t) * 1000), v) for t, v in pts])


def vec(engine: Engine, expr: str, t: float) -> dict[tuple[tuple[str, str], ...], float]:
    res = engine.instant(expr, T0 + t)
    assert res.kind == "vector", res
    return {tuple(sorted(e.labels.items())): e.value for e in res.vector}


def one(engine: Engine, expr: str, t: float) -> float:
    got = vec(engine, expr, t)
    assert len(got) == 1, got
    return next(iter(got.values()))


@pytest.fixture
def counter(store: Store) -> Engine:
    """x: a counter growing 2/s, scraped every 15 s for two hours; g: a gauge = t/100."""
    put(store, "x", {"job": "a"}, [(t, 2.0 * t) for t in range(0, 7200, 15)])
    put(store, "g", {"job": "a"}, [(t, t / 100) for t in range(0, 7200, 15)])
    return Engine(store)


# -- subqueries ------------------------------------------------------------------------------


def test_subquery_points_are_the_inner_expression_on_an_aligned_grid(counter: Engine) -> None:
    t = 3600.0
    res = counter.instant("rate(x[5m])[30m:1m]", T0 + t)
    assert res.kind == "matrix" and len(res.matrix) == 1
    series = res.matrix[0]
    assert series.labels == {"job": "a"}  # rate drops the name
    times = series.timestamps.tolist()
    # multiples of 60 s inside [t - 30m, t]: T0 + t is 20 s past a minute, so 30 points
    assert len(times) == 30 and all(s % 60 == 0 for s in times)
    assert times[0] >= T0 + t - 1800 and times[-1] <= T0 + t
    for s, v in zip(times, series.values.tolist(), strict=True):
        assert v == pytest.approx(one(counter, "rate(x[5m])", s - T0))
        assert v == pytest.approx(2.0)


def test_functions_over_subqueries(counter: Engine) -> None:
    # g = t/100 sampled every 15 s; the subquery samples it every 20 s on the grid
    t = 3600.0
    grid = [s for s in range(int(T0 + t - 60), int(T0 + t) + 1) if s % 20 == 0]
    looked_back = [((s - T0) // 15 * 15) / 100 for s in grid]  # the latest sample at or before s
    assert one(counter, "sum_over_time(g[1m:20s])", t) == pytest.approx(sum(looked_back))
    assert one(counter, "count_over_time(g[1m:20s])", t) == len(grid)
    assert one(counter, "max_over_time(rate(x[5m])[30m:1m])", t) == pytest.approx(2.0)
    assert one(counter, "deriv(g[10m:1m])", t) == pytest.approx(0.01, rel=0.05)
    # rate over a subquery of a counter: extrapolated like a range selector
    assert one(counter, "rate(x[10m:30s])", t) == pytest.approx(2.0, rel=0.05)
    # nested subqueries
    assert one(counter, "max_over_time(max_over_time(g[5m:1m])[10m:2m])", t) == pytest.approx(
        ((T0 + t) // 120 * 120 - T0) // 15 * 15 / 100)  # g at the last 2m-aligned point
    assert vec(counter, "sum_over_time(nothing[10m:1m])", t) == {}
    assert one(counter, "absent_over_time(nothing[10m:1m])", t) == 1.0


def test_subquery_default_step_is_the_evaluation_interval(store: Store) -> None:
    put(store, "g", {}, [(t, 1.0) for t in range(0, 3600, 10)])
    assert one(Engine(store), "count_over_time(g[10m:])", 1800) == 10  # 1m default
    assert one(Engine(store, subquery_step=30), "count_over_time(g[10m:])", 1800) == 20
    sq = resolve(parse_expr("g[10m:]"), 0, 0, 15_000)
    assert isinstance(sq, Subquery) and sq.step_ms == 15_000


def test_subquery_offset_and_at(counter: Engine) -> None:
    t = 3600.0
    shifted = counter.instant("g[5m:1m] offset 10m", T0 + t).matrix[0].timestamps.tolist()
    plain = counter.instant("g[5m:1m]", T0 + t - 600).matrix[0].timestamps.tolist()
    assert shifted == plain
    at = T0 + 1200
    for eval_t in (1800.0, 3600.0, 7000.0):  # @ pins the subquery, whatever the step's time
        assert one(counter, f"sum_over_time(g[5m:1m] @ {at})", eval_t) == pytest.approx(
            sum(((s - T0) // 15 * 15) / 100 for s in range(at - 300, at + 1) if s % 60 == 0))
    grid = subquery_grid(Subquery(parse_expr("g"), 300_000, 60_000, 0, 1_000_000), 5_000_000)
    assert list(grid) == [720_000, 780_000, 840_000, 900_000, 960_000]


def test_range_query_with_subquery_matches_instant_queries(counter: Engine) -> None:
    expr = "max_over_time(rate(x[2m])[10m:45s]) + avg_over_time(g[15m:1m] offset 1m)"
    rs = counter.range(expr, T0 + 1800, T0 + 3600, 300)
    assert len(rs) == 1
    for s, v in zip(rs[0].timestamps.tolist(), rs[0].values.tolist(), strict=True):
        assert v == one(counter, expr, s - T0)


def test_selector_spans_reach_through_subqueries_and_at() -> None:
    e = parse_expr("max_over_time(rate(x[5m])[1h:1m] offset 10m) + y @ 100")
    spans = {str(getattr(k, "selector", k).name): v
             for k, v in selector_spans(e, 10_000_000, 20_000_000, 300_000).items()}
    # rate(x[5m]) is evaluated over [start - 10m - 1h, end - 10m], each reading 5m back
    assert spans["x"] == (10_000_000 - 600_000 - 3_600_000 - 300_000, 20_000_000 - 600_000)
    assert spans["y"] == (100_000 - 300_000, 100_000)


# -- @ ---------------------------------------------------------------------------------------


def test_at_modifier_pins_selectors(counter: Engine) -> None:
    at = T0 + 1000
    for t in (0.0, 1800.0, 7000.0):
        assert one(counter, f"g @ {at}", t) == pytest.approx(990 / 100)
        assert one(counter, f"timestamp(g @ {at})", t) == T0 + 990
        assert one(counter, f"rate(x[5m] @ {at})", t) == pytest.approx(2.0)
        assert one(counter, f"g @ {at} offset 100s", t) == pytest.approx(900 / 100)
        assert one(counter, f"g offset 100s @ {at}", t) == pytest.approx(900 / 100)
    # start() and end() are the range query's first and last step, at every step
    rs = counter.range("g @ start() - g @ end()", T0 + 600, T0 + 1200, 60)
    assert rs[0].values.tolist() == pytest.approx([-6.0] * 11)
    assert one(counter, "g @ end()", 600) == pytest.approx(6.0)
    # negative offsets look ahead
    assert one(counter, "g offset -5m", 600) == pytest.approx(9.0)


# -- new functions and aggregation -----------------------------------------------------------


def test_count_values(store: Store) -> None:
    for job, inst, v in (("a", "1", 1.0), ("a", "2", 1.0), ("a", "3", 2.5), ("b", "1", 1e21),
                         ("b", "2", 0.0), ("b", "3", math.inf)):
        put(store, "version", {"job": job, "instance": inst}, [(0, v)])
    e = Engine(store)
    assert vec(e, 'count_values("v", version)', 10) == {
        (("v", "1"),): 2.0, (("v", "2.5"),): 1.0, (("v", "1000000000000000000000"),): 1.0,
        (("v", "0"),): 1.0, (("v", "+Inf"),): 1.0}
    assert vec(e, 'count_values("v", -vector(0))', 10) == {(("v", "-0"),): 1.0}
    by_job = vec(e, 'count_values by (job) ("v", version)', 10)
    assert by_job[(("job", "a"), ("v", "1"))] == 2.0 and len(by_job) == 5
    # without: every other label stays; the value label is added
    wo = vec(e, 'count_values without (instance) ("job", version)', 10)
    assert wo == {(("job", "1"),): 2.0, (("job", "2.5"),): 1.0,
                  (("job", "1000000000000000000000"),): 1.0, (("job", "0"),): 1.0,
                  (("job", "+Inf"),): 1.0}
    with pytest.raises(QueryError, match='invalid label name "not-a-label"'):
        e.instant('count_values("not-a-label", version)', T0 + 10)


def test_predict_linear_deriv_and_holt_winters(store: Store) -> None:
    put(store, "y", {}, [(t, 3.0 * t + 7) for t in range(0, 1200, 30)])
    put(store, "flat", {}, [(t, 5.0) for t in range(0, 1200, 30)])
    put(store, "infinite", {}, [(t, math.inf) for t in range(0, 1200, 30)])
    e = Engine(store)
    # the regression line, evaluated 60 s after the step's time (not after the last sample)
    assert one(e, "predict_linear(y[10m], 60)", 1190) == pytest.approx(3.0 * 1250 + 7)
    assert one(e, "predict_linear(y[10m] offset 5m, 0)", 1190) == pytest.approx(3.0 * 1190 + 7)
    assert one(e, "deriv(y[10m])", 1190) == pytest.approx(3.0)
    assert one(e, "predict_linear(flat[10m], 3600)", 1190) == 5.0
    assert math.isnan(one(e, "predict_linear(infinite[10m], 3600)", 1190))
    assert vec(e, "predict_linear(y[10s], 60)", 1190) == {}  # one point: no output
    # holt_winters: for a straight line the smoothed value is the last point
    assert one(e, "holt_winters(y[10m], 0.5, 0.5)", 1190) == pytest.approx(3.0 * 1170 + 7)
    with pytest.raises(QueryError, match="invalid smoothing factor"):
        e.instant("holt_winters(y[10m], 1, 0.5)", T0 + 1190)
    with pytest.raises(QueryError, match="invalid trend factor"):
        e.instant("holt_winters(y[10m], 0.5, 0)", T0 + 1190)


def test_atan2_keeps_the_metric_name(store: Store) -> None:
    put(store, "a", {"i": "1"}, [(0, 1.0)])
    put(store, "b", {"i": "1"}, [(0, -1.0)])
    e = Engine(store)
    assert vec(e, "a atan2 b", 10) == {(("__name__", "a"), ("i", "1")): math.atan2(1, -1)}
    assert vec(e, "a atan2 0", 10) == {(("__name__", "a"), ("i", "1")): math.pi / 2}
    assert e.instant("1 atan2 1", T0).scalar == pytest.approx(math.pi / 4)
    assert vec(e, "a * 2 atan2 b", 10) == {(("i", "1"),): math.atan2(2, -1)}  # binds like *


def test_overflow_safe_means(store: Store) -> None:
    big = [1e308, 9e307, 1.5e308, 1.2e308]
    put(store, "m", {}, [(i * 10, v) for i, v in enumerate(big)])
    for i, v in enumerate(big):
        put(store, "n", {"i": str(i)}, [(0, v)])
    e = Engine(store)
    assert one(e, "avg_over_time(m[1m])", 30) == pytest.approx(sum(v / 4 for v in big))
    assert one(e, "avg(n)", 30) == pytest.approx(sum(v / 4 for v in big))
    assert one(e, "sum_over_time(m[1m])", 30) == math.inf  # the sum itself overflows


def test_label_join_math_and_date_functions(store: Store) -> None:
    put(store, "t", {"a": "x", "b": "y"}, [(0, 86400.0 * 365 + 3600 * 5 + 60 * 7)])  # 1971-01-01
    put(store, "v", {"a": "x"}, [(0, -2.0)])
    e = Engine(store)
    assert vec(e, 'label_join(t, "ab", "-", "a", "b")', 10) == {
        (("__name__", "t"), ("a", "x"), ("ab", "x-y"), ("b", "y")): 31554420.0}
    assert vec(e, 'label_join(t, "a", "", "missing")', 10) == {  # empty value removes a label
        (("__name__", "t"), ("b", "y")): 31554420.0}
    assert one(e, "year(t)", 10) == 1971 and one(e, "month(t)", 10) == 1
    assert one(e, "day_of_month(t)", 10) == 1 and one(e, "day_of_year(t)", 10) == 1
    assert one(e, "day_of_week(t)", 10) == 5  # a Friday (Go: Sunday is 0)
    assert one(e, "days_in_month(t)", 10) == 31
    assert one(e, "hour(t)", 10) == 5 and one(e, "minute(t)", 10) == 7
    now = datetime.datetime.fromtimestamp(T0 + 10, tz=datetime.UTC)
    assert one(e, "hour()", 10) == now.hour and vec(e, "minute()", 10) == {(): now.minute}
    assert one(e, "sgn(v)", 10) == -1 and one(e, "abs(v)", 10) == 2
    assert one(e, "deg(v)", 10) == pytest.approx(-360 / math.pi)
    assert one(e, "rad(v)", 10) == pytest.approx(-math.pi / 90)
    assert one(e, "sin(v)", 10) == pytest.approx(math.sin(-2))
    assert one(e, "acosh(-v)", 10) == pytest.approx(math.acosh(2))
    assert math.isnan(one(e, "asin(v)", 10))
    assert e.instant("pi()", T0).scalar == math.pi
    assert np.isclose(one(e, "atanh(v / 4)", 10), math.atanh(-0.5))


def test_a_long_subquery_stops_at_the_query_deadline(counter: Engine, store: Store) -> None:
    """An instant query is one step, so the subquery's grid checks the deadline itself."""
    ticks = iter(range(10**6))
    engine = Engine(store, limits=QueryLimits(timeout=30.0), clock=lambda: float(next(ticks)))
    with pytest.raises(QueryTimeoutError, match="query timed out in expression evaluation"):
        engine.instant("max_over_time(rate(x[5m])[2h:1s])", T0 + 7200)  # 7,201 grid points
    assert next(ticks) < 100  # stopped at the deadline, not after the whole grid


def test_go_regexp_inline_flags_anywhere(store: Store) -> None:
    """RE2 takes ``(?i)`` mid-pattern (to the end of its group); Python only at the start."""
    assert go_regexp("((?i)PRO).*") == "((?i:PRO)).*"
    assert go_regexp("(?i)abc") == "(?i:abc)"  # PromQL anchors (wraps) every pattern
    assert go_regexp("(a|(?s)b.)c[(?i)]") == "(a|(?s:b.))c[(?i)]"  # classes are literal
    for g in ("production", "canary", "PRODUCTION"):
        put(store, "http_requests", {"group": g}, [(0, 1.0)])
    e = Engine(store)
    assert {dict(k)["group"] for k in vec(e, 'http_requests{group=~"((?i)PRO).*"}', 10)} == {
        "production", "PRODUCTION"}
    assert {dict(k)["group"] for k in vec(e, 'http_requests{group!~".*((?i)TION)"}', 10)} == {
        "canary"}
    got = vec(e, 'label_replace(http_requests, "g", "$1", "group", "(?i)(prod)uction")', 10)
    assert sorted(dict(k).get("g", "") for k in got) == ["", "PROD", "prod"]
