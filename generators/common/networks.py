"""Network pieces shared by ldm3d (3D) and slice2d (2D): MONAI's AutoencoderKL and DiffusionModelUNet
built from the config sections, the DDPM scheduler, and the latent scaling / padding of
:class:`LatentDiffusionModule`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from generators.common.autoencoder import PatchAutoencoderKL


def monai_nets(who: str) -> tuple[Any, Any]:
    """MONAI's ``(AutoencoderKL, DiffusionModelUNet)``; a clear error names ``who`` needs them."""
    try:
        import einops  # noqa: F401  (MONAI's DiffusionModelUNet needs it but does not install it)
        from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
    except ImportError as e:  # pragma: no cover - hard dependencies
        raise RuntimeError(f"{who} needs monai>=1.4 and einops ({e}); run `make install`") from e
    return AutoencoderKL, DiffusionModelUNet


def build_autoencoder(spatial_dims: int, config: Any, who: str) -> nn.Module:
    """The KL autoencoder (no attention: it is the speed bottleneck on CPU) of ``config.autoencoder``:
    MONAI's ``AutoencoderKL`` when ``patch`` is 1, else :class:`PatchAutoencoderKL`."""
    ae = config.autoencoder
    if ae.patch > 1:
        return PatchAutoencoderKL(spatial_dims, 1, 1, patch=ae.patch, channels=tuple(ae.channels),
                                  num_res_blocks=ae.num_res_blocks, latent_channels=ae.latent_channels,
                                  norm_num_groups=ae.norm_num_groups, seam_channels=ae.seam_channels)
    AutoencoderKL, _ = monai_nets(who)
    n = len(ae.channels)
    return AutoencoderKL(
        spatial_dims=spatial_dims, in_channels=1, out_channels=1, channels=tuple(ae.channels),
        num_res_blocks=(ae.num_res_blocks,) * n, attention_levels=(False,) * n,
        latent_channels=ae.latent_channels, norm_num_groups=ae.norm_num_groups,
        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def build_unet(spatial_dims: int, config: Any, who: str, num_class_embeds: int | None = None) -> nn.Module:
    """The cross-attention diffusion UNet of ``config.unet`` on the autoencoder's latents.

    Args:
        spatial_dims: 2 or 3.
        config: the top-level config (``autoencoder``, ``unet`` and ``conditioning`` sections are read).
        who: generator name for the missing-dependency message.
        num_class_embeds: size of MONAI's class embedding, added to the timestep embedding (None: none).
    """
    _, DiffusionModelUNet = monai_nets(who)
    ae, un, cond = config.autoencoder, config.unet, config.conditioning
    return DiffusionModelUNet(
        spatial_dims=spatial_dims, in_channels=ae.latent_channels, out_channels=ae.latent_channels,
        num_res_blocks=un.num_res_blocks, channels=tuple(un.channels),
        attention_levels=tuple(un.attention_levels), norm_num_groups=un.norm_num_groups,
        num_head_channels=un.num_head_channels, with_conditioning=True,
        transformer_num_layers=un.transformer_num_layers, cross_attention_dim=cond.context_dim,
        use_flash_attention=un.use_flash_attention, num_class_embeds=num_class_embeds)


def make_scheduler(config: Any):
    """MONAI DDPMScheduler of ``config.scheduler`` (training; also the source of ``alphas_cumprod``).

    ``clip_sample`` is off: scaled latents are not bounded to [-1, 1].
    """
    from monai.networks.schedulers import DDPMScheduler

    s = config.scheduler
    return DDPMScheduler(num_train_timesteps=s.num_train_timesteps, schedule=s.schedule,
                         beta_start=s.beta_start, beta_end=s.beta_end, clip_sample=False)


def v_to_eps(v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(a_t) v + sqrt(1 - a_t) x_t (inverse of v = sqrt(a) eps - sqrt(1 - a) x0)."""
    a = alphas_cumprod.to(x_t.device, torch.float64)[t].to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
    return a.sqrt() * v + (1.0 - a).sqrt() * x_t


class LatentDiffusionModule(nn.Module):
    """Base of the latent diffusion models: latent shapes, padding, scaled encode/decode, parameter counts.

    Subclasses set ``config`` (with ``latent_downsampling`` and ``unet_multiple``), ``spatial_shape`` (the
    shape of one autoencoder input without batch and channel axes), ``autoencoder``, ``unet``,
    ``conditioner`` and the ``latent_scale`` buffer. This class holds no parameters, so the state-dict keys
    are the subclass's.
    """

    config: Any
    spatial_shape: tuple[int, ...]
    autoencoder: nn.Module
    unet: nn.Module
    conditioner: nn.Module
    latent_scale: torch.Tensor

    # ------------------------------------------------------------------ shapes
    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, *spatial) of one (unpadded) latent."""
        ds = self.config.latent_downsampling
        return (self.config.autoencoder.latent_channels, *(s // ds for s in self.spatial_shape))

    @property
    def padded_latent_shape(self) -> tuple[int, ...]:
        """:attr:`latent_shape` with each spatial size rounded up to the UNet multiple."""
        m = self.config.unet_multiple
        c, *sp = self.latent_shape
        return (c, *(-(-s // m) * m for s in sp))

    def pad(self, z: torch.Tensor) -> torch.Tensor:
        """Zero-pad (B, C, *spatial) latents at the end of each axis to the UNet multiple."""
        pads: list[int] = []
        for s, p in zip(reversed(self.latent_shape[1:]), reversed(self.padded_latent_shape[1:])):
            pads += [0, p - s]
        return F.pad(z, pads) if any(pads) else z

    def crop(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pad`."""
        return z[(slice(None), slice(None), *(slice(0, s) for s in self.latent_shape[1:]))]

    # ------------------------------------------------------------------ autoencoder
    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std (unscaled) of images (B, 1, *spatial)."""
        return self.autoencoder.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled posterior means (B, C, *latent spatial)."""
        mu, _ = self.autoencoder.encode(x)
        return mu * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled (unpadded) latents -> images (B, 1, *spatial), unclipped."""
        return self.autoencoder.decode(z / self.latent_scale)

    # ------------------------------------------------------------------ diffusion
    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """The training schedule's cumulative alphas (computed once from the config)."""
        if getattr(self, "_alphas_cumprod", None) is None:
            self._alphas_cumprod = make_scheduler(self.config).alphas_cumprod.clone()
        return self._alphas_cumprod

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet output as predicted noise: a v-prediction (``config.prediction == "v"``) is converted."""
        return v_to_eps(out, x_t, t, self.alphas_cumprod) if self.config.prediction == "v" else out

    def param_counts(self) -> dict[str, int]:
        """Parameters of the autoencoder, UNet, conditioner and in total."""
        return {"autoencoder": sum(p.numel() for p in self.autoencoder.parameters()),
                "unet": sum(p.numel() for p in self.unet.parameters()),
                "conditioner": sum(p.numel() for p in self.conditioner.parameters()),
                "total": sum(p.numel() for p in self.parameters())}
