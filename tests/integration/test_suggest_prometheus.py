"""suggest over the same 24-hour fleet history in the embedded store and in a real Prometheus.

The points of three servers (a preemption storm with low speculative acceptance, a restart
with different flags, a healthy one; GPUs attributed by pod) go both into a SQLite store and,
through ``promtool tsdb create-blocks-from openmetrics``, into a Prometheus 2.42 process. Both
sources must give the same findings and the same recommendations.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.history import HEALTHY, Scenario, build_points, build_store, day_start
from tuner.cli import main
from tuner.config import parse_config
from tuner.source import LocalSource, PrometheusSource
from tuner.suggest import make_window, suggest

pytestmark = pytest.mark.integration

START = day_start(time.time())
SCENARIOS = (
    Scenario(start=START, step=60.0, instance="vllm-a", extra_labels=(("pod", "a"),),
             dcgm_extra_labels=(("pod", "a"),), gpus=2),
    Scenario(start=START, step=60.0, instance="vllm-b", extra_labels=(("pod", "b"),),
             dcgm_extra_labels=(("pod", "b"),), gpus=2, restart_at=18.0,
             restart_gpu_memory_utilization=0.85),
    Scenario(start=START, step=60.0, instance="vllm-c", extra_labels=(("pod", "c"),),
             dcgm_extra_labels=(("pod", "c"),), gpus=2, day=HEALTHY, storm=None, spec_k=0),
)
CONFIG = parse_config({
    "launch": {"max-num-seqs": 256, "max-model-len": 32768, "max-num-batched-tokens": 2048},
    "cost": {"dollars_per_hour": 8.0},
})


def points() -> list[Any]:
    return [p for sc in SCENARIOS for p in build_points(sc)]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.support.prometheus import start_prometheus

    base = Path(tmp_path_factory.mktemp("suggest-prom"))
    pts = points()
    server = start_prometheus(base / "prom", points=pts)
    store = build_store(base / "s.db", *SCENARIOS)
    try:
        yield server, store
    finally:
        server.stop()
        store.close()


def _recs(report: dict[str, Any]) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    return {(r["target"]["instance"], r["flag"], r["direction"]): r
            for r in report["recommendations"]}


def _findings(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f["target"]["instance"], f["id"]): f for f in report["findings"]}


def test_same_recommendations_from_store_and_prometheus(both: Any) -> None:
    server, store = both
    window = make_window("24h", str(SCENARIOS[0].end), time.time())
    local = suggest(LocalSource(store), window, CONFIG)
    remote = suggest(PrometheusSource(server.url), window, CONFIG)

    lr, rr = _recs(local), _recs(remote)
    assert set(lr) == set(rr)
    for key, r in lr.items():
        other = rr[key]
        for field in ("current", "suggested", "confidence", "current_source"):
            assert r[field] == other[field], (key, field, r[field], other[field])
        assert [e["finding"] for e in r["evidence"]] == [e["finding"] for e in other["evidence"]]
    # the known problems are there, per server
    assert ("vllm-a", "--max-num-seqs", "down") in lr
    assert ("vllm-a", "--gpu-memory-utilization", "up") in lr
    assert ("vllm-a", "--speculative-config", "off") in lr
    assert ("vllm-c", None, "none") in lr
    assert ("vllm-b", "--max-num-seqs", "down") not in lr  # storm before its restart

    lf, rf = _findings(local), _findings(remote)
    assert set(lf) == set(rf)
    for key, f in lf.items():
        if f["value"] is not None:
            assert math.isclose(f["value"], rf[key]["value"], rel_tol=1e-6, abs_tol=1e-9), key
        assert f["duration_seconds"] == rf[key]["duration_seconds"], key
        assert f["ranges"] == rf[key]["ranges"], key

    lt = {t["labels"]["instance"]: t for t in local["targets"]}
    rt = {t["labels"]["instance"]: t for t in remote["targets"]}
    assert lt.keys() == rt.keys() == {"vllm-a", "vllm-b", "vllm-c"}
    assert len(rt["vllm-b"]["segments"]) == 2
    assert [s["reason"] for s in lt["vllm-b"]["segments"]] == [
        s["reason"] for s in rt["vllm-b"]["segments"]]
    wl, wr = lt["vllm-a"]["workload"], rt["vllm-a"]["workload"]
    assert wl["prompt_tokens"]["p50"] == pytest.approx(wr["prompt_tokens"]["p50"], rel=1e-6)
    assert wl["request_rate_by_hour"] == wr["request_rate_by_hour"]
    assert local["partial"] is remote["partial"] is False


def test_prometheus_source_queries_and_time_range(both: Any) -> None:
    server, _ = both
    src = PrometheusSource(server.url)
    end = SCENARIOS[0].end
    vec = src.instant('vllm:num_requests_running{instance="vllm-a"}', end - 60)
    assert vec.kind == "vector" and len(vec.vector) == 1
    assert isinstance(vec.vector[0].value, float)  # Prometheus sends strings; we convert
    assert src.instant("1 + 1", end).scalar == 2.0
    mat = src.instant("vllm:num_requests_running[5m]", end - 60)
    assert mat.kind == "matrix" and len(mat.matrix) == 3
    assert src.instant("nonexistent_metric", end).vector == ()
    assert src.range("nonexistent_metric", end - 3600, end, 60) == ()
    rng = src.time_range()
    assert rng is not None
    assert abs(rng[0] - START) <= 300 and abs(rng[1] - (end - 60)) <= 300


def test_cli_fleet_mode_json(both: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = both
    until = str(SCENARIOS[0].end)
    assert main(["suggest", "--prometheus", server.url, "--since", "24h", "--until", until,
                 "--selector", '{instance=~"vllm-(a|c)"}', "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(t["labels"]["instance"] for t in report["targets"]) == ["vllm-a", "vllm-c"]
    assert report["source"] == f"prometheus {server.url}"
    # no launch args in fleet mode without a config: current values from cache_config_info
    gmu = next(r for r in report["recommendations"]
               if r["flag"] == "--gpu-memory-utilization")
    assert gmu["current"] == 0.9 and gmu["current_source"] == "cache_config_info"
