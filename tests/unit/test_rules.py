"""tuner.rules: rendering, loading/validation, templates, the alert state machine, the
promtool-format unit-test runner — over a real SQLite store and the real PromQL engine."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.cli import main
from tuner.config import SLO
from tuner.generated import sync_generated
from tuner.promql import Engine
from tuner.provision import repo_files
from tuner.rules import (
    GENERATED_MARKERS,
    STATE_DOCUMENT_KIND,
    TEMPLATE_NAMES,
    AlertStatus,
    RuleEngine,
    RuleError,
    RuleKind,
    TemplateError,
    expand_template,
    expand_values,
    go_float,
    go_printf,
    humanize,
    humanize1024,
    humanize_duration,
    humanize_percentage,
    inline_recording_rules,
    load_rule_files,
    load_rule_texts,
    parse_rule_text,
    parse_series,
    parse_template,
    read_alert_states,
    read_template,
    render_rule_files,
    run_test_files,
    snap_slo,
)
from tuner.store import STALE_NAN, Store, is_stale

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"


# -- rendering ---------------------------------------------------------------------------------


def test_committed_rule_files_are_the_default_rendering() -> None:
    rendered = render_rule_files(SLO())
    committed = {p.name: p.read_text() for p in sorted(RULES.glob("*.yaml"))}
    assert set(rendered) == set(committed)
    for name, text in rendered.items():
        assert text == committed[name], f"rules/{name} drifted from render_rule_files(SLO())"


def test_every_alert_has_severity_summary_description_and_runbook_anchor() -> None:
    rules = load_rule_files([RULES / "*.yaml"])
    runbook = (RULES / "RUNBOOK.md").read_text()
    assert len(rules.alert_names) == 17
    for rule in rules.rules:
        if rule.kind != "alert":
            continue
        assert rule.name.startswith(("Vllm", "Gpu")) and rule.name[0].isupper()
        assert rule.labels["severity"] in ("critical", "warning", "info")
        assert set(rule.annotations) >= {"summary", "description", "runbook_url"}
        assert rule.annotations["runbook_url"] == f"rules/RUNBOOK.md#{rule.name.lower()}"
        assert f"\n## {rule.name}\n" in runbook


def test_every_alert_has_a_family_documented_in_the_runbook() -> None:
    """Alertmanager inhibits by (instance, family): every alert needs one, the runbook table
    names it, and the TTFT page and ticket share theirs."""
    rules = load_rule_files([RULES / "*.yaml"])
    runbook = (RULES / "RUNBOOK.md").read_text()
    alerts = [r for r in rules.rules if r.kind == "alert"]
    for rule in alerts:
        family = rule.labels.get("family", "")
        assert re.fullmatch(r"[a-z][a-z0-9_]*", family), f"{rule.name}: family {family!r}"
        row = f"| {rule.name} | {rule.labels['severity']} | `{family}` |"
        assert row in runbook, f"RUNBOOK.md lacks the row {row}"
    by_family: dict[str, set[str]] = {}
    for rule in alerts:
        by_family.setdefault(rule.labels["family"], set()).add(rule.name)
    assert by_family["ttft_slo"] == {"VllmTtftSloBurnRateCritical", "VllmTtftSloBurnRateWarning"}
    assert len(by_family) == 10


def test_every_alert_has_a_unit_test() -> None:
    tests = "".join(p.read_text() for p in (RULES / "tests").glob("*.yaml"))
    for name in load_rule_files([RULES / "*.yaml"]).alert_names:
        assert f"alertname: {name}" in tests, f"{name} has no promtool unit test"


def test_render_snaps_thresholds_to_bucket_bounds_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slo = SLO(ttft_p99_seconds=0.9, itl_p99_seconds=0.12, queue_p99_seconds=2.0,
              error_rate=0.005, objective=0.999)
    snapped = snap_slo(slo)
    assert (snapped.ttft_seconds, snapped.itl_seconds, snapped.queue_seconds) == (0.75, 0.1, 2.0)
    assert len(snapped.notes) == 2 and "ttft_p99_seconds 0.9s" in snapped.notes[0]
    with caplog.at_level(logging.WARNING, logger="tuner.rules"):
        files = render_rule_files(slo)
    assert "the rules use 0.75s" in caplog.text
    slo_text = files["slo.yaml"]
    assert "# NOTE: slo.ttft_p99_seconds 0.9s is not a bucket bound" in slo_text
    assert 'le=~"0\\\\.75"' in slo_text
    assert "ratio_rate1h > 0.0144" in slo_text  # 14.4 x (1 - 0.999)
    assert "ratio_rate3d > 0.001" in slo_text
    assert "p99_rate5m > 0.1\n" in slo_text
    assert "ratio_rate5m > 0.005" in slo_text and "at most 0.5%" in slo_text
    rules = load_rule_texts(files)  # still valid rules of our subset
    assert "VllmTtftSloBurnRateCritical" in rules.alert_names
    # integer bound: both spellings of le ("1.0" from vLLM, "1" from Prometheus 3)
    assert 'le=~"2560|2560\\\\.0"' in render_rule_files(SLO(ttft_p99_seconds=5000))["slo.yaml"]


def test_rendered_snapped_rules_evaluate_on_the_snapped_bucket(tmp_path: Path) -> None:
    files = render_rule_files(SLO(ttft_p99_seconds=0.6))  # snaps to 0.5
    store = Store(tmp_path / "s.db")
    lb = {"job": "vllm", "instance": "a", "model_name": "m"}
    pts = []
    for i in range(11):
        t = i * 60_000
        pts.append(("vllm:time_to_first_token_seconds_bucket",
                    tuple(sorted({**lb, "le": "0.5"}.items())), t, 80.0 * i))
        pts.append(("vllm:time_to_first_token_seconds_count", tuple(sorted(lb.items())), t,
                    100.0 * i))
    store.append_points(pts)
    engine = RuleEngine(load_rule_texts(files), Engine(store), writer=store, default_interval=60)
    for i in range(11):
        engine.evaluate(i * 60.0)
    res = Engine(store).instant("instance:vllm_ttft_slo_errors:ratio_rate1h", 600)
    assert [round(e.value, 9) for e in res.vector] == [0.2]


# -- templates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "value", "want"),
    [
        (humanize, 0.0, "0"), (humanize, 1234567.0, "1.235M"), (humanize, 0.95, "950m"),
        (humanize, 12.0, "12"), (humanize, -0.001, "-1m"), (humanize, math.inf, "+Inf"),
        (humanize1024, 1048576.0, "1Mi"), (humanize1024, 0.5, "0.5"),
        (humanize_percentage, 0.95, "95%"), (humanize_percentage, 0.04761904761904762, "4.762%"),
        (humanize_duration, 90.0, "1m 30s"), (humanize_duration, 0.19000000000000003, "190ms"),
        (humanize_duration, 2.47, "2.47s"), (humanize_duration, 93784.0, "1d 2h 3m 4s"),
        (humanize_duration, 0.0, "0s"), (humanize_duration, math.nan, "NaN"),
    ],
)
def test_humanize_functions_match_prometheus(fn, value, want) -> None:  # type: ignore[no-untyped-def]
    assert fn(value) == want


def test_go_float_formatting_matches_go_fmt_v() -> None:
    cases = {79.0: "79", 0.5: "0.5", 1e6: "1e+06", 123456.0: "123456", 1e-05: "1e-05",
             0.0001: "0.0001", -2.5: "-2.5", math.inf: "+Inf", -math.inf: "-Inf",
             math.nan: "NaN", 1 / 3: "0.3333333333333333"}
    for v, want in cases.items():
        assert go_float(v) == want
    assert go_printf("%.2f|%.0f%%|%s|%d|%v", 0.456, 25.0, "x", 3, 2.0) == "0.46|25%|x|3|2"
    assert go_printf("%.1f", math.inf) == "+Inf"


def test_template_expansion() -> None:
    labels = {"instance": "a", "model_name": "m"}
    tpl = ('{{ $labels.instance }} ({{ .Labels.model_name }}): {{ $value | humanizePercentage }}'
           ' {{ printf "%.1f" $value }} {{ $labels.missing }}|{{ $externalLabels.cluster }}'
           ' {{- " trimmed" }} {{/* comment */}}{{ "up" | toUpper }}')
    out = expand_template(tpl, labels, 0.25, {"cluster": "c1"})
    assert out == "a (m): 25% 0.2 |c1 trimmed UP"
    assert expand_template("{{ $value }}", {}, 79.0) == "79"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{{ $value | humanise }}", "function 'humanise' not defined"),
        ("{{ $lables.instance }}", "undefined variable '$lables'"),
        ("value {{ $value ", "unclosed action"),
        ("{{ if $value }}x{{ end }}", "unsupported template action 'if'"),
        ("{{ $x := 1 }}", "variable assignment is not supported"),
        ("{{ humanize }}", "want 1 got 0"),
        ("{{ .Nope }}", "can't evaluate field 'Nope'"),
    ],
)
def test_template_errors_are_detected_at_parse_time(text: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as e:
        parse_template(text)
    assert fragment in str(e.value)


# -- bad rule files: messages name file, group and rule -----------------------------------------------

GOOD_ALERT = """\
      - alert: A
        expr: up == 0
        for: 1m
        labels: {severity: warning}
        annotations: {summary: s, description: "{{ $labels.instance }}"}
