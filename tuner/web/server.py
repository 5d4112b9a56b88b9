"""The listener: a threading HTTP server that answers from a table of routes.

A route is a path (exact, or a prefix ending in ``/``) and the methods it answers; its
handler is a plain function ``Request -> Response``, so endpoints are tested without a
socket. The server decodes the query string and a form-encoded body (``POST`` with
``application/x-www-form-urlencoded``, as Prometheus's API accepts) into ``Request.params``,
answers ``404`` for an unknown path and ``405`` (with ``Allow``) for a known path and another
method, and turns a handler that raises into a ``500`` without stopping the listener.

What sits in front of every route is the web configuration (``tuner.web.webconfig``): with
``tls_server_config`` each connection is wrapped in TLS with the context current when it
arrives (so a renewed certificate is used without a restart; plain HTTP sent to the TLS port
gets a ``400`` saying so, as Go's servers answer); with ``basic_auth_users`` every request
needs valid credentials (``401`` with ``WWW-Authenticate`` otherwise) except the paths in
``open_paths`` (``/healthz`` for probes, unless configured otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tuner.errors import TunerError
from tuner.web.webconfig import AUTH_REALM, WebConfigWatcher, peer_allowed

log = logging.getLogger("tuner.web")

MAX_BODY_BYTES = 1 << 20  # a query or form body larger than this is refused (413)
TLS_HANDSHAKE_TIMEOUT = 10.0
_TLS_HANDSHAKE_RECORD = 0x16
PLAIN_HTTP_TO_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")


@dataclass(frozen=True)
class Request:
    """One HTTP request as a handler sees it: the path, decoded parameters, headers, body."""

    method: str
    path: str
    params: Mapping[str, Sequence[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def param(self, name: str, default: str | None = None) -> str | None:
        """The last value of a parameter (Prometheus takes the last of repeated values)."""
        values = self.params.get(name)
        return values[-1] if values else default

    def params_all(self, name: str) -> list[str]:
        """Every value of a repeated parameter (``match[]``)."""
        return list(self.params.get(name, ()))


@dataclass(frozen=True)
class Response:
    """What a handler answers: status, body, content type and any extra headers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def text_response(status: int, text: str) -> Response:
    """A plain-text response."""
    return Response(status, text.encode())


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """A path (a prefix when it ends in ``/``, but ``/`` is exact) and the methods it answers."""

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)

    @property
    def is_prefix(self) -> bool:
        """A path ending in ``/`` is a prefix, except ``/`` itself (the status page)."""
        return self.path.endswith("/") and self.path != "/"

    def matches(self, path: str) -> bool:
        return path.startswith(self.path) if self.is_prefix else path == self.path


def find_route(routes: Sequence[Route], path: str) -> Route | None:
    """The exact route for ``path``, else the longest prefix route that matches it."""
    exact = [r for r in routes if r.path == path]
    if exact:
        return exact[0]
    prefixes = [r for r in routes if r.is_prefix and path.startswith(r.path)]
    return max(prefixes, key=lambda r: len(r.path), default=None)


def dispatch(routes: Sequence[Route], request: Request) -> Response:
    """Answer one request from the route table (404, 405 and 500 included)."""
    route = find_route(routes, request.path)
    if route is None:
        known = ", ".join(sorted(r.path for r in routes))
        return text_response(404, f"not found: {request.path} (try {known})\n")
    methods = route.methods + (("HEAD",) if "GET" in route.methods else ())
    if request.method not in methods:
        return Response(405, f"method {request.method} not allowed\n".encode(),
                        headers=(("Allow", ", ".join(methods)),))
    try:
        return route.handler(request)
    except Exception:  # a bug in one endpoint must not take the listener down
        log.exception("http: %s %s failed", request.method, request.path)
        return text_response(500, "internal error (see the sidecar's log)\n")


class WebServer:
    """The sidecar's listener over a route table; ``start()`` binds, ``stop()`` closes."""

    def __init__(self, host: str, port: int, routes: Sequence[Route],
                 security: WebConfigWatcher | None = None,
                 open_paths: Sequence[str] = ("/healthz",)) -> None:
        self.host = host
        self.port = port
        self.routes: list[Route] = list(routes)
        self.security = security or WebConfigWatcher(None)
        self.open_paths = tuple(open_paths)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_routes(self, routes: Sequence[Route]) -> None:
        """Register more routes (before or after ``start``)."""
        self.routes.extend(routes)

    def start(self) -> None:
        """Bind and serve in a background thread; TunerError naming the address if it cannot."""
        try:
            self._server = _ListenerServer((self.host, self.port), _make_handler(self),
                                           self.security)
        except OSError as exc:
            raise TunerError(
                f"listen {self.host}:{self.port}: cannot bind: {exc.strerror}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="tuner-http",
                                        daemon=True)
        self._thread.start()

    @property
    def scheme(self) -> str:
        """``https`` when the web config has TLS, else ``http``."""
        return "https" if self.security.tls else "http"

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        if self._server is None:
            raise TunerError("listener not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _ListenerServer(ThreadingHTTPServer):
    """A threading HTTP server that wraps each connection in the TLS context of the moment."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 security: WebConfigWatcher) -> None:
        self.security = security
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # runs in the connection's own thread, so a slow handshake holds up no one else
        _config, context = self.security.current()
        if context is None:
            super().finish_request(request, client_address)
            return
        conn: socket.socket = request
        conn.settimeout(TLS_HANDSHAKE_TIMEOUT)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
            if first and first[0] != _TLS_HANDSHAKE_RECORD:
                conn.sendall(PLAIN_HTTP_TO_TLS)
                log.info("http: %s sent plain HTTP to the TLS listener", client_address[0])
                return
            tls_conn = context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("http: TLS handshake with %s failed: %s", client_address[0], exc)
            return
        tls_conn.settimeout(None)
        try:
            super().finish_request(tls_conn, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls_conn.close()

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(OSError):  # a TLS connection was closed already
            super().shutdown_request(request)


def _unauthorized() -> Response:
    return Response(401, b"unauthorized: valid credentials are required\n",
                    headers=(("WWW-Authenticate", AUTH_REALM),))


def _make_handler(server: WebServer) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

        def _handle(self) -> None:
            url = urlsplit(self.path)
            config, _context = server.security.current()
            self._extra_headers = config.headers
            if isinstance(self.connection, ssl.SSLSocket) and not peer_allowed(
                    config, self.connection.getpeercert()):
                self._send(text_response(403, "client certificate not allowed\n"))
                return
            if url.path not in server.open_paths and not server.security.authorized(
                    config, self.headers.get("Authorization")):
                self._discard_body()
                self._send(_unauthorized())
                return
            params: dict[str, list[str]] = parse_qs(url.query, keep_blank_values=True)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._send(Response(413, b"request body too large\n"))
                return
            body = self.rfile.read(length) if length else b""
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if self.command == "POST" and ctype == "application/x-www-form-urlencoded":
                for k, v in parse_qs(body.decode("utf-8", "replace"),
                                     keep_blank_values=True).items():
                    params.setdefault(k, []).extend(v)
            request = Request(self.command, url.path, params,
                              {k.lower(): v for k, v in self.headers.items()}, body)
            self._send(dispatch(server.routes, request))

        def _discard_body(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if 0 < length <= MAX_BODY_BYTES:
                self.rfile.read(length)
            elif length:
                self.close_connection = True

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in (*getattr(self, "_extra_headers", ()), *response.headers):
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http: " + fmt, *args)

    return RequestHandler
