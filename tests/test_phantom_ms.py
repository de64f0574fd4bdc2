"""The ``phantom-ms`` cohort: lesion maps against captions, lesion contrast per modality, deep grey-matter
atrophy against lesion load, the caption parser on lesion phrases, and the healthy phantom untouched."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from cohorts.captions import ATROPHY_MENTION_PCT, parse_caption, parse_lesions
from cohorts.phantom_lesions import BLACK_HOLE_T1, LESION_CLASSES, LESION_TISSUE_3T
from cohorts.phantom_params import SEQUENCES, TISSUE_3T, signal
from cohorts.subject import Cohort
from tests._helpers import registered_cohort

N = 24


@pytest.fixture(scope="module")
def ms(tmp_path_factory) -> Cohort:
    yield from registered_cohort(tmp_path_factory, "phantom-ms", n_subjects=N, seed=0, workers=2)


def _fraction(cohort: Cohort, s) -> np.ndarray:
    return cohort.load_lesion_mask(s)


def test_layout_meta_and_reload(ms):
    assert ms.name == "phantom-ms" and ms.synthetic and "SYNTHETIC" in ms.meta["label"]
    assert ms.meta["pathology_model"]["classes"] == list(LESION_CLASSES)
    again = Cohort.load(ms.root)
    for a, b in zip(ms.subjects, again.subjects):
        assert a.subject_id.startswith("phantom-ms-") and a.lesion_mask.exists()
        assert a.lesions == b.lesions and a.atrophy == b.atrophy and a.lesion_mask == b.lesion_mask
        assert 18 <= a.age <= 65
    n_ms = sum(s.lesions["count"] > 0 for s in ms.subjects)
    assert 0 < N - n_ms < N // 2  # some healthy controls, mostly patients


def test_lesion_maps_match_captions(ms):
    vox_ml = ms.grid.voxel_size**3 / 1000.0
    for s in ms.subjects:
        frac = _fraction(ms, s)
        stated = parse_caption(s.caption)["lesions"]
        n_components = ndi.label(frac > 0)[1]
        assert n_components == stated["count"] == s.lesions["count"], s.subject_id
        assert 0.0 <= frac.min() and frac.max() <= 1.0
        if stated["count"] == 0:
            assert "no white-matter lesions" in s.caption and frac.max() == 0 and stated == {"count": 0}
            continue
        assert float(frac.sum(dtype=np.float64)) * vox_ml == pytest.approx(stated["volume"], abs=0.051)
        for k in LESION_CLASSES:
            assert stated.get(k, 0) == s.lesions[k], (s.subject_id, k)
        assert sum(s.lesions[k] for k in LESION_CLASSES) == s.lesions["count"]
        labels = ms.load_labels(s)
        assert np.all(labels[frac > 0.5] == 3)  # lesions are white-matter pathology in the tissue labels


def test_lesion_classes_lie_where_they_should(ms):
    """Periventricular lesions touch the ventricles' neighbourhood, infratentorial ones lie low."""
    from cohorts.phantom_ms import ms_pathology

    z_infra, z_other = [], []
    for s in ms.subjects:
        path = ms_pathology(0, int(s.subject_id[-4:]), "3mm")
        for les in path.lesions:
            (z_infra if les.kind == "infratentorial" else z_other).append(les.centre_mm[2])
    assert z_infra and max(z_infra) < min(z_other)  # brainstem/cerebellum below the cerebral WM


def test_lesion_signal_equations():
    """Lesion tissue (long T1 and T2) is hyperintense to WM and GM on FLAIR and T2, hyperintense to WM
    on PD, and a T1 black hole is hypointense to GM on T1."""
    les = LESION_TISSUE_3T

    def s(mod, t):
        q = SEQUENCES[mod]
        return float(signal(mod, *t, q["TR"], q["TE"], q.get("TI")))

    for mod in ("FLAIR", "T2"):
        assert s(mod, les) > 1.3 * s(mod, TISSUE_3T["gm"]) > s(mod, TISSUE_3T["wm"])
    assert s("PD", les) > s("PD", TISSUE_3T["wm"])
    assert s("T1", (BLACK_HOLE_T1, les[1], les[2])) < s("T1", TISSUE_3T["gm"]) < s("T1", TISSUE_3T["wm"])


