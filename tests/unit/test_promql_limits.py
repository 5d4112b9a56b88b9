"""tuner.promql's query limits: a deadline and a sample bound, with Prometheus's messages.

The clock is a counter the test advances (every read moves it on), so a query runs past its
deadline without sleeping; samples are counted on a real Store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner.errors import QueryError, QueryTimeoutError, QueryTooLargeError
from tuner.promql import Engine, QueryLimits
from tuner.store import Store

T0 = 1_700_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store.db", retention=3650 * 86400.0)
    # 2 series x 100 samples, one every 15 s
    s.append_points([("m", (("i", str(i)),), (T0 + 15 * k) * 1000, float(k))
                     for i in range(2) for k in range(100)])
    yield s
    s.close()


class TickingClock:
    """Each read advances time by ``tick`` seconds."""

    def __init__(self, tick: float) -> None:
        self.now = 0.0
        self.tick = tick
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.tick
        return self.now


def test_no_limits_by_default(store: Store) -> None:
    assert len(Engine(store).range("m", T0, T0 + 1485, 15)) == 2


def test_a_range_query_past_its_deadline_times_out(store: Store) -> None:
    clock = TickingClock(1.0)
    engine = Engine(store, limits=QueryLimits(timeout=30.0), clock=clock)
    with pytest.raises(QueryTimeoutError, match=r"^query timed out in expression evaluation$"):
        engine.range("rate(m[1m])", T0, T0 + 1485, 15)  # 100 steps, one clock read each
    assert clock.now < 40  # stopped at the deadline, not after all 100 steps
    # a timeout is a QueryError (callers that only know QueryError still catch it)
    assert issubclass(QueryTimeoutError, QueryError)


def test_an_instant_query_inside_its_deadline_answers(store: Store) -> None:
    engine = Engine(store, limits=QueryLimits(timeout=30.0), clock=TickingClock(1.0))
    assert len(engine.instant("m", T0 + 100).vector) == 2


def test_too_many_samples_fetched(store: Store) -> None:
    # m[1h] at the end holds all 200 samples
    engine = Engine(store, limits=QueryLimits(max_samples=199))
    with pytest.raises(QueryTooLargeError, match=r"^query processing would load too many samples "
                       r"into memory in query execution$"):
        engine.instant("sum_over_time(m[1h])", T0 + 1485)
    assert len(Engine(store, limits=QueryLimits(max_samples=200)).instant(
        "sum_over_time(m[1h])", T0 + 1485).vector) == 2


def test_result_points_count_against_the_sample_limit(store: Store) -> None:
    # fetching 200 samples is within the limit; the 100 steps x 2 series of output are not
    engine = Engine(store, limits=QueryLimits(max_samples=300))
    with pytest.raises(QueryTooLargeError):
        engine.range("m", T0, T0 + 1485, 15)


def test_a_request_timeout_only_shortens_the_deadline() -> None:
    limits = QueryLimits(timeout=120.0, max_samples=10)
    assert limits.with_timeout(5.0) == QueryLimits(5.0, 10)
    assert limits.with_timeout(600.0) is limits
    assert limits.with_timeout(None) is limits
