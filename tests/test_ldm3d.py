"""ldm3d on a tiny grid: training/resume, checkpoints, determinism, guidance, explain (< 1 min)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cohorts.grid import Grid
from generators.base import GeneratorContext, Prompt
from tests._helpers import OTHER, PROMPT, TINY, tiny_cohort, tiny_config

TINY_CONFIG = tiny_config("ldm3d-tiny-test", ae_steps=3, ae_batch=2, diff_steps=3, diff_batch=4, prediction="v")
# the options of the shipped config: global attribute conditioning, Min-SNR weighting, posterior-mean latents
TINY_CONFIG["unet"]["global_conditioning"] = True
TINY_CONFIG["training"]["diffusion"].update(snr_gamma=5.0, latents="mean")
TINY_CONFIG["training"]["autoencoder"].update(lr=2e-4, min_lr=1e-5)  # cosine decay, as shipped


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from generators.ldm3d.config import Ldm3dConfig
    from generators.ldm3d.train import train

    root = tmp_path_factory.mktemp("ldm3d")
    cohort = tiny_cohort(root / "cohort")
    cfg = Ldm3dConfig.from_dict(TINY_CONFIG)
    out = root / "run"
    summary = train(cohort, cfg, out, stage="all", quiet=True, ship=root / "shipped.safetensors")
    return {"cohort": cohort, "config": cfg, "out": out, "summary": summary, "root": root,
            "ckpt": out / "ldm3d_last.safetensors", "shipped": root / "shipped.safetensors"}


def _generator(trained, **kw):
    from generators.ldm3d.generator import Ldm3dGenerator

    ctx = GeneratorContext(cohort=trained["cohort"], grid=TINY, quiet=True)
    kw.setdefault("steps", 4)
    return Ldm3dGenerator(ctx, checkpoint=str(trained["ckpt"]), **kw)


# ----------------------------------------------------------------------------- config
def test_bundled_config_loads_and_unknown_key_is_named(tmp_path):
    from generators.ldm3d.config import ConfigError, Ldm3dConfig, load_config

    cfg = load_config("phantom_3mm")
    assert cfg.grid == "3mm" and cfg.unet.use_flash_attention
    assert cfg.prediction == "v" and cfg.unet.global_conditioning and cfg.training.diffusion.latents == "mean"
    with pytest.raises(ConfigError, match=r"prediction='x0'"):
        Ldm3dConfig.from_dict({"prediction": "x0"})
    with pytest.raises(ConfigError, match=r"unet\.chanels"):
        Ldm3dConfig.from_dict({"unet": {"chanels": [8, 16]}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  diffusion:\n    stpes: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*training\.diffusion\.stpes"):
        load_config(bad)


# ----------------------------------------------------------------------------- training
def test_cosine_learning_rate_of_the_autoencoder_stage(trained):
    from generators.common.training import cosine_lr, load_state

    assert cosine_lr(2e-4, 1e-5, 0, 10) == pytest.approx(2e-4)
    assert cosine_lr(2e-4, 1e-5, 5, 10) == pytest.approx((2e-4 + 1e-5) / 2)
    assert cosine_lr(2e-4, 1e-5, 10, 10) == pytest.approx(1e-5) == cosine_lr(2e-4, 1e-5, 99, 10)
    # the last of the 3 steps ran at the rate of step index 2
    st = load_state(trained["out"] / "state_autoencoder.pt")
    assert st["optimizer"]["param_groups"][0]["lr"] == pytest.approx(cosine_lr(2e-4, 1e-5, 2, 3))


def test_training_smoke_checkpoint_and_resume(trained):
    from generators.ldm3d.checkpoint import load_checkpoint, read_metadata
    from generators.ldm3d.config import Ldm3dConfig
    from generators.ldm3d.train import train

    out = trained["out"]
    assert trained["summary"]["autoencoder"]["steps"] == 3 and trained["summary"]["diffusion"]["steps"] == 3
    for f in ("state_autoencoder.pt", "state_diffusion.pt", "latents.pt", "loss_autoencoder.csv",
              "loss_diffusion.csv", "loss_diffusion.png", "ldm3d_last.safetensors"):
        assert (out / f).exists(), f
    meta = read_metadata(trained["ckpt"])
    assert meta["cohort"]["content_hash"] == trained["cohort"].content_hash
    assert meta["cohort"]["n_train"] == 4 and meta["training"]["diffusion"]["steps"] == 3
    assert meta["config"]["name"] == "ldm3d-tiny-test" and meta["latent_scale"] > 0
    assert meta["config"]["prediction"] == "v" and meta["training"]["diffusion"]["latents"] == "mean"
    assert len(meta["text_encoder"]["fingerprint"]) == 64
    loaded = load_checkpoint(trained["ckpt"])
    assert float(loaded.model.latent_scale) == pytest.approx(meta["latent_scale"])
    # the autoencoder alone, exported at the end of stage 1: same autoencoder, untrained UNet, 0 diffusion steps
    ae_only = load_checkpoint(out / "autoencoder_only.safetensors")
    assert ae_only.meta["training"]["diffusion"] == {"steps": 0, "untrained": True}
    assert ae_only.meta["training"]["autoencoder"]["steps"] == 3
    for k, v in ae_only.model.autoencoder.state_dict().items():
        assert torch.equal(v, loaded.model.autoencoder.state_dict()[k]), k
    assert float(ae_only.model.latent_scale) == pytest.approx(meta["latent_scale"])
    shipped = load_checkpoint(trained["shipped"])  # float16 copy loads into float32
    assert read_metadata(trained["shipped"])["dtype"] == "float16"
    assert next(shipped.model.parameters()).dtype == torch.float32

    # resume a copy to 5 diffusion steps: continues from step 3, history extends
    import shutil

    out2 = trained["root"] / "resumed"
    shutil.copytree(out, out2)
    d = json.loads(json.dumps(trained["config"].to_dict()))
    d["training"]["diffusion"]["steps"] = 5
    s = train(trained["cohort"], Ldm3dConfig.from_dict(d), out2, stage="diffusion", resume=True, quiet=True)
    assert s["diffusion"]["steps"] == 5
    st = torch.load(out2 / "state_diffusion.pt", weights_only=True)
    assert st["step"] == 5 and len(st["history"]) == 5 and st["history"][:3] == torch.load(
        out / "state_diffusion.pt", weights_only=True)["history"]


def test_mismatched_checkpoint_is_refused(trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from generators.ldm3d.checkpoint import CheckpointError, load_checkpoint

    with safe_open(str(trained["ckpt"]), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["ldm3d"])
    meta["config"]["conditioning"]["context_dim"] = 32  # weights were trained with 16
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"format": "pt", "ldm3d": json.dumps(meta)})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    msg = str(e.value)
    assert "bad.safetensors" in msg and "conditioner.attr_bias" in msg and "(15, 16)" in msg and "(15, 32)" in msg


# ----------------------------------------------------------------------------- sampling
def test_output_shape_dtype_range_mask_and_info(trained):
    g = _generator(trained)
    out = g.generate([Prompt(PROMPT), Prompt(OTHER)], seed=1)
    out.validate(2, TINY.shape, "ldm3d")
    assert out.latents.shape == (2, 2, 4, 4, 6)
    mask = trained["cohort"].brain_mask()
    assert np.all(out.volumes[:, 0][:, ~mask] == 0)
    info = g.info()
    assert len(info["checkpoint_sha256"]) == 64 and info["scheduler"] == "dpm++2m" and info["steps"] == 4
    assert info["param_counts"]["unet"] > 0 and info["training"]["cohort"]["n_train"] == 4
    json.dumps(info)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpm++2m"])
def test_seed_determinism_and_batch_invariance(trained, scheduler):
    g1 = _generator(trained, scheduler=scheduler, batch_size=1)
    g3 = _generator(trained, scheduler=scheduler, batch_size=3)
    prompts = [Prompt(PROMPT), Prompt(OTHER), Prompt(PROMPT)]
    ra = g3.generate(prompts, seed=7)
    a, za = ra.volumes, ra.latents
    b = g3.generate(prompts, seed=7).volumes
    rc = g1.generate(prompts, seed=7)  # one prompt per batch
    alone = g1.generate([Prompt(PROMPT)], seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(rc.volumes, a, atol=1e-5)
    np.testing.assert_allclose(rc.latents, za, atol=1e-4)
    np.testing.assert_allclose(alone.volumes[0], a[0], atol=1e-5)
    np.testing.assert_allclose(alone.latents[0], za[0], atol=1e-4)
    assert np.abs(za[0] - za[2]).max() > 1e-2  # same prompt, different per-sample seed
    zd = g3.generate(prompts, seed=8).latents
    assert np.abs(za - zd).max() > 1e-2  # different run seed


def test_guidance_one_equals_conditional_only(trained):
    g = _generator(trained, guidance=1.0)
    v_guided, z_guided = g.sample([PROMPT, OTHER], [3, 4])
    v_cond, z_cond = g.sample([PROMPT, OTHER], [3, 4], guidance=None)
    np.testing.assert_allclose(z_guided, z_cond, atol=1e-5)
    np.testing.assert_allclose(v_guided, v_cond, atol=1e-5)
    with torch.no_grad():  # a 3-step model barely uses its zero-initialised output layers: perturb them
        gen = torch.Generator().manual_seed(0)
        for name, p in g.model.unet.named_parameters():
            if "attn2" in name or "proj_out" in name or "class_embedding" in name or name.startswith("out."):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    _, z_c = g.sample([PROMPT, OTHER], [3, 4], guidance=None)
    _, z_cfg = g.sample([PROMPT, OTHER], [3, 4], guidance=3.0)
    assert np.abs(z_cfg - z_c).max() > 1e-4  # the guidance scale does act


def test_grid_mismatch_is_refused(trained):
    from generators.ldm3d.checkpoint import CheckpointError
    from generators.ldm3d.generator import Ldm3dGenerator

    other = Grid("tiny2", 6.0, (16, 16, 16))
    with pytest.raises(CheckpointError, match="grid"):
        Ldm3dGenerator(GeneratorContext(cohort=trained["cohort"], grid=other), checkpoint=str(trained["ckpt"]))


def test_latent_encoder(trained):
    from generators.ldm3d.generator import make_latent_encoder

    fn, dim, fp = make_latent_encoder(trained["ckpt"])
    vols = trained["cohort"].load_volumes(trained["cohort"].subjects[:3])
    f = fn(vols)
    assert f.shape == (3, dim) and dim == 2 * 3 * 4 * 4 and f.dtype == np.float32
    np.testing.assert_allclose(fn(vols[:1]), f[:1], atol=1e-5)
    assert fp.startswith("ldm3d-latent:")
    g = _generator(trained)
    assert g.encode(vols).shape == (3, 2, 4, 4, 6)


def test_explain_writes_a_map_per_token(trained, tmp_path):
    from generators.ldm3d.explain import explain

    g = _generator(trained, steps=2)
    index_path = explain(g, PROMPT, tmp_path / "explain", seed=5)
    index = json.loads(index_path.read_text())
    pieces = g.captions.text.tokens(PROMPT)
    text_entries = [e for e in index["tokens"] if e["kind"] == "text"]
    assert [e["token"] for e in text_entries] == pieces
    assert any(e["token"] == "attr:age" for e in index["tokens"])
    for e in index["tokens"]:
        assert (tmp_path / "explain" / e["nifti"]).exists() and (tmp_path / "explain" / e["png"]).exists()
    import nibabel as nib

    m = np.asarray(nib.load(str(tmp_path / "explain" / text_entries[1]["nifti"])).dataobj)
    assert m.shape == TINY.shape and np.isfinite(m).all() and m.max() > 0
    vol = np.asarray(nib.load(str(tmp_path / "explain" / "volume.nii.gz")).dataobj)
    np.testing.assert_allclose(vol, g.generate([Prompt(PROMPT)], seed=5).volumes[0, 0], atol=1e-5)


def test_v_model_eps_is_the_converted_network_output(trained):
    """Samplers see eps: a v-prediction model's eps() = sqrt(a) v + sqrt(1 - a) x_t."""
    from generators.common.networks import v_to_eps

    model = _generator(trained).model
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *model.padded_latent_shape), generator=g)
    ctx = model.conditioner.null(2)
    t = torch.tensor([3, 900])
    with torch.no_grad():
        v = model.net(x, t, ctx)
        eps = model.eps(x, t, ctx)
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(eps, a.sqrt() * v + (1 - a).sqrt() * x)
    torch.testing.assert_close(eps, v_to_eps(v, x, t, model.alphas_cumprod))
