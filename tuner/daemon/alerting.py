"""The daemon's rule-evaluation job: rules over the store or Prometheus, alerts to Alertmanagers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from tuner.config import Config
from tuner.errors import TunerError
from tuner.notify import Notifier
from tuner.promql import Engine, Querier
from tuner.rules import AlertState, RuleEngine, RuleStatus, load_configured_rules
from tuner.store import Store

log = logging.getLogger("tuner.daemon")


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
                 clock: Callable[[], float] = time.time, scheme: str = "http") -> None:

        self.config = config
        self.clock = clock
        rules = load_configured_rules(config.rule_files, config.slo)
        querier: Querier
        if config.prometheus_url:
            from tuner.source import PrometheusSource

            querier = PrometheusSource(config.prometheus_url, http=config.prometheus_http)
            writer: Store | None = None
        else:
            # long-lived evaluator over a store that grows at its end: cache read windows
            querier = Engine(reader=store, cache=True)
            writer = store
        self.engine = RuleEngine(
            rules, querier, writer=writer, documents=store,
            default_interval=config.evaluation_interval,
            external_url=f"{scheme}://{config.listen}",  # https behind the listener's TLS
        )
        restored = self.engine.restore()
        if restored:
            log.info("rules: restored %d alerts from the store", restored)
        timeout = min((am.timeout for am in config.alertmanagers), default=10.0)
        self.notifier = Notifier([am.url for am in config.alertmanagers],
                                 http=[am.http for am in config.alertmanagers], timeout=timeout)
        #: Alerts raised by the daemon itself (the drift check), listed with the rules' alerts.
        self.external: list[Callable[[], list[AlertState]]] = []
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

    def rule_statuses(self) -> list[RuleStatus]:
        """Every rule's health and alerts, for ``/api/v1/rules`` and ``/api/v1/alerts``."""
        with self._lock:  # evaluate() mutates the rule states
            return self.engine.rule_statuses()

    def current_alerts(self) -> list[AlertState]:
        """Pending and firing alerts now (the status page's view), read under the job's lock."""
        with self._lock:
            current = self.engine.alerts(include_resolved=False)
        for provider in self.external:
            current = [*current, *provider()]
        return current

    def reload(self) -> bool:
        """Load the rules again; on error keep the last good rules and log why."""
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
        current = self.alerting.current_alerts()
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
