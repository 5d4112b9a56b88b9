"""The load generator against real vLLM CPU servers on the tiny model.

Shares the session's ``vllm_server``, ``vllm_preempting_server`` and ``vllm_specdecode_server``
(tests.support.vllm); server counters are compared as deltas because other tests use the same
servers. Run under ``flock /tmp/tuner-vllm.lock``.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.common import free_port
from tests.support.vllm import VllmServer
from tuner.exposition import parse_exposition
from tuner.load import LengthDist, LoadSpec, run_load_sync, summarize

pytestmark = pytest.mark.e2e


def metric_total(server: VllmServer, name: str) -> float:
    """Sum of every series of the sample ``name`` on the server's /metrics right now."""
    text = httpx.get(server.metrics_url, timeout=10, trust_env=False).text
    return sum(s.value for s in parse_exposition(text).samples if s.name == name)


def test_closed_loop_exact_lengths_and_sane_latencies(vllm_server: VllmServer) -> None:
    gen_before = metric_total(vllm_server, "vllm:generation_tokens_total")
    spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=64),
                    output_tokens=LengthDist("fixed", mean=16), concurrency=4,
                    duration=60, max_requests=12, warmup_requests=4, seed=1)
    result = run_load_sync(vllm_server.url, vllm_server.model, spec)
    assert len(result.records) == 12  # warm-up requests are not measured
    assert [r.error for r in result.records if not r.ok] == []
    for r in result.records:
        assert r.prompt_tokens == 64 and r.output_tokens == 16
        assert 0 < r.ttft < r.e2e < 60
        # tokens are grouped into the chunks they reached the client in: every token counted
        assert sum(r.chunk_tokens) == 16 and len(r.itls) == len(r.chunk_gaps)
        assert len(r.chunk_gaps) == len(r.chunk_tokens) - 1
        assert all(g >= 0 for g in r.chunk_gaps) and all(x >= 0 for x in r.itls)
        assert r.tpot == pytest.approx((r.e2e - r.ttft) / 15)
        assert result.started <= r.start <= result.ended
    s = summarize(result)
    assert s.requests == 12 and s.errors == 0 and s.output_tokens == 12 * 16
    assert s.output_tok_per_s > 10
    assert 0 < s.ttft_p50 <= s.ttft_p99 < 30
    # The server generated every measured and warm-up token.
    gen_after = metric_total(vllm_server, "vllm:generation_tokens_total")
    assert gen_after - gen_before >= 16 * 16


def test_poisson_open_loop_and_length_distributions(vllm_server: VllmServer) -> None:
    spec = LoadSpec(prompt_tokens=LengthDist("uniform", low=16, high=200),
                    output_tokens=LengthDist("lognormal", mean=12, std=4, high=32),
                    request_rate=8.0, duration=3.0, seed=2)
    t0 = time.monotonic()
    result = run_load_sync(vllm_server.url, vllm_server.model, spec)
    assert time.monotonic() - t0 < 3.0 + 60  # no request starts after the duration
    n = len(result.records)
    assert 8 <= n <= 48, n  # Poisson(24)
    assert all(r.ok for r in result.records), [r.error for r in result.records if not r.ok]
    assert len({r.prompt_tokens for r in result.records}) > 3
    assert all(16 <= r.prompt_tokens <= 200 and 1 <= r.output_tokens <= 32
               for r in result.records)
    starts = sorted(r.start for r in result.records)
    assert starts[-1] - starts[0] <= 3.5


def test_prefix_share_hits_the_prefix_cache(vllm_server: VllmServer) -> None:
    def hits_for(share: float, seed: int) -> float:
        before = metric_total(vllm_server, "vllm:prefix_cache_hits_total")
        spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=640),
                        output_tokens=LengthDist("fixed", mean=4), concurrency=2,
                        duration=60, max_requests=6, prefix_share=share, seed=seed)
        result = run_load_sync(vllm_server.url, vllm_server.model, spec)
        assert all(r.ok for r in result.records)
        return metric_total(vllm_server, "vllm:prefix_cache_hits_total") - before

    control = hits_for(0.0, 3)
    shared = hits_for(0.8, 4)
    print(f"prefix cache hit tokens: share 0 -> {control:.0f}, share 0.8 -> {shared:.0f}")
    # 5 of 6 requests reuse the 512 shared tokens (4 blocks of 128): ~2,560 hit tokens.
    assert shared >= 4 * 128 + control


def test_errors_are_recorded_per_request_not_raised(vllm_server: VllmServer) -> None:
    small = LengthDist("fixed", mean=8)
    wrong_model = run_load_sync(vllm_server.url, "no-such-model",
                                LoadSpec(small, small, concurrency=2, max_requests=4))
    assert len(wrong_model.records) == 4
    assert all(not r.ok and r.error.startswith("http 404") for r in wrong_model.records)
    too_long = run_load_sync(vllm_server.url, vllm_server.model,
                             LoadSpec(LengthDist("fixed", mean=5000), small, concurrency=1,
                                      max_requests=2))
    assert all(not r.ok and r.error.startswith("http 400") for r in too_long.records)
    s = summarize(too_long)
    assert s.error_rate == 1.0 and s.output_tokens == 0


def test_connection_refused_is_recorded_and_bounded() -> None:
    port = free_port()  # nothing listens here
    small = LengthDist("fixed", mean=8)
    t0 = time.monotonic()
    result = run_load_sync(f"http://127.0.0.1:{port}", "m",
                           LoadSpec(small, small, concurrency=2, duration=1.0))
    assert time.monotonic() - t0 < 15
    assert result.records and all(r.error.startswith("connection:") for r in result.records)


def test_preempting_server_preempts_under_load(vllm_preempting_server: VllmServer) -> None:
    server = vllm_preempting_server
    before = metric_total(server, "vllm:num_preemptions_total")
    spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=256),
                    output_tokens=LengthDist("fixed", mean=512), concurrency=32,
                    duration=120, max_requests=32, seed=4)
    result = run_load_sync(server.url, server.model, spec)
    s = summarize(result)
    preemptions = metric_total(server, "vllm:num_preemptions_total") - before
    print(f"preempting server: {preemptions:.0f} preemptions for {s.requests} requests "
          f"(32 concurrent, 256 in / 512 out), {s.output_tok_per_s:.0f} output tok/s")
    assert s.errors == 0 and s.output_tokens == 32 * 512
    assert preemptions > 0


def test_specdecode_server_drafts_tokens(vllm_specdecode_server: VllmServer) -> None:
    server = vllm_specdecode_server
    before = metric_total(server, "vllm:spec_decode_num_draft_tokens_total")
    spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=128),
                    output_tokens=LengthDist("fixed", mean=32), concurrency=4,
                    duration=60, max_requests=8, seed=5)
    s = summarize(run_load_sync(server.url, server.model, spec))
    assert s.errors == 0 and s.output_tokens == 8 * 32
    drafted = metric_total(server, "vllm:spec_decode_num_draft_tokens_total") - before
    assert drafted > 0
