"""Decoder fine-tuning with perceptual and patch-adversarial losses: sharper images from the same latents.

An autoencoder trained with L1 alone decodes to the conditional median of what its latent leaves
uncertain, which is a blur: the cortical ribbon, sulci and the edges of deep grey nuclei go first. The
standard LDM recipe (Esser et al. 2021, "Taming Transformers"; Rombach et al. 2022; Pinaya et al. 2022
for 3D brain MRI) adds a perceptual loss and a patch adversarial loss (Isola et al. 2017, PatchGAN).

This stage trains only the decoder side (``post_quant_conv`` + ``decoder``) with the encoder frozen,
as Stability AI's ``sd-vae-ft-mse`` did for Stable Diffusion: the latent space does not change, so a
diffusion UNet already trained on it stays valid and gains the sharper decoder at once. Batches are
random crops of the cached posterior means (``crop`` latent voxels per side) and the matching image
crops, which costs a fraction of whole volumes; the networks are fully convolutional.

With ``training.decoder.train_encoder`` the same losses train the whole autoencoder from whole images
(plus stage 1's KL term), so the encoder too learns to keep what the perceptual and adversarial terms
ask for. The latent space then moves, and a diffusion stage must be trained on it afterwards.

Losses (per step):

* decoder: ``R + lambda * G`` with ``R = L1 + grad_weight * L1(finite differences) + perceptual_weight * P``,
  ``G = mean((D(x_hat) - 1)^2)`` once ``step >= adv_start`` (least-squares GAN, Mao et al. 2017) and
  ``lambda = adv_weight * |grad R| / |grad G|`` at the decoder's output layer (VQGAN's adaptive weight,
  Esser et al. 2021: the adversarial gradient never exceeds ``adv_weight`` times the reconstruction's);
* discriminator ``D`` (MONAI ``PatchDiscriminator``): ``0.5 * (mean((D(x) - 1)^2) + mean(D(x_hat)^2))``.

The perceptual term ``P`` compares the activations of the first three stages (``init``, ``down0``,
``down1``: strides 2-8 at 1.5 mm) of deepbet's brain-extraction network (Fisch et al. 2024; its
TorchScript weights ship in the wheel, sha256-checked), unit-normalised over channels and averaged
squared differences per stage, as LPIPS does (Zhang et al. 2018). Both images are upsampled to 1.5 mm
and normalised with the real crop's deepbet statistics. The FID extractor uses the same network's
pooled ``down3`` bottleneck: that shared weight is the reason the headline realism metrics (radiomics
FRD, spectral sharpness) do not use deepbet at all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from generators.common.training import (atomic_torch_save, cosine_lr, fast_memory_format, kl_to_unit_gaussian,
                                        load_state, progress_bar, recent_mean, record_step, stage_deadline, step_rng,
                                        write_curve)

__all__ = ["DeepBetPerceptual", "adaptive_weight", "decoder_parameters", "decoder_summary", "random_crops",
           "train_decoder_stage"]

HISTORY_COLUMNS = ["step", "time_s", "loss", "l1", "grad", "perceptual", "gen_adv", "disc", "adv_lambda"]


class DeepBetPerceptual(torch.nn.Module):
    """LPIPS-style distance on the shallow stages of deepbet's 3D network (frozen).

    Args:
        voxel_size: voxel size (mm) of the images it is given; they are resampled to 1.5 mm.
        stages: how many of deepbet's stages (``init``, ``down0``, ``down1``, ...) to compare.
    """

    def __init__(self, voxel_size: float, stages: int = 3):
        super().__init__()
        from metrics.features.deepbet import DEEPBET_MODEL_SHA256, deepbet_model_path
        from metrics.features.base import sha256_file

        path = deepbet_model_path()
        sha = sha256_file(path)
        if sha != DEEPBET_MODEL_SHA256:
            raise ValueError(f"{path}: sha256 {sha} is not the pinned deepbet network {DEEPBET_MODEL_SHA256}; "
                             "install the pinned deepbet version (see metrics/features/deepbet.py)")
        net = torch.jit.load(str(path), map_location="cpu").eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self._relu = getattr(net.conv, "2")
        self._stages = [net.init, net.down0, net.down1, net.down2, net.down3][:stages]
        self.scale = float(voxel_size) / 1.5

    def _normalise(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """deepbet's normalisation with the statistics of ``ref`` (per sample), applied to ``x``."""
        flat = ref.detach().flatten(1)
        q = torch.quantile(flat, torch.tensor([0.005, 0.995], dtype=flat.dtype), dim=1)
        low, high = q[0], q[1]
        span = (high - low).clamp_min(1e-6)
        view = (-1, *([1] * (x.ndim - 1)))
        y_ref = ((ref.detach() - low.view(view)) / span.view(view)).clamp(0, 1)
        mean, std = y_ref.flatten(1).mean(1), y_ref.flatten(1).std(1).clamp_min(1e-6)
        y = ((x - low.view(view)) / span.view(view)).clamp(0, 1)
        return 0.226 * (y - mean.view(view)) / std.view(view) + 0.449

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean over stages of the channel-normalised squared feature difference (a scalar)."""
        if self.scale != 1.0:
            x_hat = F.interpolate(x_hat, scale_factor=self.scale, mode="trilinear", align_corners=False)
            x = F.interpolate(x, scale_factor=self.scale, mode="trilinear", align_corners=False)
        a, b = self._normalise(x_hat, x), self._normalise(x, x)
        total = torch.zeros((), dtype=x.dtype)
        for stage in self._stages:
            a, b = stage(self._relu, a), stage(self._relu, b)
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)
            total = total + (na - nb).pow(2).sum(1).mean()
        return total / len(self._stages)


def decoder_parameters(ae: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The decoder side of an autoencoder, its output convolution last: the autoencoder's own
    ``decoder_parameters()`` when it has one, else MONAI ``AutoencoderKL``'s ``post_quant_conv`` and ``decoder``."""
    if hasattr(ae, "decoder_parameters"):
        return list(ae.decoder_parameters())
    return [*ae.post_quant_conv.parameters(), *ae.decoder.parameters()]


