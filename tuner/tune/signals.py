"""The server-side signals of a canary trial, built from production's (``tuner.signals``).

A trial is scored with the same signals as production, over its canary's load window:
rendered with ``$SEL`` = ``{instance="trial-N"}``, ``$BY`` = ``instance`` and ``$W`` = the
window (``tuner.tune.trial.server_signals``). Only the mean KV usage and the running peak are
new; everything else is taken from the production tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuner.signals import WINDOW_SIGNALS, WINDOW_TOTALS, Signal, histogram_quantile_expr

KV_CACHE_USAGE_MEAN = Signal(
    "kv_cache_usage_mean",
    "max by ($BY) (avg_over_time(vllm:kv_cache_usage_perc$SEL[$W]))"
    " or max by ($BY) (avg_over_time(vllm:gpu_cache_usage_perc$SEL[$W]))",
    "ratio",
    "Mean KV-cache usage, 0..1, over each step's window (the highest engine of a server; V0 "
    "name vllm:gpu_cache_usage_perc as fallback).",
)


RUNNING_PEAK = Signal(
    "running_peak", "max by ($BY) (max_over_time(vllm:num_requests_running$SEL[$W]))",
    "requests", "The most requests any scrape of the window saw running (0 while the load "
    "generated tokens: the scrapes caught no step in progress, so the KV gauges are unknown).")


def _named(name: str, *tables: Sequence[Signal]) -> Signal:
    return next(s for table in tables for s in table if s.name == name)


TRIAL_SIGNALS: tuple[Signal, ...] = (
    _named("kv_cache_usage", WINDOW_SIGNALS),
    KV_CACHE_USAGE_MEAN,
    RUNNING_PEAK,
    *(
        _named(n, WINDOW_TOTALS)
        for n in ("requests", "preemptions", "output_tokens", "spec_draft_tokens",
                  "spec_accepted_tokens")
    ),
)
"""What a canary trial's server-side measurement is computed from (one instant query each at
the end of the load window): peak and mean KV usage, the most requests seen running, and the
window totals of requests,
preemptions, output tokens and speculative draft/accepted tokens."""


def _hmean(name: str, old: str | None = None) -> str:
    new = (f"sum by ($BY) (rate({name}_sum$SEL[$W])) / sum by ($BY) (rate({name}_count$SEL[$W]))")
    if old is None:
        return new
    return (f"{new} or sum by ($BY) (rate({old}_sum$SEL[$W]))"
            f" / sum by ($BY) (rate({old}_count$SEL[$W]))")


_ITL_OLD = "vllm:time_per_output_token_seconds"

TRIAL_LATENCY_SIGNALS: tuple[Signal, ...] = (
    Signal("server_ttft_p50", histogram_quantile_expr(0.5, "vllm:time_to_first_token_seconds"), "s",
           "Median time to first token, the server's histogram (from the engine's arrival)."),
    Signal("server_ttft_p99", _named("ttft_p99", WINDOW_SIGNALS).expr, "s",
           "99th percentile time to first token, the server's histogram."),
    Signal("server_itl_p50",
           histogram_quantile_expr(0.5, "vllm:inter_token_latency_seconds", _ITL_OLD), "s",
           "Median inter-token latency, the server's histogram (one observation per step)."),
    Signal("server_itl_p99", _named("itl_p99", WINDOW_SIGNALS).expr, "s",
           "99th percentile inter-token latency, the server's histogram."),
    Signal("server_itl_mean", _hmean("vllm:inter_token_latency_seconds", _ITL_OLD), "s",
           "Mean inter-token latency (histogram sum / count: exact, not bucket-interpolated)."),
    Signal("server_queue_p50",
           histogram_quantile_expr(0.5, "vllm:request_queue_time_seconds"), "s",
           "Median time requests waited in the engine's queue before their first step."),
    Signal("server_queue_p99",
           histogram_quantile_expr(0.99, "vllm:request_queue_time_seconds"), "s",
           "99th percentile queue time."),
)
"""The canary's own latency histograms over a trial's load window (the production histograms,
read the same way): TTFT, ITL and queue time, beside the load client's per-request figures.
Quantiles interpolate inside the histogram's buckets (vLLM's ITL buckets start at 10 ms), so
small values are coarse; ``server_itl_mean`` is exact."""
