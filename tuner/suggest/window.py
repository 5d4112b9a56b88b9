"""The window ``tuner suggest`` analyzes, and collecting it from a history source.

``make_window`` parses ``--since``/``--until`` into a ``Window`` evaluated at a step
(``choose_step``: at most 300 points, at least 5 s). ``collect`` reads the window from a
``tuner.source.Source``: the ``WINDOW_SIGNALS`` of ``tuner.signals`` as range queries,
whole-window totals as instant ``increase`` queries, ``vllm:cache_config_info`` and
``process_start_time_seconds`` for the configuration and restarts, refusals and failures
(``SUGGEST_RANGE_SIGNALS``; admission rejections by reason, unknown reasons kept), and the workload
fingerprint (``tuner.workload``). Series are grouped per server (``instance``), carrying
``model_name``/``namespace``/``deployment``/``pod`` when present; DCGM GPU series are
attributed by ``pod`` (Kubernetes) or, with a single server, to that server. The result is
one ``TargetData`` per server: arrays aligned on the window's grid (NaN where no data),
totals, and the window split into ``Segment``s at configuration changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tuner.errors import SuggestError
from tuner.signals import (
    ADMISSION_REJECTIONS_BY_REASON,
    SUGGEST_RANGE_SIGNALS,
    VLLM_GROUP_BY,
    WINDOW_SIGNALS,
    WINDOW_TOTALS,
    render_signal,
    split_matchers,
)
from tuner.source import Source
from tuner.units import format_duration, parse_duration
from tuner.workload import fingerprint, iso

DISPLAY_LABELS = ("model_name", "namespace", "deployment", "pod", "instance")
_CONFIG_IGNORED = {"__name__", "instance", "job", "model_name", "engine", "namespace",
                   "deployment", "pod", "container", "service", "endpoint"}


def clock(ts: float) -> str:
    """``HH:MM`` (UTC) of a unix time, as findings and notes print it."""
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


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
    #: Admission rejections over the window by ``reason`` (unknown reasons kept).
    rejections_by_reason: Mapping[str, float] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        arr = self.series.get(name)
        return arr if arr is not None else np.full(len(self.grid), np.nan)


def _align(grid: np.ndarray, step: float, ts: np.ndarray, vals: np.ndarray) -> np.ndarray:
    out = np.full(len(grid), np.nan)
    idx = np.rint((ts - grid[0]) / step).astype(np.int64)
    ok = (idx >= 0) & (idx < len(grid))
    out[idx[ok]] = vals[ok]
    return out


def collect(source: Source, window: Window, selector: str = "") -> list[TargetData]:
    """Read the window for every selected vLLM server; raises SuggestError if there is none."""
    # the local store reads each metric of the window once; Prometheus ignores the hint
    source.cache_window(window.start - window.rate_window - 600.0, window.end)
    read = _read_series(source, window, selector)
    instances = sorted(i for i in read.by_instance if i in read.display)
    if not instances:
        raise _no_data(source, window, selector)
    totals, resets = _read_totals(source, window, selector)
    by_reason = _read_rejections(source, window, selector)
    configs = _read_configs(source, window, selector)
    grid = window.grid()
    targets = []
    for inst in instances:
        series = dict(read.by_instance[inst])
        gpu_series, notes = _gpu_series(read, inst, len(instances))
        series.update(gpu_series)
        segments, restarts = _segments(grid, window, configs.get(inst, []),
                                       series.get("process_start_time"),
                                       resets.get(inst, 0.0))
        wl = fingerprint(source, window.start, window.end, _with_instance(selector, inst))
        targets.append(TargetData(
            labels=read.display[inst], grid=grid, series=series,
            totals=totals.get(inst, {}), segments=segments, restarts=restarts, workload=wl,
            notes=notes, rejections_by_reason=by_reason.get(inst, {})))
    return targets


@dataclass(frozen=True)
class _Read:
    """The window's range signals: per vLLM instance, display labels, DCGM per (ns, pod)."""

    by_instance: dict[str, dict[str, np.ndarray]]
    display: dict[str, dict[str, str]]
    gpu: dict[tuple[str, str], dict[str, np.ndarray]]


def _read_series(source: Source, window: Window, selector: str) -> _Read:
    grid = window.grid()
    w = format_duration(window.rate_window)
    read = _Read({}, {}, {})
    for sig in WINDOW_SIGNALS:
        expr = render_signal(sig, selector, VLLM_GROUP_BY, w)
        for s in source.range(expr, window.start, window.end, window.step):
            values = _align(grid, window.step, s.timestamps, s.values)
            if "DCGM_" in sig.expr:
                key = (s.labels.get("namespace", ""), s.labels.get("pod", ""))
                read.gpu.setdefault(key, {})[sig.name] = values
                continue
            inst = s.labels.get("instance", "")
            read.by_instance.setdefault(inst, {})[sig.name] = values
            if sig.name != "process_start_time":
                d = read.display.setdefault(inst, {})
                d.update({k: s.labels[k] for k in DISPLAY_LABELS if k in s.labels})
    for sig in SUGGEST_RANGE_SIGNALS:  # of the vLLM servers found above only
        expr = render_signal(sig, selector, VLLM_GROUP_BY, w)
        for s in source.range(expr, window.start, window.end, window.step):
            inst = s.labels.get("instance", "")
            if inst in read.by_instance:
                read.by_instance[inst][sig.name] = _align(grid, window.step, s.timestamps,
                                                          s.values)
    return read


def _no_data(source: Source, window: Window, selector: str) -> SuggestError:
    rng = source.time_range()
    held = f"it holds data from {iso(rng[0])} to {iso(rng[1])}" if rng else "it holds no data"
    sel = f" matching {selector}" if selector else ""
    return SuggestError(
        f"no vLLM metrics{sel} between {iso(window.start)} and {iso(window.end)} in "
        f"{source.description} ({held})")


