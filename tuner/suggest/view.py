"""The window view: one server over one configuration segment, as every rule sees it.

A ``WindowView`` is a frozen record of what the finding and recommendation functions read:
the series aligned on the grid (NaN outside the segment and where there is no data), the
whole-window totals, the configured launch flags and the segment's ``vllm:cache_config_info``
labels, the SLO, the step, restarts and the workload fingerprint. Everything derived from
them (which steps were covered, when the KV cache was full, when requests were preempted or
the SLO broke, the least free device memory, the speculative acceptance) is a cached property
computed once, so each rule is a few lines over named conditions and can be tested alone on a
view built by hand (``WindowView(grid=..., step=60.0, series={...})``).

``view_of`` builds the view of a collected ``TargetData`` for one segment. ``check_launch``
refuses launch values that must be numbers and are not, naming the flag.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import numpy as np

from tuner.config import SLO
from tuner.errors import SuggestError
from tuner.signals import dollars_per_mtok, mean_acceptance_length, per_thousand_requests
from tuner.suggest.records import CurrentSource, Ranges
from tuner.suggest.thresholds import (
    GPU_BUSY_UTIL,
    KV_HEADROOM,
    KV_SATURATED,
    PREEMPT_PER_1000,
    QUEUE_DEEP_MIN,
    SIGNIFICANT_SECONDS,
    SIGNIFICANT_SHARE,
    SIGNIFICANT_STEPS,
    SPEC_BATCH_BINS,
)
from tuner.suggest.window import Segment, TargetData, clock

# The flags suggest reads a current value of; each must be a number when it is configured.
NUMERIC_FLAGS = ("max-num-seqs", "max-num-batched-tokens", "max-model-len",
                 "gpu-memory-utilization", "max-num-queued-reqs", "max-num-queued-tokens",
                 "max-num-active-seqs")

# Signals whose absence the report names (series name, what it is).
EXPECTED_SIGNALS = (
    ("kv_cache_usage", "KV cache usage (vllm:kv_cache_usage_perc)"),
    ("waiting", "queue (vllm:num_requests_waiting)"),
    ("preemptions_per_s", "preemptions (vllm:num_preemptions_total)"),
    ("requests_per_s", "finished requests (vllm:request_success_total)"),
    ("ttft_p99", "TTFT histogram (vllm:time_to_first_token_seconds)"),
    ("itl_p99", "ITL histogram (vllm:inter_token_latency_seconds)"),
    ("gpu_utilization", "GPU utilization (DCGM_FI_DEV_GPU_UTIL)"),
    ("gpu_fb_free_mib", "GPU free memory (DCGM_FI_DEV_FB_FREE)"),
)


HTTP_MISSING = ("HTTP status counts (http_requests_total): the error rate is unknown, not "
                "zero")


def launch_value(launch: Mapping[str, Any], flag: str) -> Any:
    """A flag from the configured launch args, whatever its spelling (``--a-b``, ``a_b``)."""
    want = flag.lstrip("-").replace("_", "-")
    for k, v in launch.items():
        if str(k).lstrip("-").replace("_", "-") == want:
            return v
    return None


def as_number(v: Any) -> float | None:
    """``v`` as a finite float, or None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def check_launch(launch: Mapping[str, Any]) -> None:
    """Raise SuggestError naming a launch flag suggest reads whose value is not a number."""
    for flag in NUMERIC_FLAGS:
        v = launch_value(launch, flag)
        if v is not None and as_number(v) is None:
            raise SuggestError(f"launch {flag}: {v!r} is not a number (suggest compares the "
                               "current value of this flag)")


def speculative_tokens(launch: Mapping[str, Any]) -> int | None:
    """``num_speculative_tokens`` of the launch's ``--speculative-config`` (JSON or mapping)."""
    raw = launch_value(launch, "speculative-config")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return None
    if isinstance(raw, Mapping):
        v = as_number(raw.get("num_speculative_tokens"))
        return int(v) if v is not None else None
    return None


@dataclass(frozen=True)
class Current:
    """The current value of a flag and where it was read."""

    value: Any
    source: CurrentSource


def duration_text(seconds: float) -> str:
    """``45s``, ``12m``, ``3h05m``."""
    m = round(seconds / 60.0)
    if m < 60:
        return f"{m}m" if m else f"{int(seconds)}s"
    return f"{m // 60}h{m % 60:02d}m"


