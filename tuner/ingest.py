"""One ingest step: a scrape outcome -> the series stored for it, for production and canaries.

Like Prometheus, ingesting one scrape of a target stores, besides the samples it returned:

* ``up`` (1 or 0), ``scrape_duration_seconds`` and ``scrape_samples_scraped``, with the
  target's labels (``job``, ``instance``, its own labels);
* a stale marker for every series the target exported at its previous scrape and not at this
  one; a failed scrape returns no samples, so all of the target's series go stale at once;
* a row in the store's scrape log (``Store.record_scrape``: what ``tuner status`` shows).

A target that goes away for good (a canary stopped after its trial) is ``retire``d: all its
series, ``up`` and ``scrape_*`` included, get a stale marker, as Prometheus does for a target
that leaves service discovery, and ingest forgets it.

A write that fails (a locked or full store) is not dropped: its batch stays in a bounded retry
buffer (``retry_batches`` scrapes; beyond that the oldest are dropped and counted) and is
written, in order, at the next flush.

``Ingest`` is the one implementation: the daemon ingests its targets' scrapes with it
(``tuner.daemon``), and every canary trial ingests its canary's scrapes with it
(``tuner.tune.trial``), so a canary really is just another scrape target. What happened comes
back as an ``IngestReport``; the daemon turns that into its own ``tuner_*`` metrics, so this
module needs no metrics library. Safe to call from several threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from tuner.errors import StoreError
from tuner.exposition import Labels, Sample, labels_of
from tuner.scrape import ScrapeOutcome
from tuner.store import STALE_NAN, ScrapeRecord, Store

#: Scrapes kept for a retry while the store cannot be written (two minutes at 1 s).
RETRY_BUFFER_BATCHES = 120

SeriesKey = tuple[str, Labels]
#: The series ingest adds to every scrape of a target, with the target's labels.
SCRAPE_SERIES = ("up", "scrape_duration_seconds", "scrape_samples_scraped")


@dataclass(frozen=True)
class StoreFailure:
    """A store write that failed: the scrape log row of ``target``, or a batch (``target=""``)."""

    target: str
    message: str


@dataclass(frozen=True)
class IngestReport:
    """What one ``ingest``/``flush`` call did.

    ``stored`` samples were written, ``dropped`` samples were given up because the retry buffer
    was full, ``pending`` batches wait for the next flush, ``failures`` are the writes that
    failed (a batch that failed is kept, unless it was dropped).
    """

    stored: int = 0
    dropped: int = 0
    pending: int = 0
    failures: tuple[StoreFailure, ...] = field(default_factory=tuple)


def scrape_series(outcome: ScrapeOutcome, previous: set[SeriesKey]) -> list[Sample]:
    """The samples one scrape stores: its own, ``up``/``scrape_*``, and stale markers for the
    series of ``previous`` (the target's series at its last scrape) that it no longer has."""
    labels = labels_of(outcome.target.target_labels)
    current = {(s.name, s.labels) for s in outcome.samples}
    batch = list(outcome.samples)
    batch += [
        Sample("up", labels, 1.0 if outcome.up else 0.0),
        Sample("scrape_duration_seconds", labels, outcome.duration),
        Sample("scrape_samples_scraped", labels, float(len(outcome.samples))),
    ]
    batch += [Sample(n, lab, STALE_NAN) for n, lab in sorted(previous - current)]
    return batch


class Ingest:
    """Scrape outcomes into a store, with per-target series memory and a retry buffer."""

    def __init__(self, store: Store, retry_batches: int = RETRY_BUFFER_BATCHES) -> None:
        if retry_batches < 1:
            raise ValueError(f"retry_batches must be at least 1, got {retry_batches}")
        self.store = store
        self.retry_batches = retry_batches
        self._series: dict[str, set[SeriesKey]] = {}
        self._last: dict[str, tuple[int, Labels]] = {}  # last scrape (ms) and target labels
        self._pending: deque[tuple[list[Sample], int]] = deque()
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Batches waiting in the retry buffer."""
        with self._lock:
            return len(self._pending)

    def ingest(self, outcomes: Iterable[ScrapeOutcome]) -> IngestReport:
        """Queue each outcome's series, log each scrape, then flush (never raises StoreError)."""
        failures: list[StoreFailure] = []
        with self._lock:
            for outcome in outcomes:
                name = outcome.target.name
                batch = scrape_series(outcome, self._series.get(name, set()))
                self._series[name] = {(s.name, s.labels) for s in outcome.samples}
                ts_ms = int(outcome.ts * 1000)
                self._last[name] = (ts_ms, labels_of(outcome.target.target_labels))
                self._pending.append((batch, ts_ms))
                try:
                    self.store.record_scrape(
                        ScrapeRecord(
                            name,
                            outcome.ts,
                            outcome.up,
                            outcome.duration,
                            len(outcome.samples),
                            outcome.error_kind,
                            outcome.error,
                        )
                    )
                except StoreError as exc:
                    failures.append(StoreFailure(name, str(exc)))
            report = self._flush()
        return IngestReport(report.stored, report.dropped, report.pending,
                            (*failures, *report.failures))

    def retire(self, target: str, ts: float) -> IngestReport:
        """The target is gone: stale markers for all its series (``up`` and ``scrape_*``
        too) just after its last scrape, then flush. A target never ingested is a no-op."""
        with self._lock:
            if target not in self._last:
                return IngestReport(pending=len(self._pending))
            last_ms, labels = self._last.pop(target)
            gone = self._series.pop(target, set()) | {(n, labels) for n in SCRAPE_SERIES}
            batch = [Sample(n, lab, STALE_NAN) for n, lab in sorted(gone)]
            self._pending.append((batch, max(int(ts * 1000), last_ms + 1)))
            return self._flush()

    def flush(self) -> IngestReport:
        """Write what the retry buffer holds, oldest first; stop at the first failure."""
        with self._lock:
            return self._flush()

    def _flush(self) -> IngestReport:
        stored = dropped = 0
        failures: list[StoreFailure] = []
        while self._pending:
            batch, ts_ms = self._pending[0]
            try:
                stored += self.store.append(batch, ts_ms)
            except StoreError as exc:
                failures.append(
                    StoreFailure("", f"{exc} (keeping {len(self._pending)} scrapes to retry)")
                )
                while len(self._pending) > self.retry_batches:
                    lost, _ = self._pending.popleft()
                    dropped += len(lost)
                break
            self._pending.popleft()
        return IngestReport(stored, dropped, len(self._pending), tuple(failures))
