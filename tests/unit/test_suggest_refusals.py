"""suggest on refused and failed requests (issue 10): each finding and recommendation function
alone on a hand-built view, then the whole report over a synthetic store with admission
control, counter resets, an unknown reason and a server without ``http_requests_total``.

Never "no change" while requests fail or are refused.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.history import BUSY, Regime, Scenario, build_store, day_start
from tests.unit.test_suggest_rules import STEP, steps, storm, view
from tuner.config import parse_config
from tuner.report import render_suggest_markdown, render_suggest_table
from tuner.source import LocalSource
from tuner.suggest import (
    CurrentSource,
    Direction,
    FindingId,
    Rule,
    Skip,
    WindowView,
    analyze_view,
    find,
    make_window,
    no_change,
    resolve,
    suggest,
)
from tuner.suggest import findings as fnd
from tuner.suggest import recommendations as rec

F = FindingId


def refusing(kv: float = 0.1, running: float = 2.0, launch: dict[str, Any] | None = None,
             reasons: dict[str, float] | None = None, **kw: Any) -> WindowView:
    """60 one-minute steps; requests refused (500 per 1000 arriving) on steps 10-49."""
    totals = {"requests": 480.0, "admission_rejections": 460.0, "http_requests": 940.0,
              "http_5xx": 460.0, "http_4xx": 0.0, "requests_errored": 0.0,
              "requests_aborted": 0.0, **kw.pop("totals", {})}
    series = {"kv_cache_usage": steps(kv), "running": steps(running), "waiting": steps(0.0),
              "rejections_per_1000": steps(500.0, (10, 50)),
              "http_5xx_ratio": steps(0.5, (10, 50)), "waiting_deferred": steps(0.0), **kw}
    return view(totals=totals,
                rejections_by_reason=reasons if reasons is not None
                else {"max_num_queued_reqs": 460.0, "max_num_queued_tokens": 0.0},
                launch=launch if launch is not None else {"max-num-seqs": 4,
                                                          "max-num-queued-reqs": 2},
                **series)


# -- findings ------------------------------------------------------------------------------


def test_rejections_are_a_warning_with_count_rate_reasons_caps_and_when() -> None:
    v = refusing(reasons={"max_num_queued_reqs": 450.0, "some_new_reason": 10.0})
    f = fnd.admission_rejections(v)
    assert f is not None and f.id is F.ADMISSION_REJECTIONS and f.severity.value == "warning"
    assert f.value == pytest.approx(1000 * 460 / (480 + 460))  # per 1000 arriving
    assert "460 requests refused with HTTP 503 by admission control (489 per 1000" in f.summary
    # unknown reasons are kept and counted, largest first
    assert "by reason: max_num_queued_reqs 450, some_new_reason 10" in f.summary
    assert "caps in force: --max-num-queued-reqs 2" in f.summary
    assert f.duration_seconds == 40 * STEP and f.ranges


def test_no_rejections_no_finding_and_unknown_is_not_zero() -> None:
    quiet = refusing(totals={"admission_rejections": 0.0}, reasons={})
    assert fnd.admission_rejections(quiet) is None
    old = view()  # a pre-0.29 server: no admission metrics at all
    assert math.isnan(old.rejections) and fnd.admission_rejections(old) is None


def test_request_errors_count_5xx_beyond_the_refusals_and_failed_finishes() -> None:
    v = refusing(totals={"http_5xx": 470.0, "http_4xx": 3.0, "requests_errored": 2.0},
                 errored_ratio=steps(0.01, (55, 58)))
    f = fnd.request_errors(v)
    assert f is not None and f.value == 15.0
    assert ("requests failed: 10 HTTP 5xx other than admission refusals; 3 HTTP 4xx; 2 "
            "finished with an engine error out of 940 HTTP requests") in f.summary
    # the 5xx while refusing are the refusals: only the errored steps count as failing
    assert f.duration_seconds == 3 * STEP
    assert fnd.request_errors(refusing()) is None  # every 5xx was a refusal


def test_without_http_requests_total_the_error_rate_is_unknown_and_the_view_partial() -> None:
    v = view(totals={"http_requests": math.nan})
    assert not v.error_rate_known
    f = fnd.error_rate_unknown(v)
    assert f is not None and f.value is None and "unknown, not zero" in f.summary
    assert any("http_requests_total" in m for m in v.missing)
    assert fnd.error_rate_unknown(refusing()) is None
    assert not any("http_requests_total" in m for m in refusing().missing)


# -- recommendations -----------------------------------------------------------------------


def test_refused_with_kv_and_compute_headroom_raises_the_requests_cap() -> None:
    v = refusing()  # KV 10%, 2 running of max-num-seqs 4: the cap of 2 turned requests away
    r = rec.max_num_queued_reqs_up(v, find(v))
    assert not isinstance(r, Skip) and r is not None
    assert (r.flag, r.current, r.current_source, r.suggested, r.direction) == (
        "--max-num-queued-reqs", 2, CurrentSource.LAUNCH, 8, Direction.UP)
    assert "460 requests were refused with 503 by the requests cap" in r.reason
    assert "KV cache at most 10%" in r.reason and "at most 2 requests running of " \
        "max-num-seqs 4 (no GPU metrics: judged by the running batch)" in r.reason
    assert r.evidence == (F.ADMISSION_REJECTIONS,)
    assert rec.add_replicas(v, find(v)) is None
    assert rec.max_num_queued_tokens_up(v, find(v)) is None  # no refusals for that reason


def test_refused_at_capacity_says_add_replicas_not_a_longer_queue() -> None:
    v = refusing(kv=0.97, running=4.0)
    assert rec.max_num_queued_reqs_up(v, find(v)) is None
    r = rec.add_replicas(v, find(v))
    assert r is not None and r.flag is None and r.suggested == "add replicas"
    assert "at capacity (KV cache at most 97%" in r.reason and "would only queue" in r.reason
    gpu = refusing(gpu_utilization=steps(95.0))  # KV room, but the GPUs are busy
    assert rec.add_replicas(gpu, find(gpu)) is not None


def test_refused_with_unknown_headroom_is_skipped_saying_why() -> None:
    v = refusing(launch={}, kv=math.nan)
    out = rec.max_num_queued_reqs_up(v, find(v))
    assert isinstance(out, Skip) and "headroom could not be judged" in out.reason
    assert rec.add_replicas(v, find(v)) is None


def test_refused_by_the_tokens_cap_raises_it_to_at_least_ttft_times_prefill() -> None:
    v = refusing(reasons={"max_num_queued_tokens": 460.0},
                 launch={"max-num-seqs": 4, "max-num-queued-tokens": 1000},
                 waiting=steps(3.0, (10, 50)), prompt_tokens_per_s=steps(4000.0))
    r = rec.max_num_queued_tokens_up(v, find(v))
    assert not isinstance(r, Skip) and r is not None
    assert (r.current, r.suggested) == (1000, 4000)  # 1s TTFT SLO x 4000 prompt tok/s


def test_ttft_over_the_slo_behind_a_deep_uncapped_queue_sets_the_tokens_cap() -> None:
    v = view(ttft_p99=steps(3.0, (10, 40), 0.2), waiting=steps(20.0, (10, 40)),
             running=steps(8.0), prompt_tokens_per_s=steps(5400.0, (10, 40), 800.0),
             kv_cache_usage=steps(0.5))
    f = fnd.ttft_queue_uncapped(v)
    assert f is not None and f.value == 20.0 and "no --max-num-queued-tokens cap" in f.summary
    r = rec.max_num_queued_tokens_cap(v, find(v))
    assert not isinstance(r, Skip) and r is not None
    assert (r.flag, r.current, r.suggested) == ("--max-num-queued-tokens", None, 5400)
    assert "TTFT target 1s x measured prefill 5,400 prompt tok/s" in r.reason
    assert "assumed uncapped" in r.reason
    capped = view(ttft_p99=steps(3.0, (10, 40), 0.2), waiting=steps(20.0, (10, 40)),
                  running=steps(8.0), launch={"max-num-queued-tokens": 8192})
    assert fnd.ttft_queue_uncapped(capped) is None
    shallow = view(ttft_p99=steps(3.0, (10, 40), 0.2), waiting=steps(1.0), running=steps(8.0))
    assert fnd.ttft_queue_uncapped(shallow) is None


def test_lowering_concurrency_offers_max_num_active_seqs_with_its_basis() -> None:
    old = storm(launch={"max-num-seqs": 256})
    r = rec.max_num_seqs_down(old, find(old))
    assert r is not None and r.flag == "--max-num-seqs"
    (alt,) = r.alternatives
    assert alt.flag == "--max-num-active-seqs" and alt.suggested == r.suggested
    assert "no graph re-capture" in alt.reason and "assumes vLLM 0.29 or later" in alt.reason
    new = storm(launch={"max-num-seqs": 256}, waiting_deferred=steps(0.0))
    (alt,) = rec.max_num_seqs_down(new, find(new)).alternatives  # type: ignore[union-attr]
    assert "exports vLLM 0.29+ metrics" in alt.reason
    assert r.to_json(find(old))["alternatives"][0]["flag"] == "--max-num-active-seqs"


def _spec_view(small: float, large: float) -> WindowView:
    running = np.where(np.arange(60) < 30, 3.0, 100.0)
    acceptance = np.where(np.arange(60) < 30, small, large)
    return view(running=running, spec_acceptance=acceptance, max_num_seqs=steps(0.0),
                launch={"max-num-seqs": 128, "speculative-config":
                        '{"method": "ngram", "num_speculative_tokens": 4}'})


def test_acceptance_that_depends_on_the_batch_size_gets_a_schedule() -> None:
    v = _spec_view(0.8, 0.1)
    f = fnd.spec_acceptance_by_batch(v)
    assert f is not None and "1-4 running: 80%" in f.summary and "65-256 running: 10%" in f.summary
    r = rec.speculative_schedule(v, find(v))
    assert not isinstance(r, Skip) and r is not None
    assert r.current == 4 and r.suggested == [[1, 4, 4], [5, 256, 0]]
    mid = _spec_view(0.8, 0.4)
    r2 = rec.speculative_schedule(mid, find(mid))
    assert r2 is not None and not isinstance(r2, Skip)
    assert r2.suggested == [[1, 4, 4], [5, 256, 2]]
    rising = _spec_view(0.4, 0.8)  # the larger K starts where it was measured
    r3 = rec.speculative_schedule(rising, find(rising))
    assert r3 is not None and not isinstance(r3, Skip)
    assert r3.suggested == [[1, 64, 2], [65, 256, 4]]
    flat = _spec_view(0.6, 0.55)
    assert fnd.spec_acceptance_by_batch(flat) is None
    assert rec.speculative_schedule(flat, find(flat)) is None


def test_the_schedule_wins_over_one_k_for_all_batch_sizes() -> None:
    v = _spec_view(0.8, 0.1)
    sched = rec.speculative_schedule(v, find(v))
    one_k = rec.Rec("--speculative-config", 4, CurrentSource.LAUNCH, None, Direction.OFF,
                    "low", "x", rec.MEDIUM)
    assert isinstance(sched, rec.Rec)
    out = resolve(v, [(Rule.SPEC, one_k), (Rule.SPEC_SCHEDULE, sched)])
    assert out.recommendations == (sched,) and "schedule is recommended" in out.conflicts[0]


def test_never_no_change_while_requests_are_refused_or_fail() -> None:
    v = refusing(launch={}, kv=math.nan)  # headroom unknown: no flag
    a = analyze_view(v)
    (r,) = a.recommendations
    assert r.direction is Direction.INVESTIGATE and r.flag is None
    assert r.reason.startswith("not healthy: 460 requests refused with HTTP 503")
    assert r.evidence == (F.ADMISSION_REJECTIONS,)
    assert any("headroom could not be judged" in s for s in a.skipped)
    errors = view(totals={"http_5xx": 7.0}, http_5xx_ratio=steps(0.1, (5, 10)))
    assert no_change(errors, find(errors)).direction is Direction.INVESTIGATE


# -- the whole report over a store ---------------------------------------------------------

START = day_start(time.time())
REFUSING = Regime(4.0, 0.1, 0, 2, 0.0, 0.08, 0.02, 30.0)


def _report(tmp_path: Path, sc: Scenario, launch: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    cfg = parse_config({"launch": launch or {"max-num-seqs": 4, "max-num-queued-reqs": 2},
                        "slo": {"ttft_p99_seconds": 1.0, "itl_p99_seconds": 0.1}})
    with build_store(tmp_path / "s.db", sc) as store:
        return suggest(LocalSource(store), make_window("6h", None, sc.end), cfg)


def test_report_over_a_store_with_refusals_a_counter_reset_and_an_unknown_reason(
        tmp_path: Path) -> None:
    sc = Scenario(START, hours=6.0, quiet_nights=None, day=REFUSING, storm=None, spec_k=0,
                  restart_at=3.0, reject_reasons=(("max_num_queued_reqs", 1.0),
                                                  ("some_new_reason", 0.05)))
    report = _report(tmp_path, sc)
    f = {x["id"]: x for x in report["findings"]}
    refused = f["admission_rejections"]
    # 4 finished/s for 6 h, 105% of it refused: the restart at 3 h resets every counter, and
    # increase() still counts both halves (one scrape interval of each half is lost)
    assert refused["value"] == pytest.approx(1000 * 1.05 / 2.05, rel=0.01)
    assert "some_new_reason" in refused["summary"] and "max_num_queued_reqs" in refused["summary"]
    totals = report["targets"][0]["window_totals"]
    assert totals["admission_rejections"] == pytest.approx(4 * 1.05 * 6 * 3600, rel=0.01)
    (r,) = [x for x in report["recommendations"] if x["flag"] == "--max-num-queued-reqs"]
    assert r["direction"] == "up" and r["suggested"] == 8
    assert [e["finding"] for e in r["evidence"]] == ["admission_rejections"]
    assert not any(x["direction"] == "none" for x in report["recommendations"])
    assert "request_errors" not in f  # the 5xx are the refusals
    table, md = render_suggest_table(report), render_suggest_markdown(report)
    assert "--max-num-queued-reqs" in table and "2 → 8 ↑" in table
    assert "**`--max-num-queued-reqs`**: 2 → 8 ↑" in md and "No change" not in md


def test_replicas_investigate_and_alternatives_render_in_table_and_markdown() -> None:
    cases = {"at capacity": refusing(kv=0.97, running=4.0),
             "unknown headroom": refusing(launch={}, kv=math.nan),
             "storm": storm(launch={"max-num-seqs": 256})}
    for name, v in cases.items():
        a = analyze_view(v)
        fmap = {x.id: x for x in a.findings}
        target = {"instance": "vllm-0"}
        report = {"window": {"start": "s", "end": "e", "since": "1h", "step_seconds": 60.0},
                  "source": "test", "partial": False, "targets": [{"labels": target}],
                  "findings": [{"target": target, **x.to_json()} for x in a.findings],
                  "recommendations": [{"target": target, **r.to_json(fmap)}
                                      for r in a.recommendations], "conflicts": []}
        table, md = render_suggest_table(report), render_suggest_markdown(report)
        if name == "at capacity":
            assert "add replicas" in table and "**add replicas**: add replicas" in md
        elif name == "unknown headroom":
            assert "investigate" in table and "**investigate**: investigate" in md
            assert "No change" not in md
        else:
            assert "Alternative: --max-num-active-seqs" in table
            assert "Alternative: --max-num-active-seqs" in md


def test_report_without_http_requests_total_is_partial_and_says_so(tmp_path: Path) -> None:
    sc = Scenario(START, hours=6.0, quiet_nights=None, day=BUSY, storm=None, spec_k=0,
                  omit=frozenset({"http_requests_total"}))
    report = _report(tmp_path, sc, launch={"max-num-seqs": 256})
    assert report["partial"] is True
    assert any("http_requests_total" in m for m in report["targets"][0]["missing"])
    assert "error_rate_unknown" in {x["id"] for x in report["findings"]}
    assert "http_requests" not in report["targets"][0]["window_totals"]
