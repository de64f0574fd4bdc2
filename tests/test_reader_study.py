"""The blinded reader study (bench/reader_study.py, bench/reader_study_score.py): kappas against hand-computed
values (and scikit-learn where installed), the seeded balanced draw, blinding of the study folder, scoring
against the key, bad input; and in headless Chromium, two readers answering every case with the keyboard
(one reloading midway), their exports scored to hand-computed accuracies and kappas, and a DOM that is the
same for every case.

The Chromium part needs ``chromium`` and ``chromium-driver`` (``make browser``) and ``selenium``; it is
skipped with the reason otherwise, like tests/test_site_browser.py.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import bench
from bench.reader_study import MODALITY_NAMES, build_study, to_uint8
from bench.reader_study_score import cohen_kappa, fleiss_kappa, label_counts, score_study
from bench.runner import RunConfig, run
from cohorts.captions import parse_caption
from core.errors import InputError
from tests._helpers import chromium_driver, registered_cohort, severe_browser_logs

N_SUBJECTS = 80  # the cohort of tests/test_reports.py (20 test subjects)
N_PROMPTS = 8
N_CASES = 12
CASE_FILE = re.compile(r"^cases/[0-9a-f]{12}\.js$")
PAGE_FILES = {"index.html", "reader.js", "reader.css", "study.js"}


# ------------------------------------------------------------------------------- kappa by hand
def test_cohen_kappa_by_hand_and_against_sklearn():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert cohen_kappa([True, False, True, False], [True, False, True, False]) == pytest.approx(1.0)
    # perfect disagreement with balanced marginals: p_o = 0, p_e = 0.5 -> -1
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([True] * 4, [True] * 4))  # one label throughout: chance agreement 1
    with pytest.raises(ValueError, match="paired"):
        cohen_kappa([True], [True, False])
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    y[:20] = x[:20]
    assert cohen_kappa(list(x), list(y)) == pytest.approx(metrics.cohen_kappa_score(x, y), abs=1e-12)


def test_fleiss_kappa_by_hand():
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories. Row sums of squares add up to
    # 828, so P = (828 - 10 * 14) / (10 * 14 * 13); column totals 20, 28, 39, 21, 32 of 140 give P_e
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    p_bar, p_e = 688 / 1820, (20 ** 2 + 28 ** 2 + 39 ** 2 + 21 ** 2 + 32 ** 2) / 140 ** 2
    assert fleiss_kappa(table) == pytest.approx((p_bar - p_e) / (1 - p_e), abs=1e-12)
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)
    # two readers: Fleiss' kappa is Scott's pi. The Cohen example above: pooled yes 55/100, no 45/100,
    # p_e = 0.55^2 + 0.45^2 = 0.505, p_o = 0.7 -> (0.7 - 0.505) / 0.495
    a = [True] * 25 + [False] * 25
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert fleiss_kappa(label_counts(list(zip(a, b)))) == pytest.approx(0.195 / 0.495, abs=1e-12)
    # equal marginals: Cohen = Scott = Fleiss (the browser test's plan: 8 of 12 agree, 6/6 each)
    a = [True] * 6 + [False] * 6
    b = [True] * 4 + [False] * 2 + [True] * 2 + [False] * 4
    assert cohen_kappa(a, b) == pytest.approx(1 / 3) == fleiss_kappa(label_counts(list(zip(a, b))))
    assert math.isnan(fleiss_kappa([[2, 0], [2, 0]]))
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 0], [1, 0]])


def test_intensity_rule_is_fixed():
    x = np.array([-0.5, 0.0, 0.5, 1.0, 2.0, np.nan], np.float32)
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 0]


# ------------------------------------------------------------------------------- fixtures: two runs
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    yield from registered_cohort(tmp_path_factory, "phantom", n_subjects=N_SUBJECTS, seed=0, workers=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cohort) -> list[Path]:
    suite = tmp_path_factory.mktemp("suite") / "rs-tiny.yaml"
    suite.write_text("include: quick\nname: rs-tiny\n"
                     f"reference: {{name: phantom, args: {{n_subjects: {N_SUBJECTS}, seed: 0}}}}\n"
                     f"n_prompts: {N_PROMPTS}\nmetrics:\n  - {{name: ssim}}\nheadline: {{}}\n")
    out = tmp_path_factory.mktemp("runs")
    return [run(RunConfig(generator=g, suite=suite, out=out, quiet=True)).parent for g in ("template", "pca")]


@pytest.fixture(scope="module")
def study(runs, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("study") / "study"
    res = build_study(runs, n=N_CASES, seed=1, out=out)
    res["out"] = out
    res["key_data"] = json.loads(res["key"].read_text())
    return res


def _forbidden(key: dict) -> list[str]:
    """Strings that would reveal the key: run ids, generator names, subject ids, the cohort's name."""
    words = {"template", "pca", "phantom", "retrieval", "generator"}
    for r in key["runs"]:
        words |= {r["run_id"], r["source"], r["generator"], r["suite"]}
    for c in key["cases"].values():
        words |= {c["run_id"], c["subject_id"]}
    return sorted(w for w in words if w)