def test_lesion_contrast_on_written_images(ms):
    seen = set()
    for s in ms.subjects:
        frac = _fraction(ms, s)
        core = frac > 0.9
        if core.sum() < 3:
            continue
        img, labels = ms.load_volume(s), ms.load_labels(s)
        nawm = (labels == 3) & (ndi.binary_dilation(frac > 0, iterations=2) == 0)
        ratio = float(img[core].mean() / img[nawm].mean())
        if s.modality in ("FLAIR", "T2"):  # black holes are less bright on FLAIR: the mean is lower
            assert ratio > 1.2 and np.percentile(img[core], 90) > 1.5 * img[nawm].mean(), (s.subject_id, ratio)
        elif s.modality == "PD":
            assert ratio > 1.1, (s.subject_id, s.modality, ratio)
        else:  # T1: iso- to hypointense (black holes are darker)
            assert ratio < 1.0, (s.subject_id, s.modality, ratio)
        seen.add(s.modality)
    assert seen == {"T1", "T2", "PD", "FLAIR"}


def test_deep_grey_matter_atrophy_follows_lesion_load(ms):
    patients = [s for s in ms.subjects if s.lesions["count"] > 0]
    load = [s.lesions["volume"] for s in patients]
    for key in ("thalamus", "caudate"):
        lost = [s.atrophy[key] for s in patients]
        assert min(lost) > 0 and spearmanr(load, lost).statistic > 0.5, key  # 24 subjects: 0.67 thalamus, 0.68 caudate
        assert max(lost) < 25  # a few per cent per 10 mL, not a collapse
    for s in ms.subjects:
        if s.lesions["count"] == 0:
            assert s.atrophy == {"thalamus": 0.0, "caudate": 0.0} and "atrophy" not in s.caption
        q = parse_caption(s.caption)["qualitative"]
        assert (q.get("thalamus") == "small") == (s.atrophy["thalamus"] >= ATROPHY_MENTION_PCT)


@pytest.mark.parametrize("text, expected", [
    ("FLAIR MRI of a 34-year-old woman with 12 periventricular and 3 juxtacortical white-matter lesions "
     "(total 8.4 mL) and thalamic atrophy", {"periventricular": 12, "juxtacortical": 3, "volume": 8.4, "count": 15}),
    ("T2 MRI with 5 white matter lesions, total lesion volume of 2.5 ml", {"count": 5, "volume": 2.5}),
    ("a T1 scan with one infratentorial lesion", {"infratentorial": 1, "count": 1}),
    ("PD MRI of a 40-year-old man with no white-matter lesions", {"count": 0}),
    ("T1-weighted brain MRI of a 63-year-old woman. Lateral ventricles 32.1 mL.", {}),
])
def test_parse_lesions(text, expected):
    assert parse_lesions(text) == expected
    parsed = parse_caption(text)
    assert parsed.get("lesions", {}) == expected
    # lesion numbers never leak into structure volumes ("white matter lesions, total 2.5 ml")
    assert "wm" not in parsed["volumes"]


def test_healthy_phantom_unchanged_by_pathology_code(tmp_path):
    """A phantom-ms subject rendered without its pathology is the same anatomy the builder used as its
    atrophy reference, and the healthy ``phantom`` still draws its own (different) subjects."""
    from cohorts.phantom_ms import ms_params
    from cohorts.phantom_params import sample_params

    a, b = ms_params(0, 3), sample_params(0, 3)
    assert a.subject_id == "phantom-ms-0003" and b.subject_id == "phantom-0003"
    assert a.svf_seed != b.svf_seed and 18 <= a.age <= 65
    assert sample_params(0, 3, stream=()) == b  # the phantom's own stream is unchanged


# ------------------------------------------------------------------------------------ longitudinal
@pytest.fixture(scope="module")
def long(tmp_path_factory) -> Cohort:
    yield from registered_cohort(tmp_path_factory, "phantom-ms-long", n_subjects=8, seed=0, workers=2)


def _sequences(cohort: Cohort) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in cohort.subjects:
        out.setdefault(s.sequence, []).append(s)
    return {k: sorted(v, key=lambda s: s.months) for k, v in out.items()}


