"""Reading a canary's log: the tail, and why a start failed (``oom`` or ``exit``, the root cause).

The patterns come from real failed starts of vLLM (captured logs in tests/unit/data/vllm_logs).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

#: Log lines that mean the server ran out of (device or host) memory, or has too little KV cache.
OOM_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"out of memory",
        r"OutOfMemoryError",
        r"Cannot allocate memory",
        r"std::bad_alloc",
        r"\bMemoryError\b",
        r"No available memory for the cache blocks",
        r"KV cache is needed, which is larger than the available KV cache memory",
        r"larger than the available KV cache memory",
        r"Insufficient memory",
        r"not enough (?:KV cache|memory)",
        r"needs? at least \d+ blocks",
        r"num_gpu_blocks.{0,40}(?:too small|insufficient)",
        r"increas(?:e|ing) `?gpu_memory_utilization`?",
        r"Available memory on node .* is less than desired",
        r"decrease `?--gpu-memory-utilization`?",
        r"exceeds the (?:available|total) memory",
    )
)


def detect_oom(log_text: str) -> str | None:
    """The first log line that says memory ran out (or KV cache is too small), else None."""
    for line in log_text.splitlines():
        if any(p.search(line) for p in OOM_PATTERNS):
            return line.strip()
    return None


#: Error lines that only point elsewhere ("see root cause above"); never the cause itself.
_GENERIC_ERRORS = re.compile(
    r"Engine core initialization failed|WorkerProc initialization failed|"
    r"See (?:root cause|stack trace)|Found ulimit|Too many open files`", re.IGNORECASE)
_ERROR_LINE = re.compile(
    r"(?:^|\] |: )((?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): .+|"
    r"[\w.-]+\.py: error: .+|std::bad_alloc.*|Killed)\s*$")


def root_cause(log_text: str) -> str | None:
    """The first specific error line of a failed start (exception or argparse error), if any."""
    for line in log_text.splitlines():
        m = _ERROR_LINE.search(line)
        if m and not _GENERIC_ERRORS.search(line):
            return m.group(1).strip()
    return None


def failure_reason(log_text: str, returncode: int | None) -> str:
    """``oom`` if the log shows a memory failure or the process was SIGKILLed, else ``exit``."""
    if detect_oom(log_text) is not None:
        return "oom"
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return "oom"  # killed from outside without our asking: almost always the OOM killer
    return "exit"


def read_tail(path: Path, lines: int = 60, max_bytes: int = 256_000) -> str:
    """The last ``lines`` lines of a log file (reads at most ``max_bytes`` from its end)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
