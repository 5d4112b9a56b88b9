"""suggest over 24-hour synthetic histories in a real SQLite store, evaluated by tuner.promql.

Each history has known problems (tests/support/history.py); the tests check the findings,
the recommendations and their evidence, conflicts, window splitting, and every bad input of
the issue (clear message, partial results marked, nothing lost, no traceback).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.history import (
    HEALTHY,
    IDLE_DAY,
    LONG_PREFILL,
    Regime,
    Scenario,
    build_store,
    day_start,
)
from tuner.cli import main
from tuner.config import Config, parse_config
from tuner.source import LocalSource, SourceError
from tuner.suggest import (
    SuggestError,
    choose_step,
    make_window,
    run_scheduled_suggest,
    run_suggest,
    suggest,
    validate_selector,
)
from tuner.workload import iso

START = day_start(time.time())
LAUNCH = {
    "max-num-seqs": 256,
    "max_model_len": 32768,
    "--max-num-batched-tokens": 2048,
    "speculative-config": '{"method": "ngram", "num_speculative_tokens": 3}',
}


def config(**extra: Any) -> Config:
    data: dict[str, Any] = {"launch": LAUNCH, "cost": {"dollars_per_hour": 8.0},
                            "slo": {"ttft_p99_seconds": 1.0, "itl_p99_seconds": 0.1}}
    data.update(extra)
    return parse_config(data)


def run(tmp_path: Path, *scenarios: Scenario, cfg: Config | None = None, since: str = "24h",
        until: float | None = None, **kw: Any) -> dict[str, Any]:
    with build_store(tmp_path / "s.db", *scenarios) as store:
        end = until if until is not None else scenarios[0].end
        report = suggest(LocalSource(store), make_window(since, str(end), time.time()),
                         cfg or config(), **kw)
    json.dumps(report)  # always JSON-ready
    return report


def recs(report: dict[str, Any], instance: str | None = None) -> dict[str, dict[str, Any]]:
    return {(r["flag"] or "none") + ":" + r["direction"]: r for r in report["recommendations"]
            if instance is None or r["target"].get("instance") == instance}


def findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in report["findings"]}


@pytest.fixture(scope="module")
def storm_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(Path(tmp_path_factory.mktemp("storm")), Scenario(start=START, step=60.0))


# -- the main day: storm 14:00-16:00, low spec acceptance, quiet night ---------------------


def test_storm_findings_have_values_durations_and_ranges(storm_report) -> None:
    f = findings(storm_report)
    kv = f["kv_saturated_with_queue"]
    assert kv["severity"] == "warning"
    assert 1.9 * 3600 <= kv["duration_seconds"] <= 2.2 * 3600
    assert kv["fraction"] == pytest.approx(2 / 24, abs=0.01)
    assert kv["ranges"][0]["start"] == iso(START + 14 * 3600)
    assert kv["ranges"][0]["end"][11:13] in ("15", "16")
    assert "KV cache above 95%" in kv["summary"] and "14:00" in kv["summary"]
    pre = f["preemptions"]
    # 5 preemptions/s against 12 requests/s = 417 per 1000 requests (not per 1000 seconds)
    assert pre["value"] == pytest.approx(5 / 12 * 1000, rel=0.05)
    assert "per 1000 requests" in pre["summary"]
    assert f["ttft_slo_breach"]["value"] > 1.0
    assert f["spec_decode"]["value"] == pytest.approx(1.08, rel=1e-3)
    assert f["prefix_cache"]["value"] == pytest.approx(0.35, rel=1e-3)
    assert f["cost"]["value"] > 0
    assert "ITL" not in " ".join(x["summary"] for x in storm_report["findings"])


def test_storm_recommendations(storm_report) -> None:
    r = recs(storm_report)
    seqs = r["--max-num-seqs:down"]
    assert seqs["current"] == 256 and seqs["current_source"] == "launch"
    # ~140 sequences were running when the cache filled: suggest below that
    assert 64 <= seqs["suggested"] < 140
    assert seqs["confidence"] == "high"
    assert [e["finding"] for e in seqs["evidence"]] == ["preemptions", "kv_saturated_with_queue",
                                                        "ttft_slo_breach"]
    assert seqs["evidence"][0]["ranges"]
    gmu = r["--gpu-memory-utilization:up"]
    assert gmu["current"] == 0.9 and gmu["current_source"] == "cache_config_info"
    assert gmu["suggested"] in (0.91, 0.92)
    spec = r["--speculative-config:off"]
    assert spec["current"] == 3 and spec["confidence"] == "high"
    mml = r["--max-model-len:down"]
    assert mml["current"] == 32768 and mml["suggested"] < 32768
    assert "none:none" not in r
    assert not any(k.startswith("--max-num-batched-tokens") for k in r)
    # both KV remedies at once: the report says how to combine them
    assert any("apply the memory change first" in c["resolution"]
               for c in storm_report["conflicts"])


def test_report_json_shape_is_stable(storm_report) -> None:
    assert {"version", "window", "findings", "recommendations", "workload", "conflicts",
            "targets", "partial", "source"} <= set(storm_report)
    assert set(storm_report["window"]) >= {"since", "start", "end", "seconds", "step_seconds",
                                           "rate_window_seconds", "notes"}
    for r in storm_report["recommendations"]:
        assert {"flag", "current", "suggested", "direction", "reason", "evidence",
                "confidence", "expected_effect", "target"} <= set(r)
        assert r["direction"] in ("up", "down", "off", "none")
        assert r["confidence"] in ("high", "medium", "low")
    assert storm_report["workload"]["version"] == 1
    assert storm_report["partial"] is False
    assert storm_report["targets"][0]["labels"] == {"instance": "vllm-0", "model_name": "tiny"}


def test_renderers(storm_report) -> None:
    from tuner.report import render_suggest_markdown, render_suggest_table

    table = render_suggest_table(storm_report)
    assert "--max-num-seqs" in table and "256 → " in table and "Conflicts" in table
    md = render_suggest_markdown(storm_report)
    assert md.startswith("# vLLM flag suggestions")
    assert "**`--speculative-config`**: turn off" in md
    assert "evidence: KV cache above 95%" in md


# -- other days ----------------------------------------------------------------------------


def test_healthy_day_says_no_change(tmp_path: Path) -> None:
    sc = Scenario(start=START, step=60.0, day=HEALTHY, storm=None, spec_k=0)
    report = run(tmp_path, sc)
    r = report["recommendations"]
    assert len(r) == 1 and r[0]["direction"] == "none" and r[0]["flag"] is None
    assert r[0]["reason"].startswith("no change")
    assert "no preemptions" in r[0]["reason"]
    assert not [f for f in report["findings"] if f["severity"] == "warning"]


def test_over_provisioned_day(tmp_path: Path) -> None:
    sc = Scenario(start=START, step=60.0, day=IDLE_DAY, storm=None, spec_k=0)
    report = run(tmp_path, sc)
    f = findings(report)["over_provisioned"]
    assert "no queue (over-provisioned)" in f["summary"] and f["value"] < 30
    assert [r["direction"] for r in report["recommendations"]] == ["none"]


def test_queue_with_headroom_raises_max_num_seqs(tmp_path: Path) -> None:
    # the batch is full (running = max-num-seqs), requests wait, KV at 50%, GPUs at 60%
    full = Regime(6.0, 0.5, 12, 256, 0.0, 0.3, 0.02, 60.0)
    sc = Scenario(start=START, step=60.0, storm=None, spec_k=0,
                  extra_regimes=((9.0, 13.0, full),))
    report = run(tmp_path, sc)
    seqs = recs(report)["--max-num-seqs:up"]
    assert seqs["current"] == 256 and seqs["suggested"] == 384
    assert seqs["confidence"] == "high"
    assert seqs["evidence"][0]["ranges"][0]["start"] == iso(START + 9 * 3600)


def test_itl_breach_during_long_prefills_lowers_batched_tokens(tmp_path: Path) -> None:
    sc = Scenario(start=START, step=60.0, storm=None, spec_k=0,
                  extra_regimes=((10.0, 13.0, LONG_PREFILL),))
    report = run(tmp_path, sc)
    f = findings(report)
    assert "itl_slo_breach" in f and "itl_breach_during_prefill" in f
    mbt = recs(report)["--max-num-batched-tokens:down"]
    assert mbt["current"] == 2048 and mbt["suggested"] == 1024


def test_ttft_breach_with_itl_headroom_raises_batched_tokens(tmp_path: Path) -> None:
    slow_prefill = Regime(5.0, 0.5, 0, 24, 0.0, 0.6, 0.012, 70.0)
    sc = Scenario(start=START, step=60.0, storm=None, spec_k=0,
                  extra_regimes=((9.0, 12.0, slow_prefill),))
    report = run(tmp_path, sc, cfg=config(slo={"ttft_p99_seconds": 1.0,
                                               "itl_p99_seconds": 0.2}))
    mbt = recs(report)["--max-num-batched-tokens:up"]
    assert mbt["suggested"] == 4096
    assert "--max-num-seqs:down" not in recs(report)  # the KV cache was not the cause


def test_restart_with_different_flags_splits_the_window(tmp_path: Path) -> None:
    sc = Scenario(start=START, step=60.0, restart_at=18.0, restart_gpu_memory_utilization=0.85)
    report = run(tmp_path, sc)
    t = report["targets"][0]
    assert len(t["segments"]) == 2
    assert "gpu_memory_utilization 0.9 -> 0.85" in t["segments"][1]["reason"]
    assert any("window split into 2 parts" in n for n in t["notes"])
    # the storm was before the restart: it is in the first part's findings...
    assert "preemptions" in {f["id"] for f in t["segments"][0]["findings"]}
    # ...and the flags running now (since 18:00) need no KV change
    r = recs(report)
    assert "--max-num-seqs:down" not in r
    assert r["--speculative-config:off"]["current"] == 3
    assert not any(f["id"] == "restarts" for f in report["findings"])


def test_counter_reset_from_restart_with_same_flags(tmp_path: Path) -> None:
    clean = run(tmp_path / "a", Scenario(start=START, step=60.0))
    reset = run(tmp_path / "b", Scenario(start=START, step=60.0, restart_at=10.0))
    # increase() and rate() absorb the reset: totals and the storm ratio are unchanged
    for key in ("requests", "preemptions"):
        assert reset["targets"][0]["window_totals"][key] == pytest.approx(
            clean["targets"][0]["window_totals"][key], rel=0.01)
    assert findings(reset)["preemptions"]["value"] == pytest.approx(
        findings(clean)["preemptions"]["value"], rel=0.01)
    assert findings(reset)["restarts"]["summary"].startswith("1 restart(s) without")
    r = recs(reset)
    # a restart without a flag change may be an OOM: lower memory, and say why up lost
    assert r["--gpu-memory-utilization:down"]["suggested"] == 0.88
    assert "--gpu-memory-utilization:up" not in r
    assert any("stability wins" in c["resolution"] for c in reset["conflicts"])


def test_old_vllm_names_give_the_same_recommendations(tmp_path: Path, storm_report) -> None:
    report = run(tmp_path, Scenario(start=START, step=60.0, v0_names=True))
    assert set(recs(report)) == set(recs(storm_report))
    assert report["partial"] is False


def test_fleet_in_one_store_per_instance_with_gpu_attribution(tmp_path: Path) -> None:
    a = Scenario(start=START, step=60.0, instance="vllm-a", extra_labels=(("pod", "a"),),
                 dcgm_extra_labels=(("pod", "a"),), gpus=2)
    b = Scenario(start=START, step=60.0, instance="vllm-b", storm=None, spec_k=0,
                 day=HEALTHY, extra_labels=(("pod", "b"),), dcgm_extra_labels=(("pod", "b"),),
                 gpus=2)
    report = run(tmp_path, a, b)
    assert [t["labels"]["instance"] for t in report["targets"]] == ["vllm-a", "vllm-b"]
    assert "--max-num-seqs:down" in recs(report, "vllm-a")
    assert "--gpu-memory-utilization:up" in recs(report, "vllm-a")  # GPUs of pod a
    assert list(recs(report, "vllm-b")) == ["none:none"]
    only_a = run(tmp_path / "sel", a, b, selector='{instance="vllm-a"}')
    assert [t["labels"]["instance"] for t in only_a["targets"]] == ["vllm-a"]


# -- bad input -----------------------------------------------------------------------------


def test_missing_dcgm_marks_partial_and_skips_gpu_rules(tmp_path: Path) -> None:
    report = run(tmp_path, Scenario(start=START, step=60.0, gpus=0))
    t = report["targets"][0]
    assert report["partial"] is True and t["partial"] is True
    assert any("DCGM_FI_DEV_GPU_UTIL" in m for m in t["missing"])
    assert any(s.startswith("--gpu-memory-utilization up: needs DCGM") for s in t["skipped"])
    assert "--max-num-seqs:down" in recs(report)  # the rest still works


def test_no_spec_decode_is_not_a_problem(tmp_path: Path) -> None:
    report = run(tmp_path, Scenario(start=START, step=60.0, spec_k=0))
    assert "spec_decode" not in findings(report)
    assert not any(k.startswith("--speculative") for k in recs(report))
    assert report["partial"] is False


def test_old_vllm_missing_metrics(tmp_path: Path) -> None:
    sc = Scenario(start=START, step=60.0,
                  omit=frozenset({"vllm:num_preemptions", "vllm:inter_token_latency",
                                  "vllm:cache_config_info"}))
    report = run(tmp_path, sc)
    t = report["targets"][0]
    assert report["partial"] is True
    assert any("vllm:num_preemptions_total" in m for m in t["missing"])
    assert any("inter_token_latency" in m for m in t["missing"])
    # KV full + TTFT breach still recommends fewer sequences; gmu comes from nowhere
    r = recs(report)
    assert "--max-num-seqs:down" in r
    assert r["--gpu-memory-utilization:up"]["current"] is None
    assert r["--gpu-memory-utilization:up"]["current_source"] == "unknown"


def test_empty_window(tmp_path: Path) -> None:
    sc = Scenario(start=START, hours=2.0, step=60.0)
    with build_store(tmp_path / "s.db", sc) as store:
        before = store.sample_count()
        with pytest.raises(SuggestError) as err:
            suggest(LocalSource(store), make_window("1h", str(START - 7200), time.time()),
                    config())
        assert store.sample_count() == before
    msg = str(err.value)
    assert "no vLLM metrics between" in msg
    assert f"holds data from {iso(START)}" in msg


def test_window_longer_than_history_and_retention(tmp_path: Path) -> None:
    sc = Scenario(start=START + 12 * 3600, hours=12.0, step=60.0, storm=(2.0, 4.0))
    report = run(tmp_path, sc, since="24h", retention=6 * 3600.0)
    notes = " ".join(report["window"]["notes"])
    assert "longer than the store's retention (6h)" in notes
    assert "only 12h of the requested 1d has data" in notes
    assert report["partial"] is True
    assert any("data covers 12h" in n for n in report["targets"][0]["notes"])
    assert "--max-num-seqs:down" in recs(report)  # partial, but still useful


def test_selector_that_matches_nothing(tmp_path: Path) -> None:
    with pytest.raises(SuggestError, match=r'no vLLM metrics matching \{model_name="other"\}'):
        run(tmp_path, Scenario(start=START, hours=2.0, step=60.0),
            selector='{model_name="other"}')


@pytest.mark.parametrize("since", ["abc", "24", "5x", "-1h", ""])
def test_since_that_does_not_parse(since: str) -> None:
    with pytest.raises(SuggestError, match="--since"):
        make_window(since, None, time.time())


def test_bad_until_and_selector() -> None:
    with pytest.raises(SuggestError, match="--until 'yesterday'"):
        make_window("1h", "yesterday", time.time())
    with pytest.raises(SuggestError, match="--selector"):
        validate_selector("model_name=x")
    assert validate_selector('{model_name="x", instance=~"a.*"}')
    assert make_window("24h", "2026-11-20T00:00:00Z", 0).end == 1795132800.0
    assert choose_step(86400) == 300.0 and choose_step(600) == 5.0
    assert choose_step(3600) == 15.0 and choose_step(7 * 86400) == 3600.0


def test_unreachable_prometheus() -> None:
    from tests.support.common import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SourceError, match=f"Prometheus at {url} is unreachable"):
        run_suggest(None, "24h", prometheus=url)


def test_cli_bad_inputs_give_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.common import free_port

    assert main(["suggest", "--since", "abc"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tuner suggest: error: --since 'abc'") and "Traceback" not in err
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["suggest", "--prometheus", url]) == 1
    err = capsys.readouterr().err
    assert f"Prometheus at {url} is unreachable" in err and "Traceback" not in err


def test_cli_formats_over_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sc = Scenario(start=START, step=60.0)
    build_store(tmp_path / "tuner.db", sc).close()
    cfg = tmp_path / "tuner.yaml"
    cfg.write_text(yaml.safe_dump({"store": {"path": "tuner.db", "retention": "30d"},
                                   "launch": LAUNCH, "cost": {"dollars_per_hour": 8}}))
    until = iso(sc.end)
    assert main(["suggest", "--config", str(cfg), "--since", "24h", "--until", until,
                 "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert any(r["flag"] == "--max-num-seqs" for r in report["recommendations"])
    assert main(["suggest", "-c", str(cfg), "--until", until]) == 0
    assert "Recommendations" in capsys.readouterr().out
    assert main(["suggest", "-c", str(cfg), "--until", until, "--format", "markdown"]) == 0
    assert "### Workload" in capsys.readouterr().out
    missing = tmp_path / "other.yaml"
    missing.write_text(yaml.safe_dump({"store": {"path": "nope.db"}}))
    assert main(["suggest", "-c", str(missing)]) == 1
    assert "nope.db does not exist" in capsys.readouterr().err


def test_scheduled_suggest_keeps_the_last_reports(tmp_path: Path) -> None:
    sc = Scenario(start=START, step=60.0)
    cfg = config(suggest={"schedule": "0 * * * *", "since": "6h", "keep": 2})
    with build_store(tmp_path / "s.db", sc) as store:
        for h in (16, 17, 18):
            report = run_scheduled_suggest(cfg, store, START + h * 3600.0)
            assert report["window"]["end"] == iso(START + h * 3600.0)
        docs = store.documents("suggest_report")
        assert [k for k, _, _ in docs] == [iso(START + 17 * 3600), iso(START + 18 * 3600)]
        # the 16:00 run saw the storm; the stored 18:00 run is a full report too
        assert docs[-1][2]["recommendations"]
        # no data yet: an error report is stored, the scheduler never sees an exception
        empty = run_scheduled_suggest(cfg, store, START - 86400.0)
        assert "no vLLM metrics" in empty["error"]
        assert len(store.documents("suggest_report")) == 2


def test_url_that_is_not_a_prometheus() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"no such page")

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        with pytest.raises(SourceError, match=f"Prometheus at {url} is not ready: HTTP 404"):
            run_suggest(None, "1h", prometheus=url)
    finally:
        srv.shutdown()
        srv.server_close()
