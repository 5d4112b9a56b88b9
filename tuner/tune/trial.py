"""One trial: start a canary, drive the load, scrape it, read its server-side signals, stop it.

``run_trial`` starts a canary (``tuner.canary``, held as the ``Canary`` Protocol), drives the
load (``tuner.load``), and meanwhile ``CanaryScraper`` scrapes the canary's ``/metrics``
into the search's store through the same ingest step as the daemon (``tuner.ingest``:
samples, ``up``, ``scrape_duration_seconds``, ``scrape_samples_scraped``, stale markers, the
retry buffer), as target ``instance="trial-N"``. ``server_signals`` then reads the canary's
server-side signals over the load window with the production signal definitions
(``tuner.tune.signals.TRIAL_SIGNALS``) and its own latency histograms (TTFT, ITL, queue time:
``tuner.tune.signals.TRIAL_LATENCY_SIGNALS``) beside the load client's per-request figures, the
canary is stopped (always), and the trial is scored (``tuner.tune.records.score_trial``). The
per-request records go to ``logs/trial-N-requests.csv``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.canary import Canary, CanaryBackend, CanaryHandle, KubernetesCanary, LocalCanary
from tuner.config import Target
from tuner.errors import CanaryFailed, TunerError
from tuner.httpconfig import health_probe
from tuner.ingest import Ingest
from tuner.load import (
    LoadResult,
    LoadSpec,
    LoadSummary,
    RequestRecord,
    records_csv,
    run_load_sync,
    summarize,
)
from tuner.load.driver import ShouldStop
from tuner.promql import Engine
from tuner.scrape import scrape_target
from tuner.signals import (
    KV_CAPACITY_TOKENS,
    WINDOW_TOTALS,
    kv_capacity_from_info,
    per_thousand_requests,
    render_signal,
)
from tuner.store import Store
from tuner.tune.config import TuneConfig, TuneSLO
from tuner.tune.cpus import CpuPlan, cpu_list
from tuner.tune.early_stop import EarlyStop
from tuner.tune.planner import Step
from tuner.tune.records import (
    FAILED_LOSS,
    Measurement,
    Trial,
    TrialState,
    objective_value,
    score_trial,
)
from tuner.tune.signals import TRIAL_LATENCY_SIGNALS, TRIAL_SIGNALS

if TYPE_CHECKING:
    import httpx

SCRAPE_TIMEOUT = 5.0
#: The server's counter of generated tokens (early stopping reads its rate during the load).
GENERATED_TOKENS = "vllm:generation_tokens_total"
SCRAPE_MAX_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class TrialContext:
    """What ``run_trial`` needs besides the step: config, store, logs dir, an HTTP client.

    ``ingest`` (made from ``store``) is shared by every trial of the search, so its retry
    buffer outlives one trial.
    """

    cfg: TuneConfig
    store: Store
    logs: Path
    client: httpx.Client
    load_spec: LoadSpec
    stop: threading.Event
    #: Where canaries run (``tuner.tune.cpus``); the default pins nothing.
    cpu_plan: CpuPlan = field(default_factory=CpuPlan)
    ingest: Ingest = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ingest", Ingest(self.store))


def canary_for(ctx: TrialContext, number: int, flags: Mapping[str, Any], slot: int) -> Canary:
    """The canary of trial ``number`` with ``flags``, on the configured backend."""
    cfg = ctx.cfg
    env = dict(cfg.launch.env)
    cores = ctx.cpu_plan.canary_cores(slot)
    if cfg.canary.omp_binds:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cfg.canary.omp_binds[slot % len(cfg.canary.omp_binds)]
    elif cores and "VLLM_CPU_OMP_THREADS_BIND" not in env:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(cores)
    spec = replace(cfg.launch, flags=dict(flags), env=env, cpus=cores)
    log_path = ctx.logs / f"trial-{number:04d}.log"
    if cfg.canary.backend is CanaryBackend.KUBERNETES:
        assert cfg.canary.pod_template is not None
        return KubernetesCanary(
            spec,
            cfg.canary.pod_template,
            f"tuner-canary-{number:04d}-{os.getpid()}",
            log_path,
            namespace=cfg.canary.namespace,
            health_timeout=cfg.canary.health_timeout,
            http_ok=health_probe(cfg.canary.http),
            scheme=cfg.canary.scheme,
        )
    return LocalCanary(spec, log_path, health_timeout=cfg.canary.health_timeout)


class CanaryScraper:
    """Scrapes a canary's /metrics into the store every ``interval`` seconds until finished.

    Each scrape goes through ``ingest`` like a production target's; when the trial's window
    ends the canary is retired (stale markers for all its series). ``scrapes`` counts the
    scrapes that answered; ``error`` is the last scrape or store error.
    """

    def __init__(self, client: httpx.Client, ingest: Ingest, url: str, instance: str,
                 interval: float) -> None:
        self.client = client
        self.ingest = ingest
        self.target = Target(name=instance, url=url, kind="vllm")
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"scrape-{instance}", daemon=True)
        self.scrapes = 0
        self.error = ""
        #: (scrape time, the server's generated tokens so far) per answered scrape.
        self.generated: list[tuple[float, float]] = []

    def scrape_once(self) -> None:
        outcome = scrape_target(self.client, self.target, SCRAPE_TIMEOUT, SCRAPE_MAX_BYTES)
        report = self.ingest.ingest([outcome])
        if outcome.up:
            self.scrapes += 1
            tokens = [x.value for x in outcome.samples if x.name == GENERATED_TOKENS]
            if tokens:
                self.generated.append((outcome.ts, sum(tokens)))
        else:
            self.error = outcome.error
        if report.failures:
            self.error = report.failures[-1].message

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.scrape_once()

    def start(self) -> None:
        self.scrape_once()
        self._thread.start()

    def finish(self) -> None:
        """A last scrape, then the canary leaves: its series go stale (``Ingest.retire``)."""
        self._stop.set()
        self._thread.join()
        self.scrape_once()
        report = self.ingest.retire(self.target.name, time.time())
        if report.failures:
            self.error = report.failures[-1].message


def kv_unobserved(running_peak: float, generated_tokens: float) -> bool:
    """Gauges are sampled: a server that generated tokens while no scrape saw a request running
    was never caught mid-step (vLLM CPU 0.32 on a saturated host reads 0 for running and KV usage
    throughout a load), so its KV gauges say nothing: unknown, not 0."""
    return running_peak == 0 and generated_tokens > 0


def server_signals(store: Store, instance: str, start_ms: int, end_ms: int) -> dict[str, float]:
    """Server-side signals of one canary over its load window, from its scraped samples.

    The production signal definitions (``tuner.tune.signals.TRIAL_SIGNALS``: KV usage with its V0
    fallback, window totals), rendered for ``instance="trial-N"`` over the window and evaluated
    by the in-process engine (``tuner.promql.Engine``) over the search's store.
    """
    engine = Engine(store)
    window = f"{max(1, math.ceil((end_ms - start_ms) / 1000))}s"
    selector = f'{{instance="{instance}"}}'

    def query(expr: str) -> float:
        vector = engine.instant(expr, end_ms / 1000.0).vector
        return float(vector[0].value) if vector else math.nan

    v = {
        sig.name: query(render_signal(sig, selector, by="instance", window=window))
        for sig in TRIAL_SIGNALS
    }
    latency = {
        sig.name: query(render_signal(sig, selector, by="instance", window=window))
        for sig in TRIAL_LATENCY_SIGNALS
    }
    drafts = v["spec_draft_tokens"]
    blind = kv_unobserved(v["running_peak"], v["output_tokens"])
    # what the server counted as refused (vLLM 0.29+; NaN before): checks the client's count
    refused = next(sig for sig in WINDOW_TOTALS if sig.name == "admission_rejections")
    server_rejections = query(render_signal(refused, selector, by="instance", window=window))
    # the info series at mid-window: at its end the retired canary's series are stale
    info = engine.instant(render_signal(KV_CAPACITY_TOKENS, selector, by="instance"),
                          (start_ms + end_ms) / 2000.0).vector
    sets = [e.labels for e in info]
    capacity = kv_capacity_from_info(sets) if sets else None
    blocks = [float(b) for s in sets if (b := s.get("block_size", "")).isdigit()]
    return {
        **latency,
        "kv_capacity_tokens": math.nan if capacity is None else capacity,
        "kv_block_size": max(blocks) if blocks else math.nan,
        "preemptions": v["preemptions"],
        "preemptions_per_1k_requests": per_thousand_requests(v["preemptions"], v["requests"])
        if not math.isnan(v["requests"])
        else math.nan,
        "kv_usage_max": math.nan if blind else v["kv_cache_usage"],
        "kv_usage_mean": math.nan if blind else v["kv_cache_usage_mean"],
        "running_peak": v["running_peak"],
        "spec_decode_acceptance": (
            v["spec_accepted_tokens"] / drafts if drafts and drafts > 0 else math.nan
        ),
        "server_generation_tokens": v["output_tokens"],
        "server_rejections": server_rejections,
    }


def goodput(result: LoadResult, slo: TuneSLO, duration: float) -> float:
    """Output tok/s of the requests that met the per-request TTFT and ITL thresholds."""
    if duration <= 0:
        return 0.0
    good = 0
    for rec in result.records:
        if not rec.ok:
            continue
        if slo.ttft_p99_seconds is not None and rec.ttft > slo.ttft_p99_seconds:
            continue
        if slo.itl_p99_seconds is not None and rec.itls and max(rec.itls) > slo.itl_p99_seconds:
            continue
        good += rec.output_tokens
    return good / duration


def measurement_from(
    summary: LoadSummary, signals: Mapping[str, float], good: float
) -> Measurement:
    extra: dict[str, Any] = {k: float(v) for k, v in signals.items()}
    client = {f.name: getattr(summary, f.name) for f in fields(LoadSummary)}
    return Measurement(**client, goodput_tok_per_s=good, **extra)


@dataclass
class TrialRun:
    """What measuring one canary gave: a failure reason (or ""), its log, the measurement."""

    notes: list[str]
    reason: str = ""
    log_tail: str = ""
    measurement: Measurement | None = None
    stopped_early: bool = False
    saved_s: float = 0.0  # with stopped_early: the seconds of the load window not spent


def run_trial(
    ctx: TrialContext, number: int, step: Step, reference: float | None, slot: int = 0
) -> Trial | None:
    """Run one step on a fresh canary and return the finished trial.

    Returns None when the search was interrupted while the trial ran (it is not recorded,
    so a resumed search runs it again). The canary is always stopped.
    """
    cfg = ctx.cfg
    started = time.time()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if step.flags is None:
        return Trial(number, step.kind, dict(step.point), {}, TrialState.REJECTED, FAILED_LOSS,
                     reason=step.reject_reason, notes=step.notes, started=started,
                     ended=time.time(), timings={"total_s": time.perf_counter() - t0})
    canary = canary_for(ctx, number, step.flags, slot)
    try:
        run = _measure(ctx, canary, number, step, timings, t0)
    finally:
        t_stop = time.perf_counter()
        canary.stop()
        timings["stop_s"] = time.perf_counter() - t_stop
    if run is None or ctx.stop.is_set():
        return None
    violations: dict[str, float] = {}
    value: float | None
    if run.reason:
        state, value, loss = TrialState.FAILED, None, FAILED_LOSS
        if run.measurement is not None:  # ran, but too many errors: failed, keep the numbers
            value = objective_value(run.measurement, cfg.objective)
    else:
        state, value, loss, violations = score_trial(
            run.measurement, cfg.objective, cfg.slo, reference
        )
        if run.stopped_early and run.measurement is not None:
            state = TrialState.STOPPED
    ended = time.time()
    timings["total_s"] = time.perf_counter() - t0
    return Trial(number, step.kind, dict(step.point), dict(step.flags), state, loss, value,
                 run.reason, run.log_tail, tuple(run.notes), run.measurement, started, ended,
                 timings, violations, measures_baseline=step.measures_baseline)


def _measure(ctx: TrialContext, canary: Canary, number: int, step: Step,
             timings: dict[str, float], t0: float) -> TrialRun | None:
    """Start the canary, load and scrape it, read its signals (None: interrupted)."""
    run = TrialRun(list(step.notes))
    try:
        handle = canary.start()
    except CanaryFailed as exc:
        timings["start_s"] = time.perf_counter() - t0
        # The canary's own account (e.g. which flag vLLM refused) ends the tail, where the
        # report's excerpt of a failed trial looks.
        run.reason, run.log_tail = exc.reason, f"{exc.log_tail}\ntuner: {exc.message}".lstrip()
        return run
    timings["start_s"] = time.perf_counter() - t0
    if ctx.stop.is_set():
        return None
    return measure_canary(ctx, canary, handle, number, run, timings, step.early_stop)


def measure_canary(ctx: TrialContext, canary: Canary, handle: CanaryHandle, number: int,
                   run: TrialRun, timings: dict[str, float],
                   early_stop: EarlyStop | None = None) -> TrialRun | None:
    """Load and scrape a running canary as trial ``number``, then read its signals into
    ``run`` (None: interrupted). The caller starts and stops the canary. With an
    ``early_stop`` rule the load stops once the run is worse than the incumbent beyond the
    noise (``run.stopped_early``; ``timings["saved_s"]``: the window not spent)."""
    cfg = ctx.cfg
    instance = f"trial-{number}"
    scraper = CanaryScraper(ctx.client, ctx.ingest, handle.metrics_url, instance,
                            cfg.canary.scrape_interval)
    t_scr = time.perf_counter()
    window_start = int(time.time() * 1000)
    scraper.start()
    scrape_s = time.perf_counter() - t_scr
    t_load = time.perf_counter()
    result: LoadResult | None
    should_stop = _stopper(early_stop, ctx.load_spec, scraper, run)
    try:
        result = run_load_sync(handle.url, cfg.launch.served_model_name or cfg.launch.model,
                               ctx.load_spec, should_stop=should_stop,
                               http_config=cfg.canary.http)
        load_error = ""
    except TunerError as exc:
        result, load_error = None, str(exc)
    timings["load_s"] = time.perf_counter() - t_load
    if run.stopped_early and result is not None:
        timings["saved_s"] = run.saved_s  # the window not spent (in-flight requests still end)
    t_scr = time.perf_counter()
    scraper.finish()
    window_end = int(time.time() * 1000)
    timings["scrape_s"] = scrape_s + time.perf_counter() - t_scr
    if ctx.stop.is_set():
        return None
    t_sig = time.perf_counter()
    if result is None:
        run.reason, run.log_tail = "load_error", load_error + "\n" + canary.log_tail()
    else:
        _evaluate(ctx, canary, run, result, instance, window_start, window_end)
        _write_requests(ctx.logs / f"trial-{number:04d}-requests.csv", result, run)
    if scraper.error and scraper.scrapes < 2:
        run.notes.append(f"server signals incomplete: {scraper.error}")
    timings["signals_s"] = time.perf_counter() - t_sig
    return run


def _stopper(rule: EarlyStop | None, spec: LoadSpec, scraper: CanaryScraper, run: TrialRun
             ) -> ShouldStop | None:
    """The load's ``should_stop`` for an early-stop rule (closed loop only: an open loop's
    token rate is the load's arrival rate, not the server's)."""
    if rule is None or spec.request_rate is not None:
        return None
    start: list[float] = []

    def should_stop(_records: Sequence[RequestRecord], now: float) -> bool:
        if not start:
            start.append(now)
        elapsed = now - start[0]
        if elapsed >= spec.duration:  # the window is spent: stopping now saves nothing
            return False
        if run.stopped_early or not rule.should_stop(scraper.generated, start[0],
                                                     spec.duration):
            return False
        run.stopped_early = True
        run.saved_s = spec.duration - elapsed
        run.notes.append(
            f"stopped early after {elapsed:.1f} s of {spec.duration:g} s: the server's token "
            f"rate was below {rule.threshold(elapsed, spec.duration):,.0f} tok/s, worse than "
            f"the incumbent's {rule.incumbent:,.0f} beyond the noise "
            f"({rule.noise * 100:.0f}% per run)")
        return True

    return should_stop


def _write_requests(path: Path, result: LoadResult, run: TrialRun) -> None:
    """The per-request figures of a trial's load run, as CSV beside its log."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(records_csv(result.records))
    except OSError as exc:
        run.notes.append(f"per-request figures not written to {path}: {exc.strerror or exc}")


