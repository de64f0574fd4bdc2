"""The lesion-segmentation network: pinned weights, input normalisation, the scoring functions against
hand-made maps, and its accuracy on held-out phantom-ms subjects (trained on seed 1, scored on seed 0)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.lesionseg_train import lesion_scores, validate
from core.io import sha256_file
from metrics.lesionseg import WEIGHTS, WEIGHTS_SHA256, load_lesion_net, normalise
from tests._helpers import registered_cohort

N_PARAMS = 90_345


def test_weights_pinned_with_provenance():
    assert sha256_file(WEIGHTS) == WEIGHTS_SHA256
    net, meta = load_lesion_net()
    assert meta["format"] == "lesionseg-1" and meta["steps"] > 500 and meta["trained_on"]
    assert sum(p.numel() for p in net.parameters()) == N_PARAMS


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors.*bench.lesionseg_train"):
        load_lesion_net(tmp_path / "missing.safetensors")
    bad = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"w": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not a lesion-segmentation checkpoint"):
        load_lesion_net(bad)


def test_normalise_is_scale_free_and_checks_its_inputs():
    rng = np.random.default_rng(0)
    v = np.zeros((1, 8, 8, 8), np.float32)
    v[0, 2:6, 2:6, 2:6] = rng.random((4, 4, 4)) + 0.5
    priors = {k: rng.random((8, 8, 8)).astype(np.float32) for k in ("csf", "gm", "wm")}
    a, b = normalise(v, ["FLAIR"], priors), normalise(3.7 * v, ["FLAIR"], priors)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    assert a.shape == (1, 8, 8, 8, 8) and float(a[0, 4].min()) == 1.0 and float(a[0, 1:4].max()) == 0.0
    np.testing.assert_array_equal(a[0, 7].numpy(), priors["wm"])
    with pytest.raises(ValueError, match="unknown modality 'DWI'"):
        normalise(v, ["DWI"], priors)
    with pytest.raises(ValueError, match="prior 'csf' has shape"):
        normalise(v, ["T1"], {**priors, "csf": np.zeros((4, 4, 4))})


def test_lesion_scores_on_hand_made_maps():
    truth = np.zeros((20, 20, 20), np.float32)
    truth[2:5, 2:5, 2:5] = 1.0  # lesion A, 27 voxels
    truth[12:14, 12:14, 12:14] = 1.0  # lesion B, 8 voxels (missed)
    pred = np.zeros_like(truth)
    pred[3:5, 2:5, 2:5] = 0.9  # 18 voxels inside A
    pred[15:17, 2:4, 2:4] = 0.85  # a false component (8 voxels)
    pred[18, 18, 18] = 0.75  # below the mask threshold: counts in the volume only
    s = lesion_scores(pred, truth)
    assert s["dice_num"] == 36 and s["dice_den"] == 26 + 35
    assert (s["n_true"], s["found"], s["n_pred"], s["true_pred"]) == (2, 1, 2, 1)
    assert s["vol_true"] == 35 and s["vol_pred"] == pytest.approx(18 * 0.9 + 8 * 0.85 + 0.75)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    yield from registered_cohort(tmp_path_factory, "phantom-ms", n_subjects=24, seed=0, workers=2)


def test_accuracy_on_held_out_subjects(held_out):
    """Every subject of the seed-0 cohort is unseen (the weights trained on seed 1)."""
    res = validate(held_out.root, split=None)
    visible = res["FLAIR+T2+PD"]  # 240 subjects: Dice 0.72, lesion F1 0.82, volume r 0.98 (docs/cohorts.md)
    assert visible["dice"] >= 0.5 and visible["volume_r"] >= 0.9 and visible["lesion_f1"] >= 0.55, res
    assert min(res[m]["volume_r"] for m in ("FLAIR", "T2", "PD")) >= 0.9, res
    assert res["T1"]["dice"] < 0.2  # T1 lesions are near-isointense: the network does not claim to see them
