"""``ldm3d``: the in-house text-conditioned 3D latent diffusion generator.

A latent diffusion model (Rombach et al. 2022) adapted to 3D brain MRI as in Pinaya et al. 2022,
sampled with DDIM (Song et al. 2021), DDPM or DPM-Solver++(2M) (Lu et al. 2022) and classifier-free
guidance (Ho & Salimans 2022).
Per-sample seeds (:func:`generators.base.seed_for`) and fixed-length contexts make each volume a
function of its prompt and seed only, whatever the batch it is generated in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from generators.base import GenerationOutput, GeneratorContext, Prompt, seed_for
from generators.ldm3d.checkpoint import LATENT_YARDSTICK, SHIPPED, CheckpointError, load_checkpoint
from generators.ldm3d.conditioning import same_parser
from generators.ldm3d.model import CaptionEncoder
from generators.ldm3d.sampling import SCHEDULERS, sample_latents

logger = logging.getLogger(__name__)

LATENT_POOL = (3, 4, 4)  # pooled latent grid of the ``ldm3d-latent`` feature space


class Ldm3dGenerator:
    """Text-conditioned 3D latent diffusion (in-house reference generator).

    Args:
        context: the runner's :class:`~generators.base.GeneratorContext` (grid, cohort for the brain mask).
        checkpoint: an ldm3d ``.safetensors`` checkpoint (default: the shipped phantom 3 mm model).
        steps: sampling steps (default 15 with "dpm++2m": on the quick suite every metric equals 50 DDIM
            steps within its interval, at 2.6 instead of 7.6 s per volume inside ``bench run``).
        guidance: classifier-free guidance scale w (1 = conditional only, 0 = unconditional).
        scheduler: "ddim" (deterministic), "ddpm" (ancestral) or "dpm++2m" (deterministic, second order,
            log-SNR-uniform steps: the same samples in fewer steps).
        batch_size: prompts per UNet batch (the guided UNet call sees 2x this).
    """

    name = "ldm3d"

    def __init__(self, context: GeneratorContext, *, checkpoint: str = str(SHIPPED), steps: int = 15,
                 guidance: float = 3.0, scheduler: str = "dpm++2m", batch_size: int = 8):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"ldm3d: unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if steps < 1:
            raise ValueError(f"ldm3d: steps={steps} must be >= 1")
        if batch_size < 1:
            raise ValueError(f"ldm3d: batch_size={batch_size} must be >= 1")
        self.context = context
        self.steps, self.guidance, self.scheduler_name, self.batch_size = int(steps), float(guidance), scheduler, int(batch_size)
        self.device = context.device
        loaded = load_checkpoint(checkpoint, device=self.device)
        self.model, self.meta, self.checkpoint_path, self.sha256 = loaded.model, loaded.meta, loaded.path, loaded.sha256
        grid_shape = tuple(context.grid.shape)
        if tuple(self.model.grid_shape) != grid_shape:
            raise CheckpointError(
                f"{self.checkpoint_path}: trained on grid {self.meta.get('cohort', {}).get('grid', {}).get('name', '?')} "
                f"{tuple(self.model.grid_shape)}, but the suite grid is {context.grid.name} {grid_shape}; use a suite "
                "on the checkpoint's grid or train a checkpoint for this grid (python -m generators.ldm3d.train --grid ...)")
        self.alphas_cumprod = self.model.alphas_cumprod
        self.captions = CaptionEncoder(self.model.config, self.model.conditioner.stats(), self.device)
        stored_parser = self.meta.get("caption_parser")
        if stored_parser and not same_parser(stored_parser, self.captions.parser_name):
            logger.warning("%s was trained with caption parser %s but %s is in use now", self.checkpoint_path,
                           stored_parser, self.captions.parser_name)
        fp = self.meta.get("text_encoder", {}).get("fingerprint")
        if fp and fp != self.captions.text.fingerprint:
            logger.warning("%s: the text encoder differs from the one it was trained with (fingerprint %s… vs %s…)",
                           self.checkpoint_path, fp[:12], self.captions.text.fingerprint[:12])
        self.mask = self._brain_mask()

    # ------------------------------------------------------------------ helpers
    def _brain_mask(self) -> np.ndarray | None:
        try:
            return np.asarray(self.context.cohort.brain_mask(), dtype=bool)
        except Exception as e:  # a cohort without an atlas mask: keep the decoded background
            logger.warning("ldm3d: no brain mask from the reference cohort (%s); background is not zeroed", e)
            return None

    def contexts(self, texts: Sequence[str]) -> torch.Tensor:
        """Conditional contexts (B, L, context_dim) of captions."""
        tokens, mask, attrs = self.captions(texts)
        with torch.no_grad():
            return self.model.conditioner(tokens.to(self.device), mask.to(self.device), attrs.to(self.device))

    def initial_noise(self, seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        shape = self.model.padded_latent_shape
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device)
        return noise, gens

    @torch.no_grad()
    def sample(self, texts: Sequence[str], seeds: Sequence[int], *, guidance: float | None | str = "default",
               callback: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One batch: captions + per-sample seeds -> (volumes (B,1,D,H,W) in [0,1], latents (B,C,d,h,w)).

        ``guidance="default"`` uses the generator's scale; ``None`` runs the conditional path only.
        """
        w = self.guidance if guidance == "default" else guidance
        ctx = self.contexts(texts)
        noise, gens = self.initial_noise(seeds)
        z = sample_latents(self.model, noise, ctx, alphas_cumprod=self.alphas_cumprod, steps=self.steps,
                           scheduler=self.scheduler_name, guidance=w, generators=gens, callback=callback)
        z = self.model.crop(z)
        x = self.model.decode(z).clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)
        if self.mask is not None:
            x *= self.mask[None, None]
        return x, z.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------ protocol
    def generate(self, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        """Volumes for ``prompts``; sample i uses ``seed_for(seed, i)``."""
        texts = [p.text if isinstance(p, Prompt) else str(p) for p in prompts]
        n = len(texts)
        vols = np.zeros((n, 1, *self.model.grid_shape), np.float32)
        lats = np.zeros((n, *self.model.latent_shape), np.float32)
        from tqdm.auto import tqdm

        for start in tqdm(range(0, n, self.batch_size), desc="ldm3d", disable=self.context.quiet or n <= self.batch_size):
            stop = min(n, start + self.batch_size)
            v, z = self.sample(texts[start:stop], [seed_for(seed, i) for i in range(start, stop)])
            vols[start:stop], lats[start:stop] = v, z
        return GenerationOutput(volumes=vols, latents=lats)

    @torch.no_grad()
    def encode(self, volumes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Volumes (N, 1, D, H, W) -> scaled posterior-mean latents (N, C, d, h, w)."""
        return encode_volumes(self.model, volumes)

    def explain(self, prompt_text: str, out_dir: str | Path, *, seed: int = 0) -> Path:
        """Cross-attention maps per caption token (``python -m bench explain``); see
        :func:`generators.ldm3d.explain.explain`."""
        from generators.ldm3d.explain import explain

        return explain(self, prompt_text, out_dir, seed=seed)

    def info(self) -> dict:
        tr = self.meta.get("training", {})
        return {
            "role": "reference-model",
            "name": self.name,
            "checkpoint": str(self.checkpoint_path),
            "checkpoint_sha256": self.sha256,
            "scheduler": self.scheduler_name,
            "steps": self.steps,
            "guidance": self.guidance,
            "batch_size": self.batch_size,
            "param_counts": self.model.param_counts(),
            "latent_shape": list(self.model.latent_shape),
            "latent_scale": float(self.model.latent_scale),
            "training": {"cohort": self.meta.get("cohort"), "autoencoder": tr.get("autoencoder"),
                         "diffusion": tr.get("diffusion"), "seed": tr.get("seed"), "weights": tr.get("weights"),
                         "created_utc": self.meta.get("created_utc")},
            "text_encoder": self.meta.get("text_encoder"),
            "caption_parser": self.captions.parser_name,
            "config_name": self.model.config.name,
        }


@torch.no_grad()
def encode_volumes(model, volumes: np.ndarray | torch.Tensor, batch_size: int = 8) -> np.ndarray:
    x = torch.as_tensor(np.asarray(volumes, dtype=np.float32))
    if x.ndim != 5 or x.shape[1] != 1 or tuple(x.shape[2:]) != tuple(model.grid_shape):
        raise ValueError(f"ldm3d encode: volumes of shape {tuple(x.shape)}; expected (N, 1, {', '.join(map(str, model.grid_shape))})")
    out = [model.encode(x[i:i + batch_size]).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, *model.latent_shape), np.float32)


def make_latent_encoder(checkpoint: str | Path = LATENT_YARDSTICK, *, device: str = "cpu",
                        pool: tuple[int, int, int] = LATENT_POOL) -> tuple[Callable[[np.ndarray], np.ndarray], int, str]:
    """The ``ldm3d-latent`` feature space for metrics: (fn, dim, fingerprint).

    ``fn(volumes (N, 1, D, H, W) float32) -> (N, dim) float32``: the scaled posterior mean of the
    autoencoder, average-pooled to ``pool`` and flattened (dim = latent channels x prod(pool); 384 for
    the shipped model), small enough for Fréchet distances with a few hundred samples. The fingerprint
    is the checkpoint's sha256 plus the pooling, so cached features are invalidated when either changes.
    """
    loaded = load_checkpoint(checkpoint, device=device)
    model = loaded.model
    dim = int(model.latent_shape[0] * np.prod(pool))

    def fn(volumes: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(encode_volumes(model, volumes))
        feats = torch.nn.functional.adaptive_avg_pool3d(z, pool).flatten(1)
        return feats.numpy().astype(np.float32)

    return fn, dim, f"ldm3d-latent:{loaded.sha256}:pool{'x'.join(map(str, pool))}"
