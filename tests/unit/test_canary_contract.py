"""The ``tuner.canary.Canary`` contract, one suite run against both backends (``LocalCanary``,
``KubernetesCanary``): what ``tuner.tune`` relies on, tested the same way for each.

Exercised for both: they satisfy the Protocol; before ``start()`` a canary is not alive, has no
log and ``stop()`` is a harmless no-op (twice); a start that fails raises ``CanaryFailed`` with
a known reason and the canary's log, leaves nothing running, and ``stop()`` after it is
idempotent; the candidate's flags become the same server arguments (the local command line,
the Pod's container args); the same vLLM log is classified the same way (captured logs of
real failed vLLM 0.32 starts, tests/unit/data/vllm_logs), and each backend's own sign of the
OOM killer (SIGKILL of the process; a container terminated ``OOMKilled``) is ``oom``.

Local canaries here are real processes (a command that exits at once, printing why).

Not exercised for Kubernetes, because there is no cluster here and the ``kubernetes`` client
is not installed (its failed start is exactly that: ``start_error`` naming the package):
creating the Pod, waiting for ``/health`` on the pod IP, reading the pod log, the
terminated-container and pod-phase paths on a live Pod, ``alive()`` on a running Pod, and
deleting it. The healthy lifecycle of a local canary on real vLLM is tests/e2e/test_canary.py.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tuner.canary import (
    Canary,
    KubernetesCanary,
    LaunchSpec,
    LocalCanary,
    active_canary_pids,
    build_argv,
    failure_reason,
    parse_flag_args,
    pod_failure_reason,
)
from tuner.errors import CANARY_FAILURE_REASONS, CanaryFailed

REPO = Path(__file__).resolve().parents[2]
LOGS = Path(__file__).parent / "data" / "vllm_logs"
FLAGS = {"max-num-seqs": 64, "enable-chunked-prefill": True, "enforce-eager": False,
         "speculative-config": {"method": "ngram", "num_speculative_tokens": 3}}
SPEC = LaunchSpec(
    command=(sys.executable, "-c", "import sys; print('fatal: no accelerator here'); sys.exit(3)"),
    model="/models/tiny",
    flags=FLAGS,
)


@dataclass(frozen=True)
class Backend:
    """One backend under the contract: how to make its canary, where its server arguments
    are, how it classifies a failed start and what the OOM killer looks like to it."""

    name: str
    make: Callable[[Path], Canary]
    server_args: Callable[[Canary], list[str]]
    classify: Callable[[str, int], str]
    oom_killed: Callable[[], str]
    failed_start: tuple[str, str]  # (reason, text the log or message shows)


def _local_args(canary: Canary) -> list[str]:
    assert isinstance(canary, LocalCanary)
    return build_argv(canary.spec, 8000)[len(canary.spec.command):]


def _pod_args(canary: Canary) -> list[str]:
    assert isinstance(canary, KubernetesCanary)
    (container,) = canary.manifest()["spec"]["containers"]
    return list(container["args"])


def _template() -> dict[str, object]:
    return yaml.safe_load((REPO / "deploy/kubernetes/base/deployment.yaml").read_text())


BACKENDS = {
    "local": Backend(
        "local",
        lambda tmp: LocalCanary(SPEC, tmp / "trial.log", health_timeout=30),
        _local_args,
        failure_reason,
        lambda: failure_reason("INFO serving\n", -signal.SIGKILL),
        ("exit", "fatal: no accelerator here"),
    ),
    "kubernetes": Backend(
        "kubernetes",
        lambda tmp: KubernetesCanary(SPEC, _template(), "tuner-canary-0001", tmp / "trial.log",
                                     health_timeout=30),
        _pod_args,
        lambda text, code: pod_failure_reason("Error", code, text),
        lambda: pod_failure_reason("OOMKilled", 137, "INFO serving\n"),
        ("start_error", "needs the 'kubernetes' Python package"),
    ),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


def test_both_backends_satisfy_the_protocol(backend: Backend, tmp_path: Path) -> None:
    canary = backend.make(tmp_path)
    assert isinstance(canary, Canary)


def test_before_start_not_alive_no_log_and_stop_is_a_no_op(backend: Backend,
                                                           tmp_path: Path) -> None:
    canary = backend.make(tmp_path)
    assert canary.alive() is False
    assert canary.log_tail() == ""
    canary.stop()
    canary.stop()
    assert canary.alive() is False
    assert not (tmp_path / "trial.log").exists()  # stopping nothing wrote nothing


def test_a_failed_start_is_canary_failed_and_leaves_nothing_running(backend: Backend,
                                                                    tmp_path: Path) -> None:
    canary = backend.make(tmp_path)
    with pytest.raises(CanaryFailed) as err:
        canary.start()
    reason, shown = backend.failed_start
    assert err.value.reason == reason and reason in CANARY_FAILURE_REASONS
    assert shown in str(err.value)
    assert canary.alive() is False
    assert active_canary_pids() == []
    canary.stop()
    canary.stop()
    assert canary.alive() is False


def test_the_candidates_flags_become_the_same_server_arguments(backend: Backend,
                                                               tmp_path: Path) -> None:
    args = backend.server_args(backend.make(tmp_path))
    _, flags = parse_flag_args(args)
    assert flags["max-num-seqs"] == "64"
    assert flags["enable-chunked-prefill"] is True
    assert "enforce-eager" not in flags  # False: omitted, on both backends
    assert flags["speculative-config"] == '{"method":"ngram","num_speculative_tokens":3}'
    assert "port" in flags and "host" in flags  # set by the backend, never by the candidate


@pytest.mark.parametrize(
    ("log", "code", "reason"),
    [
        ("start_kv_cache_too_small.log", 1, "oom"),
        ("start_gpu_memory_utilization_too_high.log", 1, "oom"),
        ("start_unknown_flag.log", 2, "flag_rejected"),
        ("healthy_server.log", 0, "exit"),
    ],
)
def test_the_same_log_is_classified_the_same(backend: Backend, log: str, code: int,
                                             reason: str) -> None:
    assert backend.classify((LOGS / log).read_text(), code) == reason


def test_the_oom_killer_is_oom(backend: Backend) -> None:
    assert backend.oom_killed() == "oom"
