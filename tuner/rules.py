"""Prometheus rule files: render, load, validate, evaluate, and unit-test them.

* **Render.** ``render_rule_files(slo)`` fills the shipped rule templates (``_TEMPLATES`` at
  the end of this module) with the config's SLO thresholds, snapped to vLLM histogram
  bucket bounds; ``rules/*.yaml`` in the repository is the rendering with the default SLO.
* **Load and validate.** ``load_rule_files`` reads Prometheus rule files (``groups``,
  ``interval``, ``rules`` with ``record``/``alert``, ``expr``, ``for``, ``keep_firing_for``,
  ``labels``, ``annotations``) and refuses what Prometheus would refuse, plus expressions
  outside ``tuner.promql``'s subset, with messages naming file, group and rule.
* **Evaluate.** ``RuleEngine`` evaluates groups through any ``InstantQuerier`` (the local
  ``tuner.promql.Engine`` or a Prometheus-backed source). Recording rules write their
  results back (so later rules see them, as in Prometheus); alerting rules run
  Prometheus's state machine (inactive → pending → firing → resolved, ``for``,
  ``keep_firing_for``, resolved alerts kept 15m, ``ALERTS``/``ALERTS_FOR_STATE``) and expand
  a Go-template subset in labels and annotations. State persists as store documents so
  ``tuner alerts`` and a restarted daemon see the same ``activeAt``.
* **Unit tests.** ``run_test_files`` runs ``promtool test rules`` files (``input_series`` in
  expanding notation, ``alert_rule_test``, ``promql_expr_test``) with this evaluator.

Go templates: ``{{ $labels.x }}``, ``{{ $value }}``, ``{{ $externalLabels.x }}``,
``{{ $externalURL }}`` (and the ``.Labels``/``.Value`` forms), pipelines into ``humanize``,
``humanize1024``, ``humanizePercentage``, ``humanizeDuration``, ``humanizeTimestamp``,
``printf``, ``toUpper``, ``toLower``, ``title``; ``{{-``/``-}}`` trimming and comments.
Control structures (``if``, ``range``, ``with``, ``define``) are refused at load time.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import yaml

from tuner.config import (
    ITL_BUCKETS,
    REQUEST_BUCKETS,
    SLO,
    TTFT_BUCKETS,
    format_duration,
    parse_duration,
    snap_to_bucket,
)
from tuner.errors import QueryError, TunerError
from tuner.promql import Engine, QueryResult, VectorSelector, check_expr, parse_expr
from tuner.signals import le_regex
from tuner.store import STALE_NAN, Store

log = logging.getLogger(__name__)

RESOLVED_RETENTION = 15 * 60.0  # Prometheus keeps resolved alerts this long (and resends them)
DEFAULT_RESEND_DELAY = 60.0  # Prometheus's --rules.alert.resend-delay
STATE_DOCUMENT_KIND = "alert_rule_state"
_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class RuleError(TunerError):
    """A rule file, a rule unit-test file or a template is invalid; names file, group and rule."""

    exit_code = 2


class TemplateError(RuleError):
    """A Go template in a rule's labels or annotations cannot be parsed or expanded."""


# =============================================================================================
# Go-template subset
# =============================================================================================


def go_float(v: float) -> str:
    """Format a float64 as Go's ``fmt`` does for ``%v`` (strconv 'g', shortest, eprec 6)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    sign, digits, exponent = Decimal(repr(v)).normalize().as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    assert isinstance(exponent, int)
    nd = len(ds)
    dp = len(digits) + exponent  # position of the decimal point relative to the digits
    neg = "-" if sign else ""
    exp = dp - 1
    if exp < -4 or exp >= 6:  # strconv 'g' with shortest precision decides with eprec 6
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{neg}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= nd:
        return f"{neg}{ds}{'0' * (dp - nd)}"
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def _go_g4(v: float) -> str:
    """Go's ``%.4g`` (C-like, but +Inf/-Inf/NaN spelled the Go way)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.4g}"


def _to_float(v: Any, fn: str) -> float:
    if isinstance(v, bool):
        raise TemplateError(f"{fn}: cannot convert {v!r} to a number")
    if isinstance(v, int | float):
        return float(v)
    try:
        return float(str(v).replace("+Inf", "inf").replace("-Inf", "-inf"))
    except ValueError:
        raise TemplateError(f"{fn}: cannot convert {v!r} to a number") from None


def humanize(v: Any) -> str:
    x = _to_float(v, "humanize")
    if x == 0 or math.isnan(x) or math.isinf(x):
        return _go_g4(x)
    prefix = ""
    if abs(x) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(x) < 1000:
                break
            prefix, x = p, x / 1000
        return _go_g4(x) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(x) >= 1:
            break
        prefix, x = p, x * 1000
    return _go_g4(x) + prefix


def humanize1024(v: Any) -> str:
    x = _to_float(v, "humanize1024")
    if abs(x) <= 1 or math.isnan(x) or math.isinf(x):
        return _go_g4(x)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(x) < 1024:
            break
        prefix, x = p, x / 1024
    return _go_g4(x) + prefix


def humanize_percentage(v: Any) -> str:
    return _go_g4(_to_float(v, "humanizePercentage") * 100) + "%"


def humanize_duration(v: Any) -> str:
    x = _to_float(v, "humanizeDuration")
    if math.isnan(x) or math.isinf(x):
        return _go_g4(x)
    if x == 0:
        return _go_g4(x) + "s"
    if abs(x) >= 1:
        sign = "-" if x < 0 else ""
        x = abs(x)
        d = int(x)
        seconds, minutes, hours, days = d % 60, (d // 60) % 60, (d // 3600) % 24, d // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_go_g4(x)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(x) >= 1:
            break
        prefix, x = p, x * 1000
    return f"{_go_g4(x)}{prefix}s"


def humanize_timestamp(v: Any) -> str:
    import datetime as _dt

    x = _to_float(v, "humanizeTimestamp")
    if math.isnan(x) or math.isinf(x):
        return _go_g4(x)
    t = _dt.datetime.fromtimestamp(x, tz=_dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0").rstrip(".") + " +0000 UTC"


_VERB_RE = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def go_printf(fmt: str, *args: Any) -> str:
    """Go's ``fmt.Sprintf`` for the verbs templates use (%v %s %d %f %e %g %q %x %%)."""
    out: list[str] = []
    pos = 0
    argi = 0
    for m in _VERB_RE.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args[argi]
        argi += 1
        spec = flags + (width or "") + (f".{prec}" if prec is not None else "")
        if verb in "feEgG" or verb == "F":
            if not isinstance(a, int | float) or isinstance(a, bool):
                out.append(f"%!{verb}({type(a).__name__}={a})")
                continue
            x = float(a)
            if math.isnan(x) or math.isinf(x):
                s = "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")
                out.append(s.rjust(int(width)) if width else s)
            else:
                out.append(("%" + spec + verb) % x)
        elif verb == "d":
            if isinstance(a, int) and not isinstance(a, bool):
                out.append(("%" + spec + "d") % a)
            else:
                tname = "float64" if isinstance(a, float) else type(a).__name__
                out.append(f"%!d({tname}={_print(a)})")
        elif verb in "sv":
            out.append(("%" + flags + (width or "") + "s") % _print(a))
        elif verb == "q":
            out.append(json.dumps(_print(a)))
        elif verb in "xX" and isinstance(a, int):
            out.append(("%" + spec + verb) % a)
        else:
            out.append(f"%!{verb}({_print(a)})")
    out.append(fmt[pos:])
    if argi < len(args):
        out.append("%!(EXTRA " + ", ".join(_print(a) for a in args[argi:]) + ")")
    return "".join(out)


def _title(v: Any) -> str:
    return re.sub(r"(^|\s)(\S)", lambda m: m.group(1) + m.group(2).upper(), _print(v))


_FUNCS: dict[str, Callable[..., str]] = {
    "humanize": humanize,
    "humanize1024": humanize1024,
    "humanizePercentage": humanize_percentage,
    "humanizeDuration": humanize_duration,
    "humanizeTimestamp": humanize_timestamp,
    "printf": go_printf,
    "toUpper": lambda v: _print(v).upper(),
    "toLower": lambda v: _print(v).lower(),
    "title": _title,
}
_FUNC_ARITY = {"printf": -1}
_CONTROL = {"if", "else", "end", "range", "with", "define", "template", "block", "break",
            "continue"}


def _print(v: Any) -> str:
    """Render a value as Go's text/template prints it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{k}:{v[k]}" for k in sorted(v)) + "]"
    return str(v)


@dataclass(frozen=True)
class _Arg:
    kind: str  # "var" | "lit" | "func"
    value: Any  # var: tuple path; lit: value; func: name


@dataclass(frozen=True)
class _Action:
    commands: tuple[tuple[_Arg, ...], ...]


@dataclass(frozen=True)
class GoTemplate:
    """A parsed template: a sequence of literal text and actions."""

    source: str
    nodes: tuple[str | _Action, ...]

    def expand(self, data: Mapping[str, Any]) -> str:
        """Expand with ``data`` keys ``labels``, ``value``, ``externalLabels``, ``externalURL``."""
        out: list[str] = []
        for node in self.nodes:
            if isinstance(node, str):
                out.append(node)
            else:
                out.append(_print(_run_pipeline(node, data)))
        return "".join(out)


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*") |
        (?P<raw>`[^`]*`) |
        (?P<num>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+)) |
        (?P<var>\$[a-zA-Z0-9_]*(?:\.[a-zA-Z0-9_]+)*) |
        (?P<field>(?:\.[a-zA-Z0-9_]+)+|\.) |
        (?P<pipe>\|) |
        (?P<assign>:?=) |
        (?P<paren>[()]) |
        (?P<ident>[a-zA-Z_][a-zA-Z0-9_]*)
    )""",
    re.VERBOSE,
)
_VARS = {"$labels": "labels", "$value": "value", "$externalLabels": "externalLabels",
         "$externalURL": "externalURL", "$": "."}
