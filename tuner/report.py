"""Render results for people: status tables, suggest reports, tuning reports (Markdown/JSON/plots).

Printing-oriented code lives here and in ``cli.py`` only. Functions take finished records and
return strings (or write files), so they are pure and easy to test.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from tuner.signals import format_signal

if TYPE_CHECKING:
    from tuner.daemon import Status


def _ago(now: float, ts: float | None) -> str:
    if ts is None:
        return "never"
    secs = max(0.0, now - ts)
    if secs < 120:
        return f"{secs:.0f}s ago"
    if secs < 7200:
        return f"{secs / 60:.0f}m ago"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_status(status: Status) -> str:
    """``tuner status`` as two tables: targets, then live signals per instance."""
    target_rows = []
    for t in status.targets:
        state = "unknown" if t.up is None else ("up" if t.up else "DOWN")
        target_rows.append([t.name, t.kind, state, _ago(status.now, t.last_scrape), t.error[:80]])
    out = [f"store: {status.store_path}", ""]
    out.append(render_table(["target", "kind", "state", "last scrape", "error"], target_rows))
    out.append("")
    defs = status.signal_defs
    if not status.signals:
        out.append("no signals yet: the store has no recent vLLM or DCGM samples")
    else:
        rows = [
            [inst or "-", *(format_signal(d, sigs.get(d.name)) for d in defs)]
            for inst, sigs in sorted(status.signals.items())
        ]
        out.append(render_table(["instance", *(d.name for d in defs)], rows))
    return "\n".join(out)