# ------------------------------------------------------------------------------- build
def test_the_draw_is_balanced_and_seeded(study, runs, tmp_path):
    key = study["key_data"]
    assert study["n_cases"] == N_CASES and len(key["cases"]) == N_CASES
    assert key["per_source"] == {"real": 6, "template": 3, "pca": 3}
    assert key["study_folder"] == str(study["out"].resolve())
    assert study["key"] == study["out"].parent / "study.key.json"
    records = {r.name: json.loads((r / "record.json").read_text()) for r in runs}
    prompts = {p["subject_id"]: p["text"] for rec in records.values() for p in rec["prompts"]}
    for c in key["cases"].values():
        assert c["prompt"] == prompts[c["subject_id"]]  # the caption the volume belongs to
        assert c["modality"] == MODALITY_NAMES[parse_caption(c["prompt"])["modality"]]
    assert len({c["subject_id"] for c in key["cases"].values() if c["source"] == "real"}) == 6  # no repeats
    again = build_study(runs, n=N_CASES, seed=1, out=tmp_path / "again")
    other = json.loads(again["key"].read_text())
    what = lambda k: sorted((c["source"], c["run_id"], c["subject_id"]) for c in k["cases"].values())  # noqa: E731
    assert what(other) == what(key)  # the same seed draws the same volumes ...
    assert not set(other["cases"]) & set(key["cases"]) and other["study_id"] != key["study_id"]  # ... new tokens
    # more cases than volumes: the study shrinks and stays half real
    small = json.loads(build_study(runs, n=40, seed=0, out=tmp_path / "big")["key"].read_text())
    assert small["per_source"] == {"real": N_PROMPTS, "template": 4, "pca": 4}


def test_the_study_folder_does_not_reveal_the_key(study):
    out, key = study["out"], study["key_data"]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert set(files) - PAGE_FILES == {f"cases/{c}.js" for c in key["cases"]}
    assert all(CASE_FILE.match(f) for f in set(files) - PAGE_FILES)
    assert not any(p.name.endswith(".json") for p in out.rglob("*"))  # the key is not inside
    page = Path(bench.__file__).parent / "reader_study_page"
    for name in PAGE_FILES - {"study.js"}:  # the same bytes for every study: they cannot carry the key
        assert (out / name).read_bytes() == (page / name).read_bytes(), name
        text = (out / name).read_text().lower()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text  # offline
    forbidden = [w.lower() for w in _forbidden(key)]
    study_text = (out / "study.js").read_text().lower()
    assert not [w for w in forbidden if w in study_text]
    study_js = json.loads((out / "study.js").read_text().split("=", 1)[1].rstrip(";\n"))
    assert set(study_js) == {"study_id", "cases", "version"} and study_js["cases"] == key["order"]
    sizes: dict[str, set[int]] = {}
    for cid, c in key["cases"].items():
        text = (out / "cases" / f"{cid}.js").read_text()
        head, payload = text.split("]=", 1)
        assert head == f'window.BGB_CASES=window.BGB_CASES||{{}};window.BGB_CASES["{cid}"'
        data = json.loads(payload.rstrip(";\n"))
        assert list(data) == ["shape", "modality", "data"]  # the same fields for every case, no source
        assert data["modality"] == c["modality"] and data["shape"] == [48, 64, 56]
        assert not [w for w in forbidden if w in head.lower() + data["modality"].lower()]
        vol = np.frombuffer(base64.b64decode(data["data"]), np.uint8)
        assert vol.size == 48 * 64 * 56 and vol.max() > 200
        sizes.setdefault(c["modality"], set()).add(len(text))
    assert all(len(s) == 1 for s in sizes.values()), sizes  # same size per modality, real or not


