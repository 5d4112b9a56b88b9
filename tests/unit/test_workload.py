"""Workload fingerprint: empirical length distributions, hourly rates, prefix and spec use."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from tests.support.history import Scenario, build_store, day_start
from tuner.promql import Engine
from tuner.source import LocalSource
from tuner.store import Store
from tuner.workload import fingerprint, length_distribution

START = day_start(time.time())


def test_length_distribution_from_cumulative_buckets() -> None:
    dist = length_distribution({100.0: 10.0, 200.0: 60.0, 500.0: 100.0, math.inf: 100.0})
    assert dist is not None
    assert dist["count"] == 100.0
    assert [(b["lo"], b["hi"]) for b in dist["buckets"]] == [(0.0, 100.0), (100.0, 200.0),
                                                             (200.0, 500.0)]
    assert sum(b["p"] for b in dist["buckets"]) == pytest.approx(1.0)
    assert dist["buckets"][1]["p"] == pytest.approx(0.5)
    # the median lies 40/50 of the way through (100, 200]
    assert dist["p50"] == pytest.approx(180.0)
    assert dist["max"] == 500.0


def test_length_distribution_top_bucket_and_repair() -> None:
    # a lower bucket larger than a higher one (torn read) is repaired, not negative
    dist = length_distribution({10.0: 5.0, 20.0: 4.0, math.inf: 8.0})
    assert dist is not None
    assert all(b["p"] >= 0 for b in dist["buckets"])
    assert dist["buckets"][-1]["hi"] == 20.0  # +Inf reported at the last finite bound
    assert length_distribution({10.0: 0.0, math.inf: 0.0}) is None
    assert length_distribution({}) is None


@pytest.mark.parametrize("cumulative", [
    {100.0: 10.0, 200.0: 60.0, 500.0: 90.0, math.inf: 100.0},  # p99 in the +Inf bucket
    {1.0: 0.0, 2.0: 0.0, 5.0: 3.0, math.inf: 3.0},  # empty low buckets
    {10.0: 5.0, 20.0: 4.0, math.inf: 8.0},  # non-monotonic: repaired
    {-1.0: 1.0, 0.0: 2.0, math.inf: 4.0},  # first bound not positive
])
def test_length_quantiles_are_prometheus_histogram_quantile(
        cumulative: dict[float, float], tmp_path: Path) -> None:
    """One histogram quantile: the fingerprint's percentiles are the evaluator's
    histogram_quantile on the same buckets."""
    ts = 1_700_000_000_000
    with Store(tmp_path / "h.db", retention=3650 * 86400.0) as store:
        store.append_points([("h_bucket", (("le", "+Inf" if math.isinf(le) else repr(le)),), ts, c)
                             for le, c in cumulative.items()])
        engine = Engine(store)
        dist = length_distribution(cumulative)
        assert dist is not None
        for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            (el,) = engine.instant(f"histogram_quantile({q}, h_bucket)", ts / 1000).vector
            assert dist[key] == el.value, key


def test_length_quantiles_in_the_inf_bucket_and_degenerate_histograms() -> None:
    dist = length_distribution({100.0: 10.0, 200.0: 60.0, 500.0: 90.0, math.inf: 100.0})
    assert dist is not None
    assert dist["p50"] == pytest.approx(180.0) and dist["p90"] == pytest.approx(500.0)
    assert dist["p99"] == 500.0  # rank in +Inf: the highest finite bound, as Prometheus
    # histograms Prometheus takes no quantile of (it answers NaN) have no distribution
    assert length_distribution({100.0: 5.0, 200.0: 8.0}) is None  # no +Inf bucket
    assert length_distribution({math.inf: 8.0}) is None  # nothing but +Inf


def test_fingerprint_adds_buckets_spelled_two_ways(tmp_path: Path) -> None:
    """A fleet where one server writes le="100.0" (prometheus_client) and another le="100"
    (normalised): the buckets are one bound, added up, as histogram_quantile coalesces them."""
    t0 = 1_700_000_000
    pts = []
    for inst, le100, in_100, total in (("a", "100.0", 30.0, 40.0), ("b", "100", 10.0, 60.0)):
        for k, frac in ((0, 0.0), (1, 0.5), (2, 1.0)):
            ts = (t0 + 1800 * k) * 1000
            for le, count in ((le100, in_100), ("500.0", total), ("+Inf", total)):
                pts.append(("vllm:request_prompt_tokens_bucket",
                            (("instance", inst), ("le", le)), ts, frac * count))
    with Store(tmp_path / "s.db", retention=3650 * 86400.0) as store:
        store.append_points(pts)
        fp = fingerprint(LocalSource(store), t0, t0 + 3600)
    prompt = fp["prompt_tokens"]
    assert prompt["count"] == pytest.approx(100.0)
    assert [(b["lo"], b["hi"]) for b in prompt["buckets"]] == [(0.0, 100.0), (100.0, 500.0)]
    assert prompt["buckets"][0]["p"] == pytest.approx(0.4)  # (30 + 10) of 100


@pytest.fixture(scope="module")
def day_store(tmp_path_factory: pytest.TempPathFactory):
    sc = Scenario(start=START, step=60.0)
    store = build_store(Path(tmp_path_factory.mktemp("wl")) / "s.db", sc)
    yield sc, store
    store.close()


def test_fingerprint_of_a_day(day_store) -> None:
    sc, store = day_store
    fp = fingerprint(LocalSource(store), sc.start, sc.end)
    json.dumps(fp)  # JSON-ready
    assert fp["version"] == 1
    assert fp["instances"] == ["vllm-0"]
    hours = fp["request_rate_by_hour"]
    assert len(hours) == 24
    by_start = {h["start"][11:13]: h["requests_per_s"] for h in hours}
    assert by_start["03"] == pytest.approx(0.2, rel=0.05)  # quiet night
    assert by_start["10"] == pytest.approx(5.0, rel=0.05)  # busy day
    assert by_start["14"] == pytest.approx(12.0, rel=0.05)  # storm
    assert fp["peak_request_rate_per_s"] == pytest.approx(12.0, rel=0.05)
    p = fp["prompt_tokens"]
    # lognormal with median 300 tokens: the bucket-interpolated median lands in (200, 500]
    assert 200 < p["p50"] <= 500
    assert p["mean"] == pytest.approx(300 * math.exp(0.6**2 / 2), rel=0.02)
    assert sum(b["p"] for b in p["buckets"]) == pytest.approx(1.0)
    assert fp["output_tokens"]["p50"] < p["p50"]
    assert fp["prefix_cache_hit_rate"] == pytest.approx(0.35, rel=1e-3)
    spec = fp["speculative_decoding"]
    assert spec["used"] is True
    assert spec["mean_acceptance_length"] == pytest.approx(1.08, rel=1e-3)
    assert spec["num_speculative_tokens"] == 3
    assert spec["acceptance_rate"] == pytest.approx(0.08 / 3, rel=1e-3)


def test_fingerprint_without_spec_decode_or_prefix_cache(tmp_path: Path) -> None:
    sc = Scenario(start=START, hours=3.0, step=60.0, spec_k=0, prefix_hit_rate=0.0,
                  storm=None, quiet_nights=None)
    with build_store(tmp_path / "s.db", sc) as store:
        fp = fingerprint(LocalSource(store), sc.start, sc.end)
    assert fp["speculative_decoding"] == {"used": False, "acceptance_rate": None,
                                          "mean_acceptance_length": None,
                                          "num_speculative_tokens": None}
    assert fp["prefix_cache_hit_rate"] is None
    assert fp["request_rate_per_s"] == pytest.approx(5.0, rel=0.02)


def test_fingerprint_is_a_load_spec_for_tune(day_store) -> None:
    from tuner.load import load_spec_from_workload

    sc, store = day_store
    fp = json.loads(json.dumps(fingerprint(LocalSource(store), sc.start, sc.end)))
    spec = load_spec_from_workload(fp, duration=10.0)
    assert spec.prompt_tokens.kind == "empirical" and spec.output_tokens.kind == "empirical"
    assert spec.request_rate == pytest.approx(fp["request_rate_per_s"])
    assert spec.prefix_share == pytest.approx(0.35, rel=1e-3)
    # the empirical edges are the histogram's bucket bounds
    assert 500.0 in spec.prompt_tokens.edges


def test_short_window_lengths_are_counted_not_extrapolated(tmp_path: Path) -> None:
    """A shared server: earlier traffic left ``le="50"`` at 100 and ``le="10"`` at 0, then 40
    requests of 8 output tokens finish within 5 s (scraped every second, the window opening
    half a second before a scrape). ``increase()`` over
    the short window extrapolates ``le="10"`` less (its counter starts at zero) than
    ``le="50"``, inventing requests in (10, 50]; the fingerprint counts the samples: all 40
    are in (5, 10]."""
    t0 = 1_700_000_000
    pts = []
    for k in range(-3, 8):
        done = 0.0 if k <= 0 else min(40.0, 8.0 * k)
        for le, base in (("5.0", 0.0), ("10.0", 0.0), ("50.0", 100.0), ("+Inf", 100.0)):
            count = base + (0.0 if le == "5.0" else done)
            pts.append(("vllm:request_generation_tokens_bucket", (("le", le),),
                        (t0 + k) * 1000, count))
        pts.append(("vllm:request_generation_tokens_count", (), (t0 + k) * 1000, 100.0 + done))
        pts.append(("vllm:request_generation_tokens_sum", (), (t0 + k) * 1000,
                    3700.0 + 8.0 * done))
    with Store(tmp_path / "s.db", retention=3650 * 86400.0) as store:
        store.append_points(pts)
        end = t0 + 7
        (le10,) = Engine(store).instant(
            'increase(vllm:request_generation_tokens_bucket{le="10.0"}[7500ms])', end).vector
        (le50,) = Engine(store).instant(
            'increase(vllm:request_generation_tokens_bucket{le="50.0"}[7500ms])', end).vector
        assert le50.value > le10.value  # the extrapolation this test is about
        out = fingerprint(LocalSource(store), t0 - 0.5, end)["output_tokens"]
    assert out["count"] == 40.0
    assert out["mean"] == pytest.approx(8.0)
    assert 5.0 < out["p50"] <= out["p90"] <= 10.0
    assert [(b["lo"], b["hi"], b["p"]) for b in out["buckets"]] == [(5.0, 10.0, 1.0)]
