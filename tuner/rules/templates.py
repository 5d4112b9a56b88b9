"""The Go text/template subset Prometheus rules use in labels and annotations.

``parse_template(text)`` parses once (a ``GoTemplate``: literal text and actions) and refuses
what it does not support with a ``TemplateError``; ``GoTemplate.expand(data)`` fills it in.
Supported: ``{{ $labels.x }}``, ``{{ $value }}``, ``{{ $externalLabels.x }}``,
``{{ $externalURL }}`` (and the ``.Labels``/``.Value`` forms), pipelines into ``humanize``,
``humanize1024``, ``humanizePercentage``, ``humanizeDuration``, ``humanizeTimestamp``,
``printf``, ``toUpper``, ``toLower``, ``title``; ``{{-``/``-}}`` trimming and comments.
Control structures (``if``, ``range``, ``with``, ``define``) are refused at parse time.

Values print as Go prints them: ``go_float`` is ``%v`` of a float64, ``go_printf`` is
``fmt.Sprintf`` for the verbs templates use, and the ``humanize*`` functions match
Prometheus's template functions digit for digit.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tuner.errors import TemplateError
from tuner.promql import format_go_float_g


def go_float(v: float) -> str:
    """Format a float64 as Go's ``fmt`` does for ``%v`` (strconv 'g', shortest, eprec 6)."""
    return format_go_float_g(v)


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


class _ArgKind(StrEnum):
    VAR = "var"  # value: the path of keys into the data, e.g. ("labels", "instance")
    LIT = "lit"  # value: the literal
    FUNC = "func"  # value: the function's name in _FUNCS


@dataclass(frozen=True)
class _Arg:
    kind: _ArgKind
    value: Any


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
        if head.kind is _ArgKind.FUNC:
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
            if a.kind is _ArgKind.FUNC:
                raise TemplateError(f"function {a.value} used as an argument in {{{{ {inner} }}}}")
    return _Action(tuple(commands))


def _make_arg(kind: str, val: str, inner: str) -> _Arg:
    if kind == "str":
        try:
            return _Arg(_ArgKind.LIT, json.loads(val))
        except ValueError:
            raise TemplateError(f"bad string literal {val} in {{{{ {inner} }}}}") from None
    if kind == "raw":
        return _Arg(_ArgKind.LIT, val[1:-1])
    if kind == "num":
        return _Arg(_ArgKind.LIT, float(val) if any(c in val for c in ".eE") else int(val))
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
            return _Arg(_ArgKind.VAR, (_FIELDS[rest[0]], *rest[1:]))
        return _Arg(_ArgKind.VAR, (_VARS[head], *rest))
    if kind == "field":
        parts = [p for p in val.split(".") if p]
        if not parts:
            return _Arg(_ArgKind.VAR, ())
        if parts[0] not in _FIELDS:
            raise TemplateError(f"can't evaluate field {parts[0]!r} in {{{{ {inner} }}}}")
        return _Arg(_ArgKind.VAR, (_FIELDS[parts[0]], *parts[1:]))
    if kind == "ident":
        if val in ("true", "false"):
            return _Arg(_ArgKind.LIT, val == "true")
        if val not in _FUNCS:
            raise TemplateError(
                f"function {val!r} not defined in {{{{ {inner} }}}}; "
                f"supported: {', '.join(sorted(_FUNCS))}"
            )
        return _Arg(_ArgKind.FUNC, val)
    raise TemplateError(f"unexpected {val!r} in {{{{ {inner} }}}}")


def _resolve(arg: _Arg, data: Mapping[str, Any]) -> Any:
    if arg.kind is _ArgKind.LIT:
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
        if head.kind is _ArgKind.FUNC:
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

