"""The search as a pure state machine over the finished trials, and its outcome.

``plan_steps`` is a function of the persisted trials (and the optimizer they taught): the
baseline first, then optimizer trials (ask), then repeats of the finalists, then the winner
and the baseline re-measured interleaved. Because the plan is a function of the persisted
trials, ``--resume`` simply reloads them, re-teaches the optimizer and asks ``plan_steps``
again: nothing finished is repeated.

``candidates`` groups trials by subject, ``finalists`` and ``choose_winner`` pick from them,
``compare`` says whether the winner beat the baseline beyond the noise, and
``summarize_search`` puts it all in a ``TuneOutcome`` for ``tuner.report``. No I/O here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tuner.canary import flag_args
from tuner.errors import TuneError
from tuner.tune.config import Noise, Objective, TuneConfig
from tuner.tune.optimizer import AskTell
from tuner.tune.records import BASELINE_SUBJECT, Trial, TrialKind, TrialState, subject_of
from tuner.tune.space import apply_constraints


@dataclass(frozen=True)
class Step:
    """One trial to run: its kind, the point (knob values) and the flags to launch with
    (None: a constraint rejected the candidate)."""

    kind: TrialKind
    point: Mapping[str, Any]
    flags: Mapping[str, Any] | None
    notes: tuple[str, ...] = ()
    x: tuple[Any, ...] | None = None
    #: The step runs the baseline flags (the baseline, and its confirmation runs).
    measures_baseline: bool = False

    def __post_init__(self) -> None:  # "search" and TrialKind.SEARCH are the same kind
        object.__setattr__(self, "kind", TrialKind(self.kind))

    @property
    def subject(self) -> str:
        return subject_of(self.measures_baseline or self.kind is TrialKind.BASELINE, self.point)


@dataclass(frozen=True)
class Candidate:
    """A point's runs aggregated: the basis of finalists, the winner and the final comparison."""

    subject: str
    point: Mapping[str, Any]
    flags: Mapping[str, Any]
    runs: tuple[Trial, ...]

    @property
    def ok_runs(self) -> tuple[Trial, ...]:
        return tuple(t for t in self.runs if t.state is TrialState.OK and t.objective is not None)

    @property
    def values(self) -> list[float]:
        return [
            float(t.objective)
            for t in self.runs
            if t.state in (TrialState.OK, TrialState.SLO) and t.objective is not None
        ]

    @property
    def feasible(self) -> bool:
        launched = [t for t in self.runs if t.state is not TrialState.REJECTED]
        return bool(launched) and len(self.ok_runs) * 2 >= len(launched)

    @property
    def mean(self) -> float:
        vals = self.values
        return statistics.fmean(vals) if vals else math.nan

    @property
    def stdev(self) -> float:
        vals = self.values
        return statistics.stdev(vals) if len(vals) > 1 else math.nan

    @property
    def mean_loss(self) -> float:
        return statistics.fmean(t.loss for t in self.runs)


