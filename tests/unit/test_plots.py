"""The tune plots are readable at a glance: baseline and winner marked, the SLO drawn, each
knob's axis named by its real vLLM flag, and no two tick labels overlap — checked on the drawn
figures with matplotlib's renderer (tick label bounding boxes), for a long search with crowded
axes, long categorical values and a log-scaled knob."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pytest

from tests.unit.test_tune import config, trial
from tuner.report.plots import boxes_overlap, build_tune_figures, tick_label_boxes
from tuner.tune import summarize_search

SPACE = {
    "max-num-seqs": {"low": 1, "high": 1024, "log": True},
    "max-num-batched-tokens": {"low": 128, "high": 65536},
    "gpu-memory-utilization": None,
    "kv-cache-dtype": {"type": "categorical",
                       "values": ["auto", "fp8_e4m3", "fp8_e5m2", "bfloat16_with_a_long_name",
                                  "float16_another_long_name", "fp8_inc"]},
}


def long_search() -> Any:
    cfg = config(space=SPACE, budget={"trials": 40},
                 noise={"finalists": 1, "repeats": 0, "confirm_rounds": 1})
    dtypes = SPACE["kv-cache-dtype"]["values"]
    trials = [trial(cfg, 0, "baseline", None, 1000.0)]
    for i in range(1, 41):
        point = {"max-num-seqs": 2 ** (i % 10 + 1), "max-num-batched-tokens": 128 + 1600 * i,
                 "kv-cache-dtype": dtypes[i % len(dtypes)]}
        tps = None if i % 9 == 0 else 900.0 + 37.0 * (i % 13) + (800.0 if i == 23 else 0.0)
        trials.append(trial(cfg, i, "search", point, tps, ttft=0.4 + 0.1 * (i % 30)))
    trials.append(trial(cfg, 41, "confirm", None, 1010.0))
    trials.append(trial(cfg, 42, "confirm", dict(trials[23].point), 1750.0))
    return summarize_search(cfg, trials)


@pytest.fixture(scope="module")
def figures() -> Any:
    figs = build_tune_figures(long_search())
    yield figs
    for fig in figs.values():
        plt.close(fig)


def test_no_tick_labels_overlap_on_any_axis(figures: dict[str, Any]) -> None:
    for name, fig in figures.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for axis in ("x", "y"):
                boxes = tick_label_boxes(ax, renderer, axis)
                assert len(boxes) >= 2, (name, ax.get_xlabel(), axis)  # labels are drawn
                assert not boxes_overlap(boxes), (name, ax.get_xlabel(), axis,
                                                  [t.get_text() for t in ax.get_xticklabels()])


def test_overlap_check_can_fail() -> None:
    """The check itself: labels that do overlap are reported."""
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_xticks(range(20))
    ax.set_xticklabels([f"label-{i}" for i in range(20)])
    fig.canvas.draw()
    assert boxes_overlap(tick_label_boxes(ax, fig.canvas.get_renderer(), "x"))
    plt.close(fig)


def test_knob_axes_carry_the_real_flag_names(figures: dict[str, Any]) -> None:
    labels = [ax.get_xlabel() for ax in figures["objective_vs_knobs.png"].axes]
    assert labels == ["--max-num-seqs", "--max-num-batched-tokens", "--kv-cache-dtype"]


def _legend(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_baseline_and_winner_are_marked_and_the_slo_drawn(figures: dict[str, Any]) -> None:
    conv = figures["convergence.png"].axes[0]
    assert any(t.startswith("baseline mean") for t in _legend(conv))
    assert "winner" in _legend(conv) and "baseline runs" in _legend(conv)
    tput = figures["throughput_vs_ttft.png"].axes[0]
    assert {"baseline", "winner", "SLO p99 TTFT 2.5 s"} <= set(_legend(tput))
    slo = [ln for ln in tput.get_lines() if ln.get_label().startswith("SLO")]
    assert slo and slo[0].get_xdata()[0] == pytest.approx(2.5)
    knobs = figures["objective_vs_knobs.png"].axes
    assert any(t == "winner" for t in _legend(knobs[-1]))
