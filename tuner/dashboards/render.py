"""Dashboards to Grafana JSON: the set of dashboards, panel layout, one JSON per file.

``dashboards`` is every dashboard with the config's SLOs and cost filled in; ``render``
lays the panels of each row out on Grafana's 24-column grid (a panel that does not fit
starts a new line) and writes schemaVersion 39 JSON; ``render_all`` maps file names to JSON.
"""

from __future__ import annotations

from typing import Any

from tuner.config import SLO
from tuner.dashboards.gpu_dcgm import gpu
from tuner.dashboards.model import (
    DATASOURCE,
    HEADER,
    SCHEMA_VERSION,
    Dashboard,
    Panel,
    PanelKind,
)
from tuner.dashboards.tuner_sidecar import tuner_self
from tuner.dashboards.vllm_kv_cache import kv_scheduling
from tuner.dashboards.vllm_overview import overview
from tuner.dashboards.vllm_speculative import spec_decode


def dashboards(slo: SLO | None = None, dollars_per_hour: float = 0.0) -> tuple[Dashboard, ...]:
    """All dashboards, with SLO thresholds and instance cost filled in."""
    slo = slo or SLO()
    return (overview(slo, dollars_per_hour), kv_scheduling(), spec_decode(), gpu(), tuner_self())



def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for i, q in enumerate(p.queries):
        t: dict[str, Any] = {
            "refId": chr(ord("A") + i),
            "datasource": DATASOURCE,
            "expr": q.expr,
            "legendFormat": q.legend or "__auto",
            "range": not (q.instant or p.kind in (PanelKind.TABLE, PanelKind.STAT)),
            "instant": q.instant or p.kind in (PanelKind.TABLE, PanelKind.STAT),
        }
        if p.kind is PanelKind.TABLE:
            t["format"] = "table"
        targets.append(t)
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    description = p.description
    if p.requires is not None:
        description = (f"{description} Needs {p.requires.feature}; empty otherwise.").strip()
    panel: dict[str, Any] = {
        "id": pid,
        "type": p.kind.value,
        "title": p.title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
    }
    if p.kind is PanelKind.TIMESERIES:
        panel["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
        }
    elif p.kind is PanelKind.STAT:
        panel["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        }
    elif p.kind is PanelKind.TABLE:
        panel["options"] = {"showHeader": True}
    return panel


def render(d: Dashboard) -> dict[str, Any]:
    """Grafana dashboard JSON (schemaVersion 39) for one dashboard."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in d.rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y = pid + 1, y + 1
        x, row_h = 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(_panel_json(p, pid, x, y))
            pid += 1
            x += p.width
            row_h = max(row_h, p.height)
        y += row_h
    return {
        "__comment": HEADER,
        "description": HEADER,
        "uid": d.uid,
        "title": d.title,
        "tags": [*d.tags, "generated"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": [dict(v) for v in d.variables]},
        "panels": panels,
    }


def render_all(slo: SLO | None = None, dollars_per_hour: float = 0.0) -> dict[str, dict[str, Any]]:
    """filename -> dashboard JSON for every dashboard."""
    return {d.filename: render(d) for d in dashboards(slo, dollars_per_hour)}
