"""The shipped rules against the real promtool: unit tests pass, every rendering checks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.prometheus import require_binary
from tuner.cli import main
from tuner.config import SLO
from tuner.rules import check_rule_files, render_rule_files, run_test_files

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "rules"


def test_promtool_passes_every_shipped_rule_unit_test() -> None:
    promtool = require_binary("promtool")
    files = sorted(str(p) for p in (RULES / "tests").glob("*.yaml"))
    assert len(files) == 3
    proc = subprocess.run([promtool, "test", "rules", *files], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == 3
    # ... and tuner's evaluator passes the very same files
    ours = run_test_files(files)
    assert [r.ok for r in ours] == [True, True, True], [r.failures for r in ours]
    assert sum(r.tests for r in ours) == 49


def test_promtool_fails_a_wrong_expectation_that_tuner_also_fails(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    text = (RULES / "tests" / "slo_test.yaml").read_text()
    wrong = text.replace("p99 queue time 2.47s", "p99 queue time 2.5s").replace(
        "../slo.yaml", str(RULES / "slo.yaml"))
    p = tmp_path / "wrong_test.yaml"
    p.write_text(wrong)
    proc = subprocess.run([promtool, "test", "rules", str(p)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1 and "VllmQueueTimeHigh" in proc.stdout + proc.stderr
    ours = run_test_files([p])[0]
    assert not ours.ok and all("VllmQueueTimeHigh" in f for f in ours.failures)
    assert len(ours.failures) == 2  # new names and old names


@pytest.mark.parametrize(
    "slo",
    [SLO(), SLO(ttft_p99_seconds=0.3, itl_p99_seconds=0.05, queue_p99_seconds=5,
                error_rate=0.001, objective=0.999),
     SLO(ttft_p99_seconds=3, itl_p99_seconds=0.33, queue_p99_seconds=0.7, objective=0.95)],
)
def test_every_rendering_passes_promtool_check(tmp_path: Path, slo: SLO) -> None:
    require_binary("promtool")
    for name, text in render_rule_files(slo).items():
        (tmp_path / name).write_text(text)
    results = check_rule_files([tmp_path / "*.yaml"])
    assert [r.ok for r in results] == [True, True, True], results
    assert all(r.promtool is not None and "SUCCESS" in r.promtool for r in results)


def test_rules_check_cli_runs_promtool_too(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("promtool")
    assert main(["rules", "check", str(RULES / "*.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("SUCCESS") == 3 and "promtool not installed" not in out
    # a file only promtool can fault: tuner's subset accepts it, promtool does not
    bad = tmp_path / "dup_groups.yaml"
    bad.write_text("groups:\n- name: g\n  rules:\n  - {alert: A, expr: up == 0, "
                   "labels: {severity: '{{ $value }'}}\n")
    assert main(["rules", "check", str(bad)]) == 1
    assert "FAILED" in capsys.readouterr().out
