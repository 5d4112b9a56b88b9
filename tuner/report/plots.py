"""PNG plots of a tuning search (matplotlib, headless; the only module that imports it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.tune import TuneOutcome


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (latency, throughput) not dominated by another (lower latency AND higher tput)."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for lat, tput in sorted(points, key=lambda p: (p[0], -p[1])):
        if tput > best:
            front.append((lat, tput))
            best = tput
    return front


def write_tune_plots(outcome: TuneOutcome, out: Path) -> list[Path]:
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
        progress: list[tuple[Any, float]] = [(t.number, t.objective) for t in trials
                                             if t.state == state and t.objective is not None]
        if progress:
            ax.scatter([p[0] for p in progress], [p[1] for p in progress], c=color,
                       label=state, s=25, zorder=3)
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
    pts_all: list[tuple[float, float]] = []
    for state, color in colors.items():
        pts: list[tuple[Any, float]] = [
            (t.measurement.ttft_p99, t.measurement.output_tok_per_s) for t in trials
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
