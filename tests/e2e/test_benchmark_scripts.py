"""Every script that starts vLLM canaries stops them on SIGTERM (``timeout``, a scheduler) and
on Ctrl-C, as ``tuner tune`` does: once the script's first vLLM server is starting, the signal
goes to the script alone, and no process carrying the test's mark is left behind.

Real vLLM CPU servers (the scripts' own, on the generated tiny model). The scripts that take
the vLLM lock are pointed at a private lock file (``TUNER_VLLM_LOCK``), because this suite is
itself run under ``flock /tmp/tuner-vllm.lock``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_tune_e2e import processes_with
from tests.support.tiny_model import REPO_ROOT

pytestmark = pytest.mark.e2e

SCRIPTS = {
    "record_surface.py": ["--out", "{tmp}/surface.json"],
    "tune_noise.py": ["--restarts", "1", "--runs", "1", "--seconds", "2"],
    "canary_load.py": ["--runs", "1", "--seconds", "2"],
    "daemon_overhead.py": ["--seconds", "5"],
}


def _vllm_children(mark: str, script_pid: int) -> list[int]:
    out = []
    for pid in processes_with(mark):
        if pid == script_pid:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"vllm" in cmdline:
            out.append(pid)
    return out


@pytest.mark.parametrize(("script", "signum"), [
    *((name, signal.SIGTERM) for name in sorted(SCRIPTS)),
    ("record_surface.py", signal.SIGINT),
])
def test_script_stops_its_vllm_servers_on_a_signal(
        tmp_path: Path, tiny_model_dir: Path, script: str, signum: int) -> None:
    mark = uuid.uuid4().hex
    argv = [sys.executable, str(REPO_ROOT / "benchmarks" / script),
            *(a.format(tmp=tmp_path) for a in SCRIPTS[script])]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TUNER_E2E_MARK": mark,
           "TUNER_TINY_MODEL_DIR": str(tiny_model_dir),
           "TUNER_VLLM_LOCK": str(tmp_path / "vllm.lock")}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not _vllm_children(mark, proc.pid):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the script started no vLLM server in 180 s"
            time.sleep(0.5)
        time.sleep(3)  # mid start-up: the server is loading
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-3000:]
    deadline = time.monotonic() + 30
    while (left := processes_with(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"{script} left {len(left)} processes after signal {signum}:\n{out[-2000:]}"
