"""Captions: building, percentiles, ordinals, parsing (generated and hand-written)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohorts.captions import (compute_percentiles, make_caption, ordinal, parse_caption,
                                 percentile_rank)
from cohorts.subject import STRUCTURES, Subject


def _subject(**kw) -> Subject:
    base = dict(subject_id="s", split="train", modality="T1", image=Path("x.nii.gz"))
    base.update(kw)
    return Subject(**base)


def test_ordinals():
    got = [ordinal(n) for n in (1, 2, 3, 4, 10, 11, 12, 13, 14, 21, 22, 23, 24, 99, 101, 111, 112, 113)]
    assert got == ["1st", "2nd", "3rd", "4th", "10th", "11th", "12th", "13th", "14th", "21st", "22nd",
                   "23rd", "24th", "99th", "101st", "111th", "112th", "113th"]


def test_percentiles():
    subs = [_subject(subject_id=str(i), volumes={"thalamus": float(v)}) for i, v in enumerate([5, 1, 3, 2, 4])]
    subs.append(_subject(subject_id="none"))
    compute_percentiles(subs)
    assert [s.percentiles["thalamus"] for s in subs[:5]] == [90.0, 10.0, 50.0, 30.0, 70.0]
    assert subs[5].percentiles == {}
    assert percentile_rank(1.0, [1.0] * 1000) == 50.0
    assert percentile_rank(0.0, list(range(1000))) == 1.0  # clipped to [1, 99]
    assert percentile_rank(999.0, list(range(1000))) == 99.0


def test_make_caption_full():
    s = _subject(age=63.0, sex="F", synthetic=True,
                 volumes={"lateral_ventricles": 32.14, "third_ventricle": 1.2, "gm": 620.44, "wm": 480.2,
                          "csf": 250.0, "icv": 1350.64},
                 percentiles={"lateral_ventricles": 78.0, "third_ventricle": 21.0})
    assert make_caption(s) == (
        "Synthetic phantom. T1-weighted brain MRI of a 63-year-old woman. Lateral ventricles 32.1 mL "
        "(78th percentile), third ventricle 1.2 mL (21st percentile); grey matter 620.4 mL, white matter "
        "480.2 mL, CSF 250.0 mL, intracranial volume 1350.6 mL.")


@pytest.mark.parametrize("kw,expected", [
    (dict(modality="FLAIR", age=None, sex=None), "FLAIR brain MRI of a subject."),
    (dict(modality="PD", age=40.7, sex=None), "proton-density-weighted brain MRI of a 40-year-old subject."),
    (dict(modality="T2", age=None, sex="M"), "T2-weighted brain MRI of a man."),
    (dict(modality="T1", age=84.2, sex="M"), "T1-weighted brain MRI of an 84-year-old man."),
    (dict(modality="T1", age=18.0, sex="F"), "T1-weighted brain MRI of an 18-year-old woman."),
])
def test_make_caption_omits_missing(kw, expected):
    cap = make_caption(_subject(**kw))
    assert cap == expected
    assert "Synthetic" not in cap and "mL" not in cap


def test_parse_generated_roundtrip_all_fields():
    vols = {k: 10.0 + i * 3.33 for i, k in enumerate(STRUCTURES)}
    for mod in ("T1", "T2", "PD", "FLAIR"):
        for sex in ("F", "M", None):
            s = _subject(modality=mod, age=71.0, sex=sex, volumes=vols,
                         percentiles={k: float(1 + 7 * i) for i, k in enumerate(STRUCTURES)})
            p = parse_caption(make_caption(s))
            assert (p["modality"], p["age"], p["sex"], p["synthetic"]) == (mod, 71.0, sex, False)
            assert p["volumes"] == {k: round(v, 1) for k, v in vols.items()}
            regional = [k for k in STRUCTURES if k not in ("gm", "wm", "csf", "icv")]
            assert p["percentiles"] == {k: s.percentiles[k] for k in regional}
            assert p["qualitative"] == {}


@pytest.mark.parametrize("text,expected", [
    ("FLAIR MRI of a 70 year old man with large lateral ventricles",
     dict(modality="FLAIR", age=70.0, sex="M", qualitative={"lateral_ventricles": "large"})),
    ("t1w scan of a FEMALE, 45 years old, small hippocampi and enlarged ventricles",
     dict(modality="T1", age=45.0, sex="F",
          qualitative={"hippocampus_left": "small", "hippocampus_right": "small",
                       "lateral_ventricles": "large"})),
    ("PD-weighted image of a male, aged 33; left hippocampus 4.2 ml (3rd percentile)",
     dict(modality="PD", age=33.0, sex="M", volumes={"hippocampus_left": 4.2},
          percentiles={"hippocampus_left": 3.0})),
    ("T1 MRI, female. Hippocampus, left: 3.9 mL (12th percentile); hippocampus, right: 4.1 ml",
     dict(modality="T1", sex="F", volumes={"hippocampus_left": 3.9, "hippocampus_right": 4.1},
          percentiles={"hippocampus_left": 12.0})),
    ("T2w brain of a woman; gray matter 700 mL, ICV 1500 cc",
     dict(modality="T2", sex="F", volumes={"gm": 700.0, "icv": 1500.0})),
    ("T2-FLAIR, 80-year-old woman, the third ventricle is dilated",
     dict(modality="FLAIR", age=80.0, sex="F", qualitative={"third_ventricle": "large"})),
    ("proton density weighted MRI of a man", dict(modality="PD", sex="M")),
    ("synthetic T2-weighted brain", dict(modality="T2", synthetic=True)),
])
def test_parse_hand_written(text, expected):
    p = parse_caption(text)
    full = {"modality": None, "age": None, "sex": None, "volumes": {}, "percentiles": {},
            "qualitative": {}, "synthetic": False}
    full.update(expected)
    assert p == full


def test_parse_empty():
    assert parse_caption("a brain") == {"modality": None, "age": None, "sex": None, "volumes": {},
                                        "percentiles": {}, "qualitative": {}, "synthetic": False}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from cohorts.phantom import PhantomCohort

    # same home and spec as tests/test_phantom.py: the cohort is built once per session
    home = tmp_path_factory.getbasetemp() / "bgb_home"
    return PhantomCohort.get("3mm", home=home, n_subjects=16, seed=0, workers=1, quiet=True)


def test_cohort_captions_roundtrip(cohort):
    subjects = cohort.subjects
    for s in subjects:
        assert s.caption == make_caption(s)  # manifest caption == caption rebuilt from the record
        p = parse_caption(s.caption)
        assert p["modality"] == s.modality and p["sex"] == s.sex and p["age"] == s.age
        assert p["synthetic"] is True
        for k, v in s.volumes.items():
            assert p["volumes"][k] == pytest.approx(v, abs=0.05)
    # percentiles are ranks within the whole cohort
    lv = sorted(subjects, key=lambda s: s.volumes["lateral_ventricles"])
    assert [s.percentiles["lateral_ventricles"] for s in lv] == sorted(
        s.percentiles["lateral_ventricles"] for s in subjects)
    assert lv[0].percentiles["lateral_ventricles"] == 3.0 and lv[-1].percentiles["lateral_ventricles"] == 97.0


# ---------------------------------------------------------------- every form the cohorts produce
@pytest.mark.parametrize("age", [18.0, 20.0, 21.0, 80.0, 83.0, 89.0, 90.0, 64.6])
@pytest.mark.parametrize("sex", ["F", "M", None])
def test_roundtrip_every_age_article_and_sex(age, sex):
    """'a'/'an' ('an 18-', 'an 80..89-year-old'), woman/man/subject; ages are floored to whole years."""
    cap = make_caption(_subject(modality="PD", age=age, sex=sex, synthetic=True))
    p = parse_caption(cap)
    assert (p["modality"], p["age"], p["sex"], p["synthetic"]) == ("PD", float(int(age)), sex, True)


@pytest.mark.parametrize("kw", [
    dict(modality="FLAIR", age=None, sex=None), dict(modality="PD", age=40.7, sex=None),
    dict(modality="T2", age=None, sex="M"), dict(modality="T1", age=84.2, sex="M"),
    dict(modality="T1", age=18.0, sex="F")])
def test_roundtrip_captions_with_missing_fields(kw):
    p = parse_caption(make_caption(_subject(**kw)))
    assert p["modality"] == kw["modality"] and p["sex"] == kw["sex"]
    assert p["age"] == (None if kw["age"] is None else float(int(kw["age"])))
    assert p["volumes"] == {} and p["percentiles"] == {}


@pytest.mark.parametrize("pct", [1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 50, 99])
def test_roundtrip_every_ordinal_percentile(pct):
    s = _subject(volumes={"lateral_ventricles": 12.34, "hippocampus_left": 3.96, "icv": 1402.1},
                 percentiles={"lateral_ventricles": float(pct), "hippocampus_left": float(100 - pct)})
    p = parse_caption(make_caption(s))
    assert p["volumes"] == {"lateral_ventricles": 12.3, "hippocampus_left": 4.0, "icv": 1402.1}
    assert p["percentiles"] == {"lateral_ventricles": float(pct), "hippocampus_left": float(100 - pct)}


def test_regional_only_and_tissue_only_captions():
    regional = make_caption(_subject(volumes={"thalamus": 20.0, "putamen": 10.5}, percentiles={"thalamus": 40.0}))
    assert regional.endswith("Thalamus 20.0 mL (40th percentile), putamen 10.5 mL.")
    p = parse_caption(regional)
    assert p["volumes"] == {"thalamus": 20.0, "putamen": 10.5} and p["percentiles"] == {"thalamus": 40.0}
    tissue = make_caption(_subject(volumes={"gm": 600.0, "csf": 210.0}))
    assert tissue.endswith("Grey matter 600.0 mL, CSF 210.0 mL.")
    assert parse_caption(tissue)["volumes"] == {"gm": 600.0, "csf": 210.0}


def test_text_encoder_loads_silently_and_leaves_progress_bars_as_it_found_them():
    """Loading MiniLM prints no transformers "Loading weights" bar (it leaked through --quiet), and the
    caller's progress-bar setting is restored."""
    import subprocess
    import sys

    code = ("from transformers.utils import logging as l\n"
            "from generators.text import get_text_encoder\n"
            "t = get_text_encoder()\n"
            "print(t.dim, l.is_progress_bar_enabled())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["384", "True"]
    assert "Loading weights" not in out.stderr and "it/s]" not in out.stderr, out.stderr


def test_text_encoder_is_loaded_once_per_folder_and_twice_without_error():
    from generators.text import TextEncoder, default_model_dir, get_text_encoder

    assert get_text_encoder() is get_text_encoder()  # cached: the model loads once per process
    a, b = TextEncoder(default_model_dir()), TextEncoder(default_model_dir())  # two loads in a row work
    assert a.dim == b.dim == 384
