"""PromQL's numeric functions: pure functions of one series' points or of value arrays.

Range-vector functions take one series' timestamps (ms) and values inside a window and return
one value or None (no output element): ``extrapolated_rate`` (``rate``/``increase``/``delta``),
``instant_value`` (``irate``/``idelta``), ``deriv`` and the ``*_over_time`` table. Instant-vector
helpers: ``bucket_quantile`` (``histogram_quantile``), Go float parsing and regexp expansion
(``le`` labels, ``label_replace``) and IEEE binary operators. Each follows Prometheus 2.42's
functions.go / quantile.go, including its Kahan summation and NaN/Inf corner cases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from tuner.errors import QueryError
from tuner.promql.syntax import COMPARISONS


def _fsum(values: Iterable[float]) -> float:
    """An exact sum; a plain one when the values hold Inf or NaN (fsum refuses them)."""
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
        total = 0.0
        for v in values:
            total += v
        return total


# -- range-vector functions (one series' points in, one value or None out) -------------------


def extrapolated_rate(t: np.ndarray, v: np.ndarray, range_start: int, range_end: int,
                       range_ms: int, is_counter: bool, is_rate: bool) -> float | None:
    """``rate``/``increase``/``delta`` of one series over ``[range_start, range_end]`` (ms).

    Counter resets add the value before the drop; the result is extrapolated towards the
    window's edges (not below zero for counters), as Prometheus's ``extrapolatedRate``.
    """
    n = len(v)
    if n < 2:
        return None
    first = float(v[0])
    result = float(v[-1]) - first
    if is_counter:
        prev = v[:-1]
        drops = prev[v[1:] < prev]
        for p in drops.tolist():
            result += p
    duration_to_start = (int(t[0]) - range_start) / 1000
    duration_to_end = (range_end - int(t[-1])) / 1000
    sampled = (int(t[-1]) - int(t[0])) / 1000
    avg_between = sampled / (n - 1)
    if is_counter and result > 0 and first >= 0:
        duration_to_zero = sampled * (first / result)
        if duration_to_zero < duration_to_start:
            duration_to_start = duration_to_zero
    threshold = avg_between * 1.1
    interval = sampled
    interval += duration_to_start if duration_to_start < threshold else avg_between / 2
    interval += duration_to_end if duration_to_end < threshold else avg_between / 2
    factor = div(interval, sampled)
    if is_rate:
        factor /= range_ms / 1000
    return result * factor


def div(a: float, b: float) -> float:
    """``a / b`` with Go's float semantics (``x/0`` is ±Inf, ``0/0`` is NaN)."""
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def instant_value(t: np.ndarray, v: np.ndarray, is_rate: bool) -> float | None:
    """``irate`` (``is_rate``) or ``idelta`` from the last two points; None with fewer."""
    if len(v) < 2:
        return None
    last, prev = float(v[-1]), float(v[-2])
    result = last if is_rate and last < prev else last - prev
    interval = int(t[-1]) - int(t[-2])
    if interval == 0:
        return None
    if is_rate:
        result /= interval / 1000
    return result


def deriv(t: np.ndarray, v: np.ndarray) -> float | None:
    """Least-squares slope per second (``deriv``); None with fewer than two points."""
    if len(v) < 2:
        return None
    init = float(v[0])
    if bool(np.all(v == init)):
        return math.nan if math.isinf(init) else 0.0
    n = float(len(v))
    x = (t - t[0]).astype(np.float64) / 1e3
    with np.errstate(all="ignore"):
        sum_x = _fsum(x.tolist())
        sum_y = _fsum(v.tolist())
        sum_xy = _fsum((x * v).tolist())
        sum_x2 = _fsum((x * x).tolist())
        cov_xy = sum_xy - sum_x * sum_y / n
        var_x = sum_x2 - sum_x * sum_x / n
    return div(cov_xy, var_x)


