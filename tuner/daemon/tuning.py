"""The daemon's tuning window: a scheduled ``tuner tune`` on canaries, progress on /metrics."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from tuner.config import Config
from tuner.daemon.triggers import cron_trigger
from tuner.web import TuningProgress

log = logging.getLogger("tuner.daemon")
#: Load keys that describe the traffic; a drifted run takes them from the live fingerprint and
#: keeps the rest (duration, caps, seed, timeouts) from the tune config.
_TRAFFIC_KEYS = ("prompt_tokens", "output_tokens", "request_rate", "prefix_share", "workload")


def drifted_load(load: Mapping[str, Any], workload_file: Path) -> dict[str, Any]:
    """The tune config's load section, with the traffic taken from ``workload_file``."""
    kept = {k: v for k, v in load.items() if k not in _TRAFFIC_KEYS}
    return {**kept, "workload": str(workload_file)}


class TuningWindow:
    """``tune.schedule``: a search on canaries from the daemon, progress on its /metrics.

    Each run writes a fresh output directory ``tune.out/<UTC time>/`` (trials.csv, best.json,
    report.md, plots). The tune config is loaded when the daemon starts, so a bad one refuses
    to start the daemon. Stopping the daemon stops the canaries of a run in flight; the run's
    finished trials stay in its directory (``tuner tune --resume --out DIR`` continues it).
    """

    def __init__(self, config: Config) -> None:
        from tuner.tune import TuneCounters, load_tune_config

        assert config.tune.config is not None and config.tune.schedule is not None
        self.window = config.tune
        self.tune_config = load_tune_config(config.tune.config)
        self.trigger = cron_trigger(config, "tune.schedule", config.tune.schedule)
        self.counters = TuneCounters(self.tune_config.objective)
        self.cancelled = threading.Event()  # the daemon is stopping
        self._run_stop = threading.Event()  # the search in flight (run_tune sets it when done)
        self.runs: dict[str, int] = {"ok": 0, "failed": 0, "interrupted": 0}
        self.last_run: float | None = None
        self.last_out: Path | None = None
        #: The live fingerprint when production has drifted (set by the daemon's drift check);
        #: the next run then tunes against it instead of the tune config's load.
        self.live_workload: Callable[[], Mapping[str, Any] | None] = lambda: None
        self.last_workload: str = "tune config"
        self.last_tune_config = self.tune_config  # what the last run searched with

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(_TuneCollector(self))

    def run_once(self, now: float | None = None) -> Path | None:
        """One search; returns its output directory (None if cancelled before it started)."""
        import datetime

        from tuner.report import write_tune_outputs
        from tuner.tune import TuneInterrupted, TuneOptions, run_tune

        if self.cancelled.is_set():
            return None
        self._run_stop = threading.Event()
        stamp = datetime.datetime.fromtimestamp(now or time.time(), datetime.UTC)
        out = self.window.out / stamp.strftime("%Y%m%dT%H%M%SZ")
        self.last_out = out
        options = TuneOptions(out=out, trials=self.window.trials)
        cfg = self.tune_config
        live = self.live_workload()
        try:
            if live is not None:
                out.mkdir(parents=True, exist_ok=True)
                workload_file = out / "workload.json"
                workload_file.write_text(json.dumps(dict(live), indent=2, sort_keys=True) + "\n")
                cfg = replace(cfg, load=drifted_load(cfg.load, workload_file))
                self.last_workload = f"live workload (drifted), {workload_file}"
                log.info("tuning window: production has drifted; tuning against the live "
                         "workload in %s", workload_file)
            else:
                self.last_workload = "tune config"
        except OSError as exc:
            self.runs["failed"] += 1
            log.error("tuning window: cannot write the live workload into %s: %s", out, exc)
            return out
        self.last_tune_config = cfg
        log.info("tuning window: search into %s", out)
        try:
            outcome = run_tune(cfg, options, observers=[self.counters],
                               install_signals=False, stop=self._run_stop)
            write_tune_outputs(outcome, out)
        except TuneInterrupted:
            self.runs["interrupted"] += 1
            log.warning("tuning window: interrupted; finished trials are in %s", out)
        except Exception:  # a failed search must not kill the scheduler thread
            self.runs["failed"] += 1
            log.exception("tuning window: search failed")
        else:
            self.runs["ok"] += 1
            log.info("tuning window: done, report in %s", out / "report.md")
        finally:
            self.last_run = time.time()
        return out

    def progress(self, next_run: float | None) -> TuningProgress:
        """The window's state for the status page (``next_run`` from the scheduler's job)."""
        snap = self.counters.snapshot()
        objective = self.tune_config.objective
        return TuningProgress(
            schedule=self.window.schedule or "",
            next_run=next_run,
            planned_trials=self.window.trials,
            running=int(snap["running"]),
            trials_by_state=dict(snap["trials_total"]),
            best_objective=snap["best_objective"],
            objective=f"{objective.kind} ({objective.unit})",
            runs=dict(self.runs),
            last_run=self.last_run,
            out_dir=str(self.last_out or self.window.out),
        )

    def cancel(self) -> None:
        from tuner.canary import stop_all_canaries

        self.cancelled.set()
        self._run_stop.set()  # first, so the killed canary is not recorded as a failed trial
        stop_all_canaries()


class _TuneCollector:
    """``tuner_tune_*`` series from the tuning window's counters, read at scrape time."""

    def __init__(self, tuning: TuningWindow) -> None:
        self.tuning = tuning

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.tuning.counters.snapshot()
        trials = CounterMetricFamily(
            "tuner_tune_trials", "Tuning trials finished, by state.", labels=["state"]
        )
        for state, n in sorted(snap["trials_total"].items()):
            trials.add_metric([state], n)
        yield trials
        yield GaugeMetricFamily(
            "tuner_tune_running_trials", "Tuning trials in flight.", value=snap["running"]
        )
        best = snap["best_objective"]
        yield GaugeMetricFamily(
            "tuner_tune_best_objective",
            "Best objective among feasible trials so far (NaN before the first).",
            value=math.nan if best is None else best,
        )
        runs = CounterMetricFamily(
            "tuner_tune_runs", "Tuning-window searches, by result.", labels=["result"]
        )
        for result, n in sorted(self.tuning.runs.items()):
            runs.add_metric([result], n)
        yield runs
        if self.tuning.last_run is not None:
            yield GaugeMetricFamily(
                "tuner_tune_last_run_timestamp_seconds",
                "When the last tuning-window search ended.",
                value=self.tuning.last_run,
            )
