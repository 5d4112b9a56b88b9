"""The evaluator's values: instant vectors, range vectors and fetched series, and label sets.

A label set is a sorted tuple of ``(name, value)`` pairs with ``__name__`` included, hashable so
it can key groups and matches. Vectors hold parallel label sets and a numpy array of values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tuner.errors import QueryError
from tuner.promql.syntax import NAME

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs, "__name__" included
STALE_BITS = np.uint64(0x7FF0000000000002)  # the NaN payload Prometheus uses as stale marker


@dataclass
class Vec:
    """An instant vector: parallel label sets and values (and sample times for timestamp())."""

    labels: list[Labels]
    values: np.ndarray
    times: np.ndarray | None = None  # ms; set only by a plain vector selector

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Mat:
    """A range vector at one evaluation time."""

    labels: list[Labels]
    times: list[np.ndarray]  # ms
    values: list[np.ndarray]


@dataclass
class Series:
    """One fetched series: sorted labels (name included), samples, where its stale markers are."""

    labels: Labels
    ts: np.ndarray  # int64 ms
    vals: np.ndarray  # float64
    stale: np.ndarray  # bool
    any_stale: bool


Value = Vec | Mat | float | str

EMPTY_LABELS: Labels = ()


def drop_name(lbls: Labels) -> Labels:
    """The label set without ``__name__``."""
    if lbls and any(k == NAME for k, _ in lbls):
        return tuple(p for p in lbls if p[0] != NAME)
    return lbls


def get_label(lbls: Labels, name: str) -> str:
    """A label's value, ``""`` when absent (as in Prometheus)."""
    for k, v in lbls:
        if k == name:
            return v
    return ""


def set_label(lbls: Labels, name: str, value: str) -> Labels:
    """The label set with ``name`` set to ``value`` (removed when ``value`` is empty)."""
    kept = [p for p in lbls if p[0] != name]
    if value:
        kept.append((name, value))
        kept.sort()
    return tuple(kept)


def labels_str(lbls: Labels) -> str:
    """``name{a="1", b="2"}``, as Prometheus prints a series in error messages."""
    name = get_label(lbls, NAME)
    inner = ", ".join(f'{k}="{v}"' for k, v in lbls if k != NAME)
    return f"{name}{{{inner}}}"


def check_unique(labels: Sequence[Labels]) -> None:
    """Raise QueryError, as Prometheus does, when a result vector repeats a label set."""
    if len(set(labels)) != len(labels):
        raise QueryError("vector cannot contain metrics with the same labelset")
