"""Every client's http_config (tuner.httpconfig): TLS, credentials from files, headers, proxy.

The servers are tuner's own listener (tuner.web, over real sockets) with TLS from an openssl
test CA: https scrape targets with basic auth, client certificates and tenant headers; targets
with expired, untrusted and wrong-host certificates (marked down, nothing else affected);
secret files that rotate and disappear; and the bad inputs of issue 12 for clients.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from tests.support.tls import PKI, make_pki
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.errors import ConfigError
from tuner.httpconfig import SecretFiles, make_client, request_headers
from tuner.report import render_status
from tuner.scrape import scrape_all, target_clients
from tuner.status import read_status
from tuner.store import Matcher
from tuner.web import Request, Response, Route, WebConfigWatcher, WebServer

PASSWORD = "tgt-pa55-9f3a1c"
TOKEN = "tok-7d41e0b2aa"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Server:
    """A tuner listener serving an exposition, recording the headers of each request."""

    def __init__(self, web_config: Path | None) -> None:
        self.seen: list[dict[str, str]] = []
        self.web = WebServer("127.0.0.1", 0, [Route("/metrics", self._metrics)],
                             WebConfigWatcher(web_config, check_every=0.0), open_paths=())
        self.web.start()
        host, port = self.web.address
        self.url = f"{self.web.scheme}://{host}:{port}/metrics"

    def _metrics(self, request: Request) -> Response:
        self.seen.append(dict(request.headers))
        return Response(200, b"# TYPE demo gauge\ndemo 1\n", "text/plain; version=0.0.4")


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(body: str | None = None) -> Server:
        path = None
        if body is not None:
            path = tmp_path / f"web{len(servers)}.yml"
            path.write_text(body)
        server = Server(path)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.web.stop()


def _tls(pki: PKI, name: str = "server", extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {pki.crt(name)}\n  key_file: {pki.key(name)}\n{extra}"


def _cfg(tmp_path: Path, targets: list[dict[str, Any]], **extra: Any):  # type: ignore[no-untyped-def]
    return parse_config({"targets": targets, "store": {"path": "t.db"}, "listen": "127.0.0.1:0",
                         "scrape_interval": "1s", "scrape_timeout": "1s", **extra},
                        str(tmp_path / "tuner.yaml"))


def _scrape(cfg: Any) -> dict[str, Any]:
    clients = target_clients(cfg.targets)
    try:
        return {o.target.name: o for o in scrape_all(clients, cfg.targets, 2.0, 1 << 20)}
    finally:
        for c in set(clients.values()):
            c.close()


def test_https_target_with_basic_auth_from_a_file_and_a_tenant_header(
        pki: PKI, tmp_path: Path, serve: Any) -> None:
    server = serve(_tls(pki) + f"basic_auth_users:\n  scraper: '{HASH}'\n")
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    (tmp_path / "tenant").write_text("team-b\n")
    cfg = _cfg(tmp_path, [{
        "name": "secure", "url": server.url, "tls_config": {"ca_file": str(pki.ca)},
        "basic_auth": {"username": "scraper", "password_file": "pw"},
        "http_headers": {"X-Scope-OrgID": {"values": ["team-a"]},
                         "X-Tenant-Key": {"files": ["tenant"]}},
    }, {"name": "wrong", "url": server.url, "tls_config": {"ca_file": str(pki.ca)}}])
    out = _scrape(cfg)
    assert out["secure"].up, out["secure"].error
    assert [s.name for s in out["secure"].samples] == ["demo"]
    assert server.seen[-1]["x-scope-orgid"] == "team-a"
    assert server.seen[-1]["x-tenant-key"] == "team-b"
    assert out["wrong"].error_kind == "http_status" and "401" in out["wrong"].error


@pytest.mark.parametrize(("cert", "reason"), [
    ("expired", "certificate has expired"),
    ("selfsigned", "self-signed certificate"),
    ("wronghost", "IP address mismatch"),
])
def test_bad_server_certificates_mark_only_that_target_down(
        pki: PKI, tmp_path: Path, serve: Any, cert: str, reason: str) -> None:
    good, bad = serve(_tls(pki)), serve(_tls(pki, cert))
    cfg = _cfg(tmp_path, [{"name": "good", "url": good.url, "tls_config": {"ca_file": str(pki.ca)}},
                          {"name": "bad", "url": bad.url, "tls_config": {"ca_file": str(pki.ca)}}])
    daemon = Daemon(cfg)
    try:
        outcomes = {o.target.name: o for o in daemon.scrape_once()}
        assert outcomes["good"].up
        assert outcomes["bad"].error_kind == "tls"
        assert outcomes["bad"].error.startswith(f"{bad.url}: TLS: ")
        assert reason in outcomes["bad"].error
        ups = {s.labels["instance"]: s.values[-1] for s in daemon.store.select(
            [Matcher("__name__", "=", "up")], 0, 2**62)}
        assert ups == {"good": 1.0, "bad": 0.0}
    finally:
        daemon.stop()


def test_server_name_and_insecure_skip_verify(pki: PKI, tmp_path: Path, serve: Any) -> None:
    wronghost, selfsigned = serve(_tls(pki, "wronghost")), serve(_tls(pki, "selfsigned"))
    cfg = _cfg(tmp_path, [
        {"name": "sni", "url": wronghost.url,
         "tls_config": {"ca_file": str(pki.ca), "server_name": "other.example"}},
        {"name": "insecure", "url": selfsigned.url, "tls_config": {"insecure_skip_verify": True}},
    ])
    out = _scrape(cfg)
    assert out["sni"].up, out["sni"].error
    assert out["insecure"].up, out["insecure"].error


def test_client_certificate_for_a_listener_that_requires_one(pki: PKI, tmp_path: Path,
                                                             serve: Any) -> None:
    server = serve(_tls(pki, extra=f"  client_ca_file: {pki.ca}\n"
                                   "  client_auth_type: RequireAndVerifyClientCert\n"))
    cfg = _cfg(tmp_path, [
        {"name": "with", "url": server.url, "tls_config": {
            "ca_file": str(pki.ca), "cert_file": str(pki.crt("client")),
            "key_file": str(pki.key("client"))}},
        {"name": "without", "url": server.url, "tls_config": {"ca_file": str(pki.ca)}},
    ])
    out = _scrape(cfg)
    assert out["with"].up, out["with"].error
    assert not out["without"].up and out["without"].error_kind in ("tls", "connection")


def test_bearer_token_rotates_and_a_vanished_file_keeps_the_last_one(
        tmp_path: Path, serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = serve()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    cfg = _cfg(tmp_path, [{"name": "t", "url": server.url,
                           "authorization": {"credentials_file": "token"}}])
    secrets = SecretFiles()
    with make_client(cfg.targets[0].http, secrets=secrets) as client:
        client.get(server.url)
        token.write_text("rotated-token\n")
        client.get(server.url)
        token.unlink()
        with caplog.at_level(logging.WARNING, "tuner.http"):
            client.get(server.url)
            client.get(server.url)
    auths = [h["authorization"] for h in server.seen]
    assert auths == [f"Bearer {TOKEN}", "Bearer rotated-token", "Bearer rotated-token",
                     "Bearer rotated-token"]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "keeping the last value read" in said[0] and str(token) in said[0]
    assert "rotated-token" not in caplog.text


def test_bearer_token_file_and_authorization_type(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text(TOKEN)
    cfg = _cfg(tmp_path, [
        {"name": "a", "url": "http://127.0.0.1:1/metrics", "bearer_token_file": "tok"},
        {"name": "b", "url": "http://127.0.0.1:1/metrics",
         "authorization": {"type": "Token", "credentials_file": "tok"}},
    ])
    assert request_headers(cfg.targets[0].http) == {"Authorization": f"Bearer {TOKEN}"}
    assert request_headers(cfg.targets[1].http) == {"Authorization": f"Token {TOKEN}"}
    assert TOKEN not in repr(cfg)


def test_secrets_stay_out_of_errors_logs_and_metrics(pki: PKI, tmp_path: Path, serve: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    server = serve(_tls(pki) + f"basic_auth_users:\n  scraper: '{HASH}'\n")
    (tmp_path / "pw").write_text("not-the-password-5e1\n")
    cfg = _cfg(tmp_path, [{"name": "s", "url": server.url, "tls_config": {"ca_file": str(pki.ca)},
                           "basic_auth": {"username": "scraper", "password_file": "pw"}}])
    daemon = Daemon(cfg)
    daemon.start()
    try:
        with caplog.at_level(logging.DEBUG):
            outcome = daemon.scrape_once()[0]
        host, port = daemon.address
        metrics = httpx.get(f"http://{host}:{port}/metrics", trust_env=False).text
    finally:
        daemon.stop()
    assert outcome.error_kind == "http_status"
    status = read_status(cfg)
    shown = render_status(status) + json.dumps(status.to_json())
    assert [(t.name, t.up) for t in status.targets] == [("s", False)]
    for text in (outcome.error, caplog.text, metrics, repr(cfg), shown):
        assert "not-the-password-5e1" not in text


@pytest.mark.parametrize(("target", "key", "says"), [
    ({"basic_auth": {"username": "u", "password": "inline"}}, "targets[0].basic_auth.password",
     "use password_file"),
    ({"bearer_token": "inline"}, "targets[0].bearer_token", "use bearer_token_file"),
    ({"authorization": {"credentials": "inline"}}, "targets[0].authorization.credentials",
     "use credentials_file"),
    ({"basic_auth": {"username": "u", "password_file": "missing"}},
     "targets[0].basic_auth.password_file", "cannot read"),
    ({"basic_auth": {"username": "u"}}, "targets[0].basic_auth.password_file", "is required"),
    ({"tls_config": {"ca_file": "nope.crt"}}, "targets[0].tls_config.ca_file", "cannot read"),
    ({"tls_config": {"cafile": "x"}}, "targets[0].tls_config.cafile", "unknown key"),
    ({"tls_config": {"cert_file": "PKI/client.crt"}}, "targets[0].tls_config.key_file",
     "go together"),
    ({"proxy_url": "http://u:inline@proxy:3128"}, "targets[0].proxy_url", "may not carry"),
    ({"http_headers": {"X-Scope-OrgID": {"secrets": ["inline"]}}},
     "targets[0].http_headers.X-Scope-OrgID.secrets", "use files"),
    ({"http_headers": {"Authorization": {"values": ["x"]}}},
     "targets[0].http_headers.Authorization", "reserved"),
    ({"bearer_token_file": "tok", "basic_auth": {"username": "u", "password_file": "tok"}},
     "targets[0].basic_auth", "only one of"),
])
def test_bad_client_http_config_names_file_and_key(pki: PKI, tmp_path: Path,
                                                   target: dict[str, Any], key: str,
                                                   says: str) -> None:
    (tmp_path / "tok").write_text("x")
    shutil.copy(pki.crt("client"), tmp_path / "client.crt")
    target = {k: ({kk: vv.replace("PKI/", str(tmp_path) + "/") if isinstance(vv, str) else vv
                   for kk, vv in v.items()} if isinstance(v, dict) else v)
              for k, v in target.items()}
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, [{"name": "t", "url": "https://127.0.0.1:1/metrics", **target}])
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'tuner.yaml'}: {key}:"), text
    assert says in text and "inline" not in text.replace("inline certificates", "")
    assert err.value.exit_code == 2


def test_alertmanager_and_prometheus_http_config_are_parsed(pki: PKI, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    cfg = _cfg(tmp_path, [], alertmanagers=[{
        "url": "https://127.0.0.1:9093", "tls_config": {"ca_file": str(pki.ca)},
        "basic_auth": {"username": "am", "password_file": "pw"}}],
        prometheus_url="https://127.0.0.1:9090",
        prometheus_http_config={"bearer_token_file": "pw",
                                "http_headers": {"X-Scope-OrgID": {"values": ["t1"]}}})
    assert cfg.alertmanagers[0].http.tls.ca_file == pki.ca
    assert request_headers(cfg.alertmanagers[0].http)["Authorization"].startswith("Basic ")
    assert request_headers(cfg.prometheus_http) == {"X-Scope-OrgID": "t1",
                                                    "Authorization": f"Bearer {PASSWORD}"}
    with pytest.raises(ConfigError, match=r"prometheus_http_config\.basic_auth\.password:"):
        _cfg(tmp_path, [], prometheus_http_config={"basic_auth": {"username": "u",
                                                                  "password": "x"}})


def test_https_target_that_speaks_plain_http_is_a_tls_error(tmp_path: Path, serve: Any) -> None:
    plain = serve()
    url = plain.url.replace("http://", "https://")
    out = _scrape(_cfg(tmp_path, [{"name": "p", "url": url}]))
    assert out["p"].error_kind == "tls" and out["p"].error.startswith(f"{url}: TLS: ")


def test_http_config_file_with_an_inline_secret_exits_2_naming_file_and_key(
        tmp_path: Path) -> None:
    bad = tmp_path / "http.yml"
    bad.write_text("basic_auth: {username: u, password: hunter2-inline}\n")
    out = subprocess.run([sys.executable, "-m", "tuner", "suggest", "--prometheus",
                          "https://127.0.0.1:1", "--http-config-file", str(bad)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"{bad}: basic_auth.password: secrets and certificates are read only from files" \
        in out.stderr
    assert "hunter2-inline" not in out.stderr + out.stdout
