"""The read side of Prometheus's HTTP API, answered from the embedded store by ``tuner.promql``.

``PrometheusApi(catalog, ...)`` gives the routes the daemon registers on its ``WebServer``
(so they sit behind whatever the listener puts in front of every route, TLS and auth):

* ``/api/v1/query``, ``/api/v1/query_range`` (GET or form POST) — ``Engine`` over the store,
  with the configured query timeout (a request's ``timeout`` can only shorten it) and sample
  limit, Prometheus's refusal of more than 11,000 points per series, and its error envelope:
  ``bad_data`` 400 for bad parameters and unparsable queries, ``execution`` 422 for evaluation
  errors and too many samples, ``timeout`` 503;
* ``/api/v1/series``, ``/api/v1/labels``, ``/api/v1/label/<name>/values`` — the store's
  catalogue of series with samples in ``[start, end]`` (``match[]`` selectors);
* ``/api/v1/metadata`` (from the newest scrapes, when the daemon gives a metadata view),
  ``/api/v1/rules`` and ``/api/v1/alerts`` (from the rule evaluator),
  ``/api/v1/status/buildinfo``, ``/api/v1/query_exemplars`` (no exemplars are stored: an
  empty list after validating the request) — what Grafana's Prometheus data source calls when
  it is saved and tested and when its query editor fills in names.

Every store read runs off the HTTP threads, at most ``max_concurrency`` at a time. Given
``worker_store`` (the daemon gives its store's path), queries and catalogue reads run in that
many worker processes (spawned, at a lower CPU priority), each with its own read-only view of
the store: a slow query then cannot take the interpreter from the scrape loop (it would, in a
thread: the GIL), and SQLite's WAL lets the scrape loop write while workers read. Without it
(tests, ``tuner status``-like readers) the same handlers run on a small thread pool.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tuner import __version__
from tuner.errors import ApiError, QueryError, QueryTimeoutError, StoreError
from tuner.promql import Engine, Expr, QueryLimits, SeriesReader, ValueType, VectorSelector
from tuner.promql import parse_expr as _parse_expr
from tuner.promql.syntax import type_of
from tuner.rules import RuleKind, RuleStatus
from tuner.store import Matcher, Store
from tuner.web.api_format import (
    MAX_TIME_MS,
    MIN_TIME_MS,
    ErrorType,
    alert_json,
    bad_data,
    bad_param,
    check_range,
    failure,
    matrix_json,
    parse_step,
    parse_time,
    rules_json,
    scalar_json,
    string_json,
    success,
    success_value,
    vector_json,
)
from tuner.web.server import Request, Response, Route, dispatch

log = logging.getLogger("tuner.web")
PROMETHEUS_VERSION = "2.42.0"  # the semantics tuner.promql follows; clients gate features on it
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
T = TypeVar("T")


class SeriesCatalog(SeriesReader, Protocol):
    """What the API reads: samples (``select``) and which series have any in a window."""

    def series_with_samples(self, matchers: Sequence[Matcher], start_ms: int,
                            end_ms: int) -> list[dict[str, str]]: ...


class RuleView(Protocol):
    """The rule evaluator as the API sees it (the daemon's ``Alerting``)."""

    def rule_statuses(self) -> list[RuleStatus]: ...


class MetadataView(Protocol):
    """Metric metadata from the newest scrapes: name → [{type, help, unit}]."""

    def metadata(self) -> Mapping[str, list[dict[str, str]]]: ...


class PrometheusApi:
    """The API's handlers over one store; ``routes()`` to register, ``close()`` at shutdown."""

    def __init__(
        self,
        catalog: SeriesCatalog,
        *,
        limits: QueryLimits | None = None,
        lookback_delta: float = 300.0,
        rules: RuleView | None = None,
        evaluation_interval: float = 15.0,
        metadata: MetadataView | None = None,
        max_concurrency: int = 4,
        worker_store: Path | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.limits = limits or QueryLimits()
        self.lookback_delta = lookback_delta
        self.rules = rules
        self.evaluation_interval = evaluation_interval
        self.metadata_view = metadata
        self.clock = clock
        self.monotonic = monotonic
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_concurrency),
                                        thread_name_prefix="tuner-query")
        self.worker_store = worker_store
        self.max_concurrency = max(1, max_concurrency)
        self._workers: Pool | None = None  # started by the first request that needs them
        self._workers_lock = threading.Lock()

    def routes(self) -> list[Route]:
        return [
            *self.store_routes(),
            Route("/api/v1/metadata", self._wrap(self.metadata)),
            Route("/api/v1/rules", self._wrap(self.rule_groups)),
            Route("/api/v1/alerts", self._wrap(self.alerts)),
            Route("/api/v1/status/buildinfo", self._wrap(self.buildinfo)),
        ]

    def store_routes(self) -> list[Route]:
        """The routes that read the store (what worker processes answer)."""
        both = ("GET", "POST")
        routes = [
            Route("/api/v1/query", self._wrap(self.query), both),
            Route("/api/v1/query_range", self._wrap(self.query_range), both),
            Route("/api/v1/series", self._wrap(self.series), both),
            Route("/api/v1/labels", self._wrap(self.labels), both),
            Route("/api/v1/label/", self._wrap(self.label_values)),
            Route("/api/v1/query_exemplars", self._wrap(self.query_exemplars), both),
        ]
        if self.worker_store is None:
            return routes
        return [Route(r.path, self._wrap(self._forward), r.methods) for r in routes]

    def _worker_pool(self) -> Pool:
        with self._workers_lock:
            if self._workers is None:
                ctx = multiprocessing.get_context("spawn")  # never fork a threaded daemon
                self._workers = ctx.Pool(self.max_concurrency, _worker_init,
                                         (str(self.worker_store), self.limits,
                                          self.lookback_delta, self.evaluation_interval))
            return self._workers

    def _forward(self, request: Request) -> Response:
        """Answer a store route in a worker process (``time`` defaults to our clock's now)."""
        params = {k: list(v) for k, v in request.params.items()}
        if request.path == "/api/v1/query" and not request.param("time"):
            params["time"] = [repr(self.clock())]
        job = self._worker_pool().apply_async(_worker_answer,
                                              (request.method, request.path, params))
        try:
            response: Response = job.get(timeout=self.limits.timeout + 60)
        except multiprocessing.TimeoutError:
            raise ApiError(ErrorType.INTERNAL, "query worker did not answer") from None
        return response

    def close(self) -> None:
        with self._workers_lock:
            if self._workers is not None:
                self._workers.terminate()  # a query still running is abandoned, not awaited
                self._workers.join()
                self._workers = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- plumbing ------------------------------------------------------------------------------

    @staticmethod
    def _wrap(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def answer(request: Request) -> Response:
            try:
                return handler(request)
            except ApiError as exc:
                return failure(exc)
        return answer

    def _run(self, fn: Callable[[], T]) -> T:
        """Run a store read on a query thread; engine and store errors become API errors."""
        try:
            return self._pool.submit(fn).result()
        except QueryTimeoutError as exc:
            raise ApiError(ErrorType.TIMEOUT, str(exc)) from None
        except QueryError as exc:  # evaluation errors, too many samples
            raise ApiError(ErrorType.EXECUTION, str(exc)) from None
        except StoreError as exc:
            raise ApiError(ErrorType.INTERNAL, str(exc)) from None
        except Exception as exc:  # e.g. SQLite busy past its timeout: still Prometheus's envelope
            log.exception("query API: store read failed")
            raise ApiError(ErrorType.INTERNAL, f"internal error: {exc}") from None

    def _engine(self, request: Request) -> Engine:
        limits = self.limits
        text = request.param("timeout")
        if text:
            limits = limits.with_timeout(parse_step(text, "timeout") / 1000)
        # a subquery without a step ([30m:]) steps at the evaluation interval, as in Prometheus
        return Engine(self.catalog, self.lookback_delta, limits=limits, clock=self.monotonic,
                      subquery_step=self.evaluation_interval)

    def _now_ms(self) -> int:
        return round(self.clock() * 1000)

    @staticmethod
    def _expr(request: Request) -> Expr:
        try:
            return _parse_expr(request.param("query") or "")
        except QueryError as exc:
            raise bad_param("query", str(exc)) from None

    @staticmethod
    def _time(request: Request, name: str, default: int) -> int:
        """An optional time parameter (Prometheus's parseTimeParam, with its wording)."""
        text = request.param(name)
        if not text:
            return default
        try:
            return parse_time(text, name)
        except ApiError as exc:
            prefix = f'invalid parameter "{name}": '
            raise bad_param(name, f"Invalid time value for '{name}': "
                            f"{str(exc).removeprefix(prefix)}") from None

    def _selectors(self, request: Request, required: bool) -> list[tuple[Matcher, ...]]:
        texts = request.params_all("match[]")
        if not texts:
            if required:
                raise bad_data("no match[] parameter provided")
            return [()]
        out = []
        for text in texts:
            try:
                e = _parse_expr(text)
            except QueryError as exc:
                raise bad_param("match[]", str(exc)) from None
            if not isinstance(e, VectorSelector) or e.offset_ms:
                raise bad_param("match[]", f"{text!r} is not a series selector "
                                "(metric name and label matchers only)")
            out.append(e.matchers)
        return out

    def _catalog(self, request: Request, required: bool) -> list[dict[str, str]]:
        """Distinct series matching any ``match[]`` with samples in ``[start, end]``, sorted."""
        sets = self._selectors(request, required)
        start = self._time(request, "start", MIN_TIME_MS)
        end = self._time(request, "end", MAX_TIME_MS)

        def read() -> list[dict[str, str]]:
            found: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
            for matchers in sets:
                for labels in self.catalog.series_with_samples(matchers, start, end):
                    found[tuple(sorted(labels.items()))] = labels
            return [dict(k) for k in sorted(found)]

        return self._run(read)

    # -- queries -------------------------------------------------------------------------------

    def query(self, request: Request) -> Response:
        ts_ms = self._time(request, "time", self._now_ms())
        engine = self._engine(request)
        expr = self._expr(request)
        result = self._run(lambda: engine.instant(expr, ts_ms / 1000))
        if result.kind is ValueType.SCALAR:
            assert result.scalar is not None
            return success(scalar_json(result.scalar, ts_ms))
        if result.kind is ValueType.STRING:
            return success(string_json(result.string or "", ts_ms))
        if result.kind is ValueType.MATRIX:
            return success(matrix_json([(s.labels, s.timestamps, s.values)
                                        for s in result.matrix]))
        return success(vector_json([(e.labels, e.value) for e in result.vector], ts_ms))

    def query_range(self, request: Request) -> Response:
        start = parse_time(_required(request, "start"), "start")
        end = parse_time(_required(request, "end"), "end")
        step = parse_step(_required(request, "step"))
        check_range(start, end, step)
        engine = self._engine(request)
        expr = self._expr(request)
        kind = type_of(expr)
        if kind not in (ValueType.SCALAR, ValueType.VECTOR):
            names = {ValueType.MATRIX: "range vector", ValueType.STRING: "string"}
            raise bad_data(f'invalid expression type "{names[kind]}" for range query, '
                           "must be Scalar or instant Vector")
        series = self._run(lambda: engine.range(expr, start / 1000, end / 1000, step / 1000))
        ordered = sorted(series, key=lambda s: sorted(s.labels.items()))
        return success(matrix_json([(s.labels, s.timestamps, s.values) for s in ordered]))

    def query_exemplars(self, request: Request) -> Response:
        self._expr(request)
        start = self._time(request, "start", MIN_TIME_MS)
        end = self._time(request, "end", MAX_TIME_MS)
        if end < start:
            raise bad_param("end", "end timestamp must not be before start time")
        return success("[]")  # the store keeps no exemplars

    # -- the catalogue -------------------------------------------------------------------------

    def series(self, request: Request) -> Response:
        return success_value(self._catalog(request, required=True))

    def labels(self, request: Request) -> Response:
        names = {k for labels in self._catalog(request, required=False) for k in labels}
        return success_value(sorted(names))

    def label_values(self, request: Request) -> Response:
        rest = request.path[len("/api/v1/label/"):]
        name, sep, tail = rest.partition("/")
        if not sep or tail != "values":
            raise ApiError(ErrorType.NOT_FOUND, f"not found: {request.path} "
                           "(try /api/v1/label/<name>/values)")
        if not _LABEL_NAME_RE.match(name):
            raise bad_data(f'invalid label name: "{name}"')
        values = {lb[name] for lb in self._catalog(request, required=False) if lb.get(name)}
        return success_value(sorted(values))

    # -- metadata, rules, alerts, build info -----------------------------------------------------

    def metadata(self, request: Request) -> Response:
        meta = dict(self.metadata_view.metadata()) if self.metadata_view else {}
        metric = request.param("metric")
        if metric:
            meta = {metric: meta[metric]} if metric in meta else {}
        limit = request.param("limit")
        if limit:
            try:
                n = int(limit)
            except ValueError:
                raise bad_data("limit must be a number") from None
            if n >= 0:
                meta = dict(list(sorted(meta.items()))[:n])
        return success_value(meta)

    def rule_groups(self, request: Request) -> Response:
        kinds = {"alert": RuleKind.ALERT, "record": RuleKind.RECORD, "": None}
        kind_text = request.param("type") or ""
        if kind_text not in kinds:
            raise bad_param("type", f'not supported value "{kind_text}"')
        statuses = self.rules.rule_statuses() if self.rules else []
        return success_value(rules_json(statuses, self.evaluation_interval, kinds[kind_text]))

    def alerts(self, _request: Request) -> Response:
        statuses = self.rules.rule_statuses() if self.rules else []
        return success_value({"alerts": [alert_json(a) for st in statuses for a in st.alerts]})

    def buildinfo(self, _request: Request) -> Response:
        info: dict[str, Any] = {
            "version": PROMETHEUS_VERSION, "revision": f"tuner-{__version__}",
            "branch": "tuner", "buildUser": "", "buildDate": "", "goVersion": "",
            "application": "tuner (embedded store and tuner.promql)",
        }
        return success_value(info)


def _required(request: Request, name: str) -> str:
    value = request.param(name)
    if not value:
        what = "duration" if name == "step" else "timestamp"
        raise bad_param(name, f'cannot parse "" to a valid {what}')
    return value


# -- worker processes ----------------------------------------------------------------------------

_WORKER: PrometheusApi | None = None


def _worker_init(store_path: str, limits: QueryLimits, lookback_delta: float,
                 evaluation_interval: float) -> None:
    """Start one query worker: lower CPU priority, its own read-only store."""
    global _WORKER
    os.nice(5)  # the scrape loop, in the daemon's process, comes first
    _WORKER = PrometheusApi(Store(store_path, read_only=True), limits=limits,
                            lookback_delta=lookback_delta, evaluation_interval=evaluation_interval,
                            max_concurrency=1)


def _worker_answer(method: str, path: str, params: dict[str, list[str]]) -> Response:
    assert _WORKER is not None
    return dispatch(_WORKER.store_routes(), Request(method, path, params))
