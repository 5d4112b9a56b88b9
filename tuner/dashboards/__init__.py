"""Grafana dashboards as code: plain Python that renders Grafana 10+ dashboard JSON.

Five dashboards (vLLM overview, KV cache and scheduling, speculative decoding, GPU, the tuner
itself), every query written against the metric names current vLLM (V1, 0.11+) exports, with a
fallback to the old V0 names where a mixed fleet still has them (``new or old``: PromQL's ``or``
drops the duplicate label set, so a server exporting both counts once).

Every query stays inside the PromQL subset ``tuner.promql`` evaluates (selectors, ``rate``,
``increase``, ``histogram_quantile``, aggregations with ``by``, arithmetic, ``or``/``and``,
``on``/``group_left``, ``vector``, ``clamp_min``), uses ``$__rate_interval`` for rate windows,
and filters on the ``model_name`` and ``instance`` variables. The datasource is a variable.

No dependency beyond the standard library: ``tuner provision`` renders the dashboards at run
time with the config's SLOs and cost filled in, and ``dashboards/generate.py`` writes the
committed copies in ``dashboards/`` (with the default SLOs). A panel that by design needs a
feature that may be off (speculative decoding, a tune run, an alert) carries a
:class:`Requirement`: a PromQL probe that is non-empty exactly when the feature is on.

Modules: ``model`` (records, selectors, query and variable helpers, requirements), one
module per dashboard (``vllm_overview``, ``vllm_kv_cache``, ``vllm_speculative``,
``gpu_dcgm``, ``tuner_sidecar``), ``render`` (the set of dashboards and their JSON) and
``queries`` (reading the queries back, for tests and checks).
"""

from __future__ import annotations

from tuner.dashboards.gpu_dcgm import gpu
from tuner.dashboards.model import (
    ALERT_ACTIVE,
    DATASOURCE,
    GENERATOR,
    HEADER,
    SCHEMA_VERSION,
    SPEC_DECODE,
    TUNE_RUN,
    Dashboard,
    Panel,
    PanelKind,
    Query,
    Requirement,
    Row,
)
from tuner.dashboards.queries import PanelQuery, json_exprs, panel_queries, substitute
from tuner.dashboards.render import dashboards, render, render_all
from tuner.dashboards.tuner_sidecar import tuner_self
from tuner.dashboards.vllm_kv_cache import kv_scheduling
from tuner.dashboards.vllm_overview import overview
from tuner.dashboards.vllm_speculative import spec_decode

__all__ = [
    "ALERT_ACTIVE",
    "DATASOURCE",
    "GENERATOR",
    "HEADER",
    "SCHEMA_VERSION",
    "SPEC_DECODE",
    "TUNE_RUN",
    "Dashboard",
    "Panel",
    "PanelKind",
    "PanelQuery",
    "Query",
    "Requirement",
    "Row",
    "dashboards",
    "gpu",
    "json_exprs",
    "kv_scheduling",
    "overview",
    "panel_queries",
    "render",
    "render_all",
    "spec_decode",
    "substitute",
    "tuner_self",
]
