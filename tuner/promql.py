"""The PromQL subset our rules and dashboards use, evaluated over the embedded store.

Parsing is a small recursive-descent / precedence-climbing parser that follows Prometheus 2.42's
grammar (``^`` right-associative, unary minus binding tighter than ``*`` but looser than ``^``,
``bool``, ``on``/``ignoring``, ``group_left``/``group_right`` modifiers, ``offset``). Anything
outside the subset is refused at parse time with a :class:`~tuner.errors.QueryError` naming the
construct (``unsupported function "predict_linear"``, ``subqueries are not supported``, ...).

Evaluation re-implements Prometheus 2.42's semantics (promql/engine.go, functions.go,
quantile.go): the 5-minute lookback and stale markers for instant selectors, closed
``[t - range, t]`` windows for range selectors, extrapolation and counter resets in
``rate``/``increase``/``delta``, ``irate`` on the last two points, ``histogram_quantile`` with
bucket coalescing, the monotonicity fix and ``+Inf`` handling, metric-name dropping, vector
matching with its error cases and IEEE NaN/Inf arithmetic. Series data comes from a
:class:`SeriesReader` (the :class:`~tuner.store.Store` is one); a range query fetches once and
evaluates every step from the in-memory arrays.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from tuner.errors import QueryError
from tuner.store import Matcher, SeriesData

__all__ = [
    "Element",
    "Engine",
    "Expr",
    "QueryResult",
    "RangeSeries",
    "SeriesReader",
    "check_expr",
    "parse_duration_ms",
    "parse_expr",
]

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs, "__name__" included
NAME = "__name__"
_STALE_BITS = np.uint64(0x7FF0000000000002)


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """One element of an instant vector."""

    labels: Mapping[str, str]  # includes "__name__" when PromQL keeps the name
    value: float


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range-query result (matrix); timestamps in float seconds."""

    labels: Mapping[str, str]
    timestamps: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class QueryResult:
    """The value of an instant query: exactly one of the fields matches ``kind``."""

    kind: str  # "vector" | "scalar" | "matrix" | "string"
    vector: tuple[Element, ...] = ()
    scalar: float | None = None
    matrix: tuple[RangeSeries, ...] = ()
    string: str | None = None


class SeriesReader(Protocol):
    """Where samples come from (``tuner.store.Store`` implements it)."""

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> list[SeriesData]:
        ...


class Querier(Protocol):
    """Anything that answers PromQL: ``Engine``, ``LocalSource``, ``PrometheusSource``.

    The one query seam of the package: signals, rules, suggest and workload take a ``Querier``.
    """

    def instant(self, expr: str, ts: float) -> QueryResult: ...

    def range(self, expr: str, start: float, end: float,
              step: float) -> tuple[RangeSeries, ...]: ...


# -- AST -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    """Base of every AST node."""


@dataclass(frozen=True)
class NumberLiteral(Expr):
    value: float


@dataclass(frozen=True)
class StringLiteral(Expr):
    value: str


@dataclass(frozen=True)
class VectorSelector(Expr):
    name: str | None
    matchers: tuple[Matcher, ...]  # includes the __name__ matcher when a name was given
    offset_ms: int = 0


@dataclass(frozen=True)
class MatrixSelector(Expr):
    selector: VectorSelector
    range_ms: int


@dataclass(frozen=True)
class Call(Expr):
    func: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Aggregate(Expr):
    op: str
    expr: Expr
    param: Expr | None
    grouping: tuple[str, ...]
    without: bool


@dataclass(frozen=True)
class VectorMatching:
    card: str  # "one-to-one" | "many-to-one" | "one-to-many" | "many-to-many"
    on: bool
    labels: tuple[str, ...]
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class Binary(Expr):
    op: str
    lhs: Expr
    rhs: Expr
    return_bool: bool = False
    matching: VectorMatching | None = None


@dataclass(frozen=True)
class Unary(Expr):
    op: str
    expr: Expr


@dataclass(frozen=True)
class Paren(Expr):
    expr: Expr


# -- function table --------------------------------------------------------------------------

S, V, M, STR = "scalar", "vector", "matrix", "string"


@dataclass(frozen=True)
class _Func:
    args: tuple[str, ...]
    ret: str
    optional: int = 0  # how many trailing args may be omitted


_FUNCS: dict[str, _Func] = {
    "rate": _Func((M,), V),
    "irate": _Func((M,), V),
    "increase": _Func((M,), V),
    "delta": _Func((M,), V),
    "idelta": _Func((M,), V),
    "deriv": _Func((M,), V),
    "resets": _Func((M,), V),
    "changes": _Func((M,), V),
    "avg_over_time": _Func((M,), V),
    "min_over_time": _Func((M,), V),
    "max_over_time": _Func((M,), V),
    "sum_over_time": _Func((M,), V),
    "count_over_time": _Func((M,), V),
    "last_over_time": _Func((M,), V),
    "stddev_over_time": _Func((M,), V),
    "stdvar_over_time": _Func((M,), V),
    "present_over_time": _Func((M,), V),
    "absent_over_time": _Func((M,), V),
    "quantile_over_time": _Func((S, M), V),
    "histogram_quantile": _Func((S, V), V),
    "label_replace": _Func((V, STR, STR, STR, STR), V),
    "absent": _Func((V,), V),
    "vector": _Func((S,), V),
    "scalar": _Func((V,), S),
    "time": _Func((), S),
    "timestamp": _Func((V,), V),
    "clamp": _Func((V, S, S), V),
    "clamp_min": _Func((V, S), V),
    "clamp_max": _Func((V, S), V),
    "abs": _Func((V,), V),
    "ceil": _Func((V,), V),
    "floor": _Func((V,), V),
    "round": _Func((V, S), V, optional=1),
    "sqrt": _Func((V,), V),
    "exp": _Func((V,), V),
    "ln": _Func((V,), V),
    "log2": _Func((V,), V),
    "log10": _Func((V,), V),
    "sort": _Func((V,), V),
    "sort_desc": _Func((V,), V),
}

# Functions Prometheus 2.42 has that this evaluator refuses.
_KNOWN_UNSUPPORTED = {
    "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "days_in_month",
    "day_of_month", "day_of_week", "day_of_year", "deg", "histogram_count", "histogram_fraction",
    "histogram_sum", "holt_winters", "hour", "label_join", "minute", "month", "pi",
    "predict_linear", "rad", "sgn", "sin", "sinh", "tan", "tanh", "year",
}

_AGGREGATORS = {"sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "stddev",
                "stdvar", "group", "count_values"}
_SUPPORTED_AGGREGATORS = _AGGREGATORS - {"count_values"}

# Binary operators and their precedence (higher binds tighter); ^ is right-associative.
_PRECEDENCE = {
    "or": 1,
    "and": 2, "unless": 2,
    "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
    "+": 4, "-": 4,
    "*": 5, "/": 5, "%": 5, "atan2": 5,
    "^": 6,
}
_COMPARISONS = {"==", "!=", "<=", "<", ">=", ">"}
_SET_OPS = {"and", "or", "unless"}
_ARITHMETIC = {"+", "-", "*", "/", "%", "^"}


# -- lexer -----------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(?:\d+(?:ms|y|w|d|h|m|s))+(?![A-Za-z0-9_])")
_DURATION_PART_RE = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_NUMBER_RE = re.compile(
    r"0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
)
_IDENT_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000, "y": 31_536_000_000}
_OPERATORS = ["==", "!=", "=~", "!~", "<=", ">=", "+", "-", "*", "/", "%", "^", "<", ">", "=",
              "(", ")", "{", "}", "[", "]", ",", ":", "@"]


@dataclass(frozen=True)
class _Tok:
    kind: str  # ident number duration string op eof
    text: str
    pos: int
    value: object = None


