"""Pure parts of ``tuner tune``: config and space, constraints, scoring, the plan, resume
bookkeeping (real skopt Optimizer, real SQLite), and the rendered outputs."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuner.errors import ConfigError
from tuner.report import (
    kubernetes_patch,
    pareto_front,
    render_tune_csv,
    render_tune_report,
    tune_best_json,
    vllm_serve_command,
    write_tune_outputs,
)
from tuner.signals import dollars_per_mtok
from tuner.tune import (
    FAILED_LOSS,
    Constraints,
    Measurement,
    Noise,
    Objective,
    Trial,
    TrialLog,
    TuneCounters,
    TuneError,
    TuneSLO,
    apply_constraints,
    candidates,
    compare,
    make_optimizer,
    parse_tune_config,
    plan_steps,
    prepare_out,
    score_trial,
    slo_violations,
    summarize_search,
    tell_history,
    told_history,
)

BASE: dict[str, Any] = {
    "launch": {"model": "/models/tiny", "flags": {"max-model-len": 2048, "max-num-seqs": 128}},
    "load": {"prompt_tokens": 256, "output_tokens": 64, "concurrency": 8, "duration": 5},
    "slo": {"ttft_p99_seconds": 2.5, "itl_p99_seconds": 0.25},
    "budget": {"trials": 4},
    "noise": {"finalists": 2, "repeats": 1, "confirm_rounds": 1},
}


def config(**over: Any) -> Any:
    data = json.loads(json.dumps(BASE))
    for k, v in over.items():
        data[k] = v
    return parse_tune_config(data, "/etc/tune.yaml")


def meas(tps: float, ttft: float = 0.5, itl: float = 0.05, err: float = 0.0) -> Measurement:
    return Measurement(
        requests=100, errors=int(err * 100), error_rate=err, output_tokens=int(tps * 10),
        output_tok_per_s=tps, request_rate=10.0, ttft_p50=ttft / 2, ttft_p99=ttft,
        itl_p50=itl / 2, itl_p99=itl, e2e_p99=3.0, duration=10.0, preemptions=3.0,
    )


def trial(cfg: Any, number: int, kind: str, point: dict[str, Any] | None, tps: float | None,
          ttft: float = 0.5, reference: float | None = 1000.0, reason: str = "") -> Trial:
    """A finished trial record as run_trial would produce it (data, not a stand-in)."""
    on_baseline = kind == "baseline" or point is None
    if on_baseline:
        pt: dict[str, Any] = {}
        flags = dict(cfg.baseline_flags)
    else:
        pt = dict(point)
        flags = {**cfg.launch.flags, **cfg.space.flags(point)}
    m = meas(tps, ttft) if tps is not None else None
    state, value, loss, viol = score_trial(m, cfg.objective, cfg.slo, reference)
    return Trial(number, kind, pt, flags, state, loss, value, reason=reason or (
        "exit" if m is None else ""), log_tail="boom" if m is None else "", measurement=m,
        started=1000.0 + number * 30, ended=1000.0 + number * 30 + 25,
        timings={"start_s": 15.0, "load_s": 8.0, "total_s": 25.0}, violations=viol,
        measures_baseline=on_baseline)


# ----------------------------------------------------------------------------- config


def test_default_space_has_the_three_knobs_with_types_and_scales() -> None:
    cfg = config()
    knobs = {k.name: k for k in cfg.space.knobs}
    assert list(knobs) == ["max-num-seqs", "gpu-memory-utilization", "max-num-batched-tokens"]
    assert knobs["max-num-seqs"].kind == "integer" and knobs["max-num-seqs"].log
    assert knobs["gpu-memory-utilization"].kind == "real"
    assert cfg.objective.kind == "throughput"
    assert cfg.baseline_flags == {"max-model-len": 2048, "max-num-seqs": 128}


def test_knob_flag_mapping_extra_knobs_and_dropping_a_default() -> None:
    cfg = config(space={
        "gpu-memory-utilization": {"flag": "--num-gpu-blocks-override", "low": 8, "high": 48},
        "max-num-batched-tokens": None,
        "enable-chunked-prefill": {"values": [True, False]},
        "kv-cache-dtype": {"values": ["auto", "fp8"]},
    })
    knobs = {k.name: k for k in cfg.space.knobs}
    assert set(knobs) == {"max-num-seqs", "gpu-memory-utilization", "enable-chunked-prefill",
                          "kv-cache-dtype"}
    mem = knobs["gpu-memory-utilization"]
    assert (mem.flag, mem.kind, mem.low, mem.high, mem.log) == (
        "num-gpu-blocks-override", "integer", 8, 48, False)
    assert knobs["enable-chunked-prefill"].kind == "categorical"
    assert cfg.space.flags({"max-num-seqs": 4, "gpu-memory-utilization": 9,
                            "enable-chunked-prefill": False, "kv-cache-dtype": "fp8"}) == {
        "max-num-seqs": 4, "num-gpu-blocks-override": 9, "enable-chunked-prefill": False,
        "kv-cache-dtype": "fp8"}


@pytest.mark.parametrize(
    ("space", "key", "words"),
    [
        ({"max-num-seqs": {"low": 64, "high": 64}}, "space.max-num-seqs", "empty range"),
        ({"max-num-seqs": {"low": 128, "high": 8}}, "space.max-num-seqs", "min > max"),
        ({"max-num-seqs": {"flag": "max-num-seq", "low": 1, "high": 8}},
         "space.max-num-seqs.flag", "unknown vLLM flag 'max-num-seq' (did you mean max-num-seqs"),
        ({"max-batch": {"low": 1, "high": 8}}, "space.max-batch", "unknown vLLM flag"),
        ({"max-num-seqs": {"low": 0, "high": 8, "log": True}}, "space.max-num-seqs.log",
         "log scale needs low > 0"),
        ({"block-size": {"values": [16]}}, "space.block-size.values", "empty range"),
        ({"max-num-seqs": {"low": 1, "high": 8, "type": "float"}}, "space.max-num-seqs.type",
         "allowed; use one of integer, real, categorical"),
        ({"mem": {"flag": "max-num-seqs", "low": 1, "high": 4}}, "space",
         "a flag may be searched once"),
    ],
)
def test_invalid_space_is_rejected_naming_file_key_and_what_is_allowed(
    space: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config(space=space)
    msg = str(err.value)
    assert msg.startswith(f"/etc/tune.yaml: {key}: "), msg
    assert words in msg


def test_admission_and_active_seq_knobs_are_off_by_default_and_on_by_config() -> None:
    assert not {"max-num-active-seqs", "max-num-queued-reqs", "max-num-queued-tokens"} & {
        k.name for k in config().space.knobs}
    cfg = config(space={"max-num-queued-reqs": {}, "max-num-queued-tokens": {"high": 65536},
                        "max-num-active-seqs": {"values": [4, 8]}})
    knobs = {k.name: k for k in cfg.space.knobs}
    reqs, toks = knobs["max-num-queued-reqs"], knobs["max-num-queued-tokens"]
    assert (reqs.flag, reqs.kind, reqs.low, reqs.high, reqs.log) == (
        "max-num-queued-reqs", "integer", 4, 4096, True)
    assert (toks.low, toks.high, toks.kind) == (1024, 65536, "integer")
    assert knobs["max-num-active-seqs"].values == (4, 8)
    assert cfg.space.flags({"max-num-queued-reqs": 16, "max-num-active-seqs": 4}) == {
        "max-num-queued-reqs": 16, "max-num-active-seqs": 4}


@pytest.mark.parametrize(
    ("space", "key", "words"),
    [
        ({"max-num-queued-reqs": {"low": 0, "high": 64}}, "space.max-num-queued-reqs.low",
         "--max-num-queued-reqs takes whole numbers >= 1, got low=0"),
        ({"max-num-queued-tokens": {"low": -5, "high": 64}},
         "space.max-num-queued-tokens.low", "vLLM refuses 0 and negative caps"),
        ({"max-num-queued-tokens": {"low": 1.5, "high": 64.0}},
         "space.max-num-queued-tokens.type", "takes whole numbers: use type integer"),
        ({"max-num-active-seqs": {"values": [4, 0, "many"]}}, "space.max-num-active-seqs.values",
         "[0, 'many']: --max-num-active-seqs takes whole numbers >= 1"),
        ({"max-num-active-seqs": {"values": [True, 4]}}, "space.max-num-active-seqs.values",
         "takes whole numbers >= 1"),
        ({"max-num-seqs": {"low": 8, "high": 32}, "max-num-active-seqs": {"low": 64,
                                                                          "high": 128}},
         "space.max-num-active-seqs.low", "above the largest max-num-seqs searched (32)"),
        ({"max-num-queued-reqs": {"low": "few", "high": 8}}, "space.max-num-queued-reqs.low",
         "'few' is not a number"),
        ({"max-num-queued-reqs": 16}, "space.max-num-queued-reqs", ""),
    ],
)
def test_bad_admission_knob_values_are_config_errors(
    space: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config(space=space)
    msg = str(err.value)
    assert msg.startswith(f"/etc/tune.yaml: {key}: "), msg
    assert words in msg


def test_max_num_active_seqs_above_max_num_seqs_is_repaired_or_rejected() -> None:
    cfg = config(space={"max-num-seqs": {"low": 8, "high": 64},
                        "max-num-active-seqs": {"low": 4, "high": 64}})
    flags, notes = apply_constraints(
        {"max-num-seqs": 16, "max-num-batched-tokens": 512, "max-num-active-seqs": 40},
        cfg.space, Constraints())
    assert flags is not None and flags["max-num-active-seqs"] == 16
    assert notes == ("repaired max-num-active-seqs 40 -> 16 (must be <= max-num-seqs)",)
    flags, notes = apply_constraints(
        {"max-num-seqs": 16, "max-num-batched-tokens": 512, "max-num-active-seqs": 40},
        cfg.space, Constraints(repair=False))
    assert flags is None and "max-num-active-seqs 40 > max-num-seqs 16" in notes[0]
    flags, notes = apply_constraints(
        {"max-num-seqs": 16, "max-num-batched-tokens": 512, "max-num-active-seqs": 8},
        cfg.space, Constraints())
    assert flags is not None and flags["max-num-active-seqs"] == 8 and not notes


def test_unknown_flag_error_lists_the_allowed_flags() -> None:
    with pytest.raises(ConfigError) as err:
        config(space={"foo": {"flag": "not-a-flag", "low": 1, "high": 2}})
    assert "max-num-batched-tokens" in str(err.value) and "kv-cache-memory-bytes" in str(err.value)


@pytest.mark.parametrize(
    ("section", "value", "key", "words"),
    [
        ("objective", {"kind": "latency"}, "objective.kind", "use one of throughput, cost"),
        ("objective", {"kind": "cost"}, "objective.dollars_per_hour", "is required"),
        ("load", {"prompt_tokens": 8, "output_tokens": 8}, "load", "set concurrency"),
        ("load", {"prompt_tokens": 8, "output_tokens": 8, "concurrency": 1, "rps": 2},
         "load.rps", "unknown key"),
        ("optimizer", {"estimator": "GBRT"}, "optimizer.estimator", "GBRT is broken"),
        ("budget", {"trials": 0}, "budget.trials", "not a positive integer"),
        ("canary", {"backend": "docker"}, "canary.backend", "use one of local, kubernetes"),
    ],
)
def test_other_bad_sections(section: str, value: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(**{section: value})
    assert f": {key}: " in str(err.value) and words in str(err.value), str(err.value)


def test_env_variables_expand_and_a_missing_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNER_TINY_MODEL_DIR", "/cache/tiny")
    cfg = config(launch={"model": "${TUNER_TINY_MODEL_DIR}", "env": {"X": "${NOPE_X:-dflt}"}})
    assert cfg.launch.model == "/cache/tiny" and cfg.launch.env == {"X": "dflt"}
    monkeypatch.delenv("TUNER_TINY_MODEL_DIR")
    with pytest.raises(ConfigError, match=r"launch.model: environment variable "
                       r"TUNER_TINY_MODEL_DIR is not set"):
        config(launch={"model": "${TUNER_TINY_MODEL_DIR}"})


def test_example_config_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.tune import load_tune_config, planned_total

    monkeypatch.setenv("TUNER_TINY_MODEL_DIR", "/cache/tiny")
    cfg = load_tune_config(Path(__file__).parents[2] / "examples" / "tune-cpu.yaml")
    knobs = {k.name: k for k in cfg.space.knobs}
    assert knobs["gpu-memory-utilization"].flag == "num-gpu-blocks-override"
    assert 4 <= planned_total(cfg) <= 7


# ----------------------------------------------------------------------------- space


def test_optimizer_points_are_plain_python_values() -> None:
    cfg = config(space={"enable-chunked-prefill": {"values": [True, False]},
                        "kv-cache-dtype": {"values": ["auto", "fp8"]}})
    opt = make_optimizer(cfg)
    for x in opt.ask(n_points=5):
        point = cfg.space.point(x)
        assert type(point["max-num-seqs"]) is int
        assert type(point["gpu-memory-utilization"]) is float
        assert type(point["enable-chunked-prefill"]) is bool
        assert type(point["kv-cache-dtype"]) is str
        json.dumps(point)  # JSON-clean
        assert all(k.contains(point[k.name]) for k in cfg.space.knobs)


# ----------------------------------------------------------------------------- constraints


def test_constraints_repair_or_reject_before_launch() -> None:
    cfg = config()
    space = cfg.space
    flags, notes = apply_constraints({"max-num-seqs": 200, "max-num-batched-tokens": 300},
                                     space, Constraints())
    assert flags is not None and flags["max-num-batched-tokens"] == 300 and not notes
    flags, notes = apply_constraints({"max-num-seqs": 200, "max-num-batched-tokens": 100},
                                     space, Constraints())
    assert flags is not None and flags["max-num-batched-tokens"] == 200
    assert "repaired max-num-batched-tokens 100 -> 200" in notes[0]
    flags, notes = apply_constraints({"max-num-seqs": 200, "max-num-batched-tokens": 100},
                                     space, Constraints(repair=False))
    assert flags is None and notes[0].startswith("rejected")
    # without chunked prefill a whole prompt must fit: >= max-model-len
    flags, notes = apply_constraints(
        {"max-num-seqs": 8, "max-num-batched-tokens": 512, "enable-chunked-prefill": False,
         "max-model-len": 4096}, space, Constraints())
    assert flags is not None and flags["max-num-batched-tokens"] == 4096
    flags, notes = apply_constraints(
        {"max-num-seqs": 8, "max-num-batched-tokens": 512, "enable-chunked-prefill": False,
         "max-model-len": 16384}, space, Constraints())
    assert flags is None and "max-model-len" in notes[0]


def test_a_rejected_candidate_becomes_a_rejected_step() -> None:
    cfg = config(constraints={"repair": False}, budget={"trials": 20},
                 space={"max-num-seqs": {"low": 64, "high": 256},
                        "max-num-batched-tokens": {"low": 16, "high": 128}})
    opt = make_optimizer(cfg)
    steps = plan_steps([trial(cfg, 0, "baseline", None, 1000.0)], cfg, opt, k=8)
    assert steps and all(s.kind == "search" for s in steps)
    rejected = [s for s in steps if s.flags is None]
    assert rejected and all("rejected" in s.notes[0] for s in rejected)


# ----------------------------------------------------------------------------- scoring


def test_scoring_feasible_slo_violated_and_failed() -> None:
    obj, slo = Objective(), TuneSLO(ttft_p99_seconds=2.5, itl_p99_seconds=0.25, error_rate=0.01)
    state, value, loss, viol = score_trial(meas(1500.0), obj, slo, 1000.0)
    assert (state, value, loss, viol) == ("ok", 1500.0, -1.5, {})
    state, value, loss, viol = score_trial(meas(3000.0, ttft=5.0), obj, slo, 1000.0)
    assert state == "slo" and value == 3000.0 and viol == {"ttft_p99_seconds": 2.0}
    assert 0 < loss <= 0.5
    _, _, worse, _ = score_trial(meas(3000.0, ttft=10.0), obj, slo, 1000.0)
    assert worse > loss  # further from the SLO scores worse: a gradient toward feasibility
    _, _, err_loss, err_viol = score_trial(meas(3000.0, err=0.05), obj, slo, 1000.0)
    assert "error_rate" in err_viol and err_loss > 0
    assert score_trial(None, obj, slo, 1000.0) == ("failed", None, FAILED_LOSS, {})


def test_rejections_count_against_the_slo_error_rate_and_show_apart_in_the_report(
        tmp_path: Path) -> None:
    """20 of 100 requests refused with 503 and 1 other error: the SLO's error rate sees 21%."""
    obj, slo = Objective(), TuneSLO(ttft_p99_seconds=2.5, error_rate=0.05)
    m = Measurement(
        requests=100, errors=1, rejections=20, rejection_rate=0.2, error_rate=0.21,
        output_tokens=5000, output_tok_per_s=500.0, request_rate=8.0, ttft_p50=0.1,
        ttft_p99=0.4, itl_p50=0.02, itl_p99=0.05, e2e_p99=2.0, duration=10.0)
    state, _, loss, viol = score_trial(m, obj, slo, 1000.0)
    assert state == "slo" and viol == {"error_rate": pytest.approx(0.21 / 0.05)} and loss > 0
    assert Measurement.from_json(m.to_json()).rejections == 20
    cfg = config(slo={"ttft_p99_seconds": 2.5, "error_rate": 0.05})
    t = Trial(0, "baseline", {}, dict(cfg.baseline_flags), state, loss, 500.0, measurement=m,
              violations=viol, measures_baseline=True)
    outcome = summarize_search(cfg, [t])
    report = render_tune_report(outcome)
    assert "rejected (503) | errors" in report and "| 20/100 | 1/100 |" in report
    rows = list(csv.DictReader(io.StringIO(render_tune_csv(outcome))))
    assert rows[0]["rejections"] == "20" and rows[0]["errors"] == "1"


