"""Baseline generators (pca, slice2d, ldm3d-uncond) and the through-plane consistency metric."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage

from cohorts.atlas import load_priors
from cohorts.captions import parse_caption
from cohorts.grid import GRIDS
from cohorts.phantom import PhantomCohort
from cohorts.subject import Cohort
from generators.base import GeneratorContext, Prompt
from metrics.base import EvalSets
from metrics.consistency import ThroughPlaneConsistency, adjacent_slice_ncc, through_plane_statistic
from metrics.functional.tissue import classify_modality, core_masks, tissue_means, ventricular_csf_ml
from tests._helpers import OTHER, PROMPT, TINY, tiny_cohort, tiny_config

GRID = GRIDS["3mm"]
N = 80  # the same cohort (home, n, seed) as tests/test_conformance.py: built once per session


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    home = tmp_path_factory.getbasetemp() / "bgb_home"
    return PhantomCohort.get("3mm", home=home, n_subjects=N, seed=0, workers=2, quiet=True)


@pytest.fixture(scope="module")
def prompts(cohort) -> list[Prompt]:
    test = sorted(cohort.split("test"), key=lambda s: s.subject_id)[:8]
    return [Prompt(s.caption, parse_caption(s.caption), s.subject_id) for s in test]


@pytest.fixture(scope="module")
def atlas_masks(tmp_path_factory):
    pri = load_priors(GRID.voxel_size, GRID.shape, GRID.affine, home=tmp_path_factory.getbasetemp() / "bgb_home")
    vent = pri.structure_mask("lateral_ventricles")
    return core_masks(pri.gm, pri.wm, vent), vent


# ------------------------------------------------------------------------------------------- pca
@pytest.fixture(scope="module")
def pca(cohort):
    from generators.pca import PCAGenerator

    return PCAGenerator(GeneratorContext(cohort=cohort, grid=GRID, quiet=True))


def test_pca_shape_range_determinism(pca, prompts, cohort):
    a = pca.generate(prompts, seed=3)
    a.validate(len(prompts), GRID.shape, "pca")
    b = pca.generate(prompts, seed=3)
    np.testing.assert_array_equal(a.volumes, b.volumes)
    c = pca.generate(prompts, seed=4)
    assert not np.allclose(a.volumes, c.volumes)
    # sample i depends on its own seed only: a sub-batch reproduces the same volumes
    np.testing.assert_array_equal(pca.generate(prompts[:3], seed=3).volumes, a.volumes[:3])
    v = a.volumes
    assert v.min() >= 0.0 and v.max() <= 1.0 and v.dtype == np.float32
    support = pca.support
    assert (v[:, 0][:, ~support] == 0).all()
    assert 0.2 < float(v[:, 0][:, cohort.brain_mask()].mean()) < 0.8
    info = pca.info()
    assert set(info["models"]) >= {"T1", "T2", "PD", "FLAIR", "*"}
    assert all(m["components"] == min(24, m["n_train"] - 1) for m in info["models"].values())


def test_pca_follows_requested_modality(pca, prompts, atlas_masks):
    masks, _ = atlas_masks
    out = pca.generate(prompts, seed=0).volumes
    means = tissue_means(out, masks)
    got = [classify_modality({t: means[t][i] for t in means}) for i in range(len(prompts))]
    assert got == [p.attributes["modality"] for p in prompts]
    # the same caption with another modality word gives that modality
    swapped = [Prompt(p.text.replace("T1-weighted", "T2-weighted"), parse_caption(
        p.text.replace("T1-weighted", "T2-weighted"))) for p in prompts if p.attributes["modality"] == "T1"]
    if swapped:
        v = pca.generate(swapped, seed=0).volumes
        m = tissue_means(v, masks)
        assert all(classify_modality({t: m[t][i] for t in m}) == "T2" for i in range(len(swapped)))


def test_pca_follows_requested_ventricles(pca, atlas_masks, cohort):
    """Old subject with large ventricles vs young with small: the measured ventricular CSF follows."""
    masks, vent = atlas_masks
    vols = np.array([s.volumes["lateral_ventricles"] for s in cohort.split("train")])
    lo, hi = np.percentile(vols, [5, 95])

    def prompt(age, v):
        text = f"T1-weighted brain MRI of a {age}-year-old man. Lateral ventricles {v:.1f} mL."
        return Prompt(text, parse_caption(text))

    out = pca.generate([prompt(25, lo), prompt(85, hi)], seed=0, ).volumes
    small, large = ventricular_csf_ml(out, vent, masks, GRID.voxel_volume_ml)
    assert large > small * 1.3, (small, large)


def test_pca_bad_args(cohort):
    from generators.pca import PCAGenerator

    with pytest.raises(ValueError, match="n_components"):
        PCAGenerator(GeneratorContext(cohort=cohort, grid=GRID), n_components=0)


# ------------------------------------------------------------------------------ through-plane
def _slice_noised(vols: np.ndarray, mask: np.ndarray, amp: float, seed: int = 0) -> np.ndarray:
    """Each axial slice gets its own smooth in-plane perturbation (independent across slices)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(vols.shape).astype(np.float32), (0, 0, 2, 2, 0))
    noise /= noise.std()
    return np.clip(vols + amp * noise * mask, 0, 1).astype(np.float32)


