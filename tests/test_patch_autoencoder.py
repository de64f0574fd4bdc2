"""The patch (space-to-depth) KL autoencoder and the config switch that selects it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generators.common.autoencoder import PatchAutoencoderKL, depth_to_space, space_to_depth


def test_space_to_depth_matches_pixel_unshuffle_in_2d():
    x = torch.randn(2, 3, 6, 8)
    # torch's pixel_unshuffle is the independent reference for the channel order (c, dy, dx)
    assert torch.equal(space_to_depth(x, 2), F.pixel_unshuffle(x, 2))
    assert torch.equal(depth_to_space(F.pixel_unshuffle(x, 2), 2), x)


def test_space_to_depth_3d_block_layout_and_inverse():
    x = torch.randn(2, 1, 4, 6, 8)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 8, 2, 3, 4)
    # channel 4 * dz + 2 * dy + dx of block (i, j, k) is voxel (2i + dz, 2j + dy, 2k + dx)
    for dz, dy, dx in [(0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 0)]:
        assert torch.equal(y[:, 4 * dz + 2 * dy + dx], x[:, 0, dz::2, dy::2, dx::2])
    assert torch.equal(depth_to_space(y, 2), x)
    with pytest.raises(ValueError, match="not divisible by the patch size 2"):
        space_to_depth(torch.zeros(1, 1, 3, 4, 4), 2)


def test_patch_autoencoder_shapes_and_decoder_parameters():
    ae = PatchAutoencoderKL(3, 1, 1, patch=2, channels=(8, 16), num_res_blocks=1, latent_channels=3,
                            norm_num_groups=4)
    rec, mu, sigma = ae(torch.rand(2, 1, 8, 12, 16))
    assert rec.shape == (2, 1, 8, 12, 16) and mu.shape == sigma.shape == (2, 3, 2, 3, 4)
    assert bool((sigma > 0).all())
    params = ae.decoder_parameters()
    assert params[-2] is ae.decoder.conv_out[-1].weight and params[-1] is ae.decoder.conv_out[-1].bias
    enc = {id(p) for p in ae.encoder.parameters()}
    assert not enc & {id(p) for p in params}


def test_patch_autoencoder_learns_to_reconstruct():
    """A known response: fitting two volumes drives the reconstruction error far below its start."""
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 8, 8, 8)
    x[0, :, 2:6, 2:6, 2:6] = 1.0
    x[1, :, 1:7, 3:5, 1:7] = 0.5
    ae = PatchAutoencoderKL(3, 1, 1, patch=2, channels=(16, 16), num_res_blocks=1, latent_channels=4,
                            norm_num_groups=4)
    opt = torch.optim.Adam(ae.parameters(), 3e-3)
    with torch.no_grad():
        start = float((ae.decode(ae.encode(x)[0]) - x).abs().mean())
    for _ in range(150):
        rec, _, _ = ae(x)
        loss = (rec - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = float((ae.decode(ae.encode(x)[0]) - x).abs().mean())
    assert end < 0.3 * start, (start, end)


def test_config_patch_selects_the_patch_autoencoder_and_its_downsampling():
    from generators.common.decoder_training import decoder_parameters
    from generators.ldm3d.config import ConfigError, Ldm3dConfig
    from generators.ldm3d.model import build_model

    from tests._helpers import tiny_config

    d = tiny_config("t", ae_steps=1, ae_batch=1, diff_steps=1, diff_batch=1)
    d["autoencoder"].update(patch=2, channels=[8, 8], norm_num_groups=4)
    cfg = Ldm3dConfig.from_dict(d)
    assert cfg.latent_downsampling == 4
    model = build_model(cfg, (8, 8, 8))
    assert isinstance(model.autoencoder, PatchAutoencoderKL)
    assert model.latent_shape == (cfg.autoencoder.latent_channels, 2, 2, 2)
    assert decoder_parameters(model.autoencoder)[-2] is model.autoencoder.decoder.conv_out[-1].weight
    d["autoencoder"]["patch"] = 0
    with pytest.raises(ConfigError, match="autoencoder.patch=0 must be >= 1"):
        Ldm3dConfig.from_dict(d)
