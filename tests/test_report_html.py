"""report.html in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium): one
self-contained file whose every image decodes, with no console error, that fits a phone's width.

The report folder is the one tests/test_report_folder.py writes for real (two tiny trainings, no sweep).
Without the browser the test skips, saying what to install; with FER_REQUIRE_BROWSER=1 (CI) it fails.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest

from sweeps.report.html import write_html
from sweeps.report.markdown import started_from, write_markdown

from .browser import chromium
from .test_report_folder import SETTINGS, TRIALS, report  # noqa: F401  (the fixture: a report folder written for real)

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def _images(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.src.slice(0, 22), alt: i.alt, "
        "complete: i.complete, width: i.naturalWidth}))"
    )


def test_report_html_is_self_contained_and_says_what_report_md_says(report):  # noqa: F811
    page = (report.out / "report.html").read_text()
    md = (report.out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"saliency_by_class.png", "confusions.png", "training_curves.png"} <= set(linked)
    assert page.count("<img") == len(linked) and page.count('src="data:image/png;base64,') == len(linked)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "<table>" in page and "## " not in page  # markdown converted, tables included
    assert "What the model looks at" in page and "7 trials: 3 completed" in page


def test_every_image_decodes_without_console_errors_on_a_desktop_and_a_phone(report, browser):  # noqa: F811
    browser.set_window_size(1280, 900)
    browser.get((report.out / "report.html").as_uri())
    browser.execute_script("return document.readyState")
    images = _images(browser)
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (report.out / "report.md").read_text())
    assert len(images) == len(linked)
    assert all(i["complete"] and i["width"] > 0 and i["src"].startswith("data:image/png") for i in images), [
        i for i in images if not i["width"]
    ]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        browser.refresh()
        widths = browser.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth, document.body.scrollWidth]"
        )
        assert widths[0] == PHONE["width"] and max(widths[1:]) <= widths[0], widths
        assert all(i["width"] > 0 for i in _images(browser))
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_checks_see_a_broken_image(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png" alt="x"></body></html>')
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.as_uri())
    assert [i["width"] for i in _images(browser)] == [0]
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


# What a user controls, each trying to run script in the page: the name, the data folder (a backtick ends a code
# span), a failed trial's error, a parameter's value, the name of a weights file.
HOSTILE = {
    "name": "x<img src=x onerror=window.pwned=1>",
    "data": "/data/a`<img src=y onerror=window.pwned=2>`b",
    "error": "RuntimeError: <script>window.pwned=3</script> *not bold*",
    "param": "[c](javascript:window.pwned=4)",
    "weights": "w`<img src=z onerror=window.pwned=5>.pt",
}


def test_nothing_the_user_controls_runs_in_the_page_and_all_of_it_is_shown(report, browser, tmp_path):  # noqa: F811
    folder = tmp_path / "report"
    shutil.copytree(report.out, folder)
    m = json.loads((folder / "metrics.json").read_text())
    m |= {"data": HOSTILE["data"], "started_from": started_from({"weights": HOSTILE["weights"]})}
    trials = TRIALS.assign(error=TRIALS["error"].where(TRIALS["status"] != "failed", HOSTILE["error"]))
    trials["params"] = [{**p, "lr": HOSTILE["param"]} for p in trials["params"]]
    settings = dataclasses.replace(SETTINGS, name=HOSTILE["name"])
    write_markdown(settings, trials, m, folder / "report.md")
    browser.get(write_html(folder / "report.md").as_uri())
    assert browser.execute_script("return window.pwned") is None
    assert (
        browser.execute_script(
            "return document.querySelectorAll('script, [onerror], [href^=javascript]').length"
        )
        == 0
    )
    shown = browser.find_element("tag name", "body").text
    assert browser.title == f"Sweep report: {HOSTILE['name']}"
    for value in (HOSTILE["name"], HOSTILE["data"], HOSTILE["error"], HOSTILE["param"], HOSTILE["weights"]):
        assert value in shown, value
