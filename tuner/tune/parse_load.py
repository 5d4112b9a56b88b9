"""tune.yaml's ``load`` section -> ``tuner.load.LoadSpec`` (a load shape or a workload file).

The section is either a load shape (``prompt_tokens``, ``output_tokens`` as a count or a
distribution, ``concurrency`` or ``request_rate``, ``duration``, ...: the fields of
``LoadSpec``) or ``workload: fingerprint.json`` (a ``tuner suggest`` workload fingerprint)
with optional overrides. ``max_error_rate`` belongs to the search, not to the load, and is
read by ``tuner.tune.config``. ``build_load_spec`` runs when the config is loaded (so a bad
load section is refused before anything starts) and again when the search runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuner.config import _Reader
from tuner.errors import TunerError
from tuner.load import LENGTH_KINDS, LengthDist, LoadSpec, load_spec_from_workload

#: Load keys handled by the search itself; the rest go to ``LoadSpec``.
SEARCH_LOAD_KEYS = ("max_error_rate", "workload")


def build_load_spec(load: Mapping[str, Any], r: _Reader | None = None) -> LoadSpec:
    """The ``LoadSpec`` for a config's load section (or a workload fingerprint)."""
    r = r or _Reader("<tune config>")
    if "workload" in load:
        path = Path(str(load["workload"]))
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise r.fail(
                "load.workload", f"cannot read workload fingerprint {path}: {exc}"
            ) from None
        overrides = _load_kwargs(r, {k: v for k, v in load.items() if k != "workload"})
        try:
            return load_spec_from_workload(data, **overrides)
        except (TunerError, ValueError, TypeError) as exc:
            raise r.fail("load.workload", f"{path}: {exc}") from None
    try:
        return LoadSpec(**_load_kwargs(r, load))
    except (TunerError, ValueError, TypeError) as exc:
        raise r.fail("load", str(exc)) from None


def _load_kwargs(r: _Reader, load: Mapping[str, Any]) -> dict[str, Any]:
    known = LoadSpec.__dataclass_fields__
    out: dict[str, Any] = {}
    for k, v in load.items():
        if k not in known:
            allowed = sorted([*known, *SEARCH_LOAD_KEYS])
            raise r.fail(f"load.{k}", f"unknown key; allowed keys here: {', '.join(allowed)}")
        if k in ("prompt_tokens", "output_tokens"):
            out[k] = _length_dist(r, v, f"load.{k}")
        elif k == "duration" and isinstance(v, str):
            out[k] = r.duration(v, f"load.{k}")
        elif k == "token_id_range" and isinstance(v, list):
            out[k] = tuple(v)
        else:
            out[k] = v
    return out


def _length_dist(r: _Reader, value: Any, key: str) -> LengthDist:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = {"kind": "fixed", "mean": value}
    if not isinstance(value, Mapping):
        raise r.fail(
            key,
            f"{value!r}: give a token count or a distribution mapping "
            f"(kind: {', '.join(LENGTH_KINDS)}; mean, std, low, high, ...)",
        )
    allowed = LengthDist.__dataclass_fields__
    kwargs: dict[str, Any] = {}
    for k, v in value.items():
        if k not in allowed:
            raise r.fail(f"{key}.{k}", f"unknown key; allowed keys here: {', '.join(allowed)}")
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    try:
        return LengthDist(**kwargs)
    except (TunerError, ValueError, TypeError) as exc:
        raise r.fail(key, str(exc)) from None
