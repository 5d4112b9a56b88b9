"""tuner.promql: parsing (precedence, refusals naming the construct) and evaluation on a real Store.

Expected values are worked out by hand from Prometheus 2.42's documented semantics; the
differential integration test checks the same engine against a real Prometheus.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tuner.errors import QueryError
from tuner.promql import (
    Aggregate,
    Binary,
    Engine,
    NumberLiteral,
    Unary,
    check_expr,
    parse_duration_ms,
    parse_expr,
)
from tuner.store import STALE_NAN, Store

T0 = 1_700_000_000  # seconds


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
    assert res.kind == "vector"
    return {tuple(sorted(e.labels.items())): e.value for e in res.vector}


def scalar(expr: str) -> float:
    res = Engine(_NoData()).instant(expr, T0)
    assert res.kind == "scalar" and res.scalar is not None
    return res.scalar


class _NoData:
    def select(self, matchers: object, start_ms: int, end_ms: int) -> list[object]:
        return []


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "value"), [
    ("1 + 2 * 3", 7.0),
    ("(1 + 2) * 3", 9.0),
    ("10 - 2 - 3", 5.0),
    ("2 ^ 3 ^ 2", 512.0),
    ("-2 ^ 2", -4.0),
    ("2 * 3 % 4", 2.0),
    ("8 / 2 / 2", 2.0),
    ("1 < bool 2 == bool 1", 1.0),
    ("1 + 2 > bool 2", 1.0),
    ("-(1 - 3)", 2.0),
    ("0x1F + 1e1 + .5", 41.5),
    ("1 / 0", math.inf),
    ("-1 / 0", -math.inf),
    ("5 % 0", math.nan),
    ("(-8) ^ (1/3)", math.nan),
    ("0 ^ -1", math.inf),
    ("time()", float(T0)),
])
def test_scalar_arithmetic_and_precedence(expr: str, value: float) -> None:
    got = scalar(expr)
    assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value)


def test_precedence_shapes() -> None:
    e = parse_expr("a or b and c unless d")
    assert isinstance(e, Binary) and e.op == "or"
    assert isinstance(e.rhs, Binary) and e.rhs.op == "unless"
    assert isinstance(e.rhs.lhs, Binary) and e.rhs.lhs.op == "and"
    u = parse_expr("-a * b")
    assert isinstance(u, Binary) and u.op == "*" and isinstance(u.lhs, Unary)
    p = parse_expr("-a ^ b")
    assert isinstance(p, Unary) and isinstance(p.expr, Binary) and p.expr.op == "^"
    m = parse_expr("a / on (x) group_left (y) b > bool 1")
    assert isinstance(m, Binary) and m.op == ">" and m.return_bool
    assert isinstance(m.lhs, Binary) and m.lhs.matching is not None
    assert m.lhs.matching.card == "many-to-one" and m.lhs.matching.on
    assert m.lhs.matching.labels == ("x",) and m.lhs.matching.include == ("y",)
    agg = parse_expr("sum(rate(x[5m])) without (a, b)")
    assert isinstance(agg, Aggregate) and agg.without and agg.grouping == ("a", "b")
    assert parse_expr("-1") == NumberLiteral(-1.0)


def test_durations() -> None:
    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("1d") == 86_400_000
    with pytest.raises(QueryError, match="out of order"):
        parse_duration_ms("5m1h")
    # the grammar is tuner.config's (one duration parser): range selectors use it too
    assert parse_duration_ms("0") == 0
    with pytest.raises(QueryError, match="out of range"):
        check_expr("rate(x[300000000y])")
    with pytest.raises(QueryError, match="out of order"):
        check_expr("rate(x[5m1h])")


@pytest.mark.parametrize(("expr", "message"), [
    ("histogram_sum(x)", 'unsupported function "histogram_sum"'),
    ("histogram_count(x)", 'unsupported function "histogram_count"'),
    ("histogram_fraction(0, 1, x)", 'unsupported function "histogram_fraction"'),
    ("frobnicate(x)", 'unknown function "frobnicate"'),
    ("atan2(x, y)", 'unknown function "atan2"'),
    ("rate(x[5m:1m][10m:1m])", "subquery is only allowed on instant vector, got range vector"),
    ("x[5m:0s]", "subquery step must be positive"),
    ("x[0s:1m]", "subquery range must be positive"),
    ("x[5m:1m", "expected ']' to close a subquery"),
    ("x @ 100 [5m]", "no @ modifiers allowed before range"),
    ("x @ 100 @ 200", "@ <timestamp> may not be set multiple times"),
    ("rate(x[5m]) @ 100", "@ modifier must be preceded by an instant vector selector"),
    ("sum(x) @ 100", "@ modifier must be preceded"),
    ("x @ foo", "expected a timestamp (unix seconds), start() or end() after @"),
    ("x @ Inf", "timestamp out of bounds for @ modifier"),
    ("x[5m:] offset 1m offset 2m", "offset may not be set multiple times"),
    ('count_values(1, x)', 'expected type string in aggregation parameter of "count_values"'),
    ('count_values("v")', "wrong number of arguments"),
    ("predict_linear(x, 60)", "expected type range vector"),
    ('label_join(x, "a")', 'expected 4 argument(s) in call to "label_join", got 2'),
    ('label_join(x, "a-b", ",", "c")', "invalid destination label name in label_join(): a-b"),
    ('label_join(x, "a", ",", "c-d")', "invalid source label name in label_join(): c-d"),
    ("year(x, y)", 'expected 1 argument(s) in call to "year", got 2'),
    ("x atan2 bool y", "bool modifier can only be used on comparison operators"),
    ("rate(x)", "expected type range vector"),
    ("sum(x[5m])", "expected type instant vector"),
    ("x[5m] + 1", "binary expression must contain only scalar and instant vector"),
    ("1 > 2", "comparisons between scalars must use BOOL modifier"),
    ("x + bool y", "bool modifier can only be used on comparison operators"),
    ('{job=""}', "at least one non-empty matcher"),
    ('x{a=~"("}', "invalid regular expression"),
    ("x and on (a) group_left b", "no grouping allowed"),
    ("sum(x", "expected ')'"),
    ("x +", "unexpected end of input"),
    ("rate(x[5m]) offset 1m", "offset modifier must be preceded"),
    ("x offset 1m [5m]", "no offset modifiers allowed before range"),
    ("topk(x)", "wrong number of arguments"),
    ("", "empty expression"),
    ('label_replace(x, "1bad", "$1", "a", "(.*)")', "invalid destination label name"),
])
def test_refusals_name_the_construct(expr: str, message: str) -> None:
    with pytest.raises(QueryError, match=__import__("re").escape(message)):
        check_expr(expr)


# -- evaluation ------------------------------------------------------------------------------


def test_lookback_and_stale_markers(store: Store) -> None:
    put(store, "g", {"i": "a"}, [(0, 1.0), (15, 2.0), (30, 3.0)])
    put(store, "g", {"i": "b"}, [(0, 5.0), (15, 6.0), (30, STALE_NAN)])
    eng = Engine(store)
    assert vec(eng, "g", 20) == {(("__name__", "g"), ("i", "a")): 2.0,
                                 (("__name__", "g"), ("i", "b")): 6.0}
    # a stale marker ends series b at once; a keeps its last value for 5 minutes (inclusive)
    assert vec(eng, "g", 30) == {(("__name__", "g"), ("i", "a")): 3.0}
    assert vec(eng, "g", 330) == {(("__name__", "g"), ("i", "a")): 3.0}
    assert vec(eng, "g", 330.001) == {}
    assert vec(eng, "g offset 1m", 90) == {(("__name__", "g"), ("i", "a")): 3.0}
    # stale markers are dropped from range windows
    assert vec(eng, "count_over_time(g[1m])", 45) == {(("i", "a"),): 3.0, (("i", "b"),): 2.0}
    short = Engine(store, lookback_delta=10)
    assert vec(short, "g", 45) == {}


def test_rate_increase_with_counter_reset(store: Store) -> None:
    # samples every 10s; the counter resets between t=30 and t=40
    pts = [(0, 10.0), (10, 20.0), (20, 30.0), (30, 40.0), (40, 5.0), (50, 15.0)]
    put(store, "c_total", {"job": "x"}, pts)
    eng = Engine(store)
    # window [0, 60]: raw increase = 15 - 10 + 40 (reset) = 45 over 50s sampled;
    # start gap 0 < 11 -> extrapolate by 0 (zero point: 50*10/45 = 11.1 > 0);
    # end gap 10 < 11 -> +10; factor 60/50
    inc = vec(eng, "increase(c_total[1m])", 60)[(("job", "x"),)]
    assert inc == pytest.approx(45 * 60 / 50)
    assert vec(eng, "rate(c_total[1m])", 60)[(("job", "x"),)] == pytest.approx(45 / 50)
    # irate: last two points 5 -> 15 over 10s
    assert vec(eng, "irate(c_total[1m])", 60)[(("job", "x"),)] == pytest.approx(1.0)
    # irate across the reset uses the value after it
    assert vec(eng, "irate(c_total[1m])", 45)[(("job", "x"),)] == pytest.approx(0.5)
    # delta is not a counter function: no reset correction, no zero clamp
    d = vec(eng, "delta(c_total[1m])", 60)[(("job", "x"),)]
    assert d == pytest.approx((15 - 10) * 60 / 50)
    # a single point is not enough
    assert vec(eng, "rate(c_total[5s])", 50) == {}
    assert vec(eng, "resets(c_total[1m])", 60) == {(("job", "x"),): 1.0}


def test_rate_extrapolation_to_zero(store: Store) -> None:
    # a counter that starts at 5 at t=100 and rises 1/s: the zero point (5s before the first
    # sample) is nearer than the window start, so extrapolation stops there
    put(store, "z_total", {}, [(100 + 10 * i, 5.0 + 10 * i) for i in range(4)])
    eng = Engine(store)
    got = vec(eng, "increase(z_total[1m])", 130)[()]
    # sampled 30s, raw 30; to start: min(30, 30*5/30=5) = 5 < 11 -> +5; to end 0 -> +0
    assert got == pytest.approx(30 * 35 / 30)


def test_histogram_quantile_fixups(store: Store) -> None:
    buckets = {"0.1": 10.0, "0.5": 20.0, "1": 15.0, "+Inf": 30.0}  # 1 < 0.5: not monotonic
    for le, v in buckets.items():
        put(store, "h_bucket", {"le": le, "job": "a"}, [(0, v)])
    put(store, "m_bucket", {"le": "0.1"}, [(0, 1.0)])  # no +Inf bucket
    put(store, "m_bucket", {"le": "1"}, [(0, 2.0)])
    eng = Engine(store)
    # rank 0.5*30 = 15 falls into (0.1, 0.5]: 0.1 + 0.4 * (15-10)/(20-10)
    assert vec(eng, "histogram_quantile(0.5, h_bucket)", 0) == {
        (("job", "a"),): pytest.approx(0.3)}
    # rank 0.9*30 = 27 lands in +Inf: the highest finite bound is returned
    assert vec(eng, "histogram_quantile(0.9, h_bucket)", 0)[(("job", "a"),)] == 1.0
    # fixed-up bucket "1" counts 20: rank 0.6*30 = 18 is in (0.1, 0.5]
    assert vec(eng, "histogram_quantile(0.6, h_bucket)", 0)[(("job", "a"),)] == pytest.approx(
        0.1 + 0.4 * 8 / 10)
    assert math.isnan(vec(eng, "histogram_quantile(0.5, m_bucket)", 0)[()])
    assert vec(eng, "histogram_quantile(2, h_bucket)", 0)[(("job", "a"),)] == math.inf
    assert vec(eng, "histogram_quantile(-1, h_bucket)", 0)[(("job", "a"),)] == -math.inf


def test_name_dropping_and_matching(store: Store) -> None:
    put(store, "a", {"i": "1", "x": "p"}, [(0, 4.0)])
    put(store, "a", {"i": "2", "x": "q"}, [(0, 1.0)])
    put(store, "b", {"i": "1"}, [(0, 2.0)])
    put(store, "b", {"i": "2"}, [(0, 2.0)])
    put(store, "c", {"i": "1"}, [(0, 3.0)])
    eng = Engine(store)
    assert vec(eng, "a > 2", 0) == {(("__name__", "a"), ("i", "1"), ("x", "p")): 4.0}
    assert vec(eng, "a > bool 2", 0) == {(("i", "1"), ("x", "p")): 1.0, (("i", "2"), ("x", "q")): 0.0}
    assert vec(eng, "a * 2", 0)[(("i", "1"), ("x", "p"))] == 8.0
    assert vec(eng, "a / on (i) b", 0) == {(("i", "1"),): 2.0, (("i", "2"),): 0.5}
    assert vec(eng, "a / ignoring (x) b", 0) == {(("i", "1"),): 2.0, (("i", "2"),): 0.5}
    assert vec(eng, "b * on (i) group_left (x) a", 0) == {
        (("i", "1"), ("x", "p")): 8.0, (("i", "2"), ("x", "q")): 2.0}
    assert vec(eng, "last_over_time(a[1m])", 0)[(("__name__", "a"), ("i", "1"), ("x", "p"))] == 4
    assert (("i", "1"), ("x", "p")) in vec(eng, "max_over_time(a[1m])", 0)
    assert vec(eng, "abs(b)", 0) == {(("i", "1"),): 2.0, (("i", "2"),): 2.0}
    assert vec(eng, "sum by (i) (a) or b", 0) == {(("i", "1"),): 4.0, (("i", "2"),): 1.0}
    assert vec(eng, "b unless on (i) a > 2", 0) == {(("__name__", "b"), ("i", "2")): 2.0}
    with pytest.raises(QueryError, match="many-to-many matching not allowed"):
        eng.instant("b + on () a", T0)
    with pytest.raises(QueryError, match="same labelset"):
        eng.instant('abs({__name__=~"b|c"})', T0)
    assert vec(eng, 'label_replace(b, "host", "h-$1", "i", "(.*)")', 0)[
        (("__name__", "b"), ("host", "h-1"), ("i", "1"))] == 2.0
    assert vec(eng, "topk(1, a)", 0) == {(("__name__", "a"), ("i", "1"), ("x", "p")): 4.0}
    assert vec(eng, 'absent(nope{job="j", x=~"y"})', 0) == {(("job", "j"),): 1.0}
    assert vec(eng, "absent(a)", 0) == {}


def test_result_kinds_and_range(store: Store) -> None:
    put(store, "g", {"i": "a"}, [(t, float(t)) for t in range(0, 600, 15)])
    eng = Engine(store)
    m = eng.instant("g[1m]", T0 + 60)
    assert m.kind == "matrix" and len(m.matrix) == 1
    assert m.matrix[0].timestamps.tolist() == [T0 + 0.0, T0 + 15, T0 + 30, T0 + 45, T0 + 60]
    assert eng.instant('"hello"', T0).string == "hello"
    assert eng.instant("scalar(g)", T0 + 30).scalar == 30.0
    series = eng.range("g * 2", T0, T0 + 120, 60)
    assert len(series) == 1
    assert series[0].timestamps.tolist() == [T0, T0 + 60.0, T0 + 120]
    assert series[0].values.tolist() == [0.0, 120.0, 240.0]
    assert dict(series[0].labels) == {"i": "a"}
    with pytest.raises(QueryError, match="range vector"):
        eng.range("g[1m]", T0, T0 + 60, 15)
    after = eng.range("g", T0 + 600, T0 + 1000, 100)
    # last sample at 585: visible through 885 (lookback), gone at 900+
    assert after[0].timestamps.tolist() == [T0 + 600, T0 + 700, T0 + 800]
    assert np.all(after[0].values == 585.0)


def test_window_cache_matches_uncached_as_data_grows(store: Store) -> None:
    """A long-lived caching engine sees samples appended later, including late writes."""
    plain = Engine(store)
    cached = Engine(store, cache=True, cache_tail=60)
    exprs = ["rate(c_total[5m])", "increase(c_total[1h])", "c_total", "count_over_time(c_total[2m])",
             "rate(c_total[1m] offset 10m)", "sum(rate(c_total[30m]))"]
    value = 0.0
    for step in range(0, 240):
        t = step * 15
        value += 3.0
        labels = {"job": "a"} if step < 200 else {"job": "b"}  # a new series appears late
        put(store, "c_total", labels, [(t, value)])
        if step % 20 == 19:
            put(store, "c_total", {"job": "a"}, [(t - 30, value - 5.5)])  # overwrite, late
        for e in exprs:
            want = plain.instant(e, T0 + t)
            got = cached.instant(e, T0 + t)
            assert {tuple(sorted(x.labels.items())): x.value for x in got.vector} == pytest.approx(
                {tuple(sorted(x.labels.items())): x.value for x in want.vector}), (e, t)
    # an older window than anything seen so far fetches the missing head
    assert vec(cached, "count_over_time(c_total[1h])", 3600) == vec(
        plain, "count_over_time(c_total[1h])", 3600)
