"""Drive a vLLM server with a ``LoadSpec``: streaming ``/v1/completions`` requests, closed or
open loop, each measured into a ``RequestRecord`` (``run_load``, ``run_load_sync``).

Prompts are lists of random token ids (so prompt lengths are exact; vLLM accepts token-id
prompts) and ``max_tokens`` is the sampled output length with ``ignore_eos`` (so output
lengths are exact too). Errors are recorded per request (HTTP status, timeout, connection,
broken stream) and never raised mid-run; a refusal by the server's admission control (HTTP 503,
or an HTTP 200 stream whose error event carries code 503, as vLLM 0.29+ sends when
``--max-num-queued-reqs``/``--max-num-queued-tokens`` is reached) is a *rejection*, recorded
with ``rejected=True`` apart from other errors; requests still running ``request_timeout`` seconds
after the run's end are cancelled and recorded as errors. The connection pool is sized to
the concurrency with a 60 s keep-alive.

Requests ask for ``return_token_ids`` (vLLM), so each streamed event says how many tokens it
carries (one per event when a server does not send them); events read together form one
chunk (``tuner.load.results.group_chunks``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from tuner.errors import LoadError
from tuner.httpconfig import DEFAULT_HTTP_CONFIG, HTTPClientConfig, make_async_client
from tuner.load.results import LoadResult, RequestRecord, chunk_itls, group_chunks
from tuner.load.spec import KEEPALIVE_SECONDS, LoadSpec

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
    #: Tokens the event carries (its ``token_ids``; 1 when the server does not send them).
    tokens: int = 1
    #: The error object's ``code`` (an HTTP status, e.g. 503 for an admission refusal).
    code: int | None = None


#: The HTTP status of a refusal by admission control (vLLM's QueueOverflowError and
#: MaxQueuedTokensError), as a response status or as an SSE error event's ``code``.
REJECTED_STATUS = 503


def _error_code(error: object) -> int | None:
    """The numeric ``code`` of an SSE error object (``{"code": 503, ...}``), if it has one."""
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().isdigit():
        return int(code.strip())
    return None


_DONE = StreamEvent("done")
_TOKEN = StreamEvent("token")
_OTHER = StreamEvent("other")
_TOKENS = {n: StreamEvent("token", tokens=n) for n in range(1, 17)}
_TOKEN_IDS = b'"token_ids":['


def count_token_ids(data: bytes) -> int:
    """Tokens in a streamed event: the length of its ``token_ids`` list (not
    ``prompt_token_ids``), or 1 when it has none (pure)."""
    at = data.find(_TOKEN_IDS)
    if at < 0:
        return 1
    start = at + len(_TOKEN_IDS)
    end = data.find(b"]", start)
    body = data[start:end if end >= 0 else len(data)].strip()
    return body.count(b",") + 1 if body else 0


def _token_event(n: int) -> StreamEvent:
    return _TOKENS.get(n) or StreamEvent("token", tokens=n)


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
        n = count_token_ids(data)
        if n == 0 or (b'"text":""' in data and _TOKEN_IDS not in data):
            return _OTHER
        return _token_event(n)
    try:
        event = json.loads(data)
    except ValueError:
        return StreamEvent("malformed", message=data[:200].decode("utf-8", "replace"))
    if not isinstance(event, dict):
        return StreamEvent("malformed", message=data[:200].decode("utf-8", "replace"))
    if event.get("error"):
        error = event["error"]
        text = error.get("message", error) if isinstance(error, dict) else error
        return StreamEvent("error", message=str(text)[:300], code=_error_code(error))
    usage = event.get("usage")
    choices = [c for c in event.get("choices") or [] if isinstance(c, dict)]
    ids = [c["token_ids"] for c in choices if isinstance(c.get("token_ids"), list)]
    n_tokens = sum(len(i) for i in ids) if ids else sum(1 for c in choices if c.get("text"))
    if isinstance(usage, dict):
        return StreamEvent("usage", completion_tokens=int(usage.get("completion_tokens", 0)),
                           prompt_tokens=int(usage.get("prompt_tokens", 0)) or None,
                           message="token" if n_tokens else "", tokens=max(1, n_tokens))
    return _token_event(n_tokens) if n_tokens else _OTHER


async def _one_request(client: httpx.AsyncClient, url: str, model: str, req: _Planned,
                       origin_wall: float, origin_mono: float) -> RequestRecord:
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.max_tokens,
            "ignore_eos": True, "stream": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}, "return_token_ids": True}
    t0 = time.monotonic()
    start = origin_wall + (t0 - origin_mono)
    chunks: list[float] = []  # arrival of each token event
    counts: list[int] = []  # tokens in each token event
    prompt_tokens = len(req.prompt)
    usage_out: int | None = None
    done = False

    def record(ok: bool, error: str, rejected: bool = False) -> RequestRecord:
        now = time.monotonic()
        times, tokens = group_chunks(chunks, counts)
        ttft = times[0] - t0 if times else math.nan
        gaps = tuple(b - a for a, b in itertools.pairwise(times))
        n_out = usage_out if usage_out is not None else sum(counts)
        return RequestRecord(ok=ok, error=error, prompt_tokens=prompt_tokens,
                             output_tokens=n_out if ok else 0, ttft=ttft,
                             itls=chunk_itls(gaps, tokens), e2e=now - t0, start=start,
                             chunk_gaps=gaps, chunk_tokens=tokens, rejected=rejected)

    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", errors="replace")
                return record(False, f"http {resp.status_code}: {text[:300]}",
                              rejected=resp.status_code == REJECTED_STATUS)
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
                        counts.append(ev.tokens)
                    elif ev.kind == "done":
                        done = True
                    elif ev.kind == "usage":
                        if ev.message == "token":
                            chunks.append(now)
                            counts.append(ev.tokens)
                        usage_out = ev.completion_tokens
                        prompt_tokens = ev.prompt_tokens or prompt_tokens
                    elif ev.kind == "error":
                        code = f" (code {ev.code})" if ev.code is not None else ""
                        return record(False, f"stream error{code}: {ev.message}",
                                      rejected=ev.code == REJECTED_STATUS)
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


#: How often (s) a run with a ``should_stop`` callback asks it.
STOP_POLL_S = 0.25
#: ``should_stop(records so far, now as epoch seconds) -> True`` ends the run early.
ShouldStop = Callable[[Sequence[RequestRecord], float], bool]


async def _wait_or_stop(aws: Sequence[asyncio.Future[Any]], hard_stop: float,
                        records: Sequence[RequestRecord], now_wall: Callable[[], float],
                        should_stop: ShouldStop | None) -> bool:
    """Wait for ``aws`` until ``hard_stop`` (monotonic); True if ``should_stop`` said stop."""
    pending = set(aws)
    while pending and time.monotonic() < hard_stop:
        timeout = max(0.0, hard_stop - time.monotonic())
        if should_stop is not None:
            timeout = min(timeout, STOP_POLL_S)
        _, pending = await asyncio.wait(pending, timeout=timeout)
        if should_stop is not None and should_stop(records, now_wall()):
            return True
    return False


async def _drive(client: httpx.AsyncClient, url: str, model: str, spec: LoadSpec,
                 plan: _Plan, rng: np.random.Generator, count_cap: int, duration: float,
                 measured: bool, should_stop: ShouldStop | None = None
                 ) -> tuple[list[RequestRecord], float, float]:
    """Issue requests until ``duration`` or ``count_cap`` (or until ``should_stop`` says so:
    then the requests in flight are cancelled and left out); returns records and window."""
    origin_wall, origin_mono = time.time(), time.monotonic()

    def now_wall() -> float:
        return origin_wall + (time.monotonic() - origin_mono)

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
        stopped = await _wait_or_stop(workers, hard_stop, records, now_wall, should_stop)
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
        stopped = False
        while scheduled < count_cap:
            next_at += float(rng.exponential(1.0 / spec.request_rate))
            if next_at >= stop_at:
                break
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if should_stop is not None and should_stop(records, now_wall()):
                stopped = True
                break
            t = asyncio.ensure_future(send())
            scheduled += 1
            pending.add(t)
            t.add_done_callback(pending.discard)
        if pending and not stopped:
            stopped = await _wait_or_stop(list(pending), hard_stop, records, now_wall,
                                          should_stop)
        for t in list(pending):
            t.cancel()
    for task, t0 in list(tasks.items()):
        if not task.done():
            task.cancel()
            if measured and not stopped:
                records.append(_cancelled_record(origin_wall, origin_mono, t0))
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    ended = origin_wall + (time.monotonic() - origin_mono)
    return records, origin_wall, ended


def make_client(pool_size: int, request_timeout: float,
                http: HTTPClientConfig = DEFAULT_HTTP_CONFIG) -> httpx.AsyncClient:
    """An AsyncClient with a pool of ``pool_size`` connections kept alive for 60 s, speaking
    ``http`` (the canaries' TLS and credentials, ``tuner.httpconfig``)."""
    return make_async_client(http, timeout=httpx.Timeout(request_timeout, connect=10.0),
                             max_connections=pool_size, keepalive_expiry=KEEPALIVE_SECONDS)


async def run_load(base_url: str, model: str, spec: LoadSpec,
                   client: httpx.AsyncClient | None = None,
                   should_stop: ShouldStop | None = None,
                   http_config: HTTPClientConfig = DEFAULT_HTTP_CONFIG) -> LoadResult:
    """Warm up, then drive ``spec`` against ``base_url`` (e.g. http://127.0.0.1:8000).

    ``should_stop`` (asked every ``STOP_POLL_S`` during the measured window with the records
    so far) may end the window early: the requests then in flight are cancelled, not counted.
    """
    if not base_url.startswith(("http://", "https://")):
        raise LoadError(f"load: base URL {base_url!r} must start with http:// or https://")
    url = base_url.rstrip("/") + "/v1/completions"
    rng = np.random.default_rng(spec.seed)
    plan = _Plan(spec, rng)
    own = client is None
    http = client or make_client(spec.pool_size, spec.request_timeout, http_config)
    try:
        if spec.warmup_requests:
            await _drive(http, url, model, spec, plan, rng, spec.warmup_requests,
                         spec.duration, measured=False)
        records, started, ended = await _drive(http, url, model, spec, plan, rng,
                                               spec.request_cap, spec.duration, measured=True,
                                               should_stop=should_stop)
    finally:
        if own:
            await http.aclose()
    if records:
        started = min(r.start for r in records)
    return LoadResult(records=tuple(sorted(records, key=lambda r: r.start)), started=started,
                      ended=ended)


def run_load_sync(base_url: str, model: str, spec: LoadSpec,
                  should_stop: ShouldStop | None = None,
                  http_config: HTTPClientConfig = DEFAULT_HTTP_CONFIG) -> LoadResult:
    """``run_load`` in a fresh event loop (for callers without one)."""
    return asyncio.run(run_load(base_url, model, spec, should_stop=should_stop,
                                http_config=http_config))
