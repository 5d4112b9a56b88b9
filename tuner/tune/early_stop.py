"""Stop a searched trial early when its partial measurement is already worse than the
incumbent beyond the noise.

``early_stop_rule`` (pure, from the finished trials) gives the rule for the next searched
trial: the incumbent (the best run that met the SLO so far, in output tok/s), the run-to-run
noise, the load window and how much of it to wait for. ``EarlyStop.should_stop`` applies it
to the canary's server-side generated-token counter as scraped during the load (it counts
the tokens of requests still in flight, so it is not biased low the way completed requests
are early in a window): once ``after`` of the window has passed, the trial stops when its
token rate so far is below ``incumbent * (1 - 2 * noise * sqrt(window / elapsed))`` (a
partial window is noisier than a full one by about the square root of the time ratio).
The trial is then recorded as ``stopped`` with the figures of the requests that finished,
and the optimizer learns that loss. ``time_saved`` is what the stopped trials did not spend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tuner.tune.config import ObjectiveKind, TuneConfig
from tuner.tune.records import Trial, TrialKind, TrialState

#: A rule needs at least this many counter readings inside the window to decide.
MIN_READINGS = 3


@dataclass(frozen=True)
class EarlyStop:
    """When a searched trial's load stops early (see the module docstring)."""

    incumbent: float  # tok/s of the best feasible run so far
    noise: float  # relative run-to-run noise of a full window
    after: float  # fraction of the window to wait before deciding

    def threshold(self, elapsed: float, duration: float) -> float:
        """The token rate below which a run ``elapsed`` s into a ``duration`` s window is
        worse beyond the noise (0 before ``after`` of the window)."""
        if elapsed <= 0 or duration <= 0 or elapsed < self.after * duration:
            return 0.0
        margin = 2 * self.noise * math.sqrt(duration / elapsed)
        return max(0.0, self.incumbent * (1 - margin))

    def should_stop(self, readings: Sequence[tuple[float, float]], window_start: float,
                    duration: float) -> bool:
        """Whether to stop, from ``(time, generated tokens so far)`` readings of the server's
        counter (epoch seconds); the rate is measured from the first reading at or after
        ``window_start`` to the last."""
        inside = [(t, v) for t, v in readings if t >= window_start]
        if len(inside) < MIN_READINGS:
            return False
        (t0, v0), (t1, v1) = inside[0], inside[-1]
        elapsed = t1 - window_start
        if t1 <= t0:
            return False
        rate = (v1 - v0) / (t1 - t0)
        return rate < self.threshold(elapsed, duration)


def _run_noise(trials: Sequence[Trial], default: float) -> float:
    """The pooled relative spread of points measured more than once (else ``default``)."""
    groups: dict[str, list[float]] = {}
    for t in trials:
        if t.state is TrialState.OK and t.objective:
            groups.setdefault(t.subject, []).append(float(t.objective))
    rel = []
    for vals in groups.values():
        if len(vals) > 1:
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            rel.append((sd / mean) ** 2)
    if not rel:
        return default
    return max(default / 2, math.sqrt(sum(rel) / len(rel)))


def early_stop_rule(trials: Sequence[Trial], cfg: TuneConfig) -> EarlyStop | None:
    """The rule for the next searched trial, or None (off, or no incumbent yet).

    Throughput and cost ($/h over tok/s) get worse with a lower token rate, so the
    incumbent is the best output tok/s; goodput is at most the token rate, so there the
    incumbent is the best goodput (a run whose whole token rate is below it cannot win).
    """
    if not cfg.noise.early_stop:
        return None
    goodput = cfg.objective.kind is ObjectiveKind.GOODPUT
    rates = []
    for t in trials:
        m = t.measurement
        if t.state is not TrialState.OK or m is None or t.kind is TrialKind.CONFIRM:
            continue
        v = m.goodput_tok_per_s if goodput else m.output_tok_per_s
        if math.isfinite(v) and v > 0:
            rates.append(v)
    if not rates:
        return None
    return EarlyStop(max(rates), _run_noise(trials, cfg.noise.single_run_noise),
                     cfg.noise.early_stop_after)


def time_saved(trials: Sequence[Trial]) -> float:
    """Load seconds the stopped trials did not spend (their planned window minus their run)."""
    return sum(float(t.timings.get("saved_s", 0.0)) for t in trials
               if t.state is TrialState.STOPPED)