def test_sessions_layout(long, ms):
    seqs = _sequences(long)
    assert len(seqs) == 8 and all(len(v) == 3 for v in seqs.values())
    for sid, ses in seqs.items():
        assert [s.session for s in ses] == ["ses-00", "ses-01", "ses-02"] and ses[0].months == 0
        gaps = np.diff([s.months for s in ses])
        assert np.all((gaps >= 6) & (gaps <= 18))
        assert len({s.split for s in ses}) == 1 and len({(s.modality, s.sex, s.site) for s in ses}) == 1
        assert ses[0].changes == {} and all(set(s.changes) >= {"new_lesions", "thalamus_pct"} for s in ses[1:])
        # the baseline is the cross-sectional cohort's subject, byte for byte
        assert ses[0].image.read_bytes() == ms.by_id(sid).image.read_bytes()
        assert ses[2].age == pytest.approx(ses[0].age + ses[2].months / 12)


def test_followups_change_by_what_their_captions_say(long):
    vox_ml = long.grid.voxel_size**3 / 1000.0
    n_new = n_enlarging = 0
    for ses in _sequences(long).values():
        for prev, cur in zip(ses, ses[1:]):
            said = parse_caption(cur.caption)["changes"]
            assert said["months"] == round(cur.months)
            a, b = _fraction(long, prev), _fraction(long, cur)
            assert ndi.label(b > 0)[1] - ndi.label(a > 0)[1] == said["new_lesions"] == cur.changes["new_lesions"]
            assert float((b.sum(dtype=np.float64) - a.sum(dtype=np.float64)) * vox_ml) == pytest.approx(
                cur.changes["lesion_volume_ml"], abs=0.002)
            assert b.sum() >= a.sum() - 1e-3  # lesions do not shrink
            for key in ("thalamus", "caudate"):
                measured = 100 * (cur.volumes[key] / prev.volumes[key] - 1)
                assert said[f"{key}_pct"] == pytest.approx(measured, abs=0.06)  # stated to 0.1 %
            n_new += cur.changes["new_lesions"]
            n_enlarging += cur.changes["enlarging_lesions"]
    assert n_new > 0 and n_enlarging > 0


def test_followups_keep_identity_and_ms_subjects_lose_more_brain(long):
    seqs = _sequences(long)
    keys = sorted(seqs)
    own, other = [], []
    for i, sid in enumerate(keys):
        base, fu = long.load_volume(seqs[sid][0]), long.load_volume(seqs[sid][2])
        stranger = long.load_volume(seqs[keys[(i + 1) % len(keys)]][2])
        unchanged = (_fraction(long, seqs[sid][2]) == 0) & (base > 0)
        own.append(np.corrcoef(base[unchanged], fu[unchanged])[0, 1])
        other.append(np.corrcoef(base[unchanged], stranger[unchanged])[0, 1])
    assert min(own) > 0.9 and min(own) > max(other)
    rate = {True: [], False: []}
    for ses in seqs.values():
        rate[ses[0].lesions["count"] > 0].append(sum(s.changes["brain_pct"] for s in ses[1:]) / (ses[-1].months / 12))
    assert rate[True] and rate[False] and np.mean(rate[True]) < np.mean(rate[False]) < 0


@pytest.mark.parametrize("text, expected", [
    ("follow-up at 12 months: 2 new lesions, thalamus −1.2 %", {"months": 12.0, "new_lesions": 2, "thalamus_pct": -1.2}),
    ("Follow-up at 18 months; since the previous scan: 0 new lesions, 1 enlarging lesion, thalamus -0.9 %, "
     "caudate +0.1 %, brain -0.4 %.", {"months": 18.0, "new_lesions": 0, "enlarging_lesions": 1, "thalamus_pct": -0.9,
                                        "caudate_pct": 0.1, "brain_pct": -0.4}),
    ("FLAIR MRI of a 30-year-old woman", {}),
])
def test_parse_changes(text, expected):
    from cohorts.captions import parse_changes

    assert parse_changes(text) == expected
    parsed = parse_caption(text)
    assert parsed.get("changes", {}) == expected and "thalamus" not in parsed["volumes"]
    assert "count" not in parsed.get("lesions", {})  # "2 new lesions" is not the lesion count
