"""``analyze``: one server over one segment, from its window view to findings and changes.

The pipeline is three tables run in order over one ``WindowView``: the finding rules
(``tuner.suggest.findings.FINDINGS``), the recommendation rules
(``tuner.suggest.recommendations.RECOMMENDATIONS``) and the conflict rules
(``tuner.suggest.resolver.RESOLUTIONS``); when no recommendation is left, "no change" says what
was healthy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuner.config import SLO
from tuner.suggest.findings import find
from tuner.suggest.recommendations import no_change, propose
from tuner.suggest.records import Analysis
from tuner.suggest.resolver import resolve
from tuner.suggest.view import WindowView, view_of
from tuner.suggest.window import Segment, TargetData


def analyze_view(v: WindowView) -> Analysis:
    """Findings, recommendations (conflicts resolved), missing signals and skipped rules."""
    findings = find(v)
    proposals, skipped = propose(v, findings)
    resolution = resolve(v, proposals)
    recs = resolution.recommendations or (no_change(v, findings),)
    return Analysis(tuple(findings.values()), recs, resolution.conflicts, v.missing,
                    tuple(skipped))


def analyze(td: TargetData, slo: SLO, launch: Mapping[str, Any], step: float,
            dollars_per_hour: float = 0.0, segment: Segment | None = None) -> Analysis:
    """Findings and recommendations for one server over ``segment`` (default: the last)."""
    return analyze_view(view_of(td, slo, launch, step, dollars_per_hour, segment))
