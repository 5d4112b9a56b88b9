"""The ``tuner suggest`` report, the command, and the scheduled runs in the daemon.

``suggest`` collects the window (``tuner.suggest.window``), analyzes each server's segments
(``tuner.suggest.analysis``; a window in which the server restarted with different flags is
split by configuration, and recommendations come from the last part, the flags running now)
and assembles the stable JSON report (README "suggest JSON"). ``run_suggest`` is what the
command does: open the source (the store or a Prometheus), build the window, run suggest.
``run_scheduled_suggest`` stores a report as a ``suggest_report`` document and keeps the
last N.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.config import Config
from tuner.errors import SuggestError, TunerError
from tuner.source import LocalSource, PrometheusSource, Source
from tuner.suggest.analysis import analyze
from tuner.suggest.records import Analysis, clean_number
from tuner.suggest.view import check_launch
from tuner.suggest.window import (
    Segment,
    TargetData,
    Window,
    collect,
    make_window,
    validate_selector,
)
from tuner.units import format_duration
from tuner.workload import fingerprint, iso

if TYPE_CHECKING:
    from tuner.store import Store

REPORT_VERSION = 1


def suggest(source: Source, window: Window, config: Config | None = None,
            selector: str = "", retention: float | None = None,
            now: float | None = None) -> dict[str, Any]:
    """Run suggest over ``window`` and return the JSON report (see README "suggest JSON")."""
    cfg = config or Config()
    selector = validate_selector(selector)
    check_launch(cfg.launch)
    targets = collect(source, window, selector)
    notes = _window_notes(targets, window, retention)
    parts = [_target_report(td, window, cfg) for td in targets]
    workload = parts[0].json["workload"] if len(parts) == 1 else fingerprint(
        source, window.start, window.end, selector)
    return {
        "version": REPORT_VERSION,
        "generated_at": iso(now if now is not None else datetime.now(UTC).timestamp()),
        "source": source.description,
        "selector": selector,
        "partial": bool(notes) or any(p.json["partial"] for p in parts),
        "window": {
            "since": window.since, "start": iso(window.start), "end": iso(window.end),
            "seconds": window.seconds, "step_seconds": window.step,
            "rate_window_seconds": window.rate_window, "notes": notes,
        },
        "slo": {"ttft_p99_seconds": cfg.slo.ttft_p99_seconds,
                "itl_p99_seconds": cfg.slo.itl_p99_seconds},
        "findings": [f for p in parts for f in p.findings],
        "recommendations": [r for p in parts for r in p.recommendations],
        "conflicts": [c for p in parts for c in p.conflicts],
        "targets": [p.json for p in parts],
        "workload": workload,
    }


def _present(td: TargetData) -> np.ndarray:
    """Steps with scheduler data (running or KV usage)."""
    return np.isfinite(td.get("running")) | np.isfinite(td.get("kv_cache_usage"))


def _window_notes(targets: list[TargetData], window: Window,
                  retention: float | None) -> list[str]:
    """What limits the whole window: the store's retention, history starting late."""
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
    return notes


@dataclass(frozen=True)
class _TargetReport:
    """One server's part of the report: its ``targets`` entry and its top-level items."""

    json: dict[str, Any]
    findings: list[dict[str, Any]]
    recommendations: list[dict[str, Any]]
    conflicts: list[dict[str, Any]]


