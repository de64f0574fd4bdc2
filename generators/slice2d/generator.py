"""``slice2d`` generator: sample every axial slice of a volume with a 2D latent diffusion model.

Each slice is denoised from its own Gaussian noise (seeded by the sample's seed and the slice index)
with DDIM (Song et al. 2021) and classifier-free guidance (Ho & Salimans 2022), conditioned on the
caption (the ldm3d caption path: MiniLM tokens + attribute tokens) and on its slice index; the
decoded slices are stacked along the slicing axis. Nothing couples neighbouring slices but the shared
caption and their indices — the point of this baseline.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from generators.base import GenerationOutput, GeneratorContext, Prompt, seed_for
from generators.ldm3d.sampling import SCHEDULERS, sample_latents
from generators.slice2d.model import SHIPPED, Slice2dError, SliceEps, load_checkpoint

logger = logging.getLogger(__name__)


class Slice2dGenerator:
    """2D text-conditioned latent diffusion on slices, stacked into a volume.

    Args:
        context: runner context.
        checkpoint: a slice2d ``.safetensors`` checkpoint (default: the shipped phantom 3 mm model).
        steps: DDIM/DDPM steps.
        guidance: classifier-free guidance scale (1 = conditional only, 0 = unconditional).
        scheduler: "ddim" or "ddpm".
        batch_size: volumes per UNet batch (each is ``n_slices`` slices; twice that with guidance).
    """

    name = "slice2d"

    def __init__(self, context: GeneratorContext, *, checkpoint: str = str(SHIPPED), steps: int = 50,
                 guidance: float = 3.0, scheduler: str = "ddim", batch_size: int = 2):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"slice2d: unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if steps < 1 or batch_size < 1:
            raise ValueError(f"slice2d: steps={steps} and batch_size={batch_size} must be >= 1")
        self.context, self.device = context, context.device
        self.steps, self.guidance, self.scheduler_name, self.batch_size = int(steps), float(guidance), scheduler, int(batch_size)
        from core.io import sha256_file

        self.model, self.meta = load_checkpoint(checkpoint, device=self.device)
        self.checkpoint_path, self.sha256 = str(checkpoint), sha256_file(checkpoint)
        if tuple(self.model.grid_shape) != tuple(context.grid.shape):
            raise Slice2dError(f"{checkpoint}: trained on grid {tuple(self.model.grid_shape)} but the suite grid is "
                               f"{context.grid.name} {tuple(context.grid.shape)}; use a suite on the checkpoint's grid "
                               "or train one (python -m generators.slice2d.train --grid ...)")
        self.alphas_cumprod = self.model.alphas_cumprod
        from generators.ldm3d.conditioning import attribute_features, get_caption_parser
        from generators.text import get_text_encoder

        cond = self.model.config.conditioning
        self.text = get_text_encoder(cond.text_encoder, self.device, cond.max_tokens)
        self.parse, self.parser_name = get_caption_parser()
        self._attr = attribute_features
        fp = self.meta.get("text_encoder", {}).get("fingerprint")
        if fp and fp != self.text.fingerprint:
            logger.warning("%s: text encoder differs from the one it was trained with", checkpoint)
        try:
            self.mask = np.asarray(context.cohort.brain_mask(), bool)
        except Exception as e:  # noqa: BLE001
            logger.warning("slice2d: no brain mask from the cohort (%s); background is not zeroed", e)
            self.mask = None

    @torch.no_grad()
    def contexts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens, mask = self.text.encode_tokens(list(texts))
        stats = self.model.conditioner.stats()
        fourier = self.model.config.conditioning.fourier_features
        attrs = torch.from_numpy(np.stack([self._attr(self.parse(t), stats, fourier) for t in texts]))
        return self.model.conditioner(tokens.to(self.device), mask.to(self.device), attrs.to(self.device))

    @torch.no_grad()
    def sample(self, texts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        """Volumes (B, 1, D, H, W) in [0, 1] for captions and per-volume seeds."""
        S = self.model.n_slices
        ctx = self.contexts(texts).repeat_interleave(S, dim=0)  # (B*S, L, C), volume-major
        gens = [torch.Generator().manual_seed(seed_for(int(s), k)) for s in seeds for k in range(S)]
        shape = self.model.padded_latent_shape
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device)
        labels = torch.arange(S, device=self.device).repeat(len(texts))
        z = sample_latents(SliceEps(self.model, labels), noise, ctx, alphas_cumprod=self.alphas_cumprod,
                           steps=self.steps, scheduler=self.scheduler_name,
                           guidance=None if self.guidance == 1.0 else self.guidance, generators=gens)
        x = self.model.decode(self.model.crop(z)).clamp_(0.0, 1.0)
        vols = self.model.to_volumes(x).cpu().numpy().astype(np.float32)
        if self.mask is not None:
            vols *= self.mask[None, None]
        return vols

    def generate(self, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        """Sample i uses ``seed_for(seed, i)``; slice k of it ``seed_for(seed_for(seed, i), k)``."""
        texts = [p.text if isinstance(p, Prompt) else str(p) for p in prompts]
        out = np.zeros((len(texts), 1, *self.model.grid_shape), np.float32)
        for start in range(0, len(texts), self.batch_size):
            stop = min(len(texts), start + self.batch_size)
            out[start:stop] = self.sample(texts[start:stop], [seed_for(seed, i) for i in range(start, stop)])
        return GenerationOutput(out)

    def info(self) -> dict:
        tr = self.meta.get("training", {})
        return {"role": "baseline", "name": self.name, "checkpoint": self.checkpoint_path, "checkpoint_sha256": self.sha256,
                "scheduler": self.scheduler_name, "steps": self.steps, "guidance": self.guidance,
                "slice_axis": self.model.config.slice_axis, "n_slices": self.model.n_slices,
                "prediction": self.model.config.prediction,
                "param_counts": self.model.param_counts(), "latent_shape": list(self.model.latent_shape),
                "training": {"cohort": self.meta.get("cohort"), "autoencoder": tr.get("autoencoder"),
                             "diffusion": tr.get("diffusion"), "seed": tr.get("seed"),
                             "created_utc": self.meta.get("created_utc")},
                "text_encoder": self.meta.get("text_encoder"), "caption_parser": self.parser_name}