def test_cost_objective_orientation_and_dollars_per_mtok() -> None:
    """One $/Mtok (``tuner.signals``): 1000 tok/s for an hour at $3.6/h is $1/Mtok. A run that
    produced no tokens has no measured rate, so the conversion says NaN (unknown); scoring
    needs a total order and ranks it last with +inf $/Mtok (the old tune copy returned inf
    from the conversion itself)."""
    assert dollars_per_mtok(3.6, 1000.0 * 3600, 3600.0) == pytest.approx(1.0)
    assert math.isnan(dollars_per_mtok(3.6, 0.0, 3600.0))
    obj = Objective("cost", 3.6)
    state, value, loss, _ = score_trial(meas(2000.0), obj, TuneSLO(), reference=1.0)
    assert state == "ok" and value == pytest.approx(0.5) and loss == pytest.approx(-2.0)
    state, value, loss, _ = score_trial(meas(0.0), obj, TuneSLO(), reference=1.0)
    assert state == "ok" and value == math.inf and loss == 0.0  # worse than any priced run


def test_compare_reports_noise_as_no_significant_gain() -> None:
    cfg = config()
    obj, noise = cfg.objective, Noise(min_gain=0.05, single_run_noise=0.2)

    def cand(subject: str, values: list[float]) -> Any:
        ts = [trial(cfg, i, "baseline" if subject == "baseline" else "search",
                    None if subject == "baseline" else {"max-num-seqs": 8,
                                                        "gpu-memory-utilization": 0.6,
                                                        "max-num-batched-tokens": 512}, v)
              for i, v in enumerate(values)]
        return candidates(ts)[subject if subject == "baseline" else ts[0].subject]

    clear = compare(cand("w", [2000, 2100, 1950]), cand("baseline", [1000, 1050, 980]), obj, noise)
    assert clear.significant and clear.gain == pytest.approx(2000 / 1000 - 1)  # medians
    assert clear.verdict.startswith("significant gain")
    noisy = compare(cand("w", [1100, 900, 1200]), cand("baseline", [1000, 1150, 950]), obj, noise)
    assert not noisy.significant and noisy.verdict.startswith("no significant gain")
    single = compare(cand("w", [1150]), cand("baseline", [1000]), obj, noise)
    assert not single.significant  # +15% with one run each is inside restart noise (20%)