_FIELDS = {"Labels": "labels", "Value": "value", "ExternalLabels": "externalLabels",
           "ExternalURL": "externalURL"}


def parse_template(text: str) -> GoTemplate:
    """Parse the Go-template subset; raises TemplateError naming what is unsupported/invalid."""
    nodes: list[str | _Action] = []
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            nodes.append(text[pos:])
            break
        literal = text[pos:start]
        inner_start = start + 2
        if text.startswith("-", inner_start) and text[inner_start + 1 : inner_start + 2] in " \t\n":
            literal = literal.rstrip(" \t\r\n")
            inner_start += 1
        end = text.find("}}", inner_start)
        if end < 0:
            raise TemplateError(f"unclosed action: '{{{{' at offset {start} has no '}}}}'")
        inner = text[inner_start:end]
        pos = end + 2
        if inner.endswith("-") and inner[-2:-1] in (" ", "\t", "\n"):
            inner = inner[:-1]
            m = re.match(r"[ \t\r\n]*", text[pos:])
            pos += m.end() if m else 0
        nodes.append(literal)
        stripped = inner.strip()
        if stripped.startswith("/*"):
            if not stripped.endswith("*/"):
                raise TemplateError(f"unclosed comment at offset {start}")
            continue
        nodes.append(_parse_action(stripped, start))
    return GoTemplate(text, tuple(n for n in nodes if n != ""))


def _parse_action(inner: str, offset: int) -> _Action:
    if not inner:
        raise TemplateError(f"missing value for command at offset {offset}")
    toks: list[tuple[str, str]] = []
    p = 0
    while p < len(inner):
        m = _TOKEN_RE.match(inner, p)
        if m is None or m.end() == p:
            if inner[p:].strip() == "":
                break
            bad = inner[p:].strip()[:20]
            raise TemplateError(f"unexpected {bad!r} in action {{{{ {inner} }}}}")
        p = m.end()
        kind = m.lastgroup or ""
        toks.append((kind, m.group(kind)))
    if toks and toks[0] == ("ident", toks[0][1]) and toks[0][1] in _CONTROL:
        raise TemplateError(
            f"unsupported template action {toks[0][1]!r} in {{{{ {inner} }}}}; "
            "tuner supports values, $labels/$value/$externalLabels and pipelines into functions"
        )
    if any(k == "assign" for k, _ in toks):
        raise TemplateError(f"variable assignment is not supported in {{{{ {inner} }}}}")
    if any(k == "paren" for k, _ in toks):
        raise TemplateError(f"parenthesized pipelines are not supported in {{{{ {inner} }}}}")
    commands: list[tuple[_Arg, ...]] = []
    current: list[_Arg] = []
    for kind, val in [*toks, ("pipe", "|")]:
        if kind == "pipe":
            if not current:
                raise TemplateError(f"missing command in pipeline {{{{ {inner} }}}}")
            commands.append(tuple(current))
            current = []
            continue
        current.append(_make_arg(kind, val, inner))
    for i, cmd in enumerate(commands):
        head = cmd[0]
        if head.kind == "func":
            if head.value != "printf" and len(cmd) - 1 + (1 if i > 0 else 0) > 1:
                raise TemplateError(f"wrong number of args for {head.value} in {{{{ {inner} }}}}")
            if head.value == "printf" and len(cmd) == 1:
                raise TemplateError(f"printf needs a format string in {{{{ {inner} }}}}")
            if len(cmd) - 1 + (1 if i > 0 else 0) == 0:
                raise TemplateError(f"wrong number of args for {head.value}: want 1 got 0")
        else:
            if len(cmd) > 1:
                raise TemplateError(f"can't give argument to non-function {inner!r}")
            if i > 0:
                raise TemplateError(f"non executable command in pipeline stage {i + 1}: {inner!r}")
        for a in cmd[1:]:
            if a.kind == "func":
                raise TemplateError(f"function {a.value} used as an argument in {{{{ {inner} }}}}")
    return _Action(tuple(commands))


def _make_arg(kind: str, val: str, inner: str) -> _Arg:
    if kind == "str":
        try:
            return _Arg("lit", json.loads(val))
        except ValueError:
            raise TemplateError(f"bad string literal {val} in {{{{ {inner} }}}}") from None
    if kind == "raw":
        return _Arg("lit", val[1:-1])
    if kind == "num":
        return _Arg("lit", float(val) if any(c in val for c in ".eE") else int(val))
    if kind == "var":
        head, *rest = val.split(".")
        if head not in _VARS:
            raise TemplateError(
                f"undefined variable {head!r} in {{{{ {inner} }}}}; "
                "known: $labels, $value, $externalLabels, $externalURL"
            )
        if head == "$":
            if not rest or rest[0] not in _FIELDS:
                raise TemplateError(f"can't evaluate field {'.'.join(rest)!r} in {{{{ {inner} }}}}")
            return _Arg("var", (_FIELDS[rest[0]], *rest[1:]))
        return _Arg("var", (_VARS[head], *rest))
    if kind == "field":
        parts = [p for p in val.split(".") if p]
        if not parts:
            return _Arg("var", ())
        if parts[0] not in _FIELDS:
            raise TemplateError(f"can't evaluate field {parts[0]!r} in {{{{ {inner} }}}}")
        return _Arg("var", (_FIELDS[parts[0]], *parts[1:]))
    if kind == "ident":
        if val in ("true", "false"):
            return _Arg("lit", val == "true")
        if val not in _FUNCS:
            raise TemplateError(
                f"function {val!r} not defined in {{{{ {inner} }}}}; "
                f"supported: {', '.join(sorted(_FUNCS))}"
            )
        return _Arg("func", val)
    raise TemplateError(f"unexpected {val!r} in {{{{ {inner} }}}}")


def _resolve(arg: _Arg, data: Mapping[str, Any]) -> Any:
    if arg.kind == "lit":
        return arg.value
    path: tuple[str, ...] = arg.value
    if not path:
        return dict(data)
    cur: Any = data.get(path[0], "" if path[0] == "externalURL" else {})
    for key in path[1:]:
        if isinstance(cur, Mapping):
            cur = cur.get(key, "")  # Prometheus uses missingkey=zero: a missing label is ""
        else:
            raise TemplateError(f"can't evaluate field {key} in type {type(cur).__name__}")
    return cur