"""


def _file(tmp_path: Path, body: str, name: str = "bad.yaml") -> Path:
    p = tmp_path / name
    p.write_text("groups:\n  - name: g1\n    rules:\n" + body)
    return p


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("      - alert: A\n        expr: rate(up[5m]\n",
         ["group 'g1'", "rule 0 (alert 'A')", "expr:"]),
        ("      - alert: A\n        expr: histogram_sum(up) > 0\n",
         ["group 'g1'", "rule 0 (alert 'A')", "histogram_sum"]),
        (GOOD_ALERT + GOOD_ALERT,
         ["group 'g1'", "rule 1 (alert 'A')", "duplicate alert", "rule 0"]),
        ("      - alert: A\n        expr: up == 0\n        for: 5 minutes\n",
         ["group 'g1'", "rule 0 (alert 'A')", "for:", "not a Prometheus duration"]),
        ("      - alert: A\n        expr: up == 0\n        for: 5\n",
         ["rule 0 (alert 'A')", "for:", "not a duration string"]),
        ("      - alert: A\n        expr: up == 0\n"
         "        annotations: {description: '{{ $value | humanise }}'}\n",
         ["group 'g1'", "rule 0 (alert 'A')", "annotations.description", "template error",
          "humanise"]),
        ("      - record: bad-name\n        expr: up\n",
         ["rule 0 (record 'bad-name')", "invalid recording rule name"]),
        ("      - alert: A\n        expr: up\n        unknown: 1\n",
         ["rule 0 (alert 'A')", "unknown keys ['unknown']"]),
        ("      - alert: A\n        record: b\n        expr: up\n",
         ["rule 0", "exactly one of 'record' or 'alert'"]),
        ("      - alert: A\n        expr: up\n      bad indent: [\n", ["not valid YAML"]),
    ],
)
def test_bad_rule_files_are_refused_naming_file_group_and_rule(
    tmp_path: Path, body: str, fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, body)
    before = path.read_bytes()
    with pytest.raises(RuleError) as e:
        load_rule_files([path])
    msg = str(e.value)
    assert msg.startswith(str(path))
    for f in fragments:
        assert f in msg, msg
    # the CLI says the same and exits non-zero; the file is untouched
    assert main(["rules", "check", "--no-promtool", str(path)]) == 1
    assert fragments[-1] in capsys.readouterr().out
    assert path.read_bytes() == before


def test_same_alert_name_with_different_labels_is_allowed() -> None:
    text = ("groups:\n- name: g\n  rules:\n"
            "  - {alert: A, expr: up > 1, labels: {severity: warning}}\n"
            "  - {alert: A, expr: up > 2, labels: {severity: critical}}\n")
    assert len(parse_rule_text(text, "x.yaml")[0].rules) == 2


def test_rules_check_cli_accepts_the_shipped_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", "--no-promtool", str(RULES / "*.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("SUCCESS") == 3


# -- the promtool-format unit-test runner ---------------------------------------------------------------


def test_expanding_notation() -> None:
    assert expand_values("-2+4x3") == [-2, 2, 6, 10]
    assert expand_values("1-2x4") == [1, -1, -3, -5, -7]
    assert expand_values("1x4") == [1, 1, 1, 1, 1]
    vals = expand_values("1 _x3 stale _")
    assert vals[0] == 1 and vals[1:4] == [None, None, None] and vals[5] is None
    assert is_stale(vals[4])  # type: ignore[arg-type]
    assert math.isinf(expand_values("Inf")[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not a value"):
        expand_values("1+x3")
    assert parse_series('up{job="a", instance="b"}') == ("up", {"job": "a", "instance": "b"})
    assert parse_series('{__name__="x:y", a="1"}') == ("x:y", {"a": "1"})


def test_expansion_adds_step_by_step_as_promtool_does() -> None:
    # promtool's series parser adds the increment repeatedly (0.1+0.1+0.1 != 3*0.1)
    assert expand_values("0+0.1x3") == [0.0, 0.1, 0.2, 0.30000000000000004]
    assert parse_series("{}") == ("", {})


_PROMQL_ONLY = """\
evaluation_interval: 30s
tests:
  - interval: 15s
    input_series:
      - {series: 'x{i="a"}', values: '1+1x40'}
      - {series: 'x{i="b"}', values: '2+2x40'}
    promql_expr_test:
      - {expr: sum(x), eval_time: 5m, exp_samples: [{labels: '{}', value: 63}]}
      - {expr: scalar(sum(x)), eval_time: 5m, exp_samples: [{labels: '{}', value: 63}]}
      - {expr: 'x{i="a"}', eval_time: 1m, exp_samples: [{labels: 'x{i="a"}', value: 5}]}
      # no step: the file's evaluation_interval (30s), so 11 points in [0, 5m]
      - {expr: 'count_over_time(x{i="a"}[5m:])', eval_time: 5m,
         exp_samples: [{labels: '{i="a"}', value: 11}]}
      - {expr: absent(x), eval_time: 5m}
