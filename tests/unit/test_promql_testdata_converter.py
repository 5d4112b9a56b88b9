"""The converter of Prometheus's PromQL ``.test`` format into promtool unit-test files.

Run on a small script written here (the real testdata is fetched at install time and used by
tests/integration/test_promql_testdata.py); each converted file is then run by
``tuner rules test`` (``run_test_files``), so a conversion that changed a case would fail here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.promql_testdata import CaseKind, parse_test_file, unit_test_yaml, write_cases
from tuner.rules import run_test_files

SCRIPT = """\
# a comment line
load 5m
  http_requests{job="api", instance="0"} 0+10x10
  http_requests{job="api", instance="1"} 0+20x10
  other 1 _ stale

eval instant at 50m sum(http_requests)
  {} 300

eval instant at 50m 1 + 1
  2

eval_ordered instant at 50m sort_desc(http_requests)
  http_requests{job="api", instance="1"} 200
  http_requests{job="api", instance="0"} 100

eval_fail instant at 0m label_replace(http_requests, "dst", "", "src", "(.*")

clear

load 10s
  fast 0+1x30

load 1m
  slow 0+1x5

eval instant at 5m fast + on() group_left slow
  {} 35

eval instant at 5m count_over_time(fast[1m:20s])
  {} 4

eval instant at 1m fast offset -1m
  fast 12
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "sample.test"
    p.write_text(SCRIPT)
    return p


def test_parse_cases_with_their_loads(script: Path) -> None:
    cases = parse_test_file(script)
    assert [c.source for c in cases] == [f"sample.test:{n}" for n in (7, 10, 13, 17, 27, 30, 33)]
    assert [c.kind for c in cases] == [CaseKind.INSTANT, CaseKind.INSTANT, CaseKind.ORDERED,
                                       CaseKind.FAIL, CaseKind.INSTANT, CaseKind.INSTANT,
                                       CaseKind.INSTANT]
    assert cases[0].eval_time_ms == 3_000_000 and cases[0].expected == (("{}", 300.0),)
    assert cases[1].expected == (("{}", 2.0),)  # a bare number: a scalar result
    assert len(cases[0].series) == 3 and len(cases[4].series) == 2  # clear empties the storage
    assert cases[6].expected == (("fast", 12.0),)


def test_converted_files_run_as_promtool_would(script: Path, tmp_path: Path) -> None:
    cases = parse_test_file(script)
    doc = yaml.safe_load(unit_test_yaml(cases[0]))
    assert doc["rule_files"] == [] and doc["evaluation_interval"] == "1m"
    test = doc["tests"][0]
    assert test["interval"] == "5m"
    # only the series the expression reads are loaded
    assert [s["series"] for s in test["input_series"]] == [
        'http_requests{job="api", instance="0"}', 'http_requests{job="api", instance="1"}']
    assert test["promql_expr_test"] == [
        {"expr": "sum(http_requests)", "eval_time": "50m",
         "exp_samples": [{"labels": "{}", "value": 300.0}]}]
    # two load intervals in one block: the finer grid, the coarser series spelled out on it
    mixed = yaml.safe_load(unit_test_yaml(cases[4]))["tests"][0]
    assert mixed["interval"] == "10s"
    assert mixed["input_series"][1]["values"].startswith("0.0 _x5 1.0 _x5 2.0")
    # promtool loads samples only up to its last eval_time: a check at the last sample makes
    # it load them all, as Prometheus's own runner does (for @ and negative offsets)
    late = yaml.safe_load(unit_test_yaml(cases[6]))["tests"][0]["promql_expr_test"]
    assert late[1] == {"expr": "vector(1)", "eval_time": "5m",
                       "exp_samples": [{"labels": "{}", "value": 1}]}
    files = write_cases(cases, tmp_path / "out")
    results = {Path(r.path).name: r for r in run_test_files(list(files))}
    failed = {name for name, r in results.items() if not r.ok}
    assert failed == {"sample_17.yaml"}, {n: r.failures for n, r in results.items()}  # eval_fail
    assert "invalid regular expression" in results["sample_17.yaml"].failures[0]


def test_malformed_scripts_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.test"
    p.write_text("load 5m\n  x 1\n\nfrobnicate x\n")
    with pytest.raises(ValueError, match=r"bad.test:4: invalid command 'frobnicate x'"):
        parse_test_file(p)
    p.write_text("load 5m\n  x 1\nload 1m\n  y 2\n")  # a load ends at a blank line only
    with pytest.raises(ValueError, match=r"bad.test:3: '1m' is not a value"):
        parse_test_file(p)
    p.write_text("eval instant at 5m x\n  {} 1 2\n")
    with pytest.raises(ValueError, match=r"bad.test:2: one value expected"):
        parse_test_file(p)
