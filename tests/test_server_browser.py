"""The web page in headless Chromium (the Debian packages chromium + chromium-driver, driven by selenium)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs the extra: pip install '.[serve]'")
pytest.importorskip("selenium", reason="the browser test needs selenium: pip install '.[test]'")
from server_helpers import make_project, serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs the system Chromium and its driver: apt-get install -y chromium chromium-driver")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # never downloads a browser
    try:
        yield driver
    finally:
        driver.quit()


def test_picking_a_query_file_shows_the_expected_thumbnail_first(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    project = make_project(tmp_path)
    query = project["images"][6]
    with serve(project["index"]) as base:
        browser.get(base + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: "images indexed" in d.find_element(By.ID, "counts").text)
        browser.find_element(By.ID, "query-file").send_keys(str(query))
        first = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#results li.match")))
        assert first.get_attribute("data-image") == query.name
        assert query.name in first.find_element(By.CLASS_NAME, "name").text
        # The answer in words and a verdict badge; the unverified candidates wait behind the toggle.
        assert browser.find_element(By.ID, "answer").text.startswith(f"Identical to {query.name}")
        assert first.find_element(By.CLASS_NAME, "badge").text == "identical"
        unverified = browser.find_elements(By.CSS_SELECTOR, "#results li.match.unverified")
        assert unverified and not any(item.is_displayed() for item in unverified)
        browser.find_element(By.ID, "show-unverified").click()
        assert all(item.is_displayed() for item in unverified)
        assert unverified[0].find_element(By.CLASS_NAME, "badge").text == "unverified"
        browser.find_element(By.ID, "show-unverified").click()
        # The thumbnail arrived (an object URL of the API's JPEG) and was decoded by the browser.
        wait.until(lambda d: d.execute_script(
            "const i = document.querySelector('#results li.match img'); return i.complete && i.naturalWidth > 0;"))
        first.click()
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('compare-match'); return i.complete && i.naturalWidth === 320;"))
        assert browser.find_element(By.ID, "compare").get_attribute("open") is not None
        screenshot = os.environ.get("VLADSEARCH_SCREENSHOT")
        # A stranger: the page says so plainly.
        import cv2
        import numpy as np

        noise = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 255, (300, 400), dtype=np.uint8), (0, 0), 2)
        cv2.imwrite(str(tmp_path / "stranger.png"), noise)
        browser.find_element(By.ID, "compare-close").click()
        browser.find_element(By.ID, "query-file").send_keys(str(tmp_path / "stranger.png"))
        wait.until(lambda d: d.find_element(By.ID, "answer").text.startswith("Not in the collection"))
        if screenshot:  # for people looking at the page: VLADSEARCH_SCREENSHOT=page.png pytest …
            browser.find_element(By.ID, "query-file").send_keys(str(query))
            wait.until(lambda d: d.find_element(By.ID, "answer").text.startswith("Identical"))
            Path(screenshot).write_bytes(browser.get_screenshot_as_png())
