"""The canary launcher on real vLLM CPU: health, failures with reason and log tail, and no
process left behind (process groups, SIGTERM to the tuner).

Failed starts here are cheap on purpose: an impossible KV cache fails during engine start-up
(~30 s), a 3 s health timeout stops vLLM mid-start. Run under ``flock /tmp/tuner-vllm.lock``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.vllm import DEFAULT_KV_BYTES, VllmServer, test_launch_spec
from tuner.canary import CanaryFailed, LocalCanary, active_canary_pids

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _pids_with(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            out.append(int(entry.name))
    return out


def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def test_server_fixture_is_a_healthy_canary(vllm_server: VllmServer) -> None:
    h = vllm_server.handle
    assert h.url == f"http://127.0.0.1:{h.port}" and h.metrics_url == h.url + "/metrics"
    assert httpx.get(h.url + "/health", timeout=5, trust_env=False).status_code == 200
    metrics = httpx.get(h.metrics_url, timeout=5, trust_env=False).text
    info = [line for line in metrics.splitlines() if line.startswith("vllm:cache_config_info")]
    assert info and f'kv_cache_memory_bytes="{DEFAULT_KV_BYTES}"' in info[0]
    assert vllm_server.canary.alive() and h.pid in active_canary_pids()
    assert "--kv-cache-memory-bytes" in h.log_path.read_text().splitlines()[0]


def test_impossible_kv_cache_fails_with_oom_and_log_tail(tmp_path: Path,
                                                         tiny_model_dir: Path) -> None:
    name = f"canary-oom-{uuid.uuid4().hex[:8]}"
    spec = test_launch_spec(tiny_model_dir, {"kv-cache-memory-bytes": 1 << 20}, kv_bytes=None)
    spec = type(spec)(**{**spec.__dict__, "served_model_name": name})
    canary = LocalCanary(spec, tmp_path / "oom.log", health_timeout=240)
    with pytest.raises(CanaryFailed) as err:
        canary.start()
    assert err.value.reason == "oom"
    assert "larger than the available KV cache memory" in str(err.value)
    assert err.value.log_tail and len(err.value.log_tail.splitlines()) <= 60
    assert (tmp_path / "oom.log").stat().st_size > 0
    assert not canary.alive() and _pids_with(name) == []


def test_health_timeout_stops_the_whole_process_group(tmp_path: Path,
                                                      tiny_model_dir: Path) -> None:
    name = f"canary-slow-{uuid.uuid4().hex[:8]}"
    spec = test_launch_spec(tiny_model_dir)
    spec = type(spec)(**{**spec.__dict__, "served_model_name": name})
    canary = LocalCanary(spec, tmp_path / "slow.log", health_timeout=8)
    registered = active_canary_pids()
    t0 = time.monotonic()
    with pytest.raises(CanaryFailed) as err:
        canary.start()
    assert err.value.reason == "health_timeout"
    assert "not healthy after 8s" in str(err.value)
    assert time.monotonic() - t0 < 8 + 30
    assert not canary.alive() and canary.process is None
    assert _pids_with(name) == []
    assert active_canary_pids() == registered


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tests.support.vllm import test_launch_spec
    from tuner.canary import LaunchSpec, LocalCanary, install_cleanup_handlers
    install_cleanup_handlers()
    spec = test_launch_spec(Path(sys.argv[1]))
    spec = LaunchSpec(**{**spec.__dict__, "served_model_name": sys.argv[2]})
    LocalCanary(spec, Path(sys.argv[3]), health_timeout=600).start()
    print("started", flush=True)
    import time
    time.sleep(600)
""")


def test_sigterm_to_the_tuner_leaves_no_canary(tmp_path: Path, tiny_model_dir: Path) -> None:
    name = f"canary-term-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_model_dir), name,
                              str(tmp_path / "term.log")], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        leader: list[int] = []
        while time.monotonic() < deadline and not leader:
            leader = _pids_with(f"--served-model-name {name}")
            time.sleep(0.2)
        assert leader, "the canary never started"
        pgid = os.getpgid(leader[0])
        assert pgid == leader[0]  # its own process group
        deadline = time.monotonic() + 60  # wait for vLLM's engine process to exist too
        while time.monotonic() < deadline and len(_group_members(pgid)) < 2:
            time.sleep(0.2)
        assert len(_group_members(pgid)) >= 2
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
        end = time.monotonic() + 20
        while time.monotonic() < end and _group_members(pgid):
            time.sleep(0.2)
        assert _group_members(pgid) == []
        assert _pids_with(name) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
