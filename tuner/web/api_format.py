"""Prometheus's HTTP API wire format: parameters in, JSON envelopes out (pure functions).

What ``tuner.web.api`` needs to read a request and write an answer exactly as Prometheus 2.42
does (``web/api/v1/api.go`` and ``util/jsonutil``):

* parameters — ``parse_time`` (unix seconds, or RFC 3339 with any fraction, to milliseconds),
  ``parse_step`` (float seconds or a Prometheus duration), errors worded as Prometheus words
  them (``invalid parameter "start": cannot parse "x" to a valid timestamp``);
* values — ``format_value`` spells a float the way Go's ``strconv`` does in Prometheus's JSON
  (``"0.5"``, ``"1e-07"``, ``"NaN"``, ``"+Inf"``), ``format_timestamp`` writes milliseconds as
  seconds with Prometheus's three fraction digits (``1700000000.500``);
* results — ``vector_json``, ``matrix_json``, ``scalar_json``, ``string_json``: the ``data``
  of a query answer as JSON text (written by hand: Prometheus's timestamps are not what
  ``json.dumps`` writes for a float, and big matrices encode faster this way);
* rules — ``rules_json`` and ``alert_json``, the shapes of ``/api/v1/rules`` and ``/alerts``;
* envelopes — ``success`` and ``failure`` (``{"status":"error","errorType":...}``) as
  ``Response``s with the status code Prometheus gives each error type.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np

from tuner.errors import ApiError
from tuner.promql import format_go_float_e, format_go_float_f
from tuner.rules import AlertState, RuleKind, RuleStatus
from tuner.web.server import Response

JSON = "application/json"
MAX_POINTS = 11_000  # Prometheus refuses a range query with more points per series
TOO_MANY_POINTS = ("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing "
                   "the query resolution (?step=XX)")
# the span of "no bound" (series/labels without start or end), and Prometheus's spellings of
# its minTime and maxTime, which clients send for it
MIN_TIME_MS = -(2**62)
MAX_TIME_MS = 2**62
_UNBOUNDED = {"-292273086-05-16T16:47:06Z": MIN_TIME_MS,
              "292277025-08-18T07:12:54.999999999Z": MAX_TIME_MS}


class ErrorType(StrEnum):
    """Prometheus's API errorType values."""

    BAD_DATA = "bad_data"
    EXECUTION = "execution"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    INTERNAL = "internal"


STATUS = {
    ErrorType.BAD_DATA: 400,
    ErrorType.EXECUTION: 422,
    ErrorType.TIMEOUT: 503,
    ErrorType.NOT_FOUND: 404,
    ErrorType.INTERNAL: 500,
}


def bad_data(message: str) -> ApiError:
    return ApiError(ErrorType.BAD_DATA, message)


def bad_param(name: str, message: str) -> ApiError:
    """``invalid parameter "name": message``, Prometheus's wording for a bad parameter."""
    return bad_data(f'invalid parameter "{name}": {message}')


# -- parameters ------------------------------------------------------------------------------

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_time(text: str, name: str) -> int:
    """A ``time``/``start``/``end`` parameter in milliseconds: unix seconds or RFC 3339."""
    if text in _UNBOUNDED:
        return _UNBOUNDED[text]
    if _FLOAT_RE.match(text):
        seconds = float(text)
        if math.isfinite(seconds) and abs(seconds) < 9.2e15:
            whole = math.trunc(seconds)
            return whole * 1000 + round((seconds - whole) * 1000)
    m = _RFC3339_RE.match(text)
    if m:
        year, month, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
        valid = (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, max(month, 1))[1]
                 and hour < 24 and minute < 60 and sec < 60)
        if not valid:
            raise bad_param(name, f'cannot parse "{text}" to a valid timestamp')
        epoch = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))
        frac_ms = int((m.group(7) or ".0")[1:4].ljust(3, "0"))
        zone = m.group(8)
        offset = 0
        if zone not in ("Z", "z"):
            sign = -1 if zone[0] == "-" else 1
            offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
        return (epoch - offset) * 1000 + frac_ms
    raise bad_param(name, f'cannot parse "{text}" to a valid timestamp')


