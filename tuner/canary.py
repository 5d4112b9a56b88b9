"""Start a vLLM server with candidate flags (a local subprocess or a Kubernetes pod), wait for
``/health``, keep its log, and always stop it.

A canary is described by a ``LaunchSpec`` (command, model, flags, env). ``build_argv`` turns
it into a command line: ``{"max-num-seqs": 64}`` -> ``--max-num-seqs 64``; ``True`` -> a bare
flag; ``None``/``False`` -> omitted; a mapping or list -> JSON (``--speculative-config``).

``LocalCanary`` runs the command in its own process group with stdout/stderr in a log file.
A server that exits, runs out of memory, or misses ``/health`` within the timeout raises
``CanaryFailed`` with ``reason`` in ``exit | oom | health_timeout | start_error`` and the
log tail. Every started process group is registered; ``stop_all_canaries()`` (run at exit,
and from the SIGTERM/SIGINT handlers that ``install_cleanup_handlers()`` installs) kills them,
so no canary outlives the tuner.

``kubernetes_pod_manifest`` builds a canary Pod from a template with the candidate args and
the label ``tuner.vllm/canary: "true"``; the ``tuner.vllm/role`` label that the production
Service selects on is set to ``canary``, so the Service never routes to it.
``KubernetesCanary`` creates, waits for and deletes that Pod with the ``kubernetes`` client.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from tuner.errors import ConfigError, TunerError

DEFAULT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
FAILURE_REASONS = ("exit", "oom", "health_timeout", "start_error")
CANARY_LABEL = "tuner.vllm/canary"
ROLE_LABEL = "tuner.vllm/role"
#: Flags that build_argv sets itself; a spec may not set them through ``flags``.
RESERVED_FLAGS = frozenset({"model", "port", "host", "served-model-name"})

FlagValue = str | int | float | bool | None | Mapping[str, Any] | list[Any]


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one vLLM server: command, model, flags (without dashes) and extra env."""

    command: tuple[str, ...] = DEFAULT_COMMAND
    model: str = ""
    flags: Mapping[str, FlagValue] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    served_model_name: str | None = None


class CanaryFailed(TunerError):
    """A canary did not come up: ``reason`` is one of FAILURE_REASONS, ``log_tail`` its log end."""

    def __init__(self, reason: str, message: str, log_tail: str = "") -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown canary failure reason {reason!r}")
        detail = f"canary failed ({reason}): {message}"
        if log_tail:
            detail += "\n--- log tail ---\n" + log_tail
        super().__init__(detail)
        self.reason = reason
        self.log_tail = log_tail


@dataclass(frozen=True)
class CanaryHandle:
    """A running canary: where to reach it and where its log is."""

    url: str
    port: int
    pid: int
    log_path: Path
    metrics_url: str


# --------------------------------------------------------------------------- argv


def _flag_name(key: str) -> str:
    name = key.lstrip("-")
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"launch flags: {key!r} is not a valid flag name "
                          "(letters, digits, '-', '_', '.'; e.g. max-num-seqs)")
    return name


def _flag_value(key: str, value: Any) -> str:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars from the optimizer
        value = value.item()
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else repr(value)
    if isinstance(value, int | str):
        return str(value)
    raise ConfigError(f"launch flags: {key!r} has a value of type {type(value).__name__}; "
                      "allowed: string, number, true/false/null, mapping or list (JSON)")


def build_argv(spec: LaunchSpec, port: int) -> list[str]:
    """The full command line for ``spec`` listening on ``spec.host:port``."""
    if not spec.command:
        raise ConfigError("launch.command is empty; give the vLLM server command")
    if not spec.model:
        raise ConfigError("launch.model is empty; give a model path or name")
    argv = [*spec.command, "--model", spec.model, "--host", spec.host, "--port", str(port)]
    if spec.served_model_name:
        argv += ["--served-model-name", spec.served_model_name]
    return argv + flag_args(spec.flags)