def _evaluate(ctx: TrialContext, canary: Canary, run: TrialRun, result: LoadResult, instance: str,
              window_start: int, window_end: int) -> None:
    """The measurement of a load run; a run with too many errors fails (``load_errors``).

    Rejections (503s from admission control) are the server shedding load, not a broken
    run: they count in the measurement's ``error_rate`` (checked against the SLO's error
    rate when scoring) but not against ``load.max_error_rate``; a run where nothing
    succeeded fails all the same.
    """
    cfg = ctx.cfg
    summary = summarize(result)
    try:
        signals = server_signals(ctx.store, instance, window_start, window_end)
    except TunerError as exc:
        signals = {}
        run.notes.append(f"server signals unavailable: {exc}")
    if kv_unobserved(signals.get("running_peak", math.nan),
                     signals.get("server_generation_tokens", math.nan)):
        run.notes.append(
            "KV usage unknown: the server generated tokens but no scrape of the window saw a "
            "request running (its gauges were never read mid-step; a saturated host answers "
            "/metrics between steps)")
    m = measurement_from(summary, signals, goodput(result, cfg.slo, float(summary.duration or 0)))
    run.measurement = m
    succeeded = m.requests - m.errors - m.rejections
    if m.requests == 0 or m.errors / m.requests > cfg.max_error_rate or succeeded == 0:
        alive = canary.alive()
        run.reason = "load_errors"
        run.log_tail = (
            f"{m.errors}/{m.requests} requests failed and {m.rejections}/{m.requests} were "
            f"rejected with 503 (errors {m.errors / max(1, m.requests):.0%}, "
            f"{cfg.max_error_rate:.0%} allowed; {succeeded} succeeded)"
            + ("" if alive else "; the server exited during the load")
            + "\n"
            + canary.log_tail()
        )
        run.measurement = m if alive else None