def _run_pipeline(action: _Action, data: Mapping[str, Any]) -> Any:
    value: Any = None
    for i, cmd in enumerate(action.commands):
        head = cmd[0]
        if head.kind == "func":
            args = [_resolve(a, data) for a in cmd[1:]]
            if i > 0:
                args.append(value)
            value = _FUNCS[head.value](*args)
        else:
            value = _resolve(head, data)
    return value


def expand_template(text: str, labels: Mapping[str, str], value: float,
                    external_labels: Mapping[str, str] | None = None,
                    external_url: str = "") -> str:
    """Parse and expand one template (convenience for callers and tests)."""
    return parse_template(text).expand(
        {"labels": dict(labels), "value": value, "externalLabels": dict(external_labels or {}),
         "externalURL": external_url}
    )


# =============================================================================================
# Rendering the shipped rules with the config's SLO
# =============================================================================================

@dataclass(frozen=True)
class SnappedSLO:
    """SLO thresholds as rendered into the rules, each on a bucket bound."""

    ttft_seconds: float
    itl_seconds: float
    queue_seconds: float
    error_rate: float
    objective: float
    notes: tuple[str, ...] = ()


def snap_slo(slo: SLO) -> SnappedSLO:
    """Snap the SLO's latency thresholds to vLLM bucket bounds; ``notes`` says what moved."""
    notes = []
    out = {}
    for key, bounds, metric in (
        ("ttft_p99_seconds", TTFT_BUCKETS, "vllm:time_to_first_token_seconds"),
        ("itl_p99_seconds", ITL_BUCKETS, "vllm:inter_token_latency_seconds"),
        ("queue_p99_seconds", REQUEST_BUCKETS, "vllm:request_queue_time_seconds"),
    ):
        want = float(getattr(slo, key))
        got = snap_to_bucket(want, bounds)
        if not math.isclose(got, want, rel_tol=1e-12):
            notes.append(
                f"slo.{key} {_num(want)}s is not a bucket bound of {metric}; "
                f"the rules use {_num(got)}s"
            )
        out[key] = got
    return SnappedSLO(out["ttft_p99_seconds"], out["itl_p99_seconds"], out["queue_p99_seconds"],
                      float(slo.error_rate), float(slo.objective), tuple(notes))


def _num(x: float) -> str:
    """A threshold as PromQL/YAML text: shortest form, no float noise (0.144, 1, 0.06)."""
    r = float(f"{x:.12g}")
    return str(int(r)) if r == int(r) and abs(r) < 1e15 else repr(r)


def render_rule_files(slo: SLO | None = None) -> dict[str, str]:
    """The shipped rule files (file name -> YAML text) with ``slo``'s thresholds.

    Latency thresholds are snapped to bucket bounds (``snap_slo``); when that moves a value the
    rendered ``slo.yaml`` carries a comment saying so and a warning is logged.
    """
    s = snap_slo(slo or SLO())
    budget = 1.0 - s.objective
    values = {
        "@TTFT_LE@": le_regex(s.ttft_seconds),
        "@TTFT@": _num(s.ttft_seconds),
        "@ITL@": _num(s.itl_seconds),
        "@QUEUE@": _num(s.queue_seconds),
        "@ERR@": _num(s.error_rate),
        "@ERR_PCT@": _num(s.error_rate * 100),
        "@OBJ_PCT@": _num(s.objective * 100),
        "@BURN_14_4@": _num(14.4 * budget),
        "@BURN_6@": _num(6 * budget),
        "@BURN_3@": _num(3 * budget),
        "@BURN_1@": _num(budget),
    }
    out = {}
    for name, template in _TEMPLATES.items():
        text = template
        for k, v in values.items():
            text = text.replace(k, v)
        if name == "slo.yaml" and s.notes:
            for note in s.notes:
                log.warning("rules: %s", note)
            notes = "".join(f"# NOTE: {n}\n" for n in s.notes)
            text = text.replace("\ngroups:\n", "\n" + notes + "groups:\n", 1)
        out[name] = text
    return out


# =============================================================================================
# Rule files: model, loading, validation
# =============================================================================================


@dataclass(frozen=True)
class Rule:
    """One recording or alerting rule, validated."""

    kind: str  # "record" | "alert"
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
        return tuple(r.name for r in self.rules if r.kind == "alert")


_GROUP_KEYS = {"name", "interval", "rules", "limit"}
_RULE_KEYS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


def _rule_duration(value: Any, where: str, key: str) -> float:
    if value is None:
        return 0.0
    if not isinstance(value, str):
        raise RuleError(f"{where}: {key}: {value!r} is not a duration string (e.g. 5m, 1h30m)")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise RuleError(f"{where}: {key}: {exc}") from None


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
        interval = _rule_duration(g.get("interval"), gwhere, "interval") or None
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
            if rule.kind == "alert":
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
    kind = "alert" if "alert" in r else "record"
    if not isinstance(name, str) or not name:
        raise RuleError(f"{where}: {kind} name must be a non-empty string")
    if kind == "record" and not _METRIC_NAME_RE.match(name):
        raise RuleError(f"{where}: invalid recording rule name {name!r} (must be a metric name)")
    if kind == "alert" and not _LABEL_NAME_RE.match(name):
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
    if kind == "record":
        for k in ("for", "keep_firing_for", "annotations"):
            if k in r:
                raise RuleError(f"{where}: invalid field {k!r} in recording rule")
    for_s = _rule_duration(r.get("for"), where, "for")
    keep = _rule_duration(r.get("keep_firing_for"), where, "keep_firing_for")
    labels = _string_map(r.get("labels"), where, "labels")
    for k in labels:
        if not _LABEL_NAME_RE.match(k) or k == "__name__":
            raise RuleError(f"{where}: labels: invalid label name {k!r}")
    annotations = _string_map(r.get("annotations"), where, "annotations")
    if kind == "alert":
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


# =============================================================================================
# Evaluation: recording rules, Prometheus's alert state machine
# =============================================================================================

LabelPairs = tuple[tuple[str, str], ...]


class InstantQuerier(Protocol):
    """Answers PromQL instant queries (``tuner.promql.Engine``, ``source.PrometheusSource``)."""

    def instant(self, expr: str, ts: float) -> QueryResult: ...


class SampleWriter(Protocol):
    """Where recording-rule results and ``ALERTS`` series go (``tuner.store.Store``)."""

    def append_points(self, points: Iterable[tuple[str, LabelPairs, int, float]]) -> int: ...


class DocumentStore(Protocol):
    """Where alert state persists (``tuner.store.Store``)."""

    def put_document(self, kind: str, key: str, body: Any, ts: float | None = None) -> None: ...

    def documents(self, kind: str) -> list[tuple[str, float, Any]]: ...

    def delete_documents(self, kind: str, keys: Iterable[str]) -> None: ...


@dataclass(frozen=True)
class AlertState:
    """One alert instance as Prometheus would report and send it.

    ``state`` is ``pending``, ``firing`` or ``resolved`` (inactive, kept 15m after it fired).
    Times are unix seconds; 0 means "not set". ``ends_at`` is what Alertmanager receives:
    the resolve time, or for a firing alert ``valid_until`` (4 resend intervals ahead).
    """

    alertname: str
    group: str
    source: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: str
    value: float
    active_at: float
    fired_at: float = 0.0
    resolved_at: float = 0.0
    valid_until: float = 0.0
    generator_url: str = ""

    @property
    def starts_at(self) -> float:
        return self.fired_at or self.active_at

    @property
    def ends_at(self) -> float:
        return self.resolved_at if self.resolved_at else self.valid_until

    def to_json(self) -> dict[str, Any]:
        return {
            "alertname": self.alertname,
            "group": self.group,
            "source": self.source,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "state": self.state,
            "value": _json_float(self.value),
            "active_at": self.active_at,
            "fired_at": self.fired_at,
            "resolved_at": self.resolved_at,
            "valid_until": self.valid_until,
            "generator_url": self.generator_url,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AlertState:
        return cls(
            alertname=str(d["alertname"]), group=str(d.get("group", "")),
            source=str(d.get("source", "")), labels=dict(d["labels"]),
            annotations=dict(d.get("annotations", {})), state=str(d["state"]),
            value=_unjson_float(d.get("value")), active_at=float(d.get("active_at", 0)),
            fired_at=float(d.get("fired_at", 0)), resolved_at=float(d.get("resolved_at", 0)),
            valid_until=float(d.get("valid_until", 0)),
            generator_url=str(d.get("generator_url", "")),
        )


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else ("NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf"))


