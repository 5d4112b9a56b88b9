"""The listener: routes, 404/405/413/500, query and form parameters, over a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tuner.web import Request, Response, Route, WebServer, text_response
from tuner.web.server import MAX_BODY_BYTES, dispatch


def _echo(request: Request) -> Response:
    return text_response(200, f"{request.method} {request.path} q={request.params_all('q')}")


def _boom(_request: Request) -> Response:
    raise RuntimeError("a bug in an endpoint")


ROUTES = [Route("/echo", _echo, ("GET", "POST")), Route("/api/", _echo), Route("/boom", _boom)]


@pytest.fixture()
def server() -> Iterator[str]:
    web = WebServer("127.0.0.1", 0, ROUTES)
    web.start()
    host, port = web.address
    try:
        yield f"http://{host}:{port}"
    finally:
        web.stop()


def test_get_and_form_post_parameters(server: str) -> None:
    r = httpx.get(f"{server}/echo", params=[("q", "a"), ("q", "b")])
    assert r.status_code == 200 and r.text == "GET /echo q=['a', 'b']"
    r = httpx.post(f"{server}/echo?q=a", data={"q": "up{job=\"x\"}"})
    assert r.text == "POST /echo q=['a', 'up{job=\"x\"}']"


def test_prefix_route_and_unknown_path(server: str) -> None:
    assert httpx.get(f"{server}/api/v1/label/job/values").text.startswith("GET /api/v1/label")
    r = httpx.get(f"{server}/nothing")
    assert r.status_code == 404 and "/echo" in r.text


def test_wrong_method_is_405_with_allow(server: str) -> None:
    r = httpx.delete(f"{server}/echo")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST, HEAD"


def test_a_failing_endpoint_is_500_and_the_listener_goes_on(server: str) -> None:
    assert httpx.get(f"{server}/boom").status_code == 500
    assert httpx.get(f"{server}/echo").status_code == 200


def test_oversized_body_is_refused(server: str) -> None:
    r = httpx.post(f"{server}/echo", content=b"x" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413


def test_dispatch_is_pure() -> None:
    assert dispatch(ROUTES, Request("GET", "/echo", {"q": ["z"]})).body == b"GET /echo q=['z']"


def test_bind_error_names_the_address() -> None:
    first = WebServer("127.0.0.1", 0, ROUTES)
    first.start()
    try:
        port = first.address[1]
        with pytest.raises(Exception, match=f"127.0.0.1:{port}: cannot bind"):
            WebServer("127.0.0.1", port, ROUTES).start()
    finally:
        first.stop()
