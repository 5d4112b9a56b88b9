"""The sidecar's HTTP listener: one server, a table of routes, and what sits in front of them.

``server`` is the listener (``WebServer``: a threading HTTP server over a route table of pure
handlers, ``Request`` → ``Response``). The daemon registers its endpoints (``/metrics``,
``/healthz``) there, and the Prometheus query API (``api``: the handlers over the store;
``api_format``: Prometheus's parameters, value spelling and JSON envelopes); the status page and
the listener's TLS and authentication plug into the same server.
"""

from tuner.web.api import PrometheusApi
from tuner.web.server import Handler, Request, Response, Route, WebServer, text_response

__all__ = ["Handler", "PrometheusApi", "Request", "Response", "Route", "WebServer",
           "text_response"]
