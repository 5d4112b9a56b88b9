"""Unit tests of tuner.load's pure parts: length distributions, request plans, summaries,
spec validation and the workload fingerprint reader."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from tuner.errors import ConfigError
from tuner.load import (
    HARD_MAX_REQUESTS,
    LengthDist,
    LoadResult,
    LoadSpec,
    RequestRecord,
    _Plan,
    chunk_itls,
    count_token_ids,
    group_chunks,
    load_spec_from_workload,
    parse_sse_line,
    summarize,
)

RNG = np.random.default_rng


def _spec(**kw: object) -> LoadSpec:
    base: dict[str, object] = {"prompt_tokens": LengthDist("fixed", mean=64),
                               "output_tokens": LengthDist("fixed", mean=8), "concurrency": 2}
    base.update(kw)
    return LoadSpec(**base)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- distributions


def test_fixed_is_constant() -> None:
    x = LengthDist("fixed", mean=256).sample(RNG(0), 100)
    assert x.dtype == np.int64 and set(x.tolist()) == {256}


def test_uniform_covers_inclusive_bounds() -> None:
    x = LengthDist("uniform", low=10, high=20).sample(RNG(1), 5000)
    assert x.min() == 10 and x.max() == 20
    assert abs(x.mean() - 15) < 0.3


def test_normal_mean_and_clipping() -> None:
    x = LengthDist("normal", mean=100, std=20, low=50, high=140).sample(RNG(2), 20000)
    assert x.min() >= 50 and x.max() <= 140
    assert abs(np.median(x) - 100) < 2


def test_lognormal_matches_requested_mean_and_std() -> None:
    x = LengthDist("lognormal", mean=500, std=250).sample(RNG(3), 50000)
    assert abs(x.mean() - 500) / 500 < 0.03
    assert abs(x.std() - 250) / 250 < 0.08
    assert x.min() >= 1


def test_empirical_points_follow_weights() -> None:
    x = LengthDist("empirical", values=(10, 100), weights=(3, 1)).sample(RNG(4), 20000)
    assert set(x.tolist()) == {10, 100}
    assert abs((x == 10).mean() - 0.75) < 0.02


def test_empirical_buckets_are_prometheus_le_buckets() -> None:
    d = LengthDist("empirical", edges=(0, 10, 20, 50), weights=(1, 0, 1))
    x = d.sample(RNG(5), 20000)
    assert x.min() == 1 and x.max() == 50
    assert not ((x > 10) & (x <= 20)).any()  # the empty bucket
    assert abs((x <= 10).mean() - 0.5) < 0.02
    assert d.max_length == 50


def test_same_seed_same_samples() -> None:
    d = LengthDist("lognormal", mean=300, std=100)
    assert (d.sample(RNG(7), 50) == d.sample(RNG(7), 50)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "zipf", "mean": 3}, "kind 'zipf' is not allowed"),
        ({"kind": "fixed", "mean": 0}, "mean must be a finite number >= 1"),
        ({"kind": "fixed", "mean": math.nan}, "mean must be a finite number >= 1"),
        ({"kind": "normal", "mean": 10, "std": -1}, "std must be a finite number >= 0"),
        ({"kind": "uniform", "low": 5}, "needs low and high"),
        ({"kind": "uniform", "low": 5, "high": 4}, "high (4) must be >= low (5)"),
        ({"kind": "fixed", "mean": 5, "low": 0}, "low must be >= 1"),
        ({"kind": "empirical", "weights": ()}, "weights must be non-negative"),
        ({"kind": "empirical", "weights": (1, -1), "values": (1, 2)}, "weights must be non-neg"),
        ({"kind": "empirical", "weights": (1, 1), "edges": (0, 1)}, "edges needs len(weights)+1"),
        ({"kind": "empirical", "weights": (1, 1), "edges": (0, 5, 5)}, "strictly ascending"),
        ({"kind": "empirical", "weights": (1, 1), "values": (1,)}, "needs values"),
    ],
)
def test_bad_distributions_name_the_problem(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        LengthDist(**kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)


# ----------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": None}, "set concurrency (closed loop) or request_rate"),
        ({"concurrency": 0}, "concurrency must be 1..10000"),
        ({"request_rate": -1.0}, "request_rate must be > 0"),
        ({"request_rate": math.inf}, "request_rate must be > 0"),
        ({"duration": 0}, "duration must be in (0,"),
        ({"duration": math.inf}, "duration must be in (0,"),
        ({"max_requests": 0}, f"max_requests must be 1..{HARD_MAX_REQUESTS}"),
        ({"max_requests": HARD_MAX_REQUESTS + 1}, "max_requests must be"),
        ({"warmup_requests": -1}, "warmup_requests must be"),
        ({"prefix_share": 1.5}, "prefix_share must be in [0, 1]"),
        ({"request_timeout": 0}, "request_timeout must be > 0"),
        ({"token_id_range": (10, 10)}, "token_id_range"),
    ],
)
def test_bad_load_specs_name_the_problem(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _spec(**kwargs)
    assert message in str(err.value)


def test_request_cap_is_bounded_even_without_max_requests() -> None:
    assert _spec().request_cap == HARD_MAX_REQUESTS
    assert _spec(max_requests=7).request_cap == 7


def test_pool_is_sized_to_concurrency() -> None:
    assert _spec(concurrency=16).pool_size == 16
    assert _spec(concurrency=None, request_rate=5.0).pool_size > 0


# ----------------------------------------------------------------------------- plans


def test_plan_prompts_have_exact_lengths_and_valid_ids() -> None:
    spec = _spec(prompt_tokens=LengthDist("uniform", low=5, high=300),
                 token_id_range=(100, 2000))
    plan = _Plan(spec, RNG(0))
    for _ in range(50):
        req = plan.next()
        assert 5 <= len(req.prompt) <= 300
        assert all(100 <= t < 2000 for t in req.prompt)
        assert req.max_tokens == 8


def test_plan_prefix_share_shares_the_leading_fraction() -> None:
    spec = _spec(prompt_tokens=LengthDist("fixed", mean=200), prefix_share=0.5)
    plan = _Plan(spec, RNG(0))
    a, b = plan.next().prompt, plan.next().prompt
    assert a[:100] == b[:100]
    assert a[100:] != b[100:]


def test_plan_without_prefix_share_prompts_differ() -> None:
    plan = _Plan(_spec(), RNG(0))
    prompts = {tuple(plan.next().prompt[:16]) for _ in range(20)}
    assert len(prompts) == 20


# ----------------------------------------------------------------------------- summarize


def _rec(ok: bool = True, ttft: float = 0.1, itls: tuple[float, ...] = (0.01, 0.02),
         out: int = 3, e2e: float = 0.2, start: float = 100.0) -> RequestRecord:
    return RequestRecord(ok=ok, error="" if ok else "http 500: boom", prompt_tokens=10,
                         output_tokens=out if ok else 0, ttft=ttft, itls=itls, e2e=e2e,
                         start=start)


def test_summarize_rates_and_percentiles() -> None:
    recs = tuple(_rec(ttft=0.1 * (i + 1), itls=(0.01 * (i + 1),), out=10) for i in range(10))
    s = summarize(LoadResult(records=(*recs, _rec(ok=False)), started=100.0, ended=110.0))
    assert s.requests == 11 and s.errors == 1
    assert s.error_rate == pytest.approx(1 / 11)
    assert s.output_tokens == 100
    assert s.output_tok_per_s == pytest.approx(10.0)
    assert s.request_rate == pytest.approx(1.0)
    assert s.duration == pytest.approx(10.0)
    assert s.ttft_p50 == pytest.approx(0.55)
    assert s.ttft_p99 == pytest.approx(np.percentile([0.1 * (i + 1) for i in range(10)], 99))
    assert s.itl_p50 == pytest.approx(0.055)
    assert s.e2e_p99 == pytest.approx(0.2)


def test_summarize_ignores_failed_requests_in_latencies() -> None:
    recs = (_rec(ttft=0.1), _rec(ok=False, ttft=50.0, e2e=60.0))
    s = summarize(LoadResult(records=recs, started=0.0, ended=1.0))
    assert s.ttft_p99 == pytest.approx(0.1)
    assert s.e2e_p99 == pytest.approx(0.2)


def test_summarize_empty_run_is_nan_not_an_exception() -> None:
    s = summarize(LoadResult(records=(), started=5.0, ended=5.0))
    assert s.requests == 0 and s.errors == 0
    assert math.isnan(s.error_rate) and math.isnan(s.ttft_p99) and math.isnan(s.output_tok_per_s)


def test_summarize_all_failed() -> None:
    s = summarize(LoadResult(records=(_rec(ok=False),) * 4, started=0.0, ended=2.0))
    assert s.error_rate == 1.0 and s.output_tokens == 0 and math.isnan(s.ttft_p50)


def test_group_chunks_merges_events_read_together() -> None:
    # three events within 50 us (one socket read), a 20 ms gap, one event, a 30 ms gap, two
    times, tokens = group_chunks([1.0, 1.00002, 1.00005, 1.02005, 1.05005, 1.05006],
                                 [1, 1, 1, 1, 2, 1])
    assert times == (1.0, 1.02005, 1.05005)
    assert tokens == (3, 1, 3)
    assert group_chunks([], []) == ((), ())
    # a larger coalescing window merges more; every token is kept
    assert sum(group_chunks([0.0, 0.01, 0.02], [1, 1, 1], coalesce=0.015)[1]) == 3


def test_chunk_itls_divide_each_gap_by_the_tokens_it_brought() -> None:
    assert chunk_itls((0.02, 0.03), (3, 1, 3)) == pytest.approx((0.02, 0.01))
    assert chunk_itls((), (5,)) == ()


def test_record_tpot_and_longest_stall() -> None:
    rec = RequestRecord(ok=True, error="", prompt_tokens=4, output_tokens=7, ttft=0.1,
                        itls=chunk_itls((0.02, 0.3), (3, 1, 3)), e2e=0.7, start=0.0,
                        chunk_gaps=(0.02, 0.3), chunk_tokens=(3, 1, 3))
    assert rec.tpot == pytest.approx((0.7 - 0.1) / 6)
    assert rec.max_stall == pytest.approx(0.3)
    one = RequestRecord(ok=True, error="", prompt_tokens=4, output_tokens=1, ttft=0.1,
                        itls=(), e2e=0.1, start=0.0, chunk_tokens=(1,))
    assert math.isnan(one.tpot) and math.isnan(one.max_stall)
    failed = RequestRecord(ok=False, error="x", prompt_tokens=4, output_tokens=0,
                           ttft=math.nan, itls=(), e2e=1.0, start=0.0)
    assert math.isnan(failed.tpot)


def test_summarize_per_chunk_itl_is_not_microseconds() -> None:
    """The issue's case: tokens read in one go give microsecond gaps; per chunk they do not."""
    raw = [0.5 + 0.02 * (i // 4) + 1e-5 * (i % 4) for i in range(16)]  # 4 tokens per 20 ms
    times, tokens = group_chunks(raw, [1] * 16)
    gaps = tuple(b - a for a, b in itertools.pairwise(times))
    rec = RequestRecord(ok=True, error="", prompt_tokens=8, output_tokens=16, ttft=0.5,
                        itls=chunk_itls(gaps, tokens), e2e=raw[-1], start=0.0,
                        chunk_gaps=gaps, chunk_tokens=tokens)
    s = summarize(LoadResult(records=(rec,), started=0.0, ended=1.0))
    assert s.itl_p50 == pytest.approx(0.005)  # 20 ms / 4 tokens, not 10 us
    assert s.tokens_per_chunk == pytest.approx(4.0)
    assert s.max_stall_p99 == pytest.approx(0.02)
    assert s.tpot_p50 == pytest.approx((raw[-1] - 0.5) / 15)


# ----------------------------------------------------------------------------- workload


def test_workload_from_tuner_workload_fingerprint() -> None:
    fingerprint = {
        "version": 1,
        "request_rate_per_s": 1.5,
        "prefix_cache_hit_rate": 0.25,
        "prompt_tokens": {"count": 100.0, "mean": 331.0, "p50": 300.0, "max": 4096.0,
                          "buckets": [{"lo": 0.0, "hi": 100.0, "p": 0.2},
                                      {"lo": 200.0, "hi": 4096.0, "p": 0.7},
                                      {"lo": 4096.0, "hi": 4096.0, "p": 0.1}]},
        "output_tokens": {"count": 100.0, "buckets": [{"lo": 0.0, "hi": 128.0, "p": 1.0}]},
    }
    spec = load_spec_from_workload(fingerprint, duration=5.0)
    assert spec.request_rate == 1.5 and spec.concurrency is None
    assert spec.prefix_share == 0.25 and spec.duration == 5.0
    x = spec.prompt_tokens.sample(RNG(0), 20000)
    assert x.min() >= 1 and x.max() == 4096
    assert abs((x <= 100).mean() - 0.2) < 0.02
    assert not ((x > 100) & (x <= 200)).any()
    assert abs((x == 4096).mean() - 0.1) < 0.01
    y = spec.output_tokens.sample(RNG(0), 1000)
    assert y.min() >= 1 and y.max() <= 128


def test_workload_shapes_numbers_mappings_and_histograms() -> None:
    spec = load_spec_from_workload({
        "prompt_tokens": {"histogram": [[10, 5], [20, 5], [50, 10], ["+Inf", 10]]},
        "output_tokens": 32,
        "concurrency": 4, "seed": 3, "warmup_requests": 2,
    })
    assert spec.output_tokens == LengthDist("fixed", mean=32)
    assert spec.concurrency == 4 and spec.seed == 3 and spec.warmup_requests == 2
    x = spec.prompt_tokens.sample(RNG(0), 5000)
    assert x.max() <= 50 and not ((x > 10) & (x <= 20)).any()
    lognormal = load_spec_from_workload({"prompt_tokens": {"mean": 300, "std": 50},
                                         "output_tokens": {"kind": "uniform", "low": 1,
                                                           "high": 9},
                                         "request_rate": 2})
    assert lognormal.prompt_tokens.kind == "lognormal"
    assert lognormal.output_tokens.high == 9


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ([], "must be a mapping"),
        ({"output_tokens": 5, "concurrency": 1}, "'prompt_tokens' is missing or null"),
        ({"prompt_tokens": None, "output_tokens": 5, "concurrency": 1}, "missing or null"),
        ({"prompt_tokens": "long", "output_tokens": 5, "concurrency": 1},
         "prompt_tokens must be a number or a mapping"),
        ({"prompt_tokens": {"mean": 5, "colour": 1}, "output_tokens": 5, "concurrency": 1},
         "unknown key(s) ['colour']"),
        ({"prompt_tokens": {"buckets": [{"lo": 0, "hi": 5}]}, "output_tokens": 5,
          "concurrency": 1}, "buckets must be a list of {lo, hi, p}"),
        ({"prompt_tokens": {"buckets": [{"lo": 0, "hi": 5, "p": 0}]}, "output_tokens": 5,
          "concurrency": 1}, "no bucket with p > 0"),
        ({"prompt_tokens": {"histogram": [[10, 0], ["+Inf", 0]]}, "output_tokens": 5,
          "concurrency": 1}, "no observations"),
        ({"prompt_tokens": 5, "output_tokens": 5, "request_rate": "fast"},
         "request_rate must be a number"),
        ({"prompt_tokens": 5, "output_tokens": 5}, "set concurrency (closed loop) or"),
    ],
)
def test_bad_workloads_name_the_problem(workload: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_spec_from_workload(workload)  # type: ignore[arg-type]
    assert message in str(err.value)


# ----------------------------------------------------------------------------- SSE parsing

STREAM = Path(__file__).parent / "data" / "vllm_logs" / "stream_completion.txt"


def test_parse_real_vllm_stream() -> None:
    """A stream recorded from vLLM 0.32 CPU: 5 tokens, then usage, then [DONE]."""
    events = [parse_sse_line(line) for line in STREAM.read_bytes().split(b"\n")]
    kinds = [e.kind for e in events if e.kind != "other"]
    assert kinds.count("token") + sum(1 for e in events if e.message == "token") == 5
    (usage,) = [e for e in events if e.kind == "usage"]
    assert usage.completion_tokens == 5 and usage.prompt_tokens == 32
    assert kinds[-1] == "done"


def test_parse_real_vllm_stream_with_token_ids() -> None:
    """Recorded from vLLM 0.32 CPU with return_token_ids: 5 events of one token each (the
    first also carries the prompt's ids, the last the finish reason), usage, [DONE]."""
    data = (STREAM.parent / "stream_completion_token_ids.txt").read_bytes()
    events = [parse_sse_line(line) for line in data.split(b"\n")]
    tokens = [e for e in events if e.kind == "token"]
    assert [e.tokens for e in tokens] == [1] * 5
    (usage,) = [e for e in events if e.kind == "usage"]
    assert usage.completion_tokens == 5 and usage.prompt_tokens == 8


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b'data: {"choices":[{"index":0,"text":" ze","finish_reason":null}],"usage":null}',
         "token"),
        (b'data: {"choices":[{"index":0,"text":"","finish_reason":"length"}]}', "other"),
        (b'data: {"choices": [{"index": 0, "text": "spaced"}]}', "token"),
        (b'data: {"choices": [{"index": 0, "text": ""}]}', "other"),
        (b"data: [DONE]", "done"),
        (b"data: [DONE]\r", "done"),
        (b"", "other"),
        (b": keep-alive", "other"),
        (b'data: {"error": {"message": "boom", "code": 500}}', "error"),
        (b"data: {not json", "malformed"),
        (b"data: [1, 2]", "malformed"),
    ],
)
def test_parse_sse_line_kinds(line: bytes, kind: str) -> None:
    assert parse_sse_line(line).kind == kind


