"""Prometheus's own PromQL tests (promql/testdata/*.test of v2.42) as promtool unit-test files.

The ``.test`` format (Prometheus's promql/test.go) is a script of commands separated by blank
lines: ``load <interval>`` followed by series lines (``name{l="v"} 1+2x3 _ stale``), ``eval
instant at <duration> <expr>`` (also ``eval_fail`` and ``eval_ordered``) followed by the
expected samples (``{l="v"} 3``, or a bare number for a scalar result) and ``clear``, which
empties the storage. ``#`` lines are comments (and, being blank once stripped, end a block).

``parse_test_file`` turns one file into ``Case`` records, one per ``eval``, each carrying the
series every ``load`` since the last ``clear`` defined. ``unit_test_yaml`` writes a case as a
promtool rule unit-test file (``rule_files: []``, one test group, one ``promql_expr_test``):
the series some selector of the expression reads, with the loads' common interval (with several intervals, the greatest common divisor,
and every value spelled out on that grid), the expected samples as ``exp_samples`` (a scalar as
``labels: '{}'``). promtool loads samples only up to a test's last ``eval_time`` while
Prometheus's runner loads them all (``@`` and negative offsets read later samples), so a case
evaluated before its last sample gets a second check, ``vector(1)`` at that sample's time.
``eval_fail`` cases are written too (their ``kind`` says so): promtool reports them as
failures, which is what they should do; ``eval_ordered`` loses its ordering (promtool compares
sorted samples).

The test data is Prometheus's code: it is fetched at install time from Debian's source package
into ``.cache/prometheus-src`` (``deploy/local/install.sh``) and never committed.

Run ``python -m tests.support.promql_testdata OUT_DIR`` to write every case into OUT_DIR.
"""

from __future__ import annotations

import math
import re
import struct
import sys
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import yaml

from tuner.errors import QueryError
from tuner.promql import parse_expr, selectors
from tuner.rules.promtool_tests import expand_values, parse_series
from tuner.store import STALE_NAN
from tuner.units import format_duration, parse_duration_ms

REPO = Path(__file__).resolve().parents[2]
TESTDATA_DIR = REPO / ".cache" / "prometheus-src" / "promql" / "testdata"

_LOAD_RE = re.compile(r"^load\s+(.+?)$")
_EVAL_RE = re.compile(r"^eval(?:_(fail|ordered))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")


class CaseKind(StrEnum):
    """Which eval command a case came from."""

    INSTANT = "eval"
    FAIL = "eval_fail"
    ORDERED = "eval_ordered"


@dataclass(frozen=True)
class LoadedSeries:
    """One series line of a ``load``: its selector text, its values text, the load interval."""

    series: str
    values: str
    interval_ms: int


@dataclass(frozen=True)
class Case:
    """One ``eval`` of a ``.test`` file with everything loaded before it."""

    source: str  # "functions.test:123"
    kind: CaseKind
    expr: str
    eval_time_ms: int
    expected: tuple[tuple[str, float], ...]  # (labels text, value); "{}" for a scalar
    series: tuple[LoadedSeries, ...]

    @property
    def name(self) -> str:
        """A file-name-safe id: ``functions_123``."""
        stem, line = self.source.rsplit(":", 1)
        return f"{Path(stem).stem}_{line}"


def _split_series_line(line: str) -> tuple[str, str]:
    """``name{a="b"} 1 2 3`` -> (``name{a="b"}``, ``1 2 3``)."""
    if "{" in line:
        end = line.index("}") + 1
        return line[:end].strip(), line[end:].strip()
    parts = line.split(None, 1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _parse_number(text: str) -> float | None:
    t = text.strip()
    try:
        if t.lower().startswith(("0x", "-0x", "+0x")):
            return float(int(t, 16))
        return float(t.replace("Inf", "inf").replace("NaN", "nan"))
    except ValueError:
        return None


def parse_test_file(path: Path) -> list[Case]:
    """Every eval of one ``.test`` file as a Case; ValueError naming the line when malformed."""
    raw = path.read_text().split("\n")
    lines = ["" if ln.strip().startswith("#") else ln.strip() for ln in raw]
    cases: list[Case] = []
    loaded: list[LoadedSeries] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        word = line.split(None, 1)[0].lower()
        where = f"{path.name}:{i + 1}"
        if word == "clear":
            loaded = []
            i += 1
        elif word == "load":
            m = _LOAD_RE.match(line)
            if not m:
                raise ValueError(f"{where}: invalid load command {line!r}")
            interval = parse_duration_ms(m.group(1))
            i += 1
            while i < len(lines) and lines[i]:
                name, values = _split_series_line(lines[i])
                try:
                    parse_series(name)
                    expand_values(values)
                except ValueError as exc:
                    raise ValueError(f"{path.name}:{i + 1}: {exc}") from None
                loaded.append(LoadedSeries(name, values, interval))
                i += 1
        elif word.startswith("eval"):
            m = _EVAL_RE.match(line)
            if not m:
                raise ValueError(f"{where}: invalid eval command {line!r}")
            kind = {None: CaseKind.INSTANT, "fail": CaseKind.FAIL,
                    "ordered": CaseKind.ORDERED}[m.group(1)]
            at = parse_duration_ms(m.group(2)) if m.group(2) else 0
            expected: list[tuple[str, float]] = []
            i += 1
            while i < len(lines) and lines[i]:
                num = _parse_number(lines[i])
                if num is not None:
                    expected.append(("{}", num))
                    i += 1
                    break
                labels, values = _split_series_line(lines[i])
                vals = expand_values(values)
                if len(vals) != 1 or vals[0] is None:
                    raise ValueError(f"{path.name}:{i + 1}: one value expected, got {values!r}")
                expected.append((labels, vals[0]))
                i += 1
            cases.append(Case(where, kind, m.group(3), at, tuple(expected), tuple(loaded)))
        else:
            raise ValueError(f"{where}: invalid command {line!r}")
    return cases


def _go_float(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return repr(v)


def _spell_on_grid(s: LoadedSeries, grid_ms: int) -> str:
    """The series' values on a finer grid: each value, then ``_`` up to the next one."""
    gap = s.interval_ms // grid_ms
    out: list[str] = []
    for v in expand_values(s.values):
        if v is None:
            out.append("_")
        elif _is_stale(v):
            out.append("stale")
        else:
            out.append(_go_float(v))
        if gap > 1:
            out.append(f"_x{gap - 1}")
    return " ".join(out)


def _is_stale(v: float) -> bool:
    return struct.pack("<d", v) == struct.pack("<d", STALE_NAN)


def _series_read(case: Case) -> tuple[LoadedSeries, ...]:
    """The loaded series some selector of the case's expression matches (all if unparsable).

    Series no selector matches cannot change the result; leaving them out keeps one load
    interval in most blocks, so no series has to be spelled out on a finer grid.
    """
    try:
        sels = selectors(parse_expr(case.expr))
    except QueryError:
        return case.series
    matchers = [getattr(s, "selector", s).matchers for s in sels]
    out = []
    for s in case.series:
        name, labels = parse_series(s.series)
        labels["__name__"] = name
        if any(all(m.matches(labels.get(m.name, "")) for m in ms) for ms in matchers):
            out.append(s)
    return tuple(out)


def unit_test_yaml(case: Case) -> str:
    """The case as a promtool rule unit-test file."""
    case = replace(case, series=_series_read(case))
    intervals = {s.interval_ms for s in case.series}
    grid = math.gcd(*intervals) if intervals else 60_000
    if len(intervals) <= 1:
        series = [{"series": s.series, "values": s.values} for s in case.series]
    else:
        series = [{"series": s.series, "values": _spell_on_grid(s, grid)} for s in case.series]
    exprs: list[dict[str, object]] = [{
        "expr": case.expr,
        "eval_time": format_duration(case.eval_time_ms / 1000) or "0s",
        "exp_samples": [{"labels": lb, "value": v} for lb, v in case.expected],
    }]
    last_ms = max((s.interval_ms * (len(expand_values(s.values)) - 1) for s in case.series),
                  default=0)
    if last_ms > case.eval_time_ms:
        # promtool loads samples only up to its last eval_time; Prometheus's runner loads them
        # all (``@`` and negative offsets read later ones): a check at the last sample makes
        # promtool load every sample too
        exprs.append({"expr": "vector(1)", "eval_time": format_duration(last_ms / 1000),
                      "exp_samples": [{"labels": "{}", "value": 1}]})
    test: dict[str, object] = {
        "name": f"{case.source} {case.kind.value}",
        "interval": format_duration(grid / 1000) or "0s",
        "input_series": series,
        "promql_expr_test": exprs,
    }
    doc = {"rule_files": [], "evaluation_interval": "1m", "tests": [test]}
    return yaml.safe_dump(doc, sort_keys=False, width=10_000)


def all_cases(testdata: Path = TESTDATA_DIR) -> list[Case]:
    """Every case of every ``.test`` file in ``testdata``; fails if the directory is missing."""
    files = sorted(testdata.glob("*.test"))
    if not files:
        raise FileNotFoundError(
            f"no .test files in {testdata}: run deploy/local/install.sh, which fetches "
            "Prometheus's source package into .cache/prometheus-src")
    out: list[Case] = []
    for f in files:
        out.extend(parse_test_file(f))
    return out


def write_cases(cases: list[Case], out_dir: Path) -> dict[str, Case]:
    """Write each case as ``<name>.yaml`` in ``out_dir``; the files' paths -> their cases."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Case] = {}
    for case in cases:
        p = out_dir / f"{case.name}.yaml"
        p.write_text(unit_test_yaml(case))
        written[str(p)] = case
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/promql-testdata")
    n = len(write_cases(all_cases(), target))
    print(f"wrote {n} promtool unit-test files into {target}")
