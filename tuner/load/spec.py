"""What load to send: token-length distributions (``LengthDist``), the ``LoadSpec``, and a
spec from a workload fingerprint (``load_spec_from_workload``, see its docstring for fields).

Every run is bounded: no request starts after ``duration`` seconds or after ``max_requests``
(hard cap HARD_MAX_REQUESTS).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuner.errors import ConfigError

HARD_MAX_REQUESTS = 100_000
MAX_DURATION = 24 * 3600.0
#: Connection-pool size for open-loop runs without a concurrency cap.
OPEN_LOOP_POOL = 256
KEEPALIVE_SECONDS = 60.0
LENGTH_KINDS = ("fixed", "uniform", "normal", "lognormal", "empirical")


# --------------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class LengthDist:
    """A distribution of token counts; samples are integers clipped to [low, high].

    - ``fixed``: always ``mean``.
    - ``uniform``: integers in [low, high].
    - ``normal``: mean, std.
    - ``lognormal``: the distribution's own mean and std (not those of its logarithm).
    - ``empirical``: ``weights`` over ``values`` (points), or over buckets given by
      ``edges`` (len(weights)+1 ascending bounds; bucket i holds the integers in
      (edges[i], edges[i+1]], as a Prometheus ``le`` bucket; a sample is uniform inside it).
    """

    kind: str
    mean: float = 0.0
    std: float = 0.0
    low: int = 1
    high: int | None = None
    values: tuple[float, ...] = ()
    edges: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        where = f"length distribution ({self.kind})"
        if self.kind not in LENGTH_KINDS:
            raise ConfigError(f"length distribution: kind {self.kind!r} is not allowed "
                              f"(allowed: {', '.join(LENGTH_KINDS)})")
        if self.low < 1:
            raise ConfigError(f"{where}: low must be >= 1, got {self.low}")
        if self.high is not None and self.high < self.low:
            raise ConfigError(f"{where}: high ({self.high}) must be >= low ({self.low})")
        if self.kind in ("fixed", "normal", "lognormal") and not (
                math.isfinite(self.mean) and self.mean >= 1):
            raise ConfigError(f"{where}: mean must be a finite number >= 1, got {self.mean}")
        if self.kind in ("normal", "lognormal") and not (
                math.isfinite(self.std) and self.std >= 0):
            raise ConfigError(f"{where}: std must be a finite number >= 0, got {self.std}")
        if self.kind == "uniform" and self.high is None:
            raise ConfigError(f"{where}: needs low and high")
        if self.kind == "empirical":
            self._check_empirical(where)

    def _check_empirical(self, where: str) -> None:
        w = self.weights
        if not w or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise ConfigError(f"{where}: weights must be non-negative numbers with a "
                              "positive sum")
        if self.edges:
            if len(self.edges) != len(w) + 1:
                raise ConfigError(f"{where}: edges needs len(weights)+1 = {len(w) + 1} "
                                  f"bounds, got {len(self.edges)}")
            if any(b <= a for a, b in itertools.pairwise(self.edges)) or not all(
                    math.isfinite(e) for e in self.edges):
                raise ConfigError(f"{where}: edges must be finite and strictly ascending")
        elif len(self.values) != len(w):
            raise ConfigError(f"{where}: needs values (same length as weights) or edges")

    @property
    def max_length(self) -> int:
        """An upper bound of the samples (8192 for unbounded normal/lognormal)."""
        if self.high is not None:
            return self.high
        if self.kind == "fixed":
            return max(self.low, round(self.mean))
        if self.kind == "empirical":
            top = max(self.edges) if self.edges else max(self.values)
            return max(self.low, math.floor(top))
        return 8192

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` integer token counts (int64 array)."""
        raw: np.ndarray
        if self.kind == "fixed":
            raw = np.full(n, float(self.mean))
        elif self.kind == "uniform":
            assert self.high is not None
            raw = rng.integers(self.low, self.high + 1, size=n).astype(float)
        elif self.kind == "normal":
            raw = rng.normal(self.mean, self.std, size=n)
        elif self.kind == "lognormal":
            sigma2 = math.log1p((self.std / self.mean) ** 2)
            mu = math.log(self.mean) - sigma2 / 2
            raw = rng.lognormal(mu, math.sqrt(sigma2), size=n)
        else:
            p = np.asarray(self.weights, dtype=float)
            p = p / p.sum()
            idx = rng.choice(len(p), size=n, p=p)
            if self.edges:
                e = np.floor(np.asarray(self.edges, dtype=float)).astype(np.int64)
                lo = e[idx] + 1
                hi = np.maximum(lo, e[idx + 1])
                raw = rng.integers(lo, hi + 1).astype(float)
            else:
                raw = np.asarray(self.values, dtype=float)[idx]
        out = np.rint(raw)
        hi = np.inf if self.high is None else self.high
        return np.clip(out, self.low, hi).astype(np.int64)


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class LoadSpec:
    """What load to send. Closed loop with ``concurrency``; Poisson open loop with
    ``request_rate`` (then ``concurrency``, if set, caps requests in flight)."""

    prompt_tokens: LengthDist
    output_tokens: LengthDist
    concurrency: int | None = None
    request_rate: float | None = None
    duration: float = 10.0
    max_requests: int | None = None
    warmup_requests: int = 0
    seed: int = 0
    prefix_share: float = 0.0
    request_timeout: float = 120.0
    token_id_range: tuple[int, int] = (100, 2000)

    def __post_init__(self) -> None:
        if self.concurrency is None and self.request_rate is None:
            raise ConfigError("load: set concurrency (closed loop) or request_rate "
                              "(Poisson open loop)")
        if self.concurrency is not None and not 1 <= self.concurrency <= 10_000:
            raise ConfigError(f"load: concurrency must be 1..10000, got {self.concurrency}")
        if self.request_rate is not None and not (
                math.isfinite(self.request_rate) and self.request_rate > 0):
            raise ConfigError(f"load: request_rate must be > 0 requests/s, "
                              f"got {self.request_rate}")
        if not (math.isfinite(self.duration) and 0 < self.duration <= MAX_DURATION):
            raise ConfigError(f"load: duration must be in (0, {MAX_DURATION:g}] seconds, "
                              f"got {self.duration}")
        if self.max_requests is not None and not 1 <= self.max_requests <= HARD_MAX_REQUESTS:
            raise ConfigError(f"load: max_requests must be 1..{HARD_MAX_REQUESTS}, "
                              f"got {self.max_requests}")
        if not 0 <= self.warmup_requests <= 10_000:
            raise ConfigError(f"load: warmup_requests must be 0..10000, "
                              f"got {self.warmup_requests}")
        if not 0.0 <= self.prefix_share <= 1.0:
            raise ConfigError(f"load: prefix_share must be in [0, 1], got {self.prefix_share}")
        if not (math.isfinite(self.request_timeout) and self.request_timeout > 0):
            raise ConfigError(f"load: request_timeout must be > 0, got {self.request_timeout}")
        lo, hi = self.token_id_range
        if not 0 <= lo < hi:
            raise ConfigError(f"load: token_id_range must be [low, high) with 0 <= low < high, "
                              f"got {self.token_id_range}")

    @property
    def request_cap(self) -> int:
        return min(self.max_requests or HARD_MAX_REQUESTS, HARD_MAX_REQUESTS)

    @property
    def pool_size(self) -> int:
        return self.concurrency or OPEN_LOOP_POOL


