"""Findings: one small function per finding id, over a ``WindowView``, in report order.

Each function returns the ``Finding`` it makes of the view (its value, how long and when the
condition held) or None when the condition never held. ``FINDINGS`` is the ordered table
``analyze`` runs; the order is the order of ``findings`` in the report. The thresholds are in
``tuner.suggest.thresholds``; the conditions (KV full, preempting, SLO breach, ...) are named
masks of the view.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from tuner.suggest.records import Finding, FindingId, Severity
from tuner.suggest.thresholds import (
    FB_FREE_CRITICAL,
    GPU_BUSY_UTIL,
    GPU_LOW_UTIL,
    KV_HEADROOM,
    KV_SATURATED,
    MODEL_LEN_SHARE,
    SPEC_BATCH_SPREAD,
    SPEC_MIN_LENGTH,
)
from tuner.suggest.view import HTTP_MISSING, WindowView, as_number
from tuner.suggest.window import clock

FindingRule = Callable[[WindowView], Finding | None]

WARNING, INFO = Severity.WARNING, Severity.INFO


def _held(v: WindowView, mask: np.ndarray, fid: FindingId, signal: str, summary: str,
          value: float | None, unit: str, severity: Severity = WARNING) -> Finding:
    """A finding over the steps of ``mask``: its duration, share of the window and ranges."""
    return Finding(fid, signal, summary, value, unit, severity, v.duration(mask),
                   v.fraction(mask), v.ranges(mask))


def kv_saturated_with_queue(v: WindowView) -> Finding | None:
    m = v.kv_full_with_queue
    if not m.any():
        return None
    return _held(v, m, FindingId.KV_SATURATED_WITH_QUEUE, "kv_cache_usage",
                 f"KV cache above {KV_SATURATED:.0%} while requests waited or were preempted "
                 f"for {v.fraction_text(m)}, {v.when(m)}",
                 float(np.nanmedian(v.kv[m])), "ratio")


def preemptions(v: WindowView) -> Finding | None:
    m = v.preempting
    if not m.any():
        return None
    r = v.preemptions_per_1000(m)
    return _held(v, m, FindingId.PREEMPTIONS, "preemptions_per_1000_requests",
                 f"{r:,.0f} preemptions per 1000 requests during {v.when(m)}"
                 f" ({v.fraction_text(m)})", r, "per 1000 requests")


def ttft_slo_breach(v: WindowView) -> Finding | None:
    m = v.ttft_breach
    if not m.any():
        return None
    p99 = float(np.nanmedian(v.ttft[m]))
    return _held(v, m, FindingId.TTFT_SLO_BREACH, "ttft_p99",
                 f"TTFT p99 {p99:.2f}s against a {v.slo.ttft_p99_seconds:g}s SLO for "
                 f"{v.fraction_text(m)}, {v.when(m)}", p99, "s")


def itl_slo_breach(v: WindowView) -> Finding | None:
    m = v.itl_breach
    if not m.any():
        return None
    p99 = float(np.nanmedian(v.itl[m]))
    inside, outside = v.prefill_during_itl_breach, v.prefill_otherwise
    tail = (f"; prefill load {inside:,.0f} prompt tok/s while breaching vs "
            f"{outside:,.0f} otherwise" if math.isfinite(inside) and math.isfinite(outside)
            else "")
    return _held(v, m, FindingId.ITL_SLO_BREACH, "itl_p99",
                 f"ITL p99 {p99 * 1000:.0f}ms against a {v.slo.itl_p99_seconds * 1000:g}ms SLO "
                 f"for {v.fraction_text(m)}, {v.when(m)}{tail}", p99, "s")


def itl_breach_during_prefill(v: WindowView) -> Finding | None:
    if not v.long_prefill:
        return None
    return _held(v, v.itl_breach, FindingId.ITL_BREACH_DURING_PREFILL, "prompt_tokens_per_s",
                 "ITL breaches coincide with long prefills (prompt tokens/s at least 1.5x the "
                 "rest of the window)", v.prefill_during_itl_breach, "tokens/s")


def _median_util(v: WindowView) -> float:
    util = v.gpu_util[v.covered]
    return float(np.nanmedian(util)) if np.isfinite(util).any() else math.nan


def _idle_gpus(v: WindowView) -> bool:
    """Low GPU utilization with (almost) no queue and no preemptions."""
    med = _median_util(v)
    queued_share = float(v.queued[v.covered].sum()) / max(v.covered_steps, 1)
    return (math.isfinite(med) and med < GPU_LOW_UTIL and queued_share < 0.01
            and not v.preempting.any())


def over_provisioned(v: WindowView) -> Finding | None:
    if not (v.has_gpu and _idle_gpus(v)):
        return None
    med = _median_util(v)
    return Finding(FindingId.OVER_PROVISIONED, "gpu_utilization",
                   f"GPU utilization median {med:.0f}% with no queue (over-provisioned)",
                   med, "%", INFO)


def gpu_utilization(v: WindowView) -> Finding | None:
    """The GPU utilization median, when the GPUs are not idle (else ``over_provisioned``)."""
    if not v.has_gpu or _idle_gpus(v):
        return None
    med = _median_util(v)
    return Finding(FindingId.GPU_UTILIZATION, "gpu_utilization",
                   f"GPU utilization median {med:.0f}%", med, "%", INFO)


def queue_with_headroom(v: WindowView) -> Finding | None:
    m = v.queue_with_headroom
    if not m.any():
        return None
    gpus = f" and GPUs below {GPU_BUSY_UTIL:.0f}%" if v.has_gpu else ""
    return _held(v, m, FindingId.QUEUE_WITH_HEADROOM, "waiting",
                 f"requests waited while the KV cache was below {KV_HEADROOM:.0%}{gpus} for "
                 f"{v.fraction_text(m)}, {v.when(m)}",
                 float(np.nanmedian(v.waiting[m])), "requests")


def gpu_memory_free(v: WindowView) -> Finding | None:
    free = v.min_free_memory
    if not math.isfinite(free):
        return None
    return Finding(FindingId.GPU_MEMORY_FREE, "gpu_fb_free_mib",
                   f"GPU free device memory at least {free:.1%} of total over the window",
                   free, "ratio", WARNING if free < FB_FREE_CRITICAL else INFO)


def restarts(v: WindowView) -> Finding | None:
    if not v.restarts:
        return None
    known = [t for t in v.restarts if math.isfinite(t)]
    when = f" at {', '.join(clock(t) for t in known)}" if known else " (counter resets)"
    return Finding(FindingId.RESTARTS, "process_start_time",
                   f"{len(v.restarts)} restart(s) without a configuration change{when}",
                   float(len(v.restarts)), "restarts", WARNING)


def output_throughput(v: WindowView) -> Finding | None:
    tps = v.output_tokens_per_s
    if not np.isfinite(tps).any():
        return None
    med = float(np.nanmedian(tps[v.covered])) if np.isfinite(tps[v.covered]).any() \
        else math.nan
    cost = v.dollars_per_mtok
    price = (f"; ${cost:,.2f} per million output tokens at ${v.dollars_per_hour:g}/hour"
             if math.isfinite(cost) else "")
    return Finding(FindingId.OUTPUT_THROUGHPUT, "output_tokens_per_s",
                   f"output {med:,.0f} tok/s median, {float(np.nanmax(tps)):,.0f} peak{price}",
                   med, "tokens/s", INFO)


def cost(v: WindowView) -> Finding | None:
    if not np.isfinite(v.output_tokens_per_s).any() or not math.isfinite(v.dollars_per_mtok):
        return None
    c = v.dollars_per_mtok
    return Finding(FindingId.COST, "dollars_per_mtok", f"${c:,.2f} per million output tokens",
                   c, "$/Mtok", INFO)


def prefix_cache(v: WindowView) -> Finding | None:
    queries = v.totals.get("prefix_cache_queries")
    if not queries:
        return None
    rate = v.totals.get("prefix_cache_hits", 0.0) / queries
    return Finding(FindingId.PREFIX_CACHE, "prefix_cache_hit_rate",
                   f"prefix-cache hit rate {rate:.0%}", rate, "ratio", INFO)


def spec_decode(v: WindowView) -> Finding | None:
    length, rate = v.spec_length, v.spec_rate
    if math.isfinite(length):
        return Finding(FindingId.SPEC_DECODE, "spec_decode_mean_acceptance_length",
                       f"speculative decoding mean acceptance length {length:.2f}, acceptance "
                       f"rate {rate:.1%}", length, "tokens",
                       WARNING if length < SPEC_MIN_LENGTH else INFO)
    if math.isfinite(rate):
        return Finding(FindingId.SPEC_DECODE, "spec_decode_mean_acceptance_length",
                       f"speculative decoding acceptance rate {rate:.1%} (V0 gauge)", rate,
                       "ratio", WARNING if rate < 0.2 else INFO)
    return None


def model_len_unused(v: WindowView) -> Finding | None:
    """Cache-bound while the longest requests stayed far below max-model-len."""
    longest = v.longest_request
    mml = as_number(v.current("max-model-len").value)
    if not v.cache_bound or longest is None or mml is None or not longest < MODEL_LEN_SHARE * mml:
        return None
    pt, ot = v.workload["prompt_tokens"], v.workload["output_tokens"]
    return Finding(FindingId.MODEL_LEN_UNUSED, "request_prompt_tokens+request_generation_tokens",
                   f"the longest requests (prompt up to {pt['max']:,.0f} + output up to "
                   f"{ot['max']:,.0f} tokens) never approached max-model-len {mml:,.0f}",
                   longest, "tokens", INFO)


def _count(n: float) -> str:
    return f"{n:,.0f}"


def admission_rejections(v: WindowView) -> Finding | None:
    """Requests refused with HTTP 503 by admission control, with the reasons and caps."""
    n = v.rejections
    if not (math.isfinite(n) and n >= 0.5):
        return None
    reasons = ", ".join(f"{r} {_count(c)}" for r, c in sorted(
        v.rejections_by_reason.items(), key=lambda rc: -rc[1]) if c >= 0.5)
    per1000 = 1000.0 * n / v.arrivals if math.isfinite(v.arrivals) and v.arrivals > 0 \
        else math.nan
    rate = f" ({per1000:,.0f} per 1000 arriving requests)" if math.isfinite(per1000) else ""
    caps = [f"--{flag} {v.current(flag).value}" for flag in
            ("max-num-queued-reqs", "max-num-queued-tokens")
            if v.current(flag).value is not None]
    when = f", {v.when(v.rejecting)}" if v.rejecting.any() else ""
    return _held(v, v.rejecting, FindingId.ADMISSION_REJECTIONS, "admission_rejections",
                 f"{_count(n)} requests refused with HTTP 503 by admission control{rate}"
                 + (f"; by reason: {reasons}" if reasons else "")
                 + (f"; caps in force: {', '.join(caps)}" if caps else "") + when,
                 per1000 if math.isfinite(per1000) else n,
                 "per 1000 requests" if math.isfinite(per1000) else "requests")


def request_errors(v: WindowView) -> Finding | None:
    """Requests that failed other than by admission control (5xx, 4xx, errored, aborted)."""
    kinds = v.failures
    if not kinds:
        return None
    parts = "; ".join(f"{_count(c)} {k}" for k, c in kinds.items())
    http = v.total("http_requests")
    share = (f" out of {_count(http)} HTTP requests" if math.isfinite(http) and http > 0 else "")
    when = f", {v.when(v.failing)}" if v.failing.any() else ""
    return _held(v, v.failing, FindingId.REQUEST_ERRORS, "request_errors",
                 f"requests failed: {parts}{share}{when}", float(sum(kinds.values())),
                 "requests")


def error_rate_unknown(v: WindowView) -> Finding | None:
    """No HTTP status counts: failures the engine never saw are invisible."""
    if v.error_rate_known:
        return None
    return Finding(FindingId.ERROR_RATE_UNKNOWN, "http_requests", HTTP_MISSING + (
        "; refused or failed requests that never reached the engine cannot be seen"), None,
        "requests", INFO)


def ttft_queue_uncapped(v: WindowView) -> Finding | None:
    """TTFT over the SLO while a deep queue waited, with no queued-tokens cap refusing."""
    m = v.ttft_breach & v.deep_queue
    cap = v.current("max-num-queued-tokens").value
    if not m.any() or cap is not None or v.rejections_by_reason.get(
            "max_num_queued_tokens", 0.0) >= 0.5:
        return None
    depth = float(np.nanmedian(v.waiting[m]))
    return _held(v, m, FindingId.TTFT_QUEUE_UNCAPPED, "waiting",
                 f"TTFT p99 over the {v.slo.ttft_p99_seconds:g}s SLO while a median "
                 f"{depth:,.0f} requests waited, with no --max-num-queued-tokens cap, for "
                 f"{v.fraction_text(m)}, {v.when(m)}", depth, "requests")


def spec_acceptance_by_batch(v: WindowView) -> Finding | None:
    """Speculative acceptance that clearly depends on the running batch size."""
    bins = [b for b in v.spec_acceptance_by_batch if v.significant_steps(b[3])]
    if len(bins) < 2:
        return None
    rates = [b[2] for b in bins]
    if max(rates) - min(rates) < SPEC_BATCH_SPREAD:
        return None
    text = ", ".join(f"{a}-{b} running: {r:.0%}" for a, b, r, _ in bins)
    return Finding(FindingId.SPEC_ACCEPTANCE_BY_BATCH, "spec_decode_acceptance_rate",
                   f"speculative acceptance depends on the running batch size ({text})",
                   max(rates) - min(rates), "ratio", INFO)


FINDINGS: tuple[FindingRule, ...] = (
    admission_rejections,
    request_errors,
    kv_saturated_with_queue,
    preemptions,
    ttft_slo_breach,
    itl_slo_breach,
    itl_breach_during_prefill,
    over_provisioned,
    gpu_utilization,
    queue_with_headroom,
    gpu_memory_free,
    restarts,
    output_throughput,
    cost,
    prefix_cache,
    spec_decode,
    spec_acceptance_by_batch,
    model_len_unused,
    ttft_queue_uncapped,
    error_rate_unknown,
)
"""Every finding rule, in the order the report lists findings."""


def find(v: WindowView) -> dict[FindingId, Finding]:
    """Run the ``FINDINGS`` table over a view: ``{id: finding}`` in report order."""
    out: dict[FindingId, Finding] = {}
    for rule in FINDINGS:
        f = rule(v)
        if f is not None:
            out[f.id] = f
    return out
