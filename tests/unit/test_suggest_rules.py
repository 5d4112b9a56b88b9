"""suggest's rules one at a time, on small window views built by hand.

Each finding function, recommendation function and conflict rule of ``tuner.suggest`` is run
alone on a ``WindowView`` of a few dozen steps whose series are written out here, so the
numbers each rule reports can be checked by hand. The whole pipeline over 24-hour stores is
tests/unit/test_suggest.py.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.history import Scenario, build_store, day_start
from tuner.config import SLO, parse_config
from tuner.source import LocalSource
from tuner.suggest import (
    FINDINGS,
    RECOMMENDATIONS,
    Confidence,
    CurrentSource,
    Direction,
    Finding,
    FindingId,
    Recommendation,
    Rule,
    Segment,
    Severity,
    Skip,
    SuggestError,
    TargetData,
    WindowView,
    analyze_view,
    check_launch,
    find,
    make_window,
    no_change,
    resolve,
    suggest,
    view_of,
)
from tuner.suggest import findings as fnd
from tuner.suggest import recommendations as rec
from tuner.suggest.resolver import RESOLUTIONS

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
N, STEP = 60, 60.0
SLO_1S = SLO(ttft_p99_seconds=1.0, itl_p99_seconds=0.1)


def steps(value: float, at: tuple[int, int] | None = None, base: float = 0.0,
          n: int = N) -> np.ndarray:
    """``base`` everywhere, ``value`` on steps ``[a, b)`` (everywhere if ``at`` is None)."""
    out = np.full(n, float(base if at else value))
    if at:
        out[at[0]:at[1]] = value
    return out


def view(n: int = N, step: float = STEP, **kw: Any) -> WindowView:
    """A view of ``n`` steps; series are keyword arguments named as in WINDOW_SIGNALS."""
    fields = {k: kw.pop(k) for k in ("slo", "launch", "config", "totals", "restarts",
                                      "workload", "dollars_per_hour", "rejections_by_reason")
              if k in kw}
    fields.setdefault("slo", SLO_1S)
    # the server exports HTTP status counts unless a test says otherwise (NaN: not exported)
    fields["totals"] = {"http_requests": 10_000.0, **fields.get("totals", {})}
    grid = T0 + step * np.arange(n, dtype=np.float64)
    series = {k: np.asarray(v, dtype=np.float64) for k, v in kw.items()}
    series.setdefault("running", np.full(n, 10.0))  # covered unless a test says otherwise
    return WindowView(grid=grid, step=step, series=series, **fields)


def storm(**kw: Any) -> WindowView:
    """KV full, a queue and 5 preemptions/s against 12 requests/s on steps 20-39."""
    series: dict[str, Any] = {
        "kv_cache_usage": steps(0.98, (20, 40), 0.5), "waiting": steps(30, (20, 40)),
        "running": steps(140, (20, 40), 24), "preemptions_per_s": steps(5.0, (20, 40)),
        "requests_per_s": steps(12.0, (20, 40), 5.0), "ttft_p99": steps(1.5, (20, 40), 0.1),
    }
    series.update(kw)
    return view(**series)


# -- the view ------------------------------------------------------------------------------


def test_significant_needs_three_steps_and_ten_minutes_or_five_percent() -> None:
    v = view()  # 60 covered minutes: 5% is 3 minutes, three steps are 3 minutes
    assert v.covered_seconds == 3600.0
    assert not v.significant(steps(1, (0, 2)).astype(bool))
    assert v.significant(steps(1, (0, 3)).astype(bool))
    coarse = view(n=12, step=300.0)  # an hour at 5 minutes: three steps are 15 minutes
    assert not coarse.significant(steps(1, (0, 2), n=12).astype(bool))
    assert coarse.significant(steps(1, (0, 3), n=12).astype(bool))
    day = view(n=1440)  # a day at 1 minute: 10 minutes (the shorter of 10m and 5%)
    assert not day.significant(steps(1, (0, 9), n=1440).astype(bool))
    assert day.significant(steps(1, (0, 10), n=1440).astype(bool))
    assert not view(running=np.full(N, np.nan)).significant(np.ones(N, dtype=bool))


def test_view_of_blanks_everything_outside_the_segment() -> None:
    grid = T0 + STEP * np.arange(N)
    seg = Segment(float(grid[30]), float(grid[-1]), {"gpu_memory_utilization": "0.85"})
    td = TargetData(labels={}, grid=grid, series={"running": np.full(N, 7.0)}, totals={},
                    segments=(Segment(T0, float(grid[29]), {}), seg))
    v = view_of(td, SLO_1S, {}, STEP)
    assert np.isnan(v.running[:30]).all() and (v.running[30:] == 7.0).all()
    assert v.covered_steps == 30 and v.config == {"gpu_memory_utilization": "0.85"}
    assert (td.series["running"] == 7.0).all()  # the collected data is not touched


def test_current_value_prefers_the_running_config_then_launch() -> None:
    v = view(config={"gpu_memory_utilization": "0.85"},
             launch={"--gpu-memory-utilization": 0.9, "max_num_seqs": "256",
                     "max-model-len": 8192.5})
    gmu = v.current("gpu-memory-utilization", "gpu_memory_utilization")
    assert (gmu.value, gmu.source) == (0.85, CurrentSource.CACHE_CONFIG_INFO)
    seqs = v.current("max-num-seqs")
    assert (seqs.value, seqs.source) == (256, CurrentSource.LAUNCH)
    assert isinstance(seqs.value, int)
    assert v.current("max-model-len").value == 8192.5
    mbt = v.current("max-num-batched-tokens")
    assert (mbt.value, mbt.source) == (None, CurrentSource.UNKNOWN)


def test_speculative_tokens_from_launch_then_metrics() -> None:
    assert view(launch={"speculative-config": '{"num_speculative_tokens": 4}'}
                ).speculative_tokens.value == 4
    assert view(launch={"speculative_config": {"num_speculative_tokens": 2}}
                ).speculative_tokens.value == 2
    metrics = view(launch={"speculative-config": "{not json"}, totals={"spec_positions": 3.0})
    assert metrics.speculative_tokens.value == 3
    assert metrics.speculative_tokens.source is CurrentSource.METRICS
    nan = view(totals={"spec_positions": math.nan}).speculative_tokens
    assert (nan.value, nan.source) == (None, CurrentSource.UNKNOWN)


def test_launch_values_suggest_compares_must_be_numbers() -> None:
    check_launch({"max-num-seqs": "256", "gpu_memory_utilization": 0.9, "model": "x"})
    with pytest.raises(SuggestError, match=r"launch max-num-seqs: 'abc' is not a number"):
        check_launch({"--max-num-seqs": "abc"})
    with pytest.raises(SuggestError, match="launch max-model-len"):
        check_launch({"max_model_len": [8192]})


def test_bad_launch_value_is_refused_before_any_query(tmp_path: Path) -> None:
    start = day_start(time.time())
    sc = Scenario(start=start, hours=2.0, step=60.0)
    with build_store(tmp_path / "s.db", sc) as store:
        before = store.sample_count()
        cfg = parse_config({"launch": {"max-num-batched-tokens": "lots"}})
        with pytest.raises(SuggestError, match="launch max-num-batched-tokens: 'lots'"):
            suggest(LocalSource(store), make_window("1h", str(sc.end), time.time()), cfg)
        assert store.sample_count() == before


# -- findings ------------------------------------------------------------------------------


def test_kv_saturated_with_queue_reports_value_duration_and_range() -> None:
    v = storm()
    f = fnd.kv_saturated_with_queue(v)
    assert f is not None and f.id is FindingId.KV_SATURATED_WITH_QUEUE
    assert f.value == pytest.approx(0.98) and f.severity is Severity.WARNING
    assert f.duration_seconds == 20 * STEP and f.fraction == pytest.approx(20 / 60)
    assert f.ranges == ((T0 + 20 * STEP, T0 + 39 * STEP),)
    assert "KV cache above 95%" in f.summary and "20m (33% of the window)" in f.summary
    assert fnd.kv_saturated_with_queue(view(kv_cache_usage=steps(0.99))) is None  # no queue


def test_preemptions_are_per_1000_requests() -> None:
    f = fnd.preemptions(storm())
    assert f is not None and f.value == pytest.approx(5 / 12 * 1000)
    assert f.summary.startswith("417 preemptions per 1000 requests during 08:20–08:39")
    # 0.5 per 1000 requests is below the threshold; with no finished requests any counts
    rare = view(preemptions_per_s=steps(0.006), requests_per_s=steps(12.0))
    assert fnd.preemptions(rare) is None
    stuck = fnd.preemptions(view(preemptions_per_s=steps(0.1, (0, 5)), requests_per_s=steps(0)))
    assert stuck is not None and stuck.duration_seconds == 5 * STEP


def test_slo_breaches_take_the_median_of_the_breaching_steps() -> None:
    ttft = fnd.ttft_slo_breach(view(ttft_p99=steps(2.0, (0, 5), 0.2)))
    assert ttft is not None and ttft.value == 2.0 and "against a 1s SLO" in ttft.summary
    assert fnd.ttft_slo_breach(view(ttft_p99=steps(0.9))) is None
    itl = fnd.itl_slo_breach(view(itl_p99=steps(0.25, (0, 5), 0.02)))
    assert itl is not None and "ITL p99 250ms against a 100ms SLO" in itl.summary
    assert "prefill load" not in itl.summary  # no prompt tokens/s to compare


def test_itl_breach_during_prefill_needs_prefill_load_one_and_a_half_times_the_rest() -> None:
    breach = steps(0.3, (10, 20), 0.02)
    heavy = view(itl_p99=breach, prompt_tokens_per_s=steps(5000.0, (10, 20), 100.0))
    f = fnd.itl_breach_during_prefill(heavy)
    assert f is not None and f.value == 5000.0 and f.duration_seconds == 10 * STEP
    itl = fnd.itl_slo_breach(heavy)
    assert itl is not None and "prefill load 5,000 prompt tok/s while breaching vs 100" in itl.summary
    even = view(itl_p99=breach, prompt_tokens_per_s=steps(140.0, (10, 20), 100.0))
    assert fnd.itl_breach_during_prefill(even) is None


def test_gpu_utilization_or_over_provisioned_never_both() -> None:
    idle = view(gpu_utilization=steps(20.0), waiting=steps(0.0))
    assert fnd.over_provisioned(idle) is not None and fnd.gpu_utilization(idle) is None
    queued = view(gpu_utilization=steps(20.0), waiting=steps(3.0, (0, 6)))
    assert fnd.over_provisioned(queued) is None
    g = fnd.gpu_utilization(queued)
    assert g is not None and g.summary == "GPU utilization median 20%"
    no_gpu = view()
    assert fnd.over_provisioned(no_gpu) is None and fnd.gpu_utilization(no_gpu) is None


def test_queue_with_headroom_only_while_the_gpus_are_not_busy() -> None:
    room = dict(waiting=steps(5.0, (0, 10)), kv_cache_usage=steps(0.5))
    f = fnd.queue_with_headroom(view(**room, gpu_utilization=steps(60.0)))
    assert f is not None and f.value == 5.0 and "and GPUs below 85%" in f.summary
    no_gpu = fnd.queue_with_headroom(view(**room))
    assert no_gpu is not None and "GPUs" not in no_gpu.summary
    assert fnd.queue_with_headroom(view(**room, gpu_utilization=steps(95.0))) is None
    assert fnd.queue_with_headroom(view(waiting=steps(5.0), kv_cache_usage=steps(0.85))) is None


def test_gpu_memory_free_is_a_warning_below_one_percent() -> None:
    tight = fnd.gpu_memory_free(view(gpu_fb_used_mib=steps(79_500.0),
                                     gpu_fb_free_mib=steps(500.0, (3, 4), 4000.0)))
    assert tight is not None and tight.value == pytest.approx(500 / 80_000)
    assert tight.severity is Severity.WARNING
    roomy = fnd.gpu_memory_free(view(gpu_fb_used_mib=steps(76_000.0),
                                     gpu_fb_free_mib=steps(4000.0)))
    assert roomy is not None and roomy.severity is Severity.INFO
    assert fnd.gpu_memory_free(view()) is None


def test_restarts_say_when_or_that_only_counters_reset() -> None:
    timed = fnd.restarts(view(restarts=(T0 + 600.0,)))
    assert timed is not None and timed.summary.endswith("change at 08:10")
    reset = fnd.restarts(view(restarts=(math.nan, math.nan)))
    assert reset is not None and reset.summary.startswith("2 restart(s)")
    assert reset.summary.endswith("(counter resets)") and reset.value == 2.0
    assert fnd.restarts(view()) is None


def test_throughput_and_cost_per_million_output_tokens() -> None:
    # 1000 tok/s for an hour is 3.6 Mtok; at $8/hour that is $2.22 per Mtok
    v = view(output_tokens_per_s=steps(1000.0), dollars_per_hour=8.0)
    thr = fnd.output_throughput(v)
    assert thr is not None and thr.value == 1000.0
    assert "; $2.22 per million output tokens at $8/hour" in thr.summary
    cost = fnd.cost(v)
    assert cost is not None and cost.value == pytest.approx(8 / 3.6) and cost.unit == "$/Mtok"
    free = view(output_tokens_per_s=steps(1000.0))
    assert fnd.cost(free) is None and "$" not in str(fnd.output_throughput(free))


def test_prefix_cache_hit_rate() -> None:
    f = fnd.prefix_cache(view(totals={"prefix_cache_queries": 1000.0,
                                      "prefix_cache_hits": 350.0}))
    assert f is not None and f.value == 0.35 and f.summary == "prefix-cache hit rate 35%"
    assert fnd.prefix_cache(view(totals={"prefix_cache_queries": 0.0})) is None


def test_spec_decode_from_counters_or_the_v0_gauge() -> None:
    low = fnd.spec_decode(view(totals={"spec_drafts": 1000.0, "spec_draft_tokens": 3000.0,
                                       "spec_accepted_tokens": 80.0}))
    assert low is not None and low.value == pytest.approx(1.08) and low.unit == "tokens"
    assert low.severity is Severity.WARNING
    good = fnd.spec_decode(view(totals={"spec_drafts": 1000.0, "spec_draft_tokens": 3000.0,
                                        "spec_accepted_tokens": 1500.0}))
    assert good is not None and good.severity is Severity.INFO
    v0 = fnd.spec_decode(view(totals={"spec_acceptance_rate_v0": 0.1}))
    assert v0 is not None and v0.unit == "ratio" and v0.severity is Severity.WARNING
    assert "(V0 gauge)" in v0.summary
    assert fnd.spec_decode(view(totals={"spec_acceptance_rate_v0": math.nan})) is None


def test_model_len_unused_needs_a_cache_bound_server_and_a_known_limit() -> None:
    wl = {"prompt_tokens": {"max": 3000.0}, "output_tokens": {"max": 1000.0}}
    f = fnd.model_len_unused(storm(launch={"max-model-len": 32768}, workload=wl))
    assert f is not None and f.value == 4000.0 and "max-model-len 32,768" in f.summary
    assert fnd.model_len_unused(view(**_storm_series(), workload=wl)) is None  # limit unknown
    assert fnd.model_len_unused(view(launch={"max-model-len": 32768}, workload=wl)) is None


def _storm_series() -> dict[str, np.ndarray]:
    return {"kv_cache_usage": steps(0.98, (20, 40), 0.5), "waiting": steps(30, (20, 40)),
            "running": steps(140, (20, 40), 24), "preemptions_per_s": steps(5.0, (20, 40)),
            "requests_per_s": steps(12.0, (20, 40), 5.0)}


def test_find_runs_the_table_in_order() -> None:
    v = storm(gpu_utilization=steps(96.0, (20, 40), 60.0), output_tokens_per_s=steps(900.0),
              gpu_fb_used_mib=steps(74_000.0), gpu_fb_free_mib=steps(6000.0),
              dollars_per_hour=8.0)
    found = find(v)
    order = [f.__name__ for f in FINDINGS]
    assert list(found) == sorted(found, key=lambda fid: order.index(fid.value))
    assert list(found)[:3] == [FindingId.KV_SATURATED_WITH_QUEUE, FindingId.PREEMPTIONS,
                               FindingId.TTFT_SLO_BREACH]
    assert FindingId.COST in found and FindingId.GPU_UTILIZATION in found


# -- recommendations -----------------------------------------------------------------------


def _findings(v: WindowView) -> dict[FindingId, Finding]:
    return find(v)


def test_max_num_seqs_down_below_the_running_batch_when_it_preempted() -> None:
    v = storm(launch={"max-num-seqs": 256})
    r = rec.max_num_seqs_down(v, _findings(v))
    assert isinstance(r, Recommendation) and r.direction is Direction.DOWN
    assert r.suggested == 120  # 0.9 x 140 running = 126, in steps of 8; under 0.75 x 256
    assert r.confidence is Confidence.MEDIUM  # 20 minutes of preemptions, not 30
    assert r.evidence == (FindingId.PREEMPTIONS, FindingId.KV_SATURATED_WITH_QUEUE,
                          FindingId.TTFT_SLO_BREACH)
    long = view(**_storm_series() | {"preemptions_per_s": steps(5.0, (10, 45))},
                launch={"max-num-seqs": 128})
    r2 = rec.max_num_seqs_down(long, _findings(long))
    assert r2 is not None and r2.suggested == 96 and r2.confidence is Confidence.HIGH
    assert rec.max_num_seqs_down(view(), {}) is None


def test_max_num_seqs_up_with_a_full_batch_and_headroom() -> None:
    v = view(waiting=steps(8.0, (0, 20)), kv_cache_usage=steps(0.5), running=steps(250.0),
             gpu_utilization=steps(60.0), launch={"max-num-seqs": 256})
    r = rec.max_num_seqs_up(v, _findings(v))
    assert r is not None and r.suggested == 384 and r.confidence is Confidence.HIGH
    assert "and GPUs had headroom and the running batch was at the limit" in r.reason
    unknown = view(waiting=steps(8.0, (0, 20)), kv_cache_usage=steps(0.5))
    r2 = rec.max_num_seqs_up(unknown, {})
    assert r2 is not None and r2.suggested is None and r2.confidence is Confidence.MEDIUM


def test_gpu_memory_utilization_down_after_restarts_or_with_no_free_memory() -> None:
    v = view(restarts=(T0 + 600.0,), config={"gpu_memory_utilization": "0.9"})
    r = rec.gpu_memory_utilization_down(v, _findings(v))
    assert r is not None and (r.current, r.suggested) == (0.9, 0.88)
    assert r.current_source is CurrentSource.CACHE_CONFIG_INFO
    assert r.confidence is Confidence.MEDIUM and r.evidence == (FindingId.RESTARTS,)
    both = view(restarts=(math.nan,), gpu_fb_used_mib=steps(79_900.0),
                gpu_fb_free_mib=steps(100.0))
    r2 = rec.gpu_memory_utilization_down(both, _findings(both))
    assert r2 is not None and r2.confidence is Confidence.HIGH and r2.suggested is None
    assert "free device memory fell to 0.1%" in r2.reason
    assert rec.gpu_memory_utilization_down(view(), {}) is None


def test_gpu_memory_utilization_up_by_how_much_memory_stayed_free() -> None:
    def up(free_mib: float) -> Recommendation | Skip | None:
        v = view(**_storm_series(), gpu_fb_used_mib=steps(100_000.0 - free_mib),
                 gpu_fb_free_mib=steps(free_mib), launch={"gpu-memory-utilization": 0.9})
        return rec.gpu_memory_utilization_up(v, _findings(v))

    six, four = up(6000.0), up(4000.0)
    assert isinstance(six, Recommendation) and six.suggested == 0.92
    assert isinstance(four, Recommendation) and four.suggested == 0.91
    assert up(2000.0) is None  # under 3% free: no room to grow
    skip = rec.gpu_memory_utilization_up(view(**_storm_series()), {})
    assert isinstance(skip, Skip) and "needs DCGM free-memory metrics" in skip.reason
    assert rec.gpu_memory_utilization_up(view(), {}) is None  # not cache-bound


def test_max_num_batched_tokens_down_halves_but_not_below_max_num_seqs() -> None:
    series = dict(itl_p99=steps(0.3, (10, 20), 0.02),
                  prompt_tokens_per_s=steps(5000.0, (10, 20), 100.0))
    v = view(**series, launch={"max-num-batched-tokens": 2048, "max-num-seqs": 256})
    r = rec.max_num_batched_tokens_down(v, _findings(v))
    assert r is not None and r.suggested == 1024
    assert r.evidence == (FindingId.ITL_SLO_BREACH, FindingId.ITL_BREACH_DURING_PREFILL)
    small = view(**series, launch={"max-num-batched-tokens": 300, "max-num-seqs": 256})
    r2 = rec.max_num_batched_tokens_down(small, {})
    assert r2 is not None and r2.suggested == 256


def test_max_num_batched_tokens_up_needs_itl_headroom() -> None:
    slow = dict(ttft_p99=steps(2.0, (0, 10), 0.2), kv_cache_usage=steps(0.5))
    v = view(**slow, itl_p99=steps(0.02), launch={"max-num-batched-tokens": 2048})
    r = rec.max_num_batched_tokens_up(v, _findings(v))
    assert r is not None and r.suggested == 4096 and r.direction is Direction.UP
    tight = view(**slow, itl_p99=steps(0.08))  # ITL under its SLO but not under half
    assert rec.max_num_batched_tokens_up(tight, {}) is None
    full = view(ttft_p99=steps(2.0, (0, 10), 0.2), kv_cache_usage=steps(0.99),
                itl_p99=steps(0.02))
    assert rec.max_num_batched_tokens_up(full, {}) is None  # the KV cache is the cause


def test_max_model_len_down_to_a_power_of_two_or_skipped_when_unknown() -> None:
    wl = {"prompt_tokens": {"max": 3000.0}, "output_tokens": {"max": 1000.0}}
    v = view(**_storm_series(), launch={"max_model_len": 32768}, workload=wl)
    r = rec.max_model_len_down(v, _findings(v))
    assert isinstance(r, Recommendation) and r.suggested == 8192  # 1.25 x 4000 -> 8192
    assert r.confidence is Confidence.LOW
    skip = rec.max_model_len_down(view(**_storm_series(), workload=wl), {})
    assert isinstance(skip, Skip) and "max-model-len" in skip.reason
    near = view(**_storm_series(), launch={"max_model_len": 6000}, workload=wl)
    assert rec.max_model_len_down(near, {}) is None


def test_speculative_config_off_or_fewer_tokens() -> None:
    low = view(totals={"spec_drafts": 2000.0, "spec_draft_tokens": 6000.0,
                       "spec_accepted_tokens": 160.0},
               launch={"speculative-config": '{"num_speculative_tokens": 3}'})
    off = rec.speculative_config(low, _findings(low))
    assert off is not None and off.direction is Direction.OFF and off.current == 3
    assert off.confidence is Confidence.HIGH and "1.08 is below 1.5" in off.reason
    mid = view(totals={"spec_drafts": 1000.0, "spec_draft_tokens": 3000.0,
                       "spec_accepted_tokens": 900.0, "spec_positions": 3.0})
    fewer = rec.speculative_config(mid, _findings(mid))
    assert fewer is not None and fewer.direction is Direction.DOWN
    assert (fewer.current, fewer.suggested) == (3, 1)  # mean length 1.9: one draft token
    assert fewer.current_source is CurrentSource.METRICS
    busy = view(running=steps(100.0), totals={"spec_drafts": 1000.0,
                                              "spec_draft_tokens": 3000.0,
                                              "spec_accepted_tokens": 2400.0,
                                              "spec_positions": 3.0})
    big = rec.speculative_config(busy, _findings(busy))
    assert big is not None and big.suggested == 2 and "large running batches" in big.reason
    assert rec.speculative_config(view(), {}) is None


def test_no_change_names_what_was_healthy() -> None:
    v = view(kv_cache_usage=steps(0.4), waiting=steps(0.0), preemptions_per_s=steps(0.0),
             requests_per_s=steps(3.0), ttft_p99=steps(0.2), itl_p99=steps(0.02),
             gpu_utilization=steps(60.0), gpu_fb_free_mib=steps(5000.0),
             gpu_fb_used_mib=steps(75_000.0))
    r = no_change(v, _findings(v))
    assert r.flag is None and r.direction is Direction.NONE
    assert r.reason == ("no change: no full KV cache with a queue, no preemptions, TTFT p99 "
                        "within 1s, ITL p99 within 100ms")
    assert r.confidence is Confidence.HIGH and r.evidence == (FindingId.GPU_UTILIZATION,)
    assert no_change(view(), {}).confidence is Confidence.MEDIUM  # signals missing


def test_the_recommendation_table_names_each_rule_once() -> None:
    assert [r for r, _ in RECOMMENDATIONS] == list(Rule)


# -- the resolver --------------------------------------------------------------------------


def _rec(flag: str, direction: Direction) -> Recommendation:
    return Recommendation(flag, None, CurrentSource.UNKNOWN, None, direction, "r", "e",
                          Confidence.MEDIUM)


SEQS_DOWN = (Rule.SEQS_DOWN, _rec("--max-num-seqs", Direction.DOWN))
SEQS_UP = (Rule.SEQS_UP, _rec("--max-num-seqs", Direction.UP))
GMU_DOWN = (Rule.GMU_DOWN, _rec("--gpu-memory-utilization", Direction.DOWN))
GMU_UP = (Rule.GMU_UP, _rec("--gpu-memory-utilization", Direction.UP))
MBT_DOWN = (Rule.MBT_DOWN, _rec("--max-num-batched-tokens", Direction.DOWN))
MBT_UP = (Rule.MBT_UP, _rec("--max-num-batched-tokens", Direction.UP))
SPEC = (Rule.SPEC, _rec("--speculative-config", Direction.OFF))


def test_raising_max_num_seqs_is_dropped_when_the_server_preempted() -> None:
    out = resolve(storm(), [SEQS_UP, SPEC])
    assert out.recommendations == (SPEC[1],)
    assert out.conflicts == ("--max-num-seqs: requests queued with KV headroom at times, but "
                             "the server also preempted; raising max-num-seqs would add "
                             "preemptions, so it is not recommended",)
    kept = resolve(view(), [SEQS_UP, SPEC])
    assert kept.recommendations == (SEQS_UP[1], SPEC[1]) and kept.conflicts == ()


def test_stability_wins_for_gpu_memory_utilization() -> None:
    out = resolve(view(), [GMU_DOWN, GMU_UP])
    assert out.recommendations == (GMU_DOWN[1],)
    assert len(out.conflicts) == 1 and "stability wins" in out.conflicts[0]


@pytest.mark.parametrize(("ttft_steps", "itl_steps", "winner"), [(20, 7, "up"), (5, 9, "down"),
                                                                  (8, 8, "down")])
def test_the_larger_breach_wins_for_max_num_batched_tokens(ttft_steps: int, itl_steps: int,
                                                           winner: str) -> None:
    v = view(ttft_p99=steps(2.0, (0, ttft_steps), 0.1), itl_p99=steps(0.3, (30, 30 + itl_steps),
                                                                      0.01))
    out = resolve(v, [SEQS_DOWN, MBT_DOWN, MBT_UP, SPEC])
    expected = MBT_UP[1] if winner == "up" else MBT_DOWN[1]
    assert out.recommendations == (SEQS_DOWN[1], expected, SPEC[1])  # in the down's place
    assert out.conflicts[0].endswith(f"so the recommendation is {winner}")


def test_lowering_max_num_seqs_beats_raising_it() -> None:
    out = resolve(view(), [SEQS_DOWN, SEQS_UP])
    assert out.recommendations == (SEQS_DOWN[1],) and out.conflicts == ()


def test_both_kv_remedies_are_kept_with_the_order_to_apply_them() -> None:
    out = resolve(view(), [SEQS_DOWN, GMU_UP])
    assert out.recommendations == (SEQS_DOWN[1], GMU_UP[1])
    assert out.conflicts == ("--max-num-seqs down and --gpu-memory-utilization up both treat "
                             "the full KV cache; apply the memory change first (it keeps "
                             "throughput), then lower max-num-seqs if preemptions continue",)


def test_conflicts_are_reported_in_table_order() -> None:
    out = resolve(storm(), [SEQS_DOWN, SEQS_UP, GMU_DOWN, GMU_UP, MBT_DOWN, MBT_UP])
    assert len(RESOLUTIONS) == 6
    assert [c.split(":")[0] for c in out.conflicts] == [
        "--max-num-seqs", "--gpu-memory-utilization", "--max-num-batched-tokens"]
    assert out.recommendations[0] is SEQS_DOWN[1] and GMU_UP[1] not in out.recommendations


# -- the whole analysis of one view --------------------------------------------------------


def test_analyze_view_of_a_storm() -> None:
    v = storm(gpu_utilization=steps(96.0, (20, 40), 60.0), gpu_fb_used_mib=steps(74_000.0),
              gpu_fb_free_mib=steps(6000.0), itl_p99=steps(0.02),
              launch={"max-num-seqs": 256, "gpu-memory-utilization": 0.9})
    an = analyze_view(v)
    flags = [(r.flag, r.direction.value) for r in an.recommendations]
    assert flags == [("--max-num-seqs", "down"), ("--gpu-memory-utilization", "up")]
    assert any("apply the memory change first" in c for c in an.conflicts)
    assert an.skipped == ()
    assert an.missing == ()
    fmap = {f.id: f for f in an.findings}
    j = json.loads(json.dumps([r.to_json(fmap) for r in an.recommendations]))
    assert j[0]["current_source"] == "launch" and j[0]["direction"] == "down"
    assert [e["finding"] for e in j[0]["evidence"]] == ["preemptions",
                                                        "kv_saturated_with_queue",
                                                        "ttft_slo_breach"]
    f = an.findings[0].to_json()
    assert type(f["id"]) is str and type(f["severity"]) is str  # plain strings in JSON