# ----------------------------------------------------------------------------- the plan


def test_plan_runs_baseline_first_then_search_repeats_and_interleaved_confirmation() -> None:
    cfg = config()
    opt = make_optimizer(cfg)
    trials: list[Trial] = []
    assert [s.kind for s in plan_steps(trials, cfg, opt)] == ["baseline"]
    trials.append(trial(cfg, 0, "baseline", None, 1000.0))
    tell_history(opt, trials, cfg.space)
    tps = [1500.0, 900.0, 2500.0, 3000.0]
    ttft = [0.5, 0.5, 0.5, 9.0]  # the fastest misses the TTFT SLO
    for i in range(4):
        (step,) = plan_steps(trials, cfg, opt)
        assert step.kind == "search" and step.flags is not None
        t = trial(cfg, len(trials), "search", dict(step.point), tps[i], ttft[i])
        trials.append(t)
        opt.tell([list(step.x or ())], [t.loss])
    steps = plan_steps(trials, cfg, opt, k=8)
    # finalists: the two best feasible (2500, 1500), one repeat each
    assert [s.kind for s in steps] == ["repeat", "repeat"]
    assert [s.point for s in steps] == [trials[3].point, trials[1].point]
    for s, v in zip(steps, [2400.0, 1600.0], strict=True):
        trials.append(trial(cfg, len(trials), "repeat", dict(s.point), v))
    confirm = plan_steps(trials, cfg, opt, k=1)
    assert confirm[0].kind == "confirm" and confirm[0].subject == "baseline"
    trials.append(trial(cfg, len(trials), "confirm", None, 1050.0))
    (cw,) = plan_steps(trials, cfg, opt, k=1)
    assert cw.kind == "confirm" and cw.point == trials[3].point
    trials.append(trial(cfg, len(trials), "confirm", dict(cw.point), 2450.0))
    assert plan_steps(trials, cfg, opt) == []
    out = summarize_search(cfg, trials)
    assert out.winner is not None and out.winner.subject == trials[3].subject
    assert out.comparison is not None and out.comparison.significant
    assert [t.number for t in out.baseline.runs] == [0, 7]  # baseline first + confirmation


