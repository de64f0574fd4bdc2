"""Cross-attention maps of ldm3d per caption token (prompt-to-image attribution).

During sampling, forward hooks on the UNet's cross-attention blocks recompute the attention
probabilities softmax(q kᵀ / √d) of the conditional pass (the UNet itself may use fused attention,
which does not expose them). Maps are averaged over heads, sampling steps and layers (each layer's
map is first resampled to the latent grid), then upsampled to the image grid — the
"cross-attention map" attribution used for text-to-image latent diffusion (Rombach et al. 2022;
after Hertz et al. 2022, Prompt-to-Prompt). The volume generated is the one
``generator.generate([prompt], seed=seed)`` returns.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generators.base import seed_for
from generators.ldm3d.conditioning import ATTRIBUTE_NAMES

logger = logging.getLogger(__name__)


class _AttentionRecorder:
    """Hooks every cross-attention block of a MONAI DiffusionModelUNet and accumulates its maps."""

    def __init__(self, unet: torch.nn.Module, latent_shape: tuple[int, int, int], n_cond: int):
        from monai.networks.blocks.crossattention import CrossAttentionBlock
        from monai.networks.nets.diffusion_model_unet import SpatialTransformer

        self.latent_shape = tuple(latent_shape)
        self.n_cond = n_cond  # rows of the batch that are the conditional pass
        self.sum: torch.Tensor | None = None
        self.count = 0
        self.handles = []
        self._spatial: tuple[int, ...] | None = None
        n_blocks = 0
        for st in unet.modules():
            if isinstance(st, SpatialTransformer):
                self.handles.append(st.register_forward_pre_hook(self._pre))
                for tb in st.transformer_blocks:
                    blk = getattr(tb, "attn2", None)
                    if isinstance(blk, CrossAttentionBlock):
                        self.handles.append(blk.register_forward_hook(self._hook, with_kwargs=True))
                        n_blocks += 1
        if n_blocks == 0:
            self.remove()
            raise RuntimeError("explain: found no cross-attention blocks (attn2) in the UNet; "
                               "is it built with_conditioning=True?")

    def _pre(self, module, args):
        self._spatial = tuple(args[0].shape[2:])

    @torch.no_grad()
    def _hook(self, module, args, kwargs, output):
        x = args[0]
        context = kwargs.get("context", args[1] if len(args) > 1 else None)
        if context is None or self._spatial is None:
            return
        x, context = x[: self.n_cond], context[: self.n_cond]
        q = module.input_rearrange(module.to_q(x))  # b heads n d
        k = module.input_rearrange(module.to_k(context))
        att = (torch.einsum("blxd,blyd->blxy", q, k) * module.scale).softmax(dim=-1).mean(dim=1)  # b n L
        b, n, L = att.shape
        maps = att.transpose(1, 2).reshape(b, L, *self._spatial)
        maps = F.interpolate(maps, size=self.latent_shape, mode="trilinear", align_corners=False)
        self.sum = maps.clone() if self.sum is None else self.sum + maps
        self.count += 1

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def mean(self) -> torch.Tensor:
        if self.sum is None:
            raise RuntimeError("explain: no attention was recorded")
        return self.sum / self.count


def _safe(token: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", token).strip("_")
    return s[:24] or "tok"


def _panel(img: np.ndarray, amap: np.ndarray, vmax: float, cmap) -> np.ndarray:
    """One slice: grey image with the attention map blended on top (RGB float in [0, 1])."""
    grey = np.repeat(np.clip(img, 0, 1)[..., None], 3, axis=-1)
    heat = cmap(np.clip(amap / vmax, 0, 1))[..., :3]
    return 0.55 * grey + 0.45 * heat


def _png(path: Path, volume: np.ndarray, amap: np.ndarray, vmax: float | None = None) -> None:
    """Sagittal | coronal | axial mid-slices (map over the volume), written with ``plt.imsave``.

    Composed with numpy (no figure per token): far faster than subplots for ~200 tokens.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = matplotlib.colormaps["jet"]
    d, h, w = volume.shape
    vmax = float(vmax if vmax is not None else amap.max()) or 1.0
    views = [(volume[d // 2], amap[d // 2]), (volume[:, h // 2], amap[:, h // 2]),
             (volume[:, :, w // 2], amap[:, :, w // 2])]
    panels = [np.flipud(_panel(v.T, m.T, vmax, cmap)) for v, m in views]  # rows = superior..inferior
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 2), (0, 0))) for p in panels]
    img = np.concatenate(panels, axis=1)
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8).repeat(2, axis=0).repeat(2, axis=1)  # 2x nearest
    plt.imsave(path, img)


