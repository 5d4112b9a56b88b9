"""The live view of a running search in a terminal (rich; the only module that imports it)."""

from __future__ import annotations

from typing import Any

from tuner.report.tune import fmt_ms, fmt_number, fmt_value, knob_cell
from tuner.tune import Step, Trial, TuneConfig


class TuneLiveView:
    """The live progress of ``tuner tune`` (rich): a progress bar over a table of trials.

    Implements tuner.tune.TuneObserver; use as a context manager around the search.
    """

    def __init__(self, outcome_config: TuneConfig, planned: int, console: Any = None) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.cfg = outcome_config
        if console is None:
            console = Console(stderr=True)
            if not console.is_terminal:  # a log file: room for every column
                console = Console(stderr=True, width=160)
        self.console = console
        self.progress = Progress(TextColumn("[bold]tune"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"),
                                 console=self.console)
        self.task = self.progress.add_task("", total=planned)
        self.rows: dict[int, list[str]] = {}
        self._group = Group
        self.live = Live(self._render(), console=self.console, refresh_per_second=2,
                         transient=False)

    def _render(self) -> Any:
        from rich.table import Table

        knobs = [k.name for k in self.cfg.space.knobs]
        table = Table(expand=False, show_edge=False, pad_edge=False)
        for h in ("#", "kind", "state", *knobs, self.cfg.objective.unit, "p99 TTFT", "p99 ITL",
                  "reason"):
            table.add_column(h)
        for n in sorted(self.rows)[-20:]:
            table.add_row(*self.rows[n])
        return self._group(table, self.progress)

    def __enter__(self) -> TuneLiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(None, None, None)

    def search_note(self, text: str) -> None:
        self.console.print(f"[dim]note:[/dim] {text}")

    def trial_started(self, number: int, step: Step) -> None:
        p = step.point
        flags = step.flags or {}
        self.rows[number] = [str(number), step.kind, "[cyan]running",
                             *(fmt_number(p[k.name]) if k.name in p
                               else fmt_number(flags.get(k.flag)) or "default"
                               for k in self.cfg.space.knobs), "", "", "", ""]
        self.progress.update(self.task, description=f"trial {number} ({step.kind})")
        self.live.update(self._render())

    def trial_finished(self, trial: Trial, planned: int) -> None:
        color = {"ok": "green", "slo": "yellow", "failed": "red",
                 "stopped": "magenta"}.get(trial.state, "white")
        m = trial.measurement
        self.rows[trial.number] = [
            str(trial.number), trial.kind, f"[{color}]{trial.state}",
            *(knob_cell(trial, k) for k in self.cfg.space.knobs),
            fmt_value(trial.objective, self.cfg.objective.unit),
            fmt_ms(m.ttft_p99 if m else None), fmt_ms(m.itl_p99 if m else None),
            trial.reason or ", ".join(sorted(trial.violations)),
        ]
        done = sum(1 for r in self.rows.values() if "running" not in r[2])
        self.progress.update(self.task, completed=done, total=max(planned, done))
        self.live.update(self._render())
