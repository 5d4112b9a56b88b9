"""Binary operators between instant vectors: vector matching, set operators, vector-scalar.

Follows Prometheus 2.42 (promql/engine.go ``VectorBinop``/``VectorAnd``/...): match signatures
from ``on``/``ignoring``, one-to-one and ``group_left``/``group_right`` cardinalities with the
same error messages for duplicate series, the result's label set (name dropped by arithmetic,
``group_*`` labels copied from the "one" side), and comparison filtering or ``bool``.
"""

from __future__ import annotations

import numpy as np

from tuner.errors import QueryError
from tuner.promql.functions import binop_values, compare
from tuner.promql.syntax import ARITHMETIC, COMPARISONS, NAME, Cardinality, VectorMatching
from tuner.promql.values import Labels, Vec, drop_name, get_label, labels_str


def _signature(lbls: Labels, matching: VectorMatching) -> Labels:
    if matching.on:
        names = matching.labels
        return tuple(p for p in lbls if p[0] in names)
    names = matching.labels
    return tuple(p for p in lbls if p[0] != NAME and p[0] not in names)


def set_op(op: str, lhs: Vec, rhs: Vec, matching: VectorMatching) -> Vec:
    """``and``, ``or``, ``unless`` between two vectors."""
    if op == "and":
        if not len(lhs) or not len(rhs):
            return Vec([], np.empty(0))
        right = {_signature(lb, matching) for lb in rhs.labels}
        keep = [i for i, lb in enumerate(lhs.labels) if _signature(lb, matching) in right]
        return Vec([lhs.labels[i] for i in keep], lhs.values[keep])
    if op == "or":
        if not len(lhs):
            return Vec(list(rhs.labels), rhs.values)
        if not len(rhs):
            return Vec(list(lhs.labels), lhs.values)
        left = {_signature(lb, matching) for lb in lhs.labels}
        add = [j for j, lb in enumerate(rhs.labels) if _signature(lb, matching) not in left]
        return Vec(list(lhs.labels) + [rhs.labels[j] for j in add],
                    np.concatenate([lhs.values, rhs.values[add]]))
    # unless
    if not len(lhs) or not len(rhs):
        return Vec(list(lhs.labels), lhs.values)
    right = {_signature(lb, matching) for lb in rhs.labels}
    keep = [i for i, lb in enumerate(lhs.labels) if _signature(lb, matching) not in right]
    return Vec([lhs.labels[i] for i in keep], lhs.values[keep])


def _result_metric(ls: Labels, rs: Labels, op: str, matching: VectorMatching) -> Labels:
    d = dict(ls)
    if op in ARITHMETIC:
        d.pop(NAME, None)
    if matching.card == Cardinality.ONE_TO_ONE:
        if matching.on:
            d = {k: v for k, v in d.items() if k in matching.labels}
        else:
            for k in matching.labels:
                d.pop(k, None)
    for ln in matching.include:
        v = get_label(rs, ln)
        if v:
            d[ln] = v
        else:
            d.pop(ln, None)
    return tuple(sorted(d.items()))


def vector_binop(op: str, lhs: Vec, rhs: Vec, matching: VectorMatching,
                  return_bool: bool) -> Vec:
    """An arithmetic or comparison operator between two vectors, with Prometheus's errors for
    duplicate match groups and ambiguous many-to-one matches."""
    if not len(lhs) or not len(rhs):
        return Vec([], np.empty(0))
    one_to_many = matching.card == Cardinality.ONE_TO_MANY
    if one_to_many:
        lhs, rhs = rhs, lhs
    right: dict[Labels, int] = {}
    for j, lb in enumerate(rhs.labels):
        sig = _signature(lb, matching)
        if sig in right:
            side = "left" if one_to_many else "right"
            raise QueryError(
                f"found duplicate series for the match group {labels_str(sig)} on the {side} "
                f"hand-side of the operation: [{labels_str(lb)}, "
                f"{labels_str(rhs.labels[right[sig]])}];many-to-many matching not allowed: "
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
        return Vec([], np.empty(0))
    vl = lhs.values[li]
    vr = rhs.values[ri]
    if one_to_many:
        vl, vr = vr, vl
    if op in COMPARISONS:
        keep = compare(op, vl, vr)
        values = np.where(keep, 1.0, 0.0) if return_bool else vl
    else:
        values = binop_values(op, vl, vr)
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
            metric = drop_name(metric)
        sig = sigs[n]
        if matching.card == Cardinality.ONE_TO_ONE:
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
    return Vec(labels, np.array(out_values, dtype=np.float64))


def vector_scalar(op: str, vec: Vec, scalar: float, swap: bool, return_bool: bool) -> Vec:
    """An operator between a vector and a scalar (``swap``: the scalar is on the left)."""
    s = np.full(len(vec), scalar)
    lv, rv = (s, vec.values) if swap else (vec.values, s)
    if op in COMPARISONS:
        keep = compare(op, lv, rv)
        if return_bool:
            values = np.where(keep, 1.0, 0.0)
            keep = np.ones(len(vec), dtype=bool)
        else:
            values = vec.values
    else:
        values = binop_values(op, lv, rv)
        keep = np.ones(len(vec), dtype=bool)
    drop = op in ARITHMETIC or return_bool
    idx = np.flatnonzero(keep).tolist()
    labels = [drop_name(vec.labels[i]) if drop else vec.labels[i] for i in idx]
    return Vec(labels, values[idx] if len(idx) != len(vec) else values)