def parse_duration_ms(text: str) -> int:
    """A Prometheus duration (``5m``, ``1h30m``, ``250ms``) in milliseconds."""
    if not _DURATION_RE.fullmatch(text):
        raise QueryError(f"invalid duration {text!r}")
    total = 0
    order = ["y", "w", "d", "h", "m", "s", "ms"]
    last = -1
    for num, unit in _DURATION_PART_RE.findall(text):
        idx = order.index(unit)
        if idx <= last:
            raise QueryError(f"invalid duration {text!r}: units out of order or repeated")
        last = idx
        total += int(num) * _UNIT_MS[unit]
    return total


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", "'": "'", '"': '"'}


def _unquote(body: str, quote: str, pos: int) -> str:
    if quote == "`":
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        i += 1
        if i >= len(body):
            raise QueryError(f"unterminated escape in string at position {pos}")
        e = body[i]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 1
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 1 : i + 1 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise QueryError(f"invalid escape \\{e} in string at position {pos}")
            out.append(chr(int(digits, 16)))
            i += 1 + width
        elif e in "01234567":
            digits = body[i : i + 3]
            if len(digits) != 3 or not all(d in "01234567" for d in digits):
                raise QueryError(f"invalid octal escape in string at position {pos}")
            out.append(chr(int(digits, 8)))
            i += 3
        else:
            raise QueryError(f"unknown escape sequence \\{e} in string at position {pos}")
    return "".join(out)


def _lex(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":  # comment to end of line
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c in "\"'`":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\\" and c != "`":
                    j += 1
                elif text[j] == "\n" and c != "`":
                    raise QueryError(f"unterminated string at position {i}")
                j += 1
            if j >= n:
                raise QueryError(f"unterminated string at position {i}")
            toks.append(_Tok("string", text[i : j + 1], i, _unquote(text[i + 1 : j], c, i)))
            i = j + 1
            continue
        if c.isdigit() or (c == "." and i + 1 < n and text[i + 1].isdigit()):
            m = _DURATION_RE.match(text, i)
            if m:
                toks.append(_Tok("duration", m.group(), i, parse_duration_ms(m.group())))
                i = m.end()
                continue
            m = _NUMBER_RE.match(text, i)
            assert m is not None
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] in "_:"):
                bad = text[i : end + 1]
                raise QueryError(f"bad number or duration syntax {bad!r} at position {i}")
            raw = m.group()
            value = float(int(raw, 16)) if raw[:2].lower() == "0x" else float(raw)
            toks.append(_Tok("number", raw, i, value))
            i = end
            continue
        m = _IDENT_RE.match(text, i)
        if m:
            word = m.group()
            if word.lower() in ("inf", "nan"):
                toks.append(_Tok("number", word, i, float(word.lower())))
            else:
                toks.append(_Tok("ident", word, i))
            i = m.end()
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                toks.append(_Tok("op", op, i))
                i += len(op)
                break
        else:
            raise QueryError(f"unexpected character {c!r} at position {i}")
    toks.append(_Tok("eof", "", n))
    return toks


# -- parser ----------------------------------------------------------------------------------


def _type_of(e: Expr) -> str:
    if isinstance(e, NumberLiteral):
        return S
    if isinstance(e, StringLiteral):
        return STR
    if isinstance(e, VectorSelector | Aggregate):
        return V
    if isinstance(e, MatrixSelector):
        return M
    if isinstance(e, Call):
        return _FUNCS[e.func].ret
    if isinstance(e, Paren | Unary):
        return _type_of(e.expr)
    if isinstance(e, Binary):
        return S if _type_of(e.lhs) == S and _type_of(e.rhs) == S else V
    raise QueryError(f"unknown expression node {type(e).__name__}")