def _sets(gen, ref, floor, mask) -> EvalSets:
    return EvalSets(generated=gen, reference=ref, floor=floor, brain_mask=mask, features=lambda e, s: None)


@pytest.fixture(scope="module")
def real(cohort):
    ref = cohort.load_volumes(sorted(cohort.split("test"), key=lambda s: s.subject_id)[:16])
    other = cohort.load_volumes(sorted(cohort.split("train"), key=lambda s: s.subject_id)[:16])
    return ref, other, cohort.brain_mask()


def test_adjacent_slice_ncc_known_values():
    x = np.zeros((4, 5, 6))
    x[:] = np.arange(6)[None, None, :] + np.arange(5)[None, :, None] * 10
    assert adjacent_slice_ncc(x, 0, min_voxels=1) == pytest.approx(1.0)  # identical slices along x
    assert np.isnan(adjacent_slice_ncc(x, 0))  # every pair below min_voxels=50
    rng = np.random.default_rng(0)
    y = rng.standard_normal((40, 40, 40))
    assert abs(adjacent_slice_ncc(y, 2)) < 0.05  # independent slices


def test_real_volumes_sit_at_the_floor(real):
    ref, other, mask = real
    res = ThroughPlaneConsistency().compute(_sets(other, ref, other, mask), seed=0)
    assert res.value == pytest.approx(res.floor) and res.value < 0.1
    same = ThroughPlaneConsistency().compute(_sets(ref, ref, other, mask), seed=0)
    assert same.value == 0.0
    ncc = res.details["mean_adjacent_ncc"]["reference"]
    assert 0.6 < ncc["axial"] < 0.95 and 0.6 < ncc["sagittal"] < 0.95


def test_slice_wise_noise_is_exposed_isotropic_noise_is_not(real):
    ref, other, mask = real
    metric = ThroughPlaneConsistency()
    floor = metric.compute(_sets(other, ref, other, mask), seed=0)
    sliced = metric.compute(_sets(_slice_noised(other, mask, 0.05), ref, other, mask), seed=0)
    assert sliced.value > 0.15 and sliced.value > 3 * floor.floor
    assert sliced.details["signed_difference"] > 0 and sliced.ci_low > floor.floor
    rng = np.random.default_rng(1)
    iso = np.clip(other + 0.05 * rng.standard_normal(other.shape).astype(np.float32) * mask, 0, 1)
    iso_res = metric.compute(_sets(iso, ref, other, mask), seed=0)
    assert iso_res.value < 0.1  # the log-ratio cancels noise that decorrelates every axis alike
    # the stacking axis matters: the same perturbation seen from the sagittal axis is not slice-wise
    sag = ThroughPlaneConsistency(stack_axis=0).compute(_sets(_slice_noised(other, mask, 0.05), ref, other, mask), seed=0)
    assert sag.details["signed_difference"] < 0


def test_through_plane_statistic_shapes(real):
    ref, _, mask = real
    s, ncc = through_plane_statistic(ref[:2], mask)
    assert s.shape == (2,) and ncc.shape == (2, 3)
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        through_plane_statistic(ref[:, 0], mask)
    with pytest.raises(ValueError, match="stack_axis"):
        ThroughPlaneConsistency(stack_axis=3)


