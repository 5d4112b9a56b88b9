"""What the status page shows, as records, and those records rendered to one HTML document.

``render_page(PageData) -> str`` is pure: every value that came from a scrape, a label, an
alert annotation or a report is escaped here (label values are user data: a ``<script>`` in a
``model_name`` is shown as text). An alert's ``runbook_url`` is a link only when it is an
absolute ``http(s)`` URL, so ``javascript:...`` is shown as text, never as a link. The
document needs nothing from the network: inline CSS, inline SVG charts
(``tuner.web.charts``), tune plots from the sidecar's own ``/ui/tune/`` route, and a
``<meta http-equiv="refresh">``.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from html import escape
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from tuner.rules import AlertState, AlertStatus
from tuner.signals import Signal, format_signal
from tuner.status import Status
from tuner.web.charts import sparkline_svg

REFRESH_SECONDS = 30
PLOT_ROUTE = "/ui/tune/"


@dataclass(frozen=True)
class TuningProgress:
    """The daemon's tuning window now: schedule, trials so far, best objective, runs."""

    schedule: str
    next_run: float | None
    planned_trials: int | None
    running: int
    trials_by_state: Mapping[str, int]
    best_objective: float | None
    objective: str
    runs: Mapping[str, int]
    last_run: float | None
    out_dir: str


@dataclass(frozen=True)
class TuneReport:
    """The newest finished tune run's results: best.json, report.md and its plot files."""

    name: str  # the run directory's name under tune.out
    best: Mapping[str, Any] | None
    report_md: str
    plots: tuple[str, ...]


class SuggestOrigin(StrEnum):
    """Where the suggest report on the page came from."""

    SCHEDULED = "scheduled"  # the daemon's suggest.schedule, stored in the store
    COMPUTED = "computed"  # the page's own run over the store, on a cached interval
    PENDING = "pending"  # the page's first run has not finished yet


@dataclass(frozen=True)
class SuggestView:
    origin: SuggestOrigin
    report: Mapping[str, Any] | None = None
    error: str = ""


@dataclass(frozen=True)
class SignalChart:
    """One signal of one instance: its value now and its points over the chart window."""

    signal: Signal
    value: float | None
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class PageData:
    """Everything one rendering of the page shows; ``store_error`` when the store was busy."""

    now: float
    chart_start: float
    status: Status | None = None
    charts: Mapping[str, tuple[SignalChart, ...]] = field(default_factory=dict)
    store_error: str = ""
    alerts: tuple[AlertState, ...] = ()
    alerts_error: str = ""
    suggest: SuggestView | None = None
    tuning: TuningProgress | None = None
    tune_report: TuneReport | None = None


