"""How far production's workload has moved from the one its flags were tuned for.

``workload_drift(tuned, live)`` compares two workload fingerprints (the format of
:mod:`tuner.workload`: prompt and output length distributions, arrival rate, prefix reuse)
and returns a ``Drift``: one distance, the component behind it, and what changed, in words.

The distance is in *doublings*: for prompt and output lengths it is the largest
``|log2(live / tuned)|`` over the p50 and p90 (the mean when a quantile is missing); for the
arrival rate, ``|log2(live rate / tuned rate)|``; for prefix reuse, the absolute change of the
prefix-cache hit rate divided by ``PREFIX_SHIFT_PER_UNIT`` (a 25-point shift counts as one
doubling). The drift is the largest component, so the default threshold of 1.0 means "some
length quantile or the arrival rate has doubled or halved, or prefix reuse moved 25 points".
A component that either side does not know (no traffic, a closed-loop benchmark without an
arrival rate) is not compared and is named in ``Drift.unknown``; it never counts as zero drift
of that component, and with no comparable component at all the distance is NaN.

Pure functions over JSON-ready dicts: the daemon (``tuner.daemon.drift``) feeds them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuner.config import DRIFT_THRESHOLD

#: An absolute change of the prefix-cache hit rate that counts as one unit of distance.
PREFIX_SHIFT_PER_UNIT = 0.25
COMPONENTS = ("prompt_tokens", "output_tokens", "request_rate", "prefix_reuse")
_QUANTILES = ("p50", "p90")


@dataclass(frozen=True)
class Drift:
    """The comparison of a live fingerprint with the tuned one.

    ``components`` maps each compared component to its distance; ``distance`` is their
    maximum (NaN when nothing could be compared); ``changes`` says, for every component at or
    over ``threshold``, what moved, with both values.
    """

    distance: float
    threshold: float
    components: Mapping[str, float] = field(default_factory=dict)
    changes: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()

    @property
    def drifted(self) -> bool:
        return math.isfinite(self.distance) and self.distance >= self.threshold

    @property
    def largest(self) -> str | None:
        """The component behind the distance (None when nothing was compared)."""
        if not self.components:
            return None
        return max(self.components, key=lambda k: self.components[k])


def _positive(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    x = float(v)
    return x if math.isfinite(x) and x > 0 else None


def _fraction(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    x = float(v)
    return x if math.isfinite(x) and 0.0 <= x <= 1.0 else None


def _doublings(a: float, b: float) -> float:
    return abs(math.log2(b / a))


def _length_points(dist: Any) -> dict[str, float]:
    """The comparable points of a LENGTHS entry: p50 and p90, else the mean."""
    if not isinstance(dist, Mapping):
        return {}
    points = {q: v for q in _QUANTILES if (v := _positive(dist.get(q))) is not None}
    if not points and (mean := _positive(dist.get("mean"))) is not None:
        points["mean"] = mean
    return points


def _length_component(name: str, tuned: Any, live: Any) -> tuple[float, str] | None:
    a, b = _length_points(tuned), _length_points(live)
    common = [q for q in (*_QUANTILES, "mean") if q in a and q in b]
    if not common:
        return None
    worst = max(common, key=lambda q: _doublings(a[q], b[q]))
    label = name.replace("_tokens", " tokens")
    parts = ", ".join(f"{q} {a[q]:.0f} -> {b[q]:.0f}" for q in common)
    ratio = b[worst] / a[worst]
    return _doublings(a[worst], b[worst]), f"{label}: {parts} (x{ratio:.2g} at {worst})"


def workload_drift(tuned: Mapping[str, Any], live: Mapping[str, Any],
                   threshold: float = DRIFT_THRESHOLD) -> Drift:
    """Compare ``live`` with ``tuned`` (both ``tuner.workload`` fingerprints)."""
    components: dict[str, float] = {}
    texts: dict[str, str] = {}
    unknown: list[str] = []
    for name in ("prompt_tokens", "output_tokens"):
        got = _length_component(name, tuned.get(name), live.get(name))
        if got is None:
            unknown.append(name)
        else:
            components[name], texts[name] = got
    rate_a = _positive(tuned.get("request_rate_per_s"))
    rate_b = _positive(live.get("request_rate_per_s"))
    if rate_a is None or rate_b is None:
        unknown.append("request_rate")
    else:
        components["request_rate"] = _doublings(rate_a, rate_b)
        texts["request_rate"] = (f"arrival rate: {rate_a:.3g} -> {rate_b:.3g} requests/s "
                                 f"(x{rate_b / rate_a:.2g})")
    hit_a = _fraction(tuned.get("prefix_cache_hit_rate"))
    hit_b = _fraction(live.get("prefix_cache_hit_rate"))
    if hit_a is None or hit_b is None:
        unknown.append("prefix_reuse")
    else:
        components["prefix_reuse"] = abs(hit_b - hit_a) / PREFIX_SHIFT_PER_UNIT
        texts["prefix_reuse"] = (f"prefix-cache hit rate: {hit_a:.0%} -> {hit_b:.0%}")
    distance = max(components.values()) if components else math.nan
    changes = tuple(texts[k] for k in COMPONENTS
                    if k in components and components[k] >= threshold)
    return Drift(distance, threshold, components, changes, tuple(unknown))


def describe_fingerprint(fp: Mapping[str, Any]) -> str:
    """One line: ``prompt p50/p90 120/200 tok, output p50/p90 64/128 tok, 2 req/s, prefix 10%``."""
    parts = []
    for name, label in (("prompt_tokens", "prompt"), ("output_tokens", "output")):
        pts = _length_points(fp.get(name))
        if not pts:
            parts.append(f"{label} unknown")
        elif "p50" in pts and "p90" in pts:
            parts.append(f"{label} p50/p90 {pts['p50']:.0f}/{pts['p90']:.0f} tok")
        else:
            parts.append(f"{label} " + ", ".join(f"{q} {v:.0f}" for q, v in pts.items())
                         + " tok")
    rate = _positive(fp.get("request_rate_per_s"))
    parts.append(f"{rate:.3g} req/s" if rate is not None else "arrival rate unknown")
    hit = _fraction(fp.get("prefix_cache_hit_rate"))
    parts.append(f"prefix hits {hit:.0%}" if hit is not None else "prefix reuse unknown")
    return ", ".join(parts)
