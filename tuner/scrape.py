"""Fetch scrape targets' ``/metrics`` with timeouts and a size cap; ``up`` per target.

``scrape_target`` never raises for a target's fault: it returns a ``ScrapeOutcome`` whose
``error_kind`` is one of ``connection``, ``timeout``, ``http_status``, ``oversized``,
``malformed`` (or empty on success), as Prometheus would report ``up=0`` for all of them.
``scrape_all`` scrapes several targets concurrently on a shared ``httpx.Client``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from tuner.config import Target
from tuner.errors import ExpositionError, ScrapeError
from tuner.exposition import Sample, normalize_samples, parse_exposition, with_target_labels

ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


@dataclass(frozen=True)
class ScrapeOutcome:
    """One scrape: samples (normalized, with target labels) or the reason it failed."""

    target: Target
    ts: float
    duration: float
    samples: list[Sample] = field(default_factory=list)
    error_kind: str = ""
    error: str = ""
    duplicates: int = 0
    non_finite: int = 0
    body_bytes: int = 0

    @property
    def up(self) -> bool:
        return not self.error_kind


def fetch_exposition(client: httpx.Client, url: str, timeout: float, max_bytes: int) -> str:
    """GET a /metrics body as text; raises ScrapeError with a stable ``kind``."""
    try:
        with client.stream(
            "GET", url, timeout=timeout, headers={"Accept": ACCEPT}, follow_redirects=True
        ) as resp:
            if resp.status_code != 200:
                raise ScrapeError("http_status", f"{url}: HTTP {resp.status_code}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ScrapeError(
                    "oversized", f"{url}: body of {declared} bytes exceeds the {max_bytes} cap"
                )
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise ScrapeError("oversized", f"{url}: body exceeds the {max_bytes}-byte cap")
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise ScrapeError("timeout", f"{url}: no complete answer within {timeout:g}s") from None
    except httpx.TransportError as exc:
        raise ScrapeError("connection", f"{url}: {type(exc).__name__}: {exc}") from None
    return b"".join(chunks).decode("utf-8", errors="replace")


def scrape_target(
    client: httpx.Client,
    target: Target,
    timeout: float,
    max_bytes: int,
    clock: Callable[[], float] = time.time,
) -> ScrapeOutcome:
    """Scrape one target; never raises for the target's faults."""
    ts = clock()
    started = time.perf_counter()
    try:
        body = fetch_exposition(client, target.url, target.timeout or timeout, max_bytes)
        parsed = parse_exposition(body)
    except ScrapeError as exc:
        return ScrapeOutcome(target, ts, time.perf_counter() - started, [], exc.kind, str(exc))
    except ExpositionError as exc:
        return ScrapeOutcome(
            target, ts, time.perf_counter() - started, [], "malformed", f"{target.url}: {exc}"
        )
    samples = with_target_labels(
        normalize_samples(parsed.samples, target.kind), target.target_labels
    )
    return ScrapeOutcome(
        target,
        ts,
        time.perf_counter() - started,
        samples,
        duplicates=parsed.duplicates,
        non_finite=parsed.non_finite,
        body_bytes=len(body),
    )


def scrape_all(
    client: httpx.Client,
    targets: Sequence[Target],
    timeout: float,
    max_bytes: int,
    clock: Callable[[], float] = time.time,
    pool: ThreadPoolExecutor | None = None,
) -> list[ScrapeOutcome]:
    """Scrape every target concurrently; results in target order."""
    if len(targets) <= 1 or pool is None:
        return [scrape_target(client, t, timeout, max_bytes, clock) for t in targets]
    futures = [pool.submit(scrape_target, client, t, timeout, max_bytes, clock) for t in targets]
    return [f.result() for f in futures]


def make_client(max_connections: int = 16) -> httpx.Client:
    """An HTTP client for scraping: pooled, keep-alive, no environment proxies."""
    return httpx.Client(
        limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=60),
        trust_env=False,
    )
