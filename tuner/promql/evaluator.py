"""The evaluator: one expression at one timestamp over series fetched in advance.

``Fetched`` reads each selector's series once for a whole query (every step of a range query
evaluates from the same in-memory arrays). ``Evaluator`` walks the syntax tree with Prometheus
2.42's semantics (promql/engine.go): the lookback window and stale markers for instant
selectors, closed ``[t - range, t]`` windows for range selectors, functions, aggregation (with
Prometheus's summation order and NaN/Inf handling) and binary operators (vector matching is in
``tuner.promql.matching``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from tuner.errors import QueryError
from tuner.promql.aggregation import aggregate
from tuner.promql.functions import (
    DATE_FUNCS,
    MATH_FUNCS,
    OVER_TIME,
    bucket_quantile,
    date_values,
    deriv,
    extrapolated_rate,
    go_expand,
    holt_winters,
    instant_value,
    parse_go_float,
    predict_linear,
    quantile,
    scalar_binop,
)
from tuner.promql.lexer import go_regexp
from tuner.promql.matching import set_op, vector_binop, vector_scalar
from tuner.promql.results import SeriesReader
from tuner.promql.syntax import (
    NAME,
    SET_OPS,
    Aggregate,
    Binary,
    Call,
    Expr,
    MatrixSelector,
    NumberLiteral,
    Paren,
    StringLiteral,
    Subquery,
    Unary,
    VectorSelector,
    unparen,
)
from tuner.promql.timing import reference_ms, subquery_grid
from tuner.promql.values import (
    EMPTY_LABELS,
    STALE_BITS,
    Labels,
    Mat,
    Series,
    Value,
    Vec,
    check_unique,
    drop_name,
    get_label,
    set_label,
)


class Fetched:
    """Fetched series per selector, kept in memory for the evaluation steps."""

    def __init__(self, reader: SeriesReader) -> None:
        self.reader = reader
        self.series: dict[Expr, list[Series]] = {}
        # a subquery's inner result per (subquery, time): each grid point is computed once,
        # however many steps of a range query (or repeats of the subquery) read it
        self.inner: dict[tuple[Subquery, int], Vec] = {}
        self.check_time: Callable[[], None] = lambda: None  # the query's deadline check

    def fetch(self, sel: VectorSelector | MatrixSelector, start_ms: int, end_ms: int) -> None:
        if sel in self.series:
            return
        vs = sel.selector if isinstance(sel, MatrixSelector) else sel
        out: list[Series] = []
        for sd in self.reader.select(list(vs.matchers), start_ms, end_ms):
            ts = np.asarray(sd.timestamps, dtype=np.int64)
            vals = np.asarray(sd.values, dtype=np.float64)
            if len(ts) == 0:
                continue
            stale = vals.view(np.uint64) == STALE_BITS
            lbls = tuple(sorted((k, v) for k, v in {**sd.labels, NAME: sd.name}.items() if v))
            out.append(Series(lbls, ts, vals, stale, bool(stale.any())))
        # Prometheus hands series to the engine sorted by label set; sums follow that order
        out.sort(key=lambda s: s.labels)
        self.series[sel] = out


class Evaluator:
    """Evaluates one expression at one timestamp over prefetched data."""

    def __init__(self, data: Fetched, ts_ms: int, lookback_ms: int) -> None:
        self.data = data
        self.ts = ts_ms
        self.lookback = lookback_ms

    def eval(self, e: Expr) -> Value:
        if isinstance(e, NumberLiteral):
            return e.value
        if isinstance(e, StringLiteral):
            return e.value
        if isinstance(e, Paren):
            return self.eval(e.expr)
        if isinstance(e, VectorSelector):
            return self.vector_selector(e)
        if isinstance(e, MatrixSelector):
            return self.matrix_selector(e)
        if isinstance(e, Subquery):
            return self.subquery(e)
        if isinstance(e, Unary):
            val = self.eval(e.expr)
            if isinstance(val, float):
                return -val if e.op == "-" else val
            assert isinstance(val, Vec)
            if e.op == "+":
                return val
            labels = [drop_name(lb) for lb in val.labels]
            check_unique(labels)
            return Vec(labels, -val.values)
        if isinstance(e, Binary):
            return self.binary(e)
        if isinstance(e, Aggregate):
            return self.aggregate(e)
        if isinstance(e, Call):
            return self.call(e)
        raise QueryError(f"cannot evaluate {type(e).__name__}")

    # selectors
    def vector_selector(self, vs: VectorSelector) -> Vec:
        ref = reference_ms(vs, self.ts)
        low = ref - self.lookback
        labels: list[Labels] = []
        values: list[float] = []
        times: list[int] = []
        for s in self.data.series.get(vs, ()):
            ts = s.ts
            if ts[-1] <= ref:
                i = len(ts) - 1
            else:
                i = int(np.searchsorted(ts, ref, side="right")) - 1
                if i < 0:
                    continue
            t = int(ts[i])
            if t < low or s.stale[i]:
                continue
            labels.append(s.labels)
            values.append(float(s.vals[i]))
            times.append(t)
        return Vec(labels, np.array(values, dtype=np.float64), np.array(times, dtype=np.int64))

    def matrix_selector(self, ms: MatrixSelector) -> Mat:
        maxt = reference_ms(ms.selector, self.ts)
        mint = maxt - ms.range_ms
        out = Mat([], [], [])
        for s in self.data.series.get(ms, ()):
            ts = s.ts
            a = int(np.searchsorted(ts, mint, side="left"))
            b = len(ts) if ts[-1] <= maxt else int(np.searchsorted(ts, maxt, side="right"))
            if a >= b:
                continue
            t, v = ts[a:b], s.vals[a:b]
            if s.any_stale:
                keep = ~s.stale[a:b]
                if not keep.all():
                    t, v = t[keep], v[keep]
                    if len(t) == 0:
                        continue
            out.labels.append(s.labels)
            out.times.append(t)
            out.values.append(v)
        return out

    def subquery(self, sq: Subquery) -> Mat:
        """The inner expression at each grid point in the window, as a range vector."""
        acc: dict[Labels, tuple[list[int], list[float]]] = {}
        for t in subquery_grid(sq, self.ts):
            key = (sq, t)
            val = self.data.inner.get(key)
            if val is None:
                self.data.check_time()
                inner = Evaluator(self.data, t, self.lookback).eval(sq.expr)
                assert isinstance(inner, Vec)
                val = self.data.inner[key] = inner
            for lb, v in zip(val.labels, val.values.tolist(), strict=True):
                pts = acc.setdefault(lb, ([], []))
                pts[0].append(t)
                pts[1].append(v)
        return Mat(list(acc), [np.array(ts, dtype=np.int64) for ts, _ in acc.values()],
                   [np.array(vs, dtype=np.float64) for _, vs in acc.values()])

    # functions
    def call(self, e: Call) -> Value:
        f = e.func
        args = [unparen(a) for a in e.args]
        if f == "time":
            return self.ts / 1000
        if f == "pi":
            return math.pi
        matrix_idx = next((i for i, a in enumerate(args)
                           if isinstance(a, MatrixSelector | Subquery)), None)
        if matrix_idx is not None:
            return self.range_function(f, args, matrix_idx)
        if f == "timestamp":
            val = self.eval(args[0])
            assert isinstance(val, Vec)
            if isinstance(args[0], VectorSelector) and val.times is not None:
                stamps = val.times.astype(np.float64) / 1000
            else:
                stamps = np.full(len(val), self.ts / 1000)
            return self._simple_result(val, stamps, drop=True)
        if f == "vector":
            s = self.eval(args[0])
            assert isinstance(s, float)
            return Vec([EMPTY_LABELS], np.array([s]))
        if f == "scalar":
            val = self.eval(args[0])
            assert isinstance(val, Vec)
            return float(val.values[0]) if len(val) == 1 else math.nan
        if f == "absent":
            val = self.eval(args[0])
            assert isinstance(val, Vec)
            if len(val):
                return Vec([], np.empty(0))
            return Vec([_absent_labels(args[0])], np.array([1.0]))
        if f == "histogram_quantile":
            q = self.eval(args[0])
            val = self.eval(args[1])
            assert isinstance(q, float) and isinstance(val, Vec)
            return self.histogram_quantile(q, val)
        if f == "label_replace":
            val = self.eval(args[0])
            assert isinstance(val, Vec)
            strs = [self.eval(a) for a in args[1:]]
            assert all(isinstance(x, str) for x in strs)
            return _label_replace(val, *[str(x) for x in strs])
        if f == "label_join":
            val = self.eval(args[0])
            assert isinstance(val, Vec)
            strs = [self.eval(a) for a in args[1:]]
            return _label_join(val, str(strs[0]), str(strs[1]), [str(x) for x in strs[2:]])
        if f in DATE_FUNCS:
            if not args:
                return Vec([EMPTY_LABELS], date_values(f, [self.ts // 1000]))
            val = self.eval(args[0])
            assert isinstance(val, Vec)
            return self._simple_result(val, date_values(f, val.values.tolist()), drop=True)
        if f in ("sort", "sort_desc"):
            val = self.eval(args[0])
            assert isinstance(val, Vec)
            return Vec(val.labels, val.values)
        val = self.eval(args[0])
        assert isinstance(val, Vec)
        x = val.values
        with np.errstate(all="ignore"):
            if f in ("clamp", "clamp_min", "clamp_max"):
                bounds = [self.eval(a) for a in args[1:]]
                assert all(isinstance(b, float) for b in bounds)
                if f == "clamp":
                    lo, hi = float(bounds[0]), float(bounds[1])  # type: ignore[arg-type]
                    if hi < lo:
                        return Vec([], np.empty(0))
                    out = np.maximum(lo, np.minimum(hi, x))
                elif f == "clamp_min":
                    out = np.maximum(float(bounds[0]), x)  # type: ignore[arg-type]
                else:
                    out = np.minimum(float(bounds[0]), x)  # type: ignore[arg-type]
            elif f == "round":
                to = 1.0
                if len(args) > 1:
                    t = self.eval(args[1])
                    assert isinstance(t, float)
                    to = t
                inv = 1.0 / to if to != 0 else math.copysign(math.inf, to)
                out = np.floor(x * inv + 0.5) / inv
            else:
                out = MATH_FUNCS[f](x)
        return self._simple_result(val, out, drop=True)

    @staticmethod
    def _simple_result(val: Vec, values: np.ndarray, drop: bool) -> Vec:
        labels = [drop_name(lb) for lb in val.labels] if drop else list(val.labels)
        check_unique(labels)
        return Vec(labels, np.asarray(values, dtype=np.float64))

    def range_function(self, f: str, args: list[Expr], idx: int) -> Vec:
        ms = args[idx]
        if isinstance(ms, Subquery):
            mat = self.subquery(ms)
            maxt = reference_ms(ms, self.ts)
        else:
            assert isinstance(ms, MatrixSelector)
            mat = self.matrix_selector(ms)
            maxt = reference_ms(ms.selector, self.ts)
        mint = maxt - ms.range_ms
        if f == "absent_over_time":
            if mat.labels:
                return Vec([], np.empty(0))
            return Vec([_absent_labels(ms)], np.array([1.0]))
        scalars: list[float] = []
        for a in args:
            if a is not ms:
                sv = self.eval(a)
                assert isinstance(sv, float)
                scalars.append(sv)
        q = scalars[0] if f == "quantile_over_time" else 0.0
        labels: list[Labels] = []
        values: list[float] = []
        for lbls, t, v in zip(mat.labels, mat.times, mat.values, strict=True):
            res: float | None
            if f == "rate":
                res = extrapolated_rate(t, v, mint, maxt, ms.range_ms, True, True)
            elif f == "increase":
                res = extrapolated_rate(t, v, mint, maxt, ms.range_ms, True, False)
            elif f == "delta":
                res = extrapolated_rate(t, v, mint, maxt, ms.range_ms, False, False)
            elif f == "irate":
                res = instant_value(t, v, True)
            elif f == "idelta":
                res = instant_value(t, v, False)
            elif f == "deriv":
                res = deriv(t, v)
            elif f == "predict_linear":
                res = predict_linear(t, v, self.ts, scalars[0])
            elif f == "holt_winters":
                res = holt_winters(v, scalars[0], scalars[1])
            elif f == "quantile_over_time":
                res = quantile(q, v.tolist())
            else:
                res = OVER_TIME[f](v)
            if res is None:
                continue
            labels.append(lbls if f == "last_over_time" else drop_name(lbls))
            values.append(res)
        check_unique(labels)
        return Vec(labels, np.array(values, dtype=np.float64))

    def histogram_quantile(self, q: float, val: Vec) -> Vec:
        groups: dict[Labels, tuple[Labels, list[tuple[float, float]]]] = {}
        for lbls, v in zip(val.labels, val.values.tolist(), strict=True):
            le = parse_go_float(get_label(lbls, "le"))
            if le is None:
                continue
            key = tuple(p for p in lbls if p[0] != "le")
            if key not in groups:
                groups[key] = (tuple(p for p in key if p[0] != NAME), [])
            groups[key][1].append((le, v))
        labels = [out for out, _ in groups.values()]
        values = [bucket_quantile(q, b) for _, b in groups.values()]
        check_unique(labels)
        return Vec(labels, np.array(values, dtype=np.float64))

    # aggregation
    def aggregate(self, e: Aggregate) -> Vec:
        param: float | str | None = None
        if e.param is not None:
            p = self.eval(e.param)
            assert isinstance(p, float | str)
            param = p
        val = self.eval(e.expr)
        assert isinstance(val, Vec)
        return aggregate(e.op, val, param, e.grouping, e.without)

    # binary operators
    def binary(self, e: Binary) -> Value:
        lhs = self.eval(e.lhs)
        rhs = self.eval(e.rhs)
        op = e.op
        if isinstance(lhs, float) and isinstance(rhs, float):
            return scalar_binop(op, lhs, rhs)
        if isinstance(lhs, Vec) and isinstance(rhs, Vec):
            assert e.matching is not None
            if op in SET_OPS:
                return set_op(op, lhs, rhs, e.matching)
            return vector_binop(op, lhs, rhs, e.matching, e.return_bool)
        if isinstance(lhs, Vec) and isinstance(rhs, float):
            return vector_scalar(op, lhs, rhs, False, e.return_bool)
        if isinstance(lhs, float) and isinstance(rhs, Vec):
            return vector_scalar(op, rhs, lhs, True, e.return_bool)
        raise QueryError(f"invalid operand types for {op!r}")


def _absent_labels(e: Expr) -> Labels:
    e = unparen(e)
    if isinstance(e, MatrixSelector):
        e = e.selector
    if not isinstance(e, VectorSelector):
        return EMPTY_LABELS
    out: dict[str, str] = {}
    has: set[str] = set()
    for m in e.matchers:
        if m.name == NAME:
            continue
        if m.op == "=" and m.name not in has:
            if m.value:
                out[m.name] = m.value
            else:
                out.pop(m.name, None)
            has.add(m.name)
        else:
            out.pop(m.name, None)
    return tuple(sorted(out.items()))


def _label_join(val: Vec, dst: str, sep: str, srcs: list[str]) -> Vec:
    labels = [set_label(lb, dst, sep.join(get_label(lb, s) for s in srcs)) for lb in val.labels]
    check_unique(labels)
    return Vec(labels, val.values.copy())


def _label_replace(val: Vec, dst: str, repl: str, src: str, regex: str) -> Vec:
    rx = re.compile(f"^(?:{go_regexp(regex)})$", re.DOTALL)
    labels: list[Labels] = []
    for lbls in val.labels:
        m = rx.match(get_label(lbls, src))
        if m is None:
            labels.append(lbls)
        else:
            labels.append(set_label(lbls, dst, go_expand(repl, m)))
    check_unique(labels)
    return Vec(labels, val.values.copy())
