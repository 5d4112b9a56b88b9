"""Provisioned and deploy files checked by the real tools.

- ``kubectl kustomize`` (kustomize v5 built into kubectl) builds the base and every overlay;
  every resource of the output, and every manifest file, validates offline against the
  Kubernetes 1.37 schemas with ``kubernetes-validate`` in strict mode (unknown fields fail);
- ServiceMonitor and PrometheusRule (CRDs) are validated against the prometheus-operator
  v0.80.1 CRD models (``cloudcoil-models-prometheus-operator``, generated from the CRDs'
  OpenAPI schemas); strictness comes from a round trip: a field the schema does not know is
  dropped by the model, so the dumped document differs from the input;
- ``promtool check config`` on the rendered Prometheus config (and its rule files);
- ``amtool check-config`` on the Alertmanager config, and a real Alertmanager running it: the
  shipped VllmTtftSloBurnRateCritical, evaluated by the sidecar's rule engine and delivered
  by its notifier, inhibits VllmTtftSloBurnRateWarning (same ``family``) on the same
  instance only; alerts without a family inhibit nothing;
- ``systemd-analyze verify`` on the systemd unit.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as promop

from tests.support.common import free_port, stop_process, wait_http
from tuner.config import load_config
from tuner.notify import Notifier
from tuner.promql import Engine
from tuner.provision import provision, rule_files
from tuner.rules import RuleEngine, load_rule_files
from tuner.store import Store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.37.0"
BUILDS = ["base", "overlays/h100", "overlays/l4", "overlays/pvc", "overlays/secured"]
CRD_MODELS: dict[str, Any] = {"ServiceMonitor": promop.ServiceMonitor,
                              "PrometheusRule": promop.PrometheusRule}
CONFIG = """
targets:
  - {name: vllm-0, url: "http://127.0.0.1:8000/metrics", kind: vllm}
  - {name: gpu-0, url: "http://127.0.0.1:9400/metrics", kind: dcgm}
  - {name: extra, url: "https://10.1.2.3:8443/stats/metrics", kind: other}
listen: 0.0.0.0:9464
alertmanagers: ["http://127.0.0.1:9093", {url: "https://am.example:9443/prefix"}]
slo: {ttft_p99_seconds: 0.5, itl_p99_seconds: 0.05}
cost: {dollars_per_hour: 2}
"""


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed", pytrace=False)
    return path


def kustomize(build: str) -> list[dict[str, Any]]:
    proc = subprocess.run([tool("kubectl"), "kustomize", str(K8S / build)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def validate(doc: dict[str, Any]) -> None:
    """Kubernetes schema (strict) for core kinds, the CRD models for prometheus-operator kinds."""
    model = CRD_MODELS.get(doc["kind"])
    if model is None:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    parsed = model.model_validate(doc)
    dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert dumped == doc, f"{doc['kind']} {doc['metadata']['name']}: fields unknown to the CRD"


@pytest.fixture(scope="module")
def builds() -> dict[str, list[dict[str, Any]]]:
    return {b: kustomize(b) for b in BUILDS}


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# -- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_kustomize_output_validates_strictly(builds: dict[str, list[dict[str, Any]]],
                                             build: str) -> None:
    docs = builds[build]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap",
            "ServiceAccount", "Role", "RoleBinding"} <= kinds
    for doc in docs:
        validate(doc)


def test_every_manifest_file_validates_on_its_own() -> None:
    files = [p for p in K8S.rglob("*.yaml") if p.name not in ("kustomization.yaml", "tuner.yaml")]
    # partial objects by design (strategic merge, JSON 6902)
    patches = {"gpu.yaml", "store-on-pvc.yaml", "secured-deployment.yaml",
               "secured-servicemonitor.yaml"}
    checked = 0
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or path.name in patches:
                continue
            validate(doc)
            checked += 1
    assert checked >= 14


def test_validators_reject_unknown_fields() -> None:
    """The checks above can fail: a misspelt field is refused by both validators."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"selector": {"a": "b"}, "ports": [{"port": 80, "targetPortt": 80}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(svc, K8S_VERSION, strict=True)
    sm = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
          "metadata": {"name": "x"},
          "spec": {"selector": {}, "endpoints": [{"port": "http", "intervall": "15s"}]}}
    with pytest.raises(AssertionError, match="fields unknown to the CRD"):
        validate(sm)