def test_token_ids_say_how_many_tokens_an_event_carries() -> None:
    ev = parse_sse_line(b'data: {"choices":[{"index":0,"text":" a b c","token_ids":[5,6,7],'
                        b'"finish_reason":null}],"usage":null}')
    assert ev.kind == "token" and ev.tokens == 3
    first = parse_sse_line(b'data: {"choices":[{"index":0,"text":"x","prompt_token_ids":[1,2,'
                           b'3,4],"token_ids":[9]}]}')
    assert first.tokens == 1  # the prompt's ids are not output tokens
    empty_text = parse_sse_line(b'data: {"choices":[{"index":0,"text":"","token_ids":[4]}]}')
    assert empty_text.kind == "token" and empty_text.tokens == 1
    last = parse_sse_line(b'data: {"choices":[{"index":0,"text":"","token_ids":[],'
                          b'"finish_reason":"length"}]}')
    assert last.kind == "other"
    spaced = parse_sse_line(b'data: {"choices": [{"text": "ab", "token_ids": [1, 2]}]}')
    assert spaced.kind == "token" and spaced.tokens == 2
    assert count_token_ids(b'{"text":"x"}') == 1
    assert count_token_ids(b'{"token_ids":[]}') == 0


def test_parse_sse_usage_chunk() -> None:
    ev = parse_sse_line(b'data: {"choices":[],"usage":{"prompt_tokens":64,'
                        b'"total_tokens":80,"completion_tokens":16}}')
    assert ev.kind == "usage" and ev.completion_tokens == 16 and ev.prompt_tokens == 64
    assert ev.message == ""
    both = parse_sse_line(b'data: {"choices":[{"text":"x"}],"usage":{"prompt_tokens":1,'
                          b'"completion_tokens":2}}')
    assert both.kind == "usage" and both.message == "token"
    error = parse_sse_line(b'data: {"error": "overloaded"}')
    assert error.message == "overloaded"