def mask_ranges(grid: np.ndarray, mask: np.ndarray) -> Ranges:
    """Contiguous runs of True (gaps of one step bridged), longest first, at most 20."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return ()
    runs = []
    a = b = int(idx[0])
    for i in idx[1:].tolist():
        if i - b <= 2:
            b = i
        else:
            runs.append((a, b))
            a = b = i
    runs.append((a, b))
    runs.sort(key=lambda r: r[1] - r[0], reverse=True)
    return tuple((float(grid[x]), float(grid[y])) for x, y in runs[:20])


def when_text(ranges: Sequence[tuple[float, float]]) -> str:
    """The first three ranges in time order (``14:00–16:00, ...``), seconds if any is short."""
    short = any(b - a < 600 for a, b in ranges[:3])  # minutes alone would read 07:11–07:11

    def fmt(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S") if short else clock(ts)

    parts = [f"{fmt(a)}–{fmt(b)}" for a, b in sorted(ranges[:3])]
    more = f" and {len(ranges) - 3} more" if len(ranges) > 3 else ""
    return ", ".join(parts) + more


def _median(values: np.ndarray) -> float:
    """Median of the finite values; NaN if there are none."""
    return float(np.nanmedian(values)) if np.isfinite(values).any() else math.nan


@dataclass(frozen=True, eq=False)
class WindowView:
    """One server over one segment: aligned series, totals, launch, SLO, step (see module)."""

    grid: np.ndarray
    step: float
    series: Mapping[str, np.ndarray]  # NaN outside the segment and where there is no data
    slo: SLO = field(default_factory=SLO)
    launch: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, str] = field(default_factory=dict)  # cache_config_info labels
    totals: Mapping[str, float] = field(default_factory=dict)
    restarts: tuple[float, ...] = ()  # restarts without a configuration change
    workload: Mapping[str, Any] = field(default_factory=dict)
    dollars_per_hour: float = 0.0
    #: Admission rejections over the window by ``reason`` (every reason vLLM reported).
    rejections_by_reason: Mapping[str, float] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        arr = self.series.get(name)
        return arr if arr is not None else np.full(len(self.grid), np.nan)

    def total(self, name: str) -> float:
        """A whole-window total, NaN when the server does not export it (unknown, not 0)."""
        v = self.totals.get(name)
        return float(v) if v is not None and math.isfinite(v) else math.nan

    # -- the series ---------------------------------------------------------------------

    @cached_property
    def kv(self) -> np.ndarray:
        return self.get("kv_cache_usage")

    @cached_property
    def waiting(self) -> np.ndarray:
        return self.get("waiting")

    @cached_property
    def running(self) -> np.ndarray:
        return self.get("running")

    @cached_property
    def preemptions_per_s(self) -> np.ndarray:
        return self.get("preemptions_per_s")

    @cached_property
    def requests_per_s(self) -> np.ndarray:
        return self.get("requests_per_s")

    @cached_property
    def ttft(self) -> np.ndarray:
        return self.get("ttft_p99")

    @cached_property
    def itl(self) -> np.ndarray:
        return self.get("itl_p99")

    @cached_property
    def prompt_tokens_per_s(self) -> np.ndarray:
        return self.get("prompt_tokens_per_s")

    @cached_property
    def output_tokens_per_s(self) -> np.ndarray:
        return self.get("output_tokens_per_s")

    @cached_property
    def gpu_util(self) -> np.ndarray:
        return self.get("gpu_utilization")

    # -- coverage and durations ---------------------------------------------------------

    @cached_property
    def covered(self) -> np.ndarray:
        """Steps with any scheduler data (running, KV usage or queue)."""
        return np.isfinite(self.running) | np.isfinite(self.kv) | np.isfinite(self.waiting)

    @cached_property
    def covered_steps(self) -> int:
        return int(self.covered.sum())

    @cached_property
    def covered_seconds(self) -> float:
        return self.covered_steps * self.step

    def duration(self, mask: np.ndarray) -> float:
        return float(mask.sum()) * self.step

    def fraction(self, mask: np.ndarray) -> float:
        """Share of the covered time ``mask`` held (0 without coverage)."""
        return self.duration(mask) / self.covered_seconds if self.covered_seconds else 0.0

    def significant(self, mask: np.ndarray) -> bool:
        """Whether ``mask`` held long enough to count (see ``tuner.suggest.thresholds``)."""
        return self.significant_steps(int(mask.sum()))

    def significant_steps(self, steps: int) -> bool:
        """Whether ``steps`` evaluation steps are enough to count (as ``significant``)."""
        if not self.covered_seconds:
            return False
        least = max(SIGNIFICANT_STEPS * self.step,
                    min(SIGNIFICANT_SECONDS, SIGNIFICANT_SHARE * self.covered_seconds))
        return steps * self.step >= least

    def fraction_text(self, mask: np.ndarray) -> str:
        """``2h00m (8% of the window)``."""
        dur = self.duration(mask)
        pct = 100.0 * dur / self.covered_seconds if self.covered_seconds else 0.0
        return f"{duration_text(dur)} ({pct:.0f}% of the window)"

    def ranges(self, mask: np.ndarray) -> Ranges:
        return mask_ranges(self.grid, mask)

    def when(self, mask: np.ndarray) -> str:
        return when_text(self.ranges(mask))

    def preemptions_per_1000(self, mask: np.ndarray) -> float:
        """Preemptions per 1000 finished requests over the steps of ``mask``."""
        p = np.nansum(self.preemptions_per_s[mask]) * self.step
        r = np.nansum(self.requests_per_s[mask]) * self.step
        return per_thousand_requests(float(p), float(r))

    # -- conditions (boolean masks over the grid) ---------------------------------------

    @cached_property
    def kv_saturated(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.kv >= KV_SATURATED

    @cached_property
    def queued(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.waiting >= 0.5

    @cached_property
    def preempting(self) -> np.ndarray:
        """Preemptions at a problem rate (or with no finished requests at all)."""
        preempt, reqs = self.preemptions_per_s, self.requests_per_s
        with np.errstate(invalid="ignore", divide="ignore"):
            per1000 = 1000.0 * preempt / reqs
            return (preempt > 0) & ((reqs <= 0) | (per1000 >= PREEMPT_PER_1000))

    @cached_property
    def ttft_breach(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.ttft > self.slo.ttft_p99_seconds

    @cached_property
    def itl_breach(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.itl > self.slo.itl_p99_seconds

    @cached_property
    def kv_full_with_queue(self) -> np.ndarray:
        """KV cache full while requests waited or were preempted."""
        return self.kv_saturated & (self.queued | self.preempting)

    @cached_property
    def cache_exhausted(self) -> np.ndarray:
        """Preempting, or TTFT over the SLO with a full KV cache.

        A preemption happens only when the KV cache ran out of blocks, so preemptions are
        cache exhaustion even when no scrape caught the usage gauge at its peak.
        """
        return self.preempting | (self.kv_saturated & self.ttft_breach)

    @cached_property
    def cache_bound(self) -> bool:
        """The KV cache limited the server for long enough to count."""
        return self.significant(self.cache_exhausted) or self.significant(
            self.kv_full_with_queue)

    @cached_property
    def queue_with_headroom(self) -> np.ndarray:
        """Requests waited while the KV cache (and the GPUs) had room, without preemptions."""
        with np.errstate(invalid="ignore"):
            return (self.queued & ~self.kv_saturated & (self.kv < KV_HEADROOM)
                    & ~self.preempting & ~(self.gpu_util >= GPU_BUSY_UTIL))

    # -- scalars ------------------------------------------------------------------------

    @cached_property
    def has_gpu(self) -> bool:
        return bool(np.isfinite(self.gpu_util).any())

    @cached_property
    def min_free_memory(self) -> float:
        """The least free device memory over the segment, as a fraction of total; NaN."""
        used, free = self.get("gpu_fb_used_mib"), self.get("gpu_fb_free_mib")
        with np.errstate(invalid="ignore", divide="ignore"):
            share = free / (used + free)
        return float(np.nanmin(share)) if np.isfinite(share).any() else math.nan

    @cached_property
    def prefill_during_itl_breach(self) -> float:
        """Median prompt tokens/s while ITL broke the SLO (NaN if unknown)."""
        return _median(self.prompt_tokens_per_s[self.itl_breach])

    @cached_property
    def prefill_otherwise(self) -> float:
        """Median prompt tokens/s over the rest of the covered segment (NaN if unknown)."""
        return _median(self.prompt_tokens_per_s[self.covered & ~self.itl_breach])

    @cached_property
    def long_prefill(self) -> bool:
        """ITL breaches coincide with prefill load at least 1.5x the rest of the segment."""
        inside, outside = self.prefill_during_itl_breach, self.prefill_otherwise
        return math.isfinite(inside) and (
            not math.isfinite(outside) or inside >= 1.5 * max(outside, 1e-9))

    @cached_property
    def dollars_per_mtok(self) -> float:
        """$ per million output tokens over the covered time (NaN without a price)."""
        tokens = float(np.nansum(self.output_tokens_per_s) * self.step)
        return dollars_per_mtok(self.dollars_per_hour, tokens, self.covered_seconds)

    @cached_property
    def spec_length(self) -> float:
        """Mean speculative acceptance length over the window (NaN without V1 counters)."""
        tot = self.totals
        if not tot.get("spec_draft_tokens"):
            return math.nan
        return mean_acceptance_length(tot.get("spec_accepted_tokens", 0.0),
                                      tot.get("spec_drafts", 0.0))

    @cached_property
    def spec_rate(self) -> float:
        """Speculative acceptance rate (V1 counters, else the V0 gauge; NaN without either)."""
        tot = self.totals
        if tot.get("spec_draft_tokens"):
            return tot.get("spec_accepted_tokens", 0.0) / tot["spec_draft_tokens"]
        v0 = tot.get("spec_acceptance_rate_v0")
        return v0 if v0 is not None and math.isfinite(v0) else math.nan

    @cached_property
    def speculative_tokens(self) -> Current:
        """num_speculative_tokens: from the launch flags, else the positions exported."""
        k = speculative_tokens(self.launch)
        if k is not None:
            return Current(k, CurrentSource.LAUNCH)
        positions = as_number(self.totals.get("spec_positions"))
        k = int(positions) if positions else None
        return Current(k, CurrentSource.METRICS if k else CurrentSource.UNKNOWN)

    @cached_property
    def longest_request(self) -> float | None:
        """Longest prompt + longest output seen (the workload fingerprint), if both are known."""
        pt = self.workload.get("prompt_tokens") or {}
        ot = self.workload.get("output_tokens") or {}
        if not (pt.get("max") and ot.get("max")):
            return None
        return float(pt["max"]) + float(ot["max"])

    @cached_property
    def missing(self) -> tuple[str, ...]:
        """What the segment has no data for, by name and metric (the HTTP status counts are
        read as a window total: without them the error rate is unknown)."""
        gone = [what for name, what in EXPECTED_SIGNALS if not np.isfinite(self.get(name)).any()]
        if not self.error_rate_known:
            gone.append(HTTP_MISSING)
        return tuple(gone)

    # -- refused and failed requests (vLLM 0.29+ admission control; HTTP statuses) ------

    @cached_property
    def error_rate_known(self) -> bool:
        """The server exports ``http_requests_total`` (else its error rate is unknown)."""
        return math.isfinite(self.total("http_requests"))

    @cached_property
    def rejections(self) -> float:
        """Requests refused by admission control in the window (NaN: not exported)."""
        by_reason = sum(self.rejections_by_reason.values()) if self.rejections_by_reason \
            else math.nan
        total = self.total("admission_rejections")
        return total if math.isfinite(total) else by_reason

    @cached_property
    def rejecting(self) -> np.ndarray:
        """Steps with admission rejections."""
        with np.errstate(invalid="ignore"):
            return self.get("rejections_per_1000") > 0

    @cached_property
    def failures(self) -> dict[str, float]:
        """Failed requests other than admission rejections, by kind (only kinds that
        happened): HTTP 5xx beyond the 503 refusals, HTTP 4xx, errored and aborted finishes."""
        rejected = self.rejections if math.isfinite(self.rejections) else 0.0
        kinds = {
            "HTTP 5xx other than admission refusals":
                max(0.0, self.total("http_5xx") - rejected),
            "HTTP 4xx": self.total("http_4xx"),
            "finished with an engine error": self.total("requests_errored"),
            "aborted": self.total("requests_aborted"),
        }
        return {k: v for k, v in kinds.items() if math.isfinite(v) and v >= 0.5}

    @cached_property
    def failing(self) -> np.ndarray:
        """Steps where some requests failed (5xx, 4xx, errored or aborted finishes)."""
        with np.errstate(invalid="ignore"):
            m = np.zeros(len(self.grid), dtype=bool)
            for name in ("http_4xx_ratio", "errored_ratio", "aborted_ratio"):
                m |= self.get(name) > 0
            other_5xx = self.get("http_5xx_ratio") > 0
            if math.isfinite(self.rejections) and self.rejections > 0:
                other_5xx &= ~self.rejecting  # those 5xx are the refusals themselves
            return m | other_5xx

    @cached_property
    def arrivals(self) -> float:
        """Requests that arrived in the window: finished plus refused (NaN if unknown)."""
        finished = self.total("requests")
        rejected = self.rejections if math.isfinite(self.rejections) else 0.0
        return finished + rejected if math.isfinite(finished) else math.nan

    def _during(self, arr: np.ndarray, mask: np.ndarray, how: str = "median") -> float:
        vals = arr[mask]
        if not np.isfinite(vals).any():
            return math.nan
        return float(np.nanmax(vals) if how == "max" else np.nanmedian(vals))

    @cached_property
    def kv_headroom_while_rejecting(self) -> bool | None:
        """The KV cache stayed below ``KV_HEADROOM`` while requests were refused (None:
        no KV data then)."""
        peak = self._during(self.kv, self.rejecting, "max")
        return None if math.isnan(peak) else peak < KV_HEADROOM

    @cached_property
    def compute_headroom_while_rejecting(self) -> tuple[bool | None, str]:
        """Whether the server had compute to spare while refusing, and how that was judged:
        GPU utilization below ``GPU_BUSY_UTIL`` (DCGM), else the running batch below
        max-num-seqs (the batch had free slots)."""
        m = self.rejecting
        if self.has_gpu:
            util = self._during(self.gpu_util, m)
            if math.isfinite(util):
                return util < GPU_BUSY_UTIL, f"GPU utilization median {util:.0f}%"
        running = self._during(self.running, m, "max")
        seqs = as_number(self.current("max-num-seqs").value)
        if math.isfinite(running) and seqs is not None:
            free = running < seqs
            return free, (f"at most {running:.0f} requests running of max-num-seqs "
                          f"{seqs:.0f}" + (" (no GPU metrics: judged by the running batch)"
                                           if not self.has_gpu else ""))
        return None, "no GPU metrics and no known max-num-seqs to judge compute headroom"

    @cached_property
    def deep_queue(self) -> np.ndarray:
        """Steps with at least ``QUEUE_DEEP_MIN`` waiting and at least as many as running."""
        with np.errstate(invalid="ignore"):
            return (self.waiting >= QUEUE_DEEP_MIN) & ~(self.waiting < self.running)

    @cached_property
    def prefill_capacity(self) -> float:
        """Prompt tokens/s the server prefilled while requests queued (its measured prefill
        rate under load; NaN if unknown)."""
        return self._during(self.prompt_tokens_per_s, self.queued & np.isfinite(
            self.prompt_tokens_per_s) & (self.prompt_tokens_per_s > 0))

    @cached_property
    def has_admission_metrics(self) -> bool:
        """The server exports vLLM 0.29+ series (waiting by reason, admission rejections)."""
        return bool(np.isfinite(self.get("waiting_deferred")).any()) or math.isfinite(
            self.rejections)

    @cached_property
    def spec_acceptance_by_batch(self) -> tuple[tuple[int, int, float, int], ...]:
        """Speculative acceptance rate by running batch size: ``(first, last, median rate,
        steps)`` per ``SPEC_BATCH_BINS`` range with data, smallest batches first."""
        rate, running = self.get("spec_acceptance"), self.running
        out = []
        for first, last in SPEC_BATCH_BINS:
            with np.errstate(invalid="ignore"):
                m = np.isfinite(rate) & (running >= first - 0.5) & (running < last + 0.5)
            if m.any():
                out.append((first, last, float(np.median(rate[m])), int(m.sum())))
        return tuple(out)

    def current(self, flag: str, config_key: str | None = None) -> Current:
        """The running value of ``flag``: the cache_config_info label ``config_key`` if
        given and present, else the launch flags (an integer for integral values of flags
        without a config key), else unknown."""
        if config_key and self.config.get(config_key) not in (None, ""):
            v = as_number(self.config[config_key])
            return Current(v if v is not None else self.config[config_key],
                           CurrentSource.CACHE_CONFIG_INFO)
        raw = launch_value(self.launch, flag)
        if raw is None:
            return Current(None, CurrentSource.UNKNOWN)
        f = as_number(raw)
        if f is None:
            return Current(raw, CurrentSource.LAUNCH)
        return Current(int(f) if f.is_integer() and config_key is None else f,
                       CurrentSource.LAUNCH)


def view_of(td: TargetData, slo: SLO, launch: Mapping[str, Any], step: float,
            dollars_per_hour: float = 0.0, segment: Segment | None = None) -> WindowView:
    """The view of one collected server over ``segment`` (default: the last one)."""
    seg = segment or td.segments[-1]
    outside = ~((td.grid >= seg.start - 1e-6) & (td.grid <= seg.end + 1e-6))
    series = {}
    for name, arr in td.series.items():
        masked = arr.copy()
        masked[outside] = np.nan
        series[name] = masked
    return WindowView(grid=td.grid, step=step, series=series, slo=slo, launch=launch,
                      config=seg.config, totals=td.totals, restarts=td.restarts,
                      workload=td.workload or {}, dollars_per_hour=dollars_per_hour,
                      rejections_by_reason=td.rejections_by_reason)