def random_crops(latents: torch.Tensor, images: torch.Tensor, idx: np.ndarray, crop: int, factor: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Matching random crops: ``crop`` latent voxels per side and ``crop * factor`` image voxels.

    ``crop <= 0`` (or larger than the latent) keeps the whole extent of that axis.
    """
    spatial = latents.shape[2:]
    zs, xs = [], []
    for i in idx:
        sl_z, sl_x = [slice(None), slice(None)], [slice(None), slice(None)]
        for s in spatial:
            c = s if crop <= 0 else min(crop, s)
            o = int(rng.integers(0, s - c + 1))
            sl_z.append(slice(o, o + c))
            sl_x.append(slice(o * factor, (o + c) * factor))
        zs.append(latents[int(i):int(i) + 1][tuple(sl_z)])
        xs.append(images[int(i):int(i) + 1][tuple(sl_x)])
    return torch.cat(zs), torch.cat(xs)


def adaptive_weight(rec: torch.Tensor, gen_adv: torch.Tensor, last_layer: torch.nn.Parameter,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance (Esser et al. 2021): ``|grad rec| / |grad gen_adv|`` at the decoder's last layer,
    so the adversarial term never outweighs the reconstruction by more than ``adv_weight`` (detached)."""
    g_rec = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(gen_adv, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def _finite_difference_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    spatial = range(2, a.ndim)
    return sum(((a.diff(dim=d) - b.diff(dim=d)).abs().mean() for d in spatial), torch.zeros(())) / len(spatial)


def _encode_decode(ae: torch.nn.Module, x: torch.Tensor, rng: np.random.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction of a posterior sample (noise drawn from ``rng``: resumable runs draw the same) and
    the KL to the unit Gaussian, summed over latent voxels and averaged over the batch (stage 1's term)."""
    mu, sigma = ae.encode(x)
    eps = torch.from_numpy(rng.standard_normal(tuple(mu.shape), dtype=np.float32)).to(mu)
    return ae.decode(mu + sigma * eps), kl_to_unit_gaussian(mu, sigma)


def _discriminator(channels: int, layers: int, spatial_dims: int) -> torch.nn.Module:
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=spatial_dims, channels=channels, in_channels=1, out_channels=1,
                              num_layers_d=layers, norm="INSTANCE")


def train_decoder_stage(ae: torch.nn.Module, latents: torch.Tensor | None, images: torch.Tensor, config: Any,
                        state_path: Path, curve: Path, *, voxel_size: float, resume: bool,
                        max_minutes: float | None, quiet: bool, logger: Any = None) -> dict:
    """Fine-tune the decoder of ``ae`` (encoder frozen) on (posterior mean, image) pairs; resumable.

    With ``training.decoder.train_encoder`` the whole autoencoder trains instead: each step encodes the
    (whole) images, decodes a posterior sample and adds stage 1's KL term (``training.autoencoder.kl_weight``)
    to the reconstruction loss.

    Args:
        ae: a trained autoencoder (its decoder is trained in place; left in eval mode).
        latents: unscaled posterior means of the training images (N, C, *latent spatial); None with
            ``train_encoder``.
        images: the training images (N, 1, *spatial) in [0, 1].
        config: the top-level config (``training`` and ``training.decoder`` are read).
        state_path: ``OUT/state_decoder.pt`` (autoencoder, discriminator, both optimisers, step, history).
        curve: the loss curve's file name (``.csv`` + ``.png``).
        voxel_size: voxel size in mm (the perceptual network works at 1.5 mm).
        resume: continue from ``state_path`` when it exists.
        max_minutes: the caller's wall-time cap for this invocation.
        quiet: no progress bar.
        logger: where progress is logged.

    Returns:
        ``steps``, ``minutes``, ``done`` and the last-100-step means of each loss term.
    """
    cfg, dcfg = config.training, config.training.decoder
    whole = bool(dcfg.train_encoder)
    if not whole and latents is None:
        raise ValueError("train_decoder_stage: latents are needed unless training.decoder.train_encoder")
    factor = 1 if whole else images.shape[-1] // latents.shape[-1]
    dec = decoder_parameters(ae)
    last_layer = dec[-1] if dec[-1].ndim > 1 else dec[-2]  # the decoder's output convolution weight
    params = list(ae.parameters()) if whole else dec
    for p in ae.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    disc = _discriminator(dcfg.disc_channels, dcfg.disc_layers, images.ndim - 2)
    perceptual = DeepBetPerceptual(voxel_size) if dcfg.perceptual_weight > 0 else None
    opt = torch.optim.AdamW(params, lr=dcfg.lr, betas=(0.5, 0.9), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=dcfg.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
    step, elapsed, history = 0, 0.0, []
    if resume and state_path.exists():
        st = load_state(state_path)
        ae.load_state_dict(st["autoencoder"])
        disc.load_state_dict(st["discriminator"])
        opt.load_state_dict(st["optimizer"])
        opt_d.load_state_dict(st["optimizer_disc"])
        step, elapsed, history = int(st["step"]), float(st["elapsed"]), list(st["history"])
        if logger:
            logger.info("resumed decoder fine-tuning at step %d (%.1f min)", step, elapsed / 60)
    n = images.shape[0]
    deadline = stage_deadline(dcfg.max_minutes, elapsed, max_minutes)
    t_start = last_ckpt = time.monotonic()

    def save(done: bool) -> None:
        nonlocal last_ckpt
        atomic_torch_save({"autoencoder": ae.state_dict(), "discriminator": disc.state_dict(),
                           "optimizer": opt.state_dict(), "optimizer_disc": opt_d.state_dict(), "step": step,
                           "elapsed": elapsed + time.monotonic() - t_start, "history": history, "done": done},
                          state_path)
        write_curve(history, HISTORY_COLUMNS, curve, "decoder fine-tuning")
        last_ckpt = time.monotonic()

    ae.eval()  # GroupNorm only: eval/train differ in nothing but dropout, which is off
    fmt = fast_memory_format(images.ndim)
    ae.to(memory_format=fmt)
    disc.to(memory_format=fmt)
    bar = progress_bar(dcfg.steps, step, "decoder", quiet)
    try:
        while step < dcfg.steps and time.monotonic() < deadline:
            rng, _ = step_rng(cfg.seed, 3, step)
            idx = rng.choice(n, size=min(dcfg.batch_size, n), replace=False)
            if dcfg.min_lr is not None:
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(dcfg.lr, dcfg.min_lr, step, dcfg.steps)
            if whole:
                x = images[np.sort(idx)].contiguous(memory_format=fmt)
                x_hat, kl = _encode_decode(ae, x, rng)
            else:
                z, x = random_crops(latents, images, idx, dcfg.crop, factor, rng)
                z, x = z.contiguous(memory_format=fmt), x.contiguous(memory_format=fmt)
                x_hat, kl = ae.decode(z), torch.zeros(())
            l1 = (x_hat - x).abs().mean()
            gl = _finite_difference_l1(x_hat, x)
            pl = perceptual(x_hat, x) if perceptual is not None else torch.zeros(())
            rec = l1 + dcfg.grad_weight * gl + dcfg.perceptual_weight * pl + config.training.autoencoder.kl_weight * kl
            adversarial = dcfg.adv_weight > 0 and step >= dcfg.adv_start
            ga, lam = torch.zeros(()), torch.zeros(())
            if adversarial:
                ga = (disc(x_hat)[-1] - 1).pow(2).mean()
                lam = adaptive_weight(rec, ga, last_layer) * dcfg.adv_weight
            loss = rec + lam * ga
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            dl = torch.zeros(())
            if dcfg.adv_weight > 0 and step >= dcfg.adv_start - dcfg.disc_warmup:
                dl = 0.5 * ((disc(x)[-1] - 1).pow(2).mean() + disc(x_hat.detach())[-1].pow(2).mean())
                opt_d.zero_grad(set_to_none=True)
                dl.backward()
                opt_d.step()
            step += 1
            record_step(history, [step, round(elapsed + time.monotonic() - t_start, 2),
                                  *(round(float(v.detach()), 6) for v in (loss, l1, gl, pl, ga, dl, lam))], bar, logger,
                        every=50, message="decoder step %d loss %.4f l1 %.4f grad %.4f perceptual %.4f G %.3f D %.3f",
                        columns=range(2, 8), postfix={"l1": 3, "p": 5})
            if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                save(False)
    finally:
        bar.close()
        ae.to(memory_format=torch.contiguous_format)
        disc.to(memory_format=torch.contiguous_format)
        save(step >= dcfg.steps)
        ae.eval()
        for p in ae.parameters():
            p.requires_grad_(True)
    return decoder_summary(load_state(state_path), dcfg)


def decoder_summary(state: dict, dcfg: Any) -> dict:
    """What a checkpoint records of stage 1b: steps, minutes, done, crop, batch size and the last-100-step
    mean of every loss term (from the stage's saved state)."""
    history = state["history"]
    out = {"steps": int(state["step"]), "minutes": round(float(state["elapsed"]) / 60, 2), "done": bool(state["done"]),
           "crop": dcfg.crop, "batch_size": dcfg.batch_size}
    out.update({name: recent_mean(history, j, 100) for j, name in enumerate(HISTORY_COLUMNS) if j >= 3})
    return out
