"""The public PromQL engine: instant and range queries over a series reader.

``Engine.instant`` answers like Prometheus's ``/api/v1/query`` and ``Engine.range`` like
``/api/v1/query_range``. A query parses once (parses are memoised), gets its ``@ start()`` /
``@ end()`` times and default subquery step (``timing.resolve``), fetches every selector's series
once for the whole time span it reads (``timing.selector_spans``, into ``Fetched``), then
evaluates each step from memory. With
``cache=True`` the engine reads through a :class:`~tuner.promql.cache.WindowCache`, for a
long-lived rule evaluator whose windows slide forward. ``limits`` (``tuner.promql.limits``)
bound each query's run time and the samples it holds, as Prometheus's ``--query.timeout`` and
``--query.max-samples`` do; the default has no limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from tuner.errors import QueryError
from tuner.promql.cache import WindowCache
from tuner.promql.evaluator import Evaluator, Fetched
from tuner.promql.limits import UNLIMITED, Budget, QueryLimits
from tuner.promql.parser import parse_expr
from tuner.promql.results import Element, QueryResult, RangeSeries, SeriesReader, ValueType
from tuner.promql.syntax import TYPE_NAMES, Expr, S, V, type_of
from tuner.promql.timing import resolve, selector_spans
from tuner.promql.values import EMPTY_LABELS, Labels, Mat, Vec


def _to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def _to_elements(vec: Vec) -> tuple[Element, ...]:
    return tuple(Element(dict(lb), float(v)) for lb, v in zip(vec.labels, vec.values.tolist(),
                                                               strict=True))


class Engine:
    """Evaluates PromQL over a SeriesReader; ``lookback_delta`` in seconds (Prometheus: 5m).

    With ``cache=True`` the engine keeps the samples it read between queries and fetches only
    what a new window adds (plus the newest ``cache_tail`` seconds again, for samples written
    late). That suits a long-lived rule evaluator over a store that only grows at its end
    (the daemon's scrape loop); do not use it over a reader whose older data changes
    (backfill), because a cached window does not see writes older than ``cache_tail``.
    """

    def __init__(self, reader: SeriesReader, lookback_delta: float = 300.0, *,
                 cache: bool = False, cache_tail: float = 300.0,
                 subquery_step: float = 60.0,
                 limits: QueryLimits = UNLIMITED,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lookback_delta = lookback_delta
        # a subquery without a step ([1h:]) steps at this interval (Prometheus: the global
        # evaluation_interval, 1m by default; promtool: the test file's evaluation_interval)
        self.subquery_step = subquery_step
        self.limits = limits
        self.clock = clock
        self.reader: SeriesReader = (
            WindowCache(reader, tail_ms=_to_ms(cache_tail)) if cache else reader)

    def _expr(self, expr: str | Expr, start_ms: int, end_ms: int) -> Expr:
        """The parsed expression with ``@ start()/end()`` and default subquery steps fixed."""
        e = parse_expr(expr) if isinstance(expr, str) else expr
        return resolve(e, start_ms, end_ms, _to_ms(self.subquery_step))

    def _prefetch(self, e: Expr, start_ms: int, end_ms: int, budget: Budget) -> Fetched:
        data = Fetched(self.reader)
        data.check_time = budget.check_time  # subqueries check it at each grid point
        spans = selector_spans(e, start_ms, end_ms, _to_ms(self.lookback_delta))
        for sel, (lo, hi) in spans.items():
            budget.check_time()
            data.fetch(sel, lo, hi)
            budget.add_samples(sum(len(s.ts) for s in data.series[sel]))
        budget.check_time()
        return data

    def instant(self, expr: str | Expr, ts: float) -> QueryResult:
        """Evaluate at ``ts`` (unix seconds), like Prometheus's /api/v1/query."""
        ts_ms = _to_ms(ts)
        e = self._expr(expr, ts_ms, ts_ms)
        budget = Budget(self.limits, self.clock)
        data = self._prefetch(e, ts_ms, ts_ms, budget)
        val = Evaluator(data, ts_ms, _to_ms(self.lookback_delta)).eval(e)
        budget.check_time()
        if isinstance(val, float):
            return QueryResult(ValueType.SCALAR, scalar=val)
        if isinstance(val, str):
            return QueryResult(ValueType.STRING, string=val)
        if isinstance(val, Mat):
            return QueryResult(ValueType.MATRIX, matrix=tuple(
                RangeSeries(dict(lb), t.astype(np.float64) / 1000, v.copy())
                for lb, t, v in zip(val.labels, val.times, val.values, strict=True)))
        return QueryResult(ValueType.VECTOR, vector=_to_elements(val))

    def range(self, expr: str | Expr, start: float, end: float,
              step: float) -> tuple[RangeSeries, ...]:
        """Evaluate at start, start+step, ... <= end, like /api/v1/query_range."""
        if step <= 0:
            raise QueryError("zero or negative query resolution step widths are not accepted")
        start_ms, end_ms, step_ms = _to_ms(start), _to_ms(end), _to_ms(step)
        e = self._expr(expr, start_ms, end_ms)
        t = type_of(e)
        if t not in (S, V):
            raise QueryError(f"invalid expression type {TYPE_NAMES[t]!r} for range query, "
                             "must be scalar or instant vector")
        budget = Budget(self.limits, self.clock)
        data = self._prefetch(e, start_ms, end_ms, budget)
        lookback = _to_ms(self.lookback_delta)
        acc: dict[Labels, tuple[list[int], list[float]]] = {}
        ts = start_ms
        while ts <= end_ms:
            val = Evaluator(data, ts, lookback).eval(e)
            budget.check_time()
            if isinstance(val, float):
                budget.add_samples(1)
                pts = acc.setdefault(EMPTY_LABELS, ([], []))
                pts[0].append(ts)
                pts[1].append(val)
            else:
                assert isinstance(val, Vec)
                budget.add_samples(len(val))
                for lb, v in zip(val.labels, val.values.tolist(), strict=True):
                    pts = acc.setdefault(lb, ([], []))
                    pts[0].append(ts)
                    pts[1].append(v)
            ts += step_ms
        return tuple(
            RangeSeries(dict(lb), np.array(tss, dtype=np.float64) / 1000,
                        np.array(vs, dtype=np.float64))
            for lb, (tss, vs) in acc.items())
