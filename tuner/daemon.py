"""The sidecar daemon: scrape targets on a schedule into the store, serve /metrics and /healthz.

``Daemon`` wires the pieces together with APScheduler (3.x): a scrape job every
``scrape_interval`` and a retention job every minute; other features (rule evaluation,
scheduled suggest, tuning progress) add their jobs to ``Daemon.scheduler`` and their metrics
to ``Daemon.registry``. What a scrape stores (its samples, ``up``, ``scrape_duration_seconds``,
``scrape_samples_scraped``, stale markers, the retry buffer for failed writes) is
``tuner.ingest``, the same step every canary trial uses; the daemon counts what it reports
in its own ``tuner_*`` metrics.

``run_daemon`` runs until SIGTERM or SIGINT and returns an exit code. ``read_status`` is what
``tuner status`` shows, read from the store of a (possibly running) daemon.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tuner.config import Config
from tuner.errors import ConfigError, StoreError, TunerError
from tuner.ingest import Ingest, IngestReport
from tuner.notify import Notifier
from tuner.promql import Engine, Querier
from tuner.rules import RuleEngine, load_configured_rules
from tuner.scrape import ScrapeOutcome, make_client, scrape_all
from tuner.signals import STATUS_SIGNALS, Signal, evaluate_signals
from tuner.store import Store

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
        self.store = store or Store(
            config.store.path, config.store.retention, config.store.max_bytes, clock=clock
        )
        self.client = client or make_client(max(4, 2 * len(config.targets)))
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(config.targets))))
        self.ingest = Ingest(self.store)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self.last_cycle: float | None = None
        self.stopped = threading.Event()
        try:
            self.alerting = Alerting(config, self.store, self.registry, clock)
        except TunerError:
            self.store.close()  # bad rules: refuse to start
            raise

    # -- one scrape cycle ------------------------------------------------------------

    def scrape_once(self) -> list[ScrapeOutcome]:
        """Scrape every target once and store what came back (and ``up``) — never raises."""
        outcomes = scrape_all(
            self.client,
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

    def start(self) -> None:
        """Bind the HTTP endpoints, then schedule the jobs. Raises TunerError if it cannot."""
        host, port = self.config.listen_host_port
        try:
            self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        except OSError as exc:
            raise TunerError(f"listen {self.config.listen}: cannot bind: {exc.strerror}") from None
        self._server.daemon_threads = True
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, name="tuner-http", daemon=True
        )
        self._server_thread.start()
        self.scheduler.add_job(
            self.scrape_once,
            "interval",
            seconds=self.config.scrape_interval,
            id="scrape",
            max_instances=1,
            coalesce=True,
            next_run_time=_now_dt(),
            misfire_grace_time=max(1, int(self.config.scrape_interval)),
        )
        self.scheduler.add_job(
            self.housekeeping,
            "interval",
            seconds=60,
            id="housekeeping",
            max_instances=1,
            coalesce=True,
            next_run_time=_now_dt(),
        )
        self.alerting.start()
        self.scheduler.add_job(
            self.alerting.evaluate,
            "interval",
            seconds=self.config.evaluation_interval,
            id="rules",
            max_instances=1,
            coalesce=True,
            next_run_time=_now_dt(),
            misfire_grace_time=max(1, int(self.config.evaluation_interval)),
        )
        if self._suggest_trigger is not None:
            self.scheduler.add_job(
                self.scheduled_suggest,
                self._suggest_trigger,
                id="suggest",
                max_instances=1,
                coalesce=True,
            )
        if self.tuning is not None:
            self.tuning.register(self.registry)
            self.scheduler.add_job(
                self.tuning.run_once,
                self.tuning.trigger,
                id="tune",
                max_instances=1,
                coalesce=True,
            )
        self.scheduler.start()
        log.info(
            "tuner daemon: %d targets every %gs, store %s, listening on %s",
            len(self.config.targets),
            self.config.scrape_interval,
            self.config.store.path,
            self.config.listen,
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
        if self._server is None:
            raise TunerError("daemon not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop jobs, flush what is pending, close the HTTP server and the store."""
        if self.tuning is not None:
            self.tuning.cancel()  # stops its canaries so the scheduler can shut down now
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.alerting.stop()
        with self._lock:
            self._count(self.ingest.flush())
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._pool.shutdown(wait=True)
        self.client.close()
        self.store.close()
        self.stopped.set()


