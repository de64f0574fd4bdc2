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


#: colour map of every attention image (perceptually uniform, dark = little attention)
CMAP = "magma"
RANKING_METHOD = ("KL divergence of the token's map, normalised to a distribution over the head mask "
                  "(generated intensity > 10 % of its maximum), from the uniform distribution, largest first; "
                  "0 = attends everywhere alike. cv = coefficient of variation over the same voxels")


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels of the generated head (intensity > 10 % of the maximum); every voxel when that is empty."""
    m = volume > 0.1 * float(volume.max())
    return m if m.any() else np.ones(volume.shape, bool)


def shared_scale(maps: list[np.ndarray], mask: np.ndarray) -> tuple[float, float]:
    """One (vmin, vmax) for all token maps: 0 (attention is a probability) to the largest map's
    99.9th percentile inside ``mask`` (a few interpolation overshoots do not set the scale)."""
    top = max((float(np.percentile(m[mask], 99.9)) for m in maps), default=1.0)
    return 0.0, (top if top > 0 else 1.0)


def departure_from_uniform(amap: np.ndarray, mask: np.ndarray) -> dict:
    """``kl_from_uniform`` (nats) and ``cv`` of one map inside ``mask`` (see :data:`RANKING_METHOD`):
    how *spatially specific* the token's attention is, whatever its overall level."""
    v = np.clip(amap[mask].astype(np.float64), 0, None)
    total = v.sum()
    if total <= 0:
        return {"kl_from_uniform": 0.0, "cv": 0.0}
    p = v / total
    nz = p > 0
    kl = float((p[nz] * np.log(p[nz] * p.size)).sum())
    return {"kl_from_uniform": max(kl, 0.0), "cv": float(v.std() / v.mean())}


