"""Prometheus text exposition → samples, with vLLM name aliases and DCGM label handling.

``parse_exposition`` turns one ``/metrics`` body into a list of ``Sample`` records using
``prometheus_client.parser``. ``normalize_samples`` then makes names and labels canonical so
downstream code asks for one name whatever the vLLM version:

* V0/V1 renames (``vllm:gpu_cache_usage_perc`` → ``vllm:kv_cache_usage_perc`` and the rest of
  ``VLLM_ALIASES``): the raw sample is kept under its own name, and a copy is added under the
  canonical name unless the same scrape already exports the canonical series (vLLM 0.9–0.11
  exports both; we count once).
* DCGM's ``Hostname`` label (renamed ``hostname`` on the exporter's main branch in 2026) is
  stored as ``hostname`` so one query works for both exporter versions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tuner.errors import ExpositionError

Labels = tuple[tuple[str, str], ...]

# Old (V0 / pre-0.12) sample name prefix → canonical (current) prefix. Histogram and counter
# suffixes (_bucket, _sum, _count, _total, _created) follow the prefix.
VLLM_ALIASES: Mapping[str, str] = {
    "vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "vllm:cpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "vllm:gpu_prefix_cache_queries": "vllm:prefix_cache_queries",
    "vllm:gpu_prefix_cache_hits": "vllm:prefix_cache_hits",
    "vllm:time_per_output_token_seconds": "vllm:inter_token_latency_seconds",
}
_SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count")


@dataclass(frozen=True, slots=True)
class Sample:
    """One exposition sample: metric name, sorted label pairs (no ``__name__``), value."""

    name: str
    labels: Labels
    value: float

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class MetricMetadata:
    """A metric family's ``# TYPE`` / ``# HELP`` / ``# UNIT``, named as its TYPE line names it."""

    name: str
    type: str
    help: str
    unit: str = ""


@dataclass(frozen=True)
class ParseResult:
    """Samples of one scrape, with how many duplicate series were dropped, and family metadata."""

    samples: list[Sample]
    duplicates: int = 0
    non_finite: int = 0
    metadata: tuple[MetricMetadata, ...] = ()


def canonical_name(name: str) -> str:
    """Map an old vLLM sample name to its current one; other names are returned unchanged."""
    if not name.startswith("vllm:"):
        return name
    for old, new in VLLM_ALIASES.items():
        if name.startswith(old):
            suffix = name[len(old) :]
            if suffix in _SUFFIXES:
                return new + suffix
    return name


def labels_of(mapping: Mapping[str, str]) -> Labels:
    """Sorted, hashable label pairs from a mapping (``__name__`` excluded)."""
    return tuple(sorted((k, str(v)) for k, v in mapping.items() if k != "__name__"))


def parse_exposition(text: str) -> ParseResult:
    """Parse Prometheus text exposition (0.0.4) into samples.

    Raises ExpositionError naming the offending line on malformed or truncated input. A
    series that appears twice keeps its first value, as Prometheus does, and is counted.
    NaN and ±Inf are valid sample values and are kept (counted in ``non_finite``).
    """
    if text and not text.endswith("\n"):
        # A body cut mid-line is the common truncation; a complete last line without a
        # newline is still legal, so only refuse when the last line does not parse alone.
        last = text.rsplit("\n", 1)[-1]
        if not last.startswith("#"):
            try:
                for _ in text_string_to_metric_families(last + "\n"):
                    pass
            except Exception as exc:  # the parser raises ValueError/IndexError/KeyError
                raise ExpositionError(f"truncated exposition: last line {last[:120]!r}") from exc
    samples: list[Sample] = []
    seen: set[tuple[str, Labels]] = set()
    duplicates = 0
    non_finite = 0
    metadata: list[MetricMetadata] = []
    try:
        for family in text_string_to_metric_families(text):
            metadata.append(_metadata(family))
            for s in family.samples:
                key = (s.name, labels_of(s.labels))
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                value = float(s.value)
                if not math.isfinite(value):
                    non_finite += 1
                samples.append(Sample(s.name, key[1], value))
    except ExpositionError:
        raise
    except Exception as exc:  # prometheus_client raises bare ValueError etc.
        raise ExpositionError(f"malformed exposition: {exc}") from exc
    return ParseResult(samples, duplicates, non_finite, tuple(metadata))


def _metadata(family: Any) -> MetricMetadata:
    """The family's metadata; a counter is named with ``_total`` when its samples are."""
    name = str(family.name)
    if family.type == "counter" and any(s.name == name + "_total" for s in family.samples):
        name += "_total"
    return MetricMetadata(name, str(family.type), str(family.documentation or ""),
                          str(getattr(family, "unit", "") or ""))


def normalize_samples(samples: Iterable[Sample], kind: str) -> list[Sample]:
    """Canonical names and labels for one target's samples (see module docstring)."""
    out: list[Sample] = []
    if kind == "dcgm":
        for s in samples:
            if any(k == "Hostname" for k, _ in s.labels):
                labels = tuple(
                    sorted(("hostname" if k == "Hostname" else k, v) for k, v in s.labels)
                )
                out.append(Sample(s.name, labels, s.value))
            else:
                out.append(s)
        return out
    samples = list(samples)
    present = {(s.name, s.labels) for s in samples}
    for s in samples:
        out.append(s)
        canon = canonical_name(s.name)
        if canon != s.name and (canon, s.labels) not in present:
            present.add((canon, s.labels))
            out.append(Sample(canon, s.labels, s.value))
    return out


def with_target_labels(samples: Iterable[Sample], target_labels: Mapping[str, str]) -> list[Sample]:
    """Attach ``job``/``instance`` (and configured) labels; exposed labels of the same name
    are kept as ``exported_<name>`` as Prometheus does with ``honor_labels: false``."""
    out = []
    for s in samples:
        merged = dict(s.labels)
        for k, v in target_labels.items():
            if k in merged and merged[k] != v:
                merged["exported_" + k] = merged[k]
            merged[k] = v
        out.append(Sample(s.name, labels_of(merged), s.value))
    return out
