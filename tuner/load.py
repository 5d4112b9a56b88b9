"""Drive a vLLM server with a load spec and measure client-side TTFT, ITL and throughput.

A small async HTTP load generator (httpx): streaming ``/v1/completions`` requests whose
prompts are lists of random token ids (so prompt lengths are exact; vLLM accepts token-id
prompts) and whose ``max_tokens`` is the sampled output length with ``ignore_eos`` (so output
lengths are exact too). Arrivals are either closed loop (``concurrency`` workers, each sends
its next request when the previous one ends) or open loop (Poisson arrivals at
``request_rate`` per second, optionally capped at ``concurrency`` requests in flight).

TTFT is the time from sending a request to the first streamed token; ITLs are the gaps
between later chunks (one chunk is one token except with speculative decoding). Errors are
recorded per request (HTTP status, timeout, connection, broken stream) and never raised
mid-run. Every run is bounded: no request starts after ``duration`` seconds or after
``max_requests`` (hard cap HARD_MAX_REQUESTS), and requests still running ``request_timeout``
seconds after that are cancelled and recorded as errors.

The connection pool is sized to the concurrency with a 60 s keep-alive, so a closed-loop run
reuses its connections instead of churning them (churn made vLLM CPU stalls worse).

``load_spec_from_workload`` reads a workload fingerprint (see its docstring for the fields).
``summarize`` is pure: records -> LoadSummary (percentiles, rates, error rate).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from tuner.errors import ConfigError, LoadError

HARD_MAX_REQUESTS = 100_000
MAX_DURATION = 24 * 3600.0
#: Connection-pool size for open-loop runs without a concurrency cap.
OPEN_LOOP_POOL = 256
KEEPALIVE_SECONDS = 60.0
LENGTH_KINDS = ("fixed", "uniform", "normal", "lognormal", "empirical")


# --------------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class LengthDist:
    """A distribution of token counts; samples are integers clipped to [low, high].

    - ``fixed``: always ``mean``.
    - ``uniform``: integers in [low, high].
    - ``normal``: mean, std.
    - ``lognormal``: the distribution's own mean and std (not those of its logarithm).
    - ``empirical``: ``weights`` over ``values`` (points), or over buckets given by
      ``edges`` (len(weights)+1 ascending bounds; bucket i holds the integers in
      (edges[i], edges[i+1]], as a Prometheus ``le`` bucket; a sample is uniform inside it).
    """

    kind: str
    mean: float = 0.0
    std: float = 0.0
    low: int = 1
    high: int | None = None
    values: tuple[float, ...] = ()
    edges: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        where = f"length distribution ({self.kind})"
        if self.kind not in LENGTH_KINDS:
            raise ConfigError(f"length distribution: kind {self.kind!r} is not allowed "
                              f"(allowed: {', '.join(LENGTH_KINDS)})")
        if self.low < 1:
            raise ConfigError(f"{where}: low must be >= 1, got {self.low}")
        if self.high is not None and self.high < self.low:
            raise ConfigError(f"{where}: high ({self.high}) must be >= low ({self.low})")
        if self.kind in ("fixed", "normal", "lognormal") and not (
                math.isfinite(self.mean) and self.mean >= 1):
            raise ConfigError(f"{where}: mean must be a finite number >= 1, got {self.mean}")
        if self.kind in ("normal", "lognormal") and not (
                math.isfinite(self.std) and self.std >= 0):
            raise ConfigError(f"{where}: std must be a finite number >= 0, got {self.std}")
        if self.kind == "uniform" and self.high is None:
            raise ConfigError(f"{where}: needs low and high")
        if self.kind == "empirical":
            self._check_empirical(where)

    def _check_empirical(self, where: str) -> None:
        w = self.weights
        if not w or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise ConfigError(f"{where}: weights must be non-negative numbers with a "
                              "positive sum")
        if self.edges:
            if len(self.edges) != len(w) + 1:
                raise ConfigError(f"{where}: edges needs len(weights)+1 = {len(w) + 1} "
                                  f"bounds, got {len(self.edges)}")
            if any(b <= a for a, b in itertools.pairwise(self.edges)) or not all(
                    math.isfinite(e) for e in self.edges):
                raise ConfigError(f"{where}: edges must be finite and strictly ascending")
        elif len(self.values) != len(w):
            raise ConfigError(f"{where}: needs values (same length as weights) or edges")

    @property
    def max_length(self) -> int:
        """An upper bound of the samples (8192 for unbounded normal/lognormal)."""
        if self.high is not None:
            return self.high
        if self.kind == "fixed":
            return max(self.low, round(self.mean))
        if self.kind == "empirical":
            top = max(self.edges) if self.edges else max(self.values)
            return max(self.low, math.floor(top))
        return 8192

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` integer token counts (int64 array)."""
        raw: np.ndarray
        if self.kind == "fixed":
            raw = np.full(n, float(self.mean))
        elif self.kind == "uniform":
            assert self.high is not None
            raw = rng.integers(self.low, self.high + 1, size=n).astype(float)
        elif self.kind == "normal":
            raw = rng.normal(self.mean, self.std, size=n)
        elif self.kind == "lognormal":
            sigma2 = math.log1p((self.std / self.mean) ** 2)
            mu = math.log(self.mean) - sigma2 / 2
            raw = rng.lognormal(mu, math.sqrt(sigma2), size=n)
        else:
            p = np.asarray(self.weights, dtype=float)
            p = p / p.sum()
            idx = rng.choice(len(p), size=n, p=p)
            if self.edges:
                e = np.floor(np.asarray(self.edges, dtype=float)).astype(np.int64)
                lo = e[idx] + 1
                hi = np.maximum(lo, e[idx + 1])
                raw = rng.integers(lo, hi + 1).astype(float)
            else:
                raw = np.asarray(self.values, dtype=float)[idx]
        out = np.rint(raw)
        hi = np.inf if self.high is None else self.high
        return np.clip(out, self.low, hi).astype(np.int64)


