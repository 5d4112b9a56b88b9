"""``tuner tune`` bad inputs that need no vLLM: a base command that never starts, a bad space
given to the CLI, an out dir that already holds another search. Real processes, real SQLite."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuner.cli import main
from tuner.tune import load_trials


def write_config(tmp_path: Path, **over: Any) -> Path:
    data: dict[str, Any] = {
        "launch": {
            # a "server" that dies at once, printing why: the base command never starts
            "command": [sys.executable, "-c",
                        "import sys; print('fatal: cannot bind the accelerator'); sys.exit(3)"],
            "model": "/models/none",
            "flags": {"max-num-seqs": 16},
        },
        "load": {"prompt_tokens": 16, "output_tokens": 8, "concurrency": 2, "duration": 2},
        "budget": {"trials": 3},
        "canary": {"health_timeout": "30s"},
        "out": str(tmp_path / "out"),
    }
    data.update(over)
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_base_command_that_never_starts_stops_after_the_baseline_with_its_log_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    code = main(["tune", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1
    assert "the baseline (trial 0) failed (exit)" in err
    assert "fatal: cannot bind the accelerator" in err  # the log tail
    (baseline,) = load_trials(tmp_path / "out")  # recorded, and nothing after it
    assert baseline.kind == "baseline" and baseline.state == "failed"
    assert "fatal: cannot bind the accelerator" in baseline.log_tail
    # --resume does not retry it blindly: it stops again with the same message
    code = main(["tune", "--config", str(cfg), "--resume"])
    assert code == 1 and "baseline (trial 0) failed" in capsys.readouterr().err
    assert len(load_trials(tmp_path / "out")) == 1


def test_bad_space_on_the_command_line_names_file_and_key_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_config(tmp_path)
    assert main(["tune", "--config", str(good)]) == 1  # leaves a search (one failed baseline)
    capsys.readouterr()
    db = tmp_path / "out" / "tune.db"
    before = db.read_bytes()
    bad = write_config(tmp_path, space={"max-num-seqs": {"low": 256, "high": 8}})
    code = main(["tune", "--config", str(bad), "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}: space.max-num-seqs: min > max: low=256 is above high=8" in err
    assert db.read_bytes() == before


def test_another_search_in_the_out_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    assert main(["tune", "--config", str(cfg)]) == 1
    capsys.readouterr()
    other = write_config(tmp_path, slo={"ttft_p99_seconds": 0.5})
    assert main(["tune", "--config", str(other), "--resume"]) == 1
    assert "holds a search with a different" in capsys.readouterr().err
    assert len(load_trials(tmp_path / "out")) == 1


def test_workload_fingerprint_as_the_load(tmp_path: Path) -> None:
    from tuner.tune import build_load_spec, load_tune_config

    (tmp_path / "wl.json").write_text(json.dumps({
        "prompt_tokens": {"kind": "lognormal", "mean": 300, "std": 100, "high": 1024},
        "output_tokens": 64, "request_rate": 3.5, "prefix_share": 0.25}))
    cfg = load_tune_config(write_config(tmp_path, load={"workload": "wl.json", "duration": 5}))
    spec = build_load_spec(cfg.load)
    assert spec.request_rate == 3.5 and spec.duration == 5 and spec.prefix_share == 0.25
    assert spec.prompt_tokens.kind == "lognormal" and spec.output_tokens.mean == 64
    bad = write_config(tmp_path, load={"workload": "missing.json"})
    with pytest.raises(Exception, match=r"load.workload: cannot read workload fingerprint"):
        load_tune_config(bad)


def test_the_search_pins_its_canary_and_says_how_once(tmp_path: Path) -> None:
    """A real child started by the search reports its CPU mask and OpenMP binding: the canary
    runs on the plan's canary cores; the tuner process is back on its old mask afterwards."""
    import os

    from tuner.errors import TuneError
    from tuner.tune import TuneCounters, TuneOptions, load_tune_config, run_tune
    from tuner.tune.cpus import CpuRequest, cpu_list, current_cpus, plan_cpus

    script = ("import os, sys; print('mask', sorted(os.sched_getaffinity(0)), 'omp', "
              "os.environ.get('VLLM_CPU_OMP_THREADS_BIND')); sys.exit(3)")
    path = write_config(tmp_path, launch={"command": [sys.executable, "-c", script],
                                          "model": "/models/none"})
    cfg = load_tune_config(path)
    before = os.sched_getaffinity(0)
    counters = TuneCounters(cfg.objective)
    with pytest.raises(TuneError, match="baseline"):
        run_tune(cfg, TuneOptions(out=tmp_path / "out"), observers=[counters],
                 install_signals=False)
    assert os.sched_getaffinity(0) == before
    plan = plan_cpus(CpuRequest(), current_cpus())
    assert counters.notes[:1] == [plan.describe()]  # said once, before the first trial
    (baseline,) = load_trials(tmp_path / "out")
    if plan.pinned:
        cores = list(plan.canary_cores(0))
        assert f"mask {cores} omp {cpu_list(cores)}" in baseline.log_tail
    else:  # one core here: said, and nothing pinned
        assert "unpinned" in counters.notes[0] and "omp None" in baseline.log_tail
