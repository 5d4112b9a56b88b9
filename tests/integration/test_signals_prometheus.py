"""Every signal of tuner.signals against a real Prometheus 2.42, on the shapes issue 10 names.

Synthetic series (written here, not recorded), one hour at a 15 s step, for three servers:

* ``dp``: two data-parallel engines (``engine`` 0 and 1) behind two API servers whose gauges
  come once per ``pid`` (as releases before 0.32 exported them), admission rejections with the
  two known reasons and one this code has never heard of, HTTP 2xx/4xx/5xx, waiting by reason,
  and ``vllm:cache_config_info`` with ``kv_cache_size_tokens`` per engine;
* ``old``: an older server: V0 KV name, no ``http_requests_total``, no admission metrics, no
  ``kv_cache_size_tokens``;
* ``reset``: like ``dp`` with one engine, restarted half-way (every counter back to 0).

The same points go into the embedded store and, with promtool, into Prometheus; each signal's
status, window (suggest) and rule forms are evaluated by both, at several times, and must agree
exactly on label sets and within 1e-9 on values. Then the values are checked against what the
series were made to say (the rates are constant, so the ratios are exact).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from tests.support.prometheus import PrometheusServer, start_prometheus
from tuner.exposition import labels_of
from tuner.promql import Engine
from tuner.signals import (
    REQUEST_OUTCOME_SIGNALS,
    STATUS_SIGNALS,
    VLLM_GROUP_BY,
    WINDOW_SIGNALS,
    WINDOW_TOTALS,
    evaluate_signals,
    render_rule_expr,
    render_signal,
)
from tuner.store import Store

pytestmark = pytest.mark.integration

STEP = 15
N = 240  # one hour
Point = tuple[str, tuple[tuple[str, str], ...], int, float]


def generate(t0: int) -> list[Point]:
    points: list[Point] = []

    def add(name: str, labels: dict[str, str], fn: object) -> None:
        lab = labels_of(labels)
        for k in range(N):
            v = fn(k)  # type: ignore[operator]
            if v is not None:
                points.append((name, lab, (t0 + STEP * k) * 1000 + 7 * (k % 3), float(v)))

    def server(inst: str, engines: tuple[str, ...], pids: tuple[str, ...], *, modern: bool,
               restart_at: int | None = None) -> None:
        tgt = {"job": "vllm", "instance": inst}
        base = {**tgt, "model_name": "m"}

        def count(per_step: float) -> object:
            def f(k: int) -> float:
                return per_step * (k - restart_at if restart_at is not None and k >= restart_at
                                   else k)
            return f

        for e in engines:
            eng = {**base, "engine": e}
            for pid in pids:
                gauge = {**eng, **({"pid": pid} if pid else {})}
                add("vllm:num_requests_running", gauge, lambda k, e=e: 3 + 2 * int(e))
                add("vllm:num_requests_waiting", gauge, lambda k: 4)
                add("vllm:kv_cache_usage_perc" if modern else "vllm:gpu_cache_usage_perc", gauge,
                    lambda k, e=e: 0.5 + 0.2 * int(e))
                if modern:
                    add("vllm:num_requests_waiting_by_reason", {**gauge, "reason": "capacity"},
                        lambda k: 3)
                    add("vllm:num_requests_waiting_by_reason", {**gauge, "reason": "deferred"},
                        lambda k: 1)
                info = {"engine": e, "block_size": "128", "num_gpu_blocks": str(24 * len(engines))}
                if modern:
                    info["kv_cache_size_tokens"] = "3072"
                add("vllm:cache_config_info", {**tgt, **info, **({"pid": pid} if pid else {})},
                    lambda k: 1)
            # per engine (counters of one engine are not duplicated per pid): 6 finished/s
            for reason, per_s in (("stop", 4.0), ("length", 1.0), ("abort", 0.6),
                                  ("error", 0.2), ("repetition", 0.2)):
                add("vllm:request_success_total", {**eng, "finished_reason": reason},
                    count(per_s * STEP / len(engines)))
            add("vllm:generation_tokens_total", eng, count(100 * STEP))
            add("vllm:num_preemptions_total", eng, count(0.1 * STEP))
        if modern:
            # the API servers: 2 + 1 rejected per second, the second reason unknown to tuner
            for reason, per_s in (("max_num_queued_reqs", 2.0), ("max_num_queued_tokens", 0.0),
                                  ("max_num_queued_widgets", 1.0)):
                add("vllm:admission_rejections_total", {**base, "reason": reason},
                    count(per_s * STEP))
            for status, per_s in (("2xx", 6.0), ("4xx", 1.0), ("5xx", 3.0)):
                add("http_requests_total", {**tgt, "handler": "/v1/completions",
                                            "method": "POST", "status": status},
                    count(per_s * STEP))

    server("dp", ("0", "1"), ("101", "102"), modern=True)
    server("old", ("0",), ("",), modern=False)
    server("reset", ("0",), ("",), modern=True, restart_at=N // 2)
    return points


class Setup:
    def __init__(self, prom: PrometheusServer, engine: Engine, t0: int) -> None:
        self.prom, self.engine, self.t0 = prom, engine, t0
        # well inside, just after the restart (within one rate window), near the end
        self.times = [t0 + 1800, t0 + STEP * (N // 2) + 60, t0 + STEP * (N - 2)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("signals-prom")
    t0 = (int(time.time()) // 3600 - 30) * 3600
    points = generate(t0)
    store = Store(tmp / "store.db", retention=3650 * 86400.0)
    store.append_points(points)
    prom = start_prometheus(tmp / "prometheus", points=points)
    try:
        yield Setup(prom, Engine(store), t0)
    finally:
        prom.stop()
        store.close()


def forms() -> list[tuple[str, str]]:
    out = [(f"status:{s.name}", s.expr) for s in STATUS_SIGNALS]
    for s in (*WINDOW_SIGNALS, *WINDOW_TOTALS, *REQUEST_OUTCOME_SIGNALS):
        if "DCGM_" in s.expr:
            continue
        out.append((f"window:{s.name}", render_signal(s, by=VLLM_GROUP_BY, window="5m")))
        out.append((f"selected:{s.name}", render_signal(
            s, '{instance=~"dp|old|reset", model_name="m"}', by="instance", window="2m")))
        if s.from_labels is None and "$SEL_PROC" not in s.expr:
            out.append((f"rule:{s.name}", render_rule_expr(s, "5m")))
    return out


FORMS = forms()
#: Forms over series this data does not hold (histograms, spec decode, DCGM, process) are still
#: compared (both must be empty); the rest must return series.
GENERATED = ("vllm:num_requests", "vllm:kv_cache", "vllm:request_success", "http_requests",
             "vllm:admission", "vllm:cache_config", "vllm:generation_tokens", "vllm:num_preempt")


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("expr", [e for _, e in FORMS], ids=[i for i, _ in FORMS])
def test_signal_agrees_with_prometheus(setup: Setup, expr: str) -> None:
    seen = 0
    for ts in setup.times:
        want = {_key(r["metric"]): float(r["value"][1])
                for r in setup.prom.query(expr, ts)["result"]}
        got = {_key(dict(el.labels)): el.value for el in setup.engine.instant(expr, ts).vector}
        assert set(got) == set(want), f"{expr} @ {ts - setup.t0}s: label sets differ\n" \
            f"only Prometheus: {sorted(set(want) - set(got))}\nonly tuner: " \
            f"{sorted(set(got) - set(want))}"
        for k, v in want.items():
            assert _close(got[k], v), f"{expr} @ {ts - setup.t0}s {dict(k)}: {got[k]} != {v}"
        seen += len(want)
    if any(m in expr for m in GENERATED) and \
            "spec_decode" not in expr and "_bucket" not in expr and "prompt" not in expr and \
            "prefix_cache" not in expr and "process_start" not in expr:
        assert seen, f"{expr}: no series at all (a vacuous comparison)"


def test_signals_say_what_the_series_were_made_to_say(setup: Setup) -> None:
    ts = setup.times[0]
    sig = evaluate_signals(setup.engine, STATUS_SIGNALS, ts)
    dp, old, reset = sig["dp"], sig["old"], sig["reset"]
    # gauges: engines add up, per-pid copies count once
    assert dp["running"] == 3 + 5 and dp["waiting"] == 8
    assert dp["kv_cache_usage"] == pytest.approx(0.7) and old["kv_cache_usage"] == 0.5
    assert dp["waiting_deferred"] == 2
    # HTTP: 3 of 10 per second are 5xx, 1 of 10 4xx
    assert dp["http_5xx_ratio"] == pytest.approx(0.3)
    assert dp["http_4xx_ratio"] == pytest.approx(0.1)
    # 3 refused (one reason unknown) per 6 finished: 1000 * 3 / 9
    assert dp["rejections_per_1000"] == pytest.approx(1000 / 3)
    assert dp["aborted_ratio"] == pytest.approx(0.1) and dp["errored_ratio"] == pytest.approx(
        0.2 / 6)
    # KV capacity: 3072 tokens per engine; the old server: 24 blocks x 128 once
    assert dp["kv_capacity_tokens"] == 2 * 3072 and old["kv_capacity_tokens"] == 24 * 128
    # the old server: unknown error rate (absent), no admission control (absent)
    assert "http_5xx_ratio" not in old and "rejections_per_1000" not in old
    assert reset["rejections_per_1000"] == pytest.approx(1000 / 3)
    # right after the restart, rate() still sees the same rates across the reset
    after = evaluate_signals(setup.engine, STATUS_SIGNALS, setup.times[1])
    assert after["reset"]["rejections_per_1000"] == pytest.approx(1000 / 3)
    assert after["reset"]["http_5xx_ratio"] == pytest.approx(0.3)
    # and Prometheus agrees on the same numbers
    for name in ("running", "http_5xx_ratio", "rejections_per_1000"):
        expr = next(s.expr for s in STATUS_SIGNALS if s.name == name)
        prom = {r["metric"]["instance"]: float(r["value"][1])
                for r in setup.prom.query(expr, ts)["result"]}
        assert prom["dp"] == pytest.approx(dp[name])
