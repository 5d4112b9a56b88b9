"""Workload fingerprint of a window: what production actually asked of a vLLM server.

``fingerprint(source, start, end, selector)`` reads vLLM's own histograms and counters over
the window and returns a JSON-ready dict (``WORKLOAD_VERSION`` 1)::

    {
      "version": 1,
      "window": {"start": "2026-11-20T00:00:00Z", "end": "...", "seconds": 86400.0},
      "instances": ["vllm-0"],
      "requests": 123456.0,                       # finished requests in the window
      "request_rate_per_s": 1.43,                 # mean over the window
      "peak_request_rate_per_s": 12.0,            # the busiest clock hour
      "request_rate_by_hour": [{"start": "2026-11-20T00:00:00Z", "requests_per_s": 0.2}, ...],
      "prompt_tokens": LENGTHS,                   # from vllm:request_prompt_tokens
      "output_tokens": LENGTHS,                   # from vllm:request_generation_tokens
      "prefix_cache_hit_rate": 0.35,              # hits / queries (tokens); null if unknown
      "speculative_decoding": {"used": true, "acceptance_rate": 0.027,
                               "mean_acceptance_length": 1.08, "num_speculative_tokens": 3}
    }

    LENGTHS = {"count": 123456.0, "mean": 331.0, "p50": 300.0, "p90": 650.0, "p99": 1200.0,
               "max": 2000.0,     # upper bound of the highest non-empty bucket
               "buckets": [{"lo": 200.0, "hi": 500.0, "p": 0.61}, ...]}   # p sums to 1

``buckets`` is the empirical length distribution: the share of requests whose length fell
in ``(lo, hi]`` (the window's increase of each cumulative bucket, differenced). A load
generator draws a bucket with probability ``p`` and a length uniformly inside it; the top
bucket (``+Inf``) is reported with ``hi`` equal to ``lo`` (lengths never exceed
max-model-len, which vLLM uses as the last finite bound). Quantiles are Prometheus's
``histogram_quantile`` (``tuner.promql.bucket_quantile``, the package's one histogram
quantile): linear inside a bucket, the last finite bound when the rank falls in ``+Inf``.
A histogram Prometheus cannot take a quantile of (no ``+Inf`` bucket, no finite bucket) has
no distribution (``None``). Counter resets inside the window are handled by ``increase``.

The lengths are counted from the samples themselves (``sampled_increase``: the counter's
growth between the first and last sample of the window, resets included), not with
``increase()``: ``increase()`` extrapolates each series to the window's edges, and a series
whose counter is near zero is extrapolated less than its neighbours (Prometheus stops at the
counter's zero point). The count starts from the last sample at or before the window's start.
Over a short window, a tune trial's or a test's, that makes cumulative
buckets disagree: 40 requests of 8 output tokens read as 40 in ``le="10"`` and 46 in
``le="50"``, and a p90 of 37. The request count and rates keep ``increase()``, as Prometheus
users expect of a rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tuner.promql import Element, Querier, QueryResult, bucket_quantile, parse_go_float
from tuner.signals import mean_acceptance_length
from tuner.units import format_duration

WORKLOAD_VERSION = 1
#: How far before a window its first counter sample is looked for (Prometheus's lookback).
LOOKBACK_SECONDS = 300.0


def iso(ts: float) -> str:
    """Unix seconds -> ``2026-11-20T14:00:00Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def length_distribution(cumulative: Mapping[float, float]) -> dict[str, Any] | None:
    """An empirical distribution from cumulative bucket counts ``{le: count}`` (+Inf = inf).

    Returns None when the histogram saw no requests, or when it is not one Prometheus takes
    a quantile of (no ``+Inf`` bucket, or nothing but ``+Inf``). Non-monotonic input (a bucket
    that grew less than a lower one, e.g. across a reset) is repaired as Prometheus does.
    """
    bounds = sorted(cumulative)
    if not bounds:
        return None
    counts: list[float] = []
    running = 0.0
    for le in bounds:
        running = max(running, float(cumulative[le]) if math.isfinite(cumulative[le]) else 0.0)
        counts.append(running)
    total = counts[-1]
    if total <= 0:
        return None
    pairs = list(zip(bounds, counts, strict=True))
    quantiles = {f"p{round(q * 100)}": bucket_quantile(q, pairs) for q in (0.5, 0.9, 0.99)}
    if any(math.isnan(v) for v in quantiles.values()):
        return None
    buckets = []
    prev_le, prev_c = 0.0, 0.0
    top_finite = max((b for b in bounds if math.isfinite(b)), default=0.0)
    for le, c in pairs:
        n = c - prev_c
        hi = le if math.isfinite(le) else top_finite
        if n > 0:
            buckets.append({"lo": prev_le, "hi": hi, "p": n / total})
        prev_le, prev_c = hi, c
    nonempty = [b for b in buckets if b["p"] > 0]
    return {
        "count": total,
        **quantiles,
        "max": nonempty[-1]["hi"] if nonempty else 0.0,
        "buckets": buckets,
    }


def sampled_increase(timestamps: Sequence[float], values: Sequence[float], start: float) -> float:
    """How much a counter grew after ``start``, from its samples: the sum of its rises from
    the last sample at or before ``start`` (or its first sample, for a series born later) to
    its last, a drop being a reset (the value after it is all new); no extrapolation,
    non-finite samples skipped."""
    total = 0.0
    prev: float | None = None
    for ts, v in zip(timestamps, values, strict=True):
        if not math.isfinite(v):
            continue
        if ts <= start:
            prev = v  # the baseline: the latest sample at or before the window's start
            continue
        if prev is not None:
            total += v - prev if v >= prev else v
        prev = v
    return total


