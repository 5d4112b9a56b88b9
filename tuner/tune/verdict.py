"""The verdict's statistics: winner against baseline from runs on fresh canaries, robustly.

Each side's runs (the baseline's first run and its interleaved re-measurements; the winner's
search run, its repeats and re-measurements) were each measured on a fresh canary, so their
spread is the restart-to-restart noise, the larger part of the noise on a shared machine.
``compare`` summarises each side by its median and MAD (median absolute deviation, scaled by
1.4826 to estimate a standard deviation: one slow restart moves neither), pools the two
sides' relative spreads, and builds the gain's interval from the standard error of the
medians with a Student t quantile for the few runs there are. With one run on a side there is
no spread to estimate: the configured restart noise (``noise.single_run_noise``) is used.

``edge_of_range`` says which knobs of a point sit at the edge of the searched range (the
report then says the range may be too narrow). Pure functions, no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuner.tune.config import Noise, Objective
from tuner.tune.space import Knob, KnobType, Space

#: MAD -> standard deviation for normally distributed runs.
MAD_SCALE = 1.4826
#: Variance of a sample median relative to the mean's, for normal data (pi / 2).
MEDIAN_VARIANCE = math.pi / 2
#: Two-sided 95% Student t quantiles by degrees of freedom (beyond the table: 1.96).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    """The two-sided 95% Student t quantile for ``df`` degrees of freedom (between table
    entries the next smaller df's, which is larger: conservative)."""
    if df < 1:
        return math.inf
    if df > max(_T95):
        return 2.0
    return _T95[max(k for k in _T95 if k <= df)]


def median_mad(values: Sequence[float]) -> tuple[float, float]:
    """(median, scaled MAD) of the runs; MAD is NaN for fewer than two runs."""
    if not values:
        return math.nan, math.nan
    med = statistics.median(values)
    if len(values) < 2:
        return med, math.nan
    return med, MAD_SCALE * statistics.median(abs(v - med) for v in values)


@dataclass(frozen=True)
class Comparison:
    """Winner against baseline over all their runs (each on a fresh canary)."""

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
    baseline_median: float = math.nan
    baseline_mad: float = math.nan
    winner_median: float = math.nan
    winner_mad: float = math.nan
    #: The pooled relative spread of one run (restart-to-restart noise), as used.
    run_noise: float = math.nan
    method: str = ""


def compare(winner_values: Sequence[float], baseline_values: Sequence[float],
            objective: Objective, noise: Noise) -> Comparison:
    """Gain of the winner over the baseline (median against median) with its 95% interval.

    ``gain`` is the relative improvement (throughput up, or $/Mtok down, as a fraction). With
    two or more runs on each side: the relative spread of one run is the two sides' scaled MAD
    over their medians, pooled; the gain's standard error follows from the medians' standard
    errors (sd * sqrt(pi/2 / n) each), and the interval is gain ± t(n_b + n_w - 2) * se. The
    gain is significant when the interval's low end is above zero and the gain is at least
    ``noise.min_gain``. With one run on either side the interval is ± ``single_run_noise``.
    """
    bv, wv = [float(v) for v in baseline_values], [float(v) for v in winner_values]
    bmed, bmad = median_mad(bv)
    wmed, wmad = median_mad(wv)
    bmean = statistics.fmean(bv) if bv else math.nan
    wmean = statistics.fmean(wv) if wv else math.nan
    bsd = statistics.stdev(bv) if len(bv) > 1 else math.nan
    wsd = statistics.stdev(wv) if len(wv) > 1 else math.nan
    if objective.higher_is_better:
        gain = wmed / bmed - 1 if bmed > 0 else math.inf
    else:
        gain = bmed / wmed - 1 if wmed > 0 else -1.0
    rel_b = bmad / bmed if bmed > 0 else math.nan
    rel_w = wmad / wmed if wmed > 0 else math.nan
    if len(bv) > 1 and len(wv) > 1 and math.isfinite(rel_b) and math.isfinite(rel_w):
        df = len(bv) + len(wv) - 2
        run_noise = math.sqrt(((len(bv) - 1) * rel_b**2 + (len(wv) - 1) * rel_w**2) / df)
        # ratio of medians: relative standard errors add in quadrature
        se = (1 + gain) * run_noise * math.sqrt(MEDIAN_VARIANCE * (1 / len(bv) + 1 / len(wv)))
        half = t95(df) * se
        method = (f"medians of {len(wv)} vs {len(bv)} fresh-canary runs; run-to-run noise "
                  f"(pooled MAD) {run_noise * 100:.1f}%; 95% interval, t with {df} df")
    else:
        run_noise = noise.single_run_noise
        half = noise.single_run_noise
        method = (f"a single run on a side: the interval is the configured restart noise "
                  f"±{noise.single_run_noise * 100:.0f}%")
    low, high = gain - half, gain + half
    significant = bool(low > 0 and gain >= noise.min_gain)
    if significant:
        verdict = f"significant gain: {gain * 100:+.1f}% ({low * 100:+.1f}% .. {high * 100:+.1f}%)"
    else:
        verdict = (f"no significant gain: {gain * 100:+.1f}% is inside the noise "
                   f"({low * 100:+.1f}% .. {high * 100:+.1f}%)")
    return Comparison(bmean, bsd, len(bv), wmean, wsd, len(wv), gain, low, high, significant,
                      verdict, bmed, bmad, wmed, wmad, run_noise, method)


# ----------------------------------------------------------------------------- edge of range


def _position(knob: Knob, value: Any) -> float | None:
    """Where ``value`` sits in the knob's range, 0..1 (log scale for log knobs)."""
    if knob.kind is KnobType.CATEGORICAL or knob.low is None or knob.high is None:
        return None
    lo, hi, v = float(knob.low), float(knob.high), float(value)
    if hi <= lo:
        return None
    if knob.log and lo > 0 and v > 0:
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo)


def edge_of_range(space: Space, point: Mapping[str, Any], fraction: float = 0.05
                  ) -> tuple[str, ...]:
    """One note per knob whose value is within ``fraction`` of its range's low or high end
    (in the knob's own scale): a winner there may be better still outside the range."""
    notes = []
    for k in space.knobs:
        if k.name not in point:
            continue
        pos = _position(k, point[k.name])
        if pos is None:
            continue
        if pos >= 1 - fraction:
            notes.append(f"--{k.flag} {point[k.name]} is at the top of the searched range "
                         f"({k.low:g}..{k.high:g}): the range may be too narrow; "
                         "try a higher high")
        elif pos <= fraction:
            notes.append(f"--{k.flag} {point[k.name]} is at the bottom of the searched range "
                         f"({k.low:g}..{k.high:g}): the range may be too narrow; "
                         "try a lower low")
    return tuple(notes)
