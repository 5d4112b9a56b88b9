"""The listener's TLS and basic auth from a web config file, over real sockets.

Certificates come from a CA the tests make with openssl (tests/support/tls.py); the clients are
httpx, curl and promtool. Every bad input of issue 12 for the listener has a test here.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.support.tls import PKI, make_pki
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.errors import ConfigError
from tuner.source import PrometheusSource
from tuner.web import Request, Response, Route, WebConfigWatcher, WebServer, text_response
from tuner.web.webconfig import load_web_config

PASSWORD = "s3cret-pa55word"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def _metrics(_r: Request) -> Response:
    return text_response(200, "up 1\n")


def _query(r: Request) -> Response:
    # a test route shaped like Prometheus's /api/v1/query, so promtool has something to read
    body = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "up", "q": r.param("query") or ""}, "value": [1.0, "1"]}]}}
    return Response(200, json.dumps(body).encode(), "application/json")


ROUTES = [Route("/metrics", _metrics), Route("/healthz", _metrics),
          Route("/api/v1/query", _query, ("GET", "POST"))]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _tls_block(pki: PKI, extra: str = "", cert: str = "server") -> str:
    return (f"tls_server_config:\n  cert_file: {pki.crt(cert)}\n  key_file: {pki.key(cert)}\n"
            + extra)


class Listener:
    def __init__(self, config: Path | None, open_paths: tuple[str, ...] = ("/healthz",)) -> None:
        self.watcher = WebConfigWatcher(config, check_every=0.0)
        self.web = WebServer("127.0.0.1", 0, ROUTES, self.watcher, open_paths)
        self.web.start()
        host, port = self.web.address
        self.port = port
        self.url = f"{self.web.scheme}://{host}:{port}"

    def stop(self) -> None:
        self.web.stop()


@pytest.fixture()
def listen() -> Iterator[object]:
    started: list[Listener] = []

    def start(config: Path | None, open_paths: tuple[str, ...] = ("/healthz",)) -> Listener:
        listener = Listener(config, open_paths)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


def _client(pki: PKI, cert: str | None = None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        ctx.load_cert_chain(pki.crt(cert), pki.key(cert))
    return httpx.Client(verify=ctx, trust_env=False, timeout=10)


# -- TLS -------------------------------------------------------------------------------------


def test_tls_listener_answers_a_client_that_trusts_the_ca(pki: PKI, tmp_path: Path,
                                                          listen) -> None:
    lst = listen(_write(tmp_path / "web.yml", _tls_block(pki)))
    assert lst.url.startswith("https://")
    with _client(pki) as c:
        assert c.get(f"{lst.url}/metrics").text == "up 1\n"
    out = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca), f"{lst.url}/metrics"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "up 1\n"


def test_plain_http_to_the_tls_port_is_a_400_saying_so(pki: PKI, tmp_path: Path, listen) -> None:
    lst = listen(_write(tmp_path / "web.yml", _tls_block(pki)))
    r = httpx.get(f"http://127.0.0.1:{lst.port}/metrics", trust_env=False)
    assert r.status_code == 400 and "HTTP request to an HTTPS server" in r.text
    with _client(pki) as c:  # the listener goes on
        assert c.get(f"{lst.url}/metrics").status_code == 200


def test_a_client_that_does_not_trust_the_ca_fails_the_handshake(pki: PKI, tmp_path: Path,
                                                                 listen) -> None:
    lst = listen(_write(tmp_path / "web.yml", _tls_block(pki)))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{lst.url}/metrics", trust_env=False)


def test_client_certificates_required_and_verified(pki: PKI, tmp_path: Path, listen) -> None:
    extra = (f"  client_ca_file: {pki.ca}\n  client_auth_type: RequireAndVerifyClientCert\n")
    lst = listen(_write(tmp_path / "web.yml", _tls_block(pki, extra)))
    with _client(pki, "client") as c:
        assert c.get(f"{lst.url}/metrics").status_code == 200
    with _client(pki) as c, pytest.raises(httpx.HTTPError):
        c.get(f"{lst.url}/metrics")
    with _client(pki, "selfsigned") as c, pytest.raises(httpx.HTTPError):
        c.get(f"{lst.url}/metrics")  # a client certificate the CA did not sign
    out = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca), "--cert", str(pki.crt("client")),
                          "--key", str(pki.key("client")), f"{lst.url}/metrics"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "up 1\n"


def test_client_allowed_sans_refuses_other_client_names(pki: PKI, tmp_path: Path,
                                                        listen) -> None:
    extra = (f"  client_ca_file: {pki.ca}\n  client_auth_type: RequireAndVerifyClientCert\n"
             "  client_allowed_sans: [someone.else]\n")
    lst = listen(_write(tmp_path / "web.yml", _tls_block(pki, extra)))
    with _client(pki, "client") as c:
        assert c.get(f"{lst.url}/metrics").status_code == 403


def test_min_version_tls13_refuses_a_tls12_client(pki: PKI, tmp_path: Path, listen) -> None:
    lst = listen(_write(tmp_path / "web.yml", _tls_block(pki, "  min_version: TLS13\n")))
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{lst.url}/metrics", verify=ctx, trust_env=False)
    with _client(pki) as c:
        assert c.get(f"{lst.url}/metrics").status_code == 200


# -- basic auth --------------------------------------------------------------------------------


def test_basic_auth_401_without_or_with_wrong_credentials(pki: PKI, tmp_path: Path,
                                                          listen) -> None:
    web = _write(tmp_path / "web.yml", _tls_block(pki) + f"basic_auth_users:\n  alice: '{HASH}'\n")
    lst = listen(web)
    with _client(pki) as c:
        for auth in (None, ("alice", "wrong"), ("mallory", PASSWORD), ("alice", "")):
            r = c.get(f"{lst.url}/metrics", auth=auth)
            assert r.status_code == 401, auth
            assert r.headers["www-authenticate"].startswith("Basic")
        r = c.get(f"{lst.url}/metrics", headers={"Authorization": "Basic !!notbase64"})
        assert r.status_code == 401
        r = c.post(f"{lst.url}/api/v1/query", data={"query": "up"})
        assert r.status_code == 401
        assert c.get(f"{lst.url}/metrics", auth=("alice", PASSWORD)).status_code == 200
        assert c.get(f"{lst.url}/metrics", auth=("alice", PASSWORD)).status_code == 200  # cached
        assert c.get(f"{lst.url}/healthz").status_code == 200  # open for probes
    for args, code in ((["-u", f"alice:{PASSWORD}"], "200"), (["-u", "alice:nope"], "401"),
                       ([], "401")):
        out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                              "--cacert", str(pki.ca), *args, f"{lst.url}/metrics"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout == code, (args, out.stderr)


def test_healthz_needs_credentials_when_not_left_open(tmp_path: Path, listen) -> None:
    lst = listen(_write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{HASH}'\n"),
                 open_paths=())
    assert httpx.get(f"{lst.url}/healthz", trust_env=False).status_code == 401
    assert httpx.get(f"{lst.url}/healthz", auth=("alice", PASSWORD),
                     trust_env=False).status_code == 200


def test_unknown_user_costs_the_same_bcrypt_check_as_a_wrong_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same code path for an unknown user: one bcrypt check against a hash of the same cost
    (the timing itself is measured in benchmarks/auth_timing.py, not asserted here)."""
    hash12 = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    watcher = WebConfigWatcher(_write(tmp_path / "web.yml",
                                      f"basic_auth_users:\n  alice: '{hash12}'\n"))
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    config, _ = watcher.current()
    assert not watcher.authorized(config, header("alice", "wrong"))
    assert not watcher.authorized(config, header("nobody", "wrong"))
    assert len(calls) == 2
    assert calls[0][:7] == calls[1][:7] == b"$2b$05$" and calls[0] != calls[1]
    assert watcher.authorized(config, header("alice", PASSWORD))