def flag_args(flags: Mapping[str, Any]) -> list[str]:
    """Flags as arguments: ``{"max-num-seqs": 64, "enforce-eager": True, "x": None}``
    -> ``--max-num-seqs 64 --enforce-eager``."""
    out: list[str] = []
    for key, value in flags.items():
        name = _flag_name(key)
        if name in RESERVED_FLAGS:
            raise ConfigError(f"launch flags: {name!r} is set by the tuner itself "
                              f"(reserved: {', '.join(sorted(RESERVED_FLAGS))})")
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        if value is None or value is False:
            continue
        if value is True:
            out.append(f"--{name}")
        else:
            out += [f"--{name}", _flag_value(name, value)]
    return out


# --------------------------------------------------------------------------- log analysis

#: Log lines that mean the server ran out of (device or host) memory, or has too little KV cache.
OOM_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"out of memory",
        r"OutOfMemoryError",
        r"Cannot allocate memory",
        r"std::bad_alloc",
        r"\bMemoryError\b",
        r"No available memory for the cache blocks",
        r"KV cache is needed, which is larger than the available KV cache memory",
        r"larger than the available KV cache memory",
        r"Insufficient memory",
        r"not enough (?:KV cache|memory)",
        r"needs? at least \d+ blocks",
        r"num_gpu_blocks.{0,40}(?:too small|insufficient)",
        r"increas(?:e|ing) `?gpu_memory_utilization`?",
        r"Available memory on node .* is less than desired",
        r"decrease `?--gpu-memory-utilization`?",
        r"exceeds the (?:available|total) memory",
    )
)


def detect_oom(log_text: str) -> str | None:
    """The first log line that says memory ran out (or KV cache is too small), else None."""
    for line in log_text.splitlines():
        if any(p.search(line) for p in OOM_PATTERNS):
            return line.strip()
    return None


#: Error lines that only point elsewhere ("see root cause above"); never the cause itself.
_GENERIC_ERRORS = re.compile(
    r"Engine core initialization failed|WorkerProc initialization failed|"
    r"See (?:root cause|stack trace)|Found ulimit|Too many open files`", re.IGNORECASE)
_ERROR_LINE = re.compile(
    r"(?:^|\] |: )((?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): .+|"
    r"[\w.-]+\.py: error: .+|std::bad_alloc.*|Killed)\s*$")


def root_cause(log_text: str) -> str | None:
    """The first specific error line of a failed start (exception or argparse error), if any."""
    for line in log_text.splitlines():
        m = _ERROR_LINE.search(line)
        if m and not _GENERIC_ERRORS.search(line):
            return m.group(1).strip()
    return None


def failure_reason(log_text: str, returncode: int | None) -> str:
    """``oom`` if the log shows a memory failure or the process was SIGKILLed, else ``exit``."""
    if detect_oom(log_text) is not None:
        return "oom"
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return "oom"  # killed from outside without our asking: almost always the OOM killer
    return "exit"


def read_tail(path: Path, lines: int = 60, max_bytes: int = 256_000) -> str:
    """The last ``lines`` lines of a log file (reads at most ``max_bytes`` from its end)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- registry


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


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


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
                                        start_new_session=True)
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
                cause = root_cause(text) or detect_oom(text)
                why = f"process exited with code {code}" + (f"; {cause}" if cause else "")
                raise CanaryFailed(reason, why, tail)
            if _http_ok(health_url):
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


# --------------------------------------------------------------------------- kubernetes backend


def _pod_spec_of(template: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, spec) from a Pod, a pod template, or a Deployment/StatefulSet manifest."""
    doc = copy.deepcopy(dict(template))
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job"):
        doc = doc.get("spec", {}).get("template", {})
    elif kind == "PodTemplate":
        doc = doc.get("template", {})
    elif kind not in (None, "Pod"):
        raise ConfigError(f"canary pod template: kind {kind!r} is not supported "
                          "(allowed: Pod, PodTemplate, Deployment, StatefulSet, ReplicaSet, "
                          "DaemonSet, Job, or a bare pod template with metadata/spec)")
    spec = doc.get("spec")
    if not isinstance(spec, dict) or not spec.get("containers"):
        raise ConfigError("canary pod template: spec.containers is missing or empty")
    return dict(doc.get("metadata") or {}), spec


