"""The search loop and its log: ``run_tune``, ``TrialLog`` (``OUT/tune.db``), resume, progress.

``run_tune`` checks the output directory against the config (``prepare_out``: a directory
holding another search is refused, ``--resume`` continues one), re-teaches the optimizer the
finished trials, and then asks the planner for steps and runs them (``run_trial``), one at a
time or ``--parallel`` at once, persisting each trial when it ends. SIGTERM/SIGINT stop
every canary, drop the trial in flight (a resume runs it again) and raise ``TuneInterrupted``.
Observers (``TuneObserver``: the CLI's live table, the daemon's ``TuneCounters``) see each
trial start and finish. The outcome goes to ``tuner.report`` for the result files.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from tuner.canary import CanaryBackend, stop_all_canaries
from tuner.errors import StoreError, TuneError, TuneInterrupted
from tuner.promql import Engine
from tuner.scrape import make_client
from tuner.store import Store
from tuner.tune.config import Objective, TuneConfig
from tuner.tune.cpus import (
    CpuMode,
    CpuPlan,
    current_cpus,
    plan_cpus,
    probe_plan,
    set_process_cpus,
)
from tuner.tune.fingerprint import tuned_workload
from tuner.tune.optimizer import make_optimizer, tell_history, told_history
from tuner.tune.parse_load import build_load_spec
from tuner.tune.planner import Step, TuneOutcome, plan_steps, planned_total, summarize_search
from tuner.tune.records import Trial, TrialKind, TrialState
from tuner.tune.trial import TrialContext, run_trial

TRIAL_DOC = "tune_trial"
META_DOC = "tune_meta"


# ----------------------------------------------------------------------------- progress


class TuneObserver(Protocol):
    """Receives progress; the CLI shows it live (``tuner.report``), the daemon publishes it."""

    def trial_started(self, number: int, step: Step) -> None: ...

    def trial_finished(self, trial: Trial, planned: int) -> None: ...

    def search_note(self, text: str) -> None:
        """Something about the whole search, said once (e.g. how CPUs are pinned)."""


class TuneCounters:
    """Thread-safe progress counters for ``/metrics``: ``tuner_tune_trials_total{state}`` and
    ``tuner_tune_best_objective``. Register an instance as an observer; read ``snapshot()``."""

    def __init__(self, objective: Objective | None = None) -> None:
        self._lock = threading.Lock()
        self.objective = objective or Objective()
        self.trials_total: dict[str, int] = {str(s): 0 for s in TrialState}
        self.running = 0
        self.best_objective: float | None = None
        self.notes: list[str] = []

    def trial_started(self, number: int, step: Step) -> None:
        with self._lock:
            self.running += 1

    def search_note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)

    def trial_finished(self, trial: Trial, planned: int) -> None:
        with self._lock:
            self.running = max(0, self.running - 1)
            state = str(trial.state)
            self.trials_total[state] = self.trials_total.get(state, 0) + 1
            if trial.state is TrialState.OK and trial.objective is not None:
                better = (
                    self.best_objective is None
                    or (trial.objective > self.best_objective) == self.objective.higher_is_better
                )
                if better:
                    self.best_objective = trial.objective

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "trials_total": dict(self.trials_total),
                "running": self.running,
                "best_objective": self.best_objective,
            }


# ----------------------------------------------------------------------------- persistence


class TrialLog:
    """Trials of one search in ``OUT/tune.db`` (``tuner.store`` documents), written as they end.

    The same store receives the canaries' scraped series (``instance="trial-N"``).
    """

    def __init__(self, out: Path) -> None:
        self.path = out / "tune.db"
        try:
            self.store = Store(self.path, retention=3650 * 86400.0, max_bytes=1 << 40)
        except StoreError as exc:
            raise TuneError(f"cannot open the search store: {exc}") from None

    def close(self) -> None:
        self.store.close()

    def trials(self) -> list[Trial]:
        """The persisted trials, oldest first; TuneError naming a document it cannot read."""
        out = []
        for key, _, body in self.store.documents(TRIAL_DOC):
            try:
                out.append(Trial.from_json(body))
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise TuneError(
                    f"{self.path}: trial document {key} is not a trial this tuner can read "
                    f"({type(exc).__name__}: {exc}); nothing was changed"
                ) from None
        return out

    def meta(self) -> dict[str, Any] | None:
        docs = self.store.documents(META_DOC)
        return dict(docs[0][2]) if docs else None

    def put_meta(self, body: Mapping[str, Any]) -> None:
        self._write(lambda: self.store.put_document(META_DOC, "search", dict(body)), "metadata")

    def put(self, trial: Trial) -> None:
        self._write(
            lambda: self.store.put_document(
                TRIAL_DOC, f"{trial.number:05d}", trial.to_json(), ts=trial.ended
            ),
            f"trial {trial.number}",
        )

    def _write(self, fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except StoreError as exc:
            full = "full" in str(exc).lower() or "disk" in str(exc).lower()
            hint = (
                " — the disk under it is full: free space, then rerun with --resume "
                "(trials persisted so far are kept)"
                if full
                else ""
            )
            raise TuneError(f"cannot persist {what} to {self.path}: {exc}{hint}") from None


def load_trials(out: Path) -> list[Trial]:
    """The persisted trials of a search directory (for reports and tests)."""
    log = TrialLog(out)
    try:
        return log.trials()
    finally:
        log.close()


def prepare_out(cfg: TuneConfig, log: TrialLog, resume: bool) -> list[Trial]:
    """Check the out dir against the config; returns the trials to continue from."""
    trials = log.trials()
    meta = log.meta()
    if trials and not resume:
        raise TuneError(
            f"{log.path} already holds {len(trials)} trials of a search; pass --resume to "
            "continue it, or choose another --out (nothing was changed)"
        )
    if meta is not None and meta.get("fingerprint") != cfg.fingerprint() and trials:
        raise TuneError(
            f"{log.path} holds a search with a different launch/space/objective/SLO/load "
            f"(fingerprint {meta.get('fingerprint')} != {cfg.fingerprint()}); resume it with "
            "its own config, or choose another --out (nothing was changed)"
        )
    return trials


# ----------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class TuneOptions:
    out: Path
    trials: int | None = None
    resume: bool = False
    parallel: int = 1


def _open_search(cfg: TuneConfig, options: TuneOptions) -> tuple[TuneConfig, TrialLog,
                                                                list[Trial]]:
    """Check the options, open the out dir's log; returns the config with the trial budget."""
    if options.parallel < 1:
        raise TuneError(f"--parallel must be at least 1, got {options.parallel}")
    try:
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuneError(
            f"cannot create output directory {options.out}: {exc.strerror or exc}"
        ) from None
    log = TrialLog(options.out)
    try:
        trials = prepare_out(cfg, log, options.resume)
        log.put_meta({"fingerprint": cfg.fingerprint(), "source": str(cfg.source or ""),
                      "model": cfg.launch.model})
        budget = options.trials if options.trials is not None else cfg.budget.trials
        if budget < 1:
            raise TuneError(f"--trials must be at least 1, got {budget}")
    except BaseException:
        log.close()
        raise
    return replace(cfg, budget=replace(cfg.budget, trials=budget)), log, trials


