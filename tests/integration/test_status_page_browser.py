"""The status page at ``/`` in a real headless browser (Debian's chromium, via selenium).

A real daemon scrapes real HTTP targets on loopback: a recorded vLLM 0.32 exposition served
by a tiny fixture server (counters advanced at each scrape), the DCGM-exporter stand-in (the one
stand-in the suite allows; there is no GPU here) and a port nobody listens on. Its rules are
a rule file with an absolute runbook link, a ``javascript:`` one, and label values carrying
HTML, and a finished tune report (written by the real report writer) sits in ``tune.out``.
The assertions read the DOM chromium built; screenshots are kept in ``test-results/``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.browser import save_screenshot, start_chromium
from tests.support.common import free_port
from tests.support.dcgm import DcgmExporter
from tests.support.page import RecordedVllmTarget, filled_daemon, page_config
from tests.unit.test_tune import finished_search
from tests.unit.test_tuning_window import TUNE_YAML
from tuner.daemon import Daemon
from tuner.report import write_tune_outputs

pytestmark = pytest.mark.integration

XSS = '<img src=x onerror="window.__xss=1">'
RULES = """
groups:
  - name: page
    rules:
      - alert: TargetDown
        expr: up == 0
        labels: {severity: critical}
        annotations:
          summary: 'Target {{ $labels.instance }} is down.'
          runbook_url: https://runbooks.example.test/target-down
      - alert: GpuHot
        expr: max by (namespace, instance) (DCGM_FI_DEV_GPU_TEMP) > 0
        for: 10m
        labels: {severity: warning}
        annotations:
          summary: 'GPU in {{ $labels.namespace }} is warm.'
          runbook_url: 'javascript:window.__xss=2'
      - alert: QueueNeverEmpty
        expr: sum(vllm:num_requests_running) >= 0
        for: 2h
        labels: {severity: info}
        annotations:
          summary: Requests are running.