def _sampled_by(result: QueryResult, key: str, start: float) -> dict[str, float]:
    """``{label value: sampled increase after start}`` of a matrix result, series with the
    same ``key`` label added (an empty dict for anything but a matrix)."""
    out: dict[str, float] = {}
    for series in result.matrix:
        k = series.labels.get(key, "")
        out[k] = out.get(k, 0.0) + sampled_increase(
            series.timestamps.tolist(), series.values.tolist(), start)
    return out


def _grouped(result: QueryResult, key: str = "instance") -> dict[str, list[Element]]:
    out: dict[str, list[Element]] = {}
    for el in result.vector:
        out.setdefault(el.labels.get(key, ""), []).append(el)
    return out


def fingerprint(
    source: Querier,
    start: float,
    end: float,
    selector: str = "",
    instance: str | None = None,
) -> dict[str, Any]:
    """The workload fingerprint of ``[start, end]`` (all selected servers, or one instance)."""
    seconds = max(end - start, 1.0)
    w = format_duration(seconds)
    # the length counts' range reaches back one lookback for the sample the window starts from
    w_back = format_duration(seconds + LOOKBACK_SECONDS)
    sel = selector
    if instance is not None:
        inner = selector.strip()[1:-1].strip().rstrip(",") if selector else ""
        extra = f'instance="{instance}"'
        sel = "{" + (f"{inner}, {extra}" if inner else extra) + "}"

    def instant(expr: str) -> QueryResult:
        return source.instant(expr, end)

    def scalar_sum(expr: str) -> float | None:
        res = instant(expr)
        vals = [el.value for el in res.vector if math.isfinite(el.value)]
        return float(sum(vals)) if vals else None

    lengths: dict[str, dict[str, Any] | None] = {}
    for key, metric in (("prompt_tokens", "vllm:request_prompt_tokens"),
                        ("output_tokens", "vllm:request_generation_tokens")):
        by_le = _sampled_by(instant(f"{metric}_bucket{sel}[{w_back}]"), "le", start)
        cumulative: dict[float, float] = {}
        for text, count in by_le.items():
            if (le := parse_go_float(text)) is not None:
                cumulative[le] = cumulative.get(le, 0.0) + count
        dist = length_distribution(cumulative)
        if dist is not None:
            total_sum = sum(_sampled_by(instant(f"{metric}_sum{sel}[{w_back}]"), "",
                                        start).values())
            total_count = sum(_sampled_by(instant(f"{metric}_count{sel}[{w_back}]"), "",
                                          start).values())
            dist["mean"] = total_sum / total_count if total_count else None
        lengths[key] = dist

    requests = scalar_sum(f"sum(increase(vllm:request_success_total{sel}[{w}]))")
    by_hour = []
    first_hour = math.ceil(start / 3600.0) * 3600.0
    if end - first_hour >= 3600.0:
        series = source.range(
            f"sum(increase(vllm:request_success_total{sel}[1h]))",
            first_hour + 3600.0, end, 3600.0,
        )
        for s in series[:1]:
            for ts, v in zip(s.timestamps.tolist(), s.values.tolist(), strict=True):
                if math.isfinite(v):
                    by_hour.append({"start": iso(ts - 3600.0), "requests_per_s": v / 3600.0})

    hits = scalar_sum(
        f"sum(increase(vllm:prefix_cache_hits_total{sel}[{w}]))"
        f" or sum(increase(vllm:gpu_prefix_cache_hits_total{sel}[{w}]))")
    queries = scalar_sum(
        f"sum(increase(vllm:prefix_cache_queries_total{sel}[{w}]))"
        f" or sum(increase(vllm:gpu_prefix_cache_queries_total{sel}[{w}]))")
    drafts = scalar_sum(f"sum(increase(vllm:spec_decode_num_drafts_total{sel}[{w}]))")
    draft_tokens = scalar_sum(f"sum(increase(vllm:spec_decode_num_draft_tokens_total{sel}[{w}]))")
    accepted = scalar_sum(f"sum(increase(vllm:spec_decode_num_accepted_tokens_total{sel}[{w}]))")
    positions = scalar_sum(
        f"max(count by (instance) (vllm:spec_decode_num_accepted_tokens_per_pos_total{sel}))")
    spec_used = bool(draft_tokens)
    instances = sorted(_grouped(instant(f"count by (instance) (vllm:num_requests_running{sel})")))

    return {
        "version": WORKLOAD_VERSION,
        "window": {"start": iso(start), "end": iso(end), "seconds": end - start},
        "instances": instances,
        "requests": requests,
        "request_rate_per_s": requests / seconds if requests is not None else None,
        "peak_request_rate_per_s": (
            max(h["requests_per_s"] for h in by_hour) if by_hour else None
        ),
        "request_rate_by_hour": by_hour,
        "prompt_tokens": lengths["prompt_tokens"],
        "output_tokens": lengths["output_tokens"],
        "prefix_cache_hit_rate": (
            hits / queries if hits is not None and queries else None
        ),
        "speculative_decoding": {
            "used": spec_used,
            "acceptance_rate": (
                accepted / draft_tokens if spec_used and accepted is not None and draft_tokens
                else None
            ),
            "mean_acceptance_length": (
                mean_acceptance_length(accepted or 0.0, drafts) if spec_used and drafts
                else None
            ),
            "num_speculative_tokens": int(positions) if spec_used and positions else None,
        },
    }
