"""Named, documented derived signals, each a PromQL expression over canonical metric names.

A signal is defined once here and evaluated by whatever answers PromQL: the in-process
evaluator over the embedded store (``tuner.promql.Engine``) or a Prometheus server
(``tuner.source``). Every expression is robust to vLLM's renames: the store keeps a canonical
copy of old names, and expressions that may run against a raw Prometheus add ``or`` over the
old name so a fleet that mixes versions counts each server once.

``STATUS_SIGNALS`` are what ``tuner status`` shows; ``evaluate_signals`` runs a set of signals
at one instant and returns values per instance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from tuner.errors import QueryError


@dataclass(frozen=True)
class Signal:
    """A named derived signal: a PromQL expression grouped ``by (instance)``, with its unit."""

    name: str
    expr: str
    unit: str
    help: str


class InstantQuerier(Protocol):
    """Anything that answers an instant PromQL query (Engine, LocalSource, PrometheusSource)."""

    def instant(self, expr: str, ts: float) -> object: ...


STATUS_SIGNALS: tuple[Signal, ...] = (
    Signal(
        "running",
        "sum by (instance) (vllm:num_requests_running)",
        "requests",
        "Requests in the running batch now.",
    ),
    Signal(
        "waiting",
        "sum by (instance) (vllm:num_requests_waiting)",
        "requests",
        "Requests queued, waiting for a batch slot or KV blocks.",
    ),
    Signal(
        "kv_cache_usage",
        "max by (instance) (vllm:kv_cache_usage_perc)"
        " or max by (instance) (vllm:gpu_cache_usage_perc)",
        "ratio",
        "KV-cache blocks in use, 0..1 (V0 name vllm:gpu_cache_usage_perc as fallback).",
    ),
    Signal(
        "generation_tokens_per_s",
        "sum by (instance) (rate(vllm:generation_tokens_total[1m]))",
        "tokens/s",
        "Output tokens per second over the last minute.",
    ),
    Signal(
        "ttft_p99_5m",
        "histogram_quantile(0.99, sum by (instance, le)"
        " (rate(vllm:time_to_first_token_seconds_bucket[5m])))",
        "s",
        "99th percentile time to first token over the last 5 minutes (NaN without requests).",
    ),
    Signal(
        "preemptions_5m",
        "sum by (instance) (increase(vllm:num_preemptions_total[5m]))",
        "preemptions",
        "Requests preempted (KV blocks reclaimed) in the last 5 minutes.",
    ),
    Signal(
        "gpu_utilization",
        "avg by (instance) (DCGM_FI_DEV_GPU_UTIL)",
        "%",
        "Mean GPU utilization across the GPUs a DCGM target reports.",
    ),
)


def evaluate_signals(
    querier: InstantQuerier, signals: Sequence[Signal], ts: float
) -> dict[str, dict[str, float]]:
    """Evaluate signals at ``ts``: ``{instance: {signal name: value}}``.

    A signal with no data for an instance is simply absent from that instance's mapping.
    """
    out: dict[str, dict[str, float]] = {}
    for sig in signals:
        result = querier.instant(sig.expr, ts)
        vector = getattr(result, "vector", ())
        if getattr(result, "kind", "vector") != "vector":
            raise QueryError(f"signal {sig.name}: expected an instant vector from {sig.expr!r}")
        for element in vector:
            labels: Mapping[str, str] = element.labels
            value = float(element.value)
            out.setdefault(labels.get("instance", ""), {})[sig.name] = value
    return out


def format_signal(signal: Signal, value: float | None) -> str:
    """Human-readable value with the signal's unit ('-' when missing, 'n/a' for NaN)."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "n/a"
    if signal.unit == "ratio":
        return f"{value * 100:.1f}%"
    if signal.unit == "%":
        return f"{value:.0f}%"
    if signal.unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if signal.unit == "tokens/s":
        return f"{value:,.1f}"
    return f"{value:,.0f}"