# --------------------------------------------------------------------------- workload fingerprint


def _dist_from(where: str, raw: Any) -> LengthDist:
    """A LengthDist from a fingerprint entry (see load_spec_from_workload)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return LengthDist("fixed", mean=float(raw))
    if not isinstance(raw, Mapping):
        raise ConfigError(f"workload: {where} must be a number or a mapping, "
                          f"got {type(raw).__name__}")
    if "histogram" in raw:
        return _dist_from_histogram(where, raw["histogram"], raw)
    if "buckets" in raw:
        return _dist_from_buckets(where, raw["buckets"], raw)
    allowed = {"kind", "mean", "std", "low", "high", "values", "edges", "weights"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"workload: {where} has unknown key(s) {sorted(unknown)} "
                          f"(allowed: {', '.join(sorted(allowed | {'histogram'}))})")
    try:
        return LengthDist(
            kind=str(raw.get("kind", "lognormal" if "std" in raw else "fixed")),
            mean=float(raw.get("mean", 0.0)), std=float(raw.get("std", 0.0)),
            low=int(raw.get("low", 1)),
            high=None if raw.get("high") is None else int(raw["high"]),
            values=tuple(float(v) for v in raw.get("values", ())),
            edges=tuple(float(v) for v in raw.get("edges", ())),
            weights=tuple(float(v) for v in raw.get("weights", ())))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"workload: {where}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"workload: {where}: {exc}") from exc


def _dist_from_buckets(where: str, buckets: Any, raw: Mapping[str, Any]) -> LengthDist:
    """``tuner.workload`` LENGTHS: ``buckets = [{"lo", "hi", "p"}, ...]`` -> empirical.

    Gaps between buckets get weight 0; a bucket with ``hi == lo`` (the +Inf bucket, reported
    at the top finite bound) is the length ``lo``.
    """
    try:
        items = sorted((float(b["lo"]), float(b["hi"]), float(b["p"])) for b in buckets)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"workload: {where}.buckets must be a list of {{lo, hi, p}} "
                          f"mappings ({exc})") from exc
    items = [(lo, hi, p) for lo, hi, p in items if p > 0]
    if not items:
        raise ConfigError(f"workload: {where}.buckets has no bucket with p > 0")
    edges: list[float] = [max(items[0][0], 0.0)]
    weights: list[float] = []
    for lo, hi, p in items:
        if hi <= lo:  # the +Inf bucket, reported at the top finite bound: the point ``lo``
            if weights and edges[-1] == lo and edges[-2] < lo - 1.0:
                edges[-1] = lo - 1.0  # split the point off the bucket below
            lo, hi = lo - 1.0, lo
        if lo > edges[-1]:  # a gap of empty buckets
            edges.append(lo)
            weights.append(0.0)
        if hi <= edges[-1]:
            weights[-1] += p
            continue
        edges.append(hi)
        weights.append(p)
    high = raw.get("high")
    return LengthDist("empirical", edges=tuple(edges), weights=tuple(weights),
                      low=int(raw.get("low", 1)),
                      high=None if high is None else int(high))


def _dist_from_histogram(where: str, buckets: Any, raw: Mapping[str, Any]) -> LengthDist:
    """Prometheus-style cumulative buckets [[le, count], ...] -> empirical bucket weights."""
    try:
        pairs = sorted((float(le), float(c)) for le, c in buckets)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"workload: {where}.histogram must be [[le, cumulative_count], ...]"
                          ) from exc
    finite = [(le, c) for le, c in pairs if math.isfinite(le)]
    if not finite:
        raise ConfigError(f"workload: {where}.histogram has no finite bucket bound")
    high = int(raw.get("high", finite[-1][0]))
    edges = [0.0]
    weights: list[float] = []
    prev = 0.0
    for le, c in finite:
        if le <= edges[-1]:
            prev = c
            continue
        edges.append(le)
        weights.append(max(0.0, c - prev))
        prev = c
    if sum(weights) <= 0:
        raise ConfigError(f"workload: {where}.histogram has no observations")
    return LengthDist("empirical", edges=tuple(edges), weights=tuple(weights),
                      low=int(raw.get("low", 1)), high=max(high, 1))


def load_spec_from_workload(workload: Mapping[str, Any], **overrides: Any) -> LoadSpec:
    """A LoadSpec from a workload fingerprint (JSON from ``tuner suggest``, or hand-written).

    Fields (lengths in tokens, rates per second):

    - ``prompt_tokens``, ``output_tokens`` (required): a number (fixed length), a mapping of
      LengthDist fields (``{"kind": "lognormal", "mean": 512, "std": 200, "high": 4096}``;
      without ``kind``: lognormal if ``std`` is given, else fixed), or
      ``{"histogram": [[le, cumulative_count], ...], "high": N}`` — the buckets of
      ``vllm:request_prompt_tokens`` / ``vllm:request_generation_tokens``.
      The LENGTHS object of ``tuner.workload`` (``{"buckets": [{"lo", "hi", "p"}, ...], ...}``,
      other keys ignored) is read as the same empirical distribution.
    - ``request_rate`` (or ``request_rate_per_s``, as ``tuner.workload`` writes it): mean
      arrival rate (Poisson open loop); and/or ``concurrency``.
    - optional ``prefix_share`` (0..1; or ``prefix_cache_hit_rate``, used as the shared
      fraction), ``duration``, ``max_requests``, ``warmup_requests``, ``seed``.

    ``overrides`` (LoadSpec field names) win over the fingerprint, e.g. a fixed duration.
    """
    if not isinstance(workload, Mapping):
        raise ConfigError("workload: the fingerprint must be a mapping (JSON object)")
    for key in ("prompt_tokens", "output_tokens"):
        if workload.get(key) is None:
            raise ConfigError(f"workload: {key!r} is missing or null (a length distribution "
                              "is needed; a fingerprint of a window without requests has none)")
    kwargs: dict[str, Any] = {
        "prompt_tokens": _dist_from("prompt_tokens", workload["prompt_tokens"]),
        "output_tokens": _dist_from("output_tokens", workload["output_tokens"]),
    }
    numeric = {"request_rate": float, "concurrency": int, "duration": float,
               "max_requests": int, "warmup_requests": int, "seed": int,
               "prefix_share": float}
    for key, conv in numeric.items():
        value = workload.get(key)
        if key == "prefix_share" and value is None:
            value = workload.get("prefix_cache_hit_rate")
        if key == "request_rate" and value is None:
            value = workload.get("request_rate_per_s")
        if value is None:
            continue
        try:
            kwargs[key] = conv(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"workload: {key} must be a number, got {value!r}") from exc
    kwargs.update(overrides)
    return LoadSpec(**kwargs)
