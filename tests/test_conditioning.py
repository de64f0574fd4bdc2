"""Attribute tokens: Fourier features of the numbers, attribute dropout, and a model trained with both."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from generators.ldm3d.conditioning import (N_ATTR, N_FEAT, STRUCTURE_KEYS, attribute_features, default_stats,
                                           drop_attributes, missing_features, n_features)
from tests._helpers import TINY, tiny_cohort, tiny_config

PARSED = {"modality": "T2", "sex": "F", "age": 70.0, "volumes": {"lateral_ventricles": 40.0},
          "percentiles": {"lateral_ventricles": 90.0}, "qualitative": {"lateral_ventricles": "large"}}
STATS = {**default_stats(), "age": (50.0, 10.0), "lateral_ventricles": (30.0, 5.0)}


def test_fourier_features_are_sin_cos_of_the_numbers_and_zero_where_missing():
    base = attribute_features(PARSED, STATS)
    f = attribute_features(PARSED, STATS, fourier=3)
    assert base.shape == (N_ATTR, N_FEAT) and f.shape == (N_ATTR, n_features(3)) == (N_ATTR, N_FEAT + 12)
    np.testing.assert_array_equal(f[:, :N_FEAT], base)  # the linear features are unchanged
    w = math.pi * 2.0 ** np.arange(3) / 4.0
    z_age, j = 2.0, 3 + STRUCTURE_KEYS.index("lateral_ventricles")
    np.testing.assert_allclose(f[2, 6:12], np.stack([np.sin(w * z_age), np.cos(w * z_age)], 1).reshape(-1), atol=1e-6)
    z_vol, pct = 2.0, (90.0 - 50.0) / 29.0
    np.testing.assert_allclose(f[j, 6:12], np.stack([np.sin(w * z_vol), np.cos(w * z_vol)], 1).reshape(-1), atol=1e-6)
    np.testing.assert_allclose(f[j, 12:18], np.stack([np.sin(w * pct), np.cos(w * pct)], 1).reshape(-1), atol=1e-6)
    assert not f[:2, N_FEAT:].any()  # modality and sex carry no number
    other = [3 + i for i, k in enumerate(STRUCTURE_KEYS) if k != "lateral_ventricles"]
    assert not f[other, N_FEAT:].any()  # not given: no Fourier features (the missing flags say so)
    # nearby ages are far apart in the highest frequency, not in the linear feature alone
    g = attribute_features({**PARSED, "age": 72.0}, STATS, fourier=3)
    assert abs(g[2, 0] - f[2, 0]) == pytest.approx(0.2) and np.abs(g[2, 6:] - f[2, 6:]).max() > 0.5


def test_attribute_dropout_replaces_tokens_by_their_not_given_features():
    attrs = torch.from_numpy(np.stack([attribute_features(PARSED, STATS, 2)] * 64))
    missing = torch.from_numpy(missing_features(2))
    assert drop_attributes(attrs, 0.0, torch.Generator().manual_seed(0)) is attrs
    all_dropped = drop_attributes(attrs, 0.999999, torch.Generator().manual_seed(0))
    assert torch.equal(all_dropped, missing[None].expand_as(attrs))
    half = drop_attributes(attrs, 0.5, torch.Generator().manual_seed(1))
    dropped = (half == missing[None]).all(-1) & ~(attrs == missing[None]).all(-1)
    kept = (half == attrs).all(-1)
    assert bool((dropped | kept).all())  # whole tokens, never a mix
    changeable = ~(attrs == missing[None]).all(-1)
    assert 0.4 < float(dropped.sum()) / float(changeable.sum()) < 0.6
    again = drop_attributes(attrs, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(again, half)  # seeded


def test_a_model_with_fourier_features_and_attribute_dropout_trains_and_samples(tmp_path):
    from generators.base import GeneratorContext, Prompt
    from generators.ldm3d.checkpoint import load_checkpoint
    from generators.ldm3d.config import ConfigError, Ldm3dConfig
    from generators.ldm3d.generator import Ldm3dGenerator
    from generators.ldm3d.train import train

    d = tiny_config("ldm3d-tiny-fourier", ae_steps=2, ae_batch=2, diff_steps=3, diff_batch=2)
    d["conditioning"].update(fourier_features=2, attribute_dropout=0.3)
    cfg = Ldm3dConfig.from_dict(d)
    cohort = tiny_cohort(tmp_path / "cohort")
    train(cohort, cfg, tmp_path / "run", stage="all", quiet=True)
    loaded = load_checkpoint(tmp_path / "run" / "ldm3d_last.safetensors")
    assert loaded.model.conditioner.attr_weight.shape[1] == n_features(2)
    gen = Ldm3dGenerator(GeneratorContext(cohort=cohort, grid=TINY, quiet=True),
                         checkpoint=str(tmp_path / "run" / "ldm3d_last.safetensors"), steps=3)
    out = gen.generate([Prompt("T1-weighted brain MRI of a 70-year-old female.")], seed=0)
    assert out.volumes.shape == (1, 1, *TINY.shape) and np.isfinite(out.volumes).all()
    with pytest.raises(ConfigError, match="attribute_dropout=1.0 must be in"):
        Ldm3dConfig.from_dict({**d, "conditioning": {**d["conditioning"], "attribute_dropout": 1.0}})
