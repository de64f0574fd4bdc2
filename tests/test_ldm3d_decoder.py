"""Sharper ldm3d pieces: decoder fine-tuning (stage 1b), DPM-Solver++(2M), the compute allocation block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests._helpers import tiny_cohort, tiny_config


# ----------------------------------------------------------------------------- sampler
class _GaussianModel:
    """The exact noise predictor of 1-D Gaussian data N(0, s^2), for the samplers' known answer.

    For ``x_t = sqrt(a) x0 + sqrt(1 - a) e`` with ``x0 ~ N(0, s^2)``, ``E[e | x_t] = sqrt(1 - a) x_t /
    (a s^2 + 1 - a)``; the probability-flow ODE keeps ``x_t / sqrt(a s^2 + 1 - a)`` constant, so the exact
    deterministic sample from ``x_T`` is ``x_T s / sqrt(a_T s^2 + 1 - a_T)``.
    """

    def __init__(self, s: float, ac: torch.Tensor):
        self.s, self.ac = s, ac.double()

        class _Null:
            @staticmethod
            def null(b):
                return torch.zeros(b, 1, 1)

        self.conditioner = _Null()

    def eps(self, x, t, ctx):
        a = self.ac[t].view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (1 - a).sqrt() * x / (a * self.s**2 + 1 - a)


@pytest.mark.parametrize("s", [0.5, 2.0])
def test_dpm_solver_2m_solves_the_probability_flow_better_than_ddim(s):
    from generators.ldm3d.sampling import sample_latents, sampling_timesteps
    from monai.networks.schedulers import DDPMScheduler

    ac = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015,
                       beta_end=0.0195).alphas_cumprod.double()
    model = _GaussianModel(s, ac)
    x_t = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64).view(11, 1, 1)
    errors = {}
    for scheduler in ("ddim", "dpm++2m"):
        for steps in (8, 15, 50):
            a_T = float(ac[sampling_timesteps(scheduler, ac, steps)[0]])
            exact = x_t * s / math.sqrt(a_T * s**2 + 1 - a_T)
            out = sample_latents(model, x_t, torch.zeros(11, 1, 1), alphas_cumprod=ac, steps=steps,
                                 scheduler=scheduler, guidance=None)
            errors[scheduler, steps] = float((out - exact).abs().max() / exact.abs().max())
    for steps in (8, 15, 50):  # second order on log-SNR-uniform steps: a fraction of DDIM's error
        assert errors["dpm++2m", steps] < 0.25 * errors["ddim", steps], errors
    assert errors["dpm++2m", 15] < 0.02 and errors["dpm++2m", 50] < errors["dpm++2m", 15], errors


def test_dpm_solver_step_is_ddim_without_history():
    from generators.ldm3d.sampling import dpm_solver_2m_step

    x, x0 = torch.tensor([1.3]), torch.tensor([0.4])
    a_t, a_n = 0.3, 0.6
    eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5
    ddim = a_n**0.5 * x0 + (1 - a_n) ** 0.5 * eps
    hist: list = []
    torch.testing.assert_close(dpm_solver_2m_step(x, x0, a_t, a_n, hist), ddim, rtol=1e-6, atol=1e-7)
    assert len(hist) == 1
    assert torch.equal(dpm_solver_2m_step(x, x0, a_n, 1.0, hist), x0)  # the last step returns the data estimate


# ----------------------------------------------------------------------------- decoder stage
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from generators.ldm3d.config import Ldm3dConfig
    from generators.ldm3d.train import train

    root = tmp_path_factory.mktemp("ldm3d-decoder")
    cohort = tiny_cohort(root / "cohort")
    d = tiny_config("ldm3d-tiny-decoder", ae_steps=2, ae_batch=2, diff_steps=2, diff_batch=4, prediction="v")
    d["training"]["decoder"] = {"steps": 3, "batch_size": 2, "crop": 0, "adv_start": 1, "disc_warmup": 1,
                                "disc_channels": 8, "disc_layers": 2, "perceptual_weight": 1.0, "adv_weight": 0.5,
                                "max_minutes": 0}
    cfg = Ldm3dConfig.from_dict(d)
    train(cohort, cfg, root / "base", stage="all", quiet=True)
    return {"root": root, "cohort": cohort, "config": cfg, "base": root / "base" / "ldm3d_last.safetensors"}


def test_decoder_stage_changes_only_the_decoder_and_keeps_the_diffusion_weights(trained):
    from generators.common.training import load_state
    from generators.ldm3d.checkpoint import load_checkpoint, read_metadata
    from generators.ldm3d.train import train

    out = trained["root"] / "sharp"
    s = train(trained["cohort"], trained["config"], out, stage="decoder", quiet=True, init_from=trained["base"],
              ship=trained["root"] / "sharp16.safetensors")
    assert s["decoder"]["steps"] == 3 and s["decoder"]["done"]
    assert s["decoder"]["perceptual"] > 0 and s["decoder"]["disc"] > 0  # both extra losses were active
    base, new = load_checkpoint(trained["base"]).model, load_checkpoint(out / "ldm3d_last.safetensors").model
    b, n = base.state_dict(), new.state_dict()
    changed = {k for k in b if not torch.equal(b[k], n[k])}
    assert changed and all(k.startswith(("autoencoder.decoder.", "autoencoder.post_quant_conv.")) for k in changed)
    assert any(k.startswith("autoencoder.decoder.") for k in changed)
    meta = read_metadata(out / "ldm3d_last.safetensors")
    assert meta["training"]["decoder"]["steps"] == 3
    assert meta["training"]["decoder"]["init_from"]["sha256"] == load_checkpoint(trained["base"]).sha256
    assert meta["training"]["diffusion"] == read_metadata(trained["base"])["training"]["diffusion"]
    hist = load_state(out / "state_decoder.pt")["history"]
    assert [h[0] for h in hist] == [1, 2, 3] and hist[0][6] == 0.0 and hist[1][6] > 0  # G enters at adv_start

    # resume to 4 steps: continues from step 3 with the same history
    d = trained["config"].to_dict()
    d["training"]["decoder"]["steps"] = 4
    from generators.ldm3d.config import Ldm3dConfig

    s2 = train(trained["cohort"], Ldm3dConfig.from_dict(d), out, stage="decoder", quiet=True,
               init_from=trained["base"], resume=True)
    assert s2["decoder"]["steps"] == 4 and load_state(out / "state_decoder.pt")["history"][:3] == hist


def test_whole_autoencoder_stage_moves_the_encoder_and_the_latents(trained):
    """``train_encoder``: stage 1b trains encoder and decoder; the exported autoencoder differs from stage 1's
    on both sides, and the diffusion stage re-encodes (its latent cache is keyed on both stages' steps)."""
    import shutil

    from generators.common.training import load_state
    from generators.ldm3d.checkpoint import load_checkpoint
    from generators.ldm3d.config import ConfigError, Ldm3dConfig
    from generators.ldm3d.train import train

    d = trained["config"].to_dict()
    d["training"]["decoder"]["train_encoder"] = True
    d["training"]["decoder"]["crop"] = 4
    with pytest.raises(ConfigError, match="crop: 0"):
        Ldm3dConfig.from_dict(d)
    d["training"]["decoder"]["crop"] = 0
    cfg = Ldm3dConfig.from_dict(d)
    out = trained["root"] / "whole"
    out.mkdir()
    shutil.copy(trained["root"] / "base" / "state_autoencoder.pt", out / "state_autoencoder.pt")
    s = train(trained["cohort"], cfg, out, stage="decoder", quiet=True)
    assert s["decoder"]["steps"] == 3 and s["decoder"]["done"]
    stage1 = load_state(out / "state_autoencoder.pt")["autoencoder"]
    exported = load_checkpoint(out / "autoencoder_only.safetensors").model.autoencoder.state_dict()
    changed = {k for k in stage1 if not torch.equal(stage1[k], exported[k].to(stage1[k].dtype))}
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)
    assert load_state(out / "latents.pt")["ae_step"] == f"{load_state(out / 'state_autoencoder.pt')['step']}+3"


