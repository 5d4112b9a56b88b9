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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tuner.errors import QueryError
from tuner.promql import Querier, ValueType


@dataclass(frozen=True)
class Signal:
    """A named derived signal: a PromQL expression grouped ``by (instance)``, with its unit.

    ``local_labels`` are the labels of the signal's metrics that are not target labels
    (``finished_reason``, ``status``...): the rule files' form of the expression drops them
    with ``without`` (see ``render_rule_expr``). ``from_labels``, when set, makes the signal
    an info signal: the expression selects label sets (value 1), and the function turns one
    instance's label sets into the value (PromQL cannot read a number out of a label).
    """

    name: str
    expr: str
    unit: str
    help: str
    local_labels: tuple[str, ...] = ()
    from_labels: Callable[[Sequence[Mapping[str, str]]], float | None] | None = None
    missing: str = "-"
    """How a missing value reads: ``"unknown"`` where absence must not pass for zero."""


_ENGINE_STATUS_SIGNALS: tuple[Signal, ...] = (
    Signal("generation_tokens_per_s", "sum by (instance) (rate(vllm:generation_tokens_total[1m]))",
           "tokens/s", "Output tokens per second over the last minute."),
    Signal(
        "ttft_p99_5m",
        "histogram_quantile(0.99, sum by (instance, le)"
        " (rate(vllm:time_to_first_token_seconds_bucket[5m])))",
        "s",
        "99th percentile time to first token over the last 5 minutes (NaN without requests).",
    ),
    Signal("preemptions_5m", "sum by (instance) (increase(vllm:num_preemptions_total[5m]))",
           "preemptions", "Requests preempted (KV blocks reclaimed) in the last 5 minutes."),
    Signal("gpu_utilization", "avg by (instance) (DCGM_FI_DEV_GPU_UTIL)", "%",
           "Mean GPU utilization across the GPUs a DCGM target reports."),
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
        if sig.from_labels is not None:
            label_sets: dict[str, list[Mapping[str, str]]] = {}
            for element in result.vector:
                label_sets.setdefault(element.labels.get("instance", ""), []).append(
                    element.labels)
            for inst, sets in label_sets.items():
                value = sig.from_labels(sets)
                if value is not None:
                    out.setdefault(inst, {})[sig.name] = value
            continue
        for element in result.vector:
            out.setdefault(element.labels.get("instance", ""), {})[sig.name] = element.value
    return out


def format_signal(signal: Signal, value: float | None) -> str:
    """Human-readable value with the signal's unit (``signal.missing`` when missing, 'n/a' for
    NaN: no requests in the window)."""
    if value is None:
        return signal.missing
    if math.isnan(value):
        return "n/a"
    if signal.unit == "per 1000":
        return f"{value:,.1f}"
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


def histogram_quantile_expr(q: float, name: str, old: str | None = None) -> str:
    """``histogram_quantile(q)`` of a histogram's rate over ``$W`` (by ``$BY``), falling back
    to the old name with ``or``."""
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
    Signal("waiting", "sum by ($BY) (max without (pid) (vllm:num_requests_waiting$SEL))",
           "requests", "Requests queued for a batch slot or KV blocks (a gauge some releases "
           "export once per API-server pid: one copy is counted)."),
    Signal("running", "sum by ($BY) (max without (pid) (vllm:num_requests_running$SEL))",
           "requests", "Requests in the running batch."),
    Signal("preemptions_per_s", _rate("vllm:num_preemptions_total"), "1/s",
           "Preemptions per second (KV blocks reclaimed from a running request)."),
    Signal("requests_per_s", _rate("vllm:request_success_total"), "1/s",
           "Finished requests per second, every finished_reason.", ("finished_reason",)),
    Signal("output_tokens_per_s", _rate("vllm:generation_tokens_total"), "tokens/s",
           "Output (generated) tokens per second."),
    Signal("prompt_tokens_per_s", _rate("vllm:prompt_tokens_total"), "tokens/s",
           "Prompt (prefill) tokens per second."),
    Signal("ttft_p99", histogram_quantile_expr(0.99, "vllm:time_to_first_token_seconds"), "s",
           "99th percentile time to first token."),
    Signal("itl_p99",
           histogram_quantile_expr(0.99, "vllm:inter_token_latency_seconds",
                                   "vllm:time_per_output_token_seconds"),
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

# -- request outcomes: refusals, errors, waiting by reason, KV capacity (vLLM 0.29+) -------
#
# Templates like the window signals above ($SEL, $SEL_PROC, $BY, $W). ``http_requests_total``
# comes from the API server and has no ``model_name`` label, so it takes $SEL_PROC (the
# selector's instance/job/namespace/pod matchers only). Shares use ``part or 0 * whole`` so a
# server that has answered requests but no 5xx yet (the instrumentator creates a status series
# on first use) reads 0, while a server without ``http_requests_total`` at all has no value:
# unknown, never zero. ``vllm:admission_rejections_total`` is counted in the API server and has
# no ``engine`` label; gauges are taken once per API-server ``pid`` (``max without (pid)``)
# before summing engines; counters from several pids are distinct processes' counts and add.

_HTTP_LABELS = ("handler", "method", "status")


def _share(part: str, whole: str, sel: str = "$SEL") -> str:
    """``part / whole`` of two counters' rates by target; 0 when ``whole`` has no ``part``."""
    p = f"sum by ($BY) (rate({part}{sel}[$W]))"
    w = f"sum by ($BY) (rate({whole}{sel}[$W]))"
    return f"({p} or 0 * {w}) / {w}"


def _total(part: str, whole: str, sel: str = "$SEL") -> str:
    """Increase of ``part`` over the window by target; 0 when ``whole`` exists without it."""
    return (f"sum by ($BY) (increase({part}{sel}[$W]))"
            f" or 0 * sum by ($BY) (increase({whole}{sel}[$W]))")


_ARRIVALS = ("(sum by ($BY) (rate(vllm:admission_rejections_total$SEL[$W]))"
             " + sum by ($BY) (rate(vllm:request_success_total$SEL[$W])))")

HTTP_5XX_RATIO = Signal(
    "http_5xx_ratio",
    _share('http_requests_total{status=~"5.."}', "http_requests_total", "$SEL_PROC"),
    "ratio", "Share of HTTP requests answered 5xx (admission-control 503s included); no value "
    "when the server exports no http_requests_total (unknown, not zero).", _HTTP_LABELS,
    missing="unknown")
HTTP_4XX_RATIO = Signal(
    "http_4xx_ratio",
    _share('http_requests_total{status=~"4.."}', "http_requests_total", "$SEL_PROC"),
    "ratio", "Share of HTTP requests answered 4xx (bad requests: the client's fault); no value "
    "without http_requests_total.", _HTTP_LABELS, missing="unknown")
ABORTED_RATIO = Signal(
    "aborted_ratio",
    _share('vllm:request_success_total{finished_reason="abort"}', "vllm:request_success_total"),
    "ratio", "Share of finished requests that ended aborted (client gone, or cancelled).",
    ("finished_reason",))
ERRORED_RATIO = Signal(
    "errored_ratio",
    _share('vllm:request_success_total{finished_reason="error"}', "vllm:request_success_total"),
    "ratio", "Share of finished requests that ended with an engine error.",
    ("finished_reason",))
FAILED_FINISH_RATIO_BY_REASON = Signal(
    "failed_finish_ratio_by_reason",
    "sum by ($BY, finished_reason) (rate(vllm:request_success_total"
    '{finished_reason=~"abort|error"}$SEL[$W]))'
    " / ignoring (finished_reason) group_left"
    " sum by ($BY) (rate(vllm:request_success_total$SEL[$W]))",
    "ratio", "Share of finished requests aborted or errored, one series per finished_reason.",
    ("finished_reason",))
REJECTIONS_PER_1000 = Signal(
    "rejections_per_1000",
    f"1000 * sum by ($BY) (rate(vllm:admission_rejections_total$SEL[$W])) / {_ARRIVALS}",
    "per 1000", "Requests refused by admission control (HTTP 503, --max-num-queued-reqs/"
    "--max-num-queued-tokens) per 1000 arriving requests (refused + finished); every reason, "
    "known or not. No value on servers without admission control metrics (before 0.29).",
    ("reason", "finished_reason"))
REJECTIONS_PER_1000_BY_REASON = Signal(
    "rejections_per_1000_by_reason",
    "1000 * sum by ($BY, reason) (rate(vllm:admission_rejections_total$SEL[$W]))"
    f" / ignoring (reason) group_left () {_ARRIVALS}",
    "per 1000", "Admission rejections per 1000 arriving requests, one series per reason "
    "(max_num_queued_reqs, max_num_queued_tokens, or any reason a newer vLLM adds).",
    ("reason", "finished_reason"))
WAITING_BY_REASON = Signal(
    "waiting_by_reason",
    "sum by ($BY, reason) (max without (pid) (vllm:num_requests_waiting_by_reason$SEL))",
    "requests", "Waiting requests by reason: capacity (no batch slot or KV blocks) or deferred "
    "(LoRA budget, KV transfer, blocked); their sum is vllm:num_requests_waiting.", ("reason",))
WAITING_DEFERRED = Signal(
    "waiting_deferred",
    "sum by ($BY) (max without (pid) "
    '(vllm:num_requests_waiting_by_reason{reason="deferred"}$SEL))',
    "requests", "Requests waiting for a transient constraint, not for capacity.", ("reason",))


def kv_capacity_from_info(label_sets: Sequence[Mapping[str, str]]) -> float | None:
    """KV-cache capacity in tokens of one server from its ``vllm:cache_config_info`` label sets.

    ``kv_cache_size_tokens`` (recent releases) is per engine: summed over distinct engines.
    Otherwise ``num_gpu_blocks`` x ``block_size``, taken once: under data parallelism every
    engine reports the summed ``num_gpu_blocks``. None when neither is a number.
    """
    per_engine: dict[str, float] = {}
    blocks: list[float] = []
    for labels in label_sets:
        size = _number(labels.get("kv_cache_size_tokens"))
        if size is not None:
            per_engine[labels.get("engine", "")] = size
        n, b = _number(labels.get("num_gpu_blocks")), _number(labels.get("block_size"))
        if n is not None and b is not None:
            blocks.append(n * b)
    if per_engine:
        return sum(per_engine.values())
    return max(blocks) if blocks else None


def _number(text: str | None) -> float | None:
    try:
        value = float(text or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


KV_CAPACITY_TOKENS = Signal(
    "kv_capacity_tokens",
    "max by ($BY, engine, kv_cache_size_tokens, num_gpu_blocks, block_size)"
    " (vllm:cache_config_info$SEL_PROC)",
    "tokens", "KV-cache capacity in tokens (kv_cache_size_tokens summed over engines, else "
    "num_gpu_blocks x block_size), read from vllm:cache_config_info's labels.",
    from_labels=kv_capacity_from_info)

REQUEST_OUTCOME_SIGNALS: tuple[Signal, ...] = (
    HTTP_5XX_RATIO, HTTP_4XX_RATIO, ABORTED_RATIO, ERRORED_RATIO, FAILED_FINISH_RATIO_BY_REASON,
    REJECTIONS_PER_1000, REJECTIONS_PER_1000_BY_REASON, WAITING_BY_REASON, WAITING_DEFERRED,
    KV_CAPACITY_TOKENS,
)
"""Issue 10's signals (templates): HTTP error shares, failed finishes, admission rejections,
waiting by reason, KV capacity. The ``*_by_reason`` ones keep their reason label."""


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
    Signal("admission_rejections",
           "sum by ($BY) (increase(vllm:admission_rejections_total$SEL[$W]))",
           "requests", "Requests refused by admission control (HTTP 503), every reason; no "
           "value before vLLM 0.29.", ("reason",)),
    Signal("http_requests", "sum by ($BY) (increase(http_requests_total$SEL_PROC[$W]))",
           "requests", "HTTP requests answered, every status; no value without "
           "http_requests_total (then error rates are unknown).", _HTTP_LABELS),
    Signal("http_5xx", _total('http_requests_total{status=~"5.."}', "http_requests_total",
                              "$SEL_PROC"),
           "requests", "HTTP requests answered 5xx (503 refusals included).", _HTTP_LABELS),
    Signal("http_4xx", _total('http_requests_total{status=~"4.."}', "http_requests_total",
                              "$SEL_PROC"),
           "requests", "HTTP requests answered 4xx.", _HTTP_LABELS),
    Signal("requests_aborted",
           _total('vllm:request_success_total{finished_reason="abort"}',
                  "vllm:request_success_total"),
           "requests", "Finished requests that ended aborted.", ("finished_reason",)),
    Signal("requests_errored",
           _total('vllm:request_success_total{finished_reason="error"}',
                  "vllm:request_success_total"),
           "requests", "Finished requests that ended with an engine error.",
           ("finished_reason",)),
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
    return _merge_selectors(
        signal.expr.replace("$SEL_PROC", proc_sel)
        .replace("$SEL", selector)
        .replace("$BY", group_by)
        .replace("$W", window)
    )


def _merge_selectors(expr: str) -> str:
    """``name{a="x"}{b="y"}`` (a template's matchers, then the user's) -> ``name{a="x", b="y"}``."""
    return expr.replace('"}{', '", ')


REPLICA_LABELS = ("engine", "pid")
"""Labels that split one server's series: data-parallel rank, API-server process."""

_BY_PLACEHOLDER = re.compile(r"by \(\$BY((?:, *[a-zA-Z_][a-zA-Z0-9_]*)*)\)")


def render_rule_expr(signal: Signal, window: str = "5m", selector: str = "") -> str:
    """A signal in the form the rule files use: ``without`` the replica and local labels.

    Each ``by ($BY[, kept...])`` becomes ``without (engine, pid, <local labels not kept>)``, so
    the result keeps whatever target labels the scraper attached (job, instance, pod, ...)
    and alerts carry them. ``selector`` (``{job=~".*vllm.*"}`` or ``""``) applies to every
    series. Info signals have no rule form.
    """
    if signal.from_labels is not None:
        raise ValueError(f"signal {signal.name} is read from labels; it has no rule form")

    def without(m: re.Match[str]) -> str:
        kept = {k.strip() for k in m.group(1).split(",") if k.strip()}
        drop = [k for k in (*REPLICA_LABELS, *signal.local_labels) if k not in kept]
        return f"without ({', '.join(drop)})"

    expr = _BY_PLACEHOLDER.sub(without, signal.expr)
    if "$BY" in expr:
        raise ValueError(f"signal {signal.name}: $BY outside 'by ($BY...)' in {signal.expr!r}")
    return _merge_selectors(
        expr.replace("$SEL_PROC", selector).replace("$SEL", selector).replace("$W", window))


KV_CACHE_USAGE = Signal(
    "kv_cache_usage_now",
    "max by ($BY) (vllm:kv_cache_usage_perc$SEL) or max by ($BY) (vllm:gpu_cache_usage_perc$SEL)",
    "ratio", "KV-cache blocks in use now, 0..1: the fullest engine of a server (V0 name "
    "vllm:gpu_cache_usage_perc as fallback; a server exporting both counts once).")


def signal_template(name: str) -> Signal:
    """The signal template called ``name`` (issue 10's, the window tables', KV usage now)."""
    for sig in (*REQUEST_OUTCOME_SIGNALS, KV_CACHE_USAGE, *WINDOW_SIGNALS, *WINDOW_TOTALS):
        if sig.name == name:
            return sig
    raise KeyError(f"no signal template named {name!r}")


def _status(sig: Signal, name: str | None = None, note: str = " (5m)") -> Signal:
    return Signal(name or sig.name, render_signal(sig, by="instance", window="5m"), sig.unit,
                  sig.help + note, sig.local_labels, sig.from_labels, sig.missing)


STATUS_SIGNALS: tuple[Signal, ...] = (
    _status(signal_template("running"), note=""),
    _status(signal_template("waiting"), note=""),
    _status(KV_CACHE_USAGE, "kv_cache_usage", note=""),
    *_ENGINE_STATUS_SIGNALS,
    *(
        _status(sig)
        for sig in (HTTP_5XX_RATIO, HTTP_4XX_RATIO, ABORTED_RATIO, ERRORED_RATIO,
                    REJECTIONS_PER_1000, WAITING_DEFERRED, KV_CAPACITY_TOKENS)
    ),
)
"""What ``tuner status`` shows per instance (rates over the last 5 minutes)."""


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


# -- what suggest reads besides its window signals (refusals, failures, acceptance by step) --

ADMISSION_REJECTIONS_BY_REASON = Signal(
    "admission_rejections_by_reason",
    "sum by ($BY, reason) (increase(vllm:admission_rejections_total$SEL[$W]))",
    "requests", "Requests refused by admission control over the window, one series per reason "
    "(unknown reasons kept).", ("reason",))
SPEC_ACCEPTANCE_RATE = Signal(
    "spec_acceptance",
    "sum by ($BY) (rate(vllm:spec_decode_num_accepted_tokens_total$SEL[$W]))"
    " / sum by ($BY) (rate(vllm:spec_decode_num_draft_tokens_total$SEL[$W]))",
    "ratio", "Speculative draft tokens accepted / proposed over each step's window (read "
    "against the running batch size for a per-batch-size schedule).")

SUGGEST_RANGE_SIGNALS: tuple[Signal, ...] = (
    REJECTIONS_PER_1000, HTTP_5XX_RATIO, HTTP_4XX_RATIO, ABORTED_RATIO, ERRORED_RATIO,
    WAITING_DEFERRED, SPEC_ACCEPTANCE_RATE,
)
"""Range signals ``suggest`` reads next to ``WINDOW_SIGNALS``: refusals and failures over time
(when they happened), deferred waiting (a vLLM 0.29+ server), acceptance per step."""
