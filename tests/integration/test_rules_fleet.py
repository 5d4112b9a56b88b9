"""Fleet mode: the shipped rules evaluated by querying a real Prometheus give the same alerts
as the sidecar's own evaluator over the same series (recorded names inlined, nothing written)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tuner.config import SLO
from tuner.promql import Engine
from tuner.rules import RuleEngine, load_rule_texts, render_rule_files
from tuner.source import PrometheusSource
from tuner.store import Store

pytestmark = pytest.mark.integration


def _points(t0_ms: int) -> list[tuple[str, tuple[tuple[str, str], ...], int, float]]:
    """30 minutes at 15s of a V1 server that preempts 20 per 1000 requests and whose KV
    cache is full with a queue, plus a V0-named server with a slow ITL p99."""
    v1 = (("engine", "0"), ("instance", "a:8000"), ("job", "vllm"), ("model_name", "m"))
    v0 = (("instance", "b:8000"), ("job", "vllm"), ("model_name", "m"))
    pts = []
    for i in range(121):
        t = t0_ms + i * 15_000
        pts += [
            ("up", (("instance", "a:8000"), ("job", "vllm")), t, 1.0),
            ("vllm:num_requests_running", v1, t, 8.0),
            ("vllm:num_requests_waiting", v1, t, 5.0),
            ("vllm:kv_cache_usage_perc", v1, t, 0.97),
            ("vllm:generation_tokens_total", v1, t, 1000.0 * i),
            ("vllm:num_preemptions_total", v1, t, 2.0 * i),
            ("vllm:request_success_total", (*v1[:3], ("finished_reason", "stop"), v1[3]), t,
             100.0 * i),
            ("vllm:time_per_output_token_seconds_bucket", (*v0[:1], ("job", "vllm"), ("le", "0.1"),
                                                           ("model_name", "m")), t, 900.0 * i),
            ("vllm:time_per_output_token_seconds_bucket", (*v0[:1], ("job", "vllm"), ("le", "0.2"),
                                                           ("model_name", "m")), t, 1000.0 * i),
            ("vllm:time_per_output_token_seconds_bucket", (*v0[:1], ("job", "vllm"),
                                                           ("le", "+Inf"), ("model_name", "m")),
             t, 1000.0 * i),
        ]
    return pts


def _firing(engine: RuleEngine) -> set[tuple[str, tuple[tuple[str, str], ...], str]]:
    return {(a.alertname, tuple(sorted(a.labels.items())), a.annotations["description"])
            for a in engine.alerts() if a.state == "firing"}


def test_fleet_mode_matches_local_evaluation(
    tmp_path: Path, prometheus_factory: Callable[..., Any]
) -> None:
    t0 = (int(time.time()) - 6 * 3600) // 60 * 60  # backfilled data must be in the past
    points = _points(t0 * 1000)
    prom = prometheus_factory(points=points)
    store = Store(tmp_path / "s.db", retention=3650 * 86400.0)
    store.append_points(points)
    rules = load_rule_texts(render_rule_files(SLO()))
    local = RuleEngine(rules, Engine(store), writer=store, default_interval=60)
    fleet = RuleEngine(rules, PrometheusSource(prom.url), writer=None, default_interval=60)
    for step in range(31):
        ts = t0 + step * 60
        rl, rf = local.evaluate(ts), fleet.evaluate(ts)
        assert rl.errors == () and rf.errors == ()
    got_local, got_fleet = _firing(local), _firing(fleet)
    names = {n for n, _l, _d in got_fleet}
    assert {"VllmPreemptionsHigh", "VllmKvCacheSaturated", "VllmItlP99High"} <= names
    assert got_fleet == got_local
    assert rf.samples_written == 0  # fleet mode writes nothing anywhere
    store.close()