def _read_totals(source: Source, window: Window, selector: str
                 ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Whole-window totals per instance, and counter resets per instance."""
    full_w = format_duration(window.seconds)
    totals: dict[str, dict[str, float]] = {}
    for sig in WINDOW_TOTALS:
        res = source.instant(render_signal(sig, selector, VLLM_GROUP_BY, full_w), window.end)
        for el in res.vector:
            totals.setdefault(el.labels.get("instance", ""), {})[sig.name] = float(el.value)
    resets: dict[str, float] = {}
    res = source.instant(
        f"sum by (instance) (resets(vllm:generation_tokens_total{selector}[{full_w}]))",
        window.end)
    for el in res.vector:
        resets[el.labels.get("instance", "")] = float(el.value)
    return totals, resets


def _read_rejections(source: Source, window: Window, selector: str
                     ) -> dict[str, dict[str, float]]:
    """Admission rejections over the window per instance and ``reason`` (any reason)."""
    expr = render_signal(ADMISSION_REJECTIONS_BY_REASON, selector, VLLM_GROUP_BY,
                         format_duration(window.seconds))
    out: dict[str, dict[str, float]] = {}
    for el in source.instant(expr, window.end).vector:
        if math.isfinite(el.value):
            out.setdefault(el.labels.get("instance", ""), {})[
                el.labels.get("reason", "") or "(no reason label)"] = float(el.value)
    return out


def _read_configs(source: Source, window: Window, selector: str
                  ) -> dict[str, list[tuple[dict[str, str], np.ndarray]]]:
    """Per instance: each ``vllm:cache_config_info`` label set and the steps it was present."""
    grid = window.grid()
    configs: dict[str, list[tuple[dict[str, str], np.ndarray]]] = {}
    for s in source.range(f"vllm:cache_config_info{selector}", window.start, window.end,
                          window.step):
        cfg = {k: v for k, v in s.labels.items() if k not in _CONFIG_IGNORED}
        present = np.isfinite(_align(grid, window.step, s.timestamps, s.values))
        configs.setdefault(s.labels.get("instance", ""), []).append((cfg, present))
    return configs


def _gpu_series(read: _Read, inst: str, n_instances: int
                ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The DCGM series of a server: by its pod, or the only GPUs of the only server."""
    d = read.display[inst]
    found = read.gpu.get((d.get("namespace", ""), d.get("pod", "")))
    if found is not None:
        return found, ()
    if n_instances == 1 and len(read.gpu) == 1:
        return next(iter(read.gpu.values())), ()
    if read.gpu:
        return {}, ("DCGM GPU series could not be attributed to this server "
                    "(no matching pod label); GPU rules skipped",)
    return {}, ()


def _with_instance(selector: str, instance: str) -> str:
    inner = selector.strip()[1:-1].strip().rstrip(",") if selector else ""
    extra = f'instance="{instance}"'
    return "{" + (f"{inner}, {extra}" if inner else extra) + "}"


def _config_starts(configs: Sequence[tuple[dict[str, str], np.ndarray]]
                   ) -> list[tuple[int, dict[str, str]]]:
    """Each configuration with the grid index where its series first appears, in time
    order, repeats of the previous configuration merged."""
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
    return merged


def _restart_times(grid: np.ndarray, window: Window, start_times: np.ndarray | None
                   ) -> list[float]:
    """Restarts seen as changes of ``process_start_time_seconds`` (the new start time if it
    lies in the window, else the step where the change showed)."""
    out: list[float] = []
    if start_times is None:
        return out
    prev = math.nan
    for t, v in zip(grid.tolist(), start_times.tolist(), strict=True):
        if not math.isfinite(v):
            continue
        if math.isfinite(prev) and abs(v - prev) > 0.5:
            out.append(v if window.start <= v <= t else t)
        prev = v
    return out


def _change_reason(start: float, prev_cfg: Mapping[str, str], cfg: Mapping[str, str]) -> str:
    changed = sorted(key for key in set(cfg) | set(prev_cfg) if cfg.get(key) != prev_cfg.get(key))
    diff = ", ".join(f"{key} {prev_cfg.get(key, '-')} -> {cfg.get(key, '-')}" for key in changed)
    return f"server restarted at {clock(start)} with different flags ({diff})"


def _segments(grid: np.ndarray, window: Window,
              configs: Sequence[tuple[dict[str, str], np.ndarray]],
              start_times: np.ndarray | None, resets: float
              ) -> tuple[tuple[Segment, ...], tuple[float, ...]]:
    """Split the window at configuration changes; restarts with the same flags are listed."""
    merged = _config_starts(configs)
    restart_times = _restart_times(grid, window, start_times)
    segs: list[Segment] = []
    if not merged:
        segs.append(Segment(window.start, window.end, {}, ""))
    for k, (i, cfg) in enumerate(merged):
        start = window.start if k == 0 else float(grid[i])
        end = float(grid[merged[k + 1][0]]) if k + 1 < len(merged) else window.end
        reason = _change_reason(start, merged[k - 1][1], cfg) if k > 0 else ""
        segs.append(Segment(start, end, cfg, reason))
    # restarts that did not change the configuration
    boundaries = [s.start for s in segs[1:]]
    plain = tuple(t for t in restart_times
                  if all(abs(t - b) > 2 * window.rate_window + window.step for b in boundaries))
    if not restart_times and resets > 0 and len(segs) == 1:
        # no process_start_time_seconds (e.g. filtered out): counter resets tell us
        plain = tuple([math.nan] * int(resets))
    return tuple(segs), plain