def parse_step(text: str, name: str = "step") -> int:
    """A ``step``/``timeout`` parameter in milliseconds: float seconds or a duration (``15s``)."""
    from tuner.units import parse_duration_ms

    if _FLOAT_RE.match(text):
        seconds = float(text)
        if not math.isfinite(seconds) or abs(seconds) * 1e9 > 2**63 - 1:
            raise bad_param(name, f'cannot parse "{text}" to a valid duration. It overflows int64')
        return math.trunc(seconds * 1000)
    try:
        return parse_duration_ms(text)
    except ValueError:
        raise bad_param(name, f'cannot parse "{text}" to a valid duration') from None


def check_range(start_ms: int, end_ms: int, step_ms: int) -> None:
    """Prometheus's checks of a range query's span and step, in its order and words."""
    if end_ms < start_ms:
        raise bad_param("end", "end timestamp must not be before start time")
    if step_ms <= 0:
        raise bad_param("step", "zero or negative query resolution step widths are not "
                        "accepted. Try a positive integer")
    if (end_ms - start_ms) // step_ms > MAX_POINTS:
        raise bad_data(TOO_MANY_POINTS)


# -- values ------------------------------------------------------------------------------------


def format_value(v: float) -> str:
    """A sample value as Prometheus's JSON spells it (Go ``strconv``, 'f' or 'e', shortest)."""
    if not math.isfinite(v) or v == 0 or 1e-6 <= abs(v) < 1e21:
        return format_go_float_f(v)
    return format_go_float_e(v)


def format_timestamp(ms: int) -> str:
    """Milliseconds as Prometheus writes a timestamp: seconds, and ``.ddd`` when not whole."""
    sign = "-" if ms < 0 else ""
    whole, frac = divmod(abs(ms), 1000)
    return f"{sign}{whole}.{frac:03d}" if frac else f"{sign}{whole}"


def _point(ms: int, v: float) -> str:
    return f'[{format_timestamp(ms)},"{format_value(v)}"]'


def labels_json(labels: Mapping[str, str]) -> str:
    """A label set as a JSON object, names sorted as Prometheus sorts them."""
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"), ensure_ascii=False)


def vector_json(elements: Sequence[tuple[Mapping[str, str], float]], ts_ms: int) -> str:
    items = ",".join(f'{{"metric":{labels_json(lb)},"value":{_point(ts_ms, v)}}}'
                     for lb, v in elements)
    return f'{{"resultType":"vector","result":[{items}]}}'


def matrix_json(series: Sequence[tuple[Mapping[str, str], np.ndarray, np.ndarray]]) -> str:
    """``series``: (labels, timestamps in float seconds, values) per series."""
    parts = []
    for lb, ts, vs in series:
        ms = np.rint(np.asarray(ts, dtype=np.float64) * 1000).astype(np.int64).tolist()
        pts = ",".join(_point(t, v) for t, v in zip(ms, np.asarray(vs).tolist(), strict=True))
        parts.append(f'{{"metric":{labels_json(lb)},"values":[{pts}]}}')
    return f'{{"resultType":"matrix","result":[{",".join(parts)}]}}'


def scalar_json(value: float, ts_ms: int) -> str:
    return f'{{"resultType":"scalar","result":{_point(ts_ms, value)}}}'


def string_json(value: str, ts_ms: int) -> str:
    return (f'{{"resultType":"string","result":[{format_timestamp(ts_ms)},'
            f'{json.dumps(value, ensure_ascii=False)}]}}')


# -- envelopes ---------------------------------------------------------------------------------