def test_failed_baseline_stops_the_search_with_its_log_tail() -> None:
    cfg = config()
    base = trial(cfg, 0, "baseline", None, None, reason="exit")
    with pytest.raises(TuneError, match=r"(?s)baseline \(trial 0\) failed \(exit\).*boom"):
        plan_steps([base], cfg, make_optimizer(cfg))


def test_no_feasible_config_reports_best_infeasible() -> None:
    cfg = config(noise={"finalists": 2, "repeats": 0, "confirm_rounds": 1})
    opt = make_optimizer(cfg)
    trials = [trial(cfg, 0, "baseline", None, 1000.0, ttft=4.0)]
    for i, ttft in enumerate([6.0, 3.0, 12.0, 0.0], start=1):
        (s,) = plan_steps(trials, cfg, opt)
        t = trial(cfg, i, "search", dict(s.point), None if ttft == 0 else 2000.0, ttft)
        trials.append(t)
        opt.tell([list(s.x or ())], [t.loss])
    assert plan_steps(trials, cfg, opt) == []
    out = summarize_search(cfg, trials)
    assert out.winner is None and out.comparison is None
    assert [c.runs[0].number for c in out.best_infeasible] == [2, 1, 3]
    md = render_tune_report(out)
    assert "No searched configuration met the SLO" in md
    assert "the baseline missed it too" in md
    assert "Best configurations that missed the SLO" in md
    best = tune_best_json(out)
    assert best["slo_met"] is False and best["source"] == "baseline"
    assert len(best["best_infeasible"]) == 3


