"""What a canary is: the launch record (``LaunchSpec``), its command line (``build_argv``), the
``Canary`` Protocol both backends satisfy, the handle of a running canary and the health probe.

``build_argv`` turns a spec into a command line: ``{"max-num-seqs": 64}`` -> ``--max-num-seqs
64``; ``True`` -> a bare flag; ``None``/``False`` -> omitted; a mapping or list -> JSON
(``--speculative-config``). Flags the tuner sets itself (``RESERVED_FLAGS``) are refused.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tuner.errors import ConfigError

DEFAULT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
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
    #: CPUs the server process may run on (the local backend's affinity); () = any.
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class CanaryHandle:
    """A running canary: where to reach it and where its log is."""

    url: str
    port: int
    pid: int
    log_path: Path
    metrics_url: str


class CanaryBackend(StrEnum):
    """Where canaries run (``canary.backend`` in tune.yaml)."""

    LOCAL = "local"
    KUBERNETES = "kubernetes"


@runtime_checkable
class Canary(Protocol):
    """One candidate vLLM server, whatever runs it (``LocalCanary``, ``KubernetesCanary``).

    * ``start()`` returns a handle once ``/health`` answers; otherwise it raises
      ``CanaryFailed`` (``reason`` in CANARY_FAILURE_REASONS, with the log tail) and has
      already cleaned up what it started.
    * ``stop()`` stops the server and everything it started; it is idempotent and harmless
      before ``start()`` or after a failed start.
    * ``alive()`` is False before ``start()`` and after ``stop()``, and once the server is
      known to have exited.
    * ``log_tail()`` is the end of the server's log ("" while there is none).
    """

    def start(self) -> CanaryHandle: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...

    def log_tail(self, lines: int = 60) -> str: ...


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


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if ``url`` answers 200 (the ``/health`` probe of both backends; no proxies)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False
