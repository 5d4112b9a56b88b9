"""Render results for people: status tables, suggest reports, tuning reports (Markdown/JSON/plots).

Printing-oriented code lives here and in ``cli.py`` only. Functions take finished records and
return strings (or write files), so they are pure and easy to test.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.signals import format_signal

if TYPE_CHECKING:
    from tuner.daemon import Status


def _ago(now: float, ts: float | None) -> str:
    if ts is None:
        return "never"
    secs = max(0.0, now - ts)
    if secs < 120:
        return f"{secs:.0f}s ago"
    if secs < 7200:
        return f"{secs / 60:.0f}m ago"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_status(status: Status) -> str:
    """``tuner status`` as two tables: targets, then live signals per instance."""
    target_rows = []
    for t in status.targets:
        state = "unknown" if t.up is None else ("up" if t.up else "DOWN")
        target_rows.append([t.name, t.kind, state, _ago(status.now, t.last_scrape), t.error[:80]])
    out = [f"store: {status.store_path}", ""]
    out.append(render_table(["target", "kind", "state", "last scrape", "error"], target_rows))
    out.append("")
    defs = status.signal_defs
    if not status.signals:
        out.append("no signals yet: the store has no recent vLLM or DCGM samples")
    else:
        rows = [
            [inst or "-", *(format_signal(d, sigs.get(d.name)) for d in defs)]
            for inst, sigs in sorted(status.signals.items())
        ]
        out.append(render_table(["instance", *(d.name for d in defs)], rows))
    return "\n".join(out)


# ----------------------------------------------------------------------------- tune
# Rendering of ``tuner tune`` results (owned by the tune engineer). These functions take the
# duck-typed records of tuner.tune (TuneOutcome, Trial, Candidate); report sits below tune in
# the layering, so it never imports it at runtime.

_TUNE_CSV_METRICS = (
    "output_tok_per_s",
    "goodput_tok_per_s",
    "ttft_p50",
    "ttft_p99",
    "itl_p50",
    "itl_p99",
    "e2e_p99",
    "error_rate",
    "requests",
    "errors",
    "preemptions",
    "preemptions_per_1k_requests",
    "kv_usage_max",
    "kv_usage_mean",
    "spec_decode_acceptance",
)


def _num(v: object, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return ""
        return f"{v:.{digits}g}"
    return str(v)


def render_tune_csv(outcome: Any) -> str:
    """``trials.csv``: one row per trial (number, kind, state, reason, knobs, flags, metrics)."""
    import csv
    import io
    import json

    knobs = [k.name for k in outcome.config.space.knobs]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "kind", "state", "reason", *knobs, "objective", "loss",
                *_TUNE_CSV_METRICS, "start_s", "load_s", "total_s", "flags", "notes"])
    for t in outcome.trials:
        m = t.measurement
        point = t.point
        w.writerow([
            t.number, t.kind, t.state, t.reason,
            *(_num(point.get(k)) if k in point else _num(t.flags.get(
                next(kn.flag for kn in outcome.config.space.knobs if kn.name == k)))
              for k in knobs),
            _num(t.objective, 6), _num(t.loss, 6),
            *(_num(getattr(m, f), 6) if m is not None else "" for f in _TUNE_CSV_METRICS),
            _num(t.timings.get("start_s"), 4), _num(t.timings.get("load_s"), 4),
            _num(t.timings.get("total_s"), 4),
            json.dumps(dict(t.flags), sort_keys=True), "; ".join(t.notes),
        ])
    return buf.getvalue()


def _cand_json(c: Any) -> dict[str, Any] | None:
    if c is None:
        return None
    vals = c.values
    return {
        "point": dict(c.point),
        "flags": dict(c.flags),
        "trials": [t.number for t in c.runs],
        "objective_mean": _finite(c.mean),
        "objective_stdev": _finite(c.stdev),
        "objective_runs": vals,
        "feasible": c.feasible,
    }


def _finite(v: Any) -> Any:
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v


def tune_best_json(outcome: Any) -> dict[str, Any]:
    """``best.json``: the flags to use (winner, or the baseline when nothing beat the SLO)."""
    cfg = outcome.config
    cmp_ = outcome.comparison
    return {
        "model": cfg.launch.model,
        "flags": dict(outcome.best_flags),
        "args": list(outcome.best_args),
        "vllm_serve": vllm_serve_command(outcome),
        "source": outcome.recommend,
        "slo_met": outcome.winner is not None,
        "objective": {"kind": cfg.objective.kind, "unit": cfg.objective.unit},
        "winner": _cand_json(outcome.winner),
        "baseline": _cand_json(outcome.baseline),
        "gain": None if cmp_ is None else {
            "fraction": _finite(cmp_.gain),
            "low": _finite(cmp_.gain_low),
            "high": _finite(cmp_.gain_high),
            "significant": cmp_.significant,
            "verdict": cmp_.verdict,
        },
        "best_infeasible": [_cand_json(c) for c in outcome.best_infeasible],
        "trials": len(outcome.trials),
        "complete": outcome.complete,
    }


def vllm_serve_command(outcome: Any) -> str:
    """A ready ``vllm serve MODEL --flag value ...`` command line (shell-quoted)."""
    import shlex

    args = list(outcome.best_args)
    if args[:1] == ["--model"] and len(args) > 1:  # vllm serve takes the model positionally
        args = [args[1], *args[2:]]
    return "vllm serve " + " ".join(shlex.quote(a) for a in args)


def kubernetes_patch(outcome: Any) -> dict[str, Any]:
    """A strategic-merge patch for the production Deployment: the vLLM container's args.

    Containers merge by name, and ``args`` is replaced as a whole, so the patch carries every
    argument (model and all flags) that the tuned server needs.
    """
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": outcome.config.container_name, "args": list(outcome.best_args)}
                    ]
                }
            }
        }
    }


def _fmt_value(v: Any, unit: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if unit == "$/Mtok":
        return f"${v:,.4f}"
    return f"{v:,.1f}"


def _ms(v: Any) -> str:
    if v is None or (isinstance(v, float) and (v != v or v == float("inf"))):
        return "-"
    return f"{v * 1000:,.0f} ms"


def _mean_metric(c: Any, name: str) -> float | None:
    vals = [getattr(t.measurement, name) for t in c.runs if t.measurement is not None]
    vals = [v for v in vals if isinstance(v, int | float) and v == v]
    return sum(vals) / len(vals) if vals else None


def _knob_cell(trial: Any, knob: Any) -> str:
    """A knob's value in a trial: the searched value, else the launch flag, else vLLM's default."""
    point = trial.point
    if knob.name in point:
        return _num(point[knob.name])
    value = trial.flags.get(knob.flag)
    return _num(value) if value is not None else "default"


def render_tune_report(outcome: Any) -> str:
    """``report.md``: best flags against the baseline, the verdict, commands, every trial."""
    import json

    import yaml

    cfg = outcome.config
    unit = cfg.objective.unit
    dph = cfg.objective.dollars_per_hour
    lines = ["# vLLM flag tuning report", ""]
    lines.append(f"Model: `{cfg.launch.model}` · objective: **{cfg.objective.kind}** ({unit}) · "
                 f"{len(outcome.trials)} trials" + ("" if outcome.complete else " (incomplete)"))
    slo_parts = [f"{k} ≤ {v:g}" for k, v in vars(cfg.slo).items() if v is not None]
    lines.append(f"SLO: {', '.join(slo_parts) if slo_parts else 'none'}")
    lines.append("")
    states: dict[str, int] = {}
    for t in outcome.trials:
        states[t.state] = states.get(t.state, 0) + 1
    lines.append("Trials by state: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    lines.append("")
    lines.append("## Verdict")
    lines.append("")
    if outcome.winner is None:
        lines.append("**No searched configuration met the SLO.** Keep the baseline flags"
                     + (" (the baseline met it)." if outcome.baseline is not None
                        and outcome.baseline.feasible else " (the baseline missed it too)."))
        if outcome.best_infeasible:
            lines += ["", "Best configurations that missed the SLO (closest first):", ""]
            lines.append("| point | objective | p99 TTFT | p99 ITL | error rate | missed |")
            lines.append("| --- | --- | --- | --- | --- | --- |")
            for c in outcome.best_infeasible:
                missed = sorted({k for t in c.runs for k in t.violations})
                lines.append(
                    f"| `{json.dumps(dict(c.point), sort_keys=True)}` | "
                    f"{_fmt_value(c.mean, unit)} | {_ms(_mean_metric(c, 'ttft_p99'))} | "
                    f"{_ms(_mean_metric(c, 'itl_p99'))} | "
                    f"{_num(_mean_metric(c, 'error_rate'), 3) or '-'} | {', '.join(missed)} |"
                )
    elif outcome.comparison is not None:
        if outcome.recommend == "baseline":
            lines.append("Keep the baseline flags: the best candidate did not beat them beyond "
                         "the noise.")
            lines.append("")
        confirmed = any(t.kind == "confirm" for t in outcome.trials)
        lines.append(f"**{outcome.comparison.verdict}** (winner vs baseline, "
                     f"{outcome.comparison.winner_n} vs {outcome.comparison.baseline_n} runs"
                     + (", re-measured interleaved)" if confirmed else
                        "; no interleaved re-measurement was configured)"))
    lines.append("")
    lines.append("## Best against baseline")
    lines.append("")
    lines.append("| | baseline | best candidate |")
    lines.append("| --- | --- | --- |")
    b, w = outcome.baseline, outcome.winner or outcome.baseline

    def pair(fn: Any) -> str:
        return f"{fn(b) if b is not None else '-'} | {fn(w) if w is not None else '-'}"

    def mean_sd(c: Any) -> str:
        sd = c.stdev
        return _fmt_value(c.mean, unit) + ("" if sd != sd else f" ± {_fmt_value(sd, unit)}")

    lines.append(f"| {cfg.objective.kind} ({unit}), mean ± sd | {pair(mean_sd)} |")
    lines.append(f"| runs | {pair(lambda c: str(len(c.values)))} |")
    lines.append(f"| output tok/s | {pair(lambda c: _fmt_value(_mean_metric(c, 'output_tok_per_s'), 'tok/s'))} |")  # noqa: E501
    lines.append(f"| p99 TTFT | {pair(lambda c: _ms(_mean_metric(c, 'ttft_p99')))} |")
    lines.append(f"| p99 ITL | {pair(lambda c: _ms(_mean_metric(c, 'itl_p99')))} |")
    lines.append(f"| p99 e2e | {pair(lambda c: _ms(_mean_metric(c, 'e2e_p99')))} |")
    lines.append(f"| preemptions | {pair(lambda c: _num(_mean_metric(c, 'preemptions'), 4) or '-')} |")  # noqa: E501
    if dph:
        def cost(c: Any) -> str:
            tps = _mean_metric(c, "output_tok_per_s")
            return f"${dph / (tps * 3600) * 1e6:,.4f}" if tps else "-"

        lines.append(f"| $/Mtok at ${dph:g}/h | {pair(cost)} |")
    if outcome.comparison is not None:
        c = outcome.comparison
        lines.append(f"| gain | | {c.gain * 100:+.1f}% ({c.gain_low * 100:+.1f}% .. "
                     f"{c.gain_high * 100:+.1f}%) |")
    lines.append("")
    lines.append(f"Recommended flags ({outcome.recommend}): `"
                 + json.dumps(dict(outcome.best_flags), sort_keys=True) + "`")
    lines.append("")
    lines.append("## Apply")
    lines.append("")
    lines.append("```sh")
    lines.append(vllm_serve_command(outcome))
    lines.append("```")
    lines.append("")
    lines.append("Kubernetes (strategic-merge patch of the vLLM container; `args` is replaced "
                 "as a whole):")
    lines.append("")
    lines.append("```yaml")
    lines.append(yaml.safe_dump(kubernetes_patch(outcome), sort_keys=False).rstrip())
    lines.append("```")
    lines.append("")
    lines.append("## Trials")
    lines.append("")
    knobs = [k.name for k in cfg.space.knobs]
    lines.append("| # | kind | state | " + " | ".join(knobs) +
                 f" | {unit} | p99 TTFT | p99 ITL | reason |")
    lines.append("|" + " --- |" * (7 + len(knobs)))
    for t in outcome.trials:
        m = t.measurement
        vals = " | ".join(_knob_cell(t, k) for k in cfg.space.knobs)
        lines.append(
            f"| {t.number} | {t.kind} | {t.state} | {vals} | {_fmt_value(t.objective, unit)} | "
            f"{_ms(m.ttft_p99 if m else None)} | {_ms(m.itl_p99 if m else None)} | "
            f"{t.reason or ', '.join(sorted(t.violations))} |"
        )
    failed = [t for t in outcome.trials if t.state == "failed" and t.log_tail]
    if failed:
        lines += ["", "## Failed trials", ""]
        for t in failed:
            tail = "\n".join(t.log_tail.splitlines()[-8:])
            flags = json.dumps(dict(t.flags), sort_keys=True)
            lines += [f"Trial {t.number} ({t.reason}): `{flags}`", "", "```", tail, "```", ""]
    lines += ["", "Plots: `convergence.png`, `throughput_vs_ttft.png`, `objective_vs_knobs.png`."]
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (latency, throughput) not dominated by another (lower latency AND higher tput)."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for lat, tput in sorted(points, key=lambda p: (p[0], -p[1])):
        if tput > best:
            front.append((lat, tput))
            best = tput
    return front


def write_tune_plots(outcome: Any, out: Path) -> list[Path]:
    """PNG plots: convergence; throughput vs p99 TTFT (SLO line, Pareto front); objective vs
    each knob."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = outcome.config
    unit = cfg.objective.unit
    higher = cfg.objective.higher_is_better
    colors = {"ok": "tab:green", "slo": "tab:orange", "failed": "tab:red", "rejected": "tab:gray"}
    paths = []
    trials = list(outcome.trials)

    fig, ax = plt.subplots(figsize=(7, 4))
    best: float | None = None
    xs, ys = [], []
    for t in trials:
        if t.state == "ok" and t.objective is not None and (
            best is None or (t.objective > best) == higher
        ):
            best = t.objective
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    for state, color in colors.items():
        pts = [(t.number, t.objective) for t in trials if t.state == state
               and t.objective is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, label=state, s=25,
                       zorder=3)
        fails = [t.number for t in trials if t.state == state and t.objective is None]
        if fails:
            ax.scatter(fails, [0] * len(fails), c=color, marker="x", s=30, zorder=3,
                       label=f"{state} (no measurement)")
    if xs:
        ax.step(xs, ys, where="post", c="black", label="best feasible so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{cfg.objective.kind} ({unit})")
    ax.set_title("Convergence")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "convergence.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    pts_all = []
    for state, color in colors.items():
        pts = [(t.measurement.ttft_p99, t.measurement.output_tok_per_s) for t in trials
               if t.state == state and t.measurement is not None
               and t.measurement.ttft_p99 == t.measurement.ttft_p99]
        pts_all += pts
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, label=state, s=25,
                       zorder=3)
    front = pareto_front(pts_all)
    if front:
        # ringed markers, so a front of a single point (one config dominating) still shows
        ax.plot(*zip(*front, strict=True), c="black", lw=1, ls="--", marker="o", ms=9,
                mfc="none", zorder=4, label="Pareto front")
    if cfg.slo.ttft_p99_seconds is not None:
        ax.axvline(cfg.slo.ttft_p99_seconds, c="tab:red", lw=1, label="SLO p99 TTFT")
    ax.set_xlabel("p99 TTFT (s)")
    ax.set_ylabel("output tok/s")
    ax.set_title("Throughput against p99 TTFT")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "throughput_vs_ttft.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    knobs = list(cfg.space.knobs)
    fig, axes = plt.subplots(1, len(knobs), figsize=(4 * len(knobs), 3.5), squeeze=False)
    for ax, knob in zip(axes[0], knobs, strict=True):
        for state, color in colors.items():
            pts = []
            for t in trials:
                v = t.point.get(knob.name, t.flags.get(knob.flag))
                if t.state == state and v is not None:
                    pts.append((str(v) if knob.kind == "categorical" else v,
                                t.objective if t.objective is not None else 0.0))
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, s=25, label=state)
        if knob.log:
            ax.set_xscale("log")
        ax.set_xlabel(f"{knob.name} (--{knob.flag})")
        ax.set_ylabel(f"{cfg.objective.kind} ({unit})")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "objective_vs_knobs.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def write_tune_outputs(outcome: Any, out: Path) -> list[Path]:
    """Write trials.csv, best.json, report.md and the plots into ``out``; returns the paths.

    Raises TunerError naming the file when it cannot be written (e.g. a full disk).
    """
    import json

    from tuner.errors import TunerError

    files = {
        out / "trials.csv": render_tune_csv(outcome),
        out / "best.json": json.dumps(tune_best_json(outcome), indent=2, sort_keys=True) + "\n",
        out / "report.md": render_tune_report(outcome),
    }
    written = []
    try:
        for path, text in files.items():
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            written.append(path)
        written += write_tune_plots(outcome, out)
    except OSError as exc:
        raise TunerError(f"cannot write tune results to {out}: {exc.strerror or exc} "
                         "(is the disk full?); the trials are safe in tune.db — free space "
                         "and rerun with --resume to write them") from None
    return written


