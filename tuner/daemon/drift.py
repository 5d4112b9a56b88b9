"""The daemon's drift check: is production still the workload the flags were tuned for?

Every ``drift.interval`` the daemon fingerprints the last ``drift.window`` of its store
(``tuner.workload.fingerprint``, all vLLM targets together) and compares it with the fingerprint
stored in the tune result (``best.json``'s ``workload``) by ``tuner.drift.workload_drift``.

- ``/metrics``: ``tuner_workload_drift_distance`` (NaN when it cannot be compared),
  ``tuner_workload_drift_component{component}``, ``tuner_workload_drift_threshold``,
  ``tuner_workload_drift_enabled`` and ``tuner_workload_drift_last_check_timestamp_seconds``.
- Over the threshold it raises ``WorkloadDrift`` (severity warning), sent to the Alertmanagers
  with the rule alerts and listed with them in ``tuner_alerts``; its description shows both
  fingerprints and what changed. Back under the threshold it is resolved.
- ``live_workload`` is the drifted fingerprint, which the tuning window tunes against next.

The tune result is read again at every check (a new tuning run replaces it). A result without
a fingerprint (a run from before fingerprints were stored) disables the comparison with a note
in the log and ``tuner_workload_drift_enabled 0``; it never stops the daemon.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from tuner.config import Config
from tuner.drift import COMPONENTS, Drift, describe_fingerprint, workload_drift
from tuner.errors import TunerError
from tuner.notify import Notifier
from tuner.promql import Querier
from tuner.rules import AlertState, AlertStatus
from tuner.workload import fingerprint

log = logging.getLogger("tuner.daemon")
ALERT_NAME = "WorkloadDrift"


def latest_tune_result(path: Path) -> Path | None:
    """``path`` itself when it is a file; else the newest ``best.json`` under it (tune runs)."""
    if path.is_file():
        return path
    if (path / "best.json").is_file():
        return path / "best.json"
    found = sorted(path.glob("*/best.json")) if path.is_dir() else []
    return found[-1] if found else None


def read_tuned_workload(path: Path) -> tuple[Mapping[str, Any] | None, str]:
    """The ``workload`` of a tune result and a note; None (with the reason) when it has none."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{path}: cannot read the tune result ({exc})"
    workload = doc.get("workload") if isinstance(doc, Mapping) else None
    if not isinstance(workload, Mapping):
        return None, (f"{path}: the tune result has no workload fingerprint (a run from before "
                      "tuner stored them); drift detection is off until the next tune run")
    return workload, f"tuned for: {describe_fingerprint(workload)} ({path})"


