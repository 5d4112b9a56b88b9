"""A sidecar with an hour of history, for the status page's tests and its benchmark.

``recorded_vllm_exposition(step)`` is a recorded vLLM 0.32 exposition (tests/unit/data/
expositions, from a real server under load) with every counter and histogram series scaled by
``step``, so consecutive scrapes of it look like a server serving a steady load (rates are
non-zero, histograms stay valid) while the series, names and labels are vLLM's own.

``RecordedVllmTarget`` serves it, one step further at each scrape. ``filled_daemon`` builds a real ``Daemon`` whose clock starts an hour ago: it scrapes its
targets (real HTTP servers on loopback) and evaluates its rules ``steps`` times, ``every``
seconds apart, then the clock becomes the wall clock, so ``start()`` goes on live.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tuner.config import parse_config
from tuner.daemon import Daemon

EXPOSITIONS = Path(__file__).resolve().parents[1] / "unit" / "data" / "expositions"
_SAMPLE = re.compile(r"^(?P<name>[^\s{]+)(?P<labels>\{.*\})?\s+(?P<value>\S+)(?P<rest>.*)$")
_SCALED = ("_total", "_bucket", "_count", "_sum")


def recorded_vllm_exposition(step: int, mode: str = "plain") -> str:
    """The recorded mid-load exposition of ``mode`` with counters scaled by ``step`` (≥ 1)."""
    text = (EXPOSITIONS / f"vllm-0.32-{mode}-mid.txt").read_text()
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if line.startswith("#") or m is None or not m["name"].endswith(_SCALED):
            out.append(line)
            continue
        value = float(m["value"]) * step
        out.append(f"{m['name']}{m['labels'] or ''} {value!r}{m['rest']}")
    return "\n".join(out) + "\n"


class RecordedVllmTarget:
    """A tiny fixture server: each scrape gets ``recorded_vllm_exposition`` one step further."""

    def __init__(self, mode: str = "plain") -> None:
        self.mode = mode
        self.step = 0
        self._lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with target._lock:
                    target.step += 1
                    body = recorded_vllm_exposition(target.step, target.mode).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def page_config(tmp_path: Path, targets: list[dict[str, Any]], **extra: Any) -> Any:
    data = {
        "targets": targets,
        "scrape_interval": "5s",
        "store": {"path": str(tmp_path / "tuner.db")},
        "listen": "127.0.0.1:0",
        **extra,
    }
    return parse_config(data, str(tmp_path / "tuner.yaml"))


def filled_daemon(config: Any, before_scrape: Callable[[int], None] = lambda _s: None,
                  steps: int = 120,
                  every: float = 30.0) -> Daemon:
    """A daemon with ``steps`` scrapes and rule evaluations over the last steps×every seconds.

    ``before_scrape(step)`` runs before each scrape (set the targets' next answers there).
    The daemon is not started; the caller starts and stops it.
    """
    fake = [time.time() - steps * every]

    def clock() -> float:
        return fake[0] if fake else time.time()

    daemon = Daemon(config, clock=clock)
    for step in range(1, steps + 1):
        before_scrape(step)
        daemon.scrape_once()
        daemon.alerting.evaluate()
        fake[0] += every
    fake.clear()
    return daemon
