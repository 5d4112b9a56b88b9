"""Bound the search space before the first candidate: the baseline's KV capacity and the load's
sequence lengths say where KV runs out.

The baseline's canary reports its KV cache (``vllm:cache_config_info``: ``num_gpu_blocks`` x
``block_size``, or ``kv_cache_size_tokens``; ``Measurement.kv_capacity_tokens``). A request
of the load holds ``prompt + output`` tokens at its end (``prompt + output / 2`` on average
over its life), so the cache holds ``capacity / tokens`` such requests at once: the
concurrency at which the KV cache runs out. From it, per point of the space:

* ruled out: a memory knob so small the cache cannot hold one ``max-model-len`` sequence
  (vLLM refuses to start; it keeps one block back), so those candidates are never launched;
* unlikely: ``max-num-seqs`` above what the largest cache in the range holds at once (more
  slots only preempt) or above the requests the load keeps in flight (closed loop: no
  effect). The initial design covers the likely part; the optimizer may still go beyond.

The capacity of another memory value is exact for ``num-gpu-blocks-override`` and
proportional for ``kv-cache-memory-bytes``; for ``gpu-memory-utilization`` it is taken as
proportional too, which over-estimates the cache below the baseline's fraction (the weights
take a fixed share), so what it rules out is ruled out for certain. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuner.load import LengthDist, LoadSpec
from tuner.tune.space import Knob, KnobType, Space

MEMORY_FLAGS = ("num-gpu-blocks-override", "kv-cache-memory-bytes", "gpu-memory-utilization")
#: Headroom over the mean-occupancy KV concurrency before more sequence slots are "unlikely"
#: (some preemption is cheap: on vLLM CPU a few more slots than the cache holds can still pay).
SLOT_HEADROOM = 2.0


def mean_length(dist: LengthDist) -> float:
    """The mean of a length distribution (exact for fixed, sampled with a fixed seed else)."""
    if dist.kind == "fixed":
        return float(max(dist.low, round(dist.mean)))
    import numpy as np

    return float(dist.sample(np.random.default_rng(0), 4000).mean())


@dataclass(frozen=True)
class KvBound:
    """What the baseline's KV capacity says about the space (see the module docstring)."""

    capacity_tokens: float
    block_size: int
    tokens_per_request: float  # mean prompt + mean output
    kv_concurrency: float  # requests at their full length the baseline's cache holds
    load_concurrency: int | None
    #: knob name -> (low, high) allowed; outside is ruled out (never launched).
    allowed: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: knob name -> (low, high) the initial design covers (the likely part).
    likely: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def allows(self, point: Mapping[str, Any]) -> bool:
        """False for a point in the ruled-out part of the space."""
        return all(
            lo <= float(point[name]) <= hi
            for name, (lo, hi) in self.allowed.items() if name in point
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "capacity_tokens": self.capacity_tokens, "block_size": self.block_size,
            "tokens_per_request": self.tokens_per_request,
            "kv_concurrency": self.kv_concurrency, "load_concurrency": self.load_concurrency,
            "allowed": {k: list(v) for k, v in self.allowed.items()},
            "likely": {k: list(v) for k, v in self.likely.items()}, "notes": list(self.notes),
        }


def _memory_knob(space: Space) -> Knob | None:
    return next((k for k in space.knobs if k.flag in MEMORY_FLAGS
                 and k.kind is not KnobType.CATEGORICAL), None)


def capacity_at(knob: Knob, value: float, base_value: float | None,
                base_capacity: float, block_size: int) -> float:
    """KV capacity (tokens) with the memory knob at ``value``, from the baseline's."""
    if knob.flag == "num-gpu-blocks-override":
        return float(value) * block_size
    if base_value is None or base_value <= 0:
        return base_capacity
    return base_capacity * float(value) / float(base_value)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:.3g}"


