"""The GPU dashboard: DCGM utilization, activity, memory, power, temperature and XID errors, and
DCGM joined to vLLM output (tokens per utilization percent, energy per token)."""

from __future__ import annotations

from tuner.dashboards.model import (
    RI,
    VLLM_VARS,
    D,
    Dashboard,
    Panel,
    Query,
    Row,
    V,
    custom_variable,
    query_variable,
)


def _join(expr: str) -> str:
    """Copy the label named by ``$join_label`` into ``join``: a variable cannot name a label
    in ``by``/``on``, but it can be label_replace's source label."""
    return f'label_replace({expr}, "join", "$1", "$join_label", "(.*)")'


def gpu() -> Dashboard:
    def dcgm(metric: str, agg: str = "avg") -> str:
        return f"{agg} by (instance, gpu) ({metric}{{{D}}})"

    gen = f"rate(vllm:generation_tokens_total{{{V}}}[{RI}])"
    util = f"DCGM_FI_DEV_GPU_UTIL{{{D}}}"
    power = f"DCGM_FI_DEV_POWER_USAGE{{{D}}}"
    return Dashboard(
        uid="tuner-gpu",
        title="GPU (DCGM) and vLLM",
        filename="gpu.json",
        variables=(
            *VLLM_VARS,
            query_variable(
                "gpu_instance", "DCGM exporter", "label_values(DCGM_FI_DEV_GPU_UTIL, instance)"
            ),
            query_variable(
                "gpu", "GPU", 'label_values(DCGM_FI_DEV_GPU_UTIL{instance=~"$gpu_instance"}, gpu)'
            ),
            custom_variable(
                "join_label",
                "Join DCGM to vLLM by",
                ("pod", "instance", "hostname"),
                "Label both DCGM and vLLM series share: pod on Kubernetes (dcgm-exporter "
                "with pod attribution); instance or hostname when targets are relabelled "
                "to a common value.",
            ),
        ),
        rows=(
            Row(
                "Device",
                (
                    Panel(
                        "GPU utilization",
                        (Query(dcgm("DCGM_FI_DEV_GPU_UTIL"), "{{instance}} gpu {{gpu}}"),),
                        unit="percent",
                        max=100,
                        width=8,
                    ),
                    Panel(
                        "SM (graphics engine) and tensor activity",
                        (
                            Query(
                                dcgm("DCGM_FI_PROF_GR_ENGINE_ACTIVE"),
                                "engine {{instance}} gpu {{gpu}}",
                            ),
                            Query(
                                dcgm("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"),
                                "tensor {{instance}} gpu {{gpu}}",
                            ),
                            Query(
                                dcgm("DCGM_FI_PROF_DRAM_ACTIVE"), "dram {{instance}} gpu {{gpu}}"
                            ),
                        ),
                        unit="percentunit",
                        max=1,
                        width=8,
                    ),
                    Panel(
                        "Framebuffer used",
                        (Query(dcgm("DCGM_FI_DEV_FB_USED", "max"), "{{instance}} gpu {{gpu}}"),),
                        unit="decmbytes",
                        width=8,
                        description="MiB of device memory in use. vLLM "
                        "pre-allocates most of it for the KV cache, so high is normal.",
                    ),
                    Panel(
                        "Power",
                        (Query(dcgm("DCGM_FI_DEV_POWER_USAGE"), "{{instance}} gpu {{gpu}}"),),
                        unit="watt",
                        width=8,
                    ),
                    Panel(
                        "Temperature",
                        (Query(dcgm("DCGM_FI_DEV_GPU_TEMP", "max"), "{{instance}} gpu {{gpu}}"),),
                        unit="celsius",
                        width=8,
                    ),
                    Panel(
                        "Last XID error",
                        (Query(dcgm("DCGM_FI_DEV_XID_ERRORS", "max"), "{{instance}} gpu {{gpu}}"),),
                        width=8,
                        description="Last XID error code per GPU (0 = none). 48, 63, 64, "
                        "74, 79, 94, 95 need attention; 79 means the GPU fell off the bus.",
                    ),
                ),
            ),
            Row(
                "DCGM joined to vLLM",
                (
                    Panel(
                        "Output tokens/s per GPU-utilization percent",
                        (
                            Query(
                                f"sum by (join) ({_join(gen)}) / on(join) "
                                f"clamp_min(sum by (join) ({_join(util)}), 1)",
                                "{{join}}",
                            ),
                        ),
                        description="vLLM output tokens per second divided by summed GPU "
                        "utilization (%), joined on the label chosen in $join_label.",
                    ),
                    Panel(
                        "Energy per output token",
                        (
                            Query(
                                f"sum by (join) ({_join(power)}) / on(join) "
                                f"clamp_min(sum by (join) ({_join(gen)}), 0.001)",
                                "{{join}}",
                            ),
                        ),
                        unit="joule",
                        description="GPU power (W) divided by output tokens per second, "
                        "joined on the label chosen in $join_label.",
                    ),
                ),
            ),
        ),
    )
