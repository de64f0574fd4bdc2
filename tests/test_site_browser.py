"""End-to-end check of the static site in headless Chromium (selenium + chromedriver).

Builds a site from synthetic records (one with a malicious generator name) with sample shards and
a tiny cohort, opens ``index.html`` from ``file://`` and checks: no SEVERE console messages, a row
per run, sorting by clicking a header, plotly charts drawn, the malicious name shown as text and
never executed; then a run page renders its montages and plotly figures. A second site, from runs
of N=8 and N=16 with a memorising baseline and a copying folder run, checks the honest ranking as
drawn: one leaderboard per N, an N column, no star for the copying runs, no bounded metric's bar
beyond its bound, and the metric report-card page; it leaves a screenshot of the index.

Needs ``chromium`` and ``chromium-driver`` (Debian; ``make browser`` installs them) and the
``selenium`` test extra; skipped with the reason otherwise.
"""

from __future__ import annotations

import time

import pytest

from leaderboards import build_site
from tests._helpers import BROWSER_MISSING, CHROMEDRIVER, CHROMIUM, chromium_driver, severe_browser_logs
from test_leaderboards import (
    EVIL,
    VALIDATION,
    _quick_metrics,
    _record,
    honest_runs,
    make_cohort,
    make_run_folder,
    rich_metrics,
    write_runs,
)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
if CHROMEDRIVER is None or CHROMIUM is None:
    pytest.skip(BROWSER_MISSING, allow_module_level=True)

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


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
    yield from chromium_driver("1280,1600")


_severe = severe_browser_logs


def _no_alert(drv) -> None:
    try:
        text = drv.switch_to.alert.text
    except NoAlertPresentException:
        return
    pytest.fail(f"a script from a record was executed: alert({text!r})")


def _plots_drawn(drv, n: int) -> None:
    WebDriverWait(drv, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".plotly svg.main-svg")) >= n)


def _labels(drv, which: str = "headline") -> list[str]:
    return [r.find_element(By.CSS_SELECTOR, "td a").get_attribute("textContent") for r in
            drv.find_elements(By.CSS_SELECTOR, f"table.lb.{which} tbody tr.run")]


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
    assert _labels(driver, "full") == labels
    # the full table is one click away; sorting there: ssim ascending puts template (0.20) first,
    # descending puts evil (0.75) first
    driver.find_element(By.CSS_SELECTOR, "details.full summary").click()
    ssim = next(th for th in driver.find_elements(By.CSS_SELECTOR, "table.lb.full thead th")
                if th.text.startswith("ssim"))
    ssim.click()
    assert ssim.get_attribute("aria-sort") == "ascending"
    assert _labels(driver, "full")[0].startswith("template")
    ssim.click()
    assert _labels(driver, "full")[0].startswith(EVIL)
    # the plotly bar labels show the name literally too
    ticks = " ".join(t.get_attribute("textContent")
                     for t in driver.find_elements(By.CSS_SELECTOR, ".plotly .xtick text"))
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


# --------------------------------------------------------------------------------------------
# honest ranking, as drawn
# --------------------------------------------------------------------------------------------

#: Metrics drawn on a bounded axis, and the bound (see leaderboards.charts.metric_bounds).
BOUNDED = {"prdc-deepbet/precision": 1, "prdc-deepbet/recall": 1, "prdc-deepbet/coverage": 1, "ssim": 1,
           "ms_ssim_diversity": 1, "conformance/modality_accuracy": 1, "memorization-deepbet": 1,
           "conformance/age_r": 1}

_FIGURES_JS = """
return Array.prototype.map.call(document.querySelectorAll('.js-plotly-plot'), function (el) {
  var full = el._fullLayout || {};
  return {id: el.id, title: (el.layout.title || {}).text || '', barmode: full.barmode,
          x: el.data[0].x, y: el.data[0].y,
          errorPlus: (el.data[0].error_y || {}).array || [],
          range: el.layout.yaxis && el.layout.yaxis.range ? el.layout.yaxis.range : null,
          drawn: full.yaxis ? full.yaxis.range : null,
          section: el.closest('section') ? el.closest('section').getAttribute('data-n') : null};
});
"""


