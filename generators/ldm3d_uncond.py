"""`ldm3d-uncond`: the shipped ldm3d checkpoint with the prompt dropped — what text conditioning adds.

ldm3d is trained with caption dropout (``conditioning.caption_dropout`` = 0.15: the whole context is
replaced by a learned null context for 15% of training examples), which is what classifier-free
guidance needs (Ho & Salimans 2022). The same network evaluated on the null context alone is
therefore ldm3d's own **unconditional** model, trained jointly with the conditional one on the same
data, weights and sampler. Sampling only that path (guidance 0: ``eps = eps_uncond``) gives a
generator that ignores its prompt; comparing it with ``ldm3d`` isolates the contribution of text
conditioning without a second training run. Sample i uses the same seed (``seed_for(seed, i)``) and
initial noise as ``ldm3d`` does, so the two runs differ only in the context.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from generators.base import GeneratorContext
from generators.ldm3d.checkpoint import SHIPPED
from generators.ldm3d.generator import Ldm3dGenerator

logger = logging.getLogger(__name__)


class Ldm3dUncondGenerator(Ldm3dGenerator):
    """ldm3d sampled from the learned null context only (prompt ignored; guidance 0).

    Args:
        context: runner context.
        checkpoint: an ldm3d ``.safetensors`` checkpoint trained with caption dropout (default: shipped).
        steps: sampling steps.
        scheduler: "ddim", "ddpm" or "dpm++2m".
        batch_size: prompts per UNet batch.
    """

    name = "ldm3d-uncond"

    def __init__(self, context: GeneratorContext, *, checkpoint: str = str(SHIPPED), steps: int = 15,
                 scheduler: str = "dpm++2m", batch_size: int = 8):
        super().__init__(context, checkpoint=checkpoint, steps=steps, guidance=0.0, scheduler=scheduler,
                         batch_size=batch_size)
        p_drop = float(self.model.config.conditioning.caption_dropout)
        if p_drop <= 0:
            logger.warning("%s was trained without caption dropout (caption_dropout=%s): its null context was never "
                           "trained, so ldm3d-uncond samples from an untrained path", self.checkpoint_path, p_drop)
        self.caption_dropout = p_drop

    def contexts(self, texts: Sequence[str]) -> torch.Tensor:
        """The learned null context for every prompt (the caption is not read)."""
        with torch.no_grad():
            return self.model.conditioner.null(len(texts)).to(self.device).clone()

    @torch.no_grad()
    def sample(self, texts, seeds, *, guidance="default", callback=None):
        # conditional-only pass on the null context == eps_uncond (one UNet call per step, not two)
        return super().sample(texts, seeds, guidance=None, callback=callback)

    def info(self) -> dict:
        d = super().info()
        d.update({"role": "baseline", "name": self.name, "guidance": 0.0, "context": "learned null context only (prompt ignored)",
                  "caption_dropout_in_training": self.caption_dropout})
        return d