def explain(generator, prompt_text: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Generate one volume for ``prompt_text`` and write its per-token cross-attention maps.

    Args:
        generator: an :class:`~generators.ldm3d.generator.Ldm3dGenerator`.
        prompt_text: the caption.
        out_dir: output folder (created).
        seed: run seed; the sample uses ``seed_for(seed, 0)``, so the volume equals
            ``generator.generate([Prompt(prompt_text)], seed=seed).volumes[0]``.

    Returns:
        Path of ``index.json``: prompt, seed, generator info, the volume files, and per token
        (caption word pieces incl. [CLS]/[SEP], then the attribute tokens) its NIfTI and PNG
        (sagittal | coronal | axial mid-slices, jet map blended over the generated volume, each
        scaled to its own maximum) plus summary statistics.
    """
    from cohorts.subject import save_nifti

    out = Path(out_dir)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    model = generator.model
    grid = generator.context.grid
    cfg = model.config
    n_text = cfg.conditioning.max_tokens
    pieces = generator.captions.text.tokens(prompt_text)[:n_text]
    recorder = _AttentionRecorder(model.unet, model.padded_latent_shape[1:], n_cond=1)
    try:
        volume, _ = generator.sample([prompt_text], [seed_for(seed, 0)])
    finally:
        recorder.remove()
    maps = recorder.mean()[0]  # (L, d, h, w) on the padded latent grid
    ds = cfg.latent_downsampling
    D, H, W = grid.shape
    vol = volume[0, 0]
    save_nifti(out / "volume.nii.gz", vol, grid)
    entries = []
    token_list = [(i, tok, "text") for i, tok in enumerate(pieces)]
    if cfg.conditioning.use_attribute_tokens:
        token_list += [(n_text + j, f"attr:{name}", "attribute") for j, name in enumerate(ATTRIBUTE_NAMES)]
    for k, (col, tok, kind) in enumerate(token_list):
        m = maps[col][None, None]
        m = F.interpolate(m, scale_factor=ds, mode="trilinear", align_corners=False)[0, 0, :D, :H, :W].numpy()
        stem = f"{k:03d}_{_safe(tok)}"
        nii, png = out / "maps" / f"{stem}.nii.gz", out / "maps" / f"{stem}.png"
        save_nifti(nii, m.astype(np.float32), grid)
        _png(png, vol, m)
        entries.append({"index": k, "context_column": col, "token": tok, "kind": kind,
                        "nifti": str(nii.relative_to(out)), "png": str(png.relative_to(out)),
                        "mean_attention": float(m.mean()), "max_attention": float(m.max())})
    index = {
        "prompt": prompt_text, "seed": seed, "sample_seed": seed_for(seed, 0),
        "method": "cross-attention probabilities of the conditional pass, mean over heads, steps and layers",
        "n_steps": generator.steps, "guidance": generator.guidance, "scheduler": generator.scheduler_name,
        "checkpoint_sha256": generator.sha256, "grid": grid.to_dict(), "volume": "volume.nii.gz",
        "tokens": entries,
        "token_to_files": {f"{e['index']:03d}:{e['token']}": {"nifti": e["nifti"], "png": e["png"]} for e in entries},
    }
    path = out / "index.json"
    path.write_text(json.dumps(index, indent=2))
    logger.info("explain: %d token maps in %s", len(entries), out)
    return path