# ----------------------------------------------------------------------------- resume


def test_resume_retells_the_optimizer_and_repeats_nothing(tmp_path: Path) -> None:
    cfg = config(budget={"trials": 5})
    opt = make_optimizer(cfg)
    log = TrialLog(tmp_path)
    trials: list[Trial] = []
    for _ in range(4):  # baseline + 3 of 5 searched trials, then "killed"
        (s,) = plan_steps(trials, cfg, opt)
        t = trial(cfg, len(trials), s.kind, dict(s.point) if s.kind == "search" else None,
                  1000.0 + 100 * len(trials))
        log.put(t)
        trials.append(t)
        tell_history(opt, [t], cfg.space)
    log.close()

    log = TrialLog(tmp_path)
    with pytest.raises(TuneError, match=r"already holds 4 trials.*--resume"):
        prepare_out(cfg, log, resume=False)
    log.put_meta({"fingerprint": cfg.fingerprint()})
    restored = prepare_out(cfg, log, resume=True)
    assert [t.to_json() for t in restored] == [t.to_json() for t in trials]
    fresh = make_optimizer(cfg)
    xs, ys = told_history(restored, cfg.space)
    assert len(xs) == 3 and ys == [t.loss for t in trials[1:]]  # baseline is outside the space
    assert tell_history(fresh, restored, cfg.space) == 3
    steps = plan_steps(restored, cfg, fresh, k=8)
    assert [s.kind for s in steps] == ["search", "search"]  # only the 2 missing ones
    done = {t.subject for t in restored}
    assert all(s.subject not in done for s in steps)
    other = config(budget={"trials": 5}, slo={"ttft_p99_seconds": 1.0})
    with pytest.raises(TuneError, match="different launch/space/objective"):
        prepare_out(other, log, resume=True)
    log.close()


def test_trial_documents_written_before_measures_baseline_still_resume(tmp_path: Path) -> None:
    """Earlier versions marked the baseline's runs with a ``{"__subject__": "baseline"}``
    point; a search directory they wrote resumes with the same subjects."""
    from tuner.tune.search import TRIAL_DOC

    cfg = config()
    log = TrialLog(tmp_path)
    old = {"flags": dict(cfg.baseline_flags), "log_tail": "", "loss": -1.0, "notes": [],
           "measurement": None, "objective": 1000.0, "point": {"__subject__": "baseline"},
           "reason": "", "started": 0.0, "ended": 1.0, "state": "ok", "timings": {},
           "violations": {}}
    point = {"max-num-seqs": 8, "gpu-memory-utilization": 0.6, "max-num-batched-tokens": 512}
    docs = [{**old, "number": 0, "kind": "baseline"},
            {**old, "number": 1, "kind": "search", "point": point, "flags": {}},
            {**old, "number": 2, "kind": "confirm"}]
    for body in docs:
        log.store.put_document(TRIAL_DOC, f"{body['number']:05d}", body, ts=body["ended"])
    trials = log.trials()
    log.close()
    assert [t.subject for t in trials] == ["baseline", trials[1].subject, "baseline"]
    assert trials[1].subject != "baseline" and trials[1].point == point
    assert [t.point for t in trials] == [{}, point, {}]  # no marker key left in the point
    assert [t.number for t in candidates(trials)["baseline"].runs] == [0, 2]
    assert Trial.from_json(trials[2].to_json()) == trials[2]


def test_an_unreadable_trial_document_is_a_clear_error(tmp_path: Path) -> None:
    from tuner.tune.search import TRIAL_DOC

    log = TrialLog(tmp_path)
    good = trial(config(), 0, "baseline", None, 1000.0)
    log.put(good)
    log.store.put_document(TRIAL_DOC, "00001", {**good.to_json(), "number": 1, "kind": "warmup"})
    with pytest.raises(TuneError, match=r"tune.db: trial document 00001 is not a trial this "
                       r"tuner can read \(ValueError: 'warmup' is not a valid TrialKind\)"):
        log.trials()
    log.store.put_document(TRIAL_DOC, "00001", {"number": 1})
    with pytest.raises(TuneError, match=r"trial document 00001 .*KeyError: 'kind'"):
        log.trials()
    log.close()


def test_baseline_inside_the_space_is_taught_to_the_optimizer() -> None:
    cfg = config(launch={"model": "m", "flags": {"max-num-seqs": 16,
                                                  "gpu-memory-utilization": 0.9,
                                                  "max-num-batched-tokens": 2048}})
    xs, ys = told_history([trial(cfg, 0, "baseline", None, 1000.0)], cfg.space)
    assert xs == [[16, 0.9, 2048]] and ys == [-1.0]


