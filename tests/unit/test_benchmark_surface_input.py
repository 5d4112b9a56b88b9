"""``benchmarks/search_efficiency.py --data FILE`` refuses a surface it cannot replay with one
clear line naming the file and what is wrong (exit 1, no traceback, the file untouched)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.tiny_model import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "search_efficiency.py"
GRID = {"max-num-seqs": [2, 16], "num-gpu-blocks-override": [20, 64]}


def trial(seqs: int, blocks: int, **over: Any) -> dict[str, Any]:
    return {"flags": {"max-num-seqs": seqs, "num-gpu-blocks-override": blocks}, "state": "ok",
            "objective": 1000.0, **over}


def surface(trials: list[dict[str, Any]], grid: Any = None) -> dict[str, Any]:
    return {"what": "test", "grid": GRID if grid is None else grid, "load": {},
            "trials": trials}


def run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--data", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


@pytest.mark.parametrize(("content", "says"), [
    (None, "cannot read it"),
    ("{not json", "not JSON"),
    (json.dumps([1, 2]), "not a surface of record_surface.py"),
    (json.dumps(surface([], grid={"max-num-seqs": [2, 16], "tensor-parallel-size": [1, 2]})),
     "grid axis 'tensor-parallel-size' is not a knob's flag"),
    (json.dumps(surface([], grid={"max-num-seqs": [2]})), "needs two or more integer values"),
    (json.dumps(surface([trial(2, 20), {"flags": {"max-num-seqs": 2}}])),
     "trial 1 has no flags for every grid axis"),
    (json.dumps(surface([trial(2, 20), trial(3, 20)])),
     "trial 1 ran {'max-num-seqs': 3, 'num-gpu-blocks-override': 20}, which is not a point"),
    (json.dumps(surface([trial(2, 20), trial(2, 64), trial(16, 20)])),
     "1 of 4 grid points have no run (e.g. {'max-num-seqs': 16, "
     "'num-gpu-blocks-override': 64}): an incomplete surface"),
])
def test_a_surface_that_cannot_be_replayed_is_refused_naming_the_file_and_the_fault(
        tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "surface.json"
    if content is not None:
        path.write_text(content)
    res = run(path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.startswith(f"search_efficiency: {path}: "), res.stderr
    assert says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    if content is not None:
        assert path.read_text() == content  # the file is only read