def test_build_refuses_bad_input(study, runs, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="exists and is not empty"):
        build_study(runs, n=4, out=study["out"])
    with pytest.raises(InputError, match="inside the study folder"):
        build_study(runs, n=4, out=tmp_path / "s", key=tmp_path / "s" / "key.json")
    bare = tmp_path / "bare-run"
    bare.mkdir()
    shutil.copy(runs[0] / "record.json", bare / "record.json")
    with pytest.raises(InputError, match=r"bare-run: no generated volumes \(samples/shard_\*\.npz\).*re-run"):
        build_study([bare], n=4, out=tmp_path / "s2")
    with pytest.raises(InputError, match="at least 2"):
        build_study(runs, n=1, out=tmp_path / "s3")
    assert not (tmp_path / "s2").exists() and not (tmp_path / "s2.key.json").exists()
    # volumes of two grids (a study would show which case is which by its shape): nothing is left behind
    from bench import reader_study

    calls, volume = iter(range(100)), reader_study._VolumeReader.volume
    monkeypatch.setattr(reader_study._VolumeReader, "volume",
                        lambda self, c: volume(self, c)[:, :, : 56 - next(calls) % 2])
    with pytest.raises(InputError, match="a study shows one grid"):
        build_study(runs, n=4, out=tmp_path / "s4")
    assert not (tmp_path / "s4").exists() and not list(tmp_path.glob(".s4*")) and not (tmp_path / "s4.key.json").exists()


# ------------------------------------------------------------------------------- score
def _export(path: Path, study_id: str, reader: str, responses: list[dict]) -> Path:
    path.write_text(json.dumps({"study_id": study_id, "reader": reader, "responses": responses,
                                "exported": "2026-12-02T00:00:00Z"}))
    return path


def test_score_by_hand_and_attach(study, tmp_path, capsys):
    from bench.cli import main

    key = study["key_data"]
    order = key["order"]
    truth = {c: key["cases"][c]["source"] == "real" for c in order}
    # reader A is always right, except that every generated case of pca is called real; reader B says real throughout
    a = [{"case": c, "real": truth[c] or key["cases"][c]["source"] == "pca", "plausibility": 4,
          "contrast_match": True, "comment": ""} for c in order]
    b = [{"case": c, "real": True, "plausibility": 2 if truth[c] else None, "contrast_match": False, "comment": "x"}
         for c in order]
    fa, fb = _export(tmp_path / "a.json", key["study_id"], "A", a), _export(tmp_path / "b.json", key["study_id"], "B", b)
    out = tmp_path / "scores.json"
    assert main(["reader-study", "score", str(fa), str(fb), "--key", str(study["key"]), "--attach",
                 "--out", str(out), "--n-boot", "200"]) == 0
    table = capsys.readouterr().out
    assert "real" in table and "template" in table and "Cohen's kappa" in table
    s = json.loads(out.read_text())
    src = s["sources"]
    assert src["real"]["accuracy"]["value"] == 1.0 and src["real"]["accuracy"]["n_judgements"] == 12
    assert src["template"]["accuracy"]["value"] == pytest.approx(0.5)  # A right, B wrong on every case
    assert src["pca"]["accuracy"]["value"] == 0.0
    assert src["template"]["plausibility"]["value"] == 4.0  # B gave none on generated cases
    assert src["real"]["plausibility"]["value"] == 3.0
    assert src["real"]["contrast_conformity"]["value"] == pytest.approx(0.5)
    for m in src.values():
        for k in ("accuracy", "plausibility", "contrast_conformity"):
            assert m[k]["ci_low"] <= m[k]["value"] <= m[k]["ci_high"]
    # labels: A real on 9 (6 real + 3 pca), synthetic on 3; B real on all 12 -> p_o = 9/12, p_e = 9/12 * 1 -> 0
    assert s["agreement"]["cohen_kappa"] == pytest.approx(0.0, abs=1e-12)
    pooled = 21 / 24  # Fleiss: p_e = (21/24)^2 + (3/24)^2, P = 9/12
    assert s["agreement"]["fleiss_kappa"] == pytest.approx((0.75 - pooled ** 2 - (1 - pooled) ** 2)
                                                           / (1 - pooled ** 2 - (1 - pooled) ** 2))
    for r in key["runs"]:
        att = json.loads((Path(r["path"]) / "reader_study.json").read_text())
        assert att["study_id"] == key["study_id"] and att["scores"] == src[r["source"]]
        assert att["real"] == src["real"]


