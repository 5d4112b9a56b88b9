"""What a load run measured: one ``RequestRecord`` per request, the ``LoadResult`` of a run,
and its ``LoadSummary`` (``summarize`` is pure: records -> percentiles, rates, error rate).

Failed requests are of two kinds, counted apart: *rejections* (the server refused the request
with 503: admission control shedding load) and *errors* (everything else: other HTTP
statuses, timeouts, broken streams). Both count in ``error_rate``, the fraction of requests
that did not succeed, which is what an SLO's error rate is checked against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RequestRecord:
    """One measured request. Times in seconds; ``start`` is wall-clock (epoch) time."""

    ok: bool
    error: str
    prompt_tokens: int
    output_tokens: int
    ttft: float
    itls: tuple[float, ...]
    e2e: float
    start: float
    #: Refused by the server's admission control (HTTP 503), not failed otherwise.
    rejected: bool = False


@dataclass(frozen=True)
class LoadResult:
    """All measured requests (warm-up excluded); ``started``/``ended`` are epoch seconds of the
    measured window (first request sent, last request finished)."""

    records: tuple[RequestRecord, ...]
    started: float
    ended: float


@dataclass(frozen=True)
class LoadSummary:
    """Aggregates of a LoadResult; latencies over successful requests (NaN if none).

    ``errors`` are failures other than rejections; ``error_rate`` is
    ``(errors + rejections) / requests``; ``rejection_rate`` is ``rejections / requests``.
    """

    requests: int
    errors: int
    error_rate: float
    output_tokens: int
    output_tok_per_s: float
    request_rate: float
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float
    e2e_p99: float
    duration: float
    rejections: int = 0
    rejection_rate: float = math.nan


# --------------------------------------------------------------------------- summary


def _pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.percentile(arr, q)) if arr.size else math.nan


def summarize(result: LoadResult) -> LoadSummary:
    """Percentiles and rates of a load run (pure)."""
    recs = result.records
    ok = [r for r in recs if r.ok]
    rejections = sum(1 for r in recs if not r.ok and r.rejected)
    failed = len(recs) - len(ok)
    duration = max(0.0, result.ended - result.started)
    out_tokens = sum(r.output_tokens for r in ok)
    itls = [x for r in ok for x in r.itls]
    return LoadSummary(
        requests=len(recs),
        errors=failed - rejections,
        error_rate=failed / len(recs) if recs else math.nan,
        output_tokens=out_tokens,
        output_tok_per_s=out_tokens / duration if duration > 0 else math.nan,
        request_rate=len(ok) / duration if duration > 0 else math.nan,
        ttft_p50=_pct([r.ttft for r in ok], 50),
        ttft_p99=_pct([r.ttft for r in ok], 99),
        itl_p50=_pct(itls, 50),
        itl_p99=_pct(itls, 99),
        e2e_p99=_pct([r.e2e for r in ok], 99),
        duration=duration,
        rejections=rejections,
        rejection_rate=rejections / len(recs) if recs else math.nan,
    )
