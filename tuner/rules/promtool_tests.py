"""Rule unit tests in promtool's format (``promtool test rules``), run with tuner's evaluator.

``run_test_files(paths)`` runs each test file: ``rule_files`` (relative to the test file),
``evaluation_interval``, ``group_eval_order`` and ``tests``, each test with
``input_series`` in promtool's expanding notation (``expand_values``: ``1+2x3``, ``_x3``,
``stale``), ``alert_rule_test`` (firing alerts with labels and annotations at
``eval_time``) and ``promql_expr_test`` (samples at ``eval_time``). Every test gets a fresh
SQLite store in a temporary directory and a ``RuleEngine`` stepping at the evaluation
interval, so the same rules, templates and state machine the daemon runs are what is tested.
Failures are reported in promtool's wording, one ``UnitTestResult`` per file.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import QueryError, RuleError, TunerError
from tuner.promql import VectorSelector, parse_expr
from tuner.rules.engine import LabelPairs, RuleEngine, label_pairs, local_engine, vector_of
from tuner.rules.files import RuleSet, duration_field, expand_rule_paths, load_rule_files
from tuner.rules.templates import go_float
from tuner.store import STALE_NAN, Store
from tuner.units import format_duration

_TEST_FILE_KEYS = {"rule_files", "evaluation_interval", "group_eval_order", "tests"}
_TEST_KEYS = {"name", "interval", "input_series", "alert_rule_test", "promql_expr_test",
              "external_labels", "external_url"}
_NUM = r"[-+]?(?:Inf|inf|NaN|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_EXPAND_RE = re.compile(rf"^(?P<a>{_NUM})(?:(?P<op>[-+])(?P<b>{_NUM}))?x(?P<n>\d+)$")
_MISSING = None
_EMPTY_SET_RE = re.compile(r"\s*\{\s*\}\s*")


@dataclass(frozen=True)
class UnitTestResult:
    """The outcome of one unit-test file: how many test groups ran and what failed."""

    path: str
    tests: int
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures


def expand_values(text: str) -> list[float | None]:
    """promtool's expanding notation: ``1+2x3`` -> 1 3 5 7; ``_x3`` -> 3 missing; ``stale``."""
    out: list[float | None] = []
    for item in str(text).split():
        if item == "_":
            out.append(_MISSING)
            continue
        if item == "stale":
            out.append(STALE_NAN)
            continue
        m = re.fullmatch(r"_x(\d+)", item)
        if m:
            out.extend([_MISSING] * int(m.group(1)))
            continue
        m = _EXPAND_RE.match(item)
        if m:
            a = _parse_num(m.group("a"))
            b = _parse_num(m.group("b")) if m.group("b") else 0.0
            if m.group("op") == "-":
                b = -b
            for _ in range(int(m.group("n")) + 1):  # repeated addition, as promtool's parser
                out.append(a)
                a += b
            continue
        if re.fullmatch(_NUM, item):
            out.append(_parse_num(item))
            continue
        raise ValueError(
            f"{item!r} is not a value ('1', '1+2x3', '5x10', '_', '_x3' or 'stale')"
        )
    return out


def _parse_num(text: str) -> float:
    return float(text.replace("Inf", "inf").replace("NaN", "nan"))


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    """``name{a="b"}`` (or ``{__name__="name", ...}``) -> (name, labels); ``{}`` -> ("", {}).

    ``{}`` (no name, no labels) is what an aggregation without ``by`` returns, so promtool
    accepts it as an expected sample's labels.
    """
    if _EMPTY_SET_RE.fullmatch(text):
        return "", {}
    try:
        e = parse_expr(text)
    except QueryError as exc:
        raise ValueError(f"{text!r} is not a series: {exc}") from None
    if not isinstance(e, VectorSelector) or e.offset_ms:
        raise ValueError(f"{text!r} is not a series (metric{{label=\"value\", ...}})")
    labels: dict[str, str] = {}
    name = e.name or ""
    for m in e.matchers:
        if m.op != "=":
            raise ValueError(f"{text!r}: only '=' label matchers describe a series")
        if m.name == "__name__":
            name = m.value
        else:
            labels[m.name] = m.value
    return name, labels


def run_test_files(paths: Sequence[str | Path]) -> list[UnitTestResult]:
    """Run promtool-format rule unit tests with tuner's evaluator, one result per file."""
    out = []
    for p in expand_rule_paths(paths):
        try:
            out.append(_run_test_file(Path(p)))
        except RuleError as exc:
            out.append(UnitTestResult(str(p), 0, (str(exc),)))
    return out


