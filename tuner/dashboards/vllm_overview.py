"""The vLLM overview dashboard: traffic, latency and SLO attainment, capacity, errors, cost."""

from __future__ import annotations

from tuner.config import ITL_BUCKETS, REQUEST_BUCKETS, SLO, TTFT_BUCKETS, snap_to_bucket
from tuner.dashboards.model import (
    RI,
    VI,
    VLLM_VARS,
    Dashboard,
    Panel,
    PanelKind,
    Query,
    Row,
    V,
    attainment,
    fmt_seconds,
    quantiles,
    running_and_waiting,
    signal_query,
    textbox_variable,
)
from tuner.signals import (
    ABORTED_RATIO,
    ERRORED_RATIO,
    HTTP_4XX_RATIO,
    HTTP_5XX_RATIO,
    KV_CACHE_USAGE,
    REJECTIONS_PER_1000_BY_REASON,
    WAITING_BY_REASON,
)


def overview(slo: SLO, dollars_per_hour: float) -> Dashboard:
    ttft = snap_to_bucket(slo.ttft_p99_seconds, TTFT_BUCKETS)
    itl = snap_to_bucket(slo.itl_p99_seconds, ITL_BUCKETS)
    e2e = snap_to_bucket(slo.e2e_p99_seconds, REQUEST_BUCKETS)
    success = f"vllm:request_success_total{{{V}}}"
    gen_rate = f"sum(rate(vllm:generation_tokens_total{{{V}}}[{RI}]))"
    n_instances = f"count(count by (instance) (vllm:num_requests_running{{{V}}}))"
    cost = Panel(
        "$/Mtok (output)",
        (
            Query(
                f"$cost_per_hour * {n_instances} / ({gen_rate} * 3600) * 1e6",
                "$ per 1M output tokens",
            ),
        ),
        unit="currencyUSD",
        description=(
            "Instance cost per hour (variable `cost_per_hour`, per vLLM instance) divided "
            "by output tokens per hour, times 1e6. Meaningful at load, near the latency SLO."
        ),
    )
    return Dashboard(
        uid="tuner-vllm-overview",
        title="vLLM overview",
        filename="vllm-overview.json",
        variables=(
            *VLLM_VARS,
            textbox_variable(
                "cost_per_hour",
                "$/hour per instance",
                f"{dollars_per_hour:g}",
                "Instance price in dollars per hour (from cost.dollars_per_hour in tuner.yaml)",
            ),
        ),
        rows=(
            Row(
                "Traffic",
                (
                    Panel(
                        "Request rate",
                        (
                            Query(f"sum(rate({success}[{RI}]))", "finished requests/s"),
                            Query(
                                f'sum(rate(http_requests_total{{{VI}, handler=~"/v1/.*"}}[{RI}]))',
                                "HTTP requests/s (/v1)",
                            ),
                        ),
                        unit="reqps",
                    ),
                    Panel(
                        "Tokens per second",
                        (
                            Query(
                                f"sum(rate(vllm:prompt_tokens_total{{{V}}}[{RI}]))", "prompt tok/s"
                            ),
                            Query(gen_rate, "generation tok/s"),
                        ),
                        unit="short",
                    ),
                    Panel(
                        "Finish reasons",
                        (
                            Query(
                                f"sum by (finished_reason) (rate({success}[{RI}]))",
                                "{{finished_reason}}",
                            ),
                        ),
                        unit="reqps",
                        description="Finished requests per second by finished_reason "
                        "(stop, length, abort, error, repetition).",
                    ),
                    cost,
                ),
            ),
            Row(
                "Latency",
                (
                    Panel(
                        "Time to first token",
                        quantiles("vllm:time_to_first_token_seconds", V),
                        unit="s",
                        width=8,
                    ),
                    Panel(
                        "Inter-token latency",
                        quantiles(
                            "vllm:inter_token_latency_seconds",
                            V,
                            old="vllm:time_per_output_token_seconds",
                        ),
                        unit="s",
                        width=8,
                    ),
                    Panel(
                        "End-to-end request latency",
                        quantiles("vllm:e2e_request_latency_seconds", V),
                        unit="s",
                        width=8,
                    ),
                    Panel(
                        "SLO attainment (bucket bounds)",
                        (
                            Query(
                                attainment("vllm:time_to_first_token_seconds", ttft),
                                f"TTFT ≤ {fmt_seconds(ttft)}",
                            ),
                            Query(
                                attainment(
                                    "vllm:inter_token_latency_seconds",
                                    itl,
                                    old="vllm:time_per_output_token_seconds",
                                ),
                                f"ITL ≤ {fmt_seconds(itl)}",
                            ),
                            Query(
                                attainment("vllm:e2e_request_latency_seconds", e2e),
                                f"e2e ≤ {fmt_seconds(e2e)}",
                            ),
                            Query(f"vector({slo.objective:g})", "objective"),
                        ),
                        unit="percentunit",
                        max=1,
                        description=(
                            "Share of observations at or below the SLO threshold, read on "
                            "the histogram bucket bound the threshold sits on (TTFT "
                            f"{fmt_seconds(ttft)}, ITL {fmt_seconds(itl)}, e2e "
                            f"{fmt_seconds(e2e)}; SLO p99 from tuner.yaml)."
                        ),
                    ),
                    Panel(
                        "SLO attainment over the dashboard range",
                        (
                            Query(
                                attainment("vllm:time_to_first_token_seconds", ttft, "$__range"),
                                f"TTFT ≤ {fmt_seconds(ttft)}",
                                instant=True,
                            ),
                            Query(
                                attainment("vllm:e2e_request_latency_seconds", e2e, "$__range"),
                                f"e2e ≤ {fmt_seconds(e2e)}",
                                instant=True,
                            ),
                        ),
                        kind=PanelKind.STAT,
                        unit="percentunit",
                        max=1,
                    ),
                ),
            ),
            Row(
                "Capacity",
                (
                    Panel(
                        "Running and waiting requests",
                        running_and_waiting(),
                        width=8,
                    ),
                    Panel(
                        "KV cache usage",
                        (
                            Query(signal_query(KV_CACHE_USAGE), "{{instance}}"),
                        ),
                        unit="percentunit",
                        max=1,
                        width=8,
                    ),
                    Panel(
                        "Preemptions per 1000 requests",
                        (
                            Query(
                                f"1000 * sum(rate(vllm:num_preemptions_total{{{V}}}[{RI}])) "
                                f"/ sum(rate({success}[{RI}]))",
                                "preemptions / 1000 requests",
                            ),
                        ),
                        width=8,
                        description="Preemptions divided by finished requests (not per "
                        "1000 seconds). Above a few per 1000 the KV cache is too small for the "
                        "concurrency: lower --max-num-seqs or raise --gpu-memory-utilization.",
                    ),
                    Panel(
                        "Prefix cache hit rate",
                        (
                            Query(
                                f"(sum(rate(vllm:prefix_cache_hits_total{{{V}}}[{RI}])) "
                                f"/ sum(rate(vllm:prefix_cache_queries_total{{{V}}}[{RI}]))) or "
                                f"(sum(rate(vllm:gpu_prefix_cache_hits_total{{{V}}}[{RI}])) "
                                f"/ sum(rate(vllm:gpu_prefix_cache_queries_total{{{V}}}[{RI}])))",
                                "hit rate (tokens)",
                            ),
                        ),
                        unit="percentunit",
                        max=1,
                    ),
                ),
            ),
            Row(
                "Refused and failed requests",
                (
                    Panel(
                        "Request error rate",
                        (
                            Query(signal_query(HTTP_5XX_RATIO), "{{instance}} HTTP 5xx"),
                            Query(signal_query(HTTP_4XX_RATIO), "{{instance}} HTTP 4xx"),
                            Query(signal_query(ABORTED_RATIO), "{{instance}} aborted"),
                            Query(signal_query(ERRORED_RATIO), "{{instance}} errored"),
                        ),
                        unit="percentunit",
                        max=1,
                        width=8,
                        description="HTTP 5xx and 4xx shares of HTTP requests (503 refusals "
                        "included; no line for a server without http_requests_total: unknown, "
                        "not zero) and aborted/errored shares of finished requests.",
                    ),
                    Panel(
                        "Admission rejections per 1000 requests",
                        (
                            Query(signal_query(REJECTIONS_PER_1000_BY_REASON),
                                  "{{instance}} {{reason}}"),
                        ),
                        width=8,
                        description="Requests refused with HTTP 503 by admission control "
                        "(--max-num-queued-reqs, --max-num-queued-tokens) per 1000 arriving "
                        "requests (refused + finished), by reason.",
                    ),
                    Panel(
                        "Waiting by reason",
                        (Query(signal_query(WAITING_BY_REASON), "{{instance}} {{reason}}"),),
                        width=8,
                        description="capacity: no batch slot or KV blocks; deferred: LoRA "
                        "budget, KV transfer, blocked.",
                    ),
                ),
            ),
        ),
    )
