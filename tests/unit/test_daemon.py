"""The daemon's scrape → store loop against real HTTP servers on loopback.

Targets here are the DCGM-exporter stand-in and scripted servers that produce the bad inputs
(malformed, slow, non-200, oversized) a real vLLM will not produce on demand. The real-vLLM
path is covered in tests/e2e/test_scrape_vllm.py.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.common import free_port, wait_http
from tests.support.dcgm import DcgmExporter, ScriptedTarget
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.store import Matcher, Store, is_stale


def make_config(tmp_path: Path, targets: list[dict[str, object]], **extra: object):  # type: ignore[no-untyped-def]
    data = {
        "targets": targets,
        "scrape_interval": "1s",
        "scrape_timeout": "500ms",
        "store": {"path": str(tmp_path / "tuner.db")},
        "listen": "127.0.0.1:0",
        **extra,
    }
    return parse_config(data, str(tmp_path / "tuner.yaml"))


def series(store: Store, name: str, **labels: str):  # type: ignore[no-untyped-def]
    ms = [Matcher("__name__", "=", name)] + [Matcher(k, "=", v) for k, v in labels.items()]
    return store.select(ms, 0, 2**62)


def metric_value(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_bad_targets_are_counted_marked_down_and_do_not_stop_others(
    tmp_path: Path, dcgm_exporter: DcgmExporter
) -> None:
    malformed, slow, broken, huge = (ScriptedTarget() for _ in range(4))
    try:
        malformed.set('vllm:num_requests_running{engine="0",model_name="ti')
        slow.set("vllm:num_requests_running 1\n", delay=2.0)
        broken.set("oops", status=500)
        huge.set("x 1\n" * 300_000)  # ~1.2 MB > the 1 MiB cap below
        refused = f"http://127.0.0.1:{free_port()}/metrics"
        cfg = make_config(
            tmp_path,
            [
                {"name": "gpu", "url": dcgm_exporter.url, "kind": "dcgm"},
                {"name": "malformed", "url": malformed.url},
                {"name": "slow", "url": slow.url},
                {"name": "broken", "url": broken.url},
                {"name": "huge", "url": huge.url},
                {"name": "refused", "url": refused},
            ],
            max_exposition_bytes="1MiB",
        )
        daemon = Daemon(cfg)
        daemon.start()
        try:
            for _ in range(2):
                outcomes = {o.target.name: o for o in daemon.scrape_once()}
            kinds = {n: o.error_kind for n, o in outcomes.items()}
            assert kinds == {
                "gpu": "",
                "malformed": "malformed",
                "slow": "timeout",
                "broken": "http_status",
                "huge": "oversized",
                "refused": "connection",
            }
            assert "HTTP 500" in outcomes["broken"].error
            host, port = daemon.address
            text = httpx.get(f"http://{host}:{port}/metrics", trust_env=False).text
            for name, kind in kinds.items():
                up = metric_value(text, "tuner_target_up", target=name)
                assert up == (0.0 if kind else 1.0), name
                if kind:
                    assert metric_value(text, "tuner_errors_total", kind=kind, target=name) >= 2
            assert metric_value(text, "tuner_samples_stored_total") > 0
            assert httpx.get(f"http://{host}:{port}/healthz", trust_env=False).status_code == 200
            store = daemon.store
            # up is stored per target like Prometheus does
            ups = {s.labels["instance"]: s.values[-1] for s in series(store, "up")}
            assert ups == {
                "gpu": 1.0,
                "malformed": 0.0,
                "slow": 0.0,
                "broken": 0.0,
                "huge": 0.0,
                "refused": 0.0,
            }
            util = series(store, "DCGM_FI_DEV_GPU_UTIL")
            assert len(util) == 8 and all(len(s.values) >= 2 for s in util)
            assert {s.labels["hostname"] for s in util} == {"node-1"}
            assert {s.labels["job"] for s in util} == {"dcgm"}
        finally:
            daemon.stop()
    finally:
        for t in (malformed, slow, broken, huge):
            t.close()


def test_nan_inf_duplicates_counter_reset_and_vanishing_series(tmp_path: Path) -> None:
    target = ScriptedTarget()
    try:
        cfg = make_config(tmp_path, [{"name": "v", "url": target.url}])
        daemon = Daemon(cfg)
        try:
            bodies = [
                'c_total 10\ng NaN\nh +Inf\nd{a="1"} 1\nd{a="1"} 2\nold 1\n',
                'c_total 20\ng 1\nh -Inf\nd{a="1"} 3\nold 1\n',
                'c_total 5\ng 2\nh 0\nd{a="1"} 4\n',  # counter reset; `old` vanished
            ]
            for body in bodies:
                target.set(body)
                daemon.scrape_once()
                time.sleep(0.01)
            store = daemon.store
            assert list(series(store, "c_total")[0].values) == [10.0, 20.0, 5.0]
            g = series(store, "g")[0].values
            assert math.isnan(g[0]) and list(g[1:]) == [1.0, 2.0]
            assert list(series(store, "h")[0].values) == [math.inf, -math.inf, 0.0]
            assert list(series(store, "d")[0].values) == [1.0, 3.0, 4.0]  # first duplicate kept
            old = series(store, "old")[0].values
            assert list(old[:2]) == [1.0, 1.0] and is_stale(old[2])
            dup = daemon.metrics.errors.labels("duplicate_series", "v")._value.get()
            assert dup == 1
            # a failed scrape marks every series of the target stale, and up=0
            target.set("", status=503)
            daemon.scrape_once()
            assert all(
                is_stale(s.values[-1]) for s in series(store, "c_total") + series(store, "g")
            )
            assert series(store, "up")[0].values[-1] == 0.0
        finally:
            daemon.stop()
    finally:
        target.close()


def test_vllm_version_change_mid_flight_keeps_one_canonical_series(tmp_path: Path) -> None:
    target = ScriptedTarget()
    try:
        daemon = Daemon(make_config(tmp_path, [{"name": "v", "url": target.url}]))
        try:
            target.set('vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n')
            daemon.scrape_once()
            time.sleep(0.01)
            target.set(
                'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
                'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
            )
            daemon.scrape_once()
            time.sleep(0.01)
            target.set('vllm:kv_cache_usage_perc{model_name="m"} 0.75\n')
            daemon.scrape_once()
            kv = series(daemon.store, "vllm:kv_cache_usage_perc")
            assert len(kv) == 1
            assert list(kv[0].values) == [0.25, 0.5, 0.75]
            raw = series(daemon.store, "vllm:gpu_cache_usage_perc")[0].values
            assert list(raw[:2]) == [0.25, 0.5] and is_stale(raw[2])  # raw name kept, then gone
        finally:
            daemon.stop()
    finally:
        target.close()


def test_store_write_failure_is_retried_without_losing_scrapes(tmp_path: Path) -> None:
    target = ScriptedTarget()
    try:
        cfg = make_config(tmp_path, [{"name": "v", "url": target.url}])
        store = Store(cfg.store.path, busy_timeout=0.2)
        daemon = Daemon(cfg, store=store)
        try:
            target.set("m 1\n")
            daemon.scrape_once()
            locker = sqlite3.connect(cfg.store.path)
            locker.execute("BEGIN EXCLUSIVE")
            target.set("m 2\n")
            time.sleep(0.01)
            daemon.scrape_once()  # cannot write: kept in the retry buffer
            assert daemon.metrics.retry_buffer._value.get() == 1
            assert daemon.metrics.errors.labels("store", "")._value.get() >= 1
            locker.rollback()
            locker.close()
            target.set("m 3\n")
            time.sleep(0.01)
            daemon.scrape_once()
            assert list(series(store, "m")[0].values) == [1.0, 2.0, 3.0]
            assert daemon.metrics.retry_buffer._value.get() == 0
        finally:
            daemon.stop()
    finally:
        target.close()


def test_tuner_run_serves_health_and_stops_cleanly_on_sigterm(
    tmp_path: Path, dcgm_exporter: DcgmExporter
) -> None:
    port = free_port()
    cfg = tmp_path / "tuner.yaml"
    cfg.write_text(
        f"targets:\n  - {{name: gpu, url: '{dcgm_exporter.url}', kind: dcgm}}\n"
        f"scrape_interval: 1s\nstore: {{path: tuner.db, retention: 1h}}\n"
        f"listen: 127.0.0.1:{port}\n"
    )
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuner", "run", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc, log)
        deadline = time.monotonic() + 20
        while dcgm_exporter.requests < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dcgm_exporter.requests >= 3
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped cleanly" in log.read_text()
    with Store(tmp_path / "tuner.db", read_only=True) as store:
        assert len(series(store, "DCGM_FI_DEV_GPU_UTIL")) == 8


def test_listen_address_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = make_config(tmp_path, [], listen=f"127.0.0.1:{port}")
        daemon = Daemon(cfg)
        with pytest.raises(Exception, match=f"listen 127.0.0.1:{port}: cannot bind"):
            daemon.start()
        daemon.stop()