"""


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("page")
    (tmp / "rules.yaml").write_text(RULES)
    (tmp / "tune.yaml").write_text(TUNE_YAML)
    run = tmp / "runs" / "20261201T030000Z"
    run.mkdir(parents=True)
    outcome = finished_search(tmp)
    write_tune_outputs(outcome, run)
    vllm = RecordedVllmTarget()
    dcgm = DcgmExporter(gpus=2).start()
    cfg = page_config(tmp, [
        {"name": "vllm-0", "url": vllm.url},
        {"name": "gpu-node", "url": dcgm.url, "kind": "dcgm", "labels": {"namespace": XSS}},
        {"name": "gone", "url": f"http://127.0.0.1:{free_port()}/metrics"},
    ], rule_files=[str(tmp / "rules.yaml")],
        tune={"config": "tune.yaml", "schedule": "0 3 * * *", "trials": 6, "out": "runs"})
    daemon = filled_daemon(cfg)
    daemon.start()
    host, port = daemon.address
    try:
        yield {"daemon": daemon, "url": f"http://{host}:{port}/", "run": run, "tmp": tmp,
               "best": json.loads((run / "best.json").read_text())}
    finally:
        daemon.stop()
        vllm.close()
        dcgm.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    driver, profile = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def by_css(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


def test_page_shows_targets_signals_alerts_and_is_self_contained(
        sidecar: dict[str, Any], browser: Any) -> None:
    daemon: Daemon = sidecar["daemon"]
    browser.get(sidecar["url"])
    assert browser.title == "tuner sidecar status"

    rows = {r.get_attribute("data-target"): r for r in by_css(browser, "tr.target")}
    assert set(rows) == {"vllm-0", "gpu-node", "gone"}
    assert rows["vllm-0"].find_element("css selector", "td.up").text == "up"
    gone = rows["gone"]
    assert gone.find_element("css selector", "td.down").text == "down"
    assert "Connection refused" in gone.find_element("css selector", "td.error").text

    # live signals, each with an inline SVG chart drawn from the last hour of the store
    cards = {c.get_attribute("data-instance"): c for c in by_css(browser, ".card.instance")}
    assert {"vllm-0", "gpu-node"} <= set(cards)
    vllm_signals = {s.get_attribute("data-signal"): s.find_element("css selector", ".value").text
                    for s in cards["vllm-0"].find_elements("css selector", ".sig")}
    assert {"running", "waiting", "kv_cache_usage", "generation_tokens_per_s"} <= set(vllm_signals)
    assert vllm_signals["running"] not in ("-", "n/a")
    assert float(vllm_signals["generation_tokens_per_s"].replace(",", "")) > 0
    lines = cards["vllm-0"].find_elements("css selector", "svg.spark polyline")
    assert lines, "no chart line for vllm-0"
    npoints = len(lines[0].get_attribute("points").split())
    assert npoints >= 50  # an hour at the page's 60 s step, from 120 scrapes 30 s apart
    assert cards["gpu-node"].find_elements("css selector", "svg.spark polyline")

    # alerts, from the daemon's rule engine: firing with a runbook link, pending without one
    alerts = {a.get_attribute("data-alertname"): a for a in by_css(browser, "tr.alert")}
    assert "firing" in alerts["TargetDown"].get_attribute("class")
    link = alerts["TargetDown"].find_element("css selector", "a.runbook")
    assert link.get_attribute("href") == "https://runbooks.example.test/target-down"
    hot = alerts["GpuHot"]
    assert "firing" in hot.get_attribute("class")  # for: 10m, over an hour of history
    assert not hot.find_elements("css selector", "a")  # javascript: runbook is not a link
    assert "javascript:window.__xss=2" in hot.text
    assert "pending" in alerts["QueueNeverEmpty"].get_attribute("class")  # for: 2h
    engine_names = {a.alertname for a in daemon.alerting.current_alerts()}
    assert set(alerts) == engine_names

    # label values with HTML are shown as text and never run
    assert XSS in hot.find_element("css selector", ".summary").text
    assert browser.execute_script("return window.__xss === undefined")
    assert not by_css(browser, "img[src='x']")

    # links to the API, and nothing fetched from anywhere but the sidecar
    api = [a.get_attribute("href") for a in by_css(browser, "#api-links a")]
    assert any("/api/v1/query" in h for h in api) and any("/api/v1/alerts" in h for h in api)
    origin = sidecar["url"].rstrip("/")
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith(origin) for r in resources), resources
    assert browser.find_element("css selector", "meta[http-equiv='refresh']").get_attribute(
        "content") == "30"
    save_screenshot(browser, "status-page-desktop")


def test_page_shows_the_last_tune_report_with_its_plots(
        sidecar: dict[str, Any], browser: Any) -> None:
    browser.get(sidecar["url"])
    assert "20261201T030000Z" in by_css(browser, "#tune-report")[0].text
    assert sidecar["best"]["vllm_serve"] == by_css(browser, "#serve-line")[0].text
    progress = by_css(browser, "#tuning-progress")[0].text
    assert "0 3 * * *" in progress and "of 6 finished" in progress
    imgs = by_css(browser, "#tuning img.plot")
    assert len(imgs) == 3
    browser.execute_script("document.querySelectorAll('img.plot').forEach(i => i.loading='eager')")
    for img in imgs:
        browser.execute_script("arguments[0].scrollIntoView()", img)
    deadline = time.time() + 20
    while time.time() < deadline and not all(
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                   i) for i in imgs):
        time.sleep(0.2)
    for img in imgs:
        assert browser.execute_script("return arguments[0].naturalWidth", img) > 300
    # the plot route serves only known names of a run under tune.out
    base = sidecar["url"] + "ui/tune/"
    ok = httpx.get(base + "20261201T030000Z/convergence.png", trust_env=False)
    assert ok.status_code == 200 and ok.content[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in ("..%2F..%2Ftuner.db/convergence.png", "20261201T030000Z/best.json",
                "../tuner.yaml", "20261201T030000Z/../../tuner.db"):
        assert httpx.get(base + bad, trust_env=False).status_code == 404, bad


def test_page_is_readable_on_a_phone(sidecar: dict[str, Any]) -> None:
    driver, profile = start_chromium(390, 844)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        driver.get(sidecar["url"])
        width = driver.execute_script("return window.innerWidth")
        scroll = driver.execute_script("return document.documentElement.scrollWidth")
        assert width == 390 and scroll <= width, (width, scroll)
        # every element fits the viewport (tables scroll inside their own wrapper)
        wide = driver.execute_script("""
            return [...document.querySelectorAll('body *')]
              .filter(e => !e.closest('.wrap') && e.getBoundingClientRect().right > innerWidth + 1)
              .map(e => e.tagName + '.' + e.className).slice(0, 5)""")
        assert wide == []
        assert driver.find_elements("css selector", ".card.instance")
        save_screenshot(driver, "status-page-phone")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_shows_a_suggest_report_computed_in_the_background(
        sidecar: dict[str, Any], browser: Any) -> None:
    """No suggest.schedule: the page runs suggest over the store itself, off the request path."""
    deadline = time.time() + 90
    while True:
        browser.get(sidecar["url"])
        if by_css(browser, "#recommendations"):
            break
        assert time.time() < deadline, by_css(browser, "#suggest")[0].text
        time.sleep(2)
    section = by_css(browser, "#suggest")[0].text
    assert "computed by this page over the last hour" in section
    rows = by_css(browser, "#recommendations tr.recommendation, #recommendations td.mut")
    assert rows
