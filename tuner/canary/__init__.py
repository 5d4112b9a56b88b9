"""Start a vLLM server with candidate flags (a local subprocess or a Kubernetes pod), wait for
``/health``, keep its log, and always stop it.

A canary is described by a ``LaunchSpec`` (command, model, flags, env; ``launch``), run by a
backend that satisfies the ``Canary`` Protocol: ``LocalCanary`` (``local``: its own process
group, killed by ``stop_all_canaries()`` at exit or on SIGTERM/SIGINT) or ``KubernetesCanary``
(``kubernetes``: a Pod built from a template by ``kubernetes_pod_manifest``, kept out of the
production Service). A start that fails raises ``CanaryFailed`` with ``reason`` in
``exit | oom | health_timeout | start_error | flag_rejected`` and the log tail, classified
from the log (``logs``).
"""

from tuner.canary.kubernetes import (
    CANARY_LABEL,
    ROLE_LABEL,
    KubernetesCanary,
    kubernetes_pod_manifest,
    parse_flag_args,
    pod_failure_reason,
)
from tuner.canary.launch import (
    DEFAULT_COMMAND,
    RESERVED_FLAGS,
    Canary,
    CanaryBackend,
    CanaryHandle,
    FlagValue,
    LaunchSpec,
    build_argv,
    flag_args,
    http_ok,
)
from tuner.canary.local import (
    LocalCanary,
    active_canary_pids,
    install_cleanup_handlers,
    kill_process_group,
    stop_all_canaries,
)
from tuner.canary.logs import (
    ARGPARSE_EXIT,
    OOM_PATTERNS,
    FlagRejection,
    detect_oom,
    failure_reason,
    read_tail,
    rejected_flags,
    root_cause,
)
from tuner.errors import CANARY_FAILURE_REASONS, CanaryFailed

__all__ = [
    "ARGPARSE_EXIT",
    "CANARY_FAILURE_REASONS",
    "CANARY_LABEL",
    "DEFAULT_COMMAND",
    "OOM_PATTERNS",
    "RESERVED_FLAGS",
    "ROLE_LABEL",
    "Canary",
    "CanaryBackend",
    "CanaryFailed",
    "CanaryHandle",
    "FlagRejection",
    "FlagValue",
    "KubernetesCanary",
    "LaunchSpec",
    "LocalCanary",
    "active_canary_pids",
    "build_argv",
    "detect_oom",
    "failure_reason",
    "flag_args",
    "http_ok",
    "install_cleanup_handlers",
    "kill_process_group",
    "kubernetes_pod_manifest",
    "parse_flag_args",
    "pod_failure_reason",
    "read_tail",
    "rejected_flags",
    "root_cause",
    "stop_all_canaries",
]
