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

from tuner.canary import ARGPARSE_EXIT, flag_args, rejected_flags
from tuner.errors import TuneError
from tuner.load import LoadSpec
from tuner.tune.bound import KvBound, kv_bound
from tuner.tune.config import Noise, Objective, TuneConfig
from tuner.tune.early_stop import EarlyStop, early_stop_rule, time_saved
from tuner.tune.optimizer import AskTell, initial_design, propose
from tuner.tune.parse_load import build_load_spec
from tuner.tune.records import BASELINE_SUBJECT, Trial, TrialKind, TrialState, subject_of
from tuner.tune.space import apply_constraints, point_key
from tuner.tune.verdict import Comparison, edge_of_range, median_mad
from tuner.tune.verdict import compare as verdict_compare


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
    #: When its load stops early (searched trials once there is an incumbent).
    early_stop: EarlyStop | None = None
    #: With ``flags`` None: why the step is not launched (the trial's reason).
    reject_reason: str = "constraint"

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
    def median(self) -> float:
        """The median of the runs' objective (robust to one slow restart)."""
        return median_mad(self.values)[0]

    @property
    def mad(self) -> float:
        """The runs' scaled median absolute deviation (an sd estimate; NaN for one run)."""
        return median_mad(self.values)[1]

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
    """The finalist with the best median objective among those that met the SLO in most runs
    (each run on a fresh canary: the median is robust to one slow restart).

    Confirmation runs are not used here, so the winner is stable once the repeats are done.
    """
    feasible = [c for c in finalists(trials, noise) if c.feasible]
    if not feasible:
        return None
    sign = -1.0 if objective.higher_is_better else 1.0
    feasible.sort(
        key=lambda c: (
            sign * statistics.median(float(t.objective or 0) for t in c.ok_runs),
            c.subject,
        )
    )
    return feasible[0]


def measured_keys(trials: Sequence[Trial], cfg: TuneConfig) -> set[str]:
    """Point keys of every point the search has run (or rejected), the baseline's included
    when its flags are a point of the space."""
    keys = {point_key(t.point) for t in trials if t.point}
    base = cfg.space.point_from_flags(cfg.baseline_flags)
    if base is not None and any(t.kind is TrialKind.BASELINE for t in trials):
        keys.add(point_key(base))
    return keys


def search_bound(trials: Sequence[Trial], cfg: TuneConfig,
                 load: LoadSpec | None = None) -> KvBound | None:
    """The space's bound from the baseline's measured KV capacity (``tuner.tune.bound``)."""
    base = next((t for t in trials if t.kind is TrialKind.BASELINE
                 and t.measurement is not None), None)
    if base is None or base.measurement is None:
        return None
    m = base.measurement
    spec = load if load is not None else build_load_spec(cfg.load)
    return kv_bound(cfg.space, cfg.baseline_flags, m.kv_capacity_tokens, m.kv_block_size,
                    spec, cfg.constraints.max_model_len)


def design_points(trials: Sequence[Trial], cfg: TuneConfig,
                  load: LoadSpec | None = None) -> list[dict[str, Any]]:
    """The initial design: ``optimizer.initial_points`` space-filling points over the part
    of the space the KV bound leaves likely (deterministic for the config and baseline)."""
    bound = search_bound(trials, cfg, load)
    o = cfg.optimizer
    return initial_design(cfg.space, o.initial_points, o.initial_design, o.seed,
                          within=bound.likely if bound is not None else None)