# -- promtool ----------------------------------------------------------------------------------


def test_promtool_query_through_tls_and_basic_auth(pki: PKI, tmp_path: Path, listen) -> None:
    """promtool 2.42 has no --http.config.file: it trusts the CA through SSL_CERT_FILE (Go's
    crypto/x509) and sends basic auth from the URL's user info."""
    web = _write(tmp_path / "web.yml", _tls_block(pki) + f"basic_auth_users:\n  alice: '{HASH}'\n")
    check = subprocess.run(["promtool", "check", "web-config", str(web)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr  # our web config is Prometheus's format
    lst = listen(web)
    env = {**os.environ, "SSL_CERT_FILE": str(pki.ca)}
    host = lst.url.removeprefix("https://")
    out = subprocess.run(["promtool", "query", "instant", f"https://alice:{PASSWORD}@{host}", "up"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert 'q="up"' in out.stdout
    out = subprocess.run(["promtool", "query", "instant", f"https://alice:wrong@{host}", "up"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0 and "401" in out.stderr


# -- re-reading the files -----------------------------------------------------------------------


def test_users_and_certificates_are_reread_without_restart(pki: PKI, tmp_path: Path,
                                                           listen) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.crt("server"), cert)
    shutil.copy(pki.key("server"), key)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                   f"basic_auth_users:\n  alice: '{HASH}'\n")
    lst = listen(web)
    other = bcrypt.hashpw(b"bob-pass", bcrypt.gensalt(rounds=4)).decode()
    with _client(pki) as c:
        assert c.get(f"{lst.url}/metrics", auth=("alice", PASSWORD)).status_code == 200
        time.sleep(0.01)
        web.write_text(f"tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                       f"basic_auth_users:\n  bob: '{other}'\n")
        os.utime(web, None)
        assert c.get(f"{lst.url}/metrics", auth=("bob", "bob-pass")).status_code == 200
        assert c.get(f"{lst.url}/metrics", auth=("alice", PASSWORD)).status_code == 401
    # a renewed certificate (here: one for another host) is served to new connections
    shutil.copy(pki.crt("wronghost"), cert)
    shutil.copy(pki.key("wronghost"), key)
    with _client(pki) as c, pytest.raises(httpx.ConnectError, match=r"match|mismatch|hostname"):
        c.get(f"{lst.url}/metrics", auth=("bob", "bob-pass"))


def test_a_certificate_file_that_disappears_keeps_the_last_good_one(
        pki: PKI, tmp_path: Path, listen, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.crt("server"), cert)
    shutil.copy(pki.key("server"), key)
    lst = listen(_write(tmp_path / "web.yml",
                        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"))
    key.unlink()
    with caplog.at_level(logging.ERROR, "tuner.web"), _client(pki) as c:
        for _ in range(3):
            assert c.get(f"{lst.url}/metrics").status_code == 200
            time.sleep(0.01)
    said = [r for r in caplog.records if "keeping the last good configuration" in r.message]
    assert len(said) == 1 and "tls.key" in said[0].message


# -- bad web config files: exit 2 naming the file and the key ------------------------------------


@pytest.mark.parametrize(("body", "key"), [
    ("basic_auth_users:\n  alice: not-a-hash\n", "basic_auth_users.alice"),
    ("basic_auth_users:\n  alice: '$2b$10$tooshort'\n", "basic_auth_users.alice"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {dir}/missing.key\n",
     "tls_server_config.key_file"),
    ("tls_server_config:\n  cert_file: {crt}\n", "tls_server_config.key_file"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {wrongkey}\n",
     "tls_server_config.key_file"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  colour: blue\n",
     "tls_server_config.colour"),
    ("basic_auth_user:\n  alice: x\n", "basic_auth_user"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  key: inline\n",
     "tls_server_config.key"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  min_version: TLS10\n",
     "tls_server_config.min_version"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: Maybe\n",
     "tls_server_config.client_auth_type"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "tls_server_config.client_ca_file"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
     "  client_auth_type: RequireAnyClientCert\n", "tls_server_config.client_auth_type"),
    ("http_server_config:\n  headers:\n    Server: x\n", "http_server_config.headers.Server"),
])
def test_bad_web_config_names_file_and_key(pki: PKI, tmp_path: Path, body: str,
                                           key: str) -> None:
    web = _write(tmp_path / "web.yml", body.format(
        crt=pki.crt("server"), key=pki.key("server"), dir=tmp_path,
        wrongkey=pki.key("client")))
    with pytest.raises(ConfigError) as err:
        load_web_config(web)
    assert str(err.value).startswith(f"{web}: {key}:"), str(err.value)
    assert err.value.exit_code == 2


def test_tuner_run_with_a_bad_web_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    web = _write(tmp_path / "web.yml", "basic_auth_users:\n  alice: plaintext-password\n")
    cfg = _write(tmp_path / "tuner.yaml", f"listen: 127.0.0.1:0\nstore:\n  path: {tmp_path}/t.db\n")
    out = subprocess.run([sys.executable, "-m", "tuner", "run", "-c", str(cfg),
                          "--web-config-file", str(web)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 2, out.stderr
    assert f"{web}: basic_auth_users.alice: is not a bcrypt hash" in out.stderr
    assert "plaintext-password" not in out.stderr + out.stdout


# -- the daemon's listener -----------------------------------------------------------------------


def test_daemon_serves_metrics_behind_its_web_config(pki: PKI, tmp_path: Path) -> None:
    _write(tmp_path / "web.yml", _tls_block(pki) + f"basic_auth_users:\n  alice: '{HASH}'\n")
    for healthz_open, healthz_code in ((True, 200), (False, 401)):
        cfg = parse_config({"listen": "127.0.0.1:0", "store": {"path": "t.db"},
                            "web_config_file": "web.yml", "healthz_open": healthz_open},
                           str(tmp_path / "tuner.yaml"))
        assert cfg.web_config_file == tmp_path / "web.yml"
        daemon = Daemon(cfg)
        daemon.start()
        try:
            host, port = daemon.address
            with _client(pki) as c:
                url = f"https://{host}:{port}"
                assert c.get(f"{url}/metrics").status_code == 401
                r = c.get(f"{url}/metrics", auth=("alice", PASSWORD))
                assert r.status_code == 200 and "tuner_samples_stored" in r.text
                assert PASSWORD not in r.text and HASH not in r.text
                assert c.get(f"{url}/healthz").status_code == healthz_code
                assert daemon.alerting.engine.external_url.startswith("https://")
                page = c.get(f"{url}/")  # the status page sits behind the same check
                assert page.status_code == 401
                assert c.get(f"{url}/", auth=("alice", PASSWORD)).status_code == 200
        finally:
            daemon.stop()


def test_healthz_open_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tuner.yaml: healthz_open: 'no' is not true or false"):
        parse_config({"healthz_open": "no"}, str(tmp_path / "tuner.yaml"))


def test_promtool_and_fleet_client_read_the_daemons_query_api_through_tls_and_auth(
        pki: PKI, tmp_path: Path) -> None:
    """The sidecar's own Prometheus API (tuner.web.api) behind its web config: promtool (CA via
    SSL_CERT_FILE, basic auth from the URL) and PrometheusSource (http_config from files)."""
    _write(tmp_path / "web.yml", _tls_block(pki) + f"basic_auth_users:\n  alice: '{HASH}'\n")
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    cfg = parse_config({"listen": "127.0.0.1:0", "store": {"path": "t.db"},
                        "web_config_file": "web.yml",
                        "prometheus_http_config": {"tls_config": {"ca_file": str(pki.ca)},
                                                   "basic_auth": {"username": "alice",
                                                                  "password_file": "pw"}}},
                       str(tmp_path / "tuner.yaml"))
    daemon = Daemon(cfg)
    daemon.start()
    try:
        _host, port = daemon.address
        env = {**os.environ, "SSL_CERT_FILE": str(pki.ca)}
        out = subprocess.run(["promtool", "query", "instant",
                              f"https://alice:{PASSWORD}@localhost:{port}", "vector(42)"],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        assert "42" in out.stdout
        out = subprocess.run(["promtool", "query", "instant", f"https://localhost:{port}", "up"],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode != 0 and "401" in out.stderr
        source = PrometheusSource(f"https://localhost:{port}", http=cfg.prometheus_http)
        result = source.instant("vector(7)", time.time())
        assert [e.value for e in result.vector] == [7.0]
    finally:
        daemon.stop()
