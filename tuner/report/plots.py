"""PNG plots of a tuning search (matplotlib, headless; the only module that imports it).

Readable at a glance: the baseline (its mean, a dashed line, and its runs as squares) and the
winner (a star) are marked on every plot, the latency SLO is drawn where latency is an axis,
each knob's axis is named by its real vLLM flag (``--max-num-seqs``), and tick labels never
overlap (``declutter_ticks`` thins or rotates them until their boxes are apart; the tests
check the boxes with matplotlib's renderer). ``build_tune_figures`` makes the figures,
``write_tune_plots`` saves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATE_COLORS = {"ok": "tab:green", "slo": "tab:orange", "failed": "tab:red",
                "rejected": "tab:gray", "stopped": "tab:purple"}
BASELINE_COLOR = "tab:blue"
WINNER_COLOR = "gold"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (latency, throughput) not dominated by another (lower latency AND higher tput)."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for lat, tput in sorted(points, key=lambda p: (p[0], -p[1])):
        if tput > best:
            front.append((lat, tput))
            best = tput
    return front


def flag_label(knob: Any) -> str:
    """A knob's axis label: its real vLLM flag (``--max-num-seqs``)."""
    return f"--{knob.flag}"


def boxes_overlap(boxes: list[Any], pad: float = 1.0) -> bool:
    """True when any two boxes (matplotlib ``Bbox``, display pixels) overlap, with ``pad``."""
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if (a.x0 < b.x1 + pad and b.x0 < a.x1 + pad
                    and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad):
                return True
    return False


def tick_label_boxes(ax: Any, renderer: Any, axis: str = "x") -> list[Any]:
    """Window extents of the visible, non-empty tick labels of one axis."""
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_window_extent(renderer) for t in ticks
            if t.get_visible() and t.get_text().strip()]


def labels_overlap(ax: Any, renderer: Any, axis: str = "x") -> bool:
    """True when two tick labels of ``axis`` overlap on the drawn figure."""
    return boxes_overlap(tick_label_boxes(ax, renderer, axis))


def declutter_ticks(fig: Any, ax: Any, thin_x: bool = True, integer: bool = False) -> None:
    """Thin (``thin_x``: a linear numeric axis; ``integer``: whole-number ticks) and then
    rotate x tick labels until none overlap; thin y labels likewise."""
    from matplotlib.ticker import MaxNLocator

    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    for nbins in (8, 6, 4, 3, 2):
        if not thin_x or not labels_overlap(ax, renderer, "x"):
            break
        ax.xaxis.set_major_locator(MaxNLocator(nbins=nbins, integer=integer))
        fig.canvas.draw()
    for angle in (30, 60, 90):
        if not labels_overlap(ax, renderer, "x"):
            break
        for label in ax.get_xticklabels():
            label.set_rotation(angle)
            label.set_horizontalalignment("right")
        fig.canvas.draw()
    if labels_overlap(ax, renderer, "x"):  # still crowded: show every other label
        for i, label in enumerate(ax.get_xticklabels()):
            label.set_visible(i % 2 == 0)
        fig.canvas.draw()
    for nbins in (6, 4, 3):
        if not labels_overlap(ax, renderer, "y"):
            break
        ax.yaxis.set_major_locator(MaxNLocator(nbins=nbins))
        fig.canvas.draw()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _finish(fig: Any, axes: list[Any], thin_x: list[bool] | None = None,
            integer: list[bool] | None = None) -> None:
    fig.tight_layout()
    for i, ax in enumerate(axes):
        declutter_ticks(fig, ax, thin_x[i] if thin_x else True, bool(integer and integer[i]))
    fig.tight_layout()


def _convergence(plt: Any, outcome: Any) -> Any:
    from matplotlib.ticker import MaxNLocator

    cfg = outcome.config
    higher = cfg.objective.higher_is_better
    trials = list(outcome.trials)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
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
    for state, color in STATE_COLORS.items():
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
        ax.step(xs, ys, where="post", c="black", lw=1, label="best feasible so far")
    _mark_baseline_and_winner(ax, outcome, x_of=lambda t: t.number)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{cfg.objective.kind} ({cfg.objective.unit})")
    ax.set_title("Convergence")
    ax.legend(fontsize=7, loc="best")
    _finish(fig, [ax], integer=[True])
    return fig


def _mark_baseline_and_winner(ax: Any, outcome: Any, x_of: Any) -> None:
    """The baseline's mean as a dashed line and its runs as squares; the winner as stars."""
    base = outcome.baseline
    if base is not None:
        mean = _mean(list(base.values))
        if mean is not None:
            ax.axhline(mean, c=BASELINE_COLOR, ls="--", lw=1, label=f"baseline mean {mean:,.4g}",
                       zorder=2)
        pts = [(x_of(t), t.objective) for t in base.runs if t.objective is not None]
        pts = [p for p in pts if p[0] is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="s", s=60,
                       facecolors="none", edgecolors=BASELINE_COLOR, lw=1.5, zorder=4,
                       label="baseline runs")
    win = outcome.winner
    if win is not None and win.subject != getattr(base, "subject", None):
        pts = [(x_of(t), t.objective) for t in win.runs if t.objective is not None]
        pts = [p for p in pts if p[0] is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="*", s=220,
                       c=WINNER_COLOR, edgecolors="black", lw=0.8, zorder=5, label="winner")


