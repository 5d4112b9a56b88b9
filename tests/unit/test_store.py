"""The SQLite store: round trips, NaN/Inf/stale, retention, size bound, crash safety."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tuner.errors import StoreError
from tuner.exposition import Sample
from tuner.store import STALE_NAN, Matcher, Store, is_stale


def lab(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_round_trip_with_special_values(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        store.append([Sample("m", lab(a="1"), 1.5), Sample("m", lab(a="2"), math.nan)], 1000)
        store.append([Sample("m", lab(a="1"), math.inf), Sample("m", lab(a="2"), -math.inf)], 2000)
        store.append([Sample("m", lab(a="1"), STALE_NAN)], 3000)
        series = {
            s.labels["a"]: s for s in store.select([Matcher("__name__", "=", "m")], 0, 10_000)
        }
        assert list(series["1"].timestamps) == [1000, 2000, 3000]
        assert series["1"].values[0] == 1.5 and series["1"].values[1] == math.inf
        assert is_stale(series["1"].values[2])
        assert math.isnan(series["2"].values[0]) and not is_stale(series["2"].values[0])
        assert series["2"].values[1] == -math.inf
        assert series["1"].metric == {"__name__": "m", "a": "1"}


def test_matchers(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        store.append(
            [
                Sample("x", lab(job="vllm", i="a"), 1),
                Sample("x", lab(job="dcgm", i="b"), 2),
                Sample("y", lab(job="vllm", i="c"), 3),
            ],
            1000,
        )

        def sel(*ms: Matcher) -> set[str]:
            return {s.labels.get("i", "") for s in store.select(list(ms), 0, 2000)}

        assert sel(Matcher("__name__", "=", "x")) == {"a", "b"}
        assert sel(Matcher("__name__", "=", "x"), Matcher("job", "!=", "vllm")) == {"b"}
        assert sel(Matcher("__name__", "=~", "x|y"), Matcher("job", "=~", "vl.*")) == {"a", "c"}
        assert sel(Matcher("__name__", "=~", "x|y"), Matcher("i", "!~", "a|b")) == {"c"}
        assert sel(Matcher("__name__", "=", "x"), Matcher("missing", "=", "")) == {"a", "b"}


def test_retention_deletes_old_samples_only(tmp_path: Path) -> None:
    now = 10 * 86400.0
    with Store(tmp_path / "s.db", retention=86400, clock=lambda: now) as store:
        store.append_points(
            [("g", lab(), int((now - age) * 1000), 1.0) for age in (3 * 86400, 2 * 86400, 3600, 60)]
        )
        deleted = store.apply_retention()
        assert deleted == 2
        assert store.sample_count() == 2


def test_size_bound_drops_oldest_first(tmp_path: Path) -> None:
    now = 1_000_000.0
    with Store(tmp_path / "s.db", retention=10 * 86400, max_bytes=300_000, clock=lambda: now) as s:
        points = [
            ("g", lab(i=str(t % 50)), int((now - 86400) * 1000) + t * 5000, float(t))
            for t in range(20_000)
        ]
        s.append_points(points)
        before = s.time_range()
        s.apply_retention()
        after = s.time_range()
        assert before is not None and after is not None
        assert after[0] > before[0]  # oldest dropped
        assert after[1] == before[1]  # newest kept
        assert s._db_bytes() <= 300_000


def test_unwritable_store_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError) as err:
        Store(blocker / "sub" / "tuner.db")
    assert "cannot create directory" in str(err.value) and str(blocker) in str(err.value)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() == 0:
            # root ignores directory modes: use a path under /proc instead, which nobody can write
            target = Path("/proc/tuner-cannot-write/tuner.db")
        else:
            target = ro / "tuner.db"
        with pytest.raises(StoreError) as err2:
            Store(target)
        assert str(target.parent) in str(err2.value)
    finally:
        ro.chmod(0o700)


def test_not_a_store_file(tmp_path: Path) -> None:
    f = tmp_path / "junk.db"
    f.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store(f)


def test_documents(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        store.put_document("report", "a", {"x": 1}, ts=1)
        store.put_document("report", "b", {"x": 2}, ts=2)
        store.put_document("report", "a", {"x": 3}, ts=3)
        assert [(k, b["x"]) for k, _, b in store.documents("report")] == [("b", 2), ("a", 3)]
        store.delete_documents("report", ["b"])
        assert [k for k, _, _ in store.documents("report")] == ["a"]


WRITER = textwrap.dedent(
    """
    import sys
    from tuner.exposition import Sample
    from tuner.store import Store
    store = Store(sys.argv[1])
    batch = [Sample("m", (("i", str(i)),), 1.0) for i in range(200)]
    t = 0
    while True:
        t += 1
        store.append(batch, t)
        print(t, flush=True)
    """
)


def test_sigkill_during_writes_keeps_everything_committed(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    committed = 0
    deadline = time.monotonic() + 30
    while committed < 50 and time.monotonic() < deadline:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 50
    with Store(db, read_only=True) as store:
        series = store.select([Matcher("__name__", "=", "m")], 0, 10**9)
        assert len(series) == 200
        # every batch acknowledged before the kill is there, complete (one transaction each)
        lengths = {len(s.timestamps) for s in series}
        assert len(lengths) == 1
        assert lengths.pop() >= committed