def _req(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise RuleError(f"{where}: {message}")


def _entries(parent: Mapping[str, Any], key: str, where: str, keys: set[str],
             required: str | None, message: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The mappings listed under ``parent[key]``, each with its place for error messages.

    Raises RuleError (``message``) at an entry that is not a mapping of ``keys`` only, or that
    lacks the ``required`` key.
    """
    for i, entry in enumerate(parent.get(key) or []):
        at = f"{where}: {key}[{i}]"
        _req(isinstance(entry, Mapping) and set(entry) <= keys
             and (required is None or required in entry), at, message)
        yield at, entry


def _run_test_file(path: Path) -> UnitTestResult:
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RuleError(f"{where}: cannot read test file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"{where}: not valid YAML: {exc}") from None
    _req(isinstance(data, Mapping), where,
         "a rule unit-test file is a mapping with rule_files, evaluation_interval and tests")
    unknown = set(data) - _TEST_FILE_KEYS
    _req(not unknown, where,
         f"unknown keys {sorted(unknown)}; a promtool test file has {sorted(_TEST_FILE_KEYS)}")
    rule_files = data.get("rule_files")
    if rule_files is None:  # promtool: a file of promql_expr_test needs no rules
        rule_files = []
    _req(isinstance(rule_files, list) and all(isinstance(f, str) for f in rule_files), where,
         "rule_files: a list of rule file paths (relative to the test file), or []")
    tests = data.get("tests")
    _req(isinstance(tests, list) and bool(tests), where, "tests: a list of test groups is required")
    eval_interval = duration_field(data.get("evaluation_interval"), f"{where}: evaluation_interval",
                                   60.0, numbers=True)
    _req(eval_interval > 0, where, "evaluation_interval must be greater than 0s")
    rule_paths = [str(f) if Path(str(f)).is_absolute() else str(path.parent / str(f))
                  for f in rule_files]
    try:
        ruleset = load_rule_files(rule_paths) if rule_paths else RuleSet(())
    except RuleError as exc:
        raise RuleError(f"{where}: rule_files: {exc}") from None
    order = data.get("group_eval_order")
    if order:
        names = {g.name: g for g in ruleset.groups}
        missing = [n for n in order if n not in names]
        _req(not missing, where, f"group_eval_order: unknown groups {missing}")
        rest = [g for g in ruleset.groups if g.name not in order]
        ruleset = RuleSet(tuple(names[n] for n in order) + tuple(rest))
    failures: list[str] = []
    for ti, test in enumerate(tests):
        tname = test.get("name") if isinstance(test, Mapping) else None
        twhere = f"{where}: tests[{ti}]" + (f" ({tname})" if tname else "")
        failures.extend(_run_one_test(test, twhere, ruleset, eval_interval))
    return UnitTestResult(where, len(tests), tuple(failures))


def _eval_time(test: Mapping[str, Any], where: str) -> float:
    return duration_field(test.get("eval_time"), f"{where}: eval_time", 0.0, numbers=True)


@dataclass(frozen=True)
class _AlertTest:
    eval_time: float
    alertname: str
    expected: tuple[tuple[LabelPairs, LabelPairs], ...]


def _run_one_test(test: Any, where: str, ruleset: RuleSet, eval_interval: float) -> list[str]:
    _req(isinstance(test, Mapping), where, "a test group is a mapping")
    unknown = set(test) - _TEST_KEYS
    _req(not unknown, where, f"unknown keys {sorted(unknown)}; allowed: {sorted(_TEST_KEYS)}")
    interval = duration_field(test.get("interval"), f"{where}: interval", eval_interval,
                              numbers=True)
    _req(interval > 0, where, "interval must be greater than 0s")
    series_points: list[tuple[str, LabelPairs, int, float]] = []
    for swhere, s in _entries(
            test, "input_series", where, {"series", "values"}, "series",
            "each input series is {series: 'name{label=\"value\"}', values: '0+1x10'}"):
        try:
            name, labels = parse_series(str(s["series"]))
            values = expand_values(str(s.get("values", "")))
        except ValueError as exc:
            raise RuleError(f"{swhere}: {exc}") from None
        key = label_pairs(labels)
        step_ms = round(interval * 1000)
        for i, v in enumerate(values):
            if v is not None:
                series_points.append((name, key, i * step_ms, v))
    alert_tests: list[_AlertTest] = []
    for awhere, t in _entries(test, "alert_rule_test", where,
                              {"eval_time", "alertname", "exp_alerts"}, "alertname",
                              "needs eval_time, alertname and optional exp_alerts"):
        exp = []
        for _, e in _entries(t, "exp_alerts", awhere, {"exp_labels", "exp_annotations"}, None,
                             "each expected alert has exp_labels and exp_annotations"):
            lb = {str(k): str(v) for k, v in (e.get("exp_labels") or {}).items()}
            lb["alertname"] = str(t["alertname"])
            an = {str(k): str(v) for k, v in (e.get("exp_annotations") or {}).items()}
            exp.append((label_pairs(lb), label_pairs(an)))
        alert_tests.append(_AlertTest(_eval_time(t, awhere),
                                      str(t["alertname"]), tuple(sorted(exp))))
    expr_tests = []
    for pwhere, t in _entries(test, "promql_expr_test", where, {"expr", "eval_time", "exp_samples"},
                              "expr", "needs expr, eval_time and exp_samples"):
        exp_s = []
        for xwhere, x in _entries(t, "exp_samples", pwhere, {"labels", "value"}, None,
                                  "each expected sample has labels and value"):
            try:
                nm, lb = parse_series(str(x.get("labels", "{}")))
            except ValueError as exc:
                raise RuleError(f"{xwhere}: {exc}") from None
            if nm:
                lb["__name__"] = nm
            exp_s.append((label_pairs(lb), _parse_num(str(x.get("value", "0")))))
        expr_tests.append((pwhere, str(t["expr"]),
                           _eval_time(t, pwhere), sorted(exp_s)))

    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tuner-rules-test-") as tmp:
        store = Store(Path(tmp) / "test.db", retention=10 * 365 * 86400.0)
        try:
            if series_points:
                store.append_points(series_points)
            engine = RuleEngine(
                ruleset, local_engine(store, subquery_step=eval_interval), writer=store,
                default_interval=eval_interval,
                external_labels={
                    str(k): str(v) for k, v in (test.get("external_labels") or {}).items()
                },
                external_url=str(test.get("external_url") or ""),
            )
            max_t = max([a.eval_time for a in alert_tests] + [e[2] for e in expr_tests] + [0.0])
            pending = sorted(alert_tests, key=lambda a: a.eval_time)
            steps = math.floor(max_t / eval_interval + 1e-9)
            for step in range(steps + 1):
                ts = step * eval_interval
                report = engine.evaluate(ts, force=True)
                for err in report.errors:
                    at_s = format_duration(ts) or "0s"
                    failures.append(f"{where}: rule evaluation at {at_s}: {err}")
                while pending and pending[0].eval_time < ts + eval_interval - 1e-9:
                    at = pending.pop(0)
                    got = tuple(sorted((label_pairs(a.labels), label_pairs(a.annotations))
                                       for a in engine.firing(at.alertname)))
                    if got != at.expected:
                        failures.append(
                            f"{where}: alertname: {at.alertname}, time: "
                            f"{format_duration(at.eval_time)}\n"
                            f"        exp: {_fmt_alerts(at.expected)}\n"
                            f"        got: {_fmt_alerts(got)}"
                        )
            query = local_engine(store, subquery_step=eval_interval)
            for pwhere, expr, at_t, exp_s in expr_tests:
                try:
                    got_s = sorted((label_pairs(lb), v) for lb, v in
                                   vector_of(query.instant(expr, at_t), pwhere))
                except TunerError as exc:
                    failures.append(f"{pwhere}: expr {expr!r}: {exc}")
                    continue
                if not _samples_equal(exp_s, got_s):
                    failures.append(
                        f"{pwhere}: expr: {expr!r}, time: {format_duration(at_t)}\n"
                        f"        exp: {_fmt_samples(exp_s)}\n        got: {_fmt_samples(got_s)}"
                    )
        finally:
            store.close()
    return failures


def _samples_equal(a: Sequence[tuple[LabelPairs, float]], b: Sequence[tuple[LabelPairs, float]]
                   ) -> bool:
    if len(a) != len(b):
        return False
    for (la, va), (lb, vb) in zip(a, b, strict=True):
        if la != lb:
            return False
        if math.isnan(va) or math.isnan(vb):
            if not (math.isnan(va) and math.isnan(vb)):
                return False
        elif not math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-300):
            return False
    return True


def _fmt_labels(pairs: LabelPairs) -> str:
    d = dict(pairs)
    name = d.pop("__name__", "")
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(d.items())) + "}"


def _fmt_alerts(alerts: Sequence[tuple[LabelPairs, LabelPairs]]) -> str:
    if not alerts:
        return "[]"
    return "[" + ", ".join(f"labels: {_fmt_labels(lb)} annotations: {_fmt_labels(an)}"
                           for lb, an in alerts) + "]"


def _fmt_samples(samples: Sequence[tuple[LabelPairs, float]]) -> str:
    return "[" + ", ".join(f"{_fmt_labels(lb)} {go_float(v)}" for lb, v in samples) + "]"
