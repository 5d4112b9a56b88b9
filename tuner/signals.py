"""Named, documented derived signals, each a PromQL expression over canonical metric names.

A signal is defined once here and evaluated by whatever answers PromQL (a
``tuner.promql.Querier``): the in-process evaluator over the embedded store
(``tuner.promql.Engine``) or a Prometheus server (``tuner.source``). Every expression is robust
to vLLM's renames: the store keeps a canonical copy of old names, and expressions that may run
against a raw Prometheus add ``or`` over the old name so a fleet that mixes versions counts each
server once.

``STATUS_SIGNALS`` are what ``tuner status`` shows; ``evaluate_signals`` runs a set of signals
at one instant and returns values per instance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tuner.errors import QueryError
from tuner.promql import Querier, ValueType


@dataclass(frozen=True)
class Signal:
    """A named derived signal: a PromQL expression grouped ``by (instance)``, with its unit."""

    name: str
    expr: str
    unit: str
    help: str


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
    querier: Querier, signals: Sequence[Signal], ts: float
) -> dict[str, dict[str, float]]:
    """Evaluate signals at ``ts``: ``{instance: {signal name: value}}``.

    A signal with no data for an instance is simply absent from that instance's mapping.
    """
    out: dict[str, dict[str, float]] = {}
    for sig in signals:
        result = querier.instant(sig.expr, ts)
        if result.kind != ValueType.VECTOR:
            raise QueryError(f"signal {sig.name}: expected an instant vector from {sig.expr!r}")
        for element in result.vector:
            out.setdefault(element.labels.get("instance", ""), {})[sig.name] = element.value
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


# -- signals over a window (suggest, workload) --------------------------------------------
#
# Templates: ``$SEL`` is replaced by the user's label selector (``{model_name="x"}`` or
# nothing), ``$BY`` by the grouping labels and ``$W`` by the rate window (``5m``). Each vLLM
# signal falls back to the old (V0 / pre-0.12) name with ``or``, which drops a duplicate label
# set, so a server that exports both names is counted once. GPU signals come from DCGM and
# are grouped by ``namespace, pod`` (Kubernetes) — the user's selector does not apply to them.

VLLM_GROUP_BY = "instance, model_name, namespace, deployment, pod"
GPU_GROUP_BY = "namespace, pod"


def _hq(q: float, name: str, old: str | None = None) -> str:
    new = f"histogram_quantile({q:g}, sum by ($BY, le) (rate({name}_bucket$SEL[$W])))"
    if old is None:
        return new
    return f"{new} or histogram_quantile({q:g}, sum by ($BY, le) (rate({old}_bucket$SEL[$W])))"


def _rate(name: str, old: str | None = None) -> str:
    new = f"sum by ($BY) (rate({name}$SEL[$W]))"
    return new if old is None else f"{new} or sum by ($BY) (rate({old}$SEL[$W]))"


WINDOW_SIGNALS: tuple[Signal, ...] = (
    Signal("kv_cache_usage",
           "max by ($BY) (max_over_time(vllm:kv_cache_usage_perc$SEL[$W]))"
           " or max by ($BY) (max_over_time(vllm:gpu_cache_usage_perc$SEL[$W]))",
           "ratio", "Peak KV-cache usage, 0..1, over each step's window (the highest engine "
           "of a server), so a full cache between two evaluation steps is not missed."),
    Signal("waiting", "sum by ($BY) (vllm:num_requests_waiting$SEL)", "requests",
           "Requests queued for a batch slot or KV blocks."),
    Signal("running", "sum by ($BY) (vllm:num_requests_running$SEL)", "requests",
           "Requests in the running batch."),
    Signal("preemptions_per_s", _rate("vllm:num_preemptions_total"), "1/s",
           "Preemptions per second (KV blocks reclaimed from a running request)."),
    Signal("requests_per_s", _rate("vllm:request_success_total"), "1/s",
           "Finished requests per second, every finished_reason."),
    Signal("output_tokens_per_s", _rate("vllm:generation_tokens_total"), "tokens/s",
           "Output (generated) tokens per second."),
    Signal("prompt_tokens_per_s", _rate("vllm:prompt_tokens_total"), "tokens/s",
           "Prompt (prefill) tokens per second."),
    Signal("ttft_p99", _hq(0.99, "vllm:time_to_first_token_seconds"), "s",
           "99th percentile time to first token."),
    Signal("itl_p99",
           _hq(0.99, "vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
           "s", "99th percentile inter-token latency (V0: time per output token)."),
    Signal("gpu_utilization", "avg by ($BY) (DCGM_FI_DEV_GPU_UTIL)", "%",
           "Mean GPU utilization over the GPUs of a pod (or of the node), DCGM."),
    Signal("gpu_fb_used_mib", "sum by ($BY) (DCGM_FI_DEV_FB_USED)", "MiB",
           "Device memory in use, summed over GPUs (vLLM pre-allocates: high is normal)."),
    Signal("gpu_fb_free_mib", "sum by ($BY) (DCGM_FI_DEV_FB_FREE)", "MiB",
           "Device memory free, summed over GPUs."),
    Signal("process_start_time", "max by (instance) (process_start_time_seconds$SEL_PROC)",
           "s", "Start time of the server process; a change is a restart."),
)
"""Signals ``suggest`` evaluates over its window with range queries."""

WINDOW_TOTALS: tuple[Signal, ...] = (
    Signal("requests", "sum by ($BY) (increase(vllm:request_success_total$SEL[$W]))",
           "requests", "Requests finished in the window."),
    Signal("preemptions", "sum by ($BY) (increase(vllm:num_preemptions_total$SEL[$W]))",
           "preemptions", "Preemptions in the window."),
    Signal("output_tokens", "sum by ($BY) (increase(vllm:generation_tokens_total$SEL[$W]))",
           "tokens", "Output tokens generated in the window."),
    Signal("prompt_tokens", "sum by ($BY) (increase(vllm:prompt_tokens_total$SEL[$W]))",
           "tokens", "Prompt tokens processed in the window."),
    Signal("prefix_cache_queries",
           "sum by ($BY) (increase(vllm:prefix_cache_queries_total$SEL[$W]))"
           " or sum by ($BY) (increase(vllm:gpu_prefix_cache_queries_total$SEL[$W]))",
           "tokens", "Prompt tokens looked up in the prefix cache."),
    Signal("prefix_cache_hits",
           "sum by ($BY) (increase(vllm:prefix_cache_hits_total$SEL[$W]))"
           " or sum by ($BY) (increase(vllm:gpu_prefix_cache_hits_total$SEL[$W]))",
           "tokens", "Prompt tokens served from the prefix cache."),
    Signal("spec_drafts", "sum by ($BY) (increase(vllm:spec_decode_num_drafts_total$SEL[$W]))",
           "drafts", "Speculative-decoding drafts proposed."),
    Signal("spec_draft_tokens",
           "sum by ($BY) (increase(vllm:spec_decode_num_draft_tokens_total$SEL[$W]))",
           "tokens", "Draft tokens proposed."),
    Signal("spec_accepted_tokens",
           "sum by ($BY) (increase(vllm:spec_decode_num_accepted_tokens_total$SEL[$W]))",
           "tokens", "Draft tokens accepted by the target model."),
    Signal("spec_positions",
           "count by ($BY) (vllm:spec_decode_num_accepted_tokens_per_pos_total$SEL)",
           "positions", "Speculative positions exported (= num_speculative_tokens)."),
    Signal("spec_acceptance_rate_v0",
           "avg by ($BY) (avg_over_time(vllm:spec_decode_draft_acceptance_rate$SEL[$W]))",
           "ratio", "V0 engines' acceptance-rate gauge, averaged over the window."),
)
"""Whole-window totals ``suggest`` evaluates with one instant query at the window's end.

