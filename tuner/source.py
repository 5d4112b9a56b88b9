"""Where history comes from: the embedded store or a Prometheus server, behind one interface.

Both sources are a :class:`Source`: a ``tuner.promql.Querier`` (``instant(expr, ts) ->
QueryResult``, ``range(expr, start, end, step) -> tuple[RangeSeries, ...]``) that also says
what it is (``description``) and which data it holds (``time_range() -> (oldest, newest) |
None``, unix seconds). One contract test suite (tests/integration/test_history_sources.py)
runs the same tests against both.

``LocalSource`` wraps ``tuner.promql.Engine`` over a ``tuner.store.Store``.
``PrometheusSource`` asks a Prometheus server through ``prometheus_api_client`` (the only
module that imports it). Prometheus returns sample values as strings; they are converted to
floats here, and an empty result is an empty tuple (never a KeyError, as
``MetricRangeDataFrame`` would raise). A query either source cannot answer raises a
``TunerError`` naming the source and the query: ``QueryError`` from the local evaluator,
``SourceError`` from Prometheus (unreachable, timed out, or the query refused).

Layering: a source returns ``tuner.promql`` result types, so this module sits above
``tuner.promql``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tuner.errors import QueryError, SecretFileError, SourceError
from tuner.httpconfig import DEFAULT_HTTP_CONFIG, HTTPClientConfig, request_headers, tls_context
from tuner.promql import (
    Element,
    Engine,
    Querier,
    QueryResult,
    RangeSeries,
    ValueType,
    WindowCache,
)

if TYPE_CHECKING:
    import requests

    from tuner.store import Store

__all__ = ["LocalSource", "PrometheusSource", "Source", "SourceError"]


class Source(Querier, Protocol):
    """What ``suggest``, ``workload`` and fleet-mode rules need from a history source."""

    description: str

    def time_range(self) -> tuple[float, float] | None: ...

    def cache_window(self, start: float, end: float) -> None:
        """A hint that the next queries read inside ``[start, end]``: a source that can keep
        that window in memory does (the store); one that cannot ignores it (Prometheus)."""


class LocalSource:
    """History from the sidecar's embedded store, evaluated by ``tuner.promql.Engine``."""

    def __init__(self, store: Store, lookback_delta: float = 300.0) -> None:
        self.store = store
        self.lookback_delta = lookback_delta
        self.engine = Engine(reader=store, lookback_delta=lookback_delta)
        self.description = f"store {store.path}"

    def cache_window(self, start: float, end: float) -> None:
        """Serve reads from memory from now on, each metric of ``[start, end]`` read once."""
        cache = WindowCache(self.store, by_name=True,
                            window=(math.floor(start * 1000), math.ceil(end * 1000)))
        self.engine = Engine(reader=cache, lookback_delta=self.lookback_delta)

    def instant(self, expr: str, ts: float) -> QueryResult:
        try:
            return self.engine.instant(expr, ts)
        except QueryError as exc:
            raise QueryError(f"{self.description}: query {expr!r}: {exc}") from None

    def range(self, expr: str, start: float, end: float, step: float) -> tuple[RangeSeries, ...]:
        try:
            return self.engine.range(expr, start, end, step)
        except QueryError as exc:
            raise QueryError(f"{self.description}: range query {expr!r}: {exc}") from None

    def time_range(self) -> tuple[float, float] | None:
        rng = self.store.time_range()
        if rng is None:
            return None
        return rng[0] / 1000.0, rng[1] / 1000.0


# Probes for time_range(): series every vLLM and DCGM exporter has, cheap to scan.
TIME_RANGE_PROBES = ("vllm:num_requests_running", "DCGM_FI_DEV_GPU_UTIL")