def test_sidecar_security_probes_and_store(builds: dict[str, list[dict[str, Any]]]) -> None:
    [dep] = _by_kind(builds["base"], "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["selector"]["matchLabels"]["tuner.vllm/role"] == "serving"
    assert dep["spec"]["template"]["metadata"]["labels"]["tuner.vllm/role"] == "serving"
    assert spec["serviceAccountName"] == "tuner"
    tuner = next(c for c in spec["containers"] if c["name"] == "tuner")
    sc = tuner["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert tuner["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert tuner["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert tuner["resources"]["requests"] and tuner["resources"]["limits"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["tuner-store"]
    config_map = volumes["tuner-config"]["configMap"]["name"]
    [cm] = [c for c in _by_kind(builds["base"], "ConfigMap") if c["metadata"]["name"] == config_map]
    sidecar_config = yaml.safe_load(cm["data"]["tuner.yaml"])
    mounts = {m["name"]: m["mountPath"] for m in tuner["volumeMounts"]}
    assert Path(sidecar_config["store"]["path"]).parent == Path(mounts["tuner-store"])
    assert sidecar_config["rule_files"] == [mounts["tuner-rules"] + "/*.yaml"]
    assert tuner["args"][-1] == mounts["tuner-config"] + "/tuner.yaml"

    [pvc_dep] = _by_kind(builds["overlays/pvc"], "Deployment")
    pvc_vols = {v["name"]: v for v in pvc_dep["spec"]["template"]["spec"]["volumes"]}
    assert pvc_vols["tuner-store"] == {"name": "tuner-store",
                                       "persistentVolumeClaim": {"claimName": "tuner-store"}}
    assert _by_kind(builds["overlays/pvc"], "PersistentVolumeClaim")


def test_service_rbac_and_dashboards(builds: dict[str, list[dict[str, Any]]]) -> None:
    docs = builds["base"]
    [svc] = _by_kind(docs, "Service")
    assert svc["spec"]["selector"]["tuner.vllm/role"] == "serving"
    [role] = _by_kind(docs, "Role")
    rules = {tuple(r["resources"]): sorted(r["verbs"]) for r in role["rules"]}
    assert rules == {("pods",): ["create", "delete", "get", "list", "watch"],
                     ("pods/log",): ["get"]}
    assert all(r["apiGroups"] == [""] for r in role["rules"])
    [binding] = _by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["kind"] == "Role" and binding["subjects"][0]["name"] == "tuner"
    dashboards = [c for c in _by_kind(docs, "ConfigMap")
                  if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert {k for c in dashboards for k in c["data"]} == {
        p.name for p in (REPO / "dashboards").glob("*.json")}
    [sm] = _by_kind(docs, "ServiceMonitor")
    jobs = {e["port"]: e["relabelings"][0]["replacement"] for e in sm["spec"]["endpoints"]}
    assert jobs == {"http": "vllm", "tuner-metrics": "tuner"}


def test_prometheusrule_holds_every_rule_group() -> None:
    [rule] = [d for d in yaml.safe_load_all((K8S / "base/prometheusrule.yaml").read_text())]
    groups = [g["name"] for g in rule["spec"]["groups"]]
    expected = [g["name"] for _, text in sorted(rule_files(load_config(
        K8S / "base/tuner.yaml").slo).items()) for g in yaml.safe_load(text)["groups"]]
    assert groups == expected and groups


@pytest.mark.parametrize("overlay,product", [("h100", "NVIDIA-H100-80GB-HBM3"),
                                             ("l4", "NVIDIA-L4")])
def test_gpu_overlays(builds: dict[str, list[dict[str, Any]]], overlay: str, product: str) -> None:
    [dep] = _by_kind(builds[f"overlays/{overlay}"], "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": product}
    vllm = next(c for c in spec["containers"] if c["name"] == "vllm")
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    tuner = next(c for c in spec["containers"] if c["name"] == "tuner")
    assert tuner["securityContext"]["readOnlyRootFilesystem"] is True  # patch kept the sidecar


# -- promtool / amtool / Alertmanager / systemd ---------------------------------------------


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("provision")
    (tmp / "tuner.yaml").write_text(CONFIG)
    out = tmp / "out"
    provision(load_config(tmp / "tuner.yaml"), out)
    return out


def test_promtool_check_config(provisioned: Path) -> None:
    proc = subprocess.run([tool("promtool"), "check", "config",
                           str(provisioned / "prometheus/prometheus.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "rule files found" in proc.stdout


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "prometheus.yml"
    bad.write_text("scrape_configs:\n  - job_name: vllm\n    scrape_interval: often\n")
    proc = subprocess.run([tool("promtool"), "check", "config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


def test_amtool_check_config(provisioned: Path) -> None:
    proc = subprocess.run([tool("amtool"), "check-config",
                           str(provisioned / "alertmanager/alertmanager.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "2 inhibit rules" in proc.stdout


@pytest.fixture
def alertmanager(provisioned: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [tool("prometheus-alertmanager"),
             f"--config.file={provisioned / 'alertmanager/alertmanager.yml'}",
             f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", 60, proc, log)
        yield url
    finally:
        stop_process(proc)


def _ttft_and_itl_points(t0_ms: int, minutes: int) -> list[
        tuple[str, tuple[tuple[str, str], ...], int, float]]:
    """``minutes`` at 1m of three V1 servers, against the provisioned SLO (TTFT 0.5s, ITL 0.05s):
    a: 30% of first tokens late (fast burn: page and ticket) and a slow ITL p99;
    b: 5% late (slow burn: ticket only) and no ITL series. a's ITL p99 is 0.095s."""
    pts = []

    def lb(inst: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((("engine", "0"), ("instance", inst), ("job", "vllm"),
                             ("model_name", "m"), *extra)))

    for i in range(minutes + 1):
        t = t0_ms + i * 60_000
        for inst, good in (("a", 70.0), ("b", 95.0)):
            pts += [
                ("vllm:time_to_first_token_seconds_bucket", lb(inst, ("le", "0.5")), t, good * i),
                ("vllm:time_to_first_token_seconds_bucket", lb(inst, ("le", "+Inf")), t, 100.0 * i),
                ("vllm:time_to_first_token_seconds_count", lb(inst), t, 100.0 * i),
            ]
        pts += [
            ("vllm:inter_token_latency_seconds_bucket", lb("a", ("le", "0.05")), t, 900.0 * i),
            ("vllm:inter_token_latency_seconds_bucket", lb("a", ("le", "0.1")), t, 1000.0 * i),
            ("vllm:inter_token_latency_seconds_bucket", lb("a", ("le", "+Inf")), t, 1000.0 * i),
        ]
    return pts


def test_shipped_critical_alert_inhibits_its_warning_on_the_same_instance(
    provisioned: Path, alertmanager: str, tmp_path: Path
) -> None:
    """The provisioned rules, evaluated by the sidecar's engine, deliver real alerts (with
    their real ``family`` labels) to a real Alertmanager running the provisioned config:
    VllmTtftSloBurnRateCritical mutes VllmTtftSloBurnRateWarning on its instance only, and
    a warning of another family (VllmItlP99High, ``latency``) on that instance stays."""
    rules = load_rule_files([provisioned / "prometheus/rules/*.yaml"])
    families = {r.name: r.labels.get("family") for r in rules.rules if r.kind == "alert"}
    assert families["VllmTtftSloBurnRateCritical"] == "ttft_slo"
    assert families["VllmTtftSloBurnRateWarning"] == "ttft_slo"
    assert families["VllmItlP99High"] == "latency"

    minutes = 30
    now = time.time()
    t0 = now - minutes * 60
    store = Store(tmp_path / "s.db", retention=86400.0)
    store.append_points(_ttft_and_itl_points(int(t0 * 1000), minutes))
    engine = RuleEngine(rules, Engine(store), writer=store, default_interval=60)
    for step in range(minutes + 1):
        report = engine.evaluate(t0 + step * 60)
        assert report.errors == ()
    firing = {(a.alertname, a.labels.get("instance")): a for a in engine.alerts()
              if a.state == "firing"}
    assert set(firing) == {("VllmTtftSloBurnRateCritical", "a"),
                           ("VllmTtftSloBurnRateWarning", "a"),
                           ("VllmTtftSloBurnRateWarning", "b"),
                           ("VllmItlP99High", "a")}, set(firing)
    with Notifier([alertmanager]) as notifier:
        notifier.send(firing.values())
        assert notifier.flush(15)
    store.close()

    with httpx.Client(base_url=alertmanager, timeout=10, trust_env=False) as client:
        deadline = time.monotonic() + 30
        state: dict[tuple[str, str], tuple[str, list[str]]] = {}
        while time.monotonic() < deadline:
            got = client.get("/api/v2/alerts").json()
            state = {(a["labels"]["alertname"], a["labels"]["instance"]):
                     (a["labels"]["family"], a["status"]["inhibitedBy"]) for a in got}
            if len(state) == 4 and state.get(("VllmTtftSloBurnRateWarning", "a"), ("", []))[1]:
                break
            time.sleep(0.5)
    assert len(state) == 4, state
    fam, inhibited_by = state[("VllmTtftSloBurnRateWarning", "a")]
    assert fam == "ttft_slo" and len(inhibited_by) == 1, state  # the page mutes the ticket
    assert state[("VllmTtftSloBurnRateWarning", "b")] == ("ttft_slo", []), state  # other instance
    assert state[("VllmItlP99High", "a")] == ("latency", []), state  # other family
    assert state[("VllmTtftSloBurnRateCritical", "a")] == ("ttft_slo", []), state


def test_alerts_without_a_family_inhibit_nothing(alertmanager: str) -> None:
    """The provisioned inhibit rule requires a family on the source: two alerts that both
    lack the label (e.g. from a user's own rules) are not "the same family"."""
    def alert(name: str, severity: str, family: str, instance: str) -> dict[str, Any]:
        labels = {"alertname": name, "severity": severity, "instance": instance}
        if family:
            labels["family"] = family
        return {"labels": labels, "annotations": {"summary": name}}

    sent = [
        alert("MyPage", "critical", "", "c"),            # no family:
        alert("MyTicket", "warning", "", "c"),           # inhibits nothing
        alert("MyOtherPage", "critical", "custom", "d"),
        alert("MyOtherTicket", "warning", "custom", "d"),  # inhibited (control)
    ]
    with httpx.Client(base_url=alertmanager, timeout=10, trust_env=False) as client:
        client.post("/api/v2/alerts", json=sent).raise_for_status()
        deadline = time.monotonic() + 30
        state: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            got = client.get("/api/v2/alerts").json()
            state = {a["labels"]["alertname"]: a["status"]["inhibitedBy"] for a in got}
            if len(state) == 4 and state["MyOtherTicket"]:
                break
            time.sleep(0.5)
    assert state["MyOtherTicket"], state
    assert state["MyTicket"] == [], state
    assert state["MyPage"] == [] and state["MyOtherPage"] == [], state


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO / "deploy/systemd/tuner.service").read_text()
    assert "ExecStart=/opt/tuner/venv/bin/tuner run --config /etc/tuner/tuner.yaml" in unit
    local = tmp_path / "tuner.service"
    local.write_text(unit.replace("/opt/tuner/venv/bin/tuner", tool("tuner")))
    proc = subprocess.run([tool("systemd-analyze"), "verify", str(local)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(local.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    proc = subprocess.run([tool("systemd-analyze"), "verify", str(broken)],
                          capture_output=True, text=True, timeout=60)
    assert "restart specifier" in proc.stderr  # the check above can fail
