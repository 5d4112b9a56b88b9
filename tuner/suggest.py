"""From a window of metrics to vLLM flag recommendations, with the evidence behind each one.

Three steps, the middle one pure:

1. ``collect`` reads the window from a ``tuner.source`` source: the ``WINDOW_SIGNALS`` of
   ``tuner.signals`` as range queries at a step (``choose_step``: at most 300 points, at
   least 5 s), whole-window totals as instant ``increase`` queries, ``vllm:cache_config_info``
   and ``process_start_time_seconds`` for the configuration and restarts, and the workload
   fingerprint (``tuner.workload``). Series are grouped per server (``instance``), carrying
   ``model_name``/``namespace``/``deployment``/``pod`` when present; DCGM GPU series are
   attributed by ``pod`` (Kubernetes) or, with a single server, to that server.
2. ``analyze`` turns one server's aligned arrays into findings (a signal, its value, how long
   and when it held) and recommendations (flag, current value, suggested value or direction,
   expected effect, confidence, evidence), resolves conflicts explicitly and says how. A
   window in which the server restarted with different flags is split by configuration;
   recommendations come from the last part (the flags running now), and the report says so.
3. ``suggest`` assembles the stable JSON report (see README "suggest JSON");
   ``run_scheduled_suggest`` stores it as a ``suggest_report`` document and keeps the last N.

Thresholds are module constants, documented where they are defined.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tuner.config import SLO, Config, format_duration, parse_duration
from tuner.errors import TunerError
from tuner.signals import (
    VLLM_GROUP_BY,
    WINDOW_SIGNALS,
    WINDOW_TOTALS,
    dollars_per_mtok,
    mean_acceptance_length,
    per_thousand_requests,
    render_signal,
    split_matchers,
)
from tuner.workload import fingerprint, iso

REPORT_VERSION = 1
KV_SATURATED = 0.95  # KV usage at or above this is "full"
KV_HEADROOM = 0.80  # below this the cache has room for more sequences
PREEMPT_PER_1000 = 10.0  # preemptions per 1000 requests that count as a problem
GPU_LOW_UTIL = 30.0  # % median GPU utilization that, with no queue, is over-provisioning
GPU_BUSY_UTIL = 85.0  # % above which the GPU has no headroom for a larger batch
FB_FREE_FOR_UP = 0.03  # free device memory (fraction) needed to raise gpu-memory-utilization
FB_FREE_CRITICAL = 0.01  # less free device memory than this is an OOM risk
SPEC_MIN_LENGTH = 1.5  # mean acceptance length below which drafting costs more than it saves
SPEC_LOW_RATE = 0.5  # acceptance rate below which fewer speculative tokens pay better
SPEC_LARGE_BATCH = 64  # median running batch at which speculation stops paying
MODEL_LEN_SHARE = 0.5  # observed prompt+output below this share of max-model-len is "never near"
DISPLAY_LABELS = ("model_name", "namespace", "deployment", "pod", "instance")
_CONFIG_IGNORED = {"__name__", "instance", "job", "model_name", "engine", "namespace",
                   "deployment", "pod", "container", "service", "endpoint"}


class SuggestError(TunerError):
    """suggest cannot run: bad --since/--until/--selector, or no data in the window."""


# -- window --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The window to analyze: ``[start, end]`` in unix seconds, evaluated every ``step``."""

    start: float
    end: float
    step: float
    rate_window: float
    since: str

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def grid(self) -> np.ndarray:
        n = math.floor(self.seconds / self.step + 1e-9) + 1
        return self.start + self.step * np.arange(n, dtype=np.float64)


_STEPS = (5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)


def choose_step(seconds: float) -> float:
    """The smallest round step giving at most 300 evaluations (5 s for 10m, 5 min for a
    day, 1 h for a week or more)."""
    return next((s for s in _STEPS if seconds / s <= 300.0), _STEPS[-1])