def test_score_refuses_bad_responses(study, tmp_path, capsys):
    from bench.cli import main

    key = study["key_data"]
    ok = [{"case": c, "real": True, "plausibility": 3, "contrast_match": True, "comment": ""} for c in key["order"]]
    other = _export(tmp_path / "other.json", "rs-0000000000000000", "A", ok)
    assert main(["reader-study", "score", str(other), "--key", str(study["key"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other.json" in err and "score it with its own study's key" in err
    unknown = _export(tmp_path / "unknown.json", key["study_id"], "A", ok + [{"case": "deadbeef0000", "real": True}])
    with pytest.raises(InputError, match=r"unknown\.json: case ids not in study .*deadbeef0000"):
        score_study([unknown], key=study["key"])
    bad = _export(tmp_path / "bad.json", key["study_id"], "A", [{**ok[0], "plausibility": 7}])
    with pytest.raises(InputError, match=r"bad\.json: responses\[0\] plausibility must be 1-5"):
        score_study([bad], key=study["key"])
    twice = _export(tmp_path / "twice.json", key["study_id"], "A", ok)
    with pytest.raises(InputError, match="two response files of reader 'A'"):
        score_study([twice, _export(tmp_path / "twice2.json", key["study_id"], "A", ok)], key=study["key"])
    with pytest.raises(InputError, match="not a reader-study key"):
        score_study([twice], key=twice)


# ------------------------------------------------------------------------------- in Chromium
@pytest.fixture(scope="module")
def driver():
    yield from chromium_driver("1400,900")


_severe = severe_browser_logs


def _wait_case(drv, position: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, 15).until(lambda d: d.execute_script(
        "var m = document.getElementById('modality').textContent;"
        "return document.getElementById('case-label').textContent.indexOf('case ' + arguments[0] + ' of') === 0"
        " && m !== '…' && m !== '–' && document.getElementById('view-axial').width > 0", position + 1))


def _keys(drv, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(drv).send_keys(keys).perform()


# the two readers' plans, by presentation position (12 cases): real / synthetic, plausibility, contrast
PLAN_A = [("r" if i < 6 else "s", str(i % 5 + 1), "y" if i % 2 == 0 else "n") for i in range(N_CASES)]
PLAN_B = [("r" if i < 4 or i in (6, 7) else "s", "3", "y") for i in range(N_CASES)]


def _read(drv, index: Path, reader: str, plan: list[tuple[str, str, str]], reload_at: int | None) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    drv.get(index.as_uri())
    drv.execute_script("localStorage.clear()")
    drv.refresh()
    _wait_case(drv, 0)
    name = drv.find_element(By.ID, "reader")
    name.send_keys(reader)
    name.send_keys(Keys.ESCAPE)  # leaves the field: the next keys are answers
    for i, (real, plaus, contrast) in enumerate(plan):
        if i == reload_at:
            drv.refresh()
            _wait_case(drv, i)  # the page comes back at the case it was on, with the answers so far
            progress = drv.find_element(By.ID, "progress-text").text
            assert progress == f"{i} / {len(plan)} answered", progress
            assert drv.find_element(By.ID, "reader").get_attribute("value") == reader
            _keys(drv, Keys.ARROW_LEFT)
            _wait_case(drv, i - 1)
            chosen = drv.execute_script("return Array.prototype.map.call(document.querySelectorAll("
                                        "'.choices button.selected'), function (b) { return b.dataset.v; })")
            want = plan[i - 1]
            assert chosen == [str(want[0] == "r").lower(), want[1], str(want[2] == "y").lower()]
            _keys(drv, Keys.ARROW_RIGHT)
        _wait_case(drv, i)
        _keys(drv, Keys.ARROW_UP + Keys.ARROW_UP + real + plaus + contrast)  # two slices up, then the answers
        _keys(drv, Keys.ENTER if i % 2 else Keys.ARROW_RIGHT)
    assert drv.find_element(By.ID, "progress-text").text == f"{len(plan)} / {len(plan)} answered"
    drv.find_element(By.ID, "export-btn").click()
    text = drv.find_element(By.ID, "export").get_attribute("value")
    assert _severe(drv) == []
    return json.loads(text)


def test_two_readers_in_chromium_and_their_scores(study, driver, tmp_path):
    key = study["key_data"]
    order = key["order"]
    index = study["index"].resolve()
    exports = [_read(driver, index, "Reader A", PLAN_A, reload_at=6), _read(driver, index, "Reader B", PLAN_B, None)]
    for ex, plan, name in zip(exports, (PLAN_A, PLAN_B), ("Reader A", "Reader B")):
        assert set(ex) == {"study_id", "reader", "responses", "exported"} and ex["reader"] == name
        assert ex["study_id"] == key["study_id"] and [r["case"] for r in ex["responses"]] == order
        assert [(r["real"], r["plausibility"], r["contrast_match"]) for r in ex["responses"]] == \
            [(p[0] == "r", int(p[1]), p[2] == "y") for p in plan]
        assert all(r["comment"] == "" for r in ex["responses"])
    files = [_export(tmp_path / f"{i}.json", ex["study_id"], ex["reader"], ex["responses"])
             for i, ex in enumerate(exports)]
    s = score_study(files, key=study["key"], n_boot=200)
    # by hand: per source, right judgements / judgements (every case read by both readers)
    for source in ("real", "template", "pca"):
        pos = [i for i, c in enumerate(order) if key["cases"][c]["source"] == source]
        right = sum((plan[i][0] == "r") == (source == "real") for plan in (PLAN_A, PLAN_B) for i in pos)
        assert s["sources"][source]["accuracy"]["value"] == pytest.approx(right / (2 * len(pos)))
        assert s["sources"][source]["plausibility"]["value"] == pytest.approx(
            np.mean([(int(PLAN_A[i][1]) + 3) / 2 for i in pos]))
    # 8 of 12 labels agree, each reader says real 6 times: p_o = 2/3, p_e = 1/2 -> kappa 1/3 (Cohen and Fleiss)
    assert s["agreement"]["cohen_kappa"] == pytest.approx(1 / 3)
    assert s["agreement"]["fleiss_kappa"] == pytest.approx(1 / 3)
    assert s["agreement"]["percent_agreement"] == pytest.approx(8 / 12)


_DOM = """
var body = document.body.cloneNode(true);
['#strip', '#case-label', '#modality', '#next', '#export', '#notice'].forEach(function (s) {
  var el = body.querySelector(s); if (el) el.textContent = ''; if (el && s === '#strip') el.innerHTML = ''; });
body.querySelectorAll('button').forEach(function (b) { b.removeAttribute('disabled'); });
return body.outerHTML;
"""


def test_the_page_dom_is_the_same_for_every_case(study, driver):
    from selenium.webdriver.common.keys import Keys

    key = study["key_data"]
    driver.get(study["index"].resolve().as_uri())
    driver.execute_script("localStorage.clear()")
    driver.refresh()
    doms, texts = {}, []
    for i, cid in enumerate(key["order"]):
        _wait_case(driver, i)
        doms.setdefault(driver.execute_script(_DOM), []).append(key["cases"][cid]["source"])
        texts.append(driver.page_source.lower() + driver.find_element("tag name", "body").text.lower())
        _keys(driver, Keys.ARROW_RIGHT)
    assert len(doms) == 1, "the DOM differs between cases: " + str(list(doms.values()))
    assert set(next(iter(doms.values()))) == {"real", "template", "pca"}
    forbidden = [w.lower() for w in _forbidden(key)]
    assert not [w for t in texts for w in forbidden if w in t]
    shown = {driver.execute_script("return document.getElementById('modality').textContent")}
    assert shown <= set(MODALITY_NAMES.values())
    assert _severe(driver) == []
