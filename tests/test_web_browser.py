"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

Every page loads without console errors, its charts render (drawn SVG, and a screenshot that is not blank),
the segment builder's count equals the store's, and the token is asked for when the app requires one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from churnsync.store.store import AttributeStore
from churnsync.web import create_app
from churnsync.web.server import RunningDashboard
from churnsync.web.server import serve_in_thread as serve_dashboard
from test_web_app import Filled, shared_store

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SECRET_KEY = "braze-secret-key-must-never-show-0123456789"
TOKEN = "dashboard-token-0123456789abcdef"
#: A chart's screenshot with less ink than this (share of pixels not white) counts as blank.
MIN_INK_SHARE = 0.01
#: Where the last run's screenshots go, to look at them.
SHOTS = Path(tempfile.gettempdir()) / "churnsync-dashboard-shots"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            "Chromium is not installed: `apt-get update && apt-get install -y chromium chromium-driver` "
            "(.ci/run does this)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def dashboard(filled: Filled) -> Iterator[RunningDashboard]:
    app = create_app(filled.url, settings=filled.settings, report_dir=filled.report_dir)
    with serve_dashboard(app) as running:
        yield running


def console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


INK_SCRIPT = """
const [png, done] = arguments;
const image = new Image();
image.onload = () => {
  const canvas = document.createElement("canvas");
  canvas.width = image.width; canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, image.width, image.height).data;
  let ink = 0; const colours = new Set();
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i] < 235 || pixels[i + 1] < 235 || pixels[i + 2] < 235) { ink++; }
    colours.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
  }
  done([ink / (pixels.length / 4), colours.size]);
};
image.onerror = () => done([0, 0]);
image.src = "data:image/png;base64," + png;
"""


def ink_of(driver: Any, png_base64: str) -> tuple[float, int]:
    """Share of non-white pixels and number of distinct colours of a screenshot (decoded by the browser)."""
    share, colours = driver.execute_async_script(INK_SCRIPT, png_base64)
    return float(share), int(colours)


def open_page(driver: Any, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    # Charts are drawn after load by app.js: wait until every container holds plotly's SVG.
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('.chart')].every(c => c.querySelector('svg.main-svg'))"
        )
    )


def test_every_page_loads_without_console_errors_and_draws_its_charts(
    browser: Any, dashboard: RunningDashboard, filled: Filled
) -> None:
    from selenium.webdriver.common.by import By

    with AttributeStore(filled.url) as store:
        customer = next(iter(store.current_values()))
    SHOTS.mkdir(exist_ok=True)
    expected_charts = {"/": 1, "/model": 6, "/predictions": 4, f"/customer?id={customer}": 1, "/syncs": 1}
    for path in ["/", "/model", "/predictions", f"/customer?id={customer}", "/syncs", "/segments"]:
        open_page(browser, dashboard.url + path)
        assert console_errors(browser) == [], path
        charts = browser.find_elements(By.CSS_SELECTOR, ".chart")
        assert len(charts) >= expected_charts.get(path, 0), path
        for index, chart in enumerate(charts):
            drawn = browser.execute_script(
                "return arguments[0].querySelectorAll('g.trace, g.barlayer .point, g.scatterlayer .trace').length",
                chart,
            )
            assert drawn > 0, f"{path}: chart {chart.get_attribute('id')} has no trace"
            if index < 2:  # decoding screenshots costs time: the first charts of each page stand for the rest
                ink, colours = ink_of(browser, chart.screenshot_as_base64)
                assert ink > MIN_INK_SHARE and colours > 3, f"{path}: chart {chart.get_attribute('id')} looks blank"
        name = path.strip("/").split("?")[0] or "overview"
        browser.save_screenshot(str(SHOTS / f"{name}.png"))
        if path == "/model":  # the feature importance recorded at training
            importance = browser.find_element(By.ID, "importance")
            assert importance.find_elements(By.CSS_SELECTOR, "g.barlayer .point"), "feature importance has no bar"
            importance.screenshot(str(SHOTS / "model-importance.png"))
        if path == "/syncs":  # the recorded dry runs, with a payload preview
            dry = browser.find_element(By.ID, "dry-runs")
            assert dry.is_displayed() and browser.find_elements(By.CSS_SELECTOR, "details.dry-run[open] pre.payload")
            dry.find_element(By.XPATH, "./..").screenshot(str(SHOTS / "syncs-dry-runs.png"))
        assert SECRET_KEY not in browser.page_source


def test_segment_builder_counts_what_the_store_counts(
    browser: Any, dashboard: RunningDashboard, filled: Filled
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    with AttributeStore(filled.url) as store:
        values = store.current_values().values()
        expected = sum(1 for v in values if v["churn_probability"] >= 0.7 and v["churn_risk"] != "low")
    open_page(browser, dashboard.url + "/segments")
    attributes = browser.find_elements(By.NAME, "a")
    operators = browser.find_elements(By.NAME, "o")
    inputs = browser.find_elements(By.NAME, "v")
    Select(attributes[0]).select_by_value("churn_probability")
    Select(operators[0]).select_by_value(">=")
    inputs[0].send_keys("0.7")
    Select(attributes[1]).select_by_value("churn_risk")
    Select(operators[1]).select_by_value("!=")
    inputs[1].send_keys("low")
    browser.find_element(By.ID, "count-button").click()
    WebDriverWait(browser, 10).until(lambda d: "v=0.7" in d.current_url)
    count = WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "segment-count")).text
    assert int(count) == expected
    assert len(browser.find_elements(By.CSS_SELECTOR, "#preview tbody tr")) == min(expected, 50)
    assert "churn_probability' (number) more than 0.7" in browser.find_element(By.CSS_SELECTOR, "ul.braze").text
    assert console_errors(browser) == []
    browser.save_screenshot(str(SHOTS / "segments.png"))


def test_the_token_is_asked_for_when_required(browser: Any, filled: Filled) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    settings, url = filled.settings, filled.url
    with serve_dashboard(create_app(url, settings=settings, token=TOKEN)) as running:
        browser.get(running.url + "/syncs")
        assert browser.current_url.startswith(running.url + "/login")
        assert "Sign in" in browser.title
        field = browser.find_element(By.NAME, "token")
        field.send_keys("wrong-token-0123456789")
        field.submit()
        # submit() does not wait for the next page: wait for it, or the next lines read the page being left.
        WebDriverWait(browser, 10).until(lambda d: "That token is not right" in d.page_source)
        field = browser.find_element(By.NAME, "token")
        field.send_keys(TOKEN)
        field.submit()
        WebDriverWait(browser, 10).until(lambda d: d.current_url == running.url + "/syncs")
        assert "Refused customers" in browser.page_source and TOKEN not in browser.page_source
        browser.get(running.url + "/logout")
        browser.get(running.url + "/")
        assert browser.current_url.startswith(running.url + "/login")
        assert console_errors(browser) == []
        browser.delete_all_cookies()