def next_points(trials: Sequence[Trial], cfg: TuneConfig, optimizer: AskTell, n: int,
                load: LoadSpec | None = None) -> list[tuple[dict[str, Any], list[Any]]]:
    """Up to ``n`` (point, x) to measure next: the initial design's points not measured yet,
    then the optimizer's proposals. Never a point already measured, nor one the KV bound
    rules out; fewer (or none) when the space has no such point left."""
    bound = search_bound(trials, cfg, load)
    taken = measured_keys(trials, cfg)

    def allowed(p: Mapping[str, Any]) -> bool:
        return point_key(p) not in taken and (bound is None or bound.allows(p))

    out: list[tuple[dict[str, Any], list[Any]]] = []
    for p in design_points(trials, cfg, load):
        if len(out) < n and allowed(p):
            taken.add(point_key(p))
            out.append((p, cfg.space.x(p)))
    if len(out) < n:
        for x in propose(optimizer, cfg.space, n - len(out), allowed):
            out.append((cfg.space.point(x), list(x)))
    return out


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
    load: LoadSpec | None = None,
) -> list[Step]:
    """The next steps (at most ``k``, to run concurrently), or ``[]`` when the search is done.

    A pure function of the finished trials (and the optimizer they taught), so a resumed
    search continues exactly where it stopped. Raises TuneError when the baseline failed.
    Searched steps come from ``next_points``; ``load`` is the search's load (built from
    ``cfg.load`` when not given).
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
        rule = early_stop_rule(trials, cfg)
        unknown = unknown_flags(trials)
        steps = []
        for point, x in next_points(trials, cfg, optimizer, n, load):
            flags, notes = apply_constraints(
                {**cfg.launch.flags, **cfg.space.flags(point)}, cfg.space, cfg.constraints
            )
            refused = [(a, unknown[a]) for a in flag_args(flags or {}) if a in unknown]
            if flags is not None and refused:
                flag, number = refused[0]
                steps.append(Step(
                    TrialKind.SEARCH, point, None,
                    (*notes, f"not launched: the installed vLLM does not know {flag} (trial "
                     f"{number} was refused it: unrecognized arguments); drop the knob or "
                     "upgrade vLLM"), tuple(x), reject_reason="flag_rejected"))
                continue
            steps.append(Step(TrialKind.SEARCH, point, flags, notes, tuple(x), early_stop=rule))
        if steps:
            return steps
        # no point of the space is left to measure: go on with the finalists

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


def unknown_flags(trials: Sequence[Trial]) -> dict[str, int]:
    """Flags the installed vLLM does not know (``--name`` -> the first trial refused it): from
    ``flag_rejected`` trials whose parser said "unrecognized arguments". Such a flag fails every
    value, so later candidates carrying it are not launched; a refused *value* (``argument
    --x: invalid ...``) says nothing about other values and is not listed."""
    out: dict[str, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.reason != "flag_rejected" or t.state is not TrialState.FAILED:
            continue
        refusal = rejected_flags(t.log_tail, ARGPARSE_EXIT)
        if refusal is not None and refusal.message.startswith("unrecognized arguments"):
            for flag in refusal.flags:
                out.setdefault(flag, t.number)
    return out


# ----------------------------------------------------------------------------- the outcome


class Recommendation(StrEnum):
    """Which flags a search recommends (``source`` in best.json)."""

    WINNER = "winner"  # the winner beat the baseline beyond the noise
    BASELINE = "baseline"  # no feasible winner, or its gain is inside the noise


def compare(
    winner: Candidate, baseline: Candidate, objective: Objective, noise: Noise
) -> Comparison:
    """Gain of the winner over the baseline with its interval (``tuner.tune.verdict``: medians
    and MAD of their fresh-canary runs)."""
    return verdict_compare(winner.values, baseline.values, objective, noise)


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
    #: What the baseline's KV capacity said about the space (None: not measured).
    bound: KvBound | None = None
    #: The initial design's points (knob values).
    design: tuple[Mapping[str, Any], ...] = ()
    #: Notes for a winner at the edge of the searched range.
    edge_notes: tuple[str, ...] = ()
    #: Seconds of all trials, of their server start-ups, and saved by early stops.
    trial_s: float = 0.0
    startup_s: float = 0.0
    saved_s: float = 0.0
    #: The workload fingerprint the search was tuned for (``tuner.tune.fingerprint``); None
    #: when no baseline trial was measured. The daemon's drift check compares production with it.
    workload: Mapping[str, Any] | None = None

    @property
    def slo_met(self) -> bool:
        return self.winner is not None


def summarize_search(
    cfg: TuneConfig, trials: Sequence[Trial], complete: bool = True,
    load: LoadSpec | None = None,
) -> TuneOutcome:
    """Pick winner and baseline, compare them, and list the best infeasible points; with the
    search's bound, design, edge-of-range notes, start-up share and early-stop savings."""
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
        bound=search_bound(trials, cfg, load),
        design=tuple(design_points(trials, cfg, load)) if trials else (),
        edge_notes=edge_of_range(cfg.space, winner.point) if winner is not None else (),
        trial_s=sum(float(t.timings.get("total_s", 0.0)) for t in trials),
        startup_s=sum(float(t.timings.get("start_s", 0.0)) for t in trials),
        saved_s=time_saved(trials),
    )


def serve_args(cfg: TuneConfig, flags: Mapping[str, Any]) -> list[str]:
    """The vLLM arguments for a flag set: ``--model M [--served-model-name N] --flag v ...``."""
    args = ["--model", cfg.launch.model]
    if cfg.launch.served_model_name:
        args += ["--served-model-name", cfg.launch.served_model_name]
    return args + flag_args(flags)