# --------------------------------------------------------------------------- spec and records


@dataclass(frozen=True)
class LoadSpec:
    """What load to send. Closed loop with ``concurrency``; Poisson open loop with
    ``request_rate`` (then ``concurrency``, if set, caps requests in flight)."""

    prompt_tokens: LengthDist
    output_tokens: LengthDist
    concurrency: int | None = None
    request_rate: float | None = None
    duration: float = 10.0
    max_requests: int | None = None
    warmup_requests: int = 0
    seed: int = 0
    prefix_share: float = 0.0
    request_timeout: float = 120.0
    token_id_range: tuple[int, int] = (100, 2000)

    def __post_init__(self) -> None:
        if self.concurrency is None and self.request_rate is None:
            raise ConfigError("load: set concurrency (closed loop) or request_rate "
                              "(Poisson open loop)")
        if self.concurrency is not None and not 1 <= self.concurrency <= 10_000:
            raise ConfigError(f"load: concurrency must be 1..10000, got {self.concurrency}")
        if self.request_rate is not None and not (
                math.isfinite(self.request_rate) and self.request_rate > 0):
            raise ConfigError(f"load: request_rate must be > 0 requests/s, "
                              f"got {self.request_rate}")
        if not (math.isfinite(self.duration) and 0 < self.duration <= MAX_DURATION):
            raise ConfigError(f"load: duration must be in (0, {MAX_DURATION:g}] seconds, "
                              f"got {self.duration}")
        if self.max_requests is not None and not 1 <= self.max_requests <= HARD_MAX_REQUESTS:
            raise ConfigError(f"load: max_requests must be 1..{HARD_MAX_REQUESTS}, "
                              f"got {self.max_requests}")
        if not 0 <= self.warmup_requests <= 10_000:
            raise ConfigError(f"load: warmup_requests must be 0..10000, "
                              f"got {self.warmup_requests}")
        if not 0.0 <= self.prefix_share <= 1.0:
            raise ConfigError(f"load: prefix_share must be in [0, 1], got {self.prefix_share}")
        if not (math.isfinite(self.request_timeout) and self.request_timeout > 0):
            raise ConfigError(f"load: request_timeout must be > 0, got {self.request_timeout}")
        lo, hi = self.token_id_range
        if not 0 <= lo < hi:
            raise ConfigError(f"load: token_id_range must be [low, high) with 0 <= low < high, "
                              f"got {self.token_id_range}")

    @property
    def request_cap(self) -> int:
        return min(self.max_requests or HARD_MAX_REQUESTS, HARD_MAX_REQUESTS)

    @property
    def pool_size(self) -> int:
        return self.concurrency or OPEN_LOOP_POOL


@dataclass(frozen=True)
class RequestRecord:
    """One measured request. Times in seconds; ``start`` is wall-clock (epoch) time."""

    ok: bool
    error: str
    prompt_tokens: int
    output_tokens: int
    ttft: float
    itls: tuple[float, ...]
    e2e: float
    start: float


