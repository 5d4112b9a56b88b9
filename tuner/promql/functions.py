"""PromQL's numeric functions: pure functions of one series' points or of value arrays.

Range-vector functions take one series' timestamps (ms) and values inside a window and return
one value or None (no output element): ``extrapolated_rate`` (``rate``/``increase``/``delta``),
``instant_value`` (``irate``/``idelta``), ``deriv`` and ``predict_linear`` (one
``linear_regression``), ``holt_winters`` and the ``*_over_time`` table. Instant-vector
helpers: ``bucket_quantile`` (``histogram_quantile``), Go float parsing and formatting and
regexp expansion (``le`` labels, ``count_values``, ``label_replace``), the element-wise math and
date functions and IEEE binary operators (``atan2`` included). Each follows Prometheus 2.42's
functions.go / quantile.go, including its Kahan summation and NaN/Inf corner cases.
"""

from __future__ import annotations

import calendar
import datetime
import math
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

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


def linear_regression(t: np.ndarray, v: np.ndarray, intercept_ms: int) -> tuple[float, float]:
    """Least-squares (slope per second, value at ``intercept_ms``), Kahan-summed like Prometheus.

    A constant series has slope 0 (NaN for a constant infinity), as ``linearRegression``.
    """
    vals = v.tolist()
    init = vals[0]
    if all(x == init for x in vals[1:]):
        return (math.nan, math.nan) if math.isinf(init) else (0.0, init)
    n = 0.0
    sum_x = c_x = sum_y = c_y = sum_xy = c_xy = sum_x2 = c_x2 = 0.0
    with np.errstate(all="ignore"):
        for ts, y in zip(t.tolist(), vals, strict=True):
            n += 1.0
            x = (ts - intercept_ms) / 1e3
            sum_x, c_x = _kahan_inc(x, sum_x, c_x)
            sum_y, c_y = _kahan_inc(y, sum_y, c_y)
            sum_xy, c_xy = _kahan_inc(x * y, sum_xy, c_xy)
            sum_x2, c_x2 = _kahan_inc(x * x, sum_x2, c_x2)
    sum_x += c_x
    sum_y += c_y
    sum_xy += c_xy
    sum_x2 += c_x2
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = div(cov_xy, var_x)
    return slope, sum_y / n - slope * sum_x / n


def deriv(t: np.ndarray, v: np.ndarray) -> float | None:
    """Least-squares slope per second (``deriv``); None with fewer than two points."""
    if len(v) < 2:
        return None
    return linear_regression(t, v, int(t[0]))[0]


def predict_linear(t: np.ndarray, v: np.ndarray, at_ms: int, seconds: float) -> float | None:
    """``predict_linear``: the regression line ``seconds`` after ``at_ms`` (the step's time)."""
    if len(v) < 2:
        return None
    slope, intercept = linear_regression(t, v, at_ms)
    return slope * seconds + intercept


def holt_winters(v: np.ndarray, sf: float, tf: float) -> float | None:
    """``holt_winters``: double exponential smoothing; QueryError for factors outside (0, 1)."""
    if not 0 < sf < 1:
        raise QueryError(f"invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:f}")
    if not 0 < tf < 1:
        raise QueryError(f"invalid trend factor. Expected: 0 < tf < 1, got: {tf:f}")
    vals = v.tolist()
    if len(vals) < 2:
        return None
    s0, s1 = 0.0, vals[0]
    b = vals[1] - vals[0]
    for i in range(1, len(vals)):
        x = sf * vals[i]
        if i > 1:  # calcTrendValue(i-1, ...): the first trend is the first difference
            b = tf * (s1 - s0) + (1 - tf) * b
        y = (1 - sf) * (s1 + b)
        s0, s1 = s1, x + y
    return s1


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
    """The incremental Kahan mean of Prometheus 2.42: no overflow for values near ±1e308."""
    mean = c = count = 0.0
    for x in v.tolist():
        count += 1
        if math.isinf(mean):
            if math.isinf(x) and (mean > 0) == (x > 0):
                continue
            if not math.isinf(x) and not math.isnan(x):
                continue
        mean, c = _kahan_inc(x / count - mean / count, mean, c)
    return mean if math.isinf(mean) else mean + c


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
        if op == "atan2":
            return np.arctan2(lhs, rhs)
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


def _sgn(x: np.ndarray) -> np.ndarray:
    return np.where(x < 0, -1.0, np.where(x > 0, 1.0, x))


MATH_FUNCS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs, "ceil": np.ceil, "floor": np.floor, "sqrt": np.sqrt, "exp": np.exp,
    "ln": np.log, "log2": np.log2, "log10": np.log10, "sgn": _sgn,
    "deg": lambda x: x * 180 / math.pi, "rad": lambda x: x * math.pi / 180,
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos,
    "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh,
}
"""Element-wise functions of an instant vector (they drop the metric name)."""


def _date_part(part: str, d: datetime.datetime) -> float:
    if part == "year":
        return float(d.year)
    if part == "month":
        return float(d.month)
    if part == "day_of_month":
        return float(d.day)
    if part == "day_of_week":
        return float((d.weekday() + 1) % 7)  # Go: Sunday is 0
    if part == "day_of_year":
        return float(d.timetuple().tm_yday)
    if part == "days_in_month":
        return float(calendar.monthrange(d.year, d.month)[1])
    if part == "hour":
        return float(d.hour)
    return float(d.minute)


DATE_FUNCS = ("year", "month", "day_of_month", "day_of_week", "day_of_year", "days_in_month",
              "hour", "minute")


def date_values(part: str, seconds: Iterable[float]) -> np.ndarray:
    """A date function of unix times in UTC (``time.Unix(int64(v), 0).UTC()``); NaN if none."""
    out = []
    for s in seconds:
        try:
            d = datetime.datetime.fromtimestamp(int(s), tz=datetime.UTC)
        except (ValueError, OverflowError, OSError):
            out.append(math.nan)
            continue
        out.append(_date_part(part, d))
    return np.array(out, dtype=np.float64)


def format_go_float_f(v: float) -> str:
    """``strconv.FormatFloat(v, 'f', -1, 64)``: shortest digits, never an exponent."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return np.format_float_positional(v, unique=True, trim="-")


def format_go_float_e(v: float) -> str:
    """``strconv.FormatFloat(v, 'e', -1, 64)``: shortest digits, always an exponent (``1e+00``)."""
    if not math.isfinite(v):
        return format_go_float_f(v)
    if v == 0:
        return ("-" if math.copysign(1.0, v) < 0 else "") + "0e+00"
    sign, digits, exp = Decimal(repr(v)).normalize().as_tuple()
    assert isinstance(exp, int)
    ds = "".join(map(str, digits))
    e10 = exp + len(ds) - 1
    mantissa = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'+' if e10 >= 0 else '-'}{abs(e10):02d}"


def format_go_float_g(v: float) -> str:
    """Go's ``%v`` of a float64 (strconv 'g', shortest): an exponent below 1e-4 and from 1e+06."""
    if not math.isfinite(v) or v == 0:
        return format_go_float_f(v)
    _, digits, exp = Decimal(repr(v)).normalize().as_tuple()
    assert isinstance(exp, int)
    e10 = exp + len(digits) - 1
    return format_go_float_e(v) if e10 < -4 or e10 >= 6 else format_go_float_f(v)