def quantile(q: float, values: Sequence[float]) -> float:
    """The φ-quantile of values as ``quantile`` and ``quantile_over_time`` compute it."""
    if len(values) == 0 or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    nans = [x for x in values if math.isnan(x)]
    rest = sorted(x for x in values if not math.isnan(x))
    ordered = nans + rest
    n = float(len(ordered))
    rank = q * (n - 1)
    lower = max(0.0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return ordered[int(lower)] * (1 - weight) + ordered[int(upper)] * weight


def _welford(values: Iterable[float]) -> tuple[float, float]:
    """(sum of squared deviations, count) the way Prometheus's stddev_over_time computes it."""
    count = 0.0
    mean = c_mean = aux = c_aux = 0.0
    for x in values:
        count += 1
        delta = x - (mean + c_mean)
        mean, c_mean = _kahan_inc(delta / count, mean, c_mean)
        aux, c_aux = _kahan_inc(delta * (x - (mean + c_mean)), aux, c_aux)
    return aux + c_aux, count


def _kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def _avg_over_time(v: np.ndarray) -> float:
    vals = v.tolist()
    if any(math.isinf(x) or math.isnan(x) for x in vals):
        mean = c = count = 0.0
        for x in vals:
            count += 1
            if math.isinf(mean):
                if math.isinf(x) and (mean > 0) == (x > 0):
                    continue
                if not math.isinf(x) and not math.isnan(x):
                    continue
            mean, c = _kahan_inc(x / count - mean / count, mean, c)
        return mean if math.isinf(mean) else mean + c
    return _fsum(vals) / len(vals)


def _max_over(vals: list[float]) -> float:
    m = vals[0]
    for x in vals:
        if x > m or math.isnan(m):
            m = x
    return m


def _min_over(vals: list[float]) -> float:
    m = vals[0]
    for x in vals:
        if x < m or math.isnan(m):
            m = x
    return m


def _sum_over(vals: list[float]) -> float:
    total = c = 0.0
    if not any(math.isinf(x) or math.isnan(x) for x in vals):
        return _fsum(vals)
    for x in vals:
        total, c = _kahan_inc(x, total, c)
    return total if math.isinf(total) else total + c


def _changes(vals: list[float]) -> float:
    n = 0
    prev = vals[0]
    for cur in vals[1:]:
        if cur != prev and not (math.isnan(cur) and math.isnan(prev)):
            n += 1
        prev = cur
    return float(n)


def _resets(v: np.ndarray) -> float:
    return float(np.count_nonzero(v[1:] < v[:-1]))


OVER_TIME: dict[str, Callable[[np.ndarray], float]] = {
    "avg_over_time": _avg_over_time,
    "min_over_time": lambda v: _min_over(v.tolist()),
    "max_over_time": lambda v: _max_over(v.tolist()),
    "sum_over_time": lambda v: _sum_over(v.tolist()),
    "count_over_time": lambda v: float(len(v)),
    "last_over_time": lambda v: float(v[-1]),
    "present_over_time": lambda v: 1.0,
    "stddev_over_time": lambda v: math.sqrt(div(*_welford(v.tolist()))),
    "stdvar_over_time": lambda v: div(*_welford(v.tolist())),
    "changes": lambda v: _changes(v.tolist()),
    "resets": _resets,
}


# -- instant-vector helpers ------------------------------------------------------------------


def bucket_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """The ``q``-quantile of a classic histogram, exactly as Prometheus's ``histogram_quantile``.

    ``buckets`` are ``(upper bound, cumulative count)`` pairs in any order. Buckets with the same
    bound are added up (``le="1"`` and ``le="1.0"``), counts are made monotonic, and the value is
    interpolated linearly inside the bucket the rank falls in (from 0 in the first bucket when
    its bound is positive). NaN without a ``+Inf`` bucket, with fewer than two buckets or with
    no observations; a rank in the ``+Inf`` bucket gives the highest finite bound; ``q`` below
    0 or above 1 gives -Inf / +Inf. The one histogram quantile of the package: the evaluator's
    ``histogram_quantile`` and ``tuner.workload``'s length percentiles both use it.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets, key=lambda b: b[0])
    if not math.isinf(buckets[-1][0]) or buckets[-1][0] < 0:
        return math.nan
    merged: list[list[float]] = []
    for ub, count in buckets:
        if merged and merged[-1][0] == ub:
            merged[-1][1] += count
        else:
            merged.append([ub, count])
    top = merged[0][1]
    for b in merged[1:]:
        if b[1] > top:
            top = b[1]
        elif b[1] < top:
            b[1] = top
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    idx = len(merged) - 1
    for i in range(len(merged) - 1):
        if merged[i][1] >= rank:
            idx = i
            break
    if idx == len(merged) - 1:
        return merged[-2][0]
    if idx == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start = 0.0
    end = merged[idx][0]
    count = merged[idx][1]
    if idx > 0:
        start = merged[idx - 1][0]
        count -= merged[idx - 1][1]
        rank -= merged[idx - 1][1]
    return start + (end - start) * div(rank, count)


_GO_FLOAT_RE = re.compile(r"[+-]?(?:inf|infinity|nan|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
                          r"|0x[0-9a-f]*\.?[0-9a-f]*(?:p[+-]?\d+)?)", re.IGNORECASE)


def parse_go_float(text: str) -> float | None:
    """A float in Go's ``strconv.ParseFloat`` syntax (how ``le`` labels are read); None if not."""
    if not _GO_FLOAT_RE.fullmatch(text):
        return None
    try:
        if "x" in text.lower():
            return float.fromhex(text)
        return float(text)
    except ValueError:
        return None


_GO_EXPAND_RE = re.compile(r"\$(\$|\{[A-Za-z0-9_]*\}|[A-Za-z0-9_]+)")


def go_expand(template: str, m: re.Match[str]) -> str:
    """Go's regexp.Expand: ``$1``, ``${1}``, ``$name``; ``$1x`` names a group "1x"."""

    def sub(g: re.Match[str]) -> str:
        ref = g.group(1)
        if ref == "$":
            return "$"
        if ref.startswith("{"):
            ref = ref[1:-1]
            if not ref:
                return g.group(0)
        try:
            val = m.group(int(ref)) if ref.isdigit() else m.group(ref)
        except IndexError:
            return ""
        return val or ""

    return _GO_EXPAND_RE.sub(sub, template)


def binop_values(op: str, lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Element-wise arithmetic with IEEE semantics (no warnings for x/0, NaN, overflow)."""
    with np.errstate(all="ignore"):
        if op == "+":
            return lhs + rhs
        if op == "-":
            return lhs - rhs
        if op == "*":
            return lhs * rhs
        if op == "/":
            return np.divide(lhs, rhs)
        if op == "%":
            return np.fmod(lhs, rhs)
        if op == "^":
            return np.power(lhs, rhs)
    raise QueryError(f"operator {op!r} is not arithmetic")


def compare(op: str, lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Element-wise comparison; NaN compares unequal to everything, as in Go."""
    with np.errstate(all="ignore"):
        if op == "==":
            return lhs == rhs
        if op == "!=":
            return lhs != rhs
        if op == ">":
            return lhs > rhs
        if op == "<":
            return lhs < rhs
        if op == ">=":
            return lhs >= rhs
        return lhs <= rhs


def scalar_binop(op: str, a: float, b: float) -> float:
    """A binary operation between two scalars (comparisons give 1 or 0: they need ``bool``)."""
    la, lb = np.array([a]), np.array([b])
    if op in COMPARISONS:
        return 1.0 if bool(compare(op, la, lb)[0]) else 0.0
    return float(binop_values(op, la, lb)[0])