@dataclass(frozen=True)
class LoadResult:
    """All measured requests (warm-up excluded); ``started``/``ended`` are epoch seconds of the
    measured window (first request sent, last request finished)."""

    records: tuple[RequestRecord, ...]
    started: float
    ended: float


@dataclass(frozen=True)
class LoadSummary:
    """Aggregates of a LoadResult; latencies over successful requests (NaN if none)."""

    requests: int
    errors: int
    error_rate: float
    output_tokens: int
    output_tok_per_s: float
    request_rate: float
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float
    e2e_p99: float
    duration: float


# --------------------------------------------------------------------------- summary


def _pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.percentile(arr, q)) if arr.size else math.nan


def summarize(result: LoadResult) -> LoadSummary:
    """Percentiles and rates of a load run (pure)."""
    recs = result.records
    ok = [r for r in recs if r.ok]
    errors = len(recs) - len(ok)
    duration = max(0.0, result.ended - result.started)
    out_tokens = sum(r.output_tokens for r in ok)
    itls = [x for r in ok for x in r.itls]
    return LoadSummary(
        requests=len(recs),
        errors=errors,
        error_rate=errors / len(recs) if recs else math.nan,
        output_tokens=out_tokens,
        output_tok_per_s=out_tokens / duration if duration > 0 else math.nan,
        request_rate=len(ok) / duration if duration > 0 else math.nan,
        ttft_p50=_pct([r.ttft for r in ok], 50),
        ttft_p99=_pct([r.ttft for r in ok], 99),
        itl_p50=_pct(itls, 50),
        itl_p99=_pct(itls, 99),
        e2e_p99=_pct([r.e2e for r in ok], 99),
        duration=duration,
    )


# --------------------------------------------------------------------------- requests


@dataclass
class _Planned:
    prompt: list[int]
    max_tokens: int