def kv_bound(
    space: Space,
    baseline_flags: Mapping[str, Any],
    capacity_tokens: float,
    block_size: float,
    load: LoadSpec,
    max_model_len: int | None,
) -> KvBound | None:
    """The bound for ``space`` from the baseline's measured KV capacity, or None when the
    capacity was not measured."""
    if not (math.isfinite(capacity_tokens) and capacity_tokens > 0):
        return None
    bs = int(block_size) if math.isfinite(block_size) and block_size > 0 else 16
    prompt, output = mean_length(load.prompt_tokens), mean_length(load.output_tokens)
    per_request = prompt + output
    blocks_per_request = math.ceil(per_request / bs)
    full = capacity_tokens / (blocks_per_request * bs)
    avg = capacity_tokens / (prompt + output / 2)
    closed = load.concurrency if load.request_rate is None else None
    in_flight = load.concurrency
    notes = [
        f"KV cache of the baseline: {_fmt(capacity_tokens)} tokens "
        f"({_fmt(capacity_tokens / bs)} blocks of {bs}); a request of the load holds "
        f"~{_fmt(per_request)} tokens at its end ({_fmt(prompt)} prompt + {_fmt(output)} "
        f"output, mean): the cache holds ~{full:.1f} requests at once "
        f"(~{avg:.1f} at mean occupancy); KV runs out above that concurrency."
    ]
    allowed: dict[str, tuple[float, float]] = {}
    likely: dict[str, tuple[float, float]] = {}
    mem = _memory_knob(space)
    top_capacity = capacity_tokens
    if mem is not None and mem.low is not None and mem.high is not None:
        base_value = baseline_flags.get(mem.flag)
        base_value = float(base_value) if isinstance(base_value, int | float) else None
        top_capacity = capacity_at(mem, mem.high, base_value, capacity_tokens, bs)
        if max_model_len:
            need = (math.ceil(max_model_len / bs) + 1) * bs  # vLLM keeps one block back
            lo = float(mem.low)
            if mem.flag == "num-gpu-blocks-override":
                lo = max(lo, float(need // bs))
            elif base_value:
                lo = max(lo, base_value * need / capacity_tokens)
                if mem.kind is KnobType.INTEGER:
                    lo = float(math.ceil(lo))
            if lo > float(mem.low):
                allowed[mem.name] = (lo, float(mem.high))
                notes.append(
                    f"ruled out: --{mem.flag} below {_fmt(lo)} (its KV cache cannot hold one "
                    f"{max_model_len:,}-token sequence, max-model-len; vLLM refuses to start)"
                    + ("" if lo <= float(mem.high) else ": the whole range")
                )
    seqs = next((k for k in space.knobs if k.flag == "max-num-seqs"
                 and k.low is not None and k.high is not None), None)
    if seqs is not None:
        assert seqs.low is not None and seqs.high is not None
        top_avg = top_capacity / (prompt + output / 2)
        high = float(seqs.high)
        why = []
        kv_high = math.ceil(SLOT_HEADROOM * top_avg)
        if kv_high < high:
            high = float(kv_high)
            why.append(f"above ~{kv_high} the largest KV cache in the range "
                       f"({_fmt(top_capacity)} tokens) runs out: more slots only preempt")
        if closed is not None and closed < high:
            high = float(closed)
            why.append(f"above {closed} the load has no more requests in flight: no effect")
        high = max(high, float(seqs.low))
        if high < float(seqs.high):
            likely[seqs.name] = (float(seqs.low), high)
            notes.append(f"unlikely: --max-num-seqs above {_fmt(high)} ({'; '.join(why)}); "
                         f"the initial design covers {_fmt(float(seqs.low))}..{_fmt(high)}")
    if in_flight is not None and closed is None:
        notes.append(f"the open-loop load caps requests in flight at {in_flight}")
    for name, rng in allowed.items():
        lo, hi = likely.get(name, rng)
        likely[name] = (max(lo, rng[0]), min(hi, rng[1]))
    return KvBound(capacity_tokens, bs, per_request, full, closed, allowed, likely,
                   tuple(notes))