Derived from them: preemptions per 1000 requests = 1000 * preemptions / requests (not per
1000 *seconds*, the published playbook's mistake); prefix-cache hit rate = hits / queries;
speculative acceptance rate = accepted / draft tokens; mean acceptance length
= 1 + accepted / drafts (includes the bonus token; below ~1.5 the draft costs more than it
saves); $/Mtok (output) = $/hour * hours / output tokens * 1e6.
"""


def render_signal(
    signal: Signal, selector: str = "", by: str = VLLM_GROUP_BY, window: str = "5m"
) -> str:
    """The PromQL of a window signal with its placeholders filled in.

    ``selector`` is a matcher list with braces (``{model_name="x"}``) or ``""``; it applies
    to vLLM series. ``process_start_time_seconds`` has no ``model_name`` label, so only
    ``instance``/``job``/``namespace``/``pod`` matchers of the selector apply to it.
    """
    proc_sel = ""
    if selector:
        inner = [
            m for m in split_matchers(selector)
            if m.split("=")[0].rstrip("!~ ").strip() in ("instance", "job", "namespace", "pod")
        ]
        proc_sel = "{" + ", ".join(inner) + "}" if inner else ""
    group_by = GPU_GROUP_BY if "DCGM_" in signal.expr else by
    return (
        signal.expr.replace("$SEL_PROC", proc_sel)
        .replace("$SEL", selector)
        .replace("$BY", group_by)
        .replace("$W", window)
    )


_MATCHER_RE = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'


def split_matchers(selector: str) -> list[str]:
    """``{a="x", b=~"y"}`` -> ``['a="x"', 'b=~"y"']``; raises ValueError if not a matcher list."""
    text = selector.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"{selector!r} is not a label selector like {{model_name=\"x\"}}")
    body = text[1:-1].strip().rstrip(",")
    if not body:
        return []
    parts = re.findall(_MATCHER_RE + r"(?:,|$)", body)
    if "".join(parts).replace(" ", "") != body.replace(" ", ""):
        raise ValueError(
            f"{selector!r} is not a label selector like {{model_name=\"x\", instance=~\"a.*\"}}"
        )
    return [p.strip().rstrip(",").strip() for p in parts]


def le_regex(bound: float) -> str:
    """A PromQL regex for the ``le`` label of ``bound`` in both spellings.

    prometheus_client writes ``1.0`` (Python float repr), Prometheus 3 normalises to ``1``.
    The result is ready to sit inside a double-quoted PromQL string.
    """
    spellings = {repr(float(bound))}
    if float(bound).is_integer():
        spellings.add(str(int(bound)))
    return "|".join(re.escape(s).replace("\\", "\\\\") for s in sorted(spellings))


def mean_acceptance_length(accepted: float, drafts: float) -> float:
    """1 + accepted tokens per draft (includes the bonus token); NaN without drafts."""
    return 1.0 + accepted / drafts if drafts > 0 else math.nan


def per_thousand_requests(events: float, requests: float) -> float:
    """Events per 1000 finished requests; NaN without requests."""
    return 1000.0 * events / requests if requests > 0 else math.nan


def dollars_per_mtok(dollars_per_hour: float, output_tokens: float, seconds: float) -> float:
    """$ per million output tokens over a span: $/hour * hours / tokens * 1e6; NaN if unknown."""
    if dollars_per_hour <= 0 or output_tokens <= 0 or seconds <= 0:
        return math.nan
    return dollars_per_hour * (seconds / 3600.0) / output_tokens * 1e6


# -- canary trials (tuner.tune.trial) -----------------------------------------------------
#
# A trial is scored with the same signals as production, over its canary's load window:
# rendered with ``$SEL`` = ``{instance="trial-N"}``, ``$BY`` = ``instance`` and ``$W`` = the
# window. Only the mean KV usage is new; everything else is taken from the tables above.

KV_CACHE_USAGE_MEAN = Signal(
    "kv_cache_usage_mean",
    "max by ($BY) (avg_over_time(vllm:kv_cache_usage_perc$SEL[$W]))"
    " or max by ($BY) (avg_over_time(vllm:gpu_cache_usage_perc$SEL[$W]))",
    "ratio",
    "Mean KV-cache usage, 0..1, over each step's window (the highest engine of a server; V0 "
    "name vllm:gpu_cache_usage_perc as fallback).",
)


def _named(name: str, *tables: Sequence[Signal]) -> Signal:
    return next(s for table in tables for s in table if s.name == name)


TRIAL_SIGNALS: tuple[Signal, ...] = (
    _named("kv_cache_usage", WINDOW_SIGNALS),
    KV_CACHE_USAGE_MEAN,
    *(
        _named(n, WINDOW_TOTALS)
        for n in ("requests", "preemptions", "output_tokens", "spec_draft_tokens",
                  "spec_accepted_tokens")
    ),
)
"""What a canary trial's server-side measurement is computed from (one instant query each at
the end of the load window): peak and mean KV usage, and the window totals of requests,
preemptions, output tokens and speculative draft/accepted tokens."""


def _hmean(name: str, old: str | None = None) -> str:
    new = (f"sum by ($BY) (rate({name}_sum$SEL[$W])) / sum by ($BY) (rate({name}_count$SEL[$W]))")
    if old is None:
        return new
    return (f"{new} or sum by ($BY) (rate({old}_sum$SEL[$W]))"
            f" / sum by ($BY) (rate({old}_count$SEL[$W]))")


_ITL_OLD = "vllm:time_per_output_token_seconds"

TRIAL_LATENCY_SIGNALS: tuple[Signal, ...] = (
    Signal("server_ttft_p50", _hq(0.5, "vllm:time_to_first_token_seconds"), "s",
           "Median time to first token, the server's histogram (from the engine's arrival)."),
    Signal("server_ttft_p99", _named("ttft_p99", WINDOW_SIGNALS).expr, "s",
           "99th percentile time to first token, the server's histogram."),
    Signal("server_itl_p50", _hq(0.5, "vllm:inter_token_latency_seconds", _ITL_OLD), "s",
           "Median inter-token latency, the server's histogram (one observation per step)."),
    Signal("server_itl_p99", _named("itl_p99", WINDOW_SIGNALS).expr, "s",
           "99th percentile inter-token latency, the server's histogram."),
    Signal("server_itl_mean", _hmean("vllm:inter_token_latency_seconds", _ITL_OLD), "s",
           "Mean inter-token latency (histogram sum / count: exact, not bucket-interpolated)."),
    Signal("server_queue_p50", _hq(0.5, "vllm:request_queue_time_seconds"), "s",
           "Median time requests waited in the engine's queue before their first step."),
    Signal("server_queue_p99", _hq(0.99, "vllm:request_queue_time_seconds"), "s",
           "99th percentile queue time."),
)
"""The canary's own latency histograms over a trial's load window (the production histograms,
read the same way): TTFT, ITL and queue time, beside the load client's per-request figures.
Quantiles interpolate inside the histogram's buckets (vLLM's ITL buckets start at 10 ms), so
small values are coarse; ``server_itl_mean`` is exact."""