def _float(value: Any) -> float:
    """Prometheus sends sample values as strings ("1.5", "NaN", "+Inf")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _tls_adapter(http: HTTPClientConfig, max_retries: Any = 0) -> requests.adapters.HTTPAdapter:
    """A requests adapter that uses the TLS context of ``http.tls`` (and its ``server_name``)."""
    from requests.adapters import HTTPAdapter

    context = tls_context(http.tls)

    class _Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["ssl_context"] = context
            if http.tls.insecure_skip_verify:
                kwargs["cert_reqs"] = "CERT_NONE"
            if http.tls.server_name:
                kwargs["server_hostname"] = http.tls.server_name
                kwargs["assert_hostname"] = (False if http.tls.insecure_skip_verify
                                             else http.tls.server_name)
            super().init_poolmanager(*args, **kwargs)

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            return None  # the SSL context decides (ca_file, insecure_skip_verify)

    return _Adapter(max_retries=max_retries)


def _requests_session(http: HTTPClientConfig) -> requests.Session:
    """A ``requests.Session`` that speaks ``http`` (mount ``_tls_adapter`` on the URL): its
    credentials and headers read from their files before each request, its proxy."""
    import requests

    class _Auth(requests.auth.AuthBase):
        def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
            r.headers.update(request_headers(http))
            return r

    session = requests.Session()
    session.trust_env = False
    session.verify = not http.tls.insecure_skip_verify
    session.auth = _Auth()
    if http.proxy_url:
        session.proxies = {"http": http.proxy_url, "https": http.proxy_url}
    if not http.follow_redirects:
        session.max_redirects = 0
    return session


class PrometheusSource:
    """History from a Prometheus server's HTTP API (``/api/v1/query``, ``/query_range``).

    ``http`` is the Prometheus ``http_config`` of the server (``tuner.httpconfig``: TLS,
    basic auth or a bearer token read from files before each request, tenant headers, proxy);
    ``session`` a ``requests.Session`` to use instead (passed in so callers control retries);
    by default a session made from ``http`` that ignores proxy environment variables.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        http: HTTPClientConfig = DEFAULT_HTTP_CONFIG,
    ) -> None:
        from prometheus_api_client import PrometheusConnect

        self.url = url.rstrip("/")
        self.timeout = timeout
        own_session = session is None
        if session is None:
            session = _requests_session(http)
        self.session = session
        self.description = f"prometheus {self.url}"
        self._clock = clock
        self._client = PrometheusConnect(
            url=self.url,
            headers=dict(headers) if headers else None,
            disable_ssl=False,
            session=session,
            timeout=math.ceil(timeout),
        )
        if own_session:  # PrometheusConnect mounted a plain adapter on the URL: ours instead
            retries = getattr(session.get_adapter(self.url), "max_retries", 0)
            session.mount(self.url, _tls_adapter(http, retries))

    # -- errors ------------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> SourceError:
        import requests
        from prometheus_api_client.exceptions import PrometheusApiClientException

        if isinstance(exc, requests.ConnectionError):
            return SourceError(f"Prometheus at {self.url} is unreachable ({what}): {exc}")
        if isinstance(exc, requests.Timeout):
            return SourceError(
                f"Prometheus at {self.url} did not answer within {self.timeout:g}s ({what})"
            )
        if isinstance(exc, PrometheusApiClientException):
            return SourceError(f"Prometheus at {self.url} refused {what}: {exc}")
        return SourceError(f"Prometheus at {self.url}: {what} failed: {exc}")

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import requests
        from prometheus_api_client.exceptions import PrometheusApiClientException

        try:
            return fn(*args, **kwargs)
        except (requests.RequestException, PrometheusApiClientException, ValueError) as exc:
            raise self._fail(what, exc) from None
        except SecretFileError as exc:
            raise SourceError(f"Prometheus at {self.url}: {what}: {exc}") from None

    # -- queries -----------------------------------------------------------------------

    def instant(self, expr: str, ts: float) -> QueryResult:
        data = self._call(
            f"query {expr!r}", self._client.custom_query, expr, params={"time": f"{ts:.3f}"}
        )
        # custom_query returns data.result only; its shape tells the result type.
        if isinstance(data, list) and len(data) == 2 and not isinstance(data[0], dict):
            if isinstance(data[1], str) and _is_number(data[1]):
                return QueryResult(kind=ValueType.SCALAR, scalar=_float(data[1]))
            return QueryResult(kind=ValueType.STRING, string=str(data[1]))
        items = list(data or [])
        if items and "values" in items[0]:
            matrix = tuple(
                RangeSeries(
                    dict(item.get("metric", {})),
                    np.array([float(p[0]) for p in item["values"]], dtype=np.float64),
                    np.array([_float(p[1]) for p in item["values"]], dtype=np.float64),
                )
                for item in items
            )
            return QueryResult(kind=ValueType.MATRIX, matrix=matrix)
        vector = tuple(
            Element(dict(item.get("metric", {})), _float(item["value"][1])) for item in items
        )
        return QueryResult(kind=ValueType.VECTOR, vector=vector)

    def range(self, expr: str, start: float, end: float, step: float) -> tuple[RangeSeries, ...]:
        # custom_query_range rounds start/end to whole seconds; ask for whole seconds.
        data = self._call(
            f"range query {expr!r}",
            self._client.custom_query_range,
            expr,
            start_time=datetime.fromtimestamp(round(start), UTC),
            end_time=datetime.fromtimestamp(round(end), UTC),
            step=f"{step:g}s",
        )
        out = []
        for item in data or []:
            values = item.get("values") or []
            if not values:
                continue
            out.append(
                RangeSeries(
                    dict(item.get("metric", {})),
                    np.array([float(p[0]) for p in values], dtype=np.float64),
                    np.array([_float(p[1]) for p in values], dtype=np.float64),
                )
            )
        return tuple(out)

    def cache_window(self, start: float, end: float) -> None:
        """Nothing to keep: Prometheus reads its own blocks (``Source.cache_window``)."""

    def time_range(
        self,
        probes: Sequence[str] = TIME_RANGE_PROBES,
        lookback: float = 90 * 86400.0,
        now: float | None = None,
    ) -> tuple[float, float] | None:
        """Oldest and newest sample of the ``probes`` within ``lookback`` of ``now`` (±5 min).

        Uses a subquery at 5-minute resolution (one metric name per query, because
        ``timestamp`` drops the name), which every Prometheus since 2.7 answers.
        """
        if now is None:
            now = self._clock() if self._clock is not None else datetime.now(UTC).timestamp()
        lb = f"{int(lookback)}s"
        lows: list[float] = []
        highs: list[float] = []
        for probe in probes:
            for agg, out in (("min", lows), ("max", highs)):
                res = self.instant(f"{agg}({agg}_over_time(timestamp({probe})[{lb}:5m]))", now)
                out.extend(e.value for e in res.vector if math.isfinite(e.value))
        if not lows or not highs:
            return None
        return float(min(lows)), float(max(highs))

    def check(self) -> None:
        """Raise SourceError unless the server answers its readiness endpoint."""
        resp = self._call(
            "GET /-/ready", self.session.get, f"{self.url}/-/ready", timeout=self.timeout
        )
        if resp.status_code == 404:  # behind a proxy that only forwards the API
            resp = self._call(
                "GET /api/v1/query", self.session.get, f"{self.url}/api/v1/query",
                params={"query": "1"}, timeout=self.timeout,
            )
        if resp.status_code != 200:
            raise SourceError(
                f"Prometheus at {self.url} is not ready: HTTP {resp.status_code} "
                f"{resp.text[:200]!r}"
            )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
