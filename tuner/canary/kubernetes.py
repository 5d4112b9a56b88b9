"""The Kubernetes canary backend: a canary Pod from a template, created, awaited and deleted.

``kubernetes_pod_manifest`` builds a canary Pod from a template with the candidate args and
the label ``tuner.vllm/canary: "true"``; the ``tuner.vllm/role`` label that the production
Service selects on is set to ``canary``, so the Service never routes to it.
``KubernetesCanary`` creates, waits for and deletes that Pod with the ``kubernetes`` client
(imported only here, and only when a pod is started).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tuner.canary.launch import (
    DEFAULT_COMMAND,
    RESERVED_FLAGS,
    CanaryHandle,
    FlagValue,
    LaunchSpec,
    build_argv,
    http_ok,
)
from tuner.canary.logs import failure_reason, read_tail, rejected_flags
from tuner.errors import CanaryFailed, ConfigError, TunerError

CANARY_LABEL = "tuner.vllm/canary"
ROLE_LABEL = "tuner.vllm/role"

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


def pod_failure_reason(terminated_reason: str | None, exit_code: int | None,
                       log_text: str) -> str:
    """Why a canary container terminated: ``oom`` when the kubelet OOM-killed it, else as for a
    local process (``failure_reason`` on its log and exit code)."""
    if terminated_reason == "OOMKilled":
        return "oom"
    return failure_reason(log_text, exit_code)


class KubernetesCanary:
    """A canary Pod created with the ``kubernetes`` client; a ``Canary`` like LocalCanary.

    Untested against a live cluster here (no cluster on the build machine): the manifest, the
    failure classification and the lifecycle without a pod are tested offline; the calls to the
    API server are a thin client wrapper.
    """

    def __init__(self, spec: LaunchSpec, template: Mapping[str, Any], name: str,
                 log_path: Path, namespace: str = "default", health_timeout: float = 900.0,
                 labels: Mapping[str, str] | None = None,
                 http_ok: Callable[[str], bool] = http_ok, scheme: str = "http") -> None:
        self.spec = spec
        self.template = template
        self.name = name
        self.log_path = Path(log_path)
        self.namespace = namespace
        self.health_timeout = health_timeout
        self.labels = dict(labels or {})
        self._http_ok = http_ok  # with the canaries' TLS and credentials (tuner.httpconfig)
        self.scheme = scheme
        self._api: Any = None
        self._created = False  # a pod exists that stop() must delete
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

    def log_tail(self, lines: int = 60) -> str:
        """The end of the pod log saved when the pod failed or was stopped ("" before)."""
        return read_tail(self.log_path, lines)

    def alive(self) -> bool:
        """False before start, after stop, and once the pod stopped running; True while it runs
        or while its state cannot be read (an unreachable API server is not a dead server)."""
        if not self._created:
            return False
        try:
            pod = self._core_api().read_namespaced_pod(self.name, self.namespace)
        except Exception:
            return True
        if pod.status.phase in ("Failed", "Succeeded"):
            return False
        return not any(cs.state is not None and cs.state.terminated is not None
                       for cs in (pod.status.container_statuses or []))

    def start(self) -> CanaryHandle:
        if self._created:
            raise TunerError(f"canary already started (pod {self.name})")
        api = self._core_api()
        body = self.manifest()
        try:
            api.create_namespaced_pod(self.namespace, body)
        except Exception as exc:
            raise CanaryFailed("start_error", f"cannot create pod {self.name}: {exc}") from exc
        self._created = True
        port = _container_port(_vllm_container(body["spec"]))
        deadline = time.monotonic() + self.health_timeout
        try:
            while True:
                pod = api.read_namespaced_pod(self.name, self.namespace)
                for cs in (pod.status.container_statuses or []):
                    term = cs.state.terminated if cs.state else None
                    if term is not None:
                        tail = self._save_log()
                        refused = rejected_flags(tail, term.exit_code)
                        raise CanaryFailed(pod_failure_reason(term.reason, term.exit_code, tail),
                                           f"container {cs.name} terminated: "
                                           f"{term.reason} (exit {term.exit_code})"
                                           + (f"; {refused.explain()}" if refused else ""),
                                           tail)
                if pod.status.phase in ("Failed", "Succeeded"):
                    raise CanaryFailed("exit", f"pod phase {pod.status.phase}", self._save_log())
                ip = pod.status.pod_ip
                if ip and self._http_ok(f"{self.scheme}://{ip}:{port}/health"):
                    url = f"{self.scheme}://{ip}:{port}"
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
        """Save the pod log and delete the pod (idempotent; nothing to do before start)."""
        if not self._created:
            return
        self._created = False
        self._save_log()
        with contextlib.suppress(Exception):
            self._api.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=0)

    def __enter__(self) -> CanaryHandle:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