def parse_time(text: str, now: float) -> float:
    """``now``, unix seconds, ISO 8601 (``2026-11-20T14:00:00Z``), or a duration ago (``2h``)."""
    s = text.strip()
    if s == "now":
        return now
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return now - parse_duration(s)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise SuggestError(
            f"--until {text!r}: not a time; use 'now', unix seconds, ISO 8601 "
            "(2026-11-20T14:00:00Z) or a duration ago (2h)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def make_window(since: str, until: str | None, now: float) -> Window:
    """Parse ``--since``/``--until`` into a Window; raises SuggestError naming the option."""
    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise SuggestError(f"--since {since!r}: {exc}") from None
    if seconds < 60:
        raise SuggestError(f"--since {since!r}: the window must be at least 1m")
    end = float(math.floor(parse_time(until, now) if until else now))
    step = choose_step(seconds)
    return Window(end - seconds, end, step, max(60.0, 2.0 * step), since)


def validate_selector(selector: str | None) -> str:
    """``{model_name="x"}`` (checked) or ``""``; raises SuggestError on anything else."""
    if not selector:
        return ""
    try:
        split_matchers(selector)
    except ValueError as exc:
        raise SuggestError(f"--selector: {exc}") from None
    return selector.strip()


# -- collected data ------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A stretch of the window with one configuration and one server process."""

    start: float
    end: float
    config: Mapping[str, str]
    reason: str = ""  # why a new segment began ("" for the first)


@dataclass(frozen=True)
class TargetData:
    """One server's window: arrays aligned on ``grid`` (NaN where no data), totals, config."""

    labels: Mapping[str, str]
    grid: np.ndarray
    series: Mapping[str, np.ndarray]
    totals: Mapping[str, float]
    segments: tuple[Segment, ...]
    restarts: tuple[float, ...] = ()  # restart times without a config change
    workload: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def get(self, name: str) -> np.ndarray:
        arr = self.series.get(name)
        return arr if arr is not None else np.full(len(self.grid), np.nan)

    def has(self, name: str) -> bool:
        arr = self.series.get(name)
        return arr is not None and bool(np.isfinite(arr).any())


def _align(grid: np.ndarray, step: float, ts: np.ndarray, vals: np.ndarray) -> np.ndarray:
    out = np.full(len(grid), np.nan)
    idx = np.rint((ts - grid[0]) / step).astype(np.int64)
    ok = (idx >= 0) & (idx < len(grid))
    out[idx[ok]] = vals[ok]
    return out


def collect(source: Any, window: Window, selector: str = "") -> list[TargetData]:
    """Read the window for every selected vLLM server; raises SuggestError if there is none."""
    grid = window.grid()
    w = format_duration(window.rate_window)
    cache = getattr(source, "cache_window", None)
    if cache is not None:  # the local store: read each metric of the window once
        cache(window.start - window.rate_window - 600.0, window.end)
    by_instance: dict[str, dict[str, np.ndarray]] = {}
    display: dict[str, dict[str, str]] = {}
    gpu: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for sig in WINDOW_SIGNALS:
        expr = render_signal(sig, selector, VLLM_GROUP_BY, w)
        for s in source.range(expr, window.start, window.end, window.step):
            values = _align(grid, window.step, s.timestamps, s.values)
            if "DCGM_" in sig.expr:
                key = (s.labels.get("namespace", ""), s.labels.get("pod", ""))
                gpu.setdefault(key, {})[sig.name] = values
                continue
            inst = s.labels.get("instance", "")
            by_instance.setdefault(inst, {})[sig.name] = values
            if sig.name != "process_start_time":
                d = display.setdefault(inst, {})
                d.update({k: s.labels[k] for k in DISPLAY_LABELS if k in s.labels})
    vllm_instances = sorted(i for i in by_instance if i in display)
    if not vllm_instances:
        rng = source.time_range()
        held = (f"it holds data from {iso(rng[0])} to {iso(rng[1])}" if rng
                else "it holds no data")
        sel = f" matching {selector}" if selector else ""
        raise SuggestError(
            f"no vLLM metrics{sel} between {iso(window.start)} and {iso(window.end)} in "
            f"{source.description} ({held})"
        )

    full_w = format_duration(window.seconds)
    totals: dict[str, dict[str, float]] = {}
    for sig in WINDOW_TOTALS:
        res = source.instant(render_signal(sig, selector, VLLM_GROUP_BY, full_w), window.end)
        for el in getattr(res, "vector", ()):
            totals.setdefault(el.labels.get("instance", ""), {})[sig.name] = float(el.value)
    resets: dict[str, float] = {}
    res = source.instant(
        f"sum by (instance) (resets(vllm:generation_tokens_total{selector}[{full_w}]))",
        window.end)
    for el in getattr(res, "vector", ()):
        resets[el.labels.get("instance", "")] = float(el.value)

    configs: dict[str, list[tuple[dict[str, str], np.ndarray]]] = {}
    for s in source.range(f"vllm:cache_config_info{selector}", window.start, window.end,
                          window.step):
        cfg = {k: v for k, v in s.labels.items() if k not in _CONFIG_IGNORED}
        present = np.isfinite(_align(grid, window.step, s.timestamps, s.values))
        configs.setdefault(s.labels.get("instance", ""), []).append((cfg, present))

    targets = []
    for inst in vllm_instances:
        series = dict(by_instance[inst])
        notes: list[str] = []
        pod_key = (display[inst].get("namespace", ""), display[inst].get("pod", ""))
        gpu_series = gpu.get(pod_key)
        if gpu_series is None and len(vllm_instances) == 1 and len(gpu) == 1:
            gpu_series = next(iter(gpu.values()))
        elif gpu_series is None and gpu:
            notes.append("DCGM GPU series could not be attributed to this server "
                         "(no matching pod label); GPU rules skipped")
        series.update(gpu_series or {})
        segments, restarts = _segments(grid, window, configs.get(inst, []),
                                       series.get("process_start_time"),
                                       resets.get(inst, 0.0))
        inst_sel = _with_instance(selector, inst)
        wl = fingerprint(source, window.start, window.end, inst_sel)
        targets.append(TargetData(
            labels=display[inst], grid=grid, series=series, totals=totals.get(inst, {}),
            segments=segments, restarts=restarts, workload=wl, notes=tuple(notes)))
    return targets


def _with_instance(selector: str, instance: str) -> str:
    inner = selector.strip()[1:-1].strip().rstrip(",") if selector else ""
    extra = f'instance="{instance}"'
    return "{" + (f"{inner}, {extra}" if inner else extra) + "}"


def _segments(grid: np.ndarray, window: Window,
              configs: Sequence[tuple[dict[str, str], np.ndarray]],
              start_times: np.ndarray | None, resets: float
              ) -> tuple[tuple[Segment, ...], tuple[float, ...]]:
    """Split the window at configuration changes; restarts with the same flags are listed."""
    # each configuration begins where its series first appears
    firsts = []
    for cfg, present in configs:
        idx = np.flatnonzero(present)
        if len(idx):
            firsts.append((int(idx[0]), cfg))
    firsts.sort(key=lambda x: x[0])
    merged: list[tuple[int, dict[str, str]]] = []
    for i, cfg in firsts:
        if merged and merged[-1][1] == cfg:
            continue
        merged.append((i, cfg))
    # restarts from process_start_time_seconds changes
    restart_times: list[float] = []
    if start_times is not None:
        vals = start_times
        prev = math.nan
        for t, v in zip(grid.tolist(), vals.tolist(), strict=True):
            if not math.isfinite(v):
                continue
            if math.isfinite(prev) and abs(v - prev) > 0.5:
                restart_times.append(v if window.start <= v <= t else t)
            prev = v
    segs: list[Segment] = []
    if not merged:
        segs.append(Segment(window.start, window.end, {}, ""))
    for k, (i, cfg) in enumerate(merged):
        start = window.start if k == 0 else float(grid[i])
        end = float(grid[merged[k + 1][0]]) if k + 1 < len(merged) else window.end
        reason = ""
        if k > 0:
            prev_cfg = merged[k - 1][1]
            changed = sorted(key for key in set(cfg) | set(prev_cfg)
                             if cfg.get(key) != prev_cfg.get(key))
            diff = ", ".join(f"{key} {prev_cfg.get(key, '-')} -> {cfg.get(key, '-')}"
                             for key in changed)
            reason = f"server restarted at {_hm(start)} with different flags ({diff})"
        segs.append(Segment(start, end, cfg, reason))
    # restarts that did not change the configuration
    boundaries = [s.start for s in segs[1:]]
    plain = tuple(t for t in restart_times
                  if all(abs(t - b) > 2 * window.rate_window + window.step for b in boundaries))
    if not restart_times and resets > 0 and len(segs) == 1:
        # no process_start_time_seconds (e.g. filtered out): counter resets tell us
        plain = tuple([math.nan] * int(resets))
    return tuple(segs), plain


# -- analysis ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A signal over (part of) the window: its value, how long it held, and when."""

    id: str
    signal: str
    summary: str
    value: float | None
    unit: str
    severity: str  # "warning" | "info"
    duration_seconds: float = 0.0
    fraction: float = 0.0
    ranges: tuple[tuple[float, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "signal": self.signal,
            "summary": self.summary,
            "value": _clean(self.value),
            "unit": self.unit,
            "severity": self.severity,
            "duration_seconds": self.duration_seconds,
            "fraction": round(self.fraction, 4),
            "ranges": [{"start": iso(a), "end": iso(b)} for a, b in self.ranges],
        }


@dataclass(frozen=True)
class Recommendation:
    """A flag change (or "no change") with its evidence."""

    flag: str | None
    current: Any
    current_source: str  # "cache_config_info" | "launch" | "metrics" | "unknown"
    suggested: Any
    direction: str  # "up" | "down" | "off" | "none"
    reason: str
    expected_effect: str
    confidence: str  # "high" | "medium" | "low"
    evidence: tuple[str, ...] = ()  # finding ids

    def to_json(self, findings: Mapping[str, Finding]) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "current": self.current,
            "current_source": self.current_source,
            "suggested": self.suggested,
            "direction": self.direction,
            "reason": self.reason,
            "expected_effect": self.expected_effect,
            "confidence": self.confidence,
            "evidence": [
                {"finding": fid, "signal": findings[fid].signal,
                 "summary": findings[fid].summary,
                 "ranges": [{"start": iso(a), "end": iso(b)} for a, b in findings[fid].ranges]}
                for fid in self.evidence if fid in findings
            ],
        }


@dataclass(frozen=True)
class Analysis:
    findings: tuple[Finding, ...]
    recommendations: tuple[Recommendation, ...]
    conflicts: tuple[str, ...]
    missing: tuple[str, ...]
    skipped: tuple[str, ...]


def _clean(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        f = float(v)
        return None if not math.isfinite(f) else round(f, 6)
    return v


def _hm(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def _dur(seconds: float) -> str:
    m = round(seconds / 60.0)
    if m < 60:
        return f"{m}m" if m else f"{int(seconds)}s"
    return f"{m // 60}h{m % 60:02d}m"


def _ranges(grid: np.ndarray, mask: np.ndarray, step: float) -> tuple[tuple[float, float], ...]:
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


def _hms(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _when(ranges: Sequence[tuple[float, float]]) -> str:
    short = any(b - a < 600 for a, b in ranges[:3])  # minutes alone would read 07:11–07:11
    fmt = _hms if short else _hm
    parts = [f"{fmt(a)}–{fmt(b)}" for a, b in sorted(ranges[:3])]
    more = f" and {len(ranges) - 3} more" if len(ranges) > 3 else ""
    return ", ".join(parts) + more


def launch_value(launch: Mapping[str, Any], flag: str) -> Any:
    """A flag from the configured launch args, whatever its spelling (``--a-b``, ``a_b``)."""
    want = flag.lstrip("-").replace("_", "-")
    for k, v in launch.items():
        if str(k).lstrip("-").replace("_", "-") == want:
            return v
    return None


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _round8(x: float) -> int:
    return int(max(1, (int(x) // 8) * 8 if x >= 16 else int(x)))


def _spec_tokens(launch: Mapping[str, Any]) -> int | None:
    raw = launch_value(launch, "speculative-config")
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return None
    if isinstance(raw, Mapping):
        v = _num(raw.get("num_speculative_tokens"))
        return int(v) if v is not None else None
    return None


def analyze(td: TargetData, slo: SLO, launch: Mapping[str, Any], step: float,
            dollars_per_hour: float = 0.0, segment: Segment | None = None) -> Analysis:
    """Findings and recommendations for one server over ``segment`` (default: the last)."""
    seg = segment or td.segments[-1]
    in_seg = (td.grid >= seg.start - 1e-6) & (td.grid <= seg.end + 1e-6)
    grid = td.grid

    def g(name: str) -> np.ndarray:
        a = td.get(name).copy()
        a[~in_seg] = np.nan
        return a

    kv, waiting, running = g("kv_cache_usage"), g("waiting"), g("running")
    preempt, reqs = g("preemptions_per_s"), g("requests_per_s")
    ttft, itl = g("ttft_p99"), g("itl_p99")
    out_tps, prompt_tps = g("output_tokens_per_s"), g("prompt_tokens_per_s")
    util, fb_used, fb_free = g("gpu_utilization"), g("gpu_fb_used_mib"), g("gpu_fb_free_mib")
    covered = in_seg & (np.isfinite(running) | np.isfinite(kv) | np.isfinite(waiting))
    n_cov = int(covered.sum())
    cov_s = n_cov * step

    missing: list[str] = []
    for name, what in (("kv_cache_usage", "KV cache usage (vllm:kv_cache_usage_perc)"),
                       ("waiting", "queue (vllm:num_requests_waiting)"),
                       ("preemptions_per_s", "preemptions (vllm:num_preemptions_total)"),
                       ("requests_per_s", "finished requests (vllm:request_success_total)"),
                       ("ttft_p99", "TTFT histogram (vllm:time_to_first_token_seconds)"),
                       ("itl_p99", "ITL histogram (vllm:inter_token_latency_seconds)"),
                       ("gpu_utilization", "GPU utilization (DCGM_FI_DEV_GPU_UTIL)"),
                       ("gpu_fb_free_mib", "GPU free memory (DCGM_FI_DEV_FB_FREE)")):
        if not np.isfinite(g(name)).any():
            missing.append(what)
    skipped: list[str] = []

    findings: dict[str, Finding] = {}

    def sig(mask: np.ndarray) -> bool:
        dur = float(mask.sum()) * step
        return dur >= max(3 * step, min(600.0, 0.05 * cov_s)) if cov_s else False

    def add(fid: str, signal: str, summary: str, value: float | None, unit: str,
            severity: str, mask: np.ndarray | None = None) -> Finding:
        if mask is not None:
            dur = float(mask.sum()) * step
            f = Finding(fid, signal, summary, value, unit, severity, dur,
                        dur / cov_s if cov_s else 0.0, _ranges(grid, mask, step))
        else:
            f = Finding(fid, signal, summary, value, unit, severity)
        findings[fid] = f
        return f

    def frac_text(mask: np.ndarray) -> str:
        dur = float(mask.sum()) * step
        pct = 100.0 * dur / cov_s if cov_s else 0.0
        return f"{_dur(dur)} ({pct:.0f}% of the window)"

    with np.errstate(invalid="ignore", divide="ignore"):
        kv_sat = kv >= KV_SATURATED
        queued = waiting >= 0.5
        per1000 = 1000.0 * preempt / reqs
        preempting = (preempt > 0) & ((reqs <= 0) | (per1000 >= PREEMPT_PER_1000))
        ttft_breach = ttft > slo.ttft_p99_seconds
        itl_breach = itl > slo.itl_p99_seconds

    def ratio_in(mask: np.ndarray) -> float:
        p = np.nansum(preempt[mask]) * step
        r = np.nansum(reqs[mask]) * step
        return per_thousand_requests(float(p), float(r))

    # -- findings ----------------------------------------------------------------------
    m_kvq = kv_sat & (queued | preempting)
    if m_kvq.any():
        add("kv_saturated_with_queue", "kv_cache_usage",
            f"KV cache above {KV_SATURATED:.0%} while requests waited or were preempted for "
            f"{frac_text(m_kvq)}, {_when(_ranges(grid, m_kvq, step))}",
            float(np.nanmedian(kv[m_kvq])), "ratio", "warning", m_kvq)
    if preempting.any():
        r = ratio_in(preempting)
        add("preemptions", "preemptions_per_1000_requests",
            f"{r:,.0f} preemptions per 1000 requests during "
            f"{_when(_ranges(grid, preempting, step))}"
            f" ({frac_text(preempting)})", r, "per 1000 requests", "warning", preempting)
    if ttft_breach.any():
        v = float(np.nanmedian(ttft[ttft_breach]))
        add("ttft_slo_breach", "ttft_p99",
            f"TTFT p99 {v:.2f}s against a {slo.ttft_p99_seconds:g}s SLO for "
            f"{frac_text(ttft_breach)}, {_when(_ranges(grid, ttft_breach, step))}",
            v, "s", "warning", ttft_breach)
    long_prefill = False
    if itl_breach.any():
        v = float(np.nanmedian(itl[itl_breach]))
        inside = float(np.nanmedian(prompt_tps[itl_breach])) if np.isfinite(
            prompt_tps[itl_breach]).any() else math.nan
        rest = covered & ~itl_breach
        outside = float(np.nanmedian(prompt_tps[rest])) if np.isfinite(
            prompt_tps[rest]).any() else math.nan
        long_prefill = math.isfinite(inside) and (
            not math.isfinite(outside) or inside >= 1.5 * max(outside, 1e-9))
        tail = (f"; prefill load {inside:,.0f} prompt tok/s while breaching vs "
                f"{outside:,.0f} otherwise" if math.isfinite(inside) and math.isfinite(outside)
                else "")
        add("itl_slo_breach", "itl_p99",
            f"ITL p99 {v * 1000:.0f}ms against a {slo.itl_p99_seconds * 1000:g}ms SLO for "
            f"{frac_text(itl_breach)}, {_when(_ranges(grid, itl_breach, step))}{tail}",
            v, "s", "warning", itl_breach)
        if long_prefill:
            add("itl_breach_during_prefill", "prompt_tokens_per_s",
                "ITL breaches coincide with long prefills (prompt tokens/s at least 1.5x the "
                "rest of the window)", inside, "tokens/s", "warning", itl_breach)
    has_gpu = bool(np.isfinite(util).any())
    if has_gpu:
        med_util = float(np.nanmedian(util[covered])) if np.isfinite(util[covered]).any() \
            else math.nan
        q_frac = float(queued[covered].sum()) / max(n_cov, 1)
        if math.isfinite(med_util) and med_util < GPU_LOW_UTIL and q_frac < 0.01 \
                and not preempting.any():
            add("over_provisioned", "gpu_utilization",
                f"GPU utilization median {med_util:.0f}% with no queue (over-provisioned)",
                med_util, "%", "info")
        else:
            add("gpu_utilization", "gpu_utilization",
                f"GPU utilization median {med_util:.0f}%", med_util, "%", "info")
    m_headroom = queued & ~kv_sat & (kv < KV_HEADROOM) & ~preempting & (
        ~(util >= GPU_BUSY_UTIL))
    if m_headroom.any():
        add("queue_with_headroom", "waiting",
            f"requests waited while the KV cache was below {KV_HEADROOM:.0%}"
            f"{' and GPUs below ' + format(GPU_BUSY_UTIL, '.0f') + '%' if has_gpu else ''} for "
            f"{frac_text(m_headroom)}, {_when(_ranges(grid, m_headroom, step))}",
            float(np.nanmedian(waiting[m_headroom])), "requests", "warning", m_headroom)
    fb_total = fb_used + fb_free
    with np.errstate(invalid="ignore", divide="ignore"):
        free_frac = fb_free / fb_total
    min_free = float(np.nanmin(free_frac)) if np.isfinite(free_frac).any() else math.nan
    if math.isfinite(min_free):
        add("gpu_memory_free", "gpu_fb_free_mib",
            f"GPU free device memory at least {min_free:.1%} of total over the window",
            min_free, "ratio", "warning" if min_free < FB_FREE_CRITICAL else "info")
    if td.restarts:
        add("restarts", "process_start_time",
            f"{len(td.restarts)} restart(s) without a configuration change"
            + (f" at {', '.join(_hm(t) for t in td.restarts if math.isfinite(t))}"
               if any(math.isfinite(t) for t in td.restarts) else " (counter resets)"),
            float(len(td.restarts)), "restarts", "warning")
    # throughput, cost, prefix cache (info)
    if np.isfinite(out_tps).any():
        med = float(np.nanmedian(out_tps[covered])) if np.isfinite(out_tps[covered]).any() \
            else math.nan
        peak = float(np.nanmax(out_tps))
        tokens = float(np.nansum(out_tps) * step)
        cost = dollars_per_mtok(dollars_per_hour, tokens, cov_s)
        add("output_throughput", "output_tokens_per_s",
            f"output {med:,.0f} tok/s median, {peak:,.0f} peak"
            + (f"; ${cost:,.2f} per million output tokens at ${dollars_per_hour:g}/hour"
               if math.isfinite(cost) else ""), med, "tokens/s", "info")
        if math.isfinite(cost):
            add("cost", "dollars_per_mtok", f"${cost:,.2f} per million output tokens",
                cost, "$/Mtok", "info")
    tot = td.totals
    if tot.get("prefix_cache_queries"):
        rate = tot.get("prefix_cache_hits", 0.0) / tot["prefix_cache_queries"]
        add("prefix_cache", "prefix_cache_hit_rate", f"prefix-cache hit rate {rate:.0%}",
            rate, "ratio", "info")
    spec_len = spec_rate = math.nan
    if tot.get("spec_draft_tokens"):
        spec_len = mean_acceptance_length(tot.get("spec_accepted_tokens", 0.0),
                                          tot.get("spec_drafts", 0.0))
        spec_rate = tot.get("spec_accepted_tokens", 0.0) / tot["spec_draft_tokens"]
    elif tot.get("spec_acceptance_rate_v0") is not None and math.isfinite(
            tot["spec_acceptance_rate_v0"]):
        spec_rate = tot["spec_acceptance_rate_v0"]
    if math.isfinite(spec_len) or math.isfinite(spec_rate):
        low = (math.isfinite(spec_len) and spec_len < SPEC_MIN_LENGTH) or (
            not math.isfinite(spec_len) and spec_rate < 0.2)
        add("spec_decode", "spec_decode_mean_acceptance_length",
            f"speculative decoding mean acceptance length "
            f"{spec_len:.2f}, acceptance rate {spec_rate:.1%}" if math.isfinite(spec_len)
            else f"speculative decoding acceptance rate {spec_rate:.1%} (V0 gauge)",
            spec_len if math.isfinite(spec_len) else spec_rate,
            "tokens" if math.isfinite(spec_len) else "ratio",
            "warning" if low else "info")
    wl = td.workload or {}
    pt, ot = wl.get("prompt_tokens") or {}, wl.get("output_tokens") or {}

    # -- recommendations ---------------------------------------------------------------
    cfg = seg.config
    recs: dict[str, Recommendation] = {}
    conflicts: list[str] = []

    def current(flag: str, cfg_key: str | None = None) -> tuple[Any, str]:
        if cfg_key and cfg.get(cfg_key) not in (None, ""):
            v = _num(cfg[cfg_key])
            return (v if v is not None else cfg[cfg_key]), "cache_config_info"
        v = launch_value(launch, flag)
        if v is not None:
            f = _num(v)
            if f is None:
                return v, "launch"
            return (int(f) if f.is_integer() and cfg_key is None else f), "launch"
        return None, "unknown"

    seqs_cur, seqs_src = current("max-num-seqs")
    # A preemption happens only when the KV cache ran out of blocks, so preemptions are
    # cache exhaustion even when no scrape caught the usage gauge at its peak.
    m_down = preempting | (kv_sat & ttft_breach)
    cache_bound = sig(m_down) or sig(m_kvq)
    if sig(m_down):
        busy = m_down & (running >= 1)
        run_med = float(np.nanmedian(running[busy])) if busy.any() else math.nan
        target = 0.9 * run_med if math.isfinite(run_med) else math.nan
        if seqs_cur is not None:
            target = min(0.75 * float(seqs_cur), target) if math.isfinite(target) \
                else 0.75 * float(seqs_cur)
        suggested = _round8(target) if math.isfinite(target) else None
        ev = [f for f in ("preemptions", "kv_saturated_with_queue", "ttft_slo_breach")
              if f in findings]
        strong = sig(preempting) and float(preempting.sum()) * step >= 1800
        running_text = (f"; about {run_med:.0f} sequences were running then, more than the "
                        "cache holds" if math.isfinite(run_med) else "")
        recs["seqs_down"] = Recommendation(
            "--max-num-seqs", seqs_cur, seqs_src, suggested, "down",
            "requests were preempted (the KV cache ran out of blocks) or TTFT broke the SLO "
            f"with a full KV cache for {frac_text(m_down)}{running_text}",
            "fewer preemptions and a shorter TTFT tail while busy; peak throughput may drop "
            "slightly. Raising KV capacity (--gpu-memory-utilization) is the alternative",
            "high" if strong else ("medium" if sig(preempting) else "low"), tuple(ev))
    if sig(m_headroom) and not preempting.any():
        batch_full = (seqs_cur is not None and np.isfinite(running[m_headroom]).any()
                      and float(np.nanmedian(running[m_headroom])) >= 0.9 * float(seqs_cur))
        suggested = _round8(float(seqs_cur) * 1.5) if seqs_cur is not None else None
        recs["seqs_up"] = Recommendation(
            "--max-num-seqs", seqs_cur, seqs_src, suggested, "up",
            f"requests queued for {frac_text(m_headroom)} while the KV cache"
            + (" and GPUs" if has_gpu else "") + " had headroom"
            + (" and the running batch was at the limit" if batch_full else ""),
            "shorter queue time and higher throughput at the same latency; watch KV usage "
            "and preemptions after the change",
            "high" if batch_full else "medium", ("queue_with_headroom",))
    elif sig(m_headroom):
        conflicts.append("--max-num-seqs: requests queued with KV headroom at times, but the "
                         "server also preempted; raising max-num-seqs would add preemptions, "
                         "so it is not recommended")

    gmu_cur, gmu_src = current("gpu-memory-utilization", "gpu_memory_utilization")
    unexplained = len(td.restarts)
    oom_risk = math.isfinite(min_free) and min_free < FB_FREE_CRITICAL
    if unexplained or oom_risk:
        why = []
        if unexplained:
            why.append(f"{unexplained} restart(s) without a flag change (possible OOM)")
        if oom_risk:
            why.append(f"free device memory fell to {min_free:.1%}")
        recs["gmu_down"] = Recommendation(
            "--gpu-memory-utilization", gmu_cur, gmu_src,
            round(float(gmu_cur) - 0.02, 2) if isinstance(gmu_cur, float) else None, "down",
            "; ".join(why), "fewer out-of-memory restarts; a slightly smaller KV cache",
            "high" if unexplained and oom_risk else "medium",
            tuple(f for f in ("restarts", "gpu_memory_free") if f in findings))
    if cache_bound:
        if not math.isfinite(min_free):
            skipped.append("--gpu-memory-utilization up: needs DCGM free-memory metrics "
                           "(DCGM_FI_DEV_FB_FREE/FB_USED), which are missing")
        elif min_free >= FB_FREE_FOR_UP:
            step_up = 0.02 if min_free >= 2 * FB_FREE_FOR_UP else 0.01
            up = Recommendation(
                "--gpu-memory-utilization", gmu_cur, gmu_src,
                round(min(0.98, float(gmu_cur) + step_up), 2)
                if isinstance(gmu_cur, float) else None, "up",
                f"cache-bound (KV full with a queue or preemptions) while at least "
                f"{min_free:.1%} of device memory stayed free",
                f"about {step_up / max(float(gmu_cur or 0.9), 0.01):.0%} more KV blocks, "
                "fewer preemptions", "medium",
                tuple(f for f in ("kv_saturated_with_queue", "gpu_memory_free")
                      if f in findings))
            if "gmu_down" in recs:
                conflicts.append("--gpu-memory-utilization: raising it (cache-bound with free "
                                 "memory) conflicts with lowering it (restarts or low free "
                                 "memory); stability wins, so the recommendation is down")
            else:
                recs["gmu_up"] = up

    mbt_cur, mbt_src = current("max-num-batched-tokens")
    if sig(itl_breach) and long_prefill:
        floor = int(seqs_cur) if seqs_cur is not None else 256
        recs["mbt_down"] = Recommendation(
            "--max-num-batched-tokens", mbt_cur, mbt_src,
            max(floor, int(float(mbt_cur) // 2)) if mbt_cur is not None else None, "down",
            f"ITL p99 broke the SLO for {frac_text(itl_breach)} during long prefills; a "
            "smaller chunk interleaves prefill with decode",
            "lower ITL p99; TTFT of long prompts rises somewhat",
            "medium", tuple(f for f in ("itl_slo_breach", "itl_breach_during_prefill")
                            if f in findings))
    itl_head = np.isfinite(itl) & (itl < 0.5 * slo.itl_p99_seconds)
    if sig(ttft_breach & ~kv_sat) and float(itl_head.sum()) >= 0.9 * max(
            float(np.isfinite(itl).sum()), 1.0):
        up_rec = Recommendation(
            "--max-num-batched-tokens", mbt_cur, mbt_src,
            int(float(mbt_cur) * 2) if mbt_cur is not None else None, "up",
            f"TTFT p99 broke the SLO for {frac_text(ttft_breach & ~kv_sat)} without a full KV "
            "cache, while ITL p99 stayed under half its SLO",
            "shorter TTFT (larger prefill chunks); ITL rises but has headroom", "medium",
            ("ttft_slo_breach",))
        if "mbt_down" in recs:
            ttft_d, itl_d = float(ttft_breach.sum()), float(itl_breach.sum())
            winner = "up" if ttft_d > itl_d else "down"
            conflicts.append(
                "--max-num-batched-tokens: TTFT wants it up, ITL wants it down; the larger "
                f"breach ({'TTFT' if winner == 'up' else 'ITL'}) wins, so the recommendation "
                f"is {winner}")
            if winner == "up":
                recs["mbt_down"] = up_rec
        else:
            recs["mbt_up"] = up_rec

    mml_cur, mml_src = current("max-model-len")
    if cache_bound and pt.get("max") and ot.get("max"):
        longest = float(pt["max"]) + float(ot["max"])
        if mml_cur is None:
            skipped.append("--max-model-len down: the current value is unknown (add "
                           "max-model-len to the config's launch section)")
        elif longest < MODEL_LEN_SHARE * float(mml_cur):
            suggested = int(2 ** math.ceil(math.log2(max(longest * 1.25, 256))))
            add("model_len_unused", "request_prompt_tokens+request_generation_tokens",
                f"the longest requests (prompt up to {pt['max']:,.0f} + output up to "
                f"{ot['max']:,.0f} tokens) never approached max-model-len {mml_cur:,.0f}",
                longest, "tokens", "info")
            recs["mml_down"] = Recommendation(
                "--max-model-len", mml_cur, mml_src, suggested, "down",
                f"KV is the bottleneck and requests stayed under {longest:,.0f} tokens, "
                f"below {MODEL_LEN_SHARE:.0%} of max-model-len",
                "less memory reserved for the longest possible sequence, more room for "
                "concurrent ones; requests longer than the new limit are rejected",
                "low", ("model_len_unused", "kv_saturated_with_queue"))

    spec_k = _spec_tokens(launch)
    if spec_k is None and tot.get("spec_positions"):
        spec_k = int(tot["spec_positions"])
    if "spec_decode" in findings:
        big_batch = np.isfinite(running[covered]).any() and float(
            np.nanmedian(running[covered])) >= SPEC_LARGE_BATCH
        spec_src = "launch" if _spec_tokens(launch) is not None else (
            "metrics" if spec_k else "unknown")
        if findings["spec_decode"].severity == "warning":
            recs["spec"] = Recommendation(
                "--speculative-config", spec_k, spec_src, None, "off",
                f"mean acceptance length {spec_len:.2f} is below {SPEC_MIN_LENGTH}: drafting "
                "costs more than it saves" if math.isfinite(spec_len)
                else f"acceptance rate {spec_rate:.1%} is very low",
                "higher output tok/s and lower ITL without the wasted draft work",
                "high" if tot.get("spec_drafts", 0) >= 1000 else "medium", ("spec_decode",))
        elif (math.isfinite(spec_rate) and spec_rate < SPEC_LOW_RATE and spec_k and spec_k > 1
              ) or (big_batch and spec_k and spec_k > 1):
            target_k = max(1, min(spec_k - 1, math.ceil(spec_len - 1.0)
                                  if math.isfinite(spec_len) else spec_k - 1))
            recs["spec"] = Recommendation(
                "--speculative-config num_speculative_tokens", spec_k, spec_src, target_k,
                "down",
                (f"acceptance rate {spec_rate:.0%}: later draft positions are rarely "
                 "accepted" if spec_rate < SPEC_LOW_RATE else
                 "large running batches: speculation competes with batching"),
                "less wasted draft work per step", "medium", ("spec_decode",))

    if "seqs_down" in recs and "seqs_up" in recs:  # pragma: no cover - excluded above
        del recs["seqs_up"]
    if "gmu_up" in recs and "seqs_down" in recs:
        conflicts.append("--max-num-seqs down and --gpu-memory-utilization up both treat the "
                         "full KV cache; apply the memory change first (it keeps throughput), "
                         "then lower max-num-seqs if preemptions continue")

    out = list(recs.values())
    if not out:
        healthy = []
        if "kv_saturated_with_queue" not in findings:
            healthy.append("no full KV cache with a queue")
        if "preemptions" not in findings:
            healthy.append("no preemptions")
        if "ttft_slo_breach" not in findings and "ttft_p99" not in " ".join(missing):
            healthy.append(f"TTFT p99 within {slo.ttft_p99_seconds:g}s")
        if "itl_slo_breach" not in findings:
            healthy.append(f"ITL p99 within {slo.itl_p99_seconds * 1000:g}ms")
        out.append(Recommendation(
            None, None, "unknown", None, "none",
            "no change: " + (", ".join(healthy) if healthy else "no rule matched"),
            "none", "high" if not missing else "medium",
            tuple(f for f in ("output_throughput", "over_provisioned", "gpu_utilization")
                  if f in findings)))
    return Analysis(tuple(findings.values()), tuple(out), tuple(conflicts), tuple(missing),
                    tuple(skipped))


# -- report --------------------------------------------------------------------------------


def suggest(source: Any, window: Window, config: Config | None = None,
            selector: str = "", retention: float | None = None,
            now: float | None = None) -> dict[str, Any]:
    """Run suggest over ``window`` and return the JSON report (see README "suggest JSON")."""
    cfg = config or Config()
    selector = validate_selector(selector)
    targets = collect(source, window, selector)
    notes: list[str] = []
    if retention is not None and window.seconds > retention:
        notes.append(f"the window ({format_duration(window.seconds)}) is longer than the "
                     f"store's retention ({format_duration(retention)}); older data is gone")
    first = min((float(td.grid[np.flatnonzero(_present(td))[0]]) for td in targets
                 if _present(td).any()), default=window.start)
    if first > window.start + window.rate_window + window.step:
        notes.append(f"history starts at {iso(first)}: only "
                     f"{format_duration(max(0.0, window.end - first))} of the requested "
                     f"{format_duration(window.seconds)} has data")
    report_targets = []
    all_findings, all_recs, all_conflicts = [], [], []
    partial = bool(notes)
    for td in targets:
        seg_reports = []
        for k, seg in enumerate(td.segments):
            an = analyze(td, cfg.slo, cfg.launch, window.step, cfg.cost.dollars_per_hour, seg)
            seg_reports.append((k, seg, an))
        _, last_seg, last = seg_reports[-1]
        fmap = {f.id: f for f in last.findings}
        tnotes = list(td.notes)
        if len(td.segments) > 1:
            tnotes.append(
                f"window split into {len(td.segments)} parts by configuration: "
                + "; ".join(s.reason for s in td.segments[1:])
                + f". Recommendations use the last part (since {iso(last_seg.start)}), the "
                "flags running now")
        grid = td.grid
        present = _present(td)
        cov = float(present.sum()) * window.step
        if cov < 0.95 * window.seconds:
            tnotes.append(f"data covers {format_duration(cov)} of the "
                          f"{format_duration(window.seconds)} window")
        t_partial = bool(last.missing) or cov < 0.95 * window.seconds or bool(td.notes)
        partial = partial or t_partial
        labels = dict(td.labels)
        seg_json = []
        for k, seg, an in seg_reports:
            seg_json.append({
                "index": k, "start": iso(seg.start), "end": iso(seg.end),
                "config": dict(seg.config), "reason": seg.reason,
                "findings": [f.to_json() for f in an.findings],
            })
        for f in last.findings:
            all_findings.append({"target": labels, **f.to_json()})
        for r in last.recommendations:
            all_recs.append({"target": labels, **r.to_json(fmap)})
        for c in last.conflicts:
            all_conflicts.append({"target": labels, "resolution": c})
        report_targets.append({
            "labels": labels,
            "partial": t_partial,
            "missing": list(last.missing),
            "skipped": list(last.skipped),
            "notes": tnotes,
            "segments": seg_json,
            "coverage_seconds": cov,
            "window_totals": {k: _clean(v) for k, v in sorted(td.totals.items())},
            "workload": td.workload,
            "first_sample": iso(float(grid[np.flatnonzero(present)[0]]))
            if present.any() else None,
        })
    workload = report_targets[0]["workload"] if len(report_targets) == 1 else fingerprint(
        source, window.start, window.end, selector)
    return {
        "version": REPORT_VERSION,
        "generated_at": iso(now if now is not None else datetime.now(UTC).timestamp()),
        "source": source.description,
        "selector": selector,
        "partial": partial,
        "window": {
            "since": window.since, "start": iso(window.start), "end": iso(window.end),
            "seconds": window.seconds, "step_seconds": window.step,
            "rate_window_seconds": window.rate_window, "notes": notes,
        },
        "slo": {"ttft_p99_seconds": cfg.slo.ttft_p99_seconds,
                "itl_p99_seconds": cfg.slo.itl_p99_seconds},
        "findings": all_findings,
        "recommendations": all_recs,
        "conflicts": all_conflicts,
        "targets": report_targets,
        "workload": workload,
    }


def _present(td: TargetData) -> np.ndarray:
    return np.isfinite(td.get("running")) | np.isfinite(td.get("kv_cache_usage"))


def run_suggest(config: Config | None, since: str, until: str | None = None,
                prometheus: str | None = None, selector: str | None = None,
                now: float | None = None, store: Any = None) -> dict[str, Any]:
    """What ``tuner suggest`` does: open the source, build the window, run suggest."""
    from tuner.source import LocalSource, PrometheusSource

    now = now if now is not None else datetime.now(UTC).timestamp()
    window = make_window(since, until, now)
    sel = validate_selector(selector)
    cfg = config or Config()
    url = prometheus or (cfg.prometheus_url if config is not None and store is None else None)
    if url:
        src: Any = PrometheusSource(url)
        src.check()
        return suggest(src, window, cfg, sel, now=now)
    own = store is None
    if own:
        from tuner.store import Store

        if not cfg.store.path.exists():
            raise SuggestError(f"store {cfg.store.path} does not exist (has `tuner run` "
                               "scraped anything yet?); or give --prometheus URL")
        store = Store(cfg.store.path, retention=cfg.store.retention, read_only=True)
    try:
        return suggest(LocalSource(store), window, cfg, sel,
                       retention=cfg.store.retention, now=now)
    finally:
        if own:
            store.close()


def run_scheduled_suggest(config: Config, store: Any, now: float) -> dict[str, Any]:
    """One scheduled run over ``config.suggest.since``; keeps the last ``keep`` reports.

    The report is stored as a ``suggest_report`` document keyed by its end time. A run
    that cannot produce a report (e.g. no data yet) stores an error report instead, so
    the schedule never raises into the scheduler.
    """
    from tuner.source import LocalSource

    window = make_window(format_duration(config.suggest.since), None, now)
    try:
        report = suggest(LocalSource(store), window, config,
                         retention=config.store.retention, now=now)
    except TunerError as exc:
        report = {"version": REPORT_VERSION, "generated_at": iso(now), "error": str(exc),
                  "window": {"start": iso(window.start), "end": iso(window.end)}}
    key = iso(now)
    store.put_document("suggest_report", key, report, ts=now)
    docs = store.documents("suggest_report")
    excess = len(docs) - config.suggest.keep
    if excess > 0:
        store.delete_documents("suggest_report", [k for k, _, _ in docs[:excess]])
    return report


def latest_reports(store: Any) -> list[dict[str, Any]]:
    """Stored scheduled reports, newest first."""
    return [body for _, _, body in reversed(store.documents("suggest_report"))]




def check_arguments(since: str, until: str | None, selector: str | None) -> None:
    """Validate --since/--until/--selector before anything is opened (raises SuggestError)."""
    make_window(since, until, datetime.now(UTC).timestamp())
    validate_selector(selector)
