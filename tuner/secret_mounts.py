"""Kubernetes: mount every file a tuner.yaml reads (certificates, keys, secrets) from a Secret.

``secret_files(config)`` lists the files the sidecar reads that belong in a Secret: the
listener's web config, each client's CA, client certificate and key, passwords, tokens and
secret headers (``tuner.httpconfig``). ``render_secret_mounts(config)`` is a strategic-merge
patch of the sidecar's Deployment that mounts the Secret ``tuner-secrets`` at each of those
files' directories (one volume per directory, with ``items`` choosing its keys, and no
``subPath``, so the kubelet's updates reach the files and the sidecar re-reads them), and the
``kubectl create secret generic`` line that fills the Secret from the local files. ``None``
when the config reads no such file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tuner.config import Config
from tuner.httpconfig import referenced_files

SECRET_NAME = "tuner-secrets"
SIDECAR_GROUP = 10001  # the sidecar image's user and group (deploy/Dockerfile)


def secret_files(config: Config) -> tuple[Path, ...]:
    """The files the sidecar reads that belong in a Secret, in config order, once each."""
    files: list[Path] = []
    if config.web_config_file is not None:
        files.append(config.web_config_file)
    for http in ([t.http for t in config.targets] + [a.http for a in config.alertmanagers]
                 + [config.prometheus_http]):
        files.extend(referenced_files(http))
    return tuple(dict.fromkeys(files))


def _key(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^-._a-zA-Z0-9]", "-", path.name) or "file"
    key, n = base, 2
    while key in taken:
        key, n = f"{n}-{base}", n + 1
    taken.add(key)
    return key


def render_secret_mounts(config: Config, deployment: str = "vllm",
                         container: str = "tuner") -> tuple[dict[str, Any], str] | None:
    """(Deployment patch, ``kubectl create secret`` command), or None without secret files."""
    files = secret_files(config)
    if not files:
        return None
    taken: set[str] = set()
    keys = {f: _key(f, taken) for f in files}
    by_dir: dict[Path, list[Path]] = {}
    for f in files:
        by_dir.setdefault(f.parent, []).append(f)
    volumes, mounts = [], []
    for i, (directory, members) in enumerate(by_dir.items()):
        name = f"{SECRET_NAME}-{i}"
        volumes.append({"name": name, "secret": {
            "secretName": SECRET_NAME, "defaultMode": 0o440,
            "items": [{"key": keys[f], "path": f.name} for f in members]}})
        mounts.append({"name": name, "mountPath": str(directory), "readOnly": True})
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment},
        "spec": {"template": {"spec": {
            "securityContext": {"fsGroup": SIDECAR_GROUP},
            "containers": [{"name": container, "volumeMounts": mounts}],
            "volumes": volumes,
        }}},
    }
    command = f"kubectl create secret generic {SECRET_NAME} " + " ".join(
        f"--from-file={keys[f]}={f}" for f in files)
    return patch, command
