"""The sidecar daemon: scrape targets on a schedule into the store, serve /metrics, /healthz,
the status page at ``/`` (``tuner.web.page``) and the Prometheus query API
(``tuner.web.api``) over the store.

``Daemon`` wires the pieces together with APScheduler (3.x): a scrape job every
``scrape_interval`` and a retention job every minute; other features (rule evaluation,
scheduled suggest, tuning progress) add their jobs to ``Daemon.scheduler`` and their metrics
to ``Daemon.registry``. What a scrape stores (its samples, ``up``, ``scrape_duration_seconds``,
``scrape_samples_scraped``, stale markers, the retry buffer for failed writes) is
``tuner.ingest``, the same step every canary trial uses; the daemon counts what it reports
in its own ``tuner_*`` metrics.

``run_daemon`` runs until SIGTERM or SIGINT and returns an exit code.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tuner.config import Config
from tuner.daemon.alerting import Alerting
from tuner.daemon.drift import DriftWatch
from tuner.daemon.triggers import now_dt, suggest_trigger
from tuner.daemon.tuning import TuningWindow
from tuner.errors import StoreError, TunerError
from tuner.exposition import MetricMetadata
from tuner.ingest import Ingest, IngestReport
from tuner.promql import Engine, QueryLimits
from tuner.scrape import ScrapeOutcome, scrape_all, target_clients
from tuner.store import Store
from tuner.web import (
    PageSources,
    PrometheusApi,
    Request,
    Response,
    Route,
    StatusPage,
    TuningProgress,
    WebConfigWatcher,
    WebServer,
    text_response,
)

log = logging.getLogger("tuner.daemon")


class DaemonMetrics:
    """The sidecar's own metrics, on a private registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.scrape_duration = Histogram(
            "tuner_scrape_duration_seconds",
            "Time to fetch, parse and store one target's scrape.",
            ["target"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.samples_stored = Counter(
            "tuner_samples_stored", "Samples written to the store.", registry=registry
        )
        self.target_up = Gauge(
            "tuner_target_up",
            "1 if the last scrape of the target succeeded.",
            ["target"],
            registry=registry,
        )
        self.last_scrape = Gauge(
            "tuner_target_last_scrape_timestamp_seconds",
            "Time of the last scrape.",
            ["target"],
            registry=registry,
        )
        self.errors = Counter(
            "tuner_errors",
            "Errors by kind (connection, timeout, http_status, oversized, malformed, "
            "duplicate_series, store).",
            ["kind", "target"],
            registry=registry,
        )
        self.store_bytes = Gauge("tuner_store_bytes", "Bytes used by the store.", registry=registry)
        self.retry_buffer = Gauge(
            "tuner_store_retry_batches",
            "Scrapes waiting to be written after a store error.",
            registry=registry,
        )
        self.dropped = Counter(
            "tuner_samples_dropped",
            "Samples dropped because the store retry buffer was full.",
            registry=registry,
        )


class Daemon:
    """Scrape → store loop plus the sidecar's HTTP endpoints. Start with ``start()``."""

    def __init__(
        self,
        config: Config,
        store: Store | None = None,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        # a bad suggest.schedule refuses to start before anything is opened
        self._suggest_trigger = suggest_trigger(config) if config.suggest.schedule else None
        self.tuning = TuningWindow(config) if config.tune.schedule else None
        security = WebConfigWatcher(config.web_config_file)  # a bad web config refuses to start
        self.store = store or Store(
            config.store.path, config.store.retention, config.store.max_bytes, clock=clock
        )
        self.client = client  # one client for every target (tests), else one per http config
        self.clients = target_clients(config.targets, max(4, 2 * len(config.targets))) if (
            client is None) else {}
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(config.targets))))
        self.ingest = Ingest(self.store)
        self._lock = threading.Lock()
        host, port = config.listen_host_port
        self.web = WebServer(host, port, [
            Route("/metrics", self._metrics_endpoint),
            Route("/healthz", self._healthz_endpoint),
        ], security, open_paths=("/healthz",) if config.healthz_open else ())
        self._started = False
        self.last_cycle: float | None = None
        self.stopped = threading.Event()
        try:
            self.alerting = Alerting(config, self.store, self.registry, clock,
                                     scheme=self.web.scheme)
        except TunerError:
            self.store.close()  # bad rules: refuse to start
            raise
        q = config.query
        self._metadata: dict[str, tuple[MetricMetadata, ...]] = {}  # target -> newest scrape's
        self.api = PrometheusApi(
            self.store, limits=QueryLimits(q.timeout, q.max_samples),
            lookback_delta=q.lookback_delta, rules=self.alerting, metadata=self,
            evaluation_interval=config.evaluation_interval, max_concurrency=q.max_concurrency,
            worker_store=self.store.path, clock=clock)
        self.web.add_routes(self.api.routes())
        self.drift: DriftWatch | None = None
        if config.drift.enabled:
            self.drift = DriftWatch(config, Engine(reader=self.store), self.alerting.notifier,
                                    f"http://{config.listen}", clock)
            self.alerting.external.append(self.drift.alerts)
            if self.tuning is not None:
                self.tuning.live_workload = lambda: self.drift.live_workload if self.drift else None
        self.page = StatusPage(PageSources(config, self.store.path, self.alerting.current_alerts,
                                           self._tuning_progress, clock))
        self.web.add_routes(self.page.routes())

    # -- one scrape cycle ------------------------------------------------------------

    def scrape_once(self) -> list[ScrapeOutcome]:
        """Scrape every target once and store what came back (and ``up``) — never raises."""
        outcomes = scrape_all(
            self.client if self.client is not None else self.clients,
            self.config.targets,
            self.config.scrape_timeout,
            self.config.max_exposition_bytes,
            self.clock,
            self._pool,
        )
        with self._lock:
            for outcome in outcomes:
                self._record(outcome)
            self._count(self.ingest.ingest(outcomes))
            self.last_cycle = self.clock()
        return outcomes

    def _record(self, outcome: ScrapeOutcome) -> None:
        """The daemon's own metrics of one scrape (what was stored is ``Ingest``'s job)."""
        target, m = outcome.target, self.metrics
        if outcome.error_kind:
            m.errors.labels(outcome.error_kind, target.name).inc()
            log.warning("scrape %s failed (%s): %s", target.name, outcome.error_kind, outcome.error)
        if outcome.duplicates:
            m.errors.labels("duplicate_series", target.name).inc(outcome.duplicates)
        if outcome.up:
            self._metadata[target.name] = outcome.metadata
        m.target_up.labels(target.name).set(1 if outcome.up else 0)
        m.last_scrape.labels(target.name).set(outcome.ts)
        m.scrape_duration.labels(target.name).observe(outcome.duration)

    def _count(self, report: IngestReport) -> None:
        """The daemon's metrics of what ingest wrote, dropped and kept to retry."""
        m = self.metrics
        for failure in report.failures:
            m.errors.labels("store", failure.target).inc()
            log.error("%s", failure.message)
        m.samples_stored.inc(report.stored)
        m.dropped.inc(report.dropped)
        m.retry_buffer.set(report.pending)

    def metadata(self) -> dict[str, list[dict[str, str]]]:
        """TYPE/HELP/UNIT of every family in each target's newest scrape (``/api/v1/metadata``)."""
        out: dict[str, list[dict[str, str]]] = {}
        for metas in list(self._metadata.values()):
            for meta in metas:
                entry = {"type": meta.type, "help": meta.help, "unit": meta.unit}
                if entry not in out.setdefault(meta.name, []):
                    out[meta.name].append(entry)
        return out

    def housekeeping(self) -> None:
        """Retention, size bound and WAL checkpoint; refreshes the store-size gauge."""
        try:
            with self._lock:
                self.store.apply_retention()
                self.store.checkpoint()
            self.metrics.store_bytes.set(self.store.size_bytes())
        except (StoreError, OSError) as exc:
            self.metrics.errors.labels("store", "").inc()
            log.error("housekeeping: %s", exc)

    # -- lifecycle ------------------------------------------------------------------

    def healthy(self) -> bool:
        """Healthy while the scheduler runs and a scrape cycle finished recently."""
        if not self.scheduler.running:
            return False
        if not self.config.targets:
            return True
        if self.last_cycle is None:
            return True  # starting up
        return self.clock() - self.last_cycle < 3 * self.config.scrape_interval + 10

    def _add_job(self, func: Callable[[], object], trigger: Any, job_id: str,
                 **options: Any) -> None:
        """Schedule ``func``: never two runs of a job at once, missed runs collapse into one."""
        self.scheduler.add_job(func, trigger, id=job_id, max_instances=1, coalesce=True,
                               **options)

    def _every(self, func: Callable[[], object], seconds: float, job_id: str) -> None:
        """Run ``func`` now and every ``seconds``; a run late by under one period still runs."""
        self._add_job(func, "interval", job_id, seconds=seconds, next_run_time=now_dt(),
                      misfire_grace_time=max(1, int(seconds)))

    def start(self) -> None:
        """Bind the HTTP endpoints, then schedule the jobs. Raises TunerError if it cannot."""
        self.web.start()
        self._started = True
        self._every(self.scrape_once, self.config.scrape_interval, "scrape")
        self._add_job(self.housekeeping, "interval", "housekeeping", seconds=60,
                      next_run_time=now_dt())
        self.alerting.start()
        self._every(self.alerting.evaluate, self.config.evaluation_interval, "rules")
        if self._suggest_trigger is not None:
            self._add_job(self.scheduled_suggest, self._suggest_trigger, "suggest")
        if self.drift is not None:
            self.drift.register(self.registry)
            self._add_job(self.drift.check, "interval", "drift",
                          seconds=self.config.drift.interval)
        if self.tuning is not None:
            self.tuning.register(self.registry)
            self._add_job(self.tuning.run_once, self.tuning.trigger, "tune")
        self.scheduler.start()
        log.info(
            "tuner daemon: %d targets every %gs, store %s, listening on %s://%s%s",
            len(self.config.targets),
            self.config.scrape_interval,
            self.config.store.path,
            self.web.scheme,
            self.config.listen,
            " (basic auth)" if self.web.security.config.users else "",
        )

    def scheduled_suggest(self) -> None:
        """The cron job of ``suggest.schedule``: a report kept in the store (last N)."""
        from tuner.suggest import run_scheduled_suggest

        try:
            report = run_scheduled_suggest(self.config, self.store, self.clock())
        except Exception:  # a bug in suggest must not kill the scheduler thread
            log.exception("scheduled suggest failed")
            return
        log.info("scheduled suggest: %d recommendation(s)%s",
                 len(report.get("recommendations", [])),
                 f" ({report['error']})" if "error" in report else "")

    @property
    def address(self) -> tuple[str, int]:
        """The listener's bound (host, port)."""
        if not self._started:
            raise TunerError("daemon not started")
        return self.web.address

    def _tuning_progress(self) -> TuningProgress | None:
        if self.tuning is None:
            return None
        job = self.scheduler.get_job("tune") if self.scheduler.running else None
        next_run = job.next_run_time.timestamp() if job is not None and job.next_run_time else None
        return self.tuning.progress(next_run)

    def _metrics_endpoint(self, _request: Request) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    def _healthz_endpoint(self, _request: Request) -> Response:
        ok = self.healthy()
        return text_response(200 if ok else 503, "ok\n" if ok else "unhealthy\n")

    def stop(self) -> None:
        """Stop jobs, flush what is pending, close the HTTP server and the store."""
        if self.tuning is not None:
            self.tuning.cancel()  # stops its canaries so the scheduler can shut down now
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.alerting.stop()
        with self._lock:
            self._count(self.ingest.flush())
        self.web.stop()
        self.api.close()
        self.page.close()
        self._pool.shutdown(wait=True)
        for c in {*self.clients.values(), *([self.client] if self.client else [])}:
            c.close()
        self.store.close()
        self.stopped.set()


def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    daemon = Daemon(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda _s, _f: daemon.alerting.reload())
    try:
        daemon.start()
    except TunerError:
        daemon.stop()
        raise
    stop.wait()
    daemon.stop()
    log.info("stopped cleanly")
    return 0
