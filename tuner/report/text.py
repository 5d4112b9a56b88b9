"""Plain-text tables for people: ``tuner status`` and ``tuner suggest`` reports (and Markdown)."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from tuner.signals import format_signal

if TYPE_CHECKING:
    from tuner.status import Status


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
        rows = []
        for inst, sigs in sorted(status.signals.items()):
            vllm = inst in status.vllm_instances  # elsewhere (DCGM) a missing value is just "-"
            rows.append([inst or "-", *(format_signal(d, sigs.get(d.name)) if vllm or d.name in sigs
                                        else "-" for d in defs)])
        out.append(render_table(["instance", *(d.name for d in defs)], rows))
        partial = {inst: names for inst, names in status.unknown().items() if names}
        for inst, names in sorted(partial.items()):
            out.append(f"{inst}: {', '.join(names)} unknown (no http_requests_total exported): "
                       "error rates are partial, not zero")
    return "\n".join(out)


# Rendering of ``tuner suggest`` reports (the JSON dict built by tuner.suggest.suggest).


def _suggest_value(v: Any) -> str:
    if v is None:
        return "?"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _suggest_target(labels: dict[str, str]) -> str:
    parts = [labels.get(k, "") for k in ("namespace", "deployment", "model_name", "instance")]
    return "/".join(p for p in parts if p) or "-"


def _suggest_change(r: dict[str, Any]) -> str:
    if r["direction"] == "none":
        return "no change"
    if r["direction"] == "off":
        return "turn off"
    if r["direction"] == "investigate":
        return "investigate"
    if r["flag"] is None:
        return str(r["suggested"] or r["direction"])
    arrow = "↓" if r["direction"] == "down" else "↑"
    return f"{_suggest_value(r['current'])} → {_suggest_value(r['suggested'])} {arrow}"


def _alternatives_text(r: dict[str, Any]) -> str:
    """`` Alternative: --flag 8 (why).`` for each alternative of a recommendation."""
    return "".join(f" Alternative: {a['flag']} {_suggest_value(a['suggested'])} ({a['reason']})."
                   for a in r.get("alternatives") or [])


def render_suggest_table(report: dict[str, Any]) -> str:
    """``tuner suggest --format table``: window, findings, recommendations, conflicts."""
    w = report["window"]
    head = f"suggest over {w['start']} → {w['end']} ({report['source']})"
    if report.get("partial"):
        head += "  [PARTIAL]"
    out = [head]
    out.extend(f"note: {n}" for n in w.get("notes", []))
    for t in report.get("targets", []):
        out.extend(f"note ({_suggest_target(t['labels'])}): {n}" for n in t.get("notes", []))
        if t.get("missing"):
            out.append(f"missing ({_suggest_target(t['labels'])}): " + "; ".join(t["missing"]))
        out.extend(f"skipped: {s}" for s in t.get("skipped", []))
    out.append("")
    out.append("Findings")
    rows = [[_suggest_target(f["target"]), f["severity"], f["summary"]]
            for f in report["findings"]]
    out.append(render_table(["target", "severity", "finding"], rows) if rows else "  (none)")
    out.append("")
    out.append("Recommendations")
    rows = [[_suggest_target(r["target"]), r["flag"] or "-", _suggest_change(r),
             r["confidence"], r["reason"] + _alternatives_text(r)]
            for r in report["recommendations"]]
    out.append(render_table(["target", "flag", "change", "confidence", "why"], rows))
    if report.get("conflicts"):
        out.append("")
        out.append("Conflicts")
        out.extend(f"- {_suggest_target(c['target'])}: {c['resolution']}"
                   for c in report["conflicts"])
    return "\n".join(out)


def render_suggest_markdown(report: dict[str, Any]) -> str:
    """``tuner suggest --format markdown``: the report as a Markdown document."""
    w = report["window"]
    out = [f"# vLLM flag suggestions, {w['start']} → {w['end']}", "",
           f"Source: {report['source']}. Window {w['since']}, evaluated every "
           f"{w['step_seconds']:g}s." + (" **Partial results.**" if report.get("partial")
                                          else "")]
    for n in w.get("notes", []):
        out.append(f"> {n}")
    for t in report.get("targets", []):
        name = _suggest_target(t["labels"])
        out += ["", f"## {name}", ""]
        for n in t.get("notes", []):
            out.append(f"> {n}")
        if t.get("missing"):
            out.append(f"> Missing metrics: {'; '.join(t['missing'])}")
        out += ["", "### Recommendations", ""]
        for r in report["recommendations"]:
            if r["target"] != t["labels"]:
                continue
            if r["direction"] == "none":
                out.append(f"- **No change.** {r['reason']}")
                continue
            what = f"`{r['flag']}`" if r["flag"] else str(r["suggested"] or r["direction"])
            out.append(f"- **{what}**: {_suggest_change(r)} ({r['confidence']} "
                       f"confidence). {r['reason']}. Expected: {r['expected_effect']}."
                       + _alternatives_text(r))
            for e in r["evidence"]:
                out.append(f"  - evidence: {e['summary']}")
        conflicts = [c for c in report.get("conflicts", []) if c["target"] == t["labels"]]
        if conflicts:
            out += ["", "### Conflicts", ""]
            out.extend(f"- {c['resolution']}" for c in conflicts)
        out += ["", "### Findings", ""]
        out.extend(f"- ({f['severity']}) {f['summary']}" for f in report["findings"]
                   if f["target"] == t["labels"])
        wl = t.get("workload") or {}
        if wl:
            out += ["", "### Workload", ""]
            for key in ("prompt_tokens", "output_tokens"):
                d = wl.get(key)
                if d:
                    out.append(f"- {key.replace('_', ' ')}: p50 {d['p50']:,.0f}, "
                               f"p99 {d['p99']:,.0f}, max {d['max']:,.0f}")
            if wl.get("request_rate_per_s") is not None:
                out.append(f"- requests: {wl['request_rate_per_s']:.2f}/s mean, "
                           f"{(wl.get('peak_request_rate_per_s') or 0):.2f}/s peak hour")
    return "\n".join(out) + "\n"