@pytest.fixture(scope="module")
def honest_site(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("honest")
    runs = write_runs(tmp / "runs", honest_runs(16) + honest_runs(8, seed=1))
    return build_site(runs, tmp / "site", validation=VALIDATION)


def test_honest_ranking_in_browser(honest_site, driver, tmp_path_factory):
    driver.get(honest_site["index"].resolve().as_uri())
    _plots_drawn(driver, 12)
    assert _severe(driver) == []
    # one leaderboard per N, each ranking only its own runs, with an N column
    boards = driver.find_elements(By.CSS_SELECTOR, "section.board")
    assert [b.get_attribute("data-n") for b in boards] == ["8", "16"]
    for board, n in zip(boards, ("8", "16")):
        assert f"N = {n}" in board.find_element(By.TAG_NAME, "h2").text
        head = board.find_element(By.CSS_SELECTOR, "table.lb.headline")
        headers = [th.text for th in head.find_elements(By.CSS_SELECTOR, "thead th")]
        assert headers[:2] == ["Generator", "N"]
        assert headers[2].startswith("REALISM\nradiomics")  # headline first, axis on top
        rows = head.find_elements(By.CSS_SELECTOR, "tbody tr.run")
        assert len(rows) == 5
        assert {r.find_element(By.CSS_SELECTOR, "td.n").text for r in rows} == {n}
        assert {r.get_attribute("data-run").split("-")[0] for r in rows} == {f"n{n}"}
        full = board.find_element(By.CSS_SELECTOR, "table.lb.full")
        assert [th.get_attribute("textContent") for th in full.find_elements(By.CSS_SELECTOR, "thead th")][:2] \
            == ["Generator", "N"]
        # the copying runs never get a star (best cell), in the headline or the full table; their
        # failed gate is said in the row
        for run in ("retrieval", "folder"):
            for tr in board.find_elements(By.CSS_SELECTOR, f'tr.run[data-run="n{n}-{run}"]'):
                assert tr.find_elements(By.CSS_SELECTOR, "td.best") == []
                assert "memorisation: " in tr.find_element(By.CSS_SELECTOR, ".gate").get_attribute("textContent")
            gate = head.find_element(By.CSS_SELECTOR, f'tr.run[data-run="n{n}-{run}"] .gate')
            assert gate.is_displayed()
        role = head.find_element(By.CSS_SELECTOR, f'tr.run[data-run="n{n}-retrieval"] .role')
        assert role.text == "memorising baseline" and role.is_displayed()
        assert head.find_elements(By.CSS_SELECTOR, f'tr.run[data-run="n{n}-ldm3d"] td.best')
        # better than real data would say so; worse than the floor is marked
        assert head.find_elements(By.CSS_SELECTOR, ".ratio.vs-worse")
    # every chart: one bar per run (distinct labels), grouped, never stacked; bounded metrics on
    # their bound, no bar above it
    figs = driver.execute_script(_FIGURES_JS)
    assert len(figs) == 2 * 15
    seen = set()
    for f in figs:
        key = f["title"].replace("<b>", "").split("</b>")[0]
        seen.add(key)
        assert f["barmode"] == "group", key
        assert len(f["x"]) == len(set(f["x"])) == 5, key
        if key in BOUNDED:
            hi = BOUNDED[key]
            assert f["range"] is not None and f["range"][1] == hi, key
            assert f["drawn"][1] <= hi + 1e-9, key
            assert all(y <= hi for y in f["y"]), (key, f["y"])
    assert set(BOUNDED) <= seen
    # the metric report cards
    link = driver.find_element(By.LINK_TEXT, "Metric report cards")
    blind = driver.find_elements(By.CSS_SELECTOR, "table.lb.headline th .blind")
    assert "blind to: bias, shift" in [b.text for b in blind]
    shot = tmp_path_factory.mktemp("shots") / "leaderboard.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    link.click()
    WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith("validation.html"))
    cells = driver.find_elements(By.CSS_SELECTOR, 'tr[data-metric="fid-deepbet"] td.det')
    assert [c.get_attribute("class").split()[-1] for c in cells] == ["det-2", "det-none", "det-3", "det-na"]
    colours = {c.value_of_css_property("background-color") for c in cells}
    assert len(colours) == 4  # each detection level has its own colour
    _no_alert(driver)
    assert _severe(driver) == []