def test_full_disk_under_the_store_is_a_clear_error_and_keeps_earlier_trials(
    tmp_path: Path,
) -> None:
    """A real write failure: the child process runs with a file-size limit (RLIMIT_FSIZE)."""
    cfg = config()
    log = TrialLog(tmp_path)
    first = trial(cfg, 0, "baseline", None, 1000.0)
    log.put(first)
    log.store.checkpoint()
    log.close()
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from tuner.tune import Trial, TrialLog, TuneError
        log = TrialLog(Path({str(tmp_path)!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, ({size} + 8192, resource.RLIM_INFINITY))
        big = Trial(1, "search", {{}}, {{}}, "failed", 1.0, log_tail="x" * 2_000_000)
        try:
            log.put(big)
        except TuneError as exc:
            print(exc)
            sys.exit(3)
        sys.exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2], timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "cannot persist trial 1" in proc.stdout and "tune.db" in proc.stdout
    assert "disk" in proc.stdout and "--resume" in proc.stdout
    log = TrialLog(tmp_path)
    assert [t.to_json() for t in log.trials()] == [first.to_json()]
    log.close()


# ----------------------------------------------------------------------------- outputs


def finished_search(tmp_path: Path) -> Any:
    cfg = config(objective={"kind": "throughput", "dollars_per_hour": 2.0},
                 noise={"finalists": 1, "repeats": 0, "confirm_rounds": 1})
    opt = make_optimizer(cfg)
    trials = [trial(cfg, 0, "baseline", None, 1000.0)]
    values = [(1800.0, 0.5), (None, 0.5), (2600.0, 8.0), (2000.0, 0.6)]
    for i, (v, ttft) in enumerate(values, start=1):
        (s,) = plan_steps(trials, cfg, opt)
        t = trial(cfg, i, "search", dict(s.point), v, ttft)
        trials.append(t)
        opt.tell([list(s.x or ())], [t.loss])
    while steps := plan_steps(trials, cfg, opt):
        s = steps[0]
        trials.append(trial(cfg, len(trials), s.kind, None if s.subject == "baseline"
                            else dict(s.point), 1010.0 if s.subject == "baseline" else 1950.0))
    return summarize_search(cfg, trials)


def test_csv_json_report_and_plots(tmp_path: Path) -> None:
    out = finished_search(tmp_path)
    rows = list(csv.DictReader(io.StringIO(render_tune_csv(out))))
    assert [r["kind"] for r in rows] == ["baseline", "search", "search", "search", "search",
                                         "confirm", "confirm"]
    assert rows[2]["state"] == "failed" and rows[2]["reason"] == "exit"
    assert rows[3]["state"] == "slo" and rows[1]["max-num-seqs"].isdigit()
    assert float(rows[4]["output_tok_per_s"]) == 2000.0
    assert json.loads(rows[0]["flags"]) == out.config.baseline_flags

    best = tune_best_json(out)
    assert best["source"] == "winner" and best["slo_met"] is True
    assert best["winner"]["objective_runs"] == [2000.0, 1950.0]
    assert best["baseline"]["objective_runs"] == [1000.0, 1010.0]
    assert best["gain"]["fraction"] == pytest.approx(1975 / 1005 - 1)
    assert best["args"][:2] == ["--model", "/models/tiny"]
    assert f"--max-num-seqs {best['flags']['max-num-seqs']}" in " ".join(best["args"])
    assert best["vllm_serve"].startswith("vllm serve /models/tiny --")
    json.dumps(best)

    patch = kubernetes_patch(out)
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container == {"name": "vllm", "args": best["args"]}

    md = render_tune_report(out)
    for piece in ("## Verdict", "significant gain", "## Best against baseline", "$/Mtok at $2/h",
                  vllm_serve_command(out), "```yaml", "## Failed trials", "boom"):
        assert piece in md, piece
    patch_yaml = md.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(patch_yaml) == patch

    paths = write_tune_outputs(out, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["best.json", "convergence.png", "objective_vs_knobs.png", "report.md",
                     "throughput_vs_ttft.png", "trials.csv"]
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_a_gain_inside_the_noise_recommends_the_baseline() -> None:
    cfg = config(noise={"finalists": 1, "repeats": 0, "confirm_rounds": 1})
    opt = make_optimizer(cfg)
    trials = [trial(cfg, 0, "baseline", None, 1000.0)]
    for i, v in enumerate([1100.0, 900.0, 950.0, 1000.0], start=1):
        (s,) = plan_steps(trials, cfg, opt)
        t = trial(cfg, i, "search", dict(s.point), v)
        trials.append(t)
        opt.tell([list(s.x or ())], [t.loss])
    while steps := plan_steps(trials, cfg, opt):
        s = steps[0]
        trials.append(trial(cfg, len(trials), s.kind, None if s.subject == "baseline"
                            else dict(s.point), 1080.0 if s.subject == "baseline" else 1050.0))
    out = summarize_search(cfg, trials)
    assert out.winner is not None and out.comparison is not None
    assert not out.comparison.significant and out.recommend == "baseline"
    assert dict(out.best_flags) == dict(cfg.baseline_flags)
    best = tune_best_json(out)
    assert best["source"] == "baseline" and best["gain"]["significant"] is False
    md = render_tune_report(out)
    assert "no significant gain" in md and "Keep the baseline flags" in md


def test_results_on_a_full_disk_are_a_clear_error(tmp_path: Path) -> None:
    """The first result file is written through /dev/full, which fails with ENOSPC."""
    from tuner.errors import TunerError

    out = finished_search(tmp_path)
    res = tmp_path / "res"
    res.mkdir()
    (res / "trials.csv.tmp").symlink_to("/dev/full")
    with pytest.raises(TunerError, match=r"cannot write tune results to .*res: No space left "
                       r"on device \(is the disk full\?\); the trials are safe in tune.db"):
        write_tune_outputs(out, res)
    assert not (res / "trials.csv").exists()


def test_pareto_front() -> None:
    pts = [(1.0, 100.0), (2.0, 90.0), (2.0, 300.0), (3.0, 250.0), (4.0, 400.0)]
    assert pareto_front(pts) == [(1.0, 100.0), (2.0, 300.0), (4.0, 400.0)]


def test_counters_for_the_daemon() -> None:
    cfg = config()
    c = TuneCounters(cfg.objective)
    t1 = trial(cfg, 0, "baseline", None, 1000.0)
    t2 = trial(cfg, 1, "search", {"max-num-seqs": 8, "gpu-memory-utilization": 0.6,
                                  "max-num-batched-tokens": 512}, None)
    t3 = trial(cfg, 2, "search", {"max-num-seqs": 9, "gpu-memory-utilization": 0.6,
                                  "max-num-batched-tokens": 512}, 1500.0)
    for t in (t1, t2, t3):
        c.trial_finished(t, 5)
    snap = c.snapshot()
    assert snap["trials_total"] == {"ok": 2, "slo": 0, "failed": 1, "rejected": 0, "stopped": 0}
    assert snap["best_objective"] == 1500.0


def test_server_signals_use_the_production_signal_queries_over_the_trial_window(
    tmp_path: Path,
) -> None:
    """Counters and gauges of one canary (instance trial-3) in a real store, read back through
    the PromQL engine; another trial's series in the same store do not leak in."""
    from tuner.store import Store
    from tuner.tune import server_signals

    store = Store(tmp_path / "s.db")
    t0 = 1_700_000_000_000
    points = []
    for i in range(11):  # 10 s of 1 s scrapes
        ts = t0 + i * 1000
        for inst, scale in (("trial-3", 1.0), ("trial-4", 100.0)):
            lab = (("instance", inst), ("job", "vllm"), ("model_name", "m"))
            points += [
                ("vllm:num_preemptions_total", lab, ts, scale * 2 * i),
                ("vllm:request_success_total", (*lab, ("finished_reason", "length")), ts,
                 scale * 4 * i),
                ("vllm:generation_tokens_total", lab, ts, scale * 128 * 4 * i),
                ("vllm:kv_cache_usage_perc", lab, ts, 0.1 * (i % 5)),
                # the API server's counter: no engine label
                ("vllm:admission_rejections_total", (*lab, ("reason", "max_num_queued_reqs")),
                 ts, scale * 3 * i),
            ]
    store.append_points(points)
    sig = server_signals(store, "trial-3", t0, t0 + 10_000)
    assert sig["server_rejections"] == pytest.approx(30.0)
    assert sig["preemptions"] == pytest.approx(20.0)
    assert sig["preemptions_per_1k_requests"] == pytest.approx(500.0)
    assert sig["server_generation_tokens"] == pytest.approx(5120.0)
    assert sig["kv_usage_max"] == pytest.approx(0.4)
    assert sig["kv_usage_mean"] == pytest.approx(2.0 / 11)
    assert math.isnan(sig["spec_decode_acceptance"])  # no speculative decoding exported
    # a server without admission control metrics: unknown, not zero
    assert math.isnan(server_signals(store, "trial-5", t0, t0 + 10_000)["server_rejections"])
    store.close()


def test_kv_usage_is_unknown_when_no_scrape_caught_a_request_running(tmp_path: Path) -> None:
    """vLLM CPU 0.32 on a saturated 2-core host answers /metrics between engine steps: every
    scrape of a load reads 0 running and 0 KV usage while generation_tokens_total climbs.
    Those zeros are not a measurement: the KV figures are unknown (NaN) and the trial says
    why; a scrape that saw a request running keeps them, zeros included."""
    import threading

    import httpx

    from tuner.canary import LaunchSpec, LocalCanary
    from tuner.load import LengthDist, LoadResult, LoadSpec, RequestRecord
    from tuner.store import Store
    from tuner.tune import server_signals
    from tuner.tune.trial import TrialContext, TrialRun, _evaluate

    t0 = 1_700_000_000_000
    points = []
    for i in range(6):
        ts = t0 + i * 1000
        for inst, running in (("trial-1", 0.0), ("trial-2", 1.0 if i == 2 else 0.0)):
            lab = (("instance", inst), ("model_name", "m"), ("engine", "0"))
            points += [("vllm:num_requests_running", lab, ts, running),
                       ("vllm:kv_cache_usage_perc", lab, ts, 0.0),
                       ("vllm:generation_tokens_total", lab, ts, 400.0 * i)]
    with Store(tmp_path / "s.db") as store, httpx.Client() as client:
        store.append_points(points)
        blind = server_signals(store, "trial-1", t0, t0 + 5000)
        assert blind["running_peak"] == 0 and blind["server_generation_tokens"] == 2000
        assert math.isnan(blind["kv_usage_max"]) and math.isnan(blind["kv_usage_mean"])
        seen = server_signals(store, "trial-2", t0, t0 + 5000)
        assert seen["running_peak"] == 1 and seen["kv_usage_max"] == 0.0

        spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=8),
                        output_tokens=LengthDist("fixed", mean=4), concurrency=1)
        ctx = TrialContext(config(), store, tmp_path, client, spec, threading.Event())
        canary = LocalCanary(LaunchSpec(model="m"), tmp_path / "never-started.log")
        ok = RequestRecord(ok=True, error="", prompt_tokens=8, output_tokens=4, ttft=0.1,
                           itls=(0.01,) * 3, e2e=0.2, start=100.0)
        for inst, unknown in (("trial-1", True), ("trial-2", False)):
            run = TrialRun([])
            _evaluate(ctx, canary, run, LoadResult((ok, ok), 100.0, 101.0), inst, t0, t0 + 5000)
            assert run.measurement is not None
            assert math.isnan(run.measurement.kv_usage_max) is unknown
            assert any(n.startswith("KV usage unknown") for n in run.notes) is unknown


