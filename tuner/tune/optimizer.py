"""The optimizer seam: a ``skopt.Optimizer`` over the space, and what it is taught.

``skopt`` is imported only here. ``make_optimizer`` builds one from the config;
``initial_design`` is the space-filling first design (Latin hypercube or Sobol) and
``propose`` asks for new points only (a point already measured or ruled out before the
search is replaced by the best allowed one under the optimizer's model);
``told_history`` is the (x, loss) pairs it learns from the finished trials, so a resumed
search re-teaches a fresh optimizer exactly what the interrupted one knew
(``tell_history``). The planner sees the optimizer only through ``AskTell``.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from tuner.tune.config import InitialDesign, TuneConfig
from tuner.tune.records import Trial, TrialKind
from tuner.tune.space import Knob, KnobType, Space, point_key


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
        initial_point_generator=str(cfg.optimizer.initial_design),
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


# ----------------------------------------------------------------------------- design, dedupe

#: Points a discrete space may have for ``propose`` to enumerate it instead of sampling.
ENUMERATE_MAX = 4096
#: Random candidates ``propose`` scores with the acquisition when the asked point is not new.
CANDIDATES = 2000


def _sub_knob(knob: Knob, within: Mapping[str, tuple[float, float]]) -> Knob:
    if knob.name not in within or knob.kind is KnobType.CATEGORICAL:
        return knob
    low, high = within[knob.name]
    return replace(knob, low=low, high=high)


def initial_design(
    space: Space,
    n: int,
    design: InitialDesign,
    seed: int,
    within: Mapping[str, tuple[float, float]] | None = None,
) -> list[dict[str, Any]]:
    """``n`` space-filling points (knob values) over the space, or over the sub-ranges
    ``within`` (knob name -> (low, high)) where prior knowledge makes the rest unlikely.

    Latin hypercube (maximin) or Sobol from scikit-optimize, or uniform random; deterministic
    for a seed. Points that coincide after the knobs' rounding are kept once.
    """
    from skopt.sampler import Lhs, Sobol
    from skopt.space import Space as SkSpace

    if n <= 0 or not space.knobs:
        return []
    knobs = [_sub_knob(k, within or {}) for k in space.knobs]
    dims = [dimension(k) for k in knobs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Sobol warns for n not a power of two
        if design is InitialDesign.RANDOM:
            xs = SkSpace(dims).rvs(n_samples=n, random_state=seed)
        elif design is InitialDesign.SOBOL:
            xs = Sobol().generate(dims, n, random_state=seed)
        else:
            xs = Lhs(criterion="maximin", iterations=200).generate(dims, n, random_state=seed)
    out: dict[str, dict[str, Any]] = {}
    for x in xs:
        p = space.point(x)
        out.setdefault(point_key(p), p)
    return list(out.values())


def _acq_name(optimizer: Any) -> str:
    acq = str(getattr(optimizer, "acq_func", "EI"))
    return "EI" if acq == "gp_hedge" else acq


def _all_points(sk_space: Any) -> list[list[Any]] | None:
    """Every point of a fully discrete skopt space, or None (continuous or too many)."""
    from skopt.space import Categorical, Integer

    axes: list[list[Any]] = []
    total = 1
    for d in sk_space.dimensions:
        if isinstance(d, Integer):
            axes.append(list(range(int(d.low), int(d.high) + 1)))
        elif isinstance(d, Categorical):
            axes.append(list(d.categories))
        else:
            return None
        total *= len(axes[-1])
        if total > ENUMERATE_MAX:
            return None
    return [list(p) for p in itertools.product(*axes)]


def _best_allowed(optimizer: Any, space: Space,
                  allowed: Callable[[Mapping[str, Any]], bool]) -> list[Any] | None:
    """The allowed point the optimizer's model rates best (its acquisition function), among
    every point of a small discrete space or a random sample; None when none is allowed."""
    import numpy as np
    from skopt.acquisition import _gaussian_acquisition

    sk_space = optimizer.space
    pool = _all_points(sk_space)
    if pool is None:
        pool = sk_space.rvs(n_samples=CANDIDATES, random_state=optimizer.rng)
    pool = [x for x in pool if allowed(space.point(x))]
    if not pool:
        return None
    if not optimizer.models:
        return list(pool[int(optimizer.rng.randint(len(pool)))])
    values = _gaussian_acquisition(
        X=sk_space.transform(pool), model=optimizer.models[-1], y_opt=np.min(optimizer.yi),
        acq_func=_acq_name(optimizer), acq_func_kwargs=optimizer.acq_func_kwargs,
    )
    return list(pool[int(np.argmin(values))])


def propose(
    optimizer: Any, space: Space, n: int, allowed: Callable[[Mapping[str, Any]], bool]
) -> list[list[Any]]:
    """Up to ``n`` new points to measure: the optimizer's asks, except that a point that is
    not ``allowed`` (already measured, or ruled out before the search) is replaced by the
    allowed point the optimizer's model rates best. Fewer than ``n`` (or none) when the
    space has no allowed point left.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skopt's "evaluated at this point before": handled
        asked = optimizer.ask(n_points=n) if n > 1 else [optimizer.ask()]
    out: list[list[Any]] = []
    keys: set[str] = set()

    def fresh(p: Mapping[str, Any]) -> bool:
        return point_key(p) not in keys and allowed(p)

    for x in asked:
        x = list(x)
        if not fresh(space.point(x)):
            alt = _best_allowed(optimizer, space, fresh)
            if alt is None:
                continue
            x = alt
        keys.add(point_key(space.point(x)))
        out.append(x)
    return out