class TuneLiveView:
    """The live progress of ``tuner tune`` (rich): a progress bar over a table of trials.

    Implements tuner.tune.TuneObserver; use as a context manager around the search.
    """

    def __init__(self, outcome_config: Any, planned: int, console: Any = None) -> None:
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

    def trial_started(self, number: int, step: Any) -> None:
        p = step.point
        flags = step.flags or {}
        self.rows[number] = [str(number), step.kind, "[cyan]running",
                             *(_num(p[k.name]) if k.name in p else _num(flags.get(k.flag))
                               or "default" for k in self.cfg.space.knobs), "", "", "", ""]
        self.progress.update(self.task, description=f"trial {number} ({step.kind})")
        self.live.update(self._render())

    def trial_finished(self, trial: Any, planned: int) -> None:
        color = {"ok": "green", "slo": "yellow", "failed": "red"}.get(trial.state, "white")
        m = trial.measurement
        self.rows[trial.number] = [
            str(trial.number), trial.kind, f"[{color}]{trial.state}",
            *(_knob_cell(trial, k) for k in self.cfg.space.knobs),
            _fmt_value(trial.objective, self.cfg.objective.unit),
            _ms(m.ttft_p99 if m else None), _ms(m.itl_p99 if m else None),
            trial.reason or ", ".join(sorted(trial.violations)),
        ]
        done = sum(1 for r in self.rows.values() if "running" not in r[2])
        self.progress.update(self.task, completed=done, total=max(planned, done))
        self.live.update(self._render())


