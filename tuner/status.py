"""What ``tuner status`` shows: targets' last scrape and live signals, read from a store.

Read-only: it opens the store of a (possibly running) daemon without writing to it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from tuner.config import Config
from tuner.promql import Engine
from tuner.signals import STATUS_SIGNALS, Signal, evaluate_signals
from tuner.store import Store


@dataclass(frozen=True)
class TargetStatus:
    name: str
    url: str
    kind: str
    up: bool | None
    last_scrape: float | None
    error: str


@dataclass(frozen=True)
class Status:
    """What ``tuner status`` shows: targets and live signals per instance."""

    now: float
    store_path: str
    targets: tuple[TargetStatus, ...]
    signals: dict[str, dict[str, float]]
    signal_defs: tuple[Signal, ...] = STATUS_SIGNALS

    @property
    def vllm_instances(self) -> frozenset[str]:
        """Instances that export vLLM engine gauges (the rest are DCGM or unknown)."""
        return frozenset(i for i, s in self.signals.items() if "running" in s)

    def unknown(self) -> dict[str, list[str]]:
        """Per vLLM instance, the absent signals whose absence means unknown (never zero)."""
        return {
            inst: [d.name for d in self.signal_defs
                   if d.missing == "unknown" and d.name not in self.signals[inst]]
            for inst in sorted(self.vllm_instances)
        }

    def to_json(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "now": self.now,
            "store": self.store_path,
            "targets": [
                {
                    "name": t.name,
                    "url": t.url,
                    "kind": t.kind,
                    "up": t.up,
                    "last_scrape": t.last_scrape,
                    "error": t.error,
                }
                for t in self.targets
            ],
            "signals": {
                inst: {k: clean(v) for k, v in sigs.items()} for inst, sigs in self.signals.items()
            },
            # signals that are unknown for an instance (a partial report), never shown as 0
            "unknown": {inst: names for inst, names in self.unknown().items() if names},
        }


def read_status(config: Config, now: float | None = None) -> Status:
    """Targets' last scrape and live signals, read from the daemon's store (read-only)."""
    now = time.time() if now is None else now
    store = Store(config.store.path, config.store.retention, config.store.max_bytes, read_only=True)
    try:
        return status_from_store(config, store, now)
    finally:
        store.close()


def status_from_store(config: Config, store: Store, now: float) -> Status:
    """What ``read_status`` shows, from a store the caller opened (and closes)."""
    last = {r.target: r for r in store.last_scrapes()}
    targets = []
    for t in config.targets:
        r = last.get(t.name)
        targets.append(
            TargetStatus(
                t.name,
                t.url,
                t.kind,
                None if r is None else r.up,
                None if r is None else r.ts,
                "" if r is None else r.error,
            )
        )
    signals = evaluate_signals(Engine(store), STATUS_SIGNALS, now)
    return Status(now, str(config.store.path), tuple(targets), signals)
