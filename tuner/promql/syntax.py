"""The PromQL syntax tree, the value types, and the table of functions and operators.

The parser (``tuner.promql.parser``) builds these frozen nodes (selectors with ``offset`` and
``@``, subqueries, calls, aggregations, binary and unary operators); the evaluator walks them.
The tables say what is supported: ``FUNCS`` (each function's argument and return types, as
Prometheus 2.42 declares them), ``KNOWN_UNSUPPORTED`` (the native-histogram functions, refused
by name), the aggregators, and binary operator precedence (higher binds tighter; ``^`` is
right-associative).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tuner.errors import QueryError
from tuner.promql.results import ValueType
from tuner.store import Matcher

NAME = "__name__"


class Cardinality(StrEnum):
    """How the two sides of a binary operation between vectors match."""

    ONE_TO_ONE = "one-to-one"
    MANY_TO_ONE = "many-to-one"
    ONE_TO_MANY = "one-to-many"
    MANY_TO_MANY = "many-to-many"


@dataclass(frozen=True)
class Expr:
    """Base of every AST node."""


@dataclass(frozen=True)
class NumberLiteral(Expr):
    value: float


@dataclass(frozen=True)
class StringLiteral(Expr):
    value: str


class AtEdge(StrEnum):
    """``@ start()`` / ``@ end()``: the query's first or last evaluation time."""

    START = "start"
    END = "end"


@dataclass(frozen=True)
class VectorSelector(Expr):
    name: str | None
    matchers: tuple[Matcher, ...]  # includes the __name__ matcher when a name was given
    offset_ms: int = 0
    at_ms: int | None = None  # ``@ <time>``: evaluate at this time whatever the step's time
    at_edge: AtEdge | None = None  # ``@ start()``/``@ end()``, resolved to at_ms per query


@dataclass(frozen=True)
class MatrixSelector(Expr):
    selector: VectorSelector  # carries the offset and the @ time
    range_ms: int


@dataclass(frozen=True)
class Subquery(Expr):
    """``expr[range:step] offset o @ t``: ``expr`` evaluated on a step grid, as a range vector.

    ``step_ms`` 0 means the default step (the evaluation interval). Grid points are the
    multiples of the step inside ``[t - o - range, t - o]``.
    """

    expr: Expr
    range_ms: int
    step_ms: int = 0
    offset_ms: int = 0
    at_ms: int | None = None
    at_edge: AtEdge | None = None


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
    card: Cardinality
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

S, V, M, STR = ValueType.SCALAR, ValueType.VECTOR, ValueType.MATRIX, ValueType.STRING


@dataclass(frozen=True)
class Func:
    """A function's signature: argument types, return type."""

    args: tuple[ValueType, ...]
    ret: ValueType
    optional: int = 0  # how many trailing args may be omitted
    variadic: bool = False  # the last argument type may repeat any number of times


FUNCS: dict[str, Func] = {
    "rate": Func((M,), V),
    "irate": Func((M,), V),
    "increase": Func((M,), V),
    "delta": Func((M,), V),
    "idelta": Func((M,), V),
    "deriv": Func((M,), V),
    "resets": Func((M,), V),
    "changes": Func((M,), V),
    "avg_over_time": Func((M,), V),
    "min_over_time": Func((M,), V),
    "max_over_time": Func((M,), V),
    "sum_over_time": Func((M,), V),
    "count_over_time": Func((M,), V),
    "last_over_time": Func((M,), V),
    "stddev_over_time": Func((M,), V),
    "stdvar_over_time": Func((M,), V),
    "present_over_time": Func((M,), V),
    "absent_over_time": Func((M,), V),
    "quantile_over_time": Func((S, M), V),
    "histogram_quantile": Func((S, V), V),
    "label_replace": Func((V, STR, STR, STR, STR), V),
    "absent": Func((V,), V),
    "vector": Func((S,), V),
    "scalar": Func((V,), S),
    "time": Func((), S),
    "timestamp": Func((V,), V),
    "clamp": Func((V, S, S), V),
    "clamp_min": Func((V, S), V),
    "clamp_max": Func((V, S), V),
    "abs": Func((V,), V),
    "ceil": Func((V,), V),
    "floor": Func((V,), V),
    "round": Func((V, S), V, optional=1),
    "sqrt": Func((V,), V),
    "exp": Func((V,), V),
    "ln": Func((V,), V),
    "log2": Func((V,), V),
    "log10": Func((V,), V),
    "sort": Func((V,), V),
    "sort_desc": Func((V,), V),
    "predict_linear": Func((M, S), V),
    "holt_winters": Func((M, S, S), V),
    "label_join": Func((V, STR, STR, STR), V, optional=1, variadic=True),
    "pi": Func((), S),
    **{f: Func((V,), V) for f in ("sgn", "deg", "rad", "sin", "cos", "tan", "asin", "acos",
                                  "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh")},
    # date functions: of each sample's value as unix seconds, or of vector(time())
    **{f: Func((V,), V, optional=1) for f in ("year", "month", "day_of_month", "day_of_week",
                                              "day_of_year", "days_in_month", "hour", "minute")},
}

# Functions Prometheus 2.42 has that this evaluator refuses (they read native histograms).
KNOWN_UNSUPPORTED = {"histogram_count", "histogram_fraction", "histogram_sum"}

AGGREGATORS = {"sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "stddev",
                "stdvar", "group", "count_values"}
SUPPORTED_AGGREGATORS = AGGREGATORS

# Binary operators and their precedence (higher binds tighter); ^ is right-associative.
PRECEDENCE = {
    "or": 1,
    "and": 2, "unless": 2,
    "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
    "+": 4, "-": 4,
    "*": 5, "/": 5, "%": 5, "atan2": 5,
    "^": 6,
}
COMPARISONS = {"==", "!=", "<=", "<", ">=", ">"}
SET_OPS = {"and", "or", "unless"}
ARITHMETIC = {"+", "-", "*", "/", "%", "^"}  # these drop the metric name; atan2 keeps it


def type_of(e: Expr) -> ValueType:
    """The static PromQL type of an expression."""
    if isinstance(e, NumberLiteral):
        return S
    if isinstance(e, StringLiteral):
        return STR
    if isinstance(e, VectorSelector | Aggregate):
        return V
    if isinstance(e, MatrixSelector | Subquery):
        return M
    if isinstance(e, Call):
        return FUNCS[e.func].ret
    if isinstance(e, Paren | Unary):
        return type_of(e.expr)
    if isinstance(e, Binary):
        return S if type_of(e.lhs) == S and type_of(e.rhs) == S else V
    raise QueryError(f"unknown expression node {type(e).__name__}")


TYPE_NAMES = {S: "scalar", V: "instant vector", M: "range vector", STR: "string"}


def unparen(e: Expr) -> Expr:
    """The expression inside any parentheses."""
    while isinstance(e, Paren):
        e = e.expr
    return e
