"""The status page at ``/``: collect what the sidecar knows, render it, serve it and its plots.

``StatusPage`` is given where things are (``PageSources``: the config, the store's path,
and callables for the daemon's in-memory state: alerts and the tuning window) and answers
two routes: ``/`` (the page, ``tuner.web.page_html``) and ``/ui/tune/<run>/<plot>.png`` (the
last tune report's plots, only the known file names of a run directory under ``tune.out``).

Each collection opens the store read-only with a short busy timeout and closes it again, so
no connection is left per request thread. A store that is locked or otherwise unreadable
(another connection holds an exclusive lock, a compaction) gives a ``503`` page that says
so, with what does not need the store (alerts, tuning) still shown; never a ``500``. The
suggest report is the daemon's newest scheduled one (``suggest.schedule``) or else one the
page computes over the last hour in a background thread every ``suggest_every`` seconds,
never per request. A rendered page is reused for ``cache_seconds``; the charts (an hour at a
60 s step, aligned to the minute) are recomputed once a minute.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tuner.config import Config
from tuner.errors import StoreError, TunerError
from tuner.promql import Engine
from tuner.rules import AlertState
from tuner.signals import STATUS_SIGNALS
from tuner.status import status_from_store
from tuner.store import Store
from tuner.web.page_html import (
    PLOT_ROUTE,
    REFRESH_SECONDS,
    PageData,
    SignalChart,
    SuggestOrigin,
    SuggestView,
    TuneReport,
    TuningProgress,
    render_page,
)
from tuner.web.server import Request, Response, Route, text_response

log = logging.getLogger("tuner.web")

PLOT_NAMES = ("convergence.png", "throughput_vs_ttft.png", "objective_vs_knobs.png")
CHART_WINDOW = 3600.0  # seconds of history in each chart
CHART_STEP = 60.0
SUGGEST_WINDOW = "1h"
HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class PageSources:
    """Where the page reads from. ``alerts`` and ``tuning`` are the daemon's live state."""

    config: Config
    store_path: Path
    alerts: Callable[[], Sequence[AlertState]] = tuple
    tuning: Callable[[], TuningProgress | None] = lambda: None
    clock: Callable[[], float] = time.time


def latest_tune_run(out: Path) -> Path | None:
    """The newest run directory under ``out`` that holds a finished report (best.json)."""
    try:
        runs = [p for p in out.iterdir() if p.is_dir() and (p / "best.json").is_file()]
    except OSError:
        return None
    return max(runs, key=lambda p: ((p / "best.json").stat().st_mtime, p.name), default=None)


def read_tune_report(run: Path) -> TuneReport:
    """best.json, report.md and the plots present in one run directory (unreadable → empty)."""
    best: dict[str, Any] | None
    try:
        best = json.loads((run / "best.json").read_text())
    except (OSError, ValueError):
        best = None
    try:
        report_md = (run / "report.md").read_text()
    except OSError:
        report_md = ""
    plots = tuple(n for n in PLOT_NAMES if (run / n).is_file())
    return TuneReport(run.name, best if isinstance(best, dict) else None, report_md, plots)


