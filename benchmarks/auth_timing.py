"""Does the listener's answer time tell which basic-auth users exist? (prints numbers)

Times ``BasicAuthChecker.check`` (what every request to a listener with ``basic_auth_users``
runs) for a known user with a wrong password and for an unknown user, interleaved, at the
cost of the configured hash (bcrypt cost ``--cost``, default 10 as ``htpasswd -nBC 10``).
Prints the median, min and max of each and the ratio unknown/known (1.00 means the answer
time says nothing about whether the user exists), and, as a reference measured in the same
run, a correct password (first check: bcrypt; later checks: remembered).

    python benchmarks/auth_timing.py [--cost 10] [--runs 30]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bcrypt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.web.webconfig import WebConfigWatcher  # noqa: E402


def _header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cost", type=int, default=10)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        web = Path(d) / "web.yml"
        hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=args.cost)).decode()
        web.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
        watcher = WebConfigWatcher(web)
        config, _ = watcher.current()
        cases = {"known user, wrong password": _header("alice", "wrong"),
                 "unknown user": _header("mallory", "wrong")}
        times: dict[str, list[float]] = {k: [] for k in cases}
        watcher.authorized(config, cases["unknown user"])  # make the dummy hash once
        for _ in range(args.runs):
            for name, header in cases.items():
                t0 = time.perf_counter()
                assert not watcher.authorized(config, header)
                times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert watcher.authorized(config, _header("alice", "right"))
        first_ok = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert watcher.authorized(config, _header("alice", "right"))
        cached_ok = time.perf_counter() - t0
    print(f"bcrypt cost {args.cost}, {args.runs} interleaved runs each")
    for name, ts in times.items():
        print(f"  {name:28s} median {statistics.median(ts) * 1000:8.2f} ms  "
              f"min {min(ts) * 1000:8.2f}  max {max(ts) * 1000:8.2f}")
    known, unknown = (statistics.median(v) for v in times.values())
    ratios = sorted(u / k for k, u in zip(*times.values(), strict=True))
    print(f"  ratio unknown/known (medians) {unknown / known:.3f}; per-run ratio "
          f"min {ratios[0]:.3f} median {statistics.median(ratios):.3f} max {ratios[-1]:.3f}")
    print(f"  reference: correct password first {first_ok * 1000:.2f} ms, "
          f"remembered {cached_ok * 1000:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