def candidates(trials: Sequence[Trial], include_confirm: bool = True) -> dict[str, Candidate]:
    """Trials grouped by subject (``baseline`` or a point key), runs in trial order."""
    groups: dict[str, list[Trial]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.kind is TrialKind.CONFIRM and not include_confirm:
            continue
        groups.setdefault(t.subject, []).append(t)
    out = {}
    for subject, runs in groups.items():
        first = runs[0]
        out[subject] = Candidate(subject, first.point, first.flags, tuple(runs))
    return out


def finalists(trials: Sequence[Trial], noise: Noise) -> list[Candidate]:
    """The best ``noise.finalists`` searched points that met the SLO, best first."""
    searched = (TrialKind.SEARCH, TrialKind.REPEAT)
    pool = [
        c
        for s, c in candidates([t for t in trials if t.kind in searched]).items()
        if s != BASELINE_SUBJECT
        and any(t.state is TrialState.OK for t in c.runs if t.kind is TrialKind.SEARCH)
    ]
    pool.sort(key=lambda c: (min(t.loss for t in c.runs if t.kind is TrialKind.SEARCH),
                             c.subject))
    return pool[: noise.finalists] if noise.finalists > 0 else pool[:1]


def choose_winner(trials: Sequence[Trial], noise: Noise, objective: Objective) -> Candidate | None:
    """The finalist with the best mean objective among those that met the SLO in most runs.

    Confirmation runs are not used here, so the winner is stable once the repeats are done.
    """
    feasible = [c for c in finalists(trials, noise) if c.feasible]
    if not feasible:
        return None
    sign = -1.0 if objective.higher_is_better else 1.0
    feasible.sort(
        key=lambda c: (
            sign * statistics.fmean(float(t.objective or 0) for t in c.ok_runs),
            c.subject,
        )
    )
    return feasible[0]


def search_elapsed(trials: Sequence[Trial]) -> float:
    """Seconds spent in trials so far (summed, so it survives a resume)."""
    return sum(max(0.0, t.duration) for t in trials)


def planned_total(cfg: TuneConfig, trials: int | None = None) -> int:
    """Trials a full search runs: baseline, search budget, finalist repeats, confirmations."""
    n = cfg.noise
    budget = cfg.budget.trials if trials is None else trials
    return 1 + budget + n.finalists * n.repeats + 2 * n.confirm_rounds


def _baseline_step(cfg: TuneConfig, kind: TrialKind) -> Step:
    return Step(kind, {}, dict(cfg.baseline_flags), measures_baseline=True)


def plan_steps(
    trials: Sequence[Trial],
    cfg: TuneConfig,
    optimizer: AskTell,
    k: int = 1,
    budget_trials: int | None = None,
) -> list[Step]:
    """The next steps (at most ``k``, to run concurrently), or ``[]`` when the search is done.

    A pure function of the finished trials (and the optimizer they taught), so a resumed
    search continues exactly where it stopped. Raises TuneError when the baseline failed.
    """
    budget = cfg.budget.trials if budget_trials is None else budget_trials
    base = [t for t in trials if t.kind is TrialKind.BASELINE]
    if not base:
        return [_baseline_step(cfg, TrialKind.BASELINE)]
    if base[0].state in (TrialState.FAILED, TrialState.REJECTED):
        b = base[0]
        raise TuneError(
            f"the baseline (trial {b.number}) failed ({b.reason}); stopping: if the base "
            f"command never starts, no candidate will.\n--- log tail ---\n{b.log_tail}"
        )

    searched = [t for t in trials if t.kind is TrialKind.SEARCH]
    over_time = cfg.budget.wall_time is not None and search_elapsed(trials) >= cfg.budget.wall_time
    if len(searched) < budget and not over_time:
        n = min(k, budget - len(searched))
        asked = optimizer.ask(n_points=n) if n > 1 else [optimizer.ask()]
        steps = []
        for x in asked:
            point = cfg.space.point(x)
            flags, notes = apply_constraints(
                {**cfg.launch.flags, **cfg.space.flags(point)}, cfg.space, cfg.constraints
            )
            steps.append(Step(TrialKind.SEARCH, point, flags, notes, tuple(point.values())))
        return steps

    repeats: list[Step] = []
    for c in finalists(trials, cfg.noise):
        done = sum(1 for t in c.runs if t.kind in (TrialKind.SEARCH, TrialKind.REPEAT))
        for _ in range(max(0, 1 + cfg.noise.repeats - done)):
            repeats.append(Step(TrialKind.REPEAT, dict(c.point), dict(c.flags)))
    if repeats:
        return repeats[:k]

    winner = choose_winner(trials, cfg.noise, cfg.objective)
    if winner is None or cfg.noise.confirm_rounds <= 0:
        return []
    confirms = [t for t in trials if t.kind is TrialKind.CONFIRM]
    cb = sum(1 for t in confirms if t.subject == BASELINE_SUBJECT)
    cw = sum(1 for t in confirms if t.subject == winner.subject)
    rounds = cfg.noise.confirm_rounds
    out: list[Step] = []
    while len(out) < k and cb + cw < 2 * rounds:
        if cb <= cw:
            out.append(_baseline_step(cfg, TrialKind.CONFIRM))
            cb += 1
        else:
            out.append(Step(TrialKind.CONFIRM, dict(winner.point), dict(winner.flags)))
            cw += 1
    return out


# ----------------------------------------------------------------------------- the outcome


class Recommendation(StrEnum):
    """Which flags a search recommends (``source`` in best.json)."""

    WINNER = "winner"  # the winner beat the baseline beyond the noise
    BASELINE = "baseline"  # no feasible winner, or its gain is inside the noise


@dataclass(frozen=True)
class Comparison:
    """Winner against baseline over all their runs (baseline first + interleaved confirms)."""

    baseline_mean: float
    baseline_stdev: float
    baseline_n: int
    winner_mean: float
    winner_stdev: float
    winner_n: int
    gain: float
    gain_low: float
    gain_high: float
    significant: bool
    verdict: str


def compare(
    winner: Candidate, baseline: Candidate, objective: Objective, noise: Noise
) -> Comparison:
    """Gain of the winner over the baseline with its spread, and whether it beats the noise.

    ``gain`` is the relative improvement (throughput up, or $/Mtok down, as a fraction). With
    two or more runs on each side the gain is significant when the difference of means exceeds
    twice its standard error and ``noise.min_gain``; with a single run on either side there is
    no spread to estimate, so it must exceed ``noise.single_run_noise`` (restart-to-restart
    noise measured on vLLM CPU).
    """
    bv, wv = baseline.values, winner.values
    bm = statistics.fmean(bv) if bv else math.nan
    wm = statistics.fmean(wv) if wv else math.nan
    bs = statistics.stdev(bv) if len(bv) > 1 else math.nan
    ws = statistics.stdev(wv) if len(wv) > 1 else math.nan
    if objective.higher_is_better:
        gain = wm / bm - 1 if bm > 0 else math.inf
    else:
        gain = bm / wm - 1 if wm > 0 else -1.0
    if len(bv) > 1 and len(wv) > 1 and bm > 0:
        se = math.sqrt(bs**2 / len(bv) + ws**2 / len(wv))
        diff = (wm - bm) if objective.higher_is_better else (bm - wm)
        rel_se = se / bm
        low, high = gain - 2 * rel_se, gain + 2 * rel_se
        significant = diff > 2 * se and gain >= noise.min_gain
    else:
        low, high = gain - noise.single_run_noise, gain + noise.single_run_noise
        significant = gain >= noise.single_run_noise
    if significant:
        verdict = f"significant gain: {gain * 100:+.1f}% ({low * 100:+.1f}% .. {high * 100:+.1f}%)"
    else:
        verdict = (
            f"no significant gain: {gain * 100:+.1f}% is inside the noise "
            f"({low * 100:+.1f}% .. {high * 100:+.1f}%)"
        )
    return Comparison(bm, bs, len(bv), wm, ws, len(wv), gain, low, high, significant, verdict)


@dataclass(frozen=True)
class TuneOutcome:
    """Everything the report needs."""

    config: TuneConfig
    trials: tuple[Trial, ...]
    baseline: Candidate | None
    winner: Candidate | None
    comparison: Comparison | None
    best_infeasible: tuple[Candidate, ...]
    complete: bool
    best_flags: Mapping[str, Any] = field(default_factory=dict)
    best_args: tuple[str, ...] = ()
    recommend: Recommendation = Recommendation.BASELINE
    #: The workload fingerprint the search was tuned for (``tuner.tune.fingerprint``); None
    #: when no baseline trial was measured. The daemon's drift check compares production with it.
    workload: Mapping[str, Any] | None = None

    @property
    def slo_met(self) -> bool:
        return self.winner is not None


def summarize_search(
    cfg: TuneConfig, trials: Sequence[Trial], complete: bool = True
) -> TuneOutcome:
    """Pick winner and baseline, compare them, and list the best infeasible points."""
    groups = candidates(trials)
    baseline = groups.get(BASELINE_SUBJECT)
    winner = choose_winner(trials, cfg.noise, cfg.objective)
    if winner is not None:
        winner = groups.get(winner.subject, winner)  # with confirmation runs
    comparison = None
    if winner is not None and baseline is not None and baseline.values:
        comparison = compare(winner, baseline, cfg.objective, cfg.noise)
    infeasible = [
        c for s, c in groups.items() if s != BASELINE_SUBJECT and not c.feasible and c.values
    ]
    infeasible.sort(key=lambda c: (c.mean_loss, c.subject))
    # Recommend the winner only when it beat the baseline beyond the noise.
    beat_noise = winner is not None and (comparison is None or comparison.significant)
    recommend = Recommendation.WINNER if beat_noise else Recommendation.BASELINE
    best = winner if recommend is Recommendation.WINNER else baseline
    best_flags = dict(best.flags) if best is not None else dict(cfg.baseline_flags)
    return TuneOutcome(
        cfg,
        tuple(sorted(trials, key=lambda t: t.number)),
        baseline,
        winner,
        comparison,
        tuple(infeasible[:5]),
        complete,
        best_flags,
        tuple(serve_args(cfg, best_flags)),
        recommend,
    )


def serve_args(cfg: TuneConfig, flags: Mapping[str, Any]) -> list[str]:
    """The vLLM arguments for a flag set: ``--model M [--served-model-name N] --flag v ...``."""
    args = ["--model", cfg.launch.model]
    if cfg.launch.served_model_name:
        args += ["--served-model-name", cfg.launch.served_model_name]
    return args + flag_args(flags)
