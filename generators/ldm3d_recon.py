"""`ldm3d-recon`: each prompt's caption-matched held-out real volume through the ldm3d autoencoder.

A latent diffusion model can at best generate the latents of real volumes, and then its samples are
the autoencoder's reconstructions of them. Scoring those reconstructions through the same suite
therefore gives the **autoencoder ceiling** of every metric: the realism, sharpness and prompt
conformance no diffusion stage on this autoencoder can exceed. Where ``ldm3d`` falls short of
``ldm3d-recon`` the diffusion stage is to blame; where ``ldm3d-recon`` falls short of the real floor,
the autoencoder is. Each volume is encoded to its posterior mean and decoded, clipped to [0, 1] and
zeroed outside the atlas brain mask, exactly as ``ldm3d`` post-processes a sample. The volumes are the
held-out real ones the suite's prompts were drawn from, so this is an oracle, not a generator: it
reads no caption.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from generators.base import GenerationOutput, GeneratorContext, Prompt
from generators.ldm3d.checkpoint import SHIPPED, load_checkpoint

__all__ = ["Ldm3dReconGenerator", "reconstruct"]


@torch.no_grad()
def reconstruct(model, volumes: np.ndarray, mask: np.ndarray | None, batch_size: int = 8,
                device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Encode ``volumes`` (N, 1, D, H, W) to their scaled posterior means and decode them: ``(volumes
    clipped to [0, 1] and zeroed outside ``mask``, latents)``, as ``ldm3d`` post-processes a sample."""
    vols = np.ascontiguousarray(volumes, dtype=np.float32)
    out = np.empty_like(vols)
    lats = np.empty((len(vols), *model.latent_shape), np.float32)
    for i in range(0, len(vols), batch_size):
        z = model.encode(torch.from_numpy(vols[i:i + batch_size]).to(device))
        out[i:i + batch_size] = model.decode(z).clamp(0.0, 1.0).cpu().numpy()
        lats[i:i + batch_size] = z.cpu().numpy()
    if mask is not None:
        out *= mask[None, None]
    return out, lats


class Ldm3dReconGenerator:
    """Autoencoder reconstructions of the prompts' caption-matched held-out volumes (the ceiling of ldm3d).

    Args:
        context: runner context (prompts must carry the reference subject id: suite prompts do).
        checkpoint: an ldm3d ``.safetensors`` checkpoint (default: the shipped one).
        batch_size: volumes per autoencoder pass.
    """

    name = "ldm3d-recon"

    def __init__(self, context: GeneratorContext, *, checkpoint: str = str(SHIPPED), batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"ldm3d-recon: batch_size={batch_size} must be >= 1")
        self.ctx, self.batch_size = context, int(batch_size)
        loaded = load_checkpoint(checkpoint, device=context.device)
        self.model, self.meta, self.path, self.sha256 = loaded.model, loaded.meta, loaded.path, loaded.sha256
        if tuple(self.model.grid_shape) != tuple(context.grid.shape):
            raise ValueError(f"{self.path}: trained on grid {tuple(self.model.grid_shape)}, the suite grid is "
                             f"{context.grid.name} {tuple(context.grid.shape)}; use a suite on the checkpoint's grid")
        self.mask = np.asarray(context.cohort.brain_mask(), dtype=bool)

    def _volume(self, p: Prompt) -> np.ndarray:
        if not p.subject_id:
            raise ValueError("ldm3d-recon: the prompt has no reference subject id; use the suite's own prompts")
        return self.ctx.cohort.load_volume(self.ctx.cohort.by_id(p.subject_id)).astype(np.float32)

    def generate(self, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        vols = np.stack([self._volume(p) for p in prompts])[:, None] if prompts else \
            np.zeros((0, 1, *self.ctx.grid.shape), np.float32)
        out, lats = reconstruct(self.model, vols, self.mask, self.batch_size, self.ctx.device)
        return GenerationOutput(volumes=out, latents=lats)

    def info(self) -> dict:
        tr = self.meta.get("training", {})
        return {"role": "oracle", "name": self.name,
                "description": "held-out real volumes encoded and decoded by the ldm3d autoencoder (its ceiling)",
                "checkpoint": str(self.path), "checkpoint_sha256": self.sha256,
                "autoencoder": tr.get("autoencoder"), "decoder": tr.get("decoder")}
