"""What the rule engine reports: alert states (Prometheus's state machine), rule statuses.

Records only: ``AlertStatus`` (inactive → pending → firing, reported as resolved),
``AlertState`` (one alert instance as Prometheus reports and sends it; JSON for the stored
documents) and ``RuleStatus`` (one rule as ``/api/v1/rules`` shows it). ``tuner.rules.engine``
produces them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tuner.rules.files import Rule, RuleGroup


class AlertStatus(StrEnum):
    """Where an alert instance is in Prometheus's state machine.

    The engine keeps ``INACTIVE`` alerts that have fired (for ``RESOLVED_RETENTION``, so
    Alertmanager hears they resolved); reports (``AlertState``) call those ``RESOLVED``.
    The values are the strings Prometheus and the stored documents use.
    """

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"

    def reported(self) -> AlertStatus:
        """The state as reported: an inactive alert that is still kept is resolved."""
        return AlertStatus.RESOLVED if self is AlertStatus.INACTIVE else self


@dataclass(frozen=True)
class AlertState:
    """One alert instance as Prometheus would report and send it.

    ``state`` is pending, firing or resolved (inactive, kept 15m after it fired).
    Times are unix seconds; 0 means "not set". ``ends_at`` is what Alertmanager receives:
    the resolve time, or for a firing alert ``valid_until`` (4 resend intervals ahead).
    """

    alertname: str
    group: str
    source: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: AlertStatus
    value: float
    active_at: float
    fired_at: float = 0.0
    resolved_at: float = 0.0
    valid_until: float = 0.0
    generator_url: str = ""

    @property
    def starts_at(self) -> float:
        return self.fired_at or self.active_at

    @property
    def ends_at(self) -> float:
        return self.resolved_at if self.resolved_at else self.valid_until

    def to_json(self) -> dict[str, Any]:
        return {
            "alertname": self.alertname,
            "group": self.group,
            "source": self.source,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "state": self.state,
            "value": json_float(self.value),
            "active_at": self.active_at,
            "fired_at": self.fired_at,
            "resolved_at": self.resolved_at,
            "valid_until": self.valid_until,
            "generator_url": self.generator_url,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AlertState:
        return cls(
            alertname=str(d["alertname"]), group=str(d.get("group", "")),
            source=str(d.get("source", "")), labels=dict(d["labels"]),
            annotations=dict(d.get("annotations", {})), state=AlertStatus(d["state"]),
            value=unjson_float(d.get("value")), active_at=float(d.get("active_at", 0)),
            fired_at=float(d.get("fired_at", 0)), resolved_at=float(d.get("resolved_at", 0)),
            valid_until=float(d.get("valid_until", 0)),
            generator_url=str(d.get("generator_url", "")),
        )


def json_float(v: float) -> float | str:
    return v if math.isfinite(v) else ("NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf"))


def unjson_float(v: Any) -> float:
    """Inverse of ``_json_float`` (float() reads "NaN", "+Inf", "-Inf"); ValueError if not."""
    return math.nan if v is None else float(v)


@dataclass(frozen=True)
class RuleStatus:
    """One rule as ``/api/v1/rules`` reports it; ``last_eval`` 0 means not evaluated yet."""

    group: RuleGroup
    rule: Rule
    last_error: str
    last_eval: float
    eval_seconds: float
    alerts: tuple[AlertState, ...]  # pending and firing
