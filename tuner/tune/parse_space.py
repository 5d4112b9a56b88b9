"""tune.yaml's ``space`` and flag sections -> ``Space`` and flag mappings, with clear errors.

Entries under ``space`` override the default knobs, switch on an optional knob (``{}`` takes
its preset range), add knobs (integer, real with optional log scale, categorical), map a
knob to another flag (``flag: num-gpu-blocks-override``) or drop a default knob (``null``).
Knobs over count caps take whole numbers >= 1. Every error names the file, the dotted key
and what is allowed (a misspelt flag gets "did you mean"). ``expand_env`` fills in ``${VAR}`` and
``${VAR:-default}`` in string values.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from tuner.config import _Reader
from tuner.tune.space import (
    CAP_FLAGS,
    DEFAULT_KNOBS,
    KNOWN_FLAGS,
    OPTIONAL_KNOBS,
    Knob,
    KnobType,
    Space,
)

_KNOB_KEYS = {k: "" for k in ("flag", "type", "low", "high", "log", "values")}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def fmt(v: Any) -> str:
    """A bound as written in messages: floats with ``%g``."""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def expand_env(r: _Reader, value: Any, key: str) -> str:
    """A string value with ``${VAR}`` / ``${VAR:-default}`` expanded; a missing VAR is named."""
    text = r.string(value, key) if not isinstance(value, int | float) else str(value)

    def sub(m: re.Match[str]) -> str:
        env = os.environ.get(m.group(1))
        if env is not None and env != "":
            return env
        if m.group(2) is not None:
            return m.group(2)
        raise r.fail(
            key, f"environment variable {m.group(1)} is not set (used as ${{{m.group(1)}}})"
        )

    return _ENV_RE.sub(sub, text)


def _check_known_flag(r: _Reader, flag: str, key: str) -> None:
    if flag in KNOWN_FLAGS:
        return
    close = difflib.get_close_matches(flag, sorted(KNOWN_FLAGS), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise r.fail(
        key,
        f"unknown vLLM flag {flag!r}{hint}; a knob maps to one of: "
        f"{', '.join(sorted(KNOWN_FLAGS))}",
    )


def _number(r: _Reader, value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise r.fail(key, f"{value!r} is not a number")
    return value


def _categorical(r: _Reader, name: str, flag: str, m: Mapping[str, Any]) -> Knob:
    key = f"space.{name}"
    if not isinstance(m["values"], list):
        raise r.fail(f"{key}.values", "must be a list of the values to try")
    values = tuple(m["values"])
    kind = m.get("type")
    if kind not in (None, KnobType.CATEGORICAL):
        raise r.fail(f"{key}.type", f"{kind!r} with values: use type categorical or low/high")
    if len(set(map(json.dumps, values))) < 2:
        raise r.fail(
            f"{key}.values",
            f"empty range: {list(values)} has fewer than 2 "
            "distinct values (fix the flag under launch.flags instead)",
        )
    for v in values:
        if not isinstance(v, str | int | float | bool):
            raise r.fail(f"{key}.values", f"{v!r}: values must be strings, numbers or booleans")
    return Knob(name, flag, KnobType.CATEGORICAL, values=values)


def _parse_knob(r: _Reader, name: str, raw: Any, default: Knob | None) -> Knob:
    key = f"space.{name}"
    m = r.mapping(raw, key, _KNOB_KEYS)
    flag = (
        r.string(m["flag"], f"{key}.flag").lstrip("-")
        if "flag" in m
        else (default.flag if default else name)
    )
    _check_known_flag(r, flag, f"{key}.flag" if "flag" in m else key)
    if "values" in m:
        return _categorical(r, name, flag, m)
    kind = m.get("type")
    if kind is not None and kind not in tuple(KnobType):
        allowed = ", ".join(KnobType)
        raise r.fail(f"{key}.type", f"{kind!r} is not allowed; use one of {allowed}")
    if kind == KnobType.CATEGORICAL:
        raise r.fail(f"{key}.values", "a categorical knob needs values: [...]")
    low = m.get("low", default.low if default else None)
    high = m.get("high", default.high if default else None)
    if low is None or high is None:
        raise r.fail(key, "needs low and high (or values: [...] for a categorical knob)")
    low = _number(r, low, f"{key}.low")
    high = _number(r, high, f"{key}.high")
    if kind is None:
        if default is not None and "low" not in m and "high" not in m:
            kind = default.kind
        else:
            both_int = isinstance(low, int) and isinstance(high, int)
            kind = KnobType.INTEGER if both_int else KnobType.REAL
    if kind == KnobType.INTEGER and (float(low) != int(low) or float(high) != int(high)):
        raise r.fail(key, f"integer knob needs whole-number bounds, got low={low} high={high}")
    if low > high:
        raise r.fail(key, f"min > max: low={fmt(low)} is above high={fmt(high)}")
    if low == high:
        raise r.fail(
            key,
            f"empty range: low == high == {fmt(low)} (fix the flag under "
            "launch.flags instead of searching it)",
        )
    log = m.get("log", default.log if default and "low" not in m else False)
    if not isinstance(log, bool):
        raise r.fail(f"{key}.log", f"{log!r} is not true or false")
    if log and low <= 0:
        raise r.fail(f"{key}.log", f"log scale needs low > 0, got low={fmt(low)}")
    return Knob(name, flag, KnobType(kind), low, high, log)


def _check_cap(r: _Reader, knob: Knob) -> Knob:
    """A knob over a count cap (``CAP_FLAGS``): whole numbers >= 1 only."""
    if knob.flag not in CAP_FLAGS:
        return knob
    key = f"space.{knob.name}"
    if knob.kind is KnobType.REAL:
        raise r.fail(f"{key}.type", f"--{knob.flag} takes whole numbers: use type integer "
                     "(or whole-number low/high)")
    if knob.kind is KnobType.CATEGORICAL:
        bad = [v for v in knob.values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise r.fail(f"{key}.values", f"{bad!r}: --{knob.flag} takes whole numbers >= 1")
        return knob
    assert knob.low is not None
    if knob.low < 1:
        raise r.fail(f"{key}.low", f"--{knob.flag} takes whole numbers >= 1, got low="
                     f"{fmt(knob.low)} (vLLM refuses 0 and negative caps)")
    return knob


def _check_active_seqs(r: _Reader, knobs: list[Knob]) -> None:
    """``max-num-active-seqs`` must be able to sit at or below ``max-num-seqs``."""
    by_flag = {k.flag: k for k in knobs}
    active, seqs = by_flag.get("max-num-active-seqs"), by_flag.get("max-num-seqs")
    if active is None or seqs is None or active.kind is KnobType.CATEGORICAL:
        return
    high = max(seqs.values) if seqs.kind is KnobType.CATEGORICAL else seqs.high
    if active.low is not None and high is not None and active.low > high:
        raise r.fail(f"space.{active.name}.low",
                     f"low={fmt(active.low)} is above the largest max-num-seqs searched "
                     f"({fmt(high)}); vLLM needs max-num-active-seqs <= max-num-seqs")


def parse_space(r: _Reader, raw: Any) -> Space:
    """The ``space`` section: the default knobs as overridden, dropped or extended there."""
    if raw is not None and not isinstance(raw, Mapping):
        raise r.fail("space", "must map knob names to {low, high[, log, type, flag]} or {values}")
    entries = dict(raw or {})
    knobs: list[Knob] = []
    defaults = {k.name: k for k in DEFAULT_KNOBS}
    optional = {k.name: k for k in OPTIONAL_KNOBS}
    for name, default in defaults.items():
        if name in entries:
            spec = entries.pop(name)
            if spec is None:
                continue
            knobs.append(_parse_knob(r, name, spec, default))
        else:
            knobs.append(default)
    for name, spec in entries.items():
        if not isinstance(name, str) or not name:
            raise r.fail("space", f"knob name {name!r} must be a non-empty string")
        if spec is None:
            raise r.fail(
                f"space.{name}",
                f"null only removes one of the default knobs ({', '.join(defaults)})",
            )
        preset = optional.get(name)
        if preset is not None and isinstance(spec, Mapping) and "flag" in spec:
            preset = None  # a knob of the user's own under that name
        knobs.append(_parse_knob(r, name, spec, preset))
    knobs = [_check_cap(r, k) for k in knobs]
    _check_active_seqs(r, knobs)
    if not knobs:
        raise r.fail("space", "no knobs left to search")
    flags = [k.flag for k in knobs]
    for f in set(flags):
        if flags.count(f) > 1:
            names = [k.name for k in knobs if k.flag == f]
            raise r.fail("space", f"knobs {names} all set flag {f!r}; a flag may be searched once")
    return Space(tuple(knobs))


def parse_flags(r: _Reader, raw: Any, key: str) -> dict[str, Any]:
    """A mapping of vLLM flags (``--`` optional) to values, string values env-expanded."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise r.fail(key, "must map vLLM flags (without --) to values")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        name = r.string(k, f"{key}.{k}").lstrip("-")
        if isinstance(v, str):
            v = expand_env(r, v, f"{key}.{k}")
        out[name] = v
    return out
