"""Real Prometheus and Alertmanager behind --web.config.file (TLS + basic auth), and tuner's
listener behind its own web config, talking to each other with credentials read from files.

- Prometheus 2.42 scrapes tuner's secured /metrics (https, CA, basic auth) and serves its
  API behind TLS and basic auth; fleet mode (``PrometheusSource``, ``tuner suggest
  --prometheus --http-config-file``) reads it.
- Alertmanager 0.25 behind TLS and basic auth receives tuner's alerts (``Notifier``).
Certificates come from an openssl test CA (tests/support/tls.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from tests.support.alertmanager import CONFIG as AM_CONFIG
from tests.support.alertmanager import alertmanager_binary
from tests.support.common import free_port, stop_process, tail
from tests.support.prometheus import require_binary
from tests.support.tls import PKI, make_pki
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.errors import SourceError
from tuner.httpconfig import HTTPClientConfig, make_client
from tuner.notify import Notifier
from tuner.source import PrometheusSource

pytestmark = pytest.mark.integration

PROM_PASSWORD = "prom-pw-31c8e5"
AM_PASSWORD = "am-pw-0b77d2"
TUNER_PASSWORD = "tuner-pw-a9f4e1"


def _hash(pw: str) -> str:
    return bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _web_config(path: Path, pki: PKI, user: str, password: str) -> Path:
    path.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(pki.crt("server")),
                              "key_file": str(pki.key("server"))},
        "basic_auth_users": {user: _hash(password)},
    }))
    return path


def _wait_ready(url: str, client: httpx.Client, proc: subprocess.Popen[bytes], log: Path,
                timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited {proc.returncode}\n{tail(log)}")
        try:
            r = client.get(url)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready: {last}\n{tail(log)}")


def _http_config(tmp_path: Path, pki: PKI, user: str, password: str, name: str) -> dict[str, Any]:
    pw = tmp_path / f"{name}.password"
    pw.write_text(password + "\n")
    return {"tls_config": {"ca_file": str(pki.ca)},
            "basic_auth": {"username": user, "password_file": str(pw)}}


def _client_config(tmp_path: Path, raw: dict[str, Any]) -> HTTPClientConfig:
    return parse_config({"prometheus_http_config": raw}, str(tmp_path / "t.yaml")).prometheus_http


@pytest.fixture()
def secured_stack(pki: PKI, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """tuner's daemon behind TLS + basic auth, scraped by a Prometheus behind TLS + basic auth."""
    tuner_web = _web_config(tmp_path / "tuner-web.yml", pki, "prometheus", TUNER_PASSWORD)
    cfg = parse_config({"listen": "127.0.0.1:0", "store": {"path": "t.db"},
                        "web_config_file": str(tuner_web)}, str(tmp_path / "tuner.yaml"))
    daemon = Daemon(cfg)
    daemon.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _host, tport = daemon.address
        (tmp_path / "scrape.pw").write_text(TUNER_PASSWORD + "\n")
        prom_dir = tmp_path / "prom"
        prom_dir.mkdir()
        (prom_dir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{
                "job_name": "tuner", "scheme": "https",
                "static_configs": [{"targets": [f"localhost:{tport}"]}],
                "tls_config": {"ca_file": str(pki.ca)},
                "basic_auth": {"username": "prometheus",
                               "password_file": str(tmp_path / "scrape.pw")},
            }]}))
        prom_web = _web_config(prom_dir / "web.yml", pki, "reader", PROM_PASSWORD)
        port = free_port()
        log = prom_dir / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([
                require_binary("prometheus"), f"--config.file={prom_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={prom_web}",
            ], stdout=out, stderr=subprocess.STDOUT, cwd=prom_dir)
        procs.append(proc)
        url = f"https://localhost:{port}"
        raw = _http_config(tmp_path, pki, "reader", PROM_PASSWORD, "prom")
        with make_client(_client_config(tmp_path, raw)) as c:
            _wait_ready(f"{url}/-/ready", c, proc, log)
        yield {"url": url, "http": raw, "log": log, "daemon": daemon}
    finally:
        for p in procs:
            stop_process(p)
        daemon.stop()


def test_fleet_mode_reads_a_secured_prometheus_that_scrapes_the_secured_sidecar(
        secured_stack: dict[str, Any], tmp_path: Path) -> None:
    url = secured_stack["url"]
    source = PrometheusSource(url, http=_client_config(tmp_path, secured_stack["http"]))
    deadline = time.monotonic() + 60
    up: tuple[Any, ...] = ()
    while time.monotonic() < deadline:
        up = source.instant('up{job="tuner"}', time.time()).vector
        if up and up[0].value == 1.0:
            break
        time.sleep(1)
    assert up and up[0].value == 1.0, tail(secured_stack["log"])
    samples = source.instant('tuner_samples_stored_total{job="tuner"}', time.time()).vector
    assert samples, "Prometheus did not store the sidecar's own metrics"

    wrong = dict(secured_stack["http"])
    (tmp_path / "wrong.pw").write_text("wrong\n")
    wrong["basic_auth"] = {"username": "reader", "password_file": str(tmp_path / "wrong.pw")}
    with pytest.raises(SourceError) as err:
        PrometheusSource(url, http=_client_config(tmp_path, wrong)).instant("up", time.time())
    assert url in str(err.value) and "401" in str(err.value)
    assert PROM_PASSWORD not in str(err.value)


