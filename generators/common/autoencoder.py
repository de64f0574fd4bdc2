"""A patch (space-to-depth) KL autoencoder: most of its width where the CPU can afford it.

MONAI's ``AutoencoderKL`` runs its first level at full resolution, so on a CPU its width there is what
the budget allows (16 channels at 48 x 64 x 56 voxels). This autoencoder first folds each ``patch^d``
block of voxels into channels (the patch embedding of ViT, Dosovitskiy et al. 2021, and of the
``pixel_unshuffle`` super-resolution networks, Shi et al. 2016), works at 1/patch resolution with 4x
the width for the same compute, and unfolds the decoder's output the same way (depth-to-space). A
small full-resolution convolution after the unfold removes the block seams. Otherwise it is the
Rombach et al. (2022) KL autoencoder: residual blocks with GroupNorm + SiLU, strided-convolution
downsampling, nearest-neighbour + convolution upsampling, a diagonal Gaussian posterior.

The interface is MONAI's: ``encode(x) -> (mu, sigma)``, ``decode(z)``, ``forward(x) -> (rec, mu,
sigma)``; :meth:`PatchAutoencoderKL.decoder_parameters` names the decoder side for stage 1b.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PatchAutoencoderKL", "depth_to_space", "space_to_depth"]


def space_to_depth(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, *S) -> (B, C r^d, *S / r): each r^d block of voxels becomes r^d channels.

    >>> space_to_depth(torch.arange(8.).view(1, 1, 2, 2, 2), 2).flatten().tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """
    b, c, *sp = x.shape
    d = len(sp)
    if any(s % r for s in sp):
        raise ValueError(f"spatial shape {tuple(sp)} is not divisible by the patch size {r}")
    x = x.reshape(b, c, *[v for s in sp for v in (s // r, r)])
    # (b, c, s0, r, s1, r, ...) -> (b, c, r, r, ..., s0, s1, ...)
    x = x.permute(0, 1, *range(3, 3 + 2 * d, 2), *range(2, 2 + 2 * d, 2))
    return x.reshape(b, c * r ** d, *(s // r for s in sp))


def depth_to_space(x: torch.Tensor, r: int) -> torch.Tensor:
    """Inverse of :func:`space_to_depth`: (B, C r^d, *S) -> (B, C, *S r)."""
    b, c, *sp = x.shape
    d = len(sp)
    if c % r ** d:
        raise ValueError(f"{c} channels cannot unfold into {r}^{d} blocks")
    x = x.reshape(b, c // r ** d, *([r] * d), *sp)
    # (b, c, r, r, ..., s0, s1, ...) -> (b, c, s0, r, s1, r, ...)
    order = [0, 1]
    for i in range(d):
        order += [2 + d + i, 2 + i]
    return x.permute(*order).reshape(b, c // r ** d, *(s * r for s in sp))


def _conv(spatial_dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Module:
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    return conv(cin, cout, kernel, stride=stride, padding=kernel // 2)


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1 when the width changes) skip."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), _conv(spatial_dims, cin, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), _conv(spatial_dims, cout, cout)
        self.skip = _conv(spatial_dims, cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class _Encoder(nn.Module):
    def __init__(self, spatial_dims: int, in_channels: int, patch: int, channels: Sequence[int],
                 num_res_blocks: int, latent_channels: int, groups: int):
        super().__init__()
        self.patch = patch
        self.conv_in = _conv(spatial_dims, in_channels * patch ** spatial_dims, channels[0])
        levels: list[nn.Module] = []
        for i, c in enumerate(channels):
            cin = channels[max(i - 1, 0)]
            blocks: list[nn.Module] = [_conv(spatial_dims, cin, c, 3, stride=2)] if i else []
            blocks += [_ResBlock(spatial_dims, c, c, groups) for _ in range(num_res_blocks)]
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.out = nn.Sequential(nn.GroupNorm(groups, channels[-1]), nn.SiLU(),
                                 _conv(spatial_dims, channels[-1], 2 * latent_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.levels(self.conv_in(space_to_depth(x, self.patch))))


class _Decoder(nn.Module):
    def __init__(self, spatial_dims: int, out_channels: int, patch: int, channels: Sequence[int],
                 num_res_blocks: int, latent_channels: int, groups: int, seam_channels: int):
        super().__init__()
        self.patch = patch
        rev = list(reversed(channels))
        self.conv_in = _conv(spatial_dims, latent_channels, rev[0])
        levels: list[nn.Module] = []
        for i, c in enumerate(rev):
            blocks: list[nn.Module] = []
            if i:
                blocks += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(spatial_dims, rev[i - 1], c)]
            blocks += [_ResBlock(spatial_dims, c, c, groups) for _ in range(num_res_blocks)]
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.unfold = nn.Sequential(nn.GroupNorm(groups, rev[-1]), nn.SiLU(),
                                    _conv(spatial_dims, rev[-1], seam_channels * patch ** spatial_dims))
        # full resolution: the seams between unfolded blocks are smoothed by one small convolution
        self.conv_out = nn.Sequential(nn.SiLU(), _conv(spatial_dims, seam_channels, out_channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(depth_to_space(self.unfold(self.levels(self.conv_in(z))), self.patch))


class PatchAutoencoderKL(nn.Module):
    """KL autoencoder with a space-to-depth stem; downsampling ``patch * 2 ** (len(channels) - 1)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: reconstructed channels.
        patch: the space-to-depth block size (voxels per side folded into channels).
        channels: widths of the levels after the fold; each level after the first halves the resolution.
        num_res_blocks: residual blocks per level.
        latent_channels: channels of the latent.
        norm_num_groups: GroupNorm groups (must divide every width).
        seam_channels: channels of the full-resolution seam convolution.

    Example:
        >>> ae = PatchAutoencoderKL(3, 1, 1, patch=2, channels=(8, 16), num_res_blocks=1, latent_channels=2,
        ...                         norm_num_groups=4)
        >>> rec, mu, sigma = ae(torch.zeros(1, 1, 8, 8, 8))
        >>> tuple(rec.shape), tuple(mu.shape)
        ((1, 1, 8, 8, 8), (1, 2, 2, 2, 2))
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, patch: int,
                 channels: Sequence[int], num_res_blocks: int, latent_channels: int, norm_num_groups: int,
                 seam_channels: int = 8):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        self.encoder = _Encoder(spatial_dims, in_channels, patch, channels, num_res_blocks, latent_channels,
                                norm_num_groups)
        self.decoder = _Decoder(spatial_dims, out_channels, patch, channels, num_res_blocks, latent_channels,
                                norm_num_groups, seam_channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation of ``x``."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images (unclipped)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction of a posterior sample, with the posterior mean and standard deviation."""
        mu, sigma = self.encode(x)
        return self.decode(mu + sigma * torch.randn_like(sigma)), mu, sigma

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The parameters stage 1b fine-tunes (the whole decoder); the output convolution's weight and bias last."""
        return list(self.decoder.parameters())
