"""Deliver alerts to one or more Alertmanagers (``POST /api/v2/alerts``) without blocking.

``Notifier.send(alerts)`` only records the alerts and returns: a worker thread does the HTTP.
Each Alertmanager has its own bounded queue keyed by the alert's label set, so a newer state
of an alert (a resend, or its resolution with ``endsAt``) replaces the queued one, and the
queue holds the *current* alerts rather than a backlog of stale copies. When the queue is
full the oldest alert is dropped and counted. A failed delivery (connection error, timeout,
HTTP 5xx or 429) keeps the alerts queued and retries with exponential back-off and jitter;
an Alertmanager that was down for ten minutes receives the current alerts as soon as it
answers again. HTTP 4xx other than 429 means the payload is wrong: the batch is dropped and
counted, as Prometheus's notifier does. Resending firing alerts every ``resend_delay`` and
sending resolved ones with ``endsAt`` is the rule engine's job (``tuner.rules``); this module
delivers whatever it is handed.

The HTTP client (``httpx``) and the clock are passed in; defaults are one client per
Alertmanager made by ``tuner.httpconfig`` from its ``http_config`` (TLS, basic auth or a token,
headers, proxy; proxy environment variables ignored) and ``time.monotonic``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from tuner.httpconfig import HTTPClientConfig, make_client

log = logging.getLogger(__name__)

API_PATH = "/api/v2/alerts"


class AlertLike(Protocol):
    """What the notifier needs from an alert (``tuner.rules.AlertState`` has it)."""

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def annotations(self) -> Mapping[str, str]: ...

    @property
    def generator_url(self) -> str: ...

    @property
    def starts_at(self) -> float: ...

    @property
    def ends_at(self) -> float: ...


def rfc3339(ts: float) -> str:
    """Unix seconds -> RFC 3339 UTC with milliseconds, as Alertmanager's API expects."""
    t = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def alert_payload(alert: AlertLike) -> dict[str, Any]:
    """One alert as Alertmanager's v2 API takes it."""
    body: dict[str, Any] = {
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "generatorURL": alert.generator_url,
    }
    if alert.starts_at:
        body["startsAt"] = rfc3339(alert.starts_at)
    if alert.ends_at:
        body["endsAt"] = rfc3339(alert.ends_at)
    return body


@dataclass(frozen=True)
class DeliveryStats:
    """Counters of one Alertmanager's delivery (exported on the daemon's /metrics)."""

    url: str
    sent: int
    failed_attempts: int
    dropped: int
    queued: int
    consecutive_failures: int
    last_error: str
    last_success: float | None


class _Target:
    def __init__(self, url: str, client: httpx.Client) -> None:
        self.url = url.rstrip("/")
        self.client = client
        self.pending: OrderedDict[tuple[tuple[str, str], ...], dict[str, Any]] = OrderedDict()
        self.failures = 0
        self.next_attempt = 0.0
        self.sent = 0
        self.failed_attempts = 0
        self.dropped = 0
        self.last_error = ""
        self.last_success: float | None = None
        self.in_flight = False


class Notifier:
    """Queues alerts per Alertmanager and delivers them from a worker thread.

    ``capacity`` bounds each Alertmanager's queue (distinct alerts); ``batch_size`` alerts go
    in one POST. Back-off after ``n`` consecutive failures is
    ``min(backoff_max, backoff_initial * 2**(n-1))`` scaled by ``1 ± jitter``.
    """

    def __init__(
        self,
        alertmanagers: Sequence[str],
        *,
        client: httpx.Client | None = None,
        http: Sequence[HTTPClientConfig] | None = None,
        timeout: float = 10.0,
        capacity: int = 10000,
        batch_size: int = 64,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        jitter: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be at least 1")
        self._own_client = client is None
        self._client = client or make_client(timeout=timeout)
        if http is not None and len(http) != len(alertmanagers):
            raise ValueError("one http config per Alertmanager")
        self._own_clients = [] if client is not None or http is None else [
            make_client(h, timeout=timeout) for h in http]
        self._targets = [_Target(u, self._own_clients[i] if self._own_clients else self._client)
                         for i, u in enumerate(alertmanagers)]
        self.capacity = capacity
        self.batch_size = batch_size
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    # -- caller side (never blocks on the network) ----------------------------------------

    def send(self, alerts: Iterable[AlertLike]) -> int:
        """Queue alerts for every Alertmanager; returns how many were queued. Never blocks."""
        payloads = [alert_payload(a) for a in alerts]
        if not payloads or not self._targets:
            return 0
        with self._lock:
            for t in self._targets:
                for p in payloads:
                    key = tuple(sorted(p["labels"].items()))
                    t.pending[key] = p
                    t.pending.move_to_end(key)
                    while len(t.pending) > self.capacity:
                        t.pending.popitem(last=False)
                        t.dropped += 1
        self._wake.set()
        return len(payloads)

    def stats(self) -> list[DeliveryStats]:
        with self._lock:
            return [
                DeliveryStats(t.url, t.sent, t.failed_attempts, t.dropped, len(t.pending),
                              t.failures, t.last_error, t.last_success)
                for t in self._targets
            ]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Notifier:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="tuner-notify", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker (after at most one in-flight request) and close our own client."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._own_client:
            self._client.close()
        for c in self._own_clients:
            c.close()

    def __enter__(self) -> Notifier:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def flush(self, timeout: float) -> bool:
        """Wait until every queue is empty (delivered or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while any(t.pending or t.in_flight for t in self._targets):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    # -- worker -----------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        base = min(self.backoff_max, self.backoff_initial * 2 ** max(0, failures - 1))
        return max(0.0, base * (1 + self.jitter * self._rng.uniform(-1, 1)))

    def _run(self) -> None:
        while not self._stopping.is_set():
            now = self.clock()
            work: list[tuple[_Target, list[tuple[Any, dict[str, Any]]]]] = []
            wait: float | None = None
            with self._lock:
                for t in self._targets:
                    if not t.pending:
                        continue
                    if now >= t.next_attempt:
                        batch = list(t.pending.items())[: self.batch_size]
                        t.in_flight = True
                        work.append((t, batch))
                    else:
                        left = t.next_attempt - now
                        wait = left if wait is None else min(wait, left)
            for t, batch in work:
                self._deliver(t, batch)
            if work:
                continue  # more may be queued (batches, new alerts): look again at once
            self._wake.wait(wait)
            self._wake.clear()

    def _deliver(self, t: _Target, batch: list[tuple[Any, dict[str, Any]]]) -> None:
        error = ""
        permanent = False
        try:
            r = t.client.post(t.url + API_PATH, json=[p for _k, p in batch])
            if r.status_code >= 300:
                error = f"HTTP {r.status_code}: {r.text[:200]}"
                permanent = 400 <= r.status_code < 500 and r.status_code != 429
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            t.in_flight = False
            if not error or permanent:
                for key, p in batch:
                    if t.pending.get(key) is p:  # not replaced by a newer state meanwhile
                        del t.pending[key]
            if not error:
                t.sent += len(batch)
                t.failures = 0
                t.next_attempt = 0.0
                t.last_success = time.time()
                t.last_error = ""
            else:
                t.failed_attempts += 1
                t.last_error = error
                if permanent:
                    t.dropped += len(batch)
                    log.error("alertmanager %s refused %d alerts: %s", t.url, len(batch), error)
                else:
                    t.failures += 1
                    delay = self._backoff(t.failures)
                    t.next_attempt = self.clock() + delay
                    log.warning("alertmanager %s: delivery failed (%s); retry in %.1fs",
                                t.url, error, delay)
            self._idle.notify_all()
