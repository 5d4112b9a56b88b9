"""Exposition parsing and name normalization on captured vLLM / DCGM text."""

from __future__ import annotations

import math

import pytest

from tests.support.dcgm import dcgm_exposition
from tuner.errors import ExpositionError
from tuner.exposition import (
    canonical_name,
    normalize_samples,
    parse_exposition,
    with_target_labels,
)

V1_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.5
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="tiny"} 7.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="tiny"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 5.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 5.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 1.25
"""

V0_TEXT = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="tiny"} 0.25
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.05",model_name="tiny"} 4.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="tiny"} 9.0
vllm:time_per_output_token_seconds_count{model_name="tiny"} 9.0
vllm:time_per_output_token_seconds_sum{model_name="tiny"} 0.9
# TYPE vllm:gpu_prefix_cache_hits counter
vllm:gpu_prefix_cache_hits_total{model_name="tiny"} 12.0
"""


def names(samples):  # type: ignore[no-untyped-def]
    return {s.name for s in samples}


def test_parses_v1_exposition() -> None:
    result = parse_exposition(V1_TEXT)
    by_name = {s.name: s for s in result.samples}
    assert by_name["vllm:num_preemptions_total"].value == 7.0
    assert by_name["vllm:kv_cache_usage_perc"].label("model_name") == "tiny"
    buckets = [s for s in result.samples if s.name.endswith("_bucket")]
    assert {s.label("le") for s in buckets} == {"0.1", "+Inf"}
    assert result.duplicates == 0


def test_nan_and_inf_are_kept() -> None:
    result = parse_exposition("a NaN\nb +Inf\nc -Inf\nd 1\n")
    values = {s.name: s.value for s in result.samples}
    assert math.isnan(values["a"])
    assert values["b"] == math.inf and values["c"] == -math.inf
    assert result.non_finite == 3


def test_duplicate_series_keep_first_and_are_counted() -> None:
    result = parse_exposition('x{a="1"} 1\nx{a="1"} 2\nx{a="2"} 3\n')
    assert [s.value for s in result.samples] == [1.0, 3.0]
    assert result.duplicates == 1


@pytest.mark.parametrize(
    "bad",
    [
        'vllm:num_requests_running{engine="0",model_name="ti',  # cut mid-label
        "vllm:num_requests_running 3\nvllm:kv_cache_usage_perc{engine=",  # cut in 2nd line
        "this is not an exposition\n",
        'x{a="1"} notanumber\n',
    ],
)
def test_malformed_or_truncated_is_refused(bad: str) -> None:
    with pytest.raises(ExpositionError) as err:
        parse_exposition(bad)
    assert "exposition" in str(err.value)


def test_last_line_without_newline_is_fine_when_complete() -> None:
    result = parse_exposition("a 1\nb 2")
    assert [s.value for s in result.samples] == [1.0, 2.0]


def test_canonical_names() -> None:
    assert canonical_name("vllm:gpu_cache_usage_perc") == "vllm:kv_cache_usage_perc"
    assert canonical_name("vllm:time_per_output_token_seconds_bucket") == (
        "vllm:inter_token_latency_seconds_bucket"
    )
    assert canonical_name("vllm:gpu_prefix_cache_hits_total") == "vllm:prefix_cache_hits_total"
    assert canonical_name("vllm:gpu_cache_usage_perc_something") == (
        "vllm:gpu_cache_usage_perc_something"
    )
    assert canonical_name("vllm:num_requests_running") == "vllm:num_requests_running"


def test_old_names_get_a_canonical_copy_and_keep_the_raw_name() -> None:
    samples = normalize_samples(parse_exposition(V0_TEXT).samples, "vllm")
    got = names(samples)
    assert "vllm:gpu_cache_usage_perc" in got and "vllm:kv_cache_usage_perc" in got
    assert "vllm:inter_token_latency_seconds_bucket" in got
    assert "vllm:prefix_cache_hits_total" in got
    kv = [s for s in samples if s.name == "vllm:kv_cache_usage_perc"]
    assert len(kv) == 1 and kv[0].value == 0.25


def test_both_names_present_counts_once_from_the_new_name() -> None:
    both = V1_TEXT + 'vllm:gpu_cache_usage_perc{engine="0",model_name="tiny"} 0.9\n'
    samples = normalize_samples(parse_exposition(both).samples, "vllm")
    kv = [s for s in samples if s.name == "vllm:kv_cache_usage_perc"]
    assert [s.value for s in kv] == [0.5]  # the current name wins; no duplicate series


def test_dcgm_hostname_label_both_spellings() -> None:
    for label in ("Hostname", "hostname"):
        samples = normalize_samples(
            parse_exposition(dcgm_exposition(0.0, gpus=2, hostname_label=label)).samples, "dcgm"
        )
        util = [s for s in samples if s.name == "DCGM_FI_DEV_GPU_UTIL"]
        assert len(util) == 2
        assert all(s.label("hostname") == "node-1" for s in util)
        assert all(s.label("Hostname") == "" for s in util)
        assert {s.label("UUID")[:4] for s in util} == {"GPU-"}


def test_target_labels_do_not_overwrite_exposed_ones_silently() -> None:
    samples = parse_exposition('m{instance="inner",x="1"} 1\n').samples
    out = with_target_labels(samples, {"job": "vllm", "instance": "vllm-0"})
    assert out[0].label("instance") == "vllm-0"
    assert out[0].label("exported_instance") == "inner"
    assert out[0].label("job") == "vllm"