_TYPE_NAMES = {S: "scalar", V: "instant vector", M: "range vector", STR: "string"}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _lex(text)
        self.i = 0

    # token helpers
    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        t = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        return t

    def at_op(self, *ops: str) -> bool:
        t = self.peek()
        return t.kind == "op" and t.text in ops

    def at_word(self, *words: str) -> bool:
        t = self.peek()
        return t.kind == "ident" and t.text.lower() in words

    def expect_op(self, op: str, what: str) -> _Tok:
        t = self.next()
        if t.kind != "op" or t.text != op:
            found = "end of input" if t.kind == "eof" else repr(t.text)
            raise QueryError(f"expected {op!r} {what}, found {found} at position {t.pos}")
        return t

    def error(self, msg: str, tok: _Tok | None = None) -> QueryError:
        tok = tok or self.peek()
        return QueryError(f"{msg} at position {tok.pos}")

    # grammar
    def parse(self) -> Expr:
        if self.peek().kind == "eof":
            raise QueryError("empty expression")
        e = self.expr(0)
        t = self.peek()
        if t.kind != "eof":
            raise self.error(f"unexpected {t.text!r}")
        return e

    def binop_at(self) -> str | None:
        t = self.peek()
        if t.kind == "op" and t.text in _PRECEDENCE:
            return t.text
        if t.kind == "ident" and t.text.lower() in ("and", "or", "unless", "atan2"):
            return t.text.lower()
        return None

    def expr(self, min_prec: int) -> Expr:
        lhs = self.unary()
        while True:
            op = self.binop_at()
            if op is None or _PRECEDENCE[op] < min_prec:
                return lhs
            optok = self.next()
            if op == "atan2":
                raise self.error('unsupported operator "atan2"', optok)
            return_bool = False
            if self.at_word("bool"):
                self.next()
                if op not in _COMPARISONS:
                    raise self.error("bool modifier can only be used on comparison operators")
                return_bool = True
            matching = self.matching(op)
            prec = _PRECEDENCE[op]
            rhs = self.expr(prec if op == "^" else prec + 1)
            lhs = self.make_binary(op, lhs, rhs, return_bool, matching, optok)

    def matching(self, op: str) -> VectorMatching | None:
        on = None
        labels: tuple[str, ...] = ()
        if self.at_word("on", "ignoring"):
            on = self.next().text.lower() == "on"
            labels = self.label_list()
        card = "many-to-many" if op in _SET_OPS else "one-to-one"
        include: tuple[str, ...] = ()
        if self.at_word("group_left", "group_right"):
            t = self.next()
            if op in _SET_OPS:
                raise self.error(f"no grouping allowed for {op!r} operation", t)
            card = "many-to-one" if t.text.lower() == "group_left" else "one-to-many"
            if self.at_op("("):
                include = self.label_list()
            if on is None:
                on = False
            for ln in include:
                if on and ln in labels:
                    raise self.error(
                        f"label {ln!r} must not occur in ON and GROUP clause at once", t)
        if on is None:
            return VectorMatching(card, False, ())
        return VectorMatching(card, on, labels, include)

    def label_list(self) -> tuple[str, ...]:
        self.expect_op("(", "to open a label list")
        names: list[str] = []
        while not self.at_op(")"):
            t = self.next()
            if t.kind != "ident" or not _LABEL_NAME_RE.fullmatch(t.text):
                raise self.error(f"invalid label name {t.text!r} in grouping", t)
            names.append(t.text)
            if not self.at_op(","):
                break
            self.next()
        self.expect_op(")", "to close a label list")
        return tuple(names)

    def make_binary(self, op: str, lhs: Expr, rhs: Expr, return_bool: bool,
                    matching: VectorMatching | None, tok: _Tok) -> Expr:
        lt, rt = _type_of(lhs), _type_of(rhs)
        for t in (lt, rt):
            if t not in (S, V):
                raise self.error(
                    f"binary expression must contain only scalar and instant vector types, "
                    f"not {_TYPE_NAMES[t]}", tok)
        if op in _COMPARISONS and lt == S and rt == S and not return_bool:
            raise self.error("comparisons between scalars must use BOOL modifier", tok)
        if op in _SET_OPS and (lt != V or rt != V):
            raise self.error(f"set operator {op!r} not allowed in binary scalar expression", tok)
        if (lt != V or rt != V) and matching is not None and matching.labels:
            raise self.error("vector matching only allowed between instant vectors", tok)
        if lt == V and rt == V and matching is None:
            matching = VectorMatching("many-to-many" if op in _SET_OPS else "one-to-one",
                                      False, ())
        if lt != V or rt != V:
            matching = None
        return Binary(op, lhs, rhs, return_bool, matching)

    def unary(self) -> Expr:
        if self.at_op("-", "+"):
            op = self.next().text
            operand = self.expr(_PRECEDENCE["^"])
            t = _type_of(operand)
            if t not in (S, V):
                raise self.error(f"unary expression only allowed on expressions of type scalar "
                                 f"or instant vector, got {_TYPE_NAMES[t]}")
            if isinstance(operand, NumberLiteral):
                return NumberLiteral(-operand.value if op == "-" else operand.value)
            return operand if op == "+" else Unary(op, operand)
        return self.postfix(self.primary())

    def postfix(self, e: Expr) -> Expr:
        while True:
            if self.at_op("["):
                t = self.next()
                d = self.next()
                if d.kind != "duration":
                    raise self.error("expected a duration in range selector", d)
                nxt = self.peek()
                if (nxt.kind == "op" and nxt.text == ":") or (
                        nxt.kind == "ident" and nxt.text.startswith(":")):
                    raise self.error("subqueries are not supported", t)
                self.expect_op("]", "to close a range selector")
                if not isinstance(e, VectorSelector):
                    raise self.error("ranges only allowed for vector selectors", t)
                if e.offset_ms:
                    raise self.error("no offset modifiers allowed before range", t)
                assert isinstance(d.value, int)
                if d.value <= 0:
                    raise self.error("range must be positive", d)
                e = MatrixSelector(e, d.value)
            elif self.at_word("offset"):
                t = self.next()
                sign = 1
                if self.at_op("-", "+"):
                    sign = -1 if self.next().text == "-" else 1
                d = self.next()
                if d.kind != "duration":
                    raise self.error("expected a duration after offset", d)
                assert isinstance(d.value, int)
                if isinstance(e, VectorSelector):
                    if e.offset_ms:
                        raise self.error("offset may not be set multiple times", t)
                    e = VectorSelector(e.name, e.matchers, sign * d.value)
                elif isinstance(e, MatrixSelector):
                    if e.selector.offset_ms:
                        raise self.error("offset may not be set multiple times", t)
                    sel = e.selector
                    e = MatrixSelector(VectorSelector(sel.name, sel.matchers, sign * d.value),
                                       e.range_ms)
                else:
                    raise self.error("offset modifier must be preceded by an instant vector "
                                     "selector or range vector selector", t)
            elif self.at_op("@"):
                raise self.error("the @ modifier is not supported")
            else:
                return e

    def primary(self) -> Expr:
        t = self.peek()
        if t.kind == "number":
            self.next()
            assert isinstance(t.value, float)
            return NumberLiteral(t.value)
        if t.kind == "string":
            self.next()
            assert isinstance(t.value, str)
            return StringLiteral(t.value)
        if t.kind == "duration":
            raise self.error(f"unexpected duration {t.text!r}")
        if t.kind == "op" and t.text == "(":
            self.next()
            e = self.expr(0)
            self.expect_op(")", "to close a parenthesis")
            return Paren(e)
        if t.kind == "op" and t.text == "{":
            return self.selector(None)
        if t.kind == "ident":
            word = t.text
            low = word.lower()
            nxt = self.peek(1)
            opens = nxt.kind == "op" and nxt.text == "("
            modifier = nxt.kind == "ident" and nxt.text.lower() in ("by", "without")
            if low in _AGGREGATORS and (opens or modifier):
                return self.aggregate()
            if self.peek(1).kind == "op" and self.peek(1).text == "(":
                return self.call()
            if low in ("by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                       "offset", "and", "or", "unless"):
                raise self.error(f"unexpected keyword {word!r}")
            self.next()
            return self.selector(word)
        if t.kind == "eof":
            raise self.error("unexpected end of input")
        raise self.error(f"unexpected {t.text!r}")

    def selector(self, name: str | None) -> VectorSelector:
        matchers: list[Matcher] = []
        start = self.peek()
        if self.at_op("{"):
            self.next()
            while not self.at_op("}"):
                lt = self.next()
                if lt.kind != "ident" or not (_LABEL_NAME_RE.fullmatch(lt.text)):
                    raise self.error(f"invalid label name {lt.text!r} in selector", lt)
                op = self.next()
                if op.kind != "op" or op.text not in ("=", "!=", "=~", "!~"):
                    raise self.error(f"expected a label matching operator after {lt.text!r}", op)
                vt = self.next()
                if vt.kind != "string":
                    raise self.error("expected a quoted string as label value", vt)
                assert isinstance(vt.value, str)
                if op.text in ("=~", "!~"):
                    try:
                        re.compile(vt.value)
                    except re.error as exc:
                        raise self.error(f"invalid regular expression {vt.value!r}: {exc}",
                                         vt) from None
                matchers.append(Matcher(lt.text, op.text, vt.value))
                if not self.at_op(","):
                    break
                self.next()
            self.expect_op("}", "to close a label selector")
        if name is not None:
            if any(m.name == NAME for m in matchers):
                raise self.error(f"metric name must not be set twice: {name!r}", start)
            matchers.insert(0, Matcher(NAME, "=", name))
        if not any(not m.matches("") for m in matchers):
            raise self.error("vector selector must contain at least one non-empty matcher", start)
        if name is None:
            names = [m.value for m in matchers if m.name == NAME and m.op == "="]
            name = names[0] if len(names) == 1 else None
        return VectorSelector(name, tuple(matchers))

    def call(self) -> Expr:
        t = self.next()
        name = t.text
        if name not in _FUNCS:
            if name in _KNOWN_UNSUPPORTED:
                raise self.error(f"unsupported function {name!r}".replace("'", '"'), t)
            raise self.error(f'unknown function "{name}"', t)
        self.expect_op("(", "after function name")
        args: list[Expr] = []
        while not self.at_op(")"):
            args.append(self.expr(0))
            if not self.at_op(","):
                break
            self.next()
        self.expect_op(")", f"to close the call of {name}()")
        spec = _FUNCS[name]
        if not (len(spec.args) - spec.optional <= len(args) <= len(spec.args)):
            raise self.error(
                f"expected {len(spec.args)} argument(s) in call to \"{name}\", got {len(args)}", t)
        for want, arg in zip(spec.args, args, strict=False):
            got = _type_of(arg)
            if got != want:
                raise self.error(f'expected type {_TYPE_NAMES[want]} in call to function "{name}",'
                                 f" got {_TYPE_NAMES[got]}", t)
        if name == "label_replace":
            dst = _unparen(args[1])
            assert isinstance(dst, StringLiteral)
            if not _LABEL_NAME_RE.fullmatch(dst.value):
                raise self.error(f"invalid destination label name in label_replace(): "
                                 f"{dst.value}", t)
            rx = _unparen(args[4])
            assert isinstance(rx, StringLiteral)
            try:
                re.compile(rx.value)
            except re.error as exc:
                raise self.error(f"invalid regular expression in label_replace(): {rx.value}: "
                                 f"{exc}", t) from None
        return Call(name, tuple(args))

    def aggregate(self) -> Expr:
        t = self.next()
        op = t.text.lower()
        if op not in _SUPPORTED_AGGREGATORS:
            raise self.error(f'unsupported aggregation "{op}"', t)
        grouping: tuple[str, ...] = ()
        without = False
        seen_mod = False
        if self.at_word("by", "without"):
            without = self.next().text.lower() == "without"
            grouping = self.label_list()
            seen_mod = True
        self.expect_op("(", f"after {op}")
        args: list[Expr] = []
        while not self.at_op(")"):
            args.append(self.expr(0))
            if not self.at_op(","):
                break
            self.next()
        self.expect_op(")", f"to close {op}(...)")
        if self.at_word("by", "without"):
            if seen_mod:
                raise self.error("aggregation modifier given twice")
            without = self.next().text.lower() == "without"
            grouping = self.label_list()
        needs_param = op in ("topk", "bottomk", "quantile")
        if len(args) != (2 if needs_param else 1):
            raise self.error(f"wrong number of arguments for aggregate expression provided, "
                             f"expected {2 if needs_param else 1}, got {len(args)}", t)
        param = args[0] if needs_param else None
        expr = args[-1]
        if _type_of(expr) != V:
            raise self.error(f'expected type instant vector in aggregation expression "{op}", '
                             f"got {_TYPE_NAMES[_type_of(expr)]}", t)
        if param is not None and _type_of(param) != S:
            raise self.error(f'expected type scalar in aggregation parameter of "{op}", '
                             f"got {_TYPE_NAMES[_type_of(param)]}", t)
        return Aggregate(op, expr, param, grouping, without)


def _unparen(e: Expr) -> Expr:
    while isinstance(e, Paren):
        e = e.expr
    return e


@lru_cache(maxsize=4096)
def parse_expr(text: str) -> Expr:
    """Parse a PromQL expression of the supported subset; raise QueryError naming what is wrong."""
    return _Parser(text).parse()


def check_expr(text: str) -> None:
    """Raise QueryError when ``text`` is not valid PromQL of the supported subset."""
    parse_expr(text)


def selectors(expr: Expr) -> list[VectorSelector | MatrixSelector]:
    """Every selector in an expression (a matrix selector's inner selector is not repeated)."""
    out: list[VectorSelector | MatrixSelector] = []

    def walk(e: Expr) -> None:
        if isinstance(e, VectorSelector | MatrixSelector):
            out.append(e)
        elif isinstance(e, Call):
            for a in e.args:
                walk(a)
        elif isinstance(e, Aggregate):
            walk(e.expr)
            if e.param is not None:
                walk(e.param)
        elif isinstance(e, Binary):
            walk(e.lhs)
            walk(e.rhs)
        elif isinstance(e, Paren | Unary):
            walk(e.expr)

    walk(expr)
    return out


# -- evaluation values -----------------------------------------------------------------------


@dataclass
class _Vec:
    """An instant vector: parallel label sets and values (and sample times for timestamp())."""

    labels: list[Labels]
    values: np.ndarray
    times: np.ndarray | None = None  # ms; set only by a plain vector selector

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class _Mat:
    """A range vector at one evaluation time."""

    labels: list[Labels]
    times: list[np.ndarray]  # ms
    values: list[np.ndarray]


@dataclass
class _Series:
    labels: Labels
    ts: np.ndarray  # int64 ms
    vals: np.ndarray  # float64
    stale: np.ndarray  # bool
    any_stale: bool


Value = _Vec | _Mat | float | str

_EMPTY_LABELS: Labels = ()


def _drop_name(lbls: Labels) -> Labels:
    if lbls and any(k == NAME for k, _ in lbls):
        return tuple(p for p in lbls if p[0] != NAME)
    return lbls


def _get(lbls: Labels, name: str) -> str:
    for k, v in lbls:
        if k == name:
            return v
    return ""


def _set_label(lbls: Labels, name: str, value: str) -> Labels:
    kept = [p for p in lbls if p[0] != name]
    if value:
        kept.append((name, value))
        kept.sort()
    return tuple(kept)


def _labels_str(lbls: Labels) -> str:
    name = _get(lbls, NAME)
    inner = ", ".join(f'{k}="{v}"' for k, v in lbls if k != NAME)
    return f"{name}{{{inner}}}"


def _check_unique(labels: Sequence[Labels]) -> None:
    if len(set(labels)) != len(labels):
        raise QueryError("vector cannot contain metrics with the same labelset")


def _fsum(values: Iterable[float]) -> float:
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
        total = 0.0
        for v in values:
            total += v
        return total


# -- range-vector functions (one series' points in, one value or None out) -------------------


def _extrapolated_rate(t: np.ndarray, v: np.ndarray, range_start: int, range_end: int,
                       range_ms: int, is_counter: bool, is_rate: bool) -> float | None:
    n = len(v)
    if n < 2:
        return None
    first = float(v[0])
    result = float(v[-1]) - first
    if is_counter:
        prev = v[:-1]
        drops = prev[v[1:] < prev]
        for p in drops.tolist():
            result += p
    duration_to_start = (int(t[0]) - range_start) / 1000
    duration_to_end = (range_end - int(t[-1])) / 1000
    sampled = (int(t[-1]) - int(t[0])) / 1000
    avg_between = sampled / (n - 1)
    if is_counter and result > 0 and first >= 0:
        duration_to_zero = sampled * (first / result)
        if duration_to_zero < duration_to_start:
            duration_to_start = duration_to_zero
    threshold = avg_between * 1.1
    interval = sampled
    interval += duration_to_start if duration_to_start < threshold else avg_between / 2
    interval += duration_to_end if duration_to_end < threshold else avg_between / 2
    factor = _div(interval, sampled)
    if is_rate:
        factor /= range_ms / 1000
    return result * factor


def _div(a: float, b: float) -> float:
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _instant_value(t: np.ndarray, v: np.ndarray, is_rate: bool) -> float | None:
    if len(v) < 2:
        return None
    last, prev = float(v[-1]), float(v[-2])
    result = last if is_rate and last < prev else last - prev
    interval = int(t[-1]) - int(t[-2])
    if interval == 0:
        return None
    if is_rate:
        result /= interval / 1000
    return result


def _deriv(t: np.ndarray, v: np.ndarray) -> float | None:
    if len(v) < 2:
        return None
    init = float(v[0])
    if bool(np.all(v == init)):
        return math.nan if math.isinf(init) else 0.0
    n = float(len(v))
    x = (t - t[0]).astype(np.float64) / 1e3
    with np.errstate(all="ignore"):
        sum_x = _fsum(x.tolist())
        sum_y = _fsum(v.tolist())
        sum_xy = _fsum((x * v).tolist())
        sum_x2 = _fsum((x * x).tolist())
        cov_xy = sum_xy - sum_x * sum_y / n
        var_x = sum_x2 - sum_x * sum_x / n
    return _div(cov_xy, var_x)


def _quantile(q: float, values: Sequence[float]) -> float:
    if len(values) == 0 or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    nans = [x for x in values if math.isnan(x)]
    rest = sorted(x for x in values if not math.isnan(x))
    ordered = nans + rest
    n = float(len(ordered))
    rank = q * (n - 1)
    lower = max(0.0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return ordered[int(lower)] * (1 - weight) + ordered[int(upper)] * weight


def _welford(values: Iterable[float]) -> tuple[float, float]:
    """(sum of squared deviations, count) the way Prometheus's stddev_over_time computes it."""
    count = 0.0
    mean = c_mean = aux = c_aux = 0.0
    for x in values:
        count += 1
        delta = x - (mean + c_mean)
        mean, c_mean = _kahan_inc(delta / count, mean, c_mean)
        aux, c_aux = _kahan_inc(delta * (x - (mean + c_mean)), aux, c_aux)
    return aux + c_aux, count


def _kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def _avg_over_time(v: np.ndarray) -> float:
    vals = v.tolist()
    if any(math.isinf(x) or math.isnan(x) for x in vals):
        mean = c = count = 0.0
        for x in vals:
            count += 1
            if math.isinf(mean):
                if math.isinf(x) and (mean > 0) == (x > 0):
                    continue
                if not math.isinf(x) and not math.isnan(x):
                    continue
            mean, c = _kahan_inc(x / count - mean / count, mean, c)
        return mean if math.isinf(mean) else mean + c
    return _fsum(vals) / len(vals)


def _max_over(vals: list[float]) -> float:
    m = vals[0]
    for x in vals:
        if x > m or math.isnan(m):
            m = x
    return m


def _min_over(vals: list[float]) -> float:
    m = vals[0]
    for x in vals:
        if x < m or math.isnan(m):
            m = x
    return m


def _sum_over(vals: list[float]) -> float:
    total = c = 0.0
    if not any(math.isinf(x) or math.isnan(x) for x in vals):
        return _fsum(vals)
    for x in vals:
        total, c = _kahan_inc(x, total, c)
    return total if math.isinf(total) else total + c


def _changes(vals: list[float]) -> float:
    n = 0
    prev = vals[0]
    for cur in vals[1:]:
        if cur != prev and not (math.isnan(cur) and math.isnan(prev)):
            n += 1
        prev = cur
    return float(n)


def _resets(v: np.ndarray) -> float:
    return float(np.count_nonzero(v[1:] < v[:-1]))


_OVER_TIME: dict[str, Callable[[np.ndarray], float]] = {
    "avg_over_time": _avg_over_time,
    "min_over_time": lambda v: _min_over(v.tolist()),
    "max_over_time": lambda v: _max_over(v.tolist()),
    "sum_over_time": lambda v: _sum_over(v.tolist()),
    "count_over_time": lambda v: float(len(v)),
    "last_over_time": lambda v: float(v[-1]),
    "present_over_time": lambda v: 1.0,
    "stddev_over_time": lambda v: math.sqrt(_div(*_welford(v.tolist()))),
    "stdvar_over_time": lambda v: _div(*_welford(v.tolist())),
    "changes": lambda v: _changes(v.tolist()),
    "resets": _resets,
}


# -- instant-vector helpers ------------------------------------------------------------------


def _bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets, key=lambda b: b[0])
    if not math.isinf(buckets[-1][0]) or buckets[-1][0] < 0:
        return math.nan
    merged: list[list[float]] = []
    for ub, count in buckets:
        if merged and merged[-1][0] == ub:
            merged[-1][1] += count
        else:
            merged.append([ub, count])
    top = merged[0][1]
    for b in merged[1:]:
        if b[1] > top:
            top = b[1]
        elif b[1] < top:
            b[1] = top
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    idx = len(merged) - 1
    for i in range(len(merged) - 1):
        if merged[i][1] >= rank:
            idx = i
            break
    if idx == len(merged) - 1:
        return merged[-2][0]
    if idx == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start = 0.0
    end = merged[idx][0]
    count = merged[idx][1]
    if idx > 0:
        start = merged[idx - 1][0]
        count -= merged[idx - 1][1]
        rank -= merged[idx - 1][1]
    return start + (end - start) * _div(rank, count)


_GO_FLOAT_RE = re.compile(r"[+-]?(?:inf|infinity|nan|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
                          r"|0x[0-9a-f]*\.?[0-9a-f]*(?:p[+-]?\d+)?)", re.IGNORECASE)


def _parse_go_float(text: str) -> float | None:
    if not _GO_FLOAT_RE.fullmatch(text):
        return None
    try:
        if "x" in text.lower():
            return float.fromhex(text)
        return float(text)
    except ValueError:
        return None


_GO_EXPAND_RE = re.compile(r"\$(\$|\{[A-Za-z0-9_]*\}|[A-Za-z0-9_]+)")


def _go_expand(template: str, m: re.Match[str]) -> str:
    """Go's regexp.Expand: ``$1``, ``${1}``, ``$name``; ``$1x`` names a group "1x"."""

    def sub(g: re.Match[str]) -> str:
        ref = g.group(1)
        if ref == "$":
            return "$"
        if ref.startswith("{"):
            ref = ref[1:-1]
            if not ref:
                return g.group(0)
        try:
            val = m.group(int(ref)) if ref.isdigit() else m.group(ref)
        except IndexError:
            return ""
        return val or ""

    return _GO_EXPAND_RE.sub(sub, template)


def _binop_values(op: str, lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        if op == "+":
            return lhs + rhs
        if op == "-":
            return lhs - rhs
        if op == "*":
            return lhs * rhs
        if op == "/":
            return np.divide(lhs, rhs)
        if op == "%":
            return np.fmod(lhs, rhs)
        if op == "^":
            return np.power(lhs, rhs)
    raise QueryError(f"operator {op!r} is not arithmetic")


def _compare(op: str, lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        if op == "==":
            return lhs == rhs
        if op == "!=":
            return lhs != rhs
        if op == ">":
            return lhs > rhs
        if op == "<":
            return lhs < rhs
        if op == ">=":
            return lhs >= rhs
        return lhs <= rhs


def _scalar_binop(op: str, a: float, b: float) -> float:
    la, lb = np.array([a]), np.array([b])
    if op in _COMPARISONS:
        return 1.0 if bool(_compare(op, la, lb)[0]) else 0.0
    return float(_binop_values(op, la, lb)[0])


# -- the engine ------------------------------------------------------------------------------


def _to_ms(seconds: float) -> int:
    return round(seconds * 1000)


class _WindowCache:
    """Per matcher set, the samples fetched so far; later windows fetch only what is missing.

    A window that starts earlier than the cached one fetches the missing head; the newest
    ``tail_ms`` of the cache is always fetched again, so samples written up to that much late
    (a scrape committing after an evaluation started) are seen. Data older than the widest
    window asked for is dropped as windows slide forward.
    """

    def __init__(self, reader: SeriesReader, tail_ms: int) -> None:
        self.reader = reader
        self.tail_ms = tail_ms
        self.entries: dict[tuple[Matcher, ...], _CacheEntry] = {}

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> list[SeriesData]:
        key = tuple(matchers)
        entry = self.entries.get(key)
        if entry is None:
            entry = _CacheEntry(start_ms, end_ms)
            entry.merge(self.reader.select(matchers, start_ms, end_ms), start_ms, end_ms)
            self.entries[key] = entry
        else:
            if start_ms < entry.start:
                head_end = entry.start - 1
                entry.merge(self.reader.select(matchers, start_ms, head_end), start_ms, head_end)
                entry.start = start_ms
            tail_from = max(entry.start, entry.end - self.tail_ms)
            if end_ms >= tail_from:
                tail_to = max(end_ms, entry.end)
                entry.merge(self.reader.select(matchers, tail_from, tail_to), tail_from, tail_to)
                entry.end = tail_to
        entry.widest = max(entry.widest, end_ms - start_ms)
        entry.trim(end_ms - entry.widest)
        return entry.window(start_ms, end_ms)


class _CacheEntry:
    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.widest = end - start
        self.series: dict[tuple[str, tuple[tuple[str, str], ...]],
                          tuple[SeriesData, np.ndarray, np.ndarray]] = {}

    def merge(self, fetched: list[SeriesData], lo: int, hi: int) -> None:
        """Replace the cached samples in [lo, hi] by ``fetched``."""
        got = {(sd.name, tuple(sorted(sd.labels.items()))): sd for sd in fetched}
        for key in set(self.series) | set(got):
            old = self.series.get(key)
            sd = got.get(key)
            parts_t: list[np.ndarray] = []
            parts_v: list[np.ndarray] = []
            if old is not None:
                _, ts, vals = old
                keep_lo = ts < lo
                keep_hi = ts > hi
                parts_t.append(ts[keep_lo])
                parts_v.append(vals[keep_lo])
            if sd is not None:
                parts_t.append(np.asarray(sd.timestamps, dtype=np.int64))
                parts_v.append(np.asarray(sd.values, dtype=np.float64))
            if old is not None:
                parts_t.append(ts[keep_hi])
                parts_v.append(vals[keep_hi])
            proto = sd if sd is not None else old[0]  # type: ignore[index]
            self.series[key] = (proto, np.concatenate(parts_t), np.concatenate(parts_v))

    def trim(self, before: int) -> None:
        if before <= self.start:
            return
        self.start = before
        for key, (proto, ts, vals) in list(self.series.items()):
            i = int(np.searchsorted(ts, before, side="left"))
            if i:
                self.series[key] = (proto, ts[i:], vals[i:])

    def window(self, lo: int, hi: int) -> list[SeriesData]:
        out = []
        for proto, ts, vals in self.series.values():
            a = int(np.searchsorted(ts, lo, side="left"))
            b = int(np.searchsorted(ts, hi, side="right"))
            if a < b:
                out.append(SeriesData(proto.name, proto.labels, ts[a:b], vals[a:b]))
        return out


class _Data:
    """Fetched series per selector, kept in memory for the evaluation steps."""

    def __init__(self, reader: SeriesReader) -> None:
        self.reader = reader
        self.series: dict[Expr, list[_Series]] = {}

    def fetch(self, sel: VectorSelector | MatrixSelector, start_ms: int, end_ms: int) -> None:
        if sel in self.series:
            return
        vs = sel.selector if isinstance(sel, MatrixSelector) else sel
        out: list[_Series] = []
        for sd in self.reader.select(list(vs.matchers), start_ms, end_ms):
            ts = np.asarray(sd.timestamps, dtype=np.int64)
            vals = np.asarray(sd.values, dtype=np.float64)
            if len(ts) == 0:
                continue
            stale = vals.view(np.uint64) == _STALE_BITS
            lbls = tuple(sorted((k, v) for k, v in {**sd.labels, NAME: sd.name}.items() if v))
            out.append(_Series(lbls, ts, vals, stale, bool(stale.any())))
        # Prometheus hands series to the engine sorted by label set; sums follow that order
        out.sort(key=lambda s: s.labels)
        self.series[sel] = out


class _Evaluator:
    """Evaluates one expression at one timestamp over prefetched data."""

    def __init__(self, data: _Data, ts_ms: int, lookback_ms: int) -> None:
        self.data = data
        self.ts = ts_ms
        self.lookback = lookback_ms

    def eval(self, e: Expr) -> Value:
        if isinstance(e, NumberLiteral):
            return e.value
        if isinstance(e, StringLiteral):
            return e.value
        if isinstance(e, Paren):
            return self.eval(e.expr)
        if isinstance(e, VectorSelector):
            return self.vector_selector(e)
        if isinstance(e, MatrixSelector):
            return self.matrix_selector(e)
        if isinstance(e, Unary):
            val = self.eval(e.expr)
            if isinstance(val, float):
                return -val if e.op == "-" else val
            assert isinstance(val, _Vec)
            if e.op == "+":
                return val
            labels = [_drop_name(lb) for lb in val.labels]
            _check_unique(labels)
            return _Vec(labels, -val.values)
        if isinstance(e, Binary):
            return self.binary(e)
        if isinstance(e, Aggregate):
            return self.aggregate(e)
        if isinstance(e, Call):
            return self.call(e)
        raise QueryError(f"cannot evaluate {type(e).__name__}")

    # selectors
    def vector_selector(self, vs: VectorSelector) -> _Vec:
        ref = self.ts - vs.offset_ms
        low = ref - self.lookback
        labels: list[Labels] = []
        values: list[float] = []
        times: list[int] = []
        for s in self.data.series.get(vs, ()):
            ts = s.ts
            if ts[-1] <= ref:
                i = len(ts) - 1
            else:
                i = int(np.searchsorted(ts, ref, side="right")) - 1
                if i < 0:
                    continue
            t = int(ts[i])
            if t < low or s.stale[i]:
                continue
            labels.append(s.labels)
            values.append(float(s.vals[i]))
            times.append(t)
        return _Vec(labels, np.array(values, dtype=np.float64), np.array(times, dtype=np.int64))

    def matrix_selector(self, ms: MatrixSelector) -> _Mat:
        maxt = self.ts - ms.selector.offset_ms
        mint = maxt - ms.range_ms
        out = _Mat([], [], [])
        for s in self.data.series.get(ms, ()):
            ts = s.ts
            a = int(np.searchsorted(ts, mint, side="left"))
            b = len(ts) if ts[-1] <= maxt else int(np.searchsorted(ts, maxt, side="right"))
            if a >= b:
                continue
            t, v = ts[a:b], s.vals[a:b]
            if s.any_stale:
                keep = ~s.stale[a:b]
                if not keep.all():
                    t, v = t[keep], v[keep]
                    if len(t) == 0:
                        continue
            out.labels.append(s.labels)
            out.times.append(t)
            out.values.append(v)
        return out

    # functions
    def call(self, e: Call) -> Value:
        f = e.func
        args = [_unparen(a) for a in e.args]
        if f == "time":
            return self.ts / 1000
        matrix_idx = next((i for i, a in enumerate(args) if isinstance(a, MatrixSelector)), None)
        if matrix_idx is not None:
            return self.range_function(f, args, matrix_idx)
        if f == "timestamp":
            val = self.eval(args[0])
            assert isinstance(val, _Vec)
            if isinstance(args[0], VectorSelector) and val.times is not None:
                stamps = val.times.astype(np.float64) / 1000
            else:
                stamps = np.full(len(val), self.ts / 1000)
            return self._simple_result(val, stamps, drop=True)
        if f == "vector":
            s = self.eval(args[0])
            assert isinstance(s, float)
            return _Vec([_EMPTY_LABELS], np.array([s]))
        if f == "scalar":
            val = self.eval(args[0])
            assert isinstance(val, _Vec)
            return float(val.values[0]) if len(val) == 1 else math.nan
        if f == "absent":
            val = self.eval(args[0])
            assert isinstance(val, _Vec)
            if len(val):
                return _Vec([], np.empty(0))
            return _Vec([_absent_labels(args[0])], np.array([1.0]))
        if f == "histogram_quantile":
            q = self.eval(args[0])
            val = self.eval(args[1])
            assert isinstance(q, float) and isinstance(val, _Vec)
            return self.histogram_quantile(q, val)
        if f == "label_replace":
            val = self.eval(args[0])
            assert isinstance(val, _Vec)
            strs = [self.eval(a) for a in args[1:]]
            assert all(isinstance(x, str) for x in strs)
            return _label_replace(val, *[str(x) for x in strs])
        if f in ("sort", "sort_desc"):
            val = self.eval(args[0])
            assert isinstance(val, _Vec)
            return _Vec(val.labels, val.values)
        val = self.eval(args[0])
        assert isinstance(val, _Vec)
        x = val.values
        with np.errstate(all="ignore"):
            if f in ("clamp", "clamp_min", "clamp_max"):
                bounds = [self.eval(a) for a in args[1:]]
                assert all(isinstance(b, float) for b in bounds)
                if f == "clamp":
                    lo, hi = float(bounds[0]), float(bounds[1])  # type: ignore[arg-type]
                    if hi < lo:
                        return _Vec([], np.empty(0))
                    out = np.maximum(lo, np.minimum(hi, x))
                elif f == "clamp_min":
                    out = np.maximum(float(bounds[0]), x)  # type: ignore[arg-type]
                else:
                    out = np.minimum(float(bounds[0]), x)  # type: ignore[arg-type]
            elif f == "round":
                to = 1.0
                if len(args) > 1:
                    t = self.eval(args[1])
                    assert isinstance(t, float)
                    to = t
                inv = 1.0 / to if to != 0 else math.copysign(math.inf, to)
                out = np.floor(x * inv + 0.5) / inv
            else:
                fn = {"abs": np.abs, "ceil": np.ceil, "floor": np.floor, "sqrt": np.sqrt,
                      "exp": np.exp, "ln": np.log, "log2": np.log2, "log10": np.log10}[f]
                out = fn(x)
        return self._simple_result(val, out, drop=True)

    @staticmethod
    def _simple_result(val: _Vec, values: np.ndarray, drop: bool) -> _Vec:
        labels = [_drop_name(lb) for lb in val.labels] if drop else list(val.labels)
        _check_unique(labels)
        return _Vec(labels, np.asarray(values, dtype=np.float64))

    def range_function(self, f: str, args: list[Expr], idx: int) -> _Vec:
        ms = args[idx]
        assert isinstance(ms, MatrixSelector)
        mat = self.matrix_selector(ms)
        if f == "absent_over_time":
            if mat.labels:
                return _Vec([], np.empty(0))
            return _Vec([_absent_labels(ms)], np.array([1.0]))
        q = 0.0
        if f == "quantile_over_time":
            qv = self.eval(args[0])
            assert isinstance(qv, float)
            q = qv
        maxt = self.ts - ms.selector.offset_ms
        mint = maxt - ms.range_ms
        labels: list[Labels] = []
        values: list[float] = []
        for lbls, t, v in zip(mat.labels, mat.times, mat.values, strict=True):
            res: float | None
            if f == "rate":
                res = _extrapolated_rate(t, v, mint, maxt, ms.range_ms, True, True)
            elif f == "increase":
                res = _extrapolated_rate(t, v, mint, maxt, ms.range_ms, True, False)
            elif f == "delta":
                res = _extrapolated_rate(t, v, mint, maxt, ms.range_ms, False, False)
            elif f == "irate":
                res = _instant_value(t, v, True)
            elif f == "idelta":
                res = _instant_value(t, v, False)
            elif f == "deriv":
                res = _deriv(t, v)
            elif f == "quantile_over_time":
                res = _quantile(q, v.tolist())
            else:
                res = _OVER_TIME[f](v)
            if res is None:
                continue
            labels.append(lbls if f == "last_over_time" else _drop_name(lbls))
            values.append(res)
        _check_unique(labels)
        return _Vec(labels, np.array(values, dtype=np.float64))

    def histogram_quantile(self, q: float, val: _Vec) -> _Vec:
        groups: dict[Labels, tuple[Labels, list[tuple[float, float]]]] = {}
        for lbls, v in zip(val.labels, val.values.tolist(), strict=True):
            le = _parse_go_float(_get(lbls, "le"))
            if le is None:
                continue
            key = tuple(p for p in lbls if p[0] != "le")
            if key not in groups:
                groups[key] = (tuple(p for p in key if p[0] != NAME), [])
            groups[key][1].append((le, v))
        labels = [out for out, _ in groups.values()]
        values = [_bucket_quantile(q, b) for _, b in groups.values()]
        _check_unique(labels)
        return _Vec(labels, np.array(values, dtype=np.float64))

    # aggregation
    def aggregate(self, e: Aggregate) -> _Vec:
        param: float = 0.0
        if e.param is not None:
            p = self.eval(e.param)
            assert isinstance(p, float)
            param = p
        val = self.eval(e.expr)
        assert isinstance(val, _Vec)
        grouping = tuple(sorted(e.grouping))
        gset = set(grouping)
        groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for i, lbls in enumerate(val.labels):
            if e.without:
                key = tuple(p for p in lbls if p[0] != NAME and p[0] not in gset)
            else:
                key = tuple(p for p in lbls if p[0] in gset)
            groups.setdefault(key, []).append(i)
        op = e.op
        labels: list[Labels] = []
        values: list[float] = []
        vals = val.values.tolist()
        if op in ("topk", "bottomk"):
            if not (-(2.0**63) <= param <= 2.0**63 - 1) or math.isnan(param):
                raise QueryError(f"Scalar value {param} overflows int64")
            k = int(param)
            if k < 1:
                return _Vec([], np.empty(0))
            for idxs in groups.values():
                if op == "topk":
                    ordered = sorted(idxs, key=lambda i: (math.isnan(vals[i]), -vals[i]
                                                          if not math.isnan(vals[i]) else 0))
                else:
                    ordered = sorted(idxs, key=lambda i: (math.isnan(vals[i]), vals[i]
                                                          if not math.isnan(vals[i]) else 0))
                for i in ordered[:k]:
                    labels.append(val.labels[i])
                    values.append(vals[i])
            return _Vec(labels, np.array(values, dtype=np.float64))
        for key, idxs in groups.items():
            xs = [vals[i] for i in idxs]
            if op == "sum":
                r = 0.0
                for x in xs:
                    r += x
            elif op == "avg":
                mean = xs[0]
                for n, x in enumerate(xs[1:], start=2):
                    if math.isinf(mean):
                        if math.isinf(x) and (mean > 0) == (x > 0):
                            continue
                        if not math.isinf(x) and not math.isnan(x):
                            continue
                    mean += x / n - mean / n
                r = mean
            elif op == "count":
                r = float(len(xs))
            elif op == "group":
                r = 1.0
            elif op == "max":
                r = xs[0]
                for x in xs[1:]:
                    if r < x or math.isnan(r):
                        r = x
            elif op == "min":
                r = xs[0]
                for x in xs[1:]:
                    if r > x or math.isnan(r):
                        r = x
            elif op in ("stddev", "stdvar"):
                mean = xs[0]
                acc = 0.0
                for n, x in enumerate(xs[1:], start=2):
                    delta = x - mean
                    mean += delta / n
                    acc += delta * (x - mean)
                r = acc / len(xs)
                if op == "stddev":
                    r = math.sqrt(r) if r >= 0 or math.isnan(r) else math.nan
            elif op == "quantile":
                r = _quantile(param, xs)
            else:
                raise QueryError(f'unsupported aggregation "{op}"')
            if e.without:
                out = key
            elif grouping:
                out = tuple(p for p in val.labels[idxs[0]] if p[0] in gset)
            else:
                out = _EMPTY_LABELS
            labels.append(out)
            values.append(r)
        return _Vec(labels, np.array(values, dtype=np.float64))

    # binary operators
    def binary(self, e: Binary) -> Value:
        lhs = self.eval(e.lhs)
        rhs = self.eval(e.rhs)
        op = e.op
        if isinstance(lhs, float) and isinstance(rhs, float):
            return _scalar_binop(op, lhs, rhs)
        if isinstance(lhs, _Vec) and isinstance(rhs, _Vec):
            assert e.matching is not None
            if op in _SET_OPS:
                return _set_op(op, lhs, rhs, e.matching)
            return _vector_binop(op, lhs, rhs, e.matching, e.return_bool)
        if isinstance(lhs, _Vec) and isinstance(rhs, float):
            return _vector_scalar(op, lhs, rhs, False, e.return_bool)
        if isinstance(lhs, float) and isinstance(rhs, _Vec):
            return _vector_scalar(op, rhs, lhs, True, e.return_bool)
        raise QueryError(f"invalid operand types for {op!r}")


def _absent_labels(e: Expr) -> Labels:
    e = _unparen(e)
    if isinstance(e, MatrixSelector):
        e = e.selector
    if not isinstance(e, VectorSelector):
        return _EMPTY_LABELS
    out: dict[str, str] = {}
    has: set[str] = set()
    for m in e.matchers:
        if m.name == NAME:
            continue
        if m.op == "=" and m.name not in has:
            if m.value:
                out[m.name] = m.value
            else:
                out.pop(m.name, None)
            has.add(m.name)
        else:
            out.pop(m.name, None)
    return tuple(sorted(out.items()))


def _label_replace(val: _Vec, dst: str, repl: str, src: str, regex: str) -> _Vec:
    rx = re.compile(f"^(?:{regex})$", re.DOTALL)
    labels: list[Labels] = []
    for lbls in val.labels:
        m = rx.match(_get(lbls, src))
        if m is None:
            labels.append(lbls)
        else:
            labels.append(_set_label(lbls, dst, _go_expand(repl, m)))
    _check_unique(labels)
    return _Vec(labels, val.values.copy())


def _signature(lbls: Labels, matching: VectorMatching) -> Labels:
    if matching.on:
        names = matching.labels
        return tuple(p for p in lbls if p[0] in names)
    names = matching.labels
    return tuple(p for p in lbls if p[0] != NAME and p[0] not in names)


def _set_op(op: str, lhs: _Vec, rhs: _Vec, matching: VectorMatching) -> _Vec:
    if op == "and":
        if not len(lhs) or not len(rhs):
            return _Vec([], np.empty(0))
        right = {_signature(lb, matching) for lb in rhs.labels}
        keep = [i for i, lb in enumerate(lhs.labels) if _signature(lb, matching) in right]
        return _Vec([lhs.labels[i] for i in keep], lhs.values[keep])
    if op == "or":
        if not len(lhs):
            return _Vec(list(rhs.labels), rhs.values)
        if not len(rhs):
            return _Vec(list(lhs.labels), lhs.values)
        left = {_signature(lb, matching) for lb in lhs.labels}
        add = [j for j, lb in enumerate(rhs.labels) if _signature(lb, matching) not in left]
        return _Vec(list(lhs.labels) + [rhs.labels[j] for j in add],
                    np.concatenate([lhs.values, rhs.values[add]]))
    # unless
    if not len(lhs) or not len(rhs):
        return _Vec(list(lhs.labels), lhs.values)
    right = {_signature(lb, matching) for lb in rhs.labels}
    keep = [i for i, lb in enumerate(lhs.labels) if _signature(lb, matching) not in right]
    return _Vec([lhs.labels[i] for i in keep], lhs.values[keep])


def _result_metric(ls: Labels, rs: Labels, op: str, matching: VectorMatching) -> Labels:
    d = dict(ls)
    if op in _ARITHMETIC:
        d.pop(NAME, None)
    if matching.card == "one-to-one":
        if matching.on:
            d = {k: v for k, v in d.items() if k in matching.labels}
        else:
            for k in matching.labels:
                d.pop(k, None)
    for ln in matching.include:
        v = _get(rs, ln)
        if v:
            d[ln] = v
        else:
            d.pop(ln, None)
    return tuple(sorted(d.items()))


def _vector_binop(op: str, lhs: _Vec, rhs: _Vec, matching: VectorMatching,
                  return_bool: bool) -> _Vec:
    if not len(lhs) or not len(rhs):
        return _Vec([], np.empty(0))
    one_to_many = matching.card == "one-to-many"
    if one_to_many:
        lhs, rhs = rhs, lhs
    right: dict[Labels, int] = {}
    for j, lb in enumerate(rhs.labels):
        sig = _signature(lb, matching)
        if sig in right:
            side = "left" if one_to_many else "right"
            raise QueryError(
                f"found duplicate series for the match group {_labels_str(sig)} on the {side} "
                f"hand-side of the operation: [{_labels_str(lb)}, "
                f"{_labels_str(rhs.labels[right[sig]])}];many-to-many matching not allowed: "
                "matching labels must be unique on one side")
        right[sig] = j
    li: list[int] = []
    ri: list[int] = []
    sigs: list[Labels] = []
    for i, lb in enumerate(lhs.labels):
        sig = _signature(lb, matching)
        match = right.get(sig)
        if match is not None:
            li.append(i)
            ri.append(match)
            sigs.append(sig)
    if not li:
        return _Vec([], np.empty(0))
    vl = lhs.values[li]
    vr = rhs.values[ri]
    if one_to_many:
        vl, vr = vr, vl
    if op in _COMPARISONS:
        keep = _compare(op, vl, vr)
        values = np.where(keep, 1.0, 0.0) if return_bool else vl
    else:
        values = _binop_values(op, vl, vr)
        keep = np.ones(len(li), dtype=bool)
    labels: list[Labels] = []
    out_values: list[float] = []
    matched: dict[Labels, set[Labels] | None] = {}
    keep_list = keep.tolist()
    vals = values.tolist()
    for n, (i, j) in enumerate(zip(li, ri, strict=True)):
        if not return_bool and not keep_list[n]:
            continue
        metric = _result_metric(lhs.labels[i], rhs.labels[j], op, matching)
        if return_bool:
            metric = _drop_name(metric)
        sig = sigs[n]
        if matching.card == "one-to-one":
            if sig in matched:
                raise QueryError("multiple matches for labels: many-to-one matching must be "
                                 "explicit (group_left/group_right)")
            matched[sig] = None
        else:
            inserted = matched.get(sig)
            if inserted is None:
                inserted = set()
                matched[sig] = inserted
            elif metric in inserted:
                raise QueryError("multiple matches for labels: grouping labels must ensure "
                                 "unique matches")
            inserted.add(metric)
        labels.append(metric)
        out_values.append(vals[n])
    return _Vec(labels, np.array(out_values, dtype=np.float64))


def _vector_scalar(op: str, vec: _Vec, scalar: float, swap: bool, return_bool: bool) -> _Vec:
    s = np.full(len(vec), scalar)
    lv, rv = (s, vec.values) if swap else (vec.values, s)
    if op in _COMPARISONS:
        keep = _compare(op, lv, rv)
        if return_bool:
            values = np.where(keep, 1.0, 0.0)
            keep = np.ones(len(vec), dtype=bool)
        else:
            values = vec.values
    else:
        values = _binop_values(op, lv, rv)
        keep = np.ones(len(vec), dtype=bool)
    drop = op in _ARITHMETIC or return_bool
    idx = np.flatnonzero(keep).tolist()
    labels = [_drop_name(vec.labels[i]) if drop else vec.labels[i] for i in idx]
    return _Vec(labels, values[idx] if len(idx) != len(vec) else values)


# -- public engine ---------------------------------------------------------------------------


def _to_elements(vec: _Vec) -> tuple[Element, ...]:
    return tuple(Element(dict(lb), float(v)) for lb, v in zip(vec.labels, vec.values.tolist(),
                                                               strict=True))


class Engine:
    """Evaluates PromQL over a SeriesReader; ``lookback_delta`` in seconds (Prometheus: 5m).

    With ``cache=True`` the engine keeps the samples it read between queries and fetches only
    what a new window adds (plus the newest ``cache_tail`` seconds again, for samples written
    late). That suits a long-lived rule evaluator over a store that only grows at its end
    (the daemon's scrape loop); do not use it over a reader whose older data changes
    (backfill), because a cached window does not see writes older than ``cache_tail``.
    """

    def __init__(self, reader: SeriesReader, lookback_delta: float = 300.0, *,
                 cache: bool = False, cache_tail: float = 300.0) -> None:
        self.lookback_delta = lookback_delta
        self.source = reader
        self.reader: SeriesReader = _WindowCache(reader, _to_ms(cache_tail)) if cache else reader

    def _expr(self, expr: str | Expr) -> Expr:
        return parse_expr(expr) if isinstance(expr, str) else expr

    def _prefetch(self, e: Expr, start_ms: int, end_ms: int) -> _Data:
        data = _Data(self.reader)
        lookback = _to_ms(self.lookback_delta)
        for sel in selectors(e):
            if isinstance(sel, MatrixSelector):
                off, span = sel.selector.offset_ms, sel.range_ms
            else:
                off, span = sel.offset_ms, lookback
            data.fetch(sel, start_ms - off - span, end_ms - off)
        return data

    def instant(self, expr: str | Expr, ts: float) -> QueryResult:
        """Evaluate at ``ts`` (unix seconds), like Prometheus's /api/v1/query."""
        e = self._expr(expr)
        ts_ms = _to_ms(ts)
        data = self._prefetch(e, ts_ms, ts_ms)
        val = _Evaluator(data, ts_ms, _to_ms(self.lookback_delta)).eval(e)
        if isinstance(val, float):
            return QueryResult("scalar", scalar=val)
        if isinstance(val, str):
            return QueryResult("string", string=val)
        if isinstance(val, _Mat):
            return QueryResult("matrix", matrix=tuple(
                RangeSeries(dict(lb), t.astype(np.float64) / 1000, v.copy())
                for lb, t, v in zip(val.labels, val.times, val.values, strict=True)))
        return QueryResult("vector", vector=_to_elements(val))

    def range(self, expr: str | Expr, start: float, end: float,
              step: float) -> tuple[RangeSeries, ...]:
        """Evaluate at start, start+step, ... <= end, like /api/v1/query_range."""
        if step <= 0:
            raise QueryError("zero or negative query resolution step widths are not accepted")
        e = self._expr(expr)
        t = _type_of(e)
        if t not in (S, V):
            raise QueryError(f"invalid expression type {_TYPE_NAMES[t]!r} for range query, "
                             "must be scalar or instant vector")
        start_ms, end_ms, step_ms = _to_ms(start), _to_ms(end), _to_ms(step)
        data = self._prefetch(e, start_ms, end_ms)
        lookback = _to_ms(self.lookback_delta)
        acc: dict[Labels, tuple[list[int], list[float]]] = {}
        ts = start_ms
        while ts <= end_ms:
            val = _Evaluator(data, ts, lookback).eval(e)
            if isinstance(val, float):
                pts = acc.setdefault(_EMPTY_LABELS, ([], []))
                pts[0].append(ts)
                pts[1].append(val)
            else:
                assert isinstance(val, _Vec)
                for lb, v in zip(val.labels, val.values.tolist(), strict=True):
                    pts = acc.setdefault(lb, ([], []))
                    pts[0].append(ts)
                    pts[1].append(v)
            ts += step_ms
        return tuple(
            RangeSeries(dict(lb), np.array(tss, dtype=np.float64) / 1000,
                        np.array(vs, dtype=np.float64))
            for lb, (tss, vs) in acc.items())