# -------------------------------------------------------------------------- suggest
# Rendering of ``tuner suggest`` reports (the JSON dict built by tuner.suggest.suggest).


def _suggest_value(v: Any) -> str:
    if v is None:
        return "?"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _suggest_target(labels: dict[str, str]) -> str:
    parts = [labels.get(k, "") for k in ("namespace", "deployment", "model_name", "instance")]
    return "/".join(p for p in parts if p) or "-"


def _suggest_change(r: dict[str, Any]) -> str:
    if r["direction"] == "none":
        return "no change"
    if r["direction"] == "off":
        return "turn off"
    arrow = "↓" if r["direction"] == "down" else "↑"
    return f"{_suggest_value(r['current'])} → {_suggest_value(r['suggested'])} {arrow}"


def render_suggest_table(report: dict[str, Any]) -> str:
    """``tuner suggest --format table``: window, findings, recommendations, conflicts."""
    w = report["window"]
    head = f"suggest over {w['start']} → {w['end']} ({report['source']})"
    if report.get("partial"):
        head += "  [PARTIAL]"
    out = [head]
    out.extend(f"note: {n}" for n in w.get("notes", []))
    for t in report.get("targets", []):
        out.extend(f"note ({_suggest_target(t['labels'])}): {n}" for n in t.get("notes", []))
        if t.get("missing"):
            out.append(f"missing ({_suggest_target(t['labels'])}): " + "; ".join(t["missing"]))
        out.extend(f"skipped: {s}" for s in t.get("skipped", []))
    out.append("")
    out.append("Findings")
    rows = [[_suggest_target(f["target"]), f["severity"], f["summary"]]
            for f in report["findings"]]
    out.append(render_table(["target", "severity", "finding"], rows) if rows else "  (none)")
    out.append("")
    out.append("Recommendations")
    rows = [[_suggest_target(r["target"]), r["flag"] or "-", _suggest_change(r),
             r["confidence"], r["reason"]] for r in report["recommendations"]]
    out.append(render_table(["target", "flag", "change", "confidence", "why"], rows))
    if report.get("conflicts"):
        out.append("")
        out.append("Conflicts")
        out.extend(f"- {_suggest_target(c['target'])}: {c['resolution']}"
                   for c in report["conflicts"])
    return "\n".join(out)


