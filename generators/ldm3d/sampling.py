"""Reverse diffusion with classifier-free guidance: DDIM (Song et al. 2021) and DDPM (Ho et al. 2020).

Both samplers run on a strided subset of the training timesteps and draw all randomness from one
``torch.Generator`` per sample, so a sample depends only on its own seed and prompt, never on the
batch it is in. The conditional and unconditional UNet passes of classifier-free guidance
(Ho & Salimans 2022), ``eps = eps_u + w (eps_c - eps_u)``, are batched into one UNet call.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

SCHEDULERS = ("ddim", "ddpm")


def timesteps_for(num_train_timesteps: int, steps: int) -> list[int]:
    """Evenly strided timesteps, descending ("leading" spacing as in MONAI/diffusers)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps={steps} must be in 1..{num_train_timesteps}")
    ratio = num_train_timesteps // steps
    return [i * ratio for i in range(steps)][::-1]


def guided_eps(model, x: torch.Tensor, t: int, ctx_c: torch.Tensor, ctx_u: torch.Tensor | None,
               guidance: float | None) -> torch.Tensor:
    """Noise prediction with classifier-free guidance; ``guidance=None`` → conditional only.

    The conditional and unconditional halves go through the UNet as one batch of 2B.
    """
    b = x.shape[0]
    if guidance is None:
        tt = torch.full((b,), t, dtype=torch.long, device=x.device)
        return model.eps(x, tt, ctx_c)
    if ctx_u is None:
        raise ValueError("guidance needs an unconditional context")
    tt = torch.full((2 * b,), t, dtype=torch.long, device=x.device)
    eps = model.eps(torch.cat([x, x]), tt, torch.cat([ctx_c, ctx_u]))
    eps_c, eps_u = eps[:b], eps[b:]
    return eps_u + guidance * (eps_c - eps_u)


@torch.no_grad()
def sample_latents(model, noise: torch.Tensor, ctx_c: torch.Tensor, *, alphas_cumprod: torch.Tensor,
                   steps: int = 50, scheduler: str = "ddim", guidance: float | None = 3.0,
                   generators: Sequence[torch.Generator] | None = None,
                   callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Denoise ``noise`` (B, C, d, h, w) into scaled latents.

    Args:
        model: an :class:`~generators.ldm3d.model.Ldm3d` (uses ``model.eps`` and the null context).
        noise: initial Gaussian latents (padded shape).
        ctx_c: conditional contexts (B, L, context_dim).
        alphas_cumprod: the training schedule's cumulative alphas (T,).
        steps: number of sampling steps.
        scheduler: "ddim" (deterministic, eta = 0) or "ddpm" (ancestral, stochastic).
        guidance: classifier-free guidance scale w; ``None`` for conditional-only.
        generators: one generator per sample for the DDPM noise (required for "ddpm").
        callback: called as ``callback(i, t)`` after each step (progress, attention recording).

    Returns:
        Latents (B, C, d, h, w).
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")
    if scheduler == "ddpm" and (generators is None or len(generators) != noise.shape[0]):
        raise ValueError("scheduler='ddpm' needs one torch.Generator per sample")
    ac = alphas_cumprod.to(torch.float64)
    T = len(ac)
    ts = timesteps_for(T, steps)
    ctx_u = model.conditioner.null(noise.shape[0]) if guidance is not None else None
    x = noise
    for i, t in enumerate(ts):
        eps = guided_eps(model, x, t, ctx_c, ctx_u, guidance)
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        a_t = float(ac[t])
        a_prev = float(ac[t_prev]) if t_prev >= 0 else 1.0
        x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
        if scheduler == "ddim":
            x = a_prev**0.5 * x0 + (1.0 - a_prev) ** 0.5 * eps
        else:
            beta = 1.0 - a_t / a_prev  # effective beta of the strided step
            c0 = a_prev**0.5 * beta / (1.0 - a_t)
            ct = (1.0 - beta) ** 0.5 * (1.0 - a_prev) / (1.0 - a_t)
            mean = c0 * x0 + ct * x
            if t_prev >= 0:
                var = beta * (1.0 - a_prev) / (1.0 - a_t)
                z = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in generators])  # type: ignore[union-attr]
                x = mean + var**0.5 * z.to(x.device)
            else:
                x = mean
        if callback is not None:
            callback(i, t)
    return x
