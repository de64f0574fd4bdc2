"""The ldm3d networks: MONAI's AutoencoderKL and DiffusionModelUNet plus our conditioner.

Architecture after Rombach et al. 2022 (latent diffusion) and Pinaya et al. 2022 (3D brain LDM):
a KL autoencoder without attention compresses the volume 4x per side; a 3D UNet with self- and
cross-attention at its lower levels predicts the noise of DDPM-noised latents (Ho et al. 2020).
Latents are multiplied by ``latent_scale`` (1 / std of the training latents) before diffusion and
zero-padded to a multiple of the UNet's total downsampling.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from generators.ldm3d.conditioning import Conditioner, attribute_features, get_caption_parser
from generators.ldm3d.config import Ldm3dConfig

logger = logging.getLogger(__name__)


def _monai_nets():
    try:
        import einops  # noqa: F401  (MONAI's DiffusionModelUNet needs it but does not install it)
        from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
    except ImportError as e:  # pragma: no cover - hard dependencies
        raise RuntimeError(f"ldm3d needs monai>=1.4 and einops ({e}); run `make install`") from e
    return AutoencoderKL, DiffusionModelUNet


class Ldm3d(nn.Module):
    """Autoencoder + diffusion UNet + conditioner.

    Args:
        config: the :class:`Ldm3dConfig`.
        grid_shape: (D, H, W) of the image grid.
        text_dim: width of the text encoder's token embeddings.
    """

    def __init__(self, config: Ldm3dConfig, grid_shape: Sequence[int], text_dim: int = 384):
        super().__init__()
        AutoencoderKL, DiffusionModelUNet = _monai_nets()
        self.config = config
        self.grid_shape = tuple(int(s) for s in grid_shape)
        ds = config.latent_downsampling
        for s in self.grid_shape:
            if s % ds:
                raise ValueError(f"grid shape {self.grid_shape} is not divisible by the autoencoder's "
                                 f"downsampling {ds}; use fewer autoencoder levels or another grid")
        ae, un, cond = config.autoencoder, config.unet, config.conditioning
        n = len(ae.channels)
        self.autoencoder = AutoencoderKL(
            spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(ae.channels),
            num_res_blocks=(ae.num_res_blocks,) * n, attention_levels=(False,) * n,
            latent_channels=ae.latent_channels, norm_num_groups=ae.norm_num_groups,
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=ae.latent_channels, out_channels=ae.latent_channels,
            num_res_blocks=un.num_res_blocks, channels=tuple(un.channels),
            attention_levels=tuple(un.attention_levels), norm_num_groups=un.norm_num_groups,
            num_head_channels=un.num_head_channels, with_conditioning=True,
            transformer_num_layers=un.transformer_num_layers, cross_attention_dim=cond.context_dim,
            use_flash_attention=un.use_flash_attention)
        self.conditioner = Conditioner(text_dim, cond.context_dim, cond.max_tokens,
                                       use_text_tokens=cond.use_text_tokens,
                                       use_attribute_tokens=cond.use_attribute_tokens)
        self.register_buffer("latent_scale", torch.ones(()))

    # ------------------------------------------------------------------ shapes
    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        ds = self.config.latent_downsampling
        return (self.config.autoencoder.latent_channels, *(s // ds for s in self.grid_shape))

    @property
    def padded_latent_shape(self) -> tuple[int, int, int, int]:
        m = self.config.unet_multiple
        c, *sp = self.latent_shape
        return (c, *(-(-s // m) * m for s in sp))

    def pad(self, z: torch.Tensor) -> torch.Tensor:
        """Zero-pad (B, C, d, h, w) latents at the end of each axis to the UNet multiple."""
        pads = []
        for s, p in zip(reversed(self.latent_shape[1:]), reversed(self.padded_latent_shape[1:])):
            pads += [0, p - s]
        return F.pad(z, pads) if any(pads) else z

    def crop(self, z: torch.Tensor) -> torch.Tensor:
        d, h, w = self.latent_shape[1:]
        return z[:, :, :d, :h, :w]

    # ------------------------------------------------------------------ autoencoder
    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std (unscaled) of volumes (B, 1, D, H, W)."""
        return self.autoencoder.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled posterior means (B, C, d, h, w) — the ``ldm3d-latent`` space."""
        mu, _ = self.autoencoder.encode(x)
        return mu * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled (unpadded) latents -> volumes (B, 1, D, H, W), unclipped."""
        return self.autoencoder.decode(z / self.latent_scale)

    # ------------------------------------------------------------------ diffusion
    def eps(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, timesteps=t, context=context)

    def param_counts(self) -> dict[str, int]:
        return {"autoencoder": sum(p.numel() for p in self.autoencoder.parameters()),
                "unet": sum(p.numel() for p in self.unet.parameters()),
                "conditioner": sum(p.numel() for p in self.conditioner.parameters()),
                "total": sum(p.numel() for p in self.parameters())}


def build_model(config: Ldm3dConfig, grid_shape: Sequence[int], text_dim: int = 384) -> Ldm3d:
    """Build an :class:`Ldm3d` for ``config`` on a grid of shape ``grid_shape``."""
    return Ldm3d(config, grid_shape, text_dim)


def make_scheduler(config: Ldm3dConfig):
    """MONAI DDPMScheduler (training; also the source of ``alphas_cumprod`` for our samplers).

    ``clip_sample`` is off: scaled latents are not bounded to [-1, 1].
    """
    from monai.networks.schedulers import DDPMScheduler

    s = config.scheduler
    return DDPMScheduler(num_train_timesteps=s.num_train_timesteps, schedule=s.schedule,
                         beta_start=s.beta_start, beta_end=s.beta_end, clip_sample=False)


class CaptionEncoder:
    """Captions -> (text tokens, mask, attribute features), the inputs of :class:`Conditioner`.

    Args:
        config: the model config (text encoder, max tokens).
        stats: z-scoring statistics (from the checkpoint's conditioner).
        device: torch device of the text encoder.
    """

    def __init__(self, config: Ldm3dConfig, stats: dict, device: str = "cpu"):
        from generators.text import get_text_encoder

        cond = config.conditioning
        self.text = get_text_encoder(cond.text_encoder, device, cond.max_tokens)
        self.stats = stats
        self.parse, self.parser_name = get_caption_parser()
        self.max_tokens = cond.max_tokens

    def parse_all(self, texts: Sequence[str]) -> list[dict]:
        return [self.parse(t) for t in texts]

    def attributes(self, texts: Sequence[str]) -> torch.Tensor:
        parsed = self.parse_all(texts)
        if not parsed:
            return torch.zeros((0, 0, 0))
        return torch.from_numpy(np.stack([attribute_features(p, self.stats) for p in parsed]))

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        texts = list(texts)
        tokens, mask = self.text.encode_tokens(texts)
        n_trunc = sum(len(self.text.tokenizer(t)["input_ids"]) > self.max_tokens for t in texts)
        if n_trunc:
            logger.warning("%d caption(s) longer than conditioning.max_tokens=%d were truncated", n_trunc,
                           self.max_tokens)
        return tokens.cpu(), mask.cpu(), self.attributes(texts)
