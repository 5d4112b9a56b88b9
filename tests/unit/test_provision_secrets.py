"""provision with secured clients: http_config carried into prometheus.yml, secret mounts patch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.tls import PKI, make_pki
from tuner.config import parse_config
from tuner.provision import render_all, render_prometheus_config
from tuner.secret_mounts import render_secret_mounts, secret_files

SECRET = "pw-never-rendered-77e2"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _config(tmp_path: Path, pki: PKI, web_tls: bool = True):  # type: ignore[no-untyped-def]
    (tmp_path / "creds").mkdir(parents=True)
    (tmp_path / "creds" / "vllm.pw").write_text(SECRET)
    (tmp_path / "creds" / "am.token").write_text(SECRET)
    (tmp_path / "tls").mkdir()
    shutil.copy(pki.ca, tmp_path / "tls" / "ca.crt")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config: {cert_file: tls.crt, key_file: tls.key}\n" if web_tls
                   else "basic_auth_users: {}\n")
    return parse_config({
        "targets": [
            {"name": "plain", "url": "http://127.0.0.1:8000/metrics"},
            {"name": "secure", "url": "https://10.0.0.7:8443/metrics",
             "tls_config": {"ca_file": "tls/ca.crt", "server_name": "vllm-1.internal"},
             "basic_auth": {"username": "scraper", "password_file": "creds/vllm.pw"},
             "http_headers": {"X-Scope-OrgID": {"values": ["team-a"]}}},
        ],
        "alertmanagers": [{"url": "https://am.example:9093", "tls_config": {"ca_file": "tls/ca.crt"},
                           "authorization": {"credentials_file": "creds/am.token"}}],
        "web_config_file": "web.yml",
        "listen": "0.0.0.0:9464",
    }, str(tmp_path / "tuner.yaml"))


def test_prometheus_config_carries_each_clients_http_config(tmp_path: Path, pki: PKI) -> None:
    cfg = _config(tmp_path, pki)
    doc = render_prometheus_config(cfg, [])
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert "tls_config" not in jobs["vllm"]
    secure = jobs["vllm-2"]
    assert secure["static_configs"][0]["labels"]["job"] == "vllm"
    assert secure["static_configs"][0]["labels"]["__scheme__"] == "https"
    assert secure["tls_config"] == {"ca_file": str(tmp_path / "tls/ca.crt"),
                                    "server_name": "vllm-1.internal"}
    assert secure["basic_auth"] == {"username": "scraper",
                                    "password_file": str(tmp_path / "creds/vllm.pw")}
    assert secure["http_headers"] == {"X-Scope-OrgID": {"values": ["team-a"]}}
    assert jobs["tuner"]["scheme"] == "https"
    [am] = doc["alerting"]["alertmanagers"]
    assert am["scheme"] == "https" and am["authorization"] == {
        "type": "Bearer", "credentials_file": str(tmp_path / "creds/am.token")}
    assert SECRET not in yaml.safe_dump(doc)
    assert "scheme" not in {j["job_name"]: j for j in render_prometheus_config(
        _config(tmp_path / "b", pki, web_tls=False), [])["scrape_configs"]}["tuner"]


def test_secret_mounts_patch_mounts_each_directory_from_the_secret(tmp_path: Path, pki: PKI) -> None:
    cfg = _config(tmp_path, pki)
    assert secret_files(cfg) == (tmp_path / "web.yml", tmp_path / "tls/ca.crt",
                                 tmp_path / "creds/vllm.pw", tmp_path / "creds/am.token")
    result = render_secret_mounts(cfg)
    assert result is not None
    patch, command = result
    spec = patch["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert set(mounts) == {str(tmp_path), str(tmp_path / "tls"), str(tmp_path / "creds")}
    volumes = {v["name"]: v["secret"] for v in spec["volumes"]}
    creds = volumes[mounts[str(tmp_path / "creds")]]
    assert creds["secretName"] == "tuner-secrets"
    assert creds["items"] == [{"key": "vllm.pw", "path": "vllm.pw"},
                              {"key": "am.token", "path": "am.token"}]
    assert all("subPath" not in m for m in spec["containers"][0]["volumeMounts"])
    assert command == ("kubectl create secret generic tuner-secrets "
                       f"--from-file=web.yml={tmp_path}/web.yml "
                       f"--from-file=ca.crt={tmp_path}/tls/ca.crt "
                       f"--from-file=vllm.pw={tmp_path}/creds/vllm.pw "
                       f"--from-file=am.token={tmp_path}/creds/am.token")
    files = render_all(cfg, tmp_path / "out")
    assert "kubernetes/secret-mounts.yaml" in files
    assert SECRET not in "".join(files.values())


def test_no_secret_mounts_without_secret_files(tmp_path: Path) -> None:
    cfg = parse_config({"targets": [{"name": "v", "url": "http://127.0.0.1:8000/metrics"}]},
                       str(tmp_path / "tuner.yaml"))
    assert render_secret_mounts(cfg) is None
    assert "kubernetes/secret-mounts.yaml" not in render_all(cfg, tmp_path / "out")


def test_secured_overlay_config_loads() -> None:
    from tuner.config import load_config

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "deploy/kubernetes/overlays/secured/tuner.yaml")
    assert cfg.web_config_file == Path("/etc/tuner/web/web.yml") and cfg.healthz_open