def test_init_from_refuses_another_architecture(trained, tmp_path):
    from generators.ldm3d.config import Ldm3dConfig
    from generators.ldm3d.train import train

    d = trained["config"].to_dict()
    d["autoencoder"]["latent_channels"] = 3
    with pytest.raises(RuntimeError, match="autoencoder or grid differs"):
        train(trained["cohort"], Ldm3dConfig.from_dict(d), tmp_path / "x", stage="decoder", quiet=True,
              init_from=trained["base"])


def test_diffusion_warm_start_copies_unet_and_conditioner_only(trained, tmp_path):
    """``init_diffusion_from``: the diffusion stage starts from another checkpoint's UNet and conditioner
    (here with a zero learning rate, so the exported EMA UNet is the source's), keeps this folder's
    autoencoder, and names the source in the checkpoint's metadata, also after a resume."""
    import shutil

    from generators.ldm3d.checkpoint import load_checkpoint, read_metadata
    from generators.ldm3d.config import Ldm3dConfig
    from generators.ldm3d.train import train

    d = trained["config"].to_dict()
    d["training"]["diffusion"]["lr"] = 0.0
    d["training"]["seed"] = 1  # another initialisation than the source's
    cfg = Ldm3dConfig.from_dict(d)
    base = load_checkpoint(trained["base"])
    unet = {k: v for k, v in base.model.state_dict().items() if k.startswith(("unet.", "conditioner."))}

    def unet_gap(path):
        sd = load_checkpoint(path).model.state_dict()
        return max(float((sd[k] - v).abs().max()) for k, v in unet.items())

    for name, init in (("warm", trained["base"]), ("cold", None)):
        out = tmp_path / name
        out.mkdir()
        shutil.copy(trained["root"] / "base" / "state_autoencoder.pt", out / "state_autoencoder.pt")
        train(trained["cohort"], cfg, out, stage="diffusion", quiet=True, init_diffusion_from=init)
    assert unet_gap(tmp_path / "warm" / "ldm3d_last.safetensors") < 1e-6
    assert unet_gap(tmp_path / "cold" / "ldm3d_last.safetensors") > 1e-2
    meta = read_metadata(tmp_path / "warm" / "ldm3d_last.safetensors")
    assert meta["training"]["diffusion"]["init_from"] == {"file": "ldm3d_last.safetensors", "sha256": base.sha256}
    assert "init_from" not in read_metadata(tmp_path / "cold" / "ldm3d_last.safetensors")["training"]["diffusion"]

    d["training"]["diffusion"]["steps"] = 3  # resumed without the option: the source is still named
    train(trained["cohort"], Ldm3dConfig.from_dict(d), tmp_path / "warm", stage="diffusion", quiet=True, resume=True)
    meta = read_metadata(tmp_path / "warm" / "ldm3d_last.safetensors")
    assert meta["training"]["diffusion"]["steps"] == 3 and meta["training"]["diffusion"]["init_from"]["sha256"] == \
        base.sha256

    d["unet"]["channels"] = [c * 2 for c in d["unet"]["channels"]]
    with pytest.raises(RuntimeError, match="unet differ"):
        train(trained["cohort"], Ldm3dConfig.from_dict(d), tmp_path / "other", stage="diffusion", quiet=True,
              init_diffusion_from=trained["base"])