"""


@pytest.mark.parametrize("head", ["rule_files: []\n", ""])
def test_promql_only_test_files_are_accepted(tmp_path: Path, head: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """What promtool accepts: no rules at all, and '{}' for an aggregation's empty label set."""
    p = tmp_path / "q_test.yaml"
    p.write_text(head + _PROMQL_ONLY)
    res = run_test_files([p])[0]
    assert res.ok, res.failures
    assert main(["rules", "test", str(p)]) == 0 and "SUCCESS" in capsys.readouterr().out
    wrong = tmp_path / "wrong_test.yaml"
    wrong.write_text(head + _PROMQL_ONLY.replace("value: 63}]}\n      - {expr: scalar",
                                                 "value: 64}]}\n      - {expr: scalar"))
    res = run_test_files([wrong])[0]
    assert len(res.failures) == 1 and "expr: 'sum(x)', time: 5m" in res.failures[0]
    assert "exp: [{} 64]" in res.failures[0] and "got: [{} 63]" in res.failures[0]


def test_an_alert_test_of_a_name_without_a_rule_expects_no_alerts(tmp_path: Path) -> None:
    """As promtool: an alertname no rule defines fires nothing, so [] expected passes."""
    (tmp_path / "r.yaml").write_text("groups:\n- name: g\n  rules:\n  - {alert: A, expr: up == 0}\n")
    p = tmp_path / "t.yaml"
    p.write_text("rule_files: [r.yaml]\ntests:\n- interval: 1m\n"
                 "  input_series: [{series: up, values: '1 1 1'}]\n"
                 "  alert_rule_test: [{eval_time: 2m, alertname: B}]\n")
    assert run_test_files([p])[0].ok
    p.write_text(p.read_text().replace("alertname: B}", "alertname: B, exp_alerts: [{}]}"))
    res = run_test_files([p])[0]
    assert not res.ok and "alertname: B, time: 2m" in res.failures[0]