@dataclass
class _Plan:
    """Pre-sampled request shapes (deterministic for a seed), handed out in order."""

    spec: LoadSpec
    rng: np.random.Generator
    shared_prefix: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        lo, hi = self.spec.token_id_range
        longest = self.spec.prompt_tokens.max_length
        if self.spec.prefix_share > 0:
            self.shared_prefix = self.rng.integers(lo, hi, size=longest).tolist()

    def next(self) -> _Planned:
        spec = self.spec
        n_prompt = int(spec.prompt_tokens.sample(self.rng, 1)[0])
        n_out = int(spec.output_tokens.sample(self.rng, 1)[0])
        lo, hi = spec.token_id_range
        n_shared = min(round(spec.prefix_share * n_prompt), len(self.shared_prefix))
        prompt = self.shared_prefix[:n_shared] + self.rng.integers(
            lo, hi, size=n_prompt - n_shared).tolist()
        return _Planned(prompt=prompt, max_tokens=n_out)


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event of a streamed completion, as the load client needs it."""

    kind: str  # "token" | "done" | "usage" | "error" | "malformed" | "other"
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    message: str = ""


_DONE = StreamEvent("done")
_TOKEN = StreamEvent("token")
_OTHER = StreamEvent("other")


def parse_sse_line(line: bytes) -> StreamEvent:
    """Classify one SSE line of vLLM's streamed /v1/completions (pure).

    The common case — a chunk carrying text, in vLLM's compact JSON — is recognised without
    decoding JSON; chunks with usage, errors or unfamiliar formatting are decoded in full.
    """
    if not line.startswith(b"data:"):
        return _OTHER
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    if b'"usage":{' not in data and b'"error"' not in data and b'"text":"' in data:
        return _OTHER if b'"text":""' in data else _TOKEN
    try:
        event = json.loads(data)
    except ValueError:
        return StreamEvent("malformed", message=data[:200].decode("utf-8", "replace"))
    if not isinstance(event, dict):
        return StreamEvent("malformed", message=data[:200].decode("utf-8", "replace"))
    if event.get("error"):
        return StreamEvent("error", message=str(event["error"])[:300])
    usage = event.get("usage")
    has_text = any(isinstance(c, dict) and c.get("text") for c in event.get("choices") or [])
    if isinstance(usage, dict):
        return StreamEvent("usage", completion_tokens=int(usage.get("completion_tokens", 0)),
                           prompt_tokens=int(usage.get("prompt_tokens", 0)) or None,
                           message="token" if has_text else "")
    return _TOKEN if has_text else _OTHER


async def _one_request(client: httpx.AsyncClient, url: str, model: str, req: _Planned,
                       origin_wall: float, origin_mono: float) -> RequestRecord:
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.max_tokens,
            "ignore_eos": True, "stream": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    start = origin_wall + (t0 - origin_mono)
    chunks: list[float] = []
    prompt_tokens = len(req.prompt)
    usage_out: int | None = None
    done = False

    def record(ok: bool, error: str) -> RequestRecord:
        now = time.monotonic()
        ttft = chunks[0] - t0 if chunks else math.nan
        itls = tuple(b - a for a, b in itertools.pairwise(chunks))
        n_out = usage_out if usage_out is not None else len(chunks)
        return RequestRecord(ok=ok, error=error, prompt_tokens=prompt_tokens,
                             output_tokens=n_out if ok else 0, ttft=ttft, itls=itls,
                             e2e=now - t0, start=start)

    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", errors="replace")
                return record(False, f"http {resp.status_code}: {text[:300]}")
            buffer = b""
            async for piece in resp.aiter_bytes():
                now = time.monotonic()
                buffer += piece
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    ev = parse_sse_line(line)
                    if ev is _OTHER:
                        continue
                    if ev.kind == "token":
                        chunks.append(now)
                    elif ev.kind == "done":
                        done = True
                    elif ev.kind == "usage":
                        if ev.message == "token":
                            chunks.append(now)
                        usage_out = ev.completion_tokens
                        prompt_tokens = ev.prompt_tokens or prompt_tokens
                    elif ev.kind == "error":
                        return record(False, f"stream error: {ev.message}")
                    elif ev.kind == "malformed":
                        return record(False, f"malformed stream chunk: {ev.message}")
                if done:
                    break
    except httpx.TimeoutException as exc:
        return record(False, f"timeout: {type(exc).__name__}")
    except httpx.HTTPError as exc:
        return record(False, f"connection: {type(exc).__name__}: {exc}"[:300])
    if not done:
        return record(False, "stream ended without [DONE]")
    if not chunks:
        return record(False, "no tokens streamed")
    return record(True, "")


def _cancelled_record(origin_wall: float, origin_mono: float, t0: float) -> RequestRecord:
    return RequestRecord(ok=False, error="cancelled: still running at the run's time limit",
                         prompt_tokens=0, output_tokens=0, ttft=math.nan, itls=(),
                         e2e=time.monotonic() - t0, start=origin_wall + (t0 - origin_mono))


async def _drive(client: httpx.AsyncClient, url: str, model: str, spec: LoadSpec,
                 plan: _Plan, rng: np.random.Generator, count_cap: int, duration: float,
                 measured: bool) -> tuple[list[RequestRecord], float, float]:
    """Issue requests until ``duration`` or ``count_cap``; returns records and window."""
    origin_wall, origin_mono = time.time(), time.monotonic()
    stop_at = origin_mono + duration
    hard_stop = stop_at + spec.request_timeout
    records: list[RequestRecord] = []
    issued = 0
    tasks: dict[asyncio.Task[RequestRecord], float] = {}

    def launch() -> asyncio.Task[RequestRecord]:
        nonlocal issued
        issued += 1
        task = asyncio.ensure_future(
            _one_request(client, url, model, plan.next(), origin_wall, origin_mono))
        tasks[task] = time.monotonic()
        return task

    if spec.request_rate is None:  # closed loop
        assert spec.concurrency is not None

        async def worker() -> None:
            while issued < count_cap and time.monotonic() < stop_at:
                task = launch()
                records.append(await asyncio.shield(task))
                tasks.pop(task, None)

        workers = [asyncio.ensure_future(worker()) for _ in range(spec.concurrency)]
        await asyncio.wait(workers, timeout=max(0.0, hard_stop - time.monotonic()))
        for w in workers:
            w.cancel()
    else:  # Poisson open loop
        cap = asyncio.Semaphore(spec.concurrency) if spec.concurrency else None
        next_at = time.monotonic()
        pending: set[asyncio.Task[None]] = set()

        async def send() -> None:
            if cap is not None:
                async with cap:
                    if time.monotonic() >= hard_stop:
                        return
                    task = launch()
                    records.append(await asyncio.shield(task))
            else:
                task = launch()
                records.append(await asyncio.shield(task))
            tasks.pop(task, None)

        scheduled = 0
        while scheduled < count_cap:
            next_at += float(rng.exponential(1.0 / spec.request_rate))
            if next_at >= stop_at:
                break
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            t = asyncio.ensure_future(send())
            scheduled += 1
            pending.add(t)
            t.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, hard_stop - time.monotonic()))
        for t in list(pending):
            t.cancel()
    for task, t0 in list(tasks.items()):
        if not task.done():
            task.cancel()
            if measured:
                records.append(_cancelled_record(origin_wall, origin_mono, t0))
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    ended = origin_wall + (time.monotonic() - origin_mono)
    return records, origin_wall, ended


def make_client(pool_size: int, request_timeout: float) -> httpx.AsyncClient:
    """An AsyncClient with a pool of ``pool_size`` connections kept alive for 60 s."""
    limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size,
                          keepalive_expiry=KEEPALIVE_SECONDS)
    timeout = httpx.Timeout(request_timeout, connect=10.0)
    return httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)


async def run_load(base_url: str, model: str, spec: LoadSpec,
                   client: httpx.AsyncClient | None = None) -> LoadResult:
    """Warm up, then drive ``spec`` against ``base_url`` (e.g. http://127.0.0.1:8000)."""
    if not base_url.startswith(("http://", "https://")):
        raise LoadError(f"load: base URL {base_url!r} must start with http:// or https://")
    url = base_url.rstrip("/") + "/v1/completions"
    rng = np.random.default_rng(spec.seed)
    plan = _Plan(spec, rng)
    own = client is None
    http = client or make_client(spec.pool_size, spec.request_timeout)
    try:
        if spec.warmup_requests:
            await _drive(http, url, model, spec, plan, rng, spec.warmup_requests,
                         spec.duration, measured=False)
        records, started, ended = await _drive(http, url, model, spec, plan, rng,
                                               spec.request_cap, spec.duration, measured=True)
    finally:
        if own:
            await http.aclose()
    if records:
        started = min(r.start for r in records)
    return LoadResult(records=tuple(sorted(records, key=lambda r: r.start)), started=started,
                      ended=ended)


def run_load_sync(base_url: str, model: str, spec: LoadSpec) -> LoadResult:
    """``run_load`` in a fresh event loop (for callers without one)."""
    return asyncio.run(run_load(base_url, model, spec))


# --------------------------------------------------------------------------- workload fingerprint


def _dist_from(where: str, raw: Any) -> LengthDist:
    """A LengthDist from a fingerprint entry (see load_spec_from_workload)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return LengthDist("fixed", mean=float(raw))
    if not isinstance(raw, Mapping):
        raise ConfigError(f"workload: {where} must be a number or a mapping, "
                          f"got {type(raw).__name__}")
    if "histogram" in raw:
        return _dist_from_histogram(where, raw["histogram"], raw)
    if "buckets" in raw:
        return _dist_from_buckets(where, raw["buckets"], raw)
    allowed = {"kind", "mean", "std", "low", "high", "values", "edges", "weights"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"workload: {where} has unknown key(s) {sorted(unknown)} "
                          f"(allowed: {', '.join(sorted(allowed | {'histogram'}))})")
    try:
        return LengthDist(
            kind=str(raw.get("kind", "lognormal" if "std" in raw else "fixed")),
            mean=float(raw.get("mean", 0.0)), std=float(raw.get("std", 0.0)),
            low=int(raw.get("low", 1)),
            high=None if raw.get("high") is None else int(raw["high"]),
            values=tuple(float(v) for v in raw.get("values", ())),
            edges=tuple(float(v) for v in raw.get("edges", ())),
            weights=tuple(float(v) for v in raw.get("weights", ())))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"workload: {where}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"workload: {where}: {exc}") from exc


def _dist_from_buckets(where: str, buckets: Any, raw: Mapping[str, Any]) -> LengthDist:
    """``tuner.workload`` LENGTHS: ``buckets = [{"lo", "hi", "p"}, ...]`` -> empirical.

    Gaps between buckets get weight 0; a bucket with ``hi == lo`` (the +Inf bucket, reported
    at the top finite bound) is the length ``lo``.
    """
    try:
        items = sorted((float(b["lo"]), float(b["hi"]), float(b["p"])) for b in buckets)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"workload: {where}.buckets must be a list of {{lo, hi, p}} "
                          f"mappings ({exc})") from exc
    items = [(lo, hi, p) for lo, hi, p in items if p > 0]
    if not items:
        raise ConfigError(f"workload: {where}.buckets has no bucket with p > 0")
    edges: list[float] = [max(items[0][0], 0.0)]
    weights: list[float] = []
    for lo, hi, p in items:
        if hi <= lo:  # the +Inf bucket, reported at the top finite bound: the point ``lo``
            if weights and edges[-1] == lo and edges[-2] < lo - 1.0:
                edges[-1] = lo - 1.0  # split the point off the bucket below
            lo, hi = lo - 1.0, lo
        if lo > edges[-1]:  # a gap of empty buckets
            edges.append(lo)
            weights.append(0.0)
        if hi <= edges[-1]:
            weights[-1] += p
            continue
        edges.append(hi)
        weights.append(p)
    high = raw.get("high")
    return LengthDist("empirical", edges=tuple(edges), weights=tuple(weights),
                      low=int(raw.get("low", 1)),
                      high=None if high is None else int(high))


def _dist_from_histogram(where: str, buckets: Any, raw: Mapping[str, Any]) -> LengthDist:
    """Prometheus-style cumulative buckets [[le, count], ...] -> empirical bucket weights."""
    try:
        pairs = sorted((float(le), float(c)) for le, c in buckets)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"workload: {where}.histogram must be [[le, cumulative_count], ...]"
                          ) from exc
    finite = [(le, c) for le, c in pairs if math.isfinite(le)]
    if not finite:
        raise ConfigError(f"workload: {where}.histogram has no finite bucket bound")
    high = int(raw.get("high", finite[-1][0]))
    edges = [0.0]
    weights: list[float] = []
    prev = 0.0
    for le, c in finite:
        if le <= edges[-1]:
            prev = c
            continue
        edges.append(le)
        weights.append(max(0.0, c - prev))
        prev = c
    if sum(weights) <= 0:
        raise ConfigError(f"workload: {where}.histogram has no observations")
    return LengthDist("empirical", edges=tuple(edges), weights=tuple(weights),
                      low=int(raw.get("low", 1)), high=max(high, 1))


def load_spec_from_workload(workload: Mapping[str, Any], **overrides: Any) -> LoadSpec:
    """A LoadSpec from a workload fingerprint (JSON from ``tuner suggest``, or hand-written).

    Fields (lengths in tokens, rates per second):

    - ``prompt_tokens``, ``output_tokens`` (required): a number (fixed length), a mapping of
      LengthDist fields (``{"kind": "lognormal", "mean": 512, "std": 200, "high": 4096}``;
      without ``kind``: lognormal if ``std`` is given, else fixed), or
      ``{"histogram": [[le, cumulative_count], ...], "high": N}`` — the buckets of
      ``vllm:request_prompt_tokens`` / ``vllm:request_generation_tokens``.
      The LENGTHS object of ``tuner.workload`` (``{"buckets": [{"lo", "hi", "p"}, ...], ...}``,
      other keys ignored) is read as the same empirical distribution.
    - ``request_rate`` (or ``request_rate_per_s``, as ``tuner.workload`` writes it): mean
      arrival rate (Poisson open loop); and/or ``concurrency``.
    - optional ``prefix_share`` (0..1; or ``prefix_cache_hit_rate``, used as the shared
      fraction), ``duration``, ``max_requests``, ``warmup_requests``, ``seed``.

    ``overrides`` (LoadSpec field names) win over the fingerprint, e.g. a fixed duration.
    """
    if not isinstance(workload, Mapping):
        raise ConfigError("workload: the fingerprint must be a mapping (JSON object)")
    for key in ("prompt_tokens", "output_tokens"):
        if workload.get(key) is None:
            raise ConfigError(f"workload: {key!r} is missing or null (a length distribution "
                              "is needed; a fingerprint of a window without requests has none)")
    kwargs: dict[str, Any] = {
        "prompt_tokens": _dist_from("prompt_tokens", workload["prompt_tokens"]),
        "output_tokens": _dist_from("output_tokens", workload["output_tokens"]),
    }
    numeric = {"request_rate": float, "concurrency": int, "duration": float,
               "max_requests": int, "warmup_requests": int, "seed": int,
               "prefix_share": float}
    for key, conv in numeric.items():
        value = workload.get(key)
        if key == "prefix_share" and value is None:
            value = workload.get("prefix_cache_hit_rate")
        if key == "request_rate" and value is None:
            value = workload.get("request_rate_per_s")
        if value is None:
            continue
        try:
            kwargs[key] = conv(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"workload: {key} must be a number, got {value!r}") from exc
    kwargs.update(overrides)
    return LoadSpec(**kwargs)
