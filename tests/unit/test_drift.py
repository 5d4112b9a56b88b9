"""Workload drift: the distance between fingerprints, the config, and the daemon's check
over a real store (synthetic vLLM histories, tests.support.history) with its alert and metrics."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.support.history import HEALTHY, LONG_PREFILL, Scenario, build_store, day_start
from tuner.config import Config, DriftConfig, parse_config
from tuner.daemon.drift import DriftWatch, latest_tune_result, read_tuned_workload
from tuner.daemon.tuning import drifted_load
from tuner.drift import describe_fingerprint, workload_drift
from tuner.errors import ConfigError
from tuner.notify import Notifier
from tuner.promql import Engine
from tuner.workload import fingerprint

START = day_start(time.time())


def _fp(p50: float, p90: float, out50: float = 100.0, out90: float = 200.0,
        rate: float | None = 2.0, prefix: float | None = 0.1) -> dict[str, Any]:
    return {"prompt_tokens": {"p50": p50, "p90": p90, "mean": p50},
            "output_tokens": {"p50": out50, "p90": out90, "mean": out50},
            "request_rate_per_s": rate, "prefix_cache_hit_rate": prefix}


def test_same_workload_has_no_drift() -> None:
    d = workload_drift(_fp(300, 600), _fp(300, 600))
    assert d.distance == 0.0 and not d.drifted and d.changes == ()
    assert set(d.components) == {"prompt_tokens", "output_tokens", "request_rate", "prefix_reuse"}


def test_longer_prompts_drift_in_doublings_and_say_what_changed() -> None:
    d = workload_drift(_fp(300, 600), _fp(1200, 2400), threshold=1.0)
    assert d.components["prompt_tokens"] == pytest.approx(2.0)  # x4 = two doublings
    assert d.distance == pytest.approx(2.0) and d.drifted and d.largest == "prompt_tokens"
    assert len(d.changes) == 1
    assert "prompt tokens" in d.changes[0] and "300 -> 1200" in d.changes[0]


def test_rate_and_prefix_components() -> None:
    d = workload_drift(_fp(300, 600, rate=2.0, prefix=0.1), _fp(300, 600, rate=0.5, prefix=0.6))
    assert d.components["request_rate"] == pytest.approx(2.0)
    assert d.components["prefix_reuse"] == pytest.approx(2.0)  # 50 points / 25 per unit
    assert any("arrival rate" in c for c in d.changes)
    assert any("prefix-cache hit rate: 10% -> 60%" in c for c in d.changes)


def test_unknown_components_are_not_zero_drift() -> None:
    # a closed-loop tune has no arrival rate: rate is unknown, not "unchanged"
    d = workload_drift(_fp(300, 600, rate=None), _fp(300, 600, rate=50.0))
    assert "request_rate" in d.unknown and "request_rate" not in d.components
    nothing = workload_drift({"prompt_tokens": None}, {"output_tokens": {}})
    assert math.isnan(nothing.distance) and not nothing.drifted
    assert set(nothing.unknown) == {"prompt_tokens", "output_tokens", "request_rate",
                                    "prefix_reuse"}


def test_describe_fingerprint() -> None:
    text = describe_fingerprint(_fp(300, 600))
    assert text == ("prompt p50/p90 300/600 tok, output p50/p90 100/200 tok, 2 req/s, "
                    "prefix hits 10%")
    assert "arrival rate unknown" in describe_fingerprint(_fp(1, 2, rate=None))


# -- configuration ---------------------------------------------------------------------------


def _config(drift: Any, tune: bool = False) -> Config:
    doc: dict[str, Any] = {"targets": [{"name": "v", "url": "http://127.0.0.1:1/metrics"}]}
    if drift is not None:
        doc["drift"] = drift
    if tune:
        doc["tune"] = {"config": "tune.yaml", "schedule": "0 3 * * *"}
    return parse_config(doc, "/etc/tuner/tuner.yaml")


def test_drift_config_defaults_and_paths() -> None:
    assert _config(None).drift == DriftConfig()  # off without a tuning window
    assert _config(None, tune=True).drift.enabled  # follows the tuning window's runs
    cfg = _config({"tune_result": "runs/best.json", "threshold": 0.5, "window": "30m"}).drift
    assert cfg.enabled and cfg.tune_result == Path("/etc/tuner/runs/best.json")
    assert (cfg.threshold, cfg.window, cfg.interval) == (0.5, 1800.0, 300.0)


@pytest.mark.parametrize(("drift", "key", "words"), [
    ({"tune_result": "b.json", "threshold": 0}, "drift.threshold", "positive number"),
    ({"tune_result": "b.json", "threshold": 40}, "drift.threshold", "out of range"),
    ({"tune_result": "b.json", "threshold": 0.01}, "drift.threshold", "out of range"),
    ({"tune_result": "b.json", "window": "10s"}, "drift.window", "too short"),
    ({"tune_result": "b.json", "treshold": 1}, "drift.treshold", "unknown key"),
    ({"threshold": 1.0}, "drift.tune_result", "required without a tuning window"),
])
def test_bad_drift_config_names_the_key(drift: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config(drift)
    assert f"/etc/tuner/tuner.yaml: {key}:" in str(err.value) and words in str(err.value)


# -- tune results ----------------------------------------------------------------------------


def test_tune_result_without_fingerprint_disables_drift_with_a_note(tmp_path: Path) -> None:
    old = tmp_path / "best.json"
    old.write_text(json.dumps({"flags": {"max-num-seqs": 8}}))  # a run from before fingerprints
    workload, note = read_tuned_workload(old)
    assert workload is None and "no workload fingerprint" in note and str(old) in note
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert read_tuned_workload(broken)[0] is None


def test_latest_tune_result_follows_the_newest_run(tmp_path: Path) -> None:
    assert latest_tune_result(tmp_path) is None
    for stamp in ("20261201T030000Z", "20261202T030000Z"):
        (tmp_path / stamp).mkdir()
        (tmp_path / stamp / "best.json").write_text("{}")
    assert latest_tune_result(tmp_path) == tmp_path / "20261202T030000Z" / "best.json"


def test_drifted_load_keeps_the_run_shape_and_takes_the_traffic(tmp_path: Path) -> None:
    load = {"prompt_tokens": 128, "output_tokens": 64, "concurrency": 8, "duration": 20,
            "seed": 3, "max_error_rate": 0.01}
    new = drifted_load(load, tmp_path / "workload.json")
    assert new == {"concurrency": 8, "duration": 20, "seed": 3, "max_error_rate": 0.01,
                   "workload": str(tmp_path / "workload.json")}


# -- the daemon's check over a real store ------------------------------------------------------


def _scenario(day: Any) -> Scenario:
    return Scenario(start=START, hours=2.0, step=15.0, quiet_nights=None, storm=None, day=day)


def _watch(tmp_path: Path, tuned: dict[str, Any] | None, live_day: Any,
           now: float) -> tuple[DriftWatch, CollectorRegistry, Any]:
    result = tmp_path / "best.json"
    result.write_text(json.dumps({"flags": {}, **({"workload": tuned} if tuned else {})}))
    store = build_store(tmp_path / "live.db", _scenario(live_day))
    cfg = _config({"tune_result": str(result), "window": "1h", "threshold": 1.0})
    watch = DriftWatch(cfg, Engine(reader=store), Notifier([]), "http://127.0.0.1:9464",
                       clock=lambda: now)
    registry = CollectorRegistry()
    watch.register(registry)
    return watch, registry, store


def _tuned_fingerprint(tmp_path: Path, sc: Scenario) -> dict[str, Any]:
    """The fingerprint of the scenario's last hour, as a tune result would store it."""
    with build_store(tmp_path / "tuned.db", sc) as tuned_store:
        return fingerprint(Engine(reader=tuned_store), sc.end - 3600, sc.end)