class DriftWatch:
    """The drift check of one daemon; ``check()`` runs on the scheduler, never raises."""

    def __init__(self, config: Config, querier: Querier, notifier: Notifier,
                 external_url: str, clock: Callable[[], float] = time.time) -> None:
        self.settings = config.drift
        self.source = self.settings.tune_result or config.tune.out
        self.querier = querier
        self.notifier = notifier
        self.external_url = external_url
        self.clock = clock
        self.lock = threading.Lock()
        self.drift: Drift | None = None
        self.tuned: Mapping[str, Any] | None = None
        self.live: Mapping[str, Any] | None = None
        self.note = "not checked yet"
        self.last_check: float | None = None
        self.alert: AlertState | None = None
        self._last_logged = ""

    @property
    def live_workload(self) -> Mapping[str, Any] | None:
        """The live fingerprint while production has drifted (for the next tuning window)."""
        with self.lock:
            return self.live if self.drift is not None and self.drift.drifted else None

    def alerts(self) -> list[AlertState]:
        with self.lock:
            return [self.alert] if self.alert is not None else []

    def _say(self, note: str) -> None:
        """Log a note once (not at every check)."""
        if note != self._last_logged:
            log.info("drift: %s", note)
            self._last_logged = note

    def check(self) -> Drift | None:
        """Compare the last window with the tuned workload; update metrics and the alert."""
        now = self.clock()
        try:
            drift, tuned, live, note = self._compare(now)
        except TunerError as exc:  # the store is busy or a query failed: try next time
            log.error("drift: check failed: %s", exc)
            return None
        self._say(note)
        with self.lock:
            self.drift, self.tuned, self.live, self.note = drift, tuned, live, note
            self.last_check = now
            alert = self._next_alert(now, drift, tuned, live)
            self.alert = alert if alert is not None and not alert.resolved_at else None
        if alert is not None:
            self.notifier.send([alert])
        return drift

    def _compare(self, now: float) -> tuple[Drift | None, Mapping[str, Any] | None,
                                            Mapping[str, Any] | None, str]:
        result = latest_tune_result(self.source)
        if result is None:
            return None, None, None, f"no tune result at {self.source} yet; nothing to compare"
        tuned, note = read_tuned_workload(result)
        if tuned is None:
            return None, None, None, note
        live = fingerprint(self.querier, now - self.settings.window, now)
        requests = live.get("requests") or 0.0
        if requests < self.settings.min_requests:
            return None, tuned, live, (f"{requests:.0f} requests in the last window, fewer than "
                                       f"drift.min_requests ({self.settings.min_requests}): "
                                       "not compared")
        drift = workload_drift(tuned, live, self.settings.threshold)
        if drift.drifted:
            return drift, tuned, live, (f"production has drifted ({drift.distance:.2f} >= "
                                        f"{drift.threshold:g}): {'; '.join(drift.changes)}")
        return drift, tuned, live, f"within threshold ({drift.distance:.2f} < {drift.threshold:g})"

    def _next_alert(self, now: float, drift: Drift | None, tuned: Mapping[str, Any] | None,
                    live: Mapping[str, Any] | None) -> AlertState | None:
        """The alert to send now: firing (resent each check), resolved once, or None."""
        previous = self.alert
        if drift is None or not drift.drifted or tuned is None or live is None:
            if previous is None:
                return None
            return replace(previous, state=AlertStatus.RESOLVED, resolved_at=now)
        changed = "; ".join(drift.changes)
        annotations = {
            "summary": f"Production workload has drifted from the one the flags were tuned for "
                       f"(distance {drift.distance:.2f}, threshold {drift.threshold:g})",
            "description": (f"What changed: {changed}. Tuned for: {describe_fingerprint(tuned)}. "
                            f"Live (last {self.settings.window / 60:.0f} min): "
                            f"{describe_fingerprint(live)}. Re-run `tuner tune` against the live "
                            "workload (a configured tuning window does so at its next run)."),
        }
        active = previous.active_at if previous is not None else now
        return AlertState(
            alertname=ALERT_NAME, group="tuner-drift", source="tuner drift check",
            labels={"alertname": ALERT_NAME, "severity": "warning", "family": "workload"},
            annotations={**annotations, "runbook_url": "rules/RUNBOOK.md#workloaddrift"},
            state=AlertStatus.FIRING, value=drift.distance,
            active_at=active, fired_at=active,
            valid_until=now + 4 * self.settings.interval,
            generator_url=f"{self.external_url}/metrics",
        )

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(_DriftCollector(self))


class _DriftCollector:
    """``tuner_workload_drift_*`` from the last check."""

    def __init__(self, watch: DriftWatch) -> None:
        self.watch = watch

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        with self.watch.lock:
            drift, tuned, last = self.watch.drift, self.watch.tuned, self.watch.last_check
        yield GaugeMetricFamily("tuner_workload_drift_enabled",
                                "1 when a tuned workload fingerprint is there to compare with.",
                                value=1.0 if tuned is not None else 0.0)
        yield GaugeMetricFamily("tuner_workload_drift_threshold",
                                "Drift threshold (doublings; drift.threshold).",
                                value=self.watch.settings.threshold)
        yield GaugeMetricFamily(
            "tuner_workload_drift_distance",
            "Distance of the live workload from the tuned one, in doublings (NaN: unknown).",
            value=drift.distance if drift is not None else math.nan)
        comp = GaugeMetricFamily("tuner_workload_drift_component",
                                 "Distance per component (prompt/output length, rate, prefix).",
                                 labels=["component"])
        for name in COMPONENTS:
            value = drift.components.get(name, math.nan) if drift is not None else math.nan
            comp.add_metric([name], value)
        yield comp
        if last is not None:
            yield GaugeMetricFamily("tuner_workload_drift_last_check_timestamp_seconds",
                                    "When the drift check last ran.", value=last)
