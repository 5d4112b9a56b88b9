"""Canary endpoints behind TLS and credentials: tune.yaml's canary.scheme and canary.http_config,
the /health probe, the scraper's and the load driver's clients (against tuner's own TLS
listener; no cluster here, so the Kubernetes backend's pod start is not exercised)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.support.tls import PKI, make_pki
from tuner.errors import ConfigError
from tuner.httpconfig import health_probe
from tuner.load.driver import make_client as make_load_client
from tuner.scrape import make_client as make_scrape_client
from tuner.tune import parse_tune_config
from tuner.web import Request, Response, Route, WebConfigWatcher, WebServer

PASSWORD = "canary-pw-4410"
BASE: dict[str, Any] = {
    "launch": {"model": "/models/tiny", "flags": {"max-model-len": 2048}},
    "load": {"prompt_tokens": 16, "output_tokens": 8, "concurrency": 1, "duration": 5},
    "slo": {"ttft_p99_seconds": 2.5, "itl_p99_seconds": 0.25},
    "budget": {"trials": 2},
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tune(tmp_path: Path, canary: dict[str, Any]) -> Any:
    (tmp_path / "pod.yaml").write_text(
        (Path(__file__).resolve().parents[2] / "deploy/kubernetes/base/deployment.yaml").read_text())
    return parse_tune_config({**BASE, "canary": {"backend": "kubernetes",
                                                 "pod_template": "pod.yaml", **canary}},
                             str(tmp_path / "tune.yaml"))


def test_canary_scheme_and_http_config_parse(pki: PKI, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    shutil.copy(pki.ca, tmp_path / "ca.crt")
    cfg = _tune(tmp_path, {"scheme": "https", "http_config": {
        "tls_config": {"ca_file": "ca.crt"},
        "basic_auth": {"username": "tuner", "password_file": "pw"}}})
    assert cfg.canary.scheme == "https"
    assert cfg.canary.http.tls.ca_file == tmp_path / "ca.crt"
    assert cfg.canary.http.secret_file == tmp_path / "pw"
    assert PASSWORD not in repr(cfg)
    for canary, key in (({"scheme": "ftp"}, "canary.scheme"),
                        ({"http_config": {"basic_auth": {"username": "u", "password": "x"}}},
                         "canary.http_config.basic_auth.password"),
                        ({"http_config": {"bearer_token_file": "missing"}},
                         "canary.http_config.bearer_token_file")):
        with pytest.raises(ConfigError, match=rf"tune.yaml: {key}:"):
            _tune(tmp_path, canary)


def test_health_probe_scraper_and_load_clients_speak_the_canary_http_config(
        pki: PKI, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"tls_server_config:\n  cert_file: {pki.crt('server')}\n"
                   f"  key_file: {pki.key('server')}\nbasic_auth_users:\n  tuner: '{hashed}'\n")

    def ok(_r: Request) -> Response:
        return Response(200, b"ok\n")

    server = WebServer("127.0.0.1", 0, [Route("/health", ok), Route("/metrics", ok)],
                       WebConfigWatcher(web), open_paths=())
    server.start()
    try:
        host, port = server.address
        base = f"https://{host}:{port}"
        cfg = _tune(tmp_path, {"scheme": "https", "http_config": {
            "tls_config": {"ca_file": str(pki.ca)},
            "basic_auth": {"username": "tuner", "password_file": "pw"}}}).canary
        assert health_probe(cfg.http)(f"{base}/health")
        assert not health_probe()(f"{base}/health")  # no CA, no credentials
        with make_scrape_client(2, cfg.http) as client:
            assert client.get(f"{base}/metrics").status_code == 200

        async def load_get() -> int:
            async with make_load_client(2, 5.0, cfg.http) as client:
                return (await client.get(f"{base}/health")).status_code

        assert asyncio.run(load_get()) == 200
    finally:
        server.stop()

