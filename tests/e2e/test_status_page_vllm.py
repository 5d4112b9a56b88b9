"""The status page over a real vLLM CPU server, in Debian's headless chromium.

Shares the session's default vLLM server (tests/support/vllm.py). The daemon scrapes it every
second while a short load runs; the page then shows the target up and its live signals with
charts, read by chromium from the DOM. The recorded-exposition tests of the same page are in
tests/integration/test_status_page_browser.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.support.browser import save_screenshot, start_chromium
from tests.support.vllm import VllmServer
from tuner.config import parse_config
from tuner.daemon import Daemon
from tuner.load import LengthDist, LoadSpec, run_load_sync, summarize

pytestmark = pytest.mark.e2e


def test_status_page_shows_a_real_vllm_server(tmp_path: Path, vllm_server: VllmServer) -> None:
    server = vllm_server
    cfg = parse_config(server.sidecar_settings(tmp_path / "tuner.db", target="vllm-real"),
                       str(tmp_path / "tuner.yaml"))
    daemon = Daemon(cfg)
    daemon.start()
    driver, profile = start_chromium()
    try:
        time.sleep(2)
        spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=32),
                        output_tokens=LengthDist("fixed", mean=32), concurrency=4,
                        duration=30.0, max_requests=16, seed=5)
        summary = summarize(run_load_sync(server.url, server.model, spec))
        assert summary.requests == 16 and summary.errors == 0, summary
        time.sleep(3)  # the final counters scraped
        host, port = daemon.address
        driver.get(f"http://{host}:{port}/")
        row = driver.find_element("css selector", 'tr.target[data-target="vllm-real"]')
        assert row.find_element("css selector", "td.up").text == "up"
        card = driver.find_element("css selector", '.card.instance[data-instance="vllm-real"]')
        values = {s.get_attribute("data-signal"): s.find_element("css selector", ".value").text
                  for s in card.find_elements("css selector", ".sig")}
        assert float(values["generation_tokens_per_s"].replace(",", "")) > 0, values
        assert values["ttft_p99_5m"].endswith(("ms", " s")), values
        assert card.find_elements("css selector", "svg.spark")
        save_screenshot(driver, "status-page-real-vllm")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        daemon.stop()
