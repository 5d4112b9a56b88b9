"""The latency part of ``report.md``: client-side figures beside the canary's own histograms.

Every figure is labelled with its source (``tuner.tune.FigureSource``): the load client
measures each request from sending it to its last chunk (what a user of the server sees);
the server's histograms (``tuner.tune.signals.TRIAL_LATENCY_SIGNALS``) start when the engine
receives the request. ``explain_latency_gap`` says why the two differ when they differ by
much (pure).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tuner.tune import SLO_CHECKS

#: Client/server ratio above which the report explains the gap.
GAP_RATIO = 1.5
#: ... and the absolute difference (s) below which a ratio is not worth explaining.
GAP_SECONDS = 0.005

#: (label, measurement field, source) rows of the latency table, client and server paired.
LATENCY_ROWS: tuple[tuple[str, str, str], ...] = (
    ("TTFT p50", "ttft_p50", "client"),
    ("TTFT p50", "server_ttft_p50", "server: vllm:time_to_first_token_seconds"),
    ("TTFT p99", "ttft_p99", "client"),
    ("TTFT p99", "server_ttft_p99", "server: vllm:time_to_first_token_seconds"),
    ("queue time p50", "server_queue_p50", "server: vllm:request_queue_time_seconds"),
    ("queue time p99", "server_queue_p99", "server: vllm:request_queue_time_seconds"),
    ("ITL p50 (per chunk)", "itl_p50", "client: gap / tokens in the chunk"),
    ("ITL p99 (per chunk)", "itl_p99", "client: gap / tokens in the chunk"),
    ("TPOT p50", "tpot_p50", "client: (e2e - TTFT) / (tokens - 1)"),
    ("TPOT p99", "tpot_p99", "client: (e2e - TTFT) / (tokens - 1)"),
    ("ITL p50", "server_itl_p50", "server: vllm:inter_token_latency_seconds"),
    ("ITL p99", "server_itl_p99", "server: vllm:inter_token_latency_seconds"),
    ("ITL mean", "server_itl_mean", "server: histogram sum / count"),
    ("longest stall p99", "max_stall_p99", "client: largest gap between chunks"),
)


def _ms(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v * 1000:,.1f} ms" if v < 1 else f"{v:,.2f} s"


def mean_figure(runs: Sequence[Any], name: str) -> float | None:
    """Mean of a measurement field over a candidate's runs (None when no run has it)."""
    vals = [getattr(t.measurement, name, math.nan) for t in runs if t.measurement is not None]
    vals = [float(v) for v in vals if isinstance(v, int | float) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def explain_latency_gap(what: str, client: float | None, server: float | None,
                        tokens_per_chunk: float | None = None) -> str | None:
    """A sentence on why the client's ``what`` is far from the server's, or None (pure)."""
    if client is None or server is None or not (math.isfinite(client) and math.isfinite(server)):
        return None
    if server <= 0 or abs(client - server) < GAP_SECONDS:
        return None
    ratio = client / server
    if 1 / GAP_RATIO <= ratio <= GAP_RATIO:
        return None
    if ratio > 1:
        why = ("the client's figure also holds HTTP, tokenization and detokenization in the "
               "API server and the client's own event loop; when the load client shares CPU "
               "cores with the canary, contention lands here (pin them apart with `cpus:` in "
               "tune.yaml)")
        if what.startswith("ITL") and tokens_per_chunk and tokens_per_chunk > 1.2:
            why += (f"; tokens reached the client {tokens_per_chunk:.1f} per chunk, so the "
                    "gaps the client sees are the API server's delivery, not decode steps")
        return (f"Client {what} is {ratio:.1f}x the server's ({_ms(client)} against "
                f"{_ms(server)}): {why}.")
    why = ("the server's histogram quantiles interpolate inside coarse buckets (vLLM's ITL "
           "buckets start at 10 ms), and the server observes every engine step while the "
           "client sees the chunks it was sent")
    return (f"Client {what} is {1 / ratio:.1f}x below the server's ({_ms(client)} against "
            f"{_ms(server)}): {why}; compare the server's mean, which is exact.")


def render_latency_section(baseline: Any, best: Any, slo: Any) -> list[str]:
    """Markdown lines: the SLO check with sources, then client against server latency."""
    lines = ["## Latency: client and server", ""]
    checks = [c for c in SLO_CHECKS if getattr(slo, c.slo, None) is not None]
    if checks:
        lines.append("The SLO is checked on these figures:")
        lines.append("")
        for c in checks:
            beside = f" (the server's `{c.counterpart}` is shown beside it)" if c.counterpart \
                else ""
            lines.append(f"- `{c.slo}` ≤ {getattr(slo, c.slo):g}: {c.label} — source "
                         f"**{c.source}**{beside}")
        lines.append("")
    cands = [("baseline", baseline), ("best candidate", best)]
    cands = [(n, c) for n, c in cands if c is not None]
    if not cands:
        return [*lines, "No candidate was measured.", ""]
    lines.append("| figure | source | " + " | ".join(n for n, _ in cands) + " |")
    lines.append("| --- | --- |" + " --- |" * len(cands))
    for label, field, source in LATENCY_ROWS:
        cells = " | ".join(_ms(mean_figure(c.runs, field)) for _, c in cands)
        lines.append(f"| {label} | {source} | {cells} |")
    tpc = " | ".join(f"{v:.2f}" if (v := mean_figure(c.runs, "tokens_per_chunk")) else "-"
                     for _, c in cands)
    lines.append(f"| tokens per chunk | client | {tpc} |")
    lines.append("")
    notes = []
    for name, c in cands:
        tpc_v = mean_figure(c.runs, "tokens_per_chunk")
        for what, client, server in (
            ("TTFT p99", "ttft_p99", "server_ttft_p99"),
            ("ITL p50", "itl_p50", "server_itl_mean"),
        ):
            text = explain_latency_gap(what, mean_figure(c.runs, client),
                                       mean_figure(c.runs, server), tpc_v)
            if text:
                notes.append(f"- {name}: {text}")
    lines += [*notes, ""] if notes else []
    return lines
