"""Reading dashboards back: every panel query, the queries of rendered JSON, variables.

Used by the tests (every query parses and evaluates, the differential test against a real
Prometheus) and by ``tuner provision``'s checks. ``substitute`` fills in Grafana variables
and refuses a query that would keep an unsubstituted ``$``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tuner.config import SLO
from tuner.dashboards.model import Requirement
from tuner.dashboards.render import dashboards


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    requires: Requirement | None


def panel_queries(slo: SLO | None = None, dollars_per_hour: float = 0.0) -> Iterator[PanelQuery]:
    """Every query of every panel, with the panel's requirement (if any)."""
    for d in dashboards(slo, dollars_per_hour):
        for row in d.rows:
            for p in row.panels:
                for i, q in enumerate(p.queries):
                    yield PanelQuery(d.filename, p.title, chr(ord("A") + i), q.expr, p.requires)


def json_exprs(dashboard_json: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) for every target in a rendered dashboard JSON."""
    out = []
    for panel in dashboard_json.get("panels", []):
        for t in panel.get("targets", []):
            out.append((panel["title"], t["refId"], t["expr"]))
    return out


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables (``$name`` and ``${name}``) with ``values[name]``.

    Raises KeyError naming a variable that has no value, so a test cannot run a query with
    an unsubstituted ``$``.
    """

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", repl, expr)