# ------------------------------------------------------------------------------ tiny 3D/2D LDMs
SLICE2D_TINY = tiny_config("slice2d-tiny-test", ae_steps=3, ae_batch=8, diff_steps=3, diff_batch=8, slice_axis=2)
LDM3D_TINY = tiny_config("ldm3d-tiny-test", ae_steps=2, ae_batch=2, diff_steps=2, diff_batch=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return tiny_cohort(root / "cohort", detailed=False), root


@pytest.fixture(scope="module")
def slice2d_ckpt(tiny):
    from generators.slice2d.model import Slice2dConfig
    from generators.slice2d.train import train

    cohort, root = tiny
    summary = train(cohort, Slice2dConfig.from_dict(SLICE2D_TINY), root / "s2d", quiet=True,
                    ship=root / "s2d_shipped.safetensors")
    return summary, root / "s2d" / "slice2d_last.safetensors", root / "s2d_shipped.safetensors"


def test_slice2d_training_writes_checkpoints_with_provenance(slice2d_ckpt, tiny):
    from generators.slice2d.model import read_metadata

    summary, last, shipped = slice2d_ckpt
    assert summary["autoencoder"]["steps"] == 3 and summary["diffusion"]["steps"] == 3
    meta = read_metadata(shipped)
    assert meta["dtype"] == "float16" and meta["grid_shape"] == [16, 16, 24]
    assert meta["cohort"]["content_hash"] == tiny[0].content_hash and meta["cohort"]["n_train"] == 4
    assert meta["training"]["diffusion"]["steps"] == 3 and meta["text_encoder"]["fingerprint"]
    assert read_metadata(last)["dtype"] == "float32"


def test_slice2d_generator_shape_determinism_and_slicing(slice2d_ckpt, tiny):
    from generators.slice2d import Slice2dGenerator

    cohort, _ = tiny
    gen = Slice2dGenerator(GeneratorContext(cohort=cohort, grid=TINY, quiet=True), checkpoint=str(slice2d_ckpt[2]),
                           steps=3, batch_size=2)
    ps = [Prompt(PROMPT, parse_caption(PROMPT)), Prompt(OTHER, parse_caption(OTHER)), Prompt(PROMPT, {})]
    a = gen.generate(ps, seed=7)
    a.validate(3, TINY.shape, "slice2d")
    np.testing.assert_allclose(gen.generate(ps[:1], seed=7).volumes, a.volumes[:1], atol=1e-5)  # batch-invariant
    assert not np.allclose(a.volumes[0], a.volumes[2])  # same caption, other seed
    mask = cohort.brain_mask()
    assert (a.volumes[:, 0][:, ~mask] == 0).all()
    info = gen.info()
    assert info["n_slices"] == 24 and info["slice_axis"] == 2 and len(info["checkpoint_sha256"]) == 64
    assert info["prediction"] == "v"
    # to_slices / to_volumes are inverse
    import torch

    v = torch.arange(2 * 16 * 16 * 24, dtype=torch.float32).reshape(2, 1, 16, 16, 24)
    s = gen.model.to_slices(v)
    assert s.shape == (48, 1, 16, 16) and torch.equal(s[1, 0], v[0, 0, :, :, 1])
    assert torch.equal(gen.model.to_volumes(s), v)


def test_slice2d_refuses_other_grid_and_unknown_config_key(slice2d_ckpt, tiny):
    from generators.slice2d import Slice2dGenerator
    from generators.slice2d.model import Slice2dConfig, Slice2dError

    with pytest.raises(Slice2dError, match="grid"):
        Slice2dGenerator(GeneratorContext(cohort=tiny[0], grid=GRID), checkpoint=str(slice2d_ckpt[2]))
    with pytest.raises(Slice2dError, match="unknown key 'unet.chanels'"):
        Slice2dConfig.from_dict({"unet": {"chanels": [8]}})
    with pytest.raises(Slice2dError, match="checkpoint not found"):
        Slice2dGenerator(GeneratorContext(cohort=tiny[0], grid=TINY), checkpoint="/nonexistent.safetensors")


def test_slice2d_checkpoint_without_prediction_key_loads_as_eps(slice2d_ckpt, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from generators.slice2d.model import load_checkpoint

    last = slice2d_ckpt[1]
    model, meta = load_checkpoint(last)
    assert meta["config"]["prediction"] == "v" and model.config.prediction == "v"  # stored key wins
    with safe_open(str(last), framework="pt") as f:  # a checkpoint written before the key existed
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    legacy_meta = json.loads(header["slice2d"])
    del legacy_meta["config"]["prediction"]
    legacy = tmp_path / "legacy.safetensors"
    save_file(tensors, str(legacy), metadata={"format": "pt", "slice2d": json.dumps(legacy_meta)})
    model, meta = load_checkpoint(legacy)
    assert model.config.prediction == "eps" and "prediction" not in meta["config"]


def test_v_prediction_converts_back_to_the_noise():
    import torch

    from generators.slice2d.model import load_config, make_scheduler, v_to_eps

    sch = make_scheduler(load_config("phantom_3mm"))
    g = torch.Generator().manual_seed(0)
    z, n = torch.randn(5, 4, 12, 16, generator=g), torch.randn(5, 4, 12, 16, generator=g)
    t = torch.tensor([0, 10, 500, 900, 999])
    v = sch.get_velocity(z, n, t)
    torch.testing.assert_close(v_to_eps(v, sch.add_noise(z, n, t), t, sch.alphas_cumprod), n, atol=2e-5, rtol=0)


def test_bundled_slice2d_config_loads():
    from generators.slice2d.model import Slice2d, load_config

    cfg = load_config("phantom_3mm")
    assert cfg.prediction == "v"
    model = Slice2d(cfg, GRID.shape)
    assert model.slice_shape == (48, 64) and model.n_slices == 56 and model.latent_shape == (4, 12, 16)


@pytest.fixture(scope="module")
def ldm3d_ckpt(tiny):
    from generators.ldm3d.config import Ldm3dConfig
    from generators.ldm3d.train import train

    cohort, root = tiny
    train(cohort, Ldm3dConfig.from_dict(LDM3D_TINY), root / "ldm", stage="all", quiet=True)
    return root / "ldm" / "ldm3d_last.safetensors"


def test_ldm3d_uncond_ignores_the_prompt_and_equals_guidance_zero(ldm3d_ckpt, tiny):
    from generators.ldm3d.generator import Ldm3dGenerator
    from generators.ldm3d_uncond import Ldm3dUncondGenerator

    ctx = GeneratorContext(cohort=tiny[0], grid=TINY, quiet=True)
    unc = Ldm3dUncondGenerator(ctx, checkpoint=str(ldm3d_ckpt), steps=3)
    a = unc.generate([Prompt(PROMPT), Prompt(OTHER)], seed=5)
    b = unc.generate([Prompt(OTHER), Prompt(PROMPT)], seed=5)
    np.testing.assert_array_equal(a.volumes, b.volumes)  # the caption is not read
    cond = Ldm3dGenerator(ctx, checkpoint=str(ldm3d_ckpt), steps=3, guidance=0.0)
    c = cond.generate([Prompt(PROMPT), Prompt(OTHER)], seed=5)
    np.testing.assert_allclose(a.volumes, c.volumes, atol=1e-4)  # == eps_uncond path of classifier-free guidance
    info = unc.info()
    assert info["name"] == "ldm3d-uncond" and info["guidance"] == 0.0 and info["caption_dropout_in_training"] == 0.15


def test_ldm3d_recon_is_the_autoencoder_round_trip_of_the_matched_real_volume(ldm3d_ckpt, tiny):
    import torch

    from generators.ldm3d.checkpoint import load_checkpoint
    from generators.ldm3d_recon import Ldm3dReconGenerator

    cohort = tiny[0]
    test = cohort.split("test")
    ctx = GeneratorContext(cohort=cohort, grid=TINY, quiet=True)
    gen = Ldm3dReconGenerator(ctx, checkpoint=str(ldm3d_ckpt), batch_size=1)
    prompts = [Prompt("any text", subject_id=s.subject_id) for s in test]
    out = gen.generate(prompts, seed=0)
    model = load_checkpoint(ldm3d_ckpt).model
    x = torch.from_numpy(cohort.load_volumes(test))
    with torch.no_grad():  # independent of the generator: encode the mean, decode, clip, mask
        expected = model.decode(model.encode(x)).clamp(0, 1).numpy() * cohort.brain_mask()[None, None]
    np.testing.assert_allclose(out.volumes, expected, atol=1e-5)
    assert out.volumes[:, 0][:, ~cohort.brain_mask()].max() == 0.0
    assert out.latents.shape == (len(test), *model.latent_shape)
    swapped = gen.generate(prompts[::-1], seed=3).volumes[::-1]  # no caption, no seed: the volume decides
    np.testing.assert_allclose(swapped, out.volumes, atol=1e-5)
    assert gen.info()["role"] == "oracle"  # reads the held-out volumes: never starred
    with pytest.raises(ValueError, match="no reference subject id"):
        gen.generate([Prompt("a caption only")], seed=0)


def test_baselines_are_registered():
    from bench import registry

    names = registry.generators.names()
    assert {"pca", "slice2d", "ldm3d-uncond", "ldm3d-recon"} <= set(names)
    assert registry.metrics.get("through_plane") is ThroughPlaneConsistency
    assert registry.metrics.get("conformance").__name__ == "Conformance"
    from bench.suite import load_suite

    for suite in ("quick", "full"):  # full includes quick's metrics
        keys = [m.name for m in load_suite(suite).metrics]
        assert "conformance" in keys and "through_plane" in keys
