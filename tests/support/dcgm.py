"""The DCGM-exporter stand-in, and a scripted target for bad-input tests.

There is no GPU on this machine, so ``DcgmExporter`` serves what NVIDIA's dcgm-exporter serves
(the default counters and the label set from REFERENCE.md) with values that change over time.
It is the one stand-in this test suite allows: everything else it talks to is real.

``ScriptedTarget`` is an HTTP server whose next answers a test sets (a body, a status, a delay,
an oversized or truncated body): the bad inputs a real vLLM will not produce on demand.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

GPU_MODEL = "NVIDIA H100 80GB HBM3"


def dcgm_exposition(
    t: float,
    gpus: int = 8,
    hostname_label: str = "Hostname",
    host: str = "node-1",
    xid: int = 0,
    util: float | None = None,
) -> str:
    """dcgm-exporter text for ``gpus`` GPUs at time ``t`` (values vary smoothly with t)."""
    lines = []
    fields = [
        ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
        ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
        ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
        ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
        ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
        ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
        ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
        ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."),
        ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor pipe is active."),
        (
            "DCGM_FI_PROF_DRAM_ACTIVE",
            "gauge",
            "Ratio of cycles the device memory interface is active.",
        ),
    ]
    for name, kind, help_ in fields:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for g in range(gpus):
            phase = math.sin(t / 60.0 + g)
            u = util if util is not None else 50 + 40 * phase
            value = {
                "DCGM_FI_DEV_GPU_UTIL": round(u),
                "DCGM_FI_DEV_FB_USED": 73000 + g,
                "DCGM_FI_DEV_FB_FREE": 8000 - g,
                "DCGM_FI_DEV_GPU_TEMP": round(55 + 10 * phase),
                "DCGM_FI_DEV_POWER_USAGE": round(350 + 200 * phase, 3),
                "DCGM_FI_DEV_SM_CLOCK": 1980,
                "DCGM_FI_DEV_MEM_COPY_UTIL": round(30 + 20 * phase),
                "DCGM_FI_DEV_XID_ERRORS": xid,
                "DCGM_FI_PROF_GR_ENGINE_ACTIVE": round(u / 100, 4),
                "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": round(u / 250, 4),
                "DCGM_FI_PROF_DRAM_ACTIVE": round(u / 200, 4),
            }[name]
            labels = (
                f'gpu="{g}",UUID="GPU-{g:08d}-1111-2222-3333-444455556666",'
                f'pci_bus_id="00000000:{0x18 + g:02X}:00.0",device="nvidia{g}",'
                f'modelName="{GPU_MODEL}",{hostname_label}="{host}"'
            )
            lines.append(f"{name}{{{labels}}} {value}")
    return "\n".join(lines) + "\n"


@dataclass
class Script:
    """What a scripted target answers next."""

    body: str = ""
    status: int = 200
    delay: float = 0.0
    content_length: int | None = None


class _Server:
    def __init__(self, respond) -> None:  # type: ignore[no-untyped-def]
        handler_respond = respond

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, delay, length = handler_respond()
                if delay:
                    time.sleep(delay)
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header(
                        "Content-Length", str(length if length is not None else len(data))
                    )
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class DcgmExporter:
    """A running DCGM-exporter stand-in. Change ``hostname_label``, ``xid`` or ``util`` live."""

    gpus: int = 8
    hostname_label: str = "Hostname"
    xid: int = 0
    util: float | None = None
    requests: int = 0
    _server: _Server | None = field(default=None, repr=False)

    def start(self) -> DcgmExporter:
        def respond() -> tuple[int, str, float, int | None]:
            self.requests += 1
            return (
                200,
                dcgm_exposition(
                    time.time(), self.gpus, self.hostname_label, xid=self.xid, util=self.util
                ),
                0.0,
                None,
            )

        self._server = _Server(respond)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class ScriptedTarget:
    """A /metrics endpoint that answers whatever the test scripted (last script repeats)."""

    def __init__(self) -> None:
        self.script = Script()
        self.requests = 0
        self._server = _Server(self._respond)
        self.url = self._server.url

    def _respond(self) -> tuple[int, str, float, int | None]:
        self.requests += 1
        s = self.script
        return s.status, s.body, s.delay, s.content_length

    def set(
        self,
        body: str = "",
        status: int = 200,
        delay: float = 0.0,
        content_length: int | None = None,
    ) -> None:
        self.script = Script(body, status, delay, content_length)

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def dcgm_exporter() -> Iterator[DcgmExporter]:
    """A DCGM-exporter stand-in on an ephemeral loopback port (8 GPUs)."""
    exporter = DcgmExporter().start()
    yield exporter
    exporter.close()


@pytest.fixture
def scripted_target() -> Iterator[ScriptedTarget]:
    target = ScriptedTarget()
    yield target
    target.close()