def _unjson_float(v: Any) -> float:
    if v is None:
        return math.nan
    if isinstance(v, str):
        return _to_float(v, "value")
    return float(v)


@dataclass
class _Alert:
    """Mutable state of one alert instance (the fields of Prometheus's rules.Alert)."""

    labels: dict[str, str]
    annotations: dict[str, str]
    state: str  # "pending" | "firing" | "inactive"
    active_at: float
    value: float
    fired_at: float = 0.0
    resolved_at: float = 0.0
    last_sent_at: float = 0.0
    valid_until: float = 0.0
    keep_firing_since: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["value"] = _json_float(self.value)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> _Alert:
        a = cls(labels=dict(d["labels"]), annotations=dict(d["annotations"]), state=d["state"],
                active_at=float(d["active_at"]), value=_unjson_float(d.get("value")))
        for k in ("fired_at", "resolved_at", "last_sent_at", "valid_until", "keep_firing_since"):
            setattr(a, k, float(d.get(k, 0.0)))
        return a


@dataclass(frozen=True)
class EvalReport:
    """What one ``RuleEngine.evaluate`` call did."""

    ts: float
    groups: int
    rules: int
    samples_written: int
    errors: tuple[str, ...]
    to_send: tuple[AlertState, ...]


@dataclass
class _RuleState:
    rule: Rule
    group: RuleGroup
    expr: str  # what is queried (recorded names inlined when nothing can be written back)
    label_templates: dict[str, GoTemplate]
    annotation_templates: dict[str, GoTemplate]
    active: dict[LabelPairs, _Alert] = field(default_factory=dict)
    written: set[LabelPairs] = field(default_factory=set)  # series written last time
    last_error: str = ""
    last_doc: str = ""

    @property
    def key(self) -> str:
        return f"{self.group.source}|{self.group.name}|{self.rule.index}|{self.rule.name}"


def _vector_of(result: QueryResult, what: str) -> list[tuple[dict[str, str], float]]:
    if result.kind == "vector":
        return [(dict(e.labels), e.value) for e in result.vector]
    if result.kind == "scalar":
        return [({}, float(result.scalar if result.scalar is not None else math.nan))]
    raise QueryError(f"{what}: rule result is a {result.kind}, not a vector or scalar")


def _pairs(labels: Mapping[str, str]) -> LabelPairs:
    return tuple(sorted(labels.items()))


def inline_recording_rules(rules: RuleSet) -> dict[tuple[str, str, int], str]:
    """Expressions with recorded names replaced by their defining expression.

    Used when recording-rule results cannot be written back (fleet mode, querying a
    Prometheus that may not run these recording rules): a bare reference ``name`` becomes
    ``(expr)``. References with matchers or ranges, and recording rules that add labels,
    are left alone. Keys are (source, group, rule index).
    """
    defs: dict[str, str] = {}
    out: dict[tuple[str, str, int], str] = {}
    for g in rules.groups:
        for r in g.rules:
            expr = r.expr
            for name, body in defs.items():
                pattern = re.compile(r"(?<![\w:])" + re.escape(name) + r"(?![\w:])(?!\s*[{\[])")
                expr = pattern.sub("(" + body.strip().replace("\\", "\\\\") + ")", expr)
            out[(g.source, g.name, r.index)] = expr
            if r.kind == "record" and not r.labels and r.name not in defs:
                defs[r.name] = expr
    return out


