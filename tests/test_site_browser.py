"""End-to-end check of the static site in headless Chromium (selenium + chromedriver).

Builds a site from synthetic records (one with a malicious generator name) with sample shards and
a tiny cohort, opens ``index.html`` from ``file://`` and checks: no SEVERE console messages, a row
per run, sorting by clicking a header, plotly charts drawn, the malicious name shown as text and
never executed; then a run page renders its montages and plotly figures.

Needs ``chromium`` and ``chromium-driver`` (Debian; ``make browser`` installs them) and the
``selenium`` test extra; skipped with the reason otherwise.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from leaderboards import build_site
from test_leaderboards import EVIL, _quick_metrics, _record, make_cohort, make_run_folder, rich_metrics

CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                                else None)
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                 if p and Path(p).exists()), None)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
if CHROMEDRIVER is None or CHROMIUM is None:
    pytest.skip("chromium / chromedriver not found; install them with `make browser` "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("browser")
    runs = tmp / "runs"
    cohort = make_cohort(tmp / "cohort")
    make_run_folder(runs, _record("quick-a", "retrieval", {"k": 1}, rich_metrics(0.012, 0.71)), cohort)
    make_run_folder(runs, _record("quick-b", "template", {}, _quick_metrics(0.300, 0.20, 0.02)), cohort, seed=2)
    make_run_folder(runs, _record("quick-c", EVIL, {"note": "<img src=x onerror=alert(2)>"},
                                  _quick_metrics(0.050, 0.75, 0.010)), cohort, seed=3)
    return build_site(runs, tmp / "site")


@pytest.fixture(scope="module")
def driver():
    profile = tempfile.mkdtemp(prefix="bgb-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _severe(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def _no_alert(drv) -> None:
    try:
        text = drv.switch_to.alert.text
    except NoAlertPresentException:
        return
    pytest.fail(f"a script from a record was executed: alert({text!r})")


def _plots_drawn(drv, n: int) -> None:
    WebDriverWait(drv, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".plotly svg.main-svg")) >= n)


def _labels(drv) -> list[str]:
    return [r.find_element(By.CSS_SELECTOR, "td").text for r in
            drv.find_elements(By.CSS_SELECTOR, "table.lb tbody tr.run")]


def test_index_in_browser(site, driver):
    driver.get(site["index"].resolve().as_uri())
    _plots_drawn(driver, 3)
    _no_alert(driver)
    assert _severe(driver) == []
    assert driver.execute_script("return typeof Plotly") == "object"
    # a row per run, best first on fid (retrieval 0.012, evil 0.05, template 0.3)
    labels = _labels(driver)
    assert len(labels) == 3
    assert labels[0].startswith("retrieval") and labels[2].startswith("template")
    # the malicious generator name is shown as text, not markup
    assert any(label.startswith(EVIL) for label in labels)
    assert driver.find_elements(By.CSS_SELECTOR, "table.lb img") == []
    # sorting: ssim ascending puts template (0.20) first, descending puts evil (0.75) first
    ssim = next(th for th in driver.find_elements(By.CSS_SELECTOR, "table.lb thead th")
                if th.text.startswith("ssim"))
    ssim.click()
    assert ssim.get_attribute("aria-sort") == "ascending"
    assert _labels(driver)[0].startswith("template")
    ssim.click()
    assert _labels(driver)[0].startswith(EVIL)
    # the plotly bar labels show the name literally too
    ticks = " ".join(t.text for t in driver.find_elements(By.CSS_SELECTOR, ".plotly .ytick text"))
    assert "<script>" in ticks
    _no_alert(driver)
    assert _severe(driver) == []


def test_run_page_in_browser(site, driver):
    driver.get((site["runs"] / "quick-a.html").resolve().as_uri())
    _plots_drawn(driver, 4)  # histogram, radiomics effects, latent scatter, conformance
    imgs = driver.find_elements(By.CSS_SELECTOR, ".montages img")
    assert len(imgs) == 4
    deadline = time.time() + 10
    while time.time() < deadline and not all(driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs):
        time.sleep(0.1)
    assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)
    assert _severe(driver) == []
    driver.get((site["runs"] / "quick-c.html").resolve().as_uri())
    _no_alert(driver)
    assert EVIL in driver.find_element(By.TAG_NAME, "body").text
    assert _severe(driver) == []
