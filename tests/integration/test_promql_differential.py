"""tuner.promql against a real Prometheus 2.42 on the same input series.

The same points (vLLM V1 names on one instance, V0 names on another, both on a third, the real
bucket bounds, DCGM gauges for 8 GPUs, a counter reset, a gap longer than the lookback, a
target that stops early, scrape jitter, NaN values and values near 1e308) go into the embedded store and, via
``promtool tsdb create-blocks-from openmetrics``, into a real Prometheus. Then every expression —
a battery covering each supported construct (subqueries, ``@``, ``offset`` and the functions
added for issue 11 included), every ``expr`` in rules/*.yaml and every query in
dashboards/*.json — is evaluated by both at several times; label sets must match exactly and
values within a relative 1e-9 (NaN equals NaN; an absolute 1e-12 is allowed around zero, where
Prometheus's Kahan sums and ours differ in the last bits). An expression Prometheus refuses at
evaluation time must make tuner.promql raise QueryError too.

Rule expressions that read recording-rule outputs are checked with each record name replaced by
its defining expression (in parentheses), so both engines see the same inputs; the recording
rules themselves are compared as range queries over the whole history.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.support.prometheus import PrometheusQueryError, PrometheusServer, start_prometheus
from tuner.errors import QueryError
from tuner.promql import Engine, QueryResult, check_expr
from tuner.store import Store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEP = 15  # seconds between scrapes
HOURS = 6
TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
        10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
       20.0, 40.0, 80.0)
REQ = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
       240.0, 480.0, 960.0, 1920.0, 7680.0)

Point = tuple[str, tuple[tuple[str, str], ...], int, float]


def _le(b: float) -> str:
    return "+Inf" if math.isinf(b) else repr(b) if b != int(b) else f"{b:.1f}"


def generate(t0: int) -> list[Point]:
    """Six hours of three vLLM servers (V1, V0, both names) and 8 DCGM GPUs."""
    rng = np.random.default_rng(7)
    n = HOURS * 3600 // STEP
    grid = t0 + np.arange(n) * STEP
    points: list[Point] = []

    def add(name: str, labels: dict[str, str], ts: np.ndarray, values: np.ndarray) -> None:
        lab = tuple(sorted(labels.items()))
        points.extend((name, lab, int(t), float(v)) for t, v in zip(ts, values, strict=True))

    instances = {
        "v1": ("127.0.0.1:8000", True, False),
        "v0": ("127.0.0.1:8001", False, True),
        "both": ("127.0.0.1:8002", True, True),
    }
    def server(key: str, inst: str, new: bool, old: bool) -> None:
        jitter = rng.integers(-400, 400, size=n)
        ts = grid * 1000 + jitter
        keep = np.ones(n, dtype=bool)
        if key == "v0":  # a 20-minute gap (longer than the 5-minute lookback)
            keep[(grid >= t0 + 7200) & (grid < t0 + 8400)] = False
        if key == "both":  # the target disappears an hour before the end
            keep[grid >= t0 + (HOURS - 1) * 3600] = False
        ts = ts[keep]
        m = len(ts)
        base = {"job": "vllm", "instance": inst, "model_name": "tiny-llama", "engine": "0"}
        load = 0.5 + 0.5 * np.sin(np.linspace(0, 6, m)) + rng.random(m) * 0.2
        reset = np.zeros(m, dtype=bool)
        if key == "v1":  # a restart: every counter starts again from zero
            reset[m // 2 :] = True

        def counter(rate: np.ndarray) -> np.ndarray:
            inc = rng.poisson(np.maximum(rate, 0) * STEP).astype(float)
            c = np.cumsum(inc)
            if reset.any():
                first = int(np.argmax(reset))
                c[first:] -= c[first - 1]
            return c

        up = np.ones(m)
        if key == "v1":
            up[(np.arange(m) > 100) & (np.arange(m) < 130)] = 0
        add("up", {"job": "vllm", "instance": inst}, ts, up)
        add("vllm:num_requests_running", base, ts, np.round(load * 8))
        add("vllm:num_requests_waiting", base, ts, np.round(np.maximum(load - 0.8, 0) * 20))
        kv = np.clip(load * 0.9, 0, 1)
        if new:
            add("vllm:kv_cache_usage_perc", base, ts, kv)
        if old:
            add("vllm:gpu_cache_usage_perc", base, ts, kv)
        req_rate = load * 3
        success = {r: counter(req_rate * f) for r, f in
                   (("stop", 0.8), ("length", 0.18), ("abort", 0.015), ("error", 0.005))}
        for reason, vals in success.items():
            add("vllm:request_success_total", {**base, "finished_reason": reason}, ts, vals)
        add("vllm:num_preemptions_total", base, ts, counter(np.maximum(load - 0.9, 0) * 5))
        add("vllm:prompt_tokens_total", base, ts, counter(req_rate * 300))
        add("vllm:generation_tokens_total", base, ts, counter(req_rate * 150))
        q = counter(req_rate * 300)
        add("vllm:prefix_cache_queries_total" if new else "vllm:gpu_prefix_cache_queries_total",
            base, ts, q)
        add("vllm:prefix_cache_hits_total" if new else "vllm:gpu_prefix_cache_hits_total",
            base, ts, np.floor(q * 0.4))
        if new:
            drafts = counter(req_rate * 40)
            add("vllm:spec_decode_num_drafts_total", base, ts, drafts)
            add("vllm:spec_decode_num_draft_tokens_total", base, ts, drafts * 3)
            add("vllm:spec_decode_num_accepted_tokens_total", base, ts, np.floor(drafts * 0.7))
        if old:
            acc = 0.3 + rng.random(m) * 0.1
            acc[50:60] = np.nan
            add("vllm:spec_decode_draft_acceptance_rate", base, ts, acc)
        for status, frac in (("2xx", 0.97), ("4xx", 0.02), ("5xx", 0.01)):
            add("http_requests_total", {"job": "vllm", "instance": inst, "handler": "/v1/completions",
                                        "method": "POST", "status": status}, ts,
                counter(req_rate * frac))
        add("vllm:cache_config_info", {**base, "block_size": "128", "num_gpu_blocks": "24",
                                       "gpu_memory_utilization": "0.9"}, ts, np.ones(m))

        def histogram(name: str, bounds: tuple[float, ...], median: np.ndarray) -> None:
            count = counter(req_rate)
            inc_count = np.diff(count, prepend=0.0)
            inc_count[inc_count < 0] = count[inc_count < 0]
            sums = np.zeros(m)
            total_by_bucket = np.zeros((len(bounds) + 1, m))
            for i in range(m):
                k = int(inc_count[i])
                obs = rng.lognormal(np.log(median[i]), 0.8, size=k)
                hist = np.searchsorted(np.array(bounds), obs, side="left")
                per = np.bincount(hist, minlength=len(bounds) + 1)
                total_by_bucket[:, i] = np.cumsum(per)
                sums[i] = obs.sum()
            cum = np.cumsum(total_by_bucket, axis=1)
            sum_c = np.cumsum(sums)
            if reset.any():
                first = int(np.argmax(reset))
                cum[:, first:] -= cum[:, first - 1 : first]
                sum_c[first:] -= sum_c[first - 1]
            for j, b in enumerate((*bounds, math.inf)):
                add(f"{name}_bucket", {**base, "le": _le(b)}, ts, cum[j])
            add(f"{name}_count", base, ts, cum[-1])
            add(f"{name}_sum", base, ts, sum_c)

        histogram("vllm:time_to_first_token_seconds", TTFT, 0.2 + load * 0.8)
        histogram("vllm:e2e_request_latency_seconds", REQ, 2 + load * 10)
        histogram("vllm:request_queue_time_seconds", REQ, 0.05 + load)
        if new:
            histogram("vllm:inter_token_latency_seconds", ITL, 0.02 + load * 0.1)
        if old:
            histogram("vllm:time_per_output_token_seconds", ITL, 0.03 + load * 0.1)

    for key, (inst, new, old) in instances.items():
        server(key, inst, new, old)

    # DCGM: 8 GPUs on one host
    ts = grid * 1000 + 250
    for g in range(8):
        lab = {"job": "dcgm", "instance": "127.0.0.1:9400", "gpu": str(g),
               "UUID": f"GPU-{g:08x}-0000", "pci_bus_id": f"00000000:{0x3B + g:02X}:00.0",
               "device": f"nvidia{g}", "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node-1",
               "namespace": "serving", "pod": "vllm-0"}
        util = np.clip(60 + 30 * np.sin(np.linspace(g, g + 5, n)) + rng.normal(0, 5, n), 0, 100)
        add("DCGM_FI_DEV_GPU_UTIL", lab, ts, np.round(util))
        add("DCGM_FI_DEV_FB_USED", lab, ts, np.full(n, 76000.0 + g))
        add("DCGM_FI_DEV_FB_FREE", lab, ts, np.full(n, 5000.0 - g))
        add("DCGM_FI_DEV_GPU_TEMP", lab, ts, np.round(55 + util / 5))
        add("DCGM_FI_DEV_POWER_USAGE", lab, ts, 200 + util * 4.5 + rng.random(n))
        add("DCGM_FI_DEV_SM_CLOCK", lab, ts, np.full(n, 1980.0))
        add("DCGM_FI_DEV_MEM_COPY_UTIL", lab, ts, np.round(util * 0.6))
        add("DCGM_FI_PROF_GR_ENGINE_ACTIVE", lab, ts, util / 100)
        xid = np.zeros(n)
        if g == 3:
            xid[(grid > t0 + 3 * 3600) & (grid < t0 + 3 * 3600 + 600)] = 79
        add("DCGM_FI_DEV_XID_ERRORS", lab, ts, xid)
    # values near the float64 limit: a plain mean overflows, Prometheus's incremental one not
    big = np.random.default_rng(11)
    for k in range(3):
        add("huge_values", {"job": "synthetic", "k": str(k)}, grid * 1000 + 500,
            1e308 * (0.6 + 1.1 * big.random(n)))
    return points


# -- expressions ---------------------------------------------------------------------------

BATTERY = [
    # selectors and matchers
    "vllm:num_requests_running",
    'vllm:num_requests_running{instance="127.0.0.1:8000"}',
    'vllm:num_requests_running{instance!="127.0.0.1:8000"}',
    'vllm:num_requests_running{instance=~".*:800[01]"}',
    'vllm:num_requests_running{instance!~".*:8000"}',
    '{__name__=~"vllm:(kv|gpu)_cache_usage_perc"}',
    '{__name__="up", job="vllm"}',
    "up offset 10m",
    "up offset -5m",
    "vllm:num_requests_running offset 1h",
    'vllm:nonexistent{a="b"}',
    # number, string-free literals and arithmetic
    "1 + 2 * 3 ^ 2 ^ 0.5",
    "-2 ^ 2",
    "(1 + 2) * -3",
    "10 % 3",
    "-10 % 3",
    "1 / 0",
    "-1 / 0",
    "0 / 0",
    "2 > bool 1",
    "2 == bool 2",
    "time()",
    "time() - 3600",
    "NaN",
    "Inf",
    "-Inf",
    "0x10",
    "1e3",
    # range functions
    "rate(vllm:generation_tokens_total[5m])",
    "rate(vllm:generation_tokens_total[1m])",
    "rate(vllm:generation_tokens_total[30s])",
    "rate(vllm:generation_tokens_total[2h])",
    "rate(vllm:generation_tokens_total[5m] offset 30m)",
    "irate(vllm:generation_tokens_total[5m])",
    "increase(vllm:request_success_total[10m])",
    "increase(vllm:num_preemptions_total[1h])",
    "delta(vllm:kv_cache_usage_perc[10m])",
    "delta(vllm:num_requests_running[5m])",
    "idelta(vllm:num_requests_waiting[5m])",
    "deriv(vllm:kv_cache_usage_perc[10m])",
    "deriv(DCGM_FI_DEV_FB_USED[10m])",
    "deriv(DCGM_FI_DEV_POWER_USAGE[15m])",
    "resets(vllm:generation_tokens_total[6h])",
    "changes(vllm:num_requests_running[10m])",
    "avg_over_time(vllm:kv_cache_usage_perc[10m])",
    "min_over_time(vllm:num_requests_running[10m])",
    "max_over_time(DCGM_FI_DEV_GPU_TEMP[1h])",
    "sum_over_time(vllm:num_requests_waiting[30m])",
    "count_over_time(up[1h])",
    "last_over_time(vllm:num_requests_running[10m])",
    "quantile_over_time(0.9, vllm:kv_cache_usage_perc[30m])",
    "quantile_over_time(0, DCGM_FI_DEV_GPU_UTIL[5m])",
    "quantile_over_time(1.5, DCGM_FI_DEV_GPU_UTIL[5m])",
    "stddev_over_time(DCGM_FI_DEV_POWER_USAGE[10m])",
    "stdvar_over_time(vllm:num_requests_running[10m])",
    "stddev_over_time(DCGM_FI_DEV_SM_CLOCK[10m])",
    "present_over_time(vllm:num_requests_running[10m])",
    "avg_over_time(vllm:spec_decode_draft_acceptance_rate[1h])",
    "max_over_time(vllm:spec_decode_draft_acceptance_rate[1h])",
    "absent_over_time(vllm:num_requests_running[10m])",
    'absent_over_time(vllm:num_requests_running{instance="127.0.0.1:8002"}[10m])',
    'absent_over_time(nonexistent{job="x", a=~"b"}[5m])',
    # histogram_quantile
    "histogram_quantile(0.99, rate(vllm:time_to_first_token_seconds_bucket[5m]))",
    "histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[10m])))",
    "histogram_quantile(0.9, sum without (engine) "
    "(rate(vllm:inter_token_latency_seconds_bucket[5m])))",
    "histogram_quantile(0.99, sum by (le, instance) "
    "(rate(vllm:e2e_request_latency_seconds_bucket[1h])))",
    "histogram_quantile(0, sum by (le) (rate(vllm:request_queue_time_seconds_bucket[5m])))",
    "histogram_quantile(1, sum by (le) (rate(vllm:request_queue_time_seconds_bucket[5m])))",
    "histogram_quantile(1.2, sum by (le) (rate(vllm:request_queue_time_seconds_bucket[5m])))",
    "histogram_quantile(-1, sum by (le) (rate(vllm:request_queue_time_seconds_bucket[5m])))",
    "histogram_quantile(0.5, vllm:time_to_first_token_seconds_bucket)",
    'histogram_quantile(0.5, vllm:time_to_first_token_seconds_bucket{le!="+Inf"})',
    # label_replace
    'label_replace(up, "host", "$1", "instance", "(.*):.*")',
    'label_replace(up, "host", "${1}-x", "instance", "(.*):(.*)")',
    'label_replace(up, "instance", "", "instance", ".*")',
    'label_replace(up, "job", "$1", "nonexistent", "(.*)")',
    'label_replace(up, "port", "$2", "instance", "nomatch(.*)")',
    # aggregations
    "sum(vllm:num_requests_running)",
    "sum by (instance) (vllm:num_requests_running)",
    "sum without (engine) (vllm:num_requests_running)",
    "sum(vllm:num_requests_running) by (instance, job)",
    "avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL)",
    "min by (instance) (rate(vllm:request_success_total[5m]))",
    "max without (gpu, UUID, pci_bus_id, device) (DCGM_FI_DEV_GPU_TEMP)",
    "count by (job) (up)",
    "count(up == 1)",
    "group by (instance) (vllm:request_success_total)",
    "stddev(DCGM_FI_DEV_POWER_USAGE)",
    "stdvar by (job) (DCGM_FI_DEV_GPU_UTIL)",
    "topk(3, DCGM_FI_DEV_POWER_USAGE)",
    "bottomk(2, DCGM_FI_DEV_POWER_USAGE)",
    "topk by (instance) (1, rate(vllm:request_success_total[5m]))",
    "topk(0, DCGM_FI_DEV_POWER_USAGE)",
    "quantile(0.9, DCGM_FI_DEV_GPU_UTIL)",
    "quantile by (instance) (0.5, rate(vllm:request_success_total[5m]))",
    "sum by (__name__) ({__name__=~\"vllm:num_requests_(running|waiting)\"})",
    "sum(nonexistent)",
    "count(nonexistent)",
    # binary operators
    "vllm:num_requests_running + vllm:num_requests_waiting",
    "vllm:num_requests_running - 1",
    "2 * vllm:num_requests_running",
    "vllm:num_requests_running / vllm:num_requests_waiting",
    "vllm:num_requests_waiting % 3",
    "vllm:kv_cache_usage_perc ^ 2",
    "vllm:num_requests_running > 4",
    "4 < vllm:num_requests_running",
    "vllm:num_requests_running >= bool 4",
    "vllm:num_requests_running > vllm:num_requests_waiting",
    "vllm:num_requests_running != bool vllm:num_requests_waiting",
    "vllm:num_requests_running == 0",
    "-vllm:num_requests_running",
    "- rate(vllm:generation_tokens_total[5m])",
    "vllm:num_requests_running and vllm:num_requests_waiting > 0",
    "vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc",
    "vllm:num_requests_running unless vllm:num_requests_waiting > 0",
    "up unless on (instance) vllm:kv_cache_usage_perc",
    "up and on (instance, job) vllm:gpu_cache_usage_perc",
    "vllm:num_requests_running * on (instance) group_left (block_size) vllm:cache_config_info",
    "vllm:cache_config_info * on (instance) group_right (block_size) vllm:num_requests_running",
    "vllm:cache_config_info > on (instance, job, model_name, engine) group_left vllm:num_requests_running",
    "sum by (instance) (rate(vllm:request_success_total[5m])) / ignoring (finished_reason) "
    "group_left sum by (instance, finished_reason) (rate(vllm:request_success_total[5m]))",
    "rate(vllm:request_success_total[5m]) / ignoring (finished_reason) group_left "
    "sum without (finished_reason) (rate(vllm:request_success_total[5m]))",
    "vllm:num_requests_running / on (instance) up",
    "up > bool on (instance) vllm:num_requests_waiting",
    "up > on (instance) bool vllm:num_requests_waiting",  # syntax error in both
    "vllm:request_success_total + on (instance) vllm:num_requests_running",  # many-to-one error
    "vllm:request_success_total > 10",
    "DCGM_FI_DEV_XID_ERRORS != 0",
    "(avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL) < 50) and on (namespace, pod) "
    "(sum by (namespace, pod) (vllm:num_requests_waiting) > 0)",
    # other functions
    "absent(vllm:num_requests_running)",
    'absent(nonexistent{job="x", instance=~"y", a="b", a="c"})',
    "absent(sum(nonexistent))",
    "vector(1)",
    "vector(time())",
    "scalar(sum(up))",
    "scalar(up)",
    "vllm:num_requests_running * scalar(count(up))",
    "clamp_min(vllm:num_requests_waiting, 2)",
    "clamp_max(vllm:num_requests_running, 3)",
    "clamp(DCGM_FI_DEV_GPU_UTIL, 20, 80)",
    "clamp(DCGM_FI_DEV_GPU_UTIL, 80, 20)",
    "abs(delta(vllm:kv_cache_usage_perc[5m]))",
    "ceil(vllm:kv_cache_usage_perc * 10)",
    "floor(DCGM_FI_DEV_POWER_USAGE)",
    "round(DCGM_FI_DEV_POWER_USAGE)",
    "round(DCGM_FI_DEV_POWER_USAGE, 5)",
    "sqrt(DCGM_FI_DEV_GPU_UTIL)",
    "exp(vllm:kv_cache_usage_perc)",
    "ln(DCGM_FI_DEV_GPU_UTIL)",
    "log2(vllm:num_requests_running)",
    "log10(DCGM_FI_DEV_FB_USED)",
    "timestamp(up)",
    "timestamp(sum(up))",
    "time() - timestamp(up) > 60",
    "sort_desc(DCGM_FI_DEV_GPU_UTIL)",
    "rate({__name__=~\"vllm:(prompt|generation)_tokens_total\"}[5m])",  # duplicate labelset
    # subqueries (no step: Prometheus's evaluation_interval, 1m, the engine's default too)
    "max_over_time(rate(vllm:generation_tokens_total[5m])[1h:1m])",
    "avg_over_time(vllm:num_requests_running[30m:])",
    "min_over_time(sum by (instance) (rate(vllm:request_success_total[2m]))[20m:30s] offset 10m)",
    "rate(vllm:prompt_tokens_total[5m:15s])",
    "increase(vllm:request_success_total[1h:2m])",
    "deriv(vllm:kv_cache_usage_perc[30m:1m])",
    "quantile_over_time(0.9, rate(vllm:generation_tokens_total[5m])[1h:5m])",
    "sum_over_time(count(up)[1h:10m])",
    "last_over_time(up[10m:1m])",
    "count_over_time((up == 1)[1h:2m])",
    "max_over_time(max_over_time(vllm:num_requests_running[5m:1m])[30m:5m])",
    "changes(vllm:num_requests_running[30m:1m])",
    "resets(vllm:generation_tokens_total[6h:10m])",
    "absent_over_time(nonexistent[10m:1m])",
    "present_over_time(vllm:num_requests_running[10m:1m] offset 1h)",
    "stddev_over_time(DCGM_FI_DEV_POWER_USAGE[30m:45s])",
    "histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[5m])))"
    " > bool max_over_time(histogram_quantile(0.99, sum by (le) "
    "(rate(vllm:time_to_first_token_seconds_bucket[5m])))[1h:5m])",
    # count_values, predict_linear, holt_winters, atan2, label_join, math and date functions
    'count_values("running", vllm:num_requests_running)',
    'count_values by (instance) ("value", vllm:num_requests_waiting)',
    'count_values without (engine, model_name) ("v", vllm:num_requests_running)',
    'count_values("x", DCGM_FI_DEV_POWER_USAGE)',
    "predict_linear(DCGM_FI_DEV_FB_USED[30m], 3600)",
    "predict_linear(vllm:kv_cache_usage_perc[1h], 600) > 0.9",
    "predict_linear(DCGM_FI_DEV_POWER_USAGE[10m] offset 30m, 300)",
    "predict_linear(rate(vllm:prompt_tokens_total[5m])[1h:1m], 1800)",
    "holt_winters(DCGM_FI_DEV_GPU_UTIL[30m], 0.3, 0.6)",
    "holt_winters(vllm:num_requests_running[1h], 0.1, 0.9)",
    "vllm:num_requests_running atan2 vllm:num_requests_waiting",
    "DCGM_FI_DEV_GPU_UTIL atan2 50",
    "1 atan2 vector(2)",
    'label_join(up, "hostport", ":", "job", "instance")',
    'label_join(up, "job", "", "nonexistent")',
    'label_join(up, "instance", "", "nonexistent")',  # duplicate label sets: both refuse
    "sgn(delta(vllm:kv_cache_usage_perc[5m]))",
    "sin(DCGM_FI_DEV_GPU_UTIL) + cos(DCGM_FI_DEV_GPU_UTIL) * tan(DCGM_FI_PROF_GR_ENGINE_ACTIVE)",
    "asin(vllm:kv_cache_usage_perc) + acos(vllm:kv_cache_usage_perc) - atan(vllm:num_requests_running)",
    "sinh(vllm:kv_cache_usage_perc) * cosh(vllm:kv_cache_usage_perc) / tanh(vllm:num_requests_running)",
    "asinh(DCGM_FI_DEV_GPU_UTIL) + acosh(DCGM_FI_DEV_GPU_UTIL) + atanh(DCGM_FI_PROF_GR_ENGINE_ACTIVE)",
    "deg(DCGM_FI_PROF_GR_ENGINE_ACTIVE) - rad(DCGM_FI_DEV_GPU_TEMP)",
    "pi() * vector(2)",
    "hour(timestamp(up)) * 60 + minute(timestamp(up))",
    "day_of_week() + day_of_month() + day_of_year() + days_in_month() + month() + year()",
    "days_in_month(vector(time()))",
    "year(timestamp(DCGM_FI_DEV_GPU_UTIL))",
    # Go regular expressions: inline flags anywhere in the pattern
    'vllm:num_requests_running{model_name=~"((?i)TINY)-llama"}',
    'label_replace(up, "j", "$1", "job", "(?i)(VLLM)")',
    # the overflow-safe mean: values near 1e308
    "avg_over_time(huge_values[10m])",
    "avg(huge_values)",
    "avg by (job) (huge_values)",
    "max_over_time(avg(huge_values)[30m:1m])",
]

# @ modifier: "{at}" is an hour into the data, "{late}" after its end (formatted per test)
AT_BATTERY = [
    "vllm:num_requests_running @ {at}",
    "rate(vllm:generation_tokens_total[5m] @ {at})",
    "up @ {at} offset 10m",
    "up offset 10m @ {at}",
    "timestamp(up @ {at})",
    "max_over_time(rate(vllm:prompt_tokens_total[5m])[30m:1m] @ {at})",
    "sum_over_time(vllm:num_requests_running[10m:1m] @ {at} offset 5m)",
    "vllm:num_requests_running - vllm:num_requests_running @ {at}",
    "up @ {late}",
    "count_over_time(up[1h] @ {late})",
    "vllm:num_requests_running @ start()",
    "avg_over_time(vllm:num_requests_running[10m:] @ end())",
]


def _record_map(rule_files: list[Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rf in rule_files:
        for group in (yaml.safe_load(rf.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    out[rule["record"]] = str(rule["expr"])
    return out


def _inline(expr: str, records: dict[str, str]) -> str:
    """Replace recording-rule names (used as plain selectors) by their expressions."""
    for _ in range(5):
        changed = False
        for name, body in records.items():
            pattern = re.compile(rf"(?<![\w:]){re.escape(name)}(?![\w:{{\[])")
            if pattern.search(expr):
                expr = pattern.sub(lambda _m, b=body: f"({b.strip()})", expr)
                changed = True
        if not changed:
            break
    return expr


def rule_expressions() -> list[tuple[str, str]]:
    """(id, expr) for every rule in rules/*.yaml, records inlined."""
    files = sorted((REPO / "rules").glob("*.yaml"))
    records = _record_map(files)
    out = []
    for rf in files:
        for group in (yaml.safe_load(rf.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("record") or rule.get("alert")
                out.append((f"{rf.name}:{name}", _inline(str(rule["expr"]), records)))
    return out


def _grafana(expr: str) -> str:
    expr = re.sub(r'(\w+)\s*(=~|!~|!=|=)\s*"\$\{?\w+(?::\w+)?\}?"', r'\1=~".*"', expr)
    expr = re.sub(r"\$\{?__rate_interval\}?|\$\{?__interval\}?", "1m", expr)
    expr = re.sub(r"\$\{?__range\}?", "1h", expr)
    expr = re.sub(r"\$\{?cost_per_hour\}?", "2.5", expr)
    return re.sub(r"\$\{?\w+\}?", "1", expr)


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str) and v.strip():
                yield v
            else:
                yield from _dashboard_exprs(v)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def dashboard_expressions() -> list[tuple[str, str]]:
    files = sorted((REPO / "rules").glob("*.yaml"))
    records = _record_map(files)
    out = []
    for df in sorted((REPO / "dashboards").glob("*.json")):
        for i, expr in enumerate(_dashboard_exprs(json.loads(df.read_text()))):
            out.append((f"{df.name}#{i}", _inline(_grafana(expr), records)))
    return out


# -- fixtures and comparison ---------------------------------------------------------------


class Setup:
    def __init__(self, prom: PrometheusServer, engine: Engine, cached: Engine, t0: int) -> None:
        self.prom = prom
        self.engine = engine
        self.cached = cached  # one long-lived caching engine sees every query in turn
        self.t0 = t0
        end = t0 + HOURS * 3600
        # around the start, mid-way, in the v0 gap, right after the v1 restart, after "both"
        # ended, at the last scrape, and in/after the lookback tail
        self.times = [t0 + 600, t0 + 3600 + 7, t0 + 7800, t0 + 3 * 3600 + 301,
                      t0 + HOURS * 3600 // 2 + 30, end - 1800, end - STEP, end + 200, end + 400]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("promql-diff")
    t0 = (int(time.time()) // 3600 - 30) * 3600  # well in the past, hour-aligned
    points = generate(t0)
    store = Store(tmp / "store.db", retention=3650 * 86400.0)
    store.append_points(points)
    # Prometheus's default evaluation_interval (1m), the engine's default subquery step too
    prom = start_prometheus(tmp / "prometheus", points=points, evaluation_interval="1m")
    try:
        yield Setup(prom, Engine(store), Engine(store, cache=True), t0)
    finally:
        prom.stop()
        store.close()


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _ours(result: QueryResult) -> dict[tuple[tuple[str, str], ...], float]:
    if result.kind == "scalar":
        assert result.scalar is not None
        return {(): result.scalar}
    assert result.kind == "vector", result.kind
    out = {}
    for el in result.vector:
        key = _key(dict(el.labels))
        assert key not in out, f"duplicate label set {key}"
        out[key] = el.value
    return out


def compare(s: Setup, expr: str, times: list[int] | None = None) -> int:
    """Compare at every time; returns how many (time, series) values matched."""
    matched = 0
    for ts in times or s.times:
        try:
            data = s.prom.query(expr, ts)
        except PrometheusQueryError as exc:
            with pytest.raises(QueryError):
                s.engine.instant(expr, ts)
            if exc.error_type == "bad_data":  # refused by the parser: ours refuses it too
                with pytest.raises(QueryError):
                    check_expr(expr)
                return 0
            assert exc.error_type == "execution", exc
            continue
        got = _ours(s.engine.instant(expr, ts))
        cached = _ours(s.cached.instant(expr, ts))
        assert set(cached) == set(got), f"{expr} @ {ts - s.t0}s: cached engine differs"
        assert all(_close(cached[k], v) for k, v in got.items()), f"{expr}: cached values"
        if data["resultType"] == "scalar":
            want = {(): float(data["result"][1])}
        else:
            want = {_key(r["metric"]): float(r["value"][1]) for r in data["result"]}
        assert set(got) == set(want), (
            f"{expr} @ {ts - s.t0}s: label sets differ\n"
            f"only Prometheus: {sorted(set(want) - set(got))[:5]}\n"
            f"only tuner: {sorted(set(got) - set(want))[:5]}")
        for k, v in want.items():
            assert _close(got[k], v), f"{expr} @ {ts - s.t0}s {dict(k)}: tuner {got[k]!r} != " \
                                      f"Prometheus {v!r}"
            matched += 1
    return matched


@pytest.mark.parametrize("expr", BATTERY)
def test_battery(setup: Setup, expr: str) -> None:
    compare(setup, expr)


def test_battery_sees_data(setup: Setup) -> None:
    """The battery is not vacuous: most expressions return series at most times."""
    total = sum(compare(setup, e, setup.times[:3]) for e in BATTERY[:40])
    assert total > 200


NEW_CONSTRUCTS = BATTERY[BATTERY.index("max_over_time(rate(vllm:generation_tokens_total[5m])"
                                       "[1h:1m])"):]


def test_new_constructs_see_data(setup: Setup) -> None:
    """Subqueries and the functions added for issue 11 are compared on real series."""
    with_data = [e for e in NEW_CONSTRUCTS if compare(setup, e, setup.times[1:4]) > 0]
    print(f"{len(with_data)} of {len(NEW_CONSTRUCTS)} new-construct expressions return data")
    # empty or refused by both: absent_over_time(nonexistent...), the duplicate label_join
    assert len(with_data) >= len(NEW_CONSTRUCTS) - 2


@pytest.mark.parametrize("template", AT_BATTERY)
def test_at_modifier(setup: Setup, template: str) -> None:
    expr = template.format(at=setup.t0 + 3600 + 7, late=setup.t0 + HOURS * 3600 + 120)
    assert compare(setup, expr) > 0 or "late" in template


RULES = rule_expressions()
DASHBOARDS = dashboard_expressions()


def test_rule_and_dashboard_files_found() -> None:
    assert RULES, "no rules/*.yaml expressions found"


@pytest.mark.parametrize("expr", [e for _, e in RULES], ids=[i for i, _ in RULES])
def test_rule_expression(setup: Setup, expr: str) -> None:
    compare(setup, expr)


@pytest.mark.parametrize("expr", [e for _, e in DASHBOARDS] or ["vector(1)"],
                         ids=[i for i, _ in DASHBOARDS] or ["no-dashboards"])
def test_dashboard_expression(setup: Setup, expr: str) -> None:
    compare(setup, expr)


def test_unmodified_rule_expressions_parse() -> None:
    for rf in sorted((REPO / "rules").glob("*.yaml")):
        for group in (yaml.safe_load(rf.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                check_expr(str(rule["expr"]))


@pytest.mark.parametrize("expr", [
    "rate(vllm:generation_tokens_total[5m])",
    "histogram_quantile(0.99, sum by (le, instance) "
    "(rate(vllm:time_to_first_token_seconds_bucket[5m])))",
    "vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc",
    "up",
    "time() - timestamp(up)",
    "sum by (instance) (rate(vllm:request_success_total[2m])) > 1",
    "scalar(sum(up))",
    "max_over_time(rate(vllm:generation_tokens_total[5m])[30m:1m])",
    "avg_over_time(vllm:num_requests_running[20m:] offset 5m)",
    "predict_linear(vllm:kv_cache_usage_perc[30m], 600)",
    'count_values by (instance) ("v", vllm:num_requests_waiting)',
    "vllm:num_requests_running @ start() - vllm:num_requests_running @ end()",
    "sum_over_time(up[10m:1m] @ end())",
])
def test_range_query(setup: Setup, expr: str) -> None:
    """Engine.range agrees with /api/v1/query_range over the whole history at a 5-minute step."""
    start, end, step = setup.t0 - 600, setup.t0 + HOURS * 3600 + 600, 300
    data = setup.prom.query_range(expr, start, end, step)
    want = {_key(r["metric"]): {float(t): float(v) for t, v in r["values"]}
            for r in data["result"]}
    got = {_key(dict(rs.labels)): dict(zip(rs.timestamps.tolist(), rs.values.tolist(),
                                            strict=True))
           for rs in setup.engine.range(expr, start, end, step)}
    assert set(got) == set(want)
    for k, pts in want.items():
        assert set(got[k]) == set(pts), f"{expr} {dict(k)}: steps differ"
        for t, v in pts.items():
            assert _close(got[k][t], v), f"{expr} {dict(k)} @ {t}: {got[k][t]} != {v}"


def test_rules_and_dashboards_see_data(setup: Setup) -> None:
    """Most rule and dashboard expressions return series on this data (not a vacuous match)."""
    exprs = [e for _, e in RULES + DASHBOARDS]
    with_data = sum(1 for e in exprs if compare(setup, e, setup.times[1:4]) > 0)
    print(f"{with_data} of {len(exprs)} rule/dashboard expressions return data")
    assert with_data >= 0.6 * len(exprs)
