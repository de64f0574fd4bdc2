"""Atlas-guided tissue measurements on phantom volumes, whose modality and ventricle volumes are known."""

import numpy as np
import pytest

from cohorts.atlas import load_priors
from cohorts.grid import GRIDS
from cohorts.phantom import PhantomCohort
from metrics.functional.tissue import (classify_modality, contrast_matches, core_masks, tissue_means,
                                       ventricular_csf_ml)

GRID = GRIDS["3mm"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    cohort = PhantomCohort.build(tmp_path_factory.mktemp("tissue") / "ph", "3mm", n_subjects=16, seed=11,
                                 workers=1, quiet=True)
    pri = load_priors(GRID.voxel_size, GRID.shape, GRID.affine)
    vent = pri.structure_mask("lateral_ventricles")
    return cohort, cohort.load_volumes(cohort.subjects), core_masks(pri.gm, pri.wm, vent), vent


def test_contrast_order_recovers_every_modality(phantom):
    cohort, vols, masks, _ = phantom
    means = tissue_means(vols, masks)
    for i, s in enumerate(cohort.subjects):
        m = {t: means[t][i] for t in means}
        assert contrast_matches(m, s.modality), (s.subject_id, s.modality, m)
        assert classify_modality(m) == s.modality


def test_contrast_rules_reject_wrong_modality():
    t1 = {"wm": 0.8, "gm": 0.6, "csf": 0.2}
    assert contrast_matches(t1, "T1") and not contrast_matches(t1, "T2") and not contrast_matches(t1, "PD")
    assert classify_modality({"wm": 0.2, "gm": 0.5, "csf": 0.9}) == "T2"
    assert classify_modality({"wm": 0.5, "gm": 0.6, "csf": 0.1}) == "FLAIR"
    assert classify_modality({"wm": 0.7, "gm": 0.8, "csf": 0.95}) == "PD"  # T2's order, weak contrast
    assert classify_modality({"wm": 0.5, "gm": 0.5, "csf": 0.5}) == "unknown"
    with pytest.raises(ValueError, match="unknown modality"):
        contrast_matches(t1, "DWI")


def test_ventricular_csf_tracks_ground_truth(phantom):
    cohort, vols, masks, vent = phantom
    measured = ventricular_csf_ml(vols, vent, masks, GRID.voxel_volume_ml)
    truth = np.array([s.volumes["lateral_ventricles"] for s in cohort.subjects])
    # PD has weak CSF contrast; the other modalities must track the ground truth closely
    keep = np.array([s.modality != "PD" for s in cohort.subjects])
    r = np.corrcoef(measured[keep], truth[keep])[0, 1]
    assert r > 0.8, (r, measured, truth)