def _target_report(td: TargetData, window: Window, cfg: Config) -> _TargetReport:
    """Analyze every segment of one server; the last one (the flags running now) decides."""
    analyses: list[tuple[Segment, Analysis]] = [
        (seg, analyze(td, cfg.slo, cfg.launch, window.step, cfg.cost.dollars_per_hour, seg))
        for seg in td.segments]
    last_seg, last = analyses[-1]
    fmap = {f.id: f for f in last.findings}
    notes = list(td.notes)
    if len(td.segments) > 1:
        notes.append(
            f"window split into {len(td.segments)} parts by configuration: "
            + "; ".join(s.reason for s in td.segments[1:])
            + f". Recommendations use the last part (since {iso(last_seg.start)}), the "
            "flags running now")
    present = _present(td)
    cov = float(present.sum()) * window.step
    if cov < 0.95 * window.seconds:
        notes.append(f"data covers {format_duration(cov)} of the "
                     f"{format_duration(window.seconds)} window")
    labels = dict(td.labels)
    target = {
        "labels": labels,
        "partial": bool(last.missing) or cov < 0.95 * window.seconds or bool(td.notes),
        "missing": list(last.missing),
        "skipped": list(last.skipped),
        "notes": notes,
        "segments": [{
            "index": k, "start": iso(seg.start), "end": iso(seg.end),
            "config": dict(seg.config), "reason": seg.reason,
            "findings": [f.to_json() for f in an.findings],
        } for k, (seg, an) in enumerate(analyses)],
        "coverage_seconds": cov,
        "window_totals": {k: clean_number(v) for k, v in sorted(td.totals.items())},
        "workload": td.workload,
        "first_sample": iso(float(td.grid[np.flatnonzero(present)[0]]))
        if present.any() else None,
    }
    return _TargetReport(
        target,
        [{"target": labels, **f.to_json()} for f in last.findings],
        [{"target": labels, **r.to_json(fmap)} for r in last.recommendations],
        [{"target": labels, "resolution": c} for c in last.conflicts])


def run_suggest(config: Config | None, since: str, until: str | None = None,
                prometheus: str | None = None, selector: str | None = None,
                now: float | None = None, store: Store | None = None) -> dict[str, Any]:
    """What ``tuner suggest`` does: open the source, build the window, run suggest."""
    now = now if now is not None else datetime.now(UTC).timestamp()
    window = make_window(since, until, now)
    sel = validate_selector(selector)
    cfg = config or Config()
    url = prometheus or (cfg.prometheus_url if config is not None and store is None else None)
    if url:
        prom = PrometheusSource(url, http=cfg.prometheus_http)
        prom.check()
        return suggest(prom, window, cfg, sel, now=now)
    if store is not None:
        return suggest(LocalSource(store), window, cfg, sel, retention=cfg.store.retention,
                       now=now)
    from tuner.store import Store  # pandas: only when the local store is read

    if not cfg.store.path.exists():
        raise SuggestError(f"store {cfg.store.path} does not exist (has `tuner run` "
                           "scraped anything yet?); or give --prometheus URL")
    with Store(cfg.store.path, retention=cfg.store.retention, read_only=True) as own:
        return suggest(LocalSource(own), window, cfg, sel, retention=cfg.store.retention,
                       now=now)


def run_scheduled_suggest(config: Config, store: Store, now: float) -> dict[str, Any]:
    """One scheduled run over ``config.suggest.since``; keeps the last ``keep`` reports.

    The report is stored as a ``suggest_report`` document keyed by its end time. A run
    that cannot produce a report (e.g. no data yet) stores an error report instead, so
    the schedule never raises into the scheduler.
    """
    window = make_window(format_duration(config.suggest.since), None, now)
    try:
        report = suggest(LocalSource(store), window, config,
                         retention=config.store.retention, now=now)
    except TunerError as exc:
        report = {"version": REPORT_VERSION, "generated_at": iso(now), "error": str(exc),
                  "window": {"start": iso(window.start), "end": iso(window.end)}}
    store.put_document("suggest_report", iso(now), report, ts=now)
    docs = store.documents("suggest_report")
    excess = len(docs) - config.suggest.keep
    if excess > 0:
        store.delete_documents("suggest_report", [k for k, _, _ in docs[:excess]])
    return report


def latest_reports(store: Store) -> list[dict[str, Any]]:
    """Stored scheduled reports, newest first."""
    return [body for _, _, body in reversed(store.documents("suggest_report"))]


def check_arguments(since: str, until: str | None, selector: str | None) -> None:
    """Validate --since/--until/--selector before anything is opened (raises SuggestError)."""
    make_window(since, until, datetime.now(UTC).timestamp())
    validate_selector(selector)