def test_daemon_check_raises_workload_drift_with_both_fingerprints(tmp_path: Path) -> None:
    sc = _scenario(HEALTHY)
    tuned = _tuned_fingerprint(tmp_path, sc)
    # production now sends prompts of ~2,500 tokens instead of ~300
    watch, registry, store = _watch(tmp_path, tuned, LONG_PREFILL, sc.end)
    with store:
        drift = watch.check()
        assert drift is not None and drift.drifted, watch.note
        assert drift.largest == "prompt_tokens" and drift.distance > 2.0
        [alert] = watch.alerts()
        assert alert.labels["alertname"] == "WorkloadDrift" and alert.state == "firing"
        desc = alert.annotations["description"]
        assert "What changed: prompt tokens" in desc
        assert f"Tuned for: {describe_fingerprint(tuned)}" in desc
        assert f"Live (last 60 min): {describe_fingerprint(watch.live or {})}" in desc
        assert watch.live_workload is not None  # the next tuning window tunes against it
        text = generate_latest(registry).decode()
        assert f"tuner_workload_drift_distance {drift.distance}" in text
        assert 'tuner_workload_drift_component{component="prompt_tokens"}' in text
        assert "tuner_workload_drift_enabled 1.0" in text


def test_daemon_check_within_threshold_and_resolution(tmp_path: Path) -> None:
    sc = _scenario(HEALTHY)
    tuned = _tuned_fingerprint(tmp_path, sc)
    watch, _, store = _watch(tmp_path, tuned, HEALTHY, sc.end)
    with store:
        drift = watch.check()
        assert drift is not None and not drift.drifted and drift.distance < 0.1
        assert watch.alerts() == [] and watch.live_workload is None
        # an alert that was firing is resolved (sent once with its end time), then dropped
        watch.settings = DriftConfig(enabled=True, threshold=0.05, window=3600.0)
        shifted = {**tuned, "request_rate_per_s": tuned["request_rate_per_s"] * 4}
        watch.source.write_text(json.dumps({"workload": shifted}))
        assert watch.check() is not None and len(watch.alerts()) == 1
        watch.source.write_text(json.dumps({"workload": tuned}))
        watch.settings = DriftConfig(enabled=True, threshold=1.0, window=3600.0)
        watch.check()
        assert watch.alerts() == []


def test_daemon_check_without_fingerprint_or_traffic_is_a_note(tmp_path: Path) -> None:
    sc = _scenario(HEALTHY)
    watch, registry, store = _watch(tmp_path, None, HEALTHY, sc.end)
    with store:
        assert watch.check() is None and "no workload fingerprint" in watch.note
        assert "tuner_workload_drift_enabled 0.0" in generate_latest(registry).decode()
    # a window long after the scenario has no requests: not compared
    later = tmp_path / "later"
    later.mkdir()
    watch2, _, store2 = _watch(later, {"prompt_tokens": {"p50": 1}}, HEALTHY, sc.end + 6 * 3600)
    with store2:
        assert watch2.check() is None and "fewer than drift.min_requests" in watch2.note