def cron_trigger(config: Config, key: str, expr: str) -> Any:
    """The APScheduler CronTrigger of a 5-field cron ``expr`` (UTC); ConfigError if invalid."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(expr, timezone="UTC")
    except ValueError as exc:
        raise ConfigError(
            f"{config.source or '<config>'}: {key}: {expr!r} is not a valid cron expression ({exc})"
        ) from None


def suggest_trigger(config: Config) -> Any:
    """The CronTrigger of ``suggest.schedule``."""
    return cron_trigger(config, "suggest.schedule", str(config.suggest.schedule))


def _now_dt() -> Any:
    import datetime

    return datetime.datetime.now(datetime.UTC)


def _make_handler(daemon: Daemon) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body = generate_latest(daemon.registry)
                self._send(200, body, CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = daemon.healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain")
            else:
                self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http: " + fmt, *args)

    return Handler


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


# -- rule evaluation and alert delivery ------------------------------------------------------


class TuningWindow:
    """``tune.schedule``: a search on canaries from the daemon, progress on its /metrics.

    Each run writes a fresh output directory ``tune.out/<UTC time>/`` (trials.csv, best.json,
    report.md, plots). The tune config is loaded when the daemon starts, so a bad one refuses
    to start the daemon. Stopping the daemon stops the canaries of a run in flight; the run's
    finished trials stay in its directory (``tuner tune --resume --out DIR`` continues it).
    """

    def __init__(self, config: Config) -> None:
        from tuner.tune import TuneCounters, load_tune_config

        assert config.tune.config is not None and config.tune.schedule is not None
        self.window = config.tune
        self.tune_config = load_tune_config(config.tune.config)
        self.trigger = cron_trigger(config, "tune.schedule", config.tune.schedule)
        self.counters = TuneCounters(self.tune_config.objective)
        self.cancelled = threading.Event()  # the daemon is stopping
        self._run_stop = threading.Event()  # the search in flight (run_tune sets it when done)
        self.runs: dict[str, int] = {"ok": 0, "failed": 0, "interrupted": 0}
        self.last_run: float | None = None
        self.last_out: Path | None = None

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(_TuneCollector(self))

    def run_once(self, now: float | None = None) -> Path | None:
        """One search; returns its output directory (None if cancelled before it started)."""
        import datetime

        from tuner.report import write_tune_outputs
        from tuner.tune import TuneInterrupted, TuneOptions, run_tune

        if self.cancelled.is_set():
            return None
        self._run_stop = threading.Event()
        stamp = datetime.datetime.fromtimestamp(now or time.time(), datetime.UTC)
        out = self.window.out / stamp.strftime("%Y%m%dT%H%M%SZ")
        self.last_out = out
        options = TuneOptions(out=out, trials=self.window.trials)
        log.info("tuning window: search into %s", out)
        try:
            outcome = run_tune(self.tune_config, options, observers=[self.counters],
                               install_signals=False, stop=self._run_stop)
            write_tune_outputs(outcome, out)
        except TuneInterrupted:
            self.runs["interrupted"] += 1
            log.warning("tuning window: interrupted; finished trials are in %s", out)
        except Exception:  # a failed search must not kill the scheduler thread
            self.runs["failed"] += 1
            log.exception("tuning window: search failed")
        else:
            self.runs["ok"] += 1
            log.info("tuning window: done, report in %s", out / "report.md")
        finally:
            self.last_run = time.time()
        return out

    def cancel(self) -> None:
        from tuner.canary import stop_all_canaries

        self.cancelled.set()
        self._run_stop.set()  # first, so the killed canary is not recorded as a failed trial
        stop_all_canaries()


class _TuneCollector:
    """``tuner_tune_*`` series from the tuning window's counters, read at scrape time."""

    def __init__(self, tuning: TuningWindow) -> None:
        self.tuning = tuning

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.tuning.counters.snapshot()
        trials = CounterMetricFamily(
            "tuner_tune_trials", "Tuning trials finished, by state.", labels=["state"]
        )
        for state, n in sorted(snap["trials_total"].items()):
            trials.add_metric([state], n)
        yield trials
        yield GaugeMetricFamily(
            "tuner_tune_running_trials", "Tuning trials in flight.", value=snap["running"]
        )
        best = snap["best_objective"]
        yield GaugeMetricFamily(
            "tuner_tune_best_objective",
            "Best objective among feasible trials so far (NaN before the first).",
            value=math.nan if best is None else best,
        )
        runs = CounterMetricFamily(
            "tuner_tune_runs", "Tuning-window searches, by result.", labels=["result"]
        )
        for result, n in sorted(self.tuning.runs.items()):
            runs.add_metric([result], n)
        yield runs
        if self.tuning.last_run is not None:
            yield GaugeMetricFamily(
                "tuner_tune_last_run_timestamp_seconds",
                "When the last tuning-window search ended.",
                value=self.tuning.last_run,
            )