def _throughput_vs_ttft(plt: Any, outcome: Any) -> Any:
    cfg = outcome.config
    trials = list(outcome.trials)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    pts_all = []
    for state, color in STATE_COLORS.items():
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
    for cand, style in ((outcome.baseline, "baseline"), (outcome.winner, "winner")):
        if cand is None or (style == "winner" and outcome.baseline is not None
                            and cand.subject == outcome.baseline.subject):
            continue
        pts = [(t.measurement.ttft_p99, t.measurement.output_tok_per_s) for t in cand.runs
               if t.measurement is not None and t.measurement.ttft_p99 == t.measurement.ttft_p99]
        if not pts:
            continue
        if style == "baseline":
            ax.scatter(*zip(*pts, strict=True), marker="s", s=70, facecolors="none",
                       edgecolors=BASELINE_COLOR, lw=1.5, zorder=5, label="baseline")
        else:
            ax.scatter(*zip(*pts, strict=True), marker="*", s=220, c=WINNER_COLOR,
                       edgecolors="black", lw=0.8, zorder=6, label="winner")
    if cfg.slo.ttft_p99_seconds is not None:
        ax.axvline(cfg.slo.ttft_p99_seconds, c="tab:red", lw=1.2,
                   label=f"SLO p99 TTFT {cfg.slo.ttft_p99_seconds:g} s")
        ax.axvspan(cfg.slo.ttft_p99_seconds, max([cfg.slo.ttft_p99_seconds * 1.5]
                                                  + [p[0] * 1.05 for p in pts_all]),
                   color="tab:red", alpha=0.06, zorder=0)
    ax.set_xlabel("p99 TTFT at the load client (s)")
    ax.set_ylabel("output tok/s")
    ax.set_title("Throughput against p99 TTFT (shaded: misses the SLO)")
    ax.legend(fontsize=7, loc="best")
    _finish(fig, [ax])
    return fig


def _knob_value(t: Any, knob: Any) -> Any:
    v = t.point.get(knob.name, t.flags.get(knob.flag))
    if v is None:
        return None
    return str(v) if knob.kind == "categorical" else v


def _objective_vs_knobs(plt: Any, outcome: Any) -> Any:
    cfg = outcome.config
    trials = list(outcome.trials)
    knobs = list(cfg.space.knobs)
    tall = any(k.kind == "categorical" for k in knobs)  # room for rotated choice labels
    fig, axes = plt.subplots(1, len(knobs), figsize=(4.2 * len(knobs) + 1.6, 4.8 if tall else 3.8),
                             squeeze=False)
    for ax, knob in zip(axes[0], knobs, strict=True):
        if knob.kind == "categorical":  # every choice on the axis, in the configured order
            ax.xaxis.update_units([str(v) for v in knob.values])
        for state, color in STATE_COLORS.items():
            pts = [(_knob_value(t, knob), t.objective if t.objective is not None else 0.0)
                   for t in trials if t.state == state]
            pts = [p for p in pts if p[0] is not None]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, s=25, label=state,
                           zorder=3)
        _mark_baseline_and_winner(ax, outcome, x_of=lambda t, k=knob: _knob_value(t, k))
        if knob.log:
            ax.set_xscale("log")
        ax.set_xlabel(flag_label(knob))
        ax.set_ylabel(f"{cfg.objective.kind} ({cfg.objective.unit})")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # off the data
    fig.suptitle("Objective against each knob (baseline: dashed line and squares; "
                 "winner: star)", fontsize=9)
    _finish(fig, list(axes[0]), [k.kind != "categorical" and not k.log for k in knobs],
            [k.kind == "integer" for k in knobs])
    return fig


def build_tune_figures(outcome: Any) -> dict[str, Any]:
    """The search's figures by file name (matplotlib ``Figure``s; close them when done)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return {
        "convergence.png": _convergence(plt, outcome),
        "throughput_vs_ttft.png": _throughput_vs_ttft(plt, outcome),
        "objective_vs_knobs.png": _objective_vs_knobs(plt, outcome),
    }


def write_tune_plots(outcome: Any, out: Path) -> list[Path]:
    """PNG plots: convergence; throughput vs p99 TTFT (SLO line, Pareto front); objective vs
    each knob — baseline and winner marked on each."""
    import matplotlib.pyplot as plt

    paths = []
    for name, fig in build_tune_figures(outcome).items():
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
