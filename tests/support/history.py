"""Synthetic vLLM + DCGM histories with known problems, for suggest tests and benchmarks.

A ``Scenario`` describes one day (or any span) of one vLLM server and its GPUs: quiet nights,
a busy day, a preemption storm (KV cache full, requests waiting, TTFT over the SLO), low
speculative-decoding acceptance, an over-provisioned day, a restart with different flags,
counter resets, old (V0) metric names, missing metric families. ``build_points`` turns it
into ``(name, labels, ts_ms, value)`` points with the exact names, labels and bucket bounds
vLLM and DCGM export, deterministically (expected counts, no random noise), so the same
points go into the embedded store (``write_store``/``build_store``) and into a real
Prometheus (``tests.support.prometheus``'s ``prometheus_factory(points=...)``, which
backfills with ``promtool tsdb create-blocks-from openmetrics``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuner.config import ITL_BUCKETS, TTFT_BUCKETS
from tuner.config import REQUEST_BUCKETS as REQ_BUCKETS

Labels = tuple[tuple[str, str], ...]
Point = tuple[str, Labels, int, float]


def tokens_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's build_1_2_5_buckets(max_model_len)."""
    out: list[float] = []
    exp = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_model_len:
                return tuple(out)
            out.append(float(v))
        exp += 1


@dataclass(frozen=True)
class Regime:
    """Steady behaviour of the server for a stretch of time."""

    req_rate: float  # requests/s
    kv: float  # KV usage 0..1
    waiting: float
    running: float
    preempt_rate: float  # preemptions/s
    ttft_median: float
    itl_median: float
    gpu_util: float  # %
    prompt_median: float = 300.0
    output_median: float = 150.0


QUIET = Regime(0.2, 0.05, 0, 1, 0.0, 0.05, 0.02, 8.0)
BUSY = Regime(5.0, 0.55, 0, 24, 0.0, 0.08, 0.02, 65.0)
STORM = Regime(12.0, 0.985, 30, 140, 5.0, 1.3, 0.03, 96.0)
IDLE_DAY = Regime(0.6, 0.08, 0, 3, 0.0, 0.05, 0.02, 20.0)
LONG_PREFILL = Regime(5.0, 0.6, 0, 24, 0.0, 0.09, 0.09, 75.0, prompt_median=2500.0)
HEALTHY = Regime(3.0, 0.45, 0, 14, 0.0, 0.08, 0.02, 70.0)


@dataclass(frozen=True)
class Scenario:
    """One server's history. Hours are hours since ``start`` (start is midnight UTC)."""

    start: float
    hours: float = 24.0
    step: float = 15.0
    instance: str = "vllm-0"
    model: str = "tiny"
    job: str = "vllm"
    quiet_nights: tuple[float, float] | None = (0.0, 7.0)
    day: Regime = BUSY
    storm: tuple[float, float] | None = (14.0, 16.0)
    extra_regimes: tuple[tuple[float, float, Regime], ...] = ()
    spec_k: int = 3  # 0 = speculative decoding off
    spec_mean_len: float = 1.08
    prefix_hit_rate: float = 0.35
    gpus: int = 8
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks: int = 27000
    max_model_len: int = 8192
    fb_total_mib: float = 81559.0
    restart_at: float | None = None  # hour; counters reset, process start changes
    restart_gpu_memory_utilization: float | None = None  # new flags after the restart
    v0_names: bool = False
    omit: frozenset[str] = frozenset()  # metric name prefixes to leave out
    extra_labels: tuple[tuple[str, str], ...] = ()
    dcgm_extra_labels: tuple[tuple[str, str], ...] = ()
    #: Admission control: (reason, share of the finished-request rate refused for it).
    reject_reasons: tuple[tuple[str, float], ...] = ()

    @property
    def end(self) -> float:
        return self.start + self.hours * 3600.0

    def grid(self) -> np.ndarray:
        return self.start + np.arange(0.0, self.hours * 3600.0, self.step)


def day_start(now: float) -> float:
    """Midnight UTC starting a full day that ended at least 6 hours before ``now``.

    Prometheus backfill needs data well in the past (blocks must not overlap its head).
    """
    return math.floor((now - 6 * 3600.0) / 86400.0) * 86400.0 - 86400.0


def _regimes(sc: Scenario, hours: np.ndarray) -> list[Regime]:
    out = []
    for h in hours:
        hod = h % 24.0
        r = sc.day
        if sc.quiet_nights and sc.quiet_nights[0] <= hod < sc.quiet_nights[1]:
            r = QUIET
        for a, b, reg in sc.extra_regimes:
            if a <= h < b:
                r = reg
        if sc.storm and sc.storm[0] <= h < sc.storm[1]:
            r = STORM
        out.append(r)
    return out


