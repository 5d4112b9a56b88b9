"""The exposition parser on real vLLM 0.32 CPU ``/metrics`` text, and the facts each recorded
mode was captured for.

The files in tests/unit/data/expositions were recorded by ``tests.support.record_expositions``
from real servers (one per mode, a mid-load and an after-load scrape each, and a JSON sidecar
with the flags and what the load client saw). Re-record with
``flock /tmp/tuner-vllm.lock python -m tests.support.record_expositions``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.support.record_expositions import (
    DEFAULT_OUT,
    RECIPES,
    REFUSALS,
    SPECDYN_SCHEDULE,
    Mode,
    Phase,
    describe_argv,
    launch_spec,
)
from tuner.canary import failure_reason, rejected_flags, root_cause
from tuner.exposition import VLLM_ALIASES, Sample, normalize_samples, parse_exposition

DATA = Path(__file__).parent / "data" / "expositions"
VERSION = "0.32"
MODES = [m for m in Mode if m is not Mode.REFUSALS]
FILES = [(m, p) for m in MODES for p in Phase]
#: The only vLLM family without an ``engine`` label: it is counted in the API server.
FRONTEND_FAMILIES = ("vllm:admission_rejections_total", "vllm:admission_rejections_created")
ADMISSION_MODES = (Mode.ADMISSION, Mode.ADMISSION_TOKENS, Mode.ADMISSION_NOSTREAM,
                   Mode.API2_ADMISSION)


def path_of(mode: Mode, phase: Phase) -> Path:
    return DATA / f"vllm-{VERSION}-{mode}-{phase}.txt"


@cache
def samples(mode: Mode, phase: Phase) -> tuple[Sample, ...]:
    return tuple(parse_exposition(path_of(mode, phase).read_text()).samples)


@cache
def sidecar(mode: Mode) -> dict[str, Any]:
    return dict(json.loads((DATA / f"vllm-{VERSION}-{mode}.json").read_text()))


def matching(items: Iterable[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in items if s.name == name
            and all(s.label(k) == v for k, v in labels.items())]


def total(items: Iterable[Sample], name: str, **labels: str) -> float:
    found = matching(items, name, **labels)
    assert found, f"no {name} {labels} in the exposition"
    return sum(s.value for s in found)


def cache_info(items: Iterable[Sample]) -> list[dict[str, str]]:
    return [dict(s.labels) for s in matching(items, "vllm:cache_config_info")]


def client(mode: Mode) -> dict[str, Any]:
    return dict(sidecar(mode)["client"])


# ----------------------------------------------------------------------------- every file


def test_recorder_writes_where_the_tests_read() -> None:
    assert DEFAULT_OUT.resolve() == DATA.resolve()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_has_two_scrapes_and_a_sidecar_of_the_current_recipe(mode: Mode) -> None:
    doc = sidecar(mode)
    assert doc["vllm_version"].startswith(VERSION + ".")
    assert doc["mode"] == str(mode)
    assert doc["files"] == {str(p): path_of(mode, p).name for p in Phase}
    # The recording used the recipe's flags: re-record after changing a recipe.
    assert doc["flags"] == json.loads(json.dumps(dict(RECIPES[mode].flags)))
    model = Path("/tiny-model")
    assert doc["argv"] == describe_argv(launch_spec(RECIPES[mode], model), model)
    c = client(mode)
    assert c["sent"] == RECIPES[mode].load.requests
    assert c["ok"] + sum(c["http_status"].values()) + sum(c["other_errors"].values()) == c["sent"]


@pytest.mark.parametrize(("mode", "phase"), FILES)
def test_parses_without_duplicates_or_non_finite_values(mode: Mode, phase: Phase) -> None:
    result = parse_exposition(path_of(mode, phase).read_text())
    assert result.duplicates == 0
    assert result.non_finite == 0
    assert len(result.samples) > 300
    assert {s.name for s in result.samples} >= {
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total", "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
        "vllm:admission_rejections_total", "vllm:num_requests_waiting_by_reason",
        "vllm:cache_config_info", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"}


@pytest.mark.parametrize(("mode", "phase"), FILES)
def test_every_engine_series_has_an_engine_label(mode: Mode, phase: Phase) -> None:
    engines = {"0", "1"} if mode is Mode.DP2 else {"0"}
    vllm = [s for s in samples(mode, phase) if s.name.startswith("vllm:")]
    frontend = [s for s in vllm if s.name in FRONTEND_FAMILIES]
    engine = [s for s in vllm if s.name not in FRONTEND_FAMILIES]
    assert {s.label("engine") for s in engine} == engines
    assert all(s.label("engine") == "" for s in frontend)
    # Every vLLM series names the model, except cache_config_info (CacheConfig fields only).
    assert {s.label("model_name") for s in vllm if s.name != "vllm:cache_config_info"} == {
        "tiny-llama"}
    assert all(s.label("model_name") == "" for s in vllm if s.name == "vllm:cache_config_info")
    # Families present per engine: every engine exports the same series.
    per_engine = {e: {(s.name, tuple(kv for kv in s.labels if kv[0] != "engine"))
                      for s in engine if s.label("engine") == e} for e in engines}
    assert len({frozenset(v) for v in per_engine.values()}) == 1


@pytest.mark.parametrize(("mode", "phase"), FILES)
def test_no_old_names_and_normalizing_changes_nothing(mode: Mode, phase: Phase) -> None:
    items = samples(mode, phase)
    assert not any(s.name.startswith(old) for s in items for old in VLLM_ALIASES)
    assert normalize_samples(items, "vllm") == list(items)


@pytest.mark.parametrize(("mode", "phase"), FILES)
def test_waiting_is_the_sum_of_waiting_by_reason(mode: Mode, phase: Phase) -> None:
    items = samples(mode, phase)
    reasons = {s.label("reason") for s in matching(items, "vllm:num_requests_waiting_by_reason")}
    assert reasons == {"capacity", "deferred"}
    for s in matching(items, "vllm:num_requests_waiting"):
        engine = s.label("engine")
        by_reason = total(items, "vllm:num_requests_waiting_by_reason", engine=engine)
        assert by_reason == s.value


@pytest.mark.parametrize(("mode", "phase"), FILES)
def test_finished_reasons_and_admission_reasons_are_all_exported(mode: Mode,
                                                                 phase: Phase) -> None:
    items = samples(mode, phase)
    finished = {s.label("finished_reason") for s in matching(items, "vllm:request_success_total")}
    assert finished == {"stop", "length", "abort", "error", "repetition"}
    reasons = {s.label("reason") for s in matching(items, "vllm:admission_rejections_total")}
    assert reasons == {"max_num_queued_reqs", "max_num_queued_tokens"}


@pytest.mark.parametrize(("mode", "phase"), FILES)
def test_cache_config_info_carries_the_kv_capacity(mode: Mode, phase: Phase) -> None:
    items = samples(mode, phase)
    infos = cache_info(items)
    assert len(infos) == (2 if mode is Mode.DP2 else 1)
    assert all(s.value == 1.0 for s in matching(items, "vllm:cache_config_info"))
    for info in infos:
        assert info["block_size"] == "128"
        assert info["kv_cache_memory_bytes"] == str(sidecar(mode)["kv_cache_memory_bytes"])
        tokens, blocks = int(info["kv_cache_size_tokens"]), int(info["num_gpu_blocks"])
        # num_gpu_blocks is summed over data-parallel engines; kv_cache_size_tokens is per engine.
        assert blocks * int(info["block_size"]) == tokens * len(infos)
        max_len = int(RECIPES[mode].flags.get("max-model-len", 4096))
        assert float(info["kv_cache_max_concurrency"]) == tokens / max_len


@pytest.mark.parametrize("mode", MODES)
def test_counters_only_grow_between_the_mid_and_the_after_scrape(mode: Mode) -> None:
    mid = {(s.name, s.labels): s.value for s in samples(mode, Phase.MID)
           if s.name.endswith(("_total", "_count", "_bucket"))}
    after = {(s.name, s.labels): s.value for s in samples(mode, Phase.AFTER)}
    assert mid
    for key, value in mid.items():
        assert after.get(key, 0.0) >= value, key


@pytest.mark.parametrize("mode", MODES)
def test_http_requests_count_what_the_client_sent(mode: Mode) -> None:
    items = samples(mode, Phase.AFTER)
    http = matching(items, "http_requests_total")
    assert {s.label("handler") for s in http} == {"/v1/completions"}  # /metrics is not counted
    assert {s.label("method") for s in http} == {"POST"}
    assert {s.label("status") for s in http} <= {"2xx", "4xx", "5xx"}
    c = client(mode)
    extras = 3 if RECIPES[mode].extras else 0  # the 400, the stop and the aborted request
    assert total(items, "http_requests_total") == c["sent"] + extras
    assert sum(s.value for s in http if s.label("status") == "5xx") == c["http_status"].get(
        "503", 0)


@pytest.mark.parametrize("mode", MODES)
def test_finished_requests_match_the_client(mode: Mode) -> None:
    items = samples(mode, Phase.AFTER)
    c = client(mode)
    assert total(items, "vllm:request_success_total", finished_reason="length") == c["ok"]
    assert total(items, "vllm:request_success_total", finished_reason="error") == 0


# ----------------------------------------------------------------------------- per mode


def test_plain_a_client_abort_is_not_a_finished_request() -> None:
    items = samples(Mode.PLAIN, Phase.AFTER)
    doc = sidecar(Mode.PLAIN)
    assert doc["extras"] == {"too_long_prompt_status": 400, "stop_request_status": 200,
                             "stop_finish_reason": "stop", "abort_request_status": 200}
    assert total(items, "vllm:request_success_total", finished_reason="stop") == 1
    # The client closed a streamed request after its first chunk: vLLM aborted it, but
    # finished_reason="abort" only counts engine-side aborts.
    assert total(items, "vllm:request_success_total", finished_reason="abort") == 0
    assert total(items, "vllm:time_to_first_token_seconds_count") == doc["client"]["ok"] + 2
    assert total(items, "vllm:e2e_request_latency_seconds_count") == doc["client"]["ok"] + 1
    assert total(items, "http_requests_total", status="4xx") == 1  # the too-long prompt
    assert total(items, "http_requests_total", status="2xx") == doc["client"]["ok"] + 2
    assert not matching(samples(Mode.PLAIN, Phase.MID), "http_requests_total", status="4xx")


def test_preempting_preempts_with_24_blocks() -> None:
    after = samples(Mode.PREEMPTING, Phase.AFTER)
    assert total(after, "vllm:num_preemptions_total") > 0
    assert total(samples(Mode.PREEMPTING, Phase.MID), "vllm:num_preemptions_total") > 0
    (info,) = cache_info(after)
    assert (info["num_gpu_blocks"], info["num_gpu_blocks_override"]) == ("24", "24")
    assert info["kv_cache_size_tokens"] == "3072"
    assert total(after, "vllm:request_num_preemptions_sum") == total(
        after, "vllm:num_preemptions_total")
    mid = samples(Mode.PREEMPTING, Phase.MID)
    assert total(mid, "vllm:num_requests_waiting") > 0


def _spec_counts(items: Iterable[Sample]) -> tuple[float, float, float]:
    items = list(items)
    return (total(items, "vllm:spec_decode_num_drafts_total"),
            total(items, "vllm:spec_decode_num_draft_tokens_total"),
            total(items, "vllm:spec_decode_num_accepted_tokens_total"))


@pytest.mark.parametrize("mode", [Mode.SPECDECODE, Mode.SPECDYN])
def test_speculative_decoding_counters(mode: Mode) -> None:
    items = samples(mode, Phase.AFTER)
    drafts, draft_tokens, accepted = _spec_counts(items)
    assert 0 < accepted <= draft_tokens
    assert drafts <= draft_tokens <= 3 * drafts
    per_pos = matching(items, "vllm:spec_decode_num_accepted_tokens_per_pos_total")
    assert {s.label("position") for s in per_pos} == {"0", "1", "2"}
    assert sum(s.value for s in per_pos) == accepted
    by_pos = sorted(per_pos, key=lambda s: s.label("position"))
    assert by_pos[0].value >= by_pos[1].value >= by_pos[2].value
    assert not matching(samples(Mode.PLAIN, Phase.AFTER), "vllm:spec_decode_num_drafts_total")


def test_dynamic_speculative_decoding_drafts_fewer_tokens_at_larger_batches() -> None:
    assert sidecar(Mode.SPECDYN)["flags"]["speculative-config"][
        "num_speculative_tokens_per_batch_size"] == SPECDYN_SCHEDULE
    static_drafts, static_tokens, _ = _spec_counts(samples(Mode.SPECDECODE, Phase.AFTER))
    dyn_drafts, dyn_tokens, _ = _spec_counts(samples(Mode.SPECDYN, Phase.AFTER))
    assert static_tokens / static_drafts > 2.5  # K=3 almost always
    assert dyn_tokens / dyn_drafts < 2.0  # K=1 while 3..8 requests run


@pytest.mark.parametrize("mode", ADMISSION_MODES)
def test_admission_rejections_equal_what_the_client_was_refused(mode: Mode) -> None:
    after = samples(mode, Phase.AFTER)
    c = client(mode)
    reason = ("max_num_queued_tokens" if "max-num-queued-tokens" in RECIPES[mode].flags
              else "max_num_queued_reqs")
    other = ({"max_num_queued_reqs", "max_num_queued_tokens"} - {reason}).pop()
    refused = c["http_status"].get("503", 0) + c["other_errors"].get("stream error", 0)
    assert refused > 0
    assert total(after, "vllm:admission_rejections_total", reason=reason) == refused
    assert total(after, "vllm:admission_rejections_total", reason=other) == 0
    assert set(c["http_status"]) <= {"503"}
    assert set(c["other_errors"]) <= {"stream error"}
    mid = samples(mode, Phase.MID)
    assert 0 < total(mid, "vllm:admission_rejections_total", reason=reason) <= refused


@pytest.mark.parametrize("mode", [Mode.ADMISSION, Mode.ADMISSION_TOKENS])
def test_streamed_rejections_split_into_503s_and_errors_inside_a_200_stream(mode: Mode) -> None:
    """A streamed request refused by admission control either gets HTTP 503 or a 200 whose
    stream carries the error: http_requests_total{status="5xx"} counts only the first kind."""
    after = samples(mode, Phase.AFTER)
    c = client(mode)
    assert c["http_status"]["503"] > 0 and c["other_errors"]["stream error"] > 0
    assert "busy" in c["examples"]["stream error"] or "503" in c["examples"]["stream error"]
    assert total(after, "http_requests_total", status="5xx") == c["http_status"]["503"]
    assert total(after, "http_requests_total", status="2xx") == (
        c["ok"] + c["other_errors"]["stream error"])


@pytest.mark.parametrize("mode", [Mode.ADMISSION_NOSTREAM, Mode.API2_ADMISSION])
def test_non_streamed_rejections_are_all_503(mode: Mode) -> None:
    after = samples(mode, Phase.AFTER)
    c = client(mode)
    assert c["other_errors"] == {}
    assert total(after, "http_requests_total", status="5xx") == c["http_status"]["503"]
    assert total(after, "vllm:admission_rejections_total") == c["http_status"]["503"]
    assert "busy" in c["examples"]["http 503"]


@pytest.mark.parametrize("mode", [Mode.API2, Mode.API2_ADMISSION])
def test_two_api_servers_export_each_series_once_without_pid(mode: Mode) -> None:
    command = RECIPES[mode].command
    assert command is not None and "serve" in command
    for phase in Phase:
        items = samples(mode, phase)
        assert not any(k == "pid" for s in items for k, _ in s.labels)
        names = {s.name for s in items}
        # Prometheus multiprocess mode: no process/python collectors, no _created samples.
        assert not any(n.startswith(("process_", "python_")) for n in names)
        assert not any(n.endswith("_created") for n in names)
        assert len(matching(items, "vllm:num_requests_running")) == 1
        assert len(matching(items, "vllm:kv_cache_usage_perc")) == 1
        assert len(cache_info(items)) == 1
    # Counters are summed over both API servers: every request is counted once.
    after = samples(mode, Phase.AFTER)
    c = client(mode)
    assert total(after, "http_requests_total") == c["sent"]
    assert total(after, "vllm:request_success_total") == c["ok"]


@pytest.mark.parametrize("mode", [m for m in MODES if m not in (Mode.API2, Mode.API2_ADMISSION)])
def test_one_api_server_has_process_metrics(mode: Mode) -> None:
    names = {s.name for s in samples(mode, Phase.AFTER)}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= names


def test_dp2_two_engines_share_the_load() -> None:
    mid = samples(Mode.DP2, Phase.MID)
    running = {s.label("engine"): s.value for s in matching(mid, "vllm:num_requests_running")}
    assert set(running) == {"0", "1"} and all(v > 0 for v in running.values())
    after = samples(Mode.DP2, Phase.AFTER)
    gen = {s.label("engine"): s.value for s in matching(after, "vllm:generation_tokens_total")}
    assert all(v > 0 for v in gen.values())
    assert total(after, "vllm:request_success_total") == client(Mode.DP2)["sent"]
    assert len(matching(after, "vllm:admission_rejections_total")) == 2  # once, not per engine


def test_active_seqs_cap_running_below_max_num_seqs() -> None:
    flags = RECIPES[Mode.ACTIVE].flags
    mid = samples(Mode.ACTIVE, Phase.MID)
    assert 0 < total(mid, "vllm:num_requests_running") <= flags["max-num-active-seqs"]
    assert total(mid, "vllm:num_requests_waiting_by_reason", reason="capacity") > 0
    assert total(mid, "vllm:num_requests_running") + total(
        mid, "vllm:num_requests_waiting") <= RECIPES[Mode.ACTIVE].load.concurrency


# ----------------------------------------------------------------------------- refusals


@cache
def refusals() -> dict[str, Any]:
    return dict(json.loads((DATA / f"vllm-{VERSION}-refusals.json").read_text()))


def test_every_refusal_was_recorded_and_refused() -> None:
    doc = refusals()
    assert doc["vllm_version"].startswith(VERSION + ".")
    assert set(doc["refusals"]) == set(REFUSALS)
    for name, entry in doc["refusals"].items():
        assert entry["started"] is False, name
        # ``reason`` was tuner's classification when recorded; argparse refusals are now
        # ``flag_rejected`` (naming the flag), other failed starts stay ``exit``.
        expected = "flag_rejected" if entry["exit_code"] == 2 else "exit"
        assert entry["reason"] in ("exit", expected), name
        tail = "\n".join(entry["log_tail"])
        assert failure_reason(tail, entry["exit_code"]) == expected, name
        assert root_cause(tail) is not None, name


def test_unknown_flag_exits_2_with_the_argparse_line() -> None:
    entry = refusals()["refusals"]["unknown_flag"]
    assert entry["exit_code"] == 2
    line = "api_server.py: error: unrecognized arguments: --no-such-flag"
    assert entry["root_cause"] == line
    assert root_cause("\n".join(entry["log_tail"])) == line
    refused = rejected_flags("\n".join(entry["log_tail"]), entry["exit_code"])
    assert refused is not None and refused.flags == ("--no-such-flag",)
    assert "--no-such-flag" in refused.explain()


@pytest.mark.parametrize(("name", "message"), [
    ("active_above_max_num_seqs",
     "max_num_active_seqs (16) cannot be greater than max_num_seqs (8)"),
    ("specdyn_mapping_schedule", "Input should be a valid list"),
])
def test_invalid_values_exit_1_with_a_validation_error(name: str, message: str) -> None:
    entry = refusals()["refusals"][name]
    assert entry["exit_code"] == 1
    assert "ValidationError" in entry["root_cause"]
    assert any(message in line for line in entry["log_tail"])
