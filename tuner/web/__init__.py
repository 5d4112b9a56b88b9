"""The sidecar's HTTP listener: one server, a table of routes, and what sits in front of them.

``server`` is the listener (``WebServer``: a threading HTTP server over a route table of pure
handlers, ``Request`` → ``Response``). The daemon registers its endpoints (``/metrics``,
``/healthz``) there; the Prometheus query API, the status page and the listener's TLS and
authentication plug into the same server. ``page`` is the status page at ``/`` (collecting and
serving), ``page_html`` its records and their HTML, ``charts`` the inline-SVG sparklines.
"""

from tuner.web.page import PageSources, StatusPage
from tuner.web.page_html import TuningProgress
from tuner.web.server import Handler, Request, Response, Route, WebServer, text_response

__all__ = [
    "Handler",
    "PageSources",
    "Request",
    "Response",
    "Route",
    "StatusPage",
    "TuningProgress",
    "WebServer",
    "text_response",
]
