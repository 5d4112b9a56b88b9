"""The vLLM KV cache and scheduling dashboard: KV and prefix cache, preemptions, queue,
step times and request lengths."""

from __future__ import annotations

from tuner.dashboards.model import (
    RI,
    VLLM_VARS,
    Dashboard,
    Panel,
    PanelKind,
    Query,
    Row,
    V,
    quantiles,
    running_and_waiting,
    signal_query,
)
from tuner.signals import KV_CACHE_USAGE, KV_CAPACITY_TOKENS, WAITING_BY_REASON


def kv_scheduling() -> Dashboard:
    return Dashboard(
        uid="tuner-vllm-kv-scheduling",
        title="vLLM KV cache and scheduling",
        filename="vllm-kv-cache-scheduling.json",
        variables=VLLM_VARS,
        rows=(
            Row(
                "KV cache",
                (
                    Panel(
                        "KV cache usage by instance",
                        (
                            Query(signal_query(KV_CACHE_USAGE), "{{instance}}"),
                        ),
                        unit="percentunit",
                        max=1,
                    ),
                    Panel(
                        "KV cache capacity",
                        (
                            Query(
                                signal_query(KV_CAPACITY_TOKENS),
                                "{{instance}} engine {{engine}}: {{kv_cache_size_tokens}} tokens "
                                "({{num_gpu_blocks}} blocks x {{block_size}})",
                                instant=True,
                            ),
                        ),
                        kind=PanelKind.TABLE,
                        description="The effective KV cache size from vllm:cache_config_info "
                        "(value 1; the sizes are labels): kv_cache_size_tokens per engine on "
                        "recent vLLM, else num_gpu_blocks x block_size (num_gpu_blocks is the "
                        "sum over data-parallel engines). tuner status shows the total.",
                    ),
                    Panel(
                        "Prefix cache: queries and hits (tokens/s)",
                        (
                            Query(
                                f"sum(rate(vllm:prefix_cache_queries_total{{{V}}}[{RI}]))",
                                "queried",
                            ),
                            Query(f"sum(rate(vllm:prefix_cache_hits_total{{{V}}}[{RI}]))", "hit"),
                        ),
                    ),
                    Panel(
                        "Preemptions",
                        (
                            Query(
                                f"sum(rate(vllm:num_preemptions_total{{{V}}}[{RI}]))",
                                "preemptions/s",
                            ),
                            Query(
                                f"1000 * sum(rate(vllm:num_preemptions_total{{{V}}}[{RI}])) "
                                f"/ sum(rate(vllm:request_success_total{{{V}}}[{RI}]))",
                                "per 1000 requests",
                            ),
                        ),
                    ),
                ),
            ),
            Row(
                "Scheduler",
                (
                    Panel(
                        "Running and waiting by instance",
                        running_and_waiting(),
                    ),
                    Panel(
                        "Waiting requests by reason",
                        (
                            Query(signal_query(WAITING_BY_REASON), "{{instance}} {{reason}}"),
                        ),
                        description="Why requests wait: capacity (no KV space / seq slots) or "
                        "deferred (LoRA budget, KV transfer, blocked); the reasons add up to "
                        "vllm:num_requests_waiting.",
                    ),
                    Panel("Queue time", quantiles("vllm:request_queue_time_seconds", V), unit="s"),
                    Panel(
                        "Prefill and decode time p90",
                        (
                            Query(
                                f"histogram_quantile(0.9, sum by (le) (rate("
                                f"vllm:request_prefill_time_seconds_bucket{{{V}}}[{RI}])))",
                                "prefill",
                            ),
                            Query(
                                f"histogram_quantile(0.9, sum by (le) (rate("
                                f"vllm:request_decode_time_seconds_bucket{{{V}}}[{RI}])))",
                                "decode",
                            ),
                        ),
                        unit="s",
                    ),
                    Panel(
                        "Tokens per engine step",
                        quantiles("vllm:iteration_tokens_total", V),
                        description="Batch size in tokens per "
                        "scheduler step; capped by --max-num-batched-tokens.",
                    ),
                    Panel(
                        "Request lengths p50 / p90 (tokens)",
                        (
                            Query(
                                f"histogram_quantile(0.5, sum by (le) (rate("
                                f"vllm:request_prompt_tokens_bucket{{{V}}}[{RI}])))",
                                "prompt p50",
                            ),
                            Query(
                                f"histogram_quantile(0.9, sum by (le) (rate("
                                f"vllm:request_prompt_tokens_bucket{{{V}}}[{RI}])))",
                                "prompt p90",
                            ),
                            Query(
                                f"histogram_quantile(0.5, sum by (le) (rate("
                                f"vllm:request_generation_tokens_bucket{{{V}}}[{RI}])))",
                                "output p50",
                            ),
                            Query(
                                f"histogram_quantile(0.9, sum by (le) (rate("
                                f"vllm:request_generation_tokens_bucket{{{V}}}[{RI}])))",
                                "output p90",
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )
