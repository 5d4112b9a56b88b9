"""Prometheus rule files: the records (``Rule``, ``RuleGroup``, ``RuleSet``), loading, checking.

``load_rule_files`` reads Prometheus rule files (``groups``, ``interval``, ``limit``,
``rules`` with ``record``/``alert``, ``expr``, ``for``, ``keep_firing_for``, ``labels``,
``annotations``) and refuses what Prometheus would refuse, plus expressions outside
``tuner.promql``'s subset and templates outside ``tuner.rules.templates``' subset, with a
``RuleError`` naming file, group and rule. ``load_configured_rules`` is the daemon's choice:
the configured files, or the shipped rules rendered with the config's SLO.
``check_rule_files`` is ``tuner rules check``: our validation, then ``promtool check rules``
when promtool is installed.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from tuner.config import SLO
from tuner.errors import QueryError, RuleError, TemplateError
from tuner.promql import check_expr
from tuner.rules.render import render_rule_files
from tuner.rules.templates import parse_template
from tuner.units import parse_duration

_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class RuleKind(StrEnum):
    """A recording rule (writes a series) or an alerting rule (runs the alert state machine)."""

    RECORD = "record"
    ALERT = "alert"



@dataclass(frozen=True)
class Rule:
    """One recording or alerting rule, validated."""

    kind: RuleKind
    name: str
    expr: str
    for_seconds: float = 0.0
    keep_firing_for: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    index: int = 0


@dataclass(frozen=True)
class RuleGroup:
    name: str
    source: str
    interval: float | None
    rules: tuple[Rule, ...]
    limit: int = 0


@dataclass(frozen=True)
class RuleSet:
    """Every group of a set of rule files, in file order then group order."""

    groups: tuple[RuleGroup, ...]

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r for g in self.groups for r in g.rules)

    @property
    def alert_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules if r.kind is RuleKind.ALERT)


_GROUP_KEYS = {"name", "interval", "rules", "limit"}
_RULE_KEYS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


def duration_field(value: Any, where: str, default: float = 0.0, numbers: bool = False) -> float:
    """A duration field of a rule or rule-test file, in seconds (``tuner.config.parse_duration``).

    ``None`` (absent) is ``default``. Rule files take only duration strings, as Prometheus
    does; ``numbers`` also accepts bare seconds (promtool test files, as tuner always has).
    Errors are RuleErrors starting with ``where`` (file, group, rule and key).
    """
    if value is None:
        return default
    if not numbers and not isinstance(value, str):
        raise RuleError(f"{where}: {value!r} is not a duration string (e.g. 5m, 1h30m)")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise RuleError(f"{where}: {exc}") from None


def parse_rule_text(text: str, source: str) -> tuple[RuleGroup, ...]:
    """Parse and validate one rule file's text; raises RuleError naming file, group and rule."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        return ()
    if not isinstance(data, Mapping) or set(data) - {"groups"}:
        extra = sorted(set(data) - {"groups"}) if isinstance(data, Mapping) else []
        raise RuleError(
            f"{source}: a rule file is a mapping with one key 'groups'"
            + (f"; unknown keys {extra}" if extra else "")
        )
    groups_raw = data.get("groups") or []
    if not isinstance(groups_raw, list):
        raise RuleError(f"{source}: groups: must be a list of groups")
    groups = []
    seen_groups: set[str] = set()
    for gi, g in enumerate(groups_raw):
        gwhere = f"{source}: groups[{gi}]"
        if not isinstance(g, Mapping):
            raise RuleError(f"{gwhere}: a group is a mapping with name, interval, rules")
        unknown = set(g) - _GROUP_KEYS
        if unknown:
            raise RuleError(
                f"{gwhere}: unknown keys {sorted(unknown)}; allowed: {sorted(_GROUP_KEYS)}"
            )
        gname = g.get("name")
        if not isinstance(gname, str) or not gname:
            raise RuleError(f"{gwhere}: group name is required")
        gwhere = f"{source}: group {gname!r}"
        if gname in seen_groups:
            raise RuleError(f"{gwhere}: duplicate group name in this file")
        seen_groups.add(gname)
        interval = duration_field(g.get("interval"), f"{gwhere}: interval") or None
        limit = g.get("limit", 0) or 0
        if not isinstance(limit, int) or limit < 0:
            raise RuleError(f"{gwhere}: limit: must be a non-negative integer")
        rules_raw = g.get("rules") or []
        if not isinstance(rules_raw, list):
            raise RuleError(f"{gwhere}: rules: must be a list")
        rules = []
        seen_alerts: dict[tuple[str, str], int] = {}
        for ri, r in enumerate(rules_raw):
            rules.append(_parse_rule(r, ri, gwhere))
            rule = rules[-1]
            if rule.kind is RuleKind.ALERT:
                key = (rule.name, json.dumps(dict(rule.labels), sort_keys=True))
                if key in seen_alerts:
                    raise RuleError(
                        f"{gwhere}: rule {ri} (alert {rule.name!r}): duplicate alert: rule "
                        f"{seen_alerts[key]} has the same name and labels in this group "
                        "(give each copy different labels, e.g. severity, or rename it)"
                    )
                seen_alerts[key] = ri
        groups.append(RuleGroup(gname, source, interval, tuple(rules), limit))
    return tuple(groups)