def _planes(x: np.ndarray) -> list[np.ndarray]:
    """Sagittal, coronal, axial mid-planes, transposed for display with ``origin="lower"``."""
    d, h, w = x.shape
    return [x[d // 2].T, x[:, h // 2].T, x[:, :, w // 2].T]


def contact_sheet(path: Path, volume: np.ndarray, maps: list[np.ndarray], labels: list[str], vmin: float,
                  vmax: float, title: str = "") -> None:
    """All token maps on one PNG: a row per token (in the given order, labelled), the three mid-planes
    as columns, one colour scale with its colour bar; the head outline drawn over each map."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = max(len(maps), 1)
    height = 1.25 * rows + 1.6  # inches: a row per token plus a fixed header (title, colour bar, plane names)
    fig, axes = plt.subplots(rows, 3, figsize=(7.2, height), squeeze=False)
    fig.subplots_adjust(left=0.3, right=0.98, top=1 - 1.45 / height, bottom=0.1 / height, wspace=0.02,
                        hspace=0.08)
    outline = _planes(volume)
    level = 0.1 * float(volume.max()) if volume.max() > 0 else None
    im = None
    for r, (m, label) in enumerate(zip(maps, labels)):
        for c, (pl, ol) in enumerate(zip(_planes(m), outline)):
            ax = axes[r, c]
            im = ax.imshow(pl, cmap=CMAP, vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
            if level:
                ax.contour(ol, levels=[level], colors="white", linewidths=0.4, alpha=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(("sagittal", "coronal", "axial")[c], fontsize=9)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if im is not None:  # one horizontal colour bar in the header, visible without scrolling
        cax = fig.add_axes((0.3, 1 - 1.1 / height, 0.68, 0.1 / height))
        cb = fig.colorbar(im, cax=cax, orientation="horizontal")
        cax.xaxis.set_ticks_position("top")
        cax.xaxis.set_label_position("top")
        cb.set_label("cross-attention probability (one scale for every token)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    if title:
        fig.text(0.5, 1 - 0.08 / height, "\n".join(textwrap.wrap(title, 110)[:3]), ha="center", va="top", fontsize=6)
    fig.savefig(path, dpi=72, bbox_inches="tight")
    plt.close(fig)


def _panel(img: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, cmap) -> np.ndarray:
    """One slice: grey image with the attention map blended on top (RGB float in [0, 1])."""
    grey = np.repeat(np.clip(img, 0, 1)[..., None], 3, axis=-1)
    heat = cmap(np.clip((amap - vmin) / (vmax - vmin), 0, 1))[..., :3]
    return 0.55 * grey + 0.45 * heat


def _png(path: Path, volume: np.ndarray, amap: np.ndarray, vmax: float | None = None, vmin: float = 0.0) -> None:
    """Sagittal | coronal | axial mid-slices (map over the volume, on the scale ``vmin..vmax``, by
    default the map's own maximum), written with ``plt.imsave``.

    Composed with numpy (no figure per token): far faster than subplots for ~200 tokens.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cmap = matplotlib.colormaps[CMAP]
    vmax = float(vmax if vmax is not None else amap.max())
    vmax = vmax if vmax > vmin else vmin + 1.0
    panels = [np.flipud(_panel(v, m, vmin, vmax, cmap)) for v, m in zip(_planes(volume), _planes(amap))]
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
        (sagittal | coronal | axial mid-slices, map blended over the generated volume), summary
        statistics and its departure from uniform (``kl_from_uniform``, ``cv``, ``rank``); ``scale``
        (the one vmin/vmax of every image), ``ranking`` (tokens by ``kl_from_uniform``, largest
        first) and ``contact_sheet`` (all maps on one labelled PNG with a colour bar, rows ranked).
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
    token_list = [(i, tok, "text") for i, tok in enumerate(pieces)]
    if cfg.conditioning.use_attribute_tokens:
        token_list += [(n_text + j, f"attr:{name}", "attribute") for j, name in enumerate(ATTRIBUTE_NAMES)]
    full = [F.interpolate(maps[col][None, None], scale_factor=ds, mode="trilinear",
                          align_corners=False)[0, 0, :D, :H, :W].numpy() for col, _, _ in token_list]
    mask = head_mask(vol)
    vmin, vmax = shared_scale(full, mask)
    entries = []
    for k, ((col, tok, kind), m) in enumerate(zip(token_list, full)):
        stem = f"{k:03d}_{_safe(tok)}"
        nii, png = out / "maps" / f"{stem}.nii.gz", out / "maps" / f"{stem}.png"
        save_nifti(nii, m.astype(np.float32), grid)
        _png(png, vol, m, vmax=vmax, vmin=vmin)
        entries.append({"index": k, "context_column": col, "token": tok, "kind": kind,
                        "nifti": str(nii.relative_to(out)), "png": str(png.relative_to(out)),
                        "mean_attention": float(m.mean()), "max_attention": float(m.max()),
                        **departure_from_uniform(m, mask)})
    order = sorted(range(len(entries)), key=lambda i: -entries[i]["kl_from_uniform"])
    for rank, i in enumerate(order, 1):
        entries[i]["rank"] = rank
    ranking = [{"rank": entries[i]["rank"], "index": i, "token": entries[i]["token"],
                "kl_from_uniform": entries[i]["kl_from_uniform"], "cv": entries[i]["cv"]} for i in order]
    contact_sheet(out / "contact_sheet.png", vol, [full[i] for i in order],
                  [f"{entries[i]['rank']}. {entries[i]['token']}  (KL {entries[i]['kl_from_uniform']:.3f})"
                   for i in order], vmin, vmax, title=prompt_text)
    index = {
        "prompt": prompt_text, "seed": seed, "sample_seed": seed_for(seed, 0),
        "method": "cross-attention probabilities of the conditional pass, mean over heads, steps and layers",
        "n_steps": generator.steps, "guidance": generator.guidance, "scheduler": generator.scheduler_name,
        "checkpoint_sha256": generator.sha256, "grid": grid.to_dict(), "volume": "volume.nii.gz",
        "tokens": entries,
        "token_to_files": {f"{e['index']:03d}:{e['token']}": {"nifti": e["nifti"], "png": e["png"]} for e in entries},
        "scale": {"vmin": vmin, "vmax": vmax, "shared": True, "cmap": CMAP,
                  "note": "one colour scale for every token's map (PNGs and the contact sheet)"},
        "ranking_method": RANKING_METHOD, "ranking": ranking, "contact_sheet": "contact_sheet.png",
    }
    path = out / "index.json"
    path.write_text(json.dumps(index, indent=2))
    logger.info("explain: %d token maps in %s", len(entries), out)
    return path