class RuleEngine:
    """Evaluates rule groups at given times, like Prometheus's rule manager.

    ``querier`` answers the queries. ``writer`` (the store) receives recording-rule results
    and ``ALERTS``/``ALERTS_FOR_STATE`` series with stale markers for vanished series; without
    one (fleet mode) recorded names are inlined into the expressions that use them.
    ``documents`` persists alert state (``restore()`` reloads it). Not thread-safe: call
    ``evaluate`` from one thread.
    """

    def __init__(
        self,
        rules: RuleSet,
        querier: InstantQuerier,
        *,
        writer: SampleWriter | None = None,
        documents: DocumentStore | None = None,
        default_interval: float = 15.0,
        external_labels: Mapping[str, str] | None = None,
        external_url: str = "",
        resend_delay: float = DEFAULT_RESEND_DELAY,
        resolved_retention: float = RESOLVED_RETENTION,
    ) -> None:
        self.querier = querier
        self.writer = writer
        self.documents = documents
        self.default_interval = default_interval
        self.external_labels = dict(external_labels or {})
        self.external_url = external_url.rstrip("/")
        self.resend_delay = resend_delay
        self.resolved_retention = resolved_retention
        self.rules = rules
        self._states: list[_RuleState] = []
        self._next_due: dict[tuple[str, str], float] = {}
        self._alerts_written: set[LabelPairs] = set()
        self._build(rules)

    # -- setup ---------------------------------------------------------------------------

    def _build(self, rules: RuleSet) -> None:
        inlined = inline_recording_rules(rules) if self.writer is None else {}
        old = {s.key: s for s in self._states}
        states = []
        for g in rules.groups:
            for r in g.rules:
                expr = inlined.get((g.source, g.name, r.index), r.expr)
                label_t = {k: parse_template(v) for k, v in r.labels.items()}
                st = _RuleState(
                    r, g, expr, label_t if r.kind == "alert" else {},
                    {k: parse_template(v) for k, v in r.annotations.items()},
                )
                prev = old.get(st.key)
                if prev is not None and prev.rule.kind == r.kind:
                    st.active, st.written, st.last_doc = prev.active, prev.written, prev.last_doc
                states.append(st)
        self._states = states
        self.rules = rules

    def replace_rules(self, rules: RuleSet) -> None:
        """Swap in new rules (reload); alerts of rules that kept their identity keep state."""
        self._build(rules)
        self._next_due.clear()

    def interval_of(self, group: RuleGroup) -> float:
        return group.interval or self.default_interval

    # -- persistence ---------------------------------------------------------------------

    def restore(self) -> int:
        """Reload alert state saved by a previous process; returns how many alerts came back."""
        if self.documents is None:
            return 0
        saved = {key: body for key, _ts, body in self.documents.documents(STATE_DOCUMENT_KIND)}
        n = 0
        for st in self._states:
            body = saved.get(st.key)
            if st.rule.kind != "alert" or not body:
                continue
            for d in body.get("alerts", []):
                try:
                    a = _Alert.from_json(d)
                except (KeyError, TypeError, ValueError):
                    continue
                st.active[_pairs(a.labels)] = a
                n += 1
            st.last_doc = json.dumps(body, sort_keys=True)
        return n

    def _persist(self, st: _RuleState, ts: float) -> None:
        if self.documents is None or st.rule.kind != "alert":
            return
        body = {
            "alertname": st.rule.name,
            "group": st.group.name,
            "source": st.group.source,
            "for": st.rule.for_seconds,
            "keep_firing_for": st.rule.keep_firing_for,
            "generator_url": self._generator_url(st),
            "alerts": [a.to_json() for a in st.active.values()],
        }
        text = json.dumps(body, sort_keys=True)
        if text == st.last_doc or (not st.active and not st.last_doc):
            return
        self.documents.put_document(STATE_DOCUMENT_KIND, st.key, body, ts=ts)
        st.last_doc = text

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, ts: float, force: bool = False) -> EvalReport:
        """Evaluate every group that is due at ``ts`` (all of them when ``force``)."""
        errors: list[str] = []
        to_send: list[AlertState] = []
        written = 0
        groups = 0
        rules = 0
        points: list[tuple[str, LabelPairs, int, float]] = []
        alert_series: set[LabelPairs] = set()
        for g in self.rules.groups:
            gkey = (g.source, g.name)
            interval = self.interval_of(g)
            due = self._next_due.get(gkey, -math.inf)
            if not force and ts + 1e-6 < due:
                continue
            self._next_due[gkey] = ts + interval
            groups += 1
            for st in self._states:
                if st.group is not g:
                    continue
                rules += 1
                if st.rule.kind == "record":
                    pts, err = self._eval_record(st, ts)
                    if pts and self.writer is not None:
                        # later rules of this group must see the result: write now
                        written += self.writer.append_points(pts)
                else:
                    err = self._eval_alert(st, ts)
                    to_send.extend(self._needs_sending(st, ts, interval))
                    self._persist(st, ts)
                if err:
                    errors.append(err)
        if self.writer is not None:
            points, alert_series = self._alerts_series(ts)
            if points:
                written += self.writer.append_points(points)
            self._alerts_written = alert_series
        return EvalReport(ts, groups, rules, written, tuple(errors), tuple(to_send))

    def _where(self, st: _RuleState) -> str:
        return f"{st.group.source}: group {st.group.name!r}: {st.rule.kind} {st.rule.name!r}"

    def _query(self, st: _RuleState, ts: float) -> list[tuple[dict[str, str], float]]:
        return _vector_of(self.querier.instant(st.expr, ts), self._where(st))

    def _eval_record(self, st: _RuleState, ts: float) -> tuple[list[Any], str]:
        ts_ms = round(ts * 1000)
        try:
            vec = self._query(st, ts)
        except TunerError as exc:
            st.last_error = f"{self._where(st)}: {exc}"
            return [], st.last_error
        points = []
        seen: set[LabelPairs] = set()
        for labels, value in vec:
            labels.pop("__name__", None)
            labels.update(st.rule.labels)
            key = _pairs(labels)
            if key in seen:
                st.last_error = (f"{self._where(st)}: vector contains metrics with the same "
                                 "labelset after applying rule labels")
                return [], st.last_error
            seen.add(key)
            points.append((st.rule.name, key, ts_ms, value))
        if st.group.limit and len(points) > st.group.limit:
            st.last_error = (f"{self._where(st)}: exceeded limit of {st.group.limit} "
                             f"with {len(points)} series")
            return [], st.last_error
        for key in st.written - seen:
            points.append((st.rule.name, key, ts_ms, STALE_NAN))
        st.written = seen
        st.last_error = ""
        return points, ""

    def _eval_alert(self, st: _RuleState, ts: float) -> str:
        rule = st.rule
        try:
            vec = self._query(st, ts)
        except TunerError as exc:
            st.last_error = f"{self._where(st)}: {exc}"
            return st.last_error
        fresh: dict[LabelPairs, _Alert] = {}
        try:
            for labels, value in vec:
                labels.pop("__name__", None)
                data = {"labels": labels, "value": value, "externalLabels": self.external_labels,
                        "externalURL": self.external_url}
                lb = dict(labels)
                for k, t in st.label_templates.items():
                    lb[k] = t.expand(data)
                lb["alertname"] = rule.name
                annotations = {k: t.expand(data) for k, t in st.annotation_templates.items()}
                key = _pairs(lb)
                if key in fresh:
                    st.last_error = (f"{self._where(st)}: vector contains metrics with the same "
                                     "labelset after applying alert labels")
                    return st.last_error
                fresh[key] = _Alert(lb, annotations, "pending", ts, value)
        except TemplateError as exc:
            st.last_error = f"{self._where(st)}: template error: {exc}"
            return st.last_error
        for key, a in fresh.items():
            cur = st.active.get(key)
            if cur is not None and cur.state != "inactive":
                cur.value = a.value
                cur.annotations = a.annotations
                continue
            st.active[key] = a
        for key in list(st.active):
            a = st.active[key]
            if key not in fresh:
                keep_firing = False
                if a.state == "firing" and rule.keep_firing_for > 0:
                    if a.keep_firing_since == 0:
                        a.keep_firing_since = ts
                    if ts - a.keep_firing_since < rule.keep_firing_for:
                        keep_firing = True
                if a.state == "pending" or (
                    a.resolved_at and ts - a.resolved_at > self.resolved_retention
                ):
                    del st.active[key]
                if a.state != "inactive" and not keep_firing:
                    a.state = "inactive"
                    a.resolved_at = ts
                if not keep_firing:
                    continue
            else:
                a.keep_firing_since = 0.0
            if a.state == "pending" and ts - a.active_at >= rule.for_seconds:
                a.state = "firing"
                a.fired_at = ts
        active = sum(1 for a in st.active.values() if a.state != "inactive")
        if st.group.limit and active > st.group.limit:
            st.active.clear()  # as Prometheus does: the rule's alerts are dropped
            st.last_error = (f"{self._where(st)}: exceeded limit of {st.group.limit} "
                             f"with {active} alerts")
            return st.last_error
        st.last_error = ""
        return ""

    def _needs_sending(self, st: _RuleState, ts: float, interval: float) -> list[AlertState]:
        out = []
        for a in st.active.values():
            if a.state == "pending":
                continue
            if not (a.resolved_at > a.last_sent_at or a.last_sent_at + self.resend_delay < ts):
                continue
            a.last_sent_at = ts
            a.valid_until = ts + 4 * max(self.resend_delay, interval)
            labels = dict(a.labels)
            for k, v in self.external_labels.items():
                labels.setdefault(k, v)
            out.append(self._snapshot(st, a, labels))
        return out

    def _snapshot(self, st: _RuleState, a: _Alert, labels: Mapping[str, str] | None = None
                  ) -> AlertState:
        return AlertState(
            alertname=st.rule.name, group=st.group.name, source=st.group.source,
            labels=dict(labels if labels is not None else a.labels),
            annotations=dict(a.annotations),
            state="resolved" if a.state == "inactive" else a.state, value=a.value,
            active_at=a.active_at, fired_at=a.fired_at, resolved_at=a.resolved_at,
            valid_until=a.valid_until, generator_url=self._generator_url(st),
        )

    def _generator_url(self, st: _RuleState) -> str:
        return f"{self.external_url}/graph?g0.expr={quote(st.rule.expr)}&g0.tab=1"

    def _alerts_series(self, ts: float) -> tuple[list[tuple[str, LabelPairs, int, float]],
                                                   set[LabelPairs]]:
        ts_ms = round(ts * 1000)
        points: list[tuple[str, LabelPairs, int, float]] = []
        current: set[LabelPairs] = set()
        for st in self._states:
            for a in st.active.values():
                if a.state == "inactive":
                    continue
                alerts_key = _pairs({**a.labels, "alertstate": a.state, "__name__": "ALERTS"})
                for_key = _pairs({**a.labels, "__name__": "ALERTS_FOR_STATE"})
                current.update((alerts_key, for_key))
                points.append(("ALERTS", _strip_name(alerts_key), ts_ms, 1.0))
                points.append(("ALERTS_FOR_STATE", _strip_name(for_key), ts_ms, a.active_at))
        for key in self._alerts_written - current:
            name = dict(key)["__name__"]
            points.append((name, _strip_name(key), ts_ms, STALE_NAN))
        return points, current

    # -- reading -------------------------------------------------------------------------

    def alerts(self, include_resolved: bool = True) -> list[AlertState]:
        """Every pending/firing alert (and resolved ones still retained), rule order."""
        out = []
        for st in self._states:
            for a in st.active.values():
                if a.state == "inactive" and not include_resolved:
                    continue
                out.append(self._snapshot(st, a))
        return out

    def firing(self, alertname: str) -> list[AlertState]:
        return [a for a in self.alerts(False) if a.alertname == alertname and a.state == "firing"]


def _strip_name(key: LabelPairs) -> LabelPairs:
    return tuple((k, v) for k, v in key if k != "__name__")