class Alerting:
    """The rule-evaluation job: rules over the store (or Prometheus), alerts to Alertmanagers.

    Rules are ``config.rule_files`` or, when none are configured, the shipped rules rendered
    with ``config.slo``; bad rules raise ``RuleError`` here, so the daemon refuses to start.
    With ``prometheus_url`` the rules query that Prometheus (recorded names are inlined, since
    results cannot be written back); otherwise ``tuner.promql`` evaluates them over the store
    and recording-rule results and ``ALERTS`` series are written to it. Alert state persists
    in the store (``tuner alerts``; a restart keeps ``activeAt``). ``reload()`` (SIGHUP) keeps
    the last good rules when the new ones are bad, and says why.
    """

    def __init__(self, config: Config, store: Store, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.time) -> None:

        self.config = config
        self.clock = clock
        rules = load_configured_rules(config.rule_files, config.slo)
        querier: Querier
        if config.prometheus_url:
            from tuner.source import PrometheusSource

            querier = PrometheusSource(config.prometheus_url)
            writer: Store | None = None
        else:
            # long-lived evaluator over a store that grows at its end: cache read windows
            querier = Engine(reader=store, cache=True)
            writer = store
        self.engine = RuleEngine(
            rules, querier, writer=writer, documents=store,
            default_interval=config.evaluation_interval,
            external_url=f"http://{config.listen}",
        )
        restored = self.engine.restore()
        if restored:
            log.info("rules: restored %d alerts from the store", restored)
        timeout = min((am.timeout for am in config.alertmanagers), default=10.0)
        self.notifier = Notifier([am.url for am in config.alertmanagers], timeout=timeout)
        self._lock = threading.Lock()
        self.evaluations = Counter("tuner_rule_evaluations", "Rule evaluation cycles.",
                                   registry=registry)
        self.failures = Counter("tuner_rule_evaluation_failures",
                                "Rules whose evaluation failed.", registry=registry)
        self.duration = Gauge("tuner_rule_evaluation_duration_seconds",
                              "Duration of the last rule evaluation cycle.", registry=registry)
        self.rules_loaded = Gauge("tuner_rules_loaded", "Rules currently evaluated.",
                                  registry=registry)
        self.reload_ok = Gauge("tuner_rules_last_reload_successful",
                               "1 if the last rule (re)load succeeded.", registry=registry)
        self.rules_loaded.set(len(rules.rules))
        self.reload_ok.set(1)
        registry.register(_AlertsCollector(self))
        log.info("rules: %d rules in %d groups (%s)", len(rules.rules), len(rules.groups),
                 ", ".join(config.rule_files) or "shipped rules")

    def start(self) -> None:
        self.notifier.start()

    def stop(self) -> None:
        self.notifier.stop()

    def evaluate(self) -> None:
        """One evaluation cycle; never raises (errors are logged and counted)."""
        with self._lock:
            start = time.monotonic()
            try:
                report = self.engine.evaluate(self.clock())
            except TunerError as exc:
                self.failures.inc()
                log.error("rule evaluation failed: %s", exc)
                return
            self.evaluations.inc()
            for err in report.errors:
                self.failures.inc()
                log.error("rule evaluation: %s", err)
            self.notifier.send(report.to_send)
            self.duration.set(time.monotonic() - start)

    def reload(self) -> bool:
        """Load the rules again; on error keep the last good rules and log why."""
        from tuner.rules import load_configured_rules

        try:
            rules = load_configured_rules(self.config.rule_files, self.config.slo)
        except TunerError as exc:
            self.reload_ok.set(0)
            log.error("rules reload failed, keeping the last good rules: %s", exc)
            return False
        with self._lock:
            self.engine.replace_rules(rules)
        self.reload_ok.set(1)
        self.rules_loaded.set(len(rules.rules))
        log.info("rules reloaded: %d rules in %d groups", len(rules.rules), len(rules.groups))
        return True


