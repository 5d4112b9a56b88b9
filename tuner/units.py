"""Units in Prometheus's spelling: durations (``1h30m``, ``250ms``), byte sizes (``512MiB``),
``host:port``. Pure parsers and formatters; each raises ValueError naming the text and the
allowed syntax, which ``tuner.config`` turns into errors naming the file and key.
"""

from __future__ import annotations

import re

# Prometheus's duration grammar (common/model.ParseDuration): each unit at most once, largest
# first, integers only; "0" alone is the zero duration. Milliseconds per unit.
_DURATION_MS = {
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
    "ms": 1,
}
_DURATION_PART_RE = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_DURATION_SYNTAX = "e.g. 30s, 5m, 1h30m, 7d; units ms s m h d w y"
_MAX_DURATION_MS = 2**63 - 1  # Go's time.Duration limit, as Prometheus checks it
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}

def parse_duration_ms(text: str) -> int:
    """A Prometheus duration string (``1h30m``, ``5m``, ``250ms``, ``0``) in milliseconds.

    The one duration parser of the package (PromQL's range selectors use it too). Follows
    Prometheus: units largest first, each at most once, whole numbers only, ``0`` allowed
    bare, at most 2^63-1 ms. Raises ValueError naming the text and the allowed syntax.
    """
    if text == "0":
        return 0
    if not text:
        raise ValueError("empty duration")
    pos = 0
    total = 0
    last_rank = -1
    order = list(_DURATION_MS)
    for match in _DURATION_PART_RE.finditer(text):
        if match.start() != pos:
            break
        rank = order.index(match.group(2))
        if rank <= last_rank:
            raise ValueError(f"duration {text!r}: units out of order or repeated "
                             "(largest to smallest, each once)")
        last_rank = rank
        total += int(match.group(1)) * _DURATION_MS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"{text!r} is not a Prometheus duration ({_DURATION_SYNTAX})")
    if total > _MAX_DURATION_MS:
        raise ValueError(f"duration {text!r} is out of range (at most about 292 years)")
    return total


def parse_duration(text: str | int | float) -> float:
    """Parse a Prometheus duration (``1h30m``, ``5m``, ``250ms``) into seconds.

    Bare numbers are seconds. Raises ValueError with the allowed syntax on bad input.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration {text!r} is negative")
        return float(text)
    return parse_duration_ms(str(text).strip()) / 1000.0


def format_duration(seconds: float) -> str:
    """Render seconds the way Prometheus does (``1h30m``, ``5m``, ``250ms``)."""
    if seconds <= 0:
        return "0s"
    ms = round(seconds * 1000)
    out = []
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def parse_size(text: str | int) -> int:
    """Parse a byte size (``1048576``, ``512MiB``, ``2GB``) into bytes."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"size {text} must be positive")
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with KiB/MiB/GiB/KB/MB/GB)")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if value <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return value


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:9464`` for IPv6); raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:9464)")
    return host.strip("[]") or "0.0.0.0", int(port)
