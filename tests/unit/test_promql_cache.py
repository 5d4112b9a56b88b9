"""tuner.promql.WindowCache, the one window cache: the rule evaluator's and suggest's, on a real Store.

Whatever the cache holds, a read through it must equal the same read from the store; what it
saves is store reads, which shows as a sample written after the first read not being seen
where the documentation says it is not read again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tuner.promql import Engine, WindowCache
from tuner.source import LocalSource
from tuner.store import Matcher, SeriesData, Store

T0 = 1_700_000_000  # seconds
NAME = "__name__"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store.db", retention=3650 * 86400.0)
    pts = []
    for i in range(241):  # one hour at 15 s
        ts = (T0 + 15 * i) * 1000
        for inst in ("a", "b", "c"):
            pts.append(("m", (("instance", inst), ("job", "vllm")), ts, float(i)))
        pts.append(("other", (("instance", "a"),), ts, -float(i)))
    s.append_points(pts)
    yield s
    s.close()


def _as_tuples(data: list[SeriesData]) -> list[tuple[str, tuple[tuple[str, str], ...],
                                                     list[int], list[float]]]:
    return sorted((sd.name, tuple(sorted(sd.labels.items())), np.asarray(sd.timestamps).tolist(),
                   np.asarray(sd.values).tolist()) for sd in data)


READS = [
    [Matcher(NAME, "=", "m")],
    [Matcher(NAME, "=", "m"), Matcher("instance", "=", "a")],
    [Matcher(NAME, "=", "m"), Matcher("instance", "!=", "a")],
    [Matcher(NAME, "=", "m"), Matcher("instance", "=~", "b|c"), Matcher("job", "=", "vllm")],
    [Matcher(NAME, "=", "m"), Matcher("instance", "=", "nope")],
    [Matcher(NAME, "=~", "m|other")],  # no exact name: fetched by its matchers
    [Matcher("instance", "=", "a")],
]
SPANS = [(600, 1200), (0, 3600), (-300, 300), (3000, 4000), (1200, 1200), (900, 960)]


@pytest.mark.parametrize("by_name", [False, True])
def test_reads_through_the_cache_equal_reads_from_the_store(store: Store, by_name: bool) -> None:
    window = ((T0 + 600) * 1000, (T0 + 1800) * 1000)
    cache = WindowCache(store, by_name=by_name, window=window if by_name else None)
    for lo, hi in SPANS:  # inside, around, before and after the window, and one instant
        for matchers in READS:
            a, b = (T0 + lo) * 1000, (T0 + hi) * 1000
            assert _as_tuples(cache.select(matchers, a, b)) == _as_tuples(
                store.select(matchers, a, b)), (matchers, lo, hi)


def test_cache_window_reads_each_metric_once(store: Store) -> None:
    src = LocalSource(store)
    src.cache_window(T0 + 0.0, T0 + 3600.0)
    q = 'sum(count_over_time(m{instance="a"}[1h]))'
    assert src.instant(q, T0 + 3600).vector[0].value == 241
    # written after the first read of "m": a cached window does not read it again, even for
    # another selector of the same metric (by name: the selector's labels filter in memory) ...
    store.append_points([("m", (("instance", "b"), ("job", "vllm")), (T0 + 1) * 1000, 7.0)])
    assert src.instant('sum(count_over_time(m{instance="b"}[1h]))', T0 + 3600).vector[0].value \
        == 241
    # ... while an uncached source, and a read of another metric, go to the store
    fresh = LocalSource(store)
    assert fresh.instant('sum(count_over_time(m{instance="b"}[1h]))', T0 + 3600).vector[0].value \
        == 242
    assert src.instant("count_over_time(other[1h])", T0 + 3600).vector[0].value == 241


def test_caching_engine_slides_with_the_evaluations(store: Store) -> None:
    cached = Engine(store, cache=True, cache_tail=60.0)
    plain = Engine(store)
    exprs = ['sum(rate(m[5m]))', 'max_over_time(m{instance="b"}[10m])', "count(m)",
             'm{instance="c"}']
    for k in range(20):  # evaluations 60 s apart, as a rule group every minute
        t = T0 + 1200 + 60 * k
        if k == 10:  # a sample committed after the previous evaluation read past its time,
            # within cache_tail of it: the next evaluation sees it
            store.append_points([("m", (("instance", "b"), ("job", "vllm")),
                                  (t - 80) * 1000, 1e6)])
        for e in exprs:
            got = cached.instant(e, t)
            want = plain.instant(e, t)
            assert [(dict(x.labels), x.value) for x in got.vector] == [
                (dict(x.labels), x.value) for x in want.vector], (e, k)
    assert plain.instant('max_over_time(m{instance="b"}[10m])', T0 + 1800).vector[0].value == 1e6


def test_caching_engine_drops_what_no_window_needs(store: Store) -> None:
    engine = Engine(store, cache=True)
    for k in range(10):
        engine.instant("sum(rate(m[5m]))", T0 + 900 + 60 * k)
    assert isinstance(engine.reader, WindowCache)
    (entry,) = engine.reader.entries.values()
    oldest = min(int(ts[0]) for _, _, ts, _ in entry.series.values())
    # the last evaluation at T0 + 1440 needs [T0 + 1140, T0 + 1440]: nothing older is kept
    assert oldest >= (T0 + 1440 - 300) * 1000
