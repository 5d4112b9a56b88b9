"""Recommendations: one small function per flag change, over a view and its findings.

Each function looks at a ``WindowView`` and the findings made of it and returns a
``Recommendation`` (a flag change with its evidence), a ``Skip`` (the change could not be
judged for lack of data, and why), or None. ``RECOMMENDATIONS`` is the ordered table of
``(Rule, function)`` ``analyze`` runs; the rules propose independently, and
``tuner.suggest.resolver`` settles the proposals that contradict each other. ``no_change`` is
the recommendation when nothing is left.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from tuner.suggest.records import (
    Alternative,
    Confidence,
    CurrentSource,
    Direction,
    Finding,
    FindingId,
    Severity,
)
from tuner.suggest.records import Recommendation as Rec
from tuner.suggest.thresholds import (
    FB_FREE_CRITICAL,
    FB_FREE_FOR_UP,
    MODEL_LEN_SHARE,
    SPEC_LARGE_BATCH,
    SPEC_LOW_RATE,
    SPEC_MIN_LENGTH,
    SPEC_OFF_RATE,
)
from tuner.suggest.view import WindowView, as_number

F = FindingId
HIGH, MEDIUM, LOW = Confidence.HIGH, Confidence.MEDIUM, Confidence.LOW
UP, DOWN = Direction.UP, Direction.DOWN
Findings = Mapping[FindingId, Finding]


class Rule(StrEnum):
    """The recommendation rules; the resolver refers to proposals by rule."""

    QUEUED_REQS_UP = "queued_reqs_up"
    QUEUED_TOKENS_UP = "queued_tokens_up"
    REPLICAS = "replicas"
    QUEUED_TOKENS_CAP = "queued_tokens_cap"
    SEQS_DOWN = "seqs_down"
    SEQS_UP = "seqs_up"
    GMU_DOWN = "gmu_down"
    GMU_UP = "gmu_up"
    MBT_DOWN = "mbt_down"
    MBT_UP = "mbt_up"
    MML_DOWN = "mml_down"
    SPEC = "spec"
    SPEC_SCHEDULE = "spec_schedule"


@dataclass(frozen=True)
class Skip:
    """A rule that applied but could not be judged, and why (the report's ``skipped``)."""

    reason: str


RecommendRule = Callable[[WindowView, Findings], Rec | Skip | None]


def round8(x: float) -> int:
    """A batch size: a multiple of 8 from 16 up, at least 1."""
    return int(max(1, (int(x) // 8) * 8 if x >= 16 else int(x)))


def _present(findings: Findings, *ids: FindingId) -> tuple[FindingId, ...]:
    """The evidence among ``ids`` that was found, in the order given."""
    return tuple(f for f in ids if f in findings)


def max_num_seqs_down(v: WindowView, findings: Findings) -> Rec | None:
    """Preemptions (or TTFT over the SLO with a full cache): fewer concurrent sequences."""
    m = v.cache_exhausted
    if not v.significant(m):
        return None
    cur = v.current("max-num-seqs")
    busy = m & (v.running >= 1)
    run_med = float(np.nanmedian(v.running[busy])) if busy.any() else math.nan
    target = 0.9 * run_med if math.isfinite(run_med) else math.nan
    if cur.value is not None:
        target = min(0.75 * float(cur.value), target) if math.isfinite(target) \
            else 0.75 * float(cur.value)
    preempted = v.significant(v.preempting)
    strong = preempted and v.duration(v.preempting) >= 1800
    running_text = (f"; about {run_med:.0f} sequences were running then, more than the "
                    "cache holds" if math.isfinite(run_med) else "")
    suggested = round8(target) if math.isfinite(target) else None
    return Rec(
        "--max-num-seqs", cur.value, cur.source, suggested, DOWN,
        "requests were preempted (the KV cache ran out of blocks) or TTFT broke the SLO "
        f"with a full KV cache for {v.fraction_text(m)}{running_text}",
        "fewer preemptions and a shorter TTFT tail while busy; peak throughput may drop "
        "slightly. Raising KV capacity (--gpu-memory-utilization) is the alternative",
        HIGH if strong else (MEDIUM if preempted else LOW),
        _present(findings, F.PREEMPTIONS, F.KV_SATURATED_WITH_QUEUE, F.TTFT_SLO_BREACH),
        active_seqs_alternative(v, suggested))


def active_seqs_alternative(v: WindowView, suggested: int | None) -> tuple[Alternative, ...]:
    """``--max-num-active-seqs`` as the no-re-capture way to bring concurrency down, when
    the server has it (vLLM 0.29+, detected from its metrics; else said as an assumption)."""
    cur = v.current("max-num-active-seqs").value
    if v.has_admission_metrics:
        basis = ("the server exports vLLM 0.29+ metrics (num_requests_waiting_by_reason / "
                 "admission_rejections_total), so it has --max-num-active-seqs")
    else:
        basis = ("assumes vLLM 0.29 or later: this server's metrics do not show its version; "
                 "older releases refuse the flag")
    return (Alternative(
        "--max-num-active-seqs", cur, suggested,
        "caps running requests without changing --max-num-seqs, which sizes buffers and "
        f"CUDA graphs: no graph re-capture, a restart with the same memory plan; {basis}"),)


def max_num_seqs_up(v: WindowView, findings: Findings) -> Rec | None:
    """Requests queued while the KV cache and GPUs had headroom: more sequences."""
    m = v.queue_with_headroom
    if not v.significant(m):
        return None
    cur = v.current("max-num-seqs")
    batch_full = (cur.value is not None and np.isfinite(v.running[m]).any()
                  and float(np.nanmedian(v.running[m])) >= 0.9 * float(cur.value))
    return Rec(
        "--max-num-seqs", cur.value, cur.source,
        round8(float(cur.value) * 1.5) if cur.value is not None else None, UP,
        f"requests queued for {v.fraction_text(m)} while the KV cache"
        + (" and GPUs" if v.has_gpu else "") + " had headroom"
        + (" and the running batch was at the limit" if batch_full else ""),
        "shorter queue time and higher throughput at the same latency; watch KV usage "
        "and preemptions after the change",
        HIGH if batch_full else MEDIUM, (F.QUEUE_WITH_HEADROOM,))


def _gmu(v: WindowView) -> tuple[object, CurrentSource]:
    cur = v.current("gpu-memory-utilization", "gpu_memory_utilization")
    return cur.value, cur.source


def gpu_memory_utilization_down(v: WindowView, findings: Findings) -> Rec | None:
    """Restarts without a flag change (possible OOM) or almost no free device memory."""
    unexplained = len(v.restarts)
    oom_risk = math.isfinite(v.min_free_memory) and v.min_free_memory < FB_FREE_CRITICAL
    if not (unexplained or oom_risk):
        return None
    why = []
    if unexplained:
        why.append(f"{unexplained} restart(s) without a flag change (possible OOM)")
    if oom_risk:
        why.append(f"free device memory fell to {v.min_free_memory:.1%}")
    cur, src = _gmu(v)
    return Rec(
        "--gpu-memory-utilization", cur, src,
        round(cur - 0.02, 2) if isinstance(cur, float) else None, DOWN,
        "; ".join(why), "fewer out-of-memory restarts; a slightly smaller KV cache",
        HIGH if unexplained and oom_risk else MEDIUM,
        _present(findings, F.RESTARTS, F.GPU_MEMORY_FREE))


def gpu_memory_utilization_up(v: WindowView, findings: Findings) -> Rec | Skip | None:
    """Cache-bound while device memory stayed free: a larger KV cache."""
    if not v.cache_bound:
        return None
    free = v.min_free_memory
    if not math.isfinite(free):
        return Skip("--gpu-memory-utilization up: needs DCGM free-memory metrics "
                    "(DCGM_FI_DEV_FB_FREE/FB_USED), which are missing")
    if free < FB_FREE_FOR_UP:
        return None
    step_up = 0.02 if free >= 2 * FB_FREE_FOR_UP else 0.01
    cur, src = _gmu(v)
    base = cur if isinstance(cur, float) and cur else 0.9
    return Rec(
        "--gpu-memory-utilization", cur, src,
        round(min(0.98, cur + step_up), 2) if isinstance(cur, float) else None, UP,
        f"cache-bound (KV full with a queue or preemptions) while at least {free:.1%} of "
        "device memory stayed free",
        f"about {step_up / max(base, 0.01):.0%} more KV blocks, fewer preemptions", MEDIUM,
        _present(findings, F.KV_SATURATED_WITH_QUEUE, F.GPU_MEMORY_FREE))


def max_num_batched_tokens_down(v: WindowView, findings: Findings) -> Rec | None:
    """ITL over the SLO during long prefills: smaller prefill chunks."""
    if not (v.significant(v.itl_breach) and v.long_prefill):
        return None
    cur = v.current("max-num-batched-tokens")
    seqs = v.current("max-num-seqs").value
    floor = int(seqs) if seqs is not None else 256
    return Rec(
        "--max-num-batched-tokens", cur.value, cur.source,
        max(floor, int(float(cur.value) // 2)) if cur.value is not None else None, DOWN,
        f"ITL p99 broke the SLO for {v.fraction_text(v.itl_breach)} during long prefills; a "
        "smaller chunk interleaves prefill with decode",
        "lower ITL p99; TTFT of long prompts rises somewhat", MEDIUM,
        _present(findings, F.ITL_SLO_BREACH, F.ITL_BREACH_DURING_PREFILL))


def max_num_batched_tokens_up(v: WindowView, findings: Findings) -> Rec | None:
    """TTFT over the SLO without a full KV cache while ITL had headroom: larger chunks."""
    m = v.ttft_breach & ~v.kv_saturated
    itl = v.itl
    with np.errstate(invalid="ignore"):
        itl_head = np.isfinite(itl) & (itl < 0.5 * v.slo.itl_p99_seconds)
    if not (v.significant(m)
            and float(itl_head.sum()) >= 0.9 * max(float(np.isfinite(itl).sum()), 1.0)):
        return None
    cur = v.current("max-num-batched-tokens")
    return Rec(
        "--max-num-batched-tokens", cur.value, cur.source,
        int(float(cur.value) * 2) if cur.value is not None else None, UP,
        f"TTFT p99 broke the SLO for {v.fraction_text(m)} without a full KV cache, while ITL "
        "p99 stayed under half its SLO",
        "shorter TTFT (larger prefill chunks); ITL rises but has headroom", MEDIUM,
        (F.TTFT_SLO_BREACH,))


def max_model_len_down(v: WindowView, findings: Findings) -> Rec | Skip | None:
    """Cache-bound while requests never came near max-model-len: reserve less per sequence."""
    longest = v.longest_request
    if not v.cache_bound or longest is None:
        return None
    cur = v.current("max-model-len")
    if cur.value is None:
        return Skip("--max-model-len down: the current value is unknown (add max-model-len "
                    "to the config's launch section)")
    if not longest < MODEL_LEN_SHARE * float(cur.value):
        return None
    return Rec(
        "--max-model-len", cur.value, cur.source,
        int(2 ** math.ceil(math.log2(max(longest * 1.25, 256)))), DOWN,
        f"KV is the bottleneck and requests stayed under {longest:,.0f} tokens, "
        f"below {MODEL_LEN_SHARE:.0%} of max-model-len",
        "less memory reserved for the longest possible sequence, more room for "
        "concurrent ones; requests longer than the new limit are rejected",
        LOW, (F.MODEL_LEN_UNUSED, F.KV_SATURATED_WITH_QUEUE))


def speculative_config(v: WindowView, findings: Findings) -> Rec | None:
    """Low acceptance: speculation off, or fewer speculative tokens."""
    spec = findings.get(F.SPEC_DECODE)
    if spec is None:
        return None
    length, rate = v.spec_length, v.spec_rate
    k = v.speculative_tokens
    if spec.severity is Severity.WARNING:
        return Rec(
            "--speculative-config", k.value, k.source, None, Direction.OFF,
            f"mean acceptance length {length:.2f} is below {SPEC_MIN_LENGTH}: drafting "
            "costs more than it saves" if math.isfinite(length)
            else f"acceptance rate {rate:.1%} is very low",
            "higher output tok/s and lower ITL without the wasted draft work",
            HIGH if v.totals.get("spec_drafts", 0) >= 1000 else MEDIUM, (F.SPEC_DECODE,))
    running = v.running[v.covered]
    big_batch = bool(np.isfinite(running).any()) and float(
        np.nanmedian(running)) >= SPEC_LARGE_BATCH
    several = bool(k.value and k.value > 1)
    if not ((math.isfinite(rate) and rate < SPEC_LOW_RATE and several)
            or (big_batch and several)):
        return None
    target = max(1, min(k.value - 1, math.ceil(length - 1.0) if math.isfinite(length)
                        else k.value - 1))
    return Rec(
        "--speculative-config num_speculative_tokens", k.value, k.source, target, DOWN,
        (f"acceptance rate {rate:.0%}: later draft positions are rarely accepted"
         if rate < SPEC_LOW_RATE else "large running batches: speculation competes with "
         "batching"),
        "less wasted draft work per step", MEDIUM, (F.SPEC_DECODE,))


def _refused(v: WindowView, reason: str) -> float:
    return v.rejections_by_reason.get(reason, 0.0)


def _headroom(v: WindowView) -> tuple[bool | None, str]:
    """Whether a refusing server had KV and compute to spare, and the figures that say so."""
    kv = v.kv_headroom_while_rejecting
    compute, how = v.compute_headroom_while_rejecting
    peak = float(np.nanmax(v.kv[v.rejecting])) if np.isfinite(v.kv[v.rejecting]).any() \
        else math.nan
    kv_text = (f"KV cache at most {peak:.0%}" if math.isfinite(peak)
               else "KV usage unknown while refusing")
    if kv is None or compute is None:
        return None, f"{kv_text}; {how}"
    return kv and compute, f"{kv_text}; {how}"


def _refused_with_room(v: WindowView, reason: str, flag: str) -> tuple[float, str] | Skip | None:
    """Requests the ``reason`` cap refused while KV and compute had headroom, with the figures.

    ``None`` when the cap refused nothing or the server had no room; a ``Skip`` naming ``flag``
    when the headroom could not be judged.
    """
    n = _refused(v, reason)
    if n < 0.5:
        return None
    room, figures = _headroom(v)
    if room is None:
        return Skip(f"{flag} up: {n:,.0f} requests were refused by it, but "
                    f"headroom could not be judged ({figures})")
    if not room:
        return None
    return n, figures


def max_num_queued_reqs_up(v: WindowView, findings: Findings) -> Rec | Skip | None:
    """Refused by the requests cap while KV and compute had headroom: a longer queue."""
    refused = _refused_with_room(v, "max_num_queued_reqs", "--max-num-queued-reqs")
    if not isinstance(refused, tuple):
        return refused
    n, figures = refused
    cur = v.current("max-num-queued-reqs")
    seqs = as_number(v.current("max-num-seqs").value)
    now = as_number(cur.value)
    options = [x for x in (2 * now if now else None, 2 * seqs if seqs else None) if x]
    return Rec(
        "--max-num-queued-reqs", cur.value, cur.source, int(max(options)) if options else None,
        UP, f"{n:,.0f} requests were refused with 503 by the requests cap while the server "
        f"had room ({figures}): the cap, not capacity, turned them away"
        + ("; at least 2 x max-num-seqs lets a full batch run with a queue behind it"
           if seqs else ""),
        "fewer 503s at the same latency while headroom lasts; watch TTFT and KV usage",
        HIGH if v.significant(v.rejecting) else MEDIUM,
        _present(findings, F.ADMISSION_REJECTIONS, F.REQUEST_ERRORS))


def max_num_queued_tokens_up(v: WindowView, findings: Findings) -> Rec | Skip | None:
    """Refused by the queued-tokens cap while KV and compute had headroom: a larger cap."""
    refused = _refused_with_room(v, "max_num_queued_tokens", "--max-num-queued-tokens")
    if not isinstance(refused, tuple):
        return refused
    n, figures = refused
    cur = v.current("max-num-queued-tokens")
    now = as_number(cur.value)
    sized = v.slo.ttft_p99_seconds * v.prefill_capacity
    options = [x for x in (2 * now if now else None, sized if math.isfinite(sized) else None)
               if x]
    return Rec(
        "--max-num-queued-tokens", cur.value, cur.source,
        int(max(options)) if options else None, UP,
        f"{n:,.0f} requests were refused with 503 by the queued-tokens cap while the server "
        f"had room ({figures})",
        "fewer 503s; TTFT grows with the longer queue, so keep it under the TTFT target x "
        "prefill tokens/s", MEDIUM, _present(findings, F.ADMISSION_REJECTIONS))


def add_replicas(v: WindowView, findings: Findings) -> Rec | None:
    """Refused while the server was at capacity: more servers, not a longer queue."""
    n = v.rejections
    if not (math.isfinite(n) and n >= 0.5):
        return None
    room, figures = _headroom(v)
    if room is not False:
        return None
    return Rec(
        None, None, CurrentSource.UNKNOWN, "add replicas", UP,
        f"{n:,.0f} requests were refused with 503 while the server was at capacity "
        f"({figures}): raising --max-num-queued-reqs/--max-num-queued-tokens would only queue "
        "them past the TTFT target",
        "the refused load is served by the new replicas; each server keeps its latency",
        MEDIUM, _present(findings, F.ADMISSION_REJECTIONS))


def max_num_queued_tokens_cap(v: WindowView, findings: Findings) -> Rec | Skip | None:
    """TTFT over the SLO behind a deep, uncapped queue: shed overload with fast 503s."""
    if F.TTFT_QUEUE_UNCAPPED not in findings:
        return None
    m = v.ttft_breach & v.deep_queue
    if not v.significant(m):
        return None
    rate = v.prefill_capacity
    target = v.slo.ttft_p99_seconds
    if not math.isfinite(rate):
        return Skip("--max-num-queued-tokens: TTFT broke the SLO behind a deep queue, but the "
                    "prefill rate (vllm:prompt_tokens_total) is unknown")
    cur = v.current("max-num-queued-tokens")
    assumed = "" if cur.source is CurrentSource.LAUNCH else (
        " (no cap in the launch flags and none refusing: assumed uncapped)")
    return Rec(
        "--max-num-queued-tokens", cur.value, cur.source, int(round(target * rate, -2) or 100),
        DOWN, f"TTFT p99 broke the {target:g}s SLO for {v.fraction_text(m)} while requests "
        f"queued{assumed}; cap = TTFT target {target:g}s x measured prefill {rate:,.0f} "
        "prompt tok/s (median while requests waited)",
        "overload is refused at once with 503 (clients retry elsewhere) instead of queuing "
        "past the SLO; served requests keep TTFT near the target",
        MEDIUM, _present(findings, F.TTFT_QUEUE_UNCAPPED, F.TTFT_SLO_BREACH))


def _spec_k(rate: float, best: float, k: int) -> int:
    """Speculative tokens at a batch size from its acceptance rate relative to the best."""
    if rate < SPEC_OFF_RATE:
        return 0
    return max(1, min(k, round(k * rate / best)))


def speculative_schedule(v: WindowView, findings: Findings) -> Rec | Skip | None:
    """Acceptance depends on the batch size: a ``num_speculative_tokens_per_batch_size``
    schedule of ``[first, last, K]`` ranges (vLLM's dynamic speculative decoding)."""
    if F.SPEC_ACCEPTANCE_BY_BATCH not in findings:
        return None
    k = v.speculative_tokens
    if not k.value:
        return Skip("speculative schedule: acceptance depends on the batch size, but "
                    "num_speculative_tokens is unknown")
    bins = [b for b in v.spec_acceptance_by_batch if v.significant_steps(b[3])]
    best = max(r for _, _, r, _ in bins)
    seqs = as_number(v.current("max-num-seqs").value)
    schedule: list[list[int]] = []
    for i, (first, last, rate, _) in enumerate(bins):
        kk = _spec_k(rate, best, int(k.value))
        lo = 1 if i == 0 else schedule[-1][1] + 1
        if schedule and kk > schedule[-1][2]:  # unmeasured sizes between take the smaller K
            schedule[-1][1] = first - 1
            lo = first
        hi = max(last, int(seqs or last)) if i == len(bins) - 1 else last
        if schedule and schedule[-1][2] == kk:
            schedule[-1][1] = hi
        else:
            schedule.append([lo, hi, kk])
    measured = ", ".join(f"{a}-{b}: {r:.0%}" for a, b, r, _ in bins)
    return Rec(
        "--speculative-config num_speculative_tokens_per_batch_size", k.value, k.source,
        schedule, DOWN,
        f"acceptance by running batch size ({measured}) differs enough that one K does not "
        f"fit all: K scales with acceptance relative to the best ({best:.0%}), 0 below "
        f"{SPEC_OFF_RATE:.0%}; unmeasured sizes take the smaller neighbouring K",
        "draft work where it is accepted, none where it is wasted (mind the upstream note: "
        "switching schedule ranges can change CUDA-graph modes)",
        MEDIUM, (F.SPEC_ACCEPTANCE_BY_BATCH,))


RECOMMENDATIONS: tuple[tuple[Rule, RecommendRule], ...] = (
    (Rule.QUEUED_REQS_UP, max_num_queued_reqs_up),
    (Rule.QUEUED_TOKENS_UP, max_num_queued_tokens_up),
    (Rule.REPLICAS, add_replicas),
    (Rule.QUEUED_TOKENS_CAP, max_num_queued_tokens_cap),
    (Rule.SEQS_DOWN, max_num_seqs_down),
    (Rule.SEQS_UP, max_num_seqs_up),
    (Rule.GMU_DOWN, gpu_memory_utilization_down),
    (Rule.GMU_UP, gpu_memory_utilization_up),
    (Rule.MBT_DOWN, max_num_batched_tokens_down),
    (Rule.MBT_UP, max_num_batched_tokens_up),
    (Rule.MML_DOWN, max_model_len_down),
    (Rule.SPEC, speculative_config),
    (Rule.SPEC_SCHEDULE, speculative_schedule),
)
"""Every recommendation rule, in the order the report lists recommendations."""


def propose(v: WindowView, findings: Findings) -> tuple[list[tuple[Rule, Rec]], list[str]]:
    """Run the ``RECOMMENDATIONS`` table: the proposals by rule, and the skipped reasons."""
    proposals: list[tuple[Rule, Rec]] = []
    skipped: list[str] = []
    for rule, fn in RECOMMENDATIONS:
        out = fn(v, findings)
        if isinstance(out, Skip):
            skipped.append(out.reason)
        elif out is not None:
            proposals.append((rule, out))
    return proposals, skipped


def no_change(v: WindowView, findings: Findings) -> Rec:
    """"No change", with what was healthy, when no recommendation is left; never while
    requests were refused or failed (then: investigate, with the evidence)."""
    failing = _present(findings, F.ADMISSION_REJECTIONS, F.REQUEST_ERRORS)
    if failing:
        what = "; ".join(findings[f].summary for f in failing)
        return Rec(
            None, None, CurrentSource.UNKNOWN, None, Direction.INVESTIGATE,
            f"not healthy: {what}. No flag change follows from the metrics; look at the "
            "server log and the clients", "none until the cause is known", LOW, failing)
    healthy = []
    if F.KV_SATURATED_WITH_QUEUE not in findings:
        healthy.append("no full KV cache with a queue")
    if F.PREEMPTIONS not in findings:
        healthy.append("no preemptions")
    if F.TTFT_SLO_BREACH not in findings:
        healthy.append(f"TTFT p99 within {v.slo.ttft_p99_seconds:g}s")
    if F.ITL_SLO_BREACH not in findings:
        healthy.append(f"ITL p99 within {v.slo.itl_p99_seconds * 1000:g}ms")
    return Rec(
        None, None, CurrentSource.UNKNOWN, None, Direction.NONE,
        "no change: " + (", ".join(healthy) if healthy else "no rule matched"),
        "none", HIGH if not v.missing else MEDIUM,
        _present(findings, F.OUTPUT_THROUGHPUT, F.OVER_PROVISIONED, F.GPU_UTILIZATION))
