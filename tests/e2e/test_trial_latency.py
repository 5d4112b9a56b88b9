"""A trial's measurement on a real vLLM: per-request figures from the load client and the
canary's own TTFT/ITL/queue-time histograms over the load window, side by side.

Uses the session's shared ``vllm_server`` (tests.support.vllm): the trial's measuring step
(``tuner.tune.trial.measure_canary``, what ``run_trial`` runs once its canary is up) loads and
scrapes the running server as ``trial-1`` into a real store; the server is not restarted.
Run under ``flock /tmp/tuner-vllm.lock``.
"""

from __future__ import annotations

import csv
import math
import threading
from pathlib import Path

import pytest

from tests.support.vllm import VllmServer
from tuner.scrape import make_client
from tuner.store import Store
from tuner.tune import TrialContext, build_load_spec, parse_tune_config
from tuner.tune.records import Trial, TrialKind, score_trial
from tuner.tune.trial import TrialRun, measure_canary

pytestmark = pytest.mark.e2e


def test_trial_result_has_per_request_figures_and_server_histograms(
    vllm_server: VllmServer, tmp_path: Path
) -> None:
    cfg = parse_tune_config({
        "launch": {"model": str(vllm_server.canary.spec.model),
                   "served_model_name": vllm_server.model},
        "load": {"prompt_tokens": 96, "output_tokens": 24, "concurrency": 6,
                 "duration": 8, "warmup_requests": 2},
        "slo": {"ttft_p99_seconds": 30, "itl_p99_seconds": 5},
    }, str(tmp_path / "tune.yaml"))
    store = Store(tmp_path / "tune.db")
    client = make_client(max_connections=4)
    ctx = TrialContext(cfg, store, tmp_path / "logs", client, build_load_spec(cfg.load),
                       threading.Event())
    timings: dict[str, float] = {}
    try:
        run = measure_canary(ctx, vllm_server.canary, vllm_server.handle, 1,
                             TrialRun([]), timings)
    finally:
        client.close()
    assert run is not None and run.reason == "", run.log_tail if run else None
    m = run.measurement
    assert m is not None and m.requests >= 6 and m.errors == 0
    # client side, per request: TPOT, the longest stall, chunks with their token counts
    assert 0 < m.ttft_p50 <= m.ttft_p99
    assert 0 < m.tpot_p50 <= m.tpot_p99 < 5
    assert m.tokens_per_chunk >= 1 and m.max_stall_p99 > 0
    # the per-chunk ITL divides each gap by its tokens: no microsecond "decode steps"
    assert m.itl_p50 > 1e-4, m.itl_p50
    # server side: the canary's own histograms over the same window
    for name in ("server_ttft_p50", "server_ttft_p99", "server_itl_p50", "server_itl_p99",
                 "server_itl_mean", "server_queue_p50", "server_queue_p99"):
        assert math.isfinite(getattr(m, name)) and getattr(m, name) >= 0, name
    assert m.server_ttft_p50 <= m.server_ttft_p99
    assert 0 < m.server_itl_mean < 5
    # the server's TTFT starts when the engine has the request: never above the client's
    # by more than the histogram's bucket interpolation allows
    assert m.server_ttft_p50 <= 2 * m.ttft_p50 + 0.05
    # per-request figures beside the trial's log
    rows = list(csv.DictReader((tmp_path / "logs" / "trial-0001-requests.csv").open()))
    assert len(rows) == m.requests
    for row in rows:
        assert row["ok"] == "1" and int(row["output_tokens"]) == 24
        assert sum(int(n) for n in row["chunk_tokens"].split()) == 24
        assert len(row["chunk_gaps_ms"].split()) == int(row["chunks"]) - 1
        assert float(row["tpot_s"]) > 0
    # ... and they are part of the persisted trial result
    state, value, loss, viol = score_trial(m, cfg.objective, cfg.slo, None)
    body = Trial(1, TrialKind.BASELINE, {}, {}, state, loss, value, measurement=m,
                 violations=viol, measures_baseline=True).to_json()
    assert body["measurement"]["server_itl_p99"] == pytest.approx(m.server_itl_p99)
    assert body["measurement"]["tpot_p99"] == pytest.approx(m.tpot_p99)
    store.close()
