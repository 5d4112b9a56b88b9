"""Debian's chromium, headless, driven by selenium through Debian's chromedriver.

``start_chromium`` starts a browser with a fresh profile directory and the flags
that keep it off the network (no background networking, component updates, sync or QUIC), so
a page that tried to fetch anything from outside would show it as a failed request, never a
silent success. Screenshots go to ``test-results/`` at the repository root (gitignored);
``save_screenshot`` prints the path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "test-results"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def start_chromium(width: int = 1280, height: int = 900) -> tuple[Any, Path]:
    """A selenium Chrome driver on Debian's chromium; returns (driver, its profile dir).

    A missing chromium or chromedriver fails (deploy/local/install.sh installs them).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            pytest.fail(f"{binary} is missing: run deploy/local/install.sh "
                        "(apt packages chromium and chromium-driver)")
    profile = Path(tempfile.mkdtemp(prefix="tuner-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    return driver, profile


def save_screenshot(driver: Any, name: str) -> Path:
    """Save a full-page PNG under test-results/ and print where it went."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.png"
    width = driver.execute_script("return document.documentElement.scrollWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(max(width, 320), min(max(height, 400), 8000))
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path

