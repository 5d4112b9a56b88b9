"""Where in time each part of a query reads: ``@``, ``offset``, subquery grids, selector spans.

* ``resolve(expr, start_ms, end_ms, step_ms)`` fixes a parsed expression for one query:
  ``@ start()`` / ``@ end()`` become the query's first / last evaluation time and subqueries
  without a step get the default one (Prometheus: the global ``evaluation_interval``, 1m;
  promtool: the test file's ``evaluation_interval``).
* ``reference_ms(node, ts_ms)`` is the time a selector or subquery reads at when the step's
  time is ``ts_ms``: its ``@`` time (if any) less its offset.
* ``subquery_grid(sub, ts_ms)`` is the evaluation times of a subquery at one step: the
  multiples of its step inside ``[ref - range, ref]``, as Prometheus aligns them.
* ``selector_spans(expr, start_ms, end_ms, lookback_ms)`` is, per selector, the one time span
  (ms, inclusive) a query over ``[start_ms, end_ms]`` reads, through subqueries and ``@``, so
  the engine fetches every series once.

Pure functions of the syntax tree.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

from tuner.promql.syntax import AtEdge, Expr, MatrixSelector, Subquery, VectorSelector


def _children(e: Expr) -> list[Expr]:
    out: list[Expr] = []
    for f in fields(e):
        v = getattr(e, f.name)
        if isinstance(v, Expr):
            out.append(v)
        elif isinstance(v, tuple):
            out.extend(x for x in v if isinstance(x, Expr))
    return out


def _needs_resolving(e: Expr) -> bool:
    if isinstance(e, VectorSelector):
        return e.at_edge is not None
    if isinstance(e, Subquery) and (e.at_edge is not None or e.step_ms == 0):
        return True
    return any(_needs_resolving(c) for c in _children(e))


def resolve(expr: Expr, start_ms: int, end_ms: int, step_ms: int) -> Expr:
    """``expr`` with ``@ start()``/``@ end()`` and default subquery steps made concrete."""
    if not _needs_resolving(expr):
        return expr

    def at_of(edge: AtEdge | None, at_ms: int | None) -> int | None:
        if edge is None:
            return at_ms
        return start_ms if edge is AtEdge.START else end_ms

    def walk(e: Expr) -> Expr:
        if isinstance(e, VectorSelector):
            if e.at_edge is None:
                return e
            return replace(e, at_ms=at_of(e.at_edge, e.at_ms), at_edge=None)
        if isinstance(e, Subquery):
            return replace(e, expr=walk(e.expr), step_ms=e.step_ms or step_ms,
                           at_ms=at_of(e.at_edge, e.at_ms), at_edge=None)
        if not is_dataclass(e):
            return e
        changes: dict[str, object] = {}
        for f in fields(e):
            v = getattr(e, f.name)
            if isinstance(v, Expr):
                nv = walk(v)
                if nv is not v:
                    changes[f.name] = nv
            elif isinstance(v, tuple) and any(isinstance(x, Expr) for x in v):
                nt = tuple(walk(x) if isinstance(x, Expr) else x for x in v)
                if nt != v:
                    changes[f.name] = nt
        return replace(e, **changes) if changes else e

    return walk(expr)


def reference_ms(node: VectorSelector | Subquery, ts_ms: int) -> int:
    """The time ``node`` reads at, stepping at ``ts_ms``: its ``@`` time (or ts_ms) - offset."""
    return (node.at_ms if node.at_ms is not None else ts_ms) - node.offset_ms


def subquery_grid(sub: Subquery, ts_ms: int) -> range:
    """The subquery's evaluation times for the step at ``ts_ms`` (multiples of its step)."""
    step = sub.step_ms
    assert step > 0, "resolve() sets every subquery's step"
    ref = reference_ms(sub, ts_ms)
    lo = ref - sub.range_ms
    first = -(-lo // step) * step
    return range(first, ref + 1, step)


def selector_spans(expr: Expr, start_ms: int, end_ms: int, lookback_ms: int
                   ) -> dict[VectorSelector | MatrixSelector, tuple[int, int]]:
    """Per selector, the time span (inclusive, ms) a query over ``[start_ms, end_ms]`` reads."""
    spans: dict[VectorSelector | MatrixSelector, tuple[int, int]] = {}

    def add(sel: VectorSelector | MatrixSelector, lo: int, hi: int) -> None:
        if sel in spans:
            lo, hi = min(lo, spans[sel][0]), max(hi, spans[sel][1])
        spans[sel] = (lo, hi)

    def walk(e: Expr, lo: int, hi: int) -> None:
        if isinstance(e, VectorSelector | MatrixSelector):
            vs = e.selector if isinstance(e, MatrixSelector) else e
            width = e.range_ms if isinstance(e, MatrixSelector) else lookback_ms
            add(e, reference_ms(vs, lo) - width, reference_ms(vs, hi))
        elif isinstance(e, Subquery):
            walk(e.expr, reference_ms(e, lo) - e.range_ms, reference_ms(e, hi))
        else:
            for c in _children(e):
                walk(c, lo, hi)

    walk(expr, start_ms, end_ms)
    return spans
