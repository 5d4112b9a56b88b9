"""Per-query limits of the engine: a deadline and a bound on the samples a query holds.

Prometheus stops a query after ``--query.timeout`` (2m) and refuses one that would load more than
``--query.max-samples`` (50,000,000) samples into memory. :class:`QueryLimits` carries those two
numbers; :class:`Budget` is one query's running account of them, checked by the engine before
each selector's fetch, after it (counting the samples fetched) and at every step of a range
query (counting the points of the result). The clock is passed in, so a test can run a query
past its deadline without sleeping.

The messages are Prometheus's (``query timed out in expression evaluation``, ``query processing
would load too many samples into memory in query execution``), so an API answering from this
engine can report them as Prometheus does (``timeout`` and ``execution``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from tuner.errors import QueryTimeoutError, QueryTooLargeError

DEFAULT_TIMEOUT = 120.0  # seconds; Prometheus's --query.timeout
DEFAULT_MAX_SAMPLES = 50_000_000  # Prometheus's --query.max-samples


@dataclass(frozen=True)
class QueryLimits:
    """How long one query may run (seconds) and how many samples it may hold at once."""

    timeout: float = DEFAULT_TIMEOUT
    max_samples: int = DEFAULT_MAX_SAMPLES

    def with_timeout(self, timeout: float | None) -> QueryLimits:
        """These limits with a per-request timeout, which can only shorten the deadline."""
        if timeout is None or timeout >= self.timeout:
            return self
        return QueryLimits(timeout, self.max_samples)


UNLIMITED = QueryLimits(math.inf, 2**62)


class Budget:
    """One query's deadline and sample count; raises the engine's limit errors."""

    def __init__(self, limits: QueryLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.deadline = clock() + limits.timeout
        self.samples = 0

    def check_time(self) -> None:
        """Raise QueryTimeoutError when the deadline has passed."""
        if self.clock() > self.deadline:
            raise QueryTimeoutError("query timed out in expression evaluation")

    def add_samples(self, n: int) -> None:
        """Count ``n`` more samples held; raise QueryTooLargeError past ``max_samples``."""
        self.samples += n
        if self.samples > self.limits.max_samples:
            raise QueryTooLargeError(
                "query processing would load too many samples into memory in query execution")