def test_perceptual_distance_is_zero_for_identical_images_and_grows_with_blur():
    from scipy.ndimage import gaussian_filter

    from generators.common.decoder_training import DeepBetPerceptual

    rng = np.random.default_rng(0)
    x = gaussian_filter(rng.random((24, 32, 28)), 1.0)
    x = (x - x.min()) / (x.max() - x.min())
    p = DeepBetPerceptual(voxel_size=3.0)
    t = lambda v: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None, None]  # noqa: E731
    d = [float(p(t(gaussian_filter(x, s) if s else x), t(x))) for s in (0, 0.7, 1.5)]
    assert d[0] == pytest.approx(0.0, abs=1e-10) and 0 < d[1] < d[2], d


def test_random_crops_match_latent_and_image():
    from generators.common.decoder_training import random_crops

    z = torch.arange(2 * 1 * 4 * 5 * 6, dtype=torch.float32).view(2, 1, 4, 5, 6)
    x = z.repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)  # each latent voxel -> 4^3 block
    zc, xc = random_crops(z, x, np.array([1, 0]), 3, 4, np.random.default_rng(1))
    assert zc.shape == (2, 1, 3, 3, 3) and xc.shape == (2, 1, 12, 12, 12)
    assert torch.equal(xc[:, :, ::4, ::4, ::4], zc)
    zf, xf = random_crops(z, x, np.array([0]), 0, 4, np.random.default_rng(1))
    assert torch.equal(zf, z[:1]) and torch.equal(xf, x[:1])


