"""The one window cache: a series reader that remembers what it read and fetches only what is new.

Two users, one implementation:

* the long-lived rule evaluator (``Engine(store, cache=True)`` in the daemon): every evaluation
  asks for windows that slid forward a little; the cache fetches the new tail and drops what
  fell out of the widest window asked for. ``tail_ms`` re-reads the newest part of what it holds
  on every read, so a sample committed late (a scrape finishing after an evaluation started)
  is still seen;
* one ``suggest`` run (``tuner.source.LocalSource.cache_window``): many queries over the same
  window touch the same metrics with different label matchers (the user's selector, one per
  server). With ``by_name`` every series of a metric name is read once, for the whole
  ``window``, and label matchers are applied in memory.

Per fetch key (a metric name with ``by_name``, else the exact matcher list) the cache holds a
covered span ``[start, end]`` and every series' samples in it. A read outside the span fetches
only the missing head or tail. Do not put it over a reader whose older data changes
(backfill): only the newest ``tail_ms`` is ever read again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tuner.promql.results import SeriesReader
from tuner.promql.syntax import NAME
from tuner.store import Matcher, SeriesData

_SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class WindowCache:
    """A :class:`~tuner.promql.SeriesReader` over ``reader`` that reads each sample once.

    ``tail_ms``: how much of the newest cached data every read fetches again (0: none, for a
    store that does not change while the cache lives). ``by_name``: fetch all series of a
    selector's metric name and filter labels in memory, so selectors that differ only in label
    matchers share one read. ``window``: ``(start_ms, end_ms)`` the first read of a key fetches
    at least, so later reads inside it cost no store query.
    """

    def __init__(self, reader: SeriesReader, *, tail_ms: int = 0, by_name: bool = False,
                 window: tuple[int, int] | None = None) -> None:
        self.reader = reader
        self.tail_ms = tail_ms
        self.by_name = by_name
        self.window = window
        self.entries: dict[tuple[Matcher, ...], _CacheEntry] = {}

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> list[SeriesData]:
        key, filters = self._key(matchers)
        entry = self.entries.get(key)
        if entry is None:
            lo, hi = start_ms, end_ms
            if self.window is not None:
                lo, hi = min(lo, self.window[0]), max(hi, self.window[1])
            entry = _CacheEntry(lo, hi)
            entry.merge(self.reader.select(key, lo, hi), lo, hi)
            self.entries[key] = entry
        else:
            self._extend(key, entry, start_ms, end_ms)
        entry.widest = max(entry.widest, end_ms - start_ms)
        entry.trim(end_ms - entry.widest)
        return entry.window(start_ms, end_ms, filters)

    def _key(self, matchers: Sequence[Matcher]) -> tuple[tuple[Matcher, ...], tuple[Matcher, ...]]:
        """(what to fetch, what to filter in memory) for a read of ``matchers``."""
        if self.by_name:
            name = next((m for m in matchers if m.name == NAME and m.op == "="), None)
            if name is not None:
                return (name,), tuple(m for m in matchers if m != name)
        return tuple(matchers), ()

    def _extend(self, key: tuple[Matcher, ...], entry: _CacheEntry, start_ms: int,
                end_ms: int) -> None:
        """Fetch what ``[start_ms, end_ms]`` needs beyond the entry, and its newest tail."""
        if start_ms < entry.start:
            head_end = entry.start - 1
            entry.merge(self.reader.select(key, start_ms, head_end), start_ms, head_end)
            entry.start = start_ms
        if self.tail_ms > 0:
            tail_from = max(entry.start, entry.end - self.tail_ms)
        else:
            tail_from = entry.end + 1
        if end_ms >= tail_from:
            tail_to = max(end_ms, entry.end)
            entry.merge(self.reader.select(key, tail_from, tail_to), tail_from, tail_to)
            entry.end = tail_to


class _CacheEntry:
    """The covered span of one fetch key and every series' samples in it."""

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.widest = end - start
        # per series: (name, labels, timestamps, values); no fetched SeriesData is kept, so a
        # merge never holds both the fetched arrays and their concatenation
        self.series: dict[_SeriesKey, tuple[str, Mapping[str, str], np.ndarray, np.ndarray]] = {}

    def merge(self, fetched: list[SeriesData], lo: int, hi: int) -> None:
        """Replace the cached samples in [lo, hi] by ``fetched``."""
        got = {(sd.name, tuple(sorted(sd.labels.items()))): sd for sd in fetched}
        for key in set(self.series) | set(got):
            old = self.series.get(key)
            sd = got.get(key)
            new_t = np.asarray(sd.timestamps, dtype=np.int64) if sd is not None else None
            new_v = np.asarray(sd.values, dtype=np.float64) if sd is not None else None
            if old is None:
                assert sd is not None and new_t is not None and new_v is not None
                self.series[key] = (sd.name, sd.labels, new_t, new_v)
                continue
            name, labels, ts, vals = old
            keep_lo, keep_hi = ts < lo, ts > hi
            parts_t = [ts[keep_lo]] + ([new_t] if new_t is not None else []) + [ts[keep_hi]]
            parts_v = [vals[keep_lo]] + ([new_v] if new_v is not None else []) + [vals[keep_hi]]
            self.series[key] = (name, labels, np.concatenate(parts_t), np.concatenate(parts_v))

    def trim(self, before: int) -> None:
        """Drop samples older than ``before`` (they fell out of every window asked for)."""
        if before <= self.start:
            return
        self.start = before
        for key, (name, labels, ts, vals) in list(self.series.items()):
            i = int(np.searchsorted(ts, before, side="left"))
            if i:
                self.series[key] = (name, labels, ts[i:], vals[i:])

    def window(self, lo: int, hi: int, filters: Sequence[Matcher]) -> list[SeriesData]:
        """The cached samples in [lo, hi] of the series ``filters`` match."""
        out = []
        for name, labels, ts, vals in self.series.values():
            if filters and not all(
                    m.matches(name if m.name == NAME else labels.get(m.name, ""))
                    for m in filters):
                continue
            a = int(np.searchsorted(ts, lo, side="left"))
            b = int(np.searchsorted(ts, hi, side="right"))
            if a < b:
                out.append(SeriesData(name, labels, ts[a:b], vals[a:b]))
        return out
