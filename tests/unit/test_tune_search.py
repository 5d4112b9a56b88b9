"""The search's pure pieces: the space-filling initial design, no re-proposed points, the KV
bound, the early-stop rule, the median/MAD verdict and the edge-of-range note (real skopt
optimizers; trial records as run_trial writes them)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tuner.errors import ConfigError
from tuner.load import LengthDist, LoadSpec
from tuner.report import render_tune_report
from tuner.signals import kv_capacity_from_info
from tuner.tune import (
    Measurement,
    Noise,
    Objective,
    Trial,
    make_optimizer,
    parse_tune_config,
    plan_steps,
    score_trial,
    summarize_search,
    tell_history,
)
from tuner.tune.bound import kv_bound, mean_length
from tuner.tune.config import InitialDesign
from tuner.tune.early_stop import EarlyStop, early_stop_rule, time_saved
from tuner.tune.optimizer import initial_design, propose
from tuner.tune.planner import design_points
from tuner.tune.space import Knob, KnobType, Space, point_key
from tuner.tune.verdict import compare, edge_of_range, median_mad, t95

BLOCKS = {"flag": "num-gpu-blocks-override", "type": "integer", "low": 8, "high": 48}
BASE: dict[str, Any] = {
    "launch": {"model": "/models/tiny",
               "flags": {"max-model-len": 2048, "max-num-seqs": 128,
                         "num-gpu-blocks-override": 32}},
    "space": {"max-num-seqs": {"low": 2, "high": 128, "log": True},
              "gpu-memory-utilization": BLOCKS,
              "max-num-batched-tokens": {"low": 128, "high": 2048, "log": True}},
    "load": {"prompt_tokens": 256, "output_tokens": 128, "concurrency": 32, "duration": 8},
    "slo": {"ttft_p99_seconds": 5.0},
    "budget": {"trials": 12},
    "noise": {"finalists": 1, "repeats": 1, "confirm_rounds": 1},
    "optimizer": {"initial_points": 5, "seed": 3},
}


def config(**over: Any) -> Any:
    data = json.loads(json.dumps(BASE))
    data.update(over)
    return parse_tune_config(data, "/etc/tune.yaml")


def meas(tps: float, ttft: float = 0.5, kv_tokens: float = 32 * 128) -> Measurement:
    return Measurement(
        requests=100, errors=0, error_rate=0.0, output_tokens=int(tps * 8),
        output_tok_per_s=tps, request_rate=10.0, ttft_p50=ttft / 2, ttft_p99=ttft,
        itl_p50=0.01, itl_p99=0.05, e2e_p99=3.0, duration=8.0, goodput_tok_per_s=tps,
        kv_capacity_tokens=kv_tokens, kv_block_size=128.0,
    )


def trial(cfg: Any, number: int, kind: str, point: dict[str, Any] | None, tps: float | None,
          ttft: float = 0.5) -> Trial:
    on_baseline = point is None
    flags = dict(cfg.baseline_flags) if on_baseline else {
        **cfg.launch.flags, **cfg.space.flags(point)}
    m = meas(tps, ttft) if tps is not None else None
    state, value, loss, viol = score_trial(m, cfg.objective, cfg.slo, 1000.0)
    return Trial(number, kind, dict(point or {}), flags, state, loss, value,
                 reason="" if m else "exit", measurement=m, started=100.0 * number,
                 ended=100.0 * number + 40, violations=viol, measures_baseline=on_baseline,
                 timings={"start_s": 30.0, "load_s": 8.0, "total_s": 40.0})


# ----------------------------------------------------------------------------- initial design


def test_latin_hypercube_design_puts_one_point_in_every_stratum_of_every_knob() -> None:
    space = Space((Knob("a", "a", KnobType.REAL, 0.0, 1.0), Knob("b", "b", KnobType.REAL, 0, 10)))
    pts = initial_design(space, 8, InitialDesign.LHS, seed=1)
    assert len(pts) == 8
    for name, width in (("a", 1.0), ("b", 10.0)):
        strata = sorted(int(p[name] / width * 8 - 1e-9) for p in pts)
        assert strata == list(range(8)), (name, strata)  # a Latin hypercube
    assert pts == initial_design(space, 8, InitialDesign.LHS, seed=1)  # deterministic
    assert pts != initial_design(space, 8, InitialDesign.LHS, seed=2)


def test_the_design_covers_the_range_where_random_points_can_bunch_up() -> None:
    """The issue's case: three random points fell at 32-37 of 18-64 blocks. A 3-point Latin
    hypercube has one point in each third of the range, for every seed."""
    space = Space((Knob("blocks", "num-gpu-blocks-override", KnobType.INTEGER, 18, 64),))
    for seed in range(20):
        vals = sorted(p["blocks"] for p in initial_design(space, 3, InitialDesign.LHS, seed))
        thirds = [int((v - 18) / (64 - 18 + 1) * 3) for v in vals]
        assert thirds == [0, 1, 2], (seed, vals)
    sobol = initial_design(space, 4, InitialDesign.SOBOL, seed=0)
    assert len(sobol) == 4 and all(18 <= p["blocks"] <= 64 for p in sobol)


def test_design_within_the_likely_part_and_log_knobs_in_log_strata() -> None:
    cfg = config()
    pts = initial_design(cfg.space, 6, InitialDesign.LHS, 0,
                         within={"max-num-seqs": (2, 24), "gpu-memory-utilization": (17, 48)})
    assert all(2 <= p["max-num-seqs"] <= 24 and 17 <= p["gpu-memory-utilization"] <= 48
               for p in pts)
    full = initial_design(cfg.space, 6, InitialDesign.LHS, 0)
    seqs = sorted(p["max-num-seqs"] for p in full)
    assert seqs[0] < 6 and seqs[-1] > 40  # log strata: both ends of 2..128 are sampled


def test_bad_initial_design_and_early_stop_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"optimizer.initial_design.*'grid'.*lhs, sobol, random"):
        config(optimizer={"initial_design": "grid"})
    with pytest.raises(ConfigError, match=r"noise.early_stop_after.*1.5.*\(0, 1\)"):
        config(noise={"early_stop_after": 1.5})
    with pytest.raises(ConfigError, match=r"noise.early_stop.*'yes'.*true or false"):
        config(noise={"early_stop": "yes"})
    assert config(optimizer={"initial_design": "sobol"}).optimizer.initial_design == "sobol"


# ----------------------------------------------------------------------------- dedupe


def test_propose_never_returns_a_measured_point_and_stops_when_none_is_left() -> None:
    cfg = config(space={"max-num-seqs": {"low": 1, "high": 3},
                        "gpu-memory-utilization": None,
                        "max-num-batched-tokens": {"low": 1, "high": 3}},
                 optimizer={"initial_points": 2, "seed": 0})
    opt = make_optimizer(cfg)
    seen: set[str] = set()
    for i in range(9):
        (x,) = propose(opt, cfg.space, 1, lambda p: point_key(p) not in seen)
        key = point_key(cfg.space.point(x))
        assert key not in seen, f"ask {i} re-proposed {key}"
        seen.add(key)
        opt.tell(list(x), float(-x[0] - x[1]))  # a smooth surface the GP models
    assert len(seen) == 9
    assert propose(opt, cfg.space, 1, lambda p: point_key(p) not in seen) == []
    batch = propose(make_optimizer(cfg), cfg.space, 4, lambda p: True)
    assert len({point_key(cfg.space.point(x)) for x in batch}) == len(batch) == 4


def test_a_search_on_a_small_space_measures_each_point_once_then_moves_on() -> None:
    cfg = config(space={"max-num-seqs": {"low": 1, "high": 3},
                        "gpu-memory-utilization": None, "max-num-batched-tokens": None},
                 launch={"model": "/m", "flags": {"max-model-len": 2048, "max-num-seqs": 2}},
                 budget={"trials": 6}, optimizer={"initial_points": 2, "seed": 0},
                 noise={"finalists": 1, "repeats": 1, "confirm_rounds": 0})
    opt = make_optimizer(cfg)
    trials = [trial(cfg, 0, "baseline", None, 1000.0)]
    tell_history(opt, trials, cfg.space)
    while (steps := plan_steps(trials, cfg, opt)) and steps[0].kind == "search":
        (s,) = steps
        t = trial(cfg, len(trials), "search", dict(s.point), 900.0 + 100 * s.point["max-num-seqs"])
        trials.append(t)
        tell_history(opt, [t], cfg.space)
    # 3 points, the baseline's (2) among them: two searched trials, then the finalist's repeat
    assert sorted(t.point["max-num-seqs"] for t in trials[1:]) == [1, 3]
    assert [s.kind for s in steps] == ["repeat"]


# ----------------------------------------------------------------------------- KV bound


def test_kv_bound_from_the_baseline_capacity_and_the_load() -> None:
    cfg = config()
    load = LoadSpec(LengthDist("fixed", mean=256), LengthDist("fixed", mean=128),
                    concurrency=32, duration=8)
    b = kv_bound(cfg.space, cfg.baseline_flags, 32 * 128, 128, load, 2048)
    assert b is not None
    assert b.tokens_per_request == 384 and b.kv_concurrency == pytest.approx(4096 / 384)
    # 16 blocks cannot hold one 2,048-token sequence (vLLM keeps one block back): ruled out
    assert b.allowed == {"gpu-memory-utilization": (17.0, 48.0)}
    base = {"max-num-seqs": 8, "max-num-batched-tokens": 512}
    assert not b.allows({**base, "gpu-memory-utilization": 16})
    assert b.allows({**base, "gpu-memory-utilization": 17})
    # at 48 blocks (6,144 tokens) ~19 requests fit at mean occupancy (256 + 64 tokens):
    # more than ceil(2 * 19.2) = 39 slots only preempt, more than the load's 32 in flight do
    # nothing; the design covers 2..32
    assert b.likely["max-num-seqs"] == (2.0, 32.0)
    assert b.likely["gpu-memory-utilization"] == (17.0, 48.0)
    text = "\n".join(b.notes)
    assert "4,096 tokens (32 blocks of 128)" in text and "~10.7 requests at once" in text
    assert "ruled out: --num-gpu-blocks-override below 17" in text
    assert "unlikely: --max-num-seqs above 32 (above ~39 the largest KV cache" in text
    assert "above 32 the load has no more requests in flight" in text
    small = kv_bound(config(space={"gpu-memory-utilization": {**BLOCKS, "high": 24}}).space,
                     cfg.baseline_flags, 32 * 128, 128, load, 2048)
    # (the default max-num-seqs knob, 8..256): 2 * 3072 / 320 = 19.2 -> 20
    assert small is not None and small.likely["max-num-seqs"] == (8.0, 20.0)
    assert kv_bound(cfg.space, cfg.baseline_flags, math.nan, 128, load, 2048) is None


def test_kv_bound_caps_slots_at_the_closed_loop_concurrency_and_scales_memory_fractions() -> None:
    cfg = config(space={"max-num-seqs": {"low": 8, "high": 256},
                        "gpu-memory-utilization": {"low": 0.5, "high": 0.95}},
                 launch={"model": "/m", "flags": {"max-model-len": 8192,
                                                  "gpu-memory-utilization": 0.9}})
    load = LoadSpec(LengthDist("uniform", low=100, high=300), LengthDist("fixed", mean=100),
                    concurrency=16, duration=8)
    assert mean_length(load.prompt_tokens) == pytest.approx(200, abs=3)
    b = kv_bound(cfg.space, cfg.baseline_flags, 1_000_000, 16, load, 8192)
    assert b is not None and b.likely["max-num-seqs"] == (8.0, 16.0)  # load has 16 in flight
    assert "no more requests in flight" in "\n".join(b.notes)
    assert b.allowed == {}  # even 0.5 holds an 8,192-token sequence
    tiny = kv_bound(cfg.space, cfg.baseline_flags, 9000, 16, load, 8192)
    assert tiny is not None
    lo, _ = tiny.allowed["gpu-memory-utilization"]
    assert lo == pytest.approx(0.9 * (8192 + 16) / 9000)


def test_kv_capacity_from_the_recorded_vllm_032_cache_config_info() -> None:
    data = Path(__file__).parent / "data" / "expositions"
    line = next(ln for f in sorted(data.rglob("*")) if f.is_file()
                for ln in f.read_text(errors="replace").splitlines()
                if ln.startswith("vllm:cache_config_info{"))
    labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")]
                  .replace('",', '"\x00').split("\x00"))
    labels = {k: v.strip('"') for k, v in labels.items()}
    assert kv_capacity_from_info([labels]) == 131072.0  # 1024 blocks x 128


def test_the_plan_designs_inside_the_bound_and_never_launches_a_ruled_out_point() -> None:
    cfg = config(budget={"trials": 10})
    opt = make_optimizer(cfg)
    trials = [trial(cfg, 0, "baseline", None, 1000.0)]
    tell_history(opt, trials, cfg.space)
    design = design_points(trials, cfg)
    assert len(design) == 5
    assert all(p["max-num-seqs"] <= 32 and p["gpu-memory-utilization"] >= 17 for p in design)
    seen = []
    while (steps := plan_steps(trials, cfg, opt)) and steps[0].kind == "search":
        (s,) = steps
        seen.append(dict(s.point))
        v = 500 + 40 * s.point["gpu-memory-utilization"] - 3 * s.point["max-num-seqs"]
        t = trial(cfg, len(trials), "search", dict(s.point), v)
        trials.append(t)
        tell_history(opt, [t], cfg.space)
    assert seen[:5] == design  # the design first, in order
    assert len(seen) == 10 and len({point_key(p) for p in seen}) == 10
    assert all(p["gpu-memory-utilization"] >= 17 for p in seen)
    out = summarize_search(cfg, trials)
    assert out.bound is not None and out.design == tuple(design)


# ----------------------------------------------------------------------------- early stop


def test_early_stop_threshold_waits_for_part_of_the_window_and_scales_the_noise() -> None:
    rule = EarlyStop(incumbent=2000.0, noise=0.1, after=0.35)
    assert rule.threshold(2.0, 8.0) == 0.0  # before 35% of the window: no verdict
    assert rule.threshold(8.0, 8.0) == pytest.approx(2000 * (1 - 0.2))
    assert rule.threshold(4.0, 8.0) == pytest.approx(2000 * (1 - 0.2 * math.sqrt(2)))
    slow = [(100.0 + i, 800.0 * i) for i in range(5)]  # 800 tok/s
    fast = [(100.0 + i, 1900.0 * i) for i in range(5)]  # 1,900 tok/s: inside the noise
    assert rule.should_stop(slow, 100.0, 8.0)
    assert not rule.should_stop(fast, 100.0, 8.0)
    assert not rule.should_stop(slow[:2], 100.0, 8.0)  # too few readings
    assert not rule.should_stop(slow[:3], 100.0, 20.0)  # 2 s of 20: too early


def test_early_stop_rule_from_the_trials_and_the_time_saved() -> None:
    cfg = config()
    pt = {"max-num-seqs": 8, "gpu-memory-utilization": 32, "max-num-batched-tokens": 512}
    assert early_stop_rule([], cfg) is None
    trials = [trial(cfg, 0, "baseline", None, 1000.0), trial(cfg, 1, "search", pt, 1500.0),
              trial(cfg, 2, "search", {**pt, "max-num-seqs": 9}, 2500.0, ttft=9.0)]
    rule = early_stop_rule(trials, cfg)
    assert rule is not None and rule.incumbent == 1500.0  # 2500 missed the SLO
    assert rule.noise == cfg.noise.single_run_noise and rule.after == 0.35
    repeat = trial(cfg, 3, "repeat", pt, 1300.0)
    noisy = early_stop_rule([*trials, repeat], cfg)
    assert noisy is not None and noisy.noise == pytest.approx(0.1414 / 1.4, abs=0.01)
    assert early_stop_rule(trials, config(noise={"early_stop": False})) is None
    (step,) = plan_steps(trials, cfg, make_optimizer(cfg))
    assert step.early_stop == rule
    stopped = Trial(4, "search", pt, {}, "stopped", -0.3, 300.0, measurement=meas(300.0),
                    timings={"saved_s": 5.0, "total_s": 35.0, "start_s": 30.0})
    assert time_saved([*trials, stopped]) == 5.0
    out = summarize_search(cfg, [*trials, stopped])
    assert out.saved_s == 5.0 and out.startup_s == 3 * 30.0 + 30.0


# ----------------------------------------------------------------------------- verdict


def test_median_and_mad_ignore_one_slow_restart() -> None:
    med, mad = median_mad([1000, 1020, 980, 400])
    assert med == 990 and mad == pytest.approx(1.4826 * 20)
    assert math.isnan(median_mad([5.0])[1]) and math.isnan(median_mad([])[0])
    assert t95(1) == 12.706 and t95(4) == 2.776 and t95(11) == 2.228 and t95(200) == 2.0


def test_verdict_interval_from_medians_and_mad_of_fresh_canary_runs() -> None:
    obj, noise = Objective(), Noise(min_gain=0.05, single_run_noise=0.2)
    c = compare([1300, 1320, 1280, 700], [1000, 1010, 990, 1005], obj, noise)
    assert c.gain == pytest.approx(1290 / 1002.5 - 1)  # the slow restart moved nothing
    assert c.significant and c.gain_low > 0
    assert c.winner_median == 1290 and c.baseline_n == 4
    assert "medians of 4 vs 4 fresh-canary runs" in c.method and "t with 6 df" in c.method
    # the issue's case: two runs each, 2,248/2,112 against 2,651/1,664: nothing to conclude
    issue = compare([2651, 1664], [2248, 2112], obj, noise)
    assert not issue.significant and issue.gain_low < -0.5 and issue.gain_high > 0.5
    one = compare([1150], [1000], obj, noise)
    assert not one.significant and one.gain_high - one.gain_low == pytest.approx(0.4)
    cost = compare([0.5, 0.51, 0.49], [1.0, 1.01, 0.99], Objective("cost", 1.0), noise)
    assert cost.gain == pytest.approx(1.0) and cost.significant  # half the $/Mtok


def test_a_winner_at_the_edge_of_the_range_says_the_range_may_be_too_narrow() -> None:
    cfg = config()
    notes = edge_of_range(cfg.space, {"max-num-seqs": 128, "gpu-memory-utilization": 47,
                                      "max-num-batched-tokens": 600})
    assert len(notes) == 2
    assert notes[0].startswith("--max-num-seqs 128 is at the top of the searched range (2..128)")
    assert "--num-gpu-blocks-override 47 is at the top" in notes[1]  # 39/40 of the range
    assert "may be too narrow" in notes[0]
    low = edge_of_range(cfg.space, {"max-num-seqs": 2, "gpu-memory-utilization": 30,
                                    "max-num-batched-tokens": 130})
    assert [n.split(" is ")[0] for n in low] == ["--max-num-seqs 2", "--max-num-batched-tokens 130"]
    assert all("bottom" in n for n in low)
    assert edge_of_range(cfg.space, {"max-num-seqs": 16, "gpu-memory-utilization": 30,
                                     "max-num-batched-tokens": 512}) == ()


def test_the_report_says_what_bounded_the_search_and_where_the_time_went() -> None:
    cfg = config(budget={"trials": 2}, noise={"finalists": 1, "repeats": 0, "confirm_rounds": 0})
    top = {"max-num-seqs": 20, "gpu-memory-utilization": 48, "max-num-batched-tokens": 512}
    trials = [trial(cfg, 0, "baseline", None, 1000.0), trial(cfg, 1, "search", top, 1800.0),
              Trial(2, "search", {**top, "max-num-seqs": 3}, {}, "stopped", -0.3, 300.0,
                    notes=("stopped early after 3.0 s of 8 s",), measurement=meas(300.0),
                    timings={"saved_s": 5.0, "total_s": 35.0, "start_s": 30.0})]
    md = render_tune_report(summarize_search(cfg, trials))
    assert "## Search" in md
    assert "ruled out: --num-gpu-blocks-override below 17" in md
    assert "--num-gpu-blocks-override 48 is at the top of the searched range" in md
    assert "start-up: 90 s of 115 s of trials (78%)" in md
    assert "stopped early: 1 trial, 5 s of load saved" in md
    assert "initial design: lhs, 5 points" in md


def test_a_flag_vllm_does_not_know_is_not_launched_again(tmp_path: Path) -> None:
    """A searched trial failed ``flag_rejected`` with "unrecognized arguments": every later
    candidate carries the same knob's flag and would fail the same way after a canary start,
    so the plan rejects it unlaunched, naming the flag and the trial. A refused *value* is
    value-specific: later candidates are launched."""
    import threading
    from dataclasses import replace

    import httpx

    from tuner.store import Store
    from tuner.tune import build_load_spec
    from tuner.tune.planner import unknown_flags
    from tuner.tune.trial import TrialContext, run_trial

    log = (Path(__file__).parent / "data" / "vllm_logs" / "start_unknown_flag.log").read_text()
    cfg = config(space={"max-num-seqs": {"low": 2, "high": 64, "log": True},
                        "max-num-active-seqs": {"low": 1, "high": 64},
                        "gpu-memory-utilization": None, "max-num-batched-tokens": None},
                 optimizer={"initial_points": 2, "seed": 1})
    opt = make_optimizer(cfg)
    trials = [trial(cfg, 0, "baseline", None, 1000.0)]
    tell_history(opt, trials, cfg.space)
    (first,) = plan_steps(trials, cfg, opt)
    assert first.flags is not None
    refused = replace(
        trial(cfg, 1, "search", dict(first.point), None), reason="flag_rejected",
        log_tail=log.replace("--no-such-flag", f"--max-num-active-seqs "
                             f"{first.flags['max-num-active-seqs']}"))
    assert unknown_flags([*trials, refused]) == {"--max-num-active-seqs": 1}
    trials.append(refused)
    tell_history(opt, [refused], cfg.space)
    (step,) = plan_steps(trials, cfg, opt)
    assert step.flags is None and step.reject_reason == "flag_rejected"
    assert any("does not know --max-num-active-seqs (trial 1" in n for n in step.notes)
    # the trial is recorded rejected without starting anything
    with Store(tmp_path / "s.db") as store, httpx.Client() as client:
        ctx = TrialContext(cfg, store, tmp_path, client, build_load_spec(cfg.load),
                           threading.Event())
        t = run_trial(ctx, 2, step, None)
    assert t is not None and t.state == "rejected" and t.reason == "flag_rejected"
    assert t.timings["total_s"] < 1.0 and "start_s" not in t.timings
    # a refused value is not a refused flag
    bad_value = replace(refused, log_tail=log.replace(
        "error: unrecognized arguments: --no-such-flag",
        "error: argument --max-num-active-seqs: invalid int value: 'x'"))
    assert unknown_flags([trials[0], bad_value]) == {}
