"""The vLLM speculative decoding dashboard: acceptance rate and length, acceptance by draft
position, draft and accepted tokens per second."""

from __future__ import annotations

from tuner.dashboards.model import (
    RI,
    SPEC_DECODE,
    VLLM_VARS,
    Dashboard,
    Panel,
    Query,
    Row,
    V,
)


def spec_decode() -> Dashboard:
    drafts = f"sum(rate(vllm:spec_decode_num_drafts_total{{{V}}}[{RI}]))"
    draft_tokens = f"sum(rate(vllm:spec_decode_num_draft_tokens_total{{{V}}}[{RI}]))"
    accepted = f"sum(rate(vllm:spec_decode_num_accepted_tokens_total{{{V}}}[{RI}]))"
    return Dashboard(
        uid="tuner-vllm-spec-decode",
        title="vLLM speculative decoding",
        filename="vllm-speculative-decoding.json",
        variables=VLLM_VARS,
        rows=(
            Row(
                "Acceptance",
                (
                    Panel(
                        "Acceptance rate",
                        (Query(f"{accepted} / {draft_tokens}", "accepted / drafted"),),
                        unit="percentunit",
                        max=1,
                        requires=SPEC_DECODE,
                        description="Accepted draft tokens / drafted tokens.",
                    ),
                    Panel(
                        "Mean acceptance length",
                        (
                            Query(f"1 + {accepted} / {drafts}", "tokens per step"),
                            Query("vector(1.5)", "break-even (about 1.5)"),
                        ),
                        requires=SPEC_DECODE,
                        min=None,
                        description="1 + accepted / drafts, bonus "
                        "token included (at most num_speculative_tokens + 1). Below about 1.5 the "
                        "draft costs more than it saves.",
                    ),
                    Panel(
                        "Acceptance by draft position",
                        (
                            Query(
                                "sum by (position) (rate("
                                "vllm:spec_decode_num_accepted_tokens_per_pos_"
                                f"total{{{V}}}[{RI}])) / on() group_left {drafts}",
                                "position {{position}}",
                            ),
                        ),
                        unit="percentunit",
                        max=1,
                        requires=SPEC_DECODE,
                        description="Share of drafts whose token at this position was accepted.",
                    ),
                    Panel(
                        "Draft and accepted tokens per second",
                        (
                            Query(drafts, "drafts/s"),
                            Query(draft_tokens, "draft tokens/s"),
                            Query(accepted, "accepted tokens/s"),
                            Query(
                                f"sum(rate(vllm:generation_tokens_total{{{V}}}[{RI}]))",
                                "generation tok/s",
                            ),
                        ),
                        requires=SPEC_DECODE,
                    ),
                ),
            ),
        ),
    )
