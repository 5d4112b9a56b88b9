"""Unit tests of tuner.canary's pure parts: argv building, failure classification on captured
vLLM CPU logs (tests/unit/data/vllm_logs, recorded from real failed starts of vLLM 0.32), and
the Kubernetes canary Pod manifest, validated offline against the Kubernetes schemas."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
import yaml

from tuner.canary import (
    CANARY_LABEL,
    DEFAULT_COMMAND,
    ROLE_LABEL,
    CanaryFailed,
    LaunchSpec,
    build_argv,
    detect_oom,
    failure_reason,
    kubernetes_pod_manifest,
    parse_flag_args,
    read_tail,
    rejected_flags,
    root_cause,
)
from tuner.errors import ConfigError, TunerError

LOGS = Path(__file__).parent / "data" / "vllm_logs"
REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- argv


def test_argv_orders_model_host_port_then_flags() -> None:
    spec = LaunchSpec(model="/m", served_model_name="tiny",
                      flags={"max-num-seqs": 64, "enable-chunked-prefill": True,
                             "enforce-eager": False, "block-size": None,
                             "gpu-memory-utilization": 0.85, "max-num-batched-tokens": 512.0})
    argv = build_argv(spec, 8123)
    assert argv[:3] == list(DEFAULT_COMMAND)
    assert argv[3:] == ["--model", "/m", "--host", "127.0.0.1", "--port", "8123",
                        "--served-model-name", "tiny", "--max-num-seqs", "64",
                        "--enable-chunked-prefill", "--gpu-memory-utilization", "0.85",
                        "--max-num-batched-tokens", "512"]
    assert DEFAULT_COMMAND[0] == sys.executable


def test_argv_json_values_and_numpy_scalars() -> None:
    spec = LaunchSpec(model="m", flags={
        "speculative-config": {"method": "ngram", "num_speculative_tokens": 3},
        "--max-num-seqs": np.int64(32), "kv-cache-memory-bytes": np.float64(2 ** 28)})
    argv = build_argv(spec, 1)
    i = argv.index("--speculative-config")
    assert argv[i + 1] == '{"method":"ngram","num_speculative_tokens":3}'
    assert argv[argv.index("--max-num-seqs") + 1] == "32"
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == "268435456"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (LaunchSpec(model=""), "launch.model is empty"),
        (LaunchSpec(model="m", command=()), "launch.command is empty"),
        (LaunchSpec(model="m", flags={"port": 9}), "'port' is set by the tuner itself"),
        (LaunchSpec(model="m", flags={"--model": "x"}), "'model' is set by the tuner itself"),
        (LaunchSpec(model="m", flags={"max num seqs": 3}), "is not a valid flag name"),
        (LaunchSpec(model="m", flags={"x": object()}), "has a value of type object"),
    ],
)
def test_bad_launch_specs_name_the_problem(spec: LaunchSpec, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_argv(spec, 1)
    assert message in str(err.value)


def test_parse_flag_args_round_trip() -> None:
    pos, flags = parse_flag_args(["org/model", "--port=8000", "--max-num-seqs", "64",
                                  "--enforce-eager", "--dtype", "bfloat16"])
    assert pos == ["org/model"]
    assert flags == {"port": "8000", "max-num-seqs": "64", "enforce-eager": True,
                     "dtype": "bfloat16"}


# ----------------------------------------------------------------------------- log analysis


def test_kv_cache_too_small_for_max_model_len_is_oom() -> None:
    text = (LOGS / "start_kv_cache_too_small.log").read_text()
    assert failure_reason(text, 1) == "oom"
    cause = root_cause(text)
    assert cause is not None and cause.startswith("ValueError: To serve at least one request")
    assert "larger than the available KV cache memory" in (detect_oom(text) or "")


def test_gpu_memory_utilization_too_high_is_oom() -> None:
    text = (LOGS / "start_gpu_memory_utilization_too_high.log").read_text()
    assert failure_reason(text, 1) == "oom"
    cause = root_cause(text)
    assert cause is not None and "less than desired CPU memory utilization" in cause


def test_unknown_flag_is_flag_rejected_naming_the_flag() -> None:
    text = (LOGS / "start_unknown_flag.log").read_text()
    assert failure_reason(text, 2) == "flag_rejected"
    assert root_cause(text) == "api_server.py: error: unrecognized arguments: --no-such-flag"
    refused = rejected_flags(text, 2)
    assert refused is not None and refused.flags == ("--no-such-flag",)
    assert refused.message == "unrecognized arguments: --no-such-flag"
    assert rejected_flags(text, 1) is None  # only argparse's exit status 2 is a refusal


@pytest.mark.parametrize(("line", "flags", "words"), [
    ("vllm: error: unrecognized arguments: --max-num-active-seqs 4 --bogus",
     ("--max-num-active-seqs", "--bogus"), "unrecognized arguments"),
    ("api_server.py: error: argument --max-num-seqs: invalid int value: 'many'",
     ("--max-num-seqs",), "invalid int value: 'many'"),
    ("api_server.py: error: argument --block-size/-b: invalid choice: 7 (choose from 16, 32)",
     ("--block-size",), "invalid choice: 7"),
])
def test_argparse_refusals_name_the_flags(line: str, flags: tuple[str, ...], words: str) -> None:
    text = "INFO usage: ...\n" + line + "\n"
    refused = rejected_flags(text, 2)
    assert refused is not None and refused.flags == flags and words in refused.message
    assert failure_reason(text, 2) == "flag_rejected"
    assert all(f in refused.explain() for f in flags)


def test_healthy_log_has_no_failure() -> None:
    text = (LOGS / "healthy_server.log").read_text()
    assert detect_oom(text) is None
    assert root_cause(text) is None
    assert failure_reason(text, 0) == "exit"


@pytest.mark.parametrize(
    "line",
    ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
     "RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
     "memory: you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)",
     "terminate called after throwing an instance of 'std::bad_alloc'",
     "ValueError: No available memory for the cache blocks. Try increasing "
     "`gpu_memory_utilization` when initializing the engine."],
)
def test_other_memory_failures_are_oom(line: str) -> None:
    assert failure_reason("INFO starting\n" + line + "\n", 1) == "oom"


def test_sigkill_from_outside_counts_as_oom() -> None:
    assert failure_reason("INFO all good\n", -signal.SIGKILL) == "oom"
    assert failure_reason("INFO all good\n", 1) == "exit"


def test_canary_failed_carries_reason_and_tail() -> None:
    exc = CanaryFailed("oom", "process exited with code 1", "last line")
    assert isinstance(exc, TunerError)
    assert exc.reason == "oom" and exc.log_tail == "last line"
    assert "canary failed (oom)" in str(exc) and "last line" in str(exc)
    with pytest.raises(ValueError, match="unknown canary failure reason"):
        CanaryFailed("tired", "x")


def test_read_tail_reads_the_end_only(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert read_tail(log, 3) == "line 9997\nline 9998\nline 9999"
    assert read_tail(tmp_path / "missing.log") == ""


# ----------------------------------------------------------------------------- kubernetes


def _deployment() -> dict[str, object]:
    return yaml.safe_load((REPO / "deploy/kubernetes/base/deployment.yaml").read_text())


def test_pod_manifest_from_production_deployment_validates_and_is_out_of_the_service() -> None:
    spec = LaunchSpec(flags={"max-num-seqs": 256, "max-num-batched-tokens": 1024,
                             "enable-chunked-prefill": True, "gpu-memory-utilization": 0.8},
                      env={"VLLM_LOGGING_LEVEL": "DEBUG"})
    pod = kubernetes_pod_manifest(spec, _deployment(), "tuner-canary-0001",
                                  {"tuner.vllm/trial": "1"})
    kubernetes_validate.validate(pod, "1.30", strict=True)  # raises on any schema error
    kubernetes_validate.validate(pod, "1.37", strict=True)
    labels = pod["metadata"]["labels"]
    assert labels[CANARY_LABEL] == "true" and labels["tuner.vllm/trial"] == "1"
    service = yaml.safe_load((REPO / "deploy/kubernetes/base/service.yaml").read_text())
    selector = service["spec"]["selector"]
    assert not all(labels.get(k) == v for k, v in selector.items()), "Service would select it"
    assert labels[ROLE_LABEL] == "canary"
    (container,) = pod["spec"]["containers"]  # the tuner sidecar is not part of a canary
    assert container["name"] == "vllm"
    args = container["args"]
    _, flags = parse_flag_args(args)
    assert flags["model"] == "Qwen/Qwen2.5-1.5B-Instruct"  # kept from the template
    assert flags["served-model-name"] == "model"
    assert flags["port"] == "8000" and flags["host"] == "0.0.0.0"
    assert flags["max-num-seqs"] == "256"  # candidate overrides template's 128
    assert flags["gpu-memory-utilization"] == "0.8"
    assert flags["enable-chunked-prefill"] is True
    assert {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"} in container["env"]
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert volumes == {"shm", "model-cache"}
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "command" not in container  # the image's entrypoint is kept


def test_pod_manifest_from_bare_pod_with_custom_command() -> None:
    template = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "x", "namespace": "ml",
                             "labels": {ROLE_LABEL: "serving"}},
                "spec": {"containers": [{"name": "server", "image": "img"}]}}
    spec = LaunchSpec(command=("vllm", "serve"), model="m", flags={"max-num-seqs": 8})
    pod = kubernetes_pod_manifest(spec, template, "c1", {})
    kubernetes_validate.validate(pod, "1.30", strict=True)
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["vllm", "serve"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000}]
    assert pod["metadata"]["namespace"] == "ml"
    assert pod["metadata"]["labels"][ROLE_LABEL] == "canary"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"kind": "Service", "spec": {}}, "kind 'Service' is not supported"),
        ({"kind": "Pod", "spec": {"containers": []}}, "spec.containers is missing or empty"),
    ],
)
def test_bad_pod_templates(template: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        kubernetes_pod_manifest(LaunchSpec(model="m"), template, "c", {})
    assert message in str(err.value)
