"""The search space (knobs over vLLM flags) and the vLLM constraints checked before a launch.

A ``Knob`` is one searched dimension: a name, the vLLM flag it sets, its ``KnobType``
(integer, real with optional log scale, categorical) and range. ``DEFAULT_KNOBS`` are
``max-num-seqs``, ``gpu-memory-utilization`` and ``max-num-batched-tokens``. ``OPTIONAL_KNOBS``
are off unless the config names them (``space: {max-num-queued-reqs: {}}`` takes the preset
range): vLLM's admission-control caps ``max-num-queued-reqs`` and ``max-num-queued-tokens``
(0.29+) and ``max-num-active-seqs`` (caps running requests without re-sizing what
``max-num-seqs`` sizes). ``CAP_FLAGS`` take whole numbers >= 1 only. ``Space`` maps
optimizer points to knob values (plain Python values: ``Knob.convert`` turns the optimizer's
numpy scalars into ints, floats, strings and booleans) and knob values to flags.

``apply_constraints`` repairs or rejects a full flag set before launch
(max-num-batched-tokens >= max-num-seqs; without chunked prefill >= max-model-len;
max-num-active-seqs <= max-num-seqs, which vLLM enforces at start-up).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

#: vLLM serve flags a knob may map to (performance-relevant subset of ``vllm serve --help``).
KNOWN_FLAGS: frozenset[str] = frozenset(
    {
        "max-num-seqs",
        "gpu-memory-utilization",
        "max-num-batched-tokens",
        "enable-chunked-prefill",
        "block-size",
        "kv-cache-dtype",
        "max-model-len",
        "num-gpu-blocks-override",
        "kv-cache-memory-bytes",
        "cpu-offload-gb",
        "enable-prefix-caching",
        "prefix-caching-hash-algo",
        "tensor-parallel-size",
        "pipeline-parallel-size",
        "data-parallel-size",
        "enable-expert-parallel",
        "dtype",
        "quantization",
        "enforce-eager",
        "optimization-level",
        "compilation-config",
        "speculative-config",
        "scheduling-policy",
        "long-prefill-token-threshold",
        "async-scheduling",
        "max-cudagraph-capture-size",
        "cudagraph-capture-sizes",
        "disable-cascade-attn",
        "disable-custom-all-reduce",
        "kv-offloading-size",
        "kv-offloading-backend",
        "attention-backend",
        "stream-interval",
        "performance-mode",
        "max-num-scheduled-tokens",
        "max-num-active-seqs",
        "max-num-queued-reqs",
        "max-num-queued-tokens",
        "disable-hybrid-kv-cache-manager",
        "max-logprobs",
        "max-loras",
        "max-lora-rank",
        "swap-space",
        "api-server-count",
    }
)


class KnobType(StrEnum):
    """How a knob's values are searched (``type`` under ``space.<knob>``)."""

    INTEGER = "integer"
    REAL = "real"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class Knob:
    """One searched dimension: a name, the vLLM flag it sets, its type and range."""

    name: str
    flag: str
    kind: KnobType
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple[Any, ...] = ()

    def __post_init__(self) -> None:  # "integer" and KnobType.INTEGER are the same type
        object.__setattr__(self, "kind", KnobType(self.kind))

    def convert(self, value: Any) -> Any:
        """An optimizer value (numpy scalar) as a plain Python value of this knob's type."""
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        if self.kind is KnobType.INTEGER:
            return round(float(value))
        if self.kind is KnobType.REAL:  # 4 significant digits: readable flags, same point
            return min(
                max(float(f"{float(value):.4g}"), float(self.low or 0)), float(self.high or 0)
            )
        for v in self.values:  # categorical: return the configured object itself
            if v == value and type(v) is type(value):
                return v
        for v in self.values:
            if v == value:
                return v
        return value

    def contains(self, value: Any) -> bool:
        if self.kind is KnobType.CATEGORICAL:
            return any(v == value and type(v) is type(value) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        if self.kind is KnobType.INTEGER and float(value) != int(value):
            return False
        return self.low <= value <= self.high


DEFAULT_KNOBS: tuple[Knob, ...] = (
    Knob("max-num-seqs", "max-num-seqs", KnobType.INTEGER, 8, 256, log=True),
    Knob("gpu-memory-utilization", "gpu-memory-utilization", KnobType.REAL, 0.5, 0.95),
    Knob("max-num-batched-tokens", "max-num-batched-tokens", KnobType.INTEGER, 256, 8192,
         log=True),
)


#: Knobs searched only when the config names them under ``space`` (an empty mapping takes
#: these ranges). vLLM refuses the queue caps before 0.29 (the trial fails ``flag_rejected``).
OPTIONAL_KNOBS: tuple[Knob, ...] = (
    Knob("max-num-active-seqs", "max-num-active-seqs", KnobType.INTEGER, 4, 256, log=True),
    Knob("max-num-queued-reqs", "max-num-queued-reqs", KnobType.INTEGER, 4, 4096, log=True),
    Knob("max-num-queued-tokens", "max-num-queued-tokens", KnobType.INTEGER, 1024, 1_048_576,
         log=True),
)

#: Flags that are caps on a count: vLLM takes whole numbers >= 1 for them.
CAP_FLAGS: frozenset[str] = frozenset(
    {"max-num-seqs", "max-num-batched-tokens", "max-num-active-seqs", "max-num-queued-reqs",
     "max-num-queued-tokens"}
)


@dataclass(frozen=True)
class Space:
    knobs: tuple[Knob, ...]

    def point(self, x: Sequence[Any]) -> dict[str, Any]:
        """An optimizer point (list, numpy scalars) -> ``{knob name: python value}``."""
        return {k.name: k.convert(v) for k, v in zip(self.knobs, x, strict=True)}

    def x(self, point: Mapping[str, Any]) -> list[Any]:
        return [point[k.name] for k in self.knobs]

    def flags(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """``{knob name: value}`` -> ``{flag: value}``."""
        return {k.flag: point[k.name] for k in self.knobs if k.name in point}

    def point_from_flags(self, flags: Mapping[str, Any]) -> dict[str, Any] | None:
        """The point a flag set corresponds to, or None if a knob is unset or out of range."""
        out = {}
        for k in self.knobs:
            if k.flag not in flags or not k.contains(flags[k.flag]):
                return None
            out[k.name] = flags[k.flag]
        return out


def point_key(point: Mapping[str, Any]) -> str:
    """Canonical identity of a point (JSON with sorted keys)."""
    return json.dumps(dict(point), sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Constraints:
    """Known vLLM constraints, checked on the full flag set before launch."""

    repair: bool = True
    max_model_len: int | None = None


def _chunked_prefill(flags: Mapping[str, Any]) -> bool:
    if flags.get("no-enable-chunked-prefill") is True:
        return False
    value = flags.get("enable-chunked-prefill")
    return value is None or value is True or str(value).lower() in ("true", "1", "yes")


def apply_constraints(
    flags: Mapping[str, Any], space: Space, constraints: Constraints
) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """Repair or reject a full flag set. Returns (flags or None when rejected, notes).

    * ``max-num-batched-tokens >= max-num-seqs`` (the step's token budget must fit one token
      per running sequence): raised to max-num-seqs when repair is on and that stays inside
      the searched range, else rejected.
    * without chunked prefill, ``max-num-batched-tokens >= max-model-len`` (a whole prompt
      must fit in one step): raised likewise, else rejected.
    """
    out = dict(flags)
    notes: list[str] = []
    by_flag = {k.flag: k for k in space.knobs}
    mbt_knob = by_flag.get("max-num-batched-tokens")
    mbt = out.get("max-num-batched-tokens")

    def need(minimum: int, why: str) -> bool:
        nonlocal mbt
        if mbt is None or mbt >= minimum:
            return True
        high = mbt_knob.high if mbt_knob is not None else None
        if constraints.repair and high is not None and minimum <= high:
            notes.append(f"repaired max-num-batched-tokens {mbt} -> {minimum} ({why})")
            mbt = minimum
            out["max-num-batched-tokens"] = minimum
            return True
        notes.append(f"rejected: max-num-batched-tokens {mbt} < {minimum} ({why})")
        return False

    seqs = out.get("max-num-seqs")
    if isinstance(seqs, int) and not need(seqs, "must be >= max-num-seqs"):
        return None, tuple(notes)
    active = out.get("max-num-active-seqs")
    if isinstance(seqs, int) and isinstance(active, int) and active > seqs:
        active_knob = by_flag.get("max-num-active-seqs")
        low = active_knob.low if active_knob is not None else None
        if constraints.repair and (low is None or seqs >= low):
            notes.append(f"repaired max-num-active-seqs {active} -> {seqs} "
                         "(must be <= max-num-seqs)")
            out["max-num-active-seqs"] = seqs
        else:
            notes.append(f"rejected: max-num-active-seqs {active} > max-num-seqs {seqs} "
                         "(vLLM refuses to start)")
            return None, tuple(notes)
    if not _chunked_prefill(out):
        mml = out.get("max-model-len", constraints.max_model_len)
        if isinstance(mml, int) and not need(
            mml, "without chunked prefill it must be >= max-model-len"
        ):
            return None, tuple(notes)
    return out, tuple(notes)
