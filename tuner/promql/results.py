"""What a PromQL query returns, and the two Protocols at the engine's seams.

* :class:`ValueType` — the four PromQL value types (Prometheus's ``parser.ValueType``), used
  both as the static type of an expression and as the kind of an instant query's result;
* :class:`QueryResult` (an instant query), :class:`Element` (one element of a vector) and
  :class:`RangeSeries` (one series of a matrix or of a range query);
* :class:`SeriesReader` — where samples come from (``tuner.store.Store``, a ``WindowCache``);
* :class:`Querier` — anything that answers PromQL (``Engine``, ``tuner.source``'s sources).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

from tuner.store import Matcher, SeriesData


class ValueType(StrEnum):
    """A PromQL value type; ``QueryResult.kind`` is one of them."""

    SCALAR = "scalar"
    VECTOR = "vector"
    MATRIX = "matrix"
    STRING = "string"


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

    kind: ValueType
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
