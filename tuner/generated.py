"""Writing the files tuner generates, without losing anyone's edits.

Two writers, one job each:

- ``sync_generated(root, files, check)`` for files that are generated and nothing else (the
  repository's ``dashboards/``, ``rules/*.yaml``, ``deploy/kubernetes/base/``, ``tuner rules
  render``): replaced atomically when they differ, or with ``check`` only compared (the drift
  check of CI and ``--check``).
- ``write_files(out, files, force)`` for ``tuner provision``'s output directory, which users
  own: a manifest (``.tuner-provision.json``) records what tuner wrote and the content's hash;
  a file at one of its paths that tuner did not write (or that was edited since) is foreign and
  is only replaced with ``force``. Every conflict is reported before any file is written, and
  nothing is ever deleted.

Every failure is a ProvisionError naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import ProvisionError

MANIFEST = ".tuner-provision.json"


@dataclass(frozen=True)
class WriteResult:
    """What ``write_files`` did under ``out``: the files it wrote and those already equal."""

    out: Path
    written: tuple[Path, ...]
    unchanged: tuple[Path, ...]


@dataclass(frozen=True)
class SyncResult:
    """What ``sync_generated`` did: every generated path under ``root``, and those that differed.

    ``stale`` paths were written, or with ``checked`` only compared (nothing was written).
    """

    root: Path
    paths: tuple[str, ...]
    stale: tuple[str, ...]
    checked: bool


def sync_generated(root: Path, files: Mapping[str, str], check: bool = False) -> SyncResult:
    """Make ``root/<rel>`` equal to each generated text, or with ``check`` only say which differ.

    For files that are generated and nothing else (the repository's ``dashboards/``, ``rules/``,
    ``deploy/kubernetes/base/``): they are replaced without a manifest, each atomically, and
    files equal to the generator are not touched. Nothing is deleted. A directory that
    cannot be created or a file that cannot be written is a ProvisionError naming the path.
    """
    stale = []
    for rel, text in sorted(files.items()):
        path = root / rel
        try:
            current = path.read_text() if path.is_file() else None
        except (OSError, UnicodeDecodeError):
            current = None
        if current != text:
            stale.append(rel)
    if stale and not check:
        if root.exists() and not root.is_dir():
            raise ProvisionError(f"{root}: exists and is not a directory; choose another one")
        for rel in stale:
            _write_atomically(root, root / rel, files[rel])
    return SyncResult(root, tuple(sorted(files)), tuple(stale), check)


def _write_atomically(root: Path, path: Path, text: str) -> None:
    """Replace ``path`` (under ``root``) by ``text`` through a temporary file and a rename."""
    if path.is_dir():
        raise ProvisionError(f"{path}: is a directory; cannot replace it with a file")
    tmp = path.with_name(f".{path.name}.tuner-tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ProvisionError(
            f"{root}: cannot write {getattr(exc, 'filename', None) or path}: "
            f"{exc.strerror or exc}"
        ) from None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _read_manifest(out: Path) -> dict[str, str]:
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
        return {str(k): str(v) for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProvisionError(
            f"{path}: unreadable provision manifest ({exc}); move it away to start afresh"
        ) from None


def write_files(out: Path, files: Mapping[str, str], force: bool = False) -> WriteResult:
    """Write ``files`` under ``out`` without ever deleting or silently replacing foreign files.

    A path counts as ours when the manifest says we wrote it and its content still has the
    hash we wrote. Other existing files at our paths are refused (all listed at once) unless
    ``force``. Files under ``out`` that we do not render are left alone.
    """
    if out.exists() and not out.is_dir():
        raise ProvisionError(f"{out}: exists and is not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(
            f"{out}: cannot create the output directory: {exc.strerror or exc}"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ProvisionError(f"{out}: the output directory is not writable")
    manifest = _read_manifest(out)

    conflicts = []
    for rel, text in files.items():
        path = out / rel
        if path.is_dir():
            conflicts.append(f"{rel} (a directory)")
            continue
        if not path.exists():
            continue
        try:
            current = _digest(path.read_text())
        except (OSError, UnicodeDecodeError):
            current = ""
        if current == _digest(text):
            continue
        if manifest.get(rel) == current and current:
            continue  # ours, unchanged since we wrote it: safe to replace
        reason = "changed since tuner wrote it" if rel in manifest else "not written by tuner"
        conflicts.append(f"{rel} ({reason})")
    if conflicts and not force:
        raise ProvisionError(
            f"{out}: refusing to overwrite {len(conflicts)} file(s) tuner did not write or "
            f"that were edited: {', '.join(sorted(conflicts))}. Nothing was written; move "
            "them away, choose another --out, or pass --force to replace them"
        )

    written, unchanged = [], []
    try:
        for rel, text in sorted(files.items()):
            path = out / rel
            if path.is_file() and path.read_text(errors="replace") == text:
                unchanged.append(path)
            else:
                _write_atomically(out, path, text)
                written.append(path)
            manifest[rel] = _digest(text)
        (out / MANIFEST).write_text(
            json.dumps(
                {"generator": "tuner provision", "files": dict(sorted(manifest.items()))}, indent=2
            )
            + "\n"
        )
    except OSError as exc:
        raise ProvisionError(
            f"{out}: cannot write {getattr(exc, 'filename', None) or out}: {exc.strerror or exc}"
        ) from None
    return WriteResult(out, tuple(written), tuple(unchanged))
