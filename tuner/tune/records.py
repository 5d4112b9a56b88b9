"""Trial records and their scoring: what one trial measured, how it ended, the loss it scored.

* ``TrialKind``: the order a search runs trials in (baseline, search, repeat, confirm).
  ``TrialState``: ok = ran and met the SLO; slo = ran and missed it; failed = no usable
  measurement (exit, oom, health_timeout, start_error, flag_rejected: vLLM refused a flag,
  load_error, load_errors); rejected = a constraint ruled the candidate out before launch;
  stopped = its load was stopped early, already worse than the incumbent beyond the noise
  (partial figures kept).
* ``Measurement``: the load run's client-side summary plus the canary's server-side signals.
* ``Trial``: one finished trial as persisted (``to_json``/``from_json``: the store document).
  ``subject`` says whom it measures: ``baseline`` (``measures_baseline``) or its point's key.
* ``SLO_CHECKS``: each SLO, the measured figure it is checked on and that figure's source
  (``FigureSource``: the load client, or the canary's own histograms), with the server-side
  counterpart the report shows beside it.
* ``score_trial``: (state, objective value, loss, SLO violations). The loss is what the
  optimizer minimizes: ``-value/baseline`` for runs that met the SLO (the baseline scores -1);
  for runs that missed it, a value in (0, 0.5] growing with how far they missed it (worse than
  any feasible run, but a gradient toward the feasible region); 1.0 for failed runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from tuner.load import LoadSummary
from tuner.signals import dollars_per_mtok
from tuner.tune.config import Objective, ObjectiveKind, TuneSLO
from tuner.tune.space import point_key

FAILED_LOSS = 1.0
SLO_LOSS_MAX = 0.5
#: The subject of every trial that runs the baseline flags.
BASELINE_SUBJECT = "baseline"


class TrialKind(StrEnum):
    """Trial kinds, in the order a search runs them."""

    BASELINE = "baseline"
    SEARCH = "search"
    REPEAT = "repeat"
    CONFIRM = "confirm"


class FigureSource(StrEnum):
    """Where a latency figure comes from."""

    CLIENT = "client"  # the load generator, per request (what a user of the server sees)
    SERVER = "server"  # the canary's vLLM histograms over the load window


@dataclass(frozen=True)
class SloCheck:
    """One SLO of ``TuneSLO`` (``slo``), checked on the measurement field ``figure``."""

    slo: str
    figure: str
    source: FigureSource
    label: str
    #: The same quantity from the other source, shown beside it (not checked).
    counterpart: str | None = None


SLO_CHECKS: tuple[SloCheck, ...] = (
    SloCheck("ttft_p99_seconds", "ttft_p99", FigureSource.CLIENT,
             "p99 TTFT, per request at the load client", "server_ttft_p99"),
    SloCheck("itl_p99_seconds", "itl_p99", FigureSource.CLIENT,
             "p99 ITL per chunk at the load client (gap / tokens in the chunk)",
             "server_itl_p99"),
    SloCheck("e2e_p99_seconds", "e2e_p99", FigureSource.CLIENT,
             "p99 end-to-end latency, per request at the load client"),
    SloCheck("error_rate", "error_rate", FigureSource.CLIENT,
             "failed requests / requests, at the load client"),
)
"""The SLO check, in order: every SLO is checked on a client-side figure (what users see);
the canary's histograms are shown beside it so a gap between the two is visible."""


class TrialState(StrEnum):
    """How a trial ended (see the module docstring)."""

    OK = "ok"
    SLO = "slo"
    FAILED = "failed"
    REJECTED = "rejected"
    STOPPED = "stopped"  # stopped early: already worse than the incumbent beyond the noise


def subject_of(measures_baseline: bool, point: Mapping[str, Any]) -> str:
    """Whom a step or trial measures: ``baseline`` or the point's canonical key."""
    return BASELINE_SUBJECT if measures_baseline else point_key(point)


