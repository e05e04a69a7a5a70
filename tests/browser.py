"""Headless Chromium for the browser tests: Debian's chromium and chromium-driver, driven by Selenium.

Without them a test skips, saying what to install; with FER_REQUIRE_BROWSER=1 (CI) it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Headless, and nothing that reaches the network or a profile outside the test's own folder.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(profile: Path, *flags: str) -> webdriver.Chrome:
    """A headless Chromium with its profile in ``profile`` and ``flags`` added to ``FLAGS``; skips (or, with
    FER_REQUIRE_BROWSER=1, fails) the test when the browser is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        why = f"{' and '.join(missing)} missing: install Debian's chromium and chromium-driver to run it"
        if os.environ.get("FER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FER_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(f"browser test: {why}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, *flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