def safe_href(url: str) -> str | None:
    """``url`` if it is an absolute http(s) URL, else None (shown as text, not linked).

    A relative ``runbook_url`` (the shipped rules' ``rules/RUNBOOK.md#...``) names a file in
    the rules directory, not a page this listener serves, so it is not made a link either.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme in ("http", "https") and parts.netloc:
        return url.strip()
    return None


def _ts(ts: float | None) -> str:
    if ts is None or ts <= 0:
        return "never"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(now: float, ts: float | None) -> str:
    if ts is None or ts <= 0:
        return "never"
    secs = now - ts
    if secs < 0:
        return f"in {_span(-secs)}"
    return f"{_span(secs)} ago"


def _span(secs: float) -> str:
    if secs < 120:
        return f"{secs:.0f}s"
    if secs < 7200:
        return f"{secs / 60:.0f}m"
    if secs < 172800:
        return f"{secs / 3600:.1f}h"
    return f"{secs / 86400:.1f}d"


def _num(v: Any) -> str:
    if v is None:
        return "?"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:g}"
    return str(v)


def _e(v: Any) -> str:
    return escape(str(v), quote=True)


def _api(path: str, **params: str) -> str:
    return path + ("?" + urlencode(params, quote_via=quote) if params else "")


_CSS = """
:root{--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--mut:#57606a;--bd:#d0d7de;--bg:#f6f8fa}
*{box-sizing:border-box}
body{font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328}
header{background:#24292f;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;
 gap:.3rem 1rem;align-items:baseline}
header h1{font-size:1.1rem;margin:0}header a{color:#cfe3ff}
main{padding:.5rem 1rem;max-width:1100px}
section{margin:1rem 0}h2{font-size:1.05rem;border-bottom:1px solid var(--bd);padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.25rem .4rem;border-bottom:1px solid var(--bd);vertical-align:top;
 overflow-wrap:break-word}
td.error,td.summary,.url,code{overflow-wrap:anywhere}
.wrap{overflow-x:auto;max-width:100%}
.up{color:var(--ok);font-weight:600}.down{color:var(--bad);font-weight:600}
.unknown,.mut{color:var(--mut)}.firing{color:var(--bad);font-weight:600}
.pending{color:var(--warn);font-weight:600}
.busy{background:#fff8c5;border:1px solid #d4a72c;padding:.6rem;border-radius:6px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.6rem}
.card{border:1px solid var(--bd);border-radius:6px;padding:.5rem;background:var(--bg);min-width:0}
.card h3{font-size:.95rem;margin:.1rem 0 .3rem;overflow-wrap:anywhere}
.sig{display:flex;justify-content:space-between;gap:.5rem;font-size:.85rem}
.sig b{font-variant-numeric:tabular-nums}
svg.spark{display:block;width:100%;height:40px;margin:0 0 .35rem}
svg.spark polyline{stroke:#0969da;stroke-width:1.5}svg.spark circle{fill:#0969da}
svg.spark .nodata{font-size:11px;fill:#8c959f}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:var(--bg);padding:.5rem;
 font-size:.8rem}
code{overflow-wrap:anywhere}
img.plot{max-width:100%;height:auto;border:1px solid var(--bd);margin:.3rem 0}
footer{color:var(--mut);font-size:.8rem;padding:1rem}
"""


def render_page(data: PageData) -> str:
    """The whole status page as an HTML document (escaped, self-contained)."""
    body = [
        _header(data),
        "<main>",
        _targets(data),
        _signals(data),
        _alerts(data),
        _suggest(data),
        _tuning(data),
        "</main>",
        f'<footer>rendered {_e(_ts(data.now))}; refreshes every {REFRESH_SECONDS}s. '
        'Nothing on this page is fetched from outside the sidecar.</footer>',
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        "<title>tuner sidecar status</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def _header(data: PageData) -> str:
    links = [("/api/v1/query?query=up", "query API"), ("/api/v1/alerts", "alerts API"),
             ("/api/v1/rules", "rules API"), ("/metrics", "sidecar metrics"),
             ("/healthz", "health")]
    nav = " · ".join(f'<a href="{_e(h)}">{_e(t)}</a>' for h, t in links)
    return f'<header><h1>tuner sidecar</h1><nav id="api-links">{nav}</nav></header>'


def _targets(data: PageData) -> str:
    out = ['<section id="targets"><h2>Targets</h2>']
    if data.store_error:
        out.append(f'<p class="busy" id="store-busy"><b>The store cannot be read now:</b> '
                   f"{_e(data.store_error)}. Targets and signals will show again when it is "
                   f"free; this page retries every {REFRESH_SECONDS}s.</p></section>")
        return "".join(out)
    status = data.status
    if status is None or not status.targets:
        out.append('<p class="mut">No targets configured.</p></section>')
        return "".join(out)
    out.append('<div class="wrap"><table><thead><tr><th>target</th><th>kind</th><th>state</th>'
               "<th>last scrape</th><th>last error</th></tr></thead><tbody>")
    for t in status.targets:
        state, cls = ("unknown", "unknown") if t.up is None else (
            ("up", "up") if t.up else ("down", "down"))
        out.append(
            f'<tr class="target" data-target="{_e(t.name)}"><td>{_e(t.name)}<br>'
            f'<span class="mut url">{_e(t.url)}</span></td><td>{_e(t.kind)}</td>'
            f'<td class="{cls}">{state}</td><td>{_e(_ago(status.now, t.last_scrape))}</td>'
            f'<td class="error">{_e(t.error)}</td></tr>')
    out.append("</tbody></table></div></section>")
    return "".join(out)


def _signals(data: PageData) -> str:
    out = ['<section id="signals"><h2>Live signals <span class="mut">(last hour)</span></h2>']
    if data.store_error:
        out.append('<p class="mut">Unavailable while the store is busy.</p></section>')
        return "".join(out)
    if not data.charts:
        out.append('<p class="mut">No signals yet: the store has no recent vLLM or DCGM '
                   "samples.</p></section>")
        return "".join(out)
    out.append('<div class="cards">')
    for instance, charts in sorted(data.charts.items()):
        out.append(f'<div class="card instance" data-instance="{_e(instance)}">'
                   f"<h3>{_e(instance or '(no instance label)')}</h3>")
        for c in charts:
            value = format_signal(c.signal, c.value)
            href = _api("/api/v1/query_range", query=c.signal.expr,
                        start=f"{data.chart_start:.0f}", end=f"{data.now:.0f}", step="60")
            out.append(
                f'<div class="sig" data-signal="{_e(c.signal.name)}" '
                f'title="{_e(c.signal.help)}"><a href="{_e(href)}">{_e(c.signal.name)}</a>'
                f'<b class="value">{_e(value)}</b></div>'
                + sparkline_svg(c.points, data.chart_start, data.now,
                                f"{c.signal.name} of {instance}, last hour"))
        out.append("</div>")
    out.append("</div></section>")
    return "".join(out)


def _alerts(data: PageData) -> str:
    shown = [a for a in data.alerts if a.state in (AlertStatus.FIRING, AlertStatus.PENDING)]
    shown.sort(key=lambda a: (a.state is not AlertStatus.FIRING, a.alertname))
    firing = sum(1 for a in shown if a.state is AlertStatus.FIRING)
    out = [f'<section id="alerts"><h2>Alerts <span class="mut">({firing} firing, '
           f"{len(shown) - firing} pending)</span></h2>"]
    if data.alerts_error:
        out.append(f'<p class="busy">{_e(data.alerts_error)}</p>')
    if not shown:
        out.append('<p class="mut">No pending or firing alerts.</p></section>')
        return "".join(out)
    out.append('<div class="wrap"><table><thead><tr><th>state</th><th>alert</th>'
               "<th>summary</th><th>labels</th><th>since</th><th>runbook</th></tr></thead>"
               "<tbody>")
    for a in shown:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(a.labels.items())
                           if k not in ("alertname",))
        runbook = a.annotations.get("runbook_url", "")
        href = safe_href(runbook) if runbook else None
        if href is not None:
            link = f'<a class="runbook" href="{_e(href)}">runbook</a>'
        else:
            link = f'<span class="mut">{_e(runbook) or "-"}</span>'
        summary = a.annotations.get("summary") or a.annotations.get("description") or ""
        out.append(
            f'<tr class="alert {a.state}" data-alertname="{_e(a.alertname)}">'
            f'<td class="{a.state}">{a.state}</td><td>{_e(a.alertname)}</td>'
            f'<td class="summary">{_e(summary)}</td><td class="labels"><code>{_e(labels)}'
            f"</code></td><td>{_e(_ago(data.now, a.starts_at))}</td><td>{link}</td></tr>")
    out.append("</tbody></table></div></section>")
    return "".join(out)


def _change(r: Mapping[str, Any]) -> str:
    direction = r.get("direction")
    if direction == "none":
        return "no change"
    if direction == "off":
        return "turn off"
    arrow = "↓" if direction == "down" else "↑"
    return f"{_num(r.get('current'))} → {_num(r.get('suggested'))} {arrow}"


def _suggest(data: PageData) -> str:
    out = ['<section id="suggest"><h2>Latest suggest report</h2>']
    view = data.suggest
    if view is None or (view.origin is SuggestOrigin.PENDING and not view.error):
        out.append('<p class="mut">Computing the first report from the store…</p></section>')
        return "".join(out)
    origin = ("from the daemon's suggest.schedule" if view.origin is SuggestOrigin.SCHEDULED
              else "computed by this page over the last hour of the store, every 15 minutes")
    if view.error:
        out.append(f'<p class="busy">No report: {_e(view.error)}</p></section>')
        return "".join(out)
    r = view.report or {}
    if r.get("error"):
        out.append(f'<p class="busy">The last run made no report: {_e(r["error"])}</p>'
                   "</section>")
        return "".join(out)
    w = r.get("window", {})
    out.append(f'<p class="mut">{_e(w.get("start", "?"))} → {_e(w.get("end", "?"))}, '
               f"{_e(origin)}{'; partial' if r.get('partial') else ''}.</p>")
    recs = list(r.get("recommendations", []))
    out.append('<div class="wrap"><table id="recommendations"><thead><tr><th>flag</th>'
               "<th>change</th><th>confidence</th><th>why</th></tr></thead><tbody>")
    for rec in recs:
        out.append(f'<tr class="recommendation"><td><code>{_e(rec.get("flag") or "-")}</code>'
                   f"</td><td>{_e(_change(rec))}</td><td>{_e(rec.get('confidence', ''))}</td>"
                   f"<td>{_e(rec.get('reason', ''))}</td></tr>")
    if not recs:
        out.append('<tr><td colspan="4" class="mut">no recommendations</td></tr>')
    out.append("</tbody></table></div>")
    findings = list(r.get("findings", []))
    if findings:
        out.append('<ul id="findings">' + "".join(
            f'<li class="finding">({_e(f.get("severity", ""))}) {_e(f.get("summary", ""))}</li>'
            for f in findings) + "</ul>")
    out.append("</section>")
    return "".join(out)


def _tuning(data: PageData) -> str:
    out = ['<section id="tuning"><h2>Tuning</h2>']
    p = data.tuning
    if p is None:
        out.append('<p class="mut">No tuning window configured (<code>tune.schedule</code> in '
                   "tuner.yaml).</p>")
    else:
        done = sum(p.trials_by_state.values())
        planned = f" of {p.planned_trials}" if p.planned_trials else ""
        states = ", ".join(f"{n} {s}" for s, n in sorted(p.trials_by_state.items()) if n)
        runs = ", ".join(f"{n} {s}" for s, n in sorted(p.runs.items()) if n) or "none yet"
        best = "none yet" if p.best_objective is None else f"{p.best_objective:g} {p.objective}"
        rows = [("schedule", f"{p.schedule} (next {_ts(p.next_run)})"),
                ("trials this run", f"{done}{planned} finished ({states or 'none'}), "
                                    f"{p.running} running"),
                ("best objective", best), ("runs", runs),
                ("last run ended", _ts(p.last_run)), ("results in", p.out_dir)]
        out.append('<table id="tuning-progress"><tbody>' + "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
            + "</tbody></table>")
    rep = data.tune_report
    if rep is None:
        out.append('<p class="mut">No finished tune report yet.</p></section>')
        return "".join(out)
    out.append(f'<h3 id="tune-report">Last tune report: {_e(rep.name)}</h3>')
    run_best: Mapping[str, Any] = rep.best or {}
    if run_best:
        gain = run_best.get("gain") or {}
        verdict = gain.get("verdict") or ("SLO met" if run_best.get("slo_met") else "SLO not met")
        out.append(f"<p>{_e(run_best.get('trials', '?'))} trials; recommends the "
                   f"{_e(run_best.get('source', '?'))} flags ({_e(verdict)}).</p>")
        if run_best.get("vllm_serve"):
            out.append(f'<pre id="serve-line">{_e(run_best["vllm_serve"])}</pre>')
    for name in rep.plots:
        src = f"{PLOT_ROUTE}{quote(rep.name)}/{quote(name)}"
        out.append(f'<img class="plot" src="{_e(src)}" alt="{_e(name)}" loading="lazy">')
    if rep.report_md:
        out.append("<details><summary>report.md</summary>"
                   f"<pre>{_e(rep.report_md)}</pre></details>")
    out.append("</section>")
    return "".join(out)