# ----------------------------------------------------------------------------- allocator
def test_compute_allocation_restores_the_policy(monkeypatch):
    from bench import memory

    calls: list = []

    class _Libc:
        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(memory, "_libc", lambda: _Libc())
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    with memory.compute_allocation():
        assert calls == [("mallopt", -3, 32 << 20)]
    assert calls[1:] == [("mallopt", -3, 1 << 20), ("trim", 0)]
    calls.clear()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(64 << 20))  # the user's own, larger threshold: untouched
    with memory.compute_allocation():
        pass
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")  # no policy in force: untouched
    with memory.compute_allocation():
        pass
    assert calls == []



# ----------------------------------------------------------------------------- autoencoder report
def test_autoencoder_report_measures_the_round_trip(trained, tmp_path):
    from generators.ldm3d.autoencoder_report import report, write_figure
    from generators.ldm3d.checkpoint import load_checkpoint

    cohort = trained["cohort"]
    summary, arrays = report(trained["base"], n=2, cohort=cohort, with_frd=False)
    test = sorted(cohort.split("test"), key=lambda s: s.subject_id)[:2]
    mask = cohort.brain_mask()
    x = torch.from_numpy(cohort.load_volumes(test) * mask[None, None])
    model = load_checkpoint(trained["base"]).model
    with torch.no_grad():
        rec = model.decode(model.encode(x)).clamp(0, 1).numpy() * mask[None, None]
    np.testing.assert_allclose(arrays["reconstruction"], rec, atol=1e-5)
    l1 = float(np.abs(rec - x.numpy())[:, 0][:, mask].mean())
    assert summary["n"] == 2 and summary["l1_brain"] == pytest.approx(l1, rel=1e-4)
    assert -1 <= summary["ssim"] <= 1 and summary["sharpness_db"] > 0 and summary["hf_excess_db"] == pytest.approx(
        np.mean([v["hf_excess_db"] for v in summary["per_modality"].values()]), abs=1e-9)
    assert set(summary["per_modality"]) == {s.modality.lower() for s in test}
    with torch.no_grad():
        mu, sigma = model.encode_dist(x)
    snr = (mu.double().var(0).mean((1, 2, 3)) / sigma.double().pow(2).mean(0).mean((1, 2, 3))).numpy()
    np.testing.assert_allclose(summary["latent_snr_per_channel"], snr, rtol=1e-3, atol=1e-4)
    assert summary["active_channels"] == int((snr > 1).sum()) and summary["latent_bits"] >= 0
    write_figure(tmp_path / "fig.png", arrays, "tiny")
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latent_usage_separates_a_used_channel_from_a_collapsed_one():
    """A known response: channel 0 carries the volume's identity (means spread 1, noise 0.1), channel 1
    sits on the prior (means 0, noise 1)."""
    from generators.ldm3d.autoencoder_report import latent_usage

    class _Model:
        def encode_dist(self, x):
            n = x.shape[0]
            mu = torch.zeros(n, 2, 2, 2, 2)
            mu[:, 0] = x[:, 0, 0, 0, 0].view(n, 1, 1, 1)
            return mu, torch.stack([torch.full((n, 2, 2, 2), 0.1), torch.ones(n, 2, 2, 2)], 1)

    vols = np.zeros((4, 1, 2, 2, 2), np.float32)
    vols[:, 0, 0, 0, 0] = [-1.5, -0.5, 0.5, 1.5]  # sample variance 5/3
    u = latent_usage(_Model(), vols, batch=3)
    assert u["latent_snr_per_channel"] == pytest.approx([(5 / 3) / 0.01, 0.0], rel=1e-6)
    assert u["active_channels"] == 1
    assert u["latent_bits"] == pytest.approx(8 * 0.5 * np.log2(1 + (5 / 3) / 0.01), rel=1e-6)  # sigma is float32