def test_tuner_rules_test_passes_the_shipped_promtool_tests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rules", "test", str(RULES / "tests" / "*.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("SUCCESS") == 3 and "FAILED" not in out


def test_rules_test_reports_a_wrong_expectation(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    text = (RULES / "tests" / "gpu_test.yaml").read_text()
    wrong = text.replace("reported XID 79.", "reported XID 80.").replace("../gpu.yaml",
                                                                        str(RULES / "gpu.yaml"))
    p = tmp_path / "wrong_test.yaml"
    p.write_text(wrong)
    res = run_test_files([p])[0]
    assert not res.ok and len(res.failures) == 2  # at 5m and at 22m (keep_firing_for)
    assert "alertname: GpuXidError, time: 5m" in res.failures[0]
    assert "reported XID 80." in res.failures[0] and "reported XID 79." in res.failures[0]
    assert main(["rules", "test", str(p)]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("rule_files: [r.yaml]\ntests: [{input_series: [{series: up, values: '1'}]}]\n"
         "evaluation_interval: 1m\nextra: 1\n", "unknown keys ['extra']"),
        ("groups: []\n", "unknown keys ['groups']"),
        ("rule_files: [r.yaml]\n", "tests: a list of test groups is required"),
        ("rule_files: [r.yaml]\ntests:\n  - input_series: [{series: 'up{', values: '1'}]\n",
         "tests[0]: input_series[0]"),
        ("rule_files: [r.yaml]\ntests:\n  - input_series: [{series: up, values: '1+x'}]\n",
         "is not a value"),
        ("rule_files: [r.yaml]\ntests:\n  - alert_rule_test: [{eval_time: 1m, alert: A}]\n",
         "alert_rule_test[0]"),
        ("rule_files: [missing.yaml]\ntests: [{}]\n", "rule_files"),
        ("rule_files: r.yaml\ntests: [{}]\n", "rule_files: a list of rule file paths"),
        ("rule_files: [1]\ntests: [{}]\n", "rule_files: a list of rule file paths"),
        ("rule_files: []\ntests:\n  - promql_expr_test: [{expr: 'sum(', eval_time: 0s}]\n",
         "promql_expr_test[0]: expr 'sum('"),
        ("tests:\n  - promql_expr_test: [{expr: up, exp_samples: [{labels: '{a=}'}]}]\n",
         "exp_samples[0]"),
        ("- just a list\n", "a rule unit-test file is a mapping"),
    ],
)
def test_unit_test_files_in_the_wrong_format_fail_clearly(
    tmp_path: Path, content: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r.yaml").write_text("groups:\n- name: g\n  rules:\n  - {alert: A, expr: up == 0}\n")
    p = tmp_path / "t.yaml"
    p.write_text(content)
    res = run_test_files([p])[0]
    assert not res.ok
    assert res.failures[0].startswith(str(p)) and fragment in res.failures[0], res.failures
    assert main(["rules", "test", str(p)]) == 1
    assert fragment in capsys.readouterr().out


# -- the alert state machine -------------------------------------------------------------------------


def _store_with(tmp_path: Path, values: list[float | None], name: str = "x",
                step_s: int = 60) -> Store:
    store = Store(tmp_path / "s.db", retention=3650 * 86400.0)
    pts = [(name, (("instance", "a"),), i * step_s * 1000, v)
           for i, v in enumerate(values) if v is not None]
    store.append_points(pts)
    return store


def _engine(store: Store, rules_yaml: str, **kw: object) -> RuleEngine:
    rules = load_rule_texts({"t.yaml": rules_yaml})
    return RuleEngine(rules, Engine(store), writer=store, documents=store,
                      default_interval=60.0, **kw)  # type: ignore[arg-type]


ALERT_FOR_2M = """\
groups:
- name: g
  rules:
  - alert: High
    expr: x > 0
    for: 2m
    labels: {severity: warning}
    annotations: {description: 'value {{ $value }} on {{ $labels.instance }}'}
"""


def test_pending_firing_resolved_and_resend(tmp_path: Path) -> None:
    # x > 0 from 1m to 5m, then 0
    store = _store_with(tmp_path, [0, 1, 2, 3, 4, 5, 0, 0, 0, 0] + [0] * 20)
    eng = _engine(store, ALERT_FOR_2M)
    states = {}
    sent = {}
    for i in range(30):
        rep = eng.evaluate(i * 60.0)
        a = eng.alerts()
        states[i] = a[0].state if a else "inactive"
        sent[i] = [(s.state, s.ends_at) for s in rep.to_send]
        if i == 4:
            assert a[0].active_at == 60.0 and a[0].value == 4.0
            assert a[0].annotations["description"] == "value 4 on a"
    assert [states[i] for i in range(8)] == ["inactive", "pending", "pending", "firing",
                                             "firing", "firing", "resolved", "resolved"]
    assert sent[3] == [("firing", 3 * 60 + 4 * 60)]  # endsAt = valid_until = ts + 4 x resend
    assert sent[4] == []  # resend only after resend_delay (60s) has strictly passed
    assert sent[5] == [("firing", 5 * 60 + 240)]
    assert sent[6] == [("resolved", 6 * 60)]  # resolved: sent at once with endsAt
    # resolved alerts are kept (and resent) for 15 minutes, then forgotten
    assert states[21] == "resolved" and states[22] == "inactive"
    # ALERTS / ALERTS_FOR_STATE were written, and went stale when the alert resolved
    q = Engine(store)
    got = q.instant("ALERTS", 240).vector
    assert [dict(e.labels) for e in got] == [{"__name__": "ALERTS", "alertname": "High",
                                             "alertstate": "firing", "instance": "a",
                                             "severity": "warning"}]
    assert q.instant("ALERTS_FOR_STATE", 240).vector[0].value == 60.0
    assert q.instant("ALERTS", 360).vector == ()  # stale marker at resolve time
    store.close()


def test_keep_firing_for(tmp_path: Path) -> None:
    store = _store_with(tmp_path, [1, 1, 0, 0, 0, 0, 0, 0])
    rules = ALERT_FOR_2M.replace("for: 2m", "for: 0s\n    keep_firing_for: 3m")
    eng = _engine(store, rules)
    seen = []
    for i in range(8):
        eng.evaluate(i * 60.0)
        seen.append(eng.alerts()[0].state if eng.alerts() else "inactive")
    # firing at once (for: 0s); condition false from 2m; keeps firing while ts - 2m < 3m
    assert seen == ["firing", "firing", "firing", "firing", "firing", "resolved", "resolved",
                    "resolved"]
    store.close()


def test_alert_state_persists_and_restart_keeps_active_at(tmp_path: Path) -> None:
    store = _store_with(tmp_path, [1] * 10)
    eng = _engine(store, ALERT_FOR_2M)
    eng.evaluate(0.0)
    eng.evaluate(60.0)
    listed = read_alert_states(store)
    assert [(a.alertname, a.state, a.active_at) for a in listed] == [("High", "pending", 0.0)]
    # a new process (new engine) restores activeAt: firing as soon as 2m have passed since 0s
    eng2 = _engine(store, ALERT_FOR_2M)
    assert eng2.restore() == 1
    eng2.evaluate(120.0)
    assert [(a.state, a.active_at) for a in eng2.alerts()] == [("firing", 0.0)]
    assert store.documents(STATE_DOCUMENT_KIND)[0][2]["alerts"][0]["state"] == "firing"
    store.close()


def test_recording_rules_write_back_and_later_rules_see_them(tmp_path: Path) -> None:
    store = _store_with(tmp_path, [float(i) for i in range(10)])
    rules = """\
groups:
- name: g
  rules:
  - record: job:x:doubled
    expr: x * 2
    labels: {source: rec}
  - alert: Doubled
    expr: job:x:doubled > 10
"""
    eng = _engine(store, rules)
    for i in range(10):
        eng.evaluate(i * 60.0)
    vec = Engine(store).instant("job:x:doubled", 540).vector
    assert [(dict(e.labels), e.value) for e in vec] == [
        ({"__name__": "job:x:doubled", "instance": "a", "source": "rec"}, 18.0)]
    assert [a.labels["source"] for a in eng.firing("Doubled")] == ["rec"]
    # fleet mode: nothing written back, the recorded name is inlined -> same alerts
    inlined = inline_recording_rules(load_rule_texts({"t.yaml": rules}))
    assert "(x * 2) > 10" not in inlined[("t.yaml", "g", 1)]  # rule with labels: not inlined
    plain = rules.replace("    labels: {source: rec}\n", "")
    assert inline_recording_rules(load_rule_texts({"t.yaml": plain}))[("t.yaml", "g", 1)] == (
        "(x * 2) > 10")
    fleet = RuleEngine(load_rule_texts({"t.yaml": plain}), Engine(store), writer=None)
    for i in range(10):
        fleet.evaluate(i * 60.0)
    assert [a.labels for a in fleet.firing("Doubled")] == [{"alertname": "Doubled",
                                                           "instance": "a"}]
    store.close()


def test_recording_rule_writes_stale_marker_when_series_vanishes(tmp_path: Path) -> None:
    store = _store_with(tmp_path, [1, 1, STALE_NAN, None, None])
    eng = _engine(store, "groups:\n- name: g\n  rules:\n  - {record: 'r:x', expr: x}\n")
    for i in range(4):
        eng.evaluate(i * 60.0)
    series = store.select([], 0, 10**9)
    rec = next(s for s in series if s.name == "r:x")
    assert rec.timestamps.tolist() == [0, 60000, 120000] and is_stale(rec.values[-1])
    store.close()


def test_evaluation_errors_name_the_rule_and_keep_state(tmp_path: Path) -> None:
    store = _store_with(tmp_path, [1, 1, 1])
    store.append_points([("y", (("instance", "a"), ("k", str(i))), 0, 1.0) for i in range(2)])
    rules = ("groups:\n- name: g\n  rules:\n"
             "  - {alert: Dup, expr: 'x + on(instance) y'}\n")
    eng = _engine(store, rules)
    rep = eng.evaluate(0.0)
    assert len(rep.errors) == 1 and "group 'g': alert 'Dup'" in rep.errors[0]
    store.close()


def test_group_limit_is_enforced_like_prometheus(tmp_path: Path) -> None:
    store = _store_with(tmp_path, [1, 1])
    store.append_points([("x", (("instance", "b"),), 0, 1.0)])
    rules = "groups:\n- name: g\n  limit: 1\n  rules:\n  - {alert: A, expr: x > 0}\n"
    eng = _engine(store, rules)
    rep = eng.evaluate(0.0)
    assert rep.errors == ("t.yaml: group 'g': alert 'A': exceeded limit of 1 with 2 alerts",)
    assert eng.alerts() == []
    store.close()


def test_state_documents_keep_their_json_form_and_a_corrupt_entry_is_skipped(
    tmp_path: Path,
) -> None:
    """Alert states are an Enum in the code; the store and `tuner alerts` see plain strings.
    A stored alert whose state or value is not one the engine writes is skipped on restore
    (and by `tuner alerts`), keeping the good ones; the document itself is left in place."""
    store = _store_with(tmp_path, [1] * 10)
    eng = _engine(store, ALERT_FOR_2M)
    for i in range(4):
        eng.evaluate(i * 60.0)
    key, _ts, body = store.documents(STATE_DOCUMENT_KIND)[0]
    alert = body["alerts"][0]
    assert type(alert["state"]) is str and alert["state"] == "firing"
    assert [type(a.state) for a in eng.alerts()] == [AlertStatus]
    as_json = json.loads(json.dumps([a.to_json() for a in read_alert_states(store)]))
    assert [(a["alertname"], a["state"], a["active_at"]) for a in as_json] == [
        ("High", "firing", 0.0)]
    good = dict(alert, labels={**alert["labels"], "instance": "b"})
    bad_state = dict(alert, labels={**alert["labels"], "instance": "c"}, state="exploded")
    bad_value = dict(alert, labels={**alert["labels"], "instance": "d"}, value="lots")
    store.put_document(STATE_DOCUMENT_KIND, key,
                       {**body, "alerts": [alert, good, bad_state, bad_value]})
    assert [a.labels["instance"] for a in read_alert_states(store)] == ["a", "b"]
    eng2 = _engine(store, ALERT_FOR_2M)
    assert eng2.restore() == 2
    assert sorted(a.labels["instance"] for a in eng2.alerts()) == ["a", "b"]
    assert len(store.documents(STATE_DOCUMENT_KIND)[0][2]["alerts"]) == 4
    store.close()


def test_rule_kinds_and_alert_states_compare_as_the_strings_they_were() -> None:
    rule = parse_rule_text("groups:\n- name: g\n  rules:\n  - {alert: A, expr: up == 0}\n"
                           "  - {record: 'r:x', expr: up}\n", "x.yaml")[0].rules
    assert [r.kind for r in rule] == [RuleKind.ALERT, RuleKind.RECORD] == ["alert", "record"]
    assert [str(s) for s in AlertStatus] == ["inactive", "pending", "firing", "resolved"]
    assert AlertStatus.INACTIVE.reported() is AlertStatus.RESOLVED
    assert AlertStatus.FIRING.reported() is AlertStatus.FIRING


# -- the shipped templates and `tuner rules render` ------------------------------------------------


def test_rule_templates_are_package_data_listed_in_pyproject() -> None:
    shipped = sorted(p.name for p in (REPO / "tuner" / "rules" / "templates").glob("*"))
    assert shipped == sorted(TEMPLATE_NAMES)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"tuner.rules" = ["templates/*.yaml"]' in pyproject
    placeholders = set()
    for name in TEMPLATE_NAMES:
        assert f"tuner/rules/templates/{name}" in read_template(name)  # the header names it
        placeholders |= set(re.findall(r"@[A-Z0-9_]+@", read_template(name)))
    assert {"@TTFT_LE@", "@BURN_14_4@", "@ERR_PCT@"} <= placeholders
    for name, text in render_rule_files(SLO()).items():  # every placeholder is filled
        assert re.findall(r"@[A-Z0-9_]+@", text) == [], name


def test_rules_render_writes_the_rule_files_and_leaves_equal_ones_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "rules"
    assert main(["rules", "render", "--out", str(out)]) == 0
    assert "3 file(s) written, 0 unchanged" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in out.glob("*.yaml")} == render_rule_files(SLO())
    (out / "mine.yaml").write_text("groups: []\n")  # files it does not render are left alone
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["rules", "render", "--out", str(out)]) == 0
    assert "0 file(s) written, 3 unchanged" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert sorted(p.name for p in out.iterdir()) == ["gpu.yaml", "mine.yaml", "slo.yaml",
                                                      "vllm.yaml"]