def test_server_latency_histograms_over_the_trial_window(tmp_path: Path) -> None:
    """The canary's TTFT, ITL and queue-time histograms, read through the production signal
    expressions over the window: quantiles interpolate inside buckets, the ITL mean is
    sum / count; another trial's histograms do not leak in."""
    from tuner.store import Store
    from tuner.tune import server_signals

    store = Store(tmp_path / "s.db")
    t0 = 1_700_000_000_000
    points = []
    for i in range(11):
        ts = t0 + i * 1000
        for inst, scale in (("trial-3", 1.0), ("trial-4", 50.0)):
            lab = (("instance", inst), ("job", "vllm"), ("model_name", "m"), ("engine", "0"))
            # every TTFT in (0.1, 0.5]; every ITL in (0.01, 0.025]; queue times in (0, 0.01]
            for name, bounds, inside in (
                ("vllm:time_to_first_token_seconds", ("0.1", "0.5", "1.0", "+Inf"), 1),
                ("vllm:inter_token_latency_seconds", ("0.01", "0.025", "0.05", "+Inf"), 1),
                ("vllm:request_queue_time_seconds", ("0.01", "0.1", "+Inf"), 0),
            ):
                for j, le in enumerate(bounds):
                    n = 10.0 * i * scale if j >= inside else 0.0
                    points.append((f"{name}_bucket", (*lab, ("le", le)), ts, n))
                points.append((f"{name}_count", lab, ts, 10.0 * i * scale))
            points.append(("vllm:inter_token_latency_seconds_sum", lab, ts,
                           10.0 * i * scale * 0.02))
    store.append_points(points)
    sig = server_signals(store, "trial-3", t0, t0 + 10_000)
    assert sig["server_ttft_p50"] == pytest.approx(0.3)
    assert sig["server_ttft_p99"] == pytest.approx(0.1 + 0.4 * 0.99)
    assert sig["server_itl_p50"] == pytest.approx(0.0175)
    assert sig["server_itl_mean"] == pytest.approx(0.02)
    assert sig["server_queue_p99"] == pytest.approx(0.0099)
    m = measurement_from_signals(sig)
    assert m.server_ttft_p99 == pytest.approx(sig["server_ttft_p99"])
    assert Measurement.from_json(m.to_json()).server_itl_mean == pytest.approx(0.02)
    store.close()