def test_tuner_suggest_passes_the_http_config_file_to_prometheus(
        secured_stack: dict[str, Any], tmp_path: Path) -> None:
    http_file = tmp_path / "http.yml"
    http_file.write_text(yaml.safe_dump(secured_stack["http"]))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    base = [sys.executable, "-m", "tuner", "suggest", "--prometheus", secured_stack["url"],
            "--since", "5m", "--format", "json"]
    without = subprocess.run(base, capture_output=True, text=True, timeout=120, env=env)
    assert without.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in without.stderr or "certificate" in without.stderr
    out = subprocess.run([*base, "--http-config-file", str(http_file)], capture_output=True,
                         text=True, timeout=120, env=env)
    # past TLS and auth, suggest answers about the data (this Prometheus has no vLLM series)
    text = out.stdout + out.stderr
    assert "401" not in text and "certificate" not in text.lower(), text
    assert out.returncode == 1 and "no vLLM metrics" in out.stderr, text
    assert f"prometheus {secured_stack['url']}" in out.stderr
    assert PROM_PASSWORD not in text


@pytest.fixture()
def secured_alertmanager(pki: PKI, tmp_path: Path) -> Iterator[dict[str, Any]]:
    am_dir = tmp_path / "am"
    am_dir.mkdir()
    (am_dir / "alertmanager.yml").write_text(AM_CONFIG)
    web = _web_config(am_dir / "web.yml", pki, "tuner", AM_PASSWORD)
    port = free_port()
    log = am_dir / "alertmanager.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([
            alertmanager_binary(), f"--config.file={am_dir / 'alertmanager.yml'}",
            f"--storage.path={am_dir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=", f"--web.config.file={web}",
        ], stdout=out, stderr=subprocess.STDOUT)
    raw = _http_config(tmp_path, pki, "tuner", AM_PASSWORD, "am")
    try:
        with make_client(_client_config(tmp_path, raw)) as c:
            _wait_ready(f"https://localhost:{port}/-/ready", c, proc, log)
        yield {"url": f"https://localhost:{port}", "http": raw, "log": log}
    finally:
        stop_process(proc)


class _Alert:
    def __init__(self, name: str) -> None:
        self.labels = {"alertname": name, "severity": "page"}
        self.annotations = {"summary": "secured delivery"}
        self.generator_url = "https://tuner.example/alerts"
        self.starts_at = time.time()
        self.ends_at = 0.0


def test_alerts_reach_an_alertmanager_behind_tls_and_basic_auth(
        secured_alertmanager: dict[str, Any], tmp_path: Path) -> None:
    url = secured_alertmanager["url"]
    raw = secured_alertmanager["http"]
    (tmp_path / "bad.pw").write_text("bad\n")
    bad = {**raw, "basic_auth": {"username": "tuner", "password_file": str(tmp_path / "bad.pw")}}
    cfg = parse_config({"alertmanagers": [{"url": url, **raw}, {"url": url, **bad}]},
                       str(tmp_path / "tuner.yaml"))
    notifier = Notifier([am.url for am in cfg.alertmanagers],
                        http=[am.http for am in cfg.alertmanagers], timeout=5)
    with notifier:
        notifier.send([_Alert("TunerSecuredDelivery")])
        notifier.flush(20)
    good, wrong = notifier.stats()
    assert good.sent == 1 and good.queued == 0, good
    assert wrong.sent == 0 and "401" in wrong.last_error and AM_PASSWORD not in wrong.last_error
    with make_client(_client_config(tmp_path, raw)) as c:
        alerts = c.get(f"{url}/api/v2/alerts").json()
    assert [a["labels"]["alertname"] for a in alerts] == ["TunerSecuredDelivery"]
    with make_client(_client_config(tmp_path, bad)) as c:
        assert c.get(f"{url}/api/v2/alerts").status_code == 401


def test_provisioned_prometheus_config_with_secured_clients_passes_promtool(
        pki: PKI, tmp_path: Path) -> None:
    from tuner.provision import provision

    (tmp_path / "pw").write_text(TUNER_PASSWORD)
    cfg = parse_config({
        "targets": [{"name": "v", "url": "https://127.0.0.1:8443/metrics",
                     "tls_config": {"ca_file": str(pki.ca), "cert_file": str(pki.crt("client")),
                                    "key_file": str(pki.key("client"))},
                     "basic_auth": {"username": "u", "password_file": "pw"}}],
        "alertmanagers": [{"url": "https://127.0.0.1:9093", "bearer_token_file": "pw",
                           "tls_config": {"ca_file": str(pki.ca)}}],
    }, str(tmp_path / "tuner.yaml"))
    out = tmp_path / "out"
    provision(cfg, out)
    check = subprocess.run(["promtool", "check", "config", "--syntax-only",
                            str(out / "prometheus/prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    text = (out / "prometheus/prometheus.yml").read_text()
    assert "password_file" in text and TUNER_PASSWORD not in text
    patch = out / "kubernetes/secret-mounts.yaml"
    (tmp_path / "k").mkdir()
    (tmp_path / "k/kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(Path(__file__).resolve().parents[2] / "deploy/kubernetes/base",
                                      tmp_path / "k")],
        "patches": [{"path": "secret-mounts.yaml"}]}))
    (tmp_path / "k/secret-mounts.yaml").write_text(patch.read_text())
    built = subprocess.run(["kubectl", "kustomize", str(tmp_path / "k")], capture_output=True,
                           text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    [dep] = [d for d in yaml.safe_load_all(built.stdout) if d and d["kind"] == "Deployment"]
    [tuner] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "tuner"]
    assert str(pki.dir) in {m["mountPath"] for m in tuner["volumeMounts"]}
