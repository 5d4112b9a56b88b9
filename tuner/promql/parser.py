"""The PromQL parser: tokens to a syntax tree, with Prometheus 2.42's grammar and type checks.

Recursive descent with precedence climbing: ``^`` right-associative, unary minus binding tighter
than ``*`` but looser than ``^``, ``bool``, ``on``/``ignoring``, ``group_left``/``group_right``,
``offset`` and ``@`` (a time, ``start()``, ``end()``), range selectors and subqueries
(``expr[range:step]``). Type errors and everything outside the subset are refused at parse time
with a :class:`~tuner.errors.QueryError` naming the construct and its position (``unsupported
function "histogram_sum"``, ``no @ modifiers allowed before range``, ...).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from functools import lru_cache

from tuner.errors import QueryError
from tuner.promql.lexer import LABEL_NAME_RE, Token, TokenKind, go_regexp, lex
from tuner.promql.syntax import (
    AGGREGATORS,
    COMPARISONS,
    FUNCS,
    KNOWN_UNSUPPORTED,
    NAME,
    PRECEDENCE,
    SET_OPS,
    STR,
    SUPPORTED_AGGREGATORS,
    TYPE_NAMES,
    Aggregate,
    AtEdge,
    Binary,
    Call,
    Cardinality,
    Expr,
    MatrixSelector,
    NumberLiteral,
    Paren,
    S,
    StringLiteral,
    Subquery,
    Unary,
    V,
    VectorMatching,
    VectorSelector,
    type_of,
    unparen,
)
from tuner.store import Matcher


class _Parser:
    """Recursive descent for primaries, precedence climbing for binary operators."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = lex(text)
        self.i = 0

    # token helpers
    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Token:
        t = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        return t

    def at_op(self, *ops: str) -> bool:
        t = self.peek()
        return t.kind == TokenKind.OP and t.text in ops

    def at_word(self, *words: str) -> bool:
        t = self.peek()
        return t.kind == TokenKind.IDENT and t.text.lower() in words

    def expect_op(self, op: str, what: str) -> Token:
        t = self.next()
        if t.kind != TokenKind.OP or t.text != op:
            found = "end of input" if t.kind == TokenKind.EOF else repr(t.text)
            raise QueryError(f"expected {op!r} {what}, found {found} at position {t.pos}")
        return t

    def arguments(self, closing: str) -> list[Expr]:
        """Comma-separated expressions up to and including the ``)`` (``closing`` says which)."""
        args: list[Expr] = []
        while not self.at_op(")"):
            args.append(self.expr(0))
            if not self.at_op(","):
                break
            self.next()
        self.expect_op(")", closing)
        return args

    def error(self, msg: str, tok: Token | None = None) -> QueryError:
        tok = tok or self.peek()
        return QueryError(f"{msg} at position {tok.pos}")

    # grammar
    def parse(self) -> Expr:
        if self.peek().kind == TokenKind.EOF:
            raise QueryError("empty expression")
        e = self.expr(0)
        t = self.peek()
        if t.kind != TokenKind.EOF:
            raise self.error(f"unexpected {t.text!r}")
        return e

    def binop_at(self) -> str | None:
        t = self.peek()
        if t.kind == TokenKind.OP and t.text in PRECEDENCE:
            return t.text
        if t.kind == TokenKind.IDENT and t.text.lower() in ("and", "or", "unless", "atan2"):
            return t.text.lower()
        return None

    def expr(self, min_prec: int) -> Expr:
        lhs = self.unary()
        while True:
            op = self.binop_at()
            if op is None or PRECEDENCE[op] < min_prec:
                return lhs
            optok = self.next()
            return_bool = False
            if self.at_word("bool"):
                self.next()
                if op not in COMPARISONS:
                    raise self.error("bool modifier can only be used on comparison operators")
                return_bool = True
            matching = self.matching(op)
            prec = PRECEDENCE[op]
            rhs = self.expr(prec if op == "^" else prec + 1)
            lhs = self.make_binary(op, lhs, rhs, return_bool, matching, optok)

    def matching(self, op: str) -> VectorMatching | None:
        on = None
        labels: tuple[str, ...] = ()
        if self.at_word("on", "ignoring"):
            on = self.next().text.lower() == "on"
            labels = self.label_list()
        card = Cardinality.MANY_TO_MANY if op in SET_OPS else Cardinality.ONE_TO_ONE
        include: tuple[str, ...] = ()
        if self.at_word("group_left", "group_right"):
            t = self.next()
            if op in SET_OPS:
                raise self.error(f"no grouping allowed for {op!r} operation", t)
            card = (Cardinality.MANY_TO_ONE if t.text.lower() == "group_left"
                    else Cardinality.ONE_TO_MANY)
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
            if t.kind != TokenKind.IDENT or not LABEL_NAME_RE.fullmatch(t.text):
                raise self.error(f"invalid label name {t.text!r} in grouping", t)
            names.append(t.text)
            if not self.at_op(","):
                break
            self.next()
        self.expect_op(")", "to close a label list")
        return tuple(names)

    def make_binary(self, op: str, lhs: Expr, rhs: Expr, return_bool: bool,
                    matching: VectorMatching | None, tok: Token) -> Expr:
        lt, rt = type_of(lhs), type_of(rhs)
        for t in (lt, rt):
            if t not in (S, V):
                raise self.error(
                    f"binary expression must contain only scalar and instant vector types, "
                    f"not {TYPE_NAMES[t]}", tok)
        if op in COMPARISONS and lt == S and rt == S and not return_bool:
            raise self.error("comparisons between scalars must use BOOL modifier", tok)
        if op in SET_OPS and (lt != V or rt != V):
            raise self.error(f"set operator {op!r} not allowed in binary scalar expression", tok)
        if (lt != V or rt != V) and matching is not None and matching.labels:
            raise self.error("vector matching only allowed between instant vectors", tok)
        if lt == V and rt == V and matching is None:
            card = Cardinality.MANY_TO_MANY if op in SET_OPS else Cardinality.ONE_TO_ONE
            matching = VectorMatching(card, False, ())
        if lt != V or rt != V:
            matching = None
        return Binary(op, lhs, rhs, return_bool, matching)

    def unary(self) -> Expr:
        if self.at_op("-", "+"):
            op = self.next().text
            operand = self.expr(PRECEDENCE["^"])
            t = type_of(operand)
            if t not in (S, V):
                raise self.error(f"unary expression only allowed on expressions of type scalar "
                                 f"or instant vector, got {TYPE_NAMES[t]}")
            if isinstance(operand, NumberLiteral):
                return NumberLiteral(-operand.value if op == "-" else operand.value)
            return operand if op == "+" else Unary(op, operand)
        return self.postfix(self.primary())

    def postfix(self, e: Expr) -> Expr:
        while True:
            if self.at_op("["):
                e = self.range_or_subquery(e)
            elif self.at_word("offset"):
                e = self.offset(e)
            elif self.at_op("@"):
                e = self.at_modifier(e)
            else:
                return e

    def range_or_subquery(self, e: Expr) -> Expr:
        t = self.next()
        d = self.next()
        if d.kind != TokenKind.DURATION:
            raise self.error("expected a duration in range selector or subquery", d)
        assert isinstance(d.value, int)
        if self.at_op(":"):
            self.next()
            step = 0
            if self.peek().kind == TokenKind.DURATION:
                st = self.next()
                assert isinstance(st.value, int)
                step = st.value
                if step <= 0:
                    raise self.error("subquery step must be positive", st)
            self.expect_op("]", "to close a subquery")
            if type_of(e) != V:
                raise self.error(f"subquery is only allowed on instant vector, got "
                                 f"{TYPE_NAMES[type_of(e)]} instead", t)
            if d.value <= 0:
                raise self.error("subquery range must be positive", d)
            return Subquery(e, d.value, step)
        self.expect_op("]", "to close a range selector")
        if not isinstance(e, VectorSelector):
            raise self.error("ranges only allowed for vector selectors", t)
        if e.offset_ms:
            raise self.error("no offset modifiers allowed before range", t)
        if e.at_ms is not None or e.at_edge is not None:
            raise self.error("no @ modifiers allowed before range", t)
        if d.value <= 0:
            raise self.error("range must be positive", d)
        return MatrixSelector(e, d.value)

    def offset(self, e: Expr) -> Expr:
        t = self.next()
        sign = 1
        if self.at_op("-", "+"):
            sign = -1 if self.next().text == "-" else 1
        d = self.next()
        if d.kind != TokenKind.DURATION:
            raise self.error("expected a duration after offset", d)
        assert isinstance(d.value, int)
        off = sign * d.value
        if isinstance(e, VectorSelector):
            if e.offset_ms:
                raise self.error("offset may not be set multiple times", t)
            return replace(e, offset_ms=off)
        if isinstance(e, MatrixSelector):
            if e.selector.offset_ms:
                raise self.error("offset may not be set multiple times", t)
            return MatrixSelector(replace(e.selector, offset_ms=off), e.range_ms)
        if isinstance(e, Subquery):
            if e.offset_ms:
                raise self.error("offset may not be set multiple times", t)
            return replace(e, offset_ms=off)
        raise self.error("offset modifier must be preceded by an instant vector selector or "
                         "range vector selector or a subquery", t)

    def at_modifier(self, e: Expr) -> Expr:
        t = self.next()
        at_ms: int | None = None
        edge: AtEdge | None = None
        if self.at_word("start", "end"):
            edge = AtEdge(self.next().text.lower())
            self.expect_op("(", f"after @ {edge.value}")
            self.expect_op(")", f"after @ {edge.value}(")
        else:
            sign = 1.0
            if self.at_op("-", "+"):
                sign = -1.0 if self.next().text == "-" else 1.0
            num = self.next()
            if num.kind != TokenKind.NUMBER:
                raise self.error("expected a timestamp (unix seconds), start() or end() after @",
                                 num)
            assert isinstance(num.value, float)
            secs = sign * num.value
            if math.isinf(secs) or math.isnan(secs) or abs(secs) * 1000 >= 2.0**63:
                raise self.error(f"timestamp out of bounds for @ modifier: {secs:f}", num)
            at_ms = int(math.copysign(math.floor(abs(secs) * 1000 + 0.5), secs))
        target = e.selector if isinstance(e, MatrixSelector) else e
        if not isinstance(target, VectorSelector | Subquery):
            raise self.error("@ modifier must be preceded by an instant vector selector or range "
                             "vector selector or a subquery", t)
        if target.at_ms is not None or target.at_edge is not None:
            raise self.error("@ <timestamp> may not be set multiple times", t)
        if isinstance(e, MatrixSelector):
            return MatrixSelector(replace(e.selector, at_ms=at_ms, at_edge=edge), e.range_ms)
        return replace(target, at_ms=at_ms, at_edge=edge)

    def primary(self) -> Expr:
        t = self.peek()
        if t.kind == TokenKind.NUMBER:
            self.next()
            assert isinstance(t.value, float)
            return NumberLiteral(t.value)
        if t.kind == TokenKind.STRING:
            self.next()
            assert isinstance(t.value, str)
            return StringLiteral(t.value)
        if t.kind == TokenKind.DURATION:
            raise self.error(f"unexpected duration {t.text!r}")
        if t.kind == TokenKind.OP and t.text == "(":
            self.next()
            e = self.expr(0)
            self.expect_op(")", "to close a parenthesis")
            return Paren(e)
        if t.kind == TokenKind.OP and t.text == "{":
            return self.selector(None)
        if t.kind == TokenKind.IDENT:
            word = t.text
            low = word.lower()
            nxt = self.peek(1)
            opens = nxt.kind == TokenKind.OP and nxt.text == "("
            modifier = nxt.kind == TokenKind.IDENT and nxt.text.lower() in ("by", "without")
            if low in AGGREGATORS and (opens or modifier):
                return self.aggregate()
            if self.peek(1).kind == TokenKind.OP and self.peek(1).text == "(":
                return self.call()
            if low in ("by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                       "offset", "and", "or", "unless"):
                raise self.error(f"unexpected keyword {word!r}")
            self.next()
            return self.selector(word)
        if t.kind == TokenKind.EOF:
            raise self.error("unexpected end of input")
        raise self.error(f"unexpected {t.text!r}")

    def selector(self, name: str | None) -> VectorSelector:
        matchers: list[Matcher] = []
        start = self.peek()
        if self.at_op("{"):
            self.next()
            while not self.at_op("}"):
                lt = self.next()
                if lt.kind != TokenKind.IDENT or not (LABEL_NAME_RE.fullmatch(lt.text)):
                    raise self.error(f"invalid label name {lt.text!r} in selector", lt)
                op = self.next()
                if op.kind != TokenKind.OP or op.text not in ("=", "!=", "=~", "!~"):
                    raise self.error(f"expected a label matching operator after {lt.text!r}", op)
                vt = self.next()
                if vt.kind != TokenKind.STRING:
                    raise self.error("expected a quoted string as label value", vt)
                assert isinstance(vt.value, str)
                value = vt.value
                if op.text in ("=~", "!~"):
                    value = go_regexp(value)
                    try:
                        re.compile(value)
                    except re.error as exc:
                        raise self.error(f"invalid regular expression {vt.value!r}: {exc}",
                                         vt) from None
                matchers.append(Matcher(lt.text, op.text, value))
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
        if name not in FUNCS:
            if name in KNOWN_UNSUPPORTED:
                raise self.error(f"unsupported function {name!r}".replace("'", '"'), t)
            raise self.error(f'unknown function "{name}"', t)
        self.expect_op("(", "after function name")
        args = self.arguments(f"to close the call of {name}()")
        spec = FUNCS[name]
        most = 10**6 if spec.variadic else len(spec.args)
        if not (len(spec.args) - spec.optional <= len(args) <= most):
            raise self.error(
                f"expected {len(spec.args)} argument(s) in call to \"{name}\", got {len(args)}", t)
        wants = list(spec.args)
        if spec.variadic:
            wants += [spec.args[-1]] * (len(args) - len(spec.args))
        for want, arg in zip(wants, args, strict=False):
            got = type_of(arg)
            if got != want:
                raise self.error(f'expected type {TYPE_NAMES[want]} in call to function "{name}",'
                                 f" got {TYPE_NAMES[got]}", t)
        if name == "label_replace":
            dst = unparen(args[1])
            assert isinstance(dst, StringLiteral)
            if not LABEL_NAME_RE.fullmatch(dst.value):
                raise self.error(f"invalid destination label name in label_replace(): "
                                 f"{dst.value}", t)
            rx = unparen(args[4])
            assert isinstance(rx, StringLiteral)
            try:
                re.compile(go_regexp(rx.value))
            except re.error as exc:
                raise self.error(f"invalid regular expression in label_replace(): {rx.value}: "
                                 f"{exc}", t) from None
        if name == "label_join":
            for i, a in enumerate(args[1:], start=1):
                lit = unparen(a)
                assert isinstance(lit, StringLiteral)
                if i != 2 and not LABEL_NAME_RE.fullmatch(lit.value):
                    which = "destination" if i == 1 else "source"
                    raise self.error(f"invalid {which} label name in label_join(): "
                                     f"{lit.value}", t)
        return Call(name, tuple(args))

    def aggregate(self) -> Expr:
        t = self.next()
        op = t.text.lower()
        if op not in SUPPORTED_AGGREGATORS:
            raise self.error(f'unsupported aggregation "{op}"', t)
        grouping: tuple[str, ...] = ()
        without = False
        seen_mod = False
        if self.at_word("by", "without"):
            without = self.next().text.lower() == "without"
            grouping = self.label_list()
            seen_mod = True
        self.expect_op("(", f"after {op}")
        args = self.arguments(f"to close {op}(...)")
        if self.at_word("by", "without"):
            if seen_mod:
                raise self.error("aggregation modifier given twice")
            without = self.next().text.lower() == "without"
            grouping = self.label_list()
        needs_param = op in ("topk", "bottomk", "quantile", "count_values")
        if len(args) != (2 if needs_param else 1):
            raise self.error(f"wrong number of arguments for aggregate expression provided, "
                             f"expected {2 if needs_param else 1}, got {len(args)}", t)
        param = args[0] if needs_param else None
        expr = args[-1]
        if type_of(expr) != V:
            raise self.error(f'expected type instant vector in aggregation expression "{op}", '
                             f"got {TYPE_NAMES[type_of(expr)]}", t)
        want = STR if op == "count_values" else S
        if param is not None and type_of(param) != want:
            raise self.error(f'expected type {TYPE_NAMES[want]} in aggregation parameter of '
                             f'"{op}", got {TYPE_NAMES[type_of(param)]}', t)
        return Aggregate(op, expr, param, grouping, without)


@lru_cache(maxsize=4096)
def parse_expr(text: str) -> Expr:
    """Parse a PromQL expression of the supported subset; raise QueryError naming what is wrong."""
    return _Parser(text).parse()


def check_expr(text: str) -> None:
    """Raise QueryError when ``text`` is not valid PromQL of the supported subset."""
    parse_expr(text)


def selectors(expr: Expr) -> list[VectorSelector | MatrixSelector]:
    """Every selector in an expression, subqueries' included (a matrix selector's inner
    selector is not repeated)."""
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
        elif isinstance(e, Paren | Unary | Subquery):
            walk(e.expr)

    walk(expr)
    return out
