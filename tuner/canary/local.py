"""The local canary backend: vLLM in a subprocess with its own process group, always stopped.

``LocalCanary`` runs the command with stdout/stderr in a log file. A server that exits, runs
out of memory, or misses ``/health`` within the timeout raises ``CanaryFailed`` with ``reason``
in ``exit | oom | health_timeout | start_error`` and the log tail. Every started process group
is registered; ``stop_all_canaries()`` (run at exit, and from the SIGTERM/SIGINT handlers that
``install_cleanup_handlers()`` installs) kills them, so no canary outlives the tuner. A spec
with ``cpus`` starts the server pinned to them (CPU affinity, inherited by its workers).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from tuner.canary.launch import CanaryHandle, LaunchSpec, build_argv, http_ok
from tuner.canary.logs import (
    detect_oom,
    failure_reason,
    read_tail,
    rejected_flags,
    root_cause,
)
from tuner.errors import CanaryFailed, TunerError

_REGISTRY: dict[int, subprocess.Popen[bytes]] = {}
_REGISTRY_LOCK = threading.Lock()


def _register(proc: subprocess.Popen[bytes]) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY[proc.pid] = proc


def _unregister(proc: subprocess.Popen[bytes]) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY.pop(proc.pid, None)


def active_canary_pids() -> list[int]:
    """Process-group ids of canaries started by this process and not yet stopped."""
    with _REGISTRY_LOCK:
        return sorted(_REGISTRY)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_process_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; reap the leader."""
    pgid = proc.pid  # started with start_new_session=True: pid == pgid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(0.0, grace))
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    # Members of the group that were re-parented to init vanish once killed; wait briefly.
    end = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < end:
        time.sleep(0.05)


def stop_all_canaries(grace: float = 5.0) -> int:
    """Kill every registered canary process group; returns how many were running."""
    with _REGISTRY_LOCK:
        procs = list(_REGISTRY.values())
        _REGISTRY.clear()
    for proc in procs:
        kill_process_group(proc, grace)
    return len(procs)


atexit.register(stop_all_canaries)

_HANDLERS_INSTALLED = False


def install_cleanup_handlers(signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """On SIGTERM/SIGINT: stop every canary, then behave as before (previous handler, or exit).

    Call from the main thread of a command that starts canaries (``tuner tune``). SIGINT still
    raises KeyboardInterrupt afterwards; SIGTERM ends the process with SystemExit(143) unless
    another handler was installed.
    """
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    for signum in signals:
        previous = signal.getsignal(signum)

        def handler(num: int, frame: FrameType | None, previous: Any = previous) -> None:
            stop_all_canaries()
            if callable(previous):
                previous(num, frame)
            elif previous == signal.SIG_IGN:
                return
            else:
                raise SystemExit(128 + num)

        signal.signal(signum, handler)
    _HANDLERS_INSTALLED = True


# --------------------------------------------------------------------------- local backend


def _pin_child(cpus: tuple[int, ...]) -> Any:
    """A ``preexec_fn`` pinning the child to ``cpus`` before it runs (refusals ignored: the
    search probed the masks beforehand and said so)."""

    def pin() -> None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cpus))

    return pin


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])

def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


class LocalCanary:
    """A vLLM server in a local subprocess (own process group), usable as a context manager."""

    #: How often a port collision (another process took the port we picked) is retried.
    PORT_RETRIES = 2

    def __init__(self, spec: LaunchSpec, log_path: Path, health_timeout: float = 300.0,
                 port: int | None = None, stop_grace: float = 10.0,
                 poll_interval: float = 0.5) -> None:
        self.spec = spec
        self.log_path = Path(log_path)
        self.health_timeout = health_timeout
        self.port = port
        self.stop_grace = stop_grace
        self.poll_interval = poll_interval
        self._proc: subprocess.Popen[bytes] | None = None
        self.handle: CanaryHandle | None = None
        self.started_at: float | None = None
        self.ready_after: float | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def log_tail(self, lines: int = 60) -> str:
        return read_tail(self.log_path, lines)

    def start(self) -> CanaryHandle:
        """Start the server and wait for ``/health``; raises CanaryFailed (and cleans up)."""
        if self._proc is not None:
            raise TunerError(f"canary already started (pid {self._proc.pid})")
        attempts = 1 if self.port is not None else 1 + self.PORT_RETRIES
        for attempt in range(attempts):
            try:
                return self._start_once(self.port or _free_port(self.spec.host))
            except CanaryFailed as exc:
                collided = exc.reason == "exit" and "address already in use" in exc.log_tail.lower()
                if not collided or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, port: int) -> CanaryHandle:
        argv = build_argv(self.spec, port)
        env = {**os.environ, **{str(k): str(v) for k, v in self.spec.env.items()}}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        try:
            with self.log_path.open("ab") as log:
                log.write(f"# tuner canary: {' '.join(argv)}\n".encode())
                log.flush()
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True,
                                        preexec_fn=_pin_child(self.spec.cpus)
                                        if self.spec.cpus else None)
        except OSError as exc:
            raise CanaryFailed("start_error", f"cannot run {argv[0]!r}: {exc}",
                               self.log_tail()) from exc
        self._proc = proc
        _register(proc)
        host = _connect_host(self.spec.host)
        url = f"http://{host}:{port}"
        try:
            self._wait_healthy(proc, url + "/health")
        except BaseException:
            self.stop()
            raise
        self.ready_after = time.monotonic() - self.started_at
        self.handle = CanaryHandle(url=url, port=port, pid=proc.pid, log_path=self.log_path,
                                   metrics_url=url + "/metrics")
        return self.handle

    def _wait_healthy(self, proc: subprocess.Popen[bytes], health_url: str) -> None:
        deadline = time.monotonic() + self.health_timeout
        while True:
            code = proc.poll()
            if code is not None:
                tail = self.log_tail()
                text = read_tail(self.log_path, 2000, max_bytes=2_000_000)
                reason = failure_reason(text, code)
                refused = rejected_flags(text, code)
                cause = refused.explain() if refused else root_cause(text) or detect_oom(text)
                why = f"process exited with code {code}" + (f"; {cause}" if cause else "")
                raise CanaryFailed(reason, why, tail)
            if http_ok(health_url):
                return
            if time.monotonic() >= deadline:
                text = read_tail(self.log_path, 400)
                oom = detect_oom(text)
                if oom is not None:  # engine died of OOM but the front-end hangs on
                    raise CanaryFailed("oom", f"no /health and {oom}", self.log_tail())
                raise CanaryFailed("health_timeout",
                                   f"{health_url} not healthy after {self.health_timeout:g}s",
                                   self.log_tail())
            time.sleep(self.poll_interval)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop the server and every process it started (idempotent)."""
        proc = self._proc
        if proc is None:
            return
        try:
            kill_process_group(proc, self.stop_grace)
        finally:
            _unregister(proc)
            self._proc = None

    def __enter__(self) -> CanaryHandle:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