def read_alert_states(documents: DocumentStore) -> list[AlertState]:
    """Alert states persisted by a running daemon (for ``tuner alerts``), rule order kept."""
    out = []
    for _key, _ts, body in documents.documents(STATE_DOCUMENT_KIND):
        for d in body.get("alerts", []):
            try:
                a = _Alert.from_json(d)
            except (KeyError, TypeError, ValueError):
                continue
            out.append(AlertState(
                alertname=str(body.get("alertname", a.labels.get("alertname", ""))),
                group=str(body.get("group", "")), source=str(body.get("source", "")),
                labels=a.labels, annotations=a.annotations,
                state="resolved" if a.state == "inactive" else a.state, value=a.value,
                active_at=a.active_at, fired_at=a.fired_at, resolved_at=a.resolved_at,
                valid_until=a.valid_until, generator_url=str(body.get("generator_url", "")),
            ))
    order = {"firing": 0, "pending": 1, "resolved": 2}
    return sorted(out, key=lambda a: (order.get(a.state, 3), a.alertname, sorted(a.labels.items())))


def local_engine(store: Store, lookback_delta: float = 300.0) -> Engine:
    """The in-process PromQL evaluator over ``store`` (satisfies ``InstantQuerier``)."""
    return Engine(reader=store, lookback_delta=lookback_delta)


# =============================================================================================
# promtool unit-test files
# =============================================================================================

_TEST_FILE_KEYS = {"rule_files", "evaluation_interval", "group_eval_order", "tests"}
_TEST_KEYS = {"name", "interval", "input_series", "alert_rule_test", "promql_expr_test",
              "external_labels", "external_url"}
_NUM = r"[-+]?(?:Inf|inf|NaN|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_EXPAND_RE = re.compile(rf"^(?P<a>{_NUM})(?:(?P<op>[-+])(?P<b>{_NUM}))?x(?P<n>\d+)$")
_MISSING = None


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
            out.extend(a + i * b for i in range(int(m.group("n")) + 1))
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
    """``name{a="b"}`` (or ``{__name__="name", ...}``) -> (name, labels)."""
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


def _dur(value: Any, where: str, default: float) -> float:
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise RuleError(f"{where}: {exc}") from None


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
    _req(isinstance(rule_files, list) and bool(rule_files), where,
         "rule_files: a list of rule files (relative to the test file) is required")
    tests = data.get("tests")
    _req(isinstance(tests, list) and bool(tests), where, "tests: a list of test groups is required")
    eval_interval = _dur(data.get("evaluation_interval"), f"{where}: evaluation_interval", 60.0)
    _req(eval_interval > 0, where, "evaluation_interval must be greater than 0s")
    rule_paths = [str(f) if Path(str(f)).is_absolute() else str(path.parent / str(f))
                  for f in rule_files]
    try:
        ruleset = load_rule_files(rule_paths)
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


@dataclass(frozen=True)
class _AlertTest:
    eval_time: float
    alertname: str
    expected: tuple[tuple[LabelPairs, LabelPairs], ...]


