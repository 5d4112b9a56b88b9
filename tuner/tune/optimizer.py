"""The optimizer seam: a ``skopt.Optimizer`` over the space, and what it is taught.

``skopt`` is imported only here. ``make_optimizer`` builds one from the config;
``told_history`` is the (x, loss) pairs it learns from the finished trials, so a resumed
search re-teaches a fresh optimizer exactly what the interrupted one knew
(``tell_history``). The planner sees the optimizer only through ``AskTell``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tuner.tune.config import TuneConfig
from tuner.tune.records import Trial, TrialKind
from tuner.tune.space import Knob, KnobType, Space


class AskTell(Protocol):
    """What the search needs of an optimizer (``skopt.Optimizer`` has it)."""

    def ask(self, n_points: int | None = None) -> Any: ...

    def tell(self, x: list[Any], y: list[float]) -> Any: ...


def dimension(knob: Knob) -> Any:
    """The skopt dimension of a knob."""
    from skopt.space import Categorical, Integer, Real

    prior = "log-uniform" if knob.log else "uniform"
    if knob.kind is KnobType.INTEGER:
        assert knob.low is not None and knob.high is not None
        return Integer(int(knob.low), int(knob.high), prior=prior, name=knob.name)
    if knob.kind is KnobType.REAL:
        assert knob.low is not None and knob.high is not None
        return Real(float(knob.low), float(knob.high), prior=prior, name=knob.name)
    return Categorical(list(knob.values), name=knob.name)


def make_optimizer(cfg: TuneConfig) -> Any:
    """A fresh ``skopt.Optimizer`` over the config's space."""
    from skopt import Optimizer

    n_dims = len(cfg.space.knobs)
    return Optimizer(
        [dimension(k) for k in cfg.space.knobs],
        base_estimator=cfg.optimizer.estimator,
        n_initial_points=max(1, min(cfg.optimizer.initial_points, cfg.budget.trials)),
        acq_func=cfg.optimizer.acq_func
        if cfg.optimizer.estimator == "GP" or cfg.optimizer.acq_func != "gp_hedge"
        else "EI",
        acq_optimizer="sampling" if n_dims > 0 else "auto",
        random_state=cfg.optimizer.seed,
    )


def told_history(trials: Sequence[Trial], space: Space) -> tuple[list[list[Any]], list[float]]:
    """The (x, loss) pairs the optimizer learns from: every trial on a point inside the space.

    Search, repeat and rejected trials carry their asked point; the baseline is included when
    its flags fall inside the space. Confirmation runs are left out (they re-measure points
    the optimizer already knows, interleaved with the baseline, for the final comparison only).
    """
    xs: list[list[Any]] = []
    ys: list[float] = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.kind is TrialKind.CONFIRM:
            continue
        point = t.point if t.kind is not TrialKind.BASELINE else space.point_from_flags(t.flags)
        if point is None or any(k.name not in point for k in space.knobs):
            continue
        if not all(k.contains(point[k.name]) for k in space.knobs):
            continue
        xs.append(space.x(point))
        ys.append(float(t.loss))
    return xs, ys


def tell_history(optimizer: AskTell, trials: Sequence[Trial], space: Space) -> int:
    """Re-teach an optimizer the finished trials (resume); returns how many points it learnt."""
    xs, ys = told_history(trials, space)
    if xs:
        optimizer.tell(xs, ys)
    return len(xs)