# ----------------------------------------------------------------------------- rejections

#: The SSE error event vLLM 0.32 streams (inside an HTTP 200) when admission control refuses a
#: streamed request: ``ErrorResponse.model_dump()`` of a QueueOverflowError.
_REFUSED_EVENT = (b'data: {"error": {"message": "The request queue is full. Please retry '
                  b'later.", "type": "Service Unavailable", "param": null, "code": 503}}')


def test_a_streamed_503_error_event_is_an_error_with_its_code() -> None:
    ev = parse_sse_line(_REFUSED_EVENT)
    assert ev.kind == "error" and ev.code == 503
    assert ev.message.startswith("The request queue is full")
    other = parse_sse_line(b'data: {"error": {"message": "boom", "code": "500"}}')
    assert other.kind == "error" and other.code == 500
    assert parse_sse_line(b'data: {"error": {"message": "x", "code": true}}').code is None
    assert parse_sse_line(b'data: {"error": "overloaded"}').code is None


def _rejected(start: float = 100.0) -> RequestRecord:
    return RequestRecord(ok=False, error="http 503: queue full", prompt_tokens=10,
                         output_tokens=0, ttft=math.nan, itls=(), e2e=0.01, start=start,
                         rejected=True)


def test_summarize_counts_rejections_apart_from_errors_and_both_in_the_error_rate() -> None:
    recs = (_rec(), _rec(), _rec(ok=False), _rejected(), _rejected(), _rejected())
    s = summarize(LoadResult(records=recs, started=100.0, ended=101.0))
    assert s.requests == 6
    assert s.rejections == 3 and s.errors == 1
    assert s.rejection_rate == pytest.approx(3 / 6)
    assert s.error_rate == pytest.approx(4 / 6)  # what the SLO's error rate is checked against
    assert s.ttft_p99 == pytest.approx(0.1)  # latencies of successful requests only


def test_summarize_of_a_run_without_rejections_says_zero_not_unknown() -> None:
    s = summarize(LoadResult(records=(_rec(), _rec(ok=False)), started=0.0, ended=1.0))
    assert s.rejections == 0 and s.rejection_rate == 0.0 and s.errors == 1
    empty = summarize(LoadResult(records=(), started=0.0, ended=0.0))
    assert empty.rejections == 0 and math.isnan(empty.rejection_rate)