def measurement_from_signals(sig: dict[str, float]) -> Measurement:
    from tuner.tune.trial import measurement_from

    return measurement_from(meas(1000.0), sig, 900.0)


def test_every_slo_is_checked_on_a_named_client_figure() -> None:
    from tuner.tune import SLO_CHECKS, FigureSource

    assert [c.slo for c in SLO_CHECKS] == list(TuneSLO.__dataclass_fields__)
    assert all(c.source is FigureSource.CLIENT and c.figure in Measurement.__dataclass_fields__
               for c in SLO_CHECKS)
    assert {c.counterpart for c in SLO_CHECKS} >= {"server_ttft_p99", "server_itl_p99"}
    v = slo_violations(meas(1000.0, ttft=5.0), TuneSLO(ttft_p99_seconds=2.5))
    assert v == {"ttft_p99_seconds": pytest.approx(2.0)}


def test_explain_latency_gap() -> None:
    from tuner.report.latency import explain_latency_gap

    assert explain_latency_gap("TTFT p99", 0.2, 0.19) is None  # close: nothing to explain
    assert explain_latency_gap("TTFT p99", 0.003, 0.001) is None  # tiny in absolute terms
    assert explain_latency_gap("TTFT p99", None, 0.1) is None
    far = explain_latency_gap("TTFT p99", 0.9, 0.3)
    assert far is not None and "3.0x the server's" in far and "cpus:" in far
    chunky = explain_latency_gap("ITL p50", 0.03, 0.01, tokens_per_chunk=4.0)
    assert chunky is not None and "4.0 per chunk" in chunky
    below = explain_latency_gap("ITL p50", 0.001, 0.008)
    assert below is not None and "below the server's" in below and "buckets" in below


def test_report_names_the_source_of_every_latency_figure() -> None:
    cfg = config()
    trials = [trial(cfg, 0, "baseline", None, 1000.0, ttft=0.9)]
    md = render_tune_report(summarize_search(cfg, trials))
    assert "## Latency: client and server" in md
    assert "`ttft_p99_seconds` ≤ 2.5: p99 TTFT, per request at the load client — source " \
           "**client**" in md
    assert "| TTFT p99 | server: vllm:time_to_first_token_seconds |" in md
    assert "| ITL p99 (per chunk) | client: gap / tokens in the chunk |" in md


def test_refusals_do_not_fail_a_run_but_a_run_where_nothing_succeeded_does(
        tmp_path: Path) -> None:
    """``load.max_error_rate`` is about broken runs: 503 refusals are the server shedding
    load (scored against the SLO's error rate); other errors, or no success at all, fail it."""
    import threading

    import httpx

    from tuner.canary import LaunchSpec, LocalCanary
    from tuner.load import LengthDist, LoadResult, LoadSpec, RequestRecord
    from tuner.store import Store
    from tuner.tune.trial import TrialContext, TrialRun, _evaluate

    def rec(ok: bool, rejected: bool = False) -> RequestRecord:
        return RequestRecord(ok=ok, error="" if ok else ("http 503: full" if rejected else
                                                        "http 500: boom"),
                             prompt_tokens=8, output_tokens=4 if ok else 0,
                             ttft=0.1 if ok else math.nan, itls=(0.01,) * 3 if ok else (),
                             e2e=0.2, start=100.0, rejected=rejected)

    cfg = config()  # load.max_error_rate 0.2
    spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=8),
                    output_tokens=LengthDist("fixed", mean=4), concurrency=2)
    canary = LocalCanary(LaunchSpec(model="m"), tmp_path / "never-started.log")
    with Store(tmp_path / "s.db") as store, httpx.Client() as client:
        ctx = TrialContext(cfg, store, tmp_path, client, spec, threading.Event())

        def evaluate(*records: RequestRecord) -> TrialRun:
            run = TrialRun([])
            _evaluate(ctx, canary, run, LoadResult(records, 100.0, 110.0), "trial-0", 0, 1)
            return run

        shed = evaluate(*(rec(False, True) for _ in range(46)), rec(True), rec(True))
        assert shed.reason == "" and shed.measurement is not None
        assert shed.measurement.rejections == 46 and shed.measurement.errors == 0
        refused_all = evaluate(*(rec(False, True) for _ in range(8)))
        assert refused_all.reason == "load_errors"
        assert refused_all.log_tail.startswith(
            "0/8 requests failed and 8/8 were rejected with 503") and "0 succeeded" in \
            refused_all.log_tail
        broken = evaluate(rec(True), rec(True), rec(False), rec(False, True))
        assert broken.reason == "load_errors"  # 1 of 4 other errors: 25% > 20%