def render_suggest_markdown(report: dict[str, Any]) -> str:
    """``tuner suggest --format markdown``: the report as a Markdown document."""
    w = report["window"]
    out = [f"# vLLM flag suggestions, {w['start']} → {w['end']}", "",
           f"Source: {report['source']}. Window {w['since']}, evaluated every "
           f"{w['step_seconds']:g}s." + (" **Partial results.**" if report.get("partial")
                                          else "")]
    for n in w.get("notes", []):
        out.append(f"> {n}")
    for t in report.get("targets", []):
        name = _suggest_target(t["labels"])
        out += ["", f"## {name}", ""]
        for n in t.get("notes", []):
            out.append(f"> {n}")
        if t.get("missing"):
            out.append(f"> Missing metrics: {'; '.join(t['missing'])}")
        out += ["", "### Recommendations", ""]
        for r in report["recommendations"]:
            if r["target"] != t["labels"]:
                continue
            if r["direction"] == "none":
                out.append(f"- **No change.** {r['reason']}")
                continue
            out.append(f"- **`{r['flag']}`**: {_suggest_change(r)} ({r['confidence']} "
                       f"confidence). {r['reason']}. Expected: {r['expected_effect']}.")
            for e in r["evidence"]:
                out.append(f"  - evidence: {e['summary']}")
        conflicts = [c for c in report.get("conflicts", []) if c["target"] == t["labels"]]
        if conflicts:
            out += ["", "### Conflicts", ""]
            out.extend(f"- {c['resolution']}" for c in conflicts)
        out += ["", "### Findings", ""]
        out.extend(f"- ({f['severity']}) {f['summary']}" for f in report["findings"]
                   if f["target"] == t["labels"])
        wl = t.get("workload") or {}
        if wl:
            out += ["", "### Workload", ""]
            for key in ("prompt_tokens", "output_tokens"):
                d = wl.get(key)
                if d:
                    out.append(f"- {key.replace('_', ' ')}: p50 {d['p50']:,.0f}, "
                               f"p99 {d['p99']:,.0f}, max {d['max']:,.0f}")
            if wl.get("request_rate_per_s") is not None:
                out.append(f"- requests: {wl['request_rate_per_s']:.2f}/s mean, "
                           f"{(wl.get('peak_request_rate_per_s') or 0):.2f}/s peak hour")
    return "\n".join(out) + "\n"
