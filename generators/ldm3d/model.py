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

from generators.common.networks import LatentDiffusionModule, build_autoencoder, build_unet, make_scheduler
from generators.ldm3d.conditioning import N_ATTR, Conditioner, attribute_features, get_caption_parser, n_features
from generators.ldm3d.config import Ldm3dConfig

__all__ = ["CaptionEncoder", "Ldm3d", "build_model", "make_scheduler"]

logger = logging.getLogger(__name__)


class Ldm3d(LatentDiffusionModule):
    """Autoencoder + diffusion UNet + conditioner.

    Latent shapes, padding, :meth:`encode` (scaled posterior means: the ``ldm3d-latent`` space),
    :meth:`decode` and :meth:`param_counts` come from
    :class:`~generators.common.networks.LatentDiffusionModule`.

    Args:
        config: the :class:`Ldm3dConfig`.
        grid_shape: (D, H, W) of the image grid.
        text_dim: width of the text encoder's token embeddings.
    """

    def __init__(self, config: Ldm3dConfig, grid_shape: Sequence[int], text_dim: int = 384):
        super().__init__()
        self.config = config
        self.grid_shape = tuple(int(s) for s in grid_shape)
        self.spatial_shape = self.grid_shape
        ds = config.latent_downsampling
        for s in self.grid_shape:
            if s % ds:
                raise ValueError(f"grid shape {self.grid_shape} is not divisible by the autoencoder's "
                                 f"downsampling {ds}; use fewer autoencoder levels or another grid")
        un, cond = config.unet, config.conditioning
        self.autoencoder = build_autoencoder(3, config, "ldm3d")
        self.unet = build_unet(3, config, "ldm3d", num_class_embeds=1 if un.global_conditioning else None)
        if un.global_conditioning:
            # MONAI adds ``class_embedding(class_labels)`` to the timestep embedding; we put our MLP there and
            # pass the flattened attribute tokens as ``class_labels`` (see :meth:`eps`).
            temb = self.unet.time_embed[-1].out_features
            self.unet.class_embedding = nn.Sequential(nn.Linear(N_ATTR * cond.context_dim, temb), nn.SiLU(),
                                                      nn.Linear(temb, temb))
        self.conditioner = Conditioner(text_dim, cond.context_dim, cond.max_tokens,
                                       use_text_tokens=cond.use_text_tokens,
                                       use_attribute_tokens=cond.use_attribute_tokens,
                                       n_feat=n_features(cond.fourier_features))
        self.register_buffer("latent_scale", torch.ones(()))

    # ------------------------------------------------------------------ diffusion
    def net(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output (eps or v, as ``config.prediction`` says) for ``x_t`` at timesteps ``t``
        given contexts (B, L, context_dim)."""
        if self.config.unet.global_conditioning:
            pooled = context[:, -N_ATTR:, :].flatten(1)  # the attribute tokens (null context when dropped)
            return self.unet(x_t, timesteps=t, context=context, class_labels=pooled)
        return self.unet(x_t, timesteps=t, context=context)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Predicted noise of ``x_t`` (what the samplers use); a v-prediction is converted."""
        return self.to_eps(self.net(x_t, t, context), x_t, t)


def build_model(config: Ldm3dConfig, grid_shape: Sequence[int], text_dim: int = 384) -> Ldm3d:
    """Build an :class:`Ldm3d` for ``config`` on a grid of shape ``grid_shape``."""
    return Ldm3d(config, grid_shape, text_dim)


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
        self.fourier = cond.fourier_features

    def parse_all(self, texts: Sequence[str]) -> list[dict]:
        return [self.parse(t) for t in texts]

    def attributes(self, texts: Sequence[str]) -> torch.Tensor:
        parsed = self.parse_all(texts)
        if not parsed:
            return torch.zeros((0, 0, 0))
        return torch.from_numpy(np.stack([attribute_features(p, self.stats, self.fourier) for p in parsed]))

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        texts = list(texts)
        tokens, mask = self.text.encode_tokens(texts)
        n_trunc = sum(len(self.text.tokenizer(t)["input_ids"]) > self.max_tokens for t in texts)
        if n_trunc:
            logger.warning("%d caption(s) longer than conditioning.max_tokens=%d were truncated", n_trunc,
                           self.max_tokens)
        return tokens.cpu(), mask.cpu(), self.attributes(texts)
