"""Reading a canary's log: the tail, and why a start failed (``oom``, ``flag_rejected`` or
``exit``; the root cause).

``flag_rejected`` is vLLM's argument parser refusing the command line (exit code 2:
``error: unrecognized arguments: --x`` from a vLLM too old for a flag, or
``error: argument --x: invalid int value``); ``rejected_flags`` names the flags.

The patterns come from real failed starts of vLLM (captured logs in tests/unit/data/vllm_logs).
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
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


#: argparse's exit status for a command line it refuses.
ARGPARSE_EXIT = 2
_UNRECOGNIZED = re.compile(r"error: unrecognized arguments: (.+?)\s*$", re.MULTILINE)
_BAD_ARGUMENT = re.compile(r"error: argument (--[\w.-]+)(?:/[^:]*)?: (.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class FlagRejection:
    """What vLLM's argument parser refused: the flags, and its own words."""

    flags: tuple[str, ...]
    message: str

    def explain(self) -> str:
        """One sentence naming the refused flags, for the trial's reason."""
        names = ", ".join(self.flags)
        return (f"vLLM refused the flag{'s' if len(self.flags) > 1 else ''} {names} "
                f"({self.message}); the installed vLLM may be older than the flag, or the "
                "value is not one it accepts")


def rejected_flags(log_text: str, returncode: int | None) -> FlagRejection | None:
    """The flags vLLM's argument parser refused (exit 2), or None for any other failure."""
    if returncode != ARGPARSE_EXIT:
        return None
    m = _UNRECOGNIZED.search(log_text)
    if m:
        flags = tuple(w for w in m.group(1).split() if w.startswith("-"))
        return FlagRejection(flags or (m.group(1).strip(),),
                             f"unrecognized arguments: {m.group(1).strip()}")
    m = _BAD_ARGUMENT.search(log_text)
    if m:
        return FlagRejection((m.group(1),), f"argument {m.group(1)}: {m.group(2)}")
    return None


def failure_reason(log_text: str, returncode: int | None) -> str:
    """``oom`` if the log shows a memory failure or the process was SIGKILLed;
    ``flag_rejected`` if the argument parser refused a flag (exit 2); else ``exit``."""
    if rejected_flags(log_text, returncode) is not None:
        return "flag_rejected"
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