def search_cpu_plan(cfg: TuneConfig, parallel: int) -> CpuPlan:
    """Where this search's canaries and load client run (``tuner.tune.cpus``), probed."""
    if cfg.canary.backend is not CanaryBackend.LOCAL:
        if cfg.cpus.mode is CpuMode.OFF:
            return CpuPlan()
        return CpuPlan(note="cpus applies to local canaries; a pod's CPUs are its resources")
    return probe_plan(plan_cpus(cfg.cpus, current_cpus(), parallel))


def run_tune(
    cfg: TuneConfig,
    options: TuneOptions,
    observers: Sequence[TuneObserver] = (),
    install_signals: bool = True,
    stop: threading.Event | None = None,
) -> TuneOutcome:
    """Run (or resume) a search; persist each trial when it ends; return the outcome.

    On SIGTERM or SIGINT the running canaries are stopped, the trial in flight is dropped
    (a resume runs it again) and TuneInterrupted is raised. A caller that runs the search in a
    thread (the daemon's tuning window) passes ``stop`` and sets it (after stopping the
    canaries) to get the same outcome.
    """
    cfg, log, trials = _open_search(cfg, options)
    optimizer = make_optimizer(cfg)
    tell_history(optimizer, trials, cfg.space)

    stop = stop if stop is not None else threading.Event()
    received: list[int] = []
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()
        stop_all_canaries()
        raise TuneInterrupted(signum, f"interrupted by signal {signum}")

    if install_signals and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            previous[s] = signal.signal(s, on_signal)
    # scrapes the canaries, as the daemon does (with their TLS and credentials, if any)
    client = make_client(max_connections=8, http=cfg.canary.http)
    cpu_plan = search_cpu_plan(cfg, options.parallel)
    for ob in observers:
        ob.search_note(cpu_plan.describe())
    ctx = TrialContext(cfg, log.store, options.out / "logs", client, build_load_spec(cfg.load),
                       stop, cpu_plan)
    unpinned = current_cpus()
    if cpu_plan.load and (pin_error := set_process_cpus(cpu_plan.load)):
        for ob in observers:
            ob.search_note(f"{pin_error}; the load client runs unpinned")
    pool = ThreadPoolExecutor(max_workers=options.parallel) if options.parallel > 1 else None
    try:
        while steps := plan_steps(trials, cfg, optimizer, options.parallel,
                                  load=ctx.load_spec):
            planned = planned_total(cfg)
            base = next((t for t in trials if t.kind is TrialKind.BASELINE), None)
            reference = base.objective if base is not None and base.objective else None
            next_no = max((t.number for t in trials), default=-1) + 1
            numbered = list(enumerate(steps, start=next_no))
            for n, step in numbered:
                for ob in observers:
                    ob.trial_started(n, step)
            if pool is None:
                results = [run_trial(ctx, n, step, reference) for n, step in numbered]
            else:
                futures = [
                    pool.submit(run_trial, ctx, n, step, reference, slot)
                    for slot, (n, step) in enumerate(numbered)
                ]
                results = [f.result() for f in futures]
            finished = [t for t in results if t is not None]
            for t in finished:
                log.put(t)
                trials.append(t)
                for ob in observers:
                    ob.trial_finished(t, planned)
            xs, ys = told_history(finished, cfg.space)
            if xs:
                optimizer.tell(xs, ys)
            if stop.is_set():
                raise TuneInterrupted(received[0] if received else signal.SIGTERM, "interrupted")
        ctx.ingest.flush()
        workload = tuned_workload(Engine(reader=log.store), trials, ctx.load_spec, cfg.load)
    except TuneInterrupted as exc:
        stop.set()
        stop_all_canaries()
        raise TuneInterrupted(
            exc.exit_code - 128,
            f"interrupted: canaries stopped; {len(trials)} finished trials are in {log.path}; "
            "rerun with --resume to continue",
        ) from None
    finally:
        stop.set()
        stop_all_canaries()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        client.close()
        if cpu_plan.load:
            set_process_cpus(unpinned)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        ctx.ingest.flush()  # scrapes a locked store could not take yet
        log.close()
    return replace(summarize_search(cfg, trials, complete=True, load=ctx.load_spec),
                   workload=workload)