def success(data_json: str, warnings: Sequence[str] = ()) -> Response:
    """``{"status":"success","data":...}`` with ``data`` already JSON text."""
    extra = f',"warnings":{json.dumps(list(warnings))}' if warnings else ""
    return Response(200, f'{{"status":"success","data":{data_json}{extra}}}'.encode(), JSON)


def success_value(data: object) -> Response:
    """A success envelope around a plain JSON-able value (labels, series, rules...)."""
    return success(json.dumps(data, separators=(",", ":"), ensure_ascii=False))


def failure(error: ApiError) -> Response:
    """``{"status":"error","errorType":...,"error":...}`` with Prometheus's status code."""
    etype = ErrorType(error.error_type)
    body = json.dumps({"status": "error", "errorType": etype.value, "error": str(error)},
                      separators=(",", ":"), ensure_ascii=False)
    return Response(STATUS[etype], body.encode(), JSON)


# -- rules and alerts --------------------------------------------------------------------------


def rfc3339(ts: float) -> str:
    """Unix seconds as Go marshals a ``time.Time`` (RFC 3339, fraction trimmed); 0 is Go's zero."""
    if ts == 0:
        return "0001-01-01T00:00:00Z"
    whole = math.floor(ts)
    micros = round((ts - whole) * 1e6)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{micros:06d}".rstrip("0")
    return f"{text}.{frac}Z" if frac else f"{text}Z"


def alert_json(alert: AlertState) -> dict[str, Any]:
    return {"labels": dict(sorted(alert.labels.items())),
            "annotations": dict(sorted(alert.annotations.items())),
            "state": str(alert.state), "activeAt": rfc3339(alert.active_at),
            "value": format_go_float_e(alert.value)}


def _rule_json(st: RuleStatus) -> dict[str, Any]:
    health = "unknown" if not st.last_eval else "err" if st.last_error else "ok"
    common: dict[str, Any] = {"name": st.rule.name, "query": st.rule.expr}
    tail: dict[str, Any] = {"health": health}
    if st.last_error:
        tail["lastError"] = st.last_error
    tail.update(evaluationTime=st.eval_seconds, lastEvaluation=rfc3339(st.last_eval))
    labels = dict(sorted(st.rule.labels.items()))
    if st.rule.kind is RuleKind.RECORD:
        return {**common, **({"labels": labels} if labels else {}), **tail, "type": "recording"}
    states = {str(a.state) for a in st.alerts}
    state = "firing" if "firing" in states else "pending" if "pending" in states else "inactive"
    return {"state": state, **common, "duration": st.rule.for_seconds, "labels": labels,
            "annotations": dict(sorted(st.rule.annotations.items())),
            "alerts": [alert_json(a) for a in st.alerts], **tail, "type": "alerting"}


def rules_json(statuses: Sequence[RuleStatus], default_interval: float,
               kind: RuleKind | None = None) -> dict[str, Any]:
    """The ``data`` of ``/api/v1/rules``: groups in file order, each rule as Prometheus has it."""
    groups: list[dict[str, Any]] = []
    by_group: dict[tuple[str, str], dict[str, Any]] = {}
    for st in statuses:
        key = (st.group.source, st.group.name)
        g = by_group.get(key)
        if g is None:
            g = by_group[key] = {
                "name": st.group.name, "file": st.group.source, "rules": [],
                "interval": st.group.interval or default_interval, "limit": st.group.limit,
                "evaluationTime": 0.0, "lastEvaluation": 0.0}
            groups.append(g)
        g["evaluationTime"] += st.eval_seconds
        g["lastEvaluation"] = max(g["lastEvaluation"], st.last_eval)
        if kind is None or st.rule.kind is kind:
            g["rules"].append(_rule_json(st))
    for g in groups:
        g["lastEvaluation"] = rfc3339(g["lastEvaluation"])
    if kind is not None:
        groups = [g for g in groups if g["rules"]]
    return {"groups": groups}