class _AlertsCollector:
    """``tuner_alerts{alertname, alertstate, ...}`` (like ``ALERTS``) and delivery counters."""

    def __init__(self, alerting: Alerting) -> None:
        self.alerting = alerting

    def collect(self) -> Any:
        from prometheus_client.metrics_core import Metric

        alerts = Metric("tuner_alerts", "Pending and firing alerts, like Prometheus's ALERTS.",
                        "gauge")
        with self.alerting._lock:  # evaluate() mutates the alert maps
            current = self.alerting.engine.alerts(include_resolved=False)
        for a in current:
            alerts.add_sample("tuner_alerts", {**a.labels, "alertstate": a.state}, 1.0)
        yield alerts
        sent = Metric("tuner_notifications_sent", "Alerts delivered to an Alertmanager.",
                      "counter")
        failed = Metric("tuner_notifications_failed_attempts",
                        "Failed deliveries to an Alertmanager (retried).", "counter")
        dropped = Metric("tuner_notifications_dropped",
                         "Alerts dropped (queue full, or refused by the Alertmanager).", "counter")
        queued = Metric("tuner_notifications_queue_length", "Alerts waiting for delivery.",
                        "gauge")
        for st in self.alerting.notifier.stats():
            lbl = {"alertmanager": st.url}
            sent.add_sample("tuner_notifications_sent_total", lbl, st.sent)
            failed.add_sample("tuner_notifications_failed_attempts_total", lbl,
                              st.failed_attempts)
            dropped.add_sample("tuner_notifications_dropped_total", lbl, st.dropped)
            queued.add_sample("tuner_notifications_queue_length", lbl, st.queued)
        yield from (sent, failed, dropped, queued)


# -- status -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetStatus:
    name: str
    url: str
    kind: str
    up: bool | None
    last_scrape: float | None
    error: str


@dataclass(frozen=True)
class Status:
    """What ``tuner status`` shows: targets and live signals per instance."""

    now: float
    store_path: str
    targets: tuple[TargetStatus, ...]
    signals: dict[str, dict[str, float]]
    signal_defs: tuple[Signal, ...] = STATUS_SIGNALS

    def to_json(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "now": self.now,
            "store": self.store_path,
            "targets": [
                {
                    "name": t.name,
                    "url": t.url,
                    "kind": t.kind,
                    "up": t.up,
                    "last_scrape": t.last_scrape,
                    "error": t.error,
                }
                for t in self.targets
            ],
            "signals": {
                inst: {k: clean(v) for k, v in sigs.items()} for inst, sigs in self.signals.items()
            },
        }


def read_status(config: Config, now: float | None = None) -> Status:
    """Targets' last scrape and live signals, read from the daemon's store (read-only)."""
    now = time.time() if now is None else now
    store = Store(config.store.path, config.store.retention, config.store.max_bytes, read_only=True)
    try:
        last = {r.target: r for r in store.last_scrapes()}
        targets = []
        for t in config.targets:
            r = last.get(t.name)
            targets.append(
                TargetStatus(
                    t.name,
                    t.url,
                    t.kind,
                    None if r is None else r.up,
                    None if r is None else r.ts,
                    "" if r is None else r.error,
                )
            )
        signals = evaluate_signals(Engine(store), STATUS_SIGNALS, now)
    finally:
        store.close()
    return Status(now, str(config.store.path), tuple(targets), signals)
