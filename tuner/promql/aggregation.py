"""PromQL aggregation operators over an instant vector, as Prometheus 2.42 computes them.

``aggregate`` groups a vector by the ``by``/``without`` labels and reduces each group: ``sum``
(in the order Prometheus hands series over), ``avg`` (the incremental, overflow-safe mean),
``min``/``max`` (NaN only when every value is NaN), ``count``, ``group``, ``stddev``/``stdvar``
(Welford), ``quantile``, ``topk``/``bottomk`` (which keep the series' labels) and
``count_values`` (one output series per distinct value, the value written into a label the way
Go's ``strconv.FormatFloat(v, 'f', -1, 64)`` writes it). Pure: a vector in, a vector out.
"""

from __future__ import annotations

import math

import numpy as np

from tuner.errors import QueryError
from tuner.promql.functions import format_go_float_f, quantile
from tuner.promql.lexer import LABEL_NAME_RE
from tuner.promql.syntax import NAME
from tuner.promql.values import EMPTY_LABELS, Labels, Vec, set_label


def aggregate(op: str, val: Vec, param: float | str | None, grouping: tuple[str, ...],
              without: bool) -> Vec:
    """``op by|without (grouping) (param, val)``; QueryError for a bad parameter."""
    grouping = tuple(sorted(grouping))
    if op == "count_values":
        label = str(param)
        if not LABEL_NAME_RE.fullmatch(label):
            raise QueryError(f'invalid label name "{label}"')
        val = Vec([set_label(lb, label, format_go_float_f(v))
                   for lb, v in zip(val.labels, val.values.tolist(), strict=True)], val.values)
        if not without:
            grouping = tuple(sorted({*grouping, label}))
    gset = set(grouping)
    groups: dict[Labels, list[int]] = {}
    for i, lbls in enumerate(val.labels):
        if without:
            key = tuple(p for p in lbls if p[0] != NAME and p[0] not in gset)
        else:
            key = tuple(p for p in lbls if p[0] in gset)
        groups.setdefault(key, []).append(i)
    vals = val.values.tolist()
    if op in ("topk", "bottomk"):
        assert isinstance(param, float)
        return _top_bottom(op, val, vals, groups, param)
    labels: list[Labels] = []
    values: list[float] = []
    for key, idxs in groups.items():
        xs = [vals[i] for i in idxs]
        if op == "count_values":
            r = float(len(xs))
        elif op == "quantile":
            assert isinstance(param, float)
            r = quantile(param, xs)
        else:
            r = _reduce(op, xs)
        labels.append(key if (without or grouping) else EMPTY_LABELS)
        values.append(r)
    return Vec(labels, np.array(values, dtype=np.float64))


def _top_bottom(op: str, val: Vec, vals: list[float], groups: dict[Labels, list[int]],
                param: float) -> Vec:
    if not (-(2.0**63) <= param <= 2.0**63 - 1) or math.isnan(param):
        raise QueryError(f"Scalar value {param} overflows int64")
    k = int(param)
    labels: list[Labels] = []
    values: list[float] = []
    if k < 1:
        return Vec([], np.empty(0))
    sign = -1.0 if op == "topk" else 1.0
    for idxs in groups.values():
        ordered = sorted(idxs, key=lambda i: (math.isnan(vals[i]),
                                              sign * vals[i] if not math.isnan(vals[i]) else 0))
        for i in ordered[:k]:
            labels.append(val.labels[i])
            values.append(vals[i])
    return Vec(labels, np.array(values, dtype=np.float64))


def _reduce(op: str, xs: list[float]) -> float:
    if op == "sum":
        r = 0.0
        for x in xs:
            r += x
        return r
    if op == "avg":
        mean = xs[0]
        for n, x in enumerate(xs[1:], start=2):
            if math.isinf(mean):
                if math.isinf(x) and (mean > 0) == (x > 0):
                    continue
                if not math.isinf(x) and not math.isnan(x):
                    continue
            mean += x / n - mean / n
        return mean
    if op == "count":
        return float(len(xs))
    if op == "group":
        return 1.0
    if op == "max":
        r = xs[0]
        for x in xs[1:]:
            if r < x or math.isnan(r):
                r = x
        return r
    if op == "min":
        r = xs[0]
        for x in xs[1:]:
            if r > x or math.isnan(r):
                r = x
        return r
    if op in ("stddev", "stdvar"):
        mean = xs[0]
        acc = 0.0
        for n, x in enumerate(xs[1:], start=2):
            delta = x - mean
            mean += delta / n
            acc += delta * (x - mean)
        r = acc / len(xs)
        if op == "stddev":
            r = math.sqrt(r) if r >= 0 or math.isnan(r) else math.nan
        return r
    raise QueryError(f'unsupported aggregation "{op}"')