def store_busy_reason(exc: Exception) -> str:
    """A reader's words for why the store could not be read."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return (f"it is locked by another connection ({text}); "
                "a compaction or a backup may be running")
    return text


class StatusPage:
    """The page and its plot route; register ``routes()`` on the sidecar's ``WebServer``."""

    def __init__(self, sources: PageSources, *, cache_seconds: float = 5.0,
                 suggest_every: float = 900.0, busy_timeout: float = 1.0) -> None:
        self.sources = sources
        self.cache_seconds = cache_seconds
        self.suggest_every = suggest_every
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._cached: tuple[float, Response] | None = None
        self._suggest_pool = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="tuner-page-suggest")
        self._suggest_future: Future[SuggestView] | None = None
        self._computed: SuggestView | None = None
        self._computed_at: float | None = None
        # charts are at a 60 s step aligned to the minute: reuse them within the minute
        self.chart_cache = True
        self._charts: tuple[float, dict[str, tuple[SignalChart, ...]]] | None = None

    def routes(self) -> list[Route]:
        return [Route("/", self.index), Route(PLOT_ROUTE, self.plot)]

    def close(self) -> None:
        """Stop the background suggest thread (a run in flight is left to finish)."""
        self._suggest_pool.shutdown(wait=False, cancel_futures=True)

    # -- the page -------------------------------------------------------------------------

    def index(self, _request: Request) -> Response:
        with self._lock:
            now = self.sources.clock()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            data = self.collect(now)
            status = 503 if data.store_error else 200
            headers: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"),)
            if data.store_error:
                headers += (("Retry-After", str(REFRESH_SECONDS)),)
            response = Response(status, render_page(data).encode(), HTML, headers)
            self._cached = None if data.store_error else (now, response)
            return response

    def collect(self, now: float) -> PageData:
        """Everything the page shows at ``now`` (store errors become ``store_error``)."""
        start = now - CHART_WINDOW
        alerts: tuple[AlertState, ...] = ()
        alerts_error = ""
        try:
            alerts = tuple(self.sources.alerts())
        except Exception as exc:  # the page must render even if the rule state cannot be read
            log.exception("status page: reading alerts failed")
            alerts_error = f"alerts unavailable: {exc}"
        tuning: TuningProgress | None = None
        try:
            tuning = self.sources.tuning()
        except Exception:  # as for alerts: one section missing, not a 500
            log.exception("status page: reading the tuning window failed")
        run = latest_tune_run(self.sources.config.tune.out)
        tune_report = read_tune_report(run) if run is not None else None
        base = PageData(now=now, chart_start=start, alerts=alerts, alerts_error=alerts_error,
                        tuning=tuning, tune_report=tune_report)
        try:
            store = Store(self.sources.store_path, read_only=True,
                          busy_timeout=self.busy_timeout)
        except StoreError as exc:
            return replace(base, store_error=store_busy_reason(exc),
                           suggest=self._computed_view(now, None, refresh=False))
        try:
            status = status_from_store(self.sources.config, store, now)
            charts = self._charts_at(store, status.signals, now)
            scheduled = _latest_scheduled(store)
        except (StoreError, sqlite3.Error, TunerError) as exc:
            return replace(base, store_error=store_busy_reason(exc),
                           suggest=self._computed_view(now, None, refresh=False))
        finally:
            store.close()
        return replace(base, status=status, charts=charts,
                       suggest=self._computed_view(now, scheduled))

    def _charts_at(self, store: Store, now_values: dict[str, dict[str, float]],
                   now: float) -> dict[str, tuple[SignalChart, ...]]:
        """The last hour of each signal, recomputed once a minute; the value now (evaluated at
        every render) is each chart's last point."""
        end = now // CHART_STEP * CHART_STEP
        if not self.chart_cache or self._charts is None or self._charts[0] != end:
            self._charts = (end, _charts(store, end - CHART_WINDOW, end))
        history = self._charts[1]
        out: dict[str, tuple[SignalChart, ...]] = {}
        for inst in sorted(set(history) | set(now_values)):
            past = {c.signal.name: c.points for c in history.get(inst, ())}
            values = now_values.get(inst, {})
            out[inst] = tuple(
                SignalChart(sig, values.get(sig.name),
                            past.get(sig.name, ()) + _point(now, values.get(sig.name)))
                for sig in STATUS_SIGNALS if sig.name in past or sig.name in values)
        return out

    # -- suggest ------------------------------------------------------------------------

    def _computed_view(self, now: float, scheduled: dict[str, Any] | None,
                       refresh: bool = True) -> SuggestView:
        """The scheduled report if there is one, else the page's own, refreshed when stale
        (not while the store cannot be read: that run would only report the lock)."""
        if scheduled is not None:
            return SuggestView(SuggestOrigin.SCHEDULED, scheduled)
        fut = self._suggest_future
        if fut is not None and fut.done():
            self._suggest_future = None
            if not fut.cancelled():
                self._computed = fut.result()  # _compute_suggest catches everything
        stale = self._computed_at is None or now - self._computed_at >= self.suggest_every
        if refresh and stale and self._suggest_future is None:
            self._computed_at = now
            with suppress(RuntimeError):  # closed: the daemon is stopping
                self._suggest_future = self._suggest_pool.submit(self._compute_suggest, now)
        return self._computed or SuggestView(SuggestOrigin.PENDING)

    def _compute_suggest(self, now: float) -> SuggestView:
        from tuner.source import LocalSource
        from tuner.suggest import make_window, suggest

        cfg = self.sources.config
        try:
            store = Store(self.sources.store_path, read_only=True, busy_timeout=5.0)
        except StoreError as exc:
            return SuggestView(SuggestOrigin.COMPUTED, error=str(exc))
        try:
            report = suggest(LocalSource(store), make_window(SUGGEST_WINDOW, None, now), cfg,
                             retention=cfg.store.retention, now=now)
            return SuggestView(SuggestOrigin.COMPUTED, report)
        except (TunerError, sqlite3.Error) as exc:
            return SuggestView(SuggestOrigin.COMPUTED, error=str(exc))
        except Exception as exc:  # a bug in suggest must not break the page
            log.exception("status page: suggest failed")
            return SuggestView(SuggestOrigin.COMPUTED, error=f"suggest failed: {exc}")
        finally:
            store.close()

    # -- plots --------------------------------------------------------------------------

    def plot(self, request: Request) -> Response:
        """``/ui/tune/<run>/<plot>.png``: a plot of a run under tune.out (known names only)."""
        rest = request.path[len(PLOT_ROUTE):]
        run_name, _, name = rest.partition("/")
        out = self.sources.config.tune.out
        if (name not in PLOT_NAMES or not run_name or run_name in (".", "..")
                or "/" in run_name or "\\" in run_name):
            return text_response(404, f"no such plot: {request.path} (plots are "
                                      f"{PLOT_ROUTE}<run>/{{{','.join(PLOT_NAMES)}}})\n")
        path = out / run_name / name
        try:
            body = path.read_bytes()
        except OSError:
            return text_response(404, f"no such plot: {request.path}\n")
        return Response(200, body, "image/png", (("Cache-Control", "max-age=300"),))


def _point(ts: float, value: float | None) -> tuple[tuple[float, float], ...]:
    return () if value is None else ((ts, value),)


def _latest_scheduled(store: Store) -> dict[str, Any] | None:
    from tuner.suggest import latest_reports

    reports = latest_reports(store)
    return reports[0] if reports else None


def _charts(store: Store, start: float, end: float) -> dict[str, tuple[SignalChart, ...]]:
    """Each status signal of each instance over [start, end] as chart points."""
    engine = Engine(store)
    series: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {}
    for sig in STATUS_SIGNALS:
        for s in engine.range(sig.expr, start, end, CHART_STEP):
            pts = tuple(zip(s.timestamps.tolist(), s.values.tolist(), strict=True))
            series.setdefault(s.labels.get("instance", ""), {})[sig.name] = pts
    return {
        inst: tuple(SignalChart(sig, None, by_name[sig.name])
                    for sig in STATUS_SIGNALS if sig.name in by_name)
        for inst, by_name in sorted(series.items())
    }
