"""The sidecar's HTTP listener: one server, a table of routes, and what sits in front of them.

``server`` is the listener (``WebServer``: a threading HTTP server over a route table of pure
handlers, ``Request`` → ``Response``). The daemon registers its endpoints (``/metrics``,
``/healthz``) there, the Prometheus query API (``api``: the handlers over the store;
``api_format``: Prometheus's parameters, value spelling and JSON envelopes) and the status page.
``webconfig`` is what sits in front of every route: the listener's TLS and basic auth users,
from a web config file in Prometheus's exporter-toolkit format, re-read when it changes.
``page`` is the status page at ``/`` (collecting and serving), ``page_html`` its records and
their HTML, ``charts`` the inline-SVG sparklines.
"""

from tuner.web.api import PrometheusApi
from tuner.web.page import PageSources, StatusPage
from tuner.web.page_html import TuningProgress
from tuner.web.server import Handler, Request, Response, Route, WebServer, text_response
from tuner.web.webconfig import WebConfig, WebConfigWatcher, load_web_config

__all__ = [
    "Handler",
    "PageSources",
    "PrometheusApi",
    "Request",
    "Response",
    "Route",
    "StatusPage",
    "TuningProgress",
    "WebConfig",
    "WebConfigWatcher",
    "WebServer",
    "load_web_config",
    "text_response",
]
