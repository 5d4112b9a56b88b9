"""Real vLLM CPU servers on the generated tiny model, for e2e tests.

The servers are started with the production launcher, ``tuner.canary.LocalCanary``, so tests
and ``tuner tune`` start vLLM the same way. A missing vLLM (or a server that does not come
up) fails the test: nothing is skipped.

Fixtures (all session-scoped, started lazily the first time a test asks for them, shared by
every later test of the session, stopped — process group and all — at session end):

- ``tiny_model_dir``          -> Path of the generated tiny Llama (tests.support.tiny_model)
- ``vllm_server``             -> VllmServer: default flags, 256 MiB KV cache, OMP bound to core 0
- ``vllm_preempting_server``  -> VllmServer: ``--num-gpu-blocks-override 24`` (3,072 tokens of
                                 KV), ``--max-num-seqs 64``, ``--max-model-len 2048``, so 32
                                 concurrent 256+512-token requests cause real preemptions;
                                 OMP bound to core 1
- ``vllm_specdecode_server``  -> VllmServer: ngram speculative decoding (3 tokens); core 1
- ``vllm_admission_server``   -> VllmServer: admission control, ``--max-num-seqs 4
                                 --max-num-queued-reqs 2``: under 24 concurrent requests most
                                 are refused with 503 (plain, or as an error event in an
                                 HTTP 200 stream); core 1

``VllmServer`` has ``url`` (``http://127.0.0.1:PORT``), ``metrics_url``, ``port``, ``model``
(the name to send in requests), ``log_path`` and ``canary`` (the LocalCanary).

Tests that share a server must not depend on its counters starting at zero: read the metric
before and after and compare deltas. When a test that used one of these fixtures fails, the
tail of the server log is attached to the report ("vllm log" section).

Outside pytest, ``start_vllm(...)`` returns a started LocalCanary (call ``.stop()``), and
``python -m tests.support.vllm [--flag k=v ...]`` starts one and keeps it up until Ctrl-C.
Anything that starts vLLM must run under ``flock /tmp/tuner-vllm.lock``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.tiny_model import REPO_ROOT, ensure_tiny_model
from tuner.canary import CanaryHandle, LaunchSpec, LocalCanary, read_tail

VLLM_CACHE_ROOT = REPO_ROOT / ".cache" / "vllm"
#: KV cache for test servers: the tiny model needs 4 KiB per token, so 256 MiB = 64k tokens.
DEFAULT_KV_BYTES = 256 * 1024 * 1024
HEALTH_TIMEOUT = float(os.environ.get("TUNER_VLLM_HEALTH_TIMEOUT", "240"))
#: Flags of the preempting server: 24 blocks x 128 tokens = 3,072 tokens of KV cache, so
#: max-model-len must fit in it (vLLM refuses to start when one max-length request cannot).
PREEMPTING_FLAGS: Mapping[str, Any] = {"num-gpu-blocks-override": 24, "max-num-seqs": 64,
                                       "max-model-len": 2048}
SPECDECODE_CONFIG = {"method": "ngram", "num_speculative_tokens": 3,
                     "prompt_lookup_max": 3, "prompt_lookup_min": 1}
#: Admission control: at most 2 unfinished requests, so a burst is mostly refused with 503.
ADMISSION_FLAGS: Mapping[str, Any] = {"max-num-seqs": 4, "max-num-queued-reqs": 2}
SERVED_NAME = "tiny-llama"


def vllm_lock_path() -> Path:
    """The lock every starter of a vLLM server takes (``TUNER_VLLM_LOCK``, default
    ``/tmp/tuner-vllm.lock``, the one ``flock`` in the README uses)."""
    return Path(os.environ.get("TUNER_VLLM_LOCK", "/tmp/tuner-vllm.lock"))


@contextlib.contextmanager
def vllm_lock() -> Iterator[None]:
    """Hold the vLLM lock (two CPU servers side by side contend) for the ``with`` block."""
    with vllm_lock_path().open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def vllm_env(cores: str = "0", kv_space_gib: int | None = None) -> dict[str, str]:
    """Environment for a CPU vLLM test server: explicit OMP binding, warm compile cache."""
    env = {
        "VLLM_CACHE_ROOT": str(VLLM_CACHE_ROOT),
        "VLLM_CPU_OMP_THREADS_BIND": cores,
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "INFO"),
        "TOKENIZERS_PARALLELISM": "false",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if kv_space_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_space_gib)
    return env


def test_launch_spec(model_dir: Path, flags: Mapping[str, Any] | None = None, cores: str = "0",
                     kv_bytes: int | None = DEFAULT_KV_BYTES,
                     env: Mapping[str, str] | None = None) -> LaunchSpec:
    """A LaunchSpec for the tiny model with test defaults (explicit KV size, max-model-len 4096).

    ``flags`` override the defaults; pass ``kv_bytes=None`` and put the KV size in ``flags`` or
    ``env`` (VLLM_CPU_KVCACHE_SPACE) to control it yourself.
    """
    base: dict[str, Any] = {"max-model-len": 4096, "dtype": "bfloat16"}
    if kv_bytes is not None:
        base["kv-cache-memory-bytes"] = kv_bytes
    base.update(flags or {})
    return LaunchSpec(model=str(model_dir), flags=base, served_model_name=SERVED_NAME,
                      env={**vllm_env(cores), **(env or {})})


test_launch_spec.__test__ = False  # type: ignore[attr-defined]  # not a test despite the name


def start_vllm(model_dir: Path | None = None, log_path: Path | None = None,
               flags: Mapping[str, Any] | None = None, cores: str = "0",
               kv_bytes: int | None = DEFAULT_KV_BYTES,
               health_timeout: float = HEALTH_TIMEOUT) -> LocalCanary:
    """Start a vLLM CPU server on the tiny model and wait for /health; returns the canary."""
    model_dir = model_dir or ensure_tiny_model()
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="tuner-vllm-")) / "vllm.log"
    canary = LocalCanary(test_launch_spec(model_dir, flags, cores, kv_bytes), log_path,
                         health_timeout=health_timeout)
    canary.start()
    return canary


@dataclass(frozen=True)
class VllmServer:
    """A running test server."""

    canary: LocalCanary = field(repr=False)
    handle: CanaryHandle
    model: str = SERVED_NAME
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def metrics_url(self) -> str:
        return self.handle.metrics_url

    @property
    def port(self) -> int:
        return self.handle.port

    @property
    def log_path(self) -> Path:
        return self.handle.log_path

    def log_tail(self, lines: int = 80) -> str:
        return read_tail(self.handle.log_path, lines)

    def sidecar_settings(self, store: str | Path, target: str = "vllm-0",
                         **extra: Any) -> dict[str, Any]:
        """A daemon config (``tuner.yaml`` as a dict) that scrapes this server every second into
        ``store`` and listens on an ephemeral port; ``extra`` keys are added or replace these."""
        return {
            "targets": [{"name": target, "url": self.metrics_url, "kind": "vllm"}],
            "scrape_interval": "1s",
            "store": {"path": str(store), "retention": "1h"},
            "listen": "127.0.0.1:0",
            **extra,
        }


def _serve(tmp_factory: pytest.TempPathFactory, name: str, model_dir: Path,
           flags: Mapping[str, Any] | None, cores: str) -> Iterator[VllmServer]:
    log_path = tmp_factory.mktemp(name) / "vllm.log"
    canary = LocalCanary(test_launch_spec(model_dir, flags, cores), log_path,
                         health_timeout=HEALTH_TIMEOUT)
    t0 = time.monotonic()
    handle = canary.start()  # CanaryFailed carries the log tail into the error
    server = VllmServer(canary=canary, handle=handle, startup_seconds=time.monotonic() - t0)
    try:
        yield server
    finally:
        canary.stop()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory,
                tiny_model_dir: Path) -> Iterator[VllmServer]:
    yield from _serve(tmp_path_factory, "vllm-default", tiny_model_dir, None, "0")


@pytest.fixture(scope="session")
def vllm_preempting_server(tmp_path_factory: pytest.TempPathFactory,
                           tiny_model_dir: Path) -> Iterator[VllmServer]:
    yield from _serve(tmp_path_factory, "vllm-preempting", tiny_model_dir, PREEMPTING_FLAGS, "1")


@pytest.fixture(scope="session")
def vllm_specdecode_server(tmp_path_factory: pytest.TempPathFactory,
                           tiny_model_dir: Path) -> Iterator[VllmServer]:
    flags = {"speculative-config": SPECDECODE_CONFIG}
    yield from _serve(tmp_path_factory, "vllm-specdecode", tiny_model_dir, flags, "1")


@pytest.fixture(scope="session")
def vllm_admission_server(tmp_path_factory: pytest.TempPathFactory,
                          tiny_model_dir: Path) -> Iterator[VllmServer]:
    yield from _serve(tmp_path_factory, "vllm-admission", tiny_model_dir, ADMISSION_FLAGS, "1")


_SERVER_FIXTURES = ("vllm_server", "vllm_preempting_server", "vllm_specdecode_server",
                    "vllm_admission_server")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the server log tail to the report of a failed test that used a vLLM fixture."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs: dict[str, Any] = getattr(item, "funcargs", {}) or {}
    for name in _SERVER_FIXTURES:
        server = funcargs.get(name)
        if isinstance(server, VllmServer):
            report.sections.append((f"{name} log ({server.log_path})", server.log_tail(120)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="start a vLLM CPU server on the tiny model")
    parser.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                        help="extra vLLM flag (NAME=true for a bare flag)")
    parser.add_argument("--cores", default="0", help="VLLM_CPU_OMP_THREADS_BIND (default 0)")
    parser.add_argument("--log", type=Path, help="log file (default: a temp file)")
    args = parser.parse_args(argv)
    flags: dict[str, Any] = {}
    for item in args.flag:
        key, _, value = item.partition("=")
        flags[key] = True if value.lower() == "true" else value
    t0 = time.monotonic()
    canary = start_vllm(log_path=args.log, flags=flags, cores=args.cores)
    assert canary.handle is not None
    print(f"{canary.handle.url} model={SERVED_NAME} log={canary.handle.log_path} "
          f"ready in {time.monotonic() - t0:.1f}s", flush=True)
    try:
        while canary.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        canary.stop()


if __name__ == "__main__":
    main()