def json_num(v: Any) -> Any:
    """A number as JSON: non-finite floats become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass(frozen=True)
class Measurement(LoadSummary):
    """What one load run measured: client side (the load summary's fields) and server side
    (scraped signals)."""

    goodput_tok_per_s: float = math.nan
    preemptions: float = math.nan
    preemptions_per_1k_requests: float = math.nan
    kv_usage_max: float = math.nan
    kv_usage_mean: float = math.nan
    #: The most requests a scrape saw running (0 with tokens generated: KV usage unknown).
    running_peak: float = math.nan
    spec_decode_acceptance: float = math.nan
    server_generation_tokens: float = math.nan
    #: Admission rejections the canary itself counted (vllm:admission_rejections_total).
    server_rejections: float = math.nan
    #: The canary's KV cache (``vllm:cache_config_info``): tokens and block size.
    kv_capacity_tokens: float = math.nan
    kv_block_size: float = math.nan
    #: The canary's own histograms over the load window (``tune.signals.TRIAL_LATENCY_SIGNALS``).
    server_ttft_p50: float = math.nan
    server_ttft_p99: float = math.nan
    server_itl_p50: float = math.nan
    server_itl_p99: float = math.nan
    server_itl_mean: float = math.nan
    server_queue_p50: float = math.nan
    server_queue_p99: float = math.nan

    def to_json(self) -> dict[str, Any]:
        return {k: json_num(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Measurement:
        known = cls.__dataclass_fields__
        kwargs: dict[str, Any] = {
            k: (math.nan if v is None else v) for k, v in body.items() if k in known
        }
        return cls(**kwargs)


@dataclass(frozen=True)
class Trial:
    """One finished trial, as persisted."""

    number: int
    kind: TrialKind
    point: Mapping[str, Any]
    flags: Mapping[str, Any]
    state: TrialState
    loss: float
    objective: float | None = None
    reason: str = ""
    log_tail: str = ""
    notes: tuple[str, ...] = ()
    measurement: Measurement | None = None
    started: float = 0.0
    ended: float = 0.0
    timings: Mapping[str, float] = field(default_factory=dict)
    violations: Mapping[str, float] = field(default_factory=dict)
    #: The trial ran the baseline flags (every baseline trial, and the baseline's confirmations).
    measures_baseline: bool = False

    def __post_init__(self) -> None:  # "search" and TrialKind.SEARCH are the same kind
        object.__setattr__(self, "kind", TrialKind(self.kind))
        object.__setattr__(self, "state", TrialState(self.state))

    @property
    def subject(self) -> str:
        """Whom the trial measures: ``baseline`` or the point's key."""
        return subject_of(self.measures_baseline or self.kind is TrialKind.BASELINE, self.point)

    @property
    def duration(self) -> float:
        return self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "kind": str(self.kind),
            "point": dict(self.point),
            "flags": dict(self.flags),
            "state": str(self.state),
            "loss": self.loss,
            "objective": json_num(self.objective),
            "reason": self.reason,
            "log_tail": self.log_tail,
            "notes": list(self.notes),
            "measurement": self.measurement.to_json() if self.measurement else None,
            "started": self.started,
            "ended": self.ended,
            "timings": dict(self.timings),
            "violations": dict(self.violations),
            "measures_baseline": self.measures_baseline,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Trial:
        """A trial from its document; reads documents written before ``measures_baseline``
        (whose baseline runs carried ``{"__subject__": "baseline"}`` as their point)."""
        m = body.get("measurement")
        raw_point = dict(body.get("point") or {})
        legacy_baseline = raw_point.pop("__subject__", None) == BASELINE_SUBJECT
        kind = TrialKind(str(body["kind"]))
        return cls(
            number=int(body["number"]),
            kind=kind,
            point=raw_point,
            flags=dict(body.get("flags") or {}),
            state=TrialState(str(body["state"])),
            loss=float(body["loss"]),
            objective=None if body.get("objective") is None else float(body["objective"]),
            reason=str(body.get("reason", "")),
            log_tail=str(body.get("log_tail", "")),
            notes=tuple(body.get("notes") or ()),
            measurement=Measurement.from_json(m) if m else None,
            started=float(body.get("started", 0.0)),
            ended=float(body.get("ended", 0.0)),
            timings=dict(body.get("timings") or {}),
            violations=dict(body.get("violations") or {}),
            measures_baseline=bool(body.get("measures_baseline", False))
            or legacy_baseline
            or kind is TrialKind.BASELINE,
        )


# ----------------------------------------------------------------------------- scoring


def objective_value(m: Measurement, objective: Objective) -> float:
    """The objective in its natural unit: tok/s (throughput, goodput) or $/Mtok (cost).

    ``signals.dollars_per_mtok`` answers NaN for a run that produced no tokens (a rate nobody
    measured is unknown). Scoring needs a total order, so here such a run costs +inf $/Mtok:
    the worst value, ranked after every run that produced tokens.
    """
    if objective.kind is ObjectiveKind.GOODPUT:
        return m.goodput_tok_per_s
    if objective.kind is ObjectiveKind.COST:
        cost = dollars_per_mtok(objective.dollars_per_hour or 0.0, m.output_tokens, m.duration)
        return math.inf if math.isnan(cost) else cost
    return m.output_tok_per_s


def slo_violations(m: Measurement, slo: TuneSLO) -> dict[str, float]:
    """``{slo name: measured / threshold}`` for every SLO the measurement missed.

    A latency nobody measured (no successful request) counts as missed by an infinite
    factor; an unmeasured error rate is not a violation.
    """
    out: dict[str, float] = {}
    checks = [(c.slo, getattr(m, c.figure)) for c in SLO_CHECKS]
    for name, measured in checks:
        limit = getattr(slo, name)
        if limit is None:
            continue
        if math.isnan(measured):
            if name != "error_rate":
                out[name] = math.inf
            continue
        if measured > limit:
            out[name] = measured / limit
    return out


def relative(value: float | None, reference: float | None, objective: Objective) -> float:
    """Objective value relative to the baseline's, oriented so larger is better."""
    if value is None or not math.isfinite(value) or value < 0:
        return 0.0
    if not reference or not math.isfinite(reference) or reference <= 0:
        reference = 1.0
    if objective.higher_is_better:
        return value / reference
    return reference / value if value > 0 else 0.0


def score_trial(
    m: Measurement | None, objective: Objective, slo: TuneSLO, reference: float | None
) -> tuple[TrialState, float | None, float, dict[str, float]]:
    """(state, objective value, loss, violations) for a run (``m is None``: failed)."""
    if m is None:
        return TrialState.FAILED, None, FAILED_LOSS, {}
    value = objective_value(m, objective)
    violations = slo_violations(m, slo)
    if violations:
        excess = sum(min(4.0, v - 1.0) if math.isfinite(v) else 4.0 for v in violations.values())
        loss = min(SLO_LOSS_MAX, 0.05 + 0.45 * excess / 4.0)
        return TrialState.SLO, value, loss, violations
    return TrialState.OK, value, -relative(value, reference, objective), {}
