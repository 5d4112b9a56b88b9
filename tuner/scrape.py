"""Fetch scrape targets' ``/metrics`` with timeouts and a size cap; ``up`` per target.

``scrape_target`` never raises for a target's fault: it returns a ``ScrapeOutcome`` whose
``error_kind`` is one of ``connection``, ``tls`` (an expired, untrusted or wrong-host
certificate, a refused client certificate), ``timeout``, ``http_status``, ``oversized``,
``malformed``, ``secret`` (a credentials file never readable) or empty on success, as
Prometheus would report ``up=0`` for all of them. ``scrape_all`` scrapes several targets
concurrently; ``target_clients`` makes each target's ``httpx.Client`` from its ``http_config``
(``tuner.httpconfig``: TLS, credentials, headers, proxy), one client per distinct config.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from tuner.config import Target
from tuner.errors import ExpositionError, ScrapeError, SecretFileError
from tuner.exposition import (
    MetricMetadata,
    Sample,
    normalize_samples,
    parse_exposition,
    with_target_labels,
)
from tuner.httpconfig import DEFAULT_HTTP_CONFIG, HTTPClientConfig
from tuner.httpconfig import make_client as make_http_client

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
    metadata: tuple[MetricMetadata, ...] = ()  # the families' TYPE/HELP/UNIT

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
        tls = _tls_failure(exc)
        if tls is not None:
            raise ScrapeError("tls", f"{url}: TLS: {tls}") from None
        raise ScrapeError("connection", f"{url}: {type(exc).__name__}: {exc}") from None
    except SecretFileError as exc:
        raise ScrapeError("secret", f"{url}: {exc}") from None
    return b"".join(chunks).decode("utf-8", errors="replace")


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS reason behind a transport error (certificate expired, untrusted, wrong host)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        if isinstance(seen, ssl.SSLError):
            return seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return text if "SSL" in text or "CERTIFICATE" in text else None


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
        metadata=parsed.metadata,
    )


Clients = httpx.Client | Mapping[str, httpx.Client]


def _client_for(clients: Clients, target: Target) -> httpx.Client:
    return clients if isinstance(clients, httpx.Client) else clients[target.name]


def scrape_all(
    client: Clients,
    targets: Sequence[Target],
    timeout: float,
    max_bytes: int,
    clock: Callable[[], float] = time.time,
    pool: ThreadPoolExecutor | None = None,
) -> list[ScrapeOutcome]:
    """Scrape every target concurrently; results in target order.

    ``client`` is one client for all targets, or each target's by name (``target_clients``).
    """
    if len(targets) <= 1 or pool is None:
        return [scrape_target(_client_for(client, t), t, timeout, max_bytes, clock)
                for t in targets]
    futures = [pool.submit(scrape_target, _client_for(client, t), t, timeout, max_bytes, clock)
               for t in targets]
    return [f.result() for f in futures]


def target_clients(targets: Sequence[Target], max_connections: int = 16
                   ) -> dict[str, httpx.Client]:
    """Each target's client by name, made from its ``http`` config; targets that share a
    config share a client."""
    by_config: dict[HTTPClientConfig, httpx.Client] = {}
    out = {}
    for t in targets:
        if t.http not in by_config:
            by_config[t.http] = make_client(max_connections, t.http)
        out[t.name] = by_config[t.http]
    return out


def make_client(max_connections: int = 16,
                http: HTTPClientConfig = DEFAULT_HTTP_CONFIG) -> httpx.Client:
    """An HTTP client for scraping: pooled, keep-alive, no environment proxies."""
    return make_http_client(http, max_connections=max_connections)