def _run_one_test(test: Any, where: str, ruleset: RuleSet, eval_interval: float) -> list[str]:
    _req(isinstance(test, Mapping), where, "a test group is a mapping")
    unknown = set(test) - _TEST_KEYS
    _req(not unknown, where, f"unknown keys {sorted(unknown)}; allowed: {sorted(_TEST_KEYS)}")
    interval = _dur(test.get("interval"), f"{where}: interval", eval_interval)
    _req(interval > 0, where, "interval must be greater than 0s")
    series_points: list[tuple[str, LabelPairs, int, float]] = []
    for si, s in enumerate(test.get("input_series") or []):
        swhere = f"{where}: input_series[{si}]"
        _req(isinstance(s, Mapping) and set(s) <= {"series", "values"} and "series" in s, swhere,
             "each input series is {series: 'name{label=\"value\"}', values: '0+1x10'}")
        try:
            name, labels = parse_series(str(s["series"]))
            values = expand_values(str(s.get("values", "")))
        except ValueError as exc:
            raise RuleError(f"{swhere}: {exc}") from None
        key = _pairs(labels)
        step_ms = round(interval * 1000)
        for i, v in enumerate(values):
            if v is not None:
                series_points.append((name, key, i * step_ms, v))
    alert_tests: list[_AlertTest] = []
    for ai, t in enumerate(test.get("alert_rule_test") or []):
        awhere = f"{where}: alert_rule_test[{ai}]"
        _req(isinstance(t, Mapping) and set(t) <= {"eval_time", "alertname", "exp_alerts"}
             and "alertname" in t, awhere, "needs eval_time, alertname and optional exp_alerts")
        exp = []
        for ei, e in enumerate(t.get("exp_alerts") or []):
            _req(isinstance(e, Mapping) and set(e) <= {"exp_labels", "exp_annotations"},
                 f"{awhere}: exp_alerts[{ei}]",
                 "each expected alert has exp_labels and exp_annotations")
            lb = {str(k): str(v) for k, v in (e.get("exp_labels") or {}).items()}
            lb["alertname"] = str(t["alertname"])
            an = {str(k): str(v) for k, v in (e.get("exp_annotations") or {}).items()}
            exp.append((_pairs(lb), _pairs(an)))
        alert_tests.append(_AlertTest(_dur(t.get("eval_time"), f"{awhere}: eval_time", 0.0),
                                      str(t["alertname"]), tuple(sorted(exp))))
    expr_tests = []
    for pi, t in enumerate(test.get("promql_expr_test") or []):
        pwhere = f"{where}: promql_expr_test[{pi}]"
        _req(isinstance(t, Mapping) and set(t) <= {"expr", "eval_time", "exp_samples"}
             and "expr" in t, pwhere, "needs expr, eval_time and exp_samples")
        exp_s = []
        for xi, x in enumerate(t.get("exp_samples") or []):
            _req(isinstance(x, Mapping) and set(x) <= {"labels", "value"},
                 f"{pwhere}: exp_samples[{xi}]", "each expected sample has labels and value")
            try:
                nm, lb = parse_series(str(x.get("labels", "{}")))
            except ValueError as exc:
                raise RuleError(f"{pwhere}: exp_samples[{xi}]: {exc}") from None
            if nm:
                lb["__name__"] = nm
            exp_s.append((_pairs(lb), _parse_num(str(x.get("value", "0")))))
        expr_tests.append((pwhere, str(t["expr"]),
                           _dur(t.get("eval_time"), f"{pwhere}: eval_time", 0.0), sorted(exp_s)))

    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tuner-rules-test-") as tmp:
        store = Store(Path(tmp) / "test.db", retention=10 * 365 * 86400.0)
        try:
            if series_points:
                store.append_points(series_points)
            engine = RuleEngine(
                ruleset, local_engine(store), writer=store, default_interval=eval_interval,
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
                    got = tuple(sorted((_pairs(a.labels), _pairs(a.annotations))
                                       for a in engine.firing(at.alertname)))
                    if got != at.expected:
                        failures.append(
                            f"{where}: alertname: {at.alertname}, time: "
                            f"{format_duration(at.eval_time)}\n"
                            f"        exp: {_fmt_alerts(at.expected)}\n"
                            f"        got: {_fmt_alerts(got)}"
                        )
            if not any(r.kind == "alert" and r.name in {a.alertname for a in alert_tests}
                       for r in ruleset.rules) and alert_tests:
                names = sorted({a.alertname for a in alert_tests} - set(ruleset.alert_names))
                failures.append(f"{where}: no alerting rule named {names} in the rule files")
            query = local_engine(store)
            for pwhere, expr, at_t, exp_s in expr_tests:
                try:
                    got_s = sorted((_pairs(lb), v) for lb, v in
                                   _vector_of(query.instant(expr, at_t), pwhere))
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


# =============================================================================================
# Rule templates: rules/*.yaml is the rendering of these with the default SLO
# =============================================================================================

_TEMPLATES: dict[str, str] = {
    "vllm.yaml": r'''# vLLM serving health: recording rules that make V0 and V1 metric names one series,
# and the alerts built on them. Rendered by tuner.rules.render_rule_files; do not edit by
# hand (edit the template in tuner/rules.py and re-render; a unit test keeps them equal).
#
# Every vllm:* series is aggregated `without (engine)` (the data-parallel rank) so the
# result keeps whatever target labels the scraper attached (job, instance, pod, ...).
# Where vLLM renamed a metric, `new or old` counts a server that exports both names once:
# after the aggregation both sides carry the same label set and `or` keeps the left one.
#
# Every alert (here, in slo.yaml and gpu.yaml) has a `family` label naming the problem it
# reports; Alertmanager inhibits a warning by a critical alert of the same family on the
# same instance (tuner provision). The family of each alert is listed in RUNBOOK.md.
groups:
  - name: vllm-serving
    rules:
      - record: instance:vllm_kv_cache_usage:ratio
        expr: |
          max without (engine) (vllm:kv_cache_usage_perc)
          or
          max without (engine) (vllm:gpu_cache_usage_perc)
      - record: instance:vllm_requests_running:sum
        expr: sum without (engine) (vllm:num_requests_running)
      - record: instance:vllm_requests_waiting:sum
        expr: sum without (engine) (vllm:num_requests_waiting)
      - record: instance:vllm_preemptions:rate5m
        expr: sum without (engine) (rate(vllm:num_preemptions_total[5m]))
      - record: instance:vllm_requests_finished:rate5m
        expr: sum without (engine, finished_reason) (rate(vllm:request_success_total[5m]))
      - record: instance:vllm_generation_tokens:rate2m
        expr: sum without (engine) (rate(vllm:generation_tokens_total[2m]))
      - record: instance:vllm_preemptions_per_1000_requests:ratio_rate5m
        expr: |
          1000 * instance:vllm_preemptions:rate5m
          / instance:vllm_requests_finished:rate5m
      - record: instance:vllm_spec_decode_acceptance:ratio_rate5m
        expr: |
          (
            sum without (engine) (rate(vllm:spec_decode_num_accepted_tokens_total[5m]))
            / sum without (engine) (rate(vllm:spec_decode_num_draft_tokens_total[5m]))
          )
          or
          max without (engine) (vllm:spec_decode_draft_acceptance_rate)
      - record: instance:vllm_spec_decode_mean_acceptance_length:rate5m
        expr: |
          1 + (
            sum without (engine) (rate(vllm:spec_decode_num_accepted_tokens_total[5m]))
            / sum without (engine) (rate(vllm:spec_decode_num_drafts_total[5m]))
          )

      - alert: VllmInstanceDown
        expr: up{job=~".*vllm.*"} == 0
        for: 2m
        labels:
          severity: critical
          family: availability
        annotations:
          summary: A vLLM server cannot be scraped.
          description: '{{ $labels.instance }} (job {{ $labels.job }}) has failed every scrape for 2 minutes.'
          runbook_url: rules/RUNBOOK.md#vllminstancedown

      - alert: VllmMetricsAbsent
        expr: |
          (up{job=~".*vllm.*"} == 1)
          unless on (job, instance)
          (
            vllm:num_requests_running
            and on (job, instance) (vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)
            and on (job, instance) vllm:generation_tokens_total
          )
        for: 10m
        labels:
          severity: warning
          family: availability
        annotations:
          summary: A vLLM target answers but does not export the metrics the rules need.
          description: '{{ $labels.instance }} is up but lacks vllm:num_requests_running, vllm:kv_cache_usage_perc (or vllm:gpu_cache_usage_perc) or vllm:generation_tokens_total; rules on them cannot fire.'
          runbook_url: rules/RUNBOOK.md#vllmmetricsabsent

      - alert: VllmEngineStalled
        expr: |
          (instance:vllm_requests_running:sum > 0)
          and
          (instance:vllm_generation_tokens:rate2m == 0)
        for: 3m
        labels:
          severity: critical
          family: availability
        annotations:
          summary: vLLM has running requests but generates no tokens.
          description: '{{ $labels.instance }} ({{ $labels.model_name }}) has running requests and generated no token in the last 2 minutes.'
          runbook_url: rules/RUNBOOK.md#vllmenginestalled

      - alert: VllmKvCacheSaturated
        expr: |
          (instance:vllm_kv_cache_usage:ratio > 0.9)
          and
          (
            instance:vllm_requests_waiting:sum > 0
            or
            instance:vllm_preemptions:rate5m > 0
          )
        for: 10m
        labels:
          severity: warning
          family: kv_cache
        annotations:
          summary: The KV cache is full while requests wait or get preempted.
          description: '{{ $labels.instance }} ({{ $labels.model_name }}): KV cache {{ $value | humanizePercentage }} full with requests waiting or being preempted.'
          runbook_url: rules/RUNBOOK.md#vllmkvcachesaturated

      - alert: VllmPreemptionsHigh
        expr: instance:vllm_preemptions_per_1000_requests:ratio_rate5m > 5
        for: 10m
        labels:
          severity: warning
          family: preemption
        annotations:
          summary: vLLM preempts more than 5 sequences per 1000 finished requests.
          description: '{{ $labels.instance }} ({{ $labels.model_name }}): {{ printf "%.1f" $value }} preemptions per 1000 finished requests over 5m.'
          runbook_url: rules/RUNBOOK.md#vllmpreemptionshigh

      - alert: VllmSpecDecodeNotPaying
        expr: |
          (instance:vllm_spec_decode_mean_acceptance_length:rate5m < 1.5)
          or
          (
            instance:vllm_spec_decode_acceptance:ratio_rate5m < 0.2
            unless
            instance:vllm_spec_decode_mean_acceptance_length:rate5m
          )
        for: 15m
        labels:
          severity: warning
          family: spec_decode
        annotations:
          summary: Speculative decoding accepts too few draft tokens to pay for itself.
          description: '{{ $labels.instance }} ({{ $labels.model_name }}): speculative decoding yields {{ printf "%.2f" $value }} (mean acceptance length, or acceptance rate where vLLM exports no draft count).'
          runbook_url: rules/RUNBOOK.md#vllmspecdecodenotpaying
''',  # noqa: E501
    "slo.yaml": r'''# Latency and error objectives. Rendered by tuner.rules.render_rule_files from the
# config's `slo` section; do not edit by hand (a unit test keeps this file equal to the
# rendering with the default SLO).
#
# SLO: @OBJ_PCT@% of requests see their first token within @TTFT@s; p99 inter-token latency
# within @ITL@s; p99 queue time within @QUEUE@s; at most @ERR_PCT@% of requests fail.
# Thresholds sit on vLLM histogram bucket bounds so `le` selects an exact bucket (vLLM
# exposes le="1.0"; Prometheus 3 normalizes it to le="1": the regex matches both).
# TTFT alerts are multi-window, multi-burn-rate (SRE workbook): page when 1h and 5m both
# burn faster than 14.4x the error budget, or 6h and 30m faster than 6x; ticket at 3x over
# 1d and 2h, or 1x over 3d and 6h.
groups:
  - name: vllm-slo
    rules:
      - record: instance:vllm_ttft_slo_errors:ratio_rate5m
        expr: |
          1 - (
            sum without (engine, le) (rate(vllm:time_to_first_token_seconds_bucket{le=~"@TTFT_LE@"}[5m]))
            / sum without (engine) (rate(vllm:time_to_first_token_seconds_count[5m]))
          )
      - record: instance:vllm_ttft_slo_errors:ratio_rate30m
        expr: |
          1 - (
            sum without (engine, le) (rate(vllm:time_to_first_token_seconds_bucket{le=~"@TTFT_LE@"}[30m]))
            / sum without (engine) (rate(vllm:time_to_first_token_seconds_count[30m]))
          )
      - record: instance:vllm_ttft_slo_errors:ratio_rate1h
        expr: |
          1 - (
            sum without (engine, le) (rate(vllm:time_to_first_token_seconds_bucket{le=~"@TTFT_LE@"}[1h]))
            / sum without (engine) (rate(vllm:time_to_first_token_seconds_count[1h]))
          )
      - record: instance:vllm_ttft_slo_errors:ratio_rate2h
        expr: |
          1 - (
            sum without (engine, le) (rate(vllm:time_to_first_token_seconds_bucket{le=~"@TTFT_LE@"}[2h]))
            / sum without (engine) (rate(vllm:time_to_first_token_seconds_count[2h]))
          )
      - record: instance:vllm_ttft_slo_errors:ratio_rate6h
        expr: |
          1 - (
            sum without (engine, le) (rate(vllm:time_to_first_token_seconds_bucket{le=~"@TTFT_LE@"}[6h]))
            / sum without (engine) (rate(vllm:time_to_first_token_seconds_count[6h]))
          )
      - record: instance:vllm_ttft_slo_errors:ratio_rate1d
        expr: |
          1 - (
            sum without (engine, le) (rate(vllm:time_to_first_token_seconds_bucket{le=~"@TTFT_LE@"}[1d]))
            / sum without (engine) (rate(vllm:time_to_first_token_seconds_count[1d]))
          )
      - record: instance:vllm_ttft_slo_errors:ratio_rate3d
        expr: |
          1 - (
            sum without (engine, le) (rate(vllm:time_to_first_token_seconds_bucket{le=~"@TTFT_LE@"}[3d]))
            / sum without (engine) (rate(vllm:time_to_first_token_seconds_count[3d]))
          )
      - record: instance:vllm_inter_token_latency_seconds:p99_rate5m
        expr: |
          histogram_quantile(0.99,
            sum without (engine) (rate(vllm:inter_token_latency_seconds_bucket[5m]))
            or
            sum without (engine) (rate(vllm:time_per_output_token_seconds_bucket[5m]))
          )
      - record: instance:vllm_request_queue_time_seconds:p99_rate5m
        expr: |
          histogram_quantile(0.99,
            sum without (engine) (rate(vllm:request_queue_time_seconds_bucket[5m]))
          )
      - record: instance:vllm_http_5xx:ratio_rate5m
        expr: |
          sum without (handler, method, status) (rate(http_requests_total{job=~".*vllm.*", status="5xx"}[5m]))
          / sum without (handler, method, status) (rate(http_requests_total{job=~".*vllm.*"}[5m]))
      - record: instance:vllm_request_errors:ratio_rate5m
        expr: |
          sum without (engine, finished_reason) (rate(vllm:request_success_total{finished_reason="error"}[5m]))
          / sum without (engine, finished_reason) (rate(vllm:request_success_total[5m]))

      - alert: VllmTtftSloBurnRateCritical
        expr: |
          (
            instance:vllm_ttft_slo_errors:ratio_rate1h > @BURN_14_4@
            and
            instance:vllm_ttft_slo_errors:ratio_rate5m > @BURN_14_4@
          )
          or
          (
            instance:vllm_ttft_slo_errors:ratio_rate6h > @BURN_6@
            and
            instance:vllm_ttft_slo_errors:ratio_rate30m > @BURN_6@
          )
        for: 2m
        labels:
          severity: critical
          family: ttft_slo
        annotations:
          summary: The TTFT error budget is burning fast (page).
          description: '{{ $labels.instance }} ({{ $labels.model_name }}): {{ $value | humanizePercentage }} of requests waited longer than @TTFT@s for the first token (objective: @OBJ_PCT@% within @TTFT@s); at this rate the 30-day budget lasts under 5 days.'
          runbook_url: rules/RUNBOOK.md#vllmttftsloburnratecritical

      - alert: VllmTtftSloBurnRateWarning
        expr: |
          (
            instance:vllm_ttft_slo_errors:ratio_rate1d > @BURN_3@
            and
            instance:vllm_ttft_slo_errors:ratio_rate2h > @BURN_3@
          )
          or
          (
            instance:vllm_ttft_slo_errors:ratio_rate3d > @BURN_1@
            and
            instance:vllm_ttft_slo_errors:ratio_rate6h > @BURN_1@
          )
        for: 15m
        labels:
          severity: warning
          family: ttft_slo
        annotations:
          summary: The TTFT error budget is burning faster than it refills (ticket).
          description: '{{ $labels.instance }} ({{ $labels.model_name }}): {{ $value | humanizePercentage }} of requests waited longer than @TTFT@s for the first token (objective: @OBJ_PCT@% within @TTFT@s).'
          runbook_url: rules/RUNBOOK.md#vllmttftsloburnratewarning

      - alert: VllmItlP99High
        expr: instance:vllm_inter_token_latency_seconds:p99_rate5m > @ITL@
        for: 10m
        labels:
          severity: warning
          family: latency
        annotations:
          summary: p99 inter-token latency is above the SLO.
          description: '{{ $labels.instance }} ({{ $labels.model_name }}): p99 inter-token latency {{ $value | humanizeDuration }} over 5m (SLO @ITL@s).'
          runbook_url: rules/RUNBOOK.md#vllmitlp99high

      - alert: VllmQueueTimeHigh
        expr: instance:vllm_request_queue_time_seconds:p99_rate5m > @QUEUE@
        for: 10m
        labels:
          severity: warning
          family: latency
        annotations:
          summary: Requests wait too long in the vLLM queue before they are scheduled.
          description: '{{ $labels.instance }} ({{ $labels.model_name }}): p99 queue time {{ $value | humanizeDuration }} over 5m (SLO @QUEUE@s).'
          runbook_url: rules/RUNBOOK.md#vllmqueuetimehigh

      - alert: VllmHttpServerErrors
        expr: instance:vllm_http_5xx:ratio_rate5m > @ERR@
        for: 5m
        labels:
          severity: warning
          family: errors
        annotations:
          summary: The vLLM API answers too many requests with HTTP 5xx.
          description: '{{ $labels.instance }}: {{ $value | humanizePercentage }} of HTTP requests failed with 5xx over 5m (objective: at most @ERR_PCT@%).'
          runbook_url: rules/RUNBOOK.md#vllmhttpservererrors

      - alert: VllmRequestErrors
        expr: instance:vllm_request_errors:ratio_rate5m > @ERR@
        for: 5m
        labels:
          severity: warning
          family: errors
        annotations:
          summary: The vLLM engine finishes too many requests with an error.
          description: '{{ $labels.instance }} ({{ $labels.model_name }}): {{ $value | humanizePercentage }} of finished requests ended with finished_reason="error" over 5m (objective: at most @ERR_PCT@%).'
          runbook_url: rules/RUNBOOK.md#vllmrequesterrors
''',  # noqa: E501
    "gpu.yaml": r'''# GPU health from the DCGM exporter, and GPU use joined to vLLM's queue.
# Rendered by tuner.rules.render_rule_files; do not edit by hand.
#
# Join key: DCGM and vLLM series are matched on (namespace, pod). On Kubernetes the DCGM
# exporter labels each GPU with the pod using it, and a pod-discovered vLLM scrape
# carries namespace/pod. The sidecar scraping both itself must give its vLLM target the
# same labels (`labels: {namespace: ..., pod: ...}` in tuner.yaml). On a single box
# without either label both sides have an empty (namespace, pod) and match each other.
# DCGM's host label is `Hostname` (`hostname` on newer exporters and in the sidecar's
# store): descriptions print both, one of them is empty.
groups:
  - name: gpu
    rules:
      - alert: GpuXidError
        expr: DCGM_FI_DEV_XID_ERRORS != 0
        keep_firing_for: 15m
        labels:
          severity: critical
          family: gpu
        annotations:
          summary: A GPU reported an XID error.
          description: 'GPU {{ $labels.gpu }} ({{ $labels.modelName }}) on {{ $labels.Hostname }}{{ $labels.hostname }} reported XID {{ $value }}.'
          runbook_url: rules/RUNBOOK.md#gpuxiderror

      - alert: GpuUnderutilizedWhileQueueing
        expr: |
          (avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL) < 50)
          and on (namespace, pod)
          (sum by (namespace, pod) (vllm:num_requests_waiting) > 0)
        for: 15m
        labels:
          severity: warning
          family: gpu
        annotations:
          summary: GPUs are mostly idle while vLLM requests wait in the queue.
          description: 'GPUs of pod "{{ $labels.pod }}" average {{ printf "%.0f" $value }}% utilization while requests wait; the scheduler, not the GPU, is the limit.'
          runbook_url: rules/RUNBOOK.md#gpuunderutilizedwhilequeueing
''',  # noqa: E501
}