def _parse_rule(r: Any, ri: int, gwhere: str) -> Rule:
    where = f"{gwhere}: rule {ri}"
    if not isinstance(r, Mapping):
        raise RuleError(f"{where}: a rule is a mapping with record or alert, and expr")
    name = r.get("alert") if "alert" in r else r.get("record")
    if isinstance(name, str):
        where = f"{gwhere}: rule {ri} ({'alert' if 'alert' in r else 'record'} {name!r})"
    unknown = set(r) - _RULE_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}")
    if ("record" in r) == ("alert" in r):
        raise RuleError(f"{where}: exactly one of 'record' or 'alert' must be set")
    kind = RuleKind.ALERT if "alert" in r else RuleKind.RECORD
    if not isinstance(name, str) or not name:
        raise RuleError(f"{where}: {kind} name must be a non-empty string")
    if kind is RuleKind.RECORD and not _METRIC_NAME_RE.match(name):
        raise RuleError(f"{where}: invalid recording rule name {name!r} (must be a metric name)")
    if kind is RuleKind.ALERT and not _LABEL_NAME_RE.match(name):
        raise RuleError(f"{where}: invalid alert name {name!r} (letters, digits and _)")
    expr = r.get("expr")
    if isinstance(expr, int | float) and not isinstance(expr, bool):
        expr = str(expr)
    if not isinstance(expr, str) or not expr.strip():
        raise RuleError(f"{where}: expr: field is required (a PromQL expression)")
    try:
        check_expr(expr)
    except QueryError as exc:
        raise RuleError(f"{where}: expr: {exc}") from None
    if kind is RuleKind.RECORD:
        for k in ("for", "keep_firing_for", "annotations"):
            if k in r:
                raise RuleError(f"{where}: invalid field {k!r} in recording rule")
    for_s = duration_field(r.get("for"), f"{where}: for")
    keep = duration_field(r.get("keep_firing_for"), f"{where}: keep_firing_for")
    labels = _string_map(r.get("labels"), where, "labels")
    for k in labels:
        if not _LABEL_NAME_RE.match(k) or k == "__name__":
            raise RuleError(f"{where}: labels: invalid label name {k!r}")
    annotations = _string_map(r.get("annotations"), where, "annotations")
    if kind is RuleKind.ALERT:
        for section, mapping in (("labels", labels), ("annotations", annotations)):
            for k, v in mapping.items():
                try:
                    parse_template(v)
                except TemplateError as exc:
                    raise RuleError(f"{where}: {section}.{k}: template error: {exc}") from None
    return Rule(kind, name, expr, for_s, keep, labels, annotations, ri)


def _string_map(value: Any, where: str, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RuleError(f"{where}: {key}: must be a mapping of names to strings")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or v is None or isinstance(v, Mapping | list):
            raise RuleError(f"{where}: {key}.{k}: must be a string, got {v!r}")
        out[str(k)] = str(v)
    return out


def expand_rule_paths(patterns: Iterable[str | Path]) -> list[Path]:
    """Files named by paths or globs, in order, each once; a pattern matching nothing fails."""
    out: list[Path] = []
    for pat in patterns:
        text = str(pat)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        if not matches:
            raise RuleError(f"{text}: no rule files match this pattern")
        for m in matches:
            p = Path(m)
            if p not in out:
                out.append(p)
    return out


def load_rule_files(patterns: Iterable[str | Path]) -> RuleSet:
    """Load and validate rule files (paths or globs); raises RuleError on the first problem."""
    groups: list[RuleGroup] = []
    for p in expand_rule_paths(patterns):
        try:
            text = p.read_text()
        except OSError as exc:
            raise RuleError(f"{p}: cannot read rule file: {exc.strerror or exc}") from None
        groups.extend(parse_rule_text(text, str(p)))
    return RuleSet(tuple(groups))


def load_rule_texts(files: Mapping[str, str]) -> RuleSet:
    """Load rule files given as name -> text (e.g. ``render_rule_files(slo)``)."""
    groups: list[RuleGroup] = []
    for name, text in files.items():
        groups.extend(parse_rule_text(text, name))
    return RuleSet(tuple(groups))


def load_configured_rules(rule_files: Sequence[str], slo: SLO) -> RuleSet:
    """The daemon's rules: the configured files, or the shipped rules rendered with ``slo``."""
    if rule_files:
        return load_rule_files(rule_files)
    return load_rule_texts({f"<shipped>/{k}": v for k, v in render_rule_files(slo).items()})


@dataclass(frozen=True)
class CheckResult:
    """Outcome of checking one rule file: rule counts, or the error; promtool's verdict."""

    path: str
    ok: bool
    message: str
    promtool: str | None = None  # None: promtool not installed


def check_rule_files(paths: Sequence[str | Path], use_promtool: bool = True) -> list[CheckResult]:
    """Validate each file (our subset) and, when installed, with ``promtool check rules``."""
    promtool = shutil.which("promtool") if use_promtool else None
    out = []
    for p in expand_rule_paths(paths):
        try:
            groups = load_rule_files([p]).groups
            n = sum(len(g.rules) for g in groups)
            ok, msg = True, f"{n} rules in {len(groups)} groups"
        except RuleError as exc:
            ok, msg = False, str(exc)
        verdict = None
        if promtool:
            proc = subprocess.run([promtool, "check", "rules", str(p)], capture_output=True,
                                  text=True, timeout=60, check=False)
            verdict = (proc.stdout + proc.stderr).strip()
            if proc.returncode != 0 and ok:
                ok = False
                msg = f"promtool check rules failed: {verdict}"
        out.append(CheckResult(str(p), ok, msg, verdict))
    return out

