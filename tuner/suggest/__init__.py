"""From a window of metrics to vLLM flag recommendations, with the evidence behind each one.

Three steps, the middle one pure:

1. ``collect`` (``window``) reads the window from a ``tuner.source.Source``: the window
   signals of ``tuner.signals`` as range queries at a step, whole-window totals, the
   configuration (``vllm:cache_config_info``) and restarts, and the workload fingerprint;
   one ``TargetData`` per server, split into segments at configuration changes.
2. ``analyze`` (``analysis``) builds the ``WindowView`` of one server over one segment
   (``view``) and runs three ordered tables over it: the finding rules (``findings``), the
   recommendation rules (``recommendations``) and the conflict rules (``resolve``).
   Thresholds are in ``thresholds``; the records and their modes in ``records``.
3. ``suggest`` (``run``) assembles the stable JSON report (README "suggest JSON");
   ``run_suggest`` is the command; ``run_scheduled_suggest`` stores a report as a
   ``suggest_report`` document and keeps the last N.
"""

from __future__ import annotations

from tuner.errors import SuggestError
from tuner.suggest.analysis import analyze, analyze_view
from tuner.suggest.findings import FINDINGS, find
from tuner.suggest.recommendations import RECOMMENDATIONS, Rule, Skip, no_change, propose
from tuner.suggest.records import (
    Analysis,
    Confidence,
    CurrentSource,
    Direction,
    Finding,
    FindingId,
    Recommendation,
    Severity,
)
from tuner.suggest.resolver import RESOLUTIONS, Resolution, resolve
from tuner.suggest.run import (
    REPORT_VERSION,
    check_arguments,
    latest_reports,
    run_scheduled_suggest,
    run_suggest,
    suggest,
)
from tuner.suggest.view import WindowView, check_launch, launch_value, view_of
from tuner.suggest.window import (
    Segment,
    TargetData,
    Window,
    choose_step,
    collect,
    make_window,
    parse_time,
    validate_selector,
)

__all__ = [
    "FINDINGS",
    "RECOMMENDATIONS",
    "REPORT_VERSION",
    "RESOLUTIONS",
    "Analysis",
    "Confidence",
    "CurrentSource",
    "Direction",
    "Finding",
    "FindingId",
    "Recommendation",
    "Resolution",
    "Rule",
    "Segment",
    "Severity",
    "Skip",
    "SuggestError",
    "TargetData",
    "Window",
    "WindowView",
    "analyze",
    "analyze_view",
    "check_arguments",
    "check_launch",
    "choose_step",
    "collect",
    "find",
    "latest_reports",
    "launch_value",
    "make_window",
    "no_change",
    "parse_time",
    "propose",
    "resolve",
    "run_scheduled_suggest",
    "run_suggest",
    "suggest",
    "validate_selector",
    "view_of",
]
