"""Render results for people: status tables, suggest reports, tuning reports (Markdown/JSON/plots).

Printing-oriented code lives here and in ``cli.py`` only. Functions take finished records and
return strings (or write files), so they are pure and easy to test. ``text`` holds the status
and suggest tables, ``tune`` the tuning outputs, ``plots`` the PNGs (matplotlib), ``live`` the
terminal view of a running search (rich).
"""

from tuner.report.live import TuneLiveView
from tuner.report.plots import pareto_front, write_tune_plots
from tuner.report.text import (
    render_status,
    render_suggest_markdown,
    render_suggest_table,
    render_table,
)
from tuner.report.tune import (
    kubernetes_patch,
    render_tune_csv,
    render_tune_report,
    tune_best_json,
    vllm_serve_command,
    write_tune_outputs,
)

__all__ = [
    "TuneLiveView",
    "kubernetes_patch",
    "pareto_front",
    "render_status",
    "render_suggest_markdown",
    "render_suggest_table",
    "render_table",
    "render_tune_csv",
    "render_tune_report",
    "tune_best_json",
    "vllm_serve_command",
    "write_tune_outputs",
    "write_tune_plots",
]
