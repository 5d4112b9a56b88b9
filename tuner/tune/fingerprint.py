"""The workload a search was tuned for, as a fingerprint stored with the result (``best.json``).

``tuned_workload`` fingerprints the baseline trial's canary with the production function
(``tuner.workload.fingerprint``, the canary's own vLLM histograms over its trial, read from the
search's store) so the daemon compares like with like: the same histograms, the same bucket
bounds. Two fields come from the load instead of the canary, because a benchmark's canary does
not see production's traffic: the arrival rate is the load's ``request_rate`` when it has one
and unknown for a closed loop (a closed loop runs as fast as the server goes, which says
nothing about production), and a load built from a production fingerprint
(``load: {workload: file}``) keeps that fingerprint's rate. ``source`` says where each part
came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tuner.load import LoadSpec
from tuner.promql import Querier
from tuner.tune.records import Trial, TrialState
from tuner.workload import fingerprint


def tuned_workload(querier: Querier, trials: Sequence[Trial], load: LoadSpec,
                   load_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fingerprint of the first measured baseline trial (None without one)."""
    base = next((t for t in sorted(trials, key=lambda t: t.number)
                 if t.measures_baseline and t.state is not TrialState.FAILED
                 and t.ended > t.started), None)
    if base is None:
        return None
    fp = fingerprint(querier, base.started, base.ended, instance=f"trial-{base.number}")
    rate = load.request_rate
    workload_file = load_config.get("workload")
    fp["request_rate_per_s"] = rate if rate is not None and math.isfinite(rate) else None
    fp["peak_request_rate_per_s"] = None
    fp["request_rate_by_hour"] = []
    fp["source"] = {
        "lengths_and_prefix_reuse": f"trial {base.number} (baseline) on its canary",
        "request_rate": (f"load.workload {workload_file}" if workload_file and rate
                         else "load.request_rate" if rate
                         else "unknown: a closed-loop load has no arrival rate"),
    }
    return fp