def test_rules_render_uses_the_configs_slo(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tuner.yaml"
    config.write_text("targets:\n  - {name: v, url: 'http://127.0.0.1:8000/metrics'}\n"
                      "slo: {ttft_p99_seconds: 0.6, error_rate: 0.02}\n")
    out = tmp_path / "rules"
    assert main(["rules", "render", "--config", str(config), "--out", str(out)]) == 0
    slo_text = (out / "slo.yaml").read_text()
    assert slo_text == render_rule_files(SLO(ttft_p99_seconds=0.6, error_rate=0.02))["slo.yaml"]
    assert 'le=~"0\\\\.5"' in slo_text and "at most 2%" in slo_text
    assert "# NOTE: slo.ttft_p99_seconds 0.6s is not a bucket bound" in slo_text
    # against the default rendering these files drift: --check says so
    assert main(["rules", "render", "--check", "--out", str(out)]) == 1
    assert f"out of date {out / 'slo.yaml'}" in capsys.readouterr().out


def test_rules_render_check_names_the_drifted_files_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rules"
    assert main(["rules", "render", "--check", "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert text.count("out of date") == 3 and "3 of 3 rule file(s) differ" in text
    assert not out.exists()
    assert main(["rules", "render", "--out", str(out)]) == 0
    assert main(["rules", "render", "--check", "--out", str(out)]) == 0
    assert "0 of 3 rule file(s) differ" in capsys.readouterr().out
    edited = (out / "gpu.yaml").read_text().replace("for: 15m", "for: 1m")
    (out / "gpu.yaml").write_text(edited)
    assert main(["rules", "render", "--check", "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert f"out of date {out / 'gpu.yaml'}" in text and "slo.yaml" not in text
    assert (out / "gpu.yaml").read_text() == edited  # --check changed nothing


def test_rules_render_does_not_replace_someone_elses_rule_file_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rules"
    out.mkdir()
    own = "# our own SLO rules\ngroups: []\n"
    (out / "slo.yaml").write_text(own)
    assert main(["rules", "render", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}: refusing to replace slo.yaml: not written by `tuner rules render`" in err
    assert "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["slo.yaml"]  # nothing was written
    assert (out / "slo.yaml").read_text() == own
    # files the renderer wrote (this version's header, or the older one) are replaced
    old = render_rule_files(SLO())["gpu.yaml"].replace(
        "Written by `tuner rules render` from tuner/rules/templates/gpu.yaml",
        "Rendered by tuner.rules.render_rule_files")
    (out / "gpu.yaml").write_text(old)
    assert main(["rules", "render", "--out", str(out), "--force"]) == 0
    assert {p.name: p.read_text() for p in out.glob("*.yaml")} == render_rule_files(SLO())
    (out / "gpu.yaml").write_text(old)
    assert main(["rules", "render", "--out", str(out)]) == 0
    assert (out / "gpu.yaml").read_text() == render_rule_files(SLO())["gpu.yaml"]
    for name in TEMPLATE_NAMES:
        assert GENERATED_MARKERS[0] in render_rule_files(SLO())[name].split("groups:")[0]


def test_rules_render_check_of_the_checkout_is_the_committed_drift_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --out, in a checkout, the command renders into the repository's rules/: the
    same writer (tuner.generated.sync_generated) that dashboards/generate.py runs."""
    assert main(["rules", "render", "--check"]) == 0
    assert f"{RULES}: 0 of 3 rule file(s) differ" in capsys.readouterr().out
    result = sync_generated(REPO, repo_files(), check=True)
    assert {f"rules/{n}" for n in TEMPLATE_NAMES} <= set(result.paths)
    assert result.stale == ()


@pytest.mark.parametrize("make_out", ["a file", "under a file"])
def test_rules_render_into_an_unwritable_place_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_out: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me\n")
    out = blocker if make_out == "a file" else blocker / "rules"
    assert main(["rules", "render", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tuner rules: error: ") and str(blocker) in err
    assert ("exists and is not a directory" in err if make_out == "a file"
            else f"cannot write {out}: Not a directory" in err), err
    assert blocker.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_rules_render_into_a_directory_that_refuses_files_fails_clearly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """/proc/self takes no new files, even from root (the tests run as root)."""
    assert main(["rules", "render", "--out", "/proc/self"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tuner rules: error: /proc/self: cannot write /proc/self/"), err
    assert not Path("/proc/self/gpu.yaml").exists()


def test_rules_render_outside_a_checkout_needs_out(tmp_path: Path) -> None:
    """An installed copy (the package without the repository around it) still finds its
    templates (package data) and asks for --out instead of guessing a directory."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "tuner", site / "tuner",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = [sys.executable, "-m", "tuner", "rules", "render"]
    proc = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "not running from a checkout" in proc.stderr and "give --out DIR" in proc.stderr
    proc = subprocess.run([*run, "--out", str(tmp_path / "out")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    written = {p.name: p.read_text() for p in (tmp_path / "out").glob("*.yaml")}
    assert written == render_rule_files(SLO())
