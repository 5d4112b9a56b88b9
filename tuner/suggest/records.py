"""The records ``tuner suggest`` produces: findings, recommendations, their modes, their JSON.

A ``Finding`` is a signal over (part of) a window: its value, how long and when it held. A
``Recommendation`` is a flag change (or "no change") with the ids of the findings behind it.
The modes compared in code are Enums (``FindingId``, ``Severity``, ``Direction``,
``Confidence``, ``CurrentSource``); the JSON form carries their plain string values, the
stable report format of README "suggest JSON".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from tuner.workload import iso


class FindingId(StrEnum):
    """The stable ids of findings (README "suggest JSON")."""

    KV_SATURATED_WITH_QUEUE = "kv_saturated_with_queue"
    PREEMPTIONS = "preemptions"
    TTFT_SLO_BREACH = "ttft_slo_breach"
    ITL_SLO_BREACH = "itl_slo_breach"
    ITL_BREACH_DURING_PREFILL = "itl_breach_during_prefill"
    OVER_PROVISIONED = "over_provisioned"
    GPU_UTILIZATION = "gpu_utilization"
    QUEUE_WITH_HEADROOM = "queue_with_headroom"
    GPU_MEMORY_FREE = "gpu_memory_free"
    RESTARTS = "restarts"
    OUTPUT_THROUGHPUT = "output_throughput"
    COST = "cost"
    PREFIX_CACHE = "prefix_cache"
    SPEC_DECODE = "spec_decode"
    MODEL_LEN_UNUSED = "model_len_unused"
    ADMISSION_REJECTIONS = "admission_rejections"
    REQUEST_ERRORS = "request_errors"
    ERROR_RATE_UNKNOWN = "error_rate_unknown"
    TTFT_QUEUE_UNCAPPED = "ttft_queue_uncapped"
    SPEC_ACCEPTANCE_BY_BATCH = "spec_acceptance_by_batch"


class Severity(StrEnum):
    WARNING = "warning"
    INFO = "info"


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"
    OFF = "off"
    NONE = "none"
    INVESTIGATE = "investigate"  # requests fail and no flag change explains it


class Confidence(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class CurrentSource(StrEnum):
    """Where the current value of a flag was read."""

    CACHE_CONFIG_INFO = "cache_config_info"  # a label of vllm:cache_config_info
    LAUNCH = "launch"  # the config's launch section
    METRICS = "metrics"  # derived from other metrics (speculative positions)
    UNKNOWN = "unknown"


Ranges = tuple[tuple[float, float], ...]


def clean_number(v: Any) -> Any:
    """A float for JSON: rounded to 6 places, ``None`` for NaN/inf; anything else unchanged."""
    if isinstance(v, float | np.floating):
        f = float(v)
        return None if not math.isfinite(f) else round(f, 6)
    return v


def ranges_json(ranges: Ranges) -> list[dict[str, str]]:
    return [{"start": iso(a), "end": iso(b)} for a, b in ranges]


@dataclass(frozen=True)
class Finding:
    """A signal over (part of) the window: its value, how long it held, and when."""

    id: FindingId
    signal: str
    summary: str
    value: float | None
    unit: str
    severity: Severity
    duration_seconds: float = 0.0
    fraction: float = 0.0
    ranges: Ranges = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id.value,
            "signal": self.signal,
            "summary": self.summary,
            "value": clean_number(self.value),
            "unit": self.unit,
            "severity": self.severity.value,
            "duration_seconds": self.duration_seconds,
            "fraction": round(self.fraction, 4),
            "ranges": ranges_json(self.ranges),
        }


@dataclass(frozen=True)
class Alternative:
    """Another flag that makes the same change, and when to prefer it."""

    flag: str
    current: Any
    suggested: Any
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"flag": self.flag, "current": self.current, "suggested": self.suggested,
                "reason": self.reason}


@dataclass(frozen=True)
class Recommendation:
    """A flag change (or "no change") with its evidence (finding ids).

    ``flag`` is None for "no change" and for changes that are not a flag (add replicas,
    investigate failing requests); ``alternatives`` are other flags with the same effect.
    """

    flag: str | None
    current: Any
    current_source: CurrentSource
    suggested: Any
    direction: Direction
    reason: str
    expected_effect: str
    confidence: Confidence
    evidence: tuple[FindingId, ...] = ()
    alternatives: tuple[Alternative, ...] = ()

    def to_json(self, findings: Mapping[FindingId, Finding]) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "current": self.current,
            "current_source": self.current_source.value,
            "suggested": self.suggested,
            "direction": self.direction.value,
            "reason": self.reason,
            "expected_effect": self.expected_effect,
            "confidence": self.confidence.value,
            "evidence": [
                {"finding": fid.value, "signal": findings[fid].signal,
                 "summary": findings[fid].summary, "ranges": ranges_json(findings[fid].ranges)}
                for fid in self.evidence if fid in findings
            ],
            "alternatives": [a.to_json() for a in self.alternatives],
        }


@dataclass(frozen=True)
class Analysis:
    """One server over one configuration segment: what was found and what to change."""

    findings: tuple[Finding, ...]
    recommendations: tuple[Recommendation, ...]
    conflicts: tuple[str, ...]  # how each conflict between recommendations was resolved
    missing: tuple[str, ...]  # signals with no data (what the analysis could not see)
    skipped: tuple[str, ...]  # recommendations not made for lack of data, and why
