"""PromQL, evaluated over the embedded store.

A re-implementation of Prometheus 2.42's PromQL (everything but the native-histogram functions,
which are refused at parse time with a :class:`~tuner.errors.QueryError` naming them, as is
anything malformed). The modules, in the order a query flows through them:

* ``lexer`` and ``parser`` — text to a syntax tree (``syntax``: the nodes, the value types, the
  function and operator tables), with Prometheus's grammar and type checks;
* ``engine`` — the public :class:`Engine`: resolves ``@ start()/end()`` and subquery steps and
  works out what each selector reads (``timing``), fetches each selector's series once per query
  (through a ``cache.WindowCache`` when asked), then evaluates every step;
* ``evaluator`` — one expression at one timestamp: selectors with lookback and stale markers,
  ``offset`` and ``@``, subqueries, functions (``functions``: the numeric ones, pure),
  ``aggregation`` (pure); ``matching`` — binary operators between vectors;
* ``limits`` — a query's deadline and sample bound (Prometheus's query timeout and max samples);
* ``results`` — what a query returns, and the Protocols at the seams: :class:`SeriesReader`
  (where samples come from) and :class:`Querier` (anything that answers PromQL, the type every
  consumer in the package takes).

The differential integration test checks the engine against a real Prometheus on the same data.
"""

from tuner.promql.cache import WindowCache
from tuner.promql.engine import Engine
from tuner.promql.functions import (
    bucket_quantile,
    format_go_float_e,
    format_go_float_f,
    format_go_float_g,
    parse_go_float,
)
from tuner.promql.lexer import parse_duration_ms
from tuner.promql.limits import DEFAULT_MAX_SAMPLES, DEFAULT_TIMEOUT, QueryLimits
from tuner.promql.parser import check_expr, parse_expr, selectors
from tuner.promql.results import (
    Element,
    Querier,
    QueryResult,
    RangeSeries,
    SeriesReader,
    ValueType,
)
from tuner.promql.syntax import (
    Aggregate,
    Binary,
    Call,
    Expr,
    MatrixSelector,
    NumberLiteral,
    StringLiteral,
    Subquery,
    Unary,
    VectorSelector,
)

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_TIMEOUT",
    "Aggregate",
    "Binary",
    "Call",
    "Element",
    "Engine",
    "Expr",
    "MatrixSelector",
    "NumberLiteral",
    "Querier",
    "QueryLimits",
    "QueryResult",
    "RangeSeries",
    "SeriesReader",
    "StringLiteral",
    "Subquery",
    "Unary",
    "ValueType",
    "VectorSelector",
    "WindowCache",
    "bucket_quantile",
    "check_expr",
    "format_go_float_e",
    "format_go_float_f",
    "format_go_float_g",
    "parse_duration_ms",
    "parse_expr",
    "parse_go_float",
    "selectors",
]