def _lognorm_cdf(x: np.ndarray, median: np.ndarray, sigma: float) -> np.ndarray:
    z = (np.log(x) - np.log(median)) / (sigma * math.sqrt(2.0))
    return 0.5 * (1.0 + np.vectorize(math.erf)(z))


def build_points(sc: Scenario) -> Iterator[Point]:
    """Every sample of the scenario, series by series, timestamps ascending in each series."""
    t = sc.grid()
    n = len(t)
    ts_ms = np.rint(t * 1000).astype(np.int64)
    hours = (t - sc.start) / 3600.0
    regs = _regimes(sc, hours)

    def arr(attr: str) -> np.ndarray:
        return np.array([getattr(r, attr) for r in regs], dtype=np.float64)

    rate, kv, waiting, running = arr("req_rate"), arr("kv"), arr("waiting"), arr("running")
    preempt, ttft_med, itl_med, util = (
        arr("preempt_rate"), arr("ttft_median"), arr("itl_median"), arr("gpu_util"))
    prompt_med, out_med = arr("prompt_median"), arr("output_median")
    # a little deterministic wobble so gauges are not flat lines
    wobble = 0.02 * np.sin(np.arange(n) / 7.0)
    kv = np.clip(kv + wobble * (kv < 0.95), 0.0, 1.0)
    util = np.clip(util * (1 + wobble), 0.0, 100.0)

    restart_idx = None
    if sc.restart_at is not None:
        restart_idx = int(np.searchsorted(hours, sc.restart_at))

    # counters: cumulative sums that restart from 0 at the restart
    def counter(per_s: np.ndarray) -> np.ndarray:
        inc = per_s * sc.step
        c = np.cumsum(inc)
        if restart_idx is not None and 0 < restart_idx < n:
            c[restart_idx:] = c[restart_idx:] - c[restart_idx - 1]
        return c

    base = (("engine", "0"), ("instance", sc.instance), ("job", sc.job),
            ("model_name", sc.model), *sc.extra_labels)
    base = tuple(sorted(base))

    def lab(*extra: tuple[str, str]) -> Labels:
        return tuple(sorted(base + extra))

    base_no_engine = tuple(kv for kv in base if kv[0] != "engine")

    def name(current: str, old: str | None = None) -> str:
        return old if (sc.v0_names and old) else current

    def skip(metric: str) -> bool:
        return any(metric.startswith(p) for p in sc.omit)

    series: list[tuple[str, Labels, np.ndarray]] = []

    def add(metric: str, labels: Labels, values: np.ndarray) -> None:
        if not skip(metric):
            series.append((metric, labels, values))

    add("vllm:num_requests_running", lab(), running)
    add("vllm:num_requests_waiting", lab(), waiting)
    add(name("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), lab(), kv)
    gen_tps = rate * out_med * 1.05
    prompt_tps = rate * prompt_med * 1.1
    add("vllm:prompt_tokens_total", lab(), counter(prompt_tps))
    add("vllm:generation_tokens_total", lab(), counter(gen_tps))
    add("vllm:request_success_total", lab(("finished_reason", "stop")), counter(rate * 0.9))
    add("vllm:request_success_total", lab(("finished_reason", "length")), counter(rate * 0.1))
    add("vllm:num_preemptions_total", lab(), counter(preempt))
    # the API server's counters: no engine or model_name label (as vLLM 0.32 exports them)
    api = tuple(sorted(kv for kv in base if kv[0] not in ("engine", "model_name")))
    refused = np.zeros_like(rate)
    for reason, share in sc.reject_reasons:
        refused = refused + rate * share
        add("vllm:admission_rejections_total",
            tuple(sorted((*base_no_engine, ("reason", reason)))), counter(rate * share))
    http = (("handler", "/v1/completions"), ("method", "POST"))
    add("http_requests_total", tuple(sorted(api + http + (("status", "2xx"),))),
        counter(rate))
    if sc.reject_reasons:
        add("http_requests_total", tuple(sorted(api + http + (("status", "5xx"),))),
            counter(refused))
    if sc.prefix_hit_rate > 0:
        q = prompt_tps
        add(name("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
            lab(), counter(q))
        add(name("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
            lab(), counter(q * sc.prefix_hit_rate))
    if sc.spec_k > 0:
        drafts = gen_tps / sc.spec_mean_len
        accepted = drafts * (sc.spec_mean_len - 1.0)
        add("vllm:spec_decode_num_drafts_total", lab(), counter(drafts))
        add("vllm:spec_decode_num_draft_tokens_total", lab(), counter(drafts * sc.spec_k))
        add("vllm:spec_decode_num_accepted_tokens_total", lab(), counter(accepted))
        for pos in range(sc.spec_k):
            add("vllm:spec_decode_num_accepted_tokens_per_pos_total",
                lab(("position", str(pos))), counter(accepted * (0.7 ** pos) / 1.7))

    def histogram(metric: str, bounds: tuple[float, ...], median: np.ndarray, sigma: float,
                  per_s: np.ndarray) -> None:
        if skip(metric):
            return
        for le in bounds:
            frac = _lognorm_cdf(np.full(n, le), median, sigma)
            add(f"{metric}_bucket", lab(("le", _fmt_le(le))), counter(per_s * frac))
        add(f"{metric}_bucket", lab(("le", "+Inf")), counter(per_s))
        add(f"{metric}_count", lab(), counter(per_s))
        mean = median * math.exp(sigma**2 / 2)
        add(f"{metric}_sum", lab(), counter(per_s * mean))

    histogram("vllm:time_to_first_token_seconds", TTFT_BUCKETS, ttft_med, 0.5, rate)
    histogram(name("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
              ITL_BUCKETS, itl_med, 0.4, gen_tps)
    histogram("vllm:e2e_request_latency_seconds", REQ_BUCKETS,
              ttft_med + itl_med * out_med, 0.5, rate)
    histogram("vllm:request_queue_time_seconds", REQ_BUCKETS,
              np.maximum(ttft_med * 0.5, 0.01), 0.6, rate)
    tb = tokens_buckets(sc.max_model_len)
    histogram("vllm:request_prompt_tokens", tb, prompt_med, 0.6, rate)
    histogram("vllm:request_generation_tokens", tb, out_med, 0.5, rate)

    # configuration and process identity, split at the restart
    gmu = np.full(n, sc.gpu_memory_utilization)
    start_time = np.full(n, sc.start - 3600.0)
    if restart_idx is not None and 0 < restart_idx < n:
        start_time[restart_idx:] = t[restart_idx] - 1.0
        if sc.restart_gpu_memory_utilization is not None:
            gmu[restart_idx:] = sc.restart_gpu_memory_utilization
    proc_labels = tuple(sorted((("instance", sc.instance), ("job", sc.job), *sc.extra_labels)))
    add("process_start_time_seconds", proc_labels, start_time)
    for value in sorted(set(gmu.tolist())):
        mask = gmu == value
        blocks = int(sc.num_gpu_blocks * value / sc.gpu_memory_utilization)
        cfg = lab(("block_size", "16"), ("cache_dtype", "auto"),
                  ("enable_prefix_caching", "True"), ("gpu_memory_utilization", f"{value:g}"),
                  ("num_gpu_blocks", str(blocks)), ("swap_space", "4"))
        if not skip("vllm:cache_config_info"):
            series.append(("vllm:cache_config_info", cfg, np.where(mask, 1.0, np.nan)))

    if sc.gpus:
        used_frac = np.clip(gmu + 0.01, 0.0, 1.0)
        for g in range(sc.gpus):
            gl = tuple(sorted((
                ("job", "dcgm"), ("instance", "dcgm-0"), ("gpu", str(g)),
                ("UUID", f"GPU-{g:08d}-0000-0000-0000-000000000000"),
                ("device", f"nvidia{g}"), ("modelName", "NVIDIA H100 80GB HBM3"),
                ("Hostname", "node-1"), ("pci_bus_id", f"00000000:{g + 16:02X}:00.0"),
                *sc.dcgm_extra_labels)))
            add("DCGM_FI_DEV_GPU_UTIL", gl, np.rint(util))
            add("DCGM_FI_DEV_FB_USED", gl, np.rint(sc.fb_total_mib * used_frac))
            add("DCGM_FI_DEV_FB_FREE", gl, np.rint(sc.fb_total_mib * (1 - used_frac)))
            add("DCGM_FI_DEV_GPU_TEMP", gl, 40 + util * 0.3)

    # a restart leaves a one-scrape gap, as a real server does while it comes back
    keep = np.ones(n, dtype=bool)
    if restart_idx is not None and 0 < restart_idx < n:
        keep[restart_idx - 1] = False
    for metric, labels, values in series:
        ok = keep & ~np.isnan(values)
        for ts, v in zip(ts_ms[ok].tolist(), values[ok].tolist(), strict=True):
            yield (metric, labels, ts, v)


def _fmt_le(le: float) -> str:
    return f"{le:g}" if le < 1e6 else repr(le)


def write_store(store: Any, points: Iterator[Point], batch: int = 200_000) -> int:
    """Append points to a ``tuner.store.Store`` in large transactions; returns the count."""
    total = 0
    chunk: list[Point] = []
    for p in points:
        chunk.append(p)
        if len(chunk) >= batch:
            total += store.append_points(chunk)
            chunk = []
    if chunk:
        total += store.append_points(chunk)
    return total


def build_store(path: Path, *scenarios: Scenario, retention: float = 30 * 86400.0) -> Any:
    """A fresh ``tuner.store.Store`` at ``path`` holding every scenario's points."""
    from tuner.store import Store

    store = Store(path, retention=retention)
    for sc in scenarios:
        write_store(store, build_points(sc))
    return store
