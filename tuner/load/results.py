"""What a load run measured: one ``RequestRecord`` per request, the ``LoadResult`` of a run,
and its ``LoadSummary`` (``summarize`` is pure: records -> percentiles, rates, error rate).

Client-side latency is measured per *chunk*: the tokens that reached the client together
(``group_chunks``: token events whose arrivals are less than ``COALESCE_SECONDS`` apart, e.g.
several SSE events taken from one socket read). Per request: TTFT (send -> first chunk),
TPOT ((e2e - TTFT) / (tokens - 1)), the longest stall (the largest gap between chunks), the
chunk gaps with the number of tokens in each chunk, and the per-chunk ITL (gap / tokens in
the chunk), so tokens that arrived in one read are not reported as microsecond "inter-token
latencies" — no real decode step takes 13 µs.

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

#: Token events that reach the client less than this apart arrived together (one chunk):
#: below it the gap is the client's own parsing, not the server's decode step.
COALESCE_SECONDS = 0.0005


def group_chunks(arrivals: Sequence[float], tokens: Sequence[int],
                 coalesce: float = COALESCE_SECONDS) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Token events -> chunks: (arrival time of each chunk, tokens in it) (pure).

    ``arrivals[i]`` is when event i (carrying ``tokens[i]`` tokens) was read; an event read
    less than ``coalesce`` seconds after the previous one joins its chunk.
    """
    times: list[float] = []
    counts: list[int] = []
    last = -math.inf
    for at, n in zip(arrivals, tokens, strict=True):
        if times and at - last < coalesce:
            counts[-1] += n
        else:
            times.append(at)
            counts.append(n)
        last = at
    return tuple(times), tuple(counts)


def chunk_itls(gaps: Sequence[float], chunk_tokens: Sequence[int]) -> tuple[float, ...]:
    """Per-chunk inter-token latency: each gap divided by the tokens of the chunk it ended
    (``chunk_tokens[0]`` is the first chunk's, which has no gap before it) (pure)."""
    return tuple(g / max(1, n) for g, n in zip(gaps, chunk_tokens[1:], strict=True))


@dataclass(frozen=True)
class RequestRecord:
    """One measured request. Times in seconds; ``start`` is wall-clock (epoch) time.

    ``itls`` are per-chunk ITLs (``chunk_itls``); ``chunk_gaps[i]`` is the gap before chunk
    ``i + 1``, which carried ``chunk_tokens[i + 1]`` tokens (``chunk_tokens[0]``: the first
    chunk's). ``tpot`` and ``max_stall`` derive from them.
    """

    ok: bool
    error: str
    prompt_tokens: int
    output_tokens: int
    ttft: float
    itls: tuple[float, ...]
    e2e: float
    start: float
    chunk_gaps: tuple[float, ...] = ()
    chunk_tokens: tuple[int, ...] = ()

    @property
    def tpot(self) -> float:
        """Time per output token after the first: (e2e - TTFT) / (tokens - 1); NaN below 2."""
        if not self.ok or self.output_tokens < 2 or math.isnan(self.ttft):
            return math.nan
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    @property
    def max_stall(self) -> float:
        """The longest gap between two chunks of the stream (NaN with fewer than 2 chunks)."""
        return max(self.chunk_gaps) if self.chunk_gaps else math.nan
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
    #: TPOT over successful requests of 2+ tokens (one value per request).
    tpot_p50: float = math.nan
    tpot_p99: float = math.nan
    #: p99 over requests of each request's longest stall between chunks.
    max_stall_p99: float = math.nan
    #: Mean tokens per chunk the client received (1.0: every token arrived on its own).
    tokens_per_chunk: float = math.nan
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
    chunks = [n for r in ok for n in r.chunk_tokens]
    tpots = [r.tpot for r in ok if not math.isnan(r.tpot)]
    stalls = [r.max_stall for r in ok if not math.isnan(r.max_stall)]
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
        tpot_p50=_pct(tpots, 50),
        tpot_p99=_pct(tpots, 99),
        max_stall_p99=_pct(stalls, 99),
        tokens_per_chunk=sum(chunks) / len(chunks) if chunks else math.nan,
        rejections=rejections,
        rejection_rate=rejections / len(recs) if recs else math.nan,
    )


# --------------------------------------------------------------------------- per request

REQUEST_CSV_COLUMNS = ("start", "ok", "error", "prompt_tokens", "output_tokens", "ttft_s",
                       "tpot_s", "max_stall_s", "e2e_s", "chunks", "chunk_tokens",
                       "chunk_gaps_ms")


def records_csv(records: Sequence[RequestRecord]) -> str:
    """Per-request figures as CSV (``REQUEST_CSV_COLUMNS``; chunk lists space-separated)."""
    import csv
    import io

    def num(v: float, digits: int = 6) -> str:
        return "" if math.isnan(v) else f"{v:.{digits}g}"

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(REQUEST_CSV_COLUMNS)
    for r in records:
        w.writerow([f"{r.start:.3f}", int(r.ok), r.error, r.prompt_tokens, r.output_tokens,
                    num(r.ttft), num(r.tpot), num(r.max_stall), num(r.e2e),
                    len(r.chunk_tokens), " ".join(str(n) for n in r.chunk_tokens),
                    " ".join(f"{g * 1000:.3f}" for g in r.chunk_gaps)])
    return buf.getvalue()