def _vllm_container(spec: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = spec["containers"]
    for c in containers:
        if c.get("name") == "vllm":
            return c
    return containers[0]


def _container_port(container: Mapping[str, Any]) -> int:
    ports = container.get("ports") or []
    for p in ports:
        if p.get("name") == "http":
            return int(p["containerPort"])
    return int(ports[0]["containerPort"]) if ports else 8000


def parse_flag_args(args: Iterable[str]) -> tuple[list[str], dict[str, FlagValue]]:
    """Container args -> (positionals, flags): ``--a=1 --b 2 --c`` -> {a: "1", b: "2", c: True}."""
    positionals: list[str] = []
    flags: dict[str, FlagValue] = {}
    items = list(args)
    i = 0
    while i < len(items):
        tok = str(items[i])
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            if eq:
                flags[name] = value
            elif i + 1 < len(items) and not str(items[i + 1]).startswith("--"):
                flags[name] = str(items[i + 1])
                i += 1
            else:
                flags[name] = True
        else:
            positionals.append(tok)
        i += 1
    return positionals, flags


def _referenced_volumes(containers: Iterable[Mapping[str, Any]]) -> set[str]:
    return {m.get("name", "") for c in containers for m in c.get("volumeMounts") or []}


def kubernetes_pod_manifest(spec: LaunchSpec, template: Mapping[str, Any], name: str,
                            labels: Mapping[str, str]) -> dict[str, Any]:
    """A canary Pod from a template (Pod, pod template, or the production Deployment).

    Only the vLLM container (named ``vllm``, else the first) is kept, with the volumes it
    mounts: a canary runs no sidecar. Its args are the template's vLLM args with the
    candidate's overriding them: ``--model`` (the spec's, else the template's), ``--host
    0.0.0.0``, ``--port`` = the container port, then every flag. The container keeps its image
    and ``command`` (the image entrypoint if it has none; a non-default ``spec.command``
    replaces it); ``spec.env`` is merged into its env. Labels: the template's, ``labels``,
    ``tuner.vllm/canary: "true"`` and ``tuner.vllm/role: canary`` (the production Service
    selects ``tuner.vllm/role: serving``, so it never routes to a canary). Restart policy
    Never: a crashed canary is a failed trial, not something to restart.
    """
    meta, pod_spec = _pod_spec_of(template)
    container = _vllm_container(pod_spec)
    pod_spec["containers"] = [container]
    keep = _referenced_volumes([container, *(pod_spec.get("initContainers") or [])])
    if pod_spec.get("volumes"):
        pod_spec["volumes"] = [v for v in pod_spec["volumes"] if v.get("name") in keep]
    port = _container_port(container)
    positionals, base_flags = parse_flag_args(container.get("args") or [])
    model = spec.model or str(base_flags.get("model") or (positionals[0] if positionals else ""))
    served = spec.served_model_name or base_flags.get("served-model-name")
    for key in (*RESERVED_FLAGS, "port", "host"):
        base_flags.pop(key, None)
    merged = {**base_flags, **{k.lstrip("-"): v for k, v in spec.flags.items()}}
    pod_launch = LaunchSpec(command=("vllm",), model=model, flags=merged, host="0.0.0.0",
                            served_model_name=str(served) if served else None)
    container["args"] = build_argv(pod_launch, port)[1:]
    if spec.command and spec.command != DEFAULT_COMMAND:
        container["command"] = list(spec.command)
    if not container.get("ports"):
        container["ports"] = [{"name": "http", "containerPort": port}]
    env = [e for e in container.get("env") or [] if e.get("name") not in spec.env]
    env += [{"name": k, "value": str(v)} for k, v in spec.env.items()]
    if env:
        container["env"] = env
    new_labels = {k: str(v) for k, v in (meta.get("labels") or {}).items()}
    new_labels.update({k: str(v) for k, v in labels.items()})
    new_labels[CANARY_LABEL] = "true"
    new_labels[ROLE_LABEL] = "canary"
    metadata: dict[str, Any] = {"name": name, "labels": new_labels}
    if meta.get("namespace"):
        metadata["namespace"] = meta["namespace"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith("kubectl.kubernetes.io/")}
    if annotations:
        metadata["annotations"] = annotations
    pod_spec["restartPolicy"] = "Never"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


class KubernetesCanary:
    """A canary Pod created with the ``kubernetes`` client; same interface as LocalCanary.

    Untested against a live cluster here (no cluster on the build machine): the manifest is
    validated offline in the tests; this class is a thin client wrapper.
    """

    def __init__(self, spec: LaunchSpec, template: Mapping[str, Any], name: str,
                 log_path: Path, namespace: str = "default", health_timeout: float = 900.0,
                 labels: Mapping[str, str] | None = None,
                 http_ok: Callable[[str], bool] = _http_ok) -> None:
        self.spec = spec
        self.template = template
        self.name = name
        self.log_path = Path(log_path)
        self.namespace = namespace
        self.health_timeout = health_timeout
        self.labels = dict(labels or {})
        self._http_ok = http_ok
        self._api: Any = None
        self.handle: CanaryHandle | None = None

    def manifest(self) -> dict[str, Any]:
        return kubernetes_pod_manifest(self.spec, self.template, self.name, self.labels)

    def _core_api(self) -> Any:
        if self._api is None:
            try:
                from kubernetes import client, config
            except ImportError as exc:
                raise CanaryFailed("start_error", "the kubernetes backend needs the "
                                   "'kubernetes' Python package (pip install kubernetes)") from exc
            try:
                config.load_incluster_config()
            except Exception:
                config.load_kube_config()
            self._api = client.CoreV1Api()
        return self._api

    def _save_log(self) -> str:
        try:
            text = self._core_api().read_namespaced_pod_log(self.name, self.namespace,
                                                            tail_lines=400)
        except Exception as exc:
            text = f"(pod log unavailable: {exc})"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text(str(text))
        return "\n".join(str(text).splitlines()[-60:])

    def start(self) -> CanaryHandle:
        api = self._core_api()
        body = self.manifest()
        try:
            api.create_namespaced_pod(self.namespace, body)
        except Exception as exc:
            raise CanaryFailed("start_error", f"cannot create pod {self.name}: {exc}") from exc
        port = _container_port(_vllm_container(body["spec"]))
        deadline = time.monotonic() + self.health_timeout
        try:
            while True:
                pod = api.read_namespaced_pod(self.name, self.namespace)
                for cs in (pod.status.container_statuses or []):
                    term = cs.state.terminated if cs.state else None
                    if term is not None:
                        tail = self._save_log()
                        reason = ("oom" if term.reason == "OOMKilled"
                                  else failure_reason(tail, term.exit_code))
                        raise CanaryFailed(reason, f"container {cs.name} terminated: "
                                           f"{term.reason} (exit {term.exit_code})", tail)
                if pod.status.phase in ("Failed", "Succeeded"):
                    raise CanaryFailed("exit", f"pod phase {pod.status.phase}", self._save_log())
                ip = pod.status.pod_ip
                if ip and self._http_ok(f"http://{ip}:{port}/health"):
                    url = f"http://{ip}:{port}"
                    self.handle = CanaryHandle(url=url, port=port, pid=0, log_path=self.log_path,
                                               metrics_url=url + "/metrics")
                    return self.handle
                if time.monotonic() >= deadline:
                    raise CanaryFailed("health_timeout", f"pod {self.name} not healthy after "
                                       f"{self.health_timeout:g}s", self._save_log())
                time.sleep(2.0)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._api is None:
            return
        self._save_log()
        with contextlib.suppress(Exception):
            self._api.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=0)

    def __enter__(self) -> CanaryHandle:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
